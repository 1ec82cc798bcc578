"""The keel demo worker's routes as an ASGI application, served through the ASGI adapter,
and as a WSGI application, served through the WSGI adapter.

    python3 -m keel_worker.demo          # ASGI
    python3 -m keel_worker.demo wsgi     # WSGI

Routes (HEAD is answered like GET; every response carries ``x-keel-pool: $KEEL_POOL``):
``GET /`` "Hello from keel"; ``GET /pid``; ``GET|POST /sleep?ms=N`` "slept N ms";
``POST /echo`` (streamed back, same content-type); ``GET /crash`` (abort()); ``GET /big?bytes=N``
(streamed, with content-length); ``GET /stats`` "requests N"; ``GET /env?name=X``; else 404.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

from .asgi import Message, Receive, Scope, Send, serve_asgi
from .wsgi import StartResponse, serve_wsgi

_CHUNK = b"x" * 65536
_handled = 0


def _pool_header() -> list[tuple[bytes, bytes]]:
    pool = os.environ.get("KEEL_POOL")
    return [(b"x-keel-pool", pool.encode())] if pool is not None else []


async def _text(send: Send, status: int, body: bytes) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode())] + _pool_header(),
    })
    await send({"type": "http.response.body", "body": body})


def _param(scope: Scope, name: str) -> str | None:
    qs = urllib.parse.parse_qs(scope["query_string"].decode("latin-1"))
    values = qs.get(name)
    return values[0] if values else None


def _int_param(scope: Scope, name: str) -> int:
    try:
        return max(0, int(_param(scope, name) or 0))
    except ValueError:
        return 0


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        msg: Message = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    global _handled
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    _handled += 1
    handled = _handled
    method: str = scope["method"]
    if method == "HEAD":
        method = "GET"
    path: str = scope["path"]

    if method == "GET" and path == "/":
        await _text(send, 200, b"Hello from keel")
    elif method == "GET" and path == "/pid":
        await _text(send, 200, str(os.getpid()).encode())
    elif method == "GET" and path == "/stats":
        await _text(send, 200, f"requests {handled}".encode())
    elif path == "/sleep":
        ms = _int_param(scope, "ms")
        await asyncio.sleep(ms / 1000)
        await _text(send, 200, f"slept {ms} ms".encode())
    elif method == "POST" and path == "/echo":
        await _echo(scope, receive, send)
    elif method == "GET" and path == "/crash":
        os.abort()
    elif method == "GET" and path == "/big":
        await _big(send, _int_param(scope, "bytes"))
    elif method == "GET" and path == "/env":
        name = _param(scope, "name")
        value = os.environ.get(name) if name else None
        if value is None:
            await _text(send, 404, b"not set")
        else:
            await _text(send, 200, value.encode())
    else:
        await _text(send, 404, b"not found")


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    """The request body streamed straight back, never held whole."""
    headers: list[Any] = [(n, v) for n, v in scope["headers"]
                          if n in (b"content-type", b"content-length")]
    await send({"type": "http.response.start", "status": 200,
                "headers": headers + _pool_header()})
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        more = bool(msg.get("more_body", False))
        body: bytes = msg.get("body", b"")
        if body or not more:
            await send({"type": "http.response.body", "body": body, "more_body": more})
        if not more:
            return


async def _big(send: Send, n: int) -> None:
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/octet-stream"),
                    (b"content-length", str(n).encode())] + _pool_header(),
    })
    while n > len(_CHUNK):
        await send({"type": "http.response.body", "body": _CHUNK, "more_body": True})
        n -= len(_CHUNK)
    await send({"type": "http.response.body", "body": _CHUNK[:n]})


# ---- the same routes in WSGI


def _wsgi_text(start: StartResponse, status: str, body: bytes) -> list[bytes]:
    start(status, [("Content-Type", "text/plain; charset=utf-8"),
                   ("Content-Length", str(len(body)))] + _wsgi_pool_header())
    return [body]


def _wsgi_pool_header() -> list[tuple[str, str]]:
    pool = os.environ.get("KEEL_POOL")
    return [("X-Keel-Pool", pool)] if pool is not None else []


def _wsgi_param(environ: dict[str, Any], name: str) -> str | None:
    values = urllib.parse.parse_qs(environ["QUERY_STRING"]).get(name)
    return values[0] if values else None


def _wsgi_int_param(environ: dict[str, Any], name: str) -> int:
    try:
        return max(0, int(_wsgi_param(environ, name) or 0))
    except ValueError:
        return 0


def _wsgi_big(n: int) -> Iterator[bytes]:
    while n > len(_CHUNK):
        yield _CHUNK
        n -= len(_CHUNK)
    yield _CHUNK[:n]


def _wsgi_echo(environ: dict[str, Any]) -> Iterator[bytes]:
    body = environ["wsgi.input"]
    while chunk := body.read(65536):
        yield chunk


def wsgi_app(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
    global _handled
    _handled += 1
    handled = _handled
    method: str = environ["REQUEST_METHOD"]
    if method == "HEAD":
        method = "GET"
    path: str = environ["PATH_INFO"]

    if method == "GET" and path == "/":
        return _wsgi_text(start, "200 OK", b"Hello from keel")
    if method == "GET" and path == "/pid":
        return _wsgi_text(start, "200 OK", str(os.getpid()).encode())
    if method == "GET" and path == "/stats":
        return _wsgi_text(start, "200 OK", f"requests {handled}".encode())
    if path == "/sleep":
        ms = _wsgi_int_param(environ, "ms")
        time.sleep(ms / 1000)
        return _wsgi_text(start, "200 OK", f"slept {ms} ms".encode())
    if method == "POST" and path == "/echo":
        headers = [(k.replace("_", "-").title(), environ[k])
                   for k in ("CONTENT_TYPE", "CONTENT_LENGTH") if k in environ]
        start("200 OK", headers + _wsgi_pool_header())
        return _wsgi_echo(environ)
    if method == "GET" and path == "/crash":
        os.abort()
    if method == "GET" and path == "/big":
        n = _wsgi_int_param(environ, "bytes")
        start("200 OK", [("Content-Type", "application/octet-stream"),
                         ("Content-Length", str(n))] + _wsgi_pool_header())
        return _wsgi_big(n)
    if method == "GET" and path == "/env":
        name = _wsgi_param(environ, "name")
        value = os.environ.get(name) if name else None
        if value is None:
            return _wsgi_text(start, "404 Not Found", b"not set")
        return _wsgi_text(start, "200 OK", value.encode())
    return _wsgi_text(start, "404 Not Found", b"not found")


def main() -> None:
    print(f"keel_worker.demo pid {os.getpid()} ready", file=sys.stderr, flush=True)
    mode = sys.argv[1] if len(sys.argv) > 1 else "asgi"
    if mode == "wsgi":
        serve_wsgi(wsgi_app)
    elif mode == "asgi":
        serve_asgi(app)
    else:
        sys.exit("usage: python3 -m keel_worker.demo [asgi|wsgi]")


if __name__ == "__main__":
    main()

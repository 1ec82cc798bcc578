"""The keel demo worker's routes as an ASGI application, served through the ASGI adapter.

    python3 -m keel_worker.demo

Routes (HEAD is answered like GET; every response carries ``x-keel-pool: $KEEL_POOL``):
``GET /`` "Hello from keel"; ``GET /pid``; ``GET|POST /sleep?ms=N`` "slept N ms";
``POST /echo`` (streamed back, same content-type); ``GET /crash`` (abort()); ``GET /big?bytes=N``
(streamed, with content-length); ``GET /stats`` "requests N"; ``GET /env?name=X``; else 404.
"""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.parse
from typing import Any

from .asgi import Message, Receive, Scope, Send, serve_asgi

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


def main() -> None:
    print(f"keel_worker.demo pid {os.getpid()} ready", file=sys.stderr, flush=True)
    serve_asgi(app)


if __name__ == "__main__":
    main()

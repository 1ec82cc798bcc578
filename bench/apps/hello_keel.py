"""The benchmark's hello app as a keel protocol worker (sdk/python keel_worker).

    PYTHONPATH=sdk/python:bench/apps python3 bench/apps/hello_keel.py [wsgi|handler]

keel_worker has a plain handler API and an ASGI adapter, no WSGI adapter. So that keel runs
the very app that gunicorn and NGINX Unit run, the default mode ("wsgi") calls
hello_wsgi.app through the minimal synchronous WSGI bridge below (a PEP 3333 environ per
request, the app called on the event loop: one request at a time, as in a one-process,
one-thread WSGI server). "handler" answers the same bytes from a plain keel_worker handler
instead, without WSGI, to show the bridge's cost.

Both answer every request with 200, "content-type: text/plain", "content-length: 14" and
"Hello, world!\n".
"""

from __future__ import annotations

import io
import sys
from typing import Any, Callable, Iterable
from urllib.parse import unquote_to_bytes

from keel_worker import Exchange, serve

import hello_wsgi

BODY = hello_wsgi.BODY
_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]
_ERRORS = sys.stderr


def _environ(ex: Exchange, body: bytes) -> dict[str, Any]:
    req = ex.request
    env: dict[str, Any] = {
        "REQUEST_METHOD": ex.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(ex.raw_path).decode("latin-1"),
        "QUERY_STRING": ex.query_string.decode("latin-1"),
        "SERVER_NAME": req.server_name.decode("latin-1") or req.local.host or "localhost",
        "SERVER_PORT": str(req.local.port or 80),
        "REMOTE_ADDR": req.client.host,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https" if req.tls else "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": _ERRORS,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in ex.headers:
        key = name.decode("latin-1").upper().replace("-", "_")
        if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
            env[key] = value.decode("latin-1")
        else:
            key = "HTTP_" + key
            v = value.decode("latin-1")
            env[key] = env[key] + "," + v if key in env else v
    return env


def wsgi_handler(app: Callable[..., Iterable[bytes]]) -> Callable[[Exchange], Any]:
    """A keel_worker handler running the WSGI callable ``app``."""

    async def handler(ex: Exchange) -> None:
        body = await ex.read_body() if ex.header(b"content-length") or ex.header(
            b"transfer-encoding") else b""
        head: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            head[:] = [int(status[:3]),
                       [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers]]
            return chunks.append

        chunks: list[bytes] = []
        result = app(_environ(ex, body), start_response)
        try:
            chunks.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        await ex.respond(head[0], head[1], b"".join(chunks))

    return handler


async def plain_handler(ex: Exchange) -> None:
    await ex.respond(200, _HEADERS, BODY)


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "wsgi"
    if mode == "wsgi":
        serve(wsgi_handler(hello_wsgi.app))
    elif mode == "handler":
        serve(plain_handler)
    else:
        sys.exit(f"usage: {sys.argv[0]} [wsgi|handler]")


if __name__ == "__main__":
    main()

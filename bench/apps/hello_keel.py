"""The benchmark's hello app as a keel protocol worker (sdk/python keel_worker).

    PYTHONPATH=sdk/python:bench/apps python3 bench/apps/hello_keel.py [wsgi|handler|asgi]

"wsgi" (the default) runs hello_wsgi.app, the very app that gunicorn and NGINX Unit run,
through the SDK's WSGI adapter (keel_worker.wsgi: a PEP 3333 environ per request, the app
called on the event loop, one request at a time, as in a one-process, one-thread WSGI
server). "handler" answers the same bytes from a plain-function keel_worker handler, without
WSGI, to show the adapter's cost; "asgi" from an ASGI app through the ASGI adapter.

All three answer every request with 200, "content-type: text/plain", "content-length: 14"
and "Hello, world!\\n".
"""

from __future__ import annotations

import sys
from typing import Any

from keel_worker import Exchange, serve, serve_asgi
from keel_worker.wsgi import serve_wsgi

import hello_wsgi

BODY = hello_wsgi.BODY
_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]


def plain_handler(ex: Exchange) -> None:
    ex.reply(200, _HEADERS, BODY)


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "wsgi"
    if mode == "wsgi":
        serve_wsgi(hello_wsgi.app)
    elif mode == "handler":
        serve(plain_handler)
    elif mode == "asgi":
        serve_asgi(asgi_app, lifespan=False)
    else:
        sys.exit(f"usage: {sys.argv[0]} [wsgi|handler|asgi]")


if __name__ == "__main__":
    main()

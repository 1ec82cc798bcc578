"""keel_worker: a Python (asyncio, standard library only) implementation of the keel worker
protocol, version 1 (docs/worker-protocol.md).

- :func:`serve` runs a plain ``async def handler(ex: Exchange)`` as a keel worker.
- :func:`serve_asgi` runs an ASGI 3 application as a keel worker.
"""

from .asgi import ASGIApp, asgi_handler, serve_asgi
from .protocol import AbortCode, CachePolicy, ProtocolError
from .worker import Aborted, Exchange, Handler, Worker, serve

__all__ = [
    "ASGIApp", "asgi_handler", "serve_asgi", "AbortCode", "CachePolicy", "ProtocolError",
    "Aborted", "Exchange", "Handler", "Worker", "serve",
]
__version__ = "0.1.0"

"""ASGI 3 adapter: run a plain ASGI application as a keel worker.

    from keel_worker import serve_asgi
    serve_asgi(app)

Per request the application gets an ``http`` scope; ``receive()`` yields ``http.request``
messages as the body streams in (each one consumed grants the daemon more request window),
then ``http.disconnect`` once the response is complete or the daemon aborted the stream.
``send()`` takes ``http.response.start`` and ``http.response.body``. The ``lifespan``
protocol is run around the worker's life when the application supports it.

keel extensions, in ``scope["extensions"]["keel"]``: ``invalidate(url: bytes, prefix: bool)``,
``deadline_ms`` and ``stream_id``; and an optional ``"keel.cache": (policy, ttl)`` key in
``http.response.start`` to set the RESPONSE cache policy.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NoReturn

from . import protocol as p
from .worker import Aborted, Exchange, Handler, Worker, configure_logging

__all__ = ["ASGIApp", "asgi_handler", "serve_asgi", "ClientDisconnected", "build_scope"]

log = logging.getLogger("keel_worker.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_HTTP_VERSIONS = {10: "1.0", 11: "1.1", 20: "2", 30: "3"}
_ASGI = {"version": "3.0", "spec_version": "2.4"}


class ClientDisconnected(OSError):
    """``send()`` after the daemon aborted the stream (client gone, deadline, shutdown)."""


def build_scope(ex: Exchange, state: dict[str, Any] | None = None) -> Scope:
    req = ex.request
    scope: Scope = {
        "type": "http",
        "asgi": dict(_ASGI),
        "http_version": _HTTP_VERSIONS.get(req.http_version, "1.1"),
        "method": ex.method,
        "scheme": "https" if req.tls else "http",
        "path": ex.path,
        "raw_path": ex.raw_path,
        "query_string": ex.query_string,
        "root_path": "",
        "headers": list(req.headers),
        "client": req.client.as_tuple(),
        "server": req.local.as_tuple(),
        "extensions": {
            "keel": {
                "invalidate": ex.invalidate,
                "deadline_ms": req.deadline_ms,
                "stream_id": req.stream_id,
                "server_name": req.server_name,
            }
        },
    }
    if state is not None:
        scope["state"] = dict(state)
    return scope


def asgi_handler(app: ASGIApp, state: dict[str, Any] | None = None) -> Handler:
    """Wraps an ASGI application as a keel request handler."""

    async def handler(ex: Exchange) -> None:
        scope = build_scope(ex, state)
        body_done = False
        started = False
        complete = False

        async def receive() -> Message:
            nonlocal body_done
            if ex.aborted:
                return {"type": "http.disconnect"}
            if not body_done:
                try:
                    chunk = await ex.receive()
                except Aborted:
                    return {"type": "http.disconnect"}
                more = bool(chunk) and not (ex.state.request_ended and not ex._chunks)
                if not more:
                    body_done = True
                return {"type": "http.request", "body": chunk, "more_body": more}
            await ex.wait_closed()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal started, complete
            if ex.aborted:
                raise ClientDisconnected("the client went away")
            kind = message["type"]
            if kind == "http.response.start":
                if started:
                    raise RuntimeError("http.response.start sent twice")
                started = True
                headers = [(bytes(n), bytes(v)) for n, v in message.get("headers", ())]
                cache, ttl = message.get("keel.cache", (p.CachePolicy.NONE, 0))
                ex.start_response(int(message["status"]), headers, cache, ttl)
            elif kind == "http.response.body":
                if not started:
                    raise RuntimeError("http.response.body before http.response.start")
                if complete:
                    raise RuntimeError("http.response.body after the response completed")
                more = bool(message.get("more_body", False))
                try:
                    await ex.send(bytes(message.get("body", b"")), end=not more)
                except Aborted as e:
                    raise ClientDisconnected(str(e)) from e
                if not more:
                    complete = True
            else:
                raise RuntimeError(f"unexpected ASGI message {kind!r}")

        await app(scope, receive, send)
        if started and not complete and not ex.aborted:
            raise RuntimeError("the ASGI application returned before completing its response")

    return handler


class _Lifespan:
    """Runs the ASGI lifespan protocol; applications that do not support it are tolerated."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.supported = True

    async def _run(self) -> None:
        scope: Scope = {"type": "lifespan", "asgi": dict(_ASGI), "state": self.state}
        try:
            await self.app(scope, self.inbox.get, self.outbox.put)
        except Exception as e:
            self.supported = False
            log.debug("lifespan not supported: %r", e)
        finally:
            await self.outbox.put({"type": "lifespan.ended"})

    async def _exchange(self, kind: str) -> None:
        await self.inbox.put({"type": f"lifespan.{kind}"})
        msg = await self.outbox.get()
        if msg["type"] == f"lifespan.{kind}.failed":
            raise RuntimeError(f"lifespan {kind} failed: {msg.get('message', '')}")

    async def startup(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())
        await self._exchange("startup")

    async def shutdown(self) -> None:
        if self.supported and self.task is not None and not self.task.done():
            await self._exchange("shutdown")
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


async def run_asgi(app: ASGIApp, *, capacity: int | None = None, lifespan: bool = True) -> int:
    """Runs ``app`` as a worker until drained or the daemon goes away; returns an exit code."""
    ls = _Lifespan(app) if lifespan else None
    if ls is not None:
        await ls.startup()  # before HELLO: the daemon's startup_timeout covers it
    worker = Worker(asgi_handler(app, ls.state if ls else None), capacity=capacity)
    try:
        return await worker.run()
    finally:
        if ls is not None:
            await ls.shutdown()


def serve_asgi(app: ASGIApp, *, capacity: int | None = None, lifespan: bool = True) -> NoReturn:
    """Serves ``app`` (an ASGI 3 callable) as a keel worker, then exits the process."""
    configure_logging()
    sys.exit(asyncio.run(run_asgi(app, capacity=capacity, lifespan=lifespan)))

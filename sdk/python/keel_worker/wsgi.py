"""WSGI adapter: run a WSGI (PEP 3333) application as a keel worker.

    from keel_worker.wsgi import serve_wsgi
    from myapp import app
    serve_wsgi(app)

The application runs on the worker's event loop, one call at a time, as in a WSGI server
with one process and one thread (``wsgi.multithread`` is false). A request whose body came
whole in its REQUEST frame (every GET, and small POSTs) is answered inline, by the read
loop, without a task: its STARTED is in the kernel, the application is called, and the
response leaves with the other responses of the same read. A request whose body streams in
is read first, in a task (into memory, or a temporary file past ``spool_bytes``), then the
application is called the same way. A response body that fits in the response window
(256 KiB by default) is sent at once; a longer one is sent as the daemon grants window,
taking chunks from the application's iterable only as they can be sent.

While the application runs, the worker answers no PING; a request that takes longer than
the pool's ``ping_timeout`` gets the worker killed, as with any single-threaded worker.
"""

from __future__ import annotations

import io
import logging
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Any, NoReturn, Protocol, cast
from urllib.parse import unquote_to_bytes

from . import protocol as p
from .worker import Exchange, Worker, configure_logging

__all__ = ["WSGIApp", "wsgi_handler", "serve_wsgi", "build_environ"]

log = logging.getLogger("keel_worker.wsgi")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class StartResponse(Protocol):
    def __call__(self, status: str, headers: list[tuple[str, str]],
                 exc_info: ExcInfo | None = None, /) -> Callable[[bytes], object]: ...


WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_SERVER_PROTOCOL = {10: "HTTP/1.0", 11: "HTTP/1.1", 20: "HTTP/2", 30: "HTTP/3"}
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}
# Request header name -> environ key; bounded, names repeat.
_ENV_KEYS: dict[bytes, str] = {b"content-type": "CONTENT_TYPE",
                               b"content-length": "CONTENT_LENGTH"}
_ENV_KEYS_MAX = 1024
# (status line, headers) -> (status, RESPONSE payload head); bounded, responses repeat.
_HEADS: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[int, bytes]] = {}
_HEADS_MAX = 1024
_SPOOL_BYTES = 1 << 20
_EMPTY = b""


def _env_key(name: bytes) -> str:
    key = _ENV_KEYS.get(name)
    if key is None:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if len(_ENV_KEYS) < _ENV_KEYS_MAX:
            _ENV_KEYS[name] = key
    return key


def _head(status: str, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
    """The status code and encoded RESPONSE head for a WSGI status line and header list."""
    key = (status, tuple(headers))
    hit = _HEADS.get(key)
    if hit is not None:
        return hit
    try:
        code = int(status[:3])
    except ValueError:
        raise ValueError(f"WSGI status {status!r} does not start with a 3-digit code") from None
    if code == 101:
        raise ValueError("WSGI applications cannot switch protocols (status 101)")
    hdrs = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers]
    hit = (code, p.response_head_payload(code, hdrs))
    if len(_HEADS) >= _HEADS_MAX:
        _HEADS.clear()
    _HEADS[key] = hit
    return hit


ServerKeys = dict[tuple[bytes, bytes, int, bool], dict[str, Any]]
# client addr -> (REMOTE_ADDR, REMOTE_PORT); bounded.
_REMOTE: dict[bytes, tuple[str, str] | None] = {}
_CACHE_MAX = 4096


def _server_keys(req: p.Request, base: dict[str, Any], cache: ServerKeys) -> dict[str, Any]:
    """``base`` with the keys that the local address, server name, HTTP version and TLS
    decide; ``cache`` remembers them (bounded: listening addresses are few)."""
    tls = bool(req.req_flags & p.REQ_FLAG_TLS)
    key = (req.local_raw, req.server_name, req.http_version, tls)
    env = cache.get(key)
    if env is None:
        local = req.local
        env = dict(base)
        env["SERVER_NAME"] = (req.server_name.decode("latin-1") if req.server_name
                              else local.host or "localhost")
        env["SERVER_PORT"] = str(local.port) if local.port else ("443" if tls else "80")
        env["SERVER_PROTOCOL"] = _SERVER_PROTOCOL.get(req.http_version, "HTTP/1.1")
        env["wsgi.url_scheme"] = "https" if tls else "http"
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[key] = env
    return env


def _remote(raw: bytes) -> tuple[str, str] | None:
    hit = _REMOTE.get(raw, False)
    if hit is False:
        a = p.addr_from_bytes(raw)
        hit = (a.host, str(a.port)) if a.family else None
        if len(_REMOTE) >= _CACHE_MAX:
            _REMOTE.clear()
        _REMOTE[raw] = hit
    return hit  # type: ignore[return-value]


def build_environ(ex: Exchange, body: IO[bytes], base: dict[str, Any],
                  server_keys: ServerKeys | None = None) -> dict[str, Any]:
    """The PEP 3333 environ of one request (``base`` holds the keys that never change;
    ``server_keys``, when given, caches the keys that depend on the listening address)."""
    req = ex.request
    env = _server_keys(req, base, {} if server_keys is None else server_keys).copy()
    method = req.method
    env["REQUEST_METHOD"] = _METHODS.get(method) or method.decode("latin-1")
    target = req.target
    # find(), not `in`: CPython 3.11's bytes `in` builds and drops a TypeError each time.
    if target.find(b"?") >= 0 or not target.startswith(b"/"):
        path, query = ex.raw_path, ex.query_string
        env["QUERY_STRING"] = query.decode("latin-1")
    else:
        path = target
        env["QUERY_STRING"] = ""
    if path.find(b"%") >= 0:
        path = unquote_to_bytes(path)
    env["PATH_INFO"] = path.decode("latin-1")
    remote = _REMOTE.get(req.client_raw) or _remote(req.client_raw)
    if remote is not None:
        env["REMOTE_ADDR"], env["REMOTE_PORT"] = remote
    env["wsgi.input"] = body
    headers = req.headers
    fields = tuple(headers)
    header_keys = _HEADER_ENVS.get(fields)
    if header_keys is None:
        header_keys = _header_env(headers)
        if (len(fields) <= _HEADER_ENV_FIELDS
                and sum(len(n) + len(v) for n, v in fields) <= _HEADER_ENV_BYTES):
            if len(_HEADER_ENVS) >= _HEADER_ENVS_MAX:
                _HEADER_ENVS.clear()
            _HEADER_ENVS[fields] = header_keys
    env.update(header_keys)
    return env


# A request's fields -> their environ keys: a client sends the same fields with each
# request. Bounded in entries, and in the fields and bytes of one entry.
_HEADER_ENVS: dict[tuple[p.Header, ...], dict[str, str]] = {}
_HEADER_ENVS_MAX = 1024
_HEADER_ENV_FIELDS = 64
_HEADER_ENV_BYTES = 4096


def _header_env(headers: list[p.Header]) -> dict[str, str]:
    """The environ keys of request fields: ``HTTP_*`` (repeated fields joined, as a CGI
    server does, cookies with "; "), ``CONTENT_TYPE`` and ``CONTENT_LENGTH``."""
    env: dict[str, str] = {}
    keys = _ENV_KEYS
    for name, value in headers:
        key = keys.get(name) or _env_key(name)
        v = value.decode("latin-1")
        if key in env and key.startswith("HTTP_"):
            env[key] += ("; " if key == "HTTP_COOKIE" else ",") + v
        else:
            env[key] = v
    return env


class _EmptyInput(io.RawIOBase):
    """``wsgi.input`` of a request without a body: always at its end, shared (stateless)."""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        return 0

    def read(self, size: int | None = -1) -> bytes:
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        return b""

    def close(self) -> None:  # shared: never closed
        pass


_EMPTY_INPUT = cast(IO[bytes], _EmptyInput())


class _Response:
    """What the application handed to ``start_response`` (and ``write``)."""

    __slots__ = ("status", "head", "written", "sent")

    def __init__(self) -> None:
        self.status = 0
        self.head = _EMPTY
        self.written: list[bytes] | None = None  # bytes given to write()
        self.sent = False                        # the head has left: exc_info re-raises

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: ExcInfo | None = None) -> Callable[[bytes], object]:
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status:
            raise RuntimeError("start_response called twice without exc_info")
        self.status, self.head = _head(status, headers)
        return self.write

    def write(self, data: bytes) -> None:
        if not self.status:
            raise RuntimeError("write() before start_response()")
        if self.written is None:
            self.written = []
        self.written.append(data)


def _close(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def wsgi_handler(app: WSGIApp, *, spool_bytes: int = _SPOOL_BYTES,
                 max_body: int | None = None) -> Callable[[Exchange], Any]:
    """A keel handler running the WSGI callable ``app``. A streamed request body is held in
    memory up to ``spool_bytes``, beyond that in a temporary file; ``max_body`` (bytes)
    answers larger bodies with 413 without calling the application."""
    base: dict[str, Any] = {
        "SCRIPT_NAME": "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "keel.exchange": None,
    }
    server_keys: ServerKeys = {}

    def call(ex: Exchange, body: IO[bytes]) -> Any:
        """Calls the application; answers at once when its whole response fits the
        window, else returns a coroutine that streams the rest."""
        env = build_environ(ex, body, base, server_keys)
        env["keel.exchange"] = ex
        resp = _Response()
        result = app(env, resp.start_response)
        try:
            if type(result) is list and resp.written is None:
                chunks = result
            else:
                # Take chunks while they fit in the window; stop early for a long body.
                chunks = resp.written or []
                room = ex.state.response_window
                it: Iterator[bytes] = iter(result)
                size = sum(len(c) for c in chunks)
                for chunk in it:
                    if chunk:
                        chunks.append(chunk)
                        size += len(chunk)
                        if size > room:
                            return _stream(ex, resp, chunks, it, result)
            if not resp.status:
                raise RuntimeError("the WSGI application returned without start_response")
            body_bytes = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            resp.sent = True
            ex._set_head(resp.status, resp.head)
            ex._send_now(body_bytes, True)
        except BaseException:
            _close(result)
            raise
        if type(result) is not list:
            _close(result)
        return None

    async def _stream(ex: Exchange, resp: _Response, chunks: list[bytes],
                      it: Iterator[bytes], result: Iterable[bytes]) -> None:
        try:
            if not resp.status:
                raise RuntimeError("the WSGI application yielded before start_response")
            resp.sent = True
            ex._set_head(resp.status, resp.head)
            for chunk in chunks:
                await ex.send(chunk)
            for chunk in it:
                if chunk:
                    await ex.send(chunk)
            await ex.send(b"", end=True)
        finally:
            _close(result)

    async def _read_then_call(ex: Exchange) -> None:
        body: IO[bytes] = io.BytesIO()
        size = 0
        try:
            while chunk := await ex.receive():
                size += len(chunk)
                if max_body is not None and size > max_body:
                    await ex.respond(413, [(b"content-type", b"text/plain")],
                                     b"request body too large\n")
                    return
                if size > spool_bytes and isinstance(body, io.BytesIO):
                    spooled = tempfile.TemporaryFile()
                    spooled.write(body.getbuffer())
                    body = spooled
                body.write(chunk)
            body.seek(0)
            rest = call(ex, body)
            if rest is not None:
                await rest
        finally:
            body.close()

    def handler(ex: Exchange) -> Any:
        body = ex.body_nowait()
        if body is None:
            return _read_then_call(ex)
        if max_body is not None and len(body) > max_body:
            ex.reply(413, [(b"content-type", b"text/plain")], b"request body too large\n")
            return None
        return call(ex, io.BytesIO(body) if body else _EMPTY_INPUT)

    return handler


def serve_wsgi(app: WSGIApp, *, capacity: int | None = None,
               spool_bytes: int = _SPOOL_BYTES, max_body: int | None = None) -> NoReturn:
    """Serves ``app`` (a WSGI callable) as a keel worker, then exits the process. The
    capacity defaults to ``KEEL_CAPACITY``, else 64: requests waiting for their body, or
    for window, do not hold the application."""
    configure_logging()
    Worker(wsgi_handler(app, spool_bytes=spool_bytes, max_body=max_body),
           capacity=capacity).serve()

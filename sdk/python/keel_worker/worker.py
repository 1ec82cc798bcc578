"""An asyncio keel worker: one connection to the daemon, one task per request.

    async def handler(ex: Exchange) -> None:
        body = await ex.read_body()
        await ex.respond(200, [(b"content-type", b"text/plain")], b"hello")

    keel_worker.serve(handler)

The connection is an :class:`asyncio.Protocol`, so frames are read in ``data_received``
(the "read loop"): PING is answered there, never behind application work. Outgoing frames
are appended to one ``bytearray`` and written once per event-loop turn.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NoReturn

from . import protocol as p
from .protocol import AbortCode, Frame, Header, Kind, ProtocolError, StreamState

__all__ = ["Worker", "Exchange", "Aborted", "Handler", "serve", "connect_from_env"]

log = logging.getLogger("keel_worker")

SOFTWARE = b"keel-py/0.1"
DEFAULT_CAPACITY = 64

Handler = Callable[["Exchange"], Awaitable[None]]


class Aborted(Exception):
    """The stream was aborted (by the daemon: client gone, deadline, shutdown)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"stream aborted (code {code})")
        self.code = code


def _asks_upgrade(headers: list[Header]) -> bool:
    """``upgrade`` and ``connection: upgrade``, as the daemon sends them (§11)."""
    upgrade = any(n == b"upgrade" for n, _ in headers)
    connection = any(n == b"connection" and b"upgrade" in v.lower() for n, v in headers)
    return upgrade and connection


class Exchange:
    """One request stream as the application sees it: the request head, the request body
    (``receive`` / ``read_body``), and the response (``start_response`` / ``send`` /
    ``respond``)."""

    def __init__(self, conn: _Connection, req: p.Request, state: StreamState) -> None:
        self._conn = conn
        self.request = req
        self.state = state
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._window_waiter: asyncio.Future[None] | None = None
        self._head: bytes | None = None  # RESPONSE payload head, pending until first send
        self._head_status = 0
        self.abort_code: int | None = None
        self.task: asyncio.Task[None] | None = None
        self.discarding = False
        target = req.target
        path, _, query = target.partition(b"?")
        if path.startswith((b"http://", b"https://")):  # absolute form, just in case
            rest = path.split(b"://", 1)[1]
            slash = rest.find(b"/")
            path = rest[slash:] if slash >= 0 else b"/"
        self.raw_path: bytes = path
        self.query_string: bytes = query
        # A request that asks to switch protocols comes without END_STREAM and has no body
        # (worker protocol §11): its request direction carries bytes only after a 101. Until
        # the handler answers 101, `receive()` sees an empty body.
        self.upgrade_request: bool = not req.end_stream and _asks_upgrade(req.headers)

    # ---- request head

    @property
    def stream_id(self) -> int:
        return self.request.stream_id

    @property
    def method(self) -> str:
        return self.request.method.decode("ascii")

    @property
    def target(self) -> bytes:
        return self.request.target

    @property
    def path(self) -> str:
        """The percent-decoded path (UTF-8, undecodable bytes replaced)."""
        return urllib.parse.unquote_to_bytes(self.raw_path).decode("utf-8", "replace")

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.query_string.decode("latin-1")))

    @property
    def headers(self) -> list[Header]:
        return self.request.headers

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.request.headers:
            if n == name:
                return v
        return None

    @property
    def aborted(self) -> bool:
        return self.abort_code is not None

    @property
    def responded(self) -> bool:
        return self.state.responded or self._head is not None

    # ---- request body

    async def receive(self) -> bytes:
        """The next request-body chunk; ``b""`` once the body is complete. Raises
        :class:`Aborted` if the stream was aborted. Consuming a chunk grants the daemon
        that much more request window."""
        while True:
            if self.abort_code is not None:
                raise Aborted(self.abort_code)
            if self._chunks:
                chunk = self._chunks.popleft()
                self._conn.consumed(self, len(chunk))
                return chunk
            if self.state.request_ended or (self.upgrade_request and self._head_status != 101):
                return b""
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def read_body(self, limit: int | None = None) -> bytes:
        parts: list[bytes] = []
        size = 0
        while chunk := await self.receive():
            size += len(chunk)
            if limit is not None and size > limit:
                raise ValueError(f"request body larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def wait_closed(self) -> None:
        """Waits until the stream is aborted or the response is complete."""
        while self.abort_code is None and not self.state.response_ended:
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        w = self._window_waiter
        if w is not None and not w.done():
            w.set_result(None)

    # ---- response

    def start_response(self, status: int, headers: list[Header] | tuple[Header, ...] = (),
                       cache: int = p.CachePolicy.NONE, ttl: int = 0) -> None:
        """Sets the response head; it leaves with the first ``send`` (so a small complete
        body travels inline in the RESPONSE frame). Header names are lower-cased."""
        if self.responded:
            raise RuntimeError("response already started")
        if self.abort_code is not None:
            raise Aborted(self.abort_code)
        if status == 101 and self.state.request_ended:
            raise ValueError("101 is allowed only while the request body is still open")
        hdrs = [(n.lower(), v) for n, v in headers]
        self._head = p.response_head_payload(status, hdrs, cache, ttl)
        self._head_status = status

    async def send(self, data: bytes = b"", end: bool = False) -> None:
        """Sends response-body bytes within the response window (waits for WINDOW when it is
        exhausted). ``end=True`` completes the response."""
        if self.abort_code is not None:
            raise Aborted(self.abort_code)
        st = self.state
        if st.response_ended:
            raise RuntimeError("response already complete")
        conn = self._conn
        sid = self.stream_id
        view = memoryview(data)
        chunk_max = min(p.MAX_DATA_CHUNK, conn.peer_max_payload)
        if not st.responded:
            head = self._head
            if head is None:
                raise RuntimeError("send() before start_response()")
            room = conn.peer_max_payload - len(head)
            if room < 0:
                raise ValueError("response head larger than the daemon's max_payload")
            n = min(len(view), st.response_window, chunk_max, room)
            fin = end and n == len(view)
            conn.queue(p.encode_frame(Kind.RESPONSE, sid, head + bytes(view[:n]),
                                      p.END_STREAM if fin else 0))
            st.responded = True
            st.started = True
            self._head = None
            if self._head_status == 101:
                st.upgraded = True
            st.on_sent(n)
            view = view[n:]
            if fin:
                conn.response_ended(self)
                return
        while len(view):
            while st.response_window == 0:
                if self.abort_code is not None:
                    raise Aborted(self.abort_code)
                self._window_waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._window_waiter
                finally:
                    self._window_waiter = None
                if self.abort_code is not None:
                    raise Aborted(self.abort_code)
            n = min(len(view), st.response_window, chunk_max)
            fin = end and n == len(view)
            conn.queue(p.encode_data(sid, bytes(view[:n]), fin))
            st.on_sent(n)
            view = view[n:]
            if fin:
                conn.response_ended(self)
                return
        if end:
            conn.queue(p.encode_data(sid, b"", True))
            conn.response_ended(self)

    async def end(self) -> None:
        await self.send(b"", end=True)

    async def respond(self, status: int, headers: list[Header] | tuple[Header, ...] = (),
                      body: bytes = b"", cache: int = p.CachePolicy.NONE, ttl: int = 0) -> None:
        """A complete response in one call."""
        self.start_response(status, headers, cache, ttl)
        await self.send(body, end=True)

    def invalidate(self, url: bytes, prefix: bool = False) -> None:
        self._conn.invalidate(url, prefix)


class _Connection(asyncio.Protocol):
    def __init__(self, worker: Worker, preamble: bytes = b"") -> None:
        self.worker = worker
        self.loop = asyncio.get_running_loop()
        self.preamble = preamble
        self.transport: asyncio.Transport | None = None
        self.reader = p.FrameReader(worker.max_payload)
        self.out = bytearray()
        self.flush_scheduled = False
        self.paused = False
        self.kernel_waiters: list[asyncio.Future[None]] = []
        self.welcome: p.Welcome | None = None
        self.peer_max_payload = p.DEFAULT_MAX_PAYLOAD
        self.initial_window = p.DEFAULT_INITIAL_WINDOW
        self.capacity = worker.capacity
        self.streams: dict[int, Exchange] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        self.done: asyncio.Future[int] = self.loop.create_future()

    # ---- transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # pause_writing() whenever anything is left in the transport's buffer and
        # resume_writing() once it is empty: that is how we know bytes reached the kernel.
        transport.set_write_buffer_limits(high=0, low=0)
        w = self.worker
        self.queue(self.preamble + p.encode_hello(os.getpid(), w.capacity, w.max_payload,
                                                  w.software))
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        try:
            for frame in self.reader.feed(data):
                self.dispatch(frame)
        except ProtocolError as e:
            self.fatal(f"protocol error from the daemon: {e}")

    def eof_received(self) -> bool | None:
        self.finish(0, "daemon closed the connection")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish(0, f"connection lost{': ' + str(exc) if exc else ''}")

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.release_kernel_waiters()

    # ---- writing

    def queue(self, frame: bytes) -> None:
        self.out += frame
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(bytes(self.out))
        self.out.clear()
        if not self.paused:
            self.release_kernel_waiters()

    def release_kernel_waiters(self) -> None:
        waiters, self.kernel_waiters = self.kernel_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def written(self) -> None:
        """Waits until everything queued so far has been handed to the kernel."""
        fut: asyncio.Future[None] = self.loop.create_future()
        self.kernel_waiters.append(fut)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)
        await fut

    def invalidate(self, url: bytes, prefix: bool) -> None:
        self.queue(p.encode_invalidate(url, prefix))

    # ---- reading

    def dispatch(self, f: Frame) -> None:
        kind = f.kind
        if self.welcome is None:
            if kind != Kind.WELCOME:
                raise ProtocolError(f"first frame is {kind.name}, not WELCOME")
            self.on_welcome(p.decode_welcome(f.payload))
            return
        if kind == Kind.REQUEST:
            self.on_request(p.decode_request(f))
        elif kind == Kind.DATA:
            self.on_data(f)
        elif kind == Kind.WINDOW:
            inc = p.decode_window(f.payload)
            ex = self.streams.get(f.stream_id)
            if ex is not None:
                ex.state.on_window(inc)
                w = ex._window_waiter
                if w is not None and not w.done():
                    w.set_result(None)
            # else: credit for a stream we already finished; harmless.
        elif kind == Kind.PING:
            p.decode_nonce(f.payload)
            self.queue(p.encode_pong(f.payload))
        elif kind == Kind.ABORT:
            self.on_abort(f.stream_id, p.decode_abort(f.payload))
        elif kind == Kind.DRAIN:
            timeout_ms = p.decode_drain(f.payload)
            log.info("DRAIN received (timeout %d ms); %d stream(s) open",
                     timeout_ms, len(self.streams))
            self.draining = True
            self.maybe_finish_drain()
        elif kind == Kind.WELCOME:
            raise ProtocolError("second WELCOME")
        else:
            raise ProtocolError(f"{kind.name} is never sent by the daemon")

    def on_welcome(self, w: p.Welcome) -> None:
        if w.version != p.PROTOCOL_VERSION:
            raise ProtocolError(f"WELCOME version {w.version}, this worker speaks 1")
        if w.initial_window > p.MAX_WINDOW:
            raise ProtocolError(f"WELCOME initial_window {w.initial_window} > 2^31-1")
        self.welcome = w
        self.peer_max_payload = p.clamp_max_payload(w.max_payload)
        self.initial_window = w.initial_window
        self.capacity = w.capacity
        log.debug("WELCOME pool=%s capacity=%d window=%d max_payload=%d",
                  w.pool.decode("utf-8", "replace"), w.capacity, w.initial_window,
                  w.max_payload)
        self.worker.on_welcome(w)

    def on_request(self, req: p.Request) -> None:
        sid = req.stream_id
        if sid in self.streams:
            raise p.StreamError(f"REQUEST for stream {sid}, which is already open")
        if len(self.streams) >= self.capacity:
            raise p.StreamError(f"REQUEST beyond capacity {self.capacity}")
        if self.draining:
            log.warning("REQUEST on stream %d after DRAIN; serving it anyway", sid)
        st = StreamState(sid, self.initial_window, self.initial_window)
        st.on_request_body(len(req.body), req.end_stream)
        ex = Exchange(self, req, st)
        if req.body:
            ex._chunks.append(req.body)
        self.streams[sid] = ex
        task = self.loop.create_task(self.run(ex))
        ex.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def on_data(self, f: Frame) -> None:
        ex = self.streams.get(f.stream_id)
        if ex is None:
            # In flight when we ended the stream (our ABORT crossed it). Ignore.
            log.debug("DATA for stream %d, which is not open; ignored", f.stream_id)
            return
        st = ex.state
        st.on_request_body(len(f.payload), f.end_stream)
        if ex.discarding:
            if f.payload:
                self.consumed(ex, len(f.payload))
        elif f.payload:
            ex._chunks.append(f.payload)
        ex._wake()
        if st.closed:
            self.close_stream(ex)

    def on_abort(self, sid: int, code: int) -> None:
        ex = self.streams.get(sid)
        if ex is None:
            return  # we had already ended it; nothing more is needed (§9)
        ex.abort_code = code
        if not ex.state.response_ended:
            self.queue(p.encode_abort(sid, AbortCode.HANDLER_FAILED))
        ex.state.aborted = True
        ex._wake()
        task = ex.task
        if task is not None and not task.done():
            # Scheduled after the wake-up, so a handler blocked in receive() sees the abort
            # (ASGI: http.disconnect) before it is cancelled at its next await.
            self.loop.call_soon(task.cancel)
        self.close_stream(ex)

    # ---- stream bookkeeping

    def consumed(self, ex: Exchange, n: int) -> None:
        inc = ex.state.consume(n)
        if inc and not ex.state.closed:
            self.queue(p.encode_window(ex.stream_id, inc))

    def response_ended(self, ex: Exchange) -> None:
        ex.state.response_ended = True
        ex._wake()
        if ex.state.closed:
            self.close_stream(ex)

    def close_stream(self, ex: Exchange) -> None:
        if self.streams.get(ex.stream_id) is ex:
            del self.streams[ex.stream_id]
        self.maybe_finish_drain()

    def maybe_finish_drain(self) -> None:
        if self.draining and not self.streams:
            self.finish(0, "drained")

    async def run(self, ex: Exchange) -> None:
        st = ex.state
        sid = ex.stream_id
        try:
            # STARTED must be in the kernel before application code runs: if the app kills
            # the process right away, the daemon has still seen it (§7).
            self.queue(p.encode_started(sid))
            st.started = True
            await self.written()
            if ex.abort_code is not None:
                return
            await self.worker.handler(ex)
            if ex.abort_code is not None:
                return
            if not st.responded:
                if ex._head is not None:
                    await ex.send(b"", end=True)
                else:
                    log.error("handler for %s %r returned without a response",
                              ex.method, ex.target)
                    self.abort_stream(ex)
                    return
            elif not st.response_ended:
                await ex.send(b"", end=True)
        except (asyncio.CancelledError, Aborted):
            if ex.abort_code is None:  # cancelled for another reason (shutdown)
                self.abort_stream(ex, AbortCode.SHUTDOWN)
            return
        except Exception:
            log.exception("handler for %s %r failed", ex.method, ex.target)
            self.abort_stream(ex)
            return
        if not st.closed:
            # The response is complete but the request body is not: keep reading it (and
            # granting WINDOW) until the daemon's END_STREAM, so the stream can close (§6).
            ex.discarding = True
            pending = sum(len(c) for c in ex._chunks)
            ex._chunks.clear()
            if pending:
                self.consumed(ex, pending)

    def abort_stream(self, ex: Exchange, code: int = AbortCode.HANDLER_FAILED) -> None:
        if self.streams.get(ex.stream_id) is not ex or ex.state.closed:
            return
        self.queue(p.encode_abort(ex.stream_id, code))
        ex.state.aborted = True
        if ex.abort_code is None:
            ex.abort_code = code
        ex._wake()
        self.close_stream(ex)

    def fatal(self, msg: str) -> None:
        log.error("%s; exiting", msg)
        self.finish(1, msg)

    def finish(self, code: int, why: str) -> None:
        if self.done.done():
            return
        log.debug("connection finished: %s", why)
        if self.transport is not None:
            if self.out:
                self.transport.write(bytes(self.out))
                self.out.clear()
            self.transport.close()
        self.done.set_result(code)


class Worker:
    """A keel worker process. ``handler`` is called once per request, in its own task."""

    def __init__(self, handler: Handler, *, capacity: int | None = None,
                 max_payload: int = p.DEFAULT_MAX_PAYLOAD, software: bytes = SOFTWARE) -> None:
        if capacity is None:
            env = os.environ.get("KEEL_CAPACITY")
            capacity = int(env) if env else DEFAULT_CAPACITY
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if not p.DEFAULT_MAX_PAYLOAD <= max_payload <= p.MAX_PAYLOAD_LIMIT:
            raise ValueError("max_payload must be in 1 MiB..=16 MiB")
        self.handler = handler
        self.capacity = capacity
        self.max_payload = max_payload
        self.software = software
        self.welcome: p.Welcome | None = None
        self._conn: _Connection | None = None

    @property
    def pool(self) -> str:
        """The pool name: ``$KEEL_POOL`` if set, else the name WELCOME carried."""
        env = os.environ.get("KEEL_POOL")
        if env is not None:
            return env
        return self.welcome.pool.decode("utf-8", "replace") if self.welcome else ""

    def on_welcome(self, w: p.Welcome) -> None:
        self.welcome = w

    def invalidate(self, url: bytes, prefix: bool = False) -> None:
        """Drops cached responses of this pool: the exact URL, or every URL with the prefix."""
        if self._conn is None:
            raise RuntimeError("not connected")
        self._conn.invalidate(url, prefix)

    async def run(self, sock: socket.socket | None = None, preamble: bytes = b"") -> int:
        """Serves until DRAIN completes or the daemon goes away. Returns the exit code."""
        if sock is None:
            sock, preamble = connect_from_env()
        loop = asyncio.get_running_loop()
        transport, conn = await loop.connect_accepted_socket(
            lambda: _Connection(self, preamble), sock=sock)
        self._conn = conn
        try:
            code = await conn.done
        finally:
            for t in list(conn.tasks):
                t.cancel()
            if conn.tasks:
                await asyncio.gather(*conn.tasks, return_exceptions=True)
            transport.close()
        return code

    def serve(self) -> NoReturn:
        """Runs the worker in a new event loop and exits the process with its status."""
        configure_logging()
        sys.exit(asyncio.run(self.run()))


def configure_logging() -> None:
    if not logging.getLogger().handlers:
        level = os.environ.get("KEEL_PY_LOG", "INFO").upper()
        logging.basicConfig(stream=sys.stderr, level=level,
                            format="%(levelname)s keel_worker[%(process)d]: %(message)s")


def connect_from_env() -> tuple[socket.socket, bytes]:
    """The daemon connection: the inherited ``KEEL_FD``, or an attach socket named by
    ``KEEL_ATTACH`` (token from ``KEEL_ATTACH_TOKEN``, default ``token`` beside it).
    Returns the socket and the bytes to send before HELLO (the attach preamble)."""
    fd = os.environ.get("KEEL_FD")
    if fd:
        sock = socket.socket(fileno=int(fd))
        sock.set_inheritable(False)
        return sock, b""
    path = os.environ.get("KEEL_ATTACH")
    if path:
        return attach(path, os.environ.get("KEEL_ATTACH_TOKEN"))
    raise RuntimeError("neither KEEL_FD nor KEEL_ATTACH is set: start me from keel")


def attach(path: str, token_file: str | None = None) -> tuple[socket.socket, bytes]:
    """Connects to a pool's attach socket (§15). The token is read as late as possible."""
    if token_file is None:
        token_file = os.path.join(os.path.dirname(path), "token")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    with open(token_file, "rb") as fh:
        token = fh.read().strip()
    if len(token) != 64:
        raise RuntimeError(f"{token_file}: expected 64 hex characters")
    return sock, b"KEEL-ATTACH " + token + b"\n"


def serve(handler: Handler, *, capacity: int | None = None,
          max_payload: int = p.DEFAULT_MAX_PAYLOAD, software: bytes = SOFTWARE) -> NoReturn:
    """``Worker(handler, ...).serve()``: serve until drained, then exit."""
    Worker(handler, capacity=capacity, max_payload=max_payload, software=software).serve()

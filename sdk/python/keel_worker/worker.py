"""An asyncio keel worker: one connection to the daemon, requests run as they arrive.

    async def handler(ex: Exchange) -> None:          # a coroutine: one task per request
        body = await ex.read_body()
        await ex.respond(200, [(b"content-type", b"text/plain")], b"hello")

    def handler(ex: Exchange) -> None:                # a plain function: no task at all
        ex.reply(200, [(b"content-type", b"text/plain")], b"hello")

    keel_worker.serve(handler)

The connection is an :class:`asyncio.BufferedProtocol`: the event loop reads into one
buffer the connection keeps (no new 256 KiB object per read), and the bytes read are handled
in ``data_received`` (the "read loop"): PING is answered there, never behind application
work. Every frame of
one read is handled in one pass; the STARTED frames of the requests that arrived in it
leave in one ``write`` (checked to be in the kernel before any handler runs), and the
frames the handlers produce leave in one more.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import sys
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NoReturn

from . import protocol as p
from .protocol import AbortCode, Header, Kind, ProtocolError, StreamState

__all__ = ["Worker", "Exchange", "Aborted", "Handler", "serve", "connect_from_env"]

log = logging.getLogger("keel_worker")

SOFTWARE = b"keel-py/0.2"
DEFAULT_CAPACITY = 64

# A handler is either a coroutine function (run in its own task) or a plain function, run
# inline by the read loop; a plain function may return an awaitable to go on in a task.
Handler = Callable[["Exchange"], Awaitable[None] | None]

_HDR = struct.Struct(">IBBHI")
_U32 = struct.Struct(">I")
_HDR_PACK = _HDR.pack
_HDR_UNPACK = _HDR.unpack_from
_U32_UNPACK = _U32.unpack_from
_END = p.END_STREAM
_REQUEST = int(Kind.REQUEST)
_DATA = int(Kind.DATA)
_STARTED = int(Kind.STARTED)
_RESPONSE = int(Kind.RESPONSE)
_WINDOW = int(Kind.WINDOW)
_PING = int(Kind.PING)
_PONG = int(Kind.PONG)
_DRAIN = int(Kind.DRAIN)
_ABORT = int(Kind.ABORT)
_WELCOME = int(Kind.WELCOME)
_STREAM_CODES = frozenset(int(k) for k in p.STREAM_KINDS)
_KNOWN_CODES = frozenset(int(k) for k in Kind)
_EAGER = sys.version_info >= (3, 12)


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


def _split_target(target: bytes) -> tuple[bytes, bytes]:
    path, _, query = target.partition(b"?")
    if path.startswith((b"http://", b"https://")):  # absolute form, just in case
        rest = path.split(b"://", 1)[1]
        slash = rest.find(b"/")
        path = rest[slash:] if slash >= 0 else b"/"
    return path, query


class Exchange:
    """One request stream as the application sees it: the request head, the request body
    (``receive`` / ``read_body`` / ``body_nowait``), and the response (``start_response`` /
    ``send`` / ``respond``, or ``reply`` without awaiting)."""

    __slots__ = ("_conn", "request", "state", "_chunks", "_waiter", "_window_waiter", "_head",
                 "_head_status", "abort_code", "task", "discarding", "_pending", "_pending_end",
                 "_split", "upgrade_request", "__dict__")

    def __init__(self, conn: _Connection, req: p.Request, state: StreamState) -> None:
        self._conn = conn
        self.request = req
        self.state = state
        self._chunks: deque[bytes] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._window_waiter: asyncio.Future[None] | None = None
        self._head: bytes | None = None  # RESPONSE payload head, pending until first send
        self._head_status = 0
        self.abort_code: int | None = None
        self.task: asyncio.Task[None] | None = None
        self.discarding = False
        # Response bytes waiting for window (from reply()), and whether they end it.
        self._pending: memoryview | None = None
        self._pending_end = False
        self._split: tuple[bytes, bytes] | None = None
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
    def raw_path(self) -> bytes:
        """The path part of the target, as sent (percent-encoded)."""
        s = self._split
        if s is None:
            s = self._split = _split_target(self.request.target)
        return s[0]

    @property
    def query_string(self) -> bytes:
        s = self._split
        if s is None:
            s = self._split = _split_target(self.request.target)
        return s[1]

    @property
    def path(self) -> str:
        """The percent-decoded path (UTF-8, undecodable bytes replaced)."""
        raw = self.raw_path
        if raw.find(b"%") < 0:
            return raw.decode("utf-8", "replace")
        return urllib.parse.unquote_to_bytes(raw).decode("utf-8", "replace")

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
            chunks = self._chunks
            if chunks:
                chunk = chunks.popleft()
                self._conn.consumed(self, len(chunk))
                return chunk
            if self.state.request_ended or (self.upgrade_request and self._head_status != 101):
                return b""
            self._waiter = self._conn.loop.create_future()
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

    def body_nowait(self) -> bytes | None:
        """The whole request body if all of it has arrived (always so for a request that
        came in one REQUEST frame), consumed; ``None`` while more is on its way (then use
        ``receive`` / ``read_body``)."""
        if not self.state.request_ended and not (
                self.upgrade_request and self._head_status != 101):
            return None
        chunks = self._chunks
        if not chunks:
            return b""
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._conn.consumed(self, len(body))
        return body

    async def wait_closed(self) -> None:
        """Waits until the stream is aborted or the response is complete."""
        while self.abort_code is None and not self.state.response_ended:
            self._waiter = self._conn.loop.create_future()
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
        if status == 101 and self.state.request_ended:
            raise ValueError("101 is allowed only while the request body is still open")
        hdrs = [(n.lower(), v) for n, v in headers]
        self._set_head(status, p.response_head_payload(status, hdrs, cache, ttl))

    def _set_head(self, status: int, head: bytes) -> None:
        """``start_response`` with the RESPONSE payload head already encoded and checked."""
        if self.state.responded or self._head is not None:
            raise RuntimeError("response already started")
        if self.abort_code is not None:
            raise Aborted(self.abort_code)
        self._head = head
        self._head_status = status

    def _send_now(self, data: bytes | bytearray | memoryview, end: bool) -> None:
        """Queues as much of ``data`` as the response window allows, without waiting; the
        rest is kept in ``_pending`` and sent as the daemon grants WINDOW."""
        st = self.state
        conn = self._conn
        sid = self.request.stream_id
        out = conn.out
        size = len(data)
        chunk_max = conn.chunk_max
        head = self._head
        if (end and head is not None and size <= chunk_max and size <= st.response_window
                and size + len(head) <= conn.peer_max_payload and self._head_status != 101):
            # The common case: the whole response in one RESPONSE frame.
            out += _HDR_PACK(len(head) + size, _RESPONSE, _END, 0, sid)
            out += head
            if size:
                out += data
            st.responded = True
            st.started = True
            self._head = None
            st.response_window -= size
            st.sent += size
            conn.wrote()
            conn.response_ended(self)
            return
        if not st.responded:
            if head is None:
                raise RuntimeError("send() before start_response()")
            room = conn.peer_max_payload - len(head)
            if room < 0:
                raise ValueError("response head larger than the daemon's max_payload")
            n = min(size, st.response_window, chunk_max, room)
            fin = end and n == size
            out += _HDR_PACK(len(head) + n, _RESPONSE, _END if fin else 0, 0, sid)
            out += head
            if n:
                out += data if n == size else data[:n]
            st.responded = True
            st.started = True
            self._head = None
            if self._head_status == 101:
                st.upgraded = True
            st.response_window -= n
            st.sent += n
            conn.wrote()
            if fin:
                conn.response_ended(self)
                return
            if n == size and not end:
                return
            data = memoryview(data)[n:]
            size -= n
        view = data if isinstance(data, memoryview) else memoryview(data)
        pos = 0
        while pos < size:
            n = min(size - pos, st.response_window, chunk_max)
            if n == 0:
                rest = view[pos:]
                # Kept past this call: a copy, unless the bytes cannot change.
                self._pending = rest if isinstance(rest.obj, bytes) else memoryview(bytes(rest))
                self._pending_end = end
                conn.wrote()
                return
            fin = end and pos + n == size
            out += _HDR_PACK(n, _DATA, _END if fin else 0, 0, sid)
            out += view[pos:pos + n]
            st.response_window -= n
            st.sent += n
            pos += n
            if fin:
                self._pending = None
                conn.wrote()
                conn.response_ended(self)
                return
        self._pending = None
        if end:
            out += _HDR_PACK(0, _DATA, _END, 0, sid)
            conn.wrote()
            conn.response_ended(self)
        elif pos:
            conn.wrote()

    def _on_window(self) -> None:
        """The daemon granted response window: send what was waiting for it."""
        pending = self._pending
        if pending is not None and self.abort_code is None and self.state.response_window:
            self._send_now(pending, self._pending_end)
        w = self._window_waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _drain_pending(self) -> None:
        """Waits until the bytes kept for lack of window have been queued."""
        while self._pending is not None:
            if self.abort_code is not None:
                raise Aborted(self.abort_code)
            self._window_waiter = self._conn.loop.create_future()
            try:
                await self._window_waiter
            finally:
                self._window_waiter = None
        if self.abort_code is not None:
            raise Aborted(self.abort_code)

    async def send(self, data: bytes = b"", end: bool = False) -> None:
        """Sends response-body bytes within the response window (waits for WINDOW when it is
        exhausted). ``end=True`` completes the response."""
        if self.abort_code is not None:
            raise Aborted(self.abort_code)
        if self._pending is not None:
            await self._drain_pending()
        if self.state.response_ended:
            raise RuntimeError("response already complete")
        self._send_now(data, end)
        if self._pending is not None:
            await self._drain_pending()

    async def end(self) -> None:
        await self.send(b"", end=True)

    async def respond(self, status: int, headers: list[Header] | tuple[Header, ...] = (),
                      body: bytes = b"", cache: int = p.CachePolicy.NONE, ttl: int = 0) -> None:
        """A complete response in one call."""
        self.start_response(status, headers, cache, ttl)
        await self.send(body, end=True)

    def reply(self, status: int, headers: list[Header] | tuple[Header, ...] = (),
              body: bytes = b"", cache: int = p.CachePolicy.NONE, ttl: int = 0) -> None:
        """A complete response in one call, without awaiting (for plain-function handlers).
        What does not fit in the response window is kept and sent as the daemon grants
        WINDOW; the stream completes then."""
        if self.abort_code is not None:
            raise Aborted(self.abort_code)
        self.start_response(status, headers, cache, ttl)
        self._send_now(body, True)

    def invalidate(self, url: bytes, prefix: bool = False) -> None:
        self._conn.invalidate(url, prefix)


# Bytes one read may take from the socket (as much as asyncio's own reads take).
READ_BUFFER = 256 * 1024


class _Connection(asyncio.BufferedProtocol):
    def __init__(self, worker: Worker, preamble: bytes = b"") -> None:
        self.worker = worker
        self.rbuf = memoryview(bytearray(READ_BUFFER))  # what the event loop reads into
        self.loop = asyncio.get_running_loop()
        self.preamble = preamble
        self.transport: asyncio.Transport | None = None
        self.max_payload = p.clamp_max_payload(worker.max_payload)
        self.buf = bytearray()      # the start of a frame whose rest has not arrived
        self.need = 0               # bytes that frame needs in all
        self.out = bytearray()
        self.flush_scheduled = False
        self.in_read = False        # inside data_received: its end flushes
        self.paused = False
        self.welcome: p.Welcome | None = None
        self.peer_max_payload = p.DEFAULT_MAX_PAYLOAD
        self.chunk_max = min(p.MAX_DATA_CHUNK, self.peer_max_payload)
        self.initial_window = p.DEFAULT_INITIAL_WINDOW
        self.capacity = worker.capacity
        self.streams: dict[int, Exchange] = {}
        self.new: list[Exchange] = []       # opened in this read, not yet started
        self.blocked: list[Exchange] = []   # STARTED queued, not yet in the kernel
        self.tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        self.done: asyncio.Future[int] = self.loop.create_future()
        self.handler = worker.handler

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

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.rbuf

    def buffer_updated(self, nbytes: int) -> None:
        # A copy of just the bytes read: frames are decoded from (and their payloads kept
        # as) bytes, and the buffer is read into again on the next turn.
        self.data_received(self.rbuf[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        buf = self.buf
        if buf:
            buf += data
            if len(buf) < self.need:
                return
            data = bytes(buf)
            buf.clear()
        self.in_read = True
        try:
            self.read_frames(data)
            if self.new:
                self.start_new()
        except ProtocolError as e:
            self.fatal(f"protocol error from the daemon: {e}")
            return
        finally:
            self.in_read = False
        if self.out:
            self.flush()

    def read_frames(self, data: bytes) -> None:
        """Handles every complete frame in ``data``; keeps the start of an incomplete one."""
        pos = 0
        size = len(data)
        max_payload = self.max_payload
        streams = self.streams
        while size - pos >= 12:
            length, code, flags, _reserved, sid = _HDR_UNPACK(data, pos)
            if length > max_payload:
                raise ProtocolError(
                    f"oversized frame: {length} bytes > max_payload {max_payload}")
            if code in _STREAM_CODES:
                if sid == 0:
                    raise ProtocolError(f"{Kind(code).name} frame with stream id 0")
            elif code not in _KNOWN_CODES:
                raise ProtocolError(f"unknown frame kind 0x{code:02x}")
            elif sid != 0:
                raise ProtocolError(f"{Kind(code).name} frame with stream id {sid} (must be 0)")
            start = pos + 12
            end = start + length
            if end > size:
                break
            pos = end
            if code == _REQUEST and self.welcome is not None:
                self.on_request(p.decode_request_payload(sid, flags, data[start:end]))
            elif code == _WINDOW and self.welcome is not None:
                if length != 4:
                    raise ProtocolError("WINDOW: " + ("payload too short" if length < 4
                                                      else "trailing bytes"))
                (inc,) = _U32_UNPACK(data, start)
                if inc == 0:
                    raise ProtocolError("WINDOW: increment 0")
                ex = streams.get(sid)
                if ex is not None:
                    ex.state.on_window(inc)
                    ex._on_window()
                # else: credit for a stream we already finished; harmless.
            elif code == _DATA and self.welcome is not None:
                self.on_data(sid, flags, data[start:end])
            else:
                self.dispatch(p.Frame(Kind(code), flags, sid, data[start:end]))
        if pos < size:
            self.buf += data[pos:] if pos else data
            if size - pos >= 12:
                self.need = 12 + _U32_UNPACK(data, pos)[0]
            else:
                self.need = 12

    def eof_received(self) -> bool | None:
        self.finish(0, "daemon closed the connection")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish(0, f"connection lost{': ' + str(exc) if exc else ''}")

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.blocked:
            blocked, self.blocked = self.blocked, []
            self.run_handlers(blocked)

    # ---- writing

    def queue(self, frame: bytes) -> None:
        self.out += frame
        self.wrote()

    def wrote(self) -> None:
        """Something was appended to ``out``: make sure it is flushed soon (at the end of
        the current read, or on the next loop turn)."""
        if not self.flush_scheduled and not self.in_read:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        if not out:
            return
        self.out = bytearray()
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(out)

    def invalidate(self, url: bytes, prefix: bool) -> None:
        self.queue(p.encode_invalidate(url, prefix))

    # ---- reading

    def dispatch(self, f: p.Frame) -> None:
        kind = f.kind
        if self.welcome is None:
            if kind != Kind.WELCOME:
                raise ProtocolError(f"first frame is {kind.name}, not WELCOME")
            self.on_welcome(p.decode_welcome(f.payload))
            return
        if kind == Kind.PING:
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
        self.chunk_max = min(p.MAX_DATA_CHUNK, self.peer_max_payload)
        self.initial_window = w.initial_window
        self.capacity = w.capacity
        log.debug("WELCOME pool=%s capacity=%d window=%d max_payload=%d",
                  w.pool.decode("utf-8", "replace"), w.capacity, w.initial_window,
                  w.max_payload)
        self.worker.on_welcome(w)

    def on_request(self, req: p.Request) -> None:
        sid = req.stream_id
        streams = self.streams
        if sid in streams:
            raise p.StreamError(f"REQUEST for stream {sid}, which is already open")
        if len(streams) >= self.capacity:
            raise p.StreamError(f"REQUEST beyond capacity {self.capacity}")
        if self.draining:
            log.warning("REQUEST on stream %d after DRAIN; serving it anyway", sid)
        window = self.initial_window
        st = StreamState(sid, window, window)
        body = req.body
        if body or not req.end_stream:
            st.on_request_body(len(body), req.end_stream)
        else:
            st.request_ended = True
        ex = Exchange(self, req, st)
        if body:
            ex._chunks = deque((body,))
        streams[sid] = ex
        self.new.append(ex)

    def start_new(self) -> None:
        """STARTED for every request opened in this read, in one write; the handlers run
        once those bytes are in the kernel (at once, unless the socket is full)."""
        new, self.new = self.new, []
        out = self.out
        run = []
        for ex in new:
            if ex.abort_code is None:
                out += _HDR_PACK(0, _STARTED, 0, 0, ex.request.stream_id)
                ex.state.started = True
                run.append(ex)
        if not run:
            return
        self.flush()
        t = self.transport
        if t is None or t.is_closing():
            return
        if self.paused or self.blocked or t.get_write_buffer_size():
            self.blocked += run
            return
        self.run_handlers(run)

    def run_handlers(self, exs: list[Exchange]) -> None:
        if self.done.done():
            return
        handler = self.handler
        for ex in exs:
            if ex.abort_code is not None:
                continue
            try:
                result = handler(ex)
            except Aborted:
                continue
            except Exception:
                log.exception("handler for %s %r failed", ex.method, ex.target)
                self.abort_stream(ex)
                continue
            if result is None:
                self.handler_done(ex)
            else:
                self.spawn(ex, result)
        if not self.in_read and self.out:
            self.wrote()

    def spawn(self, ex: Exchange, aw: Awaitable[None]) -> None:
        coro = self.run(ex, aw)
        if _EAGER:
            task: asyncio.Task[None] = asyncio.Task(  # type: ignore[call-arg]
                coro, loop=self.loop, eager_start=True)
            if task.done():
                return
        else:
            task = self.loop.create_task(coro)
        ex.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def on_data(self, sid: int, flags: int, payload: bytes) -> None:
        ex = self.streams.get(sid)
        if ex is None:
            # In flight when we ended the stream (our ABORT crossed it). Ignore.
            log.debug("DATA for stream %d, which is not open; ignored", sid)
            return
        st = ex.state
        st.on_request_body(len(payload), bool(flags & _END))
        if ex.discarding:
            if payload:
                self.consumed(ex, len(payload))
        elif payload:
            if ex._chunks is None:
                ex._chunks = deque()
            ex._chunks.append(payload)
        ex._wake()
        if st.closed:
            self.close_stream(ex)

    def on_abort(self, sid: int, code: int) -> None:
        ex = self.streams.get(sid)
        if ex is None:
            return  # we had already ended it; nothing more is needed (§9)
        ex.abort_code = code
        ex._pending = None
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
            self.queue(p.encode_window(ex.request.stream_id, inc))

    def response_ended(self, ex: Exchange) -> None:
        st = ex.state
        st.response_ended = True
        if ex._waiter is not None or ex._window_waiter is not None:
            ex._wake()
        if st.request_ended or st.aborted:
            self.close_stream(ex)

    def close_stream(self, ex: Exchange) -> None:
        sid = ex.request.stream_id
        if self.streams.get(sid) is ex:
            del self.streams[sid]
        if self.draining:
            self.maybe_finish_drain()

    def maybe_finish_drain(self) -> None:
        if self.draining and not self.streams:
            self.finish(0, "drained")

    def handler_done(self, ex: Exchange) -> None:
        """The handler returned: end a response it left open, abort a stream it left
        unanswered, and keep reading (and discarding) a request body it did not read."""
        st = ex.state
        if ex.abort_code is not None:
            return
        if not st.responded:
            if ex._head is None:
                log.error("handler for %s %r returned without a response", ex.method, ex.target)
                self.abort_stream(ex)
                return
            ex._send_now(b"", True)
        elif not st.response_ended:
            if ex._pending is not None:
                ex._pending_end = True
            else:
                ex._send_now(b"", True)
        if not st.closed:
            # The response is (or will be) complete but the request body is not: keep
            # reading it (and granting WINDOW) until the daemon's END_STREAM, so the stream
            # can close (§6).
            ex.discarding = True
            chunks = ex._chunks
            if chunks:
                pending = sum(len(c) for c in chunks)
                chunks.clear()
                self.consumed(ex, pending)

    async def run(self, ex: Exchange, aw: Awaitable[None]) -> None:
        try:
            await aw
        except (asyncio.CancelledError, Aborted):
            if ex.abort_code is None:  # cancelled for another reason (shutdown)
                self.abort_stream(ex, AbortCode.SHUTDOWN)
            return
        except Exception:
            log.exception("handler for %s %r failed", ex.method, ex.target)
            self.abort_stream(ex)
            return
        self.handler_done(ex)

    def abort_stream(self, ex: Exchange, code: int = AbortCode.HANDLER_FAILED) -> None:
        if self.streams.get(ex.request.stream_id) is not ex or ex.state.closed:
            return
        self.queue(p.encode_abort(ex.request.stream_id, code))
        ex.state.aborted = True
        ex._pending = None
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
    """A keel worker process. ``handler`` is called once per request: a coroutine function
    runs in its own task; a plain function runs inline (see :class:`Exchange`'s ``reply``
    and ``body_nowait``) and may return an awaitable to go on in a task."""

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


"""Frame codec and per-stream state for the keel worker protocol, version 1.

Written from ``docs/worker-protocol.md`` alone. Every integer is unsigned big-endian.
A frame is a 12-byte header (length u32, kind u8, flags u8, reserved u16, stream id u32)
followed by ``length`` payload bytes.

This module is pure (no I/O): encoders return ``bytes``; :class:`FrameReader` turns a byte
stream into :class:`Frame` objects; ``decode_*`` functions validate payloads and return typed
messages; :class:`StreamState` keeps the two flow-control windows and the lifecycle flags of
one stream.
"""

from __future__ import annotations

import enum
import socket
import struct
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "PROTOCOL_VERSION", "HEADER_LEN", "DEFAULT_MAX_PAYLOAD", "MAX_PAYLOAD_LIMIT",
    "DEFAULT_INITIAL_WINDOW", "MAX_WINDOW", "MAX_DATA_CHUNK", "END_STREAM",
    "REQ_FLAG_TLS", "Kind", "AbortCode", "CachePolicy", "ProtocolError", "StreamError",
    "Frame", "FrameReader", "Addr", "Hello", "Welcome", "Request", "Response",
    "Invalidate", "Header", "encode_frame", "encode_hello", "encode_welcome",
    "encode_request", "encode_data", "encode_started", "encode_response", "encode_window",
    "encode_ping", "encode_pong", "encode_drain", "encode_abort", "encode_invalidate",
    "decode_hello", "decode_welcome", "decode_request", "decode_request_payload",
    "addr_from_bytes", "decode_response", "decode_window",
    "decode_nonce", "decode_drain", "decode_abort", "decode_invalidate", "check_started",
    "response_head_payload", "STREAM_KINDS",
    "StreamState", "is_token", "check_header_value", "clamp_max_payload",
]

PROTOCOL_VERSION: Final = 1
HEADER_LEN: Final = 12
DEFAULT_MAX_PAYLOAD: Final = 1 << 20          # 1 MiB
MAX_PAYLOAD_LIMIT: Final = 16 << 20           # 16 MiB
DEFAULT_INITIAL_WINDOW: Final = 256 * 1024    # 262 144
MAX_WINDOW: Final = (1 << 31) - 1
MAX_DATA_CHUNK: Final = 64 * 1024
MAX_STR16: Final = 0xFFFF
MAX_U32: Final = 0xFFFF_FFFF

END_STREAM: Final = 0x01
REQ_FLAG_TLS: Final = 0x01

_HDR = struct.Struct(">IBBHI")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HELLO = struct.Struct(">HIII")
_WELCOME = struct.Struct(">HIII")
_REQ_FIXED = struct.Struct(">BBI")
_RESP_FIXED = struct.Struct(">HBI")


class Kind(enum.IntEnum):
    HELLO = 0x01
    WELCOME = 0x02
    REQUEST = 0x03
    DATA = 0x04
    STARTED = 0x05
    RESPONSE = 0x06
    WINDOW = 0x07
    PING = 0x08
    PONG = 0x09
    DRAIN = 0x0A
    ABORT = 0x0B
    INVALIDATE = 0x0C


STREAM_KINDS: Final = frozenset(
    {Kind.REQUEST, Kind.DATA, Kind.STARTED, Kind.RESPONSE, Kind.WINDOW, Kind.ABORT}
)
_KIND_BY_CODE: Final = {int(k): k for k in Kind}


class AbortCode(enum.IntEnum):
    CLIENT_GONE = 1
    HANDLER_FAILED = 2
    TIMEOUT = 3
    PROTOCOL = 4
    SHUTDOWN = 5


class CachePolicy(enum.IntEnum):
    NONE = 0
    TTL = 1
    UNTIL_INVALIDATED = 2


class ProtocolError(Exception):
    """The peer broke the protocol (malformed frame, unknown kind, oversized frame, or a
    stream error). Ends the connection."""


class StreamError(ProtocolError):
    """A well-formed frame not allowed at this point of a stream's life (§4.2). In version 1
    it ends the connection like any other protocol error."""


def clamp_max_payload(announced: int) -> int:
    """§2: an announcement above 16 MiB is treated as 16 MiB."""
    return min(announced, MAX_PAYLOAD_LIMIT)


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    flags: int
    stream_id: int
    payload: bytes

    @property
    def end_stream(self) -> bool:
        return bool(self.flags & END_STREAM)


def encode_frame(kind: int, stream_id: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """Header + payload. The caller keeps ``payload`` within the peer's ``max_payload``."""
    if len(payload) > MAX_PAYLOAD_LIMIT:
        raise ValueError(f"payload of {len(payload)} bytes exceeds 16 MiB")
    return _HDR.pack(len(payload), kind, flags & 0xFF, 0, stream_id) + payload


class FrameReader:
    """Incremental frame splitter. ``feed`` returns the complete frames received so far.

    Applies the frame-level rules that need no payload decoding (§4.1): the length limit
    (checked from the header alone, before the payload is buffered), known kinds, and the
    stream-id rule for stream and connection frames.
    """

    __slots__ = ("max_payload", "_buf")

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = clamp_max_payload(max_payload)
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_LEN:
            length, code, flags, _reserved, sid = _HDR.unpack_from(buf, pos)
            if length > self.max_payload:
                raise ProtocolError(
                    f"oversized frame: {length} bytes > max_payload {self.max_payload}"
                )
            kind = _KIND_BY_CODE.get(code)
            if kind is None:
                raise ProtocolError(f"unknown frame kind 0x{code:02x}")
            if kind in STREAM_KINDS:
                if sid == 0:
                    raise ProtocolError(f"{kind.name} frame with stream id 0")
            elif sid != 0:
                raise ProtocolError(f"{kind.name} frame with stream id {sid} (must be 0)")
            if end - pos - HEADER_LEN < length:
                break
            start = pos + HEADER_LEN
            frames.append(Frame(kind, flags, sid, bytes(buf[start:start + length])))
            pos = start + length
        if pos:
            del buf[:pos]
        return frames


# --------------------------------------------------------------------------- fields

_TCHAR: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789"
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


_TCHAR_BYTES: Final = bytes(sorted(_TCHAR))
_URL_BYTES: Final = bytes(c for c in range(0x21, 0x100) if c != 0x7F)


def is_token(b: bytes) -> bool:
    """RFC 9110 token: non-empty, only tchar bytes."""
    return bool(b) and not b.translate(None, _TCHAR_BYTES)


def check_header_value(v: bytes) -> bool:
    """§4.1: no CR, LF or NUL; anything else (empty, tabs, bytes >= 0x80) is allowed."""
    # find(), not `in`: CPython 3.11's bytes `in` builds and drops a TypeError each time.
    return v.find(b"\r") < 0 and v.find(b"\n") < 0 and v.find(b"\x00") < 0


def _check_url_bytes(b: bytes) -> bool:
    """Non-empty, no byte <= 0x20, no 0x7F (REQUEST target, INVALIDATE url)."""
    return bool(b) and not b.translate(None, _URL_BYTES)


Header = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Addr:
    """An ``addr`` field: family 0 (unknown), 4 or 6. ``host`` is the textual address."""

    family: int
    host: str = ""
    port: int = 0

    def encode(self) -> bytes:
        if self.family == 0:
            return b"\x00"
        if self.family == 4:
            return b"\x04" + socket.inet_pton(socket.AF_INET, self.host) + _U16.pack(self.port)
        if self.family == 6:
            return b"\x06" + socket.inet_pton(socket.AF_INET6, self.host) + _U16.pack(self.port)
        raise ValueError(f"bad address family {self.family}")

    def as_tuple(self) -> tuple[str, int] | None:
        return None if self.family == 0 else (self.host, self.port)


# The encoded size of an ``addr`` field by its family byte.
_ADDR_LEN: Final = {0: 1, 4: 7, 6: 19}
_ADDR_UNKNOWN: Final = Addr(0)
_addr_cache: dict[bytes, Addr] = {}
_ADDR_CACHE_MAX: Final = 4096


def addr_from_bytes(raw: bytes) -> Addr:
    """An ``addr`` field's bytes (family byte first, already checked) as an :class:`Addr`.
    Decoded addresses are remembered (a bounded cache): clients come back."""
    a = _addr_cache.get(raw)
    if a is not None:
        return a
    fam = raw[0]
    if fam == 4:
        a = Addr(4, socket.inet_ntop(socket.AF_INET, raw[1:5]), _U16.unpack_from(raw, 5)[0])
    elif fam == 6:
        a = Addr(6, socket.inet_ntop(socket.AF_INET6, raw[1:17]), _U16.unpack_from(raw, 17)[0])
    else:
        return _ADDR_UNKNOWN
    if len(_addr_cache) >= _ADDR_CACHE_MAX:
        _addr_cache.clear()
    _addr_cache[raw] = a
    return a


class _Cursor:
    """Bounds-checked reader over one payload."""

    __slots__ = ("b", "pos", "what")

    def __init__(self, b: bytes, what: str) -> None:
        self.b = b
        self.pos = 0
        self.what = what

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.b):
            raise ProtocolError(f"{self.what}: payload too short")

    def u8(self) -> int:
        self._need(1)
        v = self.b[self.pos]
        self.pos += 1
        return v

    def u16(self) -> int:
        self._need(2)
        (v,) = _U16.unpack_from(self.b, self.pos)
        self.pos += 2
        return int(v)

    def u32(self) -> int:
        self._need(4)
        (v,) = _U32.unpack_from(self.b, self.pos)
        self.pos += 4
        return int(v)

    def take(self, n: int) -> bytes:
        self._need(n)
        v = self.b[self.pos:self.pos + n]
        self.pos += n
        return v

    def str16(self) -> bytes:
        return self.take(self.u16())

    def addr(self) -> Addr:
        fam = self.u8()
        n = _ADDR_LEN.get(fam)
        if n is None:
            raise ProtocolError(f"{self.what}: bad address family {fam}")
        self.pos -= 1
        return addr_from_bytes(self.take(n))

    def headers(self) -> list[Header]:
        n = self.u16()
        out: list[Header] = []
        for _ in range(n):
            name = self.str16()
            value = self.str16()
            if not is_token(name):
                raise ProtocolError(f"{self.what}: header name {name!r} is not a token")
            if not check_header_value(value):
                raise ProtocolError(f"{self.what}: header {name!r} value holds CR, LF or NUL")
            out.append((name, value))
        return out

    def rest(self) -> bytes:
        v = self.b[self.pos:]
        self.pos = len(self.b)
        return v

    def exact_end(self) -> None:
        if self.pos != len(self.b):
            raise ProtocolError(f"{self.what}: trailing bytes")


def _str16(b: bytes) -> bytes:
    if len(b) > MAX_STR16:
        raise ValueError(f"str16 field of {len(b)} bytes exceeds 65535")
    return _U16.pack(len(b)) + b


def _headers(headers: list[Header] | tuple[Header, ...]) -> bytes:
    if len(headers) > 0xFFFF:
        raise ValueError("more than 65535 header fields")
    parts = [_U16.pack(len(headers))]
    for name, value in headers:
        if not is_token(name):
            raise ValueError(f"header name {name!r} is not an RFC 9110 token")
        if not check_header_value(value):
            raise ValueError(f"header {name!r} value holds CR, LF or NUL")
        parts.append(_str16(name))
        parts.append(_str16(value))
    return b"".join(parts)


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    pid: int
    capacity: int
    max_payload: int
    software: bytes


@dataclass(frozen=True, slots=True)
class Welcome:
    version: int
    max_payload: int
    initial_window: int
    capacity: int
    pool: bytes


class Request:
    """A decoded REQUEST frame. ``client`` and ``local`` are decoded from their bytes when
    first read (``client_raw`` / ``local_raw`` hold the ``addr`` fields as sent)."""

    __slots__ = ("stream_id", "http_version", "req_flags", "deadline_ms", "method", "target",
                 "server_name", "client_raw", "local_raw", "headers", "body", "end_stream")

    def __init__(self, stream_id: int, http_version: int, req_flags: int, deadline_ms: int,
                 method: bytes, target: bytes, server_name: bytes, client: Addr | bytes,
                 local: Addr | bytes, headers: list[Header], body: bytes,
                 end_stream: bool) -> None:
        self.stream_id = stream_id
        self.http_version = http_version
        self.req_flags = req_flags
        self.deadline_ms = deadline_ms
        self.method = method
        self.target = target
        self.server_name = server_name
        self.client_raw = client.encode() if isinstance(client, Addr) else client
        self.local_raw = local.encode() if isinstance(local, Addr) else local
        self.headers = headers
        self.body = body
        self.end_stream = end_stream

    @property
    def client(self) -> Addr:
        return addr_from_bytes(self.client_raw)

    @property
    def local(self) -> Addr:
        return addr_from_bytes(self.local_raw)

    @property
    def tls(self) -> bool:
        return bool(self.req_flags & REQ_FLAG_TLS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in Request.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Request(stream_id={self.stream_id}, method={self.method!r}, "
                f"target={self.target!r}, headers={self.headers!r}, body={self.body!r}, "
                f"end_stream={self.end_stream})")


@dataclass(frozen=True, slots=True)
class Response:
    stream_id: int
    status: int
    cache: int
    ttl: int
    headers: list[Header]
    body: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True)
class Invalidate:
    prefix: bool
    url: bytes


# ---- encoders (worker -> daemon, and daemon -> worker for tests and fakes)


def encode_hello(pid: int, capacity: int, max_payload: int, software: bytes,
                 version: int = PROTOCOL_VERSION) -> bytes:
    if capacity < 1:
        raise ValueError("capacity must be >= 1")
    body = _HELLO.pack(version, pid, capacity, max_payload) + _str16(software)
    return encode_frame(Kind.HELLO, 0, body)


def encode_welcome(max_payload: int, initial_window: int, capacity: int, pool: bytes,
                   version: int = PROTOCOL_VERSION) -> bytes:
    body = _WELCOME.pack(version, max_payload, initial_window, capacity) + _str16(pool)
    return encode_frame(Kind.WELCOME, 0, body)


def encode_request(stream_id: int, method: bytes, target: bytes, *,
                   headers: list[Header] | None = None, body: bytes = b"",
                   end_stream: bool = True, http_version: int = 11, tls: bool = False,
                   deadline_ms: int = 0, server_name: bytes = b"",
                   client: Addr = Addr(0), local: Addr = Addr(0)) -> bytes:
    payload = b"".join([
        _REQ_FIXED.pack(http_version, REQ_FLAG_TLS if tls else 0, deadline_ms),
        _str16(method), _str16(target), _str16(server_name),
        client.encode(), local.encode(), _headers(headers or []), body,
    ])
    return encode_frame(Kind.REQUEST, stream_id, payload, END_STREAM if end_stream else 0)


def encode_data(stream_id: int, data: bytes, end_stream: bool = False) -> bytes:
    return encode_frame(Kind.DATA, stream_id, data, END_STREAM if end_stream else 0)


def encode_started(stream_id: int) -> bytes:
    return _HDR.pack(0, Kind.STARTED, 0, 0, stream_id)


def response_head_payload(status: int, headers: list[Header] | tuple[Header, ...],
                          cache: int = CachePolicy.NONE, ttl: int = 0) -> bytes:
    """The RESPONSE payload up to (not including) the inline body; validates as §4.1 and
    §6 require of a worker (status 101 or 200..=999; tokens; no CR/LF/NUL)."""
    if not (status == 101 or 200 <= status <= 999):
        raise ValueError(f"status {status}: a worker may send 101 or 200..=999 only")
    if cache not in (0, 1, 2):
        raise ValueError(f"cache policy {cache} not in 0, 1, 2")
    if not 0 <= ttl <= MAX_U32:
        raise ValueError("ttl out of range")
    return _RESP_FIXED.pack(status, cache, ttl if cache == CachePolicy.TTL else 0) + _headers(headers)


def encode_response(stream_id: int, status: int, headers: list[Header] | tuple[Header, ...],
                    body: bytes = b"", end_stream: bool = True,
                    cache: int = CachePolicy.NONE, ttl: int = 0) -> bytes:
    payload = response_head_payload(status, headers, cache, ttl) + body
    return encode_frame(Kind.RESPONSE, stream_id, payload, END_STREAM if end_stream else 0)


def encode_window(stream_id: int, increment: int) -> bytes:
    if not 1 <= increment <= MAX_U32:
        raise ValueError(f"window increment {increment} out of 1..=2^32-1")
    return _HDR.pack(4, Kind.WINDOW, 0, 0, stream_id) + _U32.pack(increment)


def encode_ping(nonce: int) -> bytes:
    return encode_frame(Kind.PING, 0, _U64.pack(nonce))


def encode_pong(nonce_bytes: bytes) -> bytes:
    if len(nonce_bytes) != 8:
        raise ValueError("nonce must be 8 bytes")
    return encode_frame(Kind.PONG, 0, nonce_bytes)


def encode_drain(timeout_ms: int) -> bytes:
    return encode_frame(Kind.DRAIN, 0, _U32.pack(timeout_ms))


def encode_abort(stream_id: int, code: int) -> bytes:
    return _HDR.pack(4, Kind.ABORT, 0, 0, stream_id) + _U32.pack(code)


def encode_invalidate(url: bytes, prefix: bool = False) -> bytes:
    if not url.startswith(b"/") or not _check_url_bytes(url):
        raise ValueError("INVALIDATE url must start with '/' and hold no byte <= 0x20 or 0x7F")
    return encode_frame(Kind.INVALIDATE, 0, bytes([1 if prefix else 0]) + url)


# ---- decoders (payload -> message), with the §4.1 checks


def decode_hello(payload: bytes) -> Hello:
    c = _Cursor(payload, "HELLO")
    version = c.u16()
    pid = c.u32()
    capacity = c.u32()
    max_payload = c.u32()
    software = c.str16()
    return Hello(version, pid, capacity, max_payload, software)  # trailing bytes ignored


def decode_welcome(payload: bytes) -> Welcome:
    c = _Cursor(payload, "WELCOME")
    version = c.u16()
    max_payload = c.u32()
    initial_window = c.u32()
    capacity = c.u32()
    pool = c.str16()
    return Welcome(version, max_payload, initial_window, capacity, pool)  # trailing ignored


_REQ_HEAD = struct.Struct(">BBIH")  # http_version, req_flags, deadline_ms, method length
_HTTP_VERSIONS: Final = frozenset((10, 11, 20, 30))
# Methods and header names already checked to be tokens (they repeat); bounded.
_GOOD_TOKENS: set[bytes] = set()
_GOOD_TOKENS_MAX: Final = 4096


# Header values and targets already checked (short ones; they repeat); bounded.
_GOOD_VALUES: set[bytes] = set()
_GOOD_TARGETS: set[bytes] = set()
_GOOD_MAX_LEN: Final = 256

# Header blocks (the field count and the fields, when they end the payload: no inline body)
# already decoded and checked: a client sends the same fields, byte for byte, with each of
# its requests. Bounded in count and in the length of a block.
_HEADER_BLOCKS: dict[bytes, tuple[Header, ...]] = {}
_HEADER_BLOCKS_MAX: Final = 1024
_HEADER_BLOCK_MAX_LEN: Final = 4096


def _remember(good: set[bytes], b: bytes) -> None:
    if len(b) <= _GOOD_MAX_LEN:
        if len(good) >= _GOOD_TOKENS_MAX:
            good.clear()
        good.add(b)


def _good_token(b: bytes) -> bool:
    if b in _GOOD_TOKENS:
        return True
    if not b or b.translate(None, _TCHAR_BYTES):
        return False
    if len(_GOOD_TOKENS) >= _GOOD_TOKENS_MAX:
        _GOOD_TOKENS.clear()
    _GOOD_TOKENS.add(b)
    return True


def decode_request(frame: Frame) -> Request:
    return decode_request_payload(frame.stream_id, frame.flags, frame.payload)


def decode_request_payload(stream_id: int, flags: int, b: bytes) -> Request:
    """A REQUEST payload, with the §4.1 checks; the worker's hot path (one pass, no
    per-field calls)."""
    u16 = _U16.unpack_from
    good = _GOOD_TOKENS
    good_values = _GOOD_VALUES
    try:
        http_version, req_flags, deadline_ms, n = _REQ_HEAD.unpack_from(b, 0)
        pos = 8 + n
        method = b[8:pos]
        (n,) = u16(b, pos)
        pos += 2
        target = b[pos:pos + n]
        pos += n
        (n,) = u16(b, pos)
        pos += 2
        server_name = b[pos:pos + n]
        pos += n
        n = _ADDR_LEN.get(b[pos], 0)
        client = b[pos:pos + n]
        pos += n
        if n:
            n = _ADDR_LEN.get(b[pos], 0)
            local = b[pos:pos + n]
            pos += n
        if not n:
            raise ProtocolError("REQUEST: bad address family")
        block = b[pos:] if len(b) - pos <= _HEADER_BLOCK_MAX_LEN else None
        known = _HEADER_BLOCKS.get(block) if block is not None else None
        if known is not None:
            headers: list[Header] = list(known)
            count = 0
            pos = len(b)
        else:
            (count,) = u16(b, pos)
            pos += 2
            headers = []
        for _ in range(count):
            # Lengths by indexing: struct's unpack_from costs a call and a tuple each.
            n = b[pos] << 8 | b[pos + 1]
            pos += 2
            name = b[pos:pos + n]
            pos += n
            n = b[pos] << 8 | b[pos + 1]
            pos += 2
            value = b[pos:pos + n]
            pos += n
            if name not in good and not _good_token(name):
                raise ProtocolError(f"REQUEST: header name {name!r} is not a token")
            if value not in good_values:
                if not check_header_value(value):
                    raise ProtocolError(f"REQUEST: header {name!r} value holds CR, LF or NUL")
                _remember(good_values, value)
            headers.append((name, value))
    except (struct.error, IndexError):
        raise ProtocolError("REQUEST: payload too short") from None
    if pos > len(b):
        raise ProtocolError("REQUEST: payload too short")
    if count and pos == len(b) and block is not None:
        if len(_HEADER_BLOCKS) >= _HEADER_BLOCKS_MAX:
            _HEADER_BLOCKS.clear()
        _HEADER_BLOCKS[block] = tuple(headers)
    if http_version not in _HTTP_VERSIONS:
        raise ProtocolError(f"REQUEST: bad http_version {http_version}")
    if method not in good and not _good_token(method):
        raise ProtocolError(f"REQUEST: method {method!r} is not a token")
    if target not in _GOOD_TARGETS:
        if not target or target.translate(None, _URL_BYTES):
            raise ProtocolError(f"REQUEST: bad target {target!r}")
        _remember(_GOOD_TARGETS, target)
    return Request(stream_id, http_version, req_flags, deadline_ms, method, target,
                   server_name, client, local, headers, b[pos:] if pos < len(b) else b"",
                   bool(flags & END_STREAM))


def decode_response(frame: Frame) -> Response:
    c = _Cursor(frame.payload, "RESPONSE")
    status = c.u16()
    if not 100 <= status <= 999:
        raise ProtocolError(f"RESPONSE: status {status} out of 100..=999")
    cache = c.u8()
    if cache not in (0, 1, 2):
        raise ProtocolError(f"RESPONSE: bad cache policy {cache}")
    ttl = c.u32()
    headers = c.headers()
    return Response(frame.stream_id, status, cache, ttl, headers, c.rest(), frame.end_stream)


def _fixed_u32(payload: bytes, what: str) -> int:
    if len(payload) < 4:
        raise ProtocolError(f"{what}: payload too short")
    if len(payload) > 4:
        raise ProtocolError(f"{what}: trailing bytes")
    (v,) = _U32.unpack(payload)
    return int(v)


def decode_window(payload: bytes) -> int:
    inc = _fixed_u32(payload, "WINDOW")
    if inc == 0:
        raise ProtocolError("WINDOW: increment 0")
    return inc


def decode_nonce(payload: bytes) -> int:
    """PING / PONG: exactly 8 bytes."""
    if len(payload) < 8:
        raise ProtocolError("PING/PONG: payload too short")
    if len(payload) > 8:
        raise ProtocolError("PING/PONG: trailing bytes")
    (v,) = _U64.unpack(payload)
    return int(v)


def decode_drain(payload: bytes) -> int:
    return _fixed_u32(payload, "DRAIN")


def decode_abort(payload: bytes) -> int:
    return _fixed_u32(payload, "ABORT")


def check_started(payload: bytes) -> None:
    if payload:
        raise ProtocolError("STARTED: trailing bytes")


def decode_invalidate(payload: bytes) -> Invalidate:
    if not payload:
        raise ProtocolError("INVALIDATE: payload too short")
    scope, url = payload[0], payload[1:]
    if scope not in (0, 1):
        raise ProtocolError(f"INVALIDATE: bad scope {scope}")
    if not url.startswith(b"/") or not _check_url_bytes(url):
        raise ProtocolError("INVALIDATE: bad url")
    return Invalidate(scope == 1, url)


# --------------------------------------------------------------------------- streams


@dataclass(slots=True)
class StreamState:
    """Worker-side bookkeeping of one stream (§6, §8).

    ``request_window``: credit the daemon still has for request-body bytes (decreases as
    bytes arrive, increases by the WINDOWs we send). ``response_window``: credit we still
    have for response-body bytes (decreases as we send, increases by the daemon's WINDOWs).
    ``unacked``: request-body bytes received but not yet consumed by the application (we
    owe a WINDOW for them once consumed).
    """

    stream_id: int
    request_window: int
    response_window: int
    request_ended: bool = False
    started: bool = False
    responded: bool = False
    response_ended: bool = False
    aborted: bool = False
    upgraded: bool = False
    received: int = 0
    sent: int = 0
    unacked: int = field(default=0)

    # ---- request direction (daemon -> worker)

    def on_request_body(self, n: int, end_stream: bool) -> None:
        """Account for ``n`` request-body bytes arriving (inline REQUEST body or DATA)."""
        if self.request_ended:
            raise StreamError(f"stream {self.stream_id}: DATA after the request direction ended")
        if n > self.request_window:
            raise StreamError(
                f"stream {self.stream_id}: {n} body bytes beyond the request window "
                f"({self.request_window})"
            )
        self.request_window -= n
        self.received += n
        self.unacked += n
        if end_stream:
            self.request_ended = True

    def consume(self, n: int) -> int:
        """The application consumed ``n`` bytes: returns the WINDOW increment to send now
        (0 when none is due: the request direction has ended, so credit is useless)."""
        if n < 0 or n > self.unacked:
            raise ValueError("consumed more than was received")
        self.unacked -= n
        if self.request_ended or n == 0:
            return 0
        if self.request_window + n > MAX_WINDOW:
            raise ValueError("window would pass 2^31-1")
        self.request_window += n
        return n

    # ---- response direction (worker -> daemon)

    def on_window(self, increment: int) -> None:
        if self.response_window + increment > MAX_WINDOW:
            raise StreamError(
                f"stream {self.stream_id}: WINDOW grows the response window past 2^31-1"
            )
        self.response_window += increment

    def can_send(self) -> int:
        return self.response_window

    def on_sent(self, n: int) -> None:
        if n > self.response_window:
            raise ValueError(f"sending {n} bytes beyond the response window {self.response_window}")
        self.response_window -= n
        self.sent += n

    @property
    def closed(self) -> bool:
        """§6: closed when both directions ended, or after an ABORT either way."""
        return self.aborted or (self.request_ended and self.response_ended)

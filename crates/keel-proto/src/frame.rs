//! The frames of the worker protocol, as values. Layout on the wire: see `codec.rs` and
//! `docs/worker-protocol.md`.

use bytes::Bytes;
use std::net::SocketAddr;

/// Protocol version spoken by this crate. A peer announcing another major version is refused.
pub const PROTOCOL_VERSION: u16 = 1;

/// Bytes in every frame header: length (4), kind (1), flags (1), reserved (2), stream id (4).
pub const HEADER_LEN: usize = 12;

/// Largest payload either side must accept; a peer may announce a smaller or larger limit
/// (up to [`MAX_PAYLOAD_LIMIT`]) in its hello/welcome.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1 << 20;

/// No frame payload may ever exceed this, whatever a peer announces.
pub const MAX_PAYLOAD_LIMIT: u32 = 16 << 20;

/// Initial flow-control window for each direction of each request stream, in body bytes.
pub const DEFAULT_INITIAL_WINDOW: u32 = 256 * 1024;

/// Largest DATA payload a well-behaved sender writes at once (keeps frames interleavable).
pub const MAX_DATA_CHUNK: usize = 64 * 1024;

/// Flag bit: the sender's body for this stream is complete after this frame.
pub const FLAG_END_STREAM: u8 = 0x01;

/// Frame kind codes (the `kind` byte of the header).
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const REQUEST: u8 = 0x03;
    pub const DATA: u8 = 0x04;
    pub const STARTED: u8 = 0x05;
    pub const RESPONSE: u8 = 0x06;
    pub const WINDOW: u8 = 0x07;
    pub const PING: u8 = 0x08;
    pub const PONG: u8 = 0x09;
    pub const DRAIN: u8 = 0x0A;
    pub const ABORT: u8 = 0x0B;
    pub const INVALIDATE: u8 = 0x0C;
}

/// A request stream's id: chosen by the daemon, never 0 (0 names the connection itself),
/// unique among the streams open on one worker connection.
pub type StreamId = u32;

/// Worker → daemon, first frame on the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub pid: u32,
    /// How many requests the worker runs at once; the daemon never has more open.
    pub capacity: u32,
    /// Largest frame payload the worker accepts.
    pub max_payload: u32,
    /// Free text naming the worker software (for logs).
    pub software: Bytes,
}

/// Daemon → worker, answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub version: u16,
    /// Largest frame payload the daemon accepts.
    pub max_payload: u32,
    /// Initial window of every stream, both directions.
    pub initial_window: u32,
    /// The capacity the daemon will use (the smaller of the worker's and the pool's cap).
    pub capacity: u32,
    pub pool: Bytes,
}

/// HTTP version of the client's request, as the worker should see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    Http10,
    Http11,
    Http2,
    Http3,
}

impl HttpVersion {
    pub fn code(self) -> u8 {
        match self {
            HttpVersion::Http10 => 10,
            HttpVersion::Http11 => 11,
            HttpVersion::Http2 => 20,
            HttpVersion::Http3 => 30,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            10 => HttpVersion::Http10,
            11 => HttpVersion::Http11,
            20 => HttpVersion::Http2,
            30 => HttpVersion::Http3,
            _ => return None,
        })
    }
}

/// One header field as raw bytes. Names are lower-case tokens; values never hold CR, LF or NUL.
pub type Header = (Bytes, Bytes);

/// Daemon → worker: a new request stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub id: StreamId,
    pub method: Bytes,
    /// The request target as the client sent it (origin form: path and query).
    pub target: Bytes,
    pub version: HttpVersion,
    pub tls: bool,
    /// TLS server name (SNI) or empty.
    pub server_name: Bytes,
    pub client: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// Milliseconds the request may still take before the daemon gives up on it; 0 = no limit.
    pub deadline_ms: u32,
    pub headers: Vec<Header>,
    /// The first body bytes (all of them when `end` is set). Counts against the stream's window.
    pub body: Bytes,
    /// No DATA follows: the request body is exactly `body`.
    pub end: bool,
}

/// How the daemon may keep a response in its cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachePolicy {
    /// Decide from the response's own headers (Cache-Control, Expires).
    None,
    /// Keep for this many seconds.
    Ttl(u32),
    /// Keep until invalidated (INVALIDATE frame or admin command).
    UntilInvalidated,
}

/// Worker → daemon: the response head of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub id: StreamId,
    pub status: u16,
    pub cache: CachePolicy,
    pub headers: Vec<Header>,
    /// The first body bytes (all of them when `end` is set). Counts against the stream's window.
    pub body: Bytes,
    pub end: bool,
}

/// Why a stream was aborted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortCode {
    /// Daemon: the client went away. Worker: never.
    ClientGone,
    /// Worker: the handler failed or gave up.
    HandlerFailed,
    /// The request's deadline passed.
    Timeout,
    /// The peer broke the protocol on this stream.
    Protocol,
    /// The sender is shutting down.
    Shutdown,
    /// Any code this version does not know.
    Other(u32),
}

impl AbortCode {
    pub fn code(self) -> u32 {
        match self {
            AbortCode::ClientGone => 1,
            AbortCode::HandlerFailed => 2,
            AbortCode::Timeout => 3,
            AbortCode::Protocol => 4,
            AbortCode::Shutdown => 5,
            AbortCode::Other(c) => c,
        }
    }

    pub fn from_code(code: u32) -> Self {
        match code {
            1 => AbortCode::ClientGone,
            2 => AbortCode::HandlerFailed,
            3 => AbortCode::Timeout,
            4 => AbortCode::Protocol,
            5 => AbortCode::Shutdown,
            c => AbortCode::Other(c),
        }
    }
}

/// Which cache entries an INVALIDATE frame names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidateScope {
    Exact,
    Prefix,
}

/// Every frame of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    Request(RequestHead),
    /// Body bytes of a stream, in either direction. `end` with empty `data` is the bare "End".
    Data {
        id: StreamId,
        data: Bytes,
        end: bool,
    },
    /// Worker → daemon: the request was handed to application code.
    Started {
        id: StreamId,
    },
    Response(ResponseHead),
    /// The receiver of a stream's body grants the sender `increment` more bytes.
    Window {
        id: StreamId,
        increment: u32,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    /// Daemon → worker: finish what you have, take nothing new, then exit.
    Drain {
        timeout_ms: u32,
    },
    Abort {
        id: StreamId,
        code: AbortCode,
    },
    /// Worker → daemon: drop cached responses of the worker's own site.
    Invalidate {
        scope: InvalidateScope,
        url: Bytes,
    },
}

impl Frame {
    /// The stream this frame belongs to; 0 for connection-level frames.
    pub fn stream_id(&self) -> StreamId {
        match self {
            Frame::Request(h) => h.id,
            Frame::Response(h) => h.id,
            Frame::Data { id, .. }
            | Frame::Started { id }
            | Frame::Window { id, .. }
            | Frame::Abort { id, .. } => *id,
            Frame::Hello(_)
            | Frame::Welcome(_)
            | Frame::Ping { .. }
            | Frame::Pong { .. }
            | Frame::Drain { .. }
            | Frame::Invalidate { .. } => 0,
        }
    }
}

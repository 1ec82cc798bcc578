//! Frame encoding and decoding. Pure functions over byte buffers: no I/O, no clock.
//!
//! Every frame is a 12-byte header followed by `length` payload bytes:
//!
//! ```text
//! 0       4      5       6          8          12
//! | length | kind | flags | reserved | stream id | payload (length bytes) ...
//!   u32 BE   u8     u8      u16 (0)    u32 BE
//! ```
//!
//! The decoder checks the declared length against its limit before buffering the payload,
//! so a hostile peer can never make it allocate more than `max_payload + HEADER_LEN` bytes
//! per frame, and every field is bounds-checked: arbitrary bytes yield an error, never a panic.

use crate::frame::*;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why bytes from a peer are not a valid frame. Any of these ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    Oversized { len: u32, max: u32 },
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("malformed {kind} frame: {what}")]
    Malformed {
        kind: &'static str,
        what: &'static str,
    },
}

/// Why a frame cannot be encoded (a field is too long for its length prefix, or invalid).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{0} is too long for the frame layout")]
    TooLong(&'static str),
    #[error("frame payload of {0} bytes exceeds the protocol limit")]
    Oversized(usize),
}

/// Incremental frame decoder with a payload limit.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_payload: u32,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl Decoder {
    pub fn new(max_payload: u32) -> Self {
        Decoder {
            max_payload: max_payload.min(MAX_PAYLOAD_LIMIT),
        }
    }

    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// Takes one whole frame off the front of `buf`, or returns `Ok(None)` when more bytes are
    /// needed (having reserved room for the rest of the frame).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len > self.max_payload {
            return Err(DecodeError::Oversized {
                len,
                max: self.max_payload,
            });
        }
        let total = HEADER_LEN + len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let kind = buf[4];
        let flags = buf[5];
        let id = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let mut frame = buf.split_to(total);
        frame.advance(HEADER_LEN);
        parse_payload(kind, flags, id, frame.freeze()).map(Some)
    }
}

fn parse_payload(kind: u8, flags: u8, id: StreamId, payload: Bytes) -> Result<Frame, DecodeError> {
    let end = flags & FLAG_END_STREAM != 0;
    let mut r = Reader {
        buf: payload,
        kind: kind_name(kind),
    };
    let frame = match kind {
        kind::HELLO => {
            r.connection_frame(id)?;
            Frame::Hello(Hello {
                version: r.u16()?,
                pid: r.u32()?,
                capacity: r.u32()?,
                max_payload: r.u32()?,
                software: r.str16()?,
            })
        }
        kind::WELCOME => {
            r.connection_frame(id)?;
            Frame::Welcome(Welcome {
                version: r.u16()?,
                max_payload: r.u32()?,
                initial_window: r.u32()?,
                capacity: r.u32()?,
                pool: r.str16()?,
            })
        }
        kind::REQUEST => {
            r.stream_frame(id)?;
            let version =
                HttpVersion::from_code(r.u8()?).ok_or(r.malformed("unknown HTTP version"))?;
            let req_flags = r.u8()?;
            let deadline_ms = r.u32()?;
            let method = r.str16()?;
            if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
                return Err(r.malformed("method is not a token"));
            }
            let target = r.str16()?;
            if target.is_empty() || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
                return Err(r.malformed("target is empty or holds a space or control byte"));
            }
            let server_name = r.str16()?;
            let client = r.addr()?;
            let local = r.addr()?;
            let headers = r.headers()?;
            Frame::Request(RequestHead {
                id,
                method,
                target,
                version,
                tls: req_flags & 0x01 != 0,
                server_name,
                client,
                local,
                deadline_ms,
                headers,
                body: r.rest(),
                end,
            })
        }
        kind::DATA => {
            r.stream_frame(id)?;
            Frame::Data {
                id,
                data: r.rest(),
                end,
            }
        }
        kind::STARTED => {
            r.stream_frame(id)?;
            r.finish()?;
            Frame::Started { id }
        }
        kind::RESPONSE => {
            r.stream_frame(id)?;
            let status = r.u16()?;
            if !(100..=999).contains(&status) {
                return Err(r.malformed("status outside 100..=999"));
            }
            let cache_kind = r.u8()?;
            let ttl = r.u32()?;
            let cache = match cache_kind {
                0 => CachePolicy::None,
                1 => CachePolicy::Ttl(ttl),
                2 => CachePolicy::UntilInvalidated,
                _ => return Err(r.malformed("unknown cache policy")),
            };
            let headers = r.headers()?;
            Frame::Response(ResponseHead {
                id,
                status,
                cache,
                headers,
                body: r.rest(),
                end,
            })
        }
        kind::WINDOW => {
            r.stream_frame(id)?;
            let increment = r.u32()?;
            r.finish()?;
            if increment == 0 {
                return Err(r.malformed("zero window increment"));
            }
            Frame::Window { id, increment }
        }
        kind::PING | kind::PONG => {
            r.connection_frame(id)?;
            let nonce = r.u64()?;
            r.finish()?;
            if kind == kind::PING {
                Frame::Ping { nonce }
            } else {
                Frame::Pong { nonce }
            }
        }
        kind::DRAIN => {
            r.connection_frame(id)?;
            let timeout_ms = r.u32()?;
            r.finish()?;
            Frame::Drain { timeout_ms }
        }
        kind::ABORT => {
            r.stream_frame(id)?;
            let code = AbortCode::from_code(r.u32()?);
            r.finish()?;
            Frame::Abort { id, code }
        }
        kind::INVALIDATE => {
            r.connection_frame(id)?;
            let scope = match r.u8()? {
                0 => InvalidateScope::Exact,
                1 => InvalidateScope::Prefix,
                _ => return Err(r.malformed("unknown invalidate scope")),
            };
            let url = r.rest();
            if url.first() != Some(&b'/') || url.iter().any(|&b| b <= b' ' || b == 0x7f) {
                return Err(r.malformed("url must start with / and hold no space or control"));
            }
            Frame::Invalidate { scope, url }
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    Ok(frame)
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        kind::HELLO => "HELLO",
        kind::WELCOME => "WELCOME",
        kind::REQUEST => "REQUEST",
        kind::DATA => "DATA",
        kind::STARTED => "STARTED",
        kind::RESPONSE => "RESPONSE",
        kind::WINDOW => "WINDOW",
        kind::PING => "PING",
        kind::PONG => "PONG",
        kind::DRAIN => "DRAIN",
        kind::ABORT => "ABORT",
        kind::INVALIDATE => "INVALIDATE",
        _ => "unknown",
    }
}

/// RFC 9110 `tchar`.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A header value may hold any byte but CR, LF and NUL.
pub fn is_valid_header_value(v: &[u8]) -> bool {
    !v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
}

struct Reader {
    buf: Bytes,
    kind: &'static str,
}

impl Reader {
    fn malformed(&self, what: &'static str) -> DecodeError {
        DecodeError::Malformed {
            kind: self.kind,
            what,
        }
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(self.malformed("payload too short"))
        } else {
            Ok(())
        }
    }

    fn connection_frame(&self, id: StreamId) -> Result<(), DecodeError> {
        if id != 0 {
            return Err(self.malformed("connection frame with a stream id"));
        }
        Ok(())
    }

    fn stream_frame(&self, id: StreamId) -> Result<(), DecodeError> {
        if id == 0 {
            return Err(self.malformed("stream frame with stream id 0"));
        }
        Ok(())
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.has_remaining() {
            return Err(self.malformed("trailing bytes"));
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }

    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    fn str16(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()? as usize;
        self.bytes(n)
    }

    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    fn addr(&mut self) -> Result<Option<SocketAddr>, DecodeError> {
        let ip = match self.u8()? {
            0 => return Ok(None),
            4 => {
                self.need(4)?;
                let mut o = [0u8; 4];
                self.buf.copy_to_slice(&mut o);
                IpAddr::V4(Ipv4Addr::from(o))
            }
            6 => {
                self.need(16)?;
                let mut o = [0u8; 16];
                self.buf.copy_to_slice(&mut o);
                IpAddr::V6(Ipv6Addr::from(o))
            }
            _ => return Err(self.malformed("unknown address family")),
        };
        let port = self.u16()?;
        Ok(Some(SocketAddr::new(ip, port)))
    }

    fn headers(&mut self) -> Result<Vec<Header>, DecodeError> {
        let count = self.u16()? as usize;
        // Each header takes at least 4 bytes on the wire: never reserve more than the payload
        // can hold, whatever count a hostile peer declares.
        let mut headers = Vec::with_capacity(count.min(self.buf.remaining() / 4));
        for _ in 0..count {
            let name = self.str16()?;
            if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                return Err(self.malformed("header name is not a token"));
            }
            let value = self.str16()?;
            if !is_valid_header_value(&value) {
                return Err(self.malformed("header value holds CR, LF or NUL"));
            }
            headers.push((name, value));
        }
        Ok(headers)
    }
}

/// Appends one encoded frame to `out`.
pub fn encode(frame: &Frame, out: &mut BytesMut) -> Result<(), EncodeError> {
    let start = out.len();
    out.reserve(HEADER_LEN + 64);
    out.put_bytes(0, HEADER_LEN);
    let (kind, flags, id) = match frame {
        Frame::Hello(h) => {
            out.put_u16(h.version);
            out.put_u32(h.pid);
            out.put_u32(h.capacity);
            out.put_u32(h.max_payload);
            put_str16(out, &h.software, "software")?;
            (kind::HELLO, 0, 0)
        }
        Frame::Welcome(w) => {
            out.put_u16(w.version);
            out.put_u32(w.max_payload);
            out.put_u32(w.initial_window);
            out.put_u32(w.capacity);
            put_str16(out, &w.pool, "pool")?;
            (kind::WELCOME, 0, 0)
        }
        Frame::Request(h) => {
            out.put_u8(h.version.code());
            out.put_u8(h.tls as u8);
            out.put_u32(h.deadline_ms);
            put_str16(out, &h.method, "method")?;
            put_str16(out, &h.target, "target")?;
            put_str16(out, &h.server_name, "server name")?;
            put_addr(out, h.client);
            put_addr(out, h.local);
            put_headers(out, &h.headers)?;
            out.extend_from_slice(&h.body);
            (kind::REQUEST, end_flag(h.end), h.id)
        }
        Frame::Data { id, data, end } => {
            out.extend_from_slice(data);
            (kind::DATA, end_flag(*end), *id)
        }
        Frame::Started { id } => (kind::STARTED, 0, *id),
        Frame::Response(h) => {
            out.put_u16(h.status);
            let (k, ttl) = match h.cache {
                CachePolicy::None => (0, 0),
                CachePolicy::Ttl(t) => (1, t),
                CachePolicy::UntilInvalidated => (2, 0),
            };
            out.put_u8(k);
            out.put_u32(ttl);
            put_headers(out, &h.headers)?;
            out.extend_from_slice(&h.body);
            (kind::RESPONSE, end_flag(h.end), h.id)
        }
        Frame::Window { id, increment } => {
            out.put_u32(*increment);
            (kind::WINDOW, 0, *id)
        }
        Frame::Ping { nonce } => {
            out.put_u64(*nonce);
            (kind::PING, 0, 0)
        }
        Frame::Pong { nonce } => {
            out.put_u64(*nonce);
            (kind::PONG, 0, 0)
        }
        Frame::Drain { timeout_ms } => {
            out.put_u32(*timeout_ms);
            (kind::DRAIN, 0, 0)
        }
        Frame::Abort { id, code } => {
            out.put_u32(code.code());
            (kind::ABORT, 0, *id)
        }
        Frame::Invalidate { scope, url } => {
            out.put_u8(match scope {
                InvalidateScope::Exact => 0,
                InvalidateScope::Prefix => 1,
            });
            out.extend_from_slice(url);
            (kind::INVALIDATE, 0, 0)
        }
    };
    let len = out.len() - start - HEADER_LEN;
    if len > MAX_PAYLOAD_LIMIT as usize {
        out.truncate(start);
        return Err(EncodeError::Oversized(len));
    }
    let header = &mut out[start..start + HEADER_LEN];
    header[0..4].copy_from_slice(&(len as u32).to_be_bytes());
    header[4] = kind;
    header[5] = flags;
    header[8..12].copy_from_slice(&id.to_be_bytes());
    Ok(())
}

/// Appends a DATA frame without building a [`Frame`] (the hot path for bodies).
pub fn encode_data(id: StreamId, data: &[u8], end: bool, out: &mut BytesMut) {
    debug_assert!(data.len() <= MAX_PAYLOAD_LIMIT as usize);
    out.reserve(HEADER_LEN + data.len());
    out.put_u32(data.len() as u32);
    out.put_u8(kind::DATA);
    out.put_u8(end_flag(end));
    out.put_u16(0);
    out.put_u32(id);
    out.extend_from_slice(data);
}

fn end_flag(end: bool) -> u8 {
    if end { FLAG_END_STREAM } else { 0 }
}

fn put_str16(out: &mut BytesMut, s: &[u8], what: &'static str) -> Result<(), EncodeError> {
    let n = u16::try_from(s.len()).map_err(|_| EncodeError::TooLong(what))?;
    out.put_u16(n);
    out.extend_from_slice(s);
    Ok(())
}

fn put_addr(out: &mut BytesMut, addr: Option<SocketAddr>) {
    match addr {
        None => out.put_u8(0),
        Some(SocketAddr::V4(a)) => {
            out.put_u8(4);
            out.extend_from_slice(&a.ip().octets());
            out.put_u16(a.port());
        }
        Some(SocketAddr::V6(a)) => {
            out.put_u8(6);
            out.extend_from_slice(&a.ip().octets());
            out.put_u16(a.port());
        }
    }
}

fn put_headers(out: &mut BytesMut, headers: &[Header]) -> Result<(), EncodeError> {
    let n = u16::try_from(headers.len()).map_err(|_| EncodeError::TooLong("header list"))?;
    out.put_u16(n);
    for (name, value) in headers {
        put_str16(out, name, "header name")?;
        put_str16(out, value, "header value")?;
    }
    Ok(())
}

/// The parts of a REQUEST frame, borrowed: lets the daemon encode a request head straight
/// from its parsed request without building a [`RequestHead`] first.
pub struct RequestParts<'a, H> {
    pub id: StreamId,
    pub method: &'a [u8],
    pub target: &'a [u8],
    pub version: HttpVersion,
    pub tls: bool,
    pub server_name: &'a [u8],
    pub client: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub deadline_ms: u32,
    /// Header (name, value) pairs; at most 65,535 of them.
    pub headers: H,
    pub body: &'a [u8],
    pub end: bool,
}

/// Appends a REQUEST frame built from borrowed parts. Same bytes as `encode(Frame::Request)`.
pub fn encode_request<'a, H>(
    parts: RequestParts<'a, H>,
    out: &mut BytesMut,
) -> Result<(), EncodeError>
where
    H: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let start = out.len();
    out.put_bytes(0, HEADER_LEN);
    out.put_u8(parts.version.code());
    out.put_u8(parts.tls as u8);
    out.put_u32(parts.deadline_ms);
    put_str16(out, parts.method, "method")?;
    put_str16(out, parts.target, "target")?;
    put_str16(out, parts.server_name, "server name")?;
    put_addr(out, parts.client);
    put_addr(out, parts.local);
    let count_at = out.len();
    out.put_u16(0);
    let mut count: u32 = 0;
    for (name, value) in parts.headers {
        count += 1;
        if count > u16::MAX as u32 {
            out.truncate(start);
            return Err(EncodeError::TooLong("header list"));
        }
        put_str16(out, name, "header name")?;
        put_str16(out, value, "header value")?;
    }
    out[count_at..count_at + 2].copy_from_slice(&(count as u16).to_be_bytes());
    out.extend_from_slice(parts.body);
    let len = out.len() - start - HEADER_LEN;
    if len > MAX_PAYLOAD_LIMIT as usize {
        out.truncate(start);
        return Err(EncodeError::Oversized(len));
    }
    let header = &mut out[start..start + HEADER_LEN];
    header[0..4].copy_from_slice(&(len as u32).to_be_bytes());
    header[4] = kind::REQUEST;
    header[5] = end_flag(parts.end);
    header[8..12].copy_from_slice(&parts.id.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_request_matches_encode_of_a_request_frame() {
        let head = RequestHead {
            id: 7,
            method: Bytes::from_static(b"POST"),
            target: Bytes::from_static(b"/echo?x=1"),
            version: HttpVersion::Http11,
            tls: true,
            server_name: Bytes::from_static(b"example.com"),
            client: Some("127.0.0.1:4000".parse().unwrap()),
            local: Some("[::1]:8080".parse().unwrap()),
            deadline_ms: 1234,
            headers: vec![
                (
                    Bytes::from_static(b"host"),
                    Bytes::from_static(b"example.com"),
                ),
                (
                    Bytes::from_static(b"content-type"),
                    Bytes::from_static(b"text/plain"),
                ),
            ],
            body: Bytes::from_static(b"hello"),
            end: true,
        };
        let mut a = BytesMut::new();
        encode(&Frame::Request(head.clone()), &mut a).unwrap();
        let mut b = BytesMut::new();
        encode_request(
            RequestParts {
                id: 7,
                method: b"POST",
                target: b"/echo?x=1",
                version: HttpVersion::Http11,
                tls: true,
                server_name: b"example.com",
                client: head.client,
                local: head.local,
                deadline_ms: 1234,
                headers: head.headers.iter().map(|(n, v)| (&n[..], &v[..])),
                body: b"hello",
                end: true,
            },
            &mut b,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(
            Decoder::default().decode(&mut b).unwrap(),
            Some(Frame::Request(head))
        );
    }
}

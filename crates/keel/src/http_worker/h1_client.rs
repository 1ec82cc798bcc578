//! The direct lane's HTTP/1.1 client. A lane request is complete (its whole body is in
//! hand), so it is encoded once, when the request path submits it ([`encode_request`]),
//! and written to the worker as one run of bytes; the response head is parsed (httparse)
//! straight into the RESPONSE frame's fields, and its body is read whole or streamed by
//! its framing (RFC 9112 §6.3).
//!
//! The pipe's requests (streamed bodies) and health checks still go through hyper's client
//! (`upstream.rs`). For lane requests, hyper's connection state machine, its request and
//! response header maps and the channels between them were most of the daemon's work per
//! request (docs/performance.md).
//!
//! Invariants: what reaches the worker is exactly what `forward.rs` defines (hop-by-hop
//! fields, `Expect` and client copies of the proxy fields out, the proxy fields set); a
//! response head over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] fields, a malformed one, or
//! one with conflicting lengths is refused; a connection is reused only after a response
//! read exactly to the end its framing gives, with nothing after it.

use super::endpoint::Address;
use super::forward::{self, ClientView};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use keel_proto::Header;
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most fields in a response head (as hyper's client).
pub const MAX_HEADERS: usize = 100;
/// The longest chunk-size line, and all trailer lines together.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// Room made in the read buffer before each read.
const READ_ROOM: usize = 16 * 1024;

/// A connection to one worker.
pub enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

impl Conn {
    pub async fn connect(address: &Address) -> io::Result<Conn> {
        Ok(match address {
            Address::Unix(path) => match connect_unix_now(path) {
                Some(stream) => Conn::Unix(stream),
                None => Conn::Unix(tokio::net::UnixStream::connect(path).await?),
            },
            Address::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                let _ = stream.set_nodelay(true);
                Conn::Tcp(stream)
            }
        })
    }

    async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if buf.capacity() - buf.len() < READ_ROOM / 4 {
            buf.reserve(READ_ROOM);
        }
        match self {
            Conn::Unix(s) => s.read_buf(buf).await,
            Conn::Tcp(s) => s.read_buf(buf).await,
        }
    }

    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.write_all(data).await,
            Conn::Tcp(s) => s.write_all(data).await,
        }
    }

    /// Writes what the socket takes now, without waiting.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.try_write(buf),
            Conn::Tcp(s) => s.try_write(buf),
        }
    }

    /// An idle connection the worker has neither closed nor written to.
    pub fn looks_open(&self) -> bool {
        let mut probe = [0u8; 1];
        let read = match self {
            Conn::Unix(s) => s.try_read(&mut probe),
            Conn::Tcp(s) => s.try_read(&mut probe),
        };
        matches!(read, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// A unix connection made without waiting: a non-blocking `connect` to a unix socket
/// either completes at once or fails (`EAGAIN` when the accept queue is full). tokio's own
/// connect waits for the poller to report the new socket writable first, one more round
/// of the poller, and one more turn of the task, per connection; a worker that closes every
/// connection (gunicorn's sync worker) costs one per request. `None`: anything but an
/// immediate success, left to tokio's connect (which reports the error).
fn connect_unix_now(path: &std::path::Path) -> Option<tokio::net::UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None).ok()?;
    socket.connect(&SockAddr::unix(path).ok()?).ok()?;
    tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(
        std::os::fd::OwnedFd::from(socket),
    ))
    .ok()
}

/// Request fields never passed on as the client sent them: hop-by-hop ones (the daemon's
/// encoding left them out already), `Expect` (answered by the daemon), `Content-Length`
/// (written from the body), and the proxy fields keel sets itself.
fn dropped_from_request(name: &HeaderName) -> bool {
    *name == header::EXPECT
        || *name == header::CONTENT_LENGTH
        || forward::PROXY_FIELDS.contains(name)
        || crate::request_path::is_hop_by_hop(name)
}

/// Room for a request head: most are below it, a larger one grows the buffer once.
const HEAD_ROOM: usize = 1024;

/// The request as HTTP/1.1 bytes for the worker: request line, the client's `fields` but
/// those [`dropped_from_request`], the proxy fields (`forward::proxy_fields`), the body's
/// length and the body. The `http` types hold nothing HTTP/1.1 cannot carry (a method and
/// field names are tokens, a target has no space or control byte, a value no CR, LF or
/// NUL), so this cannot fail.
pub fn encode_request<'h>(
    method: &http::Method,
    target: &str,
    fields: impl Iterator<Item = (&'h HeaderName, &'h HeaderValue)>,
    body: &[u8],
    view: &ClientView,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD_ROOM + body.len());
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host = None;
    let mut had_length = false;
    for (name, value) in fields {
        if *name == header::HOST {
            if host.is_none() {
                host = value
                    .to_str()
                    .ok()
                    .filter(|h| h.bytes().all(|b| (b' '..=b'~').contains(&b)));
            }
        } else if dropped_from_request(name) {
            had_length |= *name == header::CONTENT_LENGTH;
            continue;
        }
        put_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    forward::proxy_fields(view, host, |name, value| {
        put_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    });
    if !body.is_empty() || had_length {
        let mut digits = [0u8; 20];
        let length = crate::http1_head::decimal(body.len() as u64, &mut digits);
        put_field(&mut out, b"content-length", length);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How a response's body ends (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, a 204 or a 304.
    Empty,
    Length(u64),
    Chunked,
    /// Until the worker closes the connection.
    UntilClose,
}

/// A response head, ready for the RESPONSE frame.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    /// As the worker sent them, less hop-by-hop fields and those `Connection` names (and
    /// `Content-Length` when the body is not framed by it).
    pub headers: Vec<Header>,
    pub framing: Framing,
    /// The worker said it closes the connection after this response.
    pub closes: bool,
    /// The connection may carry another request once the body is read.
    pub reusable: bool,
}

/// Why no response head was read.
#[derive(Debug)]
pub struct HeadError {
    pub error: io::Error,
    /// Not one byte came back (the request may be sent again, by the lane's rules).
    pub nothing_received: bool,
    /// The worker answered something that is not an acceptable response head.
    pub malformed: bool,
}

fn malformed(why: String) -> HeadError {
    HeadError {
        error: io::Error::new(io::ErrorKind::InvalidData, why),
        nothing_received: false,
        malformed: true,
    }
}

/// Reads a response head (interim 1xx ones skipped; 101 is returned as any other), leaving
/// what follows it in `buf`. `head_request`: the request was HEAD (no body follows).
pub async fn read_head(
    conn: &mut Conn,
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<ResponseHead, HeadError> {
    let mut received = false;
    loop {
        if !buf.is_empty() {
            match parse_head(buf, head_request)? {
                Parsed::Head(head) => return Ok(head),
                Parsed::Interim => continue,
                Parsed::Partial if buf.len() > MAX_HEAD => {
                    return Err(malformed(format!("response head over {MAX_HEAD} bytes")));
                }
                Parsed::Partial => {}
            }
        }
        match conn.read_buf(buf).await {
            Ok(0) => {
                return Err(HeadError {
                    error: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before a complete response head",
                    ),
                    nothing_received: !received,
                    malformed: false,
                });
            }
            Ok(_) => received = true,
            Err(error) => {
                return Err(HeadError {
                    error,
                    nothing_received: !received,
                    malformed: false,
                });
            }
        }
    }
}

enum Parsed {
    Head(ResponseHead),
    /// A 1xx other than 101, consumed.
    Interim,
    Partial,
}

fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Parsed, HeadError> {
    // httparse fills what it uses of an uninitialised table: clearing all of it (3 KiB)
    // for every head, as `EMPTY_HEADER`s, wrote more memory per request than the rest of
    // the lane together.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Complete(_)) => {
            return Err(malformed(format!("response head over {MAX_HEAD} bytes")));
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(malformed(format!("malformed response head: {e}"))),
    };
    let status = response.code.unwrap_or(0);
    if (100..200).contains(&status) && status != 101 {
        buf.advance(len);
        return Ok(Parsed::Interim);
    }
    let http11 = response.version == Some(1);
    // Fields `Connection` names are this hop's only.
    let listed: Vec<&[u8]> = response
        .headers
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("connection"))
        .flat_map(|f| crate::header_list::items(f.value))
        .filter(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
        .collect();
    // Where each field passed on lies in the head, to slice the frozen head without
    // copying, and whether it is a `Content-Length`.
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let mut spans = Vec::with_capacity(response.headers.len());
    let mut closes = false;
    let mut chunked = None;
    let mut length: Option<u64> = None;
    for field in response.headers.iter() {
        let name = field.name.as_bytes();
        let value = field.value;
        let is_length = name.eq_ignore_ascii_case(b"content-length");
        if name.eq_ignore_ascii_case(b"connection") {
            closes |= crate::header_list::items(value).any(|t| t.eq_ignore_ascii_case(b"close"));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only the last coding decides (RFC 9112 §6.3 ¶4).
            chunked = crate::header_list::items(value)
                .last()
                .map(|t| t.eq_ignore_ascii_case(b"chunked"))
                .or(chunked);
        } else if is_length {
            let n = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (n, length) {
                (None, _) => return Err(malformed("invalid Content-Length".into())),
                (Some(n), Some(seen)) if n != seen => {
                    return Err(malformed("conflicting Content-Length values".into()));
                }
                (Some(n), _) => length = Some(n),
            }
        }
        if !hop_by_hop(name) && !listed.iter().any(|l| name.eq_ignore_ascii_case(l)) {
            spans.push((at(name), at(value), is_length));
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    let head = buf.split_to(len).freeze();
    let headers = spans
        .into_iter()
        // A length that does not frame the body is not passed on.
        .filter(|(_, _, is_length)| !(chunked.is_some() && *is_length))
        .map(|((n, nl), (v, vl), _)| (head.slice(n..n + nl), head.slice(v..v + vl)))
        .collect();
    Ok(Parsed::Head(ResponseHead {
        status,
        headers,
        framing,
        closes,
        reusable: http11 && !closes && framing != Framing::UntilClose && status != 101,
    }))
}

/// One of the daemon's hop-by-hop fields (`request_path::HOP_BY_HOP`), in any case.
fn hop_by_hop(name: &[u8]) -> bool {
    crate::request_path::HOP_BY_HOP
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
}

fn broke_off(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, what.to_owned())
}

/// Reads a body of `len` bytes whole.
pub async fn read_whole(conn: &mut Conn, buf: &mut BytesMut, len: usize) -> io::Result<Bytes> {
    while buf.len() < len {
        if buf.capacity() < len {
            buf.reserve(len - buf.len());
        }
        if conn.read_buf(buf).await? == 0 {
            return Err(broke_off(
                "connection closed before the end of the response body",
            ));
        }
    }
    Ok(buf.split_to(len).freeze())
}

/// A response body read piece by piece by its framing.
pub struct BodyReader {
    state: BodyState,
}

enum BodyState {
    Length(u64),
    UntilClose,
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers(usize),
    Done,
}

impl BodyReader {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::ChunkSize,
            Framing::UntilClose => BodyState::UntilClose,
        };
        BodyReader { state }
    }

    /// The next piece of the body, `None` at its end.
    pub async fn next(&mut self, conn: &mut Conn, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
        loop {
            match self.state {
                BodyState::Done => return Ok(None),
                BodyState::Length(left) | BodyState::ChunkData(left) => {
                    if buf.is_empty() && conn.read_buf(buf).await? == 0 {
                        return Err(broke_off("connection closed inside the response body"));
                    }
                    let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let piece = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = match (&self.state, left) {
                        (BodyState::Length(_), 0) => BodyState::Done,
                        (BodyState::Length(_), _) => BodyState::Length(left),
                        (_, 0) => BodyState::ChunkEnd,
                        _ => BodyState::ChunkData(left),
                    };
                    return Ok(Some(piece));
                }
                BodyState::UntilClose => {
                    if buf.is_empty() && conn.read_buf(buf).await? == 0 {
                        self.state = BodyState::Done;
                        return Ok(None);
                    }
                    return Ok(Some(buf.split().freeze()));
                }
                BodyState::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.state = if size == 0 {
                            BodyState::Trailers(0)
                        } else {
                            BodyState::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "chunk size line too long",
                        ));
                    }
                    Ok(httparse::Status::Partial) => self.fill(conn, buf).await?,
                    Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "invalid chunk size",
                        ));
                    }
                },
                BodyState::ChunkEnd => {
                    if buf.len() < 2 {
                        self.fill(conn, buf).await?;
                        continue;
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "chunk without its CRLF",
                        ));
                    }
                    buf.advance(2);
                    self.state = BodyState::ChunkSize;
                }
                BodyState::Trailers(seen) => {
                    // Trailer fields have no place in the worker protocol: read and dropped.
                    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if seen + buf.len() > MAX_TRAILERS {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "trailers too long",
                            ));
                        }
                        self.fill(conn, buf).await?;
                        continue;
                    };
                    buf.advance(eol + 2);
                    self.state = if eol == 0 {
                        BodyState::Done
                    } else if seen + eol + 2 > MAX_TRAILERS {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "trailers too long",
                        ));
                    } else {
                        BodyState::Trailers(seen + eol + 2)
                    };
                }
            }
        }
    }

    async fn fill(&mut self, conn: &mut Conn, buf: &mut BytesMut) -> io::Result<()> {
        if conn.read_buf(buf).await? == 0 {
            return Err(broke_off(
                "connection closed inside the chunked response body",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A client's request, as the daemon holds it, encoded for the worker.
    fn encode(method: &str, target: &str, fields: &[(&str, &str)], body: &str) -> String {
        let mut headers = http::HeaderMap::new();
        for (name, value) in fields {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let view = ClientView {
            client: Some("10.0.0.7:4000".parse().unwrap()),
            local: Some("127.0.0.1:8080".parse().unwrap()),
            tls: false,
        };
        let method = http::Method::from_bytes(method.as_bytes()).unwrap();
        let bytes = encode_request(&method, target, headers.iter(), body.as_bytes(), &view);
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_request_carries_keels_proxy_fields_and_none_of_the_clients() {
        let text = encode(
            "POST",
            "/orders?x=1",
            &[
                ("host", "shop.example"),
                ("x-forwarded-for", "6.6.6.6"),
                ("X-Real-IP", "6.6.6.6"),
                ("forwarded", "for=6.6.6.6"),
                ("expect", "100-continue"),
                ("content-length", "999"),
                ("te", "trailers"),
                ("accept", "*/*"),
            ],
            "hello",
        );
        assert_eq!(
            text,
            "POST /orders?x=1 HTTP/1.1\r\n\
             host: shop.example\r\n\
             accept: */*\r\n\
             x-forwarded-for: 10.0.0.7\r\n\
             x-real-ip: 10.0.0.7\r\n\
             x-forwarded-proto: http\r\n\
             x-forwarded-port: 8080\r\n\
             x-forwarded-host: shop.example\r\n\
             forwarded: for=10.0.0.7;host=\"shop.example\";proto=http\r\n\
             content-length: 5\r\n\
             \r\n\
             hello"
        );
    }

    #[test]
    fn a_body_length_is_written_only_for_a_body_or_a_client_length() {
        let text = encode("GET", "/", &[], "");
        assert!(!text.contains("content-length"), "{text}");
        let text = encode("POST", "/", &[("content-length", "0")], "");
        assert!(text.ends_with("content-length: 0\r\n\r\n"), "{text}");
    }

    /// The worker's side of a connection writes `response` in pieces of `step` bytes.
    async fn answer(response: &'static [u8], step: usize) -> (Conn, tokio::task::JoinHandle<()>) {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let writer = tokio::spawn(async move {
            for piece in response.chunks(step) {
                if theirs.write_all(piece).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            let _ = theirs.shutdown().await;
        });
        (Conn::Unix(ours), writer)
    }

    async fn whole(conn: &mut Conn, buf: &mut BytesMut, framing: Framing) -> io::Result<Vec<u8>> {
        let mut body = BodyReader::new(framing);
        let mut out = Vec::new();
        while let Some(piece) = body.next(conn, buf).await? {
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }

    fn names(head: &ResponseHead) -> Vec<String> {
        head.headers
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n).to_ascii_lowercase())
            .collect()
    }

    #[tokio::test]
    async fn a_chunked_response_in_one_byte_pieces_with_extensions_and_trailers() {
        let (mut conn, _w) = answer(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nX-App: 1\r\n\r\n\
              5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
            1,
        )
        .await;
        let mut buf = BytesMut::new();
        let head = read_head(&mut conn, &mut buf, false).await.unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.framing, Framing::Chunked);
        assert!(head.reusable);
        // Content-Length does not frame this body: not passed on.
        assert_eq!(names(&head), ["x-app"]);
        assert_eq!(
            whole(&mut conn, &mut buf, head.framing).await.unwrap(),
            b"hello, world"
        );
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn a_length_framed_response_leaves_what_follows_and_connection_names_go() {
        let (mut conn, _w) = answer(
            b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 4\r\n\r\nbody",
            7,
        )
        .await;
        let mut buf = BytesMut::new();
        let head = read_head(&mut conn, &mut buf, false).await.unwrap();
        assert!(head.closes && !head.reusable);
        assert_eq!(names(&head), ["content-length"]);
        assert_eq!(head.framing, Framing::Length(4));
        assert_eq!(
            &read_whole(&mut conn, &mut buf, 4).await.unwrap()[..],
            b"body"
        );
    }

    #[tokio::test]
    async fn no_body_for_head_204_and_304_and_until_close_without_length() {
        for (response, head_request, framing) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"[..],
                true,
                Framing::Empty,
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false, Framing::Empty),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                false,
                Framing::Empty,
            ),
            (
                b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
                false,
                Framing::UntilClose,
            ),
        ] {
            let (mut conn, _w) = answer(response, 64).await;
            let mut buf = BytesMut::new();
            let head = read_head(&mut conn, &mut buf, head_request).await.unwrap();
            assert_eq!(head.framing, framing);
            let body = whole(&mut conn, &mut buf, head.framing).await.unwrap();
            if framing == Framing::UntilClose {
                assert_eq!(body, b"until the end");
                assert!(!head.reusable);
            } else {
                assert!(body.is_empty());
            }
        }
    }

    #[tokio::test]
    async fn bad_heads_are_refused_and_silence_is_told_apart() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
        ] {
            let (mut conn, _w) = answer(bad, 64).await;
            let e = read_head(&mut conn, &mut BytesMut::new(), false)
                .await
                .unwrap_err();
            assert!(e.malformed, "{}", String::from_utf8_lossy(bad));
        }
        let huge: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n",
                "a".repeat(MAX_HEAD + 10)
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        let (mut conn, _w) = answer(huge, 4096).await;
        let e = read_head(&mut conn, &mut BytesMut::new(), false)
            .await
            .unwrap_err();
        assert!(e.malformed);
        let (mut conn, _w) = answer(b"", 1).await;
        let e = read_head(&mut conn, &mut BytesMut::new(), false)
            .await
            .unwrap_err();
        assert!(e.nothing_received && !e.malformed);
        let (mut conn, _w) = answer(b"HTTP/1.1 200", 1).await;
        let e = read_head(&mut conn, &mut BytesMut::new(), false)
            .await
            .unwrap_err();
        assert!(!e.nothing_received && !e.malformed);
    }

    #[tokio::test]
    async fn a_body_cut_short_or_a_bad_chunk_is_an_error() {
        let (mut conn, _w) =
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 64).await;
        let mut buf = BytesMut::new();
        let head = read_head(&mut conn, &mut buf, false).await.unwrap();
        assert!(read_whole(&mut conn, &mut buf, 10).await.is_err());
        drop(head);
        for bad in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
        ] {
            let (mut conn, _w) = answer(bad, 3).await;
            let mut buf = BytesMut::new();
            let head = read_head(&mut conn, &mut buf, false).await.unwrap();
            assert!(whole(&mut conn, &mut buf, head.framing).await.is_err());
        }
    }
}

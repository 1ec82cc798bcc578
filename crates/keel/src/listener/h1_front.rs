//! HTTP/1.1 requests without a body, served outside hyper: a cache hit is "one lookup and
//! one write of prepared bytes" (DESIGN §7), a static file goes out with `sendfile(2)`, and
//! any other GET or HEAD skips hyper's connection machinery.
//!
//! Every HTTP/1.1 connection (cleartext, or TLS without ALPN `h2`) begins here. Each request
//! head is parsed with httparse. A GET or HEAD without a body (HTTP/1.1 or 1.0,
//! origin-form target, one Host, no `Upgrade`/`Expect`, `Connection` at most `keep-alive` or
//! `close`) is served:
//! - from a fresh cache entry's prepared bytes, or, on a cleartext socket, a static root's
//!   file with `sendfile(2)` after its head (`request_path::answer_in_front`). A plain
//!   HTTP/1.1 head (no conditional field, a target and Host of bytes `http` keeps as they
//!   are) is looked up from its slices first
//!   (`request_path::answer_plain`): a hit builds no `Request`, and a miss keeps the route
//!   and cache key it found;
//! - otherwise, for HTTP/1.1, by `request_path::serve_logged`, the same path hyper's
//!   requests take (routing and its 400s, cache, queue, worker, stale-if-error,
//!   compression, logs), its response written by `h1_writer.rs`.
//!
//! An HTTP/1.0 request is answered here only from the cache or a static root, as hyper
//! answers HTTP/1.0: the status line says `HTTP/1.0`, the connection closes after the
//! answer unless the client sent `Connection: keep-alive`, and then the answer says
//! `connection: keep-alive`. Anything else it asks for goes to hyper, with its head.
//!
//! The first head that is anything else (a body, an upgrade, an HTTP/1.0 request that needs
//! a worker, an absolute-form target, an HTTP/2 preface, anything httparse or the rules
//! above refuse) hands the connection over to hyper for the rest of its life: hyper gets the
//! bytes read so far first ([`Prepend`]), and everything (the framing scanner, the error
//! answers) goes on from that head exactly as for a connection that never came here.
//!
//! Invariants:
//! - nothing here reads a body or judges a malformed head: such a request reaches hyper
//!   byte for byte, so hyper and `framing.rs` stay the only judges of malformed input;
//! - the connection clock sees every byte (the socket below is the `ClockedIo`) and every
//!   request (a `RequestGuard` until its answer is written), so `header_wait`,
//!   `idle_connection` and `min_send_rate` apply here as they do under hyper;
//! - while an answer is prepared the socket is watched: a client that leaves cancels its
//!   request (as under hyper), and a pipelined next head is kept;
//! - when the daemon drains, an answer carries `Connection: close` at once, and a
//!   connection idle between requests is closed when hyper's idle ones are
//!   (`listener::close_idle`, just before graceful shutdown).

use super::conn_clock::{ConnClock, SendFile};
use super::h1_writer::write_response;
use super::wake_gate::WakeGated;
use crate::log::Reason;
use crate::request_path::{
    ConnContext, FrontAnswer, PendingLog, PlainAnswer, PlainHead, answer_in_front, answer_plain,
    serve_logged_routed,
};
use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Version};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Fields a head may have and still be served here (more: hyper takes it).
const MAX_FIELDS: usize = 32;
/// Bytes of unanswered head kept before hyper takes the connection (its own limits apply
/// from there).
const MAX_BUFFERED: usize = 16 * 1024;

/// Bytes of answer buffer a connection keeps between requests: a larger answer's buffer
/// (a cached body is copied into it) is let go, so idle connections hold little memory.
const OUT_KEPT: usize = 4096;

fn shrink(out: &mut BytesMut) {
    if out.capacity() > 4 * OUT_KEPT {
        *out = BytesMut::with_capacity(OUT_KEPT);
    }
}

/// How the connection's time here ended.
pub enum Front {
    /// The client closed the connection, or the daemon drained it.
    Closed,
    /// One of the connection's timers ran out.
    Expired(Reason),
    /// A head this path leaves to hyper: hyper serves the connection from here, reading
    /// these bytes first.
    HandOff(BytesMut),
}

/// Serves the requests on `io` until a head this path leaves to hyper (or the end of the
/// connection).
pub async fn serve<S>(io: &mut S, ctx: &Arc<ConnContext>, clock: &Arc<ConnClock>) -> Front
where
    S: AsyncRead + AsyncWrite + SendFile + Unpin,
{
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(OUT_KEPT);
    // An answered head's field map, emptied, for the next head to fill.
    let mut spare_fields = http::HeaderMap::new();
    // Both polled only when they were woken, not every time the socket wakes the task.
    let expired = WakeGated::new(Box::pin(clock.expired()));
    tokio::pin!(expired);
    // The daemon's drain closes a connection between requests (as hyper's graceful
    // shutdown does); one with part of a head read goes to hyper, which finishes it.
    let mut drain = Box::pin(super::IDLE_CLOSE.notified());
    drain.as_mut().enable();
    let mut drain = WakeGated::new(drain);
    // Every `select!` here is `biased` with the socket first: a read or write that is ready
    // returns without polling the timers (and no random branch order is drawn per request).
    // The timers are still looked at whenever the socket is not ready, so a connection that
    // stalls is still timed out.
    loop {
        // Every complete head already read: answered in turn, or handed over.
        while !buf.is_empty() {
            let (scanned, plain) = match scan(&buf) {
                Scan::Partial if buf.len() < MAX_BUFFERED => break,
                Scan::Partial | Scan::NotOurs => return Front::HandOff(buf),
                Scan::Head(scanned, plain) => (scanned, plain),
            };
            let close = scanned.close || super::draining();
            out.clear();
            // A plain GET or HEAD is looked up from the head's slices first: a cache hit is
            // answered without a request built for it.
            let plain = plain.map(|plain| answer_plain(&plain, ctx, close, &mut out));
            let (file, in_flight) = if matches!(plain, Some(PlainAnswer::Written)) {
                buf.advance(scanned.len);
                (None, clock.begin_request(false))
            } else {
                let (mut req, head) = match build(&mut buf, &scanned, &mut spare_fields) {
                    Ok(built) => built,
                    Err(head) => return Front::HandOff(rejoin(&head, buf)),
                };
                let http10 = req.version() == Version::HTTP_10;
                let in_flight = clock.begin_request(false);
                let files = io.can_send_file();
                // HTTP/1.0 closes by default: its answer names no `Connection`, unless it keeps
                // the connection alive.
                let says_close = close && !http10;
                let answered = match plain {
                    Some(PlainAnswer::Serve(routed)) => FrontAnswer::Serve(routed),
                    Some(PlainAnswer::Static(routed)) => {
                        answer_in_front(&req, ctx, says_close, files, &mut out, Some(routed)).await
                    }
                    _ => answer_in_front(&req, ctx, says_close, files, &mut out, None).await,
                };
                if http10 {
                    if matches!(answered, FrontAnswer::Serve(_)) {
                        // Nothing was answered or counted: hyper serves it from its head.
                        return Front::HandOff(rejoin(&head, buf));
                    }
                    as_http10(&mut out, !close);
                }
                drop(head);
                let file = match answered {
                    FrontAnswer::Serve(routed) => {
                        let head_only = req.method() == Method::HEAD;
                        let served = serve_logged_routed(req, ctx.clone(), routed);
                        tokio::pin!(served);
                        // While the answer is prepared, the socket is watched: a client that
                        // leaves cancels its request (as under hyper), and the bytes of a next
                        // request are kept for later.
                        let resp = loop {
                            tokio::select! {
                                biased;
                                resp = &mut served => break resp,
                                read = io.read_buf(&mut buf), if buf.len() < MAX_BUFFERED => {
                                    if matches!(read, Ok(0) | Err(_)) {
                                        return Front::Closed;
                                    }
                                }
                                reason = &mut expired => return Front::Expired(reason),
                            }
                        };
                        // `unavailable = "reset"`: the connection closes without an answer.
                        let Ok(resp) = resp else {
                            return Front::Closed;
                        };
                        tokio::select! {
                            biased;
                            written = write_response(io, resp, head_only, close, &mut out) => {
                                if !matches!(written, Ok(true)) {
                                    let _ = io.shutdown().await;
                                    return Front::Closed;
                                }
                            }
                            reason = &mut expired => return Front::Expired(reason),
                        }
                        drop(in_flight);
                        shrink(&mut out);
                        if !buf.is_empty() {
                            clock.head_started();
                        }
                        continue;
                    }
                    FrontAnswer::Written => None,
                    FrontAnswer::File {
                        file,
                        offset,
                        len,
                        log,
                    } => Some((file, offset, len, log)),
                };
                // The field map's room is kept for the next head.
                spare_fields = std::mem::take(req.headers_mut());
                spare_fields.clear();
                drop(req);
                (file, in_flight)
            };
            if let Err(end) = finish(io, &out, file, ctx, &mut expired).await {
                return end;
            }
            drop(in_flight);
            shrink(&mut out);
            if !buf.is_empty() {
                // Part of the next head came with this one: `header_wait` runs for it.
                clock.head_started();
            }
            if close {
                let _ = io.shutdown().await;
                return Front::Closed;
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let idle = buf.is_empty();
        if idle && super::closing_idle() {
            return Front::Closed;
        }
        tokio::select! {
            biased;
            read = io.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) if buf.is_empty() => return Front::Closed,
                // A head cut short by EOF, or a read error: hyper reports it as it would.
                Ok(0) | Err(_) => return Front::HandOff(buf),
                Ok(_) => {}
            },
            reason = &mut expired => return Front::Expired(reason),
            _ = &mut drain => return if idle { Front::Closed } else { Front::HandOff(buf) },
        }
    }
}

/// A static file's range, and its access-log line, written after an answer's head.
type FileAfter = (Arc<std::fs::File>, u64, u64, Option<Box<PendingLog>>);

/// Writes an answer prepared in `out`, then `file` after it (under `TCP_CORK`), then the
/// file's access-log line. `Err` is how the connection ends instead.
async fn finish<S, E>(
    io: &mut S,
    out: &[u8],
    file: Option<FileAfter>,
    ctx: &ConnContext,
    expired: &mut Pin<&mut E>,
) -> Result<(), Front>
where
    S: AsyncWrite + SendFile + Unpin,
    E: std::future::Future<Output = Reason>,
{
    let (range, log) = match file {
        Some((file, offset, len, log)) => (Some((file, offset, len)), log),
        None => (None, None),
    };
    if range.is_some() {
        io.cork(true);
    }
    // One body of writes (every answer, a cache hit's included, passes here): the exits
    // leave the block with how the connection ends, and the file's line is written after.
    let mut sent = 0;
    let ended = 'write: {
        tokio::select! {
            biased;
            written = io.write_all(out) => if written.is_err() {
                break 'write Err(Front::Closed);
            },
            reason = expired.as_mut() => break 'write Err(Front::Expired(reason)),
        }
        if let Some((file, offset, len)) = &range {
            tokio::select! {
                biased;
                done = io.send_file(file, *offset, *len, &mut sent) => if let Err(e) = done {
                    // The client went away, or the file shrank under its Content-Length:
                    // the answer is cut, as under hyper.
                    tracing::debug!(peer = %ctx.peer, "static file cut: {e}");
                    break 'write Err(Front::Closed);
                },
                reason = expired.as_mut() => break 'write Err(Front::Expired(reason)),
            }
            io.cork(false);
        }
        Ok(())
    };
    // Also for an answer cut short (the client left, the file shrank, a timer fired): the
    // line has the status sent and the file's bytes the socket took, as a body cut under
    // hyper has its line (`LoggedBody`).
    if let Some(mut log) = log {
        log.bytes_sent += sent;
        log.write();
    }
    ended
}

/// Where one field of a head lies in it (a head here is under [`MAX_BUFFERED`] bytes, so
/// offsets fit in `u16`: the table is small enough to clear for each head).
#[derive(Clone, Copy, Default)]
struct FieldAt {
    name: (u16, u16),
    value: (u16, u16),
}

const _: () = assert!(MAX_BUFFERED <= u16::MAX as usize);

/// What [`scan`] found at the start of the buffer. Returned by value to its caller and taken
/// apart at once: boxing the head would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Scan<'b> {
    /// More bytes are needed to see the whole head.
    Partial,
    /// A head this path leaves to hyper.
    NotOurs,
    /// A head this path may answer, and, when it is plain (HTTP/1.1 without a conditional
    /// field, its target and Host of bytes that `http` keeps as they are), its slices: a
    /// cache hit can be told from them.
    Head(Scanned, Option<PlainHead<'b>>),
}

/// A head this path may answer, as offsets into the buffer it is still at the start of.
struct Scanned {
    len: usize,
    method: Method,
    minor: u8,
    target: (u16, u16),
    at: [FieldAt; MAX_FIELDS],
    count: usize,
    /// The client asked for the connection to close after the answer.
    close: bool,
}

/// Bytes a plain target may have: unreserved, sub-delims, `:`, `@`, `/`, `?` and `%`
/// (RFC 3986), which `http::Uri` keeps as they are. Anything else (a fragment, quotes,
/// braces, non-ASCII) takes the request's own path.
fn plain_target_byte(b: u8) -> bool {
    crate::request_check::unreserved_or_sub_delim(b)
        || matches!(b, b':' | b'@' | b'/' | b'?' | b'%')
}

/// The bytes `HeaderValue::to_str` takes.
fn to_str_byte(b: u8) -> bool {
    b == b'\t' || (0x20..0x7f).contains(&b)
}

/// A field value as `HeaderValue::to_str` takes it.
fn field_text(value: &[u8]) -> Option<&str> {
    if value.iter().all(|&b| to_str_byte(b)) {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// Whether a field can make a hit's answer depend on it (`conditional::FIELDS`, which
/// `cache::write_http1` looks for): every precondition's name starts with `If-` (RFC 9110
/// §13.1), then `Range`. (`If-Range` alone changes nothing, and only takes the longer path.)
fn changes_a_hit(name: &str) -> bool {
    let name = name.as_bytes();
    (name.len() > 3 && name[..3].eq_ignore_ascii_case(b"if-"))
        || name.eq_ignore_ascii_case(b"range")
}

/// Reads the head at the start of `buf`, if it is one this path may answer: HTTP/1.1, GET
/// or HEAD, an origin-form target, one Host, and no field that gives it a body, an upgrade,
/// an expectation, or a connection option other than `keep-alive` or `close`. The buffer
/// is left as it is.
fn scan(buf: &[u8]) -> Scan<'_> {
    // httparse fills what it uses of an uninitialised table (no 1 KiB clear per head).
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut head = httparse::Request::new(&mut []);
    let len = match head.parse_with_uninit_headers(buf, &mut raw) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Scan::Partial,
        Err(_) => return Scan::NotOurs,
    };
    let method = match head.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Scan::NotOurs,
    };
    let (Some(minor @ (0 | 1)), Some(target)) = (head.version, head.path) else {
        return Scan::NotOurs;
    };
    if !target.starts_with('/') {
        return Scan::NotOurs;
    }
    // Offsets into the head are kept as `u16`: a longer head (it can only have come whole
    // in one read) goes to hyper.
    if len > MAX_BUFFERED {
        return Scan::NotOurs;
    }
    let offset = |part: &[u8]| {
        let from = part.as_ptr() as usize - buf.as_ptr() as usize;
        (from as u16, (from + part.len()) as u16)
    };
    let mut at = [FieldAt::default(); MAX_FIELDS];
    let (mut hosts, mut close, mut keep_alive) = (0, false, false);
    let mut host: &[u8] = &[];
    let (mut user_agent, mut referer) = (None, None);
    let mut plain = minor == 1 && target.bytes().all(plain_target_byte);
    // As `request_check::check_sizes`: the request line with `HTTP/1.1` and CRLF, then
    // each field line with `: ` and CRLF.
    let mut head_bytes = method.as_str().len() + 1 + target.len() + 1 + 8 + 2;
    let mut longest_field = 0;
    for (field, at) in head.headers.iter().zip(at.iter_mut()) {
        let name = field.name;
        if name.eq_ignore_ascii_case("connection") {
            let value = field.value.trim_ascii();
            if value.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if value.eq_ignore_ascii_case(b"keep-alive") {
                keep_alive = true;
            } else {
                return Scan::NotOurs;
            }
        }
        let leaves_it = name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect");
        if leaves_it {
            return Scan::NotOurs;
        }
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = field.value;
        } else if user_agent.is_none() && name.eq_ignore_ascii_case("user-agent") {
            user_agent = Some(field.value);
        } else if referer.is_none() && name.eq_ignore_ascii_case("referer") {
            referer = Some(field.value);
        }
        plain &= !changes_a_hit(name);
        let line = name.len() + 2 + field.value.len() + 2;
        head_bytes += line;
        longest_field = longest_field.max(line);
        *at = FieldAt {
            name: offset(name.as_bytes()),
            value: offset(field.value),
        };
    }
    if hosts != 1 {
        return Scan::NotOurs;
    }
    // The Host value as routing reads it (`HeaderValue::to_str`).
    let plain = plain
        .then(|| field_text(host))
        .flatten()
        .map(|host| PlainHead {
            head_only: method == Method::HEAD,
            target,
            host,
            head_bytes,
            longest_field,
            // A value `to_str` refuses is not logged.
            user_agent: user_agent.and_then(field_text),
            referer: referer.and_then(field_text),
        });
    let scanned = Scanned {
        len,
        method,
        minor,
        target: offset(target.as_bytes()),
        at,
        count: head.headers.len(),
        // HTTP/1.0 keeps a connection only when asked to.
        close: close || (minor == 0 && !keep_alive),
    };
    Scan::Head(scanned, plain)
}

/// Takes the head `scanned` found off `buf` without a copy and builds its request: the
/// target and field values are slices of it, and `fields` (empty, its room kept from an
/// earlier head) becomes the request's field map.
fn build(
    buf: &mut BytesMut,
    scanned: &Scanned,
    fields: &mut http::HeaderMap,
) -> Result<(Request<()>, Bytes), Bytes> {
    let head = buf.split_to(scanned.len).freeze();
    let part = |(from, to): (u16, u16)| head.slice(usize::from(from)..usize::from(to));
    let Ok(uri) = http::Uri::from_maybe_shared(part(scanned.target)) else {
        return Err(head);
    };
    let mut headers = std::mem::take(fields);
    headers.reserve(scanned.count);
    for at in &scanned.at[..scanned.count] {
        let name = &head[usize::from(at.name.0)..usize::from(at.name.1)];
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_maybe_shared(part(at.value)),
        ) else {
            return Err(head);
        };
        headers.append(name, value);
    }
    let mut req = Request::new(());
    *req.method_mut() = scanned.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    *req.version_mut() = if scanned.minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    Ok((req, head))
}

/// A head taken off the buffer, back in front of what followed it (for hyper).
fn rejoin(head: &[u8], rest: BytesMut) -> BytesMut {
    let mut all = BytesMut::with_capacity(head.len() + rest.len());
    all.extend_from_slice(head);
    all.unsplit(rest);
    all
}

/// Makes the answer head at the start of `out` (written for HTTP/1.1) an answer to HTTP/1.0,
/// as hyper writes one: `HTTP/1.0` in the status line and, when the connection stays open,
/// `connection: keep-alive` (an HTTP/1.0 client closes after the answer otherwise).
fn as_http10(out: &mut BytesMut, keep_alive: bool) {
    const VERSION: std::ops::Range<usize> = 5..8;
    if out.starts_with(b"HTTP/1.1 ") {
        out[VERSION].copy_from_slice(b"1.0");
    }
    if !keep_alive {
        return;
    }
    // The head ends at its first empty line; the field goes before that line.
    let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let rest = out.split_off(end + 2);
    out.extend_from_slice(b"connection: keep-alive\r\n");
    out.unsplit(rest);
}

/// A socket whose first bytes were already read: they are read again first, then the
/// socket's own. Writes go straight to the socket.
pub struct Prepend<S> {
    first: BytesMut,
    inner: S,
}

impl<S> Prepend<S> {
    pub fn new(first: BytesMut, inner: S) -> Self {
        Prepend { first, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prepend<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.first.is_empty() {
            let n = this.first.len().min(buf.remaining());
            buf.put_slice(&this.first[..n]);
            this.first.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prepend<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`parse`] found at the start of the buffer.
    #[allow(clippy::large_enum_variant)]
    enum Parsed {
        /// More bytes are needed to see the whole head.
        Partial,
        /// A head this path leaves to hyper (the buffer is as it was).
        NotOurs,
        /// A head this path leaves to hyper, found out after it was taken off the buffer: it
        /// goes back in front of the rest ([`rejoin`]).
        Refused(Bytes),
        /// A GET or HEAD without a body, its head (taken off the buffer; the request's
        /// target and field values are slices of it), and whether the client asked for the
        /// connection to close after the answer (`Connection: close`).
        Request(Request<()>, Bytes, bool),
    }

    /// Reads the head at the start of `buf` and builds its request, if it is one this path
    /// may answer: [`scan`], then [`build`], as the connection loop does.
    fn parse(buf: &mut BytesMut, fields: &mut http::HeaderMap) -> Parsed {
        match scan(buf) {
            Scan::Partial => Parsed::Partial,
            Scan::NotOurs => Parsed::NotOurs,
            Scan::Head(scanned, _) => match build(buf, &scanned, fields) {
                Ok((req, head)) => Parsed::Request(req, head, scanned.close),
                Err(head) => Parsed::Refused(head),
            },
        }
    }

    /// Parses `raw` (with a byte of the next request after it); the buffer keeps exactly
    /// what this path does not take.
    fn parse_all(raw: &[u8]) -> Parsed {
        let mut buf = BytesMut::from(raw);
        buf.extend_from_slice(b"G");
        let parsed = parse(&mut buf, &mut http::HeaderMap::new());
        match &parsed {
            Parsed::Request(_, head, _) | Parsed::Refused(head) => {
                assert_eq!(&head[..], raw);
                assert_eq!(&buf[..], b"G");
            }
            Parsed::Partial | Parsed::NotOurs => assert_eq!(&buf[..raw.len()], raw),
        }
        parsed
    }

    fn parsed(raw: &str) -> Option<Request<()>> {
        match parse_all(raw.as_bytes()) {
            Parsed::Request(req, _, _) => Some(req),
            Parsed::Partial => panic!("partial: {raw:?}"),
            Parsed::NotOurs | Parsed::Refused(_) => None,
        }
    }

    #[test]
    fn answers_plain_gets_and_heads() {
        let req = parsed("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!(req.uri().path_and_query().unwrap().as_str(), "/a?b=1");
        assert_eq!(req.headers()["accept"], "*/*");
        assert!(parsed("HEAD / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n").is_some());
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n";
        assert!(matches!(parse_all(raw), Parsed::Request(_, _, true)));
    }

    #[test]
    fn a_head_with_a_field_a_hit_depends_on_is_not_plain() {
        let is_plain = |field: &str| {
            let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{field}\r\n\r\n");
            match scan(raw.as_bytes()) {
                Scan::Head(_, plain) => plain.is_some(),
                _ => panic!("not a head: {raw:?}"),
            }
        };
        for field in [
            "If-Match: \"a\"",
            "if-unmodified-since: Sun, 06 Nov 1994 08:49:37 GMT",
            "If-None-Match: *",
            "IF-MODIFIED-SINCE: Sun, 06 Nov 1994 08:49:37 GMT",
            "Range: bytes=0-1",
            "RANGE: bytes=0-1",
        ] {
            assert!(!is_plain(field), "{field}");
        }
        for field in ["Accept: */*", "If: x", "Ranges: x", "X-If-Match: 1"] {
            assert!(is_plain(field), "{field}");
        }
    }

    #[test]
    fn http10_closes_unless_asked_to_keep_alive() {
        let raw = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n";
        let Parsed::Request(req, _, close) = parse_all(raw) else {
            panic!("HTTP/1.0 GET not parsed");
        };
        assert_eq!(req.version(), Version::HTTP_10);
        assert!(close);
        let raw = b"HEAD / HTTP/1.0\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n";
        assert!(matches!(parse_all(raw), Parsed::Request(_, _, false)));
    }

    #[test]
    fn an_answer_is_turned_into_http10() {
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody";
        let mut out = BytesMut::from(head);
        as_http10(&mut out, false);
        assert_eq!(
            &out[..],
            b"HTTP/1.0 200 OK\r\ncontent-length: 4\r\n\r\nbody"
        );
        let mut out = BytesMut::from(head);
        as_http10(&mut out, true);
        assert_eq!(
            &out[..],
            b"HTTP/1.0 200 OK\r\ncontent-length: 4\r\nconnection: keep-alive\r\n\r\nbody"
        );
    }

    #[test]
    fn leaves_everything_else_to_hyper() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close, x-secret\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
        ] {
            assert!(parsed(raw).is_none(), "{raw:?}");
        }
        assert!(matches!(
            parse_all(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        ));
    }

    #[test]
    fn a_head_taken_off_goes_back_in_front() {
        let all = rejoin(b"GET / HTTP/1.1\r\n\r\n", BytesMut::from(&b"GET /next"[..]));
        assert_eq!(&all[..], b"GET / HTTP/1.1\r\n\r\nGET /next");
    }
}

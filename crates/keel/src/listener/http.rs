//! HTTP on one accepted connection: HTTP/1.1, HTTP/2 chosen by ALPN on TLS, and HTTP/2 by
//! prior knowledge (h2c) on cleartext when enabled; hyper-util's auto builder for all three.

use super::conn_clock::{ConnClock, RequestGuard};
use crate::config::ListenerConfig;
use crate::log::Reason;
use crate::request_path::{ConnContext, LoggedBody, serve_logged};
use http::{Request, header};
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulConnection, Watcher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// HTTP.sys `MaxRequestBytes` (16 KiB) for HTTP/2's header list. h2 also counts CONTINUATION
/// frames against it, so a CONTINUATION flood ends at this size.
pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Per-stream flow-control window a client may fill before keel reads.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// Connection-wide flow-control window.
pub const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;
/// Streams a client may open and reset before keel has accepted them (rapid reset,
/// CVE-2023-44487) before the connection ends with GOAWAY.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams keel itself may reset for protocol errors before the connection ends.
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;

/// The protocol builders every connection of the daemon uses.
pub struct Protocols {
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
    /// `[listener] h2c`: cleartext connections are sniffed for the HTTP/2 preface.
    h2c: Option<auto::Builder<TokioExecutor>>,
}

impl Protocols {
    pub fn new(cfg: &ListenerConfig) -> Protocols {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .keep_alive(true)
            // Off: with it on, hyper never flushes the 400/431/414 it writes itself for a
            // head it cannot parse (the client saw the connection close without a status).
            .pipeline_flush(false)
            .timer(TokioTimer::new())
            // keel's own clock (conn_clock.rs) times heads, idle connections and sends:
            // hyper's head timer cannot tell an idle connection from a slow head.
            .header_read_timeout(None);
        b.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(cfg.max_concurrent_streams)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS);
        Protocols {
            http1: b.clone().http1_only(),
            http2: b.clone().http2_only(),
            h2c: cfg.h2c.then_some(b),
        }
    }

    /// For a cleartext connection.
    pub fn plain(&self) -> &auto::Builder<TokioExecutor> {
        self.h2c.as_ref().unwrap_or(&self.http1)
    }

    /// For a TLS connection, by the protocol ALPN chose (none: HTTP/1.1).
    pub fn for_alpn(&self, alpn: Option<&[u8]>) -> &auto::Builder<TokioExecutor> {
        match alpn {
            Some(b"h2") => &self.http2,
            _ => &self.http1,
        }
    }
}

/// Serves one connection until it ends or one of its timers runs out; `watcher` makes it
/// part of graceful shutdown, and `conflict` names the request whose head carried both
/// `Content-Length` and `Transfer-Encoding` (see `framing.rs`).
pub async fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    ctx: Arc<ConnContext>,
    conflict: Arc<super::framing::Conflict>,
    watcher: Watcher,
    clock: Arc<ConnClock>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (ctx_for_log, client) = (ctx.clone(), ctx.peer);
    let requests = clock.clone();
    // The index of each request on this connection, for `conflict`.
    let seen = std::sync::atomic::AtomicU64::new(0);
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let ctx = ctx.clone();
        let http1 = req.version() < http::Version::HTTP_2;
        let in_flight = requests.begin_request(!http1);
        let index = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if conflict.is(index) {
            req.extensions_mut()
                .insert(crate::request_check::LengthWithTransferEncoding);
        }
        async move {
            let mut resp = serve_logged(with_host(req), ctx).await?;
            if http1 && super::draining() && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
            {
                // The client learns from this answer not to send another request on the
                // connection, instead of racing keel's close of an idle one.
                resp.headers_mut()
                    .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            Ok::<_, crate::request_path::ResetConnection>(resp.map(|body| ClockedBody {
                inner: body,
                _in_flight: in_flight,
            }))
        }
    });
    // With upgrades: a 101 hands the connection over to its tunnel (upgrade.rs), whose own
    // idle timer then applies; this connection task (and its clock) ends there. hyper-util's
    // upgradeable connection sniffs for the HTTP/2 preface whatever the builder allows, so
    // where only HTTP/1.1 is allowed the preface is refused by `NoHttp2Preface` (as an
    // HTTP/1-only connection refuses it), and HTTP/2-only connections (ALPN h2), which have
    // no upgrades, are served without them.
    let expired = if !builder.is_http1_available() {
        watch(builder.serve_connection(io, service), watcher, &clock).await
    } else if builder.is_http2_available() {
        watch(
            builder.serve_connection_with_upgrades(io, service),
            watcher,
            &clock,
        )
        .await
    } else {
        let io = NoHttp2Preface::new(io);
        watch(
            builder.serve_connection_with_upgrades(io, service),
            watcher,
            &clock,
        )
        .await
    };
    let (status, reason) = match expired {
        Ok(()) => return,
        Err(Ended::Error(e)) => {
            tracing::debug!(peer = %client, "connection ended: {e}");
            match e.downcast_ref::<hyper::Error>().and_then(parse_refusal) {
                Some(refused) => refused,
                None => return,
            }
        }
        Err(Ended::Timer(reason)) => {
            // Dropping the connection closes it; HTTP.sys answers nothing either.
            tracing::debug!(peer = %client, "connection closed: {}", reason.phrase());
            (None, reason)
        }
    };
    log_connection_end(&ctx_for_log, status, reason);
}

/// The error-log line of a connection that ended without a request to blame: a timer ran
/// out, or hyper refused a head (with the status it answered).
pub fn log_connection_end(ctx: &ConnContext, status: Option<u16>, reason: Reason) {
    ctx.error_log.write(&crate::log::ErrorRecord {
        time: std::time::SystemTime::now(),
        client: Some(ctx.peer),
        server: Some(ctx.local),
        version: None,
        method: None,
        uri: None,
        status,
        site: None,
        reason,
        queue: None,
    });
}

/// Why a connection ended other than by closing normally.
enum Ended {
    Error(Box<dyn std::error::Error + Send + Sync>),
    /// One of the connection's own timers ran out.
    Timer(Reason),
}

/// Drives a connection until it ends, graceful shutdown included, or its clock runs out.
async fn watch<C>(conn: C, watcher: Watcher, clock: &ConnClock) -> Result<(), Ended>
where
    C: GracefulConnection,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::select! {
        ended = watcher.watch(conn) => ended.map_err(|e| Ended::Error(e.into())),
        reason = clock.expired() => Err(Ended::Timer(reason)),
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection on which only HTTP/1.1 is allowed: its first bytes are checked against the
/// HTTP/2 preface, and a client that sends the whole preface gets the connection closed
/// (h2c prior knowledge is off). Past the first bytes that differ, a plain pass-through.
struct NoHttp2Preface<I> {
    inner: I,
    /// Preface bytes matched so far; `None` once the bytes differ.
    matched: Option<usize>,
}

impl<I> NoHttp2Preface<I> {
    fn new(inner: I) -> Self {
        NoHttp2Preface {
            inner,
            matched: Some(0),
        }
    }
}

impl<I: hyper::rt::Read + Unpin> hyper::rt::Read for NoHttp2Preface<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let Some(matched) = this.matched else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        // Read into a small buffer of our own to look at the bytes, then hand them on.
        let mut first = [0u8; 512];
        let want = buf.remaining().min(first.len());
        let mut read = hyper::rt::ReadBuf::new(&mut first[..want]);
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, read.unfilled()))?;
        let got = read.filled();
        let n = got.len().min(HTTP2_PREFACE.len() - matched);
        if got[..n] != HTTP2_PREFACE[matched..matched + n] {
            this.matched = None;
        } else if matched + n == HTTP2_PREFACE.len() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "an HTTP/2 preface, and h2c is off",
            )));
        } else if n > 0 {
            this.matched = Some(matched + n);
        }
        buf.put_slice(got);
        Poll::Ready(Ok(()))
    }
}

impl<I: hyper::rt::Write + Unpin> hyper::rt::Write for NoHttp2Preface<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
}

/// A response body that ends its request for the connection's clock when it is finished
/// or dropped.
struct ClockedBody {
    inner: LoggedBody,
    _in_flight: RequestGuard,
}

impl Body for ClockedBody {
    type Data = <LoggedBody as Body>::Data;
    type Error = <LoggedBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A head hyper's parser refused before keel saw a request (hyper has answered it itself):
/// the status hyper wrote (none for an HTTP/2 preface on an HTTP/1 connection) and the
/// HTTP.sys reason for the log. hyper tells its parse errors apart only by their message;
/// `tests/hardening.rs` sends one of each, so a change in hyper's wording shows there.
fn parse_refusal(e: &hyper::Error) -> Option<(Option<u16>, crate::log::Reason)> {
    use crate::log::Reason;
    if !e.is_parse() {
        return None;
    }
    if e.is_parse_version_h2() {
        return Some((None, Reason::VersionNotSupported));
    }
    let message = e.to_string();
    let table: [(&str, u16, Reason); 9] = [
        ("invalid HTTP method", 400, Reason::Verb),
        ("invalid HTTP version", 400, Reason::VersionNotSupported),
        ("invalid URI", 400, Reason::Url),
        ("URI too long", 414, Reason::UrlLength),
        ("invalid HTTP header", 400, Reason::Header),
        ("invalid content-length", 400, Reason::Number),
        ("invalid transfer-encoding", 400, Reason::NotImplemented),
        ("unexpected transfer-encoding", 400, Reason::Header),
        ("message head is too large", 431, Reason::RequestLength),
    ];
    let found = table
        .iter()
        .find(|(prefix, _, _)| message.starts_with(prefix))
        .map(|(_, status, reason)| (Some(*status), *reason));
    Some(found.unwrap_or((Some(400), Reason::BadRequest)))
}

/// HTTP/2 carries the host in `:authority`, not in a Host header. Workers get the same
/// request shape whatever the client's version, so the authority becomes a Host header
/// (routing reads `uri().host()` first either way). An HTTP/1 request in absolute form
/// (`GET http://x/ HTTP/1.1`) is routed by the target's host, which RFC 9112 §3.2.2 says
/// wins over the Host field: the worker, and the cache key, see that same host.
fn with_host(mut req: Request<Incoming>) -> Request<Incoming> {
    let Some(authority) = req.uri().authority() else {
        return req;
    };
    let replace = match req.version() {
        http::Version::HTTP_2 => !req.headers().contains_key(header::HOST),
        // CONNECT's target is an authority and nothing else.
        _ => req.method() != http::Method::CONNECT,
    };
    // Without any `user@` part.
    let host = match authority.port() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_owned(),
    };
    if replace && let Ok(value) = http::HeaderValue::from_str(&host) {
        req.headers_mut().insert(header::HOST, value);
    }
    req
}

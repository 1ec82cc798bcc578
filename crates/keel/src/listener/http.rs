//! HTTP on one accepted connection: HTTP/1.1, HTTP/2 chosen by ALPN on TLS, and HTTP/2 by
//! prior knowledge (h2c) on cleartext when enabled; hyper-util's auto builder for all three.

use super::conn_clock::{ConnClock, RequestGuard};
use crate::config::ListenerConfig;
use crate::request_path::{ConnContext, LoggedBody, serve_logged};
use http::{Request, header};
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
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
/// part of graceful shutdown.
pub async fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    ctx: Arc<ConnContext>,
    watcher: Watcher,
    clock: Arc<ConnClock>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (error_log, local, client) = (ctx.error_log.clone(), ctx.local, ctx.peer);
    let requests = clock.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        let http1 = req.version() < http::Version::HTTP_2;
        let in_flight = requests.begin_request(!http1);
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
    // With upgrades: a 101 hands the connection over to its tunnel (upgrade.rs), whose
    // own idle timer then applies; this connection task (and its clock) ends there.
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::select! {
        ended = watcher.watch(conn) => {
            if let Err(e) = ended {
                tracing::debug!(peer = %client, "connection ended: {e}");
            }
        }
        reason = clock.expired() => {
            // Dropping the connection closes it; HTTP.sys answers nothing either.
            tracing::debug!(peer = %client, "connection closed: {}", reason.phrase());
            error_log.write(&crate::log::ErrorRecord {
                time: std::time::SystemTime::now(),
                client: Some(client),
                server: Some(local),
                version: None,
                method: None,
                uri: None,
                status: None,
                site: None,
                reason,
                queue: None,
            });
        }
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

/// HTTP/2 carries the host in `:authority`, not in a Host header. Workers get the same
/// request shape whatever the client's version, so the authority becomes a Host header
/// (routing reads `uri().host()` first either way).
fn with_host(mut req: Request<Incoming>) -> Request<Incoming> {
    if req.version() == http::Version::HTTP_2
        && !req.headers().contains_key(header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(value) = http::HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, value);
    }
    req
}

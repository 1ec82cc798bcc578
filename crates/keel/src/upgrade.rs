//! Upgraded connections (HTTP/1.1 `Upgrade`, answered `101 Switching Protocols`; WebSocket
//! above all): which requests may upgrade, and the tunnel that carries an upgraded client
//! connection's two byte streams over its worker stream (docs/worker-protocol.md §11).
//!
//! Invariants:
//! - an upgrade request is routed, queued and dispatched like any other request; it is never
//!   cached, and once answered 101 it is never replayed on another worker;
//! - bytes move only under the stream's windows: the client is read while the worker has
//!   granted room (plus at most one read of 64 KiB), and the worker gets its credit back only
//!   as its bytes are written to the client, so a tunnel holds at most about one window each
//!   way whatever either side does;
//! - either side's end ends the other: the client's EOF becomes END on the stream; the
//!   worker's END, ABORT or death shuts the client socket down; no byte moving either way
//!   for `[listener] idle_connection` (HTTP.sys `IdleConnection`, 120 s) closes both
//!   (`Timer_ConnectionIdle`).

use crate::exchange::{Exchange, ResponseBroken};
use crate::log::Reason;
use crate::request_path::{ConnContext, PendingLog, ResponseBody, is_hop_by_hop};
use bytes::{Buf, Bytes};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use keel_proto::{AbortCode, ResponseHead};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::time::{Instant, Sleep};

/// How long closing the client side may take (a TLS close_notify to a client that does not
/// read): then the socket is simply dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The request asks to switch protocols, and keel can carry it: HTTP/1.1, `Connection`
/// naming `upgrade`, an `Upgrade` field, and no body (a request with a body is passed on as
/// an ordinary one, its upgrade fields dropped with the other hop-by-hop ones). HTTP/2 has
/// no `Upgrade` (its extended CONNECT is not carried).
pub fn requested<B: crate::request_path::RequestBody>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_11
        && req.method() != http::Method::CONNECT
        && req.headers().contains_key(header::UPGRADE)
        && connection_names_upgrade(req.headers())
        && req.body().body_is_empty()
}

fn connection_names_upgrade(headers: &HeaderMap) -> bool {
    crate::header_list::lists(headers, header::CONNECTION, "upgrade")
}

/// The hop-by-hop fields an upgrade request keeps on its way to the worker: its `Upgrade`
/// values and `Connection: upgrade` (the worker needs both to decide).
pub fn worker_fields(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .map(|v| (&b"upgrade"[..], v.as_bytes()))
        .chain(std::iter::once((&b"connection"[..], &b"upgrade"[..])))
}

/// The 101 for the client, from the worker's head: its fields without the hop-by-hop ones,
/// then `Upgrade` (the worker's, else the protocol the client asked for) and
/// `Connection: upgrade`. The body is the tunnel, which `request_path` starts once the
/// response is on its way.
pub fn switch(
    head: ResponseHead,
    exchange: Exchange,
    on_upgrade: OnUpgrade,
    requested: Option<HeaderValue>,
    conn: Arc<ConnContext>,
) -> Response<ResponseBody> {
    let mut upgrade = None;
    let mut headers = HeaderMap::with_capacity(head.headers.len() + 2);
    for (name, value) in head.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&name),
            HeaderValue::from_maybe_shared(value),
        ) else {
            continue;
        };
        if name == header::UPGRADE {
            upgrade = Some(value);
        } else if !is_hop_by_hop(&name) {
            headers.append(name, value);
        }
    }
    if let Some(upgrade) = upgrade.or(requested) {
        headers.insert(header::UPGRADE, upgrade);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let tunnel = Tunnel {
        exchange,
        first: head.body,
        worker_done: head.end,
        on_upgrade,
        idle: conn.idle_connection,
        _conn: conn,
    };
    let mut resp = Response::new(ResponseBody::Upgrade(Box::new(tunnel)));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = headers;
    resp
}

/// An upgraded client connection and its worker stream, from the 101 to the end of both.
pub struct Tunnel {
    exchange: Exchange,
    /// Bytes the worker put inline in its 101.
    first: Bytes,
    /// The worker's 101 ended its side already.
    worker_done: bool,
    on_upgrade: OnUpgrade,
    idle: Duration,
    /// Keeps the client connection counted (`max_connections`, metrics) while it lives.
    _conn: Arc<ConnContext>,
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The worker ended its side (END) and everything it sent reached the client.
    WorkerClosed,
    /// The worker aborted the stream or was lost (already logged by the exchange).
    WorkerBroke,
    /// The client connection failed (reset, write error).
    ClientGone,
    /// Nothing moved either way for `idle_connection`.
    Idle,
}

impl Tunnel {
    /// Carries bytes both ways until either side ends, then writes the access-log line
    /// (status 101, bytes each way, the connection's whole duration).
    pub(crate) async fn run(self, log: Option<Box<PendingLog>>) {
        let (sent, received) = self.carry().await;
        if let Some(mut log) = log {
            log.bytes_sent = sent;
            log.bytes_received = received;
            log.write();
        }
    }

    /// Returns the bytes sent to the client and received from it.
    async fn carry(self) -> (u64, u64) {
        let Tunnel {
            mut exchange,
            first,
            worker_done,
            on_upgrade,
            idle,
            _conn,
        } = self;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                // The client left before the 101 was written: dropping the exchange aborts
                // the stream and logs Connection_Dropped.
                tracing::debug!("upgrade did not complete: {e}");
                return (0, 0);
            }
        };
        let (rd, wr) = tokio::io::split(TokioIo::new(upgraded));
        exchange.upgrade(Box::pin(rd));
        let mut pipe = Pipe {
            queue: VecDeque::from_iter(Some(first).filter(|b| !b.is_empty())),
            client: wr,
            unflushed: false,
            worker_done,
            sent: 0,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        };
        let end = poll_fn(|cx| pipe.poll(&mut exchange, cx)).await;
        tracing::debug!(?end, sent = pipe.sent, "upgraded connection ended");
        match end {
            End::WorkerClosed => exchange.end_request(),
            End::WorkerBroke => {}
            End::ClientGone => {
                if !exchange.is_response_done() {
                    exchange.log(Reason::ConnectionDropped);
                }
                exchange.abort(AbortCode::ClientGone);
            }
            End::Idle => {
                exchange.log(Reason::TimerConnectionIdle);
                exchange.abort(AbortCode::Timeout);
            }
        }
        if end != End::ClientGone {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, pipe.client.shutdown()).await;
        }
        (pipe.sent, exchange.raw_received())
    }
}

/// The moving parts of a running tunnel (the client's read half is inside the exchange).
struct Pipe<W> {
    /// The worker's bytes not yet written to the client: at most its response window, since
    /// credit goes back only as they are written.
    queue: VecDeque<Bytes>,
    client: WriteHalf<W>,
    /// Bytes were written since the last flush (TLS buffers them).
    unflushed: bool,
    worker_done: bool,
    sent: u64,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

impl<W: tokio::io::AsyncRead + AsyncWrite> Pipe<W> {
    fn poll(&mut self, exchange: &mut Exchange, cx: &mut Context<'_>) -> Poll<End> {
        loop {
            let moved = self.sent + exchange.raw_received();
            // The worker's bytes (and window grants for the request side).
            while !self.worker_done {
                match exchange.poll_response_data(cx) {
                    Poll::Ready(Some(Ok(data))) => self.queue.push_back(data),
                    Poll::Ready(None) => self.worker_done = true,
                    Poll::Ready(Some(Err(ResponseBroken))) => return Poll::Ready(End::WorkerBroke),
                    Poll::Pending => break,
                }
            }
            // The client's bytes, as far as the worker's window allows.
            if exchange.pump_upgraded(cx).is_err() {
                return Poll::Ready(End::ClientGone);
            }
            // To the client; each byte written gives the worker its credit back.
            while let Some(front) = self.queue.front_mut() {
                match Pin::new(&mut self.client).poll_write(cx, front) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(End::ClientGone);
                    }
                    Poll::Ready(Ok(n)) => {
                        front.advance(n);
                        self.sent += n as u64;
                        self.unflushed = true;
                        exchange.grant_response(n);
                        if front.is_empty() {
                            self.queue.pop_front();
                        }
                    }
                    Poll::Pending => break,
                }
            }
            if self.queue.is_empty() && self.unflushed {
                match Pin::new(&mut self.client).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(_)) => return Poll::Ready(End::ClientGone),
                    Poll::Pending => {}
                }
            }
            if self.worker_done && self.queue.is_empty() && !self.unflushed {
                return Poll::Ready(End::WorkerClosed);
            }
            if self.sent + exchange.raw_received() == moved {
                break;
            }
            self.timer.as_mut().reset(Instant::now() + self.idle);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Idle);
        }
        Poll::Pending
    }
}

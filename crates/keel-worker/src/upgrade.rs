//! Upgraded streams (`101 Switching Protocols`, WebSocket above all).
//!
//! A request that asks to switch protocols (`Connection: upgrade` and an `Upgrade` field)
//! carries an [`OnUpgrade`] in its extensions. A handler served by [`crate::serve`] takes it
//! with [`on`], answers 101 with the headers its protocol needs, and awaits the
//! [`OnUpgrade`] in a task of its own: once the 101 is sent it resolves to an [`Upgraded`],
//! the stream's two directions as one `AsyncRead + AsyncWrite` (reading gives the client's
//! bytes, writing sends bytes to the client).
//!
//! ```no_run
//! use http::{Request, Response, StatusCode};
//! use keel_worker::Body;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! async fn handler(mut req: Request<Body>) -> Response<Body> {
//!     let on_upgrade = keel_worker::upgrade::on(&mut req);
//!     tokio::spawn(async move {
//!         let Ok(mut io) = on_upgrade.await else { return };
//!         let mut buf = [0u8; 1024];
//!         while let Ok(n @ 1..) = io.read(&mut buf).await {
//!             if io.write_all(&buf[..n]).await.is_err() {
//!                 break;
//!             }
//!         }
//!         let _ = io.shutdown().await;
//!     });
//!     let mut res = Response::new(Body::empty());
//!     *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
//!     res.headers_mut().insert("upgrade", "echo".parse().unwrap());
//!     res
//! }
//! ```
//!
//! Services run by [`crate::serve_service`] (an axum `Router`) see hyper's own
//! `hyper::upgrade::OnUpgrade` instead, so axum's `WebSocketUpgrade` works unchanged (see
//! `hyper_upgrade.rs`).
//!
//! Flow control is the stream's: reading grants the daemon window as bytes are consumed, and
//! writing waits for the window the daemon grants as it writes to the client. Shutting the
//! writer down (or dropping the [`Upgraded`]) ends the worker's side; the daemon then closes
//! the client connection. When the client closes, reading reaches end of file.

use crate::body::Credit;
use crate::conn::{BodyChunk, Conn};
use bytes::{Buf, Bytes};
use http::Request;
use http::header::{CONNECTION, HeaderMap, UPGRADE};
use keel_proto::StreamId;
use parking_lot::Mutex;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};

/// Takes the request's [`OnUpgrade`]. A request that did not ask to upgrade (or whose
/// `OnUpgrade` was taken already) gets one that fails with [`UpgradeError::NotAnUpgrade`].
pub fn on<B>(req: &mut Request<B>) -> OnUpgrade {
    req.extensions_mut()
        .remove::<OnUpgrade>()
        .unwrap_or(OnUpgrade { rx: None })
}

/// The upgraded stream of a request, once its 101 has been sent. Found in the extensions of
/// a request that asked to upgrade; take it with [`on`].
#[derive(Clone)]
pub struct OnUpgrade {
    rx: Option<Arc<Mutex<oneshot::Receiver<Upgraded>>>>,
}

impl std::fmt::Debug for OnUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnUpgrade")
    }
}

impl Future for OnUpgrade {
    type Output = Result<Upgraded, UpgradeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(rx) = &self.rx else {
            return Poll::Ready(Err(UpgradeError::NotAnUpgrade));
        };
        let mut rx = rx.lock();
        Pin::new(&mut *rx)
            .poll(cx)
            .map(|r| r.map_err(|_| UpgradeError::NotUpgraded))
    }
}

/// Why an [`OnUpgrade`] gave no stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    #[error("the request did not ask to switch protocols")]
    NotAnUpgrade,
    #[error("the response was not a 101, or the stream ended before it was sent")]
    NotUpgraded,
}

/// The request asks to switch protocols. The daemon sends such a request without END (its
/// request direction stays open for the upgraded bytes), with `upgrade` and
/// `connection: upgrade`, the only hop-by-hop fields a worker sees.
pub(crate) fn requested(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The SDK's side of an [`OnUpgrade`]: resolved by `response::send` when it sends the 101.
pub(crate) struct Pending {
    tx: oneshot::Sender<Upgraded>,
    /// The stream's request direction: after the 101, the client's bytes.
    data: mpsc::UnboundedReceiver<BodyChunk>,
}

/// An [`OnUpgrade`] for a request whose request-direction DATA arrives on `data`.
pub(crate) fn pending(data: mpsc::UnboundedReceiver<BodyChunk>) -> (Pending, OnUpgrade) {
    let (tx, rx) = oneshot::channel();
    let on = OnUpgrade {
        rx: Some(Arc::new(Mutex::new(rx))),
    };
    (Pending { tx, data }, on)
}

impl Pending {
    /// The 101 for stream `id` is sent: the handler's [`OnUpgrade`] gets the stream. If
    /// nobody waits for it, the stream is dropped, which ends the worker's side.
    pub(crate) fn resolve(self, conn: Arc<Conn>, id: StreamId) {
        let upgraded = Upgraded {
            credit: Credit::new(conn.clone(), id),
            conn,
            id,
            rx: self.data,
            unread: Bytes::new(),
            read_end: false,
            write_end: false,
            space: None,
        };
        let _ = self.tx.send(upgraded);
    }
}

/// An upgraded stream: reading gives the client's bytes (end of file once the client has
/// closed its side), writing sends bytes to the client.
pub struct Upgraded {
    conn: Arc<Conn>,
    id: StreamId,
    rx: mpsc::UnboundedReceiver<BodyChunk>,
    /// Bytes received and not yet read.
    unread: Bytes,
    /// END from the daemon, or the stream was cut.
    read_end: bool,
    /// This side ended (END sent).
    write_end: bool,
    credit: Credit,
    /// Waiting for the connection's outgoing buffer to drain.
    space: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("stream", &self.id)
            .finish()
    }
}

fn ended() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the upgraded stream has ended (aborted, or the daemon went away)",
    )
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.unread.is_empty() {
                let n = this.unread.len().min(buf.remaining());
                buf.put_slice(&this.unread[..n]);
                this.unread.advance(n);
                this.credit.consumed(n, !this.read_end);
                return Poll::Ready(Ok(()));
            }
            if this.read_end {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.rx.poll_recv(cx)) {
                Some((data, end)) => {
                    this.unread = data;
                    this.read_end = end;
                }
                None => {
                    this.read_end = true;
                    return Poll::Ready(Err(ended()));
                }
            }
        }
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_end {
            return Poll::Ready(Err(ended()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // As for response bodies: beyond the outbox limit, wait for the writer.
        if this.space.is_none() && this.conn.outbox_full() {
            let conn = this.conn.clone();
            this.space = Some(Box::pin(async move { conn.wait_space().await }));
        }
        if let Some(space) = &mut this.space {
            ready!(space.as_mut().poll(cx));
            this.space = None;
        }
        let want = buf.len().min(this.conn.max_data);
        let n = ready!(this.conn.poll_credit(this.id, want, cx)).map_err(|_| ended())?;
        this.conn
            .send_data(this.id, &buf[..n], false)
            .map_err(|_| ended())?;
        Poll::Ready(Ok(n))
    }

    /// Written bytes are queued for the connection's writer task, which sends them on its
    /// own: nothing to flush here.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends the worker's side (END): the daemon closes the client connection.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().end();
        Poll::Ready(Ok(()))
    }
}

impl Upgraded {
    fn end(&mut self) {
        if !self.write_end {
            self.write_end = true;
            // Gone already (aborted): nothing to end.
            let _ = self.conn.send_data(self.id, &[], true);
        }
    }
}

impl Drop for Upgraded {
    fn drop(&mut self) {
        self.end();
    }
}

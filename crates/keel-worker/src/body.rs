//! The request body a handler sees: either complete already (it came inside the REQUEST
//! frame) or a stream of DATA frames fed by the reading loop.
//!
//! Flow control lives here: the daemon is granted window only for bytes the handler has
//! taken out of this body, so a handler that does not read stops the daemon from sending.

use crate::conn::{BodyChunk, Conn};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use keel_proto::StreamId;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// A request body (and, for convenience, a simple response body).
///
/// Implements [`http_body::Body`]; `Default` is the empty body.
pub struct Body {
    inner: Inner,
}

enum Inner {
    /// The whole body, taken on the first poll.
    Full(Option<Bytes>),
    Streaming(Streaming),
}

struct Streaming {
    /// Body bytes that came inside the REQUEST frame.
    first: Option<Bytes>,
    rx: mpsc::UnboundedReceiver<BodyChunk>,
    /// The end was seen (or the stream was cut short).
    done: bool,
    /// Bytes still to come, when the request declared a Content-Length.
    remaining: Option<u64>,
    credit: Credit,
}

/// Request-window credit owed to the daemon for bytes the handler consumed.
pub(crate) struct Credit {
    conn: Arc<Conn>,
    id: StreamId,
    ungranted: u32,
    /// Grant once this many bytes are owed: half the initial window, so the daemon always
    /// has room to keep sending while the grant is on its way.
    threshold: u32,
}

impl Credit {
    pub(crate) fn new(conn: Arc<Conn>, id: StreamId) -> Self {
        let threshold = (conn.initial_window / 2).max(1);
        Credit {
            conn,
            id,
            ungranted: 0,
            threshold,
        }
    }

    pub(crate) fn consumed(&mut self, n: usize, more_to_come: bool) {
        self.ungranted = self.ungranted.saturating_add(n as u32);
        if more_to_come && self.ungranted >= self.threshold {
            self.conn
                .grant_request(self.id, std::mem::take(&mut self.ungranted));
        }
    }
}

/// Why reading a request body failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    #[error("the request body was cut short: the stream was aborted or the daemon went away")]
    Aborted,
}

impl Body {
    pub fn empty() -> Self {
        Body {
            inner: Inner::Full(None),
        }
    }

    /// A request body that is still arriving: `first` came inline, the rest comes through
    /// the returned sender (held by the reading loop).
    pub(crate) fn streaming(
        conn: Arc<Conn>,
        id: StreamId,
        first: Bytes,
        content_length: Option<u64>,
    ) -> (Self, mpsc::UnboundedSender<BodyChunk>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let remaining = content_length.map(|n| n.saturating_sub(first.len() as u64));
        let body = Body {
            inner: Inner::Streaming(Streaming {
                first: Some(first).filter(|b| !b.is_empty()),
                rx,
                done: false,
                remaining,
                credit: Credit::new(conn, id),
            }),
        };
        (body, tx)
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body {
            inner: Inner::Full(Some(bytes).filter(|b| !b.is_empty())),
        }
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Bytes::from_static(s.as_bytes()).into()
    }
}

impl From<&'static [u8]> for Body {
    fn from(s: &'static [u8]) -> Self {
        Bytes::from_static(s).into()
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Bytes::from(s).into()
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Bytes::from(v).into()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Full(b) => f
                .debug_struct("Body")
                .field("len", &b.as_ref().map_or(0, Bytes::len))
                .finish(),
            Inner::Streaming(s) => f
                .debug_struct("Body")
                .field("stream", &s.credit.id)
                .field("done", &s.done)
                .finish(),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let s = match &mut self.get_mut().inner {
            Inner::Full(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Streaming(s) => s,
        };
        if let Some(first) = s.first.take() {
            s.credit.consumed(first.len(), true);
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        loop {
            if s.done {
                return Poll::Ready(None);
            }
            match s.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    s.done = true;
                    return Poll::Ready(Some(Err(BodyError::Aborted)));
                }
                Poll::Ready(Some((data, end))) => {
                    s.done = end;
                    s.credit.consumed(data.len(), !end);
                    if let Some(r) = &mut s.remaining {
                        *r = r.saturating_sub(data.len() as u64);
                    }
                    if !data.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Streaming(s) => s.done && s.first.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Streaming(s) => {
                let first = s.first.as_ref().map_or(0, |b| b.len() as u64);
                match s.remaining {
                    Some(rest) if !s.done => SizeHint::with_exact(first + rest),
                    _ if s.done => SizeHint::with_exact(first),
                    _ => {
                        let mut hint = SizeHint::new();
                        hint.set_lower(first);
                        hint
                    }
                }
            }
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Bytes already queued for this body will never be read: count them as consumed so
        // the daemon gets its window back (later DATA is granted by the reading loop).
        self.rx.close();
        let mut owed = self.first.take().map_or(0, |b| b.len());
        while let Ok((data, end)) = self.rx.try_recv() {
            owed += data.len();
            if end {
                return;
            }
        }
        let owed = (self.credit.ungranted as usize + owed).min(u32::MAX as usize) as u32;
        self.credit.conn.grant_request(self.credit.id, owed);
    }
}

//! From the `http::Response` a handler returns to RESPONSE and DATA frames.
//!
//! A response whose body is complete at once and fits in min(window, 64 KiB) leaves as one
//! RESPONSE frame with END set: the fast path for small answers. Anything else sends the
//! head with whatever body was ready, then DATA frames of at most `MAX_DATA_CHUNK` bytes,
//! never more than the stream's window allows.
//!
//! A 101 to a request that asked to upgrade leaves as a RESPONSE without END (its body, if
//! any, is dropped) and hands the stream to the handler's `OnUpgrade`.

use crate::conn::{Conn, Ended};
use crate::upgrade::Pending;
use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, HeaderMap, TRANSFER_ENCODING};
use http::{Response, StatusCode};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use keel_proto::{CachePolicy, Header, ResponseHead, StreamId};
use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;

/// Largest body sent inline in the RESPONSE frame.
const INLINE_LIMIT: usize = 64 * 1024;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a stream stopped before its response end.
pub(crate) enum Failure {
    /// The stream is gone (aborted by the daemon, or the connection is closing): say nothing.
    Ended,
    /// Application code failed: abort the stream with `HandlerFailed`.
    App(BoxError),
}

impl From<Ended> for Failure {
    fn from(_: Ended) -> Self {
        Failure::Ended
    }
}

pub(crate) async fn send<B>(
    conn: &Arc<Conn>,
    id: StreamId,
    response: Response<B>,
    upgrade: Option<Pending>,
) -> Result<(), Failure>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let cache = parts
        .extensions
        .get::<CachePolicy>()
        .copied()
        .unwrap_or(CachePolicy::None);
    let mut headers = wire_headers(&parts.headers);
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // The daemon would take a 101 to a request that cannot upgrade for a broken
        // protocol: the handler's mistake ends only this stream.
        let Some(upgrade) = upgrade else {
            let why = String::from("a 101 answer to a request that did not ask to upgrade");
            return Err(Failure::App(why.into()));
        };
        conn.send_head(ResponseHead {
            id,
            status: parts.status.as_u16(),
            cache: CachePolicy::None,
            headers,
            body: Bytes::new(),
            end: false,
        })?;
        upgrade.resolve(conn.clone(), id);
        return Ok(());
    }
    // Not upgraded: the handler's `OnUpgrade` fails, the request direction is discarded.
    drop(upgrade);
    let mut body = pin!(body);

    let limit = (conn.window(id)? as usize).min(INLINE_LIMIT);
    if let Some(len) = streamed_length(&parts, body.size_hint().exact(), limit) {
        headers.push((
            Bytes::from_static(b"content-length"),
            Bytes::from(len.to_string()),
        ));
    }
    let (inline, next) = gather_ready(body.as_mut(), limit).await;
    let (mut pending, end) = match next {
        Next::Error(e) => return Err(Failure::App(e)),
        Next::End => (Bytes::new(), true),
        Next::Pending => (Bytes::new(), false),
        Next::Leftover(data) => (data, false),
    };
    conn.send_head(ResponseHead {
        id,
        status: parts.status.as_u16(),
        cache,
        headers,
        body: inline,
        end,
    })?;
    if end {
        return Ok(());
    }

    loop {
        if !pending.is_empty() {
            // Mark the last chunk END when the body already knows it is over: saves a frame.
            let end = body.is_end_stream();
            send_bytes(conn, id, std::mem::take(&mut pending), end).await?;
            if end {
                return Ok(());
            }
        }
        match body.as_mut().frame().await {
            None => {
                conn.send_data(id, &[], true)?;
                return Ok(());
            }
            Some(Err(e)) => return Err(Failure::App(e.into())),
            // Trailers have no place in the protocol: dropped.
            Some(Ok(frame)) => pending = frame.into_data().unwrap_or_default(),
        }
    }
}

/// What the body said after the bytes that could be sent inline.
enum Next {
    /// The body is complete.
    End,
    /// The body has nothing more ready yet.
    Pending,
    /// Bytes that did not fit inline.
    Leftover(Bytes),
    Error(BoxError),
}

/// Collects the body bytes that are ready without waiting, up to `limit`.
async fn gather_ready<B>(mut body: Pin<&mut B>, limit: usize) -> (Bytes, Next)
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut gathered = Gathered::default();
    let next = poll_fn(|cx| {
        loop {
            if body.is_end_stream() {
                return Poll::Ready(Next::End);
            }
            let data = match body.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Ready(Next::Pending),
                Poll::Ready(None) => return Poll::Ready(Next::End),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Next::Error(e.into())),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_trailers) => continue,
                },
            };
            if gathered.len() + data.len() > limit {
                return Poll::Ready(Next::Leftover(data));
            }
            gathered.push(data);
        }
    })
    .await;
    (gathered.finish(), next)
}

/// Body chunks collected for the inline part; one chunk (the usual case) is not copied.
#[derive(Default)]
struct Gathered {
    first: Bytes,
    more: Option<BytesMut>,
}

impl Gathered {
    fn len(&self) -> usize {
        self.more.as_ref().map_or(self.first.len(), BytesMut::len)
    }

    fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        if self.first.is_empty() {
            self.first = data;
            return;
        }
        let more = self
            .more
            .get_or_insert_with(|| BytesMut::from(&self.first[..]));
        more.extend_from_slice(&data);
    }

    fn finish(self) -> Bytes {
        self.more.map_or(self.first, BytesMut::freeze)
    }
}

/// Sends `data` as DATA frames, each within the window and at most `max_data` long, waiting
/// for WINDOW frames as needed. `end` goes on the last frame.
async fn send_bytes(conn: &Conn, id: StreamId, mut data: Bytes, end: bool) -> Result<(), Ended> {
    while !data.is_empty() {
        conn.wait_space().await;
        let want = data.len().min(conn.max_data);
        let n = poll_fn(|cx| conn.poll_credit(id, want, cx)).await?;
        let chunk = data.split_to(n);
        conn.send_data(id, &chunk, end && data.is_empty())?;
    }
    Ok(())
}

/// The response headers as the protocol carries them: lower-case names (the http crate
/// already lower-cases them), hop-by-hop fields dropped since the daemon frames the body
/// itself. All names and values share one allocation. Public for adapters that build
/// RESPONSE frames themselves.
/// The length to declare for a body that knows its length but will not fit in the RESPONSE
/// frame (`limit`), when the handler did not declare one: the daemon then sends the client
/// `Content-Length` rather than chunks, as a proxy passes an upstream's on. A body that fits
/// is whole when the daemon gets it, and the daemon counts it itself.
fn streamed_length(parts: &http::response::Parts, exact: Option<u64>, limit: usize) -> Option<u64> {
    let len = exact?;
    let bodiless = parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let declared = parts.headers.contains_key(http::header::CONTENT_LENGTH);
    (len > limit as u64 && !bodiless && !declared).then_some(len)
}

pub fn wire_headers(headers: &HeaderMap) -> Vec<Header> {
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    let mut arena = BytesMut::with_capacity(size);
    let mut out = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        if is_hop_by_hop(name) {
            continue;
        }
        arena.extend_from_slice(name.as_str().as_bytes());
        let name = arena.split().freeze();
        arena.extend_from_slice(value.as_bytes());
        let value = arena.split().freeze();
        out.push((name, value));
    }
    out
}

fn is_hop_by_hop(name: &http::HeaderName) -> bool {
    name == CONNECTION || name == TRANSFER_ENCODING || name.as_str() == "keep-alive"
}

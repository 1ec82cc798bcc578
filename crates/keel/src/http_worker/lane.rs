//! The direct lane of an HTTP worker: a request whose body is complete reaches the adapter
//! without the protocol pipe. Its worker connection ([`WorkerConn`]) hands over the queued
//! REQUEST frame; a task of its own forwards it ([`forward_one`], as the pipe's requests
//! are) and plays the worker's side of the stream: STARTED right before the request is
//! written, then RESPONSE and DATA within the stream's window, each applied straight to
//! the worker connection, which checks them as it checks any worker's frames. Measured
//! against the pipe, this spares the frames' encoding and decoding and four task wake-ups
//! per request (docs/performance.md).
//!
//! Invariants: the lane's frames pass [`WorkerConn::lane_frame`] and nothing else; the task
//! stops as soon as its stream is over (the client left, the worker was lost: the worker
//! connection aborts it).

use super::bridge::{ProxyBody, Start, forward_one};
use super::forward::ClientView;
use super::upstream::{RequestBody, Upstream};
use crate::dispatch::{DirectLane, Job, WorkerConn};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either};
use keel_proto::{AbortCode, CachePolicy, Decoder, Frame, RequestHead, ResponseHead, StreamId};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::Notify;

/// Largest body sent inside the RESPONSE frame (as the SDK does).
const INLINE_LIMIT: usize = 64 * 1024;

/// One HTTP worker's direct lane.
pub struct Lane {
    upstream: Arc<Upstream>,
    /// The worker process.
    pid: u32,
    decoder: Decoder,
}

impl Lane {
    pub fn new(upstream: Arc<Upstream>, pid: u32) -> Self {
        Lane {
            upstream,
            pid,
            decoder: Decoder::default(),
        }
    }
}

impl DirectLane for Lane {
    fn start(
        &self,
        conn: Arc<WorkerConn>,
        id: StreamId,
        job: &Job,
        window: Arc<Notify>,
    ) -> tokio::task::AbortHandle {
        // The daemon's own encoding, with this stream's id written in as for the pipe.
        let mut frame = BytesMut::from(&job.head[..]);
        frame[8..12].copy_from_slice(&id.to_be_bytes());
        let head = match self.decoder.decode(&mut frame) {
            Ok(Some(Frame::Request(head))) => Some(head),
            _ => None,
        };
        // Boxed: the request's state (its HTTP/1.1 connection's handshake and exchange) is
        // kilobytes, which the task would otherwise copy when spawned and again when done.
        let served = Box::pin(serve(
            self.upstream.clone(),
            self.pid,
            conn.clone(),
            id,
            head,
            window,
        ));
        let task = async move {
            // A panic ends the stream (502), not the slot: as for a protocol worker's handler.
            if AssertUnwindSafe(served).catch_unwind().await.is_err() {
                tracing::error!(id, "HTTP worker adapter panicked; aborting the stream");
                fail(&conn, id);
            }
        };
        tokio::spawn(task).abort_handle()
    }
}

async fn serve(
    upstream: Arc<Upstream>,
    pid: u32,
    conn: Arc<WorkerConn>,
    id: StreamId,
    head: Option<RequestHead>,
    window: Arc<Notify>,
) {
    let Some(head) = head else {
        tracing::error!(
            pid,
            "HTTP worker adapter: a queued request that does not decode"
        );
        fail(&conn, id);
        return;
    };
    let view = ClientView {
        client: head.client,
        local: head.local,
        tls: head.tls,
    };
    let Some(request) = to_request(head) else {
        // The daemon let through something the http crate refuses (as the SDK answers).
        tracing::warn!(pid, id, "request refused before the HTTP worker");
        let mut bad = Response::new(Either::Left(http_body_util::Full::new(Bytes::from_static(
            b"bad request",
        ))));
        *bad.status_mut() = StatusCode::BAD_REQUEST;
        respond(&conn, id, bad, &window).await;
        return;
    };
    let start = Start::Lane {
        conn: conn.clone(),
        id,
        sent: false,
    };
    match forward_one(upstream, pid, request, start, view).await {
        Ok(response) => respond(&conn, id, response, &window).await,
        Err(error) => {
            tracing::warn!(pid, id, %error, "HTTP worker request failed; aborting the stream");
            fail(&conn, id);
        }
    }
}

/// Ends the stream as a failed handler's would: the daemon answers 502.
fn fail(conn: &Arc<WorkerConn>, id: StreamId) {
    conn.lane_frame(Frame::Abort {
        id,
        code: AbortCode::HandlerFailed,
    });
}

/// The request for [`forward_one`], from the REQUEST frame (`None`: the http crate refuses
/// one of its parts). Its version is left alone: `forward_one` speaks HTTP/1.1 whatever the
/// client spoke.
fn to_request(head: RequestHead) -> Option<Request<RequestBody>> {
    // Room for the forwarding fields `forward::request_headers` adds (no regrowth then).
    let mut headers = HeaderMap::with_capacity(head.headers.len() + 6);
    for (name, value) in head.headers {
        let name = HeaderName::from_bytes(&name).ok()?;
        let value = HeaderValue::from_maybe_shared(value).ok()?;
        headers.append(name, value);
    }
    let mut request = Request::new(RequestBody::from(head.body));
    *request.method_mut() = Method::from_bytes(&head.method).ok()?;
    *request.uri_mut() = Uri::from_maybe_shared(head.target).ok()?;
    *request.headers_mut() = headers;
    Some(request)
}

/// The response as RESPONSE and DATA frames: a body that is whole and fits in the window
/// (and in 64 KiB) goes inside the head, anything else follows in DATA within the window.
async fn respond(
    conn: &Arc<WorkerConn>,
    id: StreamId,
    response: Response<ProxyBody>,
    window: &Notify,
) {
    let (parts, body) = response.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // Never asked for: lane requests do not upgrade.
        tracing::warn!(
            id,
            "HTTP worker answered 101 to a request that did not ask to upgrade"
        );
        fail(conn, id);
        return;
    }
    let mut head = ResponseHead {
        id,
        status: parts.status.as_u16(),
        cache: CachePolicy::None,
        headers: keel_worker::wire_headers(&parts.headers),
        body: Bytes::new(),
        end: false,
    };
    match body {
        Either::Left(whole) => {
            let whole = match whole.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let room = conn.response_window(id).unwrap_or(0) as usize;
            if whole.len() <= room.min(INLINE_LIMIT) {
                head.body = whole;
                head.end = true;
                conn.lane_frame(Frame::Response(head));
                return;
            }
            if conn.lane_frame(Frame::Response(head)) {
                send_data(conn, id, whole, true, window).await;
            }
        }
        Either::Right(mut streamed) => {
            if !conn.lane_frame(Frame::Response(head)) {
                return;
            }
            loop {
                match streamed.frame().await {
                    None => {
                        send_data(conn, id, Bytes::new(), true, window).await;
                        return;
                    }
                    Some(Ok(frame)) => {
                        // Trailers have no place in the protocol: dropped.
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        if !send_data(conn, id, data, false, window).await {
                            return;
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(id, %error, "HTTP worker response broke off");
                        fail(conn, id);
                        return;
                    }
                }
            }
        }
    }
}

/// Sends `data` as DATA frames within the stream's window, waiting for credit as needed;
/// `end` goes on the last one. `false`: the stream is over.
async fn send_data(
    conn: &Arc<WorkerConn>,
    id: StreamId,
    mut data: Bytes,
    end: bool,
    window: &Notify,
) -> bool {
    if data.is_empty() {
        return !end || conn.lane_frame(Frame::Data { id, data, end });
    }
    while !data.is_empty() {
        let room = loop {
            match conn.response_window(id) {
                None => return false,
                Some(0) => window.notified().await,
                Some(n) => break n as usize,
            }
        };
        let chunk = data.split_to(data.len().min(room).min(keel_proto::MAX_DATA_CHUNK));
        let last = end && data.is_empty();
        if !conn.lane_frame(Frame::Data {
            id,
            data: chunk,
            end: last,
        }) {
            return false;
        }
    }
    true
}

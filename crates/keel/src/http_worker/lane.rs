//! The direct lane of an HTTP worker: a request whose body is complete reaches the adapter
//! without the protocol pipe. Its worker connection ([`WorkerConn`]) hands over the queued
//! request, encoded as HTTP/1.1 when it was submitted ([`LaneRequest`]); a task of its own
//! writes it to the worker with the lane's own HTTP/1.1 client (`h1_client.rs`) and plays
//! the worker's side of the stream: STARTED right before
//! the request is written, then RESPONSE and DATA within the stream's window, each applied
//! straight to the worker connection, which checks them as it checks any worker's frames.
//! Measured against the pipe and hyper's client, this spares the frames' encoding and
//! decoding, four task wake-ups and the header maps of both directions per request
//! (docs/performance.md).
//!
//! The replay rules are those of the pipe's requests (`bridge::forward_one`): a request not
//! wholly written, with no answer back, is sent again on a new connection (up to three
//! times), whatever its method; one written
//! with no response byte back is sent once more when the connection had served a request
//! before (the worker may have closed it as the request went out) or the method is
//! idempotent; a response broken off before its head went on is sent once more when the
//! method is idempotent; otherwise, once the worker process is seen exiting or not, the
//! stream ends with 502.
//!
//! Invariants: the lane's frames pass [`WorkerConn::lane_frame`] and nothing else; the task
//! stops as soon as its stream is over (the client left, the worker was lost: the worker
//! connection aborts it).

use super::bridge::{BUFFER_LIMIT, await_worker_exit};
use super::h1_client::{self, BodyReader, Conn, Framing};
use super::upstream::{self, CONNECT_PATIENCE, Ready, Upstream};
use crate::dispatch::{DirectLane, LaneRequest, WorkerConn};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use keel_proto::{AbortCode, CachePolicy, Frame, Header, ResponseHead, StreamId};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;

/// Largest body sent inside the RESPONSE frame (as the SDK does).
const INLINE_LIMIT: usize = 64 * 1024;

/// One HTTP worker's direct lane.
pub struct Lane {
    upstream: Arc<Upstream>,
    /// The worker process.
    pid: u32,
}

impl Lane {
    pub fn new(upstream: Arc<Upstream>, pid: u32) -> Self {
        Lane { upstream, pid }
    }
}

impl DirectLane for Lane {
    fn start(
        &self,
        conn: Arc<WorkerConn>,
        id: StreamId,
        request: &LaneRequest,
        window: Arc<Notify>,
    ) -> tokio::task::AbortHandle {
        let early = write_at_dispatch(&self.upstream, &conn, id, &request.bytes);
        // Boxed: the request's state (its HTTP/1.1 connection's handshake and exchange) is
        // kilobytes, which the task would otherwise copy when spawned and again when done.
        let served = Box::pin(serve(
            self.upstream.clone(),
            self.pid,
            conn.clone(),
            id,
            request.clone(),
            window,
            early,
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

/// A request written, in part or whole, as it was dispatched.
struct Early {
    ready: Ready,
    /// How much of the request the socket took.
    written: usize,
}

/// Writes a request on a connection that is ready (an idle one, or the spare) as the request
/// is dispatched, STARTED first, rather than when its task first runs. A worker that closes
/// every connection (gunicorn's sync worker) waits for the daemon to close the last one
/// before it accepts the next; the response that freed this request's slot is what
/// dispatched it, and its connection closes right after. Written here, the request is
/// there when the worker accepts: it does not block reading an empty connection and wait
/// for the task, on its CPU or another. What the socket does not take now, the task writes.
fn write_at_dispatch(
    upstream: &Upstream,
    conn: &WorkerConn,
    id: StreamId,
    request: &[u8],
) -> Option<Early> {
    let ready = upstream.take_ready()?;
    // Not STARTED (the stream is over): the connection is dropped, and the task finds the
    // stream closed.
    if !conn.lane_started(id) {
        return None;
    }
    // An error here comes back to the task's own write of the rest.
    let written = ready.conn.try_write(request).unwrap_or(0);
    Some(Early { ready, written })
}

async fn serve(
    upstream: Arc<Upstream>,
    pid: u32,
    conn: Arc<WorkerConn>,
    id: StreamId,
    lane_request: LaneRequest,
    window: Arc<Notify>,
    mut early: Option<Early>,
) {
    let LaneRequest {
        bytes: request,
        head_only: head_request,
        idempotent,
    } = lane_request;
    let mut started = early.is_some();
    let mut fresh_only = false;
    let mut sent_again = false;
    let mut unwritten_retries = 0;
    let patience = Instant::now() + CONNECT_PATIENCE;
    loop {
        let (mut wire, reused, written) = if let Some(Early { ready, written }) = early.take() {
            let (wire, reused) = upstream.claim(ready).await;
            (wire, reused, written)
        } else {
            let leased = upstream::patiently(upstream.address(), patience, || async {
                if fresh_only {
                    upstream.connect_conn().await.map(|c| (c, false))
                } else {
                    upstream.lease_conn().await
                }
            })
            .await;
            match leased {
                Ok((wire, reused)) => (wire, reused, 0),
                Err(e) => {
                    tracing::warn!(pid, id, "cannot connect to {}: {e}", upstream.address());
                    fail(&conn, id);
                    return;
                }
            }
        };
        // STARTED once, right before the first write; later attempts only check that the
        // stream is still open.
        let open = if started {
            conn.response_window(id).is_some()
        } else {
            started = true;
            conn.lane_frame(Frame::Started { id })
        };
        if !open {
            return;
        }
        // A write that fails (the worker closed its side) may still leave an answer to
        // read: a server may answer early (413) and close before reading the whole request.
        let unwritten = wire.write_all(&request[written..]).await.err();
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let response = match h1_client::read_head(&mut wire, &mut buf, head_request).await {
            Ok(response) => response,
            Err(e) if e.malformed => {
                tracing::warn!(pid, id, "HTTP worker answered a bad response: {}", e.error);
                fail(&conn, id);
                return;
            }
            Err(e) => {
                if let Some(write_error) = &unwritten
                    && e.nothing_received
                    && unwritten_retries < MAX_UNWRITTEN_RETRIES
                    && Instant::now() < patience
                {
                    // Not wholly written and nothing back: the worker cannot have a
                    // request to act on, whatever its method. On a new connection.
                    tracing::trace!(
                        pid,
                        id,
                        "request not written ({write_error}); on a new connection"
                    );
                    unwritten_retries += 1;
                    fresh_only = true;
                    continue;
                }
                if unwritten.is_none()
                    && e.nothing_received
                    && (reused || idempotent)
                    && !sent_again
                {
                    // The worker closed a kept-alive connection as the request went out, or
                    // the process serving it died while its server lives on (gunicorn's
                    // master replaces a killed worker): once more, on a new connection, as
                    // nginx's proxy_next_upstream does. If the whole worker is going away,
                    // the daemon replays the request by the worker-loss rules instead.
                    sent_again = true;
                    fresh_only = true;
                    continue;
                }
                let error = unwritten.map_or(e.error, |w| w);
                tracing::warn!(pid, id, "the worker's connection failed: {error}");
                await_worker_exit(pid).await;
                fail(&conn, id);
                return;
            }
        };
        if response.status == 101 {
            // Never asked for: lane requests do not upgrade.
            tracing::warn!(
                id,
                "HTTP worker answered 101 to a request that did not ask to upgrade"
            );
            fail(&conn, id);
            return;
        }
        if response.closes {
            upstream.saw_connection_close().await;
        }
        let whole_len = match response.framing {
            Framing::Empty => Some(0),
            Framing::Length(n) if n <= BUFFER_LIMIT => usize::try_from(n).ok(),
            _ => None,
        };
        if let Some(len) = whole_len {
            // Read whole before the head goes on: the answer then leaves in one frame, and
            // a worker lost meanwhile leaves a request that can still be replayed rather
            // than a response cut short.
            match h1_client::read_whole(&mut wire, &mut buf, len).await {
                Ok(body) => {
                    if response.reusable && buf.is_empty() {
                        upstream.give_back_conn(wire);
                    }
                    answer_whole(&conn, id, response.status, response.headers, body, &window).await;
                    return;
                }
                Err(e) => {
                    if idempotent && !sent_again {
                        // Nothing of it has reached the client: the process serving it died
                        // mid-response while the server lives on. Once more, on a new
                        // connection.
                        sent_again = true;
                        fresh_only = true;
                        continue;
                    }
                    tracing::warn!(pid, id, "the worker's response broke off: {e}");
                    await_worker_exit(pid).await;
                    fail(&conn, id);
                    return;
                }
            }
        }
        let reusable = response.reusable;
        let mut body = BodyReader::new(response.framing);
        if !conn.lane_frame(Frame::Response(response_head(
            id,
            response.status,
            response.headers,
            Bytes::new(),
            false,
        ))) {
            return;
        }
        stream_body(
            &upstream, &conn, id, wire, buf, &mut body, reusable, &window,
        )
        .await;
        return;
    }
}

/// How many times a request that could not be wholly written is tried on a new connection.
const MAX_UNWRITTEN_RETRIES: u32 = 3;

/// The rest of a streamed response, as DATA within the window; the connection goes back for
/// reuse when the body ended as its framing says, with nothing after it.
#[allow(clippy::too_many_arguments)]
async fn stream_body(
    upstream: &Upstream,
    conn: &Arc<WorkerConn>,
    id: StreamId,
    mut wire: Conn,
    mut buf: BytesMut,
    body: &mut BodyReader,
    reusable: bool,
    window: &Notify,
) {
    loop {
        match body.next(&mut wire, &mut buf).await {
            Ok(None) => {
                if send_data(conn, id, Bytes::new(), true, window).await
                    && reusable
                    && buf.is_empty()
                {
                    upstream.give_back_conn(wire);
                }
                return;
            }
            Ok(Some(data)) => {
                if !send_data(conn, id, data, false, window).await {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(id, %error, "HTTP worker response broke off");
                fail(conn, id);
                return;
            }
        }
    }
}

fn response_head(
    id: StreamId,
    status: u16,
    headers: Vec<Header>,
    body: Bytes,
    end: bool,
) -> ResponseHead {
    ResponseHead {
        id,
        status,
        cache: CachePolicy::None,
        headers,
        body,
        end,
    }
}

/// Ends the stream as a failed handler's would: the daemon answers 502.
fn fail(conn: &Arc<WorkerConn>, id: StreamId) {
    conn.lane_frame(Frame::Abort {
        id,
        code: AbortCode::HandlerFailed,
    });
}

/// A whole response as frames: a body that fits in the window (and in 64 KiB) goes inside
/// the head, anything else follows in DATA within the window.
async fn answer_whole(
    conn: &Arc<WorkerConn>,
    id: StreamId,
    status: u16,
    headers: Vec<Header>,
    body: Bytes,
    window: &Notify,
) {
    let room = conn.response_window(id).unwrap_or(0) as usize;
    if body.len() <= room.min(INLINE_LIMIT) {
        conn.lane_frame(Frame::Response(response_head(
            id, status, headers, body, true,
        )));
        return;
    }
    if conn.lane_frame(Frame::Response(response_head(
        id,
        status,
        headers,
        Bytes::new(),
        false,
    ))) {
        send_data(conn, id, body, true, window).await;
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

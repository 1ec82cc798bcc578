//! Carrying requests to workers over keel-proto: what a queued request holds ([`Job`]),
//! what a request learns from its worker ([`Event`]), and one worker connection
//! ([`worker_conn::WorkerConn`]).

pub mod events;
pub mod worker_conn;

use bytes::Bytes;
use keel_proto::{AbortCode, ResponseHead, StreamId};
use std::sync::Arc;

pub use events::{EventRx, EventTx};
pub use worker_conn::WorkerConn;

/// The reading half of the daemon's connection to one worker.
pub type LinkRead = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
/// The writing half of the daemon's connection to one worker.
pub type LinkWrite = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// What carries the protocol to one worker: its socket (a worker process, spawned or
/// attached), or an in-memory pipe to the adapter of an HTTP worker, which runs inside the
/// daemon and so needs no system call and no poller round per frame.
pub enum WorkerLink {
    Socket(tokio::net::UnixStream),
    Memory(tokio::io::DuplexStream),
}

impl WorkerLink {
    pub fn split(self) -> (LinkRead, LinkWrite) {
        match self {
            WorkerLink::Socket(socket) => {
                let (rd, wr) = socket.into_split();
                (Box::new(rd), Box::new(wr))
            }
            WorkerLink::Memory(pipe) => {
                let (rd, wr) = tokio::io::split(pipe);
                (Box::new(rd), Box::new(wr))
            }
        }
    }
}

/// A way to hand a worker its requests without the protocol's bytes: an HTTP worker's
/// adapter runs inside the daemon, so a request whose body is complete goes to it as a
/// task that plays the worker's side of the stream, its frames applied straight to the
/// [`WorkerConn`] (checked as any worker's frames are). Requests that stream a body or
/// upgrade still travel the in-memory pipe.
pub trait DirectLane: Send + Sync {
    /// Starts serving stream `id` of `conn` with `request`. `window` is notified whenever
    /// the daemon grants the stream more response-body credit.
    fn start(
        &self,
        conn: Arc<WorkerConn>,
        id: StreamId,
        request: &LaneRequest,
        window: Arc<tokio::sync::Notify>,
    ) -> tokio::task::AbortHandle;
}

/// Everything a request learns about its trip through a pool, in order.
pub enum Event {
    /// A worker has it, as stream `id` (sent again after every replay), since `at` (the
    /// request's task may see the event later: the queue wait ends at `at`).
    Assigned {
        worker: Arc<WorkerConn>,
        id: StreamId,
        at: std::time::Instant,
    },
    Response(ResponseHead),
    Data {
        data: Bytes,
        end: bool,
    },
    /// The worker granted more request-body credit.
    WindowOpened,
    /// The worker gave up on the request (its handler failed).
    Aborted(AbortCode),
    /// The worker died or was killed with the request open. `started`: it had handed the
    /// request to application code (its STARTED frame arrived). STARTED is not an event of
    /// its own: only a lost worker needs it, and an event would wake the request's
    /// connection task once more per request.
    WorkerLost {
        killed_from_outside: bool,
        started: bool,
    },
    /// The pool went offline while the request waited (rapid-fail).
    Refused(crate::pool::Refusal),
}

/// A request as it waits in a pool's queue: enough to (re)send its head to any worker.
#[derive(Clone)]
pub struct Job {
    pub key: crate::queue::QueueKey,
    pub head: JobHead,
    /// Inline body bytes inside `head` (they count against the stream's window).
    pub inline_len: usize,
    /// The request body is complete inside `head`.
    pub end: bool,
    pub events: EventTx,
}

/// What a queued request sends its worker, encoded once when it is submitted.
#[derive(Clone)]
pub enum JobHead {
    /// The encoded REQUEST frame, stream id 0; the worker connection writes its own id in.
    Frame(Bytes),
    /// A request with its whole body for an HTTP worker (every worker of such a pool has a
    /// [`DirectLane`]): the bytes its lane writes, encoded once, without a REQUEST frame
    /// that the lane would only decode again.
    Http1(LaneRequest),
}

/// A request as an HTTP worker's direct lane sends it.
#[derive(Clone)]
pub struct LaneRequest {
    /// Request line, fields (the proxy fields set) and body, as HTTP/1.1.
    pub bytes: Bytes,
    /// A HEAD request: its response has no body, whatever its framing says.
    pub head_only: bool,
    /// Its method is idempotent (RFC 9110 §9.2.2): it may be sent again after a failure.
    pub idempotent: bool,
}

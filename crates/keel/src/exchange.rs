//! One request's trip through its pool: queued, assigned to a worker, body streamed both
//! ways under flow control, and — when its worker is lost — replayed or failed by the rules
//! of DESIGN §3.
//!
//! Invariants:
//! - a request is replayed only if every body byte a worker may have seen is still held
//!   here ([`RETAIN_LIMIT`]); an unstarted request is replayed whatever its method; a
//!   started one only when idempotent, killed from outside, no response byte sent, and never
//!   twice;
//! - the request body is read from the client only while a worker has window for it, so a
//!   queued request costs no buffered body and a slow worker slows only its own client;
//! - response-body credit is given back to the worker only as bytes are handed to the
//!   client connection, so a slow client stalls only its own stream;
//! - when the client goes away, a queued request leaves the queue and an assigned one is
//!   aborted on its worker (`Drop`);
//! - a request that may be upgraded keeps its request direction open until the answer: END
//!   follows a non-101 head; after a 101 the client connection itself is the source
//!   ([`Exchange::upgrade`]) and the request is never replayed.

use crate::config::RetryPolicy;
use crate::dispatch::{Event, EventRx, Job, WorkerConn};
use crate::log::{ErrorLog, ErrorRecord, Reason};
use crate::pool::{Placement, Pool, Refusal};
use bytes::{Buf, Bytes};
use http_body::Body;
use hyper::body::Incoming;
use keel_proto::{AbortCode, ResponseHead, StreamId};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;
use std::time::{Duration, Instant};
use tokio::io::AsyncRead;
use tokio::time::Sleep;

/// Request-body bytes kept for a replay. Beyond this a request that lost its worker after
/// its body started flowing cannot be replayed and gets 502.
pub const RETAIN_LIMIT: usize = keel_proto::DEFAULT_INITIAL_WINDOW as usize;

/// What the error log needs to know about a request.
pub struct RequestMeta {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub version: http::Version,
    pub method: http::Method,
    /// Kept as it came (a clone shares its bytes); written out only for a log line.
    pub uri: http::Uri,
    pub site: Arc<str>,
    pub error_log: ErrorLog,
}

impl RequestMeta {
    pub fn log(&self, status: Option<u16>, reason: Reason, queue: Option<&str>) {
        let uri = self.uri.to_string();
        self.error_log.write(&ErrorRecord {
            time: SystemTime::now(),
            client: Some(self.client),
            server: Some(self.server),
            version: Some(self.version),
            method: Some(self.method.as_str()),
            uri: Some(&uri),
            status,
            site: Some(&self.site),
            reason,
            queue,
        });
    }
}

/// How waiting for the response head ended when it did not bring one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub status: http::StatusCode,
    pub reason: Reason,
    /// The pool could not take the request at all (full queue, offline): what the client
    /// gets depends on the pool's `unavailable` setting.
    pub refused: bool,
}

impl Failure {
    pub fn new(status: http::StatusCode, reason: Reason) -> Self {
        Failure {
            status,
            reason,
            refused: false,
        }
    }

    pub fn refused(refusal: Refusal) -> Self {
        Failure {
            status: http::StatusCode::SERVICE_UNAVAILABLE,
            reason: refusal.reason(),
            refused: true,
        }
    }
}

enum Phase {
    Queued,
    Assigned {
        worker: Arc<WorkerConn>,
        id: StreamId,
    },
    Done,
}

/// Largest read from an upgraded client connection: one DATA frame's worth.
const RAW_READ: usize = keel_proto::MAX_DATA_CHUNK;

/// Where the bytes of the request direction come from.
enum Source {
    /// The request's HTTP body.
    Body(Incoming),
    /// The client connection itself, after a 101 (the tunnel of `upgrade.rs`).
    Raw {
        io: Pin<Box<dyn AsyncRead + Send>>,
        buf: bytes::BytesMut,
    },
}

/// The request body as it flows from the client to whichever worker has the request.
struct RequestBody {
    source: Option<Source>,
    /// Read from the client but not yet sent to the current worker.
    pending: VecDeque<Bytes>,
    /// Everything read from the client so far, for a replay (until RETAIN_LIMIT).
    retained: Vec<Bytes>,
    retained_len: usize,
    replayable: bool,
    /// The client's body has ended (END still to be sent if `!sent_end`).
    exhausted: bool,
    /// END went to the current worker.
    sent_end: bool,
    /// The request may be upgraded: its END waits for the answer (none after a 101).
    hold_end: bool,
    /// `[listener] entity_body`: the longest pause between two pieces from the client.
    stall_limit: Duration,
    /// Bytes read from the client so far, and the most the site takes (`max_body_bytes`).
    received: u64,
    max_bytes: u64,
    /// Running while the client owes the next piece (reset by each piece).
    stall: Option<Pin<Box<Sleep>>>,
}

/// What a request body may do: pause (`[listener] entity_body`) and weigh (the site's
/// `max_body_bytes`).
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    pub stall: Duration,
    pub max_bytes: u64,
}

pub struct Exchange {
    pool: Arc<Pool>,
    job: Job,
    events: EventRx,
    phase: Phase,
    idempotent: bool,
    started: bool,
    retried: bool,
    response_started: bool,
    response_done: bool,
    body: RequestBody,
    queue_timer: Option<Pin<Box<Sleep>>>,
    meta: Arc<RequestMeta>,
    /// When the request was put into its pool; taken at its first assignment (queue wait).
    submitted: Option<Instant>,
    /// Answered 101: the stream carries raw bytes, the tunnel gives response credit back as
    /// it writes to the client, and counts what the client sent in `raw_received`.
    upgraded: bool,
    raw_received: u64,
}

impl Exchange {
    /// `body` is `None` when the whole body travels inline in the job's head. `upgrade`: the
    /// request asked to switch protocols, so its END waits for a non-101 answer.
    pub fn new(
        pool: Arc<Pool>,
        job: Job,
        events: EventRx,
        body: Option<Incoming>,
        meta: Arc<RequestMeta>,
        limits: BodyLimits,
        upgrade: bool,
    ) -> Self {
        let idempotent = matches!(
            meta.method,
            http::Method::GET
                | http::Method::HEAD
                | http::Method::OPTIONS
                | http::Method::PUT
                | http::Method::DELETE
        );
        let exhausted = body.is_none();
        Exchange {
            pool,
            job,
            events,
            phase: Phase::Queued,
            idempotent,
            started: false,
            retried: false,
            response_started: false,
            response_done: false,
            body: RequestBody {
                source: body.map(Source::Body),
                pending: VecDeque::new(),
                retained: Vec::new(),
                retained_len: 0,
                replayable: true,
                exhausted,
                sent_end: exhausted && !upgrade,
                hold_end: upgrade,
                stall_limit: limits.stall,
                received: 0,
                max_bytes: limits.max_bytes,
                stall: None,
            },
            queue_timer: None,
            meta,
            submitted: None,
            upgraded: false,
            raw_received: 0,
        }
    }

    /// Puts the request into its pool. `Err` when the pool refuses it (queue full, offline).
    pub fn submit(&mut self) -> Result<(), Failure> {
        self.submitted = Some(Instant::now());
        match self.pool.submit(self.job.clone()) {
            Ok(Placement::Dispatched) => Ok(()),
            Ok(Placement::Queued) => {
                self.arm_queue_timer();
                Ok(())
            }
            Err(refusal) => {
                self.phase = Phase::Done;
                Err(Failure::refused(refusal))
            }
        }
    }

    fn arm_queue_timer(&mut self) {
        self.queue_timer = Some(Box::pin(tokio::time::sleep(
            self.pool.settings.queue_timeout,
        )));
    }

    /// Waits for the worker's response head, replaying the request if its worker is lost.
    pub async fn response_head(&mut self) -> Result<ResponseHead, Failure> {
        std::future::poll_fn(|cx| self.poll_head(cx)).await
    }

    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<ResponseHead, Failure>> {
        loop {
            if let Err(f) = self.pump_request_body(cx) {
                return Poll::Ready(Err(f));
            }
            match self.events.poll_recv(cx) {
                Poll::Ready(Some(event)) => match event {
                    Event::Assigned { worker, id, at } => self.on_assigned(worker, id, at),
                    Event::Response(head) => {
                        self.response_started = true;
                        self.response_done = head.end;
                        if head.status != 101 && self.body.hold_end {
                            // Not upgraded: the request direction ends like any other.
                            self.body.hold_end = false;
                            if let Err(f) = self.pump_request_body(cx) {
                                return Poll::Ready(Err(f));
                            }
                        }
                        return Poll::Ready(Ok(head));
                    }
                    Event::WindowOpened | Event::Data { .. } => {}
                    Event::Refused(refusal) => {
                        self.phase = Phase::Done;
                        self.queue_timer = None;
                        return Poll::Ready(Err(Failure::refused(refusal)));
                    }
                    Event::Aborted(_) => {
                        self.phase = Phase::Done;
                        return Poll::Ready(Err(Failure::new(
                            http::StatusCode::BAD_GATEWAY,
                            Reason::ConnectionAbandonedByAppPool,
                        )));
                    }
                    Event::WorkerLost {
                        killed_from_outside,
                        started,
                    } => {
                        self.started |= started;
                        if !self.replay(killed_from_outside) {
                            self.phase = Phase::Done;
                            return Poll::Ready(Err(Failure::new(
                                http::StatusCode::BAD_GATEWAY,
                                Reason::ConnectionAbandonedByReqQueue,
                            )));
                        }
                    }
                },
                // The exchange holds a sender itself (in `job`): the channel cannot close.
                Poll::Ready(None) => unreachable!("exchange holds its own event sender"),
                Poll::Pending => {
                    if let Some(timer) = self.queue_timer.as_mut() {
                        if timer.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        self.queue_timer = None;
                        if matches!(self.phase, Phase::Queued)
                            && self.pool.remove_queued(self.job.key)
                        {
                            self.phase = Phase::Done;
                            return Poll::Ready(Err(Failure::new(
                                http::StatusCode::SERVICE_UNAVAILABLE,
                                Reason::TimerReqQueue,
                            )));
                        }
                        // Dispatched in the meantime: its Assigned event is on its way.
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Takes in an assignment sent quietly (`EventTx::send_quiet`) that no poll has seen
    /// yet: a request whose body is complete learns of it only from the next event that
    /// wakes it, and what drops or aborts the exchange must know which stream to end.
    fn catch_up_assignment(&mut self) {
        if !matches!(self.phase, Phase::Queued) {
            return;
        }
        if let Some(Event::Assigned { worker, id, at }) = self
            .events
            .pop_front_if(|e| matches!(e, Event::Assigned { .. }))
        {
            self.on_assigned(worker, id, at);
        }
    }

    fn on_assigned(&mut self, worker: Arc<WorkerConn>, id: StreamId, at: Instant) {
        self.queue_timer = None;
        if let Some(submitted) = self.submitted.take() {
            self.pool
                .queue_wait
                .observe(at.saturating_duration_since(submitted));
        }
        self.phase = Phase::Assigned { worker, id };
    }

    /// The worker holding this request is gone. Returns whether the request went back to the
    /// head of the queue.
    fn replay(&mut self, killed_from_outside: bool) -> bool {
        let policy = self.pool.settings.retry;
        let allowed = if !self.started {
            policy != RetryPolicy::Never
        } else {
            policy == RetryPolicy::Idempotent
                && self.idempotent
                && killed_from_outside
                && !self.retried
                && !self.response_started
        };
        if !allowed || !self.body.replayable {
            return false;
        }
        if self.started {
            self.retried = true;
        }
        self.started = false;
        self.phase = Phase::Queued;
        // Everything read from the client so far goes to the next worker again.
        self.body.pending = self.body.retained.iter().cloned().collect();
        // A body that travels inline in the head needs no END of its own.
        self.body.sent_end = self.job.end;
        self.arm_queue_timer();
        self.pool.requeue_front(self.job.clone());
        true
    }

    /// Moves request-body bytes from the client to the worker as far as the window allows.
    fn pump_request_body(&mut self, cx: &mut Context<'_>) -> Result<(), Failure> {
        let Phase::Assigned { worker, id } = &self.phase else {
            return Ok(());
        };
        let (worker, id) = (worker.clone(), *id);
        let body = &mut self.body;
        while !body.sent_end {
            let last = body.exhausted && !body.hold_end && body.pending.len() == 1;
            if let Some(chunk) = body.pending.front_mut() {
                match worker.send_request_data(id, chunk, last) {
                    // The stream is gone (worker lost or aborted): its event will tell.
                    None => return Ok(()),
                    Some(n) if n == chunk.len() => {
                        body.pending.pop_front();
                        body.sent_end = last;
                    }
                    Some(0) => return Ok(()), // wait for WINDOW
                    Some(n) => chunk.advance(n),
                }
                continue;
            }
            if body.exhausted {
                if body.hold_end {
                    return Ok(());
                }
                match worker.send_request_data(id, &Bytes::new(), true) {
                    Some(_) | None => body.sent_end = true,
                }
                continue;
            }
            let Some(source) = body.source.as_mut() else {
                body.exhausted = true;
                continue;
            };
            let polled = match source {
                Source::Body(incoming) => match Pin::new(incoming).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        Poll::Ready(Some(Ok(frame.into_data().unwrap_or_default())))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        Poll::Ready(Some(Err(crate::request_check::body_error_reason(&e))))
                    }
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                },
                Source::Raw { io, buf } => {
                    buf.reserve(RAW_READ);
                    match tokio_util::io::poll_read_buf(io.as_mut(), cx, buf) {
                        Poll::Ready(Ok(0)) => Poll::Ready(None),
                        Poll::Ready(Ok(n)) => {
                            self.raw_received += n as u64;
                            Poll::Ready(Some(Ok(buf.split().freeze())))
                        }
                        Poll::Ready(Err(_)) => Poll::Ready(Some(Err(Reason::ClientReset))),
                        Poll::Pending => Poll::Pending,
                    }
                }
            };
            // Upgraded bytes are no request body: neither `entity_body` nor `max_body_bytes`
            // applies to them.
            let raw = matches!(source, Source::Raw { .. });
            match polled {
                Poll::Pending => {
                    if raw {
                        // An upgraded connection may be quiet for as long as it likes: the
                        // tunnel's idle timer covers both directions.
                        return Ok(());
                    }
                    // The client owes the next piece: HTTP.sys EntityBody.
                    let limit = body.stall_limit;
                    let stall = body
                        .stall
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                    if stall.as_mut().poll(cx).is_ready() {
                        self.phase_abort(AbortCode::ClientGone);
                        return Err(Failure::new(
                            http::StatusCode::REQUEST_TIMEOUT,
                            Reason::TimerEntityBody,
                        ));
                    }
                    return Ok(());
                }
                Poll::Ready(None) => {
                    body.stall = None;
                    body.exhausted = true;
                    body.source = None;
                }
                Poll::Ready(Some(Ok(data))) => {
                    body.stall = None;
                    if !data.is_empty() {
                        if !raw {
                            body.received += data.len() as u64;
                            if body.received > body.max_bytes {
                                // A body without a declared length ran past the site's limit.
                                self.phase_abort(AbortCode::ClientGone);
                                return Err(Failure::new(
                                    http::StatusCode::PAYLOAD_TOO_LARGE,
                                    Reason::EntityTooLarge,
                                ));
                            }
                        }
                        if body.replayable {
                            body.retained_len += data.len();
                            if body.retained_len > RETAIN_LIMIT {
                                body.replayable = false;
                                body.retained = Vec::new();
                            } else {
                                body.retained.push(data.clone());
                            }
                        }
                        body.pending.push_back(data);
                    }
                }
                Poll::Ready(Some(Err(reason))) => {
                    // The client's body broke off (disconnect, bad chunking).
                    self.phase_abort(AbortCode::ClientGone);
                    return Err(Failure::new(http::StatusCode::BAD_REQUEST, reason));
                }
            }
        }
        Ok(())
    }

    fn phase_abort(&mut self, code: AbortCode) {
        self.catch_up_assignment();
        if let Phase::Assigned { worker, id } = std::mem::replace(&mut self.phase, Phase::Done) {
            worker.abort(id, code);
        }
    }

    /// Next chunk of the response body, for the client connection.
    pub fn poll_response_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, ResponseBroken>>> {
        loop {
            if self.response_done {
                return Poll::Ready(None);
            }
            // The request body may still be flowing (full-duplex streaming). An upgraded
            // stream's tunnel pumps the client's bytes itself.
            if !self.upgraded
                && let Err(f) = self.pump_request_body(cx)
            {
                if matches!(f.reason, Reason::TimerEntityBody | Reason::EntityTooLarge) {
                    // The answer had begun: it is cut, and the cause is on record.
                    self.meta.log(None, f.reason, Some(self.pool.name()));
                }
                return Poll::Ready(Some(Err(ResponseBroken)));
            }
            let event = ready!(self.events.poll_recv(cx));
            match event {
                Some(Event::Data { data, end }) => {
                    if !self.upgraded
                        && let Phase::Assigned { worker, id } = &self.phase
                    {
                        worker.grant(*id, data.len());
                    }
                    if end {
                        self.response_done = true;
                        if self.body.sent_end {
                            self.phase = Phase::Done;
                        }
                    }
                    if data.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Some(Event::Aborted(_)) | Some(Event::WorkerLost { .. }) => {
                    self.phase = Phase::Done;
                    self.meta.log(
                        None,
                        Reason::ConnectionAbandonedByReqQueue,
                        Some(self.pool.name()),
                    );
                    return Poll::Ready(Some(Err(ResponseBroken)));
                }
                Some(_) => continue,
                None => unreachable!("exchange holds its own event sender"),
            }
        }
    }

    /// Gives the worker back credit for `n` response bytes handed to the client.
    pub fn grant_response(&self, n: usize) {
        if let Phase::Assigned { worker, id } = &self.phase {
            worker.grant(*id, n);
        }
    }

    pub fn is_response_done(&self) -> bool {
        self.response_done
    }

    /// The worker answered 101: from now on the client connection's bytes are the request
    /// direction (read by [`Exchange::pump_upgraded`]), and the request can never be
    /// replayed.
    pub fn upgrade(&mut self, client: Pin<Box<dyn AsyncRead + Send>>) {
        self.upgraded = true;
        let body = &mut self.body;
        body.replayable = false;
        body.retained = Vec::new();
        body.hold_end = false;
        body.exhausted = false;
        body.stall = None;
        body.source = Some(Source::Raw {
            io: client,
            buf: bytes::BytesMut::new(),
        });
    }

    /// Moves the upgraded client's bytes to the worker as far as the window allows; at its
    /// EOF, END. `Err` when the client connection failed (the stream is then aborted).
    pub fn pump_upgraded(&mut self, cx: &mut Context<'_>) -> Result<(), Failure> {
        self.pump_request_body(cx)
    }

    /// Bytes the upgraded client has sent so far.
    pub fn raw_received(&self) -> u64 {
        self.raw_received
    }

    /// Ends the request direction at once (an upgraded stream whose worker side has ended:
    /// the client connection is closed, nothing more will come from it).
    pub fn end_request(&mut self) {
        if let Phase::Assigned { worker, id } = &self.phase
            && !self.body.sent_end
        {
            worker.send_request_data(*id, &Bytes::new(), true);
        }
        self.body.sent_end = true;
        self.body.pending.clear();
        self.body.source = None;
        if self.response_done {
            self.phase = Phase::Done;
        }
    }

    /// Gives up on the stream: ABORT with `code` to the worker.
    pub fn abort(&mut self, code: AbortCode) {
        self.phase_abort(code);
    }

    /// An error-log line for this request, naming its pool.
    pub fn log(&self, reason: Reason) {
        self.meta.log(None, reason, Some(self.pool.name()));
    }

    pub fn pool_name(&self) -> &str {
        self.pool.name()
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.catch_up_assignment();
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Queued => {
                if self.pool.remove_queued(self.job.key) {
                    self.meta
                        .log(None, Reason::ClientReset, Some(self.pool.name()));
                }
            }
            Phase::Assigned { worker, id } => {
                if !(self.response_done && self.body.sent_end) {
                    worker.abort(id, AbortCode::ClientGone);
                    if !self.response_done {
                        self.meta
                            .log(None, Reason::ConnectionDropped, Some(self.pool.name()));
                    }
                }
            }
            Phase::Done => {}
        }
    }
}

/// The worker's response broke off after its head reached the client: the client
/// connection is closed without completing the body.
#[derive(Debug)]
pub struct ResponseBroken;

impl std::fmt::Display for ResponseBroken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the worker's response broke off")
    }
}

impl std::error::Error for ResponseBroken {}

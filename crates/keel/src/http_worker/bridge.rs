//! The adapter that makes a plain HTTP/1.1 server a pool worker. It runs inside the daemon,
//! one task per HTTP worker, and speaks keel's worker protocol to the rest of the daemon
//! over an in-memory pipe (through the `keel-worker` SDK), so the queue, dispatch, capacity,
//! flow control, recycling and the replay rules are exactly those of protocol workers:
//!
//! - HELLO is sent only once the worker is ready (it answers an HTTP request: with
//!   `health_path`, a GET of it with 2xx): the pool's `startup_timeout` covers readiness;
//! - each PING is answered only after the same check passes;
//! - STARTED is sent right before a request is written to the worker's socket, so a
//!   request lost before that goes back to the queue whatever its method;
//! - after DRAIN, open requests finish and the bridge closes its end; the worker task then
//!   sends the process SIGTERM and waits for it to exit.
//!
//! A request whose body is complete (most of them) skips the pipe: the worker connection
//! hands it to the bridge's direct lane (`lane.rs`), which follows the same replay rules
//! as [`forward_one`] with its own HTTP/1.1 client.

use super::endpoint::{Address, Endpoint};
use super::forward::{self, ClientView};
use super::lane::Lane;
use super::upstream::{self, CONNECT_PATIENCE, Lease, RequestBody, ResponseBody, Upstream};
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::Either;
use keel_worker::{HealthCheck, RequestInfo, StartSignal};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Between readiness checks while the worker starts.
const READY_POLL: Duration = Duration::from_millis(25);
/// A health check that takes longer than this fails.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this much of a health check's answer body is read, for at most this long, before
/// its connection is closed (a longer or slower body is cut there); it changes no verdict.
const CHECK_BODY_MAX: usize = 64 * 1024;
const CHECK_BODY_WAIT: Duration = Duration::from_secs(1);
/// After a connection fails mid-request: time for the daemon to see the worker's exit, so
/// the request follows the worker-loss rules (replay) instead of failing here.
const LOSS_GRACE: Duration = Duration::from_secs(2);
/// Between the two looks at a worker process that seems alive after a connection broke.
const EXIT_LOOK_AGAIN: Duration = Duration::from_millis(20);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes the protocol pipe holds in each direction before a writer waits (as much as a
/// socketpair's buffer would).
const PIPE_BUFFER: usize = 256 * 1024;

/// Bodies up to this size (by `Content-Length`) are read whole before the response head is
/// handed on (the lane's too).
pub(super) const BUFFER_LIMIT: u64 = 64 * 1024;

/// A response body: read whole (small), or streamed from the worker's connection.
type ProxyBody = Either<http_body_util::Full<bytes::Bytes>, ResponseBody>;

fn small(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n <= BUFFER_LIMIT)
}

/// What one bridge serves.
pub struct BridgeSpec {
    pub endpoint: Endpoint,
    pub health_path: Option<String>,
    /// Requests in flight to the worker at once (its HELLO capacity).
    pub capacity: u32,
    /// The worker process (announced in HELLO).
    pub pid: u32,
    pub pool: Arc<str>,
}

/// A running bridge: the daemon's end of its protocol pipe, its task, and its direct lane.
pub struct Bridge {
    pub pipe: tokio::io::DuplexStream,
    pub task: tokio::task::JoinHandle<()>,
    pub lane: Arc<Lane>,
}

/// Starts the bridge for one HTTP worker process.
pub fn start(spec: BridgeSpec) -> Bridge {
    let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
    let upstream = Upstream::new(spec.endpoint.address.clone(), spec.capacity as usize);
    let lane = Arc::new(Lane::new(upstream.clone(), spec.pid));
    let task = tokio::spawn(run(spec, upstream, theirs));
    Bridge {
        pipe: ours,
        task,
        lane,
    }
}

async fn run(spec: BridgeSpec, upstream: Arc<Upstream>, pipe: tokio::io::DuplexStream) {
    let BridgeSpec {
        endpoint,
        health_path,
        capacity,
        pid,
        pool,
    } = spec;
    let health_path: Option<Arc<str>> = health_path.map(Into::into);
    while !healthy(&upstream, health_path.as_deref()).await {
        tokio::time::sleep(READY_POLL).await;
    }
    tracing::debug!(pool = %pool, pid, address = %endpoint.address, "HTTP worker ready");
    let check: HealthCheck = {
        let upstream = upstream.clone();
        Arc::new(move || {
            let upstream = upstream.clone();
            let path = health_path.clone();
            Box::pin(async move { healthy(&upstream, path.as_deref()).await })
        })
    };
    let served = keel_worker::Worker::in_memory(pipe)
        .capacity(capacity)
        .announce_pid(pid)
        .started_by_handler()
        .health_check(check)
        .serve_service(Proxy {
            upstream: upstream.clone(),
            pid,
        })
        .await;
    if let Err(e) = served {
        tracing::warn!(pool = %pool, pid, "HTTP worker adapter stopped: {e}");
    }
    // The worker is about to be told to stop: a server reading an empty connection would
    // wait for it to close.
    upstream.stop_spares();
    // `endpoint` is dropped here (or when the task is aborted): the socket file goes.
    drop(endpoint);
}

/// Readiness and health: the worker answers an HTTP request on a new connection (never one
/// a request may be using). With a health path, a GET of it must answer 2xx; without, an
/// `OPTIONS *` must get any answer at all. A connection alone proves nothing: the kernel
/// accepts on a listening socket whether or not the application ever reads it. The verdict
/// is the head's; the body is then read to its end ([`read_answer_out`]) before the
/// connection closes.
async fn healthy(upstream: &Upstream, health_path: Option<&str>) -> bool {
    let check = async {
        let mut lease = upstream.connect().await.ok()?;
        let host = match upstream.address() {
            Address::Tcp(addr) => addr.to_string(),
            Address::Unix(_) => "localhost".to_owned(),
        };
        let request = match health_path {
            Some(path) => Request::get(path),
            None => Request::options("*"),
        };
        let request = request
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "keel-health-check")
            .body(RequestBody::empty())
            .ok()?;
        let response = upstream::drive(&mut lease.driver, lease.sender.send_request(request))
            .await
            .ok()?;
        let passed = health_path.is_none() || response.status().is_success();
        Some((passed, lease, response.into_body()))
    };
    let Ok(Some((passed, mut lease, body))) = tokio::time::timeout(CHECK_TIMEOUT, check).await
    else {
        return false;
    };
    read_answer_out(&mut lease, body).await;
    passed
}

/// Reads a health check's answer body to its end, within [`CHECK_BODY_MAX`] and
/// [`CHECK_BODY_WAIT`], before its connection is closed: a server still writing it when the
/// connection closes fails that write (EPIPE, ECONNRESET), which Python's `http.server`
/// reports with a traceback on its stderr at every start and health check.
async fn read_answer_out(lease: &mut Lease, mut body: hyper::body::Incoming) {
    let read = async {
        let mut seen = 0;
        while seen <= CHECK_BODY_MAX {
            match http_body_util::BodyExt::frame(&mut body).await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len()),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(CHECK_BODY_WAIT, upstream::drive(&mut lease.driver, read)).await;
}

/// The service the SDK runs for each request: forward it to the worker.
#[derive(Clone)]
struct Proxy {
    upstream: Arc<Upstream>,
    /// The worker process (the server keel started).
    pid: u32,
}

impl tower_service::Service<Request<RequestBody>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        let start = Start(request.extensions_mut().remove::<StartSignal>());
        let view = request
            .extensions()
            .get::<RequestInfo>()
            .map(|info| ClientView {
                client: info.client,
                local: info.local,
                tls: info.tls,
            })
            .unwrap_or_default();
        Box::pin(forward_one(
            self.upstream.clone(),
            self.pid,
            request,
            start,
            view,
        ))
    }
}

/// What is told, right before a request is written to the worker's socket, that it is
/// (STARTED): a request lost before that goes back to the queue whatever its method. The
/// SDK's signal, when it gave one.
pub(super) struct Start(Option<StartSignal>);

impl Start {
    /// `false`: the request's stream is over (it must not be sent).
    async fn send(&mut self) -> bool {
        match &mut self.0 {
            None => true,
            Some(signal) => signal.send().await,
        }
    }
}

/// Before a request fails for a broken connection: if the worker process is exiting, gives
/// the daemon time to see it go, so the request follows the worker-loss rules (replay)
/// instead of failing here (the daemon then ends this task). A worker that lives on (its
/// server replaces the child process that died, as gunicorn's master does) is looked at
/// twice, a moment apart, since a process killed as a group may close its connections just
/// before it shows as exiting; then the request fails at once rather than holding its
/// slot of the pool.
pub(super) async fn await_worker_exit(pid: u32) {
    let going = crate::os::proc::exiting(pid) || {
        tokio::time::sleep(EXIT_LOOK_AGAIN).await;
        crate::os::proc::exiting(pid)
    };
    if going {
        tokio::time::sleep(LOSS_GRACE).await;
    }
}

/// One request to the worker and its response head back. An `Err` aborts the stream (the
/// daemon answers 502).
async fn forward_one(
    upstream: Arc<Upstream>,
    pid: u32,
    request: Request<RequestBody>,
    mut start: Start,
    view: ClientView,
) -> Result<Response<ProxyBody>, BoxError> {
    let (mut parts, body) = request.into_parts();
    let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
    forward::request_headers(&mut parts.headers, &view, authority.as_deref());
    // Origin-form for an HTTP/1.1 server, whatever the client spoke (most targets are
    // already).
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = match parts.uri.path_and_query() {
            Some(pq) => Uri::try_from(pq.as_str())?,
            None => Uri::from_static("/"),
        };
    }
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    // A request without a body can be sent again after a keep-alive race.
    let resend = body.is_end_stream().then(|| {
        let mut copy = Request::new(RequestBody::empty());
        *copy.method_mut() = parts.method.clone();
        *copy.uri_mut() = parts.uri.clone();
        *copy.version_mut() = parts.version;
        *copy.headers_mut() = parts.headers.clone();
        copy
    });
    let mut resend = resend;
    let idempotent = parts.method.is_idempotent();
    let mut request = Request::from_parts(parts, body);
    let mut fresh_only = false;
    let patience = Instant::now() + CONNECT_PATIENCE;
    loop {
        let leased = upstream::patiently(upstream.address(), patience, || async {
            if fresh_only {
                upstream.connect().await
            } else {
                upstream.lease().await
            }
        })
        .await;
        let Lease {
            mut sender,
            reused,
            mut driver,
        } = match leased {
            Ok(lease) => lease,
            Err(e) => {
                return Err(format!("cannot connect to {}: {e}", upstream.address()).into());
            }
        };
        if !start.send().await {
            return Err("the request ended before it was sent".into());
        }
        match upstream::drive(&mut driver, sender.try_send_request(request)).await {
            Ok(response) => {
                let (mut head, body) = response.into_parts();
                if forward::closes_connection(&head.headers) {
                    upstream.saw_connection_close().await;
                }
                forward::response_headers(&mut head.headers);
                let read_whole = small(&head.headers);
                if !read_whole {
                    // The body streams after the head: the connection needs its own task.
                    upstream::release(&mut driver);
                }
                let mut body = ResponseBody::new(body, sender, upstream.clone());
                if read_whole {
                    // Read whole before the head goes on: the answer then leaves in one
                    // frame, and a worker lost meanwhile leaves a request that can still
                    // be replayed rather than a response cut short.
                    let collected =
                        upstream::drive(&mut driver, http_body_util::BodyExt::collect(&mut body))
                            .await;
                    // Kept open for reuse (the body has given the connection back).
                    upstream::release(&mut driver);
                    let whole = match collected {
                        Ok(whole) => whole,
                        Err(error) => {
                            if idempotent && let Some(copy) = resend.take() {
                                // Nothing of it has reached the client: the process serving
                                // it died mid-response while the server lives on. Once more,
                                // on a new connection.
                                request = copy;
                                fresh_only = true;
                                continue;
                            }
                            await_worker_exit(pid).await;
                            return Err(format!("the worker's response broke off: {error}").into());
                        }
                    };
                    let body = Either::Left(http_body_util::Full::new(whole.to_bytes()));
                    return Ok(Response::from_parts(head, body));
                }
                return Ok(Response::from_parts(head, Either::Right(body)));
            }
            Err(mut failed) => {
                if let Some(unsent) = failed.take_message()
                    && Instant::now() < patience
                {
                    // Never written: the same request on a new connection.
                    request = unsent;
                    fresh_only = true;
                    continue;
                }
                if (reused || idempotent)
                    && let Some(copy) = resend.take()
                {
                    // The worker closed a kept-alive connection as the request went out, or
                    // the process serving it died while its server lives on (gunicorn's
                    // master replaces a killed worker): once more, on a new connection, as
                    // nginx's proxy_next_upstream does. If the whole worker is going away,
                    // the daemon replays the request by the worker-loss rules instead.
                    request = copy;
                    fresh_only = true;
                    continue;
                }
                let error = failed.into_error();
                await_worker_exit(pid).await;
                return Err(format!("the worker's connection failed: {error}").into());
            }
        }
    }
}

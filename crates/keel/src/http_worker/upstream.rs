//! HTTP/1.1 connections to one worker, kept alive between requests: at most one request per
//! connection at a time, idle connections reused newest first and dropped after
//! [`IDLE_KEEP`] (shorter than the keep-alive timeouts of common servers, so keel rarely
//! sends on a connection the worker is closing). Two kinds: hyper client connections (the
//! pipe's requests, health checks) and the direct lane's own (`h1_client::Conn`, leased
//! with [`Upstream::lease_conn`]).
//!
//! A new connection's HTTP/1.1 state machine (its [`Driver`]) is driven by the request that
//! opened it until that request's response is read ([`drive`]), and by a task of its
//! own only if the connection then stays open for reuse: a worker that closes every
//! connection (gunicorn's sync worker) costs no task and no wake-up between tasks.
//!
//! For such a worker, one connection is opened ahead of need (a *spare*, as Envoy's
//! preconnect does): when a request takes a new connection, the next one is connected at
//! once and waits in the worker's accept queue, so a server done with one request accepts
//! the next connection at once instead of finding its accept queue empty, going back to
//! `select` and being woken again (a measurable share of gunicorn's time per request). A
//! spare carries no request: losing it loses nothing. Unused, it is closed after
//! [`IDLE_KEEP`] (a server blocked reading it would otherwise look hung to its own
//! watchdog: gunicorn's master kills a worker silent for 30 s), and at once when the
//! worker drains.

use super::endpoint::Address;
use super::h1_client::Conn;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long an idle connection is kept for reuse.
const IDLE_KEEP: Duration = Duration::from_secs(2);

/// How long a reused connection may take to become ready before a new one is opened.
const READY_WAIT: Duration = Duration::from_millis(50);

/// How long a request waits for the worker to accept a connection before it fails, and
/// how often it tries meanwhile.
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
const CONNECT_RETRY: Duration = Duration::from_millis(20);

pub type RequestBody = keel_worker::Body;

/// One worker's connections.
pub struct Upstream {
    address: Address,
    idle: Mutex<Vec<(SendRequest<RequestBody>, Instant)>>,
    /// Most idle connections kept (the worker's capacity).
    max_idle: usize,
    /// The direct lane's idle connections.
    lane_idle: Mutex<Vec<(Conn, Instant)>>,
    /// A lane connection opened ahead of need, never used, and since when.
    spare: Mutex<Option<(Conn, Instant)>>,
    /// The worker closes its connections after each response: a spare is worth keeping.
    closes_connections: AtomicBool,
    /// The task that closes a spare left unused is running.
    reaping: AtomicBool,
    /// No more spares (the worker is draining or gone).
    spares_off: AtomicBool,
}

/// A lane connection taken without waiting ([`Upstream::take_ready`]).
pub struct Ready {
    pub conn: Conn,
    /// It served a request before (a failure on it may be the worker closing it).
    pub reused: bool,
    /// It was the spare: the next one is still to be opened.
    pub was_spare: bool,
}

/// A connection's HTTP/1.1 state machine; it resolves when the connection closes.
pub type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection taken for one request.
pub struct Lease {
    pub sender: SendRequest<RequestBody>,
    /// It served a request before (a failure on it may be the worker closing it).
    pub reused: bool,
    /// A new connection's state machine, for the request that took it to [`drive`] until
    /// it [`release`]s it (a reused connection has its own task already). Dropped without
    /// a release, the connection closes.
    pub driver: Option<Driver>,
}

/// Runs `work` (sending on the lease's connection, reading its response) while driving the
/// connection, if the request drives it.
pub async fn drive<F: Future>(driver: &mut Option<Driver>, work: F) -> F::Output {
    let Some(running) = driver.as_mut() else {
        return work.await;
    };
    let mut work = std::pin::pin!(work);
    let mut closed = false;
    let out = std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        // Once the connection has closed, what `work` waits for has happened, or failed.
        if !closed && running.as_mut().poll(cx).is_ready() {
            closed = true;
        }
        // What the connection just did (written the request, read the response) may have
        // completed `work`: looked at again now rather than after a wake-up of this task.
        work.as_mut().poll(cx)
    })
    .await;
    if closed {
        *driver = None;
    }
    out
}

/// The request is done driving its connection: the connection goes on in a task of its own
/// while it stays open (for reuse, or for a body still streaming).
pub fn release(driver: &mut Option<Driver>) {
    if let Some(mut running) = driver.take() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if running.as_mut().poll(&mut cx).is_pending() {
            tokio::spawn(running);
        }
    }
}

impl Upstream {
    pub fn new(address: Address, max_idle: usize) -> Arc<Self> {
        Arc::new(Upstream {
            address,
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
            lane_idle: Mutex::new(Vec::new()),
            spare: Mutex::new(None),
            closes_connections: AtomicBool::new(false),
            reaping: AtomicBool::new(false),
            spares_off: AtomicBool::new(false),
        })
    }

    /// A response said the worker closes its connection after it (`Connection: close`):
    /// from then on, a spare connection is kept ready (one is opened now if there is none:
    /// the first such response, or the first after a pause).
    pub async fn saw_connection_close(self: &Arc<Self>) {
        if !self.closes_connections.load(Ordering::Relaxed) {
            self.closes_connections.store(true, Ordering::Relaxed);
        }
        if self.spare.lock().is_none() {
            self.open_spare().await;
        }
    }

    /// Closes the spare connection and opens no other (the worker is draining).
    pub fn stop_spares(&self) {
        self.spares_off.store(true, Ordering::Relaxed);
        self.close_spare();
    }

    /// Closes the spare connection, if any: a connection opened after it would wait in
    /// the accept queue behind it.
    fn close_spare(&self) {
        drop(self.spare.lock().take());
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    /// An idle connection that is still open, else a new one.
    pub async fn lease(&self) -> io::Result<Lease> {
        loop {
            let candidate = {
                let mut idle = self.idle.lock();
                idle.retain(|(s, since)| !s.is_closed() && since.elapsed() < IDLE_KEEP);
                idle.pop()
            };
            let Some((mut sender, _)) = candidate else {
                break;
            };
            // A connection whose last response just ended may need a moment to be ready.
            if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, sender.ready()).await {
                return Ok(Lease {
                    sender,
                    reused: true,
                    driver: None,
                });
            }
        }
        self.connect().await
    }

    /// A connection for a lane request and whether it served one before (a failure on it
    /// may then be the worker closing it): an idle one that looks open, else the spare,
    /// else a new one. Taking the spare or a new one opens the next spare when the worker
    /// closes its connections.
    pub async fn lease_conn(self: &Arc<Self>) -> io::Result<(Conn, bool)> {
        if let Some(ready) = self.take_ready() {
            return Ok(self.claim(ready).await);
        }
        let conn = Conn::connect(&self.address).await?;
        if self.closes_connections.load(Ordering::Relaxed) {
            self.open_spare().await;
        }
        Ok((conn, false))
    }

    /// A lane connection to be had without waiting: an idle one that looks open, else the
    /// spare (when the worker closes its connections). `None`: one has to be connected.
    /// Whoever takes it hands it to [`Self::claim`], which opens the next spare.
    pub fn take_ready(&self) -> Option<Ready> {
        loop {
            let candidate = self.lane_idle.lock().pop();
            let Some((conn, since)) = candidate else {
                break;
            };
            if since.elapsed() < IDLE_KEEP && conn.looks_open() {
                return Some(Ready {
                    conn,
                    reused: true,
                    was_spare: false,
                });
            }
        }
        if !self.closes_connections.load(Ordering::Relaxed) {
            return None;
        }
        match self.spare.lock().take() {
            // As a new connection: a failure on it never resends a non-idempotent request
            // (the server may have begun it).
            Some((spare, since)) if since.elapsed() < IDLE_KEEP && spare.looks_open() => {
                Some(Ready {
                    conn: spare,
                    reused: false,
                    was_spare: true,
                })
            }
            _ => None,
        }
    }

    /// A connection from [`Self::take_ready`] put to use, and whether it served before: the
    /// next spare is opened if it was the spare.
    pub async fn claim(self: &Arc<Self>, ready: Ready) -> (Conn, bool) {
        if ready.was_spare {
            self.open_spare().await;
        }
        (ready.conn, ready.reused)
    }

    /// A new lane connection (a request sent again after a failure never takes an idle one).
    /// The spare is closed first: in the worker's accept queue, the new connection would
    /// wait behind it (a server that lost its process, as gunicorn's master replaces a
    /// killed worker, accepts the spare first and would read it until it is closed).
    pub async fn connect_conn(&self) -> io::Result<Conn> {
        self.close_spare();
        Conn::connect(&self.address).await
    }

    /// A lane connection whose response was read to its end, kept for the next request.
    pub fn give_back_conn(&self, conn: Conn) {
        let mut idle = self.lane_idle.lock();
        if idle.len() < self.max_idle {
            idle.push((conn, Instant::now()));
        }
    }

    /// Connects the next request's connection now (see the module's comment). A failure
    /// costs nothing: the next request connects for itself.
    async fn open_spare(self: &Arc<Self>) {
        if self.spares_off.load(Ordering::Relaxed) {
            return;
        }
        let Ok(spare) = Conn::connect(&self.address).await else {
            return;
        };
        *self.spare.lock() = Some((spare, Instant::now()));
        if !self.reaping.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap_spares(Arc::downgrade(self)));
        }
    }

    /// A fresh hyper connection (the spare is closed first, as for [`Self::connect_conn`]).
    pub async fn connect(&self) -> io::Result<Lease> {
        self.close_spare();
        match &self.address {
            Address::Unix(path) => handshake(tokio::net::UnixStream::connect(path).await?).await,
            Address::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                let _ = stream.set_nodelay(true);
                handshake(stream).await
            }
        }
    }

    /// Puts a connection whose response was read to the end back for reuse.
    fn give_back(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push((sender, Instant::now()));
        }
    }
}

/// Runs `connect` until it succeeds or `patience` (an instant) has passed, every
/// [`CONNECT_RETRY`]: a worker may not be accepting yet.
pub async fn patiently<T, F>(
    address: &Address,
    patience: Instant,
    mut connect: impl FnMut() -> F,
) -> io::Result<T>
where
    F: Future<Output = io::Result<T>>,
{
    loop {
        match connect().await {
            Err(e) if Instant::now() < patience => {
                tracing::trace!(%address, "worker not accepting yet: {e}");
                tokio::time::sleep(CONNECT_RETRY).await;
            }
            done => return done,
        }
    }
}

/// Closes a spare left unused for [`IDLE_KEEP`], and idle lane connections as old; ends
/// with its [`Upstream`].
async fn reap_spares(upstream: Weak<Upstream>) {
    loop {
        tokio::time::sleep(IDLE_KEEP / 2).await;
        let Some(upstream) = upstream.upgrade() else {
            return;
        };
        let mut spare = upstream.spare.lock();
        if spare
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() >= IDLE_KEEP)
        {
            drop(spare.take());
        }
        drop(spare);
        upstream
            .lane_idle
            .lock()
            .retain(|(_, since)| since.elapsed() < IDLE_KEEP);
    }
}

/// HTTP/1.1 on a connected stream; its driver runs until either side closes it.
async fn handshake<S>(stream: S) -> io::Result<Lease>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    // Its end (worker closed it, or keel dropped the sender) needs no report.
    let driver: Driver = Box::pin(async move {
        let _ = conn.await;
    });
    Ok(Lease {
        sender,
        reused: false,
        driver: Some(driver),
    })
}

/// A worker's response body; the connection goes back to the [`Upstream`] once the body has
/// been read to its end (a body dropped earlier takes its connection with it).
pub struct ResponseBody {
    inner: hyper::body::Incoming,
    lease: Option<(SendRequest<RequestBody>, Arc<Upstream>)>,
}

impl ResponseBody {
    pub fn new(
        inner: hyper::body::Incoming,
        sender: SendRequest<RequestBody>,
        upstream: Arc<Upstream>,
    ) -> Self {
        let mut body = ResponseBody {
            inner,
            lease: Some((sender, upstream)),
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        if let Some((sender, upstream)) = self.lease.take() {
            upstream.give_back(sender);
        }
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(),
            Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

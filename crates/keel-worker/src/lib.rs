//! The Rust SDK for keel worker processes.
//!
//! A worker is a child process of the keel daemon. It inherits one end of a `socketpair`
//! (its number in `KEEL_FD`) — or, started by hand, connects to its pool's attach socket
//! (`KEEL_ATTACH`, [`Worker::attach`]) — and speaks keel's worker protocol over it: the daemon sends
//! requests, the worker runs application code and sends responses. This crate hides the
//! protocol behind two entry points:
//!
//! ```no_run
//! # async fn run() -> Result<(), keel_worker::Error> {
//! keel_worker::serve(|_req: http::Request<keel_worker::Body>| async {
//!     http::Response::new(keel_worker::Body::from("hello"))
//! })
//! .await
//! # }
//! ```
//!
//! and [`serve_service`], which runs any `tower::Service` — an axum `Router` unchanged.
//! Upgrades (WebSocket): see [`upgrade`].
//!
//! Inside: one reading loop per connection dispatches frames (`connection.rs`), one task per
//! request runs the application (`handler.rs`), and one writer task batches every outgoing
//! frame into as few syscalls as it can (`writer.rs`). Flow control is real in both
//! directions: request-body window is granted only as the handler consumes the body, and
//! response bodies never exceed the window the daemon granted.

mod body;
mod conn;
mod connection;
mod error;
mod handler;
mod hyper_upgrade;
mod request;
mod response;
pub mod upgrade;
mod writer;

pub use body::{Body, BodyError};
pub use connection::HealthCheck;
pub use error::Error;
pub use keel_proto::CachePolicy;
pub use request::{Invalidator, RequestInfo, StartSignal};
pub use response::wire_headers;

use bytes::Bytes;
use http::{Request, Response};
use std::future::Future;
use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Requests a worker runs at once when neither the builder nor `KEEL_CAPACITY` says.
const DEFAULT_CAPACITY: u32 = 64;

/// Serves `handler` on the connection keel gave this process (see [`Worker::from_env`]).
/// Returns `Ok(())` when keel drains the worker or goes away.
pub async fn serve<F, Fut, B>(handler: F) -> Result<(), Error>
where
    F: Fn(Request<Body>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Worker::from_env()?.serve(handler).await
}

/// Serves a `tower::Service` (an axum `Router`, for one) on the connection keel gave this
/// process. An `Err` from the service aborts that request (the daemon answers the client).
pub async fn serve_service<S, B>(service: S) -> Result<(), Error>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Worker::from_env()?.serve_service(service).await
}

/// A worker connection not yet serving, with its settings.
pub struct Worker {
    transport: connection::Transport,
    capacity: Option<u32>,
    options: connection::Options,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field(
                "transport",
                &match &self.transport {
                    connection::Transport::Socket(s) => format!("{s:?}"),
                    connection::Transport::Memory(_) => "in memory".to_owned(),
                },
            )
            .field("capacity", &self.capacity)
            .field("started_by_handler", &self.options.started_by_handler)
            .finish_non_exhaustive()
    }
}

/// What an attaching worker sends before HELLO: this, the token, and a line feed.
const ATTACH_PREAMBLE: &str = "KEEL-ATTACH ";

/// Hexadecimal characters in an attach token (32 random bytes).
const ATTACH_TOKEN_LEN: usize = 64;

/// `KEEL_FD` names one descriptor; it may be wrapped (and so closed) only once.
static FD_TAKEN: AtomicBool = AtomicBool::new(false);

impl Worker {
    /// Takes the connection keel passed in `KEEL_FD`. Fails when the process was not started
    /// by keel, and on a second call.
    ///
    /// When `KEEL_FD` is not set but `KEEL_ATTACH` is (the path of a pool's attach socket,
    /// `<runtime_dir>/attach/<pool>/worker.sock`), the worker attaches there instead (see
    /// [`Worker::attach`]) with the token read from the file named by `KEEL_ATTACH_TOKEN`,
    /// by default `token` beside the socket.
    pub fn from_env() -> Result<Worker, Error> {
        let raw = match std::env::var("KEEL_FD") {
            Ok(raw) => raw,
            Err(_) => {
                return match std::env::var_os("KEEL_ATTACH").filter(|s| !s.is_empty()) {
                    Some(socket) => {
                        let socket = PathBuf::from(socket);
                        let token_file = std::env::var_os("KEEL_ATTACH_TOKEN")
                            .filter(|s| !s.is_empty())
                            .map(PathBuf::from)
                            .unwrap_or_else(|| default_token_file(&socket));
                        let token = std::fs::read_to_string(&token_file).map_err(|source| {
                            Error::AttachToken {
                                file: token_file,
                                source,
                            }
                        })?;
                        Worker::attach(&socket, &token)
                    }
                    None => Err(Error::NotStartedByKeel),
                };
            }
        };
        let fd: RawFd = raw
            .trim()
            .parse()
            .ok()
            .filter(|fd| *fd >= 0)
            .ok_or_else(|| Error::BadFd(raw.clone()))?;
        if FD_TAKEN.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyTaken);
        }
        // SAFETY: keel starts workers with this descriptor (one end of a socketpair) open and
        // owned by nobody else in the process; FD_TAKEN makes sure it is adopted only once, so
        // it is closed only once. This is the SDK's only `unsafe`.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if rustix::net::sockopt::socket_type(&fd) != Ok(rustix::net::SocketType::STREAM) {
            // Not ours to close: give it back untouched.
            let _ = fd.into_raw_fd();
            return Err(Error::BadFd(format!("{raw} (not a stream socket)")));
        }
        // Programs this worker starts must not hold the daemon's socket open after it exits.
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC).map_err(std::io::Error::from)?;
        Ok(Worker::from_stream(UnixStream::from(fd)))
    }

    /// Joins a pool that accepts attached workers (`attach = true`), for a worker keel did not
    /// start: connects to the pool's attach socket and presents `token` (the content of the
    /// `token` file beside the socket; surrounding white space is ignored). A token works
    /// once: the daemon writes a new one after each successful attach. Serving then goes on
    /// as for a worker keel started (HELLO, WELCOME, …). A wrong token, or a process whose
    /// uid is not the pool's, is refused: the daemon closes the connection, which `serve`
    /// reports as [`Error::NoWelcome`].
    pub fn attach(socket: &Path, token: &str) -> Result<Worker, Error> {
        let token = token.trim().to_ascii_lowercase();
        if token.len() != ATTACH_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::BadAttachToken);
        }
        let attach_error = |source| Error::Attach {
            socket: socket.to_path_buf(),
            source,
        };
        // std's connect sets SOCK_CLOEXEC: programs this worker starts do not inherit it.
        let mut stream = UnixStream::connect(socket).map_err(attach_error)?;
        // 77 bytes into a fresh socket's buffer: this never blocks for long.
        stream
            .write_all(format!("{ATTACH_PREAMBLE}{token}\n").as_bytes())
            .map_err(attach_error)?;
        Ok(Worker::from_stream(stream))
    }

    /// A worker on any connected stream socket: a per-pool attach socket, or a test harness
    /// playing the daemon over `UnixStream::pair()`.
    pub fn from_stream(socket: UnixStream) -> Worker {
        Worker::on(connection::Transport::Socket(socket))
    }

    /// A worker inside the daemon's own process, on one end of a `tokio::io::duplex` pipe
    /// whose other end the daemon reads (keel's adapter for HTTP workers). Frames cost no
    /// system call and no poller round; everything else is as over a socket.
    pub fn in_memory(pipe: tokio::io::DuplexStream) -> Worker {
        Worker::on(connection::Transport::Memory(pipe))
    }

    fn on(transport: connection::Transport) -> Worker {
        Worker {
            transport,
            capacity: None,
            options: connection::Options::default(),
        }
    }

    /// The connection itself, for a program that speaks the protocol on its own (with
    /// `keel-proto`) instead of through [`Worker::serve`]: test workers that misbehave on
    /// purpose, for one. `None` for an [`in_memory`](Worker::in_memory) worker.
    pub fn into_stream(self) -> Option<UnixStream> {
        match self.transport {
            connection::Transport::Socket(socket) => Some(socket),
            connection::Transport::Memory(_) => None,
        }
    }

    /// The process id HELLO announces (default: this process's). For a process that speaks
    /// the protocol on behalf of another one, e.g. an adapter in front of a plain HTTP server.
    pub fn announce_pid(mut self, pid: u32) -> Self {
        self.options.pid = Some(pid);
        self
    }

    /// Leaves STARTED to the handler: the SDK does not send it before calling the handler,
    /// and each request carries a [`StartSignal`] in its extensions instead. The handler
    /// sends it at the moment the request is handed on to something that may act on it (a
    /// proxy: right before writing the request to its upstream), so that until then a lost
    /// worker's request goes back to the queue whatever its method. A request whose handler
    /// never sends it counts as started once its response head is sent.
    pub fn started_by_handler(mut self) -> Self {
        self.options.started_by_handler = true;
        self
    }

    /// Answers the daemon's health PING only when `check` resolves to `true` (without it,
    /// PING is answered at once by the reading loop). The check runs in its own task; a
    /// check that fails or never ends leaves the PING unanswered, and the daemon kills the
    /// worker after its `ping_timeout`.
    pub fn health_check(mut self, check: HealthCheck) -> Self {
        self.options.health = Some(check);
        self
    }

    /// How many requests this worker runs at once (default: `KEEL_CAPACITY`, else 64).
    pub fn capacity(mut self, n: u32) -> Self {
        self.capacity = Some(n.max(1));
        self
    }

    /// Serves a plain async function until keel drains the worker or goes away. A request
    /// that asks to upgrade carries an [`upgrade::OnUpgrade`] (see [`upgrade`]).
    pub async fn serve<F, Fut, B>(self, handler: F) -> Result<(), Error>
    where
        F: Fn(Request<Body>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.run(handler::FnService::new(handler), handler::Upgrades::Native)
            .await
    }

    /// Serves a `tower::Service` until keel drains the worker or goes away. A request that
    /// asks to upgrade reaches the service through a hyper HTTP/1.1 connection (in memory),
    /// so it carries hyper's `OnUpgrade` as under `axum::serve`: axum's `WebSocketUpgrade`
    /// and `hyper::upgrade::on` work unchanged.
    pub async fn serve_service<S, B>(self, service: S) -> Result<(), Error>
    where
        S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.run(service, handler::Upgrades::ThroughHyper).await
    }

    async fn run<S, B>(mut self, service: S, upgrades: handler::Upgrades) -> Result<(), Error>
    where
        S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let capacity = match self.capacity {
            Some(n) => n,
            None => capacity_from_env()?,
        };
        self.options.upgrades = upgrades;
        connection::run(self.transport, capacity, self.options, service).await
    }
}

/// `token` in the attach socket's directory.
fn default_token_file(socket: &Path) -> PathBuf {
    socket.with_file_name("token")
}

fn capacity_from_env() -> Result<u32, Error> {
    match std::env::var("KEEL_CAPACITY") {
        Err(_) => Ok(DEFAULT_CAPACITY),
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or(Error::BadCapacity(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_defaults_to_token_beside_the_socket() {
        assert_eq!(
            default_token_file(Path::new("/run/keel/attach/demo/worker.sock")),
            Path::new("/run/keel/attach/demo/token")
        );
    }

    #[test]
    fn a_malformed_token_is_refused_before_connecting() {
        let socket = Path::new("/nonexistent/worker.sock");
        for token in ["", "abc", &"g".repeat(64), &"a".repeat(65)] {
            assert!(
                matches!(Worker::attach(socket, token), Err(Error::BadAttachToken)),
                "{token:?}"
            );
        }
        assert!(matches!(
            Worker::attach(socket, &"A".repeat(64)),
            Err(Error::Attach { .. })
        ));
    }
}

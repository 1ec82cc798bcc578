//! The admin API's sockets: the unix socket (whole API, keel's own user and root only) and
//! the optional TCP listener (`/metrics`, `/healthz` and the status page's HTML, the rest
//! with the bearer token). Also runs the queue-depth sampler of the status page while the
//! API serves.
//!
//! The socket file is created with mode 0600 in a directory created if missing; a socket
//! left by a keel that died is removed, one that still answers means another keel runs and
//! this one refuses to start. On exit the file is removed only if it is still ours (same
//! inode), so a second daemon's socket is never taken away.

use super::AdminContext;
use super::routes::{self, Access};
use crate::config::AdminConfig;
use anyhow::{Context as _, bail};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A client has this long to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest an admin connection lives (one request: keep-alive is off), so that idle or
/// slow clients cannot hold on to [`MAX_CONNECTIONS`].
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// Admin connections served at once on each socket; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// When the daemon stops: how long the admin connections still open may take to finish
/// (the answer to `POST /upgrade` or `/stop` is written while the daemon is already
/// stopping). A connection still open after that is cut when the process exits.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The running admin API; [`AdminServer::close`] stops it and removes the socket.
pub struct AdminServer {
    socket: PathBuf,
    socket_ino: u64,
    tcp: Option<std::net::SocketAddr>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    /// The connections being served (one request each).
    connections: TaskTracker,
    /// Bound, not yet served: the unix socket, the TCP listener, whether a token is set.
    pending: Option<(UnixListener, Option<TcpListener>, bool)>,
}

impl AdminServer {
    /// Binds the socket (and the TCP listener). Done before anything else of the daemon is
    /// built, so that a second keel given the same config stops here, before it touches
    /// the first one's attach sockets or starts workers.
    pub async fn bind(cfg: &AdminConfig) -> anyhow::Result<AdminServer> {
        // A successor started by an upgrade takes the socket over from the daemon it
        // replaces (which still answers on it until it exits).
        let take_over = std::env::var_os(crate::os::activation::READY_FD_ENV).is_some();
        let (unix, socket_ino) = bind_socket(&cfg.socket, take_over)?;
        let mut server = AdminServer {
            socket: cfg.socket.clone(),
            socket_ino,
            tcp: None,
            stop: CancellationToken::new(),
            tasks: JoinSet::new(),
            connections: TaskTracker::new(),
            pending: None,
        };
        let tcp = match cfg.listen {
            Some(addr) => {
                let tcp = bind_tcp(addr)
                    .with_context(|| format!("cannot listen on {addr} for the admin API"))?;
                server.tcp = Some(tcp.local_addr()?);
                Some(tcp)
            }
            None => None,
        };
        server.pending = Some((unix, tcp, cfg.token.is_some()));
        Ok(server)
    }

    /// Starts answering on the bound sockets.
    pub fn serve(&mut self, ctx: Arc<AdminContext>) {
        let Some((unix, tcp, token)) = self.pending.take() else {
            return;
        };
        tracing::info!("admin API on {}", self.socket.display());
        if let Some(tcp) = tcp {
            tracing::info!(
                "admin API on http://{} (/metrics, /healthz and the status page{})",
                self.tcp.map_or_else(String::new, |a| a.to_string()),
                if token {
                    "; the rest with the bearer token"
                } else {
                    " only"
                }
            );
            self.tasks.spawn(accept_loop(
                NetworkSocket(tcp),
                ctx.clone(),
                self.stop.clone(),
                self.connections.clone(),
            ));
        }
        self.tasks.spawn(super::history::sample_queues(
            ctx.clone(),
            self.stop.clone(),
        ));
        let local = LocalSocket {
            listener: unix,
            own_uid: rustix::process::geteuid().as_raw(),
        };
        self.tasks.spawn(accept_loop(
            local,
            ctx,
            self.stop.clone(),
            self.connections.clone(),
        ));
    }

    /// Where the TCP listener is bound, if there is one.
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp
    }

    /// Stops serving and removes the socket file.
    /// Connections already accepted get [`CLOSE_GRACE`] to finish their answers.
    pub async fn close(mut self) {
        self.stop.cancel();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.connections.close();
        if tokio::time::timeout(CLOSE_GRACE, self.connections.wait())
            .await
            .is_err()
        {
            tracing::debug!(
                "{} admin connection(s) still open after {CLOSE_GRACE:?}: cut",
                self.connections.len()
            );
        }
        self.remove_socket();
    }

    fn remove_socket(&self) {
        let ours = fs::symlink_metadata(&self.socket).is_ok_and(|m| m.ino() == self.socket_ino);
        if ours && let Err(e) = fs::remove_file(&self.socket) {
            tracing::warn!("cannot remove {}: {e}", self.socket.display());
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        // `close` was not reached (the daemon failed to start): still leave no socket.
        if !self.stop.is_cancelled() {
            self.stop.cancel();
            self.remove_socket();
        }
    }
}

/// Creates the socket: directory if missing, stale socket removed, mode 0600.
/// The TCP listener, with SO_REUSEPORT so that an upgrade's successor can bind it while the
/// daemon it replaces still holds it (both run as the same user; the kernel then shares the
/// connections until the old one closes).
fn bind_tcp(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

fn bind_socket(path: &Path, take_over: bool) -> anyhow::Result<(UnixListener, u64)> {
    if let Some(dir) = path.parent() {
        // Traversable (not listable) by others, as for the attach sockets beside it.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => bail!(
            "{} exists and is not a socket: remove it or set [admin] socket",
            path.display()
        ),
        Ok(_) if take_over => {
            tracing::info!(
                "taking {} over from the daemon this one replaces",
                path.display()
            );
            fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?;
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => bail!(
                "another keel is running: it answers on {} (stop it with `keel stop`, or give this one another [admin] socket)",
                path.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(
                    "removing {}: left by a keel that is no longer running",
                    path.display()
                );
                fs::remove_file(path)
                    .with_context(|| format!("cannot remove the stale {}", path.display()))?;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot check {}", path.display()));
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot check {}", path.display())),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("cannot create the admin socket {}", path.display()))?;
    // Connecting needs write permission: only keel's user (and root) from here on; the
    // accept loop also checks each peer's uid, which covers the instant before this call.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    let ino = fs::symlink_metadata(path)?.ino();
    listener.set_nonblocking(true)?;
    Ok((UnixListener::from_std(listener)?, ino))
}

/// What the two admin listeners differ in: how a connection is accepted, what it may do,
/// and who may connect at all. One accept loop ([`accept_loop`]) serves both.
trait AdminSocket: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// For log lines.
    const NAME: &'static str;
    const ACCESS: Access;
    fn accept(&self) -> impl std::future::Future<Output = io::Result<Self::Stream>> + Send;
    /// Whether this peer may use the API (a refusal is logged here).
    fn admits(&self, _stream: &Self::Stream) -> bool {
        true
    }
}

/// The unix socket: the operator's own uid (or root) only, checked by `SO_PEERCRED`.
struct LocalSocket {
    listener: UnixListener,
    own_uid: u32,
}

impl AdminSocket for LocalSocket {
    type Stream = tokio::net::UnixStream;
    const NAME: &'static str = "admin socket";
    const ACCESS: Access = Access::Local;

    async fn accept(&self) -> io::Result<Self::Stream> {
        self.listener.accept().await.map(|(s, _)| s)
    }

    fn admits(&self, stream: &Self::Stream) -> bool {
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == self.own_uid || cred.uid() == 0 => true,
            Ok(cred) => {
                tracing::warn!(
                    "admin socket: refused a client running as uid {}",
                    cred.uid()
                );
                false
            }
            Err(e) => {
                tracing::warn!("admin socket: cannot tell who connected ({e}): refused");
                false
            }
        }
    }
}

/// The optional TCP listener: anyone may connect; routes check the bearer token.
struct NetworkSocket(TcpListener);

impl AdminSocket for NetworkSocket {
    type Stream = tokio::net::TcpStream;
    const NAME: &'static str = "admin listener";
    const ACCESS: Access = Access::Network;

    async fn accept(&self) -> io::Result<Self::Stream> {
        self.0.accept().await.map(|(s, _)| s)
    }
}

/// Accepts admin connections until `stop`, at most [`MAX_CONNECTIONS`] at once.
async fn accept_loop<L: AdminSocket>(
    socket: L,
    ctx: Arc<AdminContext>,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Some(slot) = take_slot(&slots, &stop).await else {
            return;
        };
        let stream = tokio::select! {
            r = socket.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("{}: accept failed: {e}", L::NAME);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        if socket.admits(&stream) {
            connections.spawn(serve(stream, ctx.clone(), L::ACCESS, slot));
        }
    }
}

/// Waits for a free connection slot (`None`: the server is stopping).
async fn take_slot(
    slots: &Arc<Semaphore>,
    stop: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        permit = slots.clone().acquire_owned() => permit.ok(),
        _ = stop.cancelled() => None,
    }
}

/// Serves one admin connection: one request, then the connection closes. `_slot` is given
/// back when it ends.
async fn serve<S>(stream: S, ctx: Arc<AdminContext>, access: Access, _slot: OwnedSemaphorePermit)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| routes::handle(req, ctx.clone(), access));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_DEADLINE, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("admin connection ended: {e}"),
        Err(_) => tracing::debug!("admin connection closed after {CONNECTION_DEADLINE:?}"),
    }
}

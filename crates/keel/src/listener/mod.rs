//! Listening sockets and client connections: which sockets the bindings need, accepting,
//! TLS (`tls.rs`: SNI certificates, reload), HTTP/1.1 requests without a body served by
//! keel itself (`h1_front.rs`, `h1_writer.rs`), and everything else over HTTP/1.1 or
//! HTTP/2 with hyper (`http.rs`).
//!
//! Invariant: a connection task only parses HTTP and hands requests to
//! [`request_path::serve_request`]; it never blocks on a worker or a pool lock.

pub mod conn_clock;
pub mod framing;
pub mod h1_front;
mod h1_writer;
pub mod http;
pub mod tls;
mod wake_gate;

use crate::config::{AppServe, BindingHost, Config, Isolation, Scheme};
use crate::log::ErrorLog;
use crate::pool::Pool;
use crate::request_path::{AppTarget, Backend, ConnContext, SharedRoutes};
use crate::routing::{HostPattern, RouteEntry};
use crate::static_files::StaticRoot;
use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use conn_clock::ConnTimers;
pub use http::Protocols;
pub use tls::{CertStore, install_crypto_provider};

/// One listening socket and the routes of every binding it serves.
pub struct ListenerPlan {
    /// Where to bind; port 0 picks an ephemeral port.
    pub addr: SocketAddr,
    /// The bindings served here, as written in the config (for the log).
    pub bindings: Vec<String>,
    pub entries: Vec<RouteEntry<AppTarget>>,
    /// `Some` for https bindings: the handshake, with this socket's SNI certificates.
    pub tls: Option<TlsAcceptor>,
}

/// Groups bindings into sockets. All bindings on one port share one socket; when any of
/// them names a host (`+`, `*` or a name) that socket is the wildcard address, otherwise
/// there is one socket per IP literal. Port 0 is one group of its own per scheme, so every
/// http binding written with port 0 lands on the same ephemeral port, and every https one
/// on another (used by tests). Config load made every other port either http or https.
pub fn plan(
    config: &Config,
    pools: &HashMap<String, Arc<Pool>>,
    certs: &Arc<CertStore>,
) -> anyhow::Result<Vec<ListenerPlan>> {
    let mut by_port: BTreeMap<(u16, bool), Vec<(usize, &crate::config::Binding)>> = BTreeMap::new();
    for (site_idx, site) in config.sites.iter().enumerate() {
        for b in &site.bindings {
            let tls = b.scheme == Scheme::Https;
            by_port
                .entry((b.port, tls))
                .or_default()
                .push((site_idx, b));
        }
    }
    let mut plans: Vec<ListenerPlan> = Vec::new();
    for ((port, tls), bindings) in by_port {
        let wildcard = bindings
            .iter()
            .any(|(_, b)| !matches!(b.host, BindingHost::Ip(_)));
        let mut groups: BTreeMap<SocketAddr, Vec<(usize, &crate::config::Binding)>> =
            BTreeMap::new();
        for (site_idx, b) in bindings {
            let addr = match (&b.host, wildcard) {
                (BindingHost::Ip(ip), false) => SocketAddr::new(*ip, port),
                _ => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            };
            groups.entry(addr).or_default().push((site_idx, b));
        }
        for (addr, bindings) in groups {
            let tls = if tls {
                let hosts: Vec<(usize, &BindingHost)> =
                    bindings.iter().map(|(s, b)| (*s, &b.host)).collect();
                let resolver = tls::SniResolver::new(certs.clone(), &hosts);
                Some(tls::acceptor(resolver, config.listener.http2)?)
            } else {
                None
            };
            let mut entries = Vec::new();
            let mut names = Vec::new();
            for (site_idx, b) in bindings {
                let site = &config.sites[site_idx];
                names.push(format!("{} (site {})", b, site.name));
                let host = match &b.host {
                    BindingHost::Strong => HostPattern::Strong,
                    BindingHost::Weak => HostPattern::Weak,
                    BindingHost::Ip(ip) => HostPattern::Ip(*ip),
                    BindingHost::Name(n) => HostPattern::Name(n.clone()),
                };
                let site_name: Arc<str> = site.name.as_str().into();
                for app in &site.apps {
                    let backend = match &app.serve {
                        AppServe::Static(files) => Backend::Static(
                            StaticRoot::new(
                                &app.path,
                                &files.root,
                                files.list,
                                files.follow_symlinks,
                            )
                            .with_context(|| {
                                format!("site {}: static root {}", site.name, files.root.display())
                            })?,
                        ),
                        AppServe::Pool(name) => {
                            // IIS 5.0 isolation mode: every app is served by the one pool.
                            let pool = match config.isolation {
                                Isolation::Shared => pools.values().next(),
                                Isolation::Pool => pools.get(name),
                            };
                            let Some(pool) = pool else {
                                continue;
                            };
                            Backend::Pool(pool.clone())
                        }
                    };
                    entries.push(RouteEntry {
                        host: host.clone(),
                        path_prefix: app.path.clone(),
                        target: AppTarget {
                            site: site_name.clone(),
                            metrics: crate::metrics::RequestMetrics::new(
                                site_name.clone(),
                                match &backend {
                                    Backend::Pool(p) => p.settings.name.clone(),
                                    Backend::Static(_) => crate::metrics::none_label(),
                                },
                            ),
                            backend,
                            compression: site.compression,
                            max_body_bytes: site
                                .max_body_bytes
                                .unwrap_or(config.listener.request_limits.max_body_bytes),
                        },
                    });
                }
            }
            plans.push(ListenerPlan {
                addr,
                bindings: names,
                entries,
                tls,
            });
        }
    }
    Ok(plans)
}

/// Binds a listening socket: SO_REUSEADDR, a deep backlog, and dual-stack for the IPv6
/// wildcard (falling back to 0.0.0.0 where IPv6 is off).
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let try_bind = |addr: SocketAddr| -> std::io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    };
    match try_bind(addr) {
        Ok(l) => Ok(l),
        Err(e) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => {
            let v4 = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), addr.port());
            try_bind(v4).with_context(|| format!("cannot listen on {addr} ({e}) nor on {v4}"))
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on {addr}")),
    }
}

/// What every connection accepted on one socket shares. A reload replaces it (new
/// connections get the new one) and swaps `routes` in place (every request gets it).
pub struct Endpoint {
    pub routes: SharedRoutes,
    pub tls: Option<TlsAcceptor>,
    pub protocols: Arc<Protocols>,
    pub error_log: ErrorLog,
    pub access_log: Option<crate::log::AccessLog>,
    /// `[listener] max_connections`, for all sockets together.
    pub max_connections: usize,
    /// `[listener] entity_body`.
    pub entity_body: Duration,
    /// `[listener] header_wait`, `idle_connection` and `min_send_rate`.
    pub timers: ConnTimers,
    /// `[listener]` request limits (a site's own `max_body_bytes` is in its routes).
    pub request_limits: crate::config::RequestLimits,
}

/// Client connections open now, on every socket.
static OPEN_CONNECTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One open client connection, counted (against `max_connections`, and in the metrics)
/// until it is dropped. Held by the connection's [`ConnContext`], so an upgraded connection
/// stays counted after hyper has handed it over.
pub struct OpenConnection {
    _metric: crate::metrics::ConnectionGuard,
}

impl OpenConnection {
    /// Counts a new connection, unless `max` are open already.
    fn admit(max: usize) -> Option<OpenConnection> {
        use std::sync::atomic::Ordering;
        let mut open = OPEN_CONNECTIONS.load(Ordering::Relaxed);
        loop {
            if open >= max {
                return None;
            }
            match OPEN_CONNECTIONS.compare_exchange_weak(
                open,
                open + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(OpenConnection {
                        _metric: crate::metrics::connection_opened(),
                    });
                }
                Err(now) => open = now,
            }
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The daemon is stopping (or handing over to a successor): HTTP/1 answers carry
/// `Connection: close`, so clients leave kept-alive connections on their own.
static DRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The drain's second step: connections idle between requests are closed (hyper's
/// connections by graceful shutdown, the HTTP/1.1 front's by [`IDLE_CLOSE`]).
static CLOSING_IDLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Wakes the HTTP/1.1 front's connections waiting for a request when [`close_idle`] is called.
static IDLE_CLOSE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Starts the drain of kept-alive connections (see [`DRAINING`]).
pub fn begin_drain() {
    DRAINING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Closes connections idle between requests, after the drain's moment of
/// `Connection: close` answers (called just before hyper's graceful shutdown).
pub fn close_idle() {
    CLOSING_IDLE.store(true, std::sync::atomic::Ordering::Relaxed);
    IDLE_CLOSE.notify_waiters();
}

pub fn closing_idle() -> bool {
    CLOSING_IDLE.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn draining() -> bool {
    DRAINING.load(std::sync::atomic::Ordering::Relaxed)
}

/// A socket's endpoint, replaced whole by a reload.
pub type SharedEndpoint = Arc<parking_lot::RwLock<Arc<Endpoint>>>;

/// Accepts connections until `stop` fires; each connection is served on its own task and
/// watched by `graceful` (from accept on, so a connection still in its TLS handshake when
/// shutdown starts is waited for too, within [`tls::HANDSHAKE_TIMEOUT`]).
pub async fn accept_loop(
    listener: TcpListener,
    endpoint: SharedEndpoint,
    stop: CancellationToken,
    graceful: Arc<GracefulShutdown>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let endpoint = endpoint.read().clone();
        let Some(counted) = OpenConnection::admit(endpoint.max_connections) else {
            // HTTP.sys MaxConnections: closed at once, and said so.
            drop(stream);
            endpoint.error_log.write(&crate::log::ErrorRecord {
                time: std::time::SystemTime::now(),
                client: Some(canonical(peer)),
                server: Some(canonical(local)),
                version: None,
                method: None,
                uri: None,
                status: None,
                site: None,
                reason: crate::log::Reason::ConnLimit,
                queue: None,
            });
            continue;
        };
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let clock = conn_clock::ConnClock::new(endpoint.timers);
            let stream = conn_clock::ClockedIo::new(stream, clock.clone());
            let ctx = |tls: bool, server_name: Option<Arc<str>>| {
                Arc::new(ConnContext {
                    local: canonical(local),
                    peer: canonical(peer),
                    routes: endpoint.routes.clone(),
                    error_log: endpoint.error_log.clone(),
                    access_log: endpoint.access_log.clone(),
                    entity_body: endpoint.entity_body,
                    idle_connection: endpoint.timers.idle_connection,
                    open: counted,
                    request_limits: endpoint.request_limits,
                    tls,
                    server_name,
                })
            };
            let Some(acceptor) = &endpoint.tls else {
                let builder = endpoint.protocols.plain();
                let ctx = ctx(false, None);
                let Some(stream) = serve_front(stream, &ctx, &clock).await else {
                    return;
                };
                let (io, conflict) = framing::ScannedIo::new(stream);
                http::serve(builder, TokioIo::new(io), ctx, conflict, watcher, clock).await;
                return;
            };
            let stream =
                match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let session = stream.get_ref().1;
            let server_name = session.server_name().map(Arc::from);
            let alpn = session.alpn_protocol();
            let builder = endpoint.protocols.for_alpn(alpn);
            let http2 = alpn == Some(b"h2".as_slice());
            let ctx = ctx(true, server_name);
            if http2 {
                let (io, conflict) =
                    framing::ScannedIo::new(h1_front::Prepend::new(bytes::BytesMut::new(), stream));
                http::serve(builder, TokioIo::new(io), ctx, conflict, watcher, clock).await;
                return;
            }
            let Some(stream) = serve_front(stream, &ctx, &clock).await else {
                return;
            };
            let (io, conflict) = framing::ScannedIo::new(stream);
            http::serve(builder, TokioIo::new(io), ctx, conflict, watcher, clock).await;
        });
    }
}

/// An HTTP/1.1 connection's requests without a body (`h1_front.rs`): `None` when the
/// connection ended there, otherwise the socket for hyper, with the bytes read but not
/// served in front.
async fn serve_front<S>(
    mut stream: S,
    ctx: &Arc<ConnContext>,
    clock: &Arc<conn_clock::ConnClock>,
) -> Option<h1_front::Prepend<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + conn_clock::SendFile + Unpin,
{
    match h1_front::serve(&mut stream, ctx, clock).await {
        h1_front::Front::HandOff(read) => Some(h1_front::Prepend::new(read, stream)),
        h1_front::Front::Closed => None,
        h1_front::Front::Expired(reason) => {
            http::log_connection_end(ctx, None, reason);
            None
        }
    }
}

/// IPv4 clients on a dual-stack socket appear as `::ffff:a.b.c.d`; logs and workers see
/// them as plain IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

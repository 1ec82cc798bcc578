//! What the daemon runs for a config — pools with their managers, listening sockets with
//! their accept loops — and how a new config is applied to it without dropping a
//! connection or a queued request (`keel reload`, SIGHUP).
//!
//! [`Running::apply`] is used for the first config and for every reload: it prepares
//! everything that can fail (certificates, log files, new pools' directories and attach
//! sockets, route tables, new sockets) before it changes anything, so a reload either takes
//! effect whole or not at all. Then, in order:
//! - pools new or changed start (a changed pool is a new pool under the same name: its
//!   workers start while the old ones still serve; the old pool gets no new requests, keeps
//!   serving its queue, then drains — an overlapped recycle of the whole pool — and its
//!   cached responses are dropped);
//! - each socket's route table is swapped (the next request on any connection uses it) and
//!   its endpoint (TLS, protocols, logs) for the next connections;
//! - new sockets start accepting; removed ones stop accepting (their open connections go on).

use crate::config::{Config, PoolConfig};
use crate::listener::{self, CertStore, Endpoint, SharedEndpoint};
use crate::log::{AccessLog, ErrorLog};
use crate::os::cgroup::Cgroups;
use crate::pool::manager::Manager;
use crate::pool::{Pool, PoolSettings, attach};
use crate::request_path::SharedRoutes;
use crate::routing::RouteTable;
use anyhow::Context as _;
use hyper_util::server::graceful::GracefulShutdown;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Access-log lines that may wait for the writer before new ones are dropped (and counted).
const ACCESS_LOG_BUFFER_LINES: usize = 65_536;

/// A pool and what stops it.
struct RunningPool {
    pool: Arc<Pool>,
    config: PoolConfig,
    /// Its manager drains the workers and ends when this fires.
    stop: CancellationToken,
}

/// A listening socket and what it serves.
struct RunningSocket {
    bound: SocketAddr,
    /// A second descriptor of the listening socket, to hand to a successor (upgrade).
    fd: std::os::fd::OwnedFd,
    routes: SharedRoutes,
    endpoint: SharedEndpoint,
    stop: CancellationToken,
    bindings: Vec<String>,
}

/// What changed in a reload, for the log and the admin API.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub pools_started: Vec<String>,
    pub pools_replaced: Vec<String>,
    pub pools_removed: Vec<String>,
    pub sockets_opened: Vec<SocketAddr>,
    pub sockets_closed: Vec<SocketAddr>,
    pub certificates: usize,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        let addrs = |v: &[SocketAddr]| list(&v.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        write!(
            f,
            "pools started: {}; replaced: {}; removed: {}; sockets opened: {}; closed: {}; certificates: {}",
            list(&self.pools_started),
            list(&self.pools_replaced),
            list(&self.pools_removed),
            addrs(&self.sockets_opened),
            addrs(&self.sockets_closed),
            self.certificates
        )
    }
}

/// A planned socket: its address, and for port 0 whether it speaks TLS. A non-zero port
/// is http or https, never both (config check), and keeps its socket across a reload that
/// changes its scheme; http and https on port 0 are two sockets on two ephemeral ports.
type SocketKey = (SocketAddr, bool);

fn socket_key(plan: &listener::ListenerPlan) -> SocketKey {
    (plan.addr, plan.addr.port() == 0 && plan.tls.is_some())
}

pub struct Running {
    config: Option<Config>,
    pools: BTreeMap<String, RunningPool>,
    /// Keyed by the planned address (port 0 stays 0, so a reload keeps the same socket).
    sockets: BTreeMap<SocketKey, RunningSocket>,
    pub managers: JoinSet<()>,
    pub acceptors: JoinSet<()>,
    /// Parent of every pool's stop token (daemon stop).
    pub stop_workers: CancellationToken,
    /// Parent of every socket's stop token (daemon stop).
    pub stop_accepting: CancellationToken,
    pub graceful: Arc<GracefulShutdown>,
    error_log: Option<ErrorLog>,
    access_log: Option<AccessLog>,
    cgroups: Cgroups,
}

impl Running {
    pub fn new() -> Self {
        Running {
            config: None,
            pools: BTreeMap::new(),
            sockets: BTreeMap::new(),
            managers: JoinSet::new(),
            acceptors: JoinSet::new(),
            stop_workers: CancellationToken::new(),
            stop_accepting: CancellationToken::new(),
            graceful: Arc::new(GracefulShutdown::new()),
            error_log: None,
            access_log: None,
            cgroups: Cgroups::detect(),
        }
    }

    pub fn config(&self) -> Option<&Config> {
        self.config.as_ref()
    }

    /// The pools serving now, by name.
    pub fn pools(&self) -> HashMap<String, Arc<Pool>> {
        self.pools
            .iter()
            .map(|(n, p)| (n.clone(), p.pool.clone()))
            .collect()
    }

    /// The error log in use (stderr before the first config is applied).
    pub fn error_log(&self) -> ErrorLog {
        self.error_log.clone().unwrap_or_else(ErrorLog::to_stderr)
    }

    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.as_ref()
    }

    /// The addresses the sockets are bound to, with the bindings each serves.
    pub fn sockets(&self) -> Vec<(SocketAddr, Vec<String>)> {
        self.sockets
            .values()
            .map(|s| (s.bound, s.bindings.clone()))
            .collect()
    }

    /// Makes `config` the running one. On error nothing has changed.
    pub fn apply(&mut self, config: Config) -> anyhow::Result<Applied> {
        let old = self.config.as_ref();
        let mut applied = Applied::default();

        // 1. Everything that can fail, before anything changes.
        let certs = CertStore::load(&config)?;
        applied.certificates = config.sites.iter().filter(|s| s.tls.is_some()).count();
        let error_log = match (&self.error_log, &config.log.error_log) {
            (Some(current), path) if old.is_some_and(|c| c.log.error_log == *path) => {
                current.clone()
            }
            (_, Some(path)) => ErrorLog::to_file(path)
                .with_context(|| format!("cannot open the error log {}", path.display()))?,
            (_, None) => ErrorLog::to_stderr(),
        };
        let same_access_log = old.is_some_and(|c| {
            c.log.access_log == config.log.access_log
                && c.log.access_format == config.log.access_format
        });
        let access_log = if same_access_log {
            self.access_log.clone()
        } else {
            match &config.log.access_log {
                Some(path) => Some(
                    AccessLog::open(path, config.log.access_format, ACCESS_LOG_BUFFER_LINES)
                        .with_context(|| {
                            format!("cannot open the access log {}", path.display())
                        })?,
                ),
                None => None,
            }
        };

        // Pools: kept when their config is unchanged, else new.
        let mut next_pools: HashMap<String, Arc<Pool>> = HashMap::new();
        let mut fresh: Vec<(String, Arc<Pool>, Manager, CancellationToken)> = Vec::new();
        for (name, cfg) in &config.pools {
            let same_runtime =
                old.is_some_and(|c| c.daemon.runtime_dir == config.daemon.runtime_dir);
            if let Some(running) = self.pools.get(name)
                && running.config == *cfg
                && same_runtime
            {
                next_pools.insert(name.clone(), running.pool.clone());
                continue;
            }
            let stop = self.stop_workers.child_token();
            let (pool, manager) = self.prepare_pool(&config, name, cfg, &stop)?;
            next_pools.insert(name.clone(), pool.clone());
            fresh.push((name.clone(), pool, manager, stop));
        }

        // Sockets: the plan for the new config, new sockets bound now.
        let protocols = Arc::new(listener::Protocols::new(&config.listener));
        let plans = listener::plan(&config, &next_pools, &certs)?;
        let mut bound: Vec<(SocketKey, TcpListener)> = Vec::new();
        for plan in &plans {
            if !self.sockets.contains_key(&socket_key(plan)) {
                // A socket handed over by systemd or by the daemon this one replaces.
                let socket = match crate::os::activation::claim(plan.addr) {
                    Some(inherited) => {
                        inherited.set_nonblocking(true)?;
                        TcpListener::from_std(inherited)?
                    }
                    None => listener::bind(plan.addr)?,
                };
                bound.push((socket_key(plan), socket));
            }
        }

        // 2. Commit: nothing below fails. Old pools retire last, once no route leads to
        // them.
        let mut retiring = Vec::new();
        for (name, pool, manager, stop) in fresh {
            self.managers.spawn(manager.run(stop.clone()));
            let previous = self.pools.insert(
                name.clone(),
                RunningPool {
                    pool,
                    config: config.pools[&name].clone(),
                    stop,
                },
            );
            match previous {
                Some(old_pool) => {
                    applied.pools_replaced.push(name.clone());
                    old_pool.pool.set_successor(self.pools[&name].pool.clone());
                    retiring.push(old_pool);
                }
                None => applied.pools_started.push(name),
            }
        }
        let removed: Vec<String> = self
            .pools
            .keys()
            .filter(|n| !config.pools.contains_key(*n))
            .cloned()
            .collect();
        for name in removed {
            if let Some(old_pool) = self.pools.remove(&name) {
                applied.pools_removed.push(name);
                retiring.push(old_pool);
            }
        }

        let mut bound: HashMap<SocketKey, TcpListener> = bound.into_iter().collect();
        let mut planned = Vec::new();
        for plan in plans {
            let key = socket_key(&plan);
            planned.push(key);
            let table = Arc::new(RouteTable::new(plan.entries));
            let endpoint = |routes: SharedRoutes| {
                Arc::new(Endpoint {
                    routes,
                    tls: plan.tls.clone(),
                    protocols: protocols.clone(),
                    error_log: error_log.clone(),
                    access_log: access_log.clone(),
                    max_connections: config.listener.max_connections as usize,
                    entity_body: config.listener.entity_body,
                    timers: crate::listener::ConnTimers {
                        header_wait: config.listener.header_wait,
                        idle_connection: config.listener.idle_connection,
                        min_send_rate: config.listener.min_send_rate,
                    },
                    request_limits: config.listener.request_limits,
                })
            };
            match self.sockets.get_mut(&key) {
                Some(socket) => {
                    *socket.routes.write() = table;
                    *socket.endpoint.write() = endpoint(socket.routes.clone());
                    socket.bindings = plan.bindings;
                }
                None => {
                    let Some(listener) = bound.remove(&key) else {
                        continue;
                    };
                    let local = listener.local_addr().unwrap_or(plan.addr);
                    let Ok(fd) = std::os::fd::AsFd::as_fd(&listener).try_clone_to_owned() else {
                        tracing::error!("cannot duplicate the socket of {local}: not served");
                        continue;
                    };
                    tracing::info!("listening on {local} for {}", plan.bindings.join(", "));
                    let routes: SharedRoutes = Arc::new(parking_lot::RwLock::new(table));
                    let endpoint: SharedEndpoint =
                        Arc::new(parking_lot::RwLock::new(endpoint(routes.clone())));
                    let stop = self.stop_accepting.child_token();
                    self.acceptors.spawn(listener::accept_loop(
                        listener,
                        endpoint.clone(),
                        stop.clone(),
                        self.graceful.clone(),
                    ));
                    applied.sockets_opened.push(local);
                    self.sockets.insert(
                        key,
                        RunningSocket {
                            bound: local,
                            fd,
                            routes,
                            endpoint,
                            stop,
                            bindings: plan.bindings,
                        },
                    );
                }
            }
        }
        let closed: Vec<SocketKey> = self
            .sockets
            .keys()
            .filter(|k| !planned.contains(k))
            .copied()
            .collect();
        for key in closed {
            if let Some(socket) = self.sockets.remove(&key) {
                tracing::info!(
                    "no longer listening on {} (bindings removed: {})",
                    socket.bound,
                    socket.bindings.join(", ")
                );
                socket.stop.cancel();
                applied.sockets_closed.push(socket.bound);
            }
        }

        for old_pool in retiring {
            retire(old_pool);
        }

        // The cache: rebuilt only when its settings change (that drops its entries).
        if old.is_none_or(|c| c.cache != config.cache) {
            crate::cache::install(
                config
                    .cache
                    .enabled
                    .then(|| crate::cache::Cache::new((&config.cache).into())),
            );
        }
        self.error_log = Some(error_log);
        if !same_access_log && let Some(previous) = self.access_log.take() {
            // Connections accepted before keep a handle; the file is flushed and closed
            // when the writer's last handle goes.
            drop(previous);
        }
        self.access_log = access_log;
        if old.is_some_and(|c| c.daemon.threads != config.daemon.threads) {
            // The runtime is built once, before the first config is applied.
            tracing::warn!("daemon.threads changed: it takes effect when keel next starts");
        }
        self.config = Some(config);
        Ok(applied)
    }

    /// A pool for `cfg`, with its manager ready to run (not yet running).
    fn prepare_pool(
        &self,
        config: &Config,
        name: &str,
        cfg: &PoolConfig,
        stop: &CancellationToken,
    ) -> anyhow::Result<(Arc<Pool>, Manager)> {
        let mut settings = PoolSettings::from_config(cfg);
        let owner = cfg.identity.as_ref().map(|i| (i.uid, i.gid));
        if settings.spawn.http {
            let dir =
                crate::http_worker::endpoint::pool_dir(&config.daemon.runtime_dir, name, owner)
                    .with_context(|| {
                        format!(
                            "pool {name}: cannot create the directory of its HTTP workers' sockets"
                        )
                    })?;
            settings.http_dir = Some(dir);
        }
        let (pool, commands) = Pool::new(settings);
        let cgroup = if cfg.memory_max.is_some() || cfg.cpu_max.is_some() {
            match self.cgroups.pool(name) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    tracing::warn!(
                        "pool {name}: cannot create its cgroup ({e}): memory_max and cpu_max are not enforced"
                    );
                    None
                }
            }
        } else {
            None
        };
        let attach_rx = if cfg.attach {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let (_point, task) =
                attach::open(name, &config.daemon.runtime_dir, owner, tx, stop.clone())
                    .with_context(|| format!("pool {name}: cannot open its attach socket"))?;
            tokio::spawn(task);
            Some(rx)
        } else {
            None
        };
        Ok((
            pool.clone(),
            Manager::new(pool, commands, cgroup, attach_rx),
        ))
    }

    /// Closes this process's descriptors of the listening sockets (at stop, once the accept
    /// loops have ended): a port nobody serves must refuse connections, not queue them.
    pub fn close_listeners(&mut self) {
        self.sockets.clear();
    }

    /// The listening sockets, for a successor to inherit.
    pub fn listener_fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        self.sockets
            .values()
            .map(|s| std::os::fd::AsFd::as_fd(&s.fd))
            .collect()
    }

    /// Whether every `start = "always"` pool has a ready worker (an upgrade's successor
    /// reports ready only then).
    pub fn always_pools_ready(&self) -> bool {
        self.pools.values().all(|p| {
            p.config.start != crate::config::StartMode::Always || p.pool.ready_workers() > 0
        })
    }

    /// The longest `shutdown_timeout` of the pools, for the daemon's stop.
    pub fn longest_worker_shutdown(&self) -> Duration {
        self.pools
            .values()
            .map(|p| p.config.shutdown_timeout)
            .max()
            .unwrap_or_default()
    }
}

impl Default for Running {
    fn default() -> Self {
        Self::new()
    }
}

/// How long a retired pool keeps taking requests that routed to it just before the swap.
const RETIRE_SETTLE: Duration = Duration::from_millis(500);

/// A pool that no route leads to any more: it serves what is already queued (up to its
/// `queue_timeout`), then its workers drain and its manager ends. Its cached responses go,
/// and what it still answers is not stored: those answers come from the old code and config.
fn retire(old: RunningPool) {
    let RunningPool { pool, stop, .. } = old;
    // Before the entries are dropped, so that an answer completing meanwhile is either
    // refused by the cache or stored early enough for the drop to take it.
    pool.mark_retired();
    if let Some(cache) = crate::cache::installed() {
        cache.invalidate_pool(pool.name());
    }
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + pool.settings.queue_timeout;
        // A request that routed just before the swap may still be on its way in.
        tokio::time::sleep(RETIRE_SETTLE).await;
        while pool.queue_len() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(
            "pool {}: retired by a reload: draining its workers",
            pool.name()
        );
        stop.cancel();
    });
}

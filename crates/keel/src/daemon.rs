//! `keel serve`: builds pools, the admin API and listeners from a config, runs until
//! SIGTERM/SIGINT or `keel stop`, then shuts down gracefully.
//!
//! Shutdown order: stop accepting → let queued and in-flight requests finish on their
//! connections (bounded by `listener.shutdown_timeout`) → drain the workers (DRAIN, wait up
//! to each pool's `shutdown_timeout`, SIGKILL stragglers) → close the admin API and remove
//! its socket → exit 0.

use crate::admin::{AdminContext, AdminServer};
use crate::config::Config;
use crate::listener;
use crate::log::{AccessLog, ErrorLog};

/// Access-log lines that may wait for the writer before new ones are dropped (and counted).
const ACCESS_LOG_BUFFER_LINES: usize = 65_536;
use crate::os::cgroup::Cgroups;
use crate::pool::manager::Manager;
use crate::pool::{Pool, PoolSettings, attach};
use crate::routing::RouteTable;
use anyhow::Context as _;
use hyper_util::server::graceful::GracefulShutdown;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub async fn run(config: Config) -> anyhow::Result<()> {
    listener::install_crypto_provider();
    // The admin socket first: if another keel answers on it, stop before touching anything.
    let mut admin = AdminServer::bind(&config.admin).await?;
    let error_log = match &config.log.error_log {
        Some(path) => ErrorLog::to_file(path)
            .with_context(|| format!("cannot open the error log {}", path.display()))?,
        None => ErrorLog::to_stderr(),
    };
    let shutdown_timeout = config.listener.shutdown_timeout;
    let access_log = match &config.log.access_log {
        Some(path) => Some(
            AccessLog::open(path, config.log.access_format, ACCESS_LOG_BUFFER_LINES)
                .with_context(|| format!("cannot open the access log {}", path.display()))?,
        ),
        None => None,
    };
    // The response cache, shared by every connection (reached through `cache::installed`).
    crate::cache::install(
        config
            .cache
            .enabled
            .then(|| crate::cache::Cache::new((&config.cache).into())),
    );

    // Pools first (their queues exist before the first connection is accepted)…
    let stop_workers = CancellationToken::new();
    let mut managers = JoinSet::new();
    let mut pools: HashMap<String, Arc<Pool>> = HashMap::new();
    let cgroups = Cgroups::detect();
    for (name, cfg) in &config.pools {
        let (pool, commands) = Pool::new(PoolSettings::from_config(cfg));
        let cgroup = if cfg.memory_max.is_some() || cfg.cpu_max.is_some() {
            match cgroups.pool(name) {
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
            let owner = cfg.identity.as_ref().map(|i| (i.uid, i.gid));
            let (_point, task) = attach::open(
                name,
                &config.daemon.runtime_dir,
                owner,
                tx,
                stop_workers.clone(),
            )
            .with_context(|| format!("pool {name}: cannot open its attach socket"))?;
            tokio::spawn(task);
            Some(rx)
        } else {
            None
        };
        let manager = Manager::new(pool.clone(), commands, cgroup, attach_rx);
        managers.spawn(manager.run(stop_workers.clone()));
        pools.insert(name.clone(), pool);
    }

    // …then the admin API answers (so `keel status` works while the listeners come up)…
    crate::metrics::watch_pools(pools.values().cloned().collect());
    let admin_ctx = Arc::new(AdminContext::new(
        &config,
        pools.iter().map(|(n, p)| (n.clone(), p.clone())).collect(),
        error_log.clone(),
    ));
    admin.serve(admin_ctx.clone());

    // …then the listening sockets. `certs.reload_certificates()` re-reads every site's
    // certificate and key (for `keel reload`).
    let certs = listener::CertStore::load(&config)?;
    let protocols = Arc::new(listener::Protocols::new(&config.listener));
    let stop_accepting = CancellationToken::new();
    let graceful = Arc::new(GracefulShutdown::new());
    let mut acceptors = JoinSet::new();
    for plan in listener::plan(&config, &pools, &certs)? {
        let socket = listener::bind(plan.addr)?;
        let bound = socket.local_addr()?;
        tracing::info!("listening on {bound} for {}", plan.bindings.join(", "));
        admin_ctx.add_listener(bound, plan.bindings.clone());
        let endpoint = listener::Endpoint {
            routes: Arc::new(RouteTable::new(plan.entries)),
            tls: plan.tls,
            protocols: protocols.clone(),
            error_log: error_log.clone(),
            access_log: access_log.clone(),
        };
        acceptors.spawn(listener::accept_loop(
            socket,
            Arc::new(endpoint),
            stop_accepting.clone(),
            graceful.clone(),
        ));
    }
    tracing::info!("keel ready");

    wait_for_stop_signal(access_log.as_ref(), admin_ctx.stop_requested()).await?;
    admin_ctx.begin_stop();
    tracing::info!("stopping: no new connections; finishing queued and in-flight requests");
    let deadline = tokio::time::Instant::now() + shutdown_timeout;
    stop_accepting.cancel();
    while acceptors.join_next().await.is_some() {}
    // Every accept loop has ended, so this is the last reference.
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| unreachable!("accept loops ended"));
    if tokio::time::timeout_at(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {shutdown_timeout:?}: closing them");
    }

    stop_workers.cancel();
    // Managers drain their workers and kill those still alive after each pool's
    // shutdown_timeout; this bound covers the longest of them.
    let longest = config
        .pools
        .values()
        .map(|p| p.shutdown_timeout)
        .max()
        .unwrap_or_default();
    let all_exited = tokio::time::timeout(longest + Duration::from_secs(2), async {
        while managers.join_next().await.is_some() {}
    })
    .await;
    if all_exited.is_err() {
        tracing::warn!("workers still running at the end of shutdown");
    }
    if let Some(log) = access_log {
        log.flush_and_close();
    }
    // Last: `keel stop` waits for the socket to go.
    admin.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Waits for SIGTERM, SIGINT or `POST /stop` on the admin API; meanwhile SIGUSR1 reopens the
/// access log (logrotate).
async fn wait_for_stop_signal(
    access_log: Option<&AccessLog>,
    admin_stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot watch SIGUSR1")?;
    loop {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = admin_stop.cancelled() => tracing::info!("stop requested (admin API)"),
            _ = usr1.recv() => {
                if let Some(log) = access_log {
                    tracing::info!("SIGUSR1: reopening the access log");
                    log.reopen();
                }
                continue;
            }
        }
        return Ok(());
    }
}

//! `keel serve`: builds pools and listeners from a config, runs until SIGTERM/SIGINT, then
//! shuts down gracefully.
//!
//! Shutdown order (each step bounded by `listener.shutdown_timeout` in total): stop
//! accepting → let queued and in-flight requests finish on their connections → drain the
//! workers (DRAIN, wait, SIGKILL stragglers) → exit 0.

use crate::config::Config;
use crate::listener;
use crate::log::ErrorLog;
use crate::pool::{Pool, PoolSettings, supervisor};
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
    let error_log = match &config.log.error_log {
        Some(path) => ErrorLog::to_file(path)
            .with_context(|| format!("cannot open the error log {}", path.display()))?,
        None => ErrorLog::to_stderr(),
    };
    let shutdown_timeout = config.listener.shutdown_timeout;

    // Pools first (their queues exist before the first connection is accepted)…
    let stop_workers = CancellationToken::new();
    let mut supervisors = JoinSet::new();
    let mut pools: HashMap<String, Arc<Pool>> = HashMap::new();
    for (name, cfg) in &config.pools {
        let pool = Pool::new(PoolSettings::from_config(cfg));
        for slot in 0..pool.settings.workers {
            supervisors.spawn(supervisor::run_slot(
                pool.clone(),
                slot,
                stop_workers.clone(),
                shutdown_timeout,
            ));
        }
        pools.insert(name.clone(), pool);
    }

    // …then the listening sockets.
    let stop_accepting = CancellationToken::new();
    let graceful = Arc::new(GracefulShutdown::new());
    let mut acceptors = JoinSet::new();
    for plan in listener::plan(&config, &pools) {
        let socket = listener::bind(plan.addr)?;
        let bound = socket.local_addr()?;
        tracing::info!("listening on {bound} for {}", plan.bindings.join(", "));
        acceptors.spawn(listener::accept_loop(
            socket,
            Arc::new(RouteTable::new(plan.entries)),
            error_log.clone(),
            stop_accepting.clone(),
            graceful.clone(),
        ));
    }
    tracing::info!("keel ready");

    wait_for_stop_signal().await?;
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

    for pool in pools.values() {
        pool.begin_stop();
    }
    stop_workers.cancel();
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    // Supervisors kill their worker themselves when `left` runs out; the margin covers that.
    let all_exited = tokio::time::timeout(left + Duration::from_secs(2), async {
        while supervisors.join_next().await.is_some() {}
    })
    .await;
    if all_exited.is_err() {
        tracing::warn!("workers still running at the end of shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

//! `keel serve`: runs a config (`running.rs`) until SIGTERM/SIGINT, applies a new one on
//! SIGHUP (or a [`Control::Reload`] from the admin API), then shuts down gracefully.
//!
//! Shutdown order: stop accepting → let queued and in-flight requests finish on their
//! connections (bounded by `listener.shutdown_timeout`) → drain the workers (DRAIN, wait up
//! to each pool's `shutdown_timeout`, SIGKILL stragglers) → exit 0.

pub mod running;

use crate::config::{self, Config, ConfigSource};
use crate::listener;
use anyhow::Context as _;
pub use running::{Applied, Running};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};

/// What the admin API (or a test) asks of the running daemon.
pub enum Control {
    /// Re-read the config file and apply it; the answer says what changed, or why the new
    /// config was refused (the old one keeps running).
    Reload(oneshot::Sender<Result<Applied, String>>),
    /// Stop gracefully, as on SIGTERM.
    Stop,
}

/// A handle to send [`Control`]s to the daemon loop.
pub type ControlTx = mpsc::Sender<Control>;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let (_tx, rx) = mpsc::channel(8);
    run_with_control(config, rx).await
}

/// Runs `config`, taking [`Control`]s from `control` besides signals.
pub async fn run_with_control(
    config: Config,
    mut control: mpsc::Receiver<Control>,
) -> anyhow::Result<()> {
    listener::install_crypto_provider();
    let source = config.source.clone();
    let mut running = Running::new();
    // Pools first (their queues exist before the first connection is accepted), then the
    // listening sockets: both inside `apply`.
    running.apply(config)?;
    tracing::info!("keel ready");

    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot watch SIGUSR1")?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); break; }
            _ = int.recv() => { tracing::info!("SIGINT received"); break; }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                let _ = reload(&mut running, &source);
            }
            _ = usr1.recv() => {
                if let Some(log) = running.access_log() {
                    tracing::info!("SIGUSR1: reopening the access log");
                    log.reopen();
                }
            }
            Some(ctl) = control.recv() => match ctl {
                Control::Reload(reply) => {
                    tracing::info!("reload requested");
                    let _ = reply.send(reload(&mut running, &source));
                }
                Control::Stop => { tracing::info!("stop requested"); break; }
            },
        }
    }
    shutdown(running).await;
    Ok(())
}

/// Reads the config again and applies it; an invalid one changes nothing.
fn reload(running: &mut Running, source: &ConfigSource) -> Result<Applied, String> {
    let loaded = match source {
        ConfigSource::File(path) => config::load_file(path).map_err(|e| e.to_string()),
        ConfigSource::Embedded => Ok(config::embedded_default()),
    };
    let result = loaded.and_then(|config| running.apply(config).map_err(|e| format!("{e:#}")));
    match &result {
        Ok(applied) => tracing::info!("reload applied: {applied}"),
        Err(why) => tracing::error!("reload refused, the running config stays:\n{why}"),
    }
    result
}

async fn shutdown(mut running: Running) {
    let shutdown_timeout = running
        .config()
        .map_or(config::DEFAULT_SHUTDOWN_TIMEOUT, |c| {
            c.listener.shutdown_timeout
        });
    tracing::info!("stopping: no new connections; finishing queued and in-flight requests");
    let deadline = tokio::time::Instant::now() + shutdown_timeout;
    running.stop_accepting.cancel();
    while running.acceptors.join_next().await.is_some() {}
    // Every accept loop has ended, so this is the last reference.
    let graceful = std::mem::replace(
        &mut running.graceful,
        Arc::new(hyper_util::server::graceful::GracefulShutdown::new()),
    );
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| unreachable!("accept loops ended"));
    if tokio::time::timeout_at(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {shutdown_timeout:?}: closing them");
    }

    running.stop_workers.cancel();
    // Managers drain their workers and kill those still alive after each pool's
    // shutdown_timeout; this bound covers the longest of them.
    let longest = running.longest_worker_shutdown();
    let all_exited = tokio::time::timeout(longest + Duration::from_secs(2), async {
        while running.managers.join_next().await.is_some() {}
    })
    .await;
    if all_exited.is_err() {
        tracing::warn!("workers still running at the end of shutdown");
    }
    if let Some(log) = running.access_log().cloned() {
        log.flush_and_close();
    }
    tracing::info!("stopped");
}

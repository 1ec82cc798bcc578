//! `keel serve`: runs a config (`running.rs`) until SIGTERM/SIGINT, applies a new one on
//! SIGHUP (or a [`Control::Reload`] from the admin API), hands its sockets to a new
//! executable on SIGUSR2 (binary upgrade, `os/activation.rs`), then shuts down gracefully.
//! Tells systemd (`Type=notify`) READY, RELOADING, STOPPING and WATCHDOG.
//!
//! Shutdown order: stop accepting → let queued and in-flight requests finish on their
//! connections (bounded by `listener.shutdown_timeout`) → drain the workers (DRAIN, wait up
//! to each pool's `shutdown_timeout`, SIGKILL stragglers) → exit 0.

pub mod running;

use crate::admin::{AdminContext, AdminServer};
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
    /// Start the keel executable again with the listening sockets, and once it serves,
    /// stop gracefully (as on SIGUSR2). The answer: the successor's pid, or why not.
    Upgrade(oneshot::Sender<Result<u32, String>>),
}

/// How long open HTTP/1 connections are told `Connection: close` before idle ones are
/// closed at stop.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// How long a successor may take to report ready before the upgrade is called off.
const UPGRADE_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A handle to send [`Control`]s to the daemon loop.
pub type ControlTx = mpsc::Sender<Control>;

/// Raises keel's soft open-files limit to its hard one, and says when even that is short of
/// `max_connections` (a descriptor per client connection, and some for everything else).
fn raise_open_files(max_connections: u32) {
    const OTHER_FILES: u64 = 256;
    match crate::os::limits::raise_open_files() {
        Ok(l) => {
            if l.now != l.before {
                tracing::info!("open files limit raised from {} to {}", l.before, l.now);
            }
            if l.now < u64::from(max_connections) + OTHER_FILES {
                tracing::warn!(
                    "open files limit {} (the hard limit) is below max_connections = \
                     {max_connections} + {OTHER_FILES}: connections beyond it will be refused; \
                     raise it (systemd: LimitNOFILE=, shell: ulimit -Hn)",
                    l.now
                );
            }
        }
        Err(e) => tracing::warn!("cannot raise the open files limit: {e}"),
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    listener::install_crypto_provider();
    raise_open_files(config.listener.max_connections);
    // The admin socket first: if another keel answers on it, stop before touching anything.
    let mut admin = AdminServer::bind(&config.admin).await?;
    let (control_tx, mut control) = mpsc::channel(8);
    // First: sockets passed by systemd or by the daemon this one replaces.
    let inherited = crate::os::activation::adopt_inherited();
    if !inherited.is_empty() {
        tracing::info!("inherited listening sockets: {inherited:?}");
    }
    // The executable as it is named now; an upgrade starts whatever file is there then.
    let exe = std::env::current_exe().context("cannot find keel's own executable")?;
    let source = config.source.clone();
    let mut running = Running::new();
    // Pools first (their queues exist before the first connection is accepted), then the
    // listening sockets: both inside `apply`.
    let admin_config = config.clone();
    running.apply(config)?;
    crate::os::activation::close_unclaimed();
    // The admin API answers from here on (reload and upgrade go through `control`).
    crate::metrics::watch_pools(running.pools().into_values().collect());
    let admin_ctx = Arc::new(AdminContext::new(
        &admin_config,
        running.pools().into_iter().collect(),
        running.error_log(),
        control_tx,
    ));
    admin_ctx.update(
        &admin_config,
        running.pools().into_iter().collect(),
        running.sockets(),
        running.error_log(),
    );
    admin.serve(admin_ctx.clone());
    let admin_stop = admin_ctx.stop_requested();
    tracing::info!("keel ready (pid {})", std::process::id());
    if std::env::var_os(crate::os::activation::READY_FD_ENV).is_some() {
        // A successor: the old daemon stops accepting once this one's workers are up.
        wait_for_always_pools(&running).await;
        crate::os::activation::report_ready_to_predecessor();
        notify(&[
            sd_notify::NotifyState::MainPid(std::process::id()),
            sd_notify::NotifyState::Ready,
        ]);
    } else {
        notify(&[sd_notify::NotifyState::Ready]);
    }
    let watchdog = sd_notify::watchdog_enabled();
    let mut watchdog_tick =
        tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |d| {
            (d / 2).max(Duration::from_millis(100))
        }));

    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot watch SIGUSR1")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("cannot watch SIGUSR2")?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); break; }
            _ = int.recv() => { tracing::info!("SIGINT received"); break; }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                let _ = reload(&mut running, &source, &admin_ctx);
            }
            _ = admin_stop.cancelled() => { tracing::info!("stop requested (admin API)"); break; }
            _ = usr2.recv() => {
                tracing::info!("SIGUSR2: upgrading to {}", exe.display());
                if upgrade(&running, &exe).await.is_ok() {
                    break;
                }
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                notify(&[sd_notify::NotifyState::Watchdog]);
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
                    let _ = reply.send(reload(&mut running, &source, &admin_ctx));
                }
                Control::Stop => { tracing::info!("stop requested"); break; }
                Control::Upgrade(reply) => {
                    tracing::info!("upgrade requested: {}", exe.display());
                    let result = upgrade(&running, &exe).await;
                    let done = result.is_ok();
                    let _ = reply.send(result);
                    if done {
                        break;
                    }
                }
            },
        }
    }
    admin_ctx.begin_stop();
    shutdown(running).await;
    // Last: `keel stop` waits for the socket to go.
    admin.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Tells systemd (when it started keel with `Type=notify`); nothing otherwise.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

/// Waits (bounded) until every `start = "always"` pool has a ready worker.
async fn wait_for_always_pools(running: &Running) {
    let deadline = tokio::time::Instant::now() + UPGRADE_READY_TIMEOUT / 2;
    while !running.always_pools_ready() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the successor with the listening sockets and waits for it to serve. `Ok` (its
/// pid): this daemon must now stop accepting and drain. `Err`: it keeps serving.
async fn upgrade(running: &Running, exe: &std::path::Path) -> Result<u32, String> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let successor =
        crate::os::activation::spawn_successor(&exe.to_path_buf(), &args, &running.listener_fds())
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let pid = successor.child.id();
    tracing::info!("upgrade: successor {pid} started; waiting for it to serve");
    let waited = tokio::time::timeout(
        UPGRADE_READY_TIMEOUT,
        tokio::task::spawn_blocking(move || successor.wait_ready()),
    )
    .await;
    match waited {
        Ok(Ok((true, child))) => {
            // Reaped by nobody once this process exits: the successor is re-parented.
            drop(child);
            tracing::info!(
                "upgrade: successor {pid} serves; this daemon stops accepting and drains"
            );
            Ok(pid)
        }
        Ok(Ok((false, mut child))) => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            let why = format!("successor {pid} exited before serving ({status}); still serving");
            tracing::error!("upgrade failed: {why}");
            Err(why)
        }
        Ok(Err(e)) => Err(format!("waiting for the successor failed: {e}")),
        Err(_) => {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            let why = format!(
                "successor {pid} did not serve within {}s: killed; still serving",
                UPGRADE_READY_TIMEOUT.as_secs()
            );
            tracing::error!("upgrade failed: {why}");
            Err(why)
        }
    }
}

/// Reads the config again and applies it; an invalid one changes nothing.
fn reload(
    running: &mut Running,
    source: &ConfigSource,
    admin: &AdminContext,
) -> Result<Applied, String> {
    let now = sd_notify::NotifyState::monotonic_usec_now();
    let mut reloading = vec![sd_notify::NotifyState::Reloading];
    if let Ok(now) = now {
        reloading.push(now);
    }
    notify(&reloading);
    let loaded = match source {
        ConfigSource::File(path) => config::load_file(path).map_err(|e| e.to_string()),
        ConfigSource::Embedded => Ok(config::embedded_default()),
    };
    let result = loaded.and_then(|config| running.apply(config).map_err(|e| format!("{e:#}")));
    if result.is_ok()
        && let Some(config) = running.config()
    {
        crate::metrics::watch_pools(running.pools().into_values().collect());
        admin.update(
            config,
            running.pools().into_iter().collect(),
            running.sockets(),
            running.error_log(),
        );
    }
    match &result {
        Ok(applied) => tracing::info!("reload applied: {applied}"),
        Err(why) => tracing::error!("reload refused, the running config stays:\n{why}"),
    }
    notify(&[sd_notify::NotifyState::Ready]);
    result
}

async fn shutdown(mut running: Running) {
    let shutdown_timeout = running
        .config()
        .map_or(config::DEFAULT_SHUTDOWN_TIMEOUT, |c| {
            c.listener.shutdown_timeout
        });
    tracing::info!("stopping: no new connections; finishing queued and in-flight requests");
    notify(&[sd_notify::NotifyState::Stopping]);
    let deadline = tokio::time::Instant::now() + shutdown_timeout;
    running.stop_accepting.cancel();
    while running.acceptors.join_next().await.is_some() {}
    running.close_listeners();
    // Kept-alive HTTP/1 connections first get a moment in which every answer says
    // `Connection: close`: a busy client moves on after its next answer, instead of
    // sending a request just as keel closes its idle connection (a request it could not
    // know was lost). Then whatever is left is closed when idle, as usual.
    listener::begin_drain();
    if running.graceful.count() > 0 {
        tokio::time::sleep(DRAIN_GRACE.min(shutdown_timeout / 2)).await;
    }
    listener::close_idle();
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
}

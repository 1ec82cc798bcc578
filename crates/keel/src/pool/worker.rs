//! One worker's life, from its process start (or attach) to its exit: HELLO/WELCOME,
//! serving, health pings, drain, and how it ended. The manager starts one task per worker
//! with [`run`] and learns what happens through [`WorkerEvent`]s.
//!
//! Invariants:
//! - a worker reaches the manager as `Ready` only after a valid HELLO;
//! - before `Exited` is sent, the worker has left the pool's dispatch set and every open
//!   request has been told it is gone (so replays never land on it again);
//! - only a SIGKILL that keel did not send for a fault, or a health-check kill, counts as
//!   "killed from outside" for retries (DESIGN §3).

use super::Pool;
use super::attach::Attached;
use crate::dispatch::worker_conn::ReadEnd;
use crate::dispatch::{WorkerConn, WorkerLink};
use crate::http_worker::bridge::Bridge;
use crate::os::cgroup::WorkerCgroup;
use crate::os::spawn::{Spawned, kill_group, terminate};
use bytes::BytesMut;
use keel_proto::{Decoder, Frame, Welcome};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// How long a worker may stay alive after closing its socket before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Between looks at an HTTP worker's direct-lane requests while its drain finishes them.
const LANE_DRAIN_POLL: Duration = Duration::from_millis(10);
/// How long an exited worker's socket is read for the frames it wrote before exiting.
const EXIT_READ_GRACE: Duration = Duration::from_millis(500);

/// The timers a worker runs under (from the pool's config).
#[derive(Clone, Debug)]
pub struct WorkerTimers {
    pub startup_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub ping_interval: Option<Duration>,
    pub ping_timeout: Duration,
}

/// Where the worker came from.
pub enum Origin {
    Spawned(Spawned),
    /// An HTTP worker process and the adapter that speaks the protocol for it.
    Http(Spawned, Bridge),
    Attached(Attached),
}

impl Origin {
    pub fn pid(&self) -> u32 {
        match self {
            Origin::Spawned(s) | Origin::Http(s, _) => s.pid,
            Origin::Attached(a) => a.pid,
        }
    }
}

/// Aborts an HTTP worker's adapter task when the worker's life ends.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// What the manager tells a running worker.
#[derive(Debug)]
pub enum WorkerControl {
    /// Finish open requests, then exit (recycle, idle shutdown, daemon stop).
    Drain,
}

/// How a worker's life ended.
#[derive(Debug, Clone)]
pub enum Ending {
    /// SIGKILL from outside (operator, system OOM killer): its started idempotent requests
    /// may be retried; not a failure of the application.
    KilledFromOutside,
    /// Killed by keel's health check (no PONG, socket not read): counts as killed from
    /// outside for retries, and as a failure for rapid-fail.
    HealthCheck(String),
    /// Never said hello (exit, timeout, bad first frame): a startup failure.
    StartupFailure(String),
    /// Died of its own fault (crash, exit, broken protocol, cgroup OOM).
    Fault(String),
    /// Drained and exited when asked.
    Drained,
    /// An attached worker went away.
    Detached,
}

impl Ending {
    pub fn killed_from_outside(&self) -> bool {
        matches!(self, Ending::KilledFromOutside | Ending::HealthCheck(_))
    }

    /// Whether rapid-fail protection counts it.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Ending::HealthCheck(_) | Ending::StartupFailure(_) | Ending::Fault(_)
        )
    }
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::KilledFromOutside => f.write_str("killed from outside (SIGKILL)"),
            Ending::HealthCheck(why) => write!(f, "killed by the health check: {why}"),
            Ending::StartupFailure(why) => write!(f, "failed to start: {why}"),
            Ending::Fault(why) => write!(f, "crashed: {why}"),
            Ending::Drained => f.write_str("drained and exited"),
            Ending::Detached => f.write_str("attached worker disconnected"),
        }
    }
}

pub enum WorkerEvent {
    Ready { id: u64, conn: Arc<WorkerConn> },
    Exited { id: u64, ending: Ending },
}

/// Runs one worker to its end. `id` is the manager's handle for it.
pub async fn run(
    pool: Arc<Pool>,
    id: u64,
    origin: Origin,
    timers: WorkerTimers,
    cgroup: Option<WorkerCgroup>,
    events: mpsc::UnboundedSender<WorkerEvent>,
    mut control: mpsc::UnboundedReceiver<WorkerControl>,
) {
    let (spawned, socket, bridge, lane) = match origin {
        Origin::Spawned(mut s) => {
            let socket = s.socket.take().map(WorkerLink::Socket);
            (Ok(s), socket, None, None)
        }
        Origin::Http(s, bridge) => (
            Ok(s),
            Some(WorkerLink::Memory(bridge.pipe)),
            Some(bridge.task),
            Some(bridge.lane),
        ),
        Origin::Attached(a) => (Err(a), None, None, None),
    };
    let http = bridge.is_some();
    let _bridge = AbortOnDrop(bridge);
    let (pid, socket, mut child, mut buf) = match spawned {
        Ok(Spawned { mut child, pid, .. }) => {
            let Some(socket) = socket else {
                tracing::error!(pool = %pool.name(), pid, "worker started without a socket");
                kill_group(pid);
                let _ = child.wait().await;
                finish(
                    cgroup,
                    &events,
                    id,
                    Ending::StartupFailure("no socket".into()),
                );
                return;
            };
            if let Some(out) = child.stdout.take() {
                tokio::spawn(forward_lines(
                    out,
                    pool.settings.name.clone(),
                    pid,
                    "stdout",
                ));
            }
            if let Some(err) = child.stderr.take() {
                tokio::spawn(forward_lines(
                    err,
                    pool.settings.name.clone(),
                    pid,
                    "stderr",
                ));
            }
            (pid, socket, Some(child), BytesMut::with_capacity(64 * 1024))
        }
        Err(a) => (a.pid, WorkerLink::Socket(a.stream), None, a.already_read),
    };
    let attached = child.is_none();
    let mut exit = ExitWatch {
        fut: Box::pin(async move {
            match child.as_mut() {
                Some(c) => c.wait().await.ok(),
                None => std::future::pending().await,
            }
        }),
        done: None,
    };
    let (mut rd, wr) = socket.split();
    let decoder = Decoder::default();

    // Greeting: the worker speaks first.
    let hello = tokio::select! {
        h = read_hello(&mut rd, &decoder, &mut buf) => h,
        status = exit.wait() => Err(format!("exited before saying hello ({})", describe(status))),
        _ = tokio::time::sleep(timers.startup_timeout) => {
            Err(format!("no hello within startup_timeout ({})", humantime::format_duration(timers.startup_timeout)))
        }
        _ = control.recv() => Err("stopped before it said hello".into()),
    };
    let hello = match hello {
        Ok(h) => h,
        Err(why) => {
            let mut killed_by_us = false;
            let status = if attached {
                None
            } else {
                match tokio::time::timeout(Duration::from_millis(500), exit.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        killed_by_us = true;
                        kill_group(pid);
                        exit.wait().await
                    }
                }
            };
            let sigkill = rustix::process::Signal::KILL.as_raw();
            let ending = if !killed_by_us
                && status.and_then(|s| s.signal()) == Some(sigkill)
                && !cgroup.as_ref().is_some_and(|c| c.oom_killed())
            {
                // Killed from outside while starting: not the application's failure.
                Ending::KilledFromOutside
            } else if attached {
                Ending::StartupFailure(why)
            } else {
                Ending::StartupFailure(format!("{why}; {}", describe(status)))
            };
            finish(cgroup, &events, id, ending);
            return;
        }
    };

    let capacity = match pool.settings.capacity_cap {
        Some(cap) => hello.capacity.min(cap),
        None => hello.capacity,
    };
    let mut conn = WorkerConn::new(
        pid,
        Arc::downgrade(&pool),
        capacity as usize,
        keel_proto::DEFAULT_INITIAL_WINDOW,
        pool.settings.config.recycle.requests,
    );
    if let Some(lane) = lane {
        conn = conn.with_lane(lane);
    }
    let conn = Arc::new(conn);
    conn.send_control(&Frame::Welcome(Welcome {
        version: keel_proto::PROTOCOL_VERSION,
        max_payload: decoder.max_payload(),
        initial_window: keel_proto::DEFAULT_INITIAL_WINDOW,
        capacity,
        pool: pool.settings.name.as_bytes().to_vec().into(),
    }));
    let writer = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.run_writer(wr).await })
    };
    let _ = events.send(WorkerEvent::Ready {
        id,
        conn: conn.clone(),
    });

    let reader = conn.run_reader(rd, &decoder, buf);
    tokio::pin!(reader);
    let mut killed_for_fault: Option<String> = None;
    let mut health_kill: Option<String> = None;
    let mut drain_deadline: Option<Instant> = None;
    let mut last_ping = Instant::now();
    let mut nonce: u64 = 0;
    let mut check = tokio::time::interval(Duration::from_millis(250));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut control_open = true;

    let status: Option<ExitStatus> = loop {
        tokio::select! {
            end = &mut reader => {
                pool.worker_gone(&conn);
                match end {
                    ReadEnd::Protocol(why) => {
                        killed_for_fault = Some(format!("broke the protocol: {why}"));
                        kill_group(pid);
                    }
                    // An HTTP worker's adapter closes its end once a drain has finished
                    // every open request: now the process is asked to stop.
                    ReadEnd::Eof | ReadEnd::Io(_) if http => {
                        let deadline = drain_deadline.unwrap_or_else(|| Instant::now() + EXIT_GRACE);
                        if drain_deadline.is_some() {
                            // The pipe's requests are done; those of the direct lane may
                            // not be yet (unless the process is gone meanwhile).
                            let lane_done = async {
                                while conn.in_flight() > 0 {
                                    tokio::time::sleep(LANE_DRAIN_POLL).await;
                                }
                            };
                            let exited = tokio::select! {
                                _ = lane_done => false,
                                _ = tokio::time::sleep_until(deadline.into()) => false,
                                _ = exit.wait() => true,
                            };
                            if !exited {
                                terminate(pid);
                            }
                        } else {
                            killed_for_fault = Some("its HTTP adapter stopped".into());
                            kill_group(pid);
                        }
                        if tokio::time::timeout_at(deadline.into(), exit.wait()).await.is_err() {
                            tracing::warn!(pool = %pool.name(), pid, "HTTP worker still running {} after SIGTERM: killed",
                                humantime::format_duration(timers.shutdown_timeout));
                            killed_for_fault = Some("did not exit within shutdown_timeout after SIGTERM".into());
                            kill_group(pid);
                        }
                    }
                    // A spawned worker that closed its socket is usually exiting.
                    ReadEnd::Eof | ReadEnd::Io(_)
                        if !attached
                            && tokio::time::timeout(EXIT_GRACE, exit.wait()).await.is_err() =>
                    {
                        killed_for_fault = Some("closed its socket but did not exit".into());
                        kill_group(pid);
                    }
                    _ => {}
                }
                break if attached { None } else { exit.wait().await };
            }
            status = exit.wait() => {
                // The process is gone, but what it wrote just before exiting (a drained
                // worker's last responses) may still be in the socket: read to its EOF
                // before deciding which streams it left open. The kernel closed the
                // worker's end at exit, so EOF follows at once, unless a child of the
                // worker inherited the socket; hence the bound.
                if !http
                    && let Ok(ReadEnd::Protocol(why)) =
                        tokio::time::timeout(EXIT_READ_GRACE, &mut reader).await
                {
                    tracing::warn!(pool = %pool.name(), pid, "after its exit: broke the protocol: {why}");
                }
                break status;
            }
            ctl = control.recv(), if control_open => match ctl {
                Some(WorkerControl::Drain) => {
                    pool.worker_gone(&conn);
                    let ms = u32::try_from(timers.shutdown_timeout.as_millis()).unwrap_or(u32::MAX);
                    conn.send_control(&Frame::Drain { timeout_ms: ms });
                    drain_deadline = Some(Instant::now() + timers.shutdown_timeout);
                }
                None => control_open = false,
            },
            _ = check.tick() => {
                let now = Instant::now();
                if drain_deadline.is_some_and(|d| now >= d) {
                    tracing::warn!(pool = %pool.name(), pid, "worker still running {} after DRAIN: killed",
                        humantime::format_duration(timers.shutdown_timeout));
                    killed_for_fault = Some("did not exit within shutdown_timeout after DRAIN".into());
                    pool.worker_gone(&conn);
                    kill_group(pid);
                    drain_deadline = None;
                    if attached {
                        break None;
                    }
                    continue;
                }
                if let Some(interval) = timers.ping_interval {
                    if let Some(sent) = conn.ping_outstanding_since() {
                        if now.duration_since(sent) >= timers.ping_timeout && health_kill.is_none() {
                            let why = format!("no PONG within ping_timeout ({})",
                                humantime::format_duration(timers.ping_timeout));
                            tracing::warn!(pool = %pool.name(), pid, "worker unhealthy: {why}: killing it");
                            pool.worker_gone(&conn);
                            health_kill = Some(why);
                            kill_group(pid);
                            if attached {
                                break None;
                            }
                        }
                    } else if now.duration_since(last_ping) >= interval {
                        nonce += 1;
                        last_ping = now;
                        conn.send_ping(nonce);
                    }
                }
            }
        }
    };

    pool.worker_gone(&conn);
    if http {
        // What the application forked (gunicorn's workers) goes with it.
        kill_group(pid);
    }
    let ending = classify(
        status,
        killed_for_fault,
        health_kill,
        drain_deadline.is_some(),
        attached,
        cgroup.as_ref(),
    );
    let open = conn.in_flight();
    if open > 0 && matches!(ending, Ending::Drained) {
        // A drained worker should have finished every stream before exiting; those left
        // get 502 (a drained exit is not a kill from outside). Logged to find out why.
        let streams = conn.open_streams().join("; ");
        tracing::warn!(pool = %pool.name(), pid, open, streams, "drained worker exited with streams still open");
    }
    conn.fail_all(ending.killed_from_outside());
    writer.abort();
    finish(cgroup, &events, id, ending);
}

/// A worker process's exit, awaitable any number of times (the status is kept).
struct ExitWatch<F> {
    fut: std::pin::Pin<Box<F>>,
    done: Option<Option<ExitStatus>>,
}

impl<F: std::future::Future<Output = Option<ExitStatus>>> ExitWatch<F> {
    async fn wait(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.done {
            return status;
        }
        let status = self.fut.as_mut().await;
        self.done = Some(status);
        status
    }
}

fn finish(
    cgroup: Option<WorkerCgroup>,
    events: &mpsc::UnboundedSender<WorkerEvent>,
    id: u64,
    ending: Ending,
) {
    if let Some(cg) = cgroup {
        // rmdir may have to wait for the kernel to tear the cgroup down: not on a runtime thread.
        tokio::task::spawn_blocking(move || cg.remove());
    }
    let _ = events.send(WorkerEvent::Exited { id, ending });
}

fn classify(
    status: Option<ExitStatus>,
    killed_for_fault: Option<String>,
    health_kill: Option<String>,
    draining: bool,
    attached: bool,
    cgroup: Option<&WorkerCgroup>,
) -> Ending {
    if let Some(why) = killed_for_fault {
        return Ending::Fault(why);
    }
    if let Some(why) = health_kill {
        return Ending::HealthCheck(why);
    }
    if attached {
        return Ending::Detached;
    }
    match status {
        Some(s) if s.signal() == Some(rustix::process::Signal::KILL.as_raw()) => {
            if cgroup.is_some_and(|c| c.oom_killed()) {
                Ending::Fault("killed by the OOM killer: it went past memory_max".into())
            } else {
                Ending::KilledFromOutside
            }
        }
        // An HTTP worker stopped by the SIGTERM of its drain counts as drained.
        Some(s)
            if draining
                && (s.success() || s.signal() == Some(rustix::process::Signal::TERM.as_raw())) =>
        {
            Ending::Drained
        }
        other => Ending::Fault(describe(other)),
    }
}

pub fn describe(status: Option<ExitStatus>) -> String {
    match status {
        None => "exit status unknown".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (_, Some(sig)) => format!(
                "killed by signal {sig}{}",
                if s.core_dumped() {
                    " (core dumped)"
                } else {
                    ""
                }
            ),
            _ => format!("{s}"),
        },
    }
}

async fn read_hello(
    rd: &mut (impl AsyncRead + Unpin),
    decoder: &Decoder,
    buf: &mut BytesMut,
) -> Result<keel_proto::Hello, String> {
    loop {
        match decoder.decode(buf) {
            Ok(Some(Frame::Hello(h))) => {
                if h.version != keel_proto::PROTOCOL_VERSION {
                    return Err(format!(
                        "speaks protocol version {}, keel speaks {}",
                        h.version,
                        keel_proto::PROTOCOL_VERSION
                    ));
                }
                if h.capacity == 0 {
                    return Err("announced capacity 0".into());
                }
                return Ok(h);
            }
            Ok(Some(other)) => return Err(format!("sent {other:?} before HELLO")),
            Ok(None) => {}
            Err(e) => return Err(format!("sent a malformed first frame: {e}")),
        }
        match rd.read_buf(buf).await {
            Ok(0) => return Err("closed its socket before saying hello".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("socket error before hello: {e}")),
        }
    }
}

/// Longest worker output line kept whole; longer lines are cut (memory stays bounded
/// whatever a worker prints).
const MAX_LINE: usize = 16 * 1024;

/// Worker stdout/stderr lines go to the daemon's log, tagged with pool and pid.
async fn forward_lines(
    mut stream: impl AsyncRead + Unpin,
    pool: Arc<str>,
    pid: u32,
    which: &'static str,
) {
    let mut buf = BytesMut::with_capacity(4096);
    let emit = |line: &[u8]| {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        tracing::info!(target: "keel::worker", pool = %pool, pid, stream = which, "{line}");
    };
    loop {
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(nl + 1);
            emit(&line[..nl]);
        }
        if buf.len() >= MAX_LINE {
            emit(&buf.split_to(MAX_LINE));
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if !buf.is_empty() {
        emit(&buf);
    }
}

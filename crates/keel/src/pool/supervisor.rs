//! One worker slot of a pool: start a worker, greet it, serve it, notice its end, replace it.
//!
//! Invariants:
//! - a worker joins the pool's dispatch set only after a valid HELLO, and leaves it before
//!   its open requests are told it is gone, so a replayed request never lands on it again;
//! - how a worker ended decides what its started requests may do: only a SIGKILL the daemon
//!   did not send for a fault counts as "killed from outside" (DESIGN §3);
//! - workers are not replaced once the pool is stopping.
//!
//! Health pings, recycling, rapid-fail and idle shutdown belong to the pool manager; they
//! plug in here, around `serve_worker`.

use super::Pool;
use crate::dispatch::WorkerConn;
use crate::dispatch::worker_conn::ReadEnd;
use crate::os::spawn::{Spawned, kill_group, spawn_worker};
use bytes::BytesMut;
use keel_proto::{Decoder, Frame, Welcome};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

/// A worker that has not said HELLO by then is killed (IIS `startupTimeLimit`).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a worker may stay alive after closing its socket before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How a worker's life ended.
#[derive(Debug)]
enum Ending {
    /// SIGKILL from outside (operator, OOM killer): its started idempotent requests may be
    /// retried.
    KilledFromOutside,
    /// It died of its own fault (crash, exit, broken protocol): no started request is retried.
    Fault(String),
    /// It drained and exited when asked.
    Drained,
}

/// Keeps one worker running in `pool` until `stop` fires, then drains it within `grace`.
pub async fn run_slot(pool: Arc<Pool>, slot: usize, stop: CancellationToken, grace: Duration) {
    let mut backoff = BACKOFF_START;
    while !stop.is_cancelled() && !pool.is_stopping() {
        let spawned = match spawn_worker(&pool.settings.spawn) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(
                    pool = %pool.name(),
                    slot,
                    "cannot start worker {:?}: {e}",
                    pool.settings.spawn.argv
                );
                sleep_or_stop(&stop, &mut backoff).await;
                continue;
            }
        };
        let pid = spawned.pid;
        tracing::info!(pool = %pool.name(), slot, pid, "worker started");
        let (became_ready, ending) = serve_worker(&pool, spawned, &stop, grace).await;
        match &ending {
            Ending::Drained => {
                tracing::info!(pool = %pool.name(), pid, "worker drained and exited")
            }
            Ending::KilledFromOutside => {
                tracing::warn!(pool = %pool.name(), pid, "worker was killed (SIGKILL)")
            }
            Ending::Fault(why) => tracing::warn!(pool = %pool.name(), pid, "worker ended: {why}"),
        }
        if became_ready {
            backoff = BACKOFF_START;
        } else if !stop.is_cancelled() {
            // A worker that cannot even say hello is not restarted in a tight loop.
            sleep_or_stop(&stop, &mut backoff).await;
        }
    }
}

async fn sleep_or_stop(stop: &CancellationToken, backoff: &mut Duration) {
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = stop.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

/// Runs one worker process from HELLO to exit. Returns whether it ever became ready.
async fn serve_worker(
    pool: &Arc<Pool>,
    spawned: Spawned,
    stop: &CancellationToken,
    grace: Duration,
) -> (bool, Ending) {
    let Spawned {
        mut child,
        pid,
        socket,
    } = spawned;
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
    let (mut rd, wr) = socket.into_split();
    let decoder = Decoder::default();
    let mut buf = BytesMut::with_capacity(64 * 1024);

    // Greeting: the worker speaks first.
    let hello = tokio::select! {
        h = read_hello(&mut rd, &decoder, &mut buf) => h,
        status = child.wait() => Err(format!("exited before saying hello ({})", describe(status.ok()))),
        _ = tokio::time::sleep(STARTUP_TIMEOUT) => Err(format!("no hello within {STARTUP_TIMEOUT:?}")),
        _ = stop.cancelled() => Err("daemon stopping before the worker said hello".into()),
    };
    let hello = match hello {
        Ok(h) => h,
        Err(why) => {
            // A worker that closed its socket is usually exiting: say how it ended.
            let status = match tokio::time::timeout(Duration::from_millis(500), child.wait()).await
            {
                Ok(status) => status.ok(),
                Err(_) => {
                    kill_group(pid);
                    child.wait().await.ok()
                }
            };
            return (false, Ending::Fault(format!("{why}; {}", describe(status))));
        }
    };
    let capacity = match pool.settings.capacity_cap {
        Some(cap) => hello.capacity.min(cap),
        None => hello.capacity,
    };
    let conn = Arc::new(WorkerConn::new(
        pid,
        Arc::downgrade(pool),
        capacity as usize,
        keel_proto::DEFAULT_INITIAL_WINDOW,
    ));
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
    tracing::debug!(pool = %pool.name(), pid, capacity, "worker ready");
    pool.worker_ready(conn.clone());

    let mut killed_for_fault: Option<String> = None;
    let mut drained = false;
    let status = tokio::select! {
        end = conn.run_reader(rd, &decoder, buf) => {
            pool.worker_gone(&conn);
            match end {
                ReadEnd::Protocol(why) => {
                    killed_for_fault = Some(format!("broke the protocol: {why}"));
                    kill_group(pid);
                }
                ReadEnd::Eof | ReadEnd::Io(_) => {
                    if tokio::time::timeout(EXIT_GRACE, child.wait()).await.is_err() {
                        killed_for_fault = Some("closed its socket but did not exit".into());
                        kill_group(pid);
                    }
                }
            }
            child.wait().await.ok()
        }
        status = child.wait() => status.ok(),
        _ = stop.cancelled() => {
            drained = true;
            drain(pool, &conn, &mut child, pid, grace).await
        }
    };
    pool.worker_gone(&conn);
    let ending = classify(status, killed_for_fault, drained);
    conn.fail_all(matches!(ending, Ending::KilledFromOutside));
    writer.abort();
    (true, ending)
}

/// Shutdown: wait for the worker's open requests (bounded by `grace`), send DRAIN, and
/// kill it if it has not exited when the grace period ends.
async fn drain(
    pool: &Arc<Pool>,
    conn: &Arc<WorkerConn>,
    child: &mut tokio::process::Child,
    pid: u32,
    grace: Duration,
) -> Option<ExitStatus> {
    pool.worker_gone(conn);
    let deadline = tokio::time::Instant::now() + grace;
    while conn.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    conn.send_control(&Frame::Drain {
        timeout_ms: u32::try_from(left.as_millis()).unwrap_or(u32::MAX),
    });
    match tokio::time::timeout(left, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            tracing::warn!(pool = %pool.name(), pid, "worker still alive after the shutdown timeout: killed");
            kill_group(pid);
            child.wait().await.ok()
        }
    }
}

fn classify(status: Option<ExitStatus>, killed_for_fault: Option<String>, drained: bool) -> Ending {
    if let Some(why) = killed_for_fault {
        return Ending::Fault(why);
    }
    match status {
        Some(s) if s.signal() == Some(libc_sigkill()) => {
            if drained {
                Ending::Fault("killed after the shutdown timeout".into())
            } else {
                Ending::KilledFromOutside
            }
        }
        Some(s) if drained && s.success() => Ending::Drained,
        other => Ending::Fault(describe(other)),
    }
}

fn libc_sigkill() -> i32 {
    rustix::process::Signal::KILL.as_raw()
}

fn describe(status: Option<ExitStatus>) -> String {
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

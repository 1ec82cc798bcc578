//! Listening sockets handed over at start, and the hand-over itself.
//!
//! keel takes listening sockets by the systemd socket-activation convention (`LISTEN_FDS`,
//! `LISTEN_PID`, fds from 3): from systemd (a `.socket` unit), or from the keel daemon it
//! replaces in a binary upgrade ([`spawn_successor`]). Each inherited socket serves the
//! binding whose address it is bound to; sockets no binding wants are closed.
//!
//! An upgrade: the running daemon starts its own executable again (the file on disk now,
//! so a new build) with its listening sockets as fds 3.. and the write end of a pipe in
//! `KEEL_UPGRADE_READY_FD`. The successor applies the config with those sockets (no
//! moment without a listener: both processes share each socket, the kernel hands every
//! connection to one of them), starts its workers, then writes `ready` to the pipe; only
//! then does the old daemon stop accepting and drain.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Mutex;

/// The environment variable naming the successor's readiness pipe.
pub const READY_FD_ENV: &str = "KEEL_UPGRADE_READY_FD";

/// Sockets inherited at start and not yet claimed by a binding.
static INHERITED: Mutex<Vec<TcpListener>> = Mutex::new(Vec::new());

/// Takes the listening sockets passed to this process, once, at start (before any other
/// file is opened, so fds 3.. are still the inherited ones). Returns their addresses.
pub fn adopt_inherited() -> Vec<SocketAddr> {
    let fds: Vec<RawFd> = match sd_notify::listen_fds() {
        Ok(fds) => fds.collect(),
        Err(e) => {
            tracing::warn!("ignoring inherited sockets: {e}");
            return Vec::new();
        }
    };
    let mut adopted = Vec::new();
    let mut inherited = INHERITED.lock().unwrap_or_else(|p| p.into_inner());
    for fd in fds {
        // SAFETY: LISTEN_FDS/LISTEN_PID say these descriptors were passed to this very
        // process (the pid matched) for it to own; nothing else in keel has touched them
        // (this runs once, first thing), so each is adopted, and later closed, once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let is_tcp_listener = rustix::net::sockopt::socket_type(&owned)
            == Ok(rustix::net::SocketType::STREAM)
            && rustix::net::sockopt::socket_acceptconn(&owned) == Ok(true);
        let listener = TcpListener::from(owned);
        match (is_tcp_listener, listener.local_addr()) {
            (true, Ok(addr)) => {
                adopted.push(addr);
                inherited.push(listener);
            }
            _ => tracing::warn!("inherited fd {fd} is not a listening TCP socket: closed"),
        }
    }
    adopted
}

/// The inherited socket for a binding's planned address: the same address, or, for a
/// planned port 0, one on the same IP.
pub fn claim(planned: SocketAddr) -> Option<TcpListener> {
    let mut inherited = INHERITED.lock().unwrap_or_else(|p| p.into_inner());
    let matches = |l: &TcpListener| {
        let Ok(addr) = l.local_addr() else {
            return false;
        };
        let same_ip =
            addr.ip() == planned.ip() || addr.ip().to_canonical().eq(&planned.ip().to_canonical());
        same_ip && (addr.port() == planned.port() || planned.port() == 0)
    };
    let i = inherited.iter().position(matches)?;
    Some(inherited.swap_remove(i))
}

/// Closes the inherited sockets no binding claimed.
pub fn close_unclaimed() {
    let mut inherited = INHERITED.lock().unwrap_or_else(|p| p.into_inner());
    for l in inherited.drain(..) {
        if let Ok(addr) = l.local_addr() {
            tracing::warn!("inherited socket {addr} serves no binding: closed");
        }
    }
}

/// Tells the daemon being replaced that this one is serving (see the module doc).
pub fn report_ready_to_predecessor() {
    let Some(fd) = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
        .filter(|fd| *fd > 2)
    else {
        return;
    };
    // SAFETY: the predecessor put the write end of a pipe at this number for this process
    // alone, and nothing else adopts it (the variable is read once: the OnceLock below).
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if ONCE.set(()).is_err() {
        return;
    }
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if rustix::fs::fstat(&owned).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo
    }) {
        let mut pipe = std::fs::File::from(owned);
        let _ = pipe.write_all(b"ready\n");
    } else {
        // Not a pipe: not ours to close.
        std::mem::forget(owned);
    }
}

/// A successor started by [`spawn_successor`], not yet known to be serving.
pub struct Successor {
    pub child: std::process::Child,
    ready: std::fs::File,
}

impl Successor {
    /// Blocks until the successor reports ready (true) or goes away first (false).
    pub fn wait_ready(mut self) -> (bool, std::process::Child) {
        let mut buf = [0u8; 16];
        let ok = matches!(self.ready.read(&mut buf), Ok(n) if buf[..n].starts_with(b"ready"));
        (ok, self.child)
    }
}

/// Starts `exe` with `args` (a new `keel serve`) and `listeners` as fds 3.. by the
/// socket-activation convention. The successor outlives this process: no death signal,
/// and it inherits stdout/stderr (same log destination).
pub fn spawn_successor(
    exe: &PathBuf,
    args: &[std::ffi::OsString],
    listeners: &[BorrowedFd<'_>],
) -> io::Result<Successor> {
    use std::os::unix::process::CommandExt;
    let (ready_rd, ready_wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let n = listeners.len() as RawFd;
    let sources: Vec<RawFd> = listeners
        .iter()
        .map(|l| l.as_raw_fd())
        .chain(std::iter::once(ready_wr.as_raw_fd()))
        .collect();
    // Filled in the child before the moves; allocated here (no allocation after fork).
    let mut temps: Vec<RawFd> = vec![-1; sources.len()];
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(super::spawn::LISTEN_PID_SHIM)
        .arg(exe)
        .args(args)
        .env("LISTEN_FDS", n.to_string())
        .env("LISTEN_FDNAMES", vec!["keel"; listeners.len()].join(":"))
        .env(READY_FD_ENV, (3 + n).to_string())
        .env_remove("LISTEN_PID");
    // The successor starts with this daemon's raised open-files limit; its workers get the
    // one the first daemon was started with.
    if let Some(soft) = super::limits::workers_open_files() {
        cmd.env(super::limits::NOFILE_AT_START_ENV, soft.to_string());
    }
    // SAFETY: runs between fork and exec: raw syscalls through rustix on descriptors that
    // stay open in the parent for the duration of the spawn, no allocation.
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first (above any target number), then down to 3, 4, …: a
            // source that is already in the target range is never overwritten early.
            for (i, src) in sources.iter().enumerate() {
                let dup = rustix::io::fcntl_dupfd_cloexec(BorrowedFd::borrow_raw(*src), 1000)?;
                temps[i] = dup.as_raw_fd();
                std::mem::forget(dup);
            }
            for (i, tmp) in temps.iter().enumerate() {
                let target = 3 + i as RawFd;
                let mut slot = std::mem::ManuallyDrop::new(OwnedFd::from_raw_fd(target));
                rustix::io::dup2(BorrowedFd::borrow_raw(*tmp), &mut slot)?;
                rustix::io::fcntl_setfd(
                    BorrowedFd::borrow_raw(target),
                    rustix::io::FdFlags::empty(),
                )?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(ready_wr);
    Ok(Successor {
        child,
        ready: std::fs::File::from(ready_rd),
    })
}

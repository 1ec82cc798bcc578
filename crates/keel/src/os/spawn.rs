//! Starting a worker process: a `socketpair` whose child end is inherited (its number in
//! `KEEL_FD`), its own process group, and `PR_SET_PDEATHSIG` so it dies with the daemon.
//!
//! This is the one place that touches fork/exec. Invariant: the code run between fork and
//! exec (`pre_exec`) only makes raw, async-signal-safe syscalls through rustix — no
//! allocation, no locks, no logging.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;

/// What to run for one worker.
#[derive(Clone, Debug)]
pub struct SpawnSpec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
}

/// A started worker process and the daemon's end of its socket.
pub struct Spawned {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub socket: tokio::net::UnixStream,
}

/// Starts one worker. Must be called from a runtime worker thread that lives as long as the
/// daemon: the kernel sends PR_SET_PDEATHSIG when the *thread* that forked exits.
pub fn spawn_worker(spec: &SpawnSpec) -> io::Result<Spawned> {
    let program = spec
        .argv
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let (ours, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    let child_fd = theirs.as_raw_fd();

    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&spec.argv[1..])
        .envs(&spec.env)
        .env("KEEL_FD", child_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let daemon_pid = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes raw syscalls.
    unsafe {
        cmd.pre_exec(move || {
            // The worker must not outlive the daemon, even if the daemon is SIGKILLed.
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The daemon may have died between fork and prctl: then nothing would signal us.
            if rustix::process::getppid() != Some(daemon_pid) {
                return Err(io::Error::other("daemon exited during spawn"));
            }
            // Let the worker's end of the socketpair survive exec (it was created CLOEXEC so
            // that no other child inherits it).
            let fd = std::os::fd::BorrowedFd::borrow_raw(child_fd);
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    let pid = child.id().unwrap_or(0);
    let socket = into_tokio_stream(ours)?;
    Ok(Spawned { child, pid, socket })
}

fn into_tokio_stream(fd: OwnedFd) -> io::Result<tokio::net::UnixStream> {
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(std_stream)
}

/// Sends SIGKILL to a worker's whole process group (the worker and anything it forked).
pub fn kill_group(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        // ESRCH (already gone) is the expected race and is ignored.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

//! Starting a worker process: a `socketpair` whose child end is inherited (its number in
//! `KEEL_FD`), its own process group, its cgroup, resource limits and identity, and
//! `PR_SET_PDEATHSIG` so it dies with the daemon.
//!
//! This is the one place that touches fork/exec. Invariant: the code run between fork and
//! exec (`pre_exec`) only makes raw, async-signal-safe syscalls through rustix — no
//! allocation, no locks, no logging. Everything it needs (the cgroup's opened
//! `cgroup.procs` files, the limit values, the ids) is prepared before the fork.
//!
//! Errors in the child: whatever fails between fork and exec makes the child exit before
//! running the worker, and std hands the failing call's errno back to `spawn()`, so the
//! daemon logs "cannot start worker: <errno text>". Only the errno survives the trip (std
//! turns an error without one into `EINVAL`), so every error returned from `pre_exec` is
//! an OS error, which also keeps the child from allocating.
//!
//! Running as another user (`identity`): the worker inherits its stdout/stderr pipes, its
//! socket (`KEEL_FD`) and its cgroup membership as file descriptors or kernel state, so
//! those keep working after the switch. Two things are checked as the *new* user, though:
//! the program must be executable by it (exec happens after the switch), and std changes
//! into `cwd` before `pre_exec` (still as root), so a `cwd` the user cannot read or search
//! yields a worker that starts but fails on its first relative path. Make `cwd` and the
//! program accessible to that user.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use rustix::process::{Resource, Rlimit};

use super::cgroup::WorkerCgroup;

/// What to run for one worker.
#[derive(Clone, Debug, Default)]
pub struct SpawnSpec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Must be readable and searchable by `identity` when that is set (see the module doc).
    pub cwd: Option<PathBuf>,
    /// (uid, gid) to run the worker as, without supplementary groups; `None` keeps keel's
    /// own. Switching needs keel to run as root (or with CAP_SETUID/CAP_SETGID).
    pub identity: Option<(u32, u32)>,
    pub limits: RLimits,
    /// The cgroup the worker joins before exec (memory and CPU limits).
    pub cgroup: Option<WorkerCgroup>,
    /// For an HTTP worker: the listening socket it inherits as fd 3 by the systemd
    /// socket-activation convention (`LISTEN_FDS=1`, `LISTEN_PID`), instead of a
    /// socketpair in `KEEL_FD`. `None` with [`SpawnSpec::http`] set: the worker binds by itself.
    pub listener: Option<Arc<OwnedFd>>,
    /// An HTTP worker: no socketpair (keel reaches it over HTTP).
    pub http: bool,
}

/// Resource limits set on the worker, soft = hard = the value; `None` inherits keel's own.
/// They are set while still root, so they may be higher than keel's own limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RLimits {
    /// RLIMIT_NOFILE: open file descriptors.
    pub nofile: Option<u64>,
    /// RLIMIT_NPROC: processes/threads *of the worker's uid*, across every pool running as
    /// that uid (the kernel counts per user), and not enforced for root.
    pub nproc: Option<u64>,
    /// RLIMIT_CORE: core dump size in bytes (0 = no core dumps).
    pub core: Option<u64>,
}

impl RLimits {
    /// The limits as (resource, value) pairs in a fixed array, so `pre_exec` can walk them
    /// without allocating.
    fn entries(&self) -> [(Resource, Option<u64>); 3] {
        [
            (Resource::Nofile, self.nofile),
            (Resource::Nproc, self.nproc),
            (Resource::Core, self.core),
        ]
    }
}

/// A started worker process and the daemon's end of its socket.
pub struct Spawned {
    pub child: tokio::process::Child,
    pub pid: u32,
    /// The daemon's end of the worker's socketpair (`None` for an HTTP worker).
    pub socket: Option<tokio::net::UnixStream>,
}

/// The hidden `keel` argument that runs [`exec_with_listen_pid`]: `keel <this> PROGRAM ARGS…`.
pub const LISTEN_PID_SHIM: &str = "__exec-with-listen-pid";

/// The first fd of socket activation (`SD_LISTEN_FDS_START`).
const LISTEN_FD: i32 = 3;

/// Runs in the freshly started worker process (keel's own binary, run through the shim):
/// sets `LISTEN_PID` to this process's id, which only the process itself knows and which
/// socket-activated servers (gunicorn, systemd's sd_listen_fds) check, then executes the
/// real program in place (same pid, fd 3 still open). Returns only on failure.
pub fn exec_with_listen_pid(argv: &[std::ffi::OsString]) -> io::Error {
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = argv.split_first() else {
        return io::Error::new(io::ErrorKind::InvalidInput, "no program to run");
    };
    std::process::Command::new(program)
        .args(args)
        .env("LISTEN_PID", std::process::id().to_string())
        .exec()
}

/// What the service manager (or an upgrading keel) said to the daemon is not for workers.
fn remove_daemon_env(cmd: &mut tokio::process::Command) {
    for name in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        super::activation::READY_FD_ENV,
        super::limits::NOFILE_AT_START_ENV,
    ] {
        cmd.env_remove(name);
    }
}

/// keel's own executable, for the shim (resolved once: later the file may be replaced).
fn own_executable() -> io::Result<PathBuf> {
    static EXE: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    EXE.get_or_init(|| std::env::current_exe().map_err(|e| e.to_string()))
        .clone()
        .map_err(io::Error::other)
}

/// Starts one worker. Must be called from a runtime worker thread that lives as long as the
/// daemon: the kernel sends PR_SET_PDEATHSIG when the *thread* that forked exits.
pub fn spawn_worker(spec: &SpawnSpec) -> io::Result<Spawned> {
    let program = spec
        .argv
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let identity = match spec.identity {
        // -1 means "unchanged" to setuid/setgid: refuse it rather than silently stay root.
        Some((uid, gid)) if uid == u32::MAX || gid == u32::MAX => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "uid/gid 4294967295 (-1) is not a user",
            ));
        }
        Some((uid, gid)) => Some((
            rustix::process::Uid::from_raw(uid),
            rustix::process::Gid::from_raw(gid),
        )),
        None => None,
    };
    // What the worker inherits: its end of a socketpair (keel's protocol), or an HTTP
    // worker's listening socket (moved to fd 3 in the child), or nothing.
    let (ours, theirs) = if spec.http {
        (None, None)
    } else {
        let (ours, theirs) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )?;
        (Some(ours), Some(theirs))
    };
    let child_fd = theirs.as_ref().map(|fd| fd.as_raw_fd());
    let listener = spec.listener.clone();
    let listen_fd = listener.as_ref().map(|fd| fd.as_raw_fd());

    let mut cmd = match listen_fd {
        // LISTEN_PID must be the worker's own pid, known only after the fork: keel's own
        // binary sets it and executes the program in place.
        Some(_) => {
            let mut cmd = tokio::process::Command::new(own_executable()?);
            remove_daemon_env(&mut cmd);
            cmd.arg(LISTEN_PID_SHIM).arg(program);
            cmd.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "keel");
            cmd
        }
        None => {
            let mut cmd = tokio::process::Command::new(program);
            remove_daemon_env(&mut cmd);
            cmd
        }
    };
    cmd.args(&spec.argv[1..]).envs(&spec.env);
    if let Some(fd) = child_fd {
        cmd.env("KEEL_FD", fd.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }

    // Prepared before the fork: the closure only reads these.
    let daemon_pid = rustix::process::getpid();
    let limits = spec.limits.entries();
    // A pool without `limits.nofile`: the worker gets the open-files limit keel was started
    // with, not the one keel raised for itself (`limits.rs`).
    let start_nofile = spec
        .limits
        .nofile
        .is_none()
        .then(super::limits::workers_open_files)
        .flatten()
        .map(|soft| Rlimit {
            current: Some(soft),
            maximum: rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum,
        });
    // The cgroup's `cgroup.procs` files, opened (CLOEXEC) by `PoolCgroup::worker`. The
    // closure keeps the `WorkerCgroup` clone alive so the raw numbers stay valid until the
    // fork; the worker does not inherit them.
    let cgroup = spec.cgroup.clone();

    // SAFETY: the closure runs in the forked child before exec; it makes raw syscalls only
    // (rustix, no libc wrappers that take locks), reads values prepared above, and never
    // allocates: the errors it returns are raw OS errors.
    unsafe {
        cmd.pre_exec(move || {
            // 1. Join the worker's cgroup(s) first, while still root (the cgroup files are
            //    root's) and before anything the worker allocates can be charged elsewhere.
            //    Writing "0" to `cgroup.procs` moves the writing process. Failure (EACCES,
            //    ENOENT if the cgroup was removed, EBUSY on v2 if it is not a leaf) stops
            //    the spawn: a worker must not run outside its memory/CPU limit.
            if let Some(cgroup) = &cgroup {
                for fd in cgroup.procs_fds() {
                    rustix::io::write(fd, b"0")?;
                }
            }
            // 2. Resource limits, soft = hard, while still privileged: root may raise the
            //    hard limit above keel's own (after setuid it could only lower it).
            //    EPERM: above a system ceiling (e.g. RLIMIT_NOFILE > fs.nr_open) or keel is
            //    not root; EINVAL: a value the kernel rejects.
            for (resource, value) in limits {
                if let Some(value) = value {
                    let limit = Rlimit {
                        current: Some(value),
                        maximum: Some(value),
                    };
                    rustix::process::setrlimit(resource, limit)?;
                }
            }
            // Lowering a soft limit is always allowed.
            if let Some(limit) = start_nofile {
                rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
            }
            if let Some((uid, gid)) = identity {
                // 3. Drop root's supplementary groups: otherwise the worker keeps group 0
                //    (and any other group of the daemon) after setuid. EPERM: keel lacks
                //    CAP_SETGID (not root). The rustix `set_thread_*` calls act on the
                //    calling thread only, which is the whole process here: the forked
                //    child has exactly one thread.
                rustix::thread::set_thread_groups(&[])?;
                // 4. The gid before the uid: after setuid we would no longer be allowed to
                //    change it. EPERM: not root. EINVAL: gid not valid in this namespace.
                rustix::thread::set_thread_gid(gid)?;
                // 5. Real, effective and saved uid (root sets all three), so the worker
                //    cannot switch back. EAGAIN: RLIMIT_NPROC for that uid already
                //    reached; EPERM: not root; EINVAL: uid not valid in this namespace.
                rustix::thread::set_thread_uid(uid)?;
            }
            // 6. The worker must not outlive the daemon, even if the daemon is SIGKILLed.
            //    After the credential change: the kernel clears the death signal whenever
            //    the euid/egid changes (commit_creds), so setting it earlier would be lost.
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The daemon may have died between fork and prctl: then nothing would signal us.
            // ESRCH is what the spawn reports then (the daemon is gone and will not log it).
            if rustix::process::getppid() != Some(daemon_pid) {
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::SRCH.raw_os_error(),
                ));
            }
            // 7. Let the worker's end of the socketpair survive exec (it was created CLOEXEC
            //    so that no other child inherits it). EBADF would mean a bug in keel.
            if let Some(fd) = child_fd {
                let fd = BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
            // 7'. An HTTP worker's listening socket becomes fd 3, inheritable (dup2 clears
            //    CLOEXEC, but not when the socket already is fd 3, hence the fcntl).
            if let Some(fd) = listen_fd {
                let mut three = std::mem::ManuallyDrop::new(OwnedFd::from_raw_fd(LISTEN_FD));
                rustix::io::dup2(BorrowedFd::borrow_raw(fd), &mut three)?;
                rustix::io::fcntl_setfd(
                    BorrowedFd::borrow_raw(LISTEN_FD),
                    rustix::io::FdFlags::empty(),
                )?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    drop(listener);
    let pid = child.id().unwrap_or(0);
    let socket = ours.map(into_tokio_stream).transpose()?;
    Ok(Spawned { child, pid, socket })
}

fn into_tokio_stream(fd: OwnedFd) -> io::Result<tokio::net::UnixStream> {
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(std_stream)
}

/// Sends SIGTERM to a worker process (not its group: the application stops its own
/// children, as gunicorn's master does).
pub fn terminate(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// Sends SIGKILL to a worker's whole process group (the worker and anything it forked).
pub fn kill_group(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        // ESRCH (already gone) is the expected race and is ignored.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

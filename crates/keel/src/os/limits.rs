//! keel's own open-files limit. The daemon holds a descriptor per client connection (and per
//! connection to an HTTP worker, per open static file, per log), so a soft `RLIMIT_NOFILE` of
//! 1024 (the usual default of shells and service managers) would refuse connections far
//! below `max_connections`. At start the soft limit is raised to the hard one, as Go's
//! runtime and HAProxy do; workers keep the limit keel was started with (select(2)-based
//! programs expect descriptors below 1024), unless their pool sets `limits.nofile`.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use std::sync::OnceLock;

/// Tells a successor (binary upgrade) the soft limit the first daemon was started with:
/// it starts with the raised one.
pub const NOFILE_AT_START_ENV: &str = "KEEL_NOFILE_AT_START";

/// The soft limit keel was started with, when it was raised since.
static WORKERS_NOFILE: OnceLock<u64> = OnceLock::new();

/// What [`raise_open_files`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit before (as started, or as the first daemon was started).
    pub before: u64,
    /// The soft limit now (`u64::MAX`: unlimited).
    pub now: u64,
}

/// Raises the soft open-files limit to the hard one. Fails (EPERM, EINVAL) only if the kernel
/// refuses a value it reported itself; then keel runs with the limit it has.
pub fn raise_open_files() -> std::io::Result<OpenFiles> {
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    let before = std::env::var(NOFILE_AT_START_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(current);
    if limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if before != now {
        let _ = WORKERS_NOFILE.set(before);
    }
    Ok(OpenFiles { before, now })
}

/// The soft open-files limit a worker gets when its pool sets none: keel's own at start, if
/// keel raised its own since (`None`: the worker inherits keel's as it is).
pub fn workers_open_files() -> Option<u64> {
    WORKERS_NOFILE.get().copied()
}

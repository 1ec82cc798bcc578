//! Memory and CPU limits for workers through cgroups: one cgroup per pool, one child per
//! worker, joined by the worker between fork and exec (`spawn.rs`).
//!
//! Layout: `keel/<daemon-pid>/<pool>/worker-<id>` under the root of each v1 hierarchy
//! (`memory`, `cpu`), or under keel's own cgroup on v2, where keel needs a delegated
//! subtree (systemd `Delegate=yes`, or running in the root cgroup). On v2 a cgroup with
//! processes cannot hand controllers to its children ("no internal processes"), so when
//! keel's own cgroup is not the root, keel moves itself into the leaf `keel-daemon` next to
//! `keel/` (systemd's documented way for delegated services).
//!
//! Everything is optional: `Cgroups::detect` picks what the machine offers, logs one line
//! saying what it will use, and without a usable controller the limits are simply not
//! enforced (`PoolCgroup::worker` still succeeds). Directories are removed when workers
//! and pools end; at start, `keel/<pid>` directories of dead daemons are removed.
//!
//! All of this runs in the daemon, never between fork and exec: it may allocate and block
//! briefly on cgroupfs (memory-backed, no disk I/O).

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The CFS period written with every CPU limit: 100 ms, the kernel's default, so a quota
/// of `cpu_max × 100 000 µs` per period allows `cpu_max` CPUs.
const CPU_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota the kernel accepts (1 ms).
const CPU_MIN_QUOTA_US: u64 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// One hierarchy keel uses: a v1 mount (memory, cpu, or both co-mounted) or the v2 tree.
#[derive(Clone, Debug)]
struct Hierarchy {
    version: Version,
    memory: bool,
    cpu: bool,
    /// `…/keel/<daemon-pid>`: everything keel creates in this hierarchy lives below it.
    base: PathBuf,
}

/// The cgroup controllers keel uses, detected once at start.
#[derive(Clone, Debug)]
pub struct Cgroups {
    hierarchies: Vec<Hierarchy>,
    description: String,
}

/// The cgroup(s) of one pool: `keel/<daemon-pid>/<pool>` in each hierarchy.
#[derive(Debug)]
pub struct PoolCgroup {
    dirs: Vec<(Hierarchy, PathBuf)>,
}

/// The cgroup(s) of one worker, with its limits written and each hierarchy's
/// `cgroup.procs` open for writing (for `pre_exec`). Cloning shares the open files.
#[derive(Clone, Debug, Default)]
pub struct WorkerCgroup {
    dirs: Arc<[WorkerDir]>,
    procs: Arc<[OwnedFd]>,
}

#[derive(Debug)]
struct WorkerDir {
    path: PathBuf,
    version: Version,
    memory: bool,
}

impl Cgroups {
    /// Finds usable controllers (v2 first, then v1), prepares `keel/<pid>` in each, removes
    /// directories left by dead daemons, and logs one line saying what will be enforced.
    pub fn detect() -> Self {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let pid = std::process::id();
        let cgroups = match detect_v2(&mounts, &own, pid) {
            Ok(Some(found)) => found,
            Ok(None) => detect_v1(&mounts, pid),
            Err(e) => {
                let mut found = detect_v1(&mounts, pid);
                found.description = format!("{} (cgroup v2 not usable: {e})", found.description);
                found
            }
        };
        for h in &cgroups.hierarchies {
            remove_stale(&h.base, pid);
        }
        if cgroups.enforces_memory() && cgroups.enforces_cpu() {
            tracing::info!("{}", cgroups.description);
        } else {
            tracing::warn!("{}", cgroups.description);
        }
        cgroups
    }

    /// No controllers: limits are not enforced (for tests and for running without root).
    pub fn none() -> Self {
        Cgroups {
            hierarchies: Vec::new(),
            description: "no usable cgroup controllers: memory_max and cpu_max are not enforced"
                .into(),
        }
    }

    /// What keel uses, as logged at detection.
    pub fn describe(&self) -> String {
        self.description.clone()
    }

    pub fn enforces_memory(&self) -> bool {
        self.hierarchies.iter().any(|h| h.memory)
    }

    pub fn enforces_cpu(&self) -> bool {
        self.hierarchies.iter().any(|h| h.cpu)
    }

    /// Creates (or reuses) the pool's cgroup in each hierarchy.
    pub fn pool(&self, pool: &str) -> io::Result<PoolCgroup> {
        if pool.is_empty() || pool.contains('/') || pool == "." || pool == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("pool name {pool:?} cannot name a cgroup"),
            ));
        }
        let mut dirs = Vec::new();
        for h in &self.hierarchies {
            let dir = h.base.join(pool);
            fs::create_dir_all(&dir).map_err(|e| at(&dir, e))?;
            if h.version == Version::V2 {
                // Children of the pool get the controllers only if every ancestor below
                // keel's cgroup passes them on (`base` may have been recreated).
                enable_controllers(&h.base)?;
                enable_controllers(&dir)?;
            }
            dirs.push((h.clone(), dir));
        }
        Ok(PoolCgroup { dirs })
    }

    /// Best effort removal of `keel/<daemon-pid>` at daemon exit (after every pool's
    /// `remove`). What remains is removed by the next start.
    pub fn remove(&self) {
        for h in &self.hierarchies {
            let _ = fs::remove_dir(&h.base);
        }
    }
}

impl PoolCgroup {
    /// Creates the worker's cgroup with its limits and opens its `cgroup.procs`.
    /// `memory_max` in bytes; `cpu_max` in CPUs (0.5 = half of one CPU). A limit whose
    /// controller is not available is not enforced (`Cgroups::detect` warned once).
    pub fn worker(
        &self,
        worker_id: u64,
        memory_max: Option<u64>,
        cpu_max: Option<f64>,
    ) -> io::Result<WorkerCgroup> {
        let cpu_quota = match cpu_max {
            Some(cpus) if !(cpus.is_finite() && cpus > 0.0) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("cpu_max {cpus} is not a positive number of CPUs"),
                ));
            }
            Some(cpus) => {
                Some(((cpus * CPU_PERIOD_US as f64).round() as u64).max(CPU_MIN_QUOTA_US))
            }
            None => None,
        };
        let mut dirs = Vec::new();
        let mut procs = Vec::new();
        let made = (|| {
            for (h, pool_dir) in &self.dirs {
                let dir = pool_dir.join(format!("worker-{worker_id}"));
                // Worker ids are not reused, so a leftover is a directory whose removal
                // failed earlier: its counters (oom_kill) would lie, so start afresh.
                if dir.exists() {
                    remove_dir_retrying(&dir);
                }
                fs::create_dir(&dir).map_err(|e| at(&dir, e))?;
                dirs.push(WorkerDir {
                    path: dir.clone(),
                    version: h.version,
                    memory: h.memory,
                });
                if h.memory
                    && let Some(bytes) = memory_max
                {
                    write_memory_limit(&dir, h.version, bytes)?;
                }
                if h.cpu
                    && let Some(quota) = cpu_quota
                {
                    write_cpu_limit(&dir, h.version, quota)?;
                }
                let file_path = dir.join("cgroup.procs");
                // std opens with O_CLOEXEC: the worker does not inherit these.
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&file_path)
                    .map_err(|e| at(&file_path, e))?;
                procs.push(OwnedFd::from(file));
            }
            Ok(())
        })();
        let cgroup = WorkerCgroup {
            dirs: dirs.into(),
            procs: procs.into(),
        };
        match made {
            Ok(()) => Ok(cgroup),
            Err(e) => {
                cgroup.remove();
                Err(e)
            }
        }
    }

    /// Removes the pool's cgroups (best effort) once its workers are gone.
    pub fn remove(&self) {
        for (_, dir) in &self.dirs {
            remove_dir_retrying(dir);
        }
    }
}

impl WorkerCgroup {
    /// The opened `cgroup.procs` files, for `pre_exec` (borrowing allocates nothing).
    pub(super) fn procs_fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.procs.iter().map(|fd| fd.as_fd())
    }

    /// Whether the kernel's OOM killer killed a process in this cgroup (the memory limit
    /// was hit). v2: `memory.events` `oom_kill`; v1: `memory.oom_control` `oom_kill`
    /// (kernel ≥ 4.13), on older kernels whether the limit was ever hit (`failcnt`), which
    /// may also count pressure that reclaim resolved without a kill.
    pub fn oom_killed(&self) -> bool {
        self.dirs
            .iter()
            .filter(|d| d.memory)
            .any(|d| match d.version {
                Version::V2 => read_key(&d.path.join("memory.events"), "oom_kill").unwrap_or(0) > 0,
                Version::V1 => match read_key(&d.path.join("memory.oom_control"), "oom_kill") {
                    Some(kills) => kills > 0,
                    None => ["memory.failcnt", "memory.memsw.failcnt"]
                        .iter()
                        .any(|f| read_number(&d.path.join(f)).unwrap_or(0) > 0),
                },
            })
    }

    /// Removes the worker's cgroups once it has exited (best effort). Blocks up to ~100 ms
    /// per directory while processes of the worker's group are still being torn down.
    pub fn remove(self) {
        for d in self.dirs.iter() {
            remove_dir_retrying(&d.path);
        }
    }
}

/// v2 is used when a cgroup2 mount offers `memory` and `cpu` to keel's own cgroup and keel
/// can create a delegated subtree there. `Ok(None)`: no v2 controllers at all (e.g. a v1 or
/// hybrid machine); `Err`: they exist but keel cannot use them.
fn detect_v2(mounts: &str, own: &str, pid: u32) -> io::Result<Option<Cgroups>> {
    let Some(mount) = mounts.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() >= 3 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    }) else {
        return Ok(None);
    };
    let Some(own_path) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Ok(None);
    };
    let own_dir = mount.join(own_path.trim_start_matches('/'));
    let controllers = fs::read_to_string(own_dir.join("cgroup.controllers")).unwrap_or_default();
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    if !(has("memory") && has("cpu")) {
        return Ok(None);
    }
    // Controllers pass to children only from a cgroup without processes (the root is
    // exempt). If keel sits in its delegated cgroup, it moves itself into a leaf first.
    if let Err(e) = enable_controllers(&own_dir) {
        if own_path.trim_matches('/').is_empty() || e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
        let leaf = own_dir.join("keel-daemon");
        fs::create_dir_all(&leaf).map_err(|e| at(&leaf, e))?;
        let procs = leaf.join("cgroup.procs");
        fs::write(&procs, pid.to_string()).map_err(|e| at(&procs, e))?;
        enable_controllers(&own_dir)?;
    }
    let keel_dir = own_dir.join("keel");
    let base = keel_dir.join(pid.to_string());
    fs::create_dir_all(&base).map_err(|e| at(&base, e))?;
    enable_controllers(&keel_dir)?;
    enable_controllers(&base)?;
    let description = format!(
        "cgroups: v2 at {}: memory_max and cpu_max are enforced",
        base.display()
    );
    Ok(Some(Cgroups {
        hierarchies: vec![Hierarchy {
            version: Version::V2,
            memory: true,
            cpu: true,
            base,
        }],
        description,
    }))
}

/// v1: the first mount of each of `memory` and `cpu` (alone or co-mounted, e.g.
/// `cpu,cpuacct`), used from the hierarchy's root if keel may create `keel/<pid>` there.
fn detect_v1(mounts: &str, pid: u32) -> Cgroups {
    let mut hierarchies: Vec<Hierarchy> = Vec::new();
    let mut problems = Vec::new();
    for controller in ["memory", "cpu"] {
        let mount = mounts.lines().find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 4 && f[2] == "cgroup" && f[3].split(',').any(|o| o == controller))
                .then(|| PathBuf::from(f[1]))
        });
        let Some(mount) = mount else {
            continue;
        };
        let base = mount.join("keel").join(pid.to_string());
        let (memory, cpu) = (controller == "memory", controller == "cpu");
        if let Some(h) = hierarchies.iter_mut().find(|h| h.base == base) {
            // memory and cpu co-mounted in one hierarchy.
            h.memory |= memory;
            h.cpu |= cpu;
            continue;
        }
        match fs::create_dir_all(&base) {
            Ok(()) => hierarchies.push(Hierarchy {
                version: Version::V1,
                memory,
                cpu,
                base,
            }),
            Err(e) => problems.push(format!("{}: {e}", base.display())),
        }
    }
    let memory = hierarchies.iter().find(|h| h.memory);
    let cpu = hierarchies.iter().find(|h| h.cpu);
    let mut description = match (memory, cpu) {
        (None, None) => {
            "no usable cgroup controllers: memory_max and cpu_max are not enforced".to_string()
        }
        (Some(m), Some(c)) => format!(
            "cgroups: v1, memory at {}, cpu at {}: memory_max and cpu_max are enforced",
            m.base.display(),
            c.base.display()
        ),
        (Some(m), None) => format!(
            "cgroups: v1, memory at {}; no usable cpu controller: cpu_max is not enforced",
            m.base.display()
        ),
        (None, Some(c)) => format!(
            "cgroups: v1, cpu at {}; no usable memory controller: memory_max is not enforced",
            c.base.display()
        ),
    };
    if !problems.is_empty() {
        description = format!("{description} ({})", problems.join("; "));
    }
    Cgroups {
        hierarchies,
        description,
    }
}

fn write_memory_limit(dir: &Path, version: Version, bytes: u64) -> io::Result<()> {
    let value = bytes.to_string();
    // Without a swap limit the worker's pages could move to swap and escape the limit, so
    // memory+swap gets the same value where the kernel offers it (v1: swap accounting on).
    match version {
        Version::V1 => {
            write(dir, "memory.limit_in_bytes", &value)?;
            write_if_present(dir, "memory.memsw.limit_in_bytes", &value)
        }
        Version::V2 => {
            write(dir, "memory.max", &value)?;
            write_if_present(dir, "memory.swap.max", "0")
        }
    }
}

fn write_cpu_limit(dir: &Path, version: Version, quota_us: u64) -> io::Result<()> {
    match version {
        Version::V1 => {
            write(dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            write(dir, "cpu.cfs_quota_us", &quota_us.to_string())
        }
        Version::V2 => write(dir, "cpu.max", &format!("{quota_us} {CPU_PERIOD_US}")),
    }
}

/// v2: lets `dir`'s children use memory and cpu. Idempotent.
fn enable_controllers(dir: &Path) -> io::Result<()> {
    write(dir, "cgroup.subtree_control", "+memory +cpu")
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(|e| at(&path, e))
}

fn write_if_present(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    if dir.join(file).exists() {
        write(dir, file, value)
    } else {
        Ok(())
    }
}

/// Adds the path to an error, keeping its kind and errno text.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// `KEY N` lines (memory.events, memory.oom_control).
fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// rmdir, retried on EBUSY for ~100 ms: right after a worker exits, its process group's
/// other members may still be leaving the cgroup. Other errors (already gone, children
/// left) end the attempt.
fn remove_dir_retrying(dir: &Path) {
    for _ in 0..10 {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => return,
        }
    }
    tracing::debug!("cgroup {} not removed: still busy", dir.display());
}

/// Removes `keel/<pid>` trees (sibling of `base`) of daemons that no longer run. A dead
/// daemon's workers died with it (PR_SET_PDEATHSIG), so its cgroups are empty; a tree
/// still holding processes is refused by the kernel (EBUSY) and left alone.
fn remove_stale(base: &Path, own_pid: u32) {
    let Some(keel_dir) = base.parent() else {
        return;
    };
    let Ok(entries) = fs::read_dir(keel_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid != own_pid && !Path::new(&format!("/proc/{pid}")).exists() {
            remove_tree(&entry.path());
        }
    }
}

/// Depth-first rmdir of a cgroup tree (cgroupfs removes the control files with the dir).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => tracing::debug!("removed stale cgroup {}", dir.display()),
        Err(e) => tracing::debug!("stale cgroup {} not removed: {e}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn v2_without_controllers_is_not_v2() {
        // The unified mount exists but offers no memory controller to "/" there.
        let found = detect_v2(MOUNTS, "0::/nonexistent-keel-test\n", 1).unwrap();
        assert!(found.is_none());
    }

    #[test]
    fn read_key_finds_counters() {
        let dir = std::env::temp_dir().join(format!("keel-cg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("memory.oom_control");
        fs::write(&file, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert_eq!(read_key(&file, "oom_kill"), Some(3));
        assert_eq!(read_key(&file, "oom_kill_disable"), Some(0));
        assert_eq!(read_key(&file, "missing"), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn none_enforces_nothing() {
        let cgroups = Cgroups::none();
        let pool = cgroups.pool("p").unwrap();
        let worker = pool.worker(1, Some(1 << 20), Some(0.5)).unwrap();
        assert_eq!(worker.procs_fds().count(), 0);
        assert!(!worker.oom_killed());
        worker.remove();
        assert!(pool.worker(2, None, Some(-1.0)).is_err());
    }
}

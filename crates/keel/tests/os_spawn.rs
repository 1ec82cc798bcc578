//! `keel::os` against the real kernel: identity switch, rlimits, cgroup limits, the death
//! signal. These need root (as on the project machines) and a v1 or v2 memory/cpu
//! controller; without root they print why and return.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use keel::os::cgroup::Cgroups;
use keel::os::proc::{rss_bytes, uid_gid};
use keel::os::spawn::{RLimits, SpawnSpec, Spawned, kill_group, spawn_worker};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

fn is_root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("skipped: needs root to switch users and create cgroups");
    }
    root
}

/// CAP_SYS_RESOURCE (bit 24) in the effective set: needed to raise a hard rlimit.
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap();
    u64::from_str_radix(caps.trim(), 16).unwrap() & (1 << 24) != 0
}

/// (uid, gid) of "nobody" from /etc/passwd.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .expect("no nobody user");
    let f: Vec<&str> = line.split(':').collect();
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

fn sh(script: &str) -> SpawnSpec {
    SpawnSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        cwd: Some(PathBuf::from("/")),
        ..SpawnSpec::default()
    }
}

/// Runs to the end; returns stdout and the exit status.
async fn output(mut spawned: Spawned) -> (String, ExitStatus) {
    let mut out = String::new();
    let mut stdout = spawned.child.stdout.take().unwrap();
    stdout.read_to_string(&mut out).await.unwrap();
    let status = spawned.child.wait().await.unwrap();
    (out, status)
}

async fn first_line(spawned: &mut Spawned) -> String {
    let stdout = spawned.child.stdout.as_mut().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await.unwrap();
    line.trim().to_string()
}

#[tokio::test]
async fn worker_runs_as_nobody_without_supplementary_groups() {
    if !is_root() {
        return;
    }
    let (uid, gid) = nobody();
    // bash: dash cannot redirect to a descriptor above 9.
    let mut spec = sh("id -u; id -g; id -G; printf via-socket >&\"$KEEL_FD\"; exec sleep 30");
    spec.argv[0] = "/bin/bash".into();
    spec.identity = Some((uid, gid));
    let mut spawned = spawn_worker(&spec).unwrap();
    let stdout = spawned.child.stdout.as_mut().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(lines.next_line().await.unwrap().unwrap());
    }
    assert_eq!(ids, [uid.to_string(), gid.to_string(), gid.to_string()]);
    // The inherited socket still works after the switch.
    let mut buf = [0u8; 10];
    let socket = spawned
        .socket
        .as_mut()
        .expect("a protocol worker has a socket");
    socket.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"via-socket");
    // `sleep` has replaced the shell: the kernel's view agrees.
    assert_eq!(uid_gid(spawned.pid), Some((uid, gid)));
    assert!(rss_bytes(spawned.pid).unwrap() > 0);
    kill_group(spawned.pid);
    let status = spawned.child.wait().await.unwrap();
    assert_eq!(status.signal(), Some(9));
}

#[tokio::test]
async fn rlimits_are_set_and_may_exceed_the_daemons_own() {
    if !is_root() {
        return;
    }
    // Lowering: as keel's own user.
    let mut spec = sh("ulimit -n; ulimit -Hn");
    spec.limits.nofile = Some(123);
    let (out, status) = output(spawn_worker(&spec).unwrap()).await;
    assert!(status.success());
    assert_eq!(out, "123\n123\n");

    // Raising above keel's own hard limit works only because setrlimit runs before setuid
    // (nobody has no CAP_SYS_RESOURCE), and only if keel itself has CAP_SYS_RESOURCE.
    let own = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let own_hard = own.maximum.unwrap_or(u64::MAX);
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let above = (own_hard.saturating_add(1000)).min(nr_open);
    assert!(above > own_hard, "keel's hard limit is already the ceiling");
    let mut spec = sh("exec true");
    spec.identity = Some(nobody());
    spec.limits.nofile = Some(above);
    let raised = spawn_worker(&spec);
    let nofile = if has_cap_sys_resource() {
        raised.unwrap().child.wait().await.unwrap();
        above
    } else {
        // A root without CAP_SYS_RESOURCE (some sandboxes): the spawn fails, as the daemon
        // would report it ("cannot start worker: Operation not permitted").
        let err = raised
            .err()
            .expect("raised a hard limit without CAP_SYS_RESOURCE");
        assert_eq!(err.raw_os_error(), Some(1), "{err}");
        eprintln!("no CAP_SYS_RESOURCE: nofile above the hard limit refused (EPERM)");
        own_hard
    };
    let mut spec = sh("ulimit -n; ulimit -Hn; exec sleep 30");
    spec.identity = Some(nobody());
    spec.limits = RLimits {
        nofile: Some(nofile),
        nproc: Some(77),
        core: Some(0),
    };
    let mut spawned = spawn_worker(&spec).unwrap();
    let soft = first_line(&mut spawned).await;
    assert_eq!(soft, nofile.to_string());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", spawned.pid)).unwrap();
    let row = |name: &str| {
        let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row("Max open files"), format!("{nofile} {nofile}"));
    assert_eq!(row("Max processes"), "77 77");
    assert_eq!(row("Max core file size"), "0 0");
    kill_group(spawned.pid);
    spawned.child.wait().await.unwrap();
}

#[tokio::test]
async fn memory_limit_kills_the_worker_that_exceeds_it() {
    if !is_root() {
        return;
    }
    let cgroups = Cgroups::detect();
    assert!(cgroups.enforces_memory(), "{}", cgroups.describe());
    let pool = cgroups.pool("os-spawn-memory").unwrap();
    const LIMIT: u64 = 32 << 20;

    // 100 MB in a shell variable against a 32 MiB limit.
    let hog = pool.worker(1, Some(LIMIT), None).unwrap();
    let mut spec = sh("x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived");
    spec.identity = Some(nobody());
    spec.cgroup = Some(hog.clone());
    let (out, status) = output(spawn_worker(&spec).unwrap()).await;
    assert_eq!(status.signal(), Some(9), "{status:?}, stdout {out:?}");
    assert_eq!(out, "");
    assert!(hog.oom_killed());
    hog.remove();

    // 1 MB under the same limit.
    let modest = pool.worker(2, Some(LIMIT), None).unwrap();
    let mut spec = sh("x=$(head -c 1000000 /dev/zero | tr '\\0' a); echo survived");
    spec.cgroup = Some(modest.clone());
    let (out, status) = output(spawn_worker(&spec).unwrap()).await;
    assert!(status.success(), "{status:?}");
    assert_eq!(out, "survived\n");
    assert!(!modest.oom_killed());
    modest.remove();
    pool.remove();
}

/// The v1 directory of a pool on this kind of machine (tests only: the layout is private).
fn v1_dir(controller: &str, pool: &str) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/cgroup/{controller}/keel/{}/{pool}",
        std::process::id()
    ))
}

#[tokio::test]
async fn cpu_limit_is_written_and_the_worker_joins_its_cgroups() {
    if !is_root() {
        return;
    }
    let cgroups = Cgroups::detect();
    assert!(cgroups.enforces_cpu(), "{}", cgroups.describe());
    let pool = cgroups.pool("os-spawn-cpu").unwrap();
    let worker = pool.worker(7, Some(64 << 20), Some(0.5)).unwrap();

    let cpu_dir = v1_dir("cpu", "os-spawn-cpu").join("worker-7");
    let memory_dir = v1_dir("memory", "os-spawn-cpu").join("worker-7");
    let v1 = cpu_dir.exists();
    if v1 {
        let read = |f: &str| std::fs::read_to_string(cpu_dir.join(f)).unwrap();
        assert_eq!(read("cpu.cfs_quota_us").trim(), "50000");
        assert_eq!(read("cpu.cfs_period_us").trim(), "100000");
        let limit = std::fs::read_to_string(memory_dir.join("memory.limit_in_bytes")).unwrap();
        assert_eq!(limit.trim(), (64u64 << 20).to_string());
    } else {
        eprintln!("not v1 ({}): cgroup files not checked", cgroups.describe());
    }

    let mut spec = sh("exec sleep 30");
    spec.identity = Some(nobody());
    spec.cgroup = Some(worker.clone());
    let mut spawned = spawn_worker(&spec).unwrap();
    let membership = std::fs::read_to_string(format!("/proc/{}/cgroup", spawned.pid)).unwrap();
    let path = format!("/keel/{}/os-spawn-cpu/worker-7", std::process::id());
    if v1 {
        for controller in ["memory", "cpu"] {
            assert!(
                membership
                    .lines()
                    .any(|l| l.contains(&format!(":{controller}:")) && l.ends_with(&path)),
                "{controller} not joined: {membership}"
            );
        }
    } else {
        assert!(
            membership.lines().any(|l| l.ends_with(&path)),
            "{membership}"
        );
    }
    kill_group(spawned.pid);
    spawned.child.wait().await.unwrap();
    drop(spec);
    worker.remove();
    pool.remove();
    if v1 {
        assert!(!cpu_dir.exists() && !memory_dir.exists());
        assert!(!v1_dir("cpu", "os-spawn-cpu").exists());
    }
}

const HELPER: &str = "pdeathsig_helper_spawns_a_worker_and_waits";
const HELPER_ENV: &str = "KEEL_OS_SPAWN_HELPER";

/// Run only by `worker_dies_with_the_daemon`, in a process of its own that plays the daemon.
#[tokio::test]
async fn pdeathsig_helper_spawns_a_worker_and_waits() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let mut spec = sh("exec sleep 60");
    spec.identity = Some(nobody());
    let spawned = spawn_worker(&spec).unwrap();
    println!("WORKER_PID={}", spawned.pid);
    // Stay alive (on the thread that forked) until killed.
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(spawned);
}

/// PR_SET_PDEATHSIG survives the identity switch (it is set after setuid): killing the
/// daemon with SIGKILL kills its worker running as nobody.
#[test]
fn worker_dies_with_the_daemon() {
    if !is_root() {
        return;
    }
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args([HELPER, "--exact", "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = helper.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let pid: u32 = loop {
        let line = lines.next().expect("helper printed no pid").unwrap();
        // libtest prints the test's name on the same line.
        if let Some((_, pid)) = line.split_once("WORKER_PID=") {
            break pid.trim().parse().unwrap();
        }
    };
    assert_eq!(uid_gid(pid), Some(nobody()));
    helper.kill().unwrap(); // SIGKILL: no destructor, no kill_on_drop runs.
    helper.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Gone, or a zombie waiting for its new parent to reap it.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|r| r.trim().starts_with('Z')));
        if state.is_none_or(|zombie| zombie) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker {pid} outlived its daemon"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

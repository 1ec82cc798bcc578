//! keel as a service: socket activation (LISTEN_FDS), `Type=notify` messages, and the
//! binary upgrade (SIGUSR2) that hands the listening sockets to a new daemon without
//! dropping a request.

mod common;
use common::*;
use rustix::process::Signal;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn config_dir(config: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[log]\nerror_log = \"error.log\"\n[daemon]\nruntime_dir = \"run\"\n",
        config.replace("{demo}", demo_worker().to_str().unwrap())
    );
    let path = dir.path().join("keel.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path.to_str().unwrap().to_owned())
}

const ONE_POOL: &str = r#"
[[site]]
name = "demo"
bindings = ["http://127.0.0.1:PORT"]
app = [{ path = "/", pool = "demo" }]

[pool.demo]
command = ["{demo}"]
start = "always"
workers = 2
"#;

#[test]
fn a_socket_passed_by_the_service_manager_is_served() {
    // The "service manager": a socket bound here, handed over as fd 3.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let (dir, path) = config_dir(&ONE_POOL.replace("PORT", &port.to_string()));
    let fd = socket.as_raw_fd();
    let cwd = dir.path().to_path_buf();
    let d = Daemon::start_custom(dir, &["serve", "--config", &path], move |cmd| {
        // keel's own shim sets LISTEN_PID to the pid that runs keel, as systemd does.
        let program = cmd.get_program().to_owned();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        let mut shimmed = std::process::Command::new(&program);
        shimmed
            .arg("__exec-with-listen-pid")
            .arg(&program)
            .args(&args);
        *cmd = shimmed;
        cmd.current_dir(&cwd)
            .env("KEEL_LOG", "info")
            .env("LISTEN_FDS", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        // SAFETY: dup2 between fork and exec, on a descriptor open in the parent.
        unsafe {
            cmd.pre_exec(move || {
                if fd != 3 {
                    let mut three =
                        std::mem::ManuallyDrop::new(std::os::fd::OwnedFd::from_raw_fd(3));
                    rustix::io::dup2(std::os::fd::BorrowedFd::borrow_raw(fd), &mut three)?;
                }
                rustix::io::fcntl_setfd(
                    std::os::fd::BorrowedFd::borrow_raw(3),
                    rustix::io::FdFlags::empty(),
                )?;
                Ok(())
            });
        }
    });
    drop(socket);
    assert!(
        d.log_lines()
            .iter()
            .any(|l| l.contains("inherited listening sockets") && l.contains(&port.to_string())),
        "{:#?}",
        d.log_lines()
    );
    assert_eq!(d.addr().port(), port);
    let r = get(d.addr(), "/pid");
    assert_eq!(r.status, 200);
    // Workers do not see the service manager's variables.
    let r = get(d.addr(), "/env?name=LISTEN_FDS");
    assert_ne!(r.text(), "1", "LISTEN_FDS leaked to a worker");
}

use std::os::fd::FromRawFd;

#[test]
fn the_service_manager_hears_ready_reloading_watchdog_and_stopping() {
    let (dir, path) = config_dir(&ONE_POOL.replace("PORT", "0"));
    let notify_path = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&notify_path).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let np = notify_path.clone();
    let mut d = Daemon::start_custom(dir, &["serve", "--config", &path], move |cmd| {
        cmd.env("NOTIFY_SOCKET", &np).env("WATCHDOG_USEC", "400000");
    });
    let mut seen = Vec::new();
    let wait_for = |what: &str, seen: &mut Vec<String>| {
        let t = Instant::now();
        while !seen.iter().any(|m| m.lines().any(|l| l == what)) {
            assert!(t.elapsed() < Duration::from_secs(10), "no {what}: {seen:?}");
            let mut buf = [0u8; 4096];
            if let Ok(n) = listener.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    };
    wait_for("READY=1", &mut seen);
    wait_for("WATCHDOG=1", &mut seen);
    d.signal(Signal::HUP);
    wait_for("RELOADING=1", &mut seen);
    assert!(
        seen.iter().any(|m| m.contains("MONOTONIC_USEC=")),
        "{seen:?}"
    );
    seen.clear();
    wait_for("READY=1", &mut seen);
    d.signal(Signal::TERM);
    wait_for("STOPPING=1", &mut seen);
    assert!(d.wait_exit(Duration::from_secs(20)).success());
}

/// The successor's pid, from its "keel ready (pid N)" line.
fn ready_pids(d: &Daemon) -> Vec<u32> {
    d.log_lines()
        .iter()
        .filter_map(|l| {
            let rest = &l[l.find("keel ready (pid ")? + "keel ready (pid ".len()..];
            rest.trim_end_matches(')').parse().ok()
        })
        .collect()
}

/// Kills the successor (not a child of the test) however the test ends.
struct KillOnDrop(Arc<AtomicUsize>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let pid = self.0.load(Ordering::Relaxed) as u32;
        if pid != 0 {
            let workers = children_of(pid);
            kill(pid);
            for w in workers {
                kill(w);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_drops_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (dir, path) = config_dir(&ONE_POOL.replace("PORT", &port.to_string()));
    let mut d = Daemon::start_with(dir, &["serve", "--config", &path]);
    d.wait_for_workers(2, Duration::from_secs(10));
    let old_pid = d.pid();
    let successor = Arc::new(AtomicUsize::new(0));
    let _cleanup = KillOnDrop(successor.clone());

    let done = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let clients = keep_alive_clients(&format!("http://127.0.0.1:{port}/pid"), 32, &done, &served);
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.signal(Signal::USR2);
    let d = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        loop {
            let pids = ready_pids(&d);
            if let Some(&new) = pids.iter().find(|p| **p != old_pid) {
                successor.store(new as usize, Ordering::Relaxed);
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{:#?}",
                d.log_lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The old daemon drains and exits by itself.
        let status = d.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "{status:?}");
        d
    })
    .await
    .unwrap();
    let at_exit = served.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(700)).await;
    done.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        served.load(Ordering::Relaxed) > at_exit,
        "nothing served after the old daemon exited"
    );
    // The new daemon serves with its own workers.
    let new_pid = ready_pids(&d).into_iter().find(|p| *p != old_pid).unwrap();
    let worker: u32 = get(d.addr(), "/pid").text().parse().unwrap();
    assert!(
        children_of(new_pid).contains(&worker),
        "{worker} is not a worker of {new_pid}"
    );
}

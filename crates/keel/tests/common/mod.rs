//! Test harness: start a real `keel` daemon with a real config and real worker processes,
//! find its ports and workers, talk to it over real sockets, and clean up every process it
//! started even when a test fails.

#![allow(dead_code)]

pub mod malformed;
pub mod pki;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn keel_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keel"))
}

/// A binary built next to `keel` by the same `cargo build`/`cargo test --workspace`.
pub fn sibling_bin(name: &str) -> PathBuf {
    let p = keel_bin().parent().unwrap().join(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo nextest run --workspace` (or `cargo build --workspace`) so it is built",
        p.display()
    );
    p
}

pub fn demo_worker() -> PathBuf {
    sibling_bin("keel-demo-worker")
}

pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub addrs: Vec<SocketAddr>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `keel serve` with `config`, in which `{demo}` stands for the demo worker's
    /// path and `{dir}` for the test's temp dir. The error log goes to `{dir}/error.log`
    /// unless the config sets `[log]` itself, and `runtime_dir` is `{dir}/run` unless it
    /// sets `[daemon]`.
    pub fn start(config: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let mut text = config
            .replace("{demo}", demo_worker().to_str().unwrap())
            .replace("{dir}", dir.path().to_str().unwrap());
        if !text.contains("[log]") {
            text.push_str("\n[log]\nerror_log = \"error.log\"\n");
        }
        // Sockets (attach, HTTP workers) in the test's own directory, never shared.
        if !text.contains("[daemon]") {
            text.push_str("\n[daemon]\nruntime_dir = \"run\"\n");
        }
        let path = dir.path().join("keel.toml");
        std::fs::write(&path, text).unwrap();
        Self::start_with(dir, &["serve", "--config", path.to_str().unwrap()])
    }

    /// Starts `keel ARGS` in `dir`. A `--config` file without `[admin]` gets one that puts
    /// the admin socket in `dir` (see [`Daemon::admin_socket`]): daemons of parallel tests
    /// never share the default socket.
    pub fn start_with(dir: tempfile::TempDir, args: &[&str]) -> Daemon {
        Self::start_custom(dir, args, |_| {})
    }

    /// `start_with`, letting `configure` add to the command (environment, inherited fds).
    pub fn start_custom(
        dir: tempfile::TempDir,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Daemon {
        if let Some(i) = args.iter().position(|a| *a == "--config")
            && let Some(config) = args.get(i + 1)
        {
            let text = std::fs::read_to_string(config).unwrap();
            if !text.contains("[admin]") {
                let socket = dir.path().join("admin.sock");
                let text = format!("{text}\n[admin]\nsocket = \"{}\"\n", socket.display());
                std::fs::write(config, text).unwrap();
            }
        }
        let mut cmd = Command::new(keel_bin());
        cmd.args(args)
            .current_dir(dir.path())
            .env("KEEL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("start keel");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("KEEL_TEST_ECHO").is_some() {
                        eprintln!("keel| {line}");
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let mut d = Daemon {
            child: Some(child),
            dir,
            addrs: Vec::new(),
            lines,
        };
        d.wait_for_line("keel ready", Duration::from_secs(20));
        d.addrs = d
            .log_lines()
            .iter()
            .filter_map(|l| {
                let rest = &l[l.find("listening on ")? + "listening on ".len()..];
                let addr: SocketAddr = rest.split_whitespace().next()?.parse().ok()?;
                Some(SocketAddr::new("127.0.0.1".parse().unwrap(), addr.port()))
            })
            .collect();
        assert!(
            !d.addrs.is_empty(),
            "no listener line: {:#?}",
            d.log_lines()
        );
        d
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The admin socket [`Daemon::start`] gives the daemon.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// One request to the admin API on its unix socket.
    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> RawResponse {
        admin_request(&self.admin_socket(), method, path, body)
    }

    /// The admin API's answer as JSON (whatever its status).
    pub fn admin_json(&self, method: &str, path: &str) -> serde_json::Value {
        let r = self.admin(method, path, None);
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", r.text()))
    }

    /// Runs `keel ARGS --socket <admin socket>` as an operator would.
    pub fn cli(&self, args: &[&str]) -> Cli {
        let socket = self.admin_socket();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--socket", socket.to_str().unwrap()]);
        cli(&all, self.dir.path())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        wait_for_line_in("log", || self.log_lines(), needle, timeout)
    }

    /// The first error-log line containing `needle`, waiting up to `timeout` for it.
    pub fn wait_for_error_line(&self, needle: &str, timeout: Duration) -> String {
        wait_for_line_in("error-log", || self.error_lines(), needle, timeout)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Error-log lines (without the `#` header lines).
    pub fn error_lines(&self) -> Vec<String> {
        self.error_log()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(String::from)
            .collect()
    }

    /// Processes whose parent is the daemon: its workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.pid())
    }

    /// Waits until the daemon has `n` worker processes that answer.
    pub fn wait_for_workers(&self, n: usize, timeout: Duration) -> Vec<u32> {
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.worker_pids();
            if pids.len() >= n {
                return pids;
            }
            assert!(Instant::now() < deadline, "{n} workers did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        self.wait_exit(timeout)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!("keel did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let workers = children_of(child.id());
            let _ = child.kill();
            let _ = child.wait();
            // Workers die with the daemon (PDEATHSIG); make sure of it anyway.
            for pid in workers {
                kill(pid);
            }
        }
    }
}

/// The first of `lines()` (the daemon's `log` lines of one kind) containing `needle`,
/// waiting up to `timeout` for it.
fn wait_for_line_in(
    log: &str,
    lines: impl Fn() -> Vec<String>,
    needle: &str,
    timeout: Duration,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(l) = lines().into_iter().find(|l| l.contains(needle)) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no {log} line containing {needle:?} within {timeout:?}; {log}:\n{}",
            lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `timeout` for `cond`, polling.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn kill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// The admin API's TCP listener (`[admin] listen`), from the daemon's log.
pub fn admin_tcp_addr(d: &Daemon) -> SocketAddr {
    let line = d.wait_for_line("admin API on http://", Duration::from_secs(5));
    let rest = &line[line.find("http://").unwrap() + "http://".len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// A GET to the admin API over TCP, with `Authorization: AUTH` when given.
pub fn tcp_get(addr: SocketAddr, path: &str, auth: Option<&str>) -> RawResponse {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    raw_request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: keel\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
}

/// A process's resident set (`VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie ('Z') has exited.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

pub fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name: state, ppid, ...
        let Some(rest) = stat.rsplit(')').next() else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && state != Some("Z") {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// What a `keel` CLI command printed and how it exited.
#[derive(Debug)]
pub struct Cli {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `keel ARGS` in `dir` and waits for it.
pub fn cli(args: &[&str], dir: &Path) -> Cli {
    let out = Command::new(keel_bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run keel");
    Cli {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One HTTP/1.1 request on a unix socket (the admin API), `Connection: close`.
pub fn admin_request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> RawResponse {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: keel\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_response(&mut BufReader::new(s))
        .unwrap_or_else(|| panic!("no answer from the admin API to {method} {path}"))
}

/// A parsed HTTP/1.1 response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends raw bytes and reads one response.
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut r = BufReader::new(s);
    read_response(&mut r).expect("a response")
}

/// Reads one response (Content-Length or chunked body) from a buffered stream.
pub fn read_response(r: &mut impl BufRead) -> Option<RawResponse> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = get("content-length") {
        let len: usize = len.parse().ok()?;
        body.resize(len, 0);
        r.read_exact(&mut body).ok()?;
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line).ok()?;
            let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
            if size == 0 {
                line.clear();
                r.read_line(&mut line).ok()?;
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..]).ok()?;
            line.clear();
            r.read_line(&mut line).ok()?;
        }
    } else if status >= 200 && status != 204 && status != 304 {
        r.read_to_end(&mut body).ok()?;
    }
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// GET over a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> RawResponse {
    raw_request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

pub fn get_host(addr: SocketAddr, host: &str, path: &str) -> RawResponse {
    raw_request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A one-pool, one-site config on 127.0.0.1:0 running the demo worker; `pool_extra` is
/// appended to the `[pool.demo]` table.
pub fn demo_config(pool_extra: &str) -> String {
    format!(
        r#"
[listener]
shutdown_timeout = "10s"

[[site]]
name = "demo"
bindings = ["http://127.0.0.1:0"]
app = [{{ path = "/", pool = "demo" }}]

[pool.demo]
command = ["{{demo}}"]
{pool_extra}
"#
    )
}

/// `clients` concurrent keep-alive clients send `total` GETs to `url` between them; returns
/// a description of every request that did not end in a 200 with its whole body read.
pub async fn hammer(url: &str, total: usize, clients: usize) -> Vec<String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let next = next.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut failures = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        if let Err(e) = r.bytes().await {
                            failures.push(format!("body {e}"));
                        }
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("error {e}")),
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    failures
}

// ---------------------------------------------------------------------------------------
// Worker-kind–parameterised checks, shared by the Rust demo worker's tests and the Python
// worker's (tests/python_worker.rs). A "worker fragment" is the `[pool.demo]` lines that
// say how to start the worker (`command = ...`, and `env`/`cwd` if needed).

/// The Rust demo worker (`{demo}` is replaced by its path in `Daemon::start`).
pub const RUST_DEMO_WORKER: &str = "command = [\"{demo}\"]";

/// The Python SDK's demo worker (`sdk/python`, `python3 -m keel_worker.demo`).
pub fn python_demo_worker() -> String {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../sdk/python")
        .canonicalize()
        .expect("sdk/python exists");
    format!(
        "command = [\"python3\", \"-m\", \"keel_worker.demo\"]\nenv = {{ PYTHONPATH = \"{}\" }}",
        sdk.display()
    )
}

/// The same routes as a WSGI app behind the SDK's WSGI adapter (`keel_worker.wsgi`):
/// `python3 -m keel_worker.demo wsgi`.
pub fn python_wsgi_demo_worker() -> String {
    python_demo_worker().replace("\"keel_worker.demo\"]", "\"keel_worker.demo\", \"wsgi\"]")
}

/// `demo_config`, with the worker given by `worker` (a fragment as above).
pub fn worker_config(worker: &str, pool_extra: &str) -> String {
    format!(
        r#"
[listener]
shutdown_timeout = "10s"

[[site]]
name = "demo"
bindings = ["http://127.0.0.1:0"]
app = [{{ path = "/", pool = "demo" }}]

[pool.demo]
{worker}
{pool_extra}
"#
    )
}

/// serving.rs `get_is_answered_by_a_worker`.
pub fn check_get_root(worker: &str) {
    let d = Daemon::start(&worker_config(worker, ""));
    let r = get(d.addr(), "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello from keel");
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert_eq!(r.header("x-keel-pool"), Some("demo"));
    let pid: u32 = get(d.addr(), "/pid").text().trim().parse().unwrap();
    assert!(
        d.worker_pids().contains(&pid),
        "answered by a worker of this daemon"
    );
}

/// serving.rs `one_mib_post_is_echoed`.
pub async fn check_one_mib_post_is_echoed(worker: &str) {
    let d = Daemon::start(&worker_config(worker, ""));
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let client = reqwest::Client::new();
    let resp = client
        .post(d.url("/echo"))
        .header("content-type", "application/x-test")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/x-test"
    );
    let got = resp.bytes().await.unwrap();
    assert_eq!(got.len(), body.len());
    assert!(got[..] == body[..], "echoed bytes differ");
}

/// serving.rs `hundred_pipelined_requests_are_answered_in_order`.
pub fn check_hundred_pipelined_requests_in_order(worker: &str) {
    let d = Daemon::start(&worker_config(worker, ""));
    let mut s = TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut batch = Vec::new();
    for i in 0..100 {
        // Later requests finish sooner: answers out of order would show.
        let ms = (100 - i) % 7;
        write!(
            batch,
            "GET /sleep?ms={ms}&n={i} HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        .unwrap();
    }
    s.write_all(&batch).unwrap();
    let mut r = BufReader::new(s);
    for i in 0..100 {
        let resp = read_response(&mut r).expect("response");
        assert_eq!(resp.status, 200);
        let ms = (100 - i) % 7;
        assert_eq!(resp.text(), format!("slept {ms} ms"), "response {i}");
    }
}

/// Pids of the daemon's workers that have said hello (logged `-> Ready`) and are alive.
pub fn ready_worker_pids(lines: &Mutex<Vec<String>>, daemon_pid: u32) -> Vec<u32> {
    let ready: std::collections::HashSet<u32> = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("-> Ready"))
        .filter_map(|l| {
            let rest = &l[l.find("worker ")? + "worker ".len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect();
    children_of(daemon_pid)
        .into_iter()
        .filter(|p| ready.contains(p))
        .collect()
}

impl Daemon {
    /// The daemon's stderr lines as they arrive (shared with the reader thread).
    pub fn log_handle(&self) -> Arc<Mutex<Vec<String>>> {
        self.lines.clone()
    }
}

/// crash_recovery.rs `worker_killed_every_200ms_loses_no_request`: 2 workers, 32 clients,
/// 5 000 GETs, a worker SIGKILLed every 200 ms, zero failures.
///
/// `only_ready`: kill only workers that have said hello. A worker whose start-up takes
/// longer than 200 ms (a Python interpreter: 0.3–1 s) would otherwise be killed while still
/// starting, again and again, until rapid-fail protection disables the pool (503s): a test
/// of the start-up time, not of crash transparency. The Rust demo worker is ready within
/// milliseconds, so for it both settings kill practically the same processes.
pub async fn check_worker_killed_every_200ms_loses_no_request(worker: &str, only_ready: bool) {
    let config = worker_config(worker, "workers = 2\nstart = \"always\"");
    check_storm_loses_no_request(&Daemon::start(&config), only_ready).await;
}

/// [`check_worker_killed_every_200ms_loses_no_request`] against `d`, a daemon whose pool
/// `demo` runs two workers of a kind that answers `/pid`.
pub async fn check_storm_loses_no_request(d: &Daemon, only_ready: bool) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    d.wait_for_workers(2, Duration::from_secs(10));
    let url = d.url("/pid");
    let total = 5000;
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let daemon_pid = d.pid();
    let lines = d.log_handle();
    let killer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut kills = 0;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let victims = if only_ready {
                    ready_worker_pids(&lines, daemon_pid)
                } else {
                    children_of(daemon_pid)
                };
                if let Some(&pid) = victims.first() {
                    kill(pid);
                    kills += 1;
                }
            }
            kills
        })
    };

    let mut clients = Vec::new();
    for _ in 0..32 {
        let next = next.clone();
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut failures = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("error {e}")),
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    done.store(true, Ordering::Relaxed);
    let kills = killer.join().unwrap();
    assert!(kills >= 2, "the storm killed {kills} workers");
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let abandoned: Vec<_> = d
        .error_lines()
        .into_iter()
        .filter(|l| l.contains("Abandoned"))
        .collect();
    assert!(abandoned.is_empty(), "{abandoned:?}");
}

/// crash_recovery.rs `crashing_request_gets_502_and_the_next_one_succeeds`.
pub fn check_crashing_request_gets_502_and_the_next_one_succeeds(worker: &str) {
    let d = Daemon::start(&worker_config(worker, ""));
    let before = get(d.addr(), "/pid").text();
    let r = get(d.addr(), "/crash");
    assert_eq!(r.status, 502);
    let r = get(d.addr(), "/pid");
    assert_eq!(r.status, 200);
    assert_ne!(r.text(), before, "a new worker answered");
    assert!(
        d.error_lines().iter().any(|l| l.contains("/crash")
            && l.contains("502")
            && l.contains("Connection_Abandoned_By_ReqQueue")),
        "{:?}",
        d.error_lines()
    );
}

/// flow_control.rs `slow_reader_of_a_big_response_does_not_delay_other_requests`.
pub fn check_slow_reader_does_not_delay_other_requests(worker: &str) {
    use std::io::Read;
    let d = Daemon::start(&worker_config(worker, "workers = 1"));
    assert_eq!(get(d.addr(), "/").status, 200);
    // A client that asks for 50 MB and reads almost nothing.
    let mut slow = TcpStream::connect(d.addr()).unwrap();
    slow.write_all(b"GET /big?bytes=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 1024];
    slow.read_exact(&mut first).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The same single worker still answers everyone else promptly.
    for _ in 0..20 {
        let t = Instant::now();
        let r = get(d.addr(), "/");
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "took {:?}",
            t.elapsed()
        );
    }
    // The slow client's stream is still intact: it can read on.
    let mut more = vec![0u8; 1 << 20];
    slow.read_exact(&mut more).unwrap();
    assert!(more.iter().all(|&b| b == more[0]));
}

// ---------------------------------------------------------------------------------------
// HTTP workers (tests/http_workers.rs): the examples in `examples/`, run unmodified.

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// gunicorn from the test virtualenv (`KEEL_TEST_VENV`, default `target/test-venv`, which
/// `.ci/run` creates). Created here from `examples/python-wsgi/requirements.txt` when
/// missing, under a lock so that parallel tests build it once.
pub fn gunicorn() -> PathBuf {
    let venv = std::env::var_os("KEEL_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/test-venv"));
    let bin = venv.join("bin/gunicorn");
    if bin.exists() {
        return bin;
    }
    std::fs::create_dir_all(venv.parent().unwrap()).unwrap();
    let lock = std::fs::File::create(venv.with_extension("lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    if !bin.exists() {
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        assert!(
            ok(Command::new("python3").args(["-m", "venv"]).arg(&venv)),
            "python3 -m venv {} failed",
            venv.display()
        );
        let requirements = workspace_root().join("examples/python-wsgi/requirements.txt");
        assert!(
            ok(Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "-r"])
                .arg(&requirements)),
            "pip install -r {} failed (gunicorn is needed for the HTTP worker tests)",
            requirements.display()
        );
    }
    bin
}

/// The `[pool.demo]` lines for the WSGI example under gunicorn (one sync worker).
pub fn wsgi_worker() -> String {
    format!(
        "protocol = \"http\"\ncommand = [\"{}\", \"--workers\", \"1\", \"--no-control-socket\", \"app:app\"]\ncwd = \"{}\"",
        gunicorn().display(),
        workspace_root().join("examples/python-wsgi").display()
    )
}

/// The `[pool.demo]` lines for the Node example.
pub fn node_worker() -> String {
    format!(
        "protocol = \"http\"\ncommand = [\"node\", \"server.js\"]\ncwd = \"{}\"",
        workspace_root().join("examples/node").display()
    )
}

/// `n` keep-alive clients that GET `url` until `done` is set, counting complete 200s in
/// `served`; each returns a description of every request that did not end in one.
pub fn keep_alive_clients(
    url: &str,
    n: usize,
    done: &Arc<std::sync::atomic::AtomicBool>,
    served: &Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    use std::sync::atomic::Ordering;
    (0..n)
        .map(|_| {
            let (done, served, url) = (done.clone(), served.clone(), url.to_owned());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut failures = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(_) => {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.push(format!("body {e}")),
                        },
                        Ok(r) => failures.push(format!("status {}", r.status())),
                        Err(e) => failures.push(format!("error {e:?}")),
                    }
                }
                failures
            })
        })
        .collect()
}

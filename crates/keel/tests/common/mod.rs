//! Test harness: start a real `keel` daemon with a real config and real worker processes,
//! find its ports and workers, talk to it over real sockets, and clean up every process it
//! started even when a test fails.

#![allow(dead_code)]

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
    /// unless the config sets `[log]` itself.
    pub fn start(config: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let mut text = config
            .replace("{demo}", demo_worker().to_str().unwrap())
            .replace("{dir}", dir.path().to_str().unwrap());
        if !text.contains("[log]") {
            text.push_str("\n[log]\nerror_log = \"error.log\"\n");
        }
        let path = dir.path().join("keel.toml");
        std::fs::write(&path, text).unwrap();
        Self::start_with(dir, &["serve", "--config", path.to_str().unwrap()])
    }

    pub fn start_with(dir: tempfile::TempDir, args: &[&str]) -> Daemon {
        let mut child = Command::new(keel_bin())
            .args(args)
            .current_dir(dir.path())
            .env("KEEL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start keel");
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
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log_lines().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no log line containing {needle:?} within {timeout:?}; log:\n{}",
                self.log_lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

pub fn kill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
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

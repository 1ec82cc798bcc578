//! The status page (`GET /` on the admin API): one self-contained HTML page that polls
//! `GET /status`. Checked as HTML and JSON here, and in a real headless Chromium driven over
//! the Chrome DevTools Protocol: it shows every pool and worker, and follows a worker's
//! replacement without being reloaded.
//!
//! The browser test needs Debian's `chromium` (`.ci/run` installs it); without it the test
//! fails, unless `KEEL_SKIP_BROWSER_TESTS=1`. `KEEL_WRITE_SCREENSHOT=1` writes its screenshot
//! to `docs/status-page.png`.

mod common;
use base64::Engine as _;
use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "page-s3cret";

/// Two pools behind one site: `web` (two workers taking one request each, so that slow
/// requests queue) and `reports`; the TCP admin listener with a token.
fn two_pools() -> String {
    format!(
        r#"
[admin]
socket = "admin.sock"
listen = "127.0.0.1:0"
token = "{TOKEN}"

[[site]]
name = "shop"
bindings = ["http://localhost:0"]
app = [{{ path = "/", pool = "web" }}, {{ path = "/reports", pool = "reports" }}]

[pool.web]
command = ["{{demo}}"]
workers = 2
capacity = 1
start = "always"

[pool.reports]
command = ["{{demo}}"]
start = "always"
"#
    )
}

/// Every worker pid of `pool`, from `GET /status` on the unix socket.
fn pids_of(d: &Daemon, pool: &str) -> Vec<u64> {
    let status = d.admin_json("GET", "/status");
    status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == pool)
        .flat_map(|p| p["workers"].as_array().unwrap().clone())
        .map(|w| w["pid"].as_u64().unwrap())
        .collect()
}

fn wait_for_pids(d: &Daemon, pool: &str, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let pids = pids_of(d, pool);
        if pids.len() == n {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "pool {pool}: {pids:?}, not {n} workers"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn page_is_one_self_contained_html_document_and_status_keeps_history() {
    let d = Daemon::start(&two_pools());
    wait_for_pids(&d, "web", 2);

    let page = d.admin("GET", "/", None);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = page.text();
    assert!(html.contains("<title>keel status</title>"), "{html}");
    // Nothing loaded from elsewhere: no linked file, no script or image source, no import.
    for outside in ["<link", " src=", "@import", "url(", "https://"] {
        assert!(!html.contains(outside), "the page refers to {outside:?}");
    }

    // On the TCP listener the page is open (it holds no figure); its figures need the token.
    let addr = admin_tcp_addr(&d);
    let r = tcp_get(addr, "/", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), html);
    assert_eq!(tcp_get(addr, "/status", None).status, 401);
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(tcp_get(addr, "/status", Some(&bearer)).status, 200);

    // An error-log line (a host no binding names) is in the next answer, as in the file.
    assert_eq!(get_host(d.addr(), "nowhere.test", "/").status, 400);
    std::thread::sleep(Duration::from_millis(4500));
    let status = d.admin_json("GET", "/status");
    assert_eq!(status["queue_sample_secs"], 2);
    let recent: Vec<&str> = status["recent_errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(recent, d.error_lines(), "the kept lines are the file's");
    assert!(
        recent.last().unwrap().contains(" 400 - Hostname -"),
        "{recent:?}"
    );
    for pool in status["pools"].as_array().unwrap() {
        let samples = pool["queue_history"].as_array().unwrap();
        assert!(
            (2..=5).contains(&samples.len()),
            "one sample every 2 s: {samples:?}"
        );
        assert!(
            samples.iter().all(|s| s == 0),
            "nothing queued: {samples:?}"
        );
    }
}

/// The browser and everything it started, killed (as a process group) when dropped, so a
/// failing test leaves no Chromium behind.
struct Browser {
    child: Child,
    profile: tempfile::TempDir,
}

impl Browser {
    fn launch(program: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        let child = Command::new(program)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--remote-debugging-port=0",
                "--window-size=1200,800",
                "--hide-scrollbars",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: Drop kills the renderers and helpers with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Browser { child, profile }
    }

    /// The browser's DevTools websocket URL, once Chromium has written `DevToolsActivePort`.
    fn devtools_url(&mut self) -> String {
        let file = self.profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Some((port, path)) = text.split_once('\n')
                && !path.trim().is_empty()
            {
                return format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "chromium exited ({status}) before it listened for DevTools:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(group) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

/// Chromium where Debian puts it, else on PATH.
fn find_chromium() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/bin/chromium");
    if debian.exists() {
        return Some(debian);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|n| dir.join(n)))
        .find(|p| p.exists())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A Chrome DevTools Protocol client attached to one page (a flattened session).
struct Cdp {
    socket: Socket,
    next_id: u64,
    session: Option<String>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to DevTools at {url}: {e}"));
        let mut cdp = Cdp {
            socket,
            next_id: 1,
            session: None,
        };
        let target = cdp
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = cdp
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        cdp.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
        cdp
    }

    /// Sends one command and waits for its answer (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            command["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::text(command.to_string()))
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(message) = self.socket.next().await {
                let Message::Text(text) = message.expect("DevTools connection") else {
                    continue;
                };
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["id"] == id {
                    return value;
                }
            }
            panic!("DevTools closed the connection during {method}");
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer within 30 s"));
        assert!(answer["error"].is_null(), "{method}: {}", answer["error"]);
        answer["result"].clone()
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        assert!(
            r["exceptionDetails"].is_null(),
            "{expression}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    async fn text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Polls the page's text until `ok` holds; panics with the text after `timeout`.
    async fn wait_for_text(&mut self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text().await;
            if ok(&text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page did not show {what} within {timeout:?}; it shows:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Whether `pid` is one of the words of the workers table.
async fn workers_table_has(cdp: &mut Cdp, pid: u64) -> bool {
    let table = cdp
        .eval("document.getElementById('workers').innerText")
        .await;
    let pid = pid.to_string();
    table
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .any(|w| w == pid)
}

#[tokio::test(flavor = "multi_thread")]
async fn page_in_chromium_shows_pools_and_workers_and_follows_a_replaced_worker() {
    let Some(chromium) = find_chromium() else {
        if std::env::var("KEEL_SKIP_BROWSER_TESTS").as_deref() == Ok("1") {
            eprintln!("skipped: chromium is not installed and KEEL_SKIP_BROWSER_TESTS=1");
            return;
        }
        panic!(
            "chromium is not installed: the status page test needs it (Debian: apt-get install \
             --no-install-recommends chromium; .ci/run does this). Set KEEL_SKIP_BROWSER_TESTS=1 \
             to skip this test."
        );
    };
    let d = Daemon::start(&two_pools());
    let web = wait_for_pids(&d, "web", 2);
    let reports = wait_for_pids(&d, "reports", 1);
    let admin = admin_tcp_addr(&d);

    // Something to see: an error-log line, and slow requests that queue in `web` (two
    // workers, one request each) while the page loads.
    assert_eq!(get_host(d.addr(), "nowhere.test", "/").status, 400);
    let site = d.addr();
    let slow: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || get_host(site, "localhost", "/sleep?ms=2500").status))
        .collect();

    let mut browser = Browser::launch(&chromium);
    let mut cdp = Cdp::connect(&browser.devtools_url()).await;
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1200, "height": 800, "deviceScaleFactor": 1, "mobile": false }),
    )
    .await;
    cdp.call(
        "Page.navigate",
        json!({ "url": format!("http://{admin}/") }),
    )
    .await;

    // On the TCP listener the page asks for the token before it shows anything.
    cdp.wait_for_text("the token form", Duration::from_secs(10), |t| {
        t.contains("keel status") && t.contains("Admin token")
    })
    .await;
    assert!(!cdp.text().await.contains(&web[0].to_string()));
    cdp.eval(&format!(
        "document.getElementById('token').value = '{TOKEN}'; \
         document.getElementById('login').requestSubmit(); true"
    ))
    .await;
    let all: Vec<u64> = web.iter().chain(&reports).copied().collect();
    cdp.wait_for_text(
        "both pools and every worker pid",
        Duration::from_secs(10),
        |t| {
            t.contains("web")
                && t.contains("reports")
                && all.iter().all(|pid| t.contains(&pid.to_string()))
        },
    )
    .await;
    for s in slow {
        assert_eq!(s.join().unwrap(), 200);
    }

    // A mark that a reload would wipe: what follows happens in the same page.
    cdp.eval("window.keelTestMark = 'same page'; true").await;
    let killed = reports[0];
    kill(killed as u32);
    let deadline = Instant::now() + Duration::from_secs(10);
    let replacement = loop {
        if let Some(&pid) = pids_of(&d, "reports").iter().find(|&&p| p != killed) {
            break pid;
        }
        assert!(Instant::now() < deadline, "no worker replaced {killed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if workers_table_has(&mut cdp, replacement).await
            && !workers_table_has(&mut cdp, killed).await
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "within 10 s the page did not show {replacement} in place of {killed}:\n{}",
            cdp.text().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(cdp.eval("window.keelTestMark").await, "same page");
    let text = cdp.text().await;
    assert!(text.contains("Hostname"), "the error-log line: {text}");

    let shot = cdp
        .call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": false }),
        )
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    if std::env::var("KEEL_WRITE_SCREENSHOT").as_deref() == Ok("1") {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/status-page.png");
        std::fs::write(&path, &png).unwrap();
        eprintln!("wrote {} ({} bytes)", path.display(), png.len());
    }
    drop(cdp);
    drop(browser);
}

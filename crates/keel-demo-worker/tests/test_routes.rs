//! The routes and start-up switches the pool manager's tests rely on, checked against the
//! real binary. The binary joins a stand-in daemon the way a worker started by hand does:
//! `KEEL_ATTACH` names a socket, the token is read from `token` beside it.

use bytes::{Bytes, BytesMut};
use keel_proto::{
    DEFAULT_MAX_PAYLOAD, Decoder, Frame, HttpVersion, PROTOCOL_VERSION, RequestHead, Welcome,
    encode,
};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};

const PATIENCE: Duration = Duration::from_secs(10);
const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A stand-in daemon's attach socket with the demo worker started against it.
struct Setup {
    dir: tempfile::TempDir,
    listener: UnixListener,
    child: Child,
}

fn spawn(envs: &[(&str, &str)]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("worker.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_keel-demo-worker"))
        .env_remove("KEEL_FD")
        .env_remove("KEEL_ATTACH_TOKEN")
        .env_remove("KEEL_DEMO_THREADS")
        .env("KEEL_ATTACH", &socket)
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Setup {
        dir,
        listener,
        child,
    }
}

struct Daemon {
    setup: Setup,
    socket: UnixStream,
    decoder: Decoder,
    buf: BytesMut,
}

impl Daemon {
    /// Starts the demo worker, checks its preamble and HELLO, answers WELCOME.
    async fn start() -> Daemon {
        let setup = spawn(&[]);
        let (socket, _) = tokio::time::timeout(PATIENCE, setup.listener.accept())
            .await
            .expect("the demo worker did not connect")
            .unwrap();
        let mut daemon = Daemon {
            setup,
            socket,
            decoder: Decoder::new(DEFAULT_MAX_PAYLOAD),
            buf: BytesMut::new(),
        };
        let preamble = format!("KEEL-ATTACH {TOKEN}\n");
        while daemon.buf.len() < preamble.len() {
            daemon.read().await;
        }
        assert_eq!(&daemon.buf[..preamble.len()], preamble.as_bytes());
        let _ = daemon.buf.split_to(preamble.len());
        let Frame::Hello(_) = daemon.recv().await else {
            panic!("no HELLO after the preamble");
        };
        daemon
            .send(Frame::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                max_payload: DEFAULT_MAX_PAYLOAD,
                initial_window: 1 << 18,
                capacity: 4,
                pool: Bytes::from_static(b"demo"),
            }))
            .await;
        daemon
    }

    async fn read(&mut self) {
        self.buf.reserve(64 * 1024);
        let n = tokio::time::timeout(PATIENCE, self.socket.read_buf(&mut self.buf))
            .await
            .expect("nothing from the worker in time")
            .unwrap();
        assert!(n > 0, "the worker closed the connection");
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        encode(&frame, &mut out).unwrap();
        self.socket.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> Frame {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf).unwrap() {
                return frame;
            }
            self.read().await;
        }
    }

    /// The next frame, or `None` if the worker says nothing for `quiet`.
    async fn recv_within(&mut self, quiet: Duration) -> Option<Frame> {
        tokio::time::timeout(quiet, self.recv()).await.ok()
    }

    async fn get(&mut self, id: u32, target: &str) -> (u16, String) {
        self.send(request(id, target)).await;
        let mut status = None;
        let mut body = Vec::new();
        loop {
            match self.recv().await {
                Frame::Started { id: i } if i == id => {}
                Frame::Response(head) if head.id == id => {
                    status = Some(head.status);
                    body.extend_from_slice(&head.body);
                    if head.end {
                        break;
                    }
                }
                Frame::Data { id: i, data, end } if i == id => {
                    body.extend_from_slice(&data);
                    if end {
                        break;
                    }
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
        (status.unwrap(), String::from_utf8(body).unwrap())
    }

    fn pid(&self) -> u32 {
        self.setup.child.id().unwrap()
    }
}

fn request(id: u32, target: &str) -> Frame {
    Frame::Request(RequestHead {
        id,
        method: Bytes::from_static(b"GET"),
        target: Bytes::copy_from_slice(target.as_bytes()),
        version: HttpVersion::Http11,
        tls: false,
        server_name: Bytes::new(),
        client: None,
        local: None,
        deadline_ms: 0,
        headers: vec![(Bytes::from_static(b"host"), Bytes::from_static(b"demo"))],
        body: Bytes::new(),
        end: true,
    })
}

/// The values of a `/proc/<pid>/status` line.
fn status_field(pid: &str, name: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn whoami_tells_the_real_ids() {
    let mut daemon = Daemon::start().await;
    let (status, body) = daemon.get(1, "/whoami").await;
    assert_eq!(status, 200);
    // The child has the test's identity.
    let expected = format!(
        "uid={} gid={} groups={}",
        status_field("self", "Uid:")[0],
        status_field("self", "Gid:")[0],
        status_field("self", "Groups:").join(",")
    );
    assert_eq!(body, expected);
}

#[tokio::test]
async fn alloc_grows_the_resident_set_and_keeps_it() {
    let mut daemon = Daemon::start().await;
    let pid = daemon.pid().to_string();
    let rss_kib = |pid: &str| -> u64 { status_field(pid, "VmRSS:")[0].parse().unwrap() };
    let before = rss_kib(&pid);
    assert_eq!(
        daemon.get(1, "/alloc?mb=64").await,
        (200, "allocated 64 MiB".into())
    );
    let after = rss_kib(&pid);
    assert!(
        after >= before + 60 * 1024,
        "RSS {before} KiB -> {after} KiB"
    );
    // Kept: a second allocation adds to it.
    assert_eq!(
        daemon.get(3, "/alloc?mb=16").await,
        (200, "allocated 16 MiB".into())
    );
    assert!(rss_kib(&pid) >= after + 15 * 1024);
    assert_eq!(daemon.get(5, "/alloc").await.0, 400);
}

#[tokio::test]
async fn hang_stops_the_read_loop_so_pings_go_unanswered() {
    let mut daemon = Daemon::start().await;
    daemon.send(Frame::Ping { nonce: 1 }).await;
    assert_eq!(daemon.recv().await, Frame::Pong { nonce: 1 });
    daemon.send(request(1, "/hang")).await;
    assert_eq!(daemon.recv().await, Frame::Started { id: 1 });
    daemon.send(Frame::Ping { nonce: 2 }).await;
    assert_eq!(daemon.recv_within(Duration::from_secs(1)).await, None);
    assert!(daemon.setup.child.try_wait().unwrap().is_none());
}

#[tokio::test]
async fn fail_file_with_fail_exits_1_before_connecting() {
    let flag = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(flag.path(), "fail\n").unwrap();
    let setup = spawn(&[("KEEL_DEMO_FAIL_FILE", flag.path().to_str().unwrap())]);
    let out = tokio::time::timeout(PATIENCE, setup.child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("keel-demo-worker: failing at start (KEEL_DEMO_FAIL_FILE)"),
        "{stderr}"
    );
    // It never connected.
    let accepted = tokio::time::timeout(Duration::from_millis(100), setup.listener.accept()).await;
    assert!(accepted.is_err());
}

#[tokio::test]
async fn fail_file_with_hang_never_says_hello_and_other_content_is_ignored() {
    let flag = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(flag.path(), " hang ").unwrap();
    let mut setup = spawn(&[("KEEL_DEMO_FAIL_FILE", flag.path().to_str().unwrap())]);
    let accepted = tokio::time::timeout(Duration::from_secs(1), setup.listener.accept()).await;
    assert!(accepted.is_err(), "a hanging worker connected");
    assert!(setup.child.try_wait().unwrap().is_none());
    setup.child.kill().await.unwrap();

    // Anything but `fail` and `hang` (or no file at all) starts normally.
    for content in [Some("ok"), None] {
        let flag = tempfile::NamedTempFile::new().unwrap();
        match content {
            Some(content) => std::fs::write(flag.path(), content).unwrap(),
            None => std::fs::remove_file(flag.path()).unwrap(),
        }
        let setup = spawn(&[("KEEL_DEMO_FAIL_FILE", flag.path().to_str().unwrap())]);
        tokio::time::timeout(PATIENCE, setup.listener.accept())
            .await
            .expect("the worker did not connect")
            .unwrap();
    }
}

#[tokio::test]
async fn start_delay_postpones_connecting() {
    let started = Instant::now();
    let setup = spawn(&[("KEEL_DEMO_START_DELAY_MS", "400")]);
    tokio::time::timeout(PATIENCE, setup.listener.accept())
        .await
        .expect("the worker did not connect")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));
    drop(setup.dir);
}

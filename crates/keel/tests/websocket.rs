//! WebSocket (and any HTTP/1.1 upgrade) through keel: the request is routed, queued and
//! dispatched like any other; the worker's 101 turns the client connection into two byte
//! streams over the worker stream, under its windows; either side's close closes the other.

mod common;
use common::*;

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: SocketAddr, path: &str) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("WebSocket handshake to {path}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// Message `i` of the echo test: text or binary in turn, sizes up to exactly 1 MiB (every
/// 50th message is 1 MiB, the others a few KiB), contents that tell them apart.
fn message(i: usize) -> Message {
    let len = if i.is_multiple_of(50) {
        1 << 20
    } else {
        (i * 7919) % (16 * 1024)
    };
    let fill = b'a' + (i % 26) as u8;
    if i.is_multiple_of(2) {
        Message::Binary(vec![fill; len].into())
    } else {
        Message::Text(String::from_utf8(vec![fill; len]).unwrap().into())
    }
}

/// Sends `count` messages while reading their echoes (both at once: a client that only
/// writes would, rightly, be stopped by the windows once the echoes fill them).
async fn echo_messages(ws: Ws, count: usize) {
    let (mut tx, mut rx) = ws.split();
    let writer = tokio::spawn(async move {
        for i in 0..count {
            tx.send(message(i)).await.unwrap();
        }
        tx
    });
    for i in 0..count {
        let got = tokio::time::timeout(Duration::from_secs(30), rx.next())
            .await
            .unwrap_or_else(|_| panic!("echo {i} did not come back"))
            .unwrap_or_else(|| panic!("stream ended before echo {i}"))
            .unwrap();
        assert!(got == message(i), "echo {i} differs (len {})", got.len());
    }
    let mut tx = writer.await.unwrap();
    tx.send(Message::Close(None)).await.unwrap();
    // The worker answers the close, and the connection ends.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = rx.next().await {}
    })
    .await;
    assert!(end.is_ok(), "the connection did not end after the close");
}

/// Open WebSocket sessions of the demo worker, by `/ws-open`.
fn ws_open(addr: SocketAddr) -> u64 {
    let r = get(addr, "/ws-open");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text().trim().parse().unwrap()
}

fn wait_ws_open(addr: SocketAddr, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = ws_open(addr);
        if n == want {
            return;
        }
        assert!(Instant::now() < deadline, "{n} sessions open, not {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echoes_a_thousand_messages_up_to_one_mib() {
    let d = Daemon::start(&format!(
        "{}\n[log]\nerror_log = \"error.log\"\naccess_log = \"access.log\"\naccess_format = \"json\"\n",
        demo_config("workers = 1")
    ));
    let ws = connect(d.addr(), "/ws").await;
    echo_messages(ws, 1000).await;

    // One access-log line for the whole connection: 101, and the bytes of each way.
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let log = std::fs::read_to_string(d.dir.path().join("access.log")).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("/ws")) {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no access-log line for /ws");
        std::thread::sleep(Duration::from_millis(20));
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 101, "{line}");
    let payload: u64 = (0..1000).map(|i| message(i).len() as u64).sum();
    let sent = v["bytes_sent"].as_u64().unwrap();
    let received = v["bytes_received"].as_u64().unwrap();
    // Framing adds a few bytes per message (and the client's are masked: 4 more).
    assert!(sent >= payload && sent < payload + 20_000, "{line}");
    assert!(received >= payload && received < payload + 20_000, "{line}");
    assert!(d.error_lines().is_empty(), "{:?}", d.error_lines());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_sees_the_upgrade_fields_and_a_non_101_answer_keeps_the_connection() {
    let d = Daemon::start(&demo_config("workers = 1"));
    // Upgrade without Connection: upgrade is no upgrade: the worker sees neither field.
    let r = raw_request(
        d.addr(),
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 426, "{}", r.text());
    // With both, it sees them (and answers 400 here: no Sec-WebSocket-Key); the connection
    // stays usable for the next request.
    use std::io::{BufReader, Write};
    let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n",
    )
    .unwrap();
    let mut rd = BufReader::new(s.try_clone().unwrap());
    let r = read_response(&mut rd).unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let r = read_response(&mut rd).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello from keel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_requests_never_come_from_the_cache() {
    let d = Daemon::start(&format!(
        "{}\n[cache]\nadmission = \"always\"\n",
        demo_config("workers = 1")
    ));
    let upgrade = b"GET /cached?ttl=60&id=up HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
    for _ in 0..3 {
        assert_eq!(raw_request(d.addr(), upgrade).status, 200);
    }
    assert_eq!(get(d.addr(), "/count?id=up").text(), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_websocket_reader_does_not_stall_other_requests_on_the_same_worker() {
    let d = Daemon::start(&demo_config("workers = 1\ncapacity = 8"));
    assert_eq!(get(d.addr(), "/").status, 200);
    let daemon_before = rss_kib(d.pid());
    // The worker sends 1 GB at once; this client reads none of it.
    let flood = connect(d.addr(), "/ws?flood=1000000000").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let worker_pid: u32 = get(d.addr(), "/pid").text().trim().parse().unwrap();
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
    assert_eq!(ws_open(d.addr()), 1);
    // What the worker sent and the client did not read waits in the socket buffers and one
    // window, not in the daemon's memory.
    let grown = rss_kib(d.pid()).saturating_sub(daemon_before);
    assert!(grown < 16 * 1024, "the daemon grew by {grown} KiB");
    // The same worker served everything.
    let pid: u32 = get(d.addr(), "/pid").text().trim().parse().unwrap();
    assert_eq!(pid, worker_pid);
    // The client reads on: the flood is intact.
    let (_tx, mut rx) = flood.split();
    for _ in 0..64 {
        match rx.next().await.unwrap().unwrap() {
            Message::Binary(b) => assert!(b.len() == 64 * 1024 && b.iter().all(|&c| c == b'x')),
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(rx);
    drop(_tx);
    wait_ws_open(d.addr(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_closing_closes_the_workers_side() {
    let d = Daemon::start(&demo_config("workers = 1"));
    // A close handshake.
    let mut ws = connect(d.addr(), "/ws").await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    assert_eq!(ws_open(d.addr()), 1);
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    wait_ws_open(d.addr(), 0);
    // A client that just goes away (TCP close, no close frame).
    let mut ws = connect(d.addr(), "/ws").await;
    ws.send(Message::binary(vec![1u8; 100])).await.unwrap();
    ws.next().await.unwrap().unwrap();
    assert_eq!(ws_open(d.addr()), 1);
    drop(ws);
    wait_ws_open(d.addr(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_is_closed_after_idle_connection_and_a_busy_one_is_not() {
    let d = Daemon::start(
        &demo_config("workers = 1")
            .replace("[listener]\n", "[listener]\nidle_connection = \"1s\"\n"),
    );
    let mut idle = connect(d.addr(), "/ws").await;
    let mut busy = connect(d.addr(), "/ws").await;
    let started = Instant::now();
    // The busy one exchanges a message every 300 ms, for twice the idle limit.
    while started.elapsed() < Duration::from_millis(2000) {
        busy.send(Message::text("ping")).await.unwrap();
        assert_eq!(busy.next().await.unwrap().unwrap(), Message::text("ping"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The idle one was closed by then (cleanly: the client sees the end, not a reset).
    let end = tokio::time::timeout(Duration::from_secs(1), idle.next())
        .await
        .expect("the idle WebSocket is still open");
    assert!(
        matches!(
            end,
            None | Some(Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
            )))
        ),
        "{end:?}"
    );
    wait_ws_open(d.addr(), 1);
    assert!(
        d.error_lines()
            .iter()
            .any(|l| l.contains("/ws") && l.contains("Timer_ConnectionIdle")),
        "{:?}",
        d.error_lines()
    );
    busy.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        busy.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_closes_the_websocket_and_a_new_worker_serves_the_next_request() {
    let d = Daemon::start(&demo_config("workers = 1"));
    let old: u32 = get(d.addr(), "/pid").text().trim().parse().unwrap();
    let mut ws = connect(d.addr(), "/ws").await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));
    kill(old);
    // The client sees its connection end, cleanly (FIN, not RST), at once.
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the WebSocket hangs after its worker was killed");
    match end {
        None | Some(Ok(Message::Close(_))) => {}
        Some(Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ))) => {}
        other => panic!("not a clean close: {other:?}"),
    }
    let r = get(d.addr(), "/pid");
    assert_eq!(r.status, 200);
    let new: u32 = r.text().trim().parse().unwrap();
    assert_ne!(new, old);
    // And a new WebSocket works.
    let ws = connect(d.addr(), "/ws").await;
    echo_messages(ws, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_websocket_upgrade_works_through_keel() {
    let example = keel_bin().parent().unwrap().join("examples/axum_worker");
    assert!(
        example.exists(),
        "{} is missing: `cargo nextest run --workspace` builds the examples",
        example.display()
    );
    let cfg = demo_config("").replace("{demo}", example.to_str().unwrap());
    let d = Daemon::start(&cfg);
    let ws = connect(d.addr(), "/ws").await;
    echo_messages(ws, 60).await;
    // Plain requests still go straight to the router.
    assert_eq!(get(d.addr(), "/").text(), "Hello from axum");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_tls() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let pki = common::pki::Pki::new();
    pki.leaf("ws.test");
    let d = Daemon::start(&format!(
        r#"
[[site]]
name = "ws"
bindings = ["https://ws.test:0"]
{tls}
app = [{{ path = "/", pool = "demo" }}]

[pool.demo]
command = ["{{demo}}"]
workers = 1
"#,
        tls = pki.tls("ws.test")
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // WebSocket runs over HTTP/1.1 (RFC 8441 over HTTP/2 is not carried).
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(d.addr()).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("ws.test").unwrap(), tcp)
        .await
        .unwrap();
    let (ws, resp) = tokio_tungstenite::client_async("wss://ws.test/ws", tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    let (mut tx, mut rx) = ws.split();
    for i in 0..100 {
        tx.send(message(i)).await.unwrap();
        assert!(rx.next().await.unwrap().unwrap() == message(i), "echo {i}");
    }
    tx.send(Message::Close(None)).await.unwrap();
    while let Some(Ok(_)) = rx.next().await {}
}

#[test]
fn a_worker_without_upgrades_sees_an_upgrade_requests_body_as_empty() {
    // The Python SDK's ASGI demo reads the body of POST /echo; an upgrade request comes
    // without END (the worker may answer 101), so reading it must not wait for one.
    let d = Daemon::start(&worker_config(&python_demo_worker(), "workers = 1"));
    let t = Instant::now();
    let r = raw_request(
        d.addr(),
        b"POST /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    // The stream closed (the daemon ended its request direction): the worker serves on.
    assert_eq!(get(d.addr(), "/").status, 200);
}

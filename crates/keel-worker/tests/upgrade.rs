//! Upgrades (101) on the worker side of the protocol, seen from the daemon's chair: the
//! stream's two byte directions under their windows, for `serve` (the SDK's own
//! `OnUpgrade`) and for `serve_service` (hyper's), and every way such a stream ends.

mod fake_daemon;

use bytes::Bytes;
use fake_daemon::{FakeDaemon, pattern};
use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use keel_proto::{AbortCode, Frame, HttpVersion, RequestHead};
use keel_worker::Body;
use keel_worker::upgrade::UpgradeError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// A REQUEST that asks to upgrade (or not), without END as the daemon sends it.
fn upgrade_request(id: u32, target: &str, asks: bool) -> Frame {
    let mut headers = vec![(
        Bytes::from_static(b"host"),
        Bytes::from_static(b"example.test"),
    )];
    if asks {
        headers.push((Bytes::from_static(b"upgrade"), Bytes::from_static(b"echo")));
        headers.push((
            Bytes::from_static(b"connection"),
            Bytes::from_static(b"upgrade"),
        ));
    }
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
        headers,
        body: Bytes::new(),
        end: !asks,
    })
}

fn switching() -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    res.headers_mut().insert("upgrade", "echo".parse().unwrap());
    res.headers_mut()
        .insert("connection", "upgrade".parse().unwrap());
    res
}

/// Copies everything read back to the writer, then ends its side.
async fn echo<S: AsyncRead + AsyncWrite>(io: S) {
    let (mut rd, mut wr) = tokio::io::split(io);
    let _ = tokio::io::copy(&mut rd, &mut wr).await;
    let _ = wr.shutdown().await;
}

/// Plays the daemon of an upgraded stream: sends `total` bytes as the request window
/// allows, grants back what comes, checks the worker keeps within the response window, and
/// returns what the worker sent until its END.
async fn drive_echo(daemon: &mut FakeDaemon, id: u32, window: u32, total: usize) -> Vec<u8> {
    let data = pattern(total);
    let (mut sent, mut request_window, mut response_window) =
        (0usize, window as usize, window as i64);
    let mut ended = false;
    let mut got = Vec::new();
    loop {
        while sent < total && request_window > 0 {
            let n = (total - sent).min(request_window).min(16 * 1024);
            daemon
                .send(Frame::Data {
                    id,
                    data: Bytes::copy_from_slice(&data[sent..sent + n]),
                    end: false,
                })
                .await;
            sent += n;
            request_window -= n;
        }
        if sent == total && !ended {
            daemon
                .send(Frame::Data {
                    id,
                    data: Bytes::new(),
                    end: true,
                })
                .await;
            ended = true;
        }
        match daemon.recv().await {
            Frame::Data { id: i, data, end } => {
                assert_eq!(i, id);
                response_window -= data.len() as i64;
                assert!(response_window >= 0, "the worker overran its window");
                got.extend_from_slice(&data);
                if !data.is_empty() {
                    daemon
                        .send(Frame::Window {
                            id,
                            increment: data.len() as u32,
                        })
                        .await;
                    response_window += data.len() as i64;
                }
                if end {
                    assert!(ended, "the worker ended before the client did");
                    return got;
                }
            }
            Frame::Window { id: i, increment } => {
                assert_eq!(i, id);
                request_window += increment as usize;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn expect_101(daemon: &mut FakeDaemon, id: u32) {
    let head = daemon.expect_started_response(id).await;
    assert_eq!(head.status, 101);
    assert!(!head.end, "a 101 keeps the response direction open");
    assert!(head.body.is_empty());
    assert!(
        head.headers
            .iter()
            .any(|(n, v)| &n[..] == b"upgrade" && &v[..] == b"echo")
    );
}

const WINDOW: u32 = 64 * 1024;

#[tokio::test]
async fn a_101_hands_the_stream_to_the_handler_both_ways_under_the_windows() {
    let mut daemon = FakeDaemon::start(WINDOW, |worker| {
        worker.serve(|mut req: Request<Body>| async move {
            let on_upgrade = keel_worker::upgrade::on(&mut req);
            tokio::spawn(async move { echo(on_upgrade.await.unwrap()).await });
            switching()
        })
    })
    .await;
    daemon.send(upgrade_request(1, "/up", true)).await;
    expect_101(&mut daemon, 1).await;
    let total = 300 * 1024;
    let got = drive_echo(&mut daemon, 1, WINDOW, total).await;
    assert!(got == pattern(total), "the echo differs");
    // Both directions ended: the stream is closed, its id free again.
    daemon.send(upgrade_request(1, "/up", true)).await;
    expect_101(&mut daemon, 1).await;
}

#[tokio::test]
async fn serve_service_gives_the_service_hypers_on_upgrade() {
    use tower::ServiceExt as _;
    let router = axum::Router::new().route(
        "/up",
        axum::routing::get(|mut req: axum::extract::Request| async move {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move { echo(TokioIo::new(on_upgrade.await.unwrap())).await });
            switching().map(axum::body::Body::new)
        }),
    );
    let router = router.map_request(|req: Request<Body>| req.map(axum::body::Body::new));
    let mut daemon = FakeDaemon::start(WINDOW, move |worker| worker.serve_service(router)).await;
    daemon.send(upgrade_request(3, "/up", true)).await;
    expect_101(&mut daemon, 3).await;
    let total = 200 * 1024;
    let got = drive_echo(&mut daemon, 3, WINDOW, total).await;
    assert!(got == pattern(total), "the echo differs");
}

#[tokio::test]
async fn a_non_101_answer_fails_the_on_upgrade_and_the_stream_closes_at_end() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut daemon = FakeDaemon::start(WINDOW, move |worker| {
        worker.serve(move |mut req: Request<Body>| {
            let on_upgrade = keel_worker::upgrade::on(&mut req);
            let tx = tx.clone();
            async move {
                tokio::spawn(async move {
                    let _ = tx.send(on_upgrade.await.map(|_| ()));
                });
                Response::new(Body::from("no upgrade here"))
            }
        })
    })
    .await;
    daemon.send(upgrade_request(1, "/", true)).await;
    let head = daemon.expect_started_response(1).await;
    assert_eq!(head.status, 200);
    assert!(head.end);
    let result = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert_eq!(result.unwrap().unwrap(), Err(UpgradeError::NotUpgraded));
    // The daemon ends the request direction; the worker owes nothing more.
    daemon
        .send(Frame::Data {
            id: 1,
            data: Bytes::new(),
            end: true,
        })
        .await;
    assert_eq!(daemon.recv_within(Duration::from_millis(200)).await, None);
    daemon.send(upgrade_request(1, "/", false)).await;
    let head = daemon.expect_started_response(1).await;
    assert_eq!(head.status, 200);
}

#[tokio::test]
async fn a_101_to_a_request_that_did_not_ask_aborts_the_stream_instead() {
    let mut daemon = FakeDaemon::start(WINDOW, |worker| {
        worker.serve(|_req: Request<Body>| async move { switching() })
    })
    .await;
    daemon.send(upgrade_request(1, "/", false)).await;
    assert_eq!(daemon.recv().await, Frame::Started { id: 1 });
    assert_eq!(
        daemon.recv().await,
        Frame::Abort {
            id: 1,
            code: AbortCode::HandlerFailed
        }
    );
}

#[tokio::test]
async fn an_abort_from_the_daemon_ends_the_upgraded_stream_for_its_task() {
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let mut daemon = FakeDaemon::start(WINDOW, move |worker| {
        worker.serve(move |mut req: Request<Body>| {
            let on_upgrade = keel_worker::upgrade::on(&mut req);
            let flag = flag.clone();
            async move {
                tokio::spawn(async move {
                    let mut io = on_upgrade.await.unwrap();
                    // Writes until the stream is gone; stops at the window meanwhile.
                    while io.write_all(&[7u8; 4096]).await.is_ok() {}
                    flag.store(true, Ordering::SeqCst);
                });
                switching()
            }
        })
    })
    .await;
    daemon.send(upgrade_request(1, "/flood", true)).await;
    expect_101(&mut daemon, 1).await;
    let mut received = 0;
    while received < WINDOW as usize {
        match daemon.recv().await {
            Frame::Data { data, .. } => received += data.len(),
            other => panic!("unexpected {other:?}"),
        }
    }
    // The window is spent: the worker waits for credit, and sends nothing more.
    assert_eq!(daemon.recv_within(Duration::from_millis(200)).await, None);
    assert!(!done.load(Ordering::SeqCst));
    daemon
        .send(Frame::Abort {
            id: 1,
            code: AbortCode::ClientGone,
        })
        .await;
    assert!(matches!(daemon.recv().await, Frame::Abort { id: 1, .. }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer still waits after the abort"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

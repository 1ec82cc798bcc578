//! The worker side of keel's protocol, seen from the daemon's chair: each test plays the
//! daemon over a socketpair against a worker running in this process.

mod fake_daemon;

use bytes::Bytes;
use fake_daemon::{FakeDaemon, pattern, request};
use futures_util::stream;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::{Full, StreamBody, combinators::UnsyncBoxBody};
use keel_proto::{AbortCode, DEFAULT_MAX_PAYLOAD, Frame, PROTOCOL_VERSION};
use keel_worker::{Body, CachePolicy, RequestInfo};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

type TestBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

const BIG: usize = 1 << 20;

fn boxed<B>(body: B) -> TestBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// The application every test runs, one route per behaviour.
async fn app(req: Request<Body>, dropped: Arc<AtomicBool>) -> Response<TestBody> {
    match req.uri().path() {
        "/hello" => {
            let info = req.extensions().get::<RequestInfo>().unwrap();
            assert_eq!(info.client, Some("127.0.0.1:40000".parse().unwrap()));
            let mut res = Response::new(boxed(Full::new(Bytes::from_static(b"hello"))));
            res.headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            res.headers_mut()
                .insert("connection", "keep-alive".parse().unwrap());
            res.extensions_mut().insert(CachePolicy::Ttl(60));
            res
        }
        "/echo" => Response::new(boxed(req.into_body())),
        "/big" => {
            let chunks = (0..BIG / 65536).map(|i| {
                let chunk = Bytes::from(vec![i as u8; 65536]);
                Ok::<_, Infallible>(http_body::Frame::data(chunk))
            });
            Response::new(boxed(StreamBody::new(stream::iter(chunks))))
        }
        "/block" => {
            struct Guard(Arc<AtomicBool>);
            impl Drop for Guard {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _guard = Guard(dropped);
            std::future::pending::<()>().await;
            unreachable!()
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Response::new(boxed(Full::new(Bytes::from_static(b"done"))))
        }
        "/panic" => panic!("handler panics on purpose"),
        _ => {
            let mut res = Response::new(boxed(Full::new(Bytes::from_static(b"not found"))));
            *res.status_mut() = StatusCode::NOT_FOUND;
            res
        }
    }
}

async fn start(initial_window: u32) -> (FakeDaemon, Arc<AtomicBool>) {
    start_over(initial_window, false).await
}

/// As [`start`], the worker on an in-memory pipe instead of a socket.
async fn start_in_memory(initial_window: u32) -> (FakeDaemon, Arc<AtomicBool>) {
    start_over(initial_window, true).await
}

async fn start_over(initial_window: u32, in_memory: bool) -> (FakeDaemon, Arc<AtomicBool>) {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let serve = move |worker: keel_worker::Worker| worker.serve(move |req| app(req, flag.clone()));
    let daemon = if in_memory {
        FakeDaemon::start_in_memory(initial_window, serve).await
    } else {
        FakeDaemon::start(initial_window, serve).await
    };
    (daemon, dropped)
}

#[tokio::test]
async fn hello_announces_version_pid_capacity_and_software() {
    let (daemon, _) = start(256 * 1024).await;
    assert_eq!(daemon.hello.version, PROTOCOL_VERSION);
    assert_eq!(daemon.hello.pid, std::process::id());
    assert_eq!(daemon.hello.capacity, 8);
    assert_eq!(daemon.hello.max_payload, DEFAULT_MAX_PAYLOAD);
    assert!(daemon.hello.software.starts_with(b"keel-worker/"));
}

async fn small_get_case(mut daemon: FakeDaemon) {
    daemon.send(request(1, "GET", "/hello", b"", true)).await;
    let head = daemon.expect_started_response(1).await;
    assert_eq!(head.status, 200);
    assert!(head.end, "a small complete body travels inside the head");
    assert_eq!(head.body, Bytes::from_static(b"hello"));
    assert_eq!(head.cache, CachePolicy::Ttl(60));
    let names: Vec<&[u8]> = head.headers.iter().map(|(n, _)| &n[..]).collect();
    assert_eq!(
        names,
        [&b"content-type"[..]],
        "hop-by-hop headers are dropped"
    );
    assert_eq!(
        daemon.recv_within(Duration::from_millis(100)).await,
        None,
        "nothing follows a complete response"
    );
}

#[tokio::test]
async fn small_get_is_answered_inline_in_one_frame() {
    small_get_case(start(256 * 1024).await.0).await;
}

#[tokio::test]
async fn small_get_is_answered_inline_in_one_frame_over_an_in_memory_pipe() {
    small_get_case(start_in_memory(256 * 1024).await.0).await;
}

#[tokio::test]
async fn started_precedes_response_on_every_stream() {
    let (mut daemon, _) = start(256 * 1024).await;
    for id in 1..=20 {
        daemon.send(request(id, "GET", "/nope", b"", true)).await;
    }
    let mut started = std::collections::HashSet::new();
    let mut answered = 0;
    while answered < 20 {
        match daemon.recv().await {
            Frame::Started { id } => assert!(started.insert(id)),
            Frame::Response(head) => {
                assert!(started.contains(&head.id), "RESPONSE before STARTED");
                assert_eq!(head.status, 404);
                answered += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn echo_of_one_mib_grants_request_window_only_as_the_body_is_consumed() {
    const WINDOW: u32 = 128 * 1024;
    const CHUNK: usize = 16 * 1024;
    let (mut daemon, _) = start(WINDOW).await;
    let input = pattern(BIG);
    daemon.send(request(1, "POST", "/echo", b"", false)).await;

    let mut sent = 0; // request-body bytes the daemon sent
    let mut request_window = WINDOW as usize;
    let mut granted = 0; // request window the worker gave back
    let mut echoed = Vec::with_capacity(BIG);
    let mut response_ended = false;
    // Phase 1 withholds response credit: the worker can echo one window and no more, so it
    // consumes at most that much of the request body and must grant no more than it consumed.
    let mut phase_two = false;
    loop {
        while sent < BIG && request_window > 0 {
            let n = CHUNK.min(request_window).min(BIG - sent);
            let end = sent + n == BIG;
            let data = Bytes::copy_from_slice(&input[sent..sent + n]);
            daemon.send(Frame::Data { id: 1, data, end }).await;
            sent += n;
            request_window -= n;
        }
        if response_ended && sent == BIG {
            break;
        }
        let frame = match daemon.recv_within(Duration::from_millis(300)).await {
            Some(frame) => frame,
            None => {
                assert!(!phase_two, "the echo stalled with credit on both sides");
                // Quiet: the worker is waiting for response credit.
                assert!(sent < BIG, "the worker granted window it had not consumed");
                assert!(echoed.len() <= WINDOW as usize);
                phase_two = true;
                let owed = echoed.len() as u32;
                daemon
                    .send(Frame::Window {
                        id: 1,
                        increment: owed,
                    })
                    .await;
                continue;
            }
        };
        match frame {
            Frame::Started { id: 1 } => {}
            Frame::Window { id: 1, increment } => {
                granted += increment as usize;
                request_window += increment as usize;
                // Consumed = echoed + what the handler holds (the inline gather and one chunk).
                assert!(
                    granted <= echoed.len() + 64 * 1024 + CHUNK,
                    "granted {granted} but only {} echoed",
                    echoed.len()
                );
            }
            Frame::Response(head) => {
                assert_eq!(head.status, 200);
                echoed.extend_from_slice(&head.body);
                response_ended = head.end;
                if phase_two && !head.body.is_empty() {
                    let increment = head.body.len() as u32;
                    daemon.send(Frame::Window { id: 1, increment }).await;
                }
            }
            Frame::Data { id: 1, data, end } => {
                echoed.extend_from_slice(&data);
                response_ended = end;
                if phase_two && !data.is_empty() {
                    let increment = data.len() as u32;
                    daemon.send(Frame::Window { id: 1, increment }).await;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(phase_two, "the worker never waited for response credit");
    assert_eq!(echoed.len(), BIG);
    assert!(echoed == input, "the echo differs from the request body");
}

const BIG_CASE_WINDOW: u32 = 128 * 1024;

async fn big_response_case(mut daemon: FakeDaemon) {
    const WINDOW: u32 = BIG_CASE_WINDOW;
    daemon.send(request(1, "GET", "/big", b"", true)).await;
    let head = daemon.expect_started_response(1).await;
    assert!(!head.end);
    let mut received = head.body.len();
    let mut ended = false;
    let mut granted = WINDOW as usize;
    while !ended {
        match daemon.recv_within(Duration::from_millis(200)).await {
            Some(Frame::Data { id: 1, data, end }) => {
                assert!(data.len() <= keel_proto::MAX_DATA_CHUNK);
                received += data.len();
                ended = end;
                assert!(received <= granted, "the worker sent past its window");
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {
                assert_eq!(
                    received, granted,
                    "the worker stopped before its window was used"
                );
                daemon
                    .send(Frame::Window {
                        id: 1,
                        increment: WINDOW,
                    })
                    .await;
                granted += WINDOW as usize;
            }
        }
    }
    assert_eq!(received, BIG);
}

#[tokio::test]
async fn big_response_stops_at_the_window_until_credit_comes() {
    big_response_case(start(BIG_CASE_WINDOW).await.0).await;
}

#[tokio::test]
async fn big_response_stops_at_the_window_over_an_in_memory_pipe() {
    big_response_case(start_in_memory(BIG_CASE_WINDOW).await.0).await;
}

#[tokio::test]
async fn ping_is_answered_while_a_handler_is_blocked() {
    let (mut daemon, _) = start(256 * 1024).await;
    daemon.send(request(1, "GET", "/block", b"", true)).await;
    assert_eq!(daemon.recv().await, Frame::Started { id: 1 });
    daemon.send(Frame::Ping { nonce: 42 }).await;
    assert_eq!(daemon.recv().await, Frame::Pong { nonce: 42 });
}

#[tokio::test]
async fn abort_cancels_the_handler_and_is_answered() {
    let (mut daemon, dropped) = start(256 * 1024).await;
    daemon.send(request(7, "GET", "/block", b"", true)).await;
    assert_eq!(daemon.recv().await, Frame::Started { id: 7 });
    let code = AbortCode::ClientGone;
    daemon.send(Frame::Abort { id: 7, code }).await;
    assert_eq!(daemon.recv().await, Frame::Abort { id: 7, code });
    for _ in 0..100 {
        if dropped.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the handler was not cancelled");
}

#[tokio::test]
async fn abort_of_an_unknown_stream_is_ignored() {
    let (mut daemon, _) = start(256 * 1024).await;
    let code = AbortCode::ClientGone;
    daemon.send(Frame::Abort { id: 99, code }).await;
    daemon.send(Frame::Ping { nonce: 1 }).await;
    assert_eq!(daemon.recv().await, Frame::Pong { nonce: 1 });
}

#[tokio::test]
async fn a_panicking_handler_aborts_its_stream_only() {
    let (mut daemon, _) = start(256 * 1024).await;
    daemon.send(request(1, "GET", "/panic", b"", true)).await;
    assert_eq!(daemon.recv().await, Frame::Started { id: 1 });
    let code = AbortCode::HandlerFailed;
    assert_eq!(daemon.recv().await, Frame::Abort { id: 1, code });
    daemon.send(request(2, "GET", "/hello", b"", true)).await;
    assert_eq!(daemon.expect_started_response(2).await.status, 200);
}

#[tokio::test]
async fn drain_lets_the_running_request_finish_then_serve_returns() {
    let (mut daemon, _) = start(256 * 1024).await;
    daemon.send(request(1, "GET", "/slow", b"", true)).await;
    assert_eq!(daemon.recv().await, Frame::Started { id: 1 });
    daemon.send(Frame::Drain { timeout_ms: 5000 }).await;
    let head = match daemon.recv().await {
        Frame::Response(head) => head,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!((head.status, head.end), (200, true));
    assert_eq!(head.body, Bytes::from_static(b"done"));
    let served = tokio::time::timeout(Duration::from_secs(2), daemon.worker)
        .await
        .expect("serve did not return after the drain");
    served.unwrap().unwrap();
}

async fn daemon_gone_case(mut daemon: FakeDaemon) {
    daemon.send(request(1, "GET", "/block", b"", true)).await;
    assert_eq!(daemon.recv().await, Frame::Started { id: 1 });
    let worker = daemon.hang_up();
    let served = tokio::time::timeout(Duration::from_secs(2), worker)
        .await
        .expect("serve did not return after EOF");
    served.unwrap().unwrap();
}

#[tokio::test]
async fn serve_returns_when_the_daemon_goes_away() {
    daemon_gone_case(start(256 * 1024).await.0).await;
}

#[tokio::test]
async fn serve_returns_when_the_daemon_drops_its_in_memory_pipe() {
    daemon_gone_case(start_in_memory(256 * 1024).await.0).await;
}

#[tokio::test]
async fn an_axum_router_runs_unchanged() {
    use axum::routing::{get, post};
    let router = axum::Router::new()
        .route("/", get(|| async { "Hello from axum" }))
        .route("/echo", post(|body: Bytes| async move { body }));
    let mut daemon =
        FakeDaemon::start(256 * 1024, move |worker| worker.serve_service(router)).await;
    daemon.send(request(1, "GET", "/", b"", true)).await;
    let head = daemon.expect_started_response(1).await;
    assert_eq!((head.status, head.end), (200, true));
    assert_eq!(head.body, Bytes::from_static(b"Hello from axum"));

    daemon
        .send(request(2, "POST", "/echo", b"abc", false))
        .await;
    daemon
        .send(Frame::Data {
            id: 2,
            data: Bytes::from_static(b"def"),
            end: true,
        })
        .await;
    let head = daemon.expect_started_response(2).await;
    assert_eq!((head.status, head.end), (200, true));
    assert_eq!(head.body, Bytes::from_static(b"abcdef"));
}

//! A rough figure for the SDK's own cost: small GETs pipelined over one connection, with
//! the fake daemon in the same process. Run with
//! `cargo test --release -p keel-worker --test throughput -- --ignored --nocapture`.

mod fake_daemon;

use bytes::Bytes;
use fake_daemon::{FakeDaemon, request};
use http::Response;
use keel_proto::Frame;
use keel_worker::Body;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn small_gets_per_second() {
    const TOTAL: u32 = 200_000;
    const IN_FLIGHT: u32 = 64;
    let mut daemon = FakeDaemon::start(256 * 1024, |worker| {
        worker.serve(|_req| async {
            Response::new(Body::from(Bytes::from_static(b"Hello from keel")))
        })
    })
    .await;
    let started = Instant::now();
    // Stream ids are reused once closed, as the daemon does.
    let mut free: Vec<u32> = (1..=IN_FLIGHT).collect();
    let (mut sent, mut done) = (0, 0);
    while done < TOTAL {
        while sent < TOTAL
            && let Some(id) = free.pop()
        {
            daemon.send(request(id, "GET", "/", b"", true)).await;
            sent += 1;
        }
        if let Frame::Response(head) = daemon.recv().await {
            assert!(head.end);
            free.push(head.id);
            done += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{TOTAL} requests in {secs:.2}s: {:.0} requests/s",
        TOTAL as f64 / secs
    );
}

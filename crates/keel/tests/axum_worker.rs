//! An existing axum `Router` runs unchanged as a keel worker (crates/keel-worker/examples).

mod common;
use common::*;

#[test]
fn axum_router_serves_through_keel() {
    let example = keel_bin().parent().unwrap().join("examples/axum_worker");
    assert!(
        example.exists(),
        "{} is missing: `cargo nextest run --workspace` builds the examples",
        example.display()
    );
    let cfg = demo_config("").replace("{demo}", example.to_str().unwrap());
    let d = Daemon::start(&cfg);
    let r = get(d.addr(), "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello from axum");
    let pid: u32 = get(d.addr(), "/pid").text().trim().parse().unwrap();
    assert!(d.worker_pids().contains(&pid));
    let r = raw_request(
        d.addr(),
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    assert_eq!(get(d.addr(), "/nope").status, 404);
}

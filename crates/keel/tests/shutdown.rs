//! SIGTERM: stop accepting, finish queued and in-flight requests, drain workers, exit 0.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn sigterm_lets_in_flight_requests_finish_and_leaves_no_worker() {
    let mut d = Daemon::start(&demo_config("workers = 2\nstart = \"always\""));
    let workers = d.wait_for_workers(2, Duration::from_secs(10));
    assert_eq!(get(d.addr(), "/").status, 200);
    let addr = d.addr();
    let in_flight: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || get(addr, "/sleep?ms=800")))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let status = d.stop(Duration::from_secs(15));
    assert!(status.success(), "keel exited with {status:?}");
    for r in in_flight {
        let r = r.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "slept 800 ms");
    }
    for pid in workers {
        assert!(!process_alive(pid), "worker {pid} left behind");
    }
}

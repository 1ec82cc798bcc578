//! Per-request flow control: one slow client never stalls other requests on the same worker.

mod common;
use common::*;

#[test]
fn slow_reader_of_a_big_response_does_not_delay_other_requests() {
    check_slow_reader_does_not_delay_other_requests(RUST_DEMO_WORKER);
}

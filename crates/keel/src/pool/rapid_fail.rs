//! Rapid-fail protection: N failures within an interval disable the pool (IIS defaults:
//! 5 within 5 minutes), and — beyond IIS — a back-off re-enables it after 30 s, 60 s,
//! 120 s … up to 10 min; a successful start resets the back-off.
//!
//! A plain data structure over caller-supplied instants, so it is unit-tested without time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const BACKOFF_FIRST: Duration = Duration::from_secs(30);
const BACKOFF_MAX: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct RapidFail {
    /// 0 = protection off.
    max_failures: u32,
    interval: Duration,
    backoff: bool,
    failures: VecDeque<Instant>,
    /// How many times in a row the pool was disabled without a successful start between.
    disables_in_a_row: u32,
}

impl RapidFail {
    pub fn new(max_failures: u32, interval: Duration, backoff: bool) -> Self {
        RapidFail {
            max_failures,
            interval,
            backoff,
            failures: VecDeque::new(),
            disables_in_a_row: 0,
        }
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some(&first) = self.failures.front() {
            if now.duration_since(first) >= self.interval {
                self.failures.pop_front();
            } else {
                break;
            }
        }
    }

    /// Records a failure; true when it trips the protection (the pool must be disabled).
    pub fn record_failure(&mut self, now: Instant) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        self.forget_old(now);
        self.failures.push_back(now);
        if self.failures.len() as u32 >= self.max_failures {
            self.failures.clear();
            self.disables_in_a_row += 1;
            return true;
        }
        false
    }

    /// Failures counted in the current interval.
    pub fn failures_in_interval(&mut self, now: Instant) -> u32 {
        self.forget_old(now);
        self.failures.len() as u32
    }

    /// A worker started and said hello: the back-off starts over.
    pub fn record_success(&mut self) {
        self.disables_in_a_row = 0;
    }

    /// How long the pool stays disabled after the latest trip; `None` = until enabled by hand.
    pub fn reenable_after(&self) -> Option<Duration> {
        if !self.backoff || self.disables_in_a_row == 0 {
            return None;
        }
        let doublings = (self.disables_in_a_row - 1).min(16);
        Some((BACKOFF_FIRST * 2u32.pow(doublings)).min(BACKOFF_MAX))
    }

    /// An operator enabled the pool: forget the failures (not the back-off level, which
    /// only a successful start resets).
    pub fn reset_window(&mut self) {
        self.failures.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_within_the_interval_trip() {
        let t0 = Instant::now();
        let mut rf = RapidFail::new(5, Duration::from_secs(300), true);
        for i in 0..4 {
            assert!(!rf.record_failure(t0 + Duration::from_secs(i * 10)));
        }
        assert!(rf.record_failure(t0 + Duration::from_secs(50)));
        assert_eq!(rf.failures_in_interval(t0 + Duration::from_secs(50)), 0);
    }

    #[test]
    fn failures_older_than_the_interval_do_not_count() {
        let t0 = Instant::now();
        let mut rf = RapidFail::new(3, Duration::from_secs(60), true);
        assert!(!rf.record_failure(t0));
        assert!(!rf.record_failure(t0 + Duration::from_secs(30)));
        // The first one has aged out.
        assert!(!rf.record_failure(t0 + Duration::from_secs(61)));
        assert_eq!(rf.failures_in_interval(t0 + Duration::from_secs(61)), 2);
        assert!(rf.record_failure(t0 + Duration::from_secs(62)));
    }

    #[test]
    fn backoff_doubles_to_ten_minutes_and_resets_on_success() {
        let t0 = Instant::now();
        let mut rf = RapidFail::new(1, Duration::from_secs(60), true);
        let mut seen = Vec::new();
        for i in 0..7 {
            assert!(rf.record_failure(t0 + Duration::from_secs(i)));
            seen.push(rf.reenable_after().unwrap().as_secs());
        }
        assert_eq!(seen, vec![30, 60, 120, 240, 480, 600, 600]);
        rf.record_success();
        assert!(rf.record_failure(t0));
        assert_eq!(rf.reenable_after(), Some(Duration::from_secs(30)));
    }

    #[test]
    fn without_backoff_the_pool_waits_for_an_operator() {
        let mut rf = RapidFail::new(1, Duration::from_secs(60), false);
        assert!(rf.record_failure(Instant::now()));
        assert_eq!(rf.reenable_after(), None);
    }

    #[test]
    fn zero_failures_means_protection_off() {
        let mut rf = RapidFail::new(0, Duration::from_secs(60), true);
        for _ in 0..100 {
            assert!(!rf.record_failure(Instant::now()));
        }
    }
}

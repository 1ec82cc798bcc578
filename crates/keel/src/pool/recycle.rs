//! When a worker is due for recycling: uptime (with jitter), requests served, memory, and
//! times of day. Pure functions over values the manager passes in, unit-tested.

use crate::config::{RecycleConfig, TimeOfDay};
use crate::pool::state::RecycleTrigger;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// `uptime` ±10%, so a fleet started together never recycles together (IIS's fixed 29 h
/// drifts into business hours and recycles every pool at once).
pub fn jittered(uptime: Duration) -> Duration {
    let r = random_unit();
    uptime.mul_f64(0.9 + 0.2 * r)
}

/// A number in [0, 1) from the standard library's per-process random hasher keys.
fn random_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// What a worker looks like at a check.
pub struct WorkerAge {
    pub up_for: Duration,
    /// Its own jittered uptime limit.
    pub uptime_limit: Option<Duration>,
    pub requests: u64,
    pub rss: Option<u64>,
}

/// The first trigger that says this worker is due, if any (schedule is checked per pool).
pub fn due(cfg: &RecycleConfig, w: &WorkerAge) -> Option<RecycleTrigger> {
    if w.uptime_limit.is_some_and(|limit| w.up_for >= limit) {
        return Some(RecycleTrigger::Time);
    }
    if cfg.requests.is_some_and(|limit| w.requests >= limit) {
        return Some(RecycleTrigger::Requests);
    }
    if let (Some(limit), Some(rss)) = (cfg.memory, w.rss)
        && rss >= limit
    {
        return Some(RecycleTrigger::Memory);
    }
    None
}

/// Minutes since local midnight, from the C library's idea of the local time zone.
pub fn local_minute_of_day() -> u16 {
    let (hour, minute) = crate::os::clock::local_hour_minute();
    hour as u16 * 60 + minute as u16
}

/// True when a scheduled time lies in (previous, now], minutes of the day, wrapping at
/// midnight. Checked once a minute, so each scheduled time fires once a day.
pub fn schedule_due(schedule: &[TimeOfDay], previous: u16, now: u16) -> bool {
    if previous == now {
        return false;
    }
    schedule.iter().any(|t| {
        let m = t.hour as u16 * 60 + t.minute as u16;
        if previous < now {
            m > previous && m <= now
        } else {
            m > previous || m <= now
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(requests: Option<u64>, memory: Option<u64>) -> RecycleConfig {
        RecycleConfig {
            uptime: None,
            requests,
            memory,
            schedule: vec![],
        }
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let base = Duration::from_secs(29 * 3600);
        for _ in 0..1000 {
            let j = jittered(base);
            assert!(j >= base.mul_f64(0.9) && j <= base.mul_f64(1.1), "{j:?}");
        }
    }

    #[test]
    fn triggers_in_order() {
        let w = WorkerAge {
            up_for: Duration::from_secs(100),
            uptime_limit: Some(Duration::from_secs(50)),
            requests: 10,
            rss: Some(10),
        };
        assert_eq!(due(&cfg(Some(5), Some(5)), &w), Some(RecycleTrigger::Time));
        let w = WorkerAge {
            uptime_limit: None,
            ..w
        };
        assert_eq!(
            due(&cfg(Some(5), Some(5)), &w),
            Some(RecycleTrigger::Requests)
        );
        assert_eq!(
            due(&cfg(Some(50), Some(5)), &w),
            Some(RecycleTrigger::Memory)
        );
        assert_eq!(due(&cfg(None, None), &w), None);
    }

    #[test]
    fn schedule_fires_once_when_its_minute_passes() {
        let s = [TimeOfDay { hour: 3, minute: 0 }];
        assert!(!schedule_due(&s, 178, 179));
        assert!(schedule_due(&s, 179, 180));
        assert!(!schedule_due(&s, 180, 180));
        assert!(!schedule_due(&s, 180, 181));
        // Across midnight.
        let s = [TimeOfDay { hour: 0, minute: 0 }];
        assert!(schedule_due(&s, 1439, 0));
        // A skipped minute (busy machine) still fires.
        let s = [TimeOfDay { hour: 3, minute: 0 }];
        assert!(schedule_due(&s, 178, 181));
    }
}

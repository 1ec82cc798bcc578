//! Clocks: local wall-clock time, for `recycle.schedule` ("03:00" means 03:00 where the
//! machine is), and the kernel's coarse clocks, for what reads the time on every request
//! but needs it only to the millisecond.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The local hour and minute, by the C library's time zone rules (TZ, /etc/localtime).
/// Falls back to UTC if the conversion fails.
pub fn local_hour_minute() -> (u8, u8) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: localtime_r writes only into the `tm` we own; `now` is a valid time_t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&now, &mut tm).is_null() };
    if ok {
        (tm.tm_hour as u8, tm.tm_min as u8)
    } else {
        let secs_of_day = now.rem_euclid(86_400);
        (
            (secs_of_day / 3600) as u8,
            ((secs_of_day % 3600) / 60) as u8,
        )
    }
}

/// Seconds since the Unix epoch by the kernel's coarse real-time clock: the time of its last
/// tick (a few milliseconds behind at most), read without the exact clock's counter, so it
/// is cheap enough for every answer's `Date` field. Falls back to the exact clock.
pub fn coarse_unix_secs() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the `timespec` we own; it fails only for a clock
    // the kernel lacks (CLOCK_REALTIME_COARSE is in every Linux since 2.6.32).
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0;
    match u64::try_from(ts.tv_sec) {
        Ok(secs) if ok => secs,
        _ => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

/// `Instant::now()` as of the kernel's last tick (`CLOCK_MONOTONIC_COARSE`: a few
/// milliseconds behind the exact clock at most, never ahead of it), read without the exact
/// clock's counter: for timers whose limits are seconds and that are fed on every request
/// (a connection's own timers). Falls back to the exact clock.
pub fn coarse_now() -> Instant {
    // `Instant` is `CLOCK_MONOTONIC`, and the coarse clock is the same clock at the tick's
    // resolution: one exact reading taken beside an `Instant` maps one onto the other.
    static ANCHOR: OnceLock<Option<(Instant, Duration)>> = OnceLock::new();
    let anchor = ANCHOR.get_or_init(|| {
        // The `Instant` first: mapped through it, a reading is never ahead of the clock.
        let at = Instant::now();
        Some((at, monotonic(libc::CLOCK_MONOTONIC)?))
    });
    match (anchor, monotonic(libc::CLOCK_MONOTONIC_COARSE)) {
        (Some((at, exact)), Some(coarse)) if coarse >= *exact => *at + (coarse - *exact),
        (Some((at, exact)), Some(coarse)) => at.checked_sub(*exact - coarse).unwrap_or(*at),
        _ => Instant::now(),
    }
}

/// A monotonic clock's reading, as time since its (unspecified) start.
fn monotonic(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the `timespec` we own; it fails only for a clock
    // the kernel lacks (both monotonic clocks are in every Linux since 2.6.32).
    let ok = unsafe { libc::clock_gettime(clock, &mut ts) } == 0;
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    ok.then(|| Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_follows_the_exact_one_within_a_tick() {
        for _ in 0..1000 {
            let before = Instant::now();
            let coarse = coarse_now();
            let after = Instant::now();
            // Never ahead of the exact clock, and behind it by a tick at most (at most 10 ms
            // at the slowest tick rate Linux has, 100 Hz), plus the anchor's own error.
            assert!(coarse <= after, "{coarse:?} is ahead of {after:?}");
            assert!(
                before.saturating_duration_since(coarse) < Duration::from_millis(25),
                "{coarse:?} lags {before:?}"
            );
        }
    }
}

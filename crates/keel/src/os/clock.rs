//! Local wall-clock time, for `recycle.schedule` ("03:00" means 03:00 where the machine is).

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

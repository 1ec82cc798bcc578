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

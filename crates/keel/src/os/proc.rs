//! Figures about a process read from `/proc` (the daemon's view of its workers).

use std::fs;

/// Resident set size in bytes: `VmRSS` from `/proc/PID/status`, else the second field of
/// `/proc/PID/statm` (pages) × the page size. `None` if the process is gone (or a zombie,
/// which has no memory left to report).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
        // "VmRSS:\t    1234 kB" (the kernel always reports kB here).
        if let Some(kb) = status_field(&status, "VmRSS:").and_then(|v| v.parse::<u64>().ok()) {
            return Some(kb * 1024);
        }
    }
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// Real uid and gid of a process, from the `Uid:`/`Gid:` lines of `/proc/PID/status`
/// (each lists real, effective, saved, filesystem ids).
pub fn uid_gid(pid: u32) -> Option<(u32, u32)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid = status_field(&status, "Uid:")?.parse().ok()?;
    let gid = status_field(&status, "Gid:")?.parse().ok()?;
    Some((uid, gid))
}

/// The first whitespace-separated word after `key` on its line.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))?
        .split_whitespace()
        .next()
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a constant of the C library; no memory is passed.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_figures() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        // SAFETY: getuid/getgid cannot fail and take no arguments.
        let ids = unsafe { (libc::getuid(), libc::getgid()) };
        assert_eq!(uid_gid(pid), Some(ids));
        assert_eq!(rss_bytes(u32::MAX), None);
    }
}

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

/// The process still runs: it has a `/proc` entry and is not a zombie (an exited process
/// its parent has not reaped yet).
pub fn running(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != "Z")
}

/// The process is gone or on its way out: no `/proc/PID/stat`, a zombie or dead state, or
/// the kernel's `PF_EXITING` flag (set when exit begins, before the process closes its
/// files: a connection it held can break while it still looks alive otherwise).
pub fn exiting(pid: u32) -> bool {
    /// `PF_EXITING` in `include/linux/sched.h`.
    const PF_EXITING: u64 = 0x4;
    match stat(pid) {
        None => true,
        Some((state, flags)) => {
            matches!(state.as_str(), "Z" | "X" | "x") || flags & PF_EXITING != 0
        }
    }
}

/// The state letter and the flags of a process, from `/proc/PID/stat`; `None` if it is gone.
fn stat(pid: u32) -> Option<(String, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (comm) STATE PPID PGRP SESSION TTY TPGID FLAGS ...": comm may hold spaces and
    // parentheses, so the fields are counted after its last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next().unwrap_or("X").to_owned();
    let flags = fields.nth(5).and_then(|f| f.parse().ok()).unwrap_or(0);
    Some((state, flags))
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

    #[test]
    fn a_running_process_is_not_exiting_a_zombie_and_a_missing_one_are() {
        assert!(!exiting(std::process::id()));
        assert!(running(std::process::id()));
        assert!(exiting(u32::MAX));
        assert!(!running(u32::MAX));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not yet reaped: a zombie once it has exited. `exiting` turns true as exit begins
        // (PF_EXITING), a moment before the state becomes Z, so the loop waits for the
        // zombie itself.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while running(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "{pid} never became a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(exiting(pid), "a zombie is exiting");
        assert!(!running(pid), "a zombie does not run");
        child.wait().unwrap();
        assert!(exiting(pid));
    }
}

//! `keel status` for a person: the daemon, its pools and their workers as aligned tables.

use super::json;
use std::fmt::Write as _;

pub fn render(s: &json::Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "keel {} (pid {}), up {}{}",
        s.version,
        s.pid,
        duration(s.uptime_secs),
        if s.stopping { ", STOPPING" } else { "" }
    );
    for l in &s.listeners {
        let _ = writeln!(out, "listening on {}: {}", l.address, l.bindings.join(", "));
    }
    out.push('\n');
    let mut pools = Table::new(&["POOL", "STATE", "QUEUE", "WORKERS", "FAILURES", "RECYCLES"]);
    for p in &s.pools {
        pools.row(vec![
            p.name.clone(),
            p.state.clone(),
            format!("{}/{}", p.queue_depth, p.queue_length),
            format!("{}/{}", p.workers_running, p.workers_wanted),
            p.failures_in_interval.to_string(),
            p.recycles.to_string(),
        ]);
    }
    out.push_str(&pools.render(""));
    let mut workers = Table::new(&[
        "POOL",
        "PID",
        "STATE",
        "UPTIME",
        "REQUESTS",
        "IN-FLIGHT",
        "RSS",
    ]);
    for p in &s.pools {
        for w in &p.workers {
            workers.row(vec![
                p.name.clone(),
                format!("{}{}", w.pid, if w.attached { " (attached)" } else { "" }),
                w.state.clone(),
                duration(w.uptime_secs),
                w.requests.to_string(),
                w.in_flight.to_string(),
                w.rss_bytes.map_or_else(|| "-".into(), bytes),
            ]);
        }
    }
    out.push('\n');
    if workers.rows.is_empty() {
        out.push_str("no worker running\n");
    } else {
        out.push_str(&workers.render(""));
    }
    for p in &s.pools {
        if let Some(exit) = &p.last_exit {
            let _ = writeln!(out, "pool {}: last exit {exit}", p.name);
        }
    }
    out.push('\n');
    match &s.cache {
        None => out.push_str("cache: off\n"),
        Some(c) => {
            let ratio = c
                .hit_ratio
                .map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0));
            let _ = writeln!(
                out,
                "cache: hit ratio {ratio} ({} hits, {} misses, {} stale), {} entries, {} of {}, {} evictions",
                c.hits + c.collapsed,
                c.misses,
                c.stale_hits,
                c.entries,
                bytes(c.stored_bytes),
                bytes(c.max_bytes),
                c.evictions
            );
        }
    }
    out
}

/// Columns padded to their widest cell.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, indent: &str) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            let _ = writeln!(out, "{indent}{}", line.join("  ").trim_end());
        }
        out
    }
}

/// `3d 4h`, `2h 5m`, `7m 3s`, `42s`: the two largest units.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `512 B`, `4.0 KiB`, `12.3 MiB`, `1.5 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_naturally() {
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(7 * 60 + 3), "7m 3s");
        assert_eq!(duration(2 * 3600 + 5 * 60 + 9), "2h 5m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600), "3d 4h");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(4096), "4.0 KiB");
        assert_eq!(bytes(12_900_000), "12.3 MiB");
    }

    #[test]
    fn a_status_shows_pools_workers_and_the_cache() {
        let status = json::Status {
            version: "0.1.0".into(),
            pid: 100,
            uptime_secs: 65,
            stopping: false,
            sites: vec![],
            listeners: vec![json::Listener {
                address: "127.0.0.1:8080".into(),
                bindings: vec!["http://127.0.0.1:8080 (site demo)".into()],
            }],
            pools: vec![json::PoolStatus {
                name: "demo".into(),
                state: "Running".into(),
                queue_depth: 3,
                queue_length: 1000,
                workers_wanted: 2,
                workers_running: 2,
                failures_in_interval: 0,
                recycles: 1,
                last_exit: None,
                workers: vec![json::WorkerStatus {
                    pid: 4242,
                    state: "Ready".into(),
                    attached: false,
                    uptime_secs: 30,
                    requests: 17,
                    in_flight: 1,
                    rss_bytes: Some(5 * 1024 * 1024),
                    recycles: 0,
                    last_ping_rtt_ms: None,
                }],
                queue_history: vec![0, 3],
            }],
            cache: Some(json::CacheStatus {
                max_bytes: 256 << 20,
                stored_bytes: 2048,
                entries: 2,
                hits: 3,
                misses: 1,
                stale_hits: 0,
                collapsed: 0,
                evictions: 0,
                hit_ratio: Some(0.75),
                sites: Default::default(),
            }),
            queue_sample_secs: 2,
            recent_errors: vec![],
        };
        let text = render(&status);
        assert!(text.contains("keel 0.1.0 (pid 100), up 1m 5s"), "{text}");
        assert!(text.contains("POOL  STATE    QUEUE   WORKERS"), "{text}");
        assert!(text.contains("demo  Running  3/1000  2/2"), "{text}");
        assert!(
            text.contains("demo  4242  Ready  30s     17        1          5.0 MiB"),
            "{text}"
        );
        assert!(
            text.contains("cache: hit ratio 75.0% (3 hits, 1 misses"),
            "{text}"
        );
    }
}

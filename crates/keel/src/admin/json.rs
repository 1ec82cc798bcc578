//! The admin API's JSON shapes, shared by the daemon (which writes them) and the CLI (which
//! reads them). `docs/admin-api.yaml` documents the same shapes; a test checks the two agree.
//!
//! States are strings here (`"Running"`, `"Ready"`: the names the daemon's log uses) so that
//! a client needs none of the daemon's types.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `GET /status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    /// A graceful stop has begun.
    pub stopping: bool,
    pub sites: Vec<Site>,
    /// The listening sockets and the bindings each serves (ports as bound: port 0 resolved).
    pub listeners: Vec<Listener>,
    pub pools: Vec<PoolStatus>,
    /// `None` when `[cache] enabled = false`.
    pub cache: Option<CacheStatus>,
    /// Seconds between two samples of [`PoolStatus::queue_history`]. (`default`: a CLI
    /// reading an older daemon's answer.)
    #[serde(default)]
    pub queue_sample_secs: u64,
    /// The last error-log lines (at most 50, oldest first), as written to the error log.
    #[serde(default)]
    pub recent_errors: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Site {
    pub name: String,
    pub bindings: Vec<String>,
    pub apps: Vec<App>,
}

/// One URL prefix of a site: served by `pool` or from the directory `root`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct App {
    pub path: String,
    pub pool: Option<String>,
    pub root: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Listener {
    pub address: String,
    pub bindings: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    /// `Idle`, `Starting`, `Running`, `Recycling`, `Disabled` or `Stopped`.
    pub state: String,
    /// Requests waiting for a worker now.
    pub queue_depth: usize,
    /// The pool's `queue_length`.
    pub queue_length: usize,
    pub workers_wanted: usize,
    pub workers_running: usize,
    /// Failures counted by rapid-fail protection in its current window.
    pub failures_in_interval: u32,
    pub recycles: u64,
    pub last_exit: Option<String>,
    pub workers: Vec<WorkerStatus>,
    /// Queue depth sampled every `queue_sample_secs` over the last 5 minutes, oldest first.
    #[serde(default)]
    pub queue_history: Vec<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub pid: u32,
    /// `Spawned`, `Ready`, `Draining` or `Exited`.
    pub state: String,
    pub attached: bool,
    pub uptime_secs: u64,
    /// Requests it has taken.
    pub requests: u64,
    /// Requests it holds now.
    pub in_flight: usize,
    /// Resident memory; `None` when `/proc` does not say.
    pub rss_bytes: Option<u64>,
    pub recycles: u64,
    pub last_ping_rtt_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheStatus {
    pub max_bytes: u64,
    pub stored_bytes: u64,
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub stale_hits: u64,
    pub collapsed: u64,
    pub evictions: u64,
    /// (hits + collapsed) / (hits + collapsed + misses); `None` before the first lookup.
    pub hit_ratio: Option<f64>,
    /// The same figures for each site that has used the cache.
    #[serde(default)]
    pub sites: BTreeMap<String, crate::cache::SiteFigures>,
}

/// `GET /healthz`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"` (200) or `"unavailable"` (503).
    pub status: String,
    /// Every pool's state.
    pub pools: BTreeMap<String, String>,
    /// The pools not serving: disabled by rapid-fail protection or by an operator.
    pub disabled: Vec<String>,
    /// The daemon is stopping (503).
    pub stopping: bool,
}

/// `POST /pools/{name}/{recycle|enable|disable}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoolAction {
    pub pool: String,
    /// `recycle`, `enable` or `disable`.
    pub action: String,
    /// The pool's state once the manager took the command (or still the old one if it had
    /// not within a few seconds).
    pub state: String,
}

/// The body of `POST /cache/invalidate`: exactly one of the two.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidateRequest {
    /// A full URL as the cache keys it: `http://example.com/a?b=1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Every URL that starts with this (`http://example.com/blog/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// The answer to `POST /cache/invalidate`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Invalidated {
    /// `url` or `prefix`.
    pub scope: String,
    /// As the cache compares it (scheme and host lower-cased, without a `#fragment`).
    pub target: String,
}

/// The answer to `POST /stop`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stopping {
    pub stopping: bool,
    pub pid: u32,
}

/// Every 4xx/5xx answer of the admin API except `/healthz`'s 503.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Error {
    pub error: String,
}

/// `POST /reload`, when the new config was applied.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reloaded {
    pub reloaded: bool,
    /// What changed: pools started, replaced and removed, sockets opened and closed.
    pub changes: String,
}

/// `POST /upgrade`, once the new keel process serves.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Upgraded {
    pub upgraded: bool,
    /// This process, which now stops accepting and drains.
    pub old_pid: u32,
    /// The new keel process.
    pub pid: u32,
}

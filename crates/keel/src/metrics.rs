//! The daemon's Prometheus metrics (`GET /metrics` on the admin API), all prefixed `keel_`.
//!
//! One process-wide registry (like [`crate::cache::installed`]), so that the request path,
//! the pool managers and the listener count with one cheap call each and nothing is threaded
//! through them. Counters and histograms are kept as events happen; gauges that are a view
//! of state someone else owns (queue depth, pool state, cache contents) are read at scrape
//! time from the pools handed to [`watch_pools`] and from the installed cache, so they can
//! never drift from the truth.
//!
//! Invariant: label values come from the config (site, pool) or from closed lists (status
//! class, HTTP.sys reason, exit cause, recycle trigger, pool state) — never from a request —
//! so the number of series is bounded by the config.

use crate::log::Reason;
use crate::pool::Pool;
use crate::pool::state::{PoolState, RecycleTrigger};
use crate::pool::worker::Ending;
use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
/// Histogram buckets for request durations and queue waits, in seconds (1 ms to 2 min: the
/// default `queue_timeout` is the longest a queued request waits).
const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The label value for "none": a request no site took, an app served by a static root.
pub const NONE: &str = "-";

static NONE_LABEL: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(NONE));

/// [`NONE`] as a label value (shared, not allocated per request).
pub fn none_label() -> Arc<str> {
    NONE_LABEL.clone()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    site: Arc<str>,
    pool: Arc<str>,
    /// `1xx` … `5xx`.
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SitePoolLabels {
    site: Arc<str>,
    pool: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    /// The HTTP.sys reason phrase of the error-log line.
    reason: &'static str,
    pool: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExitLabels {
    pool: Arc<str>,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecycleLabels {
    pool: Arc<str>,
    trigger: &'static str,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<SitePoolLabels, Histogram, fn() -> Histogram>,
    queue_wait: Family<PoolLabels, Histogram, fn() -> Histogram>,
    rejections: Family<RejectionLabels, Counter>,
    worker_starts: Family<PoolLabels, Counter>,
    worker_exits: Family<ExitLabels, Counter>,
    recycles: Family<RecycleLabels, Counter>,
    connections_open: Gauge<i64, AtomicI64>,
    bytes_received: Counter,
    bytes_sent: Counter,
    pools: Arc<RwLock<Vec<Arc<Pool>>>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("keel");
        let requests = Family::default();
        registry.register(
            "requests",
            "Responses given, by site, pool (\"-\" for static files and unrouted requests) and status class",
            requests.clone(),
        );
        let request_duration: Family<_, _, fn() -> Histogram> =
            Family::new_with_constructor(seconds_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response head, by site and pool",
            request_duration.clone(),
        );
        let queue_wait: Family<_, _, fn() -> Histogram> =
            Family::new_with_constructor(seconds_histogram);
        registry.register(
            "queue_wait_seconds",
            "Time a request spent in its pool's queue before a worker took it",
            queue_wait.clone(),
        );
        let rejections = Family::default();
        registry.register(
            "rejections",
            "Requests that ended abnormally (one per error-log line), by HTTP.sys reason and pool",
            rejections.clone(),
        );
        let worker_starts = Family::default();
        registry.register(
            "worker_starts",
            "Worker processes started, by pool",
            worker_starts.clone(),
        );
        let worker_exits = Family::default();
        registry.register(
            "worker_exits",
            "Worker processes that ended, by pool and cause",
            worker_exits.clone(),
        );
        let recycles = Family::default();
        registry.register(
            "recycles",
            "Worker recycles begun, by pool and trigger",
            recycles.clone(),
        );
        let connections_open = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "connections_open",
            "Client connections open now",
            connections_open.clone(),
        );
        let bytes_received = Counter::default();
        registry.register(
            "received_bytes",
            "Bytes read from client connections (TLS included)",
            bytes_received.clone(),
        );
        let bytes_sent = Counter::default();
        registry.register(
            "sent_bytes",
            "Bytes written to client connections (TLS included)",
            bytes_sent.clone(),
        );
        let pools = Arc::new(RwLock::new(Vec::new()));
        registry.register_collector(Box::new(StateCollector {
            pools: pools.clone(),
        }));
        Metrics {
            registry,
            requests,
            request_duration,
            queue_wait,
            rejections,
            worker_starts,
            worker_exits,
            recycles,
            connections_open,
            bytes_received,
            bytes_sent,
            pools,
        }
    }
}

/// The pools whose queue depth, state and workers are reported (set once by the daemon).
pub fn watch_pools(pools: Vec<Arc<Pool>>) {
    *METRICS.pools.write() = pools;
}

/// Every metric in the Prometheus/OpenMetrics text format.
pub fn render() -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry);
    out
}

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The status class label of `status`, and its index in [`RequestMetrics`].
fn status_class(status: u16) -> (&'static str, usize) {
    match status {
        100..=199 => ("1xx", 0),
        200..=299 => ("2xx", 1),
        300..=399 => ("3xx", 2),
        400..=499 => ("4xx", 3),
        _ => ("5xx", 4),
    }
}

/// The request metrics of one site and pool, looked up in their families once and then
/// kept (a route holds them), so that a response costs a counter increment and a histogram
/// observation instead of two family lookups. A series appears in the output on its first
/// use, as with [`request_done`].
pub struct RequestMetrics {
    site: Arc<str>,
    pool: Arc<str>,
    by_class: [std::sync::OnceLock<Counter>; 5],
    duration: std::sync::OnceLock<Histogram>,
}

impl RequestMetrics {
    pub fn new(site: Arc<str>, pool: Arc<str>) -> Arc<RequestMetrics> {
        Arc::new(RequestMetrics {
            site,
            pool,
            by_class: Default::default(),
            duration: std::sync::OnceLock::new(),
        })
    }

    /// A response went out (as [`request_done`]).
    pub fn done(&self, status: u16, took: Duration) {
        let (code, i) = status_class(status);
        let m = &*METRICS;
        self.by_class[i]
            .get_or_init(|| {
                m.requests
                    .get_or_create(&RequestLabels {
                        site: self.site.clone(),
                        pool: self.pool.clone(),
                        code,
                    })
                    .clone()
            })
            .inc();
        self.duration
            .get_or_init(|| {
                m.request_duration
                    .get_or_create(&SitePoolLabels {
                        site: self.site.clone(),
                        pool: self.pool.clone(),
                    })
                    .clone()
            })
            .observe(took.as_secs_f64());
    }
}

/// A response went out for a request routed to `site` and `pool` ([`NONE`] for neither).
pub fn request_done(site: &Arc<str>, pool: &Arc<str>, status: u16, took: Duration) {
    let (code, _) = status_class(status);
    let m = &*METRICS;
    m.requests
        .get_or_create(&RequestLabels {
            site: site.clone(),
            pool: pool.clone(),
            code,
        })
        .inc();
    m.request_duration
        .get_or_create(&SitePoolLabels {
            site: site.clone(),
            pool: pool.clone(),
        })
        .observe(took.as_secs_f64());
}

/// One pool's queue-wait histogram, its series kept (the pool holds it) so that a request
/// taken from the queue costs an observation instead of a family lookup. The series
/// appears in the output on its first use.
pub struct QueueWaitMetric {
    pool: Arc<str>,
    series: std::sync::OnceLock<Histogram>,
}

impl QueueWaitMetric {
    pub fn new(pool: Arc<str>) -> Self {
        QueueWaitMetric {
            pool,
            series: std::sync::OnceLock::new(),
        }
    }

    /// A request of the pool waited `waited` in its queue before a worker took it.
    pub fn observe(&self, waited: Duration) {
        self.series
            .get_or_init(|| {
                METRICS
                    .queue_wait
                    .get_or_create(&PoolLabels {
                        pool: self.pool.clone(),
                    })
                    .clone()
            })
            .observe(waited.as_secs_f64());
    }
}

/// A request ended abnormally with `reason` (an error-log line was written).
pub fn rejected(reason: Reason, pool: Option<&str>) {
    METRICS
        .rejections
        .get_or_create(&RejectionLabels {
            reason: reason.phrase(),
            pool: pool.unwrap_or(NONE).into(),
        })
        .inc();
}

pub fn worker_started(pool: &Arc<str>) {
    METRICS
        .worker_starts
        .get_or_create(&PoolLabels { pool: pool.clone() })
        .inc();
}

pub fn worker_exited(pool: &Arc<str>, ending: &Ending) {
    METRICS
        .worker_exits
        .get_or_create(&ExitLabels {
            pool: pool.clone(),
            cause: exit_cause(ending),
        })
        .inc();
}

pub fn recycle_begun(pool: &Arc<str>, trigger: RecycleTrigger) {
    METRICS
        .recycles
        .get_or_create(&RecycleLabels {
            pool: pool.clone(),
            trigger: recycle_trigger(trigger),
        })
        .inc();
}

/// The `cause` label of `keel_worker_exits_total`.
pub fn exit_cause(ending: &Ending) -> &'static str {
    match ending {
        Ending::KilledFromOutside => "killed",
        Ending::HealthCheck(_) => "health_check",
        Ending::StartupFailure(_) => "startup_failure",
        Ending::Fault(_) => "crash",
        Ending::Drained => "drained",
        Ending::Detached => "detached",
    }
}

/// The `trigger` label of `keel_recycles_total`.
pub fn recycle_trigger(trigger: RecycleTrigger) -> &'static str {
    match trigger {
        RecycleTrigger::Time => "time",
        RecycleTrigger::Requests => "requests",
        RecycleTrigger::Memory => "memory",
        RecycleTrigger::Schedule => "schedule",
        RecycleTrigger::ConfigChange => "config_change",
        RecycleTrigger::OnDemand => "on_demand",
    }
}

/// The `state` label of `keel_pool_state`.
pub fn pool_state(state: PoolState) -> &'static str {
    match state {
        PoolState::Idle => "idle",
        PoolState::Starting => "starting",
        PoolState::Running => "running",
        PoolState::Recycling => "recycling",
        PoolState::Disabled => "disabled",
        PoolState::Stopped => "stopped",
    }
}

const POOL_STATES: [PoolState; 6] = [
    PoolState::Idle,
    PoolState::Starting,
    PoolState::Running,
    PoolState::Recycling,
    PoolState::Disabled,
    PoolState::Stopped,
];

/// A client connection is open until the guard is dropped.
pub fn connection_opened() -> ConnectionGuard {
    METRICS.connections_open.inc();
    ConnectionGuard(())
}

pub struct ConnectionGuard(());

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        METRICS.connections_open.dec();
    }
}

/// Bytes read from client connections (`keel_bytes_received_total`).
pub fn bytes_received(n: usize) {
    METRICS.bytes_received.inc_by(n as u64);
}

/// Bytes written to client connections (`keel_bytes_sent_total`).
pub fn bytes_sent(n: usize) {
    METRICS.bytes_sent.inc_by(n as u64);
}

/// Reads what other parts own at scrape time: pools (queue depth, state, workers) and the
/// response cache.
struct StateCollector {
    pools: Arc<RwLock<Vec<Arc<Pool>>>>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

/// Writes one gauge without labels.
fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// Writes one metric family whose samples are `(labels, value)` pairs.
fn encode_family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, M)>,
    metric_type: prometheus_client::metrics::MetricType,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType;
        let pools = self.pools.read().clone();
        let label = |p: &Arc<Pool>| PoolLabels {
            pool: p.settings.name.clone(),
        };
        encode_family(
            &mut encoder,
            "queue_depth",
            "Requests waiting in the pool's queue now.",
            pools
                .iter()
                .map(|p| (label(p), ConstGauge::new(p.queue_len() as i64))),
            MetricType::Gauge,
        )?;
        encode_family(
            &mut encoder,
            "queue_length",
            "The pool's queue_length: requests past it get 503 QueueFull.",
            pools
                .iter()
                .map(|p| (label(p), ConstGauge::new(p.settings.queue_length as i64))),
            MetricType::Gauge,
        )?;
        let figures: Vec<_> = pools.iter().map(|p| (p, p.figures())).collect();
        encode_family(
            &mut encoder,
            "workers",
            "Worker processes of the pool that take requests now.",
            figures
                .iter()
                .map(|(p, f)| (label(p), ConstGauge::new(f.workers_running as i64))),
            MetricType::Gauge,
        )?;
        encode_family(
            &mut encoder,
            "pool_state",
            "1 for the pool's current state, 0 for the others.",
            figures.iter().flat_map(|(p, f)| {
                POOL_STATES.iter().map(move |s| {
                    (
                        [
                            ("pool", p.settings.name.to_string()),
                            ("state", pool_state(*s).to_string()),
                        ],
                        ConstGauge::new(i64::from(*s == f.state)),
                    )
                })
            }),
            MetricType::Gauge,
        )?;
        let Some(cache) = crate::cache::installed() else {
            return Ok(());
        };
        let f = cache.figures();
        let site = |name: &String| [("site", name.clone())];
        encode_family(
            &mut encoder,
            "cache_hits",
            "Requests answered from a fresh cache entry (or with the response fetched for a concurrent request), by site.",
            f.sites
                .iter()
                .map(|(s, c)| (site(s), ConstCounter::new(c.hits + c.collapsed))),
            MetricType::Counter,
        )?;
        encode_family(
            &mut encoder,
            "cache_misses",
            "GET and HEAD requests looked up in the cache and not answered from a fresh entry, by site.",
            f.sites
                .iter()
                .map(|(s, c)| (site(s), ConstCounter::new(c.misses))),
            MetricType::Counter,
        )?;
        encode_family(
            &mut encoder,
            "cache_stale_hits",
            "Requests answered from an expired entry because the pool failed (stale-if-error), by site.",
            f.sites
                .iter()
                .map(|(s, c)| (site(s), ConstCounter::new(c.stale_hits))),
            MetricType::Counter,
        )?;
        encode_family(
            &mut encoder,
            "cache_collapsed",
            "Requests answered with the response a concurrent request for the same URL fetched (also counted in cache_hits), by site.",
            f.sites
                .iter()
                .map(|(s, c)| (site(s), ConstCounter::new(c.collapsed))),
            MetricType::Counter,
        )?;
        encode_family(
            &mut encoder,
            "cache_evictions",
            "Cache entries dropped to make room, by site.",
            f.sites
                .iter()
                .map(|(s, c)| (site(s), ConstCounter::new(c.evictions))),
            MetricType::Counter,
        )?;
        let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        encode_family(
            &mut encoder,
            "cache_site_bytes",
            "Bytes the cache holds now for each site (their sum is cache_bytes).",
            f.sites
                .iter()
                .map(|(s, c)| (site(s), gauge(c.stored_bytes))),
            MetricType::Gauge,
        )?;
        encode_family(
            &mut encoder,
            "cache_site_entries",
            "Responses the cache holds now for each site (their sum is cache_entries).",
            f.sites.iter().map(|(s, c)| (site(s), gauge(c.entries))),
            MetricType::Gauge,
        )?;
        encode_gauge(
            &mut encoder,
            "cache_bytes",
            "Bytes the response cache holds now (keys, headers and bodies).",
            f.stored_bytes,
        )?;
        encode_gauge(
            &mut encoder,
            "cache_max_bytes",
            "The cache's max_bytes.",
            f.max_bytes,
        )?;
        encode_gauge(
            &mut encoder,
            "cache_entries",
            "Responses the cache holds now.",
            f.entries,
        )?;
        Ok(())
    }
}

//! keel.toml: model, loading, validation with file:line, embedded default.
//!
//! `load` walks the spanned TOML tree by hand rather than through serde so that one pass
//! reports every problem, each with its line and dotted key. The types here are plain data:
//! a loaded [`Config`] is valid (every app names a pool that exists, no two sites claim the
//! same binding and path, pool identities exist and keel may use them) and paths in it are
//! already resolved against [`Config::base_dir`].
//!
//! Architecture invariant: no I/O beyond reading the one file, reading the sites' TLS
//! certificate and key files (to check them), looking for a bare command
//! name beside the keel executable, and looking up pool users and groups in the user
//! database (`identity.rs`, the config's only `unsafe`); nothing here knows about sockets,
//! queues or processes.

mod binding;
mod error;
mod fields;
use crate::os::users as identity;
mod load;
mod program;
mod tls;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use binding::{Binding, BindingError, BindingHost, Scheme};
pub use error::{ConfigError, Problem};
pub use program::resolve_program;
pub use tls::{TlsFiles, crypto_provider};

/// Listener drain time on SIGTERM/SIGINT (keel's own; IIS `shutdownTimeLimit` is 90 s per worker).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// IIS `processModel.maxProcesses`.
pub const DEFAULT_WORKERS: u32 = 1;
/// IIS `queueLength`.
pub const DEFAULT_QUEUE_LENGTH: u32 = 1000;
/// HTTP.sys `RequestQueue` timer.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(120);
/// IIS `processModel.idleTimeout` (20 min).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// IIS `processModel.pingInterval`.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// IIS `processModel.pingResponseTime`.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(90);
/// IIS `processModel.startupTimeLimit`.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(90);
/// IIS `processModel.shutdownTimeLimit`: how long a draining worker may take to exit.
pub const DEFAULT_WORKER_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(90);
/// IIS `recycling.periodicRestart.time` (29 h).
pub const DEFAULT_RECYCLE_UPTIME: Duration = Duration::from_secs(29 * 3600);
/// IIS `failure.rapidFailProtectionMaxCrashes`.
pub const DEFAULT_RAPID_FAIL_FAILURES: u32 = 5;
/// IIS `failure.rapidFailProtectionInterval`.
pub const DEFAULT_RAPID_FAIL_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// A loaded, valid configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub source: ConfigSource,
    /// Directory relative paths resolve against: the config file's directory, or the current
    /// directory for the embedded default. Always absolute.
    pub base_dir: PathBuf,
    /// Top-level `isolation`.
    pub isolation: Isolation,
    pub daemon: DaemonConfig,
    /// `[admin]`: the admin API's sockets.
    pub admin: AdminConfig,
    pub listener: ListenerConfig,
    pub log: LogConfig,
    /// `[cache]`: the response cache.
    pub cache: CacheConfig,
    /// In file order; never empty.
    pub sites: Vec<SiteConfig>,
    /// Every `[pool.NAME]`, including pools no app uses. With [`Isolation::Shared`], exactly
    /// one, and every app names it.
    pub pools: BTreeMap<String, PoolConfig>,
}

/// How apps map to pools (top-level `isolation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    /// Each app names its pool (IIS worker process isolation mode).
    #[default]
    Pool,
    /// One pool, one queue for every app of every site (IIS 5.0 isolation mode). The config
    /// has exactly one pool and every [`AppConfig::pool`] is its name.
    Shared,
}

impl Isolation {
    pub const NAMES: [&str; 2] = ["pool", "shared"];

    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Pool => "pool",
            Isolation::Shared => "shared",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Isolation::Pool, Isolation::Shared]
            .into_iter()
            .find(|i| i.as_str() == name)
    }
}

/// `[daemon]`: the daemon's own files and threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Holds the per-pool attach sockets and the admin socket. Absolute: resolved against
    /// `base_dir`, or [`default_runtime_dir`] when not set.
    pub runtime_dir: PathBuf,
    /// Threads that serve connections; `None` is `"auto"`, one per CPU keel may run on.
    pub threads: Option<u32>,
}

impl DaemonConfig {
    /// The threads that serve connections: `threads`, or for `"auto"` the CPUs this
    /// process may run on (its affinity mask and cgroup quota, as
    /// `std::thread::available_parallelism` counts them; 1 if that cannot be told).
    pub fn serving_threads(&self) -> usize {
        match self.threads {
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// `daemon.threads` at most (HAProxy's `nbthread` stops at 64 per thread group).
pub const MAX_THREADS: u32 = 256;

/// `[admin]`: where the admin API (`keel status`, `keel recycle`, …, `/metrics`) listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// The unix socket (mode 0600) that serves the whole API. Absolute: resolved against
    /// `base_dir`, or [`ADMIN_SOCKET_NAME`] in [`DaemonConfig::runtime_dir`] when not set.
    pub socket: PathBuf,
    /// Optional TCP listener (e.g. `127.0.0.1:9180` for a Prometheus scraper). It serves
    /// `/metrics` and `/healthz` to anyone who can connect, the rest only to a client that
    /// presents `token`.
    pub listen: Option<std::net::SocketAddr>,
    /// Bearer token that opens the whole API on `listen`. Never empty; printable ASCII.
    pub token: Option<String>,
}

/// The admin socket's file name in `runtime_dir` when `[admin] socket` is not set.
pub const ADMIN_SOCKET_NAME: &str = "admin.sock";

/// `runtime_dir` when keel.toml does not set it: the directory systemd made for the unit
/// (`RUNTIME_DIRECTORY`, from `RuntimeDirectory=`; the first one if it lists several), else
/// `/run/keel` for root, else `$XDG_RUNTIME_DIR/keel` when that is set to an absolute path,
/// else `/tmp/keel-<uid>`.
pub fn default_runtime_dir(
    euid: u32,
    xdg_runtime_dir: Option<&OsStr>,
    systemd_runtime_dir: Option<&OsStr>,
) -> PathBuf {
    if let Some(first) = systemd_runtime_dir
        .and_then(OsStr::to_str)
        .and_then(|dirs| dirs.split(':').next())
        .map(Path::new)
        .filter(|dir| dir.is_absolute())
    {
        return first.to_path_buf();
    }
    if euid == 0 {
        return PathBuf::from("/run/keel");
    }
    match xdg_runtime_dir.map(Path::new) {
        // The XDG spec says to ignore a relative value.
        Some(dir) if dir.is_absolute() => dir.join("keel"),
        _ => PathBuf::from(format!("/tmp/keel-{euid}")),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// The path as the user gave it.
    File(PathBuf),
    /// [`DEFAULT_TOML`], run when no file is given.
    Embedded,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    pub shutdown_timeout: Duration,
    /// Offer HTTP/2 by ALPN on https bindings (IIS: on unless a binding disables it).
    pub http2: bool,
    /// HTTP/2 over cleartext by prior knowledge on http bindings (keel's own; IIS has none).
    pub h2c: bool,
    /// Client connections the daemon keeps open at once; more are closed at accept
    /// (HTTP.sys `MaxConnections`; never zero).
    pub max_connections: u32,
    /// From a request's first byte to its last header (HTTP.sys `HeaderWait`; never zero).
    pub header_wait: Duration,
    /// Longest wait for the next piece of a request body (HTTP.sys `EntityBody`; never zero).
    pub entity_body: Duration,
    /// Longest wait for the next request on a kept-alive connection (HTTP.sys
    /// `IdleConnection`; never zero).
    pub idle_connection: Duration,
    /// Bytes per second a client must take a response at, averaged over the response
    /// (HTTP.sys `MinSendRate`; 0 = off).
    pub min_send_rate: u64,
    /// HTTP/2 streams one connection may have open at once (never zero).
    pub max_concurrent_streams: u32,
    /// HTTP.sys's request limits; `max_body_bytes` may be raised or lowered per site.
    pub request_limits: RequestLimits,
}

/// What one request may bring: HTTP.sys `MaxFieldLength`, `MaxRequestBytes`,
/// `UrlSegmentMaxCount`, `UrlSegmentMaxLength`, IIS `maxUrl` and `maxAllowedContentLength`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// One header line (name, `: `, value) → 431 `FieldLength`.
    pub max_field_bytes: usize,
    /// Request line and every header line → 431 `RequestLength`.
    pub max_request_bytes: usize,
    /// The request target (path and query) → 414 `URL_Length`.
    pub max_url_bytes: usize,
    /// Segments of the path → 400 `URL`.
    pub max_segments: usize,
    /// Characters of one decoded segment → 400 `URL`.
    pub max_segment_chars: usize,
    /// Bytes of a request body, declared or streamed → 413 `EntityTooLarge`.
    pub max_body_bytes: u64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_field_bytes: 16 * 1024,
            max_request_bytes: 16 * 1024,
            // HTTP.sys `MaxUrlLength` is 16 KiB, IIS `maxUrl` 4 KiB; keel takes 8 KiB, as
            // nginx's default large header buffer.
            max_url_bytes: 8 * 1024,
            max_segments: 255,
            max_segment_chars: 260,
            max_body_bytes: 30_000_000,
        }
    }
}

/// Client connections open at once (HTTP.sys's default is unlimited; 10 000 as IIS's
/// `maxConnections` advice for one site).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// HTTP.sys `HeaderWait` is 120 s; keel's is shorter, as nginx's `client_header_timeout` (60 s).
pub const DEFAULT_HEADER_WAIT: Duration = Duration::from_secs(30);

/// HTTP.sys `EntityBody`.
pub const DEFAULT_ENTITY_BODY: Duration = Duration::from_secs(120);

/// HTTP.sys `IdleConnection`.
pub const DEFAULT_IDLE_CONNECTION: Duration = Duration::from_secs(120);

/// HTTP.sys `MinSendRate`, bytes per second.
pub const DEFAULT_MIN_SEND_RATE: u64 = 150;

/// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` when keel.toml does not set it.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;

/// `[cache]`: the response cache (DESIGN §7, HTTP.sys kernel response cache).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// `false`: no response is stored or served from the cache (HTTP.sys `UriEnableCache`).
    pub enabled: bool,
    /// Bytes the cache may hold: keys, headers and bodies (HTTP.sys
    /// `UriMaxCacheMegabyteCount`; keel's default 256 MiB).
    pub max_bytes: u64,
    /// Larger responses are not stored (HTTP.sys `UriMaxUriBytes`, 256 KiB); never more
    /// than `max_bytes` (the default is lowered to a smaller `max_bytes`).
    pub max_entry_bytes: u64,
    pub admission: CacheAdmission,
    /// An entry not used for this long may be dropped (HTTP.sys `UriScavengerPeriod`, 120 s).
    pub scavenge_after: Duration,
    /// How long past its freshness an entry may still answer when the pool fails
    /// (RFC 5861 stale-if-error; a response's own directive wins). Zero: never.
    pub stale_if_error: Duration,
    pub collapse: CacheCollapse,
}

/// Which concurrent misses for one URL wait for a single fetch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheCollapse {
    /// URLs whose last response could be stored (or that have an expired entry): an
    /// uncacheable URL never waits on another request, but a URL's very first requests
    /// all reach the worker.
    Cacheable,
    /// Every GET, including the first requests of a URL never seen (Varnish-style, and
    /// what a burst of first requests for a slow page needs); a URL whose response turns
    /// out uncacheable is then not collapsed for 2 minutes.
    #[default]
    All,
}

/// When a cacheable response is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheAdmission {
    /// On its second request within 10 s (IIS `frequentHitThreshold`/`frequentHitTimePeriod`).
    #[default]
    Frequent,
    /// On its first request; moka's TinyLFU decides what stays when the cache is full.
    TinyLfu,
    /// On its first request; least recently used entries leave first.
    Always,
}

pub const DEFAULT_CACHE_MAX_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_CACHE_MAX_ENTRY_BYTES: u64 = 256 * 1024;
pub const DEFAULT_CACHE_SCAVENGE_AFTER: Duration = Duration::from_secs(120);
pub const DEFAULT_CACHE_STALE_IF_ERROR: Duration = Duration::from_secs(60);

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
            max_entry_bytes: DEFAULT_CACHE_MAX_ENTRY_BYTES,
            admission: CacheAdmission::default(),
            scavenge_after: DEFAULT_CACHE_SCAVENGE_AFTER,
            stale_if_error: DEFAULT_CACHE_STALE_IF_ERROR,
            collapse: CacheCollapse::default(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// Resolved against `base_dir`; `None`: error-log lines go to the daemon's own log.
    pub error_log: Option<PathBuf>,
    /// Resolved against `base_dir`; `None`: no access log.
    pub access_log: Option<PathBuf>,
    pub access_format: crate::log::AccessFormat,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteConfig {
    pub name: String,
    /// Never empty, no duplicates.
    pub bindings: Vec<Binding>,
    /// The TOML key is `app`. Never empty; no two paths equal ignoring case and a trailing "/".
    pub apps: Vec<AppConfig>,
    /// `tls = { cert, key }`: `Some` exactly when a binding is https; the files were readable
    /// and valid at load.
    pub tls: Option<TlsFiles>,
    /// `compression = true`: compressible responses go out with brotli or gzip as the client
    /// prefers (IIS static/dynamic compression, nginx gzip).
    pub compression: bool,
    /// `max_body_bytes` for this site's requests, when it differs from `[listener]`'s.
    pub max_body_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppConfig {
    /// As written: starts with "/", may end with "/", no empty, "." or ".." segments.
    /// Routing compares it case-insensitively by whole segments.
    pub path: String,
    /// Who answers it.
    pub serve: AppServe,
}

/// Who answers an app's requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppServe {
    /// A pool's workers: always a key of [`Config::pools`] (with [`Isolation::Shared`], the
    /// one pool's name, also when the app entry has no `pool` key).
    Pool(String),
    /// Files under a directory, served by the daemon itself (`root = "public"`).
    Static(StaticConfig),
}

impl AppConfig {
    /// The pool serving this app, if it is not a static root.
    pub fn pool(&self) -> Option<&str> {
        match &self.serve {
            AppServe::Pool(p) => Some(p),
            AppServe::Static(_) => None,
        }
    }
}

/// A static root: `{ path = "/static", root = "public", list = false, follow_symlinks = false }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticConfig {
    /// Resolved against the config file's directory; an existing directory at load.
    pub root: PathBuf,
    /// Directory listings for directories without index.html.
    pub list: bool,
    /// Serve symlinks that lead out of the root.
    pub follow_symlinks: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    /// Never empty; `command[0]` resolved by [`resolve_program`].
    pub command: Vec<String>,
    pub workers: u32,
    pub queue_length: u32,
    pub queue_timeout: Duration,
    /// Cap on concurrent requests per worker; the worker's own cap from its hello applies
    /// when smaller or when this is `None`.
    pub capacity: Option<u32>,
    pub retry: RetryPolicy,
    pub env: BTreeMap<String, String>,
    /// Resolved against `base_dir`; `None`: the worker inherits keel's working directory.
    pub cwd: Option<PathBuf>,
    /// IIS `startMode`.
    pub start: StartMode,
    /// IIS `processModel.idleTimeout`; `None` ("0s"): never stop idle workers.
    pub idle_timeout: Option<Duration>,
    /// IIS `processModel.pingInterval`; `None` ("0s"): no pings (`pingingEnabled = false`).
    pub ping_interval: Option<Duration>,
    /// IIS `processModel.pingResponseTime`. Never zero.
    pub ping_timeout: Duration,
    /// IIS `processModel.startupTimeLimit`: from spawn to hello. Never zero.
    pub startup_timeout: Duration,
    /// IIS `processModel.shutdownTimeLimit`: from drain to exit. Never zero.
    pub shutdown_timeout: Duration,
    /// Overlapped recycling: the replacement says hello before the old worker drains
    /// (IIS `disallowOverlappingRotation = !overlap`).
    pub overlap: bool,
    pub recycle: RecycleConfig,
    pub rapid_fail: RapidFailConfig,
    /// `user` / `group`, resolved. `None`: workers run as keel does. When keel is not root
    /// this is `None` or keel's own uid and gid (anything else is a load error).
    pub identity: Option<Identity>,
    pub limits: Limits,
    /// cgroup memory limit per worker, bytes; never `Some(0)`.
    pub memory_max: Option<u64>,
    /// cgroup CPU limit per worker, in CPUs: finite, > 0, <= 1024.
    pub cpu_max: Option<f64>,
    /// IIS `failure.loadBalancerCapabilities`.
    pub unavailable: Unavailable,
    /// Accept attached workers on the pool's unix socket in [`DaemonConfig::runtime_dir`]
    /// (HTTP Server API named request queue). Never with [`WorkerProtocol::Http`].
    pub attach: bool,
    /// How keel talks to the workers: its own protocol, or plain HTTP/1.1.
    pub protocol: WorkerProtocol,
}

/// `protocol = "keel" | "http"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WorkerProtocol {
    /// keel's worker protocol over an inherited socketpair (`KEEL_FD`).
    #[default]
    Keel,
    /// An unmodified HTTP/1.1 server listening where keel says.
    Http(HttpWorkerConfig),
}

/// The settings of a pool of plain HTTP servers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpWorkerConfig {
    pub listen: HttpListen,
    /// Readiness and health: the worker is ready, and healthy at each ping, when a GET of
    /// this path answers 2xx. Starts with `/`. `None`: accepting a connection is enough.
    pub health_path: Option<String>,
}

/// `listen = "unix" | "tcp"`: where an HTTP worker listens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HttpListen {
    /// A unix socket keel binds in `runtime_dir` and passes as fd 3 (`LISTEN_FDS=1`).
    #[default]
    Unix,
    /// A free loopback TCP port the application binds itself (`PORT`).
    Tcp,
}

/// When a pool's first worker starts (IIS `startMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartMode {
    /// IIS `OnDemand`: the first request starts it.
    #[default]
    OnDemand,
    /// IIS `AlwaysRunning`: with the daemon.
    Always,
}

impl StartMode {
    pub const NAMES: [&str; 2] = ["on-demand", "always"];

    pub fn as_str(self) -> &'static str {
        match self {
            StartMode::OnDemand => "on-demand",
            StartMode::Always => "always",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [StartMode::OnDemand, StartMode::Always]
            .into_iter()
            .find(|m| m.as_str() == name)
    }
}

/// A local wall-clock time, `"HH:MM"` in keel.toml.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay {
    /// 0–23.
    pub hour: u8,
    /// 0–59.
    pub minute: u8,
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

/// Recycle triggers (IIS `recycling.periodicRestart`); `None` / empty = that trigger is off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecycleConfig {
    /// `periodicRestart.time`; keel adds ±10% jitter. Never `Some(0)`.
    pub uptime: Option<Duration>,
    /// `periodicRestart.requests`. Never `Some(0)`.
    pub requests: Option<u64>,
    /// RSS in bytes (`periodicRestart.privateMemory`). Never `Some(0)`.
    pub memory: Option<u64>,
    /// `periodicRestart.schedule`: local times, sorted, no duplicates.
    pub schedule: Vec<TimeOfDay>,
}

impl Default for RecycleConfig {
    fn default() -> Self {
        RecycleConfig {
            uptime: Some(DEFAULT_RECYCLE_UPTIME),
            requests: None,
            memory: None,
            schedule: Vec::new(),
        }
    }
}

/// Rapid-fail protection (IIS `failure.rapidFailProtection*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RapidFailConfig {
    /// Unexpected exits or startup failures within `interval` that disable the pool;
    /// 0 = protection off (`rapidFailProtection = false`).
    pub failures: u32,
    /// Never zero.
    pub interval: Duration,
    /// keel's own: re-enable a disabled pool after 30 s, 60 s, … up to 10 min.
    pub backoff: bool,
}

impl Default for RapidFailConfig {
    fn default() -> Self {
        RapidFailConfig {
            failures: DEFAULT_RAPID_FAIL_FAILURES,
            interval: DEFAULT_RAPID_FAIL_INTERVAL,
            backoff: true,
        }
    }
}

/// setrlimit values for the workers (soft = hard); `None` = the limits keel was started
/// with (keel raises its own open-files soft limit, `os::limits`). `u64::MAX` is
/// `RLIM_INFINITY` (written `"unlimited"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub nofile: Option<u64>,
    pub nproc: Option<u64>,
    pub core: Option<u64>,
}

/// What a client gets when the pool cannot serve it: full queue, disabled pool
/// (IIS `failure.loadBalancerCapabilities`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unavailable {
    /// `HttpLevel`: 503 with `Retry-After`.
    #[default]
    Status503,
    /// `TcpLevel`: the connection is closed (reset).
    Reset,
}

impl Unavailable {
    pub const NAMES: [&str; 2] = ["503", "reset"];

    pub fn as_str(self) -> &'static str {
        match self {
            Unavailable::Status503 => "503",
            Unavailable::Reset => "reset",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Unavailable::Status503, Unavailable::Reset]
            .into_iter()
            .find(|u| u.as_str() == name)
    }
}

/// The user and group a pool's workers run as, resolved at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// As written in keel.toml: a user name or a numeric uid.
    pub user: String,
    pub uid: u32,
    /// `group`, or the user's primary group.
    pub gid: u32,
}

/// Which requests a worker's crash may replay on another worker (DESIGN §3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Unstarted requests, plus started idempotent ones with no response byte sent when the
    /// worker was killed from outside.
    #[default]
    Idempotent,
    /// Only requests the worker had not yet handed to application code.
    Unstarted,
    /// None: every request the worker held fails with 502.
    Never,
}

impl RetryPolicy {
    /// The spellings accepted in keel.toml, in the order the docs list them.
    pub const NAMES: [&str; 3] = ["idempotent", "unstarted", "never"];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryPolicy::Idempotent => "idempotent",
            RetryPolicy::Unstarted => "unstarted",
            RetryPolicy::Never => "never",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            RetryPolicy::Idempotent,
            RetryPolicy::Unstarted,
            RetryPolicy::Never,
        ]
        .into_iter()
        .find(|p| p.as_str() == name)
    }
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            http2: true,
            h2c: false,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_wait: DEFAULT_HEADER_WAIT,
            entity_body: DEFAULT_ENTITY_BODY,
            idle_connection: DEFAULT_IDLE_CONNECTION,
            min_send_rate: DEFAULT_MIN_SEND_RATE,
            request_limits: RequestLimits::default(),
        }
    }
}

/// How errors name the configuration: the path as given, or `<embedded default>`.
impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(path) => write!(f, "{}", path.display()),
            ConfigSource::Embedded => f.write_str("<embedded default>"),
        }
    }
}

/// The commented keel.toml that `keel init` writes and `keel serve` runs without `--config`.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Reads and validates `path`; relative paths inside resolve against its directory.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let source = ConfigSource::File(path.to_path_buf());
    let text = std::fs::read_to_string(path).map_err(|e| {
        let problem = Problem {
            line: None,
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        };
        ConfigError::new(source.to_string(), vec![problem])
    })?;
    let base_dir = std::path::absolute(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    load_str(&text, source, &base_dir)
}

/// Validates `text`; `source` names it in errors, relative paths resolve against `base_dir`.
pub fn load_str(text: &str, source: ConfigSource, base_dir: &Path) -> Result<Config, ConfigError> {
    let base_dir = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
    load::load(text, source, base_dir, &load::Host::current())
}

/// [`DEFAULT_TOML`], loaded relative to the current directory.
pub fn embedded_default() -> Config {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    load_str(DEFAULT_TOML, ConfigSource::Embedded, &cwd)
        .expect("the embedded default keel.toml is valid")
}

#[cfg(test)]
mod tests;

//! keel.toml: model, loading, validation with file:line, embedded default.
//!
//! `load` walks the spanned TOML tree by hand rather than through serde so that one pass
//! reports every problem, each with its line and dotted key. The types here are plain data:
//! a loaded [`Config`] is valid (every app names a pool that exists, no two sites claim the
//! same binding and path) and paths in it are already resolved against [`Config::base_dir`].
//!
//! Architecture invariant: no I/O beyond reading the one file and looking for a bare command
//! name beside the keel executable; nothing here knows about sockets, queues or processes.

mod binding;
mod error;
mod fields;
mod load;
mod program;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use binding::{Binding, BindingError, BindingHost, Scheme};
pub use error::{ConfigError, Problem};
pub use program::resolve_program;

/// Listener drain time on SIGTERM/SIGINT (keel's own; IIS `shutdownTimeLimit` is 90 s per worker).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// IIS `processModel.maxProcesses`.
pub const DEFAULT_WORKERS: u32 = 1;
/// IIS `queueLength`.
pub const DEFAULT_QUEUE_LENGTH: u32 = 1000;
/// HTTP.sys `RequestQueue` timer.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(120);

/// A loaded, valid configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub source: ConfigSource,
    /// Directory relative paths resolve against: the config file's directory, or the current
    /// directory for the embedded default. Always absolute.
    pub base_dir: PathBuf,
    pub listener: ListenerConfig,
    pub log: LogConfig,
    /// In file order; never empty.
    pub sites: Vec<SiteConfig>,
    /// Every `[pool.NAME]`, including pools no app uses.
    pub pools: BTreeMap<String, PoolConfig>,
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
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// Resolved against `base_dir`; `None`: error-log lines go to the daemon's own log.
    pub error_log: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteConfig {
    pub name: String,
    /// Never empty, no duplicates.
    pub bindings: Vec<Binding>,
    /// The TOML key is `app`. Never empty; no two paths equal ignoring case and a trailing "/".
    pub apps: Vec<AppConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppConfig {
    /// As written: starts with "/", may end with "/", no empty, "." or ".." segments.
    /// Routing compares it case-insensitively by whole segments.
    pub path: String,
    /// Always a key of [`Config::pools`].
    pub pool: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
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
    load::load(text, source, base_dir)
}

/// [`DEFAULT_TOML`], loaded relative to the current directory.
pub fn embedded_default() -> Config {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    load_str(DEFAULT_TOML, ConfigSource::Embedded, &cwd)
        .expect("the embedded default keel.toml is valid")
}

#[cfg(test)]
mod tests;

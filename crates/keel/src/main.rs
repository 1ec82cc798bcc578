//! The `keel` command: a thin CLI over the daemon and the config loader.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use keel::admin::client::{self, Request};
use keel::admin::json::InvalidateRequest;
use keel::config::{self, Config};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The daemon allocates a little for every request (heads, header maps, frames) on every
/// thread; mimalloc's per-thread free lists serve that for less than glibc's malloc
/// (docs/performance.md has the measurement), through keel's shim (`keel::allocator`).
#[global_allocator]
static ALLOCATOR: keel::allocator::MiMalloc = keel::allocator::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "An application server with HTTP.sys-style request queues and worker process isolation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon. Without --config: ./keel.toml if present, else the embedded default.
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and exit: 0 when valid, 1 with FILE:LINE: KEY: messages when not.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Write a commented keel.toml equal to the embedded default.
    Init {
        /// Where to write it.
        #[arg(default_value = "keel.toml")]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Show the running daemon's pools, workers, queues and cache.
    Status {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// Print the admin API's JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Replace every worker of a pool, one at a time (overlapped when the pool allows).
    Recycle {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// The pool's name ([pool.NAME]).
        pool: String,
    },
    /// Take a pool out of service (its requests get 503) or back into it.
    Pool {
        #[command(flatten)]
        daemon: DaemonArgs,
        #[arg(value_enum)]
        action: PoolAction,
        /// The pool's name ([pool.NAME]).
        pool: String,
    },
    /// Drop cached responses: one URL (http://host/path?query) or every URL under a prefix.
    Invalidate {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// The URL as the cache keys it: http://HOST/path?query, HOST as clients send it.
        #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
        url: Option<String>,
        /// Drop every URL that starts with this instead (e.g. http://example.com/news/).
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Re-read the daemon's config and apply it without dropping a connection; an invalid
    /// config is refused (with the same messages as `keel check`) and the old one stays.
    Reload {
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Replace the running daemon by the keel executable now on disk, handing over the
    /// listening sockets without dropping a connection (as SIGUSR2).
    Upgrade {
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Stop the daemon gracefully (as SIGTERM) and wait until it has exited.
    Stop {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// How long to wait for the daemon to exit.
        #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

/// How a CLI command finds the running daemon.
#[derive(clap::Args)]
struct DaemonArgs {
    /// The daemon's config, for its [admin] socket. Default: ./keel.toml if present, else the
    /// embedded default.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The admin socket itself (overrides --config).
    #[arg(long)]
    socket: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PoolAction {
    /// Back into service (also after rapid-fail protection disabled it).
    Enable,
    /// Out of service until enabled: its requests get 503, its workers drain.
    Disable,
}

fn main() -> ExitCode {
    // keel starting an HTTP worker through itself (see os::spawn::exec_with_listen_pid).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == keel::os::spawn::LISTEN_PID_SHIM)
    {
        let error = keel::os::spawn::exec_with_listen_pid(&args[2..]);
        eprintln!(
            "keel: cannot run {:?}: {error}",
            args.get(2).unwrap_or(&"".into())
        );
        return ExitCode::from(127);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Check { config } => check(config),
        Command::Init { path, force } => init(&path, force),
        Command::Status { daemon, json } => admin(daemon, Request::Status { json }),
        Command::Recycle { daemon, pool } => admin(daemon, Request::Recycle { pool }),
        Command::Pool {
            daemon,
            action,
            pool,
        } => admin(
            daemon,
            match action {
                PoolAction::Enable => Request::Enable { pool },
                PoolAction::Disable => Request::Disable { pool },
            },
        ),
        Command::Invalidate {
            daemon,
            url,
            prefix,
        } => admin(
            daemon,
            Request::Invalidate(InvalidateRequest { url, prefix }),
        ),
        Command::Stop { daemon, timeout } => admin(daemon, Request::Stop { timeout }),
        Command::Reload { daemon } => admin(daemon, Request::Reload),
        Command::Upgrade { daemon } => admin(daemon, Request::Upgrade),
    }
}

/// A command for the running daemon, sent to its admin socket.
fn admin(daemon: DaemonArgs, request: Request) -> ExitCode {
    let socket = match daemon.socket {
        Some(s) => s,
        None => match load(daemon.config) {
            Ok(c) => c.admin.socket,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
    };
    client::run(&socket, request)
}

/// Which config a command uses: the named file, ./keel.toml, or the embedded default.
fn load(explicit: Option<PathBuf>) -> Result<Config, config::ConfigError> {
    match explicit {
        Some(path) => config::load_file(&path),
        None if Path::new("keel.toml").exists() => config::load_file(Path::new("keel.toml")),
        None => Ok(config::embedded_default()),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal; log files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn serve(config: Option<PathBuf>) -> ExitCode {
    init_tracing();
    let config = match load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match &config.source {
        config::ConfigSource::File(p) => tracing::info!("config {}", p.display()),
        config::ConfigSource::Embedded => {
            tracing::info!(
                "no keel.toml here: running the embedded default (keel init writes it out)"
            )
        }
    }
    // One serving thread gets tokio's single-threaded scheduler: nothing to steal from, so
    // none of the work-stealing scheduler's bookkeeping (about 3 % of a request's
    // instructions, bench/instructions).
    let threads = config.daemon.serving_threads();
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    tracing::info!("{threads} serving thread(s)");
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime");
    let result = runtime.and_then(|rt| rt.block_on(keel::daemon::run(config)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(config: Option<PathBuf>) -> ExitCode {
    match load(config) {
        Ok(c) => {
            let what = match &c.source {
                config::ConfigSource::File(p) => p.display().to_string(),
                config::ConfigSource::Embedded => "the embedded default".into(),
            };
            println!(
                "{what}: ok ({} site(s), {} pool(s))",
                c.sites.len(),
                c.pools.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init(path: &Path, force: bool) -> ExitCode {
    if path.exists() && !force {
        eprintln!("{} exists; use --force to overwrite it", path.display());
        return ExitCode::FAILURE;
    }
    match std::fs::write(path, config::DEFAULT_TOML) {
        Ok(()) => {
            println!("wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot write {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

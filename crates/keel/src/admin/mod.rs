//! The admin API: JSON over HTTP/1.1 on a unix socket (mode 0600), and optionally on TCP
//! for `/metrics`, `/healthz` and the status page's HTML (the rest there only with the
//! bearer token). The `keel` CLI's `status`, `recycle`, `pool`, `invalidate` and `stop` are
//! clients of it.
//!
//! `server.rs` owns the sockets and who may use which route; `routes.rs` turns a request into
//! a call on a pool, the cache or the daemon; `json.rs` holds the shapes both sides share;
//! `history.rs` samples queue depths for the status page (`status.html`, served at `/`);
//! `client.rs` and `table.rs` are the CLI's side. Every route is documented in
//! `docs/admin-api.yaml`.
//!
//! Invariant: the admin API only reads figures and sends the same commands as the daemon's
//! own triggers (pool commands, cache invalidation, the stop signal); it never holds a pool
//! lock across an await, and a request body is never read past [`routes::MAX_BODY`].

pub mod client;
pub mod history;
pub mod json;
pub mod routes;
pub mod server;
pub mod table;

use crate::config::{AppServe, Config};
use crate::log::ErrorLog;
use crate::pool::Pool;
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

pub use server::AdminServer;

/// What the admin API serves from: the daemon's pools and config, its error log, and its
/// stop switch.
pub struct AdminContext {
    /// Replaced after each reload.
    pools: RwLock<BTreeMap<String, Arc<Pool>>>,
    /// Fed by [`history::sample_queues`] while the admin API serves.
    queue_history: Mutex<history::QueueHistory>,
    /// Its last lines are shown by `GET /status` (replaced when a reload changes it).
    error_log: RwLock<ErrorLog>,
    sites: RwLock<Vec<json::Site>>,
    listeners: RwLock<Vec<json::Listener>>,
    started: Instant,
    stop_requested: CancellationToken,
    stopping: AtomicBool,
    token: Option<String>,
    /// Reload and upgrade requests go to the daemon's loop.
    control: crate::daemon::ControlTx,
}

/// The sites as `GET /status` shows them.
fn sites_of(config: &Config) -> Vec<json::Site> {
    config
        .sites
        .iter()
        .map(|s| json::Site {
            name: s.name.clone(),
            bindings: s.bindings.iter().map(ToString::to_string).collect(),
            apps: s
                .apps
                .iter()
                .map(|a| match &a.serve {
                    AppServe::Pool(p) => json::App {
                        path: a.path.clone(),
                        pool: Some(p.clone()),
                        root: None,
                    },
                    AppServe::Static(st) => json::App {
                        path: a.path.clone(),
                        pool: None,
                        root: Some(st.root.display().to_string()),
                    },
                })
                .collect(),
        })
        .collect()
}

impl AdminContext {
    pub fn new(
        config: &Config,
        pools: BTreeMap<String, Arc<Pool>>,
        error_log: ErrorLog,
        control: crate::daemon::ControlTx,
    ) -> AdminContext {
        AdminContext {
            pools: RwLock::new(pools),
            queue_history: Mutex::new(history::QueueHistory::default()),
            error_log: RwLock::new(error_log),
            sites: RwLock::new(sites_of(config)),
            listeners: RwLock::new(Vec::new()),
            started: Instant::now(),
            stop_requested: CancellationToken::new(),
            stopping: AtomicBool::new(false),
            token: config.admin.token.clone(),
            control,
        }
    }

    /// After a reload: the pools, sites and listening sockets now running.
    pub fn update(
        &self,
        config: &Config,
        pools: BTreeMap<String, Arc<Pool>>,
        listeners: Vec<(std::net::SocketAddr, Vec<String>)>,
        error_log: ErrorLog,
    ) {
        *self.error_log.write() = error_log;
        *self.pools.write() = pools;
        *self.sites.write() = sites_of(config);
        *self.listeners.write() = listeners
            .into_iter()
            .map(|(address, bindings)| json::Listener {
                address: address.to_string(),
                bindings,
            })
            .collect();
    }

    /// The pools running now, by name.
    pub fn pools(&self) -> BTreeMap<String, Arc<Pool>> {
        self.pools.read().clone()
    }

    /// A listening socket was bound (shown by `GET /status`).
    pub fn add_listener(&self, address: std::net::SocketAddr, bindings: Vec<String>) {
        self.listeners.write().push(json::Listener {
            address: address.to_string(),
            bindings,
        });
    }

    /// Fires when `POST /stop` asks the daemon to stop (the daemon treats it as SIGTERM).
    pub fn stop_requested(&self) -> CancellationToken {
        self.stop_requested.clone()
    }

    /// The daemon began its graceful stop (for whatever reason).
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

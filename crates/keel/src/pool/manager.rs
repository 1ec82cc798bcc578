//! The pool manager (IIS's WWW service for one pool): decides how many workers run, starts
//! them on demand or at start, stops idle ones, recycles (overlapped, one at a time), and
//! takes a crash-looping pool offline with rapid-fail protection and back-off.
//!
//! One task per pool owns every decision about that pool's workers; worker tasks
//! ([`super::worker`]) report to it, operators reach it through [`Command`]s. Invariants:
//! - every pool and worker state change goes through `set_state` / `set_worker_state`,
//!   which log it with its cause;
//! - a recycle never leaves the pool without a ready worker when `overlap` is on: the old
//!   worker is drained only once its replacement said hello;
//! - a disabled pool starts nothing and answers its queue with `AppOffline`.

use super::attach::Attached;
use super::rapid_fail::RapidFail;
use super::recycle::{self, WorkerAge};
use super::state::{PoolState, RecycleTrigger, WorkerState};
use super::worker::{self, Ending, Origin, WorkerControl, WorkerEvent, WorkerTimers};
use super::{Pool, PoolFigures, WorkerFigures};
use crate::config::StartMode;
use crate::config::WorkerProtocol;
use crate::dispatch::WorkerConn;
use crate::http_worker::bridge::{self, BridgeSpec};
use crate::http_worker::endpoint::Endpoint;
use crate::os::cgroup::PoolCgroup;
use crate::os::spawn::{RLimits, SpawnSpec, spawn_worker};

/// Requests an HTTP worker gets at once when its pool sets no `capacity`: a plain HTTP
/// server's concurrency is unknown, and a request keel still holds can always be replayed.
pub const DEFAULT_HTTP_CAPACITY: u32 = 1;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What an operator (admin API, reload) asks of a pool.
#[derive(Debug, Clone, Copy)]
pub enum Command {
    /// Replace every worker, one at a time.
    Recycle(RecycleTrigger),
    /// Take a disabled pool back into service at once.
    Enable,
    /// Take the pool out of service until an operator enables it (IIS: stop the app pool).
    Disable,
}

/// Worker ids are unique in the daemon, not just in a pool: a pool replaced by a reload
/// runs beside its successor for a while, and ids name cgroups and sockets.
fn next_worker_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

const SPAWN_BACKOFF_START: Duration = Duration::from_millis(100);
const SPAWN_BACKOFF_MAX: Duration = Duration::from_secs(5);

struct WorkerEntry {
    id: u64,
    pid: u32,
    state: WorkerState,
    attached: bool,
    started: SystemTime,
    ready_at: Option<Instant>,
    conn: Option<Arc<WorkerConn>>,
    control: mpsc::UnboundedSender<WorkerControl>,
    uptime_limit: Option<Duration>,
    /// How many recycles its slot has been through.
    recycles: u64,
    rss: Option<u64>,
}

struct Recycling {
    old: u64,
    trigger: RecycleTrigger,
    /// The worker started to take over (overlapped recycles).
    replacement: Option<u64>,
}

pub struct Manager {
    pool: Arc<Pool>,
    cgroup: Option<PoolCgroup>,
    workers: Vec<WorkerEntry>,
    events_tx: mpsc::UnboundedSender<WorkerEvent>,
    events_rx: mpsc::UnboundedReceiver<WorkerEvent>,
    commands: mpsc::UnboundedReceiver<Command>,
    attach_rx: Option<mpsc::Receiver<Attached>>,
    rapid: RapidFail,
    state: PoolState,
    /// Disabled: when the back-off re-enables the pool (`None` = only an operator can).
    reenable_at: Option<Instant>,
    /// Workers the pool should have running (grows on demand, shrinks on idle shutdown).
    wanted: usize,
    recycle_queue: VecDeque<(u64, RecycleTrigger)>,
    recycling: Option<Recycling>,
    recycles_total: u64,
    spawn_backoff: Duration,
    spawn_not_before: Option<Instant>,
    last_minute: u16,
    last_exit: Option<String>,
    stopping: bool,
}

impl Manager {
    pub fn new(
        pool: Arc<Pool>,
        commands: mpsc::UnboundedReceiver<Command>,
        cgroup: Option<PoolCgroup>,
        attach_rx: Option<mpsc::Receiver<Attached>>,
    ) -> Self {
        let cfg = &pool.settings.config;
        let rapid = RapidFail::new(
            cfg.rapid_fail.failures,
            cfg.rapid_fail.interval,
            cfg.rapid_fail.backoff,
        );
        let wanted = match cfg.start {
            StartMode::Always => cfg.workers as usize,
            StartMode::OnDemand => 0,
        };
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Manager {
            cgroup,
            workers: Vec::new(),
            events_tx,
            events_rx,
            commands,
            attach_rx,
            rapid,
            state: PoolState::Idle,
            reenable_at: None,
            wanted,
            recycle_queue: VecDeque::new(),
            recycling: None,
            recycles_total: 0,
            spawn_backoff: SPAWN_BACKOFF_START,
            spawn_not_before: None,
            last_minute: recycle::local_minute_of_day(),
            last_exit: None,
            stopping: false,
            pool,
        }
    }

    fn name(&self) -> &str {
        self.pool.name()
    }

    pub async fn run(mut self, stop: CancellationToken) {
        tracing::info!(
            "pool {}: {} (start = {}, workers = {})",
            self.name(),
            self.state,
            match self.pool.settings.config.start {
                StartMode::Always => "always",
                StartMode::OnDemand => "on-demand",
            },
            self.pool.settings.config.workers
        );
        self.ensure_workers();
        self.publish();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(ev) = self.events_rx.recv() => self.on_event(ev),
                Some(cmd) = self.commands.recv() => self.on_command(cmd),
                _ = self.pool.demand.notified() => self.on_demand(),
                _ = self.pool.checkup.notified() => {
                    if !self.stopping && self.state != PoolState::Disabled {
                        self.check_recycle_triggers(Instant::now());
                        self.next_recycle();
                    }
                }
                Some(a) = recv_attached(&mut self.attach_rx) => self.adopt(a),
                _ = tick.tick() => self.on_tick(),
                _ = stop.cancelled(), if !self.stopping => self.begin_stop(),
            }
            if self.stopping && self.workers.is_empty() {
                break;
            }
            self.ensure_workers();
            self.update_state();
            self.publish();
            self.pool.may_grow.store(
                self.wanted < self.pool.settings.config.workers as usize,
                std::sync::atomic::Ordering::Release,
            );
        }
        self.publish();
        if let Some(cg) = self.cgroup.take() {
            let _ = tokio::task::spawn_blocking(move || cg.remove()).await;
        }
    }

    // ---- state ----

    fn set_state(&mut self, to: PoolState, cause: &str) {
        if self.state != to {
            tracing::info!("pool {}: {} -> {} ({cause})", self.name(), self.state, to);
            self.state = to;
        }
    }

    fn set_worker_state(&mut self, id: u64, to: WorkerState, cause: &str) {
        let name = self.pool.settings.name.clone();
        if let Some(w) = self.workers.iter_mut().find(|w| w.id == id)
            && w.state != to
        {
            tracing::info!(
                "worker {} of pool {}: {} -> {} ({cause})",
                w.pid,
                name,
                w.state,
                to
            );
            w.state = to;
        }
    }

    /// The pool's state follows from its workers, except Disabled and Stopped, which are
    /// set by decisions.
    fn update_state(&mut self) {
        if matches!(self.state, PoolState::Disabled | PoolState::Stopped) {
            return;
        }
        let ready = self.workers.iter().any(|w| w.state == WorkerState::Ready);
        let starting = self.workers.iter().any(|w| w.state == WorkerState::Spawned);
        let (to, cause) = if self.recycling.is_some() && ready {
            (PoolState::Recycling, "a worker is being replaced")
        } else if ready {
            (PoolState::Running, "a worker is ready")
        } else if starting {
            (PoolState::Starting, "a worker is starting")
        } else if self.workers.is_empty() {
            (PoolState::Idle, "no worker running")
        } else {
            (PoolState::Starting, "workers draining")
        };
        self.set_state(to, cause);
    }

    // ---- events ----

    fn on_event(&mut self, ev: WorkerEvent) {
        match ev {
            WorkerEvent::Ready { id, conn } => self.on_ready(id, conn),
            WorkerEvent::Exited { id, ending } => self.on_exited(id, ending),
        }
    }

    fn on_ready(&mut self, id: u64, conn: Arc<WorkerConn>) {
        let uptime = self
            .pool
            .settings
            .config
            .recycle
            .uptime
            .map(recycle::jittered);
        let Some(w) = self.workers.iter_mut().find(|w| w.id == id) else {
            return;
        };
        w.conn = Some(conn.clone());
        w.ready_at = Some(Instant::now());
        w.uptime_limit = uptime;
        self.set_worker_state(id, WorkerState::Ready, "said hello");
        self.rapid.record_success();
        self.spawn_backoff = SPAWN_BACKOFF_START;
        if self.stopping || self.state == PoolState::Disabled {
            self.drain(id, "pool is not serving");
            return;
        }
        self.pool.worker_ready(conn);
        // An overlapped recycle: the replacement is ready, so the old worker may go.
        if let Some(r) = &self.recycling
            && r.replacement == Some(id)
        {
            let old = r.old;
            self.drain(old, "recycled: its replacement is ready");
        }
    }

    fn on_exited(&mut self, id: u64, ending: Ending) {
        let Some(pos) = self.workers.iter().position(|w| w.id == id) else {
            return;
        };
        let cause = ending.to_string();
        crate::metrics::worker_exited(&self.pool.settings.name, &ending);
        self.set_worker_state(id, WorkerState::Exited, &cause);
        let w = self.workers.remove(pos);
        if let Some(conn) = &w.conn {
            self.pool.worker_gone(conn);
        }
        match &ending {
            Ending::Drained => {}
            _ => tracing::warn!("worker {} of pool {} {cause}", w.pid, self.name()),
        }
        self.last_exit = Some(format!("pid {}: {cause}", w.pid));
        if let Some(r) = &self.recycling {
            if r.old == id {
                tracing::info!(
                    "recycle of worker {} of pool {} ({}) complete",
                    w.pid,
                    self.name(),
                    r.trigger
                );
                self.recycling = None;
            } else if r.replacement == Some(id) {
                tracing::warn!(
                    "recycle of pool {} abandoned: the replacement worker {} {cause}; the old worker keeps serving",
                    self.name(),
                    w.pid
                );
                self.recycling = None;
            }
        }
        if matches!(ending, Ending::StartupFailure(_)) {
            self.spawn_not_before = Some(Instant::now() + self.spawn_backoff);
            self.spawn_backoff = (self.spawn_backoff * 2).min(SPAWN_BACKOFF_MAX);
        }
        if ending.is_failure() && !self.stopping && self.rapid.record_failure(Instant::now()) {
            self.disable();
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Recycle(trigger) => {
                let ids: Vec<u64> = self
                    .workers
                    .iter()
                    .filter(|w| w.state == WorkerState::Ready && !w.attached)
                    .map(|w| w.id)
                    .collect();
                for id in ids {
                    self.queue_recycle(id, trigger);
                }
                self.next_recycle();
            }
            Command::Enable => {
                if self.state == PoolState::Disabled {
                    self.enable("enabled by an operator");
                }
            }
            Command::Disable => {
                if self.state != PoolState::Disabled && !self.stopping {
                    self.reenable_at = None;
                    self.take_offline(
                        "disabled by an operator; waiting for an operator to enable it",
                    );
                }
            }
        }
    }

    fn on_demand(&mut self) {
        if self.stopping || self.state == PoolState::Disabled {
            return;
        }
        if self.pool.queue_len() == 0 {
            return;
        }
        let max = self.pool.settings.config.workers as usize;
        let starting = self
            .workers
            .iter()
            .any(|w| w.state == WorkerState::Spawned && !w.attached);
        if self.wanted < max && (!starting || self.wanted == 0) {
            self.wanted += 1;
            tracing::info!(
                "pool {}: {} request(s) waiting: starting worker {} of {} on demand",
                self.name(),
                self.pool.queue_len(),
                self.wanted,
                max
            );
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if self.state == PoolState::Disabled {
            if self.reenable_at.is_some_and(|t| now >= t) {
                self.enable("rapid-fail back-off elapsed");
            }
            return;
        }
        if self.stopping {
            return;
        }
        self.on_demand();
        self.idle_shutdown();
        self.check_recycle_triggers(now);
        self.next_recycle();
    }

    // ---- decisions ----

    fn ensure_workers(&mut self) {
        if self.stopping || self.state == PoolState::Disabled {
            return;
        }
        if self.spawn_not_before.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // A non-overlapped recycle starts the replacement only once the old worker is gone.
        if let Some(r) = &self.recycling
            && !self.pool.settings.config.overlap
            && self.workers.iter().any(|w| w.id == r.old)
        {
            return;
        }
        let old = self.recycling.as_ref().map(|r| r.old);
        let live = self
            .workers
            .iter()
            .filter(|w| {
                !w.attached
                    && matches!(w.state, WorkerState::Spawned | WorkerState::Ready)
                    && Some(w.id) != old
            })
            .count();
        for _ in live..self.wanted {
            if !self.spawn() {
                break;
            }
        }
    }

    /// Starts one worker process; false when it could not be started.
    fn spawn(&mut self) -> bool {
        let cfg = &self.pool.settings.config;
        let id = next_worker_id();
        let cgroup = match &self.cgroup {
            Some(pc) => match pc.worker(id, cfg.memory_max, cfg.cpu_max) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    tracing::warn!(
                        "pool {}: cannot create the worker's cgroup: {e}",
                        self.name()
                    );
                    None
                }
            },
            None => None,
        };
        let identity = cfg.identity.as_ref().map(|i| (i.uid, i.gid));
        // An HTTP worker's listening place, bound before the process starts.
        let endpoint = match (&cfg.protocol, &self.pool.settings.http_dir) {
            (WorkerProtocol::Http(http), Some(dir)) => {
                match Endpoint::bind(dir, id, http.listen, identity) {
                    Ok(ep) => Some(ep),
                    Err(e) => {
                        tracing::error!(
                            "pool {}: cannot bind a worker's socket in {}: {e}",
                            self.name(),
                            dir.display()
                        );
                        return self.spawn_failed(format!("cannot bind its socket: {e}"));
                    }
                }
            }
            _ => None,
        };
        let mut env = self.pool.settings.spawn.env.clone();
        if let Some(ep) = &endpoint {
            env.extend(ep.env());
        }
        let spec = SpawnSpec {
            identity,
            env,
            listener: endpoint.as_ref().and_then(|ep| ep.listener.clone()),
            limits: RLimits {
                nofile: cfg.limits.nofile,
                nproc: cfg.limits.nproc,
                core: cfg.limits.core,
            },
            cgroup,
            ..self.pool.settings.spawn.clone()
        };
        let spawned = match spawn_worker(&spec) {
            Ok(s) => s,
            Err(e) => {
                let why = format!("cannot start {:?}: {e}", spec.argv);
                tracing::error!("pool {}: {why}", self.name());
                return self.spawn_failed(why);
            }
        };
        let origin = match (endpoint, &cfg.protocol) {
            (Some(endpoint), WorkerProtocol::Http(http)) => {
                let bridge = bridge::start(BridgeSpec {
                    endpoint,
                    health_path: http.health_path.clone(),
                    capacity: cfg.capacity.unwrap_or(DEFAULT_HTTP_CAPACITY),
                    pid: spawned.pid,
                    pool: self.pool.settings.name.clone(),
                });
                Origin::Http(spawned, bridge)
            }
            _ => Origin::Spawned(spawned),
        };
        let replaces = self
            .recycling
            .as_ref()
            .and_then(|r| r.replacement.is_none().then_some(r.old));
        let recycles = match replaces {
            Some(old) => self
                .workers
                .iter()
                .find(|w| w.id == old)
                .map_or(0, |w| w.recycles + 1),
            None => 0,
        };
        if let Some(r) = self.recycling.as_mut()
            && r.replacement.is_none()
            && self.pool.settings.config.overlap
        {
            r.replacement = Some(id);
        }
        let pid = origin.pid();
        tracing::info!("worker {pid} of pool {}: started", self.name());
        crate::metrics::worker_started(&self.pool.settings.name);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        self.workers.push(WorkerEntry {
            id,
            pid,
            state: WorkerState::Spawned,
            attached: false,
            started: SystemTime::now(),
            ready_at: None,
            conn: None,
            control: ctl_tx,
            uptime_limit: None,
            recycles,
            rss: None,
        });
        tokio::spawn(worker::run(
            self.pool.clone(),
            id,
            origin,
            self.timers(),
            spec.cgroup,
            self.events_tx.clone(),
            ctl_rx,
        ));
        true
    }

    /// A worker could not be started: back off, and count it for rapid-fail.
    fn spawn_failed(&mut self, why: String) -> bool {
        self.last_exit = Some(why);
        self.spawn_not_before = Some(Instant::now() + self.spawn_backoff);
        self.spawn_backoff = (self.spawn_backoff * 2).min(SPAWN_BACKOFF_MAX);
        if self.rapid.record_failure(Instant::now()) {
            self.disable();
        }
        false
    }

    fn timers(&self) -> WorkerTimers {
        let cfg = &self.pool.settings.config;
        WorkerTimers {
            startup_timeout: cfg.startup_timeout,
            shutdown_timeout: cfg.shutdown_timeout,
            ping_interval: cfg.ping_interval,
            ping_timeout: cfg.ping_timeout,
        }
    }

    fn adopt(&mut self, a: Attached) {
        if self.stopping || self.state == PoolState::Disabled {
            tracing::warn!(
                "pool {}: refusing attached worker {} (pool is {})",
                self.name(),
                a.pid,
                self.state
            );
            return;
        }
        let id = next_worker_id();
        let pid = a.pid;
        tracing::info!("worker {pid} of pool {}: attached", self.name());
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        self.workers.push(WorkerEntry {
            id,
            pid,
            state: WorkerState::Spawned,
            attached: true,
            started: SystemTime::now(),
            ready_at: None,
            conn: None,
            control: ctl_tx,
            uptime_limit: None,
            recycles: 0,
            rss: None,
        });
        tokio::spawn(worker::run(
            self.pool.clone(),
            id,
            Origin::Attached(a),
            self.timers(),
            None,
            self.events_tx.clone(),
            ctl_rx,
        ));
    }

    fn drain(&mut self, id: u64, cause: &str) {
        let Some(w) = self.workers.iter().find(|w| w.id == id) else {
            return;
        };
        if matches!(w.state, WorkerState::Draining | WorkerState::Exited) {
            return;
        }
        if let Some(conn) = &w.conn {
            self.pool.worker_gone(conn);
        }
        let _ = w.control.send(WorkerControl::Drain);
        self.set_worker_state(id, WorkerState::Draining, cause);
    }

    fn idle_shutdown(&mut self) {
        let cfg = &self.pool.settings.config;
        let Some(idle_timeout) = cfg.idle_timeout else {
            return;
        };
        if cfg.start != StartMode::OnDemand || self.recycling.is_some() {
            return;
        }
        let idle: Vec<(u64, Duration)> = self
            .workers
            .iter()
            .filter(|w| w.state == WorkerState::Ready && !w.attached)
            .filter_map(|w| {
                let idle_for = w.conn.as_ref()?.idle_for();
                (idle_for >= idle_timeout).then_some((w.id, idle_for))
            })
            .collect();
        for (id, idle_for) in idle {
            self.wanted = self.wanted.saturating_sub(1);
            let cause = format!(
                "idle for {} (idle_timeout)",
                humantime::format_duration(Duration::from_secs(idle_for.as_secs()))
            );
            self.drain(id, &cause);
        }
    }

    fn check_recycle_triggers(&mut self, now: Instant) {
        let cfg = self.pool.settings.config.recycle.clone();
        let minute = recycle::local_minute_of_day();
        let scheduled = recycle::schedule_due(&cfg.schedule, self.last_minute, minute);
        self.last_minute = minute;
        let mut due = Vec::new();
        for w in self.workers.iter_mut() {
            if w.state != WorkerState::Ready || w.attached {
                continue;
            }
            w.rss = crate::os::proc::rss_bytes(w.pid);
            let age = WorkerAge {
                up_for: w.ready_at.map_or(Duration::ZERO, |t| now.duration_since(t)),
                uptime_limit: w.uptime_limit,
                requests: w.conn.as_ref().map_or(0, |c| c.requests()),
                rss: w.rss,
            };
            if let Some(trigger) = recycle::due(&cfg, &age) {
                due.push((w.id, trigger));
            } else if scheduled {
                due.push((w.id, RecycleTrigger::Schedule));
            }
        }
        for (id, trigger) in due {
            self.queue_recycle(id, trigger);
        }
    }

    fn queue_recycle(&mut self, id: u64, trigger: RecycleTrigger) {
        let already = self.recycle_queue.iter().any(|(q, _)| *q == id)
            || self.recycling.as_ref().is_some_and(|r| r.old == id);
        if !already {
            self.recycle_queue.push_back((id, trigger));
        }
    }

    /// Starts the next queued recycle when none is running (a web garden recycles one
    /// worker at a time).
    fn next_recycle(&mut self) {
        if self.recycling.is_some() || self.stopping || self.state == PoolState::Disabled {
            return;
        }
        while let Some((id, trigger)) = self.recycle_queue.pop_front() {
            let Some(w) = self.workers.iter().find(|w| w.id == id) else {
                continue;
            };
            if w.state != WorkerState::Ready {
                continue;
            }
            let pid = w.pid;
            self.recycles_total += 1;
            crate::metrics::recycle_begun(&self.pool.settings.name, trigger);
            tracing::info!(
                "recycling worker {pid} of pool {}: trigger {trigger}{}",
                self.name(),
                if self.pool.settings.config.overlap {
                    " (overlapped: the replacement starts first)"
                } else {
                    ""
                }
            );
            self.recycling = Some(Recycling {
                old: id,
                trigger,
                replacement: None,
            });
            if !self.pool.settings.config.overlap {
                self.drain(id, &format!("recycled ({trigger})"));
            }
            // ensure_workers (after this event) starts the replacement.
            return;
        }
    }

    fn disable(&mut self) {
        let rf = &self.pool.settings.config.rapid_fail;
        self.reenable_at = self.rapid.reenable_after().map(|d| Instant::now() + d);
        let cause = format!(
            "rapid-fail protection: {} failures within {}{}",
            rf.failures,
            humantime::format_duration(rf.interval),
            match self.rapid.reenable_after() {
                Some(d) => format!("; re-enabled in {}", humantime::format_duration(d)),
                None => "; waiting for an operator to enable it".into(),
            }
        );
        self.take_offline(&cause);
    }

    /// Disabled: queued and new requests get `AppOffline`, every worker drains, nothing
    /// starts until [`Self::enable`].
    fn take_offline(&mut self, cause: &str) {
        self.set_state(PoolState::Disabled, cause);
        self.pool.set_disabled(true);
        self.recycling = None;
        self.recycle_queue.clear();
        let ids: Vec<u64> = self.workers.iter().map(|w| w.id).collect();
        for id in ids {
            self.drain(id, "pool disabled");
        }
        self.wanted = 0;
    }

    fn enable(&mut self, cause: &str) {
        self.rapid.reset_window();
        self.reenable_at = None;
        self.spawn_not_before = None;
        self.spawn_backoff = SPAWN_BACKOFF_START;
        self.pool.set_disabled(false);
        self.wanted = match self.pool.settings.config.start {
            StartMode::Always => self.pool.settings.config.workers as usize,
            StartMode::OnDemand => 0,
        };
        self.set_state(PoolState::Idle, cause);
    }

    fn begin_stop(&mut self) {
        self.stopping = true;
        self.set_state(PoolState::Stopped, "keel is stopping");
        self.pool.begin_stop();
        self.recycle_queue.clear();
        let ids: Vec<u64> = self.workers.iter().map(|w| w.id).collect();
        for id in ids {
            self.drain(id, "keel is stopping");
        }
    }

    fn publish(&mut self) {
        let now = Instant::now();
        let failures = self.rapid.failures_in_interval(now);
        let workers = self
            .workers
            .iter()
            .map(|w| WorkerFigures {
                pid: w.pid,
                state: w.state,
                attached: w.attached,
                started: w.started,
                requests: w.conn.as_ref().map_or(0, |c| c.requests()),
                in_flight: w.conn.as_ref().map_or(0, |c| c.in_flight()),
                last_ping_rtt: w.conn.as_ref().and_then(|c| c.last_ping_rtt()),
                rss: w.rss,
                recycles: w.recycles,
            })
            .collect();
        let figures = PoolFigures {
            state: self.state,
            workers_wanted: self.wanted,
            workers_running: self
                .workers
                .iter()
                .filter(|w| w.state == WorkerState::Ready)
                .count(),
            failures_in_interval: failures,
            recycles: self.recycles_total,
            last_exit: self.last_exit.clone(),
            workers,
        };
        *self.pool.figures.lock() = figures;
    }
}

async fn recv_attached(rx: &mut Option<mpsc::Receiver<Attached>>) -> Option<Attached> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

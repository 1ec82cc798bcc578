//! An application pool: its bounded queue, its ready workers, and FIFO dispatch between them.
//!
//! Invariants:
//! - a request is either in the queue or open on exactly one worker, never both;
//! - dispatch is FIFO: a worker with a free slot always takes the queue's head;
//! - a worker never has more streams open than the capacity agreed in its welcome;
//! - a disabled pool queues nothing: new and queued requests are refused with `AppOffline`.
//!
//! Which workers run, and when they start, stop and are replaced, is the [`manager`]'s
//! business; one worker's life is in [`worker`].

pub mod attach;
pub mod manager;
pub mod rapid_fail;
pub mod recycle;
pub mod state;
pub mod worker;

use crate::config::{PoolConfig, RetryPolicy};
use crate::dispatch::{Event, Job, WorkerConn};
use crate::log::Reason;
use crate::os::spawn::SpawnSpec;
use crate::queue::{QueueKey, RequestQueue};
use parking_lot::Mutex;
use state::{PoolState, WorkerState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, mpsc};

pub use manager::Command;

/// The settings a pool runs with, decided from its config.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub name: Arc<str>,
    pub queue_length: usize,
    pub queue_timeout: Duration,
    /// The pool's cap on concurrent requests per worker (the worker's own hello may be lower).
    pub capacity_cap: Option<u32>,
    pub retry: RetryPolicy,
    /// Command, environment and directory of every worker (identity, limits and cgroup are
    /// added per worker by the manager).
    pub spawn: SpawnSpec,
    pub config: PoolConfig,
    /// `<runtime_dir>/http/<pool>`: where HTTP workers' sockets are bound (HTTP pools only).
    pub http_dir: Option<std::path::PathBuf>,
}

impl PoolSettings {
    pub fn from_config(cfg: &PoolConfig) -> Self {
        let mut env = cfg.env.clone();
        if let Some(cap) = cfg.capacity {
            env.insert("KEEL_CAPACITY".into(), cap.to_string());
        }
        env.insert("KEEL_POOL".into(), cfg.name.clone());
        PoolSettings {
            name: cfg.name.as_str().into(),
            queue_length: cfg.queue_length as usize,
            queue_timeout: cfg.queue_timeout,
            capacity_cap: cfg.capacity,
            retry: cfg.retry,
            spawn: SpawnSpec {
                argv: cfg.command.clone(),
                env,
                cwd: cfg.cwd.clone(),
                identity: None,
                limits: Default::default(),
                cgroup: None,
                listener: None,
                http: matches!(cfg.protocol, crate::config::WorkerProtocol::Http(_)),
            },
            config: cfg.clone(),
            http_dir: None,
        }
    }
}

/// Where a submitted request went.
#[derive(Debug, PartialEq, Eq)]
pub enum Placement {
    /// Straight to a worker with a free slot.
    Dispatched,
    /// Into the queue, to wait for a slot.
    Queued,
}

/// Why a pool refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue holds `queue_length` requests already.
    QueueFull,
    /// Rapid-fail protection took the pool offline.
    AppOffline,
}

impl Refusal {
    pub fn reason(self) -> Reason {
        match self {
            Refusal::QueueFull => Reason::QueueFull,
            Refusal::AppOffline => Reason::AppOffline,
        }
    }
}

/// What the ops view shows of one worker.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkerFigures {
    pub pid: u32,
    pub state: WorkerState,
    pub attached: bool,
    pub started: SystemTime,
    pub requests: u64,
    pub in_flight: usize,
    pub last_ping_rtt: Option<Duration>,
    pub rss: Option<u64>,
    /// Recycles its slot has been through.
    pub recycles: u64,
}

/// What the ops view shows of a pool (kept by the manager, read by anyone).
#[derive(Clone, Debug, serde::Serialize)]
pub struct PoolFigures {
    pub state: PoolState,
    pub workers_wanted: usize,
    pub workers_running: usize,
    pub failures_in_interval: u32,
    pub recycles: u64,
    pub last_exit: Option<String>,
    pub workers: Vec<WorkerFigures>,
}

struct PoolInner {
    queue: RequestQueue<Job>,
    /// Workers that said hello and can take requests.
    ready: Vec<Arc<WorkerConn>>,
}

pub struct Pool {
    pub settings: PoolSettings,
    inner: Mutex<PoolInner>,
    next_key: AtomicU64,
    stopping: AtomicBool,
    disabled: AtomicBool,
    /// Rung when a request had to queue: the manager may start a worker.
    pub demand: Notify,
    /// The manager could start another worker on demand (it wants fewer than `workers`).
    /// When not, a queued request does not wake it: with every worker busy, most requests
    /// queue, and the wake-up and its bookkeeping cost more than the rest of the queueing.
    pub may_grow: AtomicBool,
    /// Rung when a worker reached `recycle.requests`: the manager checks at once rather
    /// than at its next tick.
    pub checkup: Notify,
    commands: mpsc::UnboundedSender<Command>,
    pub figures: Mutex<PoolFigures>,
    /// Set when a reload replaced this pool: new requests go to the successor.
    successor: Mutex<Option<Arc<Pool>>>,
    /// Set when a reload retired this pool (replaced or removed). Shared with the cache's
    /// candidates of its answers, so that what it still answers is not stored.
    retired: Arc<AtomicBool>,
    /// How long its requests waited in the queue (the metrics series).
    pub queue_wait: crate::metrics::QueueWaitMetric,
}

impl Pool {
    /// The pool and the receiving end of its command channel (for its manager).
    pub fn new(settings: PoolSettings) -> (Arc<Self>, mpsc::UnboundedReceiver<Command>) {
        let (commands, rx) = mpsc::unbounded_channel();
        let pool = Arc::new(Pool {
            queue_wait: crate::metrics::QueueWaitMetric::new(settings.name.clone()),
            inner: Mutex::new(PoolInner {
                queue: RequestQueue::new(settings.queue_length),
                ready: Vec::new(),
            }),
            settings,
            next_key: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            disabled: AtomicBool::new(false),
            demand: Notify::new(),
            may_grow: AtomicBool::new(true),
            checkup: Notify::new(),
            commands,
            figures: Mutex::new(PoolFigures {
                state: PoolState::Idle,
                workers_wanted: 0,
                workers_running: 0,
                failures_in_interval: 0,
                recycles: 0,
                last_exit: None,
                workers: Vec::new(),
            }),
            successor: Mutex::new(None),
            retired: Arc::default(),
        });
        (pool, rx)
    }

    /// The pool a new request should go to: this one, or, once a reload replaced it, its
    /// newest successor (a route table read just before the swap may still name this one).
    pub fn current(self: &Arc<Self>) -> Arc<Pool> {
        let mut pool = self.clone();
        // Bounded: a chain longer than this means reloads faster than requests route.
        for _ in 0..64 {
            let next = pool.successor.lock().clone();
            match next {
                Some(next) => pool = next,
                None => break,
            }
        }
        pool
    }

    /// A reload replaced this pool by `successor`.
    pub fn set_successor(&self, successor: Arc<Pool>) {
        *self.successor.lock() = Some(successor);
    }

    /// A reload retired this pool: its answers from now on are not cached. Called before
    /// its cached entries are dropped, so none stored after that drop stays
    /// (`Cache::finish` checks the flag again after inserting).
    pub fn mark_retired(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    /// The flag [`Pool::mark_retired`] sets, for the cache.
    pub fn retired(&self) -> &Arc<AtomicBool> {
        &self.retired
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    pub fn next_key(&self) -> QueueKey {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// A new request: to a free worker slot, else to the back of the queue, else refused.
    pub fn submit(&self, job: Job) -> Result<Placement, Refusal> {
        if self.disabled.load(Ordering::Acquire) {
            return Err(Refusal::AppOffline);
        }
        let mut inner = self.inner.lock();
        if inner.queue.is_empty()
            && let Some(worker) = pick_worker(&inner.ready)
        {
            worker.open_stream(&job);
            return Ok(Placement::Dispatched);
        }
        if inner.queue.push_back(job.key, job).is_err() {
            return Err(Refusal::QueueFull);
        }
        drop(inner);
        self.ask_for_worker();
        Ok(Placement::Queued)
    }

    /// An accepted request whose worker was lost goes back to the head of the queue
    /// (or is refused, if the pool went offline meanwhile).
    pub fn requeue_front(&self, job: Job) {
        if self.disabled.load(Ordering::Acquire) {
            let _ = job.events.send(Event::Refused(Refusal::AppOffline));
            return;
        }
        let mut inner = self.inner.lock();
        inner.queue.push_front(job.key, job);
        dispatch_queued(&mut inner);
        let waiting = !inner.queue.is_empty();
        drop(inner);
        if waiting {
            self.ask_for_worker();
        }
    }

    /// A request is waiting: the manager is told, if it could start a worker for it.
    fn ask_for_worker(&self) {
        if self.may_grow.load(Ordering::Acquire) {
            self.demand.notify_one();
        }
    }

    /// Takes a request out of the queue (client gone, queue timer expired). False when it
    /// has already been dispatched.
    pub fn remove_queued(&self, key: QueueKey) -> bool {
        self.inner.lock().queue.remove(key).is_some()
    }

    pub fn queue_len(&self) -> usize {
        self.inner.lock().queue.len()
    }

    pub fn ready_workers(&self) -> usize {
        self.inner.lock().ready.len()
    }

    /// A worker said hello: it joins the dispatch set and takes queued requests at once.
    pub fn worker_ready(&self, worker: Arc<WorkerConn>) {
        let mut inner = self.inner.lock();
        if !inner.ready.iter().any(|w| Arc::ptr_eq(w, &worker)) {
            inner.ready.push(worker);
        }
        dispatch_queued(&mut inner);
    }

    /// A worker is leaving (lost, draining): no new request goes to it.
    pub fn worker_gone(&self, worker: &Arc<WorkerConn>) {
        self.inner.lock().ready.retain(|w| !Arc::ptr_eq(w, worker));
    }

    /// A stream closed on `worker`: its slot takes the queue's head.
    pub fn slot_freed(&self, worker: &Arc<WorkerConn>) {
        let mut inner = self.inner.lock();
        if !inner.ready.iter().any(|w| Arc::ptr_eq(w, worker)) {
            return; // draining or gone: it takes nothing new
        }
        while !inner.queue.is_empty() && worker.has_room() {
            if let Some((_, job)) = inner.queue.pop_front() {
                worker.open_stream(&job);
            }
        }
    }

    /// Rapid-fail took the pool offline (or an operator brought it back). Going offline
    /// answers every queued request with `AppOffline`.
    pub fn set_disabled(&self, disabled: bool) {
        self.disabled.store(disabled, Ordering::Release);
        if disabled {
            let waiting = self.inner.lock().queue.drain_all();
            for job in waiting {
                let _ = job.events.send(Event::Refused(Refusal::AppOffline));
            }
        }
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Acquire)
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Shutdown begins: workers that exit from now on are not replaced.
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Asks the manager to recycle every worker (admin command, config change).
    pub fn recycle(&self, trigger: state::RecycleTrigger) {
        let _ = self.commands.send(Command::Recycle(trigger));
    }

    /// Asks the manager to take a disabled pool back into service now.
    pub fn enable(&self) {
        let _ = self.commands.send(Command::Enable);
    }

    /// Asks the manager to take the pool out of service until [`Pool::enable`].
    pub fn disable(&self) {
        let _ = self.commands.send(Command::Disable);
    }

    pub fn figures(&self) -> PoolFigures {
        self.figures.lock().clone()
    }
}

/// The ready worker with the most free slots (spreads load across a web garden).
fn pick_worker(ready: &[Arc<WorkerConn>]) -> Option<&Arc<WorkerConn>> {
    ready
        .iter()
        .filter(|w| w.has_room())
        .min_by_key(|w| w.in_flight() * 1024 / w.capacity.max(1))
}

fn dispatch_queued(inner: &mut PoolInner) {
    while !inner.queue.is_empty() {
        let Some(worker) = pick_worker(&inner.ready).cloned() else {
            return;
        };
        if let Some((_, job)) = inner.queue.pop_front() {
            worker.open_stream(&job);
        }
    }
}

//! An application pool: its bounded queue, its ready workers, and FIFO dispatch between them.
//!
//! Invariants:
//! - a request is either in the queue or open on exactly one worker, never both;
//! - dispatch is FIFO: a worker with a free slot always takes the queue's head;
//! - a worker never has more streams open than the capacity agreed in its welcome.
//!
//! Starting, watching and replacing worker processes lives in [`supervisor`].

pub mod supervisor;

use crate::config::{PoolConfig, RetryPolicy};
use crate::dispatch::{Job, WorkerConn};
use crate::os::spawn::SpawnSpec;
use crate::queue::{QueueFull, QueueKey, RequestQueue};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The settings a pool runs with, decided from its config.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub name: Arc<str>,
    pub workers: usize,
    pub queue_length: usize,
    pub queue_timeout: Duration,
    /// The pool's cap on concurrent requests per worker (the worker's own hello may be lower).
    pub capacity_cap: Option<u32>,
    pub retry: RetryPolicy,
    pub spawn: SpawnSpec,
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
            workers: cfg.workers as usize,
            queue_length: cfg.queue_length as usize,
            queue_timeout: cfg.queue_timeout,
            capacity_cap: cfg.capacity,
            retry: cfg.retry,
            spawn: SpawnSpec {
                argv: cfg.command.clone(),
                env,
                cwd: cfg.cwd.clone(),
            },
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
}

impl Pool {
    pub fn new(settings: PoolSettings) -> Arc<Self> {
        Arc::new(Pool {
            inner: Mutex::new(PoolInner {
                queue: RequestQueue::new(settings.queue_length),
                ready: Vec::new(),
            }),
            settings,
            next_key: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    pub fn next_key(&self) -> QueueKey {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// A new request: to a free worker slot, else to the back of the queue, else refused.
    pub fn submit(&self, job: Job) -> Result<Placement, QueueFull<Job>> {
        let mut inner = self.inner.lock();
        if inner.queue.is_empty()
            && let Some(worker) = pick_worker(&inner.ready)
        {
            worker.open_stream(&job);
            return Ok(Placement::Dispatched);
        }
        inner.queue.push_back(job.key, job)?;
        Ok(Placement::Queued)
    }

    /// An accepted request whose worker was lost goes back to the head of the queue.
    pub fn requeue_front(&self, job: Job) {
        let mut inner = self.inner.lock();
        inner.queue.push_front(job.key, job);
        dispatch_queued(&mut inner);
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
        inner.ready.push(worker);
        dispatch_queued(&mut inner);
    }

    /// A worker is leaving (lost, draining): no new request goes to it.
    pub fn worker_gone(&self, worker: &Arc<WorkerConn>) {
        self.inner.lock().ready.retain(|w| !Arc::ptr_eq(w, worker));
    }

    /// A stream closed on `worker`: its slot takes the queue's head.
    pub fn slot_freed(&self, worker: &Arc<WorkerConn>) {
        let mut inner = self.inner.lock();
        while !inner.queue.is_empty() && worker.has_room() {
            if let Some((_, job)) = inner.queue.pop_front() {
                worker.open_stream(&job);
            }
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Shutdown begins: workers that exit from now on are not replaced.
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// The workers currently ready (for drain at shutdown).
    pub fn ready_snapshot(&self) -> Vec<Arc<WorkerConn>> {
        self.inner.lock().ready.clone()
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

//! The pool and worker state machines. The manager owns one [`PoolState`] per pool and
//! one [`WorkerState`] per worker; every change goes through `transition`, which logs it
//! with its cause.
//!
//! ```text
//! Pool:    Idle ──demand──▶ Starting ──hello──▶ Running ◀──▶ Recycling
//!           ▲                  │                   │
//!           └──idle shutdown───┴───rapid-fail──────┴──▶ Disabled ──back-off/enable──▶ Idle
//!          any ──daemon stop──▶ Stopped
//! Worker:  Spawned ──hello──▶ Ready ──drain (recycle, idle, stop)──▶ Draining ──▶ Exited
//!             └──────────────────┴──crash, kill, startup failure──────────────────▶ Exited
//! ```

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum PoolState {
    /// No worker runs; the first request starts one (on-demand).
    Idle,
    /// Workers were started; none has said hello yet.
    Starting,
    /// At least one worker serves.
    Running,
    /// Serving while a worker is being replaced.
    Recycling,
    /// Rapid-fail protection took the pool offline: requests get 503 `AppOffline`.
    Disabled,
    /// The daemon is shutting down.
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum WorkerState {
    /// Process started, HELLO not yet received.
    Spawned,
    /// Takes requests.
    Ready,
    /// Told to finish its requests and exit; takes no new ones.
    Draining,
    /// Gone.
    Exited,
}

impl fmt::Display for PoolState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What made a worker be replaced (IIS `logEventOnRecycle` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RecycleTrigger {
    /// `recycle.uptime` reached (jittered).
    Time,
    /// `recycle.requests` served.
    Requests,
    /// RSS passed `recycle.memory`.
    Memory,
    /// A `recycle.schedule` time of day.
    Schedule,
    /// The pool's configuration changed.
    ConfigChange,
    /// An operator asked (admin API / CLI).
    OnDemand,
}

impl fmt::Display for RecycleTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

//! Queue depth over the last minutes, for the status page's charts: one sample per pool
//! every [`SAMPLE_INTERVAL`], the last [`SAMPLES`] kept (5 minutes).
//!
//! Kept by the daemon rather than by the page, so that a page opened now shows the minutes
//! before it was opened. [`QueueHistory`] is plain data; [`sample_queues`] is the task that
//! feeds it.

use super::AdminContext;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often each pool's queue depth is recorded.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept per pool: 5 minutes at [`SAMPLE_INTERVAL`].
pub const SAMPLES: usize = 150;

/// The last [`SAMPLES`] queue depths of each pool, oldest first.
#[derive(Debug, Default)]
pub struct QueueHistory {
    depths: BTreeMap<String, VecDeque<usize>>,
}

impl QueueHistory {
    /// Records one sample for `pool`, dropping its oldest beyond [`SAMPLES`].
    pub fn record(&mut self, pool: &str, depth: usize) {
        let ring = self
            .depths
            .entry(pool.to_owned())
            .or_insert_with(|| VecDeque::with_capacity(SAMPLES));
        if ring.len() == SAMPLES {
            ring.pop_front();
        }
        ring.push_back(depth);
    }

    /// `pool`'s samples, oldest first (empty before the first).
    pub fn of(&self, pool: &str) -> Vec<usize> {
        self.depths
            .get(pool)
            .map(|ring| ring.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// Records every pool's queue depth every [`SAMPLE_INTERVAL`] until `stop`.
pub async fn sample_queues(ctx: Arc<AdminContext>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    // After a stall (a suspended machine), one sample, not a burst of them.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        // Depths are read before the history lock is taken: no pool lock is held with it.
        let depths: Vec<(String, usize)> = ctx
            .pools()
            .iter()
            .map(|(name, pool)| (name.clone(), pool.queue_len()))
            .collect();
        let mut history = ctx.queue_history.lock();
        for (name, depth) in depths {
            history.record(&name, depth);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_samples_oldest_first() {
        let mut h = QueueHistory::default();
        assert!(h.of("shop").is_empty());
        for depth in 0..SAMPLES + 3 {
            h.record("shop", depth);
        }
        h.record("api", 7);
        let shop = h.of("shop");
        assert_eq!(shop.len(), SAMPLES);
        assert_eq!(shop[0], 3);
        assert_eq!(shop[SAMPLES - 1], SAMPLES + 2);
        assert_eq!(h.of("api"), vec![7]);
    }
}

//! A per-thread memo of the entries that answered plain HTTP/1.1 hits lately, so that a hot
//! URL is answered again without its key being built or the store being asked.
//!
//! The store (moka) stays the one cache: it bounds, admits, evicts and expires. The memo only
//! remembers, for a few URLs on each serving thread, which of the store's entries answered
//! them, and trusts that answer only while nothing has left the store since:
//! - every removal from the store (evicted, expired, replaced, dropped) and every
//!   invalidation request adds one to the cache's removal count; a slot keeps the count read
//!   before its store lookup, and is not used once the count has moved;
//! - a slot is used for at most [`TOUCH_EVERY`] (a quarter of `scavenge_after` if that is
//!   shorter); then the URL takes the store's lookup again, so the store still sees it used
//!   (its idle timeout and its eviction order);
//! - only entries of at most [`MAX_WEIGHT`] bytes are kept, in [`SLOTS`] slots a thread: an
//!   entry the store let go but a slot still holds is freed when the slot is next looked at
//!   or taken, and at most `SLOTS × MAX_WEIGHT` (1 MiB) a serving thread is held that way
//!   beyond `max_bytes`.
//!
//! The memo is keyed by what the request said (the connection's scheme, the Host value as
//! sent, the target), each slot by a hash of it; a slot whose key differs is a miss.

use super::{Cache, Entry, SiteCounters};
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Slots per serving thread.
pub const SLOTS: usize = 64;
/// The largest entry (by the store's weight) a slot keeps.
pub const MAX_WEIGHT: u32 = 16 * 1024;
/// How long a slot answers before its URL is looked up in the store again.
pub const TOUCH_EVERY: Duration = Duration::from_secs(1);

struct Slot {
    hash: u64,
    tls: bool,
    host: Box<str>,
    target: Box<str>,
    entry: Arc<Entry>,
    /// The entry's site's figures, so a hit is counted with one atomic add.
    counters: Arc<SiteCounters>,
    /// The cache's removal count before the lookup that found `entry`.
    removals: u64,
    /// When `entry` was found in the store.
    looked_up: Instant,
}

struct Table {
    /// The cache the slots are of (`Cache::id`): a reload's new cache starts empty.
    cache: u64,
    slots: Vec<Option<Slot>>,
}

impl Table {
    /// The table, emptied if it held another cache's slots.
    fn of(&mut self, cache: u64) -> &mut Self {
        if self.cache != cache {
            self.cache = cache;
            self.slots.clear();
            self.slots.resize_with(SLOTS, || None);
        }
        self
    }
}

thread_local! {
    static TABLE: RefCell<Table> = const {
        RefCell::new(Table {
            cache: 0,
            slots: Vec::new(),
        })
    };
}

/// A memo miss: what [`Cache::remember_hot`] needs to fill the slot after the store's lookup.
pub struct HotMiss {
    removals: u64,
    hash: u64,
}

/// A hash of a plain request's key, eight bytes at a time (a slot compares the key itself,
/// so a collision only costs a miss).
fn hash(tls: bool, host: &str, target: &str) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = u64::from(tls) ^ ((host.len() as u64) << 32) ^ target.len() as u64;
    for part in [host.as_bytes(), target.as_bytes()] {
        let mut words = part.chunks_exact(8);
        for w in &mut words {
            let w = u64::from_le_bytes(w.try_into().unwrap_or_default());
            h = (h ^ w).wrapping_mul(K).rotate_left(29);
        }
        let mut last = [0u8; 8];
        last[..words.remainder().len()].copy_from_slice(words.remainder());
        h = (h ^ u64::from_le_bytes(last))
            .wrapping_mul(K)
            .rotate_left(29);
    }
    h ^ (h >> 32)
}

impl Cache {
    /// The entry this thread remembers for a plain GET or HEAD of `target` at `host` (on a
    /// TLS connection or not), if it is still the store's, fresh at `now`, and `site`'s:
    /// counted as a hit. A miss says how to remember the store's answer.
    pub fn peek_hot(
        &self,
        tls: bool,
        host: &str,
        target: &str,
        site: &Arc<str>,
        now: Instant,
    ) -> Result<Arc<Entry>, HotMiss> {
        // Read before the store's lookup (see the module's comment).
        let removals = self.removals.load(Ordering::Acquire);
        let hash = hash(tls, host, target);
        let miss = HotMiss { removals, hash };
        TABLE.with_borrow_mut(|table| {
            let slot = &mut table.of(self.id).slots[hash as usize % SLOTS];
            let Some(s) = slot else {
                return Err(miss);
            };
            if s.hash != hash || s.tls != tls || *s.host != *host || *s.target != *target {
                return Err(miss);
            }
            let usable = s.removals == removals
                && now.saturating_duration_since(s.looked_up) < self.touch_every
                && s.entry.is_fresh(now)
                && s.entry.of_site(site);
            if !usable {
                *slot = None;
                return Err(miss);
            }
            s.counters.hits.fetch_add(1, Ordering::Relaxed);
            Ok(s.entry.clone())
        })
    }

    /// Remembers `entry`, found in the store after [`Cache::peek_hot`] missed, for the next
    /// plain requests of the same key on this thread.
    pub fn remember_hot(
        &self,
        miss: HotMiss,
        tls: bool,
        host: &str,
        target: &str,
        entry: &Arc<Entry>,
        now: Instant,
    ) {
        if entry.weight > MAX_WEIGHT || self.touch_every.is_zero() {
            return;
        }
        let counters = self.counters.site(&entry.site);
        TABLE.with_borrow_mut(|table| {
            table.of(self.id).slots[miss.hash as usize % SLOTS] = Some(Slot {
                hash: miss.hash,
                tls,
                host: host.into(),
                target: target.into(),
                entry: entry.clone(),
                counters,
                removals: miss.removals,
                looked_up: now,
            });
        });
    }

    /// Something left the store, or was asked to: every remembered answer is looked up again.
    pub(super) fn note_removal(&self) {
        self.removals.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::hash;

    #[test]
    fn the_hash_tells_every_part_of_the_key_apart() {
        let base = hash(false, "example.com", "/a?b=1");
        assert_eq!(base, hash(false, "example.com", "/a?b=1"));
        assert_ne!(base, hash(true, "example.com", "/a?b=1"));
        assert_ne!(base, hash(false, "example.org", "/a?b=1"));
        assert_ne!(base, hash(false, "example.com", "/a?b=2"));
        assert_ne!(base, hash(false, "example.com/a", "?b=1"));
        assert_ne!(hash(false, "", "/12345678"), hash(false, "", "/12345679"));
    }
}

//! The response cache (DESIGN §7): byte-bounded, shared by every connection, consulted by
//! `request_path` before a request reaches its pool's queue.
//!
//! - `policy.rs` decides what may be stored and for how long (plain functions, table tests);
//! - this file holds the store (moka, weighed in bytes, per-entry expiry), admission, keys
//!   and variants (`Vary`), request collapsing, invalidation and the figures;
//! - `serve.rs` builds the response for a hit (Age, HEAD, 304, 206).
//!
//! Invariants:
//! - an entry holds a response ready to serve: its HTTP/1.1 status line and fields as
//!   prepared bytes (`Entry::prepared`) beside the parsed fields conditionals need, so a
//!   plain HTTP/1.1 hit is one lookup and one write (`listener/h1_front.rs`); other hits
//!   are one lookup, one `HeaderMap` clone and a `Bytes` clone of the body. Never a body
//!   copy, and never a queue or a worker;
//! - stored bytes are owned by the entry (copied once when stored), so the weight of an entry
//!   is what it really keeps alive, and the sum of weights never exceeds `max_bytes` once the
//!   store's pending work has run (it runs after every insert);
//! - an entry remembers its pool: `invalidate_pool` and a worker's INVALIDATE frame reach only
//!   that pool's entries;
//! - nothing a pool answers after a reload retired it stays stored (`Candidate::retired`).

mod hot;
pub mod policy;
mod serve;

pub use hot::HotMiss;
pub use serve::{Written, respond, write_http1};

use crate::config::{CacheAdmission, CacheCollapse, CacheConfig};
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use keel_proto::InvalidateScope;
use moka::notification::RemovalCause;
use parking_lot::{Mutex, RwLock};
use policy::Lifetime;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// What the cache did for a response; found in the response's extensions (for the access
/// log) and sent to the client as `x-cache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Answered from a fresh entry.
    Hit,
    /// Answered by the worker (and maybe stored).
    Miss,
    /// Answered from an expired entry because the pool failed (stale-if-error).
    Stale,
    /// Answered with the response another request for the same URL fetched meanwhile.
    Collapsed,
}

/// The response field that tells the client what the cache did ([`CacheStatus::as_str`]).
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

impl CacheStatus {
    /// The `x-cache` value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit | CacheStatus::Collapsed => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
        }
    }
}

/// Which URLs [`Cache::invalidate`] drops: full URLs as the cache keys them,
/// `scheme://host/path?query` with the host lower-cased (e.g. `http://example.com/a?b=1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Exact(String),
    Prefix(String),
}

/// Fixed cost counted per entry on top of its key, headers and body (moka's node, the
/// `Entry` struct, the header map's tables).
const ENTRY_OVERHEAD: usize = 256;

/// `admission = "frequent"`: stored on its second request within this window (IIS
/// `frequentHitThreshold` 2 and `frequentHitTimePeriod` 10 s).
pub const FREQUENT_HITS: u32 = 2;
pub const FREQUENT_WINDOW: Duration = Duration::from_secs(10);

/// How long a URL whose response could not be stored is fetched without collapsing
/// (Varnish's hit-for-miss default): with `collapse = "all"`, an uncacheable URL's
/// concurrent requests wait on each other only once in this time. A response that can be
/// stored ends it at once.
const PASS_FOR: Duration = Duration::from_secs(120);

/// URLs each side table (`seen`, `pass`, `known`) holds at most.
const SIDE_TABLE_URLS: u64 = 100_000;

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    url: Arc<str>,
    /// The values of the request headers the URL's `Vary` names; `None` for the primary
    /// entry (a response without `Vary`, or the URL's `Vary` record).
    variant: Option<Box<[u8]>>,
}

/// The request headers a URL's responses vary on.
pub struct VarySpec {
    names: Vec<HeaderName>,
    /// keel chose the coding of the URL's answers itself from `Accept-Encoding` (the site
    /// compresses them): that field is keyed by the coding it selects (`br`, `gzip` or
    /// `identity`), not by its text, so every browser's spelling of the same choice shares
    /// one entry. A worker's own coding is keyed by the field's text: its choice is its own.
    coding_chosen_here: bool,
    pool: Arc<str>,
    site: Arc<str>,
}

impl VarySpec {
    fn variant(&self, req: &HeaderMap) -> Box<[u8]> {
        let mut out = Vec::new();
        for name in &self.names {
            out.extend_from_slice(name.as_str().as_bytes());
            if self.coding_chosen_here && name == header::ACCEPT_ENCODING {
                out.push(b':');
                let coding = crate::compress::choose(req).map_or("identity", |e| e.as_str());
                out.extend_from_slice(coding.as_bytes());
                out.push(b'\n');
                continue;
            }
            // An absent field is told from an empty one (RFC 9111 §4.1: absent matches
            // absent only).
            out.push(if req.contains_key(name) { b':' } else { b'!' });
            let mut first = true;
            for v in req.get_all(name) {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend(v.as_bytes().iter().filter(|b| **b != b' '));
            }
            out.push(b'\n');
        }
        out.into_boxed_slice()
    }
}

/// One stored response, ready to serve.
pub struct Entry {
    pub status: StatusCode,
    /// Without hop-by-hop fields, `Content-Length` (the body says it), `Age` and `x-cache`.
    pub headers: HeaderMap,
    /// `status` and `headers` as HTTP/1.1 bytes (`HTTP/1.1 200 OK\r\nname: value\r\n…`,
    /// without the blank line): what a plain hit writes before `Age`, `x-cache`,
    /// `Content-Length` and `Date`.
    pub prepared: Bytes,
    /// What `headers` say about the end of the head (`http1_head::put_end_known`).
    pub prepared_says: crate::http1_head::Written,
    pub body: Bytes,
    pub etag: Option<HeaderValue>,
    pub last_modified: Option<SystemTime>,
    /// Its `Date`, or when it arrived if it had none (RFC 9110 §6.6.1): what tells whether
    /// its `Last-Modified` is a strong validator (`conditional::Validators::date`).
    pub date: SystemTime,
    pub stored_at: Instant,
    /// The response's `Age` when it arrived.
    pub initial_age: Duration,
    /// `None`: fresh until invalidated.
    pub fresh_for: Option<Duration>,
    /// After `fresh_for`, how long the entry may still answer when the pool fails.
    pub stale_if_error: Duration,
    pub pool: Arc<str>,
    pub site: Arc<str>,
    vary: Option<(Arc<VarySpec>, Box<[u8]>)>,
    weight: u32,
}

impl Entry {
    /// RFC 9111 §4.2.3 current age (the daemon is the only clock, so no correction).
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored_at)
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        self.fresh_for.is_none_or(|f| self.age(now) < f)
    }

    /// Past its freshness but inside the stale-if-error window.
    pub fn usable_stale(&self, now: Instant) -> bool {
        match self.fresh_for {
            None => true,
            Some(f) => self.age(now) < f + self.stale_if_error,
        }
    }

    /// The entry was stored by `site` (the same name: a reload keeps names, not `Arc`s).
    fn of_site(&self, site: &Arc<str>) -> bool {
        Arc::ptr_eq(&self.site, site) || *self.site == **site
    }

    /// The entry answers a request with these headers (same variant).
    fn matches(&self, req: &HeaderMap) -> bool {
        match &self.vary {
            None => true,
            Some((spec, variant)) => spec.variant(req) == *variant,
        }
    }
}

#[derive(Clone)]
enum Slot {
    Vary(Arc<VarySpec>),
    Response(Arc<Entry>),
}

impl Slot {
    fn pool(&self) -> &str {
        match self {
            Slot::Vary(v) => &v.pool,
            Slot::Response(e) => &e.pool,
        }
    }
    fn site(&self) -> &Arc<str> {
        match self {
            Slot::Vary(v) => &v.site,
            Slot::Response(e) => &e.site,
        }
    }
    /// The slot was stored by `site` (by name, as [`Entry::of_site`]).
    fn of_site(&self, site: &Arc<str>) -> bool {
        let ours = self.site();
        Arc::ptr_eq(ours, site) || **ours == **site
    }
}

fn weigh(key: &Key, slot: &Slot) -> u32 {
    let key_bytes = key.url.len() + key.variant.as_ref().map_or(0, |v| v.len());
    let value = match slot {
        Slot::Vary(v) => v.names.iter().map(|n| n.as_str().len()).sum::<usize>(),
        Slot::Response(e) => return e.weight.saturating_add(key_bytes as u32),
    };
    u32::try_from(ENTRY_OVERHEAD + key_bytes + value).unwrap_or(u32::MAX)
}

struct EntryExpiry;

impl moka::Expiry<Key, Slot> for EntryExpiry {
    fn expire_after_create(&self, _: &Key, slot: &Slot, _: Instant) -> Option<Duration> {
        match slot {
            Slot::Vary(_) => None,
            Slot::Response(e) => e
                .fresh_for
                .map(|f| (f + e.stale_if_error).saturating_sub(e.initial_age)),
        }
    }

    fn expire_after_update(
        &self,
        key: &Key,
        slot: &Slot,
        at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, slot, at)
    }
}

/// `[cache]` as the cache uses it.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub max_bytes: u64,
    pub max_entry_bytes: usize,
    pub admission: CacheAdmission,
    pub scavenge_after: Duration,
    pub stale_if_error: Duration,
    pub collapse: CacheCollapse,
}

impl From<&CacheConfig> for CacheSettings {
    fn from(c: &CacheConfig) -> Self {
        CacheSettings {
            max_bytes: c.max_bytes,
            max_entry_bytes: usize::try_from(c.max_entry_bytes).unwrap_or(usize::MAX),
            admission: c.admission,
            scavenge_after: c.scavenge_after,
            stale_if_error: c.stale_if_error,
            collapse: c.collapse,
        }
    }
}

#[derive(Default)]
struct SiteCounters {
    hits: AtomicU64,
    misses: AtomicU64,
    stale_hits: AtomicU64,
    collapsed: AtomicU64,
    stored_bytes: AtomicU64,
    entries: AtomicU64,
    evictions: AtomicU64,
}

#[derive(Default)]
struct Counters {
    // Fx, not SipHash: site names come from the config.
    sites: RwLock<rustc_hash::FxHashMap<Arc<str>, Arc<SiteCounters>>>,
}

impl Counters {
    fn site(&self, site: &Arc<str>) -> Arc<SiteCounters> {
        if let Some(c) = self.sites.read().get(site) {
            return c.clone();
        }
        self.sites.write().entry(site.clone()).or_default().clone()
    }

    /// Adds one to a figure of `site`'s, without taking a handle on its counters (a
    /// handle costs two atomic operations more on every request).
    fn bump(&self, site: &Arc<str>, figure: impl Fn(&SiteCounters) -> &AtomicU64) {
        if let Some(c) = self.sites.read().get(site) {
            figure(c).fetch_add(1, Ordering::Relaxed);
            return;
        }
        figure(&self.site(site)).fetch_add(1, Ordering::Relaxed);
    }
}

/// Cache figures for one site (also as the admin API shows them, `GET /status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SiteFigures {
    pub hits: u64,
    pub misses: u64,
    pub stale_hits: u64,
    pub collapsed: u64,
    pub stored_bytes: u64,
    pub entries: u64,
    pub evictions: u64,
}

/// A snapshot of the cache's figures (for `keel status` and the status page).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheFigures {
    pub max_bytes: u64,
    /// What the store holds by its own weighing (≤ `max_bytes`).
    pub stored_bytes: u64,
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub stale_hits: u64,
    pub collapsed: u64,
    /// Entries dropped to make room (not expiries or invalidations).
    pub evictions: u64,
    pub sites: BTreeMap<String, SiteFigures>,
}

/// What [`Cache::peek_fresh`] found.
pub enum Peek {
    Fresh(Arc<Entry>),
    /// Nothing is stored for the URL.
    Absent,
    /// Something is stored for the URL, but no fresh entry for this request.
    NotFresh,
}

/// The result of a lookup.
pub enum Lookup {
    Fresh(Arc<Entry>),
    /// Expired but inside its stale-if-error window: answer with it only if the pool fails.
    Stale(Arc<Entry>),
    Miss,
}

type FlightTx = watch::Sender<Option<Arc<Entry>>>;
/// URLs being fetched, each with its flight id and the channel its followers wait on.
type Flights = Arc<Mutex<HashMap<Arc<str>, (u64, FlightTx)>>>;

/// Joining the fetch of a URL: lead it, or wait for its leader.
pub enum Flight {
    Leader(FlightGuard),
    Follower(watch::Receiver<Option<Arc<Entry>>>),
}

/// Held by the one request that fetches a URL for everyone waiting on it. Publishing hands
/// them the response; dropping it unpublished sends them to the worker themselves.
pub struct FlightGuard {
    flights: Flights,
    url: Arc<str>,
    id: u64,
}

impl FlightGuard {
    pub fn publish(self, entry: Arc<Entry>) {
        if let Some((_, tx)) = self.take() {
            tx.send_replace(Some(entry));
        }
    }

    fn take(&self) -> Option<(u64, FlightTx)> {
        let mut flights = self.flights.lock();
        match flights.get(&self.url) {
            Some((id, _)) if *id == self.id => flights.remove(&self.url),
            _ => None,
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        // Dropping the sender wakes the followers with "closed".
        drop(self.take());
    }
}

/// What a response needs to become an entry once its body is complete.
pub struct Candidate {
    url: Arc<str>,
    /// `url`'s key in the side tables ([`Cache::fingerprint`]).
    fingerprint: Fingerprint,
    status: StatusCode,
    headers: HeaderMap,
    lifetime: Lifetime,
    vary: Option<(Arc<VarySpec>, Box<[u8]>)>,
    pool: Arc<str>,
    /// Set when a reload retires the pool that answered (`None`: a static root's answer):
    /// the answer comes from the code and config being replaced, and its pool's
    /// `invalidate_pool` has run, so it is not stored.
    retired: Option<Arc<AtomicBool>>,
    site: Arc<str>,
    /// A stale entry was there: the URL is known, admit without counting.
    refresh: bool,
}

/// The stores' hasher: keys are URLs clients choose, so the hash is keyed by a random
/// per-process seed (aHash, built to resist collision floods) rather than fixed; it costs a
/// fraction of std's SipHash, which was a fifth of a cache hit's lookup.
type UrlHasher = ahash::RandomState;

/// A URL as the side tables know it ([`Cache::fingerprint`]).
type Fingerprint = u64;

pub struct Cache {
    store: moka::sync::Cache<Key, Slot, UrlHasher>,
    /// `admission = "frequent"`: requests per URL within the window.
    seen: Option<moka::sync::Cache<Fingerprint, Arc<AtomicU32>, UrlHasher>>,
    flights: Flights,
    /// URLs whose last response could not be stored ("hit-for-pass"): their concurrent
    /// requests are not collapsed, so an uncacheable URL never waits on another request.
    pass: moka::sync::Cache<Fingerprint, (), UrlHasher>,
    /// URLs whose last response could be stored (admitted or not): with
    /// `collapse = "cacheable"`, only these (and URLs with a stale entry) are collapsed.
    known: moka::sync::Cache<Fingerprint, (), UrlHasher>,
    /// Keys the side tables' fingerprints.
    fingerprints: UrlHasher,
    next_flight: AtomicU64,
    settings: CacheSettings,
    counters: Arc<Counters>,
    /// Tells this cache's remembered hits (`hot.rs`) from an earlier cache's.
    id: u64,
    /// Removals from the store and invalidation requests so far (`hot.rs`).
    removals: Arc<AtomicU64>,
    /// How long a remembered hit answers before the store is asked again (`hot.rs`).
    touch_every: Duration,
}

impl Cache {
    pub fn new(settings: CacheSettings) -> Arc<Cache> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let counters = Arc::new(Counters::default());
        let listener_counters = counters.clone();
        let removals = Arc::new(AtomicU64::new(0));
        let listener_removals = removals.clone();
        let policy = match settings.admission {
            CacheAdmission::TinyLfu => moka::policy::EvictionPolicy::tiny_lfu(),
            _ => moka::policy::EvictionPolicy::lru(),
        };
        let store = moka::sync::Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(weigh)
            .eviction_policy(policy)
            .expire_after(EntryExpiry)
            .time_to_idle(settings.scavenge_after)
            .support_invalidation_closures()
            .eviction_listener(move |key: Arc<Key>, slot: Slot, cause| {
                // Called once the entry is out of the store: a remembered hit read the count
                // before its lookup, so it cannot have found the entry after this.
                listener_removals.fetch_add(1, Ordering::Release);
                let c = listener_counters.site(slot.site());
                c.stored_bytes
                    .fetch_sub(u64::from(weigh(&key, &slot)), Ordering::Relaxed);
                c.entries.fetch_sub(1, Ordering::Relaxed);
                if cause == RemovalCause::Size {
                    c.evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build_with_hasher(UrlHasher::new());
        let seen = (settings.admission == CacheAdmission::Frequent).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(SIDE_TABLE_URLS)
                .time_to_live(FREQUENT_WINDOW)
                .build_with_hasher(UrlHasher::new())
        });
        Arc::new(Cache {
            store,
            seen,
            flights: Arc::default(),
            pass: moka::sync::Cache::builder()
                .max_capacity(SIDE_TABLE_URLS)
                .time_to_live(PASS_FOR)
                .build_with_hasher(UrlHasher::new()),
            known: moka::sync::Cache::builder()
                .max_capacity(SIDE_TABLE_URLS)
                .time_to_idle(settings.scavenge_after)
                .build_with_hasher(UrlHasher::new()),
            fingerprints: UrlHasher::new(),
            next_flight: AtomicU64::new(1),
            touch_every: hot::TOUCH_EVERY.min(settings.scavenge_after / 4),
            settings,
            counters,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            removals,
        })
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// The URL part of a key: `scheme://host/path?query`, the host ASCII lower-case and
    /// without the root dot of a fully qualified name (`Example.COM.:8080` is
    /// `example.com:8080`, the same host for routing; the port stays, as part of the URL the
    /// client named).
    pub fn url(scheme: &str, host: &str, path_and_query: &str) -> Arc<str> {
        thread_local! {
            // The URL is put together here, so the `Arc` is its one allocation (and the
            // parts, already `str`s, are not checked for UTF-8 again).
            static JOINED: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        JOINED.with_borrow_mut(|s| {
            s.clear();
            s.push_str(scheme);
            s.push_str("://");
            let from = s.len();
            s.push_str(host);
            s[from..].make_ascii_lowercase();
            if let Some(dot) = root_dot(&s[from..]) {
                s.remove(from + dot);
            }
            s.push_str(path_and_query);
            let url = Arc::from(s.as_str());
            // A very long URL's room is not kept for the thread's life.
            if s.capacity() > 4096 {
                *s = String::new();
            }
            url
        })
    }

    fn get(&self, url: &Arc<str>, variant: Option<Box<[u8]>>) -> Option<Slot> {
        self.store.get(&Key {
            url: url.clone(),
            variant,
        })
    }

    /// Looks `url` up for a request with headers `req` (counting a hit or a miss for
    /// `site`). The request path uses [`Cache::lookup_noting_pass`].
    #[cfg(test)]
    pub fn lookup(&self, url: &Arc<str>, req: &HeaderMap, site: &Arc<str>) -> Lookup {
        self.lookup_noting_pass(url, req, site, false).0
    }

    /// Looks `url` up (counting a hit or a miss for `site`), and tells whether `url` was
    /// answered uncacheably a moment ago (for [`Cache::join_flight`] and the request's own
    /// bookkeeping, without asking again).
    /// `absent`: [`Cache::peek_fresh`] found nothing stored for `url` a moment ago, so the
    /// store is not asked again (an entry stored in between is found by the next request).
    pub fn lookup_noting_pass(
        &self,
        url: &Arc<str>,
        req: &HeaderMap,
        site: &Arc<str>,
        absent: bool,
    ) -> (Lookup, bool) {
        let fingerprint = self.fingerprint(url);
        let passed = self.pass.contains_key(&fingerprint);
        let found = self.lookup_inner(url, fingerprint, req, site, passed, absent);
        (found, passed)
    }

    /// The URL's responses may be stored again: the next request takes the whole path.
    pub fn unmark_uncacheable(&self, url: &Arc<str>) {
        self.pass.invalidate(&self.fingerprint(url));
    }

    /// `url`'s key in the side tables: a keyed 64-bit hash, so that they hold a few dozen
    /// bytes per URL whatever its length (a URL may be 8 KiB; `SIDE_TABLE_URLS` of them
    /// whole would be gigabytes beside `max_bytes`). Two URLs sharing one (odds about one in
    /// 10^9 among 100 000, and a client cannot aim for it: the key is random per cache)
    /// would only share admission counts and collapsing hints, never an answer.
    fn fingerprint(&self, url: &str) -> Fingerprint {
        self.fingerprints.hash_one(url)
    }

    fn lookup_inner(
        &self,
        url: &Arc<str>,
        fingerprint: Fingerprint,
        req: &HeaderMap,
        site: &Arc<str>,
        passed: bool,
        absent: bool,
    ) -> Lookup {
        let stored = if absent { None } else { self.get(url, None) };
        // Answered uncacheably a moment ago: nothing stored, nothing to count for admission.
        if passed && stored.is_none() {
            self.count(site, CacheStatus::Miss);
            return Lookup::Miss;
        }
        let now = Instant::now();
        let entry = stored.and_then(|slot| self.entry_of(url, slot, req, site));
        match entry {
            Some(e) if e.is_fresh(now) => {
                self.count(site, CacheStatus::Hit);
                Lookup::Fresh(e)
            }
            Some(e) if e.usable_stale(now) => {
                self.count(site, CacheStatus::Miss);
                Lookup::Stale(e)
            }
            _ => {
                self.count(site, CacheStatus::Miss);
                if let Some(seen) = &self.seen {
                    seen.get_with(fingerprint, Arc::default)
                        .fetch_add(1, Ordering::Relaxed);
                }
                Lookup::Miss
            }
        }
    }

    /// The response stored for `url` in `slot` for a request with headers `req` routed to
    /// `site`: the slot's own, or, behind a `Vary`, the variant the request's headers select.
    /// An entry stored by another site is none (two sites whose bindings accept the same
    /// `Host` on different addresses or ports share a key, never a response).
    fn entry_of(
        &self,
        url: &Arc<str>,
        slot: Slot,
        req: &HeaderMap,
        site: &Arc<str>,
    ) -> Option<Arc<Entry>> {
        let entry = match slot {
            Slot::Response(e) => e,
            Slot::Vary(spec) => match self.get(url, Some(spec.variant(req)))? {
                Slot::Response(e) => e,
                Slot::Vary(_) => return None,
            },
        };
        entry.of_site(site).then_some(entry)
    }

    /// A fresh entry for `url` and a request with headers `req`, counted as a hit for
    /// `site`; otherwise nothing is counted or remembered for admission, so that the
    /// request's own [`Cache::lookup_noting_pass`] later counts it once.
    pub fn peek_fresh(
        &self,
        url: &Arc<str>,
        req: &HeaderMap,
        site: &Arc<str>,
        now: Instant,
    ) -> Peek {
        let Some(slot) = self.get(url, None) else {
            return Peek::Absent;
        };
        self.peek_counted(self.entry_of(url, slot, req, site), site, now)
    }

    /// [`Cache::peek_fresh`] for a request whose fields are not at hand (the HTTP/1.1
    /// front's plain GET or HEAD): `None` when the URL's responses vary on request fields,
    /// which the caller then looks up with.
    pub fn peek_plain(&self, url: &Arc<str>, site: &Arc<str>, now: Instant) -> Option<Peek> {
        match self.get(url, None) {
            None => Some(Peek::Absent),
            Some(Slot::Vary(_)) => None,
            Some(Slot::Response(entry)) => {
                let entry = entry.of_site(site).then_some(entry);
                Some(self.peek_counted(entry, site, now))
            }
        }
    }

    /// A peek at `entry`, the one stored for the request's site: fresh, and counted as a hit
    /// for `site`, or not fresh.
    fn peek_counted(&self, entry: Option<Arc<Entry>>, site: &Arc<str>, now: Instant) -> Peek {
        let Some(entry) = entry.filter(|e| e.is_fresh(now)) else {
            return Peek::NotFresh;
        };
        self.count(site, CacheStatus::Hit);
        Peek::Fresh(entry)
    }

    /// Counts an answer given from an entry other than a fresh lookup hit.
    pub fn count(&self, site: &Arc<str>, status: CacheStatus) {
        self.counters.bump(site, |c| match status {
            CacheStatus::Stale => &c.stale_hits,
            CacheStatus::Collapsed => &c.collapsed,
            CacheStatus::Hit => &c.hits,
            CacheStatus::Miss => &c.misses,
        });
    }

    /// The response for `url` could not be stored: its next requests are not collapsed
    /// for a while.
    pub fn mark_uncacheable(&self, url: Arc<str>) {
        // Uncacheable URLs are most requests of a dynamic site: keep this path write-free
        // once the URL is known (a moka insert per request costs more than the request).
        let url = self.fingerprint(&url);
        if self.known.contains_key(&url) {
            self.known.invalidate(&url);
        }
        if !self.pass.contains_key(&url) {
            self.pass.insert(url, ());
        }
    }

    /// Leads the fetch of `url`, or follows the request already fetching it. `None`: fetch
    /// it without collapsing (uncacheable lately, or not known to be cacheable under
    /// `collapse = "cacheable"`). `stale`: an expired entry of the URL is there.
    /// `passed`: what [`Cache::lookup_noting_pass`] said of the URL.
    pub fn join_flight(&self, url: &Arc<str>, stale: bool, passed: bool) -> Option<Flight> {
        if passed {
            return None;
        }
        let collapse = match self.settings.collapse {
            CacheCollapse::All => true,
            CacheCollapse::Cacheable => stale || self.known.contains_key(&self.fingerprint(url)),
        };
        if !collapse {
            return None;
        }
        Some(self.join_flight_now(url))
    }

    fn join_flight_now(&self, url: &Arc<str>) -> Flight {
        let mut flights = self.flights.lock();
        if let Some((_, tx)) = flights.get(url) {
            return Flight::Follower(tx.subscribe());
        }
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let (tx, _) = watch::channel(None);
        flights.insert(url.clone(), (id, tx));
        Flight::Leader(FlightGuard {
            flights: self.flights.clone(),
            url: url.clone(),
            id,
        })
    }

    /// Waits (at most `timeout`) for the leader's response. `None`: the response could not
    /// be shared (uncacheable, failed, another variant, too slow): fetch it yourself.
    pub async fn follow(
        &self,
        mut rx: watch::Receiver<Option<Arc<Entry>>>,
        req: &HeaderMap,
        site: &Arc<str>,
        timeout: Duration,
    ) -> Option<Arc<Entry>> {
        let waited = tokio::time::timeout(timeout, rx.wait_for(|v| v.is_some())).await;
        let entry = waited.ok()?.ok()?.clone()?;
        (entry.of_site(site) && entry.matches(req)).then_some(entry)
    }

    /// Prepares storing a response whose policy allows it. `req` are the request's headers,
    /// `resp` the response's as the client gets them; `retired`, the answering pool's
    /// retirement flag ([`Candidate`]).
    #[allow(clippy::too_many_arguments)]
    pub fn candidate(
        &self,
        url: Arc<str>,
        req: &HeaderMap,
        status: StatusCode,
        resp: &HeaderMap,
        lifetime: Lifetime,
        pool: &str,
        retired: Option<&Arc<AtomicBool>>,
        site: &Arc<str>,
        refresh: bool,
        coding_chosen_here: bool,
    ) -> Candidate {
        let fingerprint = self.fingerprint(&url);
        self.known.insert(fingerprint, ());
        let pool: Arc<str> = pool.into();
        let mut names: Vec<HeaderName> = Vec::new();
        for t in crate::header_list::members(resp, header::VARY) {
            if let Ok(name) = HeaderName::from_bytes(t.as_bytes())
                && !names.contains(&name)
            {
                names.push(name);
            }
        }
        let vary = (!names.is_empty()).then(|| {
            names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            let spec = Arc::new(VarySpec {
                names,
                coding_chosen_here,
                pool: pool.clone(),
                site: site.clone(),
            });
            let variant = spec.variant(req);
            (spec, variant)
        });
        // Owned copies: a header value borrowed from a worker's read buffer would keep the
        // whole buffer alive for the life of the entry.
        let mut headers = HeaderMap::with_capacity(resp.len());
        for (name, value) in resp {
            if matches!(
                name.as_str(),
                "content-length" | "age" | "x-cache" | "warning"
            ) {
                continue;
            }
            if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
                headers.append(name.clone(), v);
            }
        }
        Candidate {
            url,
            fingerprint,
            status,
            headers,
            lifetime,
            vary,
            pool,
            retired: retired.cloned(),
            site: site.clone(),
            refresh,
        }
    }

    /// The body is complete: builds the entry and stores it if admitted and its pool has not
    /// been retired. The entry is returned either way (collapsed followers get it even when
    /// it is not stored: they asked while the pool was serving).
    pub fn finish(&self, c: Candidate, body: &[u8]) -> Arc<Entry> {
        let header_bytes: usize = c
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        let variant_bytes = c.vary.as_ref().map_or(0, |(_, v)| v.len());
        let prepared = serve::prepare_head(c.status, &c.headers);
        let weight = u32::try_from(
            ENTRY_OVERHEAD + header_bytes + prepared.len() + body.len() + variant_bytes,
        )
        .unwrap_or(u32::MAX);
        // Every hit may close its connection: `Connection` is looked at too.
        let prepared_says = crate::http1_head::Written::of(&c.headers, true);
        let entry = Arc::new(Entry {
            status: c.status,
            prepared,
            prepared_says,
            etag: c.headers.get(header::ETAG).cloned(),
            last_modified: policy::http_date(&c.headers, header::LAST_MODIFIED),
            date: policy::http_date(&c.headers, header::DATE).unwrap_or_else(SystemTime::now),
            headers: c.headers,
            body: BytesMut::from(body).freeze(),
            stored_at: Instant::now(),
            initial_age: c.lifetime.initial_age,
            fresh_for: c.lifetime.fresh_for,
            stale_if_error: match c.lifetime.stale_if_error {
                Some(d) => d,
                None if c.lifetime.must_revalidate => Duration::ZERO,
                None => self.settings.stale_if_error,
            },
            pool: c.pool,
            site: c.site,
            vary: c.vary,
            weight,
        });
        // SeqCst, as `Pool::mark_retired` sets it: a check after the insert that still finds
        // it unset comes before the flag, hence before the `invalidate_pool` that follows it
        // and covers every entry inserted until then.
        let retired = || c.retired.as_ref().is_some_and(|r| r.load(Ordering::SeqCst));
        if body.len() <= self.settings.max_entry_bytes
            && self.admit(c.fingerprint, c.refresh)
            && !retired()
        {
            self.insert(c.url, entry.clone());
            // Retired between the check and the insert: its `invalidate_pool` may have come
            // before the entry was in. This entry alone goes again (not one the successor
            // pool, which has the same name, stored under the key meanwhile).
            if retired() {
                let ours = entry.clone();
                self.drop_where(move |_, slot| match slot {
                    Slot::Response(e) => Arc::ptr_eq(e, &ours),
                    Slot::Vary(spec) => ours
                        .vary
                        .as_ref()
                        .is_some_and(|(v, _)| Arc::ptr_eq(v, spec)),
                });
            }
        }
        entry
    }

    fn admit(&self, fingerprint: Fingerprint, refresh: bool) -> bool {
        match &self.seen {
            None => true,
            Some(_) if refresh => true,
            Some(seen) => seen
                .get(&fingerprint)
                .is_some_and(|n| n.load(Ordering::Relaxed) >= FREQUENT_HITS),
        }
    }

    fn insert(&self, url: Arc<str>, entry: Arc<Entry>) {
        let put = |key: Key, slot: Slot| {
            let c = self.counters.site(slot.site());
            c.stored_bytes
                .fetch_add(u64::from(weigh(&key, &slot)), Ordering::Relaxed);
            c.entries.fetch_add(1, Ordering::Relaxed);
            self.store.insert(key, slot);
        };
        match &entry.vary {
            None => put(Key { url, variant: None }, Slot::Response(entry)),
            Some((spec, variant)) => {
                let primary = Key {
                    url: url.clone(),
                    variant: None,
                };
                let same = matches!(self.store.get(&primary), Some(Slot::Vary(old)) if old.names == spec.names && old.coding_chosen_here == spec.coding_chosen_here);
                if !same {
                    put(primary, Slot::Vary(spec.clone()));
                }
                let key = Key {
                    url,
                    variant: Some(variant.clone()),
                };
                put(key, Slot::Response(entry));
            }
        }
        // Evict now, so memory never runs ahead of `max_bytes` while moka batches its work.
        self.store.run_pending_tasks();
    }

    /// Drops every entry `drops` picks. The store removes them in the background, but its
    /// lookups apply the predicate from the moment it is in place; the removal is counted
    /// after that (`hot.rs`), so no remembered hit outlives this call.
    fn drop_where(&self, drops: impl Fn(&Key, &Slot) -> bool + Send + Sync + 'static) {
        // Refused only by a store built without `support_invalidation_closures`.
        let _ = self.store.invalidate_entries_if(drops);
        self.note_removal();
    }

    /// Drops the entries of `scope` (every variant), whatever their pool.
    pub fn invalidate(&self, scope: Scope) {
        match scope {
            Scope::Exact(url) => self.drop_where(move |k, _| *k.url == *url),
            Scope::Prefix(prefix) => self.drop_where(move |k, _| k.url.starts_with(&prefix)),
        }
    }

    /// Drops what `site` stored for `url`, every variant of it: an unsafe request to the
    /// URL was answered without an error, so the resource changed (RFC 9111 §4.4). What
    /// another site stored under the same key stays. A URL with nothing stored costs one
    /// lookup, and no removal is counted for it (`hot.rs` keeps trusting its memo).
    pub fn invalidate_changed(&self, url: &Arc<str>, site: &Arc<str>) {
        let primary = Key {
            url: url.clone(),
            variant: None,
        };
        let Some(slot) = self.store.get(&primary) else {
            return;
        };
        if !slot.of_site(site) {
            return;
        }
        // The store's removal listener counts it. (A response stored for the key in between
        // by another site goes too: one miss more for that site.)
        self.store.invalidate(&primary);
        if let Slot::Vary(_) = slot {
            // The variants' keys are not known here: matched by URL and site.
            let (url, site) = (url.clone(), site.clone());
            self.drop_where(move |k, slot| k.url == url && slot.of_site(&site));
        }
    }

    /// A worker's INVALIDATE frame: `target` (path and query) matched against the entries of
    /// the worker's own pool only.
    pub fn invalidate_from_worker(&self, pool: &str, scope: InvalidateScope, target: &[u8]) {
        let Ok(target) = std::str::from_utf8(target) else {
            return;
        };
        let (pool, target): (Arc<str>, String) = (pool.into(), target.to_owned());
        self.drop_where(move |k, slot| {
            if slot.pool() != &*pool {
                return false;
            }
            let pq = path_and_query(&k.url);
            match scope {
                InvalidateScope::Exact => pq == target,
                InvalidateScope::Prefix => pq.starts_with(&target),
            }
        });
    }

    /// Drops every entry of `pool`'s apps (its config changed and it is recycled).
    pub fn invalidate_pool(&self, pool: &str) {
        let pool: Arc<str> = pool.into();
        self.drop_where(move |_, slot| slot.pool() == &*pool);
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.store.invalidate_all();
        self.note_removal();
    }

    pub fn figures(&self) -> CacheFigures {
        self.store.run_pending_tasks();
        let mut f = CacheFigures {
            max_bytes: self.settings.max_bytes,
            stored_bytes: self.store.weighted_size(),
            entries: self.store.entry_count(),
            ..CacheFigures::default()
        };
        for (site, c) in self.counters.sites.read().iter() {
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let s = SiteFigures {
                hits: load(&c.hits),
                misses: load(&c.misses),
                stale_hits: load(&c.stale_hits),
                collapsed: load(&c.collapsed),
                stored_bytes: load(&c.stored_bytes),
                entries: load(&c.entries),
                evictions: load(&c.evictions),
            };
            f.hits += s.hits;
            f.misses += s.misses;
            f.stale_hits += s.stale_hits;
            f.collapsed += s.collapsed;
            f.evictions += s.evictions;
            f.sites.insert(site.to_string(), s);
        }
        f
    }
}

/// Where the root dot of a host name (`name.` or `name.:port`) is; an IPv6 literal has none.
fn root_dot(host: &str) -> Option<usize> {
    if host.starts_with('[') {
        return None;
    }
    let name_end = host.bytes().position(|b| b == b':').unwrap_or(host.len());
    (name_end > 1 && host.as_bytes()[name_end - 1] == b'.').then(|| name_end - 1)
}

/// `/path?query` of a key's URL.
fn path_and_query(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[after_scheme + i..],
        None => "/",
    }
}

/// The daemon's cache, set once by `daemon::run` (reachable from the request path and from
/// worker connections, which the pool builds).
static INSTALLED: RwLock<Option<Arc<Cache>>> = RwLock::new(None);

pub fn install(cache: Option<Arc<Cache>>) {
    *INSTALLED.write() = cache;
}

pub fn installed() -> Option<Arc<Cache>> {
    INSTALLED.read().clone()
}

#[cfg(test)]
mod tests;

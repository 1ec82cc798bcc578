//! `Cache` on its own: storing, variants, invalidation (daemon API, worker frame, pool) and
//! the byte bound.

use super::*;
use crate::config::CacheConfig;
use http::Method;

fn cache(admission: CacheAdmission, max_bytes: u64) -> Arc<Cache> {
    Cache::new(
        (&CacheConfig {
            admission,
            max_bytes,
            ..CacheConfig::default()
        })
            .into(),
    )
}

use crate::test_fields::header_map as headers;

/// A 200 answered by pool `pool` (retired when `retired` is set) for site `s`, ready to
/// be stored when its body is complete.
fn candidate(
    c: &Cache,
    url: &str,
    req: &HeaderMap,
    resp: &HeaderMap,
    pool: &str,
    retired: Option<&Arc<AtomicBool>>,
) -> Candidate {
    let lifetime = policy::decide(
        &Method::GET,
        req,
        StatusCode::OK,
        resp,
        keel_proto::CachePolicy::None,
        SystemTime::now(),
    )
    .unwrap();
    let site: Arc<str> = "s".into();
    c.candidate(
        url.into(),
        req,
        StatusCode::OK,
        resp,
        lifetime,
        pool,
        retired,
        &site,
        false,
        false,
    )
}

/// Stores `body` for `url` as pool `pool` would, if policy and admission allow.
fn put(c: &Cache, url: &str, req: &HeaderMap, resp: &HeaderMap, pool: &str, body: &[u8]) {
    c.finish(candidate(c, url, req, resp, pool, None), body);
}

fn hit(c: &Cache, url: &str, req: &HeaderMap) -> Option<Bytes> {
    match c.lookup(&url.into(), req, &"s".into()) {
        Lookup::Fresh(e) => Some(e.body.clone()),
        _ => None,
    }
}

const PUBLIC: &[(&str, &str)] = &[("cache-control", "public, max-age=60")];

#[test]
fn stores_and_invalidates_by_daemon_api() {
    let c = cache(CacheAdmission::Always, 1 << 20);
    let none = HeaderMap::new();
    for u in ["http://a/x/1", "http://a/x/2", "http://a/y", "http://b/x/1"] {
        put(&c, u, &none, &headers(PUBLIC), "p", u.as_bytes());
    }
    assert_eq!(
        hit(&c, "http://a/x/1", &none).as_deref(),
        Some(&b"http://a/x/1"[..])
    );
    c.invalidate(Scope::Exact("http://a/x/1".into()));
    assert!(hit(&c, "http://a/x/1", &none).is_none());
    assert!(hit(&c, "http://a/x/2", &none).is_some());
    c.invalidate(Scope::Prefix("http://a/x".into()));
    assert!(hit(&c, "http://a/x/2", &none).is_none());
    assert!(hit(&c, "http://a/y", &none).is_some());
    assert!(hit(&c, "http://b/x/1", &none).is_some());
}

#[test]
fn worker_invalidation_stays_in_its_pool() {
    let c = cache(CacheAdmission::Always, 1 << 20);
    let none = HeaderMap::new();
    put(&c, "http://a/app/1", &none, &headers(PUBLIC), "p1", b"1");
    put(&c, "http://a/other/1", &none, &headers(PUBLIC), "p2", b"2");
    c.invalidate_from_worker("p1", InvalidateScope::Prefix, b"/");
    assert!(hit(&c, "http://a/app/1", &none).is_none());
    assert!(hit(&c, "http://a/other/1", &none).is_some());
    c.invalidate_pool("p2");
    assert!(hit(&c, "http://a/other/1", &none).is_none());
}

#[test]
fn a_retired_pools_answer_is_shared_but_not_stored() {
    let c = cache(CacheAdmission::Always, 1 << 20);
    let none = HeaderMap::new();
    let public = headers(PUBLIC);
    let candidate = |url: &str, retired: &Arc<AtomicBool>| {
        candidate(&c, url, &none, &public, "p", Some(retired))
    };
    // The request reached the pool before the reload; its body completes after it.
    let old = Arc::new(AtomicBool::new(false));
    let in_flight = candidate("http://a/r", &old);
    old.store(true, Ordering::SeqCst);
    c.invalidate_pool("p");
    let entry = c.finish(in_flight, b"old");
    assert_eq!(&entry.body[..], b"old", "collapsed followers still get it");
    assert!(hit(&c, "http://a/r", &none).is_none());
    // The successor, under the same name, stores as usual.
    let new = Arc::new(AtomicBool::new(false));
    c.finish(candidate("http://a/r", &new), b"new");
    assert_eq!(hit(&c, "http://a/r", &none).as_deref(), Some(&b"new"[..]));
}

#[test]
fn vary_keeps_variants_apart() {
    let c = cache(CacheAdmission::Always, 1 << 20);
    let resp = headers(&[
        ("cache-control", "public, max-age=60"),
        ("vary", "Accept-Encoding"),
    ]);
    let gz = headers(&[("accept-encoding", "gzip")]);
    let br = headers(&[("accept-encoding", "br")]);
    put(&c, "http://a/v", &gz, &resp, "p", b"gzip body");
    assert_eq!(
        hit(&c, "http://a/v", &gz).as_deref(),
        Some(&b"gzip body"[..])
    );
    assert!(hit(&c, "http://a/v", &br).is_none());
    put(&c, "http://a/v", &br, &resp, "p", b"br body");
    assert_eq!(hit(&c, "http://a/v", &br).as_deref(), Some(&b"br body"[..]));
    assert_eq!(
        hit(&c, "http://a/v", &gz).as_deref(),
        Some(&b"gzip body"[..])
    );
}

/// RFC 9111 §4.1: a field the response varies on that the request lacks matches only a
/// request that lacks it too, not one that sends it empty.
#[test]
fn an_absent_varied_field_is_not_an_empty_one() {
    let c = cache(CacheAdmission::Always, 1 << 20);
    let resp = headers(&[
        ("cache-control", "public, max-age=60"),
        ("vary", "Accept-Language"),
    ]);
    let none = HeaderMap::new();
    let empty = headers(&[("accept-language", "")]);
    put(&c, "http://a/l", &none, &resp, "p", b"absent");
    assert_eq!(
        hit(&c, "http://a/l", &none).as_deref(),
        Some(&b"absent"[..])
    );
    assert!(hit(&c, "http://a/l", &empty).is_none());
    put(&c, "http://a/l", &empty, &resp, "p", b"empty");
    assert_eq!(
        hit(&c, "http://a/l", &empty).as_deref(),
        Some(&b"empty"[..])
    );
    assert_eq!(
        hit(&c, "http://a/l", &none).as_deref(),
        Some(&b"absent"[..])
    );
}

#[test]
fn frequent_admission_stores_on_the_second_request() {
    let c = cache(CacheAdmission::Frequent, 1 << 20);
    let none = HeaderMap::new();
    assert!(hit(&c, "http://a/f", &none).is_none()); // first request
    put(&c, "http://a/f", &none, &headers(PUBLIC), "p", b"f");
    assert!(hit(&c, "http://a/f", &none).is_none()); // second request
    put(&c, "http://a/f", &none, &headers(PUBLIC), "p", b"f");
    assert!(hit(&c, "http://a/f", &none).is_some());
}

#[test]
fn byte_bound_holds() {
    let max = 256 * 1024;
    let c = cache(CacheAdmission::Always, max);
    let none = HeaderMap::new();
    let body = vec![b'x'; 10_000];
    for i in 0..100 {
        put(
            &c,
            &format!("http://a/{i}"),
            &none,
            &headers(PUBLIC),
            "p",
            &body,
        );
        let f = c.figures();
        assert!(f.stored_bytes <= max, "{} > {max}", f.stored_bytes);
    }
    let f = c.figures();
    assert!(f.entries > 10 && f.evictions > 0, "{f:?}");
    let site = &f.sites["s"];
    assert_eq!(site.entries, f.entries);
    assert_eq!(site.stored_bytes, f.stored_bytes);
}

#[test]
fn a_url_key_lower_cases_the_host_only() {
    assert_eq!(
        &*Cache::url("http", "Shop.Example.COM:8080", "/Cart?Item=A"),
        "http://shop.example.com:8080/Cart?Item=A"
    );
    assert_eq!(&*Cache::url("https", "", "/"), "https:///");
    // A long URL, then a short one: the joined room is reused or let go, never leaked in.
    let long = format!("/{}", "x".repeat(10_000));
    assert_eq!(Cache::url("http", "h", &long).len(), 8 + 10_001);
    assert_eq!(&*Cache::url("http", "É.h", "/é"), "http://É.h/é");
    // A fully qualified name's root dot is the same host (as routing reads it); the port
    // stays, and an IPv6 literal is left as it is.
    assert_eq!(
        &*Cache::url("http", "Shop.Example.", "/a"),
        "http://shop.example/a"
    );
    assert_eq!(
        &*Cache::url("http", "shop.example.:8080", "/"),
        "http://shop.example:8080/"
    );
    assert_eq!(
        &*Cache::url("http", "[::1]:8080", "/"),
        "http://[::1]:8080/"
    );
    assert_eq!(&*Cache::url("http", ".", "/"), "http://./");
    assert_eq!(
        &*Cache::url("http", "X.Example.:81", ""),
        "http://x.example:81"
    );
}

/// A plain hit as the HTTP/1.1 front takes it: the thread's memo first, else the store
/// (remembered when fresh).
fn plain_hit(c: &Cache, host: &str, target: &str) -> Option<Bytes> {
    let site: Arc<str> = "s".into();
    let now = Instant::now();
    match c.peek_hot(false, host, target, &site, now) {
        Ok(e) => Some(e.body.clone()),
        Err(miss) => match c.peek_plain(&Cache::url("http", host, target), &site, now)? {
            Peek::Fresh(e) => {
                c.remember_hot(miss, false, host, target, &e, now);
                Some(e.body.clone())
            }
            Peek::Absent | Peek::NotFresh => None,
        },
    }
}

/// Whether the thread's memo alone answers for `target` at host `a`.
fn remembered(c: &Cache, target: &str) -> bool {
    c.peek_hot(false, "a", target, &"s".into(), Instant::now())
        .is_ok()
}

#[test]
fn a_remembered_hit_never_outlives_its_entry() {
    let c = cache(CacheAdmission::Always, 1 << 20);
    let none = HeaderMap::new();
    let public = headers(PUBLIC);
    for u in ["http://a/x/1", "http://a/x/2", "http://a/y", "http://a/z"] {
        put(&c, u, &none, &public, "p", u.as_bytes());
        assert_eq!(plain_hit(&c, "a", &u[8..]).as_deref(), Some(u.as_bytes()));
    }
    assert!(remembered(&c, "/x/1"));
    assert!(!remembered(&c, "/x/3"));
    // Found, counted as a hit like a store lookup.
    let hits = c.figures().hits;
    assert!(remembered(&c, "/y"));
    assert_eq!(c.figures().hits, hits + 1);

    // Stored again with a new body: the new one answers.
    put(&c, "http://a/y", &none, &public, "p", b"new");
    assert!(!remembered(&c, "/y"));
    assert_eq!(plain_hit(&c, "a", "/y").as_deref(), Some(&b"new"[..]));

    // Each way of dropping entries drops what the thread remembers.
    c.invalidate(Scope::Exact("http://a/x/1".into()));
    assert!(plain_hit(&c, "a", "/x/1").is_none());
    assert!(plain_hit(&c, "a", "/x/2").is_some());
    c.invalidate(Scope::Prefix("http://a/x".into()));
    assert!(plain_hit(&c, "a", "/x/2").is_none());
    assert!(plain_hit(&c, "a", "/y").is_some());
    c.invalidate_from_worker("p", InvalidateScope::Exact, b"/y");
    assert!(plain_hit(&c, "a", "/y").is_none());
    assert!(plain_hit(&c, "a", "/z").is_some());
    c.invalidate_pool("p");
    assert!(plain_hit(&c, "a", "/z").is_none());
    put(&c, "http://a/z", &none, &public, "p", b"z");
    assert!(plain_hit(&c, "a", "/z").is_some());
    c.clear();
    assert!(plain_hit(&c, "a", "/z").is_none());
}

#[test]
fn a_remembered_hit_is_fresh_of_its_site_and_of_its_cache() {
    let c = cache(CacheAdmission::Always, 1 << 20);
    let none = HeaderMap::new();
    put(&c, "http://a/t", &none, &headers(PUBLIC), "p", b"t");
    assert!(plain_hit(&c, "a", "/t").is_some());
    assert!(remembered(&c, "/t"));
    // Another site routed to the same URL is not answered with this site's entry.
    let other: Arc<str> = "other".into();
    assert!(
        c.peek_hot(false, "a", "/t", &other, Instant::now())
            .is_err()
    );
    assert!(plain_hit(&c, "a", "/t").is_some());
    // Past its freshness (60 s) it is not used.
    let later = Instant::now() + Duration::from_secs(61);
    assert!(c.peek_hot(false, "a", "/t", &"s".into(), later).is_err());
    // Past `TOUCH_EVERY` the store is asked again (it sees the URL used).
    assert!(plain_hit(&c, "a", "/t").is_some());
    let later = Instant::now() + hot::TOUCH_EVERY;
    assert!(c.peek_hot(false, "a", "/t", &"s".into(), later).is_err());
    // The scheme and the host as sent are part of the key.
    assert!(plain_hit(&c, "a", "/t").is_some());
    assert!(
        c.peek_hot(true, "a", "/t", &"s".into(), Instant::now())
            .is_err()
    );
    assert!(
        c.peek_hot(false, "A", "/t", &"s".into(), Instant::now())
            .is_err()
    );
    // A new cache (a reload) does not see the old one's.
    let c2 = cache(CacheAdmission::Always, 1 << 20);
    assert!(plain_hit(&c, "a", "/t").is_some());
    assert!(
        c2.peek_hot(false, "a", "/t", &"s".into(), Instant::now())
            .is_err()
    );
}

#[test]
fn large_entries_and_evicted_ones_are_not_remembered() {
    let max = 256 * 1024;
    let c = cache(CacheAdmission::Always, max);
    let none = HeaderMap::new();
    let big = vec![b'b'; hot::MAX_WEIGHT as usize];
    put(&c, "http://a/big", &none, &headers(PUBLIC), "p", &big);
    assert!(plain_hit(&c, "a", "/big").is_some());
    assert!(!remembered(&c, "/big"));
    put(&c, "http://a/small", &none, &headers(PUBLIC), "p", b"s");
    assert!(plain_hit(&c, "a", "/small").is_some());
    assert!(remembered(&c, "/small"));
    // Filling the store evicts: whatever was evicted, nothing remembered answers for it.
    let body = vec![b'x'; 10_000];
    for i in 0..100 {
        put(
            &c,
            &format!("http://a/{i}"),
            &none,
            &headers(PUBLIC),
            "p",
            &body,
        );
    }
    let in_store = c.peek_plain(&"http://a/small".into(), &"s".into(), Instant::now());
    if !matches!(in_store, Some(Peek::Fresh(_))) {
        assert!(!remembered(&c, "/small"));
    }
    assert!(c.figures().evictions > 0);
    assert!(
        !remembered(&c, "/small"),
        "an eviction leaves nothing remembered"
    );
}

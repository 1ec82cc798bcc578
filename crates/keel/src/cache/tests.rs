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

fn headers(list: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in list {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

/// Stores `body` for `url` as pool `pool` would, if policy and admission allow.
fn put(c: &Cache, url: &str, req: &HeaderMap, resp: &HeaderMap, pool: &str, body: &[u8]) {
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
    let cand = c.candidate(
        url.into(),
        req,
        StatusCode::OK,
        resp,
        lifetime,
        pool,
        &site,
        false,
    );
    c.finish(cand, body);
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
}

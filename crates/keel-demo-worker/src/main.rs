//! The demo worker bundled with keel: a handful of routes that show what the system does
//! (including `/crash`, to watch keel replace a dead worker without dropping a request).
//!
//! Routes for tests of the pool manager: `/hang` blocks the whole runtime thread for good (so
//! PINGs go unanswered on the default single-thread runtime), `/alloc?mb=N` grows the
//! resident set by N MiB and keeps it, `/whoami` tells the real uid, gid and groups.
//!
//! Start-up switches, read before connecting to keel, in this order:
//! `KEEL_DEMO_START_DELAY_MS=N` sleeps N ms; `KEEL_DEMO_FAIL_FILE=PATH`, if that file holds
//! `fail`, exits with status 1, and if it holds `hang`, sleeps for ever (never says HELLO).
//!
//! `/events?n=N&ms=M` streams N server-sent events, one every M ms.
//!
//! `/validated` validates itself: 2 KiB of text with `ETag: "abc"` (and nothing that lets a
//! cache store it); to an `If-None-Match` naming that tag (weak comparison, or `*`) it
//! answers 304 with the ETag alone, no `Content-Type` (RFC 9110 §15.4.5).
//!
//! `/ws` is a WebSocket echo (text and binary messages up to 1 MiB); `/ws?flood=N` instead
//! sends N bytes in 64 KiB binary messages without reading, then closes; `/ws-open` tells how
//! many WebSocket sessions this process has open.
//!
//! Started by hand, it joins a pool with `attach = true` through
//! `KEEL_ATTACH=<runtime_dir>/attach/<pool>/worker.sock` (see the keel-worker SDK).

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use keel_worker::Body;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

fn main() {
    let threads: usize = std::env::var("KEEL_DEMO_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // One core per worker process by default: scale out with more workers (a web garden).
    let runtime = if threads > 1 {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = runtime.expect("cannot build the tokio runtime");
    start_up_switches();
    let worker = match keel_worker::Worker::from_env() {
        Ok(worker) => worker,
        Err(e) => {
            eprintln!("keel-demo-worker: {e}");
            std::process::exit(2);
        }
    };
    eprintln!("keel-demo-worker pid {} ready", std::process::id());
    if let Err(e) = runtime.block_on(worker.serve(handle)) {
        eprintln!("keel-demo-worker: {e}");
        std::process::exit(1);
    }
}

/// `KEEL_DEMO_START_DELAY_MS` and `KEEL_DEMO_FAIL_FILE` (see the module comment).
fn start_up_switches() {
    if let Some(ms) = std::env::var("KEEL_DEMO_START_DELAY_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let Some(path) = std::env::var_os("KEEL_DEMO_FAIL_FILE") else {
        return;
    };
    match std::fs::read_to_string(path).as_deref().map(str::trim) {
        Ok("fail") => {
            eprintln!("keel-demo-worker: failing at start (KEEL_DEMO_FAIL_FILE)");
            std::process::exit(1);
        }
        Ok("hang") => {
            eprintln!("keel-demo-worker: hanging at start (KEEL_DEMO_FAIL_FILE)");
            hang()
        }
        _ => {}
    }
}

/// `/events?n=N&ms=M`: a server-sent event stream of N events (about 130 bytes each), the
/// first at once and then one every M ms, of unknown length.
fn events(query: &str) -> Response<DemoBody> {
    let n = param(query, "n").and_then(|v| v.parse().ok()).unwrap_or(3);
    let ms = param(query, "ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut res = Response::new(DemoBody::Events {
        left: n,
        sent: 0,
        every: Duration::from_millis(ms),
        next: None,
    });
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    res
}

/// `/validated` (see the module comment).
fn validated(req: &Request<Body>) -> Response<DemoBody> {
    const TAG: &str = "\"abc\"";
    let names_it = req
        .headers()
        .get_all(http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|line| line.to_str().ok())
        .flat_map(|line| line.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == TAG);
    let mut res = if names_it {
        let mut res = Response::new(DemoBody::Full(None));
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        res
    } else {
        text(
            StatusCode::OK,
            "validated by the worker\n".repeat(90).into(),
        )
    };
    res.headers_mut()
        .insert(http::header::ETAG, HeaderValue::from_static(TAG));
    res
}

/// Blocks the calling thread for good.
fn hang() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Memory `/alloc` took, kept for the life of the process.
static ALLOCATED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// `/alloc?mb=N`: N MiB, every page written, so they count in the resident set.
fn alloc(query: &str) -> Response<DemoBody> {
    let Some(mb) = param(query, "mb").and_then(|v| v.parse::<usize>().ok()) else {
        return text(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(b"usage: /alloc?mb=N"),
        );
    };
    let Some(len) = mb.checked_mul(1 << 20) else {
        return text(StatusCode::BAD_REQUEST, Bytes::from_static(b"too large"));
    };
    let mut block = Vec::new();
    if block.try_reserve_exact(len).is_err() {
        return text(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("cannot allocate {mb} MiB").into(),
        );
    }
    // Not zero: every page is really written, not left to the shared zero page.
    block.resize(len, 0xA5);
    ALLOCATED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(block);
    text(StatusCode::OK, format!("allocated {mb} MiB").into())
}

/// `/whoami`: `uid=U gid=G groups=A,B,…` — the real ids, from /proc/self/status.
fn whoami() -> Response<DemoBody> {
    let status = match std::fs::read_to_string("/proc/self/status") {
        Ok(status) => status,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("/proc/self/status: {e}").into(),
            );
        }
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let first = |v: Vec<String>| v.into_iter().next().unwrap_or_else(|| "?".into());
    let body = format!(
        "uid={} gid={} groups={}",
        first(field("Uid:")),
        first(field("Gid:")),
        field("Groups:").join(",")
    );
    text(StatusCode::OK, body.into())
}

/// Requests this process has handled, `/stats` included (tests use it to prove that a
/// request never reached a worker).
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Every response says which pool answered (`x-keel-pool`), so routing is visible.
async fn handle(req: Request<Body>) -> Response<DemoBody> {
    static POOL: OnceLock<Option<HeaderValue>> = OnceLock::new();
    let mut res = route(req).await;
    if let Some(pool) = POOL.get_or_init(|| {
        std::env::var("KEEL_POOL")
            .ok()
            .and_then(|p| HeaderValue::from_str(&p).ok())
    }) {
        res.headers_mut().insert("x-keel-pool", pool.clone());
    }
    res
}

async fn route(req: Request<Body>) -> Response<DemoBody> {
    let handled = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    // HEAD is answered like GET; the daemon sends the head without the body.
    let method = if req.method() == Method::HEAD {
        &Method::GET
    } else {
        req.method()
    };
    match (method, path) {
        (&Method::GET, "/") => text(StatusCode::OK, Bytes::from_static(b"Hello from keel")),
        (&Method::GET, "/pid") => text(StatusCode::OK, std::process::id().to_string().into()),
        (&Method::GET, "/stats") => text(StatusCode::OK, format!("requests {handled}").into()),
        (&Method::GET, "/json") => json(query),
        (_, "/sleep") => {
            let ms: u64 = param(query, "ms").and_then(|v| v.parse().ok()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, format!("slept {ms} ms").into())
        }
        (&Method::POST, "/echo") => echo(req),
        (&Method::GET, "/crash") => std::process::abort(),
        (&Method::GET, "/big") => {
            let bytes: u64 = param(query, "bytes")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut res = Response::new(DemoBody::Big { remaining: bytes });
            res.headers_mut().insert(CONTENT_LENGTH, bytes.into());
            res.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            res
        }
        (&Method::GET, "/events") => events(query),
        (&Method::GET, "/validated") => validated(&req),
        (&Method::GET, "/hang") => hang(),
        (&Method::GET, "/alloc") => alloc(query),
        (&Method::GET, "/whoami") => whoami(),
        (&Method::GET, "/count") => {
            let n = counter(param(query, "id").unwrap_or(""), false);
            text(StatusCode::OK, n.to_string().into())
        }
        (&Method::GET, "/invalidate") => invalidate(&req, query),
        (&Method::GET, "/ws") => websocket(req),
        (&Method::GET, "/ws-open") => text(
            StatusCode::OK,
            WS_OPEN.load(Ordering::Relaxed).to_string().into(),
        ),
        (&Method::GET, p) if CACHE_ROUTES.contains(&p) => cache_route(&req, p, query).await,
        (_, p) if CACHE_ROUTES.contains(&p) => changed(&req),
        (&Method::GET, "/env") => match param(query, "name").and_then(|n| std::env::var(n).ok()) {
            Some(value) => text(StatusCode::OK, value.into()),
            None => text(StatusCode::NOT_FOUND, Bytes::from_static(b"not set")),
        },
        _ => text(StatusCode::NOT_FOUND, Bytes::from_static(b"not found")),
    }
}

/// The request body streamed straight back, never held whole.
fn echo(req: Request<Body>) -> Response<DemoBody> {
    let (parts, body) = req.into_parts();
    let mut res = Response::new(DemoBody::Echo(body));
    for name in [CONTENT_TYPE, CONTENT_LENGTH] {
        if let Some(value) = parts.headers.get(&name) {
            res.headers_mut().insert(name, value.clone());
        }
    }
    res
}

/// `/json?kb=N[&ttl=S][&cc=V]`: about N KiB of JSON (compressible), cacheable for S seconds
/// when `ttl` is given; `cc` sets `Cache-Control: V` instead (no percent-decoding).
fn json(query: &str) -> Response<DemoBody> {
    let kb: usize = param(query, "kb")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .min(100 * 1024);
    let mut body = String::with_capacity(kb * 1024 + 64);
    body.push('[');
    let mut i = 0;
    while body.len() < kb * 1024 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!("{{\"id\":{i},\"name\":\"item {i}\",\"ok\":true}}"));
        i += 1;
    }
    body.push(']');
    let mut res = text(StatusCode::OK, body.into());
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(ttl) = param(query, "ttl").and_then(|v| v.parse::<u32>().ok())
        && let Ok(v) = HeaderValue::from_str(&format!("public, max-age={ttl}"))
    {
        res.headers_mut().insert(http::header::CACHE_CONTROL, v);
    }
    if let Some(v) = param(query, "cc").and_then(|v| HeaderValue::from_str(v).ok()) {
        res.headers_mut().insert(http::header::CACHE_CONTROL, v);
    }
    res
}

fn text(status: StatusCode, body: Bytes) -> Response<DemoBody> {
    let mut res = Response::new(DemoBody::Full(Some(body)));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    res
}

/// The value of `name` in a query string (no percent-decoding: the demo needs none).
fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// One static chunk that every `/big` response is cut from, so serving it copies nothing.
static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// Routes for the response-cache tests; each counts its calls per `id` (read with
/// `/count?id=X`).
const CACHE_ROUTES: &[&str] = &[
    "/cached",
    "/cookie",
    "/private",
    "/vary",
    "/varystar",
    "/slow-cached",
    "/etag",
    "/status",
];

/// Calls per `id` of the cache routes.
static COUNTS: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

/// Adds one call for `id` (when `add`) and returns its count.
fn counter(id: &str, add: bool) -> u64 {
    let mut counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let i = match counts.iter().position(|(k, _)| k == id) {
        Some(i) => i,
        None => {
            counts.push((id.to_owned(), 0));
            counts.len() - 1
        }
    };
    counts[i].1 += u64::from(add);
    counts[i].1
}

/// `/cached?ttl=N&id=X[&size=B]`: `Cache-Control: public, max-age=N` (B bytes of body);
/// `/cookie` adds Set-Cookie; `/private` is private; `/vary` varies on Accept-Encoding (the
/// body says which it got); `/varystar` has `Vary: *`; `/slow-cached?ms=N` waits first;
/// `/etag` has an ETag and a Last-Modified (with `lm=now`, the `Date` of the answer, also
/// sent: a Last-Modified that is no strong validator); `/status?code=C&cache=ttl:N|until` answers C
/// with the worker cache policy and no cache headers. `cc=V` on any of them sends
/// `Cache-Control: V` instead (as written in the query: no percent-decoding).
async fn cache_route(req: &Request<Body>, path: &str, query: &str) -> Response<DemoBody> {
    use http::header::{CACHE_CONTROL, ETAG, LAST_MODIFIED, SET_COOKIE, VARY};
    let id = param(query, "id").unwrap_or("");
    let n = counter(id, true);
    let ttl: u64 = param(query, "ttl")
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let public = param(query, "cc")
        .and_then(|cc| HeaderValue::from_str(cc).ok())
        .unwrap_or_else(|| HeaderValue::from_str(&format!("public, max-age={ttl}")).unwrap());
    let mut res = text(StatusCode::OK, format!("{path} id={id} call={n}").into());
    let h = res.headers_mut();
    h.insert(CACHE_CONTROL, public);
    match path {
        "/cached" => {
            if let Some(size) = param(query, "size").and_then(|v| v.parse::<usize>().ok()) {
                *res.body_mut() = DemoBody::Full(Some(Bytes::from(vec![b'c'; size])));
            }
        }
        "/cookie" => {
            h.insert(SET_COOKIE, HeaderValue::from_static("session=1"));
        }
        "/private" => {
            h.insert(
                CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=60"),
            );
        }
        "/vary" => {
            h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
            let enc = req
                .headers()
                .get(http::header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none");
            *res.body_mut() = DemoBody::Full(Some(format!("enc={enc} call={n}").into()));
        }
        "/varystar" => {
            h.insert(VARY, HeaderValue::from_static("*"));
        }
        "/slow-cached" => {
            let ms: u64 = param(query, "ms").and_then(|v| v.parse().ok()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        "/etag" => {
            h.insert(ETAG, HeaderValue::from_static("\"v1\""));
            let modified = if param(query, "lm") == Some("now") {
                let now = httpdate::fmt_http_date(std::time::SystemTime::now());
                let now = HeaderValue::from_str(&now).expect("an HTTP-date is a field value");
                h.insert(http::header::DATE, now.clone());
                now
            } else {
                HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT")
            };
            h.insert(LAST_MODIFIED, modified);
            *res.body_mut() = DemoBody::Full(Some(Bytes::from_static(
                b"0123456789abcdefghijklmnopqrstuvwxyz",
            )));
        }
        "/status" => {
            h.remove(CACHE_CONTROL);
            let code: u16 = param(query, "code")
                .and_then(|v| v.parse().ok())
                .unwrap_or(200);
            *res.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            let policy = match param(query, "cache") {
                Some("until") => keel_worker::CachePolicy::UntilInvalidated,
                Some(c) => match c.strip_prefix("ttl:").and_then(|t| t.parse().ok()) {
                    Some(t) => keel_worker::CachePolicy::Ttl(t),
                    None => keel_worker::CachePolicy::None,
                },
                None => keel_worker::CachePolicy::None,
            };
            res.extensions_mut().insert(policy);
        }
        _ => {}
    }
    res
}

/// Any other method on a cache route: the resource "changed", answered with the status the
/// request's `x-demo-status` names (200 without it) and the `Location` its `x-demo-location`
/// names; not counted, so `/count` still tells the GETs that reached the worker.
fn changed(req: &Request<Body>) -> Response<DemoBody> {
    let asked = |name: &str| req.headers().get(name);
    let status = asked("x-demo-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::OK);
    let mut res = text(status, Bytes::from_static(b"changed"));
    if let Some(location) = asked("x-demo-location") {
        res.headers_mut()
            .insert(http::header::LOCATION, location.clone());
    }
    res
}

/// `/invalidate?prefix=P` or `/invalidate?exact=P`: asks keel to drop its cached responses
/// of this pool under P (an INVALIDATE frame).
fn invalidate(req: &Request<Body>, query: &str) -> Response<DemoBody> {
    let Some(inv) = req.extensions().get::<keel_worker::Invalidator>() else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "no invalidator".into());
    };
    let sent = match (param(query, "prefix"), param(query, "exact")) {
        (Some(p), _) => inv.prefix(p),
        (None, Some(e)) => inv.exact(e),
        (None, None) => false,
    };
    let mut res = text(
        if sent {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        },
        format!("invalidate sent={sent}").into(),
    );
    res.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    res
}

/// WebSocket sessions open in this process (`/ws-open`).
static WS_OPEN: AtomicU64 = AtomicU64::new(0);

/// Largest WebSocket message (and frame) `/ws` takes.
const WS_MAX_MESSAGE: usize = 1 << 20;

/// `/ws`: the opening handshake of RFC 6455 §4.2 answered with 101, then an echo session
/// (or a flood, with `flood=N`) on the upgraded stream, in a task of its own.
fn websocket(mut req: Request<Body>) -> Response<DemoBody> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if !header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        let mut res = text(
            StatusCode::UPGRADE_REQUIRED,
            Bytes::from_static(b"a WebSocket client is expected here"),
        );
        res.headers_mut()
            .insert("upgrade", HeaderValue::from_static("websocket"));
        return res;
    }
    let Some(key) =
        header("sec-websocket-key").filter(|_| header("sec-websocket-version") == Some("13"))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(b"Sec-WebSocket-Key and Sec-WebSocket-Version: 13 are required"),
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let flood = param(req.uri().query().unwrap_or(""), "flood").and_then(|v| v.parse::<u64>().ok());
    let on_upgrade = keel_worker::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => ws_session(io, flood).await,
            Err(e) => eprintln!("keel-demo-worker: /ws not upgraded: {e}"),
        }
    });
    let mut res = Response::new(DemoBody::Full(None));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert("connection", HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", accept);
    }
    res
}

/// One WebSocket session, counted in [`WS_OPEN`] while it lasts.
async fn ws_session(io: keel_worker::upgrade::Upgraded, flood: Option<u64>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

    struct Open;
    impl Drop for Open {
        fn drop(&mut self) {
            WS_OPEN.fetch_sub(1, Ordering::Relaxed);
        }
    }
    WS_OPEN.fetch_add(1, Ordering::Relaxed);
    let _open = Open;

    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(WS_MAX_MESSAGE);
    config.max_frame_size = Some(WS_MAX_MESSAGE);
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    if let Some(mut left) = flood {
        while left > 0 {
            let n = left.min(CHUNK.len() as u64) as usize;
            left -= n as u64;
            let chunk = Message::Binary(Bytes::from_static(&CHUNK[..n]));
            if ws.send(chunk).await.is_err() {
                return;
            }
        }
        let _ = ws.close(None).await;
    }
    // Echo until the client closes (its Close is answered by the library on the next read).
    while let Some(message) = ws.next().await {
        let echo = match message {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => m,
            Ok(_) => continue,
            Err(_) => break,
        };
        if ws.send(echo).await.is_err() {
            break;
        }
    }
}

/// The demo's response bodies, without boxing: a fixed text, an echo, or generated bytes.
enum DemoBody {
    Full(Option<Bytes>),
    Echo(Body),
    Big {
        remaining: u64,
    },
    /// `/events`: `left` more events, the next when `next` fires.
    Events {
        left: u32,
        sent: u32,
        every: Duration,
        next: Option<Pin<Box<tokio::time::Sleep>>>,
    },
}

impl http_body::Body for DemoBody {
    type Data = Bytes;
    type Error = keel_worker::BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            DemoBody::Full(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
            DemoBody::Echo(body) => Pin::new(body).poll_frame(cx),
            DemoBody::Big { remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = (*remaining).min(CHUNK.len() as u64) as usize;
                *remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
            }
            DemoBody::Events {
                left,
                sent,
                every,
                next,
            } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                if let Some(sleep) = next {
                    std::task::ready!(sleep.as_mut().poll(cx));
                }
                *next = Some(Box::pin(tokio::time::sleep(*every)));
                *left -= 1;
                *sent += 1;
                let event = format!("id: {sent}\ndata: {}\n\n", "event ".repeat(20));
                Poll::Ready(Some(Ok(Frame::data(event.into()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            DemoBody::Full(body) => body.is_none(),
            DemoBody::Echo(body) => body.is_end_stream(),
            DemoBody::Big { remaining } => *remaining == 0,
            DemoBody::Events { left, .. } => *left == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DemoBody::Full(body) => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
            DemoBody::Echo(body) => body.size_hint(),
            DemoBody::Big { remaining } => SizeHint::with_exact(*remaining),
            DemoBody::Events { .. } => SizeHint::default(),
        }
    }
}

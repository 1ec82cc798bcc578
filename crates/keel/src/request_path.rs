//! The named phases of one request, called in this order from one place
//! ([`serve_request`]): route → read small body → enqueue → wait for the response head →
//! respond (streaming the rest) → log abnormal ends.
//!
//! Invariant: every request that does not get a worker's answer gets a status from here
//! (400, 502, 503) and an error-log line with its reason; nothing here runs application code.

use crate::cache::{
    Cache, CacheStatus, Candidate, Entry, Flight, FlightGuard, Lookup, Peek, policy,
};
use crate::compress::{self, CompressBody, Encoding, Plan, Representation};
use crate::config::Unavailable;
use crate::dispatch::{Job, JobHead, LaneRequest};
use crate::exchange::{BodyLimits, Exchange, Failure, RequestMeta, ResponseBroken};
use crate::log::{AccessLog, AccessRecord, CacheMark, ErrorLog, Reason};
use crate::pool::Pool;
use crate::request_check::first_value;
use crate::routing::{RouteError, RouteTable};
use crate::static_files::{FileStream, StaticBody, StaticRoot};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use keel_proto::{HttpVersion, RequestParts};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

/// Request bodies up to this size (by Content-Length) are read whole before queueing and
/// travel inline in the REQUEST frame: one frame, and always replayable.
pub const INLINE_BODY_MAX: u64 = 64 * 1024;

/// Seconds a client is told to wait after a 503.
pub const RETRY_AFTER_SECS: u32 = 5;

/// What a route leads to.
#[derive(Clone)]
pub struct AppTarget {
    pub site: Arc<str>,
    pub backend: Backend,
    /// The site compresses compressible responses (`compression = true`).
    pub compression: bool,
    /// The site's `max_body_bytes` (or `[listener]`'s).
    pub max_body_bytes: u64,
    /// The request metrics of this site and pool (or static root).
    pub metrics: Arc<crate::metrics::RequestMetrics>,
}

/// Who answers an app's requests.
#[derive(Clone)]
pub enum Backend {
    Pool(Arc<Pool>),
    /// Files served by the daemon itself.
    Static(StaticRoot),
}

/// A socket's route table, replaced whole by a reload.
pub type SharedRoutes = Arc<parking_lot::RwLock<Arc<RouteTable<AppTarget>>>>;

/// What every request on one client connection shares.
pub struct ConnContext {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub routes: SharedRoutes,
    pub error_log: ErrorLog,
    /// The connection is TLS (an https binding).
    pub tls: bool,
    /// The SNI name the TLS client asked for.
    pub server_name: Option<Arc<str>>,
    /// Where every request's access-log line goes, if anywhere.
    pub access_log: Option<AccessLog>,
    /// `[listener] entity_body`: the longest pause inside a request body.
    pub entity_body: Duration,
    /// `[listener] idle_connection`: how long an upgraded connection may carry no byte
    /// either way.
    pub idle_connection: Duration,
    /// Keeps the connection counted while anything serving it lives (an upgraded
    /// connection outlives hyper's connection task).
    pub open: crate::listener::OpenConnection,
    /// `[listener]` request limits, checked before routing.
    pub request_limits: crate::config::RequestLimits,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and never cross
/// between the client and a worker.
pub(crate) const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// The fields a `Connection` header names (`Connection: close, X-Secret`) that the head
/// has: hop-by-hop as well, so they are dropped with the rest. Names that are hop-by-hop
/// anyway, and the `close` option when no field is called `close`, are left out, so the
/// common `Connection: close` or `keep-alive` allocates nothing.
pub(crate) fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    crate::header_list::members(headers, header::CONNECTION)
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .filter(|name| !is_hop_by_hop(name) && headers.contains_key(name))
        .collect()
}

/// The pool asked for TCP-level unavailability (`unavailable = "reset"`): the connection is
/// closed without a response, so a TCP load balancer moves on (IIS `TcpLevel`).
#[derive(Debug)]
pub struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("pool unavailable: connection reset")
    }
}

impl std::error::Error for ResetConnection {}

/// A request's body as the request path needs it: hyper's `Incoming`, or none at all (`()`:
/// a GET or HEAD without a body whose head the HTTP/1.1 front read itself).
pub trait RequestBody: Send + Sized + 'static {
    /// No body byte will come.
    fn body_is_empty(&self) -> bool;
    /// The body's declared length, when known.
    fn declared_len(&self) -> Option<u64>;
    /// The body to read or stream; `None` when there is none.
    fn into_incoming(self) -> Option<Incoming>;
    /// hyper's hand-over of the connection after a 101; `None` where there is no hyper
    /// connection to hand over.
    fn on_upgrade(req: &mut Request<Self>) -> Option<hyper::upgrade::OnUpgrade>;
}

impl RequestBody for Incoming {
    fn body_is_empty(&self) -> bool {
        self.is_end_stream()
    }

    fn declared_len(&self) -> Option<u64> {
        self.size_hint().exact()
    }

    fn into_incoming(self) -> Option<Incoming> {
        Some(self)
    }

    fn on_upgrade(req: &mut Request<Self>) -> Option<hyper::upgrade::OnUpgrade> {
        Some(hyper::upgrade::on(req))
    }
}

impl RequestBody for () {
    fn body_is_empty(&self) -> bool {
        true
    }

    fn declared_len(&self) -> Option<u64> {
        Some(0)
    }

    fn into_incoming(self) -> Option<Incoming> {
        None
    }

    fn on_upgrade(_: &mut Request<Self>) -> Option<hyper::upgrade::OnUpgrade> {
        None
    }
}

pub async fn serve_request<B: RequestBody>(
    req: Request<B>,
    conn: Arc<ConnContext>,
) -> Result<Response<ResponseBody>, ResetConnection> {
    let routed = route(&req, &conn);
    serve_routed(req, conn, routed, None).await
}

/// [`serve_request`] after the route lookup (which the access log also needs: done once);
/// `key`: the request's cache key, when a caller has built it already.
async fn serve_routed<B: RequestBody>(
    mut req: Request<B>,
    conn: Arc<ConnContext>,
    routed: Result<AppTarget, Unrouted>,
    key: Option<CacheKey>,
) -> Result<Response<ResponseBody>, ResetConnection> {
    let meta = |site: Arc<str>| {
        Arc::new(RequestMeta {
            client: conn.peer,
            server: conn.local,
            version: req.version(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            site,
            error_log: conn.error_log.clone(),
        })
    };

    // route
    let target = match routed {
        Ok(t) => t,
        Err(e) => {
            let (status, reason, text) = match e {
                Unrouted::Refused(r) => (r.status, r.reason, r.message),
                Unrouted::NoRoute(RouteError::Hostname) => (
                    StatusCode::BAD_REQUEST,
                    Reason::Hostname,
                    "Bad Request (Invalid Hostname)\n",
                ),
                Unrouted::NoRoute(RouteError::Url) => (
                    StatusCode::BAD_REQUEST,
                    Reason::Url,
                    "Bad Request (Invalid URL)\n",
                ),
            };
            meta("-".into()).log(Some(status.as_u16()), reason, None);
            let mut resp = plain(status, text);
            // As HTTP.sys does after its own error responses.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(resp);
        }
    };
    let pool = match &target.backend {
        Backend::Pool(pool) => pool.current(),
        Backend::Static(root) => {
            return Ok(serve_static(&req, root, &target, &conn, key).await);
        }
    };

    // An upgrade (WebSocket) goes to its pool like any request, but never through the cache.
    let upgrade = crate::upgrade::requested(&req);

    // cache: a fresh entry answers at once; concurrent misses wait for one fetch
    let mut cached = None;
    if let Some(cache) = crate::cache::installed()
        && !upgrade
        && policy::request_may_use_cache(req.method())
        && req.body().body_is_empty()
    {
        let key = key.unwrap_or_else(|| CacheKey::new(cache_url(&req, conn.tls)));
        let logged = conn.access_log.is_some();
        match CacheCtx::begin(
            cache,
            &req,
            key,
            &target.site,
            pool.settings.queue_timeout,
            logged,
        )
        .await
        {
            Ok(ctx) => cached = Some(ctx),
            Err(hit) => return Ok(hit),
        }
    }
    // Only requests that go on to a pool need what the error log records.
    let meta = meta(target.site.clone());
    let on_upgrade = upgrade.then(|| B::on_upgrade(&mut req)).flatten();

    // read small body
    let (parts, body) = req.into_parts();
    let declared = body.declared_len();
    let body = if body.body_is_empty() {
        None
    } else {
        body.into_incoming()
    };
    let (inline, stream) = match body {
        None => (Bytes::new(), None),
        Some(body) => match declared {
            Some(n) if n <= INLINE_BODY_MAX => {
                match tokio::time::timeout(conn.entity_body, body.collect()).await {
                    Ok(Ok(collected)) => (collected.to_bytes(), None),
                    Ok(Err(e)) => {
                        // A malformed body is answered; a client that went away is not there to see it.
                        let reason = crate::request_check::body_error_reason(&e);
                        let status = (reason == Reason::Number).then_some(400);
                        meta.log(status, reason, Some(pool.name()));
                        return Ok(plain(StatusCode::BAD_REQUEST, "Bad Request (body)\n"));
                    }
                    Err(_) => {
                        // A small body is read whole: it had `entity_body` to arrive.
                        meta.log(Some(408), Reason::TimerEntityBody, Some(pool.name()));
                        let mut resp = plain(StatusCode::REQUEST_TIMEOUT, "Request Timeout\n");
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        return Ok(resp);
                    }
                }
            }
            _ => (Bytes::new(), Some(body)),
        },
    };

    // enqueue (an upgrade's request direction stays open: the worker may answer 101)
    let end = stream.is_none() && !upgrade;
    let head = job_head(&parts, &conn, &inline, end, upgrade, &pool);
    let (tx, rx) = crate::dispatch::events::channel();
    let job = Job {
        key: pool.next_key(),
        head,
        inline_len: inline.len(),
        end,
        events: tx,
    };
    let mut exchange = Exchange::new(
        pool.clone(),
        job,
        rx,
        stream,
        meta.clone(),
        BodyLimits {
            stall: conn.entity_body,
            max_bytes: target.max_body_bytes,
        },
        upgrade,
    );
    if let Err(f) = exchange.submit() {
        if let Some(stale) = cached.as_ref().and_then(CacheCtx::stale) {
            return Ok(stale);
        }
        return failure_response(f, &meta, &pool).map(|r| marked_miss(cached.as_ref(), r));
    }

    // wait for the response head
    let head = match exchange.response_head().await {
        Ok(h) => h,
        Err(f) => {
            if let Some(stale) = cached.as_ref().and_then(CacheCtx::stale) {
                return Ok(stale);
            }
            return failure_response(f, &meta, &pool).map(|r| marked_miss(cached.as_ref(), r));
        }
    };

    // respond
    let Ok(status) = StatusCode::from_u16(head.status) else {
        let f = Failure::new(
            StatusCode::BAD_GATEWAY,
            Reason::ConnectionAbandonedByAppPool,
        );
        return failure_response(f, &meta, &pool).map(|r| marked_miss(cached.as_ref(), r));
    };
    if status.is_server_error()
        && let Some(stale) = cached.as_ref().and_then(CacheCtx::stale)
    {
        return Ok(stale);
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(on_upgrade) = on_upgrade else {
            // A 101 nobody asked for: the stream is aborted (the exchange is dropped).
            let f = Failure::new(
                StatusCode::BAD_GATEWAY,
                Reason::ConnectionAbandonedByAppPool,
            );
            return failure_response(f, &meta, &pool).map(|r| marked_miss(cached.as_ref(), r));
        };
        let requested = parts.headers.get(header::UPGRADE).cloned();
        return Ok(crate::upgrade::switch(
            head, exchange, on_upgrade, requested, conn,
        ));
    }
    let end = head.end;
    let mut resp = Response::new(if head.end {
        ResponseBody::Full(Some(head.body))
    } else {
        let first = (!head.body.is_empty()).then_some(head.body);
        ResponseBody::Streaming {
            first,
            exchange: Box::new(exchange),
            capture: None,
        }
    });
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    // Room for `x-cache` too, so that its insertion does not grow the map.
    headers.reserve(head.headers.len() + usize::from(cached.is_some()));
    for (name, value) in head.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&name),
            HeaderValue::from_maybe_shared(value),
        ) else {
            continue;
        };
        if !is_hop_by_hop(&name) {
            headers.append(name, value);
        }
    }
    // After the worker's own answer only: a 503 of keel's (queue full, pool offline) or a
    // worker lost says nothing of the resource.
    if policy::changes_resource(&parts.method, status) {
        invalidate_changed(&parts, resp.headers(), conn.tls, &target.site);
    }
    let mut end = end;
    if target.compression {
        end = compress_answer(&mut resp, &parts.headers, &parts.method, None).await || end;
    }
    if let Some(ctx) = cached
        && let Some(entry) = ctx.store(
            &mut resp,
            head.cache,
            end,
            pool.name(),
            Some(pool.retired()),
        )
        && !crate::request_check::has_none_of(&parts.headers, &crate::conditional::FIELDS)
    {
        // A conditional or range request whose answer is complete and cacheable is answered
        // as its hits will be (304, 412, 206), as nginx answers a cacheable miss.
        let answer =
            crate::cache::respond(&entry, &parts.method, &parts.headers, CacheStatus::Miss);
        return Ok(answer);
    }
    Ok(resp)
}

/// How long a static file stays in the response cache before it is read again (a change on
/// disk shows within this time).
pub const STATIC_CACHE_TTL: u32 = 5;

/// Bodies up to this size are compressed in one go (and may be cached compressed); larger
/// or unknown-length bodies are compressed as they stream and are not cached.
const COMPRESS_WHOLE_MAX: u64 = 1 << 20;

/// A body read to be compressed whole is streamed instead when its next part is this slow
/// to come (a server-sent event stream, a long poll), or when it has not ended this long
/// after its first part was awaited: what was read goes out at once, and the rest as it
/// comes.
const COMPRESS_WHOLE_GAP: Duration = Duration::from_millis(50);
const COMPRESS_WHOLE_WAIT: Duration = Duration::from_millis(500);

/// An app served from a static root: through the response cache like any response. `key`:
/// the request's cache key, when a caller has built it already.
async fn serve_static<B>(
    req: &Request<B>,
    root: &StaticRoot,
    target: &AppTarget,
    conn: &ConnContext,
    key: Option<CacheKey>,
) -> Response<ResponseBody> {
    let mut cached = None;
    if let Some(cache) = crate::cache::installed()
        && policy::request_may_use_cache(req.method())
        && !req.headers().contains_key(header::RANGE)
    {
        let key = key.unwrap_or_else(|| CacheKey::new(cache_url(req, conn.tls)));
        let logged = conn.access_log.is_some();
        match CacheCtx::begin(
            cache,
            req,
            key,
            &target.site,
            Duration::from_secs(10),
            logged,
        )
        .await
        {
            Ok(ctx) => cached = Some(ctx),
            Err(hit) => return hit,
        }
    }
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let served = root.serve(req.method(), path, req.headers()).await;
    let mut resp = Response::new(match served.body {
        StaticBody::Empty => ResponseBody::Full(None),
        StaticBody::Full(b) => ResponseBody::Full(Some(b)),
        StaticBody::File(f) => ResponseBody::File(Box::new(f)),
    });
    *resp.status_mut() = served.status;
    *resp.headers_mut() = served.headers;
    if target.compression {
        compress_answer(&mut resp, req.headers(), req.method(), served.file).await;
    }
    if let Some(ctx) = cached
        && matches!(resp.body(), ResponseBody::Full(_))
    {
        // A file's answer is kept a few seconds; a 403 or 404 is not (a file put in place
        // shows at once, as nginx shows it): without a policy, its fields do not allow it.
        let policy = if resp.status() == StatusCode::OK {
            keel_proto::CachePolicy::Ttl(STATIC_CACHE_TTL)
        } else {
            keel_proto::CachePolicy::None
        };
        let pool = format!("static:{}", target.site);
        ctx.store(&mut resp, policy, true, &pool, None);
    }
    resp
}

/// Compression on a site that has it: one [`Plan`] for the request, decided from the
/// representation the answer is about (`file`, a static root's, or what the answer's own
/// fields say; for a worker's 304, which need not carry a type, also what the request's
/// `If-None-Match` says: [`Representation::of_not_modified`]), and applied to the answer
/// whatever its status or method, so that a HEAD, a 304 or a 206 says what the 200 to a GET
/// says. Returns whether the body is now complete in memory.
async fn compress_answer(
    resp: &mut Response<ResponseBody>,
    request_headers: &HeaderMap,
    method: &http::Method,
    file: Option<Representation>,
) -> bool {
    let rep = match file {
        Some(file) => file,
        None if resp.status() == StatusCode::NOT_MODIFIED => {
            Representation::of_not_modified(resp.headers(), request_headers)
        }
        None => Representation::of(resp.headers(), identity_len(resp, method)),
    };
    let plan = Plan::decide(request_headers, &rep);
    // Whoever made the answer varied it on `Accept-Encoding` already (a worker's own
    // negotiation, a static root's precompressed files): keel's choice is not the only one.
    let varied = crate::header_list::lists(resp.headers(), header::VARY, "accept-encoding");
    plan.describe(resp.status(), resp.headers_mut());
    if plan != Plan::AsIs && !varied {
        resp.extensions_mut().insert(compress::CodingChosenHere);
    }
    let Some(enc) = plan.body_coding(resp.status()) else {
        return false;
    };
    if method == http::Method::HEAD {
        // The compressed length is not known without compressing: an ended body leaves it
        // unsaid (hyper, `h1_writer`), as nginx's gzip leaves it for a HEAD.
        *resp.body_mut() = ResponseBody::Full(None);
        return true;
    }
    compress_body(resp, enc, rep.len).await
}

/// The length of the identity representation an answer is about, when its body or fields
/// tell: not from a HEAD's empty body (a worker may leave the body out, or send it whole for
/// the daemon to drop), nor from a 304 (no body) or a 206 (a part of it).
fn identity_len(resp: &Response<ResponseBody>, method: &http::Method) -> Option<u64> {
    if matches!(
        resp.status(),
        StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT
    ) {
        return None;
    }
    let body = resp.body().size_hint().exact();
    body.filter(|&n| n > 0 || method != http::Method::HEAD)
        .or_else(|| {
            resp.headers()
                .get(header::CONTENT_LENGTH)?
                .to_str()
                .ok()?
                .parse()
                .ok()
        })
}

/// Compresses the body of a 200 whose fields describe its compressed form already: whole
/// when it is complete or ends within [`COMPRESS_WHOLE_MAX`] and without a pause (so that
/// the cache can keep the compressed variant; see [`COMPRESS_WHOLE_GAP`]), as it streams
/// otherwise. `len`: its identity length, when known.
/// Returns whether the body is now complete in memory.
async fn compress_body(resp: &mut Response<ResponseBody>, enc: Encoding, len: Option<u64>) -> bool {
    let whole = match resp.body_mut() {
        ResponseBody::Full(b) => Some(b.take().unwrap_or_default()),
        body if len.is_none_or(|n| n <= COMPRESS_WHOLE_MAX) => {
            // Read up to the limit: a body that ends within it is compressed whole.
            let mut taken = std::mem::replace(body, ResponseBody::Full(None));
            let mut chunks = Vec::new();
            let mut total = 0u64;
            let give_up = tokio::time::Instant::now() + COMPRESS_WHOLE_WAIT;
            let ended = loop {
                let wait = give_up
                    .saturating_duration_since(tokio::time::Instant::now())
                    .min(COMPRESS_WHOLE_GAP);
                // `frame()` holds no data while pending: dropping it on time-out loses none.
                let Ok(next) = tokio::time::timeout(wait, taken.frame()).await else {
                    break false;
                };
                match next {
                    None => break true,
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            total += data.len() as u64;
                            chunks.push(data);
                        }
                        if total > COMPRESS_WHOLE_MAX {
                            break false;
                        }
                    }
                    Some(Err(_)) => {
                        // The worker broke off before the client saw a byte: the
                        // connection closes (as for any broken response).
                        *resp.body_mut() = ResponseBody::Broken;
                        return false;
                    }
                }
            };
            if ended {
                Some(chunks.concat().into())
            } else {
                *resp.body_mut() = ResponseBody::Prefixed {
                    chunks: chunks.into(),
                    rest: Box::new(taken),
                };
                None
            }
        }
        _ => None,
    };
    match whole {
        Some(bytes) => {
            *resp.body_mut() = ResponseBody::Full(Some(compress::compress(&bytes, enc)));
            true
        }
        None => {
            let body = std::mem::replace(resp.body_mut(), ResponseBody::Full(None));
            *resp.body_mut() = ResponseBody::Compressed(Box::new(CompressBody::new(body, enc)));
            false
        }
    }
}

/// What the request path keeps about a request the cache may answer or store.
struct CacheCtx {
    cache: Arc<Cache>,
    url: Arc<str>,
    method: http::Method,
    /// The request's headers (`Vary`, `Authorization`, conditionals for a stale answer);
    /// not copied for a URL answered uncacheably a moment ago (`passed`) without a stale
    /// entry: most requests of a dynamic site, whose answers are not stored.
    headers: Option<http::HeaderMap>,
    /// The URL was answered uncacheably a moment ago (and is still marked so).
    passed: bool,
    site: Arc<str>,
    /// An expired entry still inside its stale-if-error window.
    stale: Option<Arc<Entry>>,
    /// This request fetches the URL for others waiting on it.
    flight: Option<FlightGuard>,
    /// An access log will write this response's line: its cache status goes along with it
    /// (a response extension, whose map costs an allocation a request without one skips).
    logged: bool,
}

/// The host a request names: an absolute-form target's (HTTP/1) or `:authority`'s
/// (HTTP/2), else its `Host` field. What routing, the cache key and the access log use.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    host_named(req.uri(), req.headers())
}

/// [`request_host`] of a request's target `uri` and fields `headers`.
fn host_named<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.host()
        .or_else(|| first_value(headers, &header::HOST)?.to_str().ok())
}

/// The cache key's URL for a request: its scheme (`https` on a TLS connection, so that an
/// app's answer for one scheme, such as a redirect to https, never answers the other), host
/// and target.
fn cache_url<B>(req: &Request<B>, tls: bool) -> Arc<str> {
    target_url(req.uri(), req.headers(), tls)
}

/// [`cache_url`] of a request's target `uri` and fields `headers`.
fn target_url(uri: &http::Uri, headers: &HeaderMap, tls: bool) -> Arc<str> {
    let host = host_named(uri, headers).unwrap_or("");
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    url_key(tls, host, pq)
}

/// The worker answered an unsafe request without an error (`policy::changes_resource`):
/// what `site` stored for its target URI is dropped, and for the `Location` and
/// `Content-Location` of the answer `resp` when they name a URL on the same host (RFC 9111
/// §4.4).
fn invalidate_changed(
    request: &http::request::Parts,
    resp: &HeaderMap,
    tls: bool,
    site: &Arc<str>,
) {
    let Some(cache) = crate::cache::installed() else {
        return;
    };
    cache.invalidate_changed(&target_url(&request.uri, &request.headers, tls), site);
    let host = host_named(&request.uri, &request.headers).unwrap_or("");
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let named = resp.get(name).and_then(|v| v.to_str().ok());
        if let Some(pq) = named.and_then(|v| same_host_target(v, tls, host)) {
            cache.invalidate_changed(&url_key(tls, host, pq), site);
        }
    }
}

/// The path and query a `Location`-like `reference` names on `host` (the request's, on a
/// TLS connection or not): an absolute path (`/a?b`), or an absolute URL with the same
/// scheme and host (`http://host/a?b`). `None` for another host or scheme, and for a
/// reference relative to the target's path, which is left alone (RFC 9111 §4.4 makes all
/// of these optional).
fn same_host_target<'a>(reference: &'a str, tls: bool, host: &str) -> Option<&'a str> {
    let reference = reference.split('#').next().unwrap_or_default();
    if reference.starts_with('/') {
        return (!reference.starts_with("//")).then_some(reference);
    }
    let scheme = if tls { "https://" } else { "http://" };
    let head = reference.get(..scheme.len())?;
    if !head.eq_ignore_ascii_case(scheme) {
        return None;
    }
    let rest = &reference[scheme.len()..];
    let (authority, pq) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    // `http://h?q` would be `/?q`, which is not a slice of it: left alone.
    let same_host = !authority.is_empty() && authority.eq_ignore_ascii_case(host);
    (same_host && !pq.starts_with('?')).then_some(pq)
}

/// The cache key's URL of a request for `path_and_query` at `host`, on a TLS connection or not.
fn url_key(tls: bool, host: &str, path_and_query: &str) -> Arc<str> {
    Cache::url(if tls { "https" } else { "http" }, host, path_and_query)
}

/// The pool the access log names for a request routed to `backend`: the pool whose URL it
/// is, also when the cache answered without a worker; none for a static root's.
fn logged_pool(backend: &Backend) -> Option<&Arc<str>> {
    match backend {
        Backend::Pool(p) => Some(&p.settings.name),
        Backend::Static(_) => None,
    }
}

/// The access log's cache field for an answer: what its `x-cache` field says (the mark the
/// cache left on it, for a worker's answer and a static root's alike).
fn cache_mark<T>(resp: &Response<T>) -> CacheMark {
    match resp.extensions().get::<CacheStatus>() {
        Some(CacheStatus::Hit | CacheStatus::Collapsed) => CacheMark::Hit,
        Some(CacheStatus::Miss) => CacheMark::Miss,
        Some(CacheStatus::Stale) => CacheMark::Stale,
        None => CacheMark::None,
    }
}

/// An HTTP/1.1 GET or HEAD without a body that the HTTP/1.1 front read itself, as slices of
/// its head: what a plain cache hit needs, without a `Request` built for it.
pub(crate) struct PlainHead<'a> {
    pub head_only: bool,
    /// Origin form, of bytes `http::Uri` keeps as they are (no fragment): the request's
    /// path and query as a `Request` would give them.
    pub target: &'a str,
    /// The one Host value, of bytes `HeaderValue::to_str` takes.
    pub host: &'a str,
    /// The head's size and its longest field line, counted as `request_check` counts them.
    pub head_bytes: usize,
    pub longest_field: usize,
    /// The first User-Agent and Referer values, for the access log (as `to_str` gives them).
    pub user_agent: Option<&'a str>,
    pub referer: Option<&'a str>,
}

/// What [`answer_plain`] did.
pub(crate) enum PlainAnswer {
    /// A fresh cache entry's whole answer was appended to `out`, and counted.
    Written,
    /// Not in the cache: the request is served by [`serve_logged_routed`] with this route.
    Serve(Routed),
    /// A static root's, not in the cache: [`answer_in_front`] serves the file, with this
    /// route and key.
    Static(Routed),
    /// Not told from the slices (a route refused or not found, an answer that varies on
    /// request fields): [`answer_in_front`] decides.
    Unsure,
}

/// Answers `head` from the cache if a fresh entry that does not vary on request fields
/// holds it, as [`answer_in_front`] would, without a `Request`: the head passes the same
/// checks and routing first, and the hit is counted and logged the same way.
pub(crate) fn answer_plain(
    head: &PlainHead<'_>,
    conn: &ConnContext,
    close: bool,
    out: &mut BytesMut,
) -> PlainAnswer {
    let arrived = Instant::now();
    let limits = &conn.request_limits;
    let Ok(path) = crate::request_check::check_plain(
        head.target,
        head.host,
        head.head_bytes,
        head.longest_field,
        limits,
    ) else {
        return PlainAnswer::Unsure;
    };
    let table = conn.routes.read().clone();
    let Ok(target) = table.route(conn.local.ip(), Some(head.host), &path) else {
        return PlainAnswer::Unsure;
    };
    let target = target.clone();
    // Not a hit: a pool's request goes to its pool, a static root's file is
    // `answer_in_front`'s (sendfile, ranges).
    let not_hit = |target: AppTarget, key| {
        let is_static = matches!(target.backend, Backend::Static(_));
        let routed = Routed {
            target: Ok(target),
            key,
        };
        if is_static {
            PlainAnswer::Static(routed)
        } else {
            PlainAnswer::Serve(routed)
        }
    };
    let Some(cache) = crate::cache::installed() else {
        return not_hit(target, None);
    };
    // A URL this thread answered lately is found without its key built (`cache/hot.rs`).
    let (tls, host, pq) = (conn.tls, head.host, head.target);
    let entry = match cache.peek_hot(tls, host, pq, &target.site, arrived) {
        Ok(entry) => entry,
        Err(miss) => {
            let mut key = CacheKey::new(url_key(tls, host, pq));
            match cache.peek_plain(&key.url, &target.site, arrived) {
                Some(Peek::Fresh(entry)) => {
                    cache.remember_hot(miss, tls, host, pq, &entry, arrived);
                    entry
                }
                Some(Peek::Absent) => {
                    key.absent = true;
                    return not_hit(target, Some(key));
                }
                Some(Peek::NotFresh) => return not_hit(target, Some(key)),
                None => return PlainAnswer::Unsure,
            }
        }
    };
    let method = if head.head_only {
        &http::Method::HEAD
    } else {
        &http::Method::GET
    };
    // No conditional field (the front checked): the entry's prepared answer.
    let w = crate::cache::write_http1(&entry, method, &HeaderMap::new(), close, arrived, out);
    let taken = arrived.elapsed();
    target.metrics.done(w.status, taken);
    if let Some(log) = &conn.access_log {
        log.log(&AccessRecord {
            time: SystemTime::now(),
            site: &target.site,
            pool: logged_pool(&target.backend).map(|p| &**p),
            client: conn.peer,
            server: conn.local,
            method: method.as_str(),
            uri: head.target,
            version: http::Version::HTTP_11,
            status: w.status,
            bytes_sent: w.body_bytes,
            bytes_received: 0,
            duration: taken,
            cache: CacheMark::Hit,
            user_agent: head.user_agent,
            referer: head.referer,
            host: Some(head.host),
        });
    }
    PlainAnswer::Written
}

/// What a connection's HTTP/1.1 front (`listener/h1_front.rs`) may write for an HTTP/1.1 GET or
/// HEAD without a body that it read itself.
pub(crate) enum FrontAnswer {
    /// Not answered here (nothing written or counted): the request is served by
    /// [`serve_logged_routed`] like any other, with the route found here.
    Serve(Routed),
    /// The whole answer was appended to `out`.
    Written,
    /// The head was appended to `out`; these bytes of the file follow it, and then the
    /// access-log line (bytes sent are known only then: `log` counts none of the file's).
    File {
        file: Arc<std::fs::File>,
        offset: u64,
        len: u64,
        log: Option<Box<PendingLog>>,
    },
}

/// Answers a request the HTTP/1.1 front read itself, if the answer needs no worker: a fresh cache
/// entry (any site), or, with `files` (the socket can `sendfile`), a static root of a site
/// without compression. The answer goes to `out` (with `Connection: close` when `close`),
/// and the request is counted and logged as it is under hyper (for a written answer the
/// access-log line is written as it is queued, so its time taken leaves out the write).
pub(crate) async fn answer_in_front(
    req: &Request<()>,
    conn: &ConnContext,
    close: bool,
    files: bool,
    out: &mut BytesMut,
    known: Option<Routed>,
) -> FrontAnswer {
    let arrived = Instant::now();
    // `known`: routed and looked up already (`answer_plain`), and not a hit.
    let (routed, known_key) = match known {
        Some(Routed { target, key }) => (target, Some(key)),
        None => (route(req, conn), None),
    };
    let target = match routed {
        Ok(target) => target,
        Err(e) => {
            return FrontAnswer::Serve(Routed {
                target: Err(e),
                key: None,
            });
        }
    };
    let root = match &target.backend {
        Backend::Pool(_) => None,
        Backend::Static(root) => Some(root),
    };
    // Built once for the lookup here and for the request's own path after it.
    let mut key = None;
    let cached = match known_key {
        Some(known) => {
            key = known;
            None
        }
        None => crate::cache::installed(),
    }
    .and_then(|cache| {
        // As `serve_static`: a range of a static file is read from the file.
        if root.is_some() && req.headers().contains_key(header::RANGE) {
            return None;
        }
        let key = key.insert(CacheKey::new(cache_url(req, conn.tls)));
        match cache.peek_fresh(&key.url, req.headers(), &target.site, arrived) {
            Peek::Fresh(entry) => Some(entry),
            Peek::Absent => {
                key.absent = true;
                None
            }
            Peek::NotFresh => None,
        }
    });
    let ((status, body_bytes, file), mark) = if let Some(entry) = cached {
        let w = crate::cache::write_http1(&entry, req.method(), req.headers(), close, arrived, out);
        ((w.status, w.body_bytes, None), CacheMark::Hit)
    } else if let Some(root) = root
        && files
        && !target.compression
    {
        let resp = serve_static(req, root, &target, conn, key.clone()).await;
        let mark = cache_mark(&resp);
        let head_only = req.method() == http::Method::HEAD;
        match write_static_head(resp, head_only, close, out) {
            Some(sent) => (sent, mark),
            None => {
                out.clear();
                return FrontAnswer::Serve(Routed {
                    target: Ok(target),
                    key,
                });
            }
        }
    } else {
        return FrontAnswer::Serve(Routed {
            target: Ok(target),
            key,
        });
    };
    target.metrics.done(status, arrived.elapsed());
    let log = conn.access_log.as_ref().map(|log| {
        let site = target.site.clone();
        let pool = logged_pool(&target.backend).cloned();
        let mut line = PendingLog::new(req, conn, log.clone(), site, pool);
        line.status = status;
        line.cache = mark;
        line.bytes_sent = body_bytes;
        line
    });
    match file {
        Some((file, offset, len)) => FrontAnswer::File {
            file,
            offset,
            len,
            log,
        },
        None => {
            if let Some(line) = log {
                line.write();
            }
            FrontAnswer::Written
        }
    }
}

/// A static root's answer as HTTP/1.1 bytes: its head (ended by `http1_head::put_end`),
/// and the body when it is in memory. Returns the status, the body bytes written, and the
/// file range still to send; `None` for a body of any other kind (left to hyper).
#[allow(clippy::type_complexity)]
fn write_static_head(
    resp: Response<ResponseBody>,
    head_only: bool,
    close: bool,
    out: &mut BytesMut,
) -> Option<(u16, u64, Option<(Arc<std::fs::File>, u64, u64)>)> {
    use crate::http1_head::{Framing, put_end, put_start};
    let (parts, body) = resp.into_parts();
    let (bytes, file) = match body {
        ResponseBody::Full(b) => (b.unwrap_or_default(), None),
        ResponseBody::File(f) => (Bytes::new(), Some(f.into_range())),
        _ => return None,
    };
    let len = file.as_ref().map_or(bytes.len() as u64, |(_, _, n)| *n);
    let status = parts.status;
    put_start(status, &parts.headers, out);
    let framing = put_end(status, &parts.headers, Some(len), head_only, close, out);
    if head_only || framing == Framing::None {
        return Some((status.as_u16(), 0, None));
    }
    out.extend_from_slice(&bytes);
    Some((status.as_u16(), bytes.len() as u64, file))
}

impl CacheCtx {
    /// Looks the request up. `Err` is the answer from the cache (fresh hit, or the response
    /// a concurrent request fetched); `Ok` means the request goes to its pool.
    async fn begin<B>(
        cache: Arc<Cache>,
        req: &Request<B>,
        key: CacheKey,
        site: &Arc<str>,
        collapse_wait: Duration,
        logged: bool,
    ) -> Result<CacheCtx, Response<ResponseBody>> {
        let method = req.method();
        let CacheKey { url, absent } = key;
        let (found, passed) = cache.lookup_noting_pass(&url, req.headers(), site, absent);
        let stale = match found {
            Lookup::Fresh(entry) => {
                return Err(crate::cache::respond(
                    &entry,
                    method,
                    req.headers(),
                    CacheStatus::Hit,
                ));
            }
            Lookup::Stale(entry) => Some(entry),
            Lookup::Miss => None,
        };
        let mut flight = None;
        if *method == http::Method::GET {
            match cache.join_flight(&url, stale.is_some(), passed) {
                Some(Flight::Leader(guard)) => flight = Some(guard),
                None => {}
                Some(Flight::Follower(rx)) => {
                    let wait = collapse_wait;
                    if let Some(entry) = cache.follow(rx, req.headers(), site, wait).await {
                        cache.count(site, CacheStatus::Collapsed);
                        return Err(crate::cache::respond(
                            &entry,
                            method,
                            req.headers(),
                            CacheStatus::Collapsed,
                        ));
                    }
                }
            }
        }
        Ok(CacheCtx {
            cache,
            url,
            method: method.clone(),
            headers: (!passed || stale.is_some()).then(|| req.headers().clone()),
            passed,
            site: site.clone(),
            stale,
            flight,
            logged,
        })
    }

    /// The pool failed: the stale entry, if it is still inside its grace window.
    fn stale(&self) -> Option<Response<ResponseBody>> {
        let entry = self.stale.as_ref()?;
        if !entry.usable_stale(Instant::now()) {
            return None;
        }
        self.cache.count(&self.site, CacheStatus::Stale);
        let none = http::HeaderMap::new();
        Some(crate::cache::respond(
            entry,
            &self.method,
            self.headers.as_ref().unwrap_or(&none),
            CacheStatus::Stale,
        ))
    }

    /// Marks the worker's response as a miss and, when policy allows, stores it: at once
    /// for a complete body, as it streams to the client otherwise.
    /// `x-cache: MISS`, and the same for the access log when it writes this response's line.
    fn mark_miss(&self, resp: &mut Response<ResponseBody>) {
        resp.headers_mut().insert(
            crate::cache::X_CACHE,
            HeaderValue::from_static(CacheStatus::Miss.as_str()),
        );
        if self.logged {
            resp.extensions_mut().insert(CacheStatus::Miss);
        }
    }

    /// Marks the response a miss and stores it if the policy allows it. Returns the entry
    /// made of it when the response was complete and cacheable (stored, or only shared with
    /// the requests waiting on it when admission refused it). `pool` answered it; `retired`
    /// is that pool's retirement flag (`Pool::retired`), `None` for a static root.
    fn store(
        self,
        resp: &mut Response<ResponseBody>,
        worker_policy: keel_proto::CachePolicy,
        end: bool,
        pool: &str,
        retired: Option<&Arc<AtomicBool>>,
    ) -> Option<Arc<Entry>> {
        self.mark_miss(resp);
        let none = http::HeaderMap::new();
        let decided = policy::decide(
            &self.method,
            self.headers.as_ref().unwrap_or(&none),
            resp.status(),
            resp.headers(),
            worker_policy,
            SystemTime::now(),
        );
        let (Ok(lifetime), Some(req_headers)) = (decided, &self.headers) else {
            match (decided, self.passed) {
                // A HEAD's answer has no body to store, and says nothing of whether the
                // GET's may be stored: the URL is not marked either way.
                (Err(policy::NoStore::Method), _) => {}
                // Still uncacheable, and still marked so.
                (Err(_), true) => {}
                (Err(_), false) => self.cache.mark_uncacheable(self.url),
                // Cacheable now, but this request's headers were not kept (`Vary`): the
                // next request for the URL takes the whole path and stores it.
                (Ok(_), _) => self.cache.unmark_uncacheable(&self.url),
            }
            return None;
        };
        let candidate = self.cache.candidate(
            self.url,
            req_headers,
            resp.status(),
            resp.headers(),
            lifetime,
            pool,
            retired,
            &self.site,
            self.stale.is_some(),
            resp.extensions()
                .get::<compress::CodingChosenHere>()
                .is_some(),
        );
        let limit = self.cache.settings().max_entry_bytes;
        match resp.body_mut() {
            ResponseBody::Full(body) if end => {
                let body = body.as_deref().unwrap_or_default();
                if body.len() <= limit {
                    let entry = self.cache.finish(candidate, body);
                    if let Some(flight) = self.flight {
                        flight.publish(entry.clone());
                    }
                    return Some(entry);
                }
            }
            ResponseBody::Streaming { capture, .. } => {
                *capture = Some(Box::new(Capture {
                    cache: self.cache,
                    candidate,
                    flight: self.flight,
                    chunks: Vec::new(),
                    len: 0,
                    limit,
                }));
            }
            // Incomplete, streamed from disk, or compressed on the fly: not stored.
            _ => {}
        }
        None
    }
}

/// A streamed response being copied aside for the cache as it flows to the client; given up
/// past `max_entry_bytes` or when the body breaks off.
pub struct Capture {
    cache: Arc<Cache>,
    candidate: Candidate,
    flight: Option<FlightGuard>,
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
}

impl Capture {
    /// Keeps `data`; `false` once the body is too large to store.
    fn push(&mut self, data: &Bytes) -> bool {
        self.len += data.len();
        if self.len > self.limit {
            return false;
        }
        self.chunks.push(data.clone());
        true
    }

    fn finish(self) {
        let mut body = BytesMut::with_capacity(self.len);
        for c in &self.chunks {
            body.extend_from_slice(c);
        }
        let entry = self.cache.finish(self.candidate, &body);
        if let Some(flight) = self.flight {
            flight.publish(entry);
        }
    }
}

/// Why a request has no app.
#[derive(Debug, Clone, Copy)]
enum Unrouted {
    /// Its head broke a limit or a framing rule (`request_check`).
    Refused(crate::request_check::Refusal),
    NoRoute(RouteError),
}

/// The request's app in the socket's current route table (a reload swaps the table; a
/// request routes once, by the table of the moment it arrived), found by its canonical path
/// once its head has passed `request_check`.
fn route<B>(req: &Request<B>, conn: &ConnContext) -> Result<AppTarget, Unrouted> {
    let path = crate::request_check::check(req, &conn.request_limits).map_err(Unrouted::Refused)?;
    let host = request_host(req);
    let table = conn.routes.read().clone();
    let target = table
        .route(conn.local.ip(), host, &path)
        .cloned()
        .map_err(Unrouted::NoRoute)?;
    crate::request_check::check_declared_body(req.headers(), target.max_body_bytes)
        .map_err(Unrouted::Refused)?;
    Ok(target)
}

/// What the request sends its worker, encoded once: for an HTTP pool, a request with its
/// whole body goes to a worker's direct lane as HTTP/1.1 bytes; anything else as a REQUEST
/// frame (stream id 0).
fn job_head(
    parts: &http::request::Parts,
    conn: &ConnContext,
    inline: &[u8],
    end: bool,
    upgrade: bool,
    pool: &Pool,
) -> JobHead {
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let listed = connection_listed(&parts.headers);
    if pool.settings.spawn.http && end {
        let view = crate::http_worker::forward::ClientView {
            client: Some(conn.peer),
            local: Some(conn.local),
            tls: conn.tls,
        };
        let method = &parts.method;
        let bytes = crate::http_worker::h1_client::encode_request(
            method,
            target,
            forwarded_fields(&parts.headers, &listed),
            inline,
            &view,
        );
        return JobHead::Http1(LaneRequest {
            bytes: bytes.into(),
            head_only: method == http::Method::HEAD,
            idempotent: method.is_idempotent(),
        });
    }
    JobHead::Frame(encode_frame(
        parts, &listed, conn, target, inline, end, upgrade, pool,
    ))
}

/// The request fields a worker gets as the client sent them: all but the hop-by-hop ones
/// and those `Connection` lists (`listed`).
fn forwarded_fields<'h>(
    headers: &'h HeaderMap,
    listed: &'h [HeaderName],
) -> impl Iterator<Item = (&'h HeaderName, &'h HeaderValue)> {
    headers
        .iter()
        .filter(|(n, _)| !is_hop_by_hop(n) && !listed.contains(n))
}

/// The REQUEST frame (stream id 0) for `parts`; `listed`: the fields its `Connection` names.
/// `upgrade`: the request's `Upgrade` values and `Connection: upgrade` go along, the only
/// hop-by-hop fields a worker ever sees.
#[allow(clippy::too_many_arguments)]
fn encode_frame(
    parts: &http::request::Parts,
    listed: &[HeaderName],
    conn: &ConnContext,
    target: &str,
    inline: &[u8],
    end: bool,
    upgrade: bool,
    pool: &Pool,
) -> Bytes {
    let version = match parts.version {
        http::Version::HTTP_10 | http::Version::HTTP_09 => HttpVersion::Http10,
        http::Version::HTTP_2 => HttpVersion::Http2,
        http::Version::HTTP_3 => HttpVersion::Http3,
        _ => HttpVersion::Http11,
    };
    let deadline_ms = u32::try_from(pool.settings.queue_timeout.as_millis()).unwrap_or(u32::MAX);
    let mut out = BytesMut::with_capacity(256 + inline.len());
    let headers = forwarded_fields(&parts.headers, listed)
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        .chain(
            upgrade
                .then(|| crate::upgrade::worker_fields(&parts.headers))
                .into_iter()
                .flatten(),
        );
    let encoded = keel_proto::encode_request(
        RequestParts {
            id: 0,
            method: parts.method.as_str().as_bytes(),
            target: target.as_bytes(),
            version,
            tls: conn.tls,
            server_name: conn.server_name.as_deref().map_or(&b""[..], str::as_bytes),
            client: Some(conn.peer),
            local: Some(conn.local),
            deadline_ms,
            headers,
            body: inline,
            end,
        },
        &mut out,
    );
    // hyper's limits keep every field far below the u16 length prefixes.
    debug_assert!(encoded.is_ok());
    out.freeze()
}

/// An answer keel made for a request it looked up in the cache and did not find (a refusal,
/// a worker lost): marked a miss, as the cache's figures count it.
fn marked_miss(
    cached: Option<&CacheCtx>,
    mut resp: Response<ResponseBody>,
) -> Response<ResponseBody> {
    if let Some(ctx) = cached {
        ctx.mark_miss(&mut resp);
    }
    resp
}

fn failure_response(
    f: Failure,
    meta: &RequestMeta,
    pool: &Pool,
) -> Result<Response<ResponseBody>, ResetConnection> {
    if f.refused && pool.settings.config.unavailable == Unavailable::Reset {
        meta.log(None, f.reason, Some(pool.name()));
        return Err(ResetConnection);
    }
    meta.log(Some(f.status.as_u16()), f.reason, Some(pool.name()));
    let text = match f.reason {
        Reason::QueueFull => "Service Unavailable (the application's queue is full)\n",
        Reason::AppOffline => {
            "Service Unavailable (the application is offline after repeated failures)\n"
        }
        Reason::TimerReqQueue => "Service Unavailable (no worker took the request in time)\n",
        Reason::ClientReset => "Bad Request\n",
        Reason::TimerEntityBody => "Request Timeout (the request body stalled)\n",
        Reason::EntityTooLarge => crate::request_check::BODY_TOO_LARGE.message,
        _ => "Bad Gateway (the application ended without answering)\n",
    };
    let mut resp = plain(f.status, text);
    if matches!(f.reason, Reason::TimerEntityBody | Reason::EntityTooLarge) {
        // The rest of the body never came or was not read: the connection's framing is lost.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if f.status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    Ok(resp)
}

/// A short text/plain response written by the daemon itself.
pub fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::Full(Some(Bytes::from_static(
        text.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The body the client receives: complete already, or still streaming from a worker.
pub enum ResponseBody {
    Full(Option<Bytes>),
    /// A static file read in chunks.
    File(Box<FileStream>),
    /// Another body, compressed as it streams.
    Compressed(Box<CompressBody<ResponseBody>>),
    /// A body that failed before its first byte: the connection is closed.
    Broken,
    /// A 101: the tunnel that carries the upgraded connection. Taken out and started by
    /// [`serve_logged`] before the response reaches hyper (which sends no body with a 101).
    Upgrade(Box<crate::upgrade::Tunnel>),
    /// Chunks already read from `rest`, sent first.
    Prefixed {
        chunks: std::collections::VecDeque<Bytes>,
        rest: Box<ResponseBody>,
    },
    Streaming {
        /// Body bytes that came inline in the response head.
        first: Option<Bytes>,
        exchange: Box<Exchange>,
        /// Set when the response may be stored in the cache.
        capture: Option<Box<Capture>>,
    },
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseBroken;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBroken>>> {
        match self.get_mut() {
            ResponseBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBody::File(f) => Pin::new(&mut **f)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(|_| ResponseBroken))),
            ResponseBody::Compressed(c) => Pin::new(&mut **c).poll_frame(cx),
            ResponseBody::Broken => Poll::Ready(Some(Err(ResponseBroken))),
            ResponseBody::Upgrade(_) => Poll::Ready(None),
            ResponseBody::Prefixed { chunks, rest } => match chunks.pop_front() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Pin::new(&mut **rest).poll_frame(cx),
            },
            ResponseBody::Streaming {
                first,
                exchange,
                capture,
            } => {
                let polled = match first.take() {
                    Some(data) => {
                        exchange.grant_response(data.len());
                        Poll::Ready(Some(Ok(data)))
                    }
                    None => exchange.poll_response_data(cx),
                };
                if capture.is_some() {
                    let keep = match &polled {
                        Poll::Pending => true,
                        Poll::Ready(Some(Ok(data))) => {
                            capture.as_mut().is_some_and(|c| c.push(data))
                        }
                        Poll::Ready(Some(Err(_))) => false,
                        Poll::Ready(None) => true,
                    };
                    let done = matches!(polled, Poll::Ready(None))
                        || (keep && polled.is_ready() && exchange.is_response_done());
                    if !keep {
                        *capture = None;
                    } else if done && let Some(c) = capture.take() {
                        c.finish();
                    }
                }
                polled.map(|o| o.map(|r| r.map(Frame::data)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(data) => data.as_ref().is_none_or(|d| d.is_empty()),
            ResponseBody::Streaming {
                first, exchange, ..
            } => first.is_none() && exchange.is_response_done(),
            ResponseBody::File(f) => f.is_end_stream(),
            ResponseBody::Compressed(c) => c.is_end_stream(),
            ResponseBody::Broken => false,
            ResponseBody::Upgrade(_) => true,
            ResponseBody::Prefixed { chunks, rest } => chunks.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseBody::Upgrade(_) => SizeHint::with_exact(0),
            ResponseBody::File(f) => f.size_hint(),
            ResponseBody::Streaming { .. }
            | ResponseBody::Compressed(_)
            | ResponseBody::Broken
            | ResponseBody::Prefixed { .. } => SizeHint::default(),
        }
    }
}

/// [`serve_request`], plus the request's metrics (at its response head) and the access-log
/// line written when the response body is done (bytes sent and time taken are only known
/// then).
pub async fn serve_logged<B: RequestBody>(
    req: Request<B>,
    conn: Arc<ConnContext>,
) -> Result<Response<LoggedBody>, ResetConnection> {
    let routed = Routed {
        target: route(&req, &conn),
        key: None,
    };
    serve_logged_routed(req, conn, routed).await
}

/// A request's route lookup (and its cache key, once built), done once for whoever serves
/// it.
pub(crate) struct Routed {
    target: Result<AppTarget, Unrouted>,
    key: Option<CacheKey>,
}

/// A request's cache key, and whether the store held nothing for it when the HTTP/1.1
/// front looked (so the request's own lookup need not ask the store again).
#[derive(Clone)]
pub(crate) struct CacheKey {
    url: Arc<str>,
    absent: bool,
}

impl CacheKey {
    fn new(url: Arc<str>) -> Self {
        CacheKey { url, absent: false }
    }
}

/// [`serve_logged`] with the route already found.
pub(crate) async fn serve_logged_routed<B: RequestBody>(
    req: Request<B>,
    conn: Arc<ConnContext>,
    Routed {
        target: routed,
        key,
    }: Routed,
) -> Result<Response<LoggedBody>, ResetConnection> {
    let arrived = Instant::now();
    let (site, pool, metrics) = match &routed {
        Ok(t) => (
            t.site.clone(),
            logged_pool(&t.backend).cloned(),
            Some(t.metrics.clone()),
        ),
        Err(_) => (crate::metrics::none_label(), None, None),
    };
    let counted = |status: StatusCode| match &metrics {
        Some(m) => m.done(status.as_u16(), arrived.elapsed()),
        None => {
            let none = crate::metrics::none_label();
            crate::metrics::request_done(&none, &none, status.as_u16(), arrived.elapsed());
        }
    };
    let Some(log) = conn.access_log.clone() else {
        let mut resp = serve_routed(req, conn, routed, key).await?;
        counted(resp.status());
        start_tunnel(&mut resp, None);
        return Ok(resp.map(|inner| LoggedBody {
            inner,
            pending: None,
        }));
    };
    let mut pending = PendingLog::new(&req, &conn, log, site.clone(), pool.clone());
    pending.bytes_received = req.body().declared_len().unwrap_or(0);
    match serve_routed(req, conn, routed, key).await {
        Ok(mut resp) => {
            counted(resp.status());
            pending.status = resp.status().as_u16();
            pending.cache = cache_mark(&resp);
            let pending = start_tunnel(&mut resp, Some(pending));
            Ok(resp.map(|inner| LoggedBody { inner, pending }))
        }
        Err(reset) => {
            // The connection is reset: the client got no status at all.
            pending.write();
            Err(reset)
        }
    }
}

/// A 101 goes to hyper with an empty body; its tunnel runs on a task of its own, waits for
/// hyper to hand over the connection, and writes the access-log line when it ends. Returns
/// the log line when the response is not an upgrade.
fn start_tunnel(
    resp: &mut Response<ResponseBody>,
    log: Option<Box<PendingLog>>,
) -> Option<Box<PendingLog>> {
    if !matches!(resp.body(), ResponseBody::Upgrade(_)) {
        return log;
    }
    if let ResponseBody::Upgrade(tunnel) =
        std::mem::replace(resp.body_mut(), ResponseBody::Full(None))
    {
        tokio::spawn(tunnel.run(log));
    }
    None
}

/// What the access log needs to know about a request until its response is done.
pub(crate) struct PendingLog {
    log: AccessLog,
    time: SystemTime,
    start: Instant,
    site: Arc<str>,
    pool: Option<Arc<str>>,
    client: SocketAddr,
    server: SocketAddr,
    method: String,
    uri: String,
    version: http::Version,
    host: Option<String>,
    user_agent: Option<String>,
    referer: Option<String>,
    pub(crate) bytes_received: u64,
    status: u16,
    cache: CacheMark,
    pub(crate) bytes_sent: u64,
}

impl PendingLog {
    fn new<B>(
        req: &Request<B>,
        conn: &ConnContext,
        log: AccessLog,
        site: Arc<str>,
        pool: Option<Arc<str>>,
    ) -> Box<PendingLog> {
        let text = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Box::new(PendingLog {
            log,
            time: SystemTime::now(),
            start: Instant::now(),
            site,
            pool,
            client: conn.peer,
            server: conn.local,
            method: req.method().to_string(),
            uri: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().to_string(), |pq| pq.as_str().to_owned()),
            version: req.version(),
            host: request_host(req).map(str::to_owned),
            user_agent: text(header::USER_AGENT),
            referer: text(header::REFERER),
            bytes_received: 0,
            status: 0,
            cache: CacheMark::None,
            bytes_sent: 0,
        })
    }

    pub(crate) fn write(&self) {
        self.log.log(&AccessRecord {
            time: self.time,
            site: &self.site,
            pool: self.pool.as_deref(),
            client: self.client,
            server: self.server,
            method: &self.method,
            uri: &self.uri,
            version: self.version,
            status: self.status,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            duration: self.start.elapsed(),
            cache: self.cache,
            user_agent: self.user_agent.as_deref(),
            referer: self.referer.as_deref(),
            host: self.host.as_deref(),
        });
    }
}

/// A response body that writes the request's access-log line once it is finished (or
/// dropped because the client went away).
pub struct LoggedBody {
    inner: ResponseBody,
    pending: Option<Box<PendingLog>>,
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = ResponseBroken;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBroken>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Some(p), Poll::Ready(Some(Ok(frame)))) = (this.pending.as_mut(), &polled)
            && let Some(data) = frame.data_ref()
        {
            p.bytes_sent += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.write();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::same_host_target;

    #[test]
    fn a_location_on_the_same_host_names_a_target() {
        // (reference, TLS, request host) → the path and query it names there.
        let rows: &[(&str, bool, &str, Option<&str>)] = &[
            ("/items/42", false, "h", Some("/items/42")),
            ("/a?b=1#top", false, "h", Some("/a?b=1")),
            ("http://h/a?b", false, "h", Some("/a?b")),
            ("HTTP://H/a", false, "h", Some("/a")),
            ("http://h", false, "h", Some("/")),
            ("https://h:8443/a", true, "h:8443", Some("/a")),
            ("http://h?q", false, "h", None),
            ("https://h/a", false, "h", None),
            ("http://h/a", true, "h", None),
            ("http://other/a", false, "h", None),
            ("http://h:81/a", false, "h", None),
            ("http://u@h/a", false, "h", None),
            ("//h/a", false, "h", None),
            ("a/b", false, "h", None),
            ("", false, "h", None),
            ("http:///a", false, "", None),
        ];
        for (reference, tls, host, want) in rows {
            assert_eq!(
                same_host_target(reference, *tls, host),
                *want,
                "{reference} on {host}"
            );
        }
    }
}

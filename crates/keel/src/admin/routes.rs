//! The admin API's routes: which request does what, and who may ask.
//!
//! | route | does |
//! |---|---|
//! | `GET /` | the status page: one HTML page that polls `/status` |
//! | `GET /status` | sites, listeners, pools, workers, cache figures |
//! | `GET /healthz` | 200 while every pool serves, 503 naming those that do not |
//! | `GET /metrics` | Prometheus text ([`crate::metrics`]) |
//! | `POST /pools/{name}/recycle\|enable\|disable` | a pool manager command |
//! | `POST /cache/invalidate` | `{"url": …}` or `{"prefix": …}` |
//! | `POST /stop` | graceful stop, as SIGTERM |

use super::{AdminContext, json};
use crate::cache::Scope;
use crate::pool::Pool;
use crate::pool::state::{PoolState, RecycleTrigger};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The largest request body the admin API reads.
pub const MAX_BODY: usize = 64 * 1024;

/// The status page (`GET /`): inline CSS and script, no other asset, so it works from a
/// machine with no internet access and gives the page's policy nothing to allow.
const STATUS_PAGE: &str = include_str!("status.html");

/// The page may run its own inline script and style and fetch from this origin; nothing
/// else (no other origin, no framing, no forms sent anywhere).
const STATUS_PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; form-action 'none'; \
     frame-ancestors 'none'; base-uri 'none'";

/// How long `enable` / `disable` wait for the pool's manager to act before answering.
const COMMAND_WAIT: Duration = Duration::from_secs(5);

/// Where a request came from, which decides what it may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The unix socket: keel's own user or root. Everything.
    Local,
    /// The TCP listener: `/metrics`, `/healthz` and the status page's HTML, the rest with
    /// the bearer token.
    Network,
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Page,
    Status,
    Healthz,
    Metrics,
    Pool(String, PoolCommand),
    Invalidate,
    Stop,
    Reload,
    Upgrade,
    /// A known path asked with the wrong method; the value is the `Allow` header.
    WrongMethod(&'static str),
    NotFound,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PoolCommand {
    Recycle,
    Enable,
    Disable,
}

impl PoolCommand {
    fn as_str(self) -> &'static str {
        match self {
            PoolCommand::Recycle => "recycle",
            PoolCommand::Enable => "enable",
            PoolCommand::Disable => "disable",
        }
    }
}

impl Route {
    fn parse(method: &Method, path: &str) -> Route {
        let (route, allow) = match path {
            "/" => (Route::Page, "GET"),
            "/status" => (Route::Status, "GET"),
            "/healthz" => (Route::Healthz, "GET"),
            "/metrics" => (Route::Metrics, "GET"),
            "/cache/invalidate" => (Route::Invalidate, "POST"),
            "/stop" => (Route::Stop, "POST"),
            "/reload" => (Route::Reload, "POST"),
            "/upgrade" => (Route::Upgrade, "POST"),
            _ => match path.strip_prefix("/pools/").and_then(|r| r.split_once('/')) {
                Some((name, action)) if !name.is_empty() && !name.contains('/') => {
                    let command = match action {
                        "recycle" => PoolCommand::Recycle,
                        "enable" => PoolCommand::Enable,
                        "disable" => PoolCommand::Disable,
                        _ => return Route::NotFound,
                    };
                    (Route::Pool(name.to_owned(), command), "POST")
                }
                _ => return Route::NotFound,
            },
        };
        // HEAD as GET, for load balancers that check health with it (hyper sends no body).
        if method.as_str() == allow || (allow == "GET" && method == Method::HEAD) {
            route
        } else {
            Route::WrongMethod(allow)
        }
    }
}

/// Paths open to anyone who reaches the TCP listener (asked with any method, so that a
/// wrong method gets its 405 there too). `/` is the status page's HTML, the same bytes in
/// every keel of this version: it holds no figure. The figures it shows (pools, worker
/// pids, error-log lines) come from `/status`, which needs the token like the rest; the
/// page asks for it and sends it as a bearer token.
fn is_public(path: &str) -> bool {
    matches!(path, "/metrics" | "/healthz" | "/")
}

pub async fn handle(
    req: Request<Incoming>,
    ctx: Arc<AdminContext>,
    access: Access,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let route = Route::parse(req.method(), req.uri().path());
    if access == Access::Network
        && !is_public(req.uri().path())
        && let Some(refused) = refuse_without_token(&req, ctx.token.as_deref())
    {
        return Ok(refused);
    }
    Ok(match route {
        Route::Page => status_page(),
        Route::Status => json(StatusCode::OK, &status(&ctx)),
        Route::Healthz => healthz(&ctx),
        Route::Metrics => {
            let mut resp = Response::new(Full::new(Bytes::from(crate::metrics::render())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            resp
        }
        Route::Pool(name, command) => {
            let pools = ctx.pools();
            match pools.get(&name) {
                Some(pool) => pool_command(pool, command).await,
                None => error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no pool named {name:?} (pools: {})",
                        pools.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ),
            }
        }
        Route::Reload => reload(&ctx).await,
        Route::Upgrade => upgrade(&ctx).await,
        Route::Invalidate => match read_json::<json::InvalidateRequest>(req).await {
            Ok(body) => invalidate(body),
            Err((status, message)) => error(status, message),
        },
        Route::Stop => {
            tracing::info!("stop requested through the admin API");
            ctx.stop_requested.cancel();
            json(
                StatusCode::ACCEPTED,
                &json::Stopping {
                    stopping: true,
                    pid: std::process::id(),
                },
            )
        }
        Route::WrongMethod(allow) => {
            let mut resp = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} takes {allow} only", req.uri().path()),
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            resp
        }
        Route::NotFound => error(
            StatusCode::NOT_FOUND,
            format!(
                "no route {} {} (the routes are listed in docs/admin-api.yaml)",
                req.method(),
                req.uri().path()
            ),
        ),
    })
}

/// A TCP client may use a non-public route only with `Authorization: Bearer TOKEN`: the
/// answer for one that may not.
fn refuse_without_token(
    req: &Request<Incoming>,
    token: Option<&str>,
) -> Option<Response<Full<Bytes>>> {
    let Some(token) = token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "the TCP admin listener serves only GET /metrics, GET /healthz and the status page's HTML (set [admin] token to open the rest to clients that present it)",
        ));
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
        return None;
    }
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "this route needs the admin token: send Authorization: Bearer TOKEN",
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"keel\""),
    );
    Some(resp)
}

/// Compares without stopping at the first difference, so the time taken does not tell an
/// attacker how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn status(ctx: &AdminContext) -> json::Status {
    let now = SystemTime::now();
    let pools = ctx
        .pools()
        .values()
        .map(|pool| {
            let f = pool.figures();
            json::PoolStatus {
                name: pool.name().to_owned(),
                state: f.state.to_string(),
                queue_depth: pool.queue_len(),
                queue_length: pool.settings.queue_length,
                workers_wanted: f.workers_wanted,
                workers_running: f.workers_running,
                failures_in_interval: f.failures_in_interval,
                recycles: f.recycles,
                last_exit: f.last_exit,
                queue_history: ctx.queue_history.lock().of(pool.name()),
                workers: f
                    .workers
                    .into_iter()
                    .map(|w| json::WorkerStatus {
                        pid: w.pid,
                        state: w.state.to_string(),
                        attached: w.attached,
                        uptime_secs: now.duration_since(w.started).unwrap_or_default().as_secs(),
                        requests: w.requests,
                        in_flight: w.in_flight,
                        // Read now: the manager refreshes its own copy only for recycling.
                        rss_bytes: crate::os::proc::rss_bytes(w.pid).or(w.rss),
                        recycles: w.recycles,
                        last_ping_rtt_ms: w.last_ping_rtt.map(|d| d.as_secs_f64() * 1000.0),
                    })
                    .collect(),
            }
        })
        .collect();
    let cache = crate::cache::installed().map(|c| {
        let f = c.figures();
        let answered = f.hits + f.collapsed;
        let looked_up = answered + f.misses;
        json::CacheStatus {
            max_bytes: f.max_bytes,
            stored_bytes: f.stored_bytes,
            entries: f.entries,
            hits: f.hits,
            misses: f.misses,
            stale_hits: f.stale_hits,
            collapsed: f.collapsed,
            evictions: f.evictions,
            hit_ratio: (looked_up > 0).then(|| answered as f64 / looked_up as f64),
            sites: f.sites,
        }
    });
    json::Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        uptime_secs: ctx.started.elapsed().as_secs(),
        stopping: ctx.is_stopping(),
        sites: ctx.sites.read().clone(),
        listeners: ctx.listeners.read().clone(),
        pools,
        cache,
        queue_sample_secs: super::history::SAMPLE_INTERVAL.as_secs(),
        recent_errors: ctx.error_log.read().recent(),
    }
}

fn status_page() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(STATUS_PAGE.as_bytes())));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(STATUS_PAGE_POLICY),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

fn healthz(ctx: &AdminContext) -> Response<Full<Bytes>> {
    let mut pools = std::collections::BTreeMap::new();
    let mut disabled = Vec::new();
    for (name, pool) in &ctx.pools() {
        let state = pool.figures().state;
        if state == PoolState::Disabled {
            disabled.push(name.clone());
        }
        pools.insert(name.clone(), state.to_string());
    }
    let stopping = ctx.is_stopping();
    let serving = disabled.is_empty() && !stopping;
    let health = json::Health {
        status: if serving { "ok" } else { "unavailable" }.to_owned(),
        pools,
        disabled,
        stopping,
    };
    let status = if serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &health)
}

async fn pool_command(pool: &Arc<Pool>, command: PoolCommand) -> Response<Full<Bytes>> {
    let done: fn(PoolState) -> bool = match command {
        PoolCommand::Recycle => {
            pool.recycle(RecycleTrigger::OnDemand);
            |_| true
        }
        PoolCommand::Enable => {
            pool.enable();
            |s| s != PoolState::Disabled
        }
        PoolCommand::Disable => {
            pool.disable();
            |s| matches!(s, PoolState::Disabled | PoolState::Stopped)
        }
    };
    // The manager acts within one turn of its loop; answer with the state it reached, so
    // that `keel pool enable` returns once the pool takes requests again.
    let deadline = Instant::now() + COMMAND_WAIT;
    let mut state = pool.figures().state;
    while !done(state) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        state = pool.figures().state;
    }
    let status = if done(state) {
        if command == PoolCommand::Recycle {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        }
    } else {
        StatusCode::ACCEPTED
    };
    json(
        status,
        &json::PoolAction {
            pool: pool.name().to_owned(),
            action: command.as_str().to_owned(),
            state: state.to_string(),
        },
    )
}

fn invalidate(body: json::InvalidateRequest) -> Response<Full<Bytes>> {
    let (scope_name, target) = match (body.url, body.prefix) {
        (Some(url), None) => ("url", url),
        (None, Some(prefix)) => ("prefix", prefix),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give exactly one of \"url\" and \"prefix\"",
            );
        }
    };
    let Some(target) = cache_url(&target, scope_name == "url") else {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "{target:?} is not a full URL: the cache keys responses by scheme, host and path (e.g. \"http://example.com/news/\")"
            ),
        );
    };
    let Some(cache) = crate::cache::installed() else {
        return error(
            StatusCode::CONFLICT,
            "the response cache is off ([cache] enabled = false)",
        );
    };
    // The same URL over http and https are two entries; an invalidation drops both (an
    // operator names the content, not the connection it was fetched over).
    let mut spellings = vec![target.clone()];
    if let Some(rest) = target.strip_prefix("https://") {
        spellings.push(format!("http://{rest}"));
    } else if let Some(rest) = target.strip_prefix("http://") {
        spellings.push(format!("https://{rest}"));
    }
    for t in spellings {
        cache.invalidate(if scope_name == "url" {
            Scope::Exact(t)
        } else {
            Scope::Prefix(t)
        });
    }
    tracing::info!("cache: invalidated {scope_name} {target} (admin API)");
    json(
        StatusCode::OK,
        &json::Invalidated {
            scope: scope_name.to_owned(),
            target,
        },
    )
}

/// `url` as the cache keys it (`Cache::url`: scheme and host as keys hold them), a bare
/// host given the path `/` when it names one URL. A `#fragment` is dropped, as a browser
/// drops it before sending a request: no key has one.
fn cache_url(url: &str, exact: bool) -> Option<String> {
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https") {
        return None;
    }
    let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (host, path) = rest.split_at(host_end);
    if host.is_empty() || host.contains(char::is_whitespace) {
        return None;
    }
    let path = if exact && !path.starts_with('/') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    Some(crate::cache::Cache::url(&scheme, host, &path).to_string())
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes; `Err` is the status and message to
/// answer with.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, (StatusCode, String)> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY} bytes"),
            ));
        }
        Err(e) => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            ));
        }
    };
    serde_json::from_slice(&body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("the body is not valid: {e}"),
        )
    })
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    // Our own shapes always serialize (string keys, finite numbers).
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `POST /reload`: the daemon re-reads its config; a refusal carries the same
/// `file:line: key: message` lines as `keel check`.
async fn reload(ctx: &AdminContext) -> Response<Full<Bytes>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if ctx
        .control
        .send(crate::daemon::Control::Reload(tx))
        .await
        .is_err()
    {
        return error(StatusCode::CONFLICT, "keel is stopping");
    }
    match rx.await {
        Ok(Ok(applied)) => json(
            StatusCode::OK,
            &json::Reloaded {
                reloaded: true,
                changes: applied.to_string(),
            },
        ),
        Ok(Err(why)) => error(
            StatusCode::BAD_REQUEST,
            format!("the new config was refused; the running one stays:\n{why}"),
        ),
        Err(_) => error(StatusCode::CONFLICT, "keel is stopping"),
    }
}

/// `POST /upgrade`: a new keel process takes over the listening sockets; this one drains.
async fn upgrade(ctx: &AdminContext) -> Response<Full<Bytes>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if ctx
        .control
        .send(crate::daemon::Control::Upgrade(tx))
        .await
        .is_err()
    {
        return error(StatusCode::CONFLICT, "keel is stopping");
    }
    match rx.await {
        Ok(Ok(pid)) => json(
            StatusCode::OK,
            &json::Upgraded {
                upgraded: true,
                old_pid: std::process::id(),
                pid,
            },
        ),
        Ok(Err(why)) => error(StatusCode::INTERNAL_SERVER_ERROR, why),
        Err(_) => error(StatusCode::CONFLICT, "keel is stopping"),
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json(
        status,
        &json::Error {
            error: message.into(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_matched_by_path_then_method() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(Route::parse(&get, "/status"), Route::Status);
        assert_eq!(Route::parse(&post, "/status"), Route::WrongMethod("GET"));
        assert_eq!(Route::parse(&Method::HEAD, "/healthz"), Route::Healthz);
        assert_eq!(
            Route::parse(&Method::HEAD, "/stop"),
            Route::WrongMethod("POST")
        );
        assert_eq!(
            Route::parse(&post, "/pools/shop/recycle"),
            Route::Pool("shop".into(), PoolCommand::Recycle)
        );
        assert_eq!(
            Route::parse(&get, "/pools/shop/enable"),
            Route::WrongMethod("POST")
        );
        assert_eq!(Route::parse(&post, "/pools/shop/explode"), Route::NotFound);
        assert_eq!(Route::parse(&post, "/pools//recycle"), Route::NotFound);
        assert_eq!(Route::parse(&post, "/pools/a/b/recycle"), Route::NotFound);
        assert_eq!(Route::parse(&get, "/"), Route::Page);
        assert_eq!(Route::parse(&post, "/"), Route::WrongMethod("GET"));
        assert_eq!(Route::parse(&get, "/index.html"), Route::NotFound);
    }

    #[test]
    fn invalidation_targets_are_spelled_as_cache_keys() {
        assert_eq!(
            cache_url("HTTP://Example.COM/A?b=1", true).as_deref(),
            Some("http://example.com/A?b=1")
        );
        assert_eq!(
            cache_url("http://example.com", true).as_deref(),
            Some("http://example.com/")
        );
        assert_eq!(
            cache_url("http://example.com", false).as_deref(),
            Some("http://example.com")
        );
        assert_eq!(
            cache_url("http://example.com/a?b=1#top", true).as_deref(),
            Some("http://example.com/a?b=1")
        );
        assert_eq!(
            cache_url("http://example.com#top", true).as_deref(),
            Some("http://example.com/")
        );
        assert_eq!(
            cache_url("http://example.com/blog/#x", false).as_deref(),
            Some("http://example.com/blog/")
        );
        assert_eq!(cache_url("http://#top", true), None);
        assert_eq!(cache_url("/just/a/path", true), None);
        assert_eq!(cache_url("ftp://example.com/", true), None);
        assert_eq!(cache_url("http:///x", true), None);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}

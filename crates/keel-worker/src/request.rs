//! From a REQUEST frame to the `http::Request` a handler sees.

use crate::body::Body;
use crate::conn::{BodyChunk, Conn};
use crate::upgrade::Pending;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri, Version};
use keel_proto::{HttpVersion, RequestHead};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What keel knows about a request beyond its HTTP head; found in `request.extensions()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// The stream id on the worker connection (unique among open requests; reused later).
    pub id: u32,
    /// The client's address, as the daemon saw it.
    pub client: Option<SocketAddr>,
    /// The local address the client connected to.
    pub local: Option<SocketAddr>,
    /// The client connection is TLS.
    pub tls: bool,
    /// The TLS server name (SNI), when the client sent one.
    pub server_name: Option<String>,
}

/// Drops responses the daemon cached for this worker's pool; found in
/// `request.extensions()`. Cheap to clone and usable after the request ended (for as long as
/// the connection lives): it sends an INVALIDATE frame, which has no answer.
#[derive(Clone)]
pub struct Invalidator {
    conn: std::sync::Weak<Conn>,
}

impl std::fmt::Debug for Invalidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Invalidator")
    }
}

impl Invalidator {
    /// Drops the cached responses for exactly `target` (path and query, starting with `/`).
    pub fn exact(&self, target: &str) -> bool {
        self.send(keel_proto::InvalidateScope::Exact, target)
    }

    /// Drops every cached response whose path and query start with `prefix`.
    pub fn prefix(&self, prefix: &str) -> bool {
        self.send(keel_proto::InvalidateScope::Prefix, prefix)
    }

    /// `false` when `target` is not a valid INVALIDATE url (must start with `/`, no spaces
    /// or control bytes) or the connection is gone.
    fn send(&self, scope: keel_proto::InvalidateScope, target: &str) -> bool {
        let valid = target.starts_with('/') && target.bytes().all(|b| b > 0x20 && b != 0x7f);
        let Some(conn) = self.conn.upgrade() else {
            return false;
        };
        if valid {
            conn.push_control(&keel_proto::Frame::Invalidate {
                scope,
                url: Bytes::copy_from_slice(target.as_bytes()),
            });
        }
        valid
    }
}

/// Sends this request's STARTED frame; found in `request.extensions()` when the worker was
/// built with [`crate::Worker::started_by_handler`].
#[derive(Clone)]
pub struct StartSignal {
    conn: std::sync::Weak<Conn>,
    id: u32,
}

impl std::fmt::Debug for StartSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StartSignal({})", self.id)
    }
}

impl StartSignal {
    /// Tells the daemon the request is being handed on; returns once the frame is written
    /// to the socket (not merely queued). `false`: the stream or the connection has ended
    /// (the request should be dropped). Sending it twice is harmless.
    pub async fn send(&self) -> bool {
        let Some(conn) = self.conn.upgrade() else {
            return false;
        };
        conn.started(self.id).await.is_ok()
    }
}

/// A REQUEST frame the http crate refuses (the daemon validates less strictly than `http`).
pub(crate) type Rejected = &'static str;

/// A REQUEST frame made ready for its stream.
pub(crate) struct Built {
    pub request: Result<Request<Body>, Rejected>,
    /// Where the reading loop sends the request direction's DATA, when more is to come.
    pub body_tx: Option<mpsc::UnboundedSender<BodyChunk>>,
    /// The request asked to upgrade: resolved when its 101 is sent.
    pub upgrade: Option<Pending>,
}

/// Builds the request and, when more body is to come, the sender the reading loop feeds it
/// through. Header bytes are shared with the frame, not copied. A request that asks to
/// upgrade has no body (the daemon sends none): its request direction is kept for the
/// upgraded bytes, behind an [`crate::upgrade::OnUpgrade`] in its extensions.
pub(crate) fn build(conn: &Arc<Conn>, head: RequestHead, started_by_handler: bool) -> Built {
    let RequestHead {
        id,
        method,
        target,
        version,
        tls,
        server_name,
        client,
        local,
        deadline_ms: _,
        headers: fields,
        body: first,
        end,
    } = head;

    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut content_length = None;
    let mut rejected = None;
    for (name, value) in fields {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&name),
            HeaderValue::from_maybe_shared(value),
        ) else {
            rejected = Some("a header the http crate does not accept");
            continue;
        };
        if name == CONTENT_LENGTH {
            content_length = value.to_str().ok().and_then(|v| v.parse::<u64>().ok());
        }
        headers.append(name, value);
    }

    let mut on_upgrade = None;
    let (body, body_tx, upgrade) = if end {
        (Body::from(first), None, None)
    } else if crate::upgrade::requested(&headers) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (pending, on) = crate::upgrade::pending(rx);
        on_upgrade = Some(on);
        (Body::from(first), Some(tx), Some(pending))
    } else {
        let (body, tx) = Body::streaming(conn.clone(), id, first, content_length);
        (body, Some(tx), None)
    };
    // The sender stays with the stream even when the request is refused, so DATA already
    // on its way is granted back and the stream can close.
    let refused = |what, body_tx| Built {
        request: Err(what),
        body_tx,
        upgrade: None,
    };
    if let Some(what) = rejected {
        return refused(what, body_tx);
    }
    let Ok(method) = Method::from_bytes(&method) else {
        return refused("a method the http crate does not accept", body_tx);
    };
    let Ok(uri) = Uri::from_maybe_shared(target) else {
        return refused("a target the http crate does not accept", body_tx);
    };

    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = http_version(version);
    *request.headers_mut() = headers;
    request.extensions_mut().insert(Invalidator {
        conn: Arc::downgrade(conn),
    });
    if started_by_handler {
        request.extensions_mut().insert(StartSignal {
            conn: Arc::downgrade(conn),
            id,
        });
    }
    request.extensions_mut().insert(RequestInfo {
        id,
        client,
        local,
        tls,
        server_name: server_name_of(&server_name),
    });
    if let Some(on) = on_upgrade {
        request.extensions_mut().insert(on);
    }
    Built {
        request: Ok(request),
        body_tx,
        upgrade,
    }
}

fn http_version(v: HttpVersion) -> Version {
    match v {
        HttpVersion::Http10 => Version::HTTP_10,
        HttpVersion::Http11 => Version::HTTP_11,
        HttpVersion::Http2 => Version::HTTP_2,
        HttpVersion::Http3 => Version::HTTP_3,
    }
}

fn server_name_of(raw: &Bytes) -> Option<String> {
    if raw.is_empty() {
        return None;
    }
    Some(String::from_utf8_lossy(raw).into_owned())
}

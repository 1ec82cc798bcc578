//! Running application code for one stream: STARTED, the service call, the response, and
//! turning a panic or an error into ABORT(HandlerFailed).

use crate::body::Body;
use crate::conn::Conn;
use crate::request::Rejected;
use crate::response::{self, BoxError, Failure};
use crate::upgrade::Pending;
use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body::Body as HttpBody;
use keel_proto::StreamId;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tower_service::Service;

/// How requests that ask to upgrade reach the service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Upgrades {
    /// With the SDK's own `OnUpgrade` ([`crate::serve`]).
    #[default]
    Native,
    /// Through a hyper connection, with hyper's `OnUpgrade` ([`crate::serve_service`]).
    ThroughHyper,
}

/// The task of one stream. Cancelled (dropped) when the daemon aborts the stream or goes away.
pub(crate) async fn run_stream<S, B>(
    conn: Arc<Conn>,
    id: StreamId,
    request: Result<Request<Body>, Rejected>,
    mut service: S,
    send_started: bool,
    upgrade: Option<Pending>,
    upgrades: Upgrades,
) where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let request = match request {
        Ok(request) => request,
        Err(what) => {
            // The daemon let through something the http crate refuses: answer for the
            // application, which never sees the request.
            tracing::warn!(id, what, "request refused before the handler");
            let mut bad = Response::new(Body::from("bad request"));
            *bad.status_mut() = StatusCode::BAD_REQUEST;
            let _ = response::send(&conn, id, bad, None).await;
            return;
        }
    };
    let outcome = AssertUnwindSafe(async {
        if send_started {
            conn.started(id).await?;
        }
        match (upgrade, upgrades) {
            (Some(upgrade), Upgrades::ThroughHyper) => {
                crate::hyper_upgrade::serve(&conn, id, request, service, upgrade).await
            }
            (upgrade, _) => {
                poll_fn(|cx| service.poll_ready(cx))
                    .await
                    .map_err(|e| Failure::App(e.into()))?;
                let response = service
                    .call(request)
                    .await
                    .map_err(|e| Failure::App(e.into()))?;
                response::send(&conn, id, response, upgrade).await
            }
        }
    })
    .catch_unwind()
    .await;
    match outcome {
        Ok(Ok(())) | Ok(Err(Failure::Ended)) => {}
        Ok(Err(Failure::App(error))) => {
            tracing::warn!(id, %error, "handler failed; aborting the stream");
            conn.handler_failed(id);
        }
        // The panic hook has already printed the message.
        Err(_panic) => conn.handler_failed(id),
    }
}

/// A plain `Fn(Request) -> Future<Output = Response>` as a `Service` that never fails.
pub(crate) struct FnService<F>(Arc<F>);

impl<F> FnService<F> {
    pub(crate) fn new(f: F) -> Self {
        FnService(Arc::new(f))
    }
}

impl<F> Clone for FnService<F> {
    fn clone(&self) -> Self {
        FnService(self.0.clone())
    }
}

type OkResponse<B> = fn(Response<B>) -> Result<Response<B>, Infallible>;

impl<F, Fut, B> Service<Request<Body>> for FnService<F>
where
    F: Fn(Request<Body>) -> Fut,
    Fut: Future<Output = Response<B>>,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = futures_util::future::Map<Fut, OkResponse<B>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        (self.0)(request).map(Ok as OkResponse<B>)
    }
}

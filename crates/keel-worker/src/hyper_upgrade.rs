//! Upgrade requests for a tower service ([`crate::serve_service`]): the service runs behind a
//! real hyper HTTP/1.1 server connection over an in-memory pipe, because the `OnUpgrade`
//! that axum's `WebSocketUpgrade` (and `hyper::upgrade::on`) look for can only be made by
//! hyper. This side plays hyper's client: it writes the request head into the pipe, reads
//! the answer, sends it to the daemon, and after a 101 copies bytes between the stream's
//! [`Upgraded`] and hyper's upgraded pipe until both ends are closed.
//!
//! Only requests that ask to upgrade take this road (they have no body); every other request
//! goes to the service directly.

use crate::body::Body;
use crate::conn::Conn;
use crate::response::{self, BoxError, Failure};
use crate::upgrade::{OnUpgrade, Pending};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body as HttpBody;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use keel_proto::StreamId;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use tower_service::Service;

/// Bytes the in-memory pipe buffers each way.
const PIPE_BUFFER: usize = 64 * 1024;

pub(crate) async fn serve<S, B>(
    conn: &Arc<Conn>,
    id: StreamId,
    request: Request<Body>,
    service: S,
    upgrade: Pending,
) -> Result<(), Failure>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, _empty) = request.into_parts();
    // The SDK's own OnUpgrade is this module's; the service gets hyper's, and the rest of
    // the SDK's extensions (RequestInfo, Invalidator, StartSignal).
    let ours = parts.extensions.remove::<OnUpgrade>();
    let extensions = std::mem::take(&mut parts.extensions);
    let app = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req = req.map(|_| Body::empty());
        req.extensions_mut().extend(extensions.clone());
        call(service.clone(), req)
    });
    let (client_io, server_io) = tokio::io::duplex(PIPE_BUFFER);
    let server = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(server_io), app)
        .with_upgrades();
    let (mut sender, client) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .map_err(app_failure)?;
    let client = client.with_upgrades();

    let exchange = async {
        let request = Request::from_parts(parts, Empty::<Bytes>::new());
        let mut answer = sender.send_request(request).await.map_err(app_failure)?;
        if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
            return response::send(conn, id, answer, None).await;
        }
        let theirs = hyper::upgrade::on(&mut answer);
        let (head, _) = answer.into_parts();
        response::send(
            conn,
            id,
            Response::from_parts(head, Empty::<Bytes>::new()),
            Some(upgrade),
        )
        .await?;
        let Some(ours) = ours else {
            return Ok(());
        };
        let mut ours = ours.await.map_err(app_failure)?;
        let mut theirs = TokioIo::new(theirs.await.map_err(app_failure)?);
        // Each side's end of file shuts the other's writing side down: the client's close
        // reaches the service, the service's close ends the stream (END).
        let _ = tokio::io::copy_bidirectional(&mut ours, &mut theirs).await;
        Ok(())
    };

    // Both hyper connections end by themselves once they have handed their pipe ends over
    // (or when the pipe closes); the exchange decides when this stream is done.
    let (mut server, mut client, mut exchange) = (pin!(server), pin!(client), pin!(exchange));
    let (mut server_done, mut client_done) = (false, false);
    poll_fn(|cx| {
        if !server_done && let Poll::Ready(r) = server.as_mut().poll(cx) {
            server_done = true;
            if let Err(e) = r {
                tracing::debug!(id, error = %e, "in-memory HTTP connection to the service ended");
            }
        }
        if !client_done && client.as_mut().poll(cx).is_ready() {
            client_done = true;
        }
        exchange.as_mut().poll(cx)
    })
    .await
}

async fn call<S, B>(mut service: S, req: Request<Body>) -> Result<Response<B>, BoxError>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    service.call(req).await.map_err(Into::into)
}

fn app_failure(e: impl Into<BoxError>) -> Failure {
    Failure::App(e.into())
}

//! An axum `Router` running as a keel worker, unchanged: the same router could be served by
//! `axum::serve` on a TCP listener. Start it from keel with `command = [".../axum_worker"]`.
//! `/ws` is a WebSocket echo through axum's own `WebSocketUpgrade` extractor.

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::{get, post};

fn router() -> Router {
    Router::new()
        .route("/", get(|| async { "Hello from axum" }))
        .route("/pid", get(|| async { std::process::id().to_string() }))
        .route("/echo", post(|body: Bytes| async move { body }))
        .route("/ws", get(websocket))
}

async fn websocket(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(echo)
}

/// Sends every text and binary message back until the client closes.
async fn echo(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        if matches!(message, Message::Text(_) | Message::Binary(_))
            && socket.send(message).await.is_err()
        {
            break;
        }
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build the tokio runtime");
    if let Err(e) = runtime.block_on(keel_worker::serve_service(router())) {
        eprintln!("axum_worker: {e}");
        std::process::exit(1);
    }
}

//! An axum `Router` running as a keel worker, unchanged: the same router could be served by
//! `axum::serve` on a TCP listener. Start it from keel with `command = [".../axum_worker"]`.

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};

fn router() -> Router {
    Router::new()
        .route("/", get(|| async { "Hello from axum" }))
        .route("/pid", get(|| async { std::process::id().to_string() }))
        .route("/echo", post(|body: Bytes| async move { body }))
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

//! nginx's upstream in `bench/run` and `bench/cache`: a minimal hyper HTTP/1.1 server on a
//! unix socket that answers `200 text/plain`, keeping connections alive:
//!
//! - `/13` and `/4k`: 13 and 4096 bytes of `c` with `Cache-Control: public, max-age=3600`,
//!   the same bodies as keel's demo worker answers to `/cached?ttl=3600&id=X&size=13` and
//!   `size=4096` (for nginx's `proxy_cache` in `bench/cache`);
//! - any other request: `Hello from keel` (the same 15 bytes as keel's demo worker answers
//!   `GET /`).
//!
//! It runs on a current-thread tokio runtime so that it uses one core, like one keel worker
//! process.
//!
//! Usage: `bench-upstream /path/to/socket`

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

const BODY: &[u8] = b"Hello from keel";
const BODY_13: &[u8] = &[b'c'; 13];
const BODY_4K: &[u8] = &[b'c'; 4096];

async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (body, cacheable) = match req.uri().path() {
        "/13" => (BODY_13, true),
        "/4k" => (BODY_4K, true),
        _ => (BODY, false),
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body)));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if cacheable {
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        );
    }
    Ok(resp)
}

fn main() {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: bench-upstream SOCKET_PATH");
        std::process::exit(2);
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build tokio runtime");

    rt.block_on(async move {
        // A socket file left by a previous (killed) run makes bind fail with EADDRINUSE.
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                eprintln!("cannot remove stale socket {}: {e}", path.display());
                std::process::exit(1);
            }
        }
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot bind {}: {e}", path.display());
                std::process::exit(1);
            }
        };
        println!("listening on {}", path.display());

        let mut http = http1::Builder::new();
        http.keep_alive(true);

        loop {
            let stream = match listener.accept().await {
                Ok((stream, _addr)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let conn = http.serve_connection(TokioIo::new(stream), service_fn(hello));
            tokio::spawn(async move {
                // Peers resetting or closing mid-request are normal under load: ignore.
                let _ = conn.await;
            });
        }
    });
}

//! HTTP workers (`protocol = "http"`): unmodified HTTP/1.1 applications as pool workers.
//!
//! Each worker process gets a listening socket (`endpoint.rs`: a unix socket passed as fd 3
//! by the socket-activation convention, or a loopback port it binds itself), and the daemon
//! runs one adapter task for it (`bridge.rs`) that turns keel's worker protocol into HTTP
//! requests over kept-alive connections (`upstream.rs`), with the proxy headers set and
//! hop-by-hop headers removed (`forward.rs`); requests whose body is complete skip the
//! protocol pipe through the adapter's direct lane (`lane.rs`), which writes them with its
//! own HTTP/1.1 client (`h1_client.rs`). Everything above the adapter — queue,
//! dispatch, capacity, pings, recycling, rapid-fail, cache — treats it as any worker.

pub mod bridge;
pub mod endpoint;
pub mod forward;
pub mod h1_client;
pub mod lane;
pub mod upstream;

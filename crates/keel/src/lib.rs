//! keel: the daemon. See ARCHITECTURE.md for the request's path through these modules.

pub mod admin;
pub mod allocator;
pub mod cache;
pub mod compress;
pub mod conditional;
pub mod config;
pub mod daemon;
pub mod dispatch;
pub mod exchange;
pub mod header_list;
pub mod http1_head;
pub mod http_worker;
pub mod listener;
pub mod log;
pub mod metrics;
pub mod os;
pub mod pool;
pub mod queue;
pub mod request_check;
pub mod request_path;
pub mod routing;
pub mod static_files;
pub mod upgrade;

//! keel: the daemon. See ARCHITECTURE.md for the request's path through these modules.

pub mod config;
pub mod routing;

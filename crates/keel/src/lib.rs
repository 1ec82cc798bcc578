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

/// Helpers for the unit tests of several modules.
#[cfg(test)]
pub(crate) mod test_fields {
    use http::{HeaderMap, HeaderName, HeaderValue};

    /// A field map from `(name, value)` pairs, in order (a name may repeat).
    pub fn header_map(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in list {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }
}

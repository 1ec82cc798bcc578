//! Logs a user reads, in the formats IIS users know.
//!
//! - `error_log.rs` ([`ErrorLog`], [`ErrorRecord`], [`Reason`]): the HTTP.sys-style error log
//!   (`httperr*.log`, HTTPSYS.md §6.1–6.2), one line per request that ended abnormally, with a
//!   reason phrase from a closed list.
//! - `access_log.rs` ([`AccessLog`], [`AccessRecord`], [`AccessFormat`]): one line per request,
//!   cached or not, in W3C (HTTP.sys centralized logging, HTTPSYS.md §6.3), `combined` or JSON
//!   format, written by one background thread; a full queue drops lines (counted) rather than
//!   slow a request, and `reopen()` follows logrotate. See docs/logging.md.
//!
//! Invariant: writing a log line never panics and never fails the request it describes; an
//! I/O error is reported once and counted.

pub mod access_log;
mod error_log;

pub use access_log::{AccessFormat, AccessLog, AccessRecord, CacheMark, W3C_FIELDS};
pub use error_log::{ErrorLog, ErrorRecord, FIELDS, Reason};

//! Logs a user reads, in the formats IIS users know.
//!
//! - `error_log.rs` ([`ErrorLog`], [`ErrorRecord`], [`Reason`]): the HTTP.sys-style error log
//!   (`httperr*.log`, HTTPSYS.md §6.1–6.2), one line per request that ended abnormally, with a
//!   reason phrase from a closed list.
//!
//! Invariant: writing a log line never panics and never fails the request it describes; an
//! I/O error is reported once and counted.

mod error_log;

pub use error_log::{ErrorLog, ErrorRecord, FIELDS, Reason};

//! The HTTP.sys-style error log (`httperr*.log`, HTTPSYS.md §6.1–6.2).
//!
//! One line per request that ended abnormally: an error response keel generated itself, a
//! timeout, a dropped connection, or a request orphaned by a dying worker. The line format and
//! the reason phrases are HTTP.sys's, so tools and habits built for `httperr*.log` carry over.
//! keel logs the site *name* in `s-siteid` and the pool name in `s-queuename`.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// The `#Fields:` header of the error log: the order of the fields in every line.
pub const FIELDS: &str = "date time c-ip c-port s-ip s-port cs-version cs-method cs-uri \
                          sc-status s-siteid s-reason s-queuename";

/// HTTP.sys truncates the logged URI (path and query) to this many bytes.
const MAX_URI_BYTES: usize = 4096;
/// HTTP.sys truncates the logged verb to this many bytes.
const MAX_METHOD_BYTES: usize = 255;

/// Defines [`Reason`] from one table: variant, its HTTP.sys phrase, and its meaning.
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident => $phrase:literal,)*) => {
        /// Why a request ended abnormally: the `s-reason` field, HTTP.sys's closed list of
        /// phrases (HTTPSYS.md §6.2). The doc of each variant gives HTTP.sys's meaning.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in the order of HTTPSYS.md §6.2.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The phrase written in the log, exactly as HTTP.sys spells it.
            pub fn phrase(&self) -> &'static str {
                match self {
                    $(Reason::$variant => $phrase,)*
                }
            }
        }
    };
}

reasons! {
    /// 503: rapid-fail protection took the application offline after repeated worker failures.
    AppOffline => "AppOffline",
    /// 503: the application pool's process was too busy to take the request.
    AppPoolTimer => "AppPoolTimer",
    /// 503: the application shut down automatically, as the administrator's policy says.
    AppShutdown => "AppShutdown",
    /// 400: the request could not be parsed.
    BadRequest => "BadRequest",
    /// The client closed the connection before the request could be assigned to a worker.
    ClientReset => "Client_Reset",
    /// A worker quit unexpectedly or orphaned a pending request (IIS 6 name of
    /// [`Reason::ConnectionAbandonedByReqQueue`]).
    ConnectionAbandonedByAppPool => "Connection_Abandoned_By_AppPool",
    /// A worker quit unexpectedly or orphaned a pending request by closing its handle.
    ConnectionAbandonedByReqQueue => "Connection_Abandoned_By_ReqQueue",
    /// The client closed the connection before the final response was sent; the response
    /// may have been delivered.
    ConnectionDropped => "Connection_Dropped",
    /// The list of dropped connections waiting to be logged was full.
    ConnectionDroppedListFull => "Connection_Dropped_List_Full",
    /// 503: the site's connection limit was reached.
    ConnLimit => "ConnLimit",
    /// New connections were refused because memory ran low.
    ConnectionsRefused => "Connections_Refused",
    /// 503: an administrator took the application offline.
    Disabled => "Disabled",
    /// 413: the request body exceeded the size limit.
    EntityTooLarge => "EntityTooLarge",
    /// A header field exceeded the length limit.
    FieldLength => "FieldLength",
    /// The request head exceeded the length limit.
    RequestLength => "RequestLength",
    /// The URL exceeded the length limit.
    UrlLength => "URL_Length",
    /// Parse error: a forbidden element or sequence was found.
    Forbidden => "Forbidden",
    /// Parse error: a header was malformed.
    Header => "Header",
    /// Parse error or routing failure: the host is invalid or no binding's host matches it.
    Hostname => "Hostname",
    /// Parse error: an illegal carriage return or line feed.
    InvalidCrLf => "Invalid_CR/LF",
    /// Parse error: a number (e.g. Content-Length, chunk size) was malformed.
    Number => "Number",
    /// Parse error or routing failure: the URL is invalid or no binding's prefix matches it.
    Url => "URL",
    /// Parse error: the method was malformed.
    Verb => "Verb",
    /// 500: an internal server error.
    Internal => "Internal",
    /// 411: a required Content-Length was missing.
    LengthRequired => "LengthRequired",
    /// A required precondition was missing.
    Precondition => "Precondition",
    /// 503: an internal error such as a failed allocation or a URL reservation conflict.
    NotAvailable => "N/A",
    /// 501: not implemented, or 503 for an unknown transfer-encoding.
    NotImplemented => "N/I",
    /// 503: the application pool's request queue was full.
    QueueFull => "QueueFull",
    /// The request waited too long in the application pool's queue (IIS 6 name of
    /// [`Reason::TimerReqQueue`]).
    TimerAppPool => "Timer_AppPool",
    /// The request waited too long in the application pool's queue.
    TimerReqQueue => "Timer_ReqQueue",
    /// An idle connection expired.
    TimerConnectionIdle => "Timer_ConnectionIdle",
    /// The request body did not arrive in time (the timer restarts on each piece of data).
    TimerEntityBody => "Timer_EntityBody",
    /// The request head did not arrive in time.
    TimerHeaderWait => "Timer_HeaderWait",
    /// The client took the response more slowly than the minimum send rate.
    TimerMinBytesPerSecond => "Timer_MinBytesPerSecond",
    /// Reserved by HTTP.sys and never logged by it.
    TimerResponse => "Timer_Response",
    /// TLS renegotiation took too long.
    TimerSslRenegotiation => "Timer_SslRenegotiation",
    /// 505: the HTTP version is not supported.
    VersionNotSupported => "Version_N/S",
    /// Unconfirmed: seen in the wild, in no Microsoft list; presumably a policy disabled the
    /// application.
    DisabledByPolicy => "Disabled_By_Policy",
    /// Unconfirmed: seen only in an Azure App Service document; presumably the request was
    /// cancelled before it completed.
    RequestCancelled => "Request_Cancelled",
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.phrase())
    }
}

impl From<crate::routing::RouteError> for Reason {
    fn from(e: crate::routing::RouteError) -> Self {
        match e {
            crate::routing::RouteError::Hostname => Reason::Hostname,
            crate::routing::RouteError::Url => Reason::Url,
        }
    }
}

/// One abnormal end of a request. `None` fields are logged as `-`.
#[derive(Clone, Debug)]
pub struct ErrorRecord<'a> {
    pub time: SystemTime,
    pub client: Option<SocketAddr>,
    pub server: Option<SocketAddr>,
    pub version: Option<http::Version>,
    pub method: Option<&'a str>,
    /// Path and query, as received.
    pub uri: Option<&'a str>,
    /// `None` when the connection was dropped without a response.
    pub status: Option<u16>,
    /// The site name.
    pub site: Option<&'a str>,
    pub reason: Reason,
    /// The application pool name.
    pub queue: Option<&'a str>,
}

impl ErrorRecord<'_> {
    /// The log line, without a trailing newline.
    pub fn format_line(&self) -> String {
        self.to_string()
    }
}

/// Writes the log line, without a trailing newline.
impl fmt::Display for ErrorRecord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_date_time(f, self.time)?;
        f.write_char(' ')?;
        write_addr(f, self.client)?;
        f.write_char(' ')?;
        write_addr(f, self.server)?;
        f.write_char(' ')?;
        write_version(f, self.version)?;
        f.write_char(' ')?;
        write_text(f, self.method, MAX_METHOD_BYTES)?;
        f.write_char(' ')?;
        write_text(f, self.uri, MAX_URI_BYTES)?;
        f.write_char(' ')?;
        match self.status {
            Some(status) => write!(f, "{status}")?,
            None => f.write_char('-')?,
        }
        f.write_char(' ')?;
        write_text(f, self.site, usize::MAX)?;
        f.write_char(' ')?;
        f.write_str(self.reason.phrase())?;
        f.write_char(' ')?;
        write_text(f, self.queue, usize::MAX)
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC. Times before 1970 are logged as the epoch.
fn write_date_time(f: &mut impl fmt::Write, time: SystemTime) -> fmt::Result {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days(secs / 86_400);
    let secs_of_day = secs % 86_400;
    write!(
        f,
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, restricted to non-negative days). Shared by both logs.
pub(super) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097; // day of the 400-year era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the year from March 1st
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// `ip port`, or `- -`. An IPv4-mapped IPv6 address (a dual-stack socket) is logged as IPv4.
fn write_addr(f: &mut impl fmt::Write, addr: Option<SocketAddr>) -> fmt::Result {
    match addr {
        Some(addr) => {
            let ip: IpAddr = addr.ip().to_canonical();
            write!(f, "{ip} {}", addr.port())
        }
        None => f.write_str("- -"),
    }
}

fn version_numbers(version: http::Version) -> Option<(u8, u8)> {
    Some(match version {
        http::Version::HTTP_09 => (0, 9),
        http::Version::HTTP_10 => (1, 0),
        http::Version::HTTP_11 => (1, 1),
        http::Version::HTTP_2 => (2, 0),
        http::Version::HTTP_3 => (3, 0),
        _ => return None,
    })
}

/// `-` for no version; `HTTP/?.?` for one this code cannot number.
fn write_version(f: &mut impl fmt::Write, version: Option<http::Version>) -> fmt::Result {
    match version.map(version_numbers) {
        None => f.write_char('-'),
        Some(Some((major, minor))) => write_version_numbers(f, major, minor),
        Some(None) => f.write_str("HTTP/?.?"),
    }
}

/// `HTTP/major.minor`, or `HTTP/?.?` when either number has two digits (HTTP.sys's rule).
fn write_version_numbers(f: &mut impl fmt::Write, major: u8, minor: u8) -> fmt::Result {
    if major < 10 && minor < 10 {
        write!(f, "HTTP/{major}.{minor}")
    } else {
        f.write_str("HTTP/?.?")
    }
}

/// A free-text field: cut to at most `max_bytes` (on a character boundary), with every space,
/// other whitespace and control character replaced by `+` so the line still splits on spaces.
/// Missing or empty values are `-`.
fn write_text(f: &mut impl fmt::Write, value: Option<&str>, max_bytes: usize) -> fmt::Result {
    let value = match value {
        Some(v) if !v.is_empty() => v,
        _ => return f.write_char('-'),
    };
    let mut end = value.len().min(max_bytes);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let mut rest = &value[..end];
    while let Some(i) = rest.find(|c: char| c.is_whitespace() || c.is_control()) {
        f.write_str(&rest[..i])?;
        f.write_char('+')?;
        let bad_len = rest[i..].chars().next().map_or(1, char::len_utf8);
        rest = &rest[i + bad_len..];
    }
    f.write_str(rest)
}

/// Error-log lines kept in memory for the status page (`GET /status`, `recent_errors`).
pub const RECENT_LINES: usize = 50;
/// A kept line is cut to this many bytes (the file has it whole), so the memory the
/// recent lines take is bounded: at most [`RECENT_LINES`] × this.
const RECENT_LINE_BYTES: usize = 1024;

/// Where error-log lines go. A cheap handle: clones share one destination.
#[derive(Clone)]
pub struct ErrorLog {
    inner: Arc<Inner>,
}

struct Inner {
    sink: Sink,
    /// Lines that could not be written. Only the first failure is reported.
    failures: AtomicU64,
    /// The last [`RECENT_LINES`] lines, oldest first.
    recent: Mutex<VecDeque<String>>,
}

enum Sink {
    Tracing,
    File {
        path: PathBuf,
        out: Mutex<BufWriter<File>>,
    },
}

impl ErrorLog {
    /// Logs each line as a `tracing` warning with target `keel::error_log`.
    pub fn to_stderr() -> Self {
        Self::with_sink(Sink::Tracing)
    }

    /// Appends to the file at `path`, creating it and its parent directories if needed. A new
    /// or empty file first gets the W3C header (`#Software`, `#Version`, `#Date`, `#Fields`).
    pub fn to_file(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().append(true).create(true).open(path)?;
        let mut out = BufWriter::new(file);
        if out.get_ref().metadata()?.len() == 0 {
            let mut header = String::from("#Software: keel\n#Version: 1.0\n#Date: ");
            // Writing into a String cannot fail.
            let _ = write_date_time(&mut header, SystemTime::now());
            header.push_str("\n#Fields: ");
            header.push_str(FIELDS);
            header.push('\n');
            out.write_all(header.as_bytes())?;
            out.flush()?;
        }
        Ok(Self::with_file(path.to_owned(), out))
    }

    fn with_file(path: PathBuf, out: BufWriter<File>) -> Self {
        Self::with_sink(Sink::File {
            path,
            out: Mutex::new(out),
        })
    }

    fn with_sink(sink: Sink) -> Self {
        ErrorLog {
            inner: Arc::new(Inner {
                sink,
                failures: AtomicU64::new(0),
                recent: Mutex::new(VecDeque::with_capacity(RECENT_LINES)),
            }),
        }
    }

    /// Writes one line. Never panics; an I/O error is reported once through `tracing` and
    /// then only counted (see [`ErrorLog::failures`]).
    pub fn write(&self, record: &ErrorRecord<'_>) {
        crate::metrics::rejected(record.reason, record.queue);
        let line = record.format_line();
        match &self.inner.sink {
            Sink::Tracing => tracing::warn!(target: "keel::error_log", "{line}"),
            Sink::File { path, out } => {
                // Lines are rare; flushing each keeps the file current for `tail -f`.
                let result = {
                    let mut out = out.lock();
                    writeln!(out, "{line}").and_then(|()| out.flush())
                };
                if let Err(error) = result {
                    self.failed(path, &error);
                }
            }
        }
        self.keep(line);
    }

    /// The last lines written (at most [`RECENT_LINES`], oldest first), for the status page.
    pub fn recent(&self) -> Vec<String> {
        self.inner.recent.lock().iter().cloned().collect()
    }

    fn keep(&self, mut line: String) {
        if line.len() > RECENT_LINE_BYTES {
            let mut end = RECENT_LINE_BYTES;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push('…');
        }
        let mut recent = self.inner.recent.lock();
        if recent.len() == RECENT_LINES {
            recent.pop_front();
        }
        recent.push_back(line);
    }

    /// How many lines could not be written.
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    fn failed(&self, path: &Path, error: &io::Error) {
        if self.inner.failures.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::error!(
                path = %path.display(),
                %error,
                "cannot write the error log; further failures are counted, not reported"
            );
        }
    }
}

impl fmt::Debug for ErrorLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("ErrorLog");
        match &self.inner.sink {
            Sink::Tracing => s.field("sink", &"tracing"),
            Sink::File { path, .. } => s.field("path", path),
        };
        s.field("failures", &self.failures()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::time::Duration;

    /// 2024-02-29 13:05:09 UTC.
    fn leap_day() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_709_211_909)
    }

    fn full_record() -> ErrorRecord<'static> {
        ErrorRecord {
            time: leap_day(),
            client: Some("192.0.2.7:51234".parse().unwrap()),
            server: Some("[2001:db8::1]:443".parse().unwrap()),
            version: Some(http::Version::HTTP_11),
            method: Some("GET"),
            uri: Some("/app/page?q=1"),
            status: Some(503),
            site: Some("shop"),
            reason: Reason::QueueFull,
            queue: Some("shop-pool"),
        }
    }

    fn empty_record() -> ErrorRecord<'static> {
        ErrorRecord {
            time: UNIX_EPOCH,
            client: None,
            server: None,
            version: None,
            method: None,
            uri: None,
            status: None,
            site: None,
            reason: Reason::TimerConnectionIdle,
            queue: None,
        }
    }

    #[test]
    fn fields_are_in_httperr_order() {
        let line = full_record().format_line();
        assert_eq!(
            line,
            "2024-02-29 13:05:09 192.0.2.7 51234 2001:db8::1 443 HTTP/1.1 GET /app/page?q=1 \
             503 shop QueueFull shop-pool"
        );
        assert_eq!(
            line.split(' ').count(),
            FIELDS.split(' ').count(),
            "one value per #Fields name"
        );
    }

    #[test]
    fn missing_fields_are_dashes() {
        assert_eq!(
            empty_record().format_line(),
            "1970-01-01 00:00:00 - - - - - - - - - Timer_ConnectionIdle -"
        );
        let empty_strings = ErrorRecord {
            method: Some(""),
            uri: Some(""),
            site: Some(""),
            queue: Some(""),
            ..empty_record()
        };
        assert_eq!(empty_strings.format_line(), empty_record().format_line());
    }

    #[test]
    fn dropped_connection_has_no_status() {
        let line = ErrorRecord {
            status: None,
            reason: Reason::ConnectionAbandonedByReqQueue,
            ..full_record()
        }
        .format_line();
        assert!(
            line.ends_with(" /app/page?q=1 - shop Connection_Abandoned_By_ReqQueue shop-pool"),
            "{line}"
        );
    }

    #[test]
    fn spaces_and_control_characters_become_plus() {
        let cases = [
            ("/a b", "/a+b"),
            ("/tab\there", "/tab+here"),
            ("/cr\r\nlf", "/cr++lf"),
            ("/nul\0del\x7f", "/nul+del+"),
            ("/c1\u{85}nbsp\u{a0}", "/c1+nbsp+"),
            ("/caf\u{e9}", "/caf\u{e9}"),
            ("  ", "++"),
        ];
        for (raw, logged) in cases {
            let mut out = String::new();
            write_text(&mut out, Some(raw), MAX_URI_BYTES).unwrap();
            assert_eq!(out, logged, "{raw:?}");
        }
        let line = ErrorRecord {
            method: Some("GE T"),
            site: Some("my site"),
            queue: Some("pool\n"),
            ..full_record()
        }
        .format_line();
        assert!(line.contains(" GE+T "), "{line}");
        assert!(line.contains(" my+site "), "{line}");
        assert!(line.ends_with(" pool+"), "{line}");
    }

    #[test]
    fn uri_and_method_are_truncated() {
        let long_uri = format!("/{}", "x".repeat(5000));
        let long_method = "M".repeat(300);
        let record = ErrorRecord {
            uri: Some(&long_uri),
            method: Some(&long_method),
            ..full_record()
        };
        let line = record.format_line();
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[7].len(), MAX_METHOD_BYTES);
        assert_eq!(fields[8].len(), MAX_URI_BYTES);
        assert!(long_uri.starts_with(fields[8]));

        // A multi-byte character straddling the limit is dropped whole.
        let mut out = String::new();
        write_text(&mut out, Some("ab\u{e9}"), 3).unwrap();
        assert_eq!(out, "ab");
    }

    #[test]
    fn versions_with_two_digit_numbers_are_question_marks() {
        let cases = [
            (1, 1, "HTTP/1.1"),
            (9, 9, "HTTP/9.9"),
            (10, 0, "HTTP/?.?"),
            (1, 10, "HTTP/?.?"),
            (255, 255, "HTTP/?.?"),
        ];
        for (major, minor, logged) in cases {
            let mut out = String::new();
            write_version_numbers(&mut out, major, minor).unwrap();
            assert_eq!(out, logged, "{major}.{minor}");
        }
        let mut out = String::new();
        write_version(&mut out, None).unwrap();
        assert_eq!(out, "-");
        let known = [
            (http::Version::HTTP_09, "HTTP/0.9"),
            (http::Version::HTTP_10, "HTTP/1.0"),
            (http::Version::HTTP_11, "HTTP/1.1"),
            (http::Version::HTTP_2, "HTTP/2.0"),
            (http::Version::HTTP_3, "HTTP/3.0"),
        ];
        for (version, logged) in known {
            let line = ErrorRecord {
                version: Some(version),
                ..full_record()
            }
            .format_line();
            assert_eq!(line.split(' ').nth(6), Some(logged));
        }
    }

    #[test]
    fn ipv4_mapped_addresses_are_logged_as_ipv4() {
        let line = ErrorRecord {
            client: Some("[::ffff:192.0.2.7]:80".parse().unwrap()),
            ..empty_record()
        }
        .format_line();
        assert!(
            line.starts_with("1970-01-01 00:00:00 192.0.2.7 80 - -"),
            "{line}"
        );
    }

    #[test]
    fn times_before_the_epoch_are_clamped() {
        let line = ErrorRecord {
            time: UNIX_EPOCH - Duration::from_secs(10),
            ..empty_record()
        }
        .format_line();
        assert!(line.starts_with("1970-01-01 00:00:00 "), "{line}");
    }

    #[test]
    fn reason_phrases_are_unique_single_tokens() {
        let mut seen = HashSet::new();
        for reason in Reason::ALL {
            let phrase = reason.phrase();
            assert!(seen.insert(phrase), "duplicate {phrase}");
            assert!(!phrase.is_empty() && !phrase.contains(char::is_whitespace));
        }
        assert_eq!(Reason::ClientReset.phrase(), "Client_Reset");
        assert_eq!(Reason::TimerReqQueue.phrase(), "Timer_ReqQueue");
        assert_eq!(Reason::Url.phrase(), "URL");
        assert_eq!(Reason::InvalidCrLf.to_string(), "Invalid_CR/LF");
        assert_eq!(
            Reason::from(crate::routing::RouteError::Url).phrase(),
            crate::routing::RouteError::Url.reason()
        );
        assert_eq!(
            Reason::from(crate::routing::RouteError::Hostname).phrase(),
            crate::routing::RouteError::Hostname.reason()
        );
    }

    #[test]
    fn file_round_trip_writes_header_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/HTTPERR/httperr1.log");

        let log = ErrorLog::to_file(&path).unwrap();
        log.write(&full_record());
        log.clone().write(&empty_record());
        drop(log);
        let reopened = ErrorLog::to_file(&path).unwrap();
        reopened.write(&full_record());
        assert_eq!(reopened.failures(), 0);

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        assert_eq!(lines[0], "#Software: keel");
        assert_eq!(lines[1], "#Version: 1.0");
        assert!(lines[2].starts_with("#Date: "));
        assert_eq!(lines[3], format!("#Fields: {FIELDS}"));
        assert_eq!(lines[4], full_record().format_line());
        assert_eq!(lines[5], empty_record().format_line());
        assert_eq!(lines[6], full_record().format_line());
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn write_errors_are_counted_not_raised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read-only.log");
        std::fs::write(&path, "").unwrap();
        let read_only = File::open(&path).unwrap();
        let log = ErrorLog::with_file(path, BufWriter::new(read_only));
        for _ in 0..3 {
            log.write(&full_record());
        }
        assert_eq!(log.failures(), 3);
    }

    #[test]
    fn stderr_log_does_not_panic_and_handle_is_shareable() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<ErrorLog>();
        let log = ErrorLog::to_stderr();
        log.write(&full_record());
        assert_eq!(log.failures(), 0);
        assert!(format!("{log:?}").contains("tracing"));
    }

    #[test]
    fn the_last_fifty_lines_are_kept_each_cut_to_a_kilobyte() {
        let log = ErrorLog::to_stderr();
        let long_uri = format!("/{}", "a".repeat(3000));
        for i in 0..RECENT_LINES + 7 {
            let uri = if i == RECENT_LINES + 6 {
                long_uri.clone()
            } else {
                format!("/{i}")
            };
            log.write(&ErrorRecord {
                uri: Some(&uri),
                ..full_record()
            });
        }
        let recent = log.recent();
        assert_eq!(recent.len(), RECENT_LINES);
        assert!(recent[0].contains(" /7 "), "oldest kept: {}", recent[0]);
        assert!(recent[RECENT_LINES - 2].contains(&format!(" /{} ", RECENT_LINES + 5)));
        let last = &recent[RECENT_LINES - 1];
        assert!(last.len() <= RECENT_LINE_BYTES + '…'.len_utf8() && last.ends_with('…'));
    }

    proptest! {
        #[test]
        fn date_matches_humantime(secs in 0u64..253_402_300_800) {
            let time = UNIX_EPOCH + Duration::from_secs(secs);
            let mut ours = String::new();
            write_date_time(&mut ours, time).unwrap();
            let theirs = humantime::format_rfc3339_seconds(time).to_string();
            prop_assert_eq!(ours, theirs.trim_end_matches('Z').replacen('T', " ", 1));
        }

        #[test]
        fn line_always_has_thirteen_fields(
            method in proptest::option::of("\\PC{0,300}"),
            uri in proptest::option::of(".{0,50}"),
            site in proptest::option::of(".{0,10}"),
            status in proptest::option::of(any::<u16>()),
        ) {
            let record = ErrorRecord {
                method: method.as_deref(),
                uri: uri.as_deref(),
                site: site.as_deref(),
                status,
                ..full_record()
            };
            let line = record.format_line();
            prop_assert_eq!(line.split(' ').count(), 13, "{}", line);
            prop_assert!(!line.contains(|c: char| c.is_control()));
        }
    }
}

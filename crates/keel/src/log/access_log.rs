//! The access log: one line per request, cached or not (HTTPSYS.md §6.3, issue 5 §7).
//!
//! Three formats: `w3c` (the HTTP.sys / IIS centralized W3C log, with its `#Fields:` header),
//! `combined` (nginx / Apache "combined") and `json` (one object per line). A line is formatted
//! on the thread that serves the request, then handed to one writer thread over a bounded
//! channel; when the channel is full the line is dropped and counted, so a slow or stuck disk
//! never slows a request. [`AccessLog::reopen`] makes the writer reopen the path (logrotate).
//!
//! Whatever a client sends, a record stays one line with the same structure: free-text values
//! are escaped (JSON), `\xHH`-escaped (combined, as nginx does) or have their spaces and control
//! characters replaced by `+` (W3C), and are cut to a few KiB.

use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// The `#Fields:` header of the W3C format: the order of the fields in every W3C line.
pub const W3C_FIELDS: &str = "date time s-sitename s-ip cs-method cs-uri-stem cs-uri-query \
                              s-port c-ip cs(User-Agent) cs(Referer) cs-host sc-status sc-bytes \
                              cs-bytes time-taken x-cache x-pool";

/// A URI (or each of its W3C halves, stem and query) is cut to this many bytes, as HTTP.sys
/// cuts `cs-uri` in its error log.
const MAX_URI_BYTES: usize = 4096;
/// The method is cut to this many bytes (HTTP.sys's limit for a logged verb).
const MAX_METHOD_BYTES: usize = 255;
/// Every other free-text value (user agent, referer, host, site, pool) is cut to this many
/// bytes, so one line stays a few KiB and the channel's memory stays bounded.
const MAX_TEXT_BYTES: usize = 4096;
/// How long [`AccessLog::flush_and_close`] waits for the writer before giving up on it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many bytes of lines wait for the writer, whatever `buffer_lines` says: with a
/// stuck disk and hostile headers (a line can reach tens of KiB once escaped), a line budget
/// alone could hold gigabytes.
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// The line format of an access log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessFormat {
    #[default]
    /// The HTTP.sys / IIS W3C extended format, with [`W3C_FIELDS`]; space-separated, times in
    /// UTC, `-` for a missing value, `+` for a space inside one.
    W3c,
    /// nginx's and Apache's `combined` format, with times in UTC (`+0000`).
    Combined,
    /// One JSON object per line.
    Json,
}

impl AccessFormat {
    /// The name used in the configuration: `w3c`, `combined` or `json`.
    pub fn name(self) -> &'static str {
        match self {
            AccessFormat::W3c => "w3c",
            AccessFormat::Combined => "combined",
            AccessFormat::Json => "json",
        }
    }
}

impl fmt::Display for AccessFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name is not `w3c`, `combined` or `json`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown access log format {0:?} (expected w3c, combined or json)")]
pub struct UnknownAccessFormat(pub String);

impl FromStr for AccessFormat {
    type Err = UnknownAccessFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "w3c" => Ok(AccessFormat::W3c),
            "combined" => Ok(AccessFormat::Combined),
            "json" => Ok(AccessFormat::Json),
            _ => Err(UnknownAccessFormat(s.to_owned())),
        }
    }
}

/// What the response cache did for a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CacheMark {
    /// The cache was not consulted (not cacheable, or no cache).
    #[default]
    None,
    /// Answered from a fresh entry.
    Hit,
    /// Answered by a worker (and maybe stored).
    Miss,
    /// Answered from an expired entry because the pool failed (stale-if-error).
    Stale,
}

impl CacheMark {
    /// The JSON value: `none`, `hit`, `miss` or `stale`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMark::None => "none",
            CacheMark::Hit => "hit",
            CacheMark::Miss => "miss",
            CacheMark::Stale => "stale",
        }
    }

    /// The W3C `x-cache` value: the `x-cache` response header's spelling, `-` for none.
    fn w3c(self) -> &'static str {
        match self {
            CacheMark::None => "-",
            CacheMark::Hit => "HIT",
            CacheMark::Miss => "MISS",
            CacheMark::Stale => "STALE",
        }
    }
}

/// One request, as the access log sees it. `None` and empty values are logged as missing.
#[derive(Clone, Debug)]
pub struct AccessRecord<'a> {
    /// When the request was received.
    pub time: SystemTime,
    /// The site name.
    pub site: &'a str,
    /// The application pool of the URL, also for a cache hit; `None` for a static root's
    /// answer or a request routed nowhere.
    pub pool: Option<&'a str>,
    pub client: SocketAddr,
    /// The local address the request arrived on.
    pub server: SocketAddr,
    pub method: &'a str,
    /// Path and query, as received.
    pub uri: &'a str,
    pub version: http::Version,
    pub status: u16,
    /// Bytes sent to the client for this response (W3C `sc-bytes`; combined
    /// `$body_bytes_sent`): the caller decides whether headers count.
    pub bytes_sent: u64,
    /// Bytes received from the client for this request (W3C `cs-bytes`).
    pub bytes_received: u64,
    /// From the request's arrival to its last response byte (W3C `time-taken`).
    pub duration: Duration,
    pub cache: CacheMark,
    pub user_agent: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub host: Option<&'a str>,
}

impl AccessRecord<'_> {
    /// Appends the line in format `format` to `out`, without a trailing newline. The line never
    /// contains a line break or any other control character.
    pub fn format(&self, format: AccessFormat, out: &mut String) {
        // Writing into a String cannot fail.
        let _ = match format {
            AccessFormat::W3c => self.write_w3c(out),
            AccessFormat::Combined => self.write_combined(out),
            AccessFormat::Json => self.write_json(out),
        };
    }

    /// The line in format `format`, without a trailing newline.
    pub fn format_line(&self, format: AccessFormat) -> String {
        let mut out = String::with_capacity(256);
        self.format(format, &mut out);
        out
    }

    fn write_w3c(&self, out: &mut String) -> fmt::Result {
        let t = UtcTime::from(self.time);
        write!(
            out,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} ",
            t.year, t.month, t.day, t.hour, t.minute, t.second
        )?;
        w3c_text(out, Some(self.site), MAX_TEXT_BYTES);
        write!(out, " {} ", canonical_ip(self.server))?;
        w3c_text(out, Some(self.method), MAX_METHOD_BYTES);
        out.push(' ');
        let (stem, query) = match self.uri.split_once('?') {
            Some((stem, query)) => (stem, Some(query)),
            None => (self.uri, None),
        };
        w3c_text(out, Some(stem), MAX_URI_BYTES);
        out.push(' ');
        w3c_text(out, query, MAX_URI_BYTES);
        write!(
            out,
            " {} {} ",
            self.server.port(),
            canonical_ip(self.client)
        )?;
        w3c_text(out, self.user_agent, MAX_TEXT_BYTES);
        out.push(' ');
        w3c_text(out, self.referer, MAX_TEXT_BYTES);
        out.push(' ');
        w3c_text(out, self.host, MAX_TEXT_BYTES);
        write!(
            out,
            " {} {} {} {} {} ",
            self.status,
            self.bytes_sent,
            self.bytes_received,
            self.duration.as_millis(),
            self.cache.w3c()
        )?;
        w3c_text(out, self.pool, MAX_TEXT_BYTES);
        Ok(())
    }

    fn write_combined(&self, out: &mut String) -> fmt::Result {
        let t = UtcTime::from(self.time);
        write!(
            out,
            "{} - - [{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000] \"",
            canonical_ip(self.client),
            t.day,
            MONTHS[(t.month - 1) as usize],
            t.year,
            t.hour,
            t.minute,
            t.second
        )?;
        nginx_text(out, Some(self.method), MAX_METHOD_BYTES);
        out.push(' ');
        nginx_text(out, Some(self.uri), MAX_URI_BYTES);
        write!(
            out,
            " {}\" {} {} \"",
            version_str(self.version),
            self.status,
            self.bytes_sent
        )?;
        nginx_text(out, self.referer, MAX_TEXT_BYTES);
        out.push_str("\" \"");
        nginx_text(out, self.user_agent, MAX_TEXT_BYTES);
        out.push('"');
        Ok(())
    }

    fn write_json(&self, out: &mut String) -> fmt::Result {
        let t = UtcTime::from(self.time);
        write!(
            out,
            "{{\"time\":\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z\",\"site\":",
            t.year, t.month, t.day, t.hour, t.minute, t.second, t.millis
        )?;
        json_text(out, Some(self.site), MAX_TEXT_BYTES);
        out.push_str(",\"pool\":");
        json_text(out, self.pool, MAX_TEXT_BYTES);
        write!(
            out,
            ",\"client\":\"{}\",\"server\":\"{}\",\"method\":",
            canonical(self.client),
            canonical(self.server)
        )?;
        json_text(out, Some(self.method), MAX_METHOD_BYTES);
        out.push_str(",\"uri\":");
        json_text(out, Some(self.uri), MAX_URI_BYTES);
        let micros = self.duration.as_micros();
        write!(
            out,
            ",\"version\":\"{}\",\"status\":{},\"bytes_sent\":{},\"bytes_received\":{},\
             \"duration_ms\":{}.{:03},\"cache\":\"{}\",\"user_agent\":",
            version_str(self.version),
            self.status,
            self.bytes_sent,
            self.bytes_received,
            micros / 1000,
            micros % 1000,
            self.cache.as_str()
        )?;
        json_text(out, self.user_agent, MAX_TEXT_BYTES);
        out.push_str(",\"referer\":");
        json_text(out, self.referer, MAX_TEXT_BYTES);
        out.push_str(",\"host\":");
        json_text(out, self.host, MAX_TEXT_BYTES);
        out.push('}');
        Ok(())
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A time's UTC calendar fields. Times before 1970 are taken as the epoch.
struct UtcTime {
    year: u64,
    month: u64,
    day: u64,
    hour: u64,
    minute: u64,
    second: u64,
    millis: u32,
}

impl From<SystemTime> for UtcTime {
    fn from(time: SystemTime) -> Self {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (year, month, day) = super::error_log::civil_from_days(secs / 86_400);
        let secs_of_day = secs % 86_400;
        UtcTime {
            year,
            month,
            day,
            hour: secs_of_day / 3600,
            minute: secs_of_day / 60 % 60,
            second: secs_of_day % 60,
            millis: since.subsec_millis(),
        }
    }
}

/// The address with an IPv4-mapped IPv6 address (a dual-stack socket) shown as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn canonical_ip(addr: SocketAddr) -> IpAddr {
    addr.ip().to_canonical()
}

fn version_str(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?.?",
    }
}

/// `value` cut to at most `max_bytes`, on a character boundary.
fn truncate(value: &str, max_bytes: usize) -> &str {
    let mut end = value.len().min(max_bytes);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// A W3C field: every whitespace and control character becomes `+` so the line still splits
/// on spaces; missing or empty is `-`. Other non-ASCII text is kept as UTF-8 (IIS `logInUTF8`).
fn w3c_text(out: &mut String, value: Option<&str>, max_bytes: usize) {
    let value = match value {
        Some(v) if !v.is_empty() => truncate(v, max_bytes),
        _ => return out.push('-'),
    };
    let mut rest = value;
    while let Some(i) = rest.find(|c: char| c.is_whitespace() || c.is_control()) {
        out.push_str(&rest[..i]);
        out.push('+');
        let bad_len = rest[i..].chars().next().map_or(1, char::len_utf8);
        rest = &rest[i + bad_len..];
    }
    out.push_str(rest);
}

/// A quoted combined-format value; missing or empty is `-`.
fn nginx_text(out: &mut String, value: Option<&str>, max_bytes: usize) {
    match value {
        Some(v) if !v.is_empty() => nginx_escape(out, v, max_bytes),
        _ => out.push('-'),
    }
}

/// nginx's default log escaping: `"`, `\`, control characters and every byte outside ASCII
/// become `\xHH` (upper-case hex); everything else is kept.
fn nginx_escape(out: &mut String, value: &str, max_bytes: usize) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let value = truncate(value, max_bytes);
    let mut rest = value;
    while let Some(i) = rest.find(|c: char| c == '"' || c == '\\' || !(' '..='~').contains(&c)) {
        out.push_str(&rest[..i]);
        let len = rest[i..].chars().next().map_or(1, char::len_utf8);
        for &b in &rest.as_bytes()[i..i + len] {
            out.push_str("\\x");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        rest = &rest[i + len..];
    }
    out.push_str(rest);
}

/// A JSON string (RFC 8259), or `null` when missing. Control characters, U+2028 and U+2029
/// are escaped too, so the line is safe for terminals and JavaScript.
fn json_text(out: &mut String, value: Option<&str>, max_bytes: usize) {
    let Some(value) = value else {
        return out.push_str("null");
    };
    out.push('"');
    let value = truncate(value, max_bytes);
    let mut rest = value;
    while let Some(i) = rest.find(|c: char| {
        c == '"' || c == '\\' || c.is_control() || c == '\u{2028}' || c == '\u{2029}'
    }) {
        out.push_str(&rest[..i]);
        let c = rest[i..].chars().next().unwrap_or('\0');
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            // Every other escaped character is in the BMP.
            c => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
        }
        rest = &rest[i + c.len_utf8()..];
    }
    out.push_str(rest);
    out.push('"');
}

/// The W3C header of a new file.
fn w3c_header(now: SystemTime) -> String {
    let t = UtcTime::from(now);
    format!(
        "#Software: keel\n#Version: 1.0\n#Date: {:04}-{:02}-{:02} {:02}:{:02}:{:02}\n\
         #Fields: {W3C_FIELDS}\n",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// Opens `path` for appending (creating it and its parent directories); a new or empty file
/// first gets the W3C header when the format is W3C.
fn open_file(path: &Path, format: AccessFormat) -> io::Result<BufWriter<File>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().append(true).create(true).open(path)?;
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    if format == AccessFormat::W3c && out.get_ref().metadata()?.len() == 0 {
        out.write_all(w3c_header(SystemTime::now()).as_bytes())?;
        out.flush()?;
    }
    Ok(out)
}

/// What the request path sends the writer thread.
enum Msg {
    /// One formatted line, with its newline.
    Line(String),
    /// Look at the reopen flag now (sent by [`AccessLog::reopen`]).
    Wake,
    /// Write what is queued, flush and exit.
    Close,
}

/// Figures shared by the handles and the writer thread.
#[derive(Default)]
struct Counters {
    /// Lines the writer handed to the file.
    written: AtomicU64,
    /// Lines refused because the channel was full or the writer had stopped.
    dropped: AtomicU64,
    /// Lines the writer could not write (I/O error).
    failed: AtomicU64,
    /// Lines accepted by the channel.
    queued: AtomicU64,
    /// Bytes of the lines in the channel (and the one being written).
    queued_bytes: AtomicUsize,
    /// [`AccessLog::reopen`] was called and the writer has not reopened yet.
    reopen: AtomicBool,
    /// The writer thread has stopped taking lines.
    finished: AtomicBool,
}

impl Counters {
    /// Lines accepted by the channel that the writer never took (it stopped first).
    fn lost_in_channel(&self) -> u64 {
        if !self.finished.load(Ordering::Acquire) {
            return 0;
        }
        let handled = self.written.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
        self.queued.load(Ordering::Relaxed).saturating_sub(handled)
    }
}

/// Where access-log lines go: a file written by one background thread. A cheap handle: clones
/// share the file, the channel and the counters.
#[derive(Clone)]
pub struct AccessLog {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    format: AccessFormat,
    tx: SyncSender<Msg>,
    counters: Arc<Counters>,
    max_queued_bytes: usize,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl AccessLog {
    /// Opens (appends to) the file at `path`, creating it and its parent directories, and starts
    /// the writer thread. A new or empty W3C file first gets the header (`#Software`,
    /// `#Version`, `#Date`, `#Fields`). At most `buffer_lines` lines (at least 1) and 64 MiB
    /// wait for the writer; more are dropped.
    pub fn open(path: &Path, format: AccessFormat, buffer_lines: usize) -> io::Result<Self> {
        Self::open_with(path, format, buffer_lines, MAX_QUEUED_BYTES)
    }

    fn open_with(
        path: &Path,
        format: AccessFormat,
        buffer_lines: usize,
        max_queued_bytes: usize,
    ) -> io::Result<Self> {
        let out = open_file(path, format)?;
        let (tx, rx) = sync_channel(buffer_lines.max(1));
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            path: path.to_owned(),
            format,
            out,
            counters: counters.clone(),
            reported: false,
        };
        let handle = std::thread::Builder::new()
            .name("keel-access-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(AccessLog {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                format,
                tx,
                counters,
                max_queued_bytes,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// Logs one request: formats the line on this thread and queues it for the writer. Never
    /// blocks and never panics; when the queue is full the line is dropped and counted.
    pub fn log(&self, record: &AccessRecord<'_>) {
        let mut line = String::with_capacity(256);
        record.format(self.inner.format, &mut line);
        line.push('\n');
        let counters = &self.inner.counters;
        let len = line.len();
        // Counted before sending, so the writer never subtracts what was not added yet.
        let before = counters.queued_bytes.fetch_add(len, Ordering::Relaxed);
        let sent = before + len <= self.inner.max_queued_bytes
            && self.inner.tx.try_send(Msg::Line(line)).is_ok();
        if sent {
            counters.queued.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Makes the writer reopen the path before its next write (logrotate: rename the file, then
    /// signal). What the writer holds is written to the old file first; lines still queued go
    /// to the new one, so none are lost. Never blocks. If the path cannot be opened, the error
    /// is reported and the old file is kept.
    pub fn reopen(&self) {
        self.inner.counters.reopen.store(true, Ordering::Release);
        // Wake an idle writer so the new file appears now; a full channel means the writer is
        // busy and will see the flag before its next line anyway.
        let _ = self.inner.tx.try_send(Msg::Wake);
    }

    /// Lines not logged: refused because the queue was full or the log was closed, or still
    /// queued when the writer stopped.
    pub fn dropped(&self) -> u64 {
        let counters = &self.inner.counters;
        counters.dropped.load(Ordering::Relaxed) + counters.lost_in_channel()
    }

    /// Lines handed to the file (buffered; flushed whenever the queue is empty).
    pub fn written(&self) -> u64 {
        self.inner.counters.written.load(Ordering::Relaxed)
    }

    /// Lines the writer could not write because of an I/O error. The first error is reported
    /// through `tracing`; later ones are only counted.
    pub fn failures(&self) -> u64 {
        self.inner.counters.failed.load(Ordering::Relaxed)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The line format.
    pub fn format(&self) -> AccessFormat {
        self.inner.format
    }

    /// At shutdown: writes every queued line, flushes, and stops the writer thread, waiting at
    /// most 10 seconds for it (a stuck disk must not stop the daemon from exiting). Lines
    /// logged afterwards through other handles are dropped and counted. Call it once.
    pub fn flush_and_close(self) {
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        let mut msg = Msg::Close;
        loop {
            match self.inner.tx.try_send(msg) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => break,
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return self.gave_up();
                    }
                    msg = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let Some(handle) = self.inner.writer.lock().take() else {
            return;
        };
        while !handle.is_finished() {
            if Instant::now() >= deadline {
                return self.gave_up();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = handle.join();
    }

    fn gave_up(&self) {
        tracing::error!(
            path = %self.inner.path.display(),
            "the access log writer did not finish within {CLOSE_TIMEOUT:?}; queued lines may be lost"
        );
    }
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog")
            .field("path", &self.inner.path)
            .field("format", &self.inner.format)
            .field("written", &self.written())
            .field("dropped", &self.dropped())
            .field("failures", &self.failures())
            .finish()
    }
}

/// The writer thread's state.
struct Writer {
    path: PathBuf,
    format: AccessFormat,
    out: BufWriter<File>,
    counters: Arc<Counters>,
    /// A write error has been reported (only the first is).
    reported: bool,
}

impl Writer {
    /// Takes lines until every handle is gone or [`Msg::Close`]; flushes whenever the channel
    /// is empty, so the file is current for `tail -f` and no line waits long in memory.
    fn run(mut self, rx: Receiver<Msg>) {
        let mut dirty = false;
        loop {
            let msg = match rx.try_recv() {
                Ok(msg) => msg,
                Err(TryRecvError::Empty) => {
                    if dirty {
                        self.flush();
                        dirty = false;
                    }
                    match rx.recv() {
                        Ok(msg) => msg,
                        Err(_) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            match msg {
                Msg::Line(line) => {
                    self.write(&line);
                    dirty = true;
                }
                Msg::Wake => self.maybe_reopen(),
                Msg::Close => {
                    while let Ok(msg) = rx.try_recv() {
                        if let Msg::Line(line) = msg {
                            self.write(&line);
                        }
                    }
                    break;
                }
            }
        }
        self.flush();
        self.counters.finished.store(true, Ordering::Release);
    }

    fn write(&mut self, line: &str) {
        self.maybe_reopen();
        let result = self.out.write_all(line.as_bytes());
        self.counters
            .queued_bytes
            .fetch_sub(line.len(), Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.counters.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                self.report(&error);
            }
        }
    }

    fn flush(&mut self) {
        if let Err(error) = self.out.flush() {
            self.report(&error);
        }
    }

    fn maybe_reopen(&mut self) {
        // A plain load first: this runs for every line.
        if !self.counters.reopen.load(Ordering::Acquire)
            || !self.counters.reopen.swap(false, Ordering::AcqRel)
        {
            return;
        }
        // What is buffered belongs to the old file.
        self.flush();
        match open_file(&self.path, self.format) {
            Ok(out) => {
                self.out = out;
                self.reported = false;
            }
            Err(error) => tracing::error!(
                path = %self.path.display(),
                %error,
                "cannot reopen the access log; still writing to the old file"
            ),
        }
    }

    fn report(&mut self, error: &io::Error) {
        if !self.reported {
            self.reported = true;
            tracing::error!(
                path = %self.path.display(),
                %error,
                "cannot write the access log; further failures are counted, not reported"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::sync::Barrier;

    /// 2024-02-29 13:05:09.042 UTC.
    fn leap_day() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_709_211_909_042)
    }

    fn typical() -> AccessRecord<'static> {
        AccessRecord {
            time: leap_day(),
            site: "shop",
            pool: Some("shop-pool"),
            client: "[::ffff:192.0.2.7]:51234".parse().unwrap(),
            server: "[2001:db8::1]:443".parse().unwrap(),
            method: "GET",
            uri: "/app/page?q=1&r=2",
            version: http::Version::HTTP_11,
            status: 200,
            bytes_sent: 5120,
            bytes_received: 312,
            duration: Duration::from_micros(12_345),
            cache: CacheMark::Hit,
            user_agent: Some("Mozilla/5.0 (X11; Linux)"),
            referer: Some("https://example.com/"),
            host: Some("shop.example.com"),
        }
    }

    fn sparse() -> AccessRecord<'static> {
        AccessRecord {
            time: UNIX_EPOCH,
            site: "",
            pool: None,
            client: "192.0.2.7:1".parse().unwrap(),
            server: "0.0.0.0:80".parse().unwrap(),
            method: "",
            uri: "",
            version: http::Version::HTTP_10,
            status: 503,
            bytes_sent: 0,
            bytes_received: 0,
            duration: Duration::ZERO,
            cache: CacheMark::None,
            user_agent: None,
            referer: Some(""),
            host: None,
        }
    }

    const HOSTILE_UA: &str = "Evil \"agent\"\r\n2024-01-01 00:00:00 forged\t\\x22 \u{0}\u{7f}\u{85}\u{2028} caf\u{e9} \u{1F600}";

    fn hostile() -> AccessRecord<'static> {
        AccessRecord {
            site: "my site\n",
            pool: Some("po\"ol\r"),
            method: "GE T\"",
            uri: "/a b/caf\u{e9}\"\n?x=1 2&y=\u{1F600}\t?z",
            user_agent: Some(HOSTILE_UA),
            referer: Some("\"; DROP\n"),
            host: Some("h\u{0}st \u{a0}"),
            ..typical()
        }
    }

    // ----- W3C -----

    #[test]
    fn w3c_typical_and_sparse() {
        let line = typical().format_line(AccessFormat::W3c);
        assert_eq!(
            line,
            "2024-02-29 13:05:09 shop 2001:db8::1 GET /app/page q=1&r=2 443 192.0.2.7 \
             Mozilla/5.0+(X11;+Linux) https://example.com/ shop.example.com 200 5120 312 12 \
             HIT shop-pool"
        );
        assert_eq!(line.split(' ').count(), W3C_FIELDS.split(' ').count());
        assert_eq!(
            sparse().format_line(AccessFormat::W3c),
            "1970-01-01 00:00:00 - 0.0.0.0 - - - 80 192.0.2.7 - - - 503 0 0 0 - -"
        );
    }

    #[test]
    fn w3c_hostile_values_keep_the_field_count() {
        let line = hostile().format_line(AccessFormat::W3c);
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 18, "{line}");
        assert!(!line.contains(|c: char| c.is_control() || c.is_whitespace() && c != ' '));
        assert_eq!(fields[2], "my+site+");
        assert_eq!(fields[4], "GE+T\"");
        assert_eq!(fields[5], "/a+b/caf\u{e9}\"+");
        assert_eq!(fields[6], "x=1+2&y=\u{1F600}+?z");
        assert!(fields[9].contains("caf\u{e9}+\u{1F600}"), "{}", fields[9]);
        assert_eq!(fields[11], "h+st++");
        assert_eq!(fields[17], "po\"ol+");
        // A query that is present but empty is missing.
        let empty_query = AccessRecord {
            uri: "/a?",
            ..typical()
        };
        let line = empty_query.format_line(AccessFormat::W3c);
        assert_eq!(line.split(' ').nth(6), Some("-"));
    }

    // ----- combined -----

    #[test]
    fn combined_typical_and_sparse() {
        assert_eq!(
            typical().format_line(AccessFormat::Combined),
            "192.0.2.7 - - [29/Feb/2024:13:05:09 +0000] \"GET /app/page?q=1&r=2 HTTP/1.1\" 200 \
             5120 \"https://example.com/\" \"Mozilla/5.0 (X11; Linux)\""
        );
        assert_eq!(
            sparse().format_line(AccessFormat::Combined),
            "192.0.2.7 - - [01/Jan/1970:00:00:00 +0000] \"- - HTTP/1.0\" 503 0 \"-\" \"-\""
        );
    }

    #[test]
    fn combined_escapes_as_nginx_does() {
        let line = hostile().format_line(AccessFormat::Combined);
        assert!(line.is_ascii(), "{line}");
        assert!(!line.contains(|c: char| c.is_control()), "{line}");
        // Exactly three quoted fields: the quotes inside values are escaped.
        assert_eq!(line.split('"').count(), 7, "{line}");
        assert!(
            line.contains(
                "\"Evil \\x22agent\\x22\\x0D\\x0A2024-01-01 00:00:00 forged\\x09\\x5Cx22 \
                 \\x00\\x7F\\xC2\\x85\\xE2\\x80\\xA8 caf\\xC3\\xA9 \\xF0\\x9F\\x98\\x80\""
            ),
            "{line}"
        );
        assert!(
            line.contains("\"GE T\\x22 /a b/caf\\xC3\\xA9\\x22\\x0A?x=1 2&y=\\xF0\\x9F\\x98\\x80\\x09?z HTTP/1.1\""),
            "{line}"
        );
        assert!(line.contains(" \"\\x22; DROP\\x0A\" "), "{line}");
    }

    // ----- JSON -----

    #[test]
    fn json_typical_and_sparse() {
        assert_eq!(
            typical().format_line(AccessFormat::Json),
            "{\"time\":\"2024-02-29T13:05:09.042Z\",\"site\":\"shop\",\"pool\":\"shop-pool\",\
             \"client\":\"192.0.2.7:51234\",\"server\":\"[2001:db8::1]:443\",\"method\":\"GET\",\
             \"uri\":\"/app/page?q=1&r=2\",\"version\":\"HTTP/1.1\",\"status\":200,\
             \"bytes_sent\":5120,\"bytes_received\":312,\"duration_ms\":12.345,\"cache\":\"hit\",\
             \"user_agent\":\"Mozilla/5.0 (X11; Linux)\",\"referer\":\"https://example.com/\",\
             \"host\":\"shop.example.com\"}"
        );
        let sparse = sparse().format_line(AccessFormat::Json);
        let fields = parse_flat_json(&sparse).unwrap();
        assert_eq!(fields["pool"], Json::Null);
        assert_eq!(fields["user_agent"], Json::Null);
        assert_eq!(fields["referer"], Json::Str(String::new()));
        assert_eq!(fields["duration_ms"], Json::Num("0.000".into()));
        assert_eq!(fields["cache"], Json::Str("none".into()));
    }

    #[test]
    fn json_escapes_and_round_trips() {
        let record = hostile();
        let line = record.format_line(AccessFormat::Json);
        assert!(!line.contains(|c: char| c.is_control()), "{line}");
        assert!(line.contains("\\r\\n") && line.contains("\\u0000\\u007f\\u0085\\u2028"));
        let fields = parse_flat_json(&line).unwrap();
        assert_eq!(fields.len(), 16);
        assert_eq!(fields["user_agent"], Json::Str(HOSTILE_UA.into()));
        assert_eq!(fields["uri"], Json::Str(record.uri.into()));
        assert_eq!(fields["method"], Json::Str(record.method.into()));
        assert_eq!(fields["site"], Json::Str(record.site.into()));
        assert_eq!(fields["pool"], Json::Str("po\"ol\r".into()));
        assert_eq!(fields["referer"], Json::Str("\"; DROP\n".into()));
        assert_eq!(fields["host"], Json::Str("h\u{0}st \u{a0}".into()));
    }

    #[test]
    fn long_values_are_cut_on_character_boundaries() {
        let long_ua = format!("a{}", "\u{e9}".repeat(5000));
        let long_uri = format!("/{}", "x".repeat(10_000));
        let record = AccessRecord {
            user_agent: Some(&long_ua),
            uri: &long_uri,
            ..typical()
        };
        // The URI is cut to 4096 bytes, the user agent to 4095 (a whole number of `é`), which
        // combined writes as 4 bytes per byte (`\xC3\xA9`).
        for (format, ua_bytes) in [
            (AccessFormat::W3c, 4095),
            (AccessFormat::Combined, 4 * 4094 + 1),
            (AccessFormat::Json, 4095),
        ] {
            let line = record.format_line(format);
            assert!(line.len() > 4096 + ua_bytes, "{format}: {}", line.len());
            assert!(
                line.len() < 4096 + ua_bytes + 500,
                "{format}: {}",
                line.len()
            );
        }
        let fields = parse_flat_json(&record.format_line(AccessFormat::Json)).unwrap();
        let Json::Str(ua) = &fields["user_agent"] else {
            panic!("user_agent")
        };
        assert_eq!(ua.len(), 4095);
        assert!(long_ua.starts_with(ua.as_str()));
    }

    #[test]
    fn formats_parse_from_their_names() {
        for format in [
            AccessFormat::W3c,
            AccessFormat::Combined,
            AccessFormat::Json,
        ] {
            assert_eq!(format.name().parse::<AccessFormat>(), Ok(format));
            assert_eq!(format.to_string(), format.name());
        }
        assert!("W3C".parse::<AccessFormat>().is_err());
    }

    // ----- the writer -----

    fn data_lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    fn header_count(text: &str) -> usize {
        text.lines().filter(|l| l.starts_with("#Fields: ")).count()
    }

    fn assert_starts_with_header(text: &str) {
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#Software: keel", "{text}");
        assert_eq!(lines[1], "#Version: 1.0");
        assert!(lines[2].starts_with("#Date: "));
        assert_eq!(lines[3], format!("#Fields: {W3C_FIELDS}"));
        assert_eq!(header_count(text), 1, "{text}");
    }

    #[test]
    fn w3c_header_once_per_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/access.log");

        let log = AccessLog::open(&path, AccessFormat::W3c, 16).unwrap();
        log.log(&typical());
        log.clone().log(&sparse());
        log.flush_and_close();
        // Reopening a file that has lines adds no header, at start or on reopen().
        let log = AccessLog::open(&path, AccessFormat::W3c, 16).unwrap();
        log.log(&typical());
        log.reopen();
        log.log(&typical());
        log.flush_and_close();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_starts_with_header(&text);
        assert_eq!(data_lines(&text).len(), 4);
        assert_eq!(
            data_lines(&text)[0],
            typical().format_line(AccessFormat::W3c)
        );

        // An empty file (logrotate's `create`) gets the header.
        let empty = dir.path().join("empty.log");
        std::fs::write(&empty, "").unwrap();
        let log = AccessLog::open(&empty, AccessFormat::W3c, 16).unwrap();
        log.flush_and_close();
        assert_starts_with_header(&std::fs::read_to_string(&empty).unwrap());

        // Other formats have no header.
        for format in [AccessFormat::Combined, AccessFormat::Json] {
            let path = dir.path().join(format!("{format}.log"));
            let log = AccessLog::open(&path, format, 16).unwrap();
            log.log(&typical());
            log.flush_and_close();
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(text, format!("{}\n", typical().format_line(format)));
        }
    }

    #[test]
    fn lines_are_flushed_when_idle_and_when_the_last_handle_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path, AccessFormat::Json, 16).unwrap();
        log.log(&typical());
        // Idle: the writer flushes without being asked.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&path).unwrap().lines().count() < 1 {
            assert!(Instant::now() < deadline, "line not flushed when idle");
            std::thread::sleep(Duration::from_millis(5));
        }
        log.log(&sparse());
        let counters = log.inner.counters.clone();
        drop(log);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !counters.finished.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "writer did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }

    /// logrotate: rename the file, then reopen(), while several threads log. The renamed and
    /// the new file hold every line exactly once, each thread's lines in order.
    #[test]
    fn rename_and_reopen_under_concurrent_logging_loses_nothing() {
        const THREADS: usize = 4;
        const AFTER_ROTATION: usize = 1000;
        const MAX_BEFORE_ROTATION: usize = 10_000;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let rotated_path = dir.path().join("access.log.1");
        // Big enough for every line: nothing may be dropped.
        let log = AccessLog::open(&path, AccessFormat::W3c, 65_536).unwrap();
        let rotated = Arc::new(AtomicBool::new(false));
        let start = Arc::new(Barrier::new(THREADS + 1));

        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (log, rotated, start) = (log.clone(), rotated.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut sent = 0;
                    let mut after = 0;
                    while after < AFTER_ROTATION {
                        if rotated.load(Ordering::Acquire) {
                            after += 1;
                        } else if sent >= MAX_BEFORE_ROTATION {
                            std::thread::yield_now();
                            continue;
                        }
                        let uri = format!("/t{t}/{sent}");
                        log.log(&AccessRecord {
                            uri: &uri,
                            ..typical()
                        });
                        sent += 1;
                    }
                    sent
                })
            })
            .collect();

        start.wait();
        let deadline = Instant::now() + Duration::from_secs(30);
        while log.written() < 2000 {
            assert!(Instant::now() < deadline);
            std::thread::yield_now();
        }
        std::fs::rename(&path, &rotated_path).unwrap();
        log.reopen();
        rotated.store(true, Ordering::Release);

        let sent: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let total: usize = sent.iter().sum();
        log.clone().flush_and_close();
        assert_eq!(log.dropped(), 0);
        assert_eq!(log.failures(), 0);
        assert_eq!(log.written(), total as u64);

        let old = std::fs::read_to_string(&rotated_path).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_starts_with_header(&old);
        assert_starts_with_header(&new);
        let old_lines = data_lines(&old);
        let new_lines = data_lines(&new);
        assert!(old_lines.len() >= 2000);
        assert!(new_lines.len() >= THREADS * AFTER_ROTATION);
        assert_eq!(old_lines.len() + new_lines.len(), total);

        // Per thread: the old file has a prefix of its lines, the new file the rest.
        let mut seen: Vec<Vec<usize>> = vec![Vec::new(); THREADS];
        for line in old_lines.iter().chain(&new_lines) {
            let stem = line.split(' ').nth(5).unwrap();
            let (t, i) = stem[2..].split_once('/').unwrap();
            seen[t.parse::<usize>().unwrap()].push(i.parse().unwrap());
        }
        for (t, ids) in seen.iter().enumerate() {
            assert_eq!(*ids, (0..sent[t]).collect::<Vec<_>>(), "thread {t}");
        }
    }

    #[test]
    fn a_failed_reopen_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let path = logs.join("access.log");
        let log = AccessLog::open(&path, AccessFormat::Json, 16).unwrap();
        log.log(&typical());
        // The directory moves away and a file takes its name: the path cannot be opened.
        let moved = dir.path().join("moved");
        std::fs::rename(&logs, &moved).unwrap();
        std::fs::write(&logs, "").unwrap();
        log.reopen();
        log.log(&sparse());
        log.clone().flush_and_close();
        assert_eq!((log.written(), log.dropped(), log.failures()), (2, 0, 0));
        let text = std::fs::read_to_string(moved.join("access.log")).unwrap();
        assert_eq!(text.lines().count(), 2);
    }

    /// A writer stuck on a full pipe (a FIFO nobody reads): log() keeps returning at once,
    /// dropping and counting the lines that do not fit; nothing else is lost.
    #[test]
    fn a_full_buffer_drops_and_counts() {
        const LINES: u64 = 1000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());

        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut fifo = File::open(path).unwrap();
                go_rx.recv().unwrap();
                let mut text = String::new();
                io::Read::read_to_string(&mut fifo, &mut text).unwrap();
                text
            })
        };
        let log = AccessLog::open(&path, AccessFormat::Combined, 4).unwrap();
        // About 4 KiB a line: the pipe (64 KiB) and the writer's buffer fill after a few dozen.
        let ua = "u".repeat(4000);
        let record = AccessRecord {
            user_agent: Some(&ua),
            ..typical()
        };
        let started = Instant::now();
        for _ in 0..LINES {
            log.log(&record);
        }
        assert!(started.elapsed() < Duration::from_secs(5), "log() blocked");
        assert!(log.dropped() > 0, "nothing dropped");
        assert!(log.written() + log.dropped() <= LINES);

        go_tx.send(()).unwrap();
        log.clone().flush_and_close();
        let text = reader.join().unwrap();
        assert_eq!(text.lines().count() as u64, log.written());
        assert_eq!(log.written() + log.dropped(), LINES);
        assert_eq!(log.failures(), 0);
        assert!(
            text.lines()
                .all(|l| l == record.format_line(AccessFormat::Combined))
        );

        // After close, lines are dropped and counted.
        let dropped = log.dropped();
        log.log(&record);
        assert_eq!(log.dropped(), dropped + 1);
    }

    #[test]
    fn the_byte_budget_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let line_len = typical().format_line(AccessFormat::Json).len() + 1;
        // Room for one line only, and the writer is not stuck: lines pass one at a time.
        let log = AccessLog::open_with(&path, AccessFormat::Json, 16, line_len).unwrap();
        for _ in 0..3 {
            log.log(&typical());
            let deadline = Instant::now() + Duration::from_secs(10);
            while log.inner.counters.queued_bytes.load(Ordering::Relaxed) != 0 {
                assert!(Instant::now() < deadline);
                std::thread::yield_now();
            }
        }
        // A line longer than the whole budget never goes in.
        let ua = "u".repeat(line_len);
        log.log(&AccessRecord {
            user_agent: Some(&ua),
            ..typical()
        });
        log.clone().flush_and_close();
        assert_eq!((log.written(), log.dropped()), (3, 1));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn handle_is_shareable() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<AccessLog>();
        let dir = tempfile::tempdir().unwrap();
        let log = AccessLog::open(&dir.path().join("a.log"), AccessFormat::Json, 1).unwrap();
        assert!(format!("{log:?}").contains("a.log"));
        assert_eq!(log.format(), AccessFormat::Json);
        log.flush_and_close();
    }

    // ----- a flat JSON object parser, for the tests -----

    #[derive(Debug, PartialEq)]
    enum Json {
        Str(String),
        Num(String),
        Null,
    }

    /// Parses `{"k":v,...}` where each v is a string, a number or null; strict enough to catch
    /// a broken escape, a stray quote or trailing garbage.
    fn parse_flat_json(line: &str) -> Result<BTreeMap<String, Json>, String> {
        let mut chars = line.chars().peekable();
        let mut fields = BTreeMap::new();
        let expect =
            |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, c: char| match chars.next() {
                Some(got) if got == c => Ok(()),
                got => Err(format!("expected {c:?}, got {got:?}")),
            };
        fn string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, String> {
            let mut s = String::new();
            loop {
                match chars.next().ok_or("unterminated string")? {
                    '"' => return Ok(s),
                    '\\' => match chars.next().ok_or("bad escape")? {
                        '"' => s.push('"'),
                        '\\' => s.push('\\'),
                        '/' => s.push('/'),
                        'n' => s.push('\n'),
                        'r' => s.push('\r'),
                        't' => s.push('\t'),
                        'b' => s.push('\u{8}'),
                        'f' => s.push('\u{c}'),
                        'u' => {
                            let hex: String = chars.by_ref().take(4).collect();
                            let code = u32::from_str_radix(&hex, 16).map_err(|e| e.to_string())?;
                            s.push(char::from_u32(code).ok_or("surrogate")?);
                        }
                        c => return Err(format!("bad escape {c:?}")),
                    },
                    c if u32::from(c) < 0x20 => return Err(format!("raw control {c:?}")),
                    c => s.push(c),
                }
            }
        }
        expect(&mut chars, '{')?;
        loop {
            expect(&mut chars, '"')?;
            let key = string(&mut chars)?;
            expect(&mut chars, ':')?;
            let value = match chars.peek() {
                Some('"') => {
                    chars.next();
                    Json::Str(string(&mut chars)?)
                }
                Some('n') => {
                    let word: String = chars.by_ref().take(4).collect();
                    if word != "null" {
                        return Err(word);
                    }
                    Json::Null
                }
                _ => {
                    let mut num = String::new();
                    while let Some(&c) = chars.peek().filter(|c| c.is_ascii_digit() || **c == '.') {
                        num.push(c);
                        chars.next();
                    }
                    if num.is_empty() {
                        return Err(format!("no value for {key}"));
                    }
                    Json::Num(num)
                }
            };
            if fields.insert(key.clone(), value).is_some() {
                return Err(format!("duplicate {key}"));
            }
            match chars.next() {
                Some(',') => continue,
                Some('}') => break,
                c => return Err(format!("expected , or }}, got {c:?}")),
            }
        }
        match chars.next() {
            None => Ok(fields),
            Some(c) => Err(format!("trailing {c:?}")),
        }
    }

    proptest! {
        #[test]
        fn dates_match_humantime(millis in 0u64..253_402_300_800_000) {
            let record = AccessRecord {
                time: UNIX_EPOCH + Duration::from_millis(millis),
                ..typical()
            };
            let fields = parse_flat_json(&record.format_line(AccessFormat::Json)).unwrap();
            let theirs = humantime::format_rfc3339_millis(record.time).to_string();
            prop_assert_eq!(&fields["time"], &Json::Str(theirs.clone()));
            let w3c = record.format_line(AccessFormat::W3c);
            prop_assert_eq!(&w3c[..19], theirs[..19].replacen('T', " ", 1));
        }

        #[test]
        fn no_value_breaks_a_line(
            site in "\\PC{0,20}|.{0,20}",
            method in ".{0,10}",
            uri in "(\\PC|\\PZ|[\\x00-\\x1f\"\\\\?])*",
            user_agent in proptest::option::of(any::<String>()),
            referer in proptest::option::of("[\\s\"\\\\a-z\\x00-\\x1f\\u{80}-\\u{10FFFF}]*"),
            host in proptest::option::of(".*"),
            pool in proptest::option::of(any::<String>()),
        ) {
            let record = AccessRecord {
                site: &site,
                method: &method,
                uri: &uri,
                user_agent: user_agent.as_deref(),
                referer: referer.as_deref(),
                host: host.as_deref(),
                pool: pool.as_deref(),
                ..typical()
            };
            let w3c = record.format_line(AccessFormat::W3c);
            prop_assert_eq!(w3c.split(' ').count(), 18, "{}", w3c);
            prop_assert!(!w3c.contains(|c: char| c.is_control()));

            let combined = record.format_line(AccessFormat::Combined);
            prop_assert!(combined.is_ascii() && !combined.contains(|c: char| c.is_control()));
            prop_assert_eq!(combined.split('"').count(), 7, "{}", combined);

            let json = record.format_line(AccessFormat::Json);
            prop_assert!(!json.contains(|c: char| c.is_control()));
            let fields = parse_flat_json(&json).map_err(TestCaseError::fail)?;
            prop_assert_eq!(fields.len(), 16);
            prop_assert_eq!(&fields["uri"], &Json::Str(truncate(&uri, MAX_URI_BYTES).into()));
            let ua = user_agent.as_deref().map(|v| Json::Str(truncate(v, MAX_TEXT_BYTES).into()));
            prop_assert_eq!(&fields["user_agent"], &ua.unwrap_or(Json::Null));
        }
    }
}

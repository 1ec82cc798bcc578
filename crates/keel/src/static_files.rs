//! Static files served by the daemon itself (issue 4 §8): an app entry
//! `{ path = "/static", root = "public" }` maps a URL prefix to a directory.
//!
//! One request = one trip to the blocking pool (canonicalise → confine → stat → open →
//! conditionals → small body read), then, for large bodies, one trip per chunk
//! (`FileStream`, `CHUNK_SIZE` bytes, one chunk read ahead). What was opened is kept a few
//! seconds per request path ([`OpenFile`]), so a repeated request whose answer needs no
//! read (a large file, a head, a 304) costs one `lstat` on the runtime thread instead of
//! the trip. Independent of the rest of keel:
//! the caller hands in method, raw path and headers and gets a status, headers and a body.
//! See docs/static-files.md.

use std::borrow::Cow;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

use crate::compress::{AcceptEncoding, Encoding, Representation};
use crate::conditional::{self, Precondition, Range};

/// Bytes read per chunk when streaming a large file: the memory one response holds (twice,
/// with the chunk read ahead).
pub const CHUNK_SIZE: usize = 128 * 1024;
/// Bodies up to this size are read whole and returned as `StaticBody::Full`, so the response
/// cache can store them.
pub const SMALL_FILE_MAX: u64 = 256 * 1024;
/// A directory listing shows at most this many entries.
pub const MAX_LISTING: usize = 10_000;
/// Files a root keeps open for the next requests ([`OpenFile`]): each holds up to three
/// descriptors (the file and two precompressed siblings).
const OPEN_FILES_MAX: u64 = 256;
/// How long an opened file is kept. The file itself is checked before every use; a
/// precompressed sibling added or changed alone is seen once its file's entry expires.
const OPEN_FILE_VALID: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Path canonicalisation
// ---------------------------------------------------------------------------------------

/// Why a request path was refused (all answered 400 Bad Request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with '/'")]
    NotAbsolute,
    #[error("malformed percent-encoding")]
    BadPercent,
    #[error("encoded '/' (%2F) in path")]
    EncodedSlash,
    #[error("backslash in path")]
    Backslash,
    #[error("NUL in path")]
    Nul,
    #[error("control character in path")]
    ControlChar,
    #[error("path is not UTF-8 once decoded")]
    InvalidUtf8,
    #[error("'..' climbs above the root")]
    AboveRoot,
}

/// Canonicalise a raw request path (as it came on the request line; a `?query` or
/// `#fragment` is cut off first): percent-decode each segment, refuse what must never reach a
/// file system or a router (encoded `/`, `\` raw or encoded, NUL, control characters, invalid
/// UTF-8, bad `%` escapes), merge repeated slashes, and remove `.`/`..` segments (RFC 3986
/// §5.2.4); a `..` that would climb above `/` is an error (nginx answers 400). The result is
/// decoded, starts with `/`, and keeps a trailing slash (also after a final `.` or `..`).
/// Most request paths are canonical as they are: those are borrowed, not copied.
pub fn canonical_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if let Some(shape) = canonical_shape(raw) {
        return Ok(Cow::Borrowed(&raw[..shape.len]));
    }
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    decode_and_merge(&raw[..end]).map(Cow::Owned)
}

/// A request path that is its own canonical form, as [`canonical_shape`] measured it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CanonicalShape {
    /// Bytes of the path (before its `?query` or `#fragment`).
    pub len: usize,
    /// Its non-empty segments.
    pub segments: usize,
    /// Characters (not bytes) in its longest segment.
    pub longest_segment: usize,
}

/// Whether `raw`'s path (up to a `?` or `#`) is its own canonical form: nothing to decode,
/// refuse or merge, measured in the same pass. Most request paths are; they are borrowed
/// instead of decoded segment by segment. `None`: [`canonical_path`]'s full decoding decides.
pub fn canonical_shape(raw: &str) -> Option<CanonicalShape> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return None;
    }
    let mut segments = 0;
    let mut longest_segment = 0;
    // The current segment: where it starts, its characters, whether it is all dots.
    let mut start = 1;
    let mut chars = 0;
    let mut dots = true;
    let mut len = bytes.len();
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        match b {
            b'?' | b'#' => {
                len = i;
                break;
            }
            b'/' => {
                // An empty segment (`//`) or a `.`/`..` one is merged away: not canonical.
                if dots && i - start <= 2 {
                    return None;
                }
                segments += 1;
                longest_segment = longest_segment.max(chars);
                start = i + 1;
                chars = 0;
                dots = true;
            }
            b'%' | b'\\' | 0..=0x1f | 0x7f => return None,
            _ => {
                dots &= b == b'.';
                // A byte that does not start a UTF-8 character continues one.
                chars += usize::from((b as i8) >= -0x40);
            }
        }
    }
    // The last segment may be empty (a trailing slash), not `.` or `..`.
    if len > start {
        if dots && len - start <= 2 {
            return None;
        }
        segments += 1;
        longest_segment = longest_segment.max(chars);
    }
    Some(CanonicalShape {
        len,
        segments,
        longest_segment,
    })
}

fn decode_and_merge(raw: &str) -> Result<String, PathError> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    let segs: Vec<&str> = rest.split('/').collect();
    let mut out: Vec<String> = Vec::with_capacity(segs.len());
    let mut trailing = false;
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let d = decode_segment(seg)?;
        match d.as_str() {
            "" | "." => trailing = last,
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing = last;
            }
            _ => {
                out.push(d);
                trailing = false;
            }
        }
    }
    let mut s = String::with_capacity(raw.len());
    s.push('/');
    s.push_str(&out.join("/"));
    if trailing && !out.is_empty() {
        s.push('/');
    }
    Ok(s)
}

fn decode_segment(seg: &str) -> Result<String, PathError> {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let (byte, encoded) = if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => {
                    i += 3;
                    ((h * 16 + l) as u8, true)
                }
                _ => return Err(PathError::BadPercent),
            }
        } else {
            i += 1;
            (b[i - 1], false)
        };
        match byte {
            b'/' if encoded => return Err(PathError::EncodedSlash),
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            1..=0x1f | 0x7f => return Err(PathError::ControlChar),
            _ => out.push(byte),
        }
    }
    String::from_utf8(out).map_err(|_| PathError::InvalidUtf8)
}

/// Percent-encode a decoded path (or one name) for a `Location` or an `href`: everything but
/// RFC 3986 `pchar` and `/`.
fn encode_path(p: &[u8]) -> String {
    let mut s = String::with_capacity(p.len());
    for &c in p {
        if c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&c) {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(ch),
        }
    }
    o
}

// ---------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------

/// What `StaticRoot::serve` answers. `into_response` makes an `http::Response` of it.
#[derive(Debug)]
pub struct StaticResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: StaticBody,
    /// The file this answer is about, also when it is a 304, 206, 412 or 416 that does not
    /// carry all of its fields: for whoever compresses on the fly. `None` when it is about
    /// no file (an error, a redirect, a listing).
    pub file: Option<Representation>,
}

impl StaticResponse {
    pub fn into_response(self) -> http::Response<StaticBody> {
        let mut r = http::Response::new(self.body);
        *r.status_mut() = self.status;
        *r.headers_mut() = self.headers;
        r
    }

    fn empty(status: StatusCode) -> Self {
        StaticResponse {
            status,
            headers: HeaderMap::new(),
            body: StaticBody::Empty,
            file: None,
        }
    }

    /// A short text/plain error body (also for HEAD: the caller's server drops it).
    fn error(status: StatusCode) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let text = format!(
            "{} {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        StaticResponse {
            status,
            headers,
            body: StaticBody::Full(Bytes::from(text)),
            file: None,
        }
    }
}

/// The body of a static response. `Full` bodies are complete (≤ `SMALL_FILE_MAX`, listings,
/// errors) and may be cached; `File` streams a large file in `CHUNK_SIZE` chunks.
#[derive(Debug)]
pub enum StaticBody {
    Empty,
    Full(Bytes),
    File(FileStream),
}

impl Body for StaticBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        match this {
            StaticBody::Empty => Poll::Ready(None),
            StaticBody::Full(b) => {
                let b = std::mem::take(b);
                *this = StaticBody::Empty;
                Poll::Ready((!b.is_empty()).then(|| Ok(Frame::data(b))))
            }
            StaticBody::File(f) => Pin::new(f).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            StaticBody::Empty => true,
            StaticBody::Full(b) => b.is_empty(),
            StaticBody::File(f) => f.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            StaticBody::Empty => SizeHint::with_exact(0),
            StaticBody::Full(b) => SizeHint::with_exact(b.len() as u64),
            StaticBody::File(f) => f.size_hint(),
        }
    }
}

/// A byte range of an open file, read with `pread` on the blocking pool one chunk at a time;
/// the next chunk is read while the previous one is being written. Memory: ≤ 2 chunks.
#[derive(Debug)]
pub struct FileStream {
    file: Arc<File>,
    /// Where the next read starts, and how many bytes are still to be read.
    offset: u64,
    remaining: u64,
    chunk: usize,
    pending: Option<(JoinHandle<io::Result<Bytes>>, usize)>,
}

impl FileStream {
    /// Stream `len` bytes of `file` from `offset`, `chunk` bytes at a time.
    pub fn new(file: Arc<File>, offset: u64, len: u64, chunk: usize) -> Self {
        FileStream {
            file,
            offset,
            remaining: len,
            chunk: chunk.max(1),
            pending: None,
        }
    }

    /// The file and the byte range still to send, for a caller that sends it itself
    /// (`sendfile`); only before the first chunk is read.
    pub fn into_range(self) -> (Arc<File>, u64, u64) {
        debug_assert!(self.pending.is_none());
        (self.file, self.offset, self.remaining)
    }

    fn start_read(&mut self) {
        if self.pending.is_some() || self.remaining == 0 {
            return;
        }
        let n = (self.chunk as u64).min(self.remaining) as usize;
        let (file, offset) = (self.file.clone(), self.offset);
        // The buffer is allocated here, on the serving thread, not in the blocking pool:
        // memory a pool thread allocated stays with that thread's heap after the chunk is
        // freed elsewhere, so slow clients spread over many pool threads held several MiB
        // each (20 slow downloads: +87 MiB RSS).
        let buf = vec![0u8; n];
        let task = tokio::task::spawn_blocking(move || read_at(&file, offset, buf));
        self.offset += n as u64;
        self.remaining -= n as u64;
        self.pending = Some((task, n));
    }
}

/// Reads `buf.len()` bytes of `file` from `offset` into `buf` (fewer at the file's end).
fn read_at(file: &File, offset: u64, mut buf: Vec<u8>) -> io::Result<Bytes> {
    let n = buf.len();
    let mut got = 0;
    while got < n {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(Bytes::from(buf))
}

impl Body for FileStream {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        this.start_read();
        let Some((task, want)) = this.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let want = *want;
        let res = ready!(Pin::new(task).poll(cx));
        this.pending = None;
        let fail = |this: &mut FileStream, e: io::Error| {
            this.remaining = 0;
            Poll::Ready(Some(Err(e)))
        };
        match res {
            Err(join) => fail(this, io::Error::other(join)),
            Ok(Err(e)) => fail(this, e),
            Ok(Ok(data)) if data.len() < want => fail(
                this,
                io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being sent"),
            ),
            Ok(Ok(data)) => {
                this.start_read();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining + self.pending.as_ref().map_or(0, |p| p.1 as u64))
    }
}

use std::future::Future;

// ---------------------------------------------------------------------------------------
// The root
// ---------------------------------------------------------------------------------------

/// A URL prefix served from a directory.
#[derive(Debug, Clone)]
pub struct StaticRoot {
    inner: Arc<Inner>,
}

struct Inner {
    /// Canonical (absolute, symlink-free) directory.
    root: PathBuf,
    /// Canonical URL prefix without trailing slash ("" for the site root).
    prefix: String,
    list: bool,
    follow_symlinks: bool,
    /// Files opened for recent requests, by request path under the prefix.
    open_files: moka::sync::Cache<Box<str>, Arc<OpenFile>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("root", &self.root)
            .field("prefix", &self.prefix)
            .field("list", &self.list)
            .field("follow_symlinks", &self.follow_symlinks)
            .field("open_files", &self.open_files.entry_count())
            .finish()
    }
}

/// The request headers that matter here, owned so they can go to the blocking pool.
#[derive(Debug, Default)]
struct Conditions {
    accept_encoding: AcceptEncoding,
    /// Every line of the request's [`conditional::FIELDS`] and `If-Range` (none allocated
    /// for a request without them).
    fields: HeaderMap,
}

impl Conditions {
    fn from(h: &HeaderMap) -> Self {
        let mut fields = HeaderMap::new();
        for name in conditional::FIELDS.iter().chain([&header::IF_RANGE]) {
            for value in h.get_all(name) {
                fields.append(name.clone(), value.clone());
            }
        }
        Conditions {
            // A request with `Range` takes no precompressed sibling.
            accept_encoding: AcceptEncoding::of_request(h),
            fields,
        }
    }
}

/// Why a path resolved to no file.
enum Deny {
    NotFound,
    Forbidden,
    Error,
}

fn deny_of(e: &io::Error) -> Deny {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG) => Deny::NotFound,
        Some(libc::EACCES | libc::EPERM | libc::ELOOP) => Deny::Forbidden,
        _ if e.kind() == io::ErrorKind::NotFound => Deny::NotFound,
        _ => Deny::Error,
    }
}

impl From<Deny> for StaticResponse {
    fn from(d: Deny) -> Self {
        StaticResponse::error(match d {
            Deny::NotFound => StatusCode::NOT_FOUND,
            Deny::Forbidden => StatusCode::FORBIDDEN,
            Deny::Error => StatusCode::INTERNAL_SERVER_ERROR,
        })
    }
}

impl StaticRoot {
    /// `prefix` is the app's URL path (`"/static"`, `"/"`); `root` must be an existing
    /// directory (it is canonicalised now, so a later symlink swap of `root` itself does not
    /// move it). `list`: HTML listings for directories without `index.html`.
    /// `follow_symlinks`: allow symlinks whose target is outside `root`.
    pub fn new(prefix: &str, root: &Path, list: bool, follow_symlinks: bool) -> io::Result<Self> {
        let root = fs::canonicalize(root)?;
        if !fs::metadata(&root)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        let prefix =
            canonical_path(prefix).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let prefix = prefix.trim_end_matches('/').to_owned();
        Ok(StaticRoot {
            inner: Arc::new(Inner {
                root,
                prefix,
                list,
                follow_symlinks,
                open_files: moka::sync::Cache::builder()
                    .max_capacity(OPEN_FILES_MAX)
                    .time_to_live(OPEN_FILE_VALID)
                    .build(),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The URL prefix, canonical, without trailing slash (`""` for `/`).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Answer one request. `path` is the raw request target's path, not decoded; it may carry
    /// the `?query` (kept only for the `301` to the slash form). Only GET and HEAD are served
    /// (others: 405 with `Allow`). Never panics; file system errors become 403/404/500.
    pub async fn serve(&self, method: &Method, path: &str, headers: &HeaderMap) -> StaticResponse {
        let head = if method == Method::HEAD {
            true
        } else if method == Method::GET {
            false
        } else {
            let mut r = StaticResponse::error(StatusCode::METHOD_NOT_ALLOWED);
            r.headers
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        };
        let cond = Conditions::from(headers);
        if let Some(answer) = self.serve_opened(head, path, &cond) {
            return answer;
        }
        let this = self.clone();
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || this.serve_blocking(head, &path, &cond))
            .await
            .unwrap_or_else(|_| StaticResponse::error(StatusCode::INTERNAL_SERVER_ERROR))
    }

    /// The rest of the request path after the prefix (`""` or starting with `/`), if the
    /// path is under the prefix (whole segments, ASCII case-insensitive like routing).
    fn strip_prefix<'a>(&self, canon: &'a str) -> Option<&'a str> {
        let p = &self.inner.prefix;
        let head = canon.get(..p.len())?;
        let rest = &canon[p.len()..];
        (head.eq_ignore_ascii_case(p) && (rest.is_empty() || rest.starts_with('/'))).then_some(rest)
    }

    fn serve_blocking(&self, head: bool, raw: &str, cond: &Conditions) -> StaticResponse {
        let (raw_path, query) = match raw.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (raw, None),
        };
        let canon = match canonical_path(raw_path) {
            Ok(c) => c,
            Err(_) => return StaticResponse::error(StatusCode::BAD_REQUEST),
        };
        let Some(rest) = self.strip_prefix(&canon) else {
            return StaticResponse::error(StatusCode::NOT_FOUND);
        };
        let dir_form = rest.ends_with('/');
        let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let path = match self.confine(&segs) {
            Ok(p) => p,
            Err(d) => return d.into(),
        };
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => return deny_of(&e).into(),
        };
        // `file/` names a directory that is not there (nginx: ENOTDIR, 404), not the file.
        if dir_form && !meta.is_dir() {
            return StaticResponse::error(StatusCode::NOT_FOUND);
        }
        if meta.is_dir() {
            if !dir_form {
                let mut loc = encode_path(canon.as_bytes());
                loc.push('/');
                if let Some(q) = query {
                    loc.push('?');
                    loc.push_str(q);
                }
                let mut r = StaticResponse::error(StatusCode::MOVED_PERMANENTLY);
                if let Ok(v) = HeaderValue::from_str(&loc) {
                    r.headers.insert(header::LOCATION, v);
                }
                return r;
            }
            match self.confine_from(path.clone(), &["index.html"]) {
                Ok(index) if fs::metadata(&index).is_ok_and(|m| m.is_file()) => {
                    return self.serve_file(head, &index, cond, None);
                }
                Ok(_) | Err(Deny::NotFound) => {}
                Err(d) => return d.into(),
            }
            if self.inner.list {
                return listing(head, &path, &canon, segs.is_empty());
            }
            return StaticResponse::error(StatusCode::FORBIDDEN);
        }
        self.serve_file(head, &path, cond, Some(rest))
    }

    /// Walk `segs` from the root, checking every component: a symlink is resolved
    /// (`canonicalize`) and, unless `follow_symlinks`, must stay under the root (else 403).
    /// The result has no symlink left in it.
    fn confine(&self, segs: &[&str]) -> Result<PathBuf, Deny> {
        self.confine_from(self.inner.root.clone(), segs)
    }

    fn confine_from(&self, mut cur: PathBuf, segs: &[&str]) -> Result<PathBuf, Deny> {
        for seg in segs {
            cur.push(seg);
            let lm = fs::symlink_metadata(&cur).map_err(|e| deny_of(&e))?;
            if lm.file_type().is_symlink() {
                let real = fs::canonicalize(&cur).map_err(|e| deny_of(&e))?;
                if !self.inner.follow_symlinks && !real.starts_with(&self.inner.root) {
                    return Err(Deny::Forbidden);
                }
                cur = real;
            }
        }
        Ok(cur)
    }

    /// Answers with the regular file at `path` (found by the path walk), opening it and its
    /// precompressed siblings; `key` (the request path under the prefix) keeps what was
    /// opened in the open-file cache for the next requests.
    fn serve_file(
        &self,
        head: bool,
        path: &Path,
        cond: &Conditions,
        key: Option<&str>,
    ) -> StaticResponse {
        let open = match self.open(path) {
            Ok(open) => Arc::new(open),
            Err(d) => return d.into(),
        };
        if let Some(key) = key {
            self.inner.open_files.insert(key.into(), open.clone());
        }
        self.respond(head, &open, cond, true)
            .unwrap_or_else(|| StaticResponse::error(StatusCode::INTERNAL_SERVER_ERROR))
    }

    /// Opens the regular file at `path` and its fresh precompressed siblings.
    fn open(&self, path: &Path) -> Result<OpenFile, Deny> {
        let (file, meta) = open_regular(path)?;
        let (mut varies, mut siblings) = (false, Vec::new());
        for enc in [Encoding::Br, Encoding::Gzip] {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(".");
            name.push(enc.extension());
            let Some(parent) = path.parent() else { break };
            let sib = match self.confine_from(parent.to_path_buf(), &[&name.to_string_lossy()]) {
                Ok(p) if name.to_str().is_some() => p,
                _ => continue,
            };
            let fresh = fs::metadata(&sib)
                .is_ok_and(|m| m.is_file() && m.modified().ok() >= meta.modified().ok());
            if !fresh {
                continue;
            }
            // Present and fresh: the response varies, even if this one cannot be opened.
            varies = true;
            if let Ok((f, m)) = open_regular(&sib) {
                siblings.push(Variant::new(f, &m, Some(enc)));
            }
        }
        Ok(OpenFile {
            stamp: Stamp::of(&meta),
            content_type: HeaderValue::from_str(&content_type(path)).ok(),
            path: path.to_owned(),
            main: Variant::new(file, &meta, None),
            varies,
            siblings,
        })
    }

    /// From the open-file cache, without the blocking pool: the file opened for this request
    /// path a moment ago, if one `lstat` finds it unchanged and the answer needs no read (a
    /// streamed body, no body, or a head only). `None`: the blocking path answers.
    fn serve_opened(&self, head: bool, raw: &str, cond: &Conditions) -> Option<StaticResponse> {
        let canon = canonical_path(raw).ok()?;
        let rest = self.strip_prefix(&canon)?;
        let open = self.inner.open_files.get(rest)?;
        // A metadata call on a path resolved a moment ago (its directory entries cached by
        // the kernel), as nginx's open_file_cache makes inline.
        if !fs::symlink_metadata(&open.path).is_ok_and(|m| Stamp::of(&m) == open.stamp) {
            self.inner.open_files.invalidate(rest);
            return None;
        }
        self.respond(head, &open, cond, false)
    }

    /// The answer from an opened file: the variant the client takes, then
    /// [`StaticRoot::answer`], naming the representation it is about. `None` when the body
    /// would have to be read and `may_read` is false.
    fn respond(
        &self,
        head: bool,
        open: &OpenFile,
        cond: &Conditions,
        may_read: bool,
    ) -> Option<StaticResponse> {
        // The precompressed sibling the client ranks best, if it accepts one.
        let ranked = cond.accept_encoding.ranked();
        let rank = |v: &Variant| v.encoding.map_or(usize::MAX, |e| rank_of(&ranked, e));
        let variant = open
            .siblings
            .iter()
            .filter(|v| rank(v) < usize::MAX)
            .min_by_key(|v| rank(v))
            .unwrap_or(&open.main);
        let mut answer = Self::answer(head, open, variant, cond, may_read)?;
        answer.file = Some(Representation {
            content_type: open.content_type.clone(),
            len: Some(variant.len),
            encoded: variant.encoding.is_some(),
            no_transform: false,
            compressed_before: false,
        });
        Some(answer)
    }

    /// The answer from `variant` of an opened file: validators, conditionals, range, body.
    fn answer(
        head: bool,
        open: &OpenFile,
        variant: &Variant,
        cond: &Conditions,
        may_read: bool,
    ) -> Option<StaticResponse> {
        let (len, mtime, encoding) = (variant.len, variant.mtime, variant.encoding);
        let etag = &variant.etag;

        let mut headers = HeaderMap::new();
        let hv = |s: &str| HeaderValue::from_str(s).ok();
        if let Some(v) = hv(etag) {
            headers.insert(header::ETAG, v);
        }
        if let Some(v) = hv(&variant.last_modified) {
            headers.insert(header::LAST_MODIFIED, v);
        }
        if open.varies {
            headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        }

        // RFC 9110 §13.2.2: the preconditions, then the range.
        let ours = conditional::Validators {
            etag: Some(etag.as_bytes()),
            last_modified: Some(conditional::seconds(mtime)),
            // The answer is made now: the `Date` it gets is this second or a later one.
            date: crate::os::clock::coarse_unix_secs(),
        };
        match conditional::preconditions(&cond.fields, ours) {
            Precondition::Holds => {}
            Precondition::Failed => {
                return Some(with_headers(StatusCode::PRECONDITION_FAILED, headers));
            }
            Precondition::NotModified => {
                return Some(with_headers(StatusCode::NOT_MODIFIED, headers));
            }
        }

        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Some(v) = &open.content_type {
            headers.insert(header::CONTENT_TYPE, v.clone());
        }
        if let Some(enc) = encoding {
            headers.insert(header::CONTENT_ENCODING, enc.header_value());
        }

        let range = if head {
            Range::Whole
        } else {
            conditional::range(&cond.fields, ours, len)
        };
        let (status, start, n) = match range {
            Range::Whole => (StatusCode::OK, 0, len),
            Range::Unsatisfiable => {
                headers.remove(header::CONTENT_TYPE);
                headers.remove(header::CONTENT_ENCODING);
                if let Some(v) = hv(&format!("bytes */{len}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
                return Some(with_headers(StatusCode::RANGE_NOT_SATISFIABLE, headers));
            }
            Range::Part(a, b) => {
                if let Some(v) = hv(&format!("bytes {a}-{b}/{len}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
                (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
            }
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        let body = if head || n == 0 {
            StaticBody::Empty
        } else if n <= SMALL_FILE_MAX {
            if !may_read {
                return None;
            }
            match read_at(&variant.file, start, vec![0u8; n as usize]) {
                Ok(b) if b.len() as u64 == n => StaticBody::Full(b),
                _ => return Some(StaticResponse::error(StatusCode::INTERNAL_SERVER_ERROR)),
            }
        } else {
            StaticBody::File(FileStream::new(variant.file.clone(), start, n, CHUNK_SIZE))
        };
        Some(StaticResponse {
            status,
            headers,
            body,
            file: None,
        })
    }
}

/// A regular file found for a request path and opened, with its fresh precompressed
/// siblings: everything an answer needs besides the request's own fields. Kept a few seconds
/// in its root's open-file cache ([`OPEN_FILE_VALID`]) and checked with one `lstat` before
/// each use (nginx's `open_file_cache`, always on).
struct OpenFile {
    /// Where the path walk found it (symlinks resolved and confined).
    path: PathBuf,
    /// What `lstat` said of it when it was opened.
    stamp: Stamp,
    /// `None` in the unlikely case that the type guessed is no field value.
    content_type: Option<HeaderValue>,
    main: Variant,
    /// A precompressed sibling is present and not older than the file: the response varies
    /// (also when that sibling could not be opened).
    varies: bool,
    /// Those siblings that could be opened, `br` before `gzip`.
    siblings: Vec<Variant>,
}

/// One representation of a file: the file itself or a precompressed sibling.
struct Variant {
    file: Arc<File>,
    len: u64,
    mtime: SystemTime,
    encoding: Option<Encoding>,
    etag: String,
    last_modified: String,
}

impl Variant {
    fn new(file: File, meta: &Metadata, encoding: Option<Encoding>) -> Variant {
        let len = meta.len();
        let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
        let mtime_ns = mtime
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos();
        let etag = format!(
            "\"{len:x}-{mtime_ns:x}{}\"",
            encoding.map_or("", |e| match e {
                Encoding::Br => "-br",
                Encoding::Gzip => "-gz",
            })
        );
        Variant {
            file: Arc::new(file),
            len,
            mtime,
            encoding,
            etag,
            last_modified: httpdate::fmt_http_date(mtime),
        }
    }
}

/// A file's identity and version as far as an answer goes: a file replaced (new inode),
/// written (size, times) or turned into a symlink no longer matches.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    symlink: bool,
}

impl Stamp {
    fn of(m: &Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            symlink: m.file_type().is_symlink(),
        }
    }
}

fn rank_of(ranked: &[Encoding], e: Encoding) -> usize {
    ranked.iter().position(|&x| x == e).unwrap_or(usize::MAX)
}

fn with_headers(status: StatusCode, headers: HeaderMap) -> StaticResponse {
    let mut r = StaticResponse::empty(status);
    r.headers = headers;
    r
}

/// Open for reading without blocking on a FIFO (`O_NONBLOCK` is a no-op on regular files)
/// and check what was opened, not what was stat'ed before.
fn open_regular(path: &Path) -> Result<(File, Metadata), Deny> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| deny_of(&e))?;
    let meta = file.metadata().map_err(|e| deny_of(&e))?;
    if meta.is_dir() {
        return Err(Deny::Forbidden);
    }
    if !meta.is_file() {
        return Err(Deny::NotFound);
    }
    Ok((file, meta))
}

/// `Content-Type` from the extension; text types and JavaScript are labelled UTF-8 (as Go's
/// and Caddy's tables do); unknown → `application/octet-stream`. JavaScript is
/// `text/javascript` whatever its extension (`.js`, `.mjs`), as RFC 9239 names it.
pub fn content_type(path: &Path) -> String {
    let Some(m) = mime_guess::from_path(path).first() else {
        return "application/octet-stream".to_owned();
    };
    let s = match m.essence_str() {
        "application/javascript" | "application/x-javascript" => "text/javascript",
        s => s,
    };
    if (m.type_() == mime_guess::mime::TEXT || s == "text/javascript")
        && m.get_param("charset").is_none()
    {
        format!("{s}; charset=utf-8")
    } else {
        s.to_owned()
    }
}

/// A simple HTML listing: names escaped, hrefs percent-encoded, directories with a trailing
/// slash, dot files hidden (as nginx's autoindex), at most `MAX_LISTING` entries.
fn listing(head: bool, dir: &Path, canon: &str, at_prefix_root: bool) -> StaticResponse {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => return deny_of(&e).into(),
    };
    let mut entries: Vec<(Vec<u8>, bool)> = Vec::new();
    let mut truncated = false;
    for e in rd.flatten() {
        let name = e.file_name();
        if name.as_bytes().starts_with(b".") {
            continue;
        }
        if entries.len() == MAX_LISTING {
            truncated = true;
            break;
        }
        let is_dir = fs::metadata(e.path()).is_ok_and(|m| m.is_dir());
        entries.push((name.as_bytes().to_vec(), is_dir));
    }
    entries.sort();
    let title = html_escape(canon);
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n<body><h1>Index of {title}</h1><hr><pre>\n"
    );
    if !at_prefix_root {
        html.push_str("<a href=\"../\">../</a>\n");
    }
    for (name, is_dir) in &entries {
        let slash = if *is_dir { "/" } else { "" };
        // "./" so a name with ':' is not read as a scheme.
        let href = html_escape(&format!("./{}{slash}", encode_path(name)));
        let shown = html_escape(&String::from_utf8_lossy(name));
        html.push_str(&format!("<a href=\"{href}\">{shown}{slash}</a>\n"));
    }
    if truncated {
        html.push_str("…\n");
    }
    html.push_str("</pre><hr></body></html>\n");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(html.len()));
    StaticResponse {
        status: StatusCode::OK,
        headers,
        body: if head {
            StaticBody::Empty
        } else {
            StaticBody::Full(Bytes::from(html))
        },
        file: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress;
    use http_body_util::BodyExt;
    use std::os::unix::fs::symlink;

    #[test]
    fn canonical_path_table() {
        use PathError::*;
        let table: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/a/b", Ok("/a/b")),
            ("/a/b/", Ok("/a/b/")),
            ("//a///b", Ok("/a/b")),
            ("/a/./b", Ok("/a/b")),
            ("/a/.", Ok("/a/")),
            ("/a/b/..", Ok("/a/")),
            ("/a/b/../c", Ok("/a/c")),
            ("/a/..", Ok("/")),
            ("/a/../..", Err(AboveRoot)),
            ("/..", Err(AboveRoot)),
            ("/../keel.toml", Err(AboveRoot)),
            ("/static/../keel.toml", Ok("/keel.toml")),
            ("/%2e%2e/keel.toml", Err(AboveRoot)),
            ("/%2E%2e/", Err(AboveRoot)),
            ("/a/%2e%2e/b", Ok("/b")),
            ("/a/.%2e/b", Ok("/b")),
            ("/a/%2e/b", Ok("/a/b")),
            ("/...", Ok("/...")),
            ("/..a", Ok("/..a")),
            ("/a..b/c", Ok("/a..b/c")),
            ("/..%2fkeel.toml", Err(EncodedSlash)),
            ("/a%2Fb", Err(EncodedSlash)),
            ("/%2f", Err(EncodedSlash)),
            ("/a\\b", Err(Backslash)),
            ("/..\\keel.toml", Err(Backslash)),
            ("/a%5cb", Err(Backslash)),
            ("/a%00", Err(Nul)),
            ("/a%0a", Err(ControlChar)),
            ("/a%7F", Err(ControlChar)),
            ("/a\tb", Err(ControlChar)),
            ("/a%", Err(BadPercent)),
            ("/a%2", Err(BadPercent)),
            ("/a%zz", Err(BadPercent)),
            ("/%ff", Err(InvalidUtf8)),
            ("/%c3%28", Err(InvalidUtf8)),
            ("/caf%C3%A9", Ok("/café")),
            ("/a%20b", Ok("/a b")),
            ("/a%3Fb", Ok("/a?b")),
            ("/a?x=../..", Ok("/a")),
            ("/a/..?x", Ok("/")),
            ("/a#frag", Ok("/a")),
            ("", Err(NotAbsolute)),
            ("a/b", Err(NotAbsolute)),
            ("*", Err(NotAbsolute)),
        ];
        for (raw, want) in table {
            assert_eq!(
                canonical_path(raw).map(Cow::into_owned),
                (*want).map(str::to_owned),
                "{raw:?}"
            );
            let raw = raw.split(['?', '#']).next().unwrap();
            assert_eq!(decode_and_merge(raw), (*want).map(str::to_owned), "{raw:?}");
        }
    }

    proptest::proptest! {
        /// A path taken as canonical as it is would come out of the full decoding unchanged.
        #[test]
        fn canonical_as_is_agrees_with_decoding(raw in "/[a./%2eE\\\\é?#]{0,12}") {
            if let Some(shape) = canonical_shape(&raw) {
                let path = &raw[..shape.len];
                proptest::prop_assert_eq!(decode_and_merge(path), Ok(path.to_owned()));
                let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
                proptest::prop_assert_eq!(shape.segments, segments.len());
                let longest = segments.iter().map(|s| s.chars().count()).max().unwrap_or(0);
                proptest::prop_assert_eq!(shape.longest_segment, longest);
            }
        }
    }

    #[test]
    fn encode_round_trips_through_canonical() {
        for p in ["/a b/c%d", "/café/x?y#z", "/a:b/@!$&'()*+,;="] {
            let enc = encode_path(p.as_bytes());
            assert_eq!(canonical_path(&enc).unwrap(), p, "{enc}");
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        outer: PathBuf,
        public: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let outer = fs::canonicalize(dir.path()).unwrap();
        let public = outer.join("public");
        fs::create_dir(&public).unwrap();
        fs::write(outer.join("keel.toml"), "secret = true\n").unwrap();
        fs::create_dir(outer.join("outside")).unwrap();
        fs::write(outer.join("outside/x.txt"), "outside\n").unwrap();
        fs::write(public.join("hello.txt"), "hello world\n").unwrap();
        fs::create_dir(public.join("sub")).unwrap();
        fs::write(public.join("sub/index.html"), "<h1>sub</h1>\n").unwrap();
        fs::create_dir(public.join("nodir")).unwrap();
        fs::write(public.join("nodir/a&b<c>.txt"), "x").unwrap();
        fs::write(public.join("nodir/.hidden"), "x").unwrap();
        fs::create_dir(public.join("nodir/inner")).unwrap();
        symlink("../keel.toml", public.join("out.txt")).unwrap();
        symlink("hello.txt", public.join("in.txt")).unwrap();
        symlink(public.join("hello.txt"), public.join("absin.txt")).unwrap();
        symlink(outer.join("outside"), public.join("outdir")).unwrap();
        symlink("sub", public.join("subln")).unwrap();
        Fixture {
            _dir: dir,
            outer,
            public,
        }
    }

    async fn req(
        root: &StaticRoot,
        method: Method,
        path: &str,
        hdrs: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut h = HeaderMap::new();
        for (k, v) in hdrs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let r = root.serve(&method, path, &h).await;
        let body = r.body.collect().await.unwrap().to_bytes();
        (r.status, r.headers, body)
    }

    async fn get(root: &StaticRoot, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        req(root, Method::GET, path, &[]).await
    }

    fn root(f: &Fixture, list: bool, follow: bool) -> StaticRoot {
        StaticRoot::new("/static", &f.public, list, follow).unwrap()
    }

    #[tokio::test]
    async fn every_answer_about_a_file_names_the_file() {
        let f = fixture();
        fs::write(f.public.join("hello.txt.gz"), "not really gzip").unwrap();
        let r = root(&f, false, false);
        let serve = |hdrs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in hdrs {
                h.append(
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            let r = r.clone();
            async move { r.serve(&Method::GET, "/static/hello.txt", &h).await }
        };
        let ok = serve(&[]).await;
        let etag = ok.headers[header::ETAG].to_str().unwrap().to_owned();
        // A 304 and a 206 carry no Content-Type or whole length of their own.
        let not_modified = serve(&[("if-none-match", &etag)]).await;
        let part = serve(&[("range", "bytes=0-1")]).await;
        for (answer, status) in [
            (ok, StatusCode::OK),
            (not_modified, StatusCode::NOT_MODIFIED),
            (part, StatusCode::PARTIAL_CONTENT),
        ] {
            assert_eq!(answer.status, status);
            let file = answer.file.expect("the file");
            assert_eq!(file.content_type.unwrap(), "text/plain; charset=utf-8");
            assert_eq!((file.len, file.encoded), (Some(12), false), "{status}");
        }
        let sibling = serve(&[("accept-encoding", "gzip")]).await;
        assert_eq!(sibling.headers[header::CONTENT_ENCODING], "gzip");
        assert!(sibling.file.unwrap().encoded);
        let missing = r
            .serve(&Method::GET, "/static/nothing", &HeaderMap::new())
            .await;
        assert!(missing.file.is_none());
    }

    #[tokio::test]
    async fn serves_a_file_with_validators() {
        let f = fixture();
        let r = root(&f, false, false);
        let (s, h, b) = get(&r, "/static/hello.txt").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b, "hello world\n");
        assert_eq!(h[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(h[header::CONTENT_LENGTH], "12");
        assert_eq!(h[header::ACCEPT_RANGES], "bytes");
        assert!(h[header::ETAG].to_str().unwrap().starts_with("\"c-"));
        assert!(httpdate::parse_http_date(h[header::LAST_MODIFIED].to_str().unwrap()).is_ok());
        assert!(h.get(header::VARY).is_none());
        // Prefix match is case-insensitive, like routing; file names are not.
        assert_eq!(get(&r, "/STATIC/hello.txt").await.0, StatusCode::OK);
        assert_eq!(get(&r, "/static/HELLO.txt").await.0, StatusCode::NOT_FOUND);
        assert_eq!(get(&r, "/static/missing").await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            get(&r, "/static/hello.txt/x").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(get(&r, "/staticx/hello.txt").await.0, StatusCode::NOT_FOUND);
        // A file named as a directory is not there (as nginx answers: ENOTDIR).
        for path in [
            "/static/hello.txt/",
            "/static/hello.txt//",
            "/static/sub/index.html/",
        ] {
            assert_eq!(get(&r, path).await.0, StatusCode::NOT_FOUND, "{path}");
        }
        let (s, h, _) = req(&r, Method::POST, "/static/hello.txt", &[]).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(h[header::ALLOW], "GET, HEAD");
        // Unknown extension.
        fs::write(f.public.join("blob.zzqq"), "x").unwrap();
        let (_, h, _) = get(&r, "/static/blob.zzqq").await;
        assert_eq!(h[header::CONTENT_TYPE], "application/octet-stream");
    }

    #[test]
    fn javascript_has_one_type_whatever_its_extension() {
        for name in ["app.js", "app.mjs"] {
            let t = content_type(Path::new(name));
            assert_eq!(t, "text/javascript; charset=utf-8", "{name}");
        }
        assert_eq!(content_type(Path::new("a.css")), "text/css; charset=utf-8");
        assert_eq!(content_type(Path::new("a.json")), "application/json");
        assert_eq!(content_type(Path::new("a.svg")), "image/svg+xml");
        assert_eq!(content_type(Path::new("a.wasm")), "application/wasm");
    }

    #[tokio::test]
    async fn head_has_headers_and_no_body() {
        let f = fixture();
        let r = root(&f, false, false);
        let (s, h, b) = req(&r, Method::HEAD, "/static/hello.txt", &[]).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h[header::CONTENT_LENGTH], "12");
        assert!(h.contains_key(header::ETAG));
        assert!(b.is_empty());
        // Range is ignored for HEAD (RFC 9110 §14.2).
        let (s, _, _) = req(
            &r,
            Method::HEAD,
            "/static/hello.txt",
            &[("range", "bytes=0-1")],
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn traversal_attempts_are_refused() {
        let f = fixture();
        let r = root(&f, true, false);
        let at_root = StaticRoot::new("/", &f.public, true, false).unwrap();
        for (root, path, want) in [
            (&r, "/static/../keel.toml", 404), // canonical /keel.toml: not under /static
            (&r, "/static/../../keel.toml", 400),
            (&r, "/static/%2e%2e/%2e%2e/keel.toml", 400),
            (&r, "/static/..%2fkeel.toml", 400),
            (&r, "/static/..%2f..%2fkeel.toml", 400),
            (&r, "/static/%2f", 400),
            (&r, "/static/hello.txt%00", 400),
            (&r, "/static/hello.txt%00.png", 400),
            (&r, "/static/..\\keel.toml", 400),
            (&r, "/static/..%5ckeel.toml", 400),
            (&r, "/static/%ff", 400),
            (&at_root, "/../keel.toml", 400),
            (&at_root, "/%2e%2e/keel.toml", 400),
            (&at_root, "/%2e%2e%2fkeel.toml", 400),
            (&at_root, "/sub/../../keel.toml", 400),
            (&at_root, "/sub/../hello.txt", 200),
            (&r, "/static/sub/%2e%2e/hello.txt", 200),
        ] {
            let (s, _, b) = get(root, path).await;
            assert_eq!(s.as_u16(), want, "{path}");
            assert!(!b.starts_with(b"secret"), "{path}");
        }
    }

    #[tokio::test]
    async fn symlinks_confined_unless_follow() {
        let f = fixture();
        let r = root(&f, false, false);
        assert_eq!(get(&r, "/static/out.txt").await.0, StatusCode::FORBIDDEN);
        assert_eq!(
            get(&r, "/static/outdir/x.txt").await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(get(&r, "/static/outdir/").await.0, StatusCode::FORBIDDEN);
        let (s, _, b) = get(&r, "/static/in.txt").await;
        assert_eq!((s, &b[..]), (StatusCode::OK, &b"hello world\n"[..]));
        let (s, _, b) = get(&r, "/static/absin.txt").await;
        assert_eq!((s, &b[..]), (StatusCode::OK, &b"hello world\n"[..]));
        let (s, _, b) = get(&r, "/static/subln/").await;
        assert_eq!((s, &b[..]), (StatusCode::OK, &b"<h1>sub</h1>\n"[..]));
        // A symlinked index.html leaving the root is refused too.
        symlink(f.outer.join("keel.toml"), f.public.join("nodir/index.html")).unwrap();
        assert_eq!(get(&r, "/static/nodir/").await.0, StatusCode::FORBIDDEN);
        // Dangling symlink: not found.
        symlink("nowhere", f.public.join("dangling")).unwrap();
        assert_eq!(get(&r, "/static/dangling").await.0, StatusCode::NOT_FOUND);

        let follow = root(&f, false, true);
        let (s, _, b) = get(&follow, "/static/out.txt").await;
        assert_eq!((s, &b[..]), (StatusCode::OK, &b"secret = true\n"[..]));
        let (s, _, b) = get(&follow, "/static/outdir/x.txt").await;
        assert_eq!((s, &b[..]), (StatusCode::OK, &b"outside\n"[..]));
    }

    #[tokio::test]
    async fn ranges() {
        let f = fixture();
        let r = root(&f, false, false);
        let (s, h, b) = req(
            &r,
            Method::GET,
            "/static/hello.txt",
            &[("range", "bytes=0-4")],
        )
        .await;
        assert_eq!(s, StatusCode::PARTIAL_CONTENT);
        assert_eq!(b, "hello");
        assert_eq!(h[header::CONTENT_RANGE], "bytes 0-4/12");
        assert_eq!(h[header::CONTENT_LENGTH], "5");
        let (s, _, b) = req(
            &r,
            Method::GET,
            "/static/hello.txt",
            &[("range", "bytes=-6")],
        )
        .await;
        assert_eq!((s, &b[..]), (StatusCode::PARTIAL_CONTENT, &b"world\n"[..]));
        let (s, h, b) = req(
            &r,
            Method::GET,
            "/static/hello.txt",
            &[("range", "bytes=12-")],
        )
        .await;
        assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(h[header::CONTENT_RANGE], "bytes */12");
        assert!(b.is_empty());
        let (s, _, b) = req(
            &r,
            Method::GET,
            "/static/hello.txt",
            &[("range", "bytes=0-1,4-5")],
        )
        .await;
        assert_eq!((s, b.len()), (StatusCode::OK, 12));

        // If-Range: the current ETag or Last-Modified → range; anything else → whole file.
        // Last modified an hour ago: its date is a strong validator.
        let modified = |at: SystemTime| {
            File::options()
                .write(true)
                .open(f.public.join("hello.txt"))
                .unwrap()
                .set_modified(at)
                .unwrap();
        };
        modified(SystemTime::now() - Duration::from_secs(3600));
        async fn if_range(r: &StaticRoot, ir: &str) -> StatusCode {
            let fields = [("range", "bytes=0-4"), ("if-range", ir)];
            req(r, Method::GET, "/static/hello.txt", &fields).await.0
        }
        let (_, h, _) = get(&r, "/static/hello.txt").await;
        let etag = h[header::ETAG].to_str().unwrap().to_owned();
        let lm = h[header::LAST_MODIFIED].to_str().unwrap().to_owned();
        for (ir, want) in [
            (etag.as_str(), StatusCode::PARTIAL_CONTENT),
            (lm.as_str(), StatusCode::PARTIAL_CONTENT),
            ("\"other\"", StatusCode::OK),
            (&format!("W/{etag}"), StatusCode::OK),
            ("Thu, 01 Jan 1970 00:00:00 GMT", StatusCode::OK),
        ] {
            assert_eq!(if_range(&r, ir).await, want, "If-Range: {ir}");
        }
        // Last modified no earlier than the second it is answered in (here a day ahead, as a
        // clock set back would leave it): its date may stand for two contents (RFC 9110
        // §8.8.2.2), so it names no range; its ETag still does.
        modified(SystemTime::now() + Duration::from_secs(86_400));
        let (_, h, _) = get(&r, "/static/hello.txt").await;
        let etag = h[header::ETAG].to_str().unwrap().to_owned();
        let lm = h[header::LAST_MODIFIED].to_str().unwrap().to_owned();
        assert_eq!(if_range(&r, &lm).await, StatusCode::OK, "If-Range: {lm}");
        assert_eq!(if_range(&r, &etag).await, StatusCode::PARTIAL_CONTENT);
    }

    #[tokio::test]
    async fn conditionals() {
        let f = fixture();
        let r = root(&f, false, false);
        let (_, h, _) = get(&r, "/static/hello.txt").await;
        let etag = h[header::ETAG].to_str().unwrap().to_owned();
        let lm = h[header::LAST_MODIFIED].to_str().unwrap().to_owned();
        let p = "/static/hello.txt";
        let cases: Vec<(Vec<(&str, String)>, StatusCode)> = vec![
            (
                vec![("if-none-match", etag.clone())],
                StatusCode::NOT_MODIFIED,
            ),
            (
                vec![("if-none-match", format!("W/{etag}"))],
                StatusCode::NOT_MODIFIED,
            ),
            (
                vec![("if-none-match", format!("\"x\", {etag}"))],
                StatusCode::NOT_MODIFIED,
            ),
            (
                vec![("if-none-match", "*".into())],
                StatusCode::NOT_MODIFIED,
            ),
            (vec![("if-none-match", "\"x\"".into())], StatusCode::OK),
            (
                vec![("if-modified-since", lm.clone())],
                StatusCode::NOT_MODIFIED,
            ),
            (
                vec![("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT".into())],
                StatusCode::OK,
            ),
            (
                vec![("if-modified-since", "garbage".into())],
                StatusCode::OK,
            ),
            // If-None-Match wins over If-Modified-Since.
            (
                vec![
                    ("if-none-match", "\"x\"".into()),
                    ("if-modified-since", lm.clone()),
                ],
                StatusCode::OK,
            ),
            (vec![("if-match", etag.clone())], StatusCode::OK),
            (
                vec![("if-match", "\"x\"".into())],
                StatusCode::PRECONDITION_FAILED,
            ),
            // Every line of a list field counts.
            (
                vec![
                    ("if-none-match", "\"x\"".into()),
                    ("if-none-match", etag.clone()),
                ],
                StatusCode::NOT_MODIFIED,
            ),
            (
                vec![("if-match", "\"x\"".into()), ("if-match", etag.clone())],
                StatusCode::OK,
            ),
            (
                vec![("if-match", format!("W/{etag}"))],
                StatusCode::PRECONDITION_FAILED,
            ),
            (
                vec![(
                    "if-unmodified-since",
                    "Sat, 01 Jan 2000 00:00:00 GMT".into(),
                )],
                StatusCode::PRECONDITION_FAILED,
            ),
            (vec![("if-unmodified-since", lm.clone())], StatusCode::OK),
        ];
        for (hdrs, want) in cases {
            let hs: Vec<(&str, &str)> = hdrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (s, h, b) = req(&r, Method::GET, p, &hs).await;
            assert_eq!(s, want, "{hdrs:?}");
            if s == StatusCode::NOT_MODIFIED {
                assert!(b.is_empty());
                assert_eq!(h[header::ETAG], etag.as_str());
                assert!(h.get(header::CONTENT_LENGTH).is_none());
            }
        }
    }

    #[tokio::test]
    async fn directories_index_redirect_listing() {
        let f = fixture();
        let r = root(&f, false, false);
        let (s, h, b) = get(&r, "/static/sub/").await;
        assert_eq!((s, &b[..]), (StatusCode::OK, &b"<h1>sub</h1>\n"[..]));
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let (s, h, _) = get(&r, "/static/sub").await;
        assert_eq!(s, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(h[header::LOCATION], "/static/sub/");
        let (_, h, _) = get(&r, "/static/./sub?a=1&b=%20").await;
        assert_eq!(h[header::LOCATION], "/static/sub/?a=1&b=%20");
        let (s, h, _) = get(&r, "/static").await;
        assert_eq!(s, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(h[header::LOCATION], "/static/");
        fs::create_dir(f.public.join("a b")).unwrap();
        let (_, h, _) = get(&r, "/static/a%20b").await;
        assert_eq!(h[header::LOCATION], "/static/a%20b/");
        // No index, no listing: 403 (nginx).
        assert_eq!(get(&r, "/static/nodir/").await.0, StatusCode::FORBIDDEN);
        assert_eq!(get(&r, "/static/").await.0, StatusCode::FORBIDDEN);

        let l = root(&f, true, false);
        let (s, h, b) = get(&l, "/static/nodir/").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let html = String::from_utf8(b.to_vec()).unwrap();
        assert!(html.contains(">a&amp;b&lt;c&gt;.txt</a>"), "{html}");
        assert!(html.contains("href=\"./a&amp;b%3Cc%3E.txt\""), "{html}");
        assert!(html.contains("href=\"./inner/\""), "{html}");
        assert!(html.contains("href=\"../\""), "{html}");
        assert!(!html.contains("hidden"), "{html}");
        assert!(!html.contains("<c>"), "{html}");
        let (s, _, b) = get(&l, "/static/").await;
        assert_eq!(s, StatusCode::OK);
        let html = String::from_utf8(b.to_vec()).unwrap();
        assert!(!html.contains("href=\"../\""), "{html}");
        assert!(html.contains("./hello.txt"), "{html}");
        // An index.html still wins over the listing.
        assert_eq!(get(&l, "/static/sub/").await.2, "<h1>sub</h1>\n");
    }

    #[tokio::test]
    async fn precompressed_siblings() {
        let f = fixture();
        let r = root(&f, false, false);
        let js = "function f() { return 1; }\n".repeat(100);
        fs::write(f.public.join("app.js"), &js).unwrap();
        let br = compress::compress(js.as_bytes(), Encoding::Br);
        let gz = compress::compress(js.as_bytes(), Encoding::Gzip);
        fs::write(f.public.join("app.js.br"), &br).unwrap();
        fs::write(f.public.join("app.js.gz"), &gz).unwrap();
        let p = "/static/app.js";

        let (s, h, b) = req(
            &r,
            Method::GET,
            p,
            &[("accept-encoding", "gzip, deflate, br")],
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h[header::CONTENT_ENCODING], "br");
        assert_eq!(h[header::VARY], "accept-encoding");
        assert!(
            h[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .contains("javascript")
        );
        assert_eq!(h[header::CONTENT_LENGTH], br.len().to_string().as_str());
        assert_eq!(b, br);
        let br_etag = h[header::ETAG].clone();

        let (_, h, b) = req(&r, Method::GET, p, &[("accept-encoding", "gzip")]).await;
        assert_eq!(h[header::CONTENT_ENCODING], "gzip");
        assert_eq!(b, gz);
        assert_ne!(h[header::ETAG], br_etag);
        let (_, h, b) = req(&r, Method::GET, p, &[("accept-encoding", "br;q=0.5, gzip")]).await;
        assert_eq!(
            (&h[header::CONTENT_ENCODING], &b),
            (&"gzip".parse().unwrap(), &gz)
        );

        let (_, h, b) = get(&r, p).await;
        assert!(h.get(header::CONTENT_ENCODING).is_none());
        assert_eq!(h[header::VARY], "accept-encoding");
        assert_eq!(b, js);

        // The identity ETag does not validate the br variant.
        let (_, h, _) = get(&r, p).await;
        let id_etag = h[header::ETAG].to_str().unwrap().to_owned();
        let (s, _, _) = req(
            &r,
            Method::GET,
            p,
            &[("accept-encoding", "br"), ("if-none-match", &id_etag)],
        )
        .await;
        assert_eq!(s, StatusCode::OK);

        // A sibling older than the file is stale and ignored.
        let old = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(f.public.join("app.js.br"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let (_, h, b) = req(&r, Method::GET, p, &[("accept-encoding", "br")]).await;
        assert!(h.get(header::CONTENT_ENCODING).is_none());
        assert_eq!(b, js);
        assert_eq!(h[header::VARY], "accept-encoding"); // the .gz still exists
    }

    #[tokio::test]
    async fn large_sparse_file_streams_in_bounded_chunks() {
        let f = fixture();
        let len: u64 = 100 * 1024 * 1024;
        let file = File::create(f.public.join("big.bin")).unwrap();
        file.set_len(len).unwrap();
        file.write_at(b"END", len - 3).unwrap();
        drop(file);
        let r = root(&f, false, false);
        let resp = r
            .serve(&Method::GET, "/static/big.bin", &HeaderMap::new())
            .await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(
            resp.headers[header::CONTENT_LENGTH],
            len.to_string().as_str()
        );
        assert!(matches!(resp.body, StaticBody::File(_)));
        assert_eq!(resp.body.size_hint().exact(), Some(len));
        let mut body = resp.body;
        let (mut total, mut frames, mut last) = (0u64, 0u32, Bytes::new());
        while let Some(fr) = body.frame().await {
            let d = fr.unwrap().into_data().unwrap();
            assert!(
                !d.is_empty() && d.len() <= CHUNK_SIZE,
                "chunk of {}",
                d.len()
            );
            total += d.len() as u64;
            frames += 1;
            last = d;
        }
        assert_eq!(total, len);
        assert_eq!(frames as u64, len.div_ceil(CHUNK_SIZE as u64));
        assert!(last.ends_with(b"END"));
        assert!(body.is_end_stream());

        // A large range streams too; a small one comes whole.
        let (s, h, b) = req(
            &r,
            Method::GET,
            "/static/big.bin",
            &[("range", &format!("bytes={}-", len - 1_000_000))],
        )
        .await;
        assert_eq!(s, StatusCode::PARTIAL_CONTENT);
        assert_eq!(h[header::CONTENT_LENGTH], "1000000");
        assert_eq!(b.len(), 1_000_000);
        assert!(b.ends_with(b"END"));
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=-10"));
        let resp = r.serve(&Method::GET, "/static/big.bin", &h).await;
        assert!(matches!(&resp.body, StaticBody::Full(b) if b.ends_with(b"END")));
    }

    #[tokio::test]
    async fn an_opened_file_is_reused_only_while_it_is_unchanged() {
        let f = fixture();
        let path = f.public.join("big.bin");
        let big = |fill: u8, len: usize| vec![fill; len];
        fs::write(&path, big(b'a', 300 * 1024)).unwrap();
        let r = root(&f, false, false);
        let (s, h1, b) = get(&r, "/static/big.bin").await;
        assert_eq!((s, b.len()), (StatusCode::OK, 300 * 1024));
        assert!(r.inner.open_files.contains_key("/big.bin"));
        // Served again from what was opened: the same file, the same validators.
        let (s, h2, b) = get(&r, "/static/big.bin").await;
        assert_eq!((s, b.len(), b[0]), (StatusCode::OK, 300 * 1024, b'a'));
        assert_eq!(h1[header::ETAG], h2[header::ETAG]);
        let (s, _, b) = req(&r, Method::HEAD, "/static/big.bin", &[]).await;
        assert_eq!((s, b.len()), (StatusCode::OK, 0));

        // Written in place: its new length and bytes, a new ETag.
        let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_at(&big(b'b', 400 * 1024), 0).unwrap();
        drop(file);
        let (s, h3, b) = get(&r, "/static/big.bin").await;
        assert_eq!((s, b.len(), b[0]), (StatusCode::OK, 400 * 1024, b'b'));
        assert_ne!(h3[header::ETAG], h2[header::ETAG]);

        // Replaced (a new file renamed over it, as deploys do).
        let tmp = f.public.join("big.bin.new");
        fs::write(&tmp, big(b'c', 350 * 1024)).unwrap();
        fs::rename(&tmp, &path).unwrap();
        let (s, _, b) = get(&r, "/static/big.bin").await;
        assert_eq!((s, b.len(), b[0]), (StatusCode::OK, 350 * 1024, b'c'));

        // Turned into a symlink out of the root: refused, not served from what was open.
        fs::remove_file(&path).unwrap();
        symlink(f.outer.join("outside/x.txt"), &path).unwrap();
        let (s, _, _) = get(&r, "/static/big.bin").await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        // Gone: 404.
        fs::remove_file(&path).unwrap();
        let (s, _, _) = get(&r, "/static/big.bin").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn truncated_file_ends_the_stream_with_an_error() {
        let f = fixture();
        let path = f.public.join("shrinks.bin");
        let file = File::create(&path).unwrap();
        file.set_len(4 * 1024 * 1024).unwrap();
        let r = root(&f, false, false);
        let resp = r
            .serve(&Method::GET, "/static/shrinks.bin", &HeaderMap::new())
            .await;
        file.set_len(1024 * 1024).unwrap();
        let mut body = resp.body;
        let mut saw_err = false;
        while let Some(fr) = body.frame().await {
            if fr.is_err() {
                saw_err = true;
                break;
            }
        }
        assert!(saw_err);
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn fifo_is_not_opened_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo");
        let st = std::process::Command::new("mkfifo").arg(&p).status();
        if !st.is_ok_and(|s| s.success()) {
            return; // no mkfifo on this machine
        }
        assert!(matches!(open_regular(&p), Err(Deny::NotFound)));
    }
}

/// Throughput of a large file through hyper (`FileStream`, user-space copies) against plain
/// `sendfile(2)` on loopback. Run by hand:
/// `cargo test --release -p keel --lib static_files::measure -- --ignored --nocapture`
#[cfg(test)]
mod measure {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    const LEN: u64 = 1024 * 1024 * 1024;

    fn drain(mut s: TcpStream, request: bool) -> u64 {
        if request {
            s.write_all(b"GET /static/big.bin HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .unwrap();
        }
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return n,
                Ok(k) => n += k as u64,
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn report(what: &str, bytes: u64, t: Instant) {
        let s = t.elapsed().as_secs_f64();
        println!(
            "{what}: {} MiB in {s:.3} s = {:.0} MiB/s",
            bytes >> 20,
            bytes as f64 / s / 1048576.0
        );
    }

    #[test]
    #[ignore]
    fn measure_hyper_vs_sendfile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.bin");
        // A real (not sparse) file, in the page cache after the first pass.
        {
            let mut f = File::create(&path).unwrap();
            let block = vec![0x5au8; 1 << 20];
            for _ in 0..(LEN >> 20) {
                f.write_all(&block).unwrap();
            }
        }
        let _ = fs::read(&path).map(drop);

        for round in 0..2 {
            // sendfile(2) baseline.
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let p = path.clone();
            let server = std::thread::spawn(move || {
                let (s, _) = l.accept().unwrap();
                let f = File::open(p).unwrap();
                let mut off = 0u64;
                while off < LEN {
                    let n = {
                        let left = (LEN - off) as usize;
                        rustix::fs::sendfile(&s, &f, Some(&mut off), left).unwrap()
                    };
                    assert!(n > 0);
                }
            });
            let t = Instant::now();
            let n = drain(TcpStream::connect(addr).unwrap(), false);
            report(&format!("round {round} sendfile"), n, t);
            server.join().unwrap();

            // hyper + FileStream.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let root = StaticRoot::new("/static", dir.path(), false, false).unwrap();
            let l = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let addr = l.local_addr().unwrap();
            rt.spawn(async move {
                let (s, _) = l.accept().await.unwrap();
                let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                    let root = root.clone();
                    async move {
                        let r = root
                            .serve(req.method(), req.uri().path(), req.headers())
                            .await;
                        Ok::<_, std::convert::Infallible>(r.into_response())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
            let t = Instant::now();
            let n = drain(TcpStream::connect(addr).unwrap(), true);
            report(&format!("round {round} hyper+FileStream"), n, t);
            drop(rt);
        }
    }
}

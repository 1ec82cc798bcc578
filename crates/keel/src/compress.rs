//! Response compression (issue 4 §9): `Accept-Encoding` negotiation, which responses are
//! worth compressing, one-shot compression for bodies that will be cached, and a streaming
//! `Body` wrapper with bounded memory for bodies too large to hold.
//!
//! Independent of the rest of keel: for a site with `compression = true`, the caller decides
//! once per request what compression makes of its answer ([`Plan::decide`], from the
//! request's `Accept-Encoding` and the [`Representation`] the answer is about), has the plan
//! describe the answer's fields whatever its status ([`Plan::describe`]: a HEAD, a 304 or a
//! 206 then says what the 200 says of itself), and compresses a 200's body with `compress`
//! (complete body) or `CompressBody` (streaming).

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};

/// Bodies shorter than this are sent as they are: the encoding overhead eats the gain.
pub const MIN_SIZE: u64 = 1024;
/// Brotli quality for one-shot (cached) bodies: ~gzip-6 speed, better ratio.
pub const BROTLI_QUALITY: u32 = 5;
/// Brotli window for one-shot bodies (4 MiB; the body is in memory anyway).
pub const BROTLI_LGWIN: u32 = 22;
/// Brotli quality and window for streaming: cheaper per byte, a 256 KiB window per
/// response. The window is most of what a response being compressed holds while its client
/// reads: 20 slow downloads of an 18 MB text file held about 12.8 MiB each with a 1 MiB
/// window and 5.5 MiB with this one, for output 0.1 % larger.
pub const BROTLI_STREAM_QUALITY: u32 = 4;
pub const BROTLI_STREAM_LGWIN: u32 = 18;
/// gzip level (nginx `gzip_comp_level` is 1 by default; 6 is zlib's default).
pub const GZIP_LEVEL: u32 = 6;

/// A content coding keel produces (or serves precompressed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Br,
    Gzip,
}

impl Encoding {
    /// The token for `Content-Encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }

    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }

    /// File-name extension of a precompressed sibling (`app.js.br`, `app.js.gz`).
    pub fn extension(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Gzip => "gz",
        }
    }
}

/// The q-values a client gave for the codings keel knows. `None` = not mentioned.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct AcceptEncoding {
    pub br: Option<f32>,
    pub gzip: Option<f32>,
    pub identity: Option<f32>,
    pub star: Option<f32>,
}

impl AcceptEncoding {
    /// The codings a request with `headers` may be answered in: those of its
    /// `Accept-Encoding`, or none but identity when it has a `Range`. A range is of the
    /// identity bytes, whether its answer is a 206 made here (from a file, a precompressed
    /// sibling's original or a cache entry) or the whole 200, and the cache keys such a
    /// request by the identity variant.
    pub fn of_request(headers: &HeaderMap) -> Self {
        if headers.contains_key(header::RANGE) {
            return AcceptEncoding::default();
        }
        AcceptEncoding::of(headers)
    }

    /// The request's `Accept-Encoding`, all its lines. Malformed members are skipped; a
    /// malformed q-value counts as q=0 (refused), the safe reading.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut ae = AcceptEncoding::default();
        for member in crate::header_list::members(headers, header::ACCEPT_ENCODING) {
            let mut parts = member.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if coding.is_empty() {
                continue;
            }
            let mut q = 1.0f32;
            for p in parts {
                let p = p.trim();
                if let Some((k, v)) = p.split_once('=')
                    && k.trim().eq_ignore_ascii_case("q")
                {
                    q = parse_q(v.trim()).unwrap_or(0.0);
                }
            }
            let slot = if coding.eq_ignore_ascii_case("br") {
                &mut ae.br
            } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                &mut ae.gzip
            } else if coding.eq_ignore_ascii_case("identity") {
                &mut ae.identity
            } else if coding == "*" {
                &mut ae.star
            } else {
                continue;
            };
            // Repeated members: keep the highest, as most servers do.
            *slot = Some(slot.map_or(q, |old: f32| old.max(q)));
        }
        ae
    }

    /// The effective q-value of `enc` (a coding not named takes `*`'s value, else 0).
    pub fn q(&self, enc: Encoding) -> f32 {
        let named = match enc {
            Encoding::Br => self.br,
            Encoding::Gzip => self.gzip,
        };
        named.or(self.star).unwrap_or(0.0)
    }

    /// The effective q-value of `identity` (always acceptable unless refused explicitly or
    /// by `*;q=0`).
    pub fn identity_q(&self) -> f32 {
        self.identity.or(self.star).unwrap_or(1.0)
    }

    /// Acceptable codings, best first: by q-value, `br` before `gzip` on a tie; only those
    /// with q > 0 and, when `identity` is listed explicitly, not below its q (an unlisted
    /// identity expresses no preference, RFC 9110 §12.5.3).
    pub fn ranked(&self) -> Vec<Encoding> {
        let id = self.identity.unwrap_or(0.0);
        let mut v: Vec<(Encoding, f32)> = [Encoding::Br, Encoding::Gzip]
            .into_iter()
            .map(|e| (e, self.q(e)))
            .filter(|&(_, q)| q > 0.0 && q >= id)
            .collect();
        // Stable sort keeps br first on ties.
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.into_iter().map(|(e, _)| e).collect()
    }
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`
fn parse_q(s: &str) -> Option<f32> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: f32 = match int {
        "0" => format!("0.{frac}0").parse().ok()?,
        "1" if frac.bytes().all(|b| b == b'0') => 1.0,
        _ => return None,
    };
    Some(v)
}

/// The coding to compress a response to a request with `headers` with, or `None` for
/// identity ([`AcceptEncoding::of_request`]).
pub fn choose(headers: &HeaderMap) -> Option<Encoding> {
    AcceptEncoding::of_request(headers)
        .ranked()
        .first()
        .copied()
}

/// Whether a response is worth compressing: a textual type, at least `MIN_SIZE` long (an
/// unknown length counts as long), and not encoded already.
pub fn compressible(
    content_type: Option<&HeaderValue>,
    len: Option<u64>,
    existing_encoding: bool,
) -> bool {
    if existing_encoding || len.is_some_and(|l| l < MIN_SIZE) {
        return false;
    }
    let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((top, sub)) = essence.split_once('/') else {
        return false;
    };
    match top {
        "text" => true,
        "application" => {
            matches!(
                sub,
                "json"
                    | "javascript"
                    | "x-javascript"
                    | "ecmascript"
                    | "xml"
                    | "wasm"
                    | "x-ndjson"
                    | "graphql-response+json"
            ) || sub.ends_with("+json")
                || sub.ends_with("+xml")
        }
        "image" => sub == "svg+xml" || sub == "x-icon" || sub == "vnd.microsoft.icon",
        _ => false,
    }
}

/// What a compression decision needs to know of the representation an answer is about: a
/// 304 or a 206 does not carry it all in its own fields.
#[derive(Debug, Clone, Default)]
pub struct Representation {
    pub content_type: Option<HeaderValue>,
    /// The length of its identity form, when known (an unknown length counts as large).
    pub len: Option<u64>,
    /// It has a `Content-Encoding` already (a precompressed file, a worker's own).
    pub encoded: bool,
    /// Its `Cache-Control` says `no-transform`: nothing between the origin and the client may
    /// change its coding (RFC 9110 §7.7, RFC 9111 §5.2.2.6).
    pub no_transform: bool,
    /// Known to be worth compressing though its type is not told: the client holds a variant
    /// of it that keel compressed ([`Representation::of_not_modified`]).
    pub compressed_before: bool,
}

impl Representation {
    /// The representation that response fields `headers` describe, `len` long when known.
    pub fn of(headers: &HeaderMap, len: Option<u64>) -> Self {
        Representation {
            content_type: headers.get(header::CONTENT_TYPE).cloned(),
            len,
            encoded: headers.contains_key(header::CONTENT_ENCODING),
            no_transform: crate::header_list::lists(headers, header::CACHE_CONTROL, "no-transform"),
            compressed_before: false,
        }
    }

    /// The representation a worker's 304 with fields `headers`, to a request with fields
    /// `request`, is about. A 304 need not say its type (RFC 9110 §15.4.5 lists the fields it
    /// sends, and `Content-Type` is not one of them): one that does is judged by it, as its
    /// 200 is. One that does not is taken as worth compressing when the request's
    /// `If-None-Match` names the weak form of the 304's strong `ETag` (`W/"x"` for `"x"`): the
    /// tag keel gives a compressed variant it made, so the client holds one, and its 304
    /// says what that 200 said (weak `ETag`, `Vary: Accept-Encoding`). Otherwise nothing tells
    /// and the 304 is sent as it is.
    pub fn of_not_modified(headers: &HeaderMap, request: &HeaderMap) -> Self {
        let mut rep = Representation::of(headers, None);
        rep.compressed_before = rep.content_type.is_none()
            && headers
                .get(header::ETAG)
                .is_some_and(|tag| holds_weakened(request, tag.as_bytes()));
        rep
    }
}

/// Whether `request`'s `If-None-Match` lists the strong entity-tag `tag` made weak.
fn holds_weakened(request: &HeaderMap, tag: &[u8]) -> bool {
    tag.first() == Some(&b'"')
        && request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(crate::header_list::entity_tags)
            .flatten()
            .any(|(weak, listed)| weak && listed == tag)
}

/// A response extension: keel alone chose this answer's coding from the request's
/// `Accept-Encoding` ([`Plan::Identity`] or [`Plan::Encode`], for an answer that did not vary
/// on it already), so that field matters to the answer only through [`choose`] (the cache
/// keys its variants by that).
#[derive(Clone, Copy, Debug)]
pub struct CodingChosenHere;

/// What compression makes of the answer to one request, decided once and applied to
/// whichever answer the request gets: a 200 to a GET or a HEAD, a 304, a 206.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Not worth compressing, or not to be: sent as it is, and not varying on
    /// `Accept-Encoding`.
    AsIs,
    /// Compressible, but this client takes identity.
    Identity,
    /// Compressed to this coding.
    Encode(Encoding),
}

impl Plan {
    /// The plan for a request with fields `request` whose answer is about `rep`.
    pub fn decide(request: &HeaderMap, rep: &Representation) -> Plan {
        let worth =
            rep.compressed_before || compressible(rep.content_type.as_ref(), rep.len, rep.encoded);
        if rep.no_transform || rep.encoded || !worth {
            return Plan::AsIs;
        }
        choose(request).map_or(Plan::Identity, Plan::Encode)
    }

    /// Makes the fields of an answer with `status` say what the plan makes of the
    /// representation: a 200 those of its compressed form ([`apply_headers`]) or
    /// `Vary: Accept-Encoding`; a 304 the `Vary` and `ETag` the 200 would carry (RFC 9110
    /// §15.4.5); a 206, a range of the identity form (never compressed), the 200's `Vary`
    /// (§12.5.5). Any other status is not about the representation and is left alone.
    pub fn describe(self, status: StatusCode, headers: &mut HeaderMap) {
        if self == Plan::AsIs {
            return;
        }
        match (status, self) {
            (StatusCode::OK, Plan::Encode(enc)) => apply_headers(headers, enc),
            (StatusCode::NOT_MODIFIED, Plan::Encode(_)) => {
                add_vary_accept_encoding(headers);
                weaken_etag(headers);
            }
            (StatusCode::OK | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT, _) => {
                add_vary_accept_encoding(headers);
            }
            _ => {}
        }
    }

    /// The coding the body of an answer with `status` is compressed to: only a 200's (a
    /// range was asked of the identity bytes).
    pub fn body_coding(self, status: StatusCode) -> Option<Encoding> {
        match self {
            Plan::Encode(enc) if status == StatusCode::OK => Some(enc),
            _ => None,
        }
    }
}

/// Compress a complete body (for bodies that will be cached): brotli quality 5, gzip 6.
pub fn compress(bytes: &[u8], enc: Encoding) -> Bytes {
    let cap = bytes.len() / 3 + 64;
    match enc {
        Encoding::Br => {
            let mut w = brotli::CompressorWriter::new(
                Vec::with_capacity(cap),
                16 * 1024,
                BROTLI_QUALITY,
                BROTLI_LGWIN,
            );
            // Writing to a Vec cannot fail.
            let _ = w.write_all(bytes);
            Bytes::from(w.into_inner())
        }
        Encoding::Gzip => {
            let mut w = flate2::write::GzEncoder::new(
                Vec::with_capacity(cap),
                flate2::Compression::new(GZIP_LEVEL),
            );
            let _ = w.write_all(bytes);
            Bytes::from(w.finish().unwrap_or_default())
        }
    }
}

/// Make a response's headers describe its compressed form: `Content-Encoding`, no
/// `Content-Length` (unknown until done) and no `Accept-Ranges` (ranges of the identity form no
/// longer apply), `Vary: Accept-Encoding`, and a strong `ETag` weakened (the bytes differ from
/// the identity representation's; RFC 9110 §8.8.3).
fn apply_headers(headers: &mut HeaderMap, enc: Encoding) {
    headers.insert(header::CONTENT_ENCODING, enc.header_value());
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::ACCEPT_RANGES);
    add_vary_accept_encoding(headers);
    weaken_etag(headers);
}

/// A strong `ETag` made weak: the compressed bytes are not the identity representation's,
/// though they stand for the same content (RFC 9110 §8.8.3).
fn weaken_etag(headers: &mut HeaderMap) {
    if let Some(etag) = headers.get(header::ETAG)
        && etag.as_bytes().first() == Some(&b'"')
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(etag.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&weak) {
            headers.insert(header::ETAG, v);
        }
    }
}

/// Add `Accept-Encoding` to `Vary` unless it is there already (or `Vary: *`).
fn add_vary_accept_encoding(headers: &mut HeaderMap) {
    let present = crate::header_list::members(headers, header::VARY)
        .any(|t| t == "*" || t.eq_ignore_ascii_case("accept-encoding"));
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// An incremental encoder whose output is drained after every write: memory is the coder's
/// state plus one chunk of output (with the chunks waiting for a slow client, measured at
/// about 2.5 MiB per response for gzip and 5.5 MiB for brotli q4/lgwin 18).
pub enum StreamEncoder {
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
}

impl StreamEncoder {
    pub fn new(enc: Encoding) -> Self {
        match enc {
            Encoding::Br => StreamEncoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 * 1024,
                BROTLI_STREAM_QUALITY,
                BROTLI_STREAM_LGWIN,
            ))),
            Encoding::Gzip => StreamEncoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
        }
    }

    /// Feed `data`; returns whatever compressed output is ready (may be empty).
    pub fn write(&mut self, data: &[u8]) -> Bytes {
        match self {
            StreamEncoder::Br(w) => {
                let _ = w.write_all(data);
                take(w.get_mut())
            }
            StreamEncoder::Gzip(w) => {
                let _ = w.write_all(data);
                take(w.get_mut())
            }
        }
    }

    /// Flush everything written so far into output (a sync flush: the client can decode all
    /// of it now). Costs a few bytes; used when the source has nothing more ready.
    pub fn flush(&mut self) -> Bytes {
        match self {
            StreamEncoder::Br(w) => {
                let _ = w.flush();
                take(w.get_mut())
            }
            StreamEncoder::Gzip(w) => {
                let _ = w.flush();
                take(w.get_mut())
            }
        }
    }

    /// End the stream; returns the final output.
    pub fn finish(self) -> Bytes {
        match self {
            StreamEncoder::Br(w) => Bytes::from(w.into_inner()),
            StreamEncoder::Gzip(w) => Bytes::from(w.finish().unwrap_or_default()),
        }
    }
}

fn take(v: &mut Vec<u8>) -> Bytes {
    Bytes::from(std::mem::take(v))
}

/// A body compressed as it streams. Output is produced per input frame; when the source has
/// nothing ready (`Pending`) the encoder is flushed so slow streams (server-sent events,
/// long polls) are not held back. Trailers pass through after the final output.
pub struct CompressBody<B> {
    inner: B,
    encoder: Option<StreamEncoder>,
    /// Data written since the last flush.
    unflushed: bool,
    trailers: Option<HeaderMap>,
    inner_done: bool,
}

impl<B> CompressBody<B> {
    pub fn new(inner: B, enc: Encoding) -> Self {
        CompressBody {
            inner,
            encoder: Some(StreamEncoder::new(enc)),
            unflushed: false,
            trailers: None,
            inner_done: false,
        }
    }
}

impl<B> Body for CompressBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        loop {
            if this.inner_done {
                if let Some(enc) = this.encoder.take() {
                    let out = enc.finish();
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let Some(enc) = this.encoder.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => {
                    if this.unflushed {
                        this.unflushed = false;
                        let out = enc.flush();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => this.inner_done = true,
                Poll::Ready(Some(Err(e))) => {
                    this.encoder = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if data.is_empty() {
                            continue;
                        }
                        this.unflushed = true;
                        let out = enc.write(&data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                        }
                        this.inner_done = true;
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::io::Read;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn negotiation_table() {
        use Encoding::*;
        let table: &[(Option<&str>, Option<Encoding>)] = &[
            (None, None),
            (Some(""), None),
            (Some("gzip"), Some(Gzip)),
            (Some("br"), Some(Br)),
            (Some("gzip, br"), Some(Br)),
            (Some("gzip, deflate, br, zstd"), Some(Br)),
            (Some("br;q=0.5, gzip"), Some(Gzip)),
            (Some("br;q=1.0, gzip;q=1"), Some(Br)),
            (Some("gzip;q=0.8, br;q=0.8"), Some(Br)),
            (Some("gzip;q=0.8, identity;q=0.9"), None),
            (Some("br;q=0, gzip"), Some(Gzip)),
            (Some("br;q=0, gzip;q=0"), None),
            (Some("BR;Q=0.9"), Some(Br)),
            (Some("x-gzip"), Some(Gzip)),
            (Some("*"), Some(Br)),
            (Some("*;q=0"), None),
            (Some("gzip, *;q=0"), Some(Gzip)),
            (Some("identity"), None),
            (Some("identity, gzip;q=0.5"), None),
            (Some("identity;q=0.5, gzip"), Some(Gzip)),
            (Some("identity;q=0, br"), Some(Br)),
            (Some("deflate, zstd"), None),
            (Some("gzip;q=abc"), None),
            (Some("gzip;q=1.5"), None),
            (Some("gzip;q=0.001"), Some(Gzip)),
            (Some(" gzip ; q=0.5 ,br;q=0.4"), Some(Gzip)),
        ];
        for (input, want) in table {
            let mut h = HeaderMap::new();
            if let Some(v) = input.map(hv) {
                h.insert(header::ACCEPT_ENCODING, v);
            }
            assert_eq!(choose(&h), *want, "Accept-Encoding: {input:?}");
        }
        // Every line counts, as one list.
        let mut h = HeaderMap::new();
        h.append(header::ACCEPT_ENCODING, hv("identity;q=0.5"));
        h.append(header::ACCEPT_ENCODING, hv("br;q=0.4, gzip;q=0.9"));
        assert_eq!(choose(&h), Some(Gzip));
    }

    #[test]
    fn compressible_table() {
        let table: &[(Option<&str>, Option<u64>, bool, bool)] = &[
            (Some("text/html"), Some(5000), false, true),
            (Some("text/html; charset=utf-8"), Some(5000), false, true),
            (Some("TEXT/CSS"), Some(5000), false, true),
            (Some("application/json"), Some(5000), false, true),
            (Some("application/javascript"), None, false, true),
            (Some("application/xml"), Some(5000), false, true),
            (Some("image/svg+xml"), Some(5000), false, true),
            (Some("application/ld+json"), Some(5000), false, true),
            (Some("application/atom+xml"), Some(5000), false, true),
            (
                Some("application/problem+json; charset=utf-8"),
                Some(2000),
                false,
                true,
            ),
            (Some("text/plain"), Some(1023), false, false),
            (Some("text/plain"), Some(1024), false, true),
            (Some("text/plain"), Some(5000), true, false),
            (Some("image/png"), Some(5000), false, false),
            (Some("image/jpeg"), None, false, false),
            (Some("application/octet-stream"), Some(5000), false, false),
            (Some("application/zip"), Some(5000), false, false),
            (Some("video/mp4"), Some(5000), false, false),
            (Some("nonsense"), Some(5000), false, false),
            (None, Some(5000), false, false),
        ];
        for &(ct, len, enc, want) in table {
            let v = ct.map(hv);
            assert_eq!(
                compressible(v.as_ref(), len, enc),
                want,
                "{ct:?} len={len:?} encoded={enc}"
            );
        }
    }

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn unbrotli(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        brotli::Decompressor::new(b, 4096)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn sample(n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        let mut i = 0u32;
        while v.len() < n {
            v.extend_from_slice(format!("line {i} of some fairly repetitive text\n").as_bytes());
            i = i.wrapping_mul(31).wrapping_add(7) % 1000;
        }
        v.truncate(n);
        v
    }

    #[test]
    fn one_shot_round_trip() {
        for n in [0, 1, 1000, 100_000] {
            let data = sample(n);
            let gz = compress(&data, Encoding::Gzip);
            assert_eq!(gunzip(&gz), data);
            let br = compress(&data, Encoding::Br);
            assert_eq!(unbrotli(&br), data);
            if n >= 1000 {
                assert!(gz.len() < data.len() / 2, "gzip {n}: {}", gz.len());
                assert!(br.len() < data.len() / 2, "br {n}: {}", br.len());
            }
        }
    }

    #[tokio::test]
    async fn streaming_round_trip() {
        let data = sample(3 * 1024 * 1024 + 17);
        for enc in [Encoding::Gzip, Encoding::Br] {
            let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = data
                .chunks(64 * 1024)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let body = CompressBody::new(StreamBody::new(futures_util::stream::iter(chunks)), enc);
            let mut body = std::pin::pin!(body);
            let mut out = Vec::new();
            let mut max_frame = 0;
            while let Some(f) = body.frame().await {
                let d = f.unwrap().into_data().unwrap();
                assert!(!d.is_empty());
                max_frame = max_frame.max(d.len());
                out.extend_from_slice(&d);
            }
            assert!(body.is_end_stream());
            // Output per frame stays bounded (no whole-body buffering).
            assert!(max_frame <= 256 * 1024, "{enc:?}: frame of {max_frame}");
            let back = match enc {
                Encoding::Gzip => gunzip(&out),
                Encoding::Br => unbrotli(&out),
            };
            assert_eq!(back.len(), data.len());
            assert!(back == data, "{enc:?} round trip");
        }
    }

    #[test]
    fn flush_makes_output_decodable_so_far() {
        for enc in [Encoding::Gzip, Encoding::Br] {
            let mut e = StreamEncoder::new(enc);
            let mut out = Vec::new();
            out.extend_from_slice(&e.write(b"data: hello\n\n"));
            out.extend_from_slice(&e.flush());
            assert!(!out.is_empty(), "{enc:?}");
            out.extend_from_slice(&e.finish());
            let back = match enc {
                Encoding::Gzip => gunzip(&out),
                Encoding::Br => unbrotli(&out),
            };
            assert_eq!(back, b"data: hello\n\n");
        }
    }

    #[test]
    fn a_plan_is_decided_from_the_request_and_the_representation() {
        use Encoding::*;
        let mut gzip = HeaderMap::new();
        gzip.insert(header::ACCEPT_ENCODING, hv("gzip"));
        let text = Representation {
            content_type: Some(hv("text/plain")),
            len: Some(5000),
            ..Representation::default()
        };
        assert_eq!(Plan::decide(&gzip, &text), Plan::Encode(Gzip));
        assert_eq!(Plan::decide(&HeaderMap::new(), &text), Plan::Identity);
        let small = Representation {
            len: Some(100),
            ..text.clone()
        };
        let encoded = Representation {
            encoded: true,
            ..text.clone()
        };
        let mut fields = HeaderMap::new();
        fields.insert(header::CONTENT_TYPE, hv("text/plain"));
        fields.insert(header::CACHE_CONTROL, hv("public, No-Transform"));
        let no_transform = Representation::of(&fields, Some(5000));
        assert!(no_transform.no_transform);
        for rep in [small, encoded, no_transform] {
            assert_eq!(Plan::decide(&gzip, &rep), Plan::AsIs, "{rep:?}");
        }
    }

    #[test]
    fn a_workers_304_without_a_type_is_compressible_when_the_client_holds_a_weakened_tag() {
        use crate::test_fields::header_map as fields;
        use Encoding::*;
        let strong = fields(&[("etag", "\"abc\"")]);
        // The 304's fields, the request's, the plan.
        type Row = (HeaderMap, HeaderMap, Plan);
        let rows: Vec<Row> = vec![
            (
                strong.clone(),
                fields(&[("accept-encoding", "gzip"), ("if-none-match", "W/\"abc\"")]),
                Plan::Encode(Gzip),
            ),
            (
                strong.clone(),
                fields(&[
                    ("accept-encoding", "br"),
                    ("if-none-match", "\"x\", W/\"abc\""),
                ]),
                Plan::Encode(Br),
            ),
            // It holds a compressed variant but takes none now: the 200 would be identity.
            (
                strong.clone(),
                fields(&[("if-none-match", "W/\"abc\"")]),
                Plan::Identity,
            ),
            // The strong tag: the identity variant, or nothing keel made; nothing tells.
            (
                strong.clone(),
                fields(&[("accept-encoding", "gzip"), ("if-none-match", "\"abc\"")]),
                Plan::AsIs,
            ),
            (
                strong.clone(),
                fields(&[("accept-encoding", "gzip"), ("if-none-match", "W/\"abd\"")]),
                Plan::AsIs,
            ),
            (
                strong.clone(),
                fields(&[("accept-encoding", "gzip"), ("if-none-match", "*")]),
                Plan::AsIs,
            ),
            // The worker's own weak tag: keel's weakening cannot be told from it.
            (
                fields(&[("etag", "W/\"abc\"")]),
                fields(&[("accept-encoding", "gzip"), ("if-none-match", "W/\"abc\"")]),
                Plan::AsIs,
            ),
            // A type, when the 304 gives one, decides as for a 200.
            (
                fields(&[("etag", "\"abc\""), ("content-type", "image/png")]),
                fields(&[("accept-encoding", "gzip"), ("if-none-match", "W/\"abc\"")]),
                Plan::AsIs,
            ),
            (
                fields(&[("etag", "\"abc\""), ("content-type", "text/css")]),
                fields(&[("accept-encoding", "gzip"), ("if-none-match", "\"abc\"")]),
                Plan::Encode(Gzip),
            ),
            (
                fields(&[("etag", "\"abc\""), ("cache-control", "no-transform")]),
                fields(&[("accept-encoding", "gzip"), ("if-none-match", "W/\"abc\"")]),
                Plan::AsIs,
            ),
        ];
        for (i, (answer, request, want)) in rows.iter().enumerate() {
            let rep = Representation::of_not_modified(answer, request);
            assert_eq!(Plan::decide(request, &rep), *want, "row {i}: {rep:?}");
        }
    }

    #[test]
    fn a_plan_describes_every_answer_as_the_200_describes_itself() {
        use Encoding::*;
        let strong = "\"abc\"";
        let weak = "W/\"abc\"";
        // Status, plan, then the Content-Encoding, ETag and Vary the answer gets.
        let table: &[(u16, Plan, Option<&str>, &str, bool)] = &[
            (200, Plan::Encode(Br), Some("br"), weak, true),
            (304, Plan::Encode(Br), None, weak, true),
            (206, Plan::Encode(Br), None, strong, true),
            (200, Plan::Identity, None, strong, true),
            (304, Plan::Identity, None, strong, true),
            (206, Plan::Identity, None, strong, true),
            (200, Plan::AsIs, None, strong, false),
            (304, Plan::AsIs, None, strong, false),
            (404, Plan::Encode(Gzip), None, strong, false),
            (412, Plan::Identity, None, strong, false),
        ];
        for &(status, plan, encoding, etag, varies) in table {
            let mut h = HeaderMap::new();
            h.insert(header::ETAG, hv(strong));
            let status = StatusCode::from_u16(status).unwrap();
            plan.describe(status, &mut h);
            let what = format!("{status} {plan:?}");
            let got = h.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap());
            assert_eq!(got, encoding, "{what}");
            assert_eq!(h[header::ETAG], etag, "{what}");
            assert_eq!(h.contains_key(header::VARY), varies, "{what}");
            let body = plan.body_coding(status);
            assert_eq!(body.is_some(), encoding.is_some(), "{what}: body coding");
        }
    }

    #[test]
    fn headers_for_compressed_form() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, hv("5000"));
        h.insert(header::ETAG, hv("\"abc\""));
        h.insert(header::ACCEPT_RANGES, hv("bytes"));
        h.insert(header::VARY, hv("Origin"));
        apply_headers(&mut h, Encoding::Br);
        assert_eq!(h[header::CONTENT_ENCODING], "br");
        assert!(h.get(header::CONTENT_LENGTH).is_none());
        assert!(h.get(header::ACCEPT_RANGES).is_none());
        assert_eq!(h[header::ETAG], "W/\"abc\"");
        let vary: Vec<_> = h.get_all(header::VARY).iter().collect();
        assert_eq!(vary, [hv("Origin"), hv("accept-encoding")]);
        // Idempotent on Vary and weak ETags.
        apply_headers(&mut h, Encoding::Br);
        assert_eq!(h.get_all(header::VARY).iter().count(), 2);
        assert_eq!(h[header::ETAG], "W/\"abc\"");
    }
}

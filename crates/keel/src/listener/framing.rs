//! One thing hyper hides: a request head with both `Content-Length` and `Transfer-Encoding`.
//!
//! hyper frames such a request by `Transfer-Encoding` (RFC 9112 §6.3: the chunked body is the
//! body), drops the `Content-Length` before keel sees the head, and closes the connection
//! after the answer; so nothing is smuggled, but keel cannot refuse the request as the rule it
//! follows asks (400 and close, RFC 9112 §6.1 allows either). [`HeadScan`] watches the bytes
//! of an HTTP/1 connection as hyper reads them, finds each request head and the body that
//! follows it with the same rules as hyper, and records the index of the first head that
//! carried both fields; `http::serve` marks that request, and `request_check` refuses it.
//!
//! The scanner keeps a fixed-size state (no buffering: header values are matched as they
//! stream past) and needs to agree with hyper only on input hyper accepts: whatever it does
//! not understand (an upgrade, a CONNECT, HTTP/2's preface, a malformed chunk) stops it for
//! the rest of the connection, which then keeps hyper's own behaviour. Pure; the I/O wrapper
//! is [`ScannedIo`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A request line longer than this is hyper's to refuse (its head buffer is smaller): the
/// scanner stops following the connection.
const GIVE_UP_LINE_BYTES: usize = 512 * 1024;

/// Longest header name the scanner needs to recognise (`transfer-encoding`).
const NAME_MAX: usize = 17;

/// Where the scanner is in the byte stream.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Before a request line (hyper skips empty lines there too).
    Idle,
    /// In the request line.
    RequestLine(Line),
    /// In the field lines of a head.
    Fields(Line),
    /// In a body of known length: bytes still to come.
    Fixed(u64),
    Chunked(Chunk),
    /// Gave up (or an upgrade took the connection): nothing more is scanned.
    Inert,
}

/// The line being read, and what the head has shown so far.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
struct Line {
    /// The field name (lower-cased, first `NAME_MAX` bytes), or the request line's method.
    name: [u8; NAME_MAX],
    name_len: usize,
    /// Past the colon (or past the method's space).
    in_value: bool,
    /// Bytes of the line so far, CR not counted.
    len: usize,
    /// The request line's last bytes, to check for ` HTTP/1.1` / ` HTTP/1.0`.
    tail: [u8; 9],
    /// The value of a `Transfer-Encoding` or `Content-Length` line as it streams past.
    value: ValueScan,
    head: HeadSeen,
}

/// What the head's field lines have shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct HeadSeen {
    http11: bool,
    /// The method is CONNECT: the connection may become a tunnel.
    connect: bool,
    upgrade: bool,
    content_length: Option<u64>,
    /// A `Content-Length` line was there, valid or not.
    has_content_length: bool,
    has_transfer_encoding: bool,
    /// The last `Transfer-Encoding` line ended in `chunked` (hyper's rule).
    chunked: bool,
}

/// A field value being matched without keeping it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum ValueScan {
    #[default]
    Other,
    /// Digits of a `Content-Length` (`None` once it is not a plain number).
    Length(Option<u64>),
    /// The last comma-separated element of a `Transfer-Encoding`, as far as it can still be
    /// `chunked`: how many of its letters matched, whether white space followed them, and
    /// whether anything else broke the match.
    Coding {
        matched: usize,
        ended: bool,
        spoiled: bool,
    },
}

/// Where a chunked body is (hyper's `ChunkedState`, without the data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: an empty line ends the body, anything else is a trailer.
    EndCr,
    EndLf,
    Trailer,
    TrailerLf,
    /// The body is complete.
    Done,
}

/// Watches one HTTP/1 connection's incoming bytes.
#[derive(Clone, Debug)]
pub struct HeadScan {
    state: State,
    /// Heads completed so far.
    heads: u64,
    /// The first head with both `Content-Length` and `Transfer-Encoding`.
    conflict: Option<u64>,
}

impl Default for HeadScan {
    fn default() -> Self {
        HeadScan {
            state: State::Idle,
            heads: 0,
            conflict: None,
        }
    }
}

impl HeadScan {
    /// The index (0 = the connection's first request) of the first head that carried both
    /// `Content-Length` and `Transfer-Encoding`.
    pub fn conflict(&self) -> Option<u64> {
        self.conflict
    }

    /// Request heads seen so far.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// Feeds the next bytes the connection read.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Inert => return,
                State::Fixed(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.state = State::Idle;
                    }
                }
                State::Chunked(Chunk::Data(left)) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.state = State::Chunked(Chunk::DataCr);
                    }
                }
                _ => {
                    self.byte(bytes[0]);
                    bytes = &bytes[1..];
                }
            }
        }
    }

    fn byte(&mut self, b: u8) {
        let next = match std::mem::replace(&mut self.state, State::Inert) {
            State::Idle => match b {
                b'\r' | b'\n' => State::Idle,
                _ => {
                    let mut line = Line::default();
                    request_line_byte(&mut line, b);
                    State::RequestLine(line)
                }
            },
            State::RequestLine(mut line) => {
                if b == b'\n' {
                    match request_line_end(&mut line) {
                        Some(()) => State::Fields(line),
                        None => State::Inert,
                    }
                } else if line.len > GIVE_UP_LINE_BYTES {
                    State::Inert
                } else {
                    request_line_byte(&mut line, b);
                    State::RequestLine(line)
                }
            }
            State::Fields(mut line) => {
                if b == b'\n' {
                    if line.len == 0 {
                        // An empty line (CR bytes are not counted): the head ends.
                        self.head_end(line.head)
                    } else {
                        field_line_end(&mut line);
                        State::Fields(line)
                    }
                } else {
                    field_byte(&mut line, b);
                    State::Fields(line)
                }
            }
            State::Chunked(c) => match chunk_byte(c, b) {
                Some(Chunk::Done) => State::Idle,
                Some(c) => State::Chunked(c),
                None => State::Inert,
            },
            // Handled in bulk by `feed`.
            s @ (State::Fixed(_) | State::Inert) => s,
        };
        self.state = next;
    }

    fn head_end(&mut self, head: HeadSeen) -> State {
        let index = self.heads;
        self.heads += 1;
        if head.has_content_length && head.has_transfer_encoding {
            self.conflict.get_or_insert(index);
            // hyper closes the connection after this request: nothing more to watch.
            return State::Inert;
        }
        if head.connect || head.upgrade {
            return State::Inert;
        }
        if head.has_transfer_encoding {
            return if head.chunked && head.http11 {
                State::Chunked(Chunk::Start)
            } else {
                State::Inert // hyper refuses the head
            };
        }
        match head.content_length {
            Some(0) => State::Idle,
            Some(n) => State::Fixed(n),
            None if head.has_content_length => State::Inert, // hyper refuses the head
            None => State::Idle,
        }
    }
}

fn request_line_byte(line: &mut Line, b: u8) {
    line.len += 1;
    if !line.in_value {
        if b == b' ' {
            line.in_value = true;
        } else if line.name_len < NAME_MAX {
            line.name[line.name_len] = b;
            line.name_len += 1;
        }
    }
    if b != b'\r' {
        line.tail.rotate_left(1);
        line.tail[8] = b;
    }
}

/// The request line is done: HTTP/1.0 or HTTP/1.1, or the scanner stops.
fn request_line_end(line: &mut Line) -> Option<()> {
    let http11 = match &line.tail {
        b" HTTP/1.1" => true,
        b" HTTP/1.0" => false,
        _ => return None,
    };
    let head = HeadSeen {
        http11,
        connect: line.name[..line.name_len] == *b"CONNECT",
        ..HeadSeen::default()
    };
    *line = Line {
        head,
        ..Line::default()
    };
    Some(())
}

fn field_byte(line: &mut Line, b: u8) {
    // A CR ends the line (the LF follows) or is one hyper refuses: either way it changes
    // nothing here.
    if b == b'\r' {
        return;
    }
    line.len += 1;
    if !line.in_value {
        if b == b':' {
            line.in_value = true;
            line.value = match &line.name[..line.name_len] {
                b"content-length" => ValueScan::Length(None),
                b"transfer-encoding" => ValueScan::Coding {
                    matched: 0,
                    ended: false,
                    spoiled: false,
                },
                _ => ValueScan::Other,
            };
            // A name longer than the buffer is none of those.
            if line.len > NAME_MAX + 1 {
                line.value = ValueScan::Other;
            }
        } else if line.name_len < NAME_MAX {
            line.name[line.name_len] = b.to_ascii_lowercase();
            line.name_len += 1;
        }
        return;
    }
    line.value = match line.value {
        ValueScan::Other => ValueScan::Other,
        ValueScan::Length(n) => match b {
            b'0'..=b'9' => {
                let digit = u64::from(b - b'0');
                // `Some(u64::MAX)` marks "not a number" (hyper refuses it anyway).
                let n = n.unwrap_or(0);
                if n == u64::MAX {
                    ValueScan::Length(Some(u64::MAX))
                } else {
                    ValueScan::Length(Some(
                        n.checked_mul(10)
                            .and_then(|n| n.checked_add(digit))
                            .unwrap_or(u64::MAX),
                    ))
                }
            }
            b' ' | b'\t' => ValueScan::Length(n),
            _ => ValueScan::Length(Some(u64::MAX)),
        },
        ValueScan::Coding {
            matched,
            ended,
            spoiled,
        } => match b {
            b',' => ValueScan::Coding {
                matched: 0,
                ended: false,
                spoiled: false,
            },
            b' ' | b'\t' => ValueScan::Coding {
                matched,
                ended: matched > 0,
                spoiled,
            },
            _ if !spoiled
                && !ended
                && matched < 7
                && b.to_ascii_lowercase() == b"chunked"[matched] =>
            {
                ValueScan::Coding {
                    matched: matched + 1,
                    ended,
                    spoiled,
                }
            }
            _ => ValueScan::Coding {
                matched,
                ended,
                spoiled: true,
            },
        },
    };
}

fn field_line_end(line: &mut Line) {
    match line.value {
        ValueScan::Length(n) => {
            if line.head.has_content_length && line.head.content_length != n {
                line.head.content_length = Some(u64::MAX); // differing: hyper refuses
            } else {
                line.head.content_length = n;
            }
            line.head.has_content_length = true;
        }
        ValueScan::Coding {
            matched, spoiled, ..
        } => {
            line.head.has_transfer_encoding = true;
            line.head.chunked = matched == 7 && !spoiled;
        }
        ValueScan::Other => {
            if line.in_value && line.name[..line.name_len] == *b"upgrade" && line.name_len == 7 {
                line.head.upgrade = true;
            }
        }
    }
    if line.head.content_length == Some(u64::MAX) {
        line.head.content_length = None;
    }
    let head = line.head;
    *line = Line {
        head,
        ..Line::default()
    };
}

/// One byte of a chunked body's framing; `None` where hyper would fail the body.
fn chunk_byte(c: Chunk, b: u8) -> Option<Chunk> {
    let hex = |b: u8| (b as char).to_digit(16).map(u64::from);
    Some(match c {
        Chunk::Start => Chunk::Size(hex(b)?),
        Chunk::Size(n) => match b {
            b' ' | b'\t' => Chunk::SizeLws(n),
            b';' => Chunk::Extension(n),
            b'\r' => Chunk::SizeLf(n),
            _ => Chunk::Size(n.checked_mul(16)?.checked_add(hex(b)?)?),
        },
        Chunk::SizeLws(n) => match b {
            b' ' | b'\t' => Chunk::SizeLws(n),
            b';' => Chunk::Extension(n),
            b'\r' => Chunk::SizeLf(n),
            _ => return None,
        },
        Chunk::Extension(n) => match b {
            b'\r' => Chunk::SizeLf(n),
            b'\n' => return None,
            _ => Chunk::Extension(n),
        },
        Chunk::SizeLf(n) => match (b, n) {
            (b'\n', 0) => Chunk::EndCr,
            (b'\n', n) => Chunk::Data(n),
            _ => return None,
        },
        // Skipped in bulk by `feed`; nothing follows the end.
        Chunk::Data(_) | Chunk::Done => return None,
        Chunk::DataCr if b == b'\r' => Chunk::DataLf,
        Chunk::DataLf if b == b'\n' => Chunk::Start,
        Chunk::DataCr | Chunk::DataLf => return None,
        Chunk::EndCr => match b {
            b'\r' => Chunk::EndLf,
            _ => Chunk::Trailer,
        },
        Chunk::EndLf if b == b'\n' => Chunk::Done,
        Chunk::EndLf => return None,
        Chunk::Trailer => match b {
            b'\r' => Chunk::TrailerLf,
            _ => Chunk::Trailer,
        },
        Chunk::TrailerLf if b == b'\n' => Chunk::EndCr,
        Chunk::TrailerLf => return None,
    })
}

/// What the connection task and its requests share: the first conflicting head's index.
#[derive(Debug)]
pub struct Conflict(AtomicU64);

impl Default for Conflict {
    fn default() -> Self {
        Conflict(AtomicU64::new(u64::MAX))
    }
}

impl Conflict {
    /// Whether the connection's request number `index` (0-based) had both fields.
    pub fn is(&self, index: u64) -> bool {
        self.0.load(Ordering::Acquire) == index
    }
}

/// An HTTP/1 connection's stream, with its incoming bytes shown to a [`HeadScan`].
pub struct ScannedIo<T> {
    inner: T,
    scan: HeadScan,
    conflict: Arc<Conflict>,
}

impl<T> ScannedIo<T> {
    pub fn new(inner: T) -> (Self, Arc<Conflict>) {
        let conflict = Arc::new(Conflict::default());
        let io = ScannedIo {
            inner,
            scan: HeadScan::default(),
            conflict: conflict.clone(),
        };
        (io, conflict)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ScannedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let had = this.scan.conflict();
            this.scan.feed(&buf.filled()[before..]);
            if had.is_none()
                && let Some(index) = this.scan.conflict()
            {
                this.conflict.0.store(index, Ordering::Release);
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ScannedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conflict found in `input`, fed whole and then one byte at a time (the two must
    /// agree: a head split across reads is the same head).
    fn conflict(input: &[u8]) -> Option<u64> {
        let mut whole = HeadScan::default();
        whole.feed(input);
        let mut bytes = HeadScan::default();
        for b in input {
            bytes.feed(std::slice::from_ref(b));
        }
        assert_eq!(whole.conflict(), bytes.conflict(), "{input:?}");
        assert_eq!(whole.heads, bytes.heads);
        whole.conflict()
    }

    fn heads(input: &[u8]) -> u64 {
        let mut s = HeadScan::default();
        s.feed(input);
        s.heads
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    const CL_TE: &[u8] =
        b"POST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX";

    #[test]
    fn both_fields_in_either_order_and_any_case() {
        assert_eq!(conflict(CL_TE), Some(0));
        assert_eq!(
            conflict(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n"),
            Some(0)
        );
        assert_eq!(
            conflict(b"POST / HTTP/1.1\nCONTENT-LENGTH: 3\nTransfer-Encoding: gzip, chunked\n\n"),
            Some(0)
        );
        // An invalid Content-Length hyper ignores behind Transfer-Encoding counts too.
        assert_eq!(
            conflict(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n"),
            Some(0)
        );
    }

    #[test]
    fn one_field_alone_is_no_conflict() {
        assert_eq!(conflict(GET), None);
        assert_eq!(
            conflict(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
            None
        );
        assert_eq!(
            conflict(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            None
        );
        // Names that only start like the two.
        assert_eq!(
            conflict(
                b"POST / HTTP/1.1\r\nContent-Length-X: 5\r\nTransfer-Encodings: chunked\r\n\r\n"
            ),
            None
        );
    }

    #[test]
    fn the_index_counts_the_heads_before_it() {
        let mut input = Vec::new();
        input.extend_from_slice(b"\r\n");
        input.extend_from_slice(GET);
        input.extend_from_slice(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
        input.extend_from_slice(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\n",
        );
        input.extend_from_slice(b"GET / HTTP/1.0\nHost: x\n\n");
        assert_eq!(heads(&input), 4);
        input.extend_from_slice(CL_TE);
        assert_eq!(conflict(&input), Some(4));
    }

    #[test]
    fn bodies_are_not_read_as_heads() {
        let fake = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut fixed =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", fake.len()).into_bytes();
        fixed.extend_from_slice(fake);
        fixed.extend_from_slice(GET);
        assert_eq!(conflict(&fixed), None);
        assert_eq!(heads(&fixed), 2);
        let mut chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        chunked.extend_from_slice(format!("{:x}\r\n", fake.len()).as_bytes());
        chunked.extend_from_slice(fake);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        chunked.extend_from_slice(GET);
        assert_eq!(conflict(&chunked), None);
        assert_eq!(heads(&chunked), 2);
    }

    #[test]
    fn what_it_does_not_understand_stops_it() {
        for input in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
        ] {
            let mut s = HeadScan::default();
            s.feed(input);
            assert_eq!(
                s.state,
                State::Inert,
                "{:?}",
                String::from_utf8_lossy(input)
            );
            s.feed(CL_TE);
            assert_eq!(s.conflict(), None);
        }
    }
}

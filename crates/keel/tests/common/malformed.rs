//! The malformed-request table (`tests/fixtures/malformed.txt`): its cases, and what a server
//! answers to each on a raw socket. Shared by `tests/hardening.rs` and `bench/malformed`
//! (through that test binary), so keel and nginx are asked exactly the same bytes.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One case of the table.
pub struct Case {
    pub name: String,
    /// keel's expected answers (any one of them).
    pub want: Vec<String>,
    pub raw: Vec<u8>,
}

/// Every case of the table, in file order.
pub fn cases() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/malformed.txt");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(n, l)| {
            let mut parts = l.splitn(3, " | ");
            let (Some(name), Some(want), Some(raw)) = (parts.next(), parts.next(), parts.next())
            else {
                panic!("malformed.txt:{}: want `name | answer | request`", n + 1);
            };
            Case {
                name: name.trim().to_owned(),
                want: want.split(" or ").map(|w| w.trim().to_owned()).collect(),
                raw: unescape(raw).unwrap_or_else(|e| panic!("malformed.txt:{}: {e}", n + 1)),
            }
        })
        .collect()
}

/// `\r \n \t \0 \\ \xHH` and `{N*text}`.
fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        out.extend(unescape_plain(&rest[..open])?);
        let close = rest[open..].find('}').ok_or("unclosed {")? + open;
        let (n, text) = rest[open + 1..close]
            .split_once('*')
            .ok_or("{N*text} needs a *")?;
        let n: usize = n.parse().map_err(|_| format!("bad repeat count {n:?}"))?;
        let unit = unescape_plain(text)?;
        for _ in 0..n {
            out.extend_from_slice(&unit);
        }
        rest = &rest[close + 1..];
    }
    out.extend(unescape_plain(rest)?);
    Ok(out)
}

fn unescape_plain(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        out.push(match bytes.next() {
            Some(b'r') => b'\r',
            Some(b'n') => b'\n',
            Some(b't') => b'\t',
            Some(b'0') => 0,
            Some(b'\\') => b'\\',
            Some(b'x') => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                let hex = std::str::from_utf8(&hex).map_err(|e| e.to_string())?;
                u8::from_str_radix(hex, 16).map_err(|_| format!("bad \\x{hex}"))?
            }
            other => return Err(format!("unknown escape \\{:?}", other.map(char::from))),
        });
    }
    Ok(out)
}

/// Sends `raw` on a new connection and tells what came back: each response's status, then
/// `close` or `open` (see the file's header).
pub fn answer(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    // A server that answers early and closes may refuse the rest of a long write, or reset
    // the connection: what it sent before is still read below.
    let _ = s.write_all(raw);
    let mut got = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 16 * 1024];
    let end = loop {
        // Up to 10 s for a first answer (a worker may be starting); then a second of quiet
        // after a complete answer means the connection stays open.
        let quiet = if statuses(&got).1 {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10).saturating_sub(start.elapsed())
        };
        if quiet.is_zero() {
            break "open";
        }
        s.set_read_timeout(Some(quiet)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => break "close",
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break "open";
            }
            Err(_) => break "close",
        }
    };
    let mut words: Vec<String> = statuses(&got).0.iter().map(u16::to_string).collect();
    words.push(end.to_owned());
    words.join(" ")
}

/// The statuses of the complete responses in `bytes`, and whether `bytes` ends right after
/// a complete response.
fn statuses(bytes: &[u8]) -> (Vec<u16>, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(len) = response_len(&bytes[at..]) else {
            // A partial (or unreadable) response: its status, if it has one, still counts.
            if let Some(status) = status_of(&bytes[at..]) {
                out.push(status);
            }
            return (out, false);
        };
        out.push(status_of(&bytes[at..]).unwrap_or(0));
        at += len;
    }
    let complete = !out.is_empty();
    (out, complete)
}

fn status_of(bytes: &[u8]) -> Option<u16> {
    let line = bytes.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// The length of the complete response at the front of `bytes`.
fn response_len(bytes: &[u8]) -> Option<usize> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&bytes[..head_end]).ok()?;
    let status = status_of(bytes)?;
    let field = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    if status < 200 || status == 204 || status == 304 {
        return Some(head_end);
    }
    if let Some(len) = field("content-length") {
        let len: usize = len.parse().ok()?;
        return (bytes.len() >= head_end + len).then_some(head_end + len);
    }
    if field("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut at = head_end;
        loop {
            let line_end = bytes[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size = std::str::from_utf8(&bytes[at..line_end]).ok()?;
            let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2 + size + 2;
            if bytes.len() < at {
                return None;
            }
            if size == 0 {
                return Some(at);
            }
        }
    }
    // Delimited by the close: complete only once the connection has ended.
    None
}

/// Whether `got` is one of `want` (a reset reads as a close).
pub fn matches(want: &[String], got: &str) -> bool {
    want.iter().any(|w| w == got)
}

//! A worker that breaks the protocol on request, for the daemon's tests: it speaks keel's
//! worker protocol itself (with `keel-proto`, blocking, one request at a time), answers every
//! path with `200` and its pid, except these, which first send STARTED (the request counts as
//! started, so the daemon answers the client 502 instead of replaying it) and then:
//!
//! - `/hostile/oversized`: a frame header announcing a payload one byte over the daemon's
//!   `max_payload`;
//! - `/hostile/unknown-id`: a DATA frame for a stream the daemon never opened;
//! - `/hostile/header-cr`, `/hostile/header-lf`, `/hostile/header-nul`: a RESPONSE whose
//!   header value holds a CR, a LF or a NUL (response splitting);
//! - `/hostile/after-own-abort`: ABORT, then a RESPONSE on the stream it just ended;
//! - `/hostile/after-abort`: nothing, until the daemon's ABORT (the client went away); then
//!   ABORT and a RESPONSE on the stream that ended;
//! - `/hostile/garbage`: bytes that are no frame (an unknown frame kind);
//! - `/slow?ms=N`: sleeps N ms, then answers (holding its one slot: the pool's other worker
//!   takes the next request).

use bytes::{Bytes, BytesMut};
use keel_proto::{
    AbortCode, CachePolicy, DEFAULT_MAX_PAYLOAD, Decoder, Frame, Hello, PROTOCOL_VERSION,
    ResponseHead, StreamId, encode,
};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn main() {
    let socket = match keel_worker::Worker::from_env() {
        Ok(worker) => worker
            .into_stream()
            .expect("from_env gives a socket, never an in-memory pipe"),
        Err(e) => {
            eprintln!("keel-hostile-worker: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = serve(socket) {
        eprintln!("keel-hostile-worker: {e}");
        std::process::exit(1);
    }
}

fn serve(mut socket: UnixStream) -> std::io::Result<()> {
    send(
        &mut socket,
        &Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
            capacity: 1,
            max_payload: DEFAULT_MAX_PAYLOAD,
            software: Bytes::from_static(b"keel-hostile-worker"),
        }),
    )?;
    let decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut daemon_max_payload = DEFAULT_MAX_PAYLOAD;
    // The stream waiting for the daemon's ABORT (`/hostile/after-abort`).
    let mut awaiting_abort: Option<StreamId> = None;
    loop {
        let frame = loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => break frame,
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = socket.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        match frame {
            Frame::Welcome(w) => daemon_max_payload = w.max_payload,
            Frame::Ping { nonce } => send(&mut socket, &Frame::Pong { nonce })?,
            Frame::Drain { .. } => return Ok(()),
            Frame::Abort { id, .. } if awaiting_abort == Some(id) => {
                awaiting_abort = None;
                send(
                    &mut socket,
                    &Frame::Abort {
                        id,
                        code: AbortCode::HandlerFailed,
                    },
                )?;
                send(&mut socket, &ok(id))?;
            }
            Frame::Request(head) => {
                let target = String::from_utf8_lossy(&head.target).into_owned();
                let id = head.id;
                let path = target.split('?').next().unwrap_or("");
                if let Some(mode) = path.strip_prefix("/hostile/") {
                    send(&mut socket, &Frame::Started { id })?;
                    if mode == "after-abort" {
                        awaiting_abort = Some(id);
                    } else {
                        misbehave(&mut socket, mode, id, daemon_max_payload)?;
                    }
                    continue;
                }
                if path == "/slow" {
                    let ms = target
                        .split("ms=")
                        .nth(1)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1000);
                    std::thread::sleep(Duration::from_millis(ms));
                }
                send(&mut socket, &ok(id))?;
            }
            _ => {}
        }
    }
}

/// What each `/hostile/` mode sends after STARTED.
fn misbehave(
    socket: &mut UnixStream,
    mode: &str,
    id: StreamId,
    max_payload: u32,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    match mode {
        "oversized" => {
            // DATA, announcing one byte more than the daemon takes, and a little of it.
            out.extend_from_slice(&(max_payload + 1).to_be_bytes());
            out.extend_from_slice(&[0x04, 0, 0, 0]);
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&[b'x'; 1024]);
        }
        "unknown-id" => {
            let other = id ^ 0x4000_0000;
            out.extend_from_slice(&frame_bytes(&Frame::Data {
                id: other,
                data: Bytes::from_static(b"not yours"),
                end: true,
            }));
        }
        "header-cr" | "header-lf" | "header-nul" => {
            let bad: &[u8] = match mode {
                "header-cr" => b"\r",
                "header-lf" => b"\n",
                _ => b"\0",
            };
            // keel-proto refuses to encode such a value: encode a placeholder, then patch it.
            let resp = ResponseHead {
                id,
                status: 200,
                cache: CachePolicy::None,
                headers: vec![(
                    Bytes::from_static(b"x-split"),
                    Bytes::from_static(b"a#Set-Cookie: stolen=1"),
                )],
                body: Bytes::from_static(b"split\n"),
                end: true,
            };
            let mut bytes = frame_bytes(&Frame::Response(resp));
            let at = bytes
                .windows(2)
                .position(|w| w == b"a#")
                .expect("placeholder")
                + 1;
            bytes[at] = bad[0];
            out.extend_from_slice(&bytes);
        }
        "after-own-abort" => {
            out.extend_from_slice(&frame_bytes(&Frame::Abort {
                id,
                code: AbortCode::HandlerFailed,
            }));
            out.extend_from_slice(&frame_bytes(&ok(id)));
        }
        "garbage" => {
            // Length 8, kind 0x7f (no such frame), then eight bytes of payload.
            out.extend_from_slice(&[0, 0, 0, 8, 0x7f, 0xff, 0, 0, 0x41, 0x41, 0x41, 0x41]);
            out.extend_from_slice(b"garbage!");
        }
        _ => out.extend_from_slice(&frame_bytes(&ok(id))),
    }
    socket.write_all(&out)
}

/// `200`, the pid as the body.
fn ok(id: StreamId) -> Frame {
    Frame::Response(ResponseHead {
        id,
        status: 200,
        cache: CachePolicy::None,
        headers: vec![(
            Bytes::from_static(b"content-type"),
            Bytes::from_static(b"text/plain"),
        )],
        body: Bytes::from(format!("{}\n", std::process::id())),
        end: true,
    })
}

fn frame_bytes(frame: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    encode(frame, &mut out).expect("a frame keel-proto can encode");
    out
}

fn send(socket: &mut UnixStream, frame: &Frame) -> std::io::Result<()> {
    socket.write_all(&frame_bytes(frame))
}

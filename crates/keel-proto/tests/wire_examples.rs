//! The worked examples of `docs/worker-protocol.md`, pinned byte for byte. If one of these
//! fails, the wire format changed: update the document (and bump the protocol version).
//!
//! `cargo test -p keel-proto --test wire_examples -- --nocapture` prints the hex dumps.
//! `cargo test -p keel-proto --test wire_examples -- --ignored` rewrites the fuzz seed corpus
//! in `fuzz/corpus/frame_decoder/`.

use bytes::{Bytes, BytesMut};
use keel_proto::*;
use std::net::SocketAddr;

fn hello() -> Frame {
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        pid: 4242,
        capacity: 8,
        max_payload: DEFAULT_MAX_PAYLOAD,
        software: Bytes::from_static(b"demo"),
    })
}

fn welcome() -> Frame {
    Frame::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        max_payload: DEFAULT_MAX_PAYLOAD,
        initial_window: DEFAULT_INITIAL_WINDOW,
        capacity: 4,
        pool: Bytes::from_static(b"app"),
    })
}

fn request() -> Frame {
    Frame::Request(RequestHead {
        id: 1,
        method: Bytes::from_static(b"GET"),
        target: Bytes::from_static(b"/"),
        version: HttpVersion::Http11,
        tls: false,
        server_name: Bytes::new(),
        client: Some("127.0.0.1:40000".parse::<SocketAddr>().unwrap()),
        local: Some("127.0.0.1:8080".parse::<SocketAddr>().unwrap()),
        deadline_ms: 30_000,
        headers: vec![(Bytes::from_static(b"host"), Bytes::from_static(b"example"))],
        body: Bytes::new(),
        end: true,
    })
}

fn response() -> Frame {
    Frame::Response(ResponseHead {
        id: 1,
        status: 200,
        cache: CachePolicy::None,
        headers: vec![(
            Bytes::from_static(b"content-type"),
            Bytes::from_static(b"text/plain"),
        )],
        body: Bytes::from_static(b"Hello"),
        end: true,
    })
}

fn bytes_of(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(frame, &mut out).unwrap();
    out.to_vec()
}

/// `xxd`-like: offset, 16 bytes in hex.
fn dump(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        s.push_str(&format!("{:04x}:", i * 16));
        for b in line {
            s.push_str(&format!(" {b:02x}"));
        }
        s.push('\n');
    }
    s
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check(name: &str, frame: Frame, expected: &str) {
    let bytes = bytes_of(&frame);
    println!("{name} ({} bytes):\n{}", bytes.len(), dump(&bytes));
    assert_eq!(hex(&bytes), expected.replace(' ', ""), "{name}");
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(Decoder::default().decode(&mut buf).unwrap(), Some(frame));
    assert!(buf.is_empty());
}

#[test]
fn hello_bytes() {
    check(
        "HELLO",
        hello(),
        "00000014 01 00 0000 00000000 \
         0001 00001092 00000008 00100000 0004 64656d6f",
    );
}

#[test]
fn welcome_bytes() {
    check(
        "WELCOME",
        welcome(),
        "00000013 02 00 0000 00000000 \
         0001 00100000 00040000 00000004 0003 617070",
    );
}

#[test]
fn request_bytes() {
    check(
        "REQUEST",
        request(),
        "0000002f 03 01 0000 00000001 \
         0b 00 00007530 0003 474554 0001 2f 0000 \
         04 7f000001 9c40 04 7f000001 1f90 \
         0001 0004 686f7374 0007 6578616d706c65",
    );
}

#[test]
fn response_bytes() {
    check(
        "RESPONSE",
        response(),
        "00000028 06 01 0000 00000001 \
         00c8 00 00000000 0001 000c 636f6e74656e742d74797065 000a 746578742f706c61696e \
         48656c6c6f",
    );
}

#[test]
fn end_bytes() {
    check(
        "DATA (End)",
        Frame::Data {
            id: 1,
            data: Bytes::new(),
            end: true,
        },
        "00000000 04 01 0000 00000001",
    );
}

/// Writes the fuzz seed corpus (valid frames, one file each plus one conversation).
#[test]
#[ignore]
fn write_fuzz_seed_corpus() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/frame_decoder");
    std::fs::create_dir_all(&dir).unwrap();
    let others = [
        ("started", Frame::Started { id: 1 }),
        (
            "window",
            Frame::Window {
                id: 1,
                increment: 65536,
            },
        ),
        (
            "ping",
            Frame::Ping {
                nonce: 0x0123_4567_89ab_cdef,
            },
        ),
        ("pong", Frame::Pong { nonce: 7 }),
        ("drain", Frame::Drain { timeout_ms: 90_000 }),
        (
            "abort",
            Frame::Abort {
                id: 1,
                code: AbortCode::HandlerFailed,
            },
        ),
        (
            "invalidate",
            Frame::Invalidate {
                scope: InvalidateScope::Prefix,
                url: Bytes::from_static(b"/news/"),
            },
        ),
        (
            "data",
            Frame::Data {
                id: 1,
                data: Bytes::from_static(b"chunk of body"),
                end: false,
            },
        ),
    ];
    let mut all = Vec::new();
    for (name, frame) in [
        ("hello", hello()),
        ("welcome", welcome()),
        ("request", request()),
        ("response", response()),
    ]
    .into_iter()
    .chain(others)
    {
        let b = bytes_of(&frame);
        std::fs::write(dir.join(name), &b).unwrap();
        all.extend_from_slice(&b);
    }
    // A whole exchange on one stream: request with a streamed body, started, response, data, end.
    let mut conv = Vec::new();
    for frame in [
        hello(),
        welcome(),
        Frame::Request(RequestHead {
            id: 3,
            method: Bytes::from_static(b"POST"),
            target: Bytes::from_static(b"/upload?x=1"),
            version: HttpVersion::Http2,
            tls: true,
            server_name: Bytes::from_static(b"example.org"),
            client: Some("[2001:db8::1]:5000".parse().unwrap()),
            local: Some("[::1]:443".parse().unwrap()),
            deadline_ms: 0,
            headers: vec![(
                Bytes::from_static(b"content-length"),
                Bytes::from_static(b"8"),
            )],
            body: Bytes::from_static(b"abcd"),
            end: false,
        }),
        Frame::Data {
            id: 3,
            data: Bytes::from_static(b"efgh"),
            end: true,
        },
        Frame::Started { id: 3 },
        Frame::Window {
            id: 3,
            increment: 8,
        },
        Frame::Response(ResponseHead {
            id: 3,
            status: 201,
            cache: CachePolicy::Ttl(60),
            headers: vec![],
            body: Bytes::from_static(b"ok"),
            end: false,
        }),
        Frame::Data {
            id: 3,
            data: Bytes::from_static(b"!"),
            end: false,
        },
        Frame::Data {
            id: 3,
            data: Bytes::new(),
            end: true,
        },
    ] {
        conv.extend_from_slice(&bytes_of(&frame));
    }
    std::fs::write(dir.join("conversation"), &conv).unwrap();
    std::fs::write(dir.join("all_kinds"), &all).unwrap();
}

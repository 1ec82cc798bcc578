//! A worker keel did not start joins a pool through its attach socket: the SDK sends the
//! `KEEL-ATTACH <token>` line, then speaks the protocol exactly as a spawned worker does.

mod fake_daemon;

use bytes::{Bytes, BytesMut};
use keel_proto::{DEFAULT_MAX_PAYLOAD, Decoder, Frame, PROTOCOL_VERSION, Welcome, encode};
use keel_worker::{Body, Worker};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

const TOKEN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

#[tokio::test]
async fn the_preamble_is_sent_before_hello() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.sock");
    let listener = UnixListener::bind(&path).unwrap();

    // Upper case and surrounding white space (a token file read as is) are accepted.
    let worker = Worker::attach(&path, &format!("  {}\n", TOKEN.to_uppercase())).unwrap();
    let serving =
        tokio::spawn(worker.capacity(2).serve(|_req: http::Request<Body>| async {
            http::Response::new(Body::from("attached"))
        }));

    let (mut socket, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let preamble = format!("KEEL-ATTACH {TOKEN}\n");
    let decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
    let mut buf = BytesMut::new();
    // Read until the preamble and a whole frame after it are in.
    let hello = loop {
        if buf.len() >= preamble.len() {
            assert_eq!(&buf[..preamble.len()], preamble.as_bytes());
            let mut rest = BytesMut::from(&buf[preamble.len()..]);
            if let Some(frame) = decoder.decode(&mut rest).unwrap() {
                break frame;
            }
        } else {
            assert!(preamble.as_bytes().starts_with(&buf), "{buf:?}");
        }
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read_buf(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the worker closed the connection");
    };
    let Frame::Hello(hello) = hello else {
        panic!("the frame after the preamble is not HELLO: {hello:?}");
    };
    assert_eq!(hello.capacity, 2);
    assert_eq!(hello.pid, std::process::id());

    // From here on it is the ordinary protocol.
    let mut out = BytesMut::new();
    encode(
        &Frame::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            max_payload: DEFAULT_MAX_PAYLOAD,
            initial_window: 1 << 18,
            capacity: 2,
            pool: Bytes::from_static(b"attached"),
        }),
        &mut out,
    )
    .unwrap();
    encode(&fake_daemon::request(1, "GET", "/", b"", true), &mut out).unwrap();
    socket.write_all(&out).await.unwrap();
    let mut buf = BytesMut::from(&buf[preamble.len()..]);
    assert!(matches!(
        decoder.decode(&mut buf).unwrap(),
        Some(Frame::Hello(_))
    ));
    let mut frames = Vec::new();
    while frames.len() < 2 {
        if let Some(frame) = decoder.decode(&mut buf).unwrap() {
            frames.push(frame);
            continue;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read_buf(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the worker closed the connection");
    }
    assert_eq!(frames[0], Frame::Started { id: 1 });
    let Frame::Response(head) = &frames[1] else {
        panic!("expected RESPONSE, got {:?}", frames[1]);
    };
    assert_eq!(head.status, 200);
    assert_eq!(&head.body[..], b"attached");

    drop(socket);
    let ended = tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .unwrap()
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
}

#[test]
fn a_refused_connection_is_reported_when_nothing_listens() {
    let dir = tempfile::tempdir().unwrap();
    let err = Worker::attach(&dir.path().join("worker.sock"), TOKEN).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("cannot attach to keel at"), "{text}");
    assert!(text.contains("worker.sock"), "{text}");
}

//! A stand-in for the keel daemon: it holds the other end of a `socketpair` (or of an
//! in-memory pipe, as keel's in-process HTTP adapter uses), speaks the
//! worker protocol frame by frame, and lets a test say exactly what the daemon sends and
//! check exactly what the worker answers.

#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use keel_proto::{
    DEFAULT_MAX_PAYLOAD, Decoder, Frame, Hello, HttpVersion, PROTOCOL_VERSION, RequestHead,
    ResponseHead, Welcome, encode,
};
use keel_worker::{Error, Worker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

/// The daemon's end of the connection.
trait Link: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Link for T {}

/// How long a test waits for a frame it expects.
const PATIENCE: Duration = Duration::from_secs(5);

pub struct FakeDaemon {
    socket: Box<dyn Link>,
    decoder: Decoder,
    buf: BytesMut,
    /// The worker's `serve`, running in this process.
    pub worker: JoinHandle<Result<(), Error>>,
    pub hello: Hello,
}

impl FakeDaemon {
    /// Starts a worker running `start` on one end of a socketpair and completes the
    /// handshake with `initial_window`.
    pub async fn start<F, Fut>(initial_window: u32, start: F) -> FakeDaemon
    where
        F: FnOnce(Worker) -> Fut,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let ours = Box::new(UnixStream::from_std(ours).unwrap());
        FakeDaemon::handshake(ours, Worker::from_stream(theirs), initial_window, start).await
    }

    /// As [`FakeDaemon::start`], over an in-memory pipe ([`Worker::in_memory`]).
    pub async fn start_in_memory<F, Fut>(initial_window: u32, start: F) -> FakeDaemon
    where
        F: FnOnce(Worker) -> Fut,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        FakeDaemon::handshake(
            Box::new(ours),
            Worker::in_memory(theirs),
            initial_window,
            start,
        )
        .await
    }

    async fn handshake<F, Fut>(
        socket: Box<dyn Link>,
        worker: Worker,
        initial_window: u32,
        start: F,
    ) -> FakeDaemon
    where
        F: FnOnce(Worker) -> Fut,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let worker = tokio::spawn(start(worker.capacity(8)));
        let mut daemon = FakeDaemon {
            socket,
            decoder: Decoder::new(DEFAULT_MAX_PAYLOAD),
            buf: BytesMut::new(),
            worker,
            hello: Hello {
                version: 0,
                pid: 0,
                capacity: 0,
                max_payload: 0,
                software: Bytes::new(),
            },
        };
        let Frame::Hello(hello) = daemon.recv().await else {
            panic!("the worker's first frame is not HELLO");
        };
        daemon.hello = hello;
        daemon
            .send(Frame::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                max_payload: DEFAULT_MAX_PAYLOAD,
                initial_window,
                capacity: 8,
                pool: Bytes::from_static(b"test"),
            }))
            .await;
        daemon
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        encode(&frame, &mut out).unwrap();
        self.socket.write_all(&out).await.unwrap();
    }

    /// The next frame from the worker; panics if none comes in time.
    pub async fn recv(&mut self) -> Frame {
        match self.recv_within(PATIENCE).await {
            Some(frame) => frame,
            None => panic!("no frame from the worker within {PATIENCE:?}"),
        }
    }

    /// The next frame from the worker, or `None` if it sends nothing for `quiet`.
    pub async fn recv_within(&mut self, quiet: Duration) -> Option<Frame> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf).unwrap() {
                return Some(frame);
            }
            self.buf.reserve(64 * 1024);
            match tokio::time::timeout(quiet, self.socket.read_buf(&mut self.buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) => panic!("the worker closed the connection"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("reading from the worker: {e}"),
            }
        }
    }

    /// Receives STARTED then the RESPONSE head of stream `id`.
    pub async fn expect_started_response(&mut self, id: u32) -> ResponseHead {
        assert_eq!(self.recv().await, Frame::Started { id });
        match self.recv().await {
            Frame::Response(head) if head.id == id => head,
            other => panic!("expected RESPONSE for stream {id}, got {other:?}"),
        }
    }

    /// Closes the daemon's end, as a daemon that died would.
    pub fn hang_up(self) -> JoinHandle<Result<(), Error>> {
        self.worker
    }
}

/// A REQUEST frame for `method target` carrying `body` inline.
pub fn request(id: u32, method: &str, target: &str, body: &[u8], end: bool) -> Frame {
    Frame::Request(RequestHead {
        id,
        method: Bytes::copy_from_slice(method.as_bytes()),
        target: Bytes::copy_from_slice(target.as_bytes()),
        version: HttpVersion::Http11,
        tls: false,
        server_name: Bytes::new(),
        client: Some("127.0.0.1:40000".parse().unwrap()),
        local: Some("127.0.0.1:8080".parse().unwrap()),
        deadline_ms: 0,
        headers: vec![(
            Bytes::from_static(b"host"),
            Bytes::from_static(b"example.test"),
        )],
        body: Bytes::copy_from_slice(body),
        end,
    })
}

/// Bytes that show where they came from when an echo goes wrong.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

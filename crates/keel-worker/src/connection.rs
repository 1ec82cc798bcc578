//! One worker connection from HELLO to its end: the handshake, the reading loop that
//! dispatches the daemon's frames, and the shutdown (drain finished, or daemon gone).
//!
//! Invariant: the reading loop never waits on a request. It answers PING at once, hands body
//! bytes to unbounded channels (bounded in practice by the window this side granted), and
//! spawns one task per request.

use crate::body::Body;
use crate::conn::{Conn, StreamEntry};
use crate::error::Error;
use crate::response::BoxError;
use crate::{handler, request, writer};
use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::Body as HttpBody;
use keel_proto::{
    AbortCode, DEFAULT_MAX_PAYLOAD, Decoder, Frame, Hello, PROTOCOL_VERSION, RequestHead,
    ResponsePhase, Welcome, Window, encode,
};
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tower_service::Service;

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 64 * 1024;

const SOFTWARE: &str = concat!("keel-worker/", env!("CARGO_PKG_VERSION"));

/// A health check run for each PING when set (see [`crate::Worker::health_check`]).
pub type HealthCheck = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync,
>;

/// Connection settings beyond capacity (builder options of [`crate::Worker`]).
#[derive(Clone, Default)]
pub(crate) struct Options {
    /// HELLO's pid; `None`: this process.
    pub pid: Option<u32>,
    /// The handler sends STARTED through a [`crate::StartSignal`].
    pub started_by_handler: bool,
    pub health: Option<HealthCheck>,
    /// How requests that ask to upgrade reach the service.
    pub upgrades: handler::Upgrades,
}

/// The reading half of the connection to the daemon.
pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of the connection to the daemon.
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// What carries the protocol: a stream socket (a worker process), or an in-memory pipe (an
/// adapter running inside the daemon's own process, which then pays no system call and no
/// poller round per frame).
pub(crate) enum Transport {
    Socket(std::os::unix::net::UnixStream),
    Memory(tokio::io::DuplexStream),
}

impl Transport {
    fn split(self) -> std::io::Result<(ReadHalf, WriteHalf)> {
        Ok(match self {
            Transport::Socket(socket) => {
                socket.set_nonblocking(true)?;
                let (rd, wr) = tokio::net::UnixStream::from_std(socket)?.into_split();
                (Box::new(rd), Box::new(wr))
            }
            Transport::Memory(pipe) => {
                let (rd, wr) = tokio::io::split(pipe);
                (Box::new(rd), Box::new(wr))
            }
        })
    }
}

/// How the reading loop ended without an error.
enum Ending {
    /// DRAIN received and every stream closed (or the drain timeout passed).
    Drained,
    /// EOF: the daemon is gone.
    DaemonGone,
}

pub(crate) async fn run<S, B>(
    transport: Transport,
    capacity: u32,
    options: Options,
    service: S,
) -> Result<(), Error>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut rd, mut wr) = transport.split()?;
    let decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let pid = options.pid.unwrap_or_else(std::process::id);
    let welcome = handshake(&mut rd, &mut wr, &decoder, &mut buf, capacity, pid).await?;
    tracing::debug!(
        pool = %String::from_utf8_lossy(&welcome.pool),
        capacity = welcome.capacity,
        initial_window = welcome.initial_window,
        "attached to keel"
    );
    let conn = Arc::new(Conn::new(welcome.initial_window, welcome.max_payload));
    let writer = tokio::spawn(writer::run(conn.clone(), wr));

    let mut reader = Reader {
        conn: &conn,
        socket: rd,
        decoder,
        buf,
        service,
        drain_deadline: None,
        draining: false,
        options,
    };
    let ending = reader.run().await;
    match ending {
        Ok(Ending::Drained) => {
            // Everything answered: let the writer flush the last frames, then end.
            conn.close();
            if let Ok(Err(e)) = writer.await {
                tracing::debug!(error = %e, "socket closed while flushing after drain");
            }
            Ok(())
        }
        Ok(Ending::DaemonGone) | Err(_) => {
            for task in conn.abort_all(None) {
                task.abort();
            }
            conn.close();
            writer.abort();
            ending.map(|_| ())
        }
    }
}

/// Sends HELLO and waits for WELCOME.
async fn handshake(
    rd: &mut ReadHalf,
    wr: &mut WriteHalf,
    decoder: &Decoder,
    buf: &mut BytesMut,
    capacity: u32,
    pid: u32,
) -> Result<Welcome, Error> {
    let hello = Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        pid,
        capacity,
        max_payload: DEFAULT_MAX_PAYLOAD,
        software: Bytes::from_static(SOFTWARE.as_bytes()),
    });
    let mut out = BytesMut::new();
    encode(&hello, &mut out)?;
    wr.write_all(&out).await?;
    loop {
        if let Some(frame) = decoder.decode(buf)? {
            return match frame {
                Frame::Welcome(w) if w.version == PROTOCOL_VERSION => Ok(w),
                Frame::Welcome(w) => Err(Error::VersionMismatch {
                    daemon: w.version,
                    ours: PROTOCOL_VERSION,
                }),
                _ => Err(Error::Protocol("the first frame is not WELCOME")),
            };
        }
        if rd.read_buf(buf).await? == 0 {
            return Err(Error::NoWelcome);
        }
    }
}

struct Reader<'a, S> {
    conn: &'a Arc<Conn>,
    socket: ReadHalf,
    decoder: Decoder,
    buf: BytesMut,
    service: S,
    draining: bool,
    drain_deadline: Option<Instant>,
    options: Options,
}

impl<S, B> Reader<'_, S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    async fn run(&mut self) -> Result<Ending, Error> {
        loop {
            // Decode first: the handshake may have read frames that followed WELCOME.
            while let Some(frame) = self.decoder.decode(&mut self.buf)? {
                self.dispatch(frame)?;
            }
            if self.draining && self.conn.is_idle() {
                return Ok(Ending::Drained);
            }
            self.buf.reserve(READ_SIZE);
            let deadline = self.drain_deadline;
            tokio::select! {
                read = self.socket.read_buf(&mut self.buf) => {
                    let n = match read {
                        Ok(n) => n,
                        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => 0,
                        Err(e) => return Err(e.into()),
                    };
                    if n == 0 {
                        return Ok(Ending::DaemonGone);
                    }
                }
                _ = self.conn.idle_changed(), if self.draining => {}
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    tracing::warn!("drain timeout passed with requests still running: aborting them");
                    for task in self.conn.abort_all(Some(AbortCode::Shutdown)) {
                        task.abort();
                    }
                    return Ok(Ending::Drained);
                }
            }
        }
    }

    fn dispatch(&mut self, frame: Frame) -> Result<(), Error> {
        match frame {
            Frame::Request(head) => self.open_stream(head)?,
            Frame::Data { id, data, end } => self.conn.on_data(id, data, end),
            Frame::Window { id, increment } => self.conn.on_window(id, increment),
            Frame::Abort { id, code } => {
                if let Some(task) = self.conn.on_abort(id, code) {
                    task.abort();
                }
            }
            Frame::Ping { nonce } => match &self.options.health {
                None => self.conn.push_control(&Frame::Pong { nonce }),
                Some(check) => {
                    let check = check();
                    let conn = Arc::downgrade(self.conn);
                    tokio::spawn(async move {
                        if check.await
                            && let Some(conn) = conn.upgrade()
                        {
                            conn.push_control(&Frame::Pong { nonce });
                        }
                    });
                }
            },
            Frame::Drain { timeout_ms } => {
                tracing::debug!(timeout_ms, "drain requested");
                self.draining = true;
                self.conn.begin_drain();
                if timeout_ms > 0 {
                    self.drain_deadline =
                        Some(Instant::now() + Duration::from_millis(timeout_ms.into()));
                }
            }
            Frame::Hello(_) => return Err(Error::Protocol("HELLO sent to a worker")),
            Frame::Welcome(_) => return Err(Error::Protocol("a second WELCOME")),
            Frame::Started { .. } | Frame::Response(_) => {
                return Err(Error::Protocol("a response frame sent to a worker"));
            }
            Frame::Pong { .. } => return Err(Error::Protocol("PONG without a PING")),
            Frame::Invalidate { .. } => {
                return Err(Error::Protocol("INVALIDATE sent to a worker"));
            }
        }
        Ok(())
    }

    /// REQUEST: one new stream, one new task.
    fn open_stream(&mut self, head: RequestHead) -> Result<(), Error> {
        let id = head.id;
        let request::Built {
            request,
            body_tx,
            upgrade,
        } = request::build(self.conn, head, self.options.started_by_handler);
        let service = self.service.clone();
        let conn = self.conn;
        let upgrades = self.options.upgrades;
        let refused = conn.with_state(move |st| {
            if st.streams.contains_key(&id) || st.closing {
                // Handed back so the request (and its body) is dropped outside the lock.
                return Some((request, service, upgrade, !st.closing));
            }
            // Spawned under the lock so the task cannot look for its entry before it exists.
            let task = tokio::spawn(handler::run_stream(
                conn.clone(),
                id,
                request,
                service,
                !self.options.started_by_handler,
                upgrade,
                upgrades,
            ));
            st.streams.insert(
                id,
                StreamEntry {
                    body_tx,
                    response: ResponsePhase::AwaitingHead,
                    window: Window::new(conn.initial_window),
                    waker: None,
                    task: Some(task.abort_handle()),
                    started: false,
                },
            );
            None
        });
        match refused {
            Some((_, _, _, true)) => Err(Error::Protocol(
                "REQUEST for a stream id that is still open",
            )),
            // The socket failed: the loop sees EOF next.
            Some((_, _, _, false)) | None => Ok(()),
        }
    }
}

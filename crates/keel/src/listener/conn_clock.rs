//! A client connection's own timers, kept outside hyper because hyper has one head timer
//! that runs from the moment a kept-alive connection goes idle (it cannot tell an idle
//! connection from a slow head), and no send-rate timer at all:
//!
//! - `header_wait` (HTTP.sys `HeaderWait`): from a new connection's accept, or from the first
//!   byte of a later request, to the end of its head. Expired: `Timer_HeaderWait`.
//! - `idle_connection` (HTTP.sys `IdleConnection`): from the end of a response (nothing in
//!   flight) to the next request's first byte. Expired: `Timer_ConnectionIdle`.
//! - `min_send_rate` (HTTP.sys `MinSendRate`, bytes per second): while a response is being
//!   written and the client has stopped taking bytes, the bytes sent since the response
//!   began must keep up with the rate over the whole response, so short stalls are tolerated
//!   and a client that stops reading is cut once its average falls below the rate.
//!   Expired: `Timer_MinBytesPerSecond`.
//!
//! [`ClockedIo`] wraps the raw socket (under TLS) and tells the clock about bytes in and
//! out; the service tells it when a request begins and when its response is finished
//! ([`RequestGuard`]); [`ConnClock::expired`] resolves with the reason once a timer runs out,
//! and the connection task then drops the connection.
//!
//! Known imprecision: under hyper, bytes of a pipelined next request that arrive while a
//! response is still in flight get `idle_connection`, not `header_wait`, for the rest of
//! their head (the clock cannot tell them from the current request's body). The HTTP/1.1 front
//! (`h1_front.rs`) knows where its heads end and starts `header_wait` for them.
//!
//! Wake-ups: [`ConnClock::expired`] sleeps until the earliest deadline that may apply and
//! is woken by a change of phase only when that change brings a deadline earlier, so the
//! requests of a busy connection cost the clock no wake-up (see `State::wake_at`).

use crate::log::Reason;
use parking_lot::Mutex;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The three limits, from `[listener]`.
#[derive(Clone, Copy, Debug)]
pub struct ConnTimers {
    pub header_wait: Duration,
    pub idle_connection: Duration,
    /// Bytes per second; 0 turns the timer off.
    pub min_send_rate: u64,
}

/// The time a phase of the connection began, as the clock records it: the kernel's coarse
/// clock (to the millisecond: the limits are seconds, and the phases change several times
/// per request, where the exact clock's reads were about 2 % of a cache hit's CPU); tokio's
/// clock in the unit tests, which pause it.
#[cfg(not(test))]
fn phase_now() -> Instant {
    Instant::from_std(crate::os::clock::coarse_now())
}

#[cfg(test)]
fn phase_now() -> Instant {
    Instant::now()
}

/// The shortest time a response may stall before its send rate is judged.
const SEND_RATE_CHECK: Duration = Duration::from_secs(1);

/// What the connection is doing now, as far as its timers care.
#[derive(Debug)]
struct State {
    /// Requests whose response is not finished yet (HTTP/2 may have several).
    in_flight: u32,
    /// When the head being read began (the accept for the first one); `None` while idle
    /// or busy.
    head_since: Option<Instant>,
    /// When the connection last became idle.
    idle_since: Instant,
    /// HTTP/2 frames (pings, settings) arrive between requests without starting a head.
    http2: bool,
    /// The first byte written since the connection became busy.
    sending_since: Option<Instant>,
    /// Bytes written since then.
    sent: u64,
    /// The last write found the socket full: the client is not taking bytes.
    write_blocked: bool,
    /// When [`ConnClock::expired`] looks next (`None`: not before a change). A change of
    /// phase wakes it only when it must look earlier, so a busy connection's requests cost
    /// the clock no wake-up (see [`State::wake_at`]).
    armed: Option<Instant>,
}

impl State {
    /// When a timer may next run out, as far as waking the clock goes. Idle, that is the
    /// earlier of `idle_connection` and `header_wait` from `idle_since`, so that the head
    /// that ends the idle time (due `header_wait` after its first byte) never has an
    /// earlier deadline than the one armed: the clock looks once more, finds the connection
    /// still idle, and waits out the rest. In flight, only a blocked write has a deadline.
    fn wake_at(&self, limits: &ConnTimers) -> Option<Instant> {
        if let Some(since) = self.head_since {
            return Some(since + limits.header_wait);
        }
        if self.in_flight == 0 {
            return Some(self.idle_since + limits.idle_connection.min(limits.header_wait));
        }
        self.send_rate_due(limits)
    }

    /// While the client takes no bytes: when the bytes sent fall below the minimum rate.
    fn send_rate_due(&self, limits: &ConnTimers) -> Option<Instant> {
        let rate = limits.min_send_rate;
        if rate == 0 || !self.write_blocked {
            return None;
        }
        let since = self.sending_since?;
        // The time these bytes were allowed at the minimum rate.
        let allowed = Duration::from_secs_f64(self.sent as f64 / rate as f64);
        Some(since + allowed.max(SEND_RATE_CHECK))
    }

    /// Whether a change of phase must wake the clock: its new deadline comes before the
    /// one the clock waits for.
    fn must_wake(&self, limits: &ConnTimers) -> bool {
        match (self.wake_at(limits), self.armed) {
            (Some(due), Some(armed)) => due < armed,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// Shared by a connection's socket wrapper, its service and its connection task.
#[derive(Debug)]
pub struct ConnClock {
    limits: ConnTimers,
    state: Mutex<State>,
    /// Wakes [`ConnClock::expired`] when the phase changes (its deadline may move earlier).
    changed: Notify,
}

impl ConnClock {
    /// A clock for a connection accepted now: its first head is due within `header_wait`.
    pub fn new(limits: ConnTimers) -> Arc<ConnClock> {
        let now = phase_now();
        Arc::new(ConnClock {
            limits,
            state: Mutex::new(State {
                in_flight: 0,
                head_since: Some(now),
                idle_since: now,
                http2: false,
                sending_since: None,
                sent: 0,
                write_blocked: false,
                armed: None,
            }),
            changed: Notify::new(),
        })
    }

    /// A request's head has been read; the guard ends it when dropped (the response body
    /// finished or was abandoned).
    pub fn begin_request(self: &Arc<Self>, http2: bool) -> RequestGuard {
        let mut s = self.state.lock();
        s.http2 |= http2;
        if s.in_flight == 0 {
            s.sending_since = None;
            s.sent = 0;
            s.write_blocked = false;
        }
        s.in_flight += 1;
        s.head_since = None;
        let wake = s.must_wake(&self.limits);
        drop(s);
        if wake {
            self.changed.notify_one();
        }
        RequestGuard(self.clone())
    }

    fn end_request(&self) {
        let mut s = self.state.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_since = phase_now();
            s.sending_since = None;
            let wake = s.must_wake(&self.limits);
            drop(s);
            if wake {
                self.changed.notify_one();
            }
        }
    }

    fn on_read(&self, n: usize) {
        if n == 0 {
            return;
        }
        crate::metrics::bytes_received(n);
        self.head_started();
    }

    /// Bytes of a head are in: the head is timed from now, unless a request is in flight
    /// (they may be its body) or one is timed already. Also called by the HTTP/1.1 front for the
    /// part of a pipelined head it read before it finished the answer ahead of it.
    pub fn head_started(&self) {
        let mut s = self.state.lock();
        if s.in_flight == 0 && s.head_since.is_none() && !s.http2 {
            s.head_since = Some(phase_now());
            let wake = s.must_wake(&self.limits);
            drop(s);
            if wake {
                self.changed.notify_one();
            }
        }
    }

    fn on_write(&self, polled: &Poll<io::Result<usize>>) {
        let mut s = self.state.lock();
        match polled {
            Poll::Ready(Ok(n)) => {
                crate::metrics::bytes_sent(*n);
                s.write_blocked = false;
                if s.in_flight > 0 {
                    s.sending_since.get_or_insert_with(phase_now);
                    s.sent += *n as u64;
                }
            }
            Poll::Ready(Err(_)) => s.write_blocked = false,
            Poll::Pending => {
                let was = std::mem::replace(&mut s.write_blocked, true);
                if !was && s.must_wake(&self.limits) {
                    drop(s);
                    self.changed.notify_one();
                }
            }
        }
    }

    /// What has run out at `now`, or when to look again (`None`: not before a change).
    fn check(&self, now: Instant) -> Result<Option<Instant>, Reason> {
        let mut s = self.state.lock();
        if let Some(since) = s.head_since {
            if now >= since + self.limits.header_wait {
                return Err(Reason::TimerHeaderWait);
            }
        } else if s.in_flight == 0 {
            if now >= s.idle_since + self.limits.idle_connection {
                return Err(Reason::TimerConnectionIdle);
            }
        } else if s.send_rate_due(&self.limits).is_some_and(|due| now >= due) {
            return Err(Reason::TimerMinBytesPerSecond);
        }
        let mut due = s.wake_at(&self.limits);
        if let Some(d) = due
            && d <= now
        {
            // Idle past `header_wait` (the early look): the idle deadline itself.
            due = Some(s.idle_since + self.limits.idle_connection);
        }
        s.armed = due;
        Ok(due)
    }

    /// Resolves with the timer that ran out; never, while the connection keeps within them.
    pub async fn expired(&self) -> Reason {
        loop {
            match self.check(Instant::now()) {
                Err(reason) => return reason,
                Ok(Some(due)) => tokio::select! {
                    // Either wakes a look at the clock: no random order to draw.
                    biased;
                    _ = tokio::time::sleep_until(due) => {}
                    _ = self.changed.notified() => {}
                },
                Ok(None) => self.changed.notified().await,
            }
        }
    }
}

/// A request in flight on its connection; dropping it ends the request for the clock.
pub struct RequestGuard(Arc<ConnClock>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// A client connection's socket, reporting its reads and writes to the clock (and the bytes
/// that cross it to the metrics).
pub struct ClockedIo<S> {
    inner: S,
    clock: Arc<ConnClock>,
}

impl<S> ClockedIo<S> {
    pub fn new(inner: S, clock: Arc<ConnClock>) -> Self {
        ClockedIo { inner, clock }
    }
}

/// A client socket the HTTP/1.1 front can send a file on without copying it through user space.
pub trait SendFile {
    /// Whether [`SendFile::send_file`] works here (a cleartext TCP socket; not under TLS).
    fn can_send_file(&self) -> bool;

    /// Holds partial segments back while on (`TCP_CORK`, nginx's `tcp_nopush`), so a head and
    /// the file after it leave in full segments; turning it off sends what is held.
    fn cork(&self, on: bool);

    /// Sends `len` bytes of `file` from `offset` with `sendfile(2)`, waiting for the socket
    /// as needed; the clock sees the bytes and the blocked writes as for any write. An
    /// `UnexpectedEof` error: the file ended early (it shrank since it was opened). `sent`
    /// grows by each call's bytes as they go, so it holds what the socket took also when
    /// this fails or is dropped part way (the access log's bytes sent).
    fn send_file(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        len: u64,
        sent: &mut u64,
    ) -> impl std::future::Future<Output = io::Result<()>> + Send;
}

impl SendFile for ClockedIo<tokio::net::TcpStream> {
    fn can_send_file(&self) -> bool {
        true
    }

    fn cork(&self, on: bool) {
        let _ = rustix::net::sockopt::set_tcp_cork(&self.inner, on);
    }

    async fn send_file(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        len: u64,
        sent: &mut u64,
    ) -> io::Result<()> {
        let (mut at, end) = (offset, offset + len);
        while at < end {
            // sendfile(2) moves at most about 2 GiB per call.
            let want = usize::try_from(end - at).unwrap_or(usize::MAX).min(1 << 30);
            let moved = self.inner.try_io(tokio::io::Interest::WRITABLE, || {
                let mut from = at;
                rustix::fs::sendfile(&self.inner, file, Some(&mut from), want)
                    .map_err(io::Error::from)
            });
            match moved {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    at += n as u64;
                    *sent += n as u64;
                    self.clock.on_write(&Poll::Ready(Ok(n)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.clock.on_write(&Poll::Pending);
                    self.inner.writable().await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<S: Send> SendFile for tokio_rustls::server::TlsStream<S> {
    fn can_send_file(&self) -> bool {
        false
    }

    fn cork(&self, _: bool) {}

    async fn send_file(
        &mut self,
        _: &std::fs::File,
        _: u64,
        _: u64,
        _: &mut u64,
    ) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClockedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.clock.on_read(buf.filled().len() - before);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClockedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.clock.on_write(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.clock.on_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> Arc<ConnClock> {
        ConnClock::new(ConnTimers {
            header_wait: Duration::from_secs(30),
            idle_connection: Duration::from_secs(120),
            min_send_rate: 150,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_owes_its_first_head_within_header_wait() {
        let c = clock();
        let t0 = Instant::now();
        assert_eq!(c.expired().await, Reason::TimerHeaderWait);
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn between_requests_the_idle_timer_runs_until_a_byte_arrives() {
        let c = clock();
        drop(c.begin_request(false));
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(100)).await;
        c.on_read(1);
        // The head that began at 100 s is due at 130 s, before the idle deadline.
        assert_eq!(c.expired().await, Reason::TimerHeaderWait);
        assert_eq!(t0.elapsed(), Duration::from_secs(130));

        let c = clock();
        drop(c.begin_request(false));
        let t0 = Instant::now();
        assert_eq!(c.expired().await, Reason::TimerConnectionIdle);
        assert_eq!(t0.elapsed(), Duration::from_secs(120));
    }

    #[tokio::test(start_paused = true)]
    async fn http2_frames_between_requests_do_not_start_a_head() {
        let c = clock();
        drop(c.begin_request(true));
        c.on_read(9);
        assert_eq!(c.expired().await, Reason::TimerConnectionIdle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_idle_while_its_client_reads() {
        let c = clock();
        let _busy = c.begin_request(false);
        c.on_write(&Poll::Ready(Ok(10)));
        let r = tokio::time::timeout(Duration::from_secs(3600), c.expired()).await;
        assert!(r.is_err(), "a slow worker is not the client's fault");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_when_its_average_falls_below_the_rate() {
        let c = clock();
        let _busy = c.begin_request(false);
        let t0 = Instant::now();
        // 15,000 bytes taken at once, then the socket stays full: allowed 100 s at 150 B/s.
        c.on_write(&Poll::Ready(Ok(15_000)));
        c.on_write(&Poll::Pending);
        assert_eq!(c.expired().await, Reason::TimerMinBytesPerSecond);
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_secs(100) && waited <= Duration::from_secs(101),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn min_send_rate_zero_turns_the_timer_off() {
        let c = ConnClock::new(ConnTimers {
            header_wait: Duration::from_secs(30),
            idle_connection: Duration::from_secs(120),
            min_send_rate: 0,
        });
        let _busy = c.begin_request(false);
        c.on_write(&Poll::Ready(Ok(1)));
        c.on_write(&Poll::Pending);
        let r = tokio::time::timeout(Duration::from_secs(3600), c.expired()).await;
        assert!(r.is_err());
    }
}

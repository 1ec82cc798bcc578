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
//! Known imprecision: bytes of a pipelined next request that arrive while a response is
//! still in flight get `idle_connection`, not `header_wait`, for the rest of their head (the
//! clock cannot tell them from the current request's body).

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

/// How often a busy connection re-checks its send rate while the client is not reading.
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
        let now = Instant::now();
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
        drop(s);
        self.changed.notify_one();
        RequestGuard(self.clone())
    }

    fn end_request(&self) {
        let mut s = self.state.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
            s.sending_since = None;
            drop(s);
            self.changed.notify_one();
        }
    }

    fn on_read(&self, n: usize) {
        if n == 0 {
            return;
        }
        crate::metrics::bytes_received(n);
        let mut s = self.state.lock();
        if s.in_flight == 0 && s.head_since.is_none() && !s.http2 {
            s.head_since = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    fn on_write(&self, polled: &Poll<io::Result<usize>>) {
        let mut s = self.state.lock();
        match polled {
            Poll::Ready(Ok(n)) => {
                crate::metrics::bytes_sent(*n);
                s.write_blocked = false;
                if s.in_flight > 0 {
                    s.sending_since.get_or_insert_with(Instant::now);
                    s.sent += *n as u64;
                }
            }
            Poll::Ready(Err(_)) => s.write_blocked = false,
            Poll::Pending => s.write_blocked = true,
        }
    }

    /// What has run out at `now`, or when to look again.
    fn check(&self, now: Instant) -> Result<Instant, Reason> {
        let s = self.state.lock();
        if let Some(since) = s.head_since {
            let due = since + self.limits.header_wait;
            return if now >= due {
                Err(Reason::TimerHeaderWait)
            } else {
                Ok(due)
            };
        }
        if s.in_flight == 0 {
            let due = s.idle_since + self.limits.idle_connection;
            return if now >= due {
                Err(Reason::TimerConnectionIdle)
            } else {
                Ok(due)
            };
        }
        let rate = self.limits.min_send_rate;
        if rate > 0
            && s.write_blocked
            && let Some(since) = s.sending_since
        {
            // The time these bytes were allowed at the minimum rate.
            let allowed = Duration::from_secs_f64(s.sent as f64 / rate as f64);
            if now >= since + allowed.max(SEND_RATE_CHECK) {
                return Err(Reason::TimerMinBytesPerSecond);
            }
        }
        Ok(now + SEND_RATE_CHECK)
    }

    /// Resolves with the timer that ran out; never, while the connection keeps within them.
    pub async fn expired(&self) -> Reason {
        loop {
            let due = match self.check(Instant::now()) {
                Ok(due) => due,
                Err(reason) => return reason,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = self.changed.notified() => {}
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

//! A future that is polled only once its own waker has fired.
//!
//! A connection task waits on its socket and, beside it, on futures that almost never
//! finish: its timers ([`super::conn_clock::ConnClock::expired`]) and the daemon's drain.
//! `tokio::select!` polls every branch each time the task wakes, so a busy keep-alive
//! connection polled its timer and its drain signal once per request for nothing (about 6 %
//! of a cache hit's instructions). Behind a [`WakeGated`], such a future is polled only
//! after something it waits for woke it (and once at first); otherwise its poll is one
//! atomic swap.
//!
//! Invariant: the gate's flag is set before the task is woken, and read after the task's
//! waker is registered, so no wake-up is lost: a wake between the two only costs one more
//! poll of the inner future.

use futures_util::task::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// `inner`, polled only when its waker fired since its last poll. `inner` is `Unpin`
/// (boxed and pinned by the caller, once per connection).
pub struct WakeGated<F> {
    inner: F,
    gate: Arc<Gate>,
    /// Wakes the gate: what `inner` is polled with.
    waker: Waker,
}

struct Gate {
    /// The inner future's waker fired since it was last polled.
    woken: AtomicBool,
    /// The task polling the [`WakeGated`].
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> WakeGated<F> {
    pub fn new(inner: F) -> Self {
        let gate = Arc::new(Gate {
            // Polled at first, so that it registers what it waits for.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        WakeGated {
            inner,
            waker: Waker::from(gate.clone()),
            gate,
        }
    }
}

impl<F: Future + Unpin> Future for WakeGated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        this.gate.task.register(cx.waker());
        if !this.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Polls `f` once.
    async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_gated_timer_still_fires() {
        let mut sleep = WakeGated::new(Box::pin(tokio::time::sleep(Duration::from_secs(5))));
        // Polled while the timer is not due: pending, and polled again only once woken.
        assert!(poll_once(&mut sleep).await.is_pending());
        assert!(poll_once(&mut sleep).await.is_pending());
        tokio::time::timeout(Duration::from_secs(6), &mut sleep)
            .await
            .expect("the gated sleep finishes when its timer fires");
    }

    #[tokio::test]
    async fn a_gated_notification_is_not_lost() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let mut notified = WakeGated::new(Box::pin({
            let notify = notify.clone();
            async move { notify.notified().await }
        }));
        assert!(poll_once(&mut notified).await.is_pending());
        notify.notify_one();
        tokio::time::timeout(Duration::from_secs(5), &mut notified)
            .await
            .expect("the notification reaches the gated future");
    }
}

//! The channel that carries one request's [`Event`]s from the pool and its worker
//! connection to the request's task.
//!
//! One exists per request, so its cost is paid on every request: tokio's unbounded channel
//! allocates a block of 32 slots and keeps lock-free indices for any number of producers
//! (about 700 instructions per request more than this one, callgrind of keel → gunicorn).
//! A request gets a handful of events (assigned, response, maybe data), from code that
//! already holds locks briefly: a short mutex around a small queue does.
//!
//! Semantics kept from tokio's channel, which [`crate::exchange`] relies on: events arrive
//! in the order sent; once every sender is gone and the queue is empty, the receiver sees
//! the end (`None`); once the receiver is gone, a send fails and the event is dropped; a
//! receive spends the task's cooperative budget.

use super::Event;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Room for a request's usual events without growing the queue.
const USUAL_EVENTS: usize = 4;

struct State {
    queue: VecDeque<Event>,
    senders: usize,
    receiver_alive: bool,
    /// The receiving task, while it waits.
    waker: Option<Waker>,
}

/// Sends one request's events; cloned for each holder (the queued job, the stream entry).
pub struct EventTx(Arc<Mutex<State>>);

/// Receives one request's events.
pub struct EventRx(Arc<Mutex<State>>);

/// A new channel for one request.
pub fn channel() -> (EventTx, EventRx) {
    let state = Arc::new(Mutex::new(State {
        queue: VecDeque::with_capacity(USUAL_EVENTS),
        senders: 1,
        receiver_alive: true,
        waker: None,
    }));
    (EventTx(state.clone()), EventRx(state))
}

impl EventTx {
    /// Queues `event` for the receiver; `Err` gives it back when the receiver is gone.
    pub fn send(&self, event: Event) -> Result<(), Event> {
        let mut state = self.0.lock();
        if !state.receiver_alive {
            return Err(event);
        }
        state.queue.push_back(event);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Queues `event` without waking the receiver: for an event it needs only once
    /// something else wakes it (see [`EventRx::pop_front_if`]). `Err` as for [`Self::send`].
    pub fn send_quiet(&self, event: Event) -> Result<(), Event> {
        let mut state = self.0.lock();
        if !state.receiver_alive {
            return Err(event);
        }
        state.queue.push_back(event);
        Ok(())
    }
}

impl Clone for EventTx {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        EventTx(self.0.clone())
    }
}

impl Drop for EventTx {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.senders -= 1;
        // The last sender gone: a waiting receiver learns that nothing more comes.
        let waker = (state.senders == 0).then(|| state.waker.take()).flatten();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl EventRx {
    /// The next event; `None` once every sender is gone and nothing is left.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        // A receive spends the task's cooperative budget, as tokio's own channels do, so a
        // task that always finds an event still yields to the others in time.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let mut state = self.0.lock();
        if let Some(event) = state.queue.pop_front() {
            coop.made_progress();
            return Poll::Ready(Some(event));
        }
        if state.senders == 0 {
            coop.made_progress();
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Takes the next event without waiting, if `wanted` says so: a receiver catching up
    /// on a quietly sent event outside a poll (the request's task ending).
    pub fn pop_front_if(&mut self, wanted: impl FnOnce(&Event) -> bool) -> Option<Event> {
        let mut state = self.0.lock();
        if state.queue.front().is_some_and(wanted) {
            state.queue.pop_front()
        } else {
            None
        }
    }
}

impl Drop for EventRx {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.receiver_alive = false;
        // Events nobody will read are dropped now, not when the last sender goes.
        let queued = std::mem::take(&mut state.queue);
        state.waker = None;
        drop(state);
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Refusal;
    use keel_proto::AbortCode;
    use std::time::Duration;

    impl EventRx {
        /// The next event, waiting for it; `None` once every sender is gone.
        async fn recv(&mut self) -> Option<Event> {
            std::future::poll_fn(|cx| self.poll_recv(cx)).await
        }
    }

    fn refused() -> Event {
        Event::Refused(Refusal::AppOffline)
    }

    #[tokio::test]
    async fn events_arrive_in_order_then_the_end_once_every_sender_is_gone() {
        let (tx, mut rx) = channel();
        let second = tx.clone();
        tx.send(Event::WindowOpened).ok().unwrap();
        second
            .send(Event::Aborted(AbortCode::HandlerFailed))
            .ok()
            .unwrap();
        drop(tx);
        assert!(matches!(rx.recv().await, Some(Event::WindowOpened)));
        assert!(matches!(rx.recv().await, Some(Event::Aborted(_))));
        drop(second);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_and_by_the_last_sender_leaving() {
        let (tx, mut rx) = channel();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(refused()).ok().unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(tx);
        });
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(matches!(first, Ok(Some(Event::Refused(_)))));
        let end = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(matches!(end, Ok(None)));
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn a_quiet_send_wakes_nobody_but_is_received_in_order() {
        let (tx, mut rx) = channel();
        let waker = std::sync::Arc::new(CountingWaker::default());
        let waker_handle = Waker::from(waker.clone());
        let mut cx = Context::from_waker(&waker_handle);
        assert!(rx.poll_recv(&mut cx).is_pending());
        tx.send_quiet(Event::WindowOpened).ok().unwrap();
        assert_eq!(waker.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        tx.send(refused()).ok().unwrap();
        assert_eq!(waker.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(matches!(rx.recv().await, Some(Event::WindowOpened)));
        assert!(matches!(rx.recv().await, Some(Event::Refused(_))));
    }

    #[test]
    fn pop_front_if_takes_only_a_wanted_front() {
        let (tx, mut rx) = channel();
        tx.send_quiet(Event::WindowOpened).ok().unwrap();
        tx.send(refused()).ok().unwrap();
        assert!(
            rx.pop_front_if(|e| matches!(e, Event::Refused(_)))
                .is_none()
        );
        let first = rx.pop_front_if(|e| matches!(e, Event::WindowOpened));
        assert!(matches!(first, Some(Event::WindowOpened)));
        assert!(
            rx.pop_front_if(|e| matches!(e, Event::WindowOpened))
                .is_none()
        );
        assert!(
            rx.pop_front_if(|e| matches!(e, Event::Refused(_)))
                .is_some()
        );
        assert!(rx.pop_front_if(|_| true).is_none());
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_send_to_a_receiver_that_is_gone_fails() {
        let (tx, rx) = channel();
        tx.send(refused()).ok().unwrap();
        drop(rx);
        assert!(matches!(tx.send(refused()), Err(Event::Refused(_))));
    }
}

//! The state one worker connection shares between its reading loop, its writer task and its
//! request tasks: the buffer of frames waiting to be written and the table of open streams.
//!
//! Both sit behind ONE lock on purpose. "May this stream still send a frame?" and "append the
//! frame" happen in the same critical section, so once the reading loop has answered an ABORT
//! (or a request task has sent its end), no later frame of that stream can reach the buffer,
//! even on a multi-threaded runtime where the task is still running when it is cancelled.
//! Invariant: nothing here awaits while holding the lock, and no `Body` is ever dropped
//! under it (a request `Body` takes the lock in its `Drop`).

use bytes::{Bytes, BytesMut};
use keel_proto::{
    AbortCode, DEFAULT_MAX_PAYLOAD, Frame, MAX_DATA_CHUNK, ResponseHead, ResponsePhase, StreamId,
    Window, encode, encode_data,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;

/// Above this many buffered bytes, body senders wait for the writer (control frames do not).
pub(crate) const OUTBOX_LIMIT: usize = 4 << 20;

/// Request-body bytes handed from the reading loop to a stream's `Body`; `true` marks the end.
pub(crate) type BodyChunk = (Bytes, bool);

/// The stream can no longer send: it was aborted, it failed, or the connection is closing.
#[derive(Debug)]
pub(crate) struct Ended;

pub(crate) struct Conn {
    state: Mutex<State>,
    /// Wakes the writer task when the buffer goes from empty to not empty.
    writer_wake: Notify,
    /// Wakes body senders waiting for the buffer to drain below [`OUTBOX_LIMIT`].
    space: Notify,
    /// Wakes the reading loop when a draining connection's last stream closes.
    idle: Notify,
    /// Wakes request tasks waiting for their STARTED frame to be written.
    flushed: Notify,
    /// Every stream's initial window, both directions (from WELCOME).
    pub(crate) initial_window: u32,
    /// Largest DATA payload we send: [`MAX_DATA_CHUNK`], or less if the daemon accepts less.
    pub(crate) max_data: usize,
    /// Largest frame payload the daemon accepts (from WELCOME).
    max_frame: usize,
}

#[derive(Default)]
pub(crate) struct State {
    /// Encoded frames not yet handed to the writer.
    pub(crate) out: BytesMut,
    pub(crate) streams: HashMap<StreamId, StreamEntry>,
    /// DRAIN received: the connection ends when `streams` is empty.
    pub(crate) draining: bool,
    /// No more frames are accepted: the writer is flushing its last bytes or is gone.
    pub(crate) closing: bool,
    /// Batches the writer has taken from `out`, and how many of them it has written.
    taken: u64,
    written: u64,
}

/// One open stream. It is removed when both directions are finished (response end sent and
/// request body ended), or at once when either side aborts it.
pub(crate) struct StreamEntry {
    /// Where request-body DATA goes; `None` once the request body has ended.
    pub(crate) body_tx: Option<mpsc::UnboundedSender<BodyChunk>>,
    pub(crate) response: ResponsePhase,
    /// Credit for response-body bytes.
    pub(crate) window: Window,
    /// The request task, when it waits for `window` credit.
    pub(crate) waker: Option<Waker>,
    pub(crate) task: Option<AbortHandle>,
    /// STARTED is queued or written (it is sent at most once, and never after RESPONSE).
    pub(crate) started: bool,
}

impl StreamEntry {
    fn finished(&self) -> bool {
        self.body_tx.is_none() && self.response == ResponsePhase::Done
    }
}

impl Conn {
    pub(crate) fn new(initial_window: u32, daemon_max_payload: u32) -> Self {
        let max_frame = if daemon_max_payload == 0 {
            DEFAULT_MAX_PAYLOAD
        } else {
            daemon_max_payload
        } as usize;
        Conn {
            state: Mutex::new(State {
                out: BytesMut::with_capacity(64 * 1024),
                ..State::default()
            }),
            writer_wake: Notify::new(),
            space: Notify::new(),
            idle: Notify::new(),
            flushed: Notify::new(),
            initial_window,
            max_data: MAX_DATA_CHUNK.min(max_frame),
            max_frame,
        }
    }

    /// Runs `f` under the lock, then wakes the writer if `f` made the buffer non-empty and the
    /// reading loop if `f` closed a draining connection's last stream. Every change to the
    /// shared state goes through here so these wake-ups cannot be forgotten.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut st = self.state.lock();
        let was_empty = st.out.is_empty();
        let had_streams = !st.streams.is_empty();
        let r = f(&mut st);
        let wake_writer = was_empty && !st.out.is_empty();
        let now_idle = st.draining && had_streams && st.streams.is_empty();
        drop(st);
        if wake_writer {
            self.writer_wake.notify_one();
        }
        if now_idle {
            self.idle.notify_one();
        }
        r
    }

    /// Appends a connection-level or control frame (PONG, WINDOW, ABORT). Never waits: these
    /// must not queue behind body bytes.
    pub(crate) fn push_control(&self, frame: &Frame) {
        self.with_state(|st| {
            if !st.closing {
                encode_control(frame, &mut st.out);
            }
        })
    }

    // ---- called by the reading loop -------------------------------------------------------

    /// Request-body DATA from the daemon.
    pub(crate) fn on_data(&self, id: StreamId, data: Bytes, end: bool) {
        self.with_state(|st| {
            let State { out, streams, .. } = st;
            // A stream we already closed or aborted: the daemon sent this before it knew.
            let Some(entry) = streams.get_mut(&id) else {
                return;
            };
            let Some(tx) = &entry.body_tx else {
                return;
            };
            let len = data.len();
            if tx.send((data, end)).is_err() && !end && len > 0 {
                // Nobody reads this body any more (the handler dropped it, or answered and
                // finished): discard the bytes but keep the daemon's window open.
                encode_control(
                    &Frame::Window {
                        id,
                        increment: len as u32,
                    },
                    out,
                );
            }
            if end {
                entry.body_tx = None;
                if entry.finished() {
                    streams.remove(&id);
                }
            }
        })
    }

    /// WINDOW from the daemon: more credit for a response body.
    pub(crate) fn on_window(&self, id: StreamId, increment: u32) {
        let waker = self.with_state(|st| {
            let entry = st.streams.get_mut(&id)?;
            if !entry.window.grant(increment) {
                tracing::warn!(id, increment, "daemon grew a response window past 2^31-1");
            }
            entry.waker.take()
        });
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// ABORT from the daemon. Answers it (unless the response was already complete) and
    /// returns the task to cancel. A writer waiting for credit on the stream (an upgraded
    /// stream's, in a task of the application's own) is woken to find it gone.
    pub(crate) fn on_abort(&self, id: StreamId, code: AbortCode) -> Option<AbortHandle> {
        let (task, waker) = self.with_state(|st| {
            let mut entry = st.streams.remove(&id)?;
            let waker = entry.waker.take();
            if entry.response == ResponsePhase::Done {
                return Some((None, waker));
            }
            if !st.closing {
                encode_control(&Frame::Abort { id, code }, &mut st.out);
            }
            Some((entry.task, waker))
        })?;
        if let Some(waker) = waker {
            waker.wake();
        }
        task
    }

    /// DRAIN: from now on the connection ends when its last stream closes. True when that is
    /// already the case.
    pub(crate) fn begin_drain(&self) -> bool {
        self.with_state(|st| {
            st.draining = true;
            st.streams.is_empty()
        })
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.state.lock().streams.is_empty()
    }

    pub(crate) async fn idle_changed(&self) {
        self.idle.notified().await
    }

    /// Aborts every stream whose response is not complete, telling the daemon with `code`
    /// (`None`: the daemon is gone, tell nobody), and closes the table. Returns the tasks to
    /// cancel; the caller cancels them outside the lock.
    pub(crate) fn abort_all(&self, code: Option<AbortCode>) -> Vec<AbortHandle> {
        let (tasks, wakers) = self.with_state(|st| {
            let mut tasks = Vec::new();
            let mut wakers = Vec::new();
            for (id, mut entry) in st.streams.drain() {
                wakers.extend(entry.waker.take());
                if entry.response == ResponsePhase::Done {
                    continue;
                }
                if let Some(code) = code {
                    encode_control(&Frame::Abort { id, code }, &mut st.out);
                }
                tasks.extend(entry.task);
            }
            (tasks, wakers)
        });
        for waker in wakers {
            waker.wake();
        }
        tasks
    }

    /// Accepts no more frames; the writer exits once the buffer is written.
    pub(crate) fn close(&self) {
        self.with_state(|st| st.closing = true);
        self.writer_wake.notify_one();
    }

    // ---- called by the writer task -------------------------------------------------------

    /// Swaps the pending frames into `spare` (which must be empty). Returns false when there
    /// is nothing to write; `Err(())` when there is nothing to write and never will be.
    pub(crate) fn take_pending(&self, spare: &mut BytesMut) -> Result<Option<u64>, ()> {
        let mut st = self.state.lock();
        if st.out.is_empty() {
            return if st.closing { Err(()) } else { Ok(None) };
        }
        std::mem::swap(&mut st.out, spare);
        st.taken += 1;
        Ok(Some(st.taken))
    }

    pub(crate) async fn writer_idle(&self) {
        self.writer_wake.notified().await
    }

    /// Batch `batch` (from [`Conn::take_pending`]) is on the socket.
    pub(crate) fn written(&self, batch: u64) {
        self.state.lock().written = batch;
        self.space.notify_waiters();
        self.flushed.notify_waiters();
    }

    /// The socket failed: drop what is buffered and accept nothing more.
    pub(crate) fn writer_failed(&self) {
        {
            let mut st = self.state.lock();
            st.closing = true;
            st.out.clear();
        }
        self.space.notify_waiters();
        self.flushed.notify_waiters();
    }

    // ---- called by request tasks and request bodies ---------------------------------------

    /// The buffer holds more than [`OUTBOX_LIMIT`] bytes: body senders should wait.
    pub(crate) fn outbox_full(&self) -> bool {
        self.state.lock().out.len() > OUTBOX_LIMIT
    }

    /// Waits while the buffer holds more than [`OUTBOX_LIMIT`] bytes.
    pub(crate) async fn wait_space(&self) {
        loop {
            let mut notified = pin!(self.space.notified());
            notified.as_mut().enable();
            {
                let st = self.state.lock();
                if st.out.len() <= OUTBOX_LIMIT || st.closing {
                    return;
                }
            }
            notified.await;
        }
    }

    /// STARTED: the request is about to be handed to application code. Returns once the
    /// frame is on the socket, not merely buffered: if the handler then kills the process
    /// (`/crash`, a segfault), the daemon must know the request had started, or it would
    /// replay this "query of death" to the next worker.
    pub(crate) async fn started(&self, id: StreamId) -> Result<(), Ended> {
        let batch = self.with_state(|st| {
            if st.closing {
                return Err(Ended);
            }
            let entry = st.streams.get_mut(&id).ok_or(Ended)?;
            if entry.started || entry.response != ResponsePhase::AwaitingHead {
                // Already said (or implied by the response head): nothing more to send.
                return Ok(st.taken);
            }
            entry.started = true;
            encode_control(&Frame::Started { id }, &mut st.out);
            // The writer's next batch holds the frame.
            Ok(st.taken + 1)
        })?;
        loop {
            let mut notified = pin!(self.flushed.notified());
            notified.as_mut().enable();
            {
                let st = self.state.lock();
                if st.written >= batch {
                    return Ok(());
                }
                if st.closing {
                    return Err(Ended);
                }
            }
            notified.await;
        }
    }

    /// Response-window credit available now for the inline part of a response.
    pub(crate) fn window(&self, id: StreamId) -> Result<u32, Ended> {
        let st = self.state.lock();
        st.streams
            .get(&id)
            .map(|e| e.window.available())
            .ok_or(Ended)
    }

    /// Sends the RESPONSE head (with its inline body). An unencodable head (a header longer
    /// than 64 KiB, a head larger than the daemon accepts) aborts the stream as a handler
    /// failure.
    pub(crate) fn send_head(&self, head: ResponseHead) -> Result<(), Ended> {
        let (id, inline, end) = (head.id, head.body.len(), head.end);
        let frame = Frame::Response(head);
        self.with_state(|st| {
            let State {
                out,
                streams,
                closing,
                ..
            } = st;
            let entry = streams.get_mut(&id).filter(|_| !*closing).ok_or(Ended)?;
            debug_assert_eq!(entry.response, ResponsePhase::AwaitingHead);
            let start = out.len();
            let encoded = encode(&frame, out);
            let fits = out.len() - start <= self.max_frame + keel_proto::HEADER_LEN;
            if encoded.is_err() || !fits || !entry.window.consume(inline) {
                // `encode` may leave a partial frame behind on error: cut it off.
                out.truncate(start);
                tracing::warn!(
                    id,
                    error = ?encoded.err(),
                    "response head cannot be sent (too large for the protocol)"
                );
                streams.remove(&id);
                encode_control(
                    &Frame::Abort {
                        id,
                        code: AbortCode::HandlerFailed,
                    },
                    out,
                );
                return Err(Ended);
            }
            entry.response = if end {
                ResponsePhase::Done
            } else {
                ResponsePhase::Body
            };
            if entry.finished() {
                streams.remove(&id);
            }
            Ok(())
        })
    }

    /// Takes up to `want` bytes of response credit, or registers the task to be woken by the
    /// next WINDOW.
    pub(crate) fn poll_credit(
        &self,
        id: StreamId,
        want: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Result<usize, Ended>> {
        let mut st = self.state.lock();
        if st.closing {
            return Poll::Ready(Err(Ended));
        }
        let Some(entry) = st.streams.get_mut(&id) else {
            return Poll::Ready(Err(Ended));
        };
        let n = (entry.window.available() as usize).min(want);
        if n == 0 {
            entry.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        entry.window.consume(n);
        Poll::Ready(Ok(n))
    }

    /// Sends response-body bytes whose credit was taken with [`Conn::poll_credit`].
    pub(crate) fn send_data(&self, id: StreamId, data: &[u8], end: bool) -> Result<(), Ended> {
        self.with_state(|st| {
            let State {
                out,
                streams,
                closing,
                ..
            } = st;
            let entry = streams.get_mut(&id).filter(|_| !*closing).ok_or(Ended)?;
            encode_data(id, data, end, out);
            if end {
                entry.response = ResponsePhase::Done;
                if entry.finished() {
                    streams.remove(&id);
                }
            }
            Ok(())
        })
    }

    /// The handler panicked, returned an error, or its body failed: abort the stream.
    pub(crate) fn handler_failed(&self, id: StreamId) {
        self.with_state(|st| {
            let open = st
                .streams
                .get(&id)
                .is_some_and(|e| e.response != ResponsePhase::Done);
            if open {
                st.streams.remove(&id);
                if !st.closing {
                    let abort = Frame::Abort {
                        id,
                        code: AbortCode::HandlerFailed,
                    };
                    encode_control(&abort, &mut st.out);
                }
            }
        })
    }

    /// The handler consumed `n` request-body bytes: grant them back to the daemon, if it may
    /// still send any.
    pub(crate) fn grant_request(&self, id: StreamId, n: u32) {
        if n == 0 {
            return;
        }
        self.with_state(|st| {
            let open = st.streams.get(&id).is_some_and(|e| e.body_tx.is_some());
            if open && !st.closing {
                encode_control(&Frame::Window { id, increment: n }, &mut st.out);
            }
        })
    }
}

/// Encodes a frame that cannot fail to encode (fixed-size fields only).
fn encode_control(frame: &Frame, out: &mut BytesMut) {
    let encoded = encode(frame, out);
    debug_assert!(encoded.is_ok(), "control frames always encode");
}

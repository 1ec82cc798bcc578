//! Per-request stream state: which side may send what when, and the flow-control windows.
//!
//! Both the daemon and a worker keep one [`StreamState`] per open stream and feed it every
//! frame they send or receive for that stream. A frame the peer was not allowed to send is a
//! [`StreamError`]: the daemon ends a worker's connection on any of them.

use crate::frame::{Frame, StreamId};

/// How far the response of a stream has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponsePhase {
    /// No RESPONSE frame yet.
    AwaitingHead,
    /// Head sent; body DATA may follow.
    Body,
    /// The worker ended its side (END_STREAM) or the stream was aborted.
    Done,
}

/// A frame that broke the protocol on one stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream {id}: {what}")]
pub struct StreamError {
    pub id: StreamId,
    pub what: &'static str,
}

/// Send credit for one direction of one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window(u32);

/// No window may grow past this (as in HTTP/2): a larger grant is a protocol error.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

impl Window {
    pub fn new(initial: u32) -> Self {
        Window(initial.min(MAX_WINDOW))
    }

    pub fn available(&self) -> u32 {
        self.0
    }

    /// Spends `n` bytes of credit; false (and nothing spent) when there is not enough.
    pub fn consume(&mut self, n: usize) -> bool {
        match u32::try_from(n) {
            Ok(n) if n <= self.0 => {
                self.0 -= n;
                true
            }
            _ => false,
        }
    }

    /// Adds credit; false when it would pass [`MAX_WINDOW`].
    pub fn grant(&mut self, n: u32) -> bool {
        match self.0.checked_add(n) {
            Some(v) if v <= MAX_WINDOW => {
                self.0 = v;
                true
            }
            _ => false,
        }
    }
}

/// The state of one request stream, as seen by either side.
#[derive(Clone, Debug)]
pub struct StreamState {
    pub id: StreamId,
    /// The daemon may still send request-body bytes (or, after a 101, client bytes).
    pub request_open: bool,
    pub response: ResponsePhase,
    /// The worker said STARTED (or answered, which implies it).
    pub started: bool,
    /// The worker answered 101: both directions are now raw byte streams.
    pub upgraded: bool,
    /// Credit for daemon → worker body bytes.
    pub request_window: Window,
    /// Credit for worker → daemon body bytes.
    pub response_window: Window,
}

impl StreamState {
    /// A stream whose REQUEST frame (with `inline_body` bytes, and `end` set or not) was sent.
    pub fn opened(id: StreamId, initial_window: u32, inline_body: usize, end: bool) -> Self {
        let mut request_window = Window::new(initial_window);
        // The daemon never sends more inline than the window allows; saturate if it did.
        if !request_window.consume(inline_body) {
            request_window = Window::new(0);
        }
        StreamState {
            id,
            request_open: !end,
            response: ResponsePhase::AwaitingHead,
            started: false,
            upgraded: false,
            request_window,
            response_window: Window::new(initial_window),
        }
    }

    fn err(&self, what: &'static str) -> StreamError {
        StreamError { id: self.id, what }
    }

    /// Both directions are finished: the stream's slot is free again.
    pub fn is_closed(&self) -> bool {
        !self.request_open && self.response == ResponsePhase::Done
    }

    /// Checks a frame the worker sent on this stream and applies it.
    pub fn recv_from_worker(&mut self, frame: &Frame) -> Result<(), StreamError> {
        match frame {
            Frame::Started { .. } => {
                if self.started || self.response != ResponsePhase::AwaitingHead {
                    return Err(self.err("STARTED after STARTED or RESPONSE"));
                }
                self.started = true;
            }
            Frame::Response(head) => {
                if self.response != ResponsePhase::AwaitingHead {
                    return Err(self.err("second RESPONSE"));
                }
                if (100..200).contains(&head.status) && head.status != 101 {
                    return Err(self.err("informational status other than 101"));
                }
                if !self.response_window.consume(head.body.len()) {
                    return Err(self.err("inline response body exceeds the window"));
                }
                self.started = true;
                if head.status == 101 {
                    self.upgraded = true;
                    if !self.request_open {
                        return Err(self.err("101 for a request that is not an upgrade"));
                    }
                }
                self.response = if head.end {
                    ResponsePhase::Done
                } else {
                    ResponsePhase::Body
                };
            }
            Frame::Data { data, end, .. } => {
                if self.response != ResponsePhase::Body {
                    return Err(self.err("DATA outside a response body"));
                }
                if !self.response_window.consume(data.len()) {
                    return Err(self.err("DATA exceeds the window"));
                }
                if *end {
                    self.response = ResponsePhase::Done;
                }
            }
            Frame::Window { increment, .. } => {
                if !self.request_window.grant(*increment) {
                    return Err(self.err("window grown past 2^31-1"));
                }
            }
            Frame::Abort { .. } => {
                self.request_open = false;
                self.response = ResponsePhase::Done;
            }
            _ => return Err(self.err("frame kind not allowed from a worker on a stream")),
        }
        Ok(())
    }

    /// Records request-body bytes the daemon sends; false when the window does not allow it.
    pub fn send_request_data(&mut self, len: usize, end: bool) -> bool {
        if !self.request_open || !self.request_window.consume(len) {
            return false;
        }
        if end {
            self.request_open = false;
        }
        true
    }

    /// Records an abort the daemon sent: no more frames go out on this stream, and the
    /// worker's answer (END or ABORT) closes it.
    pub fn abort_sent(&mut self) {
        self.request_open = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{CachePolicy, ResponseHead};
    use bytes::Bytes;

    fn response(id: StreamId, status: u16, body: &'static [u8], end: bool) -> Frame {
        Frame::Response(ResponseHead {
            id,
            status,
            cache: CachePolicy::None,
            headers: vec![],
            body: Bytes::from_static(body),
            end,
        })
    }

    #[test]
    fn started_then_response_then_data_closes() {
        let mut s = StreamState::opened(1, 10, 0, true);
        s.recv_from_worker(&Frame::Started { id: 1 }).unwrap();
        s.recv_from_worker(&response(1, 200, b"abc", false))
            .unwrap();
        assert_eq!(s.response_window.available(), 7);
        s.recv_from_worker(&Frame::Data {
            id: 1,
            data: Bytes::from_static(b"defg"),
            end: true,
        })
        .unwrap();
        assert!(s.is_closed());
    }

    #[test]
    fn data_beyond_window_is_an_error() {
        let mut s = StreamState::opened(1, 4, 0, true);
        s.recv_from_worker(&response(1, 200, b"", false)).unwrap();
        let e = s.recv_from_worker(&Frame::Data {
            id: 1,
            data: Bytes::from_static(b"12345"),
            end: false,
        });
        assert!(e.is_err());
    }

    #[test]
    fn data_before_response_and_double_response_are_errors() {
        let mut s = StreamState::opened(1, 100, 0, true);
        assert!(
            s.recv_from_worker(&Frame::Data {
                id: 1,
                data: Bytes::new(),
                end: false
            })
            .is_err()
        );
        s.recv_from_worker(&response(1, 200, b"", false)).unwrap();
        assert!(s.recv_from_worker(&response(1, 200, b"", true)).is_err());
        assert!(s.recv_from_worker(&Frame::Started { id: 1 }).is_err());
    }

    #[test]
    fn upgrade_needs_an_open_request_stream() {
        let mut s = StreamState::opened(1, 100, 0, true);
        assert!(s.recv_from_worker(&response(1, 101, b"", false)).is_err());
        let mut s = StreamState::opened(2, 100, 0, false);
        s.recv_from_worker(&response(2, 101, b"", false)).unwrap();
        assert!(s.upgraded);
        assert!(s.send_request_data(50, false));
    }

    #[test]
    fn an_upgraded_stream_carries_raw_bytes_both_ways_and_closes_when_both_end() {
        let mut s = StreamState::opened(1, 100, 0, false);
        s.recv_from_worker(&response(1, 101, b"", false)).unwrap();
        // The client's bytes, under the request window.
        assert!(s.send_request_data(60, false));
        assert!(!s.send_request_data(41, false));
        s.recv_from_worker(&Frame::Window {
            id: 1,
            increment: 60,
        })
        .unwrap();
        assert!(s.send_request_data(100, false));
        // The worker's bytes, under the response window.
        let data = |n: usize, end| Frame::Data {
            id: 1,
            data: Bytes::from(vec![0u8; n]),
            end,
        };
        s.recv_from_worker(&data(100, false)).unwrap();
        assert!(s.recv_from_worker(&data(1, false)).is_err());
        let mut s = StreamState::opened(2, 100, 0, false);
        s.recv_from_worker(&response(2, 101, b"", false)).unwrap();
        // The worker ends its side: the client's side is still open.
        s.recv_from_worker(&Frame::Data {
            id: 2,
            data: Bytes::new(),
            end: true,
        })
        .unwrap();
        assert!(!s.is_closed());
        assert!(s.send_request_data(0, true));
        assert!(s.is_closed());
    }

    #[test]
    fn an_abort_ends_both_directions_of_an_upgraded_stream() {
        let mut s = StreamState::opened(1, 100, 0, false);
        s.recv_from_worker(&response(1, 101, b"", false)).unwrap();
        s.recv_from_worker(&Frame::Abort {
            id: 1,
            code: crate::frame::AbortCode::HandlerFailed,
        })
        .unwrap();
        assert!(s.is_closed());
        assert!(!s.send_request_data(1, false));
    }

    #[test]
    fn request_window_is_enforced_and_granted() {
        let mut s = StreamState::opened(1, 10, 4, false);
        assert!(!s.send_request_data(7, false));
        assert!(s.send_request_data(6, false));
        s.recv_from_worker(&Frame::Window {
            id: 1,
            increment: 5,
        })
        .unwrap();
        assert!(s.send_request_data(5, true));
        assert!(!s.request_open);
        assert!(
            s.recv_from_worker(&Frame::Window {
                id: 1,
                increment: u32::MAX
            })
            .is_err()
        );
    }
}

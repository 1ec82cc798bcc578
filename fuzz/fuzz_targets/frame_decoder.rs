//! Feeds arbitrary bytes to the frame decoder as a stream, in chunks, the way the daemon reads
//! a worker's socket, and runs every decoded stream frame through a `StreamState` the way the
//! daemon does. Checks: no panic; the buffered bytes never exceed one maximal frame plus the
//! chunk just read; every decoded frame re-encodes to bytes that decode to the same frame.
//!
//! Run: `cargo +nightly fuzz run frame_decoder fuzz/corpus/frame_decoder` from the repo root
//! (the seed corpus is written by `cargo test -p keel-proto --test wire_examples -- --ignored`).

#![no_main]

use bytes::BytesMut;
use keel_proto::{
    DEFAULT_INITIAL_WINDOW, Decoder, Frame, HEADER_LEN, StreamId, StreamState, encode,
};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

/// Small, so that the limit is reached often.
const MAX_PAYLOAD: u32 = 4096;
/// As the daemon: a worker never gets more than this many streams.
const CAPACITY: usize = 16;

fuzz_target!(|data: &[u8]| {
    let decoder = Decoder::new(MAX_PAYLOAD);
    let mut buf = BytesMut::new();
    let mut streams: HashMap<StreamId, StreamState> = HashMap::new();
    // Chunk sizes from a small LCG seeded by the input, so splits vary with the input without
    // spending its leading bytes (the seed corpus is raw frames).
    let mut seed = (data.len() as u32) ^ u32::from(data.last().copied().unwrap_or(0)) << 8;
    let mut rest = data;
    'feed: while !rest.is_empty() {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = match (seed >> 16) % 4 {
            0 => 1,
            1 => 1 + (seed >> 20) as usize % 16,
            2 => 1 + (seed >> 20) as usize % 700,
            _ => rest.len(),
        }
        .min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    check_roundtrip(&decoder, &frame);
                    if !apply(&mut streams, &frame) {
                        break 'feed; // the daemon closes the connection
                    }
                }
                Ok(None) => break,
                Err(_) => break 'feed, // the daemon closes the connection
            }
        }
        // Whatever is left is a partial frame: less than one maximal frame.
        assert!(buf.len() < HEADER_LEN + MAX_PAYLOAD as usize);
    }
});

fn check_roundtrip(decoder: &Decoder, frame: &Frame) {
    let mut out = BytesMut::new();
    encode(frame, &mut out).expect("a decoded frame re-encodes");
    let len = out.len();
    let again = decoder.decode(&mut out).expect("re-encoded frame decodes");
    assert_eq!(again.as_ref(), Some(frame), "{len} bytes");
    assert!(out.is_empty());
}

/// The daemon's view: REQUEST opens a stream (as if the daemon had sent it), every other stream
/// frame is checked as sent by the worker. Returns false when the daemon would close the
/// connection.
fn apply(streams: &mut HashMap<StreamId, StreamState>, frame: &Frame) -> bool {
    let id = frame.stream_id();
    if id == 0 {
        return true;
    }
    if let Frame::Request(head) = frame {
        if streams.contains_key(&id) || streams.len() >= CAPACITY {
            return true; // the daemon would never send it; ignore
        }
        streams.insert(
            id,
            StreamState::opened(id, DEFAULT_INITIAL_WINDOW, head.body.len(), head.end),
        );
        return true;
    }
    let Some(state) = streams.get_mut(&id) else {
        return false; // unknown stream id from a worker
    };
    // Let the daemon push some request body through first, when the window allows it.
    if let Frame::Data { data, end, .. } = frame
        && state.request_open
        && data.len() % 3 == 0
    {
        return state.send_request_data(data.len(), *end);
    }
    let before = state.clone();
    let ok = state.recv_from_worker(frame).is_ok();
    assert!(state.request_window.available() <= keel_proto::stream::MAX_WINDOW);
    assert!(state.response_window.available() <= before.response_window.available());
    if ok {
        // The stream only moves forward.
        assert!(
            before.response != keel_proto::ResponsePhase::Done
                || matches!(frame, Frame::Abort { .. } | Frame::Window { .. })
        );
        if before.started {
            assert!(state.started);
        }
        if state.is_closed() {
            streams.remove(&id);
        }
    }
    ok
}

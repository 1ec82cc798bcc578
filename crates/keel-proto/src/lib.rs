//! keel's worker protocol as a sans-IO library: frames, their byte layout, and the
//! per-request stream state. No sockets, no async runtime, no clock: the daemon and the
//! worker SDKs wrap it in their own I/O. The wire format is specified in
//! `docs/worker-protocol.md`; this crate is its reference implementation.

pub mod codec;
pub mod frame;
pub mod stream;

pub use codec::{
    DecodeError, Decoder, EncodeError, RequestParts, encode, encode_data, encode_request,
};
pub use frame::*;
pub use stream::{ResponsePhase, StreamError, StreamState, Window};

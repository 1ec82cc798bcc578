//! The SDK's error type: why `serve` could not start or had to stop.

use keel_proto::{DecodeError, EncodeError};

/// Why a worker could not attach to keel or lost its connection in a way that is not a
/// normal end (a normal end — drain finished, or the daemon went away — is `Ok(())`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("KEEL_FD is not set: this program is a keel worker and is started by keel")]
    NotStartedByKeel,
    #[error("KEEL_FD={0:?} is not a file descriptor number")]
    BadFd(String),
    #[error("KEEL_CAPACITY={0:?} is not a whole number above 0")]
    BadCapacity(String),
    #[error("the keel connection (KEEL_FD) was already taken by an earlier Worker::from_env")]
    AlreadyTaken,
    #[error("worker socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon closed the connection before answering HELLO")]
    NoWelcome,
    #[error("the daemon speaks worker protocol version {daemon}, this SDK speaks version {ours}")]
    VersionMismatch { daemon: u16, ours: u16 },
    #[error("bad frame from the daemon: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode a frame: {0}")]
    Encode(#[from] EncodeError),
    #[error("the daemon broke the worker protocol: {0}")]
    Protocol(&'static str),
}

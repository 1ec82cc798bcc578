//! The SDK's error type: why `serve` could not start or had to stop.

use keel_proto::{DecodeError, EncodeError};

/// Why a worker could not attach to keel or lost its connection in a way that is not a
/// normal end (a normal end — drain finished, or the daemon went away — is `Ok(())`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "neither KEEL_FD nor KEEL_ATTACH is set: this program is a keel worker; keel starts it \
         (KEEL_FD), or set KEEL_ATTACH to a pool's attach socket \
         (<runtime_dir>/attach/<pool>/worker.sock) to join a pool started with attach = true"
    )]
    NotStartedByKeel,
    #[error("KEEL_FD={0:?} is not a file descriptor number")]
    BadFd(String),
    #[error("cannot attach to keel at {socket}: {source}")]
    Attach {
        socket: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the attach token from {file}: {source}")]
    AttachToken {
        file: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the attach token is not 64 hexadecimal characters")]
    BadAttachToken,
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

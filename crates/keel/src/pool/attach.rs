//! Attached workers: the pool's named request queue, opened by workers keel did not start
//! (HTTP.sys lets any process with the right to open a named request queue take requests
//! from it; this is keel's version, for a debugger, or a worker supervised by something else).
//!
//! A pool with `attach = true` listens on `<runtime_dir>/attach/<pool>/worker.sock`, in a
//! directory of mode 0700 owned by the pool's identity, beside a `token` file (mode 0400,
//! same owner) holding a one-time token: 32 random bytes as 64 lower-case hex characters.
//! A connecting process is admitted when
//!
//! 1. its uid (`SO_PEERCRED`) is the pool's uid — root is not exempt unless the pool runs as
//!    root — and
//! 2. its first line, read within [`PREAMBLE_TIMEOUT`] and [`PREAMBLE_MAX`] bytes, is
//!    `KEEL-ATTACH <token>\n` with the current token (compared in constant time).
//!
//! After each admission the token is replaced (the file is rewritten), so a token works once.
//! Anything else closes the connection and logs a warning naming the reason and the peer.
//! An admitted worker is handed on as an [`Attached`]: from there on it is treated exactly
//! like a spawned worker (HELLO comes next; any bytes of it already read are in
//! `already_read`). The wire format is in `docs/worker-protocol.md`, "Attached workers".
//!
//! Invariant: check and replacement of the token happen under one lock, so two connections
//! can never both be admitted with the same token.

use bytes::BytesMut;
use parking_lot::Mutex;
use std::fs;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What an attaching worker sends first, followed by the token and a line feed.
pub const PREAMBLE_PREFIX: &[u8] = b"KEEL-ATTACH ";
/// Hexadecimal characters in a token (32 random bytes).
pub const TOKEN_HEX_LEN: usize = 64;
/// The daemon reads at most this many bytes looking for the preamble's line feed.
pub const PREAMBLE_MAX: usize = 128;
/// ... and waits at most this long for it.
pub const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections still in their preamble at once; more are closed at once.
const MAX_PENDING: usize = 64;

const SOCKET_NAME: &str = "worker.sock";
const TOKEN_NAME: &str = "token";
/// The next token is written here, then renamed over `token`.
const TOKEN_TMP_NAME: &str = ".token.new";

/// A worker that passed the checks. Read HELLO next, starting with `already_read`.
#[derive(Debug)]
pub struct Attached {
    pub stream: UnixStream,
    /// The peer's pid (`SO_PEERCRED`; 0 if the kernel did not say).
    pub pid: u32,
    pub uid: u32,
    /// Bytes that followed the preamble's line feed in the same read: the start of HELLO.
    pub already_read: BytesMut,
}

/// Where a pool's attached workers connect.
#[derive(Clone, Debug)]
pub struct AttachPoint {
    /// `<runtime_dir>/attach/<pool>`, mode 0700, owned by the pool's identity.
    pub dir: PathBuf,
    /// `<dir>/worker.sock`.
    pub socket: PathBuf,
    /// `<dir>/token`, mode 0400: the token the next worker must present.
    pub token_file: PathBuf,
}

/// Creates the directory, socket and first token; returns the point and a task future that
/// accepts until the token is cancelled, sending each accepted worker on `tx`.
///
/// `owner` is the pool's identity (uid, gid); `None` = keel's own (effective) uid and gid.
/// The future also ends when `tx`'s receiver is dropped. When it ends — or is dropped — the
/// socket, the token file and the directory are removed.
pub fn open(
    pool: &str,
    runtime_dir: &Path,
    owner: Option<(u32, u32)>,
    tx: mpsc::Sender<Attached>,
    stop: CancellationToken,
) -> io::Result<(AttachPoint, impl Future<Output = ()> + Send + 'static)> {
    if pool.is_empty() || pool == "." || pool == ".." || pool.contains(['/', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("pool name {pool:?} cannot name an attach directory"),
        ));
    }
    let (uid, gid) = owner.unwrap_or_else(|| {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    });
    // Traversable by the pools' users, listable by nobody else.
    let base = runtime_dir.join("attach");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&base)
        .map_err(|e| context(&base, e))?;
    let dir = base.join(pool);
    prepare_dir(&dir, uid, gid).map_err(|e| context(&dir, e))?;
    let socket = dir.join(SOCKET_NAME);
    let token_file = dir.join(TOKEN_NAME);
    // A previous run's files (stale socket, old token): never reused.
    for stale in [&socket, &token_file, &dir.join(TOKEN_TMP_NAME)] {
        remove_if_present(stale).map_err(|e| context(stale, e))?;
    }

    let listener =
        std::os::unix::net::UnixListener::bind(&socket).map_err(|e| context(&socket, e))?;
    let socket_ino = fs::symlink_metadata(&socket)
        .map_err(|e| context(&socket, e))?
        .ino();
    let shared = Arc::new(Shared {
        pool: pool.to_owned(),
        uid,
        gid,
        dir: dir.clone(),
        token_file: token_file.clone(),
        token: Mutex::new(TokenState {
            hex: [0; TOKEN_HEX_LEN],
            ino: None,
        }),
    });
    // From here on, an early return removes what was created.
    let cleanup = Cleanup {
        shared: shared.clone(),
        socket: socket.clone(),
        socket_ino,
    };
    listener.set_nonblocking(true)?;
    std::os::unix::fs::chown(&socket, Some(uid), Some(gid)).map_err(|e| context(&socket, e))?;
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))
        .map_err(|e| context(&socket, e))?;
    shared.rotate(&mut shared.token.lock())?;

    tracing::info!(
        "pool {pool}: attached workers may join at {} (token in {})",
        socket.display(),
        token_file.display()
    );
    let point = AttachPoint {
        dir,
        socket,
        token_file,
    };
    Ok((point, accept_loop(shared, listener, tx, stop, cleanup)))
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: std::os::unix::net::UnixListener,
    tx: mpsc::Sender<Attached>,
    stop: CancellationToken,
    cleanup: Cleanup,
) {
    // Dropped last: the files go once nothing can accept any more.
    let _cleanup = cleanup;
    let pool = &shared.pool;
    let listener = match UnixListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("pool {pool}: cannot listen for attached workers: {e}");
            return;
        }
    };
    let mut pending = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tx.closed() => break,
            Some(_) = pending.join_next(), if !pending.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if pending.len() >= MAX_PENDING => {
                    let (pid, uid) = peer_ids(&stream);
                    tracing::warn!(
                        "pool {pool}: attach refused: {MAX_PENDING} connections are already \
                         presenting tokens (peer pid {pid}, uid {uid})"
                    );
                }
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    let tx = tx.clone();
                    pending.spawn(async move {
                        match shared.admit(stream).await {
                            Ok(attached) => {
                                tracing::info!(
                                    "pool {}: worker pid {} (uid {}) attached",
                                    shared.pool, attached.pid, attached.uid
                                );
                                // A closed receiver ends the accept loop too.
                                let _ = tx.send(attached).await;
                            }
                            Err(refused) => tracing::warn!(
                                "pool {}: attach refused: {} (peer pid {}, uid {})",
                                shared.pool, refused.reason, refused.pid, refused.uid
                            ),
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors, most likely: do not spin.
                    tracing::warn!("pool {pool}: accepting an attached worker: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    pending.shutdown().await;
}

/// What the accept loop and the connections in their preamble share.
struct Shared {
    pool: String,
    uid: u32,
    gid: u32,
    dir: PathBuf,
    token_file: PathBuf,
    token: Mutex<TokenState>,
}

struct TokenState {
    /// The token the next worker must present, as lower-case hex.
    hex: [u8; TOKEN_HEX_LEN],
    /// The inode of the token file this instance wrote last (so cleanup removes only it).
    ino: Option<u64>,
}

/// Why a connection was closed, and who it was.
struct Refused {
    reason: String,
    pid: String,
    uid: String,
}

impl Shared {
    /// The checks, in order: peer uid, preamble, token. On success the token is replaced.
    async fn admit(&self, mut stream: UnixStream) -> Result<Attached, Refused> {
        let cred = stream.peer_cred().map_err(|e| Refused {
            reason: format!("cannot read the peer's credentials: {e}"),
            pid: "?".into(),
            uid: "?".into(),
        })?;
        let pid = cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
        let uid = cred.uid();
        let refuse = |reason: String| Refused {
            reason,
            pid: pid.to_string(),
            uid: uid.to_string(),
        };
        if uid != self.uid {
            return Err(refuse(format!(
                "uid {uid} is not the pool's uid {}",
                self.uid
            )));
        }
        let mut buf = [0u8; PREAMBLE_MAX];
        let (line_end, filled) =
            match tokio::time::timeout(PREAMBLE_TIMEOUT, read_line(&mut stream, &mut buf)).await {
                Err(_) => {
                    return Err(refuse(format!(
                        "no KEEL-ATTACH line within {PREAMBLE_TIMEOUT:?}"
                    )));
                }
                Ok(Err(reason)) => return Err(refuse(reason)),
                Ok(Ok(found)) => found,
            };
        let line = &buf[..line_end];
        let Some(presented) = line
            .strip_prefix(PREAMBLE_PREFIX)
            .filter(|t| t.len() == TOKEN_HEX_LEN)
        else {
            return Err(refuse("malformed KEEL-ATTACH line".into()));
        };
        {
            let mut token = self.token.lock();
            if !constant_time_eq(presented, &token.hex) {
                return Err(refuse("wrong token".into()));
            }
            if let Err(e) = self.rotate(&mut token) {
                // The old token is void all the same (`rotate` replaced it in memory first).
                tracing::error!(
                    "pool {}: cannot write the next attach token to {}: {e}; \
                     no other worker can attach until keel restarts the pool",
                    self.pool,
                    self.token_file.display()
                );
            }
        }
        Ok(Attached {
            stream,
            pid,
            uid,
            already_read: BytesMut::from(&buf[line_end + 1..filled]),
        })
    }

    /// Replaces the token: in memory first (so the old one is void whatever happens to the
    /// file), then in the file, written beside it and renamed over it.
    fn rotate(&self, token: &mut TokenState) -> io::Result<()> {
        token.hex = new_token()?;
        let tmp = self.dir.join(TOKEN_TMP_NAME);
        remove_if_present(&tmp)?;
        let written = (|| {
            // `create_new` (O_EXCL) never follows a symlink planted at this name.
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&tmp)?;
            file.write_all(&token.hex)?;
            std::os::unix::fs::fchown(&file, Some(self.uid), Some(self.gid))?;
            file.set_permissions(fs::Permissions::from_mode(0o400))?;
            let ino = file.metadata()?.ino();
            fs::rename(&tmp, &self.token_file)?;
            Ok(ino)
        })();
        match written {
            Ok(ino) => {
                token.ino = Some(ino);
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(context(&self.token_file, e))
            }
        }
    }
}

/// Reads until a line feed within the first [`PREAMBLE_MAX`] bytes: its index and the bytes
/// read in all.
async fn read_line(
    stream: &mut UnixStream,
    buf: &mut [u8; PREAMBLE_MAX],
) -> Result<(usize, usize), String> {
    let mut filled = 0;
    loop {
        if let Some(i) = buf[..filled].iter().position(|b| *b == b'\n') {
            return Ok((i, filled));
        }
        if filled == buf.len() {
            return Err(format!("no line feed in the first {PREAMBLE_MAX} bytes"));
        }
        match stream.read(&mut buf[filled..]).await {
            Ok(0) => return Err("closed before sending a KEEL-ATTACH line".into()),
            Ok(n) => filled += n,
            Err(e) => return Err(format!("reading the KEEL-ATTACH line: {e}")),
        }
    }
}

/// Removes the socket, the token and the directory — only what this instance created, so a
/// later instance for the same pool is not disturbed.
struct Cleanup {
    shared: Arc<Shared>,
    socket: PathBuf,
    socket_ino: u64,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_if_same(&self.socket, Some(self.socket_ino));
        remove_if_same(&self.shared.token_file, self.shared.token.lock().ino);
        let _ = fs::remove_file(self.shared.dir.join(TOKEN_TMP_NAME));
        // Fails, rightly, if anything else is in it (a later instance's socket).
        let _ = fs::remove_dir(&self.shared.dir);
    }
}

fn remove_if_same(path: &Path, ino: Option<u64>) {
    if let (Ok(meta), Some(ino)) = (fs::symlink_metadata(path), ino)
        && meta.ino() == ino
        && let Err(e) = fs::remove_file(path)
    {
        tracing::debug!("removing {}: {e}", path.display());
    }
}

/// The pool's directory: created 0700, or, left by an earlier run, checked to be a real
/// directory (not a symlink); either way owned by the pool's identity with mode 0700.
fn prepare_dir(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if !fs::symlink_metadata(dir)?.file_type().is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a directory",
                ));
            }
        }
        Err(e) => return Err(e),
    }
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// 32 bytes from the kernel's random source, as lower-case hex.
fn new_token() -> io::Result<[u8; TOKEN_HEX_LEN]> {
    let mut raw = [0u8; TOKEN_HEX_LEN / 2];
    fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; TOKEN_HEX_LEN];
    for (i, b) in raw.iter().enumerate() {
        hex[2 * i] = HEX[usize::from(b >> 4)];
        hex[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
    Ok(hex)
}

/// Equal lengths assumed known; the time taken does not depend on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn peer_ids(stream: &UnixStream) -> (String, String) {
    match stream.peer_cred() {
        Ok(cred) => (
            cred.pid().map_or_else(|| "?".into(), |p| p.to_string()),
            cred.uid().to_string(),
        ),
        Err(_) => ("?".into(), "?".into()),
    }
}

fn context(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const PATIENCE: Duration = Duration::from_secs(5);

    struct Harness {
        // Held for its Drop (removes the temporary runtime directory).
        runtime: tempfile::TempDir,
        point: AttachPoint,
        rx: mpsc::Receiver<Attached>,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(owner: Option<(u32, u32)>) -> Harness {
        let runtime = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel(4);
        let stop = CancellationToken::new();
        let (point, task) = open("demo", runtime.path(), owner, tx, stop.clone()).unwrap();
        Harness {
            runtime,
            point,
            rx,
            stop,
            task: tokio::spawn(task),
        }
    }

    fn token(point: &AttachPoint) -> String {
        fs::read_to_string(&point.token_file).unwrap()
    }

    /// Connects and sends `bytes` in one write (which fails if the daemon was quicker to
    /// close a refused connection: that is for the test to see on reading).
    async fn connect(point: &AttachPoint, bytes: &[u8]) -> UnixStream {
        let mut stream = UnixStream::connect(&point.socket).await.unwrap();
        let _ = stream.write_all(bytes).await;
        stream
    }

    /// The daemon closed the connection: the client reads EOF (or a reset).
    async fn assert_closed(mut stream: UnixStream) {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(_)) => panic!("the daemon sent bytes to a refused client"),
            Err(_) => panic!("the connection was not closed"),
        }
    }

    async fn next(rx: &mut mpsc::Receiver<Attached>) -> Attached {
        tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("no worker attached in time")
            .expect("the attach task ended")
    }

    fn euid() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    #[tokio::test]
    async fn the_right_token_gets_through_with_what_followed_the_preamble() {
        let mut h = start(None);
        let mut bytes = format!("KEEL-ATTACH {}\n", token(&h.point)).into_bytes();
        bytes.extend_from_slice(b"\x00\x00\x00\x14\x01 start of HELLO");
        let mut client = connect(&h.point, &bytes).await;
        let mut attached = next(&mut h.rx).await;
        assert_eq!(
            &attached.already_read[..],
            b"\x00\x00\x00\x14\x01 start of HELLO"
        );
        assert_eq!(attached.pid, std::process::id());
        assert_eq!(attached.uid, euid());
        // The stream is the worker's connection, both ways.
        attached.stream.write_all(b"WELCOME").await.unwrap();
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"WELCOME");
        client.write_all(b"more").await.unwrap();
        let mut got = [0u8; 4];
        attached.stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"more");
    }

    #[tokio::test]
    async fn a_preamble_arriving_in_pieces_is_assembled() {
        let mut h = start(None);
        let line = format!("KEEL-ATTACH {}\n", token(&h.point));
        let mut client = connect(&h.point, &line.as_bytes()[..20]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(&line.as_bytes()[20..]).await.unwrap();
        let attached = next(&mut h.rx).await;
        assert!(attached.already_read.is_empty());
    }

    #[tokio::test]
    async fn a_wrong_or_malformed_preamble_is_refused() {
        let mut h = start(None);
        let right = token(&h.point);
        let wrong = format!("KEEL-ATTACH {}\n", "0".repeat(64));
        let upper = format!("KEEL-ATTACH {}\n", right.to_uppercase());
        let short = format!("KEEL-ATTACH {}\n", &right[..63]);
        let no_line = vec![b'a'; PREAMBLE_MAX + 10];
        for bytes in [
            wrong.as_bytes(),
            short.as_bytes(),
            b"HELLO\n",
            &no_line,
            // Right token, not the first line.
            format!("\nKEEL-ATTACH {right}\n").as_bytes(),
        ] {
            assert_closed(connect(&h.point, bytes).await).await;
        }
        // Upper case differs from the file's bytes: refused too (the SDK sends lower case).
        if upper != format!("KEEL-ATTACH {right}\n") {
            assert_closed(connect(&h.point, upper.as_bytes()).await).await;
        }
        // A client that connects and says nothing does not block the others.
        let _silent = UnixStream::connect(&h.point.socket).await.unwrap();
        assert!(h.rx.try_recv().is_err());
        // None of that consumed the token.
        assert_eq!(token(&h.point), right);
        let _client = connect(&h.point, format!("KEEL-ATTACH {right}\n").as_bytes()).await;
        next(&mut h.rx).await;
    }

    #[tokio::test]
    async fn a_token_works_once() {
        let mut h = start(None);
        let first = token(&h.point);
        let _a = connect(&h.point, format!("KEEL-ATTACH {first}\n").as_bytes()).await;
        next(&mut h.rx).await;
        let second = token(&h.point);
        assert_ne!(first, second);
        assert_eq!(second.len(), TOKEN_HEX_LEN);
        assert!(
            second
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        // The old one is void, the new one works.
        assert_closed(connect(&h.point, format!("KEEL-ATTACH {first}\n").as_bytes()).await).await;
        let _b = connect(&h.point, format!("KEEL-ATTACH {second}\n").as_bytes()).await;
        next(&mut h.rx).await;
        assert_ne!(token(&h.point), second);
    }

    #[tokio::test]
    async fn modes_owners_and_cleanup() {
        let h = start(None);
        let dir = fs::symlink_metadata(&h.point.dir).unwrap();
        assert!(dir.is_dir());
        assert_eq!(dir.mode() & 0o777, 0o700);
        assert_eq!(dir.uid(), euid());
        let token = fs::symlink_metadata(&h.point.token_file).unwrap();
        assert!(token.is_file());
        assert_eq!(token.mode() & 0o077, 0, "token readable by others");
        assert_eq!(token.mode() & 0o777, 0o400);
        assert_eq!(token.uid(), euid());
        assert_eq!(
            h.point.socket,
            h.runtime.path().join("attach/demo/worker.sock")
        );
        assert_eq!(h.point.token_file, h.point.dir.join("token"));

        h.stop.cancel();
        tokio::time::timeout(PATIENCE, h.task)
            .await
            .unwrap()
            .unwrap();
        assert!(!h.point.socket.exists());
        assert!(!h.point.token_file.exists());
        assert!(!h.point.dir.exists());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_the_task_ends_when_the_receiver_goes() {
        let runtime = tempfile::tempdir().unwrap();
        let dir = runtime.path().join("attach/demo");
        fs::create_dir_all(&dir).unwrap();
        // Left behind by a daemon that was killed: a socket nobody listens on, an old token.
        drop(std::os::unix::net::UnixListener::bind(dir.join("worker.sock")).unwrap());
        fs::write(dir.join("token"), "old").unwrap();
        let (tx, rx) = mpsc::channel(1);
        let (point, task) =
            open("demo", runtime.path(), None, tx, CancellationToken::new()).unwrap();
        assert_ne!(token(&point), "old");
        let task = tokio::spawn(task);
        UnixStream::connect(&point.socket).await.unwrap();
        drop(rx);
        tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
        assert!(!point.dir.exists());
    }

    #[test]
    fn bad_pool_names_are_refused() {
        let runtime = tempfile::tempdir().unwrap();
        for pool in ["", ".", "..", "a/b", "../x"] {
            let (tx, _rx) = mpsc::channel(1);
            let opened = open(pool, runtime.path(), None, tx, CancellationToken::new());
            assert!(opened.is_err(), "{pool:?}");
        }
    }

    /// Root is not exempt: a pool running as nobody refuses root, right token or not.
    #[tokio::test]
    async fn root_is_refused_by_a_pool_of_another_uid() {
        if euid() != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let mut h = start(Some((65534, 65534)));
        assert_eq!(fs::metadata(&h.point.dir).unwrap().uid(), 65534);
        assert_eq!(fs::metadata(&h.point.token_file).unwrap().uid(), 65534);
        let line = format!("KEEL-ATTACH {}\n", token(&h.point));
        assert_closed(connect(&h.point, line.as_bytes()).await).await;
        assert!(h.rx.try_recv().is_err());
    }

    /// A process of another uid that reaches the socket (the directory is opened up for the
    /// test) is refused by the `SO_PEERCRED` check even with the right token.
    #[tokio::test]
    async fn another_uid_is_refused() {
        let python = Path::new("/usr/bin/python3");
        if euid() != 0 || !python.exists() || !Path::new("/usr/bin/setpriv").exists() {
            eprintln!("skipped: needs root, /usr/bin/python3 and setpriv");
            return;
        }
        let mut h = start(Some((0, 0)));
        for (path, mode) in [
            (h.runtime.path(), 0o711),
            (h.point.dir.as_path(), 0o711),
            (h.point.socket.as_path(), 0o666),
        ] {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        }
        const CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.settimeout(10)
try:
    s.sendall(("KEEL-ATTACH " + sys.argv[2] + "\n").encode())
    data = s.recv(100)
except (BrokenPipeError, ConnectionResetError):
    data = b""
print("closed" if data == b"" else "data")
"#;
        let out = tokio::process::Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(python)
            .args(["-c", CLIENT])
            .arg(&h.point.socket)
            .arg(token(&h.point))
            .output();
        let out = tokio::time::timeout(Duration::from_secs(20), out)
            .await
            .unwrap()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "client failed: {stdout} {stderr}");
        assert_eq!(stdout.trim(), "closed", "{stderr}");
        assert!(h.rx.try_recv().is_err());
        // The token was not consumed: root (the pool's uid here) still gets in with it.
        let _root = connect(
            &h.point,
            format!("KEEL-ATTACH {}\n", token(&h.point)).as_bytes(),
        )
        .await;
        next(&mut h.rx).await;
    }
}

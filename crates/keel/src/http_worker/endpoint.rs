//! Where one HTTP worker listens: a unix socket keel binds in `runtime_dir` and hands to the
//! worker as fd 3, or a free loopback TCP port the worker binds by itself.

use crate::config::HttpListen;
use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How keel reaches the worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// One worker's listening place. Dropping it removes the socket file.
#[derive(Debug)]
pub struct Endpoint {
    pub address: Address,
    /// The bound, listening socket the worker inherits (unix only).
    pub listener: Option<Arc<OwnedFd>>,
}

impl Endpoint {
    /// Binds the place for worker `id` of `pool`. `dir` is the pool's directory in
    /// `runtime_dir`; `owner` (uid, gid) the worker's identity, which gets the socket file
    /// (so that an application that binds by itself may replace it).
    pub fn bind(
        dir: &Path,
        id: u64,
        listen: HttpListen,
        owner: Option<(u32, u32)>,
    ) -> io::Result<Self> {
        match listen {
            HttpListen::Unix => {
                // The daemon's pid in the name: two daemons sharing a runtime_dir (a binary
                // upgrade, tests) never take each other's sockets.
                let path = dir.join(format!("{}.{id}.sock", std::process::id()));
                // A file left by a worker of an earlier daemon: only sockets are replaced.
                if std::fs::symlink_metadata(&path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    std::fs::remove_file(&path)?;
                }
                let listener = UnixListener::bind(&path)?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
                }
                Ok(Endpoint {
                    address: Address::Unix(path),
                    listener: Some(Arc::new(OwnedFd::from(listener))),
                })
            }
            HttpListen::Tcp => {
                // Reserved by binding port 0, then released for the worker to bind: the
                // kernel does not hand the same ephemeral port out again at once.
                let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
                let addr = probe.local_addr()?;
                drop(probe);
                Ok(Endpoint {
                    address: Address::Tcp(addr),
                    listener: None,
                })
            }
        }
    }

    /// What the worker's environment says of it: `KEEL_SOCKET` always, `PORT` for TCP.
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        match &self.address {
            Address::Unix(path) => {
                env.insert("KEEL_SOCKET".into(), path.display().to_string());
            }
            Address::Tcp(addr) => {
                env.insert("KEEL_SOCKET".into(), addr.to_string());
                env.insert("PORT".into(), addr.port().to_string());
            }
        }
        env
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Address::Unix(path) = &self.address {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The directory of a pool's worker sockets, `<runtime_dir>/http/<pool>`, created (0755;
/// owned by the workers' identity when they run as another user).
pub fn pool_dir(runtime_dir: &Path, pool: &str, owner: Option<(u32, u32)>) -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = runtime_dir.join("http").join(pool);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unix_endpoint_listens_and_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let ep = Endpoint::bind(dir.path(), 7, HttpListen::Unix, None).unwrap();
        let Address::Unix(path) = ep.address.clone() else {
            panic!("not unix")
        };
        assert_eq!(
            path,
            dir.path().join(format!("{}.7.sock", std::process::id()))
        );
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        assert_eq!(ep.env()["KEEL_SOCKET"], path.display().to_string());
        assert!(!ep.env().contains_key("PORT"));
        // A stale socket of an earlier run is replaced.
        drop(ep);
        assert!(!path.exists());
        let _stale = UnixListener::bind(&path).unwrap();
        assert!(Endpoint::bind(dir.path(), 7, HttpListen::Unix, None).is_ok());
    }

    #[test]
    fn a_tcp_endpoint_names_a_free_loopback_port() {
        let dir = tempfile::tempdir().unwrap();
        let ep = Endpoint::bind(dir.path(), 1, HttpListen::Tcp, None).unwrap();
        let Address::Tcp(addr) = ep.address else {
            panic!("not tcp")
        };
        assert!(addr.ip().is_loopback());
        assert!(ep.listener.is_none());
        assert_eq!(ep.env()["PORT"], addr.port().to_string());
        // Free for the worker to bind.
        assert!(TcpListener::bind(addr).is_ok());
    }
}

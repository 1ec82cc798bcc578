//! The CLI's side of the admin API: `keel status`, `recycle`, `pool`, `invalidate`, `stop`.
//!
//! Plain blocking HTTP/1.1 over the unix socket (one request per connection, the answer read
//! to its end): the CLI needs no async runtime. Exit codes: 0 done; 1 the daemon refused or
//! failed (its message is printed); [`EXIT_NOT_RUNNING`] no daemon answers on the socket.

use super::json;
use super::table;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Exit code when no daemon answers (as `systemctl status` and LSB init scripts use 3).
pub const EXIT_NOT_RUNNING: u8 = 3;

/// How long the CLI waits for an answer: long enough for an upgrade, which waits for the new daemon's workers.
const REPLY_TIMEOUT: Duration = Duration::from_secs(150);
/// The largest answer the CLI reads.
const MAX_REPLY: u64 = 64 * 1024 * 1024;

/// What the CLI asks of the daemon.
#[derive(Debug)]
pub enum Request {
    Status { json: bool },
    Recycle { pool: String },
    Enable { pool: String },
    Disable { pool: String },
    Invalidate(json::InvalidateRequest),
    Stop { timeout: Duration },
    Reload,
    Upgrade,
}

/// Sends `request` to the daemon behind `socket`, prints the outcome, and returns the exit
/// code.
pub fn run(socket: &Path, request: Request) -> ExitCode {
    match execute(socket, request) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::NotRunning(message)) => {
            eprintln!("{message}");
            ExitCode::from(EXIT_NOT_RUNNING)
        }
        Err(Failure::Refused(message)) => {
            eprintln!("keel: {message}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    NotRunning(String),
    Refused(String),
}

fn execute(socket: &Path, request: Request) -> Result<(), Failure> {
    match request {
        Request::Status { json } => {
            let reply = call(socket, "GET", "/status", None)?.ok()?;
            if json {
                // The daemon's JSON as it is (it ends with a newline).
                print!("{}", String::from_utf8_lossy(&reply.body));
            } else {
                let status: json::Status = reply.parse()?;
                print!("{}", table::render(&status));
            }
        }
        Request::Recycle { pool } => {
            let action = pool_action(socket, &pool, "recycle")?;
            println!(
                "pool {}: recycle requested; each worker is replaced in turn (state {})",
                action.pool, action.state
            );
        }
        Request::Enable { pool } => {
            let action = pool_action(socket, &pool, "enable")?;
            println!("pool {} enabled (state {})", action.pool, action.state);
        }
        Request::Disable { pool } => {
            let action = pool_action(socket, &pool, "disable")?;
            println!(
                "pool {} disabled (state {}): its requests get 503 until `keel pool enable {}`",
                action.pool, action.state, action.pool
            );
        }
        Request::Invalidate(body) => {
            let body = serde_json::to_vec(&body).map_err(|e| Failure::Refused(e.to_string()))?;
            let reply = call(socket, "POST", "/cache/invalidate", Some(&body))?.ok()?;
            let done: json::Invalidated = reply.parse()?;
            println!(
                "invalidated cache entries for {} {}",
                done.scope, done.target
            );
        }
        Request::Stop { timeout } => stop(socket, timeout)?,
        Request::Reload => {
            let done: json::Reloaded = call(socket, "POST", "/reload", None)?.ok()?.parse()?;
            println!("config reloaded: {}", done.changes);
        }
        Request::Upgrade => {
            println!("starting a new keel; it takes over once its workers are up");
            let done: json::Upgraded = call(socket, "POST", "/upgrade", None)?.ok()?.parse()?;
            println!(
                "upgraded: keel {} serves; keel {} is draining and will exit",
                done.pid, done.old_pid
            );
        }
    }
    Ok(())
}

fn pool_action(socket: &Path, pool: &str, action: &str) -> Result<json::PoolAction, Failure> {
    call(socket, "POST", &format!("/pools/{pool}/{action}"), None)?
        .ok()?
        .parse()
}

/// Asks for a graceful stop, then waits (up to `timeout`) until the daemon has exited: its
/// socket is gone and its process too.
fn stop(socket: &Path, timeout: Duration) -> Result<(), Failure> {
    let stopping: json::Stopping = call(socket, "POST", "/stop", None)?.ok()?.parse()?;
    let pid = stopping.pid;
    println!("keel (pid {pid}) is stopping: finishing queued and in-flight requests");
    let deadline = Instant::now() + timeout;
    loop {
        let socket_gone = matches!(connect(socket), Err(Failure::NotRunning(_)));
        let process_gone = !crate::os::proc::running(pid);
        if socket_gone && process_gone {
            println!("keel stopped");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Failure::Refused(format!(
                "keel (pid {pid}) is still stopping after {}",
                humantime::format_duration(timeout)
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One answer of the admin API.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    /// The reply itself when it is a success, else the daemon's error message.
    fn ok(self) -> Result<Reply, Failure> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let message = serde_json::from_slice::<json::Error>(&self.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| {
                format!(
                    "the daemon answered {}: {}",
                    self.status,
                    String::from_utf8_lossy(&self.body).trim()
                )
            });
        Err(Failure::Refused(message))
    }

    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Failure> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Failure::Refused(format!(
                "cannot read the daemon's answer ({e}); is it the same keel version?"
            ))
        })
    }
}

fn connect(socket: &Path) -> Result<UnixStream, Failure> {
    UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Failure::NotRunning(format!(
            "keel is not running (no socket at {})",
            socket.display()
        )),
        io::ErrorKind::ConnectionRefused => Failure::NotRunning(format!(
            "keel is not running (nothing answers on {})",
            socket.display()
        )),
        io::ErrorKind::PermissionDenied => Failure::Refused(format!(
            "cannot open {}: permission denied (run this as keel's user or root)",
            socket.display()
        )),
        _ => Failure::Refused(format!("cannot open {}: {e}", socket.display())),
    })
}

fn call(socket: &Path, method: &str, path: &str, body: Option<&[u8]>) -> Result<Reply, Failure> {
    let mut stream = connect(socket)?;
    let broken = |e: io::Error| {
        Failure::Refused(format!(
            "the daemon at {} broke off the answer: {e}",
            socket.display()
        ))
    };
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(broken)?;
    let body = body.unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: keel\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).map_err(broken)?;
    stream.write_all(body).map_err(broken)?;
    read_reply(BufReader::new(stream.take(MAX_REPLY))).map_err(broken)
}

/// Reads one HTTP/1.1 answer sent with `Connection: close`: status line, headers, body to the
/// end (or its Content-Length).
fn read_reply(mut r: impl BufRead) -> io::Result<Reply> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("not an HTTP answer"))?;
    let mut length = None;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("the headers ended early"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<u64>().ok();
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            r.take(n).read_to_end(&mut body)?;
        }
        None => {
            r.read_to_end(&mut body)?;
        }
    }
    Ok(Reply { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_by_content_length() {
        let raw = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{\"error\":\"x\"}trailing";
        let reply = read_reply(&raw[..]).unwrap();
        assert_eq!(reply.status, 404);
        assert_eq!(reply.body, b"{\"error\":\"x\"}");
        match reply.ok() {
            Err(Failure::Refused(m)) => assert_eq!(m, "x"),
            _ => panic!("a 404 is a refusal"),
        }
    }

    #[test]
    fn a_missing_socket_means_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        match connect(&path) {
            Err(Failure::NotRunning(m)) => {
                assert!(m.contains("keel is not running (no socket at"), "{m}")
            }
            _ => panic!("expected NotRunning"),
        }
    }
}

//! Malformed and hostile request heads on raw sockets: each gets its status (or a closed
//! connection), an error-log reason, and the daemon keeps serving.

mod common;
use common::malformed;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The status line's code, or `None` when the connection closed without an answer.
fn answer(d: &Daemon, raw: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A peer that closes early may refuse the rest of a long write: that is an answer too.
    let _ = s.write_all(raw);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

/// The table's daemon: the demo worker behind one site bound to the host name `x`, so that
/// requests for other hosts have no site.
fn table_config() -> String {
    demo_config("").replace("http://127.0.0.1:0", "http://x:0")
}

#[test]
fn malformed_requests_get_their_answer_and_the_daemon_keeps_serving() {
    let d = Daemon::start(&table_config());
    let cases = malformed::cases();
    assert!(cases.len() >= 50, "{} cases", cases.len());
    let mut wrong = Vec::new();
    for case in &cases {
        let got = malformed::answer(d.addr(), &case.raw);
        if !malformed::matches(&case.want, &got) {
            wrong.push(format!("{}: want {:?}, got {got:?}", case.name, case.want));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // After all of them, a normal request is answered.
    let r = get_host(d.addr(), "x", "/");
    assert_eq!(r.status, 200);
    // Every refusal is on record with its reason, those of hyper's parser included.
    let log = d.error_lines().join("\n");
    for reason in [
        "URL_Length",
        "FieldLength",
        "RequestLength",
        "EntityTooLarge",
        " URL ",
        "Hostname",
        "BadRequest",
        "N/I",
        "Header",
        "Verb",
        "Number",
        "Version_N/S",
    ] {
        assert!(log.contains(reason), "no {reason} in the error log:\n{log}");
    }
}

/// `bench/malformed`: the same table against servers named in `KEEL_MALFORMED_SERVERS`
/// (`name=addr,name=addr`), printed side by side with keel's expected answer.
#[test]
#[ignore = "run by bench/malformed against servers it starts"]
fn malformed_table_side_by_side() {
    let servers: Vec<(String, std::net::SocketAddr)> = std::env::var("KEEL_MALFORMED_SERVERS")
        .expect("KEEL_MALFORMED_SERVERS=name=addr,...")
        .split(',')
        .map(|s| {
            let (name, addr) = s.split_once('=').expect("name=addr");
            (name.to_owned(), addr.parse().expect("an address"))
        })
        .collect();
    let mut header = String::from("| case |");
    for (name, _) in &servers {
        header.push_str(&format!(" {name} |"));
    }
    println!("{header}");
    println!("|---|{}", "---|".repeat(servers.len()));
    for case in malformed::cases() {
        let mut row = format!("| {} |", case.name);
        for (_, addr) in &servers {
            row.push_str(&format!(" {} |", malformed::answer(*addr, &case.raw)));
        }
        println!("{row}");
    }
}

#[test]
fn connections_past_max_connections_are_closed_at_once_and_logged() {
    let d = Daemon::start(&format!(
        "[listener]\nmax_connections = 4\nshutdown_timeout = \"10s\"\n{}",
        demo_config("").replace("[listener]\nshutdown_timeout = \"10s\"\n", "")
    ));
    // Four connections, each proven open by an answered request on it (kept alive).
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(d.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        assert_eq!(read_response(&mut r).unwrap().status, 200);
        open.push(s);
    }
    // The fifth is closed without an answer.
    assert_eq!(answer(&d, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
    d.wait_for_error_line("ConnLimit", Duration::from_secs(5));
    // One closes: a new one is served.
    drop(open.pop());
    let t = std::time::Instant::now();
    loop {
        if answer(
            &d,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ) == Some(200)
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no room after a close"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_head_dribbled_past_header_wait_is_cut_off() {
    let d = Daemon::start(&format!(
        "[listener]\nheader_wait = \"1s\"\nshutdown_timeout = \"10s\"\n{}",
        demo_config("").replace("[listener]\nshutdown_timeout = \"10s\"\n", "")
    ));
    let mut s = TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = std::time::Instant::now();
    // One header byte every 200 ms: the head never ends within 1 s.
    let mut cut = false;
    for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if s.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if t.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    if !cut {
        let mut buf = [0u8; 64];
        cut = matches!(s.read(&mut buf), Ok(0) | Err(_)) || buf.starts_with(b"HTTP/1.1 408");
    }
    assert!(cut, "the connection was still open after {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(6));
    // Meanwhile and after, normal clients are served.
    assert_eq!(get(d.addr(), "/").status, 200);
    d.wait_for_error_line("Timer_HeaderWait", Duration::from_secs(5));
}

#[test]
fn an_idle_kept_alive_connection_is_closed_after_idle_connection() {
    let d = Daemon::start(&format!(
        "[listener]\nidle_connection = \"1s\"\nshutdown_timeout = \"10s\"\n{}",
        demo_config("").replace("[listener]\nshutdown_timeout = \"10s\"\n", "")
    ));
    let mut s = TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    assert_eq!(read_response(&mut r).unwrap().status, 200);
    // Then nothing: closed after about a second, logged as idle, not as a slow head.
    let mut buf = [0u8; 16];
    assert!(matches!(r.get_mut().read(&mut buf), Ok(0) | Err(_)));
    d.wait_for_error_line("Timer_ConnectionIdle", Duration::from_secs(5));
    assert!(
        !d.error_lines()
            .iter()
            .any(|l| l.contains("Timer_HeaderWait"))
    );
}

#[test]
fn a_request_body_that_stalls_past_entity_body_gets_408() {
    let d = Daemon::start(&format!(
        "[listener]\nentity_body = \"1s\"\nshutdown_timeout = \"10s\"\n{}",
        demo_config("").replace("[listener]\nshutdown_timeout = \"10s\"\n", "")
    ));
    // A small body (read whole before queueing) and a large one (streamed to the worker),
    // each stopping short of its Content-Length.
    let small = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc".to_vec();
    let mut large = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    large.extend(std::iter::repeat_n(b'x', 100_000));
    for raw in [small, large] {
        let t = std::time::Instant::now();
        let mut s = TcpStream::connect(d.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&raw).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        // The echo worker may have begun its answer already: then the answer is cut short
        // and the connection closed, instead of a 408.
        let cut = text.starts_with("HTTP/1.1 200") && buf.len() < 1_000_000;
        assert!(
            text.starts_with("HTTP/1.1 408") || cut,
            "{:?}",
            &text[..text.len().min(200)]
        );
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
    let n = d
        .error_lines()
        .iter()
        .filter(|l| l.contains("Timer_EntityBody"))
        .count();
    assert_eq!(n, 2, "{:?}", d.error_lines());
    assert_eq!(get(d.addr(), "/").status, 200);
}

//! TLS and HTTP/2: SNI certificates per site, the default certificate without SNI, HTTP/2 by
//! ALPN, h2c by prior knowledge, old TLS versions refused, certificate reload.

mod common;

use common::Daemon;
use common::pki::Pki;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Two sites on one https port (port 0: one ephemeral socket), `a.test` first, each with
/// its own pool; `extra` is appended (e.g. a `[listener]` section or another site).
fn two_sites(pki: &Pki, extra: &str) -> String {
    format!(
        r#"
[[site]]
name = "a"
bindings = ["https://a.test:0"]
{tls_a}
app = [{{ path = "/", pool = "pa" }}]

[[site]]
name = "b"
bindings = ["https://b.test:0"]
{tls_b}
app = [{{ path = "/", pool = "pb" }}]

[pool.pa]
command = ["{{demo}}"]

[pool.pb]
command = ["{{demo}}"]
{extra}
"#,
        tls_a = pki.tls("a.test"),
        tls_b = pki.tls("b.test"),
    )
}

/// The address of the socket whose log line names `scheme://`.
fn addr_for(d: &Daemon, scheme: &str) -> SocketAddr {
    let needle = format!("for {scheme}://");
    d.log_lines()
        .iter()
        .filter(|l| l.contains(&needle))
        .find_map(|l| {
            let rest = &l[l.find("listening on ")? + "listening on ".len()..];
            let addr: SocketAddr = rest.split_whitespace().next()?.parse().ok()?;
            Some(SocketAddr::new("127.0.0.1".parse().unwrap(), addr.port()))
        })
        .unwrap_or_else(|| panic!("no {scheme} listener: {:#?}", d.log_lines()))
}

fn client(pki: &Pki, addr: SocketAddr) -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .tls_info(true)
        .resolve("a.test", addr)
        .resolve("b.test", addr)
        .timeout(Duration::from_secs(20))
}

fn peer_cert(res: &reqwest::Response) -> Vec<u8> {
    res.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("TLS info with the peer certificate")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_picks_each_sites_certificate_and_alpn_picks_http2() {
    let pki = Pki::new();
    let cert_a = pki.leaf("a.test");
    let cert_b = pki.leaf("b.test");
    let d = Daemon::start(&two_sites(&pki, ""));
    let addr = addr_for(&d, "https");
    let http = client(&pki, addr).build().unwrap();
    for (host, pool, cert) in [("a.test", "pa", &cert_a), ("b.test", "pb", &cert_b)] {
        let port = addr.port();
        let res = http
            .get(format!("https://{host}:{port}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        // ALPN chose h2; `:authority` routed to the site's pool.
        assert_eq!(res.version(), reqwest::Version::HTTP_2, "{host}");
        assert_eq!(res.headers()["x-keel-pool"], pool, "{host}");
        assert_eq!(
            peer_cert(&res),
            cert.as_ref(),
            "{host} got another certificate"
        );
        assert_eq!(res.text().await.unwrap(), "Hello from keel");
    }
    // HTTP/1.1 over TLS routes by Host the same way.
    let h1 = client(&pki, addr).http1_only().build().unwrap();
    let res = h1
        .get(format!("https://b.test:{}/", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_11);
    assert_eq!(res.headers()["x-keel-pool"], "pb");
    assert_eq!(peer_cert(&res), cert_b.as_ref());
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_can_be_turned_off_for_tls() {
    let pki = Pki::new();
    pki.leaf("a.test");
    pki.leaf("b.test");
    let d = Daemon::start(&two_sites(&pki, "[listener]\nhttp2 = false\n"));
    let addr = addr_for(&d, "https");
    let res = client(&pki, addr)
        .build()
        .unwrap()
        .get(format!("https://a.test:{}/", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_11);
    assert_eq!(res.headers()["x-keel-pool"], "pa");
}

/// Accepts any server certificate: the test only wants to see which one came.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Handshakes with `server_name` (an IP name sends no SNI) and returns the server's
/// certificate.
async fn handshake_cert(addr: SocketAddr, server_name: ServerName<'static>) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector.connect(server_name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_without_sni_gets_the_first_sites_certificate() {
    let pki = Pki::new();
    let cert_a = pki.leaf("a.test");
    let cert_b = pki.leaf("b.test");
    let d = Daemon::start(&two_sites(&pki, ""));
    let addr = addr_for(&d, "https");
    let ip = ServerName::IpAddress(addr.ip().into());
    assert_eq!(handshake_cert(addr, ip).await, cert_a.as_ref());
    // An unknown name gets the default too; a known one its own.
    let unknown = ServerName::try_from("c.test").unwrap();
    assert_eq!(handshake_cert(addr, unknown).await, cert_a.as_ref());
    let b = ServerName::try_from("b.test").unwrap();
    assert_eq!(handshake_cert(addr, b).await, cert_b.as_ref());
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_by_prior_knowledge_only_when_enabled() {
    let config = |h2c: bool| {
        common::demo_config("").replace("[listener]\n", &format!("[listener]\nh2c = {h2c}\n"))
    };
    let d = Daemon::start(&config(true));
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let res = h2.get(d.url("/")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "Hello from keel");
    // HTTP/1.1 still works on the same socket.
    let res = reqwest::get(d.url("/")).await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_11);
    drop(d);

    let d = Daemon::start(&config(false));
    match h2.get(d.url("/")).send().await {
        Err(_) => {}
        Ok(res) => assert_ne!(res.version(), reqwest::Version::HTTP_2),
    }
    let res = reqwest::get(d.url("/")).await.unwrap();
    assert_eq!(res.status(), 200);
}

/// Tries a handshake with python3's `ssl` limited to `version`; `None` when python3 is
/// missing.
fn python_handshake(addr: SocketAddr, version: &str, ca: &Path) -> Option<bool> {
    let script = format!(
        r#"
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations({ca:?})
try:
    ctx.set_ciphers("ALL:@SECLEVEL=0")
except ssl.SSLError:
    pass
ctx.minimum_version = ssl.TLSVersion.{version}
ctx.maximum_version = ssl.TLSVersion.{version}
try:
    with socket.create_connection(("127.0.0.1", {port}), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="a.test") as t:
            print("ok", t.version())
except (ssl.SSLError, OSError) as e:
    print("refused", e)
    sys.exit(3)
"#,
        ca = ca.to_str().unwrap(),
        port = addr.port(),
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .ok()?;
    eprintln!(
        "python3 {version}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Some(true),
        Some(3) => Some(false),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_1_1_is_refused_and_1_2_accepted() {
    let pki = Pki::new();
    pki.leaf("a.test");
    pki.leaf("b.test");
    let d = Daemon::start(&two_sites(&pki, ""));
    let addr = addr_for(&d, "https");
    let ca = pki.path("ca.pem");
    let Some(tls12) = python_handshake(addr, "TLSv1_2", &ca) else {
        eprintln!("python3 with ssl is not available: skipped");
        return;
    };
    assert!(tls12, "a TLS 1.2 client is served");
    assert_eq!(python_handshake(addr, "TLSv1_1", &ca), Some(false));
}

#[test]
fn config_errors_name_the_line() {
    let pki = Pki::new();
    pki.leaf("a.test");
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| -> String {
        let path = dir.path().join("keel.toml");
        std::fs::write(&path, text).unwrap();
        keel::config::load_file(&path).unwrap_err().to_string()
    };
    let site = |bindings: &str, tls: &str| {
        format!(
            "[[site]]\nname = \"a\"\nbindings = [{bindings}]\n{tls}\napp = [{{ path = \"/\", pool = \"p\" }}]\n\n[pool.p]\ncommand = [\"/bin/true\"]\n"
        )
    };
    let err = check(&site("\"https://a.test:8443\"", ""));
    assert!(err.contains("keel.toml:3: site[0].bindings"), "{err}");
    assert!(err.contains("has no certificate"), "{err}");

    let missing = format!(
        "tls = {{ cert = {:?}, key = \"nope.key\" }}",
        pki.path("a.test.pem")
    );
    let err = check(&site("\"https://a.test:8443\"", &missing));
    assert!(
        err.contains("keel.toml:4: site[0].tls: cannot read"),
        "{err}"
    );
    assert!(err.contains("nope.key"), "{err}");

    std::fs::write(dir.path().join("junk.pem"), "not pem").unwrap();
    let junk = format!(
        "tls = {{ cert = \"junk.pem\", key = {:?} }}",
        pki.path("a.test.key")
    );
    let err = check(&site("\"https://a.test:8443\"", &junk));
    assert!(err.contains("keel.toml:4: site[0].tls:"), "{err}");
    assert!(err.contains("junk.pem holds no PEM certificates"), "{err}");

    let err = check(&site(
        "\"https://a.test:8443\", \"http://b.test:8443\"",
        &pki.tls("a.test"),
    ));
    assert!(err.contains("keel.toml:3: site[0].bindings[1]"), "{err}");
    assert!(err.contains("a port is either http or https"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_certificates_serves_the_new_files_to_new_connections() {
    keel::listener::install_crypto_provider();
    let pki = Pki::new();
    let first = pki.leaf("a.test");
    let config_path = pki.path("keel.toml");
    std::fs::write(
        &config_path,
        "[[site]]\nname = \"a\"\nbindings = [\"https://a.test:0\"]\ntls = { cert = \"a.test.pem\", key = \"a.test.key\" }\napp = [{ path = \"/\", pool = \"p\" }]\n\n[pool.p]\ncommand = [\"/bin/true\"]\n",
    )
    .unwrap();
    let config = keel::config::load_file(&config_path).unwrap();
    let store = keel::listener::CertStore::load(&config).unwrap();
    let host = &config.sites[0].bindings[0].host;
    let resolver = keel::listener::tls::SniResolver::new(store.clone(), &[(0, host)]);
    let acceptor = keel::listener::tls::acceptor(resolver, true).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    use tokio::io::AsyncWriteExt;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    let name = || ServerName::try_from("a.test").unwrap();
    assert_eq!(handshake_cert(addr, name()).await, first.as_ref());

    let second = pki.leaf("a.test");
    assert_ne!(first, second);
    // Until reloaded, the old certificate is served.
    assert_eq!(handshake_cert(addr, name()).await, first.as_ref());
    assert_eq!(store.reload_certificates().unwrap(), 1);
    assert_eq!(handshake_cert(addr, name()).await, second.as_ref());

    // A broken file: the reload fails, naming it, and the current certificate stays.
    std::fs::write(pki.path("a.test.key"), "garbage").unwrap();
    let err = format!("{:#}", store.reload_certificates().unwrap_err());
    assert!(
        err.contains("site a") && err.contains("a.test.key"),
        "{err}"
    );
    assert_eq!(handshake_cert(addr, name()).await, second.as_ref());
}

/// Site `a` (the demo worker) bound to `http://a.test:0` and `https://a.test:0`, with
/// `top` (config sections) before it; the daemon, and the ports the two sockets got.
fn site_a_on_both_schemes(pki: &Pki, top: &str) -> (Daemon, u16, u16) {
    let d = Daemon::start(&format!(
        r#"
{top}

[[site]]
name = "a"
bindings = ["http://a.test:0", "https://a.test:0"]
{tls}
app = [{{ path = "/", pool = "pa" }}]

[pool.pa]
command = ["{{demo}}"]
"#,
        tls = pki.tls("a.test"),
    ));
    let port_for = |binding: &str| -> u16 {
        let lines = d.log_lines();
        let line = lines
            .iter()
            .find(|l| l.contains("listening on ") && l.contains(&format!("for {binding} ")))
            .unwrap_or_else(|| panic!("no socket for {binding}: {lines:#?}"));
        let rest = &line[line.find("listening on ").unwrap() + "listening on ".len()..];
        let addr: SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();
        addr.port()
    };
    let (plain, secure) = (port_for("http://a.test:0"), port_for("https://a.test:0"));
    (d, plain, secure)
}

/// The cache keys responses by scheme: an answer fetched over http never answers https (an
/// app's redirect to https, cached for http, would otherwise loop), and the admin API's
/// invalidation of a URL drops both.
#[tokio::test(flavor = "multi_thread")]
async fn http_and_https_answers_are_cached_apart() {
    let pki = Pki::new();
    pki.leaf("a.test");
    let (d, plain_port, secure_port) =
        site_a_on_both_schemes(&pki, "[cache]\nadmission = \"always\"");
    let localhost = |port| SocketAddr::new("127.0.0.1".parse().unwrap(), port);
    let (plain, secure) = (localhost(plain_port), localhost(secure_port));
    let http = client(&pki, secure).http1_only().build().unwrap();
    let get = |scheme: &str, port: u16| {
        let url = format!("{scheme}://a.test:{port}/cached?id=scheme");
        let http = http.clone();
        async move {
            let res = http.get(url).send().await.unwrap();
            let cache = res.headers()["x-cache"].to_str().unwrap().to_owned();
            (cache, res.text().await.unwrap())
        }
    };
    // reqwest resolves a.test to the https socket; the http one is reached by address, with
    // the same Host as reqwest sends, so that only the scheme differs.
    let host = format!("a.test:{}", secure.port());
    let plain_get = |path: &str| common::get_host(plain, &host, path);
    let first = plain_get("/cached?id=scheme");
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(first.text(), "/cached id=scheme call=1");
    assert_eq!(
        get("https", secure.port()).await,
        ("MISS".to_owned(), "/cached id=scheme call=2".to_owned())
    );
    assert_eq!(
        get("https", secure.port()).await,
        ("HIT".to_owned(), "/cached id=scheme call=2".to_owned())
    );
    assert_eq!(
        plain_get("/cached?id=scheme").text(),
        "/cached id=scheme call=1"
    );

    // Invalidating the http URL drops the https entry too.
    let r = d.admin(
        "POST",
        "/cache/invalidate",
        Some(&format!(
            r#"{{"url": "http://a.test:{}/cached?id=scheme"}}"#,
            secure.port()
        )),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get("https", secure.port()).await.0, "MISS");
}

/// One site may bind http and https both to port 0 (a test setup, a first try of a config):
/// each scheme gets its own ephemeral socket, and both serve.
#[tokio::test(flavor = "multi_thread")]
async fn http_and_https_on_port_0_get_a_socket_each() {
    let pki = Pki::new();
    pki.leaf("a.test");
    let (_d, plain_port, secure_port) = site_a_on_both_schemes(&pki, "");
    assert_ne!(plain_port, secure_port);
    let localhost = |port| SocketAddr::new("127.0.0.1".parse().unwrap(), port);
    let plain =
        tokio::task::spawn_blocking(move || common::get_host(localhost(plain_port), "a.test", "/"))
            .await
            .unwrap();
    assert_eq!(plain.status, 200, "{}", plain.text());
    let http = client(&pki, localhost(secure_port)).build().unwrap();
    let res = http
        .get(format!("https://a.test:{secure_port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

//! TLS on https bindings: one certificate per site, chosen by SNI per listening socket, held
//! in a [`CertStore`] that [`CertStore::reload_certificates`] refreshes from disk.
//!
//! Which certificate a ClientHello gets, on one socket:
//! 1. its SNI name equals a host name an https binding of a site names → that site's;
//! 2. otherwise the first site (config order) with a strong wildcard `https://+:PORT`;
//! 3. otherwise the first site with a weak wildcard `https://*:PORT`;
//! 4. otherwise (and for clients that send no SNI, such as those connecting by IP) the
//!    socket's default: the first site in config order with an https binding on it.

use crate::config::{BindingHost, Config, TlsFiles, crypto_provider};
use anyhow::Context as _;
use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// A client that has not finished its TLS handshake by then is dropped, so a silent client
/// cannot hold a connection slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Installs aws-lc-rs as the process's rustls provider (the only one compiled in). keel's
/// own configs name their provider explicitly; this covers any code that asks for the
/// default. Calling it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Every TLS site's certificate, by site index (config order). Shared by every socket.
#[derive(Debug)]
pub struct CertStore {
    /// `(site index, site name, files)` for each site with `tls`.
    files: Vec<(usize, String, TlsFiles)>,
    certs: RwLock<HashMap<usize, Arc<CertifiedKey>>>,
}

impl CertStore {
    /// Reads every site's certificate and key.
    pub fn load(config: &Config) -> anyhow::Result<Arc<CertStore>> {
        let files: Vec<_> = config
            .sites
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.name.clone(), s.tls.clone()?)))
            .collect();
        let certs = read_all(&files)?;
        Ok(Arc::new(CertStore {
            files,
            certs: RwLock::new(certs),
        }))
    }

    /// Re-reads every certificate and key file (for `keel reload`). All or nothing: when one
    /// site's files are missing or invalid, every site keeps its current certificate and the
    /// error says which. Connections open now keep theirs; new handshakes get the new ones.
    /// Returns how many certificates were loaded.
    pub fn reload_certificates(&self) -> anyhow::Result<usize> {
        let certs = read_all(&self.files)?;
        let n = certs.len();
        *self.certs.write() = certs;
        tracing::info!("reloaded {n} TLS certificate(s)");
        Ok(n)
    }

    fn get(&self, site: usize) -> Option<Arc<CertifiedKey>> {
        self.certs.read().get(&site).cloned()
    }
}

fn read_all(
    files: &[(usize, String, TlsFiles)],
) -> anyhow::Result<HashMap<usize, Arc<CertifiedKey>>> {
    files
        .iter()
        .map(|(i, name, f)| {
            let key = f
                .load()
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("site {name}: cannot load its TLS certificate"))?;
            Ok((*i, Arc::new(key)))
        })
        .collect()
}

/// Chooses the certificate for one listening socket's handshakes (see the module doc).
#[derive(Debug)]
pub struct SniResolver {
    store: Arc<CertStore>,
    by_name: HashMap<String, usize>,
    strong: Option<usize>,
    weak: Option<usize>,
    default: usize,
}

impl SniResolver {
    /// `bindings`: the socket's `(site index, binding host)` pairs, in config order; at least
    /// one.
    pub fn new(store: Arc<CertStore>, bindings: &[(usize, &BindingHost)]) -> SniResolver {
        let mut by_name = HashMap::new();
        let (mut strong, mut weak) = (None, None);
        for (site, host) in bindings {
            match host {
                BindingHost::Name(n) => {
                    by_name.entry(n.clone()).or_insert(*site);
                }
                BindingHost::Strong => {
                    strong.get_or_insert(*site);
                }
                BindingHost::Weak => {
                    weak.get_or_insert(*site);
                }
                BindingHost::Ip(_) => {}
            }
        }
        let default = bindings.iter().map(|(s, _)| *s).min().unwrap_or(0);
        SniResolver {
            store,
            by_name,
            strong,
            weak,
            default,
        }
    }

    /// The site whose certificate a client asking for `sni` gets.
    pub fn site_for(&self, sni: Option<&str>) -> usize {
        let named = sni.and_then(|n| {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            self.by_name.get(&n).copied()
        });
        named.or(self.strong).or(self.weak).unwrap_or(self.default)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.get(self.site_for(hello.server_name()))
    }
}

/// The TLS acceptor for one socket: TLS 1.2 and 1.3 only, ALPN `h2` (when `http2`) and
/// `http/1.1`, certificates by [`SniResolver`].
pub fn acceptor(resolver: SniResolver, http2: bool) -> anyhow::Result<TlsAcceptor> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS 1.2 and 1.3 with aws-lc-rs")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

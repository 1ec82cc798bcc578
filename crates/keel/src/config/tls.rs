//! A site's TLS certificate and key: PEM files read and checked at load (so a bad file is a
//! config error with its line), and read again by the listener at start and on reload.

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `tls = { cert = "site.pem", key = "site.key" }`; both resolved against the config's
/// directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the site's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The one crypto provider keel uses (aws-lc-rs).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl TlsFiles {
    /// Reads both files and checks that the key belongs to the certificate. The error names
    /// the file and says what is wrong with it.
    pub fn load(&self) -> Result<CertifiedKey, String> {
        let chain = read_chain(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| pem_error(&self.key, "a private key", e))?;
        CertifiedKey::from_der(chain, key, &crypto_provider()).map_err(|e| {
            format!(
                "the key {} does not fit the certificate {}: {e}",
                self.key.display(),
                self.cert.display()
            )
        })
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, "certificates", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "certificates", e))?;
    if chain.is_empty() {
        return Err(pem_error(path, "certificates", pem::Error::NoItemsFound));
    }
    Ok(chain)
}

fn pem_error(path: &Path, what: &str, e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => format!("cannot read {}: {e}", path.display()),
        pem::Error::NoItemsFound => format!(
            "{} holds no PEM {what} (expected a -----BEGIN ...----- section)",
            path.display()
        ),
        e => format!("{} is not valid PEM: {e}", path.display()),
    }
}

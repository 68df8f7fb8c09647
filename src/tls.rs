//! TLS for the listener: loads a PEM certificate chain and private key into a rustls server
//! configuration.
//!
//! The configuration is built on the aws-lc-rs provider explicitly rather than on rustls'
//! process-wide default, because the dependency graph enables two providers (the HTTP client
//! pulls in ring) and rustls refuses to guess between them.
//!
//! Errors name the file; an error about the private key never repeats any of its content.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A loaded server certificate and key, ready for the listener.
#[derive(Clone)]
pub struct TlsConfig {
    inner: Arc<rustls::ServerConfig>,
    cert: PathBuf,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TlsConfig(cert {})", self.cert.display())
    }
}

/// Why the certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file is unreadable or holds no PEM certificate.
    #[error("tls certificate {}: {msg}", path.display())]
    Cert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The key file is unreadable or holds no PEM private key. Never carries key content.
    #[error("tls private key {}: {msg}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// rustls refused the pair (for example a key that does not match the certificate).
    #[error("tls certificate {} with key {}: {msg}", cert.display(), key.display())]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        msg: String,
    },
}

impl TlsConfig {
    /// Loads `cert` (a PEM chain, leaf first) and `key` (PEM PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    /// A [`TlsError`] naming the file at fault.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Cert {
                path: cert.to_owned(),
                msg: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::Cert {
                path: cert.to_owned(),
                msg: "no PEM certificate in the file".into(),
            });
        }
        let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
            path: key.to_owned(),
            msg: key_error(&e),
        })?;
        warn_if_key_readable_by_others(key);

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
            .map_err(|e| TlsError::Pair {
                cert: cert.to_owned(),
                key: key.to_owned(),
                msg: e.to_string(),
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsConfig {
            inner: Arc::new(config),
            cert: cert.to_owned(),
        })
    }

    /// The acceptor the listener runs each connection's handshake with.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.inner.clone())
    }
}

/// Describes a key-loading error without any of the file's content (a base64 error can quote
/// a byte of the key).
fn key_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file".into(),
        _ => "not a well-formed PEM private key".into(),
    }
}

fn warn_if_key_readable_by_others(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(key) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %key.display(),
                "tls private key is accessible to group or others; chmod 600 it"
            );
        }
    }
}

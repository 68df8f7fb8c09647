//! TLS for the listener: loads a PEM certificate chain and private key into a rustls server
//! configuration.
//!
//! The configuration is built on the aws-lc-rs provider explicitly rather than on rustls'
//! process-wide default, because the dependency graph enables two providers (the HTTP client
//! pulls in ring) and rustls refuses to guess between them.
//!
//! Errors name the file; an error about the private key never repeats any of its content.
//!
//! The certificate and key can be replaced without a restart (a restart needs the custodians
//! to unseal again): the configuration picks its certificate through a resolver that holds
//! the current pair, and [`TlsConfig::reload`] (run on SIGHUP by [`TlsConfig::reload_on_sighup`])
//! loads the files again and swaps the pair in. New handshakes get the new certificate;
//! established connections keep theirs. A pair that does not load (a missing file, a key that
//! does not match the certificate) is logged and the old pair stays.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// A loaded server certificate and key, ready for the listener.
#[derive(Clone)]
pub struct TlsConfig {
    inner: Arc<rustls::ServerConfig>,
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Arc<CurrentPair>,
}

/// The pair new handshakes are given; swapped by [`TlsConfig::reload`].
#[derive(Debug)]
struct CurrentPair(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentPair {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(vault::read_lock(&self.0).clone())
    }
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
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let pair = load_pair(cert, key, &provider)?;
        let current = Arc::new(CurrentPair(RwLock::new(Arc::new(pair))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map(|b| b.with_no_client_auth().with_cert_resolver(current.clone()))
            .map_err(|e| TlsError::Pair {
                cert: cert.to_owned(),
                key: key.to_owned(),
                msg: e.to_string(),
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsConfig {
            inner: Arc::new(config),
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current,
        })
    }

    /// Loads the certificate and key files again and, if they load and match, gives the new
    /// pair to every handshake from now on. Established connections are not touched.
    ///
    /// # Errors
    /// A [`TlsError`] naming the file at fault; the pair in use is then kept.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = load_pair(&self.cert, &self.key, &self.provider)?;
        *vault::write_lock(&self.current.0) = Arc::new(pair);
        Ok(())
    }

    /// Reloads the pair ([`TlsConfig::reload`]) at every SIGHUP, logging the outcome, for the
    /// life of the runtime. Call inside a tokio runtime.
    pub fn reload_on_sighup(&self) {
        let tls = self.clone();
        let Some(mut hup) = sighup() else {
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match tls.reload() {
                    Ok(()) => tracing::info!(
                        cert = %tls.cert.display(),
                        "sighup: tls certificate and key reloaded; new connections use them"
                    ),
                    Err(e) => tracing::error!(
                        error = %e,
                        "sighup: tls reload failed; the certificate in use is kept"
                    ),
                }
            }
        });
    }

    /// The acceptor the listener runs each connection's handshake with.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.inner.clone())
    }
}

/// Catches SIGHUP without TLS, so that it does not end the process: there is nothing to
/// reload. Call inside a tokio runtime.
pub fn ignore_sighup() {
    let Some(mut hup) = sighup() else {
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("sighup: no tls configured, nothing to reload");
        }
    });
}

fn sighup() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot catch SIGHUP; tls reload is off");
            None
        }
    }
}

/// Reads and checks a pair: a PEM chain (leaf first) and its private key, which must match.
fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
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
    CertifiedKey::from_der(chain, private, provider).map_err(|e| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        msg: e.to_string(),
    })
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

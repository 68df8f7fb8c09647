//! SIGHUP reloads the listener's TLS certificate and key (issue 19): the files replaced, a
//! SIGHUP, and a new connection gets the new certificate while a connection made before keeps
//! working; a broken new pair (a key that does not match) is refused, logged, and the pair in
//! use is kept.

use super::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

fn client_config(cas: &[&Path]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS connection to the server and the leaf certificate it presented.
async fn connect(
    url: &str,
    config: &Arc<rustls::ClientConfig>,
) -> (TlsStream<tokio::net::TcpStream>, Vec<u8>) {
    let addr = url.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (tls, leaf)
}

/// One keep-alive `GET /healthz` on `tls`: the status line.
async fn healthz(tls: &mut TlsStream<tokio::net::TcpStream>) -> String {
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn leaf_der(pem: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn hup(server: &Server) {
    let ok = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Replaces `to` with `from` by a rename, as a certificate renewal tool does.
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_keeps_old_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, ca, _shares) = tls_server(tmp.path());
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    let next = tmp.path().join("next");
    std::fs::create_dir(&next).unwrap();
    let (ca2, cert2, key2) = make_ca_and_leaf(&next);
    let config = client_config(&[&ca, &ca2]);

    let (mut old, first) = connect(&server.url, &config).await;
    assert_eq!(first, leaf_der(&cert));
    assert!(healthz(&mut old).await.contains("200"));

    replace(&cert2, &cert);
    replace(&key2, &key);
    hup(&server);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, leaf) = connect(&server.url, &config).await;
        if leaf == leaf_der(&cert2) {
            break;
        }
        assert_eq!(leaf, first);
        assert!(
            Instant::now() < deadline,
            "the new certificate was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection made before the reload still works.
    assert!(healthz(&mut old).await.contains("200"));

    // A broken pair: the key of another certificate. Refused; the pair in use is kept.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (_, _, key3) = make_ca_and_leaf(&other);
    replace(&key3, &key);
    hup(&server);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let (mut conn, leaf) = connect(&server.url, &config).await;
        assert_eq!(leaf, leaf_der(&cert2));
        assert!(healthz(&mut conn).await.contains("200"));
    }

    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("tls certificate and key reloaded"),
        "{stderr}"
    );
    let failed = stderr
        .lines()
        .find(|l| l.contains("tls reload failed"))
        .unwrap_or_else(|| panic!("no reload failure logged: {stderr}"));
    assert!(failed.contains(&key.display().to_string()), "{failed}");
    assert!(!failed.contains("PRIVATE KEY"), "{failed}");
}

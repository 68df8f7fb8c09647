//! The couriers against real peers: postfix's `smtp-sink` (capturing messages with `-d`,
//! injecting 421 and 5xx replies) and Kannel (bearerbox + smsbox + its fake SMSC), plus the
//! spool courier on a temporary directory.
//!
//! Every peer is started by its test on free loopback ports and killed by pid when the test's
//! guard drops; nothing stays running. The peers come from Debian's `postfix`, `kannel` and
//! `kannel-extras` packages, which `scripts/test.sh` installs; a missing binary fails the test
//! with a message saying so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/peers.rs"]
mod peers;

use dispatch::courier::retry::{RetryPolicy, Throttled};
use dispatch::courier::sms::{KannelConfig, KannelCourier};
use dispatch::courier::smtp::{SmtpConfig, SmtpCourier, SmtpSecurity};
use dispatch::courier::spool::InsecureSpoolCourier;
use dispatch::*;
use peers::{free_ports, smtp_sink, Kannel};
use secrecy::SecretString;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SERIAL: &str = "8039123456781234";

fn addressee() -> Addressee {
    Addressee {
        name: "Niccolò D’Aragona".into(),
        address: vec!["Via Città di Castello, 12".into(), "00136 Roma RM".into()],
    }
}

/// Part B of a `counter(2)+<channel>` plan for these codes.
fn part_b(plan: &str, pin: &str, puk: &str) -> PartCodes {
    let codes = Codes::new(pin.as_bytes(), puk.as_bytes()).unwrap();
    Plan::parse(plan).unwrap().cut(&codes).unwrap().remove(1)
}

fn render_email(pin: &str, puk: &str) -> EmailMessage {
    let part = part_b("counter(2)+email", pin, puk);
    let who = addressee();
    EmailRenderer::new(Arc::new(Templates::builtin().unwrap()), Issuer::default())
        .render_email(&Mailer {
            addressee: &who,
            card_serial: SERIAL,
            codes: &part,
            number: Some(42),
        })
        .unwrap()
}

fn render_sms(pin: &str, puk: &str) -> SmsMessage {
    let part = part_b("counter(2)+sms", pin, puk);
    let who = addressee();
    SmsRenderer::new(Arc::new(Templates::builtin().unwrap()), Issuer::default())
        .render_sms(&Mailer {
            addressee: &who,
            card_serial: SERIAL,
            codes: &part,
            number: Some(42),
        })
        .unwrap()
}

fn smtp_config(port: u16, connections: usize) -> SmtpConfig {
    let mut c = SmtpConfig::new("127.0.0.1", port, "codici@regione.esempio.it");
    c.security = SmtpSecurity::InsecurePlaintext;
    c.max_connections = connections;
    c.send_timeout = Duration::from_secs(10);
    c
}

fn email_job(i: usize) -> (Outgoing, String, String) {
    let pin = format!("{:05}", 13_579 + i * 7);
    let puk = format!("{:08}", 24_681_357 + i * 13);
    let out = Outgoing::email(
        IdempotencyKey::new(format!("job-{i}:email")).unwrap(),
        Destination::email(format!("holder{i}@example.it")).unwrap(),
        render_email(&pin, &puk),
    )
    .unwrap();
    (out, pin, puk)
}

fn read_dir_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_pool_delivers_every_message_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (_sink, port) = smtp_sink(tmp.path(), true, &[]).await;
    let courier = Arc::new(SmtpCourier::new(smtp_config(port, 4)).unwrap());
    let courier_dyn: Arc<dyn Courier> = courier.clone();

    const N: usize = 120;
    let mut expected = HashMap::new();
    let mut tasks = Vec::new();
    for i in 0..N {
        let (out, pin, puk) = email_job(i);
        let id = dispatch::courier::smtp::message_id(&out.key, "regione.esempio.it");
        expected.insert(id, (pin, puk));
        let c = courier_dyn.clone();
        tasks.push(tokio::spawn(async move { c.send(&out).await }));
    }
    for t in tasks {
        let sent = t.await.unwrap().unwrap();
        assert!(sent.peer_id.starts_with("250"), "{}", sent.peer_id);
    }
    assert!(
        courier.connections_opened() <= 4,
        "{} connections for 4 permits",
        courier.connections_opened()
    );
    courier.close().await;

    // smtp-sink writes each message before it answers 250, so all are there now.
    let files = read_dir_files(&tmp.path().join("mail"));
    assert_eq!(files.len(), N, "one file per message");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .expect("a Message-ID")
            .trim()
            .to_owned();
        let (pin, puk) = expected.get(&id).expect("an expected Message-ID");
        assert!(text.contains(&format!("PIN (cifre 3-5 di 5): {}", &pin[2..])));
        assert!(text.contains(&format!("PUK (cifre 3-8 di 8): {}", &puk[2..])));
        assert!(!text.contains(SERIAL), "full serial in a message");
        assert!(
            !text.contains(pin.as_str()),
            "whole pin in a part-B message"
        );
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), N);
    assert!(seen.values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_421_is_temporary_and_5xx_permanent() {
    let tmp = tempfile::tempdir().unwrap();
    let (sink, port) = smtp_sink(tmp.path(), true, &["-Q", "RCPT"]).await;
    let courier = SmtpCourier::new(smtp_config(port, 1)).unwrap();
    let (out, pin, _) = email_job(1);
    let err = courier.send(&out).await.unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert!(err.reason().contains("421"), "{err}");
    assert_eq!(err.code(), FailureReason::RelayBusy, "{err}");
    assert!(!err.reason().contains(&pin[2..]));
    // The pool dropped the broken connection: the next send opens a new one, fails alike.
    let err = courier.send(&out).await.unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert_eq!(courier.connections_opened(), 2);

    // The relay comes back on the same port: the same job (same key) goes through once, with
    // its Message-ID. The port is free for a moment between the two sinks, and the other
    // tests of this file pick free ports in parallel, so another test's message may land in
    // this sink: count this job's messages, not files.
    drop(sink);
    let back = tempfile::tempdir().unwrap();
    let _sink = peers::smtp_sink_on(port, back.path(), true, &[]).await;
    courier.send(&out).await.unwrap();
    let id = dispatch::courier::smtp::message_id(&out.key, "regione.esempio.it");
    let ours = read_dir_files(&back.path().join("mail"))
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .contains(&format!("Message-ID: {id}"))
        })
        .count();
    assert_eq!(ours, 1, "the job arrives exactly once");

    let tmp = tempfile::tempdir().unwrap();
    let (_sink, port) = smtp_sink(tmp.path(), true, &["-f", "RCPT"]).await;
    let courier = SmtpCourier::new(smtp_config(port, 1)).unwrap();
    let err = courier.send(&out).await.unwrap_err();
    assert!(!err.is_temporary(), "{err}");
    assert!(err.reason().starts_with("smtp rcpt: 5"), "{err}");
    assert_eq!(err.code(), FailureReason::RejectedRecipient, "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let (_sink, port) = smtp_sink(tmp.path(), true, &["-r", "MAIL"]).await;
    let courier = SmtpCourier::new(smtp_config(port, 1)).unwrap();
    let err = courier.send(&out).await.unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert!(err.reason().starts_with("smtp mail: 4"), "{err}");
    assert_eq!(err.code(), FailureReason::RelayBusy, "{err}");
    assert!(RetryPolicy::default().should_retry(1, &err));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_pool_checks_idle_connections_and_closes_stale_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (_sink, port) = smtp_sink(tmp.path(), false, &[]).await;
    let mut config = smtp_config(port, 2);
    config.noop_after = Duration::from_millis(30);
    let courier = SmtpCourier::new(config.clone()).unwrap();
    let (out, _, _) = email_job(3);
    courier.send(&out).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    // Idle past `noop_after`: checked with NOOP and reused.
    courier.send(&out).await.unwrap();
    assert_eq!(courier.connections_opened(), 1);

    config.idle_timeout = Duration::from_millis(20);
    let courier = SmtpCourier::new(config).unwrap();
    courier.send(&out).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    // Idle past `idle_timeout`: closed, and a new connection is opened.
    courier.send(&out).await.unwrap();
    assert_eq!(courier.connections_opened(), 2);
    courier.close().await;
}

/// A relay on loopback that offers `PIPELINING` and answers a message's `MAIL` only once its
/// `RCPT` and `DATA` have arrived too: a client that waits for each reply before the next
/// command gets no answer. Records every command line it reads (the data excepted).
async fn pipelining_only_relay() -> (u16, tokio::task::JoinHandle<Vec<String>>) {
    use tokio::io::AsyncBufReadExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (r, mut w) = socket.into_split();
        let mut r = tokio::io::BufReader::new(r);
        let mut seen = Vec::new();
        w.write_all(b"220 relay.test ESMTP\r\n").await.unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            let command = line.trim_end().to_owned();
            seen.push(command.clone());
            let verb = command.to_ascii_uppercase();
            if verb.starts_with("EHLO") {
                w.write_all(b"250-relay.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                    .await
                    .unwrap();
            } else if verb.starts_with("MAIL") {
                // The envelope's replies only once RCPT and DATA are in.
                for _ in 0..2 {
                    line.clear();
                    r.read_line(&mut line).await.unwrap();
                    seen.push(line.trim_end().to_owned());
                }
                w.write_all(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go on\r\n")
                    .await
                    .unwrap();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap() == 0 || line == ".\r\n" {
                        break;
                    }
                }
                w.write_all(b"250 2.0.0 Ok: queued as PIPE1\r\n")
                    .await
                    .unwrap();
            } else if verb.starts_with("QUIT") {
                w.write_all(b"221 bye\r\n").await.unwrap();
                break;
            } else {
                w.write_all(b"250 ok\r\n").await.unwrap();
            }
        }
        seen
    });
    (port, task)
}

/// Issue 20: the envelope's three commands go in one write when the relay offers
/// `PIPELINING` (RFC 2920), halving the round trips of a message. Before, the courier waited
/// for `MAIL`'s reply before sending `RCPT`, and timed out against this relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_pipelines_the_envelope_when_the_relay_offers_it() {
    let (port, relay) = pipelining_only_relay().await;
    let mut config = smtp_config(port, 1);
    config.send_timeout = Duration::from_secs(3);
    let courier = SmtpCourier::new(config).unwrap();
    let (out, _, _) = email_job(7);
    let sent = courier.send(&out).await.unwrap();
    assert!(sent.peer_id.contains("PIPE1"), "{}", sent.peer_id);
    courier.close().await;
    let seen = relay.await.unwrap();
    let envelope: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .filter(|c| !c.starts_with("EHLO"))
        .collect();
    assert_eq!(envelope.len(), 4, "{seen:?}");
    assert!(envelope[0].starts_with("MAIL FROM:<codici@regione.esempio.it>"));
    assert_eq!(
        envelope[1..],
        ["RCPT TO:<holder7@example.it>", "DATA", "QUIT"]
    );
}

/// A relay without `PIPELINING` (`smtp-sink -p`) gets one command at a time, and its
/// refusals keep their stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_without_pipelining_sends_one_command_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (_sink, port) = smtp_sink(tmp.path(), true, &["-p"]).await;
    let courier = SmtpCourier::new(smtp_config(port, 1)).unwrap();
    let (out, _, _) = email_job(8);
    courier.send(&out).await.unwrap();
    courier.close().await;
    assert_eq!(read_dir_files(&tmp.path().join("mail")).len(), 1);

    let tmp = tempfile::tempdir().unwrap();
    let (_sink, port) = smtp_sink(tmp.path(), true, &["-p", "-f", "RCPT"]).await;
    let courier = SmtpCourier::new(smtp_config(port, 1)).unwrap();
    let err = courier.send(&out).await.unwrap_err();
    assert!(err.reason().starts_with("smtp rcpt: 5"), "{err}");
    assert_eq!(err.code(), FailureReason::RejectedRecipient, "{err}");
}

#[tokio::test]
async fn smtp_connection_refused_is_temporary() {
    let port = free_ports(1)[0];
    let courier = SmtpCourier::new(smtp_config(port, 1)).unwrap();
    let (out, _, _) = email_job(2);
    let err = courier.send(&out).await.unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert!(err.reason().contains("smtp connect"), "{err}");
    assert_eq!(err.code(), FailureReason::ConnectRefused, "{err}");
    assert!(
        err.is_lane_wide(),
        "a refused connection pauses the lane: {err}"
    );
}

/// A minimal HTTP listener standing for the service's delivery-report route: it sends each
/// request line (`GET /v1/dlr?key=…&status=… HTTP/1.1`) to the channel and answers 200.
async fn dlr_listener() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16_384 {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let _ = tx.send(text.lines().next().unwrap_or_default().to_owned());
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kannel_sends_to_the_fake_smsc_and_reports_delivery() {
    let tmp = tempfile::tempdir().unwrap();
    let kannel = Kannel::start(tmp.path()).await;
    let (dlr_port, mut dlrs) = dlr_listener().await;

    let mut config = kannel.config("s3cret");
    config.dlr_url = Some(format!(
        "http://127.0.0.1:{dlr_port}/v1/dlr?key=%KEY%&status=%d"
    ));
    let courier: Arc<dyn Courier> = Arc::new(KannelCourier::new(config).unwrap());
    let out = Outgoing::sms(
        IdempotencyKey::new("job-7:sms").unwrap(),
        Destination::phone("+393331234567").unwrap(),
        render_sms("24680", "13572468"),
    )
    .unwrap();
    let sent = courier.send(&out).await.unwrap();
    assert!(sent.peer_id.contains("Accepted"), "{}", sent.peer_id);

    // The fake SMSC prints what it receives: sender, receiver, type, text.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = kannel.fakesmsc_log();
        if log.contains("Got message") {
            assert!(
                log.contains("PLICO +393331234567 text Regione Esempio, carta ***1234, parte B: PIN 680, PUK 572468."),
                "{log}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "fakesmsc got nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Kannel calls the dlr-url with the job's key: 8 (SMSC accepted), then 1 (delivered).
    wait_for_delivered(&mut dlrs, "job-7:sms").await;

    // Configured as docs/delivery.md says, Kannel wrote the SMS text (PUK part 572468) to
    // none of its own logs, while its access log did record the send.
    let logs = kannel.own_logs();
    assert!(
        logs.iter()
            .any(|(name, text)| name == "bearerbox-access.log" && text.contains("Sent SMS")),
        "{logs:?}"
    );
    for (name, text) in &logs {
        assert!(!text.contains("572468"), "the SMS text in kannel's {name}");
    }
}

/// Waits for Kannel's reports on `dlrs` until one says delivered (1): each names `key`, and
/// all are 8 (SMSC accepted) or 1.
async fn wait_for_delivered(dlrs: &mut tokio::sync::mpsc::UnboundedReceiver<String>, key: &str) {
    let mut statuses = Vec::new();
    while !statuses.contains(&"1".to_owned()) {
        let line = tokio::time::timeout(Duration::from_secs(10), dlrs.recv())
            .await
            .expect("a delivery report within 10 s")
            .unwrap();
        let query = line
            .strip_prefix("GET /v1/dlr?")
            .and_then(|l| l.strip_suffix(" HTTP/1.1"))
            .unwrap_or_else(|| panic!("unexpected request {line}"));
        let params: HashMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        assert_eq!(params.get("key"), Some(&key), "{line}");
        statuses.push(params["status"].to_owned());
    }
    assert!(
        statuses.iter().all(|s| s == "1" || s == "8"),
        "{statuses:?}"
    );
}

/// A private CA and a leaf for 127.0.0.1 and localhost, written as PEM files into `dir`:
/// `(ca, cert, key)`.
pub fn ca_and_leaf(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "plico peers test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "plico peers test server");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf.signed_by(&leaf_key, &ca).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&paths.2, std::fs::Permissions::from_mode(0o600)).unwrap();
    paths
}

/// Kannel's smsbox serving sendsms over HTTPS with a leaf from the test's own CA: with the CA
/// in `tls_ca_pem` the SMS goes out and its delivery report comes back; without it (public
/// roots only) the send fails as `tls_untrusted`, lane-wide (the gateway's certificate is not
/// a verdict on the message), and nothing reaches the SMSC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kannel_over_https_with_a_private_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_leaf(tmp.path());
    let kannel_dir = tmp.path().join("kannel");
    std::fs::create_dir(&kannel_dir).unwrap();
    let kannel = Kannel::start_tls(&kannel_dir, &cert, &key).await;
    let (dlr_port, mut dlrs) = dlr_listener().await;
    let out = Outgoing::sms(
        IdempotencyKey::new("job-9:sms").unwrap(),
        Destination::phone("+393331234567").unwrap(),
        render_sms("24680", "13572468"),
    )
    .unwrap();

    let untrusting = KannelCourier::new(kannel.config("s3cret")).unwrap();
    let err = untrusting.send(&out).await.unwrap_err();
    assert_eq!(err.code(), FailureReason::TlsUntrusted, "{err}");
    assert!(err.is_lane_wide(), "{err}");
    assert!(!kannel.fakesmsc_log().contains("Got message"));

    let mut config = kannel.config("s3cret");
    config.tls_ca_pem = Some(std::fs::read(&ca).unwrap());
    config.dlr_url = Some(format!(
        "http://127.0.0.1:{dlr_port}/v1/dlr?key=%KEY%&status=%d"
    ));
    let sent = KannelCourier::new(config)
        .unwrap()
        .send(&out)
        .await
        .unwrap();
    assert!(sent.peer_id.contains("Accepted"), "{}", sent.peer_id);
    wait_for_delivered(&mut dlrs, "job-9:sms").await;
    assert!(kannel.fakesmsc_log().contains("PUK 572468"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kannel_bad_credentials_pause_a_denied_number_ends_and_a_dead_gateway_is_temporary() {
    let tmp = tempfile::tempdir().unwrap();
    let kannel = Kannel::start(tmp.path()).await;
    let courier = KannelCourier::new(kannel.config("wrong")).unwrap();
    let out = Outgoing::sms(
        IdempotencyKey::new("job-8:sms").unwrap(),
        Destination::phone("+393331234567").unwrap(),
        render_sms("24680", "13572468"),
    )
    .unwrap();
    let err = courier.send(&out).await.unwrap_err();
    // Bad credentials are the gateway's problem, not this message's: the lane pauses.
    assert_eq!(err.code(), FailureReason::GatewayAuth, "{err}");
    assert!(err.is_lane_wide() && err.is_temporary(), "{err}");
    assert_eq!(err.reason(), "kannel sendsms: http 403");
    // A number the gateway refuses (Kannel's 400) ends that job only.
    let denied = Outgoing::sms(
        IdempotencyKey::new("job-8b:sms").unwrap(),
        Destination::phone(format!("{}1234567", Kannel::DENIED_PREFIX)).unwrap(),
        render_sms("24680", "13572468"),
    )
    .unwrap();
    let err = KannelCourier::new(kannel.config("s3cret"))
        .unwrap()
        .send(&denied)
        .await
        .unwrap_err();
    assert_eq!(err.code(), FailureReason::RejectedNumber, "{err}");
    assert_eq!(err.scope(), FailureScope::Final, "{err}");

    // Throttled around the real courier: same answer, through the rate limiter.
    let throttled = Throttled::new(
        Arc::new(KannelCourier::new(kannel.config("s3cret")).unwrap()),
        std::num::NonZeroU32::new(50).unwrap(),
        std::num::NonZeroU32::new(5).unwrap(),
    );
    assert!(throttled.send(&out).await.is_ok());
    drop(kannel);

    let port = free_ports(1)[0];
    let mut config = KannelConfig::new(
        format!("http://127.0.0.1:{port}/cgi-bin/sendsms"),
        "plico",
        SecretString::from("s3cret"),
        "PLICO",
    );
    config.timeout = Duration::from_secs(2);
    let err = KannelCourier::new(config)
        .unwrap()
        .send(&out)
        .await
        .unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert_eq!(err.code(), FailureReason::ConnectRefused, "{err}");
    assert!(!err.reason().contains("s3cret") && !err.reason().contains("680"));
}

#[tokio::test]
async fn spool_files_are_private_and_named_by_key_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let sms_spool =
        InsecureSpoolCourier::new(tmp.path().join("sms"), Channel::Sms, "codici@x.it").unwrap();
    let mail_spool =
        InsecureSpoolCourier::new(tmp.path().join("mail"), Channel::Email, "codici@x.it").unwrap();
    let key = IdempotencyKey::new("job-9:sms").unwrap();
    let sms = Outgoing::sms(
        key.clone(),
        Destination::phone("+393331234567").unwrap(),
        render_sms("24680", "13572468"),
    )
    .unwrap();
    let sent = sms_spool.send(&sms).await.unwrap();
    assert_eq!(sent.peer_id, format!("{}.sms", key.digest_hex()));
    // A resend with the same key replaces the file.
    sms_spool.send(&sms).await.unwrap();
    let (mail, pin, puk) = email_job(9);
    mail_spool.send(&mail).await.unwrap();

    for dir in [sms_spool.dir(), mail_spool.dir()] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let files = read_dir_files(dir);
        assert_eq!(files.len(), 1, "{files:?}");
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            for code in ["680", "572468", &pin[2..], &puk[2..], "393331234567"] {
                assert!(!name.contains(code), "{name} holds {code}");
            }
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(text.contains("PIN") && !text.contains(SERIAL));
        }
    }
    let text = std::fs::read_to_string(sms_spool.dir().join(&sent.peer_id)).unwrap();
    assert!(text.contains("PIN 680, PUK 572468"), "{text}");
}

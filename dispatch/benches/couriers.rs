//! Courier throughput against real local peers (not a timed test; a measurement to quote).
//!
//! `cargo bench -p dispatch --bench couriers` prints, each the median of 3 runs:
//!
//! - e-mails/s through [`SmtpCourier`]'s pool into `smtp-sink` with 1, 8 and 20 connections
//!   (20: as many as smtp-source's sessions); the message is rendered once and copied;
//! - postfix's `smtp-source -s 20 -m N -l 1024 -d` against the same sink: the baseline;
//! - SMS requests/s through [`KannelCourier`] into Kannel (bearerbox, fake SMSC, smsbox).
//!
//! `COURIER_BENCH_MAILS` (default 20000) and `COURIER_BENCH_SMS` (default 5000) set the counts.
//! The peers run on loopback and are killed when the bench ends.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/peers.rs"]
mod peers;

use dispatch::courier::sms::KannelCourier;
use dispatch::courier::smtp::{SmtpConfig, SmtpCourier, SmtpSecurity};
use dispatch::*;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn parts(plan: &str) -> PartCodes {
    let codes = Codes::new(b"24680", b"13572468").unwrap();
    Plan::parse(plan).unwrap().cut(&codes).unwrap().remove(1)
}

fn mailer<'a>(who: &'a Addressee, part: &'a PartCodes) -> Mailer<'a> {
    Mailer {
        addressee: who,
        card_serial: "8039123456781234",
        codes: part,
        number: Some(42),
    }
}

fn addressee() -> Addressee {
    Addressee {
        name: "Niccolò D’Aragona".into(),
        address: vec!["Via Città di Castello, 12".into(), "00136 Roma RM".into()],
    }
}

/// Sends `n` messages with `workers` tasks, each building its message from `make(i)`.
async fn run(
    courier: Arc<dyn Courier>,
    n: usize,
    workers: usize,
    make: Arc<dyn Fn(usize) -> Outgoing + Send + Sync>,
) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (courier, next, make) = (courier.clone(), next.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let out = make(i);
                courier.send(&out).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn smtp(mails: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let (_sink, port) = peers::smtp_sink(tmp.path(), false, &[]).await;
    let who = addressee();
    let part = parts("counter(2)+email");
    let renderer = EmailRenderer::new(Arc::new(Templates::builtin().unwrap()), Issuer::default());
    // Rendered once and copied per send: this measures the courier, not the renderer.
    let rendered = Arc::new(renderer.render_email(&mailer(&who, &part)).unwrap());
    let make: Arc<dyn Fn(usize) -> Outgoing + Send + Sync> = Arc::new(move |i| {
        Outgoing::email(
            IdempotencyKey::new(format!("bench-{i}")).unwrap(),
            Destination::email("holder@example.it").unwrap(),
            EmailMessage {
                subject: rendered.subject.clone(),
                text: rendered.text.clone(),
                html: rendered.html.clone(),
            },
        )
        .unwrap()
    });
    let size = make(0);
    if let Message::Email(m) = &size.message {
        println!(
            "e-mail body bytes: text {} html {}",
            m.text.len(),
            m.html.len()
        );
    }
    for connections in [1, 8, 20] {
        let mut rates = Vec::new();
        for _ in 0..3 {
            let mut config = SmtpConfig::new("127.0.0.1", port, "codici@regione.esempio.it");
            config.security = SmtpSecurity::InsecurePlaintext;
            config.max_connections = connections;
            let courier = Arc::new(SmtpCourier::new(config).unwrap());
            let rate = run(courier.clone(), mails, connections, make.clone()).await;
            assert!(courier.connections_opened() <= connections as u64);
            courier.close().await;
            rates.push(rate);
        }
        println!(
            "smtp pool connections={connections} messages={mails} per_s={:.0} runs={:?}",
            median(rates.clone()),
            rates.iter().map(|r| r.round()).collect::<Vec<_>>()
        );
    }
    let mut rates = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let status = Command::new("smtp-source")
            .args(["-s", "20", "-m", &mails.to_string(), "-l", "1024", "-d"])
            .args(["-f", "a@test", "-t", "b@test"])
            .arg(format!("127.0.0.1:{port}"))
            .status()
            .unwrap();
        assert!(status.success());
        rates.push(mails as f64 / start.elapsed().as_secs_f64());
    }
    println!(
        "smtp-source -s 20 -m {mails} -l 1024 -d per_s={:.0} runs={:?}",
        median(rates.clone()),
        rates.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
}

async fn sms(count: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let kannel = peers::Kannel::start(tmp.path()).await;
    let who = addressee();
    let part = parts("counter(2)+sms");
    let renderer = SmsRenderer::new(Arc::new(Templates::builtin().unwrap()), Issuer::default());
    let rendered = Arc::new(renderer.render_sms(&mailer(&who, &part)).unwrap());
    let make: Arc<dyn Fn(usize) -> Outgoing + Send + Sync> = Arc::new(move |i| {
        Outgoing::sms(
            IdempotencyKey::new(format!("bench-{i}")).unwrap(),
            Destination::phone("+393331234567").unwrap(),
            SmsMessage {
                text: rendered.text.clone(),
                septets: rendered.septets,
            },
        )
        .unwrap()
    });
    for in_flight in [1, 16] {
        let mut rates = Vec::new();
        for _ in 0..3 {
            let mut config = kannel.config("s3cret");
            config.max_in_flight = in_flight;
            let courier = Arc::new(KannelCourier::new(config).unwrap());
            rates.push(run(courier, count, in_flight, make.clone()).await);
            // Let Kannel drain its queue to the fake SMSC between runs.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!(
            "kannel sendsms in_flight={in_flight} requests={count} per_s={:.0} runs={:?}",
            median(rates.clone()),
            rates.iter().map(|r| r.round()).collect::<Vec<_>>()
        );
    }
}

fn main() {
    // `cargo test --all-targets` runs benches as tests without `--bench`: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        smtp(env_count("COURIER_BENCH_MAILS", 20_000)).await;
        sms(env_count("COURIER_BENCH_SMS", 5_000)).await;
    });
}

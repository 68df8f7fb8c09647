//! `plico-bench dispatch --count N`: codes delivered by e-mail through the whole service path,
//! against postfix's `smtp-source` into the same `smtp-sink`; and SMS through Kannel.
//!
//! 1. Setup (not timed): a fresh sled store under a development HSM; N + M cards' codes are
//!    imported, a registry of one holder per card (with an e-mail address and a mobile number)
//!    is applied and the cards are made `active` directly (see [`super::population`]).
//! 2. Requests (timed on their own, `requests_per_s`): one `email` dispatch request for each of
//!    the N cards through [`cards::Cards::request_dispatch`], as `POST …/dispatch` makes
//!    it (one store batch and audit event each).
//! 3. The measured path: the service's delivery workers ([`plico::delivery::run_workers`])
//!    over that store, with an SMTP courier (its own pool, TCP_NODELAY) into a local
//!    `smtp-sink`: claim, release through the audited code gate (decrypting the card's record
//!    and the holder's e-mail address), render, send, mark sent. Timed from the workers'
//!    start until every job is `sent`.
//! 4. The baseline, in the same run against the same sink: `smtp-source -s C -m N -l S`, with
//!    C the courier's connections and S the size of the first message plico sent.
//! 5. SMS (with `--sms M`, default N/10, 0 to skip): Kannel (bearerbox, fake SMSC, smsbox) is
//!    started, M `sms` dispatches go through the same workers with a Kannel courier, and, as
//!    the baseline, M bare `sendsms` requests with the same concurrency.
//!
//! It ends with one line:
//! `dispatch per_s=… baseline_per_s=… baseline_ratio=… requests_per_s=… sms_per_s=… sms_baseline_per_s=… sms_baseline_ratio=…`

#[path = "../../dispatch/tests/support/peers.rs"]
pub(crate) mod peers;

use super::population::{import, registry};
use super::{dev_hsm, in_work_dir, per_s, serial};
use anyhow::{bail, Context};
use async_trait::async_trait;
use cards::Date;
use cards::{Channel, OutboxPolicy};
use clap::Args;
use dispatch::courier::sms::KannelCourier;
use dispatch::courier::smtp::{mime_message, SmtpConfig, SmtpCourier, SmtpSecurity};
use dispatch::courier::{Courier, Outgoing, SendError, Sent};
use dispatch::{Channel as CourierChannel, Message};
use plico::delivery::{run_workers, Delivery};
use plico::AppState;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use vault::Actor;
use vault::SledStore;
use vault::{Store, Tree};

/// `plico-bench dispatch` arguments.
#[derive(Debug, Args)]
pub struct DispatchBench {
    /// E-mails sent through the whole path.
    #[arg(long, default_value_t = 20_000)]
    pub count: u64,
    /// SMS sent through Kannel (default: a tenth of --count; 0 skips the SMS part).
    #[arg(long)]
    pub sms: Option<u64>,
    /// SMTP connections (the courier's pool, and smtp-source's sessions).
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Jobs of a channel in flight at once (the lane's cap, `[dispatch] max_in_flight`): the
    /// e-mails beyond the connections wait in the courier for one.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// SMS requests in flight to Kannel.
    #[arg(long, default_value_t = 16)]
    pub sms_in_flight: usize,
    /// Diagnosis: the e-mail workers hand messages to a courier that accepts them without
    /// sending, so `per_s` is the vault path alone (claim, release, render, mark).
    #[arg(long)]
    pub null_courier: bool,
    /// Work directory (a fresh one under the system temp dir by default; removed at the end
    /// unless given).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs the benchmark.
///
/// # Errors
/// I/O, vault and peer errors; a job not sent.
pub fn run(a: &DispatchBench) -> anyhow::Result<()> {
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    if a.connections == 0 || a.sms_in_flight == 0 || a.in_flight == 0 {
        bail!("--connections, --in-flight and --sms-in-flight must be at least 1");
    }
    in_work_dir(a.dir.as_deref(), "dispatch", |work| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run_in(work, a))
    })
}

/// A courier that counts what its inner courier accepted, and keeps the size of the first
/// e-mail as sent (for smtp-source's `-l`).
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Courier>,
    sent: AtomicU64,
    first_size: Mutex<Option<usize>>,
}

impl Counting {
    fn new(inner: Arc<dyn Courier>) -> Arc<Counting> {
        Arc::new(Counting {
            inner,
            sent: AtomicU64::new(0),
            first_size: Mutex::new(None),
        })
    }
}

#[async_trait]
impl Courier for Counting {
    fn channel(&self) -> CourierChannel {
        self.inner.channel()
    }

    async fn send(&self, message: &Outgoing) -> Result<Sent, SendError> {
        let sent = self.inner.send(message).await?;
        if let Message::Email(m) = &message.message {
            if let Ok(mut first) = self.first_size.lock() {
                if first.is_none() {
                    let mime = mime_message(
                        "codici@regione.esempio.it",
                        message.destination.expose(),
                        "<0123456789abcdef0123456789abcdef.plico@regione.esempio.it>",
                        m,
                        SystemTime::now(),
                        dispatch::courier::smtp::BodyEncoding::EightBit,
                    )?;
                    *first = Some(mime.len());
                }
            }
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(sent)
    }
}

/// The bench's state: the service state over the work dir's store, the cards' serials.
struct Population {
    state: AppState,
    email_cards: Vec<String>,
    sms_cards: Vec<String>,
}

fn populate(work: &Path, n: u64, m: u64) -> anyhow::Result<Population> {
    let hsm = dev_hsm(&work.join("hsm"))?;
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&work.join("store"))?);
    let state = AppState::new(hsm.clone(), store.clone())?;
    let actor = Actor {
        id: "bench".into(),
        role: "cms".into(),
        request_id: String::new(),
    };
    state.unsealed(&actor, "bench")?;
    let today = Date::today_utc();
    let (base_e, base_s) = (1_000_000_000u64, 2_000_000_000u64);
    eprintln!("setup: importing {n} + {m} cards' codes, registry with contacts");
    import(work, &state.codes, &*hsm, &state.audit, n, base_e)?;
    let email_cards: Vec<String> = (0..n).map(|i| serial(base_e, i)).collect();
    let (cms, audit) = (&state.cms, &state.audit);
    registry(
        cms,
        &*store,
        &*hsm,
        audit,
        &email_cards,
        0,
        today,
        &actor,
        true,
    )?;
    let sms_cards: Vec<String> = (0..m).map(|i| serial(base_s, i)).collect();
    if m > 0 {
        import(work, &state.codes, &*hsm, audit, m, base_s)?;
        registry(
            cms, &*store, &*hsm, audit, &sms_cards, n, today, &actor, true,
        )?;
    }
    Ok(Population {
        state,
        email_cards,
        sms_cards,
    })
}

/// One dispatch request with `plan` for each card; the rate.
fn request_all(state: &AppState, cards: &[String], plan: &str) -> anyhow::Result<f64> {
    let actor = Actor {
        id: "bench-cms".into(),
        role: "cms".into(),
        request_id: "bench".into(),
    };
    let today = Date::today_utc();
    let started = Instant::now();
    for s in cards {
        state
            .cms
            .request_dispatch(&*state.hsm, &state.audit, s, plan, today, &actor)
            .with_context(|| format!("dispatch request for card {s}"))?;
    }
    Ok(per_s(cards.len() as u64, started.elapsed()))
}

/// Runs the workers over `state` with `courier` for `channel` until `n` jobs are sent and
/// none is left due or sending; the rate.
async fn deliver_all(
    state: &AppState,
    channel: Channel,
    courier: Arc<Counting>,
    in_flight: usize,
    n: u64,
) -> anyhow::Result<f64> {
    let mut delivery = Delivery::new(&state.print, OutboxPolicy::default()).with_courier(
        channel,
        courier.clone(),
        in_flight,
    );
    delivery.poll = Duration::from_millis(5);
    let state = state.clone().with_delivery(delivery);
    let delivery = state.delivery.clone().context("delivery just set")?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let workers = tokio::spawn(run_workers(state.clone(), delivery, stopped));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let store = state.store.clone();
        let due = tokio::task::spawn_blocking(move || store.keys(Tree::OutboxDue, &[], None, 1))
            .await??;
        if courier.sent.load(Ordering::Relaxed) >= n && due.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} jobs sent after 10 minutes",
                courier.sent.load(Ordering::Relaxed)
            );
        }
    }
    let elapsed = started.elapsed();
    let _ = stop.send(true);
    workers.await?;
    let sent = courier.sent.load(Ordering::Relaxed);
    if sent != n {
        bail!("{sent} messages sent for {n} jobs");
    }
    Ok(per_s(n, elapsed))
}

async fn run_in(work: &Path, a: &DispatchBench) -> anyhow::Result<()> {
    let n = a.count;
    let m = a.sms.unwrap_or(n / 10);
    let (w, nn, mm) = (work.to_owned(), n, m);
    let pop = tokio::task::spawn_blocking(move || populate(&w, nn, mm)).await??;
    let state = pop.state.clone();

    eprintln!("requests: {n} e-mail dispatch requests");
    let (st, cards) = (state.clone(), pop.email_cards);
    let requests = tokio::task::spawn_blocking(move || request_all(&st, &cards, "email")).await??;
    eprintln!("  {requests:.0} requests/s");

    let sink_dir = work.join("smtp-sink");
    std::fs::create_dir_all(&sink_dir)?;
    let (_sink, port) = peers::smtp_sink(&sink_dir, false, &[]).await;
    let mut config = SmtpConfig::new("127.0.0.1", port, "codici@regione.esempio.it");
    config.security = SmtpSecurity::InsecurePlaintext;
    config.max_connections = a.connections;
    let smtp = Arc::new(SmtpCourier::new(config)?);
    let counting = if a.null_courier {
        Counting::new(Arc::new(NullCourier))
    } else {
        Counting::new(smtp.clone())
    };
    eprintln!(
        "measuring: {n} e-mails through the workers ({} connections, {} jobs in flight)",
        a.connections, a.in_flight
    );
    let rate = deliver_all(&state, Channel::Email, counting.clone(), a.in_flight, n).await?;
    smtp.close().await;
    eprintln!("  {rate:.0} e-mails/s");

    let size = counting
        .first_size
        .lock()
        .ok()
        .and_then(|s| *s)
        .unwrap_or(4096);
    eprintln!(
        "baseline: smtp-source -s {} -m {n} -l {size} into the same sink",
        a.connections
    );
    let started = Instant::now();
    let mut source = std::process::Command::new("smtp-source");
    source
        .args(["-s", &a.connections.to_string(), "-m", &n.to_string()])
        .args(["-l", &size.to_string(), "-d"])
        .args(["-f", "bench@regione.esempio.it", "-t", "holder@example.it"])
        .arg(format!("127.0.0.1:{port}"));
    let status = tokio::task::spawn_blocking(move || source.status())
        .await?
        .context("cannot run smtp-source (scripts/test.sh installs postfix)")?;
    if !status.success() {
        bail!("smtp-source failed: {status}");
    }
    let baseline = per_s(n, started.elapsed());
    eprintln!("  {baseline:.0} messages/s");

    let (mut sms, mut sms_baseline) = (0.0, 0.0);
    if m > 0 {
        (sms, sms_baseline) =
            sms_part(work, &state, pop.sms_cards, a.in_flight, a.sms_in_flight).await?;
    }
    println!(
        "dispatch per_s={rate:.0} baseline_per_s={baseline:.0} baseline_ratio={:.2} requests_per_s={requests:.0} sms_per_s={sms:.0} sms_baseline_per_s={sms_baseline:.0} sms_baseline_ratio={:.2}",
        rate / baseline,
        if sms_baseline > 0.0 { sms / sms_baseline } else { 0.0 }
    );
    Ok(())
}

/// SMS through the workers into Kannel, then bare `sendsms` requests as the baseline.
async fn sms_part(
    work: &Path,
    state: &AppState,
    cards: Vec<String>,
    lane_in_flight: usize,
    in_flight: usize,
) -> anyhow::Result<(f64, f64)> {
    let m = cards.len() as u64;
    let st = state.clone();
    tokio::task::spawn_blocking(move || request_all(&st, &cards, "sms")).await??;
    let kannel_dir = work.join("kannel");
    std::fs::create_dir_all(&kannel_dir)?;
    let kannel = peers::Kannel::start(&kannel_dir).await;
    let mut config = kannel.config("s3cret");
    config.max_in_flight = in_flight;
    let courier = Counting::new(Arc::new(KannelCourier::new(config)?));
    eprintln!("measuring: {m} SMS through the workers into Kannel ({in_flight} in flight)");
    let rate = deliver_all(state, Channel::Sms, courier, lane_in_flight, m).await?;
    eprintln!("  {rate:.0} SMS/s");
    // Let Kannel drain its queue to the fake SMSC before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("baseline: {m} bare sendsms requests, {in_flight} in flight");
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/cgi-bin/sendsms", kannel.sendsms_port);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        tasks.spawn(async move {
            while (next.fetch_add(1, Ordering::Relaxed) as u64) < m {
                let r = client
                    .get(&url)
                    .query(&[
                        ("username", "plico"),
                        ("password", "s3cret"),
                        ("from", "PLICO"),
                        ("to", "+393331234567"),
                        ("text", "Codici della carta: parte B 123 456789"),
                    ])
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("sendsms answered {}", r.status());
                }
            }
            Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let baseline = per_s(m, started.elapsed());
    eprintln!("  {baseline:.0} requests/s");
    Ok((rate, baseline))
}

/// Accepts every message at once without sending it (`--null-courier`).
#[derive(Debug)]
struct NullCourier;

#[async_trait]
impl Courier for NullCourier {
    fn channel(&self) -> CourierChannel {
        CourierChannel::Email
    }

    async fn send(&self, _message: &Outgoing) -> Result<Sent, SendError> {
        Ok(Sent {
            peer_id: "null".into(),
            at: SystemTime::now(),
        })
    }
}

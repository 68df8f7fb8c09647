//! `plico-bench soak --minutes M`: a fixed offered mix of API reads, lifecycle changes and
//! dispatches against the service on loopback for M minutes, with its delivery workers sending
//! the dispatched e-mails into postfix's `smtp-sink`; latency per kind, errors by status, and
//! resident memory after a warm-up and at the end.
//!
//! 1. Setup (not measured): a fresh sled store under a development HSM; the cards' codes
//!    imported as one batch; a registry of one holder per card (with e-mail, mobile and postal
//!    address). The dispatch pool (enough cards for one dispatch each over the whole run) and
//!    the read pool are made `active` directly (see [`super::population`]); the lifecycle pool
//!    (2,000 cards) stays `issued`. `cms`, `operator` and `support` accounts.
//! 2. `plico::serve` on a loopback port, on a runtime of its own with 2 worker threads (as the
//!    service on this 2-core machine), with the delivery workers and an SMTP courier (4
//!    connections, 16 jobs in flight) into a local `smtp-sink` started for the run.
//! 3. The load, open loop at `--rate` requests a second (default 100): every 20 requests are 9
//!    card statuses (`GET /v1/cards/{serial}`, random card), 3 holder searches by codice
//!    fiscale (`POST /v1/holders/search`, random holder), 6 lifecycle changes (the next card of
//!    the lifecycle pool, round robin, gets what its state allows: `activate` when issued,
//!    `suspend` when active, `reactivate` when suspended; a card with a request out is
//!    skipped, and a card whose request failed leaves the pool, its state being unknown) and
//!    2 `email` dispatches (the next
//!    card of the dispatch pool). A request is sent on its tick whether or not the earlier
//!    ones were answered, up to 256 outstanding (beyond that it is skipped and counted: the
//!    offered rate was not served). The load generator is one thread of its own.
//! 4. Resident memory (`VmRSS` of this process: the service and the load generator, which
//!    keeps fixed-size histograms only) after the warm-up (half the run) and at the end; a
//!    line a minute on stderr with the threads and the store's size on disk.
//!
//! The warm-up is long enough for the bounded caches to fill, so that the growth after it is
//! growth without a bound: sled's page cache is set to `[store] cache_mib`'s minimum, 64 MiB,
//! unless `--cache-mib` says otherwise (the store grows by about 8 MiB a minute at the
//! default rate, so the cache is full within the first quarter hour of a 30-minute run; at
//! sled's default of 1 GiB it would still be filling at the end, and its growth says nothing
//! of a leak). The thread of every vault call in flight was such a growth until vault calls
//! were bounded (`plico::api::MAX_VAULT_CALLS`).
//!
//! Every answer is expected to be a success (`200`, `201` for a dispatch): anything else,
//! or a connection error, is an unexpected error, and the bench fails after its report if
//! there was one. It ends with one line:
//! `soak minutes=… requests=… p99_ms=… unexpected_errors=… rss_start_mib=… rss_end_mib=… rss_growth_pct=…`

use super::dispatch::peers;
use super::population::{address, codice_fiscale, import, name, registry};
use super::server::{bench_actor, client_runtime, Fresh};
use super::{dir_bytes, in_work_dir, serial, status_mib, TestRng};
use anyhow::{bail, Context};
use cards::Date;
use cards::{CardEntry, HolderEntry};
use cards::{Channel, OutboxPolicy};
use clap::Args;
use dispatch::courier::smtp::{SmtpConfig, SmtpCourier, SmtpSecurity};
use plico::delivery::Delivery;
use plico::{AppState, Settings};
use secrecy::ExposeSecret;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vault::Role;

/// `plico-bench soak` arguments.
#[derive(Debug, Args)]
pub struct SoakBench {
    /// Minutes the load runs (fractions allowed).
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Requests offered a second, all kinds together.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Cards of the lifecycle pool.
    #[arg(long, default_value_t = 2_000)]
    pub lifecycle_cards: u64,
    /// sled's page cache in MiB (`[store] cache_mib`, at least 64). The default is that
    /// minimum, so that the cache is full before the warm-up ends and the growth measured
    /// after it is not the cache filling (with sled's own 1 GiB it fills over hours).
    #[arg(long, default_value_t = 64)]
    pub cache_mib: u64,
    /// Work directory (a fresh one under the system temp dir by default; removed at the end
    /// unless given).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The first serial of the soak's cards.
const BASE: u64 = 7_000_000_000;
/// Requests outstanding at most; a tick beyond it is skipped.
const MAX_OUTSTANDING: usize = 256;

/// What a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Status,
    Search,
    Activate,
    Suspend,
    Reactivate,
    Dispatch,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Status,
        Kind::Search,
        Kind::Activate,
        Kind::Suspend,
        Kind::Reactivate,
        Kind::Dispatch,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::Search => "search",
            Kind::Activate => "activate",
            Kind::Suspend => "suspend",
            Kind::Reactivate => "reactivate",
            Kind::Dispatch => "dispatch",
        }
    }
}

/// One slot of the offered mix; `Life` becomes the lifecycle change the card needs.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Status,
    Search,
    Life,
    Dispatch,
}

/// Every 20 requests: 9 statuses, 3 searches, 6 lifecycle changes, 2 dispatches.
const MIX: [Slot; 20] = [
    Slot::Status,
    Slot::Life,
    Slot::Search,
    Slot::Status,
    Slot::Life,
    Slot::Status,
    Slot::Dispatch,
    Slot::Status,
    Slot::Life,
    Slot::Search,
    Slot::Status,
    Slot::Life,
    Slot::Status,
    Slot::Status,
    Slot::Life,
    Slot::Dispatch,
    Slot::Search,
    Slot::Status,
    Slot::Life,
    Slot::Status,
];

/// The share of dispatches in [`MIX`].
const DISPATCH_SHARE: f64 = 2.0 / 20.0;

/// Latencies in fixed buckets (10 µs up to 1 ms, then 10 % steps of each decade up to 10 s):
/// its memory does not grow with the run.
#[derive(Debug, Clone)]
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
}

impl Histogram {
    const SLOTS: usize = 100 + 4 * 90 + 1;

    fn new() -> Histogram {
        Histogram {
            buckets: vec![0; Self::SLOTS],
            count: 0,
        }
    }

    fn index(us: u64) -> usize {
        if us < 1_000 {
            return (us / 10) as usize;
        }
        let mut base = 1_000u64;
        let mut at = 100usize;
        for _ in 0..4 {
            if us < base * 10 {
                return at + ((us - base) / (base / 10)) as usize;
            }
            base *= 10;
            at += 90;
        }
        Self::SLOTS - 1
    }

    /// The upper edge of bucket `i`, in milliseconds.
    fn upper_ms(i: usize) -> f64 {
        if i < 100 {
            return (i as f64 + 1.0) * 0.01;
        }
        let decade = (i - 100) / 90;
        let step = (i - 100) % 90;
        let base = 1_000.0 * 10f64.powi(decade as i32);
        if decade >= 4 {
            return 10_000.0;
        }
        (base + (step as f64 + 1.0) * base / 10.0) / 1_000.0
    }

    fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Self::index(us)] += 1;
        self.count += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
    }

    /// The `q`-quantile (0 to 1), in milliseconds (the upper edge of its bucket).
    fn quantile_ms(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let want = ((self.count as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Self::upper_ms(i);
            }
        }
        Self::upper_ms(Self::SLOTS - 1)
    }
}

/// What the run saw of one kind.
#[derive(Debug)]
struct KindStats {
    latency: Histogram,
    /// Answers that were not the expected success, by status (`transport` for no answer).
    errors: BTreeMap<String, u64>,
}

/// The shared state of the load generator.
struct Load {
    base: String,
    client: reqwest::Client,
    cms: String,
    operator: String,
    support: String,
    cards: u64,
    dispatch_cards: u64,
    lifecycle_first: u64,
    lifecycle: Vec<AtomicU8>,
    next_life: AtomicUsize,
    next_dispatch: AtomicU64,
    outstanding: AtomicUsize,
    stats: Mutex<BTreeMap<Kind, KindStats>>,
}

/// Lifecycle pool states.
const ISSUED: u8 = 0;
const ACTIVE: u8 = 1;
const SUSPENDED: u8 = 2;
/// A request on the card is out: the next round skips it.
const BUSY: u8 = 3;
/// A request on the card failed, so its state is unknown: the card leaves the pool (the
/// failure is already counted; following it with refusals would count it again).
const UNKNOWN: u8 = 4;

/// Runs the soak.
///
/// # Errors
/// Setup failures (I/O, vault, the sink); an unexpected error during the run.
pub fn run(a: &SoakBench) -> anyhow::Result<()> {
    if !(a.minutes > 0.0 && a.rate > 0.0 && a.lifecycle_cards > 0) {
        bail!("--minutes, --rate and --lifecycle-cards must be above 0");
    }
    in_work_dir(a.dir.as_deref(), "soak", |work| bench(work, a))
}

/// The lifecycle pool's holders, registered with their cards left `issued`.
fn register_issued(
    state: &AppState,
    serials: &[String],
    first_holder: u64,
    today: Date,
) -> anyhow::Result<()> {
    let expiry = Date::parse("2031-12-31")?;
    let birth = Date::parse("1985-12-10")?;
    let mut entries = Vec::with_capacity(serials.len());
    for (j, s) in serials.iter().enumerate() {
        let i = first_holder + j as u64;
        let (given, surname) = name(i);
        entries.push(HolderEntry {
            first_line: j as u64 + 2,
            codice_fiscale: codice_fiscale(i)?,
            given_names: given.into(),
            surname: surname.into(),
            birth_date: birth,
            email: Some(format!("holder{i}@example.it")),
            mobile: Some(format!("+39333{:07}", i % 10_000_000)),
            address: Some(address(i)),
            deceased: false,
            cards: vec![CardEntry {
                line: j as u64 + 2,
                serial: s.clone(),
                expiry,
                replaced_by: None,
            }],
        });
    }
    for chunk in entries.chunks(5_000) {
        state
            .cms
            .import_registry(&*state.hsm, &state.audit, chunk, today, &bench_actor("cms"))?;
    }
    Ok(())
}

/// A fresh unsealed vault as [`super::server::fresh_unsealed`] makes it, with sled's page
/// cache set as the service's `[store] cache_mib` sets it.
fn open_vault(work: &Path, mib: u64) -> anyhow::Result<Fresh> {
    if mib < 64 {
        bail!("--cache-mib must be at least 64, as [store] cache_mib");
    }
    let hsm = super::dev_hsm(&work.join("hsm"))?;
    let store: Arc<dyn vault::Store> = Arc::new(vault::SledStore::open_with_cache(
        &work.join("store"),
        Some(mib << 20),
    )?);
    let settings = Settings {
        sensitive_per_minute: std::num::NonZeroU32::MAX,
        ..Settings::default()
    };
    let state = AppState::with_settings(hsm.clone(), store.clone(), &settings)?;
    state.unsealed(&bench_actor("admin"), "bench")?;
    Ok(Fresh { hsm, store, state })
}

fn bench(work: &Path, a: &SoakBench) -> anyhow::Result<()> {
    let run_for = Duration::from_secs_f64(a.minutes * 60.0);
    let warmup = run_for / 2;
    let dispatch_cards = (a.rate * run_for.as_secs_f64() * DISPATCH_SHARE).ceil() as u64 + 100;
    let cards = dispatch_cards + a.lifecycle_cards;

    let Fresh { hsm, store, state } = open_vault(work, a.cache_mib)?;
    eprintln!(
        "setup: {cards} cards' codes and holders ({dispatch_cards} to dispatch, {} for the \
         lifecycle)",
        a.lifecycle_cards
    );
    import(work, &state.codes, &*hsm, &state.audit, cards, BASE)?;
    let serials: Vec<String> = (0..cards).map(|i| serial(BASE, i)).collect();
    let today = Date::today_utc();
    let (active, issued) = serials.split_at(dispatch_cards as usize);
    registry(
        &state.cms,
        &*store,
        &*hsm,
        &state.audit,
        active,
        0,
        today,
        &bench_actor("cms"),
        true,
    )?;
    register_issued(&state, issued, dispatch_cards, today)?;
    let admin = bench_actor("admin");
    let token = |who: &str, role: Role| -> anyhow::Result<String> {
        let (_, t) = state.accounts.create(who, role, &admin)?;
        Ok(format!("Bearer {}", t.expose_secret()))
    };
    let (cms, operator, support) = (
        token("soak-cms", Role::Cms)?,
        token("soak-operator", Role::Operator)?,
        token("soak-support", Role::Support)?,
    );

    // The service, its workers and their sink, on a runtime of their own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("plico-server")
        .enable_all()
        .build()?;
    let sink_dir = work.join("smtp-sink");
    std::fs::create_dir_all(&sink_dir)?;
    let (sink, port) = runtime.block_on(peers::smtp_sink(&sink_dir, false, &[]));
    let mut config = SmtpConfig::new("127.0.0.1", port, "codici@regione.esempio.it");
    config.security = SmtpSecurity::InsecurePlaintext;
    config.max_connections = 4;
    let courier = runtime.block_on(async { SmtpCourier::new(config) })?;
    let delivery = Delivery::new(&state.print, OutboxPolicy::default()).with_courier(
        Channel::Email,
        Arc::new(courier),
        16,
    );
    let state = state.with_delivery(delivery);
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = runtime.spawn(async move {
        plico::serve(listener, state, None, async {
            let _ = stopped.await;
        })
        .await
    });

    let load = Arc::new(Load {
        base,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(MAX_OUTSTANDING)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .build()?,
        cms,
        operator,
        support,
        cards,
        dispatch_cards,
        lifecycle_first: dispatch_cards,
        lifecycle: (0..a.lifecycle_cards)
            .map(|_| AtomicU8::new(ISSUED))
            .collect(),
        next_life: AtomicUsize::new(0),
        next_dispatch: AtomicU64::new(0),
        outstanding: AtomicUsize::new(0),
        stats: Mutex::new(
            Kind::ALL
                .iter()
                .map(|k| {
                    (
                        *k,
                        KindStats {
                            latency: Histogram::new(),
                            errors: BTreeMap::new(),
                        },
                    )
                })
                .collect(),
        ),
    });
    eprintln!(
        "soak: {:.1} minutes at {} requests/s (warm-up {:.0} s)",
        a.minutes,
        a.rate,
        warmup.as_secs_f64()
    );
    let client_rt = client_runtime()?;
    let store_dir = work.join("store");
    let driven = client_rt.block_on(drive(load.clone(), a.rate, run_for, warmup, &store_dir));
    let _ = stop.send(());
    let served = runtime.block_on(served);
    drop(sink);
    let (requests, skipped, rss_start, rss_end) = driven?;
    served?.context("the service failed")?;

    let stats = load
        .stats
        .lock()
        .map_err(|_| anyhow::anyhow!("stats lock poisoned"))?;
    let mut all = Histogram::new();
    let mut unexpected = 0u64;
    for (kind, s) in stats.iter() {
        all.merge(&s.latency);
        let errors: u64 = s.errors.values().sum();
        unexpected += errors;
        eprintln!(
            "{:>10}: {:>7} answers, p50 {:.2} ms, p99 {:.2} ms, errors {:?}",
            kind.name(),
            s.latency.count,
            s.latency.quantile_ms(0.50),
            s.latency.quantile_ms(0.99),
            s.errors
        );
    }
    eprintln!("skipped ticks (more than {MAX_OUTSTANDING} outstanding): {skipped}");
    let growth = if rss_start > 0.0 {
        (rss_end - rss_start) / rss_start * 100.0
    } else {
        0.0
    };
    println!(
        "soak minutes={} requests={requests} p99_ms={:.2} unexpected_errors={unexpected} rss_start_mib={rss_start:.1} rss_end_mib={rss_end:.1} rss_growth_pct={growth:.1}",
        a.minutes,
        all.quantile_ms(0.99),
    );
    if unexpected > 0 {
        bail!("{unexpected} unexpected errors");
    }
    Ok(())
}

/// The open loop: a request a tick for `run_for`; waits for the outstanding ones. Requests
/// sent, ticks skipped, RSS after the warm-up and at the end (MiB).
async fn drive(
    load: Arc<Load>,
    rate: f64,
    run_for: Duration,
    warmup: Duration,
    store_dir: &Path,
) -> anyhow::Result<(u64, u64, f64, f64)> {
    let store_mib = || dir_bytes(store_dir) as f64 / f64::from(1u32 << 20);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut rng = TestRng(0x50A4_0000_0000_0001);
    let (mut sent, mut skipped) = (0u64, 0u64);
    let mut rss_start = None;
    let mut next_report = Duration::from_secs(60);
    loop {
        tick.tick().await;
        let at = started.elapsed();
        if at >= run_for {
            break;
        }
        if rss_start.is_none() && at >= warmup {
            let rss = status_mib("VmRSS");
            eprintln!(
                "  after the warm-up: rss {rss:.1} MiB, store {:.1} MiB, {sent} requests",
                store_mib()
            );
            rss_start = Some(rss);
        }
        if at >= next_report {
            eprintln!(
                "  minute {}: rss {:.1} MiB, {:.0} threads, store {:.1} MiB, {sent} requests",
                next_report.as_secs() / 60,
                status_mib("VmRSS"),
                // `Threads` is a count, not kB: `status_mib` divides by 1024.
                status_mib("Threads") * 1024.0,
                store_mib()
            );
            next_report += Duration::from_secs(60);
        }
        if load.outstanding.load(Ordering::Relaxed) >= MAX_OUTSTANDING {
            skipped += 1;
            continue;
        }
        let slot = MIX[(sent % MIX.len() as u64) as usize];
        let pick = rng.next();
        load.outstanding.fetch_add(1, Ordering::Relaxed);
        sent += 1;
        let l = load.clone();
        tokio::spawn(async move {
            one(&l, slot, pick).await;
            l.outstanding.fetch_sub(1, Ordering::Relaxed);
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while load.outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_end = status_mib("VmRSS");
    Ok((sent, skipped, rss_start.unwrap_or(rss_end), rss_end))
}

/// Sends one request of `slot` and records its latency or error.
async fn one(l: &Load, slot: Slot, pick: u64) {
    let c = &l.client;
    // A lifecycle card and the state it moves to when its request succeeds.
    let mut moves: Option<(&AtomicU8, u8)> = None;
    let (kind, req, want) = match slot {
        Slot::Status => {
            let s = serial(BASE, pick % l.cards);
            let req = c
                .get(format!("{}/v1/cards/{s}", l.base))
                .header(reqwest::header::AUTHORIZATION, &l.cms);
            (Kind::Status, req, 200)
        }
        Slot::Search => {
            let Ok(cf) = codice_fiscale(pick % l.cards) else {
                return;
            };
            let req = c
                .post(format!("{}/v1/holders/search", l.base))
                .header(reqwest::header::AUTHORIZATION, &l.operator)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(format!("{{\"codice_fiscale\":\"{cf}\"}}"));
            (Kind::Search, req, 200)
        }
        Slot::Life => {
            // The next card of the pool with no request out and a known state.
            let Some((i, state)) = (0..l.lifecycle.len()).find_map(|_| {
                let i = l.next_life.fetch_add(1, Ordering::Relaxed) % l.lifecycle.len();
                let state = l.lifecycle[i].load(Ordering::Relaxed);
                (state <= SUSPENDED
                    && l.lifecycle[i]
                        .compare_exchange(state, BUSY, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok())
                .then_some((i, state))
            }) else {
                return;
            };
            let s = serial(BASE, l.lifecycle_first + i as u64);
            let card = &l.lifecycle[i];
            let (kind, path, who, body, next) = match state {
                ISSUED => (
                    Kind::Activate,
                    "activate",
                    &l.operator,
                    "{\"by\":\"holder\",\"document_type\":\"carta_identita\",\"document_number\":\"CA12345AB\",\"consent_ref\":\"consenso-soak\"}",
                    ACTIVE,
                ),
                ACTIVE => (
                    Kind::Suspend,
                    "suspend",
                    &l.support,
                    "{\"reason\":\"lost\"}",
                    SUSPENDED,
                ),
                _ => (Kind::Reactivate, "reactivate", &l.cms, "{}", ACTIVE),
            };
            moves = Some((card, next));
            let req = c
                .post(format!("{}/v1/cards/{s}/{path}", l.base))
                .header(reqwest::header::AUTHORIZATION, who)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
            (kind, req, 200)
        }
        Slot::Dispatch => {
            let n = l.next_dispatch.fetch_add(1, Ordering::Relaxed);
            let s = serial(BASE, n % l.dispatch_cards);
            // The pool is sized for one dispatch a card; a longer run replaces the first.
            let body = if n < l.dispatch_cards {
                "{\"plan\":\"email\"}"
            } else {
                "{\"plan\":\"email\",\"replace\":true,\"reason\":\"soak\"}"
            };
            let req = c
                .post(format!("{}/v1/cards/{s}/dispatch", l.base))
                .header(reqwest::header::AUTHORIZATION, &l.cms)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
            (Kind::Dispatch, req, 201)
        }
    };
    let sent = Instant::now();
    let outcome = match req.send().await {
        Ok(res) => {
            let status = res.status().as_u16();
            match res.bytes().await {
                Ok(_) if status == want => Ok(sent.elapsed()),
                Ok(_) => Err(status.to_string()),
                Err(_) => Err("transport".to_owned()),
            }
        }
        Err(_) => Err("transport".to_owned()),
    };
    if let Some((card, next)) = moves {
        card.store(
            if outcome.is_ok() { next } else { UNKNOWN },
            Ordering::Relaxed,
        );
    }
    if let Ok(mut stats) = l.stats.lock() {
        if let Some(s) = stats.get_mut(&kind) {
            match outcome {
                Ok(d) => s.latency.record(d),
                Err(e) => *s.errors.entry(e).or_default() += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Histogram;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_bound_their_values() {
        for us in [
            0u64, 9, 10, 999, 1_000, 1_099, 1_100, 9_999, 10_000, 123_456, 9_999_999,
        ] {
            let i = Histogram::index(us);
            assert!(i < Histogram::SLOTS, "{us}");
            assert!(
                Histogram::upper_ms(i) * 1_000.0 >= us as f64,
                "{us} in bucket {i}"
            );
        }
        let mut h = Histogram::new();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p99 = h.quantile_ms(0.99);
        assert!((99.0..=110.0).contains(&p99), "{p99}");
        let p50 = h.quantile_ms(0.50);
        assert!((50.0..=60.0).contains(&p50), "{p50}");
    }
}

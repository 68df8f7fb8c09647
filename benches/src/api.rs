//! `plico-bench api --seconds S`: the API's card status and holder search under a closed-loop
//! load of N connections over loopback, against `GET /healthz` driven by the same load
//! generator in the same run (as `wrk -c N` would).
//!
//! 1. Setup (not timed): a fresh sled store under a development HSM, `--cards` cards' codes
//!    and a registry of one holder per card, every card `active` (see
//!    [`super::population`]); a `cms` account and its token; `plico::serve` on a loopback port
//!    (2 worker threads, see [`super::server`]).
//! 2. Three runs of `--seconds` each, one after the other: `GET /healthz` (the baseline),
//!    `GET /v1/cards/{serial}` of random cards (the card status) and `POST /v1/holders/search`
//!    by the codice fiscale of random holders (the search; the per-account quota of
//!    sensitive calls is raised for the bench: it limits a person, not the route's cost).
//!    `--connections` requests are in flight at all times: each connection sends its next
//!    request as soon as it has read the whole answer of the last one. The load generator is
//!    one thread of its own. Each answer must be `200`.
//!
//! It ends with one line:
//! `api status_per_s=… status_p99_ms=… healthz_per_s=… baseline_ratio=… search_per_s=… search_p99_ms=…`
//! where `baseline_ratio` is the card status's requests/s over `/healthz`'s.

use super::population::{codice_fiscale, import, registry};
use super::server::{bench_actor, client_runtime, fresh_unsealed, Fresh, Server};
use super::{in_work_dir, serial, TestRng};
use anyhow::bail;
use cards::Date;
use clap::Args;
use plico::Settings;
use secrecy::ExposeSecret;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vault::Role;

/// `plico-bench api` arguments.
#[derive(Debug, Args)]
pub struct ApiBench {
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Connections, each with one request in flight.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Cards (and holders) in the registry.
    #[arg(long, default_value_t = 100_000)]
    pub cards: u64,
    /// Work directory (a fresh one under the system temp dir by default; removed at the end
    /// unless given).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The first serial of the bench's cards.
const BASE: u64 = 5_000_000_000;

/// Runs the benchmark.
///
/// # Errors
/// I/O and vault errors; an answer that is not `200`.
pub fn run(a: &ApiBench) -> anyhow::Result<()> {
    if a.seconds == 0 || a.connections == 0 || a.cards == 0 {
        bail!("--seconds, --connections and --cards must be at least 1");
    }
    in_work_dir(a.dir.as_deref(), "api", |work| bench(work, a))
}

/// What one run measured.
struct Run {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// What a request of a run is.
#[derive(Clone, Copy)]
enum Kind {
    Healthz,
    Status,
    Search,
}

/// `connections` loops sending requests of `kind` for `seconds`; every answer must be `200`.
async fn drive(
    client: &reqwest::Client,
    base: &str,
    bearer: &str,
    kind: Kind,
    a: &ApiBench,
) -> anyhow::Result<Run> {
    let what = match kind {
        Kind::Healthz => "healthz",
        Kind::Status => "status",
        Kind::Search => "search",
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..a.connections {
        let client = client.clone();
        let base = base.to_owned();
        let bearer = bearer.to_owned();
        let cards = a.cards;
        tasks.spawn(async move {
            let mut rng = TestRng(0x5EED_0000_0000_0001 ^ ((c as u64 + 1) << 32));
            let mut latencies: Vec<f64> = Vec::new();
            while Instant::now() < deadline {
                let i = rng.next() % cards;
                let req = match kind {
                    Kind::Healthz => client.get(format!("{base}/healthz")),
                    Kind::Status => client
                        .get(format!("{base}/v1/cards/{}", serial(BASE, i)))
                        .header(reqwest::header::AUTHORIZATION, &bearer),
                    Kind::Search => client
                        .post(format!("{base}/v1/holders/search"))
                        .header(reqwest::header::AUTHORIZATION, &bearer)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(format!("{{\"codice_fiscale\":\"{}\"}}", codice_fiscale(i)?)),
                };
                let sent = Instant::now();
                let res = req.send().await?;
                let status = res.status();
                let _ = res.bytes().await?;
                if status != reqwest::StatusCode::OK {
                    bail!("{what}: an answer was {status}");
                }
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    if latencies.is_empty() {
        bail!("{what}: no answer in {} s", a.seconds);
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: usize| latencies[(latencies.len() * q / 100).min(latencies.len() - 1)];
    let run = Run {
        per_s: latencies.len() as f64 / elapsed.max(1e-9),
        p50_ms: at(50),
        p99_ms: at(99),
    };
    eprintln!(
        "{what:>8}: {} requests on {} connections: {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        a.connections,
        run.per_s,
        run.p50_ms,
        run.p99_ms
    );
    Ok(run)
}

fn bench(work: &Path, a: &ApiBench) -> anyhow::Result<()> {
    let Fresh { hsm, store, state } = fresh_unsealed(work, Settings::default())?;
    let admin = bench_actor("admin");
    eprintln!("setup: {} cards' codes and holders, a cms account", a.cards);
    import(work, &state.codes, &*hsm, &state.audit, a.cards, BASE)?;
    let serials: Vec<String> = (0..a.cards).map(|i| serial(BASE, i)).collect();
    let cms = bench_actor("cms");
    registry(
        &state.cms,
        &*store,
        &*hsm,
        &state.audit,
        &serials,
        0,
        Date::today_utc(),
        &cms,
        true,
    )?;
    let (_account, token) = state.accounts.create("cms-banco", Role::Cms, &admin)?;
    let bearer = format!("Bearer {}", token.expose_secret());

    let server = Server::start(state)?;
    let base = server.base.clone();
    let client_rt = client_runtime()?;
    let result = client_rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(a.connections)
            .tcp_nodelay(true)
            .build()?;
        // A short warm-up (connections, caches), not measured.
        for _ in 0..50 {
            client.get(format!("{base}/healthz")).send().await?;
        }
        let healthz = drive(&client, &base, &bearer, Kind::Healthz, a).await?;
        let status = drive(&client, &base, &bearer, Kind::Status, a).await?;
        let search = drive(&client, &base, &bearer, Kind::Search, a).await?;
        anyhow::Ok((healthz, status, search))
    });
    server.stop();
    let (healthz, status, search) = result?;
    println!(
        "api status_per_s={:.0} status_p99_ms={:.2} healthz_per_s={:.0} baseline_ratio={:.2} search_per_s={:.0} search_p99_ms={:.2} healthz_p99_ms={:.2} status_p50_ms={:.2} search_ratio={:.2} connections={} cards={}",
        status.per_s,
        status.p99_ms,
        healthz.per_s,
        status.per_s / healthz.per_s,
        search.per_s,
        search.p99_ms,
        healthz.p99_ms,
        status.p50_ms,
        search.per_s / healthz.per_s,
        a.connections,
        a.cards,
    );
    Ok(())
}

//! `plico-bench console`: the console's holder page and card page at a fixed offered load,
//! against `GET /healthz` driven by the same load generator in the same run.
//!
//! 1. Setup (not timed): a fresh sled store under a development HSM, `--cards` cards' codes
//!    and a registry of one holder per card (see [`super::population`]), an operator account
//!    with its own password; `plico::serve` on a loopback port (its own tokio runtime with 2
//!    worker threads, as the service on this 2-core machine).
//! 2. The operator logs in once, as a browser does: `GET /login` (the double-submit token),
//!    `POST /login`, then the session's CSRF token from the home page.
//! 3. Three runs, one after the other, each at `--rate` requests/s for `--seconds`: `GET
//!    /healthz` (the baseline), the holder page (`POST /search` by codice fiscale, with the
//!    session cookie and the CSRF token: the holder with their cards), and the card page
//!    (`GET /cards/{serial}`). The generator is open-loop: request k is sent at `k / rate`
//!    seconds whatever the answers before it, and its latency is measured from that moment
//!    (so a slow answer is not hidden by a request sent late). At most [`MAX_IN_FLIGHT`]
//!    requests are in flight (one client address, under the listener's per-address cap).
//!    Each answer must be `200`.
//!
//! The per-account quota of sensitive calls (searches) is raised for the bench: it limits a
//! person at the counter, not the page's cost.
//!
//! It ends with one line:
//! `console rate=… healthz_per_s=… holder_per_s=… holder_p50_ms=… holder_p99_ms=… card_per_s=… card_p50_ms=… card_p99_ms=… holder_ratio=… card_ratio=…`
//! where a ratio is the page's achieved requests/s over `/healthz`'s. Goal (issue 17): p99
//! under 10 ms at 500 requests/s on 2 cores, and a ratio of at least 0.5.

use super::population::{codice_fiscale, import, registry};
use super::server::{bench_actor, client_runtime, fresh_unsealed, Fresh, Server};
use super::{in_work_dir, serial};
use anyhow::{bail, Context};
use cards::Date;
use clap::Args;
use plico::{AppState, Settings};
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vault::{Actor, Role};

/// `plico-bench console` arguments.
#[derive(Debug, Args)]
pub struct ConsoleBench {
    /// Offered load: requests per second.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Cards (and holders) in the registry.
    #[arg(long, default_value_t = 1_000)]
    pub cards: u64,
    /// Work directory (a fresh one under the system temp dir by default; removed at the end
    /// unless given).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Requests in flight at once (so connections from the one client address): half the
/// listener's default cap per address ([`plico::edge::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS`]).
const MAX_IN_FLIGHT: usize = 128;

/// The operator's password (benchmark data).
const PASSWORD: &str = "una password per il banco";

/// Runs the benchmark.
///
/// # Errors
/// I/O and vault errors; a login that fails; an answer that is not `200`.
pub fn run(a: &ConsoleBench) -> anyhow::Result<()> {
    if a.rate == 0 || a.seconds == 0 {
        bail!("--rate and --seconds must be at least 1");
    }
    in_work_dir(a.dir.as_deref(), "plico-bench-console", |work| {
        bench(work, a)
    })
}

fn setup(work: &Path, cards: u64) -> anyhow::Result<(AppState, Vec<String>)> {
    let Fresh { hsm, store, state } = fresh_unsealed(work, Settings::default())?;
    let actor = bench_actor("cms");
    let base = 3_000_000_000u64;
    eprintln!("setup: {cards} cards' codes and holders, an operator");
    import(work, &state.codes, &*hsm, &state.audit, cards, base)?;
    let serials: Vec<String> = (0..cards).map(|i| serial(base, i)).collect();
    registry(
        &state.cms,
        &*store,
        &*hsm,
        &state.audit,
        &serials,
        0,
        Date::today_utc(),
        &actor,
        true,
    )?;
    let admin = bench_actor("admin");
    let (op, _token) = state
        .accounts
        .create("sportello-banco", Role::Operator, &admin)?;
    state.accounts.set_password(
        &op.id,
        &SecretString::from(PASSWORD),
        &Actor::account(&op, "bench"),
    )?;
    Ok((state, serials))
}

/// The value of `name=` in the `Set-Cookie` headers of `res`.
fn set_cookie(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The value of the first hidden field `name` of an HTML page.
fn hidden(html: &str, name: &str) -> Option<String> {
    let key = format!("name=\"{name}\" value=\"");
    let at = html.find(&key)? + key.len();
    html[at..].split('"').next().map(str::to_owned)
}

/// `application/x-www-form-urlencoded` of `fields` (unreserved characters as they are).
fn form(fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A logged-in session: the cookie header and the CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

async fn login(client: &reqwest::Client, base: &str) -> anyhow::Result<Session> {
    let page = client.get(format!("{base}/login")).send().await?;
    let login_cookie = set_cookie(&page, "plico_login").context("no login cookie")?;
    let token = hidden(&page.text().await?, "csrf").context("no login token")?;
    let res = client
        .post(format!("{base}/login"))
        .header(
            reqwest::header::COOKIE,
            format!("plico_login={login_cookie}"),
        )
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(form(&[
            ("login", "sportello-banco"),
            ("password", PASSWORD),
            ("csrf", &token),
        ]))
        .send()
        .await?;
    let sid = set_cookie(&res, "plico_session").context("the login gave no session")?;
    let cookie = format!("plico_session={sid}");
    let home = client
        .get(format!("{base}/"))
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await?;
    if home.status() != reqwest::StatusCode::OK {
        bail!("home page after login: {}", home.status());
    }
    let csrf = hidden(&home.text().await?, "csrf").context("no csrf token on the home page")?;
    Ok(Session { cookie, csrf })
}

/// What one run measured.
struct Run {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Sends `make()` requests at `rate` per second for `seconds`, open-loop; every answer must
/// be `200`.
async fn drive(
    what: &str,
    rate: u32,
    seconds: u64,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> anyhow::Result<Run> {
    let total = u64::from(rate) * seconds;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    // One client address: stay under the listener's per-address connection cap (a request
    // waiting for a permit is late, and its latency says so).
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    for k in 0..total {
        let due = start + interval.mul_f64(k as f64);
        tokio::time::sleep_until(due).await;
        let req = make();
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let res = req.send().await;
            let status = match res {
                Ok(r) => {
                    let status = r.status();
                    // The whole body, as a browser reads it.
                    let _ = r.bytes().await;
                    Ok(status)
                }
                Err(e) => Err(e),
            };
            (status, due.elapsed(), tokio::time::Instant::now())
        });
    }
    let mut latencies = Vec::with_capacity(total as usize);
    let mut last = start;
    let mut bad = 0u64;
    let mut first_bad = None;
    while let Some(done) = tasks.join_next().await {
        let (status, latency, at) = done?;
        match status {
            Ok(s) if s == reqwest::StatusCode::OK => {}
            other => {
                bad += 1;
                first_bad.get_or_insert_with(|| format!("{other:?}"));
            }
        }
        latencies.push(latency.as_secs_f64() * 1000.0);
        last = last.max(at);
    }
    if bad > 0 {
        bail!(
            "{what}: {bad} of {total} answers were not 200 (first: {})",
            first_bad.unwrap_or_default()
        );
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: usize| latencies[(latencies.len() * q / 100).min(latencies.len() - 1)];
    let elapsed = last.duration_since(start).as_secs_f64().max(1e-9);
    let run = Run {
        per_s: total as f64 / elapsed,
        p50_ms: at(50),
        p99_ms: at(99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
    };
    eprintln!(
        "{what:>8}: {total} requests at {rate}/s: {:.0} requests/s achieved, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        run.per_s, run.p50_ms, run.p99_ms, run.max_ms
    );
    Ok(run)
}

fn bench(work: &Path, a: &ConsoleBench) -> anyhow::Result<()> {
    let (state, serials) = setup(work, a.cards)?;
    let server = Server::start(state)?;
    let base = server.base.clone();
    // The load generator: one thread of its own.
    let client_rt = client_runtime()?;
    let result = client_rt.block_on(async {
        // No redirects: the login's answer (a 303) carries the session cookie.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()?;
        let session = login(&client, &base).await?;
        let cf = codice_fiscale(0)?;
        let card = format!("{base}/cards/{}", serials[serials.len() / 2]);
        let search = form(&[("csrf", &session.csrf), ("codice_fiscale", &cf)]);
        // A short warm-up of each path (connections, caches), not measured.
        for _ in 0..50 {
            client.get(format!("{base}/healthz")).send().await?;
        }
        let healthz = drive("healthz", a.rate, a.seconds, || {
            client.get(format!("{base}/healthz"))
        })
        .await?;
        let holder = drive("holder", a.rate, a.seconds, || {
            client
                .post(format!("{base}/search"))
                .header(reqwest::header::COOKIE, &session.cookie)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(search.clone())
        })
        .await?;
        let card_run = drive("card", a.rate, a.seconds, || {
            client
                .get(&card)
                .header(reqwest::header::COOKIE, &session.cookie)
        })
        .await?;
        anyhow::Ok((healthz, holder, card_run))
    });
    server.stop();
    let (healthz, holder, card) = result?;
    println!(
        "console rate={} healthz_per_s={:.0} healthz_p99_ms={:.2} holder_per_s={:.0} holder_p50_ms={:.2} holder_p99_ms={:.2} card_per_s={:.0} card_p50_ms={:.2} card_p99_ms={:.2} holder_ratio={:.2} card_ratio={:.2}",
        a.rate,
        healthz.per_s,
        healthz.p99_ms,
        holder.per_s,
        holder.p50_ms,
        holder.p99_ms,
        card.per_s,
        card.p50_ms,
        card.p99_ms,
        holder.per_s / healthz.per_s,
        card.per_s / healthz.per_s,
    );
    Ok(())
}

//! `plico-bench registry --holders N`: a holder registry imported over HTTP, as the CMS sends
//! it, against the bare work of the same import measured in the same run.
//!
//! 1. Setup (not timed): a fresh sled store under a development HSM, N cards' codes imported
//!    as a manufacturer upload (see [`super::population`]), a `cms` account and its token;
//!    `plico::serve` on a loopback port (2 worker threads, see [`super::server`]). The
//!    registry files are generated: CSV, one line per holder with one card each, every
//!    optional field filled (e-mail, mobile, postal address, serial, expiry), at most
//!    `--per-file` holders a file (a registry file holds at most 1 M lines).
//! 2. The measured path: each file `POST /v1/registry` with the token, one after the other,
//!    from one client thread; each answer must be `200 applied` with every holder created.
//!    Peak memory is the process's high-water mark right after it.
//! 3. The bare baseline, in the same run, over the same files: the files parsed and validated
//!    ([`cards::parse_registry`], no store); for every holder the unavoidable crypto — its
//!    personal data serialised and sealed with AES-256-GCM, and the two blind-index
//!    HMAC-SHA256 of its codice fiscale and of surname + birth date; and the very entries the
//!    import stored (holders, index, cards, expiry index entry by entry, or, for a file of
//!    `cards::BULK_MIN_HOLDERS` holders or more, the bulk file's segments and commit record)
//!    written raw into a second fresh store, one batch per file, flushed.
//!
//! It ends with one line:
//! `registry holders=… holders_per_s=… baseline_ratio=… peak_rss_mib=…`
//! where `baseline_ratio` is the bare pipeline's speed over the import's (parse + crypto + raw
//! write time over import time): 1.0 means the import costs no more than the bare work it
//! cannot avoid.

use super::population::{address, codice_fiscale, import, name};
use super::server::{bench_actor, client_runtime, fresh_unsealed, Fresh, Server};
use super::{in_work_dir, peak_rss_mib, per_s, serial};
use anyhow::bail;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use cards::{parse_registry, HolderEntry, PersonalData, RegistryRules};
use clap::Args;
use plico::Settings;
use secrecy::ExposeSecret;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vault::{Batch, Tree};
use vault::{Role, SledStore, Store};

/// `plico-bench registry` arguments.
#[derive(Debug, Args)]
pub struct RegistryBench {
    /// Holders imported (one card each).
    #[arg(long, default_value_t = 100_000)]
    pub holders: u64,
    /// Most holders in one registry file (one upload each).
    #[arg(long, default_value_t = 100_000)]
    pub per_file: u64,
    /// Work directory (a fresh one under the system temp dir by default; removed at the end
    /// unless given).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The first serial of the bench's cards.
const BASE: u64 = 4_000_000_000;

/// Runs the benchmark.
///
/// # Errors
/// I/O and vault errors; an upload that is not applied whole.
pub fn run(a: &RegistryBench) -> anyhow::Result<()> {
    if a.holders == 0 || a.per_file == 0 {
        bail!("--holders and --per-file must be at least 1");
    }
    if a.per_file >= 1_000_000 {
        bail!("--per-file must be under 1000000 (the most lines a registry file may have)");
    }
    in_work_dir(a.dir.as_deref(), "registry", |work| bench(work, a))
}

/// A registry file of holders `from..to`, one card each.
fn registry_file(from: u64, to: u64) -> anyhow::Result<Vec<u8>> {
    let mut out = String::with_capacity(((to - from) * 160) as usize);
    out.push_str(
        "codice_fiscale;given_names;surname;birth_date;email;mobile;address;serial;expiry\n",
    );
    for i in from..to {
        let (given, surname) = name(i);
        writeln!(
            out,
            "{};{given};{surname};1985-12-10;holder{i}@example.it;+39333{:07};{};{};2031-12-31",
            codice_fiscale(i)?,
            i % 10_000_000,
            address(i),
            serial(BASE, i),
        )?;
    }
    Ok(out.into_bytes())
}

fn bench(work: &Path, a: &RegistryBench) -> anyhow::Result<()> {
    let n = a.holders;
    let Fresh { hsm, store, state } = fresh_unsealed(
        work,
        Settings {
            registry_max_upload_bytes: u64::MAX,
            ..Settings::default()
        },
    )?;
    let admin = bench_actor("admin");
    eprintln!("setup: {n} cards' codes, a cms account, the registry files");
    import(work, &state.codes, &*hsm, &state.audit, n, BASE)?;
    let (_cms, token) = state.accounts.create("cms-banco", Role::Cms, &admin)?;
    let bearer = format!("Bearer {}", token.expose_secret());
    let mut files = Vec::new();
    let mut from = 0;
    while from < n {
        let to = (from + a.per_file).min(n);
        files.push((to - from, registry_file(from, to)?));
        from = to;
    }
    let file_bytes: usize = files.iter().map(|(_, f)| f.len()).sum();

    // The measured path.
    let server = Server::start(state)?;
    let url = format!("{}/v1/registry", server.base);
    let client_rt = client_runtime()?;
    let result = client_rt.block_on(async {
        let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
        eprintln!("importing {n} holders in {} file(s) over HTTP", files.len());
        let started = Instant::now();
        for (holders, body) in &files {
            let res = client
                .post(&url)
                .header(reqwest::header::AUTHORIZATION, &bearer)
                .header(reqwest::header::CONTENT_TYPE, "text/csv")
                .body(body.clone())
                .send()
                .await?;
            let status = res.status();
            let answer: serde_json::Value = res.json().await?;
            if status != reqwest::StatusCode::OK || answer["outcome"] != "applied" {
                bail!("the registry upload was not applied: {status} {answer}");
            }
            if answer["holders_created"] != *holders {
                bail!(
                    "the upload created {} holders, not {holders}",
                    answer["holders_created"]
                );
            }
        }
        anyhow::Ok(started.elapsed())
    });
    server.stop();
    let t_import = result?;
    let rss = peak_rss_mib();

    // Baseline 1: the files parsed and validated.
    let rules = RegistryRules {
        serial: vault::SerialRule::CNS,
        today: cards::Date::today_utc(),
    };
    let started = Instant::now();
    let mut parsed: Vec<Vec<HolderEntry>> = Vec::with_capacity(files.len());
    for (_, body) in &files {
        parsed.push(
            parse_registry(std::io::BufReader::new(&body[..]), &rules)
                .map_err(|e| anyhow::anyhow!("the registry file does not parse: {e:?}"))?,
        );
    }
    let t_parse = started.elapsed();

    // Baseline 2: per holder, its personal data sealed and its two blind-index HMACs.
    let t_crypto = bare_crypto(parsed.iter().flatten())?;

    // Baseline 3: the entries the import stored, raw, into a fresh store, flushed.
    let mut entries = Vec::new();
    for tree in [
        Tree::Holders,
        Tree::HolderIndex,
        Tree::Cards,
        Tree::CardExpiry,
        Tree::RegistryFiles,
        Tree::RegistrySegments,
    ] {
        let mut from = Vec::new();
        loop {
            let page = store.range(tree, &from, None, 4096)?;
            let Some((last, _)) = page.last() else { break };
            from = last.clone();
            from.push(0);
            let more = page.len() == 4096;
            entries.extend(page.into_iter().map(|(k, v)| (tree, k, v)));
            if !more {
                break;
            }
        }
    }
    let raw = SledStore::open(&work.join("raw"))?;
    let per_batch = entries.len().div_ceil(files.len()).max(1);
    let started = Instant::now();
    for chunk in entries.chunks(per_batch) {
        let mut b = Batch::new();
        for (tree, k, v) in chunk {
            b.put(*tree, k.clone(), v.clone());
        }
        raw.write(&b)?;
        raw.flush()?;
    }
    let t_raw = started.elapsed();

    let bare = t_parse + t_crypto + t_raw;
    let ratio = bare.as_secs_f64() / t_import.as_secs_f64().max(1e-9);
    let holders_per_s = per_s(n, t_import);
    println!(
        "holders             {n} in {} file(s), {file_bytes} bytes",
        files.len()
    );
    println!(
        "import over HTTP    {:.2} s  {:.0} holders/s  ({:.1} µs/holder)",
        t_import.as_secs_f64(),
        holders_per_s,
        us_each(t_import, n)
    );
    println!(
        "baseline parse      {:.2} s  {:.0} holders/s  ({:.1} µs/holder)",
        t_parse.as_secs_f64(),
        per_s(n, t_parse),
        us_each(t_parse, n)
    );
    println!(
        "baseline seal+hmac  {:.2} s  {:.0} holders/s  ({:.1} µs/holder)",
        t_crypto.as_secs_f64(),
        per_s(n, t_crypto),
        us_each(t_crypto, n)
    );
    println!(
        "baseline raw writes {:.2} s  {:.0} holders/s  ({:.1} µs/holder, {} entries)",
        t_raw.as_secs_f64(),
        per_s(n, t_raw),
        us_each(t_raw, n),
        entries.len()
    );
    println!(
        "bare pipeline       {:.2} s  {:.0} holders/s",
        bare.as_secs_f64(),
        per_s(n, bare)
    );
    println!(
        "registry holders={n} holders_per_s={holders_per_s:.0} baseline_ratio={ratio:.2} peak_rss_mib={rss:.0}"
    );
    Ok(())
}

fn us_each(d: Duration, n: u64) -> f64 {
    d.as_secs_f64() * 1e6 / n.max(1) as f64
}

/// The crypto a holder cannot go without: its personal data serialised and sealed
/// (AES-256-GCM, counter nonces, the holder id as AAD) and the two blind-index HMACs.
fn bare_crypto<'a>(entries: impl Iterator<Item = &'a HolderEntry>) -> anyhow::Result<Duration> {
    let rng = SystemRandom::new();
    let mut key = [0u8; 32];
    rng.fill(&mut key)
        .map_err(|_| anyhow::anyhow!("random generator"))?;
    let aead = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &key).map_err(|_| anyhow::anyhow!("aes key"))?,
    );
    let mac = hmac::Key::new(hmac::HMAC_SHA256, &key);
    let mut sink = 0u8;
    let started = Instant::now();
    for (i, e) in entries.enumerate() {
        let personal = PersonalData {
            codice_fiscale: e.codice_fiscale.clone(),
            given_names: e.given_names.clone(),
            surname: e.surname.clone(),
            birth_date: e.birth_date,
            email: e.email.clone(),
            mobile: e.mobile.clone(),
            address: e.address.clone(),
        };
        let mut clear = serde_json::to_vec(&personal)?;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&(i as u64).to_be_bytes());
        let id = format!("h{:06}", i + 1);
        let tag = aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(id.as_bytes()),
                &mut clear,
            )
            .map_err(|_| anyhow::anyhow!("seal"))?;
        let cf = hmac::sign(&mac, e.codice_fiscale.as_bytes());
        let sb = hmac::sign(
            &mac,
            format!("{}|{}", e.surname.to_uppercase(), e.birth_date).as_bytes(),
        );
        sink ^= clear[0] ^ tag.as_ref()[0] ^ cf.as_ref()[0] ^ sb.as_ref()[0];
    }
    let t = started.elapsed();
    std::hint::black_box(sink);
    Ok(t)
}

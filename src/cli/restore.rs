//! `plico restore FILE --data DIR --identity ID`: a backup (`plico backup`) put back into an
//! empty data directory, offline; and `plico restore --accept-rollback`, the custodians'
//! decision to serve it.
//!
//! The archive is opened with the backup identity, read item by item and written straight
//! into a new store (`DIR/store`) and HSM state file (`DIR/hsm-state.json`, simulated HSM);
//! the counts are checked against the manifest. Anything wrong (wrong identity, truncated or
//! altered archive, counts that disagree) removes what was written and fails. A directory
//! that is not empty is refused before anything is read.
//!
//! A restored store is an older copy of the service: its audit chain ends at the backup's head,
//! behind the anchor the live HSM held when the backup was put back. So a restore is not
//! served until the custodians accept it: `restore` leaves `DIR/restore-pending.json` (the
//! manifest), `plico serve` refuses a directory holding it, and
//! `plico restore --accept-rollback --data DIR --share F… --replaced-anchor SEQ:HASH|unknown`
//! unseals the restored HSM with a quorum of shares, verifies the chain, appends a
//! `backup.restore_accepted` event naming the backup's head and the anchor it replaces (the
//! gap: the events after the backup that are gone), checkpoints it (which moves the HSM's
//! anchor to it), seals and removes the marker. See docs/backup.md.
//!
//! A vault on a PKCS#11 token has no state file to put back: its keys, and the anchor, stay on
//! the token, which has moved on since the backup. `--accept-rollback --config FILE` (the
//! `[hsm]` section names the token) checks with the key check values that the token is the
//! backup's and still holds every term the restored keys use, and has the token's *current*
//! quorum rewrite its anchor back to the one it held at the backup
//! ([`hsm_pkcs11::Pkcs11Hsm::accept_rollback`]); the anchor it replaces is the token's own,
//! exact (kept in `DIR/restore-token-anchor.json` before the token changes, so a second run
//! after a crash records the same gap). Then the same event and checkpoint as above.

use super::bootstrap;
use super::files;
use anyhow::{bail, Context, Result};
use clap::Args;
use hsm_pkcs11::Pkcs11Hsm;
use hsm_sim::SimulatedHsm;
use plico::backup::{ArchiveReader, Item, Manifest};
use plico::AppState;
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vault::{Actor, AuditAnchor, Batch, Hsm, Store};

/// The marker of a restore not yet accepted, in the data directory.
pub const PENDING_FILE: &str = "restore-pending.json";
/// The anchor a PKCS#11 token held before the custodians moved it back (a restore of a
/// token-backed vault), kept until the acceptance is complete.
pub const TOKEN_ANCHOR_FILE: &str = "restore-token-anchor.json";
/// Store entries written per batch while restoring.
const RESTORE_BATCH: usize = 8192;

/// Arguments of `plico restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The sealed archive made by `plico backup` (not with --accept-rollback).
    #[arg(value_name = "FILE", required_unless_present = "accept_rollback")]
    file: Option<PathBuf>,
    /// The data directory to restore into: absent or empty (with --accept-rollback: the
    /// restored directory).
    #[arg(long = "data", value_name = "DIR", required_unless_present = "check")]
    data: Option<PathBuf>,
    /// The age identity file of the backup recipient.
    #[arg(long, value_name = "FILE", required_unless_present = "accept_rollback")]
    identity: Option<PathBuf>,
    /// Only decrypt and check the archive, print its manifest, write nothing.
    #[arg(long, conflicts_with_all = ["data", "accept_rollback"])]
    check: bool,
    /// The custodians accept serving the restored store: unseal with --share files, verify,
    /// record the rollback in the audit chain, re-anchor.
    #[arg(long, conflicts_with_all = ["file", "identity"])]
    accept_rollback: bool,
    /// Custodian share files (repeat up to the threshold), with --accept-rollback.
    #[arg(long = "share", value_name = "FILE", requires = "accept_rollback")]
    shares: Vec<PathBuf>,
    /// The audit anchor the restore replaces, `SEQ:HASH` (the last head the live service
    /// reached: its HSM state's `audit_anchor`, or the last line of the audit stream), or
    /// `unknown`; with --accept-rollback.
    #[arg(long, value_name = "SEQ:HASH|unknown", requires = "accept_rollback")]
    replaced_anchor: Option<String>,
    /// With --accept-rollback of a vault on a PKCS#11 token: the configuration whose `[hsm]`
    /// section names the token.
    #[arg(long, value_name = "FILE", requires = "accept_rollback")]
    config: Option<PathBuf>,
}

/// Runs `plico restore`.
pub fn run(args: RestoreArgs) -> Result<()> {
    if args.accept_rollback {
        let Some(data) = args.data.as_deref() else {
            bail!("--accept-rollback needs --data DIR");
        };
        return accept(
            data,
            &args.shares,
            args.replaced_anchor.as_deref(),
            args.config.as_deref(),
        );
    }
    let (Some(file), Some(identity)) = (args.file.as_deref(), args.identity.as_deref()) else {
        bail!("restore needs FILE and --identity");
    };
    let identities = read_identities(identity)?;
    let mut reader = open(file, &identities)?;
    match args.data.as_deref() {
        None => {
            let mut sink = Sink::Check;
            let m = read_all(&mut reader, &mut sink)?;
            print_manifest(file, &m);
            Ok(())
        }
        Some(data) => restore(file, &mut reader, data),
    }
}

/// True when `data` holds a restore the custodians have not accepted yet.
pub fn pending(data: &Path) -> bool {
    data.join(PENDING_FILE).exists()
}

fn read_identities(path: &Path) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("--identity {}: cannot open", path.display()))?;
    age::IdentityFile::from_buffer(std::io::BufReader::new(f))
        .ok()
        .and_then(|f| f.into_identities().ok())
        .filter(|ids| !ids.is_empty())
        .with_context(|| format!("--identity {}: not an age identity file", path.display()))
}

fn open(file: &Path, identities: &[Box<dyn age::Identity + Send + Sync>]) -> Result<ArchiveReader> {
    let f = std::fs::File::open(file)
        .with_context(|| format!("backup {}: cannot open", file.display()))?;
    ArchiveReader::open(std::io::BufReader::new(f), identities)
        .with_context(|| format!("backup {}", file.display()))
}

/// Where the archive's items go.
enum Sink {
    /// Nowhere: only checked.
    Check,
    /// Into a new data directory.
    Dir {
        data: PathBuf,
        store: Arc<dyn Store>,
        batch: Batch,
        in_batch: usize,
    },
}

impl Sink {
    fn hsm_state(&mut self, bytes: &[u8]) -> Result<()> {
        if let Sink::Dir { data, .. } = self {
            let path = data.join(SimulatedHsm::STATE_FILE);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        Ok(())
    }

    fn entry(&mut self, tree: vault::Tree, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        if let Sink::Dir {
            store,
            batch,
            in_batch,
            ..
        } = self
        {
            batch.put(tree, key, value);
            *in_batch += 1;
            if *in_batch >= RESTORE_BATCH {
                store.write(batch)?;
                *batch = Batch::new();
                *in_batch = 0;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if let Sink::Dir {
            store, batch, data, ..
        } = self
        {
            store.write(batch)?;
            store.flush()?;
            files::sync_dir(data)?;
        }
        Ok(())
    }
}

/// Reads every item into `sink` and checks the counts against the manifest.
fn read_all(reader: &mut ArchiveReader, sink: &mut Sink) -> Result<Manifest> {
    let mut trees: BTreeMap<String, u64> = BTreeMap::new();
    let mut entries = 0u64;
    let mut manifest = None;
    let mut hsm = false;
    while let Some(item) = reader.next_item()? {
        match item {
            Item::HsmState(bytes) => {
                if hsm || entries > 0 {
                    bail!("backup archive: the hsm state is not where it belongs");
                }
                hsm = true;
                sink.hsm_state(&bytes)?;
            }
            Item::Entry(tree, key, value) => {
                entries += 1;
                *trees.entry(tree.name().to_owned()).or_default() += 1;
                sink.entry(tree, key, value)?;
            }
            Item::Manifest(m) => manifest = Some(*m),
        }
    }
    let Some(m) = manifest else {
        bail!("backup archive: no manifest");
    };
    if m.entries != entries || m.trees != trees {
        bail!(
            "backup archive: the manifest counts {} entries, the archive holds {entries}",
            m.entries
        );
    }
    // A simulated HSM's archive holds its state file; a token's holds its facts instead.
    if (m.token.is_none() && m.hsm_generation.is_some()) != hsm {
        bail!("backup archive: the manifest and the hsm state disagree");
    }
    sink.finish()?;
    Ok(m)
}

fn restore(file: &Path, reader: &mut ArchiveReader, data: &Path) -> Result<()> {
    if data.exists() {
        let mut listing = std::fs::read_dir(data)
            .with_context(|| format!("--data {}: cannot read", data.display()))?;
        if listing.next().is_some() {
            bail!(
                "--data {} is not empty: a restore goes into a new or empty directory",
                data.display()
            );
        }
    }
    files::private_dir(data)?;
    let store = bootstrap::open_store(data, None)?;
    let mut sink = Sink::Dir {
        data: data.to_owned(),
        store,
        batch: Batch::new(),
        in_batch: 0,
    };
    let outcome = read_all(reader, &mut sink).and_then(|m| {
        drop(sink);
        write_pending(data, &m)?;
        Ok(m)
    });
    match outcome {
        Ok(m) => {
            print_manifest(file, &m);
            println!(
                "restored into {}; it is not served until the custodians accept the rollback:\n  \
                 plico restore --accept-rollback --data {} --share FILE... --replaced-anchor \
                 SEQ:HASH|unknown",
                data.display(),
                data.display()
            );
            Ok(())
        }
        Err(e) => {
            // Only what this command wrote: the directory was empty.
            let _ = std::fs::remove_dir_all(bootstrap::store_dir(data));
            let _ = std::fs::remove_file(data.join(SimulatedHsm::STATE_FILE));
            let _ = std::fs::remove_file(data.join(PENDING_FILE));
            Err(e.context(format!(
                "restore of {} failed; {} was emptied again",
                file.display(),
                data.display()
            )))
        }
    }
}

fn write_pending(data: &Path, m: &Manifest) -> Result<()> {
    let path = data.join(PENDING_FILE);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(&serde_json::to_vec_pretty(m)?)?;
    f.sync_all()?;
    files::sync_dir(data)?;
    Ok(())
}

fn print_manifest(file: &Path, m: &Manifest) {
    let head = m
        .audit_head
        .as_ref()
        .map_or_else(|| "none".to_owned(), |h| format!("{}:{}", h.seq, h.hash));
    println!(
        "backup {}: {} (plico {}), taken at {} ms, hsm generation {}, audit head {head}, {} \
         cards, {} batches, {} jobs, {} store entries ({} bytes)",
        file.display(),
        m.format,
        m.plico_version,
        m.created_ms,
        match (&m.token, m.hsm_generation) {
            (Some(t), Some(g)) => format!("{g} (pkcs#11 token {:?})", t.token_label),
            (_, Some(g)) => g.to_string(),
            (_, None) => "none (pkcs#11)".to_owned(),
        },
        m.cards,
        m.batches,
        m.jobs,
        m.entries,
        m.bytes
    );
}

/// `SEQ:HASH` or `unknown`.
fn parse_anchor(text: &str) -> Result<Option<(u64, String)>> {
    if text == "unknown" {
        return Ok(None);
    }
    let parsed = text.split_once(':').and_then(|(seq, hash)| {
        let ok = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        seq.parse::<u64>()
            .ok()
            .filter(|_| ok)
            .map(|s| (s, hash.to_ascii_lowercase()))
    });
    parsed.map(Some).with_context(|| {
        "--replaced-anchor: expected SEQ:HASH (a sequence number and 64 hex digits) or unknown"
            .to_owned()
    })
}

fn accept(
    data: &Path,
    shares: &[PathBuf],
    replaced: Option<&str>,
    config: Option<&Path>,
) -> Result<()> {
    let marker = data.join(PENDING_FILE);
    let text = std::fs::read(&marker).with_context(|| {
        format!(
            "{}: no restore waiting for acceptance in {}",
            marker.display(),
            data.display()
        )
    })?;
    let m: Manifest = serde_json::from_slice(&text)
        .with_context(|| format!("{}: unreadable", marker.display()))?;
    if shares.is_empty() {
        bail!("--accept-rollback needs the custodians' quorum: --share FILE, once per share");
    }
    if m.token.is_some() || !SimulatedHsm::exists(data) {
        let replaced = replaced.map(parse_anchor).transpose()?;
        return accept_on_token(data, &m, shares, replaced.flatten(), config);
    }
    let Some(replaced) = replaced else {
        bail!(
            "--replaced-anchor is required: the live service's last audit anchor (SEQ:HASH), or \
             `unknown` if it is lost"
        );
    };
    let replaced = parse_anchor(replaced)?;
    let hsm = Arc::new(
        SimulatedHsm::open(data)
            .with_context(|| format!("cannot open the restored HSM in {}", data.display()))?,
    );
    for (i, path) in shares.iter().enumerate() {
        let share = files::read_share(path)?;
        let progress = hsm
            .unseal(&share)
            .with_context(|| format!("--share {} (item {}) refused", path.display(), i + 1))?;
        if !progress.sealed {
            break;
        }
    }
    let status = hsm.status();
    if status.sealed {
        bail!(
            "{} share(s) given, {} needed: the rollback needs the custodians' quorum",
            shares.len(),
            status.threshold
        );
    }
    let store = bootstrap::open_store(data, None)?;
    let state = AppState::new(hsm.clone(), store).context("cannot open the restored store")?;
    let actor = Actor::system("restore");
    let outcome = (|| -> Result<u64> {
        state
            .unsealed(&actor, "restore --accept-rollback")
            .context("the restored store and hsm state do not agree")?;
        let report = state.audit.verify()?;
        if let Some(p) = &report.problem {
            bail!("the restored audit chain does not verify: {p:?}");
        }
        let head = m.audit_head.as_ref();
        let mut event = actor
            .event("backup.restore_accepted", "store")
            .detail("backup_head_seq", head.map_or(0, |h| h.seq).to_string())
            .detail(
                "backup_head_hash",
                head.map_or_else(String::new, |h| h.hash.clone()),
            )
            .detail("backup_created_ms", m.created_ms.to_string())
            .detail(
                "backup_hsm_generation",
                m.hsm_generation.unwrap_or_default().to_string(),
            )
            .detail("shares", shares.len().to_string());
        event = match &replaced {
            Some((seq, hash)) => event
                .detail("replaced_anchor_seq", seq.to_string())
                .detail("replaced_anchor_hash", hash.clone())
                .detail(
                    "events_lost",
                    seq.saturating_sub(head.map_or(0, |h| h.seq)).to_string(),
                ),
            None => event.detail("replaced_anchor", "unknown"),
        };
        let seq = state.audit.append(event)?;
        state.audit.checkpoint()?;
        Ok(seq)
    })();
    let closed = state.shut_down();
    state.seal();
    let seq = outcome?;
    closed.context("cannot checkpoint the audit chain")?;
    std::fs::remove_file(&marker)
        .and_then(|()| files::sync_dir(data))
        .with_context(|| format!("cannot remove {}", marker.display()))?;
    println!(
        "rollback accepted: audit event {seq} records the backup's head and the anchor it \
         replaces; {} can be served (`plico serve --data {}`)",
        data.display(),
        data.display()
    );
    Ok(())
}

/// `--accept-rollback` for a vault on a PKCS#11 token (see the module docs). `reported` is an
/// operator's `--replaced-anchor` (the audit stream's last line, which may be past the token's
/// last anchor); it may not be behind the anchor the token held.
fn accept_on_token(
    data: &Path,
    m: &Manifest,
    shares: &[PathBuf],
    reported: Option<(u64, String)>,
    config: Option<&Path>,
) -> Result<()> {
    let label = m
        .token
        .as_ref()
        .map_or_else(|| "?".to_owned(), |t| t.token_label.clone());
    let Some(config) = config else {
        bail!(
            "the backup is of a vault on pkcs#11 token {label:?}: give --config FILE, whose [hsm] \
             section names the token"
        );
    };
    let config = plico::config::Config::load(Some(config))?;
    if config.hsm.kind != plico::config::HsmKind::Pkcs11 {
        bail!("--config: [hsm] kind is not \"pkcs11\", but the backup is of a vault on a token");
    }
    let cfg = config.hsm.pkcs11()?;
    let hsm = Arc::new(Pkcs11Hsm::open(&cfg).with_context(|| {
        format!(
            "cannot open the plico HSM on pkcs#11 token {:?} ({})",
            cfg.token_label,
            cfg.module.display()
        )
    })?);
    let threshold = hsm.status().threshold;
    if shares.len() < usize::from(threshold) {
        bail!(
            "{} share(s) given, {threshold} needed: the rollback needs the custodians' quorum",
            shares.len()
        );
    }
    let quorum: Vec<SecretString> = shares
        .iter()
        .map(|p| files::read_share(p))
        .collect::<Result<_>>()?;
    let store = bootstrap::open_store(data, None)?;
    let used = vault::Keyring::load(&*store)
        .context("cannot read the restored keyring")?
        .count_by_term();
    let kept = data.join(TOKEN_ANCHOR_FILE);
    let to = m.token.as_ref().and_then(|t| t.audit_anchor.clone());
    let mut rekeyed = false;
    let mut check = |facts: &hsm_pkcs11::TokenFacts| -> vault::Result<()> {
        rekeyed = plico::backup::check_token(m.token.as_ref(), facts, &used)
            .map_err(|e| vault::Error::Refused(e.to_string()))?;
        if let (Some((seq, hash)), Some(held)) = (&reported, &facts.audit_anchor) {
            if *seq < held.seq || (*seq == held.seq && *hash != held.hash) {
                return Err(vault::Error::Refused(format!(
                    "--replaced-anchor {seq} is behind the anchor the token holds ({}:{})",
                    held.seq, held.hash
                )));
            }
        }
        // Kept before the token changes: a second run after a crash finds the anchor moved
        // back already, and must still record the one it replaced.
        if !kept.exists() {
            write_new(
                &kept,
                &serde_json::to_vec(&facts.audit_anchor).map_err(|e| {
                    vault::Error::Storage(format!("cannot encode the token's anchor: {e}"))
                })?,
            )
            .map_err(|e| vault::Error::Storage(format!("{e:#}")))?;
        }
        Ok(())
    };
    hsm.accept_rollback(&quorum, to.as_ref(), &mut check)
        .with_context(|| format!("pkcs#11 token {:?} refused the rollback", cfg.token_label))?;
    let token_held: Option<AuditAnchor> = serde_json::from_slice(
        &std::fs::read(&kept).with_context(|| format!("cannot read {}", kept.display()))?,
    )
    .with_context(|| format!("{}: unreadable", kept.display()))?;
    let state = AppState::new(hsm.clone(), store).context("cannot open the restored store")?;
    let actor = Actor::system("restore");
    let outcome = (|| -> Result<u64> {
        state
            .unsealed(&actor, "restore --accept-rollback")
            .context("the restored store does not open on the token")?;
        let report = state.audit.verify()?;
        if let Some(p) = &report.problem {
            bail!("the restored audit chain does not verify: {p:?}");
        }
        let head = m.audit_head.as_ref();
        let head_seq = head.map_or(0, |h| h.seq);
        let mut event = actor
            .event("backup.restore_accepted", "store")
            .detail("hsm", "pkcs11")
            .detail("token_label", cfg.token_label.clone())
            .detail("backup_head_seq", head_seq.to_string())
            .detail(
                "backup_head_hash",
                head.map_or_else(String::new, |h| h.hash.clone()),
            )
            .detail("backup_created_ms", m.created_ms.to_string())
            .detail(
                "backup_hsm_generation",
                m.hsm_generation.unwrap_or_default().to_string(),
            )
            .detail("token_rekeyed_since", rekeyed.to_string())
            .detail("shares", shares.len().to_string());
        if let Some(a) = &token_held {
            event = event
                .detail("token_anchor_seq", a.seq.to_string())
                .detail("token_anchor_hash", a.hash.clone());
        }
        let replaced = reported
            .clone()
            .map(|r| (r, "operator"))
            .or_else(|| token_held.clone().map(|a| ((a.seq, a.hash), "token")));
        event = match replaced {
            Some(((seq, hash), source)) => event
                .detail("replaced_anchor_seq", seq.to_string())
                .detail("replaced_anchor_hash", hash)
                .detail("replaced_anchor_source", source)
                .detail("events_lost", seq.saturating_sub(head_seq).to_string()),
            None => event.detail("replaced_anchor", "unknown"),
        };
        let seq = state.audit.append(event)?;
        state.audit.checkpoint()?;
        Ok(seq)
    })();
    let closed = state.shut_down();
    state.seal();
    let seq = outcome?;
    closed.context("cannot checkpoint the audit chain")?;
    for f in [data.join(PENDING_FILE), kept] {
        std::fs::remove_file(&f).with_context(|| format!("cannot remove {}", f.display()))?;
    }
    files::sync_dir(data)?;
    println!(
        "rollback accepted on pkcs#11 token {:?}: audit event {seq} records the backup's head and \
         the anchor the token held ({}); {} can be served with the same configuration",
        cfg.token_label,
        token_held
            .as_ref()
            .map_or_else(|| "none".to_owned(), |a| format!("{}:{}", a.seq, a.hash)),
        data.display()
    );
    if rekeyed {
        println!(
            "the token was rekeyed since the backup: its current shares unseal it, not the \
             backup's"
        );
    }
    Ok(())
}

/// Writes a new file (0600) durably.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        files::sync_dir(dir)?;
    }
    Ok(())
}

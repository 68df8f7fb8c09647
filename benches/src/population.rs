//! The population the benchmarks work on: code batches imported as a manufacturer would
//! upload them, and a registry of one holder per card (accented names, postal addresses, and
//! contacts when asked), every card made `active` by writing its lifecycle record directly
//! (a benchmark shortcut: the counter's activation, one audited change per card, is not what
//! the benchmarks measure).

use super::{import_codes, write_file};
use anyhow::{bail, Context};
use cards::check_character;
use cards::CardRecord;
use cards::Date;
use cards::{CardEntry, HolderEntry};
use cards::{CardState, Cards};
use std::path::Path;
use vault::Actor;
use vault::AuditLog;
use vault::ImportOutcome;
use vault::{Batch, Store, Tree};
use vault::{BatchId, CodeVault};

const NAMES: [&str; 6] = [
    "Niccolò",
    "Maria Lucia",
    "Àlvaro",
    "Annunziata",
    "Pierluigi",
    "Zoë",
];
const SURNAMES: [&str; 5] = [
    "D'Aragona",
    "Rossi",
    "Bianchi della Gherardesca",
    "Esposito",
    "Müller",
];

pub(super) fn name(i: u64) -> (&'static str, &'static str) {
    (
        NAMES[(i % NAMES.len() as u64) as usize],
        SURNAMES[((i / 7) % SURNAMES.len() as u64) as usize],
    )
}

pub(super) fn address(i: u64) -> String {
    format!(
        "Via Giuseppe Verdi {}, {:05} Roma RM",
        i % 300 + 1,
        100 + i % 99
    )
}

/// A valid codice fiscale for holder `i` (surname and name letters from `i`).
pub(super) fn codice_fiscale(i: u64) -> anyhow::Result<String> {
    let mut letters = [b'A'; 6];
    let mut v = i;
    for l in letters.iter_mut().rev() {
        *l = b'A' + (v % 26) as u8;
        v /= 26;
    }
    let base = format!("{}85T10A562", String::from_utf8_lossy(&letters));
    let check = check_character(&base).context("codice fiscale check character")?;
    Ok(format!("{base}{check}"))
}

/// Imports `n` generated codes for the serials from `base` as one committed batch.
pub(super) fn import(
    work: &Path,
    codes: &CodeVault,
    hsm: &dyn vault::Hsm,
    audit: &AuditLog,
    n: u64,
    base: u64,
) -> anyhow::Result<BatchId> {
    let file = work.join(format!("codes-{base}.txt"));
    write_file(&file, n, base)?;
    let outcome = import_codes(codes, hsm, audit, &file, n)?;
    std::fs::remove_file(&file)?;
    match outcome {
        ImportOutcome::Committed(r) => Ok(r.id),
        other => bail!("the import did not commit: {:?}", other.record().problems),
    }
}

/// One holder per card, applied in chunks, then every card made active. With `contacts`,
/// holder `i` has the e-mail address `holder{i}@example.it` and a mobile number.
#[allow(clippy::too_many_arguments)]
pub(super) fn registry(
    cms: &Cards,
    store: &dyn Store,
    hsm: &dyn vault::Hsm,
    audit: &AuditLog,
    serials: &[String],
    first_holder: u64,
    today: Date,
    actor: &Actor,
    contacts: bool,
) -> anyhow::Result<()> {
    let expiry = Date::parse("2031-12-31")?;
    let birth = Date::parse("1985-12-10")?;
    for (c, chunk) in serials.chunks(5_000).enumerate() {
        let mut entries = Vec::with_capacity(chunk.len());
        for (j, s) in chunk.iter().enumerate() {
            let i = first_holder + (c * 5_000 + j) as u64;
            let (given, surname) = name(i);
            entries.push(HolderEntry {
                first_line: i + 2,
                codice_fiscale: codice_fiscale(i)?,
                given_names: given.into(),
                surname: surname.into(),
                birth_date: birth,
                email: contacts.then(|| format!("holder{i}@example.it")),
                mobile: contacts.then(|| format!("+39333{:07}", i % 10_000_000)),
                address: Some(address(i)),
                deceased: false,
                cards: vec![CardEntry {
                    line: i + 2,
                    serial: s.clone(),
                    expiry,
                    replaced_by: None,
                }],
            });
        }
        cms.import_registry(hsm, audit, &entries, today, actor)?;
        let mut b = Batch::new();
        for s in chunk {
            // Read through the registry: a large file lives in bulk segments, and the active
            // record written below into the per-entry tree wins over it.
            let mut card: CardRecord = cms
                .card(s)?
                .context("card record missing after the registry import")?;
            card.state = CardState::Active;
            b.put(
                Tree::Cards,
                s.as_bytes().to_vec(),
                serde_json::to_vec(&card)?,
            );
        }
        store.write(&b)?;
    }
    store.flush()?;
    Ok(())
}

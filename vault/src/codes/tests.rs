//! The code vault end to end over real stores: import, lookup, reopen, duplicates,
//! quarantine, rejection, crash leftovers, generation.

use super::*;
use crate::audit::AuditLog;
use crate::generate::WeakFilter;
use crate::hsm_double::DoubleHsm;
use crate::import::generation::{generate_batch, GenerateRequest, SerialSet};
use crate::import::parse::ParseRules;
use crate::import::{import_file, ImportContext, ImportOutcome, ImportRequest};
use crate::store::memory::{FailingStore, MemoryStore};
use crate::store::sled::SledStore;

struct Fixture {
    store: Arc<dyn Store>,
    hsm: Arc<dyn Hsm>,
    audit: AuditLog,
    vault: CodeVault,
    rules: ParseRules,
}

impl Fixture {
    fn over(store: Arc<dyn Store>, hsm: Arc<dyn Hsm>) -> Fixture {
        let audit = AuditLog::open(store.clone(), 50).unwrap();
        audit.unlock(hsm.clone()).unwrap();
        let (vault, _) = CodeVault::open(store.clone()).unwrap();
        Fixture {
            store,
            hsm,
            audit,
            vault,
            rules: ParseRules::default(),
        }
    }

    fn memory() -> Fixture {
        Fixture::over(Arc::new(MemoryStore::new()), Arc::new(DoubleHsm::new()))
    }

    fn ctx(&self) -> ImportContext<'_> {
        ImportContext {
            vault: &self.vault,
            hsm: &*self.hsm,
            audit: &self.audit,
            rules: &self.rules,
        }
    }

    fn import(&self, file: &str) -> ImportOutcome {
        import_file(self.ctx(), file.as_bytes(), &request(), &|_| {}).unwrap()
    }

    fn segments(&self) -> usize {
        self.store
            .keys(Tree::Segments, &[], None, usize::MAX)
            .unwrap()
            .len()
    }
}

fn request() -> ImportRequest {
    ImportRequest {
        manufacturer: "Acme Cards".into(),
        expected_cards: None,
        expected_sha256: None,
        actor: "a1".into(),
        role: "manufacturer".into(),
        request_id: "r1".into(),
    }
}

pub(crate) fn serial(i: u64) -> String {
    format!("8039{:015}", i)
}

/// Codes derived from the index, so every card's codes are known and distinct.
pub(crate) fn codes_of(i: u64) -> (String, String) {
    (
        format!("{:05}", (i * 7919) % 100_000),
        format!("{:08}", (i * 104_729) % 100_000_000),
    )
}

fn card_codes(i: u64) -> CardCodes {
    let (pin, puk) = codes_of(i);
    CardCodes {
        pin: crate::Pin::parse(&pin, &crate::CodePolicy::CNS).unwrap(),
        puk: crate::Puk::parse(&puk, &crate::CodePolicy::CNS).unwrap(),
        signature: None,
    }
}

/// A manufacturer file of cards `ids` with their [`codes_of`].
pub(crate) fn file(ids: impl IntoIterator<Item = u64>) -> String {
    let mut s = String::from("serial;pin;puk\n");
    for i in ids {
        let (pin, puk) = codes_of(i);
        s.push_str(&format!("{};{pin};{puk}\n", serial(i)));
    }
    s
}

fn assert_codes(f: &Fixture, i: u64) {
    assert_codes_in(&f.vault, &*f.hsm, i)
}

/// Card `i` is found in `vault` with its [`codes_of`].
pub(crate) fn assert_codes_in(vault: &CodeVault, hsm: &dyn Hsm, i: u64) {
    let c = vault
        .find(hsm, &serial(i))
        .unwrap()
        .unwrap_or_else(|| panic!("card {i} not found"));
    let (pin, puk) = codes_of(i);
    assert_eq!(c.pin.expose_secret(), pin.as_bytes(), "card {i}");
    assert_eq!(c.puk.expose_secret(), puk.as_bytes(), "card {i}");
}

fn committed(o: ImportOutcome) -> BatchRecord {
    match o {
        ImportOutcome::Committed(r) => r,
        other => panic!("expected committed, got {other:?}"),
    }
}

#[test]
fn a_sorted_file_is_one_run_and_every_card_is_found_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let hsm: Arc<dyn Hsm> = Arc::new(DoubleHsm::new());
    {
        let f = Fixture::over(Arc::new(SledStore::open(dir.path()).unwrap()), hsm.clone());
        let rec = committed(f.import(&file(0..5000)));
        assert_eq!(rec.cards, 5000);
        assert_eq!(rec.runs.len(), 1);
        assert_eq!(rec.runs[0].segments, 5);
        assert_eq!(rec.runs[0].first, serial(0));
        assert_eq!(rec.runs[0].last, serial(4999));
        assert_eq!(rec.manufacturer, "Acme Cards");
        assert!(rec.problems.is_empty());
        for i in (0..5000).step_by(7) {
            assert_codes(&f, i);
        }
        assert_eq!(f.vault.locate(&serial(5000)).unwrap(), None);
        assert!(f.vault.find(&*f.hsm, &serial(5000)).unwrap().is_none());
        assert_eq!(f.vault.locate(&serial(17)).unwrap(), Some(rec.id));
    }
    let f = Fixture::over(Arc::new(SledStore::open(dir.path()).unwrap()), hsm);
    for i in [0, 1, 1023, 1024, 4999] {
        assert_codes(&f, i);
    }
    let list = f.vault.batches(None, 10).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].state, BatchState::Committed);
}

#[test]
fn an_unsorted_file_becomes_several_runs_and_is_still_found() {
    let f = Fixture::memory();
    // A shuffled order: i * 7 mod 3001 visits every index once.
    let ids: Vec<u64> = (0..3001).map(|i| (i * 7) % 3001).collect();
    let meta = BatchMeta {
        source: BatchSource::Import,
        manufacturer: "m".into(),
        actor: "a".into(),
        role: "manufacturer".into(),
        request_id: String::new(),
    };
    let mut st = f
        .vault
        .begin_with_run_records(&*f.hsm, &f.audit, &meta, 500)
        .unwrap();
    for &i in &ids {
        let codes = card_codes(i);
        st.push(i + 1, &serial(i), &codes).unwrap();
    }
    let staged = st.finish().unwrap();
    assert!(staged.runs.len() >= 6, "{} runs", staged.runs.len());
    assert_eq!(staged.repeats.total, 0);
    let rec = f.vault.commit(&f.audit, staged, 0, None).unwrap();
    assert!(matches!(rec, CommitOutcome::Committed(_)));
    for i in 0..3001 {
        assert_codes(&f, i);
    }
}

#[test]
fn repeated_serials_reject_the_file_naming_them_and_nothing_stays() {
    let f = Fixture::memory();
    let mut text = file(0..100);
    text.push_str(&format!("{};11111;22222222\n", serial(42)));
    let out = f.import(&text);
    let ImportOutcome::Rejected(rec) = out else {
        panic!("{out:?}")
    };
    assert_eq!(rec.state, BatchState::Rejected);
    assert_eq!(rec.problems_total, 1);
    assert_eq!(
        rec.problems[0],
        format!("serial {} is on lines 44 and 102", serial(42))
    );
    assert!(!rec.problems[0].contains("11111"));
    assert_eq!(f.segments(), 0);
    assert!(
        Keyring::load(&*f.store)
            .unwrap()
            .newest(KeyPurpose::Code)
            .is_none(),
        "key discarded"
    );
    assert_eq!(f.vault.locate(&serial(1)).unwrap(), None);

    // Across runs of an unsorted file (repeat far apart): also found.
    let meta = BatchMeta {
        source: BatchSource::Import,
        manufacturer: "m".into(),
        actor: "a".into(),
        role: "r".into(),
        request_id: String::new(),
    };
    let mut st = f
        .vault
        .begin_with_run_records(&*f.hsm, &f.audit, &meta, 10)
        .unwrap();
    for (line, i) in (0..30).chain([5]).enumerate() {
        let codes = card_codes(i);
        st.push(line as u64 + 1, &serial(i), &codes).unwrap();
    }
    let staged = st.finish().unwrap();
    assert_eq!(staged.repeats.total, 1);
    assert_eq!(
        staged.repeats.listed,
        vec![format!(
            "serial {} appears more than once in the file",
            serial(5)
        )]
    );
    assert!(f.vault.commit(&f.audit, staged, 0, None).is_err());
}

#[test]
fn a_bad_line_rejects_the_whole_file_with_its_line_and_field() {
    let f = Fixture::memory();
    let mut text = file(0..50);
    text.push_str(&format!("{};12345;1234567\n", serial(50)));
    let ImportOutcome::Rejected(rec) = f.import(&text) else {
        panic!()
    };
    assert_eq!(
        rec.problems,
        vec!["line 52: puk has 7 digits, policy wants 8".to_string()]
    );
    assert_eq!(f.segments(), 0);
    assert_eq!(f.vault.locate(&serial(0)).unwrap(), None);
    let events = f
        .audit
        .query(&crate::audit::Query {
            action: Some("batch.reject".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(events.events.len(), 1);
    assert_eq!(events.events[0].subject, rec.id.to_string());
}

#[test]
fn the_same_file_twice_returns_the_first_batch_and_stores_nothing_new() {
    let f = Fixture::memory();
    let text = file(0..2000);
    let first = committed(f.import(&text));
    let segments = f.segments();
    let again = f.import(&text);
    let ImportOutcome::AlreadyStored(rec) = again else {
        panic!("{again:?}")
    };
    assert_eq!(rec.id, first.id);
    assert_eq!(f.segments(), segments);
    // The id the copy was given still answers: a record naming the first batch, holding
    // nothing (issue 14: it used to vanish, and a look-up of the id it was given found nothing).
    let list = f.vault.batches(None, 10).unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let copy = list.iter().find(|r| r.id != first.id).unwrap();
    assert_eq!(copy.state, BatchState::Duplicate);
    assert_eq!(
        copy.duplicate_of.as_deref(),
        Some(first.id.to_string().as_str())
    );
    assert_eq!((copy.cards, copy.data_key, copy.runs.len()), (0, None, 0));
    assert_eq!(f.vault.batch(copy.id).unwrap().as_ref(), Some(copy));
    // A third upload still answers with the first batch.
    let again = f.import(&text);
    assert!(matches!(again, ImportOutcome::AlreadyStored(r) if r.id == first.id));
}

#[test]
fn serials_already_in_the_vault_quarantine_the_batch_and_overwrite_nothing() {
    let f = Fixture::memory();
    committed(f.import(&file(0..1000)));
    // Overlaps 990..999 and carries other codes for them.
    let mut text = String::new();
    for i in 990..1500u64 {
        text.push_str(&format!("{};99999;99999999\n", serial(i)));
    }
    let out = f.import(&text);
    let ImportOutcome::Quarantined(rec) = out else {
        panic!("{out:?}")
    };
    assert_eq!(rec.problems_total, 10);
    assert_eq!(
        rec.problems[0],
        format!("serial {} is already in the vault", serial(990))
    );
    // The first batch's codes stand; the quarantined cards are invisible.
    assert_codes(&f, 995);
    assert_eq!(f.vault.locate(&serial(1200)).unwrap(), None);
    assert_eq!(
        f.vault.batch(rec.id).unwrap().unwrap().state,
        BatchState::Quarantined
    );
}

#[test]
fn a_crash_while_staging_leaves_nothing_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hsm: Arc<dyn Hsm> = Arc::new(DoubleHsm::new());
    let id = {
        let f = Fixture::over(Arc::new(SledStore::open(dir.path()).unwrap()), hsm.clone());
        committed(f.import(&file(0..100)));
        let meta = BatchMeta {
            source: BatchSource::Import,
            manufacturer: "m".into(),
            actor: "a".into(),
            role: "r".into(),
            request_id: String::new(),
        };
        let mut st = f
            .vault
            .begin_with_run_records(&*f.hsm, &f.audit, &meta, 100)
            .unwrap();
        for i in 1000..1350u64 {
            let codes = card_codes(i);
            st.push(i, &serial(i), &codes).unwrap();
        }
        let id = st.id();
        let staged = st.finish().unwrap();
        // The process dies here, before the commit.
        std::mem::forget(staged);
        f.store.flush().unwrap();
        id
    };
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let keys_before = Keyring::load(&*store).unwrap().len();
    let (vault, recovery) = CodeVault::open(store.clone()).unwrap();
    assert_eq!(recovery.removed, vec![id]);
    assert_eq!(recovery.committed, 1);
    assert_eq!(vault.batch(id).unwrap(), None);
    assert_eq!(
        store
            .keys(Tree::Segments, &id.key(), None, 100)
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        Keyring::load(&*store).unwrap().len(),
        keys_before - 1,
        "its key is gone"
    );
    assert_eq!(vault.locate(&serial(1100)).unwrap(), None);
    assert!(vault.locate(&serial(50)).unwrap().is_some());
}

#[test]
fn a_failed_write_changes_nothing_visible() {
    let failing = Arc::new(FailingStore::new());
    let f = Fixture::over(failing.clone(), Arc::new(DoubleHsm::new()));
    committed(f.import(&file(0..10)));
    failing.fail_writes(true);
    assert!(import_file(f.ctx(), file(10..3000).as_bytes(), &request(), &|_| {}).is_err());
    failing.fail_writes(false);
    assert_eq!(f.vault.locate(&serial(20)).unwrap(), None);
    assert_codes(&f, 5);
    // And the next import works.
    committed(f.import(&file(10..3000)));
    assert_codes(&f, 2999);
}

#[test]
fn deleted_codes_are_not_found() {
    let f = Fixture::memory();
    committed(f.import(&file(0..10)));
    let mut b = Batch::new();
    f.vault.delete_codes_into(&serial(3), &mut b);
    f.store.apply(&b).unwrap();
    assert!(f.vault.find(&*f.hsm, &serial(3)).unwrap().is_none());
    assert_eq!(f.vault.locate(&serial(3)).unwrap(), None);
    assert_codes(&f, 4);
}

#[test]
fn generated_codes_are_stored_like_an_import() {
    let f = Fixture::memory();
    let req = GenerateRequest {
        serials: SerialSet::Range {
            first: serial(100),
            count: 3000,
        },
        filter: WeakFilter::STRICT,
        actor: "c1".into(),
        role: "cms".into(),
        request_id: String::new(),
    };
    let done = std::sync::atomic::AtomicU64::new(0);
    let out = generate_batch(f.ctx(), &req, &|n| {
        done.store(n, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    let rec = committed(out);
    assert_eq!(rec.source, BatchSource::Generated);
    assert_eq!(rec.cards, 3000);
    assert_eq!(done.load(std::sync::atomic::Ordering::Relaxed), 3000);
    let mut pins = std::collections::HashSet::new();
    for i in 100..3100 {
        let c = f.vault.find(&*f.hsm, &serial(i)).unwrap().unwrap();
        assert_eq!(c.pin.len(), 5);
        assert_eq!(c.puk.len(), 8);
        pins.insert(c.pin.expose_secret().to_vec());
    }
    assert!(
        pins.len() > 2900,
        "codes look random: {} distinct pins",
        pins.len()
    );
    // The same serials again: quarantined, not overwritten.
    let again = generate_batch(f.ctx(), &req, &|_| {}).unwrap();
    assert!(matches!(again, ImportOutcome::Quarantined(_)), "{again:?}");
    // A bad serial is refused before anything is created.
    let bad = GenerateRequest {
        serials: SerialSet::List(vec![serial(1), "12x".into()]),
        ..req
    };
    let err = generate_batch(f.ctx(), &bad, &|_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("serial 2"), "{err}");
}

#[test]
fn a_file_encrypted_with_the_age_command_line_tool_imports() {
    let f = Fixture::memory();
    let recipient = f.vault.import_recipient(&*f.hsm, &f.audit).unwrap();
    assert!(recipient.starts_with("age1"), "{recipient}");
    // The same recipient every time: the key is created once.
    assert_eq!(
        f.vault.import_recipient(&*f.hsm, &f.audit).unwrap(),
        recipient
    );
    let dir = tempfile::tempdir().unwrap();
    let clear = dir.path().join("codes.txt");
    std::fs::write(&clear, file(0..3000)).unwrap();
    for (armor, first) in [(false, 0u64), (true, 10_000)] {
        std::fs::write(&clear, file(first..first + 3000)).unwrap();
        let sealed = dir.path().join(format!("codes-{armor}.age"));
        let mut cmd = std::process::Command::new("age");
        cmd.arg("-r").arg(&recipient).arg("-o").arg(&sealed);
        if armor {
            cmd.arg("-a");
        }
        let status = cmd.arg(&clear).status().unwrap_or_else(|e| {
            panic!(
                "the `age` command is missing ({e}): run `bash scripts/test.sh`, which installs it"
            )
        });
        assert!(status.success());
        let bytes = std::fs::read(&sealed).unwrap();
        let out = import_file(f.ctx(), &bytes[..], &request(), &|_| {}).unwrap();
        let rec = committed(out);
        assert_eq!(rec.cards, 3000);
        assert_eq!(rec.bytes, bytes.len() as u64);
        assert_codes(&f, first + 1234);
        // A cut file is refused whole, and nothing of it is stored.
        let cut = &bytes[..bytes.len() - 40];
        let mut other = cut.to_vec();
        let out = import_file(f.ctx(), &other[..], &request(), &|_| {}).unwrap();
        let ImportOutcome::Rejected(rec) = out else {
            panic!("{out:?}")
        };
        assert!(rec.problems[0].contains("age"), "{:?}", rec.problems);
        other.clear();
    }
    // A file for someone else's recipient is rejected with a clear reason.
    let foreign = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
    let sealed = dir.path().join("foreign.age");
    let status = std::process::Command::new("age")
        .args(["-r", foreign, "-o"])
        .arg(&sealed)
        .arg(&clear)
        .status()
        .unwrap();
    assert!(status.success());
    let out = import_file(
        f.ctx(),
        &std::fs::read(&sealed).unwrap()[..],
        &request(),
        &|_| {},
    )
    .unwrap();
    let ImportOutcome::Rejected(rec) = out else {
        panic!("{out:?}")
    };
    assert!(rec.problems[0].contains("recipient"), "{:?}", rec.problems);
}

#[test]
fn a_damaged_store_is_an_error_or_a_clean_refusal_never_a_panic() {
    for (round, at) in [0.1f64, 0.3, 0.5, 0.7, 0.9].into_iter().enumerate() {
        let hsm: Arc<dyn Hsm> = Arc::new(DoubleHsm::new());
        let dir = tempfile::tempdir().unwrap();
        {
            let f = Fixture::over(Arc::new(SledStore::open(dir.path()).unwrap()), hsm.clone());
            committed(f.import(&file(0..20_000)));
            f.store.flush().unwrap();
        }
        // Overwrite 4 KiB in the middle of the largest file sled keeps.
        let mut files: Vec<_> = walk(dir.path());
        files.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
        let target = files.last().unwrap();
        let mut bytes = std::fs::read(target).unwrap();
        let start = (bytes.len() as f64 * at) as usize;
        let end = (start + 4096).min(bytes.len());
        for (i, b) in bytes[start..end].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31) ^ 0x5A;
        }
        std::fs::write(target, &bytes).unwrap();
        // What the service does at start and unseal: open the store, the chain (verified
        // against the HSM's anchor), then the vault. Each step may refuse; none may panic, and
        // if all pass, every card must be there and correct.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let store: Arc<dyn Store> = match SledStore::open(dir.path()) {
                Ok(s) => Arc::new(s),
                Err(e) => return format!("open refused: {e}"),
            };
            let audit = match AuditLog::open(store.clone(), 50) {
                Ok(a) => a,
                Err(e) => return format!("audit refused: {e}"),
            };
            if let Err(e) = audit.unlock(hsm.clone()) {
                return format!("unseal refused: {e}");
            }
            let (vault, _) = match CodeVault::open(store) {
                Ok(v) => v,
                Err(e) => return format!("vault refused: {e}"),
            };
            for i in (0..20_000).step_by(97) {
                assert_codes_in(&vault, &*hsm, i);
            }
            "opened, every card found".to_string()
        }));
        let outcome = outcome.unwrap_or_else(|_| panic!("round {round}: a panic (in sled, or a card missing or wrong after an unseal that passed)"));
        eprintln!("round {round}: {outcome}");
    }
}

/// Every file below `dir` (tests that scan the store's files).
pub(crate) fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_batch_record_written_before_duplicates_were_recorded_still_reads() {
    // A committed record as the store held it before `duplicate_of` existed.
    let old = br#"{"id":7,"state":"committed","source":"import","manufacturer":"acme","cards":2,
        "signature_pairs":false,"bytes":40,"data_key":3,"data_key_kcv":"a1b2c3","runs":[],
        "content_id":null,"actor":"acc_1","role":"manufacturer","request_id":"r1",
        "started_ms":1,"finished_ms":2,"problems":[],"problems_total":0}"#;
    let rec = BatchRecord::decode(old).unwrap();
    assert_eq!(
        (rec.id, rec.state, rec.cards),
        (BatchId(7), BatchState::Committed, 2)
    );
    assert_eq!(rec.duplicate_of, None);
    // Written back, it carries no new field.
    assert!(!String::from_utf8(rec.encode().unwrap())
        .unwrap()
        .contains("duplicate_of"));
}

/// Clear codes leave the vault only with the receipt of their audited release: pending codes
/// open with the receipt of a `card.codes_release` event of their card (written to the chain
/// by the same call), and not with a receipt of another card's release; a batch is scanned
/// only with the receipt of a print run of it.
#[test]
fn codes_open_only_with_the_receipt_of_their_audited_release() {
    use crate::audit::{NewEvent, Query};
    use crate::codes::{CODES_RELEASE_ACTION, PRINT_RUN_ACTION};
    use crate::store::Batch;
    let f = Fixture::memory();
    let rec = committed(f.import(&file(0..10)));
    let release = |serial: &str| {
        f.audit
            .commit_release(
                Batch::new(),
                vec![NewEvent::new(CODES_RELEASE_ACTION, serial).detail("for", "test")],
            )
            .unwrap()
    };
    let released = |serial: &str| {
        let page = f
            .audit
            .query(&Query {
                action: Some(CODES_RELEASE_ACTION.into()),
                subject: Some(serial.into()),
                limit: 10,
                ..Query::default()
            })
            .unwrap();
        page.events.len()
    };
    // Another card's receipt opens nothing.
    let other = release(&serial(2));
    let pending = f
        .vault
        .pending_release(&*f.hsm, &serial(1))
        .unwrap()
        .unwrap();
    assert!(matches!(pending.open(&other), Err(Error::Refused(_))));
    assert_eq!(released(&serial(1)), 0);
    // Its own receipt: the event is in the chain, and the codes are the card's.
    let pending = f
        .vault
        .pending_release(&*f.hsm, &serial(1))
        .unwrap()
        .unwrap();
    let receipt = release(&serial(1));
    assert_eq!(released(&serial(1)), 1);
    let c = pending.open(&receipt).unwrap();
    let (pin, puk) = codes_of(1);
    assert_eq!(c.pin.expose_secret(), pin.as_bytes());
    assert_eq!(c.puk.expose_secret(), puk.as_bytes());
    // A whole batch: only for a print run of it.
    assert!(matches!(
        f.vault.scan_batch(&*f.hsm, rec.id, &receipt).map(|_| ()),
        Err(Error::Refused(_))
    ));
    let run =
        f.audit
            .commit_release(
                Batch::new(),
                vec![NewEvent::new(PRINT_RUN_ACTION, "print run 1")
                    .detail("batch", rec.id.to_string())],
            )
            .unwrap();
    assert_eq!(
        f.vault.scan_batch(&*f.hsm, rec.id, &run).unwrap().count(),
        10
    );
}

/// The unit tests' HSM, with something run inside each unwrap: a seal that lands while a
/// key is being unwrapped.
struct SealedMidUnwrap {
    inner: DoubleHsm,
    during_unwrap: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    unwraps: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for SealedMidUnwrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedMidUnwrap({:?})", self.inner)
    }
}

impl Hsm for SealedMidUnwrap {
    fn status(&self) -> crate::hsm::HsmStatus {
        self.inner.status()
    }
    fn unseal(&self, share: &secrecy::SecretString) -> Result<crate::hsm::UnsealProgress> {
        self.inner.unseal(share)
    }
    fn reset_unseal(&self) {
        self.inner.reset_unseal()
    }
    fn seal(&self) {
        self.inner.seal()
    }
    fn generate_data_key(
        &self,
        purpose: KeyPurpose,
    ) -> Result<(crate::secret::FreshDataKey, crate::hsm::WrappedKey)> {
        self.inner.generate_data_key(purpose)
    }
    fn unwrap_data_key(&self, wrapped: &crate::hsm::WrappedKey) -> Result<crate::secret::DataKey> {
        let key = self.inner.unwrap_data_key(wrapped);
        self.unwraps
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(seal) = lock(&self.during_unwrap).take() {
            seal();
        }
        key
    }
    fn rewrap_data_key(&self, wrapped: &crate::hsm::WrappedKey) -> Result<crate::hsm::WrappedKey> {
        self.inner.rewrap_data_key(wrapped)
    }
    fn rotate(&self) -> Result<crate::hsm::TermInfo> {
        self.inner.rotate()
    }
    fn retire_term(&self, term: crate::hsm::TermId) -> Result<()> {
        self.inner.retire_term(term)
    }
    fn rekey(
        &self,
        current: &[secrecy::SecretString],
        shares: u8,
        threshold: u8,
        deliver: &mut crate::hsm::ShareDelivery<'_>,
    ) -> Result<crate::hsm::RekeyOutcome> {
        self.inner.rekey(current, shares, threshold, deliver)
    }
    fn audit_anchor(&self) -> Result<Option<crate::hsm::AuditAnchor>> {
        self.inner.audit_anchor()
    }
    fn set_audit_anchor(&self, anchor: &crate::hsm::AuditAnchor) -> Result<()> {
        self.inner.set_audit_anchor(anchor)
    }
    fn fill_random(&self, buf: &mut [u8]) -> Result<()> {
        self.inner.fill_random(buf)
    }
}

/// A seal that lands while a data key is being unwrapped (the HSM answered before it was
/// sealed, the caches were cleared before the key was cached) leaves no clear key behind:
/// the lookup answers `Sealed`, and the next lookup unwraps again instead of finding the key
/// cached. Before the seal epoch, the key was cached after the seal had cleared the cache.
#[test]
fn a_seal_during_an_unwrap_leaves_no_key_cached() {
    let hsm = Arc::new(SealedMidUnwrap {
        inner: DoubleHsm::new(),
        during_unwrap: Mutex::new(None),
        unwraps: std::sync::atomic::AtomicUsize::new(0),
    });
    let unwraps = || hsm.unwraps.load(std::sync::atomic::Ordering::SeqCst);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let audit = AuditLog::open(store.clone(), 50).unwrap();
    audit.unlock(hsm.clone()).unwrap();
    let vault = Arc::new(CodeVault::open(store).unwrap().0);
    let ctx = ImportContext {
        vault: &vault,
        hsm: &*hsm,
        audit: &audit,
        rules: &ParseRules::default(),
    };
    committed(import_file(ctx, file(0..10).as_bytes(), &request(), &|_| {}).unwrap());
    vault.forget_keys();

    let sealing = vault.clone();
    *lock(&hsm.during_unwrap) = Some(Box::new(move || sealing.forget_keys()));
    let before = unwraps();
    assert!(matches!(vault.find(&*hsm, &serial(3)), Err(Error::Sealed)));
    assert_eq!(unwraps(), before + 1);

    // Nothing was cached: the next lookup unwraps the key again (and then caches it).
    assert_codes_in(&vault, &*hsm, 3);
    assert_eq!(unwraps(), before + 2);
    assert_codes_in(&vault, &*hsm, 4);
    assert_eq!(unwraps(), before + 2);
}

/// Concurrent imports of small batches share the HSM's anchor writes (a token write is slow),
/// and none is acknowledged before the HSM's anchor covers its batch's event. Before, every
/// committed batch wrote the anchor itself: one token write per batch.
#[test]
fn concurrent_imports_share_the_anchor_and_none_returns_unanchored() {
    use crate::audit::group::testing::SlowToken;
    use std::sync::atomic::Ordering;
    const BATCHES: u64 = 8;
    let token = Arc::new(SlowToken::new(std::time::Duration::from_millis(40)));
    let f = Fixture::over(Arc::new(MemoryStore::new()), token.clone());
    let before = token.anchor_writes.load(Ordering::SeqCst);
    let done: Vec<(BatchRecord, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..BATCHES)
            .map(|t| {
                let (f, token) = (&f, &token);
                s.spawn(move || {
                    let rec = committed(f.import(&file(t * 100..t * 100 + 20)));
                    (rec, token.anchored())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rec, anchored_at_return) in &done {
        let page = f
            .audit
            .query(&crate::audit::Query {
                subject: Some(rec.id.to_string()),
                action: Some("batch.import".into()),
                limit: 10,
                ..crate::audit::Query::default()
            })
            .unwrap();
        let seq = page.events[0].seq;
        assert!(
            *anchored_at_return >= seq,
            "batch event {seq}, anchor {anchored_at_return}"
        );
    }
    let writes = token.anchor_writes.load(Ordering::SeqCst) - before;
    assert!(
        writes < BATCHES,
        "{writes} anchor writes for {BATCHES} batches"
    );
    for t in 0..BATCHES {
        assert_codes(&f, t * 100 + 19);
    }
}

//! Key ceremonies end to end with the HSM double: dual control, lapses, the rewrap job across
//! a crash, retire, rekey, shred against a copy of the store, and the status report.

use super::*;
use crate::codes::tests::{assert_codes_in, file, serial};
use crate::codes::{BatchId, BatchRecord};
use crate::error::{Denial, Missing, Refusal};
use crate::hsm::TermId;
use crate::hsm_double::DoubleHsm;
use crate::import::parse::ParseRules;
use crate::import::{import_file, ImportContext, ImportOutcome, ImportRequest};
use crate::store::memory::MemoryStore;
use crate::store::sled::SledStore;
use secrecy::ExposeSecret;

const DAY: u64 = 24 * 60 * 60 * 1000;

struct Fixture {
    store: Arc<dyn Store>,
    hsm: Arc<dyn Hsm>,
    audit: Arc<AuditLog>,
    codes: Arc<CodeVault>,
    keys: Ceremonies,
}

impl Fixture {
    fn over(store: Arc<dyn Store>, hsm: Arc<dyn Hsm>, policy: CeremonyPolicy) -> Fixture {
        let audit = Arc::new(AuditLog::open(store.clone(), 50).unwrap());
        audit.unlock(hsm.clone()).unwrap();
        let codes = Arc::new(CodeVault::open(store.clone()).unwrap().0);
        let keys = Ceremonies::new(codes.clone(), audit.clone(), policy);
        Fixture {
            store,
            hsm,
            audit,
            codes,
            keys,
        }
    }

    fn memory() -> (Fixture, Arc<MemoryStore>) {
        let mem = Arc::new(MemoryStore::new());
        let f = Fixture::over(
            mem.clone(),
            Arc::new(DoubleHsm::new()),
            CeremonyPolicy::default(),
        );
        (f, mem)
    }

    fn import(&self, ids: std::ops::Range<u64>) -> ImportOutcome {
        let rules = ParseRules::default();
        let ctx = ImportContext {
            vault: &self.codes,
            hsm: &*self.hsm,
            audit: &self.audit,
            rules: &rules,
        };
        let request = ImportRequest {
            manufacturer: "Acme Cards".into(),
            expected_cards: None,
            expected_sha256: None,
            actor: "m1".into(),
            role: "manufacturer".into(),
            request_id: "r1".into(),
        };
        import_file(ctx, file(ids).as_bytes(), &request, &|_| {}).unwrap()
    }

    fn committed(&self, ids: std::ops::Range<u64>) -> BatchRecord {
        match self.import(ids) {
            ImportOutcome::Committed(r) => r,
            other => panic!("expected committed, got {other:?}"),
        }
    }

    fn terms(&self) -> Vec<(TermId, TermState)> {
        self.hsm
            .status()
            .terms
            .iter()
            .map(|t| (t.id, t.state))
            .collect()
    }

    fn ring(&self) -> Keyring {
        Keyring::load(&*self.store).unwrap()
    }

    fn proposals_stored(&self) -> usize {
        self.store
            .keys(Tree::KeyProposals, &[], None, usize::MAX)
            .unwrap()
            .len()
    }
}

fn officer(id: &str) -> Actor {
    Actor {
        id: id.into(),
        role: "officer".into(),
        request_id: format!("req-{id}"),
    }
}

/// Every stored audit event's action, in order.
fn actions(store: &dyn Store) -> Vec<String> {
    store
        .range(Tree::Audit, &[], None, usize::MAX)
        .unwrap()
        .iter()
        .map(|(_, v)| {
            let e: serde_json::Value = serde_json::from_slice(v).unwrap();
            e["action"].as_str().unwrap().to_string()
        })
        .filter(|a| a.starts_with("key.") && a != "key.create")
        .collect()
}

fn now() -> u64 {
    use crate::clock::Clock;
    crate::clock::SystemClock.now_ms()
}

#[test]
fn only_a_second_officer_may_approve() {
    let (f, _) = Fixture::memory();
    let t = now();
    let operator = Actor {
        id: "op1".into(),
        role: "operator".into(),
        request_id: "r".into(),
    };
    let e = f
        .keys
        .propose(&*f.hsm, &operator, Operation::Rotate, "yearly", t)
        .unwrap_err();
    assert!(
        matches!(&e, Error::Denied(Denial::NotOfficer { account, what: "propose", .. }) if account == "op1"),
        "{e}"
    );
    assert_eq!(f.proposals_stored(), 0);

    let p = f
        .keys
        .propose(&*f.hsm, &officer("alice"), Operation::Rotate, "yearly", t)
        .unwrap();
    assert_eq!(p.state, ProposalState::Open);
    assert_eq!(p.expires_ms, t + DEFAULT_WINDOW_MS);
    assert_eq!(p.kcv, Some(f.hsm.status().terms[0].kcv));

    let own = f
        .keys
        .approve(&*f.hsm, &officer("alice"), p.id, t + 1)
        .unwrap_err();
    assert!(
        matches!(&own, Error::Denied(Denial::OwnProposal { proposal, account }) if *proposal == p.id && account == "alice"),
        "{own}"
    );
    let op = f.keys.approve(&*f.hsm, &operator, p.id, t + 1).unwrap_err();
    assert!(
        matches!(op, Error::Denied(Denial::NotOfficer { .. })),
        "{op}"
    );
    assert_eq!(f.terms().len(), 1, "nothing ran");
    assert_eq!(
        f.keys.get(p.id).unwrap().unwrap().state,
        ProposalState::Open
    );

    let done = f
        .keys
        .approve(&*f.hsm, &officer("bob"), p.id, t + 2)
        .unwrap();
    assert_eq!(done.approver.as_deref(), Some("bob"));
    f.keys.run(&*f.hsm, &mut |_| {}).unwrap();
    let done = f.keys.get(p.id).unwrap().unwrap();
    assert_eq!(done.state, ProposalState::Done);
    assert_eq!(
        actions(&*f.store),
        ["key.propose", "key.approve", "key.rotate", "key.done"]
    );
    // A second approval of the same proposal is a wrong state.
    let again = f
        .keys
        .approve(&*f.hsm, &officer("carol"), p.id, t + 3)
        .unwrap_err();
    assert!(matches!(again, Error::WrongState { .. }), "{again}");
    assert!(f.audit.verify().unwrap().intact());
}

#[test]
fn a_proposal_lapses_after_its_window() {
    let (f, _) = Fixture::memory();
    let t = now();
    let p = f
        .keys
        .propose(&*f.hsm, &officer("alice"), Operation::Rotate, "yearly", t)
        .unwrap();
    let late = f
        .keys
        .approve(&*f.hsm, &officer("bob"), p.id, t + DEFAULT_WINDOW_MS)
        .unwrap_err();
    assert!(
        matches!(late, Error::Refusal(Refusal::Lapsed { proposal }) if proposal == p.id),
        "{late}"
    );
    assert_eq!(
        f.keys.get(p.id).unwrap().unwrap().state,
        ProposalState::Lapsed
    );
    assert_eq!(f.terms().len(), 1, "nothing ran");

    // Listing marks the lapsed ones too.
    let q = f
        .keys
        .propose(&*f.hsm, &officer("alice"), Operation::Rotate, "again", t)
        .unwrap();
    let listed = f.keys.list(t + 1).unwrap();
    assert_eq!(listed[0].id, q.id, "newest first");
    assert_eq!(listed[0].state, ProposalState::Open);
    let listed = f.keys.list(t + DEFAULT_WINDOW_MS + 1).unwrap();
    assert_eq!(listed[0].state, ProposalState::Lapsed);
    assert_eq!(
        actions(&*f.store),
        ["key.propose", "key.lapse", "key.propose", "key.lapse"]
    );
    // A withdrawn proposal cannot be approved.
    let w = f
        .keys
        .propose(&*f.hsm, &officer("alice"), Operation::Rotate, "oops", t)
        .unwrap();
    f.keys.withdraw(&officer("alice"), w.id, t + 1).unwrap();
    assert!(f
        .keys
        .approve(&*f.hsm, &officer("bob"), w.id, t + 2)
        .is_err());
}

#[test]
fn impossible_operations_are_refused_when_proposed_and_nothing_is_written() {
    let (f, _) = Fixture::memory();
    f.committed(0..10);
    let t = now();
    let a = officer("alice");
    type Check = fn(&Error) -> bool;
    let cases: Vec<(Operation, Check)> = vec![
        (Operation::Retire { term: TermId(9) }, |e| {
            matches!(e, Error::Missing(Missing::Term(TermId(9))))
        }),
        (Operation::Retire { term: TermId(1) }, |e| {
            matches!(e, Error::Refusal(Refusal::TermActive { term: TermId(1) }))
        }),
        (
            Operation::Shred {
                batch: BatchId(99),
                force: false,
            },
            |e| matches!(e, Error::Missing(Missing::Batch(BatchId(99)))),
        ),
        (
            Operation::DiscardQuarantined { batch: BatchId(1) },
            |e| matches!(e, Error::WrongState { state, wanted, .. } if state == "committed" && wanted == "quarantined"),
        ),
        // Share counts are bad input (400), not a refusal of the state: `Quorum` with the
        // counts.
        (
            Operation::Rekey {
                shares: 2,
                threshold: 3,
            },
            |e| {
                matches!(
                    e,
                    Error::Quorum(Quorum::ThresholdAboveShares {
                        threshold: 3,
                        shares: 2
                    })
                )
            },
        ),
        (
            Operation::Rekey {
                shares: 3,
                threshold: 1,
            },
            |e| matches!(e, Error::Quorum(Quorum::SingleCustodian)),
        ),
    ];
    let events = f.store.last(Tree::Audit).unwrap();
    for (op, check) in cases {
        let e = f.keys.propose(&*f.hsm, &a, op, "test", t).unwrap_err();
        assert!(check(&e), "{op}: {e}");
    }
    assert!(f
        .keys
        .propose(&*f.hsm, &a, Operation::Rotate, " ", t)
        .is_err());
    assert_eq!(f.proposals_stored(), 0);
    assert_eq!(f.store.last(Tree::Audit).unwrap(), events, "no event");
}

#[test]
fn the_rewrap_job_resumes_after_a_crash_and_codes_open_throughout() {
    let dir = tempfile::tempdir().unwrap();
    let hsm: Arc<dyn Hsm> = Arc::new(DoubleHsm::new());
    let policy = CeremonyPolicy {
        chunk: 2,
        ..CeremonyPolicy::default()
    };
    let t = now();
    let id;
    {
        let f = Fixture::over(
            Arc::new(SledStore::open(dir.path()).unwrap()),
            hsm.clone(),
            policy,
        );
        for k in 0..3 {
            f.committed(k * 100..k * 100 + 50);
        }
        // audit, index (content ids) and three code keys.
        assert_eq!(f.ring().len(), 5);
        let p = f
            .keys
            .propose(&*hsm, &officer("alice"), Operation::Rotate, "yearly", t)
            .unwrap();
        id = p.id;
        let running = f.keys.approve(&*hsm, &officer("bob"), id, t).unwrap();
        assert_eq!(running.state, ProposalState::Running);
        // Approval rotated at once; the rewrap is the job's.
        assert_eq!(
            f.terms(),
            [
                (TermId(1), TermState::DecryptOnly),
                (TermId(2), TermState::Active)
            ]
        );
        let job = f.keys.job().unwrap().unwrap();
        assert_eq!((job.phase, job.total, job.done), (JobPhase::Rewrap, 5, 0));
        // No second job while this one runs.
        let q = f
            .keys
            .propose(&*hsm, &officer("alice"), Operation::Rotate, "again", t)
            .unwrap();
        let busy = f.keys.approve(&*hsm, &officer("bob"), q.id, t).unwrap_err();
        assert!(
            matches!(busy, Error::Refusal(Refusal::JobUnfinished { .. })),
            "{busy}"
        );

        let mut seen = Vec::new();
        let job = f
            .keys
            .step(&*hsm, 1, &mut |j| seen.push(j.done))
            .unwrap()
            .unwrap();
        assert_eq!((job.phase, job.done), (JobPhase::Rewrap, 2));
        assert_eq!(seen, [2]);
        assert_eq!(f.ring().count_by_term().get(&TermId(2)), Some(&2));
        for i in [0, 149, 201] {
            assert_codes_in(&f.codes, &*hsm, i);
        }
        // The crash: everything but the HSM is dropped here.
    }
    let f = Fixture::over(
        Arc::new(SledStore::open(dir.path()).unwrap()),
        hsm.clone(),
        policy,
    );
    let job = f.keys.job().unwrap().unwrap();
    assert_eq!((job.phase, job.done), (JobPhase::Rewrap, 2));
    let mut seen = Vec::new();
    let job = f
        .keys
        .resume_jobs(&*hsm, &mut |j| seen.push((j.phase, j.done)))
        .unwrap()
        .unwrap();
    assert_eq!(
        seen,
        [
            (JobPhase::Rewrap, 4),
            (JobPhase::Rewrap, 5),
            (JobPhase::Done, 5)
        ]
    );
    assert_eq!((job.state, job.total, job.done), (JobState::Done, 5, 5));
    assert_eq!(
        f.ring().count_by_term().into_iter().collect::<Vec<_>>(),
        [(TermId(2), 5)]
    );
    assert_eq!(f.keys.get(id).unwrap().unwrap().state, ProposalState::Done);
    for i in [0, 49, 100, 149, 201, 249] {
        assert_codes_in(&f.codes, &*hsm, i);
    }
    // Nothing left to do.
    assert_eq!(
        f.keys.run(&*hsm, &mut |_| {}).unwrap().unwrap().state,
        JobState::Done
    );
    assert!(f.audit.verify().unwrap().intact());
}

#[test]
fn retire_is_refused_while_keys_remain_then_destroys_the_term() {
    let (f, _) = Fixture::memory();
    f.committed(0..20);
    let t = now();
    let p = f
        .keys
        .propose(&*f.hsm, &officer("alice"), Operation::Rotate, "yearly", t)
        .unwrap();
    f.keys.approve(&*f.hsm, &officer("bob"), p.id, t).unwrap();
    // Proposing the retire is allowed while the rewrap runs…
    let r = f
        .keys
        .propose(
            &*f.hsm,
            &officer("alice"),
            Operation::Retire { term: TermId(1) },
            "old",
            t,
        )
        .unwrap();
    // …approving it is not, with the count.
    let e = f
        .keys
        .approve(&*f.hsm, &officer("bob"), r.id, t)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Refusal(Refusal::TermInUse {
                term: TermId(1),
                data_keys: 3
            })
        ),
        "{e}"
    );
    assert_eq!(
        f.keys.get(r.id).unwrap().unwrap().state,
        ProposalState::Open
    );
    f.keys.run(&*f.hsm, &mut |_| {}).unwrap();
    let done = f.keys.approve(&*f.hsm, &officer("bob"), r.id, t).unwrap();
    assert_eq!(done.state, ProposalState::Done);
    assert!(done.outcome.unwrap().contains("term 1"));
    assert_eq!(f.terms()[0], (TermId(1), TermState::Retired));
    assert_codes_in(&f.codes, &*f.hsm, 7);
    // Retiring it again is refused when proposed.
    let again = f
        .keys
        .propose(
            &*f.hsm,
            &officer("alice"),
            Operation::Retire { term: TermId(1) },
            "x",
            t,
        )
        .unwrap_err();
    assert!(
        matches!(
            again,
            Error::Refusal(Refusal::TermRetired { term: TermId(1) })
        ),
        "{again}"
    );
}

#[test]
fn rekey_needs_a_quorum_and_the_old_shares_stop_working() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (double, old) = DoubleHsm::with_shares(3, 2);
    let hsm: Arc<dyn Hsm> = Arc::new(double);
    let f = Fixture::over(store, hsm.clone(), CeremonyPolicy::default());
    let t = now();
    let op = Operation::Rekey {
        shares: 5,
        threshold: 3,
    };
    let p = f
        .keys
        .propose(&*hsm, &officer("alice"), op, "custodian left", t)
        .unwrap();
    let root_before = hsm.status().root_kcv;
    let mut delivered: Vec<SecretString> = Vec::new();
    // One share is not a quorum: refused, audited, the proposal stays open.
    let e = f
        .keys
        .approve_rekey(
            &*hsm,
            &officer("bob"),
            p.id,
            &old[..1],
            &mut |s| {
                delivered = s.to_vec();
                Ok(())
            },
            t,
        )
        .unwrap_err();
    assert!(matches!(e, Error::Share(_)), "{e}");
    assert!(delivered.is_empty());
    assert_eq!(
        f.keys.get(p.id).unwrap().unwrap().state,
        ProposalState::Open
    );
    // A plain approval is not how a rekey is approved.
    assert!(f.keys.approve(&*hsm, &officer("bob"), p.id, t).is_err());

    let done = f
        .keys
        .approve_rekey(
            &*hsm,
            &officer("bob"),
            p.id,
            &old[1..],
            &mut |s| {
                delivered = s.to_vec();
                Ok(())
            },
            t,
        )
        .unwrap();
    assert_eq!(done.state, ProposalState::Done);
    assert_eq!(delivered.len(), 5);
    let st = hsm.status();
    assert_eq!((st.shares, st.threshold), (5, 3));
    assert_ne!(st.root_kcv, root_before);
    assert!(done.outcome.unwrap().contains(&st.root_kcv.to_string()));

    // The old shares no longer work; the new ones do.
    let q = f
        .keys
        .propose(&*hsm, &officer("bob"), op, "again", t)
        .unwrap();
    let stale = f
        .keys
        .approve_rekey(&*hsm, &officer("alice"), q.id, &old, &mut |_| Ok(()), t)
        .unwrap_err();
    assert!(matches!(stale, Error::Share(_)), "{stale}");
    f.keys
        .approve_rekey(
            &*hsm,
            &officer("alice"),
            q.id,
            &delivered[2..],
            &mut |_| Ok(()),
            t,
        )
        .unwrap();

    // No share, old or new, is anywhere in the store.
    let everything: Vec<u8> = Tree::ALL
        .iter()
        .flat_map(|tree| f.store.range(*tree, &[], None, usize::MAX).unwrap())
        .flat_map(|(k, v)| k.into_iter().chain(v))
        .collect();
    let text = String::from_utf8_lossy(&everything);
    for s in old.iter().chain(&delivered) {
        assert!(!text.contains(s.expose_secret()), "a share was stored");
    }
    assert_eq!(
        actions(&*f.store),
        [
            "key.propose",
            "key.attempt",
            "key.failed",
            "key.attempt",
            "key.approve",
            "key.done",
            "key.propose",
            "key.attempt",
            "key.failed",
            "key.attempt",
            "key.approve",
            "key.done"
        ]
    );
}

#[test]
fn a_copy_of_the_store_taken_before_a_shred_cannot_yield_the_codes() {
    let (f, mem) = Fixture::memory();
    let a = f.committed(0..100);
    let b = f.committed(1000..1100);
    assert_codes_in(&f.codes, &*f.hsm, 5);
    let backup: Arc<dyn Store> = Arc::new(mem.snapshot());

    let t = now();
    let p = f
        .keys
        .propose(
            &*f.hsm,
            &officer("alice"),
            Operation::Shred {
                batch: a.id,
                force: true,
            },
            "revoked cards past retention",
            t,
        )
        .unwrap();
    assert_eq!(p.kcv.map(|k| k.to_string()), a.data_key_kcv);
    f.keys.approve(&*f.hsm, &officer("bob"), p.id, t).unwrap();
    // Approval already destroyed the batch in the live store.
    assert_eq!(f.codes.locate(&serial(5)).unwrap(), None);
    let job = f.keys.run(&*f.hsm, &mut |_| {}).unwrap().unwrap();
    assert_eq!(job.state, JobState::Done);
    assert_eq!(
        job.retired.iter().map(|r| r.0).collect::<Vec<_>>(),
        [TermId(1)]
    );
    assert_eq!(
        f.keys.get(p.id).unwrap().unwrap().state,
        ProposalState::Done
    );

    // Live: batch a is gone, batch b reads fine.
    assert_eq!(f.codes.find(&*f.hsm, &serial(5)).unwrap().map(|_| ()), None);
    assert_eq!(
        f.codes.batch(a.id).unwrap().unwrap().state,
        BatchState::Shredded
    );
    assert!(f
        .ring()
        .get(crate::DataKeyId(a.data_key.unwrap()))
        .is_none());
    assert_eq!(
        f.store
            .keys(Tree::Segments, &a.id.key(), Some(&b.id.key()), 10)
            .unwrap()
            .len(),
        0
    );
    for i in [1000, 1050, 1099] {
        assert_codes_in(&f.codes, &*f.hsm, i);
    }
    assert_eq!(
        f.terms(),
        [
            (TermId(1), TermState::Retired),
            (TermId(2), TermState::Active)
        ]
    );

    // The copy still holds batch a's segments and its data key — wrapped under term 1, which
    // the HSM has destroyed: no code comes out of it.
    let (old, _) = CodeVault::open(backup.clone()).unwrap();
    assert_eq!(old.locate(&serial(5)).unwrap(), Some(a.id));
    for i in [0, 5, 99] {
        let e = old.find(&*f.hsm, &serial(i)).map(|_| ()).unwrap_err();
        assert!(
            matches!(e, Error::Missing(crate::error::Missing::Term(TermId(1)))),
            "{e}"
        );
    }
    let ring = Keyring::load(&*backup).unwrap();
    let key = ring.get(crate::DataKeyId(a.data_key.unwrap())).unwrap();
    assert_eq!(key.wrapped.term, TermId(1));
    assert!(f.hsm.unwrap_data_key(&key.wrapped).is_err());

    let acts = actions(&*f.store);
    assert_eq!(
        acts,
        [
            "key.propose",
            "key.approve",
            "key.shred",
            "key.rotate",
            "key.done"
        ]
    );
    assert!(f.audit.verify().unwrap().intact());
}

#[test]
fn a_quarantined_batch_can_be_discarded() {
    let (f, _) = Fixture::memory();
    f.committed(0..10);
    let q = match f.import(5..15) {
        ImportOutcome::Quarantined(r) => r,
        other => panic!("expected quarantined, got {other:?}"),
    };
    let t = now();
    let shred_q = f
        .keys
        .propose(
            &*f.hsm,
            &officer("a"),
            Operation::Shred {
                batch: q.id,
                force: false,
            },
            "x",
            t,
        )
        .unwrap_err();
    assert!(matches!(shred_q, Error::WrongState { .. }), "{shred_q}");
    let p = f
        .keys
        .propose(
            &*f.hsm,
            &officer("a"),
            Operation::DiscardQuarantined { batch: q.id },
            "manufacturer sends a corrected file",
            t,
        )
        .unwrap();
    f.keys.approve(&*f.hsm, &officer("b"), p.id, t).unwrap();
    f.keys.run(&*f.hsm, &mut |_| {}).unwrap();
    assert_eq!(
        f.codes.batch(q.id).unwrap().unwrap().state,
        BatchState::Discarded
    );
    assert!(f
        .ring()
        .get(crate::DataKeyId(q.data_key.unwrap()))
        .is_none());
    assert_codes_in(&f.codes, &*f.hsm, 7);
}

#[test]
fn status_warns_past_periods_and_near_the_encryption_limit() {
    let (f, _) = Fixture::memory();
    f.committed(0..10);
    let t = now();
    let s = f.keys.status(&*f.hsm, t).unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    assert!(s.recommendations.is_empty(), "{:?}", s.recommendations);
    assert_eq!(s.terms.len(), 1);
    assert_eq!(s.terms[0].data_keys, 3);
    assert_eq!(s.data_keys.len(), 3);
    let code = s
        .data_keys
        .iter()
        .find(|k| k.purpose == crate::KeyPurpose::Code)
        .unwrap();
    assert_eq!(code.encryptions, 10);

    let near = f.keys.status(&*f.hsm, t + 340 * DAY).unwrap();
    assert!(near.terms[0].warnings[0].contains("near the end of its 365-day period"));
    let late = f.keys.status(&*f.hsm, t + 366 * DAY).unwrap();
    assert!(late.terms[0].warnings[0].contains("past its 365-day period"));
    assert!(
        late.recommendations[0].starts_with("rotate: term 1"),
        "{:?}",
        late.recommendations
    );
    assert_eq!(
        f.keys.list(t).unwrap().len(),
        0,
        "recommendations create no proposal"
    );
    let old = f.keys.status(&*f.hsm, t + 731 * DAY).unwrap();
    assert!(old.data_keys.iter().all(|k| k
        .warnings
        .iter()
        .any(|w| w.contains("past its 730-day period"))));

    // Near the AES-GCM limit (a policy that warns early, to see it without 2^31 records).
    let policy = CeremonyPolicy {
        keys: KeyPolicy {
            warn_encryptions: 10,
            ..KeyPolicy::default()
        },
        ..CeremonyPolicy::default()
    };
    let strict = Ceremonies::new(f.codes.clone(), f.audit.clone(), policy);
    let s = strict.status(&*f.hsm, t).unwrap();
    let code = s
        .data_keys
        .iter()
        .find(|k| k.purpose == crate::KeyPurpose::Code)
        .unwrap();
    assert!(
        code.warnings[0].contains("near its limit of 2147483648"),
        "{:?}",
        code.warnings
    );
    assert_eq!(KeyPolicy::default().warn_encryptions, 1_717_986_912);

    // Open proposals and the job are in the report; it serialises for the API.
    let p = f
        .keys
        .propose(&*f.hsm, &officer("a"), Operation::Rotate, "x", t)
        .unwrap();
    f.keys.approve(&*f.hsm, &officer("b"), p.id, t).unwrap();
    let s = f.keys.status(&*f.hsm, t).unwrap();
    let job = s.job.clone().unwrap();
    assert_eq!((job.done, job.total), (0, 3));
    assert_eq!(s.terms[0].state, TermState::DecryptOnly);
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains("\"phase\":\"rewrap\""), "{json}");
    f.keys.run(&*f.hsm, &mut |_| {}).unwrap();
    let s = f.keys.status(&*f.hsm, t).unwrap();
    assert!(
        s.recommendations[0].starts_with("retire: term 1"),
        "{:?}",
        s.recommendations
    );
}

#[test]
fn an_approval_is_refused_when_the_named_key_changed_since_the_proposal() {
    let (f, _) = Fixture::memory();
    let t = now();
    let first = f
        .keys
        .propose(&*f.hsm, &officer("alice"), Operation::Rotate, "yearly", t)
        .unwrap();
    let second = f
        .keys
        .propose(
            &*f.hsm,
            &officer("carol"),
            Operation::Rotate,
            "also yearly",
            t,
        )
        .unwrap();
    assert_eq!(first.kcv, second.kcv);
    f.keys
        .approve(&*f.hsm, &officer("bob"), first.id, t + 1)
        .unwrap();
    f.keys.run(&*f.hsm, &mut |_| {}).unwrap();
    // The second proposal named the term the first one rotated away: its approver would be
    // comparing a KCV that is no longer the active term's.
    let e = f
        .keys
        .approve(&*f.hsm, &officer("bob"), second.id, t + 2)
        .unwrap_err();
    assert!(
        matches!(&e, Error::Refusal(Refusal::KeyChanged { proposal, .. }) if *proposal == second.id),
        "{e}"
    );
    assert_eq!(f.terms().len(), 2, "no second rotation");
    assert_eq!(
        f.keys.get(second.id).unwrap().unwrap().state,
        ProposalState::Open
    );
}

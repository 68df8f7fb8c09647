//! The card-management domain of plico: what the card management system and the counter do
//! with holders and cards, on top of the key vault.
//!
//! - holders: `registry_parse` reads holder registry files (CSV, JSON lines), checking the
//!   codice fiscale (`codice_fiscale`), e-mail and phone (`contact`) and dates (`date`);
//!   `registry` keeps holders (personal data sealed, found by keyed blind indexes only) and
//!   cards, and applies registry files all or nothing, revoking cards implicitly (deceased
//!   holder, replaced card, expiry);
//! - cards and lifecycle: `card` is the state machine; `lifecycle` the counter's changes,
//!   the expiry sweep, the status view and [`Cards::release_codes`], the only way to a card's
//!   codes (the gate no code passes for a card in the wrong state);
//! - `outbox` the durable outbox of code deliveries by SMS, e-mail and mailer: requests,
//!   jobs, claims, retries, receipts, fallback, resend and each part's state; `outbox_release`
//!   what a worker gets for one claimed job (codes, destination, name), through the audited
//!   gate; `outbox_counter` part A printed at the counter;
//! - `mailers` the mailers book: numbers, print files, voids on reprint, outcomes and the
//!   reconciliation per batch; `addressee` a holder as a mailer addresses them;
//! - `reports` the technical problem reports.
//!
//! How it uses `vault`: [`Cards`] is built over the vault's [`vault::CodeVault`] and
//! shares its store (the trees `holders`, `cards`, `jobs`, … are vault's [`vault::Tree`]
//! names), seals personal data with the vault's keyring (key purpose `holder`), and writes every
//! change with its audit events in one commit of the vault's [`vault::AuditLog`]. The
//! dependency points one way: vault does not know this crate; key ceremonies reach the cards
//! through the [`vault::CardRegistry`] trait, which [`Cards`] implements
//! (module `ceremony`), so that a forced shred revokes the cards that lose their codes in its own
//! write.

//! The modules are private; what the service uses is re-exported below, grouped as above.

mod addressee;
mod card;
mod ceremony;
mod codice_fiscale;
mod consent;
mod contact;
mod date;
mod lifecycle;
mod mailers;
mod outbox;
mod outbox_counter;
mod outbox_release;
mod registry;
mod registry_bulk;
mod registry_parse;
mod reports;

// Holders: registry files, the codice fiscale, contacts, dates.
pub use codice_fiscale::{
    check_character, normalise as normalise_codice_fiscale, CodiceFiscaleError,
};
pub use date::{Date, DateError};
pub use registry::{
    CardRecord, Cards, HolderView, PersonalData, RegistryOutcome, SearchKey, BULK_MIN_HOLDERS,
    MAX_SEARCH,
};
pub use registry_parse::{
    normalise_name, parse_registry, CardEntry, HolderEntry, RegistryFailure, RegistryProblem,
    RegistryReport, RegistryRules,
};

// Cards and their lifecycle.
pub use card::{CardState, Move, Reason};
pub use lifecycle::{Activation, CardStatus, Change};
// The consent form printed at the counter.
pub use consent::{ConsentPurpose, ConsentSubject};

// The outbox of code deliveries.
pub use outbox::{
    parse_plan, Channel, DispatchHistory, DispatchRequest, Dispatched, Fallback, Job, JobState,
    OutboxPolicy, Part, PartDelivery, Plan, ReceiptOutcome, BOUNCED,
};
pub use outbox_counter::{CounterPrint, CounterSlip};
pub use outbox_release::{JobRelease, ReleaseDestination, Settled};

// The mailers book.
pub use mailers::{
    address_lines, MailerItem, MailerOutcome, MailerState, PrintJob, PrintRunRecord,
    Reconciliation, RecordedFile, Reprint, Selection, MAX_LISTED_SERIALS,
};

// Technical problem reports.
pub use reports::{Report, ReportState, ReportStep};

#[cfg(test)]
mod tests {
    //! The registry and the lifecycle end to end on sled, and the model test: random sequences of
    //! code imports, registry updates, counter changes and restarts, checked after every step
    //! against a plain in-memory model.

    use super::*;
    use date::Date;
    use hsm_sim::SimulatedHsm;
    use proptest::prelude::*;
    use registry_parse::{CardEntry, HolderEntry};
    use std::collections::HashMap;
    use std::sync::Arc;
    use vault::Actor;
    use vault::AuditLog;
    use vault::CodeVault;
    use vault::Error;
    use vault::Hsm;
    use vault::ParseRules;
    use vault::SledStore;
    use vault::Store;
    use vault::Tree;
    use vault::{import_file, ImportContext, ImportOutcome, ImportRequest};

    /// Valid codici fiscali (check characters computed by [`codice_fiscale`]).
    pub(super) fn cf(i: usize) -> String {
        let base = [
            "RSSMRA85T10A562",
            "BNCLRA90A41F205",
            "VRDGPP70C15H501",
            "NREFNC01E52L219",
        ][i];
        let check = codice_fiscale::check_character(base).unwrap();
        format!("{base}{check}")
    }

    pub(super) fn date(s: &str) -> Date {
        Date::parse(s).unwrap()
    }

    pub(super) fn today() -> Date {
        date("2026-06-01")
    }

    pub(super) fn serial(i: usize) -> String {
        format!("80390000000000{i:05}")
    }

    pub(super) fn actor() -> Actor {
        Actor {
            id: "op1".into(),
            role: "operator".into(),
            request_id: "r".into(),
        }
    }

    pub(super) struct World {
        dir: tempfile::TempDir,
        /// The development HSM's directory, apart from the store's.
        _hsm_dir: tempfile::TempDir,
        pub(super) hsm: Arc<dyn Hsm>,
        store: Option<Arc<dyn Store>>,
        audit: Option<AuditLog>,
        pub(super) codes: Option<Arc<CodeVault>>,
        cms: Option<Cards>,
    }

    impl World {
        pub(super) fn new() -> World {
            let hsm_dir = tempfile::tempdir().unwrap();
            let hsm = Arc::new(SimulatedHsm::dev(hsm_dir.path()).unwrap());
            let mut w = World {
                dir: tempfile::tempdir().unwrap(),
                _hsm_dir: hsm_dir,
                hsm,
                store: None,
                audit: None,
                codes: None,
                cms: None,
            };
            w.open();
            w
        }

        fn open(&mut self) {
            let store: Arc<dyn Store> = Arc::new(SledStore::open(self.dir.path()).unwrap());
            let audit = AuditLog::open(store.clone(), 100).unwrap();
            audit.unlock(self.hsm.clone()).unwrap();
            let (codes, _) = CodeVault::open(store.clone()).unwrap();
            let codes = Arc::new(codes);
            self.cms = Some(Cards::new(codes.clone()));
            self.codes = Some(codes);
            self.audit = Some(audit);
            self.store = Some(store);
        }

        pub(super) fn restart(&mut self) {
            self.cms = None;
            self.codes = None;
            self.audit = None;
            self.store = None;
            self.open();
        }

        pub(super) fn cms(&self) -> &Cards {
            self.cms.as_ref().unwrap()
        }

        pub(super) fn audit(&self) -> &AuditLog {
            self.audit.as_ref().unwrap()
        }

        pub(super) fn import_codes(&self, serials: &[String]) -> ImportOutcome {
            let mut text = String::new();
            for s in serials {
                text.push_str(&format!("{s};12345;12345678\n"));
            }
            let rules = ParseRules::default();
            let ctx = ImportContext {
                vault: self.codes.as_ref().unwrap(),
                hsm: &*self.hsm,
                audit: self.audit(),
                rules: &rules,
            };
            let req = ImportRequest {
                manufacturer: "m".into(),
                expected_cards: None,
                expected_sha256: None,
                actor: "m1".into(),
                role: "manufacturer".into(),
                request_id: String::new(),
            };
            import_file(ctx, text.as_bytes(), &req, &|_| {}).unwrap()
        }

        pub(super) fn registry(
            &self,
            holder: usize,
            cards: &[(usize, Date, Option<usize>)],
            deceased: bool,
        ) -> vault::Result<RegistryOutcome> {
            let entry = holder_entry(holder, cards, deceased);
            self.cms()
                .import_registry(&*self.hsm, self.audit(), &[entry], today(), &actor())
        }

        pub(super) fn store(&self) -> &dyn Store {
            &**self.store.as_ref().unwrap()
        }

        pub(super) fn change(&self, c: usize, change: &Change) -> vault::Result<CardStatus> {
            self.cms().change(
                &*self.hsm,
                self.audit(),
                &serial(c),
                change,
                today(),
                &actor(),
            )
        }
    }

    /// Holder `holder` (surname D'Angelo, born 1985-12-10) with `cards`: (card, expiry,
    /// replaced by).
    pub(super) fn holder_entry(
        holder: usize,
        cards: &[(usize, Date, Option<usize>)],
        deceased: bool,
    ) -> HolderEntry {
        HolderEntry {
            first_line: 2,
            codice_fiscale: cf(holder),
            given_names: format!("Nicolò {holder}"),
            surname: "D'Angelo".into(),
            birth_date: date("1985-12-10"),
            email: Some(format!("h{holder}@example.it")),
            mobile: Some("+393331234567".into()),
            address: Some("Via Roma 1, 00100 Roma".into()),
            deceased,
            cards: cards
                .iter()
                .map(|&(c, expiry, replaced)| CardEntry {
                    line: 2,
                    serial: serial(c),
                    expiry,
                    replaced_by: replaced.map(serial),
                })
                .collect(),
        }
    }

    pub(super) fn holder_activation() -> Change {
        Change::Activate(Activation::Holder {
            document_type: "carta_identita".into(),
            document_number: "CA12345AB".into(),
            consent_ref: "consent-2026-0001".into(),
        })
    }

    pub(super) fn delegate_activation() -> Change {
        Change::Activate(Activation::Delegate {
            given_names: "Anna".into(),
            surname: "Bianchi".into(),
            codice_fiscale: cf(1),
            document_type: "passaporto".into(),
            document_number: "YA1234567".into(),
            delegation_ref: "delega-77".into(),
            consent_ref: "consent-2026-0002".into(),
        })
    }

    #[test]
    fn a_code_request_for_a_suspended_or_revoked_card_is_refused() {
        let w = World::new();
        w.registry(0, &[(1, date("2030-01-01"), None)], false)
            .unwrap();
        assert!(matches!(
            w.import_codes(&[serial(1)]),
            ImportOutcome::Committed(_)
        ));
        let release = || {
            w.cms()
                .release_codes(&*w.hsm, w.audit(), &serial(1), "test", today(), &actor())
        };
        // Issued: refused.
        assert!(matches!(release(), Err(Error::WrongState { .. })));
        w.change(1, &delegate_activation()).unwrap();
        let codes = release().unwrap();
        assert_eq!(codes.pin.expose_secret(), b"12345");
        w.change(1, &Change::Suspend(Reason::Lost)).unwrap();
        let err = release().unwrap_err();
        assert!(
            matches!(&err, Error::WrongState { state, .. } if state == "suspended"),
            "{err}"
        );
        w.change(1, &Change::Reactivate).unwrap();
        assert!(release().is_ok());
        let st = w.change(1, &Change::Revoke(Reason::Stolen)).unwrap();
        assert!(!st.codes_held, "revocation deletes the codes");
        let err = release().unwrap_err();
        assert!(
            matches!(&err, Error::WrongState { state, .. } if state == "revoked"),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_transition_is_refused_with_the_state_and_changes_nothing() {
        let w = World::new();
        w.registry(0, &[(1, date("2030-01-01"), None)], false)
            .unwrap();
        let before = w.cms().card(&serial(1)).unwrap();
        let err = w.change(1, &Change::Reactivate).unwrap_err();
        assert!(
            matches!(&err, Error::WrongState { subject, state, wanted }
                if *subject == vault::Subject::Card(serial(1)) && state == "issued" && wanted == "suspended"),
            "{err}"
        );
        assert_eq!(w.cms().card(&serial(1)).unwrap(), before);
        assert!(matches!(
            w.change(9, &Change::Reactivate),
            Err(Error::Missing(vault::Missing::Card(s))) if s == serial(9)
        ));
    }

    #[test]
    fn registry_revokes_implicitly_deceased_replaced_and_expired() {
        let w = World::new();
        w.registry(
            0,
            &[(1, date("2030-01-01"), None), (2, date("2030-01-01"), None)],
            false,
        )
        .unwrap();
        w.import_codes(&[serial(1), serial(2), serial(3)]);
        // Replacement: card 1 replaced by 3; card 4 already expired.
        let out = w
            .registry(
                0,
                &[
                    (1, date("2030-01-01"), Some(3)),
                    (3, date("2031-01-01"), None),
                    (4, date("2020-01-01"), None),
                ],
                false,
            )
            .unwrap();
        let mut revoked = out.revoked.clone();
        revoked.sort();
        assert_eq!(
            revoked,
            vec![(serial(1), Reason::Replaced), (serial(4), Reason::Expired)]
        );
        assert_eq!(
            w.cms().card(&serial(1)).unwrap().unwrap().state,
            CardState::Revoked
        );
        assert!(w
            .codes
            .as_ref()
            .unwrap()
            .locate(&serial(1))
            .unwrap()
            .is_none());
        assert!(w
            .codes
            .as_ref()
            .unwrap()
            .locate(&serial(3))
            .unwrap()
            .is_some());
        // Deceased: all remaining cards revoked.
        let out = w.registry(0, &[], true).unwrap();
        let mut revoked: Vec<String> = out.revoked.iter().map(|(s, _)| s.clone()).collect();
        revoked.sort();
        assert_eq!(revoked, vec![serial(2), serial(3)]);
        assert!(out.revoked.iter().all(|(_, r)| *r == Reason::Deceased));
        // A card of another holder is refused, and nothing of that file applies.
        let err = w
            .registry(1, &[(2, date("2030-01-01"), None)], false)
            .unwrap_err();
        assert!(
            matches!(
                err,
                vault::Error::Refusal(vault::Refusal::CardOfAnotherHolder { line: 2 })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn expiry_is_enforced_on_access_and_by_the_sweep() {
        let w = World::new();
        w.registry(
            0,
            &[(1, date("2026-06-10"), None), (2, date("2026-07-01"), None)],
            false,
        )
        .unwrap();
        w.change(1, &holder_activation()).unwrap();
        let later = date("2026-06-20");
        let st = w
            .cms()
            .status(w.audit(), &serial(1), later, &actor())
            .unwrap();
        assert_eq!(st.state, CardState::Revoked);
        assert_eq!(st.reason, Some(Reason::Expired));
        let swept = w
            .cms()
            .sweep_expired(w.audit(), date("2026-08-01"), &actor())
            .unwrap();
        assert_eq!(swept, vec![serial(2)]);
    }

    #[test]
    fn search_finds_by_exact_keys_and_leaves_no_clear_personal_data_in_the_store() {
        let w = World::new();
        w.registry(0, &[(1, date("2030-01-01"), None)], false)
            .unwrap();
        w.registry(2, &[(2, date("2030-01-01"), None)], false)
            .unwrap();
        w.change(1, &delegate_activation()).unwrap();
        let found = w
            .cms()
            .search(
                &*w.hsm,
                w.audit(),
                &SearchKey::CodiceFiscale(cf(0).to_lowercase()),
                None,
                10,
                &actor(),
            )
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].personal.codice_fiscale, cf(0));
        assert_eq!(found[0].cards, vec![(serial(1), CardState::Active)]);
        let by_name = w
            .cms()
            .search(
                &*w.hsm,
                w.audit(),
                &SearchKey::SurnameBirth {
                    surname: " d'angelo ".into(),
                    birth_date: date("1985-12-10"),
                },
                None,
                10,
                &actor(),
            )
            .unwrap();
        assert_eq!(
            by_name.len(),
            2,
            "both holders share surname and birth date"
        );
        let none = w
            .cms()
            .search(
                &*w.hsm,
                w.audit(),
                &SearchKey::CodiceFiscale(cf(3)),
                None,
                10,
                &actor(),
            )
            .unwrap();
        assert!(none.is_empty());
        // Scan every file of the store for the clear personal data.
        let store = w.store.as_ref().unwrap();
        store.flush().unwrap();
        let needles: Vec<Vec<u8>> = [
            cf(0),
            cf(1),
            "D'Angelo".into(),
            "D'ANGELO".into(),
            "Bianchi".into(),
            "Nicolò 0".into(),
            "h0@example.it".into(),
            "+393331234567".into(),
            "Via Roma".into(),
            "YA1234567".into(),
            "CA12345AB".into(),
        ]
        .into_iter()
        .map(String::into_bytes)
        .collect();
        let mut scanned = 0;
        for path in walk(w.dir.path()) {
            let bytes = std::fs::read(&path).unwrap();
            scanned += bytes.len();
            for n in &needles {
                assert!(
                    !bytes.windows(n.len()).any(|win| win == &n[..]),
                    "{} holds {:?} in clear",
                    path.display(),
                    String::from_utf8_lossy(n)
                );
            }
        }
        assert!(scanned > 10_000, "scanned {scanned} bytes");
    }

    /// The holder ids a search finds, `limit` at a time after `after`.
    fn found(w: &World, key: &SearchKey, after: Option<&str>, limit: usize) -> Vec<String> {
        w.cms()
            .search(&*w.hsm, w.audit(), key, after, limit, &actor())
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect()
    }

    fn surname(s: &str) -> SearchKey {
        SearchKey::SurnameBirth {
            surname: s.into(),
            birth_date: date("1985-12-10"),
        }
    }

    #[test]
    fn a_bulk_file_reads_like_single_entries_and_later_changes_win() {
        let mut w = World::new();
        w.import_codes(&[serial(0), serial(1), serial(2)]);
        w.cms().set_bulk_min(2);
        let first: Vec<HolderEntry> = (0..3)
            .map(|h| holder_entry(h, &[(h, date("2030-01-01"), None)], false))
            .collect();
        let out = w
            .cms()
            .import_registry(&*w.hsm, w.audit(), &first, today(), &actor())
            .unwrap();
        assert_eq!((out.holders_created, out.cards_created), (3, 3));
        // Nothing in the per-entry trees: the holders and cards are in the bulk file.
        assert_eq!(
            w.store().get(Tree::Cards, serial(0).as_bytes()).unwrap(),
            None
        );
        assert_eq!(w.store().get(Tree::Holders, b"h000001").unwrap(), None);
        assert!(w.store().last(Tree::RegistryFiles).unwrap().is_some());
        let card = w.cms().card(&serial(1)).unwrap().unwrap();
        assert_eq!(
            (card.state, card.holder.as_str()),
            (CardState::Issued, "h000002")
        );
        assert_eq!(
            found(&w, &SearchKey::CodiceFiscale(cf(2)), None, 10),
            ["h000003"]
        );
        assert_eq!(
            found(&w, &surname("D'Angelo"), None, 10),
            ["h000001", "h000002", "h000003"]
        );
        assert_eq!(
            found(&w, &surname("D'Angelo"), Some("h000001"), 1),
            ["h000002"]
        );

        // A lifecycle change and a small file (per entry) win over the bulk file; the bulk
        // file's index entry for the old surname no longer finds holder 2.
        w.change(0, &holder_activation()).unwrap();
        w.cms().set_bulk_min(usize::MAX);
        let mut renamed = holder_entry(1, &[(1, date("2030-01-01"), None)], false);
        renamed.surname = "Rossi".into();
        let out = w
            .cms()
            .import_registry(&*w.hsm, w.audit(), &[renamed], today(), &actor())
            .unwrap();
        assert_eq!(out.holders_updated, 1);
        assert_eq!(
            w.cms().card(&serial(0)).unwrap().unwrap().state,
            CardState::Active
        );
        assert_eq!(found(&w, &surname("Rossi"), None, 10), ["h000002"]);
        assert_eq!(
            found(&w, &surname("D'Angelo"), None, 10),
            ["h000001", "h000003"]
        );

        // A second bulk file rewrites holders 0 and 1: it keeps the activation (read from the
        // per-entry tree), and takes the per-entry copies out so that it wins.
        w.cms().set_bulk_min(2);
        let second: Vec<HolderEntry> = (0..2)
            .map(|h| holder_entry(h, &[(h, date("2031-01-01"), None)], false))
            .collect();
        let out = w
            .cms()
            .import_registry(&*w.hsm, w.audit(), &second, today(), &actor())
            .unwrap();
        assert_eq!((out.holders_created, out.holders_updated), (0, 2));
        assert_eq!(
            w.store().get(Tree::Cards, serial(0).as_bytes()).unwrap(),
            None
        );
        assert_eq!(w.store().get(Tree::Holders, b"h000002").unwrap(), None);
        for round in 0..2 {
            let card = w.cms().card(&serial(0)).unwrap().unwrap();
            assert_eq!(card.state, CardState::Active, "round {round}");
            assert_eq!(card.expiry, Some(date("2031-01-01")), "round {round}");
            assert!(
                found(&w, &surname("Rossi"), None, 10).is_empty(),
                "round {round}"
            );
            assert_eq!(
                found(&w, &surname("D'Angelo"), None, 10),
                ["h000001", "h000002", "h000003"],
                "round {round}"
            );
            w.restart();
        }

        // The expiry sweep sees the bulk files' expiry keys, each checked against its card:
        // card 2 expires on 2030-01-01 (first file); cards 0 and 1 now on 2031-01-01.
        let revoked = w
            .cms()
            .sweep_expired(w.audit(), date("2030-06-01"), &actor())
            .unwrap();
        assert_eq!(revoked, [serial(2)]);
        assert_eq!(
            w.cms().card(&serial(2)).unwrap().unwrap().state,
            CardState::Revoked
        );
        assert_eq!(
            w.cms().card(&serial(1)).unwrap().unwrap().state,
            CardState::Issued
        );
        let report = w.audit().verify().unwrap();
        assert!(report.intact(), "{report:?}");
    }

    #[test]
    fn a_refused_bulk_file_writes_nothing() {
        let w = World::new();
        w.cms().set_bulk_min(1);
        w.registry(0, &[(0, date("2030-01-01"), None)], false)
            .unwrap();
        // A second file whose card belongs to another holder is refused before any write.
        let err = w
            .registry(1, &[(0, date("2030-01-01"), None)], false)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Refusal(vault::Refusal::CardOfAnotherHolder { .. })
            ),
            "{err}"
        );
        assert!(found(&w, &SearchKey::CodiceFiscale(cf(1)), None, 10).is_empty());
        let staged = w
            .store()
            .keys(Tree::RegistrySegments, &2u64.to_be_bytes(), None, 10)
            .unwrap();
        assert!(staged.is_empty(), "{staged:?}");
        assert_eq!(w.cms().recover_registry().unwrap(), 0);
    }

    #[test]
    fn reports_are_opened_commented_assigned_and_closed() {
        let w = World::new();
        w.registry(0, &[(1, date("2030-01-01"), None)], false)
            .unwrap();
        let r = w
            .cms()
            .open_report(
                &*w.hsm,
                w.audit(),
                Some(&serial(1)),
                "Lettore non legge",
                "La carta di Mario non viene letta",
                &actor(),
            )
            .unwrap();
        let support = Actor {
            id: "s1".into(),
            role: "support".into(),
            request_id: String::new(),
        };
        use reports::ReportStep;
        w.cms()
            .report_step(
                &*w.hsm,
                w.audit(),
                r.id,
                &ReportStep::Assign("s1".into()),
                &support,
            )
            .unwrap();
        w.cms()
            .report_step(
                &*w.hsm,
                w.audit(),
                r.id,
                &ReportStep::Comment("provato altro lettore".into()),
                &support,
            )
            .unwrap();
        let closed = w
            .cms()
            .report_step(
                &*w.hsm,
                w.audit(),
                r.id,
                &ReportStep::Close("risolto".into()),
                &support,
            )
            .unwrap();
        assert_eq!(closed.state, reports::ReportState::Closed);
        assert_eq!(closed.comments.len(), 2);
        assert_eq!(closed.text, "La carta di Mario non viene letta");
        assert!(matches!(
            w.cms().report_step(
                &*w.hsm,
                w.audit(),
                r.id,
                &ReportStep::Comment("x".into()),
                &support
            ),
            Err(Error::WrongState { .. })
        ));
        let open = w
            .cms()
            .reports(&*w.hsm, w.audit(), 0, 10, false, &support)
            .unwrap();
        assert!(open.is_empty());
        assert_eq!(
            w.cms()
                .reports(&*w.hsm, w.audit(), 0, 10, true, &support)
                .unwrap()
                .len(),
            1
        );
    }

    // ------------------------------------------------------------------------------------------
    // The model test
    // ------------------------------------------------------------------------------------------

    const CARDS: usize = 6;
    const HOLDERS: usize = 3;

    #[derive(Debug, Clone)]
    enum Op {
        ImportCodes(Vec<usize>),
        Registry {
            holder: usize,
            cards: Vec<(usize, bool, Option<usize>)>,
            deceased: bool,
            /// Written as a bulk file.
            bulk: bool,
        },
        Activate(usize, bool),
        Suspend(usize),
        Reactivate(usize),
        Revoke(usize),
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        let card = 0..CARDS;
        prop_oneof![
            proptest::collection::vec(0..CARDS, 1..3).prop_map(Op::ImportCodes),
            (
                0..HOLDERS,
                proptest::collection::vec(
                    (
                        0..CARDS,
                        proptest::bool::weighted(0.15),
                        proptest::option::weighted(0.1, 0..CARDS)
                    ),
                    0..3
                ),
                proptest::bool::weighted(0.08),
                any::<bool>()
            )
                .prop_map(|(holder, cards, deceased, bulk)| Op::Registry {
                    holder,
                    cards,
                    deceased,
                    bulk
                }),
            (card.clone(), any::<bool>()).prop_map(|(c, d)| Op::Activate(c, d)),
            card.clone().prop_map(Op::Suspend),
            card.clone().prop_map(Op::Reactivate),
            card.prop_map(Op::Revoke),
            Just(Op::Restart),
        ]
    }

    /// The model: each card's holder and state, the cards codes were imported for, the holders
    /// marked deceased.
    #[derive(Debug, Default, Clone)]
    struct Model {
        cards: HashMap<usize, (usize, CardState)>,
        imported: std::collections::HashSet<usize>,
        deceased: std::collections::HashSet<usize>,
    }

    fn run(ops: &[Op]) {
        let mut w = World::new();
        let mut m = Model::default();
        // Codes deleted by a revocation stay deleted.
        let mut codes_deleted: std::collections::HashSet<usize> = Default::default();
        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::ImportCodes(cs) => {
                    let mut cs = cs.clone();
                    cs.sort();
                    cs.dedup();
                    let serials: Vec<String> = cs.iter().map(|&c| serial(c)).collect();
                    let out = w.import_codes(&serials);
                    if cs.iter().any(|c| m.imported.contains(c)) {
                        assert!(
                            matches!(
                                out,
                                ImportOutcome::Quarantined(_) | ImportOutcome::AlreadyStored(_)
                            ),
                            "step {step}: {out:?}"
                        );
                    } else {
                        assert!(
                            matches!(out, ImportOutcome::Committed(_)),
                            "step {step}: {out:?}"
                        );
                        m.imported.extend(cs);
                    }
                }
                Op::Registry {
                    holder,
                    cards,
                    deceased,
                    bulk,
                } => {
                    let mut seen = std::collections::HashSet::new();
                    let entries: Vec<(usize, Date, Option<usize>)> = cards
                        .iter()
                        .filter(|(c, _, r)| seen.insert(*c) && *r != Some(*c))
                        .map(|&(c, expired, r)| {
                            (
                                c,
                                if expired {
                                    date("2020-01-01")
                                } else {
                                    date("2030-01-01")
                                },
                                r,
                            )
                        })
                        .collect();
                    let conflict = entries
                        .iter()
                        .any(|(c, _, _)| m.cards.get(c).is_some_and(|(h, _)| h != holder));
                    w.cms().set_bulk_min(if *bulk { 1 } else { usize::MAX });
                    let res = w.registry(*holder, &entries, *deceased);
                    if conflict {
                        assert!(
                            res.is_err(),
                            "step {step}: a card of another holder was accepted"
                        );
                        continue;
                    }
                    res.unwrap_or_else(|e| panic!("step {step}: {e}"));
                    for &(c, expiry, r) in &entries {
                        let st = m.cards.entry(c).or_insert((*holder, CardState::Issued));
                        if st.1 != CardState::Revoked && (r.is_some() || expiry < today()) {
                            st.1 = CardState::Revoked;
                            codes_deleted.insert(c);
                        }
                    }
                    if *deceased {
                        m.deceased.insert(*holder);
                    }
                    if m.deceased.contains(holder) {
                        for (c, (h, s)) in m.cards.iter_mut() {
                            if h == holder && *s != CardState::Revoked {
                                *s = CardState::Revoked;
                                codes_deleted.insert(*c);
                            }
                        }
                    }
                }
                Op::Activate(c, delegate) => {
                    let change = if *delegate {
                        delegate_activation()
                    } else {
                        holder_activation()
                    };
                    let res = w.change(*c, &change);
                    match m.cards.get_mut(c) {
                        None => assert!(
                            matches!(res, Err(Error::Missing(vault::Missing::Card(_)))),
                            "step {step}"
                        ),
                        Some((_, s)) if *s == CardState::Issued => {
                            res.unwrap_or_else(|e| panic!("step {step}: {e}"));
                            *s = CardState::Active;
                        }
                        Some(_) => assert!(
                            matches!(res, Err(Error::WrongState { .. })),
                            "step {step}: {res:?}"
                        ),
                    }
                }
                Op::Suspend(c) | Op::Reactivate(c) | Op::Revoke(c) => {
                    let (change, from, to): (Change, &[CardState], CardState) = match op {
                        Op::Suspend(_) => (
                            Change::Suspend(Reason::Lost),
                            &[CardState::Active],
                            CardState::Suspended,
                        ),
                        Op::Reactivate(_) => (
                            Change::Reactivate,
                            &[CardState::Suspended],
                            CardState::Active,
                        ),
                        _ => (
                            Change::Revoke(Reason::Other),
                            &[CardState::Issued, CardState::Active, CardState::Suspended],
                            CardState::Revoked,
                        ),
                    };
                    let res = w.change(*c, &change);
                    match m.cards.get_mut(c) {
                        None => assert!(
                            matches!(res, Err(Error::Missing(vault::Missing::Card(_)))),
                            "step {step}"
                        ),
                        Some((_, s)) if from.contains(s) => {
                            res.unwrap_or_else(|e| panic!("step {step}: {e}"));
                            *s = to;
                            if to == CardState::Revoked {
                                codes_deleted.insert(*c);
                            }
                        }
                        Some((_, s)) => {
                            let err = res.unwrap_err();
                            assert!(
                                matches!(&err, Error::WrongState { state, .. } if *state == s.to_string()),
                                "step {step}: {err}"
                            );
                        }
                    }
                }
                Op::Restart => w.restart(),
            }
            // The vault and the model agree on every card.
            for c in 0..CARDS {
                let got = w
                    .cms()
                    .card(&serial(c))
                    .unwrap()
                    .map(|r| (r.state, r.holder));
                let want = m.cards.get(&c).map(|(_, s)| *s);
                assert_eq!(
                    got.as_ref().map(|g| g.0),
                    want,
                    "step {step} ({op:?}): card {c}"
                );
                let held = w
                    .codes
                    .as_ref()
                    .unwrap()
                    .locate(&serial(c))
                    .unwrap()
                    .is_some();
                let want_held = m.imported.contains(&c) && !codes_deleted.contains(&c);
                assert_eq!(held, want_held, "step {step} ({op:?}): codes of card {c}");
            }
        }
        let report = w.audit().verify().unwrap();
        assert!(report.intact(), "{report:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
        #[test]
        fn the_vault_follows_the_model(ops in proptest::collection::vec(op(), 1..25)) {
            run(&ops);
        }
    }

    /// Every file under `dir`.
    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
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
}

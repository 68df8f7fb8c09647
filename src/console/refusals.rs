//! The console's words for the vault's typed refusals ([`vault::Refusal`]), in Italian and
//! English: one catalogue text per variant, filled from the variant's facts
//! ([`vault::Refusal::facts`]: the current state, the needed one, counts, the card serial the
//! page already shows). The API's English message is for programs' logs; a person at the
//! counter reads these. No text shows an error code, a PIN or PUK (no refusal holds one), or
//! personal data the page does not show already.
//!
//! A text names a fact as `{name}`; [`text`] fills it, words a few facts (a contact, a role,
//! a state) from the message catalogue, and words the refusals nested in another (why neither
//! SMS nor e-mail can be used) the same way.

use super::messages::{Lang, MESSAGES};
use vault::Refusal;

/// `(reason, italiano, English)`: the text of each refusal variant, by
/// [`Refusal::reason`].
pub const REFUSALS: &[(&str, &str, &str)] = &[
    ("keyring_full", "Il portachiavi ha usato tutti gli identificativi di chiave dati.", "The keyring has used every data key id."),
    ("no_active_term", "L'HSM non ha un termine attivo.", "The HSM has no active term."),
    ("rewrap_mismatch", "L'HSM ha ricifrato {key} sotto {got} invece di {want}.", "The HSM rewrapped {key} under {got}, not {want}."),
    ("term_in_use", "Il termine {term} cifra ancora {data_keys} chiavi dati: ruotare prima, poi ritirarlo.", "Term {term} still wraps {data_keys} data key(s): rotate first, then retire it."),
    ("term_active", "{term} è il termine attivo: ruotare prima di ritirarlo.", "{term} is the active term: rotate before retiring it."),
    ("term_retired", "{term} è già ritirato.", "{term} is already retired."),
    ("threshold", "Una soglia di {threshold} su {shares} quote non è accettata.", "A threshold of {threshold} of {shares} shares is not accepted."),
    ("no_shares", "Il fornitore dell'HSM non ha quote dei custodi.", "The HSM provider holds no custodian shares."),
    ("anchor_backwards", "L'ancora di audit dell'HSM è all'evento {held}: non torna indietro a {given}.", "The HSM's audit anchor is at event {held}: it does not move back to {given}."),
    ("anchor_forked", "L'ancora di audit dell'HSM ha già un altro evento {seq}: la catena si è biforcata.", "The HSM's audit anchor already holds another event {seq}: the chain has forked."),
    ("subject_too_long", "L'identità del record è di {bytes} byte, al massimo 65535.", "The record identity is {bytes} bytes, at most 65535."),
    ("counter_exhausted", "{key} non ha più contatori disponibili.", "{key} has no counter left."),
    ("encryption_limit", "{key} ha raggiunto il limite di {limit} cifrature: serve una nuova chiave dati.", "{key} reached its limit of {limit} encryptions: a new data key is needed."),
    ("not_staging", "Il lotto {batch} è {state}, non in preparazione.", "Batch {batch} is {state}, not staging."),
    ("repeats_serials", "Il lotto {batch} ripete dei numeri di carta: va respinto.", "Batch {batch} repeats card serials: reject it."),
    ("audit_broken", "La catena di audit non si verifica ({damage} all'evento {seq}): ripristinare l'archivio.", "The audit chain does not verify ({damage} at event {seq}): restore the store."),
    ("prune_on_broken", "La catena di audit non si verifica ({damage} all'evento {seq}): nessuna potatura.", "The audit chain does not verify ({damage} at event {seq}): nothing is pruned."),
    ("stale_hsm_state", "Lo stato dell'HSM è alla generazione {current}, ma l'archivio ha visto la {seen}: è stata rimessa una copia vecchia.", "The HSM state is at generation {current} but the store has seen {seen}: an older copy was put back."),
    ("job_unfinished", "Il lavoro di {proposal} ({op}) non è finito: approvare quando lo sarà.", "The job of {proposal} ({op}) is not finished: approve once it is."),
    ("lapsed", "{proposal} è scaduta senza approvazione: proporla di nuovo.", "{proposal} lapsed without approval: propose it again."),
    ("kcv_mismatch", "{proposal}: la chiave indicata ha KCV {found}, non {expected}; nulla è stato approvato.", "{proposal}: the key it names has KCV {found}, not {expected}; nothing was approved."),
    ("key_changed", "{proposal}: la chiave è cambiata dalla proposta (KCV {then} allora, {now} ora): proporla di nuovo.", "{proposal}: the key changed since it was proposed (KCV {then} then, {now} now): propose it again."),
    ("impact_grew", "{proposal} farebbe ora più di quanto dichiarato ({more}): proporla di nuovo.", "{proposal} would now do more than it says ({more}): propose it again."),
    ("cards_need_codes", "Lotto {batch}: {cards} carte hanno ancora bisogno dei codici ({active} attive, {suspended} sospese, {issued} emesse) e {jobs} invii sono in attesa.", "Batch {batch}: {cards} card(s) still need their codes ({active} active, {suspended} suspended, {issued} issued) and {jobs} dispatch job(s) are waiting."),
    ("already_disabled", "L'utenza {account} è già disattivata.", "Account {account} is already disabled."),
    ("account_disabled", "L'utenza {account} è disattivata.", "Account {account} is disabled."),
    ("last_admin", "L'utenza {account} è l'ultimo amministratore attivo.", "Account {account} is the last enabled administrator."),
    ("holder_deceased", "Carta {card}: il titolare risulta deceduto; la carta non si può attivare.", "Card {card}: the holder is registered as deceased; the card cannot be activated."),
    ("codes_not_held", "Carta {card}: i codici non sono disponibili.", "Card {card}: its codes are not held."),
    ("no_password_for_role", "Un'utenza con ruolo {role} non può avere una password (le utenze di sistema usano un token).", "An account with role {role} cannot have a password (machine accounts use a token)."),
    ("current_password_mismatch", "La password attuale non è corretta.", "The current password is wrong."),
    ("no_contact", "Carta {card}: il titolare non ha un {contact} registrato.", "Card {card}: the holder has no registered {contact}."),
    ("contact_changed", "Carta {card}: il {contact} del titolare è cambiato dopo l'ultima identificazione; identificare di nuovo il titolare allo sportello.", "Card {card}: the holder's {contact} changed after the last identification; identify the holder again at the counter."),
    ("no_remote_channel", "Carta {card}: nessun canale remoto utilizzabile. SMS: {sms} E-mail: {email}", "Card {card}: no remote channel can be used. SMS: {sms} E-mail: {email}"),
    ("part_sending", "Carta {card}: la parte {part} è in invio proprio ora (lavoro {job}); riprovare più tardi.", "Card {card}: part {part} is being sent now (job {job}); try again later."),
    ("dispatch_in_force", "Carta {card}: è già in vigore la consegna {dispatch} ({plan}). Una nuova consegna deve sostituirla, con un motivo; oppure si reinvia una parte.", "Card {card}: delivery {dispatch} ({plan}) is in force. A new delivery must replace it, with a reason; or resend a part instead."),
    ("counter_part", "Carta {card}: la parte {part} si stampa allo sportello e non si reinvia a distanza.", "Card {card}: part {part} is printed at the counter and cannot be resent remotely."),
    ("awaiting_counter", "Carta {card}: la parte {part} attende la consegna della parte A allo sportello (lavoro {job}).", "Card {card}: part {part} waits until part A is handed over at the counter (job {job})."),
    ("no_split_dispatch", "Carta {card}: nessuna consegna divisa in vigore, quindi nessuna parte A da stampare; scegliere prima una consegna «sportello».", "Card {card}: no split delivery in force, so no part A to print; choose a counter delivery first."),
    ("plan_in_force", "Carta {card}: la consegna in vigore è {plan} ({dispatch}); si stampa solo la sua parte A.", "Card {card}: the delivery in force is {plan} ({dispatch}); only its part A is printed."),
    ("handed_over", "Carta {card}: la parte A della consegna {dispatch} è già stata consegnata (da {by}); si può solo ristampare.", "Card {card}: part A of delivery {dispatch} was already handed over (by {by}); it can only be reprinted."),
    ("counter_part_state", "Carta {card}: la parte A della consegna {dispatch} è {state}.", "Card {card}: part A of delivery {dispatch} is {state}."),
    ("no_remote_destination", "Il lavoro {job} sul canale {channel} non ha una destinazione remota.", "Job {job} on channel {channel} has no remote destination."),
    ("print_run_going", "È in corso un'altra stampa: attendere che finisca.", "Another print run is going: wait for it to end."),
    ("recover_while_running", "È in corso una stampa: il ripristino si fa solo all'avvio.", "A print run is going: runs are recovered only at start-up."),
    ("mailer_repeats", "Esito {outcome}: la busta {mailer} è ripetuta.", "Outcome {outcome}: mailer {mailer} repeats."),
    ("mailer_unknown", "Esito {outcome}: la busta {mailer} non esiste.", "Outcome {outcome}: there is no mailer {mailer}."),
    ("mailer_not_outstanding", "Esito {outcome}: la busta {mailer} è {state}; solo una busta in sospeso può diventare {wanted}.", "Outcome {outcome}: mailer {mailer} is {state}; only an outstanding mailer can become {wanted}."),
    ("card_of_another_holder", "Riga {line}: la carta appartiene a un altro titolare; nulla è stato applicato.", "Line {line}: the card belongs to another holder; nothing was applied."),
    ("share_count", "Attese {expected} quote, l'HSM ne ha prodotte {produced}.", "Expected {expected} shares, the HSM produced {produced}."),
    ("share_file_unwritable", "Impossibile scrivere il file della quota {path}: {error}", "Cannot write the share file {path}: {error}"),
    ("no_share_dir", "Un rekey richiede una cartella per le nuove quote, non configurata sul server.", "A rekey needs a directory for the new shares, not configured on the server."),
    ("rollback_unsealed", "L'HSM è aperto: un ritorno indietro si accetta solo a HSM sigillato, con il quorum dei custodi.", "The HSM is unsealed: a rollback is accepted only on a sealed HSM, with the custodians' quorum."),
    ("not_holder_key", "{key} non è una chiave dei dati personali.", "{key} is not a personal-data key."),
    ("release_not_audited", "Carta {card}: i codici si rilasciano solo con un rilascio registrato nell'audit.", "Card {card}: its codes are released only with an audited release."),
    ("print_run_not_audited", "Lotto {batch}: i codici si leggono solo per una sua stampa registrata nell'audit.", "Batch {batch}: its codes are read only for an audited print run of it."),
    ("hsm_exists", "{place} contiene già un HSM di plico: non viene sovrascritto.", "{place} already holds a plico HSM: it is not overwritten."),
    ("token_pin_refused", "Il PIN utente del token PKCS#11 {token} è stato rifiutato.", "The user PIN of PKCS#11 token {token} was refused."),
    ("token_pin_locked", "Il PIN utente del token PKCS#11 {token} è bloccato: deve sbloccarlo il suo responsabile della sicurezza.", "The user PIN of PKCS#11 token {token} is locked: its security officer must reset it."),
    ("mechanism_unavailable", "Il meccanismo HSM {mechanism} non si può usare: usare {instead}.", "HSM mechanism {mechanism} cannot be used: use {instead}."),
    ("token_of_person", "L'utenza {account} accede con un secondo fattore: il suo token non vale sull'API.", "Account {account} logs in with a second factor: its token is not accepted on the API."),
];

/// Catalogue words for a few facts: `contact_mobile` ("numero di cellulare"), a role
/// (`role_operator`), a state (`state_active`, `job_queued`). Any other value stays as it is
/// (numbers, serials, plans, ids).
fn word(lang: Lang, name: &str, value: &str) -> String {
    let keys: Vec<String> = match name {
        "contact" => vec![format!("contact_{value}")],
        "role" => vec![format!("role_{value}")],
        "state" | "wanted" => vec![format!("state_{value}"), format!("job_{value}")],
        _ => Vec::new(),
    };
    keys.iter()
        .find_map(|k| MESSAGES.iter().find(|m| m.0 == k))
        .map(|(_, it, en)| if lang == Lang::En { *en } else { *it })
        .unwrap_or(value)
        .to_owned()
}

/// The refusal in `lang`, filled from its facts; `None` for a variant without a text (one
/// added to the vault later: the page then shows the API's message).
pub fn text(lang: Lang, refusal: &Refusal) -> Option<String> {
    let (_, it, en) = REFUSALS.iter().find(|r| r.0 == refusal.reason())?;
    let mut out = if lang == Lang::En { *en } else { *it }.to_owned();
    let nested = refusal.nested();
    for (name, value) in refusal.facts() {
        let filled = match nested.iter().find(|(n, _)| *n == name) {
            Some((_, inner)) => text(lang, inner).unwrap_or_else(|| inner.without_card()),
            None => word(lang, name, &value),
        };
        out = out.replace(&format!("{{{name}}}"), &filled);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use vault::{
        BatchId, BatchState, DataKeyId, Denial, Kcv, ProposalId, Role, ShareRefusal, TermId,
    };

    /// One refusal of every variant (a variant added to the vault must be added here, and
    /// given its texts).
    fn every_refusal() -> Vec<Refusal> {
        let card = || "80380000000000000701".to_owned();
        let kcv = Some(Kcv::from_bytes([0xA1, 0xB2, 0xC3]));
        vec![
            Refusal::KeyringFull,
            Refusal::NoActiveTerm,
            Refusal::RewrapMismatch {
                key: DataKeyId(4),
                got: TermId(2),
                want: TermId(3),
            },
            Refusal::TermInUse {
                term: TermId(2),
                data_keys: 17,
            },
            Refusal::TermActive { term: TermId(3) },
            Refusal::TermRetired { term: TermId(1) },
            Refusal::Threshold {
                threshold: 4,
                shares: 3,
            },
            Refusal::NoShares,
            Refusal::AnchorBackwards { held: 10, given: 9 },
            Refusal::AnchorForked { seq: 10 },
            Refusal::SubjectTooLong { bytes: 70000 },
            Refusal::CounterExhausted { key: DataKeyId(5) },
            Refusal::EncryptionLimit {
                key: DataKeyId(5),
                limit: 1000,
            },
            Refusal::NotStaging {
                batch: BatchId(9),
                state: BatchState::Committed,
            },
            Refusal::RepeatsSerials { batch: BatchId(9) },
            Refusal::AuditBroken {
                damage: vault::Damage::Changed,
                seq: 41,
                detail: "hash".into(),
            },
            Refusal::PruneOnBroken {
                damage: vault::Damage::Changed,
                seq: 41,
            },
            Refusal::StaleHsmState {
                current: 3,
                seen: 5,
            },
            Refusal::JobUnfinished {
                proposal: ProposalId(7),
                op: "rotate".into(),
            },
            Refusal::Lapsed {
                proposal: ProposalId(7),
            },
            Refusal::KcvMismatch {
                proposal: ProposalId(7),
                expected: Kcv::from_bytes([0x0A, 0x0B, 0x0C]),
                found: kcv,
            },
            Refusal::KeyChanged {
                proposal: ProposalId(7),
                then: kcv,
                now: None,
            },
            Refusal::ImpactGrew {
                proposal: ProposalId(7),
                more: "2 more cards".into(),
            },
            Refusal::CardsNeedCodes {
                batch: BatchId(9),
                active: 3,
                suspended: 2,
                issued: 1,
                jobs: 4,
            },
            Refusal::AlreadyDisabled {
                account: "acc_1".into(),
            },
            Refusal::AccountDisabled {
                account: "acc_1".into(),
            },
            Refusal::LastAdmin {
                account: "acc_1".into(),
            },
            Refusal::HolderDeceased { card: card() },
            Refusal::CodesNotHeld { card: card() },
            Refusal::NoPasswordForRole { role: Role::Cms },
            Refusal::CurrentPasswordMismatch {
                account: "acc_1".into(),
            },
            Refusal::NoContact {
                card: card(),
                contact: "mobile number",
            },
            Refusal::ContactChanged {
                card: card(),
                contact: "e-mail address",
            },
            Refusal::NoRemoteChannel {
                card: card(),
                sms: Box::new(Refusal::NoContact {
                    card: card(),
                    contact: "mobile number",
                }),
                email: Box::new(Refusal::ContactChanged {
                    card: card(),
                    contact: "e-mail address",
                }),
            },
            Refusal::PartSending {
                card: card(),
                part: "B".into(),
                dispatch: Some(3),
                job: 12,
            },
            Refusal::DispatchInForce {
                card: card(),
                dispatch: 3,
                plan: "counter(2)+sms".into(),
                under_way: true,
            },
            Refusal::CounterPart {
                card: card(),
                part: "A".into(),
            },
            Refusal::AwaitingCounter {
                card: card(),
                part: "B".into(),
                job: 12,
            },
            Refusal::NoSplitDispatch { card: card() },
            Refusal::PlanInForce {
                card: card(),
                plan: "counter(2)+email".into(),
                dispatch: 3,
            },
            Refusal::HandedOver {
                card: card(),
                dispatch: 3,
                job: 11,
                by: "acc_2".into(),
            },
            Refusal::CounterPartState {
                card: card(),
                dispatch: 3,
                job: 11,
                state: "cancelled".into(),
            },
            Refusal::NoRemoteDestination {
                job: 11,
                channel: "counter".into(),
            },
            Refusal::PrintRunGoing,
            Refusal::RecoverWhileRunning,
            Refusal::MailerRepeats {
                outcome: 2,
                mailer: 8,
            },
            Refusal::MailerUnknown {
                outcome: 2,
                mailer: 8,
            },
            Refusal::MailerNotOutstanding {
                outcome: 2,
                mailer: 8,
                state: "voided".into(),
                wanted: "delivered".into(),
            },
            Refusal::CardOfAnotherHolder { line: 5 },
            Refusal::ShareCount {
                expected: 3,
                produced: 2,
            },
            Refusal::ShareFileUnwritable {
                path: "/srv/shares/share-1-of-3.txt".into(),
                error: "permission denied".into(),
            },
            Refusal::NoShareDir,
            Refusal::TokenOfPerson {
                account: "acc_1".into(),
            },
            Refusal::NotHolderKey { key: DataKeyId(6) },
            Refusal::RollbackUnsealed,
            Refusal::ReleaseNotAudited { card: card() },
            Refusal::PrintRunNotAudited { batch: BatchId(3) },
            Refusal::HsmExists {
                place: "/var/lib/plico/hsm/hsm-state.json".into(),
            },
            Refusal::TokenPinRefused {
                token: "plico".into(),
            },
            Refusal::TokenPinLocked {
                token: "plico".into(),
            },
            Refusal::MechanismUnavailable {
                mechanism: "kwp",
                instead: "\"pad\"",
            },
        ]
    }

    /// One share refusal of every variant.
    fn every_share_refusal() -> Vec<ShareRefusal> {
        let set = || "0011223344556677".to_owned();
        vec![
            ShareRefusal::Malformed("the share is truncated".into()),
            ShareRefusal::ForeignSet {
                got: set(),
                held: "8899aabbccddeeff".into(),
            },
            ShareRefusal::OtherSetPending {
                got: set(),
                pending: "8899aabbccddeeff".into(),
            },
            ShareRefusal::MixedSets,
            ShareRefusal::QuorumMismatch {
                x: 1,
                threshold: 2,
                shares: 3,
                set: set(),
                set_threshold: 3,
                set_shares: 5,
            },
            ShareRefusal::NoSuchShare { set: set(), x: 4 },
            ShareRefusal::NotIssued { set: set(), x: 4 },
            ShareRefusal::NotCurrent,
            ShareRefusal::AlreadySubmitted { x: 1, more: 1 },
            ShareRefusal::GivenTwice { x: 1 },
            ShareRefusal::TooFew { need: 3, given: 2 },
            ShareRefusal::NoneGiven,
            ShareRefusal::DoNotOpen,
            ShareRefusal::DoNotOpenToken {
                set: set(),
                token: "plico".into(),
            },
            ShareRefusal::NotCurrentQuorum,
        ]
    }

    /// The reasons `docs/api.md` lists (between "The reasons:" and "Other answers"), codes
    /// named there left out.
    fn documented_reasons() -> BTreeSet<String> {
        const API_MD: &str = include_str!("../../docs/api.md");
        let start = API_MD
            .find("The reasons:")
            .expect("docs/api.md lists the reasons");
        let end = start
            + API_MD[start..]
                .find("Other answers")
                .expect("end of the list");
        let codes: BTreeSet<&str> = crate::api::ErrorCode::ALL
            .iter()
            .map(|c| c.as_str())
            .collect();
        API_MD[start..end]
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| {
                !codes.contains(w) && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn docs_list_every_reason_of_every_refusal() {
        let denials = [
            Denial::NotOfficer {
                account: "a".into(),
                role: "operator".into(),
                what: "propose",
            },
            Denial::OwnProposal {
                proposal: ProposalId(1),
                account: "a".into(),
            },
        ];
        let mut in_code: BTreeSet<String> = every_refusal()
            .iter()
            .map(|r| r.reason().to_owned())
            .collect();
        in_code.extend(denials.iter().map(|d| d.reason().to_owned()));
        in_code.extend(every_share_refusal().iter().map(|r| r.reason().to_owned()));
        let shares: BTreeSet<&str> = every_share_refusal()
            .iter()
            .map(ShareRefusal::reason)
            .collect();
        assert_eq!(
            shares.len(),
            every_share_refusal().len(),
            "a share refusal twice"
        );
        assert_eq!(
            documented_reasons(),
            in_code,
            "docs/api.md's list of reasons and the refusals differ"
        );
    }

    #[test]
    fn every_refusal_has_a_text_in_both_languages_filled_from_its_facts() {
        let all = every_refusal();
        let reasons: BTreeSet<&str> = all.iter().map(Refusal::reason).collect();
        assert_eq!(reasons.len(), all.len(), "a variant twice in the list");
        let texts: BTreeSet<&str> = REFUSALS.iter().map(|r| r.0).collect();
        assert_eq!(texts.len(), REFUSALS.len(), "a text twice");
        assert_eq!(
            reasons, texts,
            "a refusal without a text, or a text of no refusal"
        );
        for r in &all {
            for lang in [Lang::It, Lang::En] {
                let t = text(lang, r).unwrap();
                assert!(!t.contains('{') && !t.contains('}'), "{lang:?} {t}");
                // Every fact shows (some in the catalogue's words), none as a raw reason.
                for (name, value) in r.facts() {
                    if [
                        "sms",
                        "email",
                        "contact",
                        "role",
                        "state",
                        "wanted",
                        "under_way",
                    ]
                    .contains(&name)
                    {
                        continue;
                    }
                    let shown = value.as_str() == "-" || t.contains(&value);
                    let unused = !REFUSALS
                        .iter()
                        .any(|(k, it, _)| *k == r.reason() && it.contains(&format!("{{{name}}}")));
                    assert!(shown || unused, "{lang:?} {name}={value}: {t}");
                }
            }
        }
    }

    #[test]
    fn facts_are_worded_in_the_readers_language() {
        let r = Refusal::ContactChanged {
            card: "8038".into(),
            contact: "mobile number",
        };
        assert!(text(Lang::It, &r).unwrap().contains("numero di cellulare"));
        assert!(text(Lang::En, &r).unwrap().contains("mobile number"));
        let nested = Refusal::NoRemoteChannel {
            card: "8038".into(),
            sms: Box::new(Refusal::NoContact {
                card: "8038".into(),
                contact: "mobile number",
            }),
            email: Box::new(Refusal::NoContact {
                card: "8038".into(),
                contact: "e-mail address",
            }),
        };
        let t = text(Lang::It, &nested).unwrap();
        assert!(
            t.contains("cellulare") && t.contains("indirizzo e-mail"),
            "{t}"
        );
        assert!(!t.contains("no_contact"), "{t}");
        let t = text(Lang::It, &Refusal::NoPasswordForRole { role: Role::Cms }).unwrap();
        assert!(t.contains("CMS"), "{t}");
    }
}

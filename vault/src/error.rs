//! The vault's one error type, and the typed refusals inside it.
//!
//! Messages are lower-case and name the thing at fault (a field, a key id, a term), never
//! secret bytes. Every cryptographic failure is the single opaque [`Error::Integrity`]: a caller
//! learns that a blob did not verify, never which check failed.
//!
//! A refusal carries the facts a caller branches on, as values: [`Refusal`] (why the state does
//! not allow the operation: the term and how many data keys it still wraps, the proposal that
//! lapsed, the key and its limit…), [`Error::WrongState`] (a [`Subject`] in a state the change
//! does not start from), [`Denial`] (who may not do it), [`Missing`] (what does not exist),
//! [`ShareRefusal`] (why a custodian share does not count). Tests match these variants, never
//! message text. The rule for bad input is in the crate docs ("Errors"): [`Error::Invalid`]
//! with a message that opens with what is wrong and where.

use crate::account::Role;
use crate::audit::Damage;
use crate::ceremony::ProposalId;
use crate::codes::{BatchId, BatchState};
use crate::envelope::DataKeyId;
use crate::hsm::TermId;
use crate::kcv::Kcv;
use crate::policy::CodeError;
use std::fmt;

/// Errors of the vault and of [`crate::Hsm`] providers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A ciphertext, envelope or wrapped key did not verify (tampered, moved to another card or
    /// key, or damaged). Deliberately says nothing more.
    #[error("integrity check failed")]
    Integrity,

    /// The HSM holds no keys until it is unsealed with custodian shares.
    #[error("the hsm is sealed")]
    Sealed,

    /// A custodian share was refused: why, with its facts (corrupted, foreign, duplicate…).
    /// Nothing was unsealed; the shares submitted before it still count.
    #[error("share refused: {0}")]
    Share(ShareRefusal),

    /// Bad input: a field that does not satisfy its rules. The message names the field and
    /// what is wrong, never a secret value.
    #[error("invalid: {0}")]
    Invalid(String),

    /// Bad input: a share count and threshold that make no share set (a rekey's). Nothing
    /// was proposed.
    #[error("invalid: rekey: {0}")]
    Quorum(Quorum),

    /// The operation is not allowed in the current state: why, with its facts.
    #[error("refused: {0}")]
    Refusal(Refusal),

    /// The caller may not do this, whatever the state (a role without the right, or dual
    /// control).
    #[error("forbidden: {0}")]
    Denied(Denial),

    /// Something named does not exist.
    #[error("not found: {0}")]
    Missing(Missing),

    /// A change that the current state of its subject does not allow (a card's lifecycle).
    /// Nothing was changed; the message names the current state.
    #[error("{subject} is {state}; this needs {wanted}")]
    WrongState {
        /// What was to change (the card, batch, proposal, report or dispatch job).
        subject: Subject,
        /// Its current state.
        state: String,
        /// The states the change starts from.
        wanted: String,
    },

    /// Persistent state could not be read or written; the message names the file.
    #[error("storage: {0}")]
    Storage(String),

    /// The store refused a write or a flush (no space, an I/O error): the change is not
    /// acknowledged, and it is whole or absent, never half. The message names the store (for
    /// the log, never for a client); whether later writes can work is
    /// [`crate::Store::writes`].
    #[error("storage: cannot write: {0}")]
    Unwritable(String),

    /// A PIN or PUK did not satisfy the code policy.
    #[error(transparent)]
    Code(#[from] CodeError),

    /// The platform's cryptographic library failed in a way that is not an integrity failure
    /// (for example the random generator).
    #[error("crypto provider failure: {0}")]
    Provider(&'static str),

    // registry import
    /// A holder registry file was rejected: nothing was applied. `report` lists the problems
    /// by line and field (never a value of the file).
    #[error("invalid: registry file rejected: {report}")]
    RegistryRejected {
        /// How many problems were found in all.
        problems: u64,
        /// The line of the first problem listed (0: the file as a whole).
        first_line: u64,
        /// The field of the first problem listed (`line`, `file`, `surname`…).
        first_field: String,
        /// The problems, one a line, as the registry report writes them.
        report: String,
    },
    /// A holder search asked for more (or fewer) holders at a time than allowed.
    #[error("invalid: limit: 1 to {max}")]
    SearchLimit {
        /// The most holders one search returns.
        max: usize,
    },
    /// A stored registry record is damaged or contradicts another (an index entry without
    /// its holder, an unreadable holder counter or index key).
    #[error("storage: {what}{}", holder.as_ref().map_or(String::new(), |h| format!(" (holder {h})")))]
    RegistryDamaged {
        /// What is damaged.
        what: &'static str,
        /// The holder it concerns, when there is one.
        holder: Option<String>,
    },
}

/// Result alias for the vault.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the current state does not allow an operation. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The keyring has allocated every data key id.
    KeyringFull,
    /// The HSM has no active term (nothing to wrap new keys under).
    NoActiveTerm,
    /// The HSM answered a rewrap of `key` under `got` instead of the asked `want`.
    RewrapMismatch {
        /// The data key.
        key: DataKeyId,
        /// The term the answer is under.
        got: TermId,
        /// The term asked for.
        want: TermId,
    },
    /// `term` still wraps `data_keys` data keys, so it cannot be retired.
    TermInUse {
        /// The term.
        term: TermId,
        /// How many data keys it still wraps.
        data_keys: u64,
    },
    /// `term` is the active term: rotate first.
    TermActive {
        /// The term.
        term: TermId,
    },
    /// `term` is retired already.
    TermRetired {
        /// The term.
        term: TermId,
    },
    /// A custodian threshold that the HSM does not accept (below 2 outside dev mode, or above
    /// the number of shares).
    Threshold {
        /// The threshold asked for.
        threshold: u8,
        /// The number of shares.
        shares: u8,
    },
    /// The HSM provider holds no custodian shares (a test double).
    NoShares,
    /// An envelope's subject (the record identity in the AAD) is longer than 65535 bytes.
    SubjectTooLong {
        /// Its length in bytes.
        bytes: usize,
    },
    /// `key` has no 32-bit nonce counter left.
    CounterExhausted {
        /// The data key.
        key: DataKeyId,
    },
    /// `key` reached its limit of encryptions (NIST SP 800-38D): use a new data key.
    EncryptionLimit {
        /// The data key.
        key: DataKeyId,
        /// The limit.
        limit: u64,
    },
    /// A batch that is not being staged was asked to commit.
    NotStaging {
        /// The batch.
        batch: BatchId,
        /// Its state.
        state: BatchState,
    },
    /// A staged batch repeats serials; it can only be rejected.
    RepeatsSerials {
        /// The batch.
        batch: BatchId,
    },
    /// The audit chain does not verify; the service does not start on it.
    AuditBroken {
        /// The damage found.
        damage: Damage,
        /// The event where it was found.
        seq: u64,
        /// What was found there.
        detail: String,
    },
    /// The audit chain does not verify, so nothing is pruned.
    PruneOnBroken {
        /// The damage found.
        damage: Damage,
        /// The event where it was found.
        seq: u64,
    },
    /// The HSM state is older than one this store has seen (a backup put back).
    StaleHsmState {
        /// The generation of the HSM state.
        current: u64,
        /// The latest generation the store has seen.
        seen: u64,
    },
    /// A key job is still running; one job at a time.
    JobUnfinished {
        /// The proposal whose job runs.
        proposal: ProposalId,
        /// Its operation, as shown.
        op: String,
    },
    /// The proposal was not approved within its window.
    Lapsed {
        /// The proposal.
        proposal: ProposalId,
    },
    /// The approver expected another KCV than the key the proposal names.
    KcvMismatch {
        /// The proposal.
        proposal: ProposalId,
        /// The KCV the approver expected.
        expected: Kcv,
        /// The KCV of the key named (none for an operation without one).
        found: Option<Kcv>,
    },
    /// The key the proposal names changed since it was proposed.
    KeyChanged {
        /// The proposal.
        proposal: ProposalId,
        /// The KCV when proposed.
        then: Option<Kcv>,
        /// The KCV now.
        now: Option<Kcv>,
    },
    /// The proposal would now do more than it said when proposed.
    ImpactGrew {
        /// The proposal.
        proposal: ProposalId,
        /// What it would do more.
        more: String,
    },
    /// A shred without force of a batch whose cards still need their codes.
    CardsNeedCodes {
        /// The batch.
        batch: BatchId,
        /// Its active cards.
        active: u64,
        /// Its suspended cards.
        suspended: u64,
        /// Its issued cards.
        issued: u64,
        /// Their unsent dispatch jobs.
        jobs: u64,
    },
    /// A disable of an account that is disabled already.
    AlreadyDisabled {
        /// The account id.
        account: String,
    },
    /// The account is disabled.
    AccountDisabled {
        /// The account id.
        account: String,
    },
    /// The account is the last enabled admin: disabling it would lock everyone out.
    LastAdmin {
        /// The account id.
        account: String,
    },
    /// The card's holder is registered as deceased: the card cannot be activated.
    HolderDeceased {
        /// The card serial.
        card: String,
    },
    /// The card's codes are not held (never imported, or deleted at revocation).
    CodesNotHeld {
        /// The card serial.
        card: String,
    },
    /// Only operator and officer accounts may have a password.
    NoPasswordForRole {
        /// The account's role.
        role: Role,
    },
    /// A password change whose current password does not match the account's.
    CurrentPasswordMismatch {
        /// The account id.
        account: String,
    },
    // cards: outbox, mailers, reports, lifecycle
    /// The card's holder has no registered contact of this kind (rule 13).
    NoContact {
        /// The card serial.
        card: String,
        /// The contact (`mobile number`, `e-mail address`, `postal address`).
        contact: &'static str,
    },
    /// The holder's contact changed after the card's last identification (rule 13): identify
    /// the holder again at the counter first.
    ContactChanged {
        /// The card serial.
        card: String,
        /// The contact (`mobile number`, `e-mail address`).
        contact: &'static str,
    },
    /// A `counter(N)+remote` plan, and neither SMS nor e-mail can be used.
    NoRemoteChannel {
        /// The card serial.
        card: String,
        /// Why not by SMS.
        sms: Box<Refusal>,
        /// Why not by e-mail.
        email: Box<Refusal>,
    },
    /// A part of the card's dispatch is being sent at this moment; try again later.
    PartSending {
        /// The card serial.
        card: String,
        /// The part (`A`, `B`, `whole`).
        part: String,
        /// The dispatch (request) it belongs to, when a new dispatch was asked for.
        dispatch: Option<u64>,
        /// The job sending it.
        job: u64,
    },
    /// The card has a dispatch in force (rule 14a): a new one must replace it.
    DispatchInForce {
        /// The card serial.
        card: String,
        /// The dispatch (request) in force.
        dispatch: u64,
        /// Its plan.
        plan: String,
        /// Whether some part is still under way (else it is done).
        under_way: bool,
    },
    /// The part is printed at the counter: it cannot be resent remotely.
    CounterPart {
        /// The card serial.
        card: String,
        /// The part.
        part: String,
    },
    /// The part waits until part A is handed over at the counter.
    AwaitingCounter {
        /// The card serial.
        card: String,
        /// The part.
        part: String,
        /// Its job.
        job: u64,
    },
    /// The card has no split dispatch in force, so no counter page.
    NoSplitDispatch {
        /// The card serial.
        card: String,
    },
    /// The counter page was asked for another plan than the one in force.
    PlanInForce {
        /// The card serial.
        card: String,
        /// The plan in force.
        plan: String,
        /// Its dispatch (request).
        dispatch: u64,
    },
    /// Part A was handed over already; print it again only as a reprint.
    HandedOver {
        /// The card serial.
        card: String,
        /// The dispatch (request).
        dispatch: u64,
        /// Part A's job.
        job: u64,
        /// Who handed it over (`?` if not recorded).
        by: String,
    },
    /// Part A is in a state the counter page cannot print from (e.g. cancelled).
    CounterPartState {
        /// The card serial.
        card: String,
        /// The dispatch (request).
        dispatch: u64,
        /// Part A's job.
        job: u64,
        /// Its state.
        state: String,
    },
    /// A job's channel has no remote destination (counter and mailer parts are not sent).
    NoRemoteDestination {
        /// The job.
        job: u64,
        /// Its channel.
        channel: String,
    },
    /// Another print run is going; one at a time.
    PrintRunGoing,
    /// Print runs are recovered only at start-up, not while one is going.
    RecoverWhileRunning,
    /// A mailer outcome names a mailer number that repeats in the same call.
    MailerRepeats {
        /// The outcome's position (1-based).
        outcome: usize,
        /// The mailer number.
        mailer: u64,
    },
    /// A mailer outcome names a number no print file has.
    MailerUnknown {
        /// The outcome's position (1-based).
        outcome: usize,
        /// The mailer number.
        mailer: u64,
    },
    /// A mailer outcome for a mailer that is not outstanding (voided, or reported the other
    /// way before).
    MailerNotOutstanding {
        /// The outcome's position (1-based).
        outcome: usize,
        /// The mailer number.
        mailer: u64,
        /// Its state.
        state: String,
        /// The state asked for.
        wanted: String,
    },
    // registry import
    /// A registry file gives a card that the vault holds for another holder (at `line` of
    /// the file): nothing of the file was applied.
    CardOfAnotherHolder {
        /// The line of the file.
        line: u64,
    },
    // share files written by plico itself (rekey, init, --dev)
    /// The HSM made another number of custodian shares than there are files to write.
    ShareCount {
        /// The number of share files asked for.
        expected: usize,
        /// The number of shares the HSM made.
        produced: usize,
    },
    /// A new custodian share file (or its directory) could not be written; nothing is kept.
    ShareFileUnwritable {
        /// The file or directory.
        path: String,
        /// What the operating system said.
        error: String,
    },
    /// A rekey, and the server has no directory configured for the new shares.
    NoShareDir,
    /// A data key asked for as a `holder` key (personal data) that is not one, or not in the
    /// keyring: no opener of code records leaves the vault.
    NotHolderKey {
        /// The data key.
        key: DataKeyId,
    },
    /// Pending codes of a card opened with a receipt that records no release of it.
    ReleaseNotAudited {
        /// The card serial.
        card: String,
    },
    /// A batch's codes read with a receipt that records no print run of it.
    PrintRunNotAudited {
        /// The batch.
        batch: BatchId,
    },
    /// An HSM state exists already where a new one was to be made (a state file, a token).
    HsmExists {
        /// Where (`/var/lib/plico/hsm/hsm-state.json`, `pkcs#11 token "plico"`).
        place: String,
    },
    /// The audit anchor the HSM holds is at a later event than the one it was asked to hold.
    AnchorBackwards {
        /// The event the HSM holds.
        held: u64,
        /// The event it was asked to hold.
        given: u64,
    },
    /// The HSM's audit anchor holds another event with the same number: the chain forked.
    AnchorForked {
        /// The event number.
        seq: u64,
    },
    /// The token refused its user PIN (at `plico init`: the PIN given is wrong).
    TokenPinRefused {
        /// The token label.
        token: String,
    },
    /// The token's user PIN is locked: its security officer must reset it.
    TokenPinLocked {
        /// The token label.
        token: String,
    },
    /// A key-wrap mechanism the configuration names that the PKCS#11 binding cannot issue.
    MechanismUnavailable {
        /// The mechanism, as configured (`kwp`).
        mechanism: &'static str,
        /// What to configure instead.
        instead: &'static str,
    },
    /// A rollback of the audit anchor asked of an unsealed HSM: the custodians' quorum given
    /// to it accepts a rollback, on a sealed HSM.
    RollbackUnsealed,
    /// A bearer token of a person's account that logs in with a second factor (TOTP): such
    /// an account works in the console only; programs use a machine account (a token, no
    /// password).
    TokenOfPerson {
        /// The account id.
        account: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kcv = |k: &Option<Kcv>| k.map_or("none".to_owned(), |k| k.to_string());
        match self {
            Refusal::KeyringFull => f.write_str("the keyring has used every data key id"),
            Refusal::NoActiveTerm => f.write_str("the hsm has no active term"),
            Refusal::RewrapMismatch { key, got, want } => {
                write!(f, "the hsm rewrapped {key} under {got}, not {want}")
            }
            Refusal::TermInUse { term, data_keys } => write!(
                f,
                "{term} still wraps {data_keys} data key(s); rotate so that they are rewrapped, \
                 then retire it"
            ),
            Refusal::TermActive { term } => {
                write!(f, "{term} is the active term; rotate first, then retire it")
            }
            Refusal::TermRetired { term } => write!(f, "{term} is already retired"),
            Refusal::Threshold { threshold, shares } if *threshold == 1 && *shares >= 1 => write!(
                f,
                "a threshold of {threshold} is only allowed for a development hsm (--dev); use 2 \
                 or more"
            ),
            Refusal::Threshold { threshold, shares } => write!(
                f,
                "threshold {threshold} of {shares} shares: need 1 <= threshold <= shares <= 255"
            ),
            Refusal::NoShares => f.write_str("the hsm provider holds no custodian shares"),
            Refusal::AnchorBackwards { held, given } => write!(
                f,
                "the audit anchor is at event {held}, refusing to move it back to {given}"
            ),
            Refusal::AnchorForked { seq } => write!(
                f,
                "the audit anchor already holds another event {seq}: the chain has forked"
            ),
            Refusal::NotHolderKey { key } => write!(f, "{key}: not a holder key"),
            Refusal::RollbackUnsealed => f.write_str(
                "the hsm is unsealed: a rollback is accepted by the custodians' quorum given to \
                 it, on a sealed hsm",
            ),
            Refusal::ReleaseNotAudited { card } => write!(
                f,
                "card {card}: its codes are released only with an audited release"
            ),
            Refusal::PrintRunNotAudited { batch } => write!(
                f,
                "batch {batch}: its codes are read only for an audited print run of it"
            ),
            Refusal::HsmExists { place } => {
                write!(
                    f,
                    "{place} already holds a plico hsm; refusing to overwrite it"
                )
            }
            Refusal::TokenPinRefused { token } => {
                write!(f, "the user pin of pkcs#11 token {token:?} was refused")
            }
            Refusal::TokenPinLocked { token } => write!(
                f,
                "the user pin of pkcs#11 token {token:?} is locked; its security officer must \
                 reset it"
            ),
            Refusal::MechanismUnavailable { mechanism, instead } => write!(
                f,
                "hsm mechanism {mechanism:?} cannot be issued through this pkcs#11 binding; use \
                 {instead}"
            ),
            Refusal::SubjectTooLong { bytes } => {
                write!(f, "record subject is {bytes} bytes, at most 65535")
            }
            Refusal::CounterExhausted { key } => {
                write!(f, "{key} has no 32-bit counter left")
            }
            Refusal::EncryptionLimit { key, limit } => write!(
                f,
                "{key} reached its limit of {limit} encryptions; use a new data key"
            ),
            Refusal::NotStaging { batch, state } => {
                write!(f, "batch {batch} is {state}, not staging")
            }
            Refusal::RepeatsSerials { batch } => {
                write!(f, "batch {batch} repeats serials; reject it")
            }
            Refusal::AuditBroken {
                damage,
                seq,
                detail,
            } => write!(
                f,
                "the audit chain does not verify ({damage} at event {seq}: {detail}); restore \
                 the store"
            ),
            Refusal::PruneOnBroken { damage, seq } => write!(
                f,
                "the audit chain does not verify ({damage} at event {seq}); prune refused"
            ),
            Refusal::StaleHsmState { current, seen } => write!(
                f,
                "the hsm state is at generation {current} but this store has seen generation \
                 {seen}: an older copy of the hsm state was put back"
            ),
            Refusal::JobUnfinished { proposal, op } => write!(
                f,
                "the job of {proposal} ({op}) is not finished; approve once it is"
            ),
            Refusal::Lapsed { proposal } => write!(
                f,
                "{proposal} lapsed: it was not approved within its window; propose it again"
            ),
            Refusal::KcvMismatch {
                proposal,
                expected,
                found,
            } => write!(
                f,
                "{proposal}: the key it names has KCV {}, not the expected {expected}; nothing \
                 was approved",
                kcv(found)
            ),
            Refusal::KeyChanged {
                proposal,
                then,
                now,
            } => write!(
                f,
                "{proposal}: the key it names changed since it was proposed (KCV {} then, {} \
                 now); propose again",
                kcv(then),
                kcv(now)
            ),
            Refusal::ImpactGrew { proposal, more } => write!(
                f,
                "{proposal}: it would now do more than it says: {more}; propose it again so \
                 that the approver sees it"
            ),
            Refusal::CardsNeedCodes {
                batch,
                active,
                suspended,
                issued,
                jobs,
            } => write!(
                f,
                "batch {batch}: {} card(s) still need their codes ({active} active, \
                 {suspended} suspended, {issued} issued); a shred would leave them with none. \
                 Propose it with force to revoke them (reason codes_destroyed) and cancel their \
                 {jobs} unsent dispatch job(s) in the same write",
                active + suspended + issued
            ),
            Refusal::AlreadyDisabled { account } => {
                write!(f, "account {account} is already disabled")
            }
            Refusal::AccountDisabled { account } => write!(f, "account {account} is disabled"),
            Refusal::LastAdmin { account } => {
                write!(f, "account {account} is the last enabled admin")
            }
            Refusal::HolderDeceased { card } => {
                write!(f, "card {card}: its holder is registered as deceased")
            }
            Refusal::CodesNotHeld { card } => write!(f, "card {card}: its codes are not held"),
            Refusal::NoPasswordForRole { role } => write!(
                f,
                "a {role} account cannot have a password (machine accounts use a token)"
            ),
            Refusal::CurrentPasswordMismatch { account } => {
                write!(f, "account {account}: current password: does not match")
            }
            Refusal::NoContact { card, contact } => {
                write!(f, "card {card}: the holder has no registered {contact}")
            }
            Refusal::ContactChanged { card, contact } => write!(
                f,
                "card {card}: the holder's {contact} changed after the last identification; \
                 identify the holder again at the counter first"
            ),
            Refusal::NoRemoteChannel { card, sms, email } => write!(
                f,
                "card {card}: no remote channel: {}; {}",
                sms.without_card(),
                email.without_card()
            ),
            Refusal::PartSending {
                card,
                part,
                dispatch: Some(dispatch),
                job,
            } => write!(
                f,
                "card {card}: part {part} of dispatch {dispatch} is being sent now (job {job}); \
                 try again later"
            ),
            Refusal::PartSending {
                card,
                part,
                dispatch: None,
                job,
            } => write!(
                f,
                "card {card}: part {part} is being sent now (job {job}); try again later"
            ),
            Refusal::DispatchInForce {
                card,
                dispatch,
                plan,
                under_way,
            } => write!(
                f,
                "card {card}: dispatch {dispatch} ({plan}) is {}; a new dispatch must replace \
                 it (replace, with a reason), or resend a part instead",
                if *under_way { "under way" } else { "done" }
            ),
            Refusal::CounterPart { card, part } => {
                write!(f, "card {card}: part {part} is printed at the counter")
            }
            Refusal::AwaitingCounter { card, part, job } => write!(
                f,
                "card {card}: part {part} waits until part A is handed over at the counter \
                 (job {job})"
            ),
            Refusal::NoSplitDispatch { card } => write!(
                f,
                "card {card}: no split dispatch in force, so no counter page; dispatch the \
                 card with a `counter(N)+…` plan first"
            ),
            Refusal::PlanInForce {
                card,
                plan,
                dispatch,
            } => write!(
                f,
                "card {card}: the plan in force is {plan} (dispatch {dispatch}); the counter \
                 page prints part A of that plan only"
            ),
            Refusal::HandedOver {
                card,
                dispatch,
                job,
                by,
            } => write!(
                f,
                "card {card}: part A of dispatch {dispatch} was already handed over (job {job}, \
                 by {by}); print it again only as a reprint"
            ),
            Refusal::CounterPartState {
                card,
                dispatch,
                job,
                state,
            } => write!(
                f,
                "card {card}: part A of dispatch {dispatch} is {state} (job {job})"
            ),
            Refusal::NoRemoteDestination { job, channel } => write!(
                f,
                "dispatch job {job}: channel {channel} has no remote destination"
            ),
            Refusal::PrintRunGoing => f.write_str("another print run is going; wait for it to end"),
            Refusal::RecoverWhileRunning => {
                f.write_str("a print run is going; runs are recovered only at start-up")
            }
            Refusal::MailerRepeats { outcome, mailer } => {
                write!(f, "outcome {outcome} (mailer {mailer}): the number repeats")
            }
            Refusal::MailerUnknown { outcome, mailer } => {
                write!(f, "outcome {outcome} (mailer {mailer}): no such mailer")
            }
            Refusal::MailerNotOutstanding {
                outcome,
                mailer,
                state,
                wanted,
            } => write!(
                f,
                "outcome {outcome} (mailer {mailer}): it is {state}, only an outstanding \
                 mailer can become {wanted}"
            ),
            // registry import
            Refusal::CardOfAnotherHolder { line } => {
                write!(f, "line {line}: the card belongs to another holder")
            }
            Refusal::ShareCount { expected, produced } => write!(
                f,
                "expected {expected} share(s), the hsm produced {produced}"
            ),
            Refusal::ShareFileUnwritable { path, error } => {
                write!(f, "cannot write the share file {path}: {error}")
            }
            Refusal::TokenOfPerson { account } => write!(
                f,
                "account {account} logs in with a second factor: its bearer token is not \
                 accepted on the API; use the console, or a machine account (a token, no \
                 password) for programs"
            ),
            Refusal::NoShareDir => f.write_str(
                "a rekey needs a directory for the new shares: configure [keys] \
                 rekey_share_dir (PLICO_KEYS_REKEY_SHARE_DIR) on the server",
            ),
        }
    }
}

impl Refusal {
    /// The refusal's name in snake_case (`term_in_use`): stable, for programs (the API's
    /// `error.reason`) and for the console's message catalogue (`refusal_term_in_use`).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::KeyringFull => "keyring_full",
            Refusal::NoActiveTerm => "no_active_term",
            Refusal::RewrapMismatch { .. } => "rewrap_mismatch",
            Refusal::TermInUse { .. } => "term_in_use",
            Refusal::TermActive { .. } => "term_active",
            Refusal::TermRetired { .. } => "term_retired",
            Refusal::Threshold { .. } => "threshold",
            Refusal::NoShares => "no_shares",
            Refusal::AnchorBackwards { .. } => "anchor_backwards",
            Refusal::SubjectTooLong { .. } => "subject_too_long",
            Refusal::CounterExhausted { .. } => "counter_exhausted",
            Refusal::EncryptionLimit { .. } => "encryption_limit",
            Refusal::NotStaging { .. } => "not_staging",
            Refusal::RepeatsSerials { .. } => "repeats_serials",
            Refusal::AuditBroken { .. } => "audit_broken",
            Refusal::PruneOnBroken { .. } => "prune_on_broken",
            Refusal::StaleHsmState { .. } => "stale_hsm_state",
            Refusal::JobUnfinished { .. } => "job_unfinished",
            Refusal::Lapsed { .. } => "lapsed",
            Refusal::KcvMismatch { .. } => "kcv_mismatch",
            Refusal::KeyChanged { .. } => "key_changed",
            Refusal::ImpactGrew { .. } => "impact_grew",
            Refusal::CardsNeedCodes { .. } => "cards_need_codes",
            Refusal::AlreadyDisabled { .. } => "already_disabled",
            Refusal::AccountDisabled { .. } => "account_disabled",
            Refusal::LastAdmin { .. } => "last_admin",
            Refusal::HolderDeceased { .. } => "holder_deceased",
            Refusal::CodesNotHeld { .. } => "codes_not_held",
            Refusal::NoPasswordForRole { .. } => "no_password_for_role",
            Refusal::CurrentPasswordMismatch { .. } => "current_password_mismatch",
            Refusal::NoContact { .. } => "no_contact",
            Refusal::ContactChanged { .. } => "contact_changed",
            Refusal::NoRemoteChannel { .. } => "no_remote_channel",
            Refusal::PartSending { .. } => "part_sending",
            Refusal::DispatchInForce { .. } => "dispatch_in_force",
            Refusal::CounterPart { .. } => "counter_part",
            Refusal::AwaitingCounter { .. } => "awaiting_counter",
            Refusal::NoSplitDispatch { .. } => "no_split_dispatch",
            Refusal::PlanInForce { .. } => "plan_in_force",
            Refusal::HandedOver { .. } => "handed_over",
            Refusal::CounterPartState { .. } => "counter_part_state",
            Refusal::NoRemoteDestination { .. } => "no_remote_destination",
            Refusal::PrintRunGoing => "print_run_going",
            Refusal::RecoverWhileRunning => "recover_while_running",
            Refusal::MailerRepeats { .. } => "mailer_repeats",
            Refusal::MailerUnknown { .. } => "mailer_unknown",
            Refusal::MailerNotOutstanding { .. } => "mailer_not_outstanding",
            Refusal::CardOfAnotherHolder { .. } => "card_of_another_holder",
            Refusal::ShareCount { .. } => "share_count",
            Refusal::ShareFileUnwritable { .. } => "share_file_unwritable",
            Refusal::NoShareDir => "no_share_dir",
            Refusal::TokenOfPerson { .. } => "token_of_person",
            Refusal::AnchorForked { .. } => "anchor_forked",
            Refusal::NotHolderKey { .. } => "not_holder_key",
            Refusal::RollbackUnsealed => "rollback_unsealed",
            Refusal::ReleaseNotAudited { .. } => "release_not_audited",
            Refusal::PrintRunNotAudited { .. } => "print_run_not_audited",
            Refusal::HsmExists { .. } => "hsm_exists",
            Refusal::TokenPinRefused { .. } => "token_pin_refused",
            Refusal::TokenPinLocked { .. } => "token_pin_locked",
            Refusal::MechanismUnavailable { .. } => "mechanism_unavailable",
        }
    }

    /// The refusal's facts by name (`("term", "term 2"), ("data_keys", "5")`), as text: what
    /// a message in another language is filled from. Never a code or key bytes (no refusal
    /// holds one). A nested refusal ([`Refusal::NoRemoteChannel`]) gives its own reason
    /// (`sms`, `email`); [`Refusal::nested`] hands out the refusals themselves.
    pub fn facts(&self) -> Vec<(&'static str, String)> {
        fn s(v: &impl fmt::Display) -> String {
            v.to_string()
        }
        let kcv = |k: &Option<Kcv>| k.map_or("-".to_owned(), |k| k.to_string());
        match self {
            Refusal::KeyringFull
            | Refusal::NoActiveTerm
            | Refusal::NoShares
            | Refusal::RollbackUnsealed
            | Refusal::PrintRunGoing
            | Refusal::RecoverWhileRunning
            | Refusal::NoShareDir => vec![],
            Refusal::RewrapMismatch { key, got, want } => {
                vec![("key", s(key)), ("got", s(got)), ("want", s(want))]
            }
            Refusal::TermInUse { term, data_keys } => {
                vec![("term", s(term)), ("data_keys", s(data_keys))]
            }
            Refusal::TermActive { term } | Refusal::TermRetired { term } => {
                vec![("term", s(term))]
            }
            Refusal::Threshold { threshold, shares } => {
                vec![("threshold", s(threshold)), ("shares", s(shares))]
            }
            Refusal::SubjectTooLong { bytes } => vec![("bytes", s(bytes))],
            Refusal::CounterExhausted { key } => vec![("key", s(key))],
            Refusal::EncryptionLimit { key, limit } => vec![("key", s(key)), ("limit", s(limit))],
            Refusal::NotStaging { batch, state } => vec![("batch", s(batch)), ("state", s(state))],
            Refusal::RepeatsSerials { batch } => vec![("batch", s(batch))],
            Refusal::AuditBroken {
                damage,
                seq,
                detail,
            } => vec![
                ("damage", s(damage)),
                ("seq", s(seq)),
                ("detail", detail.clone()),
            ],
            Refusal::PruneOnBroken { damage, seq } => vec![("damage", s(damage)), ("seq", s(seq))],
            Refusal::StaleHsmState { current, seen } => {
                vec![("current", s(current)), ("seen", s(seen))]
            }
            Refusal::JobUnfinished { proposal, op } => {
                vec![("proposal", s(proposal)), ("op", op.clone())]
            }
            Refusal::Lapsed { proposal } => vec![("proposal", s(proposal))],
            Refusal::KcvMismatch {
                proposal,
                expected,
                found,
            } => vec![
                ("proposal", s(proposal)),
                ("expected", s(expected)),
                ("found", kcv(found)),
            ],
            Refusal::KeyChanged {
                proposal,
                then,
                now,
            } => vec![
                ("proposal", s(proposal)),
                ("then", kcv(then)),
                ("now", kcv(now)),
            ],
            Refusal::ImpactGrew { proposal, more } => {
                vec![("proposal", s(proposal)), ("more", more.clone())]
            }
            Refusal::CardsNeedCodes {
                batch,
                active,
                suspended,
                issued,
                jobs,
            } => vec![
                ("batch", s(batch)),
                ("cards", s(&(active + suspended + issued))),
                ("active", s(active)),
                ("suspended", s(suspended)),
                ("issued", s(issued)),
                ("jobs", s(jobs)),
            ],
            Refusal::AlreadyDisabled { account }
            | Refusal::AccountDisabled { account }
            | Refusal::LastAdmin { account }
            | Refusal::CurrentPasswordMismatch { account }
            | Refusal::TokenOfPerson { account } => vec![("account", account.clone())],
            Refusal::HolderDeceased { card }
            | Refusal::CodesNotHeld { card }
            | Refusal::NoSplitDispatch { card } => vec![("card", card.clone())],
            Refusal::NoPasswordForRole { role } => vec![("role", s(role))],
            Refusal::NoContact { card, contact } | Refusal::ContactChanged { card, contact } => {
                vec![
                    ("card", card.clone()),
                    ("contact", contact_key(contact).to_owned()),
                ]
            }
            Refusal::NoRemoteChannel { card, sms, email } => vec![
                ("card", card.clone()),
                ("sms", sms.reason().to_owned()),
                ("email", email.reason().to_owned()),
            ],
            Refusal::PartSending {
                card,
                part,
                dispatch,
                job,
            } => vec![
                ("card", card.clone()),
                ("part", part.clone()),
                (
                    "dispatch",
                    dispatch.map_or("-".to_owned(), |d| d.to_string()),
                ),
                ("job", s(job)),
            ],
            Refusal::DispatchInForce {
                card,
                dispatch,
                plan,
                under_way,
            } => vec![
                ("card", card.clone()),
                ("dispatch", s(dispatch)),
                ("plan", plan.clone()),
                ("under_way", s(under_way)),
            ],
            Refusal::CounterPart { card, part } => {
                vec![("card", card.clone()), ("part", part.clone())]
            }
            Refusal::AwaitingCounter { card, part, job } => vec![
                ("card", card.clone()),
                ("part", part.clone()),
                ("job", s(job)),
            ],
            Refusal::PlanInForce {
                card,
                plan,
                dispatch,
            } => vec![
                ("card", card.clone()),
                ("plan", plan.clone()),
                ("dispatch", s(dispatch)),
            ],
            Refusal::HandedOver {
                card,
                dispatch,
                job,
                by,
            } => vec![
                ("card", card.clone()),
                ("dispatch", s(dispatch)),
                ("job", s(job)),
                ("by", by.clone()),
            ],
            Refusal::CounterPartState {
                card,
                dispatch,
                job,
                state,
            } => vec![
                ("card", card.clone()),
                ("dispatch", s(dispatch)),
                ("job", s(job)),
                ("state", state.clone()),
            ],
            Refusal::NoRemoteDestination { job, channel } => {
                vec![("job", s(job)), ("channel", channel.clone())]
            }
            Refusal::MailerRepeats { outcome, mailer }
            | Refusal::MailerUnknown { outcome, mailer } => {
                vec![("outcome", s(outcome)), ("mailer", s(mailer))]
            }
            Refusal::MailerNotOutstanding {
                outcome,
                mailer,
                state,
                wanted,
            } => vec![
                ("outcome", s(outcome)),
                ("mailer", s(mailer)),
                ("state", state.clone()),
                ("wanted", wanted.clone()),
            ],
            Refusal::CardOfAnotherHolder { line } => vec![("line", s(line))],
            Refusal::ShareCount { expected, produced } => {
                vec![("expected", s(expected)), ("produced", s(produced))]
            }
            Refusal::ShareFileUnwritable { path, error } => {
                vec![("path", path.clone()), ("error", error.clone())]
            }
            Refusal::AnchorBackwards { held, given } => {
                vec![("held", s(held)), ("given", s(given))]
            }
            Refusal::AnchorForked { seq } => vec![("seq", s(seq))],
            Refusal::NotHolderKey { key } => vec![("key", s(key))],
            Refusal::ReleaseNotAudited { card } => vec![("card", card.clone())],
            Refusal::PrintRunNotAudited { batch } => vec![("batch", s(batch))],
            Refusal::HsmExists { place } => vec![("place", place.clone())],
            Refusal::TokenPinRefused { token } | Refusal::TokenPinLocked { token } => {
                vec![("token", token.clone())]
            }
            Refusal::MechanismUnavailable { mechanism, instead } => vec![
                ("mechanism", (*mechanism).to_owned()),
                ("instead", (*instead).to_owned()),
            ],
        }
    }

    /// The refusals inside this one (why neither SMS nor e-mail can be used), by fact name.
    pub fn nested(&self) -> Vec<(&'static str, &Refusal)> {
        match self {
            Refusal::NoRemoteChannel { sms, email, .. } => vec![("sms", sms), ("email", email)],
            _ => Vec::new(),
        }
    }

    /// The refusal's text without its leading `card {serial}: ` (to list several refusals of
    /// one card after it).
    pub fn without_card(&self) -> String {
        let text = self.to_string();
        match text.split_once(": ") {
            Some((head, rest)) if head.starts_with("card ") => rest.to_owned(),
            _ => text,
        }
    }
}

/// A contact's name (`mobile number`) as a fact: one word (`mobile`, `email`, `postal`).
fn contact_key(contact: &str) -> &'static str {
    match contact {
        "mobile number" => "mobile",
        "e-mail address" => "email",
        "postal address" => "postal",
        _ => "other",
    }
}

/// Why a custodian share (or a set of them) does not count. No variant holds share bytes:
/// a share is named by its set id and index, both public.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShareRefusal {
    /// The text is not a share: the message names the part at fault (the prefix, a field,
    /// the check value), never the share's content.
    Malformed(String),
    /// The share is of another share set than the HSM's (another HSM, or before a rekey).
    ForeignSet {
        /// The share's set id.
        got: String,
        /// The HSM's set id.
        held: String,
    },
    /// The share is of another set than the shares submitted so far (reset the unseal to
    /// change sets).
    OtherSetPending {
        /// The share's set id.
        got: String,
        /// The set of the shares submitted so far.
        pending: String,
    },
    /// The shares given at once belong to different sets.
    MixedSets,
    /// The share says another threshold or count than its set.
    QuorumMismatch {
        /// The share's index.
        x: u8,
        /// The threshold it says.
        threshold: u8,
        /// The count it says.
        shares: u8,
        /// Its set.
        set: String,
        /// The set's threshold.
        set_threshold: u8,
        /// The set's count.
        set_shares: u8,
    },
    /// The set has no share with this index.
    NoSuchShare {
        /// The set.
        set: String,
        /// The index.
        x: u8,
    },
    /// The share is not the one the HSM issued with this index (same set, other payload).
    NotIssued {
        /// The set.
        set: String,
        /// The index.
        x: u8,
    },
    /// The share is not one of the current set (an HSM that names shares by position).
    NotCurrent,
    /// The share was submitted already in this unseal.
    AlreadySubmitted {
        /// The index.
        x: u8,
        /// Distinct shares still needed.
        more: usize,
    },
    /// The same share was given twice in one call (a rekey's current shares).
    GivenTwice {
        /// The index.
        x: u8,
    },
    /// Fewer current shares than the threshold (a rekey's).
    TooFew {
        /// The threshold.
        need: usize,
        /// The shares given.
        given: usize,
    },
    /// No share was given.
    NoneGiven,
    /// The shares do not open the root key (the HSM state is damaged, or the shares are).
    DoNotOpen,
    /// The shares do not open the PKCS#11 token (an interrupted rekey left this set unused,
    /// or its PIN was changed outside plico).
    DoNotOpenToken {
        /// The set.
        set: String,
        /// The token label.
        token: String,
    },
    /// The shares do not reconstruct the current root key or token PIN (a rekey's current
    /// shares).
    NotCurrentQuorum,
}

impl ShareRefusal {
    /// The refusal's name in snake_case (`foreign_set`), like [`Refusal::reason`].
    pub fn reason(&self) -> &'static str {
        match self {
            ShareRefusal::Malformed(_) => "malformed",
            ShareRefusal::ForeignSet { .. } => "foreign_set",
            ShareRefusal::OtherSetPending { .. } => "other_set_pending",
            ShareRefusal::MixedSets => "mixed_sets",
            ShareRefusal::QuorumMismatch { .. } => "quorum_mismatch",
            ShareRefusal::NoSuchShare { .. } => "no_such_share",
            ShareRefusal::NotIssued { .. } => "not_issued",
            ShareRefusal::NotCurrent => "not_current",
            ShareRefusal::AlreadySubmitted { .. } => "already_submitted",
            ShareRefusal::GivenTwice { .. } => "given_twice",
            ShareRefusal::TooFew { .. } => "too_few",
            ShareRefusal::NoneGiven => "none_given",
            ShareRefusal::DoNotOpen => "do_not_open",
            ShareRefusal::DoNotOpenToken { .. } => "do_not_open_token",
            ShareRefusal::NotCurrentQuorum => "not_current_quorum",
        }
    }
}

/// The other explanation of a share that does not match the HSM's stored share set: the
/// stored set may be what changed (a damaged state file).
const OR_DAMAGED: &str = " (or the hsm's state file is damaged)";

impl fmt::Display for ShareRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShareRefusal::Malformed(why) => f.write_str(why),
            ShareRefusal::ForeignSet { got, held } => write!(
                f,
                "this share belongs to share set {got}, but this hsm uses set {held}: it is from \
                 another hsm or from before a rekey{OR_DAMAGED}"
            ),
            ShareRefusal::OtherSetPending { got, pending } => write!(
                f,
                "this share belongs to share set {got}, but the shares submitted so far belong \
                 to set {pending}; reset the unseal to change sets"
            ),
            ShareRefusal::MixedSets => f.write_str("the shares belong to different share sets"),
            ShareRefusal::QuorumMismatch {
                x,
                threshold,
                shares,
                set,
                set_threshold,
                set_shares,
            } => write!(
                f,
                "share {x} says {threshold} of {shares}, but set {set} is {set_threshold} of \
                 {set_shares}{OR_DAMAGED}"
            ),
            ShareRefusal::NoSuchShare { set, x } => {
                write!(f, "set {set} has no share {x}{OR_DAMAGED}")
            }
            ShareRefusal::NotIssued { set, x } => {
                write!(
                    f,
                    "share {x} of set {set} is not the share this hsm issued{OR_DAMAGED}"
                )
            }
            ShareRefusal::NotCurrent => f.write_str("not a share of the current set"),
            ShareRefusal::AlreadySubmitted { x, more } => write!(
                f,
                "share {x} was already submitted; {more} more distinct share(s) needed"
            ),
            ShareRefusal::GivenTwice { x } => write!(f, "share {x} was given twice"),
            ShareRefusal::TooFew { need, given } => {
                write!(f, "a rekey needs {need} current shares, {given} given")
            }
            ShareRefusal::NoneGiven => f.write_str("no shares given"),
            ShareRefusal::DoNotOpen => {
                f.write_str("the shares do not open the root key (state file damaged?)")
            }
            ShareRefusal::DoNotOpenToken { set, token } => write!(
                f,
                "the shares of set {set} do not open pkcs#11 token {token:?} (an interrupted \
                 rekey left this set unused, or its pin was changed outside plico)"
            ),
            ShareRefusal::NotCurrentQuorum => {
                f.write_str("the shares do not reconstruct the current root key or token pin")
            }
        }
    }
}

impl From<ShareRefusal> for Error {
    fn from(r: ShareRefusal) -> Error {
        Error::Share(r)
    }
}

/// Share counts and a threshold that make no share set. Nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Quorum {
    /// No shares, or a threshold of 0.
    Zero,
    /// A threshold above the number of shares.
    ThresholdAboveShares {
        /// The threshold asked for.
        threshold: u8,
        /// The number of shares asked for.
        shares: u8,
    },
    /// A threshold of 1 outside dev mode: one custodian could unseal alone.
    SingleCustodian,
}

impl fmt::Display for Quorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quorum::Zero => f.write_str("shares and threshold must be at least 1"),
            Quorum::ThresholdAboveShares { threshold, shares } => write!(
                f,
                "a threshold of {threshold} needs at least {threshold} shares, not {shares}"
            ),
            Quorum::SingleCustodian => f.write_str(
                "a threshold below 2 lets one custodian unseal alone; it is allowed only in dev \
                 mode",
            ),
        }
    }
}

/// Who may not do an operation, whatever the state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denial {
    /// Only an officer may propose, approve or withdraw a key operation.
    NotOfficer {
        /// The account.
        account: String,
        /// Its role, as the actor carries it.
        role: String,
        /// What it tried (`propose`, `approve`, `withdraw`).
        what: &'static str,
    },
    /// Dual control: the proposer may not approve their own proposal.
    OwnProposal {
        /// The proposal.
        proposal: ProposalId,
        /// The proposer's account.
        account: String,
    },
}

impl Denial {
    /// The denial's name in snake_case (`own_proposal`), like [`Refusal::reason`].
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::NotOfficer { .. } => "not_officer",
            Denial::OwnProposal { .. } => "own_proposal",
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::NotOfficer {
                account,
                role,
                what,
            } => write!(
                f,
                "only an officer may {what} a key operation; account {account} is {role}"
            ),
            Denial::OwnProposal { proposal, account } => write!(
                f,
                "{proposal} was proposed by account {account}; a different officer must \
                 approve it"
            ),
        }
    }
}

/// What was named and does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Missing {
    /// A KEK term.
    Term(TermId),
    /// A data key.
    DataKey(DataKeyId),
    /// A batch.
    Batch(BatchId),
    /// A committed batch (a batch in another state does not count).
    CommittedBatch(BatchId),
    /// A key proposal.
    Proposal(ProposalId),
    /// An account; `None` when the id given does not have an id's shape (it is not shown).
    Account(Option<String>),
    /// A card, by serial (the card domain, crate `cards`).
    Card(String),
    /// A problem report, by number (crate `cards`).
    Report(u64),
    // cards: outbox, mailers, reports, lifecycle
    /// A dispatch job, by id.
    Job(u64),
    /// The dispatch job with an idempotency key (the key is not shown).
    JobKey,
    /// A card's part that was never dispatched.
    PartDispatch {
        /// The card serial.
        card: String,
        /// The part.
        part: String,
    },
    /// A print run, by id.
    PrintRun(u64),
    /// A card, or the holder it belongs to, by serial (nothing is released for a card
    /// without a holder).
    CardHolder(String),
    /// An initialised PKCS#11 token, by label.
    Token(String),
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Term(t) => write!(f, "{t}"),
            Missing::DataKey(k) => write!(f, "{k}"),
            Missing::Batch(b) => write!(f, "batch {b}"),
            Missing::CommittedBatch(b) => write!(f, "committed batch {b}"),
            Missing::Proposal(p) => write!(f, "key proposal {p}"),
            Missing::Account(Some(id)) => write!(f, "account {id}"),
            Missing::Account(None) => f.write_str("account (malformed id)"),
            Missing::Card(serial) => write!(f, "card {serial}"),
            Missing::Report(id) => write!(f, "report {id}"),
            Missing::Job(id) => write!(f, "dispatch job {id}"),
            Missing::JobKey => f.write_str("no dispatch job has this idempotency key"),
            Missing::PartDispatch { card, part } => {
                write!(f, "card {card}: no dispatch of part {part}")
            }
            Missing::PrintRun(id) => write!(f, "print run {id}"),
            Missing::CardHolder(serial) => write!(f, "card {serial} or its holder"),
            Missing::Token(label) => write!(f, "an initialised pkcs#11 token labelled {label:?}"),
        }
    }
}

/// What an [`Error::WrongState`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Subject {
    /// A card, by serial (crate `cards`).
    Card(String),
    /// A batch of codes.
    Batch(BatchId),
    /// A key proposal.
    Proposal(ProposalId),
    /// A problem report, by number (crate `cards`).
    Report(u64),
    /// A dispatch job, by id (crate `cards`).
    Job(u64),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Card(serial) => write!(f, "card {serial}"),
            Subject::Batch(b) => write!(f, "batch {b}"),
            Subject::Proposal(p) => write!(f, "{p}"),
            Subject::Report(id) => write!(f, "report {id}"),
            Subject::Job(id) => write!(f, "dispatch job {id}"),
        }
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Error {
        Error::Refusal(r)
    }
}

impl From<Denial> for Error {
    fn from(d: Denial) -> Error {
        Error::Denied(d)
    }
}

impl From<Missing> for Error {
    fn from(m: Missing) -> Error {
        Error::Missing(m)
    }
}

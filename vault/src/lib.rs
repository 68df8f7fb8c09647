//! # vault — PIN/PUK records under an HSM-style key hierarchy
//!
//! The vault owns everything that touches a code or a key on the host side:
//!
//! - `secret`: the secret carriers [`Pin`], [`Puk`], [`DataKey`], [`Plaintext`] — zeroized on
//!   drop, redacted in `Debug`, never `Display` or `Serialize`;
//! - `policy`: the code policy (digits only, lengths by configuration);
//! - `hsm`: the [`Hsm`] trait, the custody seam; root key and KEK terms stay behind it;
//! - `keyring`: data keys, stored wrapped under a KEK term, each with a [`Kcv`];
//! - `envelope`: the stored layout of one encrypted record (AES-256-GCM, AAD bound to the card
//!   serial, the data-key id and the purpose);
//! - `clock`: the one seam for wall-clock time ([`Clock`]; a [`ManualClock`] for tests);
//! - `lock`: the one poison-tolerant lock helper ([`lock()`]);
//! - `lines`: the one bounded, zeroizing line reader for untrusted files ([`read_lines`]);
//! - `store`: the store seam (sled on disk, in-memory and fault-injecting doubles), atomic
//!   multi-tree batches;
//! - `account`: accounts, roles, bearer tokens and passwords;
//! - `audit`: the tamper-evident audit chain, written in the same batch as each change;
//! - `ceremony`: key ceremonies under dual control — proposals, approvals, the rotate /
//!   rewrap / retire / shred jobs, rekey, cryptoperiods and the key status report;
//! - `codes`: the code vault — batches laid out as sorted encrypted segments, committed all
//!   or nothing, found by serial;
//! - `import`: manufacturer files (parsing, age decryption) into the code vault;
//! - `generate`: uniform code generation by rejection sampling, in parallel.
//!
//! ```text
//! custodian shares ─▶ unseal key ─▶ root key ─▶ KEK terms ─▶ data keys ─▶ records
//! └──────────────── inside the Hsm ────────────────────────┘   (wrapped)   (envelopes)
//! ```
//!
//! The modules are private; what other crates may use is re-exported below, grouped as in
//! the list above. The card-management domain (holders, cards, outbox, mailers) is not here:
//! it is the `cards` crate, which depends on this one; key ceremonies reach it through
//! [`CardRegistry`]. Clear codes leave the vault only through the audited release: a
//! [`Release`] receipt that only the audit chain makes.
//!
//! # Errors
//!
//! One [`Error`] for this crate, `cards` and the HSM providers. Its rule:
//!
//! - **A refusal is a typed value.** Whatever the state, a conflict or a missing thing
//!   refuses is a variant carrying the facts a caller branches on: [`Refusal`] (the state does
//!   not allow it: the term, the count, the dispatch in force…), [`Error::WrongState`] (a
//!   [`Subject`] in a state the change does not start from, with that state),
//!   [`Denial`] (who may not), [`Missing`] (what does not exist), [`ShareRefusal`] (why a
//!   custodian share does not count). Each maps to one API code and `error.reason`; callers
//!   and tests match variants, never text.
//! - **Bad input is [`Error::Invalid`]** with a message that opens with what is wrong and
//!   where (`line 3: serial: …`, `plan: …`, `idempotency key: …`), then the rule it breaks.
//!   Nobody branches on it: the fix is in the input, which the message names. A parser that
//!   reports many problems gives them as values instead ([`Error::RegistryRejected`], the
//!   import report).
//! - Damage is [`Error::Storage`] (naming the record, for the operator), a failed check
//!   [`Error::Integrity`] (saying nothing more).
//! - Messages are lower-case, name the field, serial, key or term at fault, and never carry a
//!   code, a share or key bytes.
//!
//! What it does not do: networking, async, HTTP, configuration files. It is synchronous and is
//! called from the service through one `spawn_blocking` helper. It has no HSM of its own: the
//! software HSM lives in the `hsm-sim` crate, which depends on this one.

mod account;
mod audit;
mod ceremony;
mod clock;
mod codes;
mod envelope;
mod error;
// The one-pair-at-a-time generator API (`CodeGenerator::pair`, `generate_for`, `DigitStream`
// digit by digit) is used by the unit tests and measured by the benches (`bench`); the service
// draws packed batches only.
#[cfg_attr(not(any(test, feature = "bench")), allow(dead_code))]
mod generate;
mod hsm;
#[cfg(test)]
mod hsm_double;
mod import;
mod kcv;
mod keyring;
mod lines;
mod lock;
mod policy;
mod secret;
mod store;
pub mod text;
mod totp;

// Errors.
pub use error::{Denial, Error, Missing, Quorum, Refusal, Result, ShareRefusal, Subject};

// Time and locks: the one clock seam and the one poison-tolerant lock helper.
pub use clock::{system as system_clock, Clock, ManualClock, SystemClock};
pub use lock::{lock, read_lock, try_lock, write_lock};

// Untrusted files: the one bounded, zeroizing line reader.
pub use lines::{read_lines, Line, LinesEnd};

// Secret carriers and the code policy.
pub use policy::{CodeError, CodeKind, CodePolicy, LengthBounds};
pub use secret::{DataKey, FreshDataKey, Pin, Plaintext, Puk, KEY_LEN};

// The custody seam: the HSM, its terms and key check values.
pub use hsm::{
    AuditAnchor, Hsm, HsmStatus, KeyPurpose, RekeyOutcome, ShareDelivery, TermId, TermInfo,
    TermState, UnsealProgress, WrappedKey,
};
pub use kcv::Kcv;

// Data keys and envelopes.
pub use envelope::{DataKeyId, Envelope, Opener, Sealer};
pub use keyring::{DataKeyRecord, Keyring, RewrapReport};

// The store seam and its implementations.
pub use store::memory::{FailingStore, MemoryStore};
pub use store::sled::SledStore;
pub use store::{seq_key, Batch, Entries, Op, Store, Tree, Writes};

// The code vault: batches, segments, the audited release.
pub use codes::{
    BatchId, BatchMeta, BatchRecord, BatchScan, BatchSource, BatchState, CardCodes, CodeVault,
    CommitOutcome, PendingCodes, Recovery, Release, Repeats, RunInfo, Staged, Stager,
    CODES_RELEASE_ACTION, PRINT_RUN_ACTION,
};

// Manufacturer files and generated batches.
pub use generate::WeakFilter;
pub use import::age::{is_age, SNIFF_LEN};
pub use import::generation::{generate_batch, GenerateRequest, SerialSet};
pub use import::parse::{
    parse as parse_code_file, write_problems, CardLine, LineProblem, ParseFailure, ParseRules,
    ParseSummary, Report, SerialCharset, SerialRule,
};
pub use import::{check_manufacturer, import_file, ImportContext, ImportOutcome, ImportRequest};

// The audit chain.
pub use audit::{
    AuditLog, Damage, Event, Mark, NewEvent, Outcome, Page, Problem, Query, VerifyReport, Written,
    DEFAULT_CHECKPOINT_EVERY, MAX_PAGE,
};

// Accounts and roles.
pub use account::{Account, AccountView, Accounts, Actor, Role, UnknownRole};
pub use totp::{code_from_base32 as totp_code_from_base32, TotpRecord, TotpSecret};

// Key ceremonies under dual control, and the card registry they reach.
pub use ceremony::{
    CardGroup, CardRegistry, CardStanding, Ceremonies, CeremonyPolicy, DataKeyStatus, Impact,
    JobGroup, JobPhase, JobRef, JobState, KeyAction, KeyChange, KeyJob, KeyPolicy, KeyStatus,
    Operation, Proposal, ProposalId, ProposalState, RegistryGuard, TermStatus, DEFAULT_CHUNK,
    DEFAULT_WINDOW_MS,
};

/// Internals for the criterion benches only (feature `bench`): segment encoding, code
/// generation and the manufacturer-file parser measured on their own. Not for the service.
#[cfg(feature = "bench")]
pub mod bench {
    pub use crate::codes::record::MAX_RECORD_LEN;
    pub use crate::codes::segment::{encode, SealedRecord, Segment, SEGMENT_RECORDS};
    pub use crate::generate::{
        generate_for, system_fill, CodeGenerator, DigitStream, WeakFilter, RANDOM_BUFFER_LEN,
    };
    pub use crate::import::parse::{parse, ParseRules};
}

/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): the segment codec, a
/// check of a segment's record against codes the caller has (it hands none out), and an
/// upload's path from its bytes to the parser (age files decrypted on the way) without a store
/// or an HSM. Not for the service.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::codes::record::MAX_RECORD_LEN;
    pub use crate::codes::segment::{
        encode as encode_segment, SealedRecord, Segment, SEGMENT_RECORDS,
    };
    pub use crate::import::age::{Decrypted, ImportIdentity};

    use crate::{
        CardCodes, CardLine, DataKey, Error, Opener, ParseFailure, ParseRules, ParseSummary, Result,
    };
    use zeroize::Zeroizing;

    /// Whether one stored segment holds `serial` sealed to exactly `codes`, read as the code
    /// vault reads a card's codes: the segment's lookup, then the record opened and unpacked.
    /// `Ok(None)` when the segment does not hold `serial`, `Ok(Some(false))` when its record
    /// opens to other codes.
    ///
    /// # Security
    /// It confirms codes the caller already has and hands none out: the opened record is
    /// compared in constant time and zeroized.
    ///
    /// # Errors
    /// [`Error::Storage`] for a damaged segment, [`Error::Integrity`] for a record that does
    /// not open (or a segment of another key than `opener`'s).
    pub fn segment_holds(
        bytes: &[u8],
        serial: &str,
        opener: &Opener,
        codes: &CardCodes,
    ) -> Result<Option<bool>> {
        let seg = Segment::parse(bytes)?;
        let Some((counter, sealed)) = seg.lookup(serial.as_bytes())? else {
            return Ok(None);
        };
        if seg.key() != opener.key_id() {
            // The vault opens a record with its segment's key: another key does not open it.
            return Err(Error::Integrity);
        }
        let clear = opener.open_detached(serial, counter, sealed)?;
        let opened = CardCodes::unpack(clear.expose_secret())?;
        let (mut got, mut want) = (
            Zeroizing::new([0u8; MAX_RECORD_LEN]),
            Zeroizing::new([0u8; MAX_RECORD_LEN]),
        );
        let got_len = opened.pack(&mut got);
        let want_len = codes.pack(&mut want);
        Ok(Some(
            aws_lc_rs::constant_time::verify_slices_are_equal(&got[..got_len], &want[..want_len])
                .is_ok(),
        ))
    }

    /// An upload's bytes through the import's own path to the parser ([`crate::import_file`]
    /// without the store): an age file, recognised by its first bytes, is decrypted with the
    /// identity of the import key `key`. Returns how the parse ended and whether the file was
    /// age-encrypted.
    pub fn parse_upload(
        bytes: &[u8],
        key: &DataKey,
        rules: &ParseRules,
        on_card: impl FnMut(CardLine<'_>) -> Result<()>,
    ) -> (std::result::Result<ParseSummary, ParseFailure>, bool) {
        crate::import::parse_upload(bytes, rules, || ImportIdentity::from_data_key(key), on_card)
    }
}

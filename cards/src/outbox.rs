//! The durable outbox of code deliveries (issue 7): a dispatch request becomes one job per part
//! and channel; workers claim due jobs, send them, and mark them sent, failed or delivered.
//! Nothing here sends anything, renders anything, or knows HTTP: the service's workers do, with
//! the couriers of crate `dispatch`.
//!
//! # Flow
//!
//! ```text
//! request_dispatch ──▶ queued ──claim_due──▶ sending ──mark_sent──▶ sent ──receipt──▶ delivered
//!                        ▲                     │  │                   │
//!                        │ (backoff elapsed)   │  └──mark_failed──▶ failed ──(N attempts)──▶ dead
//!                        └─────────────────────┴── recover (start-up: sending → queued)
//! ```
//!
//! - [`Cards::request_dispatch`] checks the card (`active`, codes held), the holder's registered
//!   contacts and rule 13 (a contact changed after the card's last identification is refused
//!   until [`super::Change::Reidentify`]), then writes the request, its jobs and one
//!   `dispatch.request` event in one store batch. The counter part (`A` of `counter(N)+…`) is
//!   printed at the counter: it gets a job in state `counter`, never claimed, so that the
//!   card's status shows every part of the plan.
//! - A job holds no code and no contact: the worker gets the codes through
//!   [`Cards::release_codes`] and the address from the registry at send time.
//! - Each job has an idempotency key (128 random bits, hex), fixed for its life: a job found
//!   `sending` after a crash ([`Cards::recover`]) is sent again with the same key, so a courier
//!   or gateway that knows the key can drop the duplicate. Receipts find their job by it.
//! - A job that dies may fall back ([`Fallback`]): SMS → a new e-mail job for the same part;
//!   otherwise the part is flagged `needs_counter_reprint`.
//! - [`Cards::resend_part`] makes a new job for one part; the old job stays as history.
//!
//! # Audit
//!
//! Request, sent, delivered, dead, fallback, resend and recovery are audit events, each in the
//! batch of its change. Claims and temporary failures are not (they are frequent and say
//! nothing about where a code went): the job itself keeps its attempts and last error, and the
//! `dispatch.dead` event carries both.
//!
//! # Storage
//!
//! - [`Tree::Outbox`]: job id (u64 BE) → [`Job`].
//! - [`Tree::OutboxDue`]: `lane | due ms | job id`: lane `0x10 | channel` holds a channel's
//!   waiting jobs (`queued`, `failed`) by when they are due, lane 1 `sending` jobs by when
//!   they were claimed.
//! - [`Tree::OutboxCards`]: `serial | '|' | job id`, a card's jobs.
//! - [`Tree::OutboxKeys`]: idempotency key (16 bytes) → job id.
//! - [`Tree::OutboxOpen`]: `created ms | job id` for jobs not done with (the overdue alert).
//! - [`Tree::DispatchRequests`]: request id → [`DispatchRequest`].

use super::card::CardState;
use super::date::Date;
use super::registry::{decode, encode, CardRecord, Cards, HolderRecord, PersonalData};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use vault::Actor;
use vault::Hsm;
use vault::{seq_key, Batch, Tree};
use vault::{AuditLog, NewEvent};
use vault::{Error, Missing, Refusal, Result, Subject};

const NEXT_JOB_KEY: &[u8] = b"outbox.next_job";
const NEXT_REQUEST_KEY: &[u8] = b"outbox.next_request";
/// Lanes of [`Tree::OutboxDue`]: waiting jobs by channel (`LANE_WAITING | channel tag`), and
/// `sending` jobs. Lane 0 is the waiting lane of stores written before lanes had channels
/// ([`Cards::recover`] moves its keys).
const LANE_OLD_WAITING: u8 = 0;
const LANE_SENDING: u8 = 1;
const LANE_WAITING: u8 = 0x10;
/// Longest last error kept on a job.
const MAX_ERROR: usize = 200;
/// Longest peer id accepted.
const MAX_PEER_ID: usize = 128;
/// Entries read at a time by scans.
const PAGE: usize = 512;

/// A part of a card's codes: `dispatch`'s part vocabulary ([`dispatch::PartName`]), stored
/// on each job as `"A"`, `"B"` or `"whole"`.
pub use dispatch::PartName as Part;

/// The channel a job goes by: `dispatch`'s channel vocabulary ([`dispatch::Channel`]). A job
/// goes by `counter`, `sms`, `email` or `mailer` (stored under these names), never by the plan
/// placeholders `remote` and `any`.
pub use dispatch::Channel;

/// A channel's tag in the waiting lanes' keys (persisted: the lanes of [`Tree::OutboxDue`]).
/// The plan placeholders get tags of their own, never written (no job goes by them).
fn channel_tag(channel: Channel) -> u8 {
    match channel {
        Channel::Counter => 0,
        Channel::Sms => 1,
        Channel::Email => 2,
        Channel::Mailer => 3,
        Channel::Remote => 4,
        Channel::Any => 5,
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// The counter part: printed at the counter, nothing to send.
    Counter,
    /// Waiting to be claimed.
    Queued,
    /// Claimed by a worker.
    Sending,
    /// Accepted by the courier.
    Sent,
    /// A receipt says it reached the holder.
    Delivered,
    /// Failed for now; claimed again after its next attempt time.
    Failed,
    /// Given up (permanent failure, or too many attempts).
    Dead,
    /// Replaced by a resend before it went out.
    Superseded,
    /// Part B of a counter plan: waits until part A is handed over at the counter, then
    /// `queued` (never claimed before).
    AwaitingCounter,
    /// Part A, printed and handed over at the counter (by whom and when on the job).
    HandedOver,
    /// Will not go out: its dispatch was replaced, the card's state refused it, or the card's
    /// codes were destroyed by a forced shred of its batch ([`vault::Ceremonies`]); the reason is
    /// on the job. Never falls back to another channel.
    Cancelled,
}

impl JobState {
    /// The persisted name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Counter => "counter",
            JobState::Queued => "queued",
            JobState::Sending => "sending",
            JobState::Sent => "sent",
            JobState::Delivered => "delivered",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
            JobState::Superseded => "superseded",
            JobState::AwaitingCounter => "awaiting_counter",
            JobState::HandedOver => "handed_over",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Not gone out yet and still meant to: `counter` (part A not printed), `awaiting_counter`,
    /// `queued` or `failed`. What replacing a dispatch and a forced shred cancel (a `sending`
    /// job is left to its worker, whose release of the codes then fails).
    pub fn unsent(self) -> bool {
        matches!(
            self,
            JobState::Counter | JobState::AwaitingCounter | JobState::Queued | JobState::Failed
        )
    }

    /// Queued, sending or failed: on its way.
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            JobState::Queued | JobState::Sending | JobState::Failed
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A delivery plan: `dispatch`'s plan vocabulary ([`dispatch::Plan`]), as the outbox takes
/// it ([`parse_plan`]).
///
/// ```text
/// plan = "counter(" N ")+" ("sms" | "email" | "remote") | "sms" | "email" | "mailer" | "whole"
/// ```
///
/// The outbox parses the plan itself: it must know the parts and channels to check the
/// holder's contacts and write the jobs in one step, and a caller that passed parsed parts
/// could leave one out. Cutting the digits stays `dispatch`'s work: a job carries the N of
/// `counter(N)` and [`Job::courier_plan`] gives its plan to cut. `remote` is resolved at
/// request time: SMS if the holder has a usable mobile number, else e-mail. A whole plan goes
/// by the channel it names; `whole` (no channel) goes as a printed mailer, like `mailer`.
pub use dispatch::Plan;

/// Parses a dispatch's plan (surrounding blanks ignored): [`Plan::parse`], with the outbox's
/// error.
///
/// # Errors
/// [`Error::Invalid`] naming the plan and the position where it stops making sense.
pub fn parse_plan(text: &str) -> Result<Plan> {
    Plan::parse(text).map_err(|e| Error::Invalid(e.to_string()))
}

/// The channel of a whole plan's one part: the one it names, else a printed mailer.
fn whole_channel(channel: Option<Channel>) -> Channel {
    channel.unwrap_or(Channel::Mailer)
}

/// N of a `counter(N)` plan as a job stores it.
fn job_digits(digits: usize) -> Result<u32> {
    u32::try_from(digits)
        .map_err(|_| Error::Invalid(format!("plan: counter({digits}): too many digits")))
}

/// One part of a card's codes by one channel. Holds no code and no contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Job id.
    pub id: u64,
    /// The dispatch request it belongs to.
    pub request: u64,
    /// Card serial.
    pub serial: String,
    /// The part.
    pub part: Part,
    /// The channel.
    pub channel: Channel,
    /// N of `counter(N)` for a split part; `None` for a whole part.
    pub digits: Option<u32>,
    /// Where it is.
    pub state: JobState,
    /// Claims so far (a claim lost in a crash counts).
    pub attempts: u32,
    /// When it may be claimed (Unix ms), while `queued` or `failed`.
    pub next_attempt_ms: u64,
    /// 128 random bits, hex; fixed for the job's life (retries reuse it).
    pub idempotency_key: String,
    /// The last failure, cleaned (no digit run of 4 or more, no control character).
    pub last_error: Option<String>,
    /// The courier's id for the message (SMTP queue id, SMS gateway id).
    pub peer_id: Option<String>,
    /// `request`, `resend` or `fallback`.
    pub origin: String,
    /// The job it replaces (resend, fallback).
    pub replaces: Option<u64>,
    /// The job that replaced it.
    pub superseded_by: Option<u64>,
    /// Dead with no fallback left: the part must be reprinted at the counter.
    pub needs_counter_reprint: bool,
    /// Account that asked for it.
    pub actor: String,
    /// Created (Unix ms).
    pub created_ms: u64,
    /// Last change (Unix ms).
    pub updated_ms: u64,
    /// Last claimed (Unix ms).
    pub claimed_ms: Option<u64>,
    /// Sent (Unix ms).
    pub sent_ms: Option<u64>,
    /// Delivered (Unix ms).
    pub delivered_ms: Option<u64>,
    /// Part A: when it was first printed and handed over at the counter (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_over_ms: Option<u64>,
    /// Part A: the account that first printed it at the counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_over_by: Option<String>,
    /// Part A: how many times it was printed (the first print, then reprints).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prints: u32,
    /// Why it was `cancelled`: `superseded` (its dispatch was replaced), or the card's state
    /// when a release was refused (`card_suspended`, `card_revoked`, `codes_gone`,
    /// `contact_changed`, `contact_missing`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// The reason code of the last failure (`tls_untrusted`, `rejected_recipient`, …: the
    /// `dispatch` crate's `FailureReason` names); absent in records written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Job {
    /// The plan in `dispatch`'s grammar, to cut the codes: `counter(N)+sms` / `+email` for a
    /// split part, `whole` for a whole one.
    pub fn courier_plan(&self) -> String {
        match self.digits {
            Some(n) => format!("counter({n})+{}", self.channel),
            None => "whole".to_owned(),
        }
    }

    /// Not gone out and not replaced by a resend: what replacing its dispatch, or a forced
    /// shred of its codes, cancels ([`JobState::unsent`]).
    pub fn cancellable(&self) -> bool {
        self.superseded_by.is_none() && self.state.unsent()
    }

    /// Whether the overdue alert watches it.
    fn open(&self) -> bool {
        if self.superseded_by.is_some() {
            return false;
        }
        match self.state {
            JobState::Queued | JobState::Sending | JobState::Failed | JobState::Dead => true,
            JobState::Sent => self.channel.receipt_expected(),
            JobState::Counter
            | JobState::Delivered
            | JobState::Superseded
            | JobState::AwaitingCounter
            | JobState::HandedOver
            | JobState::Cancelled => false,
        }
    }

    fn due_key(&self) -> Option<Vec<u8>> {
        let (lane, at) = match self.state {
            JobState::Queued | JobState::Failed => (
                LANE_WAITING | channel_tag(self.channel),
                self.next_attempt_ms,
            ),
            JobState::Sending => (LANE_SENDING, self.claimed_ms.unwrap_or(0)),
            _ => return None,
        };
        let mut k = Vec::with_capacity(17);
        k.push(lane);
        k.extend_from_slice(&at.to_be_bytes());
        k.extend_from_slice(&seq_key(self.id));
        Some(k)
    }

    fn open_key(&self) -> Vec<u8> {
        let mut k = self.created_ms.to_be_bytes().to_vec();
        k.extend_from_slice(&seq_key(self.id));
        k
    }

    fn key_bytes(&self) -> Result<Vec<u8>> {
        hex::decode(&self.idempotency_key)
            .map_err(|_| Error::Storage(format!("job {}: damaged idempotency key", self.id)))
    }
}

/// A dispatch request as stored ([`Tree::DispatchRequests`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchRequest {
    /// Request id.
    pub id: u64,
    /// Card serial.
    pub serial: String,
    /// The plan as asked for (trimmed).
    pub plan: String,
    /// Its jobs, by id.
    pub jobs: Vec<u64>,
    /// Account that asked.
    pub actor: String,
    /// Request id of the call.
    pub request_id: String,
    /// When (Unix ms).
    pub created_ms: u64,
    /// The dispatch it replaced, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<u64>,
    /// Why it replaced that one (as the caller said).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_reason: Option<String>,
    /// The dispatch that replaced this one: no longer in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<u64>,
}

impl DispatchRequest {
    /// The plan, parsed from the text the request keeps ([`parse_plan`]): every text the
    /// outbox ever took still reads back to its plan.
    ///
    /// # Errors
    /// [`Error::Storage`] for a stored plan that does not parse (a damaged record).
    pub fn parsed_plan(&self) -> Result<Plan> {
        Plan::parse(&self.plan)
            .map_err(|e| Error::Storage(format!("dispatch request {}: stored plan: {e}", self.id)))
    }
}

/// One dispatch of a card with every job it made (resends and fallbacks included), for the
/// card's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DispatchHistory {
    /// The request.
    pub request: DispatchRequest,
    /// Its jobs, oldest first.
    pub jobs: Vec<Job>,
}

/// What [`Cards::request_dispatch`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatched {
    /// The request.
    pub request: DispatchRequest,
    /// Its jobs.
    pub jobs: Vec<Job>,
}

/// What to do when a job dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fallback {
    /// A dead SMS job becomes an e-mail job for the same part, if the holder has a usable
    /// e-mail address.
    pub sms_to_email: bool,
    /// A dead job with no other fallback flags its part `needs_counter_reprint`.
    pub counter_reprint: bool,
}

impl Default for Fallback {
    fn default() -> Self {
        Fallback {
            sms_to_email: true,
            counter_reprint: true,
        }
    }
}

/// Retries and fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxPolicy {
    /// Attempts before a job is dead (at least 1).
    pub max_attempts: u32,
    /// Delay after the first failure (ms); doubled at each further one.
    pub backoff_base_ms: u64,
    /// Longest delay (ms).
    pub backoff_max_ms: u64,
    /// Adds up to a quarter of the delay, at random, so that retries spread out.
    pub jitter: bool,
    /// What a dead job becomes.
    pub fallback: Fallback,
}

impl Default for OutboxPolicy {
    fn default() -> Self {
        OutboxPolicy {
            max_attempts: 5,
            backoff_base_ms: 30_000,
            backoff_max_ms: 3_600_000,
            jitter: true,
            fallback: Fallback::default(),
        }
    }
}

impl OutboxPolicy {
    /// The delay before the next attempt after `attempts` attempts (without jitter):
    /// `base · 2^(attempts-1)`, at most `backoff_max_ms`.
    pub fn backoff(&self, attempts: u32) -> u64 {
        let shift = attempts.saturating_sub(1).min(40);
        self.backoff_base_ms
            .saturating_mul(1u64 << shift)
            .min(self.backoff_max_ms)
    }

    fn delay(&self, attempts: u32) -> Result<u64> {
        let d = self.backoff(attempts);
        if !self.jitter || d < 4 {
            return Ok(d);
        }
        let mut r = [0u8; 8];
        aws_lc_rs::rand::fill(&mut r).map_err(|_| Error::Provider("random generator"))?;
        Ok(d + u64::from_le_bytes(r) % (d / 4 + 1))
    }
}

/// One part's delivery, for the card's status: its latest job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartDelivery {
    /// The part.
    pub part: Part,
    /// The channel of its latest job.
    pub channel: Channel,
    /// The state of its latest job.
    pub state: JobState,
    /// The latest job's id.
    pub job: u64,
    /// Its attempts.
    pub attempts: u32,
    /// Dead with no fallback left.
    pub needs_counter_reprint: bool,
    /// Its last change (Unix ms).
    pub updated_ms: u64,
    /// The reason code of its last failure (`tls_untrusted`, `rejected_recipient`, …).
    pub failure_reason: Option<String>,
}

impl PartDelivery {
    /// The state as shown: the job's, or `needs_counter_reprint`.
    pub fn shown_state(&self) -> &'static str {
        if self.needs_counter_reprint {
            "needs_counter_reprint"
        } else {
            self.state.as_str()
        }
    }
}

/// Keeps only safe text of a courier's error: control characters become blanks, every digit of
/// a run of 4 or more becomes `#` (a code or a number never lands in a job), at most
/// [`MAX_ERROR`] characters.
fn clean_error(reason: &str) -> String {
    let chars: Vec<char> = reason.chars().take(MAX_ERROR).collect();
    let mut out = String::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let run = chars[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            for c in &chars[i..i + run] {
                out.push(if run >= 4 { '#' } else { *c });
            }
            i += run;
        } else {
            out.push(if chars[i].is_control() { ' ' } else { chars[i] });
            i += 1;
        }
    }
    out
}

fn check_peer_id(peer: &str) -> Result<()> {
    if peer.is_empty() || peer.len() > MAX_PEER_ID || !peer.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Invalid(format!(
            "peer id: 1 to {MAX_PEER_ID} printable ascii characters without blanks"
        )));
    }
    Ok(())
}

fn new_key() -> Result<[u8; 16]> {
    let mut k = [0u8; 16];
    aws_lc_rs::rand::fill(&mut k).map_err(|_| Error::Provider("random generator"))?;
    Ok(k)
}

fn card_key(serial: &str, id: u64) -> Vec<u8> {
    let mut k = serial.as_bytes().to_vec();
    k.push(b'|');
    k.extend_from_slice(&seq_key(id));
    k
}

fn counter_value(cms: &Cards, key: &[u8]) -> Result<u64> {
    match cms.store.get(Tree::Meta, key)? {
        Some(v) => <[u8; 8]>::try_from(v.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| Error::Storage("an outbox counter is damaged".into())),
        None => Ok(1),
    }
}

fn seq_of(bytes: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| Error::Storage("an outbox index key is damaged".into()))
}

/// Puts `job` into `b` with its indexes, moving them from what `old` had.
pub(super) fn put_job(b: &mut Batch, old: Option<&Job>, job: &Job) -> Result<()> {
    b.put(Tree::Outbox, seq_key(job.id).to_vec(), encode(job)?);
    let (old_due, old_open) = match old {
        Some(o) => (o.due_key(), o.open()),
        None => {
            b.put(Tree::OutboxCards, card_key(&job.serial, job.id), Vec::new());
            b.put(Tree::OutboxKeys, job.key_bytes()?, seq_key(job.id).to_vec());
            (None, false)
        }
    };
    let new_due = job.due_key();
    if old_due != new_due {
        if let Some(k) = old_due {
            b.delete(Tree::OutboxDue, k);
        }
        if let Some(k) = new_due {
            b.put(Tree::OutboxDue, k, Vec::new());
        }
    }
    match (old_open, job.open()) {
        (true, false) => b.delete(Tree::OutboxOpen, job.open_key()),
        (false, true) => b.put(Tree::OutboxOpen, job.open_key(), Vec::new()),
        _ => {}
    }
    Ok(())
}

/// Builds jobs, handing out ids from the job counter.
struct JobMaker {
    next: u64,
    now: u64,
}

impl JobMaker {
    fn new(cms: &Cards, now: u64) -> Result<JobMaker> {
        Ok(JobMaker {
            next: counter_value(cms, NEXT_JOB_KEY)?,
            now,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn make(
        &mut self,
        request: u64,
        serial: &str,
        part: Part,
        channel: Channel,
        digits: Option<u32>,
        origin: &str,
        replaces: Option<u64>,
        actor: &str,
    ) -> Result<Job> {
        let id = self.next;
        self.next += 1;
        Ok(Job {
            id,
            request,
            serial: serial.to_owned(),
            part,
            channel,
            digits,
            state: if channel == Channel::Counter {
                JobState::Counter
            } else {
                JobState::Queued
            },
            attempts: 0,
            next_attempt_ms: self.now,
            idempotency_key: hex::encode(new_key()?),
            last_error: None,
            peer_id: None,
            origin: origin.to_owned(),
            replaces,
            superseded_by: None,
            needs_counter_reprint: false,
            actor: actor.to_owned(),
            created_ms: self.now,
            updated_ms: self.now,
            claimed_ms: None,
            sent_ms: None,
            delivered_ms: None,
            handed_over_ms: None,
            handed_over_by: None,
            prints: 0,
            cancel_reason: None,
            failure_reason: None,
        })
    }

    fn save_into(&self, b: &mut Batch) {
        b.put(
            Tree::Meta,
            NEXT_JOB_KEY.to_vec(),
            self.next.to_be_bytes().to_vec(),
        );
    }
}

pub(super) fn job_event(action: &str, job: &Job) -> NewEvent {
    NewEvent::new(action, job.serial.clone())
        .detail("job", job.id.to_string())
        .detail("request", job.request.to_string())
        .detail("part", job.part.as_str())
        .detail("channel", job.channel.as_str())
}

pub(super) fn by(event: NewEvent, actor: &Actor) -> NewEvent {
    event.by_actor(actor)
}

impl Cards {
    /// A job.
    ///
    /// # Errors
    /// Store errors.
    pub fn job(&self, id: u64) -> Result<Option<Job>> {
        self.store
            .get(Tree::Outbox, &seq_key(id))?
            .map(|b| decode("dispatch job", &b))
            .transpose()
    }

    fn required_job(&self, id: u64) -> Result<Job> {
        self.job(id)?.ok_or(Missing::Job(id).into())
    }

    /// A dispatch request.
    ///
    /// # Errors
    /// Store errors.
    pub fn dispatch_request(&self, id: u64) -> Result<Option<DispatchRequest>> {
        self.store
            .get(Tree::DispatchRequests, &seq_key(id))?
            .map(|b| decode("dispatch request", &b))
            .transpose()
    }

    /// Every job of a card, oldest first (the history of its deliveries).
    ///
    /// # Errors
    /// Store errors.
    pub fn jobs_of(&self, serial: &str) -> Result<Vec<Job>> {
        let mut from = serial.as_bytes().to_vec();
        from.push(b'|');
        let mut to = serial.as_bytes().to_vec();
        to.push(b'|' + 1);
        let mut jobs = Vec::new();
        loop {
            let keys = self.store.keys(Tree::OutboxCards, &from, Some(&to), PAGE)?;
            for k in &keys {
                let id = seq_of(&k[k.len().saturating_sub(8)..])?;
                if let Some(j) = self.job(id)? {
                    jobs.push(j);
                }
            }
            match keys.last() {
                Some(last) if keys.len() == PAGE => {
                    from = last.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(jobs)
    }

    /// Adds to `b` the cancellation of every job of card `serial` that has not gone out
    /// ([`Job::cancellable`]): each becomes `cancelled`, `why` as its reason, leaving
    /// the due and overdue indexes. Returns the jobs with their `dispatch.cancel` events, for
    /// the caller to commit with `b` (a shred that destroys the card's codes). The caller
    /// holds the ops lock.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) fn cancel_jobs_into(
        &self,
        serial: &str,
        why: &str,
        now_ms: u64,
        b: &mut Batch,
    ) -> Result<Vec<(Job, NewEvent)>> {
        let mut out = Vec::new();
        for old in self.jobs_of(serial)? {
            if !old.cancellable() {
                continue;
            }
            let mut job = old.clone();
            job.state = JobState::Cancelled;
            job.cancel_reason = Some(clean_error(why));
            job.updated_ms = now_ms;
            put_job(b, Some(&old), &job)?;
            let event = job_event("dispatch.cancel", &job)
                .detail("from", old.state.as_str())
                .detail("why", clean_error(why));
            out.push((job, event));
        }
        Ok(out)
    }

    /// The latest job of each part of the card's dispatch in force (its newest), by part.
    pub(super) fn latest_jobs(&self, serial: &str) -> Result<BTreeMap<Part, Job>> {
        let jobs = self.jobs_of(serial)?;
        let current = jobs.iter().map(|j| j.request).max();
        let mut latest = BTreeMap::new();
        for j in jobs {
            if Some(j.request) == current {
                latest.insert(j.part, j);
            }
        }
        Ok(latest)
    }

    /// Every dispatch of a card, oldest first, each with all its jobs (the card's history;
    /// the last one is in force unless superseded).
    ///
    /// # Errors
    /// Store errors; [`Error::Storage`] for a job whose request record is missing.
    pub fn dispatches_of(&self, serial: &str) -> Result<Vec<DispatchHistory>> {
        let mut by_request: BTreeMap<u64, Vec<Job>> = BTreeMap::new();
        for j in self.jobs_of(serial)? {
            by_request.entry(j.request).or_default().push(j);
        }
        by_request
            .into_iter()
            .map(|(id, jobs)| {
                let request = self.dispatch_request(id)?.ok_or_else(|| {
                    Error::Storage(format!("card {serial}: dispatch request {id} is missing"))
                })?;
                Ok(DispatchHistory { request, jobs })
            })
            .collect()
    }

    /// The card's dispatch in force: its newest, unless superseded.
    pub(super) fn dispatch_in_force(&self, serial: &str) -> Result<Option<DispatchHistory>> {
        Ok(self
            .dispatches_of(serial)?
            .pop()
            .filter(|d| d.request.superseded_by.is_none()))
    }

    /// Each part's delivery for a card (its latest job), in part order; empty before any
    /// dispatch. Used by the card's status.
    ///
    /// # Errors
    /// Store errors.
    pub fn deliveries(&self, serial: &str) -> Result<Vec<PartDelivery>> {
        Ok(self
            .latest_jobs(serial)?
            .into_values()
            .map(|j| PartDelivery {
                part: j.part,
                channel: j.channel,
                state: j.state,
                job: j.id,
                attempts: j.attempts,
                needs_counter_reprint: j.needs_counter_reprint,
                updated_ms: j.updated_ms,
                failure_reason: j.failure_reason,
            })
            .collect())
    }

    /// Refuses a channel the holder cannot be reached by: no registered contact, or (rule 13)
    /// a contact changed after the card's last identification.
    pub(super) fn check_contact(
        &self,
        card: &CardRecord,
        holder: &HolderRecord,
        personal: &PersonalData,
        channel: Channel,
    ) -> std::result::Result<(), Refusal> {
        self.contact_problem(card, holder, personal, channel)
            .map_or(Ok(()), |(_, e)| Err(e))
    }

    /// Why `channel` cannot reach the holder, if it cannot: `contact_missing` or
    /// `contact_changed` (rule 13), with the refusal.
    pub(super) fn contact_problem(
        &self,
        card: &CardRecord,
        holder: &HolderRecord,
        personal: &PersonalData,
        channel: Channel,
    ) -> Option<(&'static str, Refusal)> {
        let serial = &card.serial;
        let (registered, changed, what) = match channel {
            Channel::Counter => return None,
            Channel::Sms => (
                personal.mobile.is_some(),
                holder.mobile_changed_ms,
                "mobile number",
            ),
            Channel::Email => (
                personal.email.is_some(),
                holder.email_changed_ms,
                "e-mail address",
            ),
            Channel::Mailer => (personal.address.is_some(), None, "postal address"),
            // No job goes by a plan placeholder: refused as a contact that cannot exist.
            Channel::Remote | Channel::Any => (false, None, "destination for that channel"),
        };
        if !registered {
            return Some((
                "contact_missing",
                Refusal::NoContact {
                    card: serial.clone(),
                    contact: what,
                },
            ));
        }
        if let Some(changed) = changed {
            if card.identified_ms().is_none_or(|at| changed >= at) {
                return Some((
                    "contact_changed",
                    Refusal::ContactChanged {
                        card: serial.clone(),
                        contact: what,
                    },
                ));
            }
        }
        None
    }

    /// The card, checked for a delivery: `active` (expired cards are revoked on the way) and
    /// its codes held. Called with the ops lock held.
    fn deliverable_card(
        &self,
        audit: &AuditLog,
        serial: &str,
        today: Date,
        actor: &Actor,
    ) -> Result<CardRecord> {
        let card = self.active_card(audit, serial, today, actor)?;
        if self.codes.locate(serial)?.is_none() {
            return Err(Refusal::CodesNotHeld {
                card: serial.to_owned(),
            }
            .into());
        }
        Ok(card)
    }

    pub(super) fn holder_of(
        &self,
        hsm: &dyn Hsm,
        card: &CardRecord,
    ) -> Result<(HolderRecord, PersonalData)> {
        let holder = self
            .holder(&card.holder)?
            .ok_or_else(|| Error::Storage(format!("holder {} is missing", card.holder)))?;
        let personal = self.personal(hsm, &holder)?;
        Ok((holder, personal))
    }

    /// Asks for a card's codes to be delivered by `plan` ([`Plan`]): one job per part,
    /// written with the request and one `dispatch.request` event in one store batch. A refused
    /// request writes nothing (but a card found past expiry is revoked first, as on every
    /// access).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad plan; [`Error::Missing`] for an unknown card;
    /// [`Error::WrongState`] for a card not `active`; [`Error::Refusal`] when its codes are not
    /// held, when a contact the plan needs is not registered or changed after the last
    /// identification (rule 13), or when the card has a dispatch in force (under way or
    /// done: see [`Cards::request_dispatch_with`] to replace it); [`Error::Sealed`]; store and
    /// audit errors.
    pub fn request_dispatch(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        serial: &str,
        plan_text: &str,
        today: Date,
        actor: &Actor,
    ) -> Result<Dispatched> {
        self.request_dispatch_with(hsm, audit, serial, plan_text, None, today, actor)
    }

    /// [`Cards::request_dispatch`], replacing the card's dispatch in force when `replace` gives
    /// a reason: a card has one dispatch in force at a time (rule 14a), so a new one is
    /// refused while one is under way or done, unless it replaces it. The replaced dispatch
    /// is marked superseded and its unsent parts (`counter`, `awaiting_counter`, `queued`,
    /// `failed`) `cancelled`, in the batch of the new request, with a `dispatch.supersede`
    /// event. A part being sent at this moment cannot be cancelled: the replacement is
    /// refused until it is settled.
    ///
    /// # Errors
    /// As [`Cards::request_dispatch`]; [`Error::Invalid`] for an empty or over-long reason, or
    /// one with control characters.
    #[allow(clippy::too_many_arguments)]
    pub fn request_dispatch_with(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        serial: &str,
        plan_text: &str,
        replace: Option<&str>,
        today: Date,
        actor: &Actor,
    ) -> Result<Dispatched> {
        let plan = parse_plan(plan_text)?;
        let reason = replace.map(check_reason).transpose()?;
        let _ops = self.ops_lock();
        let card = self.deliverable_card(audit, serial, today, actor)?;
        let in_force = self.dispatch_in_force(serial)?;
        if let Some(old) = &in_force {
            if let Some(j) = old.jobs.iter().find(|j| j.state == JobState::Sending) {
                return Err(Refusal::PartSending {
                    card: serial.to_owned(),
                    part: j.part.to_string(),
                    dispatch: Some(old.request.id),
                    job: j.id,
                }
                .into());
            }
            if reason.is_none() {
                let under_way = old.jobs.iter().any(|j| {
                    j.superseded_by.is_none() && (j.state.unsent() || j.state.in_progress())
                });
                return Err(Refusal::DispatchInForce {
                    card: serial.to_owned(),
                    dispatch: old.request.id,
                    plan: old.request.plan.clone(),
                    under_way,
                }
                .into());
            }
        }
        let (holder, personal) = self.holder_of(hsm, &card)?;
        let parts: Vec<(Part, Channel, Option<u32>)> = match plan {
            Plan::Whole(channel) => {
                let c = whole_channel(channel);
                self.check_contact(&card, &holder, &personal, c)?;
                vec![(Part::Whole, c, None)]
            }
            Plan::Counter { digits, remote } => {
                let digits = job_digits(digits)?;
                let remote = match remote {
                    Channel::Remote => {
                        let sms = self.check_contact(&card, &holder, &personal, Channel::Sms);
                        let email = self.check_contact(&card, &holder, &personal, Channel::Email);
                        match (sms, email) {
                            (Ok(()), _) => Channel::Sms,
                            (_, Ok(())) => Channel::Email,
                            (Err(sms), Err(email)) => {
                                return Err(Refusal::NoRemoteChannel {
                                    card: serial.to_owned(),
                                    sms: Box::new(sms),
                                    email: Box::new(email),
                                }
                                .into())
                            }
                        }
                    }
                    c => {
                        self.check_contact(&card, &holder, &personal, c)?;
                        c
                    }
                };
                vec![
                    (Part::A, Channel::Counter, Some(digits)),
                    (Part::B, remote, Some(digits)),
                ]
            }
        };
        let now = self.now_ms();
        let id = counter_value(self, NEXT_REQUEST_KEY)?;
        let mut maker = JobMaker::new(self, now)?;
        let mut b = Batch::new();
        let mut events = Vec::new();
        let mut replaces = None;
        if let (Some(old), Some(reason)) = (in_force, reason.as_deref()) {
            replaces = Some(old.request.id);
            events.push(self.supersede_into(&mut b, old, id, reason, now, actor)?);
        }
        let mut jobs = Vec::new();
        for (part, channel, digits) in parts {
            let mut job = maker.make(
                id, serial, part, channel, digits, "request", None, &actor.id,
            )?;
            if part == Part::B {
                // Rule: part B goes to its courier only once part A is handed over.
                job.state = JobState::AwaitingCounter;
            }
            put_job(&mut b, None, &job)?;
            jobs.push(job);
        }
        maker.save_into(&mut b);
        b.put(
            Tree::Meta,
            NEXT_REQUEST_KEY.to_vec(),
            (id + 1).to_be_bytes().to_vec(),
        );
        let request = DispatchRequest {
            id,
            serial: serial.to_owned(),
            plan: plan_text.trim().to_owned(),
            jobs: jobs.iter().map(|j| j.id).collect(),
            actor: actor.id.clone(),
            request_id: actor.request_id.clone(),
            created_ms: now,
            replaces,
            replace_reason: replaces.and(reason),
            superseded_by: None,
        };
        b.put(
            Tree::DispatchRequests,
            seq_key(id).to_vec(),
            encode(&request)?,
        );
        let parts: Vec<String> = jobs
            .iter()
            .map(|j| format!("{}:{}:{}", j.part, j.channel, j.id))
            .collect();
        let mut event = by(NewEvent::new("dispatch.request", serial.to_owned()), actor)
            .detail("dispatch", id.to_string())
            .detail("plan", request.plan.clone())
            .detail("jobs", parts.join(","));
        if let Some(old) = request.replaces {
            event = event.detail("replaces", old.to_string());
        }
        events.push(event);
        audit.commit_all(b, events)?;
        Ok(Dispatched { request, jobs })
    }

    /// Marks dispatch `old` superseded by `new_id` and cancels its unsent parts, into `b`;
    /// returns the `dispatch.supersede` event. Called with the ops lock held.
    fn supersede_into(
        &self,
        b: &mut Batch,
        old: DispatchHistory,
        new_id: u64,
        reason: &str,
        now: u64,
        actor: &Actor,
    ) -> Result<NewEvent> {
        let mut cancelled = Vec::new();
        for job in &old.jobs {
            if job.cancellable() {
                let mut c = job.clone();
                c.state = JobState::Cancelled;
                c.cancel_reason = Some("superseded".into());
                c.updated_ms = now;
                put_job(b, Some(job), &c)?;
                cancelled.push(format!("{}:{}:{}", c.part, c.channel, c.id));
            }
        }
        let mut request = old.request;
        request.superseded_by = Some(new_id);
        b.put(
            Tree::DispatchRequests,
            seq_key(request.id).to_vec(),
            encode(&request)?,
        );
        Ok(by(
            NewEvent::new("dispatch.supersede", request.serial.clone()),
            actor,
        )
        .detail("dispatch", request.id.to_string())
        .detail("by_dispatch", new_id.to_string())
        .detail("reason", reason.to_owned())
        .detail("cancelled", cancelled.join(",")))
    }

    /// Claims up to `limit` jobs of the `channels` due at `now_ms` (`queued`, or `failed` whose
    /// next attempt has come), oldest due first within a channel: each becomes `sending` with
    /// one more attempt before it is returned. One store write, not flushed: a claim lost in a
    /// crash leaves the job waiting, and the release that follows a claim is flushed. Not
    /// audited (see the module documentation).
    ///
    /// # Errors
    /// Store errors (then nothing is claimed).
    pub fn claim_due(&self, now_ms: u64, channels: &[Channel], limit: usize) -> Result<Vec<Job>> {
        let _ops = self.ops_lock();
        let mut b = Batch::new();
        let claimed = self.claim_into(now_ms, channels, limit, &mut b)?;
        if !b.is_empty() {
            self.store.apply(&b)?;
        }
        Ok(claimed)
    }

    /// [`Cards::claim_due`]'s changes put into `b`. Called with the ops lock held.
    pub(super) fn claim_into(
        &self,
        now_ms: u64,
        channels: &[Channel],
        limit: usize,
        b: &mut Batch,
    ) -> Result<Vec<Job>> {
        let mut claimed = Vec::with_capacity(limit);
        for channel in channels {
            let lane = LANE_WAITING | channel_tag(*channel);
            let mut to = vec![lane];
            to.extend_from_slice(&now_ms.saturating_add(1).to_be_bytes());
            let want = limit.saturating_sub(claimed.len());
            if want == 0 {
                break;
            }
            for k in self.store.keys(Tree::OutboxDue, &[lane], Some(&to), want)? {
                let id = seq_of(&k[k.len().saturating_sub(8)..])?;
                let Some(old) = self.job(id)? else {
                    b.delete(Tree::OutboxDue, k);
                    continue;
                };
                if !matches!(old.state, JobState::Queued | JobState::Failed) {
                    b.delete(Tree::OutboxDue, k);
                    continue;
                }
                let mut job = old.clone();
                job.state = JobState::Sending;
                job.attempts += 1;
                job.claimed_ms = Some(now_ms);
                job.updated_ms = now_ms;
                put_job(b, Some(&old), &job)?;
                claimed.push(job);
            }
        }
        Ok(claimed)
    }

    /// Records that the courier accepted job `id` (`sending` → `sent`), with its id for the
    /// message, and a `dispatch.sent` event, in one batch: [`Cards::mark_sent_many`] for one job.
    ///
    /// # Errors
    /// As [`Cards::mark_sent_many`], for the job or the whole call.
    pub fn mark_sent(&self, audit: &AuditLog, id: u64, peer_id: &str) -> Result<Job> {
        self.mark_sent_many(audit, &[(id, peer_id.to_owned())])?
            .pop()
            .unwrap_or_else(|| Err(Missing::Job(id).into()))
    }

    /// Records that the courier accepted each job of `sent` (`sending` → `sent`), with its
    /// id for the message: every change and its `dispatch.sent` event in one commit (one flush
    /// for all). A job already `sent` or `delivered` (a receipt came first) is left as it is.
    /// Returns one result a job, in order; a job refused changes nothing.
    ///
    /// # Errors
    /// For the whole call: store and audit errors (then nothing is marked). For a job:
    /// [`Error::Missing`]; [`Error::Invalid`] for a bad peer id; [`Error::WrongState`] for a
    /// job in another state.
    pub fn mark_sent_many(
        &self,
        audit: &AuditLog,
        sent: &[(u64, String)],
    ) -> Result<Vec<Result<Job>>> {
        let ops = self.ops_lock();
        let mut b = Batch::new();
        let mut events = Vec::new();
        let out = self.sent_into(sent, &mut b, &mut events)?;
        if !events.is_empty() {
            let written = audit.write_all(b, events)?;
            drop(ops);
            audit.durable(written)?;
        }
        Ok(out)
    }

    /// [`Cards::mark_sent_many`]'s changes put into `b` and its events into `events`, at the
    /// cards' clock's now. Called with the ops lock held.
    ///
    /// # Errors
    /// Store errors for the whole call; the per-job refusals come back one a job.
    pub(super) fn sent_into(
        &self,
        sent: &[(u64, String)],
        b: &mut Batch,
        events: &mut Vec<NewEvent>,
    ) -> Result<Vec<Result<Job>>> {
        let now = self.now_ms();
        let mut out = Vec::with_capacity(sent.len());
        // Jobs changed earlier in this batch, by id: the same job twice in `sent` must see its
        // first change (a second mark leaves it `sent`, with no second event).
        let mut changed: BTreeMap<u64, Job> = BTreeMap::new();
        for (id, peer_id) in sent {
            let marked = check_peer_id(peer_id).and_then(|()| {
                let old = match changed.get(id) {
                    Some(j) => j.clone(),
                    None => self.required_job(*id)?,
                };
                match old.state {
                    JobState::Sending => {}
                    JobState::Sent | JobState::Delivered => return Ok((old, None)),
                    s => return Err(wrong_job_state(&old, s, "sending")),
                }
                let mut job = old.clone();
                job.state = JobState::Sent;
                job.peer_id = Some(peer_id.clone());
                job.sent_ms = Some(now);
                job.updated_ms = now;
                put_job(b, Some(&old), &job)?;
                let event = job_event("dispatch.sent", &job)
                    .detail("attempt", job.attempts.to_string())
                    .detail("peer_id", peer_id.clone());
                Ok((job, Some(event)))
            });
            match marked {
                Ok((job, event)) => {
                    if event.is_some() {
                        changed.insert(job.id, job.clone());
                    }
                    events.extend(event);
                    out.push(Ok(job));
                }
                Err(e @ Error::Storage(_)) => return Err(e),
                Err(e) => out.push(Err(e)),
            }
        }
        Ok(out)
    }

    /// Records that sending job `id` failed. A temporary failure with attempts left makes it
    /// `failed`, due again after the policy's backoff (not audited); a permanent one, or the
    /// last attempt, makes it `dead` with a `dispatch.dead` event and the policy's fallback
    /// (a new e-mail job, or the part flagged for a counter reprint, with a
    /// `dispatch.fallback` event), in one batch. `reason` is kept cleaned (no digit runs).
    ///
    /// # Errors
    /// [`Error::Missing`]; [`Error::WrongState`] for a job that is not `sending`;
    /// [`Error::Sealed`] (the fallback reads the holder's contacts); store and audit errors.
    #[allow(clippy::too_many_arguments)]
    pub fn mark_failed(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        id: u64,
        temporary: bool,
        reason: &str,
        now_ms: u64,
        policy: &OutboxPolicy,
    ) -> Result<Job> {
        let _ops = self.ops_lock();
        let old = self.required_job(id)?;
        if old.state != JobState::Sending {
            return Err(wrong_job_state(&old, old.state, "sending"));
        }
        self.fail_locked(hsm, audit, old, temporary, reason, now_ms, policy)
    }

    /// [`Cards::mark_failed`] with the failure's reason code (`code`: lower-case letters,
    /// digits and `_`, at most 40), kept on the job as `failure_reason`.
    ///
    /// # Errors
    /// As [`Cards::mark_failed`]; [`Error::Invalid`] for a malformed code.
    #[allow(clippy::too_many_arguments)]
    pub fn mark_failed_coded(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        id: u64,
        temporary: bool,
        code: &str,
        reason: &str,
        now_ms: u64,
        policy: &OutboxPolicy,
    ) -> Result<Job> {
        check_failure_code(code)?;
        let _ops = self.ops_lock();
        let mut old = self.required_job(id)?;
        if old.state != JobState::Sending {
            return Err(wrong_job_state(&old, old.state, "sending"));
        }
        // The code goes in with the failure's own write (`fail_locked` copies `old`); the
        // index keys do not depend on it.
        let stored = old.clone();
        old.failure_reason = Some(code.to_owned());
        let job =
            self.fail_locked_from(hsm, audit, &stored, old, temporary, reason, now_ms, policy)?;
        Ok(job)
    }

    /// Records that job `id` was not sent because its lane is paused by a failure of the
    /// relay or gateway as a whole (TLS, credentials, connection, a missing capability): not
    /// a verdict on the job. `sending` → `queued`, due at `resume_ms`, with the claim's attempt
    /// given back, the failure's `code` and cleaned `reason` kept. Never `dead`, never a
    /// fallback; not audited (like a temporary failure).
    ///
    /// # Errors
    /// [`Error::Missing`]; [`Error::WrongState`] for a job that is not `sending`;
    /// [`Error::Invalid`] for a malformed code; store errors.
    pub fn mark_paused(
        &self,
        id: u64,
        code: &str,
        reason: &str,
        now_ms: u64,
        resume_ms: u64,
    ) -> Result<Job> {
        check_failure_code(code)?;
        let _ops = self.ops_lock();
        let old = self.required_job(id)?;
        if old.state != JobState::Sending {
            return Err(wrong_job_state(&old, old.state, "sending"));
        }
        let mut job = old.clone();
        job.state = JobState::Queued;
        job.attempts = job.attempts.saturating_sub(1);
        job.next_attempt_ms = resume_ms;
        job.last_error = Some(clean_error(reason));
        job.failure_reason = Some(code.to_owned());
        job.updated_ms = now_ms;
        let mut b = Batch::new();
        put_job(&mut b, Some(&old), &job)?;
        self.store.apply(&b)?;
        Ok(job)
    }

    #[allow(clippy::too_many_arguments)]
    fn fail_locked(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        old: Job,
        temporary: bool,
        reason: &str,
        now_ms: u64,
        policy: &OutboxPolicy,
    ) -> Result<Job> {
        let job = old.clone();
        self.fail_locked_from(hsm, audit, &old, job, temporary, reason, now_ms, policy)
    }

    /// [`Cards::fail_locked`] with the stored record `old` and the changed job `job` apart
    /// (so a caller may set fields such as the reason code first).
    #[allow(clippy::too_many_arguments)]
    fn fail_locked_from(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        old: &Job,
        mut job: Job,
        temporary: bool,
        reason: &str,
        now_ms: u64,
        policy: &OutboxPolicy,
    ) -> Result<Job> {
        job.last_error = Some(clean_error(reason));
        job.updated_ms = now_ms;
        let mut b = Batch::new();
        if temporary && job.attempts < policy.max_attempts.max(1) {
            job.state = JobState::Failed;
            job.next_attempt_ms = now_ms.saturating_add(policy.delay(job.attempts)?);
            put_job(&mut b, Some(old), &job)?;
            self.store.apply(&b)?;
            return Ok(job);
        }
        job.state = JobState::Dead;
        let mut events = vec![job_event("dispatch.dead", &job)
            .detail("attempts", job.attempts.to_string())
            .detail(
                "failure",
                if temporary {
                    "attempts_exhausted"
                } else {
                    "permanent"
                },
            )
            .detail("last_error", job.last_error.clone().unwrap_or_default())];
        if let Some(event) = self.fallback(hsm, &mut job, policy, now_ms, &mut b)? {
            events.push(event);
        }
        put_job(&mut b, Some(old), &job)?;
        audit.commit_all(b, events)?;
        Ok(job)
    }

    /// The fallback of a job just dead, by `policy`: a new e-mail job for an SMS job (the
    /// dead job points to it), else the counter-reprint flag set on `job`.
    fn fallback(
        &self,
        hsm: &dyn Hsm,
        job: &mut Job,
        policy: &OutboxPolicy,
        now: u64,
        b: &mut Batch,
    ) -> Result<Option<NewEvent>> {
        let Some(card) = self.card(&job.serial)? else {
            return Ok(None);
        };
        if card.state != CardState::Active {
            // No fallback for a card that may no longer receive codes.
            return Ok(None);
        }
        let mut why_not = None;
        if job.channel == Channel::Sms && policy.fallback.sms_to_email {
            let (holder, personal) = self.holder_of(hsm, &card)?;
            match self.check_contact(&card, &holder, &personal, Channel::Email) {
                Ok(()) => {
                    let mut maker = JobMaker::new(self, now)?;
                    let new = maker.make(
                        job.request,
                        &job.serial,
                        job.part,
                        Channel::Email,
                        job.digits,
                        "fallback",
                        Some(job.id),
                        "system",
                    )?;
                    maker.save_into(b);
                    put_job(b, None, &new)?;
                    job.superseded_by = Some(new.id);
                    return Ok(Some(
                        job_event("dispatch.fallback", job)
                            .detail("to", "email")
                            .detail("new_job", new.id.to_string()),
                    ));
                }
                Err(e) => why_not = Some(e.without_card()),
            }
        }
        if !policy.fallback.counter_reprint {
            return Ok(None);
        }
        job.needs_counter_reprint = true;
        let mut event = job_event("dispatch.fallback", job).detail("to", "counter_reprint");
        if let Some(w) = why_not {
            event = event.detail("email_refused", w);
        }
        Ok(Some(event))
    }
}

/// A failure's reason code: 1 to 40 of `a-z 0-9 _` (a `dispatch::FailureReason` name).
fn check_failure_code(code: &str) -> Result<()> {
    if code.is_empty()
        || code.len() > 40
        || !code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(Error::Invalid(
            "failure reason code: 1 to 40 characters of a-z, 0-9 and _".into(),
        ));
    }
    Ok(())
}

/// Longest reason for replacing a dispatch.
const MAX_REASON: usize = 200;

/// A replacement's reason, trimmed: 1 to [`MAX_REASON`] characters, no control character.
fn check_reason(reason: &str) -> Result<String> {
    let r = reason.trim();
    if r.is_empty() || r.chars().count() > MAX_REASON || r.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "reason: 1 to {MAX_REASON} characters without control characters, required to \
             replace a dispatch"
        )));
    }
    Ok(r.to_owned())
}

fn wrong_job_state(job: &Job, state: JobState, wanted: &str) -> Error {
    Error::WrongState {
        subject: Subject::Job(job.id),
        state: state.to_string(),
        wanted: wanted.to_owned(),
    }
}

/// The failure reason code of a job ended by a bounce ([`Cards::mark_bounced`]).
pub const BOUNCED: &str = "bounced";

/// What a delivery receipt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// The job moved (to `delivered`, or `failed`/`dead` for a negative receipt).
    Applied,
    /// Nothing to do: a repeat, or a receipt about an attempt already settled.
    Repeat,
}

impl Cards {
    /// Applies a delivery receipt (e.g. an SMS gateway's delivery report) to the job with
    /// `idempotency_key`. `delivered` moves it to `delivered` with a `dispatch.delivered` event
    /// (from any state but `delivered`: a receipt may come before [`Cards::mark_sent`] is
    /// recorded, or after the job was given up). A negative receipt of a `sent` (or `sending`)
    /// job counts as a temporary failure ([`Cards::mark_failed`]); otherwise it is a no-op. A
    /// repeat is a no-op.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a key that is not 32 hex digits; [`Error::Missing`] for an
    /// unknown key; [`Error::Sealed`] (a fallback); store and audit errors.
    pub fn mark_delivered_by_key(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        idempotency_key: &str,
        delivered: bool,
        now_ms: u64,
        policy: &OutboxPolicy,
    ) -> Result<(Job, ReceiptOutcome)> {
        let key = hex::decode(idempotency_key)
            .ok()
            .filter(|k| k.len() == 16)
            .ok_or_else(|| Error::Invalid("idempotency key: expected 32 hex digits".into()))?;
        let _ops = self.ops_lock();
        let id = self
            .store
            .get(Tree::OutboxKeys, &key)?
            .ok_or(Missing::JobKey)?;
        let old = self.required_job(seq_of(&id)?)?;
        if !delivered {
            if !matches!(old.state, JobState::Sent | JobState::Sending) {
                return Ok((old, ReceiptOutcome::Repeat));
            }
            let job = self.fail_locked(
                hsm,
                audit,
                old,
                true,
                "negative delivery receipt",
                now_ms,
                policy,
            )?;
            return Ok((job, ReceiptOutcome::Applied));
        }
        if old.state == JobState::Delivered {
            return Ok((old, ReceiptOutcome::Repeat));
        }
        let mut job = old.clone();
        job.state = JobState::Delivered;
        job.delivered_ms = Some(now_ms);
        job.updated_ms = now_ms;
        let mut b = Batch::new();
        put_job(&mut b, Some(&old), &job)?;
        audit.commit(
            b,
            job_event("dispatch.delivered", &job).detail("from", old.state.as_str()),
        )?;
        Ok((job, ReceiptOutcome::Applied))
    }

    /// Applies a bounce (a DSN whose recipient block says `Action: failed`) to the e-mail job
    /// it names: by its `Original-Envelope-Id` when that is one of plico's (the SMTP courier
    /// sends the job's idempotency key as `ENVID`), else by the returned `Message-ID`'s
    /// `message_digest`, the 32 hex digits of `<…​.plico@domain>` (the first half of SHA-256 of
    /// the job's key, [`dispatch::courier::smtp::message_id`]). A `sent` job becomes `dead` as
    /// a permanent failure with the reason code [`BOUNCED`] and the reason `bounced <status>`
    /// (e.g. `bounced 5.1.1`), audited as `dispatch.dead`, and falls back by `policy` like any
    /// permanent refusal; a job in another state is left alone ([`ReceiptOutcome::Repeat`]):
    /// the same DSN twice changes nothing the second time.
    ///
    /// No index maps a `Message-ID` to a job: that lookup walks the idempotency keys (bounces
    /// are rare, and the walk reads only the 16-byte keys); the envelope id is one read.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a digest that is not 32 hex digits or a status that is not
    /// `class.subject.detail`; [`Error::Missing`] when no e-mail job is named; store and audit
    /// errors.
    #[allow(clippy::too_many_arguments)]
    pub fn mark_bounced(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        envelope_id: Option<&str>,
        message_digest: Option<&str>,
        status: &str,
        now_ms: u64,
        policy: &OutboxPolicy,
    ) -> Result<(Job, ReceiptOutcome)> {
        let wanted = message_digest
            .map(|d| {
                hex::decode(d)
                    .ok()
                    .filter(|d| d.len() == 16)
                    .ok_or_else(|| Error::Invalid("message-id: expected 32 hex digits".into()))
            })
            .transpose()?;
        // Another sender's envelope id is not an error: it is just not one of plico's.
        let envelope_key = envelope_id
            .and_then(|e| hex::decode(e.trim()).ok())
            .filter(|k| k.len() == 16);
        let status_ok = status.len() <= 11
            && status.split('.').count() == 3
            && status
                .split('.')
                .all(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()));
        if !status_ok {
            return Err(Error::Invalid(
                "bounce status: expected class.subject.detail".into(),
            ));
        }
        let _ops = self.ops_lock();
        let by_envelope = match &envelope_key {
            Some(key) => self.store.get(Tree::OutboxKeys, key)?,
            None => None,
        };
        let id = match (by_envelope, &wanted) {
            (Some(id), _) => seq_of(&id)?,
            (None, Some(digest)) => self.job_id_by_message_digest(digest)?,
            (None, None) => return Err(Missing::JobKey.into()),
        };
        let old = self.required_job(id)?;
        if old.channel != Channel::Email {
            return Err(Missing::JobKey.into());
        }
        if old.state != JobState::Sent {
            return Ok((old, ReceiptOutcome::Repeat));
        }
        let mut bounced = old.clone();
        bounced.failure_reason = Some(BOUNCED.to_owned());
        let job = self.fail_locked_from(
            hsm,
            audit,
            &old,
            bounced,
            false,
            &format!("bounced {status}"),
            now_ms,
            policy,
        )?;
        Ok((job, ReceiptOutcome::Applied))
    }

    /// The job whose idempotency key hashes to `digest` (SHA-256 of the key's hex, first 16
    /// bytes), by walking [`Tree::OutboxKeys`].
    fn job_id_by_message_digest(&self, digest: &[u8]) -> Result<u64> {
        let mut from = Vec::new();
        loop {
            let entries = self.store.range(Tree::OutboxKeys, &from, None, PAGE)?;
            let Some((last, _)) = entries.last() else {
                return Err(Missing::JobKey.into());
            };
            let mut next = last.clone();
            next.push(0);
            for (key, id) in &entries {
                let hashed = aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    hex::encode(key).as_bytes(),
                );
                if hashed.as_ref().get(..16) == Some(digest) {
                    return seq_of(id);
                }
            }
            if entries.len() < PAGE {
                return Err(Missing::JobKey.into());
            }
            from = next;
        }
    }

    /// At start-up, before any worker runs: every job found `sending` (its worker died with
    /// the process) goes back to `queued`, due at once, with the same idempotency key. One
    /// `dispatch.recover` event per page of jobs, in its batch. Returns how many.
    ///
    /// # Errors
    /// Store and audit errors (jobs recovered before the error stay recovered).
    pub fn recover(&self, audit: &AuditLog) -> Result<u64> {
        let _ops = self.ops_lock();
        self.move_old_waiting_keys()?;
        let now = self.now_ms();
        let mut count = 0u64;
        loop {
            let keys = self.store.keys(
                Tree::OutboxDue,
                &[LANE_SENDING],
                Some(&[LANE_SENDING + 1]),
                PAGE,
            )?;
            if keys.is_empty() {
                break;
            }
            let mut b = Batch::new();
            let mut n = 0u64;
            for k in &keys {
                let id = seq_of(&k[k.len().saturating_sub(8)..])?;
                match self.job(id)? {
                    Some(old) if old.state == JobState::Sending => {
                        let mut job = old.clone();
                        job.state = JobState::Queued;
                        job.next_attempt_ms = now;
                        job.updated_ms = now;
                        put_job(&mut b, Some(&old), &job)?;
                        n += 1;
                    }
                    _ => b.delete(Tree::OutboxDue, k.clone()),
                }
            }
            if n > 0 {
                audit.commit(
                    b,
                    NewEvent::new("dispatch.recover", "outbox").detail("requeued", n.to_string()),
                )?;
            } else {
                self.store.apply(&b)?;
            }
            count += n;
        }
        Ok(count)
    }

    /// The `mailer` jobs waiting for the cards of a print file, made `sent` (the mailer number
    /// as the peer id) into `b`, with their `dispatch.sent` events: a mailer dispatch is done
    /// by the next print run that prints the card. Cheap when no mailer job waits (one key
    /// read). Called with the ops lock held, inside the print file's commit.
    ///
    /// # Errors
    /// Store errors.
    pub(super) fn mailer_jobs_printed(
        &self,
        serials: &[String],
        numbers: &[u64],
        b: &mut Batch,
    ) -> Result<Vec<NewEvent>> {
        let lane = LANE_WAITING | channel_tag(Channel::Mailer);
        if self
            .store
            .keys(Tree::OutboxDue, &[lane], Some(&[lane + 1]), 1)?
            .is_empty()
        {
            return Ok(Vec::new());
        }
        let now = self.now_ms();
        let mut events = Vec::new();
        for (serial, number) in serials.iter().zip(numbers) {
            for old in self.jobs_of(serial)? {
                if old.channel != Channel::Mailer
                    || !matches!(old.state, JobState::Queued | JobState::Failed)
                {
                    continue;
                }
                let mut job = old.clone();
                job.state = JobState::Sent;
                job.attempts += 1;
                job.peer_id = Some(format!("mailer-{number}"));
                job.sent_ms = Some(now);
                job.updated_ms = now;
                put_job(b, Some(&old), &job)?;
                events.push(
                    job_event("dispatch.sent", &job)
                        .detail("attempt", job.attempts.to_string())
                        .detail("peer_id", format!("mailer-{number}")),
                );
            }
        }
        Ok(events)
    }

    /// Moves the waiting keys of a store written before the waiting lanes had channels (lane
    /// 0) to their channel's lane. Called with the ops lock held.
    fn move_old_waiting_keys(&self) -> Result<()> {
        loop {
            let keys = self.store.keys(
                Tree::OutboxDue,
                &[LANE_OLD_WAITING],
                Some(&[LANE_OLD_WAITING + 1]),
                PAGE,
            )?;
            if keys.is_empty() {
                return Ok(());
            }
            let mut b = Batch::new();
            for k in keys {
                let id = seq_of(&k[k.len().saturating_sub(8)..])?;
                if let Some(due) = self.job(id)?.and_then(|job| job.due_key()) {
                    b.put(Tree::OutboxDue, due, Vec::new());
                }
                b.delete(Tree::OutboxDue, k);
            }
            self.store.apply(&b)?;
        }
    }

    /// Sends one part of a card's codes again: a new job for `part` by the channel of its
    /// latest job, with a `dispatch.resend` event, in one batch. The old job stays as history
    /// (marked `superseded` if it had not gone out yet). The rate limit is the service's.
    ///
    /// # Errors
    /// [`Error::Missing`] for an unknown card or a part never dispatched;
    /// [`Error::WrongState`] for a card not `active`; [`Error::Refusal`] when its codes are not
    /// held, for the counter part, for a part being sent at this moment, or when the contact is
    /// missing or changed after the last identification (rule 13); [`Error::Sealed`]; store and
    /// audit errors.
    pub fn resend_part(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        serial: &str,
        part: Part,
        today: Date,
        actor: &Actor,
    ) -> Result<Job> {
        let _ops = self.ops_lock();
        let card = self.deliverable_card(audit, serial, today, actor)?;
        let old = self
            .latest_jobs(serial)?
            .remove(&part)
            .ok_or_else(|| Missing::PartDispatch {
                card: serial.to_owned(),
                part: part.to_string(),
            })?;
        if old.channel == Channel::Counter {
            return Err(Refusal::CounterPart {
                card: serial.to_owned(),
                part: part.to_string(),
            }
            .into());
        }
        if old.state == JobState::Sending {
            return Err(Refusal::PartSending {
                card: serial.to_owned(),
                part: part.to_string(),
                dispatch: None,
                job: old.id,
            }
            .into());
        }
        if old.state == JobState::AwaitingCounter {
            return Err(Refusal::AwaitingCounter {
                card: serial.to_owned(),
                part: part.to_string(),
                job: old.id,
            }
            .into());
        }
        let (holder, personal) = self.holder_of(hsm, &card)?;
        self.check_contact(&card, &holder, &personal, old.channel)?;
        let now = self.now_ms();
        let mut maker = JobMaker::new(self, now)?;
        let new = maker.make(
            old.request,
            serial,
            part,
            old.channel,
            old.digits,
            "resend",
            Some(old.id),
            &actor.id,
        )?;
        let mut b = Batch::new();
        maker.save_into(&mut b);
        put_job(&mut b, None, &new)?;
        let mut replaced = old.clone();
        replaced.superseded_by = Some(new.id);
        replaced.updated_ms = now;
        if matches!(old.state, JobState::Queued | JobState::Failed) {
            replaced.state = JobState::Superseded;
        }
        put_job(&mut b, Some(&old), &replaced)?;
        audit.commit(
            b,
            by(job_event("dispatch.resend", &new), actor)
                .detail("replaces", old.id.to_string())
                .detail("replaced_state", old.state.as_str()),
        )?;
        Ok(new)
    }

    /// Parts not done with (`queued`, `sending`, `failed`, `dead` without fallback, or `sent`
    /// by a channel that gives receipts and none came) whose job was created before
    /// `now_ms - older_than_ms`: their latest jobs, oldest first, at most `limit`. For the
    /// alert (a metric and a log line).
    ///
    /// # Errors
    /// Store errors.
    pub fn overdue(&self, now_ms: u64, older_than_ms: u64, limit: usize) -> Result<Vec<Job>> {
        let cutoff = now_ms.saturating_sub(older_than_ms);
        let mut to = cutoff.to_be_bytes().to_vec();
        to.extend_from_slice(&[0; 8]);
        let mut from = Vec::new();
        let mut out = Vec::new();
        while out.len() < limit {
            let keys = self.store.keys(Tree::OutboxOpen, &from, Some(&to), PAGE)?;
            for k in &keys {
                let id = seq_of(&k[k.len().saturating_sub(8)..])?;
                if let Some(j) = self.job(id)? {
                    if j.open() && out.len() < limit {
                        out.push(j);
                    }
                }
            }
            match keys.last() {
                Some(last) if keys.len() == PAGE => {
                    from = last.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The outbox on sled: requests and their events together, refusals that write nothing,
    //! rule 13, claims across a crash, backoff to `dead`, fallback, resend, receipts, status and the
    //! overdue list; the audit chain verifies after each.

    use super::*;
    use crate::outbox::{Channel, Fallback, Job, JobState, OutboxPolicy, Part, ReceiptOutcome};
    use crate::registry_parse::{CardEntry, HolderEntry};
    use crate::tests::{actor, cf, date, holder_activation, serial, today, World};
    use crate::{Change, Reason};
    use vault::Query;
    use vault::Tree;
    use vault::{Error, Missing, Refusal};

    const EXPIRY: &str = "2030-01-01";

    /// Imports holder `h` with card `c` and these contacts.
    fn holder(w: &World, h: usize, cards: &[usize], email: Option<&str>, mobile: Option<&str>) {
        let entry = HolderEntry {
            first_line: 2,
            codice_fiscale: cf(h),
            given_names: format!("Nicolò {h}"),
            surname: "D'Angelo".into(),
            birth_date: date("1985-12-10"),
            email: email.map(str::to_owned),
            mobile: mobile.map(str::to_owned),
            address: Some("Via Roma 1, 00100 Roma".into()),
            deceased: false,
            cards: cards
                .iter()
                .map(|&c| CardEntry {
                    line: 2,
                    serial: serial(c),
                    expiry: date(EXPIRY),
                    replaced_by: None,
                })
                .collect(),
        };
        w.cms()
            .import_registry(&*w.hsm, w.audit(), &[entry], today(), &actor())
            .unwrap();
    }

    const MOBILE: Option<&str> = Some("+393331234567");
    const EMAIL: Option<&str> = Some("h0@example.it");

    /// Holder 0 (mobile and e-mail) owns cards 1–3, active, with codes.
    fn world() -> World {
        let w = World::new();
        holder(&w, 0, &[1, 2, 3], EMAIL, MOBILE);
        w.import_codes(&[serial(1), serial(2), serial(3)]);
        for c in [1, 2, 3] {
            w.change(c, &holder_activation()).unwrap();
        }
        w
    }

    fn request(w: &World, c: usize, plan: &str) -> vault::Result<crate::Dispatched> {
        w.cms()
            .request_dispatch(&*w.hsm, w.audit(), &serial(c), plan, today(), &actor())
    }

    /// Prints part A of card `c`'s dispatch in force at the counter (a page that renders), as
    /// `plan` if given; a reprint if `reprint`.
    pub(super) fn print_a(
        w: &World,
        c: usize,
        plan: Option<&str>,
        reprint: bool,
    ) -> vault::Result<crate::CounterPrint> {
        w.cms()
            .print_counter_part(
                &*w.hsm,
                w.audit(),
                &serial(c),
                plan,
                reprint,
                today(),
                &actor(),
                |codes, slip| Ok::<_, ()>((codes.pin.expose_secret().len(), slip.clone())),
            )
            .map(|r| r.unwrap().1)
    }

    /// Hands part A of card `c`'s split dispatch over at the counter, so that part B may go.
    pub(crate) fn hand_over(w: &World, c: usize) {
        let p = print_a(w, c, None, false).unwrap();
        assert_eq!(p.job.state, JobState::HandedOver);
    }

    /// The events of `action`, oldest first (up to 1,000).
    pub(crate) fn events(w: &World, action: &str) -> Vec<vault::Event> {
        w.audit()
            .query(&Query {
                action: Some(action.into()),
                limit: 1000,
                ..Query::default()
            })
            .unwrap()
            .events
    }

    fn rows(w: &World, tree: Tree) -> usize {
        w.cms().store.range(tree, &[], None, 100_000).unwrap().len()
    }

    fn outbox_rows(w: &World) -> Vec<usize> {
        [
            Tree::Outbox,
            Tree::OutboxDue,
            Tree::OutboxCards,
            Tree::OutboxKeys,
            Tree::OutboxOpen,
            Tree::DispatchRequests,
        ]
        .map(|t| rows(w, t))
        .to_vec()
    }

    fn delivery(w: &World, c: usize) -> Vec<(String, String)> {
        w.cms()
            .status(w.audit(), &serial(c), today(), &actor())
            .unwrap()
            .delivery
    }

    fn pair(part: &str, state: &str) -> (String, String) {
        (part.to_owned(), state.to_owned())
    }

    fn policy(max_attempts: u32, fallback: Fallback) -> OutboxPolicy {
        OutboxPolicy {
            max_attempts,
            backoff_base_ms: 1000,
            backoff_max_ms: 60_000,
            jitter: false,
            fallback,
        }
    }

    const NO_FALLBACK: Fallback = Fallback {
        sms_to_email: false,
        counter_reprint: false,
    };

    /// Claims every job due at `now` and returns the one for card `c`.
    fn claim(w: &World, now: u64, c: usize) -> Job {
        let jobs = w.cms().claim_due(now, &Channel::REMOTE, 100).unwrap();
        let mine: Vec<Job> = jobs.into_iter().filter(|j| j.serial == serial(c)).collect();
        assert_eq!(mine.len(), 1, "{mine:?}");
        mine.into_iter().next().unwrap()
    }

    fn verify(w: &World) {
        let r = w.audit().verify().unwrap();
        assert!(r.intact(), "{r:?}");
    }

    fn now() -> u64 {
        use vault::Clock;
        vault::SystemClock.now_ms()
    }

    #[test]
    fn a_request_writes_its_jobs_and_its_event_together() {
        let w = world();
        let d = request(&w, 1, "counter(2)+sms").unwrap();
        assert_eq!(d.jobs.len(), 2);
        let (a, b) = (&d.jobs[0], &d.jobs[1]);
        assert_eq!(
            (a.part, a.channel, a.state),
            (Part::A, Channel::Counter, JobState::Counter)
        );
        assert_eq!(
            (b.part, b.channel, b.state),
            (Part::B, Channel::Sms, JobState::AwaitingCounter)
        );
        assert_eq!(b.courier_plan(), "counter(2)+sms");
        assert_eq!(b.idempotency_key.len(), 32);
        assert_ne!(a.idempotency_key, b.idempotency_key);
        let ev = events(&w, "dispatch.request");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].subject, serial(1));
        assert_eq!(ev[0].details["plan"], "counter(2)+sms");
        assert_eq!(
            ev[0].details["jobs"],
            format!("A:counter:{},B:sms:{}", a.id, b.id)
        );
        assert_eq!(
            w.cms().dispatch_request(d.request.id).unwrap().unwrap(),
            d.request
        );
        assert_eq!(
            delivery(&w, 1),
            vec![pair("A", "counter"), pair("B", "awaiting_counter")]
        );
        // No code and no contact in a stored job.
        for (_, v) in w.cms().store.range(Tree::Outbox, &[], None, 100).unwrap() {
            let text = String::from_utf8(v).unwrap();
            assert!(!text.contains("12345") && !text.contains("3331234567") && !text.contains('@'));
        }
        // A second request while the first is under way is refused, and writes nothing.
        let before = outbox_rows(&w);
        let err = request(&w, 1, "email").unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Refusal(Refusal::DispatchInForce {
                    under_way: true,
                    ..
                })
            ),
            "{err}"
        );
        assert_eq!(outbox_rows(&w), before);
        // The other plan forms.
        let e = request(&w, 2, "email").unwrap();
        assert_eq!(
            e.jobs
                .iter()
                .map(|j| (j.part, j.channel))
                .collect::<Vec<_>>(),
            vec![(Part::Whole, Channel::Email)]
        );
        assert_eq!(e.jobs[0].courier_plan(), "whole");
        let m = request(&w, 3, " mailer ").unwrap();
        assert_eq!(m.jobs[0].channel, Channel::Mailer);
        assert!(matches!(
            request(&w, 3, "counter(0)+sms"),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(request(&w, 3, "pigeon"), Err(Error::Invalid(_))));
        verify(&w);
    }

    #[test]
    fn a_refused_request_writes_nothing() {
        let w = world();
        holder(&w, 1, &[4], None, None); // no contact at all
        holder(&w, 2, &[5], EMAIL, MOBILE); // card 5: active, codes never imported
        w.import_codes(&[serial(4)]);
        w.change(4, &holder_activation()).unwrap();
        w.change(5, &holder_activation()).unwrap();
        w.change(2, &Change::Suspend(Reason::Lost)).unwrap();
        w.change(3, &Change::Revoke(Reason::Stolen)).unwrap();
        holder(&w, 0, &[1, 2, 3, 6], EMAIL, MOBILE); // card 6: issued
        w.import_codes(&[serial(6)]);
        let before = outbox_rows(&w);
        let state = |c: usize| match request(&w, c, "counter(2)+sms") {
            Err(Error::WrongState { state, .. }) => state,
            other => panic!("card {c}: {other:?}"),
        };
        assert_eq!(state(2), "suspended");
        assert_eq!(state(3), "revoked");
        assert_eq!(state(6), "issued");
        assert!(matches!(
            request(&w, 9, "sms"),
            Err(Error::Missing(vault::Missing::Card(_)))
        ));
        let refused = |c: usize, plan: &str| match request(&w, c, plan) {
            Err(Error::Refusal(r)) => r,
            other => panic!("card {c} {plan}: {other:?}"),
        };
        assert_eq!(refused(5, "sms"), Refusal::CodesNotHeld { card: serial(5) });
        let none = |contact| Refusal::NoContact {
            card: serial(4),
            contact,
        };
        assert_eq!(refused(4, "counter(2)+sms"), none("mobile number"));
        assert_eq!(refused(4, "email"), none("e-mail address"));
        assert_eq!(
            refused(4, "counter(2)+remote"),
            Refusal::NoRemoteChannel {
                card: serial(4),
                sms: Box::new(none("mobile number")),
                email: Box::new(none("e-mail address")),
            }
        );
        assert_eq!(outbox_rows(&w), before);
        assert!(events(&w, "dispatch.").is_empty());
        verify(&w);
    }

    #[test]
    fn rule_13_a_changed_number_needs_a_new_identification() {
        let w = world();
        let activated = w.cms().card(&serial(1)).unwrap().unwrap().identified_ms();
        assert!(activated.is_some());
        // The same contacts again: nothing changed.
        holder(&w, 0, &[1, 2, 3], EMAIL, MOBILE);
        let h = w.cms().holder("h000001").unwrap().unwrap();
        assert_eq!((h.mobile_changed_ms, h.email_changed_ms), (None, None));
        // A new mobile number.
        std::thread::sleep(std::time::Duration::from_millis(2));
        holder(&w, 0, &[1, 2, 3], EMAIL, Some("+393339999999"));
        let h = w.cms().holder("h000001").unwrap().unwrap();
        assert!(h.mobile_changed_ms.is_some() && h.email_changed_ms.is_none());
        let err = request(&w, 1, "counter(2)+sms").unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Refusal(Refusal::ContactChanged {
                    contact: "mobile number",
                    ..
                })
            ),
            "{err}"
        );
        // E-mail did not change: it may be used; `remote` picks it.
        let d = request(&w, 2, "counter(2)+remote").unwrap();
        assert_eq!(d.jobs[1].channel, Channel::Email);
        // Re-identification at the counter: audited, and SMS is allowed again.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let st = w
            .change(
                1,
                &Change::Reidentify(crate::Activation::Holder {
                    document_type: "passaporto".into(),
                    document_number: "YA7654321".into(),
                    consent_ref: "consent-2026-0099".into(),
                }),
            )
            .unwrap();
        assert_eq!(st.state, crate::CardState::Active);
        assert!(st.identified_ms > activated);
        assert_eq!(events(&w, "card.reidentify").len(), 1);
        let d = request(&w, 1, "counter(2)+sms").unwrap();
        assert_eq!(d.jobs[1].channel, Channel::Sms);
        // Re-identification needs an active card.
        w.change(3, &Change::Suspend(Reason::Lost)).unwrap();
        let err = w.change(
            3,
            &Change::Reidentify(match holder_activation() {
                Change::Activate(a) => a,
                _ => unreachable!(),
            }),
        );
        assert!(matches!(err, Err(Error::WrongState { .. })), "{err:?}");
        verify(&w);
    }

    #[test]
    fn a_job_claimed_before_a_crash_is_claimed_again_with_the_same_key() {
        let mut w = world();
        let d = request(&w, 1, "counter(2)+sms").unwrap();
        hand_over(&w, 1);
        let t = now();
        let first = claim(&w, t, 1);
        assert_eq!((first.state, first.attempts), (JobState::Sending, 1));
        assert_eq!(first.idempotency_key, d.jobs[1].idempotency_key);
        assert!(
            w.cms()
                .claim_due(t, &Channel::REMOTE, 100)
                .unwrap()
                .is_empty(),
            "claimed once"
        );
        // Crash: the store is dropped and reopened without marking the job.
        w.restart();
        assert_eq!(
            w.cms().job(first.id).unwrap().unwrap().state,
            JobState::Sending
        );
        assert_eq!(w.cms().recover(w.audit()).unwrap(), 1);
        assert_eq!(w.cms().recover(w.audit()).unwrap(), 0);
        assert_eq!(delivery(&w, 1)[1], pair("B", "queued"));
        let again = claim(&w, now(), 1);
        assert_eq!(again.id, first.id);
        assert_eq!(again.idempotency_key, first.idempotency_key);
        assert_eq!(again.attempts, 2);
        let sent = w.cms().mark_sent(w.audit(), again.id, "kannel-42").unwrap();
        assert_eq!(sent.state, JobState::Sent);
        // A repeat is harmless.
        w.cms().mark_sent(w.audit(), again.id, "kannel-42").unwrap();
        assert_eq!(events(&w, "dispatch.sent").len(), 1);
        assert_eq!(events(&w, "dispatch.recover").len(), 1);
        verify(&w);
    }

    #[test]
    fn temporary_failures_back_off_and_end_dead() {
        let w = world();
        request(&w, 1, "sms").unwrap();
        let p = policy(3, NO_FALLBACK);
        let t0 = now();
        let mut t = t0;
        for attempt in 1..=3u32 {
            let job = claim(&w, t, 1);
            assert_eq!(job.attempts, attempt);
            let failed = w
                .cms()
                .mark_failed(
                    &*w.hsm,
                    w.audit(),
                    job.id,
                    true,
                    "421 try later 12345678",
                    t,
                    &p,
                )
                .unwrap();
            if attempt < 3 {
                assert_eq!(failed.state, JobState::Failed);
                let wait = p.backoff(attempt);
                assert_eq!(wait, 1000 << (attempt - 1));
                assert_eq!(failed.next_attempt_ms, t + wait);
                assert!(w
                    .cms()
                    .claim_due(t + wait - 1, &Channel::REMOTE, 100)
                    .unwrap()
                    .is_empty());
                t += wait;
            } else {
                assert_eq!(failed.state, JobState::Dead);
                assert!(!failed.needs_counter_reprint);
            }
            // The error is kept, without the digit run.
            assert_eq!(failed.last_error.as_deref(), Some("421 try later ########"));
        }
        assert!(w
            .cms()
            .claim_due(t + 1_000_000, &Channel::REMOTE, 100)
            .unwrap()
            .is_empty());
        assert_eq!(delivery(&w, 1), vec![pair("whole", "dead")]);
        let dead = events(&w, "dispatch.dead");
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].details["attempts"], "3");
        assert_eq!(dead[0].details["failure"], "attempts_exhausted");
        assert!(events(&w, "dispatch.fallback").is_empty());
        // Marking a dead job again is refused.
        assert!(matches!(
            w.cms().mark_failed(&*w.hsm, w.audit(), 1, true, "x", t, &p),
            Err(Error::WrongState { .. })
        ));
        assert_eq!(OutboxPolicy::default().backoff(40), 3_600_000);
        verify(&w);
    }

    #[test]
    fn a_paused_lane_gives_the_attempt_back_and_never_kills_the_job() {
        let w = world();
        request(&w, 1, "sms").unwrap();
        let p = policy(2, NO_FALLBACK);
        let mut t = now();
        // Far more lane-wide failures than attempts: the job stays queued with no attempt spent.
        for _ in 0..5 {
            let job = claim(&w, t, 1);
            assert_eq!(job.attempts, 1);
            let paused = w
                .cms()
                .mark_paused(
                    job.id,
                    "gateway_auth",
                    "kannel sendsms: http 403",
                    t,
                    t + 500,
                )
                .unwrap();
            assert_eq!(paused.state, JobState::Queued);
            assert_eq!(paused.attempts, 0);
            assert_eq!(paused.failure_reason.as_deref(), Some("gateway_auth"));
            assert_eq!(paused.next_attempt_ms, t + 500);
            assert!(w
                .cms()
                .claim_due(t + 499, &Channel::REMOTE, 100)
                .unwrap()
                .is_empty());
            t += 500;
        }
        assert!(events(&w, "dispatch.dead").is_empty());
        assert!(events(&w, "dispatch.fallback").is_empty());
        // A per-job failure after that keeps its code, and the job's record shows it.
        let job = claim(&w, t, 1);
        let failed = w
            .cms()
            .mark_failed_coded(
                &*w.hsm,
                w.audit(),
                job.id,
                false,
                "rejected_number",
                "kannel sendsms: http 400",
                t,
                &p,
            )
            .unwrap();
        assert_eq!(failed.state, JobState::Dead);
        assert_eq!(failed.failure_reason.as_deref(), Some("rejected_number"));
        assert_eq!(
            w.cms()
                .job(job.id)
                .unwrap()
                .unwrap()
                .failure_reason
                .as_deref(),
            Some("rejected_number")
        );
        assert!(matches!(
            w.cms().mark_paused(job.id, "Bad Code", "x", t, t),
            Err(Error::Invalid(_))
        ));
        verify(&w);
    }

    #[test]
    fn a_dead_sms_falls_back_to_email_then_to_a_counter_reprint() {
        let w = world();
        let d = request(&w, 1, "counter(2)+sms").unwrap();
        hand_over(&w, 1);
        let p = policy(5, Fallback::default());
        let t = now();
        let sms = claim(&w, t, 1);
        let dead = w
            .cms()
            .mark_failed(
                &*w.hsm,
                w.audit(),
                sms.id,
                false,
                "unknown subscriber",
                t,
                &p,
            )
            .unwrap();
        assert_eq!(dead.state, JobState::Dead);
        let email_id = dead.superseded_by.expect("a fallback job");
        let email = w.cms().job(email_id).unwrap().unwrap();
        assert_eq!(
            (
                email.part,
                email.channel,
                email.state,
                email.origin.as_str()
            ),
            (Part::B, Channel::Email, JobState::Queued, "fallback")
        );
        assert_eq!(email.courier_plan(), "counter(2)+email");
        assert_eq!(email.request, d.request.id);
        assert_ne!(email.idempotency_key, sms.idempotency_key);
        assert_eq!(
            delivery(&w, 1),
            vec![pair("A", "handed_over"), pair("B", "queued")]
        );
        let fb = events(&w, "dispatch.fallback");
        assert_eq!(fb.len(), 1);
        assert_eq!(fb[0].details["to"], "email");
        // The e-mail dies too: the part needs a counter reprint, and shows in the overdue list.
        let email = claim(&w, t, 1);
        let dead = w
            .cms()
            .mark_failed(
                &*w.hsm,
                w.audit(),
                email.id,
                false,
                "550 no such user",
                t,
                &p,
            )
            .unwrap();
        assert!(dead.needs_counter_reprint && dead.superseded_by.is_none());
        assert_eq!(delivery(&w, 1)[1], pair("B", "needs_counter_reprint"));
        assert_eq!(events(&w, "dispatch.fallback").len(), 2);
        let overdue = w.cms().overdue(now() + 10_000, 5_000, 100).unwrap();
        assert_eq!(
            overdue.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![email.id]
        );
        assert!(w.cms().overdue(now(), 3_600_000, 100).unwrap().is_empty());
        verify(&w);
    }

    #[test]
    fn no_email_fallback_to_a_holder_without_email() {
        let w = World::new();
        holder(&w, 1, &[4], None, MOBILE);
        w.import_codes(&[serial(4)]);
        w.change(4, &holder_activation()).unwrap();
        request(&w, 4, "counter(2)+sms").unwrap();
        hand_over(&w, 4);
        let t = now();
        let sms = claim(&w, t, 4);
        let dead = w
            .cms()
            .mark_failed(
                &*w.hsm,
                w.audit(),
                sms.id,
                false,
                "bad number",
                t,
                &OutboxPolicy::default(),
            )
            .unwrap();
        assert!(dead.needs_counter_reprint && dead.superseded_by.is_none());
        let fb = events(&w, "dispatch.fallback");
        assert_eq!(fb[0].details["to"], "counter_reprint");
        assert!(fb[0].details["email_refused"].contains("no registered e-mail"));
        verify(&w);
    }

    #[test]
    fn resend_makes_exactly_one_job_for_the_named_part() {
        let w = world();
        request(&w, 1, "counter(2)+sms").unwrap();
        hand_over(&w, 1);
        let t = now();
        let b = claim(&w, t, 1);
        // Not while it is being sent.
        let resend = |part| {
            w.cms()
                .resend_part(&*w.hsm, w.audit(), &serial(1), part, today(), &actor())
        };
        assert!(matches!(
            resend(Part::B),
            Err(Error::Refusal(Refusal::PartSending { dispatch: None, job, .. })) if job == b.id
        ));
        w.cms().mark_sent(w.audit(), b.id, "smsc-1").unwrap();
        let before = w.cms().jobs_of(&serial(1)).unwrap();
        let new = resend(Part::B).unwrap();
        let after = w.cms().jobs_of(&serial(1)).unwrap();
        assert_eq!(after.len(), before.len() + 1);
        assert_eq!(
            (new.part, new.channel, new.state, new.replaces),
            (Part::B, Channel::Sms, JobState::Queued, Some(b.id))
        );
        let old = w.cms().job(b.id).unwrap().unwrap();
        assert_eq!(
            (old.state, old.superseded_by),
            (JobState::Sent, Some(new.id))
        );
        assert_eq!(delivery(&w, 1)[1], pair("B", "queued"));
        // A resend of a queued part replaces it: still one job to send.
        let newer = resend(Part::B).unwrap();
        assert_eq!(
            w.cms().job(new.id).unwrap().unwrap().state,
            JobState::Superseded
        );
        let due = w.cms().claim_due(now(), &Channel::REMOTE, 100).unwrap();
        assert_eq!(due.iter().map(|j| j.id).collect::<Vec<_>>(), vec![newer.id]);
        assert!(matches!(
            resend(Part::A),
            Err(Error::Refusal(Refusal::CounterPart { part, .. })) if part == "A"
        ));
        assert!(matches!(
            resend(Part::Whole),
            Err(Error::Missing(Missing::PartDispatch { part, .. })) if part == "whole"
        ));
        let ev = events(&w, "dispatch.resend");
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].details["part"], "B");
        assert_eq!(ev[0].actor, "op1");
        // Not for a card that is not active.
        w.change(1, &Change::Suspend(Reason::Lost)).unwrap();
        assert!(
            matches!(resend(Part::B), Err(Error::WrongState { state, .. }) if state == "suspended")
        );
        verify(&w);
    }

    #[test]
    fn receipts_move_parts_to_delivered() {
        let w = world();
        request(&w, 1, "counter(2)+sms").unwrap();
        hand_over(&w, 1);
        let t = now();
        let p = OutboxPolicy::default();
        let job = claim(&w, t, 1);
        w.cms().mark_sent(w.audit(), job.id, "dlr-7").unwrap();
        assert_eq!(
            w.cms().overdue(t + 10_000, 1_000, 10).unwrap().len(),
            1,
            "sms awaits its receipt"
        );
        let receipt = |key: &str, ok| {
            w.cms()
                .mark_delivered_by_key(&*w.hsm, w.audit(), key, ok, t, &p)
        };
        let (j, o) = receipt(&job.idempotency_key, true).unwrap();
        assert_eq!((j.state, o), (JobState::Delivered, ReceiptOutcome::Applied));
        let (_, o) = receipt(&job.idempotency_key, true).unwrap();
        assert_eq!(o, ReceiptOutcome::Repeat);
        let (j, o) = receipt(&job.idempotency_key, false).unwrap();
        assert_eq!((j.state, o), (JobState::Delivered, ReceiptOutcome::Repeat));
        assert_eq!(
            delivery(&w, 1),
            vec![pair("A", "handed_over"), pair("B", "delivered")]
        );
        assert_eq!(events(&w, "dispatch.delivered").len(), 1);
        assert!(w.cms().overdue(t + 10_000, 1_000, 10).unwrap().is_empty());
        assert!(matches!(
            receipt(&"ab".repeat(16), true),
            Err(Error::Missing(Missing::JobKey))
        ));
        assert!(matches!(receipt("nope", true), Err(Error::Invalid(_))));
        // A negative receipt counts as a failed attempt.
        request(&w, 2, "sms").unwrap();
        let job = claim(&w, now(), 2);
        w.cms().mark_sent(w.audit(), job.id, "dlr-8").unwrap();
        let (j, o) = receipt(&job.idempotency_key, false).unwrap();
        assert_eq!((j.state, o), (JobState::Failed, ReceiptOutcome::Applied));
        assert_eq!(j.last_error.as_deref(), Some("negative delivery receipt"));
        // An e-mail is done once sent: no receipt is awaited.
        request(&w, 3, "email").unwrap();
        let job = claim(&w, now(), 3);
        w.cms().mark_sent(w.audit(), job.id, "<id@mx>").unwrap();
        assert!(w
            .cms()
            .overdue(t + 10_000, 1_000, 10)
            .unwrap()
            .iter()
            .all(|j| j.serial != serial(3)));
        verify(&w);
    }

    /// The `Message-ID` digest of a job, as the SMTP courier writes it.
    fn message_digest(job: &Job) -> String {
        let key = dispatch::IdempotencyKey::new(job.idempotency_key.clone()).unwrap();
        let id = dispatch::courier::smtp::message_id(&key, "example.it");
        dispatch::dsn::plico_message_digest(&id).unwrap()
    }

    #[test]
    fn a_bounce_makes_a_sent_email_dead_once() {
        let w = world();
        let p = policy(5, NO_FALLBACK);
        request(&w, 1, "email").unwrap();
        // More jobs, so that the walk over the keys does not find it first by chance.
        request(&w, 2, "sms").unwrap();
        request(&w, 3, "email").unwrap();
        let t = now();
        let claimed = w.cms().claim_due(t, &Channel::REMOTE, 100).unwrap();
        let of = |c: usize| {
            claimed
                .iter()
                .find(|j| j.serial == serial(c))
                .unwrap()
                .clone()
        };
        let (job, other) = (of(1), of(3));
        w.cms().mark_sent(w.audit(), job.id, "<id@mx>").unwrap();
        let digest = message_digest(&job);
        let bounce = |digest: &str, status: &str| {
            w.cms()
                .mark_bounced(&*w.hsm, w.audit(), None, Some(digest), status, t, &p)
        };
        let (j, o) = bounce(&digest, "5.1.1").unwrap();
        assert_eq!((j.state, o), (JobState::Dead, ReceiptOutcome::Applied));
        assert_eq!(j.last_error.as_deref(), Some("bounced 5.1.1"));
        assert_eq!(j.failure_reason.as_deref(), Some("bounced"));
        assert_eq!(j.attempts, job.attempts);
        let dead = events(&w, "dispatch.dead");
        assert_eq!(dead.len(), 1);
        // The same DSN again: nothing changes, no second event.
        let (again, o) = bounce(&digest, "5.1.1").unwrap();
        assert_eq!((again, o), (j, ReceiptOutcome::Repeat));
        assert_eq!(events(&w, "dispatch.dead").len(), 1);
        assert_eq!(delivery(&w, 1), vec![pair("whole", "dead")]);
        // Unknown message, a bad digest or status: errors, nothing written.
        assert!(matches!(
            bounce(&"ab".repeat(16), "5.1.1"),
            Err(Error::Missing(Missing::JobKey))
        ));
        assert!(matches!(bounce("nope", "5.1.1"), Err(Error::Invalid(_))));
        assert!(matches!(bounce(&digest, "5.1"), Err(Error::Invalid(_))));
        // A job not sent (card 3's e-mail is still being sent) is left alone.
        let (j, o) = bounce(&message_digest(&other), "5.1.1").unwrap();
        assert_eq!((j.state, o), (JobState::Sending, ReceiptOutcome::Repeat));
        // The envelope id (the job's key, sent as ENVID) names the job without the Message-ID,
        // and wins over a Message-ID of another job; another sender's envelope id is passed over.
        let by_envelope = |envid: &str, digest: Option<&str>| {
            w.cms()
                .mark_bounced(&*w.hsm, w.audit(), Some(envid), digest, "5.1.1", t, &p)
        };
        w.cms().mark_sent(w.audit(), other.id, "<id2@mx>").unwrap();
        let (j, o) = by_envelope(&other.idempotency_key, Some(&digest)).unwrap();
        assert_eq!(
            (j.id, j.state, o),
            (other.id, JobState::Dead, ReceiptOutcome::Applied)
        );
        assert!(matches!(
            by_envelope("QQ314159", None),
            Err(Error::Missing(Missing::JobKey))
        ));
        let (j, o) = by_envelope("QQ314159", Some(&digest)).unwrap();
        assert_eq!((j.id, o), (job.id, ReceiptOutcome::Repeat));
        verify(&w);
    }

    #[test]
    fn the_counter_page_is_part_a_of_the_dispatch_in_force() {
        let w = world();
        let refused = |r: vault::Result<crate::CounterPrint>| match r {
            Err(Error::Refusal(r)) => r,
            other => panic!("{other:?}"),
        };
        // No dispatch, or a dispatch without a counter part: no counter page.
        assert_eq!(
            refused(print_a(&w, 1, None, false)),
            Refusal::NoSplitDispatch { card: serial(1) }
        );
        request(&w, 2, "email").unwrap();
        assert_eq!(
            refused(print_a(&w, 2, Some("counter(2)+sms"), false)),
            Refusal::NoSplitDispatch { card: serial(2) }
        );
        // A split dispatch: part B waits for part A, and no worker claims it.
        let d = request(&w, 1, "counter(2)+email").unwrap();
        let (a, b) = (&d.jobs[0], &d.jobs[1]);
        assert_eq!(b.state, JobState::AwaitingCounter);
        let t = now();
        assert!(w
            .cms()
            .claim_due(t, &Channel::REMOTE, 100)
            .unwrap()
            .iter()
            .all(|j| j.serial != serial(1)));
        // Another plan is refused, naming the plan in force; nothing is recorded.
        let releases = events(&w, "card.codes_release").len();
        for other in [
            "counter(3)+sms",
            "counter(2)+sms",
            "counter(3)+email",
            "whole",
        ] {
            let r = refused(print_a(&w, 1, Some(other), false));
            assert_eq!(
                r,
                Refusal::PlanInForce {
                    card: serial(1),
                    plan: "counter(2)+email".into(),
                    dispatch: d.request.id,
                },
                "{other}"
            );
        }
        assert!(matches!(
            print_a(&w, 1, Some("counter(x)"), false),
            Err(Error::Invalid(_))
        ));
        assert_eq!(w.cms().job(a.id).unwrap().unwrap().state, JobState::Counter);
        assert_eq!(events(&w, "card.codes_release").len(), releases);
        // A page that cannot be made records nothing either.
        let failed = w
            .cms()
            .print_counter_part(
                &*w.hsm,
                w.audit(),
                &serial(1),
                None,
                false,
                today(),
                &actor(),
                |_, _| Err::<(), _>("too long"),
            )
            .unwrap();
        assert_eq!(failed.unwrap_err(), "too long");
        assert_eq!(w.cms().job(a.id).unwrap().unwrap().state, JobState::Counter);
        assert_eq!(events(&w, "card.codes_release").len(), releases);
        // The dispatch's own plan (given, `remote`, or not given) prints and hands part A over.
        let p = print_a(&w, 1, Some("counter(2)+remote"), false).unwrap();
        assert_eq!(p.slip.courier_plan, "counter(2)+email");
        assert_eq!(p.slip.dispatch, d.request.id);
        assert!(!p.slip.reprint);
        assert_eq!(p.released, vec![b.id]);
        let a_now = w.cms().job(a.id).unwrap().unwrap();
        assert_eq!(a_now.state, JobState::HandedOver);
        assert_eq!(a_now.handed_over_by.as_deref(), Some("op1"));
        assert!(a_now.handed_over_ms.is_some());
        assert_eq!(a_now.prints, 1);
        assert_eq!(
            delivery(&w, 1),
            vec![pair("A", "handed_over"), pair("B", "queued")]
        );
        let ev = events(&w, "dispatch.handover");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].actor, "op1");
        assert_eq!(ev[0].details["released"], b.id.to_string());
        assert_eq!(events(&w, "card.codes_release").len(), releases + 1);
        // Now part B goes.
        assert_eq!(claim(&w, now(), 1).id, b.id);
        // A second print only as a reprint, audited.
        assert!(matches!(
            refused(print_a(&w, 1, None, false)),
            Refusal::HandedOver { dispatch, job, .. } if dispatch == d.request.id && job == a.id
        ));
        let again = print_a(&w, 1, None, true).unwrap();
        assert!(again.slip.reprint && again.released.is_empty());
        assert_eq!(again.job.prints, 2);
        assert_eq!(again.job.state, JobState::HandedOver);
        assert_eq!(events(&w, "dispatch.reprint").len(), 1);
        assert_eq!(events(&w, "dispatch.handover").len(), 1);
        // Not for a card that is not active.
        w.change(1, &Change::Suspend(Reason::Lost)).unwrap();
        assert!(matches!(
            print_a(&w, 1, None, true),
            Err(Error::WrongState { .. })
        ));
        verify(&w);
    }

    #[test]
    fn a_new_dispatch_replaces_the_one_in_force_only_when_asked() {
        let w = world();
        let replace = |c: usize, plan: &str, reason: &str| {
            w.cms().request_dispatch_with(
                &*w.hsm,
                w.audit(),
                &serial(c),
                plan,
                Some(reason),
                today(),
                &actor(),
            )
        };
        // A whole e-mail dispatch, sent.
        let first = request(&w, 1, "email").unwrap();
        let job = claim(&w, now(), 1);
        w.cms().mark_sent(w.audit(), job.id, "250-ok").unwrap();
        // Done: a new dispatch is refused without `replace`; nothing is written.
        let before = outbox_rows(&w);
        let err = request(&w, 1, "counter(2)+sms").unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Refusal(Refusal::DispatchInForce {
                    under_way: false,
                    ..
                })
            ),
            "{err}"
        );
        for bad in ["", "  ", "a\u{7}b"] {
            assert!(matches!(
                replace(1, "counter(2)+sms", bad),
                Err(Error::Invalid(_))
            ));
        }
        assert_eq!(outbox_rows(&w), before);
        // Replaced: the old one superseded, the new one in force.
        let second = replace(1, "counter(2)+sms", "the holder lost the e-mail").unwrap();
        assert_eq!(second.request.replaces, Some(first.request.id));
        assert_eq!(
            second.request.replace_reason.as_deref(),
            Some("the holder lost the e-mail")
        );
        let old = w.cms().dispatch_request(first.request.id).unwrap().unwrap();
        assert_eq!(old.superseded_by, Some(second.request.id));
        assert_eq!(w.cms().job(job.id).unwrap().unwrap().state, JobState::Sent);
        // Replaced while under way: its unsent parts are cancelled in the same batch.
        let third = replace(1, "counter(3)+email", "wrong channel").unwrap();
        for j in &second.jobs {
            let stored = w.cms().job(j.id).unwrap().unwrap();
            assert_eq!(stored.state, JobState::Cancelled, "{stored:?}");
            assert_eq!(stored.cancel_reason.as_deref(), Some("superseded"));
        }
        let sup = events(&w, "dispatch.supersede");
        assert_eq!(sup.len(), 2);
        assert_eq!(sup[1].details["dispatch"], second.request.id.to_string());
        assert_eq!(sup[1].details["reason"], "wrong channel");
        assert_eq!(
            sup[1].details["cancelled"],
            format!(
                "A:counter:{},B:sms:{}",
                second.jobs[0].id, second.jobs[1].id
            )
        );
        // The card's history lists every dispatch with its parts; its status the one in force.
        let st = w
            .cms()
            .status(w.audit(), &serial(1), today(), &actor())
            .unwrap();
        let ids: Vec<u64> = st.dispatches.iter().map(|d| d.request.id).collect();
        assert_eq!(
            ids,
            vec![first.request.id, second.request.id, third.request.id]
        );
        assert_eq!(st.dispatches[1].jobs.len(), 2);
        assert_eq!(
            st.delivery,
            vec![pair("A", "counter"), pair("B", "awaiting_counter")]
        );
        // Only the dispatch in force has a counter page: part A of counter(3)+email.
        let p = print_a(&w, 1, None, false).unwrap();
        assert_eq!(p.slip.courier_plan, "counter(3)+email");
        // A part being sent cannot be cancelled: the replacement waits.
        let b = claim(&w, now(), 1);
        let err = replace(1, "email", "again").unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Refusal(Refusal::PartSending { dispatch: Some(_), job, .. }) if *job == b.id
            ),
            "{err}"
        );
        w.cms().mark_sent(w.audit(), b.id, "250-ok").unwrap();
        verify(&w);
    }

    #[test]
    fn jobs_and_requests_written_before_the_counter_hand_over_still_read() {
        // A job and a request as stored before issue 14 (no hand-over, print count, cancel
        // reason, replacement fields).
        let job = br#"{"id":7,"request":3,"serial":"803900000001","part":"A","channel":"counter",
            "digits":2,"state":"counter","attempts":0,"next_attempt_ms":1,
            "idempotency_key":"00112233445566778899aabbccddeeff","last_error":null,"peer_id":null,
            "origin":"request","replaces":null,"superseded_by":null,"needs_counter_reprint":false,
            "actor":"op1","created_ms":1,"updated_ms":1,"claimed_ms":null,"sent_ms":null,
            "delivered_ms":null}"#;
        let job: Job = crate::registry::decode("dispatch job", job).unwrap();
        assert_eq!((job.id, job.state, job.prints), (7, JobState::Counter, 0));
        assert!(job.handed_over_ms.is_none() && job.cancel_reason.is_none());
        // Nor, before issue 22, a failure reason code.
        assert!(job.failure_reason.is_none());
        let request = br#"{"id":3,"serial":"803900000001","plan":"counter(2)+sms","jobs":[7,8],
            "actor":"op1","request_id":"r1","created_ms":1}"#;
        let request: crate::DispatchRequest =
            crate::registry::decode("dispatch request", request).unwrap();
        assert_eq!(request.jobs, vec![7, 8]);
        assert!(request.superseded_by.is_none() && request.replaces.is_none());
    }

    /// A job record as the encoder wrote it before parts were `dispatch`'s [`crate::Part`] (bytes
    /// captured from the old `cards::outbox::Part` and `Channel`), with its part, channel and digits.
    fn job_bytes(part: &str, channel: &str, digits: &str) -> String {
        format!(
            "{{\"id\":7,\"request\":3,\"serial\":\"803900000001\",\"part\":\"{part}\",\
             \"channel\":\"{channel}\",\"digits\":{digits},\"state\":\"counter\",\"attempts\":0,\
             \"next_attempt_ms\":1,\"idempotency_key\":\"00112233445566778899aabbccddeeff\",\
             \"last_error\":null,\"peer_id\":null,\"origin\":\"request\",\"replaces\":null,\
             \"superseded_by\":null,\"needs_counter_reprint\":false,\"actor\":\"op1\",\
             \"created_ms\":1,\"updated_ms\":1,\"claimed_ms\":null,\"sent_ms\":null,\
             \"delivered_ms\":null}}"
        )
    }

    #[test]
    fn job_records_of_every_part_and_channel_decode_and_encode_to_the_same_bytes() {
        for (part, channel, digits, p, c) in [
            ("A", "counter", "2", Part::A, Channel::Counter),
            ("B", "sms", "2", Part::B, Channel::Sms),
            ("B", "email", "3", Part::B, Channel::Email),
            ("whole", "mailer", "null", Part::Whole, Channel::Mailer),
            ("whole", "email", "null", Part::Whole, Channel::Email),
        ] {
            let old = job_bytes(part, channel, digits);
            let job: Job = crate::registry::decode("dispatch job", old.as_bytes()).unwrap();
            assert_eq!((job.part, job.channel), (p, c), "{old}");
            let again = crate::registry::encode(&job).unwrap();
            assert_eq!(String::from_utf8(again).unwrap(), old);
        }
        // A part name the vocabulary does not have is a damaged record, not a default.
        let odd = job_bytes("C", "sms", "2");
        assert!(matches!(
            crate::registry::decode::<Job>("dispatch job", odd.as_bytes()),
            Err(Error::Storage(_))
        ));
    }

    #[test]
    fn the_waiting_lanes_keep_their_channel_tags() {
        // Persisted in the keys of Tree::OutboxDue: the tags of the old `cards` channel type.
        for (channel, tag) in [
            (Channel::Counter, 0),
            (Channel::Sms, 1),
            (Channel::Email, 2),
            (Channel::Mailer, 3),
        ] {
            assert_eq!(channel_tag(channel), tag, "{channel}");
        }
        assert!(Channel::Counter < Channel::Sms && Channel::Email < Channel::Mailer);
    }

    /// A dispatch request record with `plan` as the outbox stored it (the trimmed text asked
    /// for, never rewritten).
    fn request_bytes(plan: &str) -> String {
        format!(
            "{{\"id\":3,\"serial\":\"803900000001\",\"plan\":\"{plan}\",\"jobs\":[7,8],\
             \"actor\":\"op1\",\"request_id\":\"r1\",\"created_ms\":1}}"
        )
    }

    #[test]
    fn every_stored_plan_text_reads_back_to_its_plan() {
        // Every plan text the outbox took before it shared `dispatch`'s plan (its own grammar:
        // N of 1 or 2 digits, `sms`/`email` whole plans, `whole` an alias of `mailer`).
        let counter = |digits, remote| Plan::Counter { digits, remote };
        for (text, plan, parts) in [
            (
                "counter(2)+sms",
                counter(2, Channel::Sms),
                vec![(Part::A, Channel::Counter), (Part::B, Channel::Sms)],
            ),
            (
                "counter(3)+email",
                counter(3, Channel::Email),
                vec![(Part::A, Channel::Counter), (Part::B, Channel::Email)],
            ),
            (
                "counter(01)+remote",
                counter(1, Channel::Remote),
                vec![(Part::A, Channel::Counter), (Part::B, Channel::Remote)],
            ),
            (
                "counter(99)+sms",
                counter(99, Channel::Sms),
                vec![(Part::A, Channel::Counter), (Part::B, Channel::Sms)],
            ),
            (
                "mailer",
                Plan::Whole(Some(Channel::Mailer)),
                vec![(Part::Whole, Channel::Mailer)],
            ),
            (
                "whole",
                Plan::Whole(None),
                vec![(Part::Whole, Channel::Mailer)],
            ),
            (
                "email",
                Plan::Whole(Some(Channel::Email)),
                vec![(Part::Whole, Channel::Email)],
            ),
            (
                "sms",
                Plan::Whole(Some(Channel::Sms)),
                vec![(Part::Whole, Channel::Sms)],
            ),
        ] {
            let old = request_bytes(text);
            let request: crate::DispatchRequest =
                crate::registry::decode("dispatch request", old.as_bytes()).unwrap();
            assert_eq!(request.parsed_plan().unwrap(), plan, "{text}");
            // The parts and channels the outbox makes of it (a `remote` part B is resolved
            // at request time, from the holder's contacts).
            let made: Vec<(Part, Channel)> = match plan {
                Plan::Whole(c) => vec![(Part::Whole, whole_channel(c))],
                Plan::Counter { remote, .. } => {
                    vec![(Part::A, Channel::Counter), (Part::B, remote)]
                }
            };
            assert_eq!(made, parts, "{text}");
            // The stored text is kept as it was: the record encodes to the same bytes.
            let again = crate::registry::encode(&request).unwrap();
            assert_eq!(String::from_utf8(again).unwrap(), old);
        }
        // A stored plan that does not parse is a damaged record, not a bad request.
        let odd: crate::DispatchRequest =
            crate::registry::decode("dispatch request", request_bytes("pigeon").as_bytes())
                .unwrap();
        assert!(matches!(odd.parsed_plan(), Err(Error::Storage(_))));
    }

    #[test]
    fn plans_parse_to_their_parts() {
        assert_eq!(
            parse_plan(" counter(2)+sms ").unwrap(),
            Plan::Counter {
                digits: 2,
                remote: Channel::Sms
            }
        );
        assert_eq!(
            parse_plan("counter(3)+remote").unwrap(),
            Plan::Counter {
                digits: 3,
                remote: Channel::Remote
            }
        );
        assert_eq!(parse_plan("whole").unwrap(), Plan::Whole(None));
        for bad in [
            "",
            "counter(0)+sms",
            "counter()+sms",
            "counter(100)+sms",
            "counter(2)+pigeon",
            "counter(2)+counter",
            "counter(2)sms",
            "post",
        ] {
            assert!(matches!(parse_plan(bad), Err(Error::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn errors_lose_digit_runs_and_control_characters() {
        assert_eq!(
            clean_error("550 5.1.1 <+393331234567> PIN 12345\r\nbye"),
            "550 5.1.1 <+############> PIN #####  bye"
        );
        assert_eq!(clean_error(&"x".repeat(500)).len(), MAX_ERROR);
        assert!(check_peer_id("<a@b>").is_ok());
        assert!(check_peer_id("a b").is_err() && check_peer_id("").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let p = OutboxPolicy {
            jitter: false,
            ..OutboxPolicy::default()
        };
        assert_eq!(p.backoff(1), 30_000);
        assert_eq!(p.backoff(2), 60_000);
        assert_eq!(p.backoff(100), 3_600_000);
        let j = OutboxPolicy::default();
        for _ in 0..20 {
            let d = j.delay(2).unwrap();
            assert!((60_000..=75_000).contains(&d), "{d}");
        }
    }
}

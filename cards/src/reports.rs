//! Technical problem reports ("segnalazione problemi tecnici"): an operator opens one,
//! optionally about a card; `support` lists, comments, assigns and closes them. Every step is
//! an audit event. Free text may name people, so titles, texts and comments are sealed like
//! personal data; the list shows them opened.

use super::registry::{decode, encode, Cards};
use serde::{Deserialize, Serialize};
use vault::Actor;
use vault::AuditLog;
use vault::Hsm;
use vault::{Batch, Tree};
use vault::{Error, Missing, Result, Subject};

const NEXT_REPORT_KEY: &[u8] = b"cms.next_report";
/// Longest title.
pub const MAX_TITLE: usize = 200;
/// Longest text or comment.
pub const MAX_TEXT: usize = 4000;

/// A report's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportState {
    /// New.
    Open,
    /// Someone of support has it.
    Assigned,
    /// Done.
    Closed,
}

/// A sealed text: data key id and hex envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Sealed {
    key: u32,
    hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredComment {
    by: String,
    at_ms: u64,
    text: Sealed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredReport {
    id: u64,
    card: Option<String>,
    state: ReportState,
    opened_by: String,
    opened_ms: u64,
    assignee: Option<String>,
    closed_ms: Option<u64>,
    title: Sealed,
    text: Sealed,
    comments: Vec<StoredComment>,
}

/// A comment, opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Comment {
    /// Account id.
    pub by: String,
    /// When (Unix ms).
    pub at_ms: u64,
    /// The text.
    pub text: String,
}

/// A report, opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Report number.
    pub id: u64,
    /// The card it is about.
    pub card: Option<String>,
    /// State.
    pub state: ReportState,
    /// Who opened it.
    pub opened_by: String,
    /// When (Unix ms).
    pub opened_ms: u64,
    /// Who has it.
    pub assignee: Option<String>,
    /// When it was closed.
    pub closed_ms: Option<u64>,
    /// Title.
    pub title: String,
    /// Description.
    pub text: String,
    /// Comments, oldest first.
    pub comments: Vec<Comment>,
}

/// A step on a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportStep {
    /// Add a comment.
    Comment(String),
    /// Give it to an account of support.
    Assign(String),
    /// Close it, with a last comment.
    Close(String),
}

/// Checks a free text: 1 to `max` characters, none that could act on a reader's terminal
/// ([`vault::text::check`]).
fn text_ok(what: &str, t: &str, max: usize, kind: vault::text::Kind) -> Result<()> {
    if t.trim().is_empty() || t.chars().count() > max {
        return Err(Error::Invalid(format!("{what}: 1 to {max} characters")));
    }
    vault::text::check(what, t, kind).map_err(|e| Error::Invalid(e.to_string()))
}

impl Cards {
    fn seal_text(&self, hsm: &dyn Hsm, audit: &AuditLog, subject: &str, t: &str) -> Result<Sealed> {
        let (key, hex) = self.seal(hsm, audit, subject, t.as_bytes())?;
        Ok(Sealed { key, hex })
    }

    fn open_text(&self, hsm: &dyn Hsm, subject: &str, s: &Sealed) -> Result<String> {
        let bytes = self.open(hsm, s.key, subject, &s.hex)?;
        String::from_utf8(bytes).map_err(|_| Error::Integrity)
    }

    fn stored_report(&self, id: u64) -> Result<StoredReport> {
        let b = self
            .store
            .get(Tree::Reports, &id.to_be_bytes())?
            .ok_or(Missing::Report(id))?;
        decode("report", &b)
    }

    fn opened(&self, hsm: &dyn Hsm, r: &StoredReport) -> Result<Report> {
        let subject = format!("report {}", r.id);
        Ok(Report {
            id: r.id,
            card: r.card.clone(),
            state: r.state,
            opened_by: r.opened_by.clone(),
            opened_ms: r.opened_ms,
            assignee: r.assignee.clone(),
            closed_ms: r.closed_ms,
            title: self.open_text(hsm, &subject, &r.title)?,
            text: self.open_text(hsm, &subject, &r.text)?,
            comments: r
                .comments
                .iter()
                .map(|c| {
                    Ok(Comment {
                        by: c.by.clone(),
                        at_ms: c.at_ms,
                        text: self.open_text(hsm, &subject, &c.text)?,
                    })
                })
                .collect::<Result<_>>()?,
        })
    }

    /// Opens a report (`report.open`).
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty or over-long title or text; [`Error::Missing`] for an
    /// unknown card; [`Error::Sealed`]; store and audit errors.
    pub fn open_report(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        card: Option<&str>,
        title: &str,
        text: &str,
        actor: &Actor,
    ) -> Result<Report> {
        text_ok("title", title, MAX_TITLE, vault::text::Kind::Line)?;
        text_ok("text", text, MAX_TEXT, vault::text::Kind::MultiLine)?;
        let _ops = self.ops_lock();
        if let Some(c) = card {
            if self.card(c)?.is_none() {
                return Err(Missing::Card(c.to_string()).into());
            }
        }
        let id = match self.store.get(Tree::Meta, NEXT_REPORT_KEY)? {
            Some(b) => <[u8; 8]>::try_from(b.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| Error::Storage("the report counter is damaged".into()))?,
            None => 1,
        };
        let subject = format!("report {id}");
        let mut b = Batch::new();
        let r = StoredReport {
            id,
            card: card.map(str::to_string),
            state: ReportState::Open,
            opened_by: actor.id.clone(),
            opened_ms: self.now_ms(),
            assignee: None,
            closed_ms: None,
            title: self.seal_text(hsm, audit, &subject, title)?,
            text: self.seal_text(hsm, audit, &subject, text)?,
            comments: Vec::new(),
        };
        b.put(
            Tree::Meta,
            NEXT_REPORT_KEY.to_vec(),
            (id + 1).to_be_bytes().to_vec(),
        );
        b.put(Tree::Reports, id.to_be_bytes().to_vec(), encode(&r)?);
        let mut event = actor.event("report.open", subject);
        if let Some(c) = card {
            event = event.detail("card", c.to_string());
        }
        audit.commit(b, event)?;
        self.opened(hsm, &r)
    }

    /// Reports, oldest first, after `after`, at most `limit` (≤ 100); only open and assigned
    /// ones unless `closed_too`. Audited (`report.list`).
    ///
    /// # Errors
    /// [`Error::Sealed`]; store and audit errors.
    pub fn reports(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        after: u64,
        limit: usize,
        closed_too: bool,
        actor: &Actor,
    ) -> Result<Vec<Report>> {
        let limit = limit.clamp(1, 100);
        let mut out = Vec::new();
        let mut from = (after + 1).to_be_bytes().to_vec();
        'pages: loop {
            let page = self.store.range(Tree::Reports, &from, None, 100)?;
            let Some((last, _)) = page.last() else { break };
            from = last.clone();
            from.push(0);
            for (_, v) in &page {
                let r: StoredReport = decode("report", v)?;
                if closed_too || r.state != ReportState::Closed {
                    out.push(self.opened(hsm, &r)?);
                    if out.len() == limit {
                        break 'pages;
                    }
                }
            }
            if page.len() < 100 {
                break;
            }
        }
        audit.append(
            actor
                .event("report.list", "reports")
                .detail("count", out.len().to_string()),
        )?;
        Ok(out)
    }

    /// Comments on, assigns or closes a report (`report.comment`, `report.assign`,
    /// `report.close`). A closed report takes no step.
    ///
    /// # Errors
    /// [`Error::Missing`]; [`Error::WrongState`] for a closed report; [`Error::Invalid`] for
    /// a bad text; [`Error::Sealed`]; store and audit errors.
    pub fn report_step(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        id: u64,
        step: &ReportStep,
        actor: &Actor,
    ) -> Result<Report> {
        match step {
            ReportStep::Comment(t) | ReportStep::Close(t) => {
                text_ok("comment", t, MAX_TEXT, vault::text::Kind::MultiLine)?
            }
            ReportStep::Assign(who) => text_ok("assignee", who, 64, vault::text::Kind::Line)?,
        }
        let _ops = self.ops_lock();
        let mut r = self.stored_report(id)?;
        if r.state == ReportState::Closed {
            return Err(Error::WrongState {
                subject: Subject::Report(id),
                state: "closed".into(),
                wanted: "open or assigned".into(),
            });
        }
        let subject = format!("report {id}");
        let mut b = Batch::new();
        let now = self.now_ms();
        let action = match step {
            ReportStep::Comment(t) => {
                let text = self.seal_text(hsm, audit, &subject, t)?;
                r.comments.push(StoredComment {
                    by: actor.id.clone(),
                    at_ms: now,
                    text,
                });
                "report.comment"
            }
            ReportStep::Assign(who) => {
                r.assignee = Some(who.clone());
                r.state = ReportState::Assigned;
                "report.assign"
            }
            ReportStep::Close(t) => {
                let text = self.seal_text(hsm, audit, &subject, t)?;
                r.comments.push(StoredComment {
                    by: actor.id.clone(),
                    at_ms: now,
                    text,
                });
                r.state = ReportState::Closed;
                r.closed_ms = Some(now);
                "report.close"
            }
        };
        b.put(Tree::Reports, id.to_be_bytes().to_vec(), encode(&r)?);
        // Held until the commit below (see `note_encryptions`).
        let _keys = self.note_encryptions(&mut b)?;
        let mut event = actor.event(action, subject);
        if let ReportStep::Assign(who) = step {
            event = event.detail("assignee", who.clone());
        }
        audit.commit(b, event)?;
        self.opened(hsm, &r)
    }
}

//! The e-mail renderer: subject, plain-text body and HTML body of one message.
//!
//! It renders; it does not send. A courier (lettre) builds the `multipart/alternative` MIME
//! message from an [`EmailMessage`]. The subject comes from its own template and may not
//! contain a code; the HTML template is auto-escaped (the holder's name cannot inject markup).
//!
//! The three templates are rendered once per *shape* of mailer and filled in per message (see
//! [`super::prepared`]); [`EmailRenderer::render_email_direct`] templates every message, as
//! the reference and the path of templates and values the prepared texts cannot take.

use crate::error::Result;
use crate::render::prepared::{Escape, PreparedText, ShapeCache, Values};
use crate::render::templates::{Issuer, Templates, EMAIL_HTML, EMAIL_SUBJECT, EMAIL_TEXT};
use crate::render::{Mailer, Rendered, Renderer};
use crate::secret::SecretText;
use std::fmt;
use std::sync::Arc;

/// A rendered e-mail.
///
/// # Security
/// The bodies hold digits: zeroized on drop, redacted in `Debug`. The subject holds none.
pub struct EmailMessage {
    /// Subject line (no code, masked serial only).
    pub subject: String,
    /// `text/plain` body (UTF-8).
    pub text: SecretText,
    /// `text/html` body (UTF-8).
    pub html: SecretText,
}

impl fmt::Debug for EmailMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailMessage")
            .field("subject", &self.subject)
            .field("text", &self.text)
            .field("html", &self.html)
            .finish()
    }
}

/// Renders e-mails from the `email_subject.txt`, `email.txt` and `email.html` templates.
///
/// Clones share the prepared shapes; the renderer is meant to be shared (`Arc`) by every
/// thread that renders e-mails.
#[derive(Debug, Clone)]
pub struct EmailRenderer {
    templates: Arc<Templates>,
    issuer: Issuer,
    shapes: Arc<ShapeCache<EmailShape>>,
}

/// The three texts of an e-mail shape, prepared (no digit, no personal data).
#[derive(Debug)]
struct EmailShape {
    subject: PreparedText,
    text: PreparedText,
    html: PreparedText,
}

impl EmailShape {
    /// `None` if one of the templates cannot be prepared, or the subject prints a code (the
    /// direct path then reports it).
    fn prepare(r: &EmailRenderer, mailer: &Mailer<'_>) -> Option<EmailShape> {
        let prepare =
            |name, escape| PreparedText::prepare(&r.templates, &r.issuer, name, escape, mailer);
        let subject = prepare(EMAIL_SUBJECT, Escape::None)?;
        if subject.has_codes() {
            return None;
        }
        Some(EmailShape {
            subject,
            text: prepare(EMAIL_TEXT, Escape::None)?,
            html: prepare(EMAIL_HTML, Escape::Html)?,
        })
    }
}

/// A subject is one line: a template's stray newline would break the header.
fn one_line(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len());
    for word in subject.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

impl EmailRenderer {
    /// An e-mail renderer with these templates and issuer texts.
    pub fn new(templates: Arc<Templates>, issuer: Issuer) -> EmailRenderer {
        EmailRenderer {
            templates,
            issuer,
            shapes: Arc::default(),
        }
    }

    /// Renders one e-mail: through the prepared texts of its shape when it can (see
    /// [`super::prepared`]), else as [`EmailRenderer::render_email_direct`]. The output is
    /// the same either way.
    ///
    /// # Errors
    /// [`crate::Error::Template`], or [`crate::Error::CodeInSubject`] if the subject template
    /// prints a code.
    pub fn render_email(&self, mailer: &Mailer<'_>) -> Result<EmailMessage> {
        match self.render_prepared(mailer) {
            Some(message) => Ok(message),
            None => self.render_email_direct(mailer),
        }
    }

    /// Renders one e-mail by templating it for this mailer: the reference for the prepared
    /// path, and the path of templates that do not print the per-mailer values as they are.
    ///
    /// # Errors
    /// As [`EmailRenderer::render_email`].
    pub fn render_email_direct(&self, mailer: &Mailer<'_>) -> Result<EmailMessage> {
        let subject = self
            .templates
            .render_without_codes(EMAIL_SUBJECT, mailer, &self.issuer)?;
        Ok(EmailMessage {
            subject: one_line(&subject),
            text: self.templates.render(EMAIL_TEXT, mailer, &self.issuer)?,
            html: self.templates.render(EMAIL_HTML, mailer, &self.issuer)?,
        })
    }

    /// True if `mailer` renders through the prepared texts of its shape (preparing them if
    /// it is the first of its shape); false if it takes the direct path.
    pub fn is_prepared(&self, mailer: &Mailer<'_>) -> bool {
        self.shape(mailer).is_some() && Values::of(mailer).is_some()
    }

    fn shape(&self, mailer: &Mailer<'_>) -> Option<Arc<EmailShape>> {
        self.shapes
            .get(mailer, || EmailShape::prepare(self, mailer))
    }

    /// `None` when the mailer must take the direct path.
    fn render_prepared(&self, mailer: &Mailer<'_>) -> Option<EmailMessage> {
        let shape = self.shape(mailer)?;
        let values = Values::of(mailer)?;
        // The subject's shape has no code placeholder, and plain values hold no mark.
        let subject = one_line(&shape.subject.fill_marks(&values)?);
        Some(EmailMessage {
            subject,
            text: shape.text.fill(&values, mailer.codes)?,
            html: shape.html.fill(&values, mailer.codes)?,
        })
    }
}

impl Renderer for EmailRenderer {
    fn channel(&self) -> &'static str {
        "email"
    }

    fn render(&self, mailer: &Mailer<'_>) -> Result<Rendered> {
        self.render_email(mailer).map(Rendered::Email)
    }
}

//! The e-mail renderer: subject, plain-text body and HTML body of one message.
//!
//! It renders; it does not send. A courier (lettre) builds the `multipart/alternative` MIME
//! message from an [`EmailMessage`]. The subject comes from its own template and may not
//! contain a code; the HTML template is auto-escaped (the holder's name cannot inject markup).

use crate::error::Result;
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
#[derive(Debug, Clone)]
pub struct EmailRenderer {
    templates: Arc<Templates>,
    issuer: Issuer,
}

impl EmailRenderer {
    /// An e-mail renderer with these templates and issuer texts.
    pub fn new(templates: Arc<Templates>, issuer: Issuer) -> EmailRenderer {
        EmailRenderer { templates, issuer }
    }

    /// Renders one e-mail.
    ///
    /// # Errors
    /// [`crate::Error::Template`], or [`crate::Error::CodeInSubject`] if the subject template
    /// prints a code.
    pub fn render_email(&self, mailer: &Mailer<'_>) -> Result<EmailMessage> {
        let subject = self
            .templates
            .render_without_codes(EMAIL_SUBJECT, mailer, &self.issuer)?;
        // A subject is one line: a template's stray newline would break the header.
        let subject = subject.split_whitespace().collect::<Vec<_>>().join(" ");
        Ok(EmailMessage {
            subject,
            text: self.templates.render(EMAIL_TEXT, mailer, &self.issuer)?,
            html: self.templates.render(EMAIL_HTML, mailer, &self.issuer)?,
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

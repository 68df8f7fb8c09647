//! The texts of every mailer, as minijinja templates an operator can override.
//!
//! Built-in Italian defaults live in `dispatch/templates/` and are compiled into the binary;
//! [`Templates::load`] reads overrides from a directory: a file there named like a built-in
//! template (see [`TEMPLATE_NAMES`]) replaces it; any other `.txt` or `.html` file is an error,
//! so that a misspelt override is not silently ignored. Templates are compiled when loaded, so
//! a syntax error shows at start-up, naming the file and line. Undefined variables are errors.
//!
//! ## Context
//!
//! Every template sees:
//!
//! | name | value |
//! |---|---|
//! | `holder.name` | the addressee's name (substituted after templating, see below) |
//! | `card.serial_masked`, `card.serial_last4` | the masked serial, its last four characters (substituted after templating) |
//! | `issuer.name`, `issuer.card_name`, `issuer.helpline`, `issuer.web` | from [`Issuer`] |
//! | `part.name` | `"A"`, `"B"` or `"whole"` |
//! | `part.channel`, `part.other_channel` | `counter`, `remote`, `sms`, `email`, `mailer`, `any` (a `whole` plan: `any`, or the channel it names; other: none for a whole part) |
//! | `part.is_whole`, `part.is_first`, `part.index`, `part.count` | position in entry order |
//! | `part.pin`, `part.puk`, `part.sig_pin`, `part.sig_puk` | `{from, to, count, total, before, after, in_a, in_b}`: 1-based digit positions, digits in this part, in the whole code, before and after this part, and in part A and part B of a split plan (for the entry instructions; a whole part has them all in `in_a`) |
//! | `part.signature` | whether the card has a signature pair |
//! | `pin`, `puk`, `sig_pin`, `sig_puk` | the digits of this part (placeholders, see below) |
//! | `number` | the mailer number, or none (substituted after templating) |
//!
//! `pin`, `puk`, `sig_pin` and `sig_puk` are placeholders that are replaced by the digits after
//! templating: print them as they are (`{{ pin }}`), not through filters.
//!
//! In every template, `holder.name`, `card.serial_masked`, `card.serial_last4` and `number`
//! are substituted after templating as well, like the codes: the template is rendered once per
//! *shape* with placeholders for them, and each page or message only fills them in (see
//! [`super::pdf`] for print, [`super::prepared`] for e-mail and SMS; in `email.html` they are
//! HTML-escaped as minijinja's auto-escape would). Print them as they are. A template that
//! transforms or tests them (`{{ holder.name|upper }}`, `{% if number > 10 %}`) still renders
//! correctly: a check at the first mailer of each shape (four probe mailers, rendered both ways)
//! detects it, and such shapes are rendered the slow way, templating every mailer with the real
//! values.
//!
//! The print template is cut into sections by lines `[header]`, `[box]`, `[body]`, `[footer]`
//! (see [`super::pdf`]).

use crate::error::{Error, Result};
use crate::plan::{Part, PartCodes};
use crate::render::{mask_serial, serial_last4, Mailer};
use crate::secret::{Digits, SecretText};
use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// The print template.
pub const PRINT: &str = "print.txt";
/// The e-mail subject (may not contain a code).
pub const EMAIL_SUBJECT: &str = "email_subject.txt";
/// The e-mail text body.
pub const EMAIL_TEXT: &str = "email.txt";
/// The e-mail HTML body (auto-escaped).
pub const EMAIL_HTML: &str = "email.html";
/// The SMS text.
pub const SMS: &str = "sms.txt";

/// Names of all templates, as files in an override directory.
pub const TEMPLATE_NAMES: [&str; 5] = [PRINT, EMAIL_SUBJECT, EMAIL_TEXT, EMAIL_HTML, SMS];

const BUILTIN: [(&str, &str); 5] = [
    (PRINT, include_str!("../../templates/print.txt")),
    (
        EMAIL_SUBJECT,
        include_str!("../../templates/email_subject.txt"),
    ),
    (EMAIL_TEXT, include_str!("../../templates/email.txt")),
    (EMAIL_HTML, include_str!("../../templates/email.html")),
    (SMS, include_str!("../../templates/sms.txt")),
];

/// Marks a placeholder in rendered text; followed by one ASCII tag byte.
pub(crate) const MARK: char = '\u{E000}';
pub(crate) const PIN_TAG: u8 = b'P';
pub(crate) const PUK_TAG: u8 = b'K';
pub(crate) const SIG_PIN_TAG: u8 = b'S';
pub(crate) const SIG_PUK_TAG: u8 = b'T';
/// Per-mailer values substituted after templating in prepared print pages and texts (see
/// [`super::pdf`], [`super::prepared`]): `holder.name`, `card.serial_masked`,
/// `card.serial_last4`, `number`.
pub(crate) const NAME_TAG: u8 = b'n';
pub(crate) const MASKED_TAG: u8 = b'm';
pub(crate) const LAST4_TAG: u8 = b'l';
pub(crate) const NUMBER_TAG: u8 = b'#';

/// The issuer's texts that templates print (name, helpline…); from config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Issuer {
    /// The issuing body, e.g. `Regione Esempio`.
    pub name: String,
    /// The card's name, e.g. `Tessera Sanitaria - Carta Nazionale dei Servizi`.
    pub card_name: String,
    /// The helpline, e.g. `800 000 000`.
    pub helpline: String,
    /// The web site, e.g. `www.regione.esempio.it/cns`.
    pub web: String,
}

impl Default for Issuer {
    fn default() -> Issuer {
        Issuer {
            name: "Regione Esempio".into(),
            card_name: "Tessera Sanitaria - Carta Nazionale dei Servizi".into(),
            helpline: "800 000 000".into(),
            web: "www.regione.esempio.it/cns".into(),
        }
    }
}

/// The compiled templates: built-in defaults, possibly overridden from a directory.
pub struct Templates {
    env: Environment<'static>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.env.templates().map(|(n, _)| n).collect();
        f.debug_struct("Templates").field("names", &names).finish()
    }
}

fn template_error(name: &str, e: &minijinja::Error) -> Error {
    Error::Template {
        name: name.to_owned(),
        detail: e.to_string(),
    }
}

impl Templates {
    /// The built-in Italian templates.
    ///
    /// # Errors
    /// None in practice (the built-ins are compiled by the tests); a [`Error::Template`] would
    /// name the broken one.
    pub fn builtin() -> Result<Templates> {
        Templates::load(None)
    }

    /// The built-in templates, each replaced by the file of the same name in `dir` if present.
    ///
    /// # Errors
    /// [`Error::TemplateDir`] if the directory or a file cannot be read, [`Error::Template`]
    /// for a file with an unknown template name or a template that does not compile.
    pub fn load(dir: Option<&Path>) -> Result<Templates> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Block tags on their own line leave no blank line behind: easier for operators.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        for (name, source) in BUILTIN {
            env.add_template(name, source)
                .map_err(|e| template_error(name, &e))?;
        }
        if let Some(dir) = dir {
            let io = |path: &Path, source| Error::TemplateDir {
                path: path.to_owned(),
                source,
            };
            for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
                let path = entry.map_err(|e| io(dir, e))?.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if !(name.ends_with(".txt") || name.ends_with(".html")) {
                    continue;
                }
                let Some(known) = TEMPLATE_NAMES.iter().find(|n| **n == name) else {
                    return Err(Error::Template {
                        name: name.to_owned(),
                        detail: format!(
                            "not a template name (expected one of {})",
                            TEMPLATE_NAMES.join(", ")
                        ),
                    });
                };
                let source = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
                env.add_template_owned(*known, source)
                    .map_err(|e| template_error(known, &e))?;
            }
        }
        Ok(Templates { env })
    }

    /// Renders template `name` for `mailer`, digits in place, into a zeroizing text.
    pub(crate) fn render(
        &self,
        name: &str,
        mailer: &Mailer<'_>,
        issuer: &Issuer,
    ) -> Result<SecretText> {
        let text = self.render_placeholders(name, mailer, issuer)?;
        expand(&text, mailer.codes, name)
    }

    /// Renders template `name`, which must not print a code (e.g. a subject line).
    pub(crate) fn render_without_codes(
        &self,
        name: &str,
        mailer: &Mailer<'_>,
        issuer: &Issuer,
    ) -> Result<String> {
        let text = self.render_placeholders(name, mailer, issuer)?;
        if text.contains(MARK) {
            return Err(Error::CodeInSubject {
                name: name.to_owned(),
            });
        }
        Ok(text)
    }

    /// Renders template `name` for `mailer`, codes as placeholders (no digit is read).
    pub(crate) fn render_placeholders(
        &self,
        name: &str,
        mailer: &Mailer<'_>,
        issuer: &Issuer,
    ) -> Result<String> {
        let ctx = Context::new(mailer, issuer, false);
        self.env
            .get_template(name)
            .and_then(|t| t.render(&ctx))
            .map_err(|e| template_error(name, &e))
    }

    /// Renders the print template for the *shape* of `mailer` (its part, signature pair and
    /// whether it has a number): the codes **and** the holder's name, the serial texts and the
    /// number are placeholders. Reads neither a digit nor a personal value of `mailer`.
    pub(crate) fn render_print_shape(
        &self,
        mailer: &Mailer<'_>,
        issuer: &Issuer,
    ) -> Result<String> {
        self.render_shape(PRINT, mailer, issuer)
    }

    /// Renders template `name` for the *shape* of `mailer` (its part, signature pair and
    /// whether it has a number), as [`Templates::render_print_shape`] does for print: codes,
    /// holder's name, serial texts and number are placeholders (see [`super::prepared`]).
    pub(crate) fn render_shape(
        &self,
        name: &str,
        mailer: &Mailer<'_>,
        issuer: &Issuer,
    ) -> Result<String> {
        let ctx = Context::new(mailer, issuer, true);
        self.env
            .get_template(name)
            .and_then(|t| t.render(&ctx))
            .map_err(|e| template_error(name, &e))
    }
}

/// The digits a code tag stands for, if the part has them.
pub(crate) fn code_digits(codes: &PartCodes, tag: u8) -> Option<&Digits> {
    match tag {
        PIN_TAG => Some(&codes.pin),
        PUK_TAG => Some(&codes.puk),
        SIG_PIN_TAG => codes.signature.as_ref().map(|s| &s.0),
        SIG_PUK_TAG => codes.signature.as_ref().map(|s| &s.1),
        _ => None,
    }
}

/// Fills the per-mailer placeholders (name, serial texts, number) of a shape's text, leaving
/// the code placeholders in place; `None` for an unknown tag (a filter changed a placeholder).
pub(crate) fn substitute_personal(
    text: &str,
    name: &str,
    masked: &str,
    last4: &str,
    number: Option<&str>,
) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 2 * name.len() + 64);
    let mut pieces = text.split(MARK);
    out.push_str(pieces.next().unwrap_or(""));
    for piece in pieces {
        let tag = piece.bytes().next()?;
        match tag {
            NAME_TAG => out.push_str(name),
            MASKED_TAG => out.push_str(masked),
            LAST4_TAG => out.push_str(last4),
            NUMBER_TAG => out.push_str(number?),
            PIN_TAG | PUK_TAG | SIG_PIN_TAG | SIG_PUK_TAG => {
                out.push(MARK);
                out.push(char::from(tag));
            }
            _ => return None,
        }
        out.push_str(piece.get(1..)?);
    }
    Some(out)
}

/// Replaces the placeholders of `text` with the digits of `codes`, into a text allocated once.
fn expand(text: &str, codes: &PartCodes, name: &str) -> Result<SecretText> {
    let digits = |tag: Option<u8>| -> Result<&Digits> {
        let missing = || Error::Template {
            name: name.to_owned(),
            detail: "a code placeholder was changed by a filter or is not available".into(),
        };
        match tag {
            Some(PIN_TAG) => Ok(&codes.pin),
            Some(PUK_TAG) => Ok(&codes.puk),
            Some(SIG_PIN_TAG) => codes.signature.as_ref().map(|s| &s.0).ok_or_else(missing),
            Some(SIG_PUK_TAG) => codes.signature.as_ref().map(|s| &s.1).ok_or_else(missing),
            _ => Err(missing()),
        }
    };
    let mut pieces = text.split(MARK);
    let first = pieces.next().unwrap_or("");
    let mut size = first.len();
    for piece in text.split(MARK).skip(1) {
        size += digits(piece.bytes().next())?.len() + piece.len() - 1;
    }
    let mut out = SecretText::with_capacity(size);
    out.push_str(first);
    for piece in pieces {
        let d = digits(piece.bytes().next())?;
        for &b in d.expose_secret() {
            out.push(char::from(b));
        }
        // The tag is one ASCII byte, so index 1 is a character boundary.
        out.push_str(piece.get(1..).unwrap_or(""));
    }
    Ok(out)
}

/// The mailer number, or its placeholder in a prepared print page.
#[derive(Serialize)]
#[serde(untagged)]
enum NumberCtx {
    Value(u64),
    Placeholder(&'static str),
}

#[derive(Serialize)]
struct Context<'a> {
    holder: HolderCtx<'a>,
    card: CardCtx,
    issuer: &'a Issuer,
    part: PartCtx,
    pin: &'static str,
    puk: &'static str,
    sig_pin: Option<&'static str>,
    sig_puk: Option<&'static str>,
    number: Option<NumberCtx>,
}

#[derive(Serialize)]
struct HolderCtx<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct CardCtx {
    serial_masked: String,
    serial_last4: String,
}

#[derive(Serialize)]
struct PartCtx {
    name: &'static str,
    channel: &'static str,
    other_channel: Option<&'static str>,
    is_whole: bool,
    is_first: bool,
    index: usize,
    count: usize,
    signature: bool,
    pin: RangeCtx,
    puk: RangeCtx,
    sig_pin: Option<RangeCtx>,
    sig_puk: Option<RangeCtx>,
}

#[derive(Serialize)]
struct RangeCtx {
    from: usize,
    to: usize,
    count: usize,
    total: usize,
    before: usize,
    after: usize,
    in_a: usize,
    in_b: usize,
}

impl RangeCtx {
    /// The context of one code's digit range `r` in part `index` of `count` parts: part A
    /// (index 0) holds the digits up to the end of its range, part B the rest.
    fn new(r: &std::ops::Range<usize>, total: usize, index: usize, count: usize) -> RangeCtx {
        let after = total.saturating_sub(r.end);
        let (in_a, in_b) = match (count, index) {
            (1, _) => (total, 0),
            (_, 0) => (r.len(), after),
            _ => (r.start, total.saturating_sub(r.start)),
        };
        RangeCtx {
            from: r.start + 1,
            to: r.end,
            count: r.len(),
            total,
            before: r.start,
            after,
            in_a,
            in_b,
        }
    }
}

impl<'a> Context<'a> {
    /// The context of `mailer`; with `personal`, the name, serial texts and number are
    /// placeholders (a print page shape).
    fn new(mailer: &Mailer<'a>, issuer: &'a Issuer, personal: bool) -> Context<'a> {
        let codes = mailer.codes;
        let p: &Part = &codes.part;
        let has_sig = codes.signature.is_some() && p.signature_digits.is_some();
        Context {
            holder: HolderCtx {
                name: if personal {
                    "\u{E000}n"
                } else {
                    &mailer.addressee.name
                },
            },
            card: if personal {
                CardCtx {
                    serial_masked: "\u{E000}m".into(),
                    serial_last4: "\u{E000}l".into(),
                }
            } else {
                CardCtx {
                    serial_masked: mask_serial(mailer.card_serial),
                    serial_last4: serial_last4(mailer.card_serial),
                }
            },
            issuer,
            part: PartCtx {
                name: p.name.as_str(),
                channel: p.channel.as_str(),
                other_channel: p.other_channel.map(|c| c.as_str()),
                is_whole: p.count == 1,
                is_first: p.index == 0,
                index: p.index,
                count: p.count,
                signature: has_sig,
                pin: RangeCtx::new(&p.pin_digits, p.pin_len, p.index, p.count),
                puk: RangeCtx::new(&p.puk_digits, p.puk_len, p.index, p.count),
                sig_pin: p.signature_digits.as_ref().map(|(r, _)| {
                    RangeCtx::new(r, p.signature_len.map_or(r.end, |l| l.0), p.index, p.count)
                }),
                sig_puk: p.signature_digits.as_ref().map(|(_, r)| {
                    RangeCtx::new(r, p.signature_len.map_or(r.end, |l| l.1), p.index, p.count)
                }),
            },
            pin: "\u{E000}P",
            puk: "\u{E000}K",
            sig_pin: has_sig.then_some("\u{E000}S"),
            sig_puk: has_sig.then_some("\u{E000}T"),
            number: mailer.number.map(|n| {
                if personal {
                    NumberCtx::Placeholder("\u{E000}#")
                } else {
                    NumberCtx::Value(n)
                }
            }),
        }
    }
}

//! The consent form: a one-page A4 PDF (PDF/A-2b like every print file) that the counter
//! prints for the citizen to sign when a card is activated or its holder identified again.
//!
//! It prints the issuer, the holder's name and codice fiscale, the card serial **masked** as
//! every mailer masks it ([`super::mask_serial`]), how the holder was identified (in person
//! with a document, or a delegate with their identity, document and delegation reference), the
//! consent reference, the consent text (Italian, or English when the console is in English),
//! the date, and room for the place and the signatures. It never holds a digit of a code: it
//! is made from the holder's data and the counter's form only.
//!
//! ## Design
//!
//! The page is laid out directly (no template: the texts are fixed, per language, in this
//! module) with the same embedded font subsets, resources and file skeleton as the print
//! files ([`super::pdf`], [`super::pdfa`]), so every name the mailers print prints here too
//! (Latin, Greek, Cyrillic), and a character outside the subsets is a
//! [`LayoutError::Unprintable`] naming the field, never its text. Values are wrapped to the
//! page's width, a word wider than the column broken where it must; should the text not fit,
//! it goes on over a second page.

use crate::error::{LayoutError, Result};
use crate::render::font::text_width;
use crate::render::mask_serial;
use crate::render::pdf::{font_objects, output_profile, put_text, Font};
use crate::render::pdfa;
use crate::render::templates::Issuer;
use crate::secret::SecretBuf;
use std::fmt;
use std::fmt::Write as _;

/// The language of a form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormLang {
    /// Italiano.
    It,
    /// English.
    En,
}

/// What the form consents to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormPurpose {
    /// A card's activation and the delivery of its codes.
    Activation,
    /// The holder identified again (e.g. after a contact changed).
    Reidentification,
}

/// How the holder was identified at the counter.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Identified<'a> {
    /// The holder in person.
    InPerson {
        /// Identity document type, as the counter named it (`carta_identita`, …).
        document_type: &'a str,
        /// Its number.
        document_number: &'a str,
    },
    /// A delegate.
    Delegate {
        /// The delegate's given names.
        given_names: &'a str,
        /// The delegate's surname.
        surname: &'a str,
        /// The delegate's codice fiscale.
        codice_fiscale: &'a str,
        /// The delegate's identity document type.
        document_type: &'a str,
        /// Its number.
        document_number: &'a str,
        /// Reference of the delegation form.
        delegation_ref: &'a str,
    },
}

impl fmt::Debug for Identified<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Identified::InPerson { .. } => "Identified::InPerson(<personal>)",
            Identified::Delegate { .. } => "Identified::Delegate(<personal>)",
        })
    }
}

/// Everything a consent form prints. Personal data: `Debug` shows none of it.
#[derive(Clone, Copy)]
pub struct ConsentForm<'a> {
    /// The language of the texts.
    pub lang: FormLang,
    /// What it consents to.
    pub purpose: FormPurpose,
    /// The issuing body and the card's name.
    pub issuer: &'a Issuer,
    /// The holder's given names and surname.
    pub holder_name: &'a str,
    /// The holder's codice fiscale.
    pub codice_fiscale: &'a str,
    /// The card serial in full; only its masked form is printed.
    pub card_serial: &'a str,
    /// How the holder was identified.
    pub identified: Identified<'a>,
    /// The consent reference (the form's own number).
    pub consent_ref: &'a str,
    /// The date printed, as the caller writes it.
    pub date: &'a str,
    /// The operator who printed it (account name).
    pub operator: &'a str,
}

impl fmt::Debug for ConsentForm<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsentForm")
            .field("lang", &self.lang)
            .field("purpose", &self.purpose)
            .field("card_serial", &mask_serial(self.card_serial))
            .finish_non_exhaustive()
    }
}

/// The fixed texts of one language.
struct Texts {
    title_activation: &'static str,
    title_reidentification: &'static str,
    holder: &'static str,
    name: &'static str,
    codice_fiscale: &'static str,
    card: &'static str,
    identification: &'static str,
    in_person: &'static str,
    by_delegate: &'static str,
    document: &'static str,
    delegate: &'static str,
    delegate_cf: &'static str,
    delegate_document: &'static str,
    delegation_ref: &'static str,
    consent_ref: &'static str,
    consent: &'static str,
    activation_text: &'static str,
    reidentification_text: &'static str,
    delegate_text: &'static str,
    codes_text: &'static str,
    privacy_text: &'static str,
    place: &'static str,
    date: &'static str,
    holder_signature: &'static str,
    delegate_signature: &'static str,
    operator_signature: &'static str,
    operator: &'static str,
    footer: &'static str,
    doc_title: &'static str,
}

const IT: Texts = Texts {
    title_activation: "Modulo di consenso all'attivazione della carta",
    title_reidentification: "Modulo di nuova identificazione del titolare",
    holder: "Titolare",
    name: "Nome e cognome",
    codice_fiscale: "Codice fiscale",
    card: "Carta",
    identification: "Identificazione",
    in_person: "Il titolare, di persona",
    by_delegate: "Un delegato del titolare",
    document: "Documento del titolare",
    delegate: "Delegato",
    delegate_cf: "Codice fiscale del delegato",
    delegate_document: "Documento del delegato",
    delegation_ref: "Riferimento della delega",
    consent_ref: "Riferimento del consenso",
    consent: "Consenso",
    activation_text: "Il/La sottoscritto/a, identificato/a come sopra, chiede l'attivazione \
        della carta indicata e acconsente alla consegna dei codici PIN e PUK della carta con \
        le modalità scelte allo sportello.",
    reidentification_text: "Il/La sottoscritto/a, identificato/a come sopra, conferma i \
        recapiti (numero di cellulare, indirizzo e-mail) registrati per il titolare della \
        carta indicata e acconsente a che i codici PIN e PUK della carta vi siano inviati.",
    delegate_text: "Il delegato dichiara di agire in nome e per conto del titolare, in forza \
        della delega indicata, che si allega.",
    codes_text: "I codici sono personali: non vanno comunicati a nessuno. Né l'operatore né \
        altri possono leggerli; sono stampati in busta chiusa o inviati ai recapiti \
        registrati.",
    privacy_text: "I dati personali sono trattati ai sensi del Regolamento (UE) 2016/679 \
        per la sola gestione della carta e dei suoi codici.",
    place: "Luogo",
    date: "Data",
    holder_signature: "Firma del titolare",
    delegate_signature: "Firma del delegato",
    operator_signature: "Firma dell'operatore",
    operator: "Operatore",
    footer: "Il modulo firmato resta agli atti dello sportello.",
    doc_title: "Modulo di consenso",
};

const EN: Texts = Texts {
    title_activation: "Consent to the activation of the card",
    title_reidentification: "New identification of the card holder",
    holder: "Holder",
    name: "Name",
    codice_fiscale: "Codice fiscale (tax code)",
    card: "Card",
    identification: "Identification",
    in_person: "The holder, in person",
    by_delegate: "A delegate of the holder",
    document: "Holder's identity document",
    delegate: "Delegate",
    delegate_cf: "Delegate's codice fiscale",
    delegate_document: "Delegate's identity document",
    delegation_ref: "Delegation reference",
    consent_ref: "Consent reference",
    consent: "Consent",
    activation_text: "The undersigned, identified as above, asks for the card named above to \
        be activated and consents to the delivery of the card's PIN and PUK in the way \
        chosen at the counter.",
    reidentification_text: "The undersigned, identified as above, confirms the contacts \
        (mobile number, e-mail address) registered for the holder of the card named above \
        and consents to the card's PIN and PUK being sent to them.",
    delegate_text: "The delegate declares to act in the name and on behalf of the holder, \
        under the delegation named above, which is attached.",
    codes_text: "The codes are personal: never tell them to anyone. Neither the operator nor \
        anyone else can read them; they are printed in a sealed envelope or sent to the \
        registered contacts.",
    privacy_text: "Personal data are processed under Regulation (EU) 2016/679 only to manage \
        the card and its codes.",
    place: "Place",
    date: "Date",
    holder_signature: "Holder's signature",
    delegate_signature: "Delegate's signature",
    operator_signature: "Operator's signature",
    operator: "Operator",
    footer: "The signed form is kept by the counter.",
    doc_title: "Consent form",
};

/// A4 in points.
const WIDTH: f32 = 595.28;
const HEIGHT: f32 = 841.89;
/// Left and right margins (20 mm).
const MARGIN: f32 = 56.69;
/// Where a value starts, right of its label.
const VALUE_X: f32 = MARGIN + 170.0;
/// The lowest baseline on a page.
const BOTTOM: f32 = HEIGHT - 60.0;
const TEXT: f32 = 10.0;
const LEAD: f32 = 14.0;

/// Pages being laid out: each page's content stream, and the baseline reached on the last.
struct Pages {
    done: Vec<SecretBuf>,
    page: SecretBuf,
    top: f32,
}

impl Pages {
    fn new() -> Pages {
        Pages {
            done: Vec::new(),
            page: SecretBuf::with_capacity(8192),
            top: 64.0,
        }
    }

    /// Moves down by `dy`, to a new page when `need` more points would not fit.
    fn down(&mut self, dy: f32, need: f32) {
        if self.top + dy + need > BOTTOM {
            let full = std::mem::replace(&mut self.page, SecretBuf::with_capacity(8192));
            self.done.push(full);
            self.top = 64.0;
        } else {
            self.top += dy;
        }
    }

    fn text(&mut self, font: Font, size: f32, x: f32, s: &str, field: &str) -> Result<()> {
        put_text(&mut self.page, HEIGHT, font, size, x, self.top, s).map_err(|(code, position)| {
            LayoutError::Unprintable {
                field: field.to_owned(),
                code,
                position,
            }
            .into()
        })
    }

    /// A horizontal rule `dy` points below the current baseline, from `x0` to `x1`.
    fn rule(&mut self, x0: f32, x1: f32, dy: f32, width: f32) {
        let y = HEIGHT - self.top - dy;
        let mut s = String::new();
        let _ = writeln!(s, "{width:.2} w {x0:.2} {y:.2} m {x1:.2} {y:.2} l S");
        self.page.extend(s.as_bytes());
    }

    /// A paragraph wrapped to the page's width.
    fn paragraph(&mut self, s: &str, field: &str) -> Result<()> {
        for line in wrap_hard(s, TEXT, WIDTH - 2.0 * MARGIN) {
            self.down(LEAD, 0.0);
            self.text(Font::Regular, TEXT, MARGIN, &line, field)?;
        }
        self.down(LEAD * 0.4, 0.0);
        Ok(())
    }

    /// A label and its value (wrapped to the value column).
    fn row(&mut self, label: &str, value: &str, field: &str) -> Result<()> {
        let lines = wrap_hard(value, TEXT, WIDTH - MARGIN - VALUE_X);
        self.down(LEAD, 0.0);
        self.text(Font::Regular, 9.0, MARGIN, label, "label")?;
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                self.down(LEAD, 0.0);
            }
            self.text(Font::Bold, TEXT, VALUE_X, line, field)?;
        }
        Ok(())
    }

    /// A section heading with a rule under it.
    fn heading(&mut self, s: &str) -> Result<()> {
        self.down(LEAD * 1.8, LEAD * 3.0);
        self.text(Font::Bold, 11.5, MARGIN, s, "heading")?;
        self.rule(MARGIN, WIDTH - MARGIN, 4.0, 0.5);
        self.down(2.0, 0.0);
        Ok(())
    }

    fn finish(mut self) -> Vec<SecretBuf> {
        self.done.push(self.page);
        self.done
    }
}

/// Greedy word wrap of `s` into lines no wider than `width`; a word wider than `width` is
/// broken between characters.
fn wrap_hard(s: &str, size: f32, width: f32) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = String::new();
    for word in s.split_whitespace() {
        let candidate = if line.is_empty() {
            word.to_owned()
        } else {
            format!("{line} {word}")
        };
        if text_width(&candidate, size) <= width {
            line = candidate;
            continue;
        }
        if !line.is_empty() {
            out.push(std::mem::take(&mut line));
        }
        for c in word.chars() {
            line.push(c);
            if text_width(&line, size) > width && line.chars().count() > 1 {
                line.pop();
                out.push(std::mem::take(&mut line));
                line.push(c);
            }
        }
    }
    if !line.is_empty() || out.is_empty() {
        out.push(line);
    }
    out
}

/// An identity document as printed: its type in words (the counter's usual values by name,
/// another one with `_` as a space) and its number.
fn document(lang: FormLang, kind: &str, number: &str) -> String {
    let kind = kind.trim();
    let words = match (kind, lang) {
        ("carta_identita", FormLang::It) => "Carta d'identità".to_owned(),
        ("carta_identita", FormLang::En) => "Identity card".to_owned(),
        ("passaporto", FormLang::It) => "Passaporto".to_owned(),
        ("passaporto", FormLang::En) => "Passport".to_owned(),
        ("patente", FormLang::It) => "Patente di guida".to_owned(),
        ("patente", FormLang::En) => "Driving licence".to_owned(),
        (other, _) => other.replace('_', " "),
    };
    format!("{words} n. {}", number.trim())
}

/// Renders the form as a PDF file.
///
/// # Errors
/// [`LayoutError::Unprintable`] naming the field (`holder name`, `delegate surname`, …) of a
/// character the embedded fonts lack; never the text itself.
pub fn render_consent_form(form: &ConsentForm<'_>) -> Result<Vec<u8>> {
    let t = match form.lang {
        FormLang::It => &IT,
        FormLang::En => &EN,
    };
    let mut p = Pages::new();
    p.text(Font::Bold, 10.0, MARGIN, &form.issuer.name, "issuer name")?;
    p.down(LEAD, 0.0);
    p.text(
        Font::Regular,
        9.0,
        MARGIN,
        &form.issuer.card_name,
        "issuer card name",
    )?;
    p.down(LEAD * 2.2, 0.0);
    let title = match form.purpose {
        FormPurpose::Activation => t.title_activation,
        FormPurpose::Reidentification => t.title_reidentification,
    };
    for line in wrap_hard(title, 15.0, WIDTH - 2.0 * MARGIN) {
        p.text(Font::Bold, 15.0, MARGIN, &line, "title")?;
        p.down(LEAD * 1.4, 0.0);
    }
    p.row(t.consent_ref, form.consent_ref, "consent reference")?;

    p.heading(t.holder)?;
    p.row(t.name, form.holder_name, "holder name")?;
    p.row(t.codice_fiscale, form.codice_fiscale, "codice fiscale")?;
    p.row(t.card, &mask_serial(form.card_serial), "card serial")?;

    p.heading(t.identification)?;
    match form.identified {
        Identified::InPerson {
            document_type,
            document_number,
        } => {
            p.row(t.identification, t.in_person, "identification")?;
            p.row(
                t.document,
                &document(form.lang, document_type, document_number),
                "document",
            )?;
        }
        Identified::Delegate {
            given_names,
            surname,
            codice_fiscale,
            document_type,
            document_number,
            delegation_ref,
        } => {
            p.row(t.identification, t.by_delegate, "identification")?;
            let name = format!("{} {}", given_names.trim(), surname.trim());
            p.row(t.delegate, &name, "delegate name")?;
            p.row(
                t.delegate_cf,
                codice_fiscale.trim(),
                "delegate codice fiscale",
            )?;
            p.row(
                t.delegate_document,
                &document(form.lang, document_type, document_number),
                "delegate document",
            )?;
            p.row(
                t.delegation_ref,
                delegation_ref.trim(),
                "delegation reference",
            )?;
        }
    }

    p.heading(t.consent)?;
    let text = match form.purpose {
        FormPurpose::Activation => t.activation_text,
        FormPurpose::Reidentification => t.reidentification_text,
    };
    p.paragraph(text, "consent text")?;
    if matches!(form.identified, Identified::Delegate { .. }) {
        p.paragraph(t.delegate_text, "consent text")?;
    }
    p.paragraph(t.codes_text, "consent text")?;
    p.paragraph(t.privacy_text, "consent text")?;

    // Place and date, then the signatures: room to write on a line each.
    p.down(LEAD * 2.0, LEAD * 9.0);
    let half = (WIDTH - 2.0 * MARGIN) / 2.0;
    p.text(
        Font::Regular,
        TEXT,
        MARGIN,
        &format!("{}:", t.place),
        "label",
    )?;
    p.rule(MARGIN + 40.0, MARGIN + half - 20.0, 0.0, 0.5);
    p.text(
        Font::Regular,
        TEXT,
        MARGIN + half,
        &format!("{}:", t.date),
        "label",
    )?;
    p.text(Font::Bold, TEXT, MARGIN + half + 40.0, form.date, "date")?;
    p.down(LEAD * 4.0, 0.0);
    let signer = match form.identified {
        Identified::InPerson { .. } => t.holder_signature,
        Identified::Delegate { .. } => t.delegate_signature,
    };
    p.rule(MARGIN, MARGIN + half - 20.0, -2.0, 0.5);
    p.rule(MARGIN + half, WIDTH - MARGIN, -2.0, 0.5);
    p.down(LEAD, 0.0);
    p.text(Font::Regular, 9.0, MARGIN, signer, "label")?;
    p.text(
        Font::Regular,
        9.0,
        MARGIN + half,
        t.operator_signature,
        "label",
    )?;
    p.down(LEAD * 2.0, 0.0);
    let operator = format!("{}: {}", t.operator, form.operator);
    p.text(Font::Regular, 8.0, MARGIN, &operator, "operator")?;
    p.down(LEAD, 0.0);
    p.text(Font::Regular, 8.0, MARGIN, t.footer, "footer")?;

    Ok(file(p.finish(), t.doc_title)?)
}

/// Object numbers as in the print files (see [`super::pdf`]): 1 catalogue, 2 page tree,
/// 3–5 fonts, 6 resources, 7–18 the fonts' parts, 19 the output profile, 20 the metadata,
/// then each page and its content stream.
const CATALOG: usize = 1;
const PAGES: usize = 2;
const RESOURCES: usize = 6;
const OUTPUT_PROFILE: usize = 19;
const METADATA: usize = 20;
const FIRST_PAGE: usize = 21;

/// The PDF file of `pages` (content streams), titled `title`.
fn file(pages: Vec<SecretBuf>, title: &str) -> std::io::Result<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity(96 * 1024);
    let mut offsets = vec![0usize; FIRST_PAGE + 2 * pages.len()];
    let object = |out: &mut Vec<u8>, offsets: &mut Vec<usize>, num: usize, body: &[u8]| {
        offsets[num] = out.len();
        out.extend_from_slice(format!("{num} 0 obj\n").as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    };
    let (created, nanos) = pdfa::created_now();
    out.extend_from_slice(pdfa::HEADER);
    for (num, body) in font_objects() {
        object(&mut out, &mut offsets, *num, body);
    }
    object(&mut out, &mut offsets, OUTPUT_PROFILE, output_profile());
    object(
        &mut out,
        &mut offsets,
        METADATA,
        &pdfa::metadata_object(title, &created),
    );
    object(
        &mut out,
        &mut offsets,
        RESOURCES,
        b"<< /Font << /F1 3 0 R /F2 4 0 R /F3 5 0 R >> /ProcSet [/PDF /Text] >>",
    );
    let mut kids = String::new();
    for (i, stream) in pages.iter().enumerate() {
        let num = FIRST_PAGE + 2 * i;
        let page = format!(
            "<< /Type /Page /Parent {PAGES} 0 R /MediaBox [0 0 {WIDTH:.2} {HEIGHT:.2}] \
             /Resources {RESOURCES} 0 R /Contents {} 0 R >>",
            num + 1
        );
        object(&mut out, &mut offsets, num, page.as_bytes());
        let bytes = stream.expose_secret();
        let mut body = format!("<< /Length {} >>\nstream\n", bytes.len()).into_bytes();
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\nendstream");
        object(&mut out, &mut offsets, num + 1, &body);
        let _ = write!(kids, "{num} 0 R ");
    }
    let tree = format!("<< /Type /Pages /Count {} /Kids [{kids}] >>", pages.len());
    object(&mut out, &mut offsets, PAGES, tree.as_bytes());
    let catalog = format!(
        "<< /Type /Catalog /Pages {PAGES} 0 R /Metadata {METADATA} 0 R {} >>",
        pdfa::output_intents(OUTPUT_PROFILE)
    );
    object(&mut out, &mut offsets, CATALOG, catalog.as_bytes());
    let xref_at = out.len();
    let count = offsets.len();
    let mut xref = format!("xref\n0 {count}\n0000000000 65535 f \n");
    for off in &offsets[1..] {
        let _ = writeln!(xref, "{off:010} 00000 n ");
    }
    let id = pdfa::document_id(nanos, count, xref_at as u64);
    let _ = write!(
        xref,
        "trailer\n<< /Size {count} /Root {CATALOG} 0 R {id} >>\nstartxref\n{xref_at}\n%%EOF\n"
    );
    out.extend_from_slice(xref.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form<'a>(issuer: &'a Issuer, name: &'a str, identified: Identified<'a>) -> ConsentForm<'a> {
        ConsentForm {
            lang: FormLang::It,
            purpose: FormPurpose::Activation,
            issuer,
            holder_name: name,
            codice_fiscale: "RSSMRA85T10A562S",
            card_serial: "80380000000000000101",
            identified,
            consent_ref: "consenso-1",
            date: "07/12/2026",
            operator: "sportello 3",
        }
    }

    const IN_PERSON: Identified<'static> = Identified::InPerson {
        document_type: "carta_identita",
        document_number: "CA12345AB",
    };

    #[test]
    fn a_form_is_a_pdf_file_with_the_masked_serial_only() {
        let issuer = Issuer::default();
        let pdf = render_consent_form(&form(&issuer, "Ștefan Γιώργος", IN_PERSON)).unwrap();
        assert!(pdf.starts_with(b"%PDF-1.7"));
        assert!(pdf.ends_with(b"%%EOF\n"));
        let text = String::from_utf8_lossy(&pdf);
        assert!(!text.contains("80380000000000000101"));
        assert!(text.contains("/Count 1"));
    }

    #[test]
    fn a_character_outside_the_fonts_names_the_field_not_the_text() {
        let issuer = Issuer::default();
        let e = render_consent_form(&form(&issuer, "王 小明", IN_PERSON)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("holder name: character U+738B"), "{msg}");
        assert!(!msg.contains('王'));
    }

    #[test]
    fn long_words_are_broken_to_the_column() {
        let long = "x".repeat(300);
        let lines = wrap_hard(&long, TEXT, 200.0);
        assert!(lines.len() > 1);
        assert!(lines.iter().all(|l| text_width(l, TEXT) <= 200.0));
        assert_eq!(lines.concat(), long);
        assert_eq!(wrap_hard("", TEXT, 100.0), vec![String::new()]);
    }

    #[test]
    fn documents_read_as_words() {
        assert_eq!(
            document(FormLang::It, "carta_identita", " CA1 "),
            "Carta d'identità n. CA1"
        );
        assert_eq!(document(FormLang::En, "passaporto", "P1"), "Passport n. P1");
        assert_eq!(
            document(FormLang::En, "titre_de_sejour", "T1"),
            "titre de sejour n. T1"
        );
    }
}

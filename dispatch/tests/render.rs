//! Integration tests of the renderers: golden texts, PDF structure read back with poppler's
//! `pdftotext`, template overrides, and redaction of every type that carries codes.
//!
//! Golden files live in `tests/golden/`; `UPDATE_GOLDEN=1 cargo test -p dispatch` rewrites
//! them (review the diff before committing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dispatch::render::sms::gsm7_septets;
use dispatch::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const SERIAL: &str = "8039123456781234";
const MASKED: &str = "8039 •••• •••• 1234";
const PIN: &[u8] = b"24680";
const PUK: &[u8] = b"13572468";

fn addressee() -> Addressee {
    Addressee {
        name: "Niccolò D’Aragona".into(),
        address: vec!["Via Città di Castello, 12".into(), "00136 Roma RM".into()],
    }
}

fn codes() -> Codes {
    Codes::new(PIN, PUK).unwrap()
}

fn parts(plan: &str) -> Vec<PartCodes> {
    Plan::parse(plan).unwrap().cut(&codes()).unwrap()
}

fn templates() -> Arc<Templates> {
    Arc::new(Templates::builtin().unwrap())
}

fn print() -> PrintRenderer {
    PrintRenderer::new(templates(), Layout::default(), Issuer::default())
}

fn mailer<'a>(who: &'a Addressee, part: &'a PartCodes) -> Mailer<'a> {
    Mailer {
        addressee: who,
        card_serial: SERIAL,
        codes: part,
        number: Some(42),
    }
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        actual, expected,
        "{name} differs from its golden file (UPDATE_GOLDEN=1 rewrites it)"
    );
}

/// Text of a PDF as poppler reads it.
fn pdftotext(pdf: &[u8], extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("m.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = Command::new("pdftotext")
        .args(["-q", "-enc", "UTF-8"])
        .args(extra)
        .arg(&path)
        .arg("-")
        .output()
        .unwrap_or_else(|e| {
            panic!("pdftotext (poppler-utils) cannot run ({e}): run `bash scripts/test.sh`, which installs it")
        });
    assert!(out.status.success(), "pdftotext failed on our PDF: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn render_pdf(r: &PrintRenderer, m: &Mailer<'_>) -> Vec<u8> {
    match r.render(m).unwrap() {
        Rendered::Pdf(b) => b.expose_secret().to_vec(),
        other => panic!("not a pdf: {other:?}"),
    }
}

#[test]
fn print_page_text_matches_golden() {
    let who = addressee();
    let parts = parts("counter(2)+sms");
    let pdf = render_pdf(&print(), &mailer(&who, &parts[0]));
    // The counter's page prints today's date: the golden file has a stand-in.
    let text = pdftotext(&pdf, &[]);
    let at = text.find("Stampato il ").unwrap() + "Stampato il ".len();
    let text = format!("{}YYYY-MM-DD{}", &text[..at], &text[at + 10..]);
    golden("print_counter_a.txt", &text);
}

#[test]
fn print_page_shows_name_masked_serial_and_digits_but_not_the_serial() {
    let who = addressee();
    for plan in ["whole", "counter(2)+sms"] {
        for part in self::parts(plan) {
            let pdf = render_pdf(&print(), &mailer(&who, &part));
            let text = pdftotext(&pdf, &[]);
            assert!(text.contains("Niccolò D’Aragona"), "{text}");
            assert!(text.contains("Via Città di Castello, 12"), "{text}");
            assert!(text.contains(MASKED), "{text}");
            assert!(!text.contains(SERIAL), "{text}");
            assert!(!text.contains("12345678"), "{text}");
            let pin = std::str::from_utf8(part.pin.expose_secret()).unwrap();
            let puk = std::str::from_utf8(part.puk.expose_secret()).unwrap();
            assert!(text.contains(pin) && text.contains(puk), "{plan} {text}");
            // Never more digits than the part carries.
            if part.part.name == PartName::A {
                assert!(!text.contains("24680") && !text.contains("1357"), "{text}");
            }
            let order = text.find("prima le cifre della parte A");
            assert_eq!(order.is_some(), plan != "whole", "{plan}: {text}");
        }
    }
}

#[test]
fn accented_italian_letters_render_in_the_pdf() {
    let who = Addressee {
        name: "Àlfio Èrcole Ìppolito D’Òria Ùgo".into(),
        address: vec![
            "Via Lì à è é ì ò ù, 3".into(),
            "É già: À È É Ì Ò Ù ’".into(),
        ],
    };
    let parts = parts("whole");
    let text = pdftotext(&render_pdf(&print(), &mailer(&who, &parts[0])), &[]);
    for needle in [
        "Àlfio Èrcole Ìppolito D’Òria Ùgo",
        "Via Lì à è é ì ò ù, 3",
        "É già: À È É Ì Ò Ù ’",
    ] {
        assert!(text.contains(needle), "{needle} missing in\n{text}");
    }
}

#[test]
fn pdf_cross_references_point_at_their_objects() {
    let who = addressee();
    let parts = parts("counter(2)+sms");
    let r = print();
    let mut w = PdfWriter::new(Vec::new(), &r).unwrap();
    for i in 0..3u64 {
        let m = Mailer {
            number: Some(i),
            ..mailer(&who, &parts[(i % 2) as usize])
        };
        w.add_page(&m).unwrap();
    }
    assert_eq!(w.pages(), 3);
    let pdf = w.finish().unwrap();
    let text = String::from_utf8_lossy(&pdf);
    let startxref: usize = text
        .rsplit("startxref\n")
        .next()
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(pdf[startxref..].starts_with(b"xref\n0 "));
    // The file has binary bytes (a lossy string shifts offsets): read the table as bytes.
    let table = std::str::from_utf8(&pdf[startxref..]).unwrap();
    let mut lines = table.lines().skip(1);
    let count: usize = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    // 21 shared objects (catalogue, page tree, resources, three fonts of five objects, the
    // output profile and the XMP metadata), 2 a
    // page, and for each of the two shapes (parts A and B) its two Form
    // XObjects (the static page, the body after the greeting) and its resources.
    assert_eq!(count, 21 + 2 * 3 + 2 * 3);
    assert_eq!(lines.next().unwrap(), "0000000000 65535 f ");
    for (num, line) in lines.take(count - 1).enumerate() {
        let num = num + 1;
        assert_eq!(
            line.len(),
            19,
            "entry {num}: {line:?} (20 bytes with the newline)"
        );
        let off: usize = line[..10].parse().unwrap();
        let head = format!("{num} 0 obj\n");
        assert!(
            pdf[off..].starts_with(head.as_bytes()),
            "object {num} at {off}"
        );
    }
    // poppler reads it: three pages, each with its number.
    let all = pdftotext(&pdf, &[]);
    assert_eq!(
        all.matches('\u{c}').count(),
        3,
        "three form feeds, one a page"
    );
    for n in 0..3 {
        assert!(all.contains(&format!("Plico n. {n}")), "{all}");
    }
    // Page 2 carries part B's digits, page 1 part A's.
    let page2 = pdftotext(&pdf, &["-f", "2", "-l", "2"]);
    assert!(page2.contains("680") && page2.contains("572468"), "{page2}");
    let page1 = pdftotext(&pdf, &["-f", "1", "-l", "1"]);
    assert!(
        !page1.contains("680") && !page1.contains("572468"),
        "{page1}"
    );
}

#[test]
fn print_refuses_what_it_cannot_print() {
    let parts = parts("whole");
    let who = Addressee {
        name: "Wang 王".into(),
        address: vec!["Roma".into()],
    };
    let e = print().render(&mailer(&who, &parts[0])).unwrap_err();
    assert!(
        matches!(
            e.layout(),
            Some(LayoutError::Unprintable {
                code: 0x738B,
                position: 5,
                ..
            })
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "holder name: character U+738B at position 5 cannot be printed (no glyph in the embedded fonts)"
    );
    let wide = Addressee {
        name: "M".repeat(60),
        address: vec![],
    };
    let e = print().render(&mailer(&wide, &parts[0])).unwrap_err();
    assert!(
        matches!(e.layout(), Some(LayoutError::TooWide { field }) if field == "holder name"),
        "{e}"
    );
    let tall = Addressee {
        name: "Anna".into(),
        address: vec!["riga".into(); 9],
    };
    let e = print().render(&mailer(&tall, &parts[0])).unwrap_err();
    assert!(
        matches!(
            e.layout(),
            Some(LayoutError::TooManyLines { lines: 10, .. })
        ),
        "{e}"
    );
    let r = print();
    assert!(matches!(
        PdfWriter::new(Vec::new(), &r).unwrap().finish(),
        Err(Error::NoPages)
    ));
}

fn email(part: &PartCodes) -> EmailMessage {
    let who = addressee();
    EmailRenderer::new(templates(), Issuer::default())
        .render_email(&mailer(&who, part))
        .unwrap()
}

#[test]
fn email_matches_golden() {
    let parts = parts("counter(2)+email");
    let m = email(&parts[1]);
    golden(
        "email_counter_b.txt",
        &format!("Subject: {}\n\n{}\n", m.subject, m.text.expose_secret()),
    );
    golden(
        "email_counter_b.html",
        &format!("{}\n", m.html.expose_secret()),
    );
}

#[test]
fn email_escapes_html_and_shows_no_serial() {
    let parts = self::parts("whole");
    let who = Addressee {
        name: "<b>Zoë</b> & Co".into(),
        address: vec![],
    };
    let m = EmailRenderer::new(templates(), Issuer::default())
        .render_email(&mailer(&who, &parts[0]))
        .unwrap();
    assert!(m
        .html
        .expose_secret()
        .contains("&lt;b&gt;Zoë&lt;&#x2f;b&gt; &amp; Co"));
    assert!(m.text.expose_secret().contains("<b>Zoë</b> & Co"));
    for s in [
        &m.subject[..],
        m.text.expose_secret(),
        m.html.expose_secret(),
    ] {
        assert!(!s.contains(SERIAL) && s.contains(MASKED), "{s}");
    }
    assert!(m.text.expose_secret().contains("PIN: 24680"));
    assert!(!m.subject.contains("24680"));
}

fn sms(part: &PartCodes, issuer: Issuer) -> Result<SmsMessage> {
    let who = addressee();
    SmsRenderer::new(templates(), issuer).render_sms(&mailer(&who, part))
}

#[test]
fn sms_matches_golden_and_is_gsm7() {
    let parts = parts("counter(2)+sms");
    let m = sms(&parts[1], Issuer::default()).unwrap();
    golden(
        "sms_counter_b.txt",
        &format!("{}\n", m.text.expose_secret()),
    );
    let text = m.text.expose_secret();
    assert!(text.chars().all(|c| gsm7_septets(c).is_some()), "{text}");
    assert!(m.septets <= 160, "{}", m.septets);
    assert_eq!(m.septets, text.chars().count());
    assert!(!text.contains(SERIAL) && !text.contains("8039"));
    for plan in ["whole", "counter(1)+sms", "counter(4)+remote"] {
        for p in self::parts(plan) {
            let m = sms(&p, Issuer::default()).unwrap();
            assert!(m.septets <= 160, "{plan}: {}", m.septets);
        }
    }
}

#[test]
fn sms_over_160_septets_is_refused() {
    let parts = parts("counter(2)+sms");
    let issuer = Issuer {
        name: "Azienda Sanitaria Locale della Provincia Autonoma di Città Lontana [servizi]".into(),
        ..Issuer::default()
    };
    let e = sms(&parts[1], issuer).unwrap_err();
    assert!(
        matches!(e, Error::SmsTooLong { septets } if septets > 160),
        "{e}"
    );
    assert!(!e.to_string().contains("680"));
}

#[test]
fn templates_load_overrides_from_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sms.txt"),
        "{{ issuer.name }}: PIN {{ pin }} ({{ part.name }}, cifre {{ part.pin.from }}-{{ part.pin.to }})",
    )
    .unwrap();
    std::fs::write(dir.path().join("README.md"), "not a template").unwrap();
    let t = Arc::new(Templates::load(Some(dir.path())).unwrap());
    let parts = parts("counter(2)+sms");
    let who = addressee();
    let m = SmsRenderer::new(t, Issuer::default())
        .render_sms(&mailer(&who, &parts[1]))
        .unwrap();
    assert_eq!(
        m.text.expose_secret(),
        "Regione Esempio: PIN 680 (B, cifre 3-5)"
    );

    std::fs::write(dir.path().join("sms.text.txt"), "x").unwrap();
    let e = Templates::load(Some(dir.path())).unwrap_err();
    assert!(
        e.to_string().contains("sms.text.txt: not a template name"),
        "{e}"
    );
    std::fs::remove_file(dir.path().join("sms.text.txt")).unwrap();

    std::fs::write(dir.path().join("email.txt"), "{% if %}").unwrap();
    let e = Templates::load(Some(dir.path())).unwrap_err();
    assert!(e.to_string().starts_with("template email.txt:"), "{e}");

    std::fs::write(dir.path().join("email.txt"), "{{ pin }}").unwrap();
    std::fs::write(dir.path().join("email_subject.txt"), "codice {{ pin }}").unwrap();
    let t = Arc::new(Templates::load(Some(dir.path())).unwrap());
    let e = EmailRenderer::new(t, Issuer::default())
        .render_email(&mailer(&who, &parts[1]))
        .unwrap_err();
    assert!(matches!(e, Error::CodeInSubject { .. }), "{e}");

    let missing = Templates::load(Some(&dir.path().join("nope"))).unwrap_err();
    assert!(matches!(missing, Error::TemplateDir { .. }));
}

#[test]
fn a_template_error_never_shows_a_digit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sms.txt"),
        "{{ pin }} {{ no_such_variable }}",
    )
    .unwrap();
    let t = Arc::new(Templates::load(Some(dir.path())).unwrap());
    let parts = parts("whole");
    let who = addressee();
    let e = SmsRenderer::new(t, Issuer::default())
        .render_sms(&mailer(&who, &parts[0]))
        .unwrap_err();
    let msg = format!("{e} {e:?}");
    assert!(msg.contains("sms.txt"), "{msg}");
    assert!(!msg.contains("2468") && !msg.contains("1357"), "{msg}");
}

#[test]
fn debug_of_every_type_carrying_codes_is_redacted() {
    let who = addressee();
    let c = codes().with_signature(b"97531", b"86420864").unwrap();
    let cut = Plan::Whole(None).cut(&c).unwrap();
    let m = mailer(&who, &cut[0]);
    let r = print();
    let page = r.render_page(&m).unwrap();
    let mut w = PdfWriter::new(SecretBuf::default(), &r).unwrap();
    w.append(&page).unwrap();
    let shown = [
        format!("{c:?} {:?} {:?}", c.pin, c.signature),
        format!("{cut:?} {m:?} {page:?} {w:?}"),
        format!("{:?}", r.render(&m).unwrap()),
        format!(
            "{:?}",
            EmailRenderer::new(templates(), Issuer::default())
                .render(&m)
                .unwrap()
        ),
        format!(
            "{:?}",
            SmsRenderer::new(templates(), Issuer::default())
                .render(&m)
                .unwrap()
        ),
        format!("{:?}", w.finish().unwrap()),
        format!("{m:#?}"),
    ]
    .join("\n");
    for needle in [
        "24680", "13572468", "97531", "86420864", "2468", "1357", SERIAL, "Niccolò",
    ] {
        assert!(!shown.contains(needle), "Debug leaked {needle}:\n{shown}");
    }
    assert!(shown.contains("<redacted>"));
}

// ---- Prepared pages (one layout a page shape) against the direct path ----

const PRINT_TEMPLATE: &str = include_str!("../templates/print.txt");

/// A PDF of `pages`, in order.
fn pdf_of(r: &PrintRenderer, pages: &[PageStream]) -> Vec<u8> {
    let mut w = PdfWriter::new(Vec::new(), r).unwrap();
    for p in pages {
        w.append(p).unwrap();
    }
    assert_eq!(w.pages(), pages.len());
    w.finish().unwrap()
}

/// Checks a PDF with poppler's `pdfinfo` (page count) and `qpdf --check` when installed.
fn check_pdf(pdf: &[u8], pages: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = Command::new("pdfinfo").arg(&path).output().unwrap();
    assert!(out.status.success(), "pdfinfo: {out:?}");
    let info = String::from_utf8(out.stdout).unwrap();
    let count: usize = info
        .lines()
        .find_map(|l| l.strip_prefix("Pages:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(count, pages, "{info}");
    assert!(
        String::from_utf8(out.stderr).unwrap().is_empty(),
        "pdfinfo complains"
    );
    if let Ok(out) = Command::new("qpdf").arg("--check").arg(&path).output() {
        assert!(out.status.success(), "qpdf --check: {out:?}");
    }
}

fn people() -> Vec<Addressee> {
    vec![
        addressee(),
        Addressee {
            name: "Àlfio Èrcole Ìppolito D’Òria Ùgo".into(),
            address: vec!["Via Lì, 3".into()],
        },
        Addressee {
            name: "Ada Neri".into(),
            address: vec![],
        },
        Addressee {
            name: "Maria Giuseppina Annunziata dell’Olmo".into(),
            address: vec!["Piazza (Grande) 1\\b".into(), "00100 Roma".into()],
        },
    ]
}

/// Renders every person × card (with and without a signature pair) × part of `plans` × with
/// and without a number, through `render_page` and `render_page_direct`.
fn both_ways(r: &PrintRenderer, plans: &[&str]) -> (Vec<PageStream>, Vec<PageStream>) {
    let cards = [
        codes(),
        codes().with_signature(b"97531", b"86420864").unwrap(),
    ];
    let (mut prepared, mut direct) = (Vec::new(), Vec::new());
    for who in &people() {
        for card in &cards {
            for plan in plans {
                for part in Plan::parse(plan).unwrap().cut(card).unwrap() {
                    for number in [Some(7), None, Some(123_456)] {
                        let m = Mailer {
                            number,
                            ..mailer(who, &part)
                        };
                        prepared.push(r.render_page(&m).unwrap());
                        direct.push(r.render_page_direct(&m).unwrap());
                    }
                }
            }
        }
    }
    (prepared, direct)
}

#[test]
fn prepared_pages_read_like_direct_pages() {
    // A narrow body wraps the greeting of longer names to two or three lines, which shifts
    // the body below it.
    let narrow = Layout {
        margin_right_mm: 120.0,
        body_font_size: 8.5,
        ..Layout::default()
    };
    for layout in [Layout::default(), narrow] {
        let r = PrintRenderer::new(templates(), layout.clone(), Issuer::default());
        let (prepared, direct) = both_ways(&r, &["whole", "counter(2)+sms", "counter(3)+email"]);
        assert!(prepared.iter().all(PageStream::is_prepared));
        assert!(!direct.iter().any(PageStream::is_prepared));
        let (a, b) = (pdf_of(&r, &prepared), pdf_of(&r, &direct));
        check_pdf(&a, prepared.len());
        check_pdf(&b, direct.len());
        let (ta, tb) = (pdftotext(&a, &[]), pdftotext(&b, &[]));
        assert_eq!(ta, tb, "prepared and direct pages differ");
        assert_eq!(ta.matches('\u{c}').count(), prepared.len());
        let (pa, pb) = (pdftotext(&a, &["-layout"]), pdftotext(&b, &["-layout"]));
        assert_eq!(pa, pb, "prepared and direct pages differ (layout)");
        // Prepared pages are small: the static text is in forms written once a shape.
        let largest = prepared.iter().map(PageStream::len).max().unwrap();
        let sum = |pages: &[PageStream]| pages.iter().map(PageStream::len).sum::<usize>();
        let (small, large) = (sum(&prepared), sum(&direct));
        assert!(
            largest < 8192 && large > 3 * small,
            "{largest} {small} {large}"
        );
        if layout != Layout::default() {
            let pdf = String::from_utf8_lossy(&a);
            assert!(pdf.contains(" cm /S1 Do Q"), "no shifted body");
            assert!(ta.contains("Gentile Maria Giuseppina"), "{ta}");
        }
    }
}

/// Templates from a directory holding `print.txt`.
fn print_override(source: &str) -> (tempfile::TempDir, Arc<Templates>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("print.txt"), source).unwrap();
    let t = Arc::new(Templates::load(Some(dir.path())).unwrap());
    (dir, t)
}

#[test]
fn templates_that_transform_per_mailer_values_take_the_direct_path() {
    let source = PRINT_TEMPLATE
        .replace(
            "Gentile {{ holder.name }},",
            "Gentile {{ holder.name|upper }},",
        )
        .replace(
            "Plico n. {{ number }}",
            "Plico n. {{ number }}{% if number > 100 %} (lotto grande){% endif %}",
        );
    assert_ne!(source, PRINT_TEMPLATE);
    let (_dir, t) = print_override(&source);
    let r = PrintRenderer::new(t, Layout::default(), Issuer::default());
    let who = addressee();
    let parts = parts("counter(2)+sms");
    for (number, big) in [(42, false), (142, true)] {
        let m = Mailer {
            number: Some(number),
            ..mailer(&who, &parts[0])
        };
        let page = r.render_page(&m).unwrap();
        assert!(!page.is_prepared());
        let text = pdftotext(&pdf_of(&r, &[page]), &[]);
        assert!(text.contains("Gentile NICCOLÒ D’ARAGONA,"), "{text}");
        assert_eq!(text.contains("(lotto grande)"), big, "{text}");
        assert!(text.contains("24") && text.contains("13"), "{text}");
    }
    // The unchanged template, loaded as an override, prints the values as they are: prepared.
    let plain = print_override(PRINT_TEMPLATE).1;
    let r = PrintRenderer::new(plain, Layout::default(), Issuer::default());
    assert!(r
        .render_page(&mailer(&who, &parts[0]))
        .unwrap()
        .is_prepared());
}

#[test]
fn a_long_name_that_pushes_the_body_into_the_footer_is_refused_per_mailer() {
    let greeting = "{{ holder.name }} ".repeat(20);
    let filler = "Riga di testo.\n".repeat(25);
    let source = format!(
        "[header]\n{{{{ issuer.name }}}}\n[box]\nCODICI\nPIN\t{{{{ pin }}}}\n[body]\n{greeting}\n{filler}[footer]\nPlico n. {{{{ number }}}}\n"
    );
    let (_dir, t) = print_override(&source);
    let r = PrintRenderer::new(t, Layout::default(), Issuer::default());
    let parts = parts("whole");
    let short = Addressee {
        name: "Ada Neri".into(),
        address: vec![],
    };
    let long = Addressee {
        name: "Maria Giuseppina Annunziata dell’Olmo".into(),
        address: vec![],
    };
    let ok = r.render_page(&mailer(&short, &parts[0])).unwrap();
    assert!(ok.is_prepared());
    let direct = r.render_page_direct(&mailer(&short, &parts[0])).unwrap();
    assert_eq!(
        pdftotext(&pdf_of(&r, &[ok]), &["-layout"]),
        pdftotext(&pdf_of(&r, &[direct]), &["-layout"])
    );
    for e in [
        r.render_page(&mailer(&long, &parts[0])).unwrap_err(),
        r.render_page_direct(&mailer(&long, &parts[0])).unwrap_err(),
    ] {
        assert!(
            e.to_string()
                .contains("the page is full: the body runs into the footer"),
            "{e}"
        );
    }
    // The shape is still prepared for the next mailer.
    assert!(r
        .render_page(&mailer(&short, &parts[0]))
        .unwrap()
        .is_prepared());
}

#[test]
fn values_that_could_change_the_layout_take_the_direct_path() {
    let parts = parts("whole");
    let r = print();
    for name in [" Ada", "Ada\tNeri", "[body]", "Wang 王"] {
        let who = Addressee {
            name: name.into(),
            address: vec![],
        };
        let m = mailer(&who, &parts[0]);
        match (r.render_page(&m), r.render_page_direct(&m)) {
            (Ok(a), Ok(b)) => {
                assert!(!a.is_prepared(), "{name:?}");
                assert_eq!(
                    pdftotext(&pdf_of(&r, &[a]), &[]),
                    pdftotext(&pdf_of(&r, &[b]), &[])
                );
            }
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("{name:?}: {a:?} {b:?}"),
        }
    }
}

// ---- Prepared e-mail and SMS texts (templated once a shape) against the direct path ----

const PLANS: [&str; 7] = [
    "whole",
    "mailer",
    "counter(1)+sms",
    "counter(2)+sms",
    "counter(2)+email",
    "counter(3)+remote",
    "counter(4)+email",
];

/// Names a registry holds, and names that must take the direct path (last five).
fn names() -> Vec<String> {
    let mut names: Vec<String> = [
        "Niccolò D’Aragona",
        "Giovanni D'Aragona",
        "Àlfio Èrcole Ìppolito D’Òria Ùgo",
        "Ada",
        "<b>Zoë</b> & Co \"Ltd\" / 'x'",
        "Maria  Giuseppina  (two spaces)",
        "Łukasz Żółć — 你好",
        "&amp; &#x27; &lt;",
        "{{ pin }} {% if %}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.push(format!("{} dell’Olmo", "Annunziata D'Este ".repeat(12)));
    names.extend(
        [
            " Ada",
            "Ada ",
            "",
            "Ada\tNeri",
            "Ada\u{E000}P",
            "Ada\u{E000}n",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    names
}

fn same_email(a: &Result<EmailMessage>, b: &Result<EmailMessage>, what: &str) {
    match (a, b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.subject, b.subject, "subject: {what}");
            assert_eq!(
                a.text.expose_secret(),
                b.text.expose_secret(),
                "text: {what}"
            );
            assert_eq!(
                a.html.expose_secret(),
                b.html.expose_secret(),
                "html: {what}"
            );
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{what}"),
        (a, b) => panic!("{what}: {a:?} {b:?}"),
    }
}

fn same_sms(a: &Result<SmsMessage>, b: &Result<SmsMessage>, what: &str) {
    match (a, b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.text.expose_secret(), b.text.expose_secret(), "{what}");
            assert_eq!(a.septets, b.septets, "{what}");
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{what}"),
        (a, b) => panic!("{what}: {a:?} {b:?}"),
    }
}

/// Renders every name × serial × card (with and without a signature pair) × part of
/// [`PLANS`] × number both ways with `email` and `sms`; returns how many mailers were
/// prepared and how many took the direct path.
fn compare_both_ways(email: &EmailRenderer, sms: &SmsRenderer) -> (usize, usize) {
    let cards = [
        codes(),
        codes().with_signature(b"97531", b"86420864").unwrap(),
    ];
    let (mut prepared, mut direct) = (0, 0);
    for name in names() {
        let who = Addressee {
            name,
            address: vec![],
        };
        for serial in [SERIAL, "80380001 00123456 7890", "12345678"] {
            for card in &cards {
                for plan in PLANS {
                    for part in Plan::parse(plan).unwrap().cut(card).unwrap() {
                        for number in [
                            Some(0),
                            Some(7),
                            None,
                            Some(1_234_567_890_123),
                            Some(u64::MAX),
                        ] {
                            let m = Mailer {
                                addressee: &who,
                                card_serial: serial,
                                codes: &part,
                                number,
                            };
                            let what = format!("{:?} {serial} {plan} {number:?}", who.name);
                            same_email(
                                &email.render_email(&m),
                                &email.render_email_direct(&m),
                                &what,
                            );
                            same_sms(&sms.render_sms(&m), &sms.render_sms_direct(&m), &what);
                            let p = email.is_prepared(&m);
                            assert_eq!(p, sms.is_prepared(&m), "{what}");
                            if p {
                                prepared += 1;
                            } else {
                                direct += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    (prepared, direct)
}

#[test]
fn prepared_emails_and_sms_equal_direct_ones() {
    let email = EmailRenderer::new(templates(), Issuer::default());
    let sms = SmsRenderer::new(templates(), Issuer::default());
    let (prepared, direct) = compare_both_ways(&email, &sms);
    // The built-in templates prepare every shape: only the last six names take the direct
    // path.
    let per_name = (prepared + direct) / names().len();
    assert_eq!(direct, 6 * per_name, "{prepared} {direct}");

    // Long issuer texts: SMS over 160 septets, refused the same way both ways.
    let issuer = Issuer {
        name: "Azienda Sanitaria Locale della Provincia Autonoma di Città Lontana [servizi] & <Co>"
            .into(),
        ..Issuer::default()
    };
    compare_both_ways(
        &EmailRenderer::new(templates(), issuer.clone()),
        &SmsRenderer::new(templates(), issuer),
    );
}

#[test]
fn prepared_texts_are_shared_by_threads() {
    let email = Arc::new(EmailRenderer::new(templates(), Issuer::default()));
    let sms = Arc::new(SmsRenderer::new(templates(), Issuer::default()));
    let card = codes().with_signature(b"97531", b"86420864").unwrap();
    let parts: Vec<PartCodes> = PLANS
        .iter()
        .flat_map(|p| Plan::parse(p).unwrap().cut(&card).unwrap())
        .collect();
    let who = addressee();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (email, sms, parts, who) = (email.clone(), sms.clone(), &parts, &who);
            s.spawn(move || {
                for i in 0..200 {
                    let m = Mailer {
                        number: Some(i),
                        ..mailer(who, &parts[(i as usize + t) % parts.len()])
                    };
                    assert!(email.is_prepared(&m));
                    same_email(&email.render_email(&m), &email.render_email_direct(&m), "");
                    same_sms(&sms.render_sms(&m), &sms.render_sms_direct(&m), "");
                }
            });
        }
    });
}

/// Templates from a directory holding `files`.
fn overrides(files: &[(&str, &str)]) -> (tempfile::TempDir, Arc<Templates>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, source) in files {
        std::fs::write(dir.path().join(name), source).unwrap();
    }
    let t = Arc::new(Templates::load(Some(dir.path())).unwrap());
    (dir, t)
}

#[test]
fn text_templates_that_treat_values_specially_take_the_direct_path() {
    let builtin = |name: &str| {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("templates")
                .join(name),
        )
        .unwrap()
    };
    let html = builtin("email.html");
    let text = builtin("email.txt");
    let subject = builtin("email_subject.txt");
    let sms_source = builtin("sms.txt");
    let greeting = "Gentile {{ holder.name }},";
    assert!(html.contains(greeting) && text.contains(greeting));
    let cases: Vec<(&str, String, &str)> = vec![
        // Marked safe: only a probe with HTML special characters shows it.
        (
            "email.html",
            html.replace(greeting, "Gentile {{ holder.name|safe }},"),
            "Gentile <b>Zoë</b> & Co,",
        ),
        (
            "email.txt",
            text.replace(greeting, "Gentile {{ holder.name|upper }},"),
            "Gentile <B>ZOË</B> & CO,",
        ),
        (
            "email.txt",
            text.replace(
                greeting,
                "Gentile {% if holder.name|length > 30 %}cliente{% else %}{{ holder.name }}{% endif %},",
            ),
            "Gentile <b>Zoë</b> & Co,",
        ),
        (
            "email.txt",
            text.replace(greeting, "Gentile {{ holder.name }}{% if number %} (n. {{ number }}){% endif %},"),
            "Gentile <b>Zoë</b> & Co,",
        ),
        (
            "email_subject.txt",
            subject.replace("{{ card.serial_masked }}", "{{ card.serial_last4|int + 1 }}"),
            "Regione Esempio: codici della carta 1235",
        ),
        (
            "sms.txt",
            sms_source.replace("***{{ card.serial_last4 }}", "***{{ card.serial_last4|reverse }}"),
            "carta ***4321",
        ),
    ];
    let who = Addressee {
        name: "<b>Zoë</b> & Co".into(),
        address: vec![],
    };
    let card = codes();
    for (file, source, expected) in cases {
        assert_ne!(
            source,
            builtin(file),
            "{file}: the override changes nothing"
        );
        let (_dir, t) = overrides(&[(file, &source)]);
        let email = EmailRenderer::new(t.clone(), Issuer::default());
        let sms = SmsRenderer::new(t, Issuer::default());
        for plan in ["whole", "counter(2)+email"] {
            for part in Plan::parse(plan).unwrap().cut(&card).unwrap() {
                let m = Mailer {
                    number: Some(0),
                    ..mailer(&who, &part)
                };
                let what = format!("{file} {plan}");
                let (e, s) = (email.render_email(&m), sms.render_sms(&m));
                same_email(&e, &email.render_email_direct(&m), &what);
                same_sms(&s, &sms.render_sms_direct(&m), &what);
                if file == "sms.txt" {
                    assert!(!sms.is_prepared(&m) && email.is_prepared(&m), "{what}");
                    assert!(s.unwrap().text.expose_secret().contains(expected), "{what}");
                } else {
                    assert!(!email.is_prepared(&m) && sms.is_prepared(&m), "{what}");
                    let e = e.unwrap();
                    let all = format!(
                        "{}\n{}\n{}",
                        e.subject,
                        e.text.expose_secret(),
                        e.html.expose_secret()
                    );
                    assert!(all.contains(expected), "{what}: {all}");
                }
            }
        }
    }
    // The built-in templates, loaded as overrides, print the values as they are: prepared.
    let (_dir, t) = overrides(&[
        ("email.html", &html),
        ("email.txt", &text),
        ("email_subject.txt", &subject),
        ("sms.txt", &sms_source),
    ]);
    let parts = parts("counter(2)+sms");
    let m = mailer(&who, &parts[1]);
    assert!(EmailRenderer::new(t.clone(), Issuer::default()).is_prepared(&m));
    assert!(SmsRenderer::new(t, Issuer::default()).is_prepared(&m));
}

#[test]
fn a_subject_with_a_code_is_refused_on_both_paths() {
    let (_dir, t) = overrides(&[(
        "email_subject.txt",
        "codice {{ pin }} per {{ holder.name }}",
    )]);
    let email = EmailRenderer::new(t, Issuer::default());
    let who = addressee();
    let parts = parts("whole");
    let m = mailer(&who, &parts[0]);
    for e in [email.render_email(&m), email.render_email_direct(&m)] {
        let e = e.unwrap_err();
        assert!(matches!(e, Error::CodeInSubject { .. }), "{e}");
        assert!(!format!("{e} {e:?}").contains("2468"));
    }
    assert!(!email.is_prepared(&m));
}

/// The entry instructions every split message must carry, built from the code lengths: for
/// each code, N digits of part A then the rest of part B (issue 14, item 2).
fn expected_entries(n: usize, codes: &Codes) -> Vec<String> {
    let cifre = |k: usize| format!("{k} {}", if k == 1 { "cifra" } else { "cifre" });
    let entry = |label: &str, len: usize| {
        format!(
            "per il {label} {} della parte A e poi {} della parte B ({len} in tutto)",
            cifre(n),
            cifre(len - n)
        )
    };
    let mut out = vec![entry("PIN", codes.pin.len()), entry("PUK", codes.puk.len())];
    if let Some((p, k)) = &codes.signature {
        out.push(entry("PIN di firma", p.len()));
        out.push(entry("PUK di firma", k.len()));
    }
    out
}

/// Blanks and line breaks collapsed to one space (pdftotext wraps the body's lines).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn split_instructions_follow_the_digit_ranges_for_every_plan_and_policy() {
    // CNS: PIN 5, PUK 8; CIE: 8 and 8; and a CNS card with a signature pair (6/8).
    let cns = Codes::new(b"24680", b"13572468").unwrap();
    let cie = Codes::new(b"24681357", b"97531864").unwrap();
    let sig = Codes::new(b"24680", b"13572468")
        .unwrap()
        .with_signature(b"112233", b"44556677")
        .unwrap();
    let who = addressee();
    let print = print();
    let emails = EmailRenderer::new(templates(), Issuer::default());
    let smss = SmsRenderer::new(templates(), Issuer::default());
    let mut checked = 0;
    for (policy, codes) in [("cns", &cns), ("cie", &cie), ("cns+firma", &sig)] {
        for n in 1..codes.shortest() {
            for remote in ["sms", "email", "remote"] {
                let plan = format!("counter({n})+{remote}");
                let parts = Plan::parse(&plan).unwrap().cut(codes).unwrap();
                let want = expected_entries(n, codes);
                for part in &parts {
                    let m = mailer(&who, part);
                    let what = format!("{policy} {plan} part {}", part.part.name.as_str());
                    let page = one_line(&pdftotext(&render_pdf(&print, &m), &[]));
                    let email = emails.render_email(&m).unwrap();
                    let text = one_line(email.text.expose_secret());
                    let html = one_line(email.html.expose_secret());
                    for body in [&text, &html] {
                        for w in &want {
                            assert!(body.contains(w.as_str()), "{what}: no `{w}` in {body}");
                        }
                        assert!(!body.contains("lo stesso per il PUK"), "{what}: {body}");
                    }
                    // The page, shorter: `PIN a + b, PUK a + b[, PIN di firma a + b, …]`.
                    let mut ab = vec![
                        format!("PIN {n} + {}", codes.pin.len() - n),
                        format!("PUK {n} + {}", codes.puk.len() - n),
                    ];
                    if let Some((p, k)) = &codes.signature {
                        ab.push(format!("PIN di firma {n} + {}", p.len() - n));
                        ab.push(format!("PUK di firma {n} + {}", k.len() - n));
                    }
                    let ab = format!("Cifre della parte A + della parte B: {}.", ab.join(", "));
                    assert!(page.contains(&ab), "{what}: no `{ab}` in {page}");
                    assert!(!page.contains("lo stesso per il PUK"), "{what}: {page}");
                    // The SMS: `PIN a+b, PUK a+b[, firma a+b/a+b]`, for the part that may go
                    // by SMS (B) whenever it fits one message.
                    if part.part.name.as_str() == "B" {
                        if let Ok(sms) = smss.render_sms(&m) {
                            let mut counts = format!(
                                "PIN {n}+{}, PUK {n}+{}",
                                codes.pin.len() - n,
                                codes.puk.len() - n
                            );
                            if let Some((p, k)) = &codes.signature {
                                counts.push_str(&format!(
                                    ", firma {n}+{}/{n}+{}",
                                    p.len() - n,
                                    k.len() - n
                                ));
                            }
                            let body = sms.text.expose_secret();
                            assert!(body.contains(&counts), "{what}: no `{counts}` in {body}");
                            checked += 1;
                        } else {
                            assert!(codes.signature.is_some(), "{what}: sms refused");
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 0);
}

/// Output of a poppler tool on a PDF.
fn poppler(tool: &str, pdf: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("m.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = Command::new(tool).arg(&path).output().unwrap_or_else(|e| {
        panic!("{tool} (poppler-utils) cannot run ({e}): run `bash scripts/test.sh`")
    });
    assert!(out.status.success(), "{tool} failed on our PDF: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn names_of_every_alphabet_the_registry_accepts_print_with_embedded_fonts() {
    let names = [
        "Ștefan Popescu",
        "Łukasz Wróbel-Żąć",
        "Γιώργος Παπαδόπουλος",
        "Ольга Иванова",
        "Nguyễn Thị Minh Khai",
        "Þórunn Ægisdóttir",
    ];
    let parts = parts("counter(2)+sms");
    let r = print();
    let mut w = PdfWriter::new(Vec::new(), &r).unwrap();
    for name in names {
        let who = Addressee {
            name: name.into(),
            address: vec!["Strada Mărășești 12".into(), "ул. Тверская, 7".into()],
        };
        // The prepared path carries them (the name is also in the greeting).
        let page = r.render_page(&mailer(&who, &parts[0])).unwrap();
        assert!(page.is_prepared(), "{name}");
        w.append(&page).unwrap();
    }
    let pdf = w.finish().unwrap();
    let text = pdftotext(&pdf, &[]);
    for name in names {
        assert!(text.contains(name), "{name} missing in\n{text}");
        assert!(text.contains(&format!("Gentile {name},")), "{name}: {text}");
    }
    assert!(text.contains("Strada Mărășești 12") && text.contains("ул. Тверская, 7"));
    // Every font is embedded (a subset), none is a base-14 font.
    let fonts = poppler("pdffonts", &pdf);
    let rows: Vec<&str> = fonts.lines().skip(2).collect();
    assert_eq!(rows.len(), 3, "{fonts}");
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert!(cols[0].contains("+DejaVuSans"), "{fonts}");
        assert_eq!(cols[1..4], ["CID", "TrueType", "Identity-H"], "{fonts}");
        assert_eq!(cols[4..7], ["yes", "yes", "yes"], "emb sub uni: {fonts}");
    }
}

#[test]
fn a_long_address_line_wraps_in_the_window() {
    let parts = parts("whole");
    let who = Addressee {
        name: "Anna Neri".into(),
        address: vec![
            "Contrada Santa Maria delle Grazie di Sotto, Lotto 14, Scala B".into(),
            "90100 Palermo PA".into(),
        ],
    };
    let text = pdftotext(
        &render_pdf(&print(), &mailer(&who, &parts[0])),
        &["-layout"],
    );
    let line = text
        .lines()
        .find(|l| l.contains("Contrada"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(!line.contains("Scala B"), "not wrapped: {line}");
    assert!(text.contains("Scala B"), "{text}");
}

/// Runs a command on a file; its stdout.
fn run_tool(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?} cannot run ({e}): run `bash scripts/test.sh`, which installs it")
    });
    assert!(out.status.success(), "{cmd:?} failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The Data Matrix of the page's top right corner, as `dmtxread` reads it from a 200 dpi
/// image of the page.
fn scan_data_matrix(pdf: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.pdf");
    std::fs::write(&path, pdf).unwrap();
    // The corner only (x 140–210 mm, y 0–45 mm): a whole page takes dmtxread much longer.
    run_tool(
        Command::new("pdftoppm")
            .args(["-r", "200", "-png", "-singlefile", "-f", "1", "-l", "1"])
            .args(["-x", "1100", "-y", "0", "-W", "554", "-H", "360"])
            .arg(&path)
            .arg(dir.path().join("corner")),
    );
    run_tool(
        Command::new("dmtxread")
            .args(["-n", "-N", "1", "-m", "5000"])
            .arg(dir.path().join("corner.png")),
    )
}

#[test]
fn every_page_carries_its_code_omr_marks_date_batch_and_the_opened_envelope_line() {
    let r = print().with_run(dispatch::render::marks::RunMarks {
        batch: "B2026-12".into(),
        date: "2026-12-07".into(),
    });
    let who = addressee();
    let parts = parts("whole");
    for (number, omr_marks) in [(42u64, 4usize), (43, 6)] {
        let m = Mailer {
            number: Some(number),
            ..mailer(&who, &parts[0])
        };
        let pdf = render_pdf(&r, &m);
        assert_eq!(
            scan_data_matrix(&pdf).trim_end(),
            format!("PLICO;{number};8039********1234")
        );
        let text = pdftotext(&pdf, &[]);
        assert!(
            text.contains("Stampato il 2026-12-07 · Lotto B2026-12 · pag. 1/1"),
            "{text}"
        );
        assert!(text.contains("Busta aperta o danneggiata?"), "{text}");
        assert!(text.contains("Envelope opened or damaged?"), "{text}");
        // The OMR track: start, end of collation, page count 1, the sequence bits of the
        // number (42: 2 → one bit; 43: 3 → two bits), and the parity mark of an odd count.
        let stream = String::from_utf8_lossy(&pdf);
        let track = stream
            .split(" w 0 G 0 J\n")
            .nth(1)
            .and_then(|rest| rest.split("S Q").next())
            .unwrap();
        assert_eq!(track.matches(" l\n").count(), omr_marks, "{track}");
    }
    // The counter's page (no number, no run) says so in its code and its line.
    let pdf = render_pdf(&print(), &mailer(&who, &parts[0]));
    let text = pdftotext(&pdf, &[]);
    assert!(text.contains("· Sportello · pag. 1/1"), "{text}");
}

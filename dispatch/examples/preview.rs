//! Renders sample mailers with made-up codes, for looking at a layout or template change:
//!
//! ```text
//! cargo run -p dispatch --example preview -- OUT.pdf [TEMPLATE_DIR]
//! ```
//!
//! Writes a PDF with the part A and part B pages of a `counter(2)+sms` plan and a `whole`
//! page, and prints the e-mail and SMS of part B.

use dispatch::*;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args.next().ok_or("usage: preview OUT.pdf [TEMPLATE_DIR]")?;
    let dir = args.next();
    let templates = Arc::new(Templates::load(dir.as_deref().map(std::path::Path::new))?);
    let issuer = Issuer::default();
    let print = PrintRenderer::new(templates.clone(), Layout::default(), issuer.clone());
    let who = Addressee {
        name: "Niccolò D’Aragona".into(),
        address: vec!["Via Città di Castello, 12".into(), "00136 Roma RM".into()],
    };
    // Sample codes, not a real card's.
    let codes = Codes::new(b"24680", b"13572468")?.with_signature(b"97531", b"86420864")?;
    let mut parts = Plan::parse("counter(2)+sms")?.cut(&codes)?;
    parts.extend(Plan::Whole.cut(&codes)?);
    let mut pdf = PdfWriter::new(std::fs::File::create(&out)?, &print)?;
    for (i, part) in parts.iter().enumerate() {
        pdf.add_page(&Mailer {
            addressee: &who,
            card_serial: "8039123456781234",
            codes: part,
            number: Some(i as u64 + 1),
        })?;
    }
    pdf.finish()?;
    let b = Mailer {
        addressee: &who,
        card_serial: "8039123456781234",
        codes: &parts[1],
        number: None,
    };
    let email = EmailRenderer::new(templates.clone(), issuer.clone()).render_email(&b)?;
    println!(
        "Subject: {}\n\n{}",
        email.subject,
        email.text.expose_secret()
    );
    let sms = SmsRenderer::new(templates, issuer).render_sms(&b)?;
    println!(
        "\nSMS ({} septets): {}",
        sms.septets,
        sms.text.expose_secret()
    );
    Ok(())
}

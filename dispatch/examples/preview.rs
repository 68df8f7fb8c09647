//! Renders sample mailers with the built-in templates (or `PLICO_TEMPLATES_DIR`) into a clear
//! PDF, to look at a layout or a template change: `cargo run -p dispatch --example preview --
//! out.pdf`. Sample data only: never point it at real codes.

use dispatch::*;
use std::sync::Arc;

fn main() -> Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "preview.pdf".into());
    let dir = std::env::var_os("PLICO_TEMPLATES_DIR");
    let templates = Arc::new(Templates::load(dir.as_deref().map(std::path::Path::new))?);
    let renderer = PrintRenderer::new(templates, Layout::default(), Issuer::default());
    let addressee = Addressee {
        name: "Niccolò D’Aragona".into(),
        address: vec!["Via Giuseppe Verdi 12".into(), "00185 Roma RM".into()],
    };
    let codes = Codes::new(b"48213", b"90517364")?;
    let mut pdf = PdfWriter::new(std::fs::File::create(&out)?, &renderer)?;
    for (plan, number) in [("whole", Some(1042)), ("counter(2)+sms", None)] {
        let part = Plan::parse(plan)?.cut(&codes)?.remove(0);
        pdf.add_page(&Mailer {
            addressee: &addressee,
            card_serial: "80380000000000012345",
            codes: &part,
            number,
        })?;
    }
    pdf.finish()?;
    eprintln!("wrote {out}");
    Ok(())
}

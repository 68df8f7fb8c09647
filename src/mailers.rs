//! Bulk print runs and the counter's page: where the vault's codes meet the renderers.
//!
//! This is the one place where a card's codes cross from `vault` ([`vault::codes::CardCodes`])
//! to `dispatch` ([`dispatch::Codes`]), for print:
//!
//! - [`print`] runs a [`PrintJob`] through a sealed [`PrintRun`]: the job yields the selected
//!   cards with their codes and mailer numbers, rayon renders them, the run seals each print
//!   file to the print facility, and each file is recorded in the vault (its mailers and one
//!   audit event) before its manifest is written;
//! - [`counter_page`] renders the part A page of one card for the counter (one PDF, in memory).
//!
//! Both run on the calling thread (and the rayon pool): call them from `spawn_blocking`.

use dispatch::bulk::{BoxError, Manifest, OwnedMailer, PrintRun, PrintedFile};
use dispatch::{
    Addressee, Codes, Issuer, Layout, Mailer, Plan, PrintRenderer, Rendered, Renderer, SecretBuf,
    Templates,
};
use std::path::PathBuf;
use std::sync::Arc;
use vault::audit::AuditLog;
use vault::cms::date::Date;
use vault::cms::mailers::{MailerItem, RecordedFile};
use vault::cms::{PrintJob, PrintRunRecord};
use vault::codes::CardCodes;
use vault::Hsm;

/// How print files are made: renderer settings, where they go, whom they are sealed to.
#[derive(Debug, Clone)]
pub struct PrintSetup {
    /// The print templates (built-in or overridden).
    pub templates: Arc<Templates>,
    /// Page layout.
    pub layout: Layout,
    /// Issuer texts.
    pub issuer: Issuer,
    /// Directory the sealed files and manifests are written to.
    pub out_dir: PathBuf,
    /// The print facility's age recipients (`age1…`).
    pub recipients: Vec<String>,
    /// Mailers a print file.
    pub per_file: usize,
}

impl PrintSetup {
    /// Creates the output directory (mode 0700) if it is missing.
    ///
    /// # Errors
    /// [`vault::Error::Storage`] naming the directory.
    pub fn create_out_dir(&self) -> vault::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        if self.out_dir.is_dir() {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.out_dir)
            .map_err(|e| {
                vault::Error::Storage(format!(
                    "print output directory {}: {e}",
                    self.out_dir.display()
                ))
            })
    }

    /// A renderer for these settings.
    pub fn renderer(&self) -> PrintRenderer {
        PrintRenderer::new(
            self.templates.clone(),
            self.layout.clone(),
            self.issuer.clone(),
        )
    }
}

/// A card's codes as the renderers take them.
///
/// # Errors
/// A code that is not 1 to 16 digits (cannot happen for a record the vault wrote).
pub fn to_dispatch(codes: &CardCodes) -> dispatch::Result<Codes> {
    let c = Codes::new(codes.pin.expose_secret(), codes.puk.expose_secret())?;
    match &codes.signature {
        Some((p, k)) => c.with_signature(p.expose_secret(), k.expose_secret()),
        None => Ok(c),
    }
}

/// The part of `plan` named `part` (`whole`, `A` or `B`) of these codes.
fn cut(plan: &Plan, part: &str, codes: &Codes) -> dispatch::Result<dispatch::PartCodes> {
    let parts = plan.cut(codes)?;
    let wanted = part.to_ascii_lowercase();
    parts
        .into_iter()
        .find(|p| p.part.name.as_str().eq_ignore_ascii_case(&wanted))
        .ok_or(dispatch::Error::PartRange {
            part: "requested",
            field: "part name",
        })
}

fn owned(item: MailerItem, plan: &Plan, part: &str) -> Result<OwnedMailer, BoxError> {
    let codes = to_dispatch(&item.codes)?;
    Ok(OwnedMailer {
        addressee: Addressee {
            name: item.name,
            address: item.address,
        },
        codes: cut(plan, part, &codes)?,
        card_serial: item.serial,
        number: item.number,
    })
}

/// Runs `job` to its end: renders, seals and records every print file, then closes the run
/// (`done`, or `failed` with the first error). Returns the run record and the manifests.
///
/// # Errors
/// Only when the run cannot even be closed (store or audit failure); a failed print is a
/// `failed` run record, with the files completed before the failure recorded.
#[allow(clippy::too_many_arguments)]
pub fn print(
    hsm: &dyn Hsm,
    audit: &AuditLog,
    job: PrintJob<'_>,
    setup: &PrintSetup,
    plan: &Plan,
    part: &str,
    today: Date,
    progress: &(dyn Fn(u64) + Sync),
) -> vault::Result<(PrintRunRecord, Vec<Manifest>)> {
    let outcome = (|| -> Result<Vec<Manifest>, String> {
        let run = PrintRun::new(
            setup.renderer(),
            &setup.recipients,
            &setup.out_dir,
            job.label(),
        )
        .map_err(|e| e.to_string())?
        .per_file(setup.per_file);
        let items = job.mailers(hsm, today).map_err(|e| e.to_string())?;
        let mailers = items.map(|item| {
            item.map_err(BoxError::from)
                .and_then(|m| owned(m, plan, part))
        });
        let on_file = |file: &PrintedFile<'_>| -> Result<(), BoxError> {
            job.record_file(
                audit,
                &RecordedFile {
                    name: &file.manifest.file,
                    numbers: file.numbers,
                    serials: file.serials,
                    sha256_clear_pdf: &file.manifest.sha256_clear_pdf,
                    sealed_bytes: file.manifest.sealed_bytes,
                },
            )
            .map_err(BoxError::from)
        };
        // A mailer the page cannot carry is set aside (listed in the run record), not a failure.
        let on_set_aside = |m: &dispatch::bulk::SetAside| -> Result<(), BoxError> {
            job.set_aside(&m.serial, m.number, &m.reason.to_string());
            Ok(())
        };
        run.run_recorded(mailers, progress, &on_file, &on_set_aside)
            .map_err(|e| e.to_string())
    })();
    match outcome {
        Ok(manifests) => Ok((job.finish(audit, None)?, manifests)),
        Err(e) => Ok((job.finish(audit, Some(e))?, Vec::new())),
    }
}

/// The one-page PDF of part `part` of `plan` for one card (no mailer number): for the counter.
/// The caller gets the codes through [`vault::cms::Cms::release_codes`], which audits.
///
/// # Errors
/// A plan that does not fit the card's codes, a name or address the page cannot carry.
pub fn counter_page(
    setup: &PrintSetup,
    addressee: &Addressee,
    serial: &str,
    codes: &CardCodes,
    plan: &Plan,
    part: &str,
) -> dispatch::Result<SecretBuf> {
    let codes = to_dispatch(codes)?;
    let part = cut(plan, part, &codes)?;
    let mailer = Mailer {
        addressee,
        card_serial: serial,
        codes: &part,
        number: None,
    };
    match setup.renderer().render(&mailer)? {
        Rendered::Pdf(pdf) => Ok(pdf),
        _ => Err(dispatch::Error::NoPages),
    }
}

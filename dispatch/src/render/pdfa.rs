//! What makes a print file PDF/A-2b (ISO 19005-2, level B): the parts of the file that are
//! about the file rather than the pages.
//!
//! - **Output intent**: the catalogue's `/OutputIntents` holds one `GTS_PDFA1` intent whose
//!   `DestOutputProfile` is an embedded sRGB ICC profile (version 2.3, 6.9 KB, vendored in
//!   `dispatch/icc/` with its licence). Pages paint in DeviceGray only, which PDF/A-2 allows
//!   once a file has an output intent.
//! - **Metadata**: an XMP packet (unfiltered `/Metadata` stream of the catalogue) that
//!   declares `pdfaid:part` 2 and `pdfaid:conformance` B, with the creation, modification and
//!   metadata dates (one instant, UTC), the title, the creator tool and the producer. The file
//!   has **no Info dictionary**, so there is nothing for the XMP to disagree with.
//! - **Document ID**: the trailer's `/ID`, two equal 16-byte strings (a new file, never
//!   modified), from a SHA-256 of the creation instant, the process, a per-process counter and
//!   the file's shape, so two files never share one.
//!
//! The rest of PDF/A-2b is in how [`super::pdf::PdfWriter`] writes every file: a `%PDF-1.7`
//! header with a binary comment line, every font embedded (subset TrueType, `Identity-H`,
//! widths from the font's own `hmtx`, glyph 0 never drawn), no transparency (no soft mask,
//! alpha or blend mode), no filter other than `ASCIIHexDecode` (the Data Matrix's inline
//! image), no encryption in the file (the print file is sealed outside, by age), exact stream
//! lengths, a classic cross-reference table.
//!
//! veraPDF, the reference validator, is not packaged for Debian and cannot be installed here;
//! the tests check the file with `qpdf --check`, `pdffonts` and qpdf's JSON view of the
//! objects (header, XMP, output intent and its profile, trailer `/ID`, no transparency keys).

use crate::render::marks::civil_date;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The embedded sRGB profile (ICC v2.3, colour space `RGB `, device class `mntr`).
pub(crate) const SRGB_ICC: &[u8] = include_bytes!("../../icc/sRGB.icc");

/// The file header: PDF 1.7 (the base of PDF/A-2), then a comment of four bytes above 127 so
/// that transfer tools treat the file as binary.
pub(crate) const HEADER: &[u8] = b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n";

/// The body of the output profile's stream object (`/N 3`: an RGB profile).
pub(crate) fn output_profile_object() -> Vec<u8> {
    let mut body = format!("<< /N 3 /Length {} >>\nstream\n", SRGB_ICC.len()).into_bytes();
    body.extend_from_slice(SRGB_ICC);
    body.extend_from_slice(b"\nendstream");
    body
}

/// The catalogue's `/OutputIntents` entry, the profile being object `profile`.
pub(crate) fn output_intents(profile: usize) -> String {
    format!(
        "/OutputIntents [<< /Type /OutputIntent /S /GTS_PDFA1 \
         /OutputConditionIdentifier (sRGB IEC61966-2.1) /Info (sRGB IEC61966-2.1) \
         /RegistryName (http://www.color.org) /DestOutputProfile {profile} 0 R >>]"
    )
}

/// The instant a file is created, as XMP writes it (`2026-12-07T07:05:11Z`), and the
/// nanoseconds since the epoch (for the document ID).
pub(crate) fn created_now() -> (String, u128) {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (xmp_date(since.as_secs()), since.as_nanos())
}

/// `secs` since the epoch as an XMP date (ISO 8601, UTC).
fn xmp_date(secs: u64) -> String {
    let day = secs % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        civil_date((secs / 86_400) as i64),
        day / 3600,
        day / 60 % 60,
        day % 60
    )
}

/// Escapes `s` for XML text.
fn xml_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The body of the metadata stream object: the XMP packet of a file titled `title`, created
/// at `created` (an XMP date). Unfiltered, as PDF/A requires.
pub(crate) fn metadata_object(title: &str, created: &str) -> Vec<u8> {
    let version = env!("CARGO_PKG_VERSION");
    let title = xml_text(title);
    let xmp = format!(
        "<?xpacket begin=\"\u{FEFF}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\n\
<x:xmpmeta xmlns:x=\"adobe:ns:meta/\">\n\
 <rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\n\
  <rdf:Description rdf:about=\"\" xmlns:pdfaid=\"http://www.aiim.org/pdfa/ns/id/\">\n\
   <pdfaid:part>2</pdfaid:part>\n\
   <pdfaid:conformance>B</pdfaid:conformance>\n\
  </rdf:Description>\n\
  <rdf:Description rdf:about=\"\" xmlns:dc=\"http://purl.org/dc/elements/1.1/\">\n\
   <dc:format>application/pdf</dc:format>\n\
   <dc:title><rdf:Alt><rdf:li xml:lang=\"x-default\">{title}</rdf:li></rdf:Alt></dc:title>\n\
  </rdf:Description>\n\
  <rdf:Description rdf:about=\"\" xmlns:xmp=\"http://ns.adobe.com/xap/1.0/\">\n\
   <xmp:CreateDate>{created}</xmp:CreateDate>\n\
   <xmp:ModifyDate>{created}</xmp:ModifyDate>\n\
   <xmp:MetadataDate>{created}</xmp:MetadataDate>\n\
   <xmp:CreatorTool>plico</xmp:CreatorTool>\n\
  </rdf:Description>\n\
  <rdf:Description rdf:about=\"\" xmlns:pdf=\"http://ns.adobe.com/pdf/1.3/\">\n\
   <pdf:Producer>plico dispatch {version}</pdf:Producer>\n\
  </rdf:Description>\n\
 </rdf:RDF>\n\
</x:xmpmeta>\n\
<?xpacket end=\"r\"?>"
    );
    let mut body = format!(
        "<< /Type /Metadata /Subtype /XML /Length {} >>\nstream\n",
        xmp.len()
    )
    .into_bytes();
    body.extend_from_slice(xmp.as_bytes());
    body.extend_from_slice(b"\nendstream");
    body
}

/// The trailer's `/ID` array for a file created at `nanos` with `objects` objects and
/// `bytes` bytes before its cross-reference table: two equal hex strings of 16 bytes.
pub(crate) fn document_id(nanos: u128, objects: usize, bytes: u64) -> String {
    static FILES: AtomicU64 = AtomicU64::new(0);
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"plico print file id\0");
    ctx.update(&nanos.to_le_bytes());
    ctx.update(&std::process::id().to_le_bytes());
    ctx.update(&FILES.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    ctx.update(&(objects as u64).to_le_bytes());
    ctx.update(&bytes.to_le_bytes());
    let digest = ctx.finish();
    let id = hex::encode_upper(&digest.as_ref()[..16]);
    format!("/ID [<{id}> <{id}>]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_is_an_rgb_display_profile_of_icc_version_2_or_4() {
        assert_eq!(&SRGB_ICC[36..40], b"acsp");
        assert_eq!(&SRGB_ICC[12..16], b"mntr");
        assert_eq!(&SRGB_ICC[16..20], b"RGB ");
        assert!(matches!(SRGB_ICC[8], 2 | 4), "{}", SRGB_ICC[8]);
        let declared = u32::from_be_bytes([SRGB_ICC[0], SRGB_ICC[1], SRGB_ICC[2], SRGB_ICC[3]]);
        assert_eq!(declared as usize, SRGB_ICC.len());
    }

    #[test]
    fn xmp_dates_and_text() {
        assert_eq!(xmp_date(0), "1970-01-01T00:00:00Z");
        assert_eq!(xmp_date(1_796_612_773), "2026-12-07T03:06:13Z");
        assert_eq!(xml_text("a<b>&c\u{7}"), "a&lt;b&gt;&amp;c");
        let (now, nanos) = created_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(nanos > 0);
    }

    #[test]
    fn the_metadata_declares_pdfa_2b_and_its_length() {
        let body = metadata_object("Lotto <x>", "2026-12-07T03:06:13Z");
        let text = String::from_utf8(body).unwrap();
        let (dict, rest) = text.split_once("\nstream\n").unwrap();
        let xmp = rest.strip_suffix("\nendstream").unwrap();
        assert_eq!(
            dict,
            format!("<< /Type /Metadata /Subtype /XML /Length {} >>", xmp.len())
        );
        assert!(xmp.contains("<pdfaid:part>2</pdfaid:part>"));
        assert!(xmp.contains("<pdfaid:conformance>B</pdfaid:conformance>"));
        assert!(xmp.contains("Lotto &lt;x&gt;"));
        assert_eq!(xmp.matches("2026-12-07T03:06:13Z").count(), 3);
    }

    #[test]
    fn document_ids_differ_between_files() {
        let a = document_id(1, 10, 100);
        let b = document_id(1, 10, 100);
        assert_ne!(a, b);
        assert_eq!(a.len(), "/ID [<> <>]".len() + 64);
    }
}

//! The print renderer: PDF mailers, one A4 page each, written without a PDF library.
//!
//! ## Page
//!
//! The `print.txt` template is rendered and cut into sections by marker lines:
//!
//! - `[header]`: issuer lines at the top left (the first in bold), e.g. the masked serial;
//! - `[box]`: the marked code box: the first line is its title (bold); a line
//!   `label<TAB>value` prints the label in Helvetica and the value (the digits) in Courier
//!   bold; a blank line adds half a line of space;
//! - `[body]`: instructions, each line a paragraph wrapped to the page width, a blank line
//!   adds the paragraph gap;
//! - `[footer]`: small lines at the bottom of the page.
//!
//! The holder's name and address are not templated: they are printed in the envelope window
//! ([`Layout`]), and an address that does not fit the window is an error, not a clipped line.
//!
//! ## File
//!
//! [`PdfWriter`] streams pages: the header and the shared font objects first, then each page's
//! object and content stream as it comes, and at [`PdfWriter::finish`] the page tree, the
//! catalogue, the cross-reference table and the trailer. It keeps only 16 bytes a page (two
//! object offsets), so a print file of 10,000 mailers never sits whole in memory (unless the
//! sink is a `Vec`). Fonts are the standard Type 1 Helvetica, Helvetica-Bold and Courier-Bold
//! with `WinAnsiEncoding`, which covers Italian accented letters and typographic quotes; a
//! character outside WinAnsi is an error naming the field and position.
//!
//! Content streams are **not compressed**: compression would cost more time than it saves in
//! a file that is sealed (encrypted) right after, and the page stream stays greppable in
//! tests. The whole page stream is built in a [`SecretBuf`] (a `Zeroizing<Vec<u8>>` that wipes
//! on growth), written to the sink in one `write_all`, and wiped when the page is dropped.
//!
//! Rendering a page ([`PrintRenderer::render_page`]) and appending it ([`PdfWriter::append`])
//! are separate steps, so that bulk runs can render pages on rayon workers and append them in
//! order on one thread.

use crate::error::{Error, Result};
use crate::render::layout::{pt, Layout};
use crate::render::templates::{Issuer, Templates, PRINT};
use crate::render::winansi::{encode, text_width};
use crate::render::{Mailer, Rendered, Renderer};
use crate::secret::{SecretBuf, SecretText};
use std::fmt;
use std::io::Write;
use std::sync::Arc;

/// Object numbers: 1 catalogue, 2 page tree (both written last), 3–5 fonts, 6 resources,
/// then a page object and its content stream for each page.
const CATALOG: usize = 1;
const PAGES: usize = 2;
const RESOURCES: usize = 6;
const FIRST_PAGE: usize = 7;

const FONTS: [(usize, &str); 3] = [(3, "Helvetica"), (4, "Helvetica-Bold"), (5, "Courier-Bold")];

#[derive(Clone, Copy)]
enum Font {
    Regular,
    Bold,
    Code,
}

impl Font {
    fn name(self) -> &'static str {
        match self {
            Font::Regular => "/F1",
            Font::Bold => "/F2",
            Font::Code => "/F3",
        }
    }
}

/// The print renderer: templates, layout and issuer texts shared by every page.
#[derive(Debug, Clone)]
pub struct PrintRenderer {
    templates: Arc<Templates>,
    layout: Layout,
    issuer: Issuer,
}

/// One rendered page's content stream, digits included.
///
/// # Security
/// Held in a [`SecretBuf`]: wiped on drop; `Debug` shows the length only.
#[derive(Debug)]
pub struct PageStream(SecretBuf);

impl PageStream {
    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty stream (never for a rendered page).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PrintRenderer {
    /// A print renderer with these templates, layout and issuer texts.
    pub fn new(templates: Arc<Templates>, layout: Layout, issuer: Issuer) -> PrintRenderer {
        PrintRenderer {
            templates,
            layout,
            issuer,
        }
    }

    /// The layout in use.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Renders one page's content stream.
    ///
    /// # Errors
    /// [`Error::Template`], [`Error::Unprintable`] for a character outside WinAnsi,
    /// [`Error::Address`] for an address that does not fit the window or a page that overflows.
    ///
    /// # Security
    /// The stream holds the digits; it is wiped when dropped.
    pub fn render_page(&self, mailer: &Mailer<'_>) -> Result<PageStream> {
        let text = self.templates.render(PRINT, mailer, &self.issuer)?;
        let sections = Sections::parse(&text)?;
        let mut page = PageBuilder {
            buf: SecretBuf::with_capacity(4096),
            l: &self.layout,
            height: pt(self.layout.page_height_mm),
        };
        page.fold_marks()?;
        page.header(&sections.header)?;
        page.address(mailer)?;
        let box_bottom = page.code_box(&sections.code_box)?;
        let body_bottom = page.body(&sections.body, box_bottom)?;
        page.footer(&sections.footer, body_bottom)?;
        Ok(PageStream(page.buf))
    }

    /// Starts a PDF file on `out`.
    ///
    /// # Errors
    /// [`Error::Io`] if the sink fails.
    pub fn writer<W: Write>(&self, out: W) -> Result<PdfWriter<'_, W>> {
        PdfWriter::new(out, self)
    }
}

impl Renderer for PrintRenderer {
    fn channel(&self) -> &'static str {
        "print"
    }

    /// A one-page PDF document (e.g. the counter's part A page).
    fn render(&self, mailer: &Mailer<'_>) -> Result<Rendered> {
        let page = self.render_page(mailer)?;
        let mut w = PdfWriter::new(SecretBuf::with_capacity(page.len() + 2048), self)?;
        w.append(&page)?;
        Ok(Rendered::Pdf(w.finish()?))
    }
}

/// The lines of each section of the rendered print template (slices of the secret text).
struct Sections<'t> {
    header: Vec<&'t str>,
    code_box: Vec<&'t str>,
    body: Vec<&'t str>,
    footer: Vec<&'t str>,
}

impl<'t> Sections<'t> {
    fn parse(text: &'t SecretText) -> Result<Sections<'t>> {
        let mut s = Sections {
            header: Vec::new(),
            code_box: Vec::new(),
            body: Vec::new(),
            footer: Vec::new(),
        };
        let mut current: Option<&mut Vec<&'t str>> = None;
        for (n, line) in text.expose_secret().lines().enumerate() {
            let line = line.trim_end();
            match line {
                "[header]" => current = Some(&mut s.header),
                "[box]" => current = Some(&mut s.code_box),
                "[body]" => current = Some(&mut s.body),
                "[footer]" => current = Some(&mut s.footer),
                _ => match current.as_mut() {
                    Some(section) => section.push(line),
                    None if line.trim().is_empty() => {}
                    None => {
                        return Err(Error::Template {
                            name: PRINT.into(),
                            detail: format!(
                                "output line {} is outside a [header], [box], [body] or [footer] section",
                                n + 1
                            ),
                        })
                    }
                },
            }
        }
        // Leading and trailing blank lines of a section are template whitespace, not layout.
        for v in [&mut s.header, &mut s.code_box, &mut s.body, &mut s.footer] {
            while v.last().is_some_and(|l| l.trim().is_empty()) {
                v.pop();
            }
            let lead = v.iter().take_while(|l| l.trim().is_empty()).count();
            v.drain(..lead);
        }
        Ok(s)
    }
}

struct PageBuilder<'l> {
    buf: SecretBuf,
    l: &'l Layout,
    /// Page height in points (PDF y grows upwards; the layout measures from the top).
    height: f32,
}

/// A number written into a content stream with two decimals, by integer formatting: the
/// float formatting machinery was a sixth of the time of a page.
#[derive(Clone, Copy)]
struct N2(f32);

impl std::fmt::Display for N2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hundredths = (f64::from(self.0) * 100.0).round() as i64;
        let sign = if hundredths < 0 { "-" } else { "" };
        let v = hundredths.unsigned_abs();
        write!(f, "{sign}{}.{:02}", v / 100, v % 100)
    }
}

impl PageBuilder<'_> {
    /// Prints `s` with its baseline `top` points below the top of the page.
    fn text(
        &mut self,
        font: Font,
        size: f32,
        x: f32,
        top: f32,
        s: &str,
        field: &str,
    ) -> Result<()> {
        let y = self.height - top;
        write!(
            self.buf,
            "BT {} {} Tf {} {} Td (",
            font.name(),
            N2(size),
            N2(x),
            N2(y)
        )?;
        for (position, c) in s.chars().enumerate() {
            let b = encode(c).ok_or_else(|| Error::Unprintable {
                field: field.to_owned(),
                code: u32::from(c),
                position,
            })?;
            if matches!(b, b'(' | b')' | b'\\') {
                self.buf.push(b'\\');
            }
            self.buf.push(b);
        }
        self.buf.extend(b") Tj ET\n");
        Ok(())
    }

    fn fold_marks(&mut self) -> Result<()> {
        if !self.l.fold_marks {
            return Ok(());
        }
        let panel = self.l.page_height_mm / 3.0;
        for k in [1.0, 2.0] {
            let y = N2(self.height - pt(panel * k));
            writeln!(self.buf, "q 0.5 w 0 G 0 {y} m {} {y} l S Q", N2(pt(6.0)))?;
        }
        Ok(())
    }

    fn header(&mut self, lines: &[&str]) -> Result<()> {
        let l = self.l;
        let x = pt(l.margin_left_mm);
        let mut top = pt(l.header_top_mm);
        for (i, line) in lines.iter().enumerate() {
            let (font, size) = if i == 0 {
                (Font::Bold, l.header_title_size)
            } else {
                (Font::Regular, l.header_font_size)
            };
            top += size;
            self.text(font, size, x, top, line, "template print.txt [header]")?;
            top += size * (l.line_height - 1.0);
        }
        Ok(())
    }

    fn address(&mut self, mailer: &Mailer<'_>) -> Result<()> {
        let l = self.l;
        let size = l.address_font_size;
        let width = pt(l.window_width_mm - 2.0 * l.window_inset_mm);
        let room = pt(l.window_height_mm - 2.0 * l.window_inset_mm);
        let lines = std::iter::once(mailer.addressee.name.as_str())
            .chain(mailer.addressee.address.iter().map(String::as_str));
        let count = 1 + mailer.addressee.address.len();
        let needed = size + (count as f32 - 1.0) * size * l.line_height;
        if needed > room {
            return Err(Error::Address {
                reason: format!("{count} lines do not fit the envelope window"),
            });
        }
        let x = pt(l.window_left_mm + l.window_inset_mm);
        let mut top = pt(l.window_top_mm + l.window_inset_mm) + size;
        for (i, line) in lines.enumerate() {
            let field = if i == 0 {
                "holder name".to_owned()
            } else {
                format!("address line {i}")
            };
            if text_width(line, size) > width {
                return Err(Error::Address {
                    reason: format!("{field} is wider than the envelope window"),
                });
            }
            self.text(Font::Regular, size, x, top, line, &field)?;
            top += size * l.line_height;
        }
        Ok(())
    }

    /// Draws the code box; returns its bottom, in points from the top of the page.
    fn code_box(&mut self, lines: &[&str]) -> Result<f32> {
        let l = self.l;
        let pad = pt(l.box_padding_mm);
        let row = |line: &str, first: bool| -> f32 {
            if line.trim().is_empty() {
                l.box_label_size * l.line_height / 2.0
            } else if first {
                l.box_title_size * l.line_height
            } else if line.contains('\t') {
                l.box_code_size.max(l.box_label_size) * l.line_height
            } else {
                l.box_label_size * l.line_height
            }
        };
        let inner: f32 = lines.iter().enumerate().map(|(i, s)| row(s, i == 0)).sum();
        let (x, top) = (pt(l.margin_left_mm), pt(l.box_top_mm));
        let (w, h) = (pt(l.box_width_mm), inner + 2.0 * pad);
        let y = self.height - top - h;
        let (bx, by, bw, bh) = (N2(x), N2(y), N2(w), N2(h));
        writeln!(
            self.buf,
            "q {} g {bx} {by} {bw} {bh} re f {} w 0 G {bx} {by} {bw} {bh} re S Q",
            N2(l.box_fill_grey),
            N2(l.box_border_pt)
        )?;
        let field = "template print.txt [box]";
        let mut at = top + pad;
        for (i, line) in lines.iter().enumerate() {
            let height = row(line, i == 0);
            // Baseline a little above the bottom of the row.
            let base = at + height - height * 0.25;
            if line.trim().is_empty() {
            } else if i == 0 {
                self.text(Font::Bold, l.box_title_size, x + pad, base, line, field)?;
            } else if let Some((label, value)) = line.split_once('\t') {
                self.text(Font::Regular, l.box_label_size, x + pad, base, label, field)?;
                let vx = x + pt(l.box_value_offset_mm);
                self.text(Font::Code, l.box_code_size, vx, base, value.trim(), field)?;
            } else {
                self.text(Font::Regular, l.box_label_size, x + pad, base, line, field)?;
            }
            at += height;
        }
        Ok(top + h)
    }

    /// Prints the body below `from`; returns the bottom of its last line.
    fn body(&mut self, lines: &[&str], from: f32) -> Result<f32> {
        let l = self.l;
        let size = l.body_font_size;
        let x = pt(l.margin_left_mm);
        let width = pt(l.page_width_mm - l.margin_left_mm - l.margin_right_mm);
        let leading = size * l.line_height;
        let mut top = from + pt(l.body_gap_mm);
        for line in lines {
            if line.trim().is_empty() {
                top += pt(l.paragraph_gap_mm);
                continue;
            }
            for piece in wrap(line, size, width) {
                self.text(
                    Font::Regular,
                    size,
                    x,
                    top + size,
                    piece,
                    "template print.txt [body]",
                )?;
                top += leading;
            }
        }
        Ok(top)
    }

    fn footer(&mut self, lines: &[&str], body_bottom: f32) -> Result<()> {
        let l = self.l;
        let size = l.footer_font_size;
        let leading = size * l.line_height;
        let last = self.height - pt(l.footer_bottom_mm);
        let first = last - (lines.len().saturating_sub(1)) as f32 * leading;
        if !lines.is_empty() && first - size < body_bottom {
            return Err(Error::Template {
                name: PRINT.into(),
                detail: "the page is full: the body runs into the footer".into(),
            });
        }
        let x = pt(l.margin_left_mm);
        for (i, line) in lines.iter().enumerate() {
            let top = first + i as f32 * leading;
            self.text(
                Font::Regular,
                size,
                x,
                top,
                line,
                "template print.txt [footer]",
            )?;
        }
        Ok(())
    }
}

/// Greedy word wrap of `line` into slices no wider than `width` (a longer word stands alone).
fn wrap(line: &str, size: f32, width: f32) -> Vec<&str> {
    let mut out = Vec::new();
    let space = text_width(" ", size);
    let (mut start, mut end, mut w) = (0usize, 0usize, 0.0f32);
    let mut at = 0usize;
    for word in line.split(' ') {
        let ww = text_width(word, size);
        let word_end = at + word.len();
        if end > start && w + space + ww > width {
            out.push(&line[start..end]);
            start = at;
            w = ww;
        } else if end > start {
            w += space + ww;
        } else {
            start = at;
            w = ww;
        }
        end = word_end;
        at = word_end + 1;
    }
    if end > start {
        out.push(&line[start..end]);
    }
    out
}

/// Streams mailer pages into one PDF file.
///
/// ```no_run
/// # use dispatch::*; use std::sync::Arc;
/// # fn f(mailers: &[Mailer<'_>]) -> dispatch::Result<()> {
/// let renderer = PrintRenderer::new(Arc::new(Templates::builtin()?), Layout::default(), Issuer::default());
/// let file = std::fs::File::create("mailers.pdf")?;
/// let mut pdf = PdfWriter::new(file, &renderer)?;
/// for m in mailers {
///     pdf.add_page(m)?;
/// }
/// pdf.finish()?;
/// # Ok(()) }
/// ```
///
/// # Security
/// Each page's content stream goes to the sink in one `write_all` from a zeroizing buffer;
/// whatever buffers the sink keeps (a `BufWriter`, an encryptor) are the sink's to wipe. Give
/// it a sealing writer (age) for files that leave the process.
pub struct PdfWriter<'r, W: Write> {
    out: W,
    renderer: &'r PrintRenderer,
    /// Byte offset of each object, indexed by object number (0 unused).
    offsets: Vec<u64>,
    pos: u64,
    pages: usize,
    media_box: String,
}

impl<W: Write> fmt::Debug for PdfWriter<'_, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PdfWriter")
            .field("pages", &self.pages)
            .field("bytes", &self.pos)
            .finish()
    }
}

impl<'r, W: Write> PdfWriter<'r, W> {
    /// Writes the PDF header and the shared objects (fonts, resources) to `out`.
    ///
    /// # Errors
    /// [`Error::Io`] if the sink fails.
    pub fn new(out: W, renderer: &'r PrintRenderer) -> Result<PdfWriter<'r, W>> {
        let l = renderer.layout();
        let mut w = PdfWriter {
            out,
            renderer,
            offsets: vec![0; FIRST_PAGE],
            pos: 0,
            pages: 0,
            media_box: format!(
                "[0 0 {:.2} {:.2}]",
                pt(l.page_width_mm),
                pt(l.page_height_mm)
            ),
        };
        // The second line's high bytes mark the file as binary for transfer tools.
        w.put(b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n")?;
        for (obj, base) in FONTS {
            w.object(
                obj,
                format!("<< /Type /Font /Subtype /Type1 /BaseFont /{base} /Encoding /WinAnsiEncoding >>")
                    .as_bytes(),
            )?;
        }
        w.object(
            RESOURCES,
            b"<< /Font << /F1 3 0 R /F2 4 0 R /F3 5 0 R >> /ProcSet [/PDF /Text] >>",
        )?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn object(&mut self, num: usize, body: &[u8]) -> Result<()> {
        self.mark(num);
        self.put(format!("{num} 0 obj\n").as_bytes())?;
        self.put(body)?;
        self.put(b"\nendobj\n")
    }

    fn mark(&mut self, num: usize) {
        if self.offsets.len() <= num {
            self.offsets.resize(num + 1, 0);
        }
        self.offsets[num] = self.pos;
    }

    /// Renders `mailer` and appends it as the next page.
    ///
    /// # Errors
    /// As [`PrintRenderer::render_page`], and [`Error::Io`] if the sink fails.
    pub fn add_page(&mut self, mailer: &Mailer<'_>) -> Result<()> {
        let page = self.renderer.render_page(mailer)?;
        self.append(&page)
    }

    /// Appends a page rendered by [`PrintRenderer::render_page`] (possibly on another thread).
    ///
    /// # Errors
    /// [`Error::Io`] if the sink fails.
    pub fn append(&mut self, page: &PageStream) -> Result<()> {
        let num = FIRST_PAGE + 2 * self.pages;
        let page_dict = format!(
            "<< /Type /Page /Parent {PAGES} 0 R /MediaBox {} /Resources {RESOURCES} 0 R /Contents {} 0 R >>",
            self.media_box,
            num + 1
        );
        self.object(num, page_dict.as_bytes())?;
        self.mark(num + 1);
        let stream = page.0.expose_secret();
        self.put(
            format!(
                "{} 0 obj\n<< /Length {} >>\nstream\n",
                num + 1,
                stream.len()
            )
            .as_bytes(),
        )?;
        self.put(stream)?;
        self.put(b"\nendstream\nendobj\n")?;
        self.pages += 1;
        Ok(())
    }

    /// Pages appended so far.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Bytes written so far (to bound print file sizes).
    pub fn bytes_written(&self) -> u64 {
        self.pos
    }

    /// Writes the page tree, catalogue, cross-reference table and trailer; returns the sink
    /// (flushed).
    ///
    /// # Errors
    /// [`Error::NoPages`] if no page was added; [`Error::Io`] if the sink fails.
    pub fn finish(mut self) -> Result<W> {
        if self.pages == 0 {
            return Err(Error::NoPages);
        }
        let mut kids = String::with_capacity(self.pages * 10 + 64);
        kids.push_str(&format!("<< /Type /Pages /Count {} /Kids [", self.pages));
        for i in 0..self.pages {
            if i % 8 == 0 {
                kids.push('\n');
            }
            kids.push_str(&format!("{} 0 R ", FIRST_PAGE + 2 * i));
        }
        kids.push_str("] >>");
        self.object(PAGES, kids.as_bytes())?;
        self.object(
            CATALOG,
            format!("<< /Type /Catalog /Pages {PAGES} 0 R >>").as_bytes(),
        )?;
        let xref_at = self.pos;
        let count = self.offsets.len();
        let mut xref = String::with_capacity(count * 20 + 128);
        xref.push_str(&format!("xref\n0 {count}\n0000000000 65535 f \n"));
        for off in &self.offsets[1..] {
            // Each entry is exactly 20 bytes, end of line included.
            xref.push_str(&format!("{off:010} 00000 n \n"));
        }
        xref.push_str(&format!(
            "trailer\n<< /Size {count} /Root {CATALOG} 0 R >>\nstartxref\n{xref_at}\n%%EOF\n"
        ));
        self.put(xref.as_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::N2;

    #[test]
    fn numbers_have_two_decimals_like_the_float_formatter() {
        for v in [
            0.0f32, 1.0, 12.5, 841.89, 0.004, 0.006, 595.2756, 123.456, 7.1,
        ] {
            assert_eq!(N2(v).to_string(), format!("{v:.2}"), "{v}");
        }
        assert_eq!(N2(-3.25).to_string(), "-3.25");
        assert_eq!(N2(-0.5).to_string(), "-0.50");
    }
}

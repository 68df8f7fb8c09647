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
//! ([`Layout`]), each line wrapped at blanks to the window's width; an address that still does
//! not fit is a [`crate::LayoutError`], not a clipped line.
//!
//! ## File
//!
//! [`PdfWriter`] streams pages: the header and the shared font objects first, then each page's
//! object and content stream as it comes (and, the first time a page of a prepared shape comes,
//! that shape's Form XObjects), and at [`PdfWriter::finish`] the page tree, the catalogue, the
//! cross-reference table and the trailer. It keeps only 24 bytes a page (two object offsets
//! and the page's object number), so a print file of 10,000 mailers never sits whole in memory (unless the
//! sink is a `Vec`). Fonts are DejaVu Sans, Sans Bold and Sans Mono Bold, subset and embedded
//! (see [`super::font`]: Latin, Greek, Cyrillic), text written as glyph ids in literal strings (two bytes a glyph, escaped); a
//! character the fonts lack is an error naming the field and position.
//!
//! Content streams are **not compressed**: compression would cost more time than it saves in
//! a file that is sealed (encrypted) right after, and the page stream stays greppable in
//! tests. The whole page stream is built in a [`SecretBuf`] (a `Zeroizing<Vec<u8>>` that wipes
//! on growth), written to the sink in one `write_all`, and wiped when the page is dropped.
//!
//! Rendering a page ([`PrintRenderer::render_page`]) and appending it ([`PdfWriter::append`])
//! are separate steps, so that bulk runs can render pages on rayon workers and append them in
//! order on one thread.
//!
//! ## Prepared pages
//!
//! Most of a page is the same for every mailer of a run: what changes is the holder's name and
//! address, the serial texts, the mailer number and the codes. So the renderer prepares each
//! page **shape** once and caches it ([`PrintRenderer`] holds the cache; rayon workers share
//! it). A shape is what the template output depends on besides per-mailer values: the
//! [`crate::Part`] (name, index, count, digit ranges, channels), whether the card has a
//! signature pair, whether the mailer has a number (issuer and layout are fixed per renderer).
//!
//! To prepare a shape, the print template is rendered once with placeholders for the codes
//! **and** for `holder.name`, `card.serial_masked`, `card.serial_last4` and `number`. Lines
//! without a placeholder are laid out once into static content streams, written as PDF Form
//! XObjects once per file by [`PdfWriter`] (the first time a page of that shape is appended);
//! each page's own stream then holds `/S0 Do` (the static part), the address, and the lines
//! with a placeholder, filled in and encoded per mailer (codes only in zeroizing buffers):
//! a few hundred bytes instead of ~5 KB. Header, box and footer lines sit where they would
//! anyway (their positions do not depend on per-mailer values). A body paragraph with a
//! placeholder is wrapped per mailer; if it takes more (or fewer) lines than at preparation,
//! the static body text below it is drawn shifted (`q 1 0 0 1 0 -shift cm /S1 Do Q`), and the
//! footer check ("the page is full") is made per mailer with the real shift.
//!
//! The prepared path must print what the template would: at preparation, the probe mailers
//! of [`super::prepared`] (short and long accented names, different serials and numbers) are
//! rendered both ways; if the texts differ (a template that applies a filter to
//! `holder.name` or branches on `number`), the shape is marked as not preparable and its
//! pages take the direct path ([`PrintRenderer::render_page_direct`]: template rendered per
//! mailer, whole page laid out).
//! A mailer whose values could change the layout of the text (an empty or blank-edged value,
//! a character the fonts lack, a `[`) takes the direct path too, so its errors are exactly the
//! direct path's.

use crate::error::{Error, LayoutError, Result};
use crate::render::font::{fonts, text_width, Face};
use crate::render::layout::{pt, Layout};
use crate::render::marks::{data_matrix, omr_track, today_utc, RunMarks, ScanCode};
use crate::render::pdfa;
use crate::render::prepared::{probes_agree, ShapeCache, ShapeKey};
use crate::render::templates::{
    code_digits, substitute_personal, Issuer, Templates, LAST4_TAG, MARK, MASKED_TAG, NAME_TAG,
    NUMBER_TAG, PIN_TAG, PRINT, PUK_TAG, SIG_PIN_TAG, SIG_PUK_TAG,
};
use crate::render::{mask_serial, serial_last4, Mailer, Rendered, Renderer};
use crate::secret::{SecretBuf, SecretText};
use std::fmt;
use std::io::Write;
use std::sync::Arc;

/// Object numbers: 1 catalogue, 2 page tree (both written last), 3–5 fonts (`Type0`),
/// 6 resources, 7–18 the fonts' parts (four each: CID font, descriptor, font file,
/// `ToUnicode`), 19 the output intent's ICC profile, 20 the XMP metadata (see
/// [`super::pdfa`]), then, in the order they come, each page's object and content stream,
/// and the Form XObjects and resources of each page shape the first time a page of that shape
/// is appended.
const CATALOG: usize = 1;
const PAGES: usize = 2;
const RESOURCES: usize = 6;
const FONT_PARTS: usize = 7;
const OUTPUT_PROFILE: usize = FONT_PARTS + 12;
const METADATA: usize = OUTPUT_PROFILE + 1;
const FIRST_FREE: usize = METADATA + 1;

const FONTS: [(usize, Font); 3] = [(3, Font::Regular), (4, Font::Bold), (5, Font::Code)];

/// The font objects of every print file (numbers 3–5 and 7–18), built once a process: the
/// subset font files are the same in every file.
pub(super) fn font_objects() -> &'static [(usize, Vec<u8>)] {
    static OBJECTS: std::sync::OnceLock<Vec<(usize, Vec<u8>)>> = std::sync::OnceLock::new();
    OBJECTS.get_or_init(|| {
        let mut out = Vec::new();
        for (i, (num, font)) in FONTS.into_iter().enumerate() {
            let face = font.face();
            let [cid, descriptor, file, to_unicode] =
                [0, 1, 2, 3].map(|k| FONT_PARTS + 4 * i + k);
            let name = face.base_font;
            out.push((
                num,
                format!(
                    "<< /Type /Font /Subtype /Type0 /BaseFont /{name} /Encoding /Identity-H \
                     /DescendantFonts [{cid} 0 R] /ToUnicode {to_unicode} 0 R >>"
                )
                .into_bytes(),
            ));
            let mut widths = String::with_capacity(face.widths.len() * 5 + 32);
            widths.push_str("[0 [");
            for (k, w) in face.widths.iter().enumerate() {
                if k % 16 == 0 {
                    widths.push('\n');
                }
                widths.push_str(&format!("{w} "));
            }
            widths.push_str("]]");
            out.push((
                cid,
                format!(
                    "<< /Type /Font /Subtype /CIDFontType2 /BaseFont /{name} \
                     /CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> \
                     /FontDescriptor {descriptor} 0 R /CIDToGIDMap /Identity /DW 1000 /W {widths} >>"
                )
                .into_bytes(),
            ));
            let [x0, y0, x1, y1] = face.bbox;
            out.push((
                descriptor,
                format!(
                    "<< /Type /FontDescriptor /FontName /{name} /Flags {} /FontBBox [{x0} {y0} {x1} {y1}] \
                     /ItalicAngle 0 /Ascent {} /Descent {} /CapHeight {} /StemV 80 /FontFile2 {file} 0 R >>",
                    if face.fixed { 5 } else { 4 },
                    face.ascent,
                    face.descent,
                    face.cap_height
                )
                .into_bytes(),
            ));
            let mut body = format!(
                "<< /Length {0} /Length1 {0} >>\nstream\n",
                face.file.len()
            )
            .into_bytes();
            body.extend_from_slice(&face.file);
            body.extend_from_slice(b"\nendstream");
            out.push((file, body));
            let cmap = to_unicode_cmap(face);
            let mut body = format!("<< /Length {} >>\nstream\n", cmap.len()).into_bytes();
            body.extend_from_slice(cmap.as_bytes());
            body.extend_from_slice(b"\nendstream");
            out.push((to_unicode, body));
        }
        out
    })
}

/// The output intent's profile object, built once a process.
pub(super) fn output_profile() -> &'static [u8] {
    static OBJECT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    OBJECT.get_or_init(pdfa::output_profile_object)
}

/// The `ToUnicode` CMap of a face: glyph id to the character it was subset for.
fn to_unicode_cmap(face: &Face) -> String {
    let mut s = String::from(
        "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n\
         /CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n\
         /CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n\
         1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n",
    );
    for chunk in face.unicode.chunks(100) {
        s.push_str(&format!("{} beginbfchar\n", chunk.len()));
        for (g, c) in chunk {
            let mut utf16 = [0u16; 2];
            s.push_str(&format!("<{g:04X}> <"));
            for unit in c.encode_utf16(&mut utf16) {
                s.push_str(&format!("{unit:04X}"));
            }
            s.push_str(">\n");
        }
        s.push_str("endbfchar\n");
    }
    s.push_str("endcmap\nCMapName currentdict /CMap defineresource pop\nend\nend");
    s
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Font {
    Regular,
    Bold,
    Code,
}

impl Font {
    fn name(self) -> &'static [u8] {
        match self {
            Font::Regular => b"/F1",
            Font::Bold => b"/F2",
            Font::Code => b"/F3",
        }
    }

    fn face(self) -> &'static Face {
        let f = fonts();
        match self {
            Font::Regular => &f.regular,
            Font::Bold => &f.bold,
            Font::Code => &f.code,
        }
    }
}

/// The print renderer: templates, layout and issuer texts shared by every page, and the
/// prepared page shapes (see the module docs).
#[derive(Debug, Clone)]
pub struct PrintRenderer {
    templates: Arc<Templates>,
    layout: Layout,
    issuer: Issuer,
    shapes: Arc<ShapeCache<PreparedPage>>,
    /// The run printed on every page (date and batch); `None`: the counter's page.
    run: Option<Arc<RunLine>>,
    /// The OMR track of each mailer number modulo 4 (see [`omr_ops`]).
    omr: Arc<[Vec<u8>; 4]>,
}

/// A run's date and batch line, encoded once for every page of the run: its glyph ids
/// and its width at the marks' size.
#[derive(Debug)]
struct RunLine {
    marks: RunMarks,
    encoded: Vec<u8>,
    width: f32,
}

/// The date and batch line of a page: `batch` `None` for the counter's page.
fn marks_line(date: &str, batch: Option<&str>) -> String {
    match batch {
        Some(batch) => format!("Stampato il {date} · Lotto {batch} · pag. 1/1"),
        None => format!("Stampato il {date} · Sportello · pag. 1/1"),
    }
}

impl RunLine {
    fn new(marks: RunMarks, size: f32) -> RunLine {
        let line = marks_line(&marks.date, Some(&marks.batch));
        let mut encoded = SecretBuf::with_capacity(4 * line.len());
        // Digits, ASCII and `·`: in the regular face (a batch label is A-Z a-z 0-9 . _ -);
        // a character it lacks would leave the line out, as it always did.
        if put_encoded(&mut encoded, &fonts().regular, &line).is_err() {
            encoded = SecretBuf::default();
        }
        RunLine {
            width: text_width(&line, size),
            encoded: encoded.expose_secret().to_vec(),
            marks,
        }
    }
}

/// One rendered page's content stream, digits included, and the prepared shape whose static
/// parts (Form XObjects) it draws, if any.
///
/// # Security
/// Held in a [`SecretBuf`]: wiped on drop; `Debug` shows the length only.
pub struct PageStream {
    stream: SecretBuf,
    shape: Option<Arc<PreparedPage>>,
}

impl fmt::Debug for PageStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageStream")
            .field("stream", &self.stream)
            .field("prepared", &self.shape.is_some())
            .finish()
    }
}

impl PageStream {
    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.stream.len()
    }

    /// True for an empty stream (never for a rendered page).
    pub fn is_empty(&self) -> bool {
        self.stream.is_empty()
    }

    /// True if the page draws a prepared shape's static parts (false for the direct path).
    pub fn is_prepared(&self) -> bool {
        self.shape.is_some()
    }
}

impl PrintRenderer {
    /// A print renderer with these templates, layout and issuer texts.
    pub fn new(templates: Arc<Templates>, layout: Layout, issuer: Issuer) -> PrintRenderer {
        PrintRenderer {
            templates,
            omr: Arc::new([0, 1, 2, 3].map(|k| omr_ops(&layout, k))),
            layout,
            issuer,
            shapes: Arc::default(),
            run: None,
        }
    }

    /// The same renderer printing `run`'s date and batch reference on every page (bulk runs
    /// set it; without it a page says `Sportello` and today's date).
    pub fn with_run(mut self, run: RunMarks) -> PrintRenderer {
        self.run = Some(Arc::new(RunLine::new(run, self.layout.marks_font_size)));
        self
    }

    /// The layout in use.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn height(&self) -> f32 {
        pt(self.layout.page_height_mm)
    }

    /// Renders one page's content stream: through the page's prepared shape when it has one
    /// (see the module docs), else as [`PrintRenderer::render_page_direct`].
    ///
    /// # Errors
    /// [`Error::Template`] (also for a page that overflows, or a template character the fonts
    /// lack); [`Error::Layout`] for a name or address the page cannot carry (a character the
    /// fonts lack, a word wider than the window, more lines than the window holds).
    ///
    /// # Security
    /// The stream holds the digits; it is wiped when dropped.
    pub fn render_page(&self, mailer: &Mailer<'_>) -> Result<PageStream> {
        if let Some(shape) = self.shape(mailer) {
            if let Some(page) = shape.render(self, mailer)? {
                return Ok(page);
            }
        }
        self.render_page_direct(mailer)
    }

    /// Renders one page without prepared shapes: the template for this mailer, the whole page
    /// laid out. The reference for the prepared path, and the path of templates that do not
    /// print the per-mailer values as they are.
    ///
    /// # Errors
    /// As [`PrintRenderer::render_page`].
    pub fn render_page_direct(&self, mailer: &Mailer<'_>) -> Result<PageStream> {
        let l = &self.layout;
        let height = self.height();
        let text = self.templates.render(PRINT, mailer, &self.issuer)?;
        let sections = Sections::parse(text.expose_secret())?;
        let mut page = Direct {
            buf: SecretBuf::with_capacity(8192),
            height,
        };
        // The address first: a name the page cannot carry is reported as the mailer's
        // layout problem, even if a template line prints the name too.
        address(&mut page.buf, l, height, mailer)?;
        facility_marks(
            &mut page.buf,
            l,
            height,
            self.run.as_deref(),
            &self.omr,
            mailer,
        );
        fold_marks(&mut page, l);
        header(&mut page, l, &sections.header)?;
        let box_bottom = code_box(&mut page, l, height, &sections.code_box)?;
        let body_bottom = body(&mut page, l, &sections.body, box_bottom)?;
        check_footer(footer_limit(l, height, sections.footer.len()), body_bottom)?;
        footer(&mut page, l, height, &sections.footer)?;
        Ok(PageStream {
            stream: page.buf,
            shape: None,
        })
    }

    /// The prepared shape of `mailer`'s page, prepared now if it is the first of its shape;
    /// `None` if the shape is not preparable.
    fn shape(&self, mailer: &Mailer<'_>) -> Option<Arc<PreparedPage>> {
        self.shapes
            .get(mailer, || PreparedPage::prepare(self, mailer))
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
        let mut w = PdfWriter::new(SecretBuf::with_capacity(page.len() + 8192), self)?;
        w.append(&page)?;
        Ok(Rendered::Pdf(w.finish()?))
    }
}

/// A drawing step of a prepared page that depends on the mailer.
enum DynOp {
    /// One line at a fixed place: the text operator's start (`BT … Td (`) and the line with
    /// its placeholders.
    Text {
        prefix: Vec<u8>,
        font: Font,
        line: String,
    },
    /// A body paragraph, wrapped per mailer; `top` and `lines` as at preparation.
    Para {
        line: String,
        top: f32,
        lines: usize,
    },
    /// The static body text after a paragraph: form `n`, drawn with the shift so far.
    Form(usize),
}

/// A page shape laid out once: static content streams (Form XObjects `/S0`, `/S1`…) and the
/// steps that fill in a mailer. Holds no personal data and no digit.
struct PreparedPage {
    forms: Vec<Vec<u8>>,
    ops: Vec<DynOp>,
    /// Bottom of the body (points from the top) when no paragraph is shifted.
    body_bottom: f32,
    /// Top of the footer's first line less its size: the body must end above it.
    footer_limit: Option<f32>,
    /// Which per-mailer values the page shows: name, masked serial, last four, number.
    uses: [usize; 4],
    /// Bytes of the page stream apart from the values and the address.
    capacity: usize,
}

impl fmt::Debug for PreparedPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PreparedPage({} forms, {} steps)",
            self.forms.len(),
            self.ops.len()
        )
    }
}

impl PreparedPage {
    /// Prepares the shape of `mailer`'s page (reading neither its digits nor its personal
    /// values); `None` if the template does not print the per-mailer values as they are, or
    /// the page cannot be laid out (the direct path reports why, per mailer).
    fn prepare(r: &PrintRenderer, mailer: &Mailer<'_>) -> Option<PreparedPage> {
        let key = &ShapeKey::of(mailer);
        let text = r.templates.render_print_shape(mailer, &r.issuer).ok()?;
        let agree = probes_agree(&r.templates, &r.issuer, PRINT, mailer, |probe| {
            let number = probe.number.map(|n| n.to_string());
            substitute_personal(
                &text,
                &probe.addressee.name,
                &mask_serial(probe.card_serial),
                &serial_last4(probe.card_serial),
                number.as_deref(),
            )
        });
        if !agree {
            return None;
        }
        let sections = Sections::parse(&text).ok()?;
        let l = &r.layout;
        let height = r.height();
        let mut p = Preparer {
            height,
            key,
            forms: vec![SecretBuf::with_capacity(8192)],
            current: 0,
            after_para: false,
            ops: Vec::new(),
            uses: [0; 4],
            valid: true,
        };
        fold_marks(&mut p, l);
        header(&mut p, l, &sections.header).ok()?;
        let box_bottom = code_box(&mut p, l, height, &sections.code_box).ok()?;
        let body_bottom = body_prepare(&mut p, l, &sections.body, box_bottom).ok()?;
        footer(&mut p, l, height, &sections.footer).ok()?;
        if !p.valid {
            return None;
        }
        let mut capacity = 16;
        for op in &p.ops {
            capacity += match op {
                DynOp::Text { prefix, line, .. } => prefix.len() + 4 * line.len() + 48,
                DynOp::Para { line, .. } => 4 * line.len() + 4 * 96,
                DynOp::Form(_) => 64,
            };
        }
        Some(PreparedPage {
            forms: p.forms.iter().map(|f| f.expose_secret().to_vec()).collect(),
            ops: p.ops,
            body_bottom,
            footer_limit: footer_limit(l, height, sections.footer.len()),
            uses: p.uses,
            capacity,
        })
    }

    /// Fills in `mailer`; `Ok(None)` when the mailer must take the direct path (a value that
    /// could change the layout of the text, see the module docs).
    fn render(
        self: &Arc<Self>,
        r: &PrintRenderer,
        mailer: &Mailer<'_>,
    ) -> Result<Option<PageStream>> {
        let Some(v) = Values::of(mailer, &self.uses) else {
            return Ok(None);
        };
        let l = &r.layout;
        let height = r.height();
        let address_bytes: usize = std::iter::once(&mailer.addressee.name)
            .chain(&mailer.addressee.address)
            .map(|s| 4 * s.len() + 64)
            .sum();
        let mut buf = SecretBuf::with_capacity(
            self.capacity + address_bytes + v.bytes(&self.uses) + MARKS_BYTES,
        );
        buf.extend(b"/S0 Do\n");
        address(&mut buf, l, height, mailer)?;
        facility_marks(&mut buf, l, height, r.run.as_deref(), &r.omr, mailer);
        let size = l.body_font_size;
        let x = pt(l.margin_left_mm);
        let width = pt(l.page_width_mm - l.margin_left_mm - l.margin_right_mm);
        let leading = size * l.line_height;
        let mut shift = 0.0f32;
        let mut scratch: Option<SecretText> = None;
        for op in &self.ops {
            match op {
                DynOp::Text { prefix, font, line } => {
                    buf.extend(prefix);
                    if put_filled(&mut buf, font.face(), line, &v).is_none() {
                        return Ok(None);
                    }
                    buf.extend(b") Tj ET\n");
                }
                DynOp::Para { line, top, lines } => {
                    let scratch = match &mut scratch {
                        Some(text) => {
                            text.clear();
                            text
                        }
                        None => scratch.insert(SecretText::with_capacity(
                            line.len() + 2 * v.bytes(&self.uses),
                        )),
                    };
                    if fill(scratch, line, &v).is_none() {
                        return Ok(None);
                    }
                    let mut at = top + shift;
                    let pieces = wrap(scratch.expose_secret(), size, width);
                    for piece in &pieces {
                        if put_text(&mut buf, height, Font::Regular, size, x, at + size, piece)
                            .is_err()
                        {
                            return Ok(None);
                        }
                        at += leading;
                    }
                    shift += (pieces.len() as f32 - *lines as f32) * leading;
                }
                DynOp::Form(n) => {
                    let mut num = Num::default();
                    if shift == 0.0 {
                        buf.extend(b"/S");
                        buf.extend(num.int(*n as u64));
                        buf.extend(b" Do\n");
                    } else {
                        buf.extend(b"q 1 0 0 1 0 ");
                        buf.extend(num.n2(-shift));
                        buf.extend(b" cm /S");
                        buf.extend(num.int(*n as u64));
                        buf.extend(b" Do Q\n");
                    }
                }
            }
        }
        check_footer(self.footer_limit, self.body_bottom + shift)?;
        Ok(Some(PageStream {
            stream: buf,
            shape: Some(Arc::clone(self)),
        }))
    }
}

/// A mailer's per-mailer values, checked to print as the prepared layout assumes.
struct Values<'a> {
    name: &'a str,
    masked: String,
    last4: String,
    number: Option<Num>,
    number_len: usize,
    codes: &'a crate::plan::PartCodes,
}

/// A value the prepared layout can take as it is: not empty, no blank at either end (a line
/// could turn blank, or lose its end to trimming), every character in the embedded fonts (no
/// tab or line break, which would cut lines), no `[` (a line could become a section marker).
fn plain(s: &str) -> bool {
    let face = &fonts().regular;
    !s.is_empty()
        && s.trim().len() == s.len()
        && s.chars().all(|c| c != '[' && face.glyph(c).is_some())
}

impl<'a> Values<'a> {
    fn of(m: &Mailer<'a>, uses: &[usize; 4]) -> Option<Values<'a>> {
        let name = m.addressee.name.as_str();
        let (masked, last4) = if uses[1] + uses[2] > 0 {
            (mask_serial(m.card_serial), serial_last4(m.card_serial))
        } else {
            (String::new(), String::new())
        };
        let ok = (uses[0] == 0 || plain(name))
            && (uses[1] == 0 || plain(&masked))
            && (uses[2] == 0 || plain(&last4));
        if !ok {
            return None;
        }
        let number = m.number.map(|n| {
            let mut num = Num::default();
            num.int(n);
            num
        });
        let number_len = number.as_ref().map_or(0, |n| n.text().len());
        Some(Values {
            name,
            masked,
            last4,
            number,
            number_len,
            codes: m.codes,
        })
    }

    /// Room for the values in a page stream (two bytes a byte: escapes), codes included.
    fn bytes(&self, uses: &[usize; 4]) -> usize {
        4 * (uses[0] * self.name.len()
            + uses[1] * self.masked.len()
            + uses[2] * self.last4.len()
            + uses[3] * self.number_len)
            + 8 * 4 * crate::secret::MAX_DIGITS
    }

    fn text(&self, tag: u8) -> Option<&str> {
        match tag {
            NAME_TAG => Some(self.name),
            MASKED_TAG => Some(&self.masked),
            LAST4_TAG => Some(&self.last4),
            NUMBER_TAG => self.number.as_ref().map(Num::text),
            _ => None,
        }
    }
}

/// Encodes `line` with its placeholders filled in into `buf` (inside a text operator's
/// literal string); `None` if a character cannot be encoded or a value is missing.
fn put_filled(buf: &mut SecretBuf, face: &Face, line: &str, v: &Values<'_>) -> Option<()> {
    let mut pieces = line.split(MARK);
    put_encoded(buf, face, pieces.next()?).ok()?;
    for piece in pieces {
        let tag = piece.bytes().next()?;
        match v.text(tag) {
            Some(text) => put_encoded(buf, face, text).ok()?,
            None => {
                for &b in code_digits(v.codes, tag)?.expose_secret() {
                    put_glyph(buf, face.glyph(char::from(b))?);
                }
            }
        }
        put_encoded(buf, face, piece.get(1..)?).ok()?;
    }
    Some(())
}

/// Copies `line` with its placeholders filled in into `out`; `None` if a value is missing.
fn fill(out: &mut SecretText, line: &str, v: &Values<'_>) -> Option<()> {
    let mut pieces = line.split(MARK);
    out.push_str(pieces.next()?);
    for piece in pieces {
        let tag = piece.bytes().next()?;
        match v.text(tag) {
            Some(text) => out.push_str(text),
            None => {
                for &b in code_digits(v.codes, tag)?.expose_secret() {
                    out.push(char::from(b));
                }
            }
        }
        out.push_str(piece.get(1..)?);
    }
    Some(())
}

/// The lines of each section of the rendered print template.
struct Sections<'t> {
    header: Vec<&'t str>,
    code_box: Vec<&'t str>,
    body: Vec<&'t str>,
    footer: Vec<&'t str>,
}

impl<'t> Sections<'t> {
    fn parse(text: &'t str) -> Result<Sections<'t>> {
        let mut s = Sections {
            header: Vec::new(),
            code_box: Vec::new(),
            body: Vec::new(),
            footer: Vec::new(),
        };
        let mut current: Option<&mut Vec<&'t str>> = None;
        for (n, line) in text.lines().enumerate() {
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

/// A number written into a content stream with two decimals, by integer formatting: the
/// float formatting machinery was a sixth of the time of a page.
#[derive(Clone, Copy)]
struct N2(f32);

impl std::fmt::Display for N2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut num = Num::default();
        let bytes = num.n2(self.0);
        // Only ASCII digits, '-' and '.'.
        f.write_str(std::str::from_utf8(bytes).map_err(|_| fmt::Error)?)
    }
}

/// Digits of a number, written from the end of a stack buffer (no `fmt` machinery).
struct Num {
    buf: [u8; 24],
    start: usize,
}

impl Default for Num {
    fn default() -> Num {
        Num {
            buf: [0; 24],
            start: 24,
        }
    }
}

impl Num {
    fn push(&mut self, b: u8) {
        self.start -= 1;
        self.buf[self.start] = b;
    }

    fn digits(&mut self, mut v: u64) {
        loop {
            self.push(b'0' + (v % 10) as u8);
            v /= 10;
            if v == 0 {
                break;
            }
        }
    }

    /// `v` in decimal.
    fn int(&mut self, v: u64) -> &[u8] {
        self.start = self.buf.len();
        self.digits(v);
        &self.buf[self.start..]
    }

    /// `v` with two decimals, rounded like `{:.2}` (to the nearest hundredth).
    fn n2(&mut self, v: f32) -> &[u8] {
        self.start = self.buf.len();
        let hundredths = (f64::from(v) * 100.0).round() as i64;
        let mut u = hundredths.unsigned_abs();
        self.push(b'0' + (u % 10) as u8);
        u /= 10;
        self.push(b'0' + (u % 10) as u8);
        u /= 10;
        self.push(b'.');
        self.digits(u);
        if hundredths < 0 {
            self.push(b'-');
        }
        &self.buf[self.start..]
    }

    fn text(&self) -> &str {
        // Only ASCII digits.
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or("")
    }
}

/// `BT /F Tf x y Td (`: the start of a text operator at `y` points from the page's bottom.
fn put_prefix(buf: &mut SecretBuf, font: Font, size: f32, x: f32, y: f32) {
    let mut num = Num::default();
    buf.extend(b"BT ");
    buf.extend(font.name());
    buf.extend(b" ");
    buf.extend(num.n2(size));
    buf.extend(b" Tf ");
    buf.extend(num.n2(x));
    buf.extend(b" ");
    buf.extend(num.n2(y));
    buf.extend(b" Td (");
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Glyph id `g` as the two bytes of a literal string (`Identity-H`, high byte first) into
/// `out`; returns how many bytes it took. `(`, `)` and `\` are escaped with a backslash, a
/// carriage return is written `\r` (a reader turns a bare one into a line feed); every other
/// byte stands as it is. Half the bytes of a hex string.
#[inline]
fn glyph_bytes(g: u16, out: &mut [u8]) -> usize {
    let mut n = 0;
    for b in g.to_be_bytes() {
        match b {
            b'(' | b')' | b'\\' => {
                out[n] = b'\\';
                out[n + 1] = b;
                n += 2;
            }
            b'\r' => {
                out[n] = b'\\';
                out[n + 1] = b'r';
                n += 2;
            }
            _ => {
                out[n] = b;
                n += 1;
            }
        }
    }
    n
}

/// One glyph id into a literal string operand.
#[inline]
fn put_glyph(buf: &mut SecretBuf, g: u16) {
    let mut tmp = [0u8; 4];
    let n = glyph_bytes(g, &mut tmp);
    buf.extend(&tmp[..n]);
}

/// Encodes `s` as glyph ids of `face` into a literal string operand (`Identity-H`); on a
/// character the face does not have, its code and position.
fn put_encoded(buf: &mut SecretBuf, face: &Face, s: &str) -> std::result::Result<(), (u32, usize)> {
    // Through a stack buffer: one `extend` a few dozen glyphs.
    let mut tmp = [0u8; 256];
    let mut n = 0;
    for (position, c) in s.chars().enumerate() {
        let g = face.glyph(c).ok_or((u32::from(c), position))?;
        if n + 4 > tmp.len() {
            buf.extend(&tmp[..n]);
            n = 0;
        }
        n += glyph_bytes(g, &mut tmp[n..]);
    }
    buf.extend(&tmp[..n]);
    Ok(())
}

/// Prints `s` with its baseline `top` points below the top of a page `height` points high.
pub(super) fn put_text(
    buf: &mut SecretBuf,
    height: f32,
    font: Font,
    size: f32,
    x: f32,
    top: f32,
    s: &str,
) -> std::result::Result<(), (u32, usize)> {
    put_prefix(buf, font, size, x, height - top);
    put_encoded(buf, font.face(), s)?;
    buf.extend(b") Tj ET\n");
    Ok(())
}

/// A template line with a character the fonts lack: the template's fault, not the mailer's.
fn unprintable(field: &str) -> impl FnOnce((u32, usize)) -> Error + '_ {
    move |(code, position)| {
        Error::Template {
        name: PRINT.into(),
        detail: format!(
            "{field}: character U+{code:04X} at position {position} cannot be printed (no glyph in the embedded fonts)"
        ),
    }
    }
}

/// Where the page's template lines go: a whole page (direct path) or a shape being prepared.
trait Draw {
    /// Appends content-stream operators.
    fn raw(&mut self, bytes: &[u8]);
    /// Prints a template line with its baseline `top` points below the top of the page.
    fn text(&mut self, font: Font, size: f32, x: f32, top: f32, s: &str, field: &str)
        -> Result<()>;
}

/// The direct path: everything into the page's stream.
struct Direct {
    buf: SecretBuf,
    height: f32,
}

impl Draw for Direct {
    fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend(bytes);
    }

    fn text(
        &mut self,
        font: Font,
        size: f32,
        x: f32,
        top: f32,
        s: &str,
        field: &str,
    ) -> Result<()> {
        put_text(&mut self.buf, self.height, font, size, x, top, s).map_err(unprintable(field))
    }
}

/// Preparing a shape: lines without a placeholder into the current static form, the others
/// into steps.
struct Preparer<'k> {
    height: f32,
    key: &'k ShapeKey,
    /// Static content streams (no digit, no personal data; `SecretBuf` only for its writer).
    forms: Vec<SecretBuf>,
    current: usize,
    /// A body paragraph with a placeholder came last: static text after it goes to a new form.
    after_para: bool,
    ops: Vec<DynOp>,
    uses: [usize; 4],
    /// False if a line with a placeholder cannot be printed as prepared.
    valid: bool,
}

impl Preparer<'_> {
    /// Checks a line with placeholders: known tags (codes the part has), printable text.
    fn check(&mut self, line: &str) {
        let face = &fonts().regular;
        let printable = |s: &str| s.chars().all(|c| face.glyph(c).is_some());
        let mut pieces = line.split(MARK);
        let first = pieces.next().unwrap_or("");
        let mut ok = printable(first) && !first.starts_with('[');
        for piece in pieces {
            let tag = piece.bytes().next().unwrap_or(0);
            ok &= match tag {
                PIN_TAG | PUK_TAG => true,
                SIG_PIN_TAG | SIG_PUK_TAG => self.key.signature,
                NAME_TAG | MASKED_TAG | LAST4_TAG => true,
                NUMBER_TAG => self.key.number,
                _ => false,
            };
            if let Some(i) = [NAME_TAG, MASKED_TAG, LAST4_TAG, NUMBER_TAG]
                .iter()
                .position(|t| *t == tag)
            {
                self.uses[i] += 1;
            }
            ok &= piece.get(1..).is_some_and(printable);
        }
        self.valid &= ok;
    }

    fn form(&mut self) -> &mut SecretBuf {
        if self.after_para {
            self.after_para = false;
            self.forms.push(SecretBuf::with_capacity(8192));
            self.current = self.forms.len() - 1;
            self.ops.push(DynOp::Form(self.current));
        }
        &mut self.forms[self.current]
    }
}

impl Draw for Preparer<'_> {
    fn raw(&mut self, bytes: &[u8]) {
        self.form().extend(bytes);
    }

    fn text(
        &mut self,
        font: Font,
        size: f32,
        x: f32,
        top: f32,
        s: &str,
        field: &str,
    ) -> Result<()> {
        if s.contains(MARK) {
            self.check(s);
            let mut prefix = SecretBuf::with_capacity(64);
            put_prefix(&mut prefix, font, size, x, self.height - top);
            self.ops.push(DynOp::Text {
                prefix: prefix.expose_secret().to_vec(),
                font,
                line: s.to_owned(),
            });
            return Ok(());
        }
        let height = self.height;
        put_text(self.form(), height, font, size, x, top, s).map_err(unprintable(field))
    }
}

fn fold_marks(d: &mut impl Draw, l: &Layout) {
    if !l.fold_marks {
        return;
    }
    let height = pt(l.page_height_mm);
    let panel = l.page_height_mm / 3.0;
    for k in [1.0, 2.0] {
        let y = N2(height - pt(panel * k));
        d.raw(format!("q 0.5 w 0 G 0 {y} m {} {y} l S Q\n", N2(pt(6.0))).as_bytes());
    }
}

fn header(d: &mut impl Draw, l: &Layout, lines: &[&str]) -> Result<()> {
    let x = pt(l.margin_left_mm);
    let mut top = pt(l.header_top_mm);
    for (i, line) in lines.iter().enumerate() {
        let (font, size) = if i == 0 {
            (Font::Bold, l.header_title_size)
        } else {
            (Font::Regular, l.header_font_size)
        };
        top += size;
        d.text(font, size, x, top, line, "template print.txt [header]")?;
        top += size * (l.line_height - 1.0);
    }
    Ok(())
}

/// The name and address in the envelope window (per mailer on both paths): each line
/// wrapped at blanks to the window's width, all of them within its height.
fn address(buf: &mut SecretBuf, l: &Layout, height: f32, mailer: &Mailer<'_>) -> Result<()> {
    let size = l.address_font_size;
    let width = pt(l.window_width_mm - 2.0 * l.window_inset_mm);
    let room = pt(l.window_height_mm - 2.0 * l.window_inset_mm);
    let leading = size * l.line_height;
    // Lines the window holds: the first takes `size`, each further one `leading`.
    let room_lines = if room < size {
        0
    } else {
        1 + ((room - size) / leading + 1e-3).floor() as usize
    };
    let field = |i: usize| {
        if i == 0 {
            "holder name".to_owned()
        } else {
            format!("address line {i}")
        }
    };
    let face = &fonts().regular;
    let mut lines: Vec<(usize, &str)> = Vec::with_capacity(2 + mailer.addressee.address.len());
    let texts = std::iter::once(mailer.addressee.name.as_str())
        .chain(mailer.addressee.address.iter().map(String::as_str));
    for (i, text) in texts.enumerate() {
        // Every character first, so that an unprintable one is named as such.
        if let Some((position, c)) = text
            .chars()
            .enumerate()
            .find(|(_, c)| face.glyph(*c).is_none())
        {
            return Err(LayoutError::Unprintable {
                field: field(i),
                code: u32::from(c),
                position,
            }
            .into());
        }
        if text_width(text, size) <= width {
            lines.push((i, text));
            continue;
        }
        let pieces = wrap(text, size, width);
        if pieces.iter().any(|p| text_width(p, size) > width) {
            return Err(LayoutError::TooWide { field: field(i) }.into());
        }
        lines.extend(pieces.into_iter().map(|p| (i, p)));
    }
    if lines.len() > room_lines {
        return Err(LayoutError::TooManyLines {
            lines: lines.len(),
            room: room_lines,
        }
        .into());
    }
    let x = pt(l.window_left_mm + l.window_inset_mm);
    let mut top = pt(l.window_top_mm + l.window_inset_mm) + size;
    for (i, line) in lines {
        put_text(buf, height, Font::Regular, size, x, top, line).map_err(|(code, position)| {
            Error::from(LayoutError::Unprintable {
                field: field(i),
                code,
                position,
            })
        })?;
        top += leading;
    }
    Ok(())
}

/// Room for a page's facility marks in its stream (the date line and the Data Matrix mostly).
const MARKS_BYTES: usize = 2048;

/// The print facility's marks of one page (see [`super::marks`]): the Data Matrix, the date
/// and batch line beside it, the OMR track. Per mailer on both paths (the code holds its
/// number); nothing secret.
fn facility_marks(
    buf: &mut SecretBuf,
    l: &Layout,
    height: f32,
    run: Option<&RunLine>,
    omr: &[Vec<u8>; 4],
    mailer: &Mailer<'_>,
) {
    if !l.facility_marks {
        return;
    }
    let mut num = Num::default();
    let module = pt(l.code_module_mm);
    let code = ScanCode::of(mailer.number, mailer.card_serial).text();
    if let Some((bits, w, h)) = data_matrix(&code) {
        let x0 = pt(l.page_width_mm - l.code_right_mm) - w as f32 * module;
        let top = height - pt(l.code_top_mm);
        // An inline image mask, one sample a module (hex, so no binary byte can end it early),
        // painted in black where a bit is set, scaled to the symbol's size.
        buf.extend(b"q 0 g ");
        buf.extend(num.n2(w as f32 * module));
        buf.extend(b" 0 0 ");
        buf.extend(num.n2(h as f32 * module));
        buf.push(b' ');
        buf.extend(num.n2(x0));
        buf.push(b' ');
        buf.extend(num.n2(top - h as f32 * module));
        buf.extend(b" cm\nBI /W ");
        buf.extend(num.int(w as u64));
        buf.extend(b" /H ");
        buf.extend(num.int(h as u64));
        buf.extend(b" /IM true /BPC 1 /D [1 0] /F /AHx ID\n");
        let mut hex = [0u8; 128];
        for chunk in bits.chunks(64) {
            for (pair, byte) in hex.chunks_exact_mut(2).zip(chunk) {
                pair[0] = HEX[usize::from(byte >> 4)];
                pair[1] = HEX[usize::from(byte & 0xF)];
            }
            buf.extend(&hex[..2 * chunk.len()]);
        }
        buf.extend(b">\nEI Q\n");
        let size = l.marks_font_size;
        let baseline = pt(l.code_top_mm) + h as f32 * module / 2.0 + size / 3.0;
        match run {
            Some(run) if !run.encoded.is_empty() => {
                let x = x0 - pt(2.0) - run.width;
                put_prefix(buf, Font::Regular, size, x, height - baseline);
                buf.extend(&run.encoded);
                buf.extend(b") Tj ET\n");
            }
            Some(_) => {}
            None => {
                let line = marks_line(&today_utc(), None);
                let x = x0 - pt(2.0) - text_width(&line, size);
                // Digits, ASCII and `·`: in the regular face.
                let _ = put_text(buf, height, Font::Regular, size, x, baseline, &line);
            }
        }
    }
    buf.extend(&omr[(mailer.number.unwrap_or(0) % 4) as usize]);
}

/// The OMR track's operators of a one-page mailer whose number is `sequence` modulo 4 (all
/// that changes between pages).
fn omr_ops(l: &Layout, sequence: u64) -> Vec<u8> {
    let height = pt(l.page_height_mm);
    let mut num = Num::default();
    let mut buf = Vec::with_capacity(256);
    let track = omr_track(0, 1, sequence);
    let (x1, x2) = (pt(l.omr_left_mm), pt(l.omr_left_mm + l.omr_length_mm));
    buf.extend(b"q ");
    buf.extend(num.n2(l.omr_weight_pt));
    buf.extend(b" w 0 G 0 J\n");
    for (i, mark) in track.iter().enumerate() {
        if *mark {
            let y = height - pt(l.omr_top_mm + i as f32 * l.omr_pitch_mm);
            buf.extend(num.n2(x1));
            buf.push(b' ');
            buf.extend(num.n2(y));
            buf.extend(b" m ");
            buf.extend(num.n2(x2));
            buf.push(b' ');
            buf.extend(num.n2(y));
            buf.extend(b" l\n");
        }
    }
    buf.extend(b"S Q\n");
    buf
}

/// The show-through guard behind the codes: short grey strokes at random angles, dense over
/// the code column of the box, so that held against a light through a closed envelope the
/// digits drown in strokes of the same weight. Static (the same on every page), so it is in
/// the shape's form; vector strokes, not text, so text extraction does not read digits that
/// are not there.
fn show_through_guard(d: &mut impl Draw, l: &Layout, height: f32, rect: (f32, f32, f32, f32)) {
    let (x, top, w, h) = rect;
    if w <= 0.0 || h <= 0.0 {
        return;
    }
    let y = height - top - h;
    let mut out = String::with_capacity(32 * 1024);
    out.push_str(&format!(
        "q {} {} {} {} re W n {} G 1.2 w 1 J\n",
        N2(x),
        N2(y),
        N2(w),
        N2(h),
        N2(l.guard_grey)
    ));
    // A fixed xorshift sequence: the same pattern on every page of every run.
    let mut seed: u32 = 0x9E37_79B9;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        (seed >> 8) as f32 / (1u32 << 24) as f32
    };
    let stroke = l.box_code_size * 0.45;
    let count = (w * h / (stroke * stroke) * 1.6) as usize;
    for _ in 0..count {
        let (cx, cy) = (x + next() * w, y + next() * h);
        let angle = next() * std::f32::consts::PI;
        let (dx, dy) = (angle.cos() * stroke / 2.0, angle.sin() * stroke / 2.0);
        out.push_str(&format!(
            "{} {} m {} {} l\n",
            N2(cx - dx),
            N2(cy - dy),
            N2(cx + dx),
            N2(cy + dy)
        ));
    }
    out.push_str("S Q\n");
    d.raw(out.as_bytes());
}

/// Draws the code box; returns its bottom, in points from the top of the page.
fn code_box(d: &mut impl Draw, l: &Layout, height: f32, lines: &[&str]) -> Result<f32> {
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
    let y = height - top - h;
    let (bx, by, bw, bh) = (N2(x), N2(y), N2(w), N2(h));
    d.raw(
        format!(
            "q {} g {bx} {by} {bw} {bh} re f {} w 0 G {bx} {by} {bw} {bh} re S Q\n",
            N2(l.box_fill_grey),
            N2(l.box_border_pt)
        )
        .as_bytes(),
    );
    // The guard covers the code column, from just left of the codes to the box's edge.
    let gx = x + pt(l.box_value_offset_mm) - pt(3.0);
    show_through_guard(
        d,
        l,
        height,
        (gx, top + pad / 2.0, x + w - pad / 2.0 - gx, h - pad),
    );
    let field = "template print.txt [box]";
    let mut at = top + pad;
    for (i, line) in lines.iter().enumerate() {
        let height = row(line, i == 0);
        // Baseline a little above the bottom of the row.
        let base = at + height - height * 0.25;
        if line.trim().is_empty() {
        } else if i == 0 {
            d.text(Font::Bold, l.box_title_size, x + pad, base, line, field)?;
        } else if let Some((label, value)) = line.split_once('\t') {
            d.text(Font::Regular, l.box_label_size, x + pad, base, label, field)?;
            let vx = x + pt(l.box_value_offset_mm);
            d.text(Font::Code, l.box_code_size, vx, base, value.trim(), field)?;
        } else {
            d.text(Font::Regular, l.box_label_size, x + pad, base, line, field)?;
        }
        at += height;
    }
    Ok(top + h)
}

/// Prints the body below `from`; returns the bottom of its last line.
fn body(d: &mut impl Draw, l: &Layout, lines: &[&str], from: f32) -> Result<f32> {
    let mut top = from + pt(l.body_gap_mm);
    for line in lines {
        if line.trim().is_empty() {
            top += pt(l.paragraph_gap_mm);
            continue;
        }
        top = paragraph(d, l, line, top)?;
    }
    Ok(top)
}

/// Prints one body paragraph wrapped to the page from `top`; returns the top of the line
/// after it.
fn paragraph(d: &mut impl Draw, l: &Layout, line: &str, mut top: f32) -> Result<f32> {
    let size = l.body_font_size;
    let x = pt(l.margin_left_mm);
    let width = pt(l.page_width_mm - l.margin_left_mm - l.margin_right_mm);
    for piece in wrap(line, size, width) {
        d.text(
            Font::Regular,
            size,
            x,
            top + size,
            piece,
            "template print.txt [body]",
        )?;
        top += size * l.line_height;
    }
    Ok(top)
}

/// The body of a shape: as [`body`], but a paragraph with a placeholder becomes a step
/// (wrapped per mailer), and the static text after it goes to a form drawn with the shift.
fn body_prepare(p: &mut Preparer<'_>, l: &Layout, lines: &[&str], from: f32) -> Result<f32> {
    let size = l.body_font_size;
    let width = pt(l.page_width_mm - l.margin_left_mm - l.margin_right_mm);
    let leading = size * l.line_height;
    let mut top = from + pt(l.body_gap_mm);
    for line in lines {
        if line.trim().is_empty() {
            top += pt(l.paragraph_gap_mm);
            continue;
        }
        if line.contains(MARK) {
            p.check(line);
            let count = wrap(line, size, width).len();
            p.ops.push(DynOp::Para {
                line: (*line).to_owned(),
                top,
                lines: count,
            });
            p.after_para = true;
            for _ in 0..count {
                top += leading;
            }
            continue;
        }
        top = paragraph(p, l, line, top)?;
    }
    // The footer is not shifted.
    p.after_para = false;
    p.current = 0;
    Ok(top)
}

/// Top of the footer's first line less its size (points from the top), if there is a footer.
fn footer_limit(l: &Layout, height: f32, lines: usize) -> Option<f32> {
    let size = l.footer_font_size;
    let leading = size * l.line_height;
    let last = height - pt(l.footer_bottom_mm);
    let first = last - (lines.saturating_sub(1)) as f32 * leading;
    (lines > 0).then_some(first - size)
}

fn check_footer(limit: Option<f32>, body_bottom: f32) -> Result<()> {
    if limit.is_some_and(|limit| limit < body_bottom) {
        return Err(Error::Template {
            name: PRINT.into(),
            detail: "the page is full: the body runs into the footer".into(),
        });
    }
    Ok(())
}

fn footer(d: &mut impl Draw, l: &Layout, height: f32, lines: &[&str]) -> Result<()> {
    let size = l.footer_font_size;
    let leading = size * l.line_height;
    let last = height - pt(l.footer_bottom_mm);
    let first = last - (lines.len().saturating_sub(1)) as f32 * leading;
    let x = pt(l.margin_left_mm);
    for (i, line) in lines.iter().enumerate() {
        let top = first + i as f32 * leading;
        d.text(
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

/// Greedy word wrap of `line` into slices no wider than `width` (a longer word stands alone).
pub(super) fn wrap(line: &str, size: f32, width: f32) -> Vec<&str> {
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
/// it a sealing writer (age) for files that leave the process. The Form XObjects of prepared
/// shapes hold no digit and no personal data.
pub struct PdfWriter<'r, W: Write> {
    out: W,
    renderer: &'r PrintRenderer,
    /// Byte offset of each object, indexed by object number (0 unused).
    offsets: Vec<u64>,
    pos: u64,
    /// Object number of each page.
    pages: Vec<usize>,
    /// The shapes whose forms are in the file, with the number of their resources object.
    shapes: Vec<(Arc<PreparedPage>, usize)>,
    media_box: String,
    scratch: Vec<u8>,
    /// When the file was started, in nanoseconds since the epoch (for the document ID).
    created_nanos: u128,
}

impl<W: Write> fmt::Debug for PdfWriter<'_, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PdfWriter")
            .field("pages", &self.pages.len())
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
            offsets: vec![0; FIRST_FREE],
            pos: 0,
            pages: Vec::new(),
            shapes: Vec::new(),
            media_box: format!(
                "[0 0 {:.2} {:.2}]",
                pt(l.page_width_mm),
                pt(l.page_height_mm)
            ),
            scratch: Vec::with_capacity(256),
            created_nanos: 0,
        };
        let (created, nanos) = pdfa::created_now();
        w.created_nanos = nanos;
        w.put(pdfa::HEADER)?;
        for (obj, body) in font_objects() {
            w.object(*obj, body)?;
        }
        w.object(OUTPUT_PROFILE, output_profile())?;
        let title = match renderer.run.as_deref() {
            Some(run) => format!("Lettere PIN · Lotto {}", run.marks.batch),
            None => "Lettera PIN · Sportello".to_owned(),
        };
        w.object(METADATA, &pdfa::metadata_object(&title, &created))?;
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

    /// The next free object number (objects from 7 on are written in number order).
    fn next_object(&self) -> usize {
        self.offsets.len()
    }

    /// Renders `mailer` and appends it as the next page.
    ///
    /// # Errors
    /// As [`PrintRenderer::render_page`], and [`Error::Io`] if the sink fails.
    pub fn add_page(&mut self, mailer: &Mailer<'_>) -> Result<()> {
        let page = self.renderer.render_page(mailer)?;
        self.append(&page)
    }

    /// The resources object of a prepared shape, writing its forms and resources the first
    /// time.
    fn shape_resources(&mut self, shape: &Arc<PreparedPage>) -> Result<usize> {
        if let Some((_, res)) = self.shapes.iter().find(|(s, _)| Arc::ptr_eq(s, shape)) {
            return Ok(*res);
        }
        let mut names = String::new();
        for (i, form) in shape.forms.iter().enumerate() {
            let num = self.next_object();
            self.mark(num);
            let head = format!(
                "{num} 0 obj\n<< /Type /XObject /Subtype /Form /BBox {} /Resources {RESOURCES} 0 R /Length {} >>\nstream\n",
                self.media_box,
                form.len()
            );
            self.put(head.as_bytes())?;
            self.put(form)?;
            self.put(b"\nendstream\nendobj\n")?;
            names.push_str(&format!("/S{i} {num} 0 R "));
        }
        let res = self.next_object();
        self.object(
            res,
            format!(
                "<< /Font << /F1 3 0 R /F2 4 0 R /F3 5 0 R >> /XObject << {names}>> /ProcSet [/PDF /Text] >>"
            )
            .as_bytes(),
        )?;
        self.shapes.push((Arc::clone(shape), res));
        Ok(res)
    }

    /// Appends a page rendered by [`PrintRenderer::render_page`] (possibly on another thread).
    ///
    /// # Errors
    /// [`Error::Io`] if the sink fails.
    pub fn append(&mut self, page: &PageStream) -> Result<()> {
        let resources = match &page.shape {
            Some(shape) => self.shape_resources(shape)?,
            None => RESOURCES,
        };
        let num = self.next_object();
        let stream = page.stream.expose_secret();
        let mut s = std::mem::take(&mut self.scratch);
        s.clear();
        let mut n = Num::default();
        s.extend_from_slice(n.int(num as u64));
        s.extend_from_slice(b" 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox ");
        s.extend_from_slice(self.media_box.as_bytes());
        s.extend_from_slice(b" /Resources ");
        s.extend_from_slice(n.int(resources as u64));
        s.extend_from_slice(b" 0 R /Contents ");
        s.extend_from_slice(n.int(num as u64 + 1));
        s.extend_from_slice(b" 0 R >>\nendobj\n");
        let contents_at = s.len();
        s.extend_from_slice(n.int(num as u64 + 1));
        s.extend_from_slice(b" 0 obj\n<< /Length ");
        s.extend_from_slice(n.int(stream.len() as u64));
        s.extend_from_slice(b" >>\nstream\n");
        self.mark(num);
        self.mark(num + 1);
        self.offsets[num + 1] = self.pos + contents_at as u64;
        let written = self.put(&s);
        self.scratch = s;
        written?;
        self.put(stream)?;
        self.put(b"\nendstream\nendobj\n")?;
        self.pages.push(num);
        Ok(())
    }

    /// Pages appended so far.
    pub fn pages(&self) -> usize {
        self.pages.len()
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
        if self.pages.is_empty() {
            return Err(Error::NoPages);
        }
        let mut kids = String::with_capacity(self.pages.len() * 10 + 64);
        kids.push_str(&format!(
            "<< /Type /Pages /Count {} /Kids [",
            self.pages.len()
        ));
        for (i, num) in self.pages.iter().enumerate() {
            if i % 8 == 0 {
                kids.push('\n');
            }
            kids.push_str(&format!("{num} 0 R "));
        }
        kids.push_str("] >>");
        self.object(PAGES, kids.as_bytes())?;
        self.object(
            CATALOG,
            format!(
                "<< /Type /Catalog /Pages {PAGES} 0 R /Metadata {METADATA} 0 R {} >>",
                pdfa::output_intents(OUTPUT_PROFILE)
            )
            .as_bytes(),
        )?;
        let xref_at = self.pos;
        let count = self.offsets.len();
        let mut xref = String::with_capacity(count * 20 + 128);
        xref.push_str(&format!("xref\n0 {count}\n0000000000 65535 f \n"));
        for off in &self.offsets[1..] {
            // Each entry is exactly 20 bytes, end of line included.
            xref.push_str(&format!("{off:010} 00000 n \n"));
        }
        // No Info dictionary: the XMP metadata is the file's only description (PDF/A).
        let id = pdfa::document_id(self.created_nanos, count, xref_at);
        xref.push_str(&format!(
            "trailer\n<< /Size {count} /Root {CATALOG} 0 R {id} >>\nstartxref\n{xref_at}\n%%EOF\n"
        ));
        self.put(xref.as_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::{glyph_bytes, Num, N2};

    /// Reads a literal string's bytes back as a PDF reader does (the escapes we write, and a
    /// bare carriage return turned into a line feed).
    fn read_literal(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut it = bytes.iter();
        while let Some(&b) = it.next() {
            match b {
                b'\\' => match it.next() {
                    Some(b'r') => out.push(b'\r'),
                    Some(&e) => out.push(e),
                    None => panic!("a lone backslash"),
                },
                b'\r' => out.push(b'\n'),
                b'(' | b')' => panic!("an unescaped parenthesis"),
                b => out.push(b),
            }
        }
        out
    }

    #[test]
    fn glyph_ids_read_back_from_literal_strings() {
        for g in 0..=u16::MAX {
            let mut tmp = [0u8; 4];
            let n = glyph_bytes(g, &mut tmp);
            assert!((2..=4).contains(&n));
            assert_eq!(read_literal(&tmp[..n]), g.to_be_bytes(), "glyph {g:#06x}");
        }
    }

    #[test]
    fn numbers_have_two_decimals_like_the_float_formatter() {
        for v in [
            0.0f32, 1.0, 12.5, 841.89, 0.004, 0.006, 595.2756, 123.456, 7.1,
        ] {
            assert_eq!(N2(v).to_string(), format!("{v:.2}"), "{v}");
        }
        assert_eq!(N2(-3.25).to_string(), "-3.25");
        assert_eq!(N2(-0.5).to_string(), "-0.50");
        for v in [0u64, 7, 10, 42, 1_234_567_890_123, u64::MAX] {
            assert_eq!(Num::default().int(v), v.to_string().as_bytes());
        }
    }
}

//! The fonts embedded in print files: DejaVu Sans, DejaVu Sans Bold and DejaVu Sans Mono Bold
//! (the codes), subset to Latin (Basic, Latin-1, Extended-A, -B and Additional), Greek,
//! Cyrillic, combining marks and common punctuation.
//!
//! The base-14 PDF fonts cover WinAnsi only, so a holder named Ștefan, Łukasz, Γιώργος or
//! Ольга could not be printed. The TrueType files are vendored in `dispatch/fonts/` with
//! their licence (Bitstream Vera licence with DejaVu's public-domain changes: embedding and
//! subsetting are allowed), so the build depends on no system font.
//!
//! ## Design
//!
//! Each face is subset **once per process** (at the first page, with `subsetter`; a few
//! milliseconds) to every glyph the ranges above map to, glyph ids renumbered. A page's text
//! is written as 2-byte glyph ids (`Identity-H`) in hex strings; lookups go through a dense
//! table indexed by code point (up to [`LIMIT`]), so encoding a character is one array read.
//! Widths (in 1/1000 of the font size) come from the font's `hmtx`, so lines are measured and
//! wrapped with the widths the page is drawn with. Each file carries the same three subsets
//! (see [`super::pdf::PdfWriter`]), each with a `ToUnicode` map so text extraction
//! (`pdftotext`, screen readers, search) reads the names back.
//!
//! A character the subset does not have (another script, a private-use mark) is unprintable:
//! the caller gets [`crate::LayoutError::Unprintable`] naming the field and position (a
//! template's own text: [`crate::Error::Template`]).

use std::sync::OnceLock;

/// Code points covered: below this bound only (the dense lookup tables' size).
pub(crate) const LIMIT: usize = 0x2150;

/// The ranges subset into each face (inclusive).
const RANGES: [(u32, u32); 9] = [
    (0x20, 0x7E),     // Basic Latin
    (0xA0, 0x24F),    // Latin-1, Latin Extended-A and -B
    (0x250, 0x2FF),   // IPA extensions, spacing modifier letters (ʼ ˆ ˜)
    (0x300, 0x36F),   // combining diacritical marks (decomposed names)
    (0x370, 0x3FF),   // Greek
    (0x400, 0x52F),   // Cyrillic and its supplement
    (0x1E00, 0x1EFF), // Latin Extended Additional (Vietnamese, Welsh…)
    (0x2000, 0x20CF), // general punctuation, currency symbols
    (0x2100, 0x214F), // letterlike symbols (№, ™)
];

/// One embedded face, subset.
pub(crate) struct Face {
    /// PDF font name: a six-letter subset tag and the PostScript name.
    pub(crate) base_font: &'static str,
    /// The subset TrueType file.
    pub(crate) file: Vec<u8>,
    /// New glyph id of each code point below [`LIMIT`] (0: not in the subset).
    map: Vec<u16>,
    /// Advance width of each new glyph id, in 1/1000 of the font size.
    pub(crate) widths: Vec<u16>,
    /// The code point each new glyph id stands for (the lowest one), for `ToUnicode`.
    pub(crate) unicode: Vec<(u16, char)>,
    /// Font descriptor values, in 1/1000 of the font size.
    pub(crate) ascent: i32,
    pub(crate) descent: i32,
    pub(crate) cap_height: i32,
    pub(crate) bbox: [i32; 4],
    /// Fixed pitch (PDF descriptor flag 1).
    pub(crate) fixed: bool,
}

impl Face {
    /// The glyph id of `c`, if the subset has it.
    #[inline]
    pub(crate) fn glyph(&self, c: char) -> Option<u16> {
        let g = *self.map.get(c as usize)?;
        (g != 0).then_some(g)
    }

    /// Advance of `c` in 1/1000 of the font size (0 if not in the subset).
    #[inline]
    pub(crate) fn advance(&self, c: char) -> u32 {
        self.glyph(c)
            .and_then(|g| self.widths.get(usize::from(g)))
            .map_or(0, |w| u32::from(*w))
    }

    /// Width of `text` at `size` points.
    pub(crate) fn text_width(&self, text: &str, size: f32) -> f32 {
        let units: u32 = text.chars().map(|c| self.advance(c)).sum();
        units as f32 * size / 1000.0
    }

    /// Subsets `data` to [`RANGES`]. A font that does not parse gives an empty face (every
    /// character unprintable): the vendored files parse, which a unit test checks.
    fn load(data: &[u8], base_font: &'static str, fixed: bool) -> Face {
        let mut face = Face {
            base_font,
            file: Vec::new(),
            map: vec![0; LIMIT],
            widths: Vec::new(),
            unicode: Vec::new(),
            ascent: 0,
            descent: 0,
            cap_height: 0,
            bbox: [0; 4],
            fixed,
        };
        let Ok(ttf) = ttf_parser::Face::parse(data, 0) else {
            return face;
        };
        let upem = f32::from(ttf.units_per_em().max(1));
        let scale = |v: f32| (v * 1000.0 / upem).round() as i32;
        let mut remapper = subsetter::GlyphRemapper::new();
        remapper.remap(0);
        let mut old_ids: Vec<u16> = vec![0];
        for (from, to) in RANGES {
            for cp in from..=to {
                let Some(c) = char::from_u32(cp) else {
                    continue;
                };
                let Some(gid) = ttf.glyph_index(c) else {
                    continue;
                };
                if gid.0 == 0 {
                    continue;
                }
                let new = remapper.remap(gid.0);
                if usize::from(new) == old_ids.len() {
                    old_ids.push(gid.0);
                    face.unicode.push((new, c));
                }
                face.map[cp as usize] = new;
            }
        }
        let Ok(file) = subsetter::subset(data, 0, &remapper) else {
            face.map.iter_mut().for_each(|g| *g = 0);
            return face;
        };
        face.file = file;
        face.widths = old_ids
            .iter()
            .map(|&old| {
                let adv = ttf.glyph_hor_advance(ttf_parser::GlyphId(old)).unwrap_or(0);
                u16::try_from(scale(f32::from(adv))).unwrap_or(0)
            })
            .collect();
        face.ascent = scale(f32::from(ttf.ascender()));
        face.descent = scale(f32::from(ttf.descender()));
        face.cap_height = scale(f32::from(ttf.capital_height().unwrap_or(ttf.ascender())));
        let b = ttf.global_bounding_box();
        face.bbox = [
            scale(f32::from(b.x_min)),
            scale(f32::from(b.y_min)),
            scale(f32::from(b.x_max)),
            scale(f32::from(b.y_max)),
        ];
        face
    }
}

/// The three faces of a page.
pub(crate) struct Fonts {
    /// Body, address, labels: DejaVu Sans.
    pub(crate) regular: Face,
    /// Titles: DejaVu Sans Bold.
    pub(crate) bold: Face,
    /// Codes: DejaVu Sans Mono Bold.
    pub(crate) code: Face,
}

static FONTS: OnceLock<Fonts> = OnceLock::new();

/// The faces, subset at the first call.
pub(crate) fn fonts() -> &'static Fonts {
    FONTS.get_or_init(|| Fonts {
        regular: Face::load(
            include_bytes!("../../fonts/DejaVuSans.ttf"),
            "PLCARA+DejaVuSans",
            false,
        ),
        bold: Face::load(
            include_bytes!("../../fonts/DejaVuSans-Bold.ttf"),
            "PLCBLD+DejaVuSans-Bold",
            false,
        ),
        code: Face::load(
            include_bytes!("../../fonts/DejaVuSansMono-Bold.ttf"),
            "PLCMNO+DejaVuSansMono-Bold",
            true,
        ),
    })
}

/// Width of `text` in the regular face at `size` points.
pub(crate) fn text_width(text: &str, size: f32) -> f32 {
    fonts().regular.text_width(text, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendored_faces_cover_the_registrys_alphabets() {
        let f = fonts();
        for face in [&f.regular, &f.bold, &f.code] {
            assert!(!face.file.is_empty(), "{}", face.base_font);
            for c in
                "aàèìòùÀ’•–·ŁłȘșȚțŞşĂăÂâÎîŻżĆćŃńŚśŹźĘęĄąΓιώργοςΩΆОльгаЁёЖжЇїҐґ0123456789".chars()
            {
                assert!(face.glyph(c).is_some(), "{} lacks {c}", face.base_font);
            }
            assert!(face.glyph('\u{E000}').is_none());
            assert!(face.glyph('中').is_none());
            assert!(face.glyph('\t').is_none());
        }
        // Digits of the code face have one width; a space is narrower than an m.
        let w: Vec<u32> = ('0'..='9').map(|c| f.code.advance(c)).collect();
        assert!(w.iter().all(|x| *x == w[0] && *x > 0), "{w:?}");
        assert!(f.regular.advance(' ') < f.regular.advance('m'));
        assert!(
            (text_width("ii", 10.0) - 2.0 * f.regular.advance('i') as f32 / 100.0).abs() < 1e-3
        );
    }
}

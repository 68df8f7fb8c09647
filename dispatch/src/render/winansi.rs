//! WinAnsiEncoding (Windows-1252) for the PDF's standard Type 1 fonts, and Helvetica's glyph
//! widths, so that lines can be measured and wrapped without embedding a font.
//!
//! Widths are in 1/1000 of the font size, from Adobe's Helvetica AFM. Accented letters have
//! the width of their base letter, as in the AFM.

/// The WinAnsi byte of `c`, if the encoding has it.
#[inline]
pub(crate) fn encode(c: char) -> Option<u8> {
    let u = u32::from(c);
    match u {
        0x20..=0x7E | 0xA0..=0xFF => u8::try_from(u).ok(),
        _ => Some(match c {
            '€' => 0x80,
            '‚' => 0x82,
            'ƒ' => 0x83,
            '„' => 0x84,
            '…' => 0x85,
            '†' => 0x86,
            '‡' => 0x87,
            'ˆ' => 0x88,
            '‰' => 0x89,
            'Š' => 0x8A,
            '‹' => 0x8B,
            'Œ' => 0x8C,
            'Ž' => 0x8E,
            '‘' => 0x91,
            '’' => 0x92,
            '“' => 0x93,
            '”' => 0x94,
            '•' => 0x95,
            '–' => 0x96,
            '—' => 0x97,
            '˜' => 0x98,
            '™' => 0x99,
            'š' => 0x9A,
            '›' => 0x9B,
            'œ' => 0x9C,
            'ž' => 0x9E,
            'Ÿ' => 0x9F,
            _ => return None,
        }),
    }
}

/// Helvetica widths of ASCII 0x20..=0x7E.
const ASCII: [u16; 95] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, // sp–/
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, // 0–?
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778, // @–O
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556, // P–_
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, // `–o
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584, // p–~
];

/// Helvetica widths of 0x80..=0xFF in WinAnsi (0 where the code is unused).
const HIGH: [u16; 128] = [
    556, 0, 222, 556, 333, 1000, 556, 556, 333, 1000, 667, 333, 1000, 0, 611, 0, // 0x80
    0, 222, 222, 333, 333, 350, 556, 1000, 333, 1000, 500, 333, 944, 0, 500, 667, // 0x90
    278, 333, 556, 556, 556, 556, 260, 556, 333, 737, 370, 556, 584, 333, 737, 333, // 0xA0
    400, 584, 333, 333, 333, 556, 537, 278, 333, 333, 365, 556, 834, 834, 834, 611, // 0xB0
    667, 667, 667, 667, 667, 667, 1000, 722, 667, 667, 667, 667, 278, 278, 278, 278, // 0xC0
    722, 722, 778, 778, 778, 778, 778, 584, 778, 722, 722, 722, 722, 667, 667, 611, // 0xD0
    556, 556, 556, 556, 556, 556, 889, 500, 556, 556, 556, 556, 278, 278, 278, 278, // 0xE0
    556, 556, 556, 556, 556, 556, 556, 584, 611, 556, 556, 556, 556, 500, 556, 500, // 0xF0
];

/// Width of one WinAnsi byte in Helvetica, in 1/1000 of the font size.
#[inline]
pub(crate) fn helvetica_width(b: u8) -> u32 {
    let w = match b {
        0x20..=0x7E => ASCII[usize::from(b - 0x20)],
        0x80..=0xFF => HIGH[usize::from(b - 0x80)],
        _ => 0,
    };
    u32::from(w)
}

/// Width of `text` in Helvetica at `size` points; characters outside WinAnsi count as an `m`.
pub(crate) fn text_width(text: &str, size: f32) -> f32 {
    let units: u32 = text
        .chars()
        .map(|c| match u32::from(c) {
            // Printable ASCII, the usual case: straight from the table.
            u @ 0x20..=0x7E => u32::from(ASCII[(u - 0x20) as usize]),
            _ => encode(c).map_or(833, helvetica_width),
        })
        .sum();
    units as f32 * size / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn italian_letters_and_quotes_encode() {
        for (c, b) in [
            ('à', 0xE0),
            ('è', 0xE8),
            ('é', 0xE9),
            ('ì', 0xEC),
            ('ò', 0xF2),
            ('ù', 0xF9),
            ('À', 0xC0),
            ('È', 0xC8),
            ('É', 0xC9),
            ('Ì', 0xCC),
            ('Ò', 0xD2),
            ('Ù', 0xD9),
            ('’', 0x92),
            ('•', 0x95),
            ('–', 0x96),
            ('·', 0xB7),
        ] {
            assert_eq!(encode(c), Some(b), "{c}");
        }
        assert_eq!(encode('ł'), None);
        assert_eq!(encode('\t'), None);
        assert_eq!(helvetica_width(b'a'), 556);
        assert_eq!(helvetica_width(0xE0), 556);
        assert_eq!(helvetica_width(b'~'), 584);
        assert!((text_width("ii", 10.0) - 4.44).abs() < 1e-3);
    }
}

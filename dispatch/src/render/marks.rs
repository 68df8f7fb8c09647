//! What a print facility needs on every page besides the letter: a machine-readable code, the
//! inserter's control marks, and the date and batch of the run.
//!
//! - **Data Matrix** (ECC 200, crate `datamatrix`), drawn as a 1-bit image mask at the top
//!   right: the text [`ScanCode`] writes, `PLICO;<mailer number>;<masked serial>` (`-` for a
//!   page without number, e.g. the counter's), the serial masked as on the page with `*` for
//!   `•` and no blanks. A scanner at insertion or on a returned envelope gives back the mailer
//!   number, which is what `plico mailers outcomes` records. It holds no digit of a code and
//!   never the full serial.
//! - **OMR marks** (inserter control), a column of short bars at a configurable place
//!   ([`super::layout::Layout`]`::omr_*`), one position every 1/6 inch, read from the top:
//!
//!   | position | mark present when |
//!   |---|---|
//!   | 0 | always (start / benchmark) |
//!   | 1 | last page of the mailer (end of collation: insert now) |
//!   | 2, 3, 4 | page count of the mailer, binary, least significant bit first (1–7) |
//!   | 5, 6 | sequence check: the mailer number modulo 4, least significant bit first |
//!   | 7 | parity: the number of marks on the page is even |
//!
//!   A mailer is one page today, so every page carries positions 0, 1 and 2.
//! - **Date and batch**: `Stampato il <date> · Lotto <batch> · pag. 1/1` beside the code
//!   (the counter's page says `Sportello` for the batch).

use std::time::{SystemTime, UNIX_EPOCH};

/// Positions of the OMR track.
pub const OMR_POSITIONS: usize = 8;

/// The run a page belongs to, printed on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMarks {
    /// The batch reference (the run's label).
    pub batch: String,
    /// The print date, `YYYY-MM-DD`.
    pub date: String,
}

/// The content of a page's Data Matrix: the mailer number and the masked serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCode {
    /// The mailer number, if the page has one.
    pub number: Option<u64>,
    /// The serial masked as printed (`*` for hidden characters, no blanks).
    pub masked_serial: String,
}

impl ScanCode {
    /// The code of a page: `number` and the serial masked by [`super::mask_serial`].
    pub fn of(number: Option<u64>, serial: &str) -> ScanCode {
        let masked_serial = super::mask_serial(serial)
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '*' })
            .collect();
        ScanCode {
            number,
            masked_serial,
        }
    }

    /// The text encoded in the Data Matrix.
    pub fn text(&self) -> String {
        match self.number {
            Some(n) => format!("PLICO;{n};{}", self.masked_serial),
            None => format!("PLICO;-;{}", self.masked_serial),
        }
    }

    /// Reads a scanned text back; `None` if it is not a plico code.
    pub fn parse(text: &str) -> Option<ScanCode> {
        let mut parts = text.trim().split(';');
        if parts.next()? != "PLICO" {
            return None;
        }
        let number = match parts.next()? {
            "-" => None,
            n => Some(n.parse().ok()?),
        };
        let masked_serial = parts.next()?.to_owned();
        let ok = parts.next().is_none()
            && !masked_serial.is_empty()
            && masked_serial
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'*');
        ok.then_some(ScanCode {
            number,
            masked_serial,
        })
    }
}

/// The square symbol sizes a page code may take, smallest first (ECC 200).
const SQUARES: [datamatrix::SymbolSize; 13] = {
    use datamatrix::SymbolSize::*;
    [
        Square10, Square12, Square14, Square16, Square18, Square20, Square22, Square24, Square26,
        Square32, Square36, Square40, Square44,
    ]
};

/// One symbol size, prepared once a process from the `datamatrix` crate's own error
/// correction and placement. A symbol is linear in the bits of its data codewords: the
/// Reed-Solomon codewords are sums (XOR) of multiples of the data, and each codeword bit sets
/// one module. So the image of a text is the image of all-zero data (the finder, timing and
/// corner patterns) XOR, for every set bit of every data codeword, the image that bit alone
/// flips (its own module and the error-correction modules it changes). Both come from the
/// crate (`encode_error`, `MatrixMap`), once; a page then costs a few hundred word XORs, where
/// encoding and placing afresh was most of a page's time.
struct Placement {
    width: usize,
    height: usize,
    /// Data codewords the symbol holds (error correction apart).
    data_codewords: usize,
    /// Bytes of the image: rows from the top, each padded to whole bytes.
    bytes: usize,
    /// The image of all-zero data, in native-endian words (the bytes in order).
    fixed: Vec<u64>,
    /// What bit `b` (0 = most significant) of data codeword `i` flips, as `fixed`: the words
    /// from `(8 * i + b) * fixed.len()`.
    flips: Vec<u64>,
}

impl Placement {
    fn of(size: datamatrix::SymbolSize) -> Option<Placement> {
        // The crate says how many data codewords the size holds: those of an empty text.
        let data_codewords = datamatrix::DataMatrixBuilder::new()
            .with_encodation_types(datamatrix::EncodationType::Ascii)
            .with_symbol_list(size)
            .encode(b"")
            .ok()?
            .data_codewords()
            .len();
        let image = |data: &[u8]| {
            let mut codewords = data.to_vec();
            codewords.extend(datamatrix::errorcode::encode_error(data, size));
            let bitmap =
                datamatrix::placement::MatrixMap::new_with_codewords(&codewords, size).bitmap();
            let (w, h) = (bitmap.width(), bitmap.height());
            (packed(bitmap.bits(), w, h), w, h)
        };
        let mut data = vec![0u8; data_codewords];
        let (fixed, width, height) = image(&data);
        let fixed_words = words(&fixed);
        let mut flips = Vec::with_capacity(8 * data_codewords * fixed_words.len());
        for i in 0..data_codewords {
            for b in 0..8 {
                data[i] = 0x80 >> b;
                let (image, _, _) = image(&data);
                flips.extend(words(&image).iter().zip(&fixed_words).map(|(a, z)| a ^ z));
            }
            data[i] = 0;
        }
        Some(Placement {
            width,
            height,
            data_codewords,
            bytes: fixed.len(),
            fixed: fixed_words,
            flips,
        })
    }

    /// The placement of `SQUARES[index]`, built at the first call.
    fn get(index: usize) -> Option<&'static Placement> {
        static PLACEMENTS: [std::sync::OnceLock<Option<Placement>>; SQUARES.len()] =
            [const { std::sync::OnceLock::new() }; SQUARES.len()];
        let size = *SQUARES.get(index)?;
        PLACEMENTS[index]
            .get_or_init(|| Placement::of(size))
            .as_ref()
    }
}

/// `bytes` as native-endian words, the last one padded with zeros.
fn words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_ne_bytes(w)
        })
        .collect()
}

/// `bits` (row-major, `w` × `h`, true = dark) packed into rows of whole bytes.
fn packed(bits: &[bool], w: usize, h: usize) -> Vec<u8> {
    let row_bytes = w.div_ceil(8);
    let mut out = vec![0u8; row_bytes * h];
    for (k, dark) in bits.iter().enumerate() {
        if *dark {
            out[(k / w) * row_bytes + (k % w) / 8] |= 0x80 >> (k % w % 8);
        }
    }
    out
}

/// Data codewords of `text` in ASCII encodation (ISO/IEC 16022 5.2.3: a pair of digits is one
/// codeword, any other byte below 128 its value plus one, a byte above it an upper shift
/// first), padded to `capacity` (a pad codeword, then the 253-state randomised pads), as the
/// `datamatrix` crate writes them.
fn ascii_codewords(text: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        match text.get(i + 1) {
            Some(d) if c.is_ascii_digit() && d.is_ascii_digit() => {
                out.push((c - b'0') * 10 + (d - b'0') + 130);
                i += 2;
                continue;
            }
            _ => {}
        }
        if c < 128 {
            out.push(c + 1);
        } else {
            out.push(235);
            out.push(c - 128 + 1);
        }
        i += 1;
    }
}

/// Pads `codewords` to `capacity` data codewords: 129, then the 253-state randomised pads.
fn pad_codewords(codewords: &mut Vec<u8>, capacity: usize) {
    if codewords.len() < capacity {
        codewords.push(129);
    }
    while codewords.len() < capacity {
        let pos = codewords.len() + 1;
        let pad = 129 + ((149 * pos) % 253) as u16 + 1;
        codewords.push(if pad <= 254 {
            pad as u8
        } else {
            (pad - 254) as u8
        });
    }
}

/// The Data Matrix of `text` as a 1-bit image mask: rows from the top, each padded to whole
/// bytes, a set bit a dark module; and the symbol's width and height in modules. `None` if it
/// cannot be encoded. Drawn as an inline image mask, the symbol takes about 70 bytes of the
/// page instead of a rectangle per run of modules (which made pages seven times larger).
///
/// ASCII encodation only (digit pairs pack into one codeword each; the crate's search of all
/// six modes was most of a print run's time), the smallest square symbol that holds the text;
/// the Reed-Solomon codewords and the placement are the `datamatrix` crate's, taken once a
/// symbol size ([`Placement`]). The result is the crate's own bitmap of the same text (a unit
/// test compares them).
pub(crate) fn data_matrix(text: &str) -> Option<(Vec<u8>, usize, usize)> {
    let mut codewords = Vec::with_capacity(64);
    ascii_codewords(text.as_bytes(), &mut codewords);
    let placement = (0..SQUARES.len())
        .filter_map(Placement::get)
        .find(|p| p.data_codewords >= codewords.len())?;
    pad_codewords(&mut codewords, placement.data_codewords);
    let mut image = placement.fixed.clone();
    let n = image.len();
    for (i, cw) in codewords.iter().enumerate() {
        for b in 0..8 {
            if cw & (0x80 >> b) != 0 {
                let at = (8 * i + b) * n;
                let flip = placement.flips.get(at..at + n)?;
                for (word, f) in image.iter_mut().zip(flip) {
                    *word ^= f;
                }
            }
        }
    }
    let mut bits: Vec<u8> = image.iter().flat_map(|w| w.to_ne_bytes()).collect();
    bits.truncate(placement.bytes);
    Some((bits, placement.width, placement.height))
}

/// The same image through the crate's whole encoder (the reference of [`data_matrix`]).
#[cfg(test)]
fn data_matrix_by_the_crate(text: &str) -> Option<(Vec<u8>, usize, usize)> {
    let code = datamatrix::DataMatrixBuilder::new()
        .with_encodation_types(datamatrix::EncodationType::Ascii)
        .with_symbol_list(datamatrix::SymbolList::default().enforce_square())
        .encode(text.as_bytes())
        .ok()?;
    let bitmap = code.bitmap();
    let (w, h) = (bitmap.width(), bitmap.height());
    let bits = packed(bitmap.bits(), w, h);
    Some((bits, w, h))
}

/// The OMR track of page `page` (0-based) of a mailer of `pages` pages with `number`.
pub(crate) fn omr_track(page: usize, pages: usize, number: u64) -> [bool; OMR_POSITIONS] {
    let mut t = [false; OMR_POSITIONS];
    t[0] = true;
    t[1] = page + 1 == pages;
    for bit in 0..3 {
        t[2 + bit] = (pages >> bit) & 1 == 1;
    }
    for bit in 0..2 {
        t[5 + bit] = (number >> bit) & 1 == 1;
    }
    let marks = t[..7].iter().filter(|m| **m).count();
    t[7] = marks % 2 == 1;
    t
}

/// Today's date (UTC) as `YYYY-MM-DD`.
pub fn today_utc() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    civil_date(days as i64)
}

/// The date `days` days after 1970-01-01 (Howard Hinnant's civil-from-days algorithm).
pub(crate) fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_codes_round_trip_and_hide_the_serial() {
        let c = ScanCode::of(Some(1234), "8039000012341234");
        assert_eq!(c.text(), "PLICO;1234;8039********1234");
        assert_eq!(ScanCode::parse(&c.text()), Some(c));
        let counter = ScanCode::of(None, "12345678");
        assert_eq!(counter.text(), "PLICO;-;******78");
        assert_eq!(ScanCode::parse(&counter.text()), Some(counter));
        for bad in [
            "",
            "PLICO;x;1",
            "PLICO;1;",
            "OTHER;1;8039",
            "PLICO;1;80 39",
            "PLICO;1;a;b",
        ] {
            assert_eq!(ScanCode::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn omr_track_has_start_end_count_sequence_and_even_parity() {
        for number in 0..8u64 {
            let t = omr_track(0, 1, number);
            assert!(t[0] && t[1] && t[2] && !t[3] && !t[4]);
            assert_eq!((t[5], t[6]), (number & 1 == 1, number & 2 == 2));
            assert_eq!(t.iter().filter(|m| **m).count() % 2, 0, "{t:?}");
        }
        let first_of_three = omr_track(0, 3, 0);
        assert!(!first_of_three[1] && first_of_three[2] && first_of_three[3]);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(19_723), "2024-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(today_utc().len(), 10);
    }

    #[test]
    fn data_matrix_equals_the_crates_own_encoding() {
        let mut texts: Vec<String> = vec![
            String::new(),
            "1".into(),
            "PLICO;-;******78".into(),
            "PLICO;18446744073709551615;8039************1234".into(),
            "é€ü".into(),
        ];
        for n in [
            0u64, 7, 42, 999, 1000, 65_535, 999_999, 1_000_000, 12_345_678,
        ] {
            for serial in [
                "8039000012341234",
                "12345678",
                "803800000000000123456",
                "A1",
            ] {
                texts.push(ScanCode::of(Some(n), serial).text());
            }
        }
        for len in 0..60 {
            texts.push(
                "0123456789;A*"
                    .chars()
                    .cycle()
                    .skip(len)
                    .take(len)
                    .collect(),
            );
        }
        for text in &texts {
            assert_eq!(data_matrix(text), data_matrix_by_the_crate(text), "{text}");
        }
        assert!(data_matrix(&"x".repeat(200)).is_none());
    }

    #[test]
    fn data_matrix_of_a_page_code_is_small() {
        let (bits, w, h) = data_matrix("PLICO;1234567;8039********1234").unwrap();
        assert_eq!(w, h);
        assert!(w <= 22, "{w}");
        assert_eq!(bits.len(), w.div_ceil(8) * h);
        // The finder pattern: the left column and the bottom row are all dark.
        assert!((0..h).all(|y| bits[y * w.div_ceil(8)] & 0x80 != 0));
        let last = &bits[(h - 1) * w.div_ceil(8)..];
        assert!((0..w).all(|x| last[x / 8] & (0x80 >> (x % 8)) != 0));
    }
}

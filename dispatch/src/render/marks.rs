//! What a print facility needs on every page besides the letter: a machine-readable code, the
//! inserter's control marks, and the date and batch of the run.
//!
//! - **Data Matrix** (ECC 200, crate `datamatrix`), drawn as vector rectangles at the top
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

/// The Data Matrix of `text` as a 1-bit image mask: rows from the top, each padded to whole
/// bytes, a set bit a dark module; and the symbol's width and height in modules. `None` if it
/// cannot be encoded. Drawn as an inline image mask, the symbol takes about 70 bytes of the
/// page instead of a rectangle per run of modules (which made pages seven times larger).
pub(crate) fn data_matrix(text: &str) -> Option<(Vec<u8>, usize, usize)> {
    // ASCII encodation only: digit pairs pack into one codeword each, and the encoder then
    // has one plan to cost instead of searching all six modes, which made the search most of
    // a print run's time (`plico bench mailers`: 9,941 mailers/s with it).
    let code = datamatrix::DataMatrixBuilder::new()
        .with_encodation_types(datamatrix::EncodationType::Ascii)
        .with_symbol_list(datamatrix::SymbolList::default().enforce_square())
        .encode(text.as_bytes())
        .ok()?;
    let bitmap = code.bitmap();
    let (w, h) = (bitmap.width(), bitmap.height());
    let row_bytes = w.div_ceil(8);
    let mut bits = vec![0u8; row_bytes * h];
    for (x, y) in bitmap.pixels() {
        if let Some(byte) = bits.get_mut(y * row_bytes + x / 8) {
            *byte |= 0x80 >> (x % 8);
        }
    }
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

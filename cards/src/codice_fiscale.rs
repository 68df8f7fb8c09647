//! The Italian codice fiscale of a natural person: validation and normalisation.
//!
//! A codice fiscale has 16 characters (1-based positions):
//!
//! ```text
//!  1-3  surname letters     RSS
//!  4-6  given-name letters  MRA
//!  7-8  year of birth       85      digits (or omocodia letters)
//!  9    month of birth      T       one of ABCDEHLMPRST (January … December)
//! 10-11 day of birth        10      01-31, plus 40 for women: 41-71
//! 12    municipality letter A       Belfiore code: a letter …
//! 13-15 municipality digits 562     … and 3 digits (or omocodia letters)
//! 16    check character     S       computed from the first 15 (odd/even tables)
//! ```
//!
//! *Omocodia*: when two people would get the same code, the Agenzia delle Entrate replaces
//! digits, from the right, by the letters `LMNPQRSTUV` (for 0–9) and recomputes the check
//! character. Any of the seven digit positions (7, 8, 10, 11, 13, 14, 15) may hold such a
//! letter; the day is checked after decoding them.
//!
//! [`normalise`] trims and upper-cases, then checks all of the above, the day against its month
//! (29 February is allowed in any year: the century is not in the code) and the check
//! character. The result is the form to store, compare and index.
//!
//! What it does not do: the temporary 11-digit numeric codes (given before a definitive code is
//! assigned) and the codes of companies are out of scope and are refused with a length error;
//! it does not check that the municipality code exists, nor compare the code with a name or a
//! birth date (a code, once assigned, stays valid even when it disagrees with them).
//!
//! # Security
//! A codice fiscale is personal data. [`CodiceFiscaleError`] holds only counts and positions,
//! never a character of the input, so no message can echo the code.

/// Length of a codice fiscale, in characters.
pub const LEN: usize = 16;

/// The month letters, January to December.
pub const MONTH_LETTERS: &str = "ABCDEHLMPRST";

/// The omocodia letters standing for the digits 0 to 9.
pub const OMOCODIA_LETTERS: &str = "LMNPQRSTUV";

/// 0-based positions that hold digits, or omocodia letters in their place.
const DIGIT_POSITIONS: [usize; 7] = [6, 7, 9, 10, 12, 13, 14];

/// Values of the characters in odd (1-based) positions, for `A`..=`Z`; a digit counts as the
/// letter of the same index (`0` as `A`, …, `9` as `J`).
const ODD_VALUES: [u8; 26] = [
    1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24, 23,
];

/// Why a text is not a valid codice fiscale. Holds only counts and positions (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodiceFiscaleError {
    /// Nothing but whitespace.
    #[error("codice fiscale is empty")]
    Empty,
    /// Not 16 characters after trimming.
    #[error("codice fiscale has {0} {unit}, wants 16", unit = if *.0 == 1 { "character" } else { "characters" })]
    Length(usize),
    /// A character that is not an ASCII letter or digit.
    #[error("codice fiscale has a character other than A-Z and 0-9 at position {0}")]
    Charset(usize),
    /// A digit among the six name letters.
    #[error("codice fiscale has a digit at position {0}, where the name part wants a letter")]
    NameLetter(usize),
    /// A letter other than `LMNPQRSTUV` where a digit belongs.
    #[error("codice fiscale wants a digit or an omocodia letter (LMNPQRSTUV) at position {0}")]
    Digit(usize),
    /// Position 9 is not a month letter.
    #[error("month letter is not one of ABCDEHLMPRST")]
    Month,
    /// The day is not 01–31 or 41–71.
    #[error("day of birth is not 01-31 (men) or 41-71 (women)")]
    Day,
    /// The day is past the end of its month.
    #[error("day of birth does not exist in its month")]
    DayInMonth,
    /// Position 12 is a digit.
    #[error("municipality code does not start with a letter")]
    Municipality,
    /// Position 16 is a digit.
    #[error("check character is not a letter")]
    CheckNotLetter,
    /// The check character is not the one computed from the first 15.
    #[error("check character does not match")]
    Check,
}

/// Validates a codice fiscale and returns its normal form: trimmed, upper-case.
///
/// # Errors
/// The first problem found, checked in this order: empty, length, characters, the letter and
/// digit positions, month, day, municipality, check character.
///
/// # Security
/// The error never contains the input.
pub fn normalise(input: &str) -> Result<String, CodiceFiscaleError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(CodiceFiscaleError::Empty);
    }
    let count = text.chars().count();
    if count != LEN {
        return Err(CodiceFiscaleError::Length(count));
    }
    if let Some(i) = text.chars().position(|c| !c.is_ascii_alphanumeric()) {
        return Err(CodiceFiscaleError::Charset(i + 1));
    }
    // All ASCII from here on, so bytes are characters.
    let cf = text.to_ascii_uppercase();
    let b = cf.as_bytes();

    if let Some(i) = b[..6].iter().position(u8::is_ascii_digit) {
        return Err(CodiceFiscaleError::NameLetter(i + 1));
    }
    let mut digits = [0u8; LEN];
    for i in DIGIT_POSITIONS {
        digits[i] = digit_value(b[i]).ok_or(CodiceFiscaleError::Digit(i + 1))?;
    }
    let month = MONTH_LETTERS
        .bytes()
        .position(|m| m == b[8])
        .ok_or(CodiceFiscaleError::Month)?;
    let day = digits[9] * 10 + digits[10];
    let day = match day {
        1..=31 => day,
        41..=71 => day - 40,
        _ => return Err(CodiceFiscaleError::Day),
    };
    // February may have 29 days: the code holds the year without its century.
    const MONTH_DAYS: [u8; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if day > MONTH_DAYS[month] {
        return Err(CodiceFiscaleError::DayInMonth);
    }
    if !b[11].is_ascii_uppercase() {
        return Err(CodiceFiscaleError::Municipality);
    }
    if !b[15].is_ascii_uppercase() {
        return Err(CodiceFiscaleError::CheckNotLetter);
    }
    if check_value(&b[..15]) != b[15] {
        return Err(CodiceFiscaleError::Check);
    }
    Ok(cf)
}

/// Whether `input` is a valid codice fiscale (see [`normalise`]).
#[cfg(test)]
pub fn is_valid(input: &str) -> bool {
    normalise(input).is_ok()
}

/// The check character for the first 15 characters of a code, or `None` if `first15` is not
/// 15 ASCII letters and digits. Letters may be in either case.
pub fn check_character(first15: &str) -> Option<char> {
    let b = first15.as_bytes();
    if b.len() != LEN - 1 || !b.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let upper: Vec<u8> = b.iter().map(u8::to_ascii_uppercase).collect();
    Some(char::from(check_value(&upper)))
}

/// The check character of 15 upper-case ASCII letters and digits.
fn check_value(first15: &[u8]) -> u8 {
    let sum: u32 = first15
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            // Index of the character: digits count as A..J in both tables.
            let idx = if c.is_ascii_digit() {
                c - b'0'
            } else {
                c - b'A'
            };
            let value = if i % 2 == 0 {
                // 1-based odd position.
                ODD_VALUES[usize::from(idx % 26)]
            } else {
                idx
            };
            u32::from(value)
        })
        .sum();
    // sum % 26 < 26, so the cast cannot truncate.
    b'A' + (sum % 26) as u8
}

/// The digit a digit position holds: the digit itself or the omocodia letter's digit.
fn digit_value(c: u8) -> Option<u8> {
    if c.is_ascii_digit() {
        return Some(c - b'0');
    }
    OMOCODIA_LETTERS
        .bytes()
        .position(|l| l == c)
        .and_then(|p| u8::try_from(p).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use CodiceFiscaleError as E;

    /// The first 15 characters plus their computed check character.
    fn with_check(first15: &str) -> String {
        format!("{first15}{}", check_character(first15).unwrap())
    }

    #[test]
    fn the_classic_example_is_valid() {
        assert_eq!(check_character("RSSMRA85T10A562"), Some('S'));
        assert_eq!(normalise("RSSMRA85T10A562S").unwrap(), "RSSMRA85T10A562S");
        assert!(is_valid("RSSMRA85T10A562S"));
        // Other well-formed examples, checked against an independent implementation.
        for cf in ["MRTMTT91D08F205J", "BNCLRA70A41H501B", "VRDGPP13B29L219S"] {
            assert_eq!(normalise(cf).as_deref(), Ok(cf));
        }
    }

    #[test]
    fn normalises_case_and_surrounding_whitespace() {
        assert_eq!(
            normalise("  rssmra85t10a562s\t").unwrap(),
            "RSSMRA85T10A562S"
        );
        assert_eq!(normalise("RssMra85t10A562s").unwrap(), "RSSMRA85T10A562S");
        assert_eq!(check_character("rssmra85t10a562"), Some('S'));
        assert_eq!(check_character("RSSMRA85T10A56"), None);
        assert_eq!(check_character("RSSMRA85T10A56-"), None);
    }

    #[test]
    fn omocodia_variants() {
        // Computed by an independent implementation of the algorithm.
        for cf in [
            "RSSMRA85T10A56NH",
            "RSSMRA85T10A5SNT",
            "RSSMRA85T10ARSNO",
            "RSSMRA85T1LARSNR",
            "RSSMRA85TMLARSNC",
            "RSSMRA8RTMLARSNO",
            "RSSMRAURTMLARSNL",
        ] {
            assert_eq!(normalise(cf).as_deref(), Ok(cf));
        }
        // Every digit position, alone, with its omocodia letter.
        let base = b"RSSMRA85T10A562";
        for pos in DIGIT_POSITIONS {
            let mut v = base.to_vec();
            v[pos] = OMOCODIA_LETTERS.as_bytes()[usize::from(v[pos] - b'0')];
            let cf = with_check(std::str::from_utf8(&v).unwrap());
            assert!(is_valid(&cf), "position {}", pos + 1);
        }
        // Omocodia in the day is decoded before the day is checked: "4M" is 41, a woman's 1st.
        assert!(is_valid(&with_check("BNCLRA70A4MH501")));
        // "QL" is 40: not a day.
        assert_eq!(normalise(&with_check("BNCLRA70AQLH501")), Err(E::Day));
        // A letter that is not an omocodia letter.
        assert_eq!(normalise(&with_check("RSSMRA8AT10A562")), Err(E::Digit(8)));
        assert_eq!(normalise(&with_check("RSSMRA85T10A56K")), Err(E::Digit(15)));
    }

    #[test]
    fn wrong_check_character() {
        for c in 'A'..='Z' {
            let cf = format!("RSSMRA85T10A562{c}");
            if c == 'S' {
                assert!(is_valid(&cf));
            } else {
                assert_eq!(normalise(&cf), Err(E::Check), "{c}");
            }
        }
        assert_eq!(normalise("RSSMRA85T10A5620"), Err(E::CheckNotLetter));
        // One changed character anywhere is caught.
        assert_eq!(normalise("RSSMRA85T10A563S"), Err(E::Check));
        assert_eq!(normalise("RSSMRB85T10A562S"), Err(E::Check));
        // Two adjacent characters swapped.
        assert_eq!(normalise("RSSMRA58T10A562S"), Err(E::Check));
    }

    #[test]
    fn lengths_and_characters() {
        assert_eq!(normalise(""), Err(E::Empty));
        assert_eq!(normalise("   "), Err(E::Empty));
        assert_eq!(normalise("RSSMRA85T10A562"), Err(E::Length(15)));
        assert_eq!(normalise("RSSMRA85T10A562SS"), Err(E::Length(17)));
        assert_eq!(normalise("R"), Err(E::Length(1)));
        // Temporary numeric codes (11 digits) are out of scope.
        assert_eq!(normalise("12345678901"), Err(E::Length(11)));
        assert_eq!(normalise("RSS MRA85T10A562"), Err(E::Charset(4)));
        assert_eq!(normalise("RSSMRÀ85T10A562S"), Err(E::Charset(6)));
        assert_eq!(normalise("RSSMRA85T10A562-"), Err(E::Charset(16)));
        assert_eq!(normalise("RSSMR485T10A562S"), Err(E::NameLetter(6)));
        assert_eq!(normalise("1SSMRA85T10A562S"), Err(E::NameLetter(1)));
        assert_eq!(normalise("RSSMRA85T10 562S"), Err(E::Charset(12)));
        assert_eq!(
            normalise(&with_check("RSSMRA85T105562")),
            Err(E::Municipality)
        );
        assert_eq!(normalise(&with_check("RSSMRAA5T10A562")), Err(E::Digit(7)));
    }

    #[test]
    fn month_and_day() {
        assert_eq!(normalise(&with_check("RSSMRA85F10A562")), Err(E::Month));
        assert_eq!(normalise(&with_check("RSSMRA85510A562")), Err(E::Month));
        for (month, day, ok) in [
            ('A', "31", true),
            ('A', "00", false),
            ('A', "32", false),
            ('A', "40", false),
            ('A', "41", true),
            ('A', "71", true),
            ('A', "72", false),
            ('A', "99", false),
            ('B', "29", true),
            ('B', "69", true),
            ('B', "30", false),
            ('B', "70", false),
            ('D', "30", true),
            ('D', "31", false),
            ('D', "71", false),
            ('T', "31", true),
            ('S', "31", false),
        ] {
            let cf = with_check(&format!("RSSMRA85{month}{day}A562"));
            let got = normalise(&cf);
            if ok {
                assert!(got.is_ok(), "{month}{day}: {got:?}");
            } else {
                let want = match day {
                    "00" | "32" | "40" | "72" | "99" => E::Day,
                    _ => E::DayInMonth,
                };
                assert_eq!(got, Err(want), "{month}{day}");
            }
        }
        // Every month letter, in order.
        for m in MONTH_LETTERS.chars() {
            assert!(is_valid(&with_check(&format!("RSSMRA85{m}28A562"))));
        }
    }

    #[test]
    fn messages_say_what_is_wrong_and_never_contain_the_input() {
        let cases = [
            (
                "RSSMRA85T10A562",
                "codice fiscale has 15 characters, wants 16",
            ),
            ("RSSMRA85T10A562X", "check character does not match"),
            (
                "RSSMRA85F10A562S",
                "month letter is not one of ABCDEHLMPRST",
            ),
            (
                "RSSMRA85T99A562S",
                "day of birth is not 01-31 (men) or 41-71 (women)",
            ),
            (
                "RSSMRA85D31A562S",
                "day of birth does not exist in its month",
            ),
            (
                "RSSMR485T10A562S",
                "codice fiscale has a digit at position 6, where the name part wants a letter",
            ),
            (
                "RSSMRA85T10A56KS",
                "codice fiscale wants a digit or an omocodia letter (LMNPQRSTUV) at position 15",
            ),
            (
                "RSSMRA85T105562S",
                "municipality code does not start with a letter",
            ),
            ("RSSMRA85T10A5620", "check character is not a letter"),
            (
                "RSSMRA85T10A562Ü",
                "codice fiscale has a character other than A-Z and 0-9 at position 16",
            ),
            ("R", "codice fiscale has 1 character, wants 16"),
        ];
        for (input, want) in cases {
            let msg = normalise(input).unwrap_err().to_string();
            assert_eq!(msg, want);
            for part in ["RSS", "MRA", "85", "T10", "A56", "562", "10A"] {
                assert!(!msg.contains(part), "{msg}");
            }
        }
    }
}

//! A holder's contacts: e-mail address and mobile phone number, validated and normalised.
//!
//! - [`normalise_email`]: one `@`; a local part of 1–64 characters in the RFC 5322 dot-atom
//!   form (letters, digits, ``!#$%&'*+-/=?^_`{|}~``, dots not first, last or doubled); a
//!   domain of at least two dot-separated labels of letters, digits and hyphens (1–63 each, no
//!   hyphen first or last, the last not all digits); at most 254 characters in all; no
//!   whitespace. The domain is lower-cased, the local part kept as written (it may be
//!   case-sensitive).
//! - [`normalise_mobile`]: spaces, dashes, dots and parentheses are dropped; `00` at the start
//!   becomes `+`; then either `+` and 8–15 digits (E.164, country code not starting with 0), or
//!   an Italian mobile written without prefix, `3` and 8 or 9 more digits, which gets `+39`. A
//!   `+39` number must be an Italian mobile too (`3`, 9–10 digits), since codes go to it by SMS.
//!   The result is E.164: `+393331234567`.
//!
//! What it does not do: quoted local parts, comments, IP-literal domains, international
//! domain names other than in their ASCII (`xn--`) form, non-ASCII local parts (SMTPUTF8);
//! whether a domain or number exists; mobile ranges of countries other than Italy.
//!
//! # Security
//! Contacts are personal data. [`EmailError`] and [`MobileError`] hold only counts and
//! positions, never a character of the input.

/// The longest e-mail address, in characters (RFC 5321 path limit less the angle brackets).
pub const MAX_EMAIL_LEN: usize = 254;

/// The longest local part (before the `@`), in characters.
pub const MAX_LOCAL_LEN: usize = 64;

/// The longest domain label, in characters.
pub const MAX_LABEL_LEN: usize = 63;

/// Fewest digits after `+` in an international number.
pub const MIN_E164_DIGITS: usize = 8;

/// Most digits after `+` (E.164).
pub const MAX_E164_DIGITS: usize = 15;

/// Why a text is not an acceptable e-mail address. Positions are 1-based characters of the
/// trimmed input; nothing of the input itself is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmailError {
    /// Nothing but whitespace.
    #[error("e-mail is empty")]
    Empty,
    /// More than [`MAX_EMAIL_LEN`] characters.
    #[error("e-mail has {0} characters, at most 254")]
    TooLong(usize),
    /// Whitespace inside the address.
    #[error("e-mail has whitespace at position {0}")]
    Whitespace(usize),
    /// Not exactly one `@`.
    #[error("e-mail has {0} @ signs, wants exactly one")]
    AtSigns(usize),
    /// Nothing before the `@`.
    #[error("e-mail has nothing before the @")]
    LocalEmpty,
    /// The local part is longer than [`MAX_LOCAL_LEN`].
    #[error("e-mail has {0} characters before the @, at most 64")]
    LocalTooLong(usize),
    /// A character the local part may not hold.
    #[error(
        "e-mail has a character not allowed before the @ at position {0} \
         (letters, digits, dots and !#$%&'*+-/=?^_`{{|}}~)"
    )]
    LocalChar(usize),
    /// A dot first, last or doubled in the local part.
    #[error("e-mail has a dot at the start or end of the part before the @, or two in a row")]
    LocalDots,
    /// Nothing after the `@`.
    #[error("e-mail has nothing after the @")]
    DomainEmpty,
    /// The domain has a single label.
    #[error("e-mail domain has no dot")]
    DomainNoDot,
    /// A character other than letters, digits, hyphen and dot in the domain.
    #[error(
        "e-mail domain has a character other than letters, digits, hyphen and dot at \
         position {0}"
    )]
    DomainChar(usize),
    /// An empty label: a dot first, last or doubled.
    #[error("e-mail domain has a dot at its start or end, or two in a row")]
    DomainDots,
    /// A label longer than [`MAX_LABEL_LEN`].
    #[error("e-mail domain has a label of {0} characters, at most 63")]
    LabelTooLong(usize),
    /// A label starting or ending with a hyphen.
    #[error("e-mail domain has a label that starts or ends with a hyphen")]
    LabelHyphen,
    /// The last label is all digits (an IP address, not a domain).
    #[error("e-mail domain ends in a numeric label")]
    NumericTld,
}

/// Why a text is not an acceptable mobile number. Positions are 1-based characters of the
/// trimmed input; nothing of the input itself is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MobileError {
    /// No digits at all, only separators or whitespace.
    #[error("mobile number is empty")]
    Empty,
    /// A character other than digits, a leading `+` and the separators.
    #[error(
        "mobile number has a character other than digits, a leading +, spaces, dashes, dots \
         and parentheses at position {0}"
    )]
    Char(usize),
    /// After `+` (or `00`), not 8–15 digits.
    #[error("mobile number has {0} digits after the country prefix sign, wants 8 to 15")]
    InternationalLength(usize),
    /// The country code starts with 0.
    #[error("mobile number has a country code starting with 0")]
    CountryZero,
    /// A `+39` number that is not an Italian mobile.
    #[error("mobile number with +39 is not an Italian mobile (3 and 8 or 9 more digits)")]
    ItalianNotMobile,
    /// No prefix, and not an Italian mobile.
    #[error("mobile number without + or 00 must be an Italian mobile (3 and 8 or 9 more digits)")]
    National,
}

/// Validates an e-mail address and returns it trimmed, with the domain in lower case.
///
/// # Errors
/// The first problem found, as an [`EmailError`].
///
/// # Security
/// The error never contains the input.
pub fn normalise_email(input: &str) -> Result<String, EmailError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(EmailError::Empty);
    }
    let count = text.chars().count();
    if count > MAX_EMAIL_LEN {
        return Err(EmailError::TooLong(count));
    }
    if let Some(i) = text.chars().position(char::is_whitespace) {
        return Err(EmailError::Whitespace(i + 1));
    }
    let ats = text.matches('@').count();
    if ats != 1 {
        return Err(EmailError::AtSigns(ats));
    }
    let (local, domain) = text.split_once('@').ok_or(EmailError::AtSigns(0))?;

    let local_len = local.chars().count();
    if local_len == 0 {
        return Err(EmailError::LocalEmpty);
    }
    if local_len > MAX_LOCAL_LEN {
        return Err(EmailError::LocalTooLong(local_len));
    }
    if let Some(i) = local.chars().position(|c| !is_atext(c) && c != '.') {
        return Err(EmailError::LocalChar(i + 1));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(EmailError::LocalDots);
    }

    if domain.is_empty() {
        return Err(EmailError::DomainEmpty);
    }
    if let Some(i) = domain
        .chars()
        .position(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    {
        return Err(EmailError::DomainChar(local_len + 2 + i));
    }
    // ASCII from here on.
    if !domain.contains('.') {
        return Err(EmailError::DomainNoDot);
    }
    let mut last = "";
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(EmailError::DomainDots);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(EmailError::LabelTooLong(label.len()));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(EmailError::LabelHyphen);
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EmailError::NumericTld);
    }
    Ok(format!("{local}@{}", domain.to_ascii_lowercase()))
}

/// RFC 5322 `atext`.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

/// Validates a mobile number and returns it in E.164 form (`+` and digits).
///
/// # Errors
/// The first problem found, as a [`MobileError`].
///
/// # Security
/// The error never contains the input.
pub fn normalise_mobile(input: &str) -> Result<String, MobileError> {
    let text = input.trim();
    let mut plus = false;
    let mut digits = String::with_capacity(16);
    for (i, c) in text.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if !plus && digits.is_empty() => plus = true,
            ' ' | '-' | '.' | '(' | ')' => {}
            c if c.is_whitespace() => {}
            _ => return Err(MobileError::Char(i + 1)),
        }
    }
    if digits.is_empty() {
        return Err(MobileError::Empty);
    }
    let international = if plus {
        Some(digits.as_str())
    } else {
        digits.strip_prefix("00")
    };
    match international {
        Some(number) => {
            let n = number.len();
            if !(MIN_E164_DIGITS..=MAX_E164_DIGITS).contains(&n) {
                return Err(MobileError::InternationalLength(n));
            }
            if number.starts_with('0') {
                return Err(MobileError::CountryZero);
            }
            if let Some(national) = number.strip_prefix("39") {
                if !is_italian_mobile(national) {
                    return Err(MobileError::ItalianNotMobile);
                }
            }
            Ok(format!("+{number}"))
        }
        None if is_italian_mobile(&digits) => Ok(format!("+39{digits}")),
        None => Err(MobileError::National),
    }
}

/// `3` followed by 8 or 9 digits.
fn is_italian_mobile(national: &str) -> bool {
    national.starts_with('3') && (9..=10).contains(&national.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_emails_are_normalised() {
        for (input, want) in [
            ("mario.rossi@example.it", "mario.rossi@example.it"),
            (
                "  Mario.Rossi+cns@Example.COM ",
                "Mario.Rossi+cns@example.com",
            ),
            ("a@b.co", "a@b.co"),
            ("o'neil@x-y.example.org", "o'neil@x-y.example.org"),
            (
                "user_1!#$%&*/=?^`{|}~@mail.comune.roma.it",
                "user_1!#$%&*/=?^`{|}~@mail.comune.roma.it",
            ),
            ("x@xn--bcher-kva.example", "x@xn--bcher-kva.example"),
            ("x@123.example.it", "x@123.example.it"),
        ] {
            assert_eq!(normalise_email(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn bad_emails() {
        use EmailError as E;
        for (input, want) in [
            ("", E::Empty),
            ("   ", E::Empty),
            ("mario rossi@example.it", E::Whitespace(6)),
            ("mario\u{a0}rossi@example.it", E::Whitespace(6)),
            ("mario.rossi.example.it", E::AtSigns(0)),
            ("mario@rossi@example.it", E::AtSigns(2)),
            ("@example.it", E::LocalEmpty),
            ("mario(rossi)@example.it", E::LocalChar(6)),
            ("niccolò@example.it", E::LocalChar(7)),
            ("\"mario\"@example.it", E::LocalChar(1)),
            (".mario@example.it", E::LocalDots),
            ("mario.@example.it", E::LocalDots),
            ("ma..rio@example.it", E::LocalDots),
            ("mario@", E::DomainEmpty),
            ("mario@localhost", E::DomainNoDot),
            ("mario@exa_mple.it", E::DomainChar(10)),
            ("mario@bücher.de", E::DomainChar(8)),
            ("mario@[192.168.0.1]", E::DomainChar(7)),
            ("mario@.example.it", E::DomainDots),
            ("mario@example.it.", E::DomainDots),
            ("mario@example..it", E::DomainDots),
            ("mario@-example.it", E::LabelHyphen),
            ("mario@example-.it", E::LabelHyphen),
            ("mario@192.168.0.1", E::NumericTld),
        ] {
            assert_eq!(normalise_email(input), Err(want), "{input}");
        }
    }

    #[test]
    fn email_length_limits() {
        let local64 = "a".repeat(64);
        assert!(normalise_email(&format!("{local64}@example.it")).is_ok());
        assert_eq!(
            normalise_email(&format!("{local64}a@example.it")),
            Err(EmailError::LocalTooLong(65))
        );
        let label63 = "b".repeat(63);
        assert!(normalise_email(&format!("a@{label63}.it")).is_ok());
        assert_eq!(
            normalise_email(&format!("a@{label63}b.it")),
            Err(EmailError::LabelTooLong(64))
        );
        // 64 + 1 + 63 + 1 + 63 + 1 + 61 = 254.
        let at_limit = format!("{local64}@{label63}.{label63}.{}", "c".repeat(61));
        assert_eq!(at_limit.len(), 254);
        assert!(normalise_email(&at_limit).is_ok());
        let over = format!("{at_limit}c");
        assert_eq!(normalise_email(&over), Err(EmailError::TooLong(255)));
    }

    #[test]
    fn good_mobiles_are_normalised() {
        for (input, want) in [
            ("+39 333 123 4567", "+393331234567"),
            ("+393331234567", "+393331234567"),
            ("333-123-4567", "+393331234567"),
            ("3331234567", "+393331234567"),
            ("333 123456", "+39333123456"),
            ("(+39) 333.123.45.67", "+393331234567"),
            ("0039 333 1234567", "+393331234567"),
            (" +44 7700 900123 ", "+447700900123"),
            ("0044 (0)7700 900123", "+4407700900123"),
            ("+1 (555) 123-4567", "+15551234567"),
            ("0033 6 12 34 56 78", "+33612345678"),
            ("+49\u{a0}151\t12345678", "+4915112345678"),
            ("+12345678", "+12345678"),
            ("+123456789012345", "+123456789012345"),
        ] {
            assert_eq!(normalise_mobile(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn bad_mobiles() {
        use MobileError as E;
        for (input, want) in [
            ("", E::Empty),
            (" - ( ) ", E::Empty),
            ("+", E::Empty),
            ("333 12a 4567", E::Char(7)),
            ("333/1234567", E::Char(4)),
            ("++39 3331234567", E::Char(2)),
            ("39+3331234567", E::Char(3)),
            ("tel. 3331234567", E::Char(1)),
            ("+1234567", E::InternationalLength(7)),
            ("+1234567890123456", E::InternationalLength(16)),
            ("00 1234567", E::InternationalLength(7)),
            ("+0123456789", E::CountryZero),
            ("0000123456789", E::CountryZero),
            ("+39 06 12345678", E::ItalianNotMobile),
            ("+39 333 1234", E::ItalianNotMobile),
            ("+39 333 12345678", E::ItalianNotMobile),
            ("06 12345678", E::National),
            ("33312345", E::National),
            ("33312345678", E::National),
            ("39 333 1234567", E::National),
            ("7700 900123", E::National),
        ] {
            assert_eq!(normalise_mobile(input), Err(want), "{input}");
        }
    }

    #[test]
    fn messages_never_contain_the_input() {
        let emails = [
            "mario.rossi@@example.it",
            "mariorossi@exam_ple.it",
            "m.rossi..x@example.it",
            "mario@192.168.7.9",
            "mario rossi@example.it",
        ];
        for input in emails {
            let msg = normalise_email(input).unwrap_err().to_string();
            for part in ["mario", "rossi", "exam", "192", "168"] {
                assert!(!msg.contains(part), "{msg}");
            }
        }
        assert_eq!(
            normalise_email("a@@b.it").unwrap_err().to_string(),
            "e-mail has 2 @ signs, wants exactly one"
        );
        for input in ["+39 0697 6543", "0697 6543 21", "+0697654321", "9765x4321"] {
            let msg = normalise_mobile(input).unwrap_err().to_string();
            for part in ["0697", "6543", "9765", "4321"] {
                assert!(!msg.contains(part), "{msg}");
            }
        }
        assert_eq!(
            normalise_mobile("06 12345678").unwrap_err().to_string(),
            "mobile number without + or 00 must be an Italian mobile (3 and 8 or 9 more digits)"
        );
    }
}

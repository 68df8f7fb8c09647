//! Checks shared by plico's fuzz targets.
//!
//! The one property every target checks on every refusal: a message never repeats a secret of
//! the input. Codes and serials are digit runs, so [`assert_no_echo`] refuses a message with a
//! run of digits that is also in the input and longer than any line number, column, count or
//! position an input of that size can produce ([`digit_threshold`]: at least 5, a CNS PIN).
//! Targets whose input holds other secrets (hex share payloads, personal data) add a check of
//! runs of other characters ([`assert_no_run`]).

/// The shortest run of digits a message may not repeat from an input of `len` bytes: one
/// digit longer than `len` itself (so no count or position derived from the input can reach
/// it), and at least 5 (a CNS PIN).
pub fn digit_threshold(len: usize) -> usize {
    (len.max(1).to_string().len() + 1).max(5)
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Panics when `message` has a run of at least `min` bytes of `class` that also occurs in
/// `input`.
pub fn assert_no_run(message: &str, input: &[u8], class: fn(&u8) -> bool, min: usize, what: &str) {
    for run in message.as_bytes().split(|b| !class(b)) {
        assert!(
            run.len() < min || !contains(input, run),
            "a message repeats {what} of the input ({} bytes): {message:?}",
            run.len()
        );
    }
}

/// Panics when `message` repeats a run of digits of `input` (see the crate docs).
pub fn assert_no_echo(message: &str, input: &[u8]) {
    assert_no_run(
        message,
        input,
        u8::is_ascii_digit,
        digit_threshold(input.len()),
        "a digit run",
    );
}

/// The physical lines of a file as plico's line reader gives them: split at `\n`, without a
/// trailing `\r`, the first without a UTF-8 byte-order mark; a last line without a newline is
/// a line, an empty file has none.
pub fn lines_of(data: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    if data.is_empty() || data.ends_with(b"\n") {
        lines.pop();
    }
    for (i, line) in lines.iter_mut().enumerate() {
        if let Some(l) = line.strip_suffix(b"\r") {
            *line = l;
        }
        if i == 0 {
            if let Some(l) = line.strip_prefix(b"\xEF\xBB\xBF") {
                *line = l;
            }
        }
    }
    lines
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref());
    out
}

/// A reader of fuzz input bytes that gives zeros once the input is used up.
#[derive(Debug)]
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }

    /// The next byte, 0 past the end.
    pub fn byte(&mut self) -> u8 {
        let data = self.data;
        match data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// The next two bytes, big-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    /// The next `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let data = self.data;
        let (head, rest) = data.split_at(n.min(data.len()));
        self.data = rest;
        head
    }

    /// What is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

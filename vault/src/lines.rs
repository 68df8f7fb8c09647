//! The one bounded, zeroizing line reader for untrusted files (manufacturer code files, holder
//! registry files).
//!
//! [`read_lines`] reads a [`BufRead`] once and hands each physical line to a visitor, numbered
//! from 1, without its line ending (`\n` or `\r\n`) and, on line 1, without a UTF-8 byte-order
//! mark. A last line without a newline is a line too; an empty file has none.
//!
//! Lines are borrowed straight from the reader's buffer. Only a line that straddles two buffer
//! fills is copied, into one carry buffer that is allocated once with the line limit as its
//! capacity and never grows past it (a reallocation would leave pieces of the line in freed
//! memory), and that is [`Zeroizing`]: these lines hold codes and personal data. A line longer
//! than the limit is never held: its bytes are skipped and the visitor gets
//! [`Line::TooLong`] with its number, so memory stays bounded on a file without newlines.
//!
//! What it does not do: decide what a line means, report problems, or hold more than one line.
//! The reader's own buffer (a `BufReader` the caller made) is the caller's.

use std::io::{BufRead, ErrorKind};
use std::ops::ControlFlow;
use zeroize::Zeroizing;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One physical line handed to the visitor of [`read_lines`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// A line within the limit: its bytes without the line ending, and on line 1 without a
    /// UTF-8 byte-order mark.
    Text {
        /// 1-based physical line number.
        number: u64,
        /// The line's bytes.
        bytes: &'a [u8],
    },
    /// A line longer than the limit counting its `\n` (a last line without one: of the limit's
    /// length or longer); its bytes were skipped.
    TooLong {
        /// 1-based physical line number.
        number: u64,
    },
}

impl Line<'_> {
    /// The line's 1-based physical number.
    pub fn number(&self) -> u64 {
        match *self {
            Line::Text { number, .. } | Line::TooLong { number } => number,
        }
    }
}

/// How [`read_lines`] ended: the lines handed out, and the visitor's break value if it stopped
/// reading early.
#[derive(Debug)]
pub struct LinesEnd<B> {
    /// Physical lines handed to the visitor.
    pub lines: u64,
    /// `Some` when the visitor returned [`ControlFlow::Break`]; reading stopped there.
    pub stopped: Option<B>,
}

/// Reads `reader` to its end (or until `on_line` breaks), calling `on_chunk` with every buffer
/// fill as read (for a hash or a byte count over the raw bytes) and `on_line` with every line
/// (see the module docs). A line longer than `max_line_bytes` counting its `\n` is
/// [`Line::TooLong`].
///
/// # Errors
/// The reader's I/O error (an interrupted read is retried).
pub fn read_lines<R: BufRead, B>(
    mut reader: R,
    max_line_bytes: usize,
    mut on_chunk: impl FnMut(&[u8]),
    mut on_line: impl FnMut(Line<'_>) -> ControlFlow<B>,
) -> std::io::Result<LinesEnd<B>> {
    // A line split across buffer fills. Sized once: a line is refused before it outgrows this.
    let mut carry: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::with_capacity(max_line_bytes));
    // True while skipping the rest of a line that is too long.
    let mut overlong = false;
    let mut number: u64 = 0;
    let mut emit = |number: u64, raw: Option<&[u8]>| {
        on_line(match raw {
            None => Line::TooLong { number },
            Some(raw) => {
                let mut bytes = raw.strip_suffix(b"\r").unwrap_or(raw);
                if number == 1 {
                    bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
                }
                Line::Text { number, bytes }
            }
        })
    };

    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        on_chunk(chunk);
        let mut start = 0;
        while let Some(off) = chunk[start..].iter().position(|&b| b == b'\n') {
            let piece = &chunk[start..start + off];
            start += off + 1;
            number += 1;
            let flow = if overlong || carry.len() + piece.len() >= max_line_bytes {
                overlong = false;
                carry.clear();
                emit(number, None)
            } else if carry.is_empty() {
                emit(number, Some(piece))
            } else {
                carry.extend_from_slice(piece);
                let flow = emit(number, Some(&carry));
                carry.clear();
                flow
            };
            if let ControlFlow::Break(b) = flow {
                return Ok(LinesEnd {
                    lines: number,
                    stopped: Some(b),
                });
            }
        }
        let rest = &chunk[start..];
        if !overlong {
            if carry.len() + rest.len() >= max_line_bytes {
                overlong = true;
                carry.clear();
            } else {
                carry.extend_from_slice(rest);
            }
        }
        reader.consume(n);
    }
    // A last line without a newline.
    let last = if overlong {
        number += 1;
        emit(number, None)
    } else if !carry.is_empty() {
        number += 1;
        let flow = emit(number, Some(&carry));
        carry.clear();
        flow
    } else {
        ControlFlow::Continue(())
    };
    Ok(LinesEnd {
        lines: number,
        stopped: match last {
            ControlFlow::Break(b) => Some(b),
            ControlFlow::Continue(()) => None,
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::BufReader;

    /// Every line as text (`<too long>` for an overlong one), read with a buffer of `cap`.
    fn read(data: &[u8], max: usize, cap: usize) -> (Vec<(u64, String)>, u64) {
        let mut got = Vec::new();
        let end = read_lines::<_, ()>(
            BufReader::with_capacity(cap, data),
            max,
            |_| {},
            |line| {
                let text = match line {
                    Line::Text { bytes, .. } => String::from_utf8_lossy(bytes).into_owned(),
                    Line::TooLong { .. } => "<too long>".to_owned(),
                };
                got.push((line.number(), text));
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert!(end.stopped.is_none());
        (got, end.lines)
    }

    fn texts(v: &[(u64, &str)]) -> Vec<(u64, String)> {
        v.iter().map(|(n, s)| (*n, (*s).to_owned())).collect()
    }

    #[test]
    fn empty_file_has_no_lines() {
        for cap in [1, 8, 64] {
            assert_eq!(read(b"", 16, cap), (vec![], 0));
        }
    }

    #[test]
    fn last_line_without_newline_is_a_line() {
        for cap in [1, 3, 64] {
            let (got, n) = read(b"one\ntwo", 16, cap);
            assert_eq!(got, texts(&[(1, "one"), (2, "two")]), "cap {cap}");
            assert_eq!(n, 2);
        }
    }

    #[test]
    fn crlf_and_bom_are_stripped_blank_lines_kept() {
        for cap in [1, 2, 5, 64] {
            let (got, n) = read(b"\xEF\xBB\xBFa\r\n\r\n\xEF\xBB\xBFb\r\nc\r", 16, cap);
            // The BOM is stripped on line 1 only.
            assert_eq!(
                got,
                texts(&[(1, "a"), (2, ""), (3, "\u{FEFF}b"), (4, "c")]),
                "cap {cap}"
            );
            assert_eq!(n, 4);
        }
    }

    #[test]
    fn a_line_over_the_limit_is_numbered_and_skipped_at_any_buffer_size() {
        let mut data = b"short\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 40));
        data.extend_from_slice(b"\nok\n");
        data.extend(std::iter::repeat_n(b'y', 40));
        for cap in [1, 7, 16, 64, 4096] {
            let (got, n) = read(&data, 16, cap);
            assert_eq!(
                got,
                texts(&[
                    (1, "short"),
                    (2, "<too long>"),
                    (3, "ok"),
                    (4, "<too long>")
                ]),
                "cap {cap}"
            );
            assert_eq!(n, 4);
        }
        // The limit counts the `\n`: 16 bytes + "\n" is too long for 16, 15 + "\n" is not.
        let (got, _) = read(b"1234567890123456\n123456789012345\n", 16, 4);
        assert_eq!(got, texts(&[(1, "<too long>"), (2, "123456789012345")]));
    }

    #[test]
    fn chunks_cover_every_byte_and_a_break_stops_reading() {
        let data = b"a\nb\nc\nd";
        let mut seen = Vec::new();
        let mut lines = Vec::new();
        let end = read_lines(
            BufReader::with_capacity(2, &data[..]),
            16,
            |c| seen.extend_from_slice(c),
            |line| {
                lines.push(line.number());
                if line.number() == 2 {
                    ControlFlow::Break("stop")
                } else {
                    ControlFlow::Continue(())
                }
            },
        )
        .unwrap();
        assert_eq!(end.stopped, Some("stop"));
        assert_eq!(end.lines, 2);
        assert_eq!(lines, vec![1, 2]);
        assert!(data.starts_with(&seen) && seen.len() >= 4);

        let mut all = Vec::new();
        read_lines::<_, ()>(
            BufReader::with_capacity(3, &data[..]),
            16,
            |c| all.extend_from_slice(c),
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
        assert_eq!(all, data);
    }

    #[test]
    fn io_errors_are_returned() {
        struct Broken;
        impl std::io::Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        let e = read_lines::<_, ()>(
            BufReader::new(Broken),
            16,
            |_| {},
            |_| ControlFlow::Continue(()),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "disk on fire");
    }
}

//! Text the commands print: every string that came from the server (stored free text: titles,
//! texts, comments, reasons, labels, names, addresses) goes through [`line`] or [`lines`]
//! before it reaches the terminal, and JSON output through [`json`]. They escape control and
//! bidirectional-override characters with [`vault::text::escape`], the one function that
//! decides what is safe to show (security rule 22), so a stored escape sequence can never
//! recolour, move the cursor of, or retitle the reader's terminal.

use std::borrow::Cow;
use vault::text::{escape, Kind};

/// `s` safe to print on one line: every control character escaped, newlines and tabs too.
pub(crate) fn line(s: &str) -> Cow<'_, str> {
    escape(s, Kind::Line)
}

/// `s` safe to print as multi-line text: control characters escaped, newlines kept (tabs
/// shown as `\u{9}`: nothing below U+0020 but the newline reaches the terminal).
pub(crate) fn lines(s: &str) -> String {
    s.split('\n')
        .map(|l| escape(l, Kind::Line).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `value` as pretty JSON with every string escaped like [`line`] (JSON itself escapes C0
/// controls, but not C1 controls, DEL or the bidirectional overrides).
pub(crate) fn json<T: serde::Serialize>(value: &T) -> serde_json::Result<String> {
    let mut v = serde_json::to_value(value)?;
    clean_value(&mut v);
    serde_json::to_string_pretty(&v)
}

/// Prints `value` as pretty JSON ([`json`]) on stdout: the `--json` output of every command.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    use anyhow::Context;
    println!("{}", json(value).context("cannot format the answer")?);
    Ok(())
}

fn clean_value(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            if let Cow::Owned(clean) = escape(s, Kind::MultiLine) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(clean_value),
        Value::Object(map) => map.values_mut().for_each(clean_value),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nothing_below_space_but_newlines() {
        let s = "a\u{1b}]0;pwned\u{7}\r\tb\nc\u{202e}d\u{9b}";
        for out in [
            line(s).into_owned(),
            lines(s),
            json(&serde_json::json!({ "t": s })).unwrap(),
        ] {
            assert!(!out.bytes().any(|b| b < 0x20 && b != b'\n'), "{out:?}");
            assert!(
                !out.contains('\u{202e}') && !out.contains('\u{9b}'),
                "{out:?}"
            );
        }
        assert!(lines(s).contains("b\nc"));
        assert!(!line(s).contains('\n'));
    }
}

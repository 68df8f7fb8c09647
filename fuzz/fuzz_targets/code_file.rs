//! The manufacturer batch parser (`vault::parse_code_file`, what `POST /v1/batches` and
//! `plico import` read), on any bytes under rules picked by the first two bytes.
//!
//! Checked: no panic; the same outcome whatever the reader's buffer size; a file that parses
//! gives exactly the cards of its lines (serial, PIN, PUK and signature pair, in order, by a
//! model of the format written here), its byte count, line count and SHA-256; a rejected file
//! gives a bounded report whose messages never repeat a digit run (a code or serial) or a long
//! word of the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plico_fuzz::{assert_no_echo, assert_no_run, lines_of, sha256, Bytes};
use std::io::BufReader;
use vault::{
    parse_code_file, CardLine, CodePolicy, LengthBounds, ParseFailure, ParseRules, ParseSummary,
    Report, SerialCharset, SerialRule,
};

/// One card as handed to the callback: line, serial, PIN, PUK, signature pair.
type Card = (u64, String, Vec<u8>, Vec<u8>, Option<(Vec<u8>, Vec<u8>)>);

fn rules(c0: u8, c1: u8, data: &[u8]) -> ParseRules {
    let serial = match c0 & 3 {
        0 => SerialRule::CNS,
        1 => SerialRule {
            min_len: 1,
            max_len: 6,
            charset: SerialCharset::Digits,
        },
        _ => SerialRule {
            min_len: 1,
            max_len: 12,
            charset: SerialCharset::UpperAlnum,
        },
    };
    let policy = if c0 & 4 == 0 {
        CodePolicy::CNS
    } else {
        CodePolicy {
            pin: LengthBounds { min: 1, max: 4 },
            puk: LengthBounds { min: 2, max: 16 },
        }
    };
    let mut sha = sha256(data);
    if c1 & 0x80 != 0 {
        sha[0] ^= 1;
    }
    ParseRules {
        policy,
        signature_policy: (c0 & 8 != 0).then_some(CodePolicy::CIE),
        serial,
        expected_lines: (c1 & 1 != 0).then_some(u64::from((c1 >> 2) & 31)),
        expected_sha256: (c1 & 2 != 0).then_some(sha),
    }
}

fn run(
    data: &[u8],
    rules: &ParseRules,
    capacity: usize,
) -> (Result<ParseSummary, Report>, Vec<Card>) {
    let mut cards = Vec::new();
    let result = parse_code_file(
        BufReader::with_capacity(capacity, data),
        rules,
        |c: CardLine<'_>| {
            cards.push((
                c.line,
                c.serial.to_owned(),
                c.pin.expose_secret().to_vec(),
                c.puk.expose_secret().to_vec(),
                c.signature
                    .as_ref()
                    .map(|(p, k)| (p.expose_secret().to_vec(), k.expose_secret().to_vec())),
            ));
            Ok(())
        },
    );
    let result = match result {
        Ok(summary) => Ok(summary),
        Err(ParseFailure::Rejected(report)) => Err(report),
        Err(other) => panic!("a file in memory gave {other}"),
    };
    (result, cards)
}

/// The cards of a file the parser accepted, read by a model of the format: comments and blank
/// lines skipped, the header (first field `serial`) skipped, one separator for the file.
fn model(data: &[u8]) -> Vec<Card> {
    let lines = lines_of(data);
    let data_lines = || lines.iter().filter(|l| !l.is_empty() && l[0] != b'#');
    let sep = data_lines()
        .find_map(|l| {
            if l.contains(&b';') {
                Some(b';')
            } else if l.contains(&b',') {
                Some(b',')
            } else {
                None
            }
        })
        .unwrap_or(b';');
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let f: Vec<&[u8]> = line.split(|b| *b == sep).collect();
        if f[0].eq_ignore_ascii_case(b"serial") {
            continue;
        }
        assert!(
            f.len() == 3 || f.len() == 5,
            "line {} has {} fields",
            i + 1,
            f.len()
        );
        out.push((
            i as u64 + 1,
            String::from_utf8(f[0].to_vec()).expect("an accepted line is UTF-8"),
            f[1].to_vec(),
            f[2].to_vec(),
            (f.len() == 5).then(|| (f[3].to_vec(), f[4].to_vec())),
        ));
    }
    out
}

fn within(code: &[u8], b: LengthBounds) -> bool {
    code.iter().all(u8::is_ascii_digit)
        && code.len() >= usize::from(b.min)
        && code.len() <= usize::from(b.max)
}

fuzz_target!(|input: &[u8]| {
    let mut bytes = Bytes::new(input);
    let (c0, c1) = (bytes.byte(), bytes.byte());
    let data = bytes.rest();
    let rules = rules(c0, c1, data);
    let (result, cards) = run(data, &rules, 8 * 1024);
    // Lines straddle buffer fills with a small buffer: nothing may change.
    let small = usize::from(c0 >> 4) + 1;
    let (again, again_cards) = run(data, &rules, small);
    assert_eq!(
        result, again,
        "the outcome depends on the buffer size ({small})"
    );
    assert_eq!(
        cards, again_cards,
        "the cards depend on the buffer size ({small})"
    );

    let lines = lines_of(data);
    match result {
        Ok(summary) => {
            assert_eq!(summary.bytes, data.len() as u64);
            assert_eq!(summary.lines, lines.len() as u64);
            assert_eq!(summary.sha256, sha256(data));
            assert_eq!(summary.cards, cards.len() as u64);
            assert!(!cards.is_empty(), "a file without cards was accepted");
            assert_eq!(cards, model(data), "the cards are not the lines' cards");
            let sig_policy = rules.signature_policy.unwrap_or(rules.policy);
            for (_, serial, pin, puk, sig) in &cards {
                assert!(rules.serial.check(serial).is_ok());
                assert!(within(pin, rules.policy.pin) && within(puk, rules.policy.puk));
                assert_eq!(sig.is_some(), summary.signature_pairs);
                if let Some((p, k)) = sig {
                    assert!(within(p, sig_policy.pin) && within(k, sig_policy.puk));
                }
            }
            if let Some(n) = rules.expected_lines {
                assert_eq!(n, summary.cards);
            }
        }
        Err(report) => {
            assert!(report.total >= report.problems.len() as u64 && report.total > 0);
            assert!(report.problems.len() <= vault_max_reported() + 3);
            // The hash the upload announced is the uploader's, not the file's: it may be shown.
            let announced: Option<String> = rules
                .expected_sha256
                .map(|h| h.iter().map(|b| format!("{b:02x}")).collect());
            let shown = |m: &str| match &announced {
                Some(h) => m.replace(h.as_str(), "<announced>"),
                None => m.to_owned(),
            };
            for p in &report.problems {
                assert!(p.line <= lines.len() as u64, "problem on line {}", p.line);
                let message = shown(&p.message);
                assert_no_echo(&message, data);
                assert_no_run(&message, data, u8::is_ascii_alphanumeric, 12, "a word");
            }
            assert_no_echo(&shown(&report.to_string()), data);
        }
    }
});

/// The most line problems a report lists (`vault::import::parse::MAX_REPORTED`).
fn vault_max_reported() -> usize {
    100
}

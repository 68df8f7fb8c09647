//! The holder registry parser (`cards::parse_registry`, what `POST /v1/registry` reads), CSV
//! and JSON lines, on any bytes under a serial rule picked by the first byte.
//!
//! Checked: no panic; the same outcome whatever the reader's buffer size; an accepted file
//! gives holders in line order with normalised fields (the codice fiscale and names normalise
//! to themselves, birth dates in range), serials unique and valid, a replacement never the
//! card's own serial; written back as JSON lines and as CSV, it parses to the same holders
//! (decode(encode(x)) == x); a rejected file gives a bounded report whose fields and messages
//! never repeat a digit run or a long word of the file (no codice fiscale, serial or name).
#![no_main]

use cards::{
    normalise_codice_fiscale, normalise_name, parse_registry, Date, HolderEntry, RegistryFailure,
    RegistryReport, RegistryRules,
};
use libfuzzer_sys::fuzz_target;
use plico_fuzz::{assert_no_echo, assert_no_run, lines_of, Bytes};
use std::collections::HashSet;
use std::io::BufReader;
use vault::{SerialCharset, SerialRule};

fn rules(c: u8) -> RegistryRules {
    let serial = match c & 3 {
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
    let today = match Date::new(2026, 6, 30) {
        Ok(d) => d,
        Err(_) => Date::MAX,
    };
    RegistryRules { serial, today }
}

fn run(
    data: &[u8],
    rules: &RegistryRules,
    capacity: usize,
) -> Result<Vec<HolderEntry>, RegistryReport> {
    match parse_registry(BufReader::with_capacity(capacity, data), rules) {
        Ok(h) => Ok(h),
        Err(RegistryFailure::Rejected(report)) => Err(report),
        Err(other) => panic!("a file in memory gave {other}"),
    }
}

/// The holders without their line numbers (which differ once the file is written again).
fn unlined(holders: &[HolderEntry]) -> Vec<HolderEntry> {
    holders
        .iter()
        .map(|h| {
            let mut h = h.clone();
            h.first_line = 0;
            for c in &mut h.cards {
                c.line = 0;
            }
            h
        })
        .collect()
}

fn json_lines(holders: &[HolderEntry]) -> String {
    let mut out = String::new();
    for h in holders {
        let cards: Vec<serde_json::Value> = h
            .cards
            .iter()
            .map(|c| {
                serde_json::json!({
                    "serial": c.serial,
                    "expiry": c.expiry.to_string(),
                    "replaced_by": c.replaced_by,
                })
            })
            .collect();
        let line = serde_json::json!({
            "codice_fiscale": h.codice_fiscale,
            "given_names": h.given_names,
            "surname": h.surname,
            "birth_date": h.birth_date.to_string(),
            "email": h.email,
            "mobile": h.mobile,
            "address": h.address,
            "deceased": h.deceased,
            "cards": cards,
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn csv(holders: &[HolderEntry]) -> String {
    let mut out = String::from(
        "codice_fiscale;given_names;surname;birth_date;email;mobile;address;deceased;serial;\
         expiry;replaced_by\n",
    );
    for h in holders {
        let person = [
            quoted(&h.codice_fiscale),
            quoted(&h.given_names),
            quoted(&h.surname),
            h.birth_date.to_string(),
            quoted(h.email.as_deref().unwrap_or("")),
            quoted(h.mobile.as_deref().unwrap_or("")),
            quoted(h.address.as_deref().unwrap_or("")),
            h.deceased.to_string(),
        ]
        .join(";");
        if h.cards.is_empty() {
            out.push_str(&format!("{person};;;\n"));
        }
        for c in &h.cards {
            out.push_str(&format!(
                "{person};{};{};{}\n",
                quoted(&c.serial),
                c.expiry,
                quoted(c.replaced_by.as_deref().unwrap_or(""))
            ));
        }
    }
    out
}

/// Whether every line of `text` fits the parser's line limit (4096 bytes with its newline).
fn fits(text: &str) -> bool {
    text.lines().all(|l| l.len() < 4095)
}

fuzz_target!(|input: &[u8]| {
    let mut bytes = Bytes::new(input);
    let c = bytes.byte();
    let data = bytes.rest();
    let rules = rules(c);
    let result = run(data, &rules, 8 * 1024);
    let small = usize::from(c >> 4) + 1;
    assert_eq!(
        result,
        run(data, &rules, small),
        "the outcome depends on the buffer size ({small})"
    );
    match result {
        Ok(holders) => {
            assert!(!holders.is_empty(), "a file without holders was accepted");
            let mut serials = HashSet::new();
            let mut last_line = 0;
            for h in &holders {
                assert!(h.first_line > last_line, "holders out of line order");
                last_line = h.first_line;
                assert_eq!(
                    normalise_codice_fiscale(&h.codice_fiscale).as_ref(),
                    Ok(&h.codice_fiscale)
                );
                assert_eq!(normalise_name(&h.given_names).as_ref(), Ok(&h.given_names));
                assert_eq!(normalise_name(&h.surname).as_ref(), Ok(&h.surname));
                assert!(h.birth_date <= rules.today);
                for card in &h.cards {
                    assert!(rules.serial.check(&card.serial).is_ok());
                    assert!(serials.insert(card.serial.clone()), "a serial twice");
                    if let Some(r) = &card.replaced_by {
                        assert!(rules.serial.check(r).is_ok());
                        assert_ne!(r, &card.serial);
                    }
                }
            }
            let want = unlined(&holders);
            let json = json_lines(&holders);
            if fits(&json) {
                let back = run(json.as_bytes(), &rules, 8 * 1024)
                    .unwrap_or_else(|r| panic!("accepted holders written as JSON lines: {r}"));
                assert_eq!(unlined(&back), want, "JSON lines round trip");
            }
            let csv = csv(&holders);
            if fits(&csv) {
                let back = run(csv.as_bytes(), &rules, 8 * 1024)
                    .unwrap_or_else(|r| panic!("accepted holders written as CSV: {r}"));
                assert_eq!(unlined(&back), want, "CSV round trip");
            }
        }
        Err(report) => {
            let lines = lines_of(data).len() as u64;
            assert!(report.total >= report.problems.len() as u64 && report.total > 0);
            assert!(report.problems.len() <= 101);
            for p in &report.problems {
                assert!(p.line <= lines, "problem on line {}", p.line);
                for text in [&p.field, &p.message] {
                    assert_no_echo(text, data);
                    assert_no_run(text, data, u8::is_ascii_alphanumeric, 16, "a word");
                }
            }
            assert_no_echo(&report.to_string(), data);
        }
    }
});

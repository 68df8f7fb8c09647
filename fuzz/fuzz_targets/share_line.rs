//! The custodian share line (`hsm_sim::share::Share::parse`, what `POST /v1/sys/unseal` and
//! `plico unseal` take).
//!
//! First byte even: the rest, as text, is a share line. Checked: no panic; a refusal never
//! repeats a hex run (set id, payload, check) or a digit run of the line; a line that parses
//! writes back (`to_text`) to a line that parses to the same share.
//!
//! First byte odd: a well-formed share is built from the bytes, written, and one byte of its
//! line replaced. Checked: the unchanged line parses to the same share (decode(encode(x)) ==
//! x); a changed line is refused (the check value catches every one-character change).
#![no_main]

use hsm_sim::share::{Share, PAYLOAD_LEN};
use libfuzzer_sys::fuzz_target;
use plico_fuzz::{assert_no_echo, assert_no_run, Bytes};
use secrecy::{ExposeSecret, SecretString};

fn same(a: &Share, b: &Share) -> bool {
    (a.set, a.x, a.threshold, a.shares) == (b.set, b.x, b.threshold, b.shares)
        && a.expose_payload() == b.expose_payload()
        && a.digest() == b.digest()
}

fn check_refusal(message: &str, line: &[u8]) {
    assert_no_echo(message, line);
    assert_no_run(message, line, u8::is_ascii_hexdigit, 8, "a hex run");
}

fuzz_target!(|input: &[u8]| {
    let mut bytes = Bytes::new(input);
    let mode = bytes.byte();
    if mode & 1 == 0 {
        let line = bytes.rest();
        let text = String::from_utf8_lossy(line).into_owned();
        match Share::parse(&SecretString::from(text)) {
            Ok(share) => {
                assert!(share.x >= 1 && share.x <= share.shares);
                assert!(share.threshold >= 1 && share.threshold <= share.shares);
                let back = Share::parse(&share.to_text()).expect("a share's own line parses");
                assert!(same(&share, &back), "to_text does not give the share back");
            }
            Err(message) => check_refusal(&message, line),
        }
        return;
    }
    let mut set = [0u8; 8];
    set.iter_mut().for_each(|b| *b = bytes.byte());
    let shares = bytes.byte().max(1);
    let x = bytes.byte() % shares + 1;
    let threshold = bytes.byte() % shares + 1;
    let mut payload = [0u8; PAYLOAD_LEN];
    payload.iter_mut().for_each(|b| *b = bytes.byte());
    let share = Share::new(set, x, threshold, shares, &payload);
    let text = share.to_text();
    let back = Share::parse(&text).expect("a share's own line parses");
    assert!(
        same(&share, &back),
        "parse(to_text(share)) is not the share"
    );

    let mut line = text.expose_secret().as_bytes().to_vec();
    let at = usize::from(bytes.u16()) % line.len();
    let replacement = bytes.byte();
    line[at] = replacement;
    let Ok(changed) = String::from_utf8(line.clone()) else {
        return;
    };
    if changed == text.expose_secret() {
        return;
    }
    match Share::parse(&SecretString::from(changed.clone())) {
        // Blanks around the line are ignored: a first or last character made blank leaves a
        // line that is the same share only if the rest is, which it is not (the prefix or the
        // check lost a character); anything else must be refused.
        Ok(parsed) => panic!(
            "a share line with byte {at} changed was accepted (same share: {})",
            same(&share, &parsed)
        ),
        Err(message) => check_refusal(&message, &line),
    }
});

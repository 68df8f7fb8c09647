//! The plan grammar: `dispatch::Plan` (what `POST /v1/cards/{serial}/dispatch` keeps on a
//! dispatch request, what print runs and the counter page cut codes by), read by the outbox
//! through `cards::parse_plan`.
//!
//! The first byte picks the lengths of a card's codes, the rest is the plan text. Checked: no
//! panic; a plan that parses prints (`Display`) to a text that parses to the same plan; the
//! outbox (`cards::parse_plan`) reads every text as `dispatch` does; a plan's parts cut the
//! codes into ranges that cover each code exactly once, part A (the counter) before part B
//! (the plan's remote channel); a refusal to cut names no part and is only for an N that does
//! not leave part B a digit; no refusal repeats a digit run of the text.
#![no_main]

use dispatch::{Channel, Codes, PartName, Plan};
use libfuzzer_sys::fuzz_target;
use plico_fuzz::{assert_no_echo, Bytes};

const DIGITS: &[u8; 16] = b"0123456789012345";

fn codes(c: u8) -> Codes {
    let pin = usize::from(c & 7) + 1;
    let puk = usize::from((c >> 3) & 7) + 2;
    let codes = Codes::new(&DIGITS[..pin], &DIGITS[3..3 + puk]).expect("digits");
    if c & 0x40 != 0 {
        codes
            .with_signature(&DIGITS[..pin + 1], &DIGITS[..puk])
            .expect("digits")
    } else {
        codes
    }
}

fn check_parts(plan: &Plan, codes: &Codes) {
    let parts = match plan.parts(codes) {
        Ok(parts) => parts,
        Err(e) => {
            let shortest = codes.shortest();
            assert!(
                matches!(plan, Plan::Counter { digits, .. } if *digits >= shortest),
                "parts refused for a plan that fits: {e}"
            );
            assert!(plan.cut(codes).is_err(), "cut accepts what parts refuses");
            assert_no_echo(&e.to_string(), plan.to_string().as_bytes());
            return;
        }
    };
    match *plan {
        Plan::Whole(channel) => {
            assert_eq!(parts.len(), 1);
            assert_eq!(parts[0].name, PartName::Whole);
            assert_eq!(parts[0].channel, channel.unwrap_or(Channel::Any));
            assert_eq!(parts[0].other_channel, None);
        }
        Plan::Counter { remote, .. } => {
            assert_eq!(parts.len(), 2);
            assert_eq!(
                (parts[0].name, parts[0].channel, parts[0].other_channel),
                (PartName::A, Channel::Counter, Some(remote))
            );
            assert_eq!(
                (parts[1].name, parts[1].channel, parts[1].other_channel),
                (PartName::B, remote, Some(Channel::Counter))
            );
        }
    }
    let cut = plan.cut(codes).expect("parts that fit cut");
    assert_eq!(parts.len(), cut.len());
    let mut pin = Vec::new();
    let mut puk = Vec::new();
    let mut sig = (Vec::new(), Vec::new());
    for (i, (part, digits)) in parts.iter().zip(&cut).enumerate() {
        assert_eq!(part.index, i);
        assert_eq!(part.count, parts.len());
        assert_eq!(&digits.part, part);
        assert!(
            !digits.pin.is_empty() && !digits.puk.is_empty(),
            "an empty part"
        );
        assert_eq!(digits.pin.len(), part.pin_digits.len());
        assert_eq!(digits.puk.len(), part.puk_digits.len());
        pin.extend_from_slice(digits.pin.expose_secret());
        puk.extend_from_slice(digits.puk.expose_secret());
        assert_eq!(digits.signature.is_some(), codes.signature.is_some());
        if let Some((p, k)) = &digits.signature {
            assert!(!p.is_empty() && !k.is_empty(), "an empty signature part");
            sig.0.extend_from_slice(p.expose_secret());
            sig.1.extend_from_slice(k.expose_secret());
        }
    }
    assert!(
        pin == codes.pin.expose_secret(),
        "the parts do not cover the PIN"
    );
    assert!(
        puk == codes.puk.expose_secret(),
        "the parts do not cover the PUK"
    );
    if let Some((p, k)) = &codes.signature {
        assert!(
            sig.0 == p.expose_secret() && sig.1 == k.expose_secret(),
            "the parts do not cover the signature pair"
        );
    }
}

fuzz_target!(|input: &[u8]| {
    let mut bytes = Bytes::new(input);
    let codes = codes(bytes.byte());
    let raw = bytes.rest();
    let text = String::from_utf8_lossy(raw);

    let plan = Plan::parse(&text);
    match &plan {
        Ok(p) => {
            assert_eq!(
                Plan::parse(&p.to_string()).ok(),
                Some(*p),
                "Display round trip"
            );
            if let Plan::Counter { digits, remote } = p {
                assert!((1..=99).contains(digits), "counter({digits}) parsed");
                assert!(
                    matches!(remote, Channel::Remote | Channel::Sms | Channel::Email),
                    "part B by {remote:?}"
                );
            }
            check_parts(p, &codes);
        }
        Err(e) => assert_no_echo(&e.to_string(), raw),
    }

    // The outbox reads the same plan, or refuses with a message that repeats no code.
    match cards::parse_plan(&text) {
        Ok(outbox) => assert_eq!(plan.ok(), Some(outbox), "the outbox reads another plan"),
        Err(e) => {
            assert!(
                plan.is_err(),
                "the outbox refuses a plan dispatch reads: {e}"
            );
            assert!(matches!(e, vault::Error::Invalid(_)), "{e}");
            assert_no_echo(&e.to_string(), raw);
        }
    }
});

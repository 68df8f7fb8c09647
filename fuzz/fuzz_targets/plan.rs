//! The plan grammars: `dispatch::Plan` (what couriers and print runs cut codes by, from
//! `POST /v1/mailers/runs` and the counter page) and `cards::DispatchPlan` (what the outbox reads
//! from `POST /v1/cards/{serial}/dispatch`).
//!
//! The first byte picks the lengths of a card's codes, the rest is the plan text. Checked: no
//! panic; a plan that parses prints (`Display`) to a text that parses to the same plan; every
//! plan the outbox accepts is accepted by `dispatch` with the same digits and channel, and so is
//! the courier plan a job of it carries; a plan's parts cut the codes into ranges that cover
//! each code exactly once, part A before part B; no refusal repeats a digit run of the text.
#![no_main]

use cards::DispatchPlan;
use dispatch::{Channel, Codes, Plan};
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
            assert_no_echo(&e.to_string(), plan.to_string().as_bytes());
            return;
        }
    };
    let cut = plan.cut(codes).expect("parts that fit cut");
    assert_eq!(parts.len(), cut.len());
    let mut pin = Vec::new();
    let mut puk = Vec::new();
    for (i, (part, digits)) in parts.iter().zip(&cut).enumerate() {
        assert_eq!(part.index, i);
        assert_eq!(part.count, parts.len());
        assert!(
            !digits.pin.is_empty() && !digits.puk.is_empty(),
            "an empty part"
        );
        pin.extend_from_slice(digits.pin.expose_secret());
        puk.extend_from_slice(digits.puk.expose_secret());
        assert_eq!(digits.signature.is_some(), codes.signature.is_some());
    }
    assert_eq!(
        pin,
        codes.pin.expose_secret(),
        "the parts do not cover the PIN"
    );
    assert_eq!(
        puk,
        codes.puk.expose_secret(),
        "the parts do not cover the PUK"
    );
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
            check_parts(p, &codes);
        }
        Err(e) => assert_no_echo(&e.to_string(), raw),
    }

    match DispatchPlan::parse(&text) {
        Ok(DispatchPlan::Split { digits, remote }) => {
            let channel = match remote {
                None => Channel::Remote,
                Some(cards::Channel::Sms) => Channel::Sms,
                Some(cards::Channel::Email) => Channel::Email,
                Some(other) => panic!("a split plan's part B by {other:?}"),
            };
            let want = Plan::Counter {
                digits: digits as usize,
                remote: channel,
            };
            assert_eq!(
                plan.ok(),
                Some(want),
                "dispatch reads the outbox's plan otherwise"
            );
            // What a job of this plan carries (`Job::courier_plan`) for each remote channel.
            for ch in ["sms", "email"] {
                let courier = format!("counter({digits})+{ch}");
                assert!(matches!(
                    Plan::parse(&courier),
                    Ok(Plan::Counter { digits: d, .. }) if d == digits as usize
                ));
            }
        }
        Ok(DispatchPlan::Whole(channel)) => {
            if channel == cards::Channel::Mailer {
                assert_eq!(plan.ok(), Some(Plan::Whole));
            }
        }
        Err(e) => assert_no_echo(&e.to_string(), raw),
    }
});

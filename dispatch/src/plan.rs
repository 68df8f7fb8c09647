//! Delivery plans: which part of a card's codes goes by which channel. The one plan vocabulary
//! of plico: the outbox of crate `cards` parses a dispatch's plan with [`Plan::parse`] (and
//! keeps its text, as given, on the dispatch request), the renderers cut codes by it.
//!
//! ```text
//! plan    = whole | "counter(" N ")+" remote
//! whole   = "whole" | "mailer" | "sms" | "email"
//! remote  = "remote" | "sms" | "email"
//! N       = a number from 1 to 99
//! ```
//!
//! A whole plan sends every digit in one part: `whole` leaves the channel to the plan's user
//! (the outbox sends a printed mailer, as for `mailer`; a print run prints one), `sms`,
//! `email` and `mailer` name it. `counter(N)+remote` is the Italian split: part **A** carries
//! the first N digits of the PIN and of the PUK (and of the signature pair, if any) and is
//! printed at the counter; part **B** carries the rest and travels by SMS or e-mail (`remote`
//! leaves the choice to the dispatcher: SMS if the holder has a usable mobile number, else
//! e-mail). The holder enters part A's digits first, then part B's: every rendered message
//! says so.
//!
//! N must be at least 1 and less than the card's shortest code, so that neither part is empty;
//! [`Plan::parse`] checks 1 ≤ N ≤ 99 and [`Plan::parts`] checks it against the card.
//!
//! A plan carries no secret. [`PartCodes`] does: it holds its digits in [`Digits`], zeroized on
//! drop.

use crate::error::{Error, Result};
use crate::secret::{Codes, Digits};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// The name of a part of a delivery: the one part vocabulary of plico (the outbox of crate
/// `cards` stores it on each dispatch job, as `"A"`, `"B"` or `"whole"`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum PartName {
    /// The first digits (at the counter).
    #[serde(rename = "A")]
    A,
    /// The remaining digits (remote).
    #[serde(rename = "B")]
    B,
    /// All digits in one part.
    #[serde(rename = "whole")]
    Whole,
}

/// A part name that is not `A`, `B` or `whole`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("part: expected A, B or whole")]
pub struct UnknownPart;

impl FromStr for PartName {
    type Err = UnknownPart;

    /// Parses `A`, `B` or `whole` (exactly: the caller normalises case).
    fn from_str(text: &str) -> std::result::Result<PartName, UnknownPart> {
        match text {
            "A" => Ok(PartName::A),
            "B" => Ok(PartName::B),
            "whole" => Ok(PartName::Whole),
            _ => Err(UnknownPart),
        }
    }
}

impl fmt::Display for PartName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartName {
    /// `"A"`, `"B"` or `"whole"` (the persisted and templated name).
    pub fn as_str(self) -> &'static str {
        match self {
            PartName::A => "A",
            PartName::B => "B",
            PartName::Whole => "whole",
        }
    }
}

/// The channel a part travels by: the one channel vocabulary of plico.
///
/// A dispatch job of crate `cards` goes by a concrete channel (`counter`, `sms`, `email` or
/// `mailer`, stored on the job under these names). [`Channel::Remote`] and [`Channel::Any`]
/// appear only in a plan and its [`Part`]s (and in templates): the choice left to the
/// dispatcher, and the one part of a `whole` plan.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Printed at the counter for the holder in person.
    Counter,
    /// SMS or e-mail, chosen by the dispatcher's policy (a plan's part B only).
    Remote,
    /// SMS.
    Sms,
    /// E-mail.
    Email,
    /// A printed mailer to the holder's postal address (a print run).
    Mailer,
    /// Any channel (the part of a `whole` plan: typically a mailer by post).
    Any,
}

impl Channel {
    /// `"counter"`, `"remote"`, `"sms"`, `"email"`, `"mailer"` or `"any"` (the persisted and
    /// templated name).
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Counter => "counter",
            Channel::Remote => "remote",
            Channel::Sms => "sms",
            Channel::Email => "email",
            Channel::Mailer => "mailer",
            Channel::Any => "any",
        }
    }

    /// The channels a delivery worker sends by (the counter part is printed at the counter,
    /// the mailer part by a print run).
    pub const REMOTE: [Channel; 2] = [Channel::Sms, Channel::Email];

    /// Whether a delivery receipt is expected after `sent` (SMS: the gateway's delivery
    /// report). Without one, `sent` is as far as the part goes.
    pub fn receipt_expected(self) -> bool {
        self == Channel::Sms
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The largest N of `counter(N)`: no code has 100 digits.
pub const MAX_COUNTER_DIGITS: usize = 99;

/// A delivery plan, parsed from its text form (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Every digit in one part, by the channel named (`sms`, `email`, `mailer`), or `None`
    /// for `whole`: the plan's user chooses (the outbox sends a printed mailer).
    Whole(Option<Channel>),
    /// The first `digits` digits at the counter, the rest by `remote`.
    Counter {
        /// N of `counter(N)`: digits of each code in part A.
        digits: usize,
        /// Channel of part B: [`Channel::Remote`], [`Channel::Sms`] or [`Channel::Email`].
        remote: Channel,
    },
}

impl Plan {
    /// Parses a plan such as `whole`, `sms` or `counter(2)+sms`; surrounding blanks are
    /// ignored.
    ///
    /// # Errors
    /// [`Error::PlanSyntax`] naming the position (an N of 0 or over [`MAX_COUNTER_DIGITS`]
    /// included).
    pub fn parse(text: &str) -> Result<Plan> {
        let lead = text.len() - text.trim_start().len();
        let s = text.trim();
        let syntax = |at: usize, reason: &'static str| Error::PlanSyntax {
            at: text[..(lead + at).min(text.len())].chars().count(),
            reason,
        };
        match s {
            "whole" => return Ok(Plan::Whole(None)),
            "mailer" => return Ok(Plan::Whole(Some(Channel::Mailer))),
            "sms" => return Ok(Plan::Whole(Some(Channel::Sms))),
            "email" => return Ok(Plan::Whole(Some(Channel::Email))),
            _ => {}
        }
        let Some(rest) = s.strip_prefix("counter(") else {
            return Err(syntax(
                0,
                "expected `whole`, `mailer`, `sms`, `email` or `counter(N)+…`",
            ));
        };
        let at_n = "counter(".len();
        let n_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if n_len == 0 {
            return Err(syntax(at_n, "expected a number of digits"));
        }
        // One or two digits, as in the outbox's grammar: a longer N (a code pasted into the
        // field) is refused before it is read, so no error can repeat it.
        if n_len > 2 {
            return Err(syntax(at_n, "expected a number of digits from 1 to 99"));
        }
        let digits = rest[..n_len]
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_COUNTER_DIGITS).contains(n))
            .ok_or_else(|| syntax(at_n, "expected a number of digits from 1 to 99"))?;
        let Some(rest) = rest[n_len..].strip_prefix(")+") else {
            return Err(syntax(at_n + n_len, "expected `)+`"));
        };
        let remote = match rest {
            "remote" => Channel::Remote,
            "sms" => Channel::Sms,
            "email" => Channel::Email,
            _ => {
                return Err(syntax(
                    at_n + n_len + 2,
                    "expected `remote`, `sms` or `email`",
                ))
            }
        };
        Ok(Plan::Counter { digits, remote })
    }

    /// The parts of this plan for a card with these codes (only their lengths are read).
    ///
    /// # Errors
    /// [`Error::CounterDigits`] unless 1 ≤ N < the shortest code of the card.
    pub fn parts(&self, codes: &Codes) -> Result<Vec<Part>> {
        let lens = |r: fn(usize, usize) -> Range<usize>, n: usize| {
            let sig = codes
                .signature
                .as_ref()
                .map(|(p, k)| (r(n, p.len()), r(n, k.len())));
            (r(n, codes.pin.len()), r(n, codes.puk.len()), sig)
        };
        let part = |name, channel, index, count, other, (pin, puk, sig)| Part {
            name,
            channel,
            index,
            count,
            other_channel: other,
            pin_digits: pin,
            puk_digits: puk,
            signature_digits: sig,
            pin_len: codes.pin.len(),
            puk_len: codes.puk.len(),
            signature_len: codes.signature.as_ref().map(|(p, k)| (p.len(), k.len())),
        };
        match *self {
            Plan::Whole(channel) => Ok(vec![part(
                PartName::Whole,
                channel.unwrap_or(Channel::Any),
                0,
                1,
                None,
                lens(|_, len| 0..len, 0),
            )]),
            Plan::Counter { digits, remote } => {
                let shortest = codes.shortest();
                if digits == 0 || digits >= shortest {
                    return Err(Error::CounterDigits {
                        n: digits,
                        shortest,
                    });
                }
                Ok(vec![
                    part(
                        PartName::A,
                        Channel::Counter,
                        0,
                        2,
                        Some(remote),
                        lens(|n, _| 0..n, digits),
                    ),
                    part(
                        PartName::B,
                        remote,
                        1,
                        2,
                        Some(Channel::Counter),
                        lens(|n, len| n..len, digits),
                    ),
                ])
            }
        }
    }

    /// Cuts a card's codes into the parts of this plan.
    ///
    /// # Errors
    /// As [`Plan::parts`].
    pub fn cut(&self, codes: &Codes) -> Result<Vec<PartCodes>> {
        self.parts(codes)?
            .into_iter()
            .map(|p| p.cut(codes))
            .collect()
    }
}

impl FromStr for Plan {
    type Err = Error;

    fn from_str(s: &str) -> Result<Plan> {
        Plan::parse(s)
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Plan::Whole(None) => f.write_str("whole"),
            Plan::Whole(Some(channel)) => f.write_str(channel.as_str()),
            Plan::Counter { digits, remote } => {
                write!(f, "counter({digits})+{}", remote.as_str())
            }
        }
    }
}

/// One part of a plan: which digits of each code it carries, and by which channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// `A`, `B` or `whole`.
    pub name: PartName,
    /// The channel this part travels by.
    pub channel: Channel,
    /// Position of this part in entry order (0: its digits are entered first).
    pub index: usize,
    /// Number of parts in the plan.
    pub count: usize,
    /// The channel of the other part, for a split plan.
    pub other_channel: Option<Channel>,
    /// Digit positions of the PIN in this part (0-based, end exclusive).
    pub pin_digits: Range<usize>,
    /// Digit positions of the PUK in this part.
    pub puk_digits: Range<usize>,
    /// Digit positions of the signature PIN and PUK, for cards that carry them.
    pub signature_digits: Option<(Range<usize>, Range<usize>)>,
    /// Length of the whole PIN.
    pub pin_len: usize,
    /// Length of the whole PUK.
    pub puk_len: usize,
    /// Lengths of the whole signature PIN and PUK.
    pub signature_len: Option<(usize, usize)>,
}

impl Part {
    /// Copies this part's digits out of `codes` into zeroizing buffers.
    ///
    /// # Errors
    /// [`Error::PartRange`] if a range does not fit the codes (a part made for another card).
    pub fn cut(&self, codes: &Codes) -> Result<PartCodes> {
        let name = self.name.as_str();
        let take = |d: &Digits, r: &Range<usize>, field| {
            d.slice(r.clone())
                .filter(|s| !s.is_empty())
                .ok_or(Error::PartRange { part: name, field })
        };
        let signature = match (&codes.signature, &self.signature_digits) {
            (Some((p, k)), Some((rp, rk))) => {
                Some((take(p, rp, "signature pin")?, take(k, rk, "signature puk")?))
            }
            (None, None) => None,
            _ => {
                return Err(Error::PartRange {
                    part: name,
                    field: "signature pair",
                })
            }
        };
        Ok(PartCodes {
            part: self.clone(),
            pin: take(&codes.pin, &self.pin_digits, "pin")?,
            puk: take(&codes.puk, &self.puk_digits, "puk")?,
            signature,
        })
    }
}

/// The digits of one part, ready to render.
///
/// # Security
/// The digits are [`Digits`]: zeroized on drop, redacted in `Debug`.
#[derive(Debug, Clone)]
pub struct PartCodes {
    /// Which part.
    pub part: Part,
    /// This part's digits of the PIN.
    pub pin: Digits,
    /// This part's digits of the PUK.
    pub puk: Digits,
    /// This part's digits of the signature PIN and PUK.
    pub signature: Option<(Digits, Digits)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cns() -> Codes {
        Codes::new(b"12345", b"87654321").unwrap()
    }

    #[test]
    fn plan_part_names_parse_print_and_serialize_as_stored() {
        for (text, part) in [
            ("A", PartName::A),
            ("B", PartName::B),
            ("whole", PartName::Whole),
        ] {
            assert_eq!(text.parse::<PartName>(), Ok(part));
            assert_eq!(part.to_string(), text);
            let json = format!("\"{text}\"");
            assert_eq!(serde_json::to_string(&part).unwrap(), json);
            assert_eq!(serde_json::from_str::<PartName>(&json).unwrap(), part);
        }
        for bad in ["a", "Whole", "C", ""] {
            assert_eq!(bad.parse::<PartName>(), Err(UnknownPart), "{bad}");
        }
        assert!(PartName::A < PartName::B && PartName::B < PartName::Whole);
    }

    #[test]
    fn plans_parse_and_print() {
        for (text, plan) in [
            ("whole", Plan::Whole(None)),
            (" mailer ", Plan::Whole(Some(Channel::Mailer))),
            ("sms", Plan::Whole(Some(Channel::Sms))),
            ("email\n", Plan::Whole(Some(Channel::Email))),
            (
                "counter(07)+sms",
                Plan::Counter {
                    digits: 7,
                    remote: Channel::Sms,
                },
            ),
            (
                "counter(99)+remote",
                Plan::Counter {
                    digits: 99,
                    remote: Channel::Remote,
                },
            ),
            (
                "counter(2)+remote",
                Plan::Counter {
                    digits: 2,
                    remote: Channel::Remote,
                },
            ),
            (
                "counter(3)+sms",
                Plan::Counter {
                    digits: 3,
                    remote: Channel::Sms,
                },
            ),
            (
                "counter(1)+email",
                Plan::Counter {
                    digits: 1,
                    remote: Channel::Email,
                },
            ),
        ] {
            assert_eq!(Plan::parse(text).unwrap(), plan, "{text}");
        }
        for text in [
            "whole",
            "mailer",
            "sms",
            "email",
            "counter(2)+sms",
            "counter(3)+email",
            "counter(1)+remote",
        ] {
            assert_eq!(Plan::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn bad_plans_name_the_position() {
        for (text, at, what) in [
            ("", 0, "expected `whole`"),
            ("counter", 0, "expected `whole`"),
            ("counter()+sms", 8, "expected a number"),
            ("counter(2)sms", 9, "expected `)+`"),
            ("counter(2)+fax", 11, "expected `remote`"),
            ("counter(99999999999999999999999)+sms", 8, "from 1 to 99"),
            ("counter(100)+sms", 8, "from 1 to 99"),
            ("counter(0)+sms", 8, "from 1 to 99"),
            ("counter(00)+sms", 8, "from 1 to 99"),
            ("counter(2)+counter", 11, "expected `remote`"),
            ("counter(2)+mailer", 11, "expected `remote`"),
            ("post", 0, "expected `whole`"),
            ("Whole", 0, "expected `whole`"),
        ] {
            let e = Plan::parse(text).unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(e, Error::PlanSyntax { at: got, .. } if got == at),
                "{text}: {msg}"
            );
            assert!(msg.contains(what), "{text}: {msg}");
        }
    }

    /// The fuzz target `plan`'s echo check: a refused plan was quoted whole, and `counter(N)`
    /// took any N, which `parts` then repeated (`got N`): a code pasted into the field came
    /// back in the error. N is now 1 or 2 digits, as in the outbox's grammar.
    #[test]
    fn refusals_never_repeat_digits_of_the_plan() {
        let e = Plan::parse("counter(2)+sms 80380000123456").unwrap_err();
        assert!(!e.to_string().contains("123456"), "{e}");
        for text in [
            "counter(12345678)+sms",
            "counter(100)+sms",
            "counter(007)+email",
        ] {
            let e = Plan::parse(text).unwrap_err();
            assert!(matches!(e, Error::PlanSyntax { at: 8, .. }), "{text}: {e}");
            assert!(!e.to_string().contains("00"), "{text}: {e}");
        }
        assert_eq!(
            Plan::parse("counter(07)+sms").unwrap(),
            Plan::Counter {
                digits: 7,
                remote: Channel::Sms
            }
        );
    }

    #[test]
    fn counter_digits_must_leave_both_parts_non_empty() {
        let codes = cns();
        let plan = Plan::parse("counter(5)+sms").unwrap();
        let e = plan.parts(&codes).unwrap_err();
        assert!(matches!(e, Error::CounterDigits { n: 5, shortest: 5 }));
        assert!(e
            .to_string()
            .contains("less than the shortest code (5 digits)"));
        assert!(Plan::parse("counter(4)+sms").unwrap().parts(&codes).is_ok());
        let with_sig = cns().with_signature(b"1234", b"12345678").unwrap();
        assert!(Plan::parse("counter(4)+sms")
            .unwrap()
            .parts(&with_sig)
            .is_err());
    }

    #[test]
    fn counter_plan_cuts_first_digits_into_part_a() {
        let codes = cns().with_signature(b"111222", b"33344455").unwrap();
        let parts = Plan::parse("counter(2)+sms").unwrap().cut(&codes).unwrap();
        let [a, b] = &parts[..] else {
            panic!("two parts")
        };
        assert_eq!(a.part.name, PartName::A);
        assert_eq!(a.part.channel, Channel::Counter);
        assert_eq!(a.part.pin_digits, 0..2);
        assert_eq!(a.part.puk_digits, 0..2);
        assert_eq!(a.pin.expose_secret(), b"12");
        assert_eq!(a.puk.expose_secret(), b"87");
        assert_eq!(b.part.name, PartName::B);
        assert_eq!(b.part.channel, Channel::Sms);
        assert_eq!(b.part.other_channel, Some(Channel::Counter));
        assert_eq!(b.part.pin_digits, 2..5);
        assert_eq!(b.part.puk_digits, 2..8);
        assert_eq!(b.pin.expose_secret(), b"345");
        assert_eq!(b.puk.expose_secret(), b"654321");
        let (sp, sk) = b.signature.as_ref().unwrap();
        assert_eq!(sp.expose_secret(), b"1222");
        assert_eq!(sk.expose_secret(), b"344455");

        let whole = Plan::Whole(None).cut(&codes).unwrap();
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].part.channel, Channel::Any);
        assert_eq!(whole[0].part.name.as_str(), "whole");
        assert_eq!(whole[0].pin.expose_secret(), b"12345");
        assert_eq!(whole[0].puk.expose_secret(), b"87654321");
    }

    #[test]
    fn a_whole_plan_by_a_named_channel_is_one_part_by_that_channel() {
        for (text, channel) in [
            ("whole", Channel::Any),
            ("mailer", Channel::Mailer),
            ("sms", Channel::Sms),
            ("email", Channel::Email),
        ] {
            let parts = Plan::parse(text).unwrap().parts(&cns()).unwrap();
            let [whole] = &parts[..] else {
                panic!("{text}: one part")
            };
            assert_eq!((whole.name, whole.channel), (PartName::Whole, channel));
            assert_eq!(
                (whole.pin_digits.clone(), whole.other_channel),
                (0..5, None)
            );
        }
    }

    #[test]
    fn a_part_for_another_card_does_not_cut() {
        let parts = Plan::parse("counter(2)+sms")
            .unwrap()
            .parts(&cns())
            .unwrap();
        let short = Codes::new(b"1234", b"1234").unwrap();
        assert!(matches!(
            parts[1].cut(&short),
            Err(Error::PartRange { part: "B", .. })
        ));
        let sig = cns().with_signature(b"1234", b"1234").unwrap();
        assert!(parts[0].cut(&sig).is_err());
    }

    #[test]
    fn debug_of_part_codes_is_redacted() {
        let parts = Plan::Whole(None).cut(&cns()).unwrap();
        let shown = format!("{parts:?} {:?} {:#?}", cns(), cns());
        assert!(
            !shown.contains("12345") && !shown.contains("8765"),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"));
    }
}

//! The age header path of an upload (`vault::fuzzing::parse_upload`: the import's own path from
//! an upload's bytes to the parser, age files decrypted on the way with plico's import key).
//!
//! First byte even: the rest is the upload. Odd: the upload is one of two age files (binary
//! and armoured) encrypted to plico's import recipient, damaged by byte flips, a cut or bytes
//! put in, picked by the rest.
//!
//! Checked: no panic; a clear upload parses exactly as the parser alone parses it; an age
//! upload that parses gives exactly the cards of the file that was encrypted, never a part of
//! them or altered ones (a cut or altered file is refused); a refusal never repeats a digit run
//! of the upload.
#![no_main]

use age::armor::{ArmoredWriter, Format};
use libfuzzer_sys::fuzz_target;
use plico_fuzz::{assert_no_echo, Bytes};
use std::io::Write;
use std::sync::OnceLock;
use vault::fuzzing::{parse_upload, ImportIdentity};
use vault::{is_age, parse_code_file, CardLine, DataKey, ParseFailure, ParseRules};

const KEY: [u8; 32] = [0x11; 32];

/// The clear file the age templates hold: two chunks' worth would be slow to fuzz, so a small
/// file of a few cards.
const CLEAR: &[u8] = b"serial;pin;puk\n\
80380000000000000001;12345;12345678\n\
80380000000000000002;54321;87654321\n\
80380000000000000003;00000;99999999\n";

struct Templates {
    recipient: String,
    binary: Vec<u8>,
    armored: Vec<u8>,
}

fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(|| {
        let identity = ImportIdentity::from_data_key(&DataKey::from_bytes(KEY)).expect("identity");
        let recipient = identity.recipient();
        let to: age::x25519::Recipient = recipient.parse().expect("recipient");
        let encrypt = |armor: bool| {
            let encryptor =
                age::Encryptor::with_recipients(std::iter::once(&to as &dyn age::Recipient))
                    .expect("encryptor");
            let mut out = Vec::new();
            if armor {
                let armored =
                    ArmoredWriter::wrap_output(&mut out, Format::AsciiArmor).expect("armor");
                let mut w = encryptor.wrap_output(armored).expect("wrap");
                w.write_all(CLEAR).expect("write");
                w.finish().and_then(|a| a.finish()).expect("finish");
            } else {
                let mut w = encryptor.wrap_output(&mut out).expect("wrap");
                w.write_all(CLEAR).expect("write");
                w.finish().expect("finish");
            }
            out
        };
        Templates {
            recipient,
            binary: encrypt(false),
            armored: encrypt(true),
        }
    })
}

type Card = (u64, String, Vec<u8>, Vec<u8>);

fn cards_of(
    result: Result<vault::ParseSummary, ParseFailure>,
    cards: Vec<Card>,
) -> Result<Vec<Card>, String> {
    match result {
        Ok(_) => Ok(cards),
        Err(e) => Err(e.to_string()),
    }
}

fn collect(cards: &mut Vec<Card>) -> impl FnMut(CardLine<'_>) -> vault::Result<()> + '_ {
    move |c: CardLine<'_>| {
        cards.push((
            c.line,
            c.serial.to_owned(),
            c.pin.expose_secret().to_vec(),
            c.puk.expose_secret().to_vec(),
        ));
        Ok(())
    }
}

fuzz_target!(|input: &[u8]| {
    let t = templates();
    let key = DataKey::from_bytes(KEY);
    let rules = ParseRules::default();
    let mut bytes = Bytes::new(input);
    let mode = bytes.byte();
    let upload: Vec<u8> = if mode & 1 == 0 {
        bytes.rest().to_vec()
    } else {
        let mut file = if mode & 2 == 0 {
            t.binary.clone()
        } else {
            t.armored.clone()
        };
        match (mode >> 2) & 3 {
            0 => {
                for _ in 0..(mode >> 4) {
                    let at = usize::from(bytes.u16()) % file.len();
                    file[at] ^= bytes.byte();
                }
            }
            1 => {
                let at = usize::from(bytes.u16()) % (file.len() + 1);
                file.truncate(at);
            }
            _ => {
                let at = usize::from(bytes.u16()) % (file.len() + 1);
                let put = bytes.rest();
                file.splice(at..at, put.iter().copied());
            }
        }
        file
    };

    let mut cards = Vec::new();
    let (result, encrypted) = parse_upload(&upload, &key, &rules, collect(&mut cards));
    assert_eq!(encrypted, is_age(&upload));
    let outcome = cards_of(result, cards);
    if let Err(message) = &outcome {
        assert_no_echo(&message.replace(&t.recipient, "<recipient>"), &upload);
    }
    if !encrypted {
        let mut alone = Vec::new();
        let direct = parse_code_file(&upload[..], &rules, collect(&mut alone));
        assert_eq!(
            outcome,
            cards_of(direct, alone),
            "a clear upload parsed otherwise"
        );
        return;
    }
    if let Ok(got) = outcome {
        let mut want = Vec::new();
        parse_code_file(CLEAR, &rules, collect(&mut want)).expect("the clear file parses");
        assert_eq!(
            got, want,
            "an age upload gave cards that are not the file's"
        );
    }
});

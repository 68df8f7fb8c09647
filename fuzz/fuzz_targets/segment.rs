//! Segment and envelope decoding given a valid key (`vault::fuzzing::segment_holds`, the
//! code vault's read of a card's codes checked against the codes sealed, and
//! `vault::Opener::open`).
//!
//! The first byte picks the mode:
//! - 0: the rest is a stored segment as it might be found damaged on disk;
//! - 1: the rest is a stored envelope;
//! - 2 and up: a segment of up to 40 cards is built from the bytes (serials, codes, sealing
//!   order) and sealed with the key, then damaged by a list of byte flips or a cut.
//!
//! Checked: never a panic, only the store's damage error or the integrity error; every
//! serial of an undamaged segment opens to exactly its codes (decode(encode(x)) == x); in a
//! damaged one, a serial that still opens opens to its own codes, never another card's or
//! altered ones (the AEAD and its AAD bind each record to its serial and key).
#![no_main]

use libfuzzer_sys::fuzz_target;
use plico_fuzz::Bytes;
use std::collections::BTreeMap;
use vault::fuzzing::{encode_segment, segment_holds, SealedRecord, Segment, MAX_RECORD_LEN};
use vault::{
    CardCodes, CodePolicy, DataKey, DataKeyId, Envelope, Error, FreshDataKey, KeyPurpose,
    LengthBounds, Opener, Pin, Plaintext, Puk, Sealer,
};

const KEY: [u8; 32] = [0x5A; 32];
const KEY_ID: DataKeyId = DataKeyId(7);
const ANY: CodePolicy = CodePolicy {
    pin: LengthBounds { min: 1, max: 16 },
    puk: LengthBounds { min: 1, max: 16 },
};

fn opener() -> Opener {
    Opener::new(KEY_ID, KEY_PURPOSE, &DataKey::from_bytes(KEY)).expect("opener")
}

const KEY_PURPOSE: KeyPurpose = KeyPurpose::Code;

fn only_damage_or_integrity(e: &Error) {
    assert!(
        matches!(e, Error::Storage(_) | Error::Integrity),
        "a damaged segment gave another error: {e}"
    );
}

/// Every record of a segment, as the batch scan reads them (serials in order, then records).
fn walk(bytes: &[u8], opener: &Opener) {
    let Ok(seg) = Segment::parse(bytes) else {
        return;
    };
    let mut serials = Vec::new();
    if let Err(e) = seg.for_each_serial(|_, s| {
        serials.push(s.to_vec());
        true
    }) {
        only_damage_or_integrity(&e);
    }
    for (i, serial) in serials.iter().enumerate() {
        match seg.record(i) {
            Ok((counter, sealed)) => {
                if let Ok(serial) = std::str::from_utf8(serial) {
                    if let Err(e) = opener.open_detached(serial, counter, sealed) {
                        only_damage_or_integrity(&e);
                    }
                }
            }
            Err(e) => only_damage_or_integrity(&e),
        }
    }
    let _ = seg.len();
}

/// Codes to check a serial against when the codes sealed are not known.
fn probe_codes() -> CardCodes {
    CardCodes {
        pin: Pin::parse("12345", &ANY).expect("digits"),
        puk: Puk::parse("12345678", &ANY).expect("digits"),
        signature: None,
    }
}

fn digits(b: &mut Bytes<'_>, max: u8) -> String {
    let n = usize::from(b.byte() % max) + 1;
    (0..n).map(|_| char::from(b'0' + b.byte() % 10)).collect()
}

fuzz_target!(|input: &[u8]| {
    let mut bytes = Bytes::new(input);
    let opener = opener();
    match bytes.byte() {
        0 => {
            let stored = bytes.rest();
            walk(stored, &opener);
            for probe in [
                &b"80380000000000000001"[..],
                &b"0"[..],
                &b""[..],
                &b"\xff"[..],
            ] {
                if let Ok(serial) = std::str::from_utf8(probe) {
                    match segment_holds(stored, serial, &opener, &probe_codes()) {
                        Ok(_) => {}
                        Err(e) => only_damage_or_integrity(&e),
                    }
                }
            }
            return;
        }
        1 => {
            let stored = Envelope::from_bytes(bytes.rest().to_vec());
            match opener.open("80380000000000000001", &stored) {
                Ok(_) => panic!("an envelope not sealed with the key opened"),
                Err(e) => assert!(matches!(e, Error::Integrity), "{e}"),
            }
            return;
        }
        _ => {}
    }

    // Cards: serials sorted and distinct (a BTreeMap), codes from the bytes.
    let count = usize::from(bytes.byte() % 40) + 1;
    let mut cards: BTreeMap<String, CardCodes> = BTreeMap::new();
    for i in 0..count {
        let serial = format!("8038{:04}{}", bytes.u16(), i % 3);
        let pin = Pin::parse(&digits(&mut bytes, 16), &ANY).expect("digits");
        let puk = Puk::parse(&digits(&mut bytes, 16), &ANY).expect("digits");
        let signature = (bytes.byte() & 1 == 1).then(|| {
            (
                Pin::parse(&digits(&mut bytes, 16), &ANY).expect("digits"),
                Puk::parse(&digits(&mut bytes, 16), &ANY).expect("digits"),
            )
        });
        cards.insert(
            serial,
            CardCodes {
                pin,
                puk,
                signature,
            },
        );
    }
    // Sealed in serial order, or in the reverse (then counters are stored per record).
    let reverse = bytes.byte() & 1 == 1;
    let mut sealer = Sealer::new(
        KEY_ID,
        KEY_PURPOSE,
        FreshDataKey::from_generated(DataKey::from_bytes(KEY)),
    )
    .expect("sealer");
    let mut sealed: BTreeMap<&str, (u32, Vec<u8>)> = BTreeMap::new();
    let order: Vec<(&String, &CardCodes)> = if reverse {
        cards.iter().rev().collect()
    } else {
        cards.iter().collect()
    };
    for (serial, codes) in order {
        let mut packed = [0u8; MAX_RECORD_LEN];
        let n = codes.pack(&mut packed);
        let mut out = Vec::new();
        let counter = sealer
            .seal_detached(serial, &packed[..n], &mut out)
            .expect("seal");
        sealed.insert(serial, (counter, out));
    }
    let records: Vec<SealedRecord<'_>> = sealed
        .iter()
        .map(|(serial, (counter, out))| SealedRecord {
            serial: serial.as_bytes(),
            counter: *counter,
            sealed: out,
        })
        .collect();
    let mut stored = Vec::new();
    encode_segment(KEY_ID, &records, &mut stored).expect("encode");

    // Damage: flips at positions from the bytes, or a cut.
    let damage = bytes.byte();
    let mut damaged = stored.clone();
    if damage & 0x80 != 0 {
        let at = usize::from(bytes.u16()) % (damaged.len() + 1);
        damaged.truncate(at);
    } else {
        for _ in 0..(damage & 7) {
            let at = usize::from(bytes.u16()) % damaged.len();
            damaged[at] ^= bytes.byte().max(1);
        }
    }
    let intact = damaged == stored;

    walk(&damaged, &opener);
    for (serial, codes) in &cards {
        match segment_holds(&damaged, serial, &opener, codes) {
            Ok(Some(same)) => assert!(same, "a serial opened to codes that are not its own"),
            Ok(None) => assert!(!intact, "an intact segment lost a serial"),
            Err(e) => {
                assert!(!intact, "an intact segment did not open: {e}");
                only_damage_or_integrity(&e);
            }
        }
    }
    // A serial the segment does not hold.
    match segment_holds(&damaged, "80399999999", &opener, &probe_codes()) {
        Ok(found) => assert!(found.is_none(), "a segment holds a serial never sealed"),
        Err(e) => {
            assert!(!intact, "an intact segment did not answer: {e}");
            only_damage_or_integrity(&e);
        }
    }
    // The full envelope form of one record, damaged the same way.
    if let Some((serial, codes)) = cards.iter().next() {
        let mut packed = [0u8; MAX_RECORD_LEN];
        let n = codes.pack(&mut packed);
        let envelope = sealer
            .seal(serial, &Plaintext::from_slice(&packed[..n]))
            .expect("seal");
        let mut raw = envelope.as_bytes().to_vec();
        if !intact && !raw.is_empty() {
            let at = usize::from(damage) % raw.len();
            raw[at] ^= 0x10;
        }
        match opener.open(serial, &Envelope::from_bytes(raw.clone())) {
            Ok(clear) => {
                assert!(raw == envelope.as_bytes(), "a damaged envelope opened");
                assert_eq!(clear.expose_secret(), &packed[..n]);
            }
            Err(e) => {
                assert!(raw != envelope.as_bytes(), "an envelope did not open: {e}");
                assert!(matches!(e, Error::Integrity));
            }
        }
    }
});

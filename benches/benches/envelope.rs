//! Criterion benches of the envelope hot path: sealing and opening one PIN/PUK record, against
//! the raw AES-256-GCM of the same bytes as the baseline, and unwrapping a data key.
//!
//! Run with `cargo bench -p plico-bench --bench envelope`. Not part of CI.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use vault::{DataKey, DataKeyId, Envelope, FreshDataKey, KeyPurpose, Opener, Plaintext, Sealer};

const RECORD: &[u8] = b"12345|87654321";
const SERIAL: &str = "8039000000000000001";

fn envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Elements(1));

    let raw = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let mut counter = 0u64;
    g.bench_function("baseline_raw_aes256gcm_seal", |b| {
        b.iter(|| {
            counter += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_be_bytes());
            let mut buf = RECORD.to_vec();
            let tag = raw
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(SERIAL.as_bytes()),
                    &mut buf,
                )
                .unwrap();
            black_box((buf, tag))
        })
    });

    let mut sealer = Sealer::new(
        DataKeyId(1),
        KeyPurpose::Code,
        FreshDataKey::from_generated(DataKey::from_bytes([7u8; 32])),
    )
    .unwrap();
    let plain = Plaintext::from_slice(RECORD);
    let mut out = Vec::with_capacity(64 * 1024);
    g.bench_function("sealer_seal_into", |b| {
        b.iter(|| {
            if out.len() > 60 * 1024 {
                out.clear();
            }
            sealer
                .seal_into(SERIAL, plain.expose_secret(), &mut out)
                .unwrap();
        })
    });

    let mut once = Sealer::new(
        DataKeyId(1),
        KeyPurpose::Code,
        FreshDataKey::from_generated(DataKey::from_bytes([7u8; 32])),
    )
    .unwrap();
    let sealed: Envelope = once.seal(SERIAL, &plain).unwrap();
    let opener = Opener::new(
        DataKeyId(1),
        KeyPurpose::Code,
        &DataKey::from_bytes([7u8; 32]),
    )
    .unwrap();
    g.bench_function("opener_open", |b| {
        b.iter(|| black_box(opener.open(SERIAL, &sealed).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, envelope);
criterion_main!(benches);

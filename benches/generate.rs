//! Criterion benches of the generation core: generating PIN/PUK pairs and sealing them as
//! envelopes, against a bare loop of the same work with no generator and no envelope — bulk
//! `SystemRandom` fills and raw AES-256-GCM over records of the same size and count.
//!
//! The goal (issue 4): `generate_and_seal` at ≥ 70 % of the throughput of `baseline`, on one
//! thread. Run with `cargo bench --bench generate`. Not part of CI.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use vault::bench::MAX_RECORD_LEN;
use vault::bench::{
    generate_for, system_fill, CodeGenerator, DigitStream, WeakFilter, RANDOM_BUFFER_LEN,
};
use vault::{CodePolicy, DataKey, DataKeyId, FreshDataKey, KeyPurpose, Sealer};

/// Records per iteration.
const N: usize = 100_000;

fn generate(c: &mut Criterion) {
    let serials: Vec<String> = (0..N).map(|i| format!("80390{i:014}")).collect();
    let generator = CodeGenerator::new(CodePolicy::CNS, WeakFilter::default()).unwrap();
    // `pin|puk`: the same plaintext size in both loops.
    let record = generator.record_len();
    let digits = generator.pin_len() + generator.puk_len();

    let mut g = c.benchmark_group("generate");
    g.throughput(Throughput::Elements(N as u64));

    // (a) Bare RNG + AES-GCM: bulk random bytes (the digits' worth per record, in 64 KiB fills)
    // and one raw seal per record with a counter nonce, the serial as AAD, appended to one
    // output buffer. No sampling, no weak filter, no envelope header or AAD label.
    let raw = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let rng = SystemRandom::new();
    let mut random = vec![0u8; RANDOM_BUFFER_LEN];
    let mut out = Vec::with_capacity(N * (1 + 4 + 12 + record + 16));
    let mut counter = 0u64;
    g.bench_function("baseline_rng_aes256gcm", |b| {
        b.iter(|| {
            out.clear();
            let mut pos = random.len();
            for serial in &serials {
                if pos + record > random.len() {
                    rng.fill(&mut random).unwrap();
                    pos = 0;
                }
                counter += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&counter.to_be_bytes());
                let start = out.len();
                out.extend_from_slice(&random[pos..pos + record]);
                pos += digits;
                let tag = raw
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(serial.as_bytes()),
                        &mut out[start..],
                    )
                    .unwrap();
                out.extend_from_slice(tag.as_ref());
            }
            black_box(out.len())
        })
    });

    // (b) The core: rejection-sampled digits, weak filter, `pin|puk` record, envelope.
    let mut sealer = Sealer::new(
        DataKeyId(1),
        KeyPurpose::Code,
        FreshDataKey::from_generated(DataKey::from_bytes([7u8; 32])),
    )
    .unwrap();
    let mut stream = DigitStream::new(system_fill);
    g.bench_function("generate_and_seal", |b| {
        b.iter(|| {
            out.clear();
            generator
                .seal_generated(&serials, &mut stream, &mut sealer, &mut out)
                .unwrap();
            black_box(out.len())
        })
    });

    // For reference: the envelope alone, sealing a fixed record with no generation (shows how
    // much of the gap to the baseline is the envelope's header and AAD, not the generator).
    g.bench_function("seal_only_fixed_record", |b| {
        let fixed = b"12345|87654321";
        b.iter(|| {
            out.clear();
            for serial in &serials {
                sealer.seal_into(serial, fixed, &mut out).unwrap();
            }
            black_box(out.len())
        })
    });

    // (c) The stored form, as `generate_batch` does it: a pair drawn straight into its packed
    // record (BCD, 8 bytes for CNS) and sealed detached (`ciphertext | tag`, counter nonce),
    // against (d) the bare loop over 8-byte records. The goal: (c) ≥ 70 % of (d).
    let mut detached = Sealer::new(
        DataKeyId(2),
        KeyPurpose::Code,
        FreshDataKey::from_generated(DataKey::from_bytes([8u8; 32])),
    )
    .unwrap();
    g.bench_function("generate_pack_seal_detached", |b| {
        b.iter(|| {
            out.clear();
            let mut clear = zeroize::Zeroizing::new([0u8; MAX_RECORD_LEN]);
            for serial in &serials {
                let n = generator.draw_packed(&mut stream, &mut clear).unwrap();
                detached
                    .seal_detached(serial, &clear[..n], &mut out)
                    .unwrap();
            }
            black_box(out.len())
        })
    });
    let packed = 8;
    g.bench_function("baseline_rng_aes256gcm_8_bytes", |b| {
        b.iter(|| {
            out.clear();
            let mut pos = random.len();
            for serial in &serials {
                if pos + packed > random.len() {
                    rng.fill(&mut random).unwrap();
                    pos = 0;
                }
                counter += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&counter.to_be_bytes());
                let start = out.len();
                out.extend_from_slice(&random[pos..pos + packed]);
                pos += packed;
                let tag = raw
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(serial.as_bytes()),
                        &mut out[start..],
                    )
                    .unwrap();
                out.extend_from_slice(tag.as_ref());
            }
            black_box(out.len())
        })
    });

    // (e) For reference: (d) with an AAD as long as the envelope's (label, version, purpose,
    // key id, subject length, subject: 41 bytes for a 19-digit serial instead of 19), built per
    // record in one reused buffer: shows how much of the gap is the longer AAD, which binds the record's identity.
    let mut aad = b"plico-envelope".to_vec();
    aad.extend_from_slice(&[1, 1, 0, 0, 0, 2]);
    let prefix = aad.len();
    g.bench_function("baseline_rng_aes256gcm_8_bytes_envelope_aad", |b| {
        b.iter(|| {
            out.clear();
            let mut pos = random.len();
            for serial in &serials {
                if pos + packed > random.len() {
                    rng.fill(&mut random).unwrap();
                    pos = 0;
                }
                counter += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&counter.to_be_bytes());
                let start = out.len();
                out.extend_from_slice(&random[pos..pos + packed]);
                pos += packed;
                let tag = raw
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from({
                            aad.truncate(prefix);
                            aad.extend_from_slice(&(serial.len() as u16).to_be_bytes());
                            aad.extend_from_slice(serial.as_bytes());
                            aad.as_slice()
                        }),
                        &mut out[start..],
                    )
                    .unwrap();
                out.extend_from_slice(tag.as_ref());
            }
            black_box(out.len())
        })
    });

    // For reference: pairs alone, on one thread and with rayon on every core.
    g.bench_function("pairs_one_thread", |b| {
        b.iter(|| {
            let mut n = 0;
            for _ in 0..N {
                let (pin, puk) = generator.pair(&mut stream).unwrap();
                n += pin.len() + puk.len();
            }
            black_box(n)
        })
    });
    g.bench_function("pairs_rayon_generate_for", |b| {
        b.iter(|| {
            black_box(
                generate_for(&serials, &generator, &system_fill)
                    .unwrap()
                    .len(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, generate);
criterion_main!(benches);

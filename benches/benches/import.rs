//! Criterion benches of the import core: the segment layout (encode, find) and a whole import
//! of an in-memory file into an in-memory store (parse, seal, sort, encode, commit), beside the
//! parser alone as its baseline. The durable end-to-end figure on sled, with its baselines, is
//! `plico-bench import --records N`. Run with `cargo bench -p plico-bench --bench import`. Not part of CI.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hsm_sim::SimulatedHsm;
use std::hint::black_box;
use std::sync::Arc;
use vault::bench::{encode, SealedRecord, Segment, SEGMENT_RECORDS};
use vault::bench::{parse, ParseRules};
use vault::AuditLog;
use vault::CodeVault;
use vault::MemoryStore;
use vault::Store;
use vault::{import_file, ImportContext, ImportRequest};
use vault::{DataKeyId, Hsm};

const CARDS: u64 = 100_000;

fn serial(i: u64) -> String {
    format!("8039{:015}", 1_000_000_000 + i)
}

fn file(n: u64) -> Vec<u8> {
    file_from(0, n)
}

/// Cards `first..first + n`: each iteration imports new serials into the same vault (the
/// HSM's audit anchor ties it to one store).
fn file_from(first: u64, n: u64) -> Vec<u8> {
    let mut s = String::from("serial;pin;puk\n");
    for i in first..first + n {
        s.push_str(&format!(
            "{};{:05};{:08}\n",
            serial(i),
            (i * 7919) % 100_000,
            (i * 104_729) % 100_000_000
        ));
    }
    s.into_bytes()
}

fn segments(c: &mut Criterion) {
    let serials: Vec<String> = (0..SEGMENT_RECORDS as u64).map(serial).collect();
    let sealed = vec![[9u8; 24]; SEGMENT_RECORDS];
    let records: Vec<SealedRecord<'_>> = serials
        .iter()
        .zip(&sealed)
        .enumerate()
        .map(|(i, (s, r))| SealedRecord {
            serial: s.as_bytes(),
            counter: i as u32,
            sealed: r,
        })
        .collect();
    let mut g = c.benchmark_group("segment");
    g.throughput(Throughput::Elements(SEGMENT_RECORDS as u64));
    let mut out = Vec::with_capacity(64 * 1024);
    g.bench_function("encode_1024", |b| {
        b.iter(|| {
            out.clear();
            encode(DataKeyId(1), black_box(&records), &mut out).unwrap();
        })
    });
    let bytes = out.clone();
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("find_one", |b| {
        b.iter(|| {
            i = (i + 389) % SEGMENT_RECORDS;
            let seg = Segment::parse(&bytes).unwrap();
            let at = seg.find(serials[i].as_bytes()).unwrap().unwrap();
            black_box(seg.record(at).unwrap());
        })
    });
    g.finish();
}

fn dev_hsm(dir: &std::path::Path) -> Arc<SimulatedHsm> {
    Arc::new(SimulatedHsm::dev(dir).unwrap())
}

fn import(c: &mut Criterion) {
    let data = file(CARDS);
    let dir = tempfile::tempdir().unwrap();
    let hsm = dev_hsm(dir.path());
    let rules = ParseRules::default();
    let mut g = c.benchmark_group("import");
    g.throughput(Throughput::Elements(CARDS));
    g.sample_size(10);
    g.bench_function("baseline_parse_only", |b| {
        b.iter(|| {
            let mut n = 0u64;
            parse(&data[..], &rules, |_| {
                n += 1;
                Ok(())
            })
            .unwrap();
            black_box(n)
        })
    });
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let audit = AuditLog::open(store.clone(), 1000).unwrap();
    audit.unlock(hsm.clone()).unwrap();
    let (vault, _) = CodeVault::open(store).unwrap();
    let mut next = 0u64;
    g.bench_function("import_memory_store", |b| {
        b.iter_batched(
            || {
                next += CARDS;
                file_from(next, CARDS)
            },
            |data| {
                let ctx = ImportContext {
                    vault: &vault,
                    hsm: &*hsm as &dyn Hsm,
                    audit: &audit,
                    rules: &rules,
                };
                let request = ImportRequest {
                    manufacturer: "bench".into(),
                    expected_cards: None,
                    expected_sha256: None,
                    actor: "bench".into(),
                    role: "manufacturer".into(),
                    request_id: String::new(),
                };
                import_file(ctx, &data[..], &request, &|_| {}).unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, segments, import);
criterion_main!(benches);

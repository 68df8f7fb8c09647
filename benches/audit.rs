//! Criterion benches of the audit chain's append: durable on sled (each append is a sled
//! transaction plus a flush) against the same chain on the in-memory store (hashing, HMAC and
//! encoding only) as the baseline, one appender and eight at once.
//!
//! Run with `cargo bench --bench audit`. Not part of CI.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use vault::DataKey;
use vault::MemoryStore;
use vault::SledStore;
use vault::Store;
use vault::{AuditLog, NewEvent};

fn event(i: u64) -> NewEvent {
    NewEvent::new("card.activate", format!("8039{i:015}"))
        .by("acc_0123456789abcdef", "operator")
        .request(format!("req-{i}"))
        .personal("codice_fiscale", "RSSMRA80A01H501U")
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("audit_append");
    g.throughput(Throughput::Elements(1));
    let key = DataKey::from_bytes([7u8; 32]);

    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let log = AuditLog::open(memory, 1000).unwrap();
    log.set_key(Some(&key)).unwrap();
    let mut i = 0u64;
    g.bench_function("baseline_memory_store", |b| {
        b.iter(|| {
            i += 1;
            log.append(event(i)).unwrap()
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let sled: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let log = AuditLog::open(sled, 1000).unwrap();
    log.set_key(Some(&key)).unwrap();
    g.bench_function("sled_durable", |b| {
        b.iter(|| {
            i += 1;
            log.append(event(i)).unwrap()
        })
    });

    // Eight appenders at once: the chain lock serialises the writes, the flushes overlap.
    let log = Arc::new(log);
    g.bench_function("sled_durable_8_threads", |b| {
        b.iter_custom(|iters| {
            let per_thread = iters.div_ceil(8);
            let start = std::time::Instant::now();
            std::thread::scope(|s| {
                for t in 0..8u64 {
                    let log = log.clone();
                    s.spawn(move || {
                        for j in 0..per_thread {
                            log.append(event(t * 1_000_000_000 + j)).unwrap();
                        }
                    });
                }
            });
            start
                .elapsed()
                .mul_f64(iters as f64 / (per_thread * 8) as f64)
        })
    });
    g.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);

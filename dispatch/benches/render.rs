//! Criterion benches of the three renderers, one mailer each (the print page, the e-mail and
//! the SMS both through their prepared shape and the direct way, templating every mailer), and
//! of a whole print file of 10,000 pages into a `Vec` sink on one thread (reported as pages
//! per second).
//!
//! Before criterion runs, a line `print_bytes_per_page prepared=… direct=…` gives the size of
//! a 1,000-page file a page, both ways.
//!
//! ```text
//! cargo bench -p dispatch --bench render
//! cargo bench -p dispatch --bench render -- 'render/(email|sms)'
//! ```

// A bench is a test harness: a failure should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dispatch::*;
use std::hint::black_box;
use std::sync::Arc;

const PAGES: u64 = 10_000;

fn fixture() -> (Addressee, Vec<PartCodes>) {
    let who = Addressee {
        name: "Niccolò D’Aragona".into(),
        address: vec!["Via Città di Castello, 12".into(), "00136 Roma RM".into()],
    };
    let codes = Codes::new(b"24680", b"13572468").unwrap();
    let parts = Plan::parse("counter(2)+sms").unwrap().cut(&codes).unwrap();
    (who, parts)
}

fn renderers(c: &mut Criterion) {
    let templates = Arc::new(Templates::builtin().unwrap());
    let issuer = Issuer::default();
    let print = PrintRenderer::new(templates.clone(), Layout::default(), issuer.clone());
    let email = EmailRenderer::new(templates.clone(), issuer.clone());
    let sms = SmsRenderer::new(templates, issuer);
    let (who, parts) = fixture();
    let m = |i: usize| Mailer {
        addressee: &who,
        card_serial: "8039123456781234",
        codes: &parts[i],
        number: Some(7),
    };

    for (label, direct) in [("prepared", false), ("direct", true)] {
        let mut w = PdfWriter::new(Vec::new(), &print).unwrap();
        for i in 0..1000u64 {
            let mailer = Mailer {
                number: Some(i),
                ..m((i % 2) as usize)
            };
            let page = if direct {
                print.render_page_direct(&mailer)
            } else {
                print.render_page(&mailer)
            };
            w.append(&page.unwrap()).unwrap();
        }
        eprintln!(
            "print_bytes_per_page {label}={}",
            w.bytes_written() / w.pages() as u64
        );
    }

    let mut g = c.benchmark_group("render");
    g.throughput(Throughput::Elements(1));
    g.bench_function("print_page", |b| {
        b.iter(|| black_box(print.render_page(&m(0)).unwrap()))
    });
    g.bench_function("print_page_direct", |b| {
        b.iter(|| black_box(print.render_page_direct(&m(0)).unwrap()))
    });
    g.bench_function("print_one_page_pdf", |b| {
        b.iter(|| black_box(print.render(&m(0)).unwrap()))
    });
    g.bench_function("email", |b| {
        b.iter(|| black_box(email.render(&m(1)).unwrap()))
    });
    g.bench_function("email_direct", |b| {
        b.iter(|| black_box(email.render_email_direct(&m(1)).unwrap()))
    });
    g.bench_function("sms", |b| b.iter(|| black_box(sms.render(&m(1)).unwrap())));
    g.bench_function("sms_direct", |b| {
        b.iter(|| black_box(sms.render_sms_direct(&m(1)).unwrap()))
    });
    g.finish();

    let mut g = c.benchmark_group("pdf_file");
    g.sample_size(10);
    g.throughput(Throughput::Elements(PAGES));
    g.bench_function("10000_pages_vec_sink_1_thread", |b| {
        b.iter(|| {
            let mut w = PdfWriter::new(Vec::with_capacity(64 << 20), &print).unwrap();
            for i in 0..PAGES {
                let mailer = Mailer {
                    number: Some(i),
                    ..m((i % 2) as usize)
                };
                w.add_page(&mailer).unwrap();
            }
            black_box(w.finish().unwrap().len())
        })
    });
    g.finish();
}

criterion_group!(benches, renderers);
criterion_main!(benches);

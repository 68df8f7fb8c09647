//! Integration tests of bulk print runs: sealed files opened with the `age` command-line tool
//! and read with poppler's `pdftotext`, manifests checked against the decrypted bytes, and a
//! scan of everything a run writes for clear codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/tools.rs"]
mod tools;

use aws_lc_rs::digest;
use dispatch::bulk::{Error as BulkError, Manifest, OwnedMailer, PrintRun};
use dispatch::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tools::{age_decrypt, tool};

/// Distinctive 8-digit codes: the PIN starts with 2, the PUK with 4, so no run of 8 digits in
/// a serial (`80395555` + 8 digits starting with 0), a mailer number or a size matches one.
fn pin(i: u64) -> String {
    format!("{}", 20_000_000 + i * 37)
}

fn puk(i: u64) -> String {
    format!("{}", 40_000_000 + i * 53)
}

fn serial(i: u64) -> String {
    format!("80395555{i:08}")
}

fn mailers(count: u64) -> impl Iterator<Item = Result<OwnedMailer>> {
    let who = Addressee {
        name: "Niccolò D’Aragona".into(),
        address: vec!["Via Città di Castello, 12".into(), "00136 Roma RM".into()],
    };
    (0..count).map(move |i| {
        let codes = Codes::new(pin(i).as_bytes(), puk(i).as_bytes())?;
        Ok(OwnedMailer {
            addressee: who.clone(),
            card_serial: serial(i),
            codes: Plan::Whole(None).cut(&codes)?.swap_remove(0),
            number: 1000 + i,
        })
    })
}

fn renderer() -> PrintRenderer {
    PrintRenderer::new(
        Arc::new(Templates::builtin().unwrap()),
        Layout::default(),
        Issuer::default(),
    )
}

/// Runs `count` mailers, `per_file` a file, sealed to a fresh identity.
fn run(dir: &Path, count: u64, per_file: usize) -> (age::x25519::Identity, Vec<Manifest>) {
    let id = age::x25519::Identity::generate();
    let run = PrintRun::new(renderer(), &[id.to_public().to_string()], dir, "B42")
        .unwrap()
        .per_file(per_file);
    let seen = AtomicU64::new(0);
    let manifests = run
        .run(mailers(count), &|n| {
            assert!(n >= seen.swap(n, Ordering::SeqCst), "progress goes back");
        })
        .unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), count);
    (id, manifests)
}

fn pdftotext(pdf: &[u8], scratch: &Path) -> String {
    let path = scratch.join("clear.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = tool("pdftotext")
        .args(["-q", "-enc", "UTF-8"])
        .arg(&path)
        .arg("-")
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(out.status.success(), "pdftotext failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn sealed_files_decrypt_with_age_and_every_page_is_in_order() {
    let out = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (id, manifests) = run(out.path(), 2_500, 1_000);

    let mut names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "B42-0001.manifest.json",
            "B42-0001.pdf.age",
            "B42-0002.manifest.json",
            "B42-0002.pdf.age",
            "B42-0003.manifest.json",
            "B42-0003.pdf.age",
        ]
    );
    assert_eq!(manifests.len(), 3);

    let mut i = 0u64;
    for (k, m) in manifests.iter().enumerate() {
        let sealed = out.path().join(&m.file);
        for p in [
            &sealed,
            &out.path().join(format!("B42-{:04}.manifest.json", k + 1)),
        ] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let on_disk: Manifest = serde_json::from_slice(
            &std::fs::read(out.path().join(format!("B42-{:04}.manifest.json", k + 1))).unwrap(),
        )
        .unwrap();
        assert_eq!(&on_disk, m);
        let expected = if k < 2 { 1_000 } else { 500 };
        assert_eq!(m.count, expected);
        assert_eq!(m.batch_label, "B42");
        assert_eq!(m.first_serial, serial(i));
        assert_eq!(m.last_serial, serial(i + expected - 1));
        assert_eq!(
            (m.first_number, m.last_number),
            (1000 + i, 1000 + i + expected - 1)
        );
        assert_eq!(m.numbers, None, "contiguous numbers are not listed");
        assert_eq!(m.sealed_bytes, std::fs::metadata(&sealed).unwrap().len());

        let clear = age_decrypt(&id, &sealed, scratch.path());
        let sha = digest::digest(&digest::SHA256, &clear);
        assert_eq!(m.sha256_clear_pdf, hex::encode(sha.as_ref()));

        let text = pdftotext(&clear, scratch.path());
        let pages: Vec<&str> = text
            .split('\u{c}')
            .filter(|p| !p.trim().is_empty())
            .collect();
        assert_eq!(pages.len() as u64, expected, "pages of {}", m.file);
        for page in pages {
            assert!(
                page.contains(&pin(i)) && page.contains(&puk(i)),
                "mailer {i} missing from its page in {}",
                m.file
            );
            assert!(page.contains(&format!("Plico n. {}", 1000 + i)), "{page}");
            assert!(!page.contains(&serial(i)), "full serial printed");
            i += 1;
        }
    }
    assert_eq!(i, 2_500);
}

#[test]
fn nothing_written_holds_a_clear_code() {
    let out = tempfile::tempdir().unwrap();
    let count = 1_200;
    let (_id, manifests) = run(out.path(), count, 500);
    assert_eq!(manifests.len(), 3);
    let mut files = 0;
    let mut stack = vec![out.path().to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path).unwrap();
            // Every 8-byte window that is all digits, compared against the run's codes.
            let windows: std::collections::HashSet<&[u8]> = bytes
                .windows(8)
                .filter(|w| w.iter().all(u8::is_ascii_digit))
                .collect();
            for i in 0..count {
                for code in [pin(i), puk(i)] {
                    assert!(
                        !windows.contains(code.as_bytes()),
                        "a clear code of mailer {i} is in {}",
                        path.display()
                    );
                }
            }
            assert!(
                !bytes.windows(5).any(|w| w == b"%PDF-"),
                "clear PDF in {}",
                path.display()
            );
        }
    }
    assert_eq!(files, 6, "only sealed files and manifests");
}

#[test]
fn non_contiguous_numbers_are_listed_and_bad_input_stops_the_run() {
    let out = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let run = PrintRun::new(renderer(), &[id.to_public().to_string()], out.path(), "gap")
        .unwrap()
        .per_file(10)
        .chunk(3);
    let manifests = run
        .run(
            mailers(12).filter_map(|m| {
                let m = m.unwrap();
                (m.number != 1004).then_some(Ok::<_, Error>(m))
            }),
            &|_| {},
        )
        .unwrap();
    assert_eq!(manifests.len(), 2);
    assert_eq!(
        manifests[0].numbers.as_deref(),
        Some(&[1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010][..])
    );
    assert_eq!(manifests[1].count, 1);
    assert_eq!(manifests[1].numbers, None);

    // A second run with the same label never overwrites.
    let again = run.run(mailers(1), &|_| {});
    assert!(matches!(again, Err(BulkError::Exists { .. })), "{again:?}");

    // An input error stops the run, names the input position and leaves no partial file.
    let out2 = tempfile::tempdir().unwrap();
    let run2 = PrintRun::new(
        renderer(),
        &[id.to_public().to_string()],
        out2.path(),
        "bad",
    )
    .unwrap()
    .per_file(100);
    let input = mailers(5).chain(std::iter::once(Err(Error::NoPages)));
    let err = run2.run(input, &|_| {}).unwrap_err();
    assert!(matches!(err, BulkError::Source { index: 5, .. }), "{err}");
    assert_eq!(std::fs::read_dir(out2.path()).unwrap().count(), 0);

    // The same after a file was opened and pages appended: the partial file goes away.
    let run3 = run2.chunk(2);
    let appended = AtomicU64::new(0);
    let input = mailers(5).chain(std::iter::once(Err(Error::NoPages)));
    let err = run3
        .run(input, &|n| appended.store(n, Ordering::SeqCst))
        .unwrap_err();
    assert!(matches!(err, BulkError::Source { index: 5, .. }), "{err}");
    assert!(appended.load(Ordering::SeqCst) > 0, "no page was appended");
    assert_eq!(std::fs::read_dir(out2.path()).unwrap().count(), 0);
}

#[test]
fn recipients_and_labels_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let none: [&str; 0] = [];
    assert!(matches!(
        PrintRun::new(renderer(), &none, dir.path(), "x"),
        Err(BulkError::NoRecipients)
    ));
    let good = age::x25519::Identity::generate().to_public().to_string();
    assert!(matches!(
        PrintRun::new(renderer(), &[good.as_str(), "age1nope"], dir.path(), "x"),
        Err(BulkError::Recipient { index: 1 })
    ));
    for bad in ["", "../x", ".hidden", "a/b", "spa ce"] {
        assert!(matches!(
            PrintRun::new(renderer(), &[good.as_str()], dir.path(), bad),
            Err(BulkError::Label { .. })
        ));
    }
}

/// Holders of the registry's alphabets (Romanian, Polish, Greek, Cyrillic, Vietnamese) and one
/// whose address cannot fit the window even wrapped: the run prints every other mailer, the
/// names read back from the sealed file, and the one that cannot be laid out is set aside by
/// serial with its reason.
#[test]
fn every_alphabet_prints_and_a_mailer_that_cannot_be_laid_out_is_set_aside() {
    let out = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let names = [
        "Ștefan Popescu",
        "Łukasz Wróbel",
        "Γιώργος Παπαδόπουλος",
        "Ольга Иванова",
        "Nguyễn Thị Minh Khai",
        "Too Long",
        "Țicu Ăndrei",
    ];
    let all = names.iter().enumerate().map(|(i, name)| {
        let i = i as u64;
        let codes = Codes::new(pin(i).as_bytes(), puk(i).as_bytes())?;
        let address = if *name == "Too Long" {
            vec!["Via Lunga".into(); 12]
        } else {
            vec!["ул. Тверская, 7".into(), "90100 Palermo PA".into()]
        };
        Ok::<_, dispatch::Error>(OwnedMailer {
            addressee: Addressee {
                name: (*name).into(),
                address,
            },
            card_serial: serial(i),
            codes: Plan::Whole(None).cut(&codes)?.swap_remove(0),
            number: 1000 + i,
        })
    });
    let id = age::x25519::Identity::generate();
    let run = PrintRun::new(renderer(), &[id.to_public().to_string()], out.path(), "B43")
        .unwrap()
        .chunk(3);
    let aside = std::sync::Mutex::new(Vec::new());
    let manifests = run
        .run_recorded(all, &|_| {}, &|_| Ok(()), &|m| {
            aside.lock().unwrap().push(m.clone());
            Ok(())
        })
        .unwrap();
    let aside = aside.into_inner().unwrap();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(aside[0].serial, serial(5));
    assert_eq!(aside[0].number, 1005);
    assert!(
        matches!(aside[0].reason, LayoutError::TooManyLines { lines: 13, .. }),
        "{:?}",
        aside[0].reason
    );
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0].count, 6);
    assert_eq!(
        manifests[0].numbers.as_deref(),
        Some(&[1000, 1001, 1002, 1003, 1004, 1006][..])
    );
    let pdf = age_decrypt(&id, &out.path().join(&manifests[0].file), scratch.path());
    let text = pdftotext(&pdf, scratch.path());
    for name in names.iter().filter(|n| **n != "Too Long") {
        assert!(text.contains(name), "{name} missing in\n{text}");
    }
    assert!(text.contains("ул. Тверская, 7"), "{text}");
    assert!(!text.contains("Too Long"), "{text}");

    // Without a recorder for set-aside mailers, the run stops at it, as before.
    let out2 = tempfile::tempdir().unwrap();
    let run = PrintRun::new(
        renderer(),
        &[id.to_public().to_string()],
        out2.path(),
        "B44",
    )
    .unwrap();
    let e = run
        .run(
            mailers(2).chain(std::iter::once(Ok(OwnedMailer {
                addressee: Addressee {
                    name: "M".repeat(80),
                    address: vec![],
                },
                card_serial: serial(9),
                codes: Plan::Whole(None)
                    .cut(&Codes::new(b"1234", b"12345678").unwrap())
                    .unwrap()
                    .swap_remove(0),
                number: 9,
            }))),
            &|_| {},
        )
        .unwrap_err();
    assert!(matches!(e, BulkError::Render { number: 9, .. }), "{e}");
}

/// Runs a tool on a file and returns its standard output, failing on a non-zero exit.
fn tool_output(name: &str, args: &[&str], file: &Path) -> String {
    let out = tool(name).args(args).arg(file).output().unwrap();
    assert!(out.status.success(), "{name} {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A value of qpdf's JSON view of an object: the dictionary of `obj:N 0 R` (of its stream
/// dictionary for a stream).
fn qpdf_dict<'j>(objects: &'j serde_json::Value, reference: &str) -> &'j serde_json::Value {
    let obj = &objects[format!("obj:{reference}")];
    let value = &obj["value"];
    if value.is_null() {
        &obj["stream"]["dict"]
    } else {
        value
    }
}

/// A real print file (sealed, then opened with `age`) is PDF/A-2b as far as the tools here
/// can tell (veraPDF is not packaged for Debian): `qpdf --check` finds no fault, `pdffonts`
/// lists every font embedded, and qpdf's own parse of the file shows a 1.7 header, XMP
/// metadata declaring part 2 conformance B (dates equal, no Info dictionary to disagree
/// with), a `GTS_PDFA1` output intent with an embedded RGB ICC profile, a document ID in the
/// trailer, and nothing transparent.
#[test]
fn a_sealed_print_file_is_pdf_a_2b() {
    let out = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (id, manifests) = run(out.path(), 40, 1_000);
    let clear = age_decrypt(&id, &out.path().join(&manifests[0].file), scratch.path());
    let path = scratch.path().join("print.pdf");
    std::fs::write(&path, &clear).unwrap();

    let check = tool_output("qpdf", &["--check"], &path);
    assert!(
        check.contains("No syntax or stream encoding errors"),
        "{check}"
    );
    let fonts = tool_output("pdffonts", &[], &path);
    let rows: Vec<&str> = fonts.lines().skip(2).collect();
    assert_eq!(rows.len(), 3, "{fonts}");
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[4], "yes", "not embedded: {fonts}");
    }

    let json: serde_json::Value = serde_json::from_str(&tool_output(
        "qpdf",
        &[
            "--json=2",
            "--json-key=qpdf",
            "--json-key=pages",
            "--json-stream-data=inline",
        ],
        &path,
    ))
    .unwrap();
    let head = &json["qpdf"][0];
    let version: f32 = head["pdfversion"].as_str().unwrap().parse().unwrap();
    assert!(version <= 1.7, "header version {version}");
    let objects = &json["qpdf"][1];
    let trailer = &objects["trailer"]["value"];
    assert!(trailer["/Info"].is_null(), "an Info dictionary: {trailer}");
    assert!(trailer["/Encrypt"].is_null(), "{trailer}");
    let ids = trailer["/ID"].as_array().expect("a document ID");
    assert_eq!(ids.len(), 2);
    assert!(ids[0].as_str().unwrap().len() >= 2 + 32, "{ids:?}");
    let root = trailer["/Root"].as_str().unwrap();
    let catalog = qpdf_dict(objects, root);

    // XMP: unfiltered, PDF/A-2b, one instant for the three dates.
    let meta_ref = catalog["/Metadata"].as_str().unwrap();
    let meta = &objects[format!("obj:{meta_ref}")]["stream"];
    assert!(meta["dict"]["/Filter"].is_null(), "filtered metadata");
    assert_eq!(meta["dict"]["/Subtype"], "/XML");
    let xmp = base64_decode(meta["data"].as_str().unwrap());
    let xmp = String::from_utf8(xmp).unwrap();
    assert!(xmp.contains("<pdfaid:part>2</pdfaid:part>"), "{xmp}");
    assert!(
        xmp.contains("<pdfaid:conformance>B</pdfaid:conformance>"),
        "{xmp}"
    );
    let date = |tag: &str| {
        let open = format!("<xmp:{tag}>");
        let from = xmp.find(&open).unwrap_or_else(|| panic!("no {tag}")) + open.len();
        xmp[from..from + 20].to_owned()
    };
    assert_eq!(date("CreateDate"), date("ModifyDate"));
    assert_eq!(date("CreateDate"), date("MetadataDate"));
    assert!(xmp.contains("Lotto B42"), "{xmp}");

    // One GTS_PDFA1 output intent with an embedded RGB profile.
    let intents = catalog["/OutputIntents"]
        .as_array()
        .expect("output intents");
    assert_eq!(intents.len(), 1);
    let intent = &intents[0];
    assert_eq!(intent["/S"], "/GTS_PDFA1");
    let profile_ref = intent["/DestOutputProfile"].as_str().unwrap();
    let profile = &objects[format!("obj:{profile_ref}")]["stream"];
    assert_eq!(profile["dict"]["/N"], 3);
    let icc = base64_decode(profile["data"].as_str().unwrap());
    assert_eq!(&icc[36..40], b"acsp", "not an ICC profile");
    assert_eq!(&icc[16..20], b"RGB ");

    // Nothing transparent: no soft mask, constant alpha, blend mode or transparency group.
    for (name, obj) in objects.as_object().unwrap() {
        let dict = if obj["value"].is_object() {
            &obj["value"]
        } else {
            &obj["stream"]["dict"]
        };
        for key in ["/SMask", "/CA", "/ca", "/BM", "/Group", "/AA", "/JS"] {
            assert!(dict[key].is_null(), "{name} has {key}");
        }
    }
    let pages = json["pages"].as_array().unwrap();
    assert_eq!(pages.len(), 40);
}

/// Standard base64 (qpdf's inline stream data).
fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// Files are published and recorded on a thread of their own: when it stops (here its
/// recorder refuses the second file), the run stops with that error instead of waiting or
/// printing on, the first file keeps its manifest, the refused one has none, no partial is
/// left and the input is not read to its end.
#[test]
fn a_recorder_failure_on_the_publishing_thread_stops_the_run() {
    let out = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let run = PrintRun::new(renderer(), &[id.to_public().to_string()], out.path(), "rec")
        .unwrap()
        .per_file(4)
        .chunk(2);
    let pulled = AtomicU64::new(0);
    let input = mailers(1_000).inspect(|_| {
        pulled.fetch_add(1, Ordering::SeqCst);
    });
    let files = AtomicU64::new(0);
    let err = run
        .run_with_files(input, &|_| {}, &|file| {
            assert_eq!(file.numbers.len(), 4);
            if files.fetch_add(1, Ordering::SeqCst) == 0 {
                assert_eq!(file.numbers, &[1000, 1001, 1002, 1003][..]);
                Ok(())
            } else {
                Err("refused".into())
            }
        })
        .unwrap_err();
    assert!(
        matches!(&err, BulkError::Recorded { file, .. } if file == "rec-0002.pdf.age"),
        "{err}"
    );
    let mut names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "rec-0001.manifest.json",
            "rec-0001.pdf.age",
            "rec-0002.pdf.age"
        ]
    );
    // Bounded: a few chunks past the refused file, never the whole input.
    assert!(pulled.load(Ordering::SeqCst) < 100, "input read on");
}

/// Issue 20: the appending stage (PDF objects, SHA-256, age encryption) ran on a thread of its
/// own beside the rayon pool, so a run on a one-thread pool kept two cores busy, and the
/// "1 → 2 threads" scaling of the print bench compared more than one core with two. Every
/// CPU stage now runs on the caller's pool: the appending stage, which reports progress after
/// each chunk, does so from a thread of that pool, and the files are whole.
#[test]
fn every_cpu_stage_of_a_run_is_work_of_the_callers_pool() {
    let out = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let run = PrintRun::new(
        renderer(),
        &[id.to_public().to_string()],
        out.path(),
        "pool",
    )
    .unwrap()
    .per_file(10)
    .chunk(4);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let (calls, off_pool) = (AtomicU64::new(0), AtomicU64::new(0));
    let manifests = pool
        .install(|| {
            run.run(mailers(25), &|_| {
                calls.fetch_add(1, Ordering::SeqCst);
                if pool.current_thread_index().is_none() {
                    off_pool.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .unwrap();
    assert_eq!(
        manifests.iter().map(|m| m.count).collect::<Vec<_>>(),
        [10, 10, 5]
    );
    assert!(calls.load(Ordering::SeqCst) >= 7, "one call a chunk");
    assert_eq!(off_pool.load(Ordering::SeqCst), 0, "appended off the pool");
    let numbers: Vec<u64> = manifests
        .iter()
        .flat_map(|m| m.first_number..=m.last_number)
        .collect();
    assert_eq!(numbers, (1000..1025).collect::<Vec<_>>());
}

//! Code batches over HTTP, on a real sled store on disk: uploads (committed, rejected, already
//! stored, quarantined, too large, cut off), one test per kind of malformed file, generation,
//! the age recipient with a file encrypted by the `age` command-line tool, who may see what,
//! and the CLI commands against `serve --dev`.
//!
//! Every answer to an upload is checked, as raw bytes, not to contain any code of the file.
//! The fixture uses 8-digit PINs and PUKs (the CIE-like policy) so that a code cannot appear by
//! chance in a timestamp or a request id of the answer.

use super::support::{audit_actions, open_with_accounts, serve_dev, sled_state};
use super::*;
use plico::Settings;
use std::collections::BTreeMap;
use vault::CodePolicy;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// An unsealed service over sled in a temporary directory, with these accounts: `admin`,
/// `acme` and `other` (manufacturers), `cms`, `operator`, `officer`, `auditor`.
struct Bulk {
    _dir: tempfile::TempDir,
    state: AppState,
    app: Router,
    tokens: BTreeMap<&'static str, String>,
}

impl Bulk {
    fn new() -> Bulk {
        Self::with(Settings {
            codes: CodePolicy::CIE,
            ..Settings::default()
        })
    }

    fn with(settings: Settings) -> Bulk {
        let dir = tempfile::tempdir().unwrap();
        let state = sled_state(dir.path(), &settings);
        let tokens = open_with_accounts(
            &state,
            &["acme", "other", "cms", "operator", "officer", "auditor"],
        )
        .tokens;
        let app = app(state.clone());
        Bulk {
            _dir: dir,
            state,
            app,
            tokens,
        }
    }

    fn token(&self, who: &str) -> &str {
        &self.tokens[who]
    }

    async fn upload(&self, who: &str, query: &str, body: impl Into<Body>) -> Answer {
        send(
            &self.app,
            upload_request(self.token(who), query, body.into()),
        )
        .await
    }

    async fn get(&self, who: &str, uri: &str) -> Answer {
        let req = Request::get(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token(who)))
            .body(Body::empty())
            .unwrap();
        send(&self.app, req).await
    }

    async fn generate(&self, who: &str, body: Value) -> Answer {
        let req = Request::post("/v1/generate")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token(who)))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        send(&self.app, req).await
    }

    /// Every batch record in the store, whatever its state.
    fn records(&self) -> Vec<vault::BatchRecord> {
        self.state.codes.batches(None, 10_000).unwrap()
    }
}

fn upload_request(token: &str, query: &str, body: Body) -> Request<Body> {
    Request::post(format!("/v1/batches?{query}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body)
        .unwrap()
}

/// A body sent in chunks of `size` bytes, without a content-length.
fn chunked(bytes: Vec<u8>, size: usize) -> Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(size).map(|c| Ok(c.to_vec())).collect();
    Body::from_stream(futures_util::stream::iter(chunks))
}

pub(super) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 20-digit serial number `n`.
pub(super) fn serial(n: u64) -> String {
    format!("8038{n:016}")
}

/// The test codes of serial `n` under `salt`: 8-digit PIN and PUK.
pub(super) fn codes_of(n: u64, salt: u64) -> (String, String) {
    let a = mix(n ^ salt.rotate_left(17));
    let b = mix(a);
    (
        format!("{:08}", a % 100_000_000),
        format!("{:08}", b % 100_000_000),
    )
}

/// `count` card lines from serial `first`, with `;`, LF endings.
fn card_lines(first: u64, count: u64, salt: u64) -> String {
    (first..first + count)
        .map(|n| {
            let (pin, puk) = codes_of(n, salt);
            format!("{};{pin};{puk}\n", serial(n))
        })
        .collect()
}

/// Every field after the serial of every line that has 6 or more digits: the codes (whole or
/// cut) that no answer may contain.
fn codes_in(text: &str) -> Vec<String> {
    text.lines()
        .flat_map(|l| l.split([';', ',']).skip(1))
        .map(|f| f.trim_matches(|c: char| !c.is_ascii_digit()))
        .filter(|f| f.len() >= 6 && f.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_owned)
        .collect()
}

fn assert_no_code(a: &Answer, file: &str) {
    for code in codes_in(file) {
        assert!(
            !a.text.contains(&code),
            "the answer contains a code of the file: {}",
            a.text
        );
    }
}

fn assert_outcome(a: &Answer, status: StatusCode, outcome: &str) {
    assert_eq!(a.status, status, "{}", a.text);
    assert_eq!(a.json["outcome"], outcome, "{}", a.text);
}

/// The answer of a rejected file: 422, the error shape, the report naming `line` and `what`.
fn assert_rejected(a: &Answer, line: Option<u64>, what: &str) {
    assert_outcome(a, StatusCode::UNPROCESSABLE_ENTITY, "rejected");
    assert_eq!(a.json["error"]["code"], "rejected", "{}", a.text);
    assert_eq!(a.json["cards"], 0, "{}", a.text);
    let problems: Vec<&str> = a.json["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let found = problems
        .iter()
        .any(|p| p.contains(what) && line.is_none_or(|l| p.starts_with(&format!("line {l}: "))));
    assert!(
        found,
        "no problem at line {line:?} about {what:?}: {problems:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Uploads
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn upload_commits_and_lists_without_codes() {
    let b = Bulk::new();
    let file = format!("serial;pin;puk\n# a comment\n{}", card_lines(1, 500, 1));
    let a = b
        .upload(
            "acme",
            "manufacturer=ACME%20Cards&expected_cards=500",
            file.clone(),
        )
        .await;
    assert_outcome(&a, StatusCode::CREATED, "committed");
    assert_no_code(&a, &file);
    assert_eq!(a.json["cards"], 500);
    assert_eq!(a.json["runs"], 1);
    assert_eq!(a.json["bytes"], file.len());
    assert!(a.json["elapsed_ms"].is_u64());
    assert!(a.json.get("error").is_none(), "{}", a.text);
    let id = a.json["batch"].as_str().unwrap().to_owned();

    let list = b.get("acme", "/v1/batches").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_no_code(&list, &file);
    let batches = list.json["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0]["id"], id.as_str());
    assert_eq!(batches[0]["state"], "committed");
    assert_eq!(batches[0]["manufacturer"], "ACME Cards");
    assert_eq!(batches[0]["runs"][0]["first"], serial(1));
    assert_eq!(batches[0]["runs"][0]["last"], serial(500));
    for who in ["admin", "cms", "officer", "auditor"] {
        let one = b.get(who, &format!("/v1/batches/{id}")).await;
        assert_eq!(one.status, StatusCode::OK, "{who}: {}", one.text);
        assert_eq!(one.json["cards"], 500);
        assert!(one.json.get("content_id").is_none(), "{}", one.text);
        assert_no_code(&one, &file);
    }

    // Stored, and correct.
    for n in [1, 250, 500] {
        let c = super::support::released_codes(&b.state, &serial(n))
            .unwrap()
            .unwrap();
        let (pin, puk) = codes_of(n, 1);
        assert_eq!(c.pin.expose_secret(), pin.as_bytes());
        assert_eq!(c.puk.expose_secret(), puk.as_bytes());
    }
    assert!(audit_actions(&b.state, "batch.").contains(&"batch.import".to_owned()));
}

#[tokio::test]
async fn a_rejected_file_reports_lines_and_stores_nothing() {
    let b = Bulk::new();
    let mut file = card_lines(1, 10, 2);
    file.push_str(&format!("{};1234567;87654321\n", serial(11)));
    file.push_str(&card_lines(12, 5, 2));
    file.push_str(&format!("{};12345678;7654321\n", serial(17)));
    let a = b
        .upload("acme", "manufacturer=ACME", chunked(file.clone().into(), 7))
        .await;
    assert_rejected(&a, Some(11), "pin has 7 digits, policy wants 8");
    assert_rejected(&a, Some(17), "puk has 7 digits, policy wants 8");
    assert_eq!(a.json["problems_total"], 2);
    assert_no_code(&a, &file);
    // Nothing visible: not one card of the good lines, and the batch is only a rejection.
    for n in 1..=17 {
        assert_eq!(b.state.codes.locate(&serial(n)).unwrap(), None);
    }
    let records = b.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].state, vault::BatchState::Rejected);
    assert_eq!(records[0].data_key, None);
    let shown = b.get("acme", "/v1/batches").await;
    assert_eq!(shown.json["batches"][0]["state"], "rejected");
    assert_no_code(&shown, &file);
    assert!(audit_actions(&b.state, "batch.").contains(&"batch.reject".to_owned()));

    // A count or hash the file does not match.
    let good = card_lines(100, 3, 2);
    let a = b
        .upload("acme", "manufacturer=ACME&expected_cards=4", good.clone())
        .await;
    assert_rejected(&a, None, "announced 4");
    let wrong = "00".repeat(32);
    let a = b
        .upload(
            "acme",
            &format!("manufacturer=ACME&sha256={wrong}"),
            good.clone(),
        )
        .await;
    assert_rejected(&a, None, "sha-256");
    assert_no_code(&a, &good);
    assert_eq!(b.state.codes.locate(&serial(100)).unwrap(), None);
}

#[tokio::test]
async fn the_same_file_twice_answers_the_first_batch() {
    let b = Bulk::new();
    let file = card_lines(1, 100, 3);
    let first = b.upload("acme", "manufacturer=ACME", file.clone()).await;
    assert_outcome(&first, StatusCode::CREATED, "committed");
    let again = b
        .upload(
            "acme",
            "manufacturer=ACME",
            chunked(file.clone().into(), 1000),
        )
        .await;
    assert_outcome(&again, StatusCode::OK, "already_stored");
    assert_eq!(again.json["batch"], first.json["batch"]);
    assert_eq!(again.json["cards"], 100);
    assert_no_code(&again, &file);
    // No second copy: the upload's own id keeps a record that holds nothing and names the
    // first batch, so the id it was given answers instead of 404 (issue 14).
    let records = b.records();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!((records[1].cards, records[1].data_key), (0, None));
    let dropped = records[1].id.to_string();
    let shown = b.get("acme", &format!("/v1/batches/{dropped}")).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.json);
    assert_eq!(shown.json["state"], "duplicate");
    assert_eq!(shown.json["duplicate_of"], first.json["batch"]);
    assert!(audit_actions(&b.state, "batch.").contains(&"batch.duplicate_upload".to_owned()));
}

#[tokio::test]
async fn known_serials_quarantine_the_batch() {
    let b = Bulk::new();
    let first = card_lines(1, 100, 4);
    let a = b.upload("acme", "manufacturer=ACME", first.clone()).await;
    assert_outcome(&a, StatusCode::CREATED, "committed");
    // 90..=189 overlaps 90..=100 of the first batch, with other codes.
    let second = card_lines(90, 100, 5);
    let a = b
        .upload("other", "manufacturer=Other", second.clone())
        .await;
    assert_outcome(&a, StatusCode::CONFLICT, "quarantined");
    assert_eq!(a.json["error"]["code"], "quarantined");
    // The answer says what to do next (issue 14: a quarantined batch had no documented step).
    let message = a.json["error"]["message"].as_str().unwrap();
    let id = a.json["batch"].as_str().unwrap();
    assert!(
        message.contains(&format!("plico keys propose discard --batch {id}")),
        "{message}"
    );
    assert_eq!(a.json["problems_total"], 11);
    let problems = a.json["problems"].as_array().unwrap();
    assert!(
        problems[0].as_str().unwrap().contains(&serial(90)),
        "{}",
        a.text
    );
    assert_no_code(&a, &second);
    // Nothing overwritten, nothing of the second batch visible.
    let c = super::support::released_codes(&b.state, &serial(95))
        .unwrap()
        .unwrap();
    assert_eq!(c.pin.expose_secret(), codes_of(95, 4).0.as_bytes());
    assert_eq!(b.state.codes.locate(&serial(150)).unwrap(), None);
    assert!(audit_actions(&b.state, "batch.").contains(&"batch.quarantine".to_owned()));
}

#[tokio::test]
async fn roles_and_ownership() {
    let b = Bulk::new();
    let file = card_lines(1, 10, 6);
    for who in ["admin", "cms", "operator", "officer", "auditor"] {
        let a = b.upload(who, "manufacturer=ACME", file.clone()).await;
        assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    }
    assert!(b.records().is_empty());
    let a = b.upload("acme", "manufacturer=ACME", file.clone()).await;
    assert_outcome(&a, StatusCode::CREATED, "committed");
    let id = a.json["batch"].as_str().unwrap().to_owned();

    // Another manufacturer sees neither the batch nor that it exists.
    let a = b.get("other", &format!("/v1/batches/{id}")).await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
    let a = b.get("other", "/v1/batches").await;
    assert_eq!(a.json["batches"], json!([]), "{}", a.text);
    let a = b.get("operator", "/v1/batches").await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");

    // Generation is the cms's.
    for who in ["acme", "admin", "operator"] {
        let a = b
            .generate(who, json!({"range": {"first": serial(1000), "count": 5}}))
            .await;
        assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    }
    // The recipient is for manufacturers and the admin.
    for who in ["cms", "auditor"] {
        let a = b.get(who, "/v1/import/recipient").await;
        assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    }
    // Without a token: 401.
    let req = upload_request("nobody", "manufacturer=ACME", Body::from(file));
    assert_error(
        &send(&b.app, req).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
}

#[tokio::test]
async fn oversize_uploads_are_413_and_leave_nothing() {
    let b = Bulk::with(Settings {
        codes: CodePolicy::CIE,
        max_upload_bytes: 4096,
        ..Settings::default()
    });
    let file = card_lines(1, 200, 7);
    assert!(file.len() > 4096);
    // With a content-length: refused before anything is read.
    let a = b.upload("acme", "manufacturer=ACME", file.clone()).await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    assert!(a.text.contains("4096"), "{}", a.text);
    // Streamed without one: cut off while reading, and the started batch is abandoned.
    let a = b
        .upload(
            "acme",
            "manufacturer=ACME",
            chunked(file.clone().into(), 1000),
        )
        .await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    assert_no_code(&a, &file);
    assert!(b.records().is_empty(), "{:?}", b.records());
    assert_eq!(b.state.codes.locate(&serial(1)).unwrap(), None);
    assert!(audit_actions(&b.state, "batch.").contains(&"batch.abandon".to_owned()));
    // A file under the limit still goes through.
    let small = card_lines(1, 50, 7);
    let a = b.upload("acme", "manufacturer=ACME", small).await;
    assert_outcome(&a, StatusCode::CREATED, "committed");
}

#[tokio::test]
async fn bad_upload_requests_are_refused_before_anything_starts() {
    let b = Bulk::new();
    let file = card_lines(1, 3, 8);
    for (query, what) in [
        ("", "manufacturer: required"),
        ("manufacturer=", "manufacturer: 1 to 64"),
        ("manufacturer=ACME%3Bx", "not allowed"),
        ("manufacturer=ACME&sha256=abc", "sha256: expected 64"),
        ("manufacturer=ACME&expected_cards=many", "query string"),
        ("manufacturer=ACME&colour=blue", "colour"),
    ] {
        let a = b.upload("acme", query, file.clone()).await;
        assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
        assert!(
            a.json["error"]["message"].as_str().unwrap().contains(what),
            "{query}: {}",
            a.text
        );
    }
    let req = Request::post("/v1/batches?manufacturer=ACME")
        .header(header::AUTHORIZATION, format!("Bearer {}", b.token("acme")))
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=x")
        .body(Body::from(file))
        .unwrap();
    let a = send(&b.app, req).await;
    assert_error(
        &a,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    assert!(b.records().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Malformed files, one per kind, through the HTTP path
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_empty_file_is_rejected() {
    let b = Bulk::new();
    let a = b.upload("acme", "manufacturer=ACME", Vec::new()).await;
    assert_rejected(&a, None, "no cards");
    let a = b
        .upload("acme", "manufacturer=ACME", "serial;pin;puk\n# nothing\n\n")
        .await;
    assert_rejected(&a, None, "no cards");
}

#[tokio::test]
async fn a_binary_file_is_rejected() {
    let b = Bulk::new();
    let mut bytes: Vec<u8> = (0..4096u64).map(|i| (mix(i) & 0xff) as u8).collect();
    bytes[10] = 0;
    let a = b
        .upload("acme", "manufacturer=ACME", chunked(bytes, 512))
        .await;
    assert_outcome(&a, StatusCode::UNPROCESSABLE_ENTITY, "rejected");
    let text = a.json["problems"].to_string();
    assert!(
        text.contains("NUL") || text.contains("UTF-8") || text.contains("binary"),
        "{}",
        a.text
    );
    // A card file with a NUL in a line.
    let mut file = card_lines(1, 3, 9).into_bytes();
    file.extend_from_slice(format!("{};1234\0678;12345678\n", serial(4)).as_bytes());
    let a = b.upload("acme", "manufacturer=ACME", file).await;
    assert_rejected(&a, Some(4), "NUL");
    assert!(b.state.codes.locate(&serial(1)).unwrap().is_none());
}

#[tokio::test]
async fn a_truncated_last_line_is_rejected() {
    let b = Bulk::new();
    let mut file = card_lines(1, 20, 10);
    let (pin, _) = codes_of(21, 10);
    // The file cut in the middle of the last line's PUK field, without its newline.
    file.push_str(&format!("{};{pin};1234", serial(21)));
    let a = b
        .upload(
            "acme",
            "manufacturer=ACME",
            chunked(file.clone().into(), 64),
        )
        .await;
    assert_rejected(&a, Some(21), "puk has 4 digits");
    assert_no_code(&a, &file);
    // Cut in the middle of the PIN: too few fields.
    let mut file = card_lines(1, 20, 10);
    file.push_str(&format!("{};{}", serial(21), &pin[..3]));
    let a = b.upload("acme", "manufacturer=ACME", file.clone()).await;
    assert_rejected(&a, Some(21), "fields");
    assert_no_code(&a, &file);
    assert!(b.state.codes.locate(&serial(1)).unwrap().is_none());
}

#[tokio::test]
async fn crlf_and_bom_files_import() {
    let b = Bulk::new();
    let crlf = card_lines(1, 50, 11).replace('\n', "\r\n");
    let a = b.upload("acme", "manufacturer=ACME", crlf.clone()).await;
    assert_outcome(&a, StatusCode::CREATED, "committed");
    assert_eq!(a.json["cards"], 50);
    assert_no_code(&a, &crlf);

    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(
        format!(
            "serial,pin,puk\r\n{}",
            card_lines(51, 50, 11).replace(';', ",")
        )
        .as_bytes(),
    );
    let a = b.upload("acme", "manufacturer=ACME", chunked(bom, 2)).await;
    assert_outcome(&a, StatusCode::CREATED, "committed");
    assert_eq!(a.json["cards"], 50);
    for n in [1, 50, 51, 100] {
        let c = super::support::released_codes(&b.state, &serial(n))
            .unwrap()
            .unwrap();
        assert_eq!(
            c.puk.expose_secret(),
            codes_of(n, 11).1.as_bytes(),
            "serial {n}"
        );
    }
}

#[tokio::test]
async fn each_kind_of_bad_line_is_rejected_with_line_and_field() {
    let b = Bulk::new();
    let (pin, puk) = codes_of(4, 12);
    let s = serial(4);
    let cases: Vec<(String, &str)> = vec![
        (format!("{s};{}5;{puk}", &pin[..6]), "pin has 7 digits"),
        (
            format!("{s};{}x{};{puk}", &pin[..3], &pin[4..]),
            "pin has a non-digit character at position 4",
        ),
        (format!("{s};{pin};{puk}9"), "puk has 9 digits"),
        (format!("{s};{pin}"), "fields"),
        (format!("{s};{pin};{puk};{pin}"), "fields"),
        (format!("{s},{pin},{puk}"), "separator"),
        (format!("{s};{pin},{puk}"), "separator"),
        (format!("{s}; {pin};{puk}"), "whitespace"),
        (
            format!("8038{};{pin};{puk}", "0".repeat(20)),
            "serial has 24 characters",
        ),
        (
            format!("8038A{};{pin};{puk}", "0".repeat(15)),
            "serial has a character other than digits at position 5",
        ),
        ("serial;pin;puk".to_owned(), "header"),
        ("   ".to_owned(), "only whitespace"),
        (
            format!("{s};{pin};{}", "1".repeat(1100)),
            "longer than 1024 bytes",
        ),
        (format!("{s};{pin};{puk}\u{feff}"), ""),
        (format!("{};{pin};{puk}", serial(2)), "serial"),
    ];
    for (bad, what) in cases {
        let file = format!("{}{bad}\n{}", card_lines(1, 3, 12), card_lines(5, 3, 12));
        let a = b.upload("acme", "manufacturer=ACME", file.clone()).await;
        if bad.contains(&serial(2)) {
            // A serial repeated inside the file: the batch is rejected, naming the serial.
            assert_outcome(&a, StatusCode::UNPROCESSABLE_ENTITY, "rejected");
            assert!(
                a.json["problems"].to_string().contains(&serial(2)),
                "{}",
                a.text
            );
        } else {
            assert_rejected(&a, Some(4), what);
        }
        assert_no_code(&a, &file);
        assert!(
            b.state.codes.locate(&serial(1)).unwrap().is_none(),
            "{bad:?}"
        );
    }
    assert!(b
        .records()
        .iter()
        .all(|r| r.state == vault::BatchState::Rejected));
}

// ---------------------------------------------------------------------------------------------
// Generation, the recipient, paging
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn generation_over_http() {
    let b = Bulk::new();
    let a = b
        .generate("cms", json!({"range": {"first": serial(1), "count": 1000}}))
        .await;
    assert_outcome(&a, StatusCode::CREATED, "committed");
    assert_eq!(a.json["cards"], 1000);
    let list: Vec<String> = (2000..2010).map(serial).collect();
    let a = b
        .generate("cms", json!({"serials": list, "weak_filter": false}))
        .await;
    assert_outcome(&a, StatusCode::CREATED, "committed");
    assert_eq!(a.json["cards"], 10);
    let c = super::support::released_codes(&b.state, &serial(2005))
        .unwrap()
        .unwrap();
    assert_eq!(c.pin.len(), 8);
    assert!(audit_actions(&b.state, "batch.").contains(&"batch.generate".to_owned()));

    // Serials already in the vault quarantine; repeated ones reject; bad ones are 400.
    let a = b
        .generate("cms", json!({"range": {"first": serial(995), "count": 10}}))
        .await;
    assert_outcome(&a, StatusCode::CONFLICT, "quarantined");
    let a = b
        .generate("cms", json!({"serials": [serial(5000), serial(5000)]}))
        .await;
    assert_outcome(&a, StatusCode::UNPROCESSABLE_ENTITY, "rejected");
    for body in [
        json!({"serials": ["12"]}),
        json!({}),
        json!({"serials": [serial(1)], "range": {"first": serial(1), "count": 1}}),
        json!({"range": {"first": serial(1), "count": 0}}),
    ] {
        let a = b.generate("cms", body.clone()).await;
        assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    }
}

#[tokio::test]
async fn paging_batches() {
    let b = Bulk::new();
    for i in 0..5 {
        let a = b
            .upload("acme", "manufacturer=ACME", card_lines(i * 100 + 1, 10, 13))
            .await;
        assert_outcome(&a, StatusCode::CREATED, "committed");
        let a = b
            .upload(
                "other",
                "manufacturer=Other",
                card_lines(i * 100 + 50, 10, 13),
            )
            .await;
        assert_outcome(&a, StatusCode::CREATED, "committed");
    }
    let page = b.get("admin", "/v1/batches?limit=4").await;
    assert_eq!(page.json["batches"].as_array().unwrap().len(), 4);
    let next = page.json["next"].as_str().unwrap().to_owned();
    let page = b
        .get("admin", &format!("/v1/batches?limit=100&after={next}"))
        .await;
    assert_eq!(
        page.json["batches"].as_array().unwrap().len(),
        6,
        "{}",
        page.text
    );
    assert!(page.json.get("next").is_none(), "{}", page.text);
    // A manufacturer pages through its own only.
    let mut seen = 0;
    let mut uri = "/v1/batches?limit=2".to_owned();
    loop {
        let page = b.get("acme", &uri).await;
        for x in page.json["batches"].as_array().unwrap() {
            assert_eq!(x["manufacturer"], "ACME");
            seen += 1;
        }
        match page.json["next"].as_str() {
            Some(n) => uri = format!("/v1/batches?limit=2&after={n}"),
            None => break,
        }
    }
    assert_eq!(seen, 5);
    let a = b.get("admin", "/v1/batches?limit=0").await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    let a = b.get("admin", "/v1/batches/nonsense").await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    let a = b.get("admin", "/v1/batches/b999999").await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn a_file_encrypted_with_the_age_tool_imports() {
    let b = Bulk::new();
    let a = b.get("acme", "/v1/import/recipient").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let recipient = a.json["recipient"].as_str().unwrap().to_owned();
    assert!(recipient.starts_with("age1"), "{recipient}");
    // The same recipient for the admin, and on every call.
    assert_eq!(
        b.get("admin", "/v1/import/recipient").await.json["recipient"],
        recipient.as_str()
    );
    let dir = tempfile::tempdir().unwrap();
    let clear = dir.path().join("batch.csv");
    let file = card_lines(1, 300, 14);
    std::fs::write(&clear, &file).unwrap();
    for armor in [false, true] {
        let sealed = dir.path().join(format!("batch-{armor}.age"));
        let mut cmd = Command::new("age");
        cmd.args(["-r", &recipient, "-o"]).arg(&sealed);
        if armor {
            cmd.arg("-a");
        }
        let out = cmd
            .arg(&clear)
            .output()
            .expect("the age command-line tool (Debian package age; scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&sealed).unwrap();
        let a = b
            .upload(
                "acme",
                "manufacturer=ACME&expected_cards=300",
                chunked(bytes, 4096),
            )
            .await;
        if armor {
            // The same clear file again.
            assert_outcome(&a, StatusCode::OK, "already_stored");
        } else {
            assert_outcome(&a, StatusCode::CREATED, "committed");
        }
        assert_no_code(&a, &file);
    }
    let c = super::support::released_codes(&b.state, &serial(150))
        .unwrap()
        .unwrap();
    assert_eq!(c.pin.expose_secret(), codes_of(150, 14).0.as_bytes());
}

#[tokio::test]
async fn a_cut_age_file_is_rejected() {
    let b = Bulk::new();
    let recipient = b.get("acme", "/v1/import/recipient").await.json["recipient"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let clear = dir.path().join("batch.csv");
    let file = card_lines(1, 5000, 18);
    std::fs::write(&clear, &file).unwrap();
    let sealed = dir.path().join("batch.age");
    let out = Command::new("age")
        .args(["-r", &recipient, "-o"])
        .arg(&sealed)
        .arg(&clear)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut bytes = std::fs::read(&sealed).unwrap();
    bytes.truncate(bytes.len() / 2);
    let a = b.upload("acme", "manufacturer=ACME", bytes).await;
    assert_outcome(&a, StatusCode::UNPROCESSABLE_ENTITY, "rejected");
    assert_no_code(&a, &file);
    assert!(b.state.codes.locate(&serial(1)).unwrap().is_none());
}

// ---------------------------------------------------------------------------------------------
// Real sockets
// ---------------------------------------------------------------------------------------------

/// Serves `state` on a loopback port in this process; returns the base URL and a stopper.
async fn serve_in_process(state: AppState) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(plico::serve(listener, state, None, async move {
        let _ = stopped.await;
    }));
    (url, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_mid_upload_leaves_nothing() {
    use tokio::io::AsyncWriteExt;
    let b = Bulk::new();
    let (url, _stop) = serve_in_process(b.state.clone()).await;
    let addr = url.trim_start_matches("http://").to_owned();
    let file = card_lines(1, 20_000, 15);
    for cut_at in [0, 100, file.len() / 2, file.len() - 1] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /v1/batches?manufacturer=ACME HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            b.token("acme"),
            file.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&file.as_bytes()[..cut_at]).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(s);
        // The import notices, abandons the batch and removes what it staged.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = b.records();
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cut at {cut_at}: still there: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(b.state.codes.locate(&serial(1)).unwrap(), None);
    }
    // The server still works: the whole file over a real socket commits.
    let client = http_client(None);
    let res = client
        .post(format!("{url}/v1/batches?manufacturer=ACME"))
        .bearer_auth(b.token("acme"))
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let text = res.text().await.unwrap();
    for code in codes_in(&file).iter().step_by(97) {
        assert!(!text.contains(code.as_str()), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_times_out_and_holds_the_only_slot_until_then() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut b = Bulk::with(Settings {
        codes: CodePolicy::CIE,
        max_concurrent_imports: 1,
        ..Settings::default()
    });
    b.state.bulk.idle_timeout = Duration::from_secs(2);
    let (url, _stop) = serve_in_process(b.state.clone()).await;
    let addr = url.trim_start_matches("http://").to_owned();
    // Half of it is more than the edge reads ahead of the route (`plico::api::BODY_LIMIT`), so
    // the stalled upload reaches the import and takes its slot.
    let file = card_lines(1, 4000, 17);
    assert!(file.len() / 2 > plico::api::BODY_LIMIT + 1024);
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/batches?manufacturer=ACME HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        b.token("acme"),
        file.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&file.as_bytes()[..file.len() / 2])
        .await
        .unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The only slot is taken: another upload is told to come back.
    let client = http_client(None);
    let res = client
        .post(format!("{url}/v1/batches?manufacturer=ACME"))
        .bearer_auth(b.token("acme"))
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "busy", "{body}");

    // The stalled one gets 408 and leaves nothing.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"timeout\""), "{answer}");
    assert!(b.records().is_empty(), "{:?}", b.records());
    let a = b.upload("acme", "manufacturer=ACME", file).await;
    assert_outcome(&a, StatusCode::CREATED, "committed");
}

// ---------------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------------

#[test]
fn import_generate_and_list_with_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = serve_dev(&data);
    let admin = data.join("admin-token.txt");
    let as_who = |token: &Path| {
        let mut c = plico();
        let token = std::fs::read_to_string(token).unwrap();
        c.env("PLICO_ADDR", &server.url)
            .env("PLICO_TOKEN", token.trim());
        c
    };
    let man = tmp.path().join("man.token");
    let cms = tmp.path().join("cms.token");
    run_ok(
        as_who(&admin)
            .args([
                "accounts",
                "create",
                "--name",
                "ACME",
                "--role",
                "manufacturer",
                "--token-out",
            ])
            .arg(&man),
    );
    run_ok(
        as_who(&admin)
            .args([
                "accounts",
                "create",
                "--name",
                "CMS",
                "--role",
                "cms",
                "--token-out",
            ])
            .arg(&cms),
    );

    // CNS default policy: 5-digit PINs, 8-digit PUKs.
    let file = tmp.path().join("batch.csv");
    let text: String = (1..=2000u64)
        .map(|n| {
            let (pin, puk) = codes_of(n, 16);
            format!("{};{};{puk}\r\n", serial(n), &pin[..5])
        })
        .collect();
    std::fs::write(&file, &text).unwrap();
    let out = run_ok(
        as_who(&man)
            .args([
                "import",
                "--manufacturer",
                "ACME",
                "--expect-cards",
                "2000",
                "--sha256",
                "auto",
            ])
            .arg(&file),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("committed, 2000 cards"), "{stdout}");
    let out = run_ok(
        as_who(&man)
            .args(["import", "--manufacturer", "ACME", "--json"])
            .arg(&file),
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["outcome"], "already_stored");

    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, format!("{};1234;12345678\n", serial(9000))).unwrap();
    let out = as_who(&man)
        .args(["import", "--manufacturer", "ACME"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("line 1: pin has 4 digits, policy wants 5"),
        "{stdout}"
    );

    let out = run_ok(
        as_who(&cms)
            .args(["generate", "--range"])
            .arg(format!("{}:100", serial(5000))),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("committed, 100 cards"));
    let list = tmp.path().join("serials.txt");
    std::fs::write(
        &list,
        format!("# two cards\n{}\n\n{}\n", serial(6000), serial(6001)),
    )
    .unwrap();
    let out = run_ok(
        as_who(&cms)
            .args(["generate", "--no-weak-filter", "--serials"])
            .arg(&list),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("committed, 2 cards"));

    let out = run_ok(as_who(&admin).args(["batches", "list"]));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table.contains("b000001") && table.contains("committed"),
        "{table}"
    );
    assert!(
        table.contains("rejected") && table.contains("generated"),
        "{table}"
    );
    let out = run_ok(as_who(&man).args(["batches", "show", "b000001"]));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("cards:        2000"), "{shown}");
    let out = run_ok(as_who(&man).args(["import-recipient"]));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("age1"));

    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
    for (i, line) in text.lines().enumerate().step_by(50) {
        let puk = line.rsplit(';').next().unwrap();
        assert!(!stderr.contains(puk), "line {i}'s puk in the server log");
        assert!(!stdout.contains(puk) && !table.contains(puk) && !shown.contains(puk));
    }
}

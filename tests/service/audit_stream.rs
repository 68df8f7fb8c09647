//! The audit stream (`[audit.stream]`) of the real `plico serve`: to a file, then as RFC 5424
//! datagrams to a unix socket the test binds. A few audited actions (accounts, a code batch,
//! the holder registry, a search by codice fiscale, an activation); the stream holds every
//! event committed while it ran, once, in order, each line the stored event as JSON with its
//! chain hash, and neither a code nor a holder's personal data in clear.

use super::batches::{codes_of, serial};
use super::*;
use std::collections::BTreeMap;
use vault::{seq_key, SledStore, Store, Tree};

const SALT: u64 = 0x6175_6469;
const FIRST: u64 = 500_001;
const CARDS: u64 = 40;

/// The holder's personal data, none of which may reach the stream in clear.
const GIVEN: &str = "Ermenegilda";
const SURNAME: &str = "Sciacchitano";
const EMAIL: &str = "ermenegilda.sciacchitano@example.it";
const MOBILE: &str = "+393331234567";
const ADDRESS: &str = "Via Maqueda 101, 90133 Palermo";

fn serve(data: &Path, config: &Path) -> Server {
    let mut cmd = plico();
    cmd.env("RUST_LOG", "warn")
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .arg("--config")
        .arg(config);
    Server::start(cmd)
}

/// Every event of the chain from `from` on: (seq, stored bytes), read offline.
fn chain_from(data: &Path, from: u64) -> Vec<(u64, Vec<u8>)> {
    let store = SledStore::open(&data.join("store")).unwrap();
    store
        .range(Tree::Audit, &seq_key(from), None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (u64::from_be_bytes(k.as_slice().try_into().unwrap()), v))
        .collect()
}

/// The sequence number after the chain's last event (the server stopped).
fn next_seq(data: &Path) -> u64 {
    chain_from(data, 0).last().map_or(1, |(s, _)| s + 1)
}

/// Actions of [`audited_actions`]: each of these events must be in the stream.
const ACTIONS: &[&str] = &[
    "account.create",
    "registry.import",
    "holder.search",
    "card.activate",
];

/// The streamed lines are the chain's events from the first line to the chain's end, each
/// once and in order, with the SHA-256 of the stored bytes as `hash` and the stored event as
/// `event`; the events before the first line (committed after `from` while the server started,
/// before the stream did) are none of the test's actions.
fn assert_is_the_chain(lines: &[Value], data: &Path, from: u64) {
    let first = lines.first().expect("nothing streamed")["seq"]
        .as_u64()
        .unwrap();
    assert!(
        first >= from,
        "the stream began at {first}, before the server started"
    );
    for (seq, bytes) in chain_from(data, from) {
        if seq >= first {
            break;
        }
        let event: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(
            !ACTIONS.iter().any(|a| event["action"] == *a),
            "event {seq} missing from the stream: {event}"
        );
    }
    let chain = chain_from(data, first);
    assert!(
        chain.len() >= 10,
        "too few events to say much: {}",
        chain.len()
    );
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = chain.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs, expected,
        "the stream is not the chain, once and in order"
    );
    for (line, (seq, bytes)) in lines.iter().zip(&chain) {
        let hash = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes));
        assert_eq!(line["hash"], hash.as_str(), "event {seq}");
        let stored: Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(line["event"], stored, "event {seq}");
    }
}

/// Neither a code of the batch nor the holder's personal data, as whole words of the stream
/// (hex runs of hashes and HMACs taken out first, where digits occur by chance).
fn assert_nothing_in_clear(text: &str, cf_code: &str) {
    let mut words: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut word = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else if !word.is_empty() {
            let hexrun = word.len() >= 16 && word.chars().all(|c| c.is_ascii_hexdigit());
            if !hexrun {
                words.insert(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    for n in FIRST..FIRST + CARDS {
        let (pin, puk) = codes_of(n, SALT);
        assert!(!words.contains(&pin[..5]), "card {n}'s pin in the stream");
        assert!(!words.contains(&puk), "card {n}'s puk in the stream");
    }
    let lower = text.to_lowercase();
    for clear in [cf_code, GIVEN, SURNAME, EMAIL, MOBILE, ADDRESS, "Maqueda"] {
        assert!(
            !lower.contains(&clear.to_lowercase()),
            "{clear:?} in clear in the stream"
        );
    }
}

/// Accounts, a batch of codes, the registry, a search, an activation: the audited actions of
/// one run. `round` keeps names and serials apart between runs.
async fn audited_actions(url: &str, admin: &str, round: u64, cf_code: &str) {
    let http = http_client(None);
    let call = |method: reqwest::Method, path: &str, token: &str| {
        http.request(method, format!("{url}{path}"))
            .bearer_auth(token)
    };
    let mut tokens = BTreeMap::new();
    for role in ["manufacturer", "cms", "operator"] {
        let res = call(reqwest::Method::POST, "/v1/accounts", admin)
            .json(&json!({"name": format!("stream {role} {round}"), "role": role}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201);
        let v: Value = res.json().await.unwrap();
        tokens.insert(role, v["token"].as_str().unwrap().to_owned());
    }
    let first = FIRST + round * CARDS / 2;
    let file = super::support::cns_codes_file(first..=first + CARDS / 2 - 1, SALT);
    let res = call(
        reqwest::Method::POST,
        "/v1/batches?manufacturer=ACME",
        &tokens["manufacturer"],
    )
    .header(header::CONTENT_TYPE, "text/plain")
    .body(file)
    .send()
    .await
    .unwrap();
    assert_eq!(res.status().as_u16(), 201, "{}", res.text().await.unwrap());
    let card = serial(first);
    let registry = format!(
        "codice_fiscale;given_names;surname;birth_date;email;mobile;address;deceased;serial;expiry;replaced_by\n\
         {cf_code};{GIVEN};{SURNAME};1975-03-12;{EMAIL};{MOBILE};{ADDRESS};false;{card};2032-12-31;\n"
    );
    let res = call(reqwest::Method::POST, "/v1/registry", &tokens["cms"])
        .header(header::CONTENT_TYPE, "text/csv")
        .body(registry)
        .send()
        .await
        .unwrap();
    let text = res.text().await.unwrap();
    assert!(text.contains("\"applied\""), "{text}");
    let res = call(
        reqwest::Method::POST,
        "/v1/holders/search",
        &tokens["operator"],
    )
    .json(&json!({"codice_fiscale": cf_code}))
    .send()
    .await
    .unwrap();
    assert_eq!(res.status().as_u16(), 200, "{}", res.text().await.unwrap());
    let res = call(
        reqwest::Method::POST,
        &format!("/v1/cards/{card}/activate"),
        &tokens["operator"],
    )
    .json(&identification(first))
    .send()
    .await
    .unwrap();
    assert_eq!(res.status().as_u16(), 200, "{}", res.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_server_streams_each_audit_event_once_in_order_without_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (status, _) = support::serve_dev(&data).terminate();
    assert!(status.success());
    let admin = std::fs::read_to_string(data.join("admin-token.txt"))
        .unwrap()
        .trim()
        .to_owned();
    let cf_code = cf("SCCRNG75C52G273");

    // To a file.
    let file = tmp.path().join("audit.jsonl");
    let config = tmp.path().join("file.toml");
    std::fs::write(
        &config,
        format!("[audit.stream]\nfile = {:?}\n", file.display().to_string()),
    )
    .unwrap();
    let from = next_seq(&data);
    let server = serve(&data, &config);
    audited_actions(&server.url, &admin, 0, &cf_code).await;
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_is_the_chain(&lines, &data, from);
    assert_nothing_in_clear(&text, &cf_code);
    for action in ACTIONS {
        assert!(
            lines.iter().any(|l| l["event"]["action"] == *action),
            "no {action} in the stream"
        );
    }
    assert_eq!(mode(&file) & 0o777, 0o600);

    // To syslog over a unix datagram socket the test binds.
    let socket_path = tmp.path().join("log.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Read while the server runs: a full socket queue would hold the stream's thread up.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut messages = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => messages.push(String::from_utf8(buf[..n].to_vec()).unwrap()),
                    Err(_) if done.load(std::sync::atomic::Ordering::Relaxed) => return messages,
                    Err(_) => {}
                }
            }
        })
    };
    let config = tmp.path().join("syslog.toml");
    std::fs::write(
        &config,
        format!(
            "[audit.stream]\nsyslog = \"unix:{}\"\n",
            socket_path.display()
        ),
    )
    .unwrap();
    let from = next_seq(&data);
    let server = serve(&data, &config);
    audited_actions(&server.url, &admin, 1, &cf_code).await;
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let messages = reader.join().unwrap();
    let mut lines = Vec::new();
    for m in &messages {
        // RFC 5424: <PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG; authpriv.info = 86.
        let (header, json) = m
            .split_once(" audit - ")
            .unwrap_or_else(|| panic!("not an RFC 5424 audit message: {m}"));
        let fields: Vec<&str> = header.split(' ').collect();
        assert_eq!(fields.len(), 5, "{header}");
        assert_eq!(fields[0], "<86>1", "{header}");
        assert!(
            fields[1].ends_with('Z') && fields[1].contains('T'),
            "{header}"
        );
        assert_eq!(fields[3], "plico", "{header}");
        lines.push(serde_json::from_str::<Value>(json).unwrap());
    }
    assert_is_the_chain(&lines, &data, from);
    assert_nothing_in_clear(&messages.concat(), &cf_code);
}

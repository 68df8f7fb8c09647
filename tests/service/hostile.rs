//! Hostile clients (issue 15, and issue 23 item 6), against the real listener: idle and slow
//! connections beyond the descriptor limit, an unseal flood from one address, terminal escapes
//! in problem reports, and keep-alive across routes that ignore their request body.

use super::support::{open_with_accounts, serve_dev, sled_state};
use super::*;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Raises this process' limit of open files to its hard limit (the test holds thousands of
/// sockets).
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= 4096,
        "the test needs 4096 descriptors, the hard limit is {hard}"
    );
}

/// A TCP connection to `server` from the local address `from`.
async fn connect_from(from: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(server).await
}

/// Whether the server has closed `stream` (end of file or reset), without waiting.
fn closed(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// A client that opens a new connection for every request, from 127.0.0.1, and gives up
/// after 1 s.
fn probe_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_leave_the_probes_and_unseal_reachable() {
    raise_descriptor_limit();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=1024")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_plico"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PLICO_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info")
        .env("PLICO_LIMITS_REQUEST_HEAD_TIMEOUT_SECS", "4")
        .env("PLICO_LIMITS_IDLE_TIMEOUT_SECS", "4")
        .env("PLICO_LIMITS_MAX_CONNECTIONS_PER_ADDRESS", "200")
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data);
    let server = Server::start(cmd);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        files.split_whitespace().skip(3).take(2).collect::<Vec<_>>(),
        ["1024", "1024"],
        "{files}"
    );
    let addr: SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();

    // 2,000 connections from 8 addresses (250 each, over the cap of 200 per address, and
    // together far over what 1,024 descriptors allow): half send nothing, half trickle a
    // request head one byte every 500 ms.
    let sources: Vec<IpAddr> = (1..=8u8).map(|i| IpAddr::from([127, 0, 1, i])).collect();
    let mut idle = Vec::new();
    let mut slow = Vec::new();
    for n in 0..2000usize {
        let from = sources[n % sources.len()];
        let stream = connect_from(from, addr).await.unwrap();
        if n % 2 == 0 {
            idle.push((from, stream));
        } else {
            slow.push((from, stream));
        }
    }
    let (slow_done_tx, mut slow_done) = tokio::sync::mpsc::unbounded_channel();
    for (from, mut stream) in slow {
        let done = slow_done_tx.clone();
        tokio::spawn(async move {
            let head = b"GET /healthz HTTP/1.1\r\nHost: plico\r\nX-Slow: ";
            let mut open = true;
            for _ in 0..60 {
                if stream.write_all(&head[..1]).await.is_err() {
                    open = false;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                if closed(&stream) {
                    open = false;
                    break;
                }
            }
            let _ = done.send((from, open));
        });
    }
    drop(slow_done_tx);

    // The flood is held: the probes and the unseal answer, each on a new connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held: Vec<&(IpAddr, TcpStream)> = idle.iter().filter(|(_, s)| !closed(s)).collect();
    for from in &sources {
        let n = held.iter().filter(|(f, _)| f == from).count();
        assert!(
            n <= 200,
            "{n} connections held from {from}, over the cap of 200"
        );
    }
    assert!(
        !held.is_empty(),
        "no idle connection was accepted: the test would prove nothing"
    );
    let client = probe_client();
    for _ in 0..5 {
        let healthz = client
            .get(format!("{}/healthz", server.url))
            .send()
            .await
            .expect("/healthz unreachable while the connections are held");
        assert_eq!(healthz.status(), 200);
        let unseal = client
            .post(format!("{}/v1/sys/unseal", server.url))
            .json(&json!({ "reset": true }))
            .send()
            .await
            .expect("/v1/sys/unseal unreachable while the connections are held");
        assert_eq!(unseal.status(), 200);
        let body: Value = unseal.json().await.unwrap();
        assert_eq!(body["sealed"], false, "{body}");
    }
    let status = client
        .get(format!("{}/v1/sys/status", server.url))
        .send()
        .await
        .expect("/v1/sys/status unreachable while the connections are held");
    assert_eq!(status.status(), 200);

    // Every idle connection is closed by its deadline (4 s), every slow one too.
    let until = Instant::now() + Duration::from_secs(20);
    while idle.iter().any(|(_, s)| !closed(s)) {
        assert!(
            Instant::now() < until,
            "{} idle connections still open 20 s after they were opened",
            idle.iter().filter(|(_, s)| !closed(s)).count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut slow_count = 0;
    while let Some((from, open)) = slow_done.recv().await {
        assert!(
            !open,
            "a slow connection from {from} was still open after 30 s of trickling"
        );
        slow_count += 1;
    }
    assert_eq!(slow_count, 1000);
    // The service is whole after the flood.
    let healthz = client
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("connections refused"),
        "the refusals are logged: {stderr}"
    );
}

/// A client whose connections start from `from`.
fn client_from(from: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::from(from))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unseal_flood_from_one_address_does_not_delay_a_custodian_at_another() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, share_files) = init_with_binary(tmp.path(), false);
    let mut cmd = plico();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data);
    let server = Server::start(cmd);
    let url = format!("{}/v1/sys/unseal", server.url);

    // The flood: 4 callers from 127.0.0.2, as fast as they are answered.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for _ in 0..4 {
        let (stop, url) = (stop.clone(), url.clone());
        flood.push(tokio::spawn(async move {
            let client = client_from([127, 0, 0, 2]);
            let (mut sent, mut limited) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client
                    .post(&url)
                    .json(&json!({ "share": "plico-share:v1:not-a-share" }))
                    .send()
                    .await
                    .unwrap();
                sent += 1;
                if r.status() == 429 {
                    limited += 1;
                }
            }
            (sent, limited)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The custodians at 127.0.0.3 submit two valid shares while the flood goes on.
    let custodian = client_from([127, 0, 0, 3]);
    let mut answers = Vec::new();
    for file in &share_files[..2] {
        let share = std::fs::read_to_string(file).unwrap();
        let r = custodian
            .post(&url)
            .json(&json!({ "share": share.trim() }))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "a custodian's share was refused: {body}");
        answers.push(body);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(answers[0]["progress"], 1, "{}", answers[0]);
    assert_eq!(answers[1]["sealed"], false, "{}", answers[1]);

    // Unsealed: refusals for the rate are audit events too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut sent, mut limited) = (0, 0);
    for f in flood {
        let (s, l) = f.await.unwrap();
        sent += s;
        limited += l;
    }
    assert!(
        limited > 0 && limited < sent,
        "the flood was not rate-limited ({limited} of {sent} refused)"
    );
    let admin = std::fs::read_to_string(data.join("admin-token.txt")).unwrap();
    let created: Value = reqwest::Client::new()
        .post(format!("{}/v1/accounts", server.url))
        .bearer_auth(admin.trim())
        .json(&json!({ "name": "Anna Revisora", "role": "auditor" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let auditor = created["token"].as_str().unwrap().to_owned();
    let events: Value = reqwest::Client::new()
        .get(format!("{}/v1/audit?action=hsm.&limit=1000", server.url))
        .bearer_auth(auditor)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = events.to_string();
    assert!(
        text.contains("hsm.unseal_share") && text.contains("127.0.0.2"),
        "refused shares are audited with the address: {text}"
    );

    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("unseal submissions refused for the rate") && stderr.contains("127.0.0.2"),
        "the flood is logged with its address: {stderr}"
    );
}

#[test]
fn terminal_escapes_in_a_report_are_refused_and_never_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = serve_dev(&data);
    let as_who = |token: &Path| {
        let mut c = plico();
        let token = std::fs::read_to_string(token).unwrap();
        c.env("PLICO_ADDR", &server.url)
            .env("PLICO_TOKEN", token.trim());
        c
    };
    let admin = data.join("admin-token.txt");
    let token = |name: &str| tmp.path().join(format!("{name}.token"));
    for (name, role) in [("op", "operator"), ("sup", "support")] {
        run_ok(
            as_who(&admin)
                .args(["accounts", "create", "--name", name, "--role", role])
                .arg("--token-out")
                .arg(token(name)),
        );
    }
    let hostile = "\u{1b}]0;pwned\u{7}\u{1b}[31mred\rover\u{202e}txt.exe";
    for (title, text) in [(hostile, "plain text"), ("plain title", hostile)] {
        let out = as_who(&token("op"))
            .args(["reports", "open", "--title", title, "--text", text])
            .output()
            .unwrap();
        assert!(!out.status.success(), "a hostile report was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("control or bidirectional-override characters"),
            "{stderr}"
        );
        assert!(
            !stderr.contains('\u{1b}'),
            "the refusal echoes the text: {stderr}"
        );
    }
    // Multi-line text is fine.
    run_ok(as_who(&token("op")).args([
        "reports",
        "open",
        "--title",
        "Lettore guasto",
        "--text",
        "riga uno\nriga due",
    ]));
    run_ok(as_who(&token("sup")).args(["reports", "comment", "1", "--text", "visto"]));
    for json in [false, true] {
        let mut cmd = as_who(&token("sup"));
        cmd.args(["reports", "list"]);
        if json {
            cmd.arg("--json");
        }
        let out = run_ok(&mut cmd);
        assert!(
            !out.stdout.iter().any(|&b| b < 0x20 && b != b'\n'),
            "{:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("Lettore guasto"), "{stdout}");
        assert_eq!(stdout.matches("Lettore guasto").count(), 1, "{stdout}");
    }
}

/// Reads one HTTP/1.1 answer from `stream`: its head (lower-cased) and body.
async fn read_answer(stream: &mut TcpStream, pending: &mut Vec<u8>) -> (String, Vec<u8>) {
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server closed the connection");
        pending.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while pending.len() < head_end + len {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server closed the connection mid-answer");
        pending.extend_from_slice(&buf[..n]);
    }
    let body = pending[head_end..head_end + len].to_vec();
    pending.drain(..head_end + len);
    (head, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_survives_routes_that_ignore_their_body() {
    let tmp = tempfile::tempdir().unwrap();
    let state = sled_state(tmp.path(), &plico::Settings::default());
    let staff = open_with_accounts(&state, &["cms", "officer"]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(plico::serve(listener, state, None, async move {
        let _ = stopped.await;
    }));

    // Every POST route that ignores its body, and refusals made before any body is read.
    let admin = staff.tokens["admin"].clone();
    let cms = staff.tokens["cms"].clone();
    let officer = staff.tokens["officer"].clone();
    let routes: Vec<(String, Option<String>)> = vec![
        (
            "/v1/cards/80380000000000000101/reactivate".into(),
            Some(cms.clone()),
        ),
        ("/v1/accounts/a999999/disable".into(), Some(admin.clone())),
        (
            "/v1/accounts/a999999/rotate-token".into(),
            Some(admin.clone()),
        ),
        (
            "/v1/keys/proposals/p999999/withdraw".into(),
            Some(officer.clone()),
        ),
        ("/v1/cards/80380000000000000101/reactivate".into(), None),
        ("/v1/no/such/route".into(), Some(cms.clone())),
        ("/v1/accounts/a999999/disable".into(), Some(cms.clone())),
    ];
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut pending = Vec::new();
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..1000 {
        let (path, token) = &routes[i % routes.len()];
        let auth = token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        // Head and body in separate writes, as a client may send them.
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: plico\r\n{auth}Content-Type: application/json\r\nContent-Length: 2\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        if i % 2 == 1 {
            tokio::task::yield_now().await;
        }
        stream.write_all(b"{}").await.unwrap();
        let (head, _) = read_answer(&mut stream, &mut pending).await;
        assert!(
            !head.contains("connection: close"),
            "request {i} ({path}) answered with connection: close:\n{head}"
        );
        let status = head.split_whitespace().nth(1).unwrap().to_owned();
        *statuses.entry((path.clone(), status)).or_insert(0) += 1;
    }
    // The routes really answered (not one refusal for everything).
    assert!(statuses.len() >= 4, "{statuses:?}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// The connection reserve serves the scrape: with the general cap held by idle connections,
/// a new client gets a reserved connection, on which `/v1/batches` is `503 busy` but
/// `/metrics` answers (with the scrape token), as `/healthz` and `/v1/sys/status` do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reserve_serves_metrics_while_the_cap_is_held() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let token_file = tmp.path().join("metrics.token");
    let scrape = "reserve-scrape-token-0123456789abcdef";
    std::fs::write(&token_file, format!("{scrape}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = plico();
    cmd.env("RUST_LOG", "warn")
        .env("PLICO_LIMITS_MAX_CONNECTIONS", "2")
        .env("PLICO_LIMITS_RESERVED_CONNECTIONS", "4")
        .env("PLICO_LIMITS_MAX_CONNECTIONS_PER_ADDRESS", "100")
        .env("PLICO_METRICS_TOKEN_FILE", &token_file)
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data);
    let server = Server::start(cmd);
    let addr: SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();

    // The general cap (2) held by idle connections from 127.0.0.1.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            connect_from(IpAddr::from([127, 0, 0, 1]), addr)
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(held.iter().all(|s| !closed(s)), "the cap was not held");

    // From another address, a new connection per request: each is a reserved one.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .local_address(IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let busy = client
        .get(format!("{}/v1/batches", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        busy.status(),
        503,
        "not a reserved connection: the test proves nothing"
    );
    let body: Value = busy.json().await.unwrap();
    assert_eq!(body["error"]["code"], "busy", "{body}");
    let metrics = client
        .get(format!("{}/metrics", server.url))
        .bearer_auth(scrape)
        .send()
        .await
        .unwrap();
    let status = metrics.status();
    let text = metrics.text().await.unwrap();
    assert_eq!(status, 200, "/metrics on a reserved connection: {text}");
    assert!(text.contains("plico_sealed"), "{text}");
    for path in ["/healthz", "/v1/sys/status"] {
        let r = client
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    drop(held);
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
}

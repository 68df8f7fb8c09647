//! The service end to end: the HTTP API through `app(state).oneshot(..)` without a socket, and
//! the `plico` binary on real sockets (init, serve, unseal, status, accounts, audit, TLS,
//! graceful shutdown, the refusals of `serve`).
//!
//! Accounts, roles, rate limits and the audit chain over HTTP are in `service/accounts.rs`;
//! code batches (upload, generation, malformed files, the CLI) in `service/batches.rs`; the
//! crash test of a 1,000,000-line import killed at random moments in `service/import_crash.rs`;
//! the holder registry, card lifecycle and problem reports (and the counter workflow with the
//! CLI) in `service/cms.rs`; print runs, outcomes, reconciliation and the counter page in
//! `service/mailers.rs`; the delivery of codes through the outbox (dispatch, resend,
//! re-identification, recovery) in `service/dispatch.rs`. The harness those modules share
//! (an unsealed state over sled with named accounts, a client that keeps every answer body)
//! is in `service/support.rs`. The delivery workers against real peers (smtp-sink, Kannel with
//! its fake SMSC, started as `dispatch`'s courier tests start them: `peers`) and the delivery
//! reports endpoint are in `service/delivery.rs`; the crash test of 10,000 e-mail jobs (the
//! `plico` binary killed while sending, duplicates counted) in `service/dispatch_crash.rs`; the
//! crash test of print runs (killed at each step of a print file, recovered, rerun) in
//! `service/print_crash.rs`; the crash test of a bulk registry import (killed at random moments:
//! the file whole or absent) in `service/registry_crash.rs`; the crash loops of a mixed workload
//! (imports, registry, lifecycle, dispatches through smtp-sink and Kannel, print runs,
//! rotations) killed at random moments and checked against what was acknowledged in
//! `service/crash_loops.rs`. Key
//! ceremonies under dual control (proposals, approvals, rotate, retire, rekey, shred, and the
//! rewrap job resumed after the binary is killed) are in `service/keys.rs`. A data directory
//! written by an older `plico` (a committed fixture) opened and served by today's binary, the
//! guard of the persisted layout, is in `service/persisted_layout.rs`. The service on a
//! SoftHSM2 token (init, serve, unseal, rotate killed and resumed, retire, pin_file) is in
//! `service/pkcs11.rs`; the emergency seal in `service/seal.rs` (and its effect on the
//! delivery workers in `service/delivery.rs`). `plico config check`, the shipped and packaged
//! configurations, completions and man pages are in `service/config_check.rs`. Damaged disks
//! (store files, the HSM's state file, print manifests flipped and cut, each case in a child
//! process) are in `service/damaged_store.rs`; a store that fails writes and flushes under a
//! mixed workload, and the service that recovers by itself (and the `plico` binary on sled under
//! a file size limit, which answers 503 until it is restarted), in `service/failing_writes.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "service/accounts.rs"]
mod accounts;
#[path = "service/audit_stream.rs"]
mod audit_stream;
#[path = "service/backup.rs"]
mod backup;
#[path = "service/batches.rs"]
mod batches;
#[path = "service/cli_conventions.rs"]
mod cli_conventions;
#[path = "service/cms.rs"]
mod cms;
#[path = "service/config_check.rs"]
mod config_check;
#[path = "service/crash_loops.rs"]
mod crash_loops;
// Not `mod dispatch`: that would hide the `dispatch` crate from the other modules.
#[path = "service/console.rs"]
mod console;
#[path = "service/console_browser.rs"]
mod console_browser;
#[path = "service/damaged_store.rs"]
mod damaged_store;
#[path = "service/delivery.rs"]
mod delivery;
#[path = "service/dispatch_crash.rs"]
mod dispatch_crash;
#[path = "service/dispatch.rs"]
mod dispatches;
#[path = "service/failing_writes.rs"]
mod failing_writes;
#[path = "service/hostile.rs"]
mod hostile;
#[path = "service/import_crash.rs"]
mod import_crash;
#[path = "service/keys.rs"]
mod keys;
#[path = "service/mailers.rs"]
mod mailers;
#[path = "service/observe.rs"]
mod observe;
#[path = "../dispatch/tests/support/peers.rs"]
mod peers;
#[path = "service/persisted_layout.rs"]
mod persisted_layout;
#[path = "service/pkcs11.rs"]
mod pkcs11;
#[path = "service/print_crash.rs"]
mod print_crash;
#[path = "service/registry_crash.rs"]
mod registry_crash;
#[path = "service/relay.rs"]
mod relay;
#[path = "service/relay_support.rs"]
mod relay_support;
#[path = "service/seal.rs"]
mod seal;
#[path = "service/support.rs"]
mod support;
#[path = "service/tls_reload.rs"]
mod tls_reload;
#[path = "service/webdriver.rs"]
mod webdriver;

use support::*;
#[path = "../dispatch/tests/support/tools.rs"]
mod tools;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use hsm_sim::{InitOptions, SimulatedHsm};
use http_body_util::BodyExt;
use plico::{app, AppState};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;
use vault::Hsm;

// ---------------------------------------------------------------------------------------------
// The API without a socket
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unseal_two_of_three_through_the_router() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init_hsm(dir.path(), 3, 2);
    let app = router(hsm);

    assert_eq!(get(&app, "/healthz").await.status, StatusCode::OK);
    assert_error(
        &get(&app, "/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "sealed",
    );

    let a = unseal(&app, &shares[0]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.json,
        json!({"sealed": true, "progress": 1, "threshold": 2})
    );
    assert_eq!(
        get(&app, "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // The same share again is refused and changes nothing.
    let a = unseal(&app, &shares[0]).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "share_refused");
    assert!(!a.text.contains(&secret_part(&shares[0])));
    let status = get(&app, "/v1/sys/status").await;
    assert_eq!(status.json["sealed"], true);
    assert_eq!(status.json["progress"], 1);
    assert_eq!(
        get(&app, "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let a = unseal(&app, &shares[2]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["sealed"], false);
    assert_eq!(get(&app, "/readyz").await.status, StatusCode::OK);

    // Once unsealed, another share is harmless.
    let a = unseal(&app, &shares[1]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["sealed"], false);
}

#[tokio::test]
async fn status_shows_key_check_values_and_no_share() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init_hsm(dir.path(), 3, 2);
    let expected = hsm.status();
    let app = router(hsm);
    unseal(&app, &shares[0]).await;
    unseal(&app, &shares[1]).await;

    let a = get(&app, "/v1/sys/status").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["sealed"], false);
    assert_eq!(a.json["threshold"], 2);
    assert_eq!(a.json["shares"], 3);
    assert_eq!(a.json["dev"], false);
    assert_eq!(a.json["share_set"], expected.share_set);
    assert_eq!(a.json["root_kcv"], expected.root_kcv.to_string());
    let terms = a.json["terms"].as_array().unwrap();
    assert_eq!(terms.len(), expected.terms.len());
    assert_eq!(terms[0]["id"], 1);
    assert_eq!(terms[0]["state"], "active");
    assert_eq!(terms[0]["kcv"], expected.terms[0].kcv.to_string());
    for s in &shares {
        assert!(!a.text.contains(s.expose_secret()));
        assert!(!a.text.contains(&secret_part(s)));
    }
}

#[tokio::test]
async fn garbage_and_tampered_shares_are_refused_without_echo() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init_hsm(dir.path(), 3, 2);
    let app = router(hsm);

    let garbage = SecretString::from("SECRET-GARBAGE-0123456789-abcdefghijklmnop".to_owned());
    let a = unseal(&app, &garbage).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "share_refused");
    assert!(!a.text.contains("SECRET-GARBAGE"), "{}", a.text);
    assert!(!a.text.contains("0123456789-abcdef"), "{}", a.text);

    // A real share with one payload digit changed.
    let real = shares[0].expose_secret();
    let secret = secret_part(&shares[0]);
    let at = real.find(&secret).unwrap() + 5;
    let mut bytes = real.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
    let tampered = SecretString::from(String::from_utf8(bytes).unwrap());
    let a = unseal(&app, &tampered).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "share_refused");
    assert!(!a.text.contains(&secret[..24]), "{}", a.text);

    // A share in the wrong JSON type is described by position, not quoted.
    let a = post_json(
        &app,
        "/v1/sys/unseal",
        json!({"reset": shares[1].expose_secret()}).to_string(),
    )
    .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    assert!(!a.text.contains(&secret_part(&shares[1])), "{}", a.text);

    let status = get(&app, "/v1/sys/status").await;
    assert_eq!(status.json["sealed"], true);
    assert_eq!(status.json["progress"], 0);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, _) = init_hsm(dir.path(), 3, 2);
    let app = router(hsm);
    let big = json!({ "share": "x".repeat(100 * 1024) }).to_string();

    // Without a content-length: cut off while reading.
    let a = post_json(&app, "/v1/sys/unseal", big.clone()).await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");

    // With a content-length: refused before reading.
    let req = Request::post("/v1/sys/unseal")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, big.len())
        .body(Body::from(big))
        .unwrap();
    let a = send(&app, req).await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
}

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init_hsm(dir.path(), 3, 2);
    let app = router(hsm);

    let req = Request::post("/v1/sys/unseal")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(shares[0].expose_secret().to_owned()))
        .unwrap();
    assert_error(
        &send(&app, req).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );

    let a = post_json(&app, "/v1/sys/unseal", "{not json".into()).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    let a = post_json(&app, "/v1/sys/unseal", "{}".into()).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    let both = json!({"share": shares[0].expose_secret(), "reset": true}).to_string();
    assert_error(
        &post_json(&app, "/v1/sys/unseal", both).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );

    assert_error(
        &get(&app, "/v1/nothing").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let req = Request::builder()
        .method(Method::DELETE)
        .uri("/v1/sys/status")
        .body(Body::empty())
        .unwrap();
    assert_error(
        &send(&app, req).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn reset_forgets_submitted_shares() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init_hsm(dir.path(), 3, 2);
    let app = router(hsm);
    assert_eq!(unseal(&app, &shares[0]).await.json["progress"], 1);
    let a = post_json(&app, "/v1/sys/unseal", r#"{"reset": true}"#.into()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.json,
        json!({"sealed": true, "progress": 0, "threshold": 2})
    );
    // The first share counts again.
    assert_eq!(unseal(&app, &shares[0]).await.json["progress"], 1);
}

#[test]
fn every_route_is_in_the_table() {
    let table: Vec<(String, &str)> = plico::api::endpoints()
        .iter()
        .map(|e| (e.method.to_string(), e.path))
        .collect();
    for (m, p) in [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/v1/sys/status"),
        ("POST", "/v1/sys/unseal"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/metrics"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/batches"),
        ("GET", "/v1/batches/{id}"),
        ("POST", "/v1/generate"),
        ("GET", "/v1/import/recipient"),
        ("POST", "/v1/registry"),
        ("POST", "/v1/holders/search"),
        ("GET", "/v1/cards/{serial}"),
        ("GET", "/v1/cards/{serial}/history"),
        ("POST", "/v1/cards/{serial}/activate"),
        ("POST", "/v1/cards/{serial}/suspend"),
        ("POST", "/v1/cards/{serial}/reactivate"),
        ("POST", "/v1/cards/{serial}/revoke"),
        ("POST", "/v1/cards/{serial}/reidentify"),
        ("POST", "/v1/cards/{serial}/dispatch"),
        ("POST", "/v1/cards/{serial}/resend"),
        ("POST", "/v1/reports"),
        ("GET", "/v1/reports"),
        ("POST", "/v1/reports/{id}/comment"),
        ("POST", "/v1/reports/{id}/assign"),
        ("POST", "/v1/reports/{id}/close"),
        ("POST", "/v1/mailers/runs"),
        ("GET", "/v1/mailers/runs"),
        ("GET", "/v1/mailers/runs/{id}"),
        ("POST", "/v1/mailers/outcomes"),
        ("GET", "/v1/mailers/reconciliation"),
        ("GET", "/v1/cards/{serial}/mailers"),
        ("POST", "/v1/cards/{serial}/counter-page"),
    ] {
        assert!(table.contains(&(m.to_owned(), p)), "{m} {p} missing");
    }
}

// ---------------------------------------------------------------------------------------------
// The binary on real sockets
// ---------------------------------------------------------------------------------------------

#[test]
fn every_subcommand_has_help() {
    for sub in [
        &[][..],
        &["init"],
        &["serve"],
        &["unseal"],
        &["status"],
        &["accounts"],
        &["accounts", "create"],
        &["accounts", "list"],
        &["accounts", "disable"],
        &["accounts", "rotate-token"],
        &["accounts", "set-password"],
        &["audit"],
        &["audit", "verify"],
        &["audit", "export"],
        &["audit", "prune"],
        &["import"],
        &["import-recipient"],
        &["generate"],
        &["batches"],
        &["batches", "list"],
        &["batches", "show"],
        &["registry"],
        &["registry", "import"],
        &["holders"],
        &["holders", "search"],
        &["cards"],
        &["cards", "show"],
        &["cards", "activate"],
        &["cards", "suspend"],
        &["cards", "reactivate"],
        &["cards", "revoke"],
        &["reports"],
        &["reports", "open"],
        &["reports", "list"],
        &["reports", "comment"],
        &["reports", "assign"],
        &["reports", "close"],
        &["keys"],
        &["keys", "propose"],
        &["keys", "propose", "rotate"],
        &["keys", "propose", "retire"],
        &["keys", "propose", "rekey"],
        &["keys", "propose", "shred"],
        &["keys", "propose", "discard"],
        &["keys", "approve"],
        &["keys", "withdraw"],
        &["keys", "list"],
        &["keys", "show"],
        &["keys", "status"],
    ] {
        let out = run_ok(plico().args(sub).arg("--help"));
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}

#[test]
fn init_writes_private_share_files_and_prints_no_share() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sdir = tmp.path().join("shares");
    let out = run_ok(
        plico()
            .args(["init", "--shares", "3", "--threshold", "2"])
            .args([
                "--data".as_ref(),
                data.as_os_str(),
                "--share-dir".as_ref(),
                sdir.as_os_str(),
            ]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(SimulatedHsm::exists(&data));
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&sdir), 0o700);
    let status = SimulatedHsm::open(&data).unwrap().status();
    assert!(stdout.contains(&status.share_set), "{stdout}");
    assert!(stdout.contains(&status.root_kcv.to_string()), "{stdout}");
    for i in 1..=3 {
        let f = sdir.join(format!("share-{i}-of-3.txt"));
        assert!(stdout.contains(&f.display().to_string()), "{stdout}");
        assert_eq!(mode(&f), 0o600);
        let text = std::fs::read_to_string(&f).unwrap();
        assert_eq!(text.lines().count(), 1);
        let share = SecretString::from(text.trim().to_owned());
        let secret = secret_part(&share);
        assert!(!stdout.contains(&secret) && !stderr.contains(&secret));
    }
    // The first admin's token: a 0600 file in the data directory, never printed.
    let token_file = data.join("admin-token.txt");
    assert_eq!(mode(&token_file), 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim();
    assert!(token.starts_with("plico_"), "token file holds no token");
    assert!(
        stdout.contains(&token_file.display().to_string()),
        "{stdout}"
    );
    let token_secret = token.rsplit('_').next().unwrap();
    assert!(!stdout.contains(token_secret) && !stderr.contains(token_secret));
    assert!(data.join("store").is_dir());

    // A second init refuses to replace the HSM, and another one refuses to overwrite shares.
    let e = run_fails(
        plico()
            .args(["init", "--shares", "3", "--threshold", "2"])
            .args([
                "--data".as_ref(),
                data.as_os_str(),
                "--share-dir".as_ref(),
                tmp.path().join("other").as_os_str(),
            ]),
    );
    assert!(e.contains("already holds an HSM"), "{e}");
    let e = run_fails(
        plico()
            .args(["init", "--shares", "3", "--threshold", "2"])
            .args([
                "--data".as_ref(),
                tmp.path().join("data2").as_os_str(),
                "--share-dir".as_ref(),
                sdir.as_os_str(),
            ]),
    );
    assert!(e.contains("refusing to overwrite"), "{e}");
    assert!(!SimulatedHsm::exists(&tmp.path().join("data2")));

    // A threshold of 1 needs --dev.
    let e = run_fails(
        plico()
            .args(["init", "--shares", "1", "--threshold", "1"])
            .args([
                "--data".as_ref(),
                tmp.path().join("data3").as_os_str(),
                "--share-dir".as_ref(),
                tmp.path().join("s3").as_os_str(),
            ]),
    );
    assert!(e.contains("--dev"), "{e}");
}

fn init_with_binary(tmp: &Path, dev: bool) -> (PathBuf, Vec<PathBuf>) {
    let data = tmp.join("data");
    let sdir = tmp.join("shares");
    let (n, m) = if dev { ("1", "1") } else { ("3", "2") };
    let mut cmd = plico();
    cmd.args(["init", "--shares", n, "--threshold", m]).args([
        "--data".as_ref(),
        data.as_os_str(),
        "--share-dir".as_ref(),
        sdir.as_os_str(),
    ]);
    if dev {
        cmd.arg("--dev");
    }
    run_ok(&mut cmd);
    let files = (1..=n.parse::<u8>().unwrap())
        .map(|i| sdir.join(format!("share-{i}-of-{n}.txt")))
        .collect();
    (data, files)
}

#[tokio::test]
async fn serve_unseal_over_http_then_sigterm_exits_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, share_files) = init_with_binary(tmp.path(), false);

    let mut cmd = plico();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data);
    let server = Server::start(cmd);
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );
    // Hardened at start: no core dumps.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    let client = http_client(None);
    let readyz = format!("{}/readyz", server.url);
    assert_eq!(
        status_code(&client, &format!("{}/healthz", server.url)).await,
        200
    );
    assert_eq!(status_code(&client, &readyz).await, 503);

    let out = run_ok(
        plico()
            .args(["unseal", "--addr", &server.url])
            .arg(&share_files[0])
            .arg(&share_files[2]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 of 2"), "{stdout}");
    assert!(stdout.contains("unsealed"), "{stdout}");
    for f in &share_files {
        let text = std::fs::read_to_string(f).unwrap();
        let secret = secret_part(&SecretString::from(text.trim().to_owned()));
        assert!(!stdout.contains(&secret));
        assert!(!String::from_utf8_lossy(&out.stderr).contains(&secret));
    }
    assert_eq!(status_code(&client, &readyz).await, 200);

    let out = run_ok(plico().args(["status", "--addr", &server.url]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sealed:     no"), "{stdout}");
    let kcv = SimulatedHsm::open(&data).unwrap().status().root_kcv;
    assert!(stdout.contains(&kcv.to_string()), "{stdout}");

    let out = run_ok(
        plico()
            .args(["unseal", "--addr", &server.url])
            .arg(&share_files[1]),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("already unsealed"));

    // Accounts and audit through the CLI, with the admin token that init wrote.
    let admin_token = data.join("admin-token.txt");
    let auditor_token = tmp.path().join("auditor-token.txt");
    let out = run_ok(
        plico()
            .args(["accounts", "create", "--addr", &server.url])
            .args(["--name", "Anna Revisora", "--role", "auditor"])
            .arg("--token-file")
            .arg(&admin_token)
            .arg("--token-out")
            .arg(&auditor_token),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created account"));
    assert_eq!(mode(&auditor_token), 0o600);
    let auditor_text = std::fs::read_to_string(&auditor_token).unwrap();
    let auditor_secret = auditor_text.trim().rsplit('_').next().unwrap().to_owned();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&auditor_secret));
    // Without --token-out the token is printed once, with a warning.
    let out = run_ok(
        plico()
            .args(["accounts", "create", "--addr", &server.url])
            .args(["--name", "Carlo", "--role", "cms"])
            .env(
                "PLICO_TOKEN",
                std::fs::read_to_string(&admin_token).unwrap().trim(),
            ),
    );
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(printed.contains("plico_"), "{printed}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("only this once"));
    let out = run_ok(
        plico()
            .args(["accounts", "list", "--addr", &server.url])
            .arg("--token-file")
            .arg(&admin_token),
    );
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        list.contains("Anna Revisora") && list.contains("auditor"),
        "{list}"
    );
    assert!(!list.contains(&auditor_secret), "{list}");
    let cms_id = printed
        .lines()
        .find_map(|l| l.strip_prefix("created account "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    run_ok(
        plico()
            .args(["accounts", "rotate-token", &cms_id, "--addr", &server.url])
            .arg("--token-file")
            .arg(&admin_token)
            .arg("--token-out")
            .arg(tmp.path().join("cms-token.txt")),
    );
    run_ok(
        plico()
            .args(["accounts", "disable", &cms_id, "--addr", &server.url])
            .arg("--token-file")
            .arg(&admin_token),
    );
    // The admin may not read the audit chain: a role error, not a crash.
    let e = run_fails(
        plico()
            .args(["audit", "verify", "--addr", &server.url])
            .arg("--token-file")
            .arg(&admin_token),
    );
    assert!(e.contains("forbidden"), "{e}");
    let out = run_ok(
        plico()
            .args(["audit", "verify", "--addr", &server.url])
            .arg("--token-file")
            .arg(&auditor_token),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact"));
    let export = tmp.path().join("audit.jsonl");
    run_ok(
        plico()
            .args(["audit", "export", "--addr", &server.url, "--out"])
            .arg(&export)
            .arg("--token-file")
            .arg(&auditor_token),
    );
    let exported = std::fs::read_to_string(&export).unwrap();
    let actions: Vec<String> = exported
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for a in [
        "key.create",
        "hsm.init",
        "hsm.unseal",
        "hsm.unseal_share",
        "account.create",
        "account.rotate_token",
        "account.disable",
        "audit.verify",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} not in {actions:?}");
    }
    assert!(!exported.contains("Anna Revisora"));

    let (status, stderr) = server.terminate();
    assert!(status.success(), "exit {status:?}\nstderr: {stderr}");
    assert!(!stderr.contains(&auditor_secret));

    // Damage the stored chain while no server holds the store: the next unseal verifies the
    // chain before installing the audit key, refuses, names the damage, and the service stays
    // sealed (nothing may be appended, and MAC'd, over a damaged chain).
    {
        use vault::{seq_key, Batch, Store, Tree};
        let store = vault::SledStore::open(&data.join("store")).unwrap();
        let raw = store.get(Tree::Audit, &seq_key(2)).unwrap().unwrap();
        let changed = String::from_utf8(raw)
            .unwrap()
            .replace("\"ok\"", "\"failed\"");
        let mut b = Batch::new();
        b.put(Tree::Audit, seq_key(2).to_vec(), changed.into_bytes());
        store.apply(&b).unwrap();
    }
    let mut cmd = plico();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data);
    let server = Server::start(cmd);
    let out = plico()
        .args(["unseal", "--addr", &server.url])
        .args(&share_files[..2])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("audit chain does not verify") && e.contains("event 2"),
        "{e}"
    );
    let status = plico()
        .args(["status", "--json", "--addr", &server.url])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["sealed"], true, "{status}");
    let out = plico()
        .args(["audit", "verify", "--addr", &server.url])
        .arg("--token-file")
        .arg(&auditor_token)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify cannot run on a sealed service"
    );
    let (status, stderr) = server.terminate();
    assert!(status.success(), "exit {status:?}\nstderr: {stderr}");
    for f in &share_files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(!stderr.contains(&secret_part(&SecretString::from(text.trim().to_owned()))));
    }
}

#[test]
fn serve_refuses_plain_http_beyond_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, _) = init_with_binary(tmp.path(), false);
    let e = run_fails(
        plico()
            .args(["serve", "--listen", "0.0.0.0:0", "--data"])
            .arg(&data),
    );
    assert!(e.contains("without tls"), "{e}");
    assert!(e.contains("0.0.0.0"), "{e}");

    // The same through the environment.
    let e = run_fails(
        plico()
            .args(["serve", "--data"])
            .arg(&data)
            .env("PLICO_LISTEN", "0.0.0.0:0"),
    );
    assert!(e.contains("without tls"), "{e}");
}

#[test]
fn serve_refuses_a_dev_hsm_without_dev_and_a_missing_hsm() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, _) = init_with_binary(tmp.path(), true);
    let e = run_fails(
        plico()
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data),
    );
    assert!(e.contains("development HSM") && e.contains("--dev"), "{e}");

    let e = run_fails(
        plico()
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(tmp.path().join("nothing")),
    );
    assert!(e.contains("plico init"), "{e}");
}

#[test]
fn serve_reports_config_errors_with_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("plico.toml");
    std::fs::write(&cfg, "[codes]\npin_min = 9\npin_max = 4\n").unwrap();
    let e = run_fails(plico().arg("serve").arg("--config").arg(&cfg));
    assert!(
        e.contains(&cfg.display().to_string()) && e.contains("[codes]"),
        "{e}"
    );

    std::fs::write(&cfg, "listen = \"not an address\"\n").unwrap();
    let e = run_fails(plico().arg("serve").arg("--config").arg(&cfg));
    assert!(
        e.contains(&cfg.display().to_string()) && e.contains("listen"),
        "{e}"
    );

    let e = run_fails(
        plico()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("PLICO_CODES_PUK_MAX", "99"),
    );
    assert!(e.contains("puk"), "{e}");
}

#[tokio::test]
async fn dev_mode_self_unseals_on_loopback_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut first_token = String::new();
    for round in 0..2 {
        let mut cmd = plico();
        // Asked for every interface: --dev still listens on loopback.
        cmd.args(["serve", "--dev", "--listen", "0.0.0.0:0"])
            .current_dir(tmp.path());
        let server = Server::start(cmd);
        assert!(
            server.url.starts_with("http://127.0.0.1:"),
            "{}",
            server.url
        );
        let client = http_client(None);
        assert_eq!(
            status_code(&client, &format!("{}/readyz", server.url)).await,
            200,
            "round {round}"
        );
        let share = tmp.path().join("plico-data/dev-share.txt");
        assert_eq!(mode(&share), 0o600);
        let token_file = tmp.path().join("plico-data/admin-token.txt");
        assert_eq!(mode(&token_file), 0o600);
        let token = std::fs::read_to_string(&token_file).unwrap();
        if round == 0 {
            first_token = token.clone();
        }
        // Made once, on the first run; and it works.
        assert_eq!(token, first_token);
        let res = client
            .get(format!("{}/v1/accounts", server.url))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(mode(&tmp.path().join("plico-data")), 0o700);
        let (status, stderr) = server.terminate();
        assert!(status.success(), "{stderr}");
        assert!(stderr.contains("NOT FOR PRODUCTION"), "{stderr}");
        // Unsealed at start: the outbox's start-up recovery ran once.
        assert_eq!(stderr.matches("outbox recovered").count(), 1, "{stderr}");
        assert!(stderr.contains("admin-token.txt"), "{stderr}");
        assert!(!stderr.contains(first_token.trim()), "{stderr}");
        let text = std::fs::read_to_string(&share).unwrap();
        assert!(!stderr.contains(&secret_part(&SecretString::from(text.trim().to_owned()))));
    }
}

/// A private CA and a leaf for 127.0.0.1 and localhost, written as PEM files.
fn make_ca_and_leaf(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "plico test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();

    let mut leaf = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "plico test server");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf.signed_by(&leaf_key, &ca).unwrap();

    let ca_path = dir.join("ca.pem");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (ca_path, cert_path, key_path)
}

/// A sealed production-shaped `plico serve` (2-of-3 shares) behind TLS with a private CA, JSON
/// logs: the server, the CA's PEM file and the share files.
fn tls_server(tmp: &Path) -> (Server, PathBuf, Vec<PathBuf>) {
    let (data, share_files) = init_with_binary(tmp, false);
    let (ca, cert, key) = make_ca_and_leaf(tmp);
    let cfg = tmp.join("plico.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {:?}\n[log]\nformat = \"json\"\n",
            data.display().to_string(),
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    let mut cmd = plico();
    cmd.arg("serve").arg("--config").arg(&cfg);
    (Server::start(cmd), ca, share_files)
}

#[tokio::test]
async fn tls_listener_with_a_private_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, ca, share_files) = tls_server(tmp.path());
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );

    let client = http_client(Some(&ca));
    assert_eq!(
        status_code(&client, &format!("{}/healthz", server.url)).await,
        200
    );
    // Without the CA the server is not trusted.
    assert!(http_client(None)
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .is_err());

    let out = run_ok(
        plico()
            .args(["unseal", "--addr", &server.url, "--ca-cert"])
            .arg(&ca)
            .args(&share_files[..2]),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("unsealed"));
    assert_eq!(
        status_code(&client, &format!("{}/readyz", server.url)).await,
        200
    );

    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
    // [log] format = "json": every log line is a JSON object.
    let line = stderr
        .lines()
        .find(|l| l.contains("serving https"))
        .unwrap();
    assert!(serde_json::from_str::<Value>(line).is_ok(), "{line}");
}

#[test]
fn unseal_refuses_plain_http_to_a_remote_host() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("share.txt");
    std::fs::write(&f, "plico-share:v1:whatever\n").unwrap();
    let e = run_fails(
        plico()
            .args(["unseal", "--addr", "http://192.0.2.1:8200"])
            .arg(&f),
    );
    assert!(e.contains("plain http"), "{e}");
    assert!(!e.contains("whatever"), "{e}");
}

//! The command line's conventions, seen from a shell (issue 14, item 7): a closed pipe ends a
//! command quietly, instants print as dates, `--ca-cert` has an environment variable, and a
//! plain `http://` address to a TLS port says what to change.

use super::*;

/// `plico accounts create … | head -1`: the reader goes away before the command prints. The
/// account is made either way; the command must not panic (it used to exit 101 with a panic
/// message) but end as a Unix tool ended by SIGPIPE does.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = super::support::serve_dev(&data);
    let admin = std::fs::read_to_string(data.join("admin-token.txt")).unwrap();
    let mut child = plico()
        .args(["accounts", "create", "--addr", &server.url])
        .args(["--name", "Piped Person", "--role", "cms"])
        .env("PLICO_TOKEN", admin.trim())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end at once, as `head -1` does once it has its line.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The account was made all the same.
    let out = run_ok(
        plico()
            .args(["accounts", "list", "--addr", &server.url])
            .env("PLICO_TOKEN", admin.trim()),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Piped Person"));
}

/// Every instant the CLI prints is a UTC date, never `… ms (unix)`.
#[test]
fn instants_print_as_utc_dates() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = super::support::serve_dev(&data);
    let admin = std::fs::read_to_string(data.join("admin-token.txt")).unwrap();
    let out = run_ok(plico().args(["status", "--addr", &server.url]));
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    let year = |text: &str| {
        text.lines()
            .filter(|l| l.contains(" UTC"))
            .all(|l| l.contains(" 20") && l.contains(':'))
    };
    assert!(status.contains(" UTC") && year(&status), "{status}");
    assert!(!status.contains("(unix)"), "{status}");

    // A generated batch, shown: its start and end are dates.
    let cms = tmp.path().join("cms.token");
    run_ok(
        plico()
            .args(["accounts", "create", "--addr", &server.url])
            .args(["--name", "CMS", "--role", "cms", "--token-out"])
            .arg(&cms)
            .env("PLICO_TOKEN", admin.trim()),
    );
    run_ok(
        plico()
            .args(["generate", "--addr", &server.url, "--token-file"])
            .arg(&cms)
            .args(["--range", "80380000000000000001:10"]),
    );
    let out = run_ok(
        plico()
            .args(["batches", "show", "b000001", "--addr", &server.url])
            .env("PLICO_TOKEN", admin.trim()),
    );
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let started = shown.lines().find(|l| l.starts_with("started:")).unwrap();
    assert!(started.ends_with(" UTC") && year(started), "{shown}");
    assert!(!shown.contains("ms (unix)"), "{shown}");
}

/// `PLICO_CA_CERT` stands for `--ca-cert`; `http://` to the TLS port names the fix.
#[test]
fn ca_cert_from_the_environment_and_a_hint_for_http_to_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, ca, _shares) = tls_server(tmp.path());

    let out = run_ok(
        plico()
            .args(["status", "--addr", &server.url])
            .env("PLICO_CA_CERT", &ca),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sealed:     yes"));
    // Without it, the private CA is not trusted.
    run_fails(plico().args(["status", "--addr", &server.url]));

    let plain = server.url.replacen("https://", "http://", 1);
    let e = run_fails(plico().args(["status", "--addr", &plain]));
    assert!(e.contains("use an https:// --addr"), "{e}");
}

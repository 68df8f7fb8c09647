//! Install and configure (issue 19): `plico config check FILE` loads a configuration as `serve`
//! does and prints it with secrets redacted, or exits 1 naming the key and its line; the
//! shipped example and the packaged `/etc/plico/plico.toml` pass it; `plico completions` and
//! the hidden `plico man` write what the Debian package ships.

use super::*;

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// `plico config check` on `path`, with `env` set: (exit code, stdout, stderr).
fn check(path: &Path, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = plico();
    cmd.args(["config", "check"]).arg(path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The TOML after the header comments.
fn body(stdout: &str) -> &str {
    let start = stdout.find("\n\n").map_or(0, |i| i + 2);
    &stdout[start..]
}

#[test]
fn the_example_and_the_packaged_config_pass_the_check() {
    // The shipped example, uncommenting nothing.
    let (code, out, err) = check(&repo_file("plico.example.toml"), &[]);
    assert_eq!(code, Some(0), "{err}");
    let printed: toml::Table = toml::from_str(&out).unwrap();
    assert_eq!(printed["listen"].as_str(), Some("127.0.0.1:8200"));
    assert_eq!(printed["codes"]["pin_min"].as_integer(), Some(5));
    // The layout's f32 settings print as written, not as their f64 widening.
    assert!(out.contains("box_fill_grey = 0.92\n"), "{out}");
    assert!(out.contains("# Redacted: nothing"), "{out}");
    assert!(out.contains("# note: no data_dir"), "{out}");

    // The effective configuration it prints is itself a configuration that loads to the same.
    let tmp = tempfile::tempdir().unwrap();
    let again = write(tmp.path(), "effective.toml", &out);
    let (code, out2, err) = check(&again, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(body(&out2), body(&out));

    // /etc/plico/plico.toml of the package: the data directory and print directory it names.
    let (code, out, err) = check(&repo_file("packaging/plico.toml"), &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("data_dir = \"/var/lib/plico\""), "{out}");
    assert!(out.contains("out_dir = \"/var/spool/plico\""), "{out}");
}

#[test]
fn config_check_applies_the_environment_and_redacts_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write(
        tmp.path(),
        "plico.toml",
        "[dispatch.smtp]\nhost = \"relay.example.it\"\nfrom = \"pin@example.it\"\n\
         [dispatch.sms]\nsendsms_url = \"http://kannel:pw-in-url@127.0.0.1:13013/cgi-bin/sendsms\"\n\
         username = \"plico\"\npassword = \"pw-from-file\"\nfrom = \"PLICO\"\n\
         dlr_url = \"https://plico.example.it:8200/v1/dlr?token=tok-in-url-0123456789abc&key=%KEY%&status=%d\"\n\
         dlr_token = \"tok-from-file-0123456789ab\"\n",
    );
    let token = write(
        tmp.path(),
        "metrics.token",
        "tok-in-metrics-file-0123456789\n",
    );
    let (code, out, err) = check(
        &file,
        &[
            ("PLICO_METRICS_TOKEN_FILE", token.to_str().unwrap()),
            ("PLICO_DISPATCH_SMS_PASSWORD", "pw-from-environment"),
            ("PLICO_LISTEN", "127.0.0.1:8443"),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    for secret in [
        "pw-in-url",
        "pw-from-file",
        "pw-from-environment",
        "tok-in-url",
        "tok-from-file",
        "tok-in-metrics-file",
    ] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
        assert!(!err.contains(secret), "{secret} printed:\n{err}");
    }
    let printed: toml::Table = toml::from_str(&out).unwrap();
    let sms = &printed["dispatch"]["sms"];
    assert_eq!(sms["password"].as_str(), Some("<redacted>"));
    assert_eq!(sms["dlr_token"].as_str(), Some("<redacted>"));
    assert_eq!(
        sms["dlr_url"].as_str(),
        Some("https://plico.example.it:8200/v1/dlr?token=<redacted>&key=%KEY%&status=%d")
    );
    assert_eq!(
        sms["sendsms_url"].as_str(),
        Some("http://kannel:<redacted>@127.0.0.1:13013/cgi-bin/sendsms")
    );
    // What is not secret is shown, the environment applied.
    assert_eq!(sms["username"].as_str(), Some("plico"));
    assert_eq!(printed["listen"].as_str(), Some("127.0.0.1:8443"));
    assert_eq!(
        printed["metrics"]["token_file"].as_str(),
        Some(token.to_str().unwrap())
    );
    // The header says which variables applied and what was redacted.
    let header: String = out.lines().take_while(|l| l.starts_with('#')).collect();
    assert!(
        header.contains("PLICO_DISPATCH_SMS_PASSWORD") && header.contains("PLICO_LISTEN"),
        "{header}"
    );
    for redacted in [
        "dispatch.sms.password",
        "dispatch.sms.dlr_token",
        "of dispatch.sms.dlr_url",
        "of dispatch.sms.sendsms_url",
    ] {
        assert!(header.contains(redacted), "{redacted} not said:\n{header}");
    }
}

#[test]
fn config_check_names_the_key_and_line_of_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    // (file text, key named, line named or none)
    let cases: &[(&str, &str, Option<usize>)] = &[
        // A value of the wrong type.
        (
            "[log]\nformat = \"json\"\n[codes]\npin_min = \"five\"\n",
            "codes.pin_min",
            Some(4),
        ),
        // An unknown key.
        ("# a typo\nlistn = \"127.0.0.1:1\"\n", "listn", Some(2)),
        // A check of one key.
        (
            "[dispatch]\nmax_in_flight = 0\n",
            "dispatch.max_in_flight",
            Some(2),
        ),
        // A check of a table's combination: its header.
        ("\n[codes]\npin_min = 9\npin_max = 4\n", "codes", Some(2)),
        // A check `serve` makes after loading: plain HTTP off loopback.
        ("listen = \"0.0.0.0:8200\"\n", "listen", None),
        // And the spool, which is for `serve --dev` only.
        (
            "[dispatch]\nspool_dir = \"/tmp/spool\"\n",
            "spool_dir",
            None,
        ),
        // A scrape token file that is not there.
        (
            "[metrics]\ntoken_file = \"/nonexistent/metrics.token\"\n",
            "[metrics] token_file",
            None,
        ),
        // A certificate that is not there.
        (
            "[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n",
            "/nonexistent/c.pem",
            None,
        ),
    ];
    for (i, (text, key, line)) in cases.iter().enumerate() {
        let file = write(tmp.path(), &format!("bad{i}.toml"), text);
        let (code, out, err) = check(&file, &[]);
        assert_eq!(code, Some(1), "{text}: {err}");
        assert!(out.is_empty(), "{text}: printed {out}");
        assert!(err.contains(key), "{text}: {err}");
        if let Some(n) = line {
            assert!(
                err.contains(&format!("line {n} of {}", file.display())),
                "{text}: {err}"
            );
        }
    }

    // A secret's error names the key, never the value.
    let file = write(
        tmp.path(),
        "short-token.toml",
        "[dispatch.sms]\nsendsms_url = \"http://127.0.0.1:13013/\"\nusername = \"u\"\n\
         password = \"p\"\nfrom = \"f\"\ndlr_token = \"short-secret\"\n",
    );
    let (code, _, err) = check(&file, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("dispatch.sms.dlr_token") && err.contains("line 6"),
        "{err}"
    );
    assert!(!err.contains("short-secret"), "{err}");

    // A secret of the wrong type (a numeric password without quotes): named, not shown.
    let file = write(
        tmp.path(),
        "numeric-password.toml",
        "[dispatch.sms]\nsendsms_url = \"http://127.0.0.1:13013/\"\nusername = \"u\"\n\
         password = 87654321\nfrom = \"f\"\n",
    );
    let (code, _, err) = check(&file, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("dispatch.sms.password") && err.contains("line 4"),
        "{err}"
    );
    assert!(!err.contains("87654321"), "{err}");

    // Overridden by the environment: the variable is named, not the file's line.
    let file = write(tmp.path(), "env.toml", "[codes]\npin_min = 5\n");
    let (code, _, err) = check(&file, &[("PLICO_CODES_PIN_MIN", "five")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("PLICO_CODES_PIN_MIN"), "{err}");
    assert!(!err.contains("line 2"), "{err}");

    // A file that is not there.
    let (code, _, err) = check(&tmp.path().join("missing.toml"), &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn completions_and_man_pages_come_from_the_command_line() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef plico"),
        ("fish", "complete -c plico"),
    ] {
        let out = run_ok(plico().args(["completions", shell]));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        // Subcommands and their flags are in it.
        assert!(
            script.contains("unseal") && script.contains("check"),
            "{shell}"
        );
    }
    let err = run_fails(plico().args(["completions", "tcsh"]));
    assert!(err.contains("tcsh"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man");
    run_ok(plico().args(["man", "--out"]).arg(&dir));
    for page in [
        "plico.1",
        "plico-serve.1",
        "plico-config-check.1",
        "plico-keys.1",
    ] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}: {text}");
    }
    assert!(
        std::fs::read_to_string(dir.join("plico-serve.1"))
            .unwrap()
            .contains("\\-\\-config"),
        "serve's page lists its flags"
    );
    // `man` is for packaging: hidden from help and from the pages.
    assert!(!dir.join("plico-man.1").exists());
    let help = run_ok(plico().arg("--help"));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("completions") && help.contains("config"),
        "{help}"
    );
    assert!(!help.contains("\n  man "), "{help}");
}

//! `plico config check FILE`: loads and validates a configuration file as `plico serve` would,
//! and prints the effective configuration as TOML, secrets redacted.
//!
//! "As serve would": the built-in defaults, then the file, then the `PLICO_*` environment
//! overrides ([`Config::load`], the loader `serve` calls), then the checks `serve` makes before
//! it opens anything: the TLS certificate and key load and match, plain HTTP only on a
//! loopback address, the mailer templates load, the couriers of `[dispatch]` can be built
//! (and `spool_dir` is refused, being for `serve --dev` only), a PKCS#11 module that exists,
//! a `[metrics] token_file` that reads as a token, and a `[keys] rekey_share_dir` that neither
//! holds nor sits in the data directory. It opens
//! neither the HSM nor the store (the server may hold them) and writes nothing.
//!
//! On success it prints TOML to stdout: comments first (what was checked, which `PLICO_*`
//! variables applied, what is redacted, notes such as "no [tls]"), then the configuration.
//! Values of secret keys ([`plico::config::is_secret_key`]) are printed as `"<redacted>"`, and
//! so are secret query parameters and passwords inside URLs (a `dlr_url`'s `token=`). Paths
//! of files that hold secrets (`tls.key`, `hsm.pin_file`, `metrics.token_file`) are shown;
//! their contents never are.
//!
//! On error it exits 1 and names the key and, when the file sets it, its line.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use plico::config::{is_secret_key, Config, ConfigError, HsmKind, ENV_VARS};
use std::path::{Path, PathBuf};

/// The value a redacted secret is printed as.
pub const REDACTED: &str = "<redacted>";

/// Arguments of `plico config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// What to do with the configuration.
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Load and validate FILE as `serve` would (PLICO_* variables applied), and print the
    /// effective configuration with secrets redacted; exit 1 naming the key on error.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The TOML configuration file, e.g. /etc/plico/plico.toml.
    #[arg(value_name = "FILE", env = "PLICO_CONFIG")]
    file: PathBuf,
}

/// Runs `plico config …`.
///
/// # Errors
/// A configuration that `serve` would refuse, with the key (and line) named.
pub fn run(args: ConfigArgs) -> Result<()> {
    match args.command {
        ConfigCommand::Check(a) => check(&a.file),
    }
}

fn check(file: &Path) -> Result<()> {
    let config = Config::load(Some(file)).map_err(|e| located(&e, file))?;
    let notes = serve_checks(&config)?;
    let mut value = toml::Value::try_from(&config)
        .context("cannot write the effective configuration as TOML")?;
    let mut redacted = Vec::new();
    redact(&mut value, "", &mut redacted);
    let body =
        toml::to_string(&value).context("cannot write the effective configuration as TOML")?;

    let overrides: Vec<&str> = ENV_VARS
        .iter()
        .filter(|(var, _)| std::env::var_os(var).is_some())
        .map(|(var, _)| *var)
        .collect();
    let mut out = String::new();
    out.push_str(&format!(
        "# plico config check: {} loads and passes the checks `plico serve` makes before it\n\
         # opens the HSM and the store.\n\
         # The effective configuration: built-in defaults, then the file, then PLICO_* variables\n\
         # ({}).\n",
        file.display(),
        if overrides.is_empty() {
            "none set".to_owned()
        } else {
            format!("set: {}", overrides.join(", "))
        }
    ));
    if redacted.is_empty() {
        out.push_str("# Redacted: nothing (no secret is set).\n");
    } else {
        out.push_str(&format!(
            "# Redacted (shown as \"{REDACTED}\"): {}.\n",
            redacted.join(", ")
        ));
    }
    out.push_str(
        "# Paths of files that hold secrets (tls.key, hsm.pin_file, metrics.token_file) are \
         shown, their contents never.\n",
    );
    for note in notes {
        out.push_str(&format!("# note: {note}\n"));
    }
    out.push('\n');
    out.push_str(&body);
    print!("{out}");
    Ok(())
}

/// The error of a configuration that does not load, with the key's line in `file` when the
/// file sets that key (and no `PLICO_*` variable overrides it).
fn located(e: &ConfigError, file: &Path) -> anyhow::Error {
    let key = e.key();
    let overridden = key.as_deref().is_some_and(|k| {
        ENV_VARS
            .iter()
            .any(|(var, path)| *path == k && std::env::var_os(var).is_some())
    });
    let line = match (&key, overridden) {
        (Some(k), false) => std::fs::read_to_string(file)
            .ok()
            .and_then(|text| line_of(&text, k)),
        _ => None,
    };
    match (key, line) {
        (Some(k), Some(n)) => anyhow!("{e}\n(key `{k}`, line {n} of {})", file.display()),
        (Some(k), None) => anyhow!("{e}\n(key `{k}`)"),
        (None, _) => anyhow!("{e}"),
    }
}

/// The 1-based line of `file_text` that sets `key` (`dispatch.smtp.port`), or the header of
/// the table `key` names (`codes`). A line scan, not a TOML parser: tables `[a.b]`, keys
/// `k = …` (bare or quoted, dotted), comments skipped. Enough to point at a line; `None`
/// when the key is not written in the file.
pub fn line_of(file_text: &str, key: &str) -> Option<usize> {
    let mut table = String::new();
    let unquote = |s: &str| {
        s.split('.')
            .map(|p| p.trim().trim_matches('"').trim_matches('\''))
            .collect::<Vec<_>>()
            .join(".")
    };
    for (i, line) in file_text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let header = rest.trim_start_matches('[');
            let Some(end) = header.find(']') else {
                continue;
            };
            table = unquote(&header[..end]);
            if table == key {
                return Some(i + 1);
            }
            continue;
        }
        let Some(eq) = line.find('=') else {
            continue;
        };
        let name = unquote(&line[..eq]);
        let path = if table.is_empty() {
            name
        } else {
            format!("{table}.{name}")
        };
        if path == key {
            return Some(i + 1);
        }
    }
    None
}

/// The checks `serve` makes on a loaded configuration before it opens the HSM and the store.
/// Returns notes (things that load but that an operator should know).
fn serve_checks(config: &Config) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let tls = match config.tls_files() {
        Some((cert, key)) => {
            plico::tls::TlsConfig::load(cert, key).context("[tls]")?;
            true
        }
        None => {
            notes.push(
                "no [tls]: plain HTTP, so the listener must stay on a loopback address".to_owned(),
            );
            false
        }
    };
    plico::check_listen(config.listen, tls).context("`listen`")?;

    let data_dir = match &config.data_dir {
        Some(d) => {
            if d.exists() && !d.is_dir() {
                bail!("`data_dir` {}: not a directory", d.display());
            }
            if !d.exists() {
                notes.push(format!(
                    "data_dir {} does not exist yet: `plico init --data {}` creates it",
                    d.display(),
                    d.display()
                ));
            }
            d.clone()
        }
        None => {
            notes.push("no data_dir: `plico serve` then needs --data DIR".to_owned());
            PathBuf::from("DATA_DIR")
        }
    };

    let print = config
        .mailers
        .print_setup(&data_dir, None)
        .map_err(|e| anyhow!("{e}"))?;
    if print.recipients.is_empty() {
        notes.push(
            "no [mailers] recipients: print runs are refused (503 not_configured)".to_owned(),
        );
    }
    match plico::delivery::Delivery::from_config(config.dispatch.as_ref(), false, &data_dir, &print)
    {
        Ok(Some(_)) => {}
        Ok(None) => notes.push("no [dispatch]: dispatch jobs are queued but not sent".to_owned()),
        Err(e) => bail!("[dispatch]: {e}"),
    }

    if config.hsm.kind == HsmKind::Pkcs11 {
        if let Some(module) = &config.hsm.module {
            if !module.is_file() {
                bail!("[hsm]: `module` {}: no such file", module.display());
            }
        }
        if let Some(pin) = &config.hsm.pin_file {
            notes.push(format!(
                "[hsm] pin_file {}: INSECURE auto-unseal, the service unseals itself at start \
                 without the custodians",
                pin.display()
            ));
        }
    }

    match &config.metrics.token_file {
        // Read as `serve` reads it (one line, not empty), then dropped: never printed.
        Some(file) => drop(super::files::read_token(file).context("[metrics] token_file")?),
        None => notes.push("no [metrics] token_file: GET /metrics answers 401 to everyone".into()),
    }

    match &config.keys.rekey_share_dir {
        Some(shares) if config.data_dir.is_some() => {
            let resolve = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
            let (shares, data) = (resolve(shares), resolve(&data_dir));
            if shares.starts_with(&data) || data.starts_with(&shares) {
                bail!(
                    "[keys]: `rekey_share_dir` {} and the data directory {} hold one another: \
                     new shares must not be kept with the HSM state",
                    shares.display(),
                    data.display()
                );
            }
        }
        Some(_) => {}
        None => notes.push("no [keys] rekey_share_dir: rekeys are refused".to_owned()),
    }
    Ok(notes)
}

/// Replaces the value of every secret key under `value` by [`REDACTED`], and the secret parts
/// of URLs in other strings; records what it redacted in `redacted`. Writes `f32` settings as
/// the decimals they were given as.
fn redact(value: &mut toml::Value, path: &str, redacted: &mut Vec<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                let p = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                redact(v, &p, redacted);
            }
        }
        toml::Value::Array(items) => {
            if is_secret_key(path) {
                *value = toml::Value::String(REDACTED.to_owned());
                redacted.push(path.to_owned());
            } else {
                for item in items {
                    redact(item, path, redacted);
                }
            }
        }
        toml::Value::String(s) if is_secret_key(path) => {
            *s = REDACTED.to_owned();
            redacted.push(path.to_owned());
        }
        toml::Value::String(s) => {
            if let Some((clean, parts)) = redact_url(s) {
                *s = clean;
                redacted.push(format!("{} of {path}", parts.join(" and ")));
            }
        }
        _ if is_secret_key(path) => {
            *value = toml::Value::String(REDACTED.to_owned());
            redacted.push(path.to_owned());
        }
        toml::Value::Float(f) => *f = shortest(*f),
        _ => {}
    }
}

/// `f` as the shortest decimal that reads back as the same `f32`, when `f` is exactly an
/// `f32` (the layout's millimetres are): `0.92`, not `0.9200000166893005`. Other values stay.
fn shortest(f: f64) -> f64 {
    #[allow(clippy::cast_possible_truncation)]
    let narrow = f as f32;
    if f64::from(narrow).to_bits() == f.to_bits() {
        narrow.to_string().parse().unwrap_or(f)
    } else {
        f
    }
}

/// A URL's secrets: the password of its user information and the values of query
/// parameters named like secrets (`token`, `password`, `pass`, `secret`, `pw`). `None` when
/// there is nothing to redact (or `s` is not a URL).
fn redact_url(s: &str) -> Option<(String, Vec<String>)> {
    let scheme_end = s.find("://")? + 3;
    let mut out = String::with_capacity(s.len());
    let mut parts = Vec::new();
    let (head, query) = match s.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (s, None),
    };
    // user:password@host
    let authority_end = head[scheme_end..]
        .find('/')
        .map_or(head.len(), |i| scheme_end + i);
    let authority = &head[scheme_end..authority_end];
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            out.push_str(&head[..scheme_end]);
            out.push_str(&format!("{user}:{REDACTED}@{host}"));
            out.push_str(&head[authority_end..]);
            parts.push("the URL's password".to_owned());
        }
        _ => out.push_str(head),
    }
    if let Some(query) = query {
        out.push('?');
        let mut first = true;
        for pair in query.split('&') {
            if !first {
                out.push('&');
            }
            first = false;
            match pair.split_once('=') {
                Some((name, _)) if secret_param(name) => {
                    out.push_str(&format!("{name}={REDACTED}"));
                    parts.push(format!("its {name}="));
                }
                _ => out.push_str(pair),
            }
        }
    }
    (!parts.is_empty()).then_some((out, parts))
}

fn secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["token", "password", "pass", "secret", "pw", "passwd"]
        .iter()
        .any(|s| name == *s || name.ends_with(&format!("_{s}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_secrets_only() {
        let (clean, parts) = redact_url(
            "https://plico.example.it:8200/v1/dlr?token=abcdefabcdefabcdefabcdef&key=%KEY%&status=%d",
        )
        .unwrap();
        assert_eq!(
            clean,
            "https://plico.example.it:8200/v1/dlr?token=<redacted>&key=%KEY%&status=%d"
        );
        assert_eq!(parts, vec!["its token="]);
        let (clean, _) = redact_url("http://u:hunter2@127.0.0.1:13013/cgi-bin/sendsms").unwrap();
        assert_eq!(clean, "http://u:<redacted>@127.0.0.1:13013/cgi-bin/sendsms");
        assert!(redact_url("http://127.0.0.1:13013/cgi-bin/sendsms?user=plico").is_none());
        assert!(redact_url("/var/lib/plico").is_none());
    }

    #[test]
    fn lines_of_keys_and_tables() {
        let text = "# a comment = 1\nlisten = \"x\"\n\n[codes]\npin_min = 9 # eh\n\
                    [dispatch.smtp]\n\"port\" = 1\n[ mailers ]\nissuer.name = \"n\"\n";
        assert_eq!(line_of(text, "listen"), Some(2));
        assert_eq!(line_of(text, "codes"), Some(4));
        assert_eq!(line_of(text, "codes.pin_min"), Some(5));
        assert_eq!(line_of(text, "dispatch.smtp.port"), Some(7));
        assert_eq!(line_of(text, "mailers.issuer.name"), Some(9));
        assert_eq!(line_of(text, "codes.pin_max"), None);
        assert_eq!(line_of(text, "a comment"), None);
    }
}

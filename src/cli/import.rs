//! `plico import FILE --manufacturer NAME` and `plico import-recipient`: the manufacturer's
//! client for `POST /v1/batches` and `GET /v1/import/recipient`.
//!
//! The file is streamed from disk to the server in chunks of [`CHUNK`] bytes, never read
//! whole, with a progress bar on stderr counting the bytes handed to the connection (hidden
//! when stderr is not a terminal). The answer comes once the batch is durable; the command
//! prints it and exits 1 when the batch was rejected or quarantined.
//!
//! `--sha256 auto` hashes the file before sending it, so the server checks that what it got is
//! what is on disk. For an age-encrypted file the announced hash is the clear file's (which
//! only the server sees), so `auto` is refused there: age authenticates the payload anyway.

use super::batches::{outcome_statuses, print_answer};
use super::client::{AuthArgs, Client, Payload, ServerArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use plico::api::batches::{BatchAnswer, Recipient};
use reqwest::Url;
use std::io::Read;
use std::path::{Path, PathBuf};
use vault::{is_age, SNIFF_LEN};

/// Bytes read from the file per chunk sent.
pub const CHUNK: usize = 256 * 1024;

/// Arguments of `plico import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    auth: AuthArgs,
    /// The PIN/PUK file (`serial;pin;puk` lines, see docs/formats.md), clear or age-encrypted
    /// to the server's import recipient.
    file: PathBuf,
    /// The manufacturer the batch comes from (letters, digits, space, . _ -).
    #[arg(long, value_name = "NAME")]
    manufacturer: String,
    /// The number of card lines the file must hold; a different count rejects it.
    #[arg(long, value_name = "N")]
    expect_cards: Option<u64>,
    /// The SHA-256 the (clear) file must have: 64 hex digits, or `auto` to hash the file here.
    #[arg(long, value_name = "auto|HEX")]
    sha256: Option<String>,
    /// Print the server's JSON answer.
    #[arg(long)]
    json: bool,
}

/// Arguments of `plico import-recipient`.
#[derive(Debug, Args)]
pub struct RecipientArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    auth: AuthArgs,
}

/// Runs `plico import-recipient`: prints the age recipient on stdout.
pub fn run_recipient(args: RecipientArgs) -> Result<()> {
    let client = Client::with_token(&args.server, &args.auth)?;
    let runtime = super::unseal::client_runtime()?;
    let r: Recipient = runtime.block_on(client.get("/v1/import/recipient"))?;
    println!("{}", r.recipient);
    Ok(())
}

/// Runs `plico import`.
pub fn run(args: ImportArgs) -> Result<()> {
    vault::check_manufacturer(&args.manufacturer)
        .map_err(|e| anyhow::anyhow!("--manufacturer: {e}"))?;
    let path = &args.file;
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a file", path.display());
    }
    let size = meta.len();
    let sha256 = match args.sha256.as_deref() {
        None => None,
        Some("auto") => {
            if is_encrypted(path)? {
                bail!(
                    "--sha256 auto: {} is age-encrypted, and the hash the server checks is the \
                     clear file's; give it as 64 hex digits, or leave --sha256 out (age \
                     authenticates the file)",
                    path.display()
                );
            }
            Some(hash_file(path)?)
        }
        Some(hex_text) => {
            let mut out = [0u8; 32];
            if hex_text.len() != 64 || hex::decode_to_slice(hex_text, &mut out).is_err() {
                bail!("--sha256: expected `auto` or 64 hexadecimal digits");
            }
            Some(hex_text.to_ascii_lowercase())
        }
    };

    let client = Client::with_token(&args.server, &args.auth)?;
    let mut url = Url::parse("http://x/v1/batches").context("building the request")?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("manufacturer", &args.manufacturer);
        if let Some(n) = args.expect_cards {
            q.append_pair("expected_cards", &n.to_string());
        }
        if let Some(h) = &sha256 {
            q.append_pair("sha256", h);
        }
    }
    let path_and_query = format!("{}?{}", url.path(), url.query().unwrap_or_default());

    let bar = progress_bar(size);
    let body = file_body(path, bar.clone())?;
    let runtime = super::unseal::client_runtime()?;
    let sent = runtime.block_on(client.post_bulk::<BatchAnswer>(
        &path_and_query,
        Payload::Stream {
            body,
            length: Some(size),
        },
        &outcome_statuses(),
    ));
    bar.finish_and_clear();
    let (_, answer) = sent?;
    print_answer(&answer, args.json)
}

/// A byte progress bar on stderr (hidden when stderr is not a terminal).
pub(super) fn progress_bar(size: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("sending");
    bar
}

/// True if the file starts like an age file (binary or armoured).
fn is_encrypted(path: &Path) -> Result<bool> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut head = Vec::with_capacity(SNIFF_LEN);
    (&mut f)
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(is_age(&head))
}

/// The file's SHA-256, in hex.
fn hash_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

/// The file as a streamed request body: a thread reads it in chunks into a small bounded
/// channel, and each chunk advances `bar` as it is handed to the connection.
pub(super) fn file_body(path: &Path, bar: ProgressBar) -> Result<reqwest::Body> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let shown = path.display().to_string();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || loop {
        let mut buf = vec![0u8; CHUNK];
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                buf.truncate(n);
                if tx.blocking_send(Ok(buf)).is_err() {
                    break;
                }
            }
            Err(e) => {
                let e = std::io::Error::other(format!("reading {shown}: {e}"));
                let _ = tx.blocking_send(Err(e));
                break;
            }
        }
    });
    let stream = futures_util::stream::unfold((rx, bar), |(mut rx, bar)| async move {
        let chunk = rx.recv().await?;
        if let Ok(c) = &chunk {
            bar.inc(c.len() as u64);
            if bar.position() >= bar.length().unwrap_or(u64::MAX) {
                bar.set_message("sent; waiting for the server's answer");
            }
        }
        Some((chunk, (rx, bar)))
    });
    Ok(reqwest::Body::wrap_stream(stream))
}

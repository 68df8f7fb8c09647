//! `plico backup --out FILE`: a backup of a running server (admin or officer token).
//!
//! The server takes a consistent snapshot of its store and HSM state while it keeps serving,
//! seals it with age to its `[backup] recipient` and streams it (`POST /v1/sys/backup`); this
//! command writes the sealed bytes to `FILE.partial` (0600) and renames it to `FILE` once the
//! transfer is complete. Nothing in clear touches the disk. A broken transfer leaves no `FILE`.
//! Check an archive without restoring it with `plico restore FILE --identity ID --check`.

use super::client::{AuthArgs, Client, ServerArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// Arguments of `plico backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the sealed archive (must not exist).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    auth: AuthArgs,
}

/// Runs `plico backup`.
pub fn run(args: BackupArgs) -> Result<()> {
    if args.out.exists() {
        bail!("--out {} exists; choose a new file", args.out.display());
    }
    let mut partial = args.out.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let client = Client::with_token(&args.server, &args.auth)?;
    let runtime = super::unseal::client_runtime()?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let copied = runtime.block_on(client.download_post("/v1/sys/backup", &mut out));
    let finished = copied.and_then(|n| {
        out.flush()?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(n)
    });
    let bytes = match finished {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.context("the backup failed; no archive was written"));
        }
    };
    std::fs::rename(&partial, &args.out)
        .with_context(|| format!("cannot rename {} into place", partial.display()))?;
    println!(
        "backup written to {} ({bytes} bytes, sealed to the server's [backup] recipient)",
        args.out.display()
    );
    Ok(())
}

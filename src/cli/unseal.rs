//! `plico unseal`: reads custodian share files and submits them, one at a time, to a running
//! server, printing the progress after each. It never prints a share and never opens the
//! server's data directory.
//!
//! Each file is read just before it is sent and dropped (zeroized) right after. Shares go
//! only over HTTPS or to a loopback address.

use super::client::{Client, ServerArgs};
use super::files;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

/// Arguments of `plico unseal`.
#[derive(Debug, Args)]
pub struct UnsealArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Forget the shares submitted so far instead of submitting any.
    #[arg(long, conflicts_with = "share_files")]
    reset: bool,
    /// Share files, one share each (as written by `plico init`).
    #[arg(value_name = "SHAREFILE", required_unless_present = "reset")]
    share_files: Vec<PathBuf>,
}

/// A small runtime for the client commands.
pub fn client_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs `plico unseal`.
pub fn run(args: UnsealArgs) -> Result<()> {
    let client = Client::new(&args.server)?;
    let runtime = client_runtime()?;
    runtime.block_on(unseal(&client, &args))
}

async fn unseal(client: &Client, args: &UnsealArgs) -> Result<()> {
    if args.reset {
        let p = client.reset().await?;
        println!("unseal progress reset: {} of {}", p.progress, p.threshold);
        return Ok(());
    }
    if !client.is_private_channel() {
        bail!(
            "refusing to send shares over plain http to {}: use https (and --ca-cert for a \
             private CA)",
            client.base()
        );
    }
    let status = client.status().await?;
    if !status.sealed {
        println!("already unsealed; no share sent");
        return Ok(());
    }
    let mut unsealed = false;
    for (n, path) in args.share_files.iter().enumerate() {
        if unsealed {
            let rest = args.share_files.len() - n;
            println!("unsealed; {rest} remaining share file(s) not sent");
            break;
        }
        let share = files::read_share(path)?;
        let p = client
            .unseal(&share)
            .await
            .with_context(|| format!("share file {}", path.display()))?;
        drop(share);
        if p.sealed {
            println!(
                "{}: accepted, {} of {}",
                path.display(),
                p.progress,
                p.threshold
            );
        } else {
            println!(
                "{}: accepted, {} of {}: unsealed",
                path.display(),
                p.threshold,
                p.threshold
            );
            unsealed = true;
        }
    }
    if !unsealed {
        let status = client.status().await?;
        if status.sealed {
            println!(
                "still sealed: {} of {}; {} more share(s) needed",
                status.progress,
                status.threshold,
                status.threshold.saturating_sub(status.progress)
            );
        }
    }
    Ok(())
}

//! `plico status`: prints a running server's HSM status — seal state, unseal progress, share
//! set, and the key check values of the root key and of every term. No key bytes exist in the
//! answer to print.

use super::client::{Client, ServerArgs, Status};
use super::time::utc_secs;
use anyhow::Result;
use clap::Args;

/// Arguments of `plico status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print the server's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `plico status`.
pub fn run(args: StatusArgs) -> Result<()> {
    let client = Client::new(&args.server)?;
    let runtime = super::unseal::client_runtime()?;
    let status = runtime.block_on(client.status())?;
    if args.json {
        super::show::print_json(&status)?;
    } else {
        print_status(&status);
    }
    Ok(())
}

fn print_status(s: &Status) {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    println!("sealed:     {}", yes_no(s.sealed));
    if s.sealed {
        println!("progress:   {} of {}", s.progress, s.threshold);
    }
    println!("shares:     {} issued, {} needed", s.shares, s.threshold);
    println!("share set:  {}", s.share_set);
    println!("provider:   {}", s.provider);
    println!("dev:        {}", yes_no(s.dev));
    println!("root KCV:   {}", s.root_kcv);
    println!("terms:");
    for t in &s.terms {
        let state = serde_json::to_value(t.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        println!(
            "  {:<10} {:<13} KCV {}  created {}",
            t.id.to_string(),
            state,
            t.kcv,
            utc_secs(t.created_unix)
        );
    }
}

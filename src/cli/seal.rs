//! `plico seal`: the emergency seal of a running server (officer or admin token).
//!
//! The server drops every key from memory, stops claiming dispatch jobs and answers `/readyz`
//! with 503 until the custodians unseal it again (`plico unseal`). See `POST /v1/sys/seal`.

use super::client::{AuthArgs, Client, ServerArgs};
use anyhow::Result;
use clap::Args;
use serde::Deserialize;

/// Arguments of `plico seal`.
#[derive(Debug, Args)]
pub struct SealArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    auth: AuthArgs,
}

#[derive(Deserialize)]
struct Sealed {
    was_sealed: bool,
}

/// Runs `plico seal`.
pub fn run(args: SealArgs) -> Result<()> {
    let client = Client::with_token(&args.server, &args.auth)?;
    let runtime = super::unseal::client_runtime()?;
    let answer: Sealed = runtime.block_on(client.post("/v1/sys/seal", &serde_json::json!({})))?;
    if answer.was_sealed {
        println!("sealed (it was sealed already); unsealing needs the custodians' quorum");
    } else {
        println!("sealed: every key dropped from memory; unsealing needs the custodians' quorum");
    }
    Ok(())
}

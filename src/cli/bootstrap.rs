//! What `init` and `serve --dev` share: opening the store in the data directory, and creating
//! the first admin account with its token in a 0600 file.
//!
//! The token file is checked not to exist before the account is made, and written with
//! `create_new`, so an existing file is never overwritten and the usual failures (a leftover
//! file, a read-only directory) happen before anything changes. The token is never logged or
//! printed; only the file's path is.

use super::files;
use anyhow::{bail, Context, Result};
use plico::AppState;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vault::SledStore;
use vault::Store;

/// The admin token's file name in the data directory, by default.
pub const ADMIN_TOKEN_FILE: &str = "admin-token.txt";
/// The store's directory inside the data directory.
pub const STORE_DIR: &str = "store";
/// The first admin account's name.
const FIRST_ADMIN_NAME: &str = "first admin";

/// The store directory of data directory `data`.
pub fn store_dir(data: &Path) -> PathBuf {
    data.join(STORE_DIR)
}

/// Opens (creating it on first use, mode 0700) the store in `data`/store, with sled's page
/// cache at `cache_mib` (sled's default when `None`).
pub fn open_store(data: &Path, cache_mib: Option<u64>) -> Result<Arc<dyn Store>> {
    let dir = store_dir(data);
    files::private_dir(&dir)?;
    // The vault's error names the directory and the cause (locked by a running server,
    // damaged); it is reported as is, at start.
    let store = SledStore::open_with_cache(&dir, cache_mib.map(|m| m << 20))
        .context("cannot open the store")?;
    Ok(Arc::new(store))
}

/// Creates the first admin account if no account exists, and writes its token to
/// `token_file`. Returns the account id if it did. Needs the audit key installed.
pub fn bootstrap_admin(state: &AppState, token_file: &Path) -> Result<Option<String>> {
    if !state.accounts.is_empty()? {
        return Ok(None);
    }
    if token_file.exists() {
        bail!(
            "{} exists but the store has no account: remove the stale token file first",
            token_file.display()
        );
    }
    let Some((account, token)) = state
        .accounts
        .bootstrap_admin(FIRST_ADMIN_NAME, "bootstrap")
        .context("cannot create the first admin account")?
    else {
        return Ok(None);
    };
    files::write_token(token_file, &token).with_context(|| {
        format!(
            "the first admin account {} was created but its token could not be written",
            account.id
        )
    })?;
    tracing::info!(account = %account.id, file = %token_file.display(), "first admin account created");
    Ok(Some(account.id))
}

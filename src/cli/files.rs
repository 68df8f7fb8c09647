//! Private files and directories: the data directory (0700), share files (0600, written
//! durably, never overwritten) and reading a share file back.
//!
//! A share file holds one line: the share's text as hsm-sim formats it, and a newline. A token
//! file (the first admin's, or one written by `plico accounts create --token-out`) is the
//! same: one line, mode 0600.

use anyhow::{bail, Context, Result};
use secrecy::SecretString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use zeroize::Zeroizing;

/// Creates `dir` (and its parents) with mode 0700, or tightens an existing one to 0700.
pub fn private_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            bail!("{} exists and is not a directory", dir.display());
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot set mode 0700 on {}", dir.display()))?;
    } else {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    Ok(())
}

/// Writes `text` and a newline to a new file at `path`, mode 0600, and syncs it to disk.
/// Refuses to replace an existing file. The caller syncs the directory.
pub fn write_secret_line(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// Syncs a directory, so that files created in it survive a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a share file: exactly one non-empty line. Errors name the file, never its content.
pub fn read_share(path: &Path) -> Result<SecretString> {
    read_secret_line(path, "share file", "a share file holds exactly one share")
}

/// Reads a token file: exactly one non-empty line. Errors name the file, never its content.
pub fn read_token(path: &Path) -> Result<SecretString> {
    read_secret_line(path, "token file", "a token file holds exactly one token")
}

/// Reads a password file: its whole first line, only the line ending removed (spaces are part
/// of a password). Errors name the file, never its content.
pub fn read_password(path: &Path) -> Result<SecretString> {
    let text = Zeroizing::new(
        fs::read_to_string(path)
            .with_context(|| format!("cannot read password file {}", path.display()))?,
    );
    let line = text.split(['\n', '\r']).next().unwrap_or("");
    if line.is_empty() {
        bail!("password file {} is empty", path.display());
    }
    Ok(SecretString::from(line.to_owned()))
}

/// Reads a token PIN file (`[hsm] pin_file`, `plico init --token-pin-file`): exactly one
/// non-empty line, in a file nobody but its owner may read (refused otherwise, since the PIN
/// opens every key). Errors name the file, never its content.
pub fn read_pin_file(path: &Path) -> Result<SecretString> {
    let meta =
        fs::metadata(path).with_context(|| format!("cannot read pin file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "pin file {} is accessible to group or others: chmod 600 it",
            path.display()
        );
    }
    read_secret_line(path, "pin file", "a pin file holds exactly one pin")
}

/// Writes a token to a new 0600 file and syncs its directory.
pub fn write_token(path: &Path, token: &SecretString) -> Result<()> {
    use secrecy::ExposeSecret;
    write_secret_line(path, token.expose_secret())
        .with_context(|| format!("cannot write token file {}", path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    sync_dir(dir).with_context(|| format!("cannot sync directory {}", dir.display()))
}

fn read_secret_line(path: &Path, what: &str, rule: &str) -> Result<SecretString> {
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                "{what} is accessible to group or others; chmod 600 it"
            );
        }
    }
    let text = Zeroizing::new(
        fs::read_to_string(path)
            .with_context(|| format!("cannot read {what} {}", path.display()))?,
    );
    let line = text.trim();
    if line.is_empty() {
        bail!("{what} {} is empty", path.display());
    }
    if line.contains(['\n', '\r']) {
        bail!("{what} {} holds more than one line; {rule}", path.display());
    }
    Ok(SecretString::from(line.to_owned()))
}

//! Command-line tools the tests read rendered output with (`age`, `pdftotext`, …), shared by
//! dispatch's tests and the service tests (which include this file by path, as `peers.rs`).

use std::path::Path;
use std::process::Command;

/// `name` as a command, after checking that it runs (the test script installs the tools).
pub fn tool(name: &str) -> Command {
    assert!(
        Command::new(name).arg("--version").output().is_ok()
            || Command::new(name).arg("-v").output().is_ok(),
        "`{name}` cannot run: run `bash scripts/test.sh`, which installs age and poppler-utils"
    );
    Command::new(name)
}

/// Opens a sealed file with the `age` tool, the key in a 0600 file of `scratch` (removed
/// after); the clear bytes come back on a pipe, never through a file.
pub fn age_decrypt(identity: &age::x25519::Identity, sealed: &Path, scratch: &Path) -> Vec<u8> {
    use age::secrecy::ExposeSecret;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = scratch.join("key.txt");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key)
        .unwrap();
    writeln!(f, "{}", identity.to_string().expose_secret()).unwrap();
    drop(f);
    let out = tool("age")
        .args(["-d", "-i"])
        .arg(&key)
        .arg(sealed)
        .output()
        .unwrap();
    std::fs::remove_file(&key).unwrap();
    assert!(out.status.success(), "age -d failed: {out:?}");
    out.stdout
}

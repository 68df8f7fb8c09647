//! Throw-away SoftHSM2 tokens for tests and benches.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once, when the process first initialises the module, so a
//! process gets one token directory (a fresh one under the temporary directory, unless
//! `SOFTHSM2_CONF` is already set) and each test makes its own token in it, labelled uniquely.
//! Tokens are initialised in-process (`C_InitToken`, `C_InitPIN`) with random PINs: no PIN is
//! ever on a command line.

use crate::token::{self, Pkcs11Config, WrapMechanism};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use cryptoki::session::UserType;
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use vault::{Error, Result};

/// Where Debian installs SoftHSM2's module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A fresh token: its configuration and the user PIN it was initialised with.
#[derive(Debug)]
pub struct TestToken {
    /// Module, label and mechanism.
    pub config: Pkcs11Config,
    /// The initial user PIN (what `plico init --hsm pkcs11` replaces).
    pub pin: SecretString,
    /// The SoftHSM2 configuration file in use (hand it to child processes as `SOFTHSM2_CONF`).
    pub conf: PathBuf,
}

/// True when SoftHSM2 is installed (tests skip loudly otherwise? no: they fail; CI installs it).
pub fn softhsm_installed() -> bool {
    Path::new(SOFTHSM_MODULE).exists()
}

fn random_hex(n: usize) -> Result<String> {
    let mut b = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::Provider("random"))?;
    Ok(hex::encode(b))
}

/// The process's SoftHSM2 configuration: `SOFTHSM2_CONF` if set, else a new directory.
///
/// # Errors
/// [`Error::Storage`] if the directory or file cannot be written.
pub fn softhsm_conf() -> Result<PathBuf> {
    static CONF: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    CONF.get_or_init(|| {
        if let Some(c) = std::env::var_os("SOFTHSM2_CONF") {
            return Ok(PathBuf::from(c));
        }
        let dir = std::env::temp_dir().join(format!("plico-softhsm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).map_err(|e| format!("{}: {e}", tokens.display()))?;
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .map_err(|e| format!("{}: {e}", conf.display()))?;
        // Set before the module is first initialised in this process (it reads it then).
        std::env::set_var("SOFTHSM2_CONF", &conf);
        Ok(conf)
    })
    .clone()
    .map_err(|e| Error::Storage(format!("cannot set up softhsm2: {e}")))
}

/// Initialises a new token labelled `plico-test-<pid>-<n>` with random SO and user PINs.
///
/// # Errors
/// [`Error::Storage`]/[`Error::Provider`] when SoftHSM2 is missing or refuses.
pub fn new_token() -> Result<TestToken> {
    static N: AtomicU32 = AtomicU32::new(0);
    let conf = softhsm_conf()?;
    let module = PathBuf::from(SOFTHSM_MODULE);
    let ctx = token::context(&module)?;
    let label = format!(
        "plico-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let slot = ctx
        .get_slots_with_token()
        .map_err(|e| Error::Storage(format!("cannot list slots: {e}")))?
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|i| !i.token_initialized())
                .unwrap_or(false)
        })
        .ok_or_else(|| Error::Storage("softhsm2 has no free slot".to_string()))?;
    let so_pin = SecretString::from(random_hex(8)?);
    let pin = SecretString::from(random_hex(8)?);
    ctx.init_token(slot, &so_pin, &label)
        .map_err(|e| Error::Storage(format!("cannot initialise token {label}: {e}")))?;
    let slot = token::find_token(&ctx, &label)?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| Error::Storage(format!("cannot open a session: {e}")))?;
    session
        .login(UserType::So, Some(&so_pin))
        .map_err(|_| Error::Provider("so login"))?;
    session
        .init_pin(&pin)
        .map_err(|_| Error::Provider("init pin"))?;
    let _ = session.logout();
    Ok(TestToken {
        config: Pkcs11Config {
            module,
            token_label: label,
            mechanism: WrapMechanism::Pad,
        },
        pin,
        conf,
    })
}

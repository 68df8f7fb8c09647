//! The PKCS#11 plumbing: one context per module per process, the token found by label, a pool
//! of sessions, and the RFC 5649 mechanism.
//!
//! PKCS#11 allows one `C_Initialize` per process, so contexts are kept in a process-wide map
//! keyed by the module's path. Sessions are not thread-safe: the pool hands each caller a
//! session of its own for the length of one operation and takes it back after, so concurrent
//! rewraps and deliveries each run on their own session. Login is per application in PKCS#11:
//! every session of the pool is logged in once one is.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, OnceLock};
use vault::{Error, Missing, Refusal, Result};

/// PKCS#11 3.x's number for RFC 5649 (`CKM_AES_KEY_WRAP_KWP`).
pub const CKM_AES_KEY_WRAP_KWP: u64 = 0x210B;
/// The number SoftHSM2 (and PKCS#11 2.40 tokens) use for RFC 5649 (`CKM_AES_KEY_WRAP_PAD`).
pub const CKM_AES_KEY_WRAP_PAD: u64 = 0x210A;

/// Which mechanism number asks the token for RFC 5649 (AES key wrap with padding).
///
/// Whatever the number, the algorithm — and so the stored wrapped-key format — is the same:
/// a key wrapped by one token unwraps under the same KEK on another, and in software.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WrapMechanism {
    /// `CKM_AES_KEY_WRAP_PAD` (0x210A), as SoftHSM2 names RFC 5649. The default.
    #[default]
    Pad,
    /// `CKM_AES_KEY_WRAP_KWP` (0x210B), PKCS#11 3.x's name for RFC 5649.
    Kwp,
    /// A vendor-defined mechanism number (at least `CKM_VENDOR_DEFINED`, 0x80000000) that the
    /// token's manual documents as RFC 5649.
    Vendor(u64),
}

impl WrapMechanism {
    /// The mechanism to hand to `C_WrapKey`/`C_UnwrapKey`.
    ///
    /// # Errors
    /// [`Refusal::MechanismUnavailable`] for [`WrapMechanism::Kwp`]: cryptoki 0.12 has no constructor for
    /// 0x210B (it knows only the 2.40 names), so a 3.x token is configured with its vendor
    /// alias or `pad` until cryptoki names it; [`Error::Invalid`] for a vendor number below
    /// 0x80000000.
    pub fn mechanism(self) -> Result<Mechanism<'static>> {
        match self {
            WrapMechanism::Pad => Ok(Mechanism::AesKeyWrapPad),
            WrapMechanism::Kwp => Err(Refusal::MechanismUnavailable {
                mechanism: "kwp",
                instead: "\"pad\" or the token's vendor number for RFC 5649 (cryptoki 0.12 \
                          cannot issue CKM_AES_KEY_WRAP_KWP 0x210B)",
            }
            .into()),
            WrapMechanism::Vendor(v) => {
                let t = MechanismType::new_vendor_defined(v).map_err(|_| {
                    Error::Invalid(format!(
                        "hsm mechanism {v:#x} is not a vendor-defined number (0x80000000 or above)"
                    ))
                })?;
                Ok(Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(
                    t, None,
                )))
            }
        }
    }
}

impl FromStr for WrapMechanism {
    type Err = Error;

    /// `pad` / `CKM_AES_KEY_WRAP_PAD`, `kwp` / `CKM_AES_KEY_WRAP_KWP`, or a hex vendor number
    /// (`0x80000171`).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pad" | "CKM_AES_KEY_WRAP_PAD" => Ok(WrapMechanism::Pad),
            "kwp" | "CKM_AES_KEY_WRAP_KWP" => Ok(WrapMechanism::Kwp),
            other => {
                let hex = other
                    .strip_prefix("0x")
                    .ok_or_else(|| bad_mechanism(other))?;
                let v = u64::from_str_radix(hex, 16).map_err(|_| bad_mechanism(other))?;
                match v {
                    CKM_AES_KEY_WRAP_PAD => Ok(WrapMechanism::Pad),
                    CKM_AES_KEY_WRAP_KWP => Ok(WrapMechanism::Kwp),
                    _ => Ok(WrapMechanism::Vendor(v)),
                }
            }
        }
    }
}

fn bad_mechanism(s: &str) -> Error {
    // Config text, not a secret; quoted shortened so a stray paste does not fill the log.
    let shown: String = s.chars().take(40).collect();
    Error::Invalid(format!(
        "hsm mechanism {shown:?}: expected \"pad\", \"kwp\" or a hex vendor number like 0x80000171"
    ))
}

impl fmt::Display for WrapMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WrapMechanism::Pad => f.write_str("pad"),
            WrapMechanism::Kwp => f.write_str("kwp"),
            WrapMechanism::Vendor(v) => write!(f, "{v:#x}"),
        }
    }
}

/// Where the token is: the module and the token's label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label (slot ids change when tokens are added; labels do not).
    pub token_label: String,
    /// Which mechanism number means RFC 5649 on this token.
    pub mechanism: WrapMechanism,
}

fn contexts() -> MutexGuard<'static, HashMap<PathBuf, Pkcs11>> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    vault::lock(CONTEXTS.get_or_init(|| Mutex::new(HashMap::new())))
}

/// The process's context for `module`, loaded and initialised on first use.
///
/// # Errors
/// [`Error::Storage`] naming the module if it cannot be loaded or initialised.
pub fn context(module: &Path) -> Result<Pkcs11> {
    let mut map = contexts();
    if let Some(ctx) = map.get(module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(module).map_err(|e| {
        Error::Storage(format!(
            "cannot load the pkcs#11 module {}: {e}",
            module.display()
        ))
    })?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| {
            Error::Storage(format!(
                "cannot initialise the pkcs#11 module {}: {e}",
                module.display()
            ))
        })?;
    map.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// Finalises this process's context for `module` (if any), so that the next [`context`]
/// loads the token afresh. A module such as SoftHSM2 caches a token's PIN in the process that
/// first read it: a process that inspects a token another process changed (a test, an offline
/// tool) reloads it first.
///
/// # Errors
/// [`Error::Storage`] if the module refuses to finalise.
///
/// # Security
/// Every session of the module ends: no [`crate::Pkcs11Hsm`] on it may be in use.
pub fn reload(module: &Path) -> Result<()> {
    let Some(ctx) = contexts().remove(module) else {
        return Ok(());
    };
    ctx.finalize().map_err(|e| {
        Error::Storage(format!(
            "cannot finalise the pkcs#11 module {}: {e}",
            module.display()
        ))
    })
}

/// The slot holding the initialised token labelled `label`.
///
/// # Errors
/// [`Error::Missing`] naming the label when no token has it.
pub fn find_token(ctx: &Pkcs11, label: &str) -> Result<Slot> {
    let slots = ctx
        .get_slots_with_initialized_token()
        .map_err(|e| Error::Storage(format!("cannot list the pkcs#11 slots: {e}")))?;
    for slot in slots {
        if let Ok(info) = ctx.get_token_info(slot) {
            if info.label().trim_end() == label {
                return Ok(slot);
            }
        }
    }
    Err(Missing::Token(label.to_owned()).into())
}

/// Read-write sessions on one token, one per concurrent caller.
pub(crate) struct Pool {
    ctx: Pkcs11,
    slot: Slot,
    idle: Mutex<Vec<Session>>,
}

impl Pool {
    pub(crate) fn new(ctx: Pkcs11, slot: Slot) -> Self {
        Pool {
            ctx,
            slot,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Session>> {
        vault::lock(&self.idle)
    }

    /// Runs `f` on a session of its own; the session goes back to the pool after.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Session) -> Result<T>) -> Result<T> {
        let popped = self.idle().pop();
        let session = match popped {
            Some(s) => s,
            None => self
                .ctx
                .open_rw_session(self.slot)
                .map_err(|e| Error::Storage(format!("cannot open a pkcs#11 session: {e}")))?,
        };
        let out = f(&session);
        self.idle().push(session);
        out
    }

    /// Logs out and closes every idle session (the caller holds the HSM's write lock, so no
    /// session is in use). Session objects die with their sessions.
    pub(crate) fn close_all(&self) {
        let sessions: Vec<Session> = std::mem::take(&mut *self.idle());
        if let Some(first) = sessions.first() {
            let _ = first.logout();
        } else if let Ok(s) = self.ctx.open_rw_session(self.slot) {
            let _ = s.logout();
        }
        drop(sessions);
    }
}

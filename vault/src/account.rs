//! Accounts: who may call the service, in which one role, with which bearer token.
//!
//! ```text
//! token  = "plico_" <account id> "_" <64 hex digits: 256 random bits>     shown once
//! stored = Account { id, name, role, disabled, created_ms,
//!                    token_hash = hex SHA-256(secret part), password = argon2id PHC?,
//!                    password_change_required?, totp = TotpRecord? }
//! ```
//!
//! - The token names its account, so authentication is one lookup by id and one constant-time
//!   comparison of hashes; nothing is searched by secret. Only the hash is stored: a copy of
//!   the store does not give anyone a working token. A token of 256 random bits needs no slow
//!   hash (it cannot be guessed); a password can, so passwords are argon2id.
//! - One role per account ([`Role`]). An account is never deleted, only disabled: its id stays
//!   in the audit chain.
//! - Every change (create, disable, rotate-token, set-password) is written in the same store
//!   batch as its audit event ([`AuditLog::commit`]); if the event cannot be written, the
//!   change is not made. Account names are personal data: the event carries them only as an
//!   HMAC ([`NewEvent::personal`]), so creating an account needs the audit key (an unsealed
//!   HSM).
//!
//! - A person's account may have a second factor (TOTP, `totp.rs`): its secret sealed in
//!   the record, enrolled by the person (`auth.totp_enrol`), reset by an admin
//!   (`account.reset_totp`). Fields added after the first records were written are
//!   `#[serde(default)]`, so older records still read.
//!
//! - Authentication answers from an in-memory copy of the records it has read (every request
//!   carries a token, and a store read per request would cost the API a blocking hop): any
//!   change of any account empties the copy, so a disabled account or a replaced token stops
//!   working at once, as before. A reader that read the store while a change was being made
//!   does not keep what it read (a generation count decides).
//!
//! What it does not do: HTTP, sessions, rate limits, deciding which role may call what (the
//! service's route table does that).

use crate::audit::{AuditLog, NewEvent, Outcome};
use crate::error::{Error, Missing, Refusal, Result};
use crate::lock::lock;
use crate::store::{Batch, Store, Tree};
use crate::totp::{TotpRecord, TotpSecret};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use zeroize::Zeroizing;

/// Text every token starts with, so a leaked token is recognisable (secret scanners).
pub const TOKEN_PREFIX: &str = "plico_";
/// Random bytes in a token's secret part.
const TOKEN_BYTES: usize = 32;
/// Random bytes in an account id.
const ID_BYTES: usize = 8;
/// Fewest characters in a password.
pub const PASSWORD_MIN_CHARS: usize = 12;
/// Most characters in a password (bounds the hashing work a caller can ask for).
pub const PASSWORD_MAX_CHARS: usize = 1024;
/// Most characters in an account name.
pub const NAME_MAX_CHARS: usize = 100;

/// What an account may do. One per account. The names are persisted: never rename them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages accounts.
    Admin,
    /// Uploads PIN/PUK batches.
    Manufacturer,
    /// The card management system: registry, lifecycle, dispatch requests.
    Cms,
    /// Counter work: identify holders, activate, print the counter half, resend.
    Operator,
    /// The service centre: anomalies, technical reports, helps operators.
    Support,
    /// Key ceremonies.
    Officer,
    /// Reads and verifies the audit chain.
    Auditor,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 7] = [
        Role::Admin,
        Role::Manufacturer,
        Role::Cms,
        Role::Operator,
        Role::Support,
        Role::Officer,
        Role::Auditor,
    ];

    /// The persisted name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Manufacturer => "manufacturer",
            Role::Cms => "cms",
            Role::Operator => "operator",
            Role::Support => "support",
            Role::Officer => "officer",
            Role::Auditor => "auditor",
        }
    }

    /// True for the roles of people, who may have a password to log in to the console:
    /// operator, support, admin, auditor and officer. Machine roles (manufacturer, cms) use
    /// their bearer token only.
    pub fn may_have_password(self) -> bool {
        matches!(
            self,
            Role::Operator | Role::Officer | Role::Support | Role::Admin | Role::Auditor
        )
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; expected one of admin, manufacturer, cms, operator, support, officer, auditor")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// A stored account. Holds hashes only, never a token or a password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Random id (16 hex digits); also the audit actor.
    pub id: String,
    /// Display name (personal data: audited only as an HMAC).
    pub name: String,
    /// The one role.
    pub role: Role,
    /// A disabled account authenticates no more.
    pub disabled: bool,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Hex SHA-256 of the token's secret part.
    pub token_hash: String,
    /// argon2id PHC string, for the people's roles ([`Role::may_have_password`]) who were
    /// given a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The password was set by someone else (an initial or reset password): the console
    /// accepts it only to change it. Absent in records written before the console (`false`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub password_change_required: bool,
    /// The second factor, once enrolled: the TOTP secret sealed, and the last step used.
    /// Absent in records written before it (none enrolled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<TotpRecord>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .field("created_ms", &self.created_ms)
            .field("token_hash", &"<redacted>")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_change_required", &self.password_change_required)
            .field("totp", &self.totp.is_some())
            .finish_non_exhaustive()
    }
}

impl Account {
    /// The public view, without hashes.
    pub fn view(&self) -> AccountView {
        AccountView {
            id: self.id.clone(),
            name: self.name.clone(),
            role: self.role,
            disabled: self.disabled,
            created_ms: self.created_ms,
            has_password: self.password.is_some(),
            password_change_required: self.password_change_required,
            has_totp: self.totp.is_some(),
        }
    }
}

/// What listing shows of an account: no token hash, no password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    /// The id.
    pub id: String,
    /// The name.
    pub name: String,
    /// The role.
    pub role: Role,
    /// Whether it is disabled.
    pub disabled: bool,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// Whether a password is set.
    pub has_password: bool,
    /// Whether the password must be changed at the next console login.
    #[serde(default)]
    pub password_change_required: bool,
    /// Whether a second factor (TOTP) is enrolled.
    #[serde(default)]
    pub has_totp: bool,
}

/// Who is making a change, for its audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Account id, or `system`.
    pub id: String,
    /// Role name, or `-`.
    pub role: String,
    /// The request the change belongs to.
    pub request_id: String,
}

impl Actor {
    /// The service itself (bootstrap, start-up).
    pub fn system(request_id: impl Into<String>) -> Self {
        Actor {
            id: "system".to_owned(),
            role: "-".to_owned(),
            request_id: request_id.into(),
        }
    }

    /// An authenticated account.
    pub fn account(account: &Account, request_id: impl Into<String>) -> Self {
        Actor {
            id: account.id.clone(),
            role: account.role.as_str().to_owned(),
            request_id: request_id.into(),
        }
    }

    /// An audit event for `action` on `subject` done by this actor: its id, role and request
    /// id filled in (the one way to say who did something).
    pub fn event(&self, action: &str, subject: impl Into<String>) -> NewEvent {
        NewEvent::new(action, subject).by_actor(self)
    }
}

/// A name or password that cannot be used; the message says why, never quoting a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Checks an account name: 1 to [`NAME_MAX_CHARS`] characters, no control characters.
///
/// # Errors
/// [`Invalid`] saying what is wrong.
pub fn validate_name(name: &str) -> std::result::Result<(), Invalid> {
    let n = name.chars().count();
    if name.trim().is_empty() {
        return Err(Invalid("name: must not be empty".to_owned()));
    }
    if n > NAME_MAX_CHARS {
        return Err(Invalid(format!(
            "name: at most {NAME_MAX_CHARS} characters, got {n}"
        )));
    }
    if let Err(e) = crate::text::check("name", name, crate::text::Kind::Line) {
        return Err(Invalid(e.to_string()));
    }
    Ok(())
}

/// Checks a password's length: [`PASSWORD_MIN_CHARS`] to [`PASSWORD_MAX_CHARS`] characters.
///
/// # Errors
/// [`Invalid`] naming the rule; the password is never quoted.
pub fn validate_password(password: &SecretString) -> std::result::Result<(), Invalid> {
    let n = password.expose_secret().chars().count();
    if n < PASSWORD_MIN_CHARS {
        return Err(Invalid(format!(
            "password: at least {PASSWORD_MIN_CHARS} characters are required, got {n}"
        )));
    }
    if n > PASSWORD_MAX_CHARS {
        return Err(Invalid(format!(
            "password: at most {PASSWORD_MAX_CHARS} characters, got {n}"
        )));
    }
    Ok(())
}

/// The accounts in a [`Store`], audited through an [`AuditLog`].
pub struct Accounts {
    store: Arc<dyn Store>,
    audit: Arc<AuditLog>,
    rng: SystemRandom,
    /// Serialises read-modify-write of account records.
    write: Mutex<()>,
    /// The records authentication has read, emptied on every change (see the module docs).
    known: RwLock<KnownAccounts>,
}

/// Account records as last read from the store, for [`Accounts::authenticate`].
#[derive(Default)]
struct KnownAccounts {
    /// Bumped by every change: a record read before a change is not kept after it.
    generation: u64,
    by_id: HashMap<String, Account>,
}

/// More accounts than a region has operators: past it the copy starts afresh.
const KNOWN_ACCOUNTS_CAP: usize = 10_000;

impl fmt::Debug for Accounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Accounts")
    }
}

fn hash_secret(secret: &str) -> String {
    hex::encode(digest(&SHA256, secret.as_bytes()).as_ref())
}

/// Splits a token into its account id and secret part, if it has the token's shape.
fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_of = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, ID_BYTES * 2) && hex_of(secret, TOKEN_BYTES * 2)).then_some((id, secret))
}

fn encode(account: &Account) -> Result<Vec<u8>> {
    serde_json::to_vec(account).map_err(|e| Error::Storage(format!("cannot encode account: {e}")))
}

fn decode(id: &[u8], bytes: &[u8]) -> Result<Account> {
    serde_json::from_slice(bytes).map_err(|_| {
        Error::Storage(format!(
            "account {} is unreadable",
            String::from_utf8_lossy(id)
        ))
    })
}

fn not_found(id: &str) -> Error {
    // The id came from a caller: show it only if it has an id's shape.
    if id.len() == ID_BYTES * 2 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Missing::Account(Some(id.to_owned())).into()
    } else {
        Missing::Account(None).into()
    }
}

impl Accounts {
    /// Accounts over `store`, with changes audited in `audit` (which must be over the same
    /// store, so that a change and its event share one batch).
    pub fn new(store: Arc<dyn Store>, audit: Arc<AuditLog>) -> Self {
        Accounts {
            store,
            audit,
            rng: SystemRandom::new(),
            write: Mutex::new(()),
            known: RwLock::new(KnownAccounts::default()),
        }
    }

    /// Forgets every record authentication read: called after each write of an account
    /// (successful or not: forgetting is always safe).
    fn forget_known(&self) {
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        known.generation = known.generation.wrapping_add(1);
        known.by_id.clear();
    }

    /// The account `id` for authentication: from the in-memory copy, else from the store
    /// (and kept, unless an account changed meanwhile).
    fn known(&self, id: &str) -> Result<Option<Account>> {
        let generation = {
            let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(account) = known.by_id.get(id) {
                return Ok(Some(account.clone()));
            }
            known.generation
        };
        let account = self.get(id)?;
        if let Some(account) = &account {
            let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
            if known.generation == generation {
                if known.by_id.len() >= KNOWN_ACCOUNTS_CAP {
                    known.by_id.clear();
                }
                known.by_id.insert(id.to_owned(), account.clone());
            }
        }
        Ok(account)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data is the store itself; a poisoned lock guards nothing half-written.
        lock(&self.write)
    }

    fn random_hex(&self, n: usize) -> Result<Zeroizing<String>> {
        let mut buf = Zeroizing::new(vec![0u8; n]);
        self.rng
            .fill(&mut buf)
            .map_err(|_| Error::Provider("random generator"))?;
        Ok(Zeroizing::new(hex::encode(&*buf)))
    }

    /// A new token for account `id`, and the hash to store.
    fn new_token(&self, id: &str) -> Result<(SecretString, String)> {
        let secret = self.random_hex(TOKEN_BYTES)?;
        let hash = hash_secret(&secret);
        let token = SecretString::from(format!("{TOKEN_PREFIX}{id}_{}", secret.as_str()));
        Ok((token, hash))
    }

    /// The account with this id.
    ///
    /// # Errors
    /// Store errors; [`Error::Storage`] for an unreadable record.
    pub fn get(&self, id: &str) -> Result<Option<Account>> {
        match self.store.get(Tree::Accounts, id.as_bytes())? {
            Some(bytes) => decode(id.as_bytes(), &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn must_get(&self, id: &str) -> Result<Account> {
        self.get(id)?.ok_or_else(|| not_found(id))
    }

    /// Every account, by id, without hashes.
    ///
    /// # Errors
    /// Store errors; [`Error::Storage`] for an unreadable record.
    pub fn list(&self) -> Result<Vec<AccountView>> {
        self.store
            .range(Tree::Accounts, &[], None, usize::MAX)?
            .iter()
            .map(|(k, v)| decode(k, v).map(|a| a.view()))
            .collect()
    }

    /// True if no account exists yet.
    ///
    /// # Errors
    /// Store errors.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.store.range(Tree::Accounts, &[], None, 1)?.is_empty())
    }

    /// Creates an account and returns it with its token, which is shown this once: only its
    /// hash is kept.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an invalid name; [`Error::Sealed`] without the audit key (the
    /// name is audited as an HMAC); store errors — then no account was created.
    pub fn create(&self, name: &str, role: Role, actor: &Actor) -> Result<(Account, SecretString)> {
        validate_name(name).map_err(|e| Error::Invalid(e.0))?;
        let _guard = self.lock();
        self.create_locked(name, role, actor)
    }

    fn create_locked(
        &self,
        name: &str,
        role: Role,
        actor: &Actor,
    ) -> Result<(Account, SecretString)> {
        let id = loop {
            let id = self.random_hex(ID_BYTES)?.to_string();
            if self.get(&id)?.is_none() {
                break id;
            }
        };
        let (token, token_hash) = self.new_token(&id)?;
        let account = Account {
            id: id.clone(),
            name: name.to_owned(),
            role,
            disabled: false,
            created_ms: self.audit.clock().now_ms(),
            token_hash,
            password: None,
            password_change_required: false,
            totp: None,
        };
        let mut batch = Batch::new();
        batch.put(Tree::Accounts, id.as_bytes().to_vec(), encode(&account)?);
        self.audit.commit(
            batch,
            actor
                .event("account.create", &id)
                .detail("role", role.as_str())
                .personal("name", name),
        )?;
        Ok((account, token))
    }

    /// Creates the first admin account, by `system`, if no account exists; returns it with its
    /// token. `None` if accounts already exist (nothing is changed).
    ///
    /// # Errors
    /// As [`Accounts::create`].
    pub fn bootstrap_admin(
        &self,
        name: &str,
        request_id: &str,
    ) -> Result<Option<(Account, SecretString)>> {
        validate_name(name).map_err(|e| Error::Invalid(e.0))?;
        let _guard = self.lock();
        if !self.is_empty()? {
            return Ok(None);
        }
        self.create_locked(name, Role::Admin, &Actor::system(request_id))
            .map(Some)
    }

    /// Appends a refused event and returns the refusal (or the append's own error).
    fn refuse(&self, action: &str, id: &str, actor: &Actor, reason: Refusal) -> Error {
        let event = actor
            .event(action, id)
            .outcome(Outcome::Refused)
            .detail("reason", reason.to_string());
        match self.audit.append(event) {
            Ok(_) => Error::Refusal(reason),
            Err(e) => e,
        }
    }

    fn save(&self, account: &Account, event: NewEvent) -> Result<()> {
        let mut batch = Batch::new();
        batch.put(
            Tree::Accounts,
            account.id.as_bytes().to_vec(),
            encode(account)?,
        );
        let committed = self.audit.commit(batch, event);
        self.forget_known();
        committed?;
        Ok(())
    }

    /// Disables an account: its token stops working at once. The last enabled admin cannot
    /// be disabled (nobody could manage accounts any more).
    ///
    /// # Errors
    /// [`Missing::Account`]; [`Refusal::AlreadyDisabled`] or [`Refusal::LastAdmin`]; store
    /// errors — then nothing changed.
    pub fn disable(&self, id: &str, actor: &Actor) -> Result<AccountView> {
        let _guard = self.lock();
        let mut account = self.must_get(id)?;
        if account.disabled {
            return Err(self.refuse(
                "account.disable",
                id,
                actor,
                Refusal::AlreadyDisabled {
                    account: id.to_owned(),
                },
            ));
        }
        if account.role == Role::Admin {
            let enabled_admins = self
                .list()?
                .iter()
                .filter(|a| a.role == Role::Admin && !a.disabled)
                .count();
            if enabled_admins <= 1 {
                return Err(self.refuse(
                    "account.disable",
                    id,
                    actor,
                    Refusal::LastAdmin {
                        account: id.to_owned(),
                    },
                ));
            }
        }
        account.disabled = true;
        self.save(&account, actor.event("account.disable", id))?;
        Ok(account.view())
    }

    /// Gives an account a new token and returns it (shown this once); the old one stops
    /// working at once.
    ///
    /// # Errors
    /// [`Missing::Account`]; [`Refusal::AccountDisabled`] for a disabled account; store errors — then
    /// the old token still works.
    pub fn rotate_token(&self, id: &str, actor: &Actor) -> Result<SecretString> {
        let _guard = self.lock();
        let mut account = self.must_get(id)?;
        if account.disabled {
            return Err(self.refuse(
                "account.rotate_token",
                id,
                actor,
                Refusal::AccountDisabled {
                    account: id.to_owned(),
                },
            ));
        }
        let (token, hash) = self.new_token(id)?;
        account.token_hash = hash;
        self.save(&account, actor.event("account.rotate_token", id))?;
        Ok(token)
    }

    /// Sets (or replaces) the password of a person's account ([`Role::may_have_password`]), as
    /// an argon2id hash. A password set by another account (an admin's initial or reset
    /// password) must be changed at the next console login
    /// ([`Account::password_change_required`]).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a password outside [`validate_password`]'s bounds;
    /// [`Refusal::NoPasswordForRole`] or [`Refusal::AccountDisabled`]; [`Missing::Account`]; store errors.
    pub fn set_password(&self, id: &str, password: &SecretString, actor: &Actor) -> Result<()> {
        validate_password(password).map_err(|e| Error::Invalid(e.0))?;
        let _guard = self.lock();
        let mut account = self.must_get(id)?;
        if !account.role.may_have_password() {
            return Err(self.refuse(
                "account.set_password",
                id,
                actor,
                Refusal::NoPasswordForRole { role: account.role },
            ));
        }
        if account.disabled {
            return Err(self.refuse(
                "account.set_password",
                id,
                actor,
                Refusal::AccountDisabled {
                    account: id.to_owned(),
                },
            ));
        }
        account.password = Some(self.hash_password(password)?);
        account.password_change_required = actor.id != id;
        self.save(&account, actor.event("account.set_password", id))
    }

    fn hash_password(&self, password: &SecretString) -> Result<String> {
        let mut salt = [0u8; 16];
        self.rng
            .fill(&mut salt)
            .map_err(|_| Error::Provider("random generator"))?;
        let salt =
            SaltString::encode_b64(&salt).map_err(|_| Error::Provider("password salt encoding"))?;
        Ok(Argon2::default()
            .hash_password(password.expose_secret().as_bytes(), &salt)
            .map_err(|_| Error::Provider("argon2id hashing"))?
            .to_string())
    }

    /// A person changes their own password (console): `current` must be their password, and
    /// `new` differ from it. Clears [`Account::password_change_required`]. Audited as
    /// `auth.password_change` (refused attempts too), never with a password.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a new password outside [`validate_password`]'s bounds or equal
    /// to the current one; [`Error::Refused`] for a wrong current password, a disabled
    /// account or one without a password; [`Error::NotFound`]; store and audit errors — then
    /// nothing changed.
    pub fn change_own_password(
        &self,
        id: &str,
        current: &SecretString,
        new: &SecretString,
        actor: &Actor,
    ) -> Result<()> {
        validate_password(new).map_err(|e| Error::Invalid(e.0))?;
        let _guard = self.lock();
        let mut account = self.must_get(id)?;
        if !self.verify_password(id, current)? {
            return Err(self.refuse(
                "auth.password_change",
                id,
                actor,
                Refusal::CurrentPasswordMismatch {
                    account: id.to_owned(),
                },
            ));
        }
        if self.verify_password(id, new)? {
            return Err(Error::Invalid(
                "new password: must differ from the current one".to_owned(),
            ));
        }
        account.password = Some(self.hash_password(new)?);
        account.password_change_required = false;
        self.save(&account, actor.event("auth.password_change", id))
    }

    /// The enabled account that a person logs in as: `login` is its id, or its name when
    /// exactly one enabled account with a password bears it (a name shared by several
    /// accounts logs in to none: use the id).
    ///
    /// # Errors
    /// Store errors; [`Error::Storage`] for an unreadable record.
    pub fn find_login(&self, login: &str) -> Result<Option<Account>> {
        let login = login.trim();
        if login.is_empty() {
            return Ok(None);
        }
        if let Some(a) = self.get(login)? {
            return Ok((!a.disabled && a.password.is_some()).then_some(a));
        }
        let mut found = None;
        for (k, v) in self.store.range(Tree::Accounts, &[], None, usize::MAX)? {
            let a = decode(&k, &v)?;
            if a.disabled || a.password.is_none() || a.name.trim() != login {
                continue;
            }
            if found.is_some() {
                return Ok(None);
            }
            found = Some(a);
        }
        Ok(found)
    }

    /// True if `password` is the password of the enabled account `id`.
    ///
    /// # Errors
    /// Store errors only; an unknown or disabled account, no password or a wrong one are
    /// `false`.
    pub fn verify_password(&self, id: &str, password: &SecretString) -> Result<bool> {
        let Some(account) = self.get(id)? else {
            return Ok(false);
        };
        let Some(phc) = account.password.as_deref().filter(|_| !account.disabled) else {
            return Ok(false);
        };
        let Ok(parsed) = PasswordHash::new(phc) else {
            return Err(Error::Storage(format!(
                "account {id}: stored password hash is unreadable"
            )));
        };
        Ok(Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_ok())
    }

    /// The key that seals TOTP secrets (derived from the audit key, `totp.rs`).
    fn totp_key(&self) -> Result<Zeroizing<[u8; 32]>> {
        self.audit.derived_key(crate::totp::LABEL)
    }

    /// Enrols `secret` as the second factor of a person's account `id`, if `code` is its
    /// current code (one step either side): the secret is sealed into the record and the
    /// code's step counts as used. Replaces a second factor already enrolled. Audited as
    /// `auth.totp_enrol` (a wrong code as refused), never with the secret or a code. `false`
    /// for a wrong code (nothing changed).
    ///
    /// # Errors
    /// [`Missing::Account`]; [`Refusal::NoPasswordForRole`] for a machine account (tokens
    /// have no second factor) or [`Refusal::AccountDisabled`]; [`Error::Sealed`] without the
    /// audit key; store and audit errors — then nothing changed.
    pub fn enrol_totp(
        &self,
        id: &str,
        secret: &TotpSecret,
        code: &str,
        actor: &Actor,
    ) -> Result<bool> {
        let _guard = self.lock();
        let mut account = self.must_get(id)?;
        if !account.role.may_have_password() {
            return Err(self.refuse(
                "auth.totp_enrol",
                id,
                actor,
                Refusal::NoPasswordForRole { role: account.role },
            ));
        }
        if account.disabled {
            return Err(self.refuse(
                "auth.totp_enrol",
                id,
                actor,
                Refusal::AccountDisabled {
                    account: id.to_owned(),
                },
            ));
        }
        let clock = self.audit.clock();
        let Some(step) = secret.matching_step(code, clock.now_unix(), None) else {
            let event = actor
                .event("auth.totp_enrol", id)
                .outcome(Outcome::Refused)
                .detail("reason", "wrong_code");
            self.audit.append(event)?;
            return Ok(false);
        };
        let key = self.totp_key()?;
        account.totp = Some(TotpRecord {
            sealed: secret.seal(&key, id)?,
            enrolled_ms: clock.now_ms(),
            last_step: step,
        });
        self.save(&account, actor.event("auth.totp_enrol", id))?;
        Ok(true)
    }

    /// True if `code` is a current code (one step either side) of the second factor of the
    /// enabled account `id`, of a step after the last one accepted; that step is then the
    /// last one accepted (written and flushed before answering), so the same code never
    /// passes twice. `false` for anything else: an unknown or disabled account, no second
    /// factor, a wrong, stale or replayed code. Not audited here: the console's login writes
    /// `auth.login` or `auth.login_failed`.
    ///
    /// # Errors
    /// [`Error::Integrity`] for a sealed secret that does not open; [`Error::Sealed`]
    /// without the audit key; store errors.
    pub fn verify_totp(&self, id: &str, code: &str) -> Result<bool> {
        let _guard = self.lock();
        let Some(mut account) = self.get(id)? else {
            return Ok(false);
        };
        let Some(record) = account.totp.as_mut().filter(|_| !account.disabled) else {
            return Ok(false);
        };
        let secret = TotpSecret::open(&record.sealed, &*self.totp_key()?, id)?;
        let now = self.audit.clock().now_unix();
        let Some(step) = secret.matching_step(code, now, Some(record.last_step)) else {
            return Ok(false);
        };
        record.last_step = step;
        let mut batch = Batch::new();
        batch.put(Tree::Accounts, id.as_bytes().to_vec(), encode(&account)?);
        let applied = self.store.apply(&batch);
        self.forget_known();
        applied?;
        Ok(true)
    }

    /// Removes the second factor of account `id` (an admin's reset, for a lost phone): the
    /// person logs in with the password alone again, and enrols anew (at once, when the
    /// console requires a second factor). Audited as `account.reset_totp`. `false` if none
    /// was enrolled (nothing changed, nothing audited).
    ///
    /// # Errors
    /// [`Missing::Account`]; store and audit errors — then nothing changed.
    pub fn reset_totp(&self, id: &str, actor: &Actor) -> Result<bool> {
        let _guard = self.lock();
        let mut account = self.must_get(id)?;
        if account.totp.take().is_none() {
            return Ok(false);
        }
        self.save(&account, actor.event("account.reset_totp", id))?;
        Ok(true)
    }

    /// The enabled account a bearer token belongs to. `None` for anything else: not a token,
    /// an unknown account, a wrong or replaced secret, a disabled account.
    ///
    /// # Security
    /// The token's hash is compared in constant time with the stored one.
    ///
    /// # Errors
    /// Store errors only.
    pub fn authenticate(&self, token: &SecretString) -> Result<Option<Account>> {
        let Some((id, secret)) = parse_token(token.expose_secret()) else {
            return Ok(None);
        };
        let Some(account) = self.known(id)? else {
            return Ok(None);
        };
        Ok(Self::matching(account, secret))
    }

    /// [`Self::authenticate`] without a store read: `Some(answer)` when the token is no token
    /// or its account's record is in memory, `None` when only the store can answer (then call
    /// [`Self::authenticate`] where blocking is allowed).
    pub fn authenticate_in_memory(&self, token: &SecretString) -> Option<Option<Account>> {
        let Some((id, secret)) = parse_token(token.expose_secret()) else {
            return Some(None);
        };
        let account = self
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .get(id)
            .cloned()?;
        Some(Self::matching(account, secret))
    }

    /// `account` if `secret` is its token's and it is enabled.
    fn matching(account: Account, secret: &str) -> Option<Account> {
        let presented = hash_secret(secret);
        let same = aws_lc_rs::constant_time::verify_slices_are_equal(
            presented.as_bytes(),
            account.token_hash.as_bytes(),
        )
        .is_ok();
        (same && !account.disabled).then_some(account)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::audit::Query;
    use crate::secret::DataKey;
    use crate::store::memory::{FailingStore, MemoryStore};

    fn accounts_over(store: Arc<dyn Store>) -> (Accounts, Arc<AuditLog>) {
        let audit = Arc::new(AuditLog::open(store.clone(), 1000).unwrap());
        audit.set_key(Some(&DataKey::from_bytes([7; 32]))).unwrap();
        (Accounts::new(store, audit.clone()), audit)
    }

    fn admin() -> Actor {
        Actor {
            id: "00000000000000aa".into(),
            role: "admin".into(),
            request_id: "req-1".into(),
        }
    }

    #[test]
    fn roles_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn tokens_answer_from_memory_until_any_account_changes() {
        let (acc, _audit) = accounts_over(Arc::new(MemoryStore::new()));
        let (a, token) = acc.create("Mario Rossi", Role::Operator, &admin()).unwrap();
        let (b, other) = acc.create("Anna Bianchi", Role::Support, &admin()).unwrap();
        // Not read yet: only the store can answer; a malformed token needs no store.
        assert!(acc.authenticate_in_memory(&token).is_none());
        assert_eq!(
            acc.authenticate_in_memory(&SecretString::from("Bearer x".to_owned())),
            Some(None)
        );
        assert!(acc.authenticate(&token).unwrap().is_some());
        assert!(acc.authenticate(&other).unwrap().is_some());
        let known = acc.authenticate_in_memory(&token).expect("kept in memory");
        assert_eq!(known.map(|k| k.id), Some(a.id.clone()));
        let mut wrong = token.expose_secret().to_owned();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        assert_eq!(
            acc.authenticate_in_memory(&SecretString::from(wrong)),
            Some(None)
        );

        // A change of any account forgets every record: the disabled one is refused at once.
        acc.disable(&b.id, &admin()).unwrap();
        assert!(acc.authenticate_in_memory(&token).is_none());
        assert!(acc.authenticate_in_memory(&other).is_none());
        assert!(acc.authenticate(&other).unwrap().is_none());
        assert_eq!(acc.authenticate_in_memory(&other), Some(None));
        assert!(acc.authenticate(&token).unwrap().is_some());
    }

    #[test]
    fn a_token_read_while_its_account_is_disabled_is_not_kept() {
        // Readers race a disable: once `disable` has returned, no read may answer the old
        // record, from memory or from the store.
        for _ in 0..20 {
            let (acc, _audit) = accounts_over(Arc::new(MemoryStore::new()));
            let acc = Arc::new(acc);
            let (a, token) = acc.create("Mario Rossi", Role::Operator, &admin()).unwrap();
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let readers: Vec<_> = (0..4)
                .map(|_| {
                    let (acc, token, done) = (acc.clone(), token.clone(), done.clone());
                    std::thread::spawn(move || {
                        while !done.load(std::sync::atomic::Ordering::Relaxed) {
                            let _ = acc.authenticate(&token).unwrap();
                        }
                    })
                })
                .collect();
            std::thread::yield_now();
            acc.disable(&a.id, &admin()).unwrap();
            for _ in 0..200 {
                assert!(acc.authenticate(&token).unwrap().is_none());
                assert!(!matches!(acc.authenticate_in_memory(&token), Some(Some(_))));
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            for r in readers {
                r.join().unwrap();
            }
        }
    }

    #[test]
    fn create_authenticate_rotate_disable() {
        let (acc, audit) = accounts_over(Arc::new(MemoryStore::new()));
        let (a, token) = acc.create("Mario Rossi", Role::Operator, &admin()).unwrap();
        assert!(token.expose_secret().starts_with("plico_"));
        assert!(!acc.get(&a.id).unwrap().unwrap().token_hash.is_empty());
        assert_eq!(acc.authenticate(&token).unwrap().unwrap().id, a.id);

        // Bad shapes and wrong secrets are None.
        for bad in ["", "plico_", "Bearer x", &token.expose_secret()[..40]] {
            assert!(acc
                .authenticate(&SecretString::from(bad.to_owned()))
                .unwrap()
                .is_none());
        }
        let mut wrong = token.expose_secret().to_owned();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        assert!(acc
            .authenticate(&SecretString::from(wrong))
            .unwrap()
            .is_none());

        let new = acc.rotate_token(&a.id, &admin()).unwrap();
        assert!(acc.authenticate(&token).unwrap().is_none());
        assert!(acc.authenticate(&new).unwrap().is_some());

        acc.disable(&a.id, &admin()).unwrap();
        assert!(acc.authenticate(&new).unwrap().is_none());
        assert!(matches!(
            acc.disable(&a.id, &admin()),
            Err(Error::Refusal(Refusal::AlreadyDisabled { account })) if account == a.id
        ));

        // Audited: subject the account id, actor and request id, the name only as an HMAC.
        let page = audit
            .query(&Query {
                action: Some("account.".into()),
                limit: 100,
                ..Query::default()
            })
            .unwrap();
        let actions: Vec<&str> = page.events.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "account.create",
                "account.rotate_token",
                "account.disable",
                "account.disable"
            ]
        );
        let create = &page.events[0];
        assert_eq!(create.subject, a.id);
        assert_eq!(create.actor, "00000000000000aa");
        assert_eq!(create.role, "admin");
        assert_eq!(create.request_id, "req-1");
        assert_eq!(
            create.personal["name"],
            audit.personal_hmac("name", "Mario Rossi").unwrap()
        );
        assert_eq!(page.events[3].outcome, Outcome::Refused);
        let text = serde_json::to_string(&page.events).unwrap();
        assert!(!text.contains("Mario"));
        assert!(audit.verify().unwrap().intact());
    }

    #[test]
    fn debug_and_view_hide_hashes() {
        let (acc, _) = accounts_over(Arc::new(MemoryStore::new()));
        let (a, token) = acc.create("Op", Role::Operator, &admin()).unwrap();
        acc.set_password(
            &a.id,
            &SecretString::from("correct horse battery"),
            &admin(),
        )
        .unwrap();
        let a = acc.get(&a.id).unwrap().unwrap();
        let dbg = format!("{a:?}");
        assert!(!dbg.contains(&a.token_hash), "{dbg}");
        assert!(!dbg.contains("argon2"), "{dbg}");
        let view = serde_json::to_string(&acc.list().unwrap()).unwrap();
        assert!(!view.contains(&a.token_hash));
        assert!(!view.contains("argon2"));
        assert!(!view.contains(token.expose_secret()));
        assert!(view.contains("\"has_password\":true"));
    }

    #[test]
    fn passwords() {
        let (acc, _) = accounts_over(Arc::new(MemoryStore::new()));
        let (op, _) = acc.create("Op", Role::Operator, &admin()).unwrap();
        let (cms, _) = acc.create("Cms", Role::Cms, &admin()).unwrap();
        let short = SecretString::from("short-pw-11");
        let e = acc.set_password(&op.id, &short, &admin()).unwrap_err();
        assert!(e.to_string().contains("at least 12"), "{e}");
        assert!(!e.to_string().contains("short-pw-11"));
        let good = SecretString::from("twelve chars");
        assert!(matches!(
            acc.set_password(&cms.id, &good, &admin()),
            Err(Error::Refusal(Refusal::NoPasswordForRole {
                role: Role::Cms
            }))
        ));
        acc.set_password(&op.id, &good, &admin()).unwrap();
        let phc = acc.get(&op.id).unwrap().unwrap().password.unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(acc.verify_password(&op.id, &good).unwrap());
        assert!(!acc
            .verify_password(&op.id, &SecretString::from("twelve charz"))
            .unwrap());
        assert!(!acc.verify_password(&cms.id, &good).unwrap());
        assert!(!acc.verify_password("nobody", &good).unwrap());
    }

    #[test]
    fn bootstrap_only_once_and_last_admin_stays() {
        let (acc, audit) = accounts_over(Arc::new(MemoryStore::new()));
        let (a, token) = acc.bootstrap_admin("first admin", "init").unwrap().unwrap();
        assert_eq!(a.role, Role::Admin);
        assert!(acc.authenticate(&token).unwrap().is_some());
        assert!(acc.bootstrap_admin("again", "init").unwrap().is_none());
        assert_eq!(acc.list().unwrap().len(), 1);
        let ev = audit
            .query(&Query {
                action: Some("account.create".into()),
                limit: 10,
                ..Query::default()
            })
            .unwrap();
        assert_eq!(ev.events[0].actor, "system");

        let me = Actor::account(&a, "r");
        assert!(matches!(
            acc.disable(&a.id, &me),
            Err(Error::Refusal(Refusal::LastAdmin { account })) if account == a.id
        ));
        let (b, _) = acc.create("second", Role::Admin, &me).unwrap();
        acc.disable(&a.id, &Actor::account(&b, "r2")).unwrap();
        assert!(matches!(
            acc.disable(&b.id, &Actor::account(&b, "r3")),
            Err(Error::Refusal(Refusal::LastAdmin { .. }))
        ));
    }

    #[test]
    fn a_failed_audit_write_leaves_no_change() {
        let store = Arc::new(FailingStore::new());
        let (acc, audit) = accounts_over(store.clone());
        let (a, token) = acc.create("Anna", Role::Cms, &admin()).unwrap();
        let before = audit.query(&Query {
            limit: 100,
            ..Query::default()
        });
        store.fail_writes(true);
        assert!(acc.create("Bruno", Role::Cms, &admin()).is_err());
        assert!(acc.rotate_token(&a.id, &admin()).is_err());
        assert!(acc.disable(&a.id, &admin()).is_err());
        store.fail_writes(false);
        assert_eq!(acc.list().unwrap().len(), 1);
        assert!(acc.authenticate(&token).unwrap().is_some());
        assert!(!acc.get(&a.id).unwrap().unwrap().disabled);
        let after = audit.query(&Query {
            limit: 100,
            ..Query::default()
        });
        assert_eq!(before.unwrap(), after.unwrap());
        assert!(audit.verify().unwrap().intact());
        // The log goes on after the failure.
        acc.disable(&a.id, &admin()).unwrap();
        assert!(audit.verify().unwrap().intact());
    }

    #[test]
    fn creating_needs_the_audit_key() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let audit = Arc::new(AuditLog::open(store.clone(), 1000).unwrap());
        let acc = Accounts::new(store, audit);
        assert!(matches!(
            acc.create("x", Role::Auditor, &admin()),
            Err(Error::Sealed)
        ));
        assert!(acc.is_empty().unwrap());
    }

    fn accounts_at(clock: Arc<crate::ManualClock>) -> (Accounts, Arc<AuditLog>) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let audit = Arc::new(
            AuditLog::open(store.clone(), 1000)
                .unwrap()
                .with_clock(clock),
        );
        audit.set_key(Some(&DataKey::from_bytes([7; 32]))).unwrap();
        (Accounts::new(store, audit.clone()), audit)
    }

    fn code(secret: &TotpSecret, unix: u64) -> String {
        crate::totp_code_from_base32(&secret.expose_base32(), unix).unwrap()
    }

    #[test]
    fn totp_enrol_verify_replay_window_and_reset() {
        let clock = Arc::new(crate::ManualClock::at_ms(1_700_000_010_000));
        let (acc, audit) = accounts_at(clock.clone());
        let (op, _) = acc.create("Op", Role::Operator, &admin()).unwrap();
        let me = Actor::account(&op, "r");
        let secret = TotpSecret::generate().unwrap();
        let now = || crate::Clock::now_unix(&*clock);

        // Not enrolled: no code passes.
        assert!(!acc.verify_totp(&op.id, &code(&secret, now())).unwrap());
        // A wrong code does not enrol.
        assert!(!acc
            .enrol_totp(&op.id, &secret, &code(&secret, now() + 300), &me)
            .unwrap());
        assert!(acc.get(&op.id).unwrap().unwrap().totp.is_none());
        assert!(acc
            .enrol_totp(&op.id, &secret, &code(&secret, now()), &me)
            .unwrap());
        let stored = acc.get(&op.id).unwrap().unwrap();
        assert!(acc.list().unwrap()[0].has_totp);
        // Sealed: neither the raw secret nor its base32 is in the record.
        let raw = serde_json::to_string(&stored).unwrap();
        assert!(!raw.contains(secret.expose_base32().as_str()), "{raw}");
        assert!(!format!("{stored:?}").contains(&stored.totp.as_ref().unwrap().sealed));

        // The enrolment's step is used: its code does not log in.
        assert!(!acc.verify_totp(&op.id, &code(&secret, now())).unwrap());
        // The next step's code passes now (one step ahead), once.
        assert!(acc.verify_totp(&op.id, &code(&secret, now() + 30)).unwrap());
        assert!(!acc.verify_totp(&op.id, &code(&secret, now() + 30)).unwrap());
        // Two minutes on: one step behind passes, two behind and two ahead do not.
        clock.advance(std::time::Duration::from_secs(120));
        assert!(!acc.verify_totp(&op.id, &code(&secret, now() - 60)).unwrap());
        assert!(!acc.verify_totp(&op.id, &code(&secret, now() + 60)).unwrap());
        assert!(acc.verify_totp(&op.id, &code(&secret, now() - 30)).unwrap());
        // Once a step is used, an earlier one is refused even inside the window.
        clock.advance(std::time::Duration::from_secs(30));
        assert!(!acc.verify_totp(&op.id, &code(&secret, now() - 60)).unwrap());
        assert!(acc.verify_totp(&op.id, &code(&secret, now())).unwrap());
        assert!(!acc.verify_totp(&op.id, "abcdef").unwrap());
        assert!(!acc.verify_totp("nobody", &code(&secret, now())).unwrap());

        // The sealed secret belongs to its account: copied to another one it does not open.
        let (other, _) = acc.create("Other", Role::Support, &admin()).unwrap();
        let mut moved = acc.get(&other.id).unwrap().unwrap();
        moved.totp = stored.totp.clone();
        let mut b = Batch::new();
        b.put(
            Tree::Accounts,
            other.id.as_bytes().to_vec(),
            encode(&moved).unwrap(),
        );
        acc.store.apply(&b).unwrap();
        clock.advance(std::time::Duration::from_secs(30));
        assert!(matches!(
            acc.verify_totp(&other.id, &code(&secret, now())),
            Err(Error::Integrity)
        ));

        // Machine accounts have no second factor.
        let (cms, _) = acc.create("Cms", Role::Cms, &admin()).unwrap();
        assert!(matches!(
            acc.enrol_totp(&cms.id, &secret, &code(&secret, now()), &admin()),
            Err(Error::Refusal(Refusal::NoPasswordForRole {
                role: Role::Cms
            }))
        ));

        // An admin's reset removes it; a second reset changes nothing.
        assert!(acc.reset_totp(&op.id, &admin()).unwrap());
        assert!(!acc.reset_totp(&op.id, &admin()).unwrap());
        assert!(acc.get(&op.id).unwrap().unwrap().totp.is_none());
        clock.advance(std::time::Duration::from_secs(30));
        assert!(!acc.verify_totp(&op.id, &code(&secret, now())).unwrap());

        let actions: Vec<(String, Outcome)> = audit
            .query(&Query {
                limit: 100,
                ..Query::default()
            })
            .unwrap()
            .events
            .iter()
            .filter(|e| e.action.contains("totp"))
            .map(|e| (e.action.clone(), e.outcome))
            .collect();
        assert_eq!(
            actions,
            [
                ("auth.totp_enrol".to_owned(), Outcome::Refused),
                ("auth.totp_enrol".to_owned(), Outcome::Ok),
                ("auth.totp_enrol".to_owned(), Outcome::Refused),
                ("account.reset_totp".to_owned(), Outcome::Ok),
            ]
        );
        assert!(audit.verify().unwrap().intact());
    }

    #[test]
    fn the_totp_key_is_hkdf_expand_of_the_audit_key() {
        use aws_lc_rs::hkdf::{Prk, HKDF_SHA256};
        let (acc, _) = accounts_over(Arc::new(MemoryStore::new()));
        struct Len32;
        impl aws_lc_rs::hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let prk = Prk::new_less_safe(HKDF_SHA256, &[7; 32]);
        let mut want = [0u8; 32];
        prk.expand(&[crate::totp::LABEL], Len32)
            .unwrap()
            .fill(&mut want)
            .unwrap();
        assert_eq!(*acc.totp_key().unwrap(), want);
        assert_ne!(want, [7; 32]);
    }

    #[test]
    fn records_written_before_the_second_factor_still_read() {
        // An account record as stored before `password_change_required` and `totp` existed.
        let (acc, _) = accounts_over(Arc::new(MemoryStore::new()));
        let old = br#"{"id":"00000000000000ab","name":"Vecchio","role":"operator","disabled":false,"created_ms":1,"token_hash":"00","password":"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA"}"#;
        let mut b = Batch::new();
        b.put(Tree::Accounts, b"00000000000000ab".to_vec(), old.to_vec());
        acc.store.apply(&b).unwrap();
        let a = acc.get("00000000000000ab").unwrap().unwrap();
        assert!(a.totp.is_none() && !a.password_change_required);
        assert!(!acc.list().unwrap()[0].has_totp);
        assert!(!acc.verify_totp(&a.id, "123456").unwrap());
        // Written back, it has no new keys it did not need.
        let again = String::from_utf8(encode(&a).unwrap()).unwrap();
        assert!(!again.contains("totp"), "{again}");
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("Mario Rossi").is_ok());
        assert!(validate_name("  ").is_err());
        assert!(validate_name("a\nb").is_err());
        assert!(validate_name(&"x".repeat(101)).is_err());
    }
}

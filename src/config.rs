//! Service configuration: one TOML file plus `PLICO_*` environment overrides.
//!
//! Precedence, lowest first: built-in defaults, the TOML file (`--config FILE`), environment
//! variables, then command-line flags (applied by the caller on the returned [`Config`]).
//!
//! ```toml
//! data_dir = "/var/lib/plico"
//! listen = "0.0.0.0:8200"
//!
//! [tls]
//! cert = "/etc/plico/tls/cert.pem"   # PEM chain, leaf first
//! key = "/etc/plico/tls/key.pem"
//!
//! [log]
//! format = "json"                    # or "plain"
//!
//! [codes]                            # digits of PIN and PUK; CNS default 5 and 8
//! pin_min = 5
//! pin_max = 5
//! puk_min = 8
//! puk_max = 8
//!
//! [audit]
//! checkpoint_every = 1000            # events between MAC'd checkpoints
//! retention_days = 730               # events are kept at least this long (24 months)
//!
//! [limits]
//! sensitive_per_minute = 30          # per account, on routes that reveal tokens or codes
//! handshake_timeout_secs = 10        # a TLS handshake must end within this
//! request_head_timeout_secs = 10     # a whole request head must arrive within this
//! idle_timeout_secs = 60             # a kept-alive connection silent this long is closed
//! max_connections = 4096             # at once (lowered to fit the limit of open files)
//! max_connections_per_address = 256  # at once from one client address
//! reserved_connections = 32          # beyond max_connections, for /healthz, /readyz, /metrics, /v1/sys/*
//! min_body_bytes_per_sec = 1024      # least request body rate, over each window of waiting
//! body_rate_window_secs = 10
//! unseal_per_minute_per_address = 20 # share submissions from one client address
//! unseal_per_minute = 600            # share submissions from everyone together
//!
//! [import]
//! max_upload_bytes = 2147483648      # largest batch file accepted (2 GiB), checked while streaming
//! max_concurrent = 2                 # imports and generations running at once
//!
//! [import.serial]                    # shape of card serials; CNS default 16 to 20 digits
//! min_len = 16
//! max_len = 20
//! charset = "digits"                 # or "upper_alnum" (A-Z, 0-9)
//!
//! [registry]
//! max_upload_bytes = 67108864        # largest holder registry file accepted (64 MiB)
//!
//! [mailers]                          # bulk print runs and the counter's page
//! out_dir = "/var/lib/plico/print"   # sealed print files and manifests; default DATA_DIR/print
//! recipients = ["age1…"]             # the print facility's age x25519 recipients
//! per_file = 10000                   # mailers per print file
//! templates_dir = "/etc/plico/templates"  # optional: templates overriding the built-in ones
//!
//! [mailers.issuer]                   # texts the templates print
//! name = "Regione Esempio"
//! helpline = "800 000 000"
//!
//! [mailers.layout]                   # page geometry in mm; set only what changes
//!
//! [console]                          # the browser console's logins and sessions
//! idle_minutes = 15                  # a session ends after this long without a request
//! absolute_hours = 8                 # and this long after login, whatever happens
//! lockout_failures = 5               # failed logins (passwords or codes) in a row lock the account
//! lockout_minutes = 15               # for this long
//! require_totp = false               # true: every console account must enrol a second factor
//!
//! [keys]                             # key ceremonies under dual control
//! approval_window_secs = 28800       # a proposal lapses unless approved within 8 hours
//! rekey_share_dir = "/media/ceremony"  # new rekey shares are written here; no rekey without it
//! rewrap_chunk = 256                 # data keys rewrapped per store write of a key job
//! rewrap_pause_ms = 0                # pause after each chunk, to leave the HSM to delivery
//!
//! [dispatch]                         # the delivery workers; without it no job is sent
//! email_enabled = true               # sms_enabled likewise
//! email_per_second = 50              # sms_per_second = 20
//! max_in_flight = 16                 # jobs of one channel at once
//! max_attempts = 5                   # then `dead` (and the fallback)
//! backoff_base_ms = 30000            # doubles each attempt, with jitter, up to backoff_cap_ms
//! backoff_cap_ms = 3600000
//! overdue_after_secs = 86400         # parts not delivered by then are logged
//! pause_base_ms = 1000               # a lane's pause after a relay-wide failure; doubles
//! pause_cap_ms = 300000              # each one in a row, up to pause_cap_ms
//! # spool_dir = "..."                # serve --dev only: codes IN CLEAR in files (insecure)
//!
//! [dispatch.smtp]
//! host = "smtp.example.it"
//! port = 587
//! tls = "starttls"                   # or "tls" (465), or "none" (loopback relays only)
//! from = "pin@example.it"
//! max_connections = 8
//!
//! [dispatch.sms]                     # Kannel's sendsms interface
//! sendsms_url = "http://127.0.0.1:13013/cgi-bin/sendsms"   # or https://… (see ca_file)
//! # ca_file = "/etc/plico/gateway-ca.pem"   # PEM CAs trusted besides the public roots (https)
//! username = "plico"
//! password = "…"
//! from = "PLICO"
//! dlr_url = "https://plico.example.it:8200/v1/dlr?token=TOKEN&key=%KEY%&status=%d"
//! dlr_token = "TOKEN"                # ≥ 22 random characters; /v1/dlr is 401 without it
//!
//! [metrics]
//! token_file = "/etc/plico/metrics.token"  # the scrape token of GET /metrics (one line, mode
//!                                     # 0600); without it /metrics answers 401 to everyone
//! ```
//!
//! Each key has one environment variable, listed in [`ENV_VARS`]: `PLICO_DATA_DIR`,
//! `PLICO_LISTEN`, `PLICO_TLS_CERT`, `PLICO_TLS_KEY`, `PLICO_LOG_FORMAT`, `PLICO_STORE_CACHE_MIB`,
//! `PLICO_CODES_PIN_MIN`
//! and so on, `PLICO_AUDIT_CHECKPOINT_EVERY`, `PLICO_LIMITS_SENSITIVE_PER_MINUTE` (and every
//! other `[limits]` key: `PLICO_LIMITS_IDLE_TIMEOUT_SECS` and so on),
//! `PLICO_IMPORT_MAX_UPLOAD_BYTES`, `PLICO_IMPORT_SERIAL_MIN_LEN` and so on,
//! `PLICO_REGISTRY_MAX_UPLOAD_BYTES`, `PLICO_MAILERS_OUT_DIR`, `PLICO_MAILERS_PER_FILE`,
//! `PLICO_MAILERS_TEMPLATES_DIR`, `PLICO_MAILERS_RECIPIENTS` (comma-separated), and
//! `PLICO_MAILERS_ISSUER_NAME`, `_CARD_NAME`, `_HELPLINE`, `_WEB`,
//! `PLICO_CONSOLE_IDLE_MINUTES`, `PLICO_CONSOLE_ABSOLUTE_HOURS`,
//! `PLICO_CONSOLE_LOCKOUT_FAILURES`, `PLICO_CONSOLE_LOCKOUT_MINUTES`,
//! `PLICO_CONSOLE_REQUIRE_TOTP`, `PLICO_KEYS_APPROVAL_WINDOW_SECS`, `PLICO_KEYS_REKEY_SHARE_DIR`, `PLICO_KEYS_REWRAP_CHUNK`,
//! `PLICO_KEYS_REWRAP_PAUSE_MS`, `PLICO_HSM_KIND`, `PLICO_HSM_MODULE`, `PLICO_HSM_TOKEN_LABEL`,
//! `PLICO_HSM_MECHANISM`, `PLICO_HSM_PIN_FILE`, and `PLICO_DISPATCH_*`
//! (`PLICO_DISPATCH_MAX_ATTEMPTS`, `PLICO_DISPATCH_SMTP_HOST`, `PLICO_DISPATCH_SMS_PASSWORD`,
//! `PLICO_DISPATCH_SMS_DLR_TOKEN` and so on: the key's path in capitals). Other `PLICO_*`
//! variables (such as `PLICO_ADDR`, used by the client commands) are not configuration and are
//! ignored here. Unknown keys in the file are errors, so a typo is
//! not silently a default. Errors name the file (or variable) and the field.
//!
//! An environment variable's value is text, read by the type of its key: the text itself where
//! the key is text, a number or a boolean where the key refuses text. So
//! `PLICO_DISPATCH_SMS_PASSWORD=12345678` or `PLICO_DISPATCH_SMS_FROM=3331234567` set those
//! texts (figment's own environment provider would read them as numbers and refuse them). The
//! file's values keep their TOML types, strictly.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use vault::{CodePolicy, LengthBounds};
use vault::{SerialCharset, SerialRule};

/// Where the service listens when nothing says otherwise (loopback: plain HTTP is allowed
/// there).
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8200);

/// Environment variables and the configuration key each one sets.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("PLICO_DATA_DIR", "data_dir"),
    ("PLICO_LISTEN", "listen"),
    ("PLICO_TLS_CERT", "tls.cert"),
    ("PLICO_TLS_KEY", "tls.key"),
    ("PLICO_LOG_FORMAT", "log.format"),
    ("PLICO_CODES_PIN_MIN", "codes.pin_min"),
    ("PLICO_CODES_PIN_MAX", "codes.pin_max"),
    ("PLICO_CODES_PUK_MIN", "codes.puk_min"),
    ("PLICO_CODES_PUK_MAX", "codes.puk_max"),
    ("PLICO_AUDIT_CHECKPOINT_EVERY", "audit.checkpoint_every"),
    ("PLICO_AUDIT_RETENTION_DAYS", "audit.retention_days"),
    ("PLICO_STORE_CACHE_MIB", "store.cache_mib"),
    (
        "PLICO_LIMITS_SENSITIVE_PER_MINUTE",
        "limits.sensitive_per_minute",
    ),
    (
        "PLICO_LIMITS_HANDSHAKE_TIMEOUT_SECS",
        "limits.handshake_timeout_secs",
    ),
    (
        "PLICO_LIMITS_REQUEST_HEAD_TIMEOUT_SECS",
        "limits.request_head_timeout_secs",
    ),
    ("PLICO_LIMITS_IDLE_TIMEOUT_SECS", "limits.idle_timeout_secs"),
    ("PLICO_LIMITS_MAX_CONNECTIONS", "limits.max_connections"),
    (
        "PLICO_LIMITS_MAX_CONNECTIONS_PER_ADDRESS",
        "limits.max_connections_per_address",
    ),
    (
        "PLICO_LIMITS_RESERVED_CONNECTIONS",
        "limits.reserved_connections",
    ),
    (
        "PLICO_LIMITS_MIN_BODY_BYTES_PER_SEC",
        "limits.min_body_bytes_per_sec",
    ),
    (
        "PLICO_LIMITS_BODY_RATE_WINDOW_SECS",
        "limits.body_rate_window_secs",
    ),
    (
        "PLICO_LIMITS_UNSEAL_PER_MINUTE_PER_ADDRESS",
        "limits.unseal_per_minute_per_address",
    ),
    ("PLICO_LIMITS_UNSEAL_PER_MINUTE", "limits.unseal_per_minute"),
    ("PLICO_IMPORT_MAX_UPLOAD_BYTES", "import.max_upload_bytes"),
    ("PLICO_IMPORT_MAX_CONCURRENT", "import.max_concurrent"),
    ("PLICO_IMPORT_SERIAL_MIN_LEN", "import.serial.min_len"),
    ("PLICO_IMPORT_SERIAL_MAX_LEN", "import.serial.max_len"),
    ("PLICO_IMPORT_SERIAL_CHARSET", "import.serial.charset"),
    (
        "PLICO_REGISTRY_MAX_UPLOAD_BYTES",
        "registry.max_upload_bytes",
    ),
    ("PLICO_MAILERS_OUT_DIR", "mailers.out_dir"),
    ("PLICO_MAILERS_RECIPIENTS", "mailers.recipients"),
    ("PLICO_MAILERS_PER_FILE", "mailers.per_file"),
    ("PLICO_MAILERS_TEMPLATES_DIR", "mailers.templates_dir"),
    ("PLICO_MAILERS_ISSUER_NAME", "mailers.issuer.name"),
    ("PLICO_MAILERS_ISSUER_CARD_NAME", "mailers.issuer.card_name"),
    ("PLICO_MAILERS_ISSUER_HELPLINE", "mailers.issuer.helpline"),
    ("PLICO_MAILERS_ISSUER_WEB", "mailers.issuer.web"),
    (
        "PLICO_KEYS_APPROVAL_WINDOW_SECS",
        "keys.approval_window_secs",
    ),
    ("PLICO_KEYS_REKEY_SHARE_DIR", "keys.rekey_share_dir"),
    ("PLICO_CONSOLE_IDLE_MINUTES", "console.idle_minutes"),
    ("PLICO_CONSOLE_ABSOLUTE_HOURS", "console.absolute_hours"),
    ("PLICO_CONSOLE_LOCKOUT_FAILURES", "console.lockout_failures"),
    ("PLICO_CONSOLE_LOCKOUT_MINUTES", "console.lockout_minutes"),
    ("PLICO_CONSOLE_REQUIRE_TOTP", "console.require_totp"),
    ("PLICO_KEYS_REWRAP_CHUNK", "keys.rewrap_chunk"),
    ("PLICO_KEYS_REWRAP_PAUSE_MS", "keys.rewrap_pause_ms"),
    ("PLICO_BACKUP_RECIPIENT", "backup.recipient"),
    ("PLICO_AUDIT_STREAM_FILE", "audit.stream.file"),
    ("PLICO_AUDIT_STREAM_SYSLOG", "audit.stream.syslog"),
    ("PLICO_HSM_KIND", "hsm.kind"),
    ("PLICO_HSM_MODULE", "hsm.module"),
    ("PLICO_HSM_TOKEN_LABEL", "hsm.token_label"),
    ("PLICO_HSM_MECHANISM", "hsm.mechanism"),
    ("PLICO_HSM_PIN_FILE", "hsm.pin_file"),
    ("PLICO_DISPATCH_EMAIL_ENABLED", "dispatch.email_enabled"),
    ("PLICO_DISPATCH_SMS_ENABLED", "dispatch.sms_enabled"),
    ("PLICO_DISPATCH_SPOOL_DIR", "dispatch.spool_dir"),
    (
        "PLICO_DISPATCH_EMAIL_PER_SECOND",
        "dispatch.email_per_second",
    ),
    ("PLICO_DISPATCH_SMS_PER_SECOND", "dispatch.sms_per_second"),
    ("PLICO_DISPATCH_MAX_IN_FLIGHT", "dispatch.max_in_flight"),
    ("PLICO_DISPATCH_MAX_ATTEMPTS", "dispatch.max_attempts"),
    ("PLICO_DISPATCH_BACKOFF_BASE_MS", "dispatch.backoff_base_ms"),
    ("PLICO_DISPATCH_BACKOFF_CAP_MS", "dispatch.backoff_cap_ms"),
    (
        "PLICO_DISPATCH_OVERDUE_AFTER_SECS",
        "dispatch.overdue_after_secs",
    ),
    ("PLICO_DISPATCH_PAUSE_BASE_MS", "dispatch.pause_base_ms"),
    ("PLICO_DISPATCH_PAUSE_CAP_MS", "dispatch.pause_cap_ms"),
    ("PLICO_DISPATCH_SMTP_HOST", "dispatch.smtp.host"),
    ("PLICO_DISPATCH_SMTP_PORT", "dispatch.smtp.port"),
    ("PLICO_DISPATCH_SMTP_TLS", "dispatch.smtp.tls"),
    ("PLICO_DISPATCH_SMTP_FROM", "dispatch.smtp.from"),
    ("PLICO_DISPATCH_SMTP_CA_FILE", "dispatch.smtp.ca_file"),
    ("PLICO_DISPATCH_SMTP_USERNAME", "dispatch.smtp.username"),
    (
        "PLICO_DISPATCH_SMTP_PASSWORD_FILE",
        "dispatch.smtp.password_file",
    ),
    ("PLICO_DISPATCH_SMTP_EHLO_NAME", "dispatch.smtp.ehlo_name"),
    (
        "PLICO_DISPATCH_SMTP_RETURN_PATH",
        "dispatch.smtp.return_path",
    ),
    (
        "PLICO_DISPATCH_SMTP_INSECURE_PLAINTEXT_TO_REMOTE",
        "dispatch.smtp.insecure_plaintext_to_remote",
    ),
    (
        "PLICO_DISPATCH_SMTP_MAX_CONNECTIONS",
        "dispatch.smtp.max_connections",
    ),
    ("PLICO_DISPATCH_SMS_SENDSMS_URL", "dispatch.sms.sendsms_url"),
    ("PLICO_DISPATCH_SMS_CA_FILE", "dispatch.sms.ca_file"),
    ("PLICO_DISPATCH_SMS_USERNAME", "dispatch.sms.username"),
    ("PLICO_DISPATCH_SMS_PASSWORD", "dispatch.sms.password"),
    ("PLICO_DISPATCH_SMS_FROM", "dispatch.sms.from"),
    ("PLICO_DISPATCH_SMS_DLR_URL", "dispatch.sms.dlr_url"),
    ("PLICO_DISPATCH_SMS_DLR_TOKEN", "dispatch.sms.dlr_token"),
    ("PLICO_METRICS_TOKEN_FILE", "metrics.token_file"),
];

/// Keys whose values are secrets: `plico config check` prints them redacted. Any key whose
/// last part is `password`, `token` or `secret`, or ends in `_password`, `_token` or `_secret`,
/// counts as one too (see [`is_secret_key`]), so a new secret named that way is redacted
/// without being listed here; list the others. A key naming a *file* that holds a secret
/// (`tls.key`, `hsm.pin_file`) is not a secret: its path is shown, never its contents.
pub const SECRET_KEYS: &[&str] = &["dispatch.sms.password", "dispatch.sms.dlr_token"];

/// Whether the value of the key at `path` (`dispatch.sms.password`) is a secret: listed in
/// [`SECRET_KEYS`], or named like one (`…password`, `…token`, `…secret`, as the whole last
/// part or after an `_`).
pub fn is_secret_key(path: &str) -> bool {
    let name = path.rsplit('.').next().unwrap_or(path);
    SECRET_KEYS.contains(&path)
        || ["password", "token", "secret"]
            .iter()
            .any(|s| name == *s || name.ends_with(&format!("_{s}")))
}

/// The service configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory of the HSM state and, later, the store.
    pub data_dir: Option<PathBuf>,
    /// Address and port of the HTTP listener.
    pub listen: SocketAddr,
    /// Certificate and key of the listener; without them only loopback addresses are allowed.
    pub tls: Option<TlsFiles>,
    /// Logging.
    pub log: LogConfig,
    /// Lengths of PINs and PUKs.
    pub codes: CodesConfig,
    /// The audit chain.
    pub audit: AuditConfig,
    /// Rate limits.
    pub limits: LimitsConfig,
    /// Batch imports and generation.
    pub import: ImportConfig,
    /// Holder registry files.
    pub registry: RegistryConfig,
    /// Print runs and the counter's page.
    pub mailers: MailersConfig,
    /// The embedded store.
    pub store: StoreConfig,
    /// Key ceremonies.
    pub keys: KeysConfig,
    /// The browser console: sessions, lockout, second factor.
    pub console: ConsoleConfig,
    /// Which HSM holds the keys: the simulator in the data directory, or a PKCS#11 token.
    pub hsm: HsmConfig,
    /// Delivery of codes by e-mail and SMS (the outbox's workers); without it no worker runs,
    /// except under `serve --dev`, which spools messages in clear (insecure).
    pub dispatch: Option<DispatchConfig>,
    /// Backups (`plico backup`): who they are sealed to.
    pub backup: BackupConfig,
    /// Who may scrape `/metrics`.
    pub metrics: MetricsConfig,
}

/// The `[backup]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// The age X25519 recipient (`age1…`) backups are sealed to; its identity is kept offline
    /// and is needed by `plico restore`. Without it `plico backup` is refused.
    pub recipient: Option<String>,
}

/// The `[metrics]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A file (one line, mode 0600) holding the scrape token `GET /metrics` requires as a
    /// bearer token. Without it `/metrics` answers 401 to everyone.
    pub token_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: None,
            listen: DEFAULT_LISTEN,
            tls: None,
            log: LogConfig::default(),
            codes: CodesConfig::default(),
            audit: AuditConfig::default(),
            limits: LimitsConfig::default(),
            import: ImportConfig::default(),
            registry: RegistryConfig::default(),
            mailers: MailersConfig::default(),
            store: StoreConfig::default(),
            keys: KeysConfig::default(),
            console: ConsoleConfig::default(),
            hsm: HsmConfig::default(),
            dispatch: None,
            backup: BackupConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// Which implementation of the HSM the service uses (`[hsm] kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HsmKind {
    /// The simulated HSM, its state file in the data directory (the default).
    #[default]
    Sim,
    /// A PKCS#11 token (`module`, `token_label`).
    Pkcs11,
}

/// The `[hsm]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HsmConfig {
    /// `sim` (default) or `pkcs11`.
    pub kind: HsmKind,
    /// The PKCS#11 module (`kind = "pkcs11"`), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: Option<PathBuf>,
    /// The token's label (`kind = "pkcs11"`): tokens are found by label, never by slot id.
    pub token_label: Option<String>,
    /// The mechanism that means RFC 5649 on this token: `pad` (`CKM_AES_KEY_WRAP_PAD`,
    /// 0x210A, SoftHSM2; the default), `kwp` (`CKM_AES_KEY_WRAP_KWP`, 0x210B, PKCS#11 3.x) or
    /// a vendor number such as `0x80000171`.
    pub mechanism: Option<String>,
    /// INSECURE, opt-in auto-unseal (`kind = "pkcs11"`): a file (mode 0600 or stricter) holding
    /// the token's user PIN, so the service unseals itself at start without the custodians.
    /// Whoever can read the file (or a backup of it) can use every key: the HSM and the file's
    /// protection become the only guard. See docs/keys.md.
    pub pin_file: Option<PathBuf>,
}

impl HsmConfig {
    /// The token's settings for `kind = "pkcs11"`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the missing or invalid field.
    pub fn pkcs11(&self) -> Result<hsm_pkcs11::Pkcs11Config, ConfigError> {
        let module = self.module.clone().ok_or_else(|| {
            ConfigError("[hsm]: kind = \"pkcs11\" needs `module` (the PKCS#11 library)".into())
        })?;
        let token_label = self
            .token_label
            .clone()
            .ok_or_else(|| ConfigError("[hsm]: kind = \"pkcs11\" needs `token_label`".into()))?;
        let mechanism = match &self.mechanism {
            Some(m) => m
                .parse::<hsm_pkcs11::WrapMechanism>()
                .map_err(|e| ConfigError(format!("[hsm]: `mechanism`: {e}")))?,
            None => hsm_pkcs11::WrapMechanism::default(),
        };
        Ok(hsm_pkcs11::Pkcs11Config {
            module,
            token_label,
            mechanism,
        })
    }
}

/// The `[keys]` table: key ceremonies under dual control.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Seconds a key proposal waits for a second officer's approval before it lapses (default
    /// 8 hours); at least 1.
    pub approval_window_secs: u64,
    /// Where the new custodian shares of a rekey are written, one file each, in a folder named
    /// after the proposal. Not the data directory (outside `--dev`); without it rekeys are
    /// refused. `serve --dev` defaults to `DATA_DIR/rekey-shares`.
    pub rekey_share_dir: Option<PathBuf>,
    /// Data keys rewrapped per store write of a key job (default 256); at least 1.
    pub rewrap_chunk: usize,
    /// Pause after each rewrap chunk, in ms (default 0), to leave the HSM to delivery while a
    /// large keyring is rewrapped.
    pub rewrap_pause_ms: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            approval_window_secs: vault::DEFAULT_WINDOW_MS / 1000,
            rekey_share_dir: None,
            rewrap_chunk: crate::DEFAULT_REWRAP_CHUNK,
            rewrap_pause_ms: 0,
        }
    }
}

/// The `[console]` table: the browser console's sessions, lockout and second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// A session ends after this many minutes without a request (default 15); at least 1.
    pub idle_minutes: u64,
    /// A session ends this many hours after login, whatever happens (default 8); at least 1,
    /// and not shorter than `idle_minutes`.
    pub absolute_hours: u64,
    /// Failed logins in a row (wrong passwords and wrong second-factor codes) that lock an
    /// account (default 5); at least 1.
    pub lockout_failures: u32,
    /// Minutes a locked account stays locked (default 15); at least 1.
    pub lockout_minutes: u64,
    /// Every console account must log in with a TOTP code: one without a second factor is
    /// sent to enrolment right after its password and can do nothing else (default false;
    /// accounts that enrolled give a code either way).
    pub require_totp: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        let d = crate::console::ConsoleSettings::default();
        ConsoleConfig {
            idle_minutes: d.idle.as_secs() / 60,
            absolute_hours: d.absolute.as_secs() / 3600,
            lockout_failures: d.max_failures,
            lockout_minutes: d.lockout.as_secs() / 60,
            require_totp: d.require_totp,
        }
    }
}

impl ConsoleConfig {
    /// The console's settings (cookies not `Secure`: the listener decides that).
    pub fn settings(&self) -> crate::console::ConsoleSettings {
        let minutes = |m: u64| std::time::Duration::from_secs(m.max(1).saturating_mul(60));
        crate::console::ConsoleSettings {
            idle: minutes(self.idle_minutes),
            absolute: minutes(self.absolute_hours.saturating_mul(60)),
            max_failures: self.lockout_failures.max(1),
            lockout: minutes(self.lockout_minutes),
            require_totp: self.require_totp,
            ..crate::console::ConsoleSettings::default()
        }
    }

    /// The first problem of this table, if any.
    fn problem(&self) -> Option<String> {
        let zero = [
            ("idle_minutes", self.idle_minutes),
            ("absolute_hours", self.absolute_hours),
            ("lockout_failures", u64::from(self.lockout_failures)),
            ("lockout_minutes", self.lockout_minutes),
        ]
        .into_iter()
        .find(|(_, v)| *v == 0);
        if let Some((key, _)) = zero {
            return Some(format!("`{key}` must be at least 1"));
        }
        if self.idle_minutes > self.absolute_hours.saturating_mul(60) {
            return Some(format!(
                "`idle_minutes` ({}) must not exceed `absolute_hours` ({}) in minutes",
                self.idle_minutes, self.absolute_hours
            ));
        }
        None
    }
}

/// The `[store]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// sled's page cache in MiB (sled's default, 1024, when not set); at least 64. Give it room
    /// for the registry when printing millions of mailers: with 1.25 M holders a print run ran
    /// at 46.6 k mailers/s with the default and 57.6 k/s with 4096 (`plico-bench mailers`).
    pub cache_mib: Option<u64>,
}

/// The `[dispatch]` table: the couriers and the workers of the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Whether e-mail jobs are sent (needs `[dispatch.smtp]`, or the spool).
    pub email_enabled: bool,
    /// Whether SMS jobs are sent (needs `[dispatch.sms]`, or the spool).
    pub sms_enabled: bool,
    /// The SMTP relay.
    pub smtp: Option<SmtpSection>,
    /// The Kannel gateway.
    pub sms: Option<SmsSection>,
    /// `serve --dev` only: write messages, codes in clear, to this directory instead of
    /// sending them (INSECURE). Default with `--dev` and no relay: `DATA_DIR/spool`.
    pub spool_dir: Option<PathBuf>,
    /// E-mails sent per second at most.
    pub email_per_second: u32,
    /// SMS sent per second at most.
    pub sms_per_second: u32,
    /// Jobs of one channel being sent at once.
    pub max_in_flight: usize,
    /// Attempts of a job before it is `dead`.
    pub max_attempts: u32,
    /// First retry delay, in ms; doubles each attempt (with jitter).
    pub backoff_base_ms: u64,
    /// Largest retry delay, in ms.
    pub backoff_cap_ms: u64,
    /// A part not delivered after this many seconds is logged as overdue.
    pub overdue_after_secs: u64,
    /// First pause of a channel's lane after a relay-wide failure (TLS, login, connection,
    /// gateway credentials), in ms; doubles with each such failure in a row.
    pub pause_base_ms: u64,
    /// Longest pause of a lane, in ms; at least `pause_base_ms`.
    pub pause_cap_ms: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        let policy = cards::OutboxPolicy::default();
        DispatchConfig {
            email_enabled: true,
            sms_enabled: true,
            smtp: None,
            sms: None,
            spool_dir: None,
            email_per_second: 50,
            sms_per_second: 20,
            max_in_flight: 16,
            max_attempts: policy.max_attempts,
            backoff_base_ms: policy.backoff_base_ms,
            backoff_cap_ms: policy.backoff_max_ms,
            overdue_after_secs: 86_400,
            pause_base_ms: crate::delivery::DEFAULT_PAUSE_BASE.as_secs() * 1000,
            pause_cap_ms: crate::delivery::DEFAULT_PAUSE_CAP.as_secs() * 1000,
        }
    }
}

/// How the connection to the SMTP relay is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// No TLS: codes in clear on the wire. Loopback relays only.
    None,
    /// STARTTLS after the greeting (ports 25, 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// The `[dispatch.smtp]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSection {
    /// Relay host.
    pub host: String,
    /// Relay port.
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// `none`, `starttls` or `tls`.
    #[serde(default)]
    pub tls: SmtpTls,
    /// Envelope and header sender.
    pub from: String,
    /// Connections to the relay at most.
    #[serde(default = "default_smtp_connections")]
    pub max_connections: usize,
    /// PEM file of one or more CA certificates trusted for the relay, in addition to the
    /// public (webpki) roots: a relay with a certificate from a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Login for `AUTH PLAIN`/`LOGIN` (only over TLS); needs `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the login's password (read at start; one line; never inline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Name given in `EHLO`; default: the domain of `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ehlo_name: Option<String>,
    /// Envelope sender (`MAIL FROM`), where bounces go; default: `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_path: Option<String>,
    /// Allows `tls = "none"` to a relay that is not on loopback: codes cross the network in
    /// clear (INSECURE). Default false: refused at start.
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure_plaintext_to_remote: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl SmtpSection {
    /// Whether `host` is a loopback name or address (`localhost`, `127.0.0.0/8`, `::1`).
    pub fn host_is_loopback(&self) -> bool {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// The first problem of the table's combinations, naming the key.
    fn problem(&self) -> Option<String> {
        if self.tls == SmtpTls::None
            && !self.host_is_loopback()
            && !self.insecure_plaintext_to_remote
        {
            return Some(format!(
                "`tls = \"none\"` sends codes in clear and is allowed only for a relay on \
                 loopback, not `host = \"{}\"`; use tls = \"starttls\" or \"tls\" (with \
                 `ca_file` for a private CA), or set `insecure_plaintext_to_remote = true`",
                self.host.escape_debug()
            ));
        }
        match (&self.username, &self.password_file) {
            (Some(_), None) => return Some("`username` needs `password_file`".into()),
            (None, Some(_)) => return Some("`password_file` needs `username`".into()),
            (Some(_), Some(_)) if self.tls == SmtpTls::None => {
                return Some(
                    "`username` needs tls = \"starttls\" or \"tls\": AUTH would send the \
                     password in clear"
                        .into(),
                )
            }
            _ => {}
        }
        None
    }
}

fn default_smtp_port() -> u16 {
    587
}

fn default_smtp_connections() -> usize {
    8
}

/// The `[dispatch.sms]` table: Kannel's `sendsms` interface and its delivery reports.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsSection {
    /// The smsbox's sendsms URL (`http://` on loopback, `https://` across a network).
    pub sendsms_url: String,
    /// PEM file of one or more CA certificates trusted for an `https` `sendsms_url` in
    /// addition to the public (webpki) roots: a gateway whose certificate comes from a
    /// private CA. Only with an `https` URL.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A `sendsms-user`.
    pub username: String,
    /// Its password.
    pub password: String,
    /// Sender shown to the holder.
    pub from: String,
    /// Where Kannel sends delivery reports: plico's `/v1/dlr`, with `%KEY%` (the job's key),
    /// `%d` (Kannel's status) and this table's `dlr_token`, e.g.
    /// `https://plico:8200/v1/dlr?token=TOKEN&key=%KEY%&status=%d`.
    pub dlr_url: Option<String>,
    /// The secret `/v1/dlr` requires (`token=` in its query); without it `/v1/dlr` answers 401.
    pub dlr_token: Option<String>,
}

impl std::fmt::Debug for SmsSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsSection")
            .field("sendsms_url", &self.sendsms_url)
            .field("ca_file", &self.ca_file)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("from", &self.from)
            .field("dlr_url", &self.dlr_url.as_ref().map(|_| "<set>"))
            .field("dlr_token", &self.dlr_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Mailers a print file when nothing says otherwise.
pub const DEFAULT_MAILERS_PER_FILE: usize = 10_000;

/// The `[mailers]` table: how print files are made and whom they are sealed to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailersConfig {
    /// Directory of the sealed print files and their manifests; default `DATA_DIR/print`.
    pub out_dir: Option<PathBuf>,
    /// The print facility's age x25519 recipients (`age1…`); every print file is sealed to
    /// all of them. In the environment: one variable, comma-separated. Without any, print runs
    /// are refused (`serve --dev` makes a development identity instead).
    #[serde(deserialize_with = "list_or_commas")]
    pub recipients: Vec<String>,
    /// Mailers a print file; at least 1.
    pub per_file: usize,
    /// A directory of templates replacing the built-in ones of the same name.
    pub templates_dir: Option<PathBuf>,
    /// The issuer's texts.
    pub issuer: dispatch::Issuer,
    /// The page layout.
    pub layout: dispatch::Layout,
}

impl Default for MailersConfig {
    fn default() -> Self {
        MailersConfig {
            out_dir: None,
            recipients: Vec::new(),
            per_file: DEFAULT_MAILERS_PER_FILE,
            templates_dir: None,
            issuer: dispatch::Issuer::default(),
            layout: dispatch::Layout::default(),
        }
    }
}

/// A list of strings, or one string of comma-separated items (as an environment variable
/// gives it); blank items are dropped.
fn list_or_commas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Text(String),
    }
    let items = match Either::deserialize(d)? {
        Either::List(l) => l,
        Either::Text(t) => t.split(',').map(str::to_owned).collect(),
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

impl MailersConfig {
    /// The print setup these settings describe, with `data_dir` for the default output
    /// directory and `recipients` replacing the configured ones when given (the `--dev`
    /// identity). Loads the templates.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `[mailers] templates_dir` for templates that do not load.
    pub fn print_setup(
        &self,
        data_dir: &Path,
        recipients: Option<Vec<String>>,
    ) -> Result<crate::mailers::PrintSetup, ConfigError> {
        let templates = dispatch::Templates::load(self.templates_dir.as_deref()).map_err(|e| {
            ConfigError(format!(
                "[mailers]: `templates_dir` {}: {e}",
                self.templates_dir
                    .as_deref()
                    .map_or_else(|| "(built-in)".to_owned(), |d| d.display().to_string())
            ))
        })?;
        Ok(crate::mailers::PrintSetup {
            templates: std::sync::Arc::new(templates),
            layout: self.layout.clone(),
            issuer: self.issuer.clone(),
            out_dir: self
                .out_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("print")),
            recipients: recipients.unwrap_or_else(|| self.recipients.clone()),
            per_file: self.per_file.max(1),
        })
    }
}

/// The `[registry]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Largest holder registry file accepted, in bytes; at least 1. Checked against
    /// `Content-Length` and again while streaming. A registry file is applied in one store
    /// transaction, so its parsed entries are held in memory: keep this bounded.
    pub max_upload_bytes: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            max_upload_bytes: crate::DEFAULT_REGISTRY_MAX_UPLOAD_BYTES,
        }
    }
}

/// The `[import]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportConfig {
    /// Largest batch file accepted, in bytes (as sent, so age-encrypted files count with their
    /// overhead); at least 1. Checked against `Content-Length` and again while streaming.
    pub max_upload_bytes: u64,
    /// Imports and generations running at once; more get `503 busy`. At least 1.
    pub max_concurrent: u32,
    /// The shape of card serials, for imports and generation.
    pub serial: SerialConfig,
}

impl Default for ImportConfig {
    fn default() -> Self {
        ImportConfig {
            max_upload_bytes: crate::DEFAULT_MAX_UPLOAD_BYTES,
            max_concurrent: crate::DEFAULT_MAX_CONCURRENT_IMPORTS,
            serial: SerialConfig::default(),
        }
    }
}

/// The `[import.serial]` table: a [`SerialRule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Fewest characters.
    pub min_len: u8,
    /// Most characters (at most 64).
    pub max_len: u8,
    /// `digits`, or `upper_alnum` (A-Z and 0-9; `alphanumeric` is accepted too).
    pub charset: CharsetConfig,
}

/// `[import.serial] charset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CharsetConfig {
    /// ASCII digits.
    Digits,
    /// Upper-case ASCII letters and digits.
    #[serde(alias = "alphanumeric")]
    UpperAlnum,
}

impl Default for SerialConfig {
    fn default() -> Self {
        let cns = SerialRule::CNS;
        SerialConfig {
            min_len: cns.min_len,
            max_len: cns.max_len,
            charset: match cns.charset {
                SerialCharset::Digits => CharsetConfig::Digits,
                SerialCharset::UpperAlnum => CharsetConfig::UpperAlnum,
            },
        }
    }
}

impl SerialConfig {
    /// The rule this table describes (not yet validated).
    pub fn rule(&self) -> SerialRule {
        SerialRule {
            min_len: self.min_len,
            max_len: self.max_len,
            charset: match self.charset {
                CharsetConfig::Digits => SerialCharset::Digits,
                CharsetConfig::UpperAlnum => SerialCharset::UpperAlnum,
            },
        }
    }
}

/// The `[audit]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Events between MAC'd checkpoints (a checkpoint is also written at shutdown); at least 1.
    pub checkpoint_every: u64,
    /// Days an audit event is kept at least; a prune never removes younger ones. At least 1.
    pub retention_days: u32,
    /// The audit stream for a SIEM ([`crate::audit_stream`]); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<AuditStreamConfig>,
}

/// The `[audit.stream]` table: exactly one of `file` and `syslog`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditStreamConfig {
    /// A file every committed event is appended to, one JSON line each (created 0600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// RFC 5424 syslog: `unix:PATH` (a datagram socket such as `unix:/dev/log`) or
    /// `udp:HOST:PORT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syslog: Option<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_every: vault::DEFAULT_CHECKPOINT_EVERY,
            retention_days: crate::DEFAULT_RETENTION_DAYS,
            stream: None,
        }
    }
}

/// The `[limits]` table: rates, and the listener's connection caps and deadlines
/// ([`crate::edge`]). Every value must be at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Calls per minute and account on sensitive routes (those that reveal tokens or codes).
    pub sensitive_per_minute: u32,
    /// Longest TLS handshake, in seconds.
    pub handshake_timeout_secs: u64,
    /// Longest wait for a whole request head, in seconds.
    pub request_head_timeout_secs: u64,
    /// Longest silence of a kept-alive connection, in seconds.
    pub idle_timeout_secs: u64,
    /// Connections at once (lowered at start to fit the limit of open files).
    pub max_connections: u32,
    /// Connections at once from one client address.
    pub max_connections_per_address: u32,
    /// Connections beyond `max_connections` that serve only the probes, `/metrics` and
    /// `/v1/sys/*`.
    pub reserved_connections: u32,
    /// Least request body rate, in bytes a second, over each window of waiting.
    pub min_body_bytes_per_sec: u32,
    /// The window of the body rate, in seconds.
    pub body_rate_window_secs: u64,
    /// Unseal submissions a minute from one client address.
    pub unseal_per_minute_per_address: u32,
    /// Unseal submissions a minute from everyone together.
    pub unseal_per_minute: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let edge = crate::edge::EdgeLimits::default();
        let unseal = crate::api::UnsealLimits::default();
        LimitsConfig {
            sensitive_per_minute: crate::DEFAULT_SENSITIVE_PER_MINUTE.get(),
            handshake_timeout_secs: edge.handshake_timeout.as_secs(),
            request_head_timeout_secs: edge.head_timeout.as_secs(),
            idle_timeout_secs: edge.idle_timeout.as_secs(),
            max_connections: edge.max_connections,
            max_connections_per_address: edge.max_connections_per_address,
            reserved_connections: edge.reserved_connections,
            min_body_bytes_per_sec: edge.min_body_bytes_per_sec,
            body_rate_window_secs: edge.body_rate_window.as_secs(),
            unseal_per_minute_per_address: unseal.per_address_per_minute.get(),
            unseal_per_minute: unseal.per_minute.get(),
        }
    }
}

impl LimitsConfig {
    /// The names of the keys that are 0 (each must be at least 1).
    fn zeros(&self) -> Vec<&'static str> {
        let l = self;
        [
            ("sensitive_per_minute", u64::from(l.sensitive_per_minute)),
            ("handshake_timeout_secs", l.handshake_timeout_secs),
            ("request_head_timeout_secs", l.request_head_timeout_secs),
            ("idle_timeout_secs", l.idle_timeout_secs),
            ("max_connections", u64::from(l.max_connections)),
            (
                "max_connections_per_address",
                u64::from(l.max_connections_per_address),
            ),
            ("reserved_connections", u64::from(l.reserved_connections)),
            (
                "min_body_bytes_per_sec",
                u64::from(l.min_body_bytes_per_sec),
            ),
            ("body_rate_window_secs", l.body_rate_window_secs),
            (
                "unseal_per_minute_per_address",
                u64::from(l.unseal_per_minute_per_address),
            ),
            ("unseal_per_minute", u64::from(l.unseal_per_minute)),
        ]
        .into_iter()
        .filter(|(_, v)| *v == 0)
        .map(|(k, _)| k)
        .collect()
    }

    /// The listener's limits.
    pub fn edge(&self) -> crate::edge::EdgeLimits {
        let secs = |s: u64| std::time::Duration::from_secs(s.max(1));
        crate::edge::EdgeLimits {
            handshake_timeout: secs(self.handshake_timeout_secs),
            head_timeout: secs(self.request_head_timeout_secs),
            idle_timeout: secs(self.idle_timeout_secs),
            max_connections: self.max_connections.max(1),
            max_connections_per_address: self.max_connections_per_address.max(1),
            reserved_connections: self.reserved_connections.max(1),
            min_body_bytes_per_sec: self.min_body_bytes_per_sec.max(1),
            body_rate_window: secs(self.body_rate_window_secs),
        }
    }

    /// The unseal route's limits.
    pub fn unseal(&self) -> crate::api::UnsealLimits {
        let d = crate::api::UnsealLimits::default();
        crate::api::UnsealLimits {
            per_address_per_minute: std::num::NonZeroU32::new(self.unseal_per_minute_per_address)
                .unwrap_or(d.per_address_per_minute),
            per_minute: std::num::NonZeroU32::new(self.unseal_per_minute).unwrap_or(d.per_minute),
        }
    }
}

/// The `[tls]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// The `[log]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Output format.
    #[serde(default)]
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// The `[codes]` table: inclusive digit counts, turned into a [`CodePolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodesConfig {
    /// Fewest PIN digits.
    pub pin_min: u8,
    /// Most PIN digits.
    pub pin_max: u8,
    /// Fewest PUK digits.
    pub puk_min: u8,
    /// Most PUK digits.
    pub puk_max: u8,
}

impl Default for CodesConfig {
    fn default() -> Self {
        let cns = CodePolicy::CNS;
        CodesConfig {
            pin_min: cns.pin.min,
            pin_max: cns.pin.max,
            puk_min: cns.puk.min,
            puk_max: cns.puk.max,
        }
    }
}

impl CodesConfig {
    /// The policy these bounds describe (not yet validated).
    pub fn policy(&self) -> CodePolicy {
        CodePolicy {
            pin: LengthBounds {
                min: self.pin_min,
                max: self.pin_max,
            },
            puk: LengthBounds {
                min: self.puk_min,
                max: self.puk_max,
            },
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    /// The key the error is about, as a path (`codes.pin_min`, `dispatch.sms.dlr_token`), or
    /// only its table (`codes`) when the error is about a combination in it; `None` when it
    /// names no key (a missing file, a TOML syntax error). Read from the message, whose two
    /// shapes are made in this file: figment's ``field `a.b`: …`` (an unknown key is named in
    /// its ``unknown field `k` `` text) and [`Config::validate`]'s ``[table]: `key` …``.
    pub fn key(&self) -> Option<String> {
        let text = self.0.as_str();
        let quoted = |s: &str| -> Option<String> {
            let start = s.find('`')? + 1;
            let len = s[start..].find('`')?;
            Some(s[start..start + len].to_owned())
        };
        if let Some(at) = text.find("field `") {
            let field = quoted(&text[at..])?;
            let rest = &text[at + field.len() + 8..];
            return match rest.find("unknown field `").map(|i| quoted(&rest[i..])) {
                Some(Some(unknown)) if field.is_empty() => Some(unknown),
                Some(Some(unknown)) => Some(format!("{field}.{unknown}")),
                _ => Some(field),
            };
        }
        if let Some(at) = text.find("unknown field `") {
            return quoted(&text[at..]);
        }
        let open = text.find(": [")? + 3;
        let len = text[open..].find(']')?;
        let table = &text[open..open + len];
        let after = &text[open + len + 1..];
        match after.strip_prefix(": `").and_then(|_| quoted(after)) {
            Some(key) => Some(format!("{table}.{key}")),
            None => Some(table.to_owned()),
        }
    }
}

impl Config {
    /// Reads the defaults, then `file` if given, then the environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file or variable and the field: a missing file, a TOML
    /// syntax error, an unknown key, a value of the wrong type, or an invalid combination
    /// (see [`Config::validate`]).
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, Env::prefixed("PLICO_"))
    }

    fn load_from(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let config = Self::extract(file, env)?.map_err(|e| describe(e, file))?;
        config.validate(file)?;
        Ok(config)
    }

    /// Defaults, the file and the environment, extracted: the outer error for a missing file,
    /// the inner one figment's. Every environment value starts as text; one whose key refuses
    /// text (a number, a boolean) is read again as figment reads a value (`7`, `true`), and
    /// the extraction repeated: at most once per variable.
    fn extract(
        file: Option<&Path>,
        env: Env,
    ) -> Result<Result<Config, figment::Error>, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError(format!(
                    "config file {}: no such file",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let env = env.filter_map(|key| {
            ENV_VARS
                .iter()
                .find(|(var, _)| {
                    var.strip_prefix("PLICO_")
                        .is_some_and(|v| v.eq_ignore_ascii_case(key.as_str()))
                })
                .map(|(_, path)| (*path).into())
        });
        let mut env = EnvText {
            env,
            typed: std::collections::BTreeSet::new(),
        };
        loop {
            let errors = match figment.clone().merge(env.clone()).extract::<Config>() {
                Ok(config) => return Ok(Ok(config)),
                Err(errors) => errors,
            };
            let retry = errors.clone().into_iter().find_map(|e| {
                let from_env = e
                    .metadata
                    .as_ref()
                    .is_some_and(|m| m.name.contains("environment"));
                let text_refused = matches!(
                    e.kind,
                    figment::error::Kind::InvalidType(figment::error::Actual::Str(_), _)
                );
                let path = e.path.join(".");
                (from_env && text_refused && !env.typed.contains(&path)).then_some(path)
            });
            match retry {
                Some(path) => {
                    env.typed.insert(path);
                }
                None => return Ok(Err(errors)),
            }
        }
    }

    /// Checks combinations that types cannot: the code policy's and the serial rule's bounds,
    /// the import limits, and that `[tls]` has both files or neither.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the table and field.
    pub fn validate(&self, file: Option<&Path>) -> Result<(), ConfigError> {
        let origin = origin(file);
        self.codes
            .policy()
            .validate()
            .map_err(|e| ConfigError(format!("{origin}: [codes]: {e}")))?;
        if self.store.cache_mib.is_some_and(|m| m < 64) {
            return Err(ConfigError(format!(
                "{origin}: [store]: `cache_mib` must be at least 64"
            )));
        }
        if self.audit.checkpoint_every == 0 {
            return Err(ConfigError(format!(
                "{origin}: [audit]: `checkpoint_every` must be at least 1"
            )));
        }
        if self.audit.retention_days == 0 {
            return Err(ConfigError(format!(
                "{origin}: [audit]: `retention_days` must be at least 1"
            )));
        }
        self.import
            .serial
            .rule()
            .validate()
            .map_err(|e| ConfigError(format!("{origin}: [import.serial]: {e}")))?;
        if self.import.max_upload_bytes == 0 {
            return Err(ConfigError(format!(
                "{origin}: [import]: `max_upload_bytes` must be at least 1"
            )));
        }
        if self.registry.max_upload_bytes == 0 {
            return Err(ConfigError(format!(
                "{origin}: [registry]: `max_upload_bytes` must be at least 1"
            )));
        }
        if self.import.max_concurrent == 0 {
            return Err(ConfigError(format!(
                "{origin}: [import]: `max_concurrent` must be at least 1"
            )));
        }
        if let Some(key) = self.limits.zeros().first() {
            return Err(ConfigError(format!(
                "{origin}: [limits]: `{key}` must be at least 1"
            )));
        }
        match self.hsm.kind {
            HsmKind::Pkcs11 => {
                self.hsm
                    .pkcs11()
                    .map_err(|e| ConfigError(format!("{origin}: {}", e.0)))?;
            }
            HsmKind::Sim => {
                if self.hsm.module.is_some()
                    || self.hsm.token_label.is_some()
                    || self.hsm.mechanism.is_some()
                    || self.hsm.pin_file.is_some()
                {
                    return Err(ConfigError(format!(
                        "{origin}: [hsm]: `module`, `token_label`, `mechanism` and `pin_file` \
                         apply to kind = \"pkcs11\" only"
                    )));
                }
            }
        }
        if let Some(p) = self.console.problem() {
            return Err(ConfigError(format!("{origin}: [console]: {p}")));
        }
        if self.keys.approval_window_secs == 0 || self.keys.rewrap_chunk == 0 {
            return Err(ConfigError(format!(
                "{origin}: [keys]: `approval_window_secs` and `rewrap_chunk` must be at least 1"
            )));
        }
        if self.mailers.per_file == 0 {
            return Err(ConfigError(format!(
                "{origin}: [mailers]: `per_file` must be at least 1"
            )));
        }
        if let Some(stream) = &self.audit.stream {
            crate::audit_stream::check(stream)
                .map_err(|e| ConfigError(format!("{origin}: [audit.stream]: {e}")))?;
        }
        if let Some(r) = &self.backup.recipient {
            if r.parse::<age::x25519::Recipient>().is_err() {
                return Err(ConfigError(format!(
                    "{origin}: [backup]: `recipient` is not an age x25519 recipient (age1…)"
                )));
            }
        }
        for (i, r) in self.mailers.recipients.iter().enumerate() {
            if r.parse::<age::x25519::Recipient>().is_err() {
                return Err(ConfigError(format!(
                    "{origin}: [mailers]: `recipients` item {} (of {}) is not an age x25519 \
                     recipient (age1…)",
                    i + 1,
                    self.mailers.recipients.len()
                )));
            }
        }
        if let Some(d) = &self.dispatch {
            if d.max_in_flight == 0 || d.email_per_second == 0 || d.sms_per_second == 0 {
                return Err(ConfigError(format!(
                    "{origin}: [dispatch]: `max_in_flight`, `email_per_second` and \
                     `sms_per_second` must be at least 1"
                )));
            }
            if d.max_attempts == 0 || d.backoff_base_ms == 0 || d.backoff_cap_ms < d.backoff_base_ms
            {
                return Err(ConfigError(format!(
                    "{origin}: [dispatch]: `max_attempts` and `backoff_base_ms` must be at least \
                     1, and `backoff_cap_ms` at least `backoff_base_ms`"
                )));
            }
            if d.pause_base_ms == 0 || d.pause_cap_ms < d.pause_base_ms {
                return Err(ConfigError(format!(
                    "{origin}: [dispatch]: `pause_base_ms` must be at least 1, and \
                     `pause_cap_ms` at least `pause_base_ms`"
                )));
            }
            if let Some(p) = d.smtp.as_ref().and_then(SmtpSection::problem) {
                return Err(ConfigError(format!("{origin}: [dispatch.smtp]: {p}")));
            }
            if let Some(sms) = &d.sms {
                if sms.dlr_token.as_ref().is_some_and(|t| t.len() < 22) {
                    return Err(ConfigError(format!(
                        "{origin}: [dispatch.sms]: `dlr_token` must be at least 22 characters \
                         (128 random bits)"
                    )));
                }
                if sms
                    .dlr_url
                    .as_ref()
                    .is_some_and(|u| !u.contains("%KEY%") || !u.contains("%d"))
                {
                    return Err(ConfigError(format!(
                        "{origin}: [dispatch.sms]: `dlr_url` must contain %KEY% and %d"
                    )));
                }
                if sms.ca_file.is_some() && !sms.sendsms_url.starts_with("https://") {
                    return Err(ConfigError(format!(
                        "{origin}: [dispatch.sms]: `ca_file` needs an https `sendsms_url`"
                    )));
                }
            }
        }
        if let Some(tls) = &self.tls {
            match (&tls.cert, &tls.key) {
                (Some(_), Some(_)) | (None, None) => {}
                (Some(_), None) => {
                    return Err(ConfigError(format!(
                        "{origin}: [tls]: `cert` is set but `key` is missing"
                    )))
                }
                (None, Some(_)) => {
                    return Err(ConfigError(format!(
                        "{origin}: [tls]: `key` is set but `cert` is missing"
                    )))
                }
            }
        }
        Ok(())
    }

    /// The validated code policy.
    pub fn code_policy(&self) -> CodePolicy {
        self.codes.policy()
    }

    /// The settings of the service's state.
    pub fn settings(&self) -> crate::Settings {
        crate::Settings {
            codes: self.code_policy(),
            checkpoint_every: self.audit.checkpoint_every.max(1),
            retention_days: self.audit.retention_days.max(1),
            sensitive_per_minute: std::num::NonZeroU32::new(self.limits.sensitive_per_minute)
                .unwrap_or(crate::DEFAULT_SENSITIVE_PER_MINUTE),
            serial: self.import.serial.rule(),
            max_upload_bytes: self.import.max_upload_bytes.max(1),
            max_concurrent_imports: self.import.max_concurrent.max(1),
            registry_max_upload_bytes: self.registry.max_upload_bytes.max(1),
            key_approval_window_ms: self.keys.approval_window_secs.max(1).saturating_mul(1000),
            rewrap_chunk: self.keys.rewrap_chunk.max(1),
            rewrap_pause_ms: self.keys.rewrap_pause_ms,
            edge: self.limits.edge(),
            unseal: self.limits.unseal(),
        }
    }

    /// The certificate and key paths, when both are configured.
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        let tls = self.tls.as_ref()?;
        Some((tls.cert.as_deref()?, tls.key.as_deref()?))
    }
}

/// The `PLICO_*` environment with every value as text, but for the keys in `typed`, read as
/// figment's [`Env`] provider reads every value (it guesses a type: `12345678` becomes a
/// number, which a text key then refuses). [`Config::extract`] fills `typed` with the keys
/// that refuse text.
#[derive(Clone)]
struct EnvText {
    env: Env,
    typed: std::collections::BTreeSet<String>,
}

impl figment::Provider for EnvText {
    fn metadata(&self) -> figment::Metadata {
        self.env.metadata()
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (key, text) in self.env.iter() {
            let value = if self.typed.contains(key.as_str()) {
                text.parse::<figment::value::Value>()
                    .unwrap_or_else(|never| match never {})
            } else {
                figment::value::Value::from(text)
            };
            if let figment::value::Value::Dict(_, nested) = figment::util::nest(key.as_str(), value)
            {
                merge_dict(&mut dict, nested);
            }
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// Merges `other` into `dict`, tables key by key.
fn merge_dict(dict: &mut figment::value::Dict, other: figment::value::Dict) {
    for (k, v) in other {
        match (dict.get_mut(&k), v) {
            (
                Some(figment::value::Value::Dict(_, mine)),
                figment::value::Value::Dict(_, theirs),
            ) => merge_dict(mine, theirs),
            (_, v) => {
                dict.insert(k, v);
            }
        }
    }
}

fn origin(file: Option<&Path>) -> String {
    match file {
        Some(f) => format!("config file {} (or PLICO_* environment)", f.display()),
        None => "configuration (PLICO_* environment)".to_owned(),
    }
}

/// Turns figment's errors into lines that name the source and the field.
fn describe(errors: figment::Error, file: Option<&Path>) -> ConfigError {
    let lines: Vec<String> = errors
        .into_iter()
        .map(|e| {
            let field = e.path.join(".");
            let source = match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                Some(figment::Source::File(path)) => format!("config file {}", path.display()),
                _ => match e.metadata.as_ref() {
                    Some(m) if m.name.contains("environment") => {
                        let var = ENV_VARS
                            .iter()
                            .find(|(_, path)| *path == field)
                            .map_or("a PLICO_* variable", |(var, _)| var);
                        format!("environment variable {var}")
                    }
                    _ => origin(file),
                },
            };
            // A secret of the wrong type (`password = 12345678`, unquoted) would be echoed by
            // figment's "found unsigned int `12345678`": say what was expected, not what was found.
            let kind = match &e.kind {
                figment::error::Kind::InvalidType(_, expected)
                | figment::error::Kind::InvalidValue(_, expected)
                    if is_secret_key(&field) =>
                {
                    format!("invalid value (not shown: a secret), expected {expected}")
                }
                kind => kind.to_string(),
            };
            if field.is_empty() {
                format!("{source}: {kind}")
            } else {
                format!("{source}: field `{field}`: {kind}")
            }
        })
        .collect();
    ConfigError(lines.join("\n"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn no_env() -> Env {
        Env::prefixed("PLICO_TEST_UNUSED_PREFIX_")
    }

    #[test]
    fn defaults() {
        let c = Config::load_from(None, no_env()).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.code_policy(), CodePolicy::CNS);
        assert_eq!(c.log.format, LogFormat::Plain);
        assert!(c.tls_files().is_none());
        assert_eq!(c.audit.checkpoint_every, 1000);
        assert_eq!(c.limits.sensitive_per_minute, 30);
        assert_eq!(c.settings().sensitive_per_minute.get(), 30);
    }

    #[test]
    fn audit_and_limits() {
        let f = file("[audit]\ncheckpoint_every = 10\n[limits]\nsensitive_per_minute = 5\n");
        let c = Config::load_from(Some(f.path()), no_env()).unwrap();
        assert_eq!(c.settings().checkpoint_every, 10);
        assert_eq!(c.settings().sensitive_per_minute.get(), 5);
        let f = file("[limits]\nsensitive_per_minute = 0\n");
        let e = Config::load_from(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("sensitive_per_minute"), "{e}");
    }

    #[test]
    fn connection_limits() {
        let c = Config::load_from(None, no_env()).unwrap();
        assert_eq!(c.settings().edge, crate::edge::EdgeLimits::default());
        assert_eq!(c.settings().unseal, crate::api::UnsealLimits::default());
        let f = file(
            "[limits]
idle_timeout_secs = 7
max_connections_per_address = 9
",
        );
        std::env::set_var("PLICO_T_LIMITS_LIMITS_UNSEAL_PER_MINUTE_PER_ADDRESS", "3");
        let c = Config::load_from(Some(f.path()), Env::prefixed("PLICO_T_LIMITS_")).unwrap();
        let s = c.settings();
        assert_eq!(s.edge.idle_timeout, std::time::Duration::from_secs(7));
        assert_eq!(s.edge.max_connections_per_address, 9);
        assert_eq!(s.unseal.per_address_per_minute.get(), 3);
        assert_eq!(s.edge.head_timeout, crate::edge::DEFAULT_HEAD_TIMEOUT);
        let f = file(
            "[limits]
request_head_timeout_secs = 0
",
        );
        let e = Config::load_from(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[limits]: `request_head_timeout_secs` must be at least 1"),
            "{e}"
        );
    }

    #[test]
    fn keys_table() {
        let c = Config::load_from(None, no_env()).unwrap();
        assert_eq!(c.settings().key_approval_window_ms, 8 * 60 * 60 * 1000);
        assert_eq!(c.settings().rewrap_chunk, 256);
        assert!(c.keys.rekey_share_dir.is_none());
        let f =
            file("[keys]\napproval_window_secs = 60\nrewrap_chunk = 2\nrekey_share_dir = \"/m\"\n");
        let c = Config::load_from(Some(f.path()), no_env()).unwrap();
        assert_eq!(c.settings().key_approval_window_ms, 60_000);
        assert_eq!(c.settings().rewrap_chunk, 2);
        assert_eq!(c.keys.rekey_share_dir.as_deref(), Some(Path::new("/m")));
        let f = file("[keys]\napproval_window_secs = 0\n");
        let e = Config::load_from(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("approval_window_secs"), "{e}");
    }

    #[test]
    fn console_table() {
        let c = Config::load_from(None, no_env()).unwrap();
        assert_eq!(
            c.console.settings(),
            crate::console::ConsoleSettings::default()
        );
        let f = file("[console]\nidle_minutes = 5\nlockout_failures = 3\nrequire_totp = true\n");
        std::env::set_var("PLICO_T_CONSOLE_CONSOLE_ABSOLUTE_HOURS", "2");
        std::env::set_var("PLICO_T_CONSOLE_CONSOLE_LOCKOUT_MINUTES", "30");
        let s = Config::load_from(Some(f.path()), Env::prefixed("PLICO_T_CONSOLE_"))
            .unwrap()
            .console
            .settings();
        assert_eq!(s.idle, std::time::Duration::from_secs(5 * 60));
        assert_eq!(s.absolute, std::time::Duration::from_secs(2 * 3600));
        assert_eq!(s.max_failures, 3);
        assert_eq!(s.lockout, std::time::Duration::from_secs(30 * 60));
        assert!(s.require_totp);
        for (text, key) in [
            (
                "[console]\nlockout_failures = 0\n",
                "`lockout_failures` must be at least 1",
            ),
            (
                "[console]\nidle_minutes = 0\n",
                "`idle_minutes` must be at least 1",
            ),
            (
                "[console]\nidle_minutes = 61\nabsolute_hours = 1\n",
                "`idle_minutes` (61)",
            ),
        ] {
            let e = Config::load_from(Some(file(text).path()), no_env())
                .unwrap_err()
                .to_string();
            assert!(e.contains("[console]") && e.contains(key), "{e}");
        }
        let f = file("[console]\nrequire_totp = \"yes\"\n");
        let e = Config::load_from(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("console.require_totp"), "{e}");
    }

    #[test]
    fn hsm_table() {
        let c = Config::load_from(None, no_env()).unwrap();
        assert_eq!(c.hsm.kind, HsmKind::Sim);
        let f =
            file("[hsm]\nkind = \"pkcs11\"\nmodule = \"/usr/lib/x.so\"\ntoken_label = \"t1\"\n");
        let c = Config::load_from(Some(f.path()), no_env()).unwrap();
        let p = c.hsm.pkcs11().unwrap();
        assert_eq!(p.module, Path::new("/usr/lib/x.so"));
        assert_eq!(p.token_label, "t1");
        assert_eq!(p.mechanism, hsm_pkcs11::WrapMechanism::Pad);
        std::env::set_var("PLICO_T_HSM_HSM_MECHANISM", "0x80000171");
        let c = Config::load_from(Some(f.path()), Env::prefixed("PLICO_T_HSM_")).unwrap();
        assert_eq!(
            c.hsm.pkcs11().unwrap().mechanism,
            hsm_pkcs11::WrapMechanism::Vendor(0x8000_0171)
        );
        for (text, names) in [
            ("[hsm]\nkind = \"pkcs11\"\ntoken_label = \"t\"\n", "`module`"),
            ("[hsm]\nkind = \"pkcs11\"\nmodule = \"/m.so\"\n", "`token_label`"),
            (
                "[hsm]\nkind = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"t\"\nmechanism = \"aes\"\n",
                "`mechanism`",
            ),
            ("[hsm]\nmodule = \"/m.so\"\n", "kind = \"pkcs11\" only"),
            ("[hsm]\nkind = \"luna\"\n", "kind"),
        ] {
            let f = file(text);
            let e = Config::load_from(Some(f.path()), no_env())
                .unwrap_err()
                .to_string();
            assert!(e.contains(names), "{text}: {e}");
        }
    }

    #[test]
    fn import_table() {
        let c = Config::load_from(None, no_env()).unwrap();
        assert_eq!(c.settings().serial, SerialRule::CNS);
        assert_eq!(c.settings().max_upload_bytes, 2 << 30);
        let f = file(
            "[import]\nmax_upload_bytes = 1000\n[import.serial]\nmin_len = 8\nmax_len = 12\ncharset = \"alphanumeric\"\n",
        );
        let c = Config::load_from(Some(f.path()), no_env()).unwrap();
        let s = c.settings();
        assert_eq!(s.max_upload_bytes, 1000);
        assert_eq!(
            s.serial,
            SerialRule {
                min_len: 8,
                max_len: 12,
                charset: SerialCharset::UpperAlnum
            }
        );
        let f = file("[import.serial]\nmin_len = 30\nmax_len = 20\ncharset = \"digits\"\n");
        let e = Config::load_from(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[import.serial]") && e.contains("min_len"),
            "{e}"
        );
        let f = file("[import]\nmax_upload_bytes = 0\n");
        let e = Config::load_from(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_upload_bytes"), "{e}");
    }

    #[test]
    fn registry_table() {
        let c = Config::load_from(None, no_env()).unwrap();
        assert_eq!(c.settings().registry_max_upload_bytes, 64 << 20);
        let f = file("[registry]\nmax_upload_bytes = 1000\n");
        let c = Config::load_from(Some(f.path()), no_env()).unwrap();
        assert_eq!(c.settings().registry_max_upload_bytes, 1000);
        let f = file("[registry]\nmax_upload_bytes = 0\n");
        let e = Config::load_from(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[registry]") && e.contains("max_upload_bytes"),
            "{e}"
        );
    }

    #[test]
    fn store_table() {
        let c = Config::load_from(None, no_env()).unwrap();
        assert_eq!(c.store.cache_mib, None);
        let f = file("[store]\ncache_mib = 4096\n");
        let c = Config::load_from(Some(f.path()), no_env()).unwrap();
        assert_eq!(c.store.cache_mib, Some(4096));
        let f = file("[store]\ncache_mib = 8\n");
        let e = Config::load_from(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("[store]") && e.contains("cache_mib"), "{e}");
    }

    #[test]
    fn dispatch_table() {
        let c = Config::load_from(None, no_env()).unwrap();
        assert_eq!(c.dispatch, None);
        let f = file(
            "[dispatch]\nmax_attempts = 3\nsms_per_second = 5\n\
             [dispatch.smtp]\nhost = \"relay.example.it\"\nfrom = \"pin@example.it\"\ntls = \"tls\"\nport = 465\n\
             [dispatch.sms]\nsendsms_url = \"http://127.0.0.1:13013/cgi-bin/sendsms\"\n\
             username = \"plico\"\npassword = \"pw-secret\"\nfrom = \"PLICO\"\n\
             dlr_url = \"https://plico/v1/dlr?token=T&key=%KEY%&status=%d\"\n\
             dlr_token = \"0123456789abcdef0123456789\"\n",
        );
        let c = Config::load_from(Some(f.path()), no_env()).unwrap();
        let d = c.dispatch.clone().unwrap();
        assert_eq!(
            (d.max_attempts, d.sms_per_second, d.email_per_second),
            (3, 5, 50)
        );
        let smtp = d.smtp.unwrap();
        assert_eq!(
            (smtp.port, smtp.tls, smtp.max_connections),
            (465, SmtpTls::Tls, 8)
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("pw-secret") && !shown.contains("0123456789abcdef"),
            "{shown}"
        );
        // A short token, a dlr_url without %KEY%, an unknown key: errors naming the field.
        for (bad, field) in [
            ("[dispatch.sms]\nsendsms_url = \"x\"\nusername = \"u\"\npassword = \"p\"\nfrom = \"f\"\ndlr_token = \"short\"\n", "dlr_token"),
            ("[dispatch.sms]\nsendsms_url = \"x\"\nusername = \"u\"\npassword = \"p\"\nfrom = \"f\"\ndlr_url = \"http://x/\"\n", "dlr_url"),
            ("[dispatch.sms]\nsendsms_url = \"http://k/\"\nca_file = \"/ca.pem\"\nusername = \"u\"\npassword = \"p\"\nfrom = \"f\"\n", "ca_file"),
            ("[dispatch]\nmax_in_flight = 0\n", "max_in_flight"),
            ("[dispatch]\nrate = 1\n", "rate"),
        ] {
            let e = Config::load_from(Some(file(bad).path()), no_env())
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn smtp_plaintext_to_a_remote_relay_and_a_clear_login_are_refused() {
        let base = "[dispatch.smtp]\nfrom = \"pin@example.it\"\n";
        for (extra, wanted) in [
            (
                "host = \"smtp.example.it\"\ntls = \"none\"\n",
                "insecure_plaintext_to_remote",
            ),
            ("host = \"10.9.9.9\"\ntls = \"none\"\n", "10.9.9.9"),
            (
                "host = \"127.0.0.1\"\ntls = \"none\"\nusername = \"u\"\npassword_file = \"/p\"\n",
                "`username` needs tls",
            ),
            (
                "host = \"relay\"\nusername = \"u\"\n",
                "`username` needs `password_file`",
            ),
            ("host = \"relay\"\npassword = \"inline\"\n", "password"),
        ] {
            let e = Config::load_from(Some(file(&format!("{base}{extra}")).path()), no_env())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("[dispatch.smtp]") || e.contains("dispatch.smtp"),
                "{e}"
            );
            assert!(e.contains(wanted), "{wanted}: {e}");
            assert!(!e.contains("inline"), "{e}");
        }
        for ok in [
            "host = \"127.0.0.1\"\ntls = \"none\"\n",
            "host = \"localhost\"\ntls = \"none\"\n",
            "host = \"::1\"\ntls = \"none\"\n",
            "host = \"smtp.example.it\"\ntls = \"none\"\ninsecure_plaintext_to_remote = true\n",
            "host = \"smtp.example.it\"\nusername = \"u\"\npassword_file = \"/p\"\nca_file = \"/ca.pem\"\nehlo_name = \"plico.example.it\"\nreturn_path = \"bounces@example.it\"\n",
        ] {
            Config::load_from(Some(file(&format!("{base}{ok}")).path()), no_env())
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn dispatch_environment() {
        std::env::set_var("PLICO_T_DISPATCH_DISPATCH_SMTP_HOST", "127.0.0.1");
        std::env::set_var(
            "PLICO_T_DISPATCH_DISPATCH_SMTP_EHLO_NAME",
            "plico.example.it",
        );
        std::env::set_var("PLICO_T_DISPATCH_DISPATCH_SMTP_FROM", "a@b.it");
        std::env::set_var("PLICO_T_DISPATCH_DISPATCH_SMTP_TLS", "none");
        std::env::set_var("PLICO_T_DISPATCH_DISPATCH_MAX_ATTEMPTS", "7");
        let c = Config::load_from(None, Env::prefixed("PLICO_T_DISPATCH_")).unwrap();
        let d = c.dispatch.unwrap();
        assert_eq!(d.max_attempts, 7);
        let smtp = d.smtp.unwrap();
        assert_eq!(
            (smtp.host.as_str(), smtp.tls, smtp.port),
            ("127.0.0.1", SmtpTls::None, 587)
        );
        assert_eq!(smtp.ehlo_name.as_deref(), Some("plico.example.it"));
    }

    /// The lanes' pause after a relay-wide failure: from the file or the environment, checked
    /// (`pause_cap_ms` at least `pause_base_ms`), and what the delivery workers use.
    #[test]
    fn lane_pause_settings() {
        let d = DispatchConfig::default();
        assert_eq!(
            (d.pause_base_ms, d.pause_cap_ms),
            (1_000, 300_000),
            "the documented defaults"
        );
        std::env::set_var("PLICO_T_PAUSE_DISPATCH_PAUSE_BASE_MS", "250");
        std::env::set_var("PLICO_T_PAUSE_DISPATCH_PAUSE_CAP_MS", "4000");
        let c = Config::load_from(None, Env::prefixed("PLICO_T_PAUSE_")).unwrap();
        let d = c.dispatch.clone().unwrap();
        assert_eq!((d.pause_base_ms, d.pause_cap_ms), (250, 4000));
        let dir = tempfile::tempdir().unwrap();
        let print = c.mailers.print_setup(dir.path(), None).unwrap();
        let delivery = crate::delivery::Delivery::from_config(Some(&d), true, dir.path(), &print)
            .unwrap()
            .unwrap();
        assert_eq!(
            (delivery.pause_base, delivery.pause_cap),
            (
                std::time::Duration::from_millis(250),
                std::time::Duration::from_secs(4)
            )
        );
        for text in [
            "[dispatch]\npause_base_ms = 0\n",
            "[dispatch]\npause_base_ms = 5000\npause_cap_ms = 4000\n",
        ] {
            let e = Config::load_from(Some(file(text).path()), no_env()).unwrap_err();
            assert!(e.to_string().contains("pause_cap_ms"), "{e}");
            assert_eq!(e.key().as_deref(), Some("dispatch.pause_base_ms"), "{e}");
        }
    }

    #[test]
    fn import_environment() {
        // A prefix of this test's own, so no other test sees the variables.
        std::env::set_var("PLICO_T_IMPORT_IMPORT_SERIAL_MAX_LEN", "24");
        std::env::set_var("PLICO_T_IMPORT_IMPORT_MAX_UPLOAD_BYTES", "4096");
        let c = Config::load_from(None, Env::prefixed("PLICO_T_IMPORT_")).unwrap();
        assert_eq!(c.settings().serial.max_len, 24);
        assert_eq!(c.settings().max_upload_bytes, 4096);
        std::env::set_var("PLICO_T_IMPORT_IMPORT_SERIAL_CHARSET", "hex");
        let e = Config::load_from(None, Env::prefixed("PLICO_T_IMPORT_"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PLICO_IMPORT_SERIAL_CHARSET"), "{e}");
    }

    #[test]
    fn mailers_table() {
        let c = Config::load_from(None, no_env()).unwrap();
        assert_eq!(c.mailers.per_file, 10_000);
        assert!(c.mailers.recipients.is_empty());
        let setup = c.mailers.print_setup(Path::new("/d"), None).unwrap();
        assert_eq!(setup.out_dir, Path::new("/d/print"));
        let r = age::x25519::Identity::generate().to_public().to_string();
        let f = file(&format!(
            "[mailers]\nout_dir = \"/p\"\nper_file = 5\nrecipients = [\"{r}\"]\n\
             [mailers.issuer]\nname = \"Regione Prova\"\n[mailers.layout]\nheader_font_size = 11.0\n"
        ));
        let c = Config::load_from(Some(f.path()), no_env()).unwrap();
        assert_eq!(c.mailers.per_file, 5);
        assert_eq!(c.mailers.recipients, vec![r.clone()]);
        assert_eq!(c.mailers.issuer.name, "Regione Prova");
        assert_eq!(c.mailers.issuer.helpline, "800 000 000");
        let setup = c.mailers.print_setup(Path::new("/d"), None).unwrap();
        assert_eq!(setup.out_dir, Path::new("/p"));

        let f = file(&format!(
            "[mailers]\nrecipients = [\"{r}\", \"age1nope\"]\n"
        ));
        let e = Config::load_from(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("recipients") && e.contains("item 2"), "{e}");
        assert!(!e.contains("age1nope"), "{e}");
        let f = file("[mailers]\nper_file = 0\n");
        let e = Config::load_from(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("per_file"), "{e}");
        let f = file("[mailers]\ntemplates_dir = \"/nonexistent/templates\"\n");
        let c = Config::load_from(Some(f.path()), no_env()).unwrap();
        let e = c
            .mailers
            .print_setup(Path::new("/d"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("templates_dir"), "{e}");
    }

    #[test]
    fn mailers_environment() {
        let a = age::x25519::Identity::generate().to_public().to_string();
        let b = age::x25519::Identity::generate().to_public().to_string();
        std::env::set_var("PLICO_T_MAILERS_MAILERS_RECIPIENTS", format!("{a}, {b}"));
        std::env::set_var("PLICO_T_MAILERS_MAILERS_PER_FILE", "7");
        std::env::set_var("PLICO_T_MAILERS_MAILERS_OUT_DIR", "/out");
        let c = Config::load_from(None, Env::prefixed("PLICO_T_MAILERS_")).unwrap();
        assert_eq!(c.mailers.recipients, vec![a, b]);
        assert_eq!(c.mailers.per_file, 7);
        assert_eq!(c.mailers.out_dir.as_deref(), Some(Path::new("/out")));
        std::env::set_var("PLICO_T_MAILERS_MAILERS_PER_FILE", "many");
        let e = Config::load_from(None, Env::prefixed("PLICO_T_MAILERS_"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PLICO_MAILERS_PER_FILE"), "{e}");
    }

    #[test]
    fn full_file() {
        let f = file(
            r#"
            data_dir = "/var/lib/plico"
            listen = "0.0.0.0:8443"
            [tls]
            cert = "/c.pem"
            key = "/k.pem"
            [log]
            format = "json"
            [codes]
            pin_min = 8
            pin_max = 8
            "#,
        );
        let c = Config::load_from(Some(f.path()), no_env()).unwrap();
        assert_eq!(c.data_dir.as_deref(), Some(Path::new("/var/lib/plico")));
        assert_eq!(c.listen.port(), 8443);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.code_policy(), CodePolicy::CIE);
        assert_eq!(
            c.tls_files(),
            Some((Path::new("/c.pem"), Path::new("/k.pem")))
        );
    }

    /// `plico.example.toml` at the repository root, as shipped.
    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("plico.example.toml")
    }

    /// The example with its optional settings switched on: a `#` straight before a key or a
    /// table header (`#key = value`, `#[table]`) is removed; explanations (`# …`) stay. The
    /// token settings of `[hsm]` need `kind = "pkcs11"`, so that is switched too.
    fn example_with_options() -> String {
        let text = std::fs::read_to_string(example_path()).unwrap();
        let text = text.replace("\nkind = \"sim\"\n", "\nkind = \"pkcs11\"\n");
        text.lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => {
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every key path (`dispatch.smtp.host`) of a figment value, tables walked into.
    fn key_paths(value: &figment::value::Value) -> std::collections::BTreeSet<String> {
        fn walk(
            prefix: &str,
            value: &figment::value::Value,
            out: &mut std::collections::BTreeSet<String>,
        ) {
            match value {
                figment::value::Value::Dict(_, dict) => {
                    for (key, value) in dict {
                        let path = if prefix.is_empty() {
                            key.clone()
                        } else {
                            format!("{prefix}.{key}")
                        };
                        walk(&path, value, out);
                    }
                }
                _ => {
                    out.insert(prefix.to_owned());
                }
            }
        }
        let mut out = std::collections::BTreeSet::new();
        walk("", value, &mut out);
        out
    }

    /// A configuration with every optional setting present. Struct literals without `..`: a
    /// new field does not compile here until it is given a value, and then the test below
    /// fails until `plico.example.toml` shows it.
    fn every_option_set() -> Config {
        let d = Config::default();
        Config {
            data_dir: Some(PathBuf::from("/var/lib/plico")),
            listen: d.listen,
            tls: Some(TlsFiles {
                cert: Some(PathBuf::from("/c.pem")),
                key: Some(PathBuf::from("/k.pem")),
            }),
            log: d.log,
            codes: d.codes,
            audit: AuditConfig {
                // Both sinks, to name every key (a loaded file may set only one).
                stream: Some(AuditStreamConfig {
                    file: Some(PathBuf::from("/a")),
                    syslog: Some("udp:127.0.0.1:514".into()),
                }),
                ..d.audit
            },
            limits: d.limits,
            import: d.import,
            registry: d.registry,
            mailers: MailersConfig {
                out_dir: Some(PathBuf::from("/p")),
                recipients: d.mailers.recipients,
                per_file: d.mailers.per_file,
                templates_dir: Some(PathBuf::from("/t")),
                issuer: d.mailers.issuer,
                layout: d.mailers.layout,
            },
            store: StoreConfig {
                cache_mib: Some(4096),
            },
            keys: KeysConfig {
                approval_window_secs: d.keys.approval_window_secs,
                rekey_share_dir: Some(PathBuf::from("/m")),
                rewrap_chunk: d.keys.rewrap_chunk,
                rewrap_pause_ms: d.keys.rewrap_pause_ms,
            },
            console: ConsoleConfig {
                idle_minutes: d.console.idle_minutes,
                absolute_hours: d.console.absolute_hours,
                lockout_failures: d.console.lockout_failures,
                lockout_minutes: d.console.lockout_minutes,
                require_totp: d.console.require_totp,
            },
            hsm: HsmConfig {
                kind: HsmKind::Pkcs11,
                module: Some(PathBuf::from("/l.so")),
                token_label: Some("t".into()),
                mechanism: Some("pad".into()),
                pin_file: Some(PathBuf::from("/p")),
            },
            dispatch: Some(DispatchConfig {
                email_enabled: true,
                sms_enabled: true,
                email_per_second: 1,
                sms_per_second: 1,
                max_in_flight: 1,
                max_attempts: 1,
                backoff_base_ms: 1,
                backoff_cap_ms: 1,
                overdue_after_secs: 1,
                pause_base_ms: 1,
                pause_cap_ms: 1,
                smtp: Some(SmtpSection {
                    host: "h".into(),
                    port: default_smtp_port(),
                    tls: SmtpTls::default(),
                    from: "f".into(),
                    max_connections: default_smtp_connections(),
                    ca_file: Some(PathBuf::from("/ca.pem")),
                    username: Some("u".into()),
                    password_file: Some(PathBuf::from("/pw")),
                    ehlo_name: Some("e".into()),
                    return_path: Some("r".into()),
                    insecure_plaintext_to_remote: true,
                }),
                sms: Some(SmsSection {
                    sendsms_url: "u".into(),
                    ca_file: Some(PathBuf::from("/ca.pem")),
                    username: "n".into(),
                    password: "p".into(),
                    from: "f".into(),
                    dlr_url: Some("d".into()),
                    dlr_token: Some("t".into()),
                }),
                spool_dir: Some(PathBuf::from("/s")),
            }),
            backup: BackupConfig {
                recipient: Some(age::x25519::Identity::generate().to_public().to_string()),
            },
            metrics: MetricsConfig {
                token_file: Some(PathBuf::from("/m")),
            },
        }
    }

    #[test]
    fn example_config_is_the_defaults() {
        // Loaded by the real loader, the shipped example changes nothing.
        let c = Config::load_from(Some(&example_path()), no_env()).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn example_config_shows_every_key() {
        let text = example_with_options();
        // Its optional settings, switched on, load and validate (of the audit stream's two
        // sinks, which exclude each other, the file).
        let one_sink: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("syslog ="))
            .map(|l| format!("{l}\n"))
            .collect();
        let with_options = Config::load_from(Some(file(&one_sink).path()), no_env()).unwrap();
        assert!(with_options.tls.is_some());
        // The values it shows in `[dispatch]` are the defaults that apply once the table is
        // there (only the relay, the gateway and the spool are examples).
        let d = with_options.dispatch.unwrap();
        let smtp = d.smtp.clone().unwrap();
        assert!(d.sms.is_some() && d.spool_dir.is_some());
        assert_eq!(
            DispatchConfig {
                smtp: None,
                sms: None,
                spool_dir: None,
                ..d
            },
            DispatchConfig::default()
        );
        assert_eq!(
            (smtp.port, smtp.tls, smtp.max_connections),
            (
                default_smtp_port(),
                SmtpTls::default(),
                default_smtp_connections()
            )
        );
        // The keys it writes out are exactly the keys of the configuration.
        let shown = key_paths(&Figment::from(Toml::string(&text)).extract().unwrap());
        let every = key_paths(
            &Figment::from(Serialized::defaults(every_option_set()))
                .extract()
                .unwrap(),
        );
        let missing: Vec<_> = every.difference(&shown).collect();
        let unknown: Vec<_> = shown.difference(&every).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "plico.example.toml lacks {missing:?} and has unknown {unknown:?}"
        );
        // And each key is explained: a comment on its line or just above it.
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
                continue;
            }
            let above = i.checked_sub(1).map_or("", |j| lines[j].trim());
            assert!(
                line.contains(" # ") || above.starts_with("# "),
                "plico.example.toml line {}: `{line}` has no comment",
                i + 1
            );
        }
    }

    #[test]
    fn every_key_has_its_variable_and_secrets_are_keys() {
        // The environment table and the configuration name the same keys (the mailer layout's
        // geometry alone has no variables), and every listed secret is a key.
        let every = key_paths(
            &Figment::from(Serialized::defaults(every_option_set()))
                .extract()
                .unwrap(),
        );
        let with_variable: std::collections::BTreeSet<String> =
            ENV_VARS.iter().map(|(_, p)| (*p).to_owned()).collect();
        let without: Vec<_> = every
            .iter()
            .filter(|k| !k.starts_with("mailers.layout.") && !with_variable.contains(*k))
            .collect();
        let stale: Vec<_> = with_variable.difference(&every).collect();
        assert!(
            without.is_empty() && stale.is_empty(),
            "keys without a PLICO_* variable: {without:?}; variables of no key: {stale:?}"
        );
        for (var, path) in ENV_VARS {
            assert_eq!(
                *var,
                format!("PLICO_{}", path.replace('.', "_").to_uppercase())
            );
        }
        for secret in SECRET_KEYS {
            assert!(every.contains(*secret), "{secret}");
        }
        assert!(is_secret_key("dispatch.sms.password") && is_secret_key("metrics.scrape_token"));
        assert!(!is_secret_key("hsm.token_label") && !is_secret_key("hsm.pin_file"));
        assert!(!is_secret_key("tls.key") && !is_secret_key("codes.pin_min"));
    }

    #[test]
    fn config_errors_name_their_key() {
        let key = |text: &str, env: Env| {
            Config::load_from(Some(file(text).path()), env)
                .unwrap_err()
                .key()
        };
        for (text, want) in [
            ("[codes]\npin_min = \"five\"\n", Some("codes.pin_min")),
            ("listn = 1\n", Some("listn")),
            (
                "[dispatch.smtp]\nhots = \"h\"\n",
                Some("dispatch.smtp.hots"),
            ),
            (
                "[dispatch]\nmax_in_flight = 0\n",
                Some("dispatch.max_in_flight"),
            ),
            ("[codes]\npin_min = 9\n", Some("codes")),
            ("[tls]\ncert = \"/c.pem\"\n", Some("tls.cert")),
            (
                "[mailers]\nrecipients = [\"age1nope\"]\n",
                Some("mailers.recipients"),
            ),
            ("this is not toml\n", None),
        ] {
            assert_eq!(key(text, no_env()).as_deref(), want, "{text}");
        }
        // A secret of the wrong type is named, never shown.
        let e = Config::load_from(
            Some(
                file("[dispatch.sms]\nsendsms_url = \"u\"\nusername = \"u\"\nfrom = \"f\"\npassword = 87654321\n")
                    .path(),
            ),
            no_env(),
        )
        .unwrap_err();
        assert_eq!(e.key().as_deref(), Some("dispatch.sms.password"));
        assert!(!e.to_string().contains("87654321"), "{e}");
        std::env::set_var("PLICO_T_KEY_CODES_PUK_MAX", "many");
        assert_eq!(
            key("", Env::prefixed("PLICO_T_KEY_")).as_deref(),
            Some("codes.puk_max")
        );
    }

    /// Text settings given numeric-looking values in the environment load as that text (the
    /// SMS password and sender, the helpline, the token label), numbers and booleans still load
    /// as such, and a wrong value is named without echoing the secret beside it.
    #[test]
    fn numeric_looking_env_values_of_text_settings_are_text() {
        for (var, value) in [
            (
                "DISPATCH_SMS_SENDSMS_URL",
                "http://127.0.0.1:13013/cgi-bin/sendsms",
            ),
            ("DISPATCH_SMS_USERNAME", "4242"),
            ("DISPATCH_SMS_PASSWORD", "12345678"),
            ("DISPATCH_SMS_FROM", "3331234567"),
            ("DISPATCH_SMS_DLR_TOKEN", "1234567890123456789012"),
            ("DISPATCH_MAX_ATTEMPTS", "7"),
            ("DISPATCH_SMS_ENABLED", "false"),
            ("MAILERS_ISSUER_HELPLINE", "800123456"),
            ("HSM_KIND", "pkcs11"),
            ("HSM_MODULE", "/usr/lib/softhsm/libsofthsm2.so"),
            ("HSM_TOKEN_LABEL", "2024"),
            ("CONSOLE_REQUIRE_TOTP", "true"),
            ("STORE_CACHE_MIB", "128"),
        ] {
            std::env::set_var(format!("PLICO_T_NUMTEXT_{var}"), value);
        }
        let c = Config::load_from(None, Env::prefixed("PLICO_T_NUMTEXT_")).unwrap();
        let d = c.dispatch.as_ref().unwrap();
        let sms = d.sms.as_ref().unwrap();
        assert_eq!(sms.password, "12345678");
        assert_eq!(sms.from, "3331234567");
        assert_eq!(sms.username, "4242");
        assert_eq!(sms.dlr_token.as_deref(), Some("1234567890123456789012"));
        assert_eq!((d.max_attempts, d.sms_enabled), (7, false));
        assert_eq!(c.mailers.issuer.helpline, "800123456");
        assert_eq!(c.hsm.token_label.as_deref(), Some("2024"));
        assert!(c.console.require_totp);
        assert_eq!(c.store.cache_mib, Some(128));

        // A wrong value beside the secret: the wrong key is named, the secret never shown.
        std::env::set_var(
            "PLICO_T_NUMTEXT_BAD_DISPATCH_SMS_SENDSMS_URL",
            "http://127.0.0.1:1/",
        );
        std::env::set_var("PLICO_T_NUMTEXT_BAD_DISPATCH_SMS_USERNAME", "u");
        std::env::set_var("PLICO_T_NUMTEXT_BAD_DISPATCH_SMS_PASSWORD", "12345678");
        std::env::set_var("PLICO_T_NUMTEXT_BAD_DISPATCH_SMS_FROM", "3331234567");
        std::env::set_var("PLICO_T_NUMTEXT_BAD_DISPATCH_MAX_IN_FLIGHT", "many");
        let e = Config::load_from(None, Env::prefixed("PLICO_T_NUMTEXT_BAD_")).unwrap_err();
        assert_eq!(e.key().as_deref(), Some("dispatch.max_in_flight"), "{e}");
        assert!(
            e.to_string().contains("PLICO_DISPATCH_MAX_IN_FLIGHT"),
            "{e}"
        );
        assert!(!e.to_string().contains("12345678"), "{e}");
        // The file keeps its types: an unquoted number for a text key is still refused.
        let f = file("[hsm]\nkind = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = 2024\n");
        let e = Config::load_from(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(e.key().as_deref(), Some("hsm.token_label"), "{e}");
    }

    /// No key of [`ENV_VARS`] reads a numeric-looking variable as a number where it wants
    /// text: each one alone, set to `12345678`, either loads or fails for another reason (a
    /// number out of range, a section missing its other keys), never as "a number, expected
    /// a string".
    #[test]
    fn no_env_key_reads_digits_as_a_number_where_text_is_wanted() {
        for (i, (var, path)) in ENV_VARS.iter().enumerate() {
            let prefix = format!("PLICO_T_DIGITS{i}_");
            let name = var.replacen("PLICO_", &prefix, 1);
            std::env::set_var(&name, "12345678");
            let env = Env::prefixed(&prefix).filter_map(|key| {
                ENV_VARS
                    .iter()
                    .find(|(v, _)| {
                        v.strip_prefix("PLICO_")
                            .is_some_and(|v| v.eq_ignore_ascii_case(key.as_str()))
                    })
                    .map(|(_, p)| (*p).into())
            });
            if let Err(errors) = Config::extract(None, env).unwrap() {
                for e in errors {
                    let numeric = matches!(
                        e.kind,
                        figment::error::Kind::InvalidType(
                            figment::error::Actual::Unsigned(_)
                                | figment::error::Actual::Signed(_)
                                | figment::error::Actual::Float(_),
                            _
                        )
                    );
                    assert!(!numeric, "{var} ({path}): {e}");
                }
            }
            std::env::remove_var(&name);
        }
    }

    #[test]
    fn errors_name_file_and_field() {
        let f = file("[codes]\npin_min = \"five\"\n");
        let e = Config::load_from(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&f.path().display().to_string()), "{e}");
        assert!(e.contains("codes.pin_min"), "{e}");

        let f = file("listn = \"127.0.0.1:1\"\n");
        let e = Config::load_from(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("listn"), "{e}");

        let f = file("[codes]\npin_min = 9\n");
        let e = Config::load_from(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("[codes]") && e.contains("pin"), "{e}");

        let f = file("[tls]\ncert = \"/c.pem\"\n");
        let e = Config::load_from(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`key` is missing"), "{e}");

        let e = Config::load_from(Some(Path::new("/nonexistent/plico.toml")), no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/plico.toml"), "{e}");
    }
}

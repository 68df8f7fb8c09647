//! The SMTP courier: lettre's protocol client over this crate's own connection pool.
//!
//! Why not lettre's `AsyncSmtpTransport` and its pool: its socket has no TCP_NODELAY (measured
//! 23 messages/s per connection on loopback, Nagle's algorithm against the delayed ACK), and its
//! pool's `max_size` caps idle connections, not concurrent ones. Here:
//!
//! - every connection is a `tokio::net::TcpStream` with `set_nodelay(true)`, handed to lettre by
//!   `AsyncSmtpConnection::connect_with_transport`;
//! - a `tokio::sync::Semaphore` with `max_connections` permits caps the connections open at
//!   once (each send holds a permit for its whole exchange);
//! - a connection that sent successfully goes back to an idle list and is reused; one idle
//!   longer than `noop_after` is checked with `NOOP` first, one idle longer than `idle_timeout`
//!   is closed. lettre closes a connection (`QUIT`) on any error during a send, so a failed
//!   connection is never reused; a send cut by the timeout is dropped the same way.
//!
//! Security modes: [`SmtpSecurity::StartTls`] (lettre's rustls upgrade), [`SmtpSecurity::Tls`]
//! (implicit TLS, port 465: tokio-rustls before the greeting) and
//! [`SmtpSecurity::InsecurePlaintext`]. The TLS paths verify the relay's certificate against
//! webpki's roots plus the configured CAs, and are tested against a private postfix
//! (`tests/service/relay.rs`); `AUTH` is only sent inside TLS.
//!
//! Each failure carries a [`FailureReason`] by the stage it came at (`rcpt` 5xx:
//! `rejected_recipient`; a refused certificate: `tls_untrusted`; a refused login:
//! `auth_failed`; …). `MAIL`, `RCPT` and `DATA` are driven here (not `conn.send`) to know the
//! stage and to add DSN parameters (`RET=HDRS`, `ENVID`, `NOTIFY=FAILURE`) when the relay
//! offers DSN; without 8BITMIME the bodies are quoted-printable.
//!
//! # Security
//! The MIME message is written by this module straight into a [`SecretBuf`] (no
//! lettre `Message` builder, which would copy each body into plain `String`s). One unwiped copy
//! remains outside this crate's control: lettre's dot-stuffing codec copies the message into a
//! plain `Vec` per send. `Message-ID` is derived from the idempotency key's SHA-256, so a resend
//! after a crash carries the same id. Errors quote only SMTP status codes.

use super::{ConfigError, Courier, Destination, FailureReason, Message, Outgoing, SendError, Sent};
use crate::plan::Channel;
use crate::render::email::EmailMessage;
use crate::secret::SecretBuf;
use base64::Engine as _;
use lettre::address::Address;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{
    ClientId, Extension, MailBodyParameter, MailParameter, RcptParameter,
};
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `STARTTLS` after the greeting (port 587 or 25); refused if the relay does not offer it.
    StartTls,
    /// Implicit TLS from the first byte (port 465).
    Tls,
    /// No TLS: codes cross the network in clear. Loopback relays and tests only.
    InsecurePlaintext,
}

/// Where and how the SMTP courier sends.
#[derive(Clone)]
pub struct SmtpConfig {
    /// Relay host name (also the TLS server name) or IP address.
    pub host: String,
    /// Relay port.
    pub port: u16,
    /// TLS mode.
    pub security: SmtpSecurity,
    /// PEM CA certificates to trust in addition to webpki's roots (a private relay's CA).
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Name given in `EHLO`.
    pub hello_name: String,
    /// `From:` address, and the envelope sender unless `return_path` is set.
    pub from: String,
    /// Envelope sender (`MAIL FROM`), where bounces go; `None`: `from`.
    pub return_path: Option<String>,
    /// `AUTH PLAIN`/`LOGIN` user and password, if the relay wants them.
    pub auth: Option<(String, SecretString)>,
    /// Connections open at once (and so sends in flight).
    pub max_connections: usize,
    /// Limit on TCP connect, TLS handshake, greeting and `EHLO`.
    pub connect_timeout: Duration,
    /// Limit on one message's exchange (`MAIL` to the reply after the data).
    pub send_timeout: Duration,
    /// Idle connections older than this are closed instead of reused.
    pub idle_timeout: Duration,
    /// Idle connections older than this are checked with `NOOP` before reuse.
    pub noop_after: Duration,
    /// Domain of the `Message-ID`s.
    pub message_id_domain: String,
}

impl SmtpConfig {
    /// A configuration with defaults: STARTTLS, 4 connections, 10 s connect, 30 s send,
    /// 60 s idle, NOOP after 5 s idle; `EHLO` and `Message-ID` domain from `from`'s domain.
    pub fn new(host: impl Into<String>, port: u16, from: impl Into<String>) -> SmtpConfig {
        let from = from.into();
        let domain = from
            .rsplit_once('@')
            .map_or("localhost", |(_, d)| d)
            .to_owned();
        SmtpConfig {
            host: host.into(),
            port,
            security: SmtpSecurity::StartTls,
            tls_ca_pem: None,
            hello_name: domain.clone(),
            from,
            return_path: None,
            auth: None,
            max_connections: 4,
            connect_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            noop_after: Duration::from_secs(5),
            message_id_domain: domain,
        }
    }
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(Vec::len))
            .field("from", &self.from)
            .field("return_path", &self.return_path)
            .field("hello_name", &self.hello_name)
            .field("auth", &self.auth.as_ref().map(|(user, _)| user))
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

enum TlsMode {
    None,
    StartTls(TlsParameters),
    Implicit(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    ),
}

/// An open connection and what its relay offers.
struct Conn {
    conn: AsyncSmtpConnection,
    /// The relay announced `DSN` (RFC 3461): `RET=HDRS` and `NOTIFY=FAILURE` are sent.
    dsn: bool,
    /// The relay announced `PIPELINING` (RFC 2920): `MAIL`, `RCPT` and `DATA` go in one
    /// write, and their replies are read after it.
    pipelining: bool,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Sends e-mails through an SMTP relay over a pool of reused connections.
pub struct SmtpCourier {
    config: SmtpConfig,
    return_path: Address,
    hello: ClientId,
    tls: TlsMode,
    permits: Semaphore,
    idle: Mutex<Vec<Idle>>,
    opened: AtomicU64,
}

impl fmt::Debug for SmtpCourier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpCourier")
            .field("config", &self.config)
            .field("opened", &self.opened.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SmtpCourier {
    /// A courier for this relay; connects lazily, on the first send.
    ///
    /// # Errors
    /// [`ConfigError`] for a bad `from` or `return_path` address, an empty pool, unreadable
    /// TLS roots, a bad `EHLO` name, or a login without TLS (`AUTH` would send the password in
    /// clear).
    pub fn new(config: SmtpConfig) -> Result<SmtpCourier, ConfigError> {
        let from = Address::from_str(&config.from)
            .map_err(|_| ConfigError::new("smtp.from", "not an e-mail address"))?;
        let return_path = match &config.return_path {
            Some(r) => Address::from_str(r)
                .map_err(|_| ConfigError::new("smtp.return_path", "not an e-mail address"))?,
            None => from.clone(),
        };
        if config.auth.is_some() && config.security == SmtpSecurity::InsecurePlaintext {
            return Err(ConfigError::new(
                "smtp.username",
                "a login needs tls = \"starttls\" or \"tls\" (AUTH would send the password in clear)",
            ));
        }
        let name_ok = !config.hello_name.is_empty()
            && config.hello_name.len() <= 253
            && config
                .hello_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
        if !name_ok {
            return Err(ConfigError::new(
                "smtp.ehlo_name",
                "a host name of letters, digits, dots and hyphens expected",
            ));
        }
        if config.max_connections == 0 {
            return Err(ConfigError::new(
                "smtp.max_connections",
                "must be at least 1",
            ));
        }
        let hello = ClientId::Domain(config.hello_name.clone());
        let tls = match config.security {
            SmtpSecurity::InsecurePlaintext => TlsMode::None,
            SmtpSecurity::StartTls => TlsMode::StartTls(starttls_parameters(&config)?),
            SmtpSecurity::Tls => {
                let (connector, name) = implicit_tls(&config)?;
                TlsMode::Implicit(connector, name)
            }
        };
        Ok(SmtpCourier {
            permits: Semaphore::new(config.max_connections),
            idle: Mutex::new(Vec::with_capacity(config.max_connections)),
            opened: AtomicU64::new(0),
            config,
            return_path,
            hello,
            tls,
        })
    }

    /// Connections opened so far (a measure of reuse).
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Closes the idle connections with `QUIT`.
    pub async fn close(&self) {
        let idle: Vec<Idle> = std::mem::take(&mut *self.lock_idle());
        for mut i in idle {
            let _ = tokio::time::timeout(Duration::from_secs(1), i.conn.conn.quit()).await;
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // A poisoned lock only means another send panicked while pushing or popping a
        // connection; the list itself is still a valid list of connections.
        crate::lock::lock(&self.idle)
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let limit = self.config.connect_timeout;
        let tcp = tokio::time::timeout(
            limit,
            TcpStream::connect((self.config.host.as_str(), self.config.port)),
        )
        .await
        .map_err(|_| SendError::failed(FailureReason::Timeout, "smtp connect: timed out"))?
        .map_err(|e| {
            SendError::failed(
                FailureReason::ConnectRefused,
                format!("smtp connect: {}", e.kind()),
            )
        })?;
        tcp.set_nodelay(true).map_err(|e| {
            SendError::failed(
                FailureReason::ConnectionLost,
                format!("smtp connect: nodelay: {}", e.kind()),
            )
        })?;
        let stream: Box<dyn AsyncTokioStream> = match &self.tls {
            TlsMode::Implicit(connector, name) => {
                let tls = tokio::time::timeout(limit, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| {
                        SendError::failed(FailureReason::Timeout, "smtp tls handshake: timed out")
                    })?
                    .map_err(|e| tls_failure("smtp tls handshake", &e))?;
                Box::new(TlsTcp(tls))
            }
            TlsMode::None | TlsMode::StartTls(_) => Box::new(tcp),
        };
        let setup = async {
            let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.hello)
                .await
                .map_err(|e| classify(Stage::Greeting, &e))?;
            if let TlsMode::StartTls(parameters) = &self.tls {
                if !conn.can_starttls() {
                    conn.abort().await;
                    return Err(SendError::failed(
                        FailureReason::TlsUnavailable,
                        "smtp: relay does not offer starttls",
                    ));
                }
                conn.starttls(parameters.clone(), &self.hello)
                    .await
                    .map_err(|e| classify(Stage::StartTls, &e))?;
            }
            // lettre keeps only the extensions it knows: ask again to see `DSN`.
            let ehlo = conn
                .command(Ehlo::new(self.hello.clone()))
                .await
                .map_err(|e| classify(Stage::Greeting, &e))?;
            let offers = |keyword: &str| {
                ehlo.message().skip(1).any(|l| {
                    l.split_whitespace()
                        .next()
                        .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
                })
            };
            let (dsn, pipelining) = (offers("DSN"), offers("PIPELINING"));
            if let Some((user, password)) = &self.config.auth {
                if !conn.is_encrypted() && !matches!(self.tls, TlsMode::Implicit(..)) {
                    conn.abort().await;
                    return Err(SendError::failed(
                        FailureReason::TlsUnavailable,
                        "smtp auth: refused to log in without tls",
                    ));
                }
                let credentials =
                    Credentials::new(user.clone(), password.expose_secret().to_owned());
                conn.auth(&[Mechanism::Plain, Mechanism::Login], &credentials)
                    .await
                    .map_err(|e| classify(Stage::Auth, &e))?;
            }
            Ok(Conn {
                conn,
                dsn,
                pipelining,
            })
        };
        let conn = tokio::time::timeout(limit, setup)
            .await
            .map_err(|_| SendError::failed(FailureReason::Timeout, "smtp greeting: timed out"))??;
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(conn)
    }

    /// An idle connection fit for reuse, or a new one.
    async fn checkout(&self) -> Result<Conn, SendError> {
        loop {
            let idle = self.lock_idle().pop();
            let Some(mut idle) = idle else {
                return self.connect().await;
            };
            let age = idle.since.elapsed();
            if age > self.config.idle_timeout || idle.conn.conn.has_broken() {
                let _ = tokio::time::timeout(Duration::from_secs(1), idle.conn.conn.abort()).await;
                continue;
            }
            if age > self.config.noop_after {
                let alive = tokio::time::timeout(
                    self.config.connect_timeout,
                    idle.conn.conn.test_connected(),
                )
                .await
                .unwrap_or(false);
                if !alive {
                    continue;
                }
            }
            return Ok(idle.conn);
        }
    }

    async fn send_email(
        &self,
        key: &super::IdempotencyKey,
        to: &str,
        email: &EmailMessage,
    ) -> Result<Sent, SendError> {
        let to_address = Address::from_str(to).map_err(|_| {
            SendError::failed(FailureReason::BadAddress, "smtp: bad e-mail address")
        })?;
        let message_id = message_id(key, &self.config.message_id_domain);

        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SendError::temporary("smtp: courier closed"))?;
        let mut conn = self.checkout().await?;
        let outcome = tokio::time::timeout(
            self.config.send_timeout,
            self.transaction(&mut conn, key, &to_address, to, &message_id, email),
        )
        .await;
        match outcome {
            Ok(Ok(response)) => {
                let peer_id = reply_text(response.code().to_string(), response.message());
                self.lock_idle().push(Idle {
                    conn,
                    since: Instant::now(),
                });
                Ok(Sent {
                    peer_id,
                    at: SystemTime::now(),
                })
            }
            Ok(Err(e)) => {
                // A refusal leaves the connection in an unknown transaction state: close it.
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.conn.abort()).await;
                Err(e)
            }
            Err(_) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.conn.abort()).await;
                Err(SendError::failed(
                    FailureReason::Timeout,
                    "smtp send: timed out",
                ))
            }
        }
    }

    /// `MAIL`, `RCPT`, `DATA` and the message on `conn`, each refusal classified by its stage.
    /// The body is 8bit when the relay offers 8BITMIME, quoted-printable otherwise; with DSN,
    /// `RET=HDRS` (a bounce carries the headers only, never the codes), `ENVID` (the job's key)
    /// and `NOTIFY=FAILURE`.
    async fn transaction(
        &self,
        conn: &mut Conn,
        key: &super::IdempotencyKey,
        to_address: &Address,
        to: &str,
        message_id: &str,
        email: &EmailMessage,
    ) -> Result<lettre::transport::smtp::response::Response, SendError> {
        let info = conn.conn.server_info();
        let eight_bit = info.supports_feature(Extension::EightBitMime);
        let utf8 = info.supports_feature(Extension::SmtpUtfEight);
        let encoding = if eight_bit {
            BodyEncoding::EightBit
        } else {
            BodyEncoding::QuotedPrintable
        };
        let date = SystemTime::now();
        let mime = mime_message(&self.config.from, to, message_id, email, date, encoding)?;
        let mut mail_params = Vec::new();
        if !mime.expose_secret().is_ascii() {
            if !eight_bit {
                return Err(SendError::failed(
                    FailureReason::No8bitmime,
                    "smtp: the message needs 8bitmime and the relay lacks it",
                ));
            }
            mail_params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let non_ascii_address = !to.is_ascii() || !self.return_path.to_string().is_ascii();
        if non_ascii_address {
            if !utf8 {
                return Err(SendError::failed(
                    FailureReason::BadAddress,
                    "smtp: a non-ascii address needs smtputf8 and the relay lacks it",
                ));
            }
            mail_params.push(MailParameter::SmtpUtfEight);
        }
        let mut rcpt_params = Vec::new();
        if conn.dsn {
            mail_params.push(MailParameter::Other {
                keyword: "RET".into(),
                value: Some("HDRS".into()),
            });
            mail_params.push(MailParameter::Other {
                keyword: "ENVID".into(),
                value: Some(key.as_str().to_owned()),
            });
            rcpt_params.push(RcptParameter::Other {
                keyword: "NOTIFY".into(),
                value: Some("FAILURE".into()),
            });
        }
        let mail = Mail::new(Some(self.return_path.clone()), mail_params);
        let rcpt = Rcpt::new(to_address.clone(), rcpt_params);
        let c = &mut conn.conn;
        if conn.pipelining {
            // One write for the three commands, then their replies in order. A refusal ends
            // the exchange: the caller closes the connection, so the replies not read yet
            // (RFC 2920 answers `RCPT` and `DATA` after a refused `MAIL` with 503/554) are
            // never taken for the next message's.
            c.command(Envelope(&mail, &rcpt))
                .await
                .map_err(|e| classify(Stage::Mail, &e))?;
            c.read_response()
                .await
                .map_err(|e| classify(Stage::Rcpt, &e))?;
            c.read_response()
                .await
                .map_err(|e| classify(Stage::Data, &e))?;
        } else {
            c.command(mail)
                .await
                .map_err(|e| classify(Stage::Mail, &e))?;
            c.command(rcpt)
                .await
                .map_err(|e| classify(Stage::Rcpt, &e))?;
            c.command(Data)
                .await
                .map_err(|e| classify(Stage::Data, &e))?;
        }
        c.message(mime.expose_secret())
            .await
            .map_err(|e| classify(Stage::Data, &e))
    }
}

#[async_trait::async_trait]
impl Courier for SmtpCourier {
    fn channel(&self) -> Channel {
        Channel::Email
    }

    async fn send(&self, message: &Outgoing) -> Result<Sent, SendError> {
        match (&message.message, &message.destination) {
            (Message::Email(email), Destination::Email(to)) => {
                self.send_email(&message.key, to, email).await
            }
            _ => Err(SendError::permanent(
                "smtp courier carries e-mails to e-mail addresses only",
            )),
        }
    }
}

/// `MAIL`, `RCPT` and `DATA` as one pipelined group (RFC 2920: `DATA` last): each command's
/// own text (lettre's, with its CRLF), one after the other.
struct Envelope<'a>(&'a Mail, &'a Rcpt);

impl fmt::Display for Envelope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.0, self.1, Data)
    }
}

/// The relay's reply after the data (`250 2.0.0 Ok: queued as …`), on one line, ≤ 200 bytes.
fn reply_text<'a>(code: String, lines: impl Iterator<Item = &'a str>) -> String {
    let mut text = code;
    for line in lines {
        text.push(' ');
        text.extend(line.chars().filter(|c| !c.is_control()));
    }
    if text.len() > 200 {
        let mut end = 200;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Where in the exchange an error came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Greeting,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Greeting => "smtp greeting",
            Stage::StartTls => "smtp starttls",
            Stage::Auth => "smtp auth",
            Stage::Mail => "smtp mail",
            Stage::Rcpt => "smtp rcpt",
            Stage::Data => "smtp data",
        }
    }
}

/// Maps a lettre error at `stage` to a classified send error quoting only the status code.
fn classify(stage: Stage, e: &lettre::transport::smtp::Error) -> SendError {
    let code = e.status().map(u16::from);
    let status = code.map_or_else(|| "no status".to_owned(), |c| c.to_string());
    let name = stage.as_str();
    // lettre reports a failed STARTTLS handshake as a network error: look for rustls's
    // error in the chain first.
    let reason = if e.is_tls() || rustls_error(e).is_some() {
        return tls_failure(name, e);
    } else if e.is_timeout() {
        FailureReason::Timeout
    } else if e.is_transient() || e.is_permanent() {
        let permanent = e.is_permanent();
        match (stage, permanent) {
            (Stage::Auth, _) => FailureReason::AuthFailed,
            (_, true) if code == Some(530) => FailureReason::AuthFailed,
            (_, false) if code == Some(421) => FailureReason::RelayBusy,
            (Stage::StartTls, _) => FailureReason::TlsUnavailable,
            (Stage::Greeting, true) => FailureReason::ConnectRefused,
            (Stage::Mail, true) => FailureReason::RejectedSender,
            (Stage::Rcpt, true) => FailureReason::RejectedRecipient,
            (Stage::Rcpt, false) => FailureReason::RecipientDeferred,
            (Stage::Data, true) => FailureReason::RejectedMessage,
            (_, false) => FailureReason::RelayBusy,
        }
    } else if e.is_client() {
        match stage {
            // lettre found no mechanism both sides know.
            Stage::Auth => FailureReason::AuthFailed,
            Stage::StartTls => FailureReason::TlsUnavailable,
            _ => FailureReason::OtherPermanent,
        }
    } else if e.is_response() {
        // A reply lettre could not parse.
        FailureReason::RelayBusy
    } else {
        FailureReason::ConnectionLost
    };
    SendError::failed(reason, format!("{name}: {status}"))
}

/// A TLS failure: `tls_untrusted` when the certificate was refused (unknown CA, wrong name,
/// expired), `tls_failed` otherwise. Only rustls's error kind is quoted.
fn tls_failure(stage: &str, e: &(dyn std::error::Error + 'static)) -> SendError {
    match rustls_error(e) {
        Some(rustls::Error::InvalidCertificate(c)) => SendError::failed(
            FailureReason::TlsUntrusted,
            format!("{stage}: certificate refused ({})", certificate_error(c)),
        ),
        Some(rustls::Error::AlertReceived(a)) => {
            SendError::failed(FailureReason::TlsFailed, format!("{stage}: alert {a:?}"))
        }
        _ => SendError::failed(FailureReason::TlsFailed, format!("{stage}: tls error")),
    }
}

/// rustls's error in `e`'s source chain (directly, or inside an `io::Error`).
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = err
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        source = err.source();
    }
    None
}

fn certificate_error(e: &rustls::CertificateError) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        C::UnknownIssuer => "unknown issuer",
        C::NotValidForName | C::NotValidForNameContext { .. } => "not valid for the host name",
        C::Expired | C::ExpiredContext { .. } => "expired",
        C::NotValidYet | C::NotValidYetContext { .. } => "not valid yet",
        C::Revoked => "revoked",
        C::BadSignature => "bad signature",
        _ => "invalid",
    }
}

/// `<sha256(key)[..32].plico@domain>`: the same for every attempt of one job.
pub fn message_id(key: &super::IdempotencyKey, domain: &str) -> String {
    let digest = key.digest_hex();
    format!("<{}.plico@{}>", &digest[..32], domain)
}

/// How the text and HTML parts are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEncoding {
    /// UTF-8 as is (`Content-Transfer-Encoding: 8bit`): the relay offers 8BITMIME.
    EightBit,
    /// Quoted-printable (RFC 2045): 7-bit lines of at most 76 characters, for relays without
    /// 8BITMIME.
    QuotedPrintable,
}

/// `date` in RFC 5322's numeric-zone form: `Mon, 07 Dec 2026 17:46:37 +0000` (not the
/// obsolete `GMT`).
pub fn rfc5322_date(date: SystemTime) -> String {
    let http = httpdate::fmt_http_date(date);
    match http.strip_suffix(" GMT") {
        Some(stem) => format!("{stem} +0000"),
        None => http,
    }
}

/// Writes the RFC 5322 message (multipart/alternative, text and HTML in `encoding`) into a
/// zeroizing buffer, with `Auto-Submitted: auto-generated` (RFC 3834: no vacation replies).
/// Bodies are copied with LF turned into CRLF.
///
/// # Errors
/// [`SendError`] (`bad_message`) if a header would hold a control character, an 8bit body
/// line is longer than SMTP's 998 bytes, or a body contains the MIME boundary.
pub fn mime_message(
    from: &str,
    to: &str,
    message_id: &str,
    email: &EmailMessage,
    date: SystemTime,
    encoding: BodyEncoding,
) -> Result<SecretBuf, SendError> {
    let bad = |text: String| SendError::failed(FailureReason::BadMessage, text);
    for (name, value) in [
        ("from", from),
        ("to", to),
        ("subject", email.subject.as_str()),
    ] {
        if value.chars().any(char::is_control) {
            return Err(bad(format!("e-mail {name}: control character")));
        }
    }
    let text = email.text.expose_secret();
    let html = email.html.expose_secret();
    let boundary: String = "=_plico_"
        .chars()
        .chain(
            message_id
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(16),
        )
        .collect();
    let mut out = SecretBuf::with_capacity(1024 + 4 * (text.len() + html.len()));
    let header = |out: &mut SecretBuf, name: &str, value: &str| {
        out.extend(name.as_bytes());
        out.extend(b": ");
        out.extend(value.as_bytes());
        out.extend(b"\r\n");
    };
    header(&mut out, "Date", &rfc5322_date(date));
    header(&mut out, "From", from);
    header(&mut out, "To", to);
    header(&mut out, "Subject", &encode_subject(&email.subject));
    header(&mut out, "Message-ID", message_id);
    header(&mut out, "Auto-Submitted", "auto-generated");
    header(&mut out, "MIME-Version", "1.0");
    header(
        &mut out,
        "Content-Type",
        &format!("multipart/alternative; boundary=\"{boundary}\""),
    );
    out.extend(b"\r\n");
    let cte = match encoding {
        BodyEncoding::EightBit => "8bit",
        BodyEncoding::QuotedPrintable => "quoted-printable",
    };
    for (kind, body) in [("plain", text), ("html", html)] {
        if body.contains(&boundary) {
            return Err(bad("e-mail body contains the mime boundary".into()));
        }
        out.extend(b"--");
        out.extend(boundary.as_bytes());
        out.extend(b"\r\nContent-Type: text/");
        out.extend(kind.as_bytes());
        out.extend(b"; charset=utf-8\r\nContent-Transfer-Encoding: ");
        out.extend(cte.as_bytes());
        out.extend(b"\r\n\r\n");
        for line in body.lines() {
            match encoding {
                BodyEncoding::EightBit => {
                    if line.len() > 998 {
                        return Err(bad(format!(
                            "e-mail {kind} body: a line is longer than 998 bytes"
                        )));
                    }
                    out.extend(line.as_bytes());
                    out.extend(b"\r\n");
                }
                BodyEncoding::QuotedPrintable => quoted_printable_line(&mut out, line.as_bytes()),
            }
        }
    }
    out.extend(b"--");
    out.extend(boundary.as_bytes());
    out.extend(b"--\r\n");
    Ok(out)
}

/// One body line as quoted-printable (RFC 2045 6.7), written straight into `out`: bytes
/// outside `!`..`~` and `=` as `=XX`, a blank at the end of the line encoded, soft breaks
/// (`=` CRLF) keeping every line at most 76 characters; then CRLF.
fn quoted_printable_line(out: &mut SecretBuf, line: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut width = 0;
    for (i, &b) in line.iter().enumerate() {
        let last = i + 1 == line.len();
        let literal = (b == b' ' || b == b'\t') && !last || (b'!'..=b'~').contains(&b) && b != b'=';
        let len = if literal { 1 } else { 3 };
        // Room for this piece plus a soft break's `=` unless it is the line's last piece.
        if width + len > if last { 76 } else { 75 } {
            out.extend(b"=\r\n");
            width = 0;
        }
        if literal {
            out.extend(&[b]);
        } else {
            out.extend(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
        width += len;
    }
    out.extend(b"\r\n");
}

/// The subject as is if ASCII, else RFC 2047 `B` encoded-words (≤ 45 input bytes each, so
/// each word stays under 75 characters), folded.
fn encode_subject(subject: &str) -> String {
    if subject.is_ascii() {
        return subject.to_owned();
    }
    let mut words = Vec::new();
    let mut start = 0;
    while start < subject.len() {
        let mut end = (start + 45).min(subject.len());
        while !subject.is_char_boundary(end) {
            end -= 1;
        }
        let chunk = &subject.as_bytes()[start..end];
        words.push(format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(chunk)
        ));
        start = end;
    }
    words.join("\r\n ")
}

fn ca_certificates(
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ConfigError::new("smtp.ca_file", "not PEM certificates"))?;
    if certs.is_empty() {
        return Err(ConfigError::new("smtp.ca_file", "no certificate"));
    }
    Ok(certs)
}

fn starttls_parameters(config: &SmtpConfig) -> Result<TlsParameters, ConfigError> {
    let mut builder = TlsParameters::builder(config.host.clone());
    // The configured CAs are added to webpki's roots (lettre's default store), not instead.
    builder = builder.certificate_store(CertificateStore::WebpkiRoots);
    if let Some(pem) = &config.tls_ca_pem {
        for cert in ca_certificates(pem)? {
            let cert = Certificate::from_der(cert.to_vec())
                .map_err(|_| ConfigError::new("smtp.ca_file", "certificate refused"))?;
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build_rustls()
        .map_err(|_| ConfigError::new("smtp.tls", "cannot build the tls client"))
}

fn implicit_tls(
    config: &SmtpConfig,
) -> Result<
    (
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    ),
    ConfigError,
> {
    // webpki's roots, and the configured CAs added to them.
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = &config.tls_ca_pem {
        for cert in ca_certificates(pem)? {
            roots
                .add(cert)
                .map_err(|_| ConfigError::new("smtp.ca_file", "certificate refused"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| ConfigError::new("smtp.tls", "no usable tls version"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(config.host.clone())
        .map_err(|_| ConfigError::new("smtp.host", "not a valid tls server name"))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(client)), name))
}

/// A TLS stream lettre can drive (its `AsyncTokioStream` wants a peer address).
struct TlsTcp(tokio_rustls::client::TlsStream<TcpStream>);

impl fmt::Debug for TlsTcp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsTcp")
    }
}

impl AsyncTokioStream for TlsTcp {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl AsyncRead for TlsTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::secret::SecretText;

    fn email() -> EmailMessage {
        let mut text = SecretText::default();
        text.push_str("Gentile cliente,\nil PIN è 24680.\n.\n");
        let mut html = SecretText::default();
        html.push_str("<p>PIN <b>24680</b></p>\n");
        EmailMessage {
            subject: "I codici della carta 8039 •••• •••• 1234".into(),
            text,
            html,
        }
    }

    #[test]
    fn mime_has_crlf_headers_and_both_parts() {
        let key = super::super::IdempotencyKey::new("job-1").unwrap();
        let id = message_id(&key, "example.it");
        assert_eq!(id, message_id(&key, "example.it"));
        let out = mime_message(
            "a@example.it",
            "b@example.it",
            &id,
            &email(),
            SystemTime::now(),
            BodyEncoding::EightBit,
        )
        .unwrap();
        let text = std::str::from_utf8(out.expose_secret()).unwrap();
        assert!(text.contains(&format!("Message-ID: {id}\r\n")));
        assert!(text.contains("Subject: =?UTF-8?B?"));
        assert!(text.contains("il PIN è 24680.\r\n"));
        assert!(text.contains("text/html; charset=utf-8"));
        assert!(!text.replace("\r\n", "").contains('\n'));
        assert!(text.ends_with("--\r\n"));
        assert!(format!("{out:?}").contains("redacted"));
    }

    #[test]
    fn mime_refuses_header_injection_and_long_lines() {
        let mut e = email();
        e.subject = "x\r\nBcc: evil@example.com".into();
        assert!(mime_message(
            "a@x.it",
            "b@x.it",
            "<1@x>",
            &e,
            SystemTime::now(),
            BodyEncoding::EightBit
        )
        .is_err());
        let mut e = email();
        let mut long = SecretText::default();
        long.push_str(&"9".repeat(1000));
        e.text = long;
        let err = mime_message(
            "a@x.it",
            "b@x.it",
            "<1@x>",
            &e,
            SystemTime::now(),
            BodyEncoding::EightBit,
        )
        .unwrap_err();
        assert!(!err.reason().contains("999"));
    }

    #[test]
    fn date_is_numeric_and_auto_submitted_is_set() {
        let key = super::super::IdempotencyKey::new("job-1").unwrap();
        let id = message_id(&key, "example.it");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_665_568);
        let out = mime_message(
            "a@example.it",
            "b@example.it",
            &id,
            &email(),
            at,
            BodyEncoding::EightBit,
        )
        .unwrap();
        let text = std::str::from_utf8(out.expose_secret()).unwrap();
        let date = text.lines().find(|l| l.starts_with("Date: ")).unwrap();
        assert!(date.ends_with(" +0000"), "{date}");
        assert!(!date.contains("GMT"), "{date}");
        assert!(text.contains("\r\nAuto-Submitted: auto-generated\r\n"));
    }

    #[test]
    fn quoted_printable_is_seven_bit_short_lined_and_reversible() {
        let mut e = email();
        let mut long = SecretText::default();
        long.push_str(&format!("{}è= \n{} \nfine", "9".repeat(80), "ü".repeat(40)));
        e.text = long;
        let out = mime_message(
            "a@x.it",
            "b@x.it",
            "<1@x>",
            &e,
            SystemTime::now(),
            BodyEncoding::QuotedPrintable,
        )
        .unwrap();
        let raw = out.expose_secret();
        assert!(raw.is_ascii());
        let text = std::str::from_utf8(raw).unwrap();
        assert!(text.contains("Content-Transfer-Encoding: quoted-printable"));
        assert!(!text.contains("8bit"));
        let body = &text[text.find("\r\n\r\n").unwrap()..];
        for line in body.split("\r\n") {
            assert!(line.len() <= 76, "{line}");
            assert!(
                !line.ends_with(' '),
                "a trailing blank must be encoded: {line:?}"
            );
        }
        // Decode the plain part back.
        let part = text.split("quoted-printable\r\n\r\n").nth(1).unwrap();
        let part = &part[..part.find("\r\n--=_plico_").unwrap()];
        let joined = part.replace("=\r\n", "");
        let mut bytes = Vec::new();
        let b = joined.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'=' {
                bytes.push(u8::from_str_radix(&joined[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                bytes.push(b[i]);
                i += 1;
            }
        }
        let decoded = String::from_utf8(bytes).unwrap().replace("\r\n", "\n");
        assert_eq!(
            decoded,
            format!("{}è= \n{} \nfine", "9".repeat(80), "ü".repeat(40))
        );
    }

    #[test]
    fn a_login_without_tls_is_refused() {
        let mut c = SmtpConfig::new("127.0.0.1", 25, "plico@example.it");
        c.security = SmtpSecurity::InsecurePlaintext;
        c.auth = Some(("plico".into(), SecretString::from("pw")));
        let e = SmtpCourier::new(c.clone()).unwrap_err();
        assert_eq!(e.field, "smtp.username");
        c.security = SmtpSecurity::StartTls;
        SmtpCourier::new(c.clone()).unwrap();
        c.hello_name = "bad name".into();
        assert_eq!(SmtpCourier::new(c).unwrap_err().field, "smtp.ehlo_name");
    }

    #[test]
    fn subject_words_stay_short() {
        let s = encode_subject(&"è".repeat(100));
        for word in s.split("\r\n ") {
            assert!(word.len() <= 75, "{word}");
        }
    }

    #[test]
    fn tls_configs_build() {
        let mut c = SmtpConfig::new("relay.example.it", 465, "plico@example.it");
        c.security = SmtpSecurity::Tls;
        SmtpCourier::new(c.clone()).unwrap();
        c.security = SmtpSecurity::StartTls;
        SmtpCourier::new(c.clone()).unwrap();
        c.tls_ca_pem = Some(b"not pem".to_vec());
        assert!(SmtpCourier::new(c).is_err());
    }
}

//! The SMS courier: Kannel's `sendsms` HTTP interface (smsbox), with reqwest.
//!
//! One `GET {sendsms_url}?username=…&password=…&from=…&to=…&text=…&charset=UTF-8&coding=0
//! &dlr-mask=31&dlr-url=…` per message. Kannel answers `202 Accepted` once it has queued the
//! message (the SMSC has not seen it yet); the delivery reports then come back to `dlr-url`,
//! in which `%KEY%` is replaced by the job's idempotency key and Kannel itself replaces `%d`
//! by the report's status (1 delivered, 2 failed, 4 buffered, 8 accepted by the SMSC, 16
//! rejected by the SMSC). That callback belongs to the service, not to this crate.
//!
//! HTTPS: an `https` `sendsms_url` is verified against webpki's public roots plus, when
//! [`KannelConfig::tls_ca_pem`] is set, the given CA certificates (a gateway with a leaf from a
//! private CA). A certificate that chains to neither fails as `tls_untrusted`, lane-wide: a
//! gateway's certificate is not a verdict on one message.
//!
//! Answers and their [`FailureReason`]s: 2xx accepted; 401/403 (the gateway refused the
//! `sendsms-user`'s credentials) `gateway_auth`, which pauses the whole SMS lane (a password
//! rotation is not a verdict on any job); 400 (Kannel refuses the request: the receiver number,
//! denied or malformed) `rejected_number`, which ends that job; 408, 429 and 5xx (503: queue
//! full) `gateway_busy`, retried; other 4xx `other_permanent`. A refused or unreachable
//! connection is `connect_refused`, a timeout `timeout`, an untrusted certificate
//! `tls_untrusted`, another TLS failure `tls_failed`: all lane-wide.
//!
//! # Security
//! Kannel's `GET` interface puts the text (with its code) and the password in the query
//! string: reqwest and hyper build that URL in plain `String`s and buffers that are not wiped,
//! and Kannel's own access log records it. Use a gateway on loopback or a private network, and
//! keep Kannel's logs as secret as the codes. A reqwest error's text names the URL, so this
//! module never formats one: reasons are built from the HTTP status or the error's kind.
//! Redirects are not followed.

use super::{ConfigError, Courier, Destination, FailureReason, Message, Outgoing, SendError, Sent};
use crate::plan::Channel;
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;

/// Where and how the Kannel courier sends.
#[derive(Clone)]
pub struct KannelConfig {
    /// The smsbox's sendsms URL, e.g. `http://127.0.0.1:13013/cgi-bin/sendsms`.
    pub sendsms_url: String,
    /// A `sendsms-user`'s name.
    pub username: String,
    /// Its password.
    pub password: SecretString,
    /// Sender shown to the holder (number or alphanumeric, as the SMSC allows).
    pub from: String,
    /// Delivery-report URL; `%KEY%` becomes the idempotency key, Kannel fills `%d` (status).
    /// `None`: no delivery reports.
    pub dlr_url: Option<String>,
    /// Which reports Kannel sends (31: all of delivered, failed, buffered, SMSC accepted and
    /// SMSC rejected).
    pub dlr_mask: u8,
    /// Requests in flight at once.
    pub max_in_flight: usize,
    /// Limit on one request.
    pub timeout: Duration,
    /// PEM CA certificates trusted for an `https` `sendsms_url` in addition to webpki's public
    /// roots (`[dispatch.sms] ca_file`). `None`: the public roots only.
    pub tls_ca_pem: Option<Vec<u8>>,
}

impl KannelConfig {
    /// A configuration with defaults: `dlr-mask=31`, no `dlr-url`, 16 in flight, 10 s timeout.
    pub fn new(
        sendsms_url: impl Into<String>,
        username: impl Into<String>,
        password: SecretString,
        from: impl Into<String>,
    ) -> KannelConfig {
        KannelConfig {
            sendsms_url: sendsms_url.into(),
            username: username.into(),
            password,
            from: from.into(),
            dlr_url: None,
            dlr_mask: 31,
            max_in_flight: 16,
            timeout: Duration::from_secs(10),
            tls_ca_pem: None,
        }
    }
}

impl fmt::Debug for KannelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KannelConfig")
            .field("sendsms_url", &self.sendsms_url)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("from", &self.from)
            .field("dlr_url", &self.dlr_url)
            .field("dlr_mask", &self.dlr_mask)
            .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

/// Sends SMS through Kannel's `sendsms` interface.
#[derive(Debug)]
pub struct KannelCourier {
    config: KannelConfig,
    url: reqwest::Url,
    client: reqwest::Client,
    in_flight: Semaphore,
}

impl KannelCourier {
    /// A courier for this smsbox.
    ///
    /// # Errors
    /// [`ConfigError`] for a URL that does not parse, a `dlr_url` without `%KEY%`, a
    /// `tls_ca_pem` without a PEM certificate, or an HTTP client that cannot be built.
    pub fn new(config: KannelConfig) -> Result<KannelCourier, ConfigError> {
        let url = reqwest::Url::parse(&config.sendsms_url)
            .map_err(|_| ConfigError::new("sms.sendsms_url", "not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::new("sms.sendsms_url", "not an http(s) URL"));
        }
        if let Some(dlr) = &config.dlr_url {
            if !dlr.contains("%KEY%") {
                return Err(ConfigError::new("sms.dlr_url", "must contain %KEY%"));
            }
        }
        if config.max_in_flight == 0 {
            return Err(ConfigError::new("sms.max_in_flight", "must be at least 1"));
        }
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = &config.tls_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|_| ConfigError::new("sms.ca_file", "not PEM certificates"))?;
            if certs.is_empty() {
                return Err(ConfigError::new("sms.ca_file", "no certificate"));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .pool_max_idle_per_host(config.max_in_flight)
            .build()
            .map_err(|_| ConfigError::new("sms", "cannot build the http client"))?;
        Ok(KannelCourier {
            in_flight: Semaphore::new(config.max_in_flight),
            config,
            url,
            client,
        })
    }
}

#[async_trait::async_trait]
impl Courier for KannelCourier {
    fn channel(&self) -> Channel {
        Channel::Sms
    }

    async fn send(&self, message: &Outgoing) -> Result<Sent, SendError> {
        let (Message::Sms(sms), Destination::Phone(to)) = (&message.message, &message.destination)
        else {
            return Err(SendError::permanent(
                "sms courier carries sms to phone numbers only",
            ));
        };
        let dlr_url = self
            .config
            .dlr_url
            .as_ref()
            .map(|t| t.replace("%KEY%", message.key.as_str()));
        let dlr_mask = self.config.dlr_mask.to_string();
        let mut query: Vec<(&str, &str)> = vec![
            ("username", &self.config.username),
            ("password", self.config.password.expose_secret()),
            ("from", &self.config.from),
            ("to", to),
            ("text", sms.text.expose_secret()),
            ("charset", "UTF-8"),
            ("coding", "0"),
        ];
        if let Some(dlr_url) = &dlr_url {
            query.push(("dlr-mask", &dlr_mask));
            query.push(("dlr-url", dlr_url));
        }
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| SendError::temporary("sms: courier closed"))?;
        let response = self
            .client
            .get(self.url.clone())
            .query(&query)
            .send()
            .await
            .map_err(|e| request_error(&e))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| request_error(&e))?;
        if status.is_success() {
            return Ok(Sent {
                peer_id: peer_text(&body),
                at: SystemTime::now(),
            });
        }
        Err(SendError::failed(
            status_reason(status.as_u16()),
            format!("kannel sendsms: http {}", status.as_u16()),
        ))
    }
}

/// A reqwest error as a reason, without its text (which names the URL, query included).
fn request_error(e: &reqwest::Error) -> SendError {
    if let Some(tls) = tls_error(e) {
        return match tls {
            rustls::Error::InvalidCertificate(_) => SendError::failed(
                FailureReason::TlsUntrusted,
                "kannel sendsms: the gateway's certificate is not trusted",
            ),
            _ => SendError::failed(
                FailureReason::TlsFailed,
                "kannel sendsms: tls handshake failed",
            ),
        };
    }
    if e.is_timeout() {
        SendError::failed(FailureReason::Timeout, "kannel sendsms: timed out")
    } else if e.is_connect() {
        SendError::failed(
            FailureReason::ConnectRefused,
            "kannel sendsms: cannot connect",
        )
    } else if e.is_builder() {
        SendError::failed(FailureReason::BadMessage, "kannel sendsms: bad request")
    } else {
        SendError::failed(
            FailureReason::ConnectionLost,
            "kannel sendsms: request failed",
        )
    }
}

/// The reason code of a sendsms answer that is not 2xx.
fn status_reason(status: u16) -> FailureReason {
    match status {
        401 | 403 => FailureReason::GatewayAuth,
        400 => FailureReason::RejectedNumber,
        408 | 429 | 500..=599 => FailureReason::GatewayBusy,
        _ => FailureReason::OtherPermanent,
    }
}

/// The rustls error under a request error, if the TLS handshake failed.
///
/// hyper wraps it in an `io::Error`, whose `source()` skips the wrapped error itself, so each
/// `io::Error` in the chain is opened with `get_ref`.
fn tls_error(e: &reqwest::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                    return Some(tls);
                }
                next = Some(inner);
                continue;
            }
        }
        next = err.source();
    }
    None
}

/// Kannel's answer (`0: Accepted for delivery`) on one line, ≤ 200 bytes.
fn peer_text(body: &str) -> String {
    body.trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::courier::FailureScope;

    #[test]
    fn answers_are_classified() {
        let scope = |s| status_reason(s).scope();
        assert_eq!(status_reason(403), FailureReason::GatewayAuth);
        assert_eq!(scope(403), FailureScope::Lane);
        assert_eq!(status_reason(400), FailureReason::RejectedNumber);
        assert_eq!(scope(400), FailureScope::Final);
        for s in [408, 429, 500, 503] {
            assert_eq!(scope(s), FailureScope::Retry, "{s}");
        }
        assert_eq!(scope(404), FailureScope::Final);
    }

    #[test]
    fn config_is_checked_and_redacted() {
        let c = KannelConfig::new(
            "http://127.0.0.1:13013/cgi-bin/sendsms",
            "plico",
            SecretString::from("hunter2"),
            "PLICO",
        );
        assert!(!format!("{c:?}").contains("hunter2"));
        KannelCourier::new(c.clone()).unwrap();
        let mut bad = c.clone();
        bad.dlr_url = Some("http://127.0.0.1/dlr?status=%d".into());
        assert!(KannelCourier::new(bad).is_err());
        let mut bad = c.clone();
        bad.sendsms_url = "ftp://x".into();
        assert!(KannelCourier::new(bad).is_err());
        for pem in [&b"not pem"[..], b""] {
            let mut bad = c.clone();
            bad.tls_ca_pem = Some(pem.to_vec());
            let err = KannelCourier::new(bad).unwrap_err();
            assert_eq!(err.field, "sms.ca_file");
        }
    }
}

//! The HTTP client of the CLI commands that talk to a running server.
//!
//! It trusts the usual web roots plus, with `--ca-cert`, a private CA. It follows no
//! redirects (a redirect must never carry a share or a token elsewhere), uses no proxy for
//! plain HTTP, and turns the API's error body into a readable error.
//!
//! Calls time out after [`CALL_TIMEOUT`]; bulk uploads ([`Client::upload`]) have no overall
//! timeout, since a large file takes as long as it takes, and their answer comes only once the
//! batch is durable.
//!
//! Commands that need an account take its bearer token from `--token-file FILE` or the
//! `PLICO_TOKEN` environment variable ([`AuthArgs`]); the token is never printed, and is sent
//! only over HTTPS or to a loopback address.

use anyhow::{bail, Context, Result};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Connection options shared by the client commands.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Base URL of the running server.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "PLICO_ADDR",
        default_value = "http://127.0.0.1:8200"
    )]
    pub addr: String,
    /// PEM file of a CA to trust for the server's certificate (a private CA).
    #[arg(long, global = true, value_name = "PEM", env = "PLICO_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

/// The bearer token of the commands that act as an account.
#[derive(Debug, clap::Args)]
pub struct AuthArgs {
    /// File holding your bearer token, one line (else the PLICO_TOKEN environment variable).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// Longest a plain API call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variable a token may come from.
pub const TOKEN_ENV: &str = "PLICO_TOKEN";

impl AuthArgs {
    /// The token: from `--token-file`, else from `PLICO_TOKEN`.
    pub fn token(&self) -> Result<SecretString> {
        if let Some(path) = &self.token_file {
            return super::files::read_token(path);
        }
        match std::env::var(TOKEN_ENV) {
            Ok(t) if !t.trim().is_empty() => Ok(SecretString::from(t.trim().to_owned())),
            _ => bail!("no token: pass --token-file FILE or set {TOKEN_ENV}"),
        }
    }
}

/// A client bound to one server.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<SecretString>,
}

/// `GET /v1/sys/status`, as the client reads it.
pub type Status = vault::HsmStatus;

/// `POST /v1/sys/unseal`'s answer.
pub type Progress = vault::UnsealProgress;

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    code: String,
    message: String,
}

#[derive(Serialize)]
struct UnsealBody<'a> {
    share: &'a str,
}

#[derive(Serialize)]
struct ResetBody {
    reset: bool,
}

impl Client {
    /// A client for `args.addr`.
    pub fn new(args: &ServerArgs) -> Result<Self> {
        let base = Url::parse(&args.addr)
            .with_context(|| format!("--addr {:?} is not a URL", args.addr))?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!(
                "--addr must be an http:// or https:// URL, got {}",
                args.addr
            );
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10));
        if base.scheme() == "http" {
            // A proxy would see plain HTTP, shares included: talk to the server directly.
            builder = builder.no_proxy();
        }
        if let Some(ca) = &args.ca_cert {
            builder = builder.add_root_certificate(load_ca(ca)?);
        }
        let http = builder.build().context("cannot set up the HTTP client")?;
        Ok(Client {
            http,
            base,
            token: None,
        })
    }

    /// A client for `server` that authenticates with the token of `auth`.
    pub fn with_token(server: &ServerArgs, auth: &AuthArgs) -> Result<Self> {
        let mut client = Client::new(server)?;
        if !client.is_private_channel() {
            bail!(
                "refusing to send a token over plain http to {}: use https (and --ca-cert for a \
                 private CA)",
                client.base
            );
        }
        client.token = Some(auth.token()?);
        Ok(client)
    }

    /// True if requests stay on this machine or are encrypted.
    pub fn is_private_channel(&self) -> bool {
        if self.base.scheme() == "https" {
            return true;
        }
        let host = self.base.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The server's HSM status.
    pub async fn status(&self) -> Result<Status> {
        self.call(Method::GET, "/v1/sys/status", None::<&()>).await
    }

    /// Submits one share.
    pub async fn unseal(&self, share: &SecretString) -> Result<Progress> {
        let body = UnsealBody {
            share: share.expose_secret(),
        };
        self.call(Method::POST, "/v1/sys/unseal", Some(&body)).await
    }

    /// Forgets the shares submitted so far.
    pub async fn reset(&self) -> Result<Progress> {
        self.call(
            Method::POST,
            "/v1/sys/unseal",
            Some(&ResetBody { reset: true }),
        )
        .await
    }

    /// `GET path`, answer as JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// `POST path` with a JSON body, answer as JSON.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `GET path`, the answer's body copied to `out` as it arrives. Returns the bytes copied.
    pub async fn download(&self, path: &str, out: &mut dyn std::io::Write) -> Result<u64> {
        let (url, res) = self.send(Method::GET, path, None::<&()>).await?;
        Self::copy_body(url, res, out).await
    }

    /// `POST path` with no body and no overall timeout (long work, such as a backup), the
    /// answer's body copied to `out` as it arrives. Returns the bytes copied.
    pub async fn download_post(&self, path: &str, out: &mut dyn std::io::Write) -> Result<u64> {
        let url = self.base.join(path).context("bad request path")?;
        let mut req = self.http.post(url.clone());
        if let Some(token) = &self.token {
            req = req.bearer_auth(token.expose_secret());
        }
        let res = req
            .send()
            .await
            .map_err(|e| self.transport_error(e, format!("cannot reach {}", self.base)))?;
        Self::copy_body(url, res, out).await
    }

    async fn copy_body(
        url: Url,
        mut res: reqwest::Response,
        out: &mut dyn std::io::Write,
    ) -> Result<u64> {
        if !res.status().is_success() {
            let status = res.status();
            let bytes = res.bytes().await.unwrap_or_default();
            return Err(Self::error(&url, status, &bytes));
        }
        let mut n = 0u64;
        while let Some(chunk) = res
            .chunk()
            .await
            .with_context(|| format!("reading the answer of {url} (transfer broken)"))?
        {
            out.write_all(&chunk).context("cannot write the output")?;
            n += chunk.len() as u64;
        }
        Ok(n)
    }

    /// `POST path` with a JSON body; the answer's body (on success) into a zeroizing buffer:
    /// for answers that carry a secret, such as the counter's page.
    pub async fn post_secret_bytes<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        let (url, mut res) = self.send(Method::POST, path, Some(body)).await?;
        if !res.status().is_success() {
            let status = res.status();
            let bytes = res.bytes().await.unwrap_or_default();
            return Err(Self::error(&url, status, &bytes));
        }
        let mut out = zeroize::Zeroizing::new(Vec::new());
        while let Some(chunk) = res
            .chunk()
            .await
            .with_context(|| format!("reading the answer of {url} (transfer broken)"))?
        {
            // Grow by hand so that no reallocation leaves a copy behind unzeroized.
            if out.capacity() - out.len() < chunk.len() {
                let mut bigger =
                    zeroize::Zeroizing::new(Vec::with_capacity((out.len() + chunk.len()) * 2));
                bigger.extend_from_slice(&out);
                out = bigger;
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(Url, reqwest::Response)> {
        let url = self.base.join(path).context("bad request path")?;
        let mut req = self.http.request(method, url.clone()).timeout(CALL_TIMEOUT);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token.expose_secret());
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req
            .send()
            .await
            .map_err(|e| self.transport_error(e, format!("cannot reach {}", self.base)))?;
        Ok((url, res))
    }

    /// `POST path` with a bulk [`Payload`] (a file streamed as it is read, or a JSON value),
    /// without an overall timeout. An answer whose status is in `outcomes` (or any success)
    /// is parsed as `T` and returned with its status; any other is the API's error.
    pub async fn post_bulk<T: DeserializeOwned>(
        &self,
        path: &str,
        payload: Payload,
        outcomes: &[StatusCode],
    ) -> Result<(StatusCode, T)> {
        let url = self.base.join(path).context("bad request path")?;
        let (content_type, body, length, failed) = match payload {
            Payload::Stream { body, length } => (
                "application/octet-stream",
                body,
                length,
                format!("upload to {url} failed"),
            ),
            Payload::Json(bytes) => (
                "application/json",
                reqwest::Body::from(bytes),
                None,
                format!("cannot reach {}", self.base),
            ),
        };
        let mut req = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        if let Some(n) = length {
            req = req.header(reqwest::header::CONTENT_LENGTH, n);
        }
        if let Some(token) = &self.token {
            req = req.bearer_auth(token.expose_secret());
        }
        let res = req
            .send()
            .await
            .map_err(|e| self.transport_error(e, failed))?;
        let status = res.status();
        let bytes = res
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        if status.is_success() || outcomes.contains(&status) {
            let parsed = serde_json::from_slice(&bytes)
                .with_context(|| format!("unexpected answer from {url}"))?;
            return Ok((status, parsed));
        }
        Err(Self::error(&url, status, &bytes))
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let (url, res) = self.send(method, path, body).await?;
        let status = res.status();
        let bytes = res
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .with_context(|| format!("unexpected answer from {url}"));
        }
        Err(Self::error(&url, status, &bytes))
    }

    /// A failed exchange as an error a person can act on: `what`, the transport's own words,
    /// and a hint when the scheme of `--addr` does not match what the port speaks.
    fn transport_error(&self, e: reqwest::Error, what: String) -> anyhow::Error {
        match scheme_hint(self.base.scheme(), &e) {
            Some(hint) => anyhow::Error::new(e).context(format!("{what} ({hint})")),
            None => anyhow::Error::new(e).context(what),
        }
    }

    fn error(url: &Url, status: StatusCode, bytes: &[u8]) -> anyhow::Error {
        match serde_json::from_slice::<ErrorBody>(bytes) {
            Ok(e) => anyhow::anyhow!(
                "server: {} ({}, HTTP {})",
                e.error.message,
                e.error.code,
                status.as_u16()
            ),
            Err(_) if status == StatusCode::NOT_FOUND => {
                anyhow::anyhow!("{url}: not found; is --addr a plico server?")
            }
            Err(_) => anyhow::anyhow!("{url}: HTTP {status}"),
        }
    }
}

/// The body of a bulk request ([`Client::post_bulk`]).
pub enum Payload {
    /// A file streamed as `application/octet-stream` as it is read (batch and registry
    /// uploads), with its length when known.
    Stream {
        /// The bytes, as they are read.
        body: reqwest::Body,
        /// `Content-Length`, when known.
        length: Option<u64>,
    },
    /// A JSON value, already serialized (generation).
    Json(Vec<u8>),
}

impl Payload {
    /// `value` as a JSON body.
    ///
    /// # Errors
    /// When `value` cannot be serialized.
    pub fn json<B: Serialize + ?Sized>(value: &B) -> Result<Payload> {
        Ok(Payload::Json(
            serde_json::to_vec(value).context("cannot encode the request")?,
        ))
    }
}

/// A hint for the classic mistakes: plain `http://` to a TLS port (the server's TLS alert does
/// not parse as HTTP) and `https://` to a plain HTTP port (the answer is not a TLS record).
fn scheme_hint(scheme: &str, e: &reqwest::Error) -> Option<&'static str> {
    let mut chain = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    let said = |words: &str| chain.iter().any(|m| m.contains(words));
    if scheme == "http" && (said("invalid HTTP version") || said("invalid HTTP status")) {
        return Some(
            "the server answered in something other than plain HTTP: if it serves TLS, use an \
             https:// --addr (and --ca-cert for a private CA)",
        );
    }
    if scheme == "https" && (said("InvalidContentType") || said("corrupt message")) {
        return Some(
            "the server does not speak TLS on this port: a `serve --dev` on loopback is plain \
             http://",
        );
    }
    None
}

fn load_ca(path: &Path) -> Result<reqwest::Certificate> {
    let pem =
        std::fs::read(path).with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
    reqwest::Certificate::from_pem(&pem)
        .with_context(|| format!("--ca-cert {} is not a PEM certificate", path.display()))
}

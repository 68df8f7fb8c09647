//! The HTTP client of the CLI commands that talk to a running server.
//!
//! It trusts the usual web roots plus, with `--ca-cert`, a private CA. It follows no
//! redirects (a redirect must never carry a share elsewhere), uses no proxy for plain HTTP,
//! and turns the API's error body into a readable error.

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
        value_name = "URL",
        env = "PLICO_ADDR",
        default_value = "http://127.0.0.1:8200"
    )]
    pub addr: String,
    /// PEM file of a CA to trust for the server's certificate (a private CA).
    #[arg(long, value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
}

/// A client bound to one server.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
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
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60));
        if base.scheme() == "http" {
            // A proxy would see plain HTTP, shares included: talk to the server directly.
            builder = builder.no_proxy();
        }
        if let Some(ca) = &args.ca_cert {
            builder = builder.add_root_certificate(load_ca(ca)?);
        }
        let http = builder.build().context("cannot set up the HTTP client")?;
        Ok(Client { http, base })
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

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let url = self.base.join(path).context("bad request path")?;
        let mut req = self.http.request(method, url.clone());
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = res.status();
        let bytes = res
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .with_context(|| format!("unexpected answer from {url}"));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => bail!(
                "server: {} ({}, HTTP {})",
                e.error.message,
                e.error.code,
                status.as_u16()
            ),
            Err(_) if status == StatusCode::NOT_FOUND => {
                bail!("{url}: not found; is --addr a plico server?")
            }
            Err(_) => bail!("{url}: HTTP {status}"),
        }
    }
}

fn load_ca(path: &Path) -> Result<reqwest::Certificate> {
    let pem =
        std::fs::read(path).with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
    reqwest::Certificate::from_pem(&pem)
        .with_context(|| format!("--ca-cert {} is not a PEM certificate", path.display()))
}

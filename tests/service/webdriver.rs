//! A small WebDriver client (W3C protocol, JSON over HTTP with reqwest) for the console's
//! browser tests: Debian's chromedriver driving headless Chromium. Only what the tests use:
//! a session, navigation, elements by CSS selector, clicks, typing, text, the page source,
//! scripts and screenshots.

use super::peers::{free_ports, wait_for_port, Peer};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver and one browser session, ended and killed when dropped.
pub(super) struct Driver {
    http: reqwest::Client,
    session: String,
    _chromedriver: Peer,
}

impl Driver {
    /// Starts chromedriver on a free port and a headless Chromium session downloading into
    /// `downloads`; chromedriver's log goes to `log`.
    pub(super) async fn start(downloads: &Path, log: &Path) -> Driver {
        let port = free_ports(1)[0];
        let mut peer = Peer::spawn(
            "chromedriver",
            Command::new("chromedriver").arg(format!("--port={port}")),
            log,
        );
        wait_for_port(port, &mut peer).await;
        let http = reqwest::Client::new();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--window-size=1280,900", "--disable-dev-shm-usage"],
                "prefs": {
                    "download.default_directory": downloads.to_str().unwrap(),
                    "download.prompt_for_download": false,
                }
            }
        }}});
        let res: Value = http
            .post(format!("http://127.0.0.1:{port}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = res["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {res}"))
            .to_owned();
        Driver {
            http,
            session: format!("http://127.0.0.1:{port}/session/{id}"),
            _chromedriver: peer,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        match self.try_call(method, path, body).await {
            Ok(v) => v,
            Err(e) => panic!("webdriver {path}: {e}"),
        }
    }

    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.session);
        let mut req = self.http.request(method, &url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res: Value = req.send().await.unwrap().json().await.unwrap();
        if let Some(e) = res["value"]["error"].as_str() {
            return Err(format!("{e}: {}", res["value"]["message"]));
        }
        Ok(res["value"].clone())
    }

    /// Runs `f` until it succeeds, while the page is still changing (a click's navigation not
    /// yet done: the element is stale or not there yet), for up to 10 s.
    async fn settled<T>(&self, what: &str, mut f: impl AsyncFnMut() -> Result<T, String>) -> T {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match f().await {
                Ok(v) => return v,
                Err(e) if gone(&e) && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("webdriver {what}: {e}"),
            }
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Opens `url`.
    pub(super) async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// The current URL.
    pub(super) async fn url(&self) -> String {
        self.get("/url").await.as_str().unwrap().to_owned()
    }

    /// The element matching `css`, if the page has it now.
    async fn try_find(&self, css: &str) -> Result<String, String> {
        let v = self
            .try_call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(v[ELEMENT].as_str().unwrap().to_owned())
    }

    /// How many elements match `css`.
    pub(super) async fn count(&self, css: &str) -> usize {
        self.post("/elements", json!({"using": "css selector", "value": css}))
            .await
            .as_array()
            .map_or(0, Vec::len)
    }

    /// Clicks the element matching `css`.
    pub(super) async fn click(&self, css: &str) {
        self.settled(css, async || {
            let el = self.try_find(css).await?;
            let path = format!("/element/{el}/click");
            self.try_call(reqwest::Method::POST, &path, Some(json!({})))
                .await
        })
        .await;
    }

    /// Clicks the link or submit button matching `css` and waits until the browser shows the
    /// page that answers it (the old document gone, the new one loaded), for up to 10 s: a
    /// plain click can return while a form's answer is still on its way, and what is read
    /// next would be the old page.
    pub(super) async fn submit(&self, css: &str) {
        let old = self
            .settled("html", async || self.try_find("html").await)
            .await;
        self.click(css).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let path = format!("/element/{old}/name");
            match self.try_call(reqwest::Method::GET, &path, None).await {
                Err(e) if gone(&e) => break,
                Err(e) => panic!("webdriver {css}: {e}"),
                Ok(_) if std::time::Instant::now() >= deadline => {
                    panic!("clicking {css} did not load a new page within 10 s")
                }
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
        loop {
            let state = self
                .try_call(
                    reqwest::Method::POST,
                    "/execute/sync",
                    Some(json!({"script": "return document.readyState", "args": []})),
                )
                .await;
            match state {
                Ok(v) if v == "complete" => return,
                _ if std::time::Instant::now() >= deadline => {
                    panic!("the page after {css} did not finish loading within 10 s")
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    /// Types `text` into the element matching `css`.
    pub(super) async fn fill(&self, css: &str, text: &str) {
        self.settled(css, async || {
            let el = self.try_find(css).await?;
            let path = format!("/element/{el}/value");
            self.try_call(reqwest::Method::POST, &path, Some(json!({ "text": text })))
                .await
        })
        .await;
    }

    /// The visible text of the element matching `css`.
    pub(super) async fn text(&self, css: &str) -> String {
        self.settled(css, async || {
            let el = self.try_find(css).await?;
            let path = format!("/element/{el}/text");
            let v = self.try_call(reqwest::Method::GET, &path, None).await?;
            Ok(v.as_str().unwrap().to_owned())
        })
        .await
    }

    /// The page's source.
    pub(super) async fn source(&self) -> String {
        self.get("/source").await.as_str().unwrap().to_owned()
    }

    /// Runs `script` in the page (WebDriver's own scripts are not the page's: CSP does not
    /// apply to them).
    pub(super) async fn execute(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// Runs `script` in the page and waits for it to call its last argument (a callback)
    /// with the result.
    pub(super) async fn execute_async(&self, script: &str) -> Value {
        self.post("/execute/async", json!({"script": script, "args": []}))
            .await
    }

    /// Saves a screenshot of the page as `path` (PNG).
    pub(super) async fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let png = self.get("/screenshot").await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Ends the browser; chromedriver itself is killed by its `Peer`.
        let session = self.session.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _ = reqwest::Client::new().delete(&session).send().await;
            });
        })
        .join();
    }
}

/// Whether a WebDriver error says the element is not (or no longer) in the page: stale, not
/// found yet, or, as chromedriver sometimes words it while a navigation replaces the
/// document, an inspector error about a node that "does not belong to the document".
fn gone(e: &str) -> bool {
    e.starts_with("stale element")
        || e.starts_with("no such element")
        || e.contains("does not belong to the document")
}

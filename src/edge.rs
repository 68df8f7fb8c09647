//! The listener's edge: the accept loop, and the limits that keep one client from holding the
//! service (security rule 20), for plain HTTP and TLS alike.
//!
//! - **Caps.** At most [`EdgeLimits::max_connections`] connections at once, and at most
//!   [`EdgeLimits::max_connections_per_address`] from one client address. A connection beyond
//!   a cap is accepted and closed at once: the loop keeps accepting, so the kernel's backlog
//!   never fills and a new client is never left waiting behind a flood. The total cap is lowered
//!   at start to what the process' descriptor limit allows ([`EdgeLimits::fit_descriptors`]), so
//!   the service never runs out of descriptors.
//! - **A reserve for unsealing and probes.** Beyond the total cap, up to
//!   [`EdgeLimits::reserved_connections`] more connections are accepted, and those serve only
//!   `/healthz`, `/readyz`, `/metrics` and `/v1/sys/*` (unseal, seal status): every other
//!   request on them is
//!   `503 busy`, and the connection closes. Only an address holding fewer than two connections
//!   gets one, so a flood from a few addresses cannot take the reserve. So custodians can
//!   unseal, the orchestrator can probe and Prometheus can scrape (the moment a saturated
//!   service most needs watching) while the cap is hit. (A reserved share of one listener, not a second listener: the
//!   custodians and the probes need no other address or port.)
//! - **Deadlines.** The TLS handshake must end within [`EdgeLimits::handshake_timeout`]. A request
//!   head must arrive whole within [`EdgeLimits::head_timeout`]: counted from the accept (or the
//!   handshake) for a new connection, and from the first byte of the next request on a kept-alive
//!   one. A kept-alive connection that sends nothing is closed after
//!   [`EdgeLimits::idle_timeout`]; so is a connection whose writes stall that long (a client that
//!   does not read its answer). A request being served is never cut by these: the routes' own
//!   timeouts (`408` after 30 s for small requests) apply.
//! - **Body rate.** Every request body must bring at least
//!   [`EdgeLimits::min_body_bytes_per_sec`] over each [`EdgeLimits::body_rate_window`] the
//!   service spends waiting for it (time the service itself does not read, while it works, does
//!   not count). A long upload is fine; an idle or trickling one is cut (`408`, or the upload's
//!   own error).
//! - **Bodies are read before the answer.** Up to [`crate::api::BODY_LIMIT`] bytes of every
//!   request body are read before the router sees the request, so a route that ignores its body
//!   still leaves the connection clean for the next request (HTTP/1 keep-alive needs the whole
//!   body read before the next request can be parsed).
//!
//! Each request carries the client's address as axum's [`ConnectInfo`]. Shutdown stops the
//! accept loop, lets idle connections close and in-flight requests finish, within a grace
//! period the caller bounds.

use crate::api::{ApiError, ErrorCode, BODY_LIMIT};
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;
use vault::lock;

/// The limits of the edge, from `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Longest TLS handshake.
    pub handshake_timeout: Duration,
    /// Longest wait for a whole request head (from the accept, or from the first byte of a
    /// kept-alive connection's next request).
    pub head_timeout: Duration,
    /// Longest silence of a kept-alive connection between requests, and longest stall of a
    /// write.
    pub idle_timeout: Duration,
    /// Connections at once, beyond the reserve.
    pub max_connections: u32,
    /// Connections at once from one client address (the reserve included).
    pub max_connections_per_address: u32,
    /// Connections beyond `max_connections` that serve only the probes and `/v1/sys/*`.
    pub reserved_connections: u32,
    /// Least body bytes a second, over each `body_rate_window` of waiting.
    pub min_body_bytes_per_sec: u32,
    /// The window of the body rate.
    pub body_rate_window: Duration,
}

/// Longest TLS handshake when nothing says otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a request head when nothing says otherwise.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest keep-alive silence when nothing says otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections at once when nothing says otherwise (lowered to the descriptor limit).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// Connections at once from one address when nothing says otherwise: room for an office of
/// browsers behind one NAT address, or a CMS with a large pool.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: u32 = 256;
/// Reserved connections for the probes and `/v1/sys/*` when nothing says otherwise.
pub const DEFAULT_RESERVED_CONNECTIONS: u32 = 32;
/// Least body rate when nothing says otherwise: 1 KiB/s (a 2 GiB upload at that rate would
/// take 24 days; real links are thousands of times faster).
pub const DEFAULT_MIN_BODY_BYTES_PER_SEC: u32 = 1024;
/// The window of the body rate when nothing says otherwise.
pub const DEFAULT_BODY_RATE_WINDOW: Duration = Duration::from_secs(10);

/// Descriptors kept for the store, the HSM file, logs, print files and the like when the
/// connection cap is fitted to the descriptor limit.
pub const DESCRIPTOR_HEADROOM: u64 = 256;

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            head_timeout: DEFAULT_HEAD_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            reserved_connections: DEFAULT_RESERVED_CONNECTIONS,
            min_body_bytes_per_sec: DEFAULT_MIN_BODY_BYTES_PER_SEC,
            body_rate_window: DEFAULT_BODY_RATE_WINDOW,
        }
    }
}

impl EdgeLimits {
    /// These limits with the connection caps fitted to `descriptors` (the process' limit of
    /// open files): every connection holds one, and [`DESCRIPTOR_HEADROOM`] stay free for the
    /// rest of the service. The reserve is kept whole as long as the limit allows.
    pub fn fit_descriptors(mut self, descriptors: u64) -> Self {
        let usable = descriptors.saturating_sub(DESCRIPTOR_HEADROOM).max(2);
        let usable = u32::try_from(usable).unwrap_or(u32::MAX);
        let reserved = self.reserved_connections.min(usable / 2);
        let general = self.max_connections.min(usable - reserved).max(1);
        self.reserved_connections = reserved;
        self.max_connections = general;
        self
    }
}

/// Raises the soft limit of open files to the hard one and returns it (or the soft limit if it
/// cannot be raised).
fn descriptor_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => u64::from(DEFAULT_MAX_CONNECTIONS) + DESCRIPTOR_HEADROOM,
    }
}

/// Takes a lock whose data stays consistent at every step (counters): poison is harmless.

// ---------------------------------------------------------------------------------------------
// Connection caps
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Counts {
    general: u32,
    reserved: u32,
    per_address: HashMap<IpAddr, u32>,
}

/// The connections open now, by kind and address.
#[derive(Debug, Clone)]
struct Registry {
    counts: Arc<Mutex<Counts>>,
    limits: EdgeLimits,
}

/// Connections an address may already hold and still get a reserved one: the reserve is for
/// a custodian or a probe arriving while others flood, not for the flood itself.
const RESERVE_PER_ADDRESS: u32 = 2;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    PerAddress,
    Total,
}

/// A connection's place in the [`Registry`], given back when dropped.
#[derive(Debug)]
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
    reserved: bool,
}

impl Registry {
    fn admit(&self, ip: IpAddr) -> Result<Slot, Refusal> {
        let mut c = lock(&self.counts);
        let from_ip = c.per_address.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.limits.max_connections_per_address {
            return Err(Refusal::PerAddress);
        }
        let reserved = if c.general < self.limits.max_connections {
            c.general += 1;
            false
        } else if c.reserved < self.limits.reserved_connections && from_ip < RESERVE_PER_ADDRESS {
            c.reserved += 1;
            true
        } else {
            return Err(Refusal::Total);
        };
        *c.per_address.entry(ip).or_insert(0) += 1;
        Ok(Slot {
            counts: self.counts.clone(),
            ip,
            reserved,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        if self.reserved {
            c.reserved = c.reserved.saturating_sub(1);
        } else {
            c.general = c.general.saturating_sub(1);
        }
        if let Some(n) = c.per_address.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_address.remove(&self.ip);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Deadlines of one connection
// ---------------------------------------------------------------------------------------------

/// What a connection is doing, for its watchdog.
#[derive(Debug)]
struct Activity {
    /// Requests being served.
    in_flight: u32,
    /// Since when no request is being served (the accept, or the end of the last answer).
    idle_since: Instant,
    /// Whether a request was served on this connection.
    served: bool,
    /// The first byte read while no request was being served: a request head is coming.
    head_started: Option<Instant>,
    /// Since when a write waits for the client to read.
    write_blocked_since: Option<Instant>,
}

type Shared = Arc<Mutex<Activity>>;

impl Activity {
    fn new() -> Shared {
        Arc::new(Mutex::new(Activity {
            in_flight: 0,
            idle_since: Instant::now(),
            served: false,
            head_started: None,
            write_blocked_since: None,
        }))
    }

    /// When the connection is due to close if nothing changes, and why.
    fn deadline(&self, limits: &EdgeLimits, now: Instant) -> (Instant, Option<&'static str>) {
        if let Some(t) = self.write_blocked_since {
            return (t + limits.idle_timeout, Some("the client stopped reading"));
        }
        if self.in_flight > 0 {
            // Serving: the routes' own limits apply; look again later.
            return (now + limits.idle_timeout, None);
        }
        match self.head_started {
            Some(t) => (t + limits.head_timeout, Some("request head deadline")),
            None if self.served => (self.idle_since + limits.idle_timeout, Some("idle timeout")),
            None => (
                self.idle_since + limits.head_timeout,
                Some("request head deadline"),
            ),
        }
    }
}

/// Resolves when the connection has passed one of its deadlines, with the reason.
async fn watchdog(activity: Shared, limits: EdgeLimits) -> &'static str {
    loop {
        let now = Instant::now();
        let (at, why) = lock(&activity).deadline(&limits, now);
        if at <= now {
            if let Some(why) = why {
                return why;
            }
        }
        tokio::time::sleep_until(at.max(now + Duration::from_millis(10))).await;
    }
}

/// A stream that tells its connection's [`Activity`] when bytes come in and when writes stall.
struct Watched<S> {
    inner: S,
    activity: Shared,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let mut a = lock(&self.activity);
            if a.in_flight == 0 && a.head_started.is_none() {
                a.head_started = Some(Instant::now());
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> Watched<S> {
    fn note_write<T>(&self, polled: &Poll<T>) {
        let mut a = lock(&self.activity);
        match polled {
            Poll::Pending => {
                if a.write_blocked_since.is_none() {
                    a.write_blocked_since = Some(Instant::now());
                }
            }
            Poll::Ready(_) => a.write_blocked_since = None,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.note_write(&polled);
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request being served: counted in its connection's [`Activity`] until dropped (with the
/// answer's body, once it is written).
#[derive(Debug)]
struct InFlight(Shared);

impl InFlight {
    fn start(activity: &Shared) -> InFlight {
        let mut a = lock(activity);
        a.in_flight += 1;
        a.head_started = None;
        a.served = true;
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut a = lock(&self.0);
        a.in_flight = a.in_flight.saturating_sub(1);
        if a.in_flight == 0 {
            a.idle_since = Instant::now();
        }
    }
}

/// An answer's body that keeps its request counted as in flight until it is written.
struct Counted {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------------------------
// Request bodies: least rate, read ahead
// ---------------------------------------------------------------------------------------------

/// The error of a body that came too slowly.
#[derive(Debug, thiserror::Error)]
#[error("the request body came slower than {0} bytes a second")]
pub struct BodyTooSlow(u32);

/// A request body that fails when it brings less than the least rate over a window of
/// waiting for it.
struct MinRate<B> {
    inner: B,
    rate: u32,
    window: Duration,
    /// Waiting time counted in the current window, and bytes received in it.
    waited: Duration,
    bytes: u64,
    /// Since when the consumer waits for the next frame.
    pending_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> MinRate<B> {
    fn new(inner: B, rate: u32, window: Duration) -> Self {
        MinRate {
            inner,
            rate,
            window: window.max(Duration::from_millis(100)),
            waited: Duration::ZERO,
            bytes: 0,
            pending_since: None,
            timer: None,
        }
    }

    fn needed(&self) -> u64 {
        u64::from(self.rate).saturating_mul(self.window.as_millis() as u64) / 1000
    }

    /// Closes the waiting period that ended at `now` and checks the window, starting a new one
    /// when it is over. `Err` if the window brought too little.
    fn account(&mut self, now: Instant) -> Result<(), BodyTooSlow> {
        if let Some(since) = self.pending_since.take() {
            self.waited += now.saturating_duration_since(since);
        }
        if self.waited >= self.window {
            if self.bytes < self.needed() {
                return Err(BodyTooSlow(self.rate));
            }
            self.waited = Duration::ZERO;
            self.bytes = 0;
        }
        Ok(())
    }
}

impl<B> HttpBody for MinRate<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                this.timer = None;
                if let Err(e) = this.account(Instant::now()) {
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => loop {
                let now = Instant::now();
                let since = *this.pending_since.get_or_insert(now);
                let left = this.window.saturating_sub(this.waited);
                let due = since + left;
                if due <= now {
                    this.timer = None;
                    if let Err(e) = this.account(now) {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    // The window was good: a new one starts now.
                    this.pending_since = Some(now);
                    continue;
                }
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                if timer.deadline() != due {
                    timer.as_mut().reset(due);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body whose first frames were read ahead, then the rest of the original.
struct ReadAhead<B> {
    head: VecDeque<Bytes>,
    rest: Option<B>,
}

impl<B> HttpBody for ReadAhead<B>
where
    B: HttpBody<Data = Bytes, Error = axum::BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        if let Some(b) = self.head.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }
}

/// Reads up to [`BODY_LIMIT`] bytes of `body` (all of it, when it is that small), so the
/// connection is clean whatever the route does with the body.
async fn read_ahead<B>(mut body: B) -> Result<ReadAhead<B>, axum::BoxError>
where
    B: HttpBody<Data = Bytes, Error = axum::BoxError> + Unpin,
{
    use http_body_util::BodyExt;
    let mut head = VecDeque::new();
    let mut len = 0usize;
    while len <= BODY_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    len += data.len();
                    head.push_back(data);
                }
                // Trailers are dropped: no route reads them.
            }
            Some(Err(e)) => return Err(e),
            None => {
                return Ok(ReadAhead { head, rest: None });
            }
        }
    }
    Ok(ReadAhead {
        head,
        rest: Some(body),
    })
}

// ---------------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------------

/// Paths a reserved connection serves: the probes, the scrape, the seal and unseal.
fn reserved_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics") || path.starts_with("/v1/sys/")
}

/// What every request of one connection shares.
#[derive(Clone)]
struct ConnCtx {
    router: Router,
    peer: SocketAddr,
    reserved: bool,
    activity: Shared,
    limits: EdgeLimits,
}

fn closing(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn handle(ctx: ConnCtx, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let in_flight = InFlight::start(&ctx.activity);
    let response = answer(&ctx, req).await;
    Ok(response.map(|inner| {
        Body::new(Counted {
            inner,
            _in_flight: in_flight,
        })
    }))
}

async fn answer(ctx: &ConnCtx, req: Request<Incoming>) -> Response<Body> {
    if ctx.reserved && !reserved_path(req.uri().path()) {
        let mut e = ApiError::new(
            ErrorCode::Busy,
            "the service has as many connections as allowed; retry later",
        );
        e.set_retry_after(1);
        return closing(e.into_response());
    }
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(ConnectInfo(ctx.peer));
    let body = MinRate::new(
        body,
        ctx.limits.min_body_bytes_per_sec,
        ctx.limits.body_rate_window,
    );
    let body = match read_ahead(body).await {
        Ok(b) => b,
        Err(e) if e.is::<BodyTooSlow>() => {
            return closing(ApiError::from_status(StatusCode::REQUEST_TIMEOUT).into_response())
        }
        Err(_) => {
            return closing(
                ApiError::bad_request("could not read the request body").into_response(),
            )
        }
    };
    let req = Request::from_parts(parts, Body::new(body));
    match ctx.router.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Serves one accepted connection (after its TLS handshake, if any) until it ends, passes a
/// deadline, or shutdown closes it.
async fn serve_connection<S>(
    io: S,
    ctx: ConnCtx,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = ctx.activity.clone();
    let limits = ctx.limits;
    let peer = ctx.peer;
    let io = TokioIo::new(Watched {
        inner: io,
        activity: activity.clone(),
    });
    let service = hyper::service::service_fn(move |req| handle(ctx.clone(), req));
    let conn = watcher.watch(builder.serve_connection(io, service).into_owned());
    tokio::select! {
        done = conn => {
            if let Err(e) = done {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        why = watchdog(activity, limits) => {
            tracing::debug!(%peer, reason = why, "connection closed");
        }
    }
}

/// What the accept loop hands every connection.
struct Serving {
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    limits: EdgeLimits,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
}

async fn connection(stream: TcpStream, peer: SocketAddr, slot: Slot, serving: Serving) {
    let Serving {
        tls,
        router,
        limits,
        builder,
        watcher,
    } = serving;
    let _ = stream.set_nodelay(true);
    let ctx = ConnCtx {
        router,
        peer,
        reserved: slot.reserved,
        activity: Activity::new(),
        limits,
    };
    match tls {
        Some(acceptor) => {
            match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    // The head deadline counts from the end of the handshake.
                    lock(&ctx.activity).idle_since = Instant::now();
                    serve_connection(tls, ctx, builder, watcher).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                Err(_) => tracing::debug!(%peer, "tls handshake deadline passed"),
            }
        }
        None => serve_connection(stream, ctx, builder, watcher).await,
    }
    drop(slot);
}

/// Logs refusals sparingly: the first, then one line per [`REFUSAL_LOG_EVERY`] with the count.
struct RefusalLog {
    /// When the last line was written (`None`: never).
    since: Option<Instant>,
    per_address: u64,
    total: u64,
}

/// How often refused connections are summed up in the log.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

impl RefusalLog {
    fn note(&mut self, why: Refusal, peer: SocketAddr) {
        match why {
            Refusal::PerAddress => self.per_address += 1,
            Refusal::Total => self.total += 1,
        }
        let now = Instant::now();
        if self
            .since
            .is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_EVERY)
        {
            tracing::warn!(
                %peer,
                refused_per_address = self.per_address,
                refused_total_cap = self.total,
                "connections refused: over the connection caps ([limits])"
            );
            self.since = Some(now);
            self.per_address = 0;
            self.total = 0;
        }
    }
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
    )
}

/// Accepts connections on `listener` and serves `router` on them under `limits`, until
/// `stopping` turns true; then stops accepting and waits, up to `grace`, for the open
/// connections to finish their requests.
///
/// # Errors
/// Only setting up the listener; accept errors are logged and the loop goes on.
pub async fn run(
    listener: std::net::TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: EdgeLimits,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let descriptors = descriptor_limit();
    let fitted = limits.fit_descriptors(descriptors);
    if fitted != limits {
        tracing::warn!(
            descriptors,
            max_connections = fitted.max_connections,
            reserved_connections = fitted.reserved_connections,
            "connection caps lowered to fit the limit of open files"
        );
    }
    let limits = fitted;
    tracing::info!(
        max_connections = limits.max_connections,
        per_address = limits.max_connections_per_address,
        reserved = limits.reserved_connections,
        "connection limits"
    );
    let registry = Registry {
        counts: Arc::default(),
        limits,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The watchdog enforces the head and idle deadlines (hyper's own timer would count the
        // keep-alive silence as head time).
        .header_read_timeout(None)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut refusals = RefusalLog {
        since: None,
        per_address: 0,
        total: 0,
    };
    loop {
        if *stopping.borrow() {
            break;
        }
        tokio::select! {
            changed = stopping.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match registry.admit(peer.ip()) {
                    Ok(slot) => {
                        let serving = Serving {
                            tls: tls.clone(),
                            router: router.clone(),
                            limits,
                            builder: builder.clone(),
                            watcher: graceful.watcher(),
                        };
                        tokio::spawn(connection(stream, peer, slot, serving));
                    }
                    Err(why) => {
                        drop(stream);
                        refusals.note(why, peer);
                    }
                },
                Err(e) if out_of_descriptors(&e) => {
                    tracing::warn!(error = %e, "cannot accept: out of descriptors; pausing");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period; closing them");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn caps_fit_the_descriptor_limit() {
        let l = EdgeLimits::default().fit_descriptors(1024);
        assert_eq!(l.max_connections + l.reserved_connections, 1024 - 256);
        assert_eq!(l.reserved_connections, DEFAULT_RESERVED_CONNECTIONS);
        let l = EdgeLimits::default().fit_descriptors(1 << 20);
        assert_eq!(l, EdgeLimits::default());
    }

    #[test]
    fn registry_reserves_and_caps_per_address() {
        let r = Registry {
            counts: Arc::default(),
            limits: EdgeLimits {
                max_connections: 2,
                max_connections_per_address: 2,
                reserved_connections: 1,
                ..EdgeLimits::default()
            },
        };
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let s1 = r.admit(a).unwrap();
        let _s2 = r.admit(a).unwrap();
        assert_eq!(r.admit(a).unwrap_err(), Refusal::PerAddress);
        let s3 = r.admit(b).unwrap();
        assert!(s3.reserved && !s1.reserved);
        assert_eq!(r.admit(b).unwrap_err(), Refusal::Total);
        drop(s1);
        assert!(!r.admit(b).unwrap().reserved);
        // A flooding address cannot take the reserve.
        let r = Registry {
            counts: Arc::default(),
            limits: EdgeLimits {
                max_connections: 2,
                reserved_connections: 4,
                ..EdgeLimits::default()
            },
        };
        let _held: Vec<Slot> = (0..2).map(|_| r.admit(a).unwrap()).collect();
        assert_eq!(r.admit(a).unwrap_err(), Refusal::Total);
        assert!(r.admit(b).unwrap().reserved);
    }

    #[tokio::test]
    async fn an_idle_body_fails_after_one_window() {
        struct Silent;
        impl HttpBody for Silent {
            type Data = Bytes;
            type Error = Infallible;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
                Poll::Pending
            }
        }
        let body = MinRate::new(Silent, 100, Duration::from_millis(200));
        let e = read_ahead(body).await.err().unwrap();
        assert!(e.is::<BodyTooSlow>());
    }

    #[test]
    fn reserved_paths() {
        assert!(reserved_path("/v1/sys/unseal"));
        assert!(reserved_path("/healthz"));
        assert!(reserved_path("/metrics"));
        assert!(!reserved_path("/metrics/x"));
        assert!(!reserved_path("/v1/cards"));
    }
}

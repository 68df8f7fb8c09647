//! The audit stream (`[audit.stream]`): every committed audit event, as one JSON line with its
//! chain hash, to a file or to syslog (RFC 5424 over a unix datagram socket or UDP), for a SIEM.
//!
//! ```text
//! {"seq":41,"hash":"<hex SHA-256 of the stored event>","event":{…the stored event…}}
//! ```
//!
//! The stream never holds the service up: it is a background thread that *tails* the chain in
//! the store, reading only events already durable ([`vault::AuditLog::durable_seq`]), so it
//! runs after the commit and nothing on the commit path waits for it. Its queue is the chain
//! itself, bounded: a stream that falls more than [`MAX_LAG`] events behind skips ahead to the
//! newest and counts the skipped events as dropped; a line the sink refuses (a full disk, an
//! unwritable file, no syslog daemon) is dropped and counted, the error logged once per run of
//! failures, and the file reopened at the next line. [`StreamStats`] holds the counts (for
//! `/metrics`). The SIEM sees every gap: each line carries its `seq`, and its `hash` chains to
//! the next event's `prev`.
//!
//! The stream starts at the first event committed after start-up; older events are in the
//! chain (`plico audit export`).

use crate::config::AuditStreamConfig;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vault::{seq_key, AuditLog, Store, Tree};

/// Events a stream may fall behind before it skips ahead (and counts them dropped).
pub const MAX_LAG: u64 = 100_000;
/// Events read from the store per pass.
const CHUNK: usize = 512;
/// How often the stream looks for new events.
const POLL: Duration = Duration::from_millis(100);

/// The counts of a stream, read by the metrics.
#[derive(Debug, Default)]
pub struct StreamStats {
    streamed: AtomicU64,
    dropped: AtomicU64,
}

impl StreamStats {
    /// Events written to the sink.
    pub fn streamed(&self) -> u64 {
        self.streamed.load(Ordering::Relaxed)
    }

    /// Events not written: refused by the sink, or skipped when the stream fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Where the lines go.
#[derive(Debug)]
enum Sink {
    /// Appended to a file (created 0600), reopened after a failure.
    File {
        path: PathBuf,
        file: Option<std::fs::File>,
    },
    /// RFC 5424 messages to a unix datagram socket.
    Unix(PathBuf),
    /// RFC 5424 messages over UDP.
    Udp(String),
}

/// A running stream; [`AuditStream::stop`] streams what is left and ends it.
#[derive(Debug)]
pub struct AuditStream {
    stats: Arc<StreamStats>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AuditStream {
    /// Starts streaming the events of `audit` (over `store`) committed from now on.
    ///
    /// # Errors
    /// A configuration with neither or both of `file` and `syslog`, or a `syslog` address that
    /// is not `unix:PATH` or `udp:HOST:PORT`.
    pub fn start(
        config: &AuditStreamConfig,
        store: Arc<dyn Store>,
        audit: Arc<AuditLog>,
    ) -> Result<Self, String> {
        let sink = sink_of(config)?;
        let stats = Arc::new(StreamStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (stats.clone(), stop.clone());
        let next = audit.durable_seq() + 1;
        let thread = std::thread::Builder::new()
            .name("audit-stream".into())
            .spawn(move || run(sink, next, &*store, &audit, &s, &st))
            .map_err(|e| format!("cannot start the audit stream: {e}"))?;
        Ok(AuditStream {
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// The stream's counts.
    pub fn stats(&self) -> Arc<StreamStats> {
        self.stats.clone()
    }

    /// Streams the events committed so far, then stops.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Checks a configuration.
///
/// # Errors
/// What is wrong, naming the key.
pub fn check(config: &AuditStreamConfig) -> Result<(), String> {
    sink_of(config).map(|_| ())
}

fn sink_of(config: &AuditStreamConfig) -> Result<Sink, String> {
    match (&config.file, &config.syslog) {
        (Some(path), None) => Ok(Sink::File {
            path: path.clone(),
            file: None,
        }),
        (None, Some(addr)) => {
            if let Some(path) = addr.strip_prefix("unix:") {
                Ok(Sink::Unix(PathBuf::from(path)))
            } else if let Some(hostport) = addr.strip_prefix("udp:") {
                if hostport
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                {
                    Ok(Sink::Udp(hostport.to_owned()))
                } else {
                    Err(format!("`syslog` {addr:?}: expected udp:HOST:PORT"))
                }
            } else {
                Err(format!(
                    "`syslog` {addr:?}: expected unix:PATH (e.g. unix:/dev/log) or udp:HOST:PORT"
                ))
            }
        }
        (Some(_), Some(_)) => Err("set one of `file` and `syslog`, not both".into()),
        (None, None) => Err("set `file` or `syslog`".into()),
    }
}

fn run(
    mut sink: Sink,
    mut next: u64,
    store: &dyn Store,
    audit: &AuditLog,
    stats: &StreamStats,
    stop: &AtomicBool,
) {
    let mut failing = false;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let durable = audit.durable_seq();
        if durable >= next + MAX_LAG {
            let skipped = durable + 1 - next;
            stats.dropped.fetch_add(skipped, Ordering::Relaxed);
            tracing::error!(
                skipped,
                "audit stream fell behind; events skipped (see the chain)"
            );
            next = durable + 1;
        }
        while next <= durable {
            let events = match store.range(
                Tree::Audit,
                &seq_key(next),
                Some(&seq_key(durable + 1)),
                CHUNK,
            ) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, "audit stream cannot read the chain");
                    break;
                }
            };
            if events.is_empty() {
                // Pruned under the stream's feet: nothing to send up to `durable`.
                next = durable + 1;
                break;
            }
            for (key, bytes) in events {
                let seq = <[u8; 8]>::try_from(key.as_slice()).map_or(next, u64::from_be_bytes);
                next = seq + 1;
                match send(&mut sink, seq, &bytes) {
                    Ok(()) => {
                        stats.streamed.fetch_add(1, Ordering::Relaxed);
                        if failing {
                            tracing::warn!(seq, "audit stream writes again");
                            failing = false;
                        }
                    }
                    Err(e) => {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        if !failing {
                            tracing::error!(seq, error = %e, "audit stream sink failed; events are dropped (and counted) until it works");
                            failing = true;
                        }
                    }
                }
            }
        }
        if stopping {
            return;
        }
        std::thread::sleep(POLL);
    }
}

/// The line of an event: its sequence number, chain hash and the stored event.
fn line(seq: u64, bytes: &[u8]) -> Option<String> {
    use aws_lc_rs::digest::{digest, SHA256};
    let event: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let hash = hex::encode(digest(&SHA256, bytes).as_ref());
    serde_json::to_string(&serde_json::json!({"seq": seq, "hash": hash, "event": event})).ok()
}

fn send(sink: &mut Sink, seq: u64, bytes: &[u8]) -> std::io::Result<()> {
    let text = line(seq, bytes).ok_or_else(|| {
        std::io::Error::other(format!("audit event {seq} is unreadable in the store"))
    })?;
    match sink {
        Sink::File { path, file } => {
            if file.is_none() {
                use std::os::unix::fs::OpenOptionsExt;
                *file = Some(
                    std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .mode(0o600)
                        .open(&*path)
                        .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?,
                );
            }
            let mut buf = text.into_bytes();
            buf.push(b'\n');
            let written = file.as_mut().map(|f| f.write_all(&buf));
            if !matches!(written, Some(Ok(()))) {
                *file = None;
                return Err(std::io::Error::other(format!(
                    "{}: write failed",
                    path.display()
                )));
            }
            Ok(())
        }
        Sink::Unix(path) => {
            let socket = std::os::unix::net::UnixDatagram::unbound()?;
            socket.send_to(syslog_message(&text).as_bytes(), &*path)?;
            Ok(())
        }
        Sink::Udp(addr) => {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
            socket.send_to(syslog_message(&text).as_bytes(), addr.as_str())?;
            Ok(())
        }
    }
}

/// An RFC 5424 message: facility authpriv (10), severity informational (6), the time of
/// sending, app `plico`, msgid `audit`, no structured data, the JSON line as the message.
fn syslog_message(text: &str) -> String {
    let now = httpdate_rfc3339(std::time::SystemTime::now());
    format!(
        "<86>1 {now} {} plico {} audit - {text}",
        hostname(),
        std::process::id()
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "-".into())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
fn httpdate_rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use vault::{MemoryStore, NewEvent};

    fn log() -> (Arc<dyn Store>, Arc<AuditLog>) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let audit = Arc::new(AuditLog::open(store.clone(), 1000).unwrap());
        (store, audit)
    }

    #[test]
    fn a_file_sink_gets_every_committed_event_with_its_chain_hash() {
        let (store, audit) = log();
        audit.append(NewEvent::new("before.start", "x")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let config = AuditStreamConfig {
            file: Some(path.clone()),
            syslog: None,
        };
        let stream = AuditStream::start(&config, store.clone(), audit.clone()).unwrap();
        for i in 0..50 {
            audit
                .append(NewEvent::new("stream.test", format!("s{i}")))
                .unwrap();
        }
        let stats = stream.stats();
        stream.stop();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 50, "only the events after the start");
        assert_eq!((stats.streamed(), stats.dropped()), (50, 0));
        for pair in lines.windows(2) {
            assert_eq!(
                pair[0]["seq"].as_u64().unwrap() + 1,
                pair[1]["seq"].as_u64().unwrap()
            );
            // The hash of one event is the next event's `prev`: the SIEM can check the chain.
            assert_eq!(pair[0]["hash"], pair[1]["event"]["prev"]);
        }
        assert_eq!(lines[0]["event"]["action"], "stream.test");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_unwritable_sink_drops_and_counts_and_never_blocks_commits() {
        let (store, audit) = log();
        let config = AuditStreamConfig {
            file: Some(PathBuf::from("/nonexistent-dir/plico/audit.jsonl")),
            syslog: None,
        };
        let stream = AuditStream::start(&config, store, audit.clone()).unwrap();
        for i in 0..20 {
            audit
                .append(NewEvent::new("stream.test", format!("s{i}")))
                .unwrap();
        }
        let stats = stream.stats();
        stream.stop();
        assert_eq!((stats.streamed(), stats.dropped()), (0, 20));
        assert_eq!(audit.durable_seq(), 20, "every commit went through");
    }

    #[test]
    fn a_syslog_sink_sends_rfc5424_datagrams() {
        let (store, audit) = log();
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let config = AuditStreamConfig {
            file: None,
            syslog: Some(format!("udp:{}", server.local_addr().unwrap())),
        };
        let stream = AuditStream::start(&config, store, audit.clone()).unwrap();
        audit.append(NewEvent::new("stream.syslog", "s")).unwrap();
        let mut buf = [0u8; 8192];
        let n = server.recv(&mut buf).unwrap();
        stream.stop();
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(msg.starts_with("<86>1 20"), "{msg}");
        let json = msg.split_once(" audit - ").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["event"]["action"], "stream.syslog");
    }

    #[test]
    fn configurations_are_checked() {
        let c = |file: Option<&str>, syslog: Option<&str>| AuditStreamConfig {
            file: file.map(PathBuf::from),
            syslog: syslog.map(str::to_owned),
        };
        assert!(check(&c(Some("/a"), None)).is_ok());
        assert!(check(&c(None, Some("unix:/dev/log"))).is_ok());
        assert!(check(&c(None, Some("udp:10.0.0.1:514"))).is_ok());
        assert!(check(&c(None, Some("tcp:x:1"))).is_err());
        assert!(check(&c(None, Some("udp:x"))).is_err());
        assert!(check(&c(Some("/a"), Some("unix:/dev/log"))).is_err());
        assert!(check(&c(None, None)).is_err());
        assert_eq!(
            httpdate_rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(951_782_400_123)),
            "2000-02-29T00:00:00.123Z"
        );
    }
}

//! Streaming of raw-body uploads (code batches, holder registry files) from axum's body into a
//! blocking [`Read`] on tokio's blocking pool.
//!
//! The body is never held whole: chunks go from the body stream through a bounded channel
//! ([`UPLOAD_QUEUE`] chunks) to a [`ChannelReader`] that the vault reads on the blocking pool.
//! [`pump`] checks the size limit on every chunk and abandons a body that stalls for the idle
//! timeout. A body that breaks off (the client went away) makes the reader fail, never end, so
//! a cut upload can never look like a short, complete file: the vault then abandons the work
//! and nothing of it stays.
//!
//! The handler checks `Content-Length` against the limit before reading anything
//! ([`content_length`]), refuses multipart forms ([`check_upload_type`]), and maps a failed
//! pump to its answer ([`PumpError::answer`]).

use super::{ApiError, ErrorCode};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use futures_util::StreamExt;
use std::io::Read;
use std::time::Duration;
use tokio::sync::mpsc;

/// Chunks of an upload queued between the body stream and the reader. With hyper's chunks of
/// at most a few hundred KiB this bounds what an upload holds in memory to a few MiB.
pub const UPLOAD_QUEUE: usize = 16;

/// What travels from the body stream to the reader.
#[derive(Debug)]
pub(super) enum Chunk {
    Data(Bytes),
    /// The body ended normally: the reader may report end of file.
    End,
    /// The body failed; the reader fails with this message.
    Failed(&'static str),
}

/// A blocking [`Read`] over the chunks of an upload. It reports end of file only after
/// [`Chunk::End`]: a channel closed without it (the handler went away) is an error, so a
/// cut upload can never look like a short, complete file.
#[derive(Debug)]
pub(super) struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
    ended: bool,
}

/// The two ends of an upload: the sender for [`pump`], the reader for the blocking job.
pub(super) fn channel() -> (mpsc::Sender<Chunk>, ChannelReader) {
    let (tx, rx) = mpsc::channel(UPLOAD_QUEUE);
    let reader = ChannelReader {
        rx,
        current: Bytes::new(),
        ended: false,
    };
    (tx, reader)
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(b)) => self.current = b,
                Some(Chunk::End) => self.ended = true,
                Some(Chunk::Failed(why)) => return Err(std::io::Error::other(why)),
                None => {
                    return Err(std::io::Error::other(
                        "the upload stopped before its end (the connection closed)",
                    ))
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Why the body did not arrive whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PumpError {
    TooLarge,
    Stalled,
    Broken,
}

impl PumpError {
    /// The answer to an upload whose body did not arrive whole: `413` over `limit` (named by
    /// its configuration `setting`), `408` after `idle` without data, `400` when it broke off.
    pub(super) fn answer(self, limit: u64, setting: &str, idle: Duration) -> ApiError {
        match self {
            PumpError::TooLarge => too_large(limit, setting),
            PumpError::Stalled => ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "the upload sent nothing for {} seconds and was abandoned",
                    idle.as_secs()
                ),
            ),
            PumpError::Broken => {
                ApiError::bad_request("the upload broke off before its end; nothing was stored")
            }
        }
    }
}

/// Moves the body into the channel, chunk by chunk, checking the size limit and the idle
/// timeout. Returns `Ok` when the body ended, or when the reader stopped reading early (its
/// job then has its own answer).
pub(super) async fn pump(
    body: Body,
    tx: mpsc::Sender<Chunk>,
    limit: u64,
    idle: Duration,
) -> Result<u64, PumpError> {
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    loop {
        let next = match tokio::time::timeout(idle, stream.next()).await {
            Ok(next) => next,
            Err(_) => {
                let _ = tx.send(Chunk::Failed("the upload stalled")).await;
                return Err(PumpError::Stalled);
            }
        };
        match next {
            None => {
                let _ = tx.send(Chunk::End).await;
                return Ok(total);
            }
            Some(Err(e)) => {
                tracing::info!(error = %e, "upload body broke off");
                let _ = tx.send(Chunk::Failed("the upload broke off")).await;
                return Err(PumpError::Broken);
            }
            Some(Ok(bytes)) => {
                total = total.saturating_add(bytes.len() as u64);
                if total > limit {
                    let _ = tx
                        .send(Chunk::Failed("the upload is larger than the limit"))
                        .await;
                    return Err(PumpError::TooLarge);
                }
                if tx.send(Chunk::Data(bytes)).await.is_err() {
                    // The reader has finished (a file it refused early): its answer counts.
                    return Ok(total);
                }
            }
        }
    }
}

/// `413 body_too_large` for an upload over `limit`, naming the `setting` that sets it.
pub(super) fn too_large(limit: u64, setting: &str) -> ApiError {
    ApiError::new(
        ErrorCode::BodyTooLarge,
        format!("the upload is larger than the limit of {limit} bytes ({setting})"),
    )
}

/// The request's `Content-Length`, if it has a valid one.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Refuses a multipart body (`curl -F`): the file must be the body itself. Any other type is
/// read as the file (`curl --data-binary` says `application/x-www-form-urlencoded` but sends
/// the bytes unchanged).
pub(super) fn check_upload_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if mime.starts_with("multipart/") {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "content-type {mime}: send the file itself as the body, not a form (with curl, \
                 --data-binary @FILE)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A reader over `chunks`, whose sender is gone once they are queued.
    fn reader(chunks: Vec<Chunk>) -> ChannelReader {
        let (tx, rx) = mpsc::channel(chunks.len().max(1));
        for c in chunks {
            tx.try_send(c).unwrap();
        }
        ChannelReader {
            rx,
            current: Bytes::new(),
            ended: false,
        }
    }

    #[test]
    fn the_reader_ends_only_at_the_end_marker() {
        let mut r = reader(vec![
            Chunk::Data(Bytes::from_static(b"ab")),
            Chunk::Data(Bytes::from_static(b"c")),
            Chunk::End,
        ]);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "abc");

        let mut r = reader(vec![Chunk::Data(Bytes::from_static(b"ab"))]);
        let mut s = Vec::new();
        let e = r.read_to_end(&mut s).unwrap_err();
        assert!(e.to_string().contains("connection closed"), "{e}");

        let mut r = reader(vec![
            Chunk::Data(Bytes::from_static(b"ab")),
            Chunk::Failed("the upload broke off"),
        ]);
        assert!(r.read_to_end(&mut Vec::new()).is_err());
    }
}

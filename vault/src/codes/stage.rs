//! Staging a batch: records sealed as they arrive, sorted in runs, written as segments.
//!
//! The caller's thread packs and seals each card (the clear codes live only in a zeroizing
//! stack buffer for that moment) and appends the sealed record to a buffer. Full buffers go to
//! a writer thread, which sorts them by serial, checks repeated serials, cuts them into
//! segments and writes them to the store under the batch's id. Sealing, and sorting plus
//! writing, so run on the two cores side by side.
//!
//! A buffer whose serials all follow the previous buffer's extends the current run: a sorted
//! file becomes one run. Otherwise the buffer starts a new run. Nothing written here is
//! visible until the batch's commit record says `committed` ([`super::CodeVault::commit`]).
//!
//! # Memory
//!
//! Up to three buffers are alive at a time: the one being filled, a full one waiting to be
//! handed over (the channel has no slot: the hand-over waits for the writer), and the one the
//! writer sorts and writes. A buffer of [`RUN_RECORDS`] cards takes about 72 MB (48 bytes of
//! arena and 24 of entry a card), so an unsorted file holds up to about 216 MB here. While
//! every serial so far follows the one before (a sorted file, a generated range), a buffer
//! is handed over at [`SORTED_RECORDS`] cards instead: it extends the same run, so the batch
//! is laid out exactly as with full buffers, and the staging memory of a sorted file of any
//! size stays near 15 MB. Measured with `plico-bench import --records 10000000` (sorted):
//! peak resident size 498 MiB before, 393 MiB after (512 MiB is the goal).

use super::batch::{run_key, segment_key, BatchId, RunInfo, SegmentDir};
use super::check::{repeats, Repeats, RunCursor, MAX_LISTED};
use super::record::{CardCodes, MAX_RECORD_LEN};
use super::segment::{self, SealedRecord, SEGMENT_RECORDS};
use crate::envelope::{DataKeyId, Sealer};
use crate::error::{Error, Result};
use crate::store::{Batch, Store, Tree};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use zeroize::Zeroizing;

/// Cards sorted in memory at a time: the length of a run of an unsorted file.
pub const RUN_RECORDS: usize = 1 << 20;
/// Cards a buffer holds while the file is sorted so far (see the module docs on memory).
pub const SORTED_RECORDS: usize = 1 << 16;
/// Segments written to the store per write.
const SEGMENTS_PER_WRITE: usize = 32;

#[derive(Debug, Clone, Copy)]
struct Entry {
    line: u64,
    counter: u32,
    serial_at: u32,
    sealed_at: u32,
    serial_len: u8,
    sealed_len: u8,
}

/// Sealed records in arrival order: bytes in one arena, fixed-size entries pointing into it.
/// Holds no clear code.
#[derive(Debug, Default)]
struct SealedBuf {
    arena: Vec<u8>,
    entries: Vec<Entry>,
}

impl SealedBuf {
    fn with_capacity(records: usize) -> Self {
        SealedBuf {
            arena: Vec::with_capacity(records * 48),
            entries: Vec::with_capacity(records),
        }
    }

    fn serial(&self, e: &Entry) -> &[u8] {
        &self.arena[e.serial_at as usize..e.serial_at as usize + usize::from(e.serial_len)]
    }

    fn sealed(&self, e: &Entry) -> &[u8] {
        &self.arena[e.sealed_at as usize..e.sealed_at as usize + usize::from(e.sealed_len)]
    }
}

/// What the writer hands back.
#[derive(Debug, Default)]
struct Written {
    runs: Vec<(RunInfo, SegmentDir)>,
    repeats: Vec<String>,
    repeats_total: u64,
}

/// A batch being staged. Dropped without [`Stager::finish`], its writer stops; the segments
/// already written stay invisible and are removed by [`super::CodeVault::discard`] or at the
/// next start-up.
pub struct Stager {
    id: BatchId,
    sealer: Sealer,
    buf: SealedBuf,
    to_writer: Option<SyncSender<SealedBuf>>,
    writer: Option<JoinHandle<Result<Written>>>,
    store: Arc<dyn Store>,
    cards: u64,
    signature_pairs: Option<bool>,
    run_records: usize,
    /// The serial pushed last, while every serial so far followed the one before; `None`
    /// once one did not (or before the first).
    sorted_last: Option<Vec<u8>>,
    /// Whether every serial pushed so far followed the one before.
    sorted: bool,
}

impl std::fmt::Debug for Stager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Stager({}, {} cards, {:?})",
            self.id, self.cards, self.sealer
        )
    }
}

/// A batch fully written, not yet committed.
#[derive(Debug)]
pub struct Staged {
    /// The batch.
    pub id: BatchId,
    /// Its runs.
    pub runs: Vec<(RunInfo, SegmentDir)>,
    /// Cards written.
    pub cards: u64,
    /// Whether the cards carry a signature pair.
    pub signature_pairs: bool,
    /// Serials that appear more than once (the batch must then be rejected).
    pub repeats: Repeats,
    /// The sealer, for the keyring's count of encryptions.
    pub sealer: Sealer,
}

impl Stager {
    pub(crate) fn with_run_records(
        id: BatchId,
        sealer: Sealer,
        store: Arc<dyn Store>,
        run_records: usize,
    ) -> Result<Self> {
        let (tx, rx) = sync_channel::<SealedBuf>(0);
        let writer_store = store.clone();
        let key = sealer.key_id();
        let writer = std::thread::Builder::new()
            .name(format!("plico-stage-{id}"))
            .spawn(move || write_runs(&*writer_store, id, key, rx))
            .map_err(|e| Error::Storage(format!("starting the batch writer: {e}")))?;
        Ok(Stager {
            id,
            sealer,
            buf: SealedBuf::with_capacity(run_records.min(SORTED_RECORDS)),
            to_writer: Some(tx),
            writer: Some(writer),
            store,
            cards: 0,
            signature_pairs: None,
            run_records,
            sorted_last: None,
            sorted: true,
        })
    }

    /// Cards in the buffer not yet handed to the writer.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.buf.entries.len()
    }

    /// Cards the current buffer holds before it is handed to the writer.
    fn buffer_records(&self) -> usize {
        if self.sorted {
            self.run_records.min(SORTED_RECORDS)
        } else {
            self.run_records
        }
    }

    /// The batch id.
    pub fn id(&self) -> BatchId {
        self.id
    }

    /// Cards pushed so far.
    pub fn cards(&self) -> u64 {
        self.cards
    }

    /// Seals one card's codes and queues the record. `line` is where the card came from, for
    /// the report of a repeated serial.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a serial over 255 bytes or a card whose signature pair differs in
    /// presence from the first card's; sealing errors; the writer's error if it stopped.
    pub fn push(&mut self, line: u64, serial: &str, codes: &CardCodes) -> Result<()> {
        let mut clear = Zeroizing::new([0u8; MAX_RECORD_LEN]);
        let n = codes.pack(&mut clear);
        self.push_packed(line, serial, &clear[..n], codes.signature.is_some())
    }

    /// [`Stager::push`] for a record already packed ([`CardCodes::pack`], or
    /// [`crate::generate::CodeGenerator::draw_packed`]); `has_signature` says whether it holds
    /// the signature pair.
    ///
    /// # Errors
    /// As [`Stager::push`].
    pub fn push_packed(
        &mut self,
        line: u64,
        serial: &str,
        clear: &[u8],
        has_signature: bool,
    ) -> Result<()> {
        let has_sig = has_signature;
        match self.signature_pairs {
            None => self.signature_pairs = Some(has_sig),
            Some(s) if s != has_sig => {
                return Err(Error::Invalid(format!(
                    "line {line}: every card of a batch must {} a signature pair",
                    if s { "carry" } else { "lack" }
                )))
            }
            Some(_) => {}
        }
        let serial_len = u8::try_from(serial.len())
            .map_err(|_| Error::Invalid(format!("line {line}: serial over 255 bytes")))?;
        if self.sorted {
            match &mut self.sorted_last {
                Some(last) if last.as_slice() >= serial.as_bytes() => {
                    self.sorted = false;
                    self.sorted_last = None;
                }
                Some(last) => {
                    last.clear();
                    last.extend_from_slice(serial.as_bytes());
                }
                None => self.sorted_last = Some(serial.as_bytes().to_vec()),
            }
        }
        let arena = &mut self.buf.arena;
        let serial_at = arena.len();
        arena.extend_from_slice(serial.as_bytes());
        let sealed_at = arena.len();
        let counter = self.sealer.seal_detached(serial, clear, arena)?;
        let sealed_len = arena.len() - sealed_at;
        let (Ok(serial_at), Ok(sealed_at), Ok(sealed_len)) = (
            u32::try_from(serial_at),
            u32::try_from(sealed_at),
            u8::try_from(sealed_len),
        ) else {
            return Err(Error::Invalid("a staging buffer overflowed".to_string()));
        };
        self.buf.entries.push(Entry {
            line,
            counter,
            serial_at,
            sealed_at,
            serial_len,
            sealed_len,
        });
        self.cards += 1;
        if self.buf.entries.len() >= self.buffer_records() {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<()> {
        let next = SealedBuf::with_capacity(self.buffer_records());
        let full = std::mem::replace(&mut self.buf, next);
        let sent = self
            .to_writer
            .as_ref()
            .map(|tx| tx.send(full).is_ok())
            .unwrap_or(false);
        if sent {
            Ok(())
        } else {
            // The writer stopped: its error says why.
            Err(self.join().err().unwrap_or_else(|| {
                Error::Storage("the batch writer stopped without an error".into())
            }))
        }
    }

    fn join(&mut self) -> Result<Written> {
        self.to_writer = None;
        match self.writer.take() {
            Some(h) => h
                .join()
                .map_err(|_| Error::Storage("the batch writer panicked".into()))?,
            None => Err(Error::Storage("the batch writer already ended".into())),
        }
    }

    /// Stops staging: the writer ends after the buffer it is writing, and this returns once it
    /// has, so that nothing more is written for the batch. What was written stays invisible;
    /// remove it with [`super::CodeVault::reject`] or [`super::CodeVault::abandon`].
    pub fn cancel(mut self) {
        self.buf = SealedBuf::default();
        let _ = self.join();
    }

    /// Writes what is left, waits for the writer, writes the segment directories, checks for
    /// serials repeated across runs, and flushes. The batch is then complete but invisible.
    ///
    /// # Errors
    /// Store errors.
    pub fn finish(mut self) -> Result<Staged> {
        if !self.buf.entries.is_empty() {
            self.send()?;
        }
        let written = self.join()?;
        let mut b = Batch::new();
        for (info, dir) in &written.runs {
            b.put(
                Tree::SegmentDirs,
                run_key(self.id, info.run).to_vec(),
                dir.encode(),
            );
        }
        self.store.write(&b)?;
        let mut found = Repeats {
            listed: written.repeats,
            total: written.repeats_total,
        };
        if found.total == 0 && runs_overlap(&written.runs) {
            let cursors = written
                .runs
                .iter()
                .map(|(info, dir)| RunCursor::new(&*self.store, self.id, info.run, dir, &[]))
                .collect::<Result<Vec<_>>>()?;
            found = repeats(cursors, None)?;
            for s in &mut found.listed {
                *s = format!("serial {s} appears more than once in the file");
            }
        }
        self.store.flush()?;
        let Stager {
            id,
            sealer,
            cards,
            signature_pairs,
            ..
        } = self;
        Ok(Staged {
            id,
            runs: written.runs,
            cards,
            signature_pairs: signature_pairs.unwrap_or(false),
            repeats: found,
            sealer,
        })
    }
}

fn runs_overlap(runs: &[(RunInfo, SegmentDir)]) -> bool {
    let mut ranges: Vec<(&[u8], &[u8])> = runs
        .iter()
        .map(|(i, _)| (i.first.as_bytes(), i.last.as_bytes()))
        .collect();
    ranges.sort();
    ranges.windows(2).any(|w| w[1].0 <= w[0].1)
}

/// The writer thread: sorts each buffer, then appends it to the current run or starts a run.
fn write_runs(
    store: &dyn Store,
    id: BatchId,
    key: DataKeyId,
    rx: Receiver<SealedBuf>,
) -> Result<Written> {
    let mut out = Written::default();
    let mut current: Option<(RunInfo, SegmentDir)> = None;
    let mut segment_bytes = Vec::with_capacity(64 * 1024);
    while let Ok(mut buf) = rx.recv() {
        let mut entries = std::mem::take(&mut buf.entries);
        entries.sort_unstable_by(|a, b| buf.serial(a).cmp(buf.serial(b)));
        // Repeated serials within the buffer: reported with both lines; nothing more is written.
        for w in entries.windows(2) {
            if buf.serial(&w[0]) == buf.serial(&w[1]) {
                out.repeats_total += 1;
                if out.repeats.len() < MAX_LISTED {
                    let (a, b) = (w[0].line.min(w[1].line), w[0].line.max(w[1].line));
                    out.repeats.push(format!(
                        "serial {} is on lines {a} and {b}",
                        String::from_utf8_lossy(buf.serial(&w[0]))
                    ));
                }
            }
        }
        if out.repeats_total > 0 || entries.is_empty() {
            continue;
        }
        let first = buf.serial(&entries[0]).to_vec();
        let last = buf.serial(&entries[entries.len() - 1]).to_vec();
        let extends = current
            .as_ref()
            .is_some_and(|(info, _)| first.as_slice() > info.last.as_bytes());
        if !extends {
            if let Some(done) = current.take() {
                out.runs.push(done);
            }
            let run = u16::try_from(out.runs.len())
                .map_err(|_| Error::Invalid("a batch may have at most 65536 runs".into()))?;
            current = Some((
                RunInfo {
                    run,
                    cards: 0,
                    segments: 0,
                    first: String::from_utf8_lossy(&first).into_owned(),
                    last: String::new(),
                },
                SegmentDir::default(),
            ));
        }
        let Some((info, dir)) = current.as_mut() else {
            continue;
        };
        let mut pending = Batch::new();
        let mut in_pending = 0;
        let mut records: Vec<SealedRecord<'_>> = Vec::with_capacity(SEGMENT_RECORDS);
        for chunk in entries.chunks(SEGMENT_RECORDS) {
            records.clear();
            records.extend(chunk.iter().map(|e| SealedRecord {
                serial: buf.serial(e),
                counter: e.counter,
                sealed: buf.sealed(e),
            }));
            segment_bytes.clear();
            segment::encode(key, &records, &mut segment_bytes)?;
            pending.put(
                Tree::Segments,
                segment_key(id, info.run, info.segments).to_vec(),
                segment_bytes.clone(),
            );
            dir.firsts.push(records[0].serial.into());
            info.segments += 1;
            info.cards += chunk.len() as u64;
            in_pending += 1;
            if in_pending == SEGMENTS_PER_WRITE {
                store.write(&pending)?;
                pending = Batch::new();
                in_pending = 0;
            }
        }
        store.write(&pending)?;
        info.last = String::from_utf8_lossy(&last).into_owned();
        dir.last = last.into();
    }
    if let Some(done) = current.take() {
        out.runs.push(done);
    }
    Ok(out)
}

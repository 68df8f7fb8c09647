//! Reading a whole committed batch in serial order, decrypting as it goes: the source of bulk
//! print runs.
//!
//! A batch is one or more sorted runs (one for a sorted file). [`BatchScan`] keeps one cursor
//! per run holding that run's current segment (its sealed bytes and decoded serials, at most
//! 1024) and merges the runs by serial, so memory is a few segments whatever the size of the
//! batch. Each card's record is opened only when the scan yields it; cards whose codes were
//! deleted since (the overlay, read once a segment) are skipped.

use super::batch::{segment_key, BatchId, SegmentDir};
use super::record::CardCodes;
use super::segment::Segment;
use super::{CodeVault, OVERLAY_DELETED};
use crate::envelope::{DataKeyId, Opener};
use crate::error::{Error, Missing, Refusal, Result};
use crate::hsm::Hsm;
use crate::store::Tree;
use std::sync::Arc;

/// One run's position: its directory, the segment it is in and that segment's serials.
struct RunCursor {
    run: u16,
    dir: SegmentDir,
    segment: u32,
    bytes: Vec<u8>,
    serials: Vec<Box<[u8]>>,
    /// Serials of this segment whose codes were deleted since (from the overlay).
    deleted: std::collections::HashSet<Box<[u8]>>,
    at: usize,
}

/// Every card of one committed batch, in serial order, with its codes decrypted.
///
/// # Security
/// Each item's [`CardCodes`] is zeroized on drop; the scan itself holds only sealed bytes and
/// serials.
pub struct BatchScan<'v> {
    vault: &'v CodeVault,
    hsm: &'v dyn Hsm,
    batch: BatchId,
    /// The opener of the data key of the segments read last.
    opener: (DataKeyId, Arc<Opener>),
    cursors: Vec<RunCursor>,
    failed: bool,
}

impl std::fmt::Debug for BatchScan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BatchScan({}, {} runs)", self.batch, self.cursors.len())
    }
}

impl CodeVault {
    /// Scans committed batch `batch` in serial order, with `receipt` of the audited start of
    /// a print run of that batch ([`super::PRINT_RUN_ACTION`]). For bulk renderers only: the
    /// caller checks each card's state and audits what it prints.
    ///
    /// # Errors
    /// [`Refusal::PrintRunNotAudited`] for a receipt that records no print run of `batch`;
    /// [`Missing::CommittedBatch`] for a batch that is not committed (staging, quarantined, rejected
    /// or unknown); [`Error::Sealed`]; store errors.
    pub fn scan_batch<'v>(
        &'v self,
        hsm: &'v dyn Hsm,
        batch: BatchId,
        receipt: &super::Release,
    ) -> Result<BatchScan<'v>> {
        if !receipt.covers_batch(batch) {
            return Err(Refusal::PrintRunNotAudited { batch }.into());
        }
        let record = self
            .batch(batch)?
            .filter(|r| r.state == super::BatchState::Committed)
            .ok_or(Missing::CommittedBatch(batch))?;
        let key = record
            .data_key
            .ok_or_else(|| Error::Storage(format!("batch {batch} names no data key")))?;
        let key = DataKeyId(key);
        let opener = self.opener(hsm, key)?;
        let dirs: Vec<(u16, SegmentDir)> = self
            .read_index()
            .runs
            .iter()
            .filter(|r| r.batch == batch)
            .map(|r| (r.run, r.dir.clone()))
            .collect();
        let mut cursors = Vec::with_capacity(dirs.len());
        for (run, dir) in dirs {
            let mut c = RunCursor {
                run,
                dir,
                segment: 0,
                bytes: Vec::new(),
                serials: Vec::new(),
                deleted: Default::default(),
                at: 0,
            };
            if self.load_segment(batch, &mut c, 0)? {
                cursors.push(c);
            }
        }
        Ok(BatchScan {
            vault: self,
            hsm,
            batch,
            opener: (key, opener),
            cursors,
            failed: false,
        })
    }

    /// Loads segment `n` of the cursor's run; false when the run has no such segment.
    fn load_segment(&self, batch: BatchId, c: &mut RunCursor, n: u32) -> Result<bool> {
        if n as usize >= c.dir.firsts.len() {
            return Ok(false);
        }
        let key = segment_key(batch, c.run, n);
        let bytes = self.store.get(Tree::Segments, &key)?.ok_or_else(|| {
            Error::Storage(format!(
                "segment {n} of run {} of batch {batch} is missing",
                c.run
            ))
        })?;
        let mut serials: Vec<Box<[u8]>> = Vec::with_capacity(1024);
        Segment::parse(&bytes)?.for_each_serial(|_, s| {
            serials.push(Box::from(s));
            true
        })?;
        // The overlay is sparse: one range read a segment instead of one lookup a card.
        let mut deleted = std::collections::HashSet::new();
        if let (Some(first), Some(last)) = (serials.first(), serials.last()) {
            let mut end = last.to_vec();
            end.push(0);
            for (k, v) in self
                .store
                .range(Tree::CodeOverlay, first, Some(&end), usize::MAX)?
            {
                if v.first() == Some(&OVERLAY_DELETED) {
                    deleted.insert(k.into_boxed_slice());
                }
            }
        }
        c.segment = n;
        c.bytes = bytes;
        c.serials = serials;
        c.deleted = deleted;
        c.at = 0;
        Ok(true)
    }
}

impl BatchScan<'_> {
    /// The next card, or `None` at the end.
    fn next_card(&mut self) -> Result<Option<(String, CardCodes)>> {
        loop {
            let Some(i) = self
                .cursors
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.serials[a.1.at].cmp(&b.1.serials[b.1.at]))
                .map(|(i, _)| i)
            else {
                return Ok(None);
            };
            let c = &mut self.cursors[i];
            let at = c.at;
            let deleted = c.deleted.contains(&c.serials[at]);
            let serial = String::from_utf8(c.serials[at].to_vec()).map_err(|_| {
                Error::Storage(format!("batch {}: a serial is not text", self.batch))
            })?;
            let (key, counter, sealed) = {
                let seg = Segment::parse(&c.bytes)?;
                let (counter, sealed) = seg.record(at)?;
                (seg.key(), counter, sealed.to_vec())
            };
            c.at += 1;
            if c.at == c.serials.len() {
                let next = c.segment + 1;
                let mut c = self.cursors.swap_remove(i);
                if self.vault.load_segment(self.batch, &mut c, next)? {
                    self.cursors.push(c);
                }
            }
            if deleted {
                continue;
            }
            if key != self.opener.0 {
                self.opener = (key, self.vault.opener(self.hsm, key)?);
            }
            let clear = self.opener.1.open_detached(&serial, counter, &sealed)?;
            return Ok(Some((serial, CardCodes::unpack(clear.expose_secret())?)));
        }
    }
}

impl Iterator for BatchScan<'_> {
    type Item = Result<(String, CardCodes)>;

    /// Stops after the first error.
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_card() {
            Ok(Some(card)) => Some(Ok(card)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

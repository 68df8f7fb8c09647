//! Duplicate checks over stored runs: serials read back from segments in order, merged.
//!
//! Serials are not secret, so the checks read only the segments' serial blocks; no record is
//! decrypted. Used for serials repeated between the runs of one unsorted file, and for serials
//! of a new batch already held by a committed one (quarantine).

use super::batch::{segment_key, BatchId, SegmentDir};
use super::segment::Segment;
use crate::error::{Error, Result};
use crate::store::{Store, Tree};

/// Serials listed in a report at most.
pub const MAX_LISTED: usize = 100;

/// Reads the serials of one run in order, from a starting serial on.
pub(crate) struct RunCursor<'a> {
    store: &'a dyn Store,
    batch: BatchId,
    run: u16,
    segments: u32,
    next_segment: u32,
    flat: Vec<u8>,
    ends: Vec<usize>,
    idx: usize,
}

impl<'a> RunCursor<'a> {
    /// A cursor at the first serial ≥ `from` of the run.
    pub(crate) fn new(
        store: &'a dyn Store,
        batch: BatchId,
        run: u16,
        dir: &SegmentDir,
        from: &[u8],
    ) -> Result<Self> {
        let start = dir.segment_for(from).unwrap_or(if from > &*dir.last {
            dir.firsts.len() as u32
        } else {
            0
        });
        let mut c = RunCursor {
            store,
            batch,
            run,
            segments: dir.firsts.len() as u32,
            next_segment: start,
            flat: Vec::new(),
            ends: Vec::new(),
            idx: 0,
        };
        c.load()?;
        while c.current().is_some_and(|s| s < from) {
            c.advance()?;
        }
        Ok(c)
    }

    /// Loads the next segment that has serials (idx = 0), or leaves the cursor exhausted.
    fn load(&mut self) -> Result<()> {
        self.flat.clear();
        self.ends.clear();
        self.idx = 0;
        if self.next_segment >= self.segments {
            return Ok(());
        }
        let key = segment_key(self.batch, self.run, self.next_segment);
        self.next_segment += 1;
        let bytes = self.store.get(Tree::Segments, &key)?.ok_or_else(|| {
            Error::Storage(format!(
                "segment {} of run {} of batch {} is missing from the store",
                self.next_segment - 1,
                self.run,
                self.batch
            ))
        })?;
        let seg = Segment::parse(&bytes)?;
        let (flat, ends) = (&mut self.flat, &mut self.ends);
        seg.for_each_serial(|_, s| {
            flat.extend_from_slice(s);
            ends.push(flat.len());
            true
        })
    }

    /// The serial under the cursor, or `None` at the end of the run.
    pub(crate) fn current(&self) -> Option<&[u8]> {
        let end = *self.ends.get(self.idx)?;
        let start = if self.idx == 0 {
            0
        } else {
            self.ends[self.idx - 1]
        };
        Some(&self.flat[start..end])
    }

    /// Moves to the next serial.
    pub(crate) fn advance(&mut self) -> Result<()> {
        self.idx += 1;
        if self.idx >= self.ends.len() {
            self.load()?;
        }
        Ok(())
    }
}

/// Serials found more than once, listed up to [`MAX_LISTED`], with the total count.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repeats {
    /// The first serials found, ascending.
    pub listed: Vec<String>,
    /// How many were found in all.
    pub total: u64,
}

impl Repeats {
    fn note(&mut self, serial: &[u8]) {
        self.total += 1;
        if self.listed.len() < MAX_LISTED {
            self.listed
                .push(String::from_utf8_lossy(serial).into_owned());
        }
    }
}

/// Serials that appear in more than one of `cursors` (each cursor is duplicate-free), by a
/// k-way merge. Stops at `until` (inclusive) when given.
pub(crate) fn repeats(mut cursors: Vec<RunCursor<'_>>, until: Option<&[u8]>) -> Result<Repeats> {
    let mut found = Repeats::default();
    let mut last: Vec<u8> = Vec::new();
    let mut have_last = false;
    loop {
        let mut min: Option<usize> = None;
        for (i, c) in cursors.iter().enumerate() {
            if let Some(s) = c.current() {
                if min.is_none_or(|m| cursors[m].current().is_some_and(|ms| s < ms)) {
                    min = Some(i);
                }
            }
        }
        let Some(m) = min else { break };
        let s = cursors[m].current().unwrap_or_default();
        if until.is_some_and(|u| s > u) {
            break;
        }
        if have_last && s == last.as_slice() {
            found.note(s);
        } else {
            last.clear();
            last.extend_from_slice(s);
            have_last = true;
        }
        cursors[m].advance()?;
    }
    Ok(found)
}

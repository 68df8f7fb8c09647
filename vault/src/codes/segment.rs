//! One segment: up to [`SEGMENT_RECORDS`] sealed records of one batch run, sorted by serial,
//! stored as one store value.
//!
//! ```text
//! version 1 | flags | count u16 | data-key id u32 | counter base u32 | record length u8
//! | restarts u16 | restart offsets (u32 each) | serial block length u32 | serial block
//! | record block
//! serial block: per serial `shared prefix u8 | suffix length u8 | suffix`, with a full serial
//!               (shared 0) every RESTART_EVERY serials, at the offsets listed
//! record block: per record `[counter u32] [length u8] ciphertext | tag`
//! ```
//!
//! Flags: bit 0 — counters are `counter base + index` (records sealed in serial order, the
//! usual case for a sorted file), so no counter is stored per record; bit 1 — every record has
//! the header's length, so no length is stored per record. The counters and the data-key id
//! give each record's nonce and AAD in the detached envelope form
//! ([`crate::envelope::Sealer::seal_detached`]); the serial is the AAD's subject, so a record
//! moved to another serial does not open.
//!
//! A lookup binary-searches the restarts, then reads at most `RESTART_EVERY` serials.

use crate::envelope::DataKeyId;
use crate::error::{Error, Result};

/// Records per segment (the last segment of a run may hold fewer).
pub const SEGMENT_RECORDS: usize = 1024;
/// A full serial is stored every this many serials.
const RESTART_EVERY: usize = 16;
const VERSION: u8 = 1;
const CONSECUTIVE: u8 = 1;
const FIXED_LEN: u8 = 2;
const HEADER: usize = 1 + 1 + 2 + 4 + 4 + 1 + 2;

/// One record to encode.
#[derive(Debug, Clone, Copy)]
pub struct SealedRecord<'a> {
    /// The card serial (the AAD subject).
    pub serial: &'a [u8],
    /// The nonce counter it was sealed with.
    pub counter: u32,
    /// `ciphertext | tag`.
    pub sealed: &'a [u8],
}

/// Appends the encoding of `records` (sorted by serial, no duplicates, 1 to
/// [`SEGMENT_RECORDS`] of them) to `out`.
///
/// # Errors
/// [`Error::Invalid`] for an empty, over-long or unsorted list, or a serial or record over 255
/// bytes (callers check these first; this is the last line of defence).
pub fn encode(key: DataKeyId, records: &[SealedRecord<'_>], out: &mut Vec<u8>) -> Result<()> {
    let bad = |what: &str| Error::Invalid(format!("segment encoding: {what}"));
    let count = records.len();
    if count == 0 || count > SEGMENT_RECORDS {
        return Err(bad("1 to 1024 records a segment"));
    }
    if records.windows(2).any(|w| w[0].serial >= w[1].serial) {
        return Err(bad("serials must be sorted and distinct"));
    }
    if records
        .iter()
        .any(|r| r.serial.len() > 255 || r.sealed.len() > 255)
    {
        return Err(bad("serials and records are at most 255 bytes"));
    }
    let base = records[0].counter;
    let consecutive = records
        .iter()
        .enumerate()
        .all(|(i, r)| u64::from(r.counter) == u64::from(base) + i as u64);
    let len0 = records[0].sealed.len();
    let fixed = records.iter().all(|r| r.sealed.len() == len0);
    let mut flags = 0;
    if consecutive {
        flags |= CONSECUTIVE;
    }
    if fixed {
        flags |= FIXED_LEN;
    }
    out.push(VERSION);
    out.push(flags);
    out.extend_from_slice(&(count as u16).to_be_bytes());
    out.extend_from_slice(&key.0.to_be_bytes());
    out.extend_from_slice(&base.to_be_bytes());
    out.push(if fixed { len0 as u8 } else { 0 });
    let restarts = count.div_ceil(RESTART_EVERY);
    out.extend_from_slice(&(restarts as u16).to_be_bytes());
    let offsets_at = out.len();
    out.resize(offsets_at + 4 * restarts + 4, 0);
    let block_start = out.len();
    let mut prev: &[u8] = &[];
    for (i, r) in records.iter().enumerate() {
        let shared = if i % RESTART_EVERY == 0 {
            let off = (out.len() - block_start) as u32;
            let at = offsets_at + 4 * (i / RESTART_EVERY);
            out[at..at + 4].copy_from_slice(&off.to_be_bytes());
            0
        } else {
            prev.iter()
                .zip(r.serial)
                .take_while(|(a, b)| a == b)
                .count()
        };
        out.push(shared as u8);
        out.push((r.serial.len() - shared) as u8);
        out.extend_from_slice(&r.serial[shared..]);
        prev = r.serial;
    }
    let block_len = (out.len() - block_start) as u32;
    let at = offsets_at + 4 * restarts;
    out[at..at + 4].copy_from_slice(&block_len.to_be_bytes());
    for r in records {
        if !consecutive {
            out.extend_from_slice(&r.counter.to_be_bytes());
        }
        if !fixed {
            out.push(r.sealed.len() as u8);
        }
        out.extend_from_slice(r.sealed);
    }
    Ok(())
}

/// A decoded view of a stored segment (borrows the stored bytes).
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    key: DataKeyId,
    count: usize,
    consecutive: bool,
    base: u32,
    record_len: usize,
    restarts: &'a [u8],
    serials: &'a [u8],
    records: &'a [u8],
}

fn damaged() -> Error {
    Error::Storage("a code segment in the store is damaged".to_string())
}

impl<'a> Segment<'a> {
    /// Reads the header of a stored segment.
    ///
    /// # Errors
    /// [`Error::Storage`] for bytes that are not a segment of a known version.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        if bytes.len() < HEADER || bytes[0] != VERSION {
            return Err(damaged());
        }
        let flags = bytes[1];
        let count = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        let key = DataKeyId(u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]));
        let base = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let record_len = usize::from(bytes[12]);
        let restarts = usize::from(u16::from_be_bytes([bytes[13], bytes[14]]));
        let rest = &bytes[HEADER..];
        if count == 0 || restarts != count.div_ceil(RESTART_EVERY) || rest.len() < 4 * restarts + 4
        {
            return Err(damaged());
        }
        let (offsets, rest) = rest.split_at(4 * restarts);
        let (len, rest) = rest.split_at(4);
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if rest.len() < len {
            return Err(damaged());
        }
        let (serials, records) = rest.split_at(len);
        let fixed = flags & FIXED_LEN != 0;
        let consecutive = flags & CONSECUTIVE != 0;
        if fixed {
            let per = record_len + if consecutive { 0 } else { 4 };
            if record_len == 0 || records.len() != per * count {
                return Err(damaged());
            }
        }
        Ok(Segment {
            key,
            count,
            consecutive,
            base,
            record_len: if fixed { record_len } else { 0 },
            restarts: offsets,
            serials,
            records,
        })
    }

    /// The data key the records are sealed under.
    pub fn key(&self) -> DataKeyId {
        self.key
    }

    /// Number of records.
    #[cfg(any(test, feature = "bench", feature = "fuzzing"))]
    pub fn len(&self) -> usize {
        self.count
    }

    /// Never true for a parsed segment.
    #[cfg(any(test, feature = "bench", feature = "fuzzing"))]
    #[cfg_attr(test, allow(dead_code))]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The serials in order, each given to `f` with its index; stops early when `f` returns
    /// false.
    ///
    /// # Errors
    /// [`Error::Storage`] for a damaged serial block.
    pub fn for_each_serial(&self, mut f: impl FnMut(usize, &[u8]) -> bool) -> Result<()> {
        let mut buf = [0u8; 255];
        let mut len = 0usize;
        let mut at = 0usize;
        for i in 0..self.count {
            len = self.next_serial(&mut at, &mut buf, len)?;
            if !f(i, &buf[..len]) {
                break;
            }
        }
        Ok(())
    }

    fn next_serial(&self, at: &mut usize, buf: &mut [u8; 255], prev_len: usize) -> Result<usize> {
        let s = self.serials;
        if *at + 2 > s.len() {
            return Err(damaged());
        }
        let (shared, suffix) = (usize::from(s[*at]), usize::from(s[*at + 1]));
        *at += 2;
        if shared > prev_len || shared + suffix > 255 || *at + suffix > s.len() {
            return Err(damaged());
        }
        buf[shared..shared + suffix].copy_from_slice(&s[*at..*at + suffix]);
        *at += suffix;
        Ok(shared + suffix)
    }

    fn restart(&self, r: usize) -> usize {
        let o = &self.restarts[4 * r..4 * r + 4];
        u32::from_be_bytes([o[0], o[1], o[2], o[3]]) as usize
    }

    /// The index of `serial`, if this segment holds it.
    ///
    /// # Errors
    /// [`Error::Storage`] for a damaged serial block.
    pub fn find(&self, serial: &[u8]) -> Result<Option<usize>> {
        let restarts = self.restarts.len() / 4;
        // The last restart whose full serial is <= `serial`.
        let (mut lo, mut hi) = (0usize, restarts);
        let mut buf = [0u8; 255];
        while lo < hi {
            let mid = (lo + hi) / 2;
            let mut at = self.restart(mid);
            let len = self.next_serial(&mut at, &mut buf, 0)?;
            if &buf[..len] <= serial {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return Ok(None);
        }
        let r = lo - 1;
        let mut at = self.restart(r);
        let mut len = 0;
        let end = ((r + 1) * RESTART_EVERY).min(self.count);
        for i in r * RESTART_EVERY..end {
            len = self.next_serial(&mut at, &mut buf, len)?;
            match buf[..len].cmp(serial) {
                std::cmp::Ordering::Equal => return Ok(Some(i)),
                std::cmp::Ordering::Greater => return Ok(None),
                std::cmp::Ordering::Less => {}
            }
        }
        Ok(None)
    }

    /// The nonce counter and `ciphertext | tag` of `serial`, if this segment holds it (the
    /// code vault's lookup: [`Segment::find`], then [`Segment::record`]).
    ///
    /// # Errors
    /// [`Error::Storage`] for a damaged segment.
    pub fn lookup(&self, serial: &[u8]) -> Result<Option<(u32, &'a [u8])>> {
        match self.find(serial)? {
            Some(i) => self.record(i).map(Some),
            None => Ok(None),
        }
    }

    /// Record `i`: its nonce counter and `ciphertext | tag`.
    ///
    /// # Errors
    /// [`Error::Storage`] for an index out of range or a damaged record block.
    pub fn record(&self, i: usize) -> Result<(u32, &'a [u8])> {
        if i >= self.count {
            return Err(damaged());
        }
        let r = self.records;
        if self.record_len > 0 {
            let per = self.record_len + if self.consecutive { 0 } else { 4 };
            let at = i * per;
            return if self.consecutive {
                let counter = self.base.checked_add(i as u32).ok_or_else(damaged)?;
                Ok((counter, &r[at..at + per]))
            } else {
                let c = u32::from_be_bytes([r[at], r[at + 1], r[at + 2], r[at + 3]]);
                Ok((c, &r[at + 4..at + per]))
            };
        }
        let mut at = 0usize;
        for j in 0..=i {
            let counter = if self.consecutive {
                self.base.checked_add(j as u32).ok_or_else(damaged)?
            } else {
                let c = r.get(at..at + 4).ok_or_else(damaged)?;
                at += 4;
                u32::from_be_bytes([c[0], c[1], c[2], c[3]])
            };
            let len = usize::from(*r.get(at).ok_or_else(damaged)?);
            at += 1;
            let sealed = r.get(at..at + len).ok_or_else(damaged)?;
            at += len;
            if j == i {
                return Ok((counter, sealed));
            }
        }
        Err(damaged())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(i: u64) -> Vec<u8> {
        format!("80390000{:011}", i * 3).into_bytes()
    }

    fn build(n: usize, consecutive: bool, fixed: bool) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<u8>) {
        let serials: Vec<Vec<u8>> = (0..n as u64).map(serial).collect();
        let sealed: Vec<Vec<u8>> = (0..n)
            .map(|i| vec![i as u8; if fixed { 24 } else { 20 + i % 7 }])
            .collect();
        let records: Vec<SealedRecord<'_>> = (0..n)
            .map(|i| SealedRecord {
                serial: &serials[i],
                counter: if consecutive {
                    100 + i as u32
                } else {
                    (n - i) as u32 * 7
                },
                sealed: &sealed[i],
            })
            .collect();
        let mut out = Vec::new();
        encode(DataKeyId(5), &records, &mut out).unwrap();
        (serials, sealed, out)
    }

    #[test]
    fn every_serial_is_found_with_its_record_in_every_layout() {
        for (consecutive, fixed) in [(true, true), (true, false), (false, true), (false, false)] {
            for n in [1, 15, 16, 17, 1000, SEGMENT_RECORDS] {
                let (serials, sealed, bytes) = build(n, consecutive, fixed);
                let seg = Segment::parse(&bytes).unwrap();
                assert_eq!(seg.len(), n);
                assert_eq!(seg.key(), DataKeyId(5));
                for (i, s) in serials.iter().enumerate() {
                    assert_eq!(seg.find(s).unwrap(), Some(i));
                    let (counter, rec) = seg.record(i).unwrap();
                    assert_eq!(rec, &sealed[i][..]);
                    let want = if consecutive {
                        100 + i as u32
                    } else {
                        (n - i) as u32 * 7
                    };
                    assert_eq!(counter, want);
                    // Between two stored serials, and before the first: absent.
                    let mut between = s.clone();
                    *between.last_mut().unwrap() += 1;
                    assert_eq!(seg.find(&between).unwrap(), None);
                }
                assert_eq!(seg.find(b"0").unwrap(), None);
                assert_eq!(seg.find(b"9").unwrap(), None);
                let mut seen = Vec::new();
                seg.for_each_serial(|_, s| {
                    seen.push(s.to_vec());
                    true
                })
                .unwrap();
                assert_eq!(seen, serials);
            }
        }
    }

    #[test]
    fn sorted_serials_are_front_coded() {
        let (_, _, bytes) = build(SEGMENT_RECORDS, true, true);
        let per_record = bytes.len() as f64 / SEGMENT_RECORDS as f64;
        // 24 bytes of record + about 5 of serial.
        assert!(per_record < 30.0, "{per_record} bytes a record");
    }

    #[test]
    fn bad_lists_and_damaged_bytes_are_errors() {
        let a = b"1".to_vec();
        let r = |s: &'static [u8]| SealedRecord {
            serial: s,
            counter: 0,
            sealed: &[1, 2],
        };
        let mut out = Vec::new();
        assert!(encode(DataKeyId(1), &[], &mut out).is_err());
        assert!(encode(DataKeyId(1), &[r(b"2"), r(b"1")], &mut out).is_err());
        assert!(encode(DataKeyId(1), &[r(b"1"), r(b"1")], &mut out).is_err());
        drop(a);
        let (_, _, bytes) = build(40, true, false);
        for cut in [0, 5, HEADER, bytes.len() / 2, bytes.len() - 1] {
            let seg = Segment::parse(&bytes[..cut]);
            if let Ok(seg) = seg {
                // A cut inside the record block shows at the last record.
                assert!(seg.record(39).is_err(), "cut at {cut}");
            }
        }
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(Segment::parse(&bad).is_err());
    }
}

//! Generation of PIN/PUK codes for cards that came without them.
//!
//! What it does: draws uniform random digits from a CSPRNG, drops weak codes by policy, builds
//! [`Pin`]/[`Puk`] pairs (or seals `pin|puk` records straight into envelopes), in parallel with
//! rayon when asked. What it does not do: store records, choose data keys, audit, or decide which
//! serials need codes — the import/batch layer does that, and stores generated codes like
//! imported ones.
//!
//! # Design
//!
//! - **Bulk randomness.** A [`DigitStream`] owns a zeroizing buffer ([`RANDOM_BUFFER_LEN`] bytes)
//!   refilled from a fill function in one call: [`system_fill`] (aws-lc's `SystemRandom`) or any
//!   `FnMut(&mut [u8]) -> Result<()>`, so the HSM's [`crate::Hsm::fill_random`] plugs in. One
//!   RNG call per code would be about a hundred times slower.
//! - **Uniform digits by rejection.** A byte `b` is accepted only when `b < 250`, and gives the
//!   digit `b % 10`. See [`DigitStream::next_digit`] for why this is unbiased.
//! - **Weak codes are redrawn**, never patched: patching a digit would bias the distribution.
//!   The filter ([`WeakFilter`]) is deliberately the two rules of the policy — all digits equal,
//!   and runs — and nothing else (it does not compare the PUK with the PIN, nor look for dates or
//!   repeated pairs): the fewer codes are excluded, the closer the output is to uniform, and the
//!   rules are easy to state to an auditor.
//! - **Fixed lengths.** Codes are generated at the policy's *maximum* length (`policy.pin.max`,
//!   `policy.puk.max`): when a policy allows a range, the longest code is the strongest one that
//!   every card accepts under that policy, and one fixed length per batch keeps records of equal
//!   size.
//! - **No allocation per code.** Digits are written into a stack buffer, parsed into a
//!   fixed-size [`Pin`]/[`Puk`], and the stack buffer is zeroized.
//! - **Parallel.** [`generate_for`] splits the serials into chunks of [`CHUNK`]; each rayon task
//!   has its own [`DigitStream`] (its own buffer) over a shared, thread-safe fill function, and
//!   the output is in serial order whatever the scheduling. It runs in the current rayon pool:
//!   call it inside `pool.install(..)` to cap the threads.
//!
//! # Security
//!
//! The random buffer, the digit scratch buffers and the record plaintext are zeroized. A code is
//! never formatted: errors here are static strings or name a count, and every output type has a
//! redacted `Debug`. Values moved by Rust (for example when a `Vec` of pairs grows) leave copies
//! that cannot be zeroized; the output vectors are therefore allocated once at their final size.
//! A refill whose bytes are all equal, or a stream that keeps producing only weak codes, is
//! treated as a failed generator ([`Error::Provider`]) rather than looping or emitting codes.

use crate::envelope::Sealer;
use crate::error::{Error, Result};
use crate::policy::{CodePolicy, MAX_CODE_DIGITS};
use crate::secret::{Pin, Puk};
use rayon::prelude::*;
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// Bytes of randomness fetched per fill call.
pub const RANDOM_BUFFER_LEN: usize = 64 * 1024;

/// Serials per rayon task in [`generate_for`].
pub const CHUNK: usize = 4096;

/// Most draws for one code before the generator is declared broken. With a working CSPRNG the
/// chance that a 2-digit code (the worst case: 30 weak codes of 100) is weak 100 times in a row
/// is 0.3^100 ≈ 5e-53; for 5 digits it is (3e-4)^100.
const MAX_DRAWS: usize = 100;

/// Bytes accepted by the rejection sampler: `0..ACCEPT_BELOW`. The largest multiple of 10 that
/// fits in a byte.
const ACCEPT_BELOW: u8 = 250;

/// Words accepted by the wide sampler: `0..WIDE_ACCEPT_BELOW`, the largest multiple of 10^9
/// below 2^32.
const WIDE_ACCEPT_BELOW: u32 = 4_000_000_000;

/// A buffer at least this long whose bytes are all equal is taken as a failed generator
/// (probability 2^-(8·(n-1)) for a working one).
const HEALTH_CHECK_MIN_LEN: usize = 16;

/// Room for `pin|puk` at the longest lengths a policy allows.
const RECORD_MAX: usize = 2 * MAX_CODE_DIGITS + 1;

/// Fills `buf` from aws-lc's system CSPRNG (`SystemRandom`).
///
/// # Errors
/// [`Error::Provider`] if the generator fails.
pub fn system_fill(buf: &mut [u8]) -> Result<()> {
    use aws_lc_rs::rand::SecureRandom;
    aws_lc_rs::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| Error::Provider("system random generator"))
}

/// Which weak codes are redrawn. `Default` turns both rules on.
///
/// A rule looks at the whole code:
/// - `all_equal`: every digit is the same (`00000`, `77777`);
/// - `runs`: each digit is one more than the one before, or each is one less, counting modulo
///   10 so that the run may wrap past 9/0 (`12345`, `98765`, `78901`, `21098`).
///
/// For n ≥ 2 digits the two rules are disjoint and exclude 10 + 20 of the 10^n codes (0.03 %
/// of 5-digit codes). A 1-digit code is always "all equal", so [`CodeGenerator::new`] refuses
/// an active filter with 1-digit codes rather than loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeakFilter {
    /// Redraw codes whose digits are all equal.
    pub all_equal: bool,
    /// Redraw ascending or descending runs (wrapping modulo 10).
    pub runs: bool,
}

impl WeakFilter {
    /// Both rules on.
    pub const STRICT: WeakFilter = WeakFilter {
        all_equal: true,
        runs: true,
    };

    /// No rule: every code of the right length is accepted.
    pub const NONE: WeakFilter = WeakFilter {
        all_equal: false,
        runs: false,
    };

    fn any(&self) -> bool {
        self.all_equal || self.runs
    }

    /// True when `digits` (values 0..=9, not ASCII) is weak under this filter.
    fn is_weak(&self, digits: &[u8]) -> bool {
        let Some((&first, rest)) = digits.split_first() else {
            return false;
        };
        // One pass: the step between neighbours must be the same everywhere (0: all equal,
        // +1 or -1 mod 10: a run).
        let Some(&second) = rest.first() else {
            return self.all_equal;
        };
        let step = (second + 10 - first) % 10;
        let weak_step = (self.all_equal && step == 0) || (self.runs && (step == 1 || step == 9));
        weak_step && digits.windows(2).all(|w| (w[1] + 10 - w[0]) % 10 == step)
    }
}

impl Default for WeakFilter {
    fn default() -> Self {
        WeakFilter::STRICT
    }
}

/// Uniform decimal digits from a bulk-filled random buffer.
///
/// `F` is the fill function: [`system_fill`], a closure over an HSM's `fill_random`, or a
/// deterministic source in tests.
///
/// # Security
/// The buffer is zeroized on drop; `Debug` shows only counters.
pub struct DigitStream<F> {
    fill: F,
    buf: Zeroizing<Vec<u8>>,
    pos: usize,
    refills: u64,
    rejected: u64,
}

impl<F: FnMut(&mut [u8]) -> Result<()>> DigitStream<F> {
    /// A stream with a [`RANDOM_BUFFER_LEN`] buffer. Nothing is drawn until the first digit.
    pub fn new(fill: F) -> Self {
        Self::with_buffer_len(fill, RANDOM_BUFFER_LEN)
    }

    /// A stream with a buffer of `len` bytes (at least 1).
    pub fn with_buffer_len(fill: F, len: usize) -> Self {
        DigitStream {
            fill,
            buf: Zeroizing::new(vec![0u8; len.max(1)]),
            // Empty until the first refill.
            pos: len.max(1),
            refills: 0,
            rejected: 0,
        }
    }

    fn refill(&mut self) -> Result<()> {
        // Wiped first (in place: `Vec::zeroize` would also empty the vector), so a fill that
        // writes nothing shows up as a constant buffer instead of replaying old bytes.
        self.buf[..].zeroize();
        self.pos = self.buf.len();
        (self.fill)(&mut self.buf[..])?;
        let b = &self.buf[..];
        if b.len() >= HEALTH_CHECK_MIN_LEN && b.iter().all(|&x| x == b[0]) {
            return Err(Error::Provider(
                "random generator returned a constant buffer",
            ));
        }
        if b.len() >= HEALTH_CHECK_MIN_LEN && b.iter().all(|&x| x >= ACCEPT_BELOW) {
            // 6/256 per byte: for 16 bytes or more this is below 1e-25 from a working
            // generator, and it would otherwise make the samplers loop forever.
            return Err(Error::Provider("random generator returned no usable byte"));
        }
        self.pos = 0;
        self.refills += 1;
        Ok(())
    }

    /// The next uniform digit, 0..=9 (a value, not ASCII).
    ///
    /// Why it is unbiased: a byte from the CSPRNG is uniform over 0..=255. Accepting only
    /// `b < 250` leaves `b` uniform over 0..=249 (each accepted value has probability 1/250,
    /// and rejected bytes are simply discarded, independently of the accepted ones). 250 is
    /// 25 × 10, so each digit d has exactly 25 preimages {d, d+10, …, d+240} and
    /// P(b % 10 = d) = 25/250 = 1/10. Using all 256 values would give digits 0..=5 the
    /// probability 26/256 and 6..=9 the probability 25/256 (modulo bias). About 2.3 % of bytes
    /// are rejected.
    ///
    /// # Errors
    /// The fill function's error, or [`Error::Provider`] for a constant buffer.
    #[inline]
    pub fn next_digit(&mut self) -> Result<u8> {
        loop {
            if self.pos >= self.buf.len() {
                self.refill()?;
            }
            let b = self.buf[self.pos];
            self.pos += 1;
            if b < ACCEPT_BELOW {
                return Ok(b % 10);
            }
            self.rejected += 1;
        }
    }

    /// Fills `out` with uniform digits, 0..=9 (values, not ASCII): the same sampler as
    /// [`DigitStream::next_digit`], scanning the buffer in one tight loop.
    ///
    /// # Errors
    /// As [`DigitStream::next_digit`]; `out` is then partly written and should be discarded.
    #[inline]
    pub fn fill_digits(&mut self, out: &mut [u8]) -> Result<()> {
        let mut k = 0;
        while k < out.len() {
            if self.pos >= self.buf.len() {
                self.refill()?;
            }
            let mut used = 0;
            for &b in &self.buf[self.pos..] {
                used += 1;
                if b < ACCEPT_BELOW {
                    out[k] = b % 10;
                    k += 1;
                    if k == out.len() {
                        break;
                    }
                } else {
                    self.rejected += 1;
                }
            }
            self.pos += used;
        }
        Ok(())
    }

    /// Fills `out` with uniform digits (values 0..=9), nine at a time from 32-bit words: the
    /// sampler of the bulk path ([`CodeGenerator::draw_packed`]).
    ///
    /// Why it is unbiased: a little-endian word `v` of four CSPRNG bytes is uniform over
    /// 0..2^32. Accepting only `v < 4·10^9` leaves it uniform over 0..4·10^9 (about 6.9 % of
    /// words are rejected, independently of the accepted ones). Every residue of `v mod 10^9`
    /// then has exactly 4 preimages, so `v mod 10^9` is uniform over 0..10^9, and its nine
    /// decimal digits are independent and uniform. Digits are taken in a fixed order and the
    /// unused ones of the last word are dropped whatever their values, which biases nothing.
    /// A word never straddles two buffer fills: the last 1 to 3 bytes of a fill are dropped.
    ///
    /// # Errors
    /// As [`DigitStream::next_digit`]; `out` is then partly written and should be discarded.
    #[inline]
    pub fn fill_digits_wide(&mut self, out: &mut [u8]) -> Result<()> {
        let mut k = 0;
        while k < out.len() {
            if self.pos + 4 > self.buf.len() {
                self.refill()?;
                if self.buf.len() < 4 {
                    return Err(Error::Provider("random buffer shorter than one word"));
                }
            }
            let b = &self.buf[self.pos..self.pos + 4];
            self.pos += 4;
            let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if v >= WIDE_ACCEPT_BELOW {
                self.rejected += 4;
                continue;
            }
            let mut x = v % 1_000_000_000;
            for d in out[k..].iter_mut().take(9) {
                *d = (x % 10) as u8;
                x /= 10;
                k += 1;
            }
        }
        Ok(())
    }

    /// Buffer refills so far (not secret).
    pub fn refills(&self) -> u64 {
        self.refills
    }

    /// Bytes rejected by the sampler so far (not secret: rejection is independent of the
    /// accepted digits).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }
}

impl<F> fmt::Debug for DigitStream<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DigitStream(<redacted>, {} byte buffer, {} refills, {} rejected)",
            self.buf.len(),
            self.refills,
            self.rejected
        )
    }
}

/// One generated pair, for the serial at `index` in the caller's list.
#[derive(Debug)]
pub struct Generated {
    /// Position of the serial in the list given to [`generate_for`].
    pub index: usize,
    /// The PIN.
    pub pin: Pin,
    /// The PUK.
    pub puk: Puk,
}

/// Draws PIN/PUK pairs under a [`CodePolicy`] and a [`WeakFilter`].
#[derive(Debug, Clone, Copy)]
pub struct CodeGenerator {
    policy: CodePolicy,
    filter: WeakFilter,
    pin_len: usize,
    puk_len: usize,
}

impl CodeGenerator {
    /// A generator of codes at the policy's maximum lengths.
    ///
    /// # Errors
    /// [`Error::Code`] for an invalid policy; [`Error::Invalid`] when the filter is on and a
    /// code would have 1 digit (every 1-digit code is weak).
    pub fn new(policy: CodePolicy, filter: WeakFilter) -> Result<Self> {
        policy.validate()?;
        let (pin_len, puk_len) = (usize::from(policy.pin.max), usize::from(policy.puk.max));
        if filter.any() && pin_len.min(puk_len) < 2 {
            return Err(Error::Invalid(
                "weak-code filter needs codes of at least 2 digits".to_string(),
            ));
        }
        Ok(CodeGenerator {
            policy,
            filter,
            pin_len,
            puk_len,
        })
    }

    /// Digits in each generated PIN (not secret).
    pub fn pin_len(&self) -> usize {
        self.pin_len
    }

    /// Digits in each generated PUK (not secret).
    pub fn puk_len(&self) -> usize {
        self.puk_len
    }

    /// Length of the `pin|puk` record plaintext sealed by [`CodeGenerator::seal_generated`].
    pub fn record_len(&self) -> usize {
        self.pin_len + 1 + self.puk_len
    }

    /// Writes one non-weak code of `out.len()` ASCII digits into `out`.
    fn draw<F: FnMut(&mut [u8]) -> Result<()>>(
        &self,
        stream: &mut DigitStream<F>,
        out: &mut [u8],
    ) -> Result<()> {
        for _ in 0..MAX_DRAWS {
            stream.fill_digits(out)?;
            let weak = self.filter.is_weak(out);
            for d in out.iter_mut() {
                *d += b'0';
            }
            if !weak {
                return Ok(());
            }
        }
        out.zeroize();
        Err(Error::Provider("random generator produced only weak codes"))
    }

    /// One PIN/PUK pair.
    ///
    /// # Errors
    /// The stream's errors ([`Error::Provider`] for a failed generator).
    pub fn pair<F: FnMut(&mut [u8]) -> Result<()>>(
        &self,
        stream: &mut DigitStream<F>,
    ) -> Result<(Pin, Puk)> {
        let mut scratch = Zeroizing::new([0u8; MAX_CODE_DIGITS]);
        let pin = self.code(stream, &mut scratch[..self.pin_len], Pin::parse)?;
        let puk = self.code(stream, &mut scratch[..self.puk_len], Puk::parse)?;
        Ok((pin, puk))
    }

    fn code<F, T, E>(
        &self,
        stream: &mut DigitStream<F>,
        scratch: &mut [u8],
        parse: impl FnOnce(&str, &CodePolicy) -> std::result::Result<T, E>,
    ) -> Result<T>
    where
        F: FnMut(&mut [u8]) -> Result<()>,
        Error: From<E>,
    {
        self.draw(stream, scratch)?;
        // `draw` writes only ASCII digits, so this is valid UTF-8; the error arm is unreachable
        // and carries no byte of the code.
        let text = std::str::from_utf8(scratch)
            .map_err(|_| Error::Provider("generated code is not ascii"))?;
        let code = parse(text, &self.policy)?;
        scratch.zeroize();
        Ok(code)
    }

    /// Draws one pair straight into its stored form: the packed record of
    /// [`crate::codes::record`] (BCD, 8 bytes for CNS) in `out`, whose length it returns. No
    /// `Pin`/`Puk` is built: the digits go from the random buffer to the record in one
    /// zeroizing scratch buffer. `out` is the caller's zeroizing buffer.
    ///
    /// # Errors
    /// The stream's errors.
    pub fn draw_packed<F: FnMut(&mut [u8]) -> Result<()>>(
        &self,
        stream: &mut DigitStream<F>,
        out: &mut [u8; crate::codes::record::MAX_RECORD_LEN],
    ) -> Result<usize> {
        let (pin_len, total) = (self.pin_len, self.pin_len + self.puk_len);
        // Digit values are drawn into `out` itself, past where the packed bytes go (packing
        // reads digit i at 2 + i and writes byte 1 + i/2, never ahead of what it reads), so no
        // other buffer ever holds them.
        let digits = &mut out[2..2 + total];
        stream.fill_digits_wide(digits)?;
        // Redraw a weak part alone (the other part stays uniform and independent).
        for range in [0..pin_len, pin_len..total] {
            let mut draws = 1;
            while self.filter.is_weak(&digits[range.clone()]) {
                if draws == MAX_DRAWS {
                    out.zeroize();
                    return Err(Error::Provider("random generator produced only weak codes"));
                }
                stream.fill_digits_wide(&mut digits[range.clone()])?;
                draws += 1;
            }
        }
        out[0] = (((pin_len - 1) as u8) << 4) | ((self.puk_len - 1) as u8);
        for i in 0..total / 2 {
            out[1 + i] = out[2 + 2 * i] << 4 | out[3 + 2 * i];
        }
        let len = 1 + total.div_ceil(2);
        if total % 2 == 1 {
            out[len - 1] = out[1 + total] << 4 | 0x0F;
        }
        // Wipe the digit values left past the packed record.
        out[len..2 + total].zeroize();
        Ok(len)
    }

    /// Generates a pair for each serial and appends one envelope per serial to `out`, in
    /// order, each bound to its serial (the AAD) and holding the record `pin|puk` in ASCII.
    /// Every envelope is `HEADER_LEN + record_len() + TAG_LEN` bytes long.
    ///
    /// # Errors
    /// The stream's and the sealer's errors. On error `out` is truncated back to its length on
    /// entry (no envelope of this call is left behind).
    ///
    /// # Security
    /// The plaintext lives only in one zeroizing stack buffer, wiped when this returns.
    pub fn seal_generated<S, F>(
        &self,
        serials: &[S],
        stream: &mut DigitStream<F>,
        sealer: &mut Sealer,
        out: &mut Vec<u8>,
    ) -> Result<()>
    where
        S: AsRef<str>,
        F: FnMut(&mut [u8]) -> Result<()>,
    {
        let start = out.len();
        let mut record = Zeroizing::new([0u8; RECORD_MAX]);
        let (pin_len, len) = (self.pin_len, self.record_len());
        record[pin_len] = b'|';
        let result = serials.iter().try_for_each(|serial| {
            let (pin, rest) = record[..len].split_at_mut(pin_len);
            self.draw(stream, pin)?;
            self.draw(stream, &mut rest[1..])?;
            sealer.seal_into(serial.as_ref(), &record[..len], out)
        });
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

/// Generates a pair for every serial, in parallel, in serial order: element `i` of the result
/// has `index == i`.
///
/// `random` is shared by the rayon tasks (so it must be `Sync`: [`system_fill`], or a closure
/// over an `Arc<dyn Hsm>`); each task draws from it into its own buffer. Runs in the current
/// rayon pool. Only the list's length is used here; the serials are taken so that a caller
/// cannot mix up lists. For very long lists, call it on successive slices to bound memory.
///
/// # Errors
/// The first error of any task (the whole call fails: no partial list).
pub fn generate_for<S: Sync>(
    serials: &[S],
    generator: &CodeGenerator,
    random: &(dyn Fn(&mut [u8]) -> Result<()> + Sync),
) -> Result<Vec<Vec<Generated>>> {
    serials
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(c, chunk)| {
            // Ask for no more randomness than the chunk needs (plus slack for rejections and
            // redraws, then refills as needed).
            let need = chunk.len() * (generator.pin_len + generator.puk_len) * 9 / 8 + 64;
            let mut stream = DigitStream::with_buffer_len(random, need.min(RANDOM_BUFFER_LEN));
            let mut part = Vec::with_capacity(chunk.len());
            for i in 0..chunk.len() {
                let (pin, puk) = generator.pair(&mut stream)?;
                part.push(Generated {
                    index: c * CHUNK + i,
                    pin,
                    puk,
                });
            }
            Ok(part)
        })
        .collect::<Result<_>>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{DataKeyId, Opener, HEADER_LEN, TAG_LEN};
    use crate::hsm::KeyPurpose;
    use crate::secret::{DataKey, FreshDataKey};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// SplitMix64 over a counter: a deterministic, statistically good byte source for tests.
    fn counter_source(seed: u64) -> impl FnMut(&mut [u8]) -> Result<()> {
        let mut counter = seed;
        move |buf: &mut [u8]| {
            for chunk in buf.chunks_mut(8) {
                counter = counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = counter;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
            }
            Ok(())
        }
    }

    /// Serves `script` once, as one buffer of exactly its length; then fails.
    fn scripted(script: &[u8]) -> DigitStream<impl FnMut(&mut [u8]) -> Result<()>> {
        let bytes = script.to_vec();
        let mut served = false;
        let fill = move |buf: &mut [u8]| {
            if served {
                return Err(Error::Provider("script exhausted"));
            }
            served = true;
            buf.copy_from_slice(&bytes);
            Ok(())
        };
        DigitStream::with_buffer_len(fill, script.len())
    }

    fn ascii(digits: &[u8]) -> Vec<u8> {
        digits.iter().map(|d| d + b'0').collect()
    }

    fn chi_square(counts: &[u64; 10]) -> f64 {
        let n: u64 = counts.iter().sum();
        let e = n as f64 / 10.0;
        counts.iter().map(|&c| (c as f64 - e).powi(2) / e).sum()
    }

    #[test]
    fn pairs_are_digits_of_the_policy_lengths() {
        for policy in [CodePolicy::CNS, CodePolicy::CIE] {
            let g = CodeGenerator::new(policy, WeakFilter::default()).unwrap();
            let mut s = DigitStream::new(system_fill);
            for _ in 0..1000 {
                let (pin, puk) = g.pair(&mut s).unwrap();
                assert_eq!(pin.len(), usize::from(policy.pin.max));
                assert_eq!(puk.len(), usize::from(policy.puk.max));
                assert!(pin.expose_secret().iter().all(u8::is_ascii_digit));
                assert!(puk.expose_secret().iter().all(u8::is_ascii_digit));
            }
        }
        // A range policy generates at its maximum.
        let range = CodePolicy {
            pin: crate::policy::LengthBounds { min: 4, max: 6 },
            ..CodePolicy::CNS
        };
        let g = CodeGenerator::new(range, WeakFilter::default()).unwrap();
        let (pin, _) = g.pair(&mut DigitStream::new(system_fill)).unwrap();
        assert_eq!(pin.len(), 6);
    }

    #[test]
    fn generator_refuses_bad_policy_and_one_digit_filtered_codes() {
        let one = CodePolicy {
            pin: crate::policy::LengthBounds::exactly(1),
            ..CodePolicy::CNS
        };
        assert!(matches!(
            CodeGenerator::new(one, WeakFilter::default()),
            Err(Error::Invalid(_))
        ));
        assert!(CodeGenerator::new(one, WeakFilter::NONE).is_ok());
        let bad = CodePolicy {
            puk: crate::policy::LengthBounds { min: 9, max: 8 },
            ..CodePolicy::CNS
        };
        assert!(matches!(
            CodeGenerator::new(bad, WeakFilter::NONE),
            Err(Error::Code(_))
        ));
    }

    #[test]
    fn digits_are_uniform_per_position() {
        // 1,000,000 PINs of 5 digits from a fixed-seed source: 1,000,000 digits per position.
        // Chi-square with 9 degrees of freedom: mean 9; P(X > 40) ≈ 5e-6. The seed is fixed, so
        // the outcome is too; the bound is only there to catch a biased sampler.
        let g = CodeGenerator::new(CodePolicy::CNS, WeakFilter::NONE).unwrap();
        let mut s = DigitStream::new(counter_source(42));
        let mut counts = [[0u64; 10]; 5];
        let mut scratch = [0u8; 5];
        for _ in 0..1_000_000 {
            g.draw(&mut s, &mut scratch).unwrap();
            for (pos, &d) in scratch.iter().enumerate() {
                counts[pos][usize::from(d - b'0')] += 1;
            }
        }
        for (pos, c) in counts.iter().enumerate() {
            let x2 = chi_square(c);
            assert!(x2 < 40.0, "position {pos}: chi-square {x2}");
        }
        // The rejection branch was taken: about 6/256 of the bytes drawn.
        let drawn = 5_000_000 + s.rejected();
        let rate = s.rejected() as f64 / drawn as f64;
        assert!((0.020..0.027).contains(&rate), "rejection rate {rate}");
        assert!(s.refills() > 1);

        // The test has power: plain `b % 10` over all 256 byte values fails it by far.
        let mut fill = counter_source(42);
        let mut buf = vec![0u8; 1_000_000];
        fill(&mut buf).unwrap();
        let mut biased = [0u64; 10];
        for b in buf {
            biased[usize::from(b % 10)] += 1;
        }
        assert!(chi_square(&biased) > 100.0, "{}", chi_square(&biased));
    }

    #[test]
    fn wide_digits_are_uniform_per_position_and_high_words_are_skipped() {
        // Uniformity: 13-digit draws from the system generator, chi-square per position.
        let mut s = DigitStream::new(system_fill);
        let n = 20_000;
        let mut counts = [[0u32; 10]; 13];
        let mut out = [0u8; 13];
        for _ in 0..n {
            s.fill_digits_wide(&mut out).unwrap();
            for (p, &d) in out.iter().enumerate() {
                counts[p][usize::from(d)] += 1;
            }
        }
        let expect = f64::from(n) / 10.0;
        for (p, c) in counts.iter().enumerate() {
            let chi2: f64 = c
                .iter()
                .map(|&o| (f64::from(o) - expect).powi(2) / expect)
                .sum();
            // 9 degrees of freedom: p < 1e-6 beyond 42.
            assert!(chi2 < 42.0, "position {p}: chi2 {chi2}, counts {c:?}");
        }
        // Words >= 4e9 are skipped; accepted ones give their low nine digits, least
        // significant first.
        let words: Vec<u8> = [4_000_000_000u32, u32::MAX, 3_123_456_789, 7]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let mut fixed = DigitStream::with_buffer_len(
            |b: &mut [u8]| {
                b.copy_from_slice(&words);
                Ok(())
            },
            16,
        );
        let mut got = [0u8; 11];
        fixed.fill_digits_wide(&mut got).unwrap();
        assert_eq!(got, [9, 8, 7, 6, 5, 4, 3, 2, 1, 7, 0]);
        assert_eq!(fixed.rejected(), 8);
    }

    #[test]
    fn draw_packed_gives_the_packed_record_of_the_drawn_digits() {
        // Words giving the digits 9 8 7 6 5 | 4 3 2 1 7 0 0 0 (least significant first).
        let words: Vec<u8> = [123_456_789u32, 7]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let mut fixed = DigitStream::with_buffer_len(
            |b: &mut [u8]| {
                b.copy_from_slice(&words);
                Ok(())
            },
            8,
        );
        let g = CodeGenerator::new(CodePolicy::CNS, WeakFilter::NONE).unwrap();
        let mut out = [0xAAu8; crate::codes::record::MAX_RECORD_LEN];
        let n = g.draw_packed(&mut fixed, &mut out).unwrap();
        assert_eq!(n, 8);
        assert!(
            out[n..].iter().all(|&b| b == 0 || b == 0xAA),
            "digits wiped past the record"
        );
        let codes = crate::codes::CardCodes::unpack(&out[..n]).unwrap();
        assert_eq!(codes.pin.expose_secret(), b"98765");
        assert_eq!(codes.puk.expose_secret(), b"43217000");
        // From the system generator, with the filter: never weak, always the policy lengths.
        let g = CodeGenerator::new(CodePolicy::CIE, WeakFilter::STRICT).unwrap();
        let mut s = DigitStream::new(system_fill);
        for _ in 0..2000 {
            let n = g.draw_packed(&mut s, &mut out).unwrap();
            let c = crate::codes::CardCodes::unpack(&out[..n]).unwrap();
            assert_eq!((c.pin.len(), c.puk.len()), (8, 8));
        }
    }

    #[test]
    fn bytes_250_and_above_are_skipped() {
        let mut s = scripted(&[250, 251, 252, 253, 254, 255, 249, 0, 10, 255, 123]);
        let got: Vec<u8> = (0..4).map(|_| s.next_digit().unwrap()).collect();
        assert_eq!(got, [9, 0, 0, 3]);
        assert_eq!(s.rejected(), 7);
        // Script exhausted: the source's error comes through.
        assert!(s.next_digit().is_err());
        // The bulk path samples the same way.
        let mut s = scripted(&[250, 251, 252, 253, 254, 255, 249, 0, 10, 255, 123]);
        let mut got = [0u8; 4];
        s.fill_digits(&mut got).unwrap();
        assert_eq!((got, s.rejected()), ([9, 0, 0, 3], 7));
        assert!(s.fill_digits(&mut got[..1]).is_err());
    }

    #[test]
    fn weak_filter_rules() {
        let f = WeakFilter::STRICT;
        for weak in [
            &[1u8, 1, 1, 1, 1][..],
            &[1, 2, 3, 4, 5],
            &[5, 4, 3, 2, 1],
            &[9, 8, 7, 6, 5],
            &[7, 8, 9, 0, 1],
            &[2, 1, 0, 9, 8],
            &[0, 0],
            &[0, 1, 2, 3, 4, 5, 6, 7],
        ] {
            assert!(f.is_weak(weak), "{weak:?}");
        }
        for fine in [
            &[1u8, 2, 3, 4, 6][..],
            &[1, 1, 1, 1, 2],
            &[1, 3, 5, 7, 9],
            &[3, 1],
        ] {
            assert!(!f.is_weak(fine), "{fine:?}");
        }
        let only_equal = WeakFilter {
            all_equal: true,
            runs: false,
        };
        assert!(only_equal.is_weak(&[4, 4, 4]) && !only_equal.is_weak(&[1, 2, 3]));
        let only_runs = WeakFilter {
            all_equal: false,
            runs: true,
        };
        assert!(!only_runs.is_weak(&[4, 4, 4]) && only_runs.is_weak(&[1, 2, 3]));
        assert!(!WeakFilter::NONE.is_weak(&[1, 1, 1]));
    }

    #[test]
    fn weak_codes_are_redrawn() {
        // PIN draws: 11111, 12345, 54321, 90123 are weak (with a rejected byte inside), then
        // 31415 is accepted. PUK: 00000000 weak, then 27182818.
        let mut script = Vec::new();
        script.extend_from_slice(&[1, 11, 21, 31, 41]);
        script.extend_from_slice(&[1, 2, 250, 3, 4, 5]);
        script.extend_from_slice(&[5, 4, 3, 2, 1]);
        script.extend_from_slice(&[9, 0, 1, 2, 3]);
        script.extend_from_slice(&[3, 1, 4, 1, 5]);
        script.extend_from_slice(&[0; 8]);
        script.extend_from_slice(&[2, 7, 1, 8, 2, 8, 1, 8]);
        let g = CodeGenerator::new(CodePolicy::CNS, WeakFilter::STRICT).unwrap();
        let mut s = scripted(&script);
        let (pin, puk) = g.pair(&mut s).unwrap();
        assert_eq!(pin.expose_secret(), ascii(&[3, 1, 4, 1, 5]));
        assert_eq!(puk.expose_secret(), ascii(&[2, 7, 1, 8, 2, 8, 1, 8]));
        assert_eq!(s.rejected(), 1);

        // Without the filter the first draw stands.
        let g = CodeGenerator::new(CodePolicy::CNS, WeakFilter::NONE).unwrap();
        let (pin, _) = g.pair(&mut scripted(&script)).unwrap();
        assert_eq!(pin.expose_secret(), b"11111");
    }

    #[test]
    fn a_broken_generator_is_an_error_not_a_loop() {
        let g = CodeGenerator::new(CodePolicy::CNS, WeakFilter::STRICT).unwrap();
        // Constant buffer.
        let mut s = DigitStream::new(|b: &mut [u8]| {
            b.fill(7);
            Ok(())
        });
        let e = g.pair(&mut s).unwrap_err();
        assert!(matches!(e, Error::Provider(_)), "{e:?}");
        // Only weak codes (a repeating ascending sequence passes the constant check).
        let mut s = DigitStream::new(|b: &mut [u8]| {
            for (i, x) in b.iter_mut().enumerate() {
                *x = (i % 10) as u8;
            }
            Ok(())
        });
        let e = g.pair(&mut s).unwrap_err();
        assert!(matches!(e, Error::Provider(_)), "{e:?}");
        // Only rejected bytes: every refill is constant 255.
        let mut s = DigitStream::new(|b: &mut [u8]| {
            b.fill(255);
            Ok(())
        });
        assert!(s.next_digit().is_err());
    }

    #[test]
    fn generate_for_is_complete_and_in_order() {
        let serials: Vec<String> = (0..3 * CHUNK + 17).map(|i| format!("S{i}")).collect();
        let g = CodeGenerator::new(CodePolicy::CIE, WeakFilter::default()).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let chunks = pool
            .install(|| generate_for(&serials, &g, &system_fill))
            .unwrap();
        let out: Vec<&Generated> = chunks.iter().flatten().collect();
        assert_eq!(out.len(), serials.len());
        for (i, x) in out.iter().enumerate() {
            assert_eq!(x.index, i);
            assert_eq!((x.pin.len(), x.puk.len()), (8, 8));
        }
        // Tasks draw from their own buffers: no two chunks repeat each other's codes.
        let first: std::collections::HashSet<&[u8]> =
            out.iter().map(|x| x.puk.expose_secret()).collect();
        assert!(first.len() > serials.len() - 5);

        // A shared deterministic source works too (its calls are serialised by an atomic).
        let counter = AtomicU64::new(1);
        let source = |b: &mut [u8]| {
            let seed = counter.fetch_add(1, Ordering::Relaxed) << 32;
            let mut fill = counter_source(seed);
            fill(b)
        };
        let out = generate_for(&serials[..10], &g, &source).unwrap();
        assert_eq!(
            out.iter().flatten().map(|x| x.index).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        assert!(generate_for::<String>(&[], &g, &system_fill)
            .unwrap()
            .is_empty());

        // A failing source fails the whole call.
        let failing = |_: &mut [u8]| Err(Error::Provider("down"));
        assert!(generate_for(&serials, &g, &failing).is_err());
    }

    #[test]
    fn seal_generated_round_trips() {
        let key = [3u8; 32];
        let mut sealer = Sealer::new(
            DataKeyId(5),
            KeyPurpose::Code,
            FreshDataKey::from_generated(DataKey::from_bytes(key)),
        )
        .unwrap();
        let g = CodeGenerator::new(CodePolicy::CNS, WeakFilter::default()).unwrap();
        let serials = ["8039000000000000001", "8039000000000000002", "X"];
        let mut s = DigitStream::new(system_fill);
        let mut out = b"prefix".to_vec();
        g.seal_generated(&serials, &mut s, &mut sealer, &mut out)
            .unwrap();
        let each = HEADER_LEN + g.record_len() + TAG_LEN;
        assert_eq!(out.len(), 6 + 3 * each);
        let opener =
            Opener::new(DataKeyId(5), KeyPurpose::Code, &DataKey::from_bytes(key)).unwrap();
        for (i, serial) in serials.iter().enumerate() {
            let at = 6 + i * each;
            let e = crate::Envelope::from_bytes(out[at..at + each].to_vec());
            let p = opener.open(serial, &e).unwrap();
            let b = p.expose_secret();
            assert_eq!(b.len(), 14);
            assert_eq!(b[5], b'|');
            assert!(b[..5].iter().chain(&b[6..]).all(u8::is_ascii_digit));
            assert!(
                !WeakFilter::STRICT.is_weak(&b[..5].iter().map(|d| d - b'0').collect::<Vec<_>>())
            );
        }
        // On error nothing of the call is left in `out`.
        let mut broken = DigitStream::new(|b: &mut [u8]| {
            b.fill(0);
            Ok(())
        });
        let before = out.len();
        assert!(g
            .seal_generated(&serials, &mut broken, &mut sealer, &mut out)
            .is_err());
        assert_eq!(out.len(), before);
    }

    #[test]
    fn debug_of_outputs_shows_no_digits() {
        let g = CodeGenerator::new(CodePolicy::CNS, WeakFilter::default()).unwrap();
        let script = [9u8, 8, 6, 4, 2, 7, 7, 5, 3, 1, 0, 8, 6];
        let mut s = scripted(&script);
        let (pin, puk) = g.pair(&mut s).unwrap();
        assert_eq!(pin.expose_secret(), b"98642");
        let item = Generated { index: 7, pin, puk };
        let all = format!("{item:?} {item:#?} {s:?} {g:?}");
        for needle in ["98642", "77531086", "9, 8, 6"] {
            assert!(!all.contains(needle), "{all}");
        }
        assert!(all.contains("<redacted>"));
    }

    #[test]
    fn a_failed_or_degenerate_fill_is_an_error_every_time() {
        // Fails once, then would work: the stream must stay usable (no panic, no empty buffer).
        let mut calls = 0;
        let mut stream = DigitStream::with_buffer_len(
            |b: &mut [u8]| {
                calls += 1;
                if calls == 1 {
                    return Err(Error::Provider("transient"));
                }
                for (i, x) in b.iter_mut().enumerate() {
                    *x = (i % 250) as u8;
                }
                Ok(())
            },
            64,
        );
        assert!(stream.next_digit().is_err());
        assert_eq!(stream.next_digit().unwrap(), 0);
        let mut out = [0u8; 8];
        stream.fill_digits(&mut out).unwrap();

        // Bytes that are never accepted (but not constant): an error, not an endless loop.
        let mut high = DigitStream::with_buffer_len(
            |b: &mut [u8]| {
                for (i, x) in b.iter_mut().enumerate() {
                    *x = 250 + (i % 6) as u8;
                }
                Ok(())
            },
            64,
        );
        assert!(matches!(high.next_digit(), Err(Error::Provider(_))));
        assert!(matches!(
            high.fill_digits(&mut out),
            Err(Error::Provider(_))
        ));

        // A fill that writes nothing does not replay old bytes.
        let mut first = true;
        let mut lazy = DigitStream::with_buffer_len(
            |b: &mut [u8]| {
                if first {
                    first = false;
                    for (i, x) in b.iter_mut().enumerate() {
                        *x = (i % 200) as u8;
                    }
                }
                Ok(())
            },
            16,
        );
        let mut sixteen = [0u8; 16];
        lazy.fill_digits(&mut sixteen).unwrap();
        assert!(matches!(lazy.next_digit(), Err(Error::Provider(_))));
    }
}

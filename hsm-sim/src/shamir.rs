//! Shamir secret sharing over GF(2^8).
//!
//! Each byte of the secret is the constant term of its own random polynomial of degree
//! `threshold - 1`; share `x` (1..=255) holds the polynomial values at `x`. Any `threshold`
//! distinct shares give the secret back by Lagrange interpolation at 0; fewer give no
//! information about it.
//!
//! The field is GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1. Multiplication is done
//! bit by bit without secret-dependent branches or table look-ups, so timing does not depend on
//! share bytes.

use zeroize::Zeroizing;

/// Multiplies in GF(2^8) (AES polynomial), in constant time.
pub fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    for _ in 0..8 {
        // mask = 0xff when the low bit of b is set, else 0.
        p ^= a & 0u8.wrapping_sub(b & 1);
        let carry = 0u8.wrapping_sub(a >> 7);
        a = (a << 1) ^ (0x1b & carry);
        b >>= 1;
    }
    p
}

/// Multiplicative inverse in GF(2^8) (a^254), constant time; the inverse of 0 is 0.
pub fn gf_inv(a: u8) -> u8 {
    // a^254 = a^(2+4+8+16+32+64+128)
    let mut result = 1u8;
    let mut sq = a;
    for _ in 0..7 {
        sq = gf_mul(sq, sq);
        result = gf_mul(result, sq);
    }
    result
}

/// Evaluates the polynomial with `coeffs` (constant term first) at `x`.
fn eval(coeffs: &[u8], x: u8) -> u8 {
    coeffs.iter().rev().fold(0u8, |acc, &c| gf_mul(acc, x) ^ c)
}

/// Splits `secret` into `shares` shares at x = 1..=shares, any `threshold` of which rebuild it.
///
/// `random` must fill its buffer from a CSPRNG; it supplies the polynomial coefficients.
/// Returns `(x, y)` pairs; `y` has the secret's length.
///
/// # Errors
/// A message when `threshold` is 0, `threshold > shares`, or the generator fails.
#[allow(clippy::type_complexity)]
pub fn split(
    secret: &[u8],
    shares: u8,
    threshold: u8,
    random: &mut dyn FnMut(&mut [u8]) -> Result<(), String>,
) -> Result<Vec<(u8, Zeroizing<Vec<u8>>)>, String> {
    if threshold == 0 || threshold > shares {
        return Err(format!(
            "threshold {threshold} must be between 1 and the number of shares ({shares})"
        ));
    }
    let mut out: Vec<(u8, Zeroizing<Vec<u8>>)> = (1..=shares)
        .map(|x| (x, Zeroizing::new(vec![0u8; secret.len()])))
        .collect();
    let mut coeffs = Zeroizing::new(vec![0u8; usize::from(threshold)]);
    for (i, &s) in secret.iter().enumerate() {
        coeffs[0] = s;
        random(&mut coeffs[1..])?;
        for (x, y) in out.iter_mut() {
            y[i] = eval(&coeffs, *x);
        }
    }
    Ok(out)
}

/// Rebuilds the secret from shares given as `(x, y)`; every `y` must have the same length and
/// every `x` must be distinct and non-zero. With fewer than the threshold the result is a
/// meaningless value, not an error: the caller verifies it (the HSM decrypts its root key).
///
/// # Errors
/// A message for no shares, a zero or repeated `x`, or unequal lengths.
pub fn combine(shares: &[(u8, &[u8])]) -> Result<Zeroizing<Vec<u8>>, String> {
    let first = shares.first().ok_or("no shares to combine")?;
    let len = first.1.len();
    for (i, (x, y)) in shares.iter().enumerate() {
        if *x == 0 {
            return Err("share index 0 is not valid".to_string());
        }
        if y.len() != len {
            return Err("shares have different lengths".to_string());
        }
        if shares[..i].iter().any(|(other, _)| other == x) {
            return Err(format!("share index {x} appears twice"));
        }
    }
    let mut secret = Zeroizing::new(vec![0u8; len]);
    for (j, (xj, yj)) in shares.iter().enumerate() {
        // Lagrange basis at 0: prod_{m != j} x_m / (x_m - x_j); subtraction is XOR.
        let mut num = 1u8;
        let mut den = 1u8;
        for (m, (xm, _)) in shares.iter().enumerate() {
            if m != j {
                num = gf_mul(num, *xm);
                den = gf_mul(den, xm ^ xj);
            }
        }
        let basis = gf_mul(num, gf_inv(den));
        for (s, &y) in secret.iter_mut().zip(yj.iter()) {
            *s ^= gf_mul(y, basis);
        }
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};

    fn rng() -> impl FnMut(&mut [u8]) -> Result<(), String> {
        let r = SystemRandom::new();
        move |b: &mut [u8]| r.fill(b).map_err(|_| "rng".to_string())
    }

    /// Every subset of `0..n`, as bit masks.
    fn subsets(n: usize) -> impl Iterator<Item = Vec<usize>> {
        (0u32..(1 << n)).map(move |mask| (0..n).filter(|i| mask & (1 << i) != 0).collect())
    }

    #[test]
    fn field_inverse_is_an_inverse() {
        for a in 1..=255u8 {
            assert_eq!(gf_mul(a, gf_inv(a)), 1, "a = {a}");
        }
        // AES's classic example: {57} x {83} = {c1}.
        assert_eq!(gf_mul(0x57, 0x83), 0xc1);
    }

    #[test]
    fn every_m_subset_reconstructs_and_m_minus_1_does_not() {
        let secret: Vec<u8> = (0..32u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(5))
            .collect();
        for (n, m) in [(1u8, 1u8), (2, 2), (3, 2), (5, 3), (6, 4), (7, 7)] {
            let shares = split(&secret, n, m, &mut rng()).unwrap();
            for subset in subsets(usize::from(n)) {
                let picked: Vec<(u8, &[u8])> = subset
                    .iter()
                    .map(|&i| (shares[i].0, &shares[i].1[..]))
                    .collect();
                if picked.is_empty() {
                    continue;
                }
                let got = combine(&picked).unwrap();
                if picked.len() >= usize::from(m) {
                    assert_eq!(&got[..], &secret[..], "n={n} m={m} subset={subset:?}");
                } else {
                    assert_ne!(&got[..], &secret[..], "n={n} m={m} subset={subset:?}");
                }
            }
        }
    }

    #[test]
    fn a_flipped_share_byte_gives_another_secret() {
        let secret = [7u8; 32];
        let shares = split(&secret, 3, 2, &mut rng()).unwrap();
        let mut bad = shares[0].1.to_vec();
        bad[5] ^= 1;
        let got = combine(&[(shares[0].0, &bad), (shares[1].0, &shares[1].1)]).unwrap();
        assert_ne!(&got[..], &secret[..]);
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert!(split(&[1], 2, 3, &mut rng()).is_err());
        assert!(split(&[1], 2, 0, &mut rng()).is_err());
        assert!(combine(&[]).is_err());
        assert!(combine(&[(1, &[1u8][..]), (1, &[2u8][..])]).is_err());
        assert!(combine(&[(0, &[1u8][..])]).is_err());
        assert!(combine(&[(1, &[1u8][..]), (2, &[2u8, 3][..])]).is_err());
    }
}

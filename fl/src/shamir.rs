//! Shamir secret sharing (Shamir 1979) over the prime field of curve25519-dalek's `Scalar`
//! (`ℓ = 2^252 + 27742317777372353535851937790883648493`).
//!
//! A secret of 16 or 32 bytes is cut into 16-byte chunks, each a field element below 2^128 (so
//! the embedding is exact and a reconstructed chunk whose upper 16 bytes are not zero is a
//! detected corruption), and each chunk is shared with its own random polynomial of degree
//! `t − 1`. Client `u` holds the evaluation at `x = u + 1`. Reconstruction multiplies by the
//! Lagrange coefficients at 0 of the `t` x-coordinates used, computed once per set of
//! x-coordinates with one batched inversion.

use curve25519_dalek::Scalar;
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroize;

use crate::ClientId;

/// Bytes of one chunk of a secret.
pub const CHUNK_BYTES: usize = 16;

/// The x-coordinate of client `id`'s share.
pub(crate) fn x_of(id: ClientId) -> Scalar {
    Scalar::from(u64::from(id.0) + 1)
}

/// The field element of one 16-byte chunk.
fn chunk_scalar(chunk: &[u8]) -> Scalar {
    let mut b = [0u8; 32];
    b[..chunk.len()].copy_from_slice(chunk);
    let s = Scalar::from_bytes_mod_order(b);
    b.zeroize();
    s
}

/// Shares of `secret` (a multiple of 16 bytes) for the holders `xs`, threshold `t`: one
/// `Vec<Scalar>` (one element per chunk) per holder, in the order of `xs`.
pub(crate) fn split<R: RngCore + CryptoRng>(
    secret: &[u8],
    xs: &[Scalar],
    t: usize,
    rng: &mut R,
) -> Vec<Vec<Scalar>> {
    let mut out = vec![Vec::with_capacity(secret.len() / CHUNK_BYTES); xs.len()];
    for chunk in secret.chunks(CHUNK_BYTES) {
        let mut coeffs = Vec::with_capacity(t);
        coeffs.push(chunk_scalar(chunk));
        coeffs.extend((1..t).map(|_| Scalar::random(rng)));
        for (x, share) in xs.iter().zip(out.iter_mut()) {
            // Horner: a_0 + x(a_1 + x(a_2 + …)).
            let y = coeffs.iter().rev().fold(Scalar::ZERO, |acc, c| acc * x + c);
            share.push(y);
        }
        coeffs.zeroize();
    }
    out
}

/// The Lagrange coefficients at 0 of distinct x-coordinates: `λ_j = Π_{m≠j} x_m / (x_m − x_j)`.
/// Returns `None` if two coordinates coincide. O(t²) multiplications and one batched inversion.
pub(crate) fn lagrange_at_zero(xs: &[Scalar]) -> Option<Vec<Scalar>> {
    let mut num = vec![Scalar::ONE; xs.len()];
    let mut den = vec![Scalar::ONE; xs.len()];
    for (j, xj) in xs.iter().enumerate() {
        for (m, xm) in xs.iter().enumerate() {
            if m != j {
                let d = xm - xj;
                if d == Scalar::ZERO {
                    return None;
                }
                num[j] *= xm;
                den[j] *= d;
            }
        }
    }
    Scalar::batch_invert(&mut den);
    Some(num.iter().zip(&den).map(|(n, d)| n * d).collect())
}

/// The secret from shares with their Lagrange coefficients; `None` if a chunk is not below
/// 2^128 (a corrupt share or shares of different dealings).
pub(crate) fn combine(coeffs: &[Scalar], shares: &[&[Scalar]], chunks: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(chunks * CHUNK_BYTES);
    for c in 0..chunks {
        let mut acc = Scalar::ZERO;
        for (l, s) in coeffs.iter().zip(shares) {
            acc += l * s.get(c)?;
        }
        let mut b = acc.to_bytes();
        let ok = b[CHUNK_BYTES..].iter().all(|&x| x == 0);
        out.extend_from_slice(&b[..CHUNK_BYTES]);
        b.zeroize();
        if !ok {
            out.zeroize();
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn any_t_shares_reconstruct_and_t_minus_one_do_not() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let secret: Vec<u8> = (0u8..32).collect();
        let ids: Vec<ClientId> = (0..7).map(ClientId).collect();
        let xs: Vec<Scalar> = ids.iter().map(|&i| x_of(i)).collect();
        let shares = split(&secret, &xs, 4, &mut rng);
        for subset in [[0usize, 1, 2, 3], [6, 2, 4, 0], [3, 4, 5, 6]] {
            let sx: Vec<Scalar> = subset.iter().map(|&i| xs[i]).collect();
            let sh: Vec<&[Scalar]> = subset.iter().map(|&i| shares[i].as_slice()).collect();
            let l = lagrange_at_zero(&sx).expect("distinct");
            assert_eq!(combine(&l, &sh, 2).expect("in range"), secret);
        }
        // Three shares interpolate a degree-2 polynomial: not the secret (but for 2^-252).
        let sx: Vec<Scalar> = xs[..3].to_vec();
        let sh: Vec<&[Scalar]> = shares[..3].iter().map(|s| s.as_slice()).collect();
        let l = lagrange_at_zero(&sx).expect("distinct");
        assert_ne!(combine(&l, &sh, 2), Some(secret));
        assert!(lagrange_at_zero(&[xs[0], xs[0]]).is_none());
    }
}

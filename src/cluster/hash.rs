//! The stable hashes behind shard and ring placement, written out so that every node, every
//! version and every platform computes the same placement.
//!
//! [`stable_hash`] is FNV-1a 64 (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) over
//! the bytes, followed by the MurmurHash3 `fmix64` finaliser so that the low bits used by
//! `mod shard_count` depend on every input bit. `std`'s `DefaultHasher` is never used: its
//! algorithm is unspecified and may change between Rust releases.

/// FNV-1a 64 offset basis.
pub const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Incremental FNV-1a 64.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a64 {
    state: u64,
}

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self {
            state: FNV_OFFSET_BASIS,
        }
    }
}

impl Fnv1a64 {
    /// Feeds `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.state ^= u64::from(b);
            self.state = self.state.wrapping_mul(FNV_PRIME);
        }
        self
    }

    /// The FNV-1a 64 value of everything written so far.
    pub fn finish(&self) -> u64 {
        self.state
    }
}

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    Fnv1a64::default().write(bytes).finish()
}

/// The MurmurHash3 64-bit finaliser: a bijection that spreads every input bit over the output.
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The hash aether places by: `fmix64(fnv1a64(bytes))`.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    fmix64(fnv1a64(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn incremental_writes_equal_one_write() {
        let mut h = Fnv1a64::default();
        h.write(b"foo").write(b"bar");
        assert_eq!(h.finish(), fnv1a64(b"foobar"));
    }

    #[test]
    fn fmix64_is_pinned() {
        assert_eq!(fmix64(0), 0);
        assert_eq!(stable_hash(b""), fmix64(FNV_OFFSET_BASIS));
        assert_ne!(stable_hash(b"a"), stable_hash(b"b"));
    }
}

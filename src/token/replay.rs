//! Single use: the ids of redeemed tokens, each kept until its token could no longer pass the
//! expiry check anyway (expiry plus the allowed clock skew). The table is allocated once at
//! its full size, so it never grows; when it is full of unexpired tokens a new token is
//! refused (the gateway cannot promise single use for it), never admitted.

use std::collections::HashMap;

use super::TokenError;

/// Fixed-size key for a token id: the first 16 bytes of its SHA-256.
pub type IdDigest = [u8; 16];

/// Heap per entry, a ceiling: a hashbrown bucket is the 24-byte entry plus one control byte,
/// and a table sized for `n` entries has fewer than `2 × 8/7 × n` buckets.
pub const ENTRY_BYTES: u64 = 58;

/// Expired entries are swept at most this often (seconds), or when the table is full: a sweep
/// walks the whole table under the lock.
const SWEEP_EVERY: u64 = 10;

pub struct ReplayCache {
    seen: HashMap<IdDigest, u64>,
    capacity: usize,
    next_sweep: u64,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> ReplayCache {
        ReplayCache {
            seen: HashMap::with_capacity(capacity),
            capacity,
            next_sweep: 0,
        }
    }

    pub fn digest(id: &str) -> IdDigest {
        let d = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&d.as_ref()[..16]);
        out
    }

    /// Records `id` as used until `forget_after` (seconds since the epoch); refuses an id seen
    /// before.
    pub fn redeem(&mut self, id: IdDigest, forget_after: u64, now: u64) -> Result<(), TokenError> {
        if now >= self.next_sweep || self.seen.len() >= self.capacity {
            self.seen.retain(|_, until| *until > now);
            self.next_sweep = now.saturating_add(SWEEP_EVERY);
        }
        if self.seen.contains_key(&id) {
            return Err(TokenError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(TokenError::ReplayCacheFull);
        }
        self.seen.insert(id, forget_after);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_taken_once_until_it_is_forgotten() {
        let mut c = ReplayCache::new(4);
        let a = ReplayCache::digest("token-a-0123456789");
        c.redeem(a, 100, 10).unwrap();
        assert_eq!(c.redeem(a, 100, 11), Err(TokenError::Replayed));
        assert_eq!(c.redeem(a, 100, 99), Err(TokenError::Replayed));
        // Past its time the entry goes at the next sweep (the token is expired by then).
        c.redeem(ReplayCache::digest("other-0123456789"), 200, 110)
            .unwrap();
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_full_table_refuses_until_entries_expire() {
        let mut c = ReplayCache::new(2);
        c.redeem(ReplayCache::digest("a"), 50, 0).unwrap();
        c.redeem(ReplayCache::digest("b"), 60, 1).unwrap();
        assert_eq!(
            c.redeem(ReplayCache::digest("c"), 70, 2),
            Err(TokenError::ReplayCacheFull)
        );
        c.redeem(ReplayCache::digest("c"), 70, 55).unwrap();
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn the_table_is_allocated_once() {
        let mut c = ReplayCache::new(1000);
        let cap = c.seen.capacity();
        assert!(cap >= 1000);
        for i in 0..1000 {
            c.redeem(ReplayCache::digest(&i.to_string()), 10_000, 5)
                .unwrap();
        }
        assert_eq!(c.seen.capacity(), cap);
        // hashbrown keeps a table 7/8 full at most: its buckets are capacity × 8/7.
        assert!((cap as u64) * 8 / 7 * 25 <= 1000 * ENTRY_BYTES);
    }
}

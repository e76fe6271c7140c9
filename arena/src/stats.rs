use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::kind::{PerPool, Pool};

/// Read-only view of an arena's occupancy for other threads (the `/metrics` endpoint).
///
/// The owning thread keeps the real counters in plain cells and only *stores* copies here, so
/// the hot path pays no atomic read-modify-write. Readers load each field on its own: a
/// snapshot is never torn within a field but may mix values from just before and just after
/// an allocation, which is fine for metrics.
#[derive(Debug)]
pub struct ArenaStats {
    pools: PerPool<PoolCounters>,
    sessions_capacity: usize,
    sessions_admitted: AtomicUsize,
    admissions_refused: AtomicU64,
    region_bytes: usize,
    huge_pages_active: bool,
}

/// One pool's numbers at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// Bytes per slot.
    pub slot_size: usize,
    /// Slots in the pool (`slots_per_session × sessions`).
    pub capacity: usize,
    /// Slots promised to admitted sessions (quota × shares alive).
    pub reserved: usize,
    /// Slots handed out now.
    pub in_use: usize,
    /// Most slots ever handed out at once.
    pub high_water: usize,
    /// Allocations refused because the session's quota was used up.
    pub refusals: u64,
}

#[derive(Debug)]
struct PoolCounters {
    slot_size: usize,
    capacity: usize,
    reserved: AtomicUsize,
    in_use: AtomicUsize,
    high_water: AtomicUsize,
    refusals: AtomicU64,
}

impl ArenaStats {
    pub(crate) fn new(
        sizes: PerPool<(usize, usize)>,
        sessions_capacity: usize,
        region_bytes: usize,
        huge_pages_active: bool,
    ) -> Self {
        ArenaStats {
            pools: PerPool::from_fn(|pool| {
                let (slot_size, capacity) = *sizes.get(pool);
                PoolCounters {
                    slot_size,
                    capacity,
                    reserved: AtomicUsize::new(0),
                    in_use: AtomicUsize::new(0),
                    high_water: AtomicUsize::new(0),
                    refusals: AtomicU64::new(0),
                }
            }),
            sessions_capacity,
            sessions_admitted: AtomicUsize::new(0),
            admissions_refused: AtomicU64::new(0),
            region_bytes,
            huge_pages_active,
        }
    }

    /// Current numbers of one pool.
    pub fn pool(&self, pool: Pool) -> PoolSnapshot {
        let c = self.pools.get(pool);
        PoolSnapshot {
            slot_size: c.slot_size,
            capacity: c.capacity,
            reserved: c.reserved.load(Ordering::Relaxed),
            in_use: c.in_use.load(Ordering::Relaxed),
            high_water: c.high_water.load(Ordering::Relaxed),
            refusals: c.refusals.load(Ordering::Relaxed),
        }
    }

    /// Session shares alive now (a share stays alive until its last slot is dropped).
    pub fn sessions_admitted(&self) -> usize {
        self.sessions_admitted.load(Ordering::Relaxed)
    }

    /// Sessions the arena admits at most.
    pub fn sessions_capacity(&self) -> usize {
        self.sessions_capacity
    }

    /// Admissions answered with [`crate::ArenaError::Full`].
    pub fn admissions_refused(&self) -> u64 {
        self.admissions_refused.load(Ordering::Relaxed)
    }

    /// Size of the arena's mapping.
    pub fn region_bytes(&self) -> usize {
        self.region_bytes
    }

    /// Whether the kernel accepted the huge-page advice (see [`crate::Arena::huge_pages_active`]).
    pub fn huge_pages_active(&self) -> bool {
        self.huge_pages_active
    }

    /// Called by the owning thread only, so plain stores cannot lose an update.
    pub(crate) fn publish_pool(&self, pool: Pool, snap: &PoolSnapshot) {
        let c = self.pools.get(pool);
        c.reserved.store(snap.reserved, Ordering::Relaxed);
        c.in_use.store(snap.in_use, Ordering::Relaxed);
        c.high_water.store(snap.high_water, Ordering::Relaxed);
        c.refusals.store(snap.refusals, Ordering::Relaxed);
    }

    pub(crate) fn publish_sessions(&self, admitted: usize, refused: u64) {
        self.sessions_admitted.store(admitted, Ordering::Relaxed);
        self.admissions_refused.store(refused, Ordering::Relaxed);
    }
}

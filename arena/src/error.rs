use std::io;

use crate::kind::Pool;

/// Everything that can go wrong while sizing, mapping or admitting into an arena.
///
/// Slot allocation is deliberately absent: running out of quota is an expected "not now",
/// answered with `None`, not an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArenaError {
    /// A zero-sized slot would make every handle of the pool alias the same bytes.
    #[error("pool {pool}: slot_size must be greater than zero")]
    ZeroSlotSize {
        /// The pool whose spec is wrong.
        pool: Pool,
    },
    /// A session that may hold no slot of a pool could never make progress with it.
    #[error("pool {pool}: slots_per_session must be greater than zero")]
    ZeroSlotsPerSession {
        /// The pool whose spec is wrong.
        pool: Pool,
    },
    /// The configured sizes do not fit the address space.
    #[error("pool {pool}: slot_size × slots_per_session × sessions overflows the address space")]
    PoolTooLarge {
        /// The pool whose size overflowed.
        pool: Pool,
    },
    /// The pools fit one by one but not together in one region.
    #[error("arena region (all pools, cache-line aligned, page rounded) exceeds isize::MAX bytes")]
    RegionTooLarge,
    /// The kernel refused the anonymous mapping.
    #[error("cannot map {bytes}-byte anonymous region")]
    Map {
        /// Size of the mapping that was asked for.
        bytes: usize,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// `mlock` was asked for and refused, usually because of `RLIMIT_MEMLOCK`.
    #[error("cannot lock {bytes}-byte arena region in memory (mlock)")]
    Lock {
        /// Size of the region that could not be locked.
        bytes: usize,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// Every session share this arena can back is already handed out.
    #[error("arena full: all {capacity} session shares are admitted")]
    Full {
        /// Sessions this arena admits at most.
        capacity: usize,
    },
}

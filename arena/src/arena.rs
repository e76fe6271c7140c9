use std::cell::Cell;
use std::fmt;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;

use crate::config::ArenaConfig;
use crate::error::ArenaError;
use crate::kind::{PerPool, Pool};
use crate::pool::PoolState;
use crate::region::Region;
use crate::share::SessionShare;
use crate::stats::{ArenaStats, PoolSnapshot};

/// All memory one executor thread may hand to sessions, fixed at start-up.
///
/// `!Send` on purpose: it lives and dies on its executor thread, which is what lets its
/// bookkeeping use plain cells. Shares and slots keep the arena's memory alive, so dropping
/// the `Arena` while sessions still run is safe; the mapping goes away with the last handle.
pub struct Arena {
    inner: Rc<ArenaInner>,
}

pub(crate) struct ArenaInner {
    pools: PerPool<PoolState>,
    sessions_capacity: usize,
    admitted: Cell<usize>,
    admissions_refused: Cell<u64>,
    next_id: Cell<u64>,
    stats: Arc<ArenaStats>,
    /// Owns the memory the pools point into; only unmapped when no share or slot is left.
    region: Region,
}

impl Arena {
    /// Maps and carves the whole region; the only point where the arena touches the kernel.
    pub fn new(cfg: &ArenaConfig) -> Result<Arena, ArenaError> {
        let layout = cfg.layout()?;
        let region = Region::map(layout.total, cfg)?;
        let base = region.base();
        let pools = PerPool::from_fn(|pool| {
            let offset = *layout.offsets.get(pool);
            // In bounds: `layout` placed the pool inside the `layout.total` bytes just mapped.
            let pool_base = base.and_then(|b| NonNull::new(b.as_ptr().wrapping_add(offset)));
            PoolState::new(pool_base, cfg.pool(pool), cfg.sessions)
        });
        let sizes = PerPool::from_fn(|pool| {
            let p = pools.get(pool);
            (p.slot_size(), p.capacity())
        });
        let stats = Arc::new(ArenaStats::new(
            sizes,
            cfg.sessions,
            region.len(),
            region.huge_pages_active(),
        ));
        Ok(Arena {
            inner: Rc::new(ArenaInner {
                pools,
                sessions_capacity: cfg.sessions,
                admitted: Cell::new(0),
                admissions_refused: Cell::new(0),
                next_id: Cell::new(0),
                stats,
                region,
            }),
        })
    }

    /// Reserve one session's share of every pool.
    ///
    /// A share stays reserved until the [`SessionShare`] *and* all its slots are dropped, so a
    /// session that is torn down while frames are still in flight cannot be replaced by a new
    /// one that would then find its quota taken.
    pub fn admit(&self) -> Result<SessionShare, ArenaError> {
        let inner = &self.inner;
        if inner.admitted.get() >= inner.sessions_capacity {
            let refused = inner.admissions_refused.get().saturating_add(1);
            inner.admissions_refused.set(refused);
            inner.publish_sessions();
            return Err(ArenaError::Full {
                capacity: inner.sessions_capacity,
            });
        }
        inner.admitted.set(inner.admitted.get().saturating_add(1));
        let id = inner.next_id.get();
        inner.next_id.set(id.wrapping_add(1));
        inner.publish_sessions();
        Ok(SessionShare::new(Rc::clone(inner), id))
    }

    /// Shared with other threads for `/metrics`.
    pub fn stats(&self) -> Arc<ArenaStats> {
        Arc::clone(&self.inner.stats)
    }

    /// Bytes mapped (0 for an arena that admits no sessions).
    pub fn region_bytes(&self) -> usize {
        self.inner.region.len()
    }

    /// Whether the kernel accepted the transparent-huge-page advice. Best effort: `false` when
    /// not asked for, unsupported, or refused; the arena works the same either way.
    pub fn huge_pages_active(&self) -> bool {
        self.inner.region.huge_pages_active()
    }
}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena")
            .field("region_bytes", &self.region_bytes())
            .field("sessions_capacity", &self.inner.sessions_capacity)
            .field("sessions_admitted", &self.inner.admitted.get())
            .field("huge_pages_active", &self.huge_pages_active())
            .finish_non_exhaustive()
    }
}

impl ArenaInner {
    pub(crate) fn quota(&self, pool: Pool) -> usize {
        self.pools.get(pool).quota()
    }

    pub(crate) fn slot_size(&self, pool: Pool) -> usize {
        self.pools.get(pool).slot_size()
    }

    pub(crate) fn take_slot(&self, pool: Pool, owner: u64) -> Option<(usize, NonNull<u8>)> {
        let taken = self.pools.get(pool).take(owner);
        self.publish_pool(pool);
        taken
    }

    pub(crate) fn return_slot(&self, pool: Pool, index: usize) {
        self.pools.get(pool).give_back(index);
        self.publish_pool(pool);
    }

    pub(crate) fn count_refusal(&self, pool: Pool) {
        self.pools.get(pool).count_refusal();
        self.publish_pool(pool);
    }

    /// Called once per share, when its last handle (share or slot) is gone.
    pub(crate) fn release_share(&self) {
        self.admitted.set(self.admitted.get().saturating_sub(1));
        if self.admitted.get() == 0 {
            // Called from the last share's drop, after its last slot: nothing refers into
            // the region any more.
            self.region.release_pages();
        }
        self.publish_sessions();
    }

    fn publish_sessions(&self) {
        self.stats
            .publish_sessions(self.admitted.get(), self.admissions_refused.get());
        for pool in Pool::ALL {
            self.publish_pool(pool);
        }
    }

    fn publish_pool(&self, pool: Pool) {
        let p = self.pools.get(pool);
        let snap = PoolSnapshot {
            slot_size: p.slot_size(),
            capacity: p.capacity(),
            reserved: p.quota().saturating_mul(self.admitted.get()),
            in_use: p.in_use(),
            high_water: p.high_water(),
            refusals: p.refusals(),
        };
        self.stats.publish_pool(pool, &snap);
    }
}

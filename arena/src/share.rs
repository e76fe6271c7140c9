use std::cell::Cell;
use std::fmt;
use std::ptr::NonNull;
use std::rc::Rc;

use crate::arena::ArenaInner;
use crate::kind::{PerPool, Pool, PoolKind};
use crate::slot::Slot;

/// One admitted session's reservation: a fixed quota of slots in every pool.
///
/// Dropping it gives the reservation back only once every slot it allocated is dropped as
/// well, because each slot keeps the share alive internally.
pub struct SessionShare {
    inner: Rc<ShareInner>,
}

/// The reservation itself, shared by the `SessionShare` handle and its slots.
pub(crate) struct ShareInner {
    arena: Rc<ArenaInner>,
    id: u64,
    in_use: PerPool<Cell<usize>>,
}

impl SessionShare {
    pub(crate) fn new(arena: Rc<ArenaInner>, id: u64) -> Self {
        SessionShare {
            inner: Rc::new(ShareInner {
                arena,
                id,
                in_use: PerPool::default(),
            }),
        }
    }

    /// Identifies the share among those of its arena (not across arenas).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// One slot of pool `K`, or `None` ("not now") when this share already holds its quota.
    ///
    /// Never grows memory and never fails for any other reason: the pool was sized so that
    /// every admitted share can always fill its quota.
    #[allow(unsafe_code)]
    pub fn alloc<K: PoolKind>(&self) -> Option<Slot<K>> {
        let (index, ptr) = self.inner.take(K::KIND)?;
        let len = self.inner.arena.slot_size(K::KIND);
        // SAFETY: `take` just marked `index` of pool `K::KIND` as taken, for this call only,
        // and returned the first byte of that slot, which is `slot_size` (= `len`) bytes long
        // and lies in the region that `self.inner` keeps alive through its arena. The new
        // `Slot` is the only owner of the index and frees it in its `Drop`.
        Some(unsafe { Slot::new(Rc::clone(&self.inner), index, ptr, len) })
    }

    /// Slots of `pool` this share holds now.
    pub fn in_use(&self, pool: Pool) -> usize {
        self.inner.in_use.get(pool).get()
    }

    /// Slots of `pool` this share may hold at once.
    pub fn quota(&self, pool: Pool) -> usize {
        self.inner.arena.quota(pool)
    }

    /// Bytes in one slot of `pool`.
    pub fn slot_size(&self, pool: Pool) -> usize {
        self.inner.arena.slot_size(pool)
    }
}

impl fmt::Debug for SessionShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("SessionShare");
        d.field("id", &self.id());
        for pool in Pool::ALL {
            d.field(pool.name(), &self.in_use(pool));
        }
        d.finish()
    }
}

impl ShareInner {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    fn take(&self, pool: Pool) -> Option<(usize, NonNull<u8>)> {
        let used = self.in_use.get(pool);
        if used.get() >= self.arena.quota(pool) {
            self.arena.count_refusal(pool);
            return None;
        }
        let taken = self.arena.take_slot(pool, self.id)?;
        used.set(used.get().saturating_add(1));
        Some(taken)
    }

    pub(crate) fn give_back(&self, pool: Pool, index: usize) {
        self.arena.return_slot(pool, index);
        let used = self.in_use.get(pool);
        used.set(used.get().saturating_sub(1));
    }
}

impl Drop for ShareInner {
    fn drop(&mut self) {
        self.arena.release_share();
    }
}

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;

use slab::Slab;

use crate::config::PoolSpec;

/// One fixed pool of equally sized slots inside the region.
///
/// The slab only records which slot indices are taken (and by which session); the bytes live
/// in the region at `base + index × slot_size`. The slab is created with room for every slot,
/// so it never reallocates.
pub(crate) struct PoolState {
    /// `None` when the pool has no slots (an arena for zero sessions).
    base: Option<NonNull<u8>>,
    slot_size: usize,
    quota: usize,
    capacity: usize,
    /// Taken slot indices, each mapped to the owning session id. Borrows never outlive a
    /// method of this type, so they cannot overlap.
    slots: RefCell<Slab<u64>>,
    high_water: Cell<usize>,
    refusals: Cell<u64>,
}

impl PoolState {
    /// `base` must point at `spec.slot_size × spec.slots_per_session × sessions` bytes of the
    /// region that belong to this pool alone; `ArenaConfig::layout` guarantees the product fits.
    pub(crate) fn new(base: Option<NonNull<u8>>, spec: PoolSpec, sessions: usize) -> Self {
        let capacity = spec.slots_per_session.saturating_mul(sessions);
        PoolState {
            base,
            slot_size: spec.slot_size,
            quota: spec.slots_per_session,
            capacity,
            slots: RefCell::new(Slab::with_capacity(capacity)),
            high_water: Cell::new(0),
            refusals: Cell::new(0),
        }
    }

    /// Marks a free slot as owned by `owner` and returns its index and first byte.
    ///
    /// Only the session quotas decide whether a slot is available; `None` here would mean the
    /// bookkeeping broke its own invariant (more slots out than the pool holds), and is
    /// answered by refusing instead of growing or panicking.
    pub(crate) fn take(&self, owner: u64) -> Option<(usize, NonNull<u8>)> {
        let mut slots = self.slots.borrow_mut();
        let entry = slots.vacant_entry();
        // A slab that never holds more than `capacity` entries only hands out keys below
        // `capacity`; checking keeps a broken invariant from pushing past the preallocation.
        let index = entry.key();
        if index >= self.capacity {
            return None;
        }
        let offset = index.checked_mul(self.slot_size)?;
        // `wrapping_add` needs no `unsafe`, and stays inside the pool's bytes because
        // `index < capacity`.
        let ptr = NonNull::new(self.base?.as_ptr().wrapping_add(offset))?;
        entry.insert(owner);
        let in_use = slots.len();
        if in_use > self.high_water.get() {
            self.high_water.set(in_use);
        }
        Some((index, ptr))
    }

    /// Frees `index`; returns the session that held it, `None` if it was not taken.
    pub(crate) fn give_back(&self, index: usize) -> Option<u64> {
        self.slots.borrow_mut().try_remove(index)
    }

    pub(crate) fn count_refusal(&self) {
        self.refusals.set(self.refusals.get().saturating_add(1));
    }

    pub(crate) fn slot_size(&self) -> usize {
        self.slot_size
    }

    pub(crate) fn quota(&self) -> usize {
        self.quota
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn in_use(&self) -> usize {
        self.slots.borrow().len()
    }

    pub(crate) fn high_water(&self) -> usize {
        self.high_water.get()
    }

    pub(crate) fn refusals(&self) -> u64 {
        self.refusals.get()
    }
}

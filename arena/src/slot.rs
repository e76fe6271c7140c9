//! The one place where raw region memory becomes Rust slices.
#![allow(unsafe_code)]

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::rc::Rc;
use std::slice;

use crate::kind::PoolKind;
use crate::share::ShareInner;

/// Exclusive use of one slot of pool `K`, returned to the pool and to the session's quota on
/// drop.
///
/// Contents are **not** zeroed on allocation: a slot may still hold bytes written by an earlier
/// holder, possibly another session. Zeroing every frame chunk would cost bandwidth on the hot
/// path, so callers write before they read (or `fill(0)` when they cannot).
pub struct Slot<K: PoolKind> {
    /// Keeps the reservation, and through it the mapping, alive while the slot exists.
    share: Rc<ShareInner>,
    index: usize,
    ptr: NonNull<u8>,
    len: usize,
    kind: PhantomData<fn() -> K>,
}

impl<K: PoolKind> Slot<K> {
    /// # Safety
    ///
    /// `ptr` must point at the `len` bytes of slot `index` of pool `K` inside the region kept
    /// alive by `share`, and the pool must have marked `index` as taken for this `Slot` alone
    /// (it is freed again only by this `Slot`'s `Drop`).
    pub(crate) unsafe fn new(
        share: Rc<ShareInner>,
        index: usize,
        ptr: NonNull<u8>,
        len: usize,
    ) -> Self {
        Slot {
            share,
            index,
            ptr,
            len,
            kind: PhantomData,
        }
    }

    /// Position of the slot in its pool; distinct among live slots of a pool, for tests and
    /// debugging.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The share this slot counts against.
    pub fn session_id(&self) -> u64 {
        self.share.id()
    }
}

impl<K: PoolKind> Deref for Slot<K> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: by the contract of `Slot::new`, `ptr..ptr+len` is slot `index` of pool `K`
        // inside the mapping that `self.share` keeps alive (share -> arena -> region), so it is
        // valid for reads for as long as `self` lives. The pool marked `index` taken for this
        // slot alone and frees it only in `Drop`, and slots never overlap (distinct indices ×
        // slot_size inside disjoint pools), so no other `Slot` reaches these bytes; the region
        // itself is held as `MmapRaw`, which never hands out references. Anonymous mappings are
        // zero-filled by the kernel and any byte is a valid `u8`, so the memory is initialised.
        unsafe { slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<K: PoolKind> DerefMut for Slot<K> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: same range and validity argument as in `deref`; the mapping is
        // PROT_READ | PROT_WRITE, and `&mut self` guarantees this is the only live reference
        // derived from this slot, while no other slot or handle can reach the same bytes.
        unsafe { slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<K: PoolKind> AsRef<[u8]> for Slot<K> {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl<K: PoolKind> AsMut<[u8]> for Slot<K> {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl<K: PoolKind> Drop for Slot<K> {
    fn drop(&mut self) {
        // Runs before `share` is released, so the reservation is still held while the slot
        // goes back; the share itself may then be released by the field drop that follows.
        self.share.give_back(K::KIND, self.index);
    }
}

impl<K: PoolKind> fmt::Debug for Slot<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("pool", &K::KIND)
            .field("index", &self.index)
            .field("len", &self.len)
            .field("session_id", &self.session_id())
            .finish()
    }
}

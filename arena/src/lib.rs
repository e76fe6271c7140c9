//! Preallocated, strictly bounded memory for one executor thread of the gateway.
//!
//! The gateway must never run out of memory because a remote desktop got busy, so every byte a
//! session may touch on the hot path is decided at start-up. This crate holds those rules:
//!
//! - **The arena does no I/O.** No files, sockets or logging: it is pure bookkeeping over one
//!   mapping, so it can sit under the async executor without ever blocking it.
//! - **Memory is mapped once; nothing grows after start-up.** [`Arena::new`] maps a single
//!   anonymous region (optionally prefaulted, `mlock`ed and advised for transparent huge
//!   pages) and carves it into three fixed pools: frame chunks, surface descriptors and audio
//!   buffers. The slot bookkeeping is preallocated too; no call after `new` allocates.
//! - **An idle arena gives its pages back.** When the last share is released (its last slot
//!   gone), the region is advised `MADV_DONTNEED`, so a gateway whose sessions have all ended
//!   is back at its base memory — unless it was prefaulted or locked on request.
//! - **A share never takes more than its quota.** [`Arena::admit`] reserves one session's share
//!   of every pool, and each pool holds exactly `slots_per_session × sessions` slots, so an
//!   admitted session's allocation can only be refused because of its own quota. A refusal is
//!   "not now" (`None`), never an error and never a reason to grow.
//! - **`unsafe` lives here only.** The rest of the workspace denies `unsafe_code`. Inside this
//!   crate it is confined to turning a slot's raw memory into byte slices ([`Slot`]'s
//!   `Deref`/`DerefMut`), to the one call that creates a [`Slot`] for a freshly taken index,
//!   and to the `MADV_DONTNEED` of an idle region; the mapping itself is held as
//!   `memmap2::MmapRaw`, which never hands out references.
//!
//! One arena belongs to one thread (it is `!Send`, built on `Rc`/`Cell`/`RefCell` so the hot
//! path has no atomic read-modify-write). Only [`ArenaStats`] crosses threads, for `/metrics`.
//!
//! ```compile_fail
//! fn must_be_send<T: Send>() {}
//! must_be_send::<arena::Arena>();
//! ```
//!
//! ```compile_fail
//! fn must_be_send<T: Send>() {}
//! must_be_send::<arena::SessionShare>();
//! ```
//!
//! Handles are typed by pool, so a frame chunk cannot be passed where an audio buffer is wanted:
//!
//! ```compile_fail
//! use arena::{Arena, ArenaConfig, AudioBuf, FrameChunk, Slot};
//! let arena = Arena::new(&ArenaConfig::with_sessions(1)).unwrap();
//! let share = arena.admit().unwrap();
//! let audio: Slot<AudioBuf> = share.alloc::<FrameChunk>().unwrap();
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod arena;
mod config;
mod error;
mod heap;
mod kind;
mod pool;
mod region;
mod share;
mod slot;
mod stats;

pub use crate::arena::Arena;
pub use crate::config::{ArenaConfig, PoolSpec};
pub use crate::error::ArenaError;
pub use crate::heap::give_back_free_heap;
pub use crate::kind::{AudioBuf, FrameChunk, Pool, PoolKind, SurfaceDesc};
pub use crate::share::SessionShare;
pub use crate::slot::Slot;
pub use crate::stats::{ArenaStats, PoolSnapshot};

#[cfg(test)]
mod tests;

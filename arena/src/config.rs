use crate::error::ArenaError;
use crate::kind::{PerPool, Pool};

/// Each pool starts on its own cache line so that the last slot of one pool and the first
/// slot of the next never share a line.
pub(crate) const POOL_ALIGN: usize = 64;
/// The mapping is made of whole pages anyway; rounding makes `region_bytes` the real cost.
pub(crate) const PAGE: usize = 4096;

/// Size of one pool's slots and how many of them one session may hold at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolSpec {
    /// Bytes per slot; every handle of the pool is exactly this long.
    pub slot_size: usize,
    /// A session's quota in this pool.
    pub slots_per_session: usize,
}

/// Sizing of one arena, fixed for its whole life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArenaConfig {
    /// Encoded frame data.
    pub frame_chunk: PoolSpec,
    /// Per-surface metadata.
    pub surface_desc: PoolSpec,
    /// Audio sample buffers.
    pub audio_buf: PoolSpec,
    /// Sessions this arena admits at most.
    pub sessions: usize,
    /// Fault every page in at start-up so the first frames do not pay for page faults.
    pub prefault: bool,
    /// `mlock` the region so it can never be swapped out; start-up fails if refused.
    pub mlock: bool,
    /// Ask for transparent huge pages (best effort; see [`crate::Arena::huge_pages_active`]).
    pub huge_pages: bool,
}

impl ArenaConfig {
    /// 16 KiB holds a typical encoded frame fragment; 16 of them let a session pipeline a
    /// burst without waiting for the socket.
    pub const DEFAULT_FRAME_CHUNK: PoolSpec = PoolSpec {
        slot_size: 16 * 1024,
        slots_per_session: 16,
    };
    /// Surface descriptors are small; 16 covers multi-monitor sessions.
    pub const DEFAULT_SURFACE_DESC: PoolSpec = PoolSpec {
        slot_size: 256,
        slots_per_session: 16,
    };
    /// 4 KiB of audio is a few tens of milliseconds; 8 buffers absorb network jitter.
    pub const DEFAULT_AUDIO_BUF: PoolSpec = PoolSpec {
        slot_size: 4 * 1024,
        slots_per_session: 4,
    };

    /// Default pool sizes for `sessions` sessions, with no prefault, mlock or huge pages, so
    /// that tests and small deployments start without special privileges.
    pub const fn with_sessions(sessions: usize) -> Self {
        ArenaConfig {
            frame_chunk: Self::DEFAULT_FRAME_CHUNK,
            surface_desc: Self::DEFAULT_SURFACE_DESC,
            audio_buf: Self::DEFAULT_AUDIO_BUF,
            sessions,
            prefault: false,
            mlock: false,
            huge_pages: false,
        }
    }

    /// The spec of one pool, for code that iterates over [`Pool::ALL`].
    pub fn pool(&self, pool: Pool) -> PoolSpec {
        match pool {
            Pool::FrameChunk => self.frame_chunk,
            Pool::SurfaceDesc => self.surface_desc,
            Pool::AudioBuf => self.audio_buf,
        }
    }

    /// What admitting one more session costs, for capacity planning.
    ///
    /// Saturates at `usize::MAX` for configurations that [`validate`](Self::validate) rejects.
    pub fn per_session_bytes(&self) -> usize {
        Pool::ALL.iter().fold(0usize, |sum, &pool| {
            let spec = self.pool(pool);
            sum.saturating_add(spec.slot_size.saturating_mul(spec.slots_per_session))
        })
    }

    /// The whole mapping for `sessions` sessions: pools back to back, each starting on a cache
    /// line, total rounded up to whole pages. Zero when `sessions` is zero.
    ///
    /// Saturates at `usize::MAX` for configurations that [`validate`](Self::validate) rejects.
    pub fn region_bytes(&self) -> usize {
        self.layout().map_or(usize::MAX, |layout| layout.total)
    }

    /// Rejects sizes that cannot be mapped or would make slots meaningless, before anything is
    /// mapped.
    pub fn validate(&self) -> Result<(), ArenaError> {
        self.layout().map(|_| ())
    }

    /// Where each pool lives in the region; all arithmetic is overflow-checked here once so
    /// that the hot path can rely on it.
    pub(crate) fn layout(&self) -> Result<Layout, ArenaError> {
        let mut end = 0usize;
        let offsets = PerPool::try_from_fn(|pool| {
            let spec = self.pool(pool);
            if spec.slot_size == 0 {
                return Err(ArenaError::ZeroSlotSize { pool });
            }
            if spec.slots_per_session == 0 {
                return Err(ArenaError::ZeroSlotsPerSession { pool });
            }
            let bytes = spec
                .slot_size
                .checked_mul(spec.slots_per_session)
                .and_then(|b| b.checked_mul(self.sessions))
                .ok_or(ArenaError::PoolTooLarge { pool })?;
            let start = align_up(end, POOL_ALIGN).ok_or(ArenaError::RegionTooLarge)?;
            end = start.checked_add(bytes).ok_or(ArenaError::RegionTooLarge)?;
            Ok(start)
        })?;
        let total = align_up(end, PAGE).ok_or(ArenaError::RegionTooLarge)?;
        if isize::try_from(total).is_err() {
            return Err(ArenaError::RegionTooLarge);
        }
        Ok(Layout { offsets, total })
    }
}

/// Byte offsets of the pools inside the region, and the region's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) offsets: PerPool<usize>,
    pub(crate) total: usize,
}

fn align_up(n: usize, align: usize) -> Option<usize> {
    debug_assert!(align.is_power_of_two());
    Some(n.checked_add(align - 1)? & !(align - 1))
}

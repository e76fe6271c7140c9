#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod model;
mod unit;

use crate::{ArenaConfig, PoolSpec};

/// Small pools with odd slot sizes, so misaligned offsets would show.
pub(crate) fn small_config(sessions: usize) -> ArenaConfig {
    ArenaConfig {
        frame_chunk: PoolSpec {
            slot_size: 100,
            slots_per_session: 3,
        },
        surface_desc: PoolSpec {
            slot_size: 24,
            slots_per_session: 2,
        },
        audio_buf: PoolSpec {
            slot_size: 64,
            slots_per_session: 1,
        },
        sessions,
        prefault: false,
        mlock: false,
        huge_pages: false,
    }
}

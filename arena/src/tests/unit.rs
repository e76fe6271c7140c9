use std::sync::Arc;

use super::small_config;
use crate::{
    Arena, ArenaConfig, ArenaError, ArenaStats, AudioBuf, FrameChunk, Pool, PoolSnapshot, PoolSpec,
    SurfaceDesc,
};

#[test]
fn pool_names_are_stable_metric_labels() {
    let names: Vec<_> = Pool::ALL.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["frame_chunk", "surface_desc", "audio_buf"]);
    assert_eq!(Pool::AudioBuf.to_string(), "audio_buf");
}

#[test]
fn default_per_session_bytes() {
    let cfg = ArenaConfig::with_sessions(1);
    assert_eq!(cfg.per_session_bytes(), 16 * 16384 + 16 * 256 + 4 * 4096);
}

#[test]
fn region_aligns_pools_to_cache_lines_and_rounds_to_pages() {
    let cfg = small_config(1);
    let layout = cfg.layout().unwrap();
    assert_eq!(*layout.offsets.get(Pool::FrameChunk), 0);
    // frame: 300 bytes -> surface starts at 320, 48 bytes -> audio at 384, 64 bytes -> 448.
    assert_eq!(*layout.offsets.get(Pool::SurfaceDesc), 320);
    assert_eq!(*layout.offsets.get(Pool::AudioBuf), 384);
    assert_eq!(cfg.region_bytes(), 4096);

    let cfg = ArenaConfig::with_sessions(2);
    // 2 × (262144 + 4096 + 16384) is already cache-line and page aligned.
    assert_eq!(cfg.region_bytes(), 565_248);

    let mut big = small_config(100);
    big.frame_chunk.slot_size = 4096;
    // 4096×3×100 + 24×2×100 (4800 -> 4864) + 64×100 = 1228800 + 4864 + 6400 -> rounded up
    let end: usize = 1_228_800 + 4864 + 6400;
    assert_eq!(big.region_bytes(), end.div_ceil(4096) * 4096);
}

#[test]
fn zero_sessions_maps_nothing_and_admits_nobody() {
    let cfg = ArenaConfig::with_sessions(0);
    cfg.validate().unwrap();
    assert_eq!(cfg.region_bytes(), 0);
    let arena = Arena::new(&cfg).unwrap();
    assert_eq!(arena.region_bytes(), 0);
    assert!(!arena.huge_pages_active());
    let err = arena.admit().unwrap_err();
    assert!(matches!(err, ArenaError::Full { capacity: 0 }));
    let stats = arena.stats();
    assert_eq!(stats.sessions_capacity(), 0);
    assert_eq!(stats.admissions_refused(), 1);
    for pool in Pool::ALL {
        assert_eq!(stats.pool(pool).capacity, 0);
    }
}

#[test]
fn validate_rejects_zero_sizes_with_the_pool_named() {
    let mut cfg = small_config(1);
    cfg.surface_desc.slot_size = 0;
    let err = cfg.validate().unwrap_err();
    assert!(matches!(
        err,
        ArenaError::ZeroSlotSize {
            pool: Pool::SurfaceDesc
        }
    ));
    assert_eq!(
        err.to_string(),
        "pool surface_desc: slot_size must be greater than zero"
    );
    assert!(Arena::new(&cfg).is_err());

    let mut cfg = small_config(1);
    cfg.audio_buf.slots_per_session = 0;
    let err = cfg.validate().unwrap_err();
    assert!(matches!(
        err,
        ArenaError::ZeroSlotsPerSession {
            pool: Pool::AudioBuf
        }
    ));
    assert_eq!(
        err.to_string(),
        "pool audio_buf: slots_per_session must be greater than zero"
    );
}

#[test]
fn validate_rejects_overflowing_sizes() {
    let mut cfg = small_config(2);
    cfg.frame_chunk.slot_size = usize::MAX / 2;
    assert!(matches!(
        cfg.validate(),
        Err(ArenaError::PoolTooLarge {
            pool: Pool::FrameChunk
        })
    ));
    assert_eq!(cfg.region_bytes(), usize::MAX);
    assert_eq!(cfg.per_session_bytes(), usize::MAX);

    // Each pool fits on its own but the region does not fit isize::MAX.
    let mut cfg = small_config(1);
    cfg.frame_chunk = PoolSpec {
        slot_size: usize::MAX / 4,
        slots_per_session: 1,
    };
    cfg.surface_desc = PoolSpec {
        slot_size: usize::MAX / 4,
        slots_per_session: 1,
    };
    cfg.audio_buf = PoolSpec {
        slot_size: usize::MAX / 4,
        slots_per_session: 1,
    };
    assert!(matches!(cfg.validate(), Err(ArenaError::RegionTooLarge)));

    // Zero sessions still may not carry absurd per-session sizes.
    let mut cfg = small_config(0);
    cfg.audio_buf = PoolSpec {
        slot_size: usize::MAX,
        slots_per_session: 2,
    };
    assert!(cfg.validate().is_err());
}

#[test]
fn error_messages_are_lowercase() {
    let errors = [
        ArenaError::ZeroSlotSize {
            pool: Pool::FrameChunk,
        },
        ArenaError::ZeroSlotsPerSession {
            pool: Pool::FrameChunk,
        },
        ArenaError::PoolTooLarge {
            pool: Pool::FrameChunk,
        },
        ArenaError::RegionTooLarge,
        ArenaError::Map {
            bytes: 1,
            source: std::io::ErrorKind::OutOfMemory.into(),
        },
        ArenaError::Lock {
            bytes: 1,
            source: std::io::ErrorKind::PermissionDenied.into(),
        },
        ArenaError::Full { capacity: 3 },
    ];
    for e in errors {
        let msg = e.to_string();
        let first = msg.chars().next().unwrap();
        assert!(first.is_lowercase(), "{msg}");
    }
    assert_eq!(
        ArenaError::Full { capacity: 3 }.to_string(),
        "arena full: all 3 session shares are admitted"
    );
}

#[test]
fn admission_is_bounded_and_reusable() {
    let arena = Arena::new(&small_config(2)).unwrap();
    let stats = arena.stats();
    let a = arena.admit().unwrap();
    let b = arena.admit().unwrap();
    assert_ne!(a.id(), b.id());
    assert_eq!(stats.sessions_admitted(), 2);
    assert!(matches!(
        arena.admit(),
        Err(ArenaError::Full { capacity: 2 })
    ));
    assert_eq!(stats.admissions_refused(), 1);
    drop(a);
    assert_eq!(stats.sessions_admitted(), 1);
    let c = arena.admit().unwrap();
    assert_ne!(c.id(), b.id());
    assert_eq!(stats.pool(Pool::FrameChunk).reserved, 6);
    drop((b, c));
    assert_eq!(stats.sessions_admitted(), 0);
    assert_eq!(stats.pool(Pool::FrameChunk).reserved, 0);
}

#[test]
fn slots_are_typed_and_sized_per_pool() {
    let arena = Arena::new(&ArenaConfig::with_sessions(1)).unwrap();
    let share = arena.admit().unwrap();
    let frame = share.alloc::<FrameChunk>().unwrap();
    let surface = share.alloc::<SurfaceDesc>().unwrap();
    let audio = share.alloc::<AudioBuf>().unwrap();
    assert_eq!(frame.len(), 16 * 1024);
    assert_eq!(surface.len(), 256);
    assert_eq!(audio.len(), 4 * 1024);
    assert_eq!(frame.session_id(), share.id());
    assert_eq!(share.in_use(Pool::FrameChunk), 1);
    assert_eq!(share.in_use(Pool::SurfaceDesc), 1);
    assert_eq!(share.in_use(Pool::AudioBuf), 1);
    assert_eq!(share.quota(Pool::FrameChunk), 16);
    assert_eq!(share.quota(Pool::AudioBuf), 4);
    let dbg = format!("{frame:?}");
    assert!(dbg.contains("FrameChunk"), "{dbg}");
}

#[test]
fn quota_refuses_with_none_and_counts_refusals() {
    let arena = Arena::new(&small_config(2)).unwrap();
    let stats = arena.stats();
    let share = arena.admit().unwrap();
    let other = arena.admit().unwrap();
    let mut held: Vec<_> = (0..3)
        .map(|_| share.alloc::<FrameChunk>().unwrap())
        .collect();
    assert!(share.alloc::<FrameChunk>().is_none());
    assert!(share.alloc::<FrameChunk>().is_none());
    // The other session's quota is untouched by this one's refusals.
    let theirs = other.alloc::<FrameChunk>().unwrap();
    assert_eq!(
        stats.pool(Pool::FrameChunk),
        PoolSnapshot {
            slot_size: 100,
            capacity: 6,
            reserved: 6,
            in_use: 4,
            high_water: 4,
            refusals: 2,
        }
    );
    held.pop();
    assert_eq!(share.in_use(Pool::FrameChunk), 2);
    let again = share.alloc::<FrameChunk>().unwrap();
    assert_eq!(stats.pool(Pool::FrameChunk).high_water, 4);
    drop((held, again, theirs));
    assert_eq!(stats.pool(Pool::FrameChunk).in_use, 0);
    assert_eq!(stats.pool(Pool::FrameChunk).high_water, 4);
}

#[test]
fn writes_stay_inside_their_slot() {
    let arena = Arena::new(&small_config(2)).unwrap();
    let a = arena.admit().unwrap();
    let b = arena.admit().unwrap();
    let mut slots: Vec<_> = (0..3)
        .flat_map(|_| {
            [
                a.alloc::<FrameChunk>().unwrap(),
                b.alloc::<FrameChunk>().unwrap(),
            ]
        })
        .collect();
    let mut surfaces: Vec<_> = (0..2)
        .flat_map(|_| {
            [
                a.alloc::<SurfaceDesc>().unwrap(),
                b.alloc::<SurfaceDesc>().unwrap(),
            ]
        })
        .collect();
    let mut indices: Vec<_> = slots.iter().map(|s| s.index()).collect();
    indices.sort_unstable();
    assert_eq!(indices, [0, 1, 2, 3, 4, 5]);
    for (i, s) in slots.iter_mut().enumerate() {
        s.fill(i as u8 + 1);
    }
    for (i, s) in surfaces.iter_mut().enumerate() {
        s.fill(0xA0 + i as u8);
    }
    for (i, s) in slots.iter().enumerate() {
        assert!(s.iter().all(|&b| b == i as u8 + 1));
    }
    for (i, s) in surfaces.iter().enumerate() {
        assert!(s.iter().all(|&b| b == 0xA0 + i as u8));
    }
}

#[test]
fn contents_are_not_zeroed_on_reuse() {
    let arena = Arena::new(&small_config(1)).unwrap();
    let share = arena.admit().unwrap();
    let mut slot = share.alloc::<AudioBuf>().unwrap();
    assert!(
        slot.iter().all(|&b| b == 0),
        "fresh anonymous memory is zero"
    );
    slot.fill(0x5A);
    let index = slot.index();
    drop(slot);
    let slot = share.alloc::<AudioBuf>().unwrap();
    assert_eq!(slot.index(), index);
    assert!(slot.iter().all(|&b| b == 0x5A));
}

#[test]
fn share_dropped_before_its_slots_keeps_the_reservation() {
    let arena = Arena::new(&small_config(1)).unwrap();
    let stats = arena.stats();
    let share = arena.admit().unwrap();
    let mut first = share.alloc::<FrameChunk>().unwrap();
    let second = share.alloc::<AudioBuf>().unwrap();
    drop(share);

    assert_eq!(stats.sessions_admitted(), 1);
    assert_eq!(stats.pool(Pool::FrameChunk).reserved, 3);
    assert_eq!(stats.pool(Pool::AudioBuf).reserved, 1);
    assert!(matches!(arena.admit(), Err(ArenaError::Full { .. })));
    first.fill(7);
    assert!(first.iter().all(|&b| b == 7));

    drop(first);
    assert_eq!(stats.sessions_admitted(), 1);
    assert!(arena.admit().is_err());

    drop(second);
    assert_eq!(stats.sessions_admitted(), 0);
    for pool in Pool::ALL {
        let snap = stats.pool(pool);
        assert_eq!((snap.reserved, snap.in_use), (0, 0), "{pool}");
    }
    let again = arena.admit().unwrap();
    assert_eq!(again.in_use(Pool::FrameChunk), 0);
}

#[test]
fn handles_outlive_the_arena_value() {
    let arena = Arena::new(&small_config(1)).unwrap();
    let stats = arena.stats();
    let share = arena.admit().unwrap();
    drop(arena);
    let mut slot = share.alloc::<SurfaceDesc>().unwrap();
    slot.fill(1);
    assert_eq!(stats.pool(Pool::SurfaceDesc).in_use, 1);
    drop((share, slot));
    assert_eq!(stats.sessions_admitted(), 0);
}

#[test]
fn stats_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ArenaStats>();
    send_sync::<Arc<ArenaStats>>();

    let arena = Arena::new(&small_config(1)).unwrap();
    let share = arena.admit().unwrap();
    let _slot = share.alloc::<FrameChunk>().unwrap();
    let stats = arena.stats();
    let seen = std::thread::spawn(move || stats.pool(Pool::FrameChunk))
        .join()
        .unwrap();
    assert_eq!(seen.in_use, 1);
    assert_eq!(seen.reserved, 3);
}

#[test]
fn prefault_and_huge_pages_are_accepted() {
    for (prefault, huge_pages) in [(true, false), (false, true), (true, true)] {
        let mut cfg = ArenaConfig::with_sessions(4);
        cfg.prefault = prefault;
        cfg.huge_pages = huge_pages;
        let arena = Arena::new(&cfg).unwrap();
        assert_eq!(arena.region_bytes(), cfg.region_bytes());
        if !huge_pages {
            assert!(!arena.huge_pages_active());
        }
        assert_eq!(arena.stats().huge_pages_active(), arena.huge_pages_active());
        let share = arena.admit().unwrap();
        let mut slot = share.alloc::<FrameChunk>().unwrap();
        slot.fill(3);
        assert!(slot.iter().all(|&b| b == 3));
    }
}

#[test]
fn mlock_succeeds_or_reports_a_lock_error() {
    let mut cfg = small_config(1);
    cfg.mlock = true;
    match Arena::new(&cfg) {
        Ok(arena) => assert_eq!(arena.region_bytes(), 4096),
        Err(ArenaError::Lock { bytes, .. }) => assert_eq!(bytes, 4096),
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[test]
fn an_idle_arena_gives_its_pages_back_unless_kept_resident() {
    for keep in [false, true] {
        let mut cfg = ArenaConfig::with_sessions(2);
        cfg.prefault = keep;
        let arena = Arena::new(&cfg).unwrap();
        let first = arena.admit().unwrap();
        let second = arena.admit().unwrap();
        let mut slot = first.alloc::<FrameChunk>().unwrap();
        let index = slot.index();
        slot.fill(0xab);
        drop(slot);
        drop(first);
        // One share is still live: its neighbour's bytes stay.
        let again = second.alloc::<FrameChunk>().unwrap();
        assert_eq!(again.index(), index);
        assert!(again.iter().all(|&b| b == 0xab));
        drop(again);
        drop(second);
        // No share left: the pages went back to the kernel and read as zeros.
        let share = arena.admit().unwrap();
        let slot = share.alloc::<FrameChunk>().unwrap();
        assert_eq!(slot.index(), index);
        let expect = if keep { 0xab } else { 0 };
        assert!(slot.iter().all(|&b| b == expect), "keep_resident {keep}");
    }
}

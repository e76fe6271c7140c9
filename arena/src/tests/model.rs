//! Random sequences of arena operations checked step by step against a plain model.

use proptest::prelude::*;

use crate::{
    Arena, ArenaConfig, ArenaError, AudioBuf, FrameChunk, Pool, PoolSnapshot, PoolSpec,
    SessionShare, Slot, SurfaceDesc,
};

#[derive(Clone, Copy, Debug)]
enum Op {
    Admit,
    DropShare(usize),
    Alloc(usize, Pool),
    DropSlot(usize),
    Rewrite(usize),
}

enum AnySlot {
    Frame(Slot<FrameChunk>),
    Surface(Slot<SurfaceDesc>),
    Audio(Slot<AudioBuf>),
}

impl AnySlot {
    fn alloc(share: &SessionShare, pool: Pool) -> Option<Self> {
        match pool {
            Pool::FrameChunk => share.alloc().map(AnySlot::Frame),
            Pool::SurfaceDesc => share.alloc().map(AnySlot::Surface),
            Pool::AudioBuf => share.alloc().map(AnySlot::Audio),
        }
    }

    fn pool(&self) -> Pool {
        match self {
            AnySlot::Frame(_) => Pool::FrameChunk,
            AnySlot::Surface(_) => Pool::SurfaceDesc,
            AnySlot::Audio(_) => Pool::AudioBuf,
        }
    }

    fn index(&self) -> usize {
        match self {
            AnySlot::Frame(s) => s.index(),
            AnySlot::Surface(s) => s.index(),
            AnySlot::Audio(s) => s.index(),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            AnySlot::Frame(s) => s,
            AnySlot::Surface(s) => s,
            AnySlot::Audio(s) => s,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            AnySlot::Frame(s) => s,
            AnySlot::Surface(s) => s,
            AnySlot::Audio(s) => s,
        }
    }
}

fn pool_idx(pool: Pool) -> usize {
    match pool {
        Pool::FrameChunk => 0,
        Pool::SurfaceDesc => 1,
        Pool::AudioBuf => 2,
    }
}

struct ModelShare {
    handle: Option<SessionShare>,
    id: u64,
    in_use: [usize; 3],
}

impl ModelShare {
    /// The reservation lives while the handle or any of its slots does.
    fn reserved(&self) -> bool {
        self.handle.is_some() || self.in_use.iter().any(|&n| n > 0)
    }
}

struct LiveSlot {
    share: usize,
    tag: u8,
    slot: AnySlot,
}

fn pattern(tag: u8, i: usize) -> u8 {
    tag.wrapping_add((i as u8).wrapping_mul(37))
}

struct Model {
    cfg: ArenaConfig,
    arena: Arena,
    shares: Vec<ModelShare>,
    slots: Vec<LiveSlot>,
    high_water: [usize; 3],
    refusals: [u64; 3],
    admissions_refused: u64,
    next_tag: u8,
}

impl Model {
    fn new(cfg: ArenaConfig) -> Self {
        Model {
            arena: Arena::new(&cfg).unwrap(),
            cfg,
            shares: Vec::new(),
            slots: Vec::new(),
            high_water: [0; 3],
            refusals: [0; 3],
            admissions_refused: 0,
            next_tag: 0,
        }
    }

    fn reserved_shares(&self) -> usize {
        self.shares.iter().filter(|s| s.reserved()).count()
    }

    fn live_handles(&self) -> Vec<usize> {
        (0..self.shares.len())
            .filter(|&i| self.shares[i].handle.is_some())
            .collect()
    }

    fn tag(&mut self) -> u8 {
        // At most a few hundred steps run, and fewer than 256 slots are live at once, so live
        // tags are distinct as long as the counter does not lap a live slot; assert it.
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        assert!(self.slots.iter().all(|s| s.tag != tag));
        tag
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Admit => {
                let full = self.reserved_shares() >= self.cfg.sessions;
                match self.arena.admit() {
                    Ok(share) => {
                        assert!(!full, "admitted past capacity");
                        assert!(self
                            .shares
                            .iter()
                            .filter(|s| s.reserved())
                            .all(|s| s.id != share.id()));
                        self.shares.push(ModelShare {
                            id: share.id(),
                            handle: Some(share),
                            in_use: [0; 3],
                        });
                    }
                    Err(ArenaError::Full { capacity }) => {
                        assert!(full, "refused admission below capacity");
                        assert_eq!(capacity, self.cfg.sessions);
                        self.admissions_refused += 1;
                    }
                    Err(other) => panic!("unexpected admit error: {other}"),
                }
            }
            Op::DropShare(n) => {
                let live = self.live_handles();
                if let Some(&i) = live.get(n % live.len().max(1)) {
                    self.shares[i].handle = None;
                }
            }
            Op::Alloc(n, pool) => {
                let live = self.live_handles();
                let Some(&i) = live.get(n % live.len().max(1)) else {
                    return;
                };
                let p = pool_idx(pool);
                let quota = self.cfg.pool(pool).slots_per_session;
                let share = self.shares[i].handle.as_ref().unwrap();
                let got = AnySlot::alloc(share, pool);
                if self.shares[i].in_use[p] >= quota {
                    assert!(got.is_none(), "allocated past quota");
                    self.refusals[p] += 1;
                } else {
                    let mut slot = got.expect("refused within quota");
                    assert_eq!(slot.pool(), pool);
                    assert_eq!(slot.bytes().len(), self.cfg.pool(pool).slot_size);
                    let tag = self.tag();
                    fill(slot.bytes_mut(), tag);
                    self.shares[i].in_use[p] += 1;
                    self.slots.push(LiveSlot {
                        share: i,
                        tag,
                        slot,
                    });
                    let in_use = self.slots.iter().filter(|s| s.slot.pool() == pool).count();
                    self.high_water[p] = self.high_water[p].max(in_use);
                }
            }
            Op::DropSlot(n) => {
                if self.slots.is_empty() {
                    return;
                }
                let live = self.slots.swap_remove(n % self.slots.len());
                self.shares[live.share].in_use[pool_idx(live.slot.pool())] -= 1;
            }
            Op::Rewrite(n) => {
                if self.slots.is_empty() {
                    return;
                }
                let k = n % self.slots.len();
                let tag = self.tag();
                let live = &mut self.slots[k];
                live.tag = tag;
                fill(live.slot.bytes_mut(), tag);
            }
        }
    }

    fn check(&self) {
        // Every live slot still holds exactly what was written into it.
        for live in &self.slots {
            for (i, &b) in live.slot.bytes().iter().enumerate() {
                assert_eq!(
                    b,
                    pattern(live.tag, i),
                    "slot {} corrupted",
                    live.slot.index()
                );
            }
        }
        // No index twice at once within a pool, and no two live slots overlap in memory.
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for pool in Pool::ALL {
            let mut indices: Vec<_> = self
                .slots
                .iter()
                .filter(|s| s.slot.pool() == pool)
                .map(|s| s.slot.index())
                .collect();
            let n = indices.len();
            indices.sort_unstable();
            indices.dedup();
            assert_eq!(indices.len(), n, "{pool}: index handed out twice");
            let capacity = self.cfg.pool(pool).slots_per_session * self.cfg.sessions;
            assert!(indices.iter().all(|&i| i < capacity));
        }
        for live in &self.slots {
            let bytes = live.slot.bytes();
            ranges.push((bytes.as_ptr() as usize, bytes.len()));
        }
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "slots overlap");
        }

        let reserved = self.reserved_shares();
        let stats = self.arena.stats();
        assert_eq!(stats.sessions_admitted(), reserved);
        assert_eq!(stats.sessions_capacity(), self.cfg.sessions);
        assert_eq!(stats.admissions_refused(), self.admissions_refused);
        for pool in Pool::ALL {
            let p = pool_idx(pool);
            let spec = self.cfg.pool(pool);
            for share in &self.shares {
                assert!(share.in_use[p] <= spec.slots_per_session);
                if let Some(h) = &share.handle {
                    assert_eq!(h.in_use(pool), share.in_use[p]);
                    assert_eq!(h.quota(pool), spec.slots_per_session);
                }
            }
            let expected = PoolSnapshot {
                slot_size: spec.slot_size,
                capacity: spec.slots_per_session * self.cfg.sessions,
                reserved: spec.slots_per_session * reserved,
                in_use: self.shares.iter().map(|s| s.in_use[p]).sum(),
                high_water: self.high_water[p],
                refusals: self.refusals[p],
            };
            assert_eq!(stats.pool(pool), expected, "{pool}");
        }
    }
}

fn fill(bytes: &mut [u8], tag: u8) {
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = pattern(tag, i);
    }
}

fn pool_strategy() -> impl Strategy<Value = Pool> {
    prop_oneof![
        Just(Pool::FrameChunk),
        Just(Pool::SurfaceDesc),
        Just(Pool::AudioBuf)
    ]
}

fn spec_strategy() -> impl Strategy<Value = PoolSpec> {
    (1usize..=130, 1usize..=3).prop_map(|(slot_size, slots_per_session)| PoolSpec {
        slot_size,
        slots_per_session,
    })
}

fn config_strategy() -> impl Strategy<Value = ArenaConfig> {
    (
        spec_strategy(),
        spec_strategy(),
        spec_strategy(),
        0usize..=3,
    )
        .prop_map(
            |(frame_chunk, surface_desc, audio_buf, sessions)| ArenaConfig {
                frame_chunk,
                surface_desc,
                audio_buf,
                sessions,
                prefault: false,
                mlock: false,
                huge_pages: false,
            },
        )
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Admit),
        1 => any::<usize>().prop_map(Op::DropShare),
        6 => (any::<usize>(), pool_strategy()).prop_map(|(n, p)| Op::Alloc(n, p)),
        3 => any::<usize>().prop_map(Op::DropSlot),
        2 => any::<usize>().prop_map(Op::Rewrite),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arena_matches_model(
        cfg in config_strategy(),
        ops in prop::collection::vec(op_strategy(), 0..120),
        drop_shares_first in any::<bool>(),
    ) {
        let mut model = Model::new(cfg);
        model.check();
        for op in ops {
            model.apply(op);
            model.check();
        }

        // Tear down in either order; everything must come back.
        if drop_shares_first {
            for share in &mut model.shares {
                share.handle = None;
            }
            model.check();
        }
        while !model.slots.is_empty() {
            model.apply(Op::DropSlot(0));
            model.check();
        }
        for share in &mut model.shares {
            share.handle = None;
        }
        model.check();
        let stats = model.arena.stats();
        prop_assert_eq!(stats.sessions_admitted(), 0);
        for pool in Pool::ALL {
            let snap = stats.pool(pool);
            prop_assert_eq!((snap.in_use, snap.reserved), (0, 0));
        }
        // A drained arena admits its full capacity again.
        let again: Vec<_> = (0..cfg.sessions).map(|_| model.arena.admit().unwrap()).collect();
        prop_assert_eq!(again.len(), cfg.sessions);
        prop_assert!(model.arena.admit().is_err());
    }
}

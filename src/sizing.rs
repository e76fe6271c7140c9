//! From a memory budget to a session cap: `budget ≥ base + per_session × sessions`.
//!
//! Every figure here is a ceiling, not an average: what a session *may* hold, counting the
//! kernel's socket buffers (cgroup v2 charges them to the container) as well as its arena share
//! and the protocol state that lives on the heap. The gateway admits only as many sessions as
//! these ceilings allow, so a budget that fits is a budget that holds.

use std::fmt;

use crate::config::{Pools, SocketBuffers};

/// Resident size of an idle process: code, static data, the allocator's arenas, the main and
/// signal threads. `bench` measured 4.95 MiB RSS idle with one executor and 5.29 MiB with two
/// (release build, this machine); the remainder covers libc and log-subscriber growth.
pub const PROCESS_BASE: u64 = 6 << 20;

/// Per executor: three io_uring rings of 128 entries, glommio's 64 KiB registered I/O buffer,
/// the reactor's tables, the thread stacks actually touched and the blocking pool threads.
/// Measured about 0.35 MiB by `bench`; a ceiling of 1 MiB leaves room for the rings' growth.
pub const PER_EXECUTOR: u64 = 1 << 20;

/// glommio's DMA buffer per executor. rdpwire does no file I/O, so the minimum is enough.
pub const EXECUTOR_IO_MEMORY: usize = 64 << 10;

/// Largest HTTP request head accepted; larger heads get 431.
pub const HTTP_HEAD_LIMIT: usize = 8 << 10;

/// tungstenite's read buffer per session.
pub const WS_READ_BUFFER: usize = 4 << 10;

/// Heap of one session besides the WebSocket buffers: task, state machine, queues of handles.
pub const SESSION_STATE: u64 = 16 << 10;

/// The RDP side of a session on the heap: ZGFX's history window, which the protocol fixes at
/// 2,500,000 bytes per graphics channel and which fills in steady state (`ironrdp-graphics`
/// `zgfx::HISTORY_SIZE`), plus TLS record buffers, the PDU framing buffer and IronRDP's
/// connection state (128 KiB together).
pub const RDP_STATE: u64 = 2_500_000 + (128 << 10);

/// Sound, on the heap: libopus' stereo encoder (`opus_encoder_get_size(2)` = 48,684 bytes)
/// and the 44.1 → 48 kHz FFT resampler's plan and buffers (17,026 bytes measured with a
/// counting allocator), created when the server starts a stream. Every audio *buffer* is in
/// the audio pool; this is codec state only.
pub const AUDIO_STATE: u64 = 68 << 10;

/// Linux doubles the requested SO_SNDBUF/SO_RCVBUF to account for its own bookkeeping.
pub const KERNEL_SOCKBUF_FACTOR: u64 = 2;

/// Bytes the arena spends per slot on bookkeeping outside the mapped region (the slab entry).
pub const SLOT_METADATA: u64 = 16;

/// Largest WebSocket frame the gateway writes; larger messages go out as fragments this size.
pub const WS_FRAGMENT: usize = 16 << 10;
/// Small messages gathered into one write to the browser.
pub const WS_WRITE_BATCH: usize = 8 << 10;

/// What tungstenite's write buffer may hold while the socket is full: a batch of small
/// messages, one more frame (a pool chunk or a fragment) and a frame header.
pub fn ws_write_reserve(pools: &Pools) -> u64 {
    (WS_WRITE_BATCH + pools.frame_chunk.slot_size.max(WS_FRAGMENT) + (1 << 10)) as u64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inputs {
    pub budget: u64,
    pub cores: usize,
    pub max_sessions: Option<usize>,
    pub pools: Pools,
    pub sockets: SocketBuffers,
    pub max_pending_http: usize,
    pub ws_max_message: usize,
    /// Sessions play sound (`audio.enabled`).
    pub audio: bool,
    /// Per core: the heap large graphics messages share (`Settings::large_frames`).
    pub large_frames: u64,
    /// The process's table of redeemed connection tokens (`TokenSettings::replay_bytes`).
    pub tokens: u64,
    /// A per-client-address limit is on, so the process keeps the table of client addresses
    /// (`limits::table_bytes`): a fixed part in the base, an entry per session.
    pub client_limits: bool,
}

/// The budget split into its parts, for the start-up log, `check-config` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizing {
    pub budget: u64,
    pub base: Base,
    pub per_session: PerSession,
    /// Sessions the budget admits, after `--max-sessions`.
    pub max_sessions: usize,
    /// What the budget alone would admit.
    pub budget_sessions: usize,
    /// Sessions per executor; sums to `max_sessions`.
    pub per_core: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base {
    pub process: u64,
    pub executors: u64,
    pub pending_http: u64,
    /// Per core, the heap shared by large graphics messages (key frames above 16 KiB).
    pub large_frames: u64,
    /// The table of redeemed connection tokens, one for the process; 0 without token keys.
    pub tokens: u64,
    /// The table of client addresses' entries for addresses without a session; 0 with the
    /// per-address limits off. Each session's entry is in its `state`.
    pub client_limits: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerSession {
    pub pools: u64,
    pub kernel_sockets: u64,
    pub websocket: u64,
    /// Heap state, including the arena's per-slot bookkeeping.
    pub state: u64,
    /// The RDP connection's protocol state (ZGFX history, TLS, framing).
    pub rdp: u64,
    /// Codec state for sound ([`AUDIO_STATE`]); 0 with audio off.
    pub audio: u64,
}

impl Base {
    pub fn total(&self) -> u64 {
        self.process
            + self.executors
            + self.pending_http
            + self.large_frames
            + self.tokens
            + self.client_limits
    }
}

impl PerSession {
    pub fn total(&self) -> u64 {
        self.pools + self.kernel_sockets + self.websocket + self.state + self.rdp + self.audio
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizingError {
    #[error(
        "memory budget of {budget} bytes does not fit one session: base {base} + one session {per_session} bytes; raise --memory-budget or shrink the pools"
    )]
    TooSmall {
        budget: u64,
        base: u64,
        per_session: u64,
    },
}

fn slots_per_session(p: &Pools) -> u64 {
    (p.frame_chunk.slots_per_session
        + p.surface_desc.slots_per_session
        + p.audio_buf.slots_per_session) as u64
}

pub fn compute(i: &Inputs) -> Result<Sizing, SizingError> {
    let cores = i.cores.max(1) as u64;
    let s = &i.sockets;
    let browser_kernel = KERNEL_SOCKBUF_FACTOR * (s.browser_sndbuf + s.browser_rcvbuf) as u64;
    let server_kernel = KERNEL_SOCKBUF_FACTOR * (s.server_sndbuf + s.server_rcvbuf) as u64;
    let pool_bytes = [i.pools.frame_chunk, i.pools.surface_desc, i.pools.audio_buf]
        .iter()
        .map(|p| (p.slot_size * p.slots_per_session) as u64)
        .sum();
    let per_session = PerSession {
        pools: pool_bytes,
        kernel_sockets: browser_kernel + server_kernel,
        websocket: (i.ws_max_message + WS_READ_BUFFER) as u64 + ws_write_reserve(&i.pools),
        state: SESSION_STATE
            + slots_per_session(&i.pools) * SLOT_METADATA
            + if i.client_limits {
                crate::limits::ENTRY_BYTES
            } else {
                0
            },
        rdp: RDP_STATE,
        audio: if i.audio { AUDIO_STATE } else { 0 },
    };
    let base = Base {
        process: PROCESS_BASE,
        executors: cores * PER_EXECUTOR,
        pending_http: cores * i.max_pending_http as u64 * (HTTP_HEAD_LIMIT as u64 + browser_kernel),
        large_frames: cores * i.large_frames,
        tokens: i.tokens,
        client_limits: if i.client_limits {
            crate::limits::table_bytes(0)
        } else {
            0
        },
    };
    let per = per_session.total();
    let budget_sessions =
        usize::try_from(i.budget.saturating_sub(base.total()) / per.max(1)).unwrap_or(usize::MAX);
    if budget_sessions == 0 {
        return Err(SizingError::TooSmall {
            budget: i.budget,
            base: base.total(),
            per_session: per,
        });
    }
    let max_sessions = i
        .max_sessions
        .map_or(budget_sessions, |m| m.min(budget_sessions));
    let n = i.cores.max(1);
    let per_core = (0..n)
        .map(|k| max_sessions / n + usize::from(k < max_sessions % n))
        .collect();
    Ok(Sizing {
        budget: i.budget,
        base,
        per_session,
        max_sessions,
        budget_sessions,
        per_core,
    })
}

/// Bytes in binary units for humans: `1.5 MiB`.
pub struct Human(pub u64);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut u = 0;
        while v >= 1024.0 && u + 1 < UNITS.len() {
            v /= 1024.0;
            u += 1;
        }
        if u == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[u])
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Layers;

    fn inputs(budget: u64, cores: usize) -> Inputs {
        let s = Layers::default().resolve().unwrap();
        Inputs {
            budget,
            cores,
            max_sessions: None,
            pools: s.pools,
            sockets: s.sockets,
            max_pending_http: s.max_pending_http,
            ws_max_message: s.ws_max_message,
            audio: s.audio.enabled,
            large_frames: s.large_frames() as u64,
            tokens: s.tokens.replay_bytes(),
            client_limits: s.client_limits(),
        }
    }

    #[test]
    fn exact_fit_admits_exactly_n() {
        let probe = compute(&inputs(1 << 30, 2)).unwrap();
        let base = probe.base.total();
        let per = probe.per_session.total();
        for n in [1u64, 2, 3, 7] {
            let s = compute(&inputs(base + n * per, 2)).unwrap();
            assert_eq!(s.max_sessions as u64, n);
            let s = compute(&inputs(base + n * per - 1, 2));
            match s {
                Ok(s) => assert_eq!(s.max_sessions as u64, n - 1),
                Err(SizingError::TooSmall { .. }) => assert_eq!(n, 1),
            }
        }
    }

    #[test]
    fn split_across_cores_sums_to_cap() {
        let mut i = inputs(1 << 30, 3);
        i.max_sessions = Some(10);
        let s = compute(&i).unwrap();
        assert_eq!(s.per_core, vec![4, 3, 3]);
        assert_eq!(s.max_sessions, 10);
        assert!(s.budget_sessions > 10);
    }

    #[test]
    fn kernel_buffers_are_counted_doubled() {
        let s = compute(&inputs(1 << 30, 1)).unwrap();
        let k = inputs(0, 1).sockets;
        assert_eq!(
            s.per_session.kernel_sockets,
            2 * (k.browser_sndbuf + k.browser_rcvbuf + k.server_sndbuf + k.server_rcvbuf) as u64
        );
    }

    #[test]
    fn too_small_budget_says_why() {
        let err = compute(&inputs(1 << 20, 2)).unwrap_err();
        assert!(err.to_string().contains("does not fit one session"));
    }

    #[test]
    fn human_units() {
        assert_eq!(Human(512).to_string(), "512 B");
        assert_eq!(Human(3 << 20).to_string(), "3.0 MiB");
    }
}

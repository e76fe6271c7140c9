//! Counters every core writes and any core reads: the only state shared between executors.
//!
//! Each core owns one cache-line-aligned block of atomics and is its only writer (relaxed
//! stores), so the hot path never contends; `/metrics` and `/readyz` on any core sum the
//! blocks. Nothing here takes a lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arena::{ArenaStats, Pool};

/// Directions of traffic through the gateway, as labelled in `rdpwire_bytes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Bytes received from browsers.
    BrowserIn,
    /// Bytes sent to browsers.
    BrowserOut,
    /// Bytes received from RDP servers.
    ServerIn,
    /// Bytes sent to RDP servers.
    ServerOut,
}

impl Direction {
    pub const ALL: [Direction; 4] = [
        Direction::BrowserIn,
        Direction::BrowserOut,
        Direction::ServerIn,
        Direction::ServerOut,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Direction::BrowserIn => "browser_in",
            Direction::BrowserOut => "browser_out",
            Direction::ServerIn => "server_in",
            Direction::ServerOut => "server_out",
        }
    }
}

/// One core's counters. Aligned so two cores never share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CoreCounters {
    pub sessions_active: AtomicU64,
    pub sessions_capacity: AtomicU64,
    pub sessions_total: AtomicU64,
    pub sessions_refused: AtomicU64,
    pub http_requests: AtomicU64,
    pub http_rejected: AtomicU64,
    pub ws_oversize_closes: AtomicU64,
    /// Sessions whose task panicked: ended with 1011, the executor and other sessions untouched.
    pub sessions_panicked: AtomicU64,
    /// Connection tasks that panicked outside a session's loop (HTTP, the upgrade).
    pub connections_panicked: AtomicU64,
    /// Upgrades answered 429 by the per-client-address limits: too many a second, too many
    /// sessions at once.
    pub client_upgrades_limited: AtomicU64,
    pub client_sessions_limited: AtomicU64,
    /// Waves from RDP servers.
    pub audio_from_server: AtomicU64,
    /// Opus packets written towards pages.
    pub audio_to_browser: AtomicU64,
    /// Packets dropped because a page did not take them in time.
    pub audio_dropped: AtomicU64,
    /// Times a session's picture had to wait because its page held all the frames it may.
    pub graphics_paused: AtomicU64,
    /// Times a large graphics message waited for room in its core's budget.
    pub large_frame_waits: AtomicU64,
    /// Connection tokens taken, and refused (any reason).
    pub tokens_redeemed: AtomicU64,
    pub tokens_refused: AtomicU64,
    /// Sessions whose target the target policy refused.
    pub targets_refused: AtomicU64,
    /// Sessions whose page went away, waiting for one to resume them (they still hold their
    /// share and slot).
    pub sessions_detached: AtomicU64,
    /// Sessions a new page took over with its resume ticket.
    pub sessions_resumed: AtomicU64,
    /// Resume attempts refused (ended session, wrong ticket, no ticket).
    pub resumes_refused: AtomicU64,
    /// Connections this core sent to the core owning the session they resume.
    pub handoffs: AtomicU64,
    bytes: [AtomicU64; 4],
}

impl CoreCounters {
    pub fn add_bytes(&self, dir: Direction, n: usize) {
        self.bytes[dir as usize].fetch_add(n as u64, Relaxed);
    }

    pub fn bytes(&self, dir: Direction) -> u64 {
        self.bytes[dir as usize].load(Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Relaxed);
    }
}

/// Process-wide view: one `CoreCounters` and one arena's stats per executor.
#[derive(Debug)]
pub struct Telemetry {
    cores: Vec<Core>,
    pub memory_budget: u64,
    pub base_bytes: u64,
    pub per_session_bytes: u64,
    draining: AtomicBool,
}

#[derive(Debug)]
struct Core {
    cpu: usize,
    counters: Arc<CoreCounters>,
    arena: std::sync::OnceLock<Arc<ArenaStats>>,
}

impl Telemetry {
    pub fn new(
        cpus: &[usize],
        memory_budget: u64,
        base_bytes: u64,
        per_session_bytes: u64,
    ) -> Self {
        Telemetry {
            cores: cpus
                .iter()
                .map(|&cpu| Core {
                    cpu,
                    counters: Arc::default(),
                    arena: std::sync::OnceLock::new(),
                })
                .collect(),
            memory_budget,
            base_bytes,
            per_session_bytes,
            draining: AtomicBool::new(false),
        }
    }

    pub fn executors(&self) -> usize {
        self.cores.len()
    }

    /// The counters of the executor at `index` (not the CPU number).
    pub fn core(&self, index: usize) -> Option<Arc<CoreCounters>> {
        self.cores.get(index).map(|c| c.counters.clone())
    }

    /// Called once by each executor after its arena is mapped.
    pub fn attach_arena(&self, index: usize, stats: Arc<ArenaStats>) {
        if let Some(core) = self.cores.get(index) {
            let _ = core.arena.set(stats);
        }
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    fn sum(&self, f: impl Fn(&CoreCounters) -> u64) -> u64 {
        self.cores.iter().map(|c| f(&c.counters)).sum()
    }

    pub fn sessions_active(&self) -> u64 {
        self.sum(|c| c.sessions_active.load(Relaxed))
    }

    pub fn sessions_capacity(&self) -> u64 {
        self.sum(|c| c.sessions_capacity.load(Relaxed))
    }

    /// Why this gateway should take no new sessions, if it should not.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.is_draining() {
            Some("draining: the gateway is shutting down")
        } else if self.sessions_active() >= self.sessions_capacity() {
            Some("full: every session slot of the memory budget is in use")
        } else {
            None
        }
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let one = |v: u64| vec![(String::new(), v)];
        metric(
            "rdpwire_executors",
            "gauge",
            "Executors (one per allowed core).",
            &one(self.executors() as u64),
        );
        metric(
            "rdpwire_memory_budget_bytes",
            "gauge",
            "Memory the gateway sizes itself to.",
            &one(self.memory_budget),
        );
        metric(
            "rdpwire_memory_base_bytes",
            "gauge",
            "Budgeted memory with no sessions.",
            &one(self.base_bytes),
        );
        metric(
            "rdpwire_memory_per_session_bytes",
            "gauge",
            "Budgeted memory per session, kernel socket buffers included.",
            &one(self.per_session_bytes),
        );
        metric(
            "rdpwire_draining",
            "gauge",
            "1 while the gateway drains after SIGTERM.",
            &one(u64::from(self.is_draining())),
        );
        let per_core = |f: &dyn Fn(&CoreCounters) -> u64| -> Vec<(String, u64)> {
            self.cores
                .iter()
                .map(|c| (format!("{{cpu=\"{}\"}}", c.cpu), f(&c.counters)))
                .collect()
        };
        metric(
            "rdpwire_sessions_active",
            "gauge",
            "Sessions running now.",
            &one(self.sessions_active()),
        );
        metric(
            "rdpwire_sessions_capacity",
            "gauge",
            "Sessions the memory budget admits.",
            &one(self.sessions_capacity()),
        );
        metric(
            "rdpwire_core_sessions_active",
            "gauge",
            "Sessions running now, per executor CPU.",
            &per_core(&|c| c.sessions_active.load(Relaxed)),
        );
        metric(
            "rdpwire_core_sessions_capacity",
            "gauge",
            "Sessions the executor's arena admits, per executor CPU.",
            &per_core(&|c| c.sessions_capacity.load(Relaxed)),
        );
        metric(
            "rdpwire_sessions_total",
            "counter",
            "Sessions admitted since start.",
            &one(self.sum(|c| c.sessions_total.load(Relaxed))),
        );
        metric(
            "rdpwire_sessions_refused_total",
            "counter",
            "WebSocket upgrades answered 503 (full or draining).",
            &one(self.sum(|c| c.sessions_refused.load(Relaxed))),
        );
        metric(
            "rdpwire_sessions_detached",
            "gauge",
            "Sessions whose page went away, kept for the grace period (they hold their memory share).",
            &one(self.sum(|c| c.sessions_detached.load(Relaxed))),
        );
        metric(
            "rdpwire_sessions_resumed_total",
            "counter",
            "Sessions a new page resumed with its ticket.",
            &one(self.sum(|c| c.sessions_resumed.load(Relaxed))),
        );
        metric(
            "rdpwire_resumes_refused_total",
            "counter",
            "Resume attempts refused: the session ended, or the ticket was wrong or missing.",
            &one(self.sum(|c| c.resumes_refused.load(Relaxed))),
        );
        metric(
            "rdpwire_resume_handoffs_total",
            "counter",
            "Resuming connections accepted by one core and handed to the core owning the session.",
            &one(self.sum(|c| c.handoffs.load(Relaxed))),
        );
        metric(
            "rdpwire_http_requests_total",
            "counter",
            "HTTP requests with a complete head.",
            &one(self.sum(|c| c.http_requests.load(Relaxed))),
        );
        metric(
            "rdpwire_http_rejected_total",
            "counter",
            "HTTP connections refused as slow, malformed or over the pending limit.",
            &one(self.sum(|c| c.http_rejected.load(Relaxed))),
        );
        metric(
            "rdpwire_ws_oversize_closes_total",
            "counter",
            "Sessions closed with 1009 for an oversize browser message.",
            &one(self.sum(|c| c.ws_oversize_closes.load(Relaxed))),
        );
        metric(
            "rdpwire_sessions_panicked_total",
            "counter",
            "Sessions ended with 1011 because their task panicked (a bug); other sessions ran on.",
            &one(self.sum(|c| c.sessions_panicked.load(Relaxed))),
        );
        metric(
            "rdpwire_connections_panicked_total",
            "counter",
            "Connection tasks that panicked outside a session (HTTP, the upgrade); the executor ran on.",
            &one(self.sum(|c| c.connections_panicked.load(Relaxed))),
        );
        metric(
            "rdpwire_client_limited_total",
            "counter",
            "WebSocket upgrades answered 429 by a per-client-address limit.",
            &[
                (
                    "{limit=\"upgrades_per_second\"}".to_owned(),
                    self.sum(|c| c.client_upgrades_limited.load(Relaxed)),
                ),
                (
                    "{limit=\"sessions\"}".to_owned(),
                    self.sum(|c| c.client_sessions_limited.load(Relaxed)),
                ),
            ],
        );
        metric(
            "rdpwire_connection_tokens_total",
            "counter",
            "Connection tokens presented by pages: redeemed, or refused (expired, used, not valid, ...).",
            &[
                (
                    "{result=\"redeemed\"}".to_owned(),
                    self.sum(|c| c.tokens_redeemed.load(Relaxed)),
                ),
                (
                    "{result=\"refused\"}".to_owned(),
                    self.sum(|c| c.tokens_refused.load(Relaxed)),
                ),
            ],
        );
        metric(
            "rdpwire_targets_refused_total",
            "counter",
            "Sessions closed because the target policy does not allow their target.",
            &one(self.sum(|c| c.targets_refused.load(Relaxed))),
        );
        metric(
            "rdpwire_audio_packets_total",
            "counter",
            "Audio packets: waves received from RDP servers, Opus packets written to pages.",
            &[
                (
                    "{direction=\"from_server\"}".to_owned(),
                    self.sum(|c| c.audio_from_server.load(Relaxed)),
                ),
                (
                    "{direction=\"to_browser\"}".to_owned(),
                    self.sum(|c| c.audio_to_browser.load(Relaxed)),
                ),
            ],
        );
        metric(
            "rdpwire_audio_dropped_total",
            "counter",
            "Audio packets dropped because a page did not read them in time (oldest first).",
            &one(self.sum(|c| c.audio_dropped.load(Relaxed))),
        );
        let bytes: Vec<(String, u64)> = Direction::ALL
            .iter()
            .map(|&d| {
                (
                    format!("{{direction=\"{}\"}}", d.label()),
                    self.sum(|c| c.bytes(d)),
                )
            })
            .collect();
        metric(
            "rdpwire_bytes_total",
            "counter",
            "Payload bytes through the gateway.",
            &bytes,
        );
        let core_bytes: Vec<(String, u64)> = self
            .cores
            .iter()
            .flat_map(|c| {
                Direction::ALL.iter().map(move |&d| {
                    (
                        format!("{{cpu=\"{}\",direction=\"{}\"}}", c.cpu, d.label()),
                        c.counters.bytes(d),
                    )
                })
            })
            .collect();
        metric(
            "rdpwire_core_bytes_total",
            "counter",
            "Payload bytes through the gateway, per executor CPU.",
            &core_bytes,
        );
        metric(
            "rdpwire_large_frame_waits_total",
            "counter",
            "Times a large graphics message waited for room in its core's budget (--large-frames); its server was not read meanwhile.",
            &one(self.sum(|c| c.large_frame_waits.load(Relaxed))),
        );
        metric(
            "rdpwire_graphics_paused_total",
            "counter",
            "Times a session's picture waited for its page (frame acknowledgement window full).",
            &one(self.sum(|c| c.graphics_paused.load(Relaxed))),
        );
        let mut slots = Vec::new();
        let mut refusals = Vec::new();
        for pool in Pool::ALL {
            let mut total = arena::PoolSnapshot::default();
            for core in &self.cores {
                if let Some(stats) = core.arena.get() {
                    let s = stats.pool(pool);
                    total.capacity += s.capacity;
                    total.reserved += s.reserved;
                    total.in_use += s.in_use;
                    total.high_water += s.high_water;
                    total.refusals += s.refusals;
                }
            }
            let name = pool.name();
            for (state, v) in [
                ("capacity", total.capacity),
                ("reserved", total.reserved),
                ("in_use", total.in_use),
                ("high_water", total.high_water),
            ] {
                slots.push((format!("{{pool=\"{name}\",state=\"{state}\"}}"), v as u64));
            }
            refusals.push((format!("{{pool=\"{name}\"}}"), total.refusals));
        }
        metric(
            "rdpwire_pool_slots",
            "gauge",
            "Arena pool slots by state, summed over cores (high_water: sum of per-core maxima).",
            &slots,
        );
        metric(
            "rdpwire_pool_refusals_total",
            "counter",
            "Allocations answered 'not now' because the session's share was used up.",
            &refusals,
        );
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sums_cores_and_reports_readiness() {
        let t = Telemetry::new(&[0, 1], 1 << 30, 10, 20);
        let c0 = t.core(0).unwrap();
        let c1 = t.core(1).unwrap();
        c0.sessions_capacity.store(2, Relaxed);
        c1.sessions_capacity.store(1, Relaxed);
        assert_eq!(t.not_ready_reason(), None);
        CoreCounters::inc(&c0.sessions_active);
        CoreCounters::inc(&c0.sessions_active);
        CoreCounters::inc(&c1.sessions_active);
        assert!(t.not_ready_reason().unwrap().starts_with("full"));
        CoreCounters::dec(&c1.sessions_active);
        t.start_draining();
        assert!(t.not_ready_reason().unwrap().starts_with("draining"));
        c1.add_bytes(Direction::BrowserOut, 7);
        let text = t.render_prometheus();
        assert!(text.contains("rdpwire_executors 2\n"), "{text}");
        assert!(text.contains("rdpwire_sessions_active 2\n"), "{text}");
        assert!(
            text.contains("rdpwire_core_sessions_active{cpu=\"1\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("rdpwire_bytes_total{direction=\"browser_out\"} 7\n"));
        assert!(text.contains("rdpwire_memory_budget_bytes 1073741824\n"));
    }
}

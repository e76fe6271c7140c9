//! The figures of a run, the targets they are checked against, and the outputs: a
//! Markdown table on stdout and a JSON file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::measure::{mib, Mem, Sample};
use crate::servers::ReelInfo;

const MIB: u64 = 1024 * 1024;
/// ZGFX's history window, the protocol's floor per session.
pub const ZGFX_HISTORY: u64 = 2_500_000;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub profile: String,
    pub sessions: usize,
    pub well_behaved: usize,
    pub hostile: usize,
    pub hostile_kind: Option<String>,
    pub storm_attempters: usize,
    pub window_s: f64,
    pub desktop: (u16, u16),
    pub reel: ReelInfo,
    pub hostile_reel: Option<ReelInfo>,
    pub gateway: GatewayInfo,
    pub memory: Memory,
    pub cpu: Cpu,
    pub idle: Option<Idle>,
    pub throughput: Throughput,
    pub latency: Option<Latency>,
    /// Where the harness's own CPU went in the window (threads alive at its end).
    pub harness: Harness,
    pub frame_rates: FrameRates,
    /// `rdpwire_core_sessions_active` at the end of the window, by executor CPU.
    pub sessions_per_core: Vec<(String, f64)>,
    pub stalls: Stalls,
    pub refusals: Refusals,
    pub drops: Drops,
    pub failures: Failures,
    pub gateway_log: GatewayLog,
    /// How the gateway process ended, if it ended before the harness stopped it.
    pub gateway_exit: Option<String>,
    pub checks: Vec<Check>,
    /// What the reader should know to read the figures (set by [`Report::evaluate`]).
    pub notes: Vec<String>,
    pub machine: Machine,
}

/// Session counts of the sizing table.
const SIZING_ROWS: [u64; 8] = [1, 10, 50, 100, 250, 500, 750, 1000];

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    /// `/proc/loadavg` (1 min) when the window opened and when it closed.
    pub load_start: f64,
    pub load_end: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GatewayInfo {
    pub executors: usize,
    pub base_bytes: u64,
    pub per_session_bytes: u64,
    pub budget_bytes: u64,
    pub max_sessions: u64,
    /// Whether the harness set the budget (hostile runs: base + per-session × sessions).
    pub budget_set_by_harness: bool,
    pub plan: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Sessions started so far.
    pub sessions: usize,
    /// Of those, sessions streaming (first frame seen, or connected for slow/dropping kinds).
    pub streaming: usize,
    pub mem: Mem,
    pub kernel_tcp: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub idle: Mem,
    pub idle_kernel_tcp: u64,
    pub steps: Vec<Step>,
    /// Every session open, at the end of the measured window.
    pub steady: Mem,
    pub steady_kernel_tcp: u64,
    /// Bytes each session had received from its server by the end of the window (what
    /// passed through its ZGFX history, at least).
    pub server_bytes_per_session: Option<u64>,
    /// After every session ended.
    pub after: Mem,
    pub after_kernel_tcp: u64,
    /// After each connect/disconnect cycle.
    pub cycles: Vec<Mem>,
    /// (steady PSS − idle PSS) / sessions.
    pub per_session_pss: Option<u64>,
    pub per_session_rss: Option<u64>,
    /// Kernel TCP memory (whole machine, both ends of every loopback connection) per session.
    pub per_session_kernel_tcp: Option<u64>,
    pub max_sampled_rss: u64,
    pub max_sampled_anon: u64,
    /// The gateway's largest resident mappings at the end of the run (after the cycles).
    pub largest_mappings: Vec<crate::measure::Mapping>,
    /// Largest RSS + machine TCP memory of one sample.
    pub max_sampled_total: u64,
    /// Every 100 ms, from the gateway's start to the end of the run.
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    pub window_ns: u64,
    /// Of one core, over the window.
    pub core_share: f64,
    pub per_session_share: f64,
    /// Frames the browsers received in the window.
    pub frames: u64,
    pub per_frame_us: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub window_s: f64,
    pub sessions: usize,
    pub cpu_ns: u64,
    pub core_share: f64,
    pub per_session_share: f64,
    /// Frames that still arrived in the idle window (should be none).
    pub frames: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub browser_out_bytes: u64,
    pub server_in_bytes: u64,
    pub mbit_s: f64,
    pub mbit_s_per_executor: f64,
    /// Forwarded Mbit/s per core of CPU the gateway used.
    pub mbit_s_per_cpu_core: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Harness {
    pub browsers_core_share: f64,
    pub servers_core_share: f64,
    pub other_core_share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// (percentile, µs) for the chart.
    pub spectrum: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Rates {
    pub sessions: usize,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// Largest deviation from the mean, as a share of the mean.
    pub spread: f64,
}

impl Rates {
    pub fn of(rates: &[f64]) -> Option<Rates> {
        if rates.is_empty() {
            return None;
        }
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates.iter().copied().fold(0.0, f64::max);
        let spread = if mean > 0.0 {
            (mean - min).max(max - mean) / mean
        } else {
            1.0
        };
        Some(Rates {
            sessions: rates.len(),
            mean,
            min,
            max,
            spread,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FrameRates {
    pub nominal_fps: u32,
    pub well: Option<Rates>,
    /// Hostile profiles: the well-behaved sessions before the hostile load arrived.
    pub baseline_well: Option<Rates>,
    /// The lowest ratio of a well-behaved session's rate under hostile load to its own
    /// baseline rate.
    pub kept_min_ratio: Option<f64>,
    pub hostile: Option<Rates>,
    pub per_session_well: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stalls {
    /// Frames the servers sent and the browsers received in the window.
    pub server_frames_sent: u64,
    pub browser_frames_received: u64,
    /// Gaps > 500 ms between frames of well-behaved sessions in the window: frames held
    /// back by flow control (the gateway has no series for it; this is what the pages saw).
    pub well_behaved: u64,
    pub well_sessions_with_stalls: usize,
    pub hostile: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Refusals {
    /// `rdpwire_sessions_refused_total` at the end of the run.
    pub sessions_refused_metric: u64,
    /// `rdpwire_http_rejected_total` at the end of the run.
    pub http_rejected_metric: u64,
    pub accepted: u64,
    /// 503 with a Retry-After, as the browsers saw them.
    pub clean_503: u64,
    /// Anything else: other statuses, resets, timeouts.
    pub other: u64,
    pub outcomes: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Drops {
    pub in_large_message: u64,
    pub in_smaller_message: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failures {
    /// Well-behaved sessions that ended before the harness stopped them.
    pub well_behaved: u64,
    pub hostile: u64,
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GatewayLog {
    pub warnings: u64,
    pub errors: u64,
    pub tail: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Pass,
    Miss,
    /// The run could not measure it (a miss for `--check`: the target is not shown).
    NotMeasured,
    /// Not a target of this profile or size.
    NotApplicable,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub target: String,
    pub measured: String,
    pub status: Status,
}

fn check(name: &str, target: &str, measured: String, pass: Option<bool>) -> Check {
    Check {
        name: name.to_owned(),
        target: target.to_owned(),
        measured,
        status: match pass {
            Some(true) => Status::Pass,
            Some(false) => Status::Miss,
            None => Status::NotMeasured,
        },
    }
}

fn not_applicable(name: &str, target: &str, why: &str) -> Check {
    Check {
        name: name.to_owned(),
        target: target.to_owned(),
        measured: why.to_owned(),
        status: Status::NotApplicable,
    }
}

impl Report {
    /// The targets, as far as this run's profile and size speak to them.
    pub fn evaluate(&mut self, hostile_profile: bool) {
        let mut c = Vec::new();
        let m = &self.memory;
        let steady = !hostile_profile;
        c.push(check(
            "base memory (idle PSS)",
            "≤ 8 MiB",
            format!("{:.2} MiB", mib(m.idle.pss)),
            Some(m.idle.pss <= 8 * MIB),
        ));
        if steady {
            let name = "memory per session (steady state, PSS)";
            let goal = "≤ 3 MiB (ZGFX history 2,500,000 B is the floor)";
            let streamed = m.server_bytes_per_session.unwrap_or(0);
            match m.per_session_pss {
                Some(b) if streamed >= ZGFX_HISTORY => c.push(check(
                    name,
                    goal,
                    format!(
                        "{:.2} MiB ({} B; {:+} B against the ZGFX floor)",
                        mib(b),
                        b,
                        b as i64 - ZGFX_HISTORY as i64
                    ),
                    Some(b <= 3 * MIB),
                )),
                Some(b) => c.push(check(
                    name,
                    goal,
                    format!(
                        "{:.2} MiB, but steady state not reached: {} B per session from the servers so far, the history is full only after 2,500,000 B",
                        mib(b),
                        streamed
                    ),
                    None,
                )),
                None => c.push(check(name, goal, "no session".to_owned(), None)),
            }
        } else {
            c.push(not_applicable(
                "memory per session (steady state, PSS)",
                "≤ 3 MiB",
                "hostile mix: see the office profile",
            ));
        }
        let back = m.after.pss.abs_diff(m.idle.pss);
        c.push(check(
            "back to base after all sessions end",
            "± 1 MiB",
            format!(
                "{:+.2} MiB",
                (m.after.pss as f64 - m.idle.pss as f64) / MIB as f64
            ),
            Some(back <= MIB),
        ));
        if m.cycles.is_empty() {
            c.push(not_applicable(
                "no creep over connect/disconnect cycles",
                "each cycle back to base ± 1 MiB",
                "no cycles in this run",
            ));
        } else {
            let worst = m
                .cycles
                .iter()
                .map(|x| x.pss as i64 - m.idle.pss as i64)
                .max_by_key(|d| d.unsigned_abs())
                .unwrap_or(0);
            let last = m
                .cycles
                .last()
                .map_or(0, |x| x.pss as i64 - m.idle.pss as i64);
            c.push(check(
                "no creep over connect/disconnect cycles",
                "each cycle back to base ± 1 MiB",
                format!(
                    "{} cycles, worst {:+.2} MiB, last {:+.2} MiB",
                    m.cycles.len(),
                    worst as f64 / MIB as f64,
                    last as f64 / MIB as f64
                ),
                Some(worst.unsigned_abs() <= MIB),
            ));
        }
        if steady {
            match &self.latency {
                Some(l) => c.push(check(
                    "frame residence p99 (server send → browser receive)",
                    "< 5 ms",
                    format!(
                        "{:.0} µs (p50 {:.0} µs, max {:.0} µs)",
                        l.p99_us, l.p50_us, l.max_us
                    ),
                    Some(l.p99_us < 5000.0),
                )),
                None => c.push(check(
                    "frame residence p99 (server send → browser receive)",
                    "< 5 ms",
                    if self.reel.stamped {
                        "no stamped frame received".to_owned()
                    } else {
                        "not measured: the servers' access units carry no send stamp".to_owned()
                    },
                    None,
                )),
            }
        } else {
            c.push(not_applicable(
                "frame residence p99 (server send → browser receive)",
                "< 5 ms",
                "a target of the office profile; the figure is in the table",
            ));
        }
        let well = self.frame_rates.well.clone();
        c.push(check(
            "no session starved (well-behaved frame rates)",
            "every session within 10 % of the mean",
            well.as_ref()
                .map_or("no well-behaved session".to_owned(), |r| {
                    format!(
                        "{} sessions, mean {:.2} fps, min {:.2}, max {:.2}, spread {:.1} %",
                        r.sessions,
                        r.mean,
                        r.min,
                        r.max,
                        r.spread * 100.0
                    )
                }),
            well.as_ref().map(|r| r.spread <= 0.10),
        ));
        if steady {
            if self.well_behaved >= 500 {
                c.push(check(
                    "≥ 500 concurrent sessions",
                    "all streaming",
                    format!(
                        "{} of {}",
                        self.memory.steps.last().map_or(0, |s| s.streaming),
                        self.well_behaved
                    ),
                    Some(self.memory.steps.last().map_or(0, |s| s.streaming) >= 500),
                ));
            } else {
                c.push(not_applicable(
                    "≥ 500 concurrent sessions",
                    "all streaming",
                    "run with --sessions 500 or more",
                ));
            }
        }
        if steady {
            c.push(check(
                "gateway CPU per forwarded frame",
                "≤ 100 µs",
                self.cpu
                    .per_frame_us
                    .map_or("no frame forwarded".to_owned(), |us| format!("{us:.1} µs")),
                self.cpu.per_frame_us.map(|us| us <= 100.0),
            ));
        } else {
            c.push(not_applicable(
                "gateway CPU per forwarded frame",
                "≤ 100 µs",
                "a target of the office profile; the figure is in the table",
            ));
        }
        if steady {
            match &self.idle {
                Some(i) => c.push(check(
                    "idle session CPU",
                    "≤ 0.01 % of a core each",
                    format!(
                        "{:.4} % per session ({} sessions, {:.3} % of a core in all, {} frames in the window)",
                        i.per_session_share * 100.0,
                        i.sessions,
                        i.core_share * 100.0,
                        i.frames
                    ),
                    Some(i.per_session_share <= 0.0001),
                )),
                None => c.push(not_applicable(
                    "idle session CPU",
                    "≤ 0.01 % of a core each",
                    "no idle window (--idle 0s)",
                )),
            }
        } else {
            let budget = self.gateway.budget_bytes;
            c.push(check(
                "memory never above the budget (sampled every 100 ms)",
                "RSS + kernel TCP memory ≤ budget",
                format!(
                    "max {:.2} MiB of {:.2} MiB (RSS + the whole machine's TCP memory, an upper bound of the gateway's socket buffers; {} samples)",
                    mib(self.memory.max_sampled_total),
                    mib(budget),
                    self.memory.samples.len()
                ),
                Some(self.memory.max_sampled_total <= budget),
            ));
            c.push(check(
                "gateway never killed",
                "still running at the end",
                self.gateway_exit
                    .clone()
                    .map_or("running".to_owned(), |e| format!("exited: {e}")),
                Some(self.gateway_exit.is_none()),
            ));
            let r = &self.refusals;
            c.push(check(
                "refusals are clean 503s",
                "no other answer or failure",
                format!("{} clean 503, {} other", r.clean_503, r.other),
                Some(r.other == 0),
            ));
            let fr = &self.frame_rates;
            c.push(check(
                "well-behaved sessions keep their frame rate",
                "every one ≥ 90 % of its own rate before the hostile load",
                match (&fr.baseline_well, &well, fr.kept_min_ratio) {
                    (Some(b), Some(w), Some(k)) => format!(
                        "mean {:.2} fps before, {:.2} fps during (servers: {} fps); worst session kept {:.1} %",
                        b.mean,
                        w.mean,
                        fr.nominal_fps,
                        k * 100.0
                    ),
                    _ => "no well-behaved session streamed through both windows".to_owned(),
                },
                fr.kept_min_ratio.map(|k| k >= 0.9),
            ));
        }
        self.checks = c;

        let mut notes = Vec::new();
        if !self.reel.stamped {
            notes.push(format!(
                "The servers are a stand-in ({}): residence times cannot be measured and the frame sizes are not a real profile's.",
                self.reel.source
            ));
        }
        let cpus = self.machine.cpus as f64;
        let servers = self.harness.servers_core_share;
        if servers > 0.4 * cpus {
            notes.push(format!(
                "The synthetic servers used {:.0} % of a core of this machine's {} — frame rates are bounded by them, not by the gateway.",
                servers * 100.0,
                self.machine.cpus
            ));
        }
        let load = self.machine.load_start.max(self.machine.load_end);
        if load > cpus * 1.5 {
            notes.push(format!(
                "The machine was busy: load average {:.1} on {} CPUs during the window (other processes compete with the gateway and the harness).",
                load, self.machine.cpus
            ));
        }
        self.notes = notes;
    }

    pub fn misses(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| matches!(c.status, Status::Miss | Status::NotMeasured))
            .collect()
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let g = &self.gateway;
        let _ = writeln!(
            s,
            "## rdpwire bench: `{}`, {} sessions ({} well-behaved, {} hostile{}), {:.0} s window\n",
            self.profile,
            self.sessions,
            self.well_behaved,
            self.hostile,
            if self.storm_attempters > 0 {
                format!(", {} storm attempters", self.storm_attempters)
            } else {
                String::new()
            },
            self.window_s
        );
        let _ = writeln!(
            s,
            "Servers: {} ({}×{}, {} fps). Gateway: {} executor(s), budget {:.1} MiB{}, capacity {} sessions, plan base {:.2} MiB + {:.2} MiB per session.\n",
            self.reel.source,
            self.desktop.0,
            self.desktop.1,
            self.reel.fps,
            g.executors,
            mib(g.budget_bytes),
            if g.budget_set_by_harness { " (set by the harness)" } else { "" },
            g.max_sessions,
            mib(g.base_bytes),
            mib(g.per_session_bytes)
        );
        let m = &self.memory;
        let _ = writeln!(s, "| sessions | streaming | PSS MiB | RSS MiB | PSS per session KiB | kernel TCP MiB (machine) |");
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            s,
            "| 0 | 0 | {:.2} | {:.2} | – | {:.2} |",
            mib(m.idle.pss),
            mib(m.idle.rss),
            mib(m.idle_kernel_tcp)
        );
        for st in &m.steps {
            let per = st.mem.pss.saturating_sub(m.idle.pss) / st.sessions.max(1) as u64;
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {:.2} | {:.1} | {:.2} |",
                st.sessions,
                st.streaming,
                mib(st.mem.pss),
                mib(st.mem.rss),
                per as f64 / 1024.0,
                mib(st.kernel_tcp)
            );
        }
        let _ = writeln!(
            s,
            "| {} (end of window) | {} | {:.2} | {:.2} | {:.1} | {:.2} |",
            self.well_behaved + self.hostile,
            m.steps.last().map_or(0, |x| x.streaming),
            mib(m.steady.pss),
            mib(m.steady.rss),
            m.per_session_pss.unwrap_or(0) as f64 / 1024.0,
            mib(m.steady_kernel_tcp)
        );
        let _ = writeln!(
            s,
            "| after | 0 | {:.2} | {:.2} | – | {:.2} |",
            mib(m.after.pss),
            mib(m.after.rss),
            mib(m.after_kernel_tcp)
        );
        for (i, cy) in m.cycles.iter().enumerate() {
            let _ = writeln!(
                s,
                "| cycle {} | 0 | {:.2} | {:.2} | – | – |",
                i + 1,
                mib(cy.pss),
                mib(cy.rss)
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "| figure | measured |");
        let _ = writeln!(s, "|---|---:|");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "| {k} | {v} |");
        };
        row(
            "gateway CPU in the window",
            format!(
                "{:.1} % of a core, {:.3} % per session",
                self.cpu.core_share * 100.0,
                self.cpu.per_session_share * 100.0
            ),
        );
        row(
            "frames in the window: sent by servers / received by browsers",
            format!(
                "{} / {}",
                self.stalls.server_frames_sent, self.stalls.browser_frames_received
            ),
        );
        if !self.sessions_per_core.is_empty() {
            row(
                "sessions per executor",
                self.sessions_per_core
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        row(
            "CPU per forwarded frame",
            self.cpu
                .per_frame_us
                .map_or("–".to_owned(), |v| format!("{v:.1} µs")),
        );
        if let Some(i) = &self.idle {
            row(
                "idle CPU (streams paused, pages pinging)",
                format!(
                    "{:.3} % of a core, {:.4} % per session, {} frames",
                    i.core_share * 100.0,
                    i.per_session_share * 100.0,
                    i.frames
                ),
            );
        }
        let t = &self.throughput;
        row(
            "forwarded to browsers",
            format!(
                "{:.2} Mbit/s, {:.2} per executor, {}",
                t.mbit_s,
                t.mbit_s_per_executor,
                t.mbit_s_per_cpu_core
                    .map_or("–".to_owned(), |v| format!("{v:.1} per core of CPU used"))
            ),
        );
        row(
            "frame residence p50 / p99 / max",
            self.latency
                .as_ref()
                .map_or("not measured".to_owned(), |l| {
                    format!(
                        "{:.0} / {:.0} / {:.0} µs ({} frames)",
                        l.p50_us, l.p99_us, l.max_us, l.count
                    )
                }),
        );
        let fr = &self.frame_rates;
        let rates = |r: &Option<Rates>| {
            r.as_ref().map_or("–".to_owned(), |r| {
                format!(
                    "mean {:.2}, min {:.2}, max {:.2} fps, spread {:.1} % ({} sessions)",
                    r.mean,
                    r.min,
                    r.max,
                    r.spread * 100.0,
                    r.sessions
                )
            })
        };
        row(
            &format!("frame rate, well-behaved (servers: {} fps)", fr.nominal_fps),
            rates(&fr.well),
        );
        if fr.baseline_well.is_some() {
            row(
                "frame rate, well-behaved before the hostile load",
                rates(&fr.baseline_well),
            );
        }
        if fr.hostile.is_some() {
            row("frame rate, hostile", rates(&fr.hostile));
        }
        row(
            "stalls > 500 ms seen by pages (well-behaved / hostile)",
            format!(
                "{} in {} sessions / {}",
                self.stalls.well_behaved,
                self.stalls.well_sessions_with_stalls,
                self.stalls.hostile
            ),
        );
        let r = &self.refusals;
        row(
            "upgrades: accepted / clean 503 / other",
            format!("{} / {} / {}", r.accepted, r.clean_503, r.other),
        );
        row(
            "gateway counters: sessions refused / http rejected",
            format!("{} / {}", r.sessions_refused_metric, r.http_rejected_metric),
        );
        if self.drops.in_large_message + self.drops.in_smaller_message > 0 {
            row(
                "vanished mid-message: large / smaller",
                format!(
                    "{} / {}",
                    self.drops.in_large_message, self.drops.in_smaller_message
                ),
            );
        }
        row(
            "sessions that failed: well-behaved / hostile",
            format!("{} / {}", self.failures.well_behaved, self.failures.hostile),
        );
        row(
            "memory sampled every 100 ms: max anonymous / RSS",
            format!(
                "{:.2} / {:.2} MiB (budget {:.2} MiB)",
                mib(m.max_sampled_anon),
                mib(m.max_sampled_rss),
                mib(g.budget_bytes)
            ),
        );
        row(
            "gateway log: warnings / errors",
            format!(
                "{} / {}",
                self.gateway_log.warnings, self.gateway_log.errors
            ),
        );
        row(
            "harness CPU: browsers / servers / rest",
            format!(
                "{:.1} / {:.1} / {:.1} % of a core",
                self.harness.browsers_core_share * 100.0,
                self.harness.servers_core_share * 100.0,
                self.harness.other_core_share * 100.0
            ),
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "| target | goal | measured | result |");
        let _ = writeln!(s, "|---|---|---|---|");
        for c in &self.checks {
            let status = match c.status {
                Status::Pass => "pass",
                Status::Miss => "**MISS**",
                Status::NotMeasured => "**not measured**",
                Status::NotApplicable => "n/a",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                c.name, c.target, c.measured, status
            );
        }
        if let Some(per) = m.per_session_pss.filter(|_| self.hostile == 0) {
            let _ = writeln!(
                s,
                "\nSizing from this run: measured memory = idle PSS {:.2} MiB + {:.2} MiB per session; the gateway budgets {:.2} MiB + {:.2} MiB per session (ceilings).\n",
                mib(m.idle.pss),
                mib(per),
                mib(g.base_bytes),
                mib(g.per_session_bytes)
            );
            let _ = writeln!(s, "| sessions | measured formula MiB | budgeted MiB |");
            let _ = writeln!(s, "|---:|---:|---:|");
            for n in SIZING_ROWS {
                let _ = writeln!(
                    s,
                    "| {n} | {:.0} | {:.0} |",
                    mib(m.idle.pss + per * n),
                    mib(g.base_bytes + g.per_session_bytes * n)
                );
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\nNotes:");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        if !self.failures.examples.is_empty() {
            let _ = writeln!(s, "\nFailures (examples):");
            for e in &self.failures.examples {
                let _ = writeln!(s, "- {e}");
            }
        }
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_largest_deviation_from_the_mean() {
        let r = Rates::of(&[25.0, 24.0, 26.0, 25.0]).unwrap();
        assert!((r.mean - 25.0).abs() < 1e-9);
        assert!((r.spread - 0.04).abs() < 1e-9);
        assert!(Rates::of(&[]).is_none());
        assert!((Rates::of(&[0.0, 0.0]).unwrap().spread - 1.0).abs() < 1e-9);
    }
}

//! One load run: servers, gateway, browsers in steps, the measured window, the idle window,
//! the end of every session, connect/disconnect cycles; then the report.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{Profile, RunArgs};
use crate::browsers::{Env, Fleet, Kind};
use crate::gateway::{self, Gateway, Metrics};
use crate::measure::{self, mib, Mem, Sampler};
use crate::profiles::{Mix, MAIN_GROUP};
use crate::report::{self, Report};
use crate::servers::{self, Servers};

/// Browsers that may wait for their first frame at once while ramping up.
const MAX_PENDING: usize = 8;
/// How long the sessions of one step may take to start streaming.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A progress bar on a terminal, plain lines otherwise.
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new() -> Progress {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:>8} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar }
    }

    fn phase(&self, name: &str, len: u64, what: &str) {
        self.bar.set_prefix(name.to_owned());
        self.bar.set_length(len);
        self.bar.set_position(0);
        self.bar.set_message(what.to_owned());
        if self.bar.is_hidden() {
            eprintln!("bench: {name}: {what}");
        }
    }

    fn say(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("bench: {line}");
        } else {
            self.bar.println(line);
        }
    }
}

/// Ends the process if the run overruns its bound (every run stops by itself).
fn watchdog(bound: Duration, pid: u32, done: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if done.load(Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "bench: the run overran its bound of {} s; stopping the gateway and exiting",
            bound.as_secs()
        );
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
        std::process::exit(3);
    });
}

struct Window {
    at: Instant,
    harness: measure::HarnessCpu,
    frames: Vec<u64>,
    cpu: measure::Cpu,
    metrics: Metrics,
}

fn snapshot(gw: &Gateway, fleet: &Fleet) -> Window {
    Window {
        at: Instant::now(),
        harness: measure::harness_cpu(),
        frames: fleet.frames(),
        cpu: measure::cpu(gw.pid()),
        metrics: gw.metrics().unwrap_or_default(),
    }
}

/// Waits for the sessions started so far, then measures the gateway's memory.
fn measure_step(progress: &Progress, fleet: &Fleet, pid: u32) -> Result<report::Step> {
    if !fleet.wait_settled(SETTLE_TIMEOUT) {
        progress.say("some sessions did not start streaming in time".to_owned());
    }
    std::thread::sleep(Duration::from_secs(1));
    let sessions = fleet
        .browsers
        .iter()
        .filter(|b| b.kind != Kind::Storm)
        .count();
    let streaming = fleet
        .browsers
        .iter()
        .filter(|b| b.stats.streaming.load(Relaxed) && !b.stats.ended.load(Relaxed))
        .count();
    let mem = measure::memory(pid)?;
    progress.say(format!(
        "{sessions} sessions ({streaming} streaming): PSS {:.2} MiB, RSS {:.2} MiB",
        mib(mem.pss),
        mib(mem.rss)
    ));
    Ok(report::Step {
        sessions,
        streaming,
        mem,
        kernel_tcp: measure::tcp_memory(),
    })
}

/// Sleeps `d` while the bar counts seconds; fails early if the gateway died.
fn wait(progress: &Progress, gw: &mut Gateway, d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::thread::sleep(
            end.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250)),
        );
        progress.bar.set_position(
            d.saturating_sub(end.saturating_duration_since(Instant::now()))
                .as_secs(),
        );
        if let Some(status) = gw.exited() {
            bail!("the gateway exited during the run: {status}");
        }
    }
    Ok(())
}

pub fn run(args: &RunArgs, profile: Profile) -> Result<Report> {
    let mix = Mix::new(profile, args.sessions, args.hostile_share);
    let cycle_sessions = if mix.idle_and_cycles && args.cycles > 0 {
        args.cycle_sessions.unwrap_or(args.sessions.min(50))
    } else {
        0
    };
    let progress = Progress::new();
    progress.phase("servers", 0, "starting the synthetic RDP servers");
    let servers = Servers::start(&mix.groups(cycle_sessions))?;
    let reel = servers
        .group(MAIN_GROUP)
        .context("no main server group")?
        .info
        .clone();
    let hostile_reel = (mix.hostile > 0 && mix.hostile_reel != mix.well_reel)
        .then(|| servers.group(mix.hostile_group()).map(|g| g.info.clone()))
        .flatten();
    let desktop = args.desktop_size()?.unwrap_or((reel.width, reel.height));

    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let stem = format!("{}-{}", profile.name(), args.sessions);
    let config = args.out_dir.join(format!("{stem}.toml"));
    std::fs::write(&config, servers.config_toml())?;
    let mut settings = gateway::Settings {
        bin: crate::args::gateway_bin(args.gateway.as_ref())?,
        config: Some(config),
        cores: args.cores,
        memory_budget: args.memory_budget.clone(),
        env: vec![(
            servers::PASSWORD_ENV.to_owned(),
            servers::PASSWORD.to_owned(),
        )],
    };
    let mut budget_set_by_harness = false;
    if settings.memory_budget.is_none() {
        // Hostile profiles: room for the run's sessions and no more. Well-behaved profiles:
        // the gateway's default budget, raised only when it would not admit the run's
        // sessions. Either way with headroom for the kernel's uneven spread of connections
        // over the executors (SO_REUSEPORT hashes; each core admits only its share).
        let p = settings.plan()?;
        let n = args.sessions as f64;
        let capacity = (n + 3.0 * n.sqrt()).ceil() as u64 + 2 * p.executors as u64;
        if mix.tight_budget || p.max_sessions < capacity {
            let budget = p.base_bytes + p.per_session_bytes * capacity;
            settings.memory_budget = Some(budget.to_string());
            budget_set_by_harness = true;
        }
    }
    let plan = settings.plan()?;
    if (plan.max_sessions as usize) < mix.well + mix.hostile {
        progress.say(format!(
            "note: the gateway admits {} sessions, the run opens {}: the rest are refused",
            plan.max_sessions,
            mix.well + mix.hostile
        ));
    }
    let storm_attempters = if mix.storm {
        2 * plan.max_sessions as usize
    } else {
        0
    };

    progress.phase("gateway", 0, "starting rdpwire");
    let mut gw = settings.start()?;
    let pid = gw.pid();
    let done = Arc::new(AtomicBool::new(false));
    let bound = args.duration
        + args.idle
        + Duration::from_secs(
            180 + 2 * (args.sessions as u64)
                + args.cycles as u64 * (10 + cycle_sessions as u64 / 5),
        );
    watchdog(bound, pid, Arc::clone(&done));
    std::thread::sleep(Duration::from_millis(500));
    let epoch = Instant::now();
    let idle_mem = measure::memory(pid)?;
    let idle_tcp = measure::tcp_memory();
    let sampler = Sampler::start(pid, Duration::from_millis(100), epoch);

    // Ramp up the well-behaved sessions in steps.
    let env = Env::new(gw.addr.clone(), desktop, args.slow_rate, args.large_message)?;
    let mut fleet = Fleet::new(env)?;
    let total = mix.well + mix.hostile;
    let step = args.step.unwrap_or((mix.well / 4).max(1)).max(1);
    let main = servers.group(MAIN_GROUP).context("no main server group")?;
    let hostile_group = servers
        .group(mix.hostile_group())
        .context("no hostile server group")?;
    progress.phase("ramp", mix.well as u64, "opening well-behaved sessions");
    let mut steps = Vec::new();
    for i in 0..mix.well {
        fleet.spawn(Kind::Page, true, main.target_for(), MAX_PENDING)?;
        progress.bar.set_position(i as u64 + 1);
        if (i + 1) % step == 0 || i + 1 == mix.well {
            steps.push(measure_step(&progress, &fleet, pid)?);
        }
        if let Some(status) = gw.exited() {
            bail!("the gateway exited while sessions were opening: {status}");
        }
    }

    // Hostile profiles: the well-behaved sessions' own frame rates before the hostile load
    // arrives, then the hostile sessions (or the storm).
    let mut baseline = None;
    if mix.hostile > 0 || mix.storm {
        let d = (args.duration / 3).max(Duration::from_secs(5));
        progress.phase(
            "baseline",
            d.as_secs(),
            "well-behaved only, measuring their rates",
        );
        std::thread::sleep(Duration::from_millis(500));
        let b0 = snapshot(&gw, &fleet);
        wait(&progress, &mut gw, d)?;
        let b1 = snapshot(&gw, &fleet);
        baseline = Some((b0, b1));
    }
    if mix.hostile > 0 {
        progress.phase(
            "hostile",
            mix.hostile as u64,
            &format!("opening {:?} sessions", mix.hostile_kind),
        );
        for i in 0..mix.hostile {
            fleet.spawn(
                mix.hostile_kind,
                false,
                hostile_group.target_for(),
                MAX_PENDING,
            )?;
            progress.bar.set_position(i as u64 + 1);
        }
        steps.push(measure_step(&progress, &fleet, pid)?);
    }
    if storm_attempters > 0 {
        progress.say(format!(
            "storm: {storm_attempters} browsers attempting upgrades"
        ));
        for _ in 0..storm_attempters {
            fleet.spawn(Kind::Storm, false, String::new(), usize::MAX)?;
        }
        std::thread::sleep(Duration::from_secs(1));
    }

    // The measured window.
    progress.phase("window", args.duration.as_secs(), "steady state, measuring");
    std::thread::sleep(Duration::from_millis(500));
    fleet.ctl.recording.store(true, Relaxed);
    let w0 = snapshot(&gw, &fleet);
    let load_start = measure::load_average();
    let server_frames0 = servers.frames_sent();
    wait(&progress, &mut gw, args.duration)?;
    let w1 = snapshot(&gw, &fleet);
    let load_end = measure::load_average();
    fleet.ctl.recording.store(false, Relaxed);
    let window = w1.at - w0.at;
    let server_frames = servers.frames_sent();
    let steady = measure::memory(pid)?;
    let steady_tcp = measure::tcp_memory();
    let sessions_per_core = w1.metrics.series("rdpwire_core_sessions_active");

    // Idle: pages stop acknowledging, every stream pauses (EGFX flow control), pages still
    // ping every 2 s; the gateway should then cost nothing.
    let mut idle = None;
    if mix.idle_and_cycles && !args.idle.is_zero() {
        progress.phase(
            "idle",
            args.idle.as_secs(),
            "streams paused, measuring idle CPU",
        );
        fleet.ctl.acking.store(false, Relaxed);
        std::thread::sleep(Duration::from_secs(2));
        let i0 = snapshot(&gw, &fleet);
        wait(&progress, &mut gw, args.idle)?;
        let i1 = snapshot(&gw, &fleet);
        let secs = (i1.at - i0.at).as_secs_f64();
        let cpu_ns = i1.cpu.since(&i0.cpu);
        let sessions = fleet
            .browsers
            .iter()
            .filter(|b| b.stats.streaming.load(Relaxed) && !b.stats.ended.load(Relaxed))
            .count();
        let share = cpu_ns as f64 / 1e9 / secs;
        idle = Some(report::Idle {
            window_s: secs,
            sessions,
            cpu_ns,
            core_share: share,
            per_session_share: share / sessions.max(1) as f64,
            frames: i1.frames.iter().sum::<u64>() - i0.frames.iter().sum::<u64>(),
        });
    }

    // Every session ends.
    progress.phase("end", 0, "closing every session");
    fleet.stop();
    if !gw.wait_sessions(0, Duration::from_secs(15)) {
        progress.say(
            "the gateway still counts active sessions 15 s after every browser left".to_owned(),
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = measure::memory(pid)?;
    let after_tcp = measure::tcp_memory();

    // Connect/disconnect cycles.
    let mut cycles: Vec<Mem> = Vec::new();
    if cycle_sessions > 0 {
        progress.phase("cycles", args.cycles as u64, "connect/disconnect cycles");
        for c in 0..args.cycles {
            let env = Env::new(gw.addr.clone(), desktop, args.slow_rate, args.large_message)?;
            let mut f = Fleet::new(env)?;
            for _ in 0..cycle_sessions {
                f.spawn(Kind::Page, true, main.target_for(), MAX_PENDING)?;
            }
            f.wait_settled(SETTLE_TIMEOUT);
            std::thread::sleep(Duration::from_secs(1));
            f.stop();
            gw.wait_sessions(0, Duration::from_secs(15));
            std::thread::sleep(Duration::from_millis(500));
            cycles.push(measure::memory(pid)?);
            progress.bar.set_position(c as u64 + 1);
        }
    }
    let largest_mappings = measure::largest_mappings(pid, 8);
    let samples = sampler.finish();
    let end_metrics = gw.metrics().unwrap_or_default();
    let gateway_exit = gw.exited();
    done.store(true, Relaxed);
    progress.bar.finish_and_clear();

    // Figures.
    let r_fps = main.info.fps;
    let secs = window.as_secs_f64().max(1e-9);
    // Sessions that were streaming when the window opened (a refused session has no rate;
    // it is counted among the failures).
    let rates: Vec<(bool, f64)> = fleet
        .browsers
        .iter()
        .zip(w0.frames.iter().zip(&w1.frames))
        .filter(|(b, (a, _))| b.kind != Kind::Storm && **a > 0)
        .map(|(b, (a, z))| (b.well_behaved, (z - a) as f64 / secs))
        .collect();
    let well_rates: Vec<f64> = rates.iter().filter(|r| r.0).map(|r| r.1).collect();
    // Each well-behaved session's rate under the hostile load against its own baseline.
    let (baseline_well, kept) = match &baseline {
        Some((b0, b1)) => {
            let bsecs = (b1.at - b0.at).as_secs_f64().max(1e-9);
            let mut base = Vec::new();
            let mut ratios = Vec::new();
            for (i, b) in fleet.browsers.iter().enumerate() {
                let (Some(x0), Some(x1)) = (b0.frames.get(i), b1.frames.get(i)) else {
                    continue;
                };
                if !b.well_behaved || *x0 == 0 {
                    continue;
                }
                let before = (x1 - x0) as f64 / bsecs;
                base.push(before);
                let now = (w1.frames[i] - w0.frames[i]) as f64 / secs;
                if before > 0.0 {
                    ratios.push(now / before);
                }
            }
            (
                report::Rates::of(&base),
                ratios.iter().copied().reduce(f64::min),
            )
        }
        None => (None, None),
    };
    let hostile_rates: Vec<f64> = rates.iter().filter(|r| !r.0).map(|r| r.1).collect();
    let frames: u64 = w1.frames.iter().sum::<u64>() - w0.frames.iter().sum::<u64>();
    let cpu_ns = w1.cpu.since(&w0.cpu);
    let core_share = cpu_ns as f64 / 1e9 / secs;
    let in_window = total.max(1);
    let bytes = |m: &Metrics, d: &str| m.get(&format!("rdpwire_bytes_total{{direction=\"{d}\"}}"));
    let out_bytes =
        (bytes(&w1.metrics, "browser_out") - bytes(&w0.metrics, "browser_out")).max(0.0);
    let in_bytes = (bytes(&w1.metrics, "server_in") - bytes(&w0.metrics, "server_in")).max(0.0);
    let mbit_s = out_bytes * 8.0 / 1e6 / secs;
    let latency = {
        let h = fleet
            .env
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (!h.is_empty()).then(|| {
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            let spectrum = [
                0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999,
            ]
            .iter()
            .map(|&p| (p, us(p / 100.0)))
            .collect();
            report::Latency {
                count: h.len(),
                p50_us: us(0.5),
                p90_us: us(0.9),
                p99_us: us(0.99),
                p999_us: us(0.999),
                max_us: h.max() as f64 / 1000.0,
                spectrum,
            }
        })
    };
    let sum = |f: &dyn Fn(&crate::browsers::Stats) -> u64, well: Option<bool>| -> u64 {
        fleet
            .browsers
            .iter()
            .filter(|b| well.is_none_or(|w| b.well_behaved == w))
            .map(|b| f(&b.stats))
            .sum()
    };
    let examples: Vec<String> = fleet
        .browsers
        .iter()
        .filter_map(|b| {
            let f = b.stats.last_failure.lock().ok()?.clone()?;
            Some(format!(
                "{} {:?} → {}: {f}",
                if b.well_behaved {
                    "well-behaved"
                } else {
                    "hostile"
                },
                b.kind,
                b.target
            ))
        })
        .take(8)
        .collect();
    // Steady state: every session open and streaming for the whole window.
    let n = total.max(1) as u64;
    let per = |f: fn(&Mem) -> u64| f(&steady).saturating_sub(f(&idle_mem)) / n;
    let mut r = Report {
        profile: profile.name().to_owned(),
        sessions: args.sessions,
        well_behaved: mix.well,
        hostile: mix.hostile,
        hostile_kind: profile.hostile().then(|| format!("{:?}", mix.hostile_kind)),
        storm_attempters,
        window_s: secs,
        desktop,
        reel,
        hostile_reel,
        gateway: report::GatewayInfo {
            executors: plan.executors,
            base_bytes: plan.base_bytes,
            per_session_bytes: plan.per_session_bytes,
            budget_bytes: plan.budget_bytes,
            max_sessions: plan.max_sessions,
            budget_set_by_harness,
            plan: plan.raw.clone(),
        },
        memory: report::Memory {
            idle: idle_mem,
            idle_kernel_tcp: idle_tcp,
            steady,
            steady_kernel_tcp: steady_tcp,
            server_bytes_per_session: (total > 0)
                .then(|| bytes(&w1.metrics, "server_in") as u64 / total as u64),
            per_session_pss: (total > 0).then(|| per(|m| m.pss)),
            per_session_rss: (total > 0).then(|| per(|m| m.rss)),
            per_session_kernel_tcp: (total > 0).then(|| steady_tcp.saturating_sub(idle_tcp) / n),
            steps,
            after,
            after_kernel_tcp: after_tcp,
            cycles,
            max_sampled_rss: samples.iter().map(|s| s.rss).max().unwrap_or(0),
            max_sampled_anon: samples.iter().map(|s| s.anon).max().unwrap_or(0),
            largest_mappings,
            max_sampled_total: samples.iter().map(|s| s.rss + s.tcp).max().unwrap_or(0),
            samples,
        },
        cpu: report::Cpu {
            window_ns: cpu_ns,
            core_share,
            per_session_share: core_share / in_window as f64,
            frames,
            per_frame_us: (frames > 0).then(|| cpu_ns as f64 / 1000.0 / frames as f64),
        },
        idle,
        throughput: report::Throughput {
            browser_out_bytes: out_bytes as u64,
            server_in_bytes: in_bytes as u64,
            mbit_s,
            mbit_s_per_executor: mbit_s / plan.executors.max(1) as f64,
            mbit_s_per_cpu_core: (core_share > 0.0).then(|| mbit_s / core_share),
        },
        latency,
        harness: {
            let share = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e9 / secs;
            report::Harness {
                browsers_core_share: share(w0.harness.browsers, w1.harness.browsers),
                servers_core_share: share(w0.harness.servers, w1.harness.servers),
                other_core_share: share(w0.harness.other, w1.harness.other),
            }
        },
        frame_rates: report::FrameRates {
            nominal_fps: r_fps,
            well: report::Rates::of(&well_rates),
            baseline_well,
            kept_min_ratio: kept,
            hostile: report::Rates::of(&hostile_rates),
            per_session_well: well_rates,
        },
        sessions_per_core,
        stalls: report::Stalls {
            server_frames_sent: server_frames.saturating_sub(server_frames0),
            browser_frames_received: frames,
            well_behaved: sum(&|s| s.stalls.load(Relaxed), Some(true)),
            well_sessions_with_stalls: fleet
                .browsers
                .iter()
                .filter(|b| b.well_behaved && b.stats.stalls.load(Relaxed) > 0)
                .count(),
            hostile: sum(&|s| s.stalls.load(Relaxed), Some(false)),
        },
        refusals: report::Refusals {
            sessions_refused_metric: end_metrics.get("rdpwire_sessions_refused_total") as u64,
            http_rejected_metric: end_metrics.get("rdpwire_http_rejected_total") as u64,
            accepted: sum(&|s| s.accepted.load(Relaxed), None),
            clean_503: sum(&|s| s.refused_clean.load(Relaxed), None),
            other: sum(&|s| s.refused_other.load(Relaxed), None),
            outcomes: fleet
                .env
                .outcomes
                .lock()
                .map(|o| o.clone())
                .unwrap_or_default(),
        },
        drops: report::Drops {
            in_large_message: sum(&|s| s.drops_large.load(Relaxed), None),
            in_smaller_message: sum(&|s| s.drops_small.load(Relaxed), None),
        },
        failures: report::Failures {
            well_behaved: sum(&|s| s.failures.load(Relaxed), Some(true)),
            hostile: sum(&|s| s.failures.load(Relaxed), Some(false)),
            examples,
        },
        gateway_log: report::GatewayLog {
            warnings: gw.log.warnings.load(Relaxed),
            errors: gw.log.errors.load(Relaxed),
            tail: gw.log.tail(),
        },
        gateway_exit,
        checks: Vec::new(),
        notes: Vec::new(),
        machine: report::Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_start,
            load_end,
        },
    };
    drop(fleet);
    drop(gw);
    drop(servers);
    r.evaluate(profile.hostile());
    Ok(r)
}

/// Writes the JSON and the charts; returns the paths written.
pub fn write_outputs(args: &RunArgs, profile: Profile, r: &Report) -> Result<Vec<PathBuf>> {
    let stem = format!("{}-{}", profile.name(), args.sessions);
    let json = args
        .json
        .clone()
        .unwrap_or_else(|| args.out_dir.join(format!("{stem}.json")));
    if let Some(dir) = json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&json, serde_json::to_string_pretty(r)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let mut out = vec![json];
    out.extend(crate::charts::write(r, &args.out_dir, &stem)?);
    Ok(out)
}

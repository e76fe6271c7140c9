//! Measurements from outside the gateway: `/proc/<pid>/smaps_rollup` (PSS, RSS),
//! `/proc/<pid>/task/*/schedstat` and `/proc/<pid>/stat` (CPU), `/proc/net/sockstat` (the
//! kernel's TCP buffer memory), and a sampler that records RSS every 100 ms from
//! `/proc/<pid>/status`. The sampler does not read `smaps_rollup`: that walks every page table
//! of the gateway under its memory-map lock, which at 500 sessions (1.4 GiB resident) cost the
//! harness a third of a core and stalled the gateway's own page faults.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;

pub const PAGE: u64 = 4096;
/// `sysconf(_SC_CLK_TCK)` on Linux.
const CLK_TCK: u64 = 100;

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Mem {
    pub pss: u64,
    pub rss: u64,
    /// Anonymous resident memory (heap, stacks, arenas).
    pub anon: u64,
}

/// Proportional, resident and anonymous resident set size, in bytes.
pub fn memory(pid: u32) -> Result<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Ok(Mem {
        pss: field("Pss:"),
        rss: field("Rss:"),
        anon: field("Anonymous:"),
    })
}

/// One mapping of `/proc/<pid>/smaps`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Mapping {
    pub range: String,
    /// `[heap]`, a file, or empty for anonymous memory.
    pub name: String,
    pub size: u64,
    pub rss: u64,
}

/// The `n` mappings with the most resident memory: where the memory is (heap, arenas,
/// thread stacks), for reading a figure like "back to base" or "creep".
pub fn largest_mappings(pid: u32, n: usize) -> Vec<Mapping> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return Vec::new();
    };
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let name = line.split_whitespace().nth(5).unwrap_or("").to_owned();
            out.push(Mapping {
                range: first.to_owned(),
                name,
                size: 0,
                rss: 0,
            });
            continue;
        }
        let kb = || -> u64 {
            words
                .clone()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(0, |k| k * 1024)
        };
        if let Some(m) = out.last_mut() {
            match first {
                "Size:" => m.size = kb(),
                "Rss:" => m.rss = kb(),
                _ => {}
            }
        }
    }
    out.sort_by_key(|m| std::cmp::Reverse(m.rss));
    out.truncate(n);
    out
}

/// Kernel memory of all TCP sockets on this machine (pages × page size): the gateway's and
/// the harness's own ends of every loopback connection.
pub fn tcp_memory() -> u64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("TCP:"))?;
            let mut it = line.split_whitespace();
            while let Some(w) = it.next() {
                if w == "mem" {
                    return it.next()?.parse::<u64>().ok();
                }
            }
            None
        })
        .map_or(0, |pages| pages * PAGE)
}

/// CPU time of a process, nanoseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// Sum of `/proc/<pid>/task/*/schedstat` run times (ns precision; threads alive now).
    pub sched_ns: u64,
    /// utime + stime of `/proc/<pid>/stat` (10 ms ticks; every thread ever).
    pub ticks_ns: u64,
}

pub fn cpu(pid: u32) -> Cpu {
    let mut sched_ns = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in dir.flatten() {
            if let Ok(t) = std::fs::read_to_string(task.path().join("schedstat")) {
                sched_ns += t
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    let ticks_ns = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| {
            // Fields after the command name, which may contain spaces: ") state ppid ...".
            let rest = t.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) * 1_000_000_000 / CLK_TCK)
        })
        .unwrap_or(0);
    Cpu { sched_ns, ticks_ns }
}

impl Cpu {
    /// CPU time spent since `earlier`, ns: schedstat when it is consistent, else ticks.
    pub fn since(&self, earlier: &Cpu) -> u64 {
        let sched = self.sched_ns.checked_sub(earlier.sched_ns);
        let ticks = self.ticks_ns.saturating_sub(earlier.ticks_ns);
        match sched {
            // A thread that exited takes its schedstat time with it; ticks still count it.
            Some(s) if s + 20_000_000 >= ticks => s,
            _ => ticks,
        }
    }
}

/// CPU time of this process's threads, ns, split by thread name: the synthetic browsers
/// (`browser-*`), the synthetic servers (`rdpwire-demo*`), and the rest.
#[derive(Debug, Clone, Copy, Default)]
pub struct HarnessCpu {
    pub browsers: u64,
    pub servers: u64,
    pub other: u64,
}

pub fn harness_cpu() -> HarnessCpu {
    let mut out = HarnessCpu::default();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in dir.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        if comm.starts_with("browser-") {
            out.browsers += ns;
        } else if comm.starts_with("rdpwire-demo") {
            out.servers += ns;
        } else {
            out.other += ns;
        }
    }
    out
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Sample {
    pub t_ms: u64,
    pub rss: u64,
    /// Anonymous resident memory (heap, arenas, stacks).
    pub anon: u64,
    pub tcp: u64,
}

/// Resident and anonymous resident memory from the kernel's counters (`VmRSS`, `RssAnon` of
/// `/proc/<pid>/status`): constant time, no page-table walk.
pub fn resident(pid: u32) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Ok((field("VmRSS:"), field("RssAnon:")))
}

/// Samples the gateway's memory every `period` on its own thread.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    handle: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pid: u32, period: Duration, epoch: Instant) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (Arc::clone(&stop), Arc::clone(&samples));
        let handle = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !s.load(Relaxed) {
                let Ok((rss, anon)) = resident(pid) else {
                    break;
                };
                let sample = Sample {
                    t_ms: epoch.elapsed().as_millis() as u64,
                    rss,
                    anon,
                    tcp: tcp_memory(),
                };
                v.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(sample);
                next += period;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        Sampler {
            stop,
            samples,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The 1-minute load average of the machine.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

pub fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

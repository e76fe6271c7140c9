//! Command line: `bench [--profile P ...]`, `bench memory`, `bench audio`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    about = "rdpwire load-test harness: the real gateway, synthetic RDP servers and browsers on loopback",
    long_about = None
)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Memory probe: sessions that only say hello, opened in steps; PSS/RSS per step against
    /// the gateway's own budgeted figures (what `bench` does without `--profile`).
    Memory(MemoryArgs),
    /// Cost of the gateway's audio path (PCM → Opus) per stream.
    Audio(crate::audio::AudioArgs),
}

/// What the synthetic servers send and how the synthetic browsers behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    /// Office work: mostly small P-frames, a key frame every few seconds.
    Office,
    /// Video: 1080p 30 fps, 5–8 Mbit/s.
    Video,
    /// Office sessions beside browsers that read at a few kB/s.
    SlowBrowser,
    /// Office sessions beside browsers that never acknowledge a frame.
    StalledBrowser,
    /// Office sessions beside servers that send the largest frames the protocol allows.
    MaxFrames,
    /// Office sessions while connection attempts arrive at 2× the gateway's capacity.
    Storm,
    /// Office sessions beside browsers that vanish in the middle of a large message.
    DropMidframe,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Office => "office",
            Profile::Video => "video",
            Profile::SlowBrowser => "slow-browser",
            Profile::StalledBrowser => "stalled-browser",
            Profile::MaxFrames => "max-frames",
            Profile::Storm => "storm",
            Profile::DropMidframe => "drop-midframe",
        }
    }

    pub fn hostile(self) -> bool {
        !matches!(self, Profile::Office | Profile::Video)
    }
}

#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// Sessions in total (well-behaved and hostile together; storm attempts come on top).
    #[arg(long, default_value_t = 200)]
    pub sessions: usize,
    /// Load profile; without one, `bench` runs the memory probe (`bench memory`).
    #[arg(long, value_enum)]
    pub profile: Option<Profile>,
    /// Length of the measured steady-state window.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Share of hostile sessions in a hostile profile's mix (the rest are office sessions).
    #[arg(long, default_value_t = 0.2)]
    pub hostile_share: f64,
    /// Measure memory after every this many sessions while ramping up (default: a quarter).
    #[arg(long)]
    pub step: Option<usize>,
    /// Executors for the gateway (default: the gateway's own, every allowed CPU).
    #[arg(long)]
    pub cores: Option<usize>,
    /// The gateway binary; default: `rdpwire` next to this one.
    #[arg(long)]
    pub gateway: Option<PathBuf>,
    /// The gateway's memory budget (a size: 64MiB). Hostile profiles default to base +
    /// per-session × sessions from `rdpwire check-config`, so the budget is reached.
    #[arg(long)]
    pub memory_budget: Option<String>,
    /// Extra environment for the gateway process, KEY=VALUE (repeatable), e.g. allocator
    /// settings such as MALLOC_ARENA_MAX=2.
    #[arg(long = "gateway-env", value_name = "KEY=VALUE")]
    pub gateway_env: Vec<String>,
    /// Compare with the targets; exit non-zero on a miss.
    #[arg(long)]
    pub check: bool,
    /// JSON report (default: target/bench/<profile>-<sessions>.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where the charts (and the default JSON) go.
    #[arg(long, default_value = "target/bench")]
    pub out_dir: PathBuf,
    /// Connect/disconnect cycles after the run (well-behaved profiles), to show no creep.
    #[arg(long, default_value_t = 10)]
    pub cycles: usize,
    /// Sessions per cycle (default: the smaller of --sessions and 50).
    #[arg(long)]
    pub cycle_sessions: Option<usize>,
    /// Idle window (well-behaved profiles): sessions connected, no frames flowing; 0s skips it.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// Desktop size the browsers ask for, WxH (default: the servers' own).
    #[arg(long)]
    pub desktop: Option<String>,
    /// Bytes per second a slow browser reads.
    #[arg(long, default_value_t = 4096)]
    pub slow_rate: u32,
    /// A message at least this large counts as large for drop-midframe.
    #[arg(long, default_value_t = 16 * 1024)]
    pub large_message: usize,
}

#[derive(clap::Args, Clone)]
pub struct MemoryArgs {
    /// Sessions to open in total.
    #[arg(long, default_value_t = 200)]
    pub sessions: usize,
    /// Measure after every this many sessions.
    #[arg(long, default_value_t = 50)]
    pub step: usize,
    /// Executors for the gateway.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// The gateway binary; default: next to this one.
    #[arg(long)]
    pub gateway: Option<PathBuf>,
    /// Exit non-zero when a measured figure exceeds the gateway's own budgeted figure.
    #[arg(long)]
    pub check: bool,
}

impl RunArgs {
    /// The memory probe's arguments, for `bench` without `--profile`.
    pub fn memory(&self) -> MemoryArgs {
        MemoryArgs {
            sessions: self.sessions,
            step: self.step.unwrap_or(50),
            cores: self.cores.unwrap_or(1),
            gateway: self.gateway.clone(),
            check: self.check,
        }
    }

    pub fn desktop_size(&self) -> anyhow::Result<Option<(u16, u16)>> {
        let Some(s) = &self.desktop else {
            return Ok(None);
        };
        let (w, h) = s
            .split_once(['x', 'X'])
            .ok_or_else(|| anyhow::anyhow!("--desktop {s}: write WxH, e.g. 1920x1080"))?;
        Ok(Some((w.trim().parse()?, h.trim().parse()?)))
    }
}

/// The gateway binary: the given path, else `rdpwire` next to this executable.
pub fn gateway_bin(given: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    use anyhow::Context as _;
    match given {
        Some(p) => Ok(p.clone()),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("no parent dir")?
            .join("rdpwire")),
    }
}

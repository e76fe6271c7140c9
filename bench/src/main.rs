//! The load-test harness (first stage): starts the real `rdpwire` binary, opens WebSocket
//! sessions against it in steps, and measures the gateway's memory from outside the process
//! (`/proc/<pid>/smaps_rollup`) against the budget it computed for itself.
//!
//! `cargo run --release -p bench -- --sessions 200 --step 50 [--check]`
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

mod audio;

#[derive(clap::Subcommand)]
enum Cmd {
    /// Cost of the gateway's audio path (PCM → Opus) per stream.
    Audio(audio::AudioArgs),
}

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Sessions to open in total.
    #[arg(long, default_value_t = 200)]
    sessions: usize,
    /// Measure after every this many sessions.
    #[arg(long, default_value_t = 50)]
    step: usize,
    /// Executors for the gateway.
    #[arg(long, default_value_t = 1)]
    cores: usize,
    /// The gateway binary; default: next to this one.
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// Exit non-zero when a measured figure exceeds the gateway's own budgeted figure.
    #[arg(long)]
    check: bool,
}

struct Gateway {
    child: Child,
    addr: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(bin: &PathBuf, cores: usize) -> Result<Gateway> {
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--cores", &cores.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Some(line) = lines.next() else { break };
        let v: serde_json::Value = serde_json::from_str(&line?).unwrap_or_default();
        if v["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("listening on")
        {
            let addr = v["addr"].as_str().context("no addr")?.to_owned();
            // Keep draining the log so the gateway never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return Ok(Gateway { child, addr });
        }
    }
    bail!("gateway did not start")
}

/// Proportional and resident set size, in bytes.
fn memory(pid: u32) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Ok((field("Pss:"), field("Rss:")))
}

/// Kernel memory of all TCP sockets on this machine (pages × page size).
fn tcp_memory() -> u64 {
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
        .map_or(0, |pages| pages * 4096)
}

fn open_session(addr: &str, nonce: u64) -> Result<WebSocket<MaybeTlsStream<TcpStream>>> {
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/ws"))?;
    let hello = ws.read()?.into_data();
    if hello.get(..2) != Some(&[1, 0x01][..]) {
        bail!("no ServerHello");
    }
    let mut ping = vec![1u8, 0x81];
    ping.extend_from_slice(&nonce.to_le_bytes());
    ws.send(Message::binary(ping))?;
    let pong = ws.read()?.into_data();
    if pong.get(..2) != Some(&[1, 0x02][..]) {
        bail!("no Pong");
    }
    Ok(ws)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(Cmd::Audio(a)) = &args.cmd {
        return audio::run(a);
    }
    let bin = match &args.gateway {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no parent dir")?
            .join("rdpwire"),
    };
    let plan_out = Command::new(&bin)
        .args(["check-config", "--json", "--cores", &args.cores.to_string()])
        .output()?;
    let plan: serde_json::Value = serde_json::from_slice(&plan_out.stdout)?;
    let base_budget = plan["base_bytes"].as_u64().context("no base_bytes")?;
    let per_budget = plan["per_session_bytes"]
        .as_u64()
        .context("no per_session_bytes")?;

    let gw = start(&bin, args.cores)?;
    let pid = gw.child.id();
    std::thread::sleep(Duration::from_millis(300));
    let (idle_pss, idle_rss) = memory(pid)?;
    let tcp0 = tcp_memory();
    println!("| sessions | PSS MiB | RSS MiB | RSS per session KiB | kernel TCP MiB |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| 0 | {:.2} | {:.2} | – | {:.2} |",
        mib(idle_pss),
        mib(idle_rss),
        mib(tcp0)
    );
    let mut sessions = Vec::with_capacity(args.sessions);
    let mut worst_per = 0u64;
    while sessions.len() < args.sessions {
        let n = args.step.min(args.sessions - sessions.len());
        for _ in 0..n {
            sessions.push(open_session(&gw.addr, sessions.len() as u64)?);
        }
        let (pss, rss) = memory(pid)?;
        let per = rss.saturating_sub(idle_rss) / sessions.len() as u64;
        worst_per = worst_per.max(per);
        println!(
            "| {} | {:.2} | {:.2} | {:.1} | {:.2} |",
            sessions.len(),
            mib(pss),
            mib(rss),
            per as f64 / 1024.0,
            mib(tcp_memory())
        );
    }
    for mut s in sessions.drain(..) {
        let _ = s.close(None);
        while s.read().is_ok() {}
    }
    std::thread::sleep(Duration::from_millis(300));
    let (after_pss, after_rss) = memory(pid)?;
    println!(
        "\nafter all sessions ended: PSS {:.2} MiB, RSS {:.2} MiB (idle was {:.2} MiB)",
        mib(after_pss),
        mib(after_rss),
        mib(idle_rss)
    );
    println!(
        "budgeted: base {:.2} MiB, per session {:.1} KiB; measured: idle RSS {:.2} MiB, per session up to {:.1} KiB",
        mib(base_budget),
        per_budget as f64 / 1024.0,
        mib(idle_rss),
        worst_per as f64 / 1024.0
    );
    if args.check {
        if idle_rss > base_budget {
            bail!("idle RSS {idle_rss} exceeds the budgeted base {base_budget}");
        }
        if worst_per > per_budget {
            bail!("measured {worst_per} bytes per session exceeds the budgeted {per_budget}");
        }
        println!("check: within budget");
    }
    Ok(())
}

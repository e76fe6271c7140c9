//! The load-test harness: starts the real `rdpwire` binary, synthetic RDP servers (the
//! embedded demo server, in this process) and synthetic browsers (one thread each) on
//! loopback, drives a load profile for a bounded time and measures the gateway from outside:
//! memory (`/proc/<pid>/smaps_rollup`), CPU, kernel socket memory, frame residence time,
//! per-session frame rates, throughput, refusals. Markdown on stdout, JSON and SVG charts
//! under `target/bench/`; `--check` compares with the targets of the load-test issue.
//!
//! ```text
//! cargo run --release -p bench -- --sessions 200 --profile office --duration 60s [--check]
//! cargo run --release -p bench -- --sessions 50 --profile storm --duration 20s
//! cargo run --release -p bench -- memory --sessions 300 --step 100 --cores 1 --check
//! cargo run --release -p bench -- audio
//! ```
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

mod args;
mod audio;
mod browsers;
mod charts;
mod gateway;
mod measure;
mod memory;
mod profiles;
mod pump;
mod report;
mod run;
mod servers;
mod wire;

use args::{Args, Cmd};

fn main() -> Result<ExitCode> {
    let args = Args::parse();
    match &args.cmd {
        Some(Cmd::Audio(a)) => return audio::run(a).map(|()| ExitCode::SUCCESS),
        Some(Cmd::Memory(m)) => return memory::run(m).map(|()| ExitCode::SUCCESS),
        None => {}
    }
    let Some(profile) = args.run.profile else {
        return memory::run(&args.run.memory()).map(|()| ExitCode::SUCCESS);
    };
    let report = run::run(&args.run, profile)?;
    print!("{}", report.markdown());
    let written = run::write_outputs(&args.run, profile, &report)?;
    for p in written {
        println!("wrote {}", p.display());
    }
    if args.run.check {
        let misses = report.misses();
        if misses.is_empty() {
            println!("\ncheck: every target of this profile is met");
        } else {
            println!("\ncheck: {} target(s) missed or not shown:", misses.len());
            for m in misses {
                println!("- {}: {} (goal {})", m.name, m.measured, m.target);
            }
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

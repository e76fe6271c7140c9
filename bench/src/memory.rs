//! `bench memory` (and `bench` without `--profile`): the memory probe. Opens WebSocket
//! sessions that only say hello, in steps, and measures the gateway's memory from outside
//! the process (`/proc/<pid>/smaps_rollup`) against the budget it computed for itself.

use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Result};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::args::MemoryArgs;
use crate::gateway::Settings;
use crate::measure::{memory, mib, tcp_memory};

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

pub fn run(args: &MemoryArgs) -> Result<()> {
    let settings = Settings {
        bin: crate::args::gateway_bin(args.gateway.as_ref())?,
        config: None,
        cores: Some(args.cores),
        memory_budget: None,
        env: Vec::new(),
    };
    let plan = settings.plan()?;
    let (base_budget, per_budget) = (plan.base_bytes, plan.per_session_bytes);

    let gw = settings.start()?;
    let pid = gw.pid();
    std::thread::sleep(Duration::from_millis(300));
    let idle = memory(pid)?;
    let tcp0 = tcp_memory();
    println!("| sessions | PSS MiB | RSS MiB | RSS per session KiB | kernel TCP MiB |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| 0 | {:.2} | {:.2} | – | {:.2} |",
        mib(idle.pss),
        mib(idle.rss),
        mib(tcp0)
    );
    let mut sessions = Vec::with_capacity(args.sessions);
    let mut worst_per = 0u64;
    let step = args.step.max(1);
    while sessions.len() < args.sessions {
        let n = step.min(args.sessions - sessions.len());
        for _ in 0..n {
            sessions.push(open_session(&gw.addr, sessions.len() as u64)?);
        }
        let m = memory(pid)?;
        let per = m.rss.saturating_sub(idle.rss) / sessions.len() as u64;
        worst_per = worst_per.max(per);
        println!(
            "| {} | {:.2} | {:.2} | {:.1} | {:.2} |",
            sessions.len(),
            mib(m.pss),
            mib(m.rss),
            per as f64 / 1024.0,
            mib(tcp_memory())
        );
    }
    for mut s in sessions.drain(..) {
        let _ = s.close(None);
        while s.read().is_ok() {}
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = memory(pid)?;
    println!(
        "\nafter all sessions ended: PSS {:.2} MiB, RSS {:.2} MiB (idle was {:.2} MiB)",
        mib(after.pss),
        mib(after.rss),
        mib(idle.rss)
    );
    println!(
        "budgeted: base {:.2} MiB, per session {:.1} KiB; measured: idle RSS {:.2} MiB, per session up to {:.1} KiB",
        mib(base_budget),
        per_budget as f64 / 1024.0,
        mib(idle.rss),
        worst_per as f64 / 1024.0
    );
    if args.check {
        if idle.rss > base_budget {
            bail!(
                "idle RSS {} exceeds the budgeted base {base_budget}",
                idle.rss
            );
        }
        if worst_per > per_budget {
            bail!("measured {worst_per} bytes per session exceeds the budgeted {per_budget}");
        }
        println!("check: within budget");
    }
    Ok(())
}

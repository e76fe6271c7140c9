//! `bench audio`: what the gateway's own audio path costs per stream — PCM in, Opus packets
//! queued — measured through `rdpwire::audio::AudioPipeline`, the code a session runs, with
//! waves of the size Windows sends (about 40 ms) and a music-like signal (chords and noise,
//! which costs libopus more than a pure tone).

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arena::{Arena, ArenaConfig};
use rdpwire::audio::{AudioPipeline, AudioSettings, Input};

#[derive(clap::Args)]
pub struct AudioArgs {
    /// Seconds of sound to encode per case.
    #[arg(long, default_value_t = 20)]
    seconds: u32,
    /// Exit non-zero when a 20 ms frame costs more than this many microseconds.
    #[arg(long, default_value_t = 1000)]
    max_us: u64,
    /// libopus complexity (the gateway's `--audio-complexity`).
    #[arg(long, default_value_t = AudioSettings::default().complexity)]
    complexity: u8,
    #[arg(long)]
    check: bool,
}

struct Case {
    name: &'static str,
    rate: u32,
    frame_ms: u64,
}

/// Interleaved stereo 16-bit PCM: a chord with a little noise, `seconds` long.
fn music(rate: u32, seconds: u32) -> Vec<u8> {
    let mut seed = 0x2545_f491_u32;
    let n = rate as usize * seconds as usize;
    let mut out = Vec::with_capacity(n * 4);
    for i in 0..n {
        let t = i as f64 / f64::from(rate);
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let noise = (f64::from(seed) / f64::from(u32::MAX) - 0.5) * 0.05;
        let chord: f64 = [220.0, 277.2, 329.6, 440.0, 1318.5]
            .iter()
            .map(|f| (2.0 * std::f64::consts::PI * f * t).sin())
            .sum::<f64>()
            / 6.0;
        let l = ((chord + noise) * 0.8 * 32767.0) as i16;
        let r = ((chord * 0.9 - noise) * 0.8 * 32767.0) as i16;
        out.extend_from_slice(&l.to_le_bytes());
        out.extend_from_slice(&r.to_le_bytes());
    }
    out
}

pub fn run(args: &AudioArgs) -> Result<()> {
    let cases = [
        Case {
            name: "PCM 48 kHz stereo → Opus 20 ms",
            rate: 48_000,
            frame_ms: 20,
        },
        Case {
            name: "PCM 44.1 kHz stereo → resample → Opus 20 ms",
            rate: 44_100,
            frame_ms: 20,
        },
        Case {
            name: "PCM 48 kHz stereo → Opus 10 ms",
            rate: 48_000,
            frame_ms: 10,
        },
    ];
    let arena = Arena::new(&ArenaConfig::with_sessions(1)).context("arena")?;
    println!(
        "libopus complexity {}, 64 kbit/s stereo, {} s of sound per case\n",
        args.complexity, args.seconds
    );
    println!(
        "| case | packets | µs per packet | µs per 20 ms of sound | share of one core per stream |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut worst_20ms = 0.0f64;
    for case in &cases {
        let share = Rc::new(arena.admit().context("admit")?);
        let settings = AudioSettings {
            frame: Duration::from_millis(case.frame_ms),
            complexity: args.complexity,
            max_queue: Duration::from_secs(1),
            ..AudioSettings::default()
        };
        let mut p = AudioPipeline::new(share, 1, settings);
        let pcm = music(case.rate, args.seconds);
        // Windows sends waves of about 40 ms.
        let wave = case.rate as usize / 25 * 4;
        let input = Input::Pcm {
            rate: case.rate,
            channels: 2,
        };
        let mut packets = 0u64;
        let started = Instant::now();
        for w in pcm.chunks(wave) {
            p.wave(input, w).with_context(|| case.name)?;
            while p.next_message(|m| m.len()).is_some() {
                packets += 1;
            }
        }
        let spent = started.elapsed();
        packets = packets.saturating_sub(1); // the AudioStart
        let per_packet = spent.as_secs_f64() * 1e6 / packets.max(1) as f64;
        let per_20ms = per_packet * 20.0 / case.frame_ms as f64;
        worst_20ms = worst_20ms.max(per_20ms);
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.2} % |",
            case.name,
            packets,
            per_packet,
            per_20ms,
            per_20ms / 20_000.0 * 100.0
        );
    }
    println!();
    println!(
        "One core encodes about {:.0} streams at once in the costliest case.",
        20_000.0 / worst_20ms
    );
    if args.check && worst_20ms > args.max_us as f64 {
        bail!(
            "audio encoding costs {worst_20ms:.0} µs per 20 ms of sound, above the {} µs target",
            args.max_us
        );
    }
    Ok(())
}

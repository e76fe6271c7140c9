//! The synthetic RDP servers, hosted in the harness process: the embedded demo server
//! (`rdpwire::demo`), real TLS, NLA and EGFX.
//!
//! **Stand-in until the replay content mode is merged.** The harness is written against
//! `rdpwire::demo` with `DemoOptions { content: Content::Replay(Arc<reel::Reel>),
//! max_connections, .. }`, `reel::{Reel, ReelProfile}` and `stamp::{now_ns, read}`. Until
//! that lands this file serves every group with today's demo server (`Content::Desktop`
//! behaviour: the live demo desktop, painted and encoded with OpenH264 per session, at most
//! [`rdpwire::demo::MAX_CONNECTIONS`] connections per server, so a group is spread over
//! several servers, one target each), and the access units carry no send stamp, so the
//! frame residence time is reported as not measured. At merge time only this file changes:
//! [`Servers::start`] builds one `Reel` per profile and one `DemoServer` per group with
//! `Content::Replay` and `max_connections` ≥ the group's connections, [`Group::target_for`]
//! names the group's single target, [`Group::info`] reports the reel's size, rate and
//! bit rate, and [`now_ns`]/[`read_stamp`] call `rdpwire::demo::stamp`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, Result};
use rdpwire::demo::{DemoAudio, DemoOptions, DemoServer};

pub const USERNAME: &str = "bench";
pub const PASSWORD: &str = "bench-password";
/// The environment variable the gateway reads the targets' password from.
pub const PASSWORD_ENV: &str = "RDPWIRE_BENCH_PASSWORD";

/// What a group of servers sends (the replay reels of `rdpwire::demo::reel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReelProfile {
    Office,
    Video,
    MaxFrames,
}

impl ReelProfile {
    pub fn name(self) -> &'static str {
        match self {
            ReelProfile::Office => "office",
            ReelProfile::Video => "video",
            ReelProfile::MaxFrames => "max-frames",
        }
    }
}

/// What the servers of a group send, as far as the harness can know it in advance.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReelInfo {
    pub source: String,
    pub width: u16,
    pub height: u16,
    pub fps: u32,
    /// Frames between key frames, when known.
    pub key_interval: Option<u32>,
    /// The reel's average bit rate, when known.
    pub bitrate_bps: Option<u64>,
    /// Whether access units carry a send stamp (frame residence time measurable).
    pub stamped: bool,
}

/// One group of servers sending one reel.
pub struct Group {
    pub name: String,
    /// What this group's servers send.
    pub info: ReelInfo,
    servers: Vec<DemoServer>,
    next: AtomicUsize,
}

impl Group {
    /// The target the next browser of this group names (spread over the group's servers).
    pub fn target_for(&self) -> String {
        let i = self.next.fetch_add(1, Relaxed) % self.servers.len().max(1);
        format!("{}{i}", self.name)
    }

    fn targets(&self) -> impl Iterator<Item = (String, SocketAddr)> + '_ {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("{}{i}", self.name), s.addr()))
    }

    pub fn frames_sent(&self) -> u64 {
        self.servers.iter().map(|s| s.observed().frames_sent).sum()
    }
}

pub struct Servers {
    pub groups: Vec<Group>,
}

impl Servers {
    /// Starts one group per `(name, profile, connections)`: servers that accept at least
    /// `connections` connections at once between them.
    pub fn start(specs: &[(&str, ReelProfile, usize)]) -> Result<Servers> {
        let mut groups = Vec::new();
        for &(name, profile, connections) in specs {
            // Headroom: a closed session's server connection may still be ending when the
            // browser's next one arrives.
            let wanted = connections + connections / 4 + 2;
            let count = wanted.div_ceil(rdpwire::demo::MAX_CONNECTIONS);
            let servers = (0..count)
                .map(|_| {
                    DemoServer::start(DemoOptions {
                        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
                        username: USERNAME.to_owned(),
                        password: PASSWORD.to_owned(),
                        audio: DemoAudio::Off,
                    })
                    .with_context(|| format!("starting a {} server", profile.name()))
                })
                .collect::<Result<Vec<_>>>()?;
            groups.push(Group {
                name: name.to_owned(),
                info: reel_info(profile),
                servers,
                next: AtomicUsize::new(0),
            });
        }
        Ok(Servers { groups })
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The gateway's `[targets.*]` for every server.
    pub fn config_toml(&self) -> String {
        let mut out = String::new();
        for g in &self.groups {
            for (target, addr) in g.targets() {
                out.push_str(&format!(
                    "[targets.{target}]\nhost = \"{}\"\nport = {}\nusername = \"{USERNAME}\"\npassword_env = \"{PASSWORD_ENV}\"\ntls = \"insecure\"\n\n",
                    addr.ip(),
                    addr.port()
                ));
            }
        }
        out
    }

    pub fn frames_sent(&self) -> u64 {
        self.groups.iter().map(Group::frames_sent).sum()
    }
}

/// What a profile's servers send.
fn reel_info(profile: ReelProfile) -> ReelInfo {
    ReelInfo {
        source: format!(
            "stand-in: live demo desktop (OpenH264, {} fps), not the {} reel",
            rdpwire::demo::FPS,
            profile.name()
        ),
        // The stand-in encodes live, per session: a small desktop keeps the servers'
        // cost within reach of a 2-core machine.
        width: 320,
        height: 200,
        fps: rdpwire::demo::FPS,
        key_interval: Some(rdpwire::demo::FPS * 10),
        bitrate_bps: None,
        stamped: false,
    }
}

/// The clock the send stamps are on (the servers' and the browsers' process), nanoseconds.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The send stamp of an access unit, if it carries one.
pub fn read_stamp(_access_unit: &[u8]) -> Option<u64> {
    None
}

// At merge time (the replay content mode in `rdpwire::demo`), the stand-in above becomes:
//
//     use std::sync::Arc;
//     use rdpwire::demo::{reel, stamp, Content};
//
//     fn build(profile: ReelProfile) -> Result<Arc<reel::Reel>> {
//         let p = match profile {
//             ReelProfile::Office => reel::ReelProfile::Office,
//             ReelProfile::Video => reel::ReelProfile::Video,
//             ReelProfile::MaxFrames => reel::ReelProfile::MaxFrames,
//         };
//         Ok(Arc::new(reel::Reel::build(p)?))
//     }
//
//     // Servers::start, per group: one server for the whole group.
//     let server = DemoServer::start(DemoOptions {
//         bind: SocketAddr::from(([127, 0, 0, 1], 0)),
//         username: USERNAME.to_owned(),
//         password: PASSWORD.to_owned(),
//         audio: DemoAudio::Off,
//         content: Content::Replay(build(profile)?),
//         max_connections: wanted,
//     })?;
//
//     // Group::target_for and Group::targets: the group's one target, named `name`.
//
//     // Group::info, from the reel the group's server replays:
//     ReelInfo {
//         source: format!("replay reel `{}`", profile.name()),
//         width: r.width, height: r.height, fps: r.fps,
//         key_interval: Some(r.key_interval), bitrate_bps: Some(r.bitrate_bps()),
//         stamped: true,
//     }
//
//     pub fn now_ns() -> u64 { stamp::now_ns() }
//     pub fn read_stamp(au: &[u8]) -> Option<u64> { stamp::read(au) }

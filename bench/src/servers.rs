//! The synthetic RDP servers, hosted in the harness process: the embedded demo server's
//! replay content (`rdpwire::demo`, `Content::Replay`): real TLS, NLA and EGFX with ZGFX
//! segments, sending a reel of access units pre-encoded once with OpenH264 at realistic sizes
//! and rates, each stamped with its send time (an SEI) on the harness process's clock. One
//! server per group takes all of the group's connections; a connection costs a thread and an
//! index into the shared reel.

use std::net::SocketAddr;

use std::sync::Arc;

use anyhow::{Context, Result};
use rdpwire::demo::{reel, stamp, Content, DemoAudio, DemoOptions, DemoServer};

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
    server: DemoServer,
}

impl Group {
    /// The target the next browser of this group names.
    pub fn target_for(&self) -> String {
        self.name.clone()
    }

    fn targets(&self) -> impl Iterator<Item = (String, SocketAddr)> + '_ {
        std::iter::once((self.name.clone(), self.server.addr()))
    }

    pub fn frames_sent(&self) -> u64 {
        self.server.observed().frames_sent
    }
}

pub struct Servers {
    pub groups: Vec<Group>,
}

fn build(profile: ReelProfile) -> Result<Arc<reel::Reel>> {
    let p = match profile {
        ReelProfile::Office => reel::ReelProfile::Office,
        ReelProfile::Video => reel::ReelProfile::Video,
        ReelProfile::MaxFrames => reel::ReelProfile::MaxFrames,
    };
    Ok(Arc::new(reel::Reel::build(p).with_context(|| {
        format!("encoding the {} reel", profile.name())
    })?))
}

impl Servers {
    /// Starts one group per `(name, profile, connections)`: a server that accepts at least
    /// `connections` connections at once.
    pub fn start(specs: &[(&str, ReelProfile, usize)]) -> Result<Servers> {
        let mut groups = Vec::new();
        for &(name, profile, connections) in specs {
            // Headroom: a closed session's server connection may still be ending when the
            // browser's next one arrives.
            let wanted = connections + connections / 4 + 2;
            let r = build(profile)?;
            let info = ReelInfo {
                source: format!("replay reel `{}`", profile.name()),
                width: r.width,
                height: r.height,
                fps: r.fps,
                key_interval: Some(r.key_interval),
                bitrate_bps: Some(r.bitrate_bps()),
                stamped: true,
            };
            let server = DemoServer::start(DemoOptions {
                bind: SocketAddr::from(([127, 0, 0, 1], 0)),
                username: USERNAME.to_owned(),
                password: PASSWORD.to_owned(),
                audio: DemoAudio::Off,
                content: Content::Replay(r),
                max_connections: wanted,
            })
            .with_context(|| format!("starting a {} server", profile.name()))?;
            groups.push(Group {
                name: name.to_owned(),
                info,
                server,
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

/// The clock the send stamps are on (the servers' and the browsers' process), nanoseconds.
pub fn now_ns() -> u64 {
    stamp::now_ns()
}

/// The send stamp of an access unit, if it carries one.
pub fn read_stamp(access_unit: &[u8]) -> Option<u64> {
    stamp::read(access_unit)
}

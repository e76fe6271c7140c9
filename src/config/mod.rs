//! Settings from three layers in a fixed precedence: command line, then `RDPWIRE_*` environment
//! variables, then the TOML file, then built-in defaults. Every value is parsed and checked here,
//! once, so a bad value is refused at start-up naming the key, the value, where it came from and
//! why — never later in a session.

pub mod keys;
mod parse;
pub mod targets;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arena::PoolSpec;

pub use keys::Key;

/// Where a value came from; shown in error messages so the operator knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    CommandLine,
    Environment,
    File(PathBuf),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::CommandLine => f.write_str("from the command line"),
            Origin::Environment => f.write_str("from the environment"),
            Origin::File(p) => write!(f, "from {}", p.display()),
            Origin::Default => f.write_str("built-in default"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {key} = {value:?} ({origin}): {why}")]
    Invalid {
        key: &'static str,
        value: String,
        origin: Origin,
        why: String,
    },
    #[error("cannot read configuration file {}: {err}", path.display())]
    ReadFile { path: PathBuf, err: std::io::Error },
    #[error("configuration file {} is not valid TOML: {msg}", path.display())]
    Toml { path: PathBuf, msg: String },
    #[error("configuration file {}: unknown key {key:?}", path.display())]
    UnknownKey { path: PathBuf, key: String },
    #[error("invalid configuration: {key} = {value:?} ({origin}): {why}")]
    InvalidTarget {
        key: String,
        value: String,
        origin: Origin,
        why: String,
    },
    #[error("invalid configuration: server.default_target = {name:?}: no [targets.{name}] is configured")]
    NoSuchDefaultTarget { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Requested socket buffer sizes. Linux doubles what is requested to cover its bookkeeping,
/// and the doubled value is what the memory budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    pub browser_sndbuf: usize,
    pub browser_rcvbuf: usize,
    pub server_sndbuf: usize,
    pub server_rcvbuf: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pools {
    pub frame_chunk: PoolSpec,
    pub surface_desc: PoolSpec,
    pub audio_buf: PoolSpec,
}

/// Everything `serve` needs, fully validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub listen: SocketAddr,
    pub cores: Option<usize>,
    pub drain_timeout: Duration,
    pub http_timeout: Duration,
    /// Silence from a browser after which its session is closed.
    pub idle_timeout: Duration,
    /// Time from the upgrade to the page's hello; a session without one by then is closed.
    pub hello_timeout: Duration,
    /// How long a session whose browser went away waits to be resumed; zero: not at all.
    pub session_grace: Duration,
    pub max_pending_http: usize,
    /// WebSocket upgrades a second per client address; 0: no limit.
    pub max_upgrades_per_ip: u32,
    /// Sessions at once per client address; 0: no limit.
    pub max_sessions_per_ip: u32,
    pub ws_max_message: usize,
    pub log_format: LogFormat,
    pub memory_budget: Option<u64>,
    pub max_sessions: Option<usize>,
    pub prefault: bool,
    pub mlock: bool,
    pub huge_pages: bool,
    pub pools: Pools,
    pub sockets: SocketBuffers,
    /// Named RDP targets; the page picks one with `?target=NAME`.
    pub targets: BTreeMap<String, crate::rdp::Target>,
    /// The target for a page that names none.
    pub default_target: Option<String>,
    /// Web origins that may open sessions; empty: same origin only.
    pub allowed_origins: Vec<String>,
    pub audio: crate::audio::AudioSettings,
    /// Largest reassembled dynamic-channel message a server may send.
    pub max_dvc_message: usize,
    /// Per core: the budget large graphics messages share (see `rdp::large`).
    pub large_frames: usize,
    /// Connection tokens: keys, lifetimes, the replay table.
    pub tokens: crate::token::TokenSettings,
    /// Which servers targets may be, for named targets and tokens alike.
    pub target_policy: crate::policy::TargetPolicy,
}

impl Settings {
    /// A per-client-address limit is on (then the process keeps the table of addresses).
    pub fn client_limits(&self) -> bool {
        self.max_upgrades_per_ip > 0 || self.max_sessions_per_ip > 0
    }

    /// The large-message budget per core as used: never below what the largest message costs,
    /// so one always fits.
    pub fn large_frames(&self) -> usize {
        self.large_frames.max(
            self.max_dvc_message
                .saturating_mul(crate::rdp::large::COPIES),
        )
    }
}

/// Values given explicitly on the command line or in the environment, keyed by TOML name.
pub type Explicit = BTreeMap<&'static str, (String, Origin)>;

/// The layers before parsing.
#[derive(Debug, Default)]
pub struct Layers {
    explicit: Explicit,
    file: BTreeMap<String, String>,
    file_path: Option<PathBuf>,
    file_targets: toml::Table,
}

impl Layers {
    pub fn new(explicit: Explicit) -> Self {
        Layers {
            explicit,
            ..Layers::default()
        }
    }

    /// Adds the TOML file layer. Unknown keys are refused: a typo must not silently fall back
    /// to a default.
    pub fn with_file(mut self, path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::ReadFile {
            path: path.to_owned(),
            err,
        })?;
        self = self.with_file_text(path, &text)?;
        Ok(self)
    }

    pub fn with_file_text(mut self, path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Toml {
            path: path.to_owned(),
            msg: e.message().to_owned(),
        })?;
        match table.remove("targets") {
            Some(toml::Value::Table(t)) => self.file_targets = t,
            Some(_) => {
                return Err(ConfigError::UnknownKey {
                    path: path.to_owned(),
                    key: "targets (must be tables: [targets.NAME])".to_owned(),
                })
            }
            None => {}
        }
        let mut flat = BTreeMap::new();
        flatten("", &toml::Value::Table(table), &mut flat);
        for key in flat.keys() {
            if !keys::ALL.iter().any(|k| k.toml == key) {
                return Err(ConfigError::UnknownKey {
                    path: path.to_owned(),
                    key: key.clone(),
                });
            }
        }
        self.file = flat;
        self.file_path = Some(path.to_owned());
        Ok(self)
    }

    fn raw(&self, key: Key) -> Option<(String, Origin)> {
        if let Some((v, o)) = self.explicit.get(key.toml) {
            return Some((v.clone(), o.clone()));
        }
        if let (Some(v), Some(p)) = (self.file.get(key.toml), &self.file_path) {
            return Some((v.clone(), Origin::File(p.clone())));
        }
        key.default.map(|d| (d.to_owned(), Origin::Default))
    }

    /// Parses an optional value with `parse`, turning its complaint into a keyed error.
    fn get<T>(
        &self,
        key: Key,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some((value, origin)) => match parse(value.trim()) {
                Ok(v) => Ok(Some(v)),
                Err(why) => Err(ConfigError::Invalid {
                    key: key.toml,
                    value,
                    origin,
                    why,
                }),
            },
        }
    }

    /// For keys that have a built-in default: a missing value cannot happen.
    fn req<T>(
        &self,
        key: Key,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.get(key, parse)?.ok_or(ConfigError::Invalid {
            key: key.toml,
            value: String::new(),
            origin: Origin::Default,
            why: "no value and no default".to_owned(),
        })
    }

    /// Only the `tokens.*` settings: what `rdpwire token` needs, without the targets'
    /// passwords or anything else of the gateway's.
    pub fn resolve_tokens_with_env(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<crate::token::TokenSettings, ConfigError> {
        use keys::*;
        use parse::{count, duration};
        let read = |p: &Path| std::fs::read_to_string(p);
        let keys = self
            .get(TOKEN_KEYS, |text| {
                crate::token::KeyRing::parse(text, env, &read)
            })?
            .unwrap_or_default();
        Ok(crate::token::TokenSettings {
            keys,
            max_ttl: self.req(TOKEN_MAX_TTL, |s| {
                duration(s, Duration::from_secs(1), Duration::from_secs(24 * 3600))
            })?,
            clock_skew: self.req(TOKEN_CLOCK_SKEW, |s| {
                duration(s, Duration::ZERO, Duration::from_secs(600))
            })?,
            replay_cache: self.req(TOKEN_REPLAY_CACHE, |s| count(s, 1, 1 << 24))?,
        })
    }

    pub fn resolve(&self) -> Result<Settings, ConfigError> {
        self.resolve_with_env(&|k| std::env::var(k).ok())
    }

    /// `resolve`, with environment look-ups (target passwords) through `env`.
    pub fn resolve_with_env(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        use keys::*;
        use parse::{bool_value, count, duration, log_format, size, socket_addr, socket_buffer};
        let pool = |size_key: Key, count_key: Key| -> Result<PoolSpec, ConfigError> {
            Ok(PoolSpec {
                slot_size: self.req(size_key, |s| size(s, 64, 16 << 20))?,
                slots_per_session: self.req(count_key, |s| count(s, 1, 4096))?,
            })
        };
        Ok(Settings {
            listen: self.req(LISTEN, socket_addr)?,
            cores: self.get(CORES, |s| count(s, 1, 4096))?,
            drain_timeout: self.req(DRAIN_TIMEOUT, |s| {
                duration(s, Duration::ZERO, Duration::from_secs(24 * 3600))
            })?,
            http_timeout: self.req(HTTP_TIMEOUT, |s| {
                duration(s, Duration::from_millis(100), Duration::from_secs(300))
            })?,
            idle_timeout: self.req(IDLE_TIMEOUT, |s| {
                duration(
                    s,
                    Duration::from_millis(100),
                    Duration::from_secs(24 * 3600),
                )
            })?,
            hello_timeout: self.req(HELLO_TIMEOUT, |s| {
                duration(
                    s,
                    Duration::from_millis(100),
                    Duration::from_secs(24 * 3600),
                )
            })?,
            session_grace: self.req(SESSION_GRACE, |s| {
                duration(s, Duration::ZERO, Duration::from_secs(24 * 3600))
            })?,
            max_pending_http: self.req(MAX_PENDING_HTTP, |s| count(s, 1, 65536))?,
            max_upgrades_per_ip: self.req(MAX_UPGRADES_PER_IP, |s| count(s, 0, 1_000_000))? as u32,
            max_sessions_per_ip: self.req(MAX_SESSIONS_PER_IP, |s| count(s, 0, 1 << 24))? as u32,
            ws_max_message: self.req(WS_MAX_MESSAGE, |s| size(s, 1024, 16 << 20))?,
            log_format: self.req(LOG_FORMAT, log_format)?,
            memory_budget: self
                .get(MEMORY_BUDGET, |s| size(s, 1 << 20, usize::MAX))?
                .map(|b| b as u64),
            max_sessions: self.get(MAX_SESSIONS, |s| count(s, 1, 1 << 24))?,
            prefault: self.req(PREFAULT, bool_value)?,
            mlock: self.req(MLOCK, bool_value)?,
            huge_pages: self.req(HUGE_PAGES, bool_value)?,
            pools: Pools {
                frame_chunk: pool(FRAME_CHUNK_SIZE, FRAME_CHUNKS)?,
                surface_desc: pool(SURFACE_DESC_SIZE, SURFACE_DESCS)?,
                audio_buf: pool(AUDIO_BUF_SIZE, AUDIO_BUFS)?,
            },
            sockets: SocketBuffers {
                browser_sndbuf: self.req(BROWSER_SNDBUF, socket_buffer)?,
                browser_rcvbuf: self.req(BROWSER_RCVBUF, socket_buffer)?,
                server_sndbuf: self.req(SERVER_SNDBUF, socket_buffer)?,
                server_rcvbuf: self.req(SERVER_RCVBUF, socket_buffer)?,
            },
            targets: match &self.file_path {
                Some(path) => targets::parse(path, &self.file_targets, env)?,
                None => BTreeMap::new(),
            },
            default_target: None,
            allowed_origins: self
                .get(ALLOWED_ORIGINS, parse::origins)?
                .unwrap_or_default(),
            max_dvc_message: self.req(MAX_DVC_MESSAGE, |s| size(s, 64 << 10, 64 << 20))?,
            large_frames: self.req(LARGE_FRAMES, |s| size(s, 1 << 20, 1 << 30))?,
            tokens: self.resolve_tokens_with_env(env)?,
            target_policy: crate::policy::TargetPolicy::new(
                self.get(TARGET_ALLOW, crate::policy::parse_allowlist)?
                    .unwrap_or_default(),
                self.get(TARGET_PORTS, crate::policy::parse_port_list)?
                    .unwrap_or_default(),
            ),
            audio: crate::audio::AudioSettings {
                enabled: self.req(AUDIO, bool_value)?,
                bitrate: self.req(AUDIO_BITRATE, |s| {
                    count(s, 6_000, 510_000).map(|b| b as u32)
                })?,
                frame: self.req(AUDIO_FRAME, parse::audio_frame)?,
                complexity: self.req(AUDIO_COMPLEXITY, |s| count(s, 0, 10).map(|c| c as u8))?,
                max_queue: self.req(AUDIO_MAX_QUEUE, |s| {
                    duration(s, Duration::from_millis(20), Duration::from_secs(5))
                })?,
            },
        })
        .and_then(|mut s: Settings| {
            s.default_target = self.get(DEFAULT_TARGET, |v| Ok(v.to_owned()))?;
            if let Some(name) = &s.default_target {
                if !s.targets.contains_key(name) {
                    return Err(ConfigError::NoSuchDefaultTarget { name: name.clone() });
                }
            }
            Ok(s)
        })
    }
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        toml::Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        // Lists become the comma-separated form the command line uses.
        toml::Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            out.insert(prefix.to_owned(), parts.join(","));
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn explicit(pairs: &[(&'static str, &str, Origin)]) -> Explicit {
        pairs
            .iter()
            .map(|(k, v, o)| (*k, ((*v).to_owned(), o.clone())))
            .collect()
    }

    #[test]
    fn defaults_resolve() {
        let s = Layers::default().resolve().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.drain_timeout, Duration::from_secs(30));
        assert_eq!(s.pools.frame_chunk.slot_size, 16 * 1024);
        assert_eq!(s.memory_budget, None);
        assert_eq!(s.log_format, LogFormat::Human);
    }

    #[test]
    fn precedence_is_cli_then_env_then_file_then_default() {
        let file = "[memory]\nbudget = \"64MiB\"\nmax_sessions = 7\n[server]\ncores = 1\n";
        let layers = Layers::new(explicit(&[
            ("memory.budget", "128MiB", Origin::CommandLine),
            ("memory.max_sessions", "3", Origin::Environment),
        ]))
        .with_file_text(Path::new("x.toml"), file)
        .unwrap();
        let s = layers.resolve().unwrap();
        assert_eq!(s.memory_budget, Some(128 << 20));
        assert_eq!(s.max_sessions, Some(3));
        assert_eq!(s.cores, Some(1));
        assert_eq!(s.http_timeout, Duration::from_secs(10));
        assert_eq!(s.session_grace, Duration::from_secs(30));
    }

    #[test]
    fn bad_value_names_key_value_origin_and_reason() {
        let layers = Layers::new(explicit(&[("memory.budget", "lots", Origin::Environment)]));
        let msg = layers.resolve().unwrap_err().to_string();
        assert!(msg.contains("memory.budget"), "{msg}");
        assert!(msg.contains("\"lots\""), "{msg}");
        assert!(msg.contains("from the environment"), "{msg}");
        assert!(msg.contains("size"), "{msg}");
    }

    #[test]
    fn unknown_file_key_is_refused() {
        let err = Layers::default()
            .with_file_text(Path::new("r.toml"), "[memory]\nbudgett = \"1GiB\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("memory.budgett"), "{err}");
    }

    #[test]
    fn file_values_of_any_toml_type_parse() {
        let s = Layers::default()
            .with_file_text(
                Path::new("r.toml"),
                "[memory]\nprefault = true\nframe_chunks = 32\n[server]\nlog_format = \"json\"\n",
            )
            .unwrap()
            .resolve()
            .unwrap();
        assert!(s.prefault);
        assert_eq!(s.pools.frame_chunk.slots_per_session, 32);
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn tokens_and_target_policy_from_the_file_and_the_environment() {
        let hex = "00".repeat(32);
        let env = |k: &str| (k == "KEY_A").then(|| hex.clone());
        let s = Layers::default()
            .with_file_text(
                Path::new("gw.toml"),
                "[tokens]\nkeys = [\"3=env:KEY_A\"]\nmax_ttl = \"2m\"\nreplay_cache = 100\n\
                 [target_policy]\nallow = [\"10.0.0.0/8\", \"*.corp.example\"]\nports = [3389, \"5000-5001\"]\n",
            )
            .unwrap()
            .resolve_with_env(&env)
            .unwrap();
        assert_eq!(s.tokens.keys.minting().unwrap().id, 3);
        assert_eq!(s.tokens.max_ttl, Duration::from_secs(120));
        assert_eq!(s.tokens.clock_skew, Duration::from_secs(30));
        assert_eq!(
            s.tokens.replay_bytes(),
            100 * crate::token::replay::ENTRY_BYTES
        );
        let addr = |a: &str| [a.parse::<std::net::SocketAddr>().unwrap()];
        assert!(s
            .target_policy
            .check("pc.corp.example", &addr("192.0.2.1:5001"))
            .is_ok());
        assert!(s
            .target_policy
            .check("pc.corp.example", &addr("192.0.2.1:22"))
            .is_err());
        assert!(s
            .target_policy
            .check("other", &addr("192.0.2.1:3389"))
            .is_err());

        let layers = Layers::new(explicit(&[(
            "tokens.keys",
            "1=env:MISSING",
            Origin::Environment,
        )]));
        let e = layers.resolve_with_env(&env).unwrap_err().to_string();
        assert!(
            e.contains("tokens.keys") && e.contains("MISSING is not set") && !e.contains(&hex),
            "{e}"
        );
        let layers = Layers::new(explicit(&[(
            "target_policy.allow",
            "10.0.0.1/8",
            Origin::CommandLine,
        )]));
        let e = layers.resolve().unwrap_err().to_string();
        assert!(
            e.contains("target_policy.allow") && e.contains("10.0.0.0/8"),
            "{e}"
        );
    }

    #[test]
    fn file_origin_is_reported() {
        let err = Layers::default()
            .with_file_text(Path::new("gw.toml"), "[server]\nlisten = \"nowhere\"\n")
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("from gw.toml"), "{err}");
        assert!(err.to_string().contains("server.listen"), "{err}");
    }
}

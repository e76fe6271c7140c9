//! The one table of settings. CLI flags, `RDPWIRE_*` environment variables, TOML keys and the
//! reference in the README are all derived from it, so the three sources can never drift apart.

/// One setting: where it can be given and what it defaults to.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// Dotted TOML path, e.g. `memory.budget`; also the name used in error messages.
    pub toml: &'static str,
    /// Long CLI flag without the dashes.
    pub flag: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Default as it would be written on the command line; `None` when computed at start-up.
    pub default: Option<&'static str>,
    pub help: &'static str,
}

macro_rules! keys {
    ($($name:ident: $toml:literal, $flag:literal, $env:literal, $default:expr, $help:literal;)*) => {
        $(pub const $name: Key = Key { toml: $toml, flag: $flag, env: $env, default: $default, help: $help };)*
        pub const ALL: &[Key] = &[$($name),*];
    };
}

keys! {
    LISTEN: "server.listen", "listen", "RDPWIRE_LISTEN", Some("127.0.0.1:8080"),
        "address and port for HTTP and WebSocket (port 0 picks a free port)";
    CORES: "server.cores", "cores", "RDPWIRE_CORES", None,
        "number of executors; default: every CPU in the process's affinity mask";
    DRAIN_TIMEOUT: "server.drain_timeout", "drain-timeout", "RDPWIRE_DRAIN_TIMEOUT", Some("30s"),
        "how long running sessions may continue after SIGTERM";
    HTTP_TIMEOUT: "server.http_timeout", "http-timeout", "RDPWIRE_HTTP_TIMEOUT", Some("10s"),
        "time a client has to send a complete HTTP request head";
    IDLE_TIMEOUT: "server.idle_timeout", "idle-timeout", "RDPWIRE_IDLE_TIMEOUT", Some("60s"),
        "a session whose browser sends nothing for this long is closed (the page pings every 2 s)";
    HELLO_TIMEOUT: "server.hello_timeout", "hello-timeout", "RDPWIRE_HELLO_TIMEOUT", Some("10s"),
        "time a page has, once its WebSocket is open, to send its ClientHello or TokenHello (pages send it at once); a session still without one is closed with 1008";
    SESSION_GRACE: "server.session_grace", "session-grace", "RDPWIRE_SESSION_GRACE", Some("30s"),
        "how long a desktop whose browser went away (tab closed, network lost) is kept for the page to resume it with its ticket; it holds its memory share and session slot meanwhile; 0 ends it at once";
    MAX_PENDING_HTTP: "server.max_pending_http", "max-pending-http", "RDPWIRE_MAX_PENDING_HTTP", Some("16"),
        "HTTP connections per core that may be reading a request at once";
    MAX_UPGRADES_PER_IP: "server.max_upgrades_per_ip", "max-upgrades-per-ip", "RDPWIRE_MAX_UPGRADES_PER_IP", Some("20"),
        "WebSocket upgrades a second one client address may make (IPv6: one /64), in bursts of as many; more get 429; 0: no limit";
    MAX_SESSIONS_PER_IP: "server.max_sessions_per_ip", "max-sessions-per-ip", "RDPWIRE_MAX_SESSIONS_PER_IP", Some("100"),
        "sessions one client address (IPv6: one /64) may hold at once, the whole gateway counted; more get 429; raise it for many users behind one NAT; 0: no limit";
    WS_MAX_MESSAGE: "server.ws_max_message", "ws-max-message", "RDPWIRE_WS_MAX_MESSAGE", Some("8KiB"),
        "largest browser-to-gateway WebSocket message; larger ones close the session with 1009";
    DEFAULT_TARGET: "server.default_target", "default-target", "RDPWIRE_DEFAULT_TARGET", None,
        "target opened by a page that names none (a [targets.NAME] of the file)";
    ALLOWED_ORIGINS: "server.allowed_origins", "allowed-origins", "RDPWIRE_ALLOWED_ORIGINS", None,
        "web origins that may open sessions, comma-separated (e.g. https://portal.example); default: the gateway's own origin only; * allows any";
    TOKEN_KEYS: "tokens.keys", "token-keys", "RDPWIRE_TOKEN_KEYS", None,
        "keys for connection tokens, comma-separated ID=file:PATH or ID=env:VAR (ID 0-255; the file or variable holds 32 random bytes as 64 hex digits or base64); the first mints, at most two verify; default: tokens are refused";
    TOKEN_MAX_TTL: "tokens.max_ttl", "token-max-ttl", "RDPWIRE_TOKEN_MAX_TTL", Some("5m"),
        "longest lifetime (exp - iat) a connection token may have";
    TOKEN_CLOCK_SKEW: "tokens.clock_skew", "token-clock-skew", "RDPWIRE_TOKEN_CLOCK_SKEW", Some("30s"),
        "how far the minting portal's clock may be from the gateway's";
    TOKEN_REPLAY_CACHE: "tokens.replay_cache", "token-replay-cache", "RDPWIRE_TOKEN_REPLAY_CACHE", Some("65536"),
        "redeemed tokens remembered until they expire, so each is used once; when full, new tokens are refused until old ones expire";
    TARGET_ALLOW: "target_policy.allow", "target-allow", "RDPWIRE_TARGET_ALLOW", None,
        "targets the gateway may connect to, comma-separated networks (10.0.0.0/8, 192.0.2.7) and host names (rdp.example.com, *.corp.example); loopback, link-local, cloud metadata and other special addresses need a network inside their range (127.0.0.1/32); default: any host whose addresses are not special";
    TARGET_PORTS: "target_policy.ports", "target-ports", "RDPWIRE_TARGET_PORTS", None,
        "ports targets may use, comma-separated numbers or ranges (3389,3390-3399); default: any";
    LOG_FORMAT: "server.log_format", "log-format", "RDPWIRE_LOG_FORMAT", Some("human"),
        "log format: human or json";
    MEMORY_BUDGET: "memory.budget", "memory-budget", "RDPWIRE_MEMORY_BUDGET", None,
        "memory the gateway may use; default: 90% of the cgroup v2 memory.max, else 1GiB";
    MAX_SESSIONS: "memory.max_sessions", "max-sessions", "RDPWIRE_MAX_SESSIONS", None,
        "lower the session cap computed from the budget";
    PREFAULT: "memory.prefault", "prefault", "RDPWIRE_PREFAULT", Some("false"),
        "touch every arena page at start-up";
    MLOCK: "memory.mlock", "mlock", "RDPWIRE_MLOCK", Some("false"),
        "lock the arenas in RAM (needs a memlock limit above the arena size)";
    HUGE_PAGES: "memory.huge_pages", "huge-pages", "RDPWIRE_HUGE_PAGES", Some("false"),
        "ask for transparent huge pages for the arenas where the kernel allows";
    FRAME_CHUNK_SIZE: "memory.frame_chunk_size", "frame-chunk-size", "RDPWIRE_FRAME_CHUNK_SIZE", Some("16KiB"),
        "size of one frame chunk slot";
    FRAME_CHUNKS: "memory.frame_chunks", "frame-chunks", "RDPWIRE_FRAME_CHUNKS", Some("16"),
        "frame chunk slots per session";
    SURFACE_DESC_SIZE: "memory.surface_desc_size", "surface-desc-size", "RDPWIRE_SURFACE_DESC_SIZE", Some("256B"),
        "size of one surface descriptor slot";
    SURFACE_DESCS: "memory.surface_descs", "surface-descs", "RDPWIRE_SURFACE_DESCS", Some("16"),
        "surface descriptor slots per session";
    AUDIO_BUF_SIZE: "memory.audio_buf_size", "audio-buf-size", "RDPWIRE_AUDIO_BUF_SIZE", Some("4KiB"),
        "size of one audio buffer slot";
    AUDIO_BUFS: "memory.audio_bufs", "audio-bufs", "RDPWIRE_AUDIO_BUFS", Some("4"),
        "audio buffer slots per session";
    AUDIO: "audio.enabled", "audio", "RDPWIRE_AUDIO", Some("true"),
        "open the server's audio output channel and stream its sound to the page";
    AUDIO_BITRATE: "audio.bitrate", "audio-bitrate", "RDPWIRE_AUDIO_BITRATE", Some("64000"),
        "Opus bit rate, bits per second, for PCM the gateway encodes (6000-510000)";
    AUDIO_FRAME: "audio.frame", "audio-frame", "RDPWIRE_AUDIO_FRAME", Some("20ms"),
        "Opus packet length: 20ms, or 10ms for lower delay at a higher bit rate overhead";
    AUDIO_COMPLEXITY: "audio.complexity", "audio-complexity", "RDPWIRE_AUDIO_COMPLEXITY", Some("5"),
        "libopus encoder complexity 0-10: higher costs more CPU per stream for a little more quality";
    AUDIO_MAX_QUEUE: "audio.max_queue", "audio-max-queue", "RDPWIRE_AUDIO_MAX_QUEUE", Some("200ms"),
        "most sound that may wait for a slow page; older packets are dropped";
    MAX_DVC_MESSAGE: "memory.max_dvc_message", "max-dvc-message", "RDPWIRE_MAX_DVC_MESSAGE", Some("2MiB"),
        "largest dynamic-channel message (one reassembled graphics PDU) an RDP server may send; a larger one ends its session";
    LARGE_FRAMES: "memory.large_frames", "large-frames", "RDPWIRE_LARGE_FRAMES", Some("8MiB"),
        "per core: heap that graphics messages above 16 KiB share (each costs 4x its size while it is processed); at least 4x --max-dvc-message";
    BROWSER_SNDBUF: "memory.browser_sndbuf", "browser-sndbuf", "RDPWIRE_BROWSER_SNDBUF", Some("32KiB"),
        "SO_SNDBUF of browser sockets (the kernel doubles it; the doubled value is budgeted)";
    BROWSER_RCVBUF: "memory.browser_rcvbuf", "browser-rcvbuf", "RDPWIRE_BROWSER_RCVBUF", Some("8KiB"),
        "SO_RCVBUF of browser sockets";
    SERVER_SNDBUF: "memory.server_sndbuf", "server-sndbuf", "RDPWIRE_SERVER_SNDBUF", Some("8KiB"),
        "SO_SNDBUF of RDP server sockets";
    SERVER_RCVBUF: "memory.server_rcvbuf", "server-rcvbuf", "RDPWIRE_SERVER_RCVBUF", Some("32KiB"),
        "SO_RCVBUF of RDP server sockets";
}

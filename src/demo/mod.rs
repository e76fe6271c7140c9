//! The embedded demo RDP server: a live desktop on loopback, no Windows server needed.
//!
//! Built on IronRDP's server-side crates of the gateway's generation (`ironrdp-acceptor`
//! 0.12, `ironrdp-egfx` 0.5). Std threads and blocking sockets: one thread accepts, one
//! thread serves each connection. Security: TLS with a self-signed certificate made at start,
//! and NLA (CredSSP with NTLM, `ironrdp-acceptor`'s server side) checked against
//! [`DemoOptions`]' credentials, any domain accepted. A client that asks for TLS only has the
//! same credentials checked from its Client Info PDU (exact match, no domain); a refusal is a
//! Set Error Info PDU, then the connection closes. Wrong credentials are logged with the reason
//! and counted in [`Observed::auth_failures`].
//!
//! Graphics go over EGFX (the graphics pipeline dynamic channel) as AVC420 H.264 frames from
//! OpenH264 (full-range BT.709, as MS-RDPEGFX wants), one surface the size the client asked
//! for (padded to 16 for the encoder, at most 3840×2160), at most [`FPS`] per second and never
//! more than [`MAX_FRAMES_IN_FLIGHT`] frames ahead of the client's frame acknowledgements: a
//! client that stops acknowledging stops the stream. Clients without EGFX or without AVC420
//! connect but get no pictures (logged).
//!
//! Sound goes over the static RDPSND channel (MS-RDPEA) when the client joins it: the server
//! offers PCM 16-bit stereo at 44.1 and 48 kHz and Opus 48 kHz stereo, and sends in the
//! format [`DemoOptions::audio`] names (else any PCM the client accepted, else nothing). Typed
//! keys blip, the [`painter::TUNE_BUTTON`] plays 440 Hz then 880 Hz, F9 toggles a 660 Hz tone:
//! 20 ms waves in real time, never more than [`sound::MAX_LEAD_MS`] ahead, at most
//! [`sound::MAX_WAVES_IN_FLIGHT`] unconfirmed (a client that stops confirming stops the
//! sound, and what falls due meanwhile is dropped, not queued).
//!
//! With [`Content::Replay`] the server is a load generator instead: every connection loops
//! over one shared pre-encoded [`reel::Reel`] at the reel's frame rate through the same EGFX
//! path and flow control, each access unit stamped with its send time ([`stamp`]); no painting,
//! encoding or sound per connection, so one process can serve hundreds of sessions
//! ([`DemoOptions::max_connections`]).
//!
//! - [`painter`]: the desktop itself, pure (input events in, RGBA out);
//! - [`input`]: RDP input events to desktop events (scancodes with a US layout, unicode);
//! - [`sound`]: what plays when, synthesis, pacing and encoding, pure (a clock in, waves out);
//! - `rdpsnd`: the sound channel (IronRDP's RDPSND server around a [`sound::AudioStream`]);
//! - [`reel`]: pre-encoded H.264 for replay; [`stamp`]: send stamps in access units;
//! - `encoder`: OpenH264; `tls`: certificate and rustls; `io`: blocking I/O for IronRDP's
//!   async acceptor; `session`: one connection.

mod encoder;
#[doc(hidden)]
pub mod hostile;
pub mod input;
mod io;
pub mod painter;
mod rdpsnd;
pub mod reel;
mod session;
pub mod sound;
pub mod stamp;
mod tls;

use std::collections::HashMap;
use std::io as stdio;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ironrdp_pdu::rdp::client_info::Credentials;
use tracing::{debug, info, warn};

pub use self::encoder::FPS;
use self::painter::DesktopEvent;
pub use self::session::MAX_FRAMES_IN_FLIGHT;
pub use self::sound::DemoAudio;

/// Connections served at once; more are refused (closed at once).
pub const MAX_CONNECTIONS: usize = 16;
/// How long dropping the server lets sessions end by themselves before cutting them off.
const STOP_GRACE: Duration = Duration::from_millis(500);
/// How often the accept loop checks whether the server is stopping.
const ACCEPT_POLL: Duration = Duration::from_millis(20);
/// Clicks kept in [`Observed::clicks`].
const MAX_OBSERVED_CLICKS: usize = 1024;
/// Characters kept in [`Observed::typed`].
const MAX_OBSERVED_TYPED: usize = 4096;

/// How to start the demo server.
#[derive(Clone)]
pub struct DemoOptions {
    /// Where to listen; `127.0.0.1:0` picks a free port (see [`DemoServer::addr`]).
    pub bind: SocketAddr,
    /// The one account the server accepts.
    pub username: String,
    pub password: String,
    /// The sound format to send in (`off`: no sound channel; always off with
    /// [`Content::Replay`]).
    pub audio: DemoAudio,
    /// What the sessions show.
    pub content: Content,
    /// Connections served at once; more are refused (closed at once). [`MAX_CONNECTIONS`] for
    /// `rdpwire demo`; a load test raises it (each connection is a thread).
    pub max_connections: usize,
}

/// What the demo server's sessions show.
#[derive(Debug, Clone, Default)]
pub enum Content {
    /// The live demo desktop: painted and encoded per session and frame, reacting to input,
    /// with sound.
    #[default]
    Desktop,
    /// A load-test server: every connection loops over one pre-encoded reel at the reel's fps,
    /// each access unit stamped with its send time ([`stamp`]); no painting, no encoding, no
    /// sound, input ignored. Connections start at different frames of the reel.
    Replay(Arc<reel::Reel>),
    /// Tests only: the real connection sequence, then the crafted steps instead of frames,
    /// once the graphics channel is ready (see [`hostile`]).
    #[doc(hidden)]
    Hostile(Arc<Vec<hostile::Attack>>),
}

impl std::fmt::Debug for DemoOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoOptions")
            .field("bind", &self.bind)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("audio", &self.audio)
            .field("content", &self.content)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// Why the demo server failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: stdio::Error,
    },
    #[error("the demo username must not be empty")]
    EmptyUsername,
    #[error("cannot generate the self-signed certificate: {0}")]
    Certificate(rcgen::Error),
    #[error("invalid tls setup: {0}")]
    Tls(rustls::Error),
    #[error("cannot start a demo server thread: {0}")]
    Thread(stdio::Error),
    #[error("rdp connection sequence failed: {0}")]
    Handshake(String),
    #[error("the client left during the connection sequence: {0}")]
    ClientLeft(String),
    #[error("authentication failed: {0}")]
    AuthenticationFailed(String),
    #[error("h.264 encoder: {0}")]
    Encoder(String),
    #[error("audio: {0}")]
    Audio(String),
    #[error("unknown audio format {0:?}: use pcm44, pcm48, opus or off")]
    AudioFormatName(String),
    #[error("replay reel: {0}")]
    Reel(String),
    #[error("rdp protocol error: {0}")]
    Protocol(String),
    #[error("socket error: {0}")]
    Io(#[from] stdio::Error),
}

/// What the server saw from its clients, for tests (a snapshot, see [`DemoServer::observed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Button presses at desktop coordinates, oldest first (the last 1024).
    pub clicks: Vec<(u16, u16)>,
    /// Text typed so far, all sessions together (`\n` for Enter, Backspace removes).
    pub typed: String,
    /// Sessions that completed the connection sequence (authenticated).
    pub connections: usize,
    /// Sessions running now.
    pub active: usize,
    /// Connections refused for wrong credentials.
    pub auth_failures: usize,
    /// EGFX frames sent, all sessions together.
    pub frames_sent: u64,
    /// EGFX frame acknowledgements received, all sessions together.
    pub frames_acked: u64,
    /// Desktop size of the most recent session.
    pub desktop_size: Option<(u16, u16)>,
    /// Sessions that agreed on a sound format (sound is sent from then on).
    pub audio_sessions: usize,
    /// Waves (20 ms of sound each) sent, all sessions together.
    pub waves_sent: u64,
    /// Waves the clients confirmed (each counted once).
    pub waves_confirmed: u64,
    /// Waves not sent because their time had passed (client not confirming, or a stall).
    pub waves_dropped: u64,
}

/// A running demo server. Dropping it stops it: the listener closes, sessions end and
/// every thread is joined.
pub struct DemoServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// State shared by the accept thread, the session threads and [`DemoServer`].
struct Shared {
    identity: tls::TlsIdentity,
    credentials: Credentials,
    audio: DemoAudio,
    content: Content,
    max_connections: usize,
    stop: AtomicBool,
    observed: Mutex<Observed>,
    frames_sent: AtomicU64,
    frames_acked: AtomicU64,
    waves_sent: AtomicU64,
    waves_confirmed: AtomicU64,
    waves_dropped: AtomicU64,
    /// Clones of the live sessions' sockets, to unblock them on stop.
    sockets: Mutex<HashMap<u64, TcpStream>>,
}

impl Shared {
    fn lock_observed(&self) -> MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_sockets(&self) -> MutexGuard<'_, HashMap<u64, TcpStream>> {
        self.sockets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, event: DesktopEvent) {
        let mut observed = self.lock_observed();
        match event {
            DesktopEvent::Click { x, y } => {
                if observed.clicks.len() >= MAX_OBSERVED_CLICKS {
                    observed.clicks.remove(0);
                }
                observed.clicks.push((x, y));
            }
            DesktopEvent::Char(c) => {
                if observed.typed.chars().count() < MAX_OBSERVED_TYPED {
                    observed.typed.push(c);
                }
            }
            DesktopEvent::Backspace => {
                observed.typed.pop();
            }
            DesktopEvent::Enter => observed.typed.push('\n'),
            DesktopEvent::ToggleTone => {}
        }
    }
}

impl DemoServer {
    /// Binds, makes a certificate and starts accepting connections.
    pub fn start(opts: DemoOptions) -> Result<DemoServer, DemoError> {
        if opts.username.is_empty() {
            return Err(DemoError::EmptyUsername);
        }
        if let Content::Replay(reel) = &opts.content {
            reel.check()?;
        }
        // A replay server is a graphics load: its sessions have no sound channel.
        let audio = match opts.content {
            Content::Desktop => opts.audio,
            Content::Replay(_) | Content::Hostile(_) => DemoAudio::Off,
        };
        let identity = tls::self_signed(&[])?;
        let listener = TcpListener::bind(opts.bind).map_err(|source| DemoError::Bind {
            addr: opts.bind,
            source,
        })?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            identity,
            credentials: Credentials {
                username: opts.username,
                password: opts.password,
                domain: None,
            },
            audio,
            content: opts.content,
            max_connections: opts.max_connections.max(1),
            stop: AtomicBool::new(false),
            observed: Mutex::new(Observed::default()),
            frames_sent: AtomicU64::new(0),
            frames_acked: AtomicU64::new(0),
            waves_sent: AtomicU64::new(0),
            waves_confirmed: AtomicU64::new(0),
            waves_dropped: AtomicU64::new(0),
            sockets: Mutex::new(HashMap::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name("rdpwire-demo-accept".to_owned())
            .spawn(move || accept_loop(&listener, &accept_shared))
            .map_err(DemoError::Thread)?;
        match &shared.content {
            Content::Desktop => info!(%addr, %audio, "demo rdp server listening"),
            Content::Hostile(steps) => info!(%addr, ?steps, "hostile rdp server listening"),
            Content::Replay(reel) => info!(
                %addr,
                width = reel.width,
                height = reel.height,
                fps = reel.fps,
                frames = reel.frames.len(),
                kbit_per_s = reel.bitrate_bps() / 1000,
                max_connections = shared.max_connections,
                "replay rdp server listening"
            ),
        }
        Ok(DemoServer {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of what the server saw so far.
    pub fn observed(&self) -> Observed {
        let mut observed = self.shared.lock_observed().clone();
        observed.frames_sent = self.shared.frames_sent.load(Ordering::Relaxed);
        observed.frames_acked = self.shared.frames_acked.load(Ordering::Relaxed);
        observed.waves_sent = self.shared.waves_sent.load(Ordering::Relaxed);
        observed.waves_confirmed = self.shared.waves_confirmed.load(Ordering::Relaxed);
        observed.waves_dropped = self.shared.waves_dropped.load(Ordering::Relaxed);
        observed
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Shutting the reading side ends blocked reads (a session still in the connection
        // sequence, or waiting for input); running sessions also see the flag within a frame
        // period and say goodbye (disconnect ultimatum, close_notify).
        for socket in self.shared.lock_sockets().values() {
            let _ = socket.shutdown(Shutdown::Read);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while !self.shared.lock_sockets().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        // A session stuck writing to a client that stopped reading is cut off.
        for socket in self.shared.lock_sockets().values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take() {
            if acceptor.join().is_err() {
                warn!("the demo accept thread panicked");
            }
        }
        debug!(addr = %self.addr, "demo rdp server stopped");
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut sessions: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        sessions.retain(|h| !h.is_finished());
        match listener.accept() {
            Ok((tcp, peer)) => {
                if sessions.len() >= shared.max_connections {
                    warn!(%peer, max = shared.max_connections, "demo server busy; connection refused");
                    continue;
                }
                next_id += 1;
                match spawn_session(next_id, tcp, peer, shared) {
                    Ok(handle) => sessions.push(handle),
                    Err(e) => warn!(%peer, error = %e, "cannot serve a demo connection"),
                }
            }
            Err(e) if e.kind() == stdio::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == stdio::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!(error = %e, "demo accept failed");
                thread::sleep(ACCEPT_POLL);
            }
        }
    }
    for handle in sessions {
        if handle.join().is_err() {
            warn!("a demo session thread panicked");
        }
    }
}

fn spawn_session(
    id: u64,
    tcp: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Result<JoinHandle<()>, DemoError> {
    tcp.set_nonblocking(false)?;
    shared.lock_sockets().insert(id, tcp.try_clone()?);
    let session_shared = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name(format!("rdpwire-demo-{id}"))
        .spawn(move || {
            let shared = session_shared;
            debug!(%peer, session = id, "demo connection accepted");
            shared.lock_observed().active += 1;
            let result = session::serve(tcp, peer, id, &shared);
            shared.lock_observed().active -= 1;
            shared.lock_sockets().remove(&id);
            match result {
                Ok(end) => info!(%peer, session = id, ?end, "demo rdp session ended"),
                Err(DemoError::AuthenticationFailed(reason)) => {
                    shared.lock_observed().auth_failures += 1;
                    warn!(%peer, session = id, %reason, "demo rdp logon refused");
                }
                Err(DemoError::ClientLeft(reason)) => {
                    info!(%peer, session = id, %reason, "demo rdp client left before the session started");
                }
                Err(e) => warn!(%peer, session = id, error = %e, "demo rdp session failed"),
            }
        });
    match spawned {
        Ok(handle) => Ok(handle),
        Err(e) => {
            shared.lock_sockets().remove(&id);
            Err(DemoError::Thread(e))
        }
    }
}

//! One client connection: the RDP handshake (TLS, CredSSP) and the active session loop.
//!
//! Thread per connection, blocking sockets. The loop alternates between reading client PDUs
//! (with a read timeout that ends at the next frame or sound deadline), producing a frame and
//! sending the sound waves that are due. Sound is paced on its own 20 ms clock, checked on
//! every turn of the loop, so a slow frame delays it by at most that frame (less than the
//! sound's lead) and sound never waits for frame acknowledgements.
//!
//! With [`Content::Replay`] a session paints and encodes nothing: each tick sends the reel's
//! next access unit, stamped ([`super::stamp`]), through the same EGFX server and the same
//! flow control, at the reel's frame rate; it has no sound channel and ignores input.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ironrdp_acceptor::{Acceptor, AcceptorResult, BeginResult, DesktopSize};
use ironrdp_async::Framed;
use ironrdp_connector::{ConnectorError, ConnectorErrorKind, ServerName};
use ironrdp_core::{decode, encode_vec, WriteBuf};
use ironrdp_dvc::pdu::{DataFirstPdu, DataPdu, DrdynvcDataPdu};
use ironrdp_dvc::{DrdynvcServer, DvcMessage};
use ironrdp_egfx::pdu::{Avc420Region, CapabilitiesAdvertisePdu, CapabilitySet};
use ironrdp_egfx::server::{GraphicsPipelineHandler, GraphicsPipelineServer};
use ironrdp_pdu::input::fast_path::FastPathInput;
use ironrdp_pdu::mcs::{DisconnectProviderUltimatum, DisconnectReason, McsMessage};
use ironrdp_pdu::nego::SecurityProtocol;
use ironrdp_pdu::rdp::capability_sets::{self as caps, CapabilitySet as RdpCapabilitySet};
use ironrdp_pdu::rdp::headers::{ShareControlHeader, ShareControlPdu, ShareDataPdu};
use ironrdp_pdu::x224::X224;
use ironrdp_pdu::Action;
use ironrdp_svc::{server_encode_svc_messages, ChannelFlags, StaticChannelSet, SvcMessage};
use rustls::{ServerConnection, StreamOwned};
use tracing::{debug, info, warn};

use super::encoder::{FPS, H264};
use super::hostile::{Attack, RawPdu};
use super::input::InputMapper;
use super::io::{block_on, Blocking, NoNetwork};
use super::painter::{Desktop, DesktopEvent, FrameClock};
use super::rdpsnd::SoundChannel;
use super::reel::Reel;
use super::sound::{DemoAudio, Sound};
use super::{stamp, Content, DemoError, Shared};

/// Largest desktop the demo paints (OpenH264's limit); larger requests are clamped.
pub const MAX_DESKTOP: DesktopSize = DesktopSize {
    width: 3840,
    height: 2160,
};
/// Used when the client asks for nothing usable.
const DEFAULT_DESKTOP: DesktopSize = DesktopSize {
    width: 1024,
    height: 768,
};
/// No read of the connection sequence waits longer than this for the client.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// A write that makes no progress for this long ends the session.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// After this long without an open graphics pipeline, say so once in the log.
const GFX_GRACE: Duration = Duration::from_secs(5);
/// Frames sent but not yet acknowledged before the stream pauses (EGFX flow control).
pub const MAX_FRAMES_IN_FLIGHT: u32 = 3;
/// H.264 quantization parameter announced for the region (informational for clients).
const REGION_QP: u8 = 22;
/// Channel PDUs are written to the socket in batches of about this many bytes.
const SEND_BATCH: usize = 64 << 10;
/// Replay connections start this many reel frames apart (7 is prime to the reels' lengths),
/// so the key frames of many sessions do not all fall on the same tick.
const REPLAY_START_STRIDE: usize = 7;

type TlsStream = StreamOwned<ServerConnection, TcpStream>;

/// What one read of the client's socket gave.
enum Received {
    Bytes,
    Nothing,
    Closed(End),
}

/// Why a session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    ClientClosed,
    ClientShutdown,
    ServerStopping,
}

/// Serves one accepted TCP connection (the server's `number`th, from 1) to its end.
pub fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    number: u64,
    shared: &Arc<Shared>,
) -> Result<End, DemoError> {
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let accepted = handshake(tcp, peer, shared)?;
    let mut session = Session::new(accepted, number, shared)?;
    let (width, height) = session.picture.size();
    match &session.picture {
        Picture::Desktop(_) => info!(%peer, width, height, "demo rdp session started"),
        Picture::Replay(replay) => debug!(
            %peer,
            width,
            height,
            start_frame = replay.next,
            "replay rdp session started"
        ),
        Picture::Hostile { .. } => info!(%peer, "hostile rdp session started"),
    }
    {
        let mut observed = shared.lock_observed();
        observed.connections += 1;
        observed.desktop_size = Some((width, height));
    }
    let end = match session.run() {
        Err(DemoError::Io(e)) if is_disconnect(&e) => Ok(End::ClientClosed),
        other => other,
    };
    session.close(matches!(end, Ok(End::ServerStopping)));
    end
}

struct Accepted {
    stream: TlsStream,
    leftover: Vec<u8>,
    result: AcceptorResult,
}

fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Result<Accepted, DemoError> {
    let security = SecurityProtocol::SSL | SecurityProtocol::HYBRID | SecurityProtocol::HYBRID_EX;
    // The desktop is painted at the size the client asks for; a reel has the size it was
    // encoded at, and the client is told so.
    let (desktop, honor_client) = match &shared.content {
        Content::Desktop | Content::Hostile(_) => (DEFAULT_DESKTOP, Some(MAX_DESKTOP)),
        Content::Replay(reel) => (
            DesktopSize {
                width: reel.width,
                height: reel.height,
            },
            None,
        ),
    };
    let mut acceptor = Acceptor::new(
        security,
        desktop,
        server_capabilities(desktop),
        Some(shared.credentials.clone()),
    );
    acceptor.set_honor_client_desktop_size(honor_client);
    let gfx = GraphicsPipelineServer::new(Box::new(GfxEvents {
        shared: Arc::clone(shared),
    }));
    acceptor.attach_static_channel(DrdynvcServer::new().with_dynamic_channel(gfx));
    if shared.audio != DemoAudio::Off {
        acceptor.attach_static_channel(SoundChannel::new(shared.audio, Arc::clone(shared)));
    }

    let framed = Framed::<Blocking<TcpStream>>::new(tcp);
    let tcp = match block_on(ironrdp_acceptor::accept_begin(framed, &mut acceptor)) {
        Ok(BeginResult::ShouldUpgrade(tcp)) => tcp,
        Ok(BeginResult::Continue(_)) => {
            return Err(DemoError::Handshake(
                "the client did not negotiate tls".to_owned(),
            ));
        }
        Err(e) => return Err(classify("negotiation", &e, false)),
    };

    let tls = ServerConnection::new(Arc::clone(&shared.identity.config)).map_err(DemoError::Tls)?;
    let mut stream = StreamOwned::new(tls, tcp);
    acceptor.mark_security_upgrade_as_done();
    // The framed stream borrows the TLS stream, so a refusal can still be written after the
    // acceptor gave up on it.
    let mut framed = Framed::<Blocking<&mut TlsStream>>::new(&mut stream);

    if acceptor.should_perform_credssp() {
        debug!(%peer, "nla: credssp with ntlm");
        let client_name = ServerName::new(peer.ip().to_string());
        let mut network = NoNetwork;
        let credssp = ironrdp_acceptor::accept_credssp(
            &mut framed,
            &mut acceptor,
            &mut network,
            client_name,
            shared.identity.public_key.clone(),
            None,
        );
        // On failure the acceptor has told the client already (TSRequest error code, and the
        // Early User Authorization Result with HYBRID_EX).
        if let Err(e) = block_on(credssp) {
            drop(framed);
            close_tls(&mut stream);
            return Err(classify("nla (credssp)", &e, true));
        }
    }

    let finalized = block_on(ironrdp_acceptor::accept_finalize(framed, &mut acceptor));
    let (framed, result) = match finalized {
        Ok(done) => done,
        Err(e) => {
            let error = classify("connection sequence", &e, is_credentials_error(&e));
            if matches!(error, DemoError::AuthenticationFailed(_)) {
                // TLS-only logon refused at Client Info: say so with a Set Error Info PDU
                // (when the client supports it) before closing.
                let mut buf = WriteBuf::new();
                if let Ok(n) = acceptor.encode_access_denied(&mut buf) {
                    if let Some(bytes) = buf.filled().get(..n) {
                        let _ = stream.write_all(bytes);
                    }
                }
            }
            close_tls(&mut stream);
            return Err(error);
        }
    };
    let (_, leftover) = framed.into_inner();
    let leftover = leftover.to_vec();
    Ok(Accepted {
        stream,
        leftover,
        result,
    })
}

fn close_tls(stream: &mut TlsStream) {
    stream.conn.send_close_notify();
    let _ = stream.flush();
    let _ = stream.sock.shutdown(std::net::Shutdown::Both);
}

fn is_credentials_error(e: &ConnectorError) -> bool {
    matches!(
        e.kind(),
        ConnectorErrorKind::General | ConnectorErrorKind::AccessDenied
    ) && format!("{}", e.report()).contains("invalid credentials")
}

/// The peer leaving, a refused logon, or another failure of the connection sequence.
fn classify(phase: &str, e: &ConnectorError, logon: bool) -> DemoError {
    let report = format!("{phase}: {}", e.report());
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<io::Error>().is_some_and(is_disconnect) {
            return DemoError::ClientLeft(report);
        }
        source = s.source();
    }
    if logon {
        DemoError::AuthenticationFailed(report)
    } else {
        DemoError::Handshake(report)
    }
}

/// I/O errors that mean the peer went away.
fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
    )
}

/// Capability sets the server announces in its Demand Active PDU.
fn server_capabilities(size: DesktopSize) -> Vec<RdpCapabilitySet> {
    vec![
        RdpCapabilitySet::General(caps::General {
            extra_flags: caps::GeneralExtraFlags::FASTPATH_OUTPUT_SUPPORTED,
            refresh_rect_support: true,
            suppress_output_support: true,
            ..Default::default()
        }),
        RdpCapabilitySet::Bitmap(caps::Bitmap {
            pref_bits_per_pix: 32,
            desktop_width: size.width,
            desktop_height: size.height,
            desktop_resize_flag: true,
            drawing_flags: caps::BitmapDrawingFlags::empty(),
        }),
        RdpCapabilitySet::Order(caps::Order::new(
            caps::OrderFlags::empty(),
            caps::OrderSupportExFlags::empty(),
            2048,
            224,
        )),
        RdpCapabilitySet::SurfaceCommands(caps::SurfaceCommands {
            flags: caps::CmdFlags::all(),
        }),
        RdpCapabilitySet::Pointer(caps::Pointer {
            color_pointer_cache_size: 2048,
            pointer_cache_size: 2048,
        }),
        RdpCapabilitySet::Input(caps::Input {
            input_flags: caps::InputFlags::SCANCODES
                | caps::InputFlags::MOUSEX
                | caps::InputFlags::FASTPATH_INPUT
                | caps::InputFlags::UNICODE
                | caps::InputFlags::FASTPATH_INPUT_2,
            keyboard_layout: 0,
            keyboard_type: None,
            keyboard_subtype: 0,
            keyboard_function_key: 128,
            keyboard_ime_filename: String::new(),
        }),
        RdpCapabilitySet::VirtualChannel(caps::VirtualChannel {
            flags: caps::VirtualChannelFlags::NO_COMPRESSION,
            chunk_size: None,
        }),
        RdpCapabilitySet::MultiFragmentUpdate(caps::MultifragmentUpdate {
            max_request_size: 8 * 1024 * 1024,
        }),
    ]
}

/// EGFX callbacks: count acknowledgements for [`super::Observed`].
struct GfxEvents {
    shared: Arc<Shared>,
}

impl GraphicsPipelineHandler for GfxEvents {
    fn capabilities_advertise(&mut self, pdu: &CapabilitiesAdvertisePdu) {
        debug!(sets = pdu.0.len(), "egfx capabilities advertised");
    }

    fn on_ready(&mut self, negotiated: &CapabilitySet) {
        debug!(?negotiated, "egfx ready");
    }

    fn on_frame_ack(&mut self, frame_id: u32, queue_depth: u32, total_frames_decoded: u32) {
        self.shared.frames_acked.fetch_add(1, Ordering::Relaxed);
        debug!(
            frame_id,
            queue_depth, total_frames_decoded, "egfx frame acknowledged"
        );
    }

    fn max_frames_in_flight(&self) -> u32 {
        MAX_FRAMES_IN_FLIGHT
    }
}

struct Session<'a> {
    stream: TlsStream,
    rx: Vec<u8>,
    /// Where each read lands; kept, not made per read (zeroing 16 KiB per read was a tenth of
    /// a replay server's CPU).
    chunk: Box<[u8]>,
    user_channel_id: u16,
    io_channel_id: u16,
    channels: StaticChannelSet,
    drdynvc_id: Option<u16>,
    /// The sound channel, when the client joined it.
    sound_id: Option<u16>,
    picture: Picture,
    input: InputMapper,
    gfx: GfxState,
    started: Instant,
    shared: &'a Arc<Shared>,
}

/// What a session shows.
enum Picture {
    /// The live desktop, painted and encoded every frame.
    Desktop(Desktop),
    /// A shared pre-encoded reel.
    Replay(Replay),
    /// Crafted steps, sent once (tests only, see `super::hostile`).
    Hostile { steps: Arc<Vec<Attack>>, sent: bool },
}

impl Picture {
    fn size(&self) -> (u16, u16) {
        match self {
            Picture::Desktop(desktop) => desktop.size(),
            Picture::Replay(replay) => (replay.reel.width, replay.reel.height),
            Picture::Hostile { .. } => (DEFAULT_DESKTOP.width, DEFAULT_DESKTOP.height),
        }
    }

    /// Time between frames.
    fn period(&self) -> Duration {
        let fps = match self {
            Picture::Desktop(_) | Picture::Hostile { .. } => FPS,
            Picture::Replay(replay) => replay.reel.fps,
        };
        Duration::from_secs(1) / fps.max(1)
    }
}

/// A session's place in a reel: all the per-session state replay needs.
struct Replay {
    reel: Arc<Reel>,
    /// The frame to send next. It moves on only when a frame was sent: the P-frames of a
    /// reel refer to the frames before them, so none may be left out.
    next: usize,
}

impl Replay {
    fn new(reel: &Arc<Reel>, number: u64) -> Replay {
        let len = reel.frames.len().max(1);
        let number = usize::try_from(number.saturating_sub(1) % len as u64).unwrap_or(0);
        Replay {
            reel: Arc::clone(reel),
            next: number * REPLAY_START_STRIDE % len,
        }
    }
}

/// Graphics pipeline state of one session.
struct GfxState {
    encoder: Option<H264>,
    surface: Option<u16>,
    frame: u64,
    suppressed: bool,
    backpressured: bool,
    warned_no_gfx: bool,
    warned_no_avc: bool,
    stats: StreamStats,
}

impl GfxState {
    /// Before the graphics channel opens: no encoder, no surface, nothing sent.
    fn new() -> Self {
        GfxState {
            encoder: None,
            surface: None,
            frame: 0,
            suppressed: false,
            backpressured: false,
            warned_no_gfx: false,
            warned_no_avc: false,
            stats: StreamStats::new(),
        }
    }
}

/// Per-session stream statistics, logged every [`STATS_EVERY`].
struct StreamStats {
    since: Instant,
    frames: u32,
    bytes: usize,
    work: Duration,
    paused_ticks: u32,
}

const STATS_EVERY: Duration = Duration::from_secs(10);

impl StreamStats {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            frames: 0,
            bytes: 0,
            work: Duration::ZERO,
            paused_ticks: 0,
        }
    }

    fn maybe_log(&mut self, in_flight: u32) {
        let window = self.since.elapsed();
        if window < STATS_EVERY {
            return;
        }
        let secs = window.as_secs_f64();
        debug!(
            fps = format!("{:.1}", f64::from(self.frames) / secs),
            kbit_per_s = format!("{:.0}", self.bytes as f64 * 8.0 / 1000.0 / secs),
            paint_encode_ms = format!(
                "{:.1}",
                self.work.as_secs_f64() * 1000.0 / f64::from(self.frames.max(1))
            ),
            paused_ticks = self.paused_ticks,
            in_flight,
            "egfx stream"
        );
        *self = Self::new();
    }
}

impl<'a> Session<'a> {
    fn new(accepted: Accepted, number: u64, shared: &'a Arc<Shared>) -> Result<Self, DemoError> {
        let Accepted {
            stream,
            leftover,
            result,
        } = accepted;
        let size = result
            .capabilities
            .iter()
            .find_map(|c| match c {
                RdpCapabilitySet::Bitmap(b) => Some((b.desktop_width, b.desktop_height)),
                _ => None,
            })
            .unwrap_or((DEFAULT_DESKTOP.width, DEFAULT_DESKTOP.height));
        let size = (
            size.0.clamp(1, MAX_DESKTOP.width),
            size.1.clamp(1, MAX_DESKTOP.height),
        );
        let drdynvc_id = result
            .static_channels
            .get_channel_id_by_type::<DrdynvcServer>();
        let sound_id = result
            .static_channels
            .get_channel_id_by_type::<SoundChannel>();
        if sound_id.is_none() && shared.audio != DemoAudio::Off {
            info!("the client did not join the sound channel (rdpsnd); no sound");
        }
        let mut session = Session {
            stream,
            rx: leftover,
            chunk: vec![0u8; 16 * 1024].into_boxed_slice(),
            user_channel_id: result.user_channel_id,
            io_channel_id: result.io_channel_id,
            channels: result.static_channels,
            drdynvc_id,
            sound_id,
            picture: match &shared.content {
                Content::Desktop => Picture::Desktop(Desktop::new(size.0, size.1)),
                Content::Replay(reel) => Picture::Replay(Replay::new(reel, number)),
                Content::Hostile(steps) => Picture::Hostile {
                    steps: Arc::clone(steps),
                    sent: false,
                },
            },
            input: InputMapper::default(),
            gfx: GfxState::new(),
            started: Instant::now(),
            shared,
        };
        // Input the client sent while the connection was being finalized.
        for frame in result.input_events {
            let action = frame
                .first()
                .and_then(|b| Action::from_fp_output_header(*b).ok());
            if let Some(action) = action {
                session.handle_pdu(action, &frame)?;
            }
        }
        // Start the static channels (DRDYNVC sends its capabilities request).
        let mut out = Vec::new();
        for (_, channel, id) in session.channels.iter_by_key_mut() {
            let Some(id) = id else { continue };
            let messages = channel
                .start()
                .map_err(|e| DemoError::Protocol(format!("channel start: {e}")))?;
            out.extend(
                server_encode_svc_messages(messages, id, session.user_channel_id)
                    .map_err(encode_err)?,
            );
        }
        session.send(&out)?;
        Ok(session)
    }

    fn run(&mut self) -> Result<End, DemoError> {
        let period = self.picture.period();
        let mut next_frame = Instant::now();
        // PDUs read together with the end of the connection sequence.
        if let Some(end) = self.handle_buffered()? {
            return Ok(end);
        }
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                return Ok(End::ServerStopping);
            }
            let now = Instant::now();
            if now >= next_frame {
                self.tick()?;
                next_frame += period;
                if next_frame < now {
                    next_frame = now + period;
                }
            }
            self.pump_sound()?;
            let deadline = self
                .sound_due()
                .map_or(next_frame, |due| due.min(next_frame));
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            if matches!(self.picture, Picture::Replay(_)) {
                // A replay takes no input that needs an answer before the next tick, so it
                // wakes once per tick and reads what came meanwhile (frame acknowledgements):
                // one wake-up per frame instead of two, which is what hundreds of replay
                // servers in the load-test harness cost the machine it shares with the gateway.
                std::thread::sleep(wait);
                if let Some(end) = self.drain()? {
                    return Ok(end);
                }
                continue;
            }
            self.stream.sock.set_read_timeout(Some(wait))?;
            if let Some(end) = self.pump()? {
                return Ok(end);
            }
        }
    }

    /// Reads everything that has arrived without waiting, then handles it.
    fn drain(&mut self) -> Result<Option<End>, DemoError> {
        self.stream.sock.set_nonblocking(true)?;
        let read = loop {
            match self.read_once() {
                Ok(Received::Bytes) => {}
                other => break other,
            }
        };
        self.stream.sock.set_nonblocking(false)?;
        match read? {
            Received::Closed(end) => Ok(Some(end)),
            Received::Bytes | Received::Nothing => self.handle_buffered(),
        }
    }

    /// Reads what the client sent (waiting at most until the read timeout) and handles it.
    fn pump(&mut self) -> Result<Option<End>, DemoError> {
        match self.read_once()? {
            Received::Closed(end) => Ok(Some(end)),
            Received::Nothing => Ok(None),
            Received::Bytes => self.handle_buffered(),
        }
    }

    /// One read into `rx`: bytes, nothing yet (timed out, would block), or the end.
    fn read_once(&mut self) -> io::Result<Received> {
        match self.stream.read(&mut self.chunk) {
            Ok(0) => Ok(Received::Closed(self.closed())),
            Ok(n) => {
                self.rx
                    .extend_from_slice(self.chunk.get(..n).unwrap_or_default());
                Ok(Received::Bytes)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(Received::Nothing)
            }
            Err(e) if is_disconnect(&e) => Ok(Received::Closed(self.closed())),
            Err(e) => Err(e),
        }
    }

    /// The reading side ended: the client left, or [`DemoServer`](super::DemoServer)'s drop
    /// shut it to stop the session.
    fn closed(&self) -> End {
        if self.shared.stop.load(Ordering::Relaxed) {
            End::ServerStopping
        } else {
            End::ClientClosed
        }
    }

    /// Handles every complete PDU in the receive buffer.
    fn handle_buffered(&mut self) -> Result<Option<End>, DemoError> {
        loop {
            let info = ironrdp_pdu::find_size(&self.rx)
                .map_err(|e| DemoError::Protocol(format!("framing: {e}")))?;
            let Some(info) = info else { break };
            if self.rx.len() < info.length {
                break;
            }
            let frame: Vec<u8> = self.rx.drain(..info.length).collect();
            if let Some(end) = self.handle_pdu(info.action, &frame)? {
                return Ok(Some(end));
            }
        }
        Ok(None)
    }

    fn handle_pdu(&mut self, action: Action, frame: &[u8]) -> Result<Option<End>, DemoError> {
        match action {
            Action::FastPath => {
                let input: FastPathInput = decode(frame)
                    .map_err(|e| DemoError::Protocol(format!("fast-path input: {e}")))?;
                for event in input.input_events() {
                    if let Some(event) = self.input.fast_path(event) {
                        self.apply(event);
                    }
                }
                Ok(None)
            }
            Action::X224 => self.handle_x224(frame),
        }
    }

    fn handle_x224(&mut self, frame: &[u8]) -> Result<Option<End>, DemoError> {
        let message = decode::<X224<McsMessage<'_>>>(frame)
            .map_err(|e| DemoError::Protocol(format!("mcs: {e}")))?;
        match message.0 {
            McsMessage::SendDataRequest(data) if data.channel_id == self.io_channel_id => {
                let control: ShareControlHeader = decode(data.user_data.as_ref())
                    .map_err(|e| DemoError::Protocol(format!("share control: {e}")))?;
                let ShareControlPdu::Data(header) = control.share_control_pdu else {
                    debug!("ignoring a share control pdu that is not data");
                    return Ok(None);
                };
                match header.share_data_pdu {
                    ShareDataPdu::Input(input) => {
                        for event in &input.0 {
                            if let Some(event) = self.input.slow_path(event) {
                                self.apply(event);
                            }
                        }
                    }
                    ShareDataPdu::ShutdownRequest => return Ok(Some(End::ClientShutdown)),
                    ShareDataPdu::SuppressOutput(pdu) => {
                        let was = self.gfx.suppressed;
                        self.gfx.suppressed = pdu.desktop_rect.is_none();
                        // A client that allows updates again may have lost the picture (a
                        // gateway whose page was replaced): the next frame starts afresh.
                        if was && !self.gfx.suppressed {
                            if let Some(encoder) = self.gfx.encoder.as_mut() {
                                encoder.force_key_frame();
                            }
                        }
                        debug!(suppressed = self.gfx.suppressed, "client suppress output");
                    }
                    ShareDataPdu::RefreshRectangle(_) => {
                        self.gfx.suppressed = false;
                        // A reel cannot make a key frame on demand; its next one comes within
                        // its key interval.
                        if let Some(encoder) = self.gfx.encoder.as_mut() {
                            encoder.force_key_frame();
                        }
                    }
                    other => debug!(pdu = other.as_short_name(), "ignoring share data pdu"),
                }
                Ok(None)
            }
            McsMessage::SendDataRequest(data) => {
                let Some(channel) = self.channels.get_by_channel_id_mut(data.channel_id) else {
                    debug!(channel_id = data.channel_id, "data for an unknown channel");
                    return Ok(None);
                };
                let messages = channel.process(data.user_data.as_ref()).map_err(|e| {
                    DemoError::Protocol(format!("virtual channel {}: {e}", data.channel_id))
                })?;
                let out =
                    server_encode_svc_messages(messages, data.channel_id, self.user_channel_id)
                        .map_err(encode_err)?;
                self.send(&out)?;
                Ok(None)
            }
            McsMessage::DisconnectProviderUltimatum(d) => {
                debug!(reason = ?d.reason, "client disconnect ultimatum");
                Ok(Some(End::ClientClosed))
            }
            _ => {
                debug!("ignoring an unexpected mcs message");
                Ok(None)
            }
        }
    }

    fn apply(&mut self, event: DesktopEvent) {
        let Picture::Desktop(desktop) = &mut self.picture else {
            return;
        };
        desktop.apply(event);
        self.shared.record(event);
        if let Some(sound) = Sound::for_event(event) {
            let now_ms = self.now_ms();
            if let Some(channel) = self.sound_channel() {
                channel.trigger(sound, now_ms);
            }
        }
    }

    /// The session clock that sound timestamps are on.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn sound_channel(&mut self) -> Option<&mut SoundChannel> {
        self.channels
            .get_by_channel_id_mut(self.sound_id?)?
            .channel_processor_downcast_mut::<SoundChannel>()
    }

    /// When the next sound wave is due, if one is.
    fn sound_due(&mut self) -> Option<Instant> {
        let due_ms = self.sound_channel()?.next_due_ms()?;
        Some(self.started + Duration::from_millis(due_ms))
    }

    /// Sends the sound waves that are due.
    fn pump_sound(&mut self) -> Result<(), DemoError> {
        let now_ms = self.now_ms();
        let (Some(id), Some(channel)) = (self.sound_id, self.sound_channel()) else {
            return Ok(());
        };
        let messages = channel.pump(now_ms);
        if messages.is_empty() {
            return Ok(());
        }
        let out =
            server_encode_svc_messages(messages, id, self.user_channel_id).map_err(encode_err)?;
        self.send(&out)
    }

    /// One frame period: keep the EGFX surface set up and send a frame if flow control allows.
    fn tick(&mut self) -> Result<(), DemoError> {
        let Some(drdynvc_id) = self.drdynvc_id else {
            return Ok(());
        };
        let Some(drdynvc) = self
            .channels
            .get_by_channel_id_mut(drdynvc_id)
            .and_then(|c| c.channel_processor_downcast_mut::<DrdynvcServer>())
        else {
            return Ok(());
        };
        let opened = drdynvc
            .get_channel_id_by_type::<GraphicsPipelineServer>()
            .and_then(|id| drdynvc.dvc_by_id_mut::<GraphicsPipelineServer>(id));
        let Some(mut dvc) = opened else {
            if !self.gfx.warned_no_gfx && self.started.elapsed() > GFX_GRACE {
                self.gfx.warned_no_gfx = true;
                warn!("the client has not opened the graphics pipeline (egfx); the demo desktop needs it");
            }
            return Ok(());
        };
        let gfx_id = dvc.channel_id();
        let server = dvc.processor_mut();
        let elapsed = self.started.elapsed();
        let sent = match &mut self.picture {
            Picture::Desktop(desktop) => produce_frame(server, &mut self.gfx, desktop, elapsed)?,
            Picture::Replay(replay) => produce_replay_frame(server, &mut self.gfx, replay, elapsed),
            Picture::Hostile { steps, sent } => {
                if *sent || !server.is_ready() {
                    return Ok(());
                }
                *sent = true;
                let steps = Arc::clone(steps);
                info!(?steps, "sending the hostile steps");
                return self.attack(drdynvc_id, gfx_id, &steps);
            }
        };
        let messages = server.drain_output();
        if sent {
            self.shared.frames_sent.fetch_add(1, Ordering::Relaxed);
        }
        self.send_dvc(drdynvc_id, gfx_id, messages)
    }

    /// Sends crafted steps, each in valid outer layers (see `super::hostile`).
    fn attack(&mut self, drdynvc_id: u16, gfx_id: u32, steps: &[Attack]) -> Result<(), DemoError> {
        for step in steps {
            match step {
                Attack::Raw(bytes) => self.send(bytes)?,
                Attack::Drdynvc(make) => {
                    let message = SvcMessage::from(RawPdu(make(gfx_id)))
                        .with_flags(ChannelFlags::SHOW_PROTOCOL);
                    let out =
                        server_encode_svc_messages(vec![message], drdynvc_id, self.user_channel_id)
                            .map_err(encode_err)?;
                    self.send(&out)?;
                }
                Attack::StaticChunk { len, flags, data } => {
                    let mut user_data = Vec::with_capacity(8 + data.len());
                    user_data.extend(len.to_le_bytes());
                    user_data.extend(flags.to_le_bytes());
                    user_data.extend(data);
                    let pdu = X224(ironrdp_pdu::mcs::SendDataIndication {
                        initiator_id: self.user_channel_id,
                        channel_id: drdynvc_id,
                        user_data: std::borrow::Cow::Owned(user_data),
                    });
                    let out = encode_vec(&pdu).map_err(encode_err)?;
                    self.send(&out)?;
                }
                Attack::Gfx(bytes) => {
                    let message: DvcMessage = Box::new(RawPdu(bytes.clone()));
                    self.send_dvc(drdynvc_id, gfx_id, vec![message])?;
                }
                Attack::Repeat { steps, times } => {
                    for _ in 0..*times {
                        self.attack(drdynvc_id, gfx_id, steps)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends dynamic channel messages on the DRDYNVC static channel (see [`encode_dvc`]).
    fn send_dvc(
        &mut self,
        drdynvc_id: u16,
        channel_id: u32,
        messages: Vec<DvcMessage>,
    ) -> Result<(), DemoError> {
        let user_channel_id = self.user_channel_id;
        encode_dvc(drdynvc_id, user_channel_id, channel_id, messages, |bytes| {
            self.send(bytes)
        })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), DemoError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.stream.write_all(bytes)?;
        self.stream.flush()?;
        Ok(())
    }

    /// Ends the session: a disconnect notice when the server stops, then TLS close_notify.
    fn close(&mut self, server_stopping: bool) {
        if server_stopping {
            let ultimatum = McsMessage::DisconnectProviderUltimatum(
                DisconnectProviderUltimatum::from_reason(DisconnectReason::ProviderInitiated),
            );
            if let Ok(bytes) = encode_vec(&X224(ultimatum)) {
                let _ = self.send(&bytes);
            }
        }
        self.stream.conn.send_close_notify();
        let _ = self.stream.flush();
        let _ = self.stream.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// Encodes dynamic channel messages for the DRDYNVC static channel `drdynvc_id` exactly as
/// `ironrdp_dvc::encode_dvc_messages` and `server_encode_svc_messages` do together (a
/// DataFirst PDU, then Data PDUs of at most 1590 bytes, each in its own channel PDU), but
/// hands them to `write` in batches of about [`SEND_BATCH`] bytes: a large access unit is held
/// once more in encoded form, not three more times (DVC chunks, SVC chunks, the whole output).
fn encode_dvc(
    drdynvc_id: u16,
    user_channel_id: u16,
    channel_id: u32,
    messages: Vec<DvcMessage>,
    mut write: impl FnMut(&[u8]) -> Result<(), DemoError>,
) -> Result<(), DemoError> {
    let mut flush = |batch: Vec<SvcMessage>| -> Result<(), DemoError> {
        if batch.is_empty() {
            return Ok(());
        }
        let out =
            server_encode_svc_messages(batch, drdynvc_id, user_channel_id).map_err(encode_err)?;
        write(&out)
    };
    let mut batch: Vec<SvcMessage> = Vec::new();
    let mut batched = 0;
    for message in messages {
        let bytes = encode_vec(message.as_ref()).map_err(encode_err)?;
        drop(message);
        let total = u32::try_from(bytes.len())
            .map_err(|_| DemoError::Protocol("a channel message above 4 GiB".to_owned()))?;
        let split = bytes.len() >= DrdynvcDataPdu::MAX_DATA_SIZE;
        for (i, chunk) in bytes.chunks(DrdynvcDataPdu::MAX_DATA_SIZE).enumerate() {
            let pdu = if split && i == 0 {
                DrdynvcDataPdu::DataFirst(DataFirstPdu::new(channel_id, total, chunk.to_vec()))
            } else {
                DrdynvcDataPdu::Data(DataPdu::new(channel_id, chunk.to_vec()))
            };
            batch.push(SvcMessage::from(pdu).with_flags(ChannelFlags::SHOW_PROTOCOL));
            batched += chunk.len();
            if batched >= SEND_BATCH {
                flush(std::mem::take(&mut batch))?;
                batched = 0;
            }
        }
    }
    flush(batch)
}

/// What a tick may do, once the surface is set up.
struct Gate {
    /// The surface was created on this tick (the first one, or after a capabilities
    /// re-advertise, which drops surfaces): the next frame must be a key frame.
    created: bool,
    /// The surface to send a frame to, when one may be sent now.
    surface: Option<u16>,
}

/// Sets up the surface of `size` (`buffer` when the encoder pads it) when needed and says
/// whether a frame may go out: the client takes AVC420, output is not suppressed and fewer
/// than [`MAX_FRAMES_IN_FLIGHT`] frames wait for an acknowledgement.
fn gate(
    server: &mut GraphicsPipelineServer,
    gfx: &mut GfxState,
    size: (u16, u16),
    buffer: (u16, u16),
) -> Gate {
    let mut gate = Gate {
        created: false,
        surface: None,
    };
    if !server.is_ready() {
        return gate;
    }
    let surface_alive = gfx
        .surface
        .is_some_and(|id| server.get_surface(id).is_some());
    if !surface_alive {
        let Some(id) = create_surface(server, size, buffer) else {
            return gate;
        };
        gfx.surface = Some(id);
        gate.created = true;
    }
    if !server.supports_avc420() {
        if !gfx.warned_no_avc {
            gfx.warned_no_avc = true;
            warn!(negotiated = ?server.negotiated_capabilities(), "the client does not accept avc420 (h.264); no frames");
        }
        return gate;
    }
    if gfx.suppressed {
        return gate;
    }
    let backpressured = server.should_backpressure();
    if backpressured != gfx.backpressured {
        gfx.backpressured = backpressured;
        debug!(
            in_flight = server.frames_in_flight(),
            paused = backpressured,
            "egfx flow control"
        );
    }
    gfx.stats.maybe_log(server.frames_in_flight());
    if backpressured {
        gfx.stats.paused_ticks += 1;
        return gate;
    }
    gate.surface = gfx.surface;
    gate
}

fn create_surface(
    server: &mut GraphicsPipelineServer,
    (w, h): (u16, u16),
    (bw, bh): (u16, u16),
) -> Option<u16> {
    server.set_output_dimensions(w, h);
    let id = server.create_surface(bw, bh)?;
    server.map_surface_to_output(id, 0, 0);
    debug!(surface = id, width = w, height = h, "egfx surface created");
    Some(id)
}

/// The whole surface as the one changed region.
fn full_region((w, h): (u16, u16)) -> Avc420Region {
    Avc420Region {
        left: 0,
        top: 0,
        right: w,
        bottom: h,
        quantization_parameter: REGION_QP,
        quality: 100,
    }
}

fn timestamp_ms(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_millis() % u128::from(u32::MAX)).unwrap_or(0)
}

/// Sets up the surface when needed and queues one AVC420 frame unless paused.
/// Returns whether a frame was queued.
fn produce_frame(
    server: &mut GraphicsPipelineServer,
    gfx: &mut GfxState,
    desktop: &mut Desktop,
    elapsed: Duration,
) -> Result<bool, DemoError> {
    let gate = gate(server, gfx, desktop.size(), desktop.buffer_size());
    if gate.created {
        match gfx.encoder.as_mut() {
            Some(encoder) => encoder.force_key_frame(),
            None => {
                let (bw, bh) = desktop.buffer_size();
                gfx.encoder = Some(H264::new(bw, bh)?);
            }
        }
    }
    let (Some(surface), Some(encoder)) = (gate.surface, gfx.encoder.as_mut()) else {
        return Ok(false);
    };
    let work = Instant::now();
    let clock = FrameClock {
        millis_of_day: millis_of_day(),
        elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        frame: gfx.frame,
    };
    let rgba = desktop.paint(clock);
    let h264 = encoder.encode(rgba)?;
    gfx.stats.work += work.elapsed();
    if h264.is_empty() {
        return Ok(false);
    }
    let region = full_region(desktop.size());
    match server.try_send_avc420_frame(surface, &h264, &[region], timestamp_ms(elapsed)) {
        Ok(frame_id) => {
            gfx.frame += 1;
            gfx.stats.frames += 1;
            gfx.stats.bytes += h264.len();
            if gfx.frame == 1 {
                debug!(frame_id, bytes = h264.len(), "first egfx frame queued");
            }
            Ok(true)
        }
        Err(e) => {
            // The encoder moved on; restart the chain so the client never sees a gap.
            encoder.force_key_frame();
            debug!(error = %e, "egfx frame not queued");
            Ok(false)
        }
    }
}

/// Sets up the surface when needed and queues the reel's next access unit, stamped with the
/// time it leaves for the socket, unless paused. Returns whether a frame was queued.
fn produce_replay_frame(
    server: &mut GraphicsPipelineServer,
    gfx: &mut GfxState,
    replay: &mut Replay,
    elapsed: Duration,
) -> bool {
    let size = (replay.reel.width, replay.reel.height);
    let Some(surface) = gate(server, gfx, size, size).surface else {
        return false;
    };
    let Some(frame) = replay.reel.frames.get(replay.next) else {
        replay.next = 0;
        return false;
    };
    let work = Instant::now();
    // Stamped last thing before the frame is queued: from here it is only encoded into
    // channel PDUs and written (microseconds for an office frame, a few copies of 8 MiB for
    // the largest).
    let au = stamp::stamped(&frame.au, stamp::now_ns());
    let sent =
        server.try_send_avc420_frame(surface, &au, &[full_region(size)], timestamp_ms(elapsed));
    gfx.stats.work += work.elapsed();
    match sent {
        Ok(frame_id) => {
            replay.next = (replay.next + 1) % replay.reel.frames.len().max(1);
            gfx.frame += 1;
            gfx.stats.frames += 1;
            gfx.stats.bytes += au.len();
            if gfx.frame == 1 {
                debug!(frame_id, bytes = au.len(), "first replay frame queued");
            }
            true
        }
        Err(e) => {
            // Not sent, so the same frame goes next time: the reel's chain stays whole.
            debug!(error = %e, "egfx frame not queued");
            false
        }
    }
}

fn millis_of_day() -> u32 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() % 86_400_000)
        .unwrap_or(0);
    u32::try_from(ms).unwrap_or(0)
}

fn encode_err(e: ironrdp_core::EncodeError) -> DemoError {
    DemoError::Protocol(format!("encode: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use ironrdp_core::encode_vec;
    use ironrdp_dvc::DvcProcessor as _;
    use ironrdp_egfx::pdu::{CapabilitiesV81Flags, FrameAcknowledgePdu, GfxPdu, QueueDepth};

    use super::*;

    struct Quiet;

    impl GraphicsPipelineHandler for Quiet {
        fn capabilities_advertise(&mut self, _: &CapabilitiesAdvertisePdu) {}
        fn on_ready(&mut self, _: &CapabilitySet) {}
        fn max_frames_in_flight(&self) -> u32 {
            MAX_FRAMES_IN_FLIGHT
        }
    }

    fn ready_server(caps: CapabilitySet) -> GraphicsPipelineServer {
        let mut server = GraphicsPipelineServer::new(Box::new(Quiet));
        server.start(7).unwrap();
        let advertise =
            GfxPdu::CapabilitiesAdvertise(CapabilitiesAdvertisePdu::from_typed(&[caps]));
        let confirm = server.process(7, &encode_vec(&advertise).unwrap()).unwrap();
        assert_eq!(confirm.len(), 1, "capabilities confirm");
        server
    }

    fn avc420() -> CapabilitySet {
        CapabilitySet::V8_1 {
            flags: CapabilitiesV81Flags::AVC420_ENABLED | CapabilitiesV81Flags::SMALL_CACHE,
        }
    }

    fn ack(server: &mut GraphicsPipelineServer, frame_id: u32) {
        let ack = GfxPdu::FrameAcknowledge(FrameAcknowledgePdu {
            queue_depth: QueueDepth::AvailableBytes(0),
            frame_id,
            total_frames_decoded: frame_id + 1,
        });
        server.process(7, &encode_vec(&ack).unwrap()).unwrap();
    }

    #[test]
    fn frames_stop_at_the_ack_window_and_resume_on_ack() {
        let mut server = ready_server(avc420());
        let mut gfx = GfxState::new();
        let mut desktop = Desktop::new(320, 200);
        let t = Duration::from_millis(40);

        assert!(produce_frame(&mut server, &mut gfx, &mut desktop, t).unwrap());
        // ResetGraphics, CreateSurface, MapSurfaceToOutput, then StartFrame, WireToSurface1, EndFrame.
        assert_eq!(server.drain_output().len(), 6);
        let surface = server.get_surface(gfx.surface.unwrap()).unwrap();
        assert_eq!((surface.width, surface.height), (320, 208));
        assert_eq!(server.output_dimensions(), (320, 200));

        for _ in 1..MAX_FRAMES_IN_FLIGHT {
            assert!(produce_frame(&mut server, &mut gfx, &mut desktop, t).unwrap());
            assert_eq!(server.drain_output().len(), 3);
        }
        for _ in 0..10 {
            assert!(
                !produce_frame(&mut server, &mut gfx, &mut desktop, t).unwrap(),
                "paused"
            );
            assert!(server.drain_output().is_empty());
        }
        assert_eq!(gfx.frame, u64::from(MAX_FRAMES_IN_FLIGHT));
        ack(&mut server, 0);
        assert!(
            produce_frame(&mut server, &mut gfx, &mut desktop, t).unwrap(),
            "resumed"
        );
        assert!(
            !produce_frame(&mut server, &mut gfx, &mut desktop, t).unwrap(),
            "one ack, one frame"
        );
    }

    #[test]
    fn suppressed_output_and_clients_without_avc420_get_no_frames() {
        let mut server = ready_server(avc420());
        let mut gfx = GfxState {
            suppressed: true,
            ..GfxState::new()
        };
        let mut desktop = Desktop::new(320, 200);
        assert!(!produce_frame(&mut server, &mut gfx, &mut desktop, Duration::ZERO).unwrap());
        gfx.suppressed = false;
        assert!(produce_frame(&mut server, &mut gfx, &mut desktop, Duration::ZERO).unwrap());

        let v8 = CapabilitySet::V8 {
            flags: ironrdp_egfx::pdu::CapabilitiesV8Flags::SMALL_CACHE,
        };
        let mut server = ready_server(v8);
        let mut gfx = GfxState::new();
        assert!(!produce_frame(&mut server, &mut gfx, &mut desktop, Duration::ZERO).unwrap());
        assert!(gfx.warned_no_avc);
    }

    /// A reel of `n` fake access units (their first byte after a start code is the index).
    fn fake_reel(n: u8) -> Arc<Reel> {
        Arc::new(Reel {
            width: 1920,
            height: 1080,
            fps: 20,
            key_interval: u32::from(n),
            frames: (0..n)
                .map(|i| super::super::reel::ReelFrame {
                    au: vec![0, 0, 0, 1, 0x41, i, 0xaa],
                    key: i == 0,
                })
                .collect(),
        })
    }

    /// The access units of the WireToSurface1 PDUs among `messages`.
    fn sent_aus(messages: Vec<DvcMessage>) -> Vec<Vec<u8>> {
        let mut channel = crate::rdp::egfx::GfxChannel::new();
        // The surface was created by an earlier tick; the channel must know it.
        let create =
            ironrdp_egfx::pdu::GfxPdu::CreateSurface(ironrdp_egfx::pdu::CreateSurfacePdu {
                surface_id: 0,
                width: 8192,
                height: 8192,
                pixel_format: ironrdp_egfx::pdu::PixelFormat::XRgb,
            });
        channel
            .decode_message(&ironrdp_graphics::zgfx::wrap_uncompressed(
                &encode_vec(&create).unwrap(),
            ))
            .unwrap();
        channel.pop_event();
        let mut aus = Vec::new();
        for m in messages {
            channel
                .decode_message(&encode_vec(m.as_ref()).unwrap())
                .unwrap();
            while let Some(ev) = channel.pop_event() {
                if let crate::rdp::GfxEvent::Avc420(a) = ev {
                    aus.push(a.access_unit().to_vec());
                }
            }
        }
        aus
    }

    #[test]
    fn replay_sends_the_reel_in_order_stamped_within_the_ack_window() {
        let reel = fake_reel(5);
        // Connection 3 starts at frame 2 × 7 mod 5 = 4.
        let mut replay = Replay::new(&reel, 3);
        assert_eq!(replay.next, 4);
        assert_eq!(Replay::new(&reel, 1).next, 0);
        let mut server = ready_server(avc420());
        let mut gfx = GfxState::new();
        let t = Duration::from_millis(50);
        let before = stamp::now_ns();
        let mut order = Vec::new();
        for _ in 0..MAX_FRAMES_IN_FLIGHT {
            assert!(produce_replay_frame(&mut server, &mut gfx, &mut replay, t));
            for au in sent_aus(server.drain_output()) {
                let sent = stamp::read(&au).unwrap();
                assert!(sent >= before && sent <= stamp::now_ns());
                assert_eq!(au.len(), 7 + stamp::SEI_LEN);
                order.push(au[au.len() - 2]);
            }
        }
        // Paused by flow control: nothing is sent and the reel does not move on.
        for _ in 0..5 {
            assert!(!produce_replay_frame(&mut server, &mut gfx, &mut replay, t));
            assert!(server.drain_output().is_empty());
        }
        assert_eq!(replay.next, 2);
        ack(&mut server, 0);
        assert!(produce_replay_frame(&mut server, &mut gfx, &mut replay, t));
        for au in sent_aus(server.drain_output()) {
            order.push(au[au.len() - 2]);
        }
        assert_eq!(order, [4, 0, 1, 2], "in reel order, no frame left out");
        // The surface has the reel's size.
        let surface = server.get_surface(gfx.surface.unwrap()).unwrap();
        assert_eq!((surface.width, surface.height), (1920, 1080));
        assert_eq!(server.output_dimensions(), (1920, 1080));
    }

    /// A DVC message of `len` bytes (what `drain_output` hands out is opaque, so any
    /// `DvcEncode` will do).
    fn raw_messages(lens: &[usize]) -> Vec<DvcMessage> {
        #[derive(Debug)]
        struct Raw(Vec<u8>);
        impl ironrdp_core::Encode for Raw {
            fn encode(
                &self,
                dst: &mut ironrdp_core::WriteCursor<'_>,
            ) -> ironrdp_core::EncodeResult<()> {
                dst.write_slice(&self.0);
                Ok(())
            }
            fn name(&self) -> &'static str {
                "Raw"
            }
            fn size(&self) -> usize {
                self.0.len()
            }
        }
        impl ironrdp_dvc::DvcEncode for Raw {}
        lens.iter()
            .map(|&n| Box::new(Raw((0..n).map(|i| (i * 7 % 251) as u8).collect())) as DvcMessage)
            .collect()
    }

    #[test]
    fn batched_dvc_encoding_is_byte_for_byte_what_ironrdp_writes() {
        let lens = [0, 1, 100, 1589, 1590, 1591, 3180, 200_000, 5];
        let want = server_encode_svc_messages(
            ironrdp_dvc::encode_dvc_messages(9, raw_messages(&lens), ChannelFlags::SHOW_PROTOCOL)
                .unwrap(),
            1004,
            1007,
        )
        .unwrap();
        let mut got = Vec::new();
        let mut writes = 0;
        encode_dvc(1004, 1007, 9, raw_messages(&lens), |b| {
            got.extend_from_slice(b);
            writes += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(got, want);
        // 200 KB in batches of about 64 KiB, never one write.
        assert!((4..=6).contains(&writes), "{writes} writes");
    }

    #[test]
    fn a_capabilities_re_advertise_recreates_the_surface_with_a_key_frame() {
        let mut server = ready_server(avc420());
        let mut gfx = GfxState::new();
        let mut desktop = Desktop::new(320, 200);
        assert!(produce_frame(&mut server, &mut gfx, &mut desktop, Duration::ZERO).unwrap());
        server.drain_output();
        let advertise =
            GfxPdu::CapabilitiesAdvertise(CapabilitiesAdvertisePdu::from_typed(&[avc420()]));
        server.process(7, &encode_vec(&advertise).unwrap()).unwrap();
        assert!(produce_frame(&mut server, &mut gfx, &mut desktop, Duration::ZERO).unwrap());
        // A fresh surface again: ResetGraphics, CreateSurface, MapSurfaceToOutput + the frame.
        assert_eq!(server.drain_output().len(), 6);
    }
}

//! A small blocking IronRDP client for the demo server's tests: NLA or TLS, EGFX with AVC420
//! only, H.264 decoded with OpenH264 so tests can look at pixels, input sent as fast-path, and
//! the static RDPSND channel (IronRDP's client) recording every wave it hears.

use std::borrow::Cow;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ironrdp_blocking::Framed;
use ironrdp_connector::{ClientConnector, ConnectionOutcome, DesktopSize, ServerName};
use ironrdp_core::{decode, decode_cursor, encode_vec, impl_as_any, ReadCursor};
use ironrdp_dvc::{
    encode_dvc_messages, DrdynvcClient, DvcClientProcessor, DvcMessage, DvcProcessor,
};
use ironrdp_egfx::pdu::{
    Avc420BitmapStream, CapabilitiesAdvertisePdu, CapabilitiesV81Flags, CapabilitySet, Codec1Type,
    FrameAcknowledgePdu, GfxPdu, QueueDepth,
};
use ironrdp_graphics::zgfx;
use ironrdp_pdu::input::fast_path::{FastPathInput, FastPathInputEvent, KeyboardFlags};
use ironrdp_pdu::input::mouse::PointerFlags;
use ironrdp_pdu::input::MousePdu;
use ironrdp_pdu::mcs::McsMessage;
use ironrdp_pdu::x224::X224;
use ironrdp_pdu::{Action, PduResult};
use ironrdp_rdpsnd::client::{Rdpsnd, RdpsndClientHandler};
use ironrdp_rdpsnd::pdu::{
    AudioFormat, ClientAudioOutputPdu, PitchPdu, VolumePdu, WaveConfirmPdu, WaveFormat,
};
use ironrdp_svc::{client_encode_svc_messages, ChannelFlags, SvcMessage};
use rustls::pki_types::ServerName as TlsName;
use rustls::{ClientConnection, StreamOwned};
use x509_cert::der::Decode as _;

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// What the client's graphics pipeline saw.
#[derive(Default)]
pub struct Screen {
    pub surface_size: Option<(u16, u16)>,
    pub output_size: Option<(u32, u32)>,
    pub frames: u32,
    /// The last decoded picture (YUV 4:2:0 planes), `width`×`height` of the H.264 frame.
    planes: [Vec<u8>; 3],
    strides: (usize, usize),
    pub width: usize,
    pub height: usize,
    /// The channel id the server gave the graphics pipeline.
    pub channel_id: Option<u32>,
    pub last_frame_id: Option<u32>,
    pub errors: Vec<String>,
}

impl Screen {
    /// RGB at (x, y), converted as MS-RDPEGFX says AVC420 is: full-range BT.709.
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let (ys, cs) = self.strides;
        let luma = f32::from(self.planes[0][y * ys + x]);
        let u = f32::from(self.planes[1][y / 2 * cs + x / 2]) - 128.0;
        let v = f32::from(self.planes[2][y / 2 * cs + x / 2]) - 128.0;
        let c = |x: f32| x.round().clamp(0.0, 255.0) as u8;
        [
            c(luma + 1.5748 * v),
            c(luma - 0.1873 * u - 0.4681 * v),
            c(luma + 1.8556 * u),
        ]
    }
}

struct Gfx {
    screen: Arc<Mutex<Screen>>,
    ack: Arc<AtomicBool>,
    zgfx: zgfx::Decompressor,
    decoder: openh264::decoder::Decoder,
}

impl_as_any!(Gfx);

impl DvcProcessor for Gfx {
    fn channel_name(&self) -> &str {
        ironrdp_egfx::CHANNEL_NAME
    }

    fn start(&mut self, channel_id: u32) -> PduResult<Vec<DvcMessage>> {
        self.screen.lock().unwrap().channel_id = Some(channel_id);
        let caps = CapabilitiesAdvertisePdu::from_typed(&[CapabilitySet::V8_1 {
            flags: CapabilitiesV81Flags::AVC420_ENABLED | CapabilitiesV81Flags::SMALL_CACHE,
        }]);
        Ok(vec![Box::new(GfxPdu::CapabilitiesAdvertise(caps))])
    }

    fn process(&mut self, _channel_id: u32, payload: &[u8]) -> PduResult<Vec<DvcMessage>> {
        let mut plain = Vec::new();
        if let Err(e) = self.zgfx.decompress(payload, &mut plain) {
            self.screen
                .lock()
                .unwrap()
                .errors
                .push(format!("zgfx: {e:?}"));
            return Ok(Vec::new());
        }
        let mut out: Vec<DvcMessage> = Vec::new();
        let mut cursor = ReadCursor::new(&plain);
        while !cursor.is_empty() {
            let pdu = match decode_cursor::<GfxPdu>(&mut cursor) {
                Ok(pdu) => pdu,
                Err(e) => {
                    self.screen
                        .lock()
                        .unwrap()
                        .errors
                        .push(format!("gfx pdu: {e}"));
                    break;
                }
            };
            let mut screen = self.screen.lock().unwrap();
            match pdu {
                GfxPdu::ResetGraphics(r) => screen.output_size = Some((r.width, r.height)),
                GfxPdu::CreateSurface(s) => screen.surface_size = Some((s.width, s.height)),
                GfxPdu::WireToSurface1(w) if w.codec_id == Codec1Type::Avc420 => {
                    let stream: Avc420BitmapStream<'_> = match decode(&w.bitmap_data) {
                        Ok(s) => s,
                        Err(e) => {
                            screen.errors.push(format!("avc420 stream: {e}"));
                            continue;
                        }
                    };
                    match self.decoder.decode(stream.data) {
                        Ok(Some(yuv)) => {
                            use openh264::formats::YUVSource as _;
                            let (w, h) = yuv.dimensions();
                            let (ys, us, _) = yuv.strides();
                            screen.planes = [yuv.y().to_vec(), yuv.u().to_vec(), yuv.v().to_vec()];
                            screen.strides = (ys, us);
                            screen.width = w;
                            screen.height = h;
                        }
                        Ok(None) => {}
                        Err(e) => screen.errors.push(format!("h264: {e}")),
                    }
                }
                GfxPdu::EndFrame(end) => {
                    screen.frames += 1;
                    screen.last_frame_id = Some(end.frame_id);
                    if self.ack.load(Ordering::Relaxed) {
                        out.push(Box::new(ack(end.frame_id, screen.frames)));
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

impl DvcClientProcessor for Gfx {}

fn ack(frame_id: u32, decoded: u32) -> GfxPdu {
    GfxPdu::FrameAcknowledge(FrameAcknowledgePdu {
        queue_depth: QueueDepth::AvailableBytes(0),
        frame_id,
        total_frames_decoded: decoded,
    })
}

/// One wave as the client's RDPSND channel handed it over.
#[derive(Debug, Clone)]
pub struct HeardWave {
    pub format: AudioFormat,
    /// The server's timestamp (ms; Wave2's 32-bit audio timestamp).
    pub timestamp: u32,
    pub data: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
}

/// What the client's sound channel received.
#[derive(Debug, Default)]
pub struct Heard {
    pub waves: Vec<HeardWave>,
    pub closed: bool,
}

#[derive(Debug)]
struct Recorder {
    formats: Vec<AudioFormat>,
    heard: Arc<Mutex<Heard>>,
}

impl RdpsndClientHandler for Recorder {
    fn get_formats(&self) -> &[AudioFormat] {
        &self.formats
    }

    fn wave(&mut self, format: &AudioFormat, ts: u32, data: Cow<'_, [u8]>) {
        self.heard.lock().unwrap().waves.push(HeardWave {
            format: format.clone(),
            timestamp: ts,
            data: data.into_owned(),
            at: Instant::now(),
        });
    }

    fn set_volume(&mut self, _: VolumePdu) {}

    fn set_pitch(&mut self, _: PitchPdu) {}

    fn close(&mut self) {
        self.heard.lock().unwrap().closed = true;
    }
}

/// PCM 16-bit stereo at `rate`, as a client advertises it.
pub fn pcm(rate: u32) -> AudioFormat {
    AudioFormat {
        format: WaveFormat::PCM,
        n_channels: 2,
        n_samples_per_sec: rate,
        n_avg_bytes_per_sec: rate * 4,
        n_block_align: 4,
        bits_per_sample: 16,
        data: None,
    }
}

/// Opus 48 kHz stereo, in the shape IronRDP's clients advertise it.
pub fn opus() -> AudioFormat {
    AudioFormat {
        format: WaveFormat::OPUS,
        n_channels: 2,
        n_samples_per_sec: 48_000,
        n_avg_bytes_per_sec: 192_000,
        n_block_align: 4,
        bits_per_sample: 16,
        data: None,
    }
}

struct NoNetwork;

impl ironrdp_connector::sspi::network_client::NetworkClient for NoNetwork {
    fn send(
        &self,
        _: &ironrdp_connector::sspi::generator::NetworkRequest,
    ) -> ironrdp_connector::sspi::Result<Vec<u8>> {
        Err(ironrdp_connector::sspi::Error::new(
            ironrdp_connector::sspi::ErrorKind::NoAuthenticatingAuthority,
            "no network in tests",
        ))
    }
}

pub struct Options {
    pub user: String,
    pub pass: String,
    pub nla: bool,
    pub size: (u16, u16),
    /// Acknowledge frames (EGFX flow control) as they arrive.
    pub ack: bool,
    /// Sound formats the client accepts, in its order of preference.
    pub audio: Vec<AudioFormat>,
    /// Confirm waves (RDPSND Wave Confirm) as they arrive.
    pub confirm_audio: bool,
}

/// The gateway's own connector configuration for this target; only NLA is switchable here,
/// to test the demo's TLS-only path.
fn config(o: &Options) -> ironrdp_connector::Config {
    let target = rdpwire::rdp::Target {
        host: "127.0.0.1".to_owned(),
        port: 0,
        username: o.user.clone(),
        password: o.pass.clone(),
        domain: None,
        tls: rdpwire::rdp::TlsPolicy::Insecure,
    };
    let mut c = rdpwire::rdp::connection::config(
        &target,
        DesktopSize {
            width: o.size.0,
            height: o.size.1,
        },
    );
    c.enable_credssp = o.nla;
    c
}

/// A connected client, its reader thread running.
pub struct Client {
    tls: Arc<Mutex<Tls>>,
    pub screen: Arc<Mutex<Screen>>,
    ack: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
    ultimatum: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    user_channel_id: u16,
    drdynvc_id: u16,
    pub heard: Arc<Mutex<Heard>>,
    confirm_audio: Arc<AtomicBool>,
    rdpsnd_id: Option<u16>,
}

/// Connects and completes the connection sequence; `Err` carries the connector's report.
pub fn connect(addr: SocketAddr, o: &Options) -> Result<Client, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let local = tcp.local_addr().unwrap();
    let screen = Arc::new(Mutex::new(Screen::default()));
    let ack = Arc::new(AtomicBool::new(o.ack));
    let gfx = Gfx {
        screen: Arc::clone(&screen),
        ack: Arc::clone(&ack),
        zgfx: zgfx::Decompressor::new(),
        decoder: openh264::decoder::Decoder::new().unwrap(),
    };
    let heard = Arc::new(Mutex::new(Heard::default()));
    let confirm_audio = Arc::new(AtomicBool::new(o.confirm_audio));
    let recorder = Recorder {
        formats: o.audio.clone(),
        heard: Arc::clone(&heard),
    };
    let mut connector = ClientConnector::new(config(o), local)
        .with_static_channel(DrdynvcClient::new().with_dynamic_channel(gfx))
        .with_static_channel(Rdpsnd::new(Box::new(recorder)));

    let mut framed = Framed::new(tcp);
    let should_upgrade = ironrdp_blocking::connect_begin(&mut framed, &mut connector)
        .map_err(|e| e.report().to_string())?;
    let tcp = framed.into_inner_no_leftover();

    // The gateway's own "insecure" policy: the demo's certificate is self-signed.
    let tls_config =
        rdpwire::rdp::target::client_config(&rdpwire::rdp::TlsPolicy::Insecure).unwrap();
    let conn = ClientConnection::new(tls_config, TlsName::try_from("localhost").unwrap()).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("tls: {e}"))?;
    }
    let cert = tls.conn.peer_certificates().unwrap()[0].clone();
    let cert = x509_cert::Certificate::from_der(&cert).unwrap();
    let public_key = cert
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes()
        .to_vec();

    let upgraded = ironrdp_blocking::mark_as_upgraded(should_upgrade, &mut connector);
    let mut framed = Framed::new(tls);
    let outcome = ironrdp_blocking::connect_finalize(
        upgraded,
        connector,
        &mut framed,
        &mut NoNetwork,
        ServerName::new(addr.ip().to_string()),
        public_key,
        None,
    )
    .map_err(|e| e.report().to_string())?;
    let ConnectionOutcome::Connected(result) = outcome else {
        return Err("unexpected redirection".to_owned());
    };
    let (tls, leftover) = framed.into_inner();
    let drdynvc_id = result
        .static_channels
        .get_channel_id_by_type::<DrdynvcClient>()
        .ok_or("the server did not join drdynvc")?;
    let user_channel_id = result.user_channel_id;
    let rdpsnd_id = result.static_channels.get_channel_id_by_type::<Rdpsnd>();
    let tls = Arc::new(Mutex::new(tls));
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicBool::new(false));
    let ultimatum = Arc::new(AtomicBool::new(false));
    let reader = {
        let (tls, stop, closed) = (Arc::clone(&tls), Arc::clone(&stop), Arc::clone(&closed));
        let got_ultimatum = Arc::clone(&ultimatum);
        let (heard, confirm_audio) = (Arc::clone(&heard), Arc::clone(&confirm_audio));
        let mut channels = result.static_channels;
        let mut rx = leftover.to_vec();
        std::thread::spawn(move || {
            tls.lock()
                .unwrap()
                .sock
                .set_read_timeout(Some(Duration::from_millis(5)))
                .unwrap();
            let mut chunk = vec![0u8; 64 * 1024];
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                // Bytes read with the last PDU of the connection sequence are in `rx` already.
                rx.extend_from_slice(&chunk[..n]);
                while let Ok(Some(info)) = ironrdp_pdu::find_size(&rx) {
                    if rx.len() < info.length {
                        break;
                    }
                    let frame: Vec<u8> = rx.drain(..info.length).collect();
                    if info.action != Action::X224 {
                        continue;
                    }
                    let message = match decode::<X224<McsMessage<'_>>>(&frame) {
                        Ok(X224(message)) => message,
                        Err(e) => {
                            eprintln!("client: undecodable x224 frame: {e}");
                            continue;
                        }
                    };
                    match message {
                        McsMessage::SendDataIndication(data) => {
                            let Some(channel) = channels.get_by_channel_id_mut(data.channel_id)
                            else {
                                continue;
                            };
                            let mut responses = channel.process(&data.user_data).unwrap();
                            // Once waves flow, the sound channel's only answers are Wave
                            // Confirms: holding them back is a client that stops confirming.
                            if Some(data.channel_id) == rdpsnd_id
                                && !confirm_audio.load(Ordering::Relaxed)
                                && !heard.lock().unwrap().waves.is_empty()
                            {
                                responses.clear();
                            }
                            let out = client_encode_svc_messages(
                                responses,
                                data.channel_id,
                                user_channel_id,
                            )
                            .unwrap();
                            if !out.is_empty() {
                                let mut tls = tls.lock().unwrap();
                                let _ = std::io::Write::write_all(&mut *tls, &out);
                                let _ = std::io::Write::flush(&mut *tls);
                            }
                        }
                        McsMessage::DisconnectProviderUltimatum(_) => {
                            got_ultimatum.store(true, Ordering::Relaxed);
                            closed.store(true, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
                n = {
                    let mut tls = tls.lock().unwrap();
                    match std::io::Read::read(&mut *tls, &mut chunk) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                        Err(_) => break,
                    }
                };
                if n == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            closed.store(true, Ordering::Relaxed);
        })
    };
    Ok(Client {
        tls,
        screen,
        ack,
        stop,
        closed,
        ultimatum,
        reader: Some(reader),
        user_channel_id,
        drdynvc_id,
        heard,
        confirm_audio,
        rdpsnd_id,
    })
}

impl Client {
    fn send_input(&self, events: Vec<FastPathInputEvent>) {
        let pdu = FastPathInput::new(events).unwrap();
        let bytes = encode_vec(&pdu).unwrap();
        let mut tls = self.tls.lock().unwrap();
        std::io::Write::write_all(&mut *tls, &bytes).unwrap();
        std::io::Write::flush(&mut *tls).unwrap();
    }

    pub fn click(&self, x: u16, y: u16) {
        let mouse = |flags| {
            FastPathInputEvent::MouseEvent(MousePdu {
                flags,
                number_of_wheel_rotation_units: 0,
                x_position: x,
                y_position: y,
            })
        };
        self.send_input(vec![
            mouse(PointerFlags::MOVE),
            mouse(PointerFlags::DOWN | PointerFlags::LEFT_BUTTON),
            mouse(PointerFlags::LEFT_BUTTON),
        ]);
    }

    /// Presses and releases each set-1 scancode in turn.
    pub fn keys(&self, scancodes: &[u8]) {
        let events = scancodes
            .iter()
            .flat_map(|&code| {
                [
                    FastPathInputEvent::KeyboardEvent(KeyboardFlags::empty(), code),
                    FastPathInputEvent::KeyboardEvent(KeyboardFlags::RELEASE, code),
                ]
            })
            .collect();
        self.send_input(events);
    }

    pub fn unicode(&self, text: &str) {
        let events = text
            .encode_utf16()
            .flat_map(|unit| {
                [
                    FastPathInputEvent::UnicodeKeyboardEvent(KeyboardFlags::empty(), unit),
                    FastPathInputEvent::UnicodeKeyboardEvent(KeyboardFlags::RELEASE, unit),
                ]
            })
            .collect();
        self.send_input(events);
    }

    /// Turns automatic frame acknowledgements on or off; turning them on also acknowledges
    /// the last frame received, so a paused stream resumes.
    pub fn set_ack(&self, on: bool) {
        self.ack.store(on, Ordering::Relaxed);
        if !on {
            return;
        }
        let (channel_id, frame_id, frames) = {
            let s = self.screen.lock().unwrap();
            (s.channel_id, s.last_frame_id, s.frames)
        };
        let (Some(channel_id), Some(frame_id)) = (channel_id, frame_id) else {
            return;
        };
        let messages: Vec<DvcMessage> = vec![Box::new(ack(frame_id, frames))];
        let svc = encode_dvc_messages(channel_id, messages, ChannelFlags::SHOW_PROTOCOL).unwrap();
        let bytes = client_encode_svc_messages(svc, self.drdynvc_id, self.user_channel_id).unwrap();
        let mut tls = self.tls.lock().unwrap();
        std::io::Write::write_all(&mut *tls, &bytes).unwrap();
        std::io::Write::flush(&mut *tls).unwrap();
    }

    /// Turns Wave Confirms on or off; turning them on also confirms the last wave heard, so
    /// sound the server paused resumes.
    pub fn set_audio_confirm(&self, on: bool) {
        self.confirm_audio.store(on, Ordering::Relaxed);
        let last = {
            let heard = self.heard.lock().unwrap();
            heard.waves.last().map(|w| (w.timestamp, heard.waves.len()))
        };
        let (Some(channel_id), Some((timestamp, count)), true) = (self.rdpsnd_id, last, on) else {
            return;
        };
        // The server numbers waves from 0, one block number per wave.
        let confirm = ClientAudioOutputPdu::WaveConfirm(WaveConfirmPdu {
            timestamp: timestamp as u16,
            block_no: ((count - 1) % 256) as u8,
        });
        let bytes = client_encode_svc_messages(
            vec![SvcMessage::from(confirm)],
            channel_id,
            self.user_channel_id,
        )
        .unwrap();
        let mut tls = self.tls.lock().unwrap();
        std::io::Write::write_all(&mut *tls, &bytes).unwrap();
        std::io::Write::flush(&mut *tls).unwrap();
    }

    /// The waves heard so far.
    pub fn waves(&self) -> Vec<HeardWave> {
        self.heard.lock().unwrap().waves.clone()
    }

    pub fn frames(&self) -> u32 {
        self.screen.lock().unwrap().frames
    }

    /// Whether the server ended the connection.
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Whether the server sent a Disconnect Provider Ultimatum.
    pub fn got_ultimatum(&self) -> bool {
        self.ultimatum.load(Ordering::Relaxed)
    }

    /// Waits until `cond` holds on the screen, or panics.
    pub fn wait_screen(&self, what: &str, timeout: Duration, cond: impl Fn(&Screen) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let s = self.screen.lock().unwrap();
                if cond(&s) {
                    return;
                }
                if Instant::now() > deadline {
                    panic!(
                        "timed out waiting for {what}: {} frames, surface {:?}, errors {:?}",
                        s.frames, s.surface_size, s.errors
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if let Ok(mut tls) = self.tls.lock() {
            tls.conn.send_close_notify();
            let _ = std::io::Write::flush(&mut *tls);
            let _ = tls.sock.shutdown(std::net::Shutdown::Both);
        }
    }
}

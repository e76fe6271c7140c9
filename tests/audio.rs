//! Desktop sound through the gateway, seen from a WebSocket client that speaks the browser
//! protocol: the embedded demo desktop plays tones over RDPSND (PCM at 44.1 or 48 kHz, or
//! Opus), the gateway sends Opus, and the test decodes it with libopus and measures the pitch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
#[path = "support/tone.rs"]
mod tone;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use rdpwire::protocol::{FromBrowser, State, ToBrowser};
use rdpwire::rdp::input::MouseButton;
use rdpwire::rdp::InputEvent;
use support::{Gateway, Ws};
use tungstenite::Message;

/// What one session received, as far as sound goes.
#[derive(Default)]
struct Heard {
    starts: Vec<u8>,
    /// (timestamp_us, dropped, opus packet, arrival)
    packets: Vec<(u64, u32, Vec<u8>, Instant)>,
    frames: u32,
}

impl Heard {
    fn pcm(&self) -> Vec<f32> {
        let mut dec = opus::Decoder::new(48_000, opus::Channels::Stereo).unwrap();
        let mut buf = vec![0f32; 5760 * 2];
        let mut left = Vec::new();
        for (_, _, p, _) in &self.packets {
            let n = dec.decode_float(p, &mut buf, false).unwrap();
            left.extend(buf[..n * 2].iter().step_by(2));
        }
        left
    }
}

/// Reads for `dur`, answering every frame so the picture keeps flowing.
fn listen(ws: &mut Ws, gw: &Gateway, dur: Duration, heard: &mut Heard) {
    let until = Instant::now() + dur;
    while Instant::now() < until {
        let m = match ws.ws.read() {
            Ok(Message::Binary(b)) => b.to_vec(),
            Ok(Message::Close(f)) => panic!("closed: {f:?}\n{}", gw.log_text()),
            Ok(_) => continue,
            Err(e) => panic!("{e}\n{}", gw.log_text()),
        };
        match ToBrowser::decode(&m).unwrap() {
            ToBrowser::AudioStart {
                codec,
                sample_rate,
                channels,
            } => {
                assert_eq!((codec, sample_rate), (1, 48_000));
                heard.starts.push(channels);
            }
            ToBrowser::AudioPacket {
                timestamp_us,
                dropped,
                data,
                ..
            } => heard
                .packets
                .push((timestamp_us, dropped, data.into_owned(), Instant::now())),
            ToBrowser::EndFrame { frame_id } => answer_frame(ws, heard, frame_id),
            _ => {}
        }
    }
}

/// Tells the gateway the page has the frame, as a page does, so the picture keeps flowing.
fn answer_frame(ws: &mut Ws, heard: &mut Heard, frame_id: u32) {
    heard.frames += 1;
    ws.send(&FromBrowser::FrameDecoded {
        frame_id,
        frames_decoded: heard.frames,
        queue_depth: 0,
    });
}

/// A Ping answered while sound and frames keep arriving.
fn ping(ws: &mut Ws, gw: &Gateway, nonce: u64, heard: &mut Heard) {
    ws.send(&FromBrowser::Ping { nonce });
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let m = match ws.ws.read() {
            Ok(Message::Binary(b)) => b.to_vec(),
            Ok(Message::Close(f)) => panic!("closed: {f:?}\n{}", gw.log_text()),
            Ok(_) => continue,
            Err(e) => panic!("{e}\n{}", gw.log_text()),
        };
        match ToBrowser::decode(&m).unwrap() {
            ToBrowser::Pong { nonce: n } if n == nonce => return,
            ToBrowser::EndFrame { frame_id } => answer_frame(ws, heard, frame_id),
            _ => {}
        }
    }
    panic!("no pong {nonce}\n{}", gw.log_text());
}

/// A demo session, connected, with the first frames answered.
fn connect(gw: &Gateway, ws: &mut Ws) -> Heard {
    ws.hello();
    ws.send(&FromBrowser::ClientHello {
        width: 1024,
        height: 768,
        target: String::new(),
    });
    let mut heard = Heard::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "{}", gw.log_text());
        let m = ws.ws.read().unwrap().into_data();
        if let Ok(ToBrowser::Status {
            state: State::Connected,
            ..
        }) = ToBrowser::decode(&m)
        {
            break;
        }
    }
    listen(ws, gw, Duration::from_millis(300), &mut heard);
    heard
}

fn key(ws: &mut Ws, scancode: u8) {
    for down in [true, false] {
        ws.send(&FromBrowser::Input(InputEvent::Key {
            scancode,
            extended: false,
            down,
        }));
    }
}

const F9: u8 = 0x43;

fn click(ws: &mut Ws, x: u16, y: u16) {
    for down in [true, false] {
        ws.send(&FromBrowser::Input(InputEvent::MouseButton {
            button: MouseButton::Left,
            down,
            x,
            y,
        }));
    }
}

fn tune_button() -> (u16, u16) {
    let (x, y, w, h) = rdpwire::demo::painter::TUNE_BUTTON;
    (x + w / 2, y + h / 2)
}

/// The tune (440 Hz then 880 Hz, 400 ms each) in every format the demo server can send:
/// 44.1 kHz PCM goes through the resampler (dropping samples would play it 9 % sharp),
/// 48 kHz PCM straight to the encoder, Opus through untouched.
#[test]
fn the_demo_tune_reaches_the_page_as_opus_at_its_pitch() {
    for format in ["pcm44", "pcm48", "opus"] {
        let gw = Gateway::start_demo(&["--cores", "1", "--audio-format", format]);
        let mut ws = gw.ws().unwrap();
        let mut heard = connect(&gw, &mut ws);
        let (x, y) = tune_button();
        let clicked = Instant::now();
        click(&mut ws, x, y);
        listen(&mut ws, &gw, Duration::from_millis(1500), &mut heard);
        assert_eq!(heard.starts, vec![2], "{format}: one stereo stream");
        let pcm = heard.pcm();
        let tones = tone::tones(&pcm, 48_000, 960, 0.05);
        let long: Vec<_> = tones.iter().filter(|t| t.len >= 9600).collect();
        assert_eq!(long.len(), 2, "{format}: {tones:?}");
        for (t, want) in long.iter().zip([440.0, 880.0]) {
            assert!(
                (t.freq - want).abs() < want * 0.01,
                "{format}: {:.1} Hz, wanted {want} Hz ({tones:?})",
                t.freq
            );
            let ms = t.len as f64 / 48.0;
            assert!((300.0..=500.0).contains(&ms), "{format}: {ms} ms tone");
        }
        let first = heard.packets.first().unwrap().3 - clicked;
        println!(
            "{format}: {} packets, tones {:.1} Hz then {:.1} Hz, first packet {:?} after the click",
            heard.packets.len(),
            long[0].freq,
            long[1].freq,
            first
        );
        assert!(first < Duration::from_millis(300), "{format}: {first:?}");
        let m = gw.metrics();
        assert!(m.get("rdpwire_audio_packets_total{direction=\"from_server\"}") >= 40);
        assert!(
            m.get("rdpwire_audio_packets_total{direction=\"to_browser\"}")
                >= heard.packets.len() as u64
        );
        assert_eq!(m.get("rdpwire_audio_dropped_total"), 0, "{format}");
    }
}

/// The page's buffer reports are taken (their effect on the wave confirmations is tested in
/// `rdp::audio`); a depth out of range is a protocol error for that session only, and the
/// neighbour keeps its sound and picture.
#[test]
fn audio_buffer_reports_are_checked() {
    let gw = Gateway::start_demo(&["--cores", "1"]);
    let mut ws = gw.ws().unwrap();
    let mut heard = connect(&gw, &mut ws);
    ws.send(&FromBrowser::AudioBuffer { buffer_ms: 60 });
    ping(&mut ws, &gw, 1, &mut heard);
    let mut other = gw.ws().unwrap();
    other.hello();
    let mut bad = FromBrowser::AudioBuffer { buffer_ms: 0 }.encode();
    bad[2..4].copy_from_slice(&20_000u16.to_le_bytes());
    other.ws.send(Message::binary(bad)).unwrap();
    let (code, reason) = other.expect_close();
    assert_eq!(code, 1002);
    assert!(
        reason.contains("buffer_ms 20000 is above 10000"),
        "{reason}"
    );
    ping(&mut ws, &gw, 2, &mut heard);
}

/// A browser socket with a tiny receive buffer, so a page that stops reading is felt at once.
fn slow_ws(gw: &Gateway) -> Ws {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&gw.addr.into()).unwrap();
    let stream: TcpStream = sock.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let stream = tungstenite::stream::MaybeTlsStream::Plain(stream);
    let (ws, _) = tungstenite::client(format!("ws://{}/ws", gw.addr), stream).unwrap();
    Ws { ws }
}

/// A page that stops reading while the desktop plays a steady tone: the gateway drops the
/// oldest sound (counted), its memory stays flat, and when the page reads again the session,
/// its picture and its sound are all still there.
#[test]
fn a_page_that_stops_reading_loses_sound_not_memory() {
    let gw = Gateway::start_demo(&["--cores", "1", "--browser-sndbuf", "4KiB"]);
    let pid = gw.child.id();
    let mut ws = slow_ws(&gw);
    let mut heard = connect(&gw, &mut ws);
    key(&mut ws, F9);
    listen(&mut ws, &gw, Duration::from_millis(500), &mut heard);
    assert!(!heard.packets.is_empty(), "no sound before the stall");
    let before = heard.packets.len();

    // The page stops reading for 5 s; the gateway is sampled every 100 ms.
    let started = Instant::now();
    let mut rss = Vec::new();
    while started.elapsed() < Duration::from_secs(5) {
        rss.push(support::proc_status_bytes(pid, "VmRSS"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = gw.metrics();
    let dropped = m.get("rdpwire_audio_dropped_total");
    let settled = &rss[10..];
    let (lo, hi) = (
        *settled.iter().min().unwrap(),
        *settled.iter().max().unwrap(),
    );
    println!("stall: {dropped} packets dropped, gateway RSS {lo}..{hi} bytes over the last 4 s");
    assert!(
        dropped > 50,
        "only {dropped} packets dropped in 5 s of stall"
    );
    assert!(
        hi - lo < 1 << 20,
        "RSS moved {lo}..{hi} while the page stalled"
    );

    // Reading again: what waited is recent sound, with the drops counted in it.
    let mut after = Heard::default();
    listen(&mut ws, &gw, Duration::from_millis(1500), &mut after);
    let last = after.packets.last().expect("sound resumes");
    assert!(u64::from(last.1) >= dropped, "{} < {dropped}", last.1);
    let f = tone::dominant_frequency(&after.pcm()[9600..], 48_000);
    assert!((f - 660.0).abs() < 6.6, "{f} Hz after the stall");
    // The session and its picture are alive.
    ping(&mut ws, &gw, 7, &mut after);
    click(&mut ws, 600, 500);
    listen(&mut ws, &gw, Duration::from_millis(1000), &mut after);
    assert!(
        after.frames > 0,
        "no frame after the stall\n{}",
        gw.log_text()
    );
    println!(
        "before the stall {before} packets; after it {} packets and {} frames",
        after.packets.len(),
        after.frames
    );
}

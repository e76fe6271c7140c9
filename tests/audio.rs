//! Desktop sound through the gateway, seen from a WebSocket client that speaks the browser
//! protocol: the embedded demo desktop plays tones over RDPSND (PCM at 44.1 or 48 kHz, or
//! Opus), the gateway sends Opus, and the test decodes it with libopus and measures the pitch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/browser.rs"]
mod browser;
mod support;
#[path = "support/tone.rs"]
mod tone;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use browser::{click, connect, key, listen, ping, Heard, F9};
use rdpwire::protocol::FromBrowser;
use support::{Gateway, Ws};
use tungstenite::Message;

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

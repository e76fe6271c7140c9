//! A live desktop through the gateway, seen from a WebSocket client that speaks the browser
//! protocol: the embedded demo desktop and FreeRDP's shadow server as real RDP servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/freerdp.rs"]
mod freerdp;
mod support;

use std::time::{Duration, Instant};

use rdpwire::protocol::{FromBrowser, ToBrowser};
use rdpwire::rdp::InputEvent;
use support::{Gateway, TempDir, Ws};
use tungstenite::Message;

/// Reads one protocol message (skipping WebSocket control frames).
fn next(ws: &mut Ws) -> Vec<u8> {
    loop {
        match ws.ws.read().unwrap() {
            Message::Binary(b) => return b.to_vec(),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

/// `next`, showing the gateway's log when nothing comes.
fn hello(ws: &mut Ws, target: &str) {
    ws.hello();
    ws.send(&FromBrowser::ClientHello {
        width: 1024,
        height: 768,
        target: target.into(),
    });
}

/// Decoded access units of one surface, with OpenH264 (the same decoder a test can trust to
/// be independent of the browser).
struct Picture {
    decoder: openh264::decoder::Decoder,
    rgb: Vec<u8>,
    width: usize,
}

impl Picture {
    fn new() -> Self {
        Picture {
            decoder: openh264::decoder::Decoder::new().unwrap(),
            rgb: Vec::new(),
            width: 0,
        }
    }

    fn decode(&mut self, au: &[u8]) {
        use openh264::formats::YUVSource;
        if let Some(yuv) = self.decoder.decode(au).unwrap() {
            let (w, h) = yuv.dimensions();
            self.width = w;
            self.rgb.resize(w * h * 3, 0);
            yuv.write_rgb8(&mut self.rgb);
        }
    }

    fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

#[test]
fn demo_desktop_streams_h264_as_it_came_and_obeys_frame_acks() {
    let gw = Gateway::start_demo(&["--cores", "1"]);
    let mut ws = gw.ws().unwrap();
    hello(&mut ws, "");
    let started = Instant::now();
    let mut seen_size = None;
    let mut connected = false;
    let mut states = Vec::new();
    let mut picture = Picture::new();
    let mut frames = 0u32;
    let mut first_au: Option<Vec<u8>> = None;
    while frames < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "only {frames} frames"
        );
        let m = next(&mut ws);
        match ToBrowser::decode(&m).unwrap() {
            ToBrowser::Status { text, state } => {
                connected |= state == rdpwire::protocol::State::Connected;
                states.push(text.to_string());
            }
            ToBrowser::DesktopSize { width, height } => seen_size = Some((width, height)),
            ToBrowser::Avc420 { access_unit, .. } => {
                if first_au.is_none() {
                    first_au = Some(access_unit.to_vec());
                }
                picture.decode(&access_unit);
            }
            ToBrowser::EndFrame { frame_id } => {
                frames += 1;
                ws.send(&FromBrowser::FrameDecoded {
                    frame_id,
                    frames_decoded: frames,
                    queue_depth: 0,
                });
            }
            _ => {}
        }
    }
    assert!(connected);
    assert_eq!(
        states,
        [
            "connecting",
            "authenticating as demo",
            "signed in, opening the desktop",
            "connected"
        ]
    );
    assert_eq!(seen_size, Some((1024, 768)));
    let au = first_au.unwrap();
    assert_eq!(&au[..4], &[0, 0, 0, 1], "Annex B start code");
    // The demo's red square at (40,40)–(240,240), within H.264 tolerance.
    let [r, g, b] = picture.pixel(140, 140);
    assert!(r > 200 && g < 60 && b < 60, "red square is {r},{g},{b}");

    // Stop acknowledging: the stream stops within the bound of frames in flight.
    let mut unacked = 0;
    let deadline = Instant::now() + Duration::from_millis(1500);
    if let MaybeTls::Plain(s) = MaybeTls::from(&mut ws) {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
    while Instant::now() < deadline {
        match ws.ws.read() {
            Ok(Message::Binary(b)) => {
                if let Ok(ToBrowser::EndFrame { .. }) = ToBrowser::decode(&b) {
                    unacked += 1;
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        unacked <= rdpwire::session::MAX_FRAMES_IN_FLIGHT,
        "{unacked} frames arrived without acknowledgement"
    );
    let m = gw.metrics();
    assert_eq!(m.get("rdpwire_sessions_active"), 1);
    assert!(m.get("rdpwire_bytes_total{direction=\"server_in\"}") > 1000);
    assert!(m.get("rdpwire_bytes_total{direction=\"server_out\"}") > 100);
    assert!(m.get("rdpwire_bytes_total{direction=\"browser_out\"}") > 1000);
}

/// Access to the plain socket under the test client.
enum MaybeTls<'a> {
    Plain(&'a mut std::net::TcpStream),
    Other,
}

impl<'a> From<&'a mut Ws> for MaybeTls<'a> {
    fn from(ws: &'a mut Ws) -> Self {
        match ws.ws.get_mut() {
            tungstenite::stream::MaybeTlsStream::Plain(s) => MaybeTls::Plain(s),
            _ => MaybeTls::Other,
        }
    }
}

#[test]
fn input_reaches_the_demo_desktop() {
    let gw = Gateway::start_demo(&["--cores", "1"]);
    let mut ws = gw.ws().unwrap();
    hello(&mut ws, "demo");
    let mut picture = Picture::new();
    let mut sent = false;
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "click never showed"
        );
        let m = next(&mut ws);
        match ToBrowser::decode(&m).unwrap() {
            ToBrowser::Avc420 { access_unit, .. } => picture.decode(&access_unit),
            ToBrowser::EndFrame { frame_id } => {
                ws.send(&FromBrowser::FrameDecoded {
                    frame_id,
                    frames_decoded: frame_id,
                    queue_depth: 0,
                });
                if !sent {
                    for down in [true, false] {
                        ws.send(&FromBrowser::Input(InputEvent::MouseButton {
                            button: rdpwire::rdp::input::MouseButton::Left,
                            down,
                            x: 600,
                            y: 500,
                        }));
                    }
                    sent = true;
                } else if picture.width > 0 {
                    // The demo draws a marker where the click landed: no longer background.
                    let before = picture.pixel(600, 500);
                    if before != [0, 0, 0] && is_marker(before) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
}

/// The demo's click marker colour, within H.264 tolerance.
fn is_marker(p: [u8; 3]) -> bool {
    let m = rdpwire::demo::painter::MARKER;
    p.iter()
        .zip(m.iter())
        .all(|(a, b)| (i16::from(*a) - i16::from(*b)).abs() < 40)
}

#[test]
fn unknown_target_is_refused_in_words() {
    let gw = Gateway::start_demo(&["--cores", "1"]);
    let mut ws = gw.ws().unwrap();
    hello(&mut ws, "nowhere");
    loop {
        match ToBrowser::decode(&next(&mut ws)).unwrap() {
            ToBrowser::Disconnected { reason } => {
                assert!(reason.contains("no target named \"nowhere\""), "{reason}");
                break;
            }
            _ => continue,
        }
    }
    let (code, reason) = ws.expect_close();
    assert_eq!(code, 4000, "{reason}");
}

/// A gateway configured with the shadow server as target `shadow` (and `shadow-wrong`, the same
/// server with a wrong password; `closed`, a port nobody listens on).
fn gateway_for(server: &freerdp::ShadowServer) -> (Gateway, TempDir) {
    let dir = std::env::temp_dir().join(format!(
        "rdpwire-live-{}-{}",
        std::process::id(),
        server.port
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.join("gw.toml");
    std::fs::write(
        &file,
        format!(
            "[targets.shadow]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"{user}\"\npassword_env = \"SHADOW_PW\"\ntls = \"insecure\"\n\
             [targets.shadow-wrong]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"{user}\"\npassword_env = \"WRONG_PW\"\ntls = \"insecure\"\n\
             [targets.closed]\nhost = \"127.0.0.1\"\nport = {closed}\nusername = \"x\"\npassword_env = \"WRONG_PW\"\ntls = \"insecure\"\n",
            port = server.port,
            user = freerdp::USER,
        ),
    )
    .unwrap();
    std::env::set_var("SHADOW_PW", freerdp::PASSWORD);
    std::env::set_var("WRONG_PW", "not-the-password");
    let gw = Gateway::start(&["--cores", "1", "--config", file.to_str().unwrap()]);
    (gw, TempDir(dir))
}

/// Anonymous resident memory (heap, stacks, arenas): where a framebuffer would live. File
/// pages (the binary's code, faulted in as new code paths run) are left out: they are shared
/// and reclaimable, and they do not grow with sessions.
fn rss(pid: u32) -> u64 {
    support::proc_status_bytes(pid, "RssAnon")
}

#[test]
fn a_1080p_session_costs_the_gateway_no_framebuffer() {
    stream_1080p(false);
}

/// Key frames far larger than a pool chunk (a tiled random bitmap makes H.264 frames of about
/// a megabyte) are written to the page whole, from where the RDP side left them.
#[test]
fn large_key_frames_reach_the_page_whole() {
    stream_1080p(true);
}

fn stream_1080p(noisy: bool) {
    let server = freerdp::ShadowServer::start(1920, 1080);
    let (gw, _dir) = gateway_for(&server);
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss(gw.child.id());
    let mut ws = gw.ws().unwrap();
    ws.hello();
    ws.send(&FromBrowser::ClientHello {
        width: 1920,
        height: 1080,
        target: "shadow".into(),
    });
    // The shadow server sends a frame only when the screen changes: keep repainting it, every
    // other time with a tiled random bitmap, whose key frames are far larger than one pool
    // chunk (they are written whole, from the heap).
    let display = server.display;
    let noise = std::env::temp_dir().join(format!("rdpwire-noise-{}.xbm", std::process::id()));
    std::fs::write(&noise, freerdp::random_xbm(256, 256)).unwrap();
    let painting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let painter = {
        let painting = painting.clone();
        let noise = noise.clone();
        std::thread::spawn(move || {
            let colours = ["red", "blue", "green", "white", "black", "yellow"];
            let mut i = 0;
            while painting.load(std::sync::atomic::Ordering::Relaxed) {
                let display = format!(":{display}");
                let mut cmd = std::process::Command::new("xsetroot");
                cmd.args(["-display", &display]);
                if !noisy || i % 2 == 0 {
                    cmd.args(["-solid", colours[i % 6]]);
                } else {
                    cmd.arg("-bitmap")
                        .arg(&noise)
                        .args(["-fg", colours[i % 6], "-bg", "black"]);
                }
                let _ = cmd.status();
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let started = Instant::now();
    let (mut frames, mut bytes, mut peak, mut largest) = (0u32, 0usize, 0u64, 0usize);
    while started.elapsed() < Duration::from_secs(4) {
        let m = ws.next_logged(&gw);
        bytes += m.len();
        largest = largest.max(m.len());
        match ToBrowser::decode(&m).unwrap() {
            ToBrowser::DesktopSize { width, height } => assert_eq!((width, height), (1920, 1080)),
            ToBrowser::EndFrame { frame_id } => {
                frames += 1;
                ws.send(&FromBrowser::FrameDecoded {
                    frame_id,
                    frames_decoded: frames,
                    queue_depth: 0,
                });
                peak = peak.max(rss(gw.child.id()));
            }
            _ => {}
        }
    }
    painting.store(false, std::sync::atomic::Ordering::Relaxed);
    painter.join().unwrap();
    let _ = std::fs::remove_file(&noise);
    let above = peak.saturating_sub(idle);
    println!(
        "1080p: {frames} frames, {bytes} bytes forwarded, largest message {largest} bytes, gateway anonymous RSS idle {idle} peak {peak} (+{above})"
    );
    assert!(frames >= 4, "only {frames} frames in 4 s");
    if noisy {
        assert!(
            largest > 64 << 10,
            "no message above 64 KiB reached the page (largest {largest} bytes)"
        );
        return;
    }
    // A 1920×1080 RGBA framebuffer alone would be 7.9 MiB.
    assert!(
        above < 8 << 20,
        "gateway grew by {above} bytes with one 1080p session"
    );
}

#[test]
fn wrong_password_and_unreachable_host_are_reported_in_words() {
    let server = freerdp::ShadowServer::start(800, 600);
    let (gw, _dir) = gateway_for(&server);
    for (target, words) in [
        ("shadow-wrong", "authentication failed for user 'rdpuser'"),
        ("closed", "cannot reach 127.0.0.1:"),
    ] {
        let mut ws = gw.ws().unwrap();
        hello(&mut ws, target);
        let reason = loop {
            if let ToBrowser::Disconnected { reason } = ToBrowser::decode(&next(&mut ws)).unwrap() {
                break reason.to_string();
            }
        };
        assert!(reason.contains(words), "{target}: {reason}");
        assert_eq!(ws.expect_close().0, 4000);
    }
    // The gateway is unharmed: the right password still works.
    let mut ws = gw.ws().unwrap();
    hello(&mut ws, "shadow");
    loop {
        if let ToBrowser::DesktopSize { width, height } = ToBrowser::decode(&next(&mut ws)).unwrap()
        {
            assert_eq!((width, height), (1024, 768));
            break;
        }
    }
}

//! The whole path in a real browser: headless Chromium loads the page from the gateway binary,
//! the gateway is the RDP client of a real server (FreeRDP 3's shadow server on Xvfb, which
//! sends H.264 High profile, or the embedded demo desktop), and the test looks at what the
//! user sees: the screen canvas's pixels and the status line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

#[path = "support/chromium.rs"]
mod chromium;
#[path = "support/freerdp.rs"]
mod freerdp;
#[path = "support/tone.rs"]
mod tone;

use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chromium::Chromium;
use freerdp::ShadowServer;
use support::{Gateway, TempDir, BIN};

/// One browser and one RDP server at a time: on a 2-core machine, two of each would make the
/// latency figures meaningless.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Per channel, for pictures that went through H.264.
const TOL: u8 = 12;

/// A gateway with the shadow server as target `shadow`, and as `shadow-wrong` with a wrong
/// password. Passwords reach the gateway through its own environment only.
fn gateway_for(server: &ShadowServer) -> (Gateway, TempDir) {
    let dir = std::env::temp_dir().join(format!(
        "rdpwire-web-{}-{}",
        std::process::id(),
        server.port
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gw.toml");
    let mut toml = String::new();
    for (name, env) in [
        ("shadow", "WEB_SHADOW_PW"),
        ("shadow-wrong", "WEB_WRONG_PW"),
    ] {
        toml.push_str(&format!(
            "[targets.{name}]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"{}\"\n\
             password_env = \"{env}\"\ntls = \"insecure\"\n",
            server.port,
            freerdp::USER
        ));
    }
    // A loopback port nobody listens on: the unreachable host.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    toml.push_str(&format!(
        "[targets.closed]\nhost = \"127.0.0.1\"\nport = {closed}\nusername = \"x\"\n\
         password_env = \"WEB_WRONG_PW\"\ntls = \"insecure\"\n"
    ));
    std::fs::write(&file, toml).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.env("WEB_SHADOW_PW", freerdp::PASSWORD)
        .env("WEB_WRONG_PW", "not-the-password");
    let gw = Gateway::start_with(cmd, &["--cores", "1", "--config", file.to_str().unwrap()]);
    (gw, TempDir(dir))
}

fn hex(rgb: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", rgb[0], rgb[1], rgb[2])
}

#[test]
fn shadow_server_picture_and_its_changes_show_on_the_canvas() {
    let _turn = serial();
    let (w, h) = chromium::VIEWPORT;
    let server = ShadowServer::start(w, h);
    let first = [0x33, 0x66, 0xcc];
    server.paint(&hex(first));
    let (gw, _dir) = gateway_for(&server);
    let mut b = Chromium::launch();
    b.navigate(&format!("http://{}/?target=shadow", gw.addr));
    b.wait_for(
        "rdpwire.stats().state === 'connected' && rdpwire.stats().framesDecoded > 0",
        Duration::from_secs(20),
    );
    let s = b.stats();
    assert_eq!(
        (s["width"].as_u64(), s["height"].as_u64()),
        (Some(u64::from(w)), Some(u64::from(h))),
        "{s}"
    );

    // The server's picture, decoded by the browser, on the canvas.
    let (cx, cy) = (w / 2, h / 2);
    if b.wait_pixel(cx, cy, first, TOL, Duration::from_secs(5))
        .is_none()
    {
        panic!(
            "the canvas never showed {first:?} at ({cx}, {cy}): {:?}\n{}\nshadow server log:\n{}",
            b.pixel(cx, cy),
            b.describe_page(),
            server.log_text()
        );
    }
    for (x, y) in [(2, 2), (w - 3, h - 3), (w / 4, h * 3 / 4)] {
        let p = b.pixel(x, y);
        assert!(
            (0..3).all(|i| p[i].abs_diff(first[i]) <= TOL),
            "({x}, {y}) is {p:?}"
        );
    }
    // Real servers send High profile; the page derived its codec string from the SPS.
    let codecs = b.stats()["codecs"].clone();
    assert!(
        codecs
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str().unwrap().starts_with("avc1.64")),
        "codecs {codecs}"
    );

    // Each change of the server's screen is on the canvas within 500 ms.
    let mut took = Vec::new();
    for colour in [[0xcc, 0x33, 0x33], [0x22, 0xaa, 0x44], [0xee, 0xee, 0xee]] {
        let t = Instant::now();
        server.paint(&hex(colour));
        let seen = b.wait_pixel(cx, cy, colour, TOL, Duration::from_secs(3));
        let Some(_) = seen else {
            panic!(
                "{colour:?} never showed: {:?}\n{}",
                b.pixel(cx, cy),
                b.describe_page()
            );
        };
        took.push(t.elapsed());
    }
    println!("colour change → canvas: {took:?}");
    for t in &took {
        assert!(*t < Duration::from_millis(500), "{took:?}");
    }
    // A picture of random bits: key frames of hundreds of kilobytes, which reach the page as
    // fragmented WebSocket messages; the stream goes on after them.
    let before = b.stats()["bytesReceived"].as_u64().unwrap();
    server.paint_noise("white");
    assert!(
        support::eventually(Duration::from_secs(5), || {
            b.stats()["bytesReceived"].as_u64().unwrap() > before + (200 << 10)
        }),
        "no large frames came\n{}",
        b.describe_page()
    );
    let after = [0x44, 0x22, 0x88];
    server.paint(&hex(after));
    assert!(
        b.wait_pixel(cx, cy, after, TOL, Duration::from_secs(5))
            .is_some(),
        "the picture stopped after the large frames: {:?}\n{}",
        b.pixel(cx, cy),
        b.describe_page()
    );
    let s = b.stats();
    assert_eq!(s["decodeErrors"], 0, "{s}");
    assert_eq!(s["state"], "connected", "{s}");

    // The pointer: a move in the page moves the X pointer of the server's display.
    b.mouse_move(300, 200);
    let display = format!(":{}", server.display);
    let located = support::eventually(Duration::from_secs(3), || {
        let out = Command::new("xdotool")
            .env("DISPLAY", &display)
            .arg("getmouselocation")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).starts_with("x:300 y:200 ")
    });
    assert!(located, "the server's pointer did not move to (300, 200)");
}

#[test]
fn wrong_password_and_unreachable_host_show_their_reasons_on_the_page() {
    let _turn = serial();
    let server = ShadowServer::start(800, 600);
    let (gw, _dir) = gateway_for(&server);
    let mut b = Chromium::launch();
    b.navigate(&format!("http://{}/?target=shadow-wrong", gw.addr));
    b.wait_for(
        "rdpwire.stats().state === 'disconnected'",
        Duration::from_secs(20),
    );
    let shown = b.status_text();
    assert!(
        shown.starts_with("disconnected: authentication failed for user 'rdpuser'"),
        "{shown}"
    );
    let reason = b.stats()["reason"].as_str().unwrap().to_owned();
    assert_eq!(shown, format!("disconnected: {reason}"));

    // An unreachable host, in the same browser: its reason shows too.
    b.navigate(&format!("http://{}/?target=closed", gw.addr));
    b.wait_for(
        "rdpwire.stats().state === 'disconnected'",
        Duration::from_secs(20),
    );
    let shown = b.status_text();
    assert!(
        shown.starts_with("disconnected: cannot reach 127.0.0.1:"),
        "{shown}"
    );
}

/// Pixels of the canvas area `[x, y, w, h]` that are near white.
fn white_pixels(b: &mut Chromium, area: [u32; 4]) -> u64 {
    let [x, y, w, h] = area;
    b.eval(&format!(
        "(() => {{ const d = document.getElementById('screen').getContext('2d')\
             .getImageData({x}, {y}, {w}, {h}).data; let n = 0; \
           for (let i = 0; i < d.length; i += 4) if (d[i] > 200 && d[i + 1] > 200 && d[i + 2] > 200) n++; \
           return n; }})()"
    ))
    .as_u64()
    .unwrap()
}

#[test]
fn demo_desktop_answers_clicks_and_typing_in_the_browser() {
    let _turn = serial();
    let gw = Gateway::start_demo(&["--cores", "1"]);
    let mut b = Chromium::launch();
    b.navigate(&format!("http://{}/", gw.addr));
    b.wait_for(
        "rdpwire.stats().state === 'connected' && rdpwire.stats().framesDecoded > 0",
        Duration::from_secs(20),
    );
    // The demo's flat red square.
    let red = rdpwire::demo::painter::RED;
    assert!(
        b.wait_pixel(140, 140, red, TOL, Duration::from_secs(5))
            .is_some(),
        "no red square: {:?}\n{}",
        b.pixel(140, 140),
        b.describe_page()
    );

    // A click in the page drops the demo's marker where it landed.
    let marker = rdpwire::demo::painter::MARKER;
    let t = Instant::now();
    b.click(600, 500);
    let seen = b.wait_pixel(600, 500, marker, 40, Duration::from_secs(3));
    assert!(
        seen.is_some(),
        "no marker at (600, 500): {:?}\n{}",
        b.pixel(600, 500),
        b.describe_page()
    );
    println!("click → marker on the canvas: {:?}", t.elapsed());

    // Typing writes on the demo's text line (white glyphs, 16 px each).
    let (tx, ty, scale) = rdpwire::demo::painter::TYPED_AT;
    let line = [u32::from(tx), u32::from(ty), 16 * 3, 8 * u32::from(scale)];
    let before = white_pixels(&mut b, line);
    b.key("KeyW", "w", "w");
    b.key("KeyM", "m", "m");
    b.key("KeyH", "h", "h");
    let typed = support::eventually(Duration::from_secs(3), || {
        white_pixels(&mut b, line) > before + 30
    });
    assert!(
        typed,
        "typing did not show: {before} white pixels before\n{}",
        b.describe_page()
    );
    let s = b.stats();
    assert_eq!(s["decodeErrors"], 0, "{s}");

    // A smaller window: the page asks for its size; the demo cannot resize, so the page
    // scales the 1024×768 desktop into 800×600 and the session goes on.
    b.set_viewport(800, 600);
    b.wait_for("rdpwire.stats().resizes === 1", Duration::from_secs(3));
    assert!(
        support::eventually(Duration::from_secs(3), || gw
            .log_text()
            .contains("server cannot resize")),
        "{}",
        gw.log_text()
    );
    let boxed = b.eval(
        "(() => { const r = document.getElementById('screen').getBoundingClientRect(); \
                  return [r.width, r.height]; })()",
    );
    assert_eq!(boxed, serde_json::json!([800, 600]));
    let s = b.stats();
    assert_eq!(
        (s["width"].as_u64(), s["state"].as_str()),
        (Some(1024), Some("connected")),
        "{s}"
    );
    // Input still lands at desktop coordinates through the scaling.
    b.click(900, 600);
    assert!(
        b.wait_pixel(900, 600, marker, 40, Duration::from_secs(3))
            .is_some(),
        "no marker at (900, 600) through the scaled canvas\n{}",
        b.describe_page()
    );
}

/// A reload is not the end of the desktop: the page keeps its resume ticket in the tab's
/// sessionStorage, the reloaded page takes the running session over, and what was typed before
/// is on the screen again (the same RDP connection, a fresh key frame for the new decoder).
#[test]
fn a_reloaded_page_finds_its_desktop_as_it_left_it() {
    let _turn = serial();
    let gw = Gateway::start_demo(&["--cores", "1"]);
    let mut b = Chromium::launch();
    let url = format!("http://{}/", gw.addr);
    b.navigate(&url);
    b.wait_for(
        "rdpwire.stats().state === 'connected' && rdpwire.stats().framesDecoded > 0 \
         && rdpwire.stats().resumable",
        Duration::from_secs(20),
    );
    let session = b.stats()["sessionId"].clone();
    let stored = b.eval("sessionStorage.getItem('rdpwire.resume') !== null");
    assert_eq!(stored, true, "the ticket is kept for this tab");
    assert!(
        !b.eval("location.href").as_str().unwrap().contains("resume"),
        "never in the address"
    );
    let (tx, ty, scale) = rdpwire::demo::painter::TYPED_AT;
    let line = [u32::from(tx), u32::from(ty), 16 * 3, 8 * u32::from(scale)];
    let before = white_pixels(&mut b, line);
    b.key("KeyW", "w", "w");
    b.key("KeyM", "m", "m");
    b.key("KeyH", "h", "h");
    assert!(
        support::eventually(Duration::from_secs(3), || white_pixels(&mut b, line)
            > before + 30),
        "typing did not show\n{}",
        b.describe_page()
    );

    // Reload: a new page, a new WebSocket, the same desktop.
    b.navigate(&url);
    b.wait_for(
        "rdpwire.stats().resumed && rdpwire.stats().state === 'connected' \
         && rdpwire.stats().framesDecoded > 0",
        Duration::from_secs(20),
    );
    assert_eq!(b.stats()["sessionId"], session, "the same session");
    assert!(
        support::eventually(Duration::from_secs(5), || white_pixels(&mut b, line)
            > before + 30),
        "the text typed before the reload is not on the screen\n{}",
        b.describe_page()
    );
    assert_eq!(b.stats()["decodeErrors"], 0);
    assert!(gw.log_text().contains("session resumed by a new page"));
    assert_eq!(gw.metrics().get("rdpwire_sessions_active"), 1);
}

/// The remote desktop goes away mid-session (its server stops): the page says so in words and
/// offers Reconnect; once the server is back, Reconnect opens the same target again.
#[test]
fn a_desktop_that_goes_away_is_reported_and_reconnect_brings_it_back() {
    use rdpwire::demo::{Content, DemoAudio, DemoOptions, DemoServer, MAX_CONNECTIONS};
    let _turn = serial();
    let options = |bind| DemoOptions {
        bind,
        username: "demo".to_owned(),
        password: "web-reconnect-3b7d".to_owned(),
        audio: DemoAudio::Off,
        content: Content::Desktop,
        max_connections: MAX_CONNECTIONS,
    };
    let server = DemoServer::start(options("127.0.0.1:0".parse().unwrap())).unwrap();
    let addr = server.addr();
    let dir = std::env::temp_dir().join(format!("rdpwire-web-reconnect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = TempDir(dir.clone());
    let file = dir.join("gw.toml");
    std::fs::write(
        &file,
        format!(
            "[targets.desk]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"demo\"\n\
             password_env = \"WEB_DESK_PW\"\ntls = \"insecure\"\n",
            addr.port()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.env("WEB_DESK_PW", "web-reconnect-3b7d");
    let gw = Gateway::start_with(cmd, &["--cores", "1", "--config", file.to_str().unwrap()]);
    let mut b = Chromium::launch();
    b.navigate(&format!("http://{}/?target=desk", gw.addr));
    b.wait_for(
        "rdpwire.stats().state === 'connected' && rdpwire.stats().framesDecoded > 0",
        Duration::from_secs(20),
    );
    assert!(!b.visible("#reconnect"));

    drop(server);
    b.wait_for(
        "rdpwire.stats().state === 'disconnected'",
        Duration::from_secs(10),
    );
    let status = b.status_text();
    assert!(
        status.contains("the remote desktop closed the connection"),
        "{status}"
    );
    assert!(b.visible("#reconnect"), "{}", b.describe_page());
    assert!(
        support::eventually(Duration::from_secs(5), || gw
            .metrics()
            .get("rdpwire_sessions_active")
            == 0),
        "the session's slot comes back"
    );

    let server = DemoServer::start(options(addr)).unwrap();
    b.click_element("#reconnect");
    b.wait_for(
        "document.readyState === 'complete' && window.rdpwire && rdpwire.stats().state === 'connected' \
         && rdpwire.stats().framesDecoded > 0",
        Duration::from_secs(20),
    );
    assert_eq!(b.stats()["target"], "desk");
    assert!(!b.visible("#reconnect"));
    assert_eq!(server.observed().connections, 1);
}

/// The demo's tune in the browser: a click on the desktop's "play tune" button, the server
/// sends 440 Hz then 880 Hz as 44.1 kHz PCM, the gateway resamples and encodes it, and the
/// page decodes and plays it. The test records what the page's worklet played.
#[test]
fn demo_desktop_plays_its_tune_in_the_browser() {
    let _turn = serial();
    let gw = Gateway::start_demo(&["--cores", "1"]);
    let mut b = Chromium::launch();
    b.navigate(&format!("http://{}/", gw.addr));
    b.wait_for(
        "rdpwire.stats().state === 'connected' && rdpwire.stats().framesDecoded > 0",
        Duration::from_secs(20),
    );
    let (x, y, w, h) = rdpwire::demo::painter::TUNE_BUTTON;
    let (bx, by) = (u32::from(x + w / 2), u32::from(y + h / 2));

    // The first sound starts the stream; the browser's autoplay rule may hold it until the
    // user clicks the page's banner, as a user would.
    b.click(bx, by);
    b.wait_for("rdpwire.stats().audioPackets > 0", Duration::from_secs(5));
    if b.visible("#sound-enable") {
        b.click_element("#sound-enable");
    }
    b.wait_for(
        "rdpwire.stats().audioContext === 'running'",
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(1200));

    // Sound held back before the banner click may have been dropped by the page to catch up;
    // the measured tune must lose nothing.
    let dropped_before = b.stats()["audioDropped"].clone();
    b.eval("rdpwire.captureAudio(true)");
    let clicked = b.eval("performance.now()").as_f64().unwrap();
    b.click(bx, by);
    std::thread::sleep(Duration::from_millis(1500));
    let (rate, chunks) = b.take_audio_capture();
    assert_eq!(rate, 48_000);
    let pcm: Vec<f32> = chunks.iter().flat_map(|c| c.samples.clone()).collect();
    let tones = tone::tones(&pcm, 48_000, 960, 0.05);
    let long: Vec<_> = tones.iter().filter(|t| t.len >= 9600).collect();
    assert_eq!(long.len(), 2, "{tones:?}\n{}", b.describe_page());
    for (t, want) in long.iter().zip([440.0, 880.0]) {
        assert!(
            (t.freq - want).abs() < want * 0.02,
            "{:.1} Hz, wanted {want} Hz ({tones:?})",
            t.freq
        );
    }
    let first = chunks
        .iter()
        .find(|c| tone::rms(&c.samples) > 0.05)
        .unwrap();
    let decoded_ms = first.t - clicked;
    let played_ms = first.played - clicked;
    println!(
        "tune in the browser: {:.1} Hz then {:.1} Hz; click → first tone decoded {decoded_ms:.0} ms, played {played_ms:.0} ms; stats {}",
        long[0].freq,
        long[1].freq,
        b.stats()
    );
    assert!(
        decoded_ms < 300.0,
        "first tone decoded {decoded_ms:.0} ms after the click"
    );
    let s = b.stats();
    assert_eq!(s["audioDropped"], dropped_before, "{s}");
}

//! The embedded demo RDP server against real RDP clients: FreeRDP (a third-party client) and
//! an IronRDP client written here that decodes the H.264 frames and checks pixels, and
//! records and analyses the sound the demo sends over RDPSND.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod demo_client;
mod support;
#[path = "support/tone.rs"]
mod tone;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdpwire::demo::{DemoAudio, DemoOptions, DemoServer, Observed};
use support::init_logs;

const USER: &str = "demo";
const PASS: &str = "demo-pass-123";

fn start() -> DemoServer {
    start_with(DemoAudio::default())
}

fn start_with(audio: DemoAudio) -> DemoServer {
    init_logs();
    DemoServer::start(DemoOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        username: USER.to_owned(),
        password: PASS.to_owned(),
        audio,
        content: rdpwire::demo::Content::Desktop,
        max_connections: rdpwire::demo::MAX_CONNECTIONS,
    })
    .unwrap()
}

/// Waits until `cond` holds on the server's observations, or panics with them.
fn wait_for(
    server: &DemoServer,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&Observed) -> bool,
) -> Observed {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = server.observed();
        if cond(&seen) {
            return seen;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}: {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// FreeRDP
// ---------------------------------------------------------------------------------------------

/// The FreeRDP X11 client, installed with apt when missing (`freerdp2-x11` is in Debian's main
/// suite; `freerdp3-x11` from bookworm-backports is used when it is already there).
/// `RDPWIRE_TEST_XFREERDP` picks a specific binary (e.g. `xfreerdp` when both are installed).
fn xfreerdp() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RDPWIRE_TEST_XFREERDP") {
        return Some(PathBuf::from(path));
    }
    fn find() -> Option<PathBuf> {
        ["xfreerdp3", "xfreerdp"].iter().find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        })
    }
    if let Some(found) = find() {
        return Some(found);
    }
    apt_install(&["freerdp2-x11"]);
    find()
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn apt_install(packages: &[&str]) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !have("apt-get") {
        eprintln!("!!!!! apt-get is not available: cannot install {packages:?}; the test skips that part !!!!!");
        return;
    }
    let install = || {
        Command::new("apt-get")
            .args([
                "-o",
                "DPkg::Lock::Timeout=120",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
            ])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=120", "update", "-qq"])
            .status();
        assert!(install(), "apt-get install {packages:?} failed");
    }
}

fn freerdp_args(addr: SocketAddr, user: &str, pass: &str) -> Vec<String> {
    vec![
        format!("/v:{}:{}", addr.ip(), addr.port()),
        format!("/u:{user}"),
        format!("/p:{pass}"),
        "/cert:ignore".to_owned(),
        "/log-level:WARN".to_owned(),
    ]
}

fn run_with_timeout(mut child: Child, timeout: Duration) -> (Option<i32>, String) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            return (status.code(), text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            return (None, text);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `+auth-only`: FreeRDP authenticates (NLA) and exits; 0 (FreeRDP 2) or 131 (FreeRDP 3.10)
/// means success.
/// FreeRDP 2 opens its X display even then.
fn freerdp_auth_only(
    client: &PathBuf,
    x: &Xvfb,
    addr: SocketAddr,
    pass: &str,
) -> (Option<i32>, String) {
    let child = Command::new(client)
        .args(freerdp_args(addr, USER, pass))
        .arg("+auth-only")
        .env("DISPLAY", &x.display)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    run_with_timeout(child, Duration::from_secs(20))
}

#[test]
fn freerdp_nla_logon_and_wrong_password() {
    let Some(client) = xfreerdp() else { return };
    let Some(x) = Xvfb::start() else { return };
    let server = start();

    let (code, out) = freerdp_auth_only(&client, &x, server.addr(), PASS);
    assert!(
        matches!(code, Some(0) | Some(131)),
        "auth-only with the right password: {code:?}\n{out}"
    );

    let (code, out) = freerdp_auth_only(&client, &x, server.addr(), "wrong-password");
    assert!(
        !matches!(code, Some(0) | Some(131) | None),
        "auth-only with a wrong password: {code:?}\n{out}"
    );
    wait_for(
        &server,
        "the refused logon to be counted",
        Duration::from_secs(5),
        |o| o.auth_failures >= 1,
    );
}

/// A private X server for FreeRDP's window; killed on drop.
struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    fn start() -> Option<Xvfb> {
        if !have("Xvfb") {
            apt_install(&["xvfb"]);
        }
        if !have("Xvfb") {
            return None;
        }
        let mut child = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "1280x800x24",
                "-nolisten",
                "tcp",
                // No server reset when the last client leaves: a client arriving during a
                // reset is refused.
                "-noreset",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut number = String::new();
        let mut byte = [0u8; 1];
        while std::io::Read::read(&mut stdout, &mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            number.push(char::from(byte[0]));
        }
        assert!(!number.is_empty(), "Xvfb did not report its display");
        Some(Xvfb {
            child,
            display: format!(":{number}"),
        })
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an X client tool (xdotool, xwd) on the test display.
fn x_tool(x: &Xvfb, program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .env("DISPLAY", &x.display)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The root window as RGB rows, from `xwd -root` (ZPixmap TrueColor, 24 or 32 bits a pixel).
fn screenshot(x: &Xvfb) -> (usize, Vec<[u8; 3]>) {
    let xwd = x_tool(x, "xwd", &["-root", "-silent"]);
    let field = |i: usize| u32::from_be_bytes(xwd[i * 4..i * 4 + 4].try_into().unwrap()) as usize;
    let (header, width, height) = (field(0), field(4), field(5));
    let (byte_order, bits_per_pixel, bytes_per_line) = (field(7), field(11), field(12));
    let masks = [field(14) as u32, field(15) as u32, field(16) as u32];
    let ncolors = field(19);
    let bytes = bits_per_pixel / 8;
    assert!(
        matches!(bytes, 3 | 4),
        "xwd pixel format: {bits_per_pixel} bits"
    );
    let data = &xwd[header + ncolors * 12..];
    let channel = |px: u32, mask: u32| ((px & mask) >> mask.trailing_zeros()) as u8;
    let pixels = (0..height)
        .flat_map(|y| (0..width).map(move |x| (x, y)))
        .map(|(x, y)| {
            let src = &data[y * bytes_per_line + x * bytes..][..bytes];
            let mut b = [0u8; 4];
            let px = if byte_order == 0 {
                b[..bytes].copy_from_slice(src);
                u32::from_le_bytes(b)
            } else {
                b[4 - bytes..].copy_from_slice(src);
                u32::from_be_bytes(b)
            };
            [
                channel(px, masks[0]),
                channel(px, masks[1]),
                channel(px, masks[2]),
            ]
        })
        .collect();
    (width, pixels)
}

#[test]
fn freerdp_gfx_avc420_session_shows_the_desktop_and_forwards_input() {
    let Some(client) = xfreerdp() else { return };
    let Some(x) = Xvfb::start() else { return };
    if !have("xdotool") || !have("xwd") {
        apt_install(&["xdotool", "x11-apps"]);
    }
    let server = start();

    let mut args = freerdp_args(server.addr(), USER, PASS);
    args.extend([
        "/size:1000x700".to_owned(),
        "/gfx:AVC420".to_owned(),
        "-clipboard".to_owned(),
    ]);
    let mut child = Command::new(&client)
        .args(&args)
        .env("DISPLAY", &x.display)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = wait_for(
        &server,
        "acknowledged frames from FreeRDP",
        Duration::from_secs(20),
        |o| o.frames_acked >= 10,
    );
    assert_eq!(seen.connections, 1);
    assert_eq!(
        seen.desktop_size,
        Some((1000, 700)),
        "the client's size is the desktop size"
    );

    // Real input through FreeRDP: X events become RDP mouse and scancode events. Without a
    // window manager FreeRDP's window sits at the screen's origin.
    let window =
        String::from_utf8(x_tool(&x, "xdotool", &["search", "--class", "freerdp"])).unwrap();
    let window = window
        .lines()
        .next()
        .expect("the FreeRDP window")
        .to_owned();
    x_tool(&x, "xdotool", &["mousemove", "500", "450", "click", "1"]);
    x_tool(&x, "xdotool", &["windowfocus", "--sync", &window]);
    x_tool(&x, "xdotool", &["type", "--delay", "30", "Hi!"]);
    wait_for(
        &server,
        "FreeRDP's click and keys",
        Duration::from_secs(10),
        |o| o.clicks.contains(&(500, 450)) && o.typed == "Hi!",
    );

    // What FreeRDP shows: the red square and the marker, within H.264 tolerance.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (width, shot) = screenshot(&x);
        let at = |px: usize, py: usize| shot[py * width + px];
        let ok = close_to(at(140, 140), RED)
            && close_to(at(500, 450), MARKER)
            && !close_to(at(20, 650), RED);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "FreeRDP shows {:?} at the red square, {:?} at the marker",
            at(140, 140),
            at(500, 450)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let _ = child.kill();
    let (_, out) = run_with_timeout(child, Duration::from_secs(5));
    let seen = server.observed();
    assert!(seen.frames_sent >= seen.frames_acked, "{out}");
    assert!(
        seen.frames_sent - seen.frames_acked <= u64::from(rdpwire::demo::MAX_FRAMES_IN_FLIGHT),
        "{seen:?}"
    );
    wait_for(&server, "the session to end", Duration::from_secs(5), |o| {
        o.active == 0
    });
}

/// FreeRDP's sound channel (the `fake` backend: negotiates, receives and confirms, plays
/// nothing) hears the tune the demo's button plays, and confirms every wave (twice: on
/// receipt and after playing, which must not count twice).
#[test]
fn freerdp_hears_the_tune_and_confirms_every_wave() {
    let Some(client) = xfreerdp() else { return };
    let Some(x) = Xvfb::start() else { return };
    if !have("xdotool") {
        apt_install(&["xdotool"]);
    }
    let server = start();
    let mut args = freerdp_args(server.addr(), USER, PASS);
    args.extend([
        "/size:800x600".to_owned(),
        "/gfx:AVC420".to_owned(),
        "-clipboard".to_owned(),
        "/sound:sys:fake".to_owned(),
    ]);
    let child = Command::new(&client)
        .args(&args)
        .env("DISPLAY", &x.display)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        &server,
        "FreeRDP on the desktop, sound negotiated",
        Duration::from_secs(20),
        |o| o.frames_acked >= 10 && o.audio_sessions == 1,
    );
    // Without a window manager FreeRDP's window sits at the screen's origin.
    let (x0, y0, w, h) = rdpwire::demo::painter::TUNE_BUTTON;
    let (bx, by) = ((x0 + w / 2).to_string(), (y0 + h / 2).to_string());
    x_tool(&x, "xdotool", &["mousemove", &bx, &by, "click", "1"]);
    let seen = wait_for(
        &server,
        "the tune's waves confirmed",
        Duration::from_secs(10),
        |o| o.waves_confirmed >= 40,
    );
    std::thread::sleep(Duration::from_millis(300));
    let seen_later = server.observed();
    let _ = run_with_timeout(child, Duration::from_millis(100));
    assert_eq!(
        (seen_later.waves_sent, seen_later.waves_confirmed),
        (40, 40),
        "{seen:?}"
    );
    assert_eq!(seen_later.waves_dropped, 0);
}

// ---------------------------------------------------------------------------------------------
// IronRDP client (decodes the H.264 stream)
// ---------------------------------------------------------------------------------------------

use demo_client::{connect, Client, HeardWave, Options, Screen};
use rdpwire::demo::painter::{CLOCK_AT, MARKER, RED, RED_SQUARE, TUNE_BUTTON, TYPED_AT};

/// A client that accepts PCM at 44.1 and 48 kHz (not Opus) and confirms waves.
fn options(size: (u16, u16)) -> Options {
    Options {
        user: USER.to_owned(),
        pass: PASS.to_owned(),
        nla: true,
        size,
        ack: true,
        audio: vec![demo_client::pcm(44_100), demo_client::pcm(48_000)],
        confirm_audio: true,
    }
}

/// Colours after H.264 (4:2:0, lossy) are compared with a tolerance.
fn close_to(got: [u8; 3], want: [u8; 3]) -> bool {
    got.iter().zip(want).all(|(&g, w)| g.abs_diff(w) <= 24)
}

fn region(screen: &Screen, (x, y, w, h): (usize, usize, usize, usize)) -> Vec<u8> {
    (y..y + h)
        .flat_map(|yy| (x..x + w).flat_map(move |xx| screen.pixel(xx, yy)))
        .collect()
}

fn snapshot_after_frames(client: &Client, n: u32, area: (usize, usize, usize, usize)) -> Vec<u8> {
    let target = client.frames() + n;
    client.wait_screen("more frames", Duration::from_secs(10), |s| {
        s.frames >= target
    });
    region(&client.screen.lock().unwrap(), area)
}

#[test]
fn ironrdp_client_sees_the_live_desktop_and_its_input() {
    let server = start();
    let client = connect(server.addr(), &options((800, 600))).unwrap();
    client.wait_screen("decoded frames", Duration::from_secs(10), |s| {
        s.frames >= 5 && s.width > 0
    });
    {
        let s = client.screen.lock().unwrap();
        assert_eq!(s.output_size, Some((800, 600)));
        assert_eq!(s.surface_size, Some((800, 608)), "padded to macroblocks");
        assert_eq!((s.width, s.height), (800, 608));
        let (x, y, size) = RED_SQUARE;
        let (x, y, size) = (usize::from(x), usize::from(y), usize::from(size));
        for (px, py) in [
            (x + 10, y + 10),
            (x + size / 2, y + size / 2),
            (x + size - 10, y + size - 10),
        ] {
            assert!(
                close_to(s.pixel(px, py), RED),
                "red square at ({px},{py}): {:?}",
                s.pixel(px, py)
            );
        }
        assert!(!close_to(s.pixel(20, 580), RED), "background is not red");
        assert!(s.errors.is_empty(), "{:?}", s.errors);
    }
    let seen = server.observed();
    assert_eq!((seen.connections, seen.active), (1, 1));
    assert_eq!(seen.desktop_size, Some((800, 600)));

    // The clock ticks: its region differs a few frames later.
    let clock = (usize::from(CLOCK_AT.0), usize::from(CLOCK_AT.1), 448, 32);
    let before = snapshot_after_frames(&client, 1, clock);
    std::thread::sleep(Duration::from_millis(250));
    let after = snapshot_after_frames(&client, 1, clock);
    assert_ne!(before, after, "the clock changes");

    // A click draws a marker where it happened.
    assert!(!close_to(
        client.screen.lock().unwrap().pixel(500, 450),
        MARKER
    ));
    client.click(500, 450);
    wait_for(&server, "the click", Duration::from_secs(5), |o| {
        o.clicks == [(500, 450)]
    });
    client.wait_screen("the marker", Duration::from_secs(5), |s| {
        close_to(s.pixel(500, 450), MARKER)
    });

    // Typing (scancodes, then unicode) shows up on the text line.
    let line = (usize::from(TYPED_AT.0), usize::from(TYPED_AT.1), 300, 16);
    let blank = snapshot_after_frames(&client, 1, line);
    client.keys(&[0x23, 0x17]); // h i
    client.unicode("!");
    wait_for(&server, "the typed text", Duration::from_secs(5), |o| {
        o.typed == "hi!"
    });
    let typed = snapshot_after_frames(&client, 2, line);
    assert_ne!(
        blank, typed,
        "typed text changes the pixels of the text line"
    );

    drop(client);
    wait_for(&server, "the session to end", Duration::from_secs(5), |o| {
        o.active == 0
    });
}

#[test]
fn a_client_that_stops_acknowledging_stops_the_stream() {
    let server = start();
    let client = connect(
        server.addr(),
        &Options {
            ack: false,
            ..options((640, 480))
        },
    )
    .unwrap();
    let window = u64::from(rdpwire::demo::MAX_FRAMES_IN_FLIGHT);
    client.wait_screen("the first frames", Duration::from_secs(10), |s| {
        u64::from(s.frames) >= window
    });
    // At 25 fps a second is 25 frame periods: the server must not send past the window.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(u64::from(client.frames()), window);
    assert_eq!(server.observed().frames_sent, window);
    // Acknowledging again resumes the stream.
    client.set_ack(true);
    client.wait_screen("the stream to resume", Duration::from_secs(5), |s| {
        u64::from(s.frames) >= window + 10
    });
    assert!(server.observed().frames_acked >= 10);
}

#[test]
fn tls_only_checks_client_info_credentials() {
    let server = start();
    let ok = connect(
        server.addr(),
        &Options {
            nla: false,
            ..options((640, 480))
        },
    )
    .unwrap();
    ok.wait_screen("frames over tls-only", Duration::from_secs(10), |s| {
        s.frames >= 2
    });
    let refused = connect(
        server.addr(),
        &Options {
            nla: false,
            pass: "wrong".to_owned(),
            ..options((640, 480))
        },
    );
    // The server refuses at Client Info time: a Set Error Info PDU, then the connection ends.
    assert!(refused.is_err(), "a wrong password must fail");
    wait_for(&server, "the refused logon", Duration::from_secs(5), |o| {
        o.auth_failures == 1
    });
    assert_eq!(server.observed().connections, 1);
}

#[test]
fn nla_wrong_password_is_refused() {
    let server = start();
    let err = connect(
        server.addr(),
        &Options {
            pass: "nope".to_owned(),
            ..options((640, 480))
        },
    )
    .err()
    .expect("a wrong password must fail");
    assert!(!err.is_empty());
    wait_for(&server, "the refused logon", Duration::from_secs(5), |o| {
        o.auth_failures == 1
    });
    let seen = server.observed();
    assert_eq!((seen.connections, seen.frames_sent), (0, 0));
}

#[test]
fn serves_concurrent_sessions_with_their_own_sizes_and_stops_them_on_drop() {
    let server = start();
    let a = connect(server.addr(), &options((640, 480))).unwrap();
    let b = connect(server.addr(), &options((1001, 701))).unwrap();
    a.wait_screen("frames on a", Duration::from_secs(10), |s| s.frames >= 5);
    b.wait_screen("frames on b", Duration::from_secs(10), |s| s.frames >= 5);
    assert_eq!(a.screen.lock().unwrap().output_size, Some((640, 480)));
    assert_eq!(
        b.screen.lock().unwrap().output_size,
        Some((1001, 701)),
        "odd sizes work (the surface is padded)"
    );
    assert_eq!(server.observed().active, 2);
    let addr = server.addr();
    let started = Instant::now();
    drop(server);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "drop joins promptly"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while !(a.closed() && b.closed()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        a.closed() && b.closed(),
        "sessions end when the server stops"
    );
    assert!(
        a.got_ultimatum() && b.got_ultimatum(),
        "the server says goodbye"
    );
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the listener is closed"
    );
}

#[test]
fn frames_are_paced_at_the_demo_frame_rate() {
    let server = start();
    let client = connect(server.addr(), &options((640, 480))).unwrap();
    client.wait_screen("the first frame", Duration::from_secs(10), |s| {
        s.frames >= 1
    });
    let (f0, t0) = (client.frames(), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (frames, secs) = (client.frames() - f0, t0.elapsed().as_secs_f64());
    let fps = f64::from(frames) / secs;
    let max = f64::from(rdpwire::demo::FPS);
    // Never faster than the frame rate; slower only when the machine is busy.
    assert!(fps <= max + 1.5, "{fps:.1} fps");
    assert!(fps >= max / 4.0, "{fps:.1} fps");
}

// ---------------------------------------------------------------------------------------------
// Sound (RDPSND)
// ---------------------------------------------------------------------------------------------

use ironrdp_rdpsnd::pdu::WaveFormat;
use rdpwire::demo::sound::{blip_frequency, MAX_WAVES_IN_FLIGHT, TONE_HZ};

/// Connects and waits until the server agreed on a sound format with this client.
fn connect_for_sound(server: &DemoServer, o: &Options) -> Client {
    let client = connect(server.addr(), o).unwrap();
    wait_for(server, "sound negotiated", Duration::from_secs(10), |o| {
        o.audio_sessions >= 1
    });
    client
}

/// Waits until at least `min` waves arrived and then none for 300 ms; returns them all.
fn waves_when_quiet(client: &Client, min: usize, timeout: Duration) -> Vec<HeardWave> {
    let deadline = Instant::now() + timeout;
    loop {
        let waves = client.waves();
        let quiet = waves
            .last()
            .is_some_and(|w| w.at.elapsed() > Duration::from_millis(300));
        if waves.len() >= min && quiet {
            return waves;
        }
        assert!(
            Instant::now() < deadline,
            "{} waves after {timeout:?}, wanted {min} then quiet",
            waves.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The left channel of 16-bit stereo PCM waves, full scale 1.0.
fn pcm_left(waves: &[HeardWave]) -> Vec<f32> {
    waves
        .iter()
        .flat_map(|w| w.data.chunks_exact(4))
        .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0)
        .collect()
}

/// The left channel of Opus waves (one packet each), decoded at 48 kHz.
fn opus_left(waves: &[HeardWave]) -> Vec<f32> {
    let mut decoder = opus::Decoder::new(48_000, opus::Channels::Stereo).unwrap();
    let mut left = Vec::new();
    for w in waves {
        let mut out = vec![0f32; 5760 * 2];
        let n = decoder.decode_float(&w.data, &mut out, false).unwrap();
        assert_eq!(n, 960, "20 ms per packet");
        left.extend(out[..n * 2].iter().step_by(2));
    }
    left
}

/// Each wave starts 20 ms after the one before (one continuous stretch of sound).
fn assert_contiguous(waves: &[HeardWave]) {
    for pair in waves.windows(2) {
        assert_eq!(
            pair[1].timestamp.wrapping_sub(pair[0].timestamp),
            20,
            "timestamps {} then {}",
            pair[0].timestamp,
            pair[1].timestamp
        );
    }
}

fn click_tune_button(client: &Client) {
    let (x, y, w, h) = TUNE_BUTTON;
    client.click(x + w / 2, y + h / 2);
}

/// The tune's two notes in `samples`: 440 Hz then 880 Hz, within 1 %, each ~400 ms.
fn assert_tune(samples: &[f32], rate: u32) {
    let window = rate as usize / 50;
    let found = tone::tones(samples, rate, window, 0.05);
    println!("tune at {rate} Hz: {found:?}");
    assert_eq!(found.len(), 2, "two notes: {found:?}");
    for (t, want) in found.iter().zip([440.0, 880.0]) {
        assert!(
            (t.freq - want).abs() < want * 0.01,
            "{want} Hz note measured {:.1} Hz: {found:?}",
            t.freq
        );
        let secs = t.len as f64 / f64::from(rate);
        assert!((secs - 0.4).abs() <= 0.03, "note of {secs:.3} s: {found:?}");
    }
    assert_eq!(found[1].start, found[0].start + found[0].len, "no gap");
}

#[test]
fn the_tune_button_plays_440_then_880_hz_as_pcm_44k_in_real_time() {
    let server = start();
    let client = connect_for_sound(&server, &options((800, 600)));
    assert!(client.waves().is_empty(), "silence until something plays");
    let clicked = Instant::now();
    click_tune_button(&client);
    let waves = waves_when_quiet(&client, 40, Duration::from_secs(10));

    assert_eq!(waves.len(), 40, "800 ms in 20 ms waves");
    for w in &waves {
        assert_eq!(w.format, demo_client::pcm(44_100));
        assert_eq!(w.data.len(), 882 * 4, "20 ms of 16-bit stereo");
    }
    assert_contiguous(&waves);
    assert_tune(&pcm_left(&waves), 44_100);

    // Real time: 800 ms of sound arrive over roughly 800 ms (the first 100 ms at once), and
    // no wave ever arrives more than ~100 ms before its time.
    let first = &waves[0];
    let latency = first.at - clicked;
    let span = waves[39].at - first.at;
    println!("tune: first wave {latency:?} after the click, 40 waves over {span:?}");
    assert!(latency < Duration::from_millis(500), "{latency:?}");
    assert!(
        span >= Duration::from_millis(600) && span <= Duration::from_millis(1500),
        "{span:?}"
    );
    for w in &waves {
        let due = Duration::from_millis(u64::from(w.timestamp - first.timestamp));
        let arrived = w.at - first.at;
        let ahead = due.saturating_sub(arrived);
        assert!(
            ahead <= Duration::from_millis(140),
            "wave at {} ms arrived {ahead:?} early",
            w.timestamp
        );
    }
    let seen = wait_for(&server, "the confirms", Duration::from_secs(5), |o| {
        o.waves_confirmed == 40
    });
    assert_eq!((seen.waves_sent, seen.waves_dropped), (40, 0));
    assert!(seen.clicks.len() == 1, "{seen:?}");
}

#[test]
fn pcm48_sends_48_khz() {
    let server = start_with(DemoAudio::Pcm48);
    let client = connect_for_sound(&server, &options((640, 480)));
    click_tune_button(&client);
    let waves = waves_when_quiet(&client, 40, Duration::from_secs(10));
    assert_eq!(waves.len(), 40);
    for w in &waves {
        assert_eq!(w.format, demo_client::pcm(48_000));
        assert_eq!(w.data.len(), 960 * 4);
    }
    assert_contiguous(&waves);
    assert_tune(&pcm_left(&waves), 48_000);
}

#[test]
fn opus_waves_decode_to_the_tune() {
    let server = start_with(DemoAudio::Opus);
    let client = connect_for_sound(
        &server,
        &Options {
            audio: vec![
                demo_client::pcm(44_100),
                demo_client::opus(),
                demo_client::pcm(48_000),
            ],
            ..options((640, 480))
        },
    );
    click_tune_button(&client);
    let waves = waves_when_quiet(&client, 40, Duration::from_secs(10));
    // The tune, then one silent wave that flushes the encoder's lookahead.
    assert_eq!(waves.len(), 41);
    for w in &waves {
        assert_eq!(w.format.format, WaveFormat::OPUS);
        assert!(w.data.len() < 1275, "one packet: {} bytes", w.data.len());
    }
    assert_contiguous(&waves);
    assert_tune(&opus_left(&waves), 48_000);
}

#[test]
fn formats_fall_back_to_pcm_then_to_silence() {
    // Opus wanted, the client takes only PCM 48 kHz: PCM 48 kHz.
    let server = start_with(DemoAudio::Opus);
    let client = connect_for_sound(
        &server,
        &Options {
            audio: vec![demo_client::pcm(48_000)],
            ..options((640, 480))
        },
    );
    client.keys(&[0x1E]); // a
    let waves = waves_when_quiet(&client, 3, Duration::from_secs(10));
    assert!(waves.iter().all(|w| w.format == demo_client::pcm(48_000)));
    drop(client);

    // A client that accepts nothing the demo offers: no sound, the desktop as always.
    let server = start();
    let client = connect(
        server.addr(),
        &Options {
            audio: vec![demo_client::pcm(22_050)],
            ..options((640, 480))
        },
    )
    .unwrap();
    client.wait_screen("frames", Duration::from_secs(10), |s| s.frames >= 5);
    client.keys(&[0x1E, 0x43]);
    click_tune_button(&client);
    wait_for(&server, "the keys", Duration::from_secs(5), |o| {
        o.typed == "a"
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(client.waves().is_empty());
    let seen = server.observed();
    assert_eq!((seen.audio_sessions, seen.waves_sent), (0, 0));

    // --audio-format off: no sound channel at all.
    let server = start_with(DemoAudio::Off);
    let client = connect(server.addr(), &options((640, 480))).unwrap();
    client.wait_screen("frames", Duration::from_secs(10), |s| s.frames >= 5);
    click_tune_button(&client);
    std::thread::sleep(Duration::from_millis(500));
    assert!(client.waves().is_empty());
    assert_eq!(server.observed().audio_sessions, 0);
}

#[test]
fn f9_toggles_a_steady_660_hz_tone() {
    let server = start();
    let client = connect_for_sound(&server, &options((640, 480)));
    client.keys(&[0x43]);
    std::thread::sleep(Duration::from_millis(1500));
    let playing = client.waves();
    assert!(
        (60..=85).contains(&playing.len()),
        "{} waves in 1.5 s",
        playing.len()
    );
    // Still coming.
    std::thread::sleep(Duration::from_millis(300));
    assert!(client.waves().len() >= playing.len() + 10);
    client.keys(&[0x43]);
    let waves = waves_when_quiet(&client, playing.len(), Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(client.waves().len(), waves.len(), "stopped");
    assert_contiguous(&waves);
    let samples = pcm_left(&waves);
    let found = tone::tones(&samples, 44_100, 882, 0.05);
    println!("f9 tone: {} waves, {found:?}", waves.len());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        (found[0].freq - TONE_HZ).abs() < TONE_HZ * 0.01,
        "{found:?}"
    );
    assert!(found[0].len >= samples.len() - 882, "{found:?}");
}

#[test]
fn typed_keys_blip_at_their_pitch_and_still_type() {
    let server = start();
    let client = connect_for_sound(&server, &options((640, 480)));
    for (i, (c, send)) in [
        (
            'a',
            Box::new(|c: &Client| c.keys(&[0x1E])) as Box<dyn Fn(&Client)>,
        ),
        ('é', Box::new(|c: &Client| c.unicode("é"))),
    ]
    .into_iter()
    .enumerate()
    {
        let before = client.waves().len();
        send(&client);
        let waves = waves_when_quiet(&client, before + 3, Duration::from_secs(5));
        let blip = &waves[before..];
        assert_eq!(blip.len(), 3, "60 ms: {} waves", blip.len());
        let samples = pcm_left(blip);
        let found = tone::tones(&samples, 44_100, 441, 0.05);
        assert_eq!(found.len(), 1, "{c:?}: {found:?}");
        let want = blip_frequency(c);
        println!("{c:?} blip: want {want:.1} Hz, {found:?}");
        assert!(
            (found[0].freq - want).abs() < want * 0.02,
            "{c:?} should blip at {want:.1} Hz: {found:?}"
        );
        wait_for(&server, "the text", Duration::from_secs(5), |o| {
            o.typed.chars().count() == i + 1
        });
    }
    assert_eq!(server.observed().typed, "aé");
    assert_ne!(blip_frequency('a'), blip_frequency('é'));
}

#[test]
fn a_client_that_stops_confirming_waves_stops_the_sound_but_not_the_desktop() {
    let server = start();
    let client = connect_for_sound(
        &server,
        &Options {
            confirm_audio: false,
            ..options((640, 480))
        },
    );
    client.keys(&[0x43]);
    std::thread::sleep(Duration::from_millis(1500));
    let frames = client.frames();
    std::thread::sleep(Duration::from_millis(500));
    let held = client.waves();
    assert_eq!(held.len(), MAX_WAVES_IN_FLIGHT, "the window, then nothing");
    assert_eq!(server.observed().waves_sent, MAX_WAVES_IN_FLIGHT as u64);
    assert!(
        client.frames() >= frames + 5,
        "frames go on: {frames} then {}",
        client.frames()
    );

    // Confirming again resumes with what plays now: the backlog was dropped, not queued.
    client.set_audio_confirm(true);
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.waves().len() < held.len() + 10 {
        assert!(Instant::now() < deadline, "the sound did not resume");
        std::thread::sleep(Duration::from_millis(20));
    }
    let waves = client.waves();
    let (last_held, resumed) = (&waves[held.len() - 1], &waves[held.len()]);
    let skipped = resumed.timestamp - last_held.timestamp;
    println!(
        "no confirms: {} waves held, resumed {skipped} ms later, {:?}",
        held.len(),
        server.observed()
    );
    assert!(
        skipped >= 1000,
        "resumed {skipped} ms later on the server clock"
    );
    let seen = server.observed();
    assert!(seen.waves_dropped > 0, "{seen:?}");
    assert!(
        seen.waves_confirmed >= MAX_WAVES_IN_FLIGHT as u64,
        "one confirm released the window: {seen:?}"
    );
    client.keys(&[0x43]);
    waves_when_quiet(&client, waves.len(), Duration::from_secs(5));
}

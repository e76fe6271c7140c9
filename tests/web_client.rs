//! The web client in real headless Chromium: what the page shows (status line, stats, the
//! screen canvas's pixels) and what it sends (ClientHello, frame acknowledgements, input),
//! checked against docs/protocol.md.
//!
//! Most tests put the page in front of a scripted gateway (`page_server`) that serves the
//! real embedded client and plays exact protocol messages, H.264 included (`h264` writes
//! I_PCM pictures whose colours are known). The last tests load the page from the real
//! gateway binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

#[path = "support/chromium.rs"]
mod chromium;
#[path = "support/h264.rs"]
mod h264;
#[path = "support/page_server.rs"]
mod page_server;
#[path = "support/tone.rs"]
mod tone;
#[path = "support/wire.rs"]
mod wire;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chromium::Chromium;
use h264::{Encoder, Profile, Vui};
use page_server::{PageServer, Peer};
use serde_json::{json, Value};
use support::Gateway;
use wire::FromPage;

/// One browser at a time: two Chromiums decoding at once on a 2-core machine make timings
/// meaningless.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

const SECS: Duration = Duration::from_secs(10);
/// Per channel, for the I_PCM pictures of `h264`: their samples are exact, only the
/// browser's YUV→RGB conversion rounds.
const TOL: u8 = 4;

const RED: [u8; 3] = [220, 30, 30];
const GREEN: [u8; 3] = [30, 200, 60];
const BLUE: [u8; 3] = [40, 60, 220];
const YELLOW: [u8; 3] = [230, 210, 40];
const CYAN: [u8; 3] = [40, 200, 210];
const GREY: [u8; 3] = [128, 128, 128];
const BLACK: [u8; 3] = [0, 0, 0];

fn rgba(c: [u8; 3]) -> [u8; 4] {
    [c[0], c[1], c[2], 255]
}

/// Asserts the screen pixel at (`x`, `y`) is `want` within `tolerance` per channel.
#[track_caller]
fn assert_pixel(b: &mut Chromium, x: u32, y: u32, want: [u8; 3], tolerance: u8) {
    let got = b.pixel(x, y);
    let close = (0..3).all(|i| got[i].abs_diff(want[i]) <= tolerance);
    assert!(
        close,
        "pixel ({x}, {y}) is {got:?}, want {want:?} ±{tolerance}\n{}",
        b.describe_page()
    );
}

fn js_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A page session against the scripted gateway, connected, with a desktop of `w`×`h` made
/// of one mapped XRGB surface (id 1).
fn connected(b: &mut Chromium, server: &PageServer, w: u16, h: u16) -> Peer {
    b.navigate(&server.url("?target=office"));
    let mut peer = server.accept();
    peer.handshake(1);
    peer.send_all([
        wire::status(2, "connected to office"),
        wire::desktop_size(w, h),
        wire::reset_graphics(w, h),
        wire::create_surface(1, w, h, 0),
        wire::map_surface(1, 0, 0),
    ]);
    b.wait_for(
        &format!(
            "rdpwire.stats().state === 'connected' && rdpwire.stats().width === {w} && \
             document.getElementById('screen').width === {w}"
        ),
        SECS,
    );
    peer
}

#[test]
fn page_asks_for_its_window_and_shows_the_gateway_status_in_words() {
    let _turn = serial();
    let server = PageServer::start();
    let mut b = Chromium::launch();
    b.navigate(&server.url("?target=office"));
    let mut peer = server.accept();
    let (width, height, target) = peer.handshake(7);

    // The window's size in device pixels, rounded to even, within 200–8192.
    let win = b.eval("[innerWidth, innerHeight, devicePixelRatio]");
    let want = |css: f64, dpr: f64| ((css * dpr / 2.0).round() * 2.0).clamp(200.0, 8192.0) as u16;
    let dpr = win[2].as_f64().unwrap();
    assert_eq!(
        (width, height),
        (
            want(win[0].as_f64().unwrap(), dpr),
            want(win[1].as_f64().unwrap(), dpr)
        ),
        "window {win}"
    );
    assert_eq!(target, "office");
    assert_eq!(b.stats()["sessionId"], "7");

    for (state, text, page_state) in [
        (0, "connecting to office", "connecting"),
        (1, "authenticating as bob", "authenticating"),
        (3, "reconnecting to office", "connecting"),
        (2, "connected to office", "connected"),
    ] {
        peer.send(wire::status(state, text));
        b.wait_for(
            &format!(
                "document.getElementById('status').textContent === {} && \
                 rdpwire.stats().state === '{page_state}'",
                js_str(text)
            ),
            SECS,
        );
    }
    peer.send(wire::desktop_size(640, 480));
    b.wait_for("rdpwire.stats().width === 640", SECS);
    let s = b.stats();
    assert_eq!(
        (s["width"].as_u64(), s["height"].as_u64()),
        (Some(640), Some(480))
    );
    assert!(s.get("reason").is_none(), "{s}");

    // The page pings every 2 s; the overlay shows the round trip once a Pong came back.
    let _ = peer.collect(Duration::from_millis(300));
    b.wait_for("rdpwire.stats().rttMs !== null", SECS);
    assert!(peer.pings >= 1);
    let _ = peer.collect(Duration::from_millis(1200));
    let overlay = b.eval("document.getElementById('stats').textContent");
    let overlay = overlay.as_str().unwrap();
    for words in ["fps", "kbit/s", "frames decoded", "rtt", " ms", "640×480"] {
        assert!(overlay.contains(words), "overlay: {overlay}");
    }

    let reason = "authentication failed for user 'bob': the server rejected the credentials";
    peer.send(wire::disconnected(reason));
    peer.close(4000, "the RDP session ended");
    b.wait_for("rdpwire.stats().state === 'disconnected'", SECS);
    assert_eq!(b.status_text(), format!("disconnected: {reason}"));
    assert_eq!(b.stats()["reason"], reason);
}

#[test]
fn a_close_without_disconnected_shows_the_close_reason() {
    let _turn = serial();
    let server = PageServer::start();
    let mut b = Chromium::launch();
    for (code, reason, state) in [
        (1011, "internal error: the RDP task stopped", "error"),
        (
            1002,
            "bad message from the browser: unknown message type 0x99",
            "error",
        ),
        (1001, "the gateway is shutting down", "disconnected"),
    ] {
        b.navigate(&server.url(""));
        let mut peer = server.accept();
        let (_, _, target) = peer.handshake(2);
        assert_eq!(target, "", "no ?target= means the default target");
        peer.close(code, reason);
        b.wait_for(&format!("rdpwire.stats().state === '{state}'"), SECS);
        assert_eq!(b.status_text(), format!("{state}: {reason}"));
        assert_eq!(b.stats()["reason"], reason);
    }
    // No close reason at all: the page says what the code means.
    b.navigate(&server.url(""));
    let mut peer = server.accept();
    peer.handshake(3);
    peer.close(1001, "");
    b.wait_for("rdpwire.stats().state === 'disconnected'", SECS);
    assert_eq!(
        b.status_text(),
        "disconnected: the gateway is shutting down"
    );
}

#[test]
fn a_token_in_the_fragment_goes_in_the_hello_and_nowhere_else() {
    let _turn = serial();
    let server = PageServer::start();
    let mut b = Chromium::launch();
    let token = "AQLx2J9-token_under-test_8aZq";
    b.navigate(&format!("{}#token={token}", server.url("?target=office")));
    let mut peer = server.accept();
    peer.send(wire::server_hello(5, 0, 65536));
    match peer.next() {
        FromPage::TokenHello {
            width,
            height,
            token: sent,
        } => {
            assert_eq!(sent, token);
            assert!(width >= 200 && height >= 200);
        }
        other => panic!("expected TokenHello, the page sent {other:?}"),
    }
    // Out of the address bar (and so out of the history) before anything else, the rest of
    // the address kept; never in a request the browser made.
    assert_eq!(b.eval("location.hash"), "");
    assert_eq!(b.eval("location.search"), "?target=office");
    assert_eq!(b.eval("rdpwire.stats().viaToken"), true);
    for head in server.requests.lock().unwrap().iter() {
        assert!(
            !head.contains(token),
            "the token reached the server in:\n{head}"
        );
    }

    // A refused token: the page shows the gateway's words.
    let reason = "the connection token was already used";
    peer.send(wire::disconnected(reason));
    peer.close(4002, reason);
    b.wait_for("rdpwire.stats().state === 'disconnected'", SECS);
    assert_eq!(b.status_text(), format!("disconnected: {reason}"));

    // Reloaded, the page has no token any more: it asks for its named target.
    b.eval("location.reload()");
    let mut again = server.accept();
    let (_, _, target) = again.handshake(6);
    assert_eq!(target, "office");
}

#[test]
fn fills_copies_and_cache_compose_the_screen() {
    let _turn = serial();
    let server = PageServer::start();
    let mut b = Chromium::launch();
    let mut peer = connected(&mut b, &server, 320, 240);

    peer.send_all([
        wire::start_frame(1),
        wire::solid_fill(1, rgba(RED), &[[0, 0, 320, 240]]),
        wire::solid_fill(1, rgba(BLUE), &[[10, 10, 50, 50]]),
        wire::end_frame(1),
    ]);
    assert_eq!(peer.frame_decoded().0, 1);
    assert_pixel(&mut b, 5, 5, RED, 0);
    assert_pixel(&mut b, 20, 20, BLUE, 0);
    assert_pixel(&mut b, 49, 49, BLUE, 0);
    assert_pixel(&mut b, 50, 50, RED, 0);

    peer.send_all([
        wire::start_frame(2),
        wire::surface_to_surface(1, 1, [10, 10, 50, 50], &[(100, 100), (200, 20)]),
        wire::surface_to_cache(1, 5, [10, 10, 50, 50]),
        wire::solid_fill(1, rgba(GREEN), &[[0, 0, 320, 100]]),
        wire::cache_to_surface(5, 1, &[(0, 60)]),
        wire::evict_cache_entry(5),
        // An evicted slot draws nothing.
        wire::cache_to_surface(5, 1, &[(250, 150)]),
        wire::end_frame(2),
    ]);
    let (frame, total, _) = peer.frame_decoded();
    assert_eq!((frame, total), (2, 2));
    assert_pixel(&mut b, 110, 110, BLUE, 0); // copied below the green band
    assert_pixel(&mut b, 139, 139, BLUE, 0);
    assert_pixel(&mut b, 140, 140, RED, 0);
    assert_pixel(&mut b, 210, 30, GREEN, 0); // copied, then filled over
    assert_pixel(&mut b, 5, 65, BLUE, 0); // from the cache
    assert_pixel(&mut b, 39, 99, BLUE, 0);
    assert_pixel(&mut b, 5, 5, GREEN, 0);
    assert_pixel(&mut b, 255, 155, RED, 0); // the evicted slot drew nothing

    // A second surface mapped at an offset shows above the first; an ARGB surface lets the
    // one below show through where it is transparent.
    peer.send_all([
        wire::create_surface(2, 64, 48, 0),
        wire::map_surface(2, 256, 192),
        wire::create_surface(3, 20, 20, 1),
        wire::map_surface(3, 10, 150),
        wire::start_frame(3),
        wire::solid_fill(2, rgba(YELLOW), &[[0, 0, 64, 48]]),
        wire::solid_fill(1, rgba(GREY), &[[250, 190, 260, 200], [0, 140, 60, 200]]),
        wire::solid_fill(3, [255, 0, 0, 255], &[[0, 0, 10, 20]]),
        wire::solid_fill(3, [0, 0, 255, 0], &[[10, 0, 20, 20]]),
        wire::end_frame(3),
    ]);
    assert_eq!(peer.frame_decoded().0, 3);
    assert_pixel(&mut b, 258, 195, YELLOW, 0);
    assert_pixel(&mut b, 252, 191, GREY, 0);
    assert_pixel(&mut b, 319, 239, YELLOW, 0);
    assert_pixel(&mut b, 12, 155, [255, 0, 0], 0);
    assert_pixel(&mut b, 25, 155, GREY, 0);

    // ResetGraphics: a new size, every surface gone, the screen black.
    peer.send_all([
        wire::reset_graphics(200, 100),
        wire::start_frame(4),
        wire::solid_fill(1, rgba(RED), &[[0, 0, 200, 100]]),
        wire::end_frame(4),
    ]);
    assert_eq!(peer.frame_decoded().0, 4);
    b.wait_for(
        "rdpwire.stats().width === 200 && rdpwire.stats().height === 100",
        SECS,
    );
    assert_pixel(&mut b, 50, 50, BLACK, 0);
    assert!(b.stats()["ignoredOperations"].as_u64().unwrap() >= 1);
}

#[test]
fn tiles_put_pixels_and_alpha_as_they_came() {
    let _turn = serial();
    let server = PageServer::start();
    let mut b = Chromium::launch();
    let mut peer = connected(&mut b, &server, 320, 240);

    // A 64×63 tile (the gateway's largest) on the XRGB surface, every pixel different.
    let rect = [10, 20, 74, 83];
    let gradient: Vec<u8> = (0..63u8)
        .flat_map(|y| (0..64u8).flat_map(move |x| [x * 4, y * 4, 200, 255]))
        .collect();
    // An ARGB surface above it: a red tile, then its right half made transparent.
    let red: Vec<u8> = std::iter::repeat_n([255u8, 0, 0, 255], 64 * 63)
        .flatten()
        .collect();
    let alpha: Vec<u8> = (0..63)
        .flat_map(|_| (0..64).map(|x| if x < 32 { 255u8 } else { 0 }))
        .collect();
    peer.send_all([
        wire::create_surface(3, 64, 63, 1),
        wire::map_surface(3, 200, 100),
        wire::start_frame(1),
        wire::solid_fill(1, rgba(GREY), &[[0, 0, 320, 240]]),
        wire::tile(1, rect, &gradient),
        wire::tile(3, [0, 0, 64, 63], &red),
        wire::tile_alpha(3, [0, 0, 64, 63], &alpha),
        // TileAlpha on an opaque surface changes nothing.
        wire::tile_alpha(1, rect, &vec![0u8; 64 * 63]),
        wire::end_frame(1),
    ]);
    assert_eq!(peer.frame_decoded().0, 1);
    for (x, y) in [(0u32, 0u32), (5, 7), (63, 62), (31, 40)] {
        let want = [x as u8 * 4, y as u8 * 4, 200];
        assert_pixel(&mut b, 10 + x, 20 + y, want, 0);
    }
    assert_pixel(&mut b, 9, 19, GREY, 0);
    assert_pixel(&mut b, 74, 83, GREY, 0);
    assert_pixel(&mut b, 210, 130, [255, 0, 0], 0);
    assert_pixel(&mut b, 250, 130, GREY, 0); // transparent: the surface below shows
    assert_eq!(b.stats()["tiles"], 4);

    // A tile whose payload is not its rectangle's size is malformed: the page says so.
    peer.send(wire::tile(1, [0, 0, 64, 63], &[0u8; 10]));
    b.wait_for("rdpwire.stats().state === 'error'", SECS);
    let shown = b.status_text();
    assert!(
        shown.starts_with("error: malformed message from the gateway: Tile of 64×63"),
        "{shown}"
    );
}

#[test]
fn a_new_window_size_is_sent_once_it_settles() {
    let _turn = serial();
    let server = PageServer::start();
    let mut b = Chromium::launch();
    let mut peer = connected(&mut b, &server, 1024, 768);
    let _ = peer.collect(Duration::from_millis(200));
    // Dragging through sizes: one Resize, with the size the window ends at.
    b.set_viewport(900, 700);
    b.set_viewport(850, 650);
    b.set_viewport(800, 600);
    let got = peer.collect(Duration::from_millis(1000));
    assert_eq!(
        got,
        [FromPage::Resize {
            width: 800,
            height: 600
        }]
    );
    let s = b.stats();
    assert_eq!(s["requested"], json!({ "width": 800, "height": 600 }));
    // Until the server answers with a new size, the page scales the desktop into the window.
    let boxed = b.eval(
        "(() => { const r = document.getElementById('screen').getBoundingClientRect(); \
                  return [r.width, r.height]; })()",
    );
    assert_eq!(boxed, json!([800, 600]));
    // The server's answer: a new desktop size.
    peer.send_all([wire::desktop_size(800, 600), wire::reset_graphics(800, 600)]);
    b.wait_for("rdpwire.stats().width === 800", SECS);
    b.set_viewport(chromium::VIEWPORT.0, chromium::VIEWPORT.1);
}

/// Key frame, delta frame with a partial region, and a second surface whose picture is
/// placed by `dest`: pixels checked the moment the frame's acknowledgement arrives.
fn h264_pictures(b: &mut Chromium, server: &PageServer, profile: Profile, vui: Vui) {
    let mut peer = connected(b, server, 320, 240);
    let mut enc = Encoder::new(profile, 320, 240);
    enc.vui = vui;
    let key = enc.key_frame(|x, _| if x < 160 { RED } else { BLUE });
    peer.send_all([
        wire::start_frame(1),
        wire::avc420(1, [0, 0, 320, 240], &[[0, 0, 320, 240]], &key),
        wire::end_frame(1),
    ]);
    let (frame, total, _) = peer.frame_decoded();
    assert_eq!((frame, total), (1, 1));
    // Acknowledged only once the picture is applied: it is on the screen already.
    assert_pixel(b, 80, 120, RED, TOL);
    assert_pixel(b, 240, 120, BLUE, TOL);
    assert_eq!(b.stats()["codecs"], json!([enc.codec()]));

    // Macroblocks (4..8, 4..8) repainted green, but only two strips of them are regions.
    let delta = enc.delta_frame(
        |mx, my| (4..8).contains(&mx) && (4..8).contains(&my),
        |_, _| GREEN,
    );
    peer.send_all([
        wire::start_frame(2),
        wire::avc420(
            1,
            [0, 0, 320, 240],
            &[[64, 64, 80, 96], [88, 64, 96, 96]],
            &delta,
        ),
        wire::end_frame(2),
    ]);
    assert_eq!(peer.frame_decoded().0, 2);
    assert_pixel(b, 70, 70, GREEN, TOL);
    assert_pixel(b, 84, 70, RED, TOL); // between the regions
    assert_pixel(b, 95, 95, GREEN, TOL);
    assert_pixel(b, 100, 100, RED, TOL); // decoded green, outside the regions
    assert_pixel(b, 60, 60, RED, TOL);

    // Surface 2 at (192, 112); its picture covers dest (40, 40)–(104, 104), and only the
    // region from x = 70 is copied: picture columns 30.. land at surface columns 70...
    let mut small = Encoder::new(profile, 64, 64);
    small.vui = vui;
    let key2 = small.key_frame(|x, _| if x < 32 { YELLOW } else { CYAN });
    peer.send_all([
        wire::create_surface(2, 128, 128, 0),
        wire::map_surface(2, 192, 112),
        wire::start_frame(3),
        wire::avc420(2, [40, 40, 104, 104], &[[70, 40, 104, 104]], &key2),
        wire::end_frame(3),
    ]);
    assert_eq!(peer.frame_decoded().0, 3);
    assert_pixel(b, 192 + 71, 112 + 60, YELLOW, TOL); // picture column 31
    assert_pixel(b, 192 + 73, 112 + 60, CYAN, TOL); // picture column 33
    assert_pixel(b, 192 + 103, 112 + 103, CYAN, TOL);
    assert_pixel(b, 192 + 69, 112 + 60, BLACK, 0); // left of the region
    assert_pixel(b, 192 + 110, 112 + 60, BLACK, 0); // right of dest

    let s = b.stats();
    assert_eq!(s["framesDecoded"], 3);
    assert_eq!(s["videoFrames"], 3);
    assert_eq!(s["decodeErrors"], 0);
    assert_eq!(s["state"], "connected", "{s}");
    peer.close(1000, "");
}

#[test]
fn h264_baseline_pictures_show_only_their_regions() {
    let _turn = serial();
    let server = PageServer::start();
    let mut b = Chromium::launch();
    h264_pictures(&mut b, &server, Profile::Baseline, Vui::Absent);
}

#[test]
fn h264_main_and_high_pictures_show_only_their_regions() {
    let _turn = serial();
    let server = PageServer::start();
    let mut b = Chromium::launch();
    h264_pictures(&mut b, &server, Profile::Main, Vui::Limited);
    h264_pictures(&mut b, &server, Profile::High, Vui::NoColour);
}

#[test]
fn h264_colours_are_full_range_bt709_whatever_the_stream_says() {
    let _turn = serial();
    let server = PageServer::start();
    let mut b = Chromium::launch();
    let mut peer = connected(&mut b, &server, 320, 240);
    // Near-black and near-white clip, and saturated colours shift, when a full-range
    // picture is converted as limited range.
    let stripes = [
        [0x10, 0x10, 0x10],
        [0xee, 0xee, 0xee],
        [255, 0, 0],
        [0, 0, 255],
        [0x33, 0x66, 0xcc],
    ];
    for (i, vui) in [Vui::Full, Vui::Limited, Vui::NoColour, Vui::Absent]
        .into_iter()
        .enumerate()
    {
        let mut enc = Encoder::new(Profile::High, 80, 16);
        enc.vui = vui;
        let key = enc.key_frame(|x, _| stripes[(x / 16) as usize]);
        let frame = i as u32 + 1;
        peer.send_all([
            wire::start_frame(frame),
            wire::avc420(1, [0, 0, 80, 16], &[[0, 0, 80, 16]], &key),
            wire::end_frame(frame),
        ]);
        assert_eq!(peer.frame_decoded().0, frame);
        for (s, colour) in stripes.iter().enumerate() {
            let got = b.pixel(s as u32 * 16 + 8, 8);
            assert!(
                (0..3).all(|c| got[c].abs_diff(colour[c]) <= TOL),
                "{vui:?}: stripe {s} is {got:?}, want {colour:?}\n{}",
                b.describe_page()
            );
        }
    }
    assert_eq!(b.stats()["decodeErrors"], 0);
}

#[test]
fn decoder_failure_is_reported_and_the_next_key_frame_recovers() {
    let _turn = serial();
    let server = PageServer::start();
    let mut b = Chromium::launch();
    let mut peer = connected(&mut b, &server, 320, 240);
    let mut enc = Encoder::new(Profile::High, 320, 240);
    let _ = enc.key_frame(|_, _| RED);

    // A delta picture before any key frame cannot be decoded: skipped, frame still acked.
    let delta = enc.delta_frame(|_, _| true, |_, _| RED);
    peer.send_all([
        wire::start_frame(1),
        wire::avc420(1, [0, 0, 320, 240], &[[0, 0, 320, 240]], &delta),
        wire::end_frame(1),
    ]);
    assert_eq!(peer.frame_decoded().0, 1);
    assert_pixel(&mut b, 10, 10, BLACK, 0);

    // A key frame whose SPS names a profile no decoder has: the decoder fails, the page says
    // so, and the stream keeps being acknowledged.
    let bogus = [
        0, 0, 0, 1, 0x67, 0xff, 0x00, 0x1f, 0xe9, 0x40, // SPS, profile_idc 255
        0, 0, 0, 1, 0x68, 0xce, 0x38, 0x80, // PPS
        0, 0, 0, 1, 0x65, 0x88, 0x84, 0x00, 0x33, // IDR slice
    ];
    peer.send_all([
        wire::start_frame(2),
        wire::avc420(1, [0, 0, 320, 240], &[[0, 0, 320, 240]], &bogus),
        wire::end_frame(2),
    ]);
    assert_eq!(peer.frame_decoded().0, 2);
    b.wait_for("rdpwire.stats().state === 'error'", SECS);
    let status = b.status_text();
    assert!(
        status.starts_with("error: video decoder: ") && status.contains("next key frame"),
        "{status}"
    );
    assert!(status.contains("avc1.FF001F"), "{status}");

    let delta = enc.delta_frame(|_, _| true, |_, _| RED);
    peer.send_all([
        wire::start_frame(3),
        wire::avc420(1, [0, 0, 320, 240], &[[0, 0, 320, 240]], &delta),
        wire::end_frame(3),
    ]);
    assert_eq!(peer.frame_decoded().0, 3);

    // The next good key frame: a new decoder, the picture, the connected status again.
    let key = enc.key_frame(|_, _| GREEN);
    peer.send_all([
        wire::start_frame(4),
        wire::avc420(1, [0, 0, 320, 240], &[[0, 0, 320, 240]], &key),
        wire::end_frame(4),
    ]);
    assert_eq!(peer.frame_decoded().0, 4);
    assert_pixel(&mut b, 10, 10, GREEN, TOL);
    b.wait_for("rdpwire.stats().state === 'connected'", SECS);
    assert_eq!(b.status_text(), "connected to office");
    let s = b.stats();
    assert_eq!(s["decodeErrors"], 1, "{s}");
    assert!(s["skippedPictures"].as_u64().unwrap() >= 2, "{s}");
}

#[test]
fn server_pointer_becomes_the_css_cursor() {
    let _turn = serial();
    let server = PageServer::start();
    let mut b = Chromium::launch();
    let mut peer = connected(&mut b, &server, 320, 240);
    let cursor = "getComputedStyle(document.getElementById('screen')).cursor";

    let mut pixels = Vec::new();
    for i in 0..(8 * 8) {
        pixels.extend_from_slice(if i % 2 == 0 {
            &[255, 255, 255, 255]
        } else {
            &[0, 0, 0, 128]
        });
    }
    peer.send(wire::pointer_bitmap(8, 8, (1, 2), &pixels));
    b.wait_for(
        &format!("{cursor}.startsWith('url(\"data:image/png')"),
        SECS,
    );
    let css = b.eval(cursor);
    assert!(css.as_str().unwrap().ends_with(" 1 2, default"), "{css}");
    assert_eq!(b.stats()["cursor"], "bitmap");

    peer.send(wire::pointer_hidden());
    b.wait_for(&format!("{cursor} === 'none'"), SECS);
    peer.send(wire::pointer_position(10, 10));
    peer.send(wire::pointer_default());
    b.wait_for(&format!("{cursor} === 'default'"), SECS);
}

#[test]
fn mouse_and_wheel_reach_the_gateway_in_desktop_coordinates() {
    let _turn = serial();
    let server = PageServer::start();
    let mut b = Chromium::launch();
    // A desktop twice the window's size: the canvas is shown at half size, aspect kept.
    let (vw, vh) = chromium::VIEWPORT;
    let (dw, dh) = (2 * vw, 2 * vh);
    let mut peer = connected(&mut b, &server, dw as u16, dh as u16);
    let boxed = b.eval(
        "(() => { const r = document.getElementById('screen').getBoundingClientRect(); \
                  return [r.width, r.height, innerWidth, innerHeight]; })()",
    );
    let f: Vec<f64> = boxed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!((f[0], f[1]), (f64::from(vw), f64::from(vh)), "{boxed}");
    let _ = peer.collect(Duration::from_millis(200));

    b.click(1000, 700);
    let got = peer.collect(Duration::from_millis(500));
    assert_eq!(
        got,
        [
            FromPage::MouseMove { x: 1000, y: 700 },
            FromPage::MouseButton {
                button: 0,
                down: true,
                x: 1000,
                y: 700
            },
            FromPage::MouseButton {
                button: 0,
                down: false,
                x: 1000,
                y: 700
            },
        ]
    );

    for (name, number) in [("right", 1), ("middle", 2), ("back", 3), ("forward", 4)] {
        let (x, y) = (dw - 2, dh - 2);
        b.mouse_move(x, y);
        b.mouse_button(x, y, name, true);
        b.mouse_button(x, y, name, false);
        let got: Vec<_> = peer
            .collect(Duration::from_millis(400))
            .into_iter()
            .filter(|m| !matches!(m, FromPage::MouseMove { .. }))
            .collect();
        assert_eq!(
            got,
            [
                FromPage::MouseButton {
                    button: number,
                    down: true,
                    x: x as u16,
                    y: y as u16
                },
                FromPage::MouseButton {
                    button: number,
                    down: false,
                    x: x as u16,
                    y: y as u16
                },
            ],
            "{name} button"
        );
    }
    // The page is still the same page (back/forward did not navigate away).
    assert_eq!(b.stats()["sessionId"], "1");

    // One notch down (100 px), one notch right; a huge delta clamps to i16.
    b.wheel(400, 300, 0.0, 100.0);
    b.wheel(400, 300, 100.0, 0.0);
    b.wheel(400, 300, 0.0, -50_000.0);
    let wheels: Vec<_> = peer
        .collect(Duration::from_millis(500))
        .into_iter()
        .filter(|m| !matches!(m, FromPage::MouseMove { .. }))
        .collect();
    assert_eq!(
        wheels,
        [
            FromPage::Wheel {
                axis: 0,
                delta: -120,
                x: 400,
                y: 300
            },
            FromPage::Wheel {
                axis: 1,
                delta: 120,
                x: 400,
                y: 300
            },
            FromPage::Wheel {
                axis: 0,
                delta: 32767,
                x: 400,
                y: 300
            },
        ]
    );

    // No context menu over the desktop.
    let shown = b.eval(
        "document.getElementById('screen').dispatchEvent(\
           new MouseEvent('contextmenu', { cancelable: true, bubbles: true }))",
    );
    assert_eq!(shown, false, "the context menu was not prevented");
}

#[test]
fn keys_go_as_scancodes_and_other_characters_as_unicode() {
    let _turn = serial();
    let server = PageServer::start();
    let mut b = Chromium::launch();
    let mut peer = connected(&mut b, &server, 320, 240);
    b.eval(
        "window.addEventListener('keydown', (e) => { window.lastPrevented = e.defaultPrevented; })",
    );
    let _ = peer.collect(Duration::from_millis(200));

    let key = |scancode, extended, down| FromPage::Key {
        scancode,
        extended,
        down,
    };
    for (code, k, text, scancode, extended) in [
        ("KeyA", "a", "a", 0x1e, false),
        ("Digit0", "0", "0", 0x0b, false),
        ("ArrowLeft", "ArrowLeft", "", 0x4b, true),
        ("ControlRight", "Control", "", 0x1d, true),
        ("ControlLeft", "Control", "", 0x1d, false),
        ("NumpadEnter", "Enter", "\r", 0x1c, true),
        ("Enter", "Enter", "\r", 0x1c, false),
        ("IntlBackslash", "<", "<", 0x56, false),
        ("F12", "F12", "", 0x58, false),
        ("MetaLeft", "Meta", "", 0x5b, true),
        ("Numpad7", "7", "7", 0x47, false),
        ("Home", "Home", "", 0x47, true),
    ] {
        b.key(code, k, text);
        assert_eq!(
            peer.collect(Duration::from_millis(300)),
            [
                key(scancode, extended, true),
                key(scancode, extended, false)
            ],
            "{code}"
        );
        assert_eq!(b.eval("window.lastPrevented"), true, "{code} not prevented");
    }

    // No scancode, a printable key: the character as UTF-16 code units, each down then up.
    b.key("", "é", "é");
    let unicode = |code_unit, down| FromPage::Unicode { code_unit, down };
    assert_eq!(
        peer.collect(Duration::from_millis(300)),
        [unicode(0xe9, true), unicode(0xe9, false)]
    );
    b.key("", "😀", "😀");
    assert_eq!(
        peer.collect(Duration::from_millis(300)),
        [
            unicode(0xd83d, true),
            unicode(0xd83d, false),
            unicode(0xde00, true),
            unicode(0xde00, false)
        ]
    );

    // Held keys are released when the page loses focus.
    b.key_down("ShiftLeft", "Shift", "");
    b.key_down("AltRight", "AltGraph", "");
    assert_eq!(
        peer.collect(Duration::from_millis(300)),
        [key(0x2a, false, true), key(0x38, true, true)]
    );
    b.eval("window.dispatchEvent(new Event('blur'))");
    let mut released = peer.collect(Duration::from_millis(300));
    released.sort_by_key(|m| format!("{m:?}"));
    assert_eq!(released, [key(0x2a, false, false), key(0x38, true, false)]);

    // The table covers a whole 105-key PC keyboard, each key with its own scancode.
    let codes = [
        "Escape",
        "F1",
        "F2",
        "F3",
        "F4",
        "F5",
        "F6",
        "F7",
        "F8",
        "F9",
        "F10",
        "F11",
        "F12",
        "PrintScreen",
        "ScrollLock",
        "Pause",
        "Backquote",
        "Digit1",
        "Digit2",
        "Digit3",
        "Digit4",
        "Digit5",
        "Digit6",
        "Digit7",
        "Digit8",
        "Digit9",
        "Digit0",
        "Minus",
        "Equal",
        "Backspace",
        "Insert",
        "Home",
        "PageUp",
        "NumLock",
        "NumpadDivide",
        "NumpadMultiply",
        "NumpadSubtract",
        "Tab",
        "KeyQ",
        "KeyW",
        "KeyE",
        "KeyR",
        "KeyT",
        "KeyY",
        "KeyU",
        "KeyI",
        "KeyO",
        "KeyP",
        "BracketLeft",
        "BracketRight",
        "Backslash",
        "Delete",
        "End",
        "PageDown",
        "Numpad7",
        "Numpad8",
        "Numpad9",
        "NumpadAdd",
        "CapsLock",
        "KeyA",
        "KeyS",
        "KeyD",
        "KeyF",
        "KeyG",
        "KeyH",
        "KeyJ",
        "KeyK",
        "KeyL",
        "Semicolon",
        "Quote",
        "Enter",
        "Numpad4",
        "Numpad5",
        "Numpad6",
        "ShiftLeft",
        "IntlBackslash",
        "KeyZ",
        "KeyX",
        "KeyC",
        "KeyV",
        "KeyB",
        "KeyN",
        "KeyM",
        "Comma",
        "Period",
        "Slash",
        "ShiftRight",
        "ArrowUp",
        "Numpad1",
        "Numpad2",
        "Numpad3",
        "NumpadEnter",
        "ControlLeft",
        "MetaLeft",
        "AltLeft",
        "Space",
        "AltRight",
        "MetaRight",
        "ContextMenu",
        "ControlRight",
        "ArrowLeft",
        "ArrowDown",
        "ArrowRight",
        "Numpad0",
        "NumpadDecimal",
    ];
    assert_eq!(codes.len(), 105);
    let table = b.eval(&format!(
        "import('/keymap.js').then((m) => {}.map((c) => {{ \
            const s = m.scancodeOf(c); return s ? s.scancode + (s.extended ? 256 : 0) : null; }}))",
        serde_json::to_string(&codes[..]).unwrap()
    ));
    let mut seen = std::collections::HashMap::new();
    for (code, v) in codes.iter().zip(table.as_array().unwrap()) {
        let sc = v
            .as_u64()
            .unwrap_or_else(|| panic!("{code} has no scancode"));
        if let Some(other) = seen.insert(sc, code) {
            panic!("{code} and {other} share scancode {sc:#x}");
        }
    }
}

// --- sound --------------------------------------------------------------------------------

/// `n` Opus packets of 20 ms (48 kHz stereo, both channels alike) of a `freq` Hz sine at half
/// scale, as a gateway encodes them.
fn opus_tone(freq: f64, n: usize) -> Vec<Vec<u8>> {
    let mut enc =
        opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio).unwrap();
    tone::sine(freq, 48_000, n as f64 * 0.02, 0.5)
        .chunks_exact(960)
        .map(|frame| {
            let stereo: Vec<f32> = frame.iter().flat_map(|&x| [x, x]).collect();
            let mut out = vec![0u8; 4000];
            let len = enc.encode_float(&stereo, &mut out).unwrap();
            out.truncate(len);
            out
        })
        .collect()
}

/// A connected page with an Opus stream started and sound enabled by a real click on the
/// page's "click to enable sound" banner.
fn sound_enabled(b: &mut Chromium, server: &PageServer) -> Peer {
    let mut peer = connected(b, server, 320, 240);
    peer.send(wire::audio_start(1, 48_000, 2));
    b.wait_for("rdpwire.stats().audioState === 'suspended'", SECS);
    assert!(b.visible("#sound-enable"), "{}", b.describe_page());
    b.click_element("#sound-enable");
    b.wait_for("rdpwire.stats().audioContext === 'running'", SECS);
    peer
}

#[test]
fn an_opus_stream_plays_its_tone_and_the_page_reports_its_buffer() {
    let _turn = serial();
    let server = PageServer::start();
    let mut b = Chromium::launch();
    let mut peer = sound_enabled(&mut b, &server);
    b.eval("rdpwire.captureAudio(true)");

    // ~1 s of 440 Hz in real time, 20 ms apart; packets 25 and 26 never come: the gateway
    // dropped them, and says so in `dropped` from then on.
    let packets = opus_tone(440.0, 52);
    let mut buffers: Vec<(Instant, u16)> = Vec::new();
    let keep = |m: FromPage, buffers: &mut Vec<(Instant, u16)>| match m {
        FromPage::AudioBuffer { buffer_ms } => buffers.push((Instant::now(), buffer_ms)),
        FromPage::MouseMove { .. } | FromPage::MouseButton { .. } => {}
        other => panic!("the page sent {other:?} while sound played"),
    };
    let started = Instant::now();
    let mut sent = 0;
    for (i, packet) in packets.iter().enumerate() {
        let due = started + Duration::from_millis(20 * i as u64);
        while Instant::now() < due {
            if let Some(m) = peer.next_within(due.saturating_duration_since(Instant::now())) {
                keep(m, &mut buffers);
            }
        }
        if i == 25 || i == 26 {
            continue;
        }
        let dropped = if i > 26 { 2 } else { 0 };
        peer.send(wire::audio_packet(
            20_000 * i as u64,
            20_000,
            dropped,
            packet,
        ));
        sent += 1;
    }
    peer.send(wire::audio_stop());
    // The stop lets the page play out what it holds, then it goes quiet.
    let deadline = Instant::now() + SECS;
    while b.stats()["audioState"] != "idle" {
        assert!(Instant::now() < deadline, "{}", b.describe_page());
        for m in peer.collect(Duration::from_millis(50)) {
            keep(m, &mut buffers);
        }
    }
    let streamed = started.elapsed();
    for m in peer.collect(Duration::from_millis(300)) {
        keep(m, &mut buffers);
    }
    let s = b.stats();
    assert_eq!(s["audioPackets"], sent, "{s}");
    let page_dropped = s["audioPageDropped"].as_u64().unwrap();
    assert_eq!(
        s["audioDropped"].as_u64().unwrap(),
        2 + page_dropped,
        "the gateway's count plus the page's own: {s}"
    );
    assert_eq!(s["audioErrors"], 0, "{s}");
    assert_eq!(s["audioBufferMs"], 0, "{s}");

    // AudioBuffer while it played: at most one per 250 ms, each a plausible depth (the
    // 40 ms target, at most target + 150 ms, plus the output's own latency).
    let most = (streamed.as_millis() / 250 + 1) as usize;
    assert!(
        buffers.len() >= 2 && buffers.len() <= most,
        "{} AudioBuffer messages in {streamed:?}: {buffers:?}",
        buffers.len()
    );
    assert!(buffers.iter().all(|&(_, ms)| ms <= 400), "{buffers:?}");
    assert!(buffers.iter().any(|&(_, ms)| ms >= 10), "{buffers:?}");
    // Silent and idle: nothing more.
    let after: Vec<_> = peer
        .collect(Duration::from_millis(800))
        .into_iter()
        .filter(|m| matches!(m, FromPage::AudioBuffer { .. }))
        .collect();
    assert!(after.is_empty(), "AudioBuffer while idle: {after:?}");

    // What the page played: each packet's 20 ms in stream order, decoded before it played,
    // at the stream's rate, and the tone itself.
    let (rate, chunks) = b.take_audio_capture();
    assert_eq!(rate, 48_000);
    assert_eq!(
        chunks.len() as u64,
        sent - page_dropped,
        "{:?}",
        chunks.iter().map(|c| c.timestamp_us).collect::<Vec<_>>()
    );
    for c in &chunks {
        assert_eq!(c.samples.len(), 960, "chunk at {} µs", c.timestamp_us);
        // The two clocks meet through `getOutputTimestamp`, good to a few milliseconds.
        assert!(c.played >= c.t - 5.0, "played before it was decoded: {c:?}");
    }
    for w in chunks.windows(2) {
        assert!(w[1].timestamp_us > w[0].timestamp_us && w[1].t >= w[0].t);
        assert!(w[1].played > w[0].played);
    }
    if page_dropped == 0 {
        assert_eq!(chunks[25].timestamp_us, 27 * 20_000, "the gateway's gap");
    }
    let samples: Vec<f32> = chunks.iter().flat_map(|c| c.samples.clone()).collect();
    // 0.3 s from 0.1 s on: past the codec's onset, before the gateway's gap.
    let middle = &samples[4_800..4_800 + 14_400];
    let f = tone::dominant_frequency(middle, 48_000);
    assert!(
        (f - 440.0).abs() <= 440.0 * 0.02,
        "dominant frequency {f} Hz"
    );
    let level = tone::rms(middle);
    assert!(level > 0.25 && level < 0.45, "rms {level}");

    // Idle, the page parks its audio output; the next stream plays without another click.
    b.wait_for("rdpwire.stats().audioContext === 'suspended'", SECS);
    peer.send(wire::audio_start(1, 48_000, 2));
    let again = opus_tone(880.0, 10);
    let started = Instant::now();
    for (i, packet) in again.iter().enumerate() {
        let due = started + Duration::from_millis(20 * i as u64);
        while Instant::now() < due {
            let _ = peer.next_within(due.saturating_duration_since(Instant::now()));
        }
        peer.send(wire::audio_packet(20_000 * i as u64, 20_000, 2, packet));
    }
    peer.send(wire::audio_stop());
    b.wait_for(
        "rdpwire.stats().audioDecoded === 60 && rdpwire.stats().audioState === 'idle'",
        SECS,
    );
    let (_, chunks) = b.take_audio_capture();
    assert!(chunks.len() >= 9, "{} chunks played", chunks.len());
    let samples: Vec<f32> = chunks.iter().flat_map(|c| c.samples.clone()).collect();
    let f = tone::dominant_frequency(&samples[960..960 * 8], 48_000);
    assert!(
        (f - 880.0).abs() <= 880.0 * 0.02,
        "dominant frequency {f} Hz"
    );
    assert!(!b.visible("#sound-enable"));
    peer.close(1000, "");
}

#[test]
fn sound_waits_for_a_click_and_has_mute_and_volume_controls() {
    let _turn = serial();
    let server = PageServer::start();
    let mut b = Chromium::launch();
    let mut peer = connected(&mut b, &server, 320, 240);
    assert!(!b.visible("#audio") && !b.visible("#sound-enable"));
    peer.send(wire::audio_start(1, 48_000, 2));

    // Browsers start an AudioContext suspended until the user interacts with the page.
    b.wait_for("rdpwire.stats().audioState === 'suspended'", SECS);
    assert!(b.visible("#sound-enable"));
    let text = b.eval("document.getElementById('sound-enable').textContent");
    assert!(
        text.as_str().unwrap().contains("click to enable sound"),
        "{text}"
    );
    assert!(b.visible("#mute") && b.visible("#volume"));
    b.click_element("#sound-enable");
    b.wait_for(
        "!document.getElementById('sound-enable').checkVisibility()",
        SECS,
    );
    assert_eq!(b.stats()["audioContext"], "running");

    // Mute, and back.
    assert_eq!(b.stats()["audioGain"], 1.0);
    b.click_element("#mute");
    b.wait_for("rdpwire.stats().audioMuted === true", SECS);
    let s = b.stats();
    assert_eq!(s["audioGain"], 0.0, "{s}");
    assert_eq!(
        b.eval("[document.getElementById('audio').dataset.muted, document.getElementById('audio').dataset.gain, document.getElementById('mute').getAttribute('aria-pressed')]"),
        json!(["true", "0", "true"])
    );
    b.click_element("#mute");
    b.wait_for("rdpwire.stats().audioMuted === false", SECS);
    assert_eq!(b.stats()["audioGain"], 1.0);

    // The keyboard works the controls while they have focus, and none of it reaches the
    // desktop: Tab from the mute button to the slider, two steps down.
    let _ = peer.collect(Duration::from_millis(200));
    b.key("Tab", "Tab", "");
    assert_eq!(b.eval("document.activeElement.id"), "volume");
    b.key("ArrowLeft", "ArrowLeft", "");
    b.key("ArrowLeft", "ArrowLeft", "");
    b.wait_for("rdpwire.stats().audioVolume === 90", SECS);
    assert!((b.stats()["audioGain"].as_f64().unwrap() - 0.81).abs() < 1e-9);
    let to_desktop: Vec<_> = peer
        .collect(Duration::from_millis(300))
        .into_iter()
        .filter(|m| !matches!(m, FromPage::MouseMove { .. }))
        .collect();
    assert!(to_desktop.is_empty(), "{to_desktop:?}");

    // Back on the desktop, keys go to the server again.
    b.click(100, 100);
    let _ = peer.collect(Duration::from_millis(300));
    b.key("KeyA", "a", "a");
    assert_eq!(
        peer.collect(Duration::from_millis(300)),
        [
            FromPage::Key {
                scancode: 0x1e,
                extended: false,
                down: true
            },
            FromPage::Key {
                scancode: 0x1e,
                extended: false,
                down: false
            }
        ]
    );
}

#[test]
fn audio_the_page_cannot_play_is_ignored_and_the_desktop_goes_on() {
    let _turn = serial();
    let server = PageServer::start();
    let mut b = Chromium::launch();
    let mut peer = connected(&mut b, &server, 320, 240);
    let packet = opus_tone(440.0, 1).remove(0);

    peer.send(wire::audio_packet(0, 20_000, 0, &packet));
    b.wait_for("rdpwire.stats().audioErrors === 1", SECS);
    assert!(
        b.stats()["audioError"]
            .as_str()
            .unwrap()
            .contains("AudioPacket without an AudioStart"),
        "{}",
        b.describe_page()
    );
    peer.send(wire::audio_start(7, 48_000, 2));
    b.wait_for("rdpwire.stats().audioErrors === 2", SECS);
    assert!(b.stats()["audioError"]
        .as_str()
        .unwrap()
        .contains("codec 7"));
    peer.send(wire::audio_start(1, 48_000, 6));
    b.wait_for("rdpwire.stats().audioErrors === 3", SECS);
    // Packets of a stream the page refused are ignored as quietly as the first was warned.
    peer.send(wire::audio_packet(20_000, 20_000, 0, &packet));
    b.wait_for("rdpwire.stats().audioPackets === 2", SECS);
    let s = b.stats();
    assert_eq!(s["audioErrors"], 3, "{s}");
    assert_eq!(s["audioState"], "idle", "{s}");
    assert!(!b.visible("#sound-enable") && !b.visible("#audio"));
    assert!(b
        .console()
        .contains("rdpwire: sound: AudioPacket without an AudioStart"));

    // The session and its picture are untouched.
    assert_eq!(s["state"], "connected", "{s}");
    assert_eq!(b.status_text(), "connected to office");
    peer.send_all([
        wire::start_frame(1),
        wire::solid_fill(1, rgba(GREEN), &[[0, 0, 320, 240]]),
        wire::end_frame(1),
    ]);
    assert_eq!(peer.frame_decoded().0, 1);
    assert_pixel(&mut b, 100, 100, GREEN, 0);

    // A stream the page can play, after all that, is offered as usual.
    peer.send(wire::audio_start(1, 48_000, 1));
    b.wait_for("rdpwire.stats().audioState === 'suspended'", SECS);
    assert!(b.visible("#sound-enable"));
}

/// Live (not zombie) processes whose process group is `pgid`, from /proc/PID/stat.
fn processes_in_group(pgid: u32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.ok()?.path().join("stat")).ok()?;
            // Fields after the command name: state, ppid, pgrp.
            let mut after = stat[stat.rfind(')')? + 2..].split_whitespace();
            let state = after.next()?;
            let group = after.nth(1)?.parse::<u32>().ok()?;
            (state != "Z" && group == pgid).then_some(())
        })
        .count()
}

#[test]
fn the_driver_leaves_no_browser_and_no_profile_behind() {
    let _turn = serial();
    let b = Chromium::launch();
    let (pid, profile) = (b.pid(), b.profile_dir().to_owned());
    assert!(profile.join("DevToolsActivePort").exists());
    assert!(
        processes_in_group(pid) >= 2,
        "a browser has helper processes"
    );
    drop(b);
    assert_eq!(
        processes_in_group(pid),
        0,
        "processes of the browser survived"
    );
    assert!(!profile.exists(), "{} is still there", profile.display());
}

#[test]
fn page_from_the_gateway_opens_a_session_and_says_what_became_of_it() {
    let _turn = serial();
    let gw = Gateway::start(&["--cores", "1"]);
    for a in rdpwire::web::assets() {
        let r = gw.get(a.path);
        assert_eq!(r.status, 200, "{}", a.path);
        assert_eq!(
            r.header("content-type").as_deref(),
            Some(a.content_type),
            "{}",
            a.path
        );
    }
    let mut b = Chromium::launch();
    b.navigate(&format!("http://{}/", gw.addr));
    // The gateway's ServerHello reached the page.
    b.wait_for("rdpwire.stats().sessionId !== null", SECS);
    // Whatever the gateway does with the session next, the page puts it in words: its own
    // status text while it runs, `state: reason` once it has ended.
    b.wait_for(
        "document.getElementById('status').textContent !== 'connecting to the gateway'",
        SECS,
    );
    let s = b.stats();
    let state = s["state"].as_str().unwrap();
    assert!(
        [
            "connecting",
            "authenticating",
            "connected",
            "disconnected",
            "error"
        ]
        .contains(&state),
        "{s}"
    );
    let shown = b.status_text();
    if state == "disconnected" || state == "error" {
        let reason = s["reason"].as_str().unwrap();
        assert!(!reason.is_empty(), "{s}");
        assert_eq!(shown, format!("{state}: {reason}"));
    } else {
        assert!(!shown.is_empty());
    }
    assert!(
        gw.metrics()
            .get("rdpwire_bytes_total{direction=\"browser_out\"}")
            >= 16
    );
}

#[test]
fn a_full_gateway_says_so_on_the_page() {
    let _turn = serial();
    let gw = Gateway::start(&["--cores", "1", "--max-sessions", "1"]);
    let mut holder = gw.ws().unwrap();
    holder.hello();
    let mut b = Chromium::launch();
    b.navigate(&format!("http://{}/", gw.addr));
    b.wait_for("rdpwire.stats().state === 'error'", SECS);
    let shown = b.status_text();
    assert!(shown.starts_with("error: full: "), "{shown}");
    assert_eq!(
        b.eval("rdpwire.stats().reason.startsWith('full: ')"),
        Value::Bool(true)
    );
    holder.ping(1);
}

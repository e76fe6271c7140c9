//! Hostile clients against the real gateway and its embedded demo desktop: malformed, out of
//! range and out of order browser messages, WebSocket framing abuse, upgrade floods, too many
//! sessions from one address, slow request heads, and a session whose task panics. Each ends
//! only the offender, with a close code and a reason (or an HTTP status and body) a user can
//! read, while a neighbour session keeps streaming the demo desktop throughout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdpwire::protocol::{types, FromBrowser, State, ToBrowser};
use support::{eventually, read_reply, Gateway, Ws, BIN};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

/// A session on the demo desktop that answers every frame, as a page does, on its own thread,
/// counting the frames it gets.
struct Neighbour {
    core: u16,
    frames: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

/// Sends a ClientHello for the default target and reads until the desktop is connected;
/// returns the session's core.
fn connect_demo(gw: &Gateway, ws: &mut Ws, width: u16) -> u16 {
    let (_, core) = ws.hello();
    ws.send(&FromBrowser::ClientHello {
        width,
        height: 768,
        target: String::new(),
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "not connected\n{}",
            gw.log_text()
        );
        let m = ws.next_logged(gw);
        if let Ok(ToBrowser::Status {
            state: State::Connected,
            ..
        }) = ToBrowser::decode(&m)
        {
            return core;
        }
    }
}

impl Neighbour {
    fn start(gw: &Gateway) -> Neighbour {
        let mut ws = gw.ws().unwrap();
        let core = connect_demo(gw, &mut ws, 1024);
        let frames = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(Mutex::new(None));
        let thread = {
            let (frames, stop, failure) = (frames.clone(), stop.clone(), failure.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    let m = match ws.ws.read() {
                        Ok(Message::Binary(b)) => b,
                        Ok(Message::Close(f)) => {
                            *failure.lock().unwrap() = Some(format!("closed: {f:?}"));
                            return;
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            *failure.lock().unwrap() = Some(e.to_string());
                            return;
                        }
                    };
                    if let Ok(ToBrowser::EndFrame { frame_id }) = ToBrowser::decode(&m) {
                        let n = frames.fetch_add(1, Relaxed) + 1;
                        ws.send(&FromBrowser::FrameDecoded {
                            frame_id,
                            frames_decoded: n,
                            queue_depth: 0,
                        });
                    }
                }
                ws.close();
            })
        };
        let n = Neighbour {
            core,
            frames,
            stop,
            failure,
            thread: Some(thread),
        };
        n.assert_streaming(gw, "after connecting");
        n
    }

    fn frames(&self) -> u32 {
        self.frames.load(Relaxed)
    }

    /// At least three more frames arrive within five seconds.
    fn assert_streaming(&self, gw: &Gateway, after: &str) -> u32 {
        let before = self.frames();
        let grew = eventually(Duration::from_secs(5), || self.frames() >= before + 3);
        assert!(
            grew,
            "the neighbour stopped streaming {after}: {} frames, failure {:?}\n{}",
            self.frames(),
            self.failure.lock().unwrap(),
            gw.log_text()
        );
        self.frames()
    }

    fn stop(mut self) -> u32 {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.frames()
    }
}

/// One WebSocket frame as a client writes it. `mask`: a client must mask (the key is zero,
/// so the payload goes as it is); `rsv`: the three reserved bits.
fn frame(fin: bool, rsv: u8, opcode: u8, mask: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let m = u8::from(mask) << 7;
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if mask {
        f.extend_from_slice(&[0; 4]);
    }
    f.extend_from_slice(payload);
    f
}

/// A frame header that announces `len` payload bytes and sends none of them.
fn announce(len: u64) -> Vec<u8> {
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[0; 4]);
    f
}

/// What a hostile client sends on a fresh session, after its ServerHello.
enum Send {
    Message(Message),
    /// Bytes written straight to the socket (WebSocket framing the client library won't make).
    Raw(Vec<u8>),
}

struct Case {
    name: &'static str,
    /// Send a ClientHello for the demo desktop first.
    hello: bool,
    send: Vec<Send>,
    code: u16,
    reason: &'static str,
}

fn bin(bytes: &[u8]) -> Send {
    Send::Message(Message::binary(bytes.to_vec()))
}

fn msg(m: FromBrowser) -> Send {
    Send::Message(Message::binary(m.encode()))
}

fn hello_msg() -> FromBrowser {
    FromBrowser::ClientHello {
        width: 1024,
        height: 768,
        target: String::new(),
    }
}

fn key() -> FromBrowser {
    FromBrowser::Input(rdpwire::rdp::InputEvent::Key {
        scancode: 0x1e,
        extended: false,
        down: true,
    })
}

fn cases() -> Vec<Case> {
    use types::*;
    let case = |name, hello, send, code, reason| Case {
        name,
        hello,
        send,
        code,
        reason,
    };
    let mut long_target = vec![1, CLIENT_HELLO, 0, 4, 0, 3];
    long_target.extend(std::iter::repeat_n(b'a', 65));
    let mut long_token = vec![1, TOKEN_HELLO, 0, 4, 0, 3];
    long_token.extend(std::iter::repeat_n(b'a', 4097));
    let mut key_long = key().encode();
    key_long.push(0);
    vec![
        // Truncated and oversized fields.
        case(
            "empty message",
            false,
            vec![bin(&[])],
            1002,
            "empty message",
        ),
        case(
            "version only",
            false,
            vec![bin(&[1])],
            1002,
            "needs 2 bytes, got 1",
        ),
        case(
            "Ping cut short",
            false,
            vec![bin(&[1, PING, 1, 2])],
            1002,
            "message type 0x81 needs 10 bytes, got 4",
        ),
        case(
            "FrameDecoded cut short",
            true,
            vec![bin(&[1, FRAME_DECODED, 0, 0])],
            1002,
            "message type 0x83 needs 6 bytes, got 4",
        ),
        case(
            "ClientHello cut short",
            false,
            vec![bin(&[1, CLIENT_HELLO, 0, 4])],
            1002,
            "message type 0x82 needs 6 bytes, got 4",
        ),
        case(
            "TokenHello cut short",
            false,
            vec![bin(&[1, TOKEN_HELLO, 0])],
            1002,
            "message type 0x8b needs 4 bytes, got 3",
        ),
        case(
            "MouseMove cut short",
            true,
            vec![bin(&[1, MOUSE_MOVE, 0, 0, 0])],
            1002,
            "message type 0x84 needs 6 bytes, got 5",
        ),
        case(
            "MouseButton cut short",
            true,
            vec![bin(&[1, MOUSE_BUTTON, 0])],
            1002,
            "message type 0x85 needs 4 bytes, got 3",
        ),
        case(
            "Wheel cut short",
            true,
            vec![bin(&[1, WHEEL, 0, 120])],
            1002,
            "message type 0x86 needs 5 bytes, got 4",
        ),
        case(
            "Unicode cut short",
            true,
            vec![bin(&[1, UNICODE, 0x41])],
            1002,
            "message type 0x88 needs 4 bytes, got 3",
        ),
        case(
            "Resize cut short",
            true,
            vec![bin(&[1, RESIZE, 0, 4, 0])],
            1002,
            "message type 0x89 needs 6 bytes, got 5",
        ),
        case(
            "AudioBuffer cut short",
            true,
            vec![bin(&[1, AUDIO_BUFFER, 0])],
            1002,
            "message type 0x8a needs 4 bytes, got 3",
        ),
        case(
            "Key cut short",
            true,
            vec![bin(&[1, KEY, 0x1e, 0])],
            1002,
            "message type 0x87 needs 5 bytes, got 4",
        ),
        case(
            "Key with a byte too many",
            true,
            vec![bin(&key_long)],
            1002,
            "message type 0x87 needs 5 bytes, got 6",
        ),
        case(
            "target name too long",
            false,
            vec![bin(&long_target)],
            1002,
            "target is 65 bytes, longer than 64",
        ),
        case(
            "token too long",
            false,
            vec![bin(&long_token)],
            1002,
            "token is 4097 bytes, longer than 4096",
        ),
        case(
            "empty token",
            false,
            vec![bin(&[1, TOKEN_HELLO, 0, 4, 0, 3])],
            1002,
            "token must be 1 or more ASCII characters",
        ),
        case(
            "target not UTF-8",
            false,
            vec![bin(&[1, CLIENT_HELLO, 0, 4, 0, 3, 0xff])],
            1002,
            "target is not UTF-8",
        ),
        // Out of range.
        case(
            "ClientHello 0×0",
            false,
            vec![bin(&[1, CLIENT_HELLO, 0, 0, 0, 0])],
            1002,
            "width 0 is outside 200–8192",
        ),
        case(
            "Resize to 0×0",
            true,
            vec![msg(FromBrowser::Resize {
                width: 0,
                height: 0,
            })],
            1002,
            "width 0 is outside 200–8192",
        ),
        case(
            "Resize to 65535×65535",
            true,
            vec![msg(FromBrowser::Resize {
                width: u16::MAX,
                height: u16::MAX,
            })],
            1002,
            "width 65535 is outside 200–8192",
        ),
        case(
            "Resize to 1024×9000",
            true,
            vec![msg(FromBrowser::Resize {
                width: 1024,
                height: 9000,
            })],
            1002,
            "height 9000 is outside 200–8192",
        ),
        case(
            "MouseMove off any desktop",
            true,
            vec![bin(&[1, MOUSE_MOVE, 0xff, 0xff, 0, 0])],
            1002,
            "x 65535 is outside 0–8191",
        ),
        case(
            "MouseButton 9",
            true,
            vec![bin(&[1, MOUSE_BUTTON, 9, 1, 0, 0, 0, 0])],
            1002,
            "button 9 is not 0–4",
        ),
        case(
            "Wheel axis 3",
            true,
            vec![bin(&[1, WHEEL, 3, 120, 0, 0, 0, 0, 0])],
            1002,
            "axis 3 is not 0 or 1",
        ),
        case(
            "Key down 2",
            true,
            vec![bin(&[1, KEY, 0x1e, 0, 2])],
            1002,
            "down 2 is not 0 or 1",
        ),
        case(
            "Unicode down 5",
            true,
            vec![bin(&[1, UNICODE, 0x41, 0, 5])],
            1002,
            "down 5 is not 0 or 1",
        ),
        case(
            "AudioBuffer of a minute",
            true,
            vec![msg(FromBrowser::AudioBuffer { buffer_ms: 60_000 })],
            1002,
            "buffer_ms 60000 is above 10000",
        ),
        // Unknown types and versions.
        case(
            "unknown type 0x42",
            false,
            vec![bin(&[1, 0x42])],
            1002,
            "unknown message type 0x42",
        ),
        case(
            "unknown type 0xff",
            false,
            vec![bin(&[1, 0xff, 0, 0])],
            1002,
            "unknown message type 0xff",
        ),
        case(
            "a gateway type from the browser",
            true,
            vec![bin(&[1, AVC420, 0, 0])],
            1002,
            "unknown message type 0x16",
        ),
        case(
            "protocol version 2",
            false,
            vec![bin(&[2, PING, 0, 0, 0, 0, 0, 0, 0, 0])],
            1002,
            "protocol version 2 is not supported",
        ),
        // Out of order.
        case(
            "Key before the hello",
            false,
            vec![msg(key())],
            1002,
            "Key before ClientHello or TokenHello",
        ),
        case(
            "MouseMove before the hello",
            false,
            vec![msg(FromBrowser::Input(
                rdpwire::rdp::InputEvent::MouseMove { x: 5, y: 5 },
            ))],
            1002,
            "MouseMove before ClientHello",
        ),
        case(
            "Resize before the hello",
            false,
            vec![msg(FromBrowser::Resize {
                width: 800,
                height: 600,
            })],
            1002,
            "Resize before ClientHello",
        ),
        case(
            "AudioBuffer before the hello",
            false,
            vec![msg(FromBrowser::AudioBuffer { buffer_ms: 20 })],
            1002,
            "AudioBuffer before ClientHello",
        ),
        case(
            "FrameDecoded before the hello",
            false,
            vec![msg(FromBrowser::FrameDecoded {
                frame_id: 1,
                frames_decoded: 1,
                queue_depth: 0,
            })],
            1002,
            "FrameDecoded before ClientHello",
        ),
        case(
            "a second ClientHello",
            true,
            vec![msg(hello_msg())],
            1002,
            "ClientHello after the session's hello (one hello per session)",
        ),
        case(
            "a TokenHello after the ClientHello",
            true,
            vec![bin(&[1, TOKEN_HELLO, 0, 4, 0, 3, b'A'])],
            1002,
            "TokenHello after the session's hello",
        ),
        case(
            "FrameDecoded for a frame never sent",
            true,
            vec![msg(FromBrowser::FrameDecoded {
                frame_id: 0xdead_beef,
                frames_decoded: 1,
                queue_depth: 0,
            })],
            1002,
            "FrameDecoded for frame 3735928559, which is not on its way to the page",
        ),
        // WebSocket level.
        case(
            "a text message",
            false,
            vec![Send::Message(Message::text("hello"))],
            1003,
            "text messages are not part of the protocol",
        ),
        case(
            "a text message that is not UTF-8",
            false,
            vec![Send::Raw(frame(true, 0, 1, true, &[0xc3, 0x28]))],
            1007,
            "a text message or close reason that is not UTF-8",
        ),
        case(
            "a close frame whose reason is not UTF-8",
            true,
            vec![Send::Raw(frame(true, 0, 8, true, &[3, 232, 0xc3, 0x28]))],
            1007,
            "a text message or close reason that is not UTF-8",
        ),
        case(
            "a 64 KiB message",
            true,
            vec![bin(&[1u8; 64 << 10])],
            1009,
            "message of 65536 bytes exceeds the limit of 8192",
        ),
        case(
            "a frame announcing 1 GiB",
            false,
            vec![Send::Raw(announce(1 << 30))],
            1009,
            "exceeds the limit of 8192",
        ),
        case(
            "a message of many small fragments",
            false,
            vec![Send::Raw(
                [
                    frame(false, 0, 2, true, &[1; 4000]),
                    frame(false, 0, 0, true, &[1; 4000]),
                    frame(true, 0, 0, true, &[1; 4000]),
                ]
                .concat(),
            )],
            1009,
            "exceeds the limit of 8192",
        ),
        case(
            "a fragmented ping",
            false,
            vec![Send::Raw(frame(false, 0, 9, true, b"hi"))],
            1002,
            "websocket protocol error: a fragmented control frame",
        ),
        case(
            "a fragmented close",
            true,
            vec![Send::Raw(frame(false, 0, 8, true, &[3, 232]))],
            1002,
            "a fragmented control frame",
        ),
        case(
            "a 126-byte ping",
            false,
            vec![Send::Raw(frame(true, 0, 9, true, &[7; 126]))],
            1002,
            "a control frame above 125 bytes",
        ),
        case(
            "an unmasked frame",
            false,
            vec![Send::Raw(frame(
                true,
                0,
                2,
                false,
                &FromBrowser::Ping { nonce: 1 }.encode(),
            ))],
            1002,
            "an unmasked frame",
        ),
        case(
            "reserved bits set",
            false,
            vec![Send::Raw(frame(
                true,
                4,
                2,
                true,
                &FromBrowser::Ping { nonce: 1 }.encode(),
            ))],
            1002,
            "reserved bits set",
        ),
        case(
            "reserved opcode 3",
            false,
            vec![Send::Raw(frame(true, 0, 3, true, b"x"))],
            1002,
            "unknown opcode 3",
        ),
        case(
            "reserved control opcode 11",
            false,
            vec![Send::Raw(frame(true, 0, 11, true, b""))],
            1002,
            "unknown opcode 11",
        ),
        case(
            "a continuation with nothing to continue",
            false,
            vec![Send::Raw(frame(true, 0, 0, true, b"x"))],
            1002,
            "a continuation frame with no message to continue",
        ),
        case(
            "a new message inside a fragmented one",
            false,
            vec![Send::Raw(
                [
                    frame(false, 0, 2, true, &[1, PING]),
                    frame(true, 0, 2, true, &[1]),
                ]
                .concat(),
            )],
            1002,
            "a new message before the fragmented one was finished",
        ),
    ]
}

#[test]
fn hostile_browser_messages_end_only_their_session_in_words() {
    // Dozens of sessions open in a few seconds from one address: the rate limit is the
    // subject of another test.
    let gw = Gateway::start_demo(&["--cores", "1", "--max-upgrades-per-ip", "0"]);
    let neighbour = Neighbour::start(&gw);
    let cases = cases();
    for c in &cases {
        let mut ws = gw.ws().unwrap();
        if c.hello {
            connect_demo(&gw, &mut ws, 1024);
        } else {
            ws.hello();
        }
        for s in &c.send {
            match s {
                Send::Message(m) => ws.ws.send(m.clone()).unwrap(),
                Send::Raw(bytes) => {
                    let MaybeTlsStream::Plain(tcp) = ws.ws.get_mut() else {
                        unreachable!("plain WebSocket")
                    };
                    // The gateway may close before it reads all of a large frame.
                    let _ = tcp.write_all(bytes);
                }
            }
        }
        let (code, reason) = ws.expect_close();
        assert_eq!(
            (code, reason.contains(c.reason)),
            (c.code, true),
            "{}: got {code} {reason:?}, wanted {} {:?}",
            c.name,
            c.code,
            c.reason
        );
        assert!(reason.len() <= 123, "{}: {reason}", c.name);
        neighbour.assert_streaming(&gw, c.name);
    }
    assert!(eventually(Duration::from_secs(5), || gw
        .metrics()
        .get("rdpwire_sessions_active")
        == 1));
    let m = gw.metrics();
    assert_eq!(
        m.get("rdpwire_sessions_total"),
        1 + cases.len() as u64,
        "every hostile session was admitted and ended"
    );
    assert_eq!(
        m.get("rdpwire_pool_slots{pool=\"frame_chunk\",state=\"reserved\"}"),
        16,
        "only the neighbour's share is reserved"
    );
    assert_eq!(m.get("rdpwire_sessions_panicked_total"), 0);
    let frames = neighbour.stop();
    eprintln!(
        "{} hostile cases, each closed in words; the neighbour got {frames} frames throughout",
        cases.len()
    );
}

/// A raw upgrade request; returns the status and body (the gateway closes after a refusal).
fn upgrade(
    gw: &Gateway,
) -> (
    u16,
    String,
    Option<tungstenite::WebSocket<MaybeTlsStream<TcpStream>>>,
) {
    match tungstenite::connect(format!("ws://{}/ws", gw.addr)) {
        Ok((ws, resp)) => (resp.status().as_u16(), String::new(), Some(ws)),
        Err(tungstenite::Error::Http(resp)) => {
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
            (resp.status().as_u16(), body, None)
        }
        Err(e) => panic!("upgrade failed: {e}\n{}", gw.log_text()),
    }
}

fn cores() -> &'static str {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        "2"
    } else {
        "1"
    }
}

#[test]
fn an_upgrade_flood_gets_429_and_slow_clients_are_cut_while_a_session_streams() {
    let gw = Gateway::start_demo(&[
        "--cores",
        cores(),
        "--max-upgrades-per-ip",
        "5",
        "--http-timeout",
        "500ms",
        "--hello-timeout",
        "500ms",
    ]);
    let neighbour = Neighbour::start(&gw);
    // The neighbour's upgrade came from the same bucket more than a second ago; the bucket is
    // full again.
    std::thread::sleep(Duration::from_millis(1100));
    let started = Instant::now();
    let (mut admitted, mut refused) = (0u64, 0u64);
    for _ in 0..40 {
        let (status, body, ws) = upgrade(&gw);
        match status {
            101 => {
                admitted += 1;
                drop(ws);
            }
            429 => {
                refused += 1;
                assert_eq!(
                    body,
                    "too many upgrades: more than 5 WebSocket upgrades a second from 127.0.0.1; retry in a second\n"
                );
            }
            other => panic!("status {other}: {body}"),
        }
    }
    let took = started.elapsed();
    // Five at once, plus five a second while the flood lasts.
    let allowed = 5 + (took.as_secs_f64() * 5.0).ceil() as u64;
    assert!(
        admitted >= 5 && admitted <= allowed,
        "{admitted} admitted in {took:?}"
    );
    assert_eq!(admitted + refused, 40);
    neighbour.assert_streaming(&gw, "during the upgrade flood");
    let m = gw.metrics();
    assert_eq!(
        m.get("rdpwire_client_limited_total{limit=\"upgrades_per_second\"}"),
        refused
    );
    // A second later the address may upgrade again.
    std::thread::sleep(Duration::from_millis(1100));
    let (status, body, _ws) = upgrade(&gw);
    assert_eq!(status, 101, "{body}");

    // Slow clients: half a request head each, then silence; cut after the timeout, the
    // neighbour unaffected.
    let slow_started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(gw.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgr").unwrap();
            s
        })
        .collect();
    neighbour.assert_streaming(&gw, "while slow clients dawdle");
    for s in &mut slow {
        let r = read_reply(s);
        assert_eq!(r.status, 408, "{}", r.head);
        assert!(
            r.body.contains("no complete request head within 500ms"),
            "{}",
            r.body
        );
    }
    let cut = slow_started.elapsed();
    assert!(
        cut >= Duration::from_millis(450) && cut < Duration::from_secs(3),
        "{cut:?}"
    );
    neighbour.assert_streaming(&gw, "after the slow clients were cut");

    // A WebSocket that pings and never says hello: pings keep the idle timeout away, not the
    // hello timeout.
    let mut mute = gw.ws().unwrap();
    mute.hello();
    let opened = Instant::now();
    let (code, reason) = loop {
        mute.send(&FromBrowser::Ping { nonce: 1 });
        match mute.ws.read().unwrap() {
            Message::Close(Some(f)) => break (u16::from(f.code), f.reason.to_string()),
            other => assert!(other.is_binary(), "{other:?}"),
        }
        assert!(opened.elapsed() < Duration::from_secs(5), "never closed");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mute_cut = opened.elapsed();
    assert_eq!(code, 1008, "{reason}");
    assert!(
        reason.ends_with("no ClientHello or TokenHello within 500ms of opening"),
        "{reason}"
    );
    assert!(mute_cut >= Duration::from_millis(400), "{mute_cut:?}");
    let frames = neighbour.stop();
    eprintln!(
        "flood: {admitted} admitted, {refused} refused (429) in {took:?}; 4 slow heads cut after {cut:?}; a pinging session without hello cut after {mute_cut:?}; neighbour frames {frames}"
    );
}

#[test]
fn sessions_beyond_the_per_address_limit_get_429_until_one_closes_on_any_core() {
    let gw = Gateway::start_demo(&[
        "--cores",
        cores(),
        "--max-sessions-per-ip",
        "6",
        "--max-upgrades-per-ip",
        "0",
    ]);
    let neighbour = Neighbour::start(&gw);
    // Six sessions from one address, spread over the cores by the kernel's hash of the
    // source port: wherever they landed, a count per core would let the next ones in on the
    // core with fewer.
    let mut held: Vec<Ws> = (0..5).map(|_| gw.ws().unwrap()).collect();
    let mut cores_used: std::collections::BTreeSet<u16> =
        held.iter_mut().map(|w| w.hello().1).collect();
    cores_used.insert(neighbour.core);
    for _ in 0..4 {
        let (status, body, _) = upgrade(&gw);
        assert_eq!(status, 429, "{body}");
        assert_eq!(
            body,
            "too many sessions: 127.0.0.1 already has 6 sessions on this gateway (the limit per client address); close one first\n"
        );
    }
    neighbour.assert_streaming(&gw, "while the seventh session was refused");
    let m = gw.metrics();
    assert_eq!(m.get("rdpwire_client_limited_total{limit=\"sessions\"}"), 4);
    assert_eq!(m.get("rdpwire_sessions_active"), 6);
    held.pop().unwrap().close();
    // The count comes back when the session ends, on whichever core it ran.
    assert!(eventually(Duration::from_secs(5), || upgrade(&gw).0 == 101));
    eprintln!("per-address limit of 6 held with sessions on cores {cores_used:?}; 4 refused, admitted again after one closed");
    neighbour.stop();
}

#[test]
fn a_panicking_session_ends_alone_with_1011_and_gives_its_share_back() {
    let mut cmd = Command::new(BIN);
    cmd.env("RDPWIRE_DEBUG_PANIC_WIDTH", "1234");
    let gw = Gateway::start_sub(cmd, "demo", &["--cores", "1"]);
    let neighbour = Neighbour::start(&gw);

    // A streaming session that asks for the fatal width in a resize: the bug hits with its
    // RDP connection, frames in flight and sound running.
    let mut victim = gw.ws().unwrap();
    connect_demo(&gw, &mut victim, 1024);
    assert_eq!(gw.metrics().get("rdpwire_sessions_active"), 2);
    victim.send(&FromBrowser::Resize {
        width: 1234,
        height: 768,
    });
    let (code, reason) = victim.expect_close();
    assert_eq!(code, 1011, "{reason}");
    assert!(
        reason.contains("internal error in this session"),
        "{reason}"
    );
    neighbour.assert_streaming(&gw, "after a session panicked");

    // One that asks for it in its hello: the bug hits while it connects.
    let mut early = gw.ws().unwrap();
    let (early_id, _) = early.hello();
    early.send(&FromBrowser::ClientHello {
        width: 1234,
        height: 768,
        target: String::new(),
    });
    let (code, reason) = early.expect_close();
    assert_eq!(code, 1011, "{reason}");
    assert!(
        reason.starts_with(&format!("session {early_id}: internal error")),
        "{reason}"
    );
    neighbour.assert_streaming(&gw, "after a second session panicked");

    // The executor lives on: health, new sessions, the shares back in the arena.
    let h = gw.get("/healthz");
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    assert!(eventually(Duration::from_secs(5), || gw
        .metrics()
        .get("rdpwire_sessions_active")
        == 1));
    let m = gw.metrics();
    assert_eq!(m.get("rdpwire_sessions_panicked_total"), 2);
    for pool in ["frame_chunk", "surface_desc", "audio_buf"] {
        let reserved = m.get(&format!(
            "rdpwire_pool_slots{{pool=\"{pool}\",state=\"reserved\"}}"
        ));
        let per_session = match pool {
            "frame_chunk" | "surface_desc" => 16,
            _ => 4,
        };
        assert_eq!(reserved, per_session, "{pool}: only the neighbour's share");
    }
    let log = gw.log_text();
    let panicked: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("session panicked"))
        .collect();
    assert_eq!(panicked.len(), 2, "{log}");
    assert!(
        panicked
            .iter()
            .any(|l| l.contains(&format!("\"session\":{early_id}")) && l.contains("injected fault")),
        "{panicked:?}"
    );
    let mut after = gw.ws().unwrap();
    connect_demo(&gw, &mut after, 1024);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(
        ToBrowser::decode(&after.next_logged(&gw)),
        Ok(ToBrowser::EndFrame { .. })
    ) {
        assert!(Instant::now() < deadline, "no frame for the new session");
    }
    after.close();
    let frames = neighbour.stop();
    eprintln!("two sessions panicked and closed with 1011; the neighbour got {frames} frames; a new session connected");
}

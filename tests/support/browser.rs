//! A test browser that speaks the browser protocol over a real WebSocket: connects to the
//! gateway's default target, answers frames as a page does, and records the sound it gets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use rdpwire::protocol::{FromBrowser, State, ToBrowser};
use rdpwire::rdp::input::MouseButton;
use rdpwire::rdp::InputEvent;

use super::support::{Gateway, Ws};

/// What one session received, as far as sound goes.
#[derive(Default)]
pub struct Heard {
    pub starts: Vec<u8>,
    /// (timestamp_us, dropped, opus packet, arrival)
    pub packets: Vec<(u64, u32, Vec<u8>, Instant)>,
    pub frames: u32,
}

impl Heard {
    pub fn pcm(&self) -> Vec<f32> {
        super::tone::opus_left(self.packets.iter().map(|(_, _, p, _)| p.as_slice()))
    }
}

/// Reads for `dur`, answering every frame so the picture keeps flowing.
pub fn listen(ws: &mut Ws, gw: &Gateway, dur: Duration, heard: &mut Heard) {
    let until = Instant::now() + dur;
    while Instant::now() < until {
        let m = ws.next_logged(gw);
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
pub fn answer_frame(ws: &mut Ws, heard: &mut Heard, frame_id: u32) {
    heard.frames += 1;
    ws.send(&FromBrowser::FrameDecoded {
        frame_id,
        frames_decoded: heard.frames,
        queue_depth: 0,
    });
}

/// A Ping answered while sound and frames keep arriving.
pub fn ping(ws: &mut Ws, gw: &Gateway, nonce: u64, heard: &mut Heard) {
    ws.send(&FromBrowser::Ping { nonce });
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let m = ws.next_logged(gw);
        match ToBrowser::decode(&m).unwrap() {
            ToBrowser::Pong { nonce: n } if n == nonce => return,
            ToBrowser::EndFrame { frame_id } => answer_frame(ws, heard, frame_id),
            _ => {}
        }
    }
    panic!("no pong {nonce}\n{}", gw.log_text());
}

/// A demo session, connected, with the first frames answered.
pub fn connect(gw: &Gateway, ws: &mut Ws) -> Heard {
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

pub fn key(ws: &mut Ws, scancode: u8) {
    for down in [true, false] {
        ws.send(&FromBrowser::Input(InputEvent::Key {
            scancode,
            extended: false,
            down,
        }));
    }
}

pub const F9: u8 = 0x43;

pub fn click(ws: &mut Ws, x: u16, y: u16) {
    for down in [true, false] {
        ws.send(&FromBrowser::Input(InputEvent::MouseButton {
            button: MouseButton::Left,
            down,
            x,
            y,
        }));
    }
}

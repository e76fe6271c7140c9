//! Protocol v1 as written in docs/protocol.md, independently of the gateway's own codec:
//! builders for the messages a gateway sends, and a strict decoder for what a page sends
//! (exact lengths), so tests check the web client against the document itself.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// `[left, top, right, bottom]`, right and bottom exclusive.
pub type Rect = [u16; 4];

fn msg(ty: u8) -> Vec<u8> {
    vec![1, ty]
}

trait Put {
    fn u16(self, v: u16) -> Self;
    fn u32(self, v: u32) -> Self;
    fn rect(self, r: Rect) -> Self;
}

impl Put for Vec<u8> {
    fn u16(mut self, v: u16) -> Self {
        self.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn rect(self, r: Rect) -> Self {
        self.u16(r[0]).u16(r[1]).u16(r[2]).u16(r[3])
    }
}

pub fn server_hello(session_id: u64, core: u16, max_message: u32) -> Vec<u8> {
    let mut m = msg(0x01);
    m.extend_from_slice(&session_id.to_le_bytes());
    m.u16(core).u32(max_message)
}

pub fn pong(nonce: u64) -> Vec<u8> {
    let mut m = msg(0x02);
    m.extend_from_slice(&nonce.to_le_bytes());
    m
}

/// `state`: 0 connecting, 1 authenticating, 2 connected, 3 reconnecting.
pub fn status(state: u8, text: &str) -> Vec<u8> {
    let mut m = msg(0x03);
    m.push(state);
    m.extend_from_slice(text.as_bytes());
    m
}

pub fn disconnected(reason: &str) -> Vec<u8> {
    let mut m = msg(0x04);
    m.extend_from_slice(reason.as_bytes());
    m
}

pub fn desktop_size(width: u16, height: u16) -> Vec<u8> {
    msg(0x05).u16(width).u16(height)
}

pub fn reset_graphics(width: u16, height: u16) -> Vec<u8> {
    msg(0x10).u16(width).u16(height)
}

/// `format`: 0 XRGB, 1 ARGB.
pub fn create_surface(surface: u16, width: u16, height: u16, format: u8) -> Vec<u8> {
    let mut m = msg(0x11).u16(surface).u16(width).u16(height);
    m.push(format);
    m
}

pub fn delete_surface(surface: u16) -> Vec<u8> {
    msg(0x12).u16(surface)
}

pub fn map_surface(surface: u16, x: u16, y: u16) -> Vec<u8> {
    msg(0x13).u16(surface).u16(x).u16(y)
}

pub fn start_frame(frame_id: u32) -> Vec<u8> {
    msg(0x14).u32(frame_id)
}

pub fn end_frame(frame_id: u32) -> Vec<u8> {
    msg(0x15).u32(frame_id)
}

pub fn avc420(surface: u16, dest: Rect, regions: &[Rect], access_unit: &[u8]) -> Vec<u8> {
    let mut m = msg(0x16).u16(surface).rect(dest).u16(regions.len() as u16);
    for r in regions {
        m = m.rect(*r);
    }
    m.extend_from_slice(access_unit);
    m
}

pub fn solid_fill(surface: u16, rgba: [u8; 4], rects: &[Rect]) -> Vec<u8> {
    let mut m = msg(0x17).u16(surface);
    m.extend_from_slice(&rgba);
    m = m.u16(rects.len() as u16);
    for r in rects {
        m = m.rect(*r);
    }
    m
}

pub fn surface_to_surface(src: u16, dst: u16, src_rect: Rect, points: &[(u16, u16)]) -> Vec<u8> {
    let mut m = msg(0x18)
        .u16(src)
        .u16(dst)
        .rect(src_rect)
        .u16(points.len() as u16);
    for (x, y) in points {
        m = m.u16(*x).u16(*y);
    }
    m
}

pub fn surface_to_cache(surface: u16, slot: u16, src_rect: Rect) -> Vec<u8> {
    msg(0x19).u16(surface).u16(slot).rect(src_rect)
}

pub fn cache_to_surface(slot: u16, surface: u16, points: &[(u16, u16)]) -> Vec<u8> {
    let mut m = msg(0x1a).u16(slot).u16(surface).u16(points.len() as u16);
    for (x, y) in points {
        m = m.u16(*x).u16(*y);
    }
    m
}

pub fn evict_cache_entry(slot: u16) -> Vec<u8> {
    msg(0x1b).u16(slot)
}

pub fn pointer_default() -> Vec<u8> {
    let mut m = msg(0x1c);
    m.push(0);
    m
}

pub fn pointer_hidden() -> Vec<u8> {
    let mut m = msg(0x1c);
    m.push(1);
    m
}

pub fn pointer_position(x: u16, y: u16) -> Vec<u8> {
    let mut m = msg(0x1c);
    m.push(2);
    m.u16(x).u16(y)
}

pub fn pointer_bitmap(width: u16, height: u16, hot: (u16, u16), rgba: &[u8]) -> Vec<u8> {
    let mut m = msg(0x1c);
    m.push(3);
    let mut m = m.u16(width).u16(height).u16(hot.0).u16(hot.1);
    m.extend_from_slice(rgba);
    m
}

/// Non-premultiplied RGBA, exactly `rect`'s pixels.
pub fn tile(surface: u16, rect: Rect, rgba: &[u8]) -> Vec<u8> {
    let mut m = msg(0x1d).u16(surface).rect(rect);
    m.extend_from_slice(rgba);
    m
}

/// New alpha for `rect`'s pixels, one byte each.
pub fn tile_alpha(surface: u16, rect: Rect, alpha: &[u8]) -> Vec<u8> {
    let mut m = msg(0x1e).u16(surface).rect(rect);
    m.extend_from_slice(alpha);
    m
}

/// `codec`: 1 Opus; `channels`: 1 or 2 (other values too, to test how a page copes).
pub fn audio_start(codec: u8, sample_rate: u32, channels: u8) -> Vec<u8> {
    let mut m = msg(0x20);
    m.push(codec);
    let mut m = m.u32(sample_rate);
    m.push(channels);
    m
}

/// One Opus packet; `dropped` is the gateway's running total of packets it dropped.
pub fn audio_packet(timestamp_us: u64, duration_us: u32, dropped: u32, data: &[u8]) -> Vec<u8> {
    let mut m = msg(0x21);
    m.extend_from_slice(&timestamp_us.to_le_bytes());
    let mut m = m.u32(duration_us).u32(dropped);
    m.extend_from_slice(data);
    m
}

pub fn audio_stop() -> Vec<u8> {
    msg(0x22)
}

/// A message from the page, decoded strictly: a wrong length is a test failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromPage {
    Ping {
        nonce: u64,
    },
    ClientHello {
        width: u16,
        height: u16,
        target: String,
    },
    TokenHello {
        width: u16,
        height: u16,
        token: String,
    },
    FrameDecoded {
        frame_id: u32,
        frames_decoded: u32,
        queue_depth: u16,
    },
    MouseMove {
        x: u16,
        y: u16,
    },
    MouseButton {
        button: u8,
        down: bool,
        x: u16,
        y: u16,
    },
    Wheel {
        axis: u8,
        delta: i16,
        x: u16,
        y: u16,
    },
    Key {
        scancode: u8,
        extended: bool,
        down: bool,
    },
    Unicode {
        code_unit: u16,
        down: bool,
    },
    Resize {
        width: u16,
        height: u16,
    },
    AudioBuffer {
        buffer_ms: u16,
    },
}

pub fn decode_from_page(m: &[u8]) -> FromPage {
    assert!(m.len() >= 2, "page sent {} bytes: {m:?}", m.len());
    assert_eq!(m[0], 1, "page sent protocol version {}", m[0]);
    let b = &m[2..];
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let len = |n: usize| assert_eq!(m.len(), n + 2, "type 0x{:02x}: {m:?}", m[1]);
    let flag = |v: u8| {
        assert!(v <= 1, "flag byte {v} in {m:?}");
        v == 1
    };
    match m[1] {
        0x81 => {
            len(8);
            FromPage::Ping {
                nonce: u64::from_le_bytes(b[..8].try_into().unwrap()),
            }
        }
        0x82 => {
            assert!(m.len() >= 6, "short ClientHello {m:?}");
            FromPage::ClientHello {
                width: u16_at(0),
                height: u16_at(2),
                target: String::from_utf8(b[4..].to_vec()).unwrap(),
            }
        }
        0x8b => {
            assert!(m.len() >= 7, "short TokenHello {m:?}");
            FromPage::TokenHello {
                width: u16_at(0),
                height: u16_at(2),
                token: String::from_utf8(b[4..].to_vec()).unwrap(),
            }
        }
        0x83 => {
            len(10);
            FromPage::FrameDecoded {
                frame_id: u32_at(0),
                frames_decoded: u32_at(4),
                queue_depth: u16_at(8),
            }
        }
        0x84 => {
            len(4);
            FromPage::MouseMove {
                x: u16_at(0),
                y: u16_at(2),
            }
        }
        0x85 => {
            len(6);
            FromPage::MouseButton {
                button: b[0],
                down: flag(b[1]),
                x: u16_at(2),
                y: u16_at(4),
            }
        }
        0x86 => {
            len(7);
            FromPage::Wheel {
                axis: b[0],
                delta: i16::from_le_bytes([b[1], b[2]]),
                x: u16_at(3),
                y: u16_at(5),
            }
        }
        0x87 => {
            len(3);
            FromPage::Key {
                scancode: b[0],
                extended: flag(b[1]),
                down: flag(b[2]),
            }
        }
        0x88 => {
            len(3);
            FromPage::Unicode {
                code_unit: u16_at(0),
                down: flag(b[2]),
            }
        }
        0x89 => {
            len(4);
            FromPage::Resize {
                width: u16_at(0),
                height: u16_at(2),
            }
        }
        0x8a => {
            len(2);
            let buffer_ms = u16_at(0);
            assert!(buffer_ms <= 10_000, "AudioBuffer of {buffer_ms} ms: {m:?}");
            FromPage::AudioBuffer { buffer_ms }
        }
        other => panic!("page sent unknown type 0x{other:02x}: {m:?}"),
    }
}

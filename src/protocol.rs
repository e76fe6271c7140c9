//! The browser protocol, version 1: one WebSocket binary message per protocol message,
//! `[version: u8][type: u8][payload]`, integers little-endian. Gateway→browser types are
//! 0x01–0x7f, browser→gateway types 0x80–0xff, so a message sent the wrong way is caught.
//! Specified message by message in `docs/protocol.md`; this codec is sans-IO.
//!
//! Outbound messages borrow what they carry (an H.264 access unit, a pointer image), so a frame
//! is written once, straight from where the RDP side left it.

use std::borrow::Cow;

use crate::rdp::egfx::{Point, Rect};
use crate::rdp::input::{MouseButton, WheelAxis};
use crate::rdp::InputEvent;
use crate::resume::{Ticket, TICKET_LEN};

pub const VERSION: u8 = 1;

/// Desktop sizes a page may ask for.
pub const MIN_DESKTOP: u16 = 200;
pub const MAX_DESKTOP: u16 = 8192;
/// Longest target name.
pub const MAX_TARGET_NAME: usize = 64;
/// Pointer coordinates a page may send: below the largest desktop. A coordinate beyond the
/// current desktop but below this is a page racing a resize, and the RDP server clips it.
pub const MAX_COORDINATE: u16 = MAX_DESKTOP - 1;
/// Longest connection token (`token::MAX_TOKEN`), refused before it is decoded.
pub const MAX_TOKEN: usize = crate::token::MAX_TOKEN;

/// Close code: the connection token was refused; the reason says why (expired, used, …).
pub const CLOSE_TOKEN_REFUSED: u16 = 4002;
/// Close code: the target policy does not allow the target; the reason says why.
pub const CLOSE_TARGET_REFUSED: u16 = 4003;
/// Close code for "this session cannot be resumed" (ended, grace period over, wrong ticket).
pub const CLOSE_RESUME_REFUSED: u16 = 4004;
/// Close code for "another connection resumed this session" (the old page's socket).
pub const CLOSE_RESUMED_ELSEWHERE: u16 = 4005;

pub mod types {
    pub const SERVER_HELLO: u8 = 0x01;
    pub const PONG: u8 = 0x02;
    pub const STATUS: u8 = 0x03;
    pub const DISCONNECTED: u8 = 0x04;
    pub const DESKTOP_SIZE: u8 = 0x05;
    pub const RESUME_TICKET: u8 = 0x06;
    pub const RESET_GRAPHICS: u8 = 0x10;
    pub const CREATE_SURFACE: u8 = 0x11;
    pub const DELETE_SURFACE: u8 = 0x12;
    pub const MAP_SURFACE: u8 = 0x13;
    pub const START_FRAME: u8 = 0x14;
    pub const END_FRAME: u8 = 0x15;
    pub const AVC420: u8 = 0x16;
    pub const SOLID_FILL: u8 = 0x17;
    pub const SURFACE_TO_SURFACE: u8 = 0x18;
    pub const SURFACE_TO_CACHE: u8 = 0x19;
    pub const CACHE_TO_SURFACE: u8 = 0x1a;
    pub const EVICT_CACHE: u8 = 0x1b;
    pub const POINTER: u8 = 0x1c;
    pub const TILE: u8 = 0x1d;
    pub const TILE_ALPHA: u8 = 0x1e;
    pub const AUDIO_START: u8 = 0x20;
    pub const AUDIO_PACKET: u8 = 0x21;
    pub const AUDIO_STOP: u8 = 0x22;
    pub const PING: u8 = 0x81;
    pub const CLIENT_HELLO: u8 = 0x82;
    pub const FRAME_DECODED: u8 = 0x83;
    pub const MOUSE_MOVE: u8 = 0x84;
    pub const MOUSE_BUTTON: u8 = 0x85;
    pub const WHEEL: u8 = 0x86;
    pub const KEY: u8 = 0x87;
    pub const UNICODE: u8 = 0x88;
    pub const RESIZE: u8 = 0x89;
    pub const AUDIO_BUFFER: u8 = 0x8a;
    pub const TOKEN_HELLO: u8 = 0x8b;
    pub const RESUME: u8 = 0x8c;
}

/// Audio codecs the page decodes; only Opus so far.
pub const AUDIO_CODEC_OPUS: u8 = 1;
/// The page's playback buffer depth it may report; more is out of range.
pub const MAX_AUDIO_BUFFER_MS: u16 = 10_000;

/// Session states shown on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Connecting = 0,
    Authenticating = 1,
    Connected = 2,
    Reconnecting = 3,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pointer<'a> {
    Default,
    Hidden,
    Position {
        x: u16,
        y: u16,
    },
    Bitmap {
        width: u16,
        height: u16,
        hot_x: u16,
        hot_y: u16,
        rgba: Cow<'a, [u8]>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToBrowser<'a> {
    ServerHello {
        session_id: u64,
        core: u16,
        max_message: u32,
    },
    Pong {
        nonce: u64,
    },
    Status {
        state: State,
        text: Cow<'a, str>,
    },
    Disconnected {
        reason: Cow<'a, str>,
    },
    DesktopSize {
        width: u16,
        height: u16,
    },
    /// The secret a page presents to resume this session from a new WebSocket.
    ResumeTicket {
        session_id: u64,
        grace_secs: u32,
        ticket: [u8; TICKET_LEN],
    },
    ResetGraphics {
        width: u16,
        height: u16,
    },
    CreateSurface {
        surface: u16,
        width: u16,
        height: u16,
        /// 0 XRGB, 1 ARGB.
        format: u8,
    },
    DeleteSurface {
        surface: u16,
    },
    MapSurfaceToOutput {
        surface: u16,
        x: u16,
        y: u16,
    },
    StartFrame {
        frame_id: u32,
    },
    EndFrame {
        frame_id: u32,
    },
    Avc420 {
        surface: u16,
        dest: Rect,
        regions: Cow<'a, [Rect]>,
        access_unit: Cow<'a, [u8]>,
    },
    SolidFill {
        surface: u16,
        color: [u8; 4],
        rects: Cow<'a, [Rect]>,
    },
    SurfaceToSurface {
        src: u16,
        dst: u16,
        src_rect: Rect,
        points: Cow<'a, [Point]>,
    },
    SurfaceToCache {
        surface: u16,
        slot: u16,
        src_rect: Rect,
    },
    CacheToSurface {
        slot: u16,
        surface: u16,
        points: Cow<'a, [Point]>,
    },
    EvictCacheEntry {
        slot: u16,
    },
    Pointer(Pointer<'a>),
    /// Pixels decoded by the gateway (codecs other than H.264): `rgba` is `width × height × 4`
    /// bytes of non-premultiplied RGBA, row by row, for `rect`.
    Tile {
        surface: u16,
        rect: Rect,
        rgba: Cow<'a, [u8]>,
    },
    /// New alpha for pixels already on the surface (the alpha codec): `alpha` is
    /// `width × height` bytes, row by row, for `rect`.
    TileAlpha {
        surface: u16,
        rect: Rect,
        alpha: Cow<'a, [u8]>,
    },
    /// A new audio stream: the page configures its decoder with these.
    AudioStart {
        codec: u8,
        sample_rate: u32,
        channels: u8,
    },
    /// One encoded packet (one Opus packet) of the current stream.
    AudioPacket {
        /// Stream position of the packet's first sample, in microseconds.
        timestamp_us: u64,
        duration_us: u32,
        /// Packets of this session the gateway has dropped so far (the page fell behind).
        dropped: u32,
        data: Cow<'a, [u8]>,
    },
    /// The server stopped its audio stream; the page plays out what it holds.
    AudioStop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromBrowser {
    /// Round-trip probe; the gateway answers `Pong` with the same nonce.
    Ping {
        nonce: u64,
    },
    /// The page's desktop size and the target it wants.
    ClientHello {
        width: u16,
        height: u16,
        target: String,
    },
    /// The page's desktop size and a connection token naming the target (instead of a
    /// ClientHello). The token is wiped when the message is dropped, and never printed.
    TokenHello {
        width: u16,
        height: u16,
        token: zeroize::Zeroizing<String>,
    },
    /// Every update of `frame_id` is on the page.
    FrameDecoded {
        frame_id: u32,
        frames_decoded: u32,
        queue_depth: u16,
    },
    Input(InputEvent),
    /// The page's window changed size.
    Resize {
        width: u16,
        height: u16,
    },
    /// Audio the page holds but has not played yet, so the server learns the real delay.
    AudioBuffer {
        buffer_ms: u16,
    },
    /// Take over session `session_id` (first message on `/ws?resume=ID`, instead of a hello).
    Resume {
        session_id: u64,
        ticket: Ticket,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("empty message")]
    Empty,
    #[error("protocol version {got} is not supported (this gateway speaks {VERSION})")]
    Version { got: u8 },
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    #[error("message type 0x{ty:02x} needs {need} bytes, got {got}")]
    Length { ty: u8, need: usize, got: usize },
    #[error("message type 0x{ty:02x}: {field} {why}")]
    Field {
        ty: u8,
        field: &'static str,
        why: String,
    },
    #[error("buffer of {have} bytes cannot hold a {need}-byte message")]
    NoRoom { need: usize, have: usize },
}

/// Appends little-endian fields; the one place outbound bytes are laid out.
struct Writer<'b> {
    buf: &'b mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.at..self.at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.at += bytes.len();
    }
    fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.put(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }
    fn rect(&mut self, r: &Rect) {
        for v in [r.left, r.top, r.right, r.bottom] {
            self.u16(v);
        }
    }
    fn rects(&mut self, rs: &[Rect]) {
        self.u16(u16::try_from(rs.len()).unwrap_or(u16::MAX));
        for r in rs.iter().take(usize::from(u16::MAX)) {
            self.rect(r);
        }
    }
    fn points(&mut self, ps: &[Point]) {
        self.u16(u16::try_from(ps.len()).unwrap_or(u16::MAX));
        for p in ps.iter().take(usize::from(u16::MAX)) {
            self.u16(p.x);
            self.u16(p.y);
        }
    }
}

impl ToBrowser<'_> {
    pub fn message_type(&self) -> u8 {
        use types::*;
        match self {
            ToBrowser::ServerHello { .. } => SERVER_HELLO,
            ToBrowser::Pong { .. } => PONG,
            ToBrowser::Status { .. } => STATUS,
            ToBrowser::Disconnected { .. } => DISCONNECTED,
            ToBrowser::DesktopSize { .. } => DESKTOP_SIZE,
            ToBrowser::ResumeTicket { .. } => RESUME_TICKET,
            ToBrowser::ResetGraphics { .. } => RESET_GRAPHICS,
            ToBrowser::CreateSurface { .. } => CREATE_SURFACE,
            ToBrowser::DeleteSurface { .. } => DELETE_SURFACE,
            ToBrowser::MapSurfaceToOutput { .. } => MAP_SURFACE,
            ToBrowser::StartFrame { .. } => START_FRAME,
            ToBrowser::EndFrame { .. } => END_FRAME,
            ToBrowser::Avc420 { .. } => AVC420,
            ToBrowser::SolidFill { .. } => SOLID_FILL,
            ToBrowser::SurfaceToSurface { .. } => SURFACE_TO_SURFACE,
            ToBrowser::SurfaceToCache { .. } => SURFACE_TO_CACHE,
            ToBrowser::CacheToSurface { .. } => CACHE_TO_SURFACE,
            ToBrowser::EvictCacheEntry { .. } => EVICT_CACHE,
            ToBrowser::Pointer(_) => POINTER,
            ToBrowser::Tile { .. } => TILE,
            ToBrowser::TileAlpha { .. } => TILE_ALPHA,
            ToBrowser::AudioStart { .. } => AUDIO_START,
            ToBrowser::AudioPacket { .. } => AUDIO_PACKET,
            ToBrowser::AudioStop => AUDIO_STOP,
        }
    }

    /// Lays the message out; with `buf` too small it only counts, so
    /// `write(&mut [])` is the encoded length.
    fn write(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer { buf, at: 0 };
        w.u8(VERSION);
        w.u8(self.message_type());
        match self {
            ToBrowser::ServerHello {
                session_id,
                core,
                max_message,
            } => {
                w.u64(*session_id);
                w.u16(*core);
                w.u32(*max_message);
            }
            ToBrowser::Pong { nonce } => w.u64(*nonce),
            ToBrowser::Status { state, text } => {
                w.u8(*state as u8);
                w.put(text.as_bytes());
            }
            ToBrowser::Disconnected { reason } => w.put(reason.as_bytes()),
            ToBrowser::ResumeTicket {
                session_id,
                grace_secs,
                ticket,
            } => {
                w.u64(*session_id);
                w.u32(*grace_secs);
                w.put(ticket);
            }
            ToBrowser::DesktopSize { width, height }
            | ToBrowser::ResetGraphics { width, height } => {
                w.u16(*width);
                w.u16(*height);
            }
            ToBrowser::CreateSurface {
                surface,
                width,
                height,
                format,
            } => {
                w.u16(*surface);
                w.u16(*width);
                w.u16(*height);
                w.u8(*format);
            }
            ToBrowser::DeleteSurface { surface } => w.u16(*surface),
            ToBrowser::MapSurfaceToOutput { surface, x, y } => {
                w.u16(*surface);
                w.u16(*x);
                w.u16(*y);
            }
            ToBrowser::StartFrame { frame_id } | ToBrowser::EndFrame { frame_id } => {
                w.u32(*frame_id)
            }
            ToBrowser::Avc420 {
                surface,
                dest,
                regions,
                access_unit,
            } => {
                w.u16(*surface);
                w.rect(dest);
                w.rects(regions);
                w.put(access_unit);
            }
            ToBrowser::SolidFill {
                surface,
                color,
                rects,
            } => {
                w.u16(*surface);
                w.put(color);
                w.rects(rects);
            }
            ToBrowser::SurfaceToSurface {
                src,
                dst,
                src_rect,
                points,
            } => {
                w.u16(*src);
                w.u16(*dst);
                w.rect(src_rect);
                w.points(points);
            }
            ToBrowser::SurfaceToCache {
                surface,
                slot,
                src_rect,
            } => {
                w.u16(*surface);
                w.u16(*slot);
                w.rect(src_rect);
            }
            ToBrowser::CacheToSurface {
                slot,
                surface,
                points,
            } => {
                w.u16(*slot);
                w.u16(*surface);
                w.points(points);
            }
            ToBrowser::EvictCacheEntry { slot } => w.u16(*slot),
            ToBrowser::Pointer(p) => match p {
                Pointer::Default => w.u8(0),
                Pointer::Hidden => w.u8(1),
                Pointer::Position { x, y } => {
                    w.u8(2);
                    w.u16(*x);
                    w.u16(*y);
                }
                Pointer::Bitmap {
                    width,
                    height,
                    hot_x,
                    hot_y,
                    rgba,
                } => {
                    w.u8(3);
                    for v in [*width, *height, *hot_x, *hot_y] {
                        w.u16(v);
                    }
                    w.put(rgba);
                }
            },
            ToBrowser::Tile {
                surface,
                rect,
                rgba: pixels,
            }
            | ToBrowser::TileAlpha {
                surface,
                rect,
                alpha: pixels,
            } => {
                w.u16(*surface);
                w.rect(rect);
                w.put(pixels);
            }
            ToBrowser::AudioStart {
                codec,
                sample_rate,
                channels,
            } => {
                w.u8(*codec);
                w.u32(*sample_rate);
                w.u8(*channels);
            }
            ToBrowser::AudioPacket {
                timestamp_us,
                duration_us,
                dropped,
                data,
            } => {
                w.u64(*timestamp_us);
                w.u32(*duration_us);
                w.u32(*dropped);
                w.put(data);
            }
            ToBrowser::AudioStop => {}
        }
        w.at
    }

    pub fn encoded_len(&self) -> usize {
        self.write(&mut [])
    }

    /// Writes into `buf` (a pool slot) and returns the length used.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, ProtocolError> {
        let need = self.encoded_len();
        if buf.len() < need {
            return Err(ProtocolError::NoRoom {
                need,
                have: buf.len(),
            });
        }
        Ok(self.write(buf))
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.encoded_len()];
        self.write(&mut v);
        v
    }

    /// Decodes what the gateway sends; the web client is the real reader, this one serves
    /// round-trip tests and test clients.
    pub fn decode(msg: &[u8]) -> Result<ToBrowser<'_>, ProtocolError> {
        use types::*;
        let (ty, body) = header(msg)?;
        let mut r = Reader { ty, body, at: 0 };
        let m = match ty {
            SERVER_HELLO => ToBrowser::ServerHello {
                session_id: r.u64()?,
                core: r.u16()?,
                max_message: r.u32()?,
            },
            PONG => ToBrowser::Pong { nonce: r.u64()? },
            STATUS => ToBrowser::Status {
                state: match r.u8()? {
                    0 => State::Connecting,
                    1 => State::Authenticating,
                    2 => State::Connected,
                    3 => State::Reconnecting,
                    v => return Err(r.field("state", format!("{v} is not a state"))),
                },
                text: Cow::Borrowed(r.text("text")?),
            },
            DISCONNECTED => ToBrowser::Disconnected {
                reason: Cow::Borrowed(r.text("reason")?),
            },
            DESKTOP_SIZE => ToBrowser::DesktopSize {
                width: r.u16()?,
                height: r.u16()?,
            },
            RESUME_TICKET => ToBrowser::ResumeTicket {
                session_id: r.u64()?,
                grace_secs: r.u32()?,
                ticket: r.ticket()?,
            },
            RESET_GRAPHICS => ToBrowser::ResetGraphics {
                width: r.u16()?,
                height: r.u16()?,
            },
            CREATE_SURFACE => ToBrowser::CreateSurface {
                surface: r.u16()?,
                width: r.u16()?,
                height: r.u16()?,
                format: r.u8()?,
            },
            DELETE_SURFACE => ToBrowser::DeleteSurface { surface: r.u16()? },
            MAP_SURFACE => ToBrowser::MapSurfaceToOutput {
                surface: r.u16()?,
                x: r.u16()?,
                y: r.u16()?,
            },
            START_FRAME => ToBrowser::StartFrame { frame_id: r.u32()? },
            END_FRAME => ToBrowser::EndFrame { frame_id: r.u32()? },
            AVC420 => ToBrowser::Avc420 {
                surface: r.u16()?,
                dest: r.rect()?,
                regions: Cow::Owned(r.rects()?),
                access_unit: Cow::Borrowed(r.rest()),
            },
            SOLID_FILL => ToBrowser::SolidFill {
                surface: r.u16()?,
                color: r.array()?,
                rects: Cow::Owned(r.rects()?),
            },
            SURFACE_TO_SURFACE => ToBrowser::SurfaceToSurface {
                src: r.u16()?,
                dst: r.u16()?,
                src_rect: r.rect()?,
                points: Cow::Owned(r.points()?),
            },
            SURFACE_TO_CACHE => ToBrowser::SurfaceToCache {
                surface: r.u16()?,
                slot: r.u16()?,
                src_rect: r.rect()?,
            },
            CACHE_TO_SURFACE => ToBrowser::CacheToSurface {
                slot: r.u16()?,
                surface: r.u16()?,
                points: Cow::Owned(r.points()?),
            },
            EVICT_CACHE => ToBrowser::EvictCacheEntry { slot: r.u16()? },
            POINTER => ToBrowser::Pointer(match r.u8()? {
                0 => Pointer::Default,
                1 => Pointer::Hidden,
                2 => Pointer::Position {
                    x: r.u16()?,
                    y: r.u16()?,
                },
                3 => Pointer::Bitmap {
                    width: r.u16()?,
                    height: r.u16()?,
                    hot_x: r.u16()?,
                    hot_y: r.u16()?,
                    rgba: Cow::Borrowed(r.rest()),
                },
                v => return Err(r.field("kind", format!("{v} is not a pointer kind"))),
            }),
            TILE => {
                let surface = r.u16()?;
                let rect = r.rect()?;
                ToBrowser::Tile {
                    surface,
                    rect,
                    rgba: Cow::Borrowed(r.pixels(&rect, 4, "rgba")?),
                }
            }
            TILE_ALPHA => {
                let surface = r.u16()?;
                let rect = r.rect()?;
                ToBrowser::TileAlpha {
                    surface,
                    rect,
                    alpha: Cow::Borrowed(r.pixels(&rect, 1, "alpha")?),
                }
            }
            AUDIO_START => ToBrowser::AudioStart {
                codec: r.u8()?,
                sample_rate: r.u32()?,
                channels: r.u8()?,
            },
            AUDIO_PACKET => ToBrowser::AudioPacket {
                timestamp_us: r.u64()?,
                duration_us: r.u32()?,
                dropped: r.u32()?,
                data: Cow::Borrowed(r.rest()),
            },
            AUDIO_STOP => ToBrowser::AudioStop,
            other => return Err(ProtocolError::UnknownType(other)),
        };
        r.end()?;
        Ok(m)
    }
}

impl FromBrowser {
    /// The message's name as `docs/protocol.md` spells it, for close reasons.
    pub fn name(&self) -> &'static str {
        match self {
            FromBrowser::Ping { .. } => "Ping",
            FromBrowser::ClientHello { .. } => "ClientHello",
            FromBrowser::TokenHello { .. } => "TokenHello",
            FromBrowser::FrameDecoded { .. } => "FrameDecoded",
            FromBrowser::Input(InputEvent::MouseMove { .. }) => "MouseMove",
            FromBrowser::Input(InputEvent::MouseButton { .. }) => "MouseButton",
            FromBrowser::Input(InputEvent::Wheel { .. }) => "Wheel",
            FromBrowser::Input(InputEvent::Key { .. }) => "Key",
            FromBrowser::Input(InputEvent::Unicode { .. }) => "Unicode",
            FromBrowser::Resize { .. } => "Resize",
            FromBrowser::AudioBuffer { .. } => "AudioBuffer",
            FromBrowser::Resume { .. } => "Resume",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        use types::*;
        let mut v = vec![VERSION];
        let u16s = |v: &mut Vec<u8>, xs: &[u16]| {
            for x in xs {
                v.extend_from_slice(&x.to_le_bytes());
            }
        };
        match self {
            FromBrowser::Ping { nonce } => {
                v.push(PING);
                v.extend_from_slice(&nonce.to_le_bytes());
            }
            FromBrowser::ClientHello {
                width,
                height,
                target,
            } => {
                v.push(CLIENT_HELLO);
                u16s(&mut v, &[*width, *height]);
                v.extend_from_slice(target.as_bytes());
            }
            FromBrowser::TokenHello {
                width,
                height,
                token,
            } => {
                v.push(TOKEN_HELLO);
                u16s(&mut v, &[*width, *height]);
                v.extend_from_slice(token.as_bytes());
            }
            FromBrowser::FrameDecoded {
                frame_id,
                frames_decoded,
                queue_depth,
            } => {
                v.push(FRAME_DECODED);
                v.extend_from_slice(&frame_id.to_le_bytes());
                v.extend_from_slice(&frames_decoded.to_le_bytes());
                v.extend_from_slice(&queue_depth.to_le_bytes());
            }
            FromBrowser::Resize { width, height } => {
                v.push(RESIZE);
                u16s(&mut v, &[*width, *height]);
            }
            FromBrowser::AudioBuffer { buffer_ms } => {
                v.push(AUDIO_BUFFER);
                u16s(&mut v, &[*buffer_ms]);
            }
            FromBrowser::Resume { session_id, ticket } => {
                v.push(RESUME);
                v.extend_from_slice(&session_id.to_le_bytes());
                v.extend_from_slice(ticket.as_bytes());
            }
            FromBrowser::Input(e) => match *e {
                InputEvent::MouseMove { x, y } => {
                    v.push(MOUSE_MOVE);
                    u16s(&mut v, &[x, y]);
                }
                InputEvent::MouseButton { button, down, x, y } => {
                    v.push(MOUSE_BUTTON);
                    v.push(button_code(button));
                    v.push(u8::from(down));
                    u16s(&mut v, &[x, y]);
                }
                InputEvent::Wheel { axis, delta, x, y } => {
                    v.push(WHEEL);
                    v.push(u8::from(axis == WheelAxis::Horizontal));
                    let d =
                        i16::try_from(delta.clamp(i16::MIN.into(), i16::MAX.into())).unwrap_or(0);
                    v.extend_from_slice(&d.to_le_bytes());
                    u16s(&mut v, &[x, y]);
                }
                InputEvent::Key {
                    scancode,
                    extended,
                    down,
                } => {
                    v.push(KEY);
                    v.extend_from_slice(&[scancode, u8::from(extended), u8::from(down)]);
                }
                InputEvent::Unicode { code_unit, down } => {
                    v.push(UNICODE);
                    v.extend_from_slice(&code_unit.to_le_bytes());
                    v.push(u8::from(down));
                }
            },
        }
        v
    }

    pub fn decode(msg: &[u8]) -> Result<FromBrowser, ProtocolError> {
        use types::*;
        let (ty, body) = header(msg)?;
        let mut r = Reader { ty, body, at: 0 };
        let m = match ty {
            PING => FromBrowser::Ping { nonce: r.u64()? },
            CLIENT_HELLO => {
                let width = r.desktop_dim("width")?;
                let height = r.desktop_dim("height")?;
                let target = r.text("target")?;
                if target.len() > MAX_TARGET_NAME {
                    return Err(r.field(
                        "target",
                        format!("is {} bytes, longer than {MAX_TARGET_NAME}", target.len()),
                    ));
                }
                FromBrowser::ClientHello {
                    width,
                    height,
                    target: target.to_owned(),
                }
            }
            TOKEN_HELLO => {
                let width = r.desktop_dim("width")?;
                let height = r.desktop_dim("height")?;
                let token = r.rest();
                if token.len() > MAX_TOKEN {
                    return Err(r.field(
                        "token",
                        format!("is {} bytes, longer than {MAX_TOKEN}", token.len()),
                    ));
                }
                if token.is_empty() || !token.is_ascii() {
                    return Err(r.field("token", "must be 1 or more ASCII characters".into()));
                }
                FromBrowser::TokenHello {
                    width,
                    height,
                    token: zeroize::Zeroizing::new(String::from_utf8_lossy(token).into_owned()),
                }
            }
            RESUME => FromBrowser::Resume {
                session_id: r.u64()?,
                ticket: Ticket::from_bytes(r.ticket()?),
            },
            FRAME_DECODED => FromBrowser::FrameDecoded {
                frame_id: r.u32()?,
                frames_decoded: r.u32()?,
                queue_depth: r.u16()?,
            },
            MOUSE_MOVE => FromBrowser::Input(InputEvent::MouseMove {
                x: r.coordinate("x")?,
                y: r.coordinate("y")?,
            }),
            MOUSE_BUTTON => FromBrowser::Input(InputEvent::MouseButton {
                button: match r.u8()? {
                    0 => MouseButton::Left,
                    1 => MouseButton::Right,
                    2 => MouseButton::Middle,
                    3 => MouseButton::X1,
                    4 => MouseButton::X2,
                    v => return Err(r.field("button", format!("{v} is not 0–4"))),
                },
                down: r.flag("down")?,
                x: r.coordinate("x")?,
                y: r.coordinate("y")?,
            }),
            WHEEL => FromBrowser::Input(InputEvent::Wheel {
                axis: match r.u8()? {
                    0 => WheelAxis::Vertical,
                    1 => WheelAxis::Horizontal,
                    v => return Err(r.field("axis", format!("{v} is not 0 or 1"))),
                },
                delta: i32::from(i16::from_le_bytes(r.array()?)),
                x: r.coordinate("x")?,
                y: r.coordinate("y")?,
            }),
            KEY => FromBrowser::Input(InputEvent::Key {
                scancode: r.u8()?,
                extended: r.flag("extended")?,
                down: r.flag("down")?,
            }),
            UNICODE => FromBrowser::Input(InputEvent::Unicode {
                code_unit: r.u16()?,
                down: r.flag("down")?,
            }),
            RESIZE => FromBrowser::Resize {
                width: r.desktop_dim("width")?,
                height: r.desktop_dim("height")?,
            },
            AUDIO_BUFFER => {
                let buffer_ms = r.u16()?;
                if buffer_ms > MAX_AUDIO_BUFFER_MS {
                    return Err(r.field(
                        "buffer_ms",
                        format!("{buffer_ms} is above {MAX_AUDIO_BUFFER_MS}"),
                    ));
                }
                FromBrowser::AudioBuffer { buffer_ms }
            }
            other => return Err(ProtocolError::UnknownType(other)),
        };
        r.end()?;
        Ok(m)
    }
}

fn button_code(b: MouseButton) -> u8 {
    match b {
        MouseButton::Left => 0,
        MouseButton::Right => 1,
        MouseButton::Middle => 2,
        MouseButton::X1 => 3,
        MouseButton::X2 => 4,
    }
}

fn header(msg: &[u8]) -> Result<(u8, &[u8]), ProtocolError> {
    match msg {
        [] => Err(ProtocolError::Empty),
        [v, ..] if *v != VERSION => Err(ProtocolError::Version { got: *v }),
        [_] => Err(ProtocolError::Length {
            ty: 0,
            need: 2,
            got: 1,
        }),
        [_, ty, body @ ..] => Ok((*ty, body)),
    }
}

/// Reads fixed fields in order; every shortfall or leftover is a `Length` error naming the
/// message type.
struct Reader<'a> {
    ty: u8,
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        let s = self
            .body
            .get(self.at..self.at + n)
            .ok_or(ProtocolError::Length {
                ty: self.ty,
                need: 2 + self.at + n,
                got: 2 + self.body.len(),
            })?;
        self.at += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn rect(&mut self) -> Result<Rect, ProtocolError> {
        Ok(Rect {
            left: self.u16()?,
            top: self.u16()?,
            right: self.u16()?,
            bottom: self.u16()?,
        })
    }
    fn rects(&mut self) -> Result<Vec<Rect>, ProtocolError> {
        let n = self.u16()?;
        (0..n).map(|_| self.rect()).collect()
    }
    fn points(&mut self) -> Result<Vec<Point>, ProtocolError> {
        let n = self.u16()?;
        (0..n)
            .map(|_| {
                Ok(Point {
                    x: self.u16()?,
                    y: self.u16()?,
                })
            })
            .collect()
    }
    fn ticket(&mut self) -> Result<[u8; TICKET_LEN], ProtocolError> {
        let mut t = [0u8; TICKET_LEN];
        t.copy_from_slice(self.take(TICKET_LEN)?);
        Ok(t)
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = self.body.get(self.at..).unwrap_or(&[]);
        self.at = self.body.len();
        s
    }
    /// The rest of the message as pixels of `rect`, `bpp` bytes each: exactly that many bytes.
    fn pixels(
        &mut self,
        rect: &Rect,
        bpp: usize,
        field: &'static str,
    ) -> Result<&'a [u8], ProtocolError> {
        let (Some(w), Some(h)) = (
            rect.right.checked_sub(rect.left),
            rect.bottom.checked_sub(rect.top),
        ) else {
            return Err(self.field(
                "rect",
                format!(
                    "({}, {})–({}, {}) ends before it starts",
                    rect.left, rect.top, rect.right, rect.bottom
                ),
            ));
        };
        let need = usize::from(w) * usize::from(h) * bpp;
        let bytes = self.rest();
        if bytes.len() != need {
            return Err(self.field(
                field,
                format!("is {} bytes, a {w}×{h} tile needs {need}", bytes.len()),
            ));
        }
        Ok(bytes)
    }
    fn text(&mut self, field: &'static str) -> Result<&'a str, ProtocolError> {
        let bytes = self.rest();
        std::str::from_utf8(bytes).map_err(|_| self.field(field, "is not UTF-8".to_owned()))
    }
    fn flag(&mut self, field: &'static str) -> Result<bool, ProtocolError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.field(field, format!("{v} is not 0 or 1"))),
        }
    }
    fn desktop_dim(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        let v = self.u16()?;
        if !(MIN_DESKTOP..=MAX_DESKTOP).contains(&v) {
            return Err(self.field(field, format!("{v} is outside {MIN_DESKTOP}–{MAX_DESKTOP}")));
        }
        Ok(v)
    }
    fn coordinate(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        let v = self.u16()?;
        if v > MAX_COORDINATE {
            return Err(self.field(field, format!("{v} is outside 0–{MAX_COORDINATE}")));
        }
        Ok(v)
    }
    fn field(&self, field: &'static str, why: String) -> ProtocolError {
        ProtocolError::Field {
            ty: self.ty,
            field,
            why,
        }
    }
    fn end(&self) -> Result<(), ProtocolError> {
        if self.at == self.body.len() {
            Ok(())
        } else {
            Err(ProtocolError::Length {
                ty: self.ty,
                need: 2 + self.at,
                got: 2 + self.body.len(),
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rect(l: u16, t: u16, r: u16, b: u16) -> Rect {
        Rect {
            left: l,
            top: t,
            right: r,
            bottom: b,
        }
    }

    #[test]
    fn every_gateway_message_round_trips() {
        let rs = vec![rect(0, 0, 64, 64), rect(10, 20, 30, 40)];
        let ps = vec![Point { x: 1, y: 2 }, Point { x: 3, y: 4 }];
        let msgs = vec![
            ToBrowser::ServerHello {
                session_id: u64::MAX,
                core: 3,
                max_message: 65536,
            },
            ToBrowser::Pong { nonce: 42 },
            ToBrowser::Status {
                state: State::Authenticating,
                text: "authenticating as bob".into(),
            },
            ToBrowser::Disconnected {
                reason: "the server ended the session".into(),
            },
            ToBrowser::DesktopSize {
                width: 1920,
                height: 1080,
            },
            ToBrowser::ResumeTicket {
                session_id: (1 << 48) | 3,
                grace_secs: 30,
                ticket: [7; TICKET_LEN],
            },
            ToBrowser::ResetGraphics {
                width: 1920,
                height: 1080,
            },
            ToBrowser::CreateSurface {
                surface: 1,
                width: 1920,
                height: 1080,
                format: 0,
            },
            ToBrowser::DeleteSurface { surface: 1 },
            ToBrowser::MapSurfaceToOutput {
                surface: 1,
                x: 0,
                y: 0,
            },
            ToBrowser::StartFrame { frame_id: 7 },
            ToBrowser::EndFrame { frame_id: 7 },
            ToBrowser::Avc420 {
                surface: 1,
                dest: rect(0, 0, 1920, 1088),
                regions: rs.clone().into(),
                access_unit: (&[0u8, 0, 0, 1, 0x67, 0x64][..]).into(),
            },
            ToBrowser::SolidFill {
                surface: 1,
                color: [255, 0, 0, 255],
                rects: rs.clone().into(),
            },
            ToBrowser::SurfaceToSurface {
                src: 1,
                dst: 2,
                src_rect: rect(0, 0, 8, 8),
                points: ps.clone().into(),
            },
            ToBrowser::SurfaceToCache {
                surface: 1,
                slot: 5,
                src_rect: rect(0, 0, 8, 8),
            },
            ToBrowser::CacheToSurface {
                slot: 5,
                surface: 1,
                points: ps.into(),
            },
            ToBrowser::EvictCacheEntry { slot: 5 },
            ToBrowser::Pointer(Pointer::Hidden),
            ToBrowser::Pointer(Pointer::Position { x: 5, y: 6 }),
            ToBrowser::Pointer(Pointer::Bitmap {
                width: 1,
                height: 1,
                hot_x: 0,
                hot_y: 0,
                rgba: (&[1u8, 2, 3, 4][..]).into(),
            }),
            ToBrowser::Tile {
                surface: 2,
                rect: rect(64, 63, 66, 66),
                rgba: (0..24u8).collect::<Vec<_>>().into(),
            },
            ToBrowser::TileAlpha {
                surface: 2,
                rect: rect(0, 0, 3, 2),
                alpha: (&[0u8, 50, 100, 150, 200, 250][..]).into(),
            },
        ];
        for m in msgs {
            let v = m.to_vec();
            assert_eq!(v.len(), m.encoded_len());
            assert_eq!(ToBrowser::decode(&v).unwrap(), m, "{m:?}");
            let mut small = [0u8; 2];
            assert!(matches!(
                m.encode(&mut small),
                Err(ProtocolError::NoRoom { .. })
            ));
        }
    }

    #[test]
    fn every_browser_message_round_trips() {
        let msgs = vec![
            FromBrowser::Ping { nonce: 7 },
            FromBrowser::ClientHello {
                width: 1280,
                height: 720,
                target: "office".into(),
            },
            FromBrowser::TokenHello {
                width: 1280,
                height: 720,
                token: zeroize::Zeroizing::new("AQE-_x".into()),
            },
            FromBrowser::FrameDecoded {
                frame_id: 9,
                frames_decoded: 100,
                queue_depth: 1,
            },
            FromBrowser::Input(InputEvent::MouseMove { x: 1, y: 2 }),
            FromBrowser::Input(InputEvent::MouseButton {
                button: MouseButton::X2,
                down: true,
                x: 3,
                y: 4,
            }),
            FromBrowser::Input(InputEvent::Wheel {
                axis: WheelAxis::Horizontal,
                delta: -240,
                x: 5,
                y: 6,
            }),
            FromBrowser::Input(InputEvent::Key {
                scancode: 0x1c,
                extended: true,
                down: false,
            }),
            FromBrowser::Input(InputEvent::Unicode {
                code_unit: 0x20ac,
                down: true,
            }),
            FromBrowser::Resize {
                width: 1600,
                height: 900,
            },
            FromBrowser::Resume {
                session_id: 5,
                ticket: Ticket::from_bytes([9; TICKET_LEN]),
            },
        ];
        for m in msgs {
            assert_eq!(FromBrowser::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn malformed_inputs() {
        use types::*;
        assert_eq!(FromBrowser::decode(&[]), Err(ProtocolError::Empty));
        assert_eq!(
            FromBrowser::decode(&[9, PING]),
            Err(ProtocolError::Version { got: 9 })
        );
        assert!(matches!(
            FromBrowser::decode(&[1]),
            Err(ProtocolError::Length { .. })
        ));
        assert_eq!(
            FromBrowser::decode(&[1, 0x99]),
            Err(ProtocolError::UnknownType(0x99))
        );
        // A gateway→browser type sent by the browser is unknown to the browser decoder.
        assert_eq!(
            FromBrowser::decode(&[1, PONG, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtocolError::UnknownType(PONG))
        );
        assert_eq!(
            FromBrowser::decode(&[1, PING, 1, 2, 3]),
            Err(ProtocolError::Length {
                ty: PING,
                need: 10,
                got: 5
            })
        );
        assert!(matches!(
            FromBrowser::decode(&[1, PING, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtocolError::Length { .. })
        ));
        let e = FromBrowser::decode(&[1, MOUSE_BUTTON, 9, 1, 0, 0, 0, 0]).unwrap_err();
        assert!(e.to_string().contains("button 9 is not 0–4"), "{e}");
        let e = FromBrowser::decode(&[1, KEY, 0x1e, 0, 2]).unwrap_err();
        assert!(e.to_string().contains("down 2 is not 0 or 1"), "{e}");
        let mut hello = vec![1, CLIENT_HELLO];
        hello.extend_from_slice(&50u16.to_le_bytes());
        hello.extend_from_slice(&720u16.to_le_bytes());
        let e = FromBrowser::decode(&hello).unwrap_err();
        assert!(
            e.to_string().contains("width 50 is outside 200–8192"),
            "{e}"
        );
        let mut hello = vec![1, CLIENT_HELLO, 0, 4, 0, 4];
        hello.extend_from_slice(&[0xff, 0xfe]);
        let e = FromBrowser::decode(&hello).unwrap_err();
        assert!(e.to_string().contains("target is not UTF-8"), "{e}");
        let mut hello = vec![1, CLIENT_HELLO, 0, 4, 0, 4];
        hello.extend(std::iter::repeat_n(b'a', 65));
        assert!(FromBrowser::decode(&hello).is_err());
    }

    /// Every browser message: one byte short or one byte long is a length error naming its
    /// type; every range rule names the field and the range.
    #[test]
    fn every_browser_message_refuses_truncation_extra_bytes_and_out_of_range_fields() {
        use types::*;
        let fixed = [
            FromBrowser::Ping { nonce: 1 },
            FromBrowser::FrameDecoded {
                frame_id: 1,
                frames_decoded: 1,
                queue_depth: 0,
            },
            FromBrowser::Input(InputEvent::MouseMove { x: 1, y: 2 }),
            FromBrowser::Input(InputEvent::MouseButton {
                button: MouseButton::Left,
                down: true,
                x: 1,
                y: 2,
            }),
            FromBrowser::Input(InputEvent::Wheel {
                axis: WheelAxis::Vertical,
                delta: 120,
                x: 1,
                y: 2,
            }),
            FromBrowser::Input(InputEvent::Key {
                scancode: 0x1e,
                extended: false,
                down: true,
            }),
            FromBrowser::Input(InputEvent::Unicode {
                code_unit: 0x41,
                down: true,
            }),
            FromBrowser::Resize {
                width: 800,
                height: 600,
            },
            FromBrowser::AudioBuffer { buffer_ms: 100 },
        ];
        for m in fixed {
            let good = m.encode();
            let ty = good[1];
            let short = &good[..good.len() - 1];
            let e = FromBrowser::decode(short).unwrap_err();
            assert!(
                matches!(e, ProtocolError::Length { ty: t, .. } if t == ty),
                "{} cut short: {e}",
                m.name()
            );
            let mut long = good.clone();
            long.push(0);
            let e = FromBrowser::decode(&long).unwrap_err();
            assert!(
                matches!(e, ProtocolError::Length { ty: t, .. } if t == ty),
                "{} with a byte more: {e}",
                m.name()
            );
        }
        // Hellos have no fixed length, but their sizes are fixed.
        for ty in [CLIENT_HELLO, TOKEN_HELLO] {
            let e = FromBrowser::decode(&[1, ty, 0, 4, 0]).unwrap_err();
            assert!(matches!(e, ProtocolError::Length { .. }), "{e}");
        }
        let out_of_range: &[(&[u8], &str)] = &[
            (&[1, RESIZE, 0, 0, 0, 0], "width 0 is outside 200–8192"),
            (
                &[1, RESIZE, 0xff, 0xff, 0xff, 0xff],
                "width 65535 is outside 200–8192",
            ),
            (
                &[1, RESIZE, 0, 4, 0x01, 0x20],
                "height 8193 is outside 200–8192",
            ),
            (
                &[1, CLIENT_HELLO, 0, 0, 0, 0],
                "width 0 is outside 200–8192",
            ),
            (
                &[1, TOKEN_HELLO, 0, 4, 0xff, 0xff, b'a'],
                "height 65535 is outside",
            ),
            (
                &[1, MOUSE_MOVE, 0xff, 0xff, 0, 0],
                "x 65535 is outside 0–8191",
            ),
            (
                &[1, MOUSE_MOVE, 0, 0, 0x00, 0x20],
                "y 8192 is outside 0–8191",
            ),
            (
                &[1, MOUSE_BUTTON, 0, 1, 0, 0, 0xff, 0xff],
                "y 65535 is outside",
            ),
            (&[1, MOUSE_BUTTON, 5, 1, 0, 0, 0, 0], "button 5 is not 0–4"),
            (&[1, MOUSE_BUTTON, 0, 7, 0, 0, 0, 0], "down 7 is not 0 or 1"),
            (&[1, WHEEL, 2, 0, 0, 0, 0, 0, 0], "axis 2 is not 0 or 1"),
            (&[1, WHEEL, 0, 0, 0, 0xff, 0xff, 0, 0], "x 65535 is outside"),
            (&[1, KEY, 0x1e, 2, 1], "extended 2 is not 0 or 1"),
            (&[1, UNICODE, 0x41, 0, 9], "down 9 is not 0 or 1"),
            (
                &[1, AUDIO_BUFFER, 0x11, 0x27],
                "buffer_ms 10001 is above 10000",
            ),
        ];
        for (bytes, words) in out_of_range {
            let e = FromBrowser::decode(bytes).unwrap_err();
            assert!(e.to_string().contains(words), "{bytes:?}: {e}");
        }
        // Every type byte outside the browser's set is unknown, including the gateway's own.
        for ty in (0..=0xffu8).filter(|t| !(PING..=RESUME).contains(t)) {
            assert_eq!(
                FromBrowser::decode(&[1, ty]),
                Err(ProtocolError::UnknownType(ty))
            );
        }
    }

    #[test]
    fn tokens_are_bounded_and_never_printed() {
        use types::TOKEN_HELLO;
        let mut hello = vec![1, TOKEN_HELLO, 0, 4, 0, 4];
        hello.extend(std::iter::repeat_n(b'a', MAX_TOKEN + 1));
        let e = FromBrowser::decode(&hello).unwrap_err();
        assert!(
            e.to_string()
                .contains("token is 4097 bytes, longer than 4096"),
            "{e}"
        );
        let e = FromBrowser::decode(&[1, TOKEN_HELLO, 0, 4, 0, 4]).unwrap_err();
        assert!(e.to_string().contains("token must be"), "{e}");
        hello.truncate(6 + MAX_TOKEN);
        let m = FromBrowser::decode(&hello).unwrap();
        assert!(!format!("{m:?}").contains("aaaa"), "{m:?}");
    }

    #[test]
    fn tile_layout_and_length_checks() {
        use types::*;
        let full = ToBrowser::Tile {
            surface: 1,
            rect: rect(0, 0, 64, 63),
            rgba: vec![7u8; 64 * 63 * 4].into(),
        };
        let bytes = full.to_vec();
        // A full tile and its 12-byte header fit one 16 KiB frame chunk.
        assert_eq!(bytes.len(), 12 + 16_128);
        assert!(full.encode(&mut [0u8; 16 << 10]).is_ok());
        assert_eq!(&bytes[..12], &[1, TILE, 1, 0, 0, 0, 0, 0, 64, 0, 63, 0]);

        let mut short = bytes.clone();
        short.pop();
        let e = ToBrowser::decode(&short).unwrap_err();
        assert_eq!(
            e.to_string(),
            "message type 0x1d: rgba is 16127 bytes, a 64×63 tile needs 16128"
        );
        let mut long = bytes;
        long.push(0);
        assert!(ToBrowser::decode(&long).is_err());

        let alpha = ToBrowser::TileAlpha {
            surface: 1,
            rect: rect(10, 10, 12, 11),
            alpha: (&[1u8, 2][..]).into(),
        };
        let mut v = alpha.to_vec();
        assert_eq!(v.len(), 14);
        v.push(3);
        let e = ToBrowser::decode(&v).unwrap_err();
        assert!(
            e.to_string()
                .contains("alpha is 3 bytes, a 2×1 tile needs 2"),
            "{e}"
        );

        // An inverted rectangle.
        let mut v = vec![1, TILE, 0, 0];
        for c in [5u16, 0, 4, 1] {
            v.extend_from_slice(&c.to_le_bytes());
        }
        let e = ToBrowser::decode(&v).unwrap_err();
        assert!(
            e.to_string()
                .contains("rect (5, 0)–(4, 1) ends before it starts"),
            "{e}"
        );
        // A header cut short.
        assert!(matches!(
            ToBrowser::decode(&[1, TILE_ALPHA, 0, 0, 1]),
            Err(ProtocolError::Length { .. })
        ));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = FromBrowser::decode(&bytes);
            let _ = ToBrowser::decode(&bytes);
        }

        #[test]
        fn ping_round_trips(nonce in any::<u64>()) {
            let p = FromBrowser::Ping { nonce };
            prop_assert_eq!(FromBrowser::decode(&p.encode()).unwrap(), p);
        }
    }
}

//! Pre-encoded H.264 for the replay server ([`super::Content::Replay`]): a load-test RDP server
//! that sends realistic frames must not paint and encode them per connection, so a reel is
//! encoded once (OpenH264, the demo desktop's encoder) and every connection loops over it.
//!
//! Profiles:
//! - [`ReelProfile::Office`]: 1920×1080 at 20 fps, four seconds (one IDR frame, 79 P-frames).
//!   A desktop with a text document, a file list and a taskbar; someone types (a character
//!   every third frame, a blinking caret), a progress bar in the side panel moves every frame,
//!   a chat window gets a line every 1.5 s, the taskbar clock ticks every second and the
//!   document scrolls once. Screen-content encoding, as a Windows server's AVC420 is: P-frames
//!   of 0.02–9 KB, about 2 KB on average; the IDR frame is about 220 KB.
//! - [`ReelProfile::Video`]: 1920×1080 at 30 fps, two seconds (one IDR frame, 59 P-frames),
//!   OpenH264 camera encoding held at [`VIDEO_BITRATE_BPS`] by its rate control. A panning
//!   textured scene with fast objects and grain on every pixel, so there is always more detail
//!   than the budget and the rate control spends all of it.
//! - [`ReelProfile::MaxFrames`]: two access units of the largest size the gateway takes in one
//!   graphics message, [`MAX_ACCESS_UNIT`] bytes once the stamp is in; see there.

use std::fmt;
use std::time::Instant;

use font8x8::UnicodeFonts as _;
use openh264::encoder::UsageType;
use tracing::info;

use super::encoder::{Tuning, H264};
use super::{stamp, DemoError};
use crate::rdp::dvc::DEFAULT_MAX_MESSAGE;

/// What a reel shows and at what rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReelProfile {
    /// Office work: mostly small P-frames, an IDR frame every 4 s (20 fps).
    Office,
    /// High-motion video: 30 fps, 5–8 Mbit/s, an IDR frame every 2 s.
    Video,
    /// The largest access units the gateway accepts, at 30 fps (every frame an IDR frame).
    MaxFrames,
}

/// Bitrate the [`ReelProfile::Video`] reel is encoded at (the middle of 5–8 Mbit/s).
pub const VIDEO_BITRATE_BPS: u32 = 6_500_000;

/// The largest access unit (stamp included) a default gateway accepts: one AVC420
/// `WireToSurface1` with one region, ZGFX-wrapped, must fit one dynamic-channel message of
/// `--max-dvc-message` (its default, [`DEFAULT_MAX_MESSAGE`]); a larger one ends the session.
/// The headers around the access unit take less than [`MESSAGE_HEADERS`]: the RDPGFX header
/// (8 bytes), the `WireToSurface1` fields (17), the `RFX_AVC420_BITMAP_STREAM` header with one
/// region and one quality pair (14) and ZGFX's segmentation (7 bytes plus 5 per 65,535-byte
/// segment, 172 for 2 MiB). MS-RDPEGFX itself sets no limit on an access unit; this is the
/// largest frame the protocol allows as this gateway is configured by default.
pub const MAX_ACCESS_UNIT: usize = DEFAULT_MAX_MESSAGE - MESSAGE_HEADERS;
/// An upper bound for what a graphics message adds around its access unit.
pub const MESSAGE_HEADERS: usize = 1 << 10;

/// H.264 NAL unit types this module writes or looks for.
const NAL_IDR: u8 = 5;
const NAL_FILLER: u8 = 12;

/// A pre-encoded H.264 stream that replay connections loop over.
pub struct Reel {
    pub width: u16,
    pub height: u16,
    pub fps: u32,
    /// Frames from one IDR frame to the next.
    pub key_interval: u32,
    pub frames: Vec<ReelFrame>,
}

/// One access unit (Annex B) of a reel.
pub struct ReelFrame {
    pub au: Vec<u8>,
    /// An IDR frame: a fresh decoder can start here.
    pub key: bool,
}

impl fmt::Debug for Reel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reel")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("fps", &self.fps)
            .field("key_interval", &self.key_interval)
            .field("frames", &self.frames.len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl fmt::Debug for ReelFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReelFrame")
            .field("bytes", &self.au.len())
            .field("key", &self.key)
            .finish()
    }
}

/// A profile's dimensions, rate, length and encoder settings.
#[derive(Debug, Clone, Copy)]
struct Spec {
    width: u16,
    height: u16,
    fps: u32,
    key_interval: u32,
    frames: u32,
    bitrate_bps: u32,
}

impl Spec {
    fn of(profile: ReelProfile) -> Spec {
        match profile {
            ReelProfile::Office => Spec {
                width: 1920,
                height: 1080,
                fps: 20,
                key_interval: 80,
                frames: 80,
                bitrate_bps: 2_000_000,
            },
            ReelProfile::Video => Spec {
                width: 1920,
                height: 1080,
                fps: 30,
                key_interval: 60,
                frames: 60,
                bitrate_bps: VIDEO_BITRATE_BPS,
            },
            ReelProfile::MaxFrames => Spec {
                width: 1920,
                height: 1080,
                fps: 30,
                key_interval: 1,
                frames: 2,
                bitrate_bps: 16_000_000,
            },
        }
    }

    /// The same profile at 1/`div` of the width and height (and 1/`div²` of the bitrate): the
    /// same bits per pixel, for tests in unoptimized builds.
    #[cfg(test)]
    fn scaled(self, div: u16) -> Spec {
        let even = |v: u16| (v / div) & !1;
        Spec {
            width: even(self.width),
            height: even(self.height),
            bitrate_bps: self.bitrate_bps / u32::from(div * div),
            ..self
        }
    }

    fn tuning(&self, profile: ReelProfile) -> Tuning {
        Tuning {
            usage: match profile {
                ReelProfile::Office => UsageType::ScreenContentRealTime,
                ReelProfile::Video | ReelProfile::MaxFrames => UsageType::CameraVideoRealTime,
            },
            bitrate_bps: self.bitrate_bps,
            fps: self.fps,
            intra_period: self.key_interval,
            // Every frame of a reel is sent; none may come out empty.
            skip_frames: false,
            qp: match profile {
                ReelProfile::Office => (18, 36),
                ReelProfile::Video | ReelProfile::MaxFrames => (12, 48),
            },
            // OpenH264 wants it on for screen content (it warns otherwise); camera content
            // with a fast pan would get extra IDR frames from it.
            scene_change_detect: profile == ReelProfile::Office,
        }
    }
}

impl Reel {
    /// Encodes the reel of `profile` once (OpenH264, the demo's encoder): realistic sizes and
    /// rates, see the [module documentation](self). Takes a few seconds in an optimized build.
    pub fn build(profile: ReelProfile) -> Result<Reel, DemoError> {
        build_spec(profile, Spec::of(profile))
    }

    /// Average bitrate over the reel played at its fps (without the per-send stamps, which
    /// add [`stamp::SEI_LEN`] bytes per frame).
    pub fn bitrate_bps(&self) -> u64 {
        let frames = u64::try_from(self.frames.len()).unwrap_or(u64::MAX).max(1);
        let bits = u64::try_from(self.bytes()).unwrap_or(u64::MAX) * 8;
        bits * u64::from(self.fps) / frames
    }

    /// Access unit bytes of the whole reel.
    fn bytes(&self) -> usize {
        self.frames.iter().map(|f| f.au.len()).sum()
    }

    /// Why this reel cannot be replayed, if it cannot.
    pub(super) fn check(&self) -> Result<(), DemoError> {
        if self.frames.is_empty() || self.fps == 0 || self.width == 0 || self.height == 0 {
            return Err(DemoError::Reel(format!(
                "a reel needs frames, a frame rate and a size ({self:?})"
            )));
        }
        Ok(())
    }
}

fn build_spec(profile: ReelProfile, spec: Spec) -> Result<Reel, DemoError> {
    let started = Instant::now();
    let mut encoder = H264::tuned(spec.width, spec.height, spec.tuning(profile))?;
    let mut frames = Vec::new();
    let mut office =
        matches!(profile, ReelProfile::Office).then(|| OfficePainter::new(spec.width, spec.height));
    let mut video = (!matches!(profile, ReelProfile::Office))
        .then(|| VideoPainter::new(spec.width, spec.height));
    for index in 0..spec.frames {
        let rgba = match (office.as_mut(), video.as_mut()) {
            (Some(p), _) => p.paint(index),
            (None, Some(p)) => p.paint(index),
            (None, None) => break,
        };
        let ms = u64::from(index) * 1000 / u64::from(spec.fps);
        let mut au = encoder.encode_at(rgba, ms)?;
        if au.is_empty() {
            return Err(DemoError::Encoder(format!(
                "openh264 skipped frame {index} of the reel"
            )));
        }
        if profile == ReelProfile::MaxFrames {
            pad_with_filler(&mut au, MAX_ACCESS_UNIT - stamp::SEI_LEN)?;
        }
        let key =
            stamp::nal_units(&au).any(|(_, nal)| nal.first().map(|h| h & 0x1f) == Some(NAL_IDR));
        frames.push(ReelFrame { au, key });
    }
    let reel = Reel {
        width: spec.width,
        height: spec.height,
        fps: spec.fps,
        key_interval: spec.key_interval,
        frames,
    };
    reel.check()?;
    let keys = reel.frames.iter().filter(|f| f.key).count();
    info!(
        ?profile,
        width = reel.width,
        height = reel.height,
        fps = reel.fps,
        frames = reel.frames.len(),
        keys,
        bytes = reel.bytes(),
        kbit_per_s = reel.bitrate_bps() / 1000,
        build_ms = started.elapsed().as_millis(),
        "reel encoded"
    );
    Ok(reel)
}

/// Pads an access unit to exactly `len` bytes with a filler data NAL unit (type 12: 0xFF
/// bytes and the RBSP stop bit), which H.264 allows after the picture's slices and decoders
/// skip: the access unit still decodes to its picture.
fn pad_with_filler(au: &mut Vec<u8>, len: usize) -> Result<(), DemoError> {
    const FRAMING: usize = 4 + 1 + 1;
    let Some(fill) = len.checked_sub(au.len() + FRAMING) else {
        return Err(DemoError::Encoder(format!(
            "a {}-byte access unit does not fit {len} bytes",
            au.len()
        )));
    };
    au.reserve_exact(len - au.len());
    au.extend_from_slice(&[0, 0, 0, 1, NAL_FILLER]);
    au.resize(au.len() + fill, 0xff);
    au.push(0x80);
    Ok(())
}

/// A tiny RGBA canvas: rectangles and 8×16 text (font8x8, doubled vertically).
struct Canvas {
    width: usize,
    height: usize,
    rgba: Vec<u8>,
}

impl Canvas {
    fn new(width: u16, height: u16) -> Canvas {
        let (width, height) = (usize::from(width), usize::from(height));
        Canvas {
            width,
            height,
            rgba: vec![255; width * height * 4],
        }
    }

    /// Fills a rectangle clipped to the canvas: one row painted, the others copied from it.
    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, c: [u8; 3]) {
        let (x1, y1) = ((x + w).min(self.width), (y + h).min(self.height));
        if x >= x1 || y >= y1 {
            return;
        }
        let stride = self.width * 4;
        let (start, end) = (y * stride + x * 4, y * stride + x1 * 4);
        if let Some(row) = self.rgba.get_mut(start..end) {
            for px in row.chunks_exact_mut(4) {
                px.copy_from_slice(&[c[0], c[1], c[2], 255]);
            }
        }
        for yy in y + 1..y1 {
            self.rgba.copy_within(start..end, yy * stride + x * 4);
        }
    }

    /// Text in 8×16 cells; returns the x after the last glyph.
    fn text(&mut self, x: usize, y: usize, text: &str, fg: [u8; 3]) -> usize {
        let mut pen = x;
        for ch in text.chars() {
            let glyph = font8x8::BASIC_FONTS.get(ch).unwrap_or([0; 8]);
            for (gy, bits) in glyph.iter().enumerate() {
                for gx in 0..8 {
                    if bits & (1 << gx) != 0 {
                        self.fill(pen + gx, y + gy * 2, 1, 2, fg);
                    }
                }
            }
            pen += 8;
        }
        pen
    }

    /// Moves the rows `[y, y + h)` of columns `[x, x + w)` up by `by` rows.
    fn scroll_up(&mut self, x: usize, y: usize, w: usize, h: usize, by: usize) {
        let stride = self.width * 4;
        let x1 = (x + w).min(self.width);
        for yy in y..(y + h).min(self.height).saturating_sub(by) {
            let src = (yy + by) * stride + x * 4;
            self.rgba
                .copy_within(src..src + (x1 - x) * 4, yy * stride + x * 4);
        }
    }
}

/// A small deterministic generator (xorshift64*), so reels are the same on every build.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }

    fn word(&mut self) -> &'static str {
        WORDS.get(self.below(WORDS.len())).copied().unwrap_or("the")
    }
}

const WORDS: [&str; 24] = [
    "the",
    "quarterly",
    "report",
    "shows",
    "revenue",
    "growth",
    "in",
    "all",
    "regions",
    "and",
    "costs",
    "remain",
    "within",
    "budget",
    "for",
    "next",
    "year",
    "we",
    "plan",
    "to",
    "hire",
    "engineers",
    "support",
    "customers",
];
const INK: [u8; 3] = [20, 20, 24];
const PAPER: [u8; 3] = [255, 255, 255];

/// The office desktop, scaled to the canvas: positions are in 1920×1080 coordinates scaled
/// down for smaller test reels.
struct OfficePainter {
    canvas: Canvas,
    rng: Rng,
    /// Document area `(x, y, w, h)` and the caret's position in it.
    doc: (usize, usize, usize, usize),
    caret: (usize, usize),
    /// Side panel progress bar `(x, y, w)`.
    bar: (usize, usize, usize),
    /// Chat window `(x, y, w, h)` under the side panel.
    chat: (usize, usize, usize, usize),
    clock: (usize, usize),
    text: String,
}

impl OfficePainter {
    fn new(width: u16, height: u16) -> OfficePainter {
        let mut canvas = Canvas::new(width, height);
        let (w, h) = (canvas.width, canvas.height);
        let sx = |v: usize| v * w / 1920;
        let sy = |v: usize| v * h / 1080;
        let mut rng = Rng(0x0ff1_ce00_5eed_1234);
        // Desktop background, taskbar with a few buttons and a clock.
        canvas.fill(0, 0, w, h, [0, 90, 130]);
        canvas.fill(0, h - sy(40), w, sy(40), [32, 32, 40]);
        for i in 0..8 {
            canvas.fill(sx(60 + i * 56), h - sy(34), sx(44), sy(28), [70, 70, 90]);
        }
        let clock = (w.saturating_sub(sx(120)), h - sy(30));
        // A document window: title bar, menu, ruler, the page with text.
        let (wx, wy, ww, wh) = (sx(120), sy(40), sx(1240), sy(960));
        canvas.fill(wx, wy, ww, wh, [200, 200, 210]);
        canvas.fill(wx, wy, ww, sy(32), [40, 80, 160]);
        canvas.text(wx + 12, wy + sy(8), "Quarterly report.docx - Writer", PAPER);
        let mut mx = wx + 12;
        for item in ["File", "Edit", "View", "Insert", "Format", "Tools", "Help"] {
            mx = canvas.text(mx, wy + sy(40), item, INK) + 24;
        }
        let doc = (wx + sx(40), wy + sy(80), ww - sx(80), wh - sy(100));
        canvas.fill(doc.0, doc.1, doc.2, doc.3, PAPER);
        let lines = doc.3 / 20;
        for line in 0..lines.saturating_sub(6) {
            let mut x = doc.0 + 16;
            let y = doc.1 + 8 + line * 20;
            loop {
                let word = rng.word();
                if x + (word.len() + 1) * 8 > doc.0 + doc.2 - 16 {
                    break;
                }
                x = canvas.text(x, y, word, INK) + 8;
            }
        }
        let caret = (doc.0 + 16, doc.1 + 8 + lines.saturating_sub(5) * 20);
        // A side panel: a file list and a progress bar.
        let (px, py, pw, ph) = (sx(1400), sy(40), sx(480), sy(700));
        canvas.fill(px, py, pw, ph, [235, 235, 240]);
        canvas.fill(px, py, pw, sy(32), [60, 60, 70]);
        canvas.text(px + 12, py + sy(8), "Files", PAPER);
        for i in 0..(ph / 24).saturating_sub(4) {
            let name = format!("{}-{}.xlsx", rng.word(), rng.below(1000));
            canvas.text(px + 16, py + sy(44) + i * 24, &name, INK);
        }
        let bar = (px + 16, py + ph - sy(30), pw - 32);
        let (cx, cy, cw, ch) = (px, py + ph + sy(20), pw, sy(280));
        canvas.fill(cx, cy, cw, ch, [245, 245, 250]);
        canvas.fill(cx, cy, cw, sy(28), [60, 60, 70]);
        canvas.text(cx + 12, cy + sy(6), "Team chat", PAPER);
        let chat = (cx + 8, cy + sy(36), cw - 16, ch - sy(44));
        canvas.fill(bar.0, bar.1, bar.2, 12, [200, 200, 200]);
        OfficePainter {
            canvas,
            rng,
            doc,
            caret,
            bar,
            chat,
            clock,
            text: String::new(),
        }
    }

    /// The desktop at frame `index` (frames are painted in order).
    fn paint(&mut self, index: u32) -> &[u8] {
        let i = usize::try_from(index).unwrap_or(0);
        // Typing: a character every third frame, a new line at the right margin.
        if i % 3 == 0 {
            if self.text.is_empty() {
                self.text = format!("{} ", self.rng.word());
            }
            let ch = self.text.chars().next().unwrap_or(' ');
            self.text.drain(..ch.len_utf8().min(self.text.len()));
            if self.caret.0 + 24 > self.doc.0 + self.doc.2 {
                self.canvas.fill(self.caret.0, self.caret.1, 2, 16, PAPER);
                self.caret = (self.doc.0 + 16, self.caret.1 + 20);
            }
            self.caret.0 =
                self.canvas
                    .text(self.caret.0, self.caret.1, ch.encode_utf8(&mut [0; 4]), INK);
        }
        // The caret blinks every half second (10 frames).
        let caret = if (i / 10) % 2 == 0 { INK } else { PAPER };
        self.canvas
            .fill(self.caret.0 + 1, self.caret.1, 2, 16, caret);
        // The side panel's progress bar grows every frame.
        let done = (i * 3) % self.bar.2.max(1);
        self.canvas
            .fill(self.bar.0, self.bar.1, done, 12, [40, 160, 60]);
        // The clock ticks every second.
        if i % 20 == 0 {
            let (x, y) = self.clock;
            self.canvas.fill(x, y, 80, 18, [32, 32, 40]);
            let secs = 9 * 3600 + 41 * 60 + i / 20;
            let clock = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
            self.canvas.text(x, y, &clock, PAPER);
        }
        // A chat message every second and a half: the chat window scrolls by a line.
        if i % 30 == 15 {
            let (x, y, w, h) = self.chat;
            self.canvas.scroll_up(x, y, w, h, 20);
            self.canvas.fill(x, y + h - 20, w, 20, [245, 245, 250]);
            let mut pen = self.canvas.text(x, y + h - 18, "anna: ", [40, 80, 160]);
            while pen + 80 < x + w {
                let word = self.rng.word();
                pen = self.canvas.text(pen, y + h - 18, word, INK) + 8;
            }
        }
        // Once in the reel, the document scrolls by three lines.
        if i == 50 {
            let (x, y, w, h) = self.doc;
            self.canvas.scroll_up(x, y, w, h, 60);
            self.canvas.fill(x, y + h - 60, w, 60, PAPER);
            self.caret.1 = self.caret.1.saturating_sub(60);
        }
        &self.canvas.rgba
    }
}

/// High-motion video: a textured scene panning diagonally, bright objects crossing it fast,
/// and grain on every pixel.
struct VideoPainter {
    canvas: Canvas,
    /// The scene, larger than the canvas by `margin` in each direction.
    scene: Vec<u8>,
    scene_width: usize,
    margin: usize,
    rng: Rng,
}

impl VideoPainter {
    fn new(width: u16, height: u16) -> VideoPainter {
        let canvas = Canvas::new(width, height);
        let margin = canvas.width.max(canvas.height) / 4;
        let (sw, sh) = (canvas.width + margin, canvas.height + margin);
        let mut rng = Rng(0x71de_0000_cafe_f00d);
        // Value noise: random colours on a coarse grid, blended bilinearly, plus fine texture.
        let cell = (canvas.width / 60).max(4);
        let (gw, gh) = (sw / cell + 2, sh / cell + 2);
        let grid: Vec<[u8; 3]> = (0..gw * gh)
            .map(|_| {
                let v = rng.next();
                [v as u8, (v >> 8) as u8, (v >> 16) as u8]
            })
            .collect();
        let mut scene = vec![255u8; sw * sh * 4];
        for (y, row) in scene.chunks_exact_mut(sw * 4).enumerate() {
            let (gy, fy) = (y / cell, y % cell);
            for (x, px) in row.chunks_exact_mut(4).enumerate() {
                let (gx, fx) = (x / cell, x % cell);
                let at = |dx: usize, dy: usize| {
                    grid.get((gy + dy) * gw + gx + dx)
                        .copied()
                        .unwrap_or_default()
                };
                let fine = (rng.next() & 31) as u32;
                for (c, out) in px.iter_mut().take(3).enumerate() {
                    let top = u32::from(at(0, 0)[c]) * (cell - fx) as u32
                        + u32::from(at(1, 0)[c]) * fx as u32;
                    let bottom = u32::from(at(0, 1)[c]) * (cell - fx) as u32
                        + u32::from(at(1, 1)[c]) * fx as u32;
                    let v = (top * (cell - fy) as u32 + bottom * fy as u32) / (cell * cell) as u32;
                    *out = (v * 7 / 8 + fine) as u8;
                }
            }
        }
        VideoPainter {
            canvas,
            scene,
            scene_width: sw,
            margin,
            rng,
        }
    }

    fn paint(&mut self, index: u32) -> &[u8] {
        let i = usize::try_from(index).unwrap_or(0);
        let (w, h, m) = (self.canvas.width, self.canvas.height, self.margin);
        // The camera pans along a diagonal and back, 2 % of the width per frame.
        let step = (w / 50).max(1);
        let travel = |speed: usize| {
            let t = (i * speed) % (2 * m);
            if t < m {
                t
            } else {
                2 * m - t
            }
        };
        let (ox, oy) = (travel(step), travel(step / 2 + 1));
        let stride = w * 4;
        for y in 0..h {
            let src = ((y + oy) * self.scene_width + ox) * 4;
            if let (Some(dst), Some(src)) = (
                self.canvas.rgba.get_mut(y * stride..(y + 1) * stride),
                self.scene.get(src..src + stride),
            ) {
                dst.copy_from_slice(src);
            }
        }
        // Objects crossing the picture fast, each its own speed and direction.
        let size = (w / 12).max(4);
        for k in 0..6usize {
            let x = (k * w / 6 + i * (w / 40 + k * 3)) % w;
            let y = (k * h / 7 + i * (h / 30 + k * 5)) % h;
            let colour = [(k * 40) as u8, 255 - (k * 30) as u8, (i * 4 + k * 50) as u8];
            self.canvas.fill(x, y, size, size / 2, colour);
        }
        // Grain: what a camera adds to every picture, and what no motion vector predicts.
        for px in self.canvas.rgba.chunks_exact_mut(8) {
            let n = self.rng.next();
            for (c, v) in px.iter_mut().enumerate() {
                if c % 4 != 3 {
                    let d = ((n >> (c * 5)) & 15) as u8;
                    *v = v.saturating_add(d).saturating_sub(8);
                }
            }
        }
        &self.canvas.rgba
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use ironrdp_core::encode_vec;
    use ironrdp_dvc::DvcProcessor as _;
    use ironrdp_egfx::pdu::{
        Avc420Region, CapabilitiesAdvertisePdu, CapabilitiesV81Flags, CapabilitySet, GfxPdu,
    };
    use ironrdp_egfx::server::{GraphicsPipelineHandler, GraphicsPipelineServer};

    use super::*;
    use crate::rdp::egfx::{GfxChannel, GfxError};

    /// Full size in optimized builds; in unoptimized ones (where painting is slow) a half of
    /// the width and height at the same bits per pixel. Returns the area divisor.
    fn spec(profile: ReelProfile) -> (Spec, u32) {
        let full = Spec::of(profile);
        if cfg!(debug_assertions) && profile != ReelProfile::MaxFrames {
            (full.scaled(2), 4)
        } else {
            (full, 1)
        }
    }

    fn timed(profile: ReelProfile) -> (Reel, u32) {
        let (spec, area_div) = spec(profile);
        let started = Instant::now();
        let reel = build_spec(profile, spec).unwrap();
        let p_frames: Vec<usize> = reel
            .frames
            .iter()
            .filter(|f| !f.key)
            .map(|f| f.au.len())
            .collect();
        let keys: Vec<usize> = reel
            .frames
            .iter()
            .filter(|f| f.key)
            .map(|f| f.au.len())
            .collect();
        println!(
            "{profile:?} {}x{} {} frames built in {} ms ({}): {} kbit/s, key frames {keys:?} bytes, \
             P-frames mean {} min {} max {} bytes",
            reel.width,
            reel.height,
            reel.frames.len(),
            started.elapsed().as_millis(),
            if cfg!(debug_assertions) { "debug" } else { "release" },
            reel.bitrate_bps() / 1000,
            p_frames.iter().sum::<usize>() / p_frames.len().max(1),
            p_frames.iter().min().unwrap_or(&0),
            p_frames.iter().max().unwrap_or(&0),
        );
        (reel, area_div)
    }

    #[test]
    fn office_is_mostly_small_p_frames_with_a_key_frame_every_4_s() {
        let (reel, div) = timed(ReelProfile::Office);
        assert_eq!(
            (reel.fps, reel.key_interval, reel.frames.len()),
            (20, 80, 80)
        );
        assert!(reel.frames[0].key);
        assert_eq!(reel.frames.iter().filter(|f| f.key).count(), 1);
        let p: Vec<usize> = reel.frames[1..].iter().map(|f| f.au.len()).collect();
        let mean = p.iter().sum::<usize>() / p.len();
        // "A few KB" at 1080p (the same bits per pixel when scaled down).
        let div = usize::try_from(div).unwrap();
        assert!(
            (1000 / div..=8000 / div).contains(&mean),
            "mean P-frame {mean} bytes"
        );
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert!(sorted[sorted.len() / 2] < 8000 / div, "median {sorted:?}");
        assert!(
            reel.frames[0].au.len() > 10 * mean,
            "key frame {} bytes",
            reel.frames[0].au.len()
        );
    }

    #[test]
    fn video_is_held_at_5_to_8_mbit_s() {
        let (reel, div) = timed(ReelProfile::Video);
        assert_eq!(
            (reel.fps, reel.key_interval, reel.frames.len()),
            (30, 60, 60)
        );
        assert!(reel.frames[0].key);
        assert_eq!(reel.frames.iter().filter(|f| f.key).count(), 1);
        let bps = reel.bitrate_bps() * u64::from(div);
        assert!((5_000_000..=8_000_000).contains(&bps), "{bps} bit/s");
    }

    struct Quiet;

    impl GraphicsPipelineHandler for Quiet {
        fn capabilities_advertise(&mut self, _: &CapabilitiesAdvertisePdu) {}
        fn on_ready(&mut self, _: &CapabilitySet) {}
    }

    /// What the gateway's graphics channel makes of `au` sent as the replay server sends it,
    /// and the largest dynamic-channel message that took.
    fn through_gateway_channel(au: &[u8]) -> Result<(usize, usize), GfxError> {
        let mut server = GraphicsPipelineServer::new(Box::new(Quiet));
        server.start(7).unwrap();
        let caps = CapabilitySet::V8_1 {
            flags: CapabilitiesV81Flags::AVC420_ENABLED | CapabilitiesV81Flags::SMALL_CACHE,
        };
        let advertise =
            GfxPdu::CapabilitiesAdvertise(CapabilitiesAdvertisePdu::from_typed(&[caps]));
        server.process(7, &encode_vec(&advertise).unwrap()).unwrap();
        server.set_output_dimensions(1920, 1080);
        let surface = server.create_surface(1920, 1080).unwrap();
        let region = Avc420Region {
            left: 0,
            top: 0,
            right: 1920,
            bottom: 1080,
            quantization_parameter: 22,
            quality: 100,
        };
        server
            .try_send_avc420_frame(surface, au, &[region], 0)
            .unwrap();
        let mut channel = GfxChannel::new();
        let mut forwarded = 0;
        let mut largest = 0;
        for message in server.drain_output() {
            let bytes = encode_vec(message.as_ref()).unwrap();
            largest = largest.max(bytes.len());
            channel.decode_message(&bytes)?;
            while let Some(event) = channel.pop_event() {
                if let crate::rdp::GfxEvent::Avc420(a) = event {
                    forwarded = a.access_unit().len();
                }
            }
        }
        Ok((forwarded, largest))
    }

    #[test]
    fn max_frames_are_as_large_as_the_gateway_takes_and_still_decode() {
        let (reel, _) = timed(ReelProfile::MaxFrames);
        assert_eq!(reel.frames.len(), 2);
        for frame in &reel.frames {
            assert!(frame.key);
            assert_eq!(frame.au.len() + stamp::SEI_LEN, MAX_ACCESS_UNIT);
            let stamped = stamp::stamped(&frame.au, 77);
            let (forwarded, message) = through_gateway_channel(&stamped).unwrap();
            assert_eq!(forwarded, MAX_ACCESS_UNIT);
            // The graphics message fits the default --max-dvc-message, with less than the
            // headers' bound to spare.
            assert!(message <= DEFAULT_MAX_MESSAGE, "{message}");
            assert!(message > DEFAULT_MAX_MESSAGE - MESSAGE_HEADERS, "{message}");
            // Valid Annex B: the picture, then one filler NAL unit.
            let types: Vec<u8> = stamp::nal_units(&frame.au)
                .map(|(_, n)| n[0] & 0x1f)
                .collect();
            assert_eq!(types.last(), Some(&NAL_FILLER), "{types:?}");
            assert!(types.contains(&NAL_IDR));
        }
        // The padding is invisible to a decoder. (OpenH264's decoder refuses access units
        // above 7,077,888 bytes, its level 5.2 buffer, so this pads to 1 MiB.)
        let au = &reel.frames[1].au;
        let (filler_at, _) = stamp::nal_units(au).last().unwrap();
        let picture = &au[..filler_at];
        let mut padded = picture.to_vec();
        pad_with_filler(&mut padded, 1 << 20).unwrap();
        assert_eq!(padded.len(), 1 << 20);
        use openh264::formats::YUVSource as _;
        let decode = |au: &[u8]| {
            let mut dec = openh264::decoder::Decoder::new().unwrap();
            let yuv = dec.decode(au).unwrap().unwrap();
            assert_eq!(yuv.dimensions(), (1920, 1080));
            yuv.y().to_vec()
        };
        assert_eq!(decode(&padded), decode(picture));
    }

    #[test]
    fn bitrate_and_checks() {
        let reel = Reel {
            width: 8,
            height: 8,
            fps: 10,
            key_interval: 2,
            frames: vec![
                ReelFrame {
                    au: vec![0; 1000],
                    key: true,
                },
                ReelFrame {
                    au: vec![0; 500],
                    key: false,
                },
            ],
        };
        assert_eq!(reel.bitrate_bps(), 1500 * 8 * 10 / 2);
        assert!(reel.check().is_ok());
        let empty = Reel {
            frames: Vec::new(),
            ..reel
        };
        assert!(empty.check().is_err());
    }
}

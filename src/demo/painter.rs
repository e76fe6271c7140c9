//! The demo desktop: input events in, an RGBA frame out. Pure: no sockets, no clocks.
//!
//! Layout (desktop coordinates, clipped to the desktop size):
//! - a static vertical gradient background;
//! - [`RED_SQUARE`]: a flat pure red square, for pixel checks after H.264;
//! - a title, a clock `HH:MM:SS.t UTC` and a frame counter right of the square;
//! - a band with a bar that moves with time (something changes every frame);
//! - [`TUNE_BUTTON`]: a button that plays a tune (the session makes the sound);
//! - the typed-text line, and one marker per click outside the button (drawn last, on top).

use std::collections::VecDeque;

use font8x8::UnicodeFonts as _;

/// Where the flat red square is: `(x, y, size)`; its colour is [`RED`].
pub const RED_SQUARE: (u16, u16, u16) = (40, 40, 200);
/// Pure red.
pub const RED: [u8; 3] = [255, 0, 0];
/// Colour of a click marker's centre.
pub const MARKER: [u8; 3] = [255, 255, 0];
/// Marker radius in pixels (a filled disc, with a dark ring around it).
pub const MARKER_RADIUS: i32 = 6;
/// Colour of text (title, clock, typed text).
pub const TEXT: [u8; 3] = [255, 255, 255];
/// Top-left corner of the clock text and its scale (each glyph is 8×scale pixels).
pub const CLOCK_AT: (u16, u16, u16) = (260, 76, 4);
/// Top-left corner of the typed-text line and its scale.
pub const TYPED_AT: (u16, u16, u16) = (40, 330, 2);
/// The "play tune" button: `(x, y, width, height)`. A click inside plays the tune and drops no
/// marker.
pub const TUNE_BUTTON: (u16, u16, u16, u16) = (260, 176, 200, 44);
/// Vertical extent of the band with the moving bar: `(top, height)`.
pub const BAR_BAND: (u16, u16) = (270, 40);
/// Clicks remembered (and drawn) per desktop; older ones fall off.
pub const MAX_MARKERS: usize = 256;
/// Characters kept of the typed line.
const MAX_TYPED: usize = 512;

const TITLE_AT: (u16, u16, u16) = (260, 40, 2);
const FRAME_AT: (u16, u16, u16) = (260, 120, 2);
const HINT_AT: (u16, u16, u16) = (40, 360, 1);
const HINTS: [&str; 2] = [
    "click to drop a marker, type to write on this line (each key beeps)",
    "click \"play tune\" for a tune; F9 turns a steady tone on and off",
];
const BUTTON_FACE: [u8; 3] = [60, 70, 140];
const BUTTON_EDGE: [u8; 3] = [150, 170, 255];
const BAR_WIDTH: i64 = 64;
const BAR_SPEED_PX_PER_S: i64 = 320;
const BAND_COLOUR: [u8; 3] = [40, 40, 48];
const RING: [u8; 3] = [0, 0, 0];

/// What the desktop reacts to. Produced from RDP input by [`super::input`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesktopEvent {
    /// A button went down at (x, y).
    Click { x: u16, y: u16 },
    /// A printable character was typed.
    Char(char),
    /// Backspace: remove the last character of the current line.
    Backspace,
    /// Enter: start a new (empty) line.
    Enter,
    /// F9: start or stop the steady tone. Only heard, nothing is drawn.
    ToggleTone,
}

/// Time inputs for one frame, supplied by the caller so painting stays pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameClock {
    /// Wall-clock milliseconds since midnight UTC (shown as `HH:MM:SS.t`).
    pub millis_of_day: u32,
    /// Milliseconds since the session started (drives the moving bar).
    pub elapsed_ms: u64,
    /// Sequence number of the frame (shown on screen).
    pub frame: u64,
}

/// One session's desktop.
#[derive(Debug)]
pub struct Desktop {
    width: u16,
    height: u16,
    /// Buffer dimensions: the desktop padded to multiples of 16 (H.264 macroblocks).
    buf_width: u16,
    buf_height: u16,
    rgba: Vec<u8>,
    /// The static part of every frame (background, red square, title, hint), painted once.
    base: Vec<u8>,
    markers: VecDeque<(u16, u16)>,
    line: String,
}

/// Rounds up to a multiple of 16 (at least 16).
pub fn padded(v: u16) -> u16 {
    let v = u32::from(v.max(1));
    let p = v.div_ceil(16) * 16;
    u16::try_from(p).unwrap_or(u16::MAX - 15)
}

impl Desktop {
    /// A desktop of `width`×`height`; the frame buffer is padded to multiples of 16.
    pub fn new(width: u16, height: u16) -> Self {
        let (width, height) = (width.max(1), height.max(1));
        let (buf_width, buf_height) = (padded(width), padded(height));
        let mut desktop = Self {
            width,
            height,
            buf_width,
            buf_height,
            rgba: vec![0; usize::from(buf_width) * usize::from(buf_height) * 4],
            base: Vec::new(),
            markers: VecDeque::new(),
            line: String::new(),
        };
        desktop.paint_background();
        desktop.fill_rect(
            i32::from(RED_SQUARE.0),
            i32::from(RED_SQUARE.1),
            i32::from(RED_SQUARE.2),
            i32::from(RED_SQUARE.2),
            RED,
        );
        desktop.text(TITLE_AT, "rdpwire demo desktop");
        desktop.paint_button();
        desktop.paint_hints();
        desktop.base = desktop.rgba.clone();
        desktop
    }

    /// Visible desktop size.
    pub fn size(&self) -> (u16, u16) {
        (self.width, self.height)
    }

    /// Frame buffer size (padded): the dimensions of [`Desktop::frame`].
    pub fn buffer_size(&self) -> (u16, u16) {
        (self.buf_width, self.buf_height)
    }

    /// The current typed line (what is shown on screen).
    pub fn line(&self) -> &str {
        &self.line
    }

    /// Applies one input event.
    pub fn apply(&mut self, event: DesktopEvent) {
        match event {
            DesktopEvent::Click { x, y } if in_tune_button(x, y) => {}
            DesktopEvent::Click { x, y } => {
                if self.markers.len() == MAX_MARKERS {
                    self.markers.pop_front();
                }
                self.markers.push_back((x, y));
            }
            DesktopEvent::Char(c) => {
                if self.line.chars().count() >= MAX_TYPED {
                    let mut chars = self.line.chars();
                    chars.next();
                    self.line = chars.collect();
                }
                self.line.push(c);
            }
            DesktopEvent::Backspace => {
                self.line.pop();
            }
            DesktopEvent::Enter => self.line.clear(),
            DesktopEvent::ToggleTone => {}
        }
    }

    /// Paints a whole frame and returns it: tightly packed RGBA, [`Desktop::buffer_size`].
    pub fn paint(&mut self, clock: FrameClock) -> &[u8] {
        self.rgba.copy_from_slice(&self.base);
        self.text(CLOCK_AT, &clock_text(clock.millis_of_day));
        self.text(FRAME_AT, &format!("frame {}", clock.frame));
        self.paint_bar(clock.elapsed_ms);
        let shown = self.visible_line();
        self.text(TYPED_AT, &format!("> {shown}_"));
        self.paint_hints();
        let markers: Vec<(u16, u16)> = self.markers.iter().copied().collect();
        for (x, y) in markers {
            self.marker(i32::from(x), i32::from(y));
        }
        &self.rgba
    }

    /// The colour at (x, y) of the last painted frame (black outside the buffer).
    pub fn pixel(&self, x: u16, y: u16) -> [u8; 3] {
        if x >= self.buf_width || y >= self.buf_height {
            return [0, 0, 0];
        }
        let i = (usize::from(y) * usize::from(self.buf_width) + usize::from(x)) * 4;
        match self.rgba.get(i..i + 3) {
            Some(p) => [p[0], p[1], p[2]],
            None => [0, 0, 0],
        }
    }

    /// The tail of the typed line that fits on screen.
    fn visible_line(&self) -> String {
        let glyph = u32::from(TYPED_AT.2) * 8;
        let room =
            (u32::from(self.width).saturating_sub(u32::from(TYPED_AT.0)) / glyph).saturating_sub(3);
        let room = usize::try_from(room).unwrap_or(0);
        let count = self.line.chars().count();
        self.line.chars().skip(count.saturating_sub(room)).collect()
    }

    fn paint_background(&mut self) {
        let h = u32::from(self.height.max(2) - 1);
        let w = usize::from(self.buf_width);
        for y in 0..self.buf_height {
            let t = u32::from(y.min(self.height - 1));
            // (16, 24, 48) at the top to (24, 72, 104) at the bottom.
            let c = [lerp(16, 24, t, h), lerp(24, 72, t, h), lerp(48, 104, t, h)];
            let row = usize::from(y) * w * 4;
            if let Some(row) = self.rgba.get_mut(row..row + w * 4) {
                for px in row.chunks_exact_mut(4) {
                    px.copy_from_slice(&[c[0], c[1], c[2], 255]);
                }
            }
        }
    }

    fn paint_hints(&mut self) {
        let (x, y, scale) = HINT_AT;
        for (line, hint) in (0u16..).zip(HINTS) {
            self.text((x, y + line * 12 * scale, scale), hint);
        }
    }

    /// The tune button: a frame, a note (font8x8 has no music glyphs) and "play tune".
    fn paint_button(&mut self) {
        let (x, y, w, h) = TUNE_BUTTON;
        let (x, y, w, h) = (i32::from(x), i32::from(y), i32::from(w), i32::from(h));
        self.fill_rect(x, y, w, h, BUTTON_EDGE);
        self.fill_rect(x + 2, y + 2, w - 4, h - 4, BUTTON_FACE);
        // An eighth note: a head, a stem rising from its right side, a flag.
        let (head_x, head_y) = (x + 20, y + 30);
        for dy in -4i32..=4 {
            for dx in -6i32..=6 {
                if dx * dx * 16 + dy * dy * 36 <= 576 {
                    self.put(head_x + dx, head_y + dy, TEXT);
                }
            }
        }
        self.fill_rect(head_x + 4, y + 8, 2, 22, TEXT);
        self.fill_rect(head_x + 6, y + 8, 4, 3, TEXT);
        self.fill_rect(head_x + 9, y + 10, 3, 6, TEXT);
        let label_y = u16::try_from(y + (h - 16) / 2).unwrap_or(0);
        let label_x = u16::try_from(x + 40).unwrap_or(0);
        self.text((label_x, label_y, 2), "play tune");
    }

    fn paint_bar(&mut self, elapsed_ms: u64) {
        let (top, height) = (i32::from(BAR_BAND.0), i32::from(BAR_BAND.1));
        self.fill_rect(0, top, i32::from(self.width), height, BAND_COLOUR);
        let travel = i64::from(self.width) + BAR_WIDTH;
        let elapsed = i64::try_from(elapsed_ms).unwrap_or(i64::MAX);
        let x = (elapsed.saturating_mul(BAR_SPEED_PX_PER_S) / 1000).rem_euclid(travel) - BAR_WIDTH;
        let hue = u32::try_from((elapsed / 20).rem_euclid(360)).unwrap_or(0);
        let colour = hue_to_rgb(hue);
        let x = i32::try_from(x).unwrap_or(0);
        let bar = i32::try_from(BAR_WIDTH).unwrap_or(64);
        self.fill_rect(x, top + 4, bar, height - 8, colour);
    }

    fn marker(&mut self, cx: i32, cy: i32) {
        let r = MARKER_RADIUS + 2;
        for dy in -r..=r {
            for dx in -r..=r {
                let d2 = dx * dx + dy * dy;
                if d2 <= MARKER_RADIUS * MARKER_RADIUS {
                    self.put(cx + dx, cy + dy, MARKER);
                } else if d2 <= r * r {
                    self.put(cx + dx, cy + dy, RING);
                }
            }
        }
    }

    fn text(&mut self, (x, y, scale): (u16, u16, u16), text: &str) {
        let scale = i32::from(scale.max(1));
        let mut pen = i32::from(x);
        for c in text.chars() {
            let glyph = font8x8::BASIC_FONTS
                .get(c)
                .or_else(|| font8x8::LATIN_FONTS.get(c))
                .or_else(|| font8x8::BASIC_FONTS.get('?'))
                .unwrap_or([0; 8]);
            for (gy, bits) in (0i32..).zip(glyph) {
                for gx in 0..8 {
                    if bits & (1 << gx) != 0 {
                        self.fill_rect(
                            pen + gx * scale,
                            i32::from(y) + gy * scale,
                            scale,
                            scale,
                            TEXT,
                        );
                    }
                }
            }
            pen += 8 * scale;
            if pen >= i32::from(self.width) {
                break;
            }
        }
    }

    /// Fills a rectangle, clipped to the visible desktop.
    fn fill_rect(&mut self, x: i32, y: i32, w: i32, h: i32, c: [u8; 3]) {
        let x0 = x.clamp(0, i32::from(self.width));
        let y0 = y.clamp(0, i32::from(self.height));
        let x1 = x.saturating_add(w).clamp(0, i32::from(self.width));
        let y1 = y.saturating_add(h).clamp(0, i32::from(self.height));
        let (Ok(x0), Ok(x1)) = (usize::try_from(x0), usize::try_from(x1)) else {
            return;
        };
        let stride = usize::from(self.buf_width) * 4;
        for yy in y0..y1 {
            let Ok(yy) = usize::try_from(yy) else {
                continue;
            };
            let start = yy * stride + x0 * 4;
            let end = yy * stride + x1 * 4;
            if let Some(row) = self.rgba.get_mut(start..end) {
                for px in row.chunks_exact_mut(4) {
                    px.copy_from_slice(&[c[0], c[1], c[2], 255]);
                }
            }
        }
    }

    fn put(&mut self, x: i32, y: i32, c: [u8; 3]) {
        self.fill_rect(x, y, 1, 1, c);
    }
}

/// Whether desktop point (x, y) is on [`TUNE_BUTTON`].
pub fn in_tune_button(x: u16, y: u16) -> bool {
    let (bx, by, w, h) = TUNE_BUTTON;
    (bx..bx + w).contains(&x) && (by..by + h).contains(&y)
}

/// `HH:MM:SS.t UTC` for a time of day in milliseconds.
pub fn clock_text(millis_of_day: u32) -> String {
    let ms = millis_of_day % 86_400_000;
    let (h, m, s, t) = (
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms / 100 % 10,
    );
    format!("{h:02}:{m:02}:{s:02}.{t} UTC")
}

fn lerp(a: u8, b: u8, t: u32, max: u32) -> u8 {
    let (a, b) = (u32::from(a), u32::from(b));
    let v = (a * (max - t.min(max)) + b * t.min(max)) / max.max(1);
    u8::try_from(v).unwrap_or(u8::MAX)
}

/// Fully saturated colour for a hue in degrees.
fn hue_to_rgb(hue: u32) -> [u8; 3] {
    let h = hue % 360;
    let x = u8::try_from((h % 60) * 255 / 60).unwrap_or(u8::MAX);
    match h / 60 {
        0 => [255, x, 0],
        1 => [255 - x, 255, 0],
        2 => [0, 255, x],
        3 => [0, 255 - x, 255],
        4 => [x, 0, 255],
        _ => [255, 0, 255 - x],
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn clock(ms: u32, elapsed: u64, frame: u64) -> FrameClock {
        FrameClock {
            millis_of_day: ms,
            elapsed_ms: elapsed,
            frame,
        }
    }

    fn region_differs(a: &[u8], b: &[u8], d: &Desktop, (x, y, w, h): (u16, u16, u16, u16)) -> bool {
        let stride = usize::from(d.buffer_size().0) * 4;
        (y..y + h).any(|yy| {
            let s = usize::from(yy) * stride + usize::from(x) * 4;
            let e = s + usize::from(w) * 4;
            a[s..e] != b[s..e]
        })
    }

    #[test]
    fn buffer_is_padded_to_macroblocks() {
        let d = Desktop::new(1025, 767);
        assert_eq!(d.size(), (1025, 767));
        assert_eq!(d.buffer_size(), (1040, 768));
        assert_eq!(padded(16), 16);
        assert_eq!(padded(0), 16);
    }

    #[test]
    fn red_square_is_pure_red() {
        let mut d = Desktop::new(800, 600);
        d.paint(clock(0, 0, 0));
        let (x, y, s) = RED_SQUARE;
        for (px, py) in [
            (x, y),
            (x + s - 1, y + s - 1),
            (x + s / 2, y + s / 2),
            (x + 3, y + s - 4),
        ] {
            assert_eq!(d.pixel(px, py), RED, "at ({px},{py})");
        }
        assert_ne!(d.pixel(x - 1, y), RED);
        assert_ne!(d.pixel(x + s, y + s), RED);
    }

    #[test]
    fn click_draws_a_marker() {
        let mut d = Desktop::new(800, 600);
        d.paint(clock(0, 0, 0));
        assert_ne!(d.pixel(500, 450), MARKER);
        d.apply(DesktopEvent::Click { x: 500, y: 450 });
        d.paint(clock(0, 0, 1));
        assert_eq!(d.pixel(500, 450), MARKER);
        assert_eq!(d.pixel(503, 452), MARKER);
        assert_eq!(d.pixel(500 + 8, 450), RING);
        // A marker on top of the red square is still visible.
        d.apply(DesktopEvent::Click { x: 100, y: 100 });
        d.paint(clock(0, 0, 2));
        assert_eq!(d.pixel(100, 100), MARKER);
    }

    #[test]
    fn the_tune_button_is_drawn_and_takes_no_marker() {
        let mut d = Desktop::new(800, 600);
        d.paint(clock(0, 0, 0));
        let (x, y, w, h) = TUNE_BUTTON;
        assert_eq!(d.pixel(x, y), BUTTON_EDGE);
        assert_eq!(d.pixel(x + w - 1, y + h - 1), BUTTON_EDGE);
        assert_eq!(d.pixel(x + w - 6, y + 4), BUTTON_FACE);
        assert_eq!(d.pixel(x + 20, y + 30), TEXT, "the note's head");
        assert!(in_tune_button(x, y) && in_tune_button(x + w - 1, y + h - 1));
        assert!(!in_tune_button(x + w, y) && !in_tune_button(x, y + h));
        let (cx, cy) = (x + w - 8, y + h / 2);
        let before = d.pixel(cx, cy);
        d.apply(DesktopEvent::Click { x: cx, y: cy });
        d.apply(DesktopEvent::ToggleTone);
        d.paint(clock(0, 0, 1));
        assert_eq!(d.pixel(cx, cy), before, "no marker on the button");
        assert_eq!(d.line(), "");
    }

    #[test]
    fn markers_near_the_edge_are_clipped() {
        let mut d = Desktop::new(200, 200);
        d.apply(DesktopEvent::Click { x: 0, y: 0 });
        d.apply(DesktopEvent::Click { x: 199, y: 199 });
        d.apply(DesktopEvent::Click { x: 5000, y: 5000 });
        d.paint(clock(0, 0, 0));
        assert_eq!(d.pixel(0, 0), MARKER);
        assert_eq!(d.pixel(199, 199), MARKER);
    }

    #[test]
    fn typed_text_changes_pixels() {
        let mut d = Desktop::new(800, 600);
        let before = d.paint(clock(1000, 0, 0)).to_vec();
        for c in "hello".chars() {
            d.apply(DesktopEvent::Char(c));
        }
        assert_eq!(d.line(), "hello");
        let after = d.paint(clock(1000, 0, 0)).to_vec();
        let (x, y, s) = TYPED_AT;
        assert!(region_differs(&before, &after, &d, (x, y, 300, 8 * s)));
        // Only the text line changed: the clock region is identical.
        assert!(!region_differs(
            &before,
            &after,
            &d,
            (CLOCK_AT.0, CLOCK_AT.1, 400, 32)
        ));
        d.apply(DesktopEvent::Backspace);
        assert_eq!(d.line(), "hell");
        d.apply(DesktopEvent::Enter);
        assert_eq!(d.line(), "");
    }

    #[test]
    fn clock_changes_between_frames() {
        let mut d = Desktop::new(800, 600);
        let a = d.paint(clock(12 * 3_600_000 + 100, 0, 0)).to_vec();
        let b = d.paint(clock(12 * 3_600_000 + 200, 0, 0)).to_vec();
        assert!(region_differs(
            &a,
            &b,
            &d,
            (CLOCK_AT.0, CLOCK_AT.1, 14 * 32, 32)
        ));
        assert_eq!(
            clock_text(12 * 3_600_000 + 34 * 60_000 + 56_789),
            "12:34:56.7 UTC"
        );
        assert_eq!(clock_text(86_400_000 + 5), "00:00:00.0 UTC");
    }

    #[test]
    fn the_bar_moves_every_frame() {
        let mut d = Desktop::new(800, 600);
        let a = d.paint(clock(0, 1000, 0)).to_vec();
        let b = d.paint(clock(0, 1040, 0)).to_vec();
        assert!(region_differs(&a, &b, &d, (0, BAR_BAND.0, 800, BAR_BAND.1)));
    }

    #[test]
    fn long_lines_keep_their_tail_on_screen() {
        let mut d = Desktop::new(200, 200);
        for _ in 0..(MAX_TYPED + 10) {
            d.apply(DesktopEvent::Char('x'));
        }
        assert_eq!(d.line().len(), MAX_TYPED);
        d.paint(clock(0, 0, 0));
        assert!(d.visible_line().len() < 20);
    }

    #[test]
    fn tiny_desktops_do_not_panic() {
        for (w, h) in [(1, 1), (2, 2), (17, 3), (200, 200)] {
            let mut d = Desktop::new(w, h);
            d.apply(DesktopEvent::Click { x: 1, y: 1 });
            let (bw, bh) = d.buffer_size();
            assert_eq!(
                d.paint(clock(0, 0, 0)).len(),
                usize::from(bw) * usize::from(bh) * 4
            );
        }
    }
}

//! RDP input events → [`DesktopEvent`]s. Pure: keeps only modifier state.

use ironrdp_pdu::input::fast_path::{FastPathInputEvent, KeyboardFlags as FpKeyboardFlags};
use ironrdp_pdu::input::mouse::PointerFlags;
use ironrdp_pdu::input::InputEvent;

use super::painter::DesktopEvent;

const SC_BACKSPACE: u16 = 0x0E;
const SC_ENTER: u16 = 0x1C;
const SC_LSHIFT: u16 = 0x2A;
const SC_RSHIFT: u16 = 0x36;
const SC_CAPS: u16 = 0x3A;
const SC_F9: u16 = 0x43;

/// Translates keyboard and mouse events; tracks Shift and Caps Lock for scancodes.
#[derive(Debug, Default)]
pub struct InputMapper {
    shift_left: bool,
    shift_right: bool,
    caps: bool,
    /// F9 is held: auto-repeated key downs must not toggle the tone again and again.
    f9_down: bool,
    /// A UTF-16 high surrogate waiting for its low half.
    high_surrogate: Option<u16>,
}

/// A key event reduced to what the mapper needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Scancode {
        code: u16,
        extended: bool,
        release: bool,
    },
    Unicode {
        unit: u16,
        release: bool,
    },
}

impl InputMapper {
    /// Events from a fast-path input PDU.
    pub fn fast_path(&mut self, event: &FastPathInputEvent) -> Option<DesktopEvent> {
        match *event {
            FastPathInputEvent::KeyboardEvent(flags, code) => self.key(Key::Scancode {
                code: u16::from(code),
                extended: flags.contains(FpKeyboardFlags::EXTENDED),
                release: flags.contains(FpKeyboardFlags::RELEASE),
            }),
            FastPathInputEvent::UnicodeKeyboardEvent(flags, unit) => self.key(Key::Unicode {
                unit,
                release: flags.contains(FpKeyboardFlags::RELEASE),
            }),
            FastPathInputEvent::MouseEvent(ref mouse) => {
                click(mouse.flags, mouse.x_position, mouse.y_position)
            }
            FastPathInputEvent::SyncEvent(flags) => {
                self.caps =
                    flags.contains(ironrdp_pdu::input::fast_path::SynchronizeFlags::CAPS_LOCK);
                None
            }
            FastPathInputEvent::MouseEventEx(_)
            | FastPathInputEvent::MouseEventRel(_)
            | FastPathInputEvent::QoeEvent(_) => None,
        }
    }

    /// Events from a slow-path Input Event PDU.
    pub fn slow_path(&mut self, event: &InputEvent) -> Option<DesktopEvent> {
        use ironrdp_pdu::input::scan_code::KeyboardFlags as ScFlags;
        use ironrdp_pdu::input::unicode::KeyboardFlags as UniFlags;
        match event {
            InputEvent::ScanCode(sc) => self.key(Key::Scancode {
                code: sc.key_code,
                extended: sc.flags.contains(ScFlags::EXTENDED),
                release: sc.flags.contains(ScFlags::RELEASE),
            }),
            InputEvent::Unicode(u) => self.key(Key::Unicode {
                unit: u.unicode_code,
                release: u.flags.contains(UniFlags::RELEASE),
            }),
            InputEvent::Mouse(mouse) => click(mouse.flags, mouse.x_position, mouse.y_position),
            InputEvent::Sync(sync) => {
                self.caps = sync
                    .flags
                    .contains(ironrdp_pdu::input::sync::SyncToggleFlags::CAPS_LOCK);
                None
            }
            InputEvent::Unused(_) | InputEvent::MouseX(_) | InputEvent::MouseRel(_) => None,
        }
    }

    fn key(&mut self, key: Key) -> Option<DesktopEvent> {
        match key {
            Key::Unicode { release: true, .. } => None,
            Key::Unicode {
                unit,
                release: false,
            } => self.unicode(unit),
            Key::Scancode {
                code,
                extended,
                release,
            } => {
                match (code, extended) {
                    (SC_LSHIFT, false) => self.shift_left = !release,
                    (SC_RSHIFT, false) => self.shift_right = !release,
                    (SC_CAPS, false) if !release => self.caps = !self.caps,
                    _ => {}
                }
                if (code, extended) == (SC_F9, false) {
                    let first_down = !release && !self.f9_down;
                    self.f9_down = !release;
                    return first_down.then_some(DesktopEvent::ToggleTone);
                }
                if release {
                    return None;
                }
                match (code, extended) {
                    (SC_BACKSPACE, false) => Some(DesktopEvent::Backspace),
                    (SC_ENTER, _) => Some(DesktopEvent::Enter),
                    (_, false) => us_char(code, self.shift_left || self.shift_right, self.caps)
                        .map(DesktopEvent::Char),
                    // Numpad divide is the only extended key that types a character.
                    (0x35, true) => Some(DesktopEvent::Char('/')),
                    _ => None,
                }
            }
        }
    }

    fn unicode(&mut self, unit: u16) -> Option<DesktopEvent> {
        let c = match unit {
            0xD800..=0xDBFF => {
                self.high_surrogate = Some(unit);
                return None;
            }
            0xDC00..=0xDFFF => {
                let high = self.high_surrogate.take()?;
                char::decode_utf16([high, unit]).next()?.ok()?
            }
            _ => {
                self.high_surrogate = None;
                char::from_u32(u32::from(unit))?
            }
        };
        match c {
            '\u{8}' => Some(DesktopEvent::Backspace),
            '\r' | '\n' => Some(DesktopEvent::Enter),
            c if c.is_control() => None,
            c => Some(DesktopEvent::Char(c)),
        }
    }
}

fn click(flags: PointerFlags, x: u16, y: u16) -> Option<DesktopEvent> {
    let button = PointerFlags::LEFT_BUTTON
        | PointerFlags::RIGHT_BUTTON
        | PointerFlags::MIDDLE_BUTTON_OR_WHEEL;
    let wheel = PointerFlags::VERTICAL_WHEEL | PointerFlags::HORIZONTAL_WHEEL;
    (flags.contains(PointerFlags::DOWN) && flags.intersects(button) && !flags.intersects(wheel))
        .then_some(DesktopEvent::Click { x, y })
}

/// The character a US-layout key types, for set-1 scancodes.
fn us_char(code: u16, shift: bool, caps: bool) -> Option<char> {
    const ROW_NUM: &[u8; 13] = b"1234567890-=\0";
    const ROW_NUM_SHIFT: &[u8; 13] = b"!@#$%^&*()_+\0";
    let (plain, shifted): (u8, u8) = match code {
        0x02..=0x0D => {
            let i = usize::from(code - 0x02);
            (ROW_NUM[i], ROW_NUM_SHIFT[i])
        }
        0x10..=0x19 => letter(b"qwertyuiop", code - 0x10),
        0x1A => (b'[', b'{'),
        0x1B => (b']', b'}'),
        0x1E..=0x26 => letter(b"asdfghjkl", code - 0x1E),
        0x27 => (b';', b':'),
        0x28 => (b'\'', b'"'),
        0x29 => (b'`', b'~'),
        0x2B => (b'\\', b'|'),
        0x2C..=0x32 => letter(b"zxcvbnm", code - 0x2C),
        0x33 => (b',', b'<'),
        0x34 => (b'.', b'>'),
        0x35 => (b'/', b'?'),
        0x39 => (b' ', b' '),
        _ => return None,
    };
    let is_letter = plain.is_ascii_lowercase();
    let upper = if is_letter { shift != caps } else { shift };
    Some(char::from(if upper { shifted } else { plain }))
}

fn letter(row: &[u8], i: u16) -> (u8, u8) {
    let c = row.get(usize::from(i)).copied().unwrap_or(b'?');
    (c, c.to_ascii_uppercase())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use ironrdp_pdu::input::mouse::MousePdu;

    use super::*;

    fn sc(m: &mut InputMapper, code: u8, release: bool) -> Option<DesktopEvent> {
        let flags = if release {
            FpKeyboardFlags::RELEASE
        } else {
            FpKeyboardFlags::empty()
        };
        m.fast_path(&FastPathInputEvent::KeyboardEvent(flags, code))
    }

    fn typed(m: &mut InputMapper, codes: &[(u8, bool)]) -> String {
        codes
            .iter()
            .filter_map(|&(c, r)| match sc(m, c, r) {
                Some(DesktopEvent::Char(ch)) => Some(ch),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn scancodes_type_us_layout_with_shift() {
        let mut m = InputMapper::default();
        // h i <shift> 1 </shift>
        let s = typed(
            &mut m,
            &[
                (0x23, false),
                (0x23, true),
                (0x17, false),
                (0x2A, false),
                (0x02, false),
                (0x2A, true),
                (0x02, false),
            ],
        );
        assert_eq!(s, "hi!1");
        assert_eq!(sc(&mut m, 0x0E, false), Some(DesktopEvent::Backspace));
        assert_eq!(sc(&mut m, 0x1C, false), Some(DesktopEvent::Enter));
        assert_eq!(sc(&mut m, 0x3B, false), None, "F1 types nothing");
    }

    #[test]
    fn f9_toggles_the_tone_once_per_press() {
        let mut m = InputMapper::default();
        assert_eq!(sc(&mut m, 0x43, false), Some(DesktopEvent::ToggleTone));
        assert_eq!(sc(&mut m, 0x43, false), None, "auto-repeat");
        assert_eq!(sc(&mut m, 0x43, true), None);
        assert_eq!(sc(&mut m, 0x43, false), Some(DesktopEvent::ToggleTone));
    }

    #[test]
    fn caps_lock_toggles_letters_only() {
        let mut m = InputMapper::default();
        let s = typed(
            &mut m,
            &[(0x3A, false), (0x3A, true), (0x1E, false), (0x02, false)],
        );
        assert_eq!(s, "A1");
    }

    #[test]
    fn unicode_events_and_surrogates() {
        let mut m = InputMapper::default();
        let u = |m: &mut InputMapper, unit| {
            m.fast_path(&FastPathInputEvent::UnicodeKeyboardEvent(
                FpKeyboardFlags::empty(),
                unit,
            ))
        };
        assert_eq!(u(&mut m, u16::from(b'z')), Some(DesktopEvent::Char('z')));
        assert_eq!(u(&mut m, 0xE9), Some(DesktopEvent::Char('é')));
        assert_eq!(u(&mut m, 0xD83D), None);
        assert_eq!(u(&mut m, 0xDE00), Some(DesktopEvent::Char('😀')));
        assert_eq!(u(&mut m, 8), Some(DesktopEvent::Backspace));
        let release = m.fast_path(&FastPathInputEvent::UnicodeKeyboardEvent(
            FpKeyboardFlags::RELEASE,
            0x41,
        ));
        assert_eq!(release, None);
    }

    #[test]
    fn button_down_is_a_click_moves_are_not() {
        let mut m = InputMapper::default();
        let ev = |flags, x, y| {
            FastPathInputEvent::MouseEvent(MousePdu {
                flags,
                number_of_wheel_rotation_units: 0,
                x_position: x,
                y_position: y,
            })
        };
        let down = ev(PointerFlags::DOWN | PointerFlags::LEFT_BUTTON, 10, 20);
        assert_eq!(
            m.fast_path(&down),
            Some(DesktopEvent::Click { x: 10, y: 20 })
        );
        assert_eq!(m.fast_path(&ev(PointerFlags::LEFT_BUTTON, 10, 20)), None);
        assert_eq!(m.fast_path(&ev(PointerFlags::MOVE, 11, 21)), None);
        let slow = InputEvent::Mouse(MousePdu {
            flags: PointerFlags::DOWN | PointerFlags::RIGHT_BUTTON,
            number_of_wheel_rotation_units: 0,
            x_position: 5,
            y_position: 6,
        });
        assert_eq!(m.slow_path(&slow), Some(DesktopEvent::Click { x: 5, y: 6 }));
    }
}

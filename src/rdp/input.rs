//! Keyboard and mouse input, from what a browser reports to fast-path input events
//! (MS-RDPBCGR 2.2.8.1.2.2). The browser side speaks in [`InputEvent`]s; this module owns the
//! mapping to RDP's flags, the wheel's 9-bit range and the extended-key prefix.

use ironrdp_pdu::input::fast_path::{FastPathInputEvent, KeyboardFlags};
use ironrdp_pdu::input::mouse::PointerFlags;
use ironrdp_pdu::input::mouse_x::PointerXFlags;
use ironrdp_pdu::input::{MousePdu, MouseXPdu};

/// Mouse buttons RDP knows: the three classic ones and the two side buttons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MouseButton {
    Left,
    Right,
    Middle,
    /// "Back" (X1).
    X1,
    /// "Forward" (X2).
    X2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WheelAxis {
    Vertical,
    Horizontal,
}

/// One input event, in desktop coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputEvent {
    MouseMove {
        x: u16,
        y: u16,
    },
    MouseButton {
        button: MouseButton,
        down: bool,
        x: u16,
        y: u16,
    },
    /// Wheel rotation in RDP units (120 per notch, Windows' `WHEEL_DELTA`). Positive is away from
    /// the user (up) on the vertical axis and to the right on the horizontal axis. Any size is
    /// accepted; large deltas become several events.
    Wheel {
        axis: WheelAxis,
        delta: i32,
        x: u16,
        y: u16,
    },
    /// A key by its set-1 scan code; `extended` is the `0xE0` prefix (arrows, right Ctrl/Alt,
    /// the navigation block, …).
    Key {
        scancode: u8,
        extended: bool,
        down: bool,
    },
    /// A UTF-16 code unit, for text the keyboard layout cannot express.
    Unicode {
        code_unit: u16,
        down: bool,
    },
}

impl InputEvent {
    /// Appends this event's fast-path form to `out` (one event, or several for a large wheel
    /// delta).
    pub fn encode_into(&self, out: &mut Vec<FastPathInputEvent>) {
        match *self {
            InputEvent::MouseMove { x, y } => out.push(mouse_move(x, y)),
            InputEvent::MouseButton { button, down, x, y } => {
                out.push(mouse_button(button, down, x, y))
            }
            InputEvent::Wheel { axis, delta, x, y } => wheel(out, axis, delta, x, y),
            InputEvent::Key {
                scancode,
                extended,
                down,
            } => out.push(key(scancode, extended, down)),
            InputEvent::Unicode { code_unit, down } => out.push(unicode(code_unit, down)),
        }
    }
}

/// The fast-path events for a batch of input events.
pub fn encode(events: &[InputEvent]) -> Vec<FastPathInputEvent> {
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        e.encode_into(&mut out);
    }
    out
}

pub fn mouse_move(x: u16, y: u16) -> FastPathInputEvent {
    FastPathInputEvent::MouseEvent(MousePdu {
        flags: PointerFlags::MOVE,
        number_of_wheel_rotation_units: 0,
        x_position: x,
        y_position: y,
    })
}

pub fn mouse_button(button: MouseButton, down: bool, x: u16, y: u16) -> FastPathInputEvent {
    let classic = match button {
        MouseButton::Left => Some(PointerFlags::LEFT_BUTTON),
        MouseButton::Right => Some(PointerFlags::RIGHT_BUTTON),
        MouseButton::Middle => Some(PointerFlags::MIDDLE_BUTTON_OR_WHEEL),
        MouseButton::X1 | MouseButton::X2 => None,
    };
    match classic {
        Some(flag) => FastPathInputEvent::MouseEvent(MousePdu {
            flags: if down {
                flag | PointerFlags::DOWN
            } else {
                flag
            },
            number_of_wheel_rotation_units: 0,
            x_position: x,
            y_position: y,
        }),
        None => {
            let flag = if button == MouseButton::X1 {
                PointerXFlags::BUTTON1
            } else {
                PointerXFlags::BUTTON2
            };
            FastPathInputEvent::MouseEventEx(MouseXPdu {
                flags: if down {
                    flag | PointerXFlags::DOWN
                } else {
                    flag
                },
                x_position: x,
                y_position: y,
            })
        }
    }
}

/// Wheel rotation split into steps that fit the 9-bit field (−256..=255).
pub fn wheel(out: &mut Vec<FastPathInputEvent>, axis: WheelAxis, delta: i32, x: u16, y: u16) {
    let axis_flag = match axis {
        WheelAxis::Vertical => PointerFlags::VERTICAL_WHEEL,
        WheelAxis::Horizontal => PointerFlags::HORIZONTAL_WHEEL,
    };
    let (lo, hi) = (
        i32::from(*MousePdu::WHEEL_ROTATION_RANGE.start()),
        i32::from(*MousePdu::WHEEL_ROTATION_RANGE.end()),
    );
    let mut left = delta;
    while left != 0 {
        let step = left.clamp(lo, hi);
        left -= step;
        out.push(FastPathInputEvent::MouseEvent(MousePdu {
            flags: axis_flag,
            // `step` is within the i16 wheel range by the clamp above.
            number_of_wheel_rotation_units: step as i16,
            x_position: x,
            y_position: y,
        }));
    }
}

pub fn key(scancode: u8, extended: bool, down: bool) -> FastPathInputEvent {
    let mut flags = KeyboardFlags::empty();
    if !down {
        flags |= KeyboardFlags::RELEASE;
    }
    if extended {
        flags |= KeyboardFlags::EXTENDED;
    }
    FastPathInputEvent::KeyboardEvent(flags, scancode)
}

pub fn unicode(code_unit: u16, down: bool) -> FastPathInputEvent {
    let flags = if down {
        KeyboardFlags::empty()
    } else {
        KeyboardFlags::RELEASE
    };
    FastPathInputEvent::UnicodeKeyboardEvent(flags, code_unit)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use ironrdp_core::{encode_vec, Decode as _, ReadCursor};
    use ironrdp_pdu::input::fast_path::FastPathInput;

    use super::*;

    fn round_trip(events: &[InputEvent]) -> Vec<FastPathInputEvent> {
        let fp = FastPathInput::new(encode(events)).unwrap();
        let bytes = encode_vec(&fp).unwrap();
        FastPathInput::decode(&mut ReadCursor::new(&bytes))
            .unwrap()
            .input_events()
            .to_vec()
    }

    fn mouse(e: &FastPathInputEvent) -> MousePdu {
        match e {
            FastPathInputEvent::MouseEvent(m) => *m,
            other => panic!("not a mouse event: {other:?}"),
        }
    }

    #[test]
    fn mouse_events() {
        let evs = round_trip(&[
            InputEvent::MouseMove { x: 10, y: 20 },
            InputEvent::MouseButton {
                button: MouseButton::Left,
                down: true,
                x: 10,
                y: 20,
            },
            InputEvent::MouseButton {
                button: MouseButton::Right,
                down: false,
                x: 1,
                y: 2,
            },
            InputEvent::MouseButton {
                button: MouseButton::X2,
                down: true,
                x: 3,
                y: 4,
            },
        ]);
        assert_eq!(mouse(&evs[0]).flags, PointerFlags::MOVE);
        assert_eq!(
            (mouse(&evs[0]).x_position, mouse(&evs[0]).y_position),
            (10, 20)
        );
        assert_eq!(
            mouse(&evs[1]).flags,
            PointerFlags::LEFT_BUTTON | PointerFlags::DOWN
        );
        assert_eq!(mouse(&evs[2]).flags, PointerFlags::RIGHT_BUTTON);
        match &evs[3] {
            FastPathInputEvent::MouseEventEx(x) => {
                assert_eq!(x.flags, PointerXFlags::BUTTON2 | PointerXFlags::DOWN)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wheel_in_both_axes_and_large_deltas() {
        let evs = round_trip(&[
            InputEvent::Wheel {
                axis: WheelAxis::Vertical,
                delta: -120,
                x: 0,
                y: 0,
            },
            InputEvent::Wheel {
                axis: WheelAxis::Horizontal,
                delta: 120,
                x: 0,
                y: 0,
            },
        ]);
        let v = mouse(&evs[0]);
        assert!(v.flags.contains(PointerFlags::VERTICAL_WHEEL));
        assert_eq!(v.number_of_wheel_rotation_units, -120);
        let h = mouse(&evs[1]);
        assert!(h.flags.contains(PointerFlags::HORIZONTAL_WHEEL));
        assert_eq!(h.number_of_wheel_rotation_units, 120);

        let mut out = Vec::new();
        wheel(&mut out, WheelAxis::Vertical, 600, 0, 0);
        let units: Vec<i16> = out
            .iter()
            .map(|e| mouse(e).number_of_wheel_rotation_units)
            .collect();
        assert_eq!(units, [255, 255, 90]);
        out.clear();
        wheel(&mut out, WheelAxis::Vertical, -600, 0, 0);
        assert_eq!(out.len(), 3);
        out.clear();
        wheel(&mut out, WheelAxis::Vertical, 0, 0, 0);
        assert!(out.is_empty());
    }

    #[test]
    fn keys() {
        let evs = round_trip(&[
            InputEvent::Key {
                scancode: 0x1e,
                extended: false,
                down: true,
            },
            InputEvent::Key {
                scancode: 0x48,
                extended: true,
                down: false,
            },
            InputEvent::Unicode {
                code_unit: 0x20ac,
                down: true,
            },
        ]);
        assert_eq!(
            evs,
            [
                FastPathInputEvent::KeyboardEvent(KeyboardFlags::empty(), 0x1e),
                FastPathInputEvent::KeyboardEvent(
                    KeyboardFlags::EXTENDED | KeyboardFlags::RELEASE,
                    0x48
                ),
                FastPathInputEvent::UnicodeKeyboardEvent(KeyboardFlags::empty(), 0x20ac),
            ]
        );
    }
}

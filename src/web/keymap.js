// KeyboardEvent.code → PC scancode set 1 (what RDP sends), as [scancode, extended].
// `code` names the physical key whatever the local layout is, so the server applies its
// own layout to it, as with a local keyboard. Extended keys are the ones whose set-1 make
// code is prefixed with E0.

const E = true; // extended (E0 prefix)

export const SCANCODES = {
  // Main block, top row.
  Escape: [0x01], Digit1: [0x02], Digit2: [0x03], Digit3: [0x04], Digit4: [0x05],
  Digit5: [0x06], Digit6: [0x07], Digit7: [0x08], Digit8: [0x09], Digit9: [0x0a],
  Digit0: [0x0b], Minus: [0x0c], Equal: [0x0d], Backspace: [0x0e],
  // Letter rows.
  Tab: [0x0f], KeyQ: [0x10], KeyW: [0x11], KeyE: [0x12], KeyR: [0x13], KeyT: [0x14],
  KeyY: [0x15], KeyU: [0x16], KeyI: [0x17], KeyO: [0x18], KeyP: [0x19],
  BracketLeft: [0x1a], BracketRight: [0x1b], Enter: [0x1c],
  CapsLock: [0x3a], KeyA: [0x1e], KeyS: [0x1f], KeyD: [0x20], KeyF: [0x21], KeyG: [0x22],
  KeyH: [0x23], KeyJ: [0x24], KeyK: [0x25], KeyL: [0x26], Semicolon: [0x27], Quote: [0x28],
  Backquote: [0x29], Backslash: [0x2b],
  // IntlBackslash is the 105-key layout's extra key left of Z.
  IntlBackslash: [0x56], KeyZ: [0x2c], KeyX: [0x2d], KeyC: [0x2e], KeyV: [0x2f],
  KeyB: [0x30], KeyN: [0x31], KeyM: [0x32], Comma: [0x33], Period: [0x34], Slash: [0x35],
  Space: [0x39],
  // Modifiers, left and right.
  ShiftLeft: [0x2a], ShiftRight: [0x36], ControlLeft: [0x1d], ControlRight: [0x1d, E],
  AltLeft: [0x38], AltRight: [0x38, E], MetaLeft: [0x5b, E], MetaRight: [0x5c, E],
  OSLeft: [0x5b, E], OSRight: [0x5c, E], // older browsers' names for the Windows keys
  ContextMenu: [0x5d, E],
  // Function keys.
  F1: [0x3b], F2: [0x3c], F3: [0x3d], F4: [0x3e], F5: [0x3f], F6: [0x40], F7: [0x41],
  F8: [0x42], F9: [0x43], F10: [0x44], F11: [0x57], F12: [0x58],
  F13: [0x64], F14: [0x65], F15: [0x66], F16: [0x67], F17: [0x68], F18: [0x69],
  F19: [0x6a], F20: [0x6b], F21: [0x6c], F22: [0x6d], F23: [0x6e], F24: [0x76],
  // PrintScreen, ScrollLock, Pause. Pause's real make code is the six-byte E1 1D 45 E1 9D C5,
  // which one scancode cannot carry; E0 46 (Ctrl+Break) is what RDP clients send instead.
  PrintScreen: [0x37, E], ScrollLock: [0x46], Pause: [0x46, E],
  // Navigation cluster and arrows.
  Insert: [0x52, E], Delete: [0x53, E], Home: [0x47, E], End: [0x4f, E],
  PageUp: [0x49, E], PageDown: [0x51, E],
  ArrowUp: [0x48, E], ArrowDown: [0x50, E], ArrowLeft: [0x4b, E], ArrowRight: [0x4d, E],
  // Numeric keypad.
  NumLock: [0x45], NumpadDivide: [0x35, E], NumpadMultiply: [0x37], NumpadSubtract: [0x4a],
  NumpadAdd: [0x4e], NumpadEnter: [0x1c, E], NumpadDecimal: [0x53],
  Numpad0: [0x52], Numpad1: [0x4f], Numpad2: [0x50], Numpad3: [0x51], Numpad4: [0x4b],
  Numpad5: [0x4c], Numpad6: [0x4d], Numpad7: [0x47], Numpad8: [0x48], Numpad9: [0x49],
  NumpadEqual: [0x59], NumpadComma: [0x7e],
  // Japanese, Brazilian and Korean keyboards.
  IntlRo: [0x73], IntlYen: [0x7d], KanaMode: [0x70], Convert: [0x79], NonConvert: [0x7b],
  Lang1: [0x72], Lang2: [0x71],
  // Media and browser keys.
  AudioVolumeMute: [0x20, E], AudioVolumeDown: [0x2e, E], AudioVolumeUp: [0x30, E],
  MediaPlayPause: [0x22, E], MediaStop: [0x24, E],
  MediaTrackPrevious: [0x10, E], MediaTrackNext: [0x19, E],
  BrowserBack: [0x6a, E], BrowserForward: [0x69, E], BrowserRefresh: [0x67, E],
  BrowserStop: [0x68, E], BrowserSearch: [0x65, E], BrowserFavorites: [0x66, E],
  BrowserHome: [0x32, E], LaunchMail: [0x6c, E], LaunchApp1: [0x6b, E], LaunchApp2: [0x21, E],
  MediaSelect: [0x6d, E], Power: [0x5e, E], Sleep: [0x5f, E], WakeUp: [0x63, E],
};

// `{scancode, extended}` for a KeyboardEvent.code, or null when the key has none.
export function scancodeOf(code) {
  const entry = Object.prototype.hasOwnProperty.call(SCANCODES, code) ? SCANCODES[code] : null;
  return entry ? { scancode: entry[0], extended: entry[1] === true } : null;
}

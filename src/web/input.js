// Mouse, wheel and keyboard of the page → protocol input messages. Pointer positions are
// sent in desktop coordinates: the screen canvas may be shown scaled (CSS), so positions are
// mapped back through its on-page box. Keys go as set-1 scancodes (keymap.js); a key with no
// scancode but a printable character goes as Unicode.

import * as proto from "./protocol.js";
import { scancodeOf } from "./keymap.js";

// DOM MouseEvent.button → protocol button (0 left, 1 right, 2 middle, 3 back, 4 forward).
const BUTTONS = [0, 2, 1, 3, 4];

// Wheel deltas → 120 units per notch. Chrome and Firefox report a notch as 100 px
// (deltaMode 0) or 3 lines (deltaMode 1); a page (deltaMode 2) counts as one notch.
const WHEEL_UNITS = [1.2, 40, 120];

const clampI16 = (v) => Math.max(-32768, Math.min(32767, v));

// A character worth sending as Unicode: one code point, not a control character.
function printable(key) {
  if (typeof key !== "string" || key.length === 0) return false;
  const points = [...key];
  if (points.length !== 1) return false; // "Enter", "Unidentified", "Dead", …
  const cp = points[0].codePointAt(0);
  return cp >= 0x20 && cp !== 0x7f && !(cp >= 0x80 && cp < 0xa0);
}

// Keys for an element of the page rather than the desktop: inside `[data-keys="own"]`.
function ownKeys(target) {
  return target instanceof Element && target.closest("[data-keys='own']") !== null;
}

export class Input {
  // `send(buffer)` sends one message; `active()` says whether input should flow now.
  constructor(screen, send, active) {
    this.screen = screen;
    this.send = send;
    this.active = active;
    this.heldKeys = new Map();   // code → {scancode, extended}
    this.heldButtons = new Set(); // protocol button numbers
    this.last = null;            // last position sent, {x, y}
    this.wheelRest = [0, 0];     // fractions of a unit not yet sent, per axis
    this.sent = { keys: 0, unicode: 0, buttons: 0, moves: 0, wheels: 0 };
  }

  attach() {
    const s = this.screen;
    s.addEventListener("mousedown", (e) => this.onButton(e, true));
    // Releases are caught on the window so a drag that ends outside the canvas still ends.
    window.addEventListener("mouseup", (e) => this.onButton(e, false));
    window.addEventListener("mousemove", (e) => this.onMove(e));
    s.addEventListener("wheel", (e) => this.onWheel(e), { passive: false });
    s.addEventListener("contextmenu", (e) => e.preventDefault());
    // Back/forward buttons would navigate the page away from the session.
    s.addEventListener("auxclick", (e) => e.preventDefault());
    window.addEventListener("keydown", (e) => this.onKey(e, true));
    window.addEventListener("keyup", (e) => this.onKey(e, false));
    // Keys released while the page has no focus never reach it: release them all now so
    // none stays held on the server.
    window.addEventListener("blur", () => this.releaseAll());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "hidden") this.releaseAll();
    });
  }

  // Desktop position of a mouse event, clamped to the desktop.
  toDesktop(e) {
    const box = this.screen.getBoundingClientRect();
    const w = this.screen.width;
    const h = this.screen.height;
    if (box.width === 0 || box.height === 0) return { x: 0, y: 0, inside: false };
    const fx = ((e.clientX - box.left) * w) / box.width;
    const fy = ((e.clientY - box.top) * h) / box.height;
    const inside = fx >= 0 && fy >= 0 && fx < w && fy < h;
    return {
      x: Math.max(0, Math.min(w - 1, Math.floor(fx))),
      y: Math.max(0, Math.min(h - 1, Math.floor(fy))),
      inside,
    };
  }

  moveTo(p) {
    if (this.last && this.last.x === p.x && this.last.y === p.y) return;
    this.last = { x: p.x, y: p.y };
    this.send(proto.mouseMove(p.x, p.y));
    this.sent.moves++;
  }

  onMove(e) {
    if (!this.active()) return;
    const p = this.toDesktop(e);
    if (!p.inside && this.heldButtons.size === 0) return;
    this.moveTo(p);
  }

  onButton(e, down) {
    if (!this.active()) return;
    const button = BUTTONS[e.button];
    if (button === undefined) return;
    if (!down && !this.heldButtons.has(button)) return; // pressed elsewhere on the page
    // No text selection or focus change on press; and the browser navigates back/forward
    // on the release of buttons 3 and 4 unless that is prevented too.
    e.preventDefault();
    const p = this.toDesktop(e);
    if (down) {
      this.screen.focus({ preventScroll: true });
      this.heldButtons.add(button);
    } else {
      this.heldButtons.delete(button);
    }
    this.moveTo(p);
    this.send(proto.mouseButton(button, down, p.x, p.y));
    this.sent.buttons++;
  }

  onWheel(e) {
    e.preventDefault();
    if (!this.active()) return;
    const p = this.toDesktop(e);
    const unit = WHEEL_UNITS[e.deltaMode] || WHEEL_UNITS[0];
    // Protocol: vertical positive is away from the user (DOM deltaY is positive towards);
    // horizontal positive is to the right, as in the DOM.
    const deltas = [-e.deltaY * unit, e.deltaX * unit];
    for (let axis = 0; axis < 2; axis++) {
      this.wheelRest[axis] += deltas[axis];
      const whole = Math.trunc(this.wheelRest[axis]);
      if (whole === 0) continue;
      this.wheelRest[axis] -= whole;
      const delta = clampI16(whole);
      this.moveTo(p);
      this.send(proto.wheel(axis, delta, p.x, p.y));
      this.sent.wheels++;
    }
  }

  onKey(e, down) {
    if (!this.active() || e.isComposing) return;
    const sc = scancodeOf(e.code);
    // Page controls with focus (sound) keep their keys; a key held on the desktop is still
    // released there, or it would stay down on the server.
    if (ownKeys(e.target) && !(!down && sc && this.heldKeys.has(e.code))) return;
    if (sc) {
      e.preventDefault();
      if (down) this.heldKeys.set(e.code, sc);
      else this.heldKeys.delete(e.code);
      this.send(proto.key(sc.scancode, sc.extended, down));
      this.sent.keys++;
      return;
    }
    // No scancode: send the character itself, pressed and released, on key-down.
    if (down && printable(e.key)) {
      e.preventDefault();
      for (let i = 0; i < e.key.length; i++) {
        const unit = e.key.charCodeAt(i);
        this.send(proto.unicode(unit, true));
        this.send(proto.unicode(unit, false));
      }
      this.sent.unicode++;
    }
  }

  releaseAll() {
    if (!this.active()) {
      this.heldKeys.clear();
      this.heldButtons.clear();
      return;
    }
    for (const sc of this.heldKeys.values()) {
      this.send(proto.key(sc.scancode, sc.extended, false));
      this.sent.keys++;
    }
    this.heldKeys.clear();
    const at = this.last || { x: 0, y: 0 };
    for (const b of this.heldButtons) {
      this.send(proto.mouseButton(b, false, at.x, at.y));
      this.sent.buttons++;
    }
    this.heldButtons.clear();
  }
}

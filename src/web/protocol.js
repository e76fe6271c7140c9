// Browser ⇄ gateway protocol, version 1 (docs/protocol.md): decodes what the gateway sends and
// encodes what the page sends. One WebSocket binary message per protocol message:
// [version u8][type u8][payload], integers little-endian.

export const VERSION = 1;

// Gateway → browser.
export const SERVER_HELLO = 0x01;
export const PONG = 0x02;
export const STATUS = 0x03;
export const DISCONNECTED = 0x04;
export const DESKTOP_SIZE = 0x05;
export const RESUME_TICKET = 0x06;
export const RESET_GRAPHICS = 0x10;
export const CREATE_SURFACE = 0x11;
export const DELETE_SURFACE = 0x12;
export const MAP_SURFACE_TO_OUTPUT = 0x13;
export const START_FRAME = 0x14;
export const END_FRAME = 0x15;
export const AVC420 = 0x16;
export const SOLID_FILL = 0x17;
export const SURFACE_TO_SURFACE = 0x18;
export const SURFACE_TO_CACHE = 0x19;
export const CACHE_TO_SURFACE = 0x1a;
export const EVICT_CACHE_ENTRY = 0x1b;
export const POINTER = 0x1c;
export const TILE = 0x1d;
export const TILE_ALPHA = 0x1e;
export const AUDIO_START = 0x20;
export const AUDIO_PACKET = 0x21;
export const AUDIO_STOP = 0x22;

// Browser → gateway.
const PING = 0x81;
const CLIENT_HELLO = 0x82;
const FRAME_DECODED = 0x83;
const MOUSE_MOVE = 0x84;
const MOUSE_BUTTON = 0x85;
const WHEEL = 0x86;
const KEY = 0x87;
const UNICODE = 0x88;
const RESIZE = 0x89;
const AUDIO_BUFFER = 0x8a;
const TOKEN_HELLO = 0x8b;
const RESUME = 0x8c;

// Bytes of a resume ticket.
export const TICKET_LEN = 32;

// AudioStart.codec values.
export const AUDIO_CODEC_OPUS = 1;
// AudioBuffer.buffer_ms is at most this.
export const MAX_AUDIO_BUFFER_MS = 10000;

// Status.state values.
export const STATUS_STATES = ["connecting", "authenticating", "connected", "reconnecting"];

// Pointer.kind values.
export const POINTER_DEFAULT = 0;
export const POINTER_HIDDEN = 1;
export const POINTER_POSITION = 2;
export const POINTER_BITMAP = 3;

export class ProtocolError extends Error {}

const utf8 = new TextDecoder("utf-8");

// Reads fields in order and refuses to read past the end, so a short message is an error
// rather than a picture drawn from garbage.
class Reader {
  constructor(buf, type) {
    this.v = new DataView(buf);
    this.buf = buf;
    this.at = 2;
    this.type = type;
  }
  need(n) {
    if (this.at + n > this.v.byteLength) {
      throw new ProtocolError(
        `message type 0x${this.type.toString(16)} is too short (${this.v.byteLength} bytes)`);
    }
  }
  u8() { this.need(1); return this.v.getUint8(this.at++); }
  u16() { this.need(2); const x = this.v.getUint16(this.at, true); this.at += 2; return x; }
  u32() { this.need(4); const x = this.v.getUint32(this.at, true); this.at += 4; return x; }
  u64() { this.need(8); const x = this.v.getBigUint64(this.at, true); this.at += 8; return x; }
  rect() { return { left: this.u16(), top: this.u16(), right: this.u16(), bottom: this.u16() }; }
  point() { return { x: this.u16(), y: this.u16() }; }
  rects() { const n = this.u16(); const out = []; for (let i = 0; i < n; i++) out.push(this.rect()); return out; }
  points() { const n = this.u16(); const out = []; for (let i = 0; i < n; i++) out.push(this.point()); return out; }
  color() { return { r: this.u8(), g: this.u8(), b: this.u8(), a: this.u8() }; }
  // The rest of the message, without copying.
  rest() { const b = new Uint8Array(this.buf, this.at); this.at = this.v.byteLength; return b; }
  text() { return utf8.decode(this.rest()); }
}

// A tile's payload must be exactly its rectangle's pixels.
function exactly(bytes, rect, perPixel, name) {
  const w = rect.right - rect.left;
  const h = rect.bottom - rect.top;
  if (w <= 0 || h <= 0 || bytes.byteLength !== w * h * perPixel) {
    throw new ProtocolError(`${name} of ${w}×${h} carries ${bytes.byteLength} bytes`);
  }
}

// Decodes one gateway message into `{type, ...fields}`; unknown types come back as
// `{type, unknown: true}` so a newer gateway does not break an older page.
export function decode(buf) {
  const v = new DataView(buf);
  if (v.byteLength < 2) throw new ProtocolError(`message of ${v.byteLength} bytes has no header`);
  if (v.getUint8(0) !== VERSION) {
    throw new ProtocolError(`protocol version ${v.getUint8(0)} is not supported (this page speaks ${VERSION})`);
  }
  const type = v.getUint8(1);
  const r = new Reader(buf, type);
  switch (type) {
    case SERVER_HELLO: return { type, sessionId: r.u64(), core: r.u16(), maxMessage: r.u32() };
    case PONG: return { type, nonce: r.u64() };
    case STATUS: return { type, state: r.u8(), text: r.text() };
    case DISCONNECTED: return { type, reason: r.text() };
    case DESKTOP_SIZE: return { type, width: r.u16(), height: r.u16() };
    case RESUME_TICKET: {
      const m = { type, sessionId: r.u64(), graceSecs: r.u32() };
      r.need(TICKET_LEN);
      m.ticket = new Uint8Array(buf.slice(r.at, r.at + TICKET_LEN));
      r.at += TICKET_LEN;
      return m;
    }
    case RESET_GRAPHICS: return { type, width: r.u16(), height: r.u16() };
    case CREATE_SURFACE: return { type, surface: r.u16(), width: r.u16(), height: r.u16(), format: r.u8() };
    case DELETE_SURFACE: return { type, surface: r.u16() };
    case MAP_SURFACE_TO_OUTPUT: return { type, surface: r.u16(), x: r.u16(), y: r.u16() };
    case START_FRAME: return { type, frameId: r.u32() };
    case END_FRAME: return { type, frameId: r.u32() };
    case AVC420: return { type, surface: r.u16(), dest: r.rect(), regions: r.rects(), accessUnit: r.rest() };
    case SOLID_FILL: return { type, surface: r.u16(), color: r.color(), rects: r.rects() };
    case SURFACE_TO_SURFACE: return { type, src: r.u16(), dst: r.u16(), srcRect: r.rect(), points: r.points() };
    case SURFACE_TO_CACHE: return { type, surface: r.u16(), slot: r.u16(), srcRect: r.rect() };
    case CACHE_TO_SURFACE: return { type, slot: r.u16(), surface: r.u16(), points: r.points() };
    case EVICT_CACHE_ENTRY: return { type, slot: r.u16() };
    case POINTER: {
      const kind = r.u8();
      if (kind === POINTER_POSITION) return { type, kind, x: r.u16(), y: r.u16() };
      if (kind === POINTER_BITMAP) {
        const m = { type, kind, width: r.u16(), height: r.u16(), hotX: r.u16(), hotY: r.u16(), rgba: r.rest() };
        if (m.rgba.byteLength < m.width * m.height * 4) {
          throw new ProtocolError(`pointer bitmap ${m.width}×${m.height} has only ${m.rgba.byteLength} bytes`);
        }
        return m;
      }
      return { type, kind };
    }
    case TILE: {
      const m = { type, surface: r.u16(), rect: r.rect(), rgba: r.rest() };
      exactly(m.rgba, m.rect, 4, "Tile");
      return m;
    }
    case TILE_ALPHA: {
      const m = { type, surface: r.u16(), rect: r.rect(), alpha: r.rest() };
      exactly(m.alpha, m.rect, 1, "TileAlpha");
      return m;
    }
    case AUDIO_START: return { type, codec: r.u8(), sampleRate: r.u32(), channels: r.u8() };
    case AUDIO_PACKET:
      // A stream position in µs stays exact as a Number for 285 years.
      return { type, timestampUs: Number(r.u64()), durationUs: r.u32(), dropped: r.u32(), data: r.rest() };
    case AUDIO_STOP: return { type };
    default: return { type, unknown: true };
  }
}

// Builds one browser message: `size` payload bytes filled by `fill(DataView)` at offset 2.
function message(type, size, fill) {
  const buf = new ArrayBuffer(2 + size);
  const v = new DataView(buf);
  v.setUint8(0, VERSION);
  v.setUint8(1, type);
  if (fill) fill(v);
  return buf;
}

export function ping(nonce) {
  return message(PING, 8, (v) => v.setBigUint64(2, BigInt(nonce), true));
}

export function clientHello(width, height, target) {
  const name = new TextEncoder().encode(target);
  return message(CLIENT_HELLO, 4 + name.byteLength, (v) => {
    v.setUint16(2, width, true);
    v.setUint16(4, height, true);
    new Uint8Array(v.buffer, 6).set(name);
  });
}

// The hello of a page opened with a connection token (`/#token=…`) instead of a target name.
export function tokenHello(width, height, token) {
  const text = new TextEncoder().encode(token);
  return message(TOKEN_HELLO, 4 + text.byteLength, (v) => {
    v.setUint16(2, width, true);
    v.setUint16(4, height, true);
    new Uint8Array(v.buffer, 6).set(text);
  });
}

// The first message on `/ws?resume=ID`: the session to take over and its ticket.
export function resume(sessionId, ticket) {
  return message(RESUME, 8 + TICKET_LEN, (v) => {
    v.setBigUint64(2, BigInt(sessionId), true);
    new Uint8Array(v.buffer, 10, TICKET_LEN).set(ticket);
  });
}

export function frameDecoded(frameId, framesDecoded, queueDepth) {
  return message(FRAME_DECODED, 10, (v) => {
    v.setUint32(2, frameId, true);
    v.setUint32(6, framesDecoded >>> 0, true);
    v.setUint16(10, Math.min(queueDepth, 0xffff), true);
  });
}

export function mouseMove(x, y) {
  return message(MOUSE_MOVE, 4, (v) => { v.setUint16(2, x, true); v.setUint16(4, y, true); });
}

export function mouseButton(button, down, x, y) {
  return message(MOUSE_BUTTON, 6, (v) => {
    v.setUint8(2, button);
    v.setUint8(3, down ? 1 : 0);
    v.setUint16(4, x, true);
    v.setUint16(6, y, true);
  });
}

export function wheel(axis, delta, x, y) {
  return message(WHEEL, 7, (v) => {
    v.setUint8(2, axis);
    v.setInt16(3, delta, true);
    v.setUint16(5, x, true);
    v.setUint16(7, y, true);
  });
}

export function key(scancode, extended, down) {
  return message(KEY, 3, (v) => {
    v.setUint8(2, scancode);
    v.setUint8(3, extended ? 1 : 0);
    v.setUint8(4, down ? 1 : 0);
  });
}

export function unicode(codeUnit, down) {
  return message(UNICODE, 3, (v) => {
    v.setUint16(2, codeUnit, true);
    v.setUint8(4, down ? 1 : 0);
  });
}

export function resize(width, height) {
  return message(RESIZE, 4, (v) => {
    v.setUint16(2, width, true);
    v.setUint16(4, height, true);
  });
}

export function audioBuffer(bufferMs) {
  const ms = Math.max(0, Math.min(MAX_AUDIO_BUFFER_MS, Math.round(bufferMs)));
  return message(AUDIO_BUFFER, 2, (v) => v.setUint16(2, ms, true));
}

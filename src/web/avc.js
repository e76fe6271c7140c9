// H.264 (AVC420) for one RDP surface: Annex B parsing, the WebCodecs codec string from the
// SPS, and a VideoDecoder that hands back each access unit's picture as a promise, so the
// compositor can apply it in message order.

import { withFullRangeBt709 } from "./sps.js";

const NAL_IDR = 5;
const NAL_SPS = 7;

// NAL units of an Annex B access unit, as subarrays without their start codes.
export function nalUnits(au) {
  const out = [];
  let start = -1;
  let i = 0;
  while (i + 2 < au.length) {
    // A start code is 00 00 01 (a 4-byte 00 00 00 01 ends in the same three bytes).
    if (au[i] === 0 && au[i + 1] === 0 && au[i + 2] === 1) {
      if (start >= 0) out.push(trimZeros(au.subarray(start, i)));
      i += 3;
      start = i;
    } else {
      i++;
    }
  }
  if (start >= 0 && start < au.length) out.push(au.subarray(start));
  return out.filter((n) => n.length > 0);
}

// Drops the zero bytes that belong to the next start code (00 00 00 01) or trail the NAL.
function trimZeros(nal) {
  let end = nal.length;
  while (end > 0 && nal[end - 1] === 0) end--;
  return nal.subarray(0, end);
}

export function nalType(nal) {
  return nal[0] & 0x1f;
}

// `avc1.PPCCLL`: profile_idc, the constraint-flag byte and level_idc, the first three bytes
// after the SPS NAL header (emulation prevention cannot occur there for any real profile).
export function codecFromSps(sps) {
  if (sps.length < 4) return null;
  const hex = (b) => b.toString(16).padStart(2, "0").toUpperCase();
  return `avc1.${hex(sps[1])}${hex(sps[2])}${hex(sps[3])}`;
}

// What the decoder needs to know about an access unit: is it a key frame, and its codec.
export function inspect(au) {
  let key = false;
  let codec = null;
  for (const nal of nalUnits(au)) {
    const t = nalType(nal);
    if (t === NAL_IDR) key = true;
    else if (t === NAL_SPS && codec === null) codec = codecFromSps(nal);
  }
  return { key, codec };
}

// The access unit with its SPS saying full-range BT.709, the conversion MS-RDPEGFX
// 3.3.8.3.1 prescribes (see sps.js); `au` itself when it has no SPS or says so already.
export function withRdpColours(au) {
  const nals = nalUnits(au);
  const i = nals.findIndex((n) => nalType(n) === NAL_SPS);
  if (i < 0) return au;
  let sps;
  try {
    sps = withFullRangeBt709(nals[i]);
  } catch (e) {
    console.warn("rdpwire: SPS not rewritten, colours may be off:", e.message);
    return au;
  }
  if (sps === nals[i]) return au;
  nals[i] = sps;
  const out = new Uint8Array(nals.reduce((n, nal) => n + 4 + nal.length, 0));
  let at = 0;
  for (const nal of nals) {
    out.set([0, 0, 0, 1], at);
    out.set(nal, at + 4);
    at += 4 + nal.length;
  }
  return out;
}

// A picture that takes longer than this is given up (its frame is acknowledged without it),
// so one lost decoder output cannot stop the stream for good.
const OUTPUT_TIMEOUT_MS = 5000;

// One VideoDecoder for one surface. `decode(au)` returns a promise of the VideoFrame for
// that access unit, or null when it was skipped (no key frame yet, decoder failed). The
// caller must close() every frame it receives.
export class SurfaceDecoder {
  constructor(onError, onRecovered) {
    this.onError = onError;
    this.onRecovered = onRecovered;
    this.decoder = null;
    this.codec = null;
    this.failed = false;     // an error happened; wait for the next key frame
    this.hadError = false;   // reported an error and has not shown a picture since
    this.nextTimestamp = 0;
    this.pending = new Map(); // timestamp → {resolve, timer}
    this.skipped = 0;
    this.outputs = 0;
    this.colorSpace = null;  // what the first picture's VideoFrame reported, for diagnostics
    this.decodeMs = null;    // the last picture's time from decode() to output
  }

  get queueSize() {
    return this.decoder && this.decoder.state === "configured" ? this.decoder.decodeQueueSize : 0;
  }

  decode(au) {
    const { key, codec } = inspect(au);
    if (key) {
      const wanted = codec || this.codec;
      if (!wanted) return this.skip(); // a key frame without SPS before any SPS: nothing to configure
      if (!this.usable() || wanted !== this.codec) this.start(wanted);
    }
    if (!this.usable()) return this.skip();
    const timestamp = this.nextTimestamp++;
    const data = withRdpColours(au);
    const chunk = new EncodedVideoChunk({ type: key ? "key" : "delta", timestamp, data });
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.settle(timestamp, null), OUTPUT_TIMEOUT_MS);
      this.pending.set(timestamp, { resolve, timer, sent: performance.now() });
      try {
        this.decoder.decode(chunk);
      } catch (e) {
        this.fail(e);
      }
    });
  }

  usable() {
    return !this.failed && this.decoder !== null && this.decoder.state === "configured";
  }

  skip() {
    this.skipped++;
    return Promise.resolve(null);
  }

  start(codec) {
    this.stop();
    this.codec = codec;
    this.failed = false;
    try {
      this.decoder = new VideoDecoder({
        output: (frame) => this.output(frame),
        error: (e) => this.fail(e),
      });
      // Annex B without `description`: SPS and PPS travel in-band with every key frame.
      this.decoder.configure({ codec, optimizeForLatency: true });
    } catch (e) {
      this.fail(e);
    }
  }

  output(frame) {
    this.outputs++;
    if (!this.colorSpace && frame.colorSpace) this.colorSpace = frame.colorSpace.toJSON();
    if (this.hadError) {
      this.hadError = false;
      this.onRecovered();
    }
    // Outputs come in decode order: anything older that produced no picture never will.
    for (const ts of this.pending.keys()) {
      if (ts < frame.timestamp) this.settle(ts, null);
    }
    if (!this.settle(frame.timestamp, frame)) frame.close();
  }

  settle(timestamp, frame) {
    const p = this.pending.get(timestamp);
    if (!p) return false;
    this.pending.delete(timestamp);
    clearTimeout(p.timer);
    if (frame) this.decodeMs = performance.now() - p.sent;
    p.resolve(frame);
    return true;
  }

  fail(e) {
    this.failed = true;
    this.hadError = true;
    this.dropPending();
    this.onError(`${e && e.name ? e.name + ": " : ""}${e && e.message ? e.message : e} (codec ${this.codec})`);
  }

  dropPending() {
    for (const ts of [...this.pending.keys()]) this.settle(ts, null);
  }

  stop() {
    this.dropPending();
    if (this.decoder && this.decoder.state !== "closed") {
      try { this.decoder.close(); } catch (_) { /* already closed by an error */ }
    }
    this.decoder = null;
  }
}

// The desktop's sound (docs/protocol.md, "Audio"): Opus packets → WebCodecs AudioDecoder →
// the jitter buffer in audio-worklet.js → a GainNode (volume, mute) → the speakers. Also the
// page's sound controls: the "click to enable sound" banner the browser's autoplay rule makes
// necessary, a mute toggle and a volume slider.
//
// Audio trouble never ends the session: a stream the page cannot play (an unknown codec, a
// packet without a stream, a decoder error) is warned about on the console, counted in
// `audioErrors`, and the desktop goes on.

import * as proto from "./protocol.js";

const WORKLET_URL = new URL("./audio-worklet.js", import.meta.url);
const PROCESSOR = "rdpwire-player";
// The jitter buffer's policy (audio-worklet.js): start at 40 ms, raise after an underrun up to
// 200 ms, lower by 10 ms after 10 s without one, drop the oldest beyond target + 150 ms.
const JITTER = { minTargetMs: 40, maxTargetMs: 200, slackMs: 150, stableMs: 10000, stepDownMs: 10 };
const BUFFER_REPORT_MS = 250; // AudioBuffer at most this often (protocol)
// Packets waiting in the decoder beyond this (~1 s of 20 ms packets) mean the page cannot keep
// up; newer audio is worth more than a longer queue.
const MAX_DECODE_QUEUE = 50;
const MIN_RATE = 8000;
const MAX_RATE = 192000;

export class Audio {
  // `send(buffer)` sends one protocol message; `els` the page's controls: {panel, enable,
  // mute, volume} (index.html).
  constructor(send, els) {
    this.send = send;
    this.els = els;
    this.ctx = null;
    this.gain = null;
    this.node = null;
    this.toWorklet = [];   // messages waiting for the worklet to load
    this.decoder = null;
    this.pending = [];     // timestamp_us of the packets in `decoder`, in decode order
    this.stream = null;    // {sampleRate, channels, gen} of the stream running, or null
    this.gen = 0;
    this.nextChunk = 1;
    this.muted = false;
    this.volume = 100;
    this.playState = "idle"; // the worklet's: idle | buffering | playing
    this.lastBufferSent = -Infinity;
    this.captured = null;  // {chunks} while capturing
    // Suspended by the page itself while no stream runs, so an idle desktop costs the audio
    // thread nothing. Only a context that ran is parked: the user's gesture that started it
    // still counts, so it resumes without another click.
    this.parked = false;
    this.closed = false;
    this.s = {
      packets: 0,          // AudioPackets received
      decoded: 0,          // chunks out of the decoder
      bufferMs: 0,         // jitter buffer depth, as the worklet last reported it
      targetMs: JITTER.minTargetMs,
      gatewayDropped: 0,   // the latest AudioPacket.dropped
      pageDropped: 0,      // packets the page dropped: decoder backlog, jitter buffer catch-up
      underruns: 0,
      buffersSent: 0,      // AudioBuffer messages
      errors: 0,
      error: null,         // the latest trouble, in words
    };
    this.noStreamWarned = false; // packets without a stream were warned about since the last stop
  }

  attach() {
    const { enable, mute, volume } = this.els;
    enable.addEventListener("click", () => this.resume());
    mute.addEventListener("click", () => this.setMuted(!this.muted));
    volume.addEventListener("input", () => this.setVolume(Number(volume.value)));
    // Any gesture on the page counts for the autoplay rule: a user who clicks into the
    // desktop or types has chosen to use it, sound included.
    const gesture = () => { if (this.stream && this.ctx && this.ctx.state !== "running") this.resume(); };
    window.addEventListener("pointerdown", gesture, true);
    window.addEventListener("keydown", gesture, true);
    this.applyGain();
  }

  // --- messages from the gateway -----------------------------------------------------------

  start(m) {
    if (this.closed) return;
    this.endStream();
    // Packets of a stream refused here are the expected sequel of a warning already given.
    this.noStreamWarned = true;
    if (typeof AudioDecoder === "undefined" || typeof AudioWorkletNode === "undefined") {
      this.trouble("this browser cannot play the desktop's sound: WebCodecs AudioDecoder or AudioWorklet is missing");
      return;
    }
    if (m.codec !== proto.AUDIO_CODEC_OPUS) {
      this.trouble(`AudioStart with codec ${m.codec}: this page plays only Opus (1); the stream is ignored`);
      return;
    }
    if (m.channels !== 1 && m.channels !== 2) {
      this.trouble(`AudioStart with ${m.channels} channels: 1 or 2 expected; the stream is ignored`);
      return;
    }
    if (m.sampleRate < MIN_RATE || m.sampleRate > MAX_RATE) {
      this.trouble(`AudioStart with sample rate ${m.sampleRate}: the stream is ignored`);
      return;
    }
    if (!this.ensureContext(m.sampleRate)) return;
    this.stream = { sampleRate: m.sampleRate, channels: m.channels, gen: ++this.gen };
    if (this.parked) this.resume();
    this.post({ type: "start" });
    this.els.panel.hidden = false;
    this.updateBanner();
  }

  packet(m) {
    if (this.closed) return;
    this.s.packets++;
    this.s.gatewayDropped = m.dropped;
    const st = this.stream;
    if (!st) {
      // Warned once per gap, not once per packet: a stream arrives 50 times a second.
      if (!this.noStreamWarned) {
        this.noStreamWarned = true;
        this.trouble("AudioPacket without an AudioStart: ignored until the next AudioStart");
      }
      return;
    }
    // Nothing can be heard until the user enables sound: no point decoding.
    if (!this.running()) return;
    if (m.data.byteLength === 0) return; // a decoder closes itself on an empty chunk
    if (!this.decoder || this.decoder.state === "closed") {
      if (!this.newDecoder(st)) return;
    }
    if (this.decoder.decodeQueueSize > MAX_DECODE_QUEUE) {
      this.s.pageDropped++;
      return;
    }
    try {
      this.decoder.decode(new EncodedAudioChunk({
        type: "key",
        timestamp: m.timestampUs,
        duration: m.durationUs,
        data: m.data,
      }));
      this.pending.push(m.timestampUs); // outputs come later, never during decode()
    } catch (e) {
      this.trouble(`audio decoder: ${e.message}`);
    }
  }

  stop() {
    if (this.closed) return;
    this.noStreamWarned = false;
    this.endStream();
    this.updateBanner();
  }

  // The stream is over: what is decoded or still in the decoder plays out, and the worklet
  // stops waiting for more.
  endStream() {
    const st = this.stream;
    this.stream = null;
    const d = this.decoder;
    this.decoder = null;
    if (!st || !d || d.state !== "configured") {
      if (d && d.state !== "closed") d.close();
      this.post({ type: "end" });
      return;
    }
    const gen = this.gen;
    d.flush().catch(() => { /* closed meanwhile (the session ended): nothing to play out */ })
      .then(() => {
        if (d.state !== "closed") d.close();
        // A new stream may have begun while the decoder flushed: that one is not over.
        if (this.gen === gen) this.post({ type: "end" });
      });
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.stream = null;
    if (this.decoder && this.decoder.state !== "closed") this.decoder.close();
    this.decoder = null;
    this.post({ type: "clear" });
    if (this.ctx) this.ctx.close().catch(() => {});
    this.els.enable.hidden = true;
    this.els.panel.hidden = true;
  }

  // --- decoding ----------------------------------------------------------------------------

  newDecoder(st) {
    // Chromium numbers a decoder's outputs by counting samples from the first packet, so a
    // gap the gateway left (dropped packets) would vanish from `AudioData.timestamp`. Opus
    // gives one output per packet, in order: the packet's own timestamp comes from here.
    const pending = [];
    try {
      const d = new AudioDecoder({
        output: (data) => this.decoded(data, pending.length ? pending.shift() : data.timestamp),
        error: (e) => {
          // The decoder closed itself; the next packet gets a new one (every Opus packet is
          // a key frame), so a bad packet costs a moment of sound, not the stream.
          if (this.decoder === d) this.decoder = null;
          this.trouble(`audio decoder: ${e.message}`);
        },
      });
      d.configure({ codec: "opus", sampleRate: st.sampleRate, numberOfChannels: st.channels });
      this.decoder = d;
      this.pending = pending;
      return true;
    } catch (e) {
      this.trouble(`audio decoder: ${e.message}`);
      return false;
    }
  }

  decoded(data, timestampUs) {
    const t = performance.now();
    try {
      this.s.decoded++;
      if (this.closed || !this.running()) return;
      const n = data.numberOfFrames;
      const channels = Math.min(2, data.numberOfChannels);
      let planes = [];
      for (let c = 0; c < channels; c++) {
        const p = new Float32Array(n);
        data.copyTo(p, { planeIndex: c, format: "f32-planar" });
        planes.push(p);
      }
      if (data.sampleRate !== this.ctx.sampleRate) {
        planes = planes.map((p) => resample(p, data.sampleRate, this.ctx.sampleRate));
      }
      this.post(
        { type: "chunk", id: this.nextChunk++, t, ts: timestampUs, planes },
        planes.map((p) => p.buffer),
      );
    } finally {
      data.close();
    }
  }

  // --- output ------------------------------------------------------------------------------

  // One context for the page, at the stream's rate so nothing resamples in between; a stream
  // at another rate gets a new one (the user's earlier gesture still counts for it).
  ensureContext(rate) {
    if (this.ctx && this.ctx.sampleRate === rate) return true;
    if (this.ctx) {
      this.ctx.close().catch(() => {});
      this.ctx = null;
      this.node = null;
      this.toWorklet = [];
    }
    let ctx;
    try {
      ctx = new AudioContext({ sampleRate: rate, latencyHint: "interactive" });
    } catch (e) {
      this.trouble(`cannot open audio output at ${rate} Hz: ${e.message}`);
      return false;
    }
    this.ctx = ctx;
    this.parked = false;
    this.gain = ctx.createGain();
    this.gain.gain.value = this.gainValue();
    this.gain.connect(ctx.destination);
    ctx.onstatechange = () => this.updateBanner();
    ctx.audioWorklet.addModule(WORKLET_URL).then(() => {
      if (this.ctx !== ctx) return;
      const node = new AudioWorkletNode(ctx, PROCESSOR, {
        numberOfInputs: 0,
        numberOfOutputs: 1,
        outputChannelCount: [2],
        processorOptions: JITTER,
      });
      node.port.onmessage = (e) => this.onReport(e.data);
      node.connect(this.gain);
      this.node = node;
      if (this.captured) node.port.postMessage({ type: "capture", on: true });
      for (const [m, transfer] of this.toWorklet) node.port.postMessage(m, transfer);
      this.toWorklet = [];
    }).catch((e) => {
      if (this.ctx !== ctx) return;
      // Without the player nothing can be heard: stop decoding and queueing for it.
      this.ctx = null;
      this.toWorklet = [];
      ctx.close().catch(() => {});
      this.trouble(`cannot load the audio player: ${e.message}`);
      this.updateBanner();
    });
    return true;
  }

  post(m, transfer = []) {
    if (this.node) this.node.port.postMessage(m, transfer);
    else if (this.ctx) this.toWorklet.push([m, transfer]);
  }

  // Whether decoded audio can be heard (soon: a parked context is on its way back).
  running() {
    return this.ctx !== null && (this.ctx.state === "running" || this.parked);
  }

  onReport(r) {
    if (r.type !== "report") return;
    this.playState = r.state;
    this.s.bufferMs = Math.round(r.depthMs);
    this.s.targetMs = Math.round(r.targetMs);
    this.s.underruns += r.underruns;
    this.s.pageDropped += r.dropped;
    if (this.captured && r.capture.length) this.keep(r.capture);
    if (r.state === "idle" && !this.stream && !this.parked && this.ctx.state === "running") {
      this.parked = true;
      this.ctx.suspend().catch(() => {});
    }
    // The gateway adds this to the delay it confirms to the server, for A/V sync: what is
    // buffered plus what the output device still holds.
    const now = performance.now();
    if (r.state === "playing" && now - this.lastBufferSent >= BUFFER_REPORT_MS) {
      this.lastBufferSent = now;
      const deviceMs = ((this.ctx.baseLatency || 0) + (this.ctx.outputLatency || 0)) * 1000;
      this.send(proto.audioBuffer(r.depthMs + deviceMs));
      this.s.buffersSent++;
    }
  }

  resume() {
    if (!this.ctx || this.closed) return;
    const ctx = this.ctx;
    ctx.resume()
      .then(() => { if (this.ctx === ctx) this.parked = false; })
      .catch((e) => this.trouble(`cannot start audio output: ${e.message}`));
  }

  updateBanner() {
    const needed = !this.closed && this.stream !== null && this.ctx !== null && !this.running();
    this.els.enable.hidden = !needed;
    if (!needed && document.activeElement === this.els.enable) document.activeElement.blur();
  }

  setMuted(muted) {
    this.muted = muted;
    this.applyGain();
  }

  setVolume(v) {
    this.volume = Math.max(0, Math.min(100, Math.round(v)));
    if (this.volume > 0 && this.muted) this.muted = false;
    this.applyGain();
  }

  // Loudness is roughly logarithmic: a squared slider feels even across its range.
  gainValue() {
    return this.muted ? 0 : (this.volume / 100) ** 2;
  }

  applyGain() {
    const g = this.gainValue();
    // A short ramp, not a step: a step in gain is a click in the speakers.
    if (this.gain) this.gain.gain.setTargetAtTime(g, this.ctx.currentTime, 0.01);
    const { panel, mute, volume } = this.els;
    panel.dataset.muted = String(this.muted);
    panel.dataset.gain = String(g);
    mute.setAttribute("aria-pressed", String(this.muted));
    mute.textContent = this.muted ? "unmute" : "mute";
    if (Number(volume.value) !== this.volume) volume.value = String(this.volume);
  }

  trouble(words) {
    this.s.errors++;
    this.s.error = words;
    console.warn("rdpwire: sound:", words);
  }

  // --- stats and test hooks ----------------------------------------------------------------

  stats() {
    let state = this.playState;
    if (this.stream && this.ctx && !this.running()) state = "suspended";
    return {
      audioState: state,
      audioPackets: this.s.packets,
      audioDecoded: this.s.decoded,
      audioBufferMs: this.s.bufferMs,
      audioTargetMs: this.s.targetMs,
      audioDropped: this.s.gatewayDropped + this.s.pageDropped,
      audioPageDropped: this.s.pageDropped,
      audioUnderruns: this.s.underruns,
      audioBuffersSent: this.s.buffersSent,
      audioErrors: this.s.errors,
      audioError: this.s.error,
      audioMuted: this.muted,
      audioVolume: this.volume,
      audioGain: this.gainValue(),
      audioContext: this.ctx ? this.ctx.state : null,
    };
  }

  // Records what the worklet plays (channel 0, before the gain), from now on.
  capture(on) {
    this.captured = on ? { chunks: [] } : null;
    this.post({ type: "capture", on: !!on });
  }

  keep(pieces) {
    // Page time of a frame of the context's clock, through the output's own timestamp.
    const ts = this.ctx.getOutputTimestamp();
    const rate = this.ctx.sampleRate;
    const chunks = this.captured.chunks;
    for (const p of pieces) {
      const last = chunks[chunks.length - 1];
      if (last && last.id === p.id && last.nextFrame === p.frame) {
        last.parts.push(p.samples);
        last.nextFrame += p.samples.length;
        continue;
      }
      const played = ts.performanceTime + (p.frame / rate - ts.contextTime) * 1000;
      chunks.push({ id: p.id, t: p.t, timestampUs: p.ts, played, parts: [p.samples], nextFrame: p.frame + p.samples.length });
    }
  }

  takeCapture() {
    const chunks = this.captured ? this.captured.chunks : [];
    if (this.captured) this.captured.chunks = [];
    return {
      sampleRate: this.ctx ? this.ctx.sampleRate : null,
      chunks: chunks.map((c) => ({ t: c.t, timestamp_us: c.timestampUs, played: c.played, samples: int16Base64(c.parts) })),
    };
  }
}

// Linear interpolation: only for a decoder whose output rate differs from the context's,
// which Opus decoders (always 48 kHz) do not do in practice.
function resample(p, from, to) {
  const n = Math.round((p.length * to) / from);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const x = (i * from) / to;
    const j = Math.floor(x);
    const f = x - j;
    const a = p[Math.min(j, p.length - 1)];
    const b = p[Math.min(j + 1, p.length - 1)];
    out[i] = a + (b - a) * f;
  }
  return out;
}

function int16Base64(parts) {
  let n = 0;
  for (const p of parts) n += p.length;
  const bytes = new Uint8Array(n * 2);
  const v = new DataView(bytes.buffer);
  let at = 0;
  for (const p of parts) {
    for (let i = 0; i < p.length; i++) {
      const s = Math.max(-1, Math.min(1, p[i]));
      v.setInt16(at, Math.round(s * 32767), true);
      at += 2;
    }
  }
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

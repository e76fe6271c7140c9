// The desktop's sound on the audio rendering thread: an adaptive jitter buffer in front of the
// output. Loaded by audio.js with `audioWorklet.addModule`; runs in AudioWorkletGlobalScope
// (no DOM, no timers: `sampleRate` and `currentFrame` are its clock).
//
// Messages in (from audio.js, in order):
//   {type: "chunk", id, t, ts, planes}  decoded audio, planar f32 at the context's rate
//   {type: "start"}                      a stream began: wait for the target depth first
//   {type: "end"}                        the stream stopped: play out what is left, no waiting
//   {type: "capture", on}                record what is played (channel 0), for tests
//   {type: "clear"}                      the session ended: forget everything
// Messages out: {type: "report", …} every REPORT_QUANTA render quanta while not idle, and at
// once when the state changes. Nothing at all while idle, so a silent desktop costs no work
// on the page's main thread.

const REPORT_QUANTA = 20; // ~53 ms at 48 kHz: fresh enough for AudioBuffer every 250 ms

class Player extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    const frames = (ms) => Math.round((ms * sampleRate) / 1000);
    this.minTarget = frames(o.minTargetMs ?? 40);
    this.maxTarget = frames(o.maxTargetMs ?? 200);
    this.slack = frames(o.slackMs ?? 150);
    this.stableFrames = frames(o.stableMs ?? 10000);
    this.stepDown = frames(o.stepDownMs ?? 10);
    this.target = this.minTarget;

    this.queue = [];         // {planes, at, id, t, ts}: `at` frames of it already played
    this.depth = 0;          // frames buffered, not yet played
    this.state = "idle";     // idle | buffering | playing
    this.ended = true;       // no stream running: what is buffered plays without waiting
    this.stable = 0;         // frames played since the last underrun or target change
    this.underruns = 0;      // since the last report
    this.dropped = 0;        // chunks dropped to catch up, since the last report
    this.quanta = 0;
    this.capture = null;     // pieces played since the last report, while capturing
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(m) {
    switch (m.type) {
      case "chunk": {
        const n = m.planes[0].length;
        if (n === 0) return;
        this.queue.push({ planes: m.planes, at: 0, id: m.id, t: m.t, ts: m.ts });
        this.depth += n;
        if (this.state === "idle") this.setState("buffering");
        this.catchUp();
        break;
      }
      case "start":
        this.ended = false;
        break;
      case "end":
        this.ended = true;
        break;
      case "capture":
        this.capture = m.on ? [] : null;
        break;
      case "clear":
        this.queue = [];
        this.depth = 0;
        this.ended = true;
        if (this.capture) this.capture = [];
        this.setState("idle");
        break;
      default:
        break;
    }
  }

  // Far more buffered than the target is latency nobody wants (a burst after a network
  // stall, a page that was busy): drop the oldest whole chunks down to about the target
  // rather than play everything late.
  catchUp() {
    if (this.depth <= this.target + this.slack) return;
    while (this.queue.length > 1) {
      const c = this.queue[0];
      const left = c.planes[0].length - c.at;
      if (this.depth - left < this.target) break;
      this.queue.shift();
      this.depth -= left;
      this.dropped++;
    }
  }

  setState(s) {
    if (this.state === s) return;
    this.state = s;
    this.report();
  }

  report() {
    const pieces = this.capture && this.capture.length
      ? this.capture.map((p) => ({ id: p.id, t: p.t, ts: p.ts, frame: p.frame, samples: p.plane.slice(p.from, p.to) }))
      : [];
    if (this.capture) this.capture = [];
    this.port.postMessage({
      type: "report",
      state: this.state,
      depthMs: (this.depth * 1000) / sampleRate,
      targetMs: (this.target * 1000) / sampleRate,
      underruns: this.underruns,
      dropped: this.dropped,
      capture: pieces,
    });
    this.underruns = 0;
    this.dropped = 0;
    this.quanta = 0;
  }

  record(c, from, to, frame) {
    const last = this.capture[this.capture.length - 1];
    if (last && last.id === c.id && last.to === from) {
      last.to = to;
      return;
    }
    this.capture.push({ id: c.id, t: c.t, ts: c.ts, frame, plane: c.planes[0], from, to });
  }

  process(_inputs, outputs) {
    const out = outputs[0];
    const n = out[0].length;
    if (this.state === "buffering" && (this.depth >= this.target || (this.ended && this.depth > 0))) {
      this.setState("playing");
    }
    if (this.state === "playing") {
      let written = 0;
      while (written < n && this.queue.length > 0) {
        const c = this.queue[0];
        const len = c.planes[0].length;
        const take = Math.min(n - written, len - c.at);
        for (let ch = 0; ch < out.length; ch++) {
          const plane = c.planes[Math.min(ch, c.planes.length - 1)];
          out[ch].set(plane.subarray(c.at, c.at + take), written);
        }
        if (this.capture) this.record(c, c.at, c.at + take, currentFrame + written);
        c.at += take;
        written += take;
        this.depth -= take;
        if (c.at === len) this.queue.shift();
      }
      if (this.depth === 0 && this.ended) {
        this.setState("idle");
      } else if (written < n) {
        // Ran dry mid-stream: the network is burstier than the target allows for.
        this.underruns++;
        this.target = Math.min(this.maxTarget, Math.round(this.target * 1.5));
        this.stable = 0;
        this.setState("buffering");
      } else {
        this.stable += n;
        if (this.stable >= this.stableFrames && this.target > this.minTarget) {
          this.target = Math.max(this.minTarget, this.target - this.stepDown);
          this.stable = 0;
        }
      }
    }
    if (this.state !== "idle" && ++this.quanta >= REPORT_QUANTA) this.report();
    return true;
  }
}

registerProcessor("rdpwire-player", Player);

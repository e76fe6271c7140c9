// rdpwire web client: one WebSocket to the gateway (docs/protocol.md), the remote desktop on
// the screen canvas, the user's input back. Loaded as an ES module by index.html.
//
// Modules: protocol.js (message codec), pipeline.js (in-order application), compositor.js
// (surfaces, cache, screen), avc.js (H.264 through WebCodecs), input.js + keymap.js (mouse
// and keyboard), pointer.js (the server's cursor), audio.js + audio-worklet.js (sound).
//
// Tests and tools read the page through `window.rdpwire.stats()` and the `#status` text, and
// record the sound it plays with `captureAudio` / `takeAudioCapture` (docs/web-client.md).

import * as proto from "./protocol.js";
import { Compositor } from "./compositor.js";
import { Pipeline } from "./pipeline.js";
import { SurfaceDecoder } from "./avc.js";
import { Input } from "./input.js";
import { Pointer } from "./pointer.js";
import { Audio } from "./audio.js";

const PING_INTERVAL_MS = 2000;
// A window being dragged to a new size sends one Resize, once it has been still this long.
const RESIZE_DEBOUNCE_MS = 300;
const STATS_INTERVAL_MS = 1000;
const MIN_SIZE = 200;
const MAX_SIZE = 8192;

// Close codes that mean something went wrong, rather than the session simply ending.
const ERROR_CLOSES = new Set([1002, 1003, 1007, 1008, 1009, 1011]);

// A connection token comes in the address's fragment (`/#token=…`), which browsers never send
// to a server. It is taken out of the address bar before anything else happens, so it is not
// kept in the history, shown, bookmarked or copied along with the address; it goes to the
// gateway once, in the hello, and the page forgets it.
let token = (() => {
  const found = new URLSearchParams(location.hash.slice(1)).get("token");
  if (found !== null) history.replaceState(history.state, "", location.pathname + location.search);
  return found || "";
})();

// A session survives its page for the gateway's grace period: the gateway gives the page a
// resume ticket, kept in sessionStorage (this tab only, gone with the tab, never in an
// address), and a reload presents it on `/ws?resume=ID` to take the running desktop over.
const RESUME_KEY = "rdpwire.resume";

function storedResume(target) {
  try {
    const r = JSON.parse(sessionStorage.getItem(RESUME_KEY) || "null");
    if (r && r.target === target && typeof r.sessionId === "string" && typeof r.ticket === "string") {
      return { sessionId: r.sessionId, ticket: Uint8Array.from(atob(r.ticket), (c) => c.charCodeAt(0)) };
    }
  } catch (_) { /* storage unavailable or garbled: start a new session */ }
  return null;
}

function keepResume(target, sessionId, ticket) {
  try {
    const text = btoa(String.fromCharCode(...ticket));
    sessionStorage.setItem(RESUME_KEY, JSON.stringify({ target, sessionId: sessionId.toString(), ticket: text }));
  } catch (_) { /* no storage: a reload starts a new session */ }
}

function forgetResume() {
  try { sessionStorage.removeItem(RESUME_KEY); } catch (_) { /* nothing kept */ }
}

const screen = document.getElementById("screen");
const reconnectButton = document.getElementById("reconnect");
const statusLine = document.getElementById("status");
const overlay = document.getElementById("stats");

const stats = {
  state: "connecting",
  reason: undefined,
  status: "",
  sessionId: null,
  core: null,
  target: new URLSearchParams(location.search).get("target") || "",
  viaToken: token !== "", // the page was opened with a connection token
  resumed: false,      // this page took over a running session with its resume ticket
  resumable: false,    // the page holds a resume ticket for its session
  requested: null,     // {width, height} asked for, in ClientHello or the last Resize
  resizes: 0,          // Resize messages sent
  width: 0,            // desktop size
  height: 0,
  framesDecoded: 0,    // graphics frames applied and acknowledged (the FrameDecoded count)
  videoFrames: 0,      // H.264 pictures drawn
  tiles: 0,            // Tile and TileAlpha messages (codecs the gateway decoded)
  skippedPictures: 0,  // H.264 access units not decoded (no key frame yet, decoder failed)
  decodeErrors: 0,
  codecs: [],          // codec strings the decoders were configured with
  colorSpace: null,    // the first decoded picture's colour space (VideoFrame.colorSpace)
  decodeMs: null,      // the last picture's time in the decoder, ms
  fps: 0,
  kbps: 0,
  rttMs: null,         // Ping → Pong round trip
  bytesReceived: 0,
  messages: 0,
  unknownMessages: 0,
  cursor: "default",
};

// The desktop size asked for: the window in device pixels, so one desktop pixel is one
// screen pixel (sharp text on high-DPI screens), rounded to even numbers as RDP servers
// prefer, within the protocol's 200–8192.
function wantedSize() {
  const dpr = window.devicePixelRatio || 1;
  const fit = (css) => Math.max(MIN_SIZE, Math.min(MAX_SIZE, 2 * Math.round((css * dpr) / 2)));
  return { width: fit(window.innerWidth), height: fit(window.innerHeight) };
}

// Shows the desktop at one desktop pixel per device pixel, scaled down (aspect kept) only
// when the window is smaller than that. The canvas is centred by the page's CSS.
function fit() {
  const w = screen.width;
  const h = screen.height;
  if (!w || !h) return;
  const dpr = window.devicePixelRatio || 1;
  const scale = Math.min(1 / dpr, window.innerWidth / w, window.innerHeight / h);
  screen.style.width = `${w * scale}px`;
  screen.style.height = `${h * scale}px`;
}

// --- state shown to the user -------------------------------------------------------------

let ended = false;          // the session is over; later events do not change what is shown
let connectedText = "";     // last connected status, shown again after a decoder recovers
let decoderTrouble = false; // the error shown is a decoder error, not the end of the session

function show(state, text, reason) {
  stats.state = state;
  stats.reason = reason;
  stats.status = text;
  statusLine.textContent = text;
  statusLine.dataset.state = state;
}

function end(state, reason, { keepTicket = false } = {}) {
  if (ended) return;
  ended = true;
  decoderTrouble = false;
  if (!keepTicket) {
    forgetResume();
    stats.resumable = false;
  }
  show(state, `${state}: ${reason}`, reason);
  shutdown();
  // Reconnecting is a reload: the same target (the address keeps ?target=), and the same
  // desktop if the session is still waiting for its page.
  if (reconnectButton) reconnectButton.hidden = false;
}

// --- graphics ----------------------------------------------------------------------------

const compositor = new Compositor(screen);
const pipeline = new Pipeline((e) => console.error("rdpwire: graphics operation failed:", e));
// Decoders by surface, as of the messages received so far (not yet applied): an H.264 access
// unit is handed to its decoder the moment it arrives, and applied in order later.
const decoders = new Map();
let inFrame = false;

function onDecoderError(message) {
  stats.decodeErrors++;
  console.error("rdpwire: video decoder:", message);
  if (ended) return;
  decoderTrouble = true;
  const reason = `video decoder: ${message}; waiting for the next key frame`;
  show("error", `error: ${reason}`, reason);
}

function onDecoderRecovered() {
  if (ended || !decoderTrouble) return;
  decoderTrouble = false;
  show("connected", connectedText || "connected");
}

function decoderFor(surface) {
  let d = decoders.get(surface);
  if (!d) {
    d = new SurfaceDecoder(onDecoderError, onDecoderRecovered);
    decoders.set(surface, d);
  }
  return d;
}

// Takes a surface's decoder out of use now; it is closed when the operations before this
// point have been applied.
function retireDecoder(surface) {
  const d = decoders.get(surface);
  decoders.delete(surface);
  return d;
}

// FrameDecoded.queue_depth: access units handed to the decoders and not decoded yet.
function queueDepth() {
  let n = 0;
  for (const d of decoders.values()) n += d.queueSize;
  return n;
}

// Applies `op` in order; outside a StartFrame/EndFrame bracket the screen is updated at once.
function graphics(op) {
  pipeline.push(() => {
    const r = op();
    if (r && typeof r.then === "function") return r.then(() => { if (!inFrame) compositor.flush(); });
    if (!inFrame) compositor.flush();
    return undefined;
  });
}

function onGraphics(m) {
  switch (m.type) {
    case proto.DESKTOP_SIZE:
      graphics(() => { compositor.resize(m.width, m.height); sized(); });
      break;
    case proto.RESET_GRAPHICS: {
      const old = [...decoders.values()];
      decoders.clear();
      graphics(() => {
        for (const d of old) d.stop();
        compositor.reset(m.width, m.height);
        sized();
      });
      break;
    }
    case proto.CREATE_SURFACE: {
      const old = retireDecoder(m.surface);
      graphics(() => {
        if (old) old.stop();
        compositor.createSurface(m.surface, m.width, m.height, m.format);
      });
      break;
    }
    case proto.DELETE_SURFACE: {
      const old = retireDecoder(m.surface);
      graphics(() => {
        if (old) old.stop();
        compositor.deleteSurface(m.surface);
      });
      break;
    }
    case proto.MAP_SURFACE_TO_OUTPUT:
      graphics(() => compositor.mapSurface(m.surface, m.x, m.y));
      break;
    case proto.START_FRAME:
      graphics(() => { inFrame = true; });
      break;
    case proto.END_FRAME:
      // Everything of the frame is applied when this runs: the acknowledgement is the flow
      // control, so it never goes before the picture is on the screen.
      graphics(() => {
        inFrame = false;
        compositor.flush();
        stats.framesDecoded++;
        send(proto.frameDecoded(m.frameId, stats.framesDecoded, queueDepth()));
      });
      break;
    case proto.AVC420: {
      const d = decoderFor(m.surface);
      const picture = d.decode(m.accessUnit);
      const codec = d.codec;
      if (codec && !stats.codecs.includes(codec)) stats.codecs.push(codec);
      graphics(() => picture.then((frame) => {
        if (frame && !stats.colorSpace && frame.colorSpace) stats.colorSpace = frame.colorSpace.toJSON();
        if (!frame) {
          stats.skippedPictures++;
          return;
        }
        stats.decodeMs = d.decodeMs === null ? null : Math.round(d.decodeMs * 10) / 10;
        try {
          compositor.drawPicture(m.surface, frame, m.dest, m.regions);
          stats.videoFrames++;
        } finally {
          frame.close();
        }
      }));
      break;
    }
    case proto.SOLID_FILL:
      graphics(() => compositor.solidFill(m.surface, m.color, m.rects));
      break;
    case proto.SURFACE_TO_SURFACE:
      graphics(() => compositor.surfaceToSurface(m.src, m.dst, m.srcRect, m.points));
      break;
    case proto.SURFACE_TO_CACHE:
      graphics(() => compositor.surfaceToCache(m.surface, m.slot, m.srcRect));
      break;
    case proto.CACHE_TO_SURFACE:
      graphics(() => compositor.cacheToSurface(m.slot, m.surface, m.points));
      break;
    case proto.EVICT_CACHE_ENTRY:
      graphics(() => compositor.evict(m.slot));
      break;
    case proto.TILE:
      stats.tiles++;
      graphics(() => compositor.tile(m.surface, m.rect, m.rgba));
      break;
    case proto.TILE_ALPHA:
      stats.tiles++;
      graphics(() => compositor.tileAlpha(m.surface, m.rect, m.alpha));
      break;
    default:
      break;
  }
}

function sized() {
  stats.width = compositor.width;
  stats.height = compositor.height;
  fit();
}

// The window's new size goes to the gateway, which asks the server for it where the server
// can resize (a DesktopSize or ResetGraphics follows); elsewhere the page keeps scaling.
function askForWindowSize() {
  if (ended || stats.requested === null) return;
  const size = wantedSize();
  if (size.width === stats.requested.width && size.height === stats.requested.height) return;
  stats.requested = size;
  stats.resizes++;
  send(proto.resize(size.width, size.height));
}

// --- the connection ----------------------------------------------------------------------

let ws = null;
let opened = false;
let pingTimer = null;
let nextNonce = 1;
const pingsSent = new Map(); // nonce → time sent

function send(buf) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(buf);
}

const pointer = new Pointer(screen);
const audio = new Audio(send, {
  panel: document.getElementById("audio"),
  enable: document.getElementById("sound-enable"),
  mute: document.getElementById("mute"),
  volume: document.getElementById("volume"),
});
const input = new Input(screen, send, () => !ended && opened && stats.sessionId !== null);

function ping() {
  const nonce = nextNonce++;
  pingsSent.set(nonce, performance.now());
  send(proto.ping(nonce));
}

function onMessage(buf) {
  stats.bytesReceived += buf.byteLength;
  stats.messages++;
  let m;
  try {
    m = proto.decode(buf);
  } catch (e) {
    end("error", `malformed message from the gateway: ${e.message}`);
    return;
  }
  switch (m.type) {
    case proto.SERVER_HELLO: {
      stats.sessionId = m.sessionId.toString();
      stats.core = m.core;
      stats.requested = wantedSize();
      if (resuming) {
        // The desktop is already there: the gateway sends its size and a fresh picture.
        stats.resumed = true;
      } else if (token) {
        send(proto.tokenHello(stats.requested.width, stats.requested.height, token));
        token = "";
      } else {
        send(proto.clientHello(stats.requested.width, stats.requested.height, stats.target));
      }
      ping();
      pingTimer = setInterval(ping, PING_INTERVAL_MS);
      break;
    }
    case proto.PONG: {
      const sent = pingsSent.get(Number(m.nonce));
      if (sent !== undefined) {
        pingsSent.delete(Number(m.nonce));
        stats.rttMs = Math.round((performance.now() - sent) * 10) / 10;
      }
      break;
    }
    case proto.STATUS: {
      if (ended) break;
      const name = proto.STATUS_STATES[m.state] || "connecting";
      // A reactivation is a connection being made again: "connecting" to the page's state.
      const state = name === "reconnecting" ? "connecting" : name;
      const text = m.text || name;
      if (state === "connected") connectedText = text;
      decoderTrouble = false;
      show(state, text);
      break;
    }
    case proto.RESUME_TICKET:
      keepResume(stats.target, m.sessionId, m.ticket);
      stats.resumable = true;
      break;
    case proto.DISCONNECTED:
      end("disconnected", m.reason || "the remote desktop session ended");
      break;
    case proto.POINTER:
      pointer.apply(m);
      stats.cursor = pointer.kind;
      break;
    case proto.AUDIO_START:
      audio.start(m);
      break;
    case proto.AUDIO_PACKET:
      audio.packet(m);
      break;
    case proto.AUDIO_STOP:
      audio.stop();
      break;
    default:
      if (m.unknown) stats.unknownMessages++;
      else onGraphics(m);
  }
}

function describeClose(code) {
  switch (code) {
    case 1000: return "the session was closed";
    case 1001: return "the gateway is shutting down";
    case 1006: return "the connection to the gateway was lost";
    case 4005: return "this session was taken over by another page";
    default: return `the gateway closed the connection (code ${code})`;
  }
}

// The WebSocket never opened: the gateway is unreachable or refused the upgrade with an
// HTTP answer the page cannot read; /readyz says why in the same words (full, draining).
async function refused() {
  let reason = "the gateway cannot be reached";
  try {
    const r = await fetch("/readyz", { cache: "no-store" });
    const text = (await r.text()).trim();
    if (!r.ok && text) reason = text;
  } catch (_) { /* unreachable: keep the general words */ }
  end("error", reason);
}

function shutdown() {
  clearInterval(pingTimer);
  pingTimer = null;
  pipeline.clear();
  for (const d of decoders.values()) d.stop();
  decoders.clear();
  audio.close();
  input.releaseAll();
  if (ws && ws.readyState === WebSocket.OPEN) ws.close(1000, "the page ended the session");
}

// Closes after which the session may still be waiting for its page (within the grace
// period): the ticket is kept, so Reconnect resumes it.
const RESUMABLE_CLOSES = new Set([1001, 1006, 4001, 4005]);
const CLOSE_RESUME_REFUSED = 4004;
let resuming = null; // {sessionId, ticket} when this page resumes a session

function connect() {
  const url = new URL("/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  // A page opened with a new connection token wants that target, not the old session.
  if (token) forgetResume();
  resuming = token ? null : storedResume(stats.target);
  if (resuming) url.searchParams.set("resume", resuming.sessionId);
  show("connecting", resuming ? "resuming the session" : "connecting to the gateway");
  ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    opened = true;
    if (resuming) send(proto.resume(resuming.sessionId, resuming.ticket));
    if (!ended) show("connecting", resuming ? "resuming the session" : "connecting");
  };
  ws.onmessage = (ev) => {
    if (!(ev.data instanceof ArrayBuffer)) return; // text is not part of the protocol
    try {
      onMessage(ev.data);
    } catch (e) {
      console.error("rdpwire:", e);
      end("error", `the page failed: ${e.message}`);
    }
  };
  ws.onclose = (ev) => {
    if (!opened) {
      refused();
      return;
    }
    if (resuming && ev.code === CLOSE_RESUME_REFUSED) {
      // The session is gone (grace period over, desktop closed): start a new one.
      forgetResume();
      show("connecting", `${ev.reason}; starting a new session`);
      location.reload();
      return;
    }
    const reason = ev.reason || describeClose(ev.code);
    const keepTicket = RESUMABLE_CLOSES.has(ev.code);
    end(ERROR_CLOSES.has(ev.code) ? "error" : "disconnected", reason, { keepTicket });
  };
}

// --- stats -------------------------------------------------------------------------------

let lastTick = performance.now();
let lastFrames = 0;
let lastBytes = 0;

function tick() {
  const now = performance.now();
  const secs = (now - lastTick) / 1000;
  if (secs <= 0) return;
  stats.fps = Math.round(((stats.framesDecoded - lastFrames) / secs) * 10) / 10;
  stats.kbps = Math.round(((stats.bytesReceived - lastBytes) * 8) / 1000 / secs);
  lastTick = now;
  lastFrames = stats.framesDecoded;
  lastBytes = stats.bytesReceived;
  const rtt = stats.rttMs === null ? "–" : `${stats.rttMs} ms`;
  const size = stats.width ? ` · ${stats.width}×${stats.height}` : "";
  const a = audio.stats();
  const sound = a.audioState === "idle" ? "" : ` · sound ${a.audioState} ${a.audioBufferMs} ms`;
  overlay.textContent =
    `${stats.fps} fps · ${stats.kbps} kbit/s · ${stats.framesDecoded} frames decoded · rtt ${rtt}${size}${sound}`;
}

// --- start -------------------------------------------------------------------------------

window.rdpwire = {
  stats: () => {
    const s = {
      ...stats, codecs: [...stats.codecs], ignoredOperations: compositor.ignored, input: { ...input.sent },
      ...audio.stats(),
    };
    if (s.reason === undefined) delete s.reason;
    return s;
  },
  // Test hooks: record the sound the page plays; see docs/web-client.md.
  captureAudio: (on) => audio.capture(on),
  takeAudioCapture: () => audio.takeCapture(),
};

if (reconnectButton) reconnectButton.addEventListener("click", () => location.reload());

screen.tabIndex = 0; // focusable, so keys go to the desktop after a click
let resizeTimer = null;
window.addEventListener("resize", () => {
  fit();
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(askForWindowSize, RESIZE_DEBOUNCE_MS);
});
input.attach();
audio.attach();
setInterval(tick, STATS_INTERVAL_MS);
tick();

if (typeof VideoDecoder === "undefined" || typeof EncodedVideoChunk === "undefined") {
  ended = true;
  const reason = "this browser cannot show the desktop: WebCodecs (VideoDecoder) is missing; " +
    "use a current Chrome, Edge or Firefox over https or on localhost";
  show("error", `error: ${reason}`, reason);
} else {
  connect();
}

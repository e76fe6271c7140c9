// rdpwire web client (foundation stage): opens the session WebSocket, shows its state in words.
// The desktop (WebCodecs decoding, input) arrives with the live-desktop work.
"use strict";
(() => {
  const status = document.getElementById("status");
  const state = { state: "connecting", sessionId: null, core: null, rttMs: null };
  const show = (text) => { state.state = text; status.textContent = text; };
  window.rdpwire = { stats: () => ({ ...state }) };

  const url = new URL("/ws" + location.search, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  let pingSent = 0;
  show("connecting");
  ws.onmessage = (ev) => {
    if (!(ev.data instanceof ArrayBuffer)) return;
    const v = new DataView(ev.data);
    if (v.byteLength < 2 || v.getUint8(0) !== 1) return;
    const type = v.getUint8(1);
    if (type === 0x01 && v.byteLength >= 14) {        // ServerHello
      state.sessionId = v.getBigUint64(2, true).toString();
      state.core = v.getUint16(10, true);
      show("connected (session " + state.sessionId + ", core " + state.core + ")");
      pingSent = performance.now();
      const p = new DataView(new ArrayBuffer(10));
      p.setUint8(0, 1); p.setUint8(1, 0x81); p.setBigUint64(2, 1n, true);
      ws.send(p.buffer);
    } else if (type === 0x02) {                        // Pong
      state.rttMs = performance.now() - pingSent;
    }
  };
  ws.onclose = (ev) => show("disconnected: " + (ev.reason || "connection closed (code " + ev.code + ")"));
  ws.onerror = () => show("error: the gateway cannot be reached");
})();

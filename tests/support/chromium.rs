//! Real headless Chromium (Debian's `chromium`), driven over the Chrome DevTools Protocol with
//! a synchronous WebSocket: navigate, evaluate JavaScript, read `#screen` pixels, and send
//! mouse and keyboard input as the browser's own input events. One browser per `Chromium`,
//! with its own profile directory; both go when it is dropped.
//!
//! Launched with exactly the flags of the field notes. Not with `--virtual-time-budget`: it
//! makes JS timers fire early and breaks decode timing.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::WebSocket;

/// How long one DevTools command may take before the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The page's window, in CSS pixels, unless a test sets another.
pub const VIEWPORT: (u32, u32) = (1024, 768);
/// Console lines kept for failure messages.
const CONSOLE_LINES: usize = 200;

pub struct Chromium {
    child: Child,
    profile: PathBuf,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    console: VecDeque<String>,
    stderr: Arc<Mutex<String>>,
    pub port: u16,
}

/// Installs Chromium when it is missing (once per test process), with the test command's
/// own script.
pub fn ensure_installed() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let have = Command::new("sh")
            .args(["-c", "command -v chromium"])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !have {
            eprintln!("installing Chromium (tests/install-deps.sh)");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/install-deps.sh");
            let out = Command::new("bash").arg(script).output().unwrap();
            assert!(
                out.status.success(),
                "tests/install-deps.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

impl Chromium {
    pub fn launch() -> Chromium {
        ensure_installed();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let profile = std::env::temp_dir().join(format!(
            "rdpwire-chromium-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--remote-debugging-port=0", "about:blank"])
            // Its own process group, so Drop ends the renderer and helper processes too.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut s = stderr.lock().unwrap();
                    if s.len() < 64 * 1024 {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }

        // Chromium writes the port it bound to, then a newline and the browser target path.
        let port_file = profile.join("DevToolsActivePort");
        let started = Instant::now();
        let port: u16 = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                if let Some((first, _)) = text.split_once('\n') {
                    break first.trim().parse().unwrap();
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "chromium exited at start ({status}):\n{}",
                    stderr.lock().unwrap()
                );
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!(
                    "chromium wrote no DevToolsActivePort within 30 s:\n{}",
                    stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        };

        // The first page target (about:blank), from the DevTools HTTP endpoint.
        let page_ws = loop {
            let list = http_get_json(port, "/json/list");
            let page = list.as_array().and_then(|targets| {
                targets
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    .map(str::to_owned)
            });
            if let Some(url) = page {
                break url;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no page target: {list}"
            );
            std::thread::sleep(Duration::from_millis(25));
        };
        let (mut ws, _) = tungstenite::connect(page_ws.as_str()).unwrap();
        if let MaybeTlsStream::Plain(s) = ws.get_mut() {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            s.set_nodelay(true).unwrap();
        }
        let mut browser = Chromium {
            child,
            profile,
            ws,
            next_id: 1,
            console: VecDeque::new(),
            stderr,
            port,
        };
        browser.call("Runtime.enable", json!({}));
        browser.call("Log.enable", json!({}));
        browser.call("Page.enable", json!({}));
        browser.set_viewport(VIEWPORT.0, VIEWPORT.1);
        browser
    }

    /// Emulates a window of `width`×`height` CSS pixels at device pixel ratio 1 (the
    /// headless window's own size depends on the Chromium build).
    pub fn set_viewport(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
    }

    /// The browser's process id; its helpers share it as their process group.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The profile directory (`--user-data-dir`), removed on drop.
    pub fn profile_dir(&self) -> &Path {
        &self.profile
    }

    /// Sends one DevTools command and returns its `result`; panics on a protocol error.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .unwrap();
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            assert!(
                Instant::now() < deadline,
                "DevTools {method} got no answer within {CALL_TIMEOUT:?}"
            );
            let Some(v) = self.read_message() else {
                continue;
            };
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    panic!("DevTools {method} failed: {err}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Reads one message (None on a read timeout); records console output and exceptions.
    fn read_message(&mut self) -> Option<Value> {
        match self.ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                self.record_event(&v);
                Some(v)
            }
            Ok(_) => None,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!(
                "DevTools connection failed: {e}\n{}",
                self.stderr.lock().unwrap()
            ),
        }
    }

    fn record_event(&mut self, v: &Value) {
        let p = &v["params"];
        let line = match v["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = p["args"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| match &x["value"] {
                                Value::String(s) => s.clone(),
                                Value::Null => x["description"].as_str().unwrap_or("").to_owned(),
                                other => other.to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                format!(
                    "console.{}: {}",
                    p["type"].as_str().unwrap_or("log"),
                    args.join(" ")
                )
            }
            Some("Runtime.exceptionThrown") => {
                let d = &p["exceptionDetails"];
                let what = d["exception"]["description"]
                    .as_str()
                    .or(d["text"].as_str())
                    .unwrap_or("?");
                format!("exception: {what}")
            }
            Some("Log.entryAdded") => format!(
                "log.{}: {} {}",
                p["entry"]["level"].as_str().unwrap_or("?"),
                p["entry"]["text"].as_str().unwrap_or(""),
                p["entry"]["url"].as_str().unwrap_or("")
            ),
            _ => return,
        };
        if self.console.len() == CONSOLE_LINES {
            self.console.pop_front();
        }
        self.console.push_back(line);
    }

    /// What the page logged (console, uncaught exceptions, browser log), for failure messages.
    pub fn console(&self) -> String {
        self.console.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Loads `url` and waits until the document (and its module scripts) finished loading.
    pub fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({ "url": url }));
        if let Some(err) = r.get("errorText").and_then(Value::as_str) {
            panic!("navigating to {url} failed: {err}");
        }
        self.wait_for(
            "document.readyState === 'complete' && location.href !== 'about:blank'",
            Duration::from_secs(20),
        );
    }

    /// Evaluates `js` in the page (promises awaited) and returns its value as JSON.
    pub fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({
                "expression": js,
                "awaitPromise": true,
                "returnByValue": true,
            }),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            let what = ex["exception"]["description"]
                .as_str()
                .or(ex["text"].as_str())
                .unwrap_or("?");
            panic!("`{js}` threw: {what}\n{}", self.console());
        }
        r["result"]["value"].clone()
    }

    /// Polls `condition` (a JS expression) until it is truthy; false after `within`.
    pub fn try_wait_for(&mut self, condition: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let probe = format!("!!({condition})");
        loop {
            if self.eval(&probe) == Value::Bool(true) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like `try_wait_for`, failing the test with what the page shows when time runs out.
    pub fn wait_for(&mut self, condition: &str, within: Duration) {
        if !self.try_wait_for(condition, within) {
            panic!(
                "waited {within:?} for `{condition}`\n{}",
                self.describe_page()
            );
        }
    }

    /// The page's status line, `rdpwire.stats()` and console, for failure messages.
    pub fn describe_page(&mut self) -> String {
        let seen = self.eval(
            "({ url: location.href, \
                status: document.getElementById('status') && document.getElementById('status').textContent, \
                stats: window.rdpwire ? window.rdpwire.stats() : null })",
        );
        format!("page: {seen}\nconsole:\n{}", self.console())
    }

    /// `window.rdpwire.stats()`.
    pub fn stats(&mut self) -> Value {
        self.eval("window.rdpwire.stats()")
    }

    /// The text of `#status`, as the user reads it.
    pub fn status_text(&mut self) -> String {
        self.eval("document.getElementById('status').textContent")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// RGBA of the `#screen` canvas at desktop pixel (`x`, `y`).
    pub fn pixel(&mut self, x: u32, y: u32) -> [u8; 4] {
        let v = self.eval(&format!(
            "Array.from(document.getElementById('screen').getContext('2d')\
               .getImageData({x}, {y}, 1, 1).data)"
        ));
        let a = v.as_array().unwrap();
        std::array::from_fn(|i| a[i].as_u64().unwrap() as u8)
    }

    /// Waits, polling inside the page every few milliseconds, until the `#screen` pixel at
    /// (`x`, `y`) is `rgb` within `tolerance` per channel. Returns how long that took, or None
    /// after `within`.
    pub fn wait_pixel(
        &mut self,
        x: u32,
        y: u32,
        rgb: [u8; 3],
        tolerance: u8,
        within: Duration,
    ) -> Option<Duration> {
        let started = Instant::now();
        let js = format!(
            "new Promise((resolve) => {{ \
               const c = document.getElementById('screen').getContext('2d'); \
               const want = {rgb:?}; const t0 = performance.now(); \
               const check = () => {{ \
                 const d = c.getImageData({x}, {y}, 1, 1).data; \
                 if ([0, 1, 2].every((i) => Math.abs(d[i] - want[i]) <= {tolerance})) resolve(true); \
                 else if (performance.now() - t0 > {ms}) resolve(false); \
                 else setTimeout(check, 2); }}; \
               check(); }})",
            ms = within.as_millis()
        );
        (self.eval(&js) == Value::Bool(true)).then(|| started.elapsed())
    }

    /// The page (CSS) position of the centre of desktop pixel (`x`, `y`), through the
    /// canvas's on-page box: the canvas may be shown scaled. Chromium delivers input events
    /// at whole CSS pixels, so on a canvas scaled down by `s` only every `1/s`-th desktop
    /// pixel is reachable exactly, as with a real mouse.
    pub fn page_point(&mut self, x: u32, y: u32) -> (f64, f64) {
        let v = self.eval(
            "(() => { const c = document.getElementById('screen'); \
                      const b = c.getBoundingClientRect(); \
                      return [b.left, b.top, b.width, b.height, c.width, c.height]; })()",
        );
        let f: Vec<f64> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_f64().unwrap())
            .collect();
        assert!(f[4] > 0.0 && f[5] > 0.0, "the screen canvas has no size");
        (
            f[0] + (f64::from(x) + 0.5) * f[2] / f[4],
            f[1] + (f64::from(y) + 0.5) * f[3] / f[5],
        )
    }

    /// One `Input.dispatchMouseEvent` at a page position.
    pub fn mouse_event(&mut self, kind: &str, (px, py): (f64, f64), button: &str, extra: Value) {
        let mut params = json!({ "type": kind, "x": px, "y": py, "button": button });
        if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        self.call("Input.dispatchMouseEvent", params);
    }

    /// Moves the mouse to desktop pixel (`x`, `y`).
    pub fn mouse_move(&mut self, x: u32, y: u32) {
        let at = self.page_point(x, y);
        self.mouse_event("mouseMoved", at, "none", json!({}));
    }

    /// Presses or releases `button` ("left", "right", "middle", "back", "forward") at
    /// desktop pixel (`x`, `y`).
    pub fn mouse_button(&mut self, x: u32, y: u32, button: &str, down: bool) {
        let at = self.page_point(x, y);
        let bit = match button {
            "left" => 1,
            "right" => 2,
            "middle" => 4,
            "back" => 8,
            "forward" => 16,
            _ => 0,
        };
        let (kind, buttons) = if down {
            ("mousePressed", bit)
        } else {
            ("mouseReleased", 0)
        };
        self.mouse_event(
            kind,
            at,
            button,
            json!({ "buttons": buttons, "clickCount": 1 }),
        );
    }

    /// A left click at desktop pixel (`x`, `y`): move, press, release.
    pub fn click(&mut self, x: u32, y: u32) {
        self.mouse_move(x, y);
        self.mouse_button(x, y, "left", true);
        self.mouse_button(x, y, "left", false);
    }

    /// `rdpwire.takeAudioCapture()`: the sample rate and the chunks the page played.
    pub fn take_audio_capture(&mut self) -> (u64, Vec<Captured>) {
        let v = self.eval("rdpwire.takeAudioCapture()");
        let rate = v["sampleRate"].as_u64().unwrap_or_else(|| panic!("{v}"));
        let chunks = v["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| Captured {
                t: c["t"].as_f64().unwrap(),
                played: c["played"].as_f64().unwrap(),
                timestamp_us: c["timestamp_us"].as_u64().unwrap(),
                samples: base64_decode(c["samples"].as_str().unwrap())
                    .chunks_exact(2)
                    .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32767.0)
                    .collect(),
            })
            .collect();
        (rate, chunks)
    }

    /// Whether the element `selector` is shown: laid out, not hidden, not transparent.
    pub fn visible(&mut self, selector: &str) -> bool {
        let sel = serde_json::to_string(selector).unwrap();
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); \
                       return !!e && e.checkVisibility({{ checkOpacity: true, checkVisibilityCSS: true }}); }})()"
        )) == Value::Bool(true)
    }

    /// A real left click (move, press, release) in the middle of the element `selector`, as
    /// a user's mouse would make it: what is on top there gets it.
    pub fn click_element(&mut self, selector: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        let v = self.eval(&format!(
            "(() => {{ const r = document.querySelector({sel}).getBoundingClientRect(); \
                       return [r.left + r.width / 2, r.top + r.height / 2]; }})()"
        ));
        let at = (v[0].as_f64().unwrap(), v[1].as_f64().unwrap());
        self.mouse_event("mouseMoved", at, "none", json!({}));
        self.mouse_event(
            "mousePressed",
            at,
            "left",
            json!({ "buttons": 1, "clickCount": 1 }),
        );
        self.mouse_event(
            "mouseReleased",
            at,
            "left",
            json!({ "buttons": 0, "clickCount": 1 }),
        );
    }

    /// A wheel event at desktop pixel (`x`, `y`), deltas in CSS pixels as a mouse sends them.
    pub fn wheel(&mut self, x: u32, y: u32, delta_x: f64, delta_y: f64) {
        let at = self.page_point(x, y);
        self.mouse_event(
            "mouseWheel",
            at,
            "none",
            json!({ "deltaX": delta_x, "deltaY": delta_y }),
        );
    }

    /// Presses a key: `code` is `KeyboardEvent.code`, `key` its `key`, `text` what it types
    /// (empty for keys that type nothing).
    pub fn key_down(&mut self, code: &str, key: &str, text: &str) {
        let kind = if text.is_empty() {
            "rawKeyDown"
        } else {
            "keyDown"
        };
        self.call(
            "Input.dispatchKeyEvent",
            json!({ "type": kind, "code": code, "key": key, "text": text, "unmodifiedText": text }),
        );
    }

    pub fn key_up(&mut self, code: &str, key: &str) {
        self.call(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyUp", "code": code, "key": key }),
        );
    }

    /// A key press and release.
    pub fn key(&mut self, code: &str, key: &str, text: &str) {
        self.key_down(code, key, text);
        self.key_up(code, key);
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Helpers may still be closing files in the profile for a moment.
        for _ in 0..20 {
            if std::fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// GET over plain HTTP/1.1 from the DevTools endpoint, parsed as JSON.
fn http_get_json(port: u16, path: &str) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut length = None;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).unwrap();
        }
        None => {
            r.read_to_end(&mut body).unwrap();
        }
    }
    serde_json::from_slice(&body).unwrap()
}

pub fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::new();
    for quad in text.as_bytes().chunks(4) {
        let digits: Vec<u8> = quad
            .iter()
            .filter(|&&c| c != b'=')
            .map(|&c| value(c))
            .collect();
        let bits = digits
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &d)| acc | (u32::from(d) << (18 - 6 * i)));
        out.extend_from_slice(&bits.to_be_bytes()[1..digits.len()]);
    }
    out
}

/// One chunk of `rdpwire.takeAudioCapture()`, its samples decoded.
#[derive(Debug)]
pub struct Captured {
    /// Page time the chunk left the decoder.
    pub t: f64,
    /// Page time its first sample left the worklet.
    pub played: f64,
    pub timestamp_us: u64,
    /// Channel 0, full scale 1.0.
    pub samples: Vec<f32>,
}

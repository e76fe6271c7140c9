//! Starts the real `rdpwire` binary and talks to it over real sockets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tungstenite::stream::MaybeTlsStream;
use tungstenite::WebSocket;

pub const BIN: &str = env!("CARGO_BIN_EXE_rdpwire");

/// The test RDP servers (the demo desktop in the test process, FreeRDP's shadow server) listen
/// on 127.0.0.1, which the target policy refuses by default. Every gateway a test starts
/// allows exactly that address, through `RDPWIRE_TARGET_ALLOW`, unless the test sets or
/// removes that variable on its command itself (as the policy tests do).
pub const LOOPBACK_ALLOW: &str = "127.0.0.1/32";
pub const TARGET_ALLOW_ENV: &str = "RDPWIRE_TARGET_ALLOW";

pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// `rdpwire check-config --json` with these arguments.
pub fn plan(args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("check-config")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

impl Gateway {
    pub fn start(args: &[&str]) -> Gateway {
        Self::start_with(Command::new(BIN), args)
    }

    /// `rdpwire demo`: the gateway with its embedded demo desktop as the default target.
    pub fn start_demo(args: &[&str]) -> Gateway {
        Self::start_sub(Command::new(BIN), "demo", args)
    }

    /// Starts `cmd` (the binary, or a wrapper such as taskset) with `serve` and `args`.
    pub fn start_with(cmd: Command, args: &[&str]) -> Gateway {
        Self::start_sub(cmd, "serve", args)
    }

    pub fn start_sub(mut cmd: Command, sub: &str, args: &[&str]) -> Gateway {
        if cmd.get_program() == BIN {
            cmd.arg(sub);
        } else {
            cmd.arg(BIN).arg(sub);
        }
        if !cmd.get_envs().any(|(k, _)| k == TARGET_ALLOW_ENV) {
            cmd.env(TARGET_ALLOW_ENV, LOOPBACK_ALLOW);
        }
        cmd.args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RDPWIRE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if let Some(addr) = v.get("addr").and_then(|a| a.as_str()) {
                            if v["message"]
                                .as_str()
                                .unwrap_or("")
                                .starts_with("listening on")
                            {
                                let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                            }
                        }
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("gateway did not start: {:?}", logs.lock().unwrap());
            }
        };
        Gateway { child, addr, logs }
    }

    pub fn get(&self, path: &str) -> HttpReply {
        http_raw(
            self.addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
    }

    pub fn metrics(&self) -> Metrics {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200);
        Metrics(r.body)
    }

    pub fn ws(&self) -> Result<Ws, tungstenite::Error> {
        let (mut ws, _) = tungstenite::connect(format!("ws://{}/ws", self.addr))?;
        set_timeout(&mut ws);
        Ok(Ws { ws })
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("gateway did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set_timeout(ws: &mut WebSocket<MaybeTlsStream<TcpStream>>) {
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
}

pub struct Ws {
    pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// The next browser-protocol message (control frames skipped); a close or an error fails
    /// the test with the gateway's log.
    pub fn next_logged(&mut self, gw: &Gateway) -> Vec<u8> {
        loop {
            match self.ws.read() {
                Ok(tungstenite::Message::Binary(b)) => return b.to_vec(),
                Ok(tungstenite::Message::Close(f)) => {
                    panic!("closed: {f:?}\n{}", gw.log_text())
                }
                Ok(_) => {}
                Err(e) => panic!("{e}\n{}", gw.log_text()),
            }
        }
    }

    /// Sends one browser-protocol message.
    pub fn send(&mut self, m: &rdpwire::protocol::FromBrowser) {
        self.ws
            .send(tungstenite::Message::binary(m.encode()))
            .unwrap();
    }

    /// Reads the ServerHello every session starts with; returns (session id, core index).
    pub fn hello(&mut self) -> (u64, u16) {
        let m = self.ws.read().unwrap().into_data();
        assert_eq!(&m[..2], &[1, 0x01], "not a ServerHello: {m:?}");
        (
            u64::from_le_bytes(m[2..10].try_into().unwrap()),
            u16::from_le_bytes(m[10..12].try_into().unwrap()),
        )
    }

    /// Sends a Ping and waits for the matching Pong.
    pub fn ping(&mut self, nonce: u64) {
        let mut p = vec![1u8, 0x81];
        p.extend_from_slice(&nonce.to_le_bytes());
        self.ws.send(tungstenite::Message::binary(p)).unwrap();
        loop {
            let m = self.ws.read().unwrap();
            if let tungstenite::Message::Binary(b) = m {
                assert_eq!(&b[..2], &[1, 0x02]);
                assert_eq!(u64::from_le_bytes(b[2..10].try_into().unwrap()), nonce);
                return;
            }
        }
    }

    /// Reads until the gateway's close frame; returns its code and reason.
    pub fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.ws.read() {
                Ok(tungstenite::Message::Close(Some(f))) => {
                    return (u16::from(f.code), f.reason.to_string())
                }
                Ok(tungstenite::Message::Close(None)) => return (1005, String::new()),
                Ok(_) => continue,
                Err(e) => panic!("no close frame: {e}"),
            }
        }
    }

    pub fn close(mut self) {
        let _ = self.ws.close(None);
        // Read until the close handshake completes so the gateway sees a clean close.
        while self.ws.read().is_ok() {}
    }
}

pub struct HttpReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// Sends raw bytes, reads the whole reply until the gateway closes.
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> HttpReply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    read_reply(&mut s)
}

pub fn read_reply(s: &mut TcpStream) -> HttpReply {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    HttpReply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// Prometheus text with lookup by full sample name (labels included).
pub struct Metrics(pub String);

impl Metrics {
    pub fn get(&self, sample: &str) -> u64 {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {sample} in\n{}", self.0))
    }
}

/// A memory figure of process `pid` from `/proc/<pid>/status`, in bytes: `VmRSS` (all
/// resident memory) or `RssAnon` (heap, stacks, arenas; not the binary's code pages).
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        * 1024
}

/// Polls `f` until it returns true or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A test's configuration directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Logs of in-process servers to the test output (`RDPWIRE_TEST_LOG`, default `rdpwire=info`).
pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("RDPWIRE_TEST_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("rdpwire=info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

//! Synthetic browsers: one thread each, speaking the browser protocol of `docs/protocol.md`
//! (ServerHello, ClientHello, frames acknowledged with FrameDecoded at each EndFrame, a Ping
//! every 2 s like the page), plus the hostile kinds: slow readers, stalled pages, pages that
//! vanish in the middle of a large message, and a storm of upgrade attempts.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use rdpwire::protocol::{types, FromBrowser, ToBrowser};
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::pump::{Adopter, Page, Pump};
use crate::servers;
use crate::wire::{self, Upgrade};

/// Event-loop threads the well-behaved pages share once connected.
const PUMPS: usize = 2;

/// What one read of a test browser asks the socket for.
const BROWSER_READ_BUFFER: usize = 16 << 10;

/// The page pings this often.
pub const PING_EVERY: Duration = Duration::from_secs(2);
/// A gap between two frames this long, while the page acknowledges, is a stall.
pub const STALL: Duration = Duration::from_millis(500);
/// How long a browser waits in one read before it looks at the control flags.
const POLL: Duration = Duration::from_millis(250);
/// Kernel receive buffer of a slow browser (Linux doubles it).
const SLOW_RCVBUF: usize = 4096;
const THREAD_STACK: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Reads everything at once and acknowledges every frame, like the page.
    Page,
    /// Never acknowledges a frame.
    Stalled,
    /// Small receive buffer, reads at a few kB/s; acknowledges what it gets.
    Slow,
    /// Reads part of a large message, then resets the connection; reconnects and repeats.
    DropMidframe,
    /// Upgrade attempts in a loop; an accepted one holds its slot until the run ends.
    Storm,
}

/// Flags every browser follows.
pub struct Control {
    pub stop: AtomicBool,
    /// Pages acknowledge frames (off: the idle window, where every stream pauses).
    pub acking: AtomicBool,
    /// Residence times and stalls are recorded.
    pub recording: AtomicBool,
}

/// What one browser saw.
#[derive(Default)]
pub struct Stats {
    /// EndFrames received.
    pub frames: AtomicU64,
    /// Access-unit bytes received.
    pub bytes: AtomicU64,
    /// Gaps longer than [`STALL`] while recording and acknowledging.
    pub stalls: AtomicU64,
    /// The first frame arrived (or the browser gave up).
    pub settled: AtomicBool,
    pub streaming: AtomicBool,
    pub ended: AtomicBool,
    /// Upgrades answered 101.
    pub accepted: AtomicU64,
    /// Upgrades answered 503 with a Retry-After.
    pub refused_clean: AtomicU64,
    /// Upgrades answered anything else, or failed.
    pub refused_other: AtomicU64,
    /// Drop-midframe: resets in a large message, and in a smaller one (none large came).
    pub drops_large: AtomicU64,
    pub drops_small: AtomicU64,
    /// Sessions that ended before the harness stopped them, with the last reason.
    pub failures: AtomicU64,
    pub last_failure: Mutex<Option<String>>,
}

impl Stats {
    pub fn fail(&self, why: String) {
        self.failures.fetch_add(1, Relaxed);
        *self
            .last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(why);
    }

    /// Counted as started: streaming (or, for kinds that cannot wait for a whole frame,
    /// connected); or given up.
    pub fn settle(&self, env: &Env, streaming: bool) {
        if !self.settled.swap(true, Relaxed) {
            if streaming {
                self.streaming.store(true, Relaxed);
            }
            env.pending.fetch_sub(1, Relaxed);
        }
    }
}

/// What every browser shares: where to connect, what to ask for, where results go.
pub struct Env {
    pub addr: String,
    pub width: u16,
    pub height: u16,
    pub slow_rate: u32,
    pub large_message: usize,
    /// Frame residence times, nanoseconds (server send → browser receive).
    pub latency: Mutex<Histogram<u64>>,
    /// Upgrade outcomes by kind ("101", "503 full", "503 busy", "error: …").
    pub outcomes: Mutex<BTreeMap<String, u64>>,
    /// Browsers started that have not yet seen a first frame (or given up).
    pub pending: AtomicUsize,
}

impl Env {
    pub fn new(
        addr: String,
        size: (u16, u16),
        slow_rate: u32,
        large_message: usize,
    ) -> Result<Env> {
        Ok(Env {
            addr,
            width: size.0,
            height: size.1,
            slow_rate,
            large_message,
            latency: Mutex::new(Histogram::new_with_bounds(1_000, 60_000_000_000, 3)?),
            outcomes: Mutex::new(BTreeMap::new()),
            pending: AtomicUsize::new(0),
        })
    }

    fn outcome(&self, what: String) {
        *self
            .outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(what)
            .or_default() += 1;
    }

    pub fn record_latency(&self, ns: u64) {
        let _ = self
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(ns.max(1_000));
    }
}

pub struct Browser {
    pub kind: Kind,
    /// Counted among the well-behaved sessions whose frame rate must hold.
    pub well_behaved: bool,
    pub target: String,
    pub stats: Arc<Stats>,
    handle: Option<JoinHandle<()>>,
}

/// All browsers of a run.
pub struct Fleet {
    pub ctl: Arc<Control>,
    pub env: Arc<Env>,
    pub browsers: Vec<Browser>,
    /// Where well-behaved pages stream once connected ([`pump`](crate::pump)).
    pumps: Vec<Pump>,
}

impl Fleet {
    pub fn new(env: Env) -> Result<Fleet> {
        let ctl = Arc::new(Control {
            stop: AtomicBool::new(false),
            acking: AtomicBool::new(true),
            recording: AtomicBool::new(false),
        });
        let env = Arc::new(env);
        let pumps = (0..PUMPS)
            .map(|n| Pump::start(n, Arc::clone(&env), Arc::clone(&ctl)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Fleet {
            ctl,
            env,
            browsers: Vec::new(),
            pumps,
        })
    }

    /// Starts one browser. Never more than `max_pending` wait for their first frame at once,
    /// so the gateway sees sessions arrive, not a burst of upgrades.
    pub fn spawn(
        &mut self,
        kind: Kind,
        well_behaved: bool,
        target: String,
        max_pending: usize,
    ) -> Result<()> {
        while self.env.pending.load(Relaxed) >= max_pending {
            std::thread::sleep(Duration::from_millis(2));
        }
        let stats = Arc::new(Stats::default());
        let (ctl, env, st, t) = (
            Arc::clone(&self.ctl),
            Arc::clone(&self.env),
            Arc::clone(&stats),
            target.clone(),
        );
        if kind == Kind::Storm {
            st.settled.store(true, Relaxed);
        } else {
            env.pending.fetch_add(1, Relaxed);
        }
        let pump = self
            .pumps
            .get(self.browsers.len() % PUMPS)
            .map(Pump::adopter);
        let handle = std::thread::Builder::new()
            .name(format!("browser-{}", self.browsers.len()))
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let handed_off = match kind {
                    Kind::Page | Kind::Stalled | Kind::Slow => {
                        page(&env, &ctl, &st, kind, &t, pump.as_ref())
                    }
                    Kind::DropMidframe => {
                        drop_midframe(&env, &ctl, &st, &t);
                        false
                    }
                    Kind::Storm => {
                        storm(&env, &ctl, &st);
                        false
                    }
                };
                if !handed_off {
                    st.settle(&env, false);
                    st.ended.store(true, Relaxed);
                }
            })
            .context("starting a browser thread")?;
        self.browsers.push(Browser {
            kind,
            well_behaved,
            target,
            stats,
            handle: Some(handle),
        });
        Ok(())
    }

    /// Waits until every browser started so far has its first frame or gave up.
    pub fn wait_settled(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.browsers.iter().all(|b| b.stats.settled.load(Relaxed)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Frames received so far, per browser.
    pub fn frames(&self) -> Vec<u64> {
        self.browsers
            .iter()
            .map(|b| b.stats.frames.load(Relaxed))
            .collect()
    }

    /// Stops every browser and joins its thread.
    pub fn stop(&mut self) {
        self.ctl.stop.store(true, Relaxed);
        for p in &mut self.pumps {
            p.join();
        }
        for b in &mut self.browsers {
            if let Some(h) = b.handle.take() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A socket reader that takes at most `rate` bytes per second.
pub struct Paced {
    pub inner: TcpStream,
    rate: Option<u32>,
    allowance: f64,
    last: Instant,
}

impl Read for Paced {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(rate) = self.rate else {
            return self.inner.read(buf);
        };
        let rate = f64::from(rate);
        let burst = (rate / 4.0).max(256.0);
        self.allowance = (self.allowance + self.last.elapsed().as_secs_f64() * rate).min(burst);
        self.last = Instant::now();
        if self.allowance < 1.0 {
            // Like a read that timed out: the caller looks at its flags and comes back.
            std::thread::sleep(Duration::from_secs_f64(256.0f64.min(burst) / rate).min(POLL));
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.allowance as usize);
        let got = self.inner.read(buf.get_mut(..n).unwrap_or_default())?;
        self.allowance -= got as f64;
        Ok(got)
    }
}

impl Write for Paced {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn connect(addr: &str, rcvbuf: Option<usize>) -> Result<TcpStream> {
    let addr: SocketAddr = addr.parse()?;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if let Some(size) = rcvbuf {
        // Before connect(), so the window is small from the first byte.
        sock.set_recv_buffer_size(size)?;
    }
    sock.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    let tcp: TcpStream = sock.into();
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

fn is_timeout(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if matches!(io.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

fn send(ws: &mut WebSocket<Paced>, m: &FromBrowser) -> Result<()> {
    ws.send(Message::binary(m.encode()))?;
    Ok(())
}

/// A page (or a stalled or slow one): one session until the harness stops it. A page is
/// handed to `pump` once its hello is sent (returns true); the others stay on this thread.
fn page(
    env: &Env,
    ctl: &Control,
    st: &Arc<Stats>,
    kind: Kind,
    target: &str,
    pump: Option<&Adopter>,
) -> bool {
    match page_session(env, ctl, st, kind, target, pump) {
        Ok(handed_off) => handed_off,
        Err(e) => {
            if !ctl.stop.load(Relaxed) {
                st.fail(format!("{e:#}"));
            }
            false
        }
    }
}

fn page_session(
    env: &Env,
    ctl: &Control,
    st: &Arc<Stats>,
    kind: Kind,
    target: &str,
    pump: Option<&Adopter>,
) -> Result<bool> {
    let slow = kind == Kind::Slow;
    let tcp = connect(&env.addr, slow.then_some(SLOW_RCVBUF))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let stream = Paced {
        inner: tcp,
        rate: slow.then_some(env.slow_rate),
        allowance: 0.0,
        last: Instant::now(),
    };
    let url = format!("ws://{}/ws", env.addr);
    // tungstenite zeroes its read buffer's spare room before each read (128 KiB by default):
    // a fifth of the test browsers' CPU until this was set to what a frame read needs.
    let config = WebSocketConfig::default().read_buffer_size(BROWSER_READ_BUFFER);
    let mut attempt = tungstenite::client::client_with_config(url.as_str(), stream, Some(config));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ws = loop {
        match attempt {
            Ok((ws, _)) => break ws,
            Err(HandshakeError::Interrupted(mid)) if Instant::now() < deadline => {
                attempt = mid.handshake();
            }
            Err(HandshakeError::Interrupted(_)) => bail!("upgrade timed out"),
            Err(HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                let retry = resp.headers().contains_key("retry-after");
                let body = resp
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                    .unwrap_or_default();
                if status == 503 && retry {
                    st.refused_clean.fetch_add(1, Relaxed);
                } else {
                    st.refused_other.fetch_add(1, Relaxed);
                }
                env.outcome(outcome_name(status, &body));
                bail!("upgrade refused: {status} {body}");
            }
            Err(HandshakeError::Failure(e)) => {
                st.refused_other.fetch_add(1, Relaxed);
                env.outcome(format!("error: {}", short(&e.to_string())));
                bail!("upgrade failed: {e}");
            }
        }
    };
    st.accepted.fetch_add(1, Relaxed);
    env.outcome("101".to_owned());
    let hello = loop {
        match ws.read() {
            Ok(Message::Binary(b)) => break b,
            Ok(_) => {}
            Err(e) if is_timeout(&e) && Instant::now() < deadline => {}
            Err(e) => bail!("no ServerHello: {e}"),
        }
    };
    if hello.get(1) != Some(&types::SERVER_HELLO) {
        bail!("the first message is not a ServerHello");
    }
    send(
        &mut ws,
        &FromBrowser::ClientHello {
            width: env.width,
            height: env.height,
            target: target.to_owned(),
        },
    )?;
    if slow {
        // A whole key frame takes a slow reader many seconds: connected is started.
        st.settle(env, true);
    }
    if let (Kind::Page, Some(pump)) = (kind, pump) {
        ws.get_mut().inner.set_nonblocking(true)?;
        pump.adopt(Page {
            ws,
            stats: Arc::clone(st),
        })?;
        return Ok(true);
    }
    ws.get_mut().inner.set_read_timeout(Some(POLL))?;
    let mut next_ping = Instant::now() + PING_EVERY;
    let mut nonce = 0u64;
    let mut page = PageState::default();
    let acks = kind != Kind::Stalled;
    while !ctl.stop.load(Relaxed) {
        if Instant::now() >= next_ping {
            nonce += 1;
            send(&mut ws, &FromBrowser::Ping { nonce })?;
            next_ping += PING_EVERY;
        }
        let msg = match ws.read() {
            Ok(Message::Binary(b)) => b,
            Ok(Message::Close(f)) => bail!("closed by the gateway: {f:?}"),
            Ok(_) => continue,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        if let Some(ack) = page.on_message(env, ctl, st, acks, &msg)? {
            send(&mut ws, &ack)?;
        }
    }
    let _ = ws.close(None);
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match ws.read() {
            Err(e) if is_timeout(&e) => {}
            Err(_) | Ok(Message::Close(_)) => break,
            Ok(_) => {}
        }
    }
    Ok(false)
}

/// What a page remembers of its stream, and how it takes one message from the gateway; shared
/// by the pages on their own threads and those on a [`pump`](crate::pump).
#[derive(Default)]
pub struct PageState {
    decoded: u32,
    last_frame: Option<Instant>,
}

impl PageState {
    /// Records what `msg` says (bytes, residence time, frames, stalls) and returns the
    /// FrameDecoded to send for it, if the page acknowledges now.
    pub fn on_message(
        &mut self,
        env: &Env,
        ctl: &Control,
        st: &Stats,
        acks: bool,
        msg: &[u8],
    ) -> Result<Option<FromBrowser>> {
        let received = servers::now_ns();
        let mut ack = None;
        match ToBrowser::decode(msg) {
            Ok(ToBrowser::Avc420 { access_unit, .. }) => {
                st.bytes.fetch_add(access_unit.len() as u64, Relaxed);
                if ctl.recording.load(Relaxed) {
                    if let Some(sent) = servers::read_stamp(&access_unit) {
                        env.record_latency(received.saturating_sub(sent));
                    }
                }
            }
            Ok(ToBrowser::EndFrame { frame_id }) => {
                st.frames.fetch_add(1, Relaxed);
                self.decoded = self.decoded.wrapping_add(1);
                let now = Instant::now();
                let acking = acks && ctl.acking.load(Relaxed);
                if let Some(prev) = self.last_frame {
                    if acking && ctl.recording.load(Relaxed) && now - prev > STALL {
                        st.stalls.fetch_add(1, Relaxed);
                    }
                }
                self.last_frame = Some(now);
                st.settle(env, true);
                if acking {
                    ack = Some(FromBrowser::FrameDecoded {
                        frame_id,
                        frames_decoded: self.decoded,
                        queue_depth: 0,
                    });
                }
            }
            Ok(ToBrowser::Disconnected { reason }) => bail!("disconnected: {reason}"),
            Ok(_) => {}
            Err(e) => bail!("undecodable message: {e}"),
        }
        if !acks || !ctl.acking.load(Relaxed) {
            // Not acknowledging: a pause is expected, not a stall.
            self.last_frame = None;
        }
        Ok(ack)
    }
}

fn outcome_name(status: u16, body: &str) -> String {
    let word = body.split(':').next().unwrap_or("").trim();
    if word.is_empty() || word.len() > 20 {
        status.to_string()
    } else {
        format!("{status} {word}")
    }
}

fn short(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Opens a session, takes frames until a large message starts, reads part of it and
/// vanishes (RST); then again, until stopped.
fn drop_midframe(env: &Env, ctl: &Control, st: &Stats, target: &str) {
    while !ctl.stop.load(Relaxed) {
        if let Err(e) = drop_once(env, ctl, st, target) {
            if !ctl.stop.load(Relaxed) {
                st.fail(format!("{e:#}"));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn drop_once(env: &Env, ctl: &Control, st: &Stats, target: &str) -> Result<()> {
    let mut ws = match wire::upgrade(&env.addr, Duration::from_secs(10)) {
        Ok(Upgrade::Accepted(ws)) => ws,
        Ok(Upgrade::Refused {
            status,
            retry_after,
            reason,
        }) => {
            if status == 503 && retry_after {
                st.refused_clean.fetch_add(1, Relaxed);
            } else {
                st.refused_other.fetch_add(1, Relaxed);
            }
            env.outcome(outcome_name(status, &reason));
            std::thread::sleep(Duration::from_millis(200));
            return Ok(());
        }
        Err(e) => {
            st.refused_other.fetch_add(1, Relaxed);
            env.outcome(format!("error: {}", short(&e.to_string())));
            return Err(e);
        }
    };
    st.accepted.fetch_add(1, Relaxed);
    env.outcome("101".to_owned());
    // The first large message may come before any frame ends: connected is started.
    st.settle(env, true);
    ws.stream.set_read_timeout(Some(POLL))?;
    let started = Instant::now();
    let mut said_hello = false;
    let mut decoded = 0u32;
    let mut streaming_since: Option<Instant> = None;
    loop {
        if ctl.stop.load(Relaxed) {
            ws.close();
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) && streaming_since.is_none() {
            bail!("no frame within 30 s");
        }
        let Some(h) = ws.header()? else { continue };
        match h.opcode {
            wire::OP_BINARY | wire::OP_CONTINUATION => {
                // Vanish inside a large message; if none came for 3 s of streaming, inside
                // the next message with some payload.
                let large = h.len >= env.large_message;
                let waited = streaming_since.is_some_and(|t| t.elapsed() > Duration::from_secs(3));
                if said_hello && (large || (waited && h.len >= 64)) {
                    ws.skip(h.len / 2)?;
                    ws.abort();
                    if large {
                        st.drops_large.fetch_add(1, Relaxed);
                    } else {
                        st.drops_small.fetch_add(1, Relaxed);
                    }
                    return Ok(());
                }
                let payload = ws.payload(h.len)?;
                if h.opcode != wire::OP_BINARY || !h.fin {
                    continue;
                }
                match ToBrowser::decode(&payload) {
                    Ok(ToBrowser::ServerHello { .. }) => {
                        let hello = FromBrowser::ClientHello {
                            width: env.width,
                            height: env.height,
                            target: target.to_owned(),
                        };
                        ws.send(wire::OP_BINARY, &hello.encode())?;
                        said_hello = true;
                    }
                    Ok(ToBrowser::EndFrame { frame_id }) => {
                        st.frames.fetch_add(1, Relaxed);
                        decoded = decoded.wrapping_add(1);
                        streaming_since.get_or_insert_with(Instant::now);
                        let ack = FromBrowser::FrameDecoded {
                            frame_id,
                            frames_decoded: decoded,
                            queue_depth: 0,
                        };
                        ws.send(wire::OP_BINARY, &ack.encode())?;
                    }
                    Ok(ToBrowser::Disconnected { reason }) => bail!("disconnected: {reason}"),
                    _ => {}
                }
            }
            wire::OP_CLOSE => {
                let p = ws.payload(h.len)?;
                bail!(
                    "closed by the gateway: {}",
                    String::from_utf8_lossy(p.get(2..).unwrap_or_default())
                );
            }
            wire::OP_PING => {
                let p = ws.payload(h.len)?;
                ws.send(0xA, &p)?;
            }
            _ => ws.skip(h.len)?,
        }
    }
}

/// Upgrade attempts in a loop. A 101 is kept: the connection holds its session slot (it
/// reads the ServerHello and pings like a page, but never names a target) until the run ends
/// or the gateway closes it; a 503 is counted as clean when it carries a Retry-After (which
/// the storm ignores: it tries again 50 ms later); anything else is counted by kind.
fn storm(env: &Env, ctl: &Control, st: &Stats) {
    while !ctl.stop.load(Relaxed) {
        match wire::upgrade(&env.addr, Duration::from_secs(10)) {
            Ok(Upgrade::Accepted(ws)) => {
                st.accepted.fetch_add(1, Relaxed);
                env.outcome("101".to_owned());
                if let Err(e) = hold(ws, ctl) {
                    if !ctl.stop.load(Relaxed) {
                        st.fail(format!("{e:#}"));
                    }
                }
            }
            Ok(Upgrade::Refused {
                status,
                retry_after,
                reason,
            }) => {
                if status == 503 && retry_after {
                    st.refused_clean.fetch_add(1, Relaxed);
                } else {
                    st.refused_other.fetch_add(1, Relaxed);
                }
                env.outcome(outcome_name(status, &reason));
            }
            Err(e) => {
                st.refused_other.fetch_add(1, Relaxed);
                env.outcome(format!("error: {}", short(&e.to_string())));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Keeps an accepted storm connection open, pinging every 2 s, until the run stops.
fn hold(mut ws: wire::RawWs, ctl: &Control) -> Result<()> {
    ws.stream.set_read_timeout(Some(POLL))?;
    let mut next_ping = Instant::now() + PING_EVERY;
    let mut nonce = 0u64;
    while !ctl.stop.load(Relaxed) {
        if Instant::now() >= next_ping {
            nonce += 1;
            ws.send(wire::OP_BINARY, &FromBrowser::Ping { nonce }.encode())?;
            next_ping += PING_EVERY;
        }
        let Some(h) = ws.header()? else { continue };
        if h.opcode == wire::OP_CLOSE {
            let p = ws.payload(h.len)?;
            bail!(
                "closed by the gateway: {}",
                String::from_utf8_lossy(p.get(2..).unwrap_or_default())
            );
        }
        ws.skip(h.len)?;
    }
    ws.close();
    Ok(())
}

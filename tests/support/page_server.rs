//! A scripted stand-in for the gateway: serves the real embedded web client
//! (`rdpwire::web::assets()`) over HTTP, and hands each page WebSocket to the test, which
//! then plays the gateway's side message by message. Lets tests put exact protocol messages
//! in front of the page in a real browser, without an RDP server.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use crate::wire::{decode_from_page, pong, FromPage};

pub struct PageServer {
    pub addr: SocketAddr,
    /// Every request head the server received, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    sessions: mpsc::Receiver<WebSocket<TcpStream>>,
    stop: Arc<AtomicBool>,
}

impl PageServer {
    pub fn start() -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, sessions) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        {
            let stop = stop.clone();
            let requests = requests.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let tx = tx.clone();
                    let requests = requests.clone();
                    std::thread::spawn(move || serve(stream, tx, requests));
                }
            });
        }
        PageServer {
            addr,
            requests,
            sessions,
            stop,
        }
    }

    /// The page's address, with `query` (e.g. `?target=office`, or empty).
    pub fn url(&self, query: &str) -> String {
        format!("http://{}/{query}", self.addr)
    }

    /// The next WebSocket a page opened on `/ws`.
    pub fn accept(&self) -> Peer {
        let ws = self
            .sessions
            .recv_timeout(Duration::from_secs(20))
            .expect("the page opened no WebSocket within 20 s");
        if let Ok(s) = ws.get_ref().try_clone() {
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            s.set_nodelay(true).unwrap();
        }
        Peer {
            ws,
            pings: 0,
            answer_pings: true,
        }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// One HTTP request: an asset, or the WebSocket upgrade on `/ws`.
fn serve(
    mut stream: TcpStream,
    sessions: mpsc::Sender<WebSocket<TcpStream>>,
    requests: Arc<Mutex<Vec<String>>>,
) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Look at the head without consuming it: tungstenite reads it itself for an upgrade.
    let mut head = vec![0u8; 16 * 1024];
    let started = Instant::now();
    let n = loop {
        let Ok(n) = stream.peek(&mut head) else {
            return;
        };
        if n == 0 {
            return;
        }
        if head[..n].windows(4).any(|w| w == b"\r\n\r\n") || n == head.len() {
            break n;
        }
        if started.elapsed() > Duration::from_secs(10) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let text = String::from_utf8_lossy(&head[..n]).to_string();
    requests.lock().unwrap().push(text.clone());
    let path = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_owned();
    if path == "/ws" {
        if let Ok(ws) = tungstenite::accept(stream) {
            let _ = sessions.send(ws);
        }
        return;
    }
    // Consume the head, then answer and close.
    let end = text.find("\r\n\r\n").map(|i| i + 4).unwrap_or(n);
    let mut sink = vec![0u8; end];
    let _ = stream.read_exact(&mut sink);
    let (status, content_type, body): (&str, &str, &[u8]) = match rdpwire::web::asset(&path) {
        Some(a) => ("200 OK", a.content_type, a.body),
        None if path == "/readyz" => ("200 OK", "text/plain", b"ready\n"),
        None => ("404 Not Found", "text/plain", b"no such page\n"),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

/// The gateway's end of one page session.
pub struct Peer {
    pub ws: WebSocket<TcpStream>,
    /// Pings the page sent (answered with Pongs while `answer_pings` is set).
    pub pings: u32,
    pub answer_pings: bool,
}

impl Peer {
    pub fn send(&mut self, msg: Vec<u8>) {
        self.ws.send(Message::binary(msg)).unwrap();
    }

    pub fn send_all(&mut self, msgs: impl IntoIterator<Item = Vec<u8>>) {
        for m in msgs {
            self.ws.write(Message::binary(m)).unwrap();
        }
        self.ws.flush().unwrap();
    }

    /// The next message from the page other than a Ping, within `within`.
    pub fn next_within(&mut self, within: Duration) -> Option<FromPage> {
        let deadline = Instant::now() + within;
        loop {
            match self.ws.read() {
                Ok(Message::Binary(b)) => match decode_from_page(&b) {
                    FromPage::Ping { nonce } => {
                        self.pings += 1;
                        if self.answer_pings {
                            self.send(pong(nonce));
                        }
                    }
                    m => return Some(m),
                },
                Ok(Message::Text(t)) => panic!("the page sent a text message: {t}"),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("page WebSocket failed: {e}"),
            }
            if Instant::now() > deadline {
                return None;
            }
        }
    }

    /// The next non-Ping message, failing the test after 10 s.
    pub fn next(&mut self) -> FromPage {
        self.next_within(Duration::from_secs(10))
            .expect("the page sent nothing within 10 s")
    }

    /// Every message the page sends within `within`.
    pub fn collect(&mut self, within: Duration) -> Vec<FromPage> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while let Some(m) = self.next_within(deadline.saturating_duration_since(Instant::now())) {
            out.push(m);
        }
        out
    }

    /// Skips input messages (mouse moves the driver causes) up to the next FrameDecoded.
    pub fn frame_decoded(&mut self) -> (u32, u32, u16) {
        loop {
            match self.next() {
                FromPage::FrameDecoded {
                    frame_id,
                    frames_decoded,
                    queue_depth,
                } => return (frame_id, frames_decoded, queue_depth),
                FromPage::MouseMove { .. } => {}
                other => panic!("expected FrameDecoded, the page sent {other:?}"),
            }
        }
    }

    /// Waits for the page's ClientHello after sending ServerHello.
    pub fn handshake(&mut self, session_id: u64) -> (u16, u16, String) {
        self.send(crate::wire::server_hello(session_id, 0, 65536));
        match self.next() {
            FromPage::ClientHello {
                width,
                height,
                target,
            } => (width, height, target),
            other => panic!("expected ClientHello, got {other:?}"),
        }
    }

    pub fn close(&mut self, code: u16, reason: &str) {
        let _ = self.ws.close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        }));
        let _ = self.ws.flush();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match self.ws.read() {
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => return,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

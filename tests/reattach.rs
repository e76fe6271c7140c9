//! Faults survived, nothing lost: a page that goes away and comes back within the grace period
//! finds its desktop as it left it (the same RDP connection), on whichever core the kernel
//! hands its new connection to; a desktop that goes away is reported to the page in words and
//! its session's memory comes back. The real gateway binary, the demo desktop in this process
//! as the RDP server, a WebSocket client speaking the browser protocol, OpenH264 for pixels.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rdpwire::demo::painter::TYPED_AT;
use rdpwire::demo::{DemoAudio, DemoOptions, DemoServer};
use rdpwire::protocol::{FromBrowser, State, ToBrowser};
use rdpwire::rdp::InputEvent;
use rdpwire::resume::Ticket;
use support::{eventually, Gateway, TempDir, Ws};
use tungstenite::Message;

const USER: &str = "demo";
const PASSWORD: &str = "reattach-pass-5e1c";

fn demo_server(bind: SocketAddr) -> DemoServer {
    support::init_logs();
    DemoServer::start(DemoOptions {
        bind,
        username: USER.to_owned(),
        password: PASSWORD.to_owned(),
        audio: DemoAudio::Off,
        content: rdpwire::demo::Content::Desktop,
        max_connections: rdpwire::demo::MAX_CONNECTIONS,
    })
    .unwrap()
}

/// A gateway whose default target is the demo server at `port`.
fn gateway(port: u16, args: &[&str]) -> (Gateway, TempDir) {
    let dir = std::env::temp_dir().join(format!(
        "rdpwire-reattach-{}-{port}-{}",
        std::process::id(),
        args.join("")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gw.toml");
    std::fs::write(
        &file,
        format!(
            "[targets.demo]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"{USER}\"\n\
             password_env = \"REATTACH_PW\"\ntls = \"insecure\"\n"
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(support::BIN);
    cmd.env("REATTACH_PW", PASSWORD);
    let mut all = vec![
        "--config",
        file.to_str().unwrap(),
        "--default-target",
        "demo",
    ];
    all.extend_from_slice(args);
    (Gateway::start_with(cmd, &all), TempDir(dir))
}

fn connect(gw: &Gateway, path: &str) -> Ws {
    let (mut ws, _) = tungstenite::connect(format!("ws://{}{path}", gw.addr)).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    Ws { ws }
}

/// True when an Annex B access unit holds an IDR slice (a fresh decoder can start there).
fn is_key_frame(au: &[u8]) -> bool {
    au.windows(4)
        .any(|w| w[..3] == [0, 0, 1] && w[3] & 0x1f == 5)
}

/// A page as far as the test needs one: it acknowledges every frame, decodes the H.264
/// stream with OpenH264 and keeps the picture, and keeps its resume ticket.
struct Page {
    ws: Ws,
    decoder: openh264::decoder::Decoder,
    rgb: Vec<u8>,
    width: usize,
    frames: u32,
    session: u64,
    core: u16,
    ticket: Option<Ticket>,
    key_frames: u32,
    statuses: Vec<String>,
    disconnected: Option<String>,
}

impl Page {
    fn new(ws: Ws) -> Page {
        Page {
            ws,
            decoder: openh264::decoder::Decoder::new().unwrap(),
            rgb: Vec::new(),
            width: 0,
            frames: 0,
            session: 0,
            core: 0,
            ticket: None,
            key_frames: 0,
            statuses: Vec::new(),
            disconnected: None,
        }
    }

    /// Opens a new session on the default target.
    fn start(gw: &Gateway) -> Page {
        let mut page = Page::new(connect(gw, "/ws"));
        page.ws.send(&FromBrowser::ClientHello {
            width: 1024,
            height: 768,
            target: String::new(),
        });
        page
    }

    /// Resumes session `id` with `ticket` from a new WebSocket.
    fn resume(gw: &Gateway, id: u64, ticket: &Ticket) -> Page {
        let mut page = Page::new(connect(gw, &format!("/ws?resume={id}")));
        page.ws.send(&FromBrowser::Resume {
            session_id: id,
            ticket: ticket.clone(),
        });
        page
    }

    /// Reads messages (acknowledging frames) until `done` says so; fails with the log.
    fn until(
        &mut self,
        gw: &Gateway,
        what: &str,
        within: Duration,
        mut done: impl FnMut(&Page) -> bool,
    ) {
        let deadline = Instant::now() + within;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "no {what} within {within:?} ({} frames)\n{}",
                self.frames,
                gw.log_text()
            );
            let m = match self.ws.ws.read() {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Close(f)) => {
                    panic!("closed while waiting for {what}: {f:?}\n{}", gw.log_text())
                }
                Ok(_) => continue,
                Err(e) => panic!("{e} while waiting for {what}\n{}", gw.log_text()),
            };
            self.take(&m);
        }
    }

    fn take(&mut self, m: &[u8]) {
        match ToBrowser::decode(m).unwrap() {
            ToBrowser::ServerHello {
                session_id, core, ..
            } => {
                self.session = session_id;
                self.core = core;
            }
            ToBrowser::ResumeTicket {
                session_id, ticket, ..
            } => {
                assert_eq!(session_id, self.session);
                self.ticket = Some(Ticket::from_bytes(ticket));
            }
            ToBrowser::Status { text, .. } => self.statuses.push(text.to_string()),
            ToBrowser::Disconnected { reason } => self.disconnected = Some(reason.to_string()),
            ToBrowser::Avc420 { access_unit, .. } => {
                let key = is_key_frame(&access_unit);
                if std::env::var("REATTACH_TRACE").is_ok() {
                    eprintln!(
                        "au key={key} len={} frames={}",
                        access_unit.len(),
                        self.frames
                    );
                }
                self.key_frames += u32::from(key);
                use openh264::formats::YUVSource;
                if let Ok(Some(yuv)) = self.decoder.decode(&access_unit) {
                    let (w, h) = yuv.dimensions();
                    self.width = w;
                    self.rgb.resize(w * h * 3, 0);
                    yuv.write_rgb8(&mut self.rgb);
                }
            }
            ToBrowser::EndFrame { frame_id } => {
                self.frames += 1;
                if std::env::var("REATTACH_TRACE").is_ok() {
                    eprintln!("end frame {frame_id}");
                }
                // A page being closed may find the socket gone; the close frame tells why.
                let ack = FromBrowser::FrameDecoded {
                    frame_id,
                    frames_decoded: self.frames,
                    queue_depth: 0,
                };
                let _ = self.ws.ws.send(Message::binary(ack.encode()));
            }
            _ => {}
        }
    }

    /// The pixels of the demo's typed-text line, after `n` more frames.
    fn text_line(&mut self, gw: &Gateway, n: u32) -> Vec<u8> {
        let target = self.frames + n;
        self.until(gw, "frames", Duration::from_secs(10), |p| {
            p.frames >= target && p.width > 0
        });
        let (x, y) = (usize::from(TYPED_AT.0), usize::from(TYPED_AT.1));
        let mut out = Vec::new();
        for row in y..y + 16 {
            let at = (row * self.width + x) * 3;
            out.extend_from_slice(&self.rgb[at..at + 300 * 3]);
        }
        out
    }

    fn type_text(&mut self, text: &str) {
        for unit in text.encode_utf16() {
            for down in [true, false] {
                self.ws.send(&FromBrowser::Input(InputEvent::Unicode {
                    code_unit: unit,
                    down,
                }));
            }
        }
    }

    /// The close frame the gateway sends next (messages before it are taken in).
    fn close_frame(&mut self) -> (u16, String) {
        loop {
            match self.ws.ws.read() {
                Ok(Message::Binary(b)) => self.take(&b),
                Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
                Ok(Message::Close(None)) => return (1005, String::new()),
                Ok(_) => {}
                Err(e) => panic!("no close frame: {e}"),
            }
        }
    }

    /// The network drops: the socket goes without a WebSocket close.
    fn drop_connection(self) {
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = self.ws.ws.get_ref() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn mean_difference(a: &[u8], b: &[u8]) -> f64 {
    let sum: u64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.len().max(1) as f64
}

/// Sessions running and arena slots reserved for sessions, from `/metrics`.
fn active_and_reserved(gw: &Gateway) -> (u64, u64) {
    let m = gw.metrics();
    let reserved =
        m.0.lines()
            .filter(|l| l.starts_with("rdpwire_pool_slots{") && l.contains("state=\"reserved\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
    (m.get("rdpwire_sessions_active"), reserved)
}

/// A session through to a picture, "hi" typed and on the screen: (page, blank line, typed line).
fn session_with_text(gw: &Gateway, server: &DemoServer) -> (Page, Vec<u8>, Vec<u8>) {
    let mut page = Page::start(gw);
    page.until(
        gw,
        "resume ticket and a picture",
        Duration::from_secs(20),
        |p| p.ticket.is_some() && p.width > 0,
    );
    let blank = page.text_line(gw, 2);
    page.type_text("hi");
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.observed().typed != "hi" {
        assert!(Instant::now() < deadline, "the demo never saw the text");
        page.until(gw, "a frame", Duration::from_secs(5), |p| p.frames > 0);
        let n = page.frames + 1;
        page.until(gw, "a frame", Duration::from_secs(5), |p| p.frames >= n);
    }
    let typed = page.text_line(gw, 3);
    assert!(
        mean_difference(&blank, &typed) > 2.0,
        "typed text changes the text line"
    );
    (page, blank, typed)
}

#[test]
fn a_page_that_comes_back_within_the_grace_period_finds_its_desktop_as_it_left_it() {
    let server = demo_server("127.0.0.1:0".parse().unwrap());
    let (gw, _dir) = gateway(
        server.addr().port(),
        &["--cores", "1", "--session-grace", "2s"],
    );
    let (page, blank, typed) = session_with_text(&gw, &server);
    let id = page.session;
    let ticket = page.ticket.clone().unwrap();
    assert_eq!(server.observed().connections, 1);

    // The network drops. The desktop stays, still counted and still holding its share.
    page.drop_connection();
    assert!(eventually(Duration::from_secs(5), || gw
        .metrics()
        .get("rdpwire_sessions_detached")
        == 1));
    assert_eq!(active_and_reserved(&gw).0, 1);

    // A wrong ticket changes nothing.
    let mut wrong = *ticket.as_bytes();
    wrong[0] ^= 0x80;
    let mut refused = Page::resume(&gw, id, &Ticket::from_bytes(wrong));
    let (code, reason) = refused.close_frame();
    assert_eq!(code, 4004, "{reason}");
    assert!(reason.contains("resume ticket is not valid"), "{reason}");

    // The page comes back: the same session, the same RDP connection, a key frame first,
    // and the text typed before is on the screen.
    let mut back = Page::resume(&gw, id, &ticket);
    back.until(
        &gw,
        "a picture after resuming",
        Duration::from_secs(10),
        |p| p.width > 0 && p.frames >= 2,
    );
    assert_eq!(back.session, id, "ServerHello names the resumed session");
    assert!(
        back.statuses.iter().any(|s| s == "resumed"),
        "{:?}",
        back.statuses
    );
    // The gateway asked for a whole new picture: a key frame comes (a P-frame the server
    // already had on its way may come first; a fresh decoder skips it, as the page does), and
    // the fresh decoder above has a picture only thanks to it.
    assert!(back.key_frames >= 1, "a key frame after resuming");
    let line = back.text_line(&gw, 2);
    assert!(
        mean_difference(&line, &typed) < mean_difference(&line, &blank),
        "the resumed desktop shows the text typed before the drop"
    );
    assert_eq!(server.observed().typed, "hi");
    assert_eq!(server.observed().connections, 1, "no new RDP connection");
    // Input goes on where it left off.
    back.type_text("!");
    assert!(eventually(Duration::from_secs(5), || server
        .observed()
        .typed
        == "hi!"));
    let m = gw.metrics();
    assert_eq!(m.get("rdpwire_sessions_resumed_total"), 1);
    assert_eq!(m.get("rdpwire_sessions_detached"), 0);
    assert_eq!(m.get("rdpwire_resumes_refused_total"), 1);

    // The page goes again and nobody comes back: after the grace period the desktop ends,
    // logged, its memory returned, and the ticket is refused with the reason.
    back.drop_connection();
    assert!(
        eventually(Duration::from_secs(8), || active_and_reserved(&gw)
            == (0, 0)),
        "the session's share comes back after the grace period: {:?}\n{}",
        active_and_reserved(&gw),
        gw.log_text()
    );
    assert!(gw.log_text().contains("grace period"), "{}", gw.log_text());
    assert!(eventually(Duration::from_secs(5), || server
        .observed()
        .active
        == 0));
    let mut late = Page::resume(&gw, id, &ticket);
    let (code, reason) = late.close_frame();
    assert_eq!(code, 4004);
    assert!(reason.contains("has ended"), "{reason}");
}

#[test]
fn a_resume_accepted_by_another_core_reaches_the_session_on_its_own_core() {
    let server = demo_server("127.0.0.1:0".parse().unwrap());
    let (gw, _dir) = gateway(
        server.addr().port(),
        &["--cores", "2", "--session-grace", "10s"],
    );
    let (mut page, blank, typed) = session_with_text(&gw, &server);
    let id = page.session;
    let core = page.core;
    let ticket = page.ticket.clone().unwrap();
    // Which core accepts a connection is the kernel's hash of its addresses; resume until
    // one lands on the other core (each try: one in two). The previous page is replaced.
    for attempt in 1..=16 {
        let mut next = Page::resume(&gw, id, &ticket);
        next.until(
            &gw,
            "a picture after resuming",
            Duration::from_secs(10),
            |p| p.width > 0 && p.frames >= 1,
        );
        assert_eq!(next.session, id);
        assert_eq!(next.core, core, "the session stays on its core");
        let (code, reason) = page.close_frame();
        assert_eq!(code, 4005, "the replaced page is told: {reason}");
        page = next;
        if gw.metrics().get("rdpwire_resume_handoffs_total") > 0 {
            let line = page.text_line(&gw, 2);
            assert!(mean_difference(&line, &typed) < mean_difference(&line, &blank));
            assert_eq!(server.observed().connections, 1);
            assert!(gw
                .log_text()
                .contains("resume handed to the session's core"));
            return;
        }
        assert!(
            attempt < 16,
            "no resume landed on the other core in 16 tries"
        );
    }
}

#[test]
fn a_desktop_that_goes_away_is_reported_and_a_new_session_works_once_it_is_back() {
    let server = demo_server("127.0.0.1:0".parse().unwrap());
    let addr = server.addr();
    let (gw, _dir) = gateway(addr.port(), &["--cores", "1"]);
    let mut page = Page::start(&gw);
    page.until(&gw, "a picture", Duration::from_secs(20), |p| p.frames >= 2);
    assert_eq!(active_and_reserved(&gw).0, 1);

    // The RDP server stops mid-session: the page is told why, in words, and the session's
    // memory comes back.
    drop(server);
    let (code, reason) = page.close_frame();
    assert_eq!(code, 4000, "{reason}");
    let said = page.disconnected.clone().unwrap_or_default();
    assert!(
        said.contains("the remote desktop closed the connection"),
        "the page is told the desktop went away: {said:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || active_and_reserved(&gw)
            == (0, 0)),
        "{:?}",
        active_and_reserved(&gw)
    );

    // The server comes back on the same address: reconnecting gets a desktop again.
    let server = demo_server(addr);
    let mut again = Page::start(&gw);
    again.until(
        &gw,
        "a picture after the restart",
        Duration::from_secs(20),
        |p| p.frames >= 2 && p.width > 0,
    );
    assert!(again.statuses.iter().any(|s| s == "connected"));
    assert_eq!(server.observed().connections, 1);
    let _ = State::Connected;
}

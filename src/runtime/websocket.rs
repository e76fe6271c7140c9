//! The WebSocket shell of a session: frames in and out with tungstenite, the RDP connection
//! through `rdp_client`, decisions in `crate::session`. It lives and dies on the core that
//! accepted it.

use std::net::SocketAddr;
use std::rc::Rc;

use arena::SessionShare;
use async_tungstenite::WebSocketStream;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::panic::AssertUnwindSafe;

use futures_util::{FutureExt, Sink, StreamExt};
use glommio::net::TcpStream;
use ironrdp_egfx::pdu::QueueDepth;
use tracing::{debug, error, info, warn};
use tungstenite::error::CapacityError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Bytes, Message};

use crate::limits::ClientSlot;
use crate::protocol::{
    FromBrowser, State, CLOSE_RESUMED_ELSEWHERE, CLOSE_RESUME_REFUSED, CLOSE_TARGET_REFUSED,
    CLOSE_TOKEN_REFUSED,
};
use crate::rdp::{DesktopSize, RdpError, RdpEvent, Target};
use crate::resume::{Refusal, Ticket};
use crate::session::{Action, Outbound, Phase, Session, TargetRequest};
use crate::sizing::{ws_write_reserve, WS_FRAGMENT, WS_READ_BUFFER, WS_WRITE_BATCH};
use crate::telemetry::{CoreCounters, Direction};
use crate::token::{Redeemed, TokenError};

use super::core::Core;
use super::rdp_client::{ConnectStep, Links, RdpClient};
use super::reattach::{Arrival, Resumable};

/// How long after a core's last session ends its freed heap is given back.
const HEAP_SETTLE: std::time::Duration = std::time::Duration::from_millis(200);
/// RFC 6455 limits a close reason to 123 bytes.
const MAX_CLOSE_REASON: usize = 123;
use crate::session::CLOSE_RDP_ENDED;
/// Close code for "the browser sent nothing for the idle timeout".
const CLOSE_IDLE: u16 = 4001;
/// RFC 6455 "internal error": a bug in the gateway ended this session (its task panicked).
const CLOSE_INTERNAL: u16 = 1011;

enum Event {
    Browser(Option<Result<Message, tungstenite::Error>>),
    WriteFailed(End),
    /// Everything queued is in the socket (so large messages can give their room back).
    Written,
    Rdp(Result<RdpEvent, RdpError>),
    Shutdown,
    Idle,
    /// The page has not said hello within the hello timeout.
    NoHello,
    /// No page resumed the detached session in time.
    GraceOver,
    /// A new page presented the session's ticket.
    Resumed(Box<Arrival>),
}

/// Why the session ended, for the log and the close frame.
struct End {
    code: u16,
    reason: String,
}

type Ws = WebSocketStream<TcpStream>;

fn ws_config(core: &Core) -> WebSocketConfig {
    let max = core.settings.ws_max_message;
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        // Small messages gather up to `WS_WRITE_BATCH` and go out in one write (a frame's
        // StartFrame, Avc420 and EndFrame in one system call). tungstenite writes as soon as
        // its buffer passes that, and `poll_write` hands it the next frame only while it is
        // ready (its buffer at most `WS_WRITE_BATCH`), so it never holds more than the batch
        // plus one fragment.
        .write_buffer_size(WS_WRITE_BATCH)
        .max_write_buffer_size(ws_write_reserve(&core.settings.pools) as usize)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// How long a page that is being replaced, or that went silent, gets for its close frame.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs one session to its end. `client` is the session's count against its address's
/// limit, given back when this returns.
pub async fn run(
    core: Rc<Core>,
    stream: TcpStream,
    leftover: Vec<u8>,
    share: SessionShare,
    peer: SocketAddr,
    client: Option<ClientSlot>,
) {
    let max = core.settings.ws_max_message;
    let ws = WebSocketStream::from_partially_read(
        stream,
        leftover,
        Role::Server,
        Some(ws_config(&core)),
    )
    .await;
    let mut ws = Some(ws);
    let _alive = core.sessions.enter();
    let counters = core.counters.clone();
    CoreCounters::inc(&counters.sessions_active);
    CoreCounters::inc(&counters.sessions_total);
    let core_id = u16::try_from(core.index).unwrap_or(u16::MAX);
    let session = Session::start(share, core_id, u32::try_from(max).unwrap_or(u32::MAX))
        .with_audio(core.settings.audio);
    let id = session.id();
    info!(session = id, cpu = core.cpu, %peer, "session started");
    // A bug in one session must end that session only. Everything the session owns (its
    // state and arena share, its RDP connection, large-message permits) lives in `drive`'s
    // future, so a panic drops it on the way out and the share comes back; the page's
    // WebSocket is borrowed, so the page still gets a close frame saying what happened. What
    // the future shares with the core is counters and the core's own cells, which a panic
    // cannot leave half-updated: asserting unwind safety is sound here.
    let outcome = AssertUnwindSafe(drive(&core, &mut ws, session, id))
        .catch_unwind()
        .await;
    let end = match outcome {
        Ok(end) => end,
        Err(payload) => {
            core.resumable.remove(id);
            CoreCounters::inc(&counters.sessions_panicked);
            error!(
                session = id,
                panic = %panic_text(payload.as_ref()),
                "session panicked: it is closed with 1011; the executor and other sessions run on"
            );
            let reason =
                format!("session {id}: internal error in this session; reconnect to start anew");
            match ws.as_mut() {
                Some(page) => close(page, CLOSE_INTERNAL, reason).await,
                None => End {
                    code: CLOSE_INTERNAL,
                    reason,
                },
            }
        }
    };
    CoreCounters::dec(&counters.sessions_active);
    if matches!(end.code, 1000 | 1001 | CLOSE_RDP_ENDED) {
        info!(session = id, code = end.code, reason = %end.reason, "session ended");
    } else {
        warn!(session = id, code = end.code, reason = %end.reason, "session ended");
    }
    // When this was the core's last session, the heap its sessions used goes back to the
    // kernel, as the arena's pages did when the share was released: a little later, once the
    // connection's own buffers and sockets are gone too, and only if no session came since.
    drop((ws, client));
    if core.arena.stats().sessions_admitted() == 0 {
        let core = core.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(HEAP_SETTLE).await;
            if core.arena.stats().sessions_admitted() == 0 {
                arena::give_back_free_heap();
            }
        })
        .detach();
    }
}

/// The session's loop, from its ServerHello to the reason it ended, across the pages that
/// resume it; the RDP side is logged off before it returns. The session, its share and its
/// RDP connection are dropped here.
async fn drive(core: &Rc<Core>, ws: &mut Option<Ws>, mut session: Session, id: u64) -> End {
    let counters = core.counters.clone();
    let core = core.clone();
    let mut rdp: Option<RdpClient> = None;
    let idle_timeout = core.settings.idle_timeout;
    let grace = core.settings.session_grace;
    let hello_timeout = core.settings.hello_timeout;
    let started = std::time::Instant::now();
    let mut last_heard = started;
    let mut graphics_open = true;
    let mut writer = Writer::default();
    // Set once the page has its resume ticket: from then on a page that goes away leaves the
    // desktop running for `grace`, and a new page may take it over.
    let mut resumable: Option<Rc<Resumable>> = None;
    let mut detached_at: Option<std::time::Instant> = None;

    let end = loop {
        if let Some(end) =
            run_actions(&core, ws.as_mut(), &mut writer, &mut session, &mut rdp, id).await
        {
            break end;
        }
        if resumable.is_none() && !grace.is_zero() && session.phase() == Phase::Active {
            if let Some(ticket) = Ticket::generate() {
                let secs = u32::try_from(grace.as_secs()).unwrap_or(u32::MAX);
                session.offer_resume(&ticket, secs);
                let r = Rc::new(Resumable::new(ticket));
                core.resumable.insert(id, r.clone());
                resumable = Some(r);
            }
        }
        if session.phase() == Phase::Ended {
            let Some(page) = ws.as_mut() else {
                let reason = session
                    .end_reason()
                    .unwrap_or("the remote desktop session ended")
                    .to_owned();
                break End {
                    code: CLOSE_RDP_ENDED,
                    reason: format!("{reason} (no page was attached)"),
                };
            };
            // The reason goes out before the close; a page that stopped reading gets a
            // little while, not forever.
            let written = futures_lite::future::or(
                async { Some(flush(page, &mut writer, &mut session, &counters).await) },
                async {
                    glommio::timer::sleep(std::time::Duration::from_secs(5)).await;
                    None
                },
            )
            .await;
            if let Some(Err(end)) = written {
                break end;
            }
            let (code, reason) = session
                .close_frame()
                .unwrap_or((CLOSE_RDP_ENDED, "the remote desktop session ended"));
            let reason = reason.to_owned();
            break close(page, code, reason).await;
        }
        count(&counters, &mut session, rdp.as_mut());
        CoreCounters::add(&counters.large_frame_waits, core.large.take_waits());
        if let Some(client) = rdp.as_mut() {
            // Nothing is written while no page is attached: room held for large messages
            // goes back at once.
            if (ws.is_none() || !session.has_output()) && writer.large.is_none() {
                client.release_large();
            }
        }
        // Large messages' room goes back once written; the loop must come round for that.
        let holds_large = rdp.as_mut().is_some_and(RdpClient::holds_large);
        let take_rdp = session.wants_rdp();
        let session_phase = session.phase();
        let graphics = session.wants_graphics();
        if graphics_open && !graphics {
            CoreCounters::inc(&counters.graphics_paused);
        }
        graphics_open = graphics;
        let attached = ws.is_some();
        let event = futures_lite::future::or(
            futures_lite::future::or(
                // Writing and reading the browser share one future: while the page is slow
                // to read, the server is still read (sound is dropped, not queued) and the
                // page's own messages are still taken.
                std::future::poll_fn(|cx| match ws.as_mut() {
                    Some(page) => {
                        poll_browser(page, &mut writer, &mut session, &counters, holds_large, cx)
                    }
                    None => Poll::Pending,
                }),
                async {
                    match rdp.as_mut() {
                        Some(client) if take_rdp => Event::Rdp(client.next_event(graphics).await),
                        _ => std::future::pending().await,
                    }
                },
            ),
            futures_lite::future::or(
                futures_lite::future::or(
                    async {
                        core.shutdown.wait().await;
                        Event::Shutdown
                    },
                    async {
                        // One timer per wait, firing only at the deadline: an idle session
                        // costs no wake-ups.
                        // Until the hello, the hello deadline counts too: pings alone must
                        // not hold a session slot.
                        match detached_at {
                            None => {
                                let idle_left = idle_timeout.saturating_sub(last_heard.elapsed());
                                let hello_left = (session_phase == Phase::AwaitHello)
                                    .then(|| hello_timeout.saturating_sub(started.elapsed()));
                                match hello_left {
                                    Some(left) if left < idle_left => {
                                        glommio::timer::sleep(left).await;
                                        Event::NoHello
                                    }
                                    _ => {
                                        glommio::timer::sleep(idle_left).await;
                                        Event::Idle
                                    }
                                }
                            }
                            Some(at) => {
                                glommio::timer::sleep(grace.saturating_sub(at.elapsed())).await;
                                Event::GraceOver
                            }
                        }
                    },
                ),
                async {
                    match resumable.as_ref() {
                        Some(r) => Event::Resumed(Box::new(r.next_arrival().await)),
                        None => std::future::pending().await,
                    }
                },
            ),
        )
        .await;
        // A page that went away (closed without ending the session, lost, silent) leaves
        // the desktop running for a page that resumes it, once it has its ticket.
        let keep = resumable.is_some() && session.phase() == Phase::Active && attached;
        let gone = match event {
            Event::WriteFailed(end) => Some(end),
            Event::Written => None,
            Event::Shutdown => {
                break match ws.as_mut() {
                    Some(page) => close(page, 1001, "gateway is shutting down".to_owned()).await,
                    None => End {
                        code: 1001,
                        reason: "gateway is shutting down".to_owned(),
                    },
                };
            }
            Event::Idle => {
                let reason = format!(
                    "session {id}: no message from the browser for {}",
                    humantime::format_duration(idle_timeout)
                );
                match ws.as_mut() {
                    Some(page) if keep => Some(close_within(page, CLOSE_IDLE, reason).await),
                    Some(page) => break close(page, CLOSE_IDLE, reason).await,
                    None => None,
                }
            }
            Event::NoHello => {
                let reason = format!(
                    "session {id}: no ClientHello or TokenHello within {} of opening",
                    humantime::format_duration(hello_timeout)
                );
                match ws.as_mut() {
                    Some(page) => break close(page, 1008, reason).await,
                    None => None,
                }
            }
            Event::GraceOver => {
                break End {
                    code: 1000,
                    reason: format!(
                        "no page resumed the session within its grace period of {}",
                        humantime::format_duration(grace)
                    ),
                };
            }
            Event::Resumed(arrival) => {
                if let Some(mut old) = ws.take() {
                    // As if the old page had gone first: the server stops drawing until the
                    // new page's refresh, so the new page's first picture is a whole one.
                    session.detach();
                    let why = "another page resumed this session".to_owned();
                    let _ = close_within(&mut old, CLOSE_RESUMED_ELSEWHERE, why).await;
                }
                CoreCounters::inc(&counters.sessions_resumed);
                if detached_at.take().is_some() {
                    CoreCounters::dec(&counters.sessions_detached);
                }
                info!(session = id, peer = %arrival.peer, "session resumed by a new page");
                let Arrival { ws: page, .. } = *arrival;
                *ws = Some(page);
                writer = Writer::default();
                session.reattach();
                last_heard = std::time::Instant::now();
                None
            }
            Event::Rdp(Ok(ev)) => {
                session.on_rdp_event(&ev);
                None
            }
            Event::Rdp(Err(err)) => {
                session.on_rdp_end(&err.to_string());
                None
            }
            Event::Browser(None) => Some(End {
                code: 1006,
                reason: "browser went away".to_owned(),
            }),
            Event::Browser(Some(Ok(msg))) => {
                last_heard = std::time::Instant::now();
                counters.add_bytes(Direction::BrowserIn, msg.len());
                let mut left = None;
                let res = match msg {
                    Message::Binary(b) => {
                        let res = session.handle_binary(&b);
                        wipe_token(b);
                        res
                    }
                    Message::Text(_) => session.handle_text(),
                    // 1001 ("going away") is what a browser sends for a page being
                    // unloaded (a reload, a closed tab): the session stays resumable.
                    // Any other close is the page ending it on purpose.
                    Message::Close(frame) => {
                        let code = frame.as_ref().map_or(1005, |f| u16::from(f.code));
                        if code != 1001 || !keep {
                            break End {
                                code: 1000,
                                reason: "browser closed the session".to_owned(),
                            };
                        }
                        left = Some(End {
                            code,
                            reason: "browser left without ending the session".to_owned(),
                        });
                        Ok(())
                    }
                    // tungstenite queues the pong itself and writes it with the next read.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
                };
                if let Err(err) = res {
                    if let Some(page) = ws.as_mut() {
                        break close(page, err.close_code(), err.to_string()).await;
                    }
                }
                left
            }
            Event::Browser(Some(Err(tungstenite::Error::Capacity(
                CapacityError::MessageTooLong { size, max_size },
            )))) => {
                CoreCounters::inc(&counters.ws_oversize_closes);
                let reason = format!(
                    "session {id}: message of {size} bytes exceeds the limit of {max_size}"
                );
                match ws.as_mut() {
                    Some(page) => break close(page, 1009, reason).await,
                    None => None,
                }
            }
            Event::Browser(Some(Err(err))) => match (browser_error(id, &err), ws.as_mut()) {
                // A protocol error is the page's doing: the session ends, it is not kept.
                (Some((code, reason)), Some(page)) => break close(page, code, reason).await,
                (Some((code, reason)), None) => break End { code, reason },
                (None, _) => Some(End {
                    code: 1006,
                    reason: format!("browser went away: {err}"),
                }),
            },
        };
        if let Some(end) = gone {
            if !keep {
                break end;
            }
            info!(
                session = id,
                code = end.code,
                reason = %end.reason,
                grace = %humantime::format_duration(grace),
                "page went away; the desktop is kept for a page to resume it"
            );
            *ws = None;
            writer = Writer::default();
            session.detach();
            CoreCounters::inc(&counters.sessions_detached);
            detached_at = Some(std::time::Instant::now());
        }
    };
    core.resumable.remove(id);
    if detached_at.is_some() {
        CoreCounters::dec(&counters.sessions_detached);
    }
    if let Some(mut client) = rdp.take() {
        // Log off politely; the server may already be gone.
        let _ = futures_lite::future::or(async { client.shutdown().await.ok() }, async {
            glommio::timer::sleep(std::time::Duration::from_millis(500)).await;
            None
        })
        .await;
    }
    end
}

/// A panic's message, for the log line.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// What a WebSocket-level error from the browser means: a close code and reason to send, or
/// `None` when the browser is already gone (nothing can be sent).
fn browser_error(id: u64, err: &tungstenite::Error) -> Option<(u16, String)> {
    use tungstenite::error::ProtocolError as P;
    let what = match err {
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Io(_)
        | tungstenite::Error::Protocol(P::ResetWithoutClosingHandshake) => return None,
        tungstenite::Error::Utf8(_) => {
            return Some((
                1007,
                format!("session {id}: a text message or close reason that is not UTF-8"),
            ))
        }
        tungstenite::Error::Capacity(c) => {
            return Some((
                1009,
                format!("session {id}: {}", lowercase_first(&c.to_string())),
            ))
        }
        tungstenite::Error::Protocol(p) => match p {
            P::FragmentedControlFrame => "a fragmented control frame".to_owned(),
            P::ControlFrameTooBig => "a control frame above 125 bytes".to_owned(),
            P::UnmaskedFrameFromClient => {
                "an unmasked frame (browsers mask every frame)".to_owned()
            }
            P::NonZeroReservedBits => "reserved bits set, with no extension agreed".to_owned(),
            P::UnknownControlFrameType(op) | P::UnknownDataFrameType(op) | P::InvalidOpcode(op) => {
                format!("unknown opcode {op}")
            }
            P::UnexpectedContinueFrame => {
                "a continuation frame with no message to continue".to_owned()
            }
            P::ExpectedFragment(_) => {
                "a new message before the fragmented one was finished".to_owned()
            }
            other => lowercase_first(&other.to_string()),
        },
        other => lowercase_first(&other.to_string()),
    };
    Some((
        1002,
        format!("session {id}: websocket protocol error: {what}"),
    ))
}

/// tungstenite's messages start with a capital; ours are sentences inside a sentence.
fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// A new WebSocket asking to resume session `id` on this core: its first message must be a
/// Resume naming `id` with the session's ticket, within the HTTP timeout. Then the session's
/// task takes it; otherwise it is closed with 4004 and the reason.
pub async fn resume(
    core: Rc<Core>,
    stream: TcpStream,
    leftover: Vec<u8>,
    peer: SocketAddr,
    id: u64,
) {
    let mut ws = WebSocketStream::from_partially_read(
        stream,
        leftover,
        Role::Server,
        Some(ws_config(&core)),
    )
    .await;
    let timeout = core.settings.http_timeout;
    let first = futures_lite::future::or(
        async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => return Some(b),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => return None,
                }
            }
        },
        async {
            glommio::timer::sleep(timeout).await;
            None
        },
    )
    .await;
    debug!(session = id, %peer, got = first.is_some(), "resume: first message");
    let presented = first.and_then(|b| {
        let found = match FromBrowser::decode(&b) {
            Ok(FromBrowser::Resume { session_id, ticket }) => Some((session_id, ticket)),
            _ => None,
        };
        // The message held the ticket; the decoded copy is wiped when dropped.
        if let Ok(mut owned) = b.try_into_mut() {
            zeroize::Zeroize::zeroize(&mut owned[..]);
        }
        found
    });
    let verdict = match presented {
        None => Err(Refusal::NoTicket),
        Some((session_id, _)) if session_id != id => Err(Refusal::Mismatch),
        Some((_, ticket)) => match core.resumable.get(id) {
            None => Err(Refusal::Gone),
            Some(r) if !r.accepts(&ticket) => Err(Refusal::WrongTicket),
            Some(r) => Ok(r),
        },
    };
    match verdict {
        Ok(r) => r.deliver(Arrival { ws, peer }),
        Err(refusal) => {
            CoreCounters::inc(&core.counters.resumes_refused);
            let reason = refusal.reason(id);
            info!(session = id, %peer, %reason, "resume refused");
            let _ = close_within(&mut ws, CLOSE_RESUME_REFUSED, reason).await;
        }
    }
}

/// `close`, giving up after [`CLOSE_WAIT`]: for pages that may be gone.
async fn close_within(ws: &mut Ws, code: u16, reason: String) -> End {
    let fallback = End {
        code,
        reason: reason.clone(),
    };
    futures_lite::future::or(close(ws, code, reason), async {
        glommio::timer::sleep(CLOSE_WAIT).await;
        fallback
    })
    .await
}

/// Writes everything the session has queued, waiting for the socket as needed.
async fn flush(
    ws: &mut Ws,
    w: &mut Writer,
    session: &mut Session,
    counters: &CoreCounters,
) -> Result<(), End> {
    std::future::poll_fn(|cx| poll_write(ws, w, session, counters, cx)).await
}

/// Largest WebSocket frame the gateway writes. A larger message (an H.264 key frame) goes out
/// as a fragmented message of frames this size, cut from the one buffer it is in, so
/// tungstenite never holds more than one fragment: its write buffer keeps its largest size
/// for the life of the session.
const FRAGMENT: usize = WS_FRAGMENT;

/// A large message being written fragment by fragment.
#[derive(Default)]
struct Writer {
    large: Option<(Bytes, usize)>,
}

impl Writer {
    /// The next frame of the message in progress, if one is in progress.
    fn next_fragment(&mut self) -> Option<Message> {
        let (bytes, at) = self.large.as_mut()?;
        let start = *at;
        let end = (start + FRAGMENT).min(bytes.len());
        let last = end == bytes.len();
        let opcode = if start == 0 {
            OpCode::Data(OpData::Binary)
        } else {
            OpCode::Data(OpData::Continue)
        };
        let frame = Frame::message(bytes.slice(start..end), opcode, last);
        *at = end;
        if last {
            self.large = None;
        }
        Some(Message::Frame(frame))
    }
}

/// Moves queued messages into the socket as far as it takes them now. tungstenite holds at
/// most one frame: the next is handed over only once the last is written.
fn poll_write(
    ws: &mut Ws,
    w: &mut Writer,
    session: &mut Session,
    counters: &CoreCounters,
    cx: &mut Context<'_>,
) -> Poll<Result<(), End>> {
    let failed = |err: tungstenite::Error| End {
        code: 1006,
        reason: format!("writing to the browser failed: {err}"),
    };
    loop {
        match Pin::new(&mut *ws).poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(err)) => return Poll::Ready(Err(failed(err))),
            Poll::Pending => return Poll::Pending,
        }
        let msg = match w.next_fragment() {
            Some(frame) => frame,
            None => {
                let next = session.transmit_next(Bytes::copy_from_slice, |out| match out {
                    Outbound::Large(v) => Bytes::from(v),
                    pooled => Bytes::copy_from_slice(pooled.bytes()),
                });
                let Some(bytes) = next else {
                    break;
                };
                counters.add_bytes(Direction::BrowserOut, bytes.len());
                if bytes.len() > FRAGMENT {
                    w.large = Some((bytes, 0));
                    continue;
                }
                Message::Binary(bytes)
            }
        };
        if let Err(err) = Pin::new(&mut *ws).start_send(msg) {
            return Poll::Ready(Err(failed(err)));
        }
    }
    Pin::new(&mut *ws).poll_flush(cx).map_err(failed)
}

/// Writes what it can, then reads the browser's next message, if the session can take one.
fn poll_browser(
    ws: &mut Ws,
    w: &mut Writer,
    session: &mut Session,
    counters: &CoreCounters,
    holds_large: bool,
    cx: &mut Context<'_>,
) -> Poll<Event> {
    match poll_write(ws, w, session, counters, cx) {
        Poll::Ready(Err(end)) => return Poll::Ready(Event::WriteFailed(end)),
        Poll::Ready(Ok(())) if holds_large && w.large.is_none() && !session.has_output() => {
            return Poll::Ready(Event::Written);
        }
        _ => {}
    }
    // An answer needs a chunk; without one the browser waits (TCP), it is not refused.
    if !session.wants_input() {
        return Poll::Pending;
    }
    ws.poll_next_unpin(cx).map(Event::Browser)
}

/// Moves the session's byte and audio counts into the core's counters.
fn count(counters: &CoreCounters, session: &mut Session, rdp: Option<&mut RdpClient>) {
    if let Some(client) = rdp {
        let (read, written) = client.take_byte_counts();
        counters.add_bytes(Direction::ServerIn, read as usize);
        counters.add_bytes(Direction::ServerOut, written as usize);
    }
    let audio = session.take_audio_counts();
    CoreCounters::add(&counters.audio_from_server, audio.from_server);
    CoreCounters::add(&counters.audio_to_browser, audio.to_browser);
    CoreCounters::add(&counters.audio_dropped, audio.dropped);
}

/// Carries out what the session asked of the RDP side.
async fn run_actions(
    core: &Core,
    mut ws: Option<&mut Ws>,
    writer: &mut Writer,
    session: &mut Session,
    rdp: &mut Option<RdpClient>,
    id: u64,
) -> Option<End> {
    let counters = &core.counters;
    while let Some(action) = session.poll_action() {
        #[cfg(debug_assertions)]
        if let Action::Connect { width, .. } | Action::Resize { width, .. } = &action {
            super::fault::at_width(id, *width);
        }
        let result = match action {
            Action::Connect {
                target,
                width,
                height,
            } => {
                let t = match &target {
                    TargetRequest::Named(name) => match resolve_target(core, name) {
                        Ok(t) => t,
                        Err(reason) => {
                            session.on_rdp_end(&reason);
                            continue;
                        }
                    },
                    TargetRequest::Token(token) => match redeem(core, token, id) {
                        Ok(t) => {
                            session.on_progress(
                                State::Connecting,
                                &format!("connecting to {}", t.endpoint()),
                            );
                            t
                        }
                        Err(err) => {
                            CoreCounters::inc(&counters.tokens_refused);
                            session.on_refused(CLOSE_TOKEN_REFUSED, &err.to_string());
                            continue;
                        }
                    },
                };
                let label = target.to_string();
                drop(target);
                let size = DesktopSize { width, height };
                info!(session = id, target = %label, host = %t.host, port = t.port, width, height, "connecting");
                // Steps reached while connecting go to the page as they happen.
                let step = std::cell::Cell::new(None);
                let stepped = event_listener::Event::new();
                let on_step = |s: ConnectStep| {
                    step.set(Some(s));
                    stepped.notify(1);
                };
                let user = t.username.clone();
                let links = || Links {
                    audio: session.audio_sink().map(|sink| (sink, id)),
                    large: Some(core.large.clone()),
                };
                let links = links();
                let connect = futures_lite::future::or(
                    async {
                        Some(
                            RdpClient::connect_with_progress(
                                &t,
                                size,
                                &core.settings,
                                links,
                                &on_step,
                            )
                            .await,
                        )
                    },
                    async {
                        loop {
                            let listener = stepped.listen();
                            match step.take() {
                                Some(ConnectStep::Authenticating) => session.on_progress(
                                    State::Authenticating,
                                    &format!("authenticating as {user}"),
                                ),
                                Some(ConnectStep::OpeningDesktop) => session.on_progress(
                                    State::Authenticating,
                                    "signed in, opening the desktop",
                                ),
                                None => {
                                    futures_lite::future::or(listener, core.shutdown.wait()).await;
                                    if core.shutdown.is_set() {
                                        return None;
                                    }
                                    continue;
                                }
                            }
                            if let Some(ws) = ws.as_deref_mut() {
                                if flush(ws, writer, session, counters).await.is_err() {
                                    return None;
                                }
                            }
                        }
                    },
                )
                .await;
                match connect {
                    None => {
                        return Some(End {
                            code: 1001,
                            reason: "gateway is shutting down".to_owned(),
                        })
                    }
                    Some(Ok(client)) => {
                        *rdp = Some(client);
                        Ok(())
                    }
                    Some(Err(err @ RdpError::NotAllowed { .. })) => {
                        CoreCounters::inc(&counters.targets_refused);
                        session.on_refused(CLOSE_TARGET_REFUSED, &err.to_string());
                        continue;
                    }
                    Some(Err(err)) => Err(err),
                }
            }
            Action::Input(e) => match rdp.as_mut() {
                Some(c) => c.send_input(&[e]).await,
                None => Ok(()),
            },
            Action::Resize { width, height } => match rdp.as_mut() {
                Some(c) => match c.resize(width, height).await {
                    Ok(true) => Ok(()),
                    Ok(false) => {
                        info!(
                            session = id,
                            width, height, "server cannot resize; the page scales"
                        );
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                None => Ok(()),
            },
            Action::AckFrame {
                frame_id,
                queue_depth,
            } => match rdp.as_mut() {
                Some(c) => {
                    c.ack_frame(frame_id, QueueDepth::AvailableBytes(queue_depth))
                        .await
                }
                None => Ok(()),
            },
            Action::SuppressOutput => match rdp.as_mut() {
                Some(c) => c.suppress_output(None).await,
                None => Ok(()),
            },
            Action::Refresh { width, height } => match rdp.as_mut() {
                Some(c) => c.suppress_output(Some((width, height))).await,
                None => Ok(()),
            },
        };
        if let Err(err) = result {
            session.on_rdp_end(&err.to_string());
        }
    }
    None
}

/// Opens and takes a connection token. The time is the wall clock: token times are the
/// portal's wall clock too, and the skew setting covers the difference.
fn redeem(core: &Core, token: &str, session: u64) -> Result<Target, TokenError> {
    let redeemer = core.tokens.as_ref().ok_or(TokenError::Disabled)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match redeemer.redeem(token, now) {
        Ok(Redeemed { id, target }) => {
            CoreCounters::inc(&core.counters.tokens_redeemed);
            info!(session, token_id = %id, host = %target.host, port = target.port, user = %target.username, "connection token redeemed");
            Ok(target)
        }
        Err(err) => {
            warn!(session, reason = %err, "connection token refused");
            Err(err)
        }
    }
}

/// Wipes a browser message that may have held a token, when this copy is the only one (the
/// WebSocket layer may share the buffer; then it is overwritten by later reads instead).
fn wipe_token(msg: Bytes) {
    if msg.get(1) == Some(&crate::protocol::types::TOKEN_HELLO) {
        if let Ok(mut owned) = msg.try_into_mut() {
            zeroize::Zeroize::zeroize(&mut owned[..]);
        }
    }
}

/// The configured target a page asked for, by name; empty means the default target.
fn resolve_target(core: &Core, name: &str) -> Result<Target, String> {
    let settings = &core.settings;
    let name = if name.is_empty() {
        match &settings.default_target {
            Some(d) => d.as_str(),
            None => return Err("no target was named and no default target is configured".into()),
        }
    } else {
        name
    };
    settings
        .targets
        .get(name)
        .cloned()
        .ok_or_else(|| format!("no target named {name:?} is configured on this gateway"))
}

async fn close(ws: &mut Ws, code: u16, reason: String) -> End {
    let mut text = reason.clone();
    while text.len() > MAX_CLOSE_REASON {
        text.pop();
    }
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: text.into(),
    };
    let _ = ws.close(Some(frame)).await;
    End { code, reason }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tungstenite::error::ProtocolError as P;

    #[test]
    fn framing_errors_close_in_words_and_a_vanished_browser_gets_nothing() {
        let e = |err| browser_error(7, &err);
        assert_eq!(
            e(tungstenite::Error::Protocol(P::FragmentedControlFrame)),
            Some((
                1002,
                "session 7: websocket protocol error: a fragmented control frame".to_owned()
            ))
        );
        assert_eq!(
            e(tungstenite::Error::Protocol(P::UnknownDataFrameType(3)))
                .unwrap()
                .1,
            "session 7: websocket protocol error: unknown opcode 3"
        );
        assert_eq!(
            e(tungstenite::Error::Protocol(P::InvalidCloseSequence))
                .unwrap()
                .1,
            "session 7: websocket protocol error: invalid close sequence"
        );
        assert_eq!(e(tungstenite::Error::Utf8("bad".into())).unwrap().0, 1007);
        for gone in [
            tungstenite::Error::ConnectionClosed,
            tungstenite::Error::Protocol(P::ResetWithoutClosingHandshake),
            tungstenite::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
        ] {
            assert_eq!(e(gone), None);
        }
    }

    /// Panic isolation (`run` catches a session's panic) needs unwinding: a profile that
    /// aborts on panic would turn one session's bug into the whole gateway's exit.
    #[test]
    fn no_profile_aborts_on_panic() {
        let manifest = include_str!("../../Cargo.toml");
        assert!(
            !manifest.replace(' ', "").contains("panic=\"abort\""),
            "Cargo.toml sets panic = \"abort\""
        );
    }
}

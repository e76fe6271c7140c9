//! The WebSocket shell of a session: frames in and out with tungstenite, the RDP connection
//! through `rdp_client`, decisions in `crate::session`. It lives and dies on the core that
//! accepted it.

use std::net::SocketAddr;
use std::rc::Rc;

use arena::SessionShare;
use async_tungstenite::WebSocketStream;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Sink, StreamExt};
use glommio::net::TcpStream;
use ironrdp_egfx::pdu::QueueDepth;
use tracing::{info, warn};
use tungstenite::error::CapacityError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Bytes, Message};

use crate::protocol::{State, CLOSE_TARGET_REFUSED, CLOSE_TOKEN_REFUSED};
use crate::rdp::{DesktopSize, RdpError, RdpEvent, Target};
use crate::session::{Action, Outbound, Phase, Session, TargetRequest};
use crate::sizing::{ws_write_reserve, WS_FRAGMENT, WS_READ_BUFFER, WS_WRITE_BATCH};
use crate::telemetry::{CoreCounters, Direction};
use crate::token::{Redeemed, TokenError};

use super::core::Core;
use super::rdp_client::{ConnectStep, Links, RdpClient};

/// How long after a core's last session ends its freed heap is given back.
const HEAP_SETTLE: std::time::Duration = std::time::Duration::from_millis(200);
/// RFC 6455 limits a close reason to 123 bytes.
const MAX_CLOSE_REASON: usize = 123;
use crate::session::CLOSE_RDP_ENDED;
/// Close code for "the browser sent nothing for the idle timeout".
const CLOSE_IDLE: u16 = 4001;

enum Event {
    Browser(Option<Result<Message, tungstenite::Error>>),
    WriteFailed(End),
    /// Everything queued is in the socket (so large messages can give their room back).
    Written,
    Rdp(Result<RdpEvent, RdpError>),
    Shutdown,
    Idle,
}

/// Why the session ended, for the log and the close frame.
struct End {
    code: u16,
    reason: String,
}

type Ws = WebSocketStream<TcpStream>;

pub async fn run(
    core: Rc<Core>,
    stream: TcpStream,
    leftover: Vec<u8>,
    share: SessionShare,
    peer: SocketAddr,
) {
    let max = core.settings.ws_max_message;
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        // Small messages gather up to `WS_WRITE_BATCH` and go out in one write (a frame's
        // StartFrame, Avc420 and EndFrame in one system call). tungstenite writes as soon as
        // its buffer passes that, and `poll_write` hands it the next frame only while it is
        // ready (its buffer at most `WS_WRITE_BATCH`), so it never holds more than the batch
        // plus one fragment.
        .write_buffer_size(WS_WRITE_BATCH)
        .max_write_buffer_size(ws_write_reserve(&core.settings.pools) as usize)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let mut ws =
        WebSocketStream::from_partially_read(stream, leftover, Role::Server, Some(config)).await;
    let _alive = core.sessions.enter();
    let counters = core.counters.clone();
    CoreCounters::inc(&counters.sessions_active);
    CoreCounters::inc(&counters.sessions_total);
    let core_id = u16::try_from(core.index).unwrap_or(u16::MAX);
    let mut session = Session::start(share, core_id, u32::try_from(max).unwrap_or(u32::MAX))
        .with_audio(core.settings.audio);
    let id = session.id();
    info!(session = id, cpu = core.cpu, %peer, "session started");
    let mut rdp: Option<RdpClient> = None;
    let idle_timeout = core.settings.idle_timeout;
    let mut last_heard = std::time::Instant::now();
    let mut graphics_open = true;
    let mut writer = Writer::default();

    let end = loop {
        if let Some(end) =
            run_actions(&core, &mut ws, &mut writer, &mut session, &mut rdp, id).await
        {
            break end;
        }
        if session.phase() == Phase::Ended {
            // The reason goes out before the close; a page that stopped reading gets a
            // little while, not forever.
            let written = futures_lite::future::or(
                async { Some(flush(&mut ws, &mut writer, &mut session, &counters).await) },
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
            break close(&mut ws, code, reason).await;
        }
        count(&counters, &mut session, rdp.as_mut());
        CoreCounters::add(&counters.large_frame_waits, core.large.take_waits());
        if let Some(client) = rdp.as_mut() {
            if !session.has_output() && writer.large.is_none() {
                client.release_large();
            }
        }
        // Large messages' room goes back once written; the loop must come round for that.
        let holds_large = rdp.as_mut().is_some_and(RdpClient::holds_large);
        let take_rdp = session.wants_rdp();
        let graphics = session.wants_graphics();
        if graphics_open && !graphics {
            CoreCounters::inc(&counters.graphics_paused);
        }
        graphics_open = graphics;
        let event = futures_lite::future::or(
            futures_lite::future::or(
                // Writing and reading the browser share one future: while the page is slow
                // to read, the server is still read (sound is dropped, not queued) and the
                // page's own messages are still taken.
                std::future::poll_fn(|cx| {
                    poll_browser(
                        &mut ws,
                        &mut writer,
                        &mut session,
                        &counters,
                        holds_large,
                        cx,
                    )
                }),
                async {
                    match rdp.as_mut() {
                        Some(client) if take_rdp => Event::Rdp(client.next_event(graphics).await),
                        _ => std::future::pending().await,
                    }
                },
            ),
            futures_lite::future::or(
                async {
                    core.shutdown.wait().await;
                    Event::Shutdown
                },
                async {
                    // One timer per wait, firing only at the deadline: an idle session costs
                    // no wake-ups.
                    let left = idle_timeout.saturating_sub(last_heard.elapsed());
                    glommio::timer::sleep(left).await;
                    Event::Idle
                },
            ),
        )
        .await;
        match event {
            Event::WriteFailed(end) => break end,
            Event::Written => {}
            Event::Shutdown => {
                break close(&mut ws, 1001, "gateway is shutting down".to_owned()).await;
            }
            Event::Idle => {
                let reason = format!(
                    "session {id}: no message from the browser for {}",
                    humantime::format_duration(idle_timeout)
                );
                break close(&mut ws, CLOSE_IDLE, reason).await;
            }
            Event::Rdp(Ok(ev)) => session.on_rdp_event(&ev),
            Event::Rdp(Err(err)) => session.on_rdp_end(&err.to_string()),
            Event::Browser(None) => {
                break End {
                    code: 1006,
                    reason: "browser went away".to_owned(),
                }
            }
            Event::Browser(Some(Ok(msg))) => {
                last_heard = std::time::Instant::now();
                counters.add_bytes(Direction::BrowserIn, msg.len());
                let res = match msg {
                    Message::Binary(b) => {
                        let res = session.handle_binary(&b);
                        wipe_token(b);
                        res
                    }
                    Message::Text(_) => session.handle_text(),
                    Message::Close(_) => {
                        break End {
                            code: 1000,
                            reason: "browser closed the session".to_owned(),
                        }
                    }
                    // tungstenite queues the pong itself and writes it with the next read.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
                };
                if let Err(err) = res {
                    break close(&mut ws, err.close_code(), err.to_string()).await;
                }
            }
            Event::Browser(Some(Err(tungstenite::Error::Capacity(
                CapacityError::MessageTooLong { size, max_size },
            )))) => {
                CoreCounters::inc(&counters.ws_oversize_closes);
                let reason = format!(
                    "session {id}: message of {size} bytes exceeds the limit of {max_size}"
                );
                break close(&mut ws, 1009, reason).await;
            }
            Event::Browser(Some(Err(err))) => {
                break End {
                    code: 1002,
                    reason: format!("websocket error: {err}"),
                };
            }
        }
    };
    if let Some(mut client) = rdp.take() {
        // Log off politely; the server may already be gone.
        let _ = futures_lite::future::or(async { client.shutdown().await.ok() }, async {
            glommio::timer::sleep(std::time::Duration::from_millis(500)).await;
            None
        })
        .await;
    }
    CoreCounters::dec(&counters.sessions_active);
    if matches!(end.code, 1000 | 1001 | CLOSE_RDP_ENDED) {
        info!(session = id, code = end.code, reason = %end.reason, "session ended");
    } else {
        warn!(session = id, code = end.code, reason = %end.reason, "session ended");
    }
    // When this was the core's last session, the heap its sessions used goes back to the
    // kernel, as the arena's pages did when the share was released: a little later, once the
    // connection's own buffers and sockets are gone too, and only if no session came since.
    drop((session, writer, ws));
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
    ws: &mut Ws,
    writer: &mut Writer,
    session: &mut Session,
    rdp: &mut Option<RdpClient>,
    id: u64,
) -> Option<End> {
    let counters = &core.counters;
    while let Some(action) = session.poll_action() {
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
                            if flush(ws, writer, session, counters).await.is_err() {
                                return None;
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

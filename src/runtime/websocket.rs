//! The WebSocket shell of a session: frames in and out with tungstenite, decisions in
//! `crate::session`. It lives and dies on the core that accepted it.

use std::net::SocketAddr;
use std::rc::Rc;

use arena::SessionShare;
use async_tungstenite::WebSocketStream;
use futures_util::StreamExt;
use glommio::net::TcpStream;
use tracing::{info, warn};
use tungstenite::error::CapacityError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Bytes, Message};

use crate::session::Session;
use crate::sizing::{ws_write_reserve, WS_READ_BUFFER};
use crate::telemetry::{CoreCounters, Direction};

use super::core::Core;

/// RFC 6455 limits a close reason to 123 bytes.
const MAX_CLOSE_REASON: usize = 123;

enum Event {
    Message(Option<Result<Message, tungstenite::Error>>),
    Shutdown,
}

/// Why the session ended, for the log and the close frame.
struct End {
    code: u16,
    reason: String,
}

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
        .write_buffer_size(0)
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
    let mut session = Session::start(share, core_id, u32::try_from(max).unwrap_or(u32::MAX));
    let id = session.id();
    info!(session = id, cpu = core.cpu, %peer, "session started");

    let end = loop {
        let mut failed = None;
        while let Some(out) = session.poll_transmit() {
            let bytes = out.bytes();
            counters.add_bytes(Direction::BrowserOut, bytes.len());
            if let Err(err) = ws
                .send(Message::Binary(Bytes::copy_from_slice(bytes)))
                .await
            {
                failed = Some(err);
                break;
            }
        }
        if let Some(err) = failed {
            break End {
                code: 1006,
                reason: format!("writing to the browser failed: {err}"),
            };
        }
        // Only read when an answer has room: a browser that does not read its output stops
        // being read, and TCP pushes back on it.
        if !session.wants_input() {
            // Every chunk is back once the queue is written; anything else is a leak.
            break End {
                code: 1011,
                reason: format!("session {id}: output chunks not returned after writing"),
            };
        }
        let event = futures_lite::future::or(async { Event::Message(ws.next().await) }, async {
            core.shutdown.wait().await;
            Event::Shutdown
        })
        .await;
        match event {
            Event::Shutdown => {
                break End {
                    code: 1001,
                    reason: "gateway is shutting down".to_owned(),
                }
            }
            Event::Message(None) => {
                break End {
                    code: 1006,
                    reason: "browser went away".to_owned(),
                }
            }
            Event::Message(Some(Ok(msg))) => {
                counters.add_bytes(Direction::BrowserIn, msg.len());
                let res = match msg {
                    Message::Binary(b) => session.handle_binary(&b),
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
            Event::Message(Some(Err(tungstenite::Error::Capacity(
                CapacityError::MessageTooLong { size, max_size },
            )))) => {
                CoreCounters::inc(&counters.ws_oversize_closes);
                let reason = format!(
                    "session {id}: message of {size} bytes exceeds the limit of {max_size}"
                );
                break close(&mut ws, 1009, reason).await;
            }
            Event::Message(Some(Err(err))) => {
                break End {
                    code: 1002,
                    reason: format!("websocket error: {err}"),
                };
            }
        }
    };
    if end.code == 1001 {
        let _ = close(&mut ws, end.code, end.reason.clone()).await;
    }
    CoreCounters::dec(&counters.sessions_active);
    if end.code == 1000 || end.code == 1001 {
        info!(session = id, code = end.code, reason = %end.reason, "session ended");
    } else {
        warn!(session = id, code = end.code, reason = %end.reason, "session ended");
    }
}

async fn close(ws: &mut WebSocketStream<TcpStream>, code: u16, reason: String) -> End {
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

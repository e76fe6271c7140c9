//! One accepted connection: read a request head within the timeout, answer it, or hand the
//! socket to a WebSocket session. A connection holds a session slot only from a valid,
//! admitted upgrade on; slow and malformed requests are answered 4xx and closed.

use std::net::{Shutdown as NetShutdown, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use tracing::{debug, info};

use crate::http::request::{parse_head, RequestHead};
use crate::http::response::{switching_protocols, Response};
use crate::http::route::{route, Route};
use crate::http::HttpError;
use crate::limits::LimitError;
use crate::sizing::HTTP_HEAD_LIMIT;
use crate::telemetry::CoreCounters;

use super::core::Core;
use super::reattach::Handoff;
use super::websocket;

/// Seconds a refused client is asked to wait before retrying.
const RETRY_FULL_SECS: u32 = 5;
const RETRY_DRAINING_SECS: u32 = 30;
/// A client over its upgrade rate may try again once its bucket has refilled.
const RETRY_RATE_SECS: u32 = 1;
/// After an error response, how long unread request bytes are drained so the close is a FIN,
/// not a reset that could destroy the response before the client reads it.
const LINGER: Duration = Duration::from_millis(500);

pub async fn handle(core: Rc<Core>, stream: std::net::TcpStream, peer: SocketAddr) {
    // A second descriptor of the socket, kept while the head is read: should the request
    // resume a session on another core, this is what crosses to that core (glommio's stream
    // cannot give its descriptor back without `unsafe`). Only with more than one core.
    let spare = if core.cores > 1 {
        stream.try_clone().ok()
    } else {
        None
    };
    let stream = match stream.set_nonblocking(true) {
        Ok(()) => TcpStream::from(socket2::Socket::from(stream)),
        Err(err) => {
            debug!(%peer, %err, "dropping connection");
            return;
        }
    };
    if core.pending_http.get() >= core.settings.max_pending_http {
        CoreCounters::inc(&core.counters.http_rejected);
        let r = Response::unavailable(
            "busy: too many connections are sending requests to this core; retry shortly",
            1,
        );
        respond_and_close(stream, &r, false).await;
        return;
    }
    core.pending_http.set(core.pending_http.get() + 1);
    let mut stream = stream;
    let mut buf = vec![0u8; HTTP_HEAD_LIMIT];
    let timeout = core.settings.http_timeout;
    let head = futures_lite::future::or(read_head(&mut stream, &mut buf), async {
        glommio::timer::sleep(timeout).await;
        Err(HttpError::Timeout(timeout))
    })
    .await;
    core.pending_http
        .set(core.pending_http.get().saturating_sub(1));

    let (head, consumed, filled) = match head {
        Ok(h) => h,
        Err(HttpError::Incomplete) => return,
        Err(err) => {
            CoreCounters::inc(&core.counters.http_rejected);
            let status = match err {
                HttpError::Timeout(_) => 408,
                HttpError::HeadTooLarge { .. } => 431,
                _ => 400,
            };
            debug!(%peer, %err, status, "rejected request");
            respond_and_close(stream, &Response::text(status, &err.to_string()), false).await;
            return;
        }
    };
    CoreCounters::inc(&core.counters.http_requests);
    buf.truncate(filled);
    serve(core, stream, head, buf, consumed, peer, spare).await;
}

/// A connection another core accepted for a session on this one: the head is parsed again
/// from the bytes that came with it, and the request served here.
pub async fn handle_handoff(core: Rc<Core>, handoff: Handoff) {
    let Handoff {
        stream,
        bytes,
        peer,
    } = handoff;
    debug!(%peer, cpu = core.cpu, "handed-off connection arrived");
    let stream = TcpStream::from(socket2::Socket::from(stream));
    match parse_head(&bytes, HTTP_HEAD_LIMIT) {
        Ok(Some((head, consumed))) => serve(core, stream, head, bytes, consumed, peer, None).await,
        _ => debug!(%peer, "dropping a handed-off connection whose head does not parse"),
    }
}

/// Answers one request whose head is read; `bytes` is everything read, the head its first
/// `consumed` bytes.
async fn serve(
    core: Rc<Core>,
    stream: TcpStream,
    head: RequestHead,
    bytes: Vec<u8>,
    consumed: usize,
    peer: SocketAddr,
    spare: Option<std::net::TcpStream>,
) {
    let head_only = head.method == "HEAD";
    let response = match route(&head) {
        Route::WebSocket => {
            match crate::resume::requested(head.query.as_deref()) {
                Ok(None) => {}
                Ok(Some(id)) => {
                    let owner = crate::resume::core_of(id);
                    debug!(%peer, session = id, cpu = core.cpu, owner, "resume request");
                    if owner == core.index {
                        let leftover = bytes.get(consumed..).unwrap_or(&[]).to_vec();
                        drop(bytes);
                        resume_upgrade(core, stream, &head, leftover, peer, id).await;
                    } else {
                        hand_off(core, stream, bytes, peer, spare, id, owner).await;
                    }
                    return;
                }
                Err(why) => {
                    CoreCounters::inc(&core.counters.http_rejected);
                    respond_and_close(stream, &Response::text(400, &why), false).await;
                    return;
                }
            }
            drop(spare);
            let leftover = bytes.get(consumed..).unwrap_or(&[]).to_vec();
            drop(bytes);
            upgrade(core, stream, &head, leftover, peer).await;
            return;
        }
        Route::Asset(a) => Response::new(200, a.content_type, a.body),
        Route::Healthz => Response::text(200, "ok"),
        Route::Readyz => match core.telemetry.not_ready_reason() {
            None => Response::text(200, "ready"),
            Some(reason) => Response::unavailable(reason, RETRY_FULL_SECS),
        },
        Route::Metrics => Response::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            core.telemetry.render_prometheus(),
        ),
        Route::NotFound => Response::text(404, &format!("no such page: {}", head.path)),
        Route::MethodNotAllowed => Response::text(
            405,
            &format!("method {} is not allowed on {}", head.method, head.path),
        )
        .with_header(
            "Allow",
            if head.path == "/ws" {
                "GET"
            } else {
                "GET, HEAD"
            },
        ),
    };
    respond_and_close(stream, &response, head_only).await;
}

async fn read_head(
    stream: &mut TcpStream,
    buf: &mut [u8],
) -> Result<(RequestHead, usize, usize), HttpError> {
    let mut filled = 0;
    loop {
        let room = buf.get_mut(filled..).unwrap_or(&mut []);
        if room.is_empty() {
            return Err(HttpError::HeadTooLarge {
                limit: HTTP_HEAD_LIMIT,
            });
        }
        let n = stream.read(room).await.map_err(|_| HttpError::Incomplete)?;
        if n == 0 {
            return Err(HttpError::Incomplete);
        }
        filled += n;
        if let Some((head, consumed)) =
            parse_head(buf.get(..filled).unwrap_or(&[]), HTTP_HEAD_LIMIT)?
        {
            return Ok((head, consumed, filled));
        }
    }
}

/// Sends the connection to the core that owns session `id`. The socket's other descriptor
/// goes; this core's is closed when `stream` drops (no shutdown: the socket lives on there).
#[allow(clippy::too_many_arguments)]
async fn hand_off(
    core: Rc<Core>,
    stream: TcpStream,
    bytes: Vec<u8>,
    peer: SocketAddr,
    spare: Option<std::net::TcpStream>,
    id: u64,
    owner: usize,
) {
    let refuse = |why: &str| Response::unavailable(why, RETRY_FULL_SECS);
    let Some(spare) = spare else {
        // A connection that already crossed once, or a single-core gateway: the id names a
        // core this process does not have.
        let why = crate::resume::Refusal::NoCore.reason(id);
        respond_and_close(stream, &Response::text(404, &why), false).await;
        return;
    };
    let sent = {
        let table = core.handoff.borrow();
        match table.get(owner).and_then(Option::as_ref) {
            Some(sender) => sender
                .try_send(Handoff {
                    stream: spare,
                    bytes,
                    peer,
                })
                .map_err(|_| "busy: the core that owns this session takes no more connections right now; retry shortly"),
            None => Err("the core that owns this session is not running"),
        }
    };
    match sent {
        Ok(()) => {
            CoreCounters::inc(&core.counters.handoffs);
            info!(%peer, session = id, from = core.index, to = owner, "resume handed to the session's core");
            drop(stream);
        }
        Err(why) => {
            CoreCounters::inc(&core.counters.http_rejected);
            info!(%peer, session = id, reason = why, "resume not handed off");
            respond_and_close(stream, &refuse(why), false).await;
        }
    }
}

/// The handshake's answer to a WebSocket upgrade whose key and `Origin` pass, or the refusal
/// to send (400 for a bad upgrade, 403 for a foreign origin), counted and logged as `what`.
fn upgrade_answer(
    core: &Core,
    head: &RequestHead,
    peer: SocketAddr,
    what: &str,
) -> Result<http::Response<()>, Response> {
    let accept = head
        .to_http()
        .and_then(|req| {
            tungstenite::handshake::server::create_response(&req)
                .map_err(|e| HttpError::BadUpgrade(e.to_string()))
        })
        .map_err(|err| {
            CoreCounters::inc(&core.counters.http_rejected);
            Response::text(400, &err.to_string())
        })?;
    if let Err(why) = crate::http::origin::check(head, &core.settings.allowed_origins) {
        CoreCounters::inc(&core.counters.http_rejected);
        info!(%peer, reason = %why, "{what}");
        return Err(Response::text(403, &why));
    }
    Ok(accept)
}

/// Upgrades a request to resume session `id` on this core: no admission (the session holds
/// its share already); the page's first message must be its Resume with the ticket, within
/// the HTTP timeout, and the pending-connection cap covers the wait.
async fn resume_upgrade(
    core: Rc<Core>,
    mut stream: TcpStream,
    head: &RequestHead,
    leftover: Vec<u8>,
    peer: SocketAddr,
    id: u64,
) {
    let accept = match upgrade_answer(&core, head, peer, "resume refused") {
        Ok(a) => a,
        Err(refusal) => {
            respond_and_close(stream, &refusal, false).await;
            return;
        }
    };
    if core.pending_http.get() >= core.settings.max_pending_http {
        CoreCounters::inc(&core.counters.http_rejected);
        let r = Response::unavailable(
            "busy: too many connections are sending requests to this core; retry shortly",
            1,
        );
        respond_and_close(stream, &r, false).await;
        return;
    }
    if stream
        .write_all(&switching_protocols(&accept))
        .await
        .is_err()
    {
        return;
    }
    core.pending_http.set(core.pending_http.get() + 1);
    websocket::resume(core.clone(), stream, leftover, peer, id).await;
    core.pending_http
        .set(core.pending_http.get().saturating_sub(1));
}

async fn upgrade(
    core: Rc<Core>,
    mut stream: TcpStream,
    head: &RequestHead,
    leftover: Vec<u8>,
    peer: SocketAddr,
) {
    let accept = match upgrade_answer(&core, head, peer, "upgrade refused") {
        Ok(a) => a,
        Err(refusal) => {
            respond_and_close(stream, &refusal, false).await;
            return;
        }
    };
    if core.telemetry.is_draining() {
        CoreCounters::inc(&core.counters.sessions_refused);
        let r = Response::unavailable(
            "draining: this gateway is shutting down and takes no new sessions",
            RETRY_DRAINING_SECS,
        );
        respond_and_close(stream, &r, false).await;
        return;
    }
    // The client's own limits come before the gateway's capacity: a client over its limit is
    // told so (429), not that the gateway is full. The slot is held from here to the
    // session's end, and given back at once if the upgrade goes no further.
    let client = match &core.clients {
        None => None,
        Some(limits) => match limits.admit(peer.ip(), std::time::Instant::now()) {
            Ok(slot) => Some(slot),
            Err(err) => {
                let counter = match err {
                    LimitError::Upgrades { .. } => &core.counters.client_upgrades_limited,
                    LimitError::Sessions { .. } => &core.counters.client_sessions_limited,
                };
                CoreCounters::inc(counter);
                info!(%peer, reason = %err, "upgrade refused: client limit");
                let retry = match err {
                    LimitError::Upgrades { .. } => RETRY_RATE_SECS,
                    LimitError::Sessions { .. } => RETRY_FULL_SECS,
                };
                respond_and_close(stream, &Response::too_many(&err.to_string(), retry), false)
                    .await;
                return;
            }
        },
    };
    let share = match core.arena.admit() {
        Ok(share) => share,
        Err(_) => {
            CoreCounters::inc(&core.counters.sessions_refused);
            info!(%peer, cpu = core.cpu, capacity = core.capacity, "session refused: core full");
            let r = Response::unavailable(
                &format!(
                    "full: all {} session slots of this gateway core are in use (memory budget); retry later",
                    core.capacity
                ),
                RETRY_FULL_SECS,
            );
            respond_and_close(stream, &r, false).await;
            return;
        }
    };
    if stream
        .write_all(&switching_protocols(&accept))
        .await
        .is_err()
    {
        return;
    }
    websocket::run(core, stream, leftover, share, peer, client).await;
}

/// Writes the response, half-closes, and drains briefly so the peer sees the whole response.
async fn respond_and_close(mut stream: TcpStream, response: &Response, head_only: bool) {
    if stream
        .write_all(&response.to_bytes(head_only))
        .await
        .is_err()
    {
        return;
    }
    let _ = stream.flush().await;
    let _ = stream.shutdown(NetShutdown::Write).await;
    let mut sink = [0u8; 1024];
    let _ = futures_lite::future::or(
        async {
            let mut drained = 0usize;
            while drained < 64 * 1024 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        },
        glommio::timer::sleep(LINGER),
    )
    .await;
}

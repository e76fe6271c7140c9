//! One browser session, sans-IO: browser messages and RDP events in; messages for the browser
//! and actions for the RDP side out.
//!
//! Two bounds keep a session's memory fixed whatever its peers do:
//! - every outbound control message is encoded into a frame chunk of the session's arena share;
//!   when the share is used up the session asks for no more input (`wants_input`);
//! - at most [`MAX_FRAMES_IN_FLIGHT`] frames, and no more bytes than the session's frame-chunk
//!   share holds (plus the frame that crossed it), may be on their way to the page without a
//!   FrameDecoded answer; beyond that the session takes no more RDP events (`wants_rdp`), so
//!   the RDP socket fills and TCP holds the server back, and the server — which gets a frame
//!   acknowledgement only when the page has applied the frame — slows down by itself.
//!
//! Graphics in codecs other than H.264 are decoded here, update by update, into tiles
//! (`rdp::tiles`; lossless but for RemoteFX, lossy as sent); a session's decoder state (the
//! ClearCodec caches, the RemoteFX tile buffers) is created with its first such update and is
//! the session's alone.

use std::borrow::Cow;
use std::collections::VecDeque;

use std::rc::Rc;

use arena::{FrameChunk, SessionShare, Slot};

use tracing::warn;

use crate::audio::{AudioCounts, AudioPipeline, AudioSettings, AudioSink};
use crate::protocol::{FromBrowser, Pointer, ProtocolError, State, ToBrowser};
use crate::rdp::egfx::SurfaceFormat;
use crate::rdp::tiles::{Tile, TileKind, Update};
use crate::rdp::{GfxEvent, InputEvent, PointerEvent, RdpEvent, TileDecoder};

/// Frames sent to the page and not yet reported decoded, at most.
/// Close code for "the RDP session ended" (the reason came first in a Disconnected message).
pub const CLOSE_RDP_ENDED: u16 = 4000;
pub const MAX_FRAMES_IN_FLIGHT: usize = 4;

/// An encoded message: in pool memory when it fits a chunk; graphics payloads (an H.264
/// access unit, a pointer image) are written out once, from where the RDP side left them.
pub enum Outbound {
    Pooled { slot: Slot<FrameChunk>, len: usize },
    Large(Vec<u8>),
}

impl Outbound {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Outbound::Pooled { slot, len } => slot.get(..*len).unwrap_or(&[]),
            Outbound::Large(v) => v,
        }
    }
}

/// The target a page asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetRequest {
    /// A configured target by name; empty: the default target.
    Named(String),
    /// A connection token (wiped when dropped, never printed).
    Token(zeroize::Zeroizing<String>),
}

/// For log lines: a name, never a token.
impl std::fmt::Display for TargetRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetRequest::Named(n) if n.is_empty() => f.write_str("(default)"),
            TargetRequest::Named(n) => f.write_str(n),
            TargetRequest::Token(_) => f.write_str("(token)"),
        }
    }
}

/// What the shell must do on the RDP side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open the RDP connection to the target the page asked for.
    Connect {
        target: TargetRequest,
        width: u16,
        height: u16,
    },
    Input(InputEvent),
    /// Ask the server for a new desktop size (where it supports display control).
    Resize {
        width: u16,
        height: u16,
    },
    /// Tell the server the page has applied `frame_id`; `queue_depth` frames are still pending.
    AckFrame {
        frame_id: u32,
        queue_depth: u32,
    },
    /// No page is attached: ask the server to stop drawing (Suppress Output).
    SuppressOutput,
    /// A new page took over: ask the server to draw again and repaint the whole desktop, so
    /// the page gets a key frame to start from.
    Refresh {
        width: u16,
        height: u16,
    },
}

/// Most surfaces whose set-up a session remembers for a page that resumes it; servers use one
/// per monitor, so a few are plenty.
const MAX_REMEMBERED_SURFACES: usize = 16;

/// The graphics set-up a new page needs before the next picture makes sense: the output size
/// and the surfaces with where they show. No pixels.
#[derive(Debug, Default)]
struct GraphicsSetup {
    reset: Option<(u16, u16)>,
    surfaces: Vec<SurfaceSetup>,
}

/// A surface as a page must create it: (id, width, height, format, mapped at).
type SurfaceSetup = (u16, u16, u16, u8, Option<(u16, u16)>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    AwaitHello,
    Connecting,
    Active,
    Ended,
}

/// Why a session ends, with the WebSocket close code the browser sees.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("session {session}: bad message from the browser: {err}")]
    Protocol { session: u64, err: ProtocolError },
    #[error("session {session}: text messages are not part of the protocol")]
    Text { session: u64 },
    #[error("session {session}: browser sent input while its output queue was full")]
    InputWhileFull { session: u64 },
    #[error("session {session}: {what}")]
    OutOfOrder { session: u64, what: String },
}

impl SessionError {
    /// RFC 6455 close code: 1002 protocol error, 1003 unacceptable data type, 1008 policy.
    pub fn close_code(&self) -> u16 {
        match self {
            SessionError::Protocol { .. } | SessionError::OutOfOrder { .. } => 1002,
            SessionError::Text { .. } => 1003,
            SessionError::InputWhileFull { .. } => 1008,
        }
    }
}

pub struct Session {
    share: Rc<SessionShare>,
    id: u64,
    core: u16,
    max_message: u32,
    phase: Phase,
    out: VecDeque<Outbound>,
    actions: VecDeque<Action>,
    /// EndFrame ids sent to the page with the bytes of each frame, oldest first.
    frames_in_flight: VecDeque<(u32, usize)>,
    /// Bytes of graphics sent since the last EndFrame.
    frame_bytes: usize,
    /// Bytes of the frames in `frames_in_flight`.
    bytes_in_flight: usize,
    /// Decodes updates in codecs other than H.264; created with the first one.
    tiles: Option<TileDecoder>,
    /// The session's sound, when the gateway plays audio; shared with the RDP audio channel.
    audio: Option<AudioSink>,
    /// The close frame for an ending the page must tell apart (a refused token or target).
    close: Option<(u16, String)>,
    /// False while no page is attached (it went away and the session waits to be resumed):
    /// nothing is queued for the page, graphics from the server are read and dropped, and no
    /// frame is acknowledged, so the server's own flow control holds it back.
    attached: bool,
    /// The newest frame the server sent that was never acknowledged: acknowledged when a page
    /// resumes, so the server's frame window opens again.
    unanswered: Option<u32>,
    /// The desktop size last announced.
    desktop: Option<(u16, u16)>,
    setup: GraphicsSetup,
    /// Why the session ended, once it has.
    ended: Option<String>,
}

impl Session {
    /// Starts a session and queues its `ServerHello`. Session ids carry the core in their top
    /// 16 bits, so they are unique in the process without any shared counter.
    pub fn start(share: SessionShare, core: u16, max_message: u32) -> Self {
        let id = (u64::from(core) << 48) | (share.id() & 0xffff_ffff_ffff);
        let mut s = Session {
            share: Rc::new(share),
            id,
            core,
            max_message,
            phase: Phase::AwaitHello,
            out: VecDeque::new(),
            actions: VecDeque::new(),
            frames_in_flight: VecDeque::new(),
            frame_bytes: 0,
            bytes_in_flight: 0,
            tiles: None,
            audio: None,
            close: None,
            attached: true,
            unanswered: None,
            desktop: None,
            setup: GraphicsSetup::default(),
            ended: None,
        };
        let hello = ToBrowser::ServerHello {
            session_id: id,
            core,
            max_message,
        };
        // A fresh share has its whole quota free, so the hello always fits.
        let _ = s.queue(&hello);
        s
    }

    /// Plays the server's sound with these settings: the pipeline takes its buffers from this
    /// session's share of the audio pool.
    #[must_use]
    pub fn with_audio(mut self, settings: AudioSettings) -> Self {
        if settings.enabled {
            self.audio = Some(AudioSink::new(AudioPipeline::new(
                self.share.clone(),
                self.id,
                settings,
            )));
        }
        self
    }

    /// The sink the RDP audio channel fills, if the session plays sound.
    pub fn audio_sink(&self) -> Option<AudioSink> {
        self.audio.clone()
    }

    /// Audio counts since the last call, for the metrics.
    pub fn take_audio_counts(&mut self) -> AudioCounts {
        self.audio
            .as_ref()
            .and_then(|a| a.with(AudioPipeline::take_counts))
            .unwrap_or_default()
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn core(&self) -> u16 {
        self.core
    }

    pub fn max_message(&self) -> u32 {
        self.max_message
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// False while the share has no chunk for an answer: the shell must stop reading.
    pub fn wants_input(&self) -> bool {
        self.share.in_use(arena::Pool::FrameChunk) < self.share.quota(arena::Pool::FrameChunk)
    }

    /// True when the session can take another RDP event (the first one, `Connected`, arrives
    /// while it is still connecting).
    pub fn wants_rdp(&self) -> bool {
        matches!(self.phase, Phase::Connecting | Phase::Active) && self.wants_input()
    }

    /// True while the page may be sent another frame: fewer than [`MAX_FRAMES_IN_FLIGHT`]
    /// unanswered, and their bytes within the share. While false the shell reads the server
    /// only up to the next graphics event, so sound and pointer updates keep flowing.
    pub fn wants_graphics(&self) -> bool {
        // Detached: what the server still sends is read and dropped (it stops by itself
        // within its frame window, since nothing is acknowledged).
        !self.attached
            || self.frames_in_flight.len() < MAX_FRAMES_IN_FLIGHT
                && self.bytes_in_flight < self.bytes_budget()
    }

    /// Graphics bytes that may be unanswered by the page: the session's frame-chunk share.
    pub fn bytes_budget(&self) -> usize {
        self.share.quota(arena::Pool::FrameChunk) * self.share_chunk_size()
    }

    pub fn bytes_in_flight(&self) -> usize {
        self.bytes_in_flight
    }

    pub fn frames_in_flight(&self) -> usize {
        self.frames_in_flight.len()
    }

    pub fn handle_binary(&mut self, msg: &[u8]) -> Result<(), SessionError> {
        let session = self.id;
        let out_of_order = |what: String| SessionError::OutOfOrder { session, what };
        let msg =
            FromBrowser::decode(msg).map_err(|err| SessionError::Protocol { session, err })?;
        // A page says hello right after ServerHello and sends nothing else before it but
        // pings; anything else first is not a page speaking this protocol.
        let hello = matches!(
            msg,
            FromBrowser::ClientHello { .. } | FromBrowser::TokenHello { .. }
        );
        if self.phase == Phase::AwaitHello && !hello && !matches!(msg, FromBrowser::Ping { .. }) {
            return Err(out_of_order(format!(
                "{} before ClientHello or TokenHello",
                msg.name()
            )));
        }
        if self.phase != Phase::AwaitHello && hello {
            return Err(out_of_order(format!(
                "{} after the session's hello (one hello per session)",
                msg.name()
            )));
        }
        match msg {
            FromBrowser::Ping { nonce } => self.queue(&ToBrowser::Pong { nonce }),
            FromBrowser::ClientHello {
                width,
                height,
                target,
            } => {
                self.phase = Phase::Connecting;
                let text = if target.is_empty() {
                    "connecting".to_owned()
                } else {
                    format!("connecting to {target}")
                };
                self.actions.push_back(Action::Connect {
                    target: TargetRequest::Named(target),
                    width,
                    height,
                });
                self.status(State::Connecting, &text)
            }
            FromBrowser::TokenHello {
                width,
                height,
                token,
            } => {
                self.phase = Phase::Connecting;
                self.actions.push_back(Action::Connect {
                    target: TargetRequest::Token(token),
                    width,
                    height,
                });
                self.status(State::Connecting, "connecting")
            }
            FromBrowser::FrameDecoded {
                frame_id,
                queue_depth,
                ..
            } => {
                let Some(pos) = self
                    .frames_in_flight
                    .iter()
                    .position(|&(f, _)| f == frame_id)
                else {
                    return Err(out_of_order(format!(
                        "FrameDecoded for frame {frame_id}, which is not on its way to the page"
                    )));
                };
                // Frames are applied in order; an answer for a later frame covers earlier ones.
                let answered: usize = self.frames_in_flight.drain(..=pos).map(|(_, b)| b).sum();
                self.bytes_in_flight = self.bytes_in_flight.saturating_sub(answered);
                let pending = u32::from(queue_depth) + self.frames_in_flight.len() as u32;
                self.actions.push_back(Action::AckFrame {
                    frame_id,
                    queue_depth: pending,
                });
                Ok(())
            }
            FromBrowser::Resize { width, height } => {
                if self.phase == Phase::Active {
                    self.actions.push_back(Action::Resize { width, height });
                }
                Ok(())
            }
            FromBrowser::AudioBuffer { buffer_ms } => {
                if let Some(a) = &self.audio {
                    let _ = a.with(|p| p.set_browser_buffer(buffer_ms));
                }
                Ok(())
            }
            FromBrowser::Resume { .. } => Err(out_of_order(
                "Resume is only valid as the first message of /ws?resume=ID".to_owned(),
            )),
            FromBrowser::Input(e) => {
                // Input while the desktop is still connecting has nowhere to go; it is dropped
                // (a page may race the Connected status).
                if self.phase == Phase::Active {
                    self.actions.push_back(Action::Input(e));
                }
                Ok(())
            }
        }
    }

    pub fn handle_text(&mut self) -> Result<(), SessionError> {
        Err(SessionError::Text { session: self.id })
    }

    /// Progress of the RDP connection, shown on the page.
    pub fn on_progress(&mut self, state: State, text: &str) {
        let _ = self.status(state, text);
    }

    /// The gateway will not open the connection (a refused token, a target the policy does
    /// not allow): the page gets the reason, and the session ends with `close_code` and the
    /// same reason, so a page or a portal can tell "mint a new token" from other endings.
    pub fn on_refused(&mut self, close_code: u16, reason: &str) {
        self.close = Some((close_code, reason.to_owned()));
        self.on_rdp_end(reason);
    }

    /// The close code and reason of an ending `on_refused` or `on_rdp_end` decided; `None`
    /// for the others.
    pub fn close_frame(&self) -> Option<(u16, &str)> {
        self.close.as_ref().map(|(c, r)| (*c, r.as_str()))
    }

    /// Queues the page's resume ticket (once the desktop is up): with it, a new WebSocket
    /// may take this session over within `grace_secs` of losing its page.
    pub fn offer_resume(&mut self, ticket: &crate::resume::Ticket, grace_secs: u32) {
        let _ = self.queue(&ToBrowser::ResumeTicket {
            session_id: self.id,
            grace_secs,
            ticket: *ticket.as_bytes(),
        });
    }

    /// Why the session ended, once it has.
    pub fn end_reason(&self) -> Option<&str> {
        self.ended.as_deref()
    }

    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// The page went away; the desktop stays for a page that resumes it. What waited for the
    /// old page is dropped (its chunks go back to the share); the server is asked to stop
    /// drawing, and frames the old page never answered stay unacknowledged.
    pub fn detach(&mut self) {
        if !self.attached {
            return;
        }
        self.attached = false;
        if let Some(&(last, _)) = self.frames_in_flight.back() {
            self.unanswered = Some(last);
        }
        self.frames_in_flight.clear();
        self.bytes_in_flight = 0;
        self.frame_bytes = 0;
        self.out.clear();
        if let Some(a) = &self.audio {
            let _ = a.with(AudioPipeline::restart_for_new_page);
        }
        if self.phase == Phase::Active {
            self.actions.push_back(Action::SuppressOutput);
        }
    }

    /// A new page took the session over: it gets a ServerHello (the same session), the
    /// desktop size, the graphics set-up, and the server is asked for a whole new picture.
    /// The old page's unanswered frames are acknowledged so the server sends again.
    pub fn reattach(&mut self) {
        // A page replacing one that is still attached: its unanswered frames count too.
        if let Some(&(last, _)) = self.frames_in_flight.back() {
            self.unanswered = Some(last);
        }
        self.attached = true;
        self.out.clear();
        self.frames_in_flight.clear();
        self.bytes_in_flight = 0;
        self.frame_bytes = 0;
        let _ = self.queue(&ToBrowser::ServerHello {
            session_id: self.id,
            core: self.core,
            max_message: self.max_message,
        });
        if let Some((width, height)) = self.desktop {
            let _ = self.queue(&ToBrowser::DesktopSize { width, height });
        }
        if let Some((width, height)) = self.setup.reset {
            let _ = self.queue(&ToBrowser::ResetGraphics { width, height });
        }
        let surfaces = self.setup.surfaces.clone();
        for (surface, width, height, format, mapped) in surfaces {
            let _ = self.queue(&ToBrowser::CreateSurface {
                surface,
                width,
                height,
                format,
            });
            if let Some((x, y)) = mapped {
                let _ = self.queue(&ToBrowser::MapSurfaceToOutput { surface, x, y });
            }
        }
        let _ = self.status(State::Connected, "resumed");
        if let Some(a) = &self.audio {
            let _ = a.with(AudioPipeline::restart_for_new_page);
        }
        if let Some(frame_id) = self.unanswered.take() {
            self.actions.push_back(Action::AckFrame {
                frame_id,
                queue_depth: 0,
            });
        }
        if let Some((width, height)) = self.desktop {
            self.actions.push_back(Action::Refresh { width, height });
        }
    }

    /// Remembers the graphics set-up a resuming page will need.
    fn remember(&mut self, g: &GfxEvent) {
        let setup = &mut self.setup;
        match g {
            GfxEvent::ResetGraphics { width, height, .. } => {
                setup.reset = Some((clamp16(*width), clamp16(*height)));
                setup.surfaces.clear();
            }
            GfxEvent::CreateSurface {
                surface,
                width,
                height,
                format,
            } => {
                setup.surfaces.retain(|s| s.0 != *surface);
                if setup.surfaces.len() < MAX_REMEMBERED_SURFACES {
                    let argb = u8::from(*format == SurfaceFormat::ARgb);
                    setup.surfaces.push((*surface, *width, *height, argb, None));
                }
            }
            GfxEvent::DeleteSurface { surface } => setup.surfaces.retain(|s| s.0 != *surface),
            GfxEvent::MapSurfaceToOutput { surface, x, y } => {
                if let Some(s) = setup.surfaces.iter_mut().find(|s| s.0 == *surface) {
                    s.4 = Some((clamp16(*x), clamp16(*y)));
                }
            }
            _ => {}
        }
    }

    /// The RDP side failed or ended: the page gets the reason, the session ends. The close
    /// frame carries the reason too (code 4000), for a page that reads only that.
    pub fn on_rdp_end(&mut self, reason: &str) {
        self.phase = Phase::Ended;
        self.ended = Some(reason.to_owned());
        if self.close.is_none() {
            self.close = Some((CLOSE_RDP_ENDED, reason.to_owned()));
        }
        self.push_large(&ToBrowser::Disconnected {
            reason: Cow::Borrowed(reason),
        });
    }

    pub fn on_rdp_event(&mut self, event: &RdpEvent) {
        match event {
            RdpEvent::Connected { width, height } | RdpEvent::Reactivated { width, height } => {
                self.phase = Phase::Active;
                // A reactivated server starts its frame numbering over.
                self.frames_in_flight.clear();
                self.bytes_in_flight = 0;
                self.frame_bytes = 0;
                self.unanswered = None;
                self.desktop = Some((*width, *height));
                let _ = self.queue(&ToBrowser::DesktopSize {
                    width: *width,
                    height: *height,
                });
                let _ = self.status(State::Connected, "connected");
            }
            RdpEvent::Graphics(g) => self.on_graphics(g),
            RdpEvent::Pointer(p) => {
                let msg = ToBrowser::Pointer(match p {
                    PointerEvent::Default => Pointer::Default,
                    PointerEvent::Hidden => Pointer::Hidden,
                    PointerEvent::Position { x, y } => Pointer::Position { x: *x, y: *y },
                    PointerEvent::Bitmap {
                        width,
                        height,
                        hotspot_x,
                        hotspot_y,
                        rgba,
                    } => Pointer::Bitmap {
                        width: *width,
                        height: *height,
                        hot_x: *hotspot_x,
                        hot_y: *hotspot_y,
                        rgba: Cow::Borrowed(rgba.as_slice()),
                    },
                });
                self.push_large(&msg);
            }
            RdpEvent::Disconnected { reason } => self.on_rdp_end(reason),
            // The sound is already in the sink; `transmit_next` sends it first.
            RdpEvent::Audio => {}
        }
    }

    fn on_graphics(&mut self, g: &GfxEvent) {
        self.remember(g);
        if !self.attached {
            if let GfxEvent::EndFrame { frame_id } = g {
                self.unanswered = Some(*frame_id);
            }
            return;
        }
        let msg = match g {
            GfxEvent::ResetGraphics { width, height, .. } => ToBrowser::ResetGraphics {
                width: clamp16(*width),
                height: clamp16(*height),
            },
            GfxEvent::CreateSurface {
                surface,
                width,
                height,
                format,
            } => ToBrowser::CreateSurface {
                surface: *surface,
                width: *width,
                height: *height,
                format: u8::from(*format == SurfaceFormat::ARgb),
            },
            GfxEvent::DeleteSurface { surface } => ToBrowser::DeleteSurface { surface: *surface },
            GfxEvent::MapSurfaceToOutput { surface, x, y } => ToBrowser::MapSurfaceToOutput {
                surface: *surface,
                x: clamp16(*x),
                y: clamp16(*y),
            },
            GfxEvent::StartFrame { frame_id, .. } => ToBrowser::StartFrame {
                frame_id: *frame_id,
            },
            GfxEvent::EndFrame { frame_id } => {
                let bytes = std::mem::take(&mut self.frame_bytes);
                self.frames_in_flight.push_back((*frame_id, bytes));
                self.bytes_in_flight += bytes;
                ToBrowser::EndFrame {
                    frame_id: *frame_id,
                }
            }
            GfxEvent::Avc420(a) => ToBrowser::Avc420 {
                surface: a.surface,
                dest: a.dest,
                regions: Cow::Borrowed(&a.regions),
                access_unit: Cow::Borrowed(a.access_unit()),
            },
            GfxEvent::SolidFill {
                surface,
                color,
                rects,
            } => ToBrowser::SolidFill {
                surface: *surface,
                color: *color,
                rects: Cow::Borrowed(rects),
            },
            GfxEvent::SurfaceToSurface {
                src_surface,
                dst_surface,
                src_rect,
                dst_points,
            } => ToBrowser::SurfaceToSurface {
                src: *src_surface,
                dst: *dst_surface,
                src_rect: *src_rect,
                points: Cow::Borrowed(dst_points),
            },
            GfxEvent::SurfaceToCache {
                surface,
                cache_slot,
                src_rect,
                ..
            } => ToBrowser::SurfaceToCache {
                surface: *surface,
                slot: *cache_slot,
                src_rect: *src_rect,
            },
            GfxEvent::CacheToSurface {
                cache_slot,
                surface,
                dst_points,
            } => ToBrowser::CacheToSurface {
                slot: *cache_slot,
                surface: *surface,
                points: Cow::Borrowed(dst_points),
            },
            GfxEvent::EvictCacheEntry { cache_slot } => {
                ToBrowser::EvictCacheEntry { slot: *cache_slot }
            }
            GfxEvent::OtherCodec { .. } => {
                if let Some(update) = Update::from_event(g) {
                    self.on_other_codec(&update);
                }
                return;
            }
            // Capability choice, cache import and codec contexts concern only the gateway.
            GfxEvent::CapsConfirmed { .. }
            | GfxEvent::CacheImportReply { .. }
            | GfxEvent::DeleteEncodingContext { .. } => return,
        };
        self.push_large(&msg);
    }

    /// Decodes an update into tiles, one message each. An update the gateway cannot decode
    /// ends the session with the reason: the page would otherwise show a desktop with a hole.
    fn on_other_codec(&mut self, update: &Update<'_>) {
        let mut decoder = self.tiles.take().unwrap_or_default();
        let result = decoder.decode(update, |t| self.push_tile(&t));
        self.tiles = Some(decoder);
        if let Err(err) = result {
            warn!(
                session = self.id,
                surface = update.surface,
                codec_id = update.codec_id,
                %err,
                "graphics update refused"
            );
            self.on_rdp_end(&err.to_string());
        }
    }

    fn push_tile(&mut self, t: &Tile<'_>) {
        let msg = match t.kind {
            TileKind::Rgba => ToBrowser::Tile {
                surface: t.surface,
                rect: t.rect,
                rgba: Cow::Borrowed(t.data),
            },
            TileKind::Alpha => ToBrowser::TileAlpha {
                surface: t.surface,
                rect: t.rect,
                alpha: Cow::Borrowed(t.data),
            },
        };
        self.push_large(&msg);
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next message to write, if any. Dropping it returns its chunk to the share.
    /// Sound is not in here: see [`Session::transmit_next`].
    pub fn poll_transmit(&mut self) -> Option<Outbound> {
        self.out.pop_front()
    }

    /// The next message to write: sound first (small, and late sound is useless), lent to
    /// `copy`; then everything else in order, handed over (a large message is moved, not
    /// copied).
    pub fn transmit_next<R>(
        &mut self,
        copy: impl FnOnce(&[u8]) -> R,
        take: impl FnOnce(Outbound) -> R,
    ) -> Option<R> {
        if let Some(sound) = self
            .audio
            .as_ref()
            .and_then(|a| a.with(|p| p.next_message(copy)).flatten())
        {
            return Some(sound);
        }
        self.out.pop_front().map(take)
    }

    /// True when something waits to be written to the page.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
            || self
                .audio
                .as_ref()
                .and_then(|a| a.with(|p| p.has_output()))
                .unwrap_or(false)
    }

    pub fn queued(&self) -> usize {
        self.out.len()
    }

    fn status(&mut self, state: State, text: &str) -> Result<(), SessionError> {
        self.queue(&ToBrowser::Status {
            state,
            text: Cow::Borrowed(text),
        })
    }

    /// Messages whose size is bounded by the protocol go to pool memory.
    fn queue(&mut self, msg: &ToBrowser<'_>) -> Result<(), SessionError> {
        if !self.attached {
            return Ok(());
        }
        let session = self.id;
        let mut slot = self
            .share
            .alloc::<FrameChunk>()
            .ok_or(SessionError::InputWhileFull { session })?;
        match msg.encode(&mut slot) {
            Ok(len) => self.out.push_back(Outbound::Pooled { slot, len }),
            Err(_) => self.out.push_back(Outbound::Large(msg.to_vec())),
        }
        Ok(())
    }

    /// Graphics messages: pooled when they fit a chunk, else written out once in full.
    fn push_large(&mut self, msg: &ToBrowser<'_>) {
        if !self.attached {
            return;
        }
        let len = msg.encoded_len();
        self.frame_bytes += len;
        if len <= self.share_chunk_size() {
            if let Some(mut slot) = self.share.alloc::<FrameChunk>() {
                if let Ok(len) = msg.encode(&mut slot) {
                    self.out.push_back(Outbound::Pooled { slot, len });
                    return;
                }
            }
        }
        self.out.push_back(Outbound::Large(msg.to_vec()));
    }

    fn share_chunk_size(&self) -> usize {
        self.share.slot_size(arena::Pool::FrameChunk)
    }
}

fn clamp16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use arena::{Arena, ArenaConfig, Pool, PoolSpec};

    fn arena(chunks: usize) -> Arena {
        arena_of(256, chunks)
    }

    fn arena_of(slot_size: usize, chunks: usize) -> Arena {
        Arena::new(&ArenaConfig {
            frame_chunk: PoolSpec {
                slot_size,
                slots_per_session: chunks,
            },
            surface_desc: ArenaConfig::DEFAULT_SURFACE_DESC,
            audio_buf: ArenaConfig::DEFAULT_AUDIO_BUF,
            sessions: 2,
            prefault: false,
            mlock: false,
            huge_pages: false,
        })
        .unwrap()
    }

    fn ping(n: u64) -> Vec<u8> {
        FromBrowser::Ping { nonce: n }.encode()
    }

    fn hello(target: &str) -> Vec<u8> {
        FromBrowser::ClientHello {
            width: 1280,
            height: 720,
            target: target.into(),
        }
        .encode()
    }

    fn drain(s: &mut Session) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| s.poll_transmit().map(|o| o.bytes().to_vec())).collect()
    }

    #[test]
    fn hello_then_pong() {
        let a = arena(4);
        let mut s = Session::start(a.admit().unwrap(), 1, 65536);
        let hello = s.poll_transmit().unwrap();
        assert!(matches!(
            ToBrowser::decode(hello.bytes()).unwrap(),
            ToBrowser::ServerHello { core: 1, max_message: 65536, session_id } if session_id >> 48 == 1
        ));
        s.handle_binary(&ping(9)).unwrap();
        let pong = s.poll_transmit().unwrap();
        assert_eq!(
            ToBrowser::decode(pong.bytes()).unwrap(),
            ToBrowser::Pong { nonce: 9 }
        );
        assert!(s.poll_transmit().is_none());
    }

    #[test]
    fn client_hello_asks_for_a_connection_once() {
        let a = arena(8);
        let mut s = Session::start(a.admit().unwrap(), 0, 1024);
        s.handle_binary(&hello("office")).unwrap();
        assert_eq!(
            s.poll_action(),
            Some(Action::Connect {
                target: TargetRequest::Named("office".into()),
                width: 1280,
                height: 720
            })
        );
        let msgs = drain(&mut s);
        assert_eq!(
            ToBrowser::decode(msgs.last().unwrap()).unwrap(),
            ToBrowser::Status {
                state: State::Connecting,
                text: "connecting to office".into()
            }
        );
        let e = s.handle_binary(&hello("office")).unwrap_err();
        assert_eq!(e.close_code(), 1002);
        assert!(
            e.to_string()
                .contains("ClientHello after the session's hello"),
            "{e}"
        );
    }

    #[test]
    fn a_token_hello_asks_for_a_connection_and_a_refusal_says_why() {
        let a = arena(8);
        let mut s = Session::start(a.admit().unwrap(), 0, 1024);
        let token = zeroize::Zeroizing::new("AQIDBAUG".to_owned());
        s.handle_binary(
            &FromBrowser::TokenHello {
                width: 1280,
                height: 720,
                token: token.clone(),
            }
            .encode(),
        )
        .unwrap();
        let target = match s.poll_action() {
            Some(Action::Connect { target, .. }) => target,
            other => unreachable!("no connect: {other:?}"),
        };
        assert_eq!(target, TargetRequest::Token(token));
        assert_eq!(target.to_string(), "(token)");
        assert!(s.handle_binary(&hello("office")).is_err());
        drain(&mut s);
        assert_eq!(s.close_frame(), None);
        s.on_refused(4002, "the connection token has expired");
        assert_eq!(s.phase(), Phase::Ended);
        assert_eq!(
            s.close_frame(),
            Some((4002, "the connection token has expired"))
        );
        assert_eq!(
            ToBrowser::decode(&drain(&mut s)[0]).unwrap(),
            ToBrowser::Disconnected {
                reason: "the connection token has expired".into()
            }
        );
    }

    fn active(a: &Arena) -> Session {
        let mut s = Session::start(a.admit().unwrap(), 0, 1024);
        s.handle_binary(&hello("")).unwrap();
        s.poll_action();
        s.on_rdp_event(&RdpEvent::Connected {
            width: 1280,
            height: 720,
        });
        drain(&mut s);
        s
    }

    #[test]
    fn a_detached_session_drops_graphics_and_a_resuming_page_gets_the_setup_and_a_refresh() {
        let a = arena(16);
        let mut s = active(&a);
        let gfx = |s: &mut Session, g: GfxEvent| s.on_rdp_event(&RdpEvent::Graphics(g));
        gfx(
            &mut s,
            GfxEvent::ResetGraphics {
                width: 1280,
                height: 720,
                monitors: vec![],
            },
        );
        gfx(
            &mut s,
            GfxEvent::CreateSurface {
                surface: 3,
                width: 1280,
                height: 720,
                format: SurfaceFormat::XRgb,
            },
        );
        gfx(
            &mut s,
            GfxEvent::MapSurfaceToOutput {
                surface: 3,
                x: 0,
                y: 0,
            },
        );
        gfx(&mut s, GfxEvent::EndFrame { frame_id: 1 });
        // The page leaves with frame 1 unanswered and something unsent.
        s.detach();
        assert!(!s.is_attached());
        assert_eq!(s.queued(), 0, "what waited for the old page is dropped");
        assert_eq!(s.poll_action(), Some(Action::SuppressOutput));
        // Graphics while detached are read (not held) and dropped; nothing is acknowledged.
        assert!(s.wants_graphics() && s.wants_rdp());
        for id in 2..=9 {
            gfx(&mut s, GfxEvent::EndFrame { frame_id: id });
        }
        assert_eq!(s.queued(), 0);
        assert_eq!(s.poll_action(), None);

        s.reattach();
        let msgs: Vec<_> = drain(&mut s);
        let decoded: Vec<_> = msgs.iter().map(|m| ToBrowser::decode(m).unwrap()).collect();
        assert!(
            matches!(decoded[0], ToBrowser::ServerHello { session_id, .. } if session_id == s.id())
        );
        assert_eq!(
            decoded[1..],
            [
                ToBrowser::DesktopSize {
                    width: 1280,
                    height: 720
                },
                ToBrowser::ResetGraphics {
                    width: 1280,
                    height: 720
                },
                ToBrowser::CreateSurface {
                    surface: 3,
                    width: 1280,
                    height: 720,
                    format: 0
                },
                ToBrowser::MapSurfaceToOutput {
                    surface: 3,
                    x: 0,
                    y: 0
                },
                ToBrowser::Status {
                    state: State::Connected,
                    text: "resumed".into()
                },
            ]
        );
        assert_eq!(
            s.poll_action(),
            Some(Action::AckFrame {
                frame_id: 9,
                queue_depth: 0
            })
        );
        assert_eq!(
            s.poll_action(),
            Some(Action::Refresh {
                width: 1280,
                height: 720
            })
        );
        assert_eq!(s.frames_in_flight(), 0);
    }

    #[test]
    fn frames_are_acknowledged_only_when_the_page_has_them() {
        let a = arena(16);
        let mut s = active(&a);
        assert!(s.wants_rdp());
        for id in 1..=MAX_FRAMES_IN_FLIGHT as u32 {
            s.on_rdp_event(&RdpEvent::Graphics(GfxEvent::StartFrame {
                frame_id: id,
                timestamp_ms: 0,
            }));
            s.on_rdp_event(&RdpEvent::Graphics(GfxEvent::EndFrame { frame_id: id }));
            drain(&mut s);
        }
        // The page has applied none: no ack went out and no more graphics are taken (the
        // server is still read for sound and pointer updates).
        assert_eq!(s.poll_action(), None);
        assert!(!s.wants_graphics());
        assert!(s.wants_rdp());
        let decoded = FromBrowser::FrameDecoded {
            frame_id: 2,
            frames_decoded: 2,
            queue_depth: 1,
        };
        s.handle_binary(&decoded.encode()).unwrap();
        assert_eq!(
            s.poll_action(),
            Some(Action::AckFrame {
                frame_id: 2,
                queue_depth: 3
            })
        );
        assert_eq!(s.frames_in_flight(), 2);
        assert!(s.wants_graphics());
        let bogus = FromBrowser::FrameDecoded {
            frame_id: 99,
            frames_decoded: 3,
            queue_depth: 0,
        };
        let e = s.handle_binary(&bogus.encode()).unwrap_err();
        assert!(e.to_string().contains("frame 99"), "{e}");
    }

    #[test]
    fn bytes_in_flight_are_bounded_by_the_share() {
        let a = arena(4); // 4 chunks × 256 B = 1 KiB of graphics in flight at most
        let mut s = active(&a);
        assert_eq!(s.bytes_budget(), 1024);
        let big = crate::rdp::egfx::Rect {
            left: 0,
            top: 0,
            right: 16,
            bottom: 16,
        };
        let fill = GfxEvent::SolidFill {
            surface: 1,
            color: [0, 0, 0, 255],
            rects: vec![big; 200],
        };
        s.on_rdp_event(&RdpEvent::Graphics(fill));
        s.on_rdp_event(&RdpEvent::Graphics(GfxEvent::EndFrame { frame_id: 1 }));
        drain(&mut s);
        assert!(s.bytes_in_flight() > 1024);
        assert!(
            !s.wants_graphics(),
            "one frame over the budget stops the stream"
        );
        let decoded = FromBrowser::FrameDecoded {
            frame_id: 1,
            frames_decoded: 1,
            queue_depth: 0,
        };
        s.handle_binary(&decoded.encode()).unwrap();
        assert_eq!(s.bytes_in_flight(), 0);
        assert!(s.wants_graphics());
    }

    #[test]
    fn input_flows_only_while_active() {
        let a = arena(8);
        let mut s = Session::start(a.admit().unwrap(), 0, 1024);
        let click = FromBrowser::Input(InputEvent::MouseMove { x: 1, y: 1 }).encode();
        s.handle_binary(&hello("")).unwrap();
        s.poll_action();
        // Connecting: a page racing the Connected status loses the input, not the session.
        s.handle_binary(&click).unwrap();
        assert_eq!(s.poll_action(), None);
        drop(s);
        let mut s = active(&a);
        s.handle_binary(&click).unwrap();
        assert_eq!(
            s.poll_action(),
            Some(Action::Input(InputEvent::MouseMove { x: 1, y: 1 }))
        );
    }

    /// Before its hello a page may only ping; after it, a second hello of either kind ends
    /// the session. Each refusal names the message and closes with 1002.
    #[test]
    fn messages_out_of_order_end_the_session_in_words() {
        let a = arena(8);
        let token_hello = FromBrowser::TokenHello {
            width: 1280,
            height: 720,
            token: zeroize::Zeroizing::new("AQID".to_owned()),
        }
        .encode();
        let early: [(Vec<u8>, &str); 8] = [
            (
                FromBrowser::Input(InputEvent::Key {
                    scancode: 0x1e,
                    extended: false,
                    down: true,
                })
                .encode(),
                "Key before ClientHello or TokenHello",
            ),
            (
                FromBrowser::Input(InputEvent::MouseMove { x: 1, y: 1 }).encode(),
                "MouseMove before",
            ),
            (
                FromBrowser::Input(InputEvent::Unicode {
                    code_unit: 0x41,
                    down: true,
                })
                .encode(),
                "Unicode before",
            ),
            (
                FromBrowser::Input(InputEvent::Wheel {
                    axis: crate::rdp::input::WheelAxis::Vertical,
                    delta: 120,
                    x: 0,
                    y: 0,
                })
                .encode(),
                "Wheel before",
            ),
            (
                FromBrowser::Input(InputEvent::MouseButton {
                    button: crate::rdp::input::MouseButton::Left,
                    down: true,
                    x: 0,
                    y: 0,
                })
                .encode(),
                "MouseButton before",
            ),
            (
                FromBrowser::Resize {
                    width: 800,
                    height: 600,
                }
                .encode(),
                "Resize before",
            ),
            (
                FromBrowser::AudioBuffer { buffer_ms: 10 }.encode(),
                "AudioBuffer before",
            ),
            (
                FromBrowser::FrameDecoded {
                    frame_id: 0,
                    frames_decoded: 0,
                    queue_depth: 0,
                }
                .encode(),
                "FrameDecoded before",
            ),
        ];
        for (msg, words) in early {
            let mut s = Session::start(a.admit().unwrap(), 0, 1024);
            s.handle_binary(&ping(1)).unwrap();
            let e = s.handle_binary(&msg).unwrap_err();
            assert_eq!(e.close_code(), 1002, "{e}");
            assert!(e.to_string().contains(words), "{e}");
            assert_eq!(s.poll_action(), None);
        }
        for (first, second, words) in [
            (
                hello(""),
                token_hello.clone(),
                "TokenHello after the session's hello",
            ),
            (
                token_hello.clone(),
                hello(""),
                "ClientHello after the session's hello",
            ),
            (token_hello.clone(), token_hello.clone(), "TokenHello after"),
        ] {
            let mut s = Session::start(a.admit().unwrap(), 0, 1024);
            s.handle_binary(&first).unwrap();
            let e = s.handle_binary(&second).unwrap_err();
            assert_eq!(e.close_code(), 1002);
            assert!(e.to_string().contains(words), "{e}");
        }
        // A FrameDecoded for a frame never sent, or answered already.
        let mut s = active(&a);
        s.on_rdp_event(&RdpEvent::Graphics(GfxEvent::EndFrame { frame_id: 5 }));
        let decoded = |frame_id| {
            FromBrowser::FrameDecoded {
                frame_id,
                frames_decoded: 1,
                queue_depth: 0,
            }
            .encode()
        };
        let e = s.handle_binary(&decoded(6)).unwrap_err();
        assert!(
            e.to_string()
                .contains("FrameDecoded for frame 6, which is not on its way to the page"),
            "{e}"
        );
        s.handle_binary(&decoded(5)).unwrap();
        assert!(s.handle_binary(&decoded(5)).is_err());
    }

    #[test]
    fn large_graphics_are_written_whole_and_small_ones_pooled() {
        let a = arena(8);
        let mut s = active(&a);
        s.on_rdp_event(&RdpEvent::Graphics(GfxEvent::DeleteSurface { surface: 3 }));
        let o = s.poll_transmit().unwrap();
        assert!(matches!(o, Outbound::Pooled { .. }));
        drop(o);
        s.on_rdp_event(&RdpEvent::Disconnected {
            reason: "x".repeat(1000),
        });
        let o = s.poll_transmit().unwrap();
        assert!(matches!(o, Outbound::Large(_)));
        assert_eq!(s.phase(), Phase::Ended);
    }

    #[test]
    fn unread_output_stops_input_within_the_share() {
        let a = arena(3);
        let mut s = Session::start(a.admit().unwrap(), 0, 1024);
        s.handle_binary(&ping(1)).unwrap();
        s.handle_binary(&ping(2)).unwrap();
        assert!(!s.wants_input());
        assert_eq!(
            s.handle_binary(&ping(3)),
            Err(SessionError::InputWhileFull { session: s.id() })
        );
        assert_eq!(a.stats().pool(Pool::FrameChunk).in_use, 3);
        drop(s.poll_transmit());
        assert!(s.wants_input());
        drop(s);
        let st = a.stats().pool(Pool::FrameChunk);
        assert_eq!((st.in_use, st.reserved), (0, 0));
    }

    #[test]
    fn bad_input_names_the_session_and_closes_with_protocol_error() {
        let a = arena(2);
        let mut s = Session::start(a.admit().unwrap(), 0, 1024);
        let e = s.handle_binary(&[1, 0x42]).unwrap_err();
        assert_eq!(e.close_code(), 1002);
        assert!(e.to_string().contains(&format!("session {}", s.id())));
        assert!(e.to_string().contains("0x42"));
        assert_eq!(s.handle_text().unwrap_err().close_code(), 1003);
    }

    mod tiles {
        #![allow(clippy::panic)]

        use ironrdp_graphics::clearcodec::ClearCodecEncoder;
        use ironrdp_graphics::rdp6::{BitmapStreamEncoder, RgbChannels};

        use super::*;
        use crate::rdp::egfx::Rect;
        use crate::rdp::tiles::codec;

        const SURFACE: u16 = 3;
        /// The test surface, RGBA.
        const W: usize = 400;
        const H: usize = 300;

        fn other(codec_id: u16, rect: Rect, format: SurfaceFormat, data: Vec<u8>) -> RdpEvent {
            RdpEvent::Graphics(GfxEvent::OtherCodec {
                surface: SURFACE,
                codec_id,
                rect: Some(rect),
                codec_context: None,
                format,
                data,
            })
        }

        fn rect(left: u16, top: u16, w: usize, h: usize) -> Rect {
            Rect {
                left,
                top,
                right: left + w as u16,
                bottom: top + h as u16,
            }
        }

        /// A picture with every pixel different, opaque, RGBA.
        fn picture(w: usize, h: usize, seed: u8) -> Vec<u8> {
            (0..w * h)
                .flat_map(|i| {
                    let (x, y) = (i % w, i / w);
                    [
                        (x * 7) as u8 ^ seed,
                        (y * 3) as u8,
                        (x + y) as u8 ^ seed,
                        255,
                    ]
                })
                .collect()
        }

        fn bgra(rgba: &[u8]) -> Vec<u8> {
            rgba.chunks_exact(4)
                .flat_map(|p| [p[2], p[1], p[0], p[3]])
                .collect()
        }

        /// What the page does: every Tile message put on the surface canvas at its corner.
        /// Returns how many tiles came in pool chunks.
        fn apply(s: &mut Session, canvas: &mut [u8]) -> usize {
            let mut pooled = 0;
            while let Some(o) = s.poll_transmit() {
                pooled += usize::from(matches!(o, Outbound::Pooled { .. }));
                match ToBrowser::decode(o.bytes()).unwrap() {
                    ToBrowser::Tile {
                        surface,
                        rect,
                        rgba,
                    } => {
                        assert_eq!(surface, SURFACE);
                        let w = usize::from(rect.right - rect.left) * 4;
                        for (row, src) in rgba.chunks_exact(w).enumerate() {
                            let at =
                                ((usize::from(rect.top) + row) * W + usize::from(rect.left)) * 4;
                            canvas[at..at + w].copy_from_slice(src);
                        }
                    }
                    ToBrowser::TileAlpha { rect, alpha, .. } => {
                        let w = usize::from(rect.right - rect.left);
                        for (row, src) in alpha.chunks_exact(w).enumerate() {
                            for (col, a) in src.iter().enumerate() {
                                let at = ((usize::from(rect.top) + row) * W
                                    + usize::from(rect.left)
                                    + col)
                                    * 4;
                                canvas[at + 3] = *a;
                            }
                        }
                    }
                    other => panic!("expected tiles, got {other:?}"),
                }
            }
            pooled
        }

        /// The canvas region `r` as RGBA rows.
        fn region(canvas: &[u8], r: Rect) -> Vec<u8> {
            (r.top..r.bottom)
                .flat_map(|y| {
                    let at = (usize::from(y) * W + usize::from(r.left)) * 4;
                    canvas[at..at + usize::from(r.right - r.left) * 4].to_vec()
                })
                .collect()
        }

        #[test]
        fn other_codecs_reach_the_page_as_lossless_tiles() {
            let a = arena_of(16 << 10, 16);
            let mut s = active(&a);
            let mut canvas = vec![0u8; W * H * 4];

            // Uncompressed, 150×70 at (10, 20): 6 tiles, all in pool chunks.
            let pic = picture(150, 70, 1);
            let r = rect(10, 20, 150, 70);
            s.on_rdp_event(&other(
                codec::UNCOMPRESSED,
                r,
                SurfaceFormat::XRgb,
                bgra(&pic),
            ));
            assert_eq!(apply(&mut s, &mut canvas), 6);
            assert_eq!(region(&canvas, r), pic);

            // Planar, RLE, 100×65 at (200, 100), encoded by IronRDP.
            let pic = picture(100, 65, 2);
            let rgb: Vec<u8> = pic
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect();
            let mut stream = vec![0; 100 * 65 * 4];
            let n = BitmapStreamEncoder::new(100, 65)
                .encode_bitmap::<RgbChannels>(&rgb, &mut stream, true)
                .unwrap();
            stream.truncate(n);
            let r = rect(200, 100, 100, 65);
            s.on_rdp_event(&other(codec::PLANAR, r, SurfaceFormat::XRgb, stream));
            apply(&mut s, &mut canvas);
            assert_eq!(region(&canvas, r), pic);

            // ClearCodec, 130×40 at (0, 200), then a glyph twice: the second time as a cache
            // hit, which decodes only with the session's ClearCodec state.
            let mut enc = ClearCodecEncoder::new();
            let pic = picture(130, 40, 3);
            let r = rect(0, 200, 130, 40);
            let stream = enc.encode(&bgra(&pic), 130, 40);
            s.on_rdp_event(&other(codec::CLEARCODEC, r, SurfaceFormat::XRgb, stream));
            apply(&mut s, &mut canvas);
            assert_eq!(region(&canvas, r), pic);
            let glyph = picture(8, 16, 4);
            for (x, _) in [(300u16, "miss"), (320, "hit")] {
                let stream = enc.encode(&bgra(&glyph), 8, 16);
                let r = rect(x, 250, 8, 16);
                s.on_rdp_event(&other(codec::CLEARCODEC, r, SurfaceFormat::XRgb, stream));
                apply(&mut s, &mut canvas);
                assert_eq!(region(&canvas, r), glyph);
            }

            // Alpha over the uncompressed picture: only its alpha changes.
            let r = rect(10, 20, 150, 70);
            let before = region(&canvas, r);
            let mut stream = vec![0x4c, 0x41, 1, 0];
            stream.extend_from_slice(&[77, 0xff]);
            stream.extend_from_slice(&(150u16 * 70).to_le_bytes());
            s.on_rdp_event(&other(codec::ALPHA, r, SurfaceFormat::ARgb, stream));
            apply(&mut s, &mut canvas);
            let after = region(&canvas, r);
            for (b, a) in before.chunks_exact(4).zip(after.chunks_exact(4)) {
                assert_eq!((&a[..3], a[3]), (&b[..3], 77));
            }

            assert_eq!(s.phase(), Phase::Active);
            // Every chunk is back once the page has the tiles.
            let st = a.stats().pool(Pool::FrameChunk);
            assert_eq!(st.in_use, 0);
        }

        #[test]
        fn tiles_beyond_the_share_are_written_from_the_heap() {
            let a = arena_of(16 << 10, 4);
            let mut s = active(&a);
            let pic = picture(256, 63, 5);
            let r = rect(0, 0, 256, 63);
            s.on_rdp_event(&other(
                codec::UNCOMPRESSED,
                r,
                SurfaceFormat::XRgb,
                bgra(&pic),
            ));
            assert_eq!(s.queued(), 4);
            let mut canvas = vec![0u8; W * H * 4];
            assert_eq!(apply(&mut s, &mut canvas), 4);
            assert_eq!(region(&canvas, r), pic);
            // Smaller chunks than a tile: all of them from the heap, still whole.
            let a = arena_of(4 << 10, 4);
            let mut s = active(&a);
            s.on_rdp_event(&other(
                codec::UNCOMPRESSED,
                r,
                SurfaceFormat::XRgb,
                bgra(&pic),
            ));
            let mut canvas = vec![0u8; W * H * 4];
            assert_eq!(apply(&mut s, &mut canvas), 0);
            assert_eq!(region(&canvas, r), pic);
        }

        fn ended_with(s: &mut Session) -> String {
            let msgs = drain(s);
            assert_eq!(msgs.len(), 1, "only the Disconnected message");
            assert_eq!(s.phase(), Phase::Ended);
            assert!(!s.wants_rdp());
            match ToBrowser::decode(&msgs[0]).unwrap() {
                ToBrowser::Disconnected { reason } => reason.into_owned(),
                other => panic!("expected Disconnected, got {other:?}"),
            }
        }

        #[test]
        fn an_update_above_the_limit_ends_the_session_in_words() {
            let a = arena_of(16 << 10, 16);
            let mut s = active(&a);
            let r = Rect {
                left: 0,
                top: 0,
                right: 2048,
                bottom: 1024,
            };
            s.on_rdp_event(&other(
                codec::CLEARCODEC,
                r,
                SurfaceFormat::XRgb,
                vec![0, 0],
            ));
            assert_eq!(
                ended_with(&mut s),
                "the ClearCodec update of 2048×1024 pixels for surface 3 is larger than the \
                 1048576 pixels the gateway decodes at once"
            );
        }

        #[test]
        fn a_malformed_update_ends_only_its_session() {
            let a = arena_of(16 << 10, 16);
            let mut s = active(&a);
            let mut other_session = active(&a);
            let r = rect(0, 0, 32, 32);
            // RLE planar whose planes are cut short.
            s.on_rdp_event(&other(
                codec::PLANAR,
                r,
                SurfaceFormat::XRgb,
                vec![0x10, 0x13, 1],
            ));
            let reason = ended_with(&mut s);
            assert!(
                reason.starts_with("the planar update of 32×32 pixels for surface 3 is malformed"),
                "{reason}"
            );
            // The other session decodes the same kind of update as before.
            let pic = picture(32, 32, 6);
            other_session.on_rdp_event(&other(
                codec::UNCOMPRESSED,
                r,
                SurfaceFormat::XRgb,
                bgra(&pic),
            ));
            let mut canvas = vec![0u8; W * H * 4];
            apply(&mut other_session, &mut canvas);
            assert_eq!(region(&canvas, r), pic);
            assert_eq!(other_session.phase(), Phase::Active);
        }

        #[test]
        fn progressive_updates_are_refused_in_words() {
            let a = arena_of(16 << 10, 16);
            let mut s = active(&a);
            s.on_rdp_event(&RdpEvent::Graphics(GfxEvent::OtherCodec {
                surface: 1,
                codec_id: codec::REMOTEFX_PROGRESSIVE,
                rect: None,
                codec_context: Some(2),
                format: SurfaceFormat::XRgb,
                data: vec![0; 16],
            }));
            let reason = ended_with(&mut s);
            assert!(
                reason.starts_with(
                    "surface 1 got an update in a codec the gateway does not decode, RemoteFX \
                     progressive (0x9)"
                ),
                "{reason}"
            );
        }
    }
}

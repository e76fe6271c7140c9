//! The active RDP session, sans-IO: PDUs from the server in, bytes for the server and
//! [`RdpEvent`]s out. It owns `ironrdp_session::ActiveStage` with a 1×1 image — graphics go
//! through the graphics pipeline channel untouched, so no framebuffer of the desktop's size
//! ever exists — and it runs the Deactivation-Reactivation Sequence when the server asks.
//!
//! The caller reads one PDU, calls [`Session::process`], writes what it appended to `out`,
//! and takes every event with [`Session::next_event`] before reading the next PDU. That order
//! is what bounds the event queue (see `egfx`).

use ironrdp_displaycontrol::client::DisplayControlClient;
use std::collections::VecDeque;
use std::sync::Arc;

use ironrdp_connector::connection_activation::{
    ConnectionActivationFactory, ConnectionActivationSequence, ConnectionActivationState,
};
use ironrdp_connector::{ConnectionResult, DesktopSize, Sequence as _};
use ironrdp_core::{MonotonicInstant, WriteBuf};
use ironrdp_egfx::pdu::QueueDepth;
use ironrdp_graphics::image_processing::PixelFormat;
use ironrdp_pdu::rdp::capability_sets::InputFlags;
use ironrdp_pdu::Action;
use ironrdp_session::image::DecodedImage;
use ironrdp_session::{ActiveStage, ActiveStageBuilder, ActiveStageOutput, SessionError};
use tracing::{debug, info, warn};

use super::dvc::BoundedDrdynvc;
use super::egfx::GfxChannel;
use super::input::InputEvent;
use super::large::LargePermit;
use super::{PointerEvent, RdpError, RdpEvent};
use crate::audio::AudioSink;
use ironrdp_dvc::DrdynvcClient;
use ironrdp_svc::{SvcMessage, SvcProcessorMessages};

/// Session-level events a single PDU can add (pointer updates, reactivation); the graphics
/// events are bounded by the channel itself.
const MAX_SESSION_EVENTS: usize = 64;

pub struct Session {
    host: String,
    stage: ActiveStage,
    image: DecodedImage,
    factory: ConnectionActivationFactory,
    /// The I/O channel, whose PDUs are not virtual channel chunks.
    io_channel: u16,
    reactivation: Option<ConnectionActivationSequence>,
    desktop: DesktopSize,
    fastpath_input: bool,
    events: VecDeque<RdpEvent>,
    ended: Option<String>,
    ended_reported: bool,
    /// Where the audio channels put sound; watched to tell the shell when some arrived.
    audio: Option<AudioSink>,
}

impl Session {
    /// The session after a completed connection sequence. Its first event is
    /// [`RdpEvent::Connected`].
    pub fn new(host: &str, result: ConnectionResult, audio: Option<AudioSink>) -> Session {
        let ConnectionResult {
            io_channel_id,
            user_channel_id,
            message_channel_id,
            share_id,
            static_channels,
            desktop_size,
            input_flags,
            enable_server_pointer,
            pointer_software_rendering,
            window_support_level,
            activation_factory,
            compression_type,
            ..
        } = result;
        let mut stage = ActiveStageBuilder {
            static_channels,
            user_channel_id,
            io_channel_id,
            message_channel_id,
            share_id,
            compression_type,
            enable_server_pointer,
            pointer_software_rendering,
        }
        .build();
        stage.set_window_support_level(window_support_level);
        let fastpath_input = has_fastpath_input(input_flags);
        if !fastpath_input {
            warn!(host, "server does not accept fast-path input");
        }
        info!(
            host,
            width = desktop_size.width,
            height = desktop_size.height,
            "rdp session active"
        );
        let mut events = VecDeque::new();
        events.push_back(RdpEvent::Connected {
            width: desktop_size.width,
            height: desktop_size.height,
        });
        Session {
            host: host.to_owned(),
            stage,
            image: DecodedImage::new(PixelFormat::RgbA32, 1, 1),
            factory: activation_factory,
            io_channel: io_channel_id,
            reactivation: None,
            desktop: desktop_size,
            fastpath_input,
            events,
            ended: None,
            ended_reported: false,
            audio,
        }
    }

    pub fn desktop_size(&self) -> DesktopSize {
        self.desktop
    }

    /// True once the session is over: no more PDUs should be read.
    pub fn is_ended(&self) -> bool {
        self.ended.is_some()
    }

    /// True while a reactivation is in progress (input is not accepted then).
    pub fn is_reactivating(&self) -> bool {
        self.reactivation.is_some()
    }

    /// The next event: session events, then graphics events in the order received, and the
    /// disconnection last.
    pub fn next_event(&mut self) -> Option<RdpEvent> {
        self.next(true)
    }

    /// Like [`Session::next_event`], but graphics stay queued: used while the page holds as
    /// many frames as it may, so that sound keeps flowing while the picture waits.
    pub fn next_event_except_graphics(&mut self) -> Option<RdpEvent> {
        self.next(false)
    }

    fn next(&mut self, graphics: bool) -> Option<RdpEvent> {
        if let Some(ev) = self.events.pop_front() {
            return Some(ev);
        }
        if graphics {
            if let Some(ev) = self.with_gfx(GfxChannel::pop_event).flatten() {
                return Some(RdpEvent::Graphics(ev));
            }
        } else if self.has_graphics() {
            return None;
        }
        if !self.ended_reported {
            if let Some(reason) = &self.ended {
                self.ended_reported = true;
                return Some(RdpEvent::Disconnected {
                    reason: reason.clone(),
                });
            }
        }
        None
    }

    /// True when graphics events wait to be taken.
    pub fn has_graphics(&mut self) -> bool {
        self.with_gfx(|g| g.queued().0 > 0).unwrap_or(false)
    }

    /// True when [`Session::next_event`] has something.
    pub fn has_events(&mut self) -> bool {
        !self.events.is_empty()
            || self.with_gfx(|g| g.queued().0 > 0).unwrap_or(false)
            || (self.ended.is_some() && !self.ended_reported)
    }

    /// Runs `f` on the graphics channel, if the server has opened it. (`DynamicChannelMut`
    /// only lends the processor for its own lifetime, hence the closure.)
    fn with_gfx<R>(&mut self, f: impl FnOnce(&mut GfxChannel) -> R) -> Option<R> {
        self.drdynvc()?
            .get_dvc_mut::<GfxChannel>()
            .map(|mut c| f(c.processor_mut()))
    }

    /// The dynamic channels (behind the gateway's size limit).
    fn drdynvc(&mut self) -> Option<&mut DrdynvcClient> {
        self.stage
            .get_svc_processor_mut::<BoundedDrdynvc>()
            .map(BoundedDrdynvc::inner_mut)
    }

    /// Room in the core's large-message budget the server's current message waits for; the
    /// server must not be read until [`Session::give_large_permit`].
    pub fn large_permit_needed(&mut self) -> Option<usize> {
        self.stage
            .get_svc_processor_mut::<BoundedDrdynvc>()
            .and_then(|d| d.permit_needed())
    }

    pub fn give_large_permit(&mut self, permit: LargePermit) {
        if let Some(d) = self.stage.get_svc_processor_mut::<BoundedDrdynvc>() {
            d.give_permit(permit);
        }
    }

    /// True when finished large messages hold room in the core's budget that
    /// [`Session::release_large`] would give back (none of their events still queued here).
    pub fn holds_large(&mut self) -> bool {
        !self.has_graphics()
            && self
                .stage
                .get_svc_processor_mut::<BoundedDrdynvc>()
                .is_some_and(|d| d.holds_permits())
    }

    /// Gives back the budget of large messages once the page has everything before: no
    /// graphics event is queued here and the caller has written all it had.
    pub fn release_large(&mut self) {
        if self.has_graphics() {
            return;
        }
        if let Some(d) = self.stage.get_svc_processor_mut::<BoundedDrdynvc>() {
            if d.holds_permits() {
                d.release_held();
            }
        }
    }

    /// Sends dynamic-channel messages through the `drdynvc` static channel.
    fn encode_dvc(&mut self, svc: Vec<SvcMessage>) -> Result<Vec<u8>, SessionError> {
        self.stage
            .process_svc_processor_messages(SvcProcessorMessages::<BoundedDrdynvc>::new(svc))
    }

    /// Marks the session over because the transport closed, with `reason` in words.
    pub fn transport_closed(&mut self, reason: String) {
        if self.ended.is_none() {
            info!(host = self.host, %reason, "rdp session ended");
            self.ended = Some(reason);
        }
    }

    /// Feeds one PDU from the server. Bytes to send back are appended to `out`.
    pub fn process(
        &mut self,
        action: Action,
        frame: &[u8],
        received_at: Option<MonotonicInstant>,
        out: &mut Vec<u8>,
    ) -> Result<(), RdpError> {
        if self.ended.is_some() {
            return Ok(());
        }
        if self.reactivation.is_some() {
            return self.reactivate_step(frame, received_at, out);
        }
        if action == Action::X224 {
            if let Some(why) = static_channel_violation(frame, self.io_channel) {
                return Err(RdpError::ChannelProtocol {
                    host: self.host.clone(),
                    why,
                });
            }
        }
        let outputs = match self
            .stage
            .process(&mut self.image, action, frame, received_at)
        {
            Ok(o) => o,
            Err(err) => return Err(self.session_error("processing a PDU", &err)),
        };
        for output in outputs {
            self.handle_output(output, out)?;
        }
        let sound = self
            .audio
            .as_ref()
            .and_then(|a| a.with(|p| p.take_news()))
            .unwrap_or(false);
        if sound && self.events.back() != Some(&RdpEvent::Audio) {
            self.events.push_back(RdpEvent::Audio);
        }
        Ok(())
    }

    fn handle_output(
        &mut self,
        output: ActiveStageOutput,
        out: &mut Vec<u8>,
    ) -> Result<(), RdpError> {
        match output {
            ActiveStageOutput::ResponseFrame(bytes) => out.extend_from_slice(&bytes),
            ActiveStageOutput::GraphicsUpdate(_) => {}
            ActiveStageOutput::PointerDefault => {
                self.push(RdpEvent::Pointer(PointerEvent::Default))?
            }
            ActiveStageOutput::PointerHidden => {
                self.push(RdpEvent::Pointer(PointerEvent::Hidden))?
            }
            ActiveStageOutput::PointerPosition { x, y } => {
                self.push(RdpEvent::Pointer(PointerEvent::Position { x, y }))?
            }
            ActiveStageOutput::PointerBitmap(p) => {
                let rgba = Arc::new(p.bitmap_data.clone());
                self.push(RdpEvent::Pointer(PointerEvent::Bitmap {
                    width: p.width,
                    height: p.height,
                    hotspot_x: p.hotspot_x,
                    hotspot_y: p.hotspot_y,
                    rgba,
                }))?
            }
            ActiveStageOutput::Terminate(reason) => {
                use ironrdp_session::GracefulDisconnectReason as Why;
                // The page shows this as it is: say who ended it in the user's words.
                let reason = match reason {
                    Why::ServerInitiated => "the remote desktop closed the connection".to_owned(),
                    Why::UserInitiated => "the session was logged off".to_owned(),
                    Why::Other(other) => other,
                };
                info!(host = self.host, %reason, "server ended the rdp session");
                self.ended = Some(reason);
            }
            ActiveStageOutput::DeactivateAll => {
                info!(
                    host = self.host,
                    "server deactivated the session; reactivating"
                );
                self.reactivation = Some(self.factory.create());
            }
            ActiveStageOutput::ServerRedirection(_) => {
                return Err(RdpError::Redirected {
                    host: self.host.clone(),
                })
            }
            ActiveStageOutput::LogonErrors(info) => {
                warn!(host = self.host, ?info, "server reported a logon error");
            }
            other => debug!(host = self.host, output = ?other, "ignored session output"),
        }
        Ok(())
    }

    fn push(&mut self, ev: RdpEvent) -> Result<(), RdpError> {
        if self.events.len() >= MAX_SESSION_EVENTS {
            // Pointer updates are superseded by later ones; dropping the oldest is harmless.
            self.events.pop_front();
        }
        self.events.push_back(ev);
        Ok(())
    }

    /// Drives the reactivation sequence with one PDU; PDUs it does not expect (graphics that
    /// were in flight) are dropped, as the connector does during the first activation.
    fn reactivate_step(
        &mut self,
        frame: &[u8],
        received_at: Option<MonotonicInstant>,
        out: &mut Vec<u8>,
    ) -> Result<(), RdpError> {
        let host = self.host.clone();
        let protocol = |why: String| RdpError::Protocol {
            host: host.clone(),
            phase: "reactivating the session",
            why,
        };
        let Some(seq) = self.reactivation.as_mut() else {
            return Ok(());
        };
        let mut buf = WriteBuf::new();
        if let Some(hint) = seq.next_pdu_hint() {
            match hint.find_size(frame) {
                Ok(Some((true, _))) => {
                    seq.step(frame, received_at, &mut buf)
                        .map_err(|e| protocol(e.report().to_string()))?;
                    out.extend_from_slice(buf.filled());
                }
                Ok(_) => {
                    debug!(
                        host = self.host,
                        "dropping a PDU received during reactivation"
                    );
                    return Ok(());
                }
                Err(e) => return Err(protocol(e.to_string())),
            }
        }
        // Steps that need no input (the client's side of the finalization) run now.
        while !seq.state().is_terminal() && seq.next_pdu_hint().is_none() {
            buf.clear();
            seq.step_no_input(&mut buf)
                .map_err(|e| protocol(e.report().to_string()))?;
            out.extend_from_slice(buf.filled());
        }
        match seq.connection_activation_state() {
            ConnectionActivationState::Finalized {
                desktop_size,
                share_id,
                input_flags,
                static_channel_chunk_size,
                enable_server_pointer,
                pointer_software_rendering,
                window_support_level,
                ..
            } => {
                let io = seq.io_channel_id();
                self.io_channel = io;
                let user = seq.user_channel_id();
                self.reactivation = None;
                if !self.stage.reactivate(
                    io,
                    user,
                    share_id,
                    enable_server_pointer,
                    pointer_software_rendering,
                    static_channel_chunk_size,
                ) {
                    return Err(protocol(format!(
                        "the server's virtual channel chunk size {static_channel_chunk_size} is invalid"
                    )));
                }
                self.stage.set_window_support_level(window_support_level);
                self.fastpath_input = has_fastpath_input(input_flags);
                self.desktop = desktop_size;
                info!(
                    host = self.host,
                    width = desktop_size.width,
                    height = desktop_size.height,
                    "rdp session reactivated"
                );
                self.push(RdpEvent::Reactivated {
                    width: desktop_size.width,
                    height: desktop_size.height,
                })?;
            }
            ConnectionActivationState::Redirected { .. } => {
                return Err(RdpError::Redirected {
                    host: self.host.clone(),
                })
            }
            _ => {}
        }
        Ok(())
    }

    /// Encodes input events; the bytes to send are appended to `out`.
    pub fn input(&mut self, events: &[InputEvent], out: &mut Vec<u8>) -> Result<(), RdpError> {
        self.check_live()?;
        if self.reactivation.is_some() {
            debug!(host = self.host, "dropping input during reactivation");
            return Ok(());
        }
        if !self.fastpath_input {
            return Err(RdpError::NoFastPathInput {
                host: self.host.clone(),
            });
        }
        let fast = super::input::encode(events);
        if fast.is_empty() {
            return Ok(());
        }
        let outputs = self
            .stage
            .process_fastpath_input(&mut self.image, &fast)
            .map_err(|e| self.session_error("encoding input", &e))?;
        for output in outputs {
            if let ActiveStageOutput::ResponseFrame(bytes) = output {
                out.extend_from_slice(&bytes);
            }
        }
        Ok(())
    }

    /// Encodes a graphics frame acknowledgement; the bytes are appended to `out`.
    pub fn ack_frame(
        &mut self,
        frame_id: u32,
        queue_depth: QueueDepth,
        out: &mut Vec<u8>,
    ) -> Result<(), RdpError> {
        self.check_live()?;
        let host = self.host.clone();
        let (channel_id, message) = {
            let mut dvc = self
                .drdynvc()
                .and_then(|d| d.get_dvc_mut::<GfxChannel>())
                .ok_or_else(|| RdpError::GraphicsNotOpen { host: host.clone() })?;
            let id = dvc.channel_id();
            (
                id,
                dvc.processor_mut().frame_acknowledge(frame_id, queue_depth),
            )
        };
        let svc = ironrdp_dvc::encode_dvc_messages(
            channel_id,
            vec![message],
            ironrdp_svc::ChannelFlags::empty(),
        )
        .map_err(|e| RdpError::Protocol {
            host: host.clone(),
            phase: "acknowledging a frame",
            why: e.to_string(),
        })?;
        let bytes = self
            .encode_dvc(svc)
            .map_err(|e| self.session_error("acknowledging a frame", &e))?;
        out.extend_from_slice(&bytes);
        Ok(())
    }

    /// Asks the server for a new desktop size through the display control channel. `Ok(false)`
    /// when the server offers no such channel (the page then scales the picture).
    pub fn resize(&mut self, width: u16, height: u16, out: &mut Vec<u8>) -> Result<bool, RdpError> {
        self.check_live()?;
        let svc = {
            let Some(dvc) = self
                .drdynvc()
                .and_then(|d| d.get_dvc_mut::<DisplayControlClient>())
            else {
                return Ok(false);
            };
            if !dvc.processor().ready() {
                return Ok(false);
            }
            // MS-RDPEDISP: widths must be even.
            dvc.processor()
                .encode_single_primary_monitor(
                    dvc.channel_id(),
                    u32::from(width & !1),
                    u32::from(height),
                    None,
                    None,
                )
                .map_err(|e| RdpError::Protocol {
                    host: self.host.clone(),
                    phase: "resizing the desktop",
                    why: e.to_string(),
                })?
        };
        let bytes = self
            .encode_dvc(svc)
            .map_err(|e| self.session_error("resizing the desktop", &e))?;
        out.extend_from_slice(&bytes);
        Ok(true)
    }

    /// Asks the server to stop sending the desktop (no page is watching), or with `Some`
    /// size to send it again; `refresh` also asks for the whole desktop to be repainted, so a
    /// new page gets a complete picture (a key frame) to start from.
    pub fn suppress_output(
        &mut self,
        resume: Option<(u16, u16)>,
        out: &mut Vec<u8>,
    ) -> Result<(), RdpError> {
        use ironrdp_pdu::geometry::InclusiveRectangle;
        use ironrdp_pdu::rdp::headers::ShareDataPdu;
        use ironrdp_pdu::rdp::refresh_rectangle::RefreshRectanglePdu;
        use ironrdp_pdu::rdp::suppress_output::SuppressOutputPdu;
        self.check_live()?;
        let whole = resume.map(|(w, h)| InclusiveRectangle {
            left: 0,
            top: 0,
            right: w.saturating_sub(1),
            bottom: h.saturating_sub(1),
        });
        let mut pdus = vec![ShareDataPdu::SuppressOutput(SuppressOutputPdu {
            desktop_rect: whole.clone(),
        })];
        if let Some(rect) = whole {
            pdus.push(ShareDataPdu::RefreshRectangle(RefreshRectanglePdu {
                areas_to_refresh: vec![rect],
            }));
        }
        for pdu in pdus {
            let mut buf = WriteBuf::new();
            self.stage
                .encode_static(&mut buf, pdu)
                .map_err(|e| self.session_error("asking for the desktop", &e))?;
            out.extend_from_slice(buf.filled());
        }
        Ok(())
    }

    /// Asks the server to end the session; it answers by disconnecting.
    pub fn shutdown(&mut self, out: &mut Vec<u8>) -> Result<(), RdpError> {
        self.check_live()?;
        let outputs = self
            .stage
            .graceful_shutdown()
            .map_err(|e| self.session_error("shutting down", &e))?;
        for output in outputs {
            if let ActiveStageOutput::ResponseFrame(bytes) = output {
                out.extend_from_slice(&bytes);
            }
        }
        Ok(())
    }

    fn check_live(&self) -> Result<(), RdpError> {
        if self.ended.is_some() {
            Err(RdpError::Ended {
                host: self.host.clone(),
            })
        } else {
            Ok(())
        }
    }

    /// A session error, preferring the graphics channel's own account of it.
    fn session_error(&mut self, doing: &'static str, err: &SessionError) -> RdpError {
        let oversize = self
            .stage
            .get_svc_processor_mut::<BoundedDrdynvc>()
            .and_then(BoundedDrdynvc::take_refusal);
        if let Some(o) = oversize {
            return RdpError::OversizeMessage {
                host: self.host.clone(),
                channel: o.channel,
                len: o.len,
                limit: o.limit,
            };
        }
        let violation = self
            .stage
            .get_svc_processor_mut::<BoundedDrdynvc>()
            .and_then(BoundedDrdynvc::take_violation);
        if let Some(why) = violation {
            return RdpError::ChannelProtocol {
                host: self.host.clone(),
                why,
            };
        }
        if let Some(gfx_err) = self.with_gfx(GfxChannel::take_error).flatten() {
            return RdpError::Graphics {
                host: self.host.clone(),
                err: gfx_err,
            };
        }
        RdpError::Protocol {
            host: self.host.clone(),
            phase: doing,
            why: err.report().to_string(),
        }
    }
}

/// Largest message a server may announce on a static virtual channel (the DRDYNVC and sound
/// channels). IronRDP reassembles a chunked static channel message in a buffer that grows to
/// the length its first chunk announces, a 32-bit field: without this limit a server could
/// make a session hold up to 4 GiB. DRDYNVC PDUs are at most 1,600 bytes (MS-RDPEDYC), sound
/// PDUs a wave of a few tens of milliseconds.
pub const MAX_STATIC_MESSAGE: u32 = 256 << 10;

/// Why the static channel chunk in `frame` (an X.224 PDU) must be refused: its first chunk
/// announces more than [`MAX_STATIC_MESSAGE`]. Anything that is not a channel chunk is left to
/// IronRDP.
fn static_channel_violation(frame: &[u8], io_channel: u16) -> Option<String> {
    use ironrdp_pdu::mcs::SendDataIndication;
    use ironrdp_pdu::x224::X224;
    /// `CHANNEL_FLAG_FIRST` (MS-RDPBCGR 2.2.6.1.1).
    const FLAG_FIRST: u32 = 0x1;
    let X224(data) = ironrdp_core::decode::<X224<SendDataIndication<'_>>>(frame).ok()?;
    if data.channel_id == io_channel {
        return None;
    }
    let header = data.user_data.get(..8)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let flags = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (flags & FLAG_FIRST != 0 && len > MAX_STATIC_MESSAGE).then(|| {
        format!(
            "static channel {} announced a {len}-byte message, above the limit of \
             {MAX_STATIC_MESSAGE} bytes",
            data.channel_id
        )
    })
}

fn has_fastpath_input(flags: InputFlags) -> bool {
    flags.intersects(InputFlags::FASTPATH_INPUT | InputFlags::FASTPATH_INPUT_2)
}

/// Channel ids of a [`connected_for_graphics`] session.
#[doc(hidden)]
pub mod graphics_only {
    pub const USER_CHANNEL: u16 = 1001;
    pub const IO_CHANNEL: u16 = 1003;
    pub const DRDYNVC_CHANNEL: u16 = 1004;
}

/// A session as the connector leaves it after connecting to `test-host`, with only the
/// graphics channel registered: what the unit tests and the fuzz targets feed server bytes.
#[doc(hidden)]
pub fn connected_for_graphics(
    max_message: usize,
    large: Option<super::large::LargeBudget>,
) -> Session {
    use graphics_only::{DRDYNVC_CHANNEL, IO_CHANNEL, USER_CHANNEL};
    let target = super::target::Target {
        host: "test-host".into(),
        port: 3389,
        username: "bob".into(),
        password: "pw".into(),
        domain: None,
        tls: super::target::TlsPolicy::Insecure,
    };
    let size = DesktopSize {
        width: 1280,
        height: 720,
    };
    let mut static_channels = ironrdp_svc::StaticChannelSet::new();
    let d = BoundedDrdynvc::new(
        DrdynvcClient::new().with_dynamic_channel(GfxChannel::new()),
        max_message,
    );
    static_channels.insert(match large {
        Some(budget) => d.with_budget(budget),
        None => d,
    });
    static_channels.attach_channel_id(std::any::TypeId::of::<BoundedDrdynvc>(), DRDYNVC_CHANNEL);
    let result = ConnectionResult {
        io_channel_id: IO_CHANNEL,
        user_channel_id: USER_CHANNEL,
        message_channel_id: None,
        share_id: 1,
        static_channels,
        desktop_size: size,
        input_flags: InputFlags::FASTPATH_INPUT,
        enable_server_pointer: true,
        pointer_software_rendering: false,
        refresh_rect_support: false,
        suppress_output_support: false,
        window_support_level: None,
        monitor_layout: None,
        activation_factory: ConnectionActivationFactory::new(
            super::connection::config(&target, size),
            IO_CHANNEL,
            USER_CHANNEL,
        ),
        compression_type: None,
    };
    Session::new("test-host", result, None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::borrow::Cow;

    use ironrdp_core::encode_vec;
    use ironrdp_dvc::pdu::{CreateRequestPdu, DataPdu, DrdynvcDataPdu, DrdynvcServerPdu};
    use ironrdp_egfx::pdu::{
        CapabilitiesConfirmPdu, CapabilitiesV81Flags, CapabilitySet, EndFramePdu,
        FrameAcknowledgePdu, GfxPdu, StartFramePdu, Timestamp,
    };
    use ironrdp_graphics::zgfx;
    use ironrdp_pdu::mcs::{DisconnectProviderUltimatum, DisconnectReason, SendDataIndication};
    use ironrdp_pdu::rdp::headers::{ServerDeactivateAll, ShareControlHeader, ShareControlPdu};
    use ironrdp_pdu::x224::X224;
    use ironrdp_svc::{server_encode_svc_messages, SvcMessage};

    use super::*;
    use crate::rdp::egfx::GfxEvent;
    use crate::rdp::input::InputEvent;

    use super::graphics_only::{DRDYNVC_CHANNEL, IO_CHANNEL, USER_CHANNEL};
    const GFX_DVC: u32 = 5;

    fn session() -> Session {
        session_with(None)
    }

    fn session_with(large: Option<crate::rdp::large::LargeBudget>) -> Session {
        connected_for_graphics(1 << 20, large)
    }

    fn dvc(pdu: DrdynvcServerPdu) -> Vec<u8> {
        server_encode_svc_messages(vec![SvcMessage::from(pdu)], DRDYNVC_CHANNEL, USER_CHANNEL)
            .unwrap()
    }

    fn gfx(pdus: &[GfxPdu]) -> Vec<u8> {
        let mut raw = Vec::new();
        for p in pdus {
            raw.extend(encode_vec(p).unwrap());
        }
        dvc(DrdynvcServerPdu::Data(DrdynvcDataPdu::Data(DataPdu::new(
            GFX_DVC,
            zgfx::wrap_uncompressed(&raw),
        ))))
    }

    fn io_channel(pdu: ShareControlPdu) -> Vec<u8> {
        let header = encode_vec(&ShareControlHeader {
            share_control_pdu: pdu,
            pdu_source: USER_CHANNEL,
            share_id: 1,
        })
        .unwrap();
        encode_vec(&X224(SendDataIndication {
            initiator_id: USER_CHANNEL,
            channel_id: IO_CHANNEL,
            user_data: Cow::Owned(header),
        }))
        .unwrap()
    }

    /// A session whose graphics channel the server has opened.
    fn open_session() -> Session {
        open_session_with(None)
    }

    fn open_session_with(large: Option<crate::rdp::large::LargeBudget>) -> Session {
        let mut s = session_with(large);
        assert_eq!(
            s.next_event(),
            Some(RdpEvent::Connected {
                width: 1280,
                height: 720
            })
        );
        let mut out = Vec::new();
        let create = dvc(DrdynvcServerPdu::Create(CreateRequestPdu::new(
            GFX_DVC,
            crate::rdp::egfx::CHANNEL_NAME.to_owned(),
        )));
        s.process(Action::X224, &create, None, &mut out).unwrap();
        assert!(
            !out.is_empty(),
            "create response and capabilities advertise"
        );
        s
    }

    /// A static channel chunk announcing a message of gigabytes ends the session before
    /// IronRDP starts a reassembly buffer for it; one within the limit is IronRDP's to handle.
    #[test]
    fn a_static_channel_message_above_the_limit_ends_the_session() {
        let chunk = |len: u32| {
            let mut user_data = Vec::new();
            user_data.extend(len.to_le_bytes());
            user_data.extend(1u32.to_le_bytes()); // CHANNEL_FLAG_FIRST
            user_data.extend([0u8; 64]);
            encode_vec(&X224(SendDataIndication {
                initiator_id: USER_CHANNEL,
                channel_id: DRDYNVC_CHANNEL,
                user_data: Cow::Owned(user_data),
            }))
            .unwrap()
        };
        let mut s = open_session();
        let mut out = Vec::new();
        let err = s
            .process(Action::X224, &chunk(u32::MAX), None, &mut out)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "test-host broke the virtual channel protocol: static channel {DRDYNVC_CHANNEL} \
                 announced a 4294967295-byte message, above the limit of 262144 bytes"
            )
        );
        assert_eq!(
            static_channel_violation(&chunk(MAX_STATIC_MESSAGE), IO_CHANNEL),
            None
        );
        // The I/O channel carries share PDUs, not chunks.
        let io = encode_vec(&X224(SendDataIndication {
            initiator_id: USER_CHANNEL,
            channel_id: IO_CHANNEL,
            user_data: Cow::Owned(vec![0xff; 16]),
        }))
        .unwrap();
        assert_eq!(static_channel_violation(&io, IO_CHANNEL), None);
    }

    /// Fragments that go on past the length their DataFirst announced end the session with
    /// the rule that was broken, not IronRDP's error chain.
    #[test]
    fn fragments_past_the_announced_length_end_the_session_in_words() {
        use ironrdp_dvc::pdu::DataFirstPdu;
        let mut s = open_session();
        let mut out = Vec::new();
        let first = dvc(DrdynvcServerPdu::Data(DrdynvcDataPdu::DataFirst(
            DataFirstPdu::new(GFX_DVC, 3000, vec![0; 1500]),
        )));
        s.process(Action::X224, &first, None, &mut out).unwrap();
        let more = dvc(DrdynvcServerPdu::Data(DrdynvcDataPdu::Data(DataPdu::new(
            GFX_DVC,
            vec![0; 1501],
        ))));
        let err = s.process(Action::X224, &more, None, &mut out).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "test-host broke the virtual channel protocol: dynamic channel {GFX_DVC}: \
                 fragments go on past the 3000 bytes announced"
            )
        );
    }

    /// A server announcing a graphics message larger than the limit ends its session in words,
    /// before any of it is kept; one within the limit goes through.
    #[test]
    fn a_dynamic_channel_message_above_the_limit_ends_the_session() {
        use ironrdp_dvc::pdu::DataFirstPdu;
        let mut s = open_session();
        let mut out = Vec::new();
        let fine = dvc(DrdynvcServerPdu::Data(DrdynvcDataPdu::DataFirst(
            DataFirstPdu::new(GFX_DVC, 1 << 20, vec![0; 64]),
        )));
        s.process(Action::X224, &fine, None, &mut out).unwrap();
        let huge = dvc(DrdynvcServerPdu::Data(DrdynvcDataPdu::DataFirst(
            DataFirstPdu::new(GFX_DVC, u32::MAX, vec![0; 64]),
        )));
        let err = s.process(Action::X224, &huge, None, &mut out).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "test-host sent a 4294967295-byte message on dynamic channel {GFX_DVC}, above the limit of 1048576 bytes (--max-dvc-message)"
            )
        );
    }

    /// Compressed fragments (RDP 8.0 Lite) are decompressed per channel, reassembled like the
    /// others and within the same limit; a compressed whole message goes through too.
    #[test]
    fn compressed_fragments_are_reassembled() {
        use ironrdp_dvc::pdu::{DataCompressedPdu, DataFirstCompressedPdu};
        let mut s = open_session();
        let mut out = Vec::new();
        let frame = |frame_id: u32| {
            let mut raw = encode_vec(&GfxPdu::StartFrame(StartFramePdu {
                timestamp: Timestamp {
                    milliseconds: 0,
                    seconds: 0,
                    minutes: 0,
                    hours: 0,
                },
                frame_id,
            }))
            .unwrap();
            raw.extend(encode_vec(&GfxPdu::EndFrame(EndFramePdu { frame_id })).unwrap());
            raw
        };
        let mut raw = Vec::new();
        for id in 0..60 {
            raw.extend(frame(id));
        }
        // The graphics message (ZGFX-wrapped), then each part RDP 8.0 Lite-wrapped; an
        // uncompressed segment is valid compressed data for either.
        let message = zgfx::wrap_uncompressed(&raw);
        let parts: Vec<&[u8]> = message.chunks(700).collect();
        let total = u32::try_from(message.len()).unwrap();
        let first = dvc(DrdynvcServerPdu::Data(DrdynvcDataPdu::DataFirstCompressed(
            DataFirstCompressedPdu::new(GFX_DVC, total, zgfx::wrap_uncompressed(parts[0])),
        )));
        s.process(Action::X224, &first, None, &mut out).unwrap();
        for part in &parts[1..] {
            let next = dvc(DrdynvcServerPdu::Data(DrdynvcDataPdu::DataCompressed(
                DataCompressedPdu::new(GFX_DVC, zgfx::wrap_uncompressed(part)),
            )));
            s.process(Action::X224, &next, None, &mut out).unwrap();
        }
        let events: Vec<_> = std::iter::from_fn(|| s.next_event()).collect();
        assert_eq!(events.len(), 120);
        // A whole message in one compressed Data PDU.
        let one = dvc(DrdynvcServerPdu::Data(DrdynvcDataPdu::DataCompressed(
            DataCompressedPdu::new(
                GFX_DVC,
                zgfx::wrap_uncompressed(&zgfx::wrap_uncompressed(&frame(99))),
            ),
        )));
        s.process(Action::X224, &one, None, &mut out).unwrap();
        assert_eq!(
            std::iter::from_fn(|| s.next_event()).last(),
            Some(RdpEvent::Graphics(GfxEvent::EndFrame { frame_id: 99 }))
        );
    }

    /// Two sessions of one core share the large-message budget: while one holds it, the
    /// other's large message waits (its server is not read) until the first is on the page.
    #[test]
    fn large_messages_share_the_cores_budget() {
        use crate::rdp::large::{LargeBudget, COPIES};
        use ironrdp_dvc::pdu::DataFirstPdu;
        let budget = LargeBudget::new(COPIES * 100_000);
        let mut a = open_session_with(Some(budget.clone()));
        let mut b = open_session_with(Some(budget.clone()));
        let mut out = Vec::new();
        // One solid fill of 12,500 rectangles: a 100 KB graphics message.
        let rect = ironrdp_pdu::geometry::ExclusiveRectangle {
            left: 0,
            top: 0,
            right: 8,
            bottom: 8,
        };
        let fill = GfxPdu::SolidFill(ironrdp_egfx::pdu::SolidFillPdu {
            surface_id: 1,
            fill_pixel: ironrdp_egfx::pdu::Color {
                b: 0,
                g: 0,
                r: 0,
                xa: 255,
            },
            rectangles: vec![rect; 12_500],
        });
        let message = zgfx::wrap_uncompressed(&encode_vec(&fill).unwrap());
        let total = message.len();
        let first = |m: &[u8]| {
            dvc(DrdynvcServerPdu::Data(DrdynvcDataPdu::DataFirst(
                DataFirstPdu::new(GFX_DVC, u32::try_from(m.len()).unwrap(), m[..1000].to_vec()),
            )))
        };
        // Servers keep each DVC PDU within one 1600-byte channel chunk.
        let rest = |s: &mut Session, m: &[u8], out: &mut Vec<u8>| {
            for part in m[1000..].chunks(1000) {
                let pdu = dvc(DrdynvcServerPdu::Data(DrdynvcDataPdu::Data(DataPdu::new(
                    GFX_DVC,
                    part.to_vec(),
                ))));
                s.process(Action::X224, &pdu, None, out).unwrap();
            }
        };
        a.process(Action::X224, &first(&message), None, &mut out)
            .unwrap();
        assert_eq!(a.large_permit_needed(), None);
        assert_eq!(budget.used(), COPIES * total);
        b.process(Action::X224, &first(&message), None, &mut out)
            .unwrap();
        assert_eq!(b.large_permit_needed(), Some(COPIES * total), "b must wait");
        // a's message completes; only its access unit's share stays until the page has it.
        rest(&mut a, &message, &mut out);
        assert_eq!(budget.used(), total);
        assert!(budget.try_take(COPIES * total).is_none());
        while a.next_event().is_some() {}
        a.release_large();
        assert_eq!(budget.used(), 0);
        let permit = budget.try_take(COPIES * total).unwrap();
        b.give_large_permit(permit);
        assert_eq!(b.large_permit_needed(), None);
        rest(&mut b, &message, &mut out);
        while b.next_event().is_some() {}
        b.release_large();
        assert_eq!(budget.used(), 0);
    }

    /// A graphics message in fragments comes out as the same events; fragments beyond the
    /// announced length end the session.
    #[test]
    fn fragmented_graphics_messages_are_reassembled_and_bounded() {
        use ironrdp_dvc::pdu::DataFirstPdu;
        let mut s = open_session();
        let mut out = Vec::new();
        let mut raw = Vec::new();
        for frame_id in 0..200u32 {
            raw.extend(
                encode_vec(&GfxPdu::StartFrame(StartFramePdu {
                    timestamp: Timestamp {
                        milliseconds: 0,
                        seconds: 0,
                        minutes: 0,
                        hours: 0,
                    },
                    frame_id,
                }))
                .unwrap(),
            );
            raw.extend(encode_vec(&GfxPdu::EndFrame(EndFramePdu { frame_id })).unwrap());
        }
        let message = zgfx::wrap_uncompressed(&raw);
        let parts: Vec<&[u8]> = message.chunks(1000).collect();
        assert!(parts.len() > 3);
        let total = u32::try_from(message.len()).unwrap();
        let first = dvc(DrdynvcServerPdu::Data(DrdynvcDataPdu::DataFirst(
            DataFirstPdu::new(GFX_DVC, total, parts[0].to_vec()),
        )));
        s.process(Action::X224, &first, None, &mut out).unwrap();
        for part in &parts[1..] {
            assert!(!s.has_events(), "nothing before the last fragment");
            let next = dvc(DrdynvcServerPdu::Data(DrdynvcDataPdu::Data(DataPdu::new(
                GFX_DVC,
                part.to_vec(),
            ))));
            s.process(Action::X224, &next, None, &mut out).unwrap();
        }
        let events: Vec<_> = std::iter::from_fn(|| s.next_event()).collect();
        assert_eq!(events.len(), 400);
        assert_eq!(
            events[399],
            RdpEvent::Graphics(GfxEvent::EndFrame { frame_id: 199 })
        );

        let first = dvc(DrdynvcServerPdu::Data(DrdynvcDataPdu::DataFirst(
            DataFirstPdu::new(GFX_DVC, 1500, vec![0; 1000]),
        )));
        s.process(Action::X224, &first, None, &mut out).unwrap();
        let too_long = dvc(DrdynvcServerPdu::Data(DrdynvcDataPdu::Data(DataPdu::new(
            GFX_DVC,
            vec![0; 1000],
        ))));
        let err = s
            .process(Action::X224, &too_long, None, &mut out)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("fragments go on past the 1500 bytes announced"),
            "{err}"
        );
    }

    #[test]
    fn graphics_commands_become_events_and_frames_are_acknowledged() {
        let mut s = open_session();
        let mut out = Vec::new();
        let frame = gfx(&[
            GfxPdu::CapabilitiesConfirm(CapabilitiesConfirmPdu::from_typed(&CapabilitySet::V8_1 {
                flags: CapabilitiesV81Flags::AVC420_ENABLED,
            })),
            GfxPdu::StartFrame(StartFramePdu {
                timestamp: Timestamp {
                    milliseconds: 0,
                    seconds: 0,
                    minutes: 0,
                    hours: 0,
                },
                frame_id: 9,
            }),
            GfxPdu::EndFrame(EndFramePdu { frame_id: 9 }),
        ]);
        s.process(Action::X224, &frame, None, &mut out).unwrap();
        assert!(s.has_events());
        let events: Vec<_> = std::iter::from_fn(|| s.next_event()).collect();
        assert!(matches!(
            events[0],
            RdpEvent::Graphics(GfxEvent::CapsConfirmed { .. })
        ));
        assert_eq!(
            events[2],
            RdpEvent::Graphics(GfxEvent::EndFrame { frame_id: 9 })
        );
        assert!(!s.has_events());

        out.clear();
        s.ack_frame(9, QueueDepth::AvailableBytes(4096), &mut out)
            .unwrap();
        let ack = encode_vec(&GfxPdu::FrameAcknowledge(FrameAcknowledgePdu {
            queue_depth: QueueDepth::AvailableBytes(4096),
            frame_id: 9,
            total_frames_decoded: 1,
        }))
        .unwrap();
        assert!(out.windows(ack.len()).any(|w| w == ack.as_slice()));

        out.clear();
        s.input(&[InputEvent::MouseMove { x: 5, y: 6 }], &mut out)
            .unwrap();
        assert!(!out.is_empty());
    }

    #[test]
    fn malformed_graphics_end_with_the_channel_error() {
        let mut s = open_session();
        let bad = dvc(DrdynvcServerPdu::Data(DrdynvcDataPdu::Data(DataPdu::new(
            GFX_DVC,
            zgfx::wrap_uncompressed(&[0x0c, 0, 0, 0, 0xff, 0, 0, 0]),
        ))));
        let err = s
            .process(Action::X224, &bad, None, &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err, RdpError::Graphics { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("test-host: graphics channel: malformed"),
            "{err}"
        );
    }

    #[test]
    fn graphics_before_the_channel_opens_cannot_be_acknowledged() {
        let mut s = session();
        let err = s
            .ack_frame(1, QueueDepth::Unavailable, &mut Vec::new())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the graphics channel to test-host is not open yet"
        );
    }

    #[test]
    fn deactivate_all_starts_reactivation() {
        let mut s = open_session();
        let mut out = Vec::new();
        s.process(
            Action::X224,
            &io_channel(ShareControlPdu::ServerDeactivateAll(ServerDeactivateAll)),
            None,
            &mut out,
        )
        .unwrap();
        assert!(s.is_reactivating());
        // Input waits for the new activation; stray graphics are dropped.
        out.clear();
        s.input(&[InputEvent::MouseMove { x: 1, y: 1 }], &mut out)
            .unwrap();
        assert!(out.is_empty());
        s.process(Action::FastPath, &[0, 3, 0], None, &mut out)
            .unwrap();
        assert!(s.is_reactivating());
    }

    #[test]
    fn server_disconnect_is_reported_in_words() {
        let mut s = open_session();
        let ultimatum = encode_vec(&X224(DisconnectProviderUltimatum {
            reason: DisconnectReason::ProviderInitiated,
        }))
        .unwrap();
        s.process(Action::X224, &ultimatum, None, &mut Vec::new())
            .unwrap();
        assert!(s.is_ended());
        assert_eq!(
            s.next_event(),
            Some(RdpEvent::Disconnected {
                reason: "the remote desktop closed the connection".into()
            })
        );
        assert_eq!(s.next_event(), None);
        let err = s
            .input(&[InputEvent::MouseMove { x: 1, y: 1 }], &mut Vec::new())
            .unwrap_err();
        assert_eq!(err.to_string(), "the RDP session with test-host has ended");
    }

    #[test]
    fn a_closed_transport_ends_the_session() {
        let mut s = session();
        s.next_event();
        s.transport_closed("the server closed the connection".into());
        assert_eq!(
            s.next_event(),
            Some(RdpEvent::Disconnected {
                reason: "the server closed the connection".into()
            })
        );
    }
}

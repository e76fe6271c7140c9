//! The graphics pipeline channel (MS-RDPEGFX) for wire-through: this processor never decodes a
//! picture. It advertises AVC420 only, undoes ZGFX, decodes each `RDPGFX` command and queues it
//! as an owned [`GfxEvent`] for the layer above, which forwards H.264 access units to the
//! browser untouched and acknowledges frames when the browser has decoded them.
//!
//! Why not `ironrdp_egfx::client::GraphicsPipelineClient`: it decodes and composites into RGBA
//! surfaces (width × height × 4 bytes each) and drops the AVC capability sets when it has no
//! decoder of its own — the opposite of what a gateway needs.
//!
//! # Bound
//! Events queue in the channel until [`GfxChannel::pop_event`] takes them. The runtime drains
//! the queue completely before it reads the next PDU from the server, so the queue only ever
//! holds the commands of one channel message; TCP holds the server back meanwhile. The queue
//! is nevertheless capped at [`MAX_QUEUED_EVENTS`] events and [`MAX_QUEUED_BYTES`] bytes of
//! payload: a message that would pass either cap is refused with
//! [`GfxError::QueueFull`] and ends the session rather than growing memory.

use std::collections::VecDeque;

use ironrdp_core::{Decode as _, ReadCursor};
use ironrdp_dvc::{DvcClientProcessor, DvcMessage, DvcProcessor};
use ironrdp_egfx::pdu::{
    Avc420BitmapStream, CapabilitiesAdvertisePdu, CapabilitiesV81Flags, CapabilitiesV8Flags,
    CapabilitySet, CapabilityVersion, Codec1Type, FrameAcknowledgePdu, GfxPdu, PixelFormat,
    QueueDepth, Timestamp,
};
use ironrdp_graphics::zgfx;
use ironrdp_pdu::geometry::ExclusiveRectangle;
use ironrdp_pdu::PduResult;
use tracing::{debug, trace, warn};

pub use ironrdp_egfx::CHANNEL_NAME;

/// Most events one channel message may leave queued.
pub const MAX_QUEUED_EVENTS: usize = 1024;
/// Most payload bytes (codec data, rectangles) one channel message may leave queued: room for
/// an H.264 key frame of a 4K desktop.
pub const MAX_QUEUED_BYTES: usize = 8 << 20;
/// The decompression buffer is kept between messages up to this size and shrunk beyond it.
const SCRATCH_KEEP: usize = 256 << 10;
/// A message may decompress to this many times its wire size (but never to more than the
/// queue's byte cap), or to [`SMALL_EXPANSION`] bytes, whichever is larger. Graphics commands
/// compress a few times over; H.264 not at all. Without a bound, a few compressed bytes can
/// ask IronRDP's decompressor for 64 MiB (see `rdp::zgfx_bound`).
pub const MAX_EXPANSION_RATIO: usize = 16;
/// What any message may decompress to: the decompression buffer kept between messages.
pub const SMALL_EXPANSION: usize = SCRATCH_KEEP;
/// Largest surface side: MS-RDPBCGR's largest desktop is 8192 pixels on a side, and a page
/// allocates a canvas of each surface's size.
pub const MAX_SURFACE_SIDE: u16 = 8192;
/// Surfaces one session may have at once. Servers create one per monitor and a few
/// off-screen ones; the page keeps a canvas for each.
pub const MAX_SURFACES: usize = 64;
const RDPGFX_HEADER: usize = 8;

/// A rectangle with exclusive right and bottom edges (`RDPGFX_RECT16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub left: u16,
    pub top: u16,
    pub right: u16,
    pub bottom: u16,
}

impl From<&ExclusiveRectangle> for Rect {
    fn from(r: &ExclusiveRectangle) -> Self {
        Rect {
            left: r.left,
            top: r.top,
            right: r.right,
            bottom: r.bottom,
        }
    }
}

/// One region's quantization and quality of an AVC420 update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantQual {
    pub qp: u8,
    pub progressive: bool,
    pub quality: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SurfaceFormat {
    XRgb,
    ARgb,
}

impl From<PixelFormat> for SurfaceFormat {
    fn from(p: PixelFormat) -> Self {
        match p {
            PixelFormat::XRgb => SurfaceFormat::XRgb,
            PixelFormat::ARgb => SurfaceFormat::ARgb,
        }
    }
}

/// A monitor of the graphics output, inclusive edges as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorRect {
    pub left: i32,
    pub top: i32,
    pub right: i32,
    pub bottom: i32,
    pub primary: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub x: u16,
    pub y: u16,
}

/// An AVC420 update: the H.264 access unit exactly as the server sent it (Annex B), and the
/// regions of the surface it changes.
#[derive(Clone, PartialEq, Eq)]
pub struct Avc420 {
    pub surface: u16,
    /// Where the decoded picture goes on the surface.
    pub dest: Rect,
    /// The changed regions (the picture outside them is unchanged).
    pub regions: Vec<Rect>,
    pub quant_qual: Vec<QuantQual>,
    pub format: SurfaceFormat,
    /// The `RFX_AVC420_BITMAP_STREAM` as received; the access unit starts at `au_offset`.
    bitmap: Vec<u8>,
    au_offset: usize,
}

impl Avc420 {
    /// The H.264 access unit (Annex B byte stream), never decoded here.
    pub fn access_unit(&self) -> &[u8] {
        self.bitmap.get(self.au_offset..).unwrap_or(&[])
    }

    /// The bitmap stream and the offset of the access unit in it, for a caller that wants to
    /// keep the allocation.
    pub fn into_bitmap_stream(self) -> (Vec<u8>, usize) {
        (self.bitmap, self.au_offset)
    }
}

impl std::fmt::Debug for Avc420 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Avc420")
            .field("surface", &self.surface)
            .field("dest", &self.dest)
            .field("regions", &self.regions)
            .field("quant_qual", &self.quant_qual)
            .field("format", &self.format)
            .field("access_unit_len", &self.access_unit().len())
            .finish()
    }
}

/// One graphics pipeline command, owned, in the order the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GfxEvent {
    /// The server chose this capability set from the ones advertised.
    CapsConfirmed {
        version: u32,
        flags: u32,
    },
    ResetGraphics {
        width: u32,
        height: u32,
        monitors: Vec<MonitorRect>,
    },
    CreateSurface {
        surface: u16,
        width: u16,
        height: u16,
        format: SurfaceFormat,
    },
    DeleteSurface {
        surface: u16,
    },
    MapSurfaceToOutput {
        surface: u16,
        x: u32,
        y: u32,
    },
    StartFrame {
        frame_id: u32,
        /// Milliseconds since midnight UTC on the server's clock.
        timestamp_ms: u32,
    },
    EndFrame {
        frame_id: u32,
    },
    Avc420(Avc420),
    SolidFill {
        surface: u16,
        /// `[r, g, b, a]`.
        color: [u8; 4],
        rects: Vec<Rect>,
    },
    SurfaceToSurface {
        src_surface: u16,
        dst_surface: u16,
        src_rect: Rect,
        dst_points: Vec<Point>,
    },
    SurfaceToCache {
        surface: u16,
        cache_key: u64,
        cache_slot: u16,
        src_rect: Rect,
    },
    CacheToSurface {
        cache_slot: u16,
        surface: u16,
        dst_points: Vec<Point>,
    },
    EvictCacheEntry {
        cache_slot: u16,
    },
    CacheImportReply {
        cache_slots: Vec<u16>,
    },
    DeleteEncodingContext {
        surface: u16,
        codec_context: u32,
    },
    /// A codec other than AVC420 (the server is free to use planar, ClearCodec, progressive
    /// RemoteFX, … for parts of the screen). `rect` is absent for `WireToSurface2`, which
    /// carries a codec context instead.
    OtherCodec {
        surface: u16,
        codec_id: u16,
        rect: Option<Rect>,
        codec_context: Option<u32>,
        format: SurfaceFormat,
        data: Vec<u8>,
    },
}

impl GfxEvent {
    /// Payload bytes the event holds, counted against [`MAX_QUEUED_BYTES`].
    pub fn payload_len(&self) -> usize {
        const RECT: usize = std::mem::size_of::<Rect>();
        match self {
            GfxEvent::Avc420(a) => a.bitmap.len() + a.regions.len() * RECT + a.quant_qual.len() * 3,
            GfxEvent::OtherCodec { data, .. } => data.len(),
            GfxEvent::SolidFill { rects, .. } => rects.len() * RECT,
            GfxEvent::SurfaceToSurface { dst_points, .. }
            | GfxEvent::CacheToSurface { dst_points, .. } => dst_points.len() * 4,
            GfxEvent::CacheImportReply { cache_slots } => cache_slots.len() * 2,
            GfxEvent::ResetGraphics { monitors, .. } => {
                monitors.len() * std::mem::size_of::<MonitorRect>()
            }
            _ => 0,
        }
    }
}

/// Why the graphics channel cannot go on.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GfxError {
    #[error("graphics channel: cannot decompress a message: {0}")]
    Zgfx(String),
    #[error("graphics channel: malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error(
        "graphics channel: one message would queue more than {max_events} events or \
         {max_bytes} bytes ({events} events, {bytes} bytes)"
    )]
    QueueFull {
        events: usize,
        bytes: usize,
        max_events: usize,
        max_bytes: usize,
    },
    #[error("graphics channel: the server sent a command after closing the channel")]
    Closed,
    #[error("graphics channel: a {wire}-byte message would decompress to more than {limit} bytes")]
    Expansion { wire: usize, limit: usize },
    #[error(
        "graphics channel: surface {surface} of {width}×{height} pixels is not within \
         1×1 to {MAX_SURFACE_SIDE}×{MAX_SURFACE_SIDE}"
    )]
    SurfaceSize {
        surface: u16,
        width: u16,
        height: u16,
    },
    #[error(
        "graphics channel: a desktop of {width}×{height} pixels is not within \
         1×1 to {MAX_SURFACE_SIDE}×{MAX_SURFACE_SIDE}"
    )]
    DesktopSize { width: u32, height: u32 },
    #[error("graphics channel: the server created more than {MAX_SURFACES} surfaces")]
    TooManySurfaces,
    #[error("graphics channel: H.264 for surface {surface}, which the server never created")]
    UnknownSurface { surface: u16 },
    #[error(
        "graphics channel: H.264 {what} ({}, {})–({}, {}) is outside surface {surface} \
         of {width}×{height}",
        rect.left, rect.top, rect.right, rect.bottom
    )]
    OutsideSurface {
        what: &'static str,
        rect: Rect,
        surface: u16,
        width: u16,
        height: u16,
    },
    #[error("graphics channel: cannot encode a frame acknowledgement: {0}")]
    Encode(String),
}

/// The EGFX dynamic channel processor. Register it with
/// `DrdynvcClient::new().with_dynamic_channel(GfxChannel::new())`.
pub struct GfxChannel {
    decompressor: zgfx::Decompressor,
    scratch: Vec<u8>,
    queue: VecDeque<GfxEvent>,
    queued_bytes: usize,
    max_events: usize,
    max_bytes: usize,
    channel_id: Option<u32>,
    closed: bool,
    confirmed: Option<(u32, u32)>,
    frames_decoded: u32,
    error: Option<GfxError>,
    /// The surfaces the server created and has not deleted: id, width, height.
    surfaces: Vec<(u16, u16, u16)>,
}

impl Default for GfxChannel {
    fn default() -> Self {
        Self::new()
    }
}

impl GfxChannel {
    pub fn new() -> Self {
        Self::with_limits(MAX_QUEUED_EVENTS, MAX_QUEUED_BYTES)
    }

    /// A channel with other queue caps (tests, or a gateway with smaller sessions).
    pub fn with_limits(max_events: usize, max_bytes: usize) -> Self {
        GfxChannel {
            decompressor: zgfx::Decompressor::new(),
            scratch: Vec::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            max_events,
            max_bytes,
            channel_id: None,
            closed: false,
            confirmed: None,
            frames_decoded: 0,
            error: None,
            surfaces: Vec::new(),
        }
    }

    /// The capability sets this client advertises: AVC420 at version 8.1 and plain version 8
    /// as the fallback. No 10.x set: servers read every 10.x set without `AVC_DISABLED` as
    /// AVC444-capable and then send AVC444, which a browser cannot decode as one stream.
    pub fn advertised_capabilities() -> Vec<CapabilitySet> {
        vec![
            CapabilitySet::V8_1 {
                flags: CapabilitiesV81Flags::AVC420_ENABLED | CapabilitiesV81Flags::SMALL_CACHE,
            },
            CapabilitySet::V8 {
                flags: CapabilitiesV8Flags::SMALL_CACHE,
            },
        ]
    }

    /// The next queued event, oldest first.
    pub fn pop_event(&mut self) -> Option<GfxEvent> {
        let ev = self.queue.pop_front()?;
        self.queued_bytes = self.queued_bytes.saturating_sub(ev.payload_len());
        Some(ev)
    }

    /// Events and payload bytes queued.
    pub fn queued(&self) -> (usize, usize) {
        (self.queue.len(), self.queued_bytes)
    }

    /// The dynamic channel id once the server has opened the channel.
    pub fn channel_id(&self) -> Option<u32> {
        self.channel_id
    }

    /// The capability set version and flags the server confirmed.
    pub fn confirmed(&self) -> Option<(u32, u32)> {
        self.confirmed
    }

    /// Frames acknowledged so far.
    pub fn frames_decoded(&self) -> u32 {
        self.frames_decoded
    }

    /// The error that stopped the channel, once (the DVC layer only carries a generic error).
    pub fn take_error(&mut self) -> Option<GfxError> {
        self.error.take()
    }

    /// The `RDPGFX_FRAME_ACKNOWLEDGE_PDU` for `frame_id`, counting it as decoded. Send it when
    /// the browser reports the frame decoded. `queue_depth` tells the server how far behind the
    /// client is: `AvailableBytes(n)` for `n` bytes not yet decoded, `Unavailable` when unknown,
    /// and `Suspend` when the client stops acknowledging (the server then stops waiting for
    /// acknowledgements; send an ordinary acknowledgement to resume).
    pub fn frame_acknowledge(&mut self, frame_id: u32, queue_depth: QueueDepth) -> DvcMessage {
        self.frames_decoded = self.frames_decoded.wrapping_add(1);
        Box::new(GfxPdu::FrameAcknowledge(FrameAcknowledgePdu {
            queue_depth,
            frame_id,
            total_frames_decoded: self.frames_decoded,
        }))
    }

    /// Decompresses one channel message and queues its commands. On error nothing of the
    /// message is queued.
    pub fn decode_message(&mut self, payload: &[u8]) -> Result<(), GfxError> {
        if self.closed {
            return Err(GfxError::Closed);
        }
        self.scratch.clear();
        if self.scratch.capacity() > SCRATCH_KEEP {
            self.scratch.shrink_to(SCRATCH_KEEP);
        }
        let limit = payload
            .len()
            .saturating_mul(MAX_EXPANSION_RATIO)
            .max(SMALL_EXPANSION)
            .min(self.max_bytes.max(SMALL_EXPANSION));
        if super::zgfx_bound::expansion(payload, limit) == super::zgfx_bound::Expansion::Over {
            return Err(GfxError::Expansion {
                wire: payload.len(),
                limit,
            });
        }
        self.decompressor
            .decompress(payload, &mut self.scratch)
            .map_err(|e| GfxError::Zgfx(e.to_string()))?;

        let before = self.queue.len();
        let bytes_before = self.queued_bytes;
        let result = self.decode_commands();
        if result.is_err() {
            self.queue.truncate(before);
            self.queued_bytes = bytes_before;
        }
        result
    }

    fn decode_commands(&mut self) -> Result<(), GfxError> {
        let buf = std::mem::take(&mut self.scratch);
        let result = self.decode_commands_in(&buf);
        self.scratch = buf;
        result
    }

    fn decode_commands_in(&mut self, mut rest: &[u8]) -> Result<(), GfxError> {
        while !rest.is_empty() {
            let header = rest
                .get(..RDPGFX_HEADER)
                .ok_or_else(|| GfxError::Malformed {
                    what: "RDPGFX_HEADER",
                    why: format!("{} bytes left, a header needs {RDPGFX_HEADER}", rest.len()),
                })?;
            let cmd = u16::from_le_bytes([header[0], header[1]]);
            let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
            if len < RDPGFX_HEADER || len > rest.len() {
                return Err(GfxError::Malformed {
                    what: "RDPGFX_HEADER",
                    why: format!(
                        "command 0x{cmd:04x} claims {len} bytes, {} are left",
                        rest.len()
                    ),
                });
            }
            let (pdu_bytes, tail) = rest.split_at(len);
            rest = tail;
            let pdu = GfxPdu::decode(&mut ReadCursor::new(pdu_bytes)).map_err(|e| {
                GfxError::Malformed {
                    what: "graphics command",
                    why: format!("command 0x{cmd:04x}: {e}"),
                }
            })?;
            if let Some(ev) = self.event_for(pdu)? {
                self.push(ev)?;
            }
        }
        Ok(())
    }

    fn push(&mut self, ev: GfxEvent) -> Result<(), GfxError> {
        let bytes = self.queued_bytes + ev.payload_len();
        let events = self.queue.len() + 1;
        if events > self.max_events || bytes > self.max_bytes {
            return Err(GfxError::QueueFull {
                events,
                bytes,
                max_events: self.max_events,
                max_bytes: self.max_bytes,
            });
        }
        trace!(event = ?ev, "gfx event");
        self.queued_bytes = bytes;
        self.queue.push_back(ev);
        Ok(())
    }

    fn event_for(&mut self, pdu: GfxPdu) -> Result<Option<GfxEvent>, GfxError> {
        let ev = match pdu {
            GfxPdu::CapabilitiesConfirm(confirm) => {
                let raw = confirm.0;
                let flags = raw
                    .data
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                debug!(
                    version = format_args!("0x{:x}", raw.version.0),
                    flags, "gfx capabilities confirmed"
                );
                self.confirmed = Some((raw.version.0, flags));
                GfxEvent::CapsConfirmed {
                    version: raw.version.0,
                    flags,
                }
            }
            GfxPdu::ResetGraphics(r)
                if !(1..=u32::from(MAX_SURFACE_SIDE)).contains(&r.width)
                    || !(1..=u32::from(MAX_SURFACE_SIDE)).contains(&r.height) =>
            {
                return Err(GfxError::DesktopSize {
                    width: r.width,
                    height: r.height,
                });
            }
            GfxPdu::ResetGraphics(r) => GfxEvent::ResetGraphics {
                width: r.width,
                height: r.height,
                monitors: r
                    .monitors
                    .iter()
                    .map(|m| MonitorRect {
                        left: m.left,
                        top: m.top,
                        right: m.right,
                        bottom: m.bottom,
                        primary: m.flags.contains(ironrdp_pdu::gcc::MonitorFlags::PRIMARY),
                    })
                    .collect(),
            },
            GfxPdu::CreateSurface(c) => {
                self.create_surface(c.surface_id, c.width, c.height)?;
                GfxEvent::CreateSurface {
                    surface: c.surface_id,
                    width: c.width,
                    height: c.height,
                    format: c.pixel_format.into(),
                }
            }
            GfxPdu::DeleteSurface(d) => {
                self.surfaces.retain(|(id, _, _)| *id != d.surface_id);
                GfxEvent::DeleteSurface {
                    surface: d.surface_id,
                }
            }
            GfxPdu::MapSurfaceToOutput(m) => GfxEvent::MapSurfaceToOutput {
                surface: m.surface_id,
                x: m.output_origin_x,
                y: m.output_origin_y,
            },
            GfxPdu::StartFrame(s) => GfxEvent::StartFrame {
                frame_id: s.frame_id,
                timestamp_ms: timestamp_ms(&s.timestamp),
            },
            GfxPdu::EndFrame(e) => GfxEvent::EndFrame {
                frame_id: e.frame_id,
            },
            GfxPdu::WireToSurface1(w) if w.codec_id == Codec1Type::Avc420 => {
                let (regions, quant_qual, au_len) = {
                    let mut cursor = ReadCursor::new(&w.bitmap_data);
                    let stream = Avc420BitmapStream::decode(&mut cursor).map_err(|e| {
                        GfxError::Malformed {
                            what: "AVC420 bitmap stream",
                            why: e.to_string(),
                        }
                    })?;
                    if stream.rectangles.len() != stream.quant_qual_vals.len() {
                        return Err(GfxError::Malformed {
                            what: "AVC420 bitmap stream",
                            why: "region and quality counts differ".to_owned(),
                        });
                    }
                    (
                        stream.rectangles.iter().map(Rect::from).collect::<Vec<_>>(),
                        stream
                            .quant_qual_vals
                            .iter()
                            .map(|q| QuantQual {
                                qp: q.quantization_parameter,
                                progressive: q.progressive,
                                quality: q.quality,
                            })
                            .collect::<Vec<_>>(),
                        stream.data.len(),
                    )
                };
                let dest = Rect::from(&w.destination_rectangle);
                self.check_inside(w.surface_id, "destination", dest)?;
                for r in &regions {
                    self.check_inside(w.surface_id, "region", *r)?;
                }
                let au_offset = w.bitmap_data.len().saturating_sub(au_len);
                GfxEvent::Avc420(Avc420 {
                    surface: w.surface_id,
                    dest,
                    regions,
                    quant_qual,
                    format: w.pixel_format.into(),
                    bitmap: w.bitmap_data,
                    au_offset,
                })
            }
            GfxPdu::WireToSurface1(w) => GfxEvent::OtherCodec {
                surface: w.surface_id,
                codec_id: w.codec_id.into(),
                rect: Some(Rect::from(&w.destination_rectangle)),
                codec_context: None,
                format: w.pixel_format.into(),
                data: w.bitmap_data,
            },
            GfxPdu::WireToSurface2(w) => GfxEvent::OtherCodec {
                surface: w.surface_id,
                codec_id: w.codec_id.into(),
                rect: None,
                codec_context: Some(w.codec_context_id),
                format: w.pixel_format.into(),
                data: w.bitmap_data,
            },
            GfxPdu::DeleteEncodingContext(d) => GfxEvent::DeleteEncodingContext {
                surface: d.surface_id,
                codec_context: d.codec_context_id,
            },
            GfxPdu::SolidFill(s) => GfxEvent::SolidFill {
                surface: s.surface_id,
                color: [
                    s.fill_pixel.r,
                    s.fill_pixel.g,
                    s.fill_pixel.b,
                    s.fill_pixel.xa,
                ],
                rects: s.rectangles.iter().map(Rect::from).collect(),
            },
            GfxPdu::SurfaceToSurface(s) => GfxEvent::SurfaceToSurface {
                src_surface: s.source_surface_id,
                dst_surface: s.destination_surface_id,
                src_rect: Rect::from(&s.source_rectangle),
                dst_points: s
                    .destination_points
                    .iter()
                    .map(|p| Point { x: p.x, y: p.y })
                    .collect(),
            },
            GfxPdu::SurfaceToCache(s) => GfxEvent::SurfaceToCache {
                surface: s.surface_id,
                cache_key: s.cache_key,
                cache_slot: s.cache_slot,
                src_rect: Rect::from(&s.source_rectangle),
            },
            GfxPdu::CacheToSurface(c) => GfxEvent::CacheToSurface {
                cache_slot: c.cache_slot,
                surface: c.surface_id,
                dst_points: c
                    .destination_points
                    .iter()
                    .map(|p| Point { x: p.x, y: p.y })
                    .collect(),
            },
            GfxPdu::EvictCacheEntry(e) => GfxEvent::EvictCacheEntry {
                cache_slot: e.cache_slot,
            },
            GfxPdu::CacheImportReply(r) => GfxEvent::CacheImportReply {
                cache_slots: r.cache_slots,
            },
            other => {
                // Client-to-server commands, and window mapping, which only RemoteApp sessions
                // use and this client does not advertise.
                warn!(command = ?std::mem::discriminant(&other), "ignoring unexpected graphics command");
                return Ok(None);
            }
        };
        Ok(Some(ev))
    }
}

impl GfxChannel {
    /// Records a surface, within the side and count limits (a page allocates a canvas for
    /// each). Creating an id again replaces it, as on the page.
    fn create_surface(&mut self, surface: u16, width: u16, height: u16) -> Result<(), GfxError> {
        if !(1..=MAX_SURFACE_SIDE).contains(&width) || !(1..=MAX_SURFACE_SIDE).contains(&height) {
            return Err(GfxError::SurfaceSize {
                surface,
                width,
                height,
            });
        }
        self.surfaces.retain(|(id, _, _)| *id != surface);
        if self.surfaces.len() >= MAX_SURFACES {
            return Err(GfxError::TooManySurfaces);
        }
        self.surfaces.push((surface, width, height));
        Ok(())
    }

    /// H.264 must land on a surface the server created, inside it: the page would otherwise
    /// decode pictures it can only throw away (FreeRDP refuses them too).
    fn check_inside(&self, surface: u16, what: &'static str, rect: Rect) -> Result<(), GfxError> {
        let Some(&(_, width, height)) = self.surfaces.iter().find(|(id, _, _)| *id == surface)
        else {
            return Err(GfxError::UnknownSurface { surface });
        };
        if rect.left > rect.right
            || rect.top > rect.bottom
            || rect.right > width
            || rect.bottom > height
        {
            return Err(GfxError::OutsideSurface {
                what,
                rect,
                surface,
                width,
                height,
            });
        }
        Ok(())
    }
}

fn timestamp_ms(t: &Timestamp) -> u32 {
    ((u32::from(t.hours) * 60 + u32::from(t.minutes)) * 60 + u32::from(t.seconds)) * 1000
        + u32::from(t.milliseconds)
}

impl DvcProcessor for GfxChannel {
    fn channel_name(&self) -> &str {
        CHANNEL_NAME
    }

    fn start(&mut self, channel_id: u32) -> PduResult<Vec<DvcMessage>> {
        debug!(channel_id, "graphics channel opened");
        self.channel_id = Some(channel_id);
        self.closed = false;
        // A new channel starts with no surfaces, as the page's does.
        self.surfaces.clear();
        let caps = Self::advertised_capabilities();
        let pdu = GfxPdu::CapabilitiesAdvertise(CapabilitiesAdvertisePdu::from_typed(&caps));
        Ok(vec![Box::new(pdu)])
    }

    fn process(&mut self, _channel_id: u32, payload: &[u8]) -> PduResult<Vec<DvcMessage>> {
        match self.decode_message(payload) {
            Ok(()) => Ok(Vec::new()),
            Err(err) => {
                warn!(%err, "graphics channel failed");
                self.error = Some(err);
                Err(ironrdp_pdu::pdu_other_err!(
                    "GfxChannel",
                    "graphics channel message rejected"
                ))
            }
        }
    }

    fn close(&mut self, channel_id: u32) {
        debug!(channel_id, "graphics channel closed");
        self.closed = true;
        self.channel_id = None;
    }
}

impl DvcClientProcessor for GfxChannel {}

ironrdp_core::impl_as_any!(GfxChannel);

/// The version the advertised V8.1 set carries, for callers checking what was confirmed.
pub const AVC420_CAPS_VERSION: u32 = CapabilityVersion::V8_1.0;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use ironrdp_core::encode_vec;
    use ironrdp_egfx::pdu::{
        encode_avc420_bitmap_stream, Avc420Region, CapabilitiesConfirmPdu, CreateSurfacePdu,
        EndFramePdu, MapSurfaceToOutputPdu, ResetGraphicsPdu, SolidFillPdu, StartFramePdu,
        WireToSurface1Pdu,
    };
    use proptest::prelude::*;

    use super::*;

    fn wire(pdus: &[GfxPdu]) -> Vec<u8> {
        let mut raw = Vec::new();
        for p in pdus {
            raw.extend(encode_vec(p).unwrap());
        }
        zgfx::wrap_uncompressed(&raw)
    }

    const AU: &[u8] = &[
        0, 0, 0, 1, 0x67, 0x64, 0x00, 0x1f, 0xac, 0, 0, 0, 1, 0x65, 0x88,
    ];

    fn avc(surface: u16) -> GfxPdu {
        let stream = encode_avc420_bitmap_stream(&[Avc420Region::new(0, 0, 64, 32, 22, 100)], AU);
        GfxPdu::WireToSurface1(WireToSurface1Pdu {
            surface_id: surface,
            codec_id: Codec1Type::Avc420,
            pixel_format: PixelFormat::XRgb,
            destination_rectangle: ExclusiveRectangle {
                left: 0,
                top: 0,
                right: 64,
                bottom: 32,
            },
            bitmap_data: stream,
        })
    }

    fn surface(surface_id: u16, width: u16, height: u16) -> GfxPdu {
        GfxPdu::CreateSurface(CreateSurfacePdu {
            surface_id,
            width,
            height,
            pixel_format: PixelFormat::XRgb,
        })
    }

    #[test]
    fn surfaces_have_sane_sizes_and_a_bounded_count() {
        let mut ch = GfxChannel::new();
        let err = ch
            .decode_message(&wire(&[surface(1, 65535, 65535)]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "graphics channel: surface 1 of 65535×65535 pixels is not within 1×1 to 8192×8192"
        );
        assert!(matches!(
            GfxChannel::new().decode_message(&wire(&[surface(1, 0, 10)])),
            Err(GfxError::SurfaceSize { .. })
        ));
        let err = GfxChannel::new()
            .decode_message(&wire(&[GfxPdu::ResetGraphics(ResetGraphicsPdu {
                width: 10_000,
                height: 720,
                monitors: vec![],
            })]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "graphics channel: a desktop of 10000×720 pixels is not within 1×1 to 8192×8192"
        );
        let mut ch = GfxChannel::new();
        let all: Vec<_> = (0..MAX_SURFACES as u16).map(|i| surface(i, 8, 8)).collect();
        ch.decode_message(&wire(&all)).unwrap();
        // Creating an id again replaces it; a deleted one makes room.
        ch.decode_message(&wire(&[surface(0, 16, 16)])).unwrap();
        assert_eq!(
            ch.decode_message(&wire(&[surface(999, 8, 8)])),
            Err(GfxError::TooManySurfaces)
        );
        ch.decode_message(&wire(&[
            GfxPdu::DeleteSurface(ironrdp_egfx::pdu::DeleteSurfacePdu { surface_id: 3 }),
            surface(999, 8, 8),
        ]))
        .unwrap();
        // A reopened channel starts without surfaces.
        ch.start(4).unwrap();
        assert_eq!(ch.surfaces.len(), 0);
    }

    #[test]
    fn h264_lands_inside_a_surface_the_server_created() {
        assert_eq!(
            GfxChannel::new().decode_message(&wire(&[avc(1)])),
            Err(GfxError::UnknownSurface { surface: 1 })
        );
        // avc() covers 64×32.
        let err = GfxChannel::new()
            .decode_message(&wire(&[surface(1, 32, 32), avc(1)]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "graphics channel: H.264 destination (0, 0)–(64, 32) is outside surface 1 of 32×32"
        );
        let stream = encode_avc420_bitmap_stream(
            &[
                Avc420Region::new(0, 0, 64, 32, 22, 100),
                Avc420Region::new(60_000, 0, 65_535, 9, 22, 100),
            ],
            AU,
        );
        let GfxPdu::WireToSurface1(mut w) = avc(1) else {
            unreachable!()
        };
        w.bitmap_data = stream;
        let err = GfxChannel::new()
            .decode_message(&wire(&[surface(1, 64, 64), GfxPdu::WireToSurface1(w)]))
            .unwrap_err();
        assert!(
            matches!(err, GfxError::OutsideSurface { what: "region", .. }),
            "{err}"
        );
        let mut ch = GfxChannel::new();
        ch.decode_message(&wire(&[surface(1, 64, 32), avc(1)]))
            .unwrap();
        assert_eq!(drain(&mut ch).len(), 2);
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_it_expands() {
        let mut ch = GfxChannel::new();
        let bomb = crate::rdp::zgfx_bound::tests::bomb(29, 0);
        let err = ch.decode_message(&bomb).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "graphics channel: a {}-byte message would decompress to more than 262144 bytes",
                bomb.len()
            )
        );
        assert_eq!(ch.scratch.capacity(), 0, "nothing was decompressed");
        // Within the ratio it goes through to the command parser.
        let small = crate::rdp::zgfx_bound::tests::bomb(10, 0);
        assert!(matches!(
            ch.decode_message(&small),
            Err(GfxError::Malformed { .. })
        ));
    }

    fn drain(ch: &mut GfxChannel) -> Vec<GfxEvent> {
        std::iter::from_fn(|| ch.pop_event()).collect()
    }

    #[test]
    fn advertises_avc420_and_v8_only() {
        let mut ch = GfxChannel::new();
        let msgs = ch.start(7).unwrap();
        assert_eq!(msgs.len(), 1);
        let bytes = encode_vec(msgs[0].as_ref()).unwrap();
        let GfxPdu::CapabilitiesAdvertise(adv) =
            GfxPdu::decode(&mut ReadCursor::new(&bytes)).unwrap()
        else {
            panic!("not an advertise");
        };
        let versions: Vec<_> = adv.0.iter().map(|c| c.version).collect();
        assert_eq!(versions, [CapabilityVersion::V8_1, CapabilityVersion::V8]);
        assert_eq!(
            adv.0[0].parsed().unwrap(),
            Some(CapabilitySet::V8_1 {
                flags: CapabilitiesV81Flags::AVC420_ENABLED | CapabilitiesV81Flags::SMALL_CACHE
            })
        );
        assert_eq!(ch.channel_id(), Some(7));
    }

    #[test]
    fn decodes_a_frame_into_events() {
        let mut ch = GfxChannel::new();
        ch.start(1).unwrap();
        let msg = wire(&[
            GfxPdu::CapabilitiesConfirm(CapabilitiesConfirmPdu::from_typed(&CapabilitySet::V8_1 {
                flags: CapabilitiesV81Flags::AVC420_ENABLED,
            })),
            GfxPdu::ResetGraphics(ResetGraphicsPdu {
                width: 1280,
                height: 720,
                monitors: vec![],
            }),
            GfxPdu::CreateSurface(CreateSurfacePdu {
                surface_id: 3,
                width: 1280,
                height: 720,
                pixel_format: PixelFormat::XRgb,
            }),
            GfxPdu::MapSurfaceToOutput(MapSurfaceToOutputPdu {
                surface_id: 3,
                output_origin_x: 0,
                output_origin_y: 0,
            }),
            GfxPdu::StartFrame(StartFramePdu {
                timestamp: Timestamp {
                    milliseconds: 5,
                    seconds: 2,
                    minutes: 1,
                    hours: 0,
                },
                frame_id: 9,
            }),
            avc(3),
            GfxPdu::SolidFill(SolidFillPdu {
                surface_id: 3,
                fill_pixel: ironrdp_egfx::pdu::Color {
                    b: 1,
                    g: 2,
                    r: 3,
                    xa: 255,
                },
                rectangles: vec![ExclusiveRectangle {
                    left: 1,
                    top: 2,
                    right: 3,
                    bottom: 4,
                }],
            }),
            GfxPdu::EndFrame(EndFramePdu { frame_id: 9 }),
        ]);
        ch.process(1, &msg).unwrap();
        let evs = drain(&mut ch);
        assert_eq!(evs.len(), 8);
        assert_eq!(
            evs[0],
            GfxEvent::CapsConfirmed {
                version: AVC420_CAPS_VERSION,
                flags: 0x10
            }
        );
        assert!(matches!(
            evs[1],
            GfxEvent::ResetGraphics {
                width: 1280,
                height: 720,
                ..
            }
        ));
        assert!(matches!(
            evs[2],
            GfxEvent::CreateSurface {
                surface: 3,
                format: SurfaceFormat::XRgb,
                ..
            }
        ));
        assert_eq!(
            evs[4],
            GfxEvent::StartFrame {
                frame_id: 9,
                timestamp_ms: 62_005
            }
        );
        let GfxEvent::Avc420(a) = &evs[5] else {
            panic!("expected avc420, got {:?}", evs[5]);
        };
        assert_eq!(a.access_unit(), AU);
        assert_eq!(a.surface, 3);
        assert_eq!(
            a.regions,
            [Rect {
                left: 0,
                top: 0,
                right: 64,
                bottom: 32
            }]
        );
        assert_eq!(a.quant_qual[0].qp, 22);
        assert!(matches!(
            &evs[6],
            GfxEvent::SolidFill { color: [3, 2, 1, 255], rects, .. } if rects.len() == 1
        ));
        assert_eq!(evs[7], GfxEvent::EndFrame { frame_id: 9 });
        assert_eq!(ch.queued(), (0, 0));
        assert_eq!(ch.confirmed(), Some((AVC420_CAPS_VERSION, 0x10)));
    }

    #[test]
    fn frame_acknowledge_counts_frames() {
        let mut ch = GfxChannel::new();
        let first = ch.frame_acknowledge(4, QueueDepth::AvailableBytes(100));
        let second = ch.frame_acknowledge(5, QueueDepth::Suspend);
        let decode = |m: &DvcMessage| {
            let b = encode_vec(m.as_ref()).unwrap();
            GfxPdu::decode(&mut ReadCursor::new(&b)).unwrap()
        };
        assert_eq!(
            decode(&first),
            GfxPdu::FrameAcknowledge(FrameAcknowledgePdu {
                queue_depth: QueueDepth::AvailableBytes(100),
                frame_id: 4,
                total_frames_decoded: 1
            })
        );
        assert_eq!(
            decode(&second),
            GfxPdu::FrameAcknowledge(FrameAcknowledgePdu {
                queue_depth: QueueDepth::Suspend,
                frame_id: 5,
                total_frames_decoded: 2
            })
        );
    }

    #[test]
    fn other_codecs_pass_through() {
        let mut ch = GfxChannel::new();
        let msg = wire(&[GfxPdu::WireToSurface1(WireToSurface1Pdu {
            surface_id: 1,
            codec_id: Codec1Type::Planar,
            pixel_format: PixelFormat::ARgb,
            destination_rectangle: ExclusiveRectangle {
                left: 0,
                top: 0,
                right: 2,
                bottom: 2,
            },
            bitmap_data: vec![9; 10],
        })]);
        ch.decode_message(&msg).unwrap();
        assert_eq!(
            ch.pop_event(),
            Some(GfxEvent::OtherCodec {
                surface: 1,
                codec_id: 0xa,
                rect: Some(Rect {
                    left: 0,
                    top: 0,
                    right: 2,
                    bottom: 2
                }),
                codec_context: None,
                format: SurfaceFormat::ARgb,
                data: vec![9; 10],
            })
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        let mut ch = GfxChannel::new();
        // Not a ZGFX segment at all.
        assert!(matches!(ch.decode_message(&[0x42]), Err(GfxError::Zgfx(_))));
        assert!(matches!(ch.decode_message(&[]), Err(GfxError::Zgfx(_))));
        // A header cut short.
        assert!(matches!(
            ch.decode_message(&zgfx::wrap_uncompressed(&[0x0b, 0, 0])),
            Err(GfxError::Malformed { .. })
        ));
        // A length beyond the message.
        let mut raw = encode_vec(&GfxPdu::EndFrame(EndFramePdu { frame_id: 1 })).unwrap();
        raw[4] = 200;
        assert!(matches!(
            ch.decode_message(&zgfx::wrap_uncompressed(&raw)),
            Err(GfxError::Malformed { .. })
        ));
        // A length below the header size.
        raw[4] = 4;
        assert!(ch.decode_message(&zgfx::wrap_uncompressed(&raw)).is_err());
        // An unknown command.
        let mut raw = encode_vec(&GfxPdu::EndFrame(EndFramePdu { frame_id: 1 })).unwrap();
        raw[0] = 0x7f;
        assert!(ch.decode_message(&zgfx::wrap_uncompressed(&raw)).is_err());
        // An AVC420 stream claiming more regions than it holds.
        let GfxPdu::WireToSurface1(mut w) = avc(1) else {
            unreachable!()
        };
        w.bitmap_data[0] = 200;
        let err = ch
            .decode_message(&wire(&[GfxPdu::WireToSurface1(w)]))
            .unwrap_err();
        assert!(err.to_string().contains("AVC420"), "{err}");
        // An unknown codec id.
        let mut raw = encode_vec(&avc(1)).unwrap();
        raw[10] = 0x55;
        assert!(ch.decode_message(&zgfx::wrap_uncompressed(&raw)).is_err());
        // A good command followed by garbage queues nothing.
        let mut raw = encode_vec(&GfxPdu::EndFrame(EndFramePdu { frame_id: 1 })).unwrap();
        raw.extend([1, 2, 3]);
        assert!(ch.decode_message(&zgfx::wrap_uncompressed(&raw)).is_err());
        assert_eq!(ch.queued(), (0, 0));
        // Through the DVC interface the error is kept for the session to report.
        assert!(ch.process(1, &[0x42]).is_err());
        assert!(matches!(ch.take_error(), Some(GfxError::Zgfx(_))));
    }

    #[test]
    fn queue_is_bounded() {
        let mut ch = GfxChannel::with_limits(3, 1 << 20);
        let frame = |id| GfxPdu::EndFrame(EndFramePdu { frame_id: id });
        ch.decode_message(&wire(&[frame(1), frame(2), frame(3)]))
            .unwrap();
        let err = ch.decode_message(&wire(&[frame(4)])).unwrap_err();
        assert!(
            matches!(err, GfxError::QueueFull { events: 4, .. }),
            "{err}"
        );
        assert_eq!(ch.queued().0, 3);
        drain(&mut ch);
        let mut ch = GfxChannel::with_limits(100, 32);
        let err = ch
            .decode_message(&wire(&[surface(1, 64, 64), avc(1)]))
            .unwrap_err();
        assert!(matches!(err, GfxError::QueueFull { .. }), "{err}");
        assert_eq!(ch.queued(), (0, 0));
    }

    #[test]
    fn closed_channel_refuses_commands() {
        let mut ch = GfxChannel::new();
        ch.start(2).unwrap();
        ch.close(2);
        assert_eq!(
            ch.decode_message(&wire(&[GfxPdu::EndFrame(EndFramePdu { frame_id: 1 })])),
            Err(GfxError::Closed)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut ch = GfxChannel::new();
            let _ = ch.decode_message(&body);
            let _ = ch.decode_message(&zgfx::wrap_uncompressed(&body));
        }

        #[test]
        fn mutated_commands_never_panic(flip in 0usize..64, value in any::<u8>()) {
            let mut raw = Vec::new();
            raw.extend(encode_vec(&avc(1)).unwrap());
            raw.extend(encode_vec(&GfxPdu::EndFrame(EndFramePdu { frame_id: 1 })).unwrap());
            let i = flip % raw.len();
            raw[i] = value;
            let mut ch = GfxChannel::new();
            let _ = ch.decode_message(&zgfx::wrap_uncompressed(&raw));
        }
    }
}

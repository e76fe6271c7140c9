//! A hostile server for tests (`Content::Hostile`): the demo server's real connection
//! sequence (TLS, NLA, the static channels, DRDYNVC and the graphics channel opened, the
//! client's capabilities confirmed), then crafted bytes instead of frames. Each [`Attack`]
//! wraps its bad part in valid outer layers (TLS, X.224, MCS, the DRDYNVC static channel, DVC
//! Data PDUs on the open graphics channel), so the bad part is what reaches the client's
//! parser. Not reachable from `rdpwire demo`; `tests/hostile_server.rs` drives it.

use std::sync::Arc;

/// One step of a hostile session, sent once the graphics channel is ready.
#[derive(Clone)]
pub enum Attack {
    /// Bytes written to the TLS stream as they are (junk, bad framing).
    Raw(Vec<u8>),
    /// One DRDYNVC PDU, made from the graphics channel's id, in a valid static channel PDU.
    Drdynvc(Arc<dyn Fn(u32) -> Vec<u8> + Send + Sync>),
    /// One chunk of the DRDYNVC static channel whose channel PDU header (MS-RDPBCGR
    /// 2.2.6.1.1) says `len` and `flags`, whatever `data` holds.
    StaticChunk { len: u32, flags: u32, data: Vec<u8> },
    /// One graphics channel message (normally ZGFX-wrapped RDPGFX commands), sent as DVC
    /// Data PDUs as the server sends frames: a DataFirst and Data PDUs when it is long.
    Gfx(Vec<u8>),
    /// The steps again, `times` times (endless input, for as long as the client reads).
    Repeat { steps: Vec<Attack>, times: usize },
}

impl std::fmt::Debug for Attack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attack::Raw(b) => write!(f, "Raw({} bytes)", b.len()),
            Attack::Drdynvc(_) => write!(f, "Drdynvc"),
            Attack::StaticChunk { len, flags, data } => {
                write!(f, "StaticChunk({len}, {flags:#x}, {} bytes)", data.len())
            }
            Attack::Gfx(b) => write!(f, "Gfx({} bytes)", b.len()),
            Attack::Repeat { steps, times } => write!(f, "Repeat({steps:?} × {times})"),
        }
    }
}

/// Bytes that encode as themselves: a crafted PDU inside valid outer layers.
#[derive(Debug, Clone)]
pub struct RawPdu(pub Vec<u8>);

impl ironrdp_core::Encode for RawPdu {
    fn encode(&self, dst: &mut ironrdp_core::WriteCursor<'_>) -> ironrdp_core::EncodeResult<()> {
        ironrdp_core::ensure_size!(in: dst, size: self.0.len());
        dst.write_slice(&self.0);
        Ok(())
    }

    fn name(&self) -> &'static str {
        "RawPdu"
    }

    fn size(&self) -> usize {
        self.0.len()
    }
}

impl ironrdp_svc::SvcEncode for RawPdu {}
impl ironrdp_dvc::DvcEncode for RawPdu {}

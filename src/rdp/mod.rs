//! The gateway's RDP client, sans-IO: the target and its TLS policy, the connector set-up, the
//! active session, the graphics pipeline channel, and the tile decoder for codecs other than
//! H.264. Bytes come in and go out through the runtime shell (`runtime::rdp_client`); nothing
//! here touches a socket or an executor.
//!
//! What leaves this module is a stream of [`RdpEvent`]s: graphics commands with H.264 access
//! units untouched, pointer updates, and the session's start and end. Every error is one
//! [`RdpError`] whose text is a sentence a user can act on.

pub mod audio;
pub mod connection;
pub mod dvc;
pub mod egfx;
pub mod input;
pub mod large;
pub mod session;
pub mod target;
pub mod tiles;
pub mod zgfx_bound;

use std::sync::Arc;

pub use connection::DesktopSize;
pub use egfx::{GfxError, GfxEvent};
pub use input::InputEvent;
pub use session::Session;
pub use target::{Target, TlsError, TlsPolicy};
pub use tiles::{TileDecoder, TileError};

/// What the RDP session reports to the layer above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdpEvent {
    /// The connection sequence is complete; the desktop has this size.
    Connected {
        width: u16,
        height: u16,
    },
    /// A Deactivation-Reactivation Sequence finished; the desktop may have a new size.
    Reactivated {
        width: u16,
        height: u16,
    },
    Graphics(GfxEvent),
    Pointer(PointerEvent),
    /// Sound arrived (or stopped) and waits in the session's audio sink.
    Audio,
    /// The session is over; `reason` says why in words.
    Disconnected {
        reason: String,
    },
}

/// The server-drawn mouse pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointerEvent {
    /// The system's default arrow.
    Default,
    Hidden,
    Position {
        x: u16,
        y: u16,
    },
    /// A new pointer image: RGBA, `width × height × 4` bytes, premultiplied alpha.
    Bitmap {
        width: u16,
        height: u16,
        hotspot_x: u16,
        hotspot_y: u16,
        rgba: Arc<Vec<u8>>,
    },
}

/// Everything that ends or prevents an RDP session, worded for the person who has to fix it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RdpError {
    #[error("cannot resolve {host}: {why}")]
    Resolve { host: String, why: String },
    #[error("cannot reach {endpoint}: {why}")]
    Unreachable { endpoint: String, why: String },
    #[error("the target {endpoint} is not allowed: {why}")]
    NotAllowed {
        endpoint: String,
        why: crate::policy::Denied,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("authentication failed for user '{user}': the server rejected the credentials")]
    AuthFailed { user: String },
    #[error("user '{user}' cannot log on: {why}")]
    AccountRefused { user: String, why: String },
    #[error("{host} refused the security negotiation: {why}")]
    Negotiation { host: String, why: String },
    #[error("{host} did not complete the RDP connection within {secs} s")]
    Timeout { host: String, secs: u64 },
    #[error("RDP connection to {host} failed while {phase}: {why}")]
    Protocol {
        host: String,
        phase: &'static str,
        why: String,
    },
    #[error(
        "{host} redirected the connection to another server, which rdpwire does not support yet"
    )]
    Redirected { host: String },
    #[error("connection to {host} was lost: {why}")]
    ConnectionLost { host: String, why: String },
    #[error("{host}: {err}")]
    Graphics { host: String, err: GfxError },
    #[error(
        "{host} sent a {len}-byte message on dynamic channel {channel}, above the limit of {limit} bytes (--max-dvc-message)"
    )]
    OversizeMessage {
        host: String,
        channel: u32,
        len: u32,
        limit: usize,
    },
    #[error("{host} broke the virtual channel protocol: {why}")]
    ChannelProtocol { host: String, why: String },
    #[error("{host} does not accept fast-path input, which rdpwire needs to send input")]
    NoFastPathInput { host: String },
    #[error("the graphics channel to {host} is not open yet")]
    GraphicsNotOpen { host: String },
    #[error("the RDP session with {host} has ended")]
    Ended { host: String },
}

/// Words for an I/O error on an established connection.
pub fn describe_io(err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::UnexpectedEof => "the remote desktop closed the connection".to_owned(),
        ErrorKind::ConnectionReset => "the remote desktop reset the connection".to_owned(),
        ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        ErrorKind::TimedOut => "timed out".to_owned(),
        ErrorKind::BrokenPipe => "the connection is closed".to_owned(),
        _ => match err.raw_os_error() {
            Some(code) if code == nix::libc::EHOSTUNREACH => "no route to host".to_owned(),
            Some(code) if code == nix::libc::ENETUNREACH => "network is unreachable".to_owned(),
            _ => err.to_string(),
        },
    }
}

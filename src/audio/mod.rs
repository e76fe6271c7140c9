//! Desktop sound, sans-IO: PCM or Opus from the RDP server in, Opus packets for the page out.
//!
//! The RDP side hands every wave to the session's [`AudioSink`]. PCM is gathered into 10 or
//! 20 ms frames (44.1 kHz through a real resampler first), encoded with libopus and queued;
//! Opus from the server is queued as it came. Every buffer on that path — the PCM gathered
//! for the encoder, the resampler's input, the queued packets — is a slot of the session's
//! share of the arena's audio pool. The queue holds at most `max_queue` of sound: when the
//! page falls behind, the oldest packets go first and are counted, so a slow page costs
//! dropped sound, never memory, and never holds up the picture.
//!
//! Only the codec state itself (libopus' encoder, the resampler's FFT plan) lives on the heap;
//! its size is fixed per session and counted in `sizing::AUDIO_STATE`.

mod encode;
mod pipeline;
mod queue;

pub use encode::PcmEncoder;
pub use pipeline::{AudioCounts, AudioPipeline, AudioSink};
pub use queue::AudioQueue;

use std::time::Duration;

/// The sample rate of everything the page receives (Opus' native rate).
pub const OUTPUT_RATE: u32 = 48_000;
/// The page always gets stereo; mono input is played on both channels.
pub const OUTPUT_CHANNELS: u8 = 2;
/// Largest Opus packet the gateway accepts from a server or makes itself: RFC 6716 caps one
/// frame at 1275 bytes; a server's packet may carry a few frames.
pub const MAX_PACKET: usize = 4000;
/// What one encoded packet may take when the gateway encodes it (one frame).
pub const MAX_ENCODED: usize = 1276;

/// The gateway's audio settings (`audio.*` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioSettings {
    pub enabled: bool,
    /// Opus bit rate for PCM the gateway encodes, bits per second.
    pub bitrate: u32,
    /// Opus frame length: 10 or 20 ms.
    pub frame: Duration,
    /// libopus' encoder complexity, 0–10: CPU per stream against quality at the same rate.
    pub complexity: u8,
    /// Most sound that may wait for the page; older packets are dropped.
    pub max_queue: Duration,
}

impl Default for AudioSettings {
    fn default() -> Self {
        AudioSettings {
            enabled: true,
            bitrate: 64_000,
            frame: Duration::from_millis(20),
            complexity: 5,
            max_queue: Duration::from_millis(200),
        }
    }
}

/// What the server sends, as far as the pipeline cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Signed 16-bit little-endian PCM, interleaved.
    Pcm { rate: u32, channels: u16 },
    /// One Opus packet per wave.
    Opus { channels: u16 },
}

impl Input {
    /// PCM rates the gateway takes: Opus' own rate, and CD rate through the resampler.
    pub const PCM_RATES: [u32; 2] = [48_000, 44_100];
}

/// Everything that can go wrong with one session's sound. None of it ends the session: the
/// packet or stream concerned is dropped and the reason logged.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AudioError {
    #[error(
        "session {session}: {rate} Hz, {channels}-channel PCM is not a format rdpwire accepted"
    )]
    Unsupported {
        session: u64,
        rate: u32,
        channels: u16,
    },
    #[error("session {session}: PCM wave of {len} bytes is not a whole number of {channels}-channel 16-bit frames")]
    RaggedPcm {
        session: u64,
        len: usize,
        channels: u16,
    },
    #[error("session {session}: opus packet from the server is invalid: {why}")]
    BadOpus { session: u64, why: String },
    #[error("session {session}: opus packet of {len} bytes is larger than {MAX_PACKET}")]
    OversizeOpus { session: u64, len: usize },
    #[error("session {session}: opus encoder failed: {why}")]
    Encoder { session: u64, why: String },
    #[error("session {session}: resampler failed: {why}")]
    Resampler { session: u64, why: String },
    #[error("session {session}: audio slots of {slot} bytes are too small for {need}; raise --audio-buf-size")]
    SlotTooSmall {
        session: u64,
        slot: usize,
        need: usize,
    },
    #[error("session {session}: no audio slot left in the session's share (quota {quota})")]
    NoSlot { session: u64, quota: usize },
}

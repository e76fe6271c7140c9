//! rdpwire: a web gateway for remote desktops. See `docs/architecture.md` for the codemap.
#![forbid(unsafe_code)]

pub mod audio;
pub mod cli;
pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod http;
pub mod limits;
pub mod policy;
pub mod protocol;
pub mod rdp;
pub mod resume;
pub mod runtime;
pub mod session;
pub mod sizing;
pub mod telemetry;
pub mod token;
pub mod web;

/// Tone analysis shared with the integration tests.
#[cfg(test)]
#[path = "../tests/support/tone.rs"]
mod test_tone;

//! The audio output channel (MS-RDPEA) towards the session's [`AudioSink`]: static `RDPSND`
//! and the `AUDIO_PLAYBACK_DVC` dynamic channel, whichever the server opens. IronRDP runs the
//! negotiation and the wave confirmations; this handler picks the formats and hands each wave
//! to the pipeline.
//!
//! IronRDP wants a `Send` handler, while the pipeline holds the session's arena slots, which
//! never leave their core. `send_wrapper` bridges the two: the handler is created, used and
//! dropped on the session's core like everything else of the session, and the wrapper checks
//! that at run time instead of the compiler. Every access checks `valid()` first, so a
//! violation would drop a wave instead of panicking.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use ironrdp_rdpsnd::client::{Rdpsnd, RdpsndClientHandler, RdpsndDvcState};
use ironrdp_rdpsnd::pdu::{AudioFormat, AudioFormatFlags, PitchPdu, VolumePdu, WaveFormat};
use send_wrapper::SendWrapper;
use tracing::{debug, info, warn};

use crate::audio::{AudioSink, Input};

/// Log the first few rejected waves of a session and then every this many, so a server that
/// sends garbage fifty times a second cannot flood the log.
const LOG_EVERY: u64 = 500;

pub struct AudioHandler {
    sink: SendWrapper<AudioSink>,
    session: u64,
    formats: Vec<AudioFormat>,
    rejected: u64,
}

impl std::fmt::Debug for AudioHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioHandler")
            .field("session", &self.session)
            .field("rejected", &self.rejected)
            .finish()
    }
}

impl AudioHandler {
    pub fn new(sink: AudioSink, session: u64) -> Self {
        AudioHandler {
            sink: SendWrapper::new(sink),
            session,
            formats: accepted_formats(),
            rejected: 0,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut crate::audio::AudioPipeline) -> R) -> Option<R> {
        if !self.sink.valid() {
            return None;
        }
        self.sink.with(f)
    }
}

/// The static and the dynamic audio channel, both feeding `sink`, with a clock so the wave
/// confirmations carry the real holding time.
pub fn channels(sink: &AudioSink, session: u64) -> (Rdpsnd, RdpsndDvcState) {
    let started = Instant::now();
    let clock = move || started.elapsed();
    let stat =
        Rdpsnd::new(Box::new(AudioHandler::new(sink.clone(), session))).with_clock(Box::new(clock));
    let dynamic = RdpsndDvcState::new(Box::new(AudioHandler::new(sink.clone(), session)))
        .with_clock(Box::new(clock));
    (stat, dynamic)
}

fn pcm(rate: u32, channels: u16) -> AudioFormat {
    let align = channels * 2;
    AudioFormat {
        format: WaveFormat::PCM,
        n_channels: channels,
        n_samples_per_sec: rate,
        n_avg_bytes_per_sec: rate * u32::from(align),
        n_block_align: align,
        bits_per_sample: 16,
        data: None,
    }
}

/// What the gateway takes, most preferred first: Opus (passed through, no re-encoding), then
/// 16-bit PCM at 48 kHz (no resampling) and 44.1 kHz, stereo before mono.
pub fn accepted_formats() -> Vec<AudioFormat> {
    vec![
        AudioFormat {
            format: WaveFormat::OPUS,
            n_channels: 2,
            n_samples_per_sec: 48_000,
            n_avg_bytes_per_sec: 64_000 / 8,
            n_block_align: 1,
            bits_per_sample: 0,
            data: None,
        },
        pcm(48_000, 2),
        pcm(48_000, 1),
        pcm(44_100, 2),
        pcm(44_100, 1),
    ]
}

/// How the pipeline reads a negotiated format, or `None` for one it does not take.
pub fn input_of(f: &AudioFormat) -> Option<Input> {
    let channels = f.n_channels;
    if !matches!(channels, 1 | 2) {
        return None;
    }
    if f.format == WaveFormat::OPUS && f.n_samples_per_sec == 48_000 {
        return Some(Input::Opus { channels });
    }
    if f.format == WaveFormat::PCM
        && f.bits_per_sample == 16
        && Input::PCM_RATES.contains(&f.n_samples_per_sec)
    {
        return Some(Input::Pcm {
            rate: f.n_samples_per_sec,
            channels,
        });
    }
    None
}

/// Rank of a format in the preference order (lower is better).
fn rank(f: &AudioFormat) -> Option<u32> {
    Some(match input_of(f)? {
        Input::Opus { channels } => 2 - u32::from(channels),
        Input::Pcm { rate, channels } => {
            10 + u32::from(rate != 48_000) * 2 + (2 - u32::from(channels))
        }
    })
}

impl RdpsndClientHandler for AudioHandler {
    fn get_flags(&self) -> AudioFormatFlags {
        AudioFormatFlags::empty()
    }

    fn get_formats(&self) -> &[AudioFormat] {
        &self.formats
    }

    /// The server's own entries for the formats the gateway takes: non-PCM formats must match
    /// the server's byte rate and alignment exactly, so they are echoed as offered.
    fn choose_formats(&self, server_formats: &[AudioFormat]) -> Vec<AudioFormat> {
        let mut chosen: Vec<&AudioFormat> = server_formats
            .iter()
            .filter(|f| rank(f).is_some())
            .collect();
        chosen.sort_by_key(|f| rank(f));
        info!(
            session = self.session,
            offered = server_formats.len(),
            accepted = chosen.len(),
            "audio formats negotiated"
        );
        chosen.into_iter().cloned().collect()
    }

    fn wave(&mut self, format: &AudioFormat, _ts: u32, data: Cow<'_, [u8]>) {
        let session = self.session;
        let result = match input_of(format) {
            Some(input) => self.with(|p| p.wave(input, &data)),
            None => {
                warn!(session, format = ?format.format, "wave in a format rdpwire did not accept");
                return;
            }
        };
        match result {
            Some(Ok(())) => {}
            Some(Err(err)) => {
                self.rejected += 1;
                if self.rejected <= 3 || self.rejected % LOG_EVERY == 0 {
                    warn!(session, rejected = self.rejected, %err, "audio wave dropped");
                }
            }
            None => warn!(
                session,
                "audio wave dropped: the session's audio state is busy"
            ),
        }
    }

    fn playback_latency(&self) -> Duration {
        self.with(|p| p.latency()).unwrap_or_default()
    }

    fn set_volume(&mut self, volume: VolumePdu) {
        debug!(
            session = self.session,
            ?volume,
            "server volume change ignored"
        );
    }

    fn set_pitch(&mut self, pitch: PitchPdu) {
        debug!(
            session = self.session,
            ?pitch,
            "server pitch change ignored"
        );
    }

    fn close(&mut self) {
        let _ = self.with(|p| p.stop());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_chosen_from_the_servers_list_in_preference_order() {
        let mut opus = accepted_formats()[0].clone();
        // A server's Opus entry with its own byte rate is echoed as offered.
        opus.n_avg_bytes_per_sec = 12_000;
        let server = vec![
            pcm(22_050, 2),
            pcm(44_100, 2),
            AudioFormat {
                bits_per_sample: 8,
                ..pcm(48_000, 2)
            },
            pcm(48_000, 2),
            opus.clone(),
        ];
        let arena = arena::Arena::new(&arena::ArenaConfig::with_sessions(1)).unwrap();
        let share = std::rc::Rc::new(arena.admit().unwrap());
        let sink = AudioSink::new(crate::audio::AudioPipeline::new(
            share,
            1,
            crate::audio::AudioSettings::default(),
        ));
        let h = AudioHandler::new(sink, 1);
        let chosen = h.choose_formats(&server);
        assert_eq!(chosen, vec![opus, pcm(48_000, 2), pcm(44_100, 2)]);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod confirm_tests {
    use super::*;
    use crate::audio::{AudioPipeline, AudioSettings};
    use ironrdp_core::{decode, encode_vec};
    use ironrdp_rdpsnd::pdu::{
        ClientAudioOutputPdu, ServerAudioFormatPdu, ServerAudioOutputPdu, TrainingPdu, Version,
        Wave2Pdu,
    };
    use ironrdp_svc::SvcProcessor;

    fn feed(ch: &mut Rdpsnd, pdu: ServerAudioOutputPdu<'_>) -> Vec<ClientAudioOutputPdu> {
        let bytes = encode_vec(&pdu).unwrap();
        ch.process(&bytes)
            .unwrap()
            .into_iter()
            .map(|m| decode::<ClientAudioOutputPdu>(&m.encode_unframed_pdu().unwrap()).unwrap())
            .collect()
    }

    /// MS-RDPEA 3.2.5.2.1.6: the confirmation carries the server's timestamp plus the time
    /// until the sound is heard — here what waits in the gateway plus the page's buffer.
    #[test]
    fn wave_confirmations_include_the_real_playback_delay() {
        let arena = arena::Arena::new(&arena::ArenaConfig::with_sessions(1)).unwrap();
        let share = std::rc::Rc::new(arena.admit().unwrap());
        let sink = AudioSink::new(AudioPipeline::new(share, 1, AudioSettings::default()));
        let (mut ch, _) = channels(&sink, 1);
        let replies = feed(
            &mut ch,
            ServerAudioOutputPdu::AudioFormat(ServerAudioFormatPdu {
                version: Version::V8,
                formats: vec![pcm(48_000, 2)],
            }),
        );
        assert!(
            matches!(replies[0], ClientAudioOutputPdu::AudioFormat(_)),
            "{replies:?}"
        );
        feed(
            &mut ch,
            ServerAudioOutputPdu::Training(TrainingPdu {
                timestamp: 7,
                data: Vec::new(),
            }),
        );
        sink.with(|p| p.set_browser_buffer(60)).unwrap();
        // 50 ms of stereo 48 kHz PCM: two 20 ms packets wait for the page, 10 ms is gathered.
        let wave = vec![0u8; 48 * 50 * 4];
        let replies = feed(
            &mut ch,
            ServerAudioOutputPdu::Wave2(Wave2Pdu {
                timestamp: 1000,
                format_no: 0,
                block_no: 3,
                audio_timestamp: 0,
                data: std::borrow::Cow::Borrowed(&wave),
            }),
        );
        let Some(ClientAudioOutputPdu::WaveConfirm(c)) = replies.last() else {
            panic!("{replies:?}");
        };
        assert_eq!(c.block_no, 3);
        let delay = c.timestamp.wrapping_sub(1000);
        assert!(
            (110..130).contains(&delay),
            "confirmed {delay} ms after the server's timestamp"
        );
    }
}

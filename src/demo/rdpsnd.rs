//! The demo's sound channel: IronRDP's RDPSND server (MS-RDPEA on the static `rdpsnd`
//! channel: server formats, client formats, quality mode, training, then waves and their
//! confirms) with the session's [`AudioStream`] behind it.
//!
//! A wrapper rather than the bare `RdpsndServer`, because the crate's handler is boxed away
//! inside it: the session reaches this type by downcasting, and the wrapper sees the client's
//! PDUs itself (Wave Confirms pace the stream; after the Training Confirm it knows whether a
//! format was agreed, which the crate only logs at debug level).

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ironrdp_core::{impl_as_any, Decode as _, ReadCursor};
use ironrdp_pdu::gcc::ChannelName;
use ironrdp_pdu::PduResult;
use ironrdp_rdpsnd::pdu::{AudioFormat, ClientAudioOutputPdu};
use ironrdp_rdpsnd::server::{NegotiatedFormat, RdpsndError, RdpsndServer, RdpsndServerHandler};
use ironrdp_svc::{SvcMessage, SvcProcessor, SvcServerProcessor};
use tracing::{debug, info, warn};

use super::sound::{self, AudioStream, Codec, DemoAudio, Sound};
use super::{DemoError, Shared};

/// The static `rdpsnd` channel of one session.
pub struct SoundChannel {
    server: RdpsndServer,
    /// Where the handler leaves the stream it started.
    handoff: Arc<Mutex<Handoff>>,
    /// Set once a format is agreed; `None` means silence.
    stream: Option<AudioStream>,
    shared: Arc<Shared>,
}

/// From the crate's handler (inside `RdpsndServer`) to [`SoundChannel`], once per session.
#[derive(Debug, Default)]
struct Handoff {
    /// The handler was asked to choose (there was a format in common).
    asked: bool,
    stream: Option<AudioStream>,
}

fn lock(handoff: &Mutex<Handoff>) -> MutexGuard<'_, Handoff> {
    handoff.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SoundChannel {
    pub fn new(choice: DemoAudio, shared: Arc<Shared>) -> SoundChannel {
        let handoff = Arc::new(Mutex::new(Handoff::default()));
        let negotiator = Negotiator {
            choice,
            formats: sound::server_formats(),
            handoff: Arc::clone(&handoff),
        };
        SoundChannel {
            server: RdpsndServer::new(Box::new(negotiator)),
            handoff,
            stream: None,
            shared,
        }
    }

    /// Plays `sound` (nothing happens before a format is agreed, or without one).
    pub fn trigger(&mut self, sound: Sound, now_ms: u64) {
        if let Some(stream) = self.stream.as_mut() {
            stream.trigger(sound, now_ms);
        }
    }

    /// When the next wave is due (ms on the session clock), if one is.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.stream.as_ref().and_then(AudioStream::next_due_ms)
    }

    /// The Wave PDUs due at `now_ms`. A failure silences this session's sound; the
    /// session itself goes on.
    pub fn pump(&mut self, now_ms: u64) -> Vec<SvcMessage> {
        let Some(stream) = self.stream.as_mut() else {
            return Vec::new();
        };
        let pumped = match stream.pump(now_ms) {
            Ok(pumped) => pumped,
            Err(error) => {
                warn!(%error, "demo audio failed; this session goes on without sound");
                self.stream = None;
                return Vec::new();
            }
        };
        if pumped.dropped > 0 {
            self.shared
                .waves_dropped
                .fetch_add(u64::from(pumped.dropped), Ordering::Relaxed);
            debug!(
                dropped = pumped.dropped,
                in_flight = stream.in_flight(),
                "demo audio dropped waves that were due (client not confirming, or a stall)"
            );
        }
        let mut out = Vec::new();
        let mut sent = 0u64;
        for wave in pumped.waves {
            match self.server.wave(wave.data, wave.timestamp) {
                Ok(messages) => {
                    out.extend(Vec::<SvcMessage>::from(messages));
                    sent += 1;
                }
                Err(error) => {
                    // The stream's block numbers would no longer match the crate's.
                    warn!(%error, "rdpsnd refused a wave; this session goes on without sound");
                    self.stream = None;
                    break;
                }
            }
        }
        self.shared.waves_sent.fetch_add(sent, Ordering::Relaxed);
        out
    }

    /// After the Training Confirm the crate has negotiated: take the stream or say why not.
    fn negotiated(&mut self) {
        let mut handoff = lock(&self.handoff);
        match handoff.stream.take() {
            Some(stream) => {
                info!(codec = %stream.codec(), "demo audio ready");
                self.shared.lock_observed().audio_sessions += 1;
                self.stream = Some(stream);
            }
            // The handler logged its refusal or failure already.
            None if handoff.asked => {}
            None => warn!(
                offered = %FormatList(&sound::server_formats()),
                "demo audio off: the client accepts none of the demo's formats"
            ),
        }
    }

    fn confirmed(&mut self, block_no: u8, timestamp: u16) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        if let Some(confirmed) = stream.confirm(block_no, timestamp) {
            let waves = u64::try_from(confirmed.waves).unwrap_or(u64::MAX);
            self.shared
                .waves_confirmed
                .fetch_add(waves, Ordering::Relaxed);
            tracing::trace!(
                block_no,
                held_ms = confirmed.held_ms,
                waves,
                "wave confirmed"
            );
        }
    }
}

impl fmt::Debug for SoundChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoundChannel")
            .field("server", &self.server)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl_as_any!(SoundChannel);

impl SvcProcessor for SoundChannel {
    fn channel_name(&self) -> ChannelName {
        RdpsndServer::NAME
    }

    fn start(&mut self) -> PduResult<Vec<SvcMessage>> {
        self.server.start()
    }

    fn process(&mut self, payload: &[u8]) -> PduResult<Vec<SvcMessage>> {
        // Decoded twice (here and in the crate): the crate keeps what it decodes to itself.
        let pdu = ClientAudioOutputPdu::decode(&mut ReadCursor::new(payload)).ok();
        let out = self.server.process(payload)?;
        match pdu {
            Some(ClientAudioOutputPdu::AudioFormat(formats)) => debug!(
                accepted = %FormatList(&formats.formats),
                version = ?formats.version,
                "client audio formats"
            ),
            Some(ClientAudioOutputPdu::TrainingConfirm(_)) => self.negotiated(),
            Some(ClientAudioOutputPdu::WaveConfirm(c)) => self.confirmed(c.block_no, c.timestamp),
            Some(ClientAudioOutputPdu::QualityMode(_)) | None => {}
        }
        Ok(out)
    }
}

impl SvcServerProcessor for SoundChannel {}

/// The crate's handler: offers [`sound::server_formats`], picks by `--audio-format`, and
/// builds the stream in `start` so that a failure (libopus) declines the format cleanly.
#[derive(Debug)]
struct Negotiator {
    choice: DemoAudio,
    formats: Vec<AudioFormat>,
    handoff: Arc<Mutex<Handoff>>,
}

impl RdpsndServerHandler for Negotiator {
    fn get_formats(&self) -> &[AudioFormat] {
        &self.formats
    }

    fn choose_format<'a>(
        &mut self,
        common: &'a [NegotiatedFormat],
    ) -> Option<&'a NegotiatedFormat> {
        lock(&self.handoff).asked = true;
        let accepted: Vec<&AudioFormat> = common.iter().map(NegotiatedFormat::format).collect();
        let chosen = sound::pick(self.choice, &accepted).and_then(|i| common.get(i));
        match chosen.map(|c| Codec::of(c.format())) {
            Some(Some(codec)) if !chosen_is(self.choice, codec) => info!(
                wanted = %self.choice,
                sending = %codec,
                "the client does not accept the demo's audio format; falling back to pcm"
            ),
            Some(_) => {}
            None => warn!(
                wanted = %self.choice,
                accepted = %FormatList(&common.iter().map(|c| c.format().clone()).collect::<Vec<_>>()),
                "demo audio off: the client accepts no pcm format of the demo's"
            ),
        }
        chosen
    }

    fn start(&mut self, format: &NegotiatedFormat) -> Result<(), Box<dyn RdpsndError>> {
        let codec = Codec::of(format.format()).ok_or_else(|| {
            Box::new(DemoError::Audio(format!(
                "no encoder for {:?}",
                format.format()
            ))) as Box<dyn RdpsndError>
        })?;
        let stream = AudioStream::new(codec).map_err(|e| Box::new(e) as Box<dyn RdpsndError>)?;
        lock(&self.handoff).stream = Some(stream);
        Ok(())
    }

    fn stop(&mut self) {
        lock(&self.handoff).stream = None;
    }
}

/// Whether `codec` is what `choice` asked for (not a fallback).
fn chosen_is(choice: DemoAudio, codec: Codec) -> bool {
    matches!(
        (choice, codec),
        (DemoAudio::Pcm44, Codec::Pcm { rate: 44_100 })
            | (DemoAudio::Pcm48, Codec::Pcm { rate: 48_000 })
            | (DemoAudio::Opus, Codec::Opus)
    )
}

/// A format list for the log: `pcm 44100 Hz 2ch 16bit, …`.
struct FormatList<'a>(&'a [AudioFormat]);

impl fmt::Display for FormatList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, format) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(
                f,
                "{} {} Hz {}ch {}bit",
                format.format, format.n_samples_per_sec, format.n_channels, format.bits_per_sample
            )?;
        }
        Ok(())
    }
}

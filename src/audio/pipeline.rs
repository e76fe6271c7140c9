//! One session's sound: the current stream (PCM being encoded, or Opus passed through), the
//! queue towards the page, and what the page said about its own buffer.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use arena::SessionShare;

use super::{AudioError, AudioQueue, AudioSettings, Input, PcmEncoder, MAX_PACKET, OUTPUT_RATE};
use crate::protocol::{ToBrowser, AUDIO_CODEC_OPUS};

enum Stream {
    Pcm(Box<PcmEncoder>),
    Opus { channels: u16, position_us: u64 },
}

/// Counts since the last [`AudioPipeline::take_counts`], for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AudioCounts {
    /// Waves received from the server.
    pub from_server: u64,
    /// Packets written towards the page.
    pub to_browser: u64,
    /// Packets dropped because the page did not take them in time.
    pub dropped: u64,
}

pub struct AudioPipeline {
    share: Rc<SessionShare>,
    session: u64,
    settings: AudioSettings,
    stream: Option<Stream>,
    queue: AudioQueue,
    /// An AudioStart to send before any packet: the channel count of the new stream.
    announce: Option<u8>,
    /// An AudioStop to send once the queue is empty.
    stop_pending: bool,
    browser_buffer: Duration,
    counts: AudioCounts,
    /// Something happened since the shell last looked (a wave arrived, the stream stopped).
    news: bool,
}

impl AudioPipeline {
    pub fn new(share: Rc<SessionShare>, session: u64, settings: AudioSettings) -> Self {
        AudioPipeline {
            queue: AudioQueue::new(share.clone(), session, settings.max_queue),
            share,
            session,
            settings,
            stream: None,
            announce: None,
            stop_pending: false,
            browser_buffer: Duration::ZERO,
            counts: AudioCounts::default(),
            news: false,
        }
    }

    pub fn session(&self) -> u64 {
        self.session
    }

    /// Takes one wave from the server. A wave in another format than the stream's starts a
    /// new stream. On error the wave is lost, nothing else: the caller logs the reason.
    pub fn wave(&mut self, input: Input, data: &[u8]) -> Result<(), AudioError> {
        self.counts.from_server += 1;
        self.news = true;
        if !self.stream_is(input) {
            self.start(input)?;
        }
        let before = self.queue.dropped();
        let result = match &mut self.stream {
            Some(Stream::Pcm(enc)) => enc.push(data, &mut self.queue).map(|_| ()),
            Some(Stream::Opus {
                channels: _,
                position_us,
            }) => pass_opus(&mut self.queue, self.session, position_us, data),
            None => Ok(()),
        };
        self.counts.dropped += self.queue.dropped() - before;
        result
    }

    /// The server closed its audio channel or renegotiated: the page plays out what it holds.
    pub fn stop(&mut self) {
        if self.stream.take().is_some() {
            self.stop_pending = true;
            self.news = true;
        }
    }

    /// Delay between a wave arriving and it being heard: what waits here, what the encoder
    /// holds, and what the page reported it holds. The server's wave confirmations add it.
    pub fn latency(&self) -> Duration {
        let held = match &self.stream {
            Some(Stream::Pcm(enc)) => {
                Duration::from_micros(enc.held_frames() as u64 * 1_000_000 / u64::from(OUTPUT_RATE))
            }
            _ => Duration::ZERO,
        };
        self.queue.queued() + held + self.browser_buffer
    }

    /// A new page took over the session (a resume): what waited for the old page is stale,
    /// and the new one needs an AudioStart before the stream's next packet.
    pub fn restart_for_new_page(&mut self) {
        let before = self.queue.dropped();
        self.queue.clear();
        self.counts.dropped += self.queue.dropped() - before;
        self.browser_buffer = Duration::ZERO;
        self.stop_pending = false;
        self.announce = match &self.stream {
            Some(Stream::Pcm(_)) => Some(super::OUTPUT_CHANNELS),
            Some(Stream::Opus { channels, .. }) => Some(u8::try_from(*channels).unwrap_or(2)),
            None => None,
        };
    }

    pub fn set_browser_buffer(&mut self, ms: u16) {
        self.browser_buffer = Duration::from_millis(u64::from(ms));
    }

    /// True when [`AudioPipeline::next_message`] has something.
    pub fn has_output(&self) -> bool {
        self.announce.is_some() || !self.queue.is_empty() || self.stop_pending
    }

    /// Lends the next message for the page to `send`: AudioStart first, then packets, then
    /// AudioStop.
    pub fn next_message<R>(&mut self, send: impl FnOnce(&[u8]) -> R) -> Option<R> {
        if let Some(channels) = self.announce.take() {
            let msg = ToBrowser::AudioStart {
                codec: AUDIO_CODEC_OPUS,
                sample_rate: OUTPUT_RATE,
                channels,
            };
            let mut buf = [0u8; 16];
            let n = msg.encode(&mut buf).ok()?;
            return Some(send(&buf[..n]));
        }
        if !self.queue.is_empty() {
            let r = self.queue.pop_with(send);
            if r.is_some() {
                self.counts.to_browser += 1;
            }
            return r;
        }
        if self.stop_pending {
            self.stop_pending = false;
            let mut buf = [0u8; 4];
            let n = ToBrowser::AudioStop.encode(&mut buf).ok()?;
            return Some(send(&buf[..n]));
        }
        None
    }

    pub fn take_counts(&mut self) -> AudioCounts {
        std::mem::take(&mut self.counts)
    }

    /// True once after anything arrived; the shell then writes what is waiting.
    pub fn take_news(&mut self) -> bool {
        std::mem::take(&mut self.news)
    }

    /// Packets dropped since the session began.
    pub fn dropped_total(&self) -> u64 {
        self.queue.dropped()
    }

    /// Sound waiting for the page.
    pub fn queued(&self) -> Duration {
        self.queue.queued()
    }

    fn stream_is(&self, input: Input) -> bool {
        match (&self.stream, input) {
            (Some(Stream::Pcm(enc)), Input::Pcm { rate, channels }) => {
                enc.input() == (rate, channels)
            }
            (Some(Stream::Opus { channels: c, .. }), Input::Opus { channels }) => *c == channels,
            _ => false,
        }
    }

    fn start(&mut self, input: Input) -> Result<(), AudioError> {
        // What waits of the old stream is stale once the format changes; its slots come back
        // before the new stream takes its own.
        let before = self.queue.dropped();
        self.queue.clear();
        self.counts.dropped += self.queue.dropped() - before;
        self.stream = None;
        let (stream, channels) = match input {
            Input::Pcm { rate, channels } => (
                Stream::Pcm(Box::new(PcmEncoder::new(
                    &self.share,
                    self.session,
                    &self.settings,
                    rate,
                    channels,
                )?)),
                super::OUTPUT_CHANNELS,
            ),
            Input::Opus { channels } => (
                Stream::Opus {
                    channels,
                    position_us: 0,
                },
                u8::try_from(channels).unwrap_or(2),
            ),
        };
        self.stream = Some(stream);
        self.announce = Some(channels);
        self.stop_pending = false;
        Ok(())
    }
}

/// Queues an Opus packet from the server as it came, after checking it is one.
fn pass_opus(
    queue: &mut AudioQueue,
    session: u64,
    position_us: &mut u64,
    data: &[u8],
) -> Result<(), AudioError> {
    if data.len() > MAX_PACKET {
        return Err(AudioError::OversizeOpus {
            session,
            len: data.len(),
        });
    }
    let samples =
        opus::packet::get_nb_samples(data, OUTPUT_RATE).map_err(|e| AudioError::BadOpus {
            session,
            why: e.to_string(),
        })?;
    let duration_us =
        u32::try_from(samples as u64 * 1_000_000 / u64::from(OUTPUT_RATE)).unwrap_or(u32::MAX);
    let timestamp_us = *position_us;
    *position_us += u64::from(duration_us);
    queue
        .push_with(timestamp_us, duration_us, data.len(), |out| {
            out[..data.len()].copy_from_slice(data);
            Ok::<_, AudioError>(data.len())
        })?
        .map(|_| ())
}

/// The session's pipeline, shared by the RDP channel that fills it and the session that
/// empties it. Both run on the session's core, one after the other, never at once; a borrow
/// that would overlap is refused (`None`), never a panic.
#[derive(Clone)]
pub struct AudioSink(Rc<RefCell<AudioPipeline>>);

impl AudioSink {
    pub fn new(pipeline: AudioPipeline) -> Self {
        AudioSink(Rc::new(RefCell::new(pipeline)))
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut AudioPipeline) -> R) -> Option<R> {
        self.0.try_borrow_mut().ok().map(|mut p| f(&mut p))
    }
}

impl std::fmt::Debug for AudioSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.try_borrow() {
            Ok(p) => f
                .debug_struct("AudioSink")
                .field("session", &p.session)
                .field("queued", &p.queue.queued())
                .field("dropped", &p.queue.dropped())
                .finish(),
            Err(_) => f.write_str("AudioSink(busy)"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use arena::{Arena, ArenaConfig, Pool};

    use crate::test_tone as tone;

    fn arena() -> Arena {
        Arena::new(&ArenaConfig::with_sessions(2)).unwrap()
    }

    fn pcm(freq: f64, rate: u32, channels: u16, secs: f64) -> Vec<u8> {
        let mut out = Vec::new();
        for s in tone::sine(freq, rate, secs, 0.3) {
            let v = (s * 32767.0) as i16;
            for _ in 0..channels {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    type Packets = Vec<(u64, u32, u32, Vec<u8>)>;

    /// Everything the page would get: (AudioStart channels, packets, AudioStop seen).
    fn drain(p: &mut AudioPipeline) -> (Vec<u8>, Packets, bool) {
        let mut starts = Vec::new();
        let mut packets = Vec::new();
        let mut stopped = false;
        while let Some(m) = p.next_message(|m| m.to_vec()) {
            match ToBrowser::decode(&m).unwrap() {
                ToBrowser::AudioStart {
                    codec,
                    sample_rate,
                    channels,
                } => {
                    assert_eq!((codec, sample_rate), (AUDIO_CODEC_OPUS, 48_000));
                    starts.push(channels);
                }
                ToBrowser::AudioPacket {
                    timestamp_us,
                    duration_us,
                    dropped,
                    data,
                } => packets.push((timestamp_us, duration_us, dropped, data.into_owned())),
                ToBrowser::AudioStop => stopped = true,
                other => panic!("{other:?}"),
            }
        }
        (starts, packets, stopped)
    }

    fn decode(packets: &[(u64, u32, u32, Vec<u8>)]) -> Vec<f32> {
        tone::opus_left(packets.iter().map(|p| p.3.as_slice()))
    }

    fn play(rate: u32, channels: u16, frame_ms: u64, wave_ms: u64) -> (Vec<u8>, Packets) {
        let a = arena();
        let share = Rc::new(a.admit().unwrap());
        let settings = AudioSettings {
            frame: Duration::from_millis(frame_ms),
            max_queue: Duration::from_secs(5),
            ..AudioSettings::default()
        };
        let mut p = AudioPipeline::new(share.clone(), 1, settings);
        let sound = pcm(440.0, rate, channels, 0.5);
        let wave = (rate as usize * wave_ms as usize / 1000) * 2 * usize::from(channels);
        let mut starts = Vec::new();
        let mut packets = Vec::new();
        for w in sound.chunks(wave) {
            p.wave(Input::Pcm { rate, channels }, w).unwrap();
            let (s, mut pk, _) = drain(&mut p);
            starts.extend(s);
            packets.append(&mut pk);
            assert!(share.in_use(Pool::AudioBuf) <= share.quota(Pool::AudioBuf));
        }
        (starts, packets)
    }

    #[test]
    fn pcm_at_48_khz_becomes_opus_at_the_same_pitch() {
        let (starts, packets) = play(48_000, 2, 20, 23);
        assert_eq!(starts, vec![2]);
        assert_eq!(packets.len(), 25, "0.5 s in 20 ms packets");
        for (i, (ts, dur, dropped, _)) in packets.iter().enumerate() {
            assert_eq!((*ts, *dur, *dropped), (i as u64 * 20_000, 20_000, 0));
        }
        let f = tone::dominant_frequency(&decode(&packets)[4800..], 48_000);
        assert!((f - 440.0).abs() < 440.0 * 0.01, "{f} Hz");
    }

    #[test]
    fn pcm_at_44_1_khz_is_resampled_not_decimated() {
        // Dropping samples to fit 48 kHz would play 440 Hz at 479 Hz.
        let (_, packets) = play(44_100, 2, 20, 37);
        assert_eq!(packets.len(), 25);
        let f = tone::dominant_frequency(&decode(&packets)[4800..], 48_000);
        assert!((f - 440.0).abs() < 440.0 * 0.01, "{f} Hz");
    }

    #[test]
    fn mono_and_ten_millisecond_frames() {
        let (starts, packets) = play(44_100, 1, 10, 10);
        assert_eq!(starts, vec![2]);
        assert_eq!(packets.len(), 50);
        assert!(packets.iter().all(|p| p.1 == 10_000));
        let f = tone::dominant_frequency(&decode(&packets)[4800..], 48_000);
        assert!((f - 440.0).abs() < 440.0 * 0.01, "{f} Hz");
    }

    #[test]
    fn opus_from_the_server_passes_through_untouched() {
        let a = arena();
        let share = Rc::new(a.admit().unwrap());
        let mut p = AudioPipeline::new(share, 1, AudioSettings::default());
        let mut enc =
            opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio).unwrap();
        let sound: Vec<i16> = pcm(880.0, 48_000, 2, 0.2)
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        let mut sent = Vec::new();
        for frame in sound.chunks_exact(1920) {
            let pkt = enc.encode_vec(frame, 1500).unwrap();
            p.wave(Input::Opus { channels: 2 }, &pkt).unwrap();
            sent.push(pkt);
        }
        let (starts, packets, _) = drain(&mut p);
        assert_eq!(starts, vec![2]);
        let got: Vec<Vec<u8>> = packets.iter().map(|p| p.3.clone()).collect();
        assert_eq!(got, sent);
        assert_eq!(packets[3].0, 60_000);
        let err = p.wave(Input::Opus { channels: 2 }, &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("opus packet from the server is invalid"),
            "{err}"
        );
        let err = p
            .wave(Input::Opus { channels: 2 }, &vec![0u8; MAX_PACKET + 1])
            .unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn a_new_format_restarts_the_stream_and_a_stop_follows_the_last_packet() {
        let a = arena();
        let share = Rc::new(a.admit().unwrap());
        let mut p = AudioPipeline::new(share.clone(), 1, AudioSettings::default());
        p.wave(
            Input::Pcm {
                rate: 48_000,
                channels: 2,
            },
            &pcm(440.0, 48_000, 2, 0.1),
        )
        .unwrap();
        // The page never read: the new stream makes those packets stale.
        p.wave(
            Input::Pcm {
                rate: 44_100,
                channels: 2,
            },
            &pcm(440.0, 44_100, 2, 0.1),
        )
        .unwrap();
        p.stop();
        let (starts, packets, stopped) = drain(&mut p);
        assert_eq!(starts, vec![2]);
        assert!(stopped);
        assert!(packets.len() >= 4, "{}", packets.len());
        assert_eq!(packets[0].0, 0);
        assert!(
            packets.iter().all(|p| p.2 == 5),
            "the 5 stale packets count as dropped"
        );
        assert_eq!(p.take_counts().dropped, 5);
        drop(p);
        assert_eq!(share.in_use(Pool::AudioBuf), 0);
    }

    #[test]
    fn bad_waves_are_refused_in_words() {
        let a = arena();
        let share = Rc::new(a.admit().unwrap());
        let mut p = AudioPipeline::new(share, 9, AudioSettings::default());
        let err = p
            .wave(
                Input::Pcm {
                    rate: 22_050,
                    channels: 2,
                },
                &[0; 8],
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "session 9: 22050 Hz, 2-channel PCM is not a format rdpwire accepted"
        );
        let err = p
            .wave(
                Input::Pcm {
                    rate: 48_000,
                    channels: 2,
                },
                &[0; 7],
            )
            .unwrap_err();
        assert!(err.to_string().contains("not a whole number"), "{err}");
    }

    #[test]
    fn latency_counts_the_queue_the_encoder_and_the_page() {
        let a = arena();
        let share = Rc::new(a.admit().unwrap());
        let mut p = AudioPipeline::new(share, 1, AudioSettings::default());
        p.wave(
            Input::Pcm {
                rate: 48_000,
                channels: 2,
            },
            &pcm(440.0, 48_000, 2, 0.05),
        )
        .unwrap();
        p.set_browser_buffer(40);
        // 50 ms in: 40 ms in two packets, 10 ms gathered, plus the page's 40 ms.
        assert_eq!(p.latency(), Duration::from_millis(90));
    }
}

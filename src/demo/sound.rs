//! The demo's sounds: what plays when (typed keys, the tune button, F9), synthesized as sine
//! waves and cut into 20 ms waves paced against the session clock. Pure apart from libopus:
//! the caller passes the time in, gets encoded waves out and reports Wave Confirms back.
//!
//! Pacing: a wave is handed out once its start is at most [`MAX_LEAD_MS`] − [`WAVE_MS`]
//! ahead of the clock, so sent audio never ends more than [`MAX_LEAD_MS`] ahead of real time.
//! At most [`MAX_WAVES_IN_FLIGHT`] waves wait for their Wave Confirm; beyond that nothing is
//! sent. Audio whose time has passed by more than [`MAX_LATE_MS`] is dropped instead of sent,
//! so a client that stops confirming (or a stalled session loop) never builds a backlog: when
//! it confirms again it hears what plays now, not what played then.

use std::collections::VecDeque;
use std::f64::consts::{PI, TAU};
use std::fmt;
use std::str::FromStr;

use ironrdp_rdpsnd::pdu::{AudioFormat, WaveFormat};

use super::painter::{in_tune_button, DesktopEvent};
use super::DemoError;

/// Length of one wave (one Wave PDU; one Opus packet).
pub const WAVE_MS: u64 = 20;
/// Sent audio never ends further than this ahead of the server clock.
pub const MAX_LEAD_MS: u64 = 100;
/// Waves sent and not yet confirmed before sending pauses. Clients confirm on receipt
/// (IronRDP, Windows) or after playing (FreeRDP), so this is the lead plus room for a
/// client's playback buffer and the round trip.
pub const MAX_WAVES_IN_FLIGHT: usize = 25;
/// Audio due longer ago than this is dropped rather than sent late.
pub const MAX_LATE_MS: u64 = 200;
/// Peak amplitude of one sound (full scale 1.0).
pub const AMPLITUDE: f32 = 0.3;
/// Length of a typed key's blip.
pub const BLIP_MS: u32 = 60;
/// The tune button's notes: (frequency in Hz, length in ms), played back to back.
pub const TUNE: [(f64, u32); 2] = [(440.0, 400), (880.0, 400)];
/// Frequency of the steady tone F9 turns on and off.
pub const TONE_HZ: f64 = 660.0;
/// Fade-in and fade-out of every sound: long enough to avoid clicks, short against a blip.
const FADE_MS: u32 = 5;
/// Sounds mixed at once; more key presses while this many sound are not heard.
const MAX_VOICES: usize = 16;
const OPUS_RATE: u32 = 48_000;
const OPUS_BITRATE: i32 = 96_000;
/// Far above what 20 ms at [`OPUS_BITRATE`] produce (libopus caps a frame at 1275 bytes).
const OPUS_MAX_PACKET: usize = 4000;
/// Lowest blip pitch; blips span two octaves up from it.
const BLIP_BASE_HZ: f64 = 330.0;

/// Which format the demo sends sound in (`rdpwire demo --audio-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DemoAudio {
    /// PCM 16-bit stereo at 44.1 kHz, what most Windows servers send.
    #[default]
    Pcm44,
    /// PCM 16-bit stereo at 48 kHz.
    Pcm48,
    /// Opus, 48 kHz stereo, one 20 ms packet per wave.
    Opus,
    /// No sound channel at all.
    Off,
}

impl DemoAudio {
    /// The option's values, as written on the command line.
    pub const NAMES: [&'static str; 4] = ["pcm44", "pcm48", "opus", "off"];

    pub fn as_str(self) -> &'static str {
        match self {
            DemoAudio::Pcm44 => "pcm44",
            DemoAudio::Pcm48 => "pcm48",
            DemoAudio::Opus => "opus",
            DemoAudio::Off => "off",
        }
    }

    /// Formats to send in, best first: the chosen one, then PCM (the same rate first).
    fn preference(self) -> Vec<AudioFormat> {
        match self {
            DemoAudio::Pcm44 => vec![pcm_format(44_100), pcm_format(48_000)],
            DemoAudio::Pcm48 => vec![pcm_format(48_000), pcm_format(44_100)],
            DemoAudio::Opus => vec![opus_format(), pcm_format(48_000), pcm_format(44_100)],
            DemoAudio::Off => Vec::new(),
        }
    }
}

impl fmt::Display for DemoAudio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DemoAudio {
    type Err = DemoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pcm44" => Ok(DemoAudio::Pcm44),
            "pcm48" => Ok(DemoAudio::Pcm48),
            "opus" => Ok(DemoAudio::Opus),
            "off" => Ok(DemoAudio::Off),
            other => Err(DemoError::AudioFormatName(other.to_owned())),
        }
    }
}

/// PCM, 16-bit stereo at `rate`.
pub fn pcm_format(rate: u32) -> AudioFormat {
    AudioFormat {
        format: WaveFormat::PCM,
        n_channels: 2,
        n_samples_per_sec: rate,
        n_avg_bytes_per_sec: rate * 4,
        n_block_align: 4,
        bits_per_sample: 16,
        data: None,
    }
}

/// Opus at 48 kHz stereo. For compressed formats negotiation compares every field, so this is
/// the shape IronRDP's own clients and servers use for Opus, byte for byte.
pub fn opus_format() -> AudioFormat {
    AudioFormat {
        format: WaveFormat::OPUS,
        n_channels: 2,
        n_samples_per_sec: OPUS_RATE,
        n_avg_bytes_per_sec: 192_000,
        n_block_align: 4,
        bits_per_sample: 16,
        data: None,
    }
}

/// What the server offers, whatever `--audio-format` says: the option only picks among
/// what the client accepts.
pub fn server_formats() -> Vec<AudioFormat> {
    vec![pcm_format(44_100), pcm_format(48_000), opus_format()]
}

/// Which of the formats both sides accept to send in: the position in `accepted`, or `None`
/// for no sound.
pub fn pick(choice: DemoAudio, accepted: &[&AudioFormat]) -> Option<usize> {
    choice.preference().iter().find_map(|wanted| {
        accepted
            .iter()
            .position(|f| f.matches_for_negotiation(wanted))
    })
}

/// How waves are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// 16-bit little-endian stereo PCM at this rate.
    Pcm { rate: u32 },
    /// One Opus packet per wave, 48 kHz stereo.
    Opus,
}

impl Codec {
    /// The codec for a negotiated format, if the demo can produce it.
    pub fn of(format: &AudioFormat) -> Option<Codec> {
        let stereo16 = format.n_channels == 2 && format.bits_per_sample == 16;
        match format.format {
            WaveFormat::PCM if stereo16 && matches!(format.n_samples_per_sec, 44_100 | 48_000) => {
                Some(Codec::Pcm {
                    rate: format.n_samples_per_sec,
                })
            }
            WaveFormat::OPUS if format.n_channels == 2 && format.n_samples_per_sec == OPUS_RATE => {
                Some(Codec::Opus)
            }
            _ => None,
        }
    }

    pub fn rate(self) -> u32 {
        match self {
            Codec::Pcm { rate } => rate,
            Codec::Opus => OPUS_RATE,
        }
    }

    /// Samples per channel in one wave (both rates divide evenly into 20 ms).
    fn wave_samples(self) -> usize {
        usize::try_from(u64::from(self.rate()) * WAVE_MS / 1000).unwrap_or(0)
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Codec::Pcm { rate } => write!(f, "pcm {rate} Hz"),
            Codec::Opus => write!(f, "opus {OPUS_RATE} Hz"),
        }
    }
}

/// Something the desktop plays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sound {
    /// A typed character: a [`BLIP_MS`] blip at [`blip_frequency`].
    Blip(char),
    /// The tune button: [`TUNE`].
    Tune,
    /// F9: the steady [`TONE_HZ`] tone starts, or stops if it is playing.
    ToggleTone,
}

impl Sound {
    /// The sound a desktop event makes, if any.
    pub fn for_event(event: DesktopEvent) -> Option<Sound> {
        match event {
            DesktopEvent::Char(c) => Some(Sound::Blip(c)),
            DesktopEvent::Click { x, y } if in_tune_button(x, y) => Some(Sound::Tune),
            DesktopEvent::ToggleTone => Some(Sound::ToggleTone),
            DesktopEvent::Click { .. } | DesktopEvent::Backspace | DesktopEvent::Enter => None,
        }
    }
}

/// A typed character's pitch: a semitone per code point, over two octaves from 330 Hz, so
/// neighbouring letters sound different.
pub fn blip_frequency(c: char) -> f64 {
    let semitone = f64::from(u32::from(c) % 24);
    BLIP_BASE_HZ * (semitone / 12.0).exp2()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VoiceKind {
    Blip,
    Tune,
    Tone,
}

/// One sound playing: notes back to back with a continuous phase (no click between notes),
/// faded in at the start and out at the end.
#[derive(Debug)]
struct Voice {
    kind: VoiceKind,
    /// (frequency in Hz, length in samples).
    notes: Vec<(f64, u64)>,
    note: usize,
    in_note: u64,
    /// Samples played so far.
    pos: u64,
    /// Where the voice has faded out; `u64::MAX` while a steady tone holds.
    end: u64,
    fade: u64,
    phase: f64,
    rate: f64,
}

impl Voice {
    fn new(kind: VoiceKind, notes: &[(f64, u32)], rate: u32) -> Voice {
        let samples = |ms: u32| u64::from(rate) * u64::from(ms) / 1000;
        let notes: Vec<(f64, u64)> = notes.iter().map(|&(f, ms)| (f, samples(ms))).collect();
        let end = if kind == VoiceKind::Tone {
            u64::MAX
        } else {
            notes.iter().map(|n| n.1).sum()
        };
        Voice {
            kind,
            notes,
            note: 0,
            in_note: 0,
            pos: 0,
            end,
            fade: samples(FADE_MS).max(1),
            phase: 0.0,
            rate: f64::from(rate),
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.end
    }

    /// A held tone fades out from here.
    fn release(&mut self) {
        self.end = self.end.min(self.pos.saturating_add(self.fade));
    }

    fn next_sample(&mut self) -> f32 {
        if self.done() {
            return 0.0;
        }
        let Some(&(freq, len)) = self.notes.get(self.note) else {
            return 0.0;
        };
        let ramp = |n: u64| {
            let x = (n as f64 / self.fade as f64).min(1.0);
            0.5 - 0.5 * (PI * x).cos()
        };
        let gain = ramp(self.pos) * ramp(self.end - self.pos);
        let sample = (gain * self.phase.sin()) as f32 * AMPLITUDE;
        self.phase = (self.phase + TAU * freq / self.rate) % TAU;
        self.pos += 1;
        self.in_note += 1;
        if self.in_note >= len && self.note + 1 < self.notes.len() {
            self.note += 1;
            self.in_note = 0;
        }
        sample
    }
}

/// The sounds playing now, mixed.
#[derive(Debug)]
struct Synth {
    rate: u32,
    voices: Vec<Voice>,
}

impl Synth {
    fn new(rate: u32) -> Synth {
        Synth {
            rate,
            voices: Vec::new(),
        }
    }

    fn active(&self) -> bool {
        !self.voices.is_empty()
    }

    fn tone_playing(&self) -> bool {
        self.voices
            .iter()
            .any(|v| v.kind == VoiceKind::Tone && v.end == u64::MAX)
    }

    fn trigger(&mut self, sound: Sound) {
        let voice = match sound {
            Sound::ToggleTone if self.tone_playing() => {
                for v in &mut self.voices {
                    if v.kind == VoiceKind::Tone {
                        v.release();
                    }
                }
                return;
            }
            Sound::ToggleTone => Voice::new(VoiceKind::Tone, &[(TONE_HZ, 0)], self.rate),
            Sound::Tune => Voice::new(VoiceKind::Tune, &TUNE, self.rate),
            Sound::Blip(c) => {
                Voice::new(VoiceKind::Blip, &[(blip_frequency(c), BLIP_MS)], self.rate)
            }
        };
        if self.voices.len() >= MAX_VOICES {
            tracing::trace!(
                voices = self.voices.len(),
                "too many sounds at once; one is skipped"
            );
            return;
        }
        self.voices.push(voice);
    }

    /// Mixes the next `out.len()` samples (mono) into `out`.
    fn render(&mut self, out: &mut [f32]) {
        for sample in out.iter_mut() {
            let mixed: f32 = self.voices.iter_mut().map(Voice::next_sample).sum();
            *sample = mixed.clamp(-1.0, 1.0);
        }
        self.voices.retain(|v| !v.done());
    }
}

/// One encoded wave and its timestamp: the server clock (ms since the session started) at
/// which it starts playing. The Wave PDU carries its low 16 bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    pub data: Vec<u8>,
    pub timestamp: u32,
}

/// What one [`AudioStream::pump`] produced.
#[derive(Debug, Default)]
pub struct Pumped {
    pub waves: Vec<Wave>,
    /// Waves dropped because their time had passed.
    pub dropped: u32,
}

/// What a Wave Confirm released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    /// Waves no longer in flight: the confirmed one and any sent before it.
    pub waves: usize,
    /// How long the client says it held the confirmed wave (its timestamp minus ours).
    pub held_ms: u16,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    block_no: u8,
    timestamp: u16,
}

/// One session's sound: the synthesizer, the wave clock, the encoder and the waves awaiting
/// their confirm.
#[derive(Debug)]
pub struct AudioStream {
    codec: Codec,
    synth: Synth,
    opus: Option<opus::Encoder>,
    /// Start of the next wave on the server clock (ms since the session started).
    next_wave_ms: u64,
    /// Silent waves still to send after the last sound ended: they flush the Opus encoder,
    /// whose lookahead still holds the end of the sound.
    tail: u32,
    in_flight: VecDeque<InFlight>,
    /// The block number of the next wave. `RdpsndServer` numbers waves the same way (from 0,
    /// one per wave sent), so confirms can be matched to what was sent.
    next_block: u8,
    mono: Vec<f32>,
}

impl AudioStream {
    pub fn new(codec: Codec) -> Result<AudioStream, DemoError> {
        let opus = match codec {
            Codec::Pcm { .. } => None,
            Codec::Opus => {
                let audio = |e: opus::Error| DemoError::Audio(format!("opus encoder: {e}"));
                let mut encoder =
                    opus::Encoder::new(OPUS_RATE, opus::Channels::Stereo, opus::Application::Audio)
                        .map_err(audio)?;
                encoder
                    .set_bitrate(opus::Bitrate::Bits(OPUS_BITRATE))
                    .map_err(audio)?;
                Some(encoder)
            }
        };
        Ok(AudioStream {
            codec,
            synth: Synth::new(codec.rate()),
            opus,
            next_wave_ms: 0,
            tail: 0,
            in_flight: VecDeque::with_capacity(MAX_WAVES_IN_FLIGHT),
            next_block: 0,
            mono: vec![0.0; codec.wave_samples()],
        })
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Whether there is sound to send (a sound playing, or the silent tail after one).
    pub fn playing(&self) -> bool {
        self.synth.active() || self.tail > 0
    }

    /// Waves sent and not yet confirmed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Starts `sound` with the next wave not yet sent.
    pub fn trigger(&mut self, sound: Sound, now_ms: u64) {
        if !self.playing() {
            // From silence the stream restarts at the present, never in the past and never
            // overlapping what was sent before.
            self.next_wave_ms = self.next_wave_ms.max(now_ms);
        }
        self.synth.trigger(sound);
    }

    /// When [`AudioStream::pump`] has a wave to send next (ms on the server clock), if it
    /// will: `None` when silent or waiting for confirms.
    pub fn next_due_ms(&self) -> Option<u64> {
        (self.playing() && self.in_flight.len() < MAX_WAVES_IN_FLIGHT)
            .then(|| self.next_wave_ms.saturating_sub(MAX_LEAD_MS - WAVE_MS))
    }

    /// The waves due at `now_ms`, in order. Each one handed out counts as sent.
    pub fn pump(&mut self, now_ms: u64) -> Result<Pumped, DemoError> {
        let mut out = Pumped::default();
        while self.playing() && self.next_wave_ms <= now_ms + (MAX_LEAD_MS - WAVE_MS) {
            let start = self.next_wave_ms;
            if start + WAVE_MS + MAX_LATE_MS <= now_ms {
                self.render();
                self.next_wave_ms += WAVE_MS;
                out.dropped += 1;
                continue;
            }
            if self.in_flight.len() >= MAX_WAVES_IN_FLIGHT {
                break;
            }
            self.render();
            let data = self.encode()?;
            self.next_wave_ms += WAVE_MS;
            // The server clock wraps after 49 days; the wire carries only the low 16 bits.
            let timestamp = (start % (1 << 32)) as u32;
            self.in_flight.push_back(InFlight {
                block_no: self.next_block,
                timestamp: (timestamp & 0xFFFF) as u16,
            });
            self.next_block = self.next_block.wrapping_add(1);
            out.waves.push(Wave { data, timestamp });
        }
        Ok(out)
    }

    /// A Wave Confirm: the wave sent under `block_no`, and every one sent before it, is done.
    /// `None` if no wave awaits that confirm (Windows and FreeRDP confirm each wave twice).
    pub fn confirm(&mut self, block_no: u8, timestamp: u16) -> Option<Confirmed> {
        let at = self.in_flight.iter().position(|w| w.block_no == block_no)?;
        let wave = self.in_flight.get(at).copied()?;
        self.in_flight.drain(..=at);
        Some(Confirmed {
            waves: at + 1,
            held_ms: timestamp.wrapping_sub(wave.timestamp),
        })
    }

    /// The next wave's samples into `self.mono`.
    fn render(&mut self) {
        if self.synth.active() {
            self.synth.render(&mut self.mono);
            if !self.synth.active() {
                self.tail = u32::from(self.opus.is_some());
            }
        } else {
            self.mono.fill(0.0);
            self.tail = self.tail.saturating_sub(1);
        }
    }

    fn encode(&mut self) -> Result<Vec<u8>, DemoError> {
        match self.opus.as_mut() {
            None => {
                let mut pcm = Vec::with_capacity(self.mono.len() * 4);
                for &s in &self.mono {
                    let v = (s * f32::from(i16::MAX)).round() as i16;
                    pcm.extend_from_slice(&v.to_le_bytes());
                    pcm.extend_from_slice(&v.to_le_bytes());
                }
                Ok(pcm)
            }
            Some(encoder) => {
                let stereo: Vec<f32> = self.mono.iter().flat_map(|&s| [s, s]).collect();
                encoder
                    .encode_vec_float(&stereo, OPUS_MAX_PACKET)
                    .map_err(|e| DemoError::Audio(format!("opus encode: {e}")))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::demo::painter::TUNE_BUTTON;

    fn pcm_samples(data: &[u8]) -> Vec<f32> {
        data.chunks_exact(4)
            .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
            .collect()
    }

    /// Zero crossings per second, a frequency estimate independent of the synthesizer.
    fn crossings_hz(samples: &[f32], rate: u32) -> f64 {
        let n = samples
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        n as f64 / 2.0 / (samples.len() as f64 / f64::from(rate))
    }

    /// Confirms everything sent so far (`sent` waves, numbered from 0).
    fn confirm_all(s: &mut AudioStream, sent: usize) {
        let last = u8::try_from((sent - 1) % 256).unwrap();
        assert!(s.confirm(last, 0).is_some());
    }

    #[test]
    fn the_option_parses_and_picks_among_accepted_formats() {
        for name in DemoAudio::NAMES {
            assert_eq!(name.parse::<DemoAudio>().unwrap().as_str(), name);
        }
        assert!("mp3".parse::<DemoAudio>().is_err());
        let (p44, p48, op) = (pcm_format(44_100), pcm_format(48_000), opus_format());
        assert_eq!(pick(DemoAudio::Pcm44, &[&p48, &p44]), Some(1));
        assert_eq!(pick(DemoAudio::Pcm48, &[&p44, &p48]), Some(1));
        assert_eq!(pick(DemoAudio::Opus, &[&p44, &op]), Some(1));
        // Fallbacks: any PCM the client accepted, the same rate first.
        assert_eq!(pick(DemoAudio::Pcm44, &[&op, &p48]), Some(1));
        assert_eq!(pick(DemoAudio::Opus, &[&p44, &p48]), Some(1));
        assert_eq!(pick(DemoAudio::Opus, &[&p44]), Some(0));
        assert_eq!(pick(DemoAudio::Pcm48, &[&op]), None);
        assert_eq!(pick(DemoAudio::Off, &[&p44]), None);
        // Every format offered is one the demo can encode.
        for f in server_formats() {
            assert!(Codec::of(&f).is_some(), "{f:?}");
        }
    }

    #[test]
    fn events_make_sounds() {
        let (x, y, w, h) = TUNE_BUTTON;
        let inside = DesktopEvent::Click {
            x: x + w / 2,
            y: y + h / 2,
        };
        assert_eq!(Sound::for_event(inside), Some(Sound::Tune));
        let outside = DesktopEvent::Click { x: x + w, y };
        assert_eq!(Sound::for_event(outside), None);
        assert_eq!(
            Sound::for_event(DesktopEvent::Char('a')),
            Some(Sound::Blip('a'))
        );
        assert_eq!(Sound::for_event(DesktopEvent::Enter), None);
        assert_ne!(blip_frequency('a'), blip_frequency('b'));
        assert!((330.0..1320.0).contains(&blip_frequency('😀')));
    }

    #[test]
    fn the_tune_is_440_then_880_hz_each_400_ms_in_real_time() {
        let mut s = AudioStream::new(Codec::Pcm { rate: 44_100 }).unwrap();
        s.trigger(Sound::Tune, 1000);
        // At once: the waves starting up to 80 ms ahead, so sent audio ends 100 ms ahead.
        let first = s.pump(1000).unwrap();
        assert_eq!(first.waves.len(), 5);
        assert_eq!(first.waves[0].timestamp, 1000);
        assert_eq!(first.waves[4].timestamp, 1080);
        assert_eq!(s.next_due_ms(), Some(1020));
        assert!(s.pump(1019).unwrap().waves.is_empty(), "not due yet");
        let mut waves = first.waves;
        let mut now = 1000;
        while s.playing() {
            now += 5;
            let p = s.pump(now).unwrap();
            for w in &p.waves {
                assert!(u64::from(w.timestamp) + WAVE_MS <= now + MAX_LEAD_MS);
            }
            if !p.waves.is_empty() {
                waves.extend(p.waves);
                confirm_all(&mut s, waves.len());
            }
        }
        assert_eq!(waves.len(), 40, "800 ms in 20 ms waves");
        for (i, w) in waves.iter().enumerate() {
            assert_eq!(w.timestamp, 1000 + 20 * i as u32);
            assert_eq!(w.data.len(), 882 * 4);
        }
        let samples: Vec<f32> = waves.iter().flat_map(|w| pcm_samples(&w.data)).collect();
        let (a, b) = samples.split_at(17_640);
        let peak = a.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!((0.29..0.31).contains(&peak), "{peak}");
        assert!((crossings_hz(&a[441..17_000], 44_100) - 440.0).abs() < 4.0);
        assert!((crossings_hz(&b[441..17_000], 44_100) - 880.0).abs() < 8.0);
        // Faded in and out: no click at either end.
        assert!(samples[0].abs() < 0.01 && samples[samples.len() - 1].abs() < 0.01);
        // No jump where the notes meet.
        let step = samples
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0f32, f32::max);
        assert!(step < 0.05, "largest step {step}");
    }

    #[test]
    fn blips_are_60_ms_and_the_tone_holds_until_toggled() {
        let mut s = AudioStream::new(Codec::Pcm { rate: 48_000 }).unwrap();
        s.trigger(Sound::Blip('a'), 0);
        let p = s.pump(0).unwrap();
        assert_eq!(p.waves.len(), 3);
        let samples: Vec<f32> = p.waves.iter().flat_map(|w| pcm_samples(&w.data)).collect();
        assert_eq!(samples.len(), 2880);
        let hz = crossings_hz(&samples[240..2640], 48_000);
        assert!(
            (hz - blip_frequency('a')).abs() < blip_frequency('a') * 0.03,
            "{hz}"
        );
        assert!(!s.playing());
        confirm_all(&mut s, 3);

        s.trigger(Sound::ToggleTone, 2000);
        let mut sent = 0;
        let mut now = 2000;
        while now < 12_000 {
            let p = s.pump(now).unwrap();
            sent += p.waves.len();
            if let Some(w) = p.waves.last() {
                let last = u8::try_from((3 + sent - 1) % 256).unwrap();
                assert!(s.confirm(last, (w.timestamp & 0xFFFF) as u16).is_some());
            }
            now += 10;
        }
        assert!(s.playing());
        assert!((495..=505).contains(&sent), "{sent} waves in 10 s");
        s.trigger(Sound::ToggleTone, now);
        let p = s.pump(now).unwrap();
        assert_eq!(p.waves.len(), 1, "fades out within the next wave");
        assert!(!s.playing());
    }

    #[test]
    fn no_confirms_stop_the_stream_and_late_audio_is_dropped() {
        let mut s = AudioStream::new(Codec::Pcm { rate: 44_100 }).unwrap();
        s.trigger(Sound::ToggleTone, 0);
        let mut sent = Vec::new();
        for now in (0..2000).step_by(10) {
            sent.extend(s.pump(now).unwrap().waves);
        }
        assert_eq!(sent.len(), MAX_WAVES_IN_FLIGHT);
        assert_eq!(s.next_due_ms(), None, "nothing to wake up for");
        // One late confirm (for a wave, not the last): the window moves by that much,
        // and what was due meanwhile is gone, not sent.
        assert_eq!(
            s.confirm(9, 250),
            Some(Confirmed {
                waves: 10,
                held_ms: 250 - 180
            })
        );
        assert!(
            s.confirm(9, 260).is_none(),
            "a second confirm is not counted"
        );
        let p = s.pump(3000).unwrap();
        assert_eq!(p.dropped, 51, "1780 ms to 2780 ms");
        assert_eq!(p.waves.len(), 10, "as many as were confirmed");
        assert_eq!(p.waves[0].timestamp, 2800, "at most MAX_LATE_MS late");
        assert_eq!(s.in_flight(), MAX_WAVES_IN_FLIGHT);
    }

    #[test]
    fn a_sound_after_silence_starts_now_and_never_overlaps() {
        let mut s = AudioStream::new(Codec::Pcm { rate: 44_100 }).unwrap();
        s.trigger(Sound::Blip('x'), 500);
        let p = s.pump(500).unwrap();
        assert_eq!(
            p.waves.iter().map(|w| w.timestamp).collect::<Vec<_>>(),
            [500, 520, 540]
        );
        // Right after: the next sound starts where the last one ended (still ahead of now).
        s.trigger(Sound::Blip('y'), 510);
        assert_eq!(s.pump(510).unwrap().waves[0].timestamp, 560);
        assert_eq!(s.pump(600).unwrap().waves.len(), 1);
        assert!(!s.playing());
        s.trigger(Sound::Blip('z'), 5000);
        assert_eq!(s.pump(5000).unwrap().waves[0].timestamp, 5000);
    }

    #[test]
    fn opus_waves_are_one_packet_of_20_ms_and_decode_to_the_tune() {
        let mut s = AudioStream::new(Codec::Opus).unwrap();
        s.trigger(Sound::Tune, 0);
        let mut waves = Vec::new();
        let mut now = 0;
        while s.playing() {
            let p = s.pump(now).unwrap();
            if !p.waves.is_empty() {
                waves.extend(p.waves);
                confirm_all(&mut s, waves.len());
            }
            now += 20;
        }
        assert_eq!(waves.len(), 41, "40 waves of tune and one silent tail");
        let mut decoder = opus::Decoder::new(48_000, opus::Channels::Stereo).unwrap();
        let mut left = Vec::new();
        for w in &waves {
            let mut out = vec![0f32; 5760 * 2];
            let n = decoder.decode_float(&w.data, &mut out, false).unwrap();
            assert_eq!(n, 960);
            left.extend(out[..n * 2].iter().step_by(2));
        }
        let hz = crossings_hz(&left[2000..18_000], 48_000);
        assert!((hz - 440.0).abs() < 5.0, "{hz}");
        let hz = crossings_hz(&left[21_500..37_500], 48_000);
        assert!((hz - 880.0).abs() < 9.0, "{hz}");
    }
}

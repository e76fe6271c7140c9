//! PCM from the server to Opus packets: gathered into whole Opus frames in an audio slot,
//! resampled to 48 kHz on the way when the server sends 44.1 kHz, encoded straight into the
//! queue's slot.

use std::rc::Rc;

use arena::{AudioBuf, Pool, SessionShare, Slot};
use rubato::audioadapter_buffers::number_to_float::InterleavedNumbers;
use rubato::audioadapter_buffers::sample::I16_LE;
use rubato::{Fft, FixedSync, Resampler};

use super::{AudioError, AudioQueue, AudioSettings, MAX_ENCODED, OUTPUT_RATE};

/// Bytes per stereo 16-bit frame.
const FRAME_BYTES: usize = 4;
/// Most samples (both channels) in one Opus frame: 20 ms at 48 kHz.
const MAX_FRAME_SAMPLES: usize = 960 * 2;

/// 44.1 kHz → 48 kHz in the smallest blocks the ratio allows (147 → 160 frames, 3.3 ms): the
/// FFT resampler is synchronous, so its ratio is exact — a tone keeps its pitch, where
/// dropping or repeating samples would shift it by 9 % — and small blocks keep its state at
/// 17 KB and its delay under 2 ms.
struct Resample {
    fft: Fft<f32>,
    /// Input-rate stereo PCM waiting for a whole chunk.
    pending: Slot<AudioBuf>,
    pending_frames: usize,
    chunk_in: usize,
    chunk_out: usize,
}

pub struct PcmEncoder {
    session: u64,
    input_rate: u32,
    input_channels: u16,
    /// 48 kHz frames per Opus packet.
    frame: usize,
    /// 48 kHz stereo PCM gathered for the next packet.
    gathered: Slot<AudioBuf>,
    gathered_frames: usize,
    resample: Option<Resample>,
    opus: opus::Encoder,
    /// 48 kHz frames encoded so far: the stream position of the next packet.
    position: u64,
}

impl PcmEncoder {
    pub fn new(
        share: &Rc<SessionShare>,
        session: u64,
        settings: &AudioSettings,
        rate: u32,
        channels: u16,
    ) -> Result<Self, AudioError> {
        let unsupported = AudioError::Unsupported {
            session,
            rate,
            channels,
        };
        if !matches!(channels, 1 | 2) || !super::Input::PCM_RATES.contains(&rate) {
            return Err(unsupported);
        }
        let frame = usize::try_from(
            u128::from(OUTPUT_RATE) * settings.frame.as_micros().clamp(10_000, 20_000) / 1_000_000,
        )
        .unwrap_or(960);
        let need = frame * FRAME_BYTES;
        let slot = share.slot_size(Pool::AudioBuf);
        if need > slot {
            return Err(AudioError::SlotTooSmall {
                session,
                slot,
                need,
            });
        }
        let no_slot = || AudioError::NoSlot {
            session,
            quota: share.quota(Pool::AudioBuf),
        };
        let gathered = share.alloc::<AudioBuf>().ok_or_else(no_slot)?;
        let resample = if rate == OUTPUT_RATE {
            None
        } else {
            // The greatest common divisor of the two rates sets the smallest exact block.
            let chunk_in = rate as usize / gcd(rate, OUTPUT_RATE) as usize;
            let fft = Fft::<f32>::new(
                rate as usize,
                OUTPUT_RATE as usize,
                chunk_in,
                2,
                FixedSync::Both,
            )
            .map_err(|e| AudioError::Resampler {
                session,
                why: e.to_string(),
            })?;
            let chunk_out = fft.output_frames_next();
            if frame % chunk_out != 0 || fft.input_frames_next() * FRAME_BYTES > slot {
                return Err(AudioError::Resampler {
                    session,
                    why: format!(
                        "{rate} Hz chunks of {} frames do not fit {frame}-frame packets",
                        fft.input_frames_next()
                    ),
                });
            }
            Some(Resample {
                chunk_in: fft.input_frames_next(),
                chunk_out,
                fft,
                pending: share.alloc::<AudioBuf>().ok_or_else(no_slot)?,
                pending_frames: 0,
            })
        };
        let encoder_err = |e: opus::Error| AudioError::Encoder {
            session,
            why: e.to_string(),
        };
        let mut opus = opus::Encoder::new(
            OUTPUT_RATE,
            opus::Channels::Stereo,
            opus::Application::Audio,
        )
        .map_err(encoder_err)?;
        let bitrate = i32::try_from(settings.bitrate).unwrap_or(64_000);
        opus.set_bitrate(opus::Bitrate::Bits(bitrate))
            .map_err(encoder_err)?;
        opus.set_complexity(i32::from(settings.complexity.min(10)))
            .map_err(encoder_err)?;
        Ok(PcmEncoder {
            session,
            input_rate: rate,
            input_channels: channels,
            frame,
            gathered,
            gathered_frames: 0,
            resample,
            opus,
            position: 0,
        })
    }

    pub fn input(&self) -> (u32, u16) {
        (self.input_rate, self.input_channels)
    }

    /// Sound taken but not yet in a packet, as a duration at the output rate.
    pub fn held_frames(&self) -> usize {
        let pending = self.resample.as_ref().map_or(0, |r| {
            r.pending_frames * OUTPUT_RATE as usize / self.input_rate as usize
        });
        self.gathered_frames + pending
    }

    /// Takes one wave; every whole frame gathered becomes a packet in `queue`. Returns the
    /// packets encoded and the packets the queue dropped to make room.
    pub fn push(
        &mut self,
        pcm: &[u8],
        queue: &mut AudioQueue,
    ) -> Result<(usize, usize), AudioError> {
        let width = 2 * usize::from(self.input_channels);
        if pcm.len() % width != 0 {
            return Err(AudioError::RaggedPcm {
                session: self.session,
                len: pcm.len(),
                channels: self.input_channels,
            });
        }
        let mut counts = (0, 0);
        let mut rest = pcm;
        while !rest.is_empty() {
            let (target, at, room) = match &mut self.resample {
                Some(r) => (
                    &mut r.pending,
                    r.pending_frames,
                    r.chunk_in - r.pending_frames,
                ),
                None => (
                    &mut self.gathered,
                    self.gathered_frames,
                    self.frame - self.gathered_frames,
                ),
            };
            let take = room.min(rest.len() / width);
            let (now, later) = rest.split_at(take * width);
            stereo_into(
                now,
                self.input_channels,
                &mut target[at * FRAME_BYTES..(at + take) * FRAME_BYTES],
            );
            rest = later;
            match &mut self.resample {
                Some(r) => {
                    r.pending_frames += take;
                    if r.pending_frames == r.chunk_in {
                        self.resample_chunk()?;
                    }
                }
                None => self.gathered_frames += take,
            }
            if self.gathered_frames >= self.frame {
                let dropped = self.encode(queue)?;
                counts.0 += 1;
                counts.1 += dropped;
            }
        }
        Ok(counts)
    }

    fn resample_chunk(&mut self) -> Result<(), AudioError> {
        let session = self.session;
        let err = |why: String| AudioError::Resampler { session, why };
        let Some(r) = &mut self.resample else {
            return Ok(());
        };
        let at = self.gathered_frames * FRAME_BYTES;
        let end = at + r.chunk_out * FRAME_BYTES;
        let input = InterleavedNumbers::<&[I16_LE], f32>::new_from_bytes(
            &r.pending[..r.chunk_in * FRAME_BYTES],
            2,
            r.chunk_in,
        )
        .map_err(|e| err(e.to_string()))?;
        let mut output = InterleavedNumbers::<&mut [I16_LE], f32>::new_from_bytes_mut(
            &mut self.gathered[at..end],
            2,
            r.chunk_out,
        )
        .map_err(|e| err(e.to_string()))?;
        let (_, produced) = r
            .fft
            .process_into_buffer(&input, &mut output, None)
            .map_err(|e| err(e.to_string()))?;
        r.pending_frames = 0;
        self.gathered_frames += produced;
        Ok(())
    }

    fn encode(&mut self, queue: &mut AudioQueue) -> Result<usize, AudioError> {
        let mut pcm = [0i16; MAX_FRAME_SAMPLES];
        let samples = self.frame * 2;
        for (s, b) in pcm[..samples]
            .iter_mut()
            .zip(self.gathered[..samples * 2].chunks_exact(2))
        {
            *s = i16::from_le_bytes([b[0], b[1]]);
        }
        self.gathered_frames = 0;
        let timestamp_us = self.position * 1_000_000 / u64::from(OUTPUT_RATE);
        let duration_us = u32::try_from(self.frame as u64 * 1_000_000 / u64::from(OUTPUT_RATE))
            .unwrap_or(u32::MAX);
        self.position += self.frame as u64;
        let opus = &mut self.opus;
        match queue.push_with(timestamp_us, duration_us, MAX_ENCODED, |out| {
            opus.encode(&pcm[..samples], out)
        })? {
            Ok(dropped) => Ok(dropped),
            Err(e) => Err(AudioError::Encoder {
                session: self.session,
                why: e.to_string(),
            }),
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Copies 16-bit PCM into stereo frames: stereo as it is, mono on both channels.
fn stereo_into(src: &[u8], channels: u16, dst: &mut [u8]) {
    if channels == 2 {
        dst.copy_from_slice(src);
        return;
    }
    for (s, d) in src.chunks_exact(2).zip(dst.chunks_exact_mut(FRAME_BYTES)) {
        d[..2].copy_from_slice(s);
        d[2..].copy_from_slice(s);
    }
}

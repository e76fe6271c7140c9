//! Tone analysis for audio tests: which frequency dominates a stretch of samples, and the
//! sequence of tones in a recording. Independent of the code under test (a Goertzel scan, not
//! the gateway's resampler or codec), so a wrong sample rate or dropped samples show up as a
//! wrong frequency. Also the one Opus decoding the tests do (libopus, as a page would).
#![allow(dead_code, clippy::unwrap_used)]

/// Power of `freq` in `samples` (Goertzel).
pub fn power(samples: &[f32], rate: u32, freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// Root mean square of `samples`.
pub fn rms(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    (sum / samples.len() as f64).sqrt()
}

/// The strongest frequency between 50 Hz and 8 kHz: a 5 Hz scan, then a 0.1 Hz refinement
/// around the best bin. Give it at least ~40 ms of signal for a resolution well under 1 %.
pub fn dominant_frequency(samples: &[f32], rate: u32) -> f64 {
    let scan = |from: f64, to: f64, step: f64| {
        let mut best = (from, f64::MIN);
        let mut f = from;
        while f <= to {
            let p = power(samples, rate, f);
            if p > best.1 {
                best = (f, p);
            }
            f += step;
        }
        best.0
    };
    let coarse = scan(50.0, 8000.0, 5.0);
    scan((coarse - 10.0).max(1.0), coarse + 10.0, 0.1)
}

/// One stretch of a recording where a tone sounds.
#[derive(Debug, Clone, Copy)]
pub struct Tone {
    /// First sample of the stretch.
    pub start: usize,
    /// Samples in the stretch.
    pub len: usize,
    pub freq: f64,
}

/// Splits a recording into tones: windows of `window` samples louder than `threshold` RMS,
/// grouped while the dominant frequency stays within 3 %; each group's frequency is measured
/// over its whole length (minus the edges, where codecs smear onsets).
pub fn tones(samples: &[f32], rate: u32, window: usize, threshold: f64) -> Vec<Tone> {
    let mut out: Vec<Tone> = Vec::new();
    let mut current: Option<(usize, usize, f64)> = None;
    let mut at = 0;
    while at + window <= samples.len() {
        let w = &samples[at..at + window];
        let loud = rms(w) >= threshold;
        let f = if loud {
            dominant_frequency(w, rate)
        } else {
            0.0
        };
        current = match (current, loud) {
            (Some((start, len, f0)), true) if (f - f0).abs() / f0 < 0.03 => {
                Some((start, len + window, f0))
            }
            (prev, _) => {
                if let Some((start, len, _)) = prev {
                    out.push(measure(samples, rate, start, len));
                }
                loud.then_some((at, window, f))
            }
        };
        at += window;
    }
    if let Some((start, len, _)) = current {
        out.push(measure(samples, rate, start, len));
    }
    out
}

fn measure(samples: &[f32], rate: u32, start: usize, len: usize) -> Tone {
    let edge = (len / 8).min(rate as usize / 100);
    let body = &samples[start + edge..start + len - edge];
    Tone {
        start,
        len,
        freq: dominant_frequency(body, rate),
    }
}

/// The left channel of Opus packets decoded at 48 kHz, stereo, in order.
pub fn opus_left<'a>(packets: impl IntoIterator<Item = &'a [u8]>) -> Vec<f32> {
    let mut dec = opus::Decoder::new(48_000, opus::Channels::Stereo).unwrap();
    let mut buf = vec![0f32; 5760 * 2];
    let mut left = Vec::new();
    for p in packets {
        let n = dec.decode_float(p, &mut buf, false).unwrap();
        left.extend(buf[..n * 2].iter().step_by(2));
    }
    left
}

/// A sine of `freq` Hz, `secs` long, at `amplitude` (full scale 1.0).
pub fn sine(freq: f64, rate: u32, secs: f64, amplitude: f32) -> Vec<f32> {
    let n = (secs * f64::from(rate)) as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            amplitude * (2.0 * std::f64::consts::PI * freq * t).sin() as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_tone_sequence_and_its_order() {
        let mut s = sine(440.0, 48_000, 0.3, 0.5);
        s.extend(vec![0.0; 4800]);
        s.extend(sine(880.0, 48_000, 0.3, 0.5));
        let t = tones(&s, 48_000, 960, 0.05);
        assert_eq!(t.len(), 2, "{t:?}");
        assert!((t[0].freq - 440.0).abs() < 1.0, "{t:?}");
        assert!((t[1].freq - 880.0).abs() < 1.0, "{t:?}");
    }
}

//! H.264 (AVC420) encoding of desktop frames with OpenH264, built from source.
//!
//! Colour: MS-RDPEGFX (3.3.8.3.1) has AVC420 clients convert with full-range BT.709, so
//! frames are converted from RGB that way (with the `yuv` crate), and the stream's VUI says
//! so too, for decoders that read it (browsers' WebCodecs behind the gateway).

use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, QpRange,
    RateControlMode, UsageType, VuiConfig,
};
use openh264::formats::YUVSlices;
use openh264::{OpenH264API, Timestamp};
use yuv::{BufferStoreMut, YuvConversionMode, YuvPlanarImageMut, YuvRange, YuvStandardMatrix};

use super::DemoError;

/// Frames per second the demo aims for.
pub const FPS: u32 = 25;

/// How an encoder is tuned: the live desktop's screen content, or a reel's fixed rate.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub usage: UsageType,
    /// Target bitrate of OpenH264's rate control.
    pub bitrate_bps: u32,
    pub fps: u32,
    /// Frames from one IDR frame to the next.
    pub intra_period: u32,
    /// Let the rate control drop frames to hold the bitrate (a dropped frame is an empty
    /// access unit). A reel wants every frame, so it says no.
    pub skip_frames: bool,
    /// Quantization parameter range (lower is finer).
    pub qp: (u8, u8),
    /// Let OpenH264 insert an IDR frame where the picture changes completely. A reel keeps
    /// its key frames where its profile says.
    pub scene_change_detect: bool,
}

impl Tuning {
    /// The live demo desktop: screen content at roughly 4 bits per pixel per second, within
    /// [1, 16] Mbit/s, [`FPS`] frames per second, an IDR frame every 10 s.
    pub fn desktop(width: u16, height: u16) -> Self {
        let pixels = usize::from(width) * usize::from(height);
        Tuning {
            usage: UsageType::ScreenContentRealTime,
            bitrate_bps: u32::try_from(pixels * 4)
                .unwrap_or(u32::MAX)
                .clamp(1_000_000, 16_000_000),
            fps: FPS,
            intra_period: FPS * 10,
            // OpenH264 only holds a bitrate by skipping frames; a skipped frame is not sent.
            skip_frames: true,
            qp: (10, 36),
            scene_change_detect: true,
        }
    }
}

/// One encoder per session (or per reel); input is RGBA with even dimensions.
pub struct H264 {
    encoder: Encoder,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
    width: usize,
    height: usize,
}

impl H264 {
    /// An encoder for desktop frames of `width`×`height` (both even, at most 3840×2160).
    pub fn new(width: u16, height: u16) -> Result<Self, DemoError> {
        Self::tuned(width, height, Tuning::desktop(width, height))
    }

    /// An encoder for frames of `width`×`height` (both even, at most 3840×2160).
    pub fn tuned(width: u16, height: u16, tuning: Tuning) -> Result<Self, DemoError> {
        let (w, h) = (usize::from(width), usize::from(height));
        if w == 0 || h == 0 || w % 2 != 0 || h % 2 != 0 || w.max(h) > 3840 || w.min(h) > 2160 {
            return Err(DemoError::Encoder(format!(
                "unsupported frame size {width}x{height}"
            )));
        }
        let config = EncoderConfig::new()
            .usage_type(tuning.usage)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(tuning.bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(tuning.fps as f32))
            .skip_frames(tuning.skip_frames)
            .adaptive_quantization(false)
            .background_detection(false)
            .qp(QpRange::new(tuning.qp.0, tuning.qp.1))
            .scene_change_detect(tuning.scene_change_detect)
            .complexity(Complexity::Low)
            .intra_frame_period(IntraFramePeriod::from_num_frames(tuning.intra_period))
            .num_threads(1)
            .vui(VuiConfig::bt709().full_range(true));
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| DemoError::Encoder(format!("cannot create the openh264 encoder: {e}")))?;
        Ok(Self {
            encoder,
            y: vec![0; w * h],
            u: vec![0; w * h / 4],
            v: vec![0; w * h / 4],
            width: w,
            height: h,
        })
    }

    /// Encodes one RGBA frame (`width*height*4` bytes) to an Annex B access unit.
    pub fn encode(&mut self, rgba: &[u8]) -> Result<Vec<u8>, DemoError> {
        self.encode_at(rgba, 0)
    }

    /// [`H264::encode`] with the frame's time in ms, which OpenH264's rate control uses to
    /// hold a bitrate over frames that are not encoded in real time.
    pub fn encode_at(&mut self, rgba: &[u8], timestamp_ms: u64) -> Result<Vec<u8>, DemoError> {
        if rgba.len() != self.width * self.height * 4 {
            return Err(DemoError::Encoder(format!(
                "frame has {} bytes, expected {}",
                rgba.len(),
                self.width * self.height * 4
            )));
        }
        let (w, h) = (self.width, self.height);
        let dim = |v: usize| {
            u32::try_from(v).map_err(|_| DemoError::Encoder("frame too large".to_owned()))
        };
        let mut planar = YuvPlanarImageMut {
            y_plane: BufferStoreMut::Borrowed(&mut self.y),
            y_stride: dim(w)?,
            u_plane: BufferStoreMut::Borrowed(&mut self.u),
            u_stride: dim(w / 2)?,
            v_plane: BufferStoreMut::Borrowed(&mut self.v),
            v_stride: dim(w / 2)?,
            width: dim(w)?,
            height: dim(h)?,
        };
        yuv::rgba_to_yuv420(
            &mut planar,
            rgba,
            dim(w * 4)?,
            YuvRange::Full,
            YuvStandardMatrix::Bt709,
            YuvConversionMode::Balanced,
        )
        .map_err(|e| DemoError::Encoder(format!("rgb to yuv conversion failed: {e}")))?;
        let source = YUVSlices::new((&self.y, &self.u, &self.v), (w, h), (w, w / 2, w / 2));
        let bitstream = self
            .encoder
            .encode_at(&source, Timestamp::from_millis(timestamp_ms))
            .map_err(|e| DemoError::Encoder(format!("openh264 encode failed: {e}")))?;
        Ok(bitstream.to_vec())
    }

    /// The next frame is an IDR frame (a fresh decoder can start there).
    pub fn force_key_frame(&mut self) {
        self.encoder.force_intra_frame();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// NAL unit types of an Annex B stream.
    fn nal_types(stream: &[u8]) -> Vec<u8> {
        let mut types = Vec::new();
        let mut i = 0;
        while i + 3 < stream.len() {
            if stream[i..i + 3] == [0, 0, 1] {
                types.push(stream[i + 3] & 0x1f);
                i += 3;
            }
            i += 1;
        }
        types
    }

    #[test]
    fn first_frame_is_idr_with_parameter_sets_and_rejects_bad_sizes() {
        assert!(H264::new(15, 16).is_err());
        assert!(H264::new(3856, 16).is_err());
        let mut enc = H264::new(64, 48).unwrap();
        let frame = vec![128u8; 64 * 48 * 4];
        let first = enc.encode(&frame).unwrap();
        let types = nal_types(&first);
        assert!(
            types.contains(&7) && types.contains(&8) && types.contains(&5),
            "{types:?}"
        );
        let second = enc.encode(&frame).unwrap();
        assert!(!nal_types(&second).contains(&5));
        enc.force_key_frame();
        let third = enc.encode(&frame).unwrap();
        assert!(nal_types(&third).contains(&5));
        assert!(enc.encode(&frame[4..]).is_err());
    }

    /// What an MS-RDPEGFX client does: full-range BT.709 YUV to RGB.
    fn bt709_full(y: u8, u: u8, v: u8) -> [u8; 3] {
        let (y, u, v) = (f32::from(y), f32::from(u) - 128.0, f32::from(v) - 128.0);
        let c = |x: f32| x.round().clamp(0.0, 255.0) as u8;
        [
            c(y + 1.5748 * v),
            c(y - 0.1873 * u - 0.4681 * v),
            c(y + 1.8556 * u),
        ]
    }

    #[test]
    fn colours_survive_as_full_range_bt709() {
        use openh264::formats::YUVSource as _;
        let (w, h) = (64usize, 64usize);
        let colours: [[u8; 3]; 4] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]];
        let mut frame = vec![0u8; w * h * 4];
        for (i, px) in frame.chunks_exact_mut(4).enumerate() {
            let quadrant = usize::from((i % w) >= w / 2) + 2 * usize::from((i / w) >= h / 2);
            px[..3].copy_from_slice(&colours[quadrant]);
            px[3] = 255;
        }
        let mut enc = H264::new(64, 64).unwrap();
        let stream = enc.encode(&frame).unwrap();
        let mut dec = openh264::decoder::Decoder::new().unwrap();
        let yuv = dec.decode(&stream).unwrap().unwrap();
        let (ys, us, _) = yuv.strides();
        for (q, want) in colours.iter().enumerate() {
            let (x, y) = ((q % 2) * w / 2 + w / 4, (q / 2) * h / 2 + h / 4);
            let got = bt709_full(
                yuv.y()[y * ys + x],
                yuv.u()[y / 2 * us + x / 2],
                yuv.v()[y / 2 * us + x / 2],
            );
            for (g, want) in got.iter().zip(want) {
                assert!(
                    g.abs_diff(*want) <= 12,
                    "quadrant {q}: {got:?} for {want:?}"
                );
            }
        }
    }
}

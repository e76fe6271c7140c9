//! H.264 (AVC420) encoding of desktop frames with OpenH264, built from source.

use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, QpRange,
    RateControlMode, UsageType,
};
use openh264::formats::{RgbaSliceU8, YUVBuffer};
use openh264::OpenH264API;

use super::DemoError;

/// Frames per second the demo aims for.
pub const FPS: u32 = 25;

/// One encoder per session; input is RGBA with even dimensions.
pub struct H264 {
    encoder: Encoder,
    yuv: YUVBuffer,
    width: usize,
    height: usize,
}

impl H264 {
    /// An encoder for frames of `width`×`height` (both even, at most 3840×2160).
    pub fn new(width: u16, height: u16) -> Result<Self, DemoError> {
        let (w, h) = (usize::from(width), usize::from(height));
        if w == 0 || h == 0 || w % 2 != 0 || h % 2 != 0 || w.max(h) > 3840 || w.min(h) > 2160 {
            return Err(DemoError::Encoder(format!(
                "unsupported frame size {width}x{height}"
            )));
        }
        // Screen content at roughly 4 bits per pixel per second, within [1, 16] Mbit/s.
        let bps = u32::try_from(w * h * 4)
            .unwrap_or(u32::MAX)
            .clamp(1_000_000, 16_000_000);
        let config = EncoderConfig::new()
            .usage_type(UsageType::ScreenContentRealTime)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(bps))
            .max_frame_rate(FrameRate::from_hz(25.0))
            // OpenH264 only holds a bitrate by skipping frames; a skipped frame is not sent.
            .skip_frames(true)
            .adaptive_quantization(false)
            .background_detection(false)
            .qp(QpRange::new(10, 36))
            .complexity(Complexity::Low)
            .intra_frame_period(IntraFramePeriod::from_num_frames(FPS * 10))
            .num_threads(1);
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| DemoError::Encoder(format!("cannot create the openh264 encoder: {e}")))?;
        Ok(Self {
            encoder,
            yuv: YUVBuffer::new(w, h),
            width: w,
            height: h,
        })
    }

    /// Encodes one RGBA frame (`width*height*4` bytes) to an Annex B access unit.
    pub fn encode(&mut self, rgba: &[u8]) -> Result<Vec<u8>, DemoError> {
        if rgba.len() != self.width * self.height * 4 {
            return Err(DemoError::Encoder(format!(
                "frame has {} bytes, expected {}",
                rgba.len(),
                self.width * self.height * 4
            )));
        }
        self.yuv
            .read_rgba8(RgbaSliceU8::new(rgba, (self.width, self.height)));
        let bitstream = self
            .encoder
            .encode(&self.yuv)
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
}

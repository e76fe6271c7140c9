//! A tiny H.264 writer for tests: pictures made of I_PCM macroblocks (raw samples, so the
//! decoded colours are exact up to the YUV→RGB conversion) in Baseline, Main or High
//! profile, Annex B, one access unit per call. Key frames are SPS + PPS + IDR; delta frames
//! are P slices that skip every macroblock except the ones repainted.
//!
//! Samples are full-range BT.709, as RDP servers encode AVC420 (MS-RDPEGFX 3.3.8.3.1). What
//! the SPS's VUI says about colour is a choice ([`Vui`]): real servers differ, and the page
//! must show the same colours whatever it says. Every VUI written carries
//! `max_num_reorder_frames = 0` (as x264's low-latency streams do), except [`Vui::Absent`].
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Baseline,
    Main,
    High,
}

impl Profile {
    fn idc(self) -> u8 {
        match self {
            Profile::Baseline => 66,
            Profile::Main => 77,
            Profile::High => 100,
        }
    }

    /// constraint_set flags: constrained Baseline (set0+set1), Main (set1), High (none).
    fn constraints(self) -> u8 {
        match self {
            Profile::Baseline => 0xc0,
            Profile::Main => 0x40,
            Profile::High => 0x00,
        }
    }
}

/// The colour signalling in the SPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vui {
    /// No VUI at all.
    Absent,
    /// A VUI without video_signal_type (FreeRDP's x264 streams).
    NoColour,
    /// BT.709, limited range: wrong for the samples, as some servers say.
    Limited,
    /// BT.709, full range: right (the demo desktop's OpenH264 streams).
    Full,
}

/// Level 3.1.
const LEVEL: u8 = 31;
const LOG2_MAX_FRAME_NUM: u32 = 4;

struct Bits {
    out: Vec<u8>,
    acc: u8,
    n: u32,
}

impl Bits {
    fn new() -> Bits {
        Bits {
            out: Vec::new(),
            acc: 0,
            n: 0,
        }
    }

    fn bit(&mut self, b: bool) {
        self.acc = (self.acc << 1) | u8::from(b);
        self.n += 1;
        if self.n == 8 {
            self.out.push(self.acc);
            self.acc = 0;
            self.n = 0;
        }
    }

    fn u(&mut self, bits: u32, v: u32) {
        for i in (0..bits).rev() {
            self.bit((v >> i) & 1 == 1);
        }
    }

    /// Exp-Golomb ue(v).
    fn ue(&mut self, v: u32) {
        let x = v + 1;
        let len = 32 - x.leading_zeros();
        self.u(len - 1, 0);
        self.u(len, x);
    }

    fn se(&mut self, v: i32) {
        let m = if v > 0 {
            2 * v as u32 - 1
        } else {
            (-2 * v) as u32
        };
        self.ue(m);
    }

    fn aligned(&self) -> bool {
        self.n == 0
    }

    fn align_zero(&mut self) {
        while !self.aligned() {
            self.bit(false);
        }
    }

    fn bytes(&mut self, b: &[u8]) {
        assert!(self.aligned());
        self.out.extend_from_slice(b);
    }

    /// rbsp_trailing_bits: a one, then zeros to the byte boundary.
    fn finish(mut self) -> Vec<u8> {
        self.bit(true);
        self.align_zero();
        self.out
    }
}

/// Start code, NAL header, RBSP with emulation prevention.
fn nal(out: &mut Vec<u8>, ref_idc: u8, nal_type: u8, rbsp: &[u8]) {
    out.extend_from_slice(&[0, 0, 0, 1, (ref_idc << 5) | nal_type]);
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
}

/// Full-range BT.709 (MS-RDPEGFX 3.3.8.3.1).
pub fn yuv(rgb: [u8; 3]) -> [u8; 3] {
    let [r, g, b] = rgb.map(|c| f64::from(c) / 255.0);
    let (kr, kb) = (0.2126, 0.0722);
    let y = kr * r + (1.0 - kr - kb) * g + kb * b;
    let cb = (b - y) / (2.0 * (1.0 - kb));
    let cr = (r - y) / (2.0 * (1.0 - kr));
    let q = |v: f64| v.round().clamp(0.0, 255.0) as u8;
    [q(255.0 * y), q(128.0 + 255.0 * cb), q(128.0 + 255.0 * cr)]
}

pub struct Encoder {
    pub vui: Vui,
    profile: Profile,
    mbs_w: u32,
    mbs_h: u32,
    frame_num: u32,
    idr_id: u32,
}

impl Encoder {
    /// `width` and `height` in pixels, multiples of 16.
    pub fn new(profile: Profile, width: u32, height: u32) -> Encoder {
        assert!(width % 16 == 0 && height % 16 == 0 && width > 0 && height > 0);
        Encoder {
            vui: Vui::Full,
            profile,
            mbs_w: width / 16,
            mbs_h: height / 16,
            frame_num: 0,
            idr_id: 0,
        }
    }

    /// The WebCodecs codec string a page should derive from this stream's SPS.
    pub fn codec(&self) -> String {
        format!(
            "avc1.{:02X}{:02X}{:02X}",
            self.profile.idc(),
            self.profile.constraints(),
            LEVEL
        )
    }

    fn sps(&self) -> Vec<u8> {
        let mut b = Bits::new();
        b.u(8, u32::from(self.profile.idc()));
        b.u(8, u32::from(self.profile.constraints()));
        b.u(8, u32::from(LEVEL));
        b.ue(0); // seq_parameter_set_id
        if self.profile == Profile::High {
            b.ue(1); // chroma_format_idc 4:2:0
            b.ue(0); // bit_depth_luma_minus8
            b.ue(0); // bit_depth_chroma_minus8
            b.bit(false); // qpprime_y_zero_transform_bypass_flag
            b.bit(false); // seq_scaling_matrix_present_flag
        }
        b.ue(LOG2_MAX_FRAME_NUM - 4);
        b.ue(2); // pic_order_cnt_type 2: output order is decode order
        b.ue(1); // max_num_ref_frames
        b.bit(false); // gaps_in_frame_num_value_allowed_flag
        b.ue(self.mbs_w - 1);
        b.ue(self.mbs_h - 1);
        b.bit(true); // frame_mbs_only_flag
        b.bit(true); // direct_8x8_inference_flag
        b.bit(false); // frame_cropping_flag
        if self.vui == Vui::Absent {
            b.bit(false); // vui_parameters_present_flag
            return b.finish();
        }
        b.bit(true); // vui_parameters_present_flag
        b.bit(false); // aspect_ratio_info_present_flag
        b.bit(false); // overscan_info_present_flag
        if self.vui == Vui::NoColour {
            b.bit(false); // video_signal_type_present_flag
        } else {
            b.bit(true); // video_signal_type_present_flag
            b.u(3, 5); // video_format: unspecified
            b.bit(self.vui == Vui::Full); // video_full_range_flag
            b.bit(true); // colour_description_present_flag
            b.u(8, 1); // colour_primaries BT.709
            b.u(8, 1); // transfer_characteristics BT.709
            b.u(8, 1); // matrix_coefficients BT.709
        }
        b.bit(false); // chroma_loc_info_present_flag
        b.bit(true); // timing_info_present_flag, as x264 writes it
        b.u(32, 1); // num_units_in_tick
        b.u(32, 60); // time_scale
        b.bit(false); // fixed_frame_rate_flag
        b.bit(false); // nal_hrd_parameters_present_flag
        b.bit(false); // vcl_hrd_parameters_present_flag
        b.bit(false); // pic_struct_present_flag
        b.bit(true); // bitstream_restriction_flag
        b.bit(true); // motion_vectors_over_pic_boundaries_flag
        b.ue(0); // max_bytes_per_pic_denom
        b.ue(0); // max_bits_per_mb_denom
        b.ue(16); // log2_max_mv_length_horizontal
        b.ue(16); // log2_max_mv_length_vertical
        b.ue(0); // max_num_reorder_frames
        b.ue(1); // max_dec_frame_buffering
        b.finish()
    }

    fn pps(&self) -> Vec<u8> {
        let mut b = Bits::new();
        b.ue(0); // pic_parameter_set_id
        b.ue(0); // seq_parameter_set_id
        b.bit(false); // entropy_coding_mode_flag: CAVLC
        b.bit(false); // bottom_field_pic_order_in_frame_present_flag
        b.ue(0); // num_slice_groups_minus1
        b.ue(0); // num_ref_idx_l0_default_active_minus1
        b.ue(0); // num_ref_idx_l1_default_active_minus1
        b.bit(false); // weighted_pred_flag
        b.u(2, 0); // weighted_bipred_idc
        b.se(0); // pic_init_qp_minus26
        b.se(0); // pic_init_qs_minus26
        b.se(0); // chroma_qp_index_offset
        b.bit(true); // deblocking_filter_control_present_flag
        b.bit(false); // constrained_intra_pred_flag
        b.bit(false); // redundant_pic_cnt_present_flag
        b.finish()
    }

    /// The raw samples of macroblock (`mx`, `my`): 256 Y, 64 Cb, 64 Cr.
    fn pcm(&self, mx: u32, my: u32, paint: &dyn Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let (x0, y0) = (mx * 16, my * 16);
        let mut out = Vec::with_capacity(384);
        for y in 0..16 {
            for x in 0..16 {
                out.push(yuv(paint(x0 + x, y0 + y))[0]);
            }
        }
        for plane in 1..3 {
            for cy in 0..8 {
                for cx in 0..8 {
                    let mut sum = 0u32;
                    for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                        sum += u32::from(yuv(paint(x0 + cx * 2 + dx, y0 + cy * 2 + dy))[plane]);
                    }
                    out.push(((sum + 2) / 4) as u8);
                }
            }
        }
        out
    }

    fn macroblock(
        &self,
        b: &mut Bits,
        mb_type: u32,
        mx: u32,
        my: u32,
        paint: &dyn Fn(u32, u32) -> [u8; 3],
    ) {
        b.ue(mb_type);
        b.align_zero(); // pcm_alignment_zero_bit
        b.bytes(&self.pcm(mx, my, paint));
    }

    /// SPS + PPS + an IDR picture whose pixel (x, y) is `paint(x, y)` (RGB).
    pub fn key_frame(&mut self, paint: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let mut au = Vec::new();
        nal(&mut au, 3, 7, &self.sps());
        nal(&mut au, 3, 8, &self.pps());
        let mut b = Bits::new();
        b.ue(0); // first_mb_in_slice
        b.ue(7); // slice_type: I, all slices of the picture
        b.ue(0); // pic_parameter_set_id
        b.u(LOG2_MAX_FRAME_NUM, 0); // frame_num
        b.ue(self.idr_id); // idr_pic_id
        b.bit(false); // no_output_of_prior_pics_flag
        b.bit(false); // long_term_reference_flag
        b.se(0); // slice_qp_delta
        b.ue(1); // disable_deblocking_filter_idc: off
        for my in 0..self.mbs_h {
            for mx in 0..self.mbs_w {
                self.macroblock(&mut b, 25, mx, my, &paint); // I_PCM
            }
        }
        nal(&mut au, 3, 5, &b.finish());
        self.idr_id = (self.idr_id + 1) % 16;
        self.frame_num = 0;
        au
    }

    /// A P picture: the macroblocks for which `changed(mx, my)` holds are repainted with
    /// `paint`, every other one is skipped (stays as it was).
    pub fn delta_frame(
        &mut self,
        changed: impl Fn(u32, u32) -> bool,
        paint: impl Fn(u32, u32) -> [u8; 3],
    ) -> Vec<u8> {
        self.frame_num = (self.frame_num + 1) % (1 << LOG2_MAX_FRAME_NUM);
        let mut b = Bits::new();
        b.ue(0); // first_mb_in_slice
        b.ue(5); // slice_type: P, all slices of the picture
        b.ue(0); // pic_parameter_set_id
        b.u(LOG2_MAX_FRAME_NUM, self.frame_num);
        b.bit(false); // num_ref_idx_active_override_flag
        b.bit(false); // ref_pic_list_modification_flag_l0
        b.bit(false); // adaptive_ref_pic_marking_mode_flag
        b.se(0); // slice_qp_delta
        b.ue(1); // disable_deblocking_filter_idc: off
        let mut skipped = 0;
        for my in 0..self.mbs_h {
            for mx in 0..self.mbs_w {
                if changed(mx, my) {
                    b.ue(skipped); // mb_skip_run
                    skipped = 0;
                    self.macroblock(&mut b, 5 + 25, mx, my, &paint); // I_PCM in a P slice
                } else {
                    skipped += 1;
                }
            }
        }
        if skipped > 0 {
            b.ue(skipped);
        }
        let mut au = Vec::new();
        nal(&mut au, 2, 1, &b.finish());
        au
    }
}

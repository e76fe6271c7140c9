// Rewrites the colour signalling of an H.264 sequence parameter set (SPS) so the browser
// converts AVC420 pictures the way MS-RDPEGFX 3.3.8.3.1 says: full-range BT.709.
//
// Why: browsers take the YUV→RGB conversion from the stream's VUI, and a VideoDecoder
// config's `colorSpace` does not override a VUI that has one. RDP servers encode full-range
// BT.709 but do not all say so (FreeRDP's x264 streams say limited range, so near-black and
// near-white clip and colours shift). Only the VUI's video_signal_type changes; every other
// bit of the SPS is copied as it was.

class BitReader {
  constructor(bytes) {
    this.bytes = bytes;
    this.pos = 0; // in bits
  }
  bit() {
    const byte = this.bytes[this.pos >> 3];
    if (byte === undefined) throw new Error("SPS ends early");
    const b = (byte >> (7 - (this.pos & 7))) & 1;
    this.pos++;
    return b;
  }
  u(n) {
    let v = 0;
    for (let i = 0; i < n; i++) v = v * 2 + this.bit();
    return v;
  }
  ue() {
    let zeros = 0;
    while (this.bit() === 0) {
      if (++zeros > 31) throw new Error("bad Exp-Golomb code in SPS");
    }
    return 2 ** zeros - 1 + this.u(zeros);
  }
  se() {
    const k = this.ue();
    return k % 2 === 1 ? (k + 1) / 2 : -k / 2;
  }
}

class BitWriter {
  constructor() {
    this.out = [];
    this.acc = 0;
    this.n = 0;
  }
  bit(b) {
    this.acc = (this.acc << 1) | b;
    if (++this.n === 8) {
      this.out.push(this.acc);
      this.acc = 0;
      this.n = 0;
    }
  }
  u(n, v) {
    for (let i = n - 1; i >= 0; i--) this.bit(Math.floor(v / 2 ** i) % 2);
  }
  ue(v) {
    const x = v + 1;
    const len = Math.floor(Math.log2(x)) + 1;
    this.u(len - 1, 0);
    this.u(len, x);
  }
  se(v) {
    this.ue(v > 0 ? 2 * v - 1 : -2 * v);
  }
  // rbsp_trailing_bits: a one, then zeros to the byte boundary.
  finish() {
    this.bit(1);
    while (this.n !== 0) this.bit(0);
    return this.out;
  }
}

// NAL payload → RBSP: drops the emulation-prevention 0x03 after every 00 00.
function unescape(payload) {
  const out = [];
  let zeros = 0;
  for (const b of payload) {
    if (zeros >= 2 && b === 3) {
      zeros = 0;
      continue;
    }
    out.push(b);
    zeros = b === 0 ? zeros + 1 : 0;
  }
  return Uint8Array.from(out);
}

// RBSP → NAL payload: an 0x03 before any 00–03 byte that follows 00 00.
function escape(rbsp) {
  const out = [];
  let zeros = 0;
  for (const b of rbsp) {
    if (zeros >= 2 && b <= 3) {
      out.push(3);
      zeros = 0;
    }
    out.push(b);
    zeros = b === 0 ? zeros + 1 : 0;
  }
  return out;
}

// Profiles whose SPS carries chroma format, bit depths and scaling matrices.
const HIGH_PROFILES = new Set([100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135]);

const BT709 = 1;
const VIDEO_FORMAT_UNSPECIFIED = 5;

// Bit position of the rbsp_stop_one_bit: the last 1 bit of the RBSP.
function stopBit(rbsp) {
  for (let i = rbsp.length - 1; i >= 0; i--) {
    if (rbsp[i] !== 0) {
      let bit = 7;
      while (((rbsp[i] >> (7 - bit)) & 1) === 0) bit--;
      return i * 8 + bit;
    }
  }
  throw new Error("SPS has no stop bit");
}

// The SPS NAL unit (header byte included, no start code) with its VUI saying full-range
// BT.709; returns `nal` itself when it says so already. Throws on an SPS it cannot parse.
export function withFullRangeBt709(nal) {
  const rbsp = unescape(nal.subarray(1));
  const r = new BitReader(rbsp);
  const w = new BitWriter();
  const copy = (n) => w.u(n, r.u(n));
  const copyUe = () => { const v = r.ue(); w.ue(v); return v; };
  const copySe = () => w.se(r.se());

  const profile = r.u(8);
  w.u(8, profile);
  copy(16); // constraint flags, level_idc
  copyUe(); // seq_parameter_set_id
  if (HIGH_PROFILES.has(profile)) {
    const chroma = copyUe();
    if (chroma === 3) copy(1); // separate_colour_plane_flag
    copyUe(); // bit_depth_luma_minus8
    copyUe(); // bit_depth_chroma_minus8
    copy(1); // qpprime_y_zero_transform_bypass_flag
    const matrices = r.u(1);
    w.u(1, matrices);
    if (matrices) {
      for (let i = 0; i < (chroma !== 3 ? 8 : 12); i++) {
        const present = r.u(1);
        w.u(1, present);
        if (!present) continue;
        // scaling_list(): delta_scale values until one makes nextScale 0.
        const size = i < 6 ? 16 : 64;
        let last = 8;
        let next = 8;
        for (let j = 0; j < size && next !== 0; j++) {
          const delta = r.se();
          w.se(delta);
          next = (last + delta + 256) % 256;
          if (next !== 0) last = next;
        }
      }
    }
  }
  copyUe(); // log2_max_frame_num_minus4
  const pocType = copyUe();
  if (pocType === 0) {
    copyUe(); // log2_max_pic_order_cnt_lsb_minus4
  } else if (pocType === 1) {
    copy(1); // delta_pic_order_always_zero_flag
    copySe(); // offset_for_non_ref_pic
    copySe(); // offset_for_top_to_bottom_field
    const n = copyUe(); // num_ref_frames_in_pic_order_cnt_cycle
    for (let i = 0; i < n; i++) copySe();
  }
  copyUe(); // max_num_ref_frames
  copy(1); // gaps_in_frame_num_value_allowed_flag
  copyUe(); // pic_width_in_mbs_minus1
  copyUe(); // pic_height_in_map_units_minus1
  const frameMbsOnly = r.u(1);
  w.u(1, frameMbsOnly);
  if (!frameMbsOnly) copy(1); // mb_adaptive_frame_field_flag
  copy(1); // direct_8x8_inference_flag
  const cropping = r.u(1);
  w.u(1, cropping);
  if (cropping) for (let i = 0; i < 4; i++) copyUe();

  const writeSignal = () => {
    w.u(1, 1); // video_signal_type_present_flag
    w.u(3, VIDEO_FORMAT_UNSPECIFIED);
    w.u(1, 1); // video_full_range_flag
    w.u(1, 1); // colour_description_present_flag
    w.u(8, BT709); // colour_primaries
    w.u(8, BT709); // transfer_characteristics
    w.u(8, BT709); // matrix_coefficients
  };

  const stop = stopBit(rbsp);
  const vui = r.u(1);
  w.u(1, 1);
  if (!vui) {
    // A VUI of only the colour signalling; everything else absent, as before.
    w.u(2, 0); // aspect_ratio_info_present_flag, overscan_info_present_flag
    writeSignal();
    w.u(5, 0); // chroma_loc_info, timing_info, nal_hrd, vcl_hrd, pic_struct present flags
    w.u(1, 0); // bitstream_restriction_flag
  } else {
    const aspect = r.u(1);
    w.u(1, aspect);
    if (aspect) {
      const idc = r.u(8);
      w.u(8, idc);
      if (idc === 255) copy(32); // sar_width, sar_height
    }
    const overscan = r.u(1);
    w.u(1, overscan);
    if (overscan) copy(1);
    if (r.u(1)) {
      const format = r.u(3);
      const full = r.u(1);
      const described = r.u(1);
      const colours = described ? [r.u(8), r.u(8), r.u(8)] : null;
      if (full && colours && colours.every((c) => c === BT709)) return nal; // says so already
      w.u(1, 1);
      w.u(3, format);
      w.u(1, 1);
      w.u(1, 1);
      w.u(8, BT709);
      w.u(8, BT709);
      w.u(8, BT709);
    } else {
      writeSignal();
    }
    // The rest of the VUI (timing, HRD, bitstream restriction) as it was.
    while (r.pos < stop) w.bit(r.bit());
  }
  return Uint8Array.from([nal[0], ...escape(w.finish())]);
}

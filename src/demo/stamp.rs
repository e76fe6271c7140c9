//! Send stamps inside H.264 access units, for measuring how long a frame spends in the gateway.
//!
//! The replay server ([`super::Content::Replay`]) puts the time it hands a frame to its socket
//! into the access unit itself, as an SEI NAL unit (`user_data_unregistered`, payload type 5)
//! in front of the picture. The gateway forwards access units untouched, so a client in the same
//! process reads the stamp back with [`read`] and subtracts it from [`now_ns`]: the frame's
//! residence time from server send to browser receipt, on one clock.
//!
//! Layout (all of it [`SEI_LEN`] bytes, always the same size, so a reel can be sized to the
//! byte): start code `00 00 00 01`, NAL header `0x06` (SEI, nal_ref_idc 0), payload type 5,
//! payload size 26, the 16-byte [`UUID`], the stamp in ten bytes of 7 bits each, least
//! significant first, every byte with its top bit set, and the RBSP stop bit `0x80`. No byte of
//! the payload is zero, so no `00 00` ever appears: the NAL needs no emulation prevention and
//! cannot be mistaken for a start code. Decoders skip user data they do not know (H.264
//! D.2.7), and an SEI may precede the SPS and the first slice of an access unit (7.4.1.2.3).

use std::sync::OnceLock;
use std::time::Instant;

/// Identifies rdpwire's stamp among other `user_data_unregistered` messages (a random UUID,
/// chosen without zero bytes).
pub const UUID: [u8; 16] = [
    0x72, 0x64, 0x70, 0x77, 0x69, 0x72, 0x65, 0x2d, 0x9b, 0x3e, 0x4c, 0xa1, 0xd5, 0x57, 0xe6, 0x0f,
];
/// Bytes the stamp adds to an access unit.
pub const SEI_LEN: usize = START_CODE.len() + 3 + PAYLOAD_LEN + 1;

const START_CODE: [u8; 4] = [0, 0, 0, 1];
const NAL_SEI: u8 = 6;
const NAL_AUD: u8 = 9;
const SEI_USER_DATA_UNREGISTERED: u8 = 5;
const STAMP_BYTES: usize = 10;
const PAYLOAD_LEN: usize = UUID.len() + STAMP_BYTES;
const RBSP_STOP: u8 = 0x80;

/// Nanoseconds since a process-wide epoch (the first call): the one clock that the replay
/// server's stamps and a client's receipt times share.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The SEI NAL unit (start code included) that carries `stamp`.
pub fn sei(stamp: u64) -> [u8; SEI_LEN] {
    let mut out = [0u8; SEI_LEN];
    let header = [NAL_SEI, SEI_USER_DATA_UNREGISTERED, PAYLOAD_LEN as u8];
    let stamp_bytes: [u8; STAMP_BYTES] =
        std::array::from_fn(|i| 0x80 | ((stamp >> (7 * i)) & 0x7f) as u8);
    let parts: [&[u8]; 5] = [&START_CODE, &header, &UUID, &stamp_bytes, &[RBSP_STOP]];
    let mut at = 0;
    for part in parts {
        if let Some(dst) = out.get_mut(at..at + part.len()) {
            dst.copy_from_slice(part);
        }
        at += part.len();
    }
    out
}

/// `au` with a stamp SEI for `stamp` inserted: first, or right after a leading access unit
/// delimiter (which must stay first).
pub fn stamped(au: &[u8], stamp: u64) -> Vec<u8> {
    let mut units = nal_units(au);
    let at = match units.next() {
        Some((0, nal)) if nal.first().map(|h| h & 0x1f) == Some(NAL_AUD) => {
            units.next().map_or(au.len(), |(start, _)| start)
        }
        _ => 0,
    };
    let (head, tail) = au.split_at(at.min(au.len()));
    let mut out = Vec::with_capacity(au.len() + SEI_LEN);
    out.extend_from_slice(head);
    out.extend_from_slice(&sei(stamp));
    out.extend_from_slice(tail);
    out
}

/// The send stamp the replay server put in this access unit, if any. Only the NAL units before
/// the first slice are looked at (an SEI may not follow it), so this is cheap even for a large
/// access unit.
pub fn read(au: &[u8]) -> Option<u64> {
    for (_, nal) in nal_units(au) {
        let nal_type = nal.first()? & 0x1f;
        if (1..=5).contains(&nal_type) {
            return None;
        }
        if nal_type == NAL_SEI {
            if let Some(stamp) = stamp_in_sei(nal.get(1..)?) {
                return Some(stamp);
            }
        }
    }
    None
}

/// Walks the SEI messages of one SEI NAL payload (after its header byte). Other messages may
/// contain emulation prevention bytes; they are skipped by their declared sizes, which is
/// exact enough to find ours (it is always the first in its NAL as written here).
fn stamp_in_sei(mut rest: &[u8]) -> Option<u64> {
    while rest.first().is_some_and(|&b| b != RBSP_STOP) {
        let (payload_type, after) = sei_number(rest)?;
        let (size, after) = sei_number(after)?;
        let payload = after.get(..size)?;
        if payload_type == usize::from(SEI_USER_DATA_UNREGISTERED)
            && size == PAYLOAD_LEN
            && payload.get(..UUID.len()) == Some(&UUID[..])
        {
            let bytes = payload.get(UUID.len()..)?;
            let mut stamp = 0u64;
            for (i, b) in bytes.iter().enumerate() {
                stamp |= u64::from(b & 0x7f) << (7 * i);
            }
            return Some(stamp);
        }
        rest = after.get(size..)?;
    }
    None
}

/// An SEI payload type or size: 0xFF bytes each add 255, the last byte ends the number.
fn sei_number(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut value = 0usize;
    for (i, &b) in bytes.iter().enumerate() {
        value += usize::from(b);
        if b != 0xff {
            return Some((value, bytes.get(i + 1..)?));
        }
    }
    None
}

/// Where the next start code (`00 00 01`) at or after `from` begins (the 4-byte form counts
/// from its leading zero).
fn next_start_code(au: &[u8], from: usize) -> Option<usize> {
    let i = au.get(from..)?.windows(3).position(|w| w == [0, 0, 1])? + from;
    Some(if i > from && au.get(i - 1) == Some(&0) {
        i - 1
    } else {
        i
    })
}

/// NAL units of an Annex B byte stream: where each one's start code begins, and the NAL unit
/// without its start code (trailing zero bytes belong to the next start code).
pub fn nal_units(au: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut pos = next_start_code(au, 0);
    std::iter::from_fn(move || {
        let start = pos?;
        let body = start
            + if au.get(start..start + 4) == Some(&START_CODE) {
                4
            } else {
                3
            };
        let next = next_start_code(au, body);
        pos = next;
        let mut end = next.unwrap_or(au.len());
        while end > body && au.get(end - 1) == Some(&0) {
            end -= 1;
        }
        Some((start, au.get(body..end).unwrap_or_default()))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::demo::encoder::H264;

    fn types(au: &[u8]) -> Vec<u8> {
        nal_units(au).map(|(_, n)| n[0] & 0x1f).collect()
    }

    /// A real OpenH264 key frame and the P-frame after it (64×48, a moving square).
    fn two_frames() -> (Vec<u8>, Vec<u8>) {
        let mut enc = H264::new(64, 48).unwrap();
        let mut frame = vec![90u8; 64 * 48 * 4];
        let key = enc.encode(&frame).unwrap();
        for y in 10..20 {
            for x in 20..30 {
                frame[(y * 64 + x) * 4..][..3].copy_from_slice(&[250, 10, 10]);
            }
        }
        let p = enc.encode(&frame).unwrap();
        (key, p)
    }

    #[test]
    fn stamps_round_trip_and_have_no_zero_pairs() {
        let (key, p) = two_frames();
        for stamp in [
            0,
            1,
            127,
            128,
            0x0000_0100_0000_0000,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let sei = sei(stamp);
            assert_eq!(sei.len(), SEI_LEN);
            assert!(
                !sei[4..].windows(2).any(|w| w == [0, 0]),
                "a zero pair in {sei:?}"
            );
            for au in [&key, &p] {
                let s = stamped(au, stamp);
                assert_eq!(s.len(), au.len() + SEI_LEN);
                assert_eq!(read(&s), Some(stamp));
            }
        }
        let now = now_ns();
        assert!(now_ns() >= now);
    }

    #[test]
    fn read_finds_nothing_without_our_sei() {
        let (key, p) = two_frames();
        assert_eq!(read(&key), None);
        assert_eq!(read(&p), None);
        assert_eq!(read(&[]), None);
        assert_eq!(read(&[0, 0, 1]), None);
        // Someone else's user data (x264 writes its version string this way), and a truncated
        // SEI, are not stamps.
        let mut foreign = vec![0, 0, 0, 1, 6, 5, 20];
        foreign.extend_from_slice(&[0x11; 16]);
        foreign.extend_from_slice(b"x264");
        foreign.push(0x80);
        assert_eq!(read(&foreign), None);
        let cut = &stamped(&p, 42)[..SEI_LEN - 5];
        assert_eq!(read(cut), None);
        // A stamp after the first slice does not count (an SEI cannot be there).
        let mut late = p.clone();
        late.extend_from_slice(&sei(7));
        assert_eq!(read(&late), None);
        // Behind a foreign SEI message in the same NAL, and behind an SPS, it is found.
        let mut behind = vec![0, 0, 0, 1, 6, 5, 20];
        behind.extend_from_slice(&[0x11; 16]);
        behind.extend_from_slice(b"x264");
        behind.extend_from_slice(&[5, 26]);
        behind.extend_from_slice(&sei(9)[7..]);
        behind.extend_from_slice(&p);
        assert_eq!(read(&behind), Some(9));
    }

    #[test]
    fn the_sei_keeps_annex_b_framing_and_the_pictures() {
        let (key, p) = two_frames();
        let (sk, sp) = (stamped(&key, 123_456_789), stamped(&p, 987_654_321));
        assert_eq!(types(&sk), [&[6u8][..], &types(&key)].concat());
        assert_eq!(types(&sp), [&[6u8][..], &types(&p)].concat());
        let sei_nal = nal_units(&sk).next().unwrap().1;
        assert_eq!(sei_nal.len(), SEI_LEN - 4);
        // After an access unit delimiter the stamp goes second.
        let mut with_aud = vec![0, 0, 0, 1, 9, 0xf0];
        with_aud.extend_from_slice(&p);
        let s = stamped(&with_aud, 5);
        assert_eq!(types(&s)[..2], [9, 6]);
        assert_eq!(read(&s), Some(5));
        // OpenH264 decodes the stamped stream to the same pictures as the plain one.
        let decode = |aus: [&[u8]; 2]| {
            let mut dec = openh264::decoder::Decoder::new().unwrap();
            aus.map(|au| {
                use openh264::formats::YUVSource as _;
                let yuv = dec.decode(au).unwrap().unwrap();
                yuv.y().to_vec()
            })
        };
        assert_eq!(decode([&key, &p]), decode([&sk, &sp]));
    }
}

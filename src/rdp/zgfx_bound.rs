//! How many bytes a ZGFX message (MS-RDPEGFX 2.2.5) decompresses to, counted before it is
//! decompressed.
//!
//! `ironrdp_graphics::zgfx::Decompressor` stops a segment at 64 MiB and a message at 256 MiB:
//! bounds against running out of memory, far above a session's share. A match token's length
//! is exponentially coded, so a few bytes of a compressed segment can ask for megabytes, and
//! neither the wire size nor the multipart header's `uncompressedSize` (which the server
//! writes) bounds the output. So the tokens are walked here first, exactly as the decompressor
//! reads them but writing nothing, and a message whose output would pass the caller's limit
//! is refused before a byte of it is produced. Input the decompressor would refuse as
//! malformed ends the walk with what was counted so far: the decompressor then fails at the
//! same place, having written no more than that.

/// What the walk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expansion {
    /// The message decompresses to at most this many bytes (fewer if it is malformed).
    AtMost(usize),
    /// It would decompress to more than the limit.
    Over,
}

/// `ironrdp_graphics::zgfx::HISTORY_SIZE`: a match reaching further back is refused there.
const HISTORY_SIZE: u64 = 2_500_000;
const SINGLE: u8 = 0xe0;
const MULTIPART: u8 = 0xe1;
/// `PACKET_COMPRESSED` in a segment's header byte (flags are its high four bits).
const COMPRESSED: u8 = 0x20;

#[derive(Clone, Copy)]
enum Kind {
    /// A `0` bit, then the byte itself.
    Null,
    Literal,
    Match {
        distance_bits: u32,
        distance_base: u64,
    },
}

/// MS-RDPEGFX 3.1.9.1.2's token table, in `ironrdp-graphics`' order: prefix, its length in
/// bits, and what follows it.
const TOKENS: [(u16, u32, Kind); 40] = [
    (0b0, 1, Kind::Null),
    (0b11000, 5, Kind::Literal),
    (0b11001, 5, Kind::Literal),
    (0b110100, 6, Kind::Literal),
    (0b110101, 6, Kind::Literal),
    (0b110110, 6, Kind::Literal),
    (0b1101110, 7, Kind::Literal),
    (0b1101111, 7, Kind::Literal),
    (0b1110000, 7, Kind::Literal),
    (0b1110001, 7, Kind::Literal),
    (0b1110010, 7, Kind::Literal),
    (0b1110011, 7, Kind::Literal),
    (0b1110100, 7, Kind::Literal),
    (0b1110101, 7, Kind::Literal),
    (0b1110110, 7, Kind::Literal),
    (0b1110111, 7, Kind::Literal),
    (0b1111000, 7, Kind::Literal),
    (0b1111001, 7, Kind::Literal),
    (0b1111010, 7, Kind::Literal),
    (0b1111011, 7, Kind::Literal),
    (0b1111100, 7, Kind::Literal),
    (0b1111101, 7, Kind::Literal),
    (0b11111100, 8, Kind::Literal),
    (0b11111101, 8, Kind::Literal),
    (0b11111110, 8, Kind::Literal),
    (0b11111111, 8, Kind::Literal),
    (
        0b10001,
        5,
        Kind::Match {
            distance_bits: 5,
            distance_base: 0,
        },
    ),
    (
        0b10010,
        5,
        Kind::Match {
            distance_bits: 7,
            distance_base: 32,
        },
    ),
    (
        0b10011,
        5,
        Kind::Match {
            distance_bits: 9,
            distance_base: 160,
        },
    ),
    (
        0b10100,
        5,
        Kind::Match {
            distance_bits: 10,
            distance_base: 672,
        },
    ),
    (
        0b10101,
        5,
        Kind::Match {
            distance_bits: 12,
            distance_base: 1_696,
        },
    ),
    (
        0b101100,
        6,
        Kind::Match {
            distance_bits: 14,
            distance_base: 5_792,
        },
    ),
    (
        0b101101,
        6,
        Kind::Match {
            distance_bits: 15,
            distance_base: 22_176,
        },
    ),
    (
        0b1011100,
        7,
        Kind::Match {
            distance_bits: 18,
            distance_base: 54_944,
        },
    ),
    (
        0b1011101,
        7,
        Kind::Match {
            distance_bits: 20,
            distance_base: 317_088,
        },
    ),
    (
        0b10111100,
        8,
        Kind::Match {
            distance_bits: 20,
            distance_base: 1_365_664,
        },
    ),
    (
        0b10111101,
        8,
        Kind::Match {
            distance_bits: 21,
            distance_base: 2_414_240,
        },
    ),
    (
        0b101111100,
        9,
        Kind::Match {
            distance_bits: 22,
            distance_base: 4_511_392,
        },
    ),
    (
        0b101111101,
        9,
        Kind::Match {
            distance_bits: 23,
            distance_base: 8_705_696,
        },
    ),
    (
        0b101111110,
        9,
        Kind::Match {
            distance_bits: 24,
            distance_base: 17_094_304,
        },
    ),
];

/// Bytes `message` (a whole `RDP_SEGMENTED_DATA`) decompresses to, or `Over` as soon as the
/// count passes `limit`.
pub fn expansion(message: &[u8], limit: usize) -> Expansion {
    let limit = limit as u64;
    let mut total: u64 = 0;
    let Some((&descriptor, rest)) = message.split_first() else {
        return Expansion::AtMost(0);
    };
    match descriptor {
        SINGLE => {
            let Some(n) = segment(rest, limit) else {
                return Expansion::Over;
            };
            total = n;
        }
        MULTIPART => {
            let Some((count, rest)) = rest.split_first_chunk::<2>() else {
                return Expansion::AtMost(0);
            };
            let Some((declared, mut rest)) = rest.split_first_chunk::<4>() else {
                return Expansion::AtMost(0);
            };
            // The decompressor refuses output beyond the declared size, but only after the
            // segment that passes it: a declaration above the limit is refused here.
            if u64::from(u32::from_le_bytes(*declared)) > limit {
                return Expansion::Over;
            }
            for _ in 0..u16::from_le_bytes(*count) {
                let Some((size, tail)) = rest.split_first_chunk::<4>() else {
                    break;
                };
                let size = usize::try_from(u32::from_le_bytes(*size)).unwrap_or(usize::MAX);
                let Some((seg, tail)) = tail.split_at_checked(size) else {
                    break;
                };
                rest = tail;
                let Some(n) = segment(seg, limit.saturating_sub(total)) else {
                    return Expansion::Over;
                };
                total = total.saturating_add(n);
                if total > limit {
                    return Expansion::Over;
                }
            }
        }
        _ => {}
    }
    if total > limit {
        Expansion::Over
    } else {
        Expansion::AtMost(usize::try_from(total).unwrap_or(usize::MAX))
    }
}

/// One `RDP8_BULK_ENCODED_DATA`: its header byte, then the data. Returns the bytes it
/// decompresses to, or `None` once it is clear it passes `limit`.
fn segment(seg: &[u8], limit: u64) -> Option<u64> {
    let Some((&header, data)) = seg.split_first() else {
        return Some(0);
    };
    let n = if header & COMPRESSED == 0 {
        data.len() as u64
    } else {
        compressed(data, limit)?
    };
    (n <= limit).then_some(n)
}

/// The bit reader of the walk: most significant bit first, as the decompressor reads.
struct Bits<'a> {
    data: &'a [u8],
    pos: u64,
    end: u64,
}

impl Bits<'_> {
    fn left(&self) -> u64 {
        self.end - self.pos
    }

    /// The next `n` (≤ 57) bits as a number, without consuming them; `None` past the end.
    fn peek(&self, n: u32) -> Option<u64> {
        if u64::from(n) > self.left() {
            return None;
        }
        let byte = usize::try_from(self.pos / 8).ok()?;
        let mut word = [0u8; 8];
        let have = self.data.get(byte..)?;
        let take = have.len().min(8);
        word[..take].copy_from_slice(&have[..take]);
        let shifted = u64::from_be_bytes(word) << (self.pos % 8);
        Some(if n == 0 { 0 } else { shifted >> (64 - n) })
    }

    fn take(&mut self, n: u32) -> Option<u64> {
        let v = self.peek(n)?;
        self.pos += u64::from(n);
        Some(v)
    }

    fn skip(&mut self, n: u64) -> Option<()> {
        (n <= self.left()).then(|| self.pos += n)
    }

    /// Consecutive one bits from here.
    fn leading_ones(&self) -> u64 {
        let mut n = 0;
        while n < self.left() {
            let at = self.pos + n;
            let Some(&b) = self.data.get(usize::try_from(at / 8).unwrap_or(usize::MAX)) else {
                break;
            };
            if b & (0x80 >> (at % 8)) == 0 {
                break;
            }
            n += 1;
        }
        n
    }
}

/// A compressed segment's tokens: the bytes they write, `None` once past `limit`.
fn compressed(data: &[u8], limit: u64) -> Option<u64> {
    let Some(&last) = data.last() else {
        return Some(0);
    };
    // The low three bits of the last byte count the unused bits before it.
    let Some(end) = (data.len() as u64 - 1)
        .checked_mul(8)
        .and_then(|n| n.checked_sub(u64::from(last & 0x07)))
    else {
        return Some(0);
    };
    let mut bits = Bits { data, pos: 0, end };
    let mut out: u64 = 0;
    while bits.left() > 0 {
        let Some(&(_, len, kind)) = TOKENS
            .iter()
            .find(|(prefix, len, _)| bits.peek(*len) == Some(u64::from(*prefix)))
        else {
            return Some(out);
        };
        bits.pos += u64::from(len);
        let written = match kind {
            Kind::Null => {
                if bits.skip(8).is_none() {
                    return Some(out);
                }
                1
            }
            Kind::Literal => 1,
            Kind::Match {
                distance_bits,
                distance_base,
            } => {
                let Some(value) = bits.take(distance_bits) else {
                    return Some(out);
                };
                let distance = distance_base + value;
                if distance == 0 {
                    // An unencoded run: 15 bits of length, then the bytes from the next byte
                    // boundary.
                    let Some(length) = bits.take(15) else {
                        return Some(out);
                    };
                    let pad = (8 - bits.pos % 8) % 8;
                    if bits.skip(pad).is_none() || bits.skip(length * 8).is_none() {
                        return Some(out);
                    }
                    length
                } else {
                    if distance > HISTORY_SIZE {
                        return Some(out);
                    }
                    let ones = bits.leading_ones();
                    if bits.skip(ones + 1).is_none() {
                        return Some(out);
                    }
                    if ones == 0 {
                        3
                    } else {
                        let value_bits = ones + 1;
                        if value_bits > 40 {
                            // At least 2^41 bytes: over any limit.
                            return None;
                        }
                        let width = u32::try_from(value_bits).unwrap_or(u32::MAX);
                        let Some(value) = bits.take(width) else {
                            return Some(out);
                        };
                        (1u64 << value_bits) + value
                    }
                }
            }
        };
        out = out.saturating_add(written);
        if out > limit {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests {
    use ironrdp_graphics::zgfx::{self, CompressionMode, Compressor, Decompressor};
    use proptest::prelude::*;

    use super::*;

    /// Bits (one per element, most significant first) packed into a compressed segment's
    /// data: the bytes, then the count of bits unused in the last of them.
    pub(crate) fn pack(bits: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; bits.len().div_ceil(8)];
        for (i, &b) in bits.iter().enumerate() {
            out[i / 8] |= b << (7 - i % 8);
        }
        out.push(((8 - bits.len() % 8) % 8) as u8);
        out
    }

    fn push(bits: &mut Vec<u8>, value: u64, n: u32) {
        for i in (0..n).rev() {
            bits.push(((value >> i) & 1) as u8);
        }
    }

    /// One compressed single segment: a literal 0x00, then a match one byte back of
    /// `2^(k+1) + value` bytes.
    pub(crate) fn bomb(k: u32, value: u64) -> Vec<u8> {
        let mut bits = Vec::new();
        push(&mut bits, 0b11000, 5); // literal 0x00
        push(&mut bits, 0b10001, 5); // match, 5 distance bits, base 0
        push(&mut bits, 1, 5); // distance 1
        bits.extend(std::iter::repeat_n(1, k as usize));
        bits.push(0);
        push(&mut bits, value, k + 1);
        let mut message = vec![0xe0, 0x24];
        message.extend(pack(&bits));
        message
    }

    fn decompressed_len(message: &[u8]) -> Option<usize> {
        let mut out = Vec::new();
        Decompressor::new().decompress(message, &mut out).ok()?;
        Some(out.len())
    }

    #[test]
    fn a_match_is_counted_before_it_is_copied() {
        // 2^11 + 5 bytes and the literal: small enough to decompress for the comparison.
        let small = bomb(10, 5);
        assert_eq!(decompressed_len(&small), Some(2048 + 5 + 1));
        assert_eq!(expansion(&small, 1 << 20), Expansion::AtMost(2048 + 5 + 1));
        assert_eq!(expansion(&small, 2048), Expansion::Over);
        // 1 GiB from 11 bytes: refused without decompressing.
        assert_eq!(expansion(&bomb(29, 0), 8 << 20), Expansion::Over);
        assert_eq!(expansion(&bomb(60, 0), usize::MAX), Expansion::Over);
    }

    #[test]
    fn unencoded_runs_and_null_literals_are_counted() {
        let mut bits = Vec::new();
        push(&mut bits, 0, 1); // null literal
        push(&mut bits, 0x99, 8);
        push(&mut bits, 0b10001, 5); // match, distance 0: an unencoded run
        push(&mut bits, 0, 5);
        push(&mut bits, 3, 15);
        while bits.len() % 8 != 0 {
            bits.push(0);
        }
        push(&mut bits, 0x414243, 24);
        let mut message = vec![0xe0, 0x24];
        message.extend(pack(&bits));
        assert_eq!(decompressed_len(&message), Some(4));
        assert_eq!(expansion(&message, 100), Expansion::AtMost(4));
    }

    #[test]
    fn multipart_declarations_and_uncompressed_segments_count() {
        let data = vec![7u8; 200_000];
        let wrapped = zgfx::wrap_uncompressed(&data);
        assert_eq!(expansion(&wrapped, 1 << 20), Expansion::AtMost(200_000));
        assert_eq!(expansion(&wrapped, 100_000), Expansion::Over);
        // A multipart header declaring 4 GiB is refused on the declaration.
        let mut lying = wrapped.clone();
        lying[3..7].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(expansion(&lying, 8 << 20), Expansion::Over);
        // Not ZGFX, or cut short: nothing counted, the decompressor says why.
        assert_eq!(expansion(&[0x42], 10), Expansion::AtMost(0));
        assert_eq!(expansion(&[0xe1, 1], 10), Expansion::AtMost(0));
        assert_eq!(expansion(&[], 10), Expansion::AtMost(0));
    }

    proptest! {
        /// The walk counts exactly what IronRDP's decompressor writes, for what IronRDP's
        /// compressor makes of repetitive and random data.
        #[test]
        fn the_count_is_exactly_the_decompressed_size(
            seed in proptest::collection::vec(any::<u8>(), 1..64),
            repeats in 1usize..3000,
            noise in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut data: Vec<u8> = seed.iter().copied().cycle().take(seed.len() * repeats).collect();
            data.extend(&noise);
            let mut compressor = Compressor::new();
            let message = zgfx::compress_and_wrap_egfx(&data, &mut compressor, CompressionMode::Always).unwrap();
            prop_assert_eq!(decompressed_len(&message), Some(data.len()));
            prop_assert_eq!(expansion(&message, usize::MAX), Expansion::AtMost(data.len()));
        }

        #[test]
        fn arbitrary_bytes_never_count_less_than_is_written(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut message = vec![0xe0, 0x24];
            message.extend(&body);
            let mut out = Vec::new();
            let _ = Decompressor::new().decompress(&message, &mut out);
            match expansion(&message, usize::MAX) {
                Expansion::AtMost(n) => prop_assert!(out.len() <= n, "{} > {}", out.len(), n),
                Expansion::Over => {}
            }
        }
    }
}

//! The dynamic virtual channel multiplexer (`drdynvc`): IronRDP's client, with a limit on the
//! size of one reassembled message and a reassembly that keeps nothing afterwards.
//!
//! A server announces a fragmented message's full length in its DataFirst PDU. The length
//! field is 32 bits, so without a limit one server could make the gateway hold 4 GiB for one
//! session: the limit is checked on the announcement, before the first byte is kept.
//!
//! IronRDP's own reassembly keeps its buffer's capacity after each message, so every session
//! would hold on to the size of the largest key frame it ever received. Fragments are
//! therefore reassembled here, in a buffer of exactly the announced size that is freed once
//! the message has been handed on, and IronRDP only ever sees whole, uncompressed messages.
//! Compressed fragments (RDP 8.0 Lite, which servers may use once the capabilities allow it)
//! are decompressed here too, with one history per channel, so that reassembly and the
//! large-message budget cover them as well.

use ironrdp_bulk::rdp8::Rdp8Decompressor;
use ironrdp_core::{encode_vec, impl_as_any};
use ironrdp_dvc::pdu::{DataPdu, DrdynvcDataPdu, DrdynvcServerPdu};
use ironrdp_dvc::DrdynvcClient;
use ironrdp_pdu::gcc::ChannelName;
use ironrdp_pdu::{pdu_other_err, PduResult};
use ironrdp_svc::{CompressionCondition, SvcClientProcessor, SvcMessage, SvcProcessor};
use tracing::warn;

use super::large::{LargeBudget, LargePermit, COPIES};

/// Messages up to this size (one pool chunk's worth) need no room in the large budget: their
/// copies are counted in every session's own figure.
pub const LARGE: usize = 16 << 10;

/// `--max-dvc-message`'s default: a 1080p key frame is a few hundred kilobytes, a 4K one
/// rarely above a megabyte.
pub const DEFAULT_MAX_MESSAGE: usize = 2 << 20;

/// Channels that may have a fragmented message in progress at once. The gateway opens three
/// dynamic channels (graphics, sound, display control); each message in progress holds a
/// buffer of its announced size, so a server must not be able to start one on every channel
/// id it can name.
pub const MAX_PARTIAL: usize = 4;

/// MS-RDPEDYC 2.2.3.1 DYNVC_DATA_FIRST and 2.2.3.3 DYNVC_DATA_FIRST_COMPRESSED.
const CMD_DATA_FIRST: u8 = 0x02;
const CMD_DATA: u8 = 0x03;
const CMD_CLOSE: u8 = 0x04;
const CMD_DATA_FIRST_COMPRESSED: u8 = 0x06;
const CMD_DATA_COMPRESSED: u8 = 0x07;

/// A fragmented message being put together.
#[derive(Debug)]
struct Partial {
    channel: u32,
    total: usize,
    data: Vec<u8>,
    /// Its room in the core's large-message budget; `None` while it waits for one.
    permit: Option<LargePermit>,
}

/// A message longer than the limit, as the server announced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversize {
    pub channel: u32,
    pub len: u32,
    pub limit: usize,
}

#[derive(Debug)]
pub struct BoundedDrdynvc {
    inner: DrdynvcClient,
    max_message: usize,
    refused: Option<Oversize>,
    /// How the server broke the fragmentation rules, in words, for the session's end.
    violation: Option<String>,
    /// One per channel with a message in progress (a handful of channels at most).
    partial: Vec<Partial>,
    /// The core's budget for large messages; `None` in tests that do not need one.
    large: Option<LargeBudget>,
    /// Budget a message waits for before more of the server is read.
    needs: Option<usize>,
    /// Permits of finished messages whose access units are still on their way to the page.
    held: Vec<LargePermit>,
    /// RDP 8.0 Lite histories, one per channel that sent compressed data.
    decompressors: Vec<(u32, Rdp8Decompressor)>,
}

impl_as_any!(BoundedDrdynvc);

impl BoundedDrdynvc {
    pub fn new(inner: DrdynvcClient, max_message: usize) -> Self {
        BoundedDrdynvc {
            inner,
            max_message,
            refused: None,
            violation: None,
            partial: Vec::new(),
            large: None,
            needs: None,
            held: Vec::new(),
            decompressors: Vec::new(),
        }
    }

    /// Large messages (above one pool chunk) draw on `budget` (see `rdp::large`).
    #[must_use]
    pub fn with_budget(mut self, budget: LargeBudget) -> Self {
        self.large = Some(budget);
        self
    }

    /// The budget a message waits for: until it is granted, the server must not be read.
    pub fn permit_needed(&self) -> Option<usize> {
        self.needs
    }

    /// The permit the waiting message waited for.
    pub fn give_permit(&mut self, permit: LargePermit) {
        self.needs = None;
        // The message that waits is the large one without a permit (small ones never get one).
        if let Some(p) = self
            .partial
            .iter_mut()
            .find(|p| p.permit.is_none() && p.total > LARGE)
        {
            p.data.reserve_exact(p.total.saturating_sub(p.data.len()));
            p.permit = Some(permit);
        }
    }

    /// True while finished large messages still count against the budget.
    pub fn holds_permits(&self) -> bool {
        !self.held.is_empty()
    }

    /// The page has everything that came before: the finished messages' room goes back.
    pub fn release_held(&mut self) {
        self.held.clear();
    }

    pub fn inner_mut(&mut self) -> &mut DrdynvcClient {
        &mut self.inner
    }

    /// Why the last PDU was refused, if it was for its size.
    pub fn take_refusal(&mut self) -> Option<Oversize> {
        self.refused.take()
    }

    /// How the last refused PDU broke the fragmentation rules, if that was why.
    pub fn take_violation(&mut self) -> Option<String> {
        self.violation.take()
    }

    /// Records `why` for the session's end and refuses the PDU.
    fn violated(&mut self, what: &'static str, why: String) -> PduResult<Vec<SvcMessage>> {
        let err = pdu_other_err!(what, "fragmentation rules broken");
        self.violation = Some(why);
        Err(err)
    }

    /// Refuses a DataFirst (`h` of a PDU) announcing more than the limit.
    fn check(&mut self, h: Option<&Header>) -> PduResult<()> {
        let Some((channel, len)) = h.and_then(|h| Some((h.channel, h.len?))) else {
            return Ok(());
        };
        if usize::try_from(len).unwrap_or(usize::MAX) <= self.max_message {
            return Ok(());
        }
        self.refused = Some(Oversize {
            channel,
            len,
            limit: self.max_message,
        });
        Err(pdu_other_err!(
            "DVC DataFirst",
            "message above the gateway's limit"
        ))
    }
}

/// The parts of a DRDYNVC PDU this layer looks at (MS-RDPEDYC 2.2): the command, the channel,
/// for DataFirst the announced length, and where the data starts.
struct Header {
    cmd: u8,
    channel: u32,
    len: Option<u32>,
    data_at: usize,
}

fn header(payload: &[u8]) -> Option<Header> {
    let (&first, rest) = payload.split_first()?;
    let cmd = first >> 4;
    let field = |bits: u8| match bits & 0x3 {
        0 => Some(1),
        1 => Some(2),
        2 => Some(4),
        _ => None,
    };
    let le = |bytes: &[u8]| {
        bytes
            .iter()
            .rev()
            .fold(0u32, |acc, &b| (acc << 8) | u32::from(b))
    };
    let id_len = field(first)?;
    let channel = le(rest.get(..id_len)?);
    let (len, data_at) = if cmd == CMD_DATA_FIRST || cmd == CMD_DATA_FIRST_COMPRESSED {
        let len_len = field(first >> 2)?;
        (
            Some(le(rest.get(id_len..id_len + len_len)?)),
            1 + id_len + len_len,
        )
    } else {
        (None, 1 + id_len)
    };
    Some(Header {
        cmd,
        channel,
        len,
        data_at,
    })
}

impl BoundedDrdynvc {
    /// Hands a whole message to IronRDP as one uncompressed Data PDU.
    fn whole(&mut self, channel: u32, data: Vec<u8>) -> PduResult<Vec<SvcMessage>> {
        let pdu = DrdynvcServerPdu::Data(DrdynvcDataPdu::Data(DataPdu::new(channel, data)));
        let bytes = encode_vec(&pdu).map_err(|e| pdu_other_err!("DVC Data", source: e))?;
        drop(pdu);
        self.inner.process(&bytes)
    }

    /// Undoes RDP 8.0 Lite compression with the channel's own history.
    fn decompress(&mut self, channel: u32, compressed: &[u8]) -> PduResult<Vec<u8>> {
        let i = match self.decompressors.iter().position(|(c, _)| *c == channel) {
            Some(i) => i,
            None => {
                self.decompressors
                    .push((channel, Rdp8Decompressor::new_lite()));
                self.decompressors.len() - 1
            }
        };
        let mut out = Vec::new();
        match self.decompressors.get_mut(i) {
            Some((_, d)) => d
                .decompress(compressed, &mut out)
                .map_err(|e| pdu_other_err!("DVC compressed data", source: e))?,
            None => 0,
        };
        Ok(out)
    }
}

impl SvcProcessor for BoundedDrdynvc {
    fn channel_name(&self) -> ChannelName {
        self.inner.channel_name()
    }

    fn compression_condition(&self) -> CompressionCondition {
        self.inner.compression_condition()
    }

    fn start(&mut self) -> PduResult<Vec<SvcMessage>> {
        self.inner.start()
    }

    fn process(&mut self, payload: &[u8]) -> PduResult<Vec<SvcMessage>> {
        // Parsed once for the limit and the reassembly; a PDU too short to say goes to IronRDP,
        // which refuses it in its words.
        let h = header(payload);
        self.check(h.as_ref())?;
        let Some(mut h) = h else {
            return self.inner.process(payload);
        };
        let mut data = payload.get(h.data_at..).unwrap_or(&[]);
        let decompressed;
        let compressed = h.cmd == CMD_DATA_FIRST_COMPRESSED || h.cmd == CMD_DATA_COMPRESSED;
        if compressed {
            decompressed = self.decompress(h.channel, data)?;
            data = &decompressed;
            h.cmd = if h.cmd == CMD_DATA_COMPRESSED {
                CMD_DATA
            } else {
                CMD_DATA_FIRST
            };
        }
        let at = self.partial.iter().position(|p| p.channel == h.channel);
        match (h.cmd, h.len, at) {
            (CMD_DATA_FIRST, Some(total), _) => {
                if let Some(i) = at {
                    warn!(
                        channel = h.channel,
                        "incomplete dynamic channel message dropped"
                    );
                    self.partial.swap_remove(i);
                }
                let total = usize::try_from(total).unwrap_or(usize::MAX);
                if data.len() > total {
                    return self.violated(
                        "DVC DataFirst",
                        format!(
                            "dynamic channel {}: the first fragment is longer than the {total} \
                             bytes announced",
                            h.channel
                        ),
                    );
                }
                if data.len() == total {
                    return self.whole(h.channel, data.to_vec());
                }
                if self.partial.len() >= MAX_PARTIAL {
                    return self.violated(
                        "DVC DataFirst",
                        format!(
                            "fragmented messages on more than {MAX_PARTIAL} dynamic channels \
                             at once"
                        ),
                    );
                }
                // `check` bounded `total` by the limit. A large message takes its room in the
                // core's budget first, or waits for it with only this first block kept.
                let permit = match &self.large {
                    Some(budget) if total > LARGE => {
                        let cost = total.saturating_mul(COPIES);
                        let permit = budget.try_take(cost);
                        if permit.is_none() {
                            self.needs = Some(cost);
                        }
                        permit
                    }
                    _ => None,
                };
                let mut buf = if permit.is_some() || self.needs.is_none() {
                    Vec::with_capacity(total)
                } else {
                    Vec::new()
                };
                buf.extend_from_slice(data);
                self.partial.push(Partial {
                    channel: h.channel,
                    total,
                    data: buf,
                    permit,
                });
                Ok(Vec::new())
            }
            (CMD_DATA, _, Some(i)) => {
                let p = &mut self.partial[i];
                if p.data.len() + data.len() > p.total {
                    let total = p.total;
                    self.partial.swap_remove(i);
                    return self.violated(
                        "DVC Data",
                        format!(
                            "dynamic channel {}: fragments go on past the {total} bytes announced",
                            h.channel
                        ),
                    );
                }
                p.data.extend_from_slice(data);
                if p.data.len() < p.total {
                    return Ok(Vec::new());
                }
                let whole = self.partial.swap_remove(i);
                let total = whole.total;
                let replies = self.whole(whole.channel, whole.data);
                // What is left of the message is its access unit, on its way to the page.
                if let Some(mut permit) = whole.permit {
                    permit.shrink_to(total);
                    self.held.push(permit);
                }
                replies
            }
            (CMD_DATA, _, None) if compressed => {
                // A whole message that came compressed.
                self.whole(h.channel, data.to_vec())
            }
            (CMD_CLOSE, _, at) => {
                if let Some(i) = at {
                    self.partial.swap_remove(i);
                }
                self.decompressors.retain(|(c, _)| *c != h.channel);
                self.inner.process(payload)
            }
            _ => self.inner.process(payload),
        }
    }
}

impl SvcClientProcessor for BoundedDrdynvc {}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use ironrdp_dvc::pdu::DataFirstPdu;

    fn data_first(channel: u32, len: u32) -> Vec<u8> {
        let pdu = DrdynvcServerPdu::Data(DrdynvcDataPdu::DataFirst(DataFirstPdu::new(
            channel,
            len,
            vec![0; 100],
        )));
        encode_vec(&pdu).unwrap()
    }

    /// A server naming channel after channel in DataFirst PDUs cannot make the gateway keep
    /// a buffer for each: a fifth message in progress ends the session.
    #[test]
    fn messages_in_progress_are_bounded_per_session() {
        let mut d = BoundedDrdynvc::new(DrdynvcClient::new(), 1 << 20);
        for channel in 0..MAX_PARTIAL as u32 {
            assert!(d.process(&data_first(100 + channel, 16 << 10)).is_ok());
        }
        let err = d.process(&data_first(200, 16 << 10)).unwrap_err();
        assert!(
            d.take_violation()
                .unwrap()
                .contains("more than 4 dynamic channels at once"),
            "{err}"
        );
        assert_eq!(d.partial.len(), MAX_PARTIAL);
    }

    /// The permit a large message waited for goes to that message, not to a small one in
    /// progress on another channel.
    #[test]
    fn a_permit_goes_to_the_message_that_waited_for_it() {
        let budget = LargeBudget::new(1 << 20);
        let hog = budget.try_take(1).unwrap();
        let mut d = BoundedDrdynvc::new(DrdynvcClient::new(), 1 << 20).with_budget(budget.clone());
        d.process(&data_first(1, 4 << 10)).unwrap();
        d.process(&data_first(2, 512 << 10)).unwrap();
        let need = d.permit_needed().unwrap();
        drop(hog);
        d.give_permit(budget.try_take(need).unwrap());
        let large = d.partial.iter().find(|p| p.channel == 2).unwrap();
        assert!(large.permit.is_some());
        assert!(large.data.capacity() >= 512 << 10);
        assert!(d
            .partial
            .iter()
            .find(|p| p.channel == 1)
            .unwrap()
            .permit
            .is_none());
    }

    #[test]
    fn announced_lengths_are_read_in_every_field_width() {
        for (channel, len) in [(3, 200), (300, 70_000), (70_000, 5_000_000)] {
            let h = header(&data_first(channel, len)).unwrap();
            assert_eq!((h.channel, h.len), (channel, Some(len)));
        }
    }

    #[test]
    fn a_message_above_the_limit_is_refused_before_it_is_kept() {
        let mut d = BoundedDrdynvc::new(DrdynvcClient::new(), 1 << 20);
        assert!(d.check(header(&data_first(7, 1 << 20)).as_ref()).is_ok());
        assert!(d
            .check(header(&data_first(7, (1 << 20) + 1)).as_ref())
            .is_err());
        assert_eq!(
            d.take_refusal(),
            Some(Oversize {
                channel: 7,
                len: (1 << 20) + 1,
                limit: 1 << 20
            })
        );
        // Not a DataFirst: nothing to check.
        assert!(d.check(header(&[0x30, 7, 1, 2, 3]).as_ref()).is_ok());
        assert!(d.check(header(&[]).as_ref()).is_ok());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod default_tests {
    #[test]
    fn the_settings_default_is_the_documented_constant() {
        let s = crate::config::Layers::default().resolve().unwrap();
        assert_eq!(s.max_dvc_message, super::DEFAULT_MAX_MESSAGE);
    }
}

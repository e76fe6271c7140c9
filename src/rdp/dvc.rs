//! The dynamic virtual channel multiplexer (`drdynvc`): IronRDP's client, with a limit on the
//! size of one reassembled message.
//!
//! A server announces a fragmented message's full length in its DataFirst PDU, and IronRDP
//! reassembles up to that length (it refuses fragments beyond it). The length field is 32
//! bits, so without a limit one server could make the gateway hold 4 GiB for one session. The
//! limit is checked on the announcement, before the first byte is kept.

use ironrdp_core::impl_as_any;
use ironrdp_dvc::DrdynvcClient;
use ironrdp_pdu::gcc::ChannelName;
use ironrdp_pdu::{pdu_other_err, PduResult};
use ironrdp_svc::{CompressionCondition, SvcClientProcessor, SvcMessage, SvcProcessor};

/// MS-RDPEDYC 2.2.3.1 DYNVC_DATA_FIRST and 2.2.3.3 DYNVC_DATA_FIRST_COMPRESSED.
const CMD_DATA_FIRST: u8 = 0x02;
const CMD_DATA_FIRST_COMPRESSED: u8 = 0x06;

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
}

impl_as_any!(BoundedDrdynvc);

impl BoundedDrdynvc {
    pub fn new(inner: DrdynvcClient, max_message: usize) -> Self {
        BoundedDrdynvc {
            inner,
            max_message,
            refused: None,
        }
    }

    pub fn inner_mut(&mut self) -> &mut DrdynvcClient {
        &mut self.inner
    }

    /// Why the last PDU was refused, if it was for its size.
    pub fn take_refusal(&mut self) -> Option<Oversize> {
        self.refused.take()
    }

    fn check(&mut self, payload: &[u8]) -> PduResult<()> {
        let Some((channel, len)) = announced_length(payload) else {
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

/// Channel id and total length of a DataFirst PDU; `None` for any other PDU (or one too short
/// to say, which IronRDP then refuses itself).
fn announced_length(payload: &[u8]) -> Option<(u32, u32)> {
    let (&header, rest) = payload.split_first()?;
    let cmd = header >> 4;
    if cmd != CMD_DATA_FIRST && cmd != CMD_DATA_FIRST_COMPRESSED {
        return None;
    }
    let field = |bits: u8| match bits & 0x3 {
        0 => Some(1),
        1 => Some(2),
        2 => Some(4),
        _ => None,
    };
    let id_len = field(header)?;
    let len_len = field(header >> 2)?;
    let le = |bytes: &[u8]| {
        bytes
            .iter()
            .rev()
            .fold(0u32, |acc, &b| (acc << 8) | u32::from(b))
    };
    let channel = le(rest.get(..id_len)?);
    let len = le(rest.get(id_len..id_len + len_len)?);
    Some((channel, len))
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
        self.check(payload)?;
        self.inner.process(payload)
    }
}

impl SvcClientProcessor for BoundedDrdynvc {}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use ironrdp_core::encode_vec;
    use ironrdp_dvc::pdu::{DataFirstPdu, DrdynvcDataPdu, DrdynvcServerPdu};

    fn data_first(channel: u32, len: u32) -> Vec<u8> {
        let pdu = DrdynvcServerPdu::Data(DrdynvcDataPdu::DataFirst(DataFirstPdu::new(
            channel,
            len,
            vec![0; 100],
        )));
        encode_vec(&pdu).unwrap()
    }

    #[test]
    fn announced_lengths_are_read_in_every_field_width() {
        for (channel, len) in [(3, 200), (300, 70_000), (70_000, 5_000_000)] {
            assert_eq!(
                announced_length(&data_first(channel, len)),
                Some((channel, len))
            );
        }
    }

    #[test]
    fn a_message_above_the_limit_is_refused_before_it_is_kept() {
        let mut d = BoundedDrdynvc::new(DrdynvcClient::new(), 1 << 20);
        assert!(d.check(&data_first(7, 1 << 20)).is_ok());
        assert!(d.check(&data_first(7, (1 << 20) + 1)).is_err());
        assert_eq!(
            d.take_refusal(),
            Some(Oversize {
                channel: 7,
                len: (1 << 20) + 1,
                limit: 1 << 20
            })
        );
        // Not a DataFirst: nothing to check.
        assert!(d.check(&[0x30, 7, 1, 2, 3]).is_ok());
        assert!(d.check(&[]).is_ok());
    }
}

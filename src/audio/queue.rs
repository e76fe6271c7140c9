//! Encoded sound waiting for the page, packed into the session's audio slots.
//!
//! Each record is `[len: u16][AudioPacket message: len bytes]`, the message complete with its
//! protocol header, so writing it to the page is one borrow of the slot. The `dropped` field
//! is filled in when the record leaves, so it always carries the latest count. Records are
//! packed back to back; a slot that has been read empty goes back to the pool.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use arena::{AudioBuf, Pool, SessionShare, Slot};

use super::AudioError;
use crate::protocol::{types::AUDIO_PACKET, VERSION};

/// `[version][type][timestamp_us: u64][duration_us: u32][dropped: u32]`.
const PACKET_HEADER: usize = 2 + 8 + 4 + 4;
const LEN: usize = 2;
const DURATION_AT: usize = 10;
const DROPPED_AT: usize = 14;

struct Chunk {
    slot: Slot<AudioBuf>,
    read: usize,
    write: usize,
}

pub struct AudioQueue {
    share: Rc<SessionShare>,
    session: u64,
    chunks: VecDeque<Chunk>,
    max_queue_us: u64,
    queued_us: u64,
    packets: usize,
    /// Packets dropped since the session began.
    dropped: u64,
}

impl AudioQueue {
    pub fn new(share: Rc<SessionShare>, session: u64, max_queue: Duration) -> Self {
        let quota = share.quota(Pool::AudioBuf);
        AudioQueue {
            share,
            session,
            chunks: VecDeque::with_capacity(quota),
            max_queue_us: u64::try_from(max_queue.as_micros()).unwrap_or(u64::MAX),
            queued_us: 0,
            packets: 0,
            dropped: 0,
        }
    }

    /// Packets waiting.
    pub fn len(&self) -> usize {
        self.packets
    }

    pub fn is_empty(&self) -> bool {
        self.packets == 0
    }

    /// Sound waiting, by the packets' durations.
    pub fn queued(&self) -> Duration {
        Duration::from_micros(self.queued_us)
    }

    /// Packets dropped since the session began.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Slots the queue holds now.
    pub fn slots(&self) -> usize {
        self.chunks.len()
    }

    /// Appends one packet: `fill` writes at most `max_data` bytes of it and returns how many.
    /// Makes room by dropping the oldest packets when the share has no slot left, and drops
    /// the oldest while more than `max_queue` of sound waits. Returns the packets dropped.
    pub fn push_with<E>(
        &mut self,
        timestamp_us: u64,
        duration_us: u32,
        max_data: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<Result<usize, E>, AudioError> {
        let need = LEN + PACKET_HEADER + max_data;
        let slot_size = self.share.slot_size(Pool::AudioBuf);
        if need > slot_size {
            return Err(AudioError::SlotTooSmall {
                session: self.session,
                slot: slot_size,
                need,
            });
        }
        let before = self.dropped;
        self.make_room(need)?;
        let Some(chunk) = self.chunks.back_mut() else {
            return Err(self.no_slot());
        };
        let at = chunk.write;
        let Some(record) = chunk.slot.get_mut(at..at + need) else {
            return Err(self.no_slot());
        };
        let (head, data) = record.split_at_mut(LEN + PACKET_HEADER);
        let n = match fill(data) {
            Ok(n) => n.min(max_data),
            Err(e) => return Ok(Err(e)),
        };
        let len = u16::try_from(PACKET_HEADER + n).unwrap_or(u16::MAX);
        head[..LEN].copy_from_slice(&len.to_le_bytes());
        let msg = &mut head[LEN..];
        msg[0] = VERSION;
        msg[1] = AUDIO_PACKET;
        msg[2..DURATION_AT].copy_from_slice(&timestamp_us.to_le_bytes());
        msg[DURATION_AT..DROPPED_AT].copy_from_slice(&duration_us.to_le_bytes());
        chunk.write = at + LEN + PACKET_HEADER + n;
        self.packets += 1;
        self.queued_us += u64::from(duration_us);
        while self.queued_us > self.max_queue_us && self.packets > 1 {
            self.drop_front();
        }
        Ok(Ok(
            usize::try_from(self.dropped - before).unwrap_or(usize::MAX)
        ))
    }

    /// Lends the oldest packet's complete message to `send` and removes it.
    pub fn pop_with<R>(&mut self, send: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let dropped = u32::try_from(self.dropped).unwrap_or(u32::MAX);
        let (msg_at, len) = self.front_record()?;
        let chunk = self.chunks.front_mut()?;
        let msg = chunk.slot.get_mut(msg_at..msg_at + len)?;
        msg[DROPPED_AT..PACKET_HEADER].copy_from_slice(&dropped.to_le_bytes());
        let r = send(msg);
        self.consume_front(msg_at + len);
        Some(r)
    }

    /// Drops everything waiting (a new stream makes it stale); counts it as dropped.
    pub fn clear(&mut self) {
        self.dropped += self.packets as u64;
        self.packets = 0;
        self.queued_us = 0;
        self.chunks.clear();
    }

    /// Ensures the last chunk has `need` free bytes.
    fn make_room(&mut self, need: usize) -> Result<(), AudioError> {
        let slot_size = self.share.slot_size(Pool::AudioBuf);
        if let Some(c) = self.chunks.back() {
            if slot_size - c.write >= need {
                return Ok(());
            }
        }
        if let Some(slot) = self.share.alloc::<AudioBuf>() {
            self.chunks.push_back(Chunk {
                slot,
                read: 0,
                write: 0,
            });
            return Ok(());
        }
        // The share is spent: the oldest chunk's packets are the ones to lose.
        let Some(mut oldest) = self.chunks.pop_front() else {
            return Err(self.no_slot());
        };
        while oldest.read < oldest.write {
            let Some((at, len)) = record_at(&oldest) else {
                break;
            };
            self.forget(&oldest.slot[at..at + len]);
            self.dropped += 1;
            oldest.read = at + len;
        }
        oldest.read = 0;
        oldest.write = 0;
        self.chunks.push_back(oldest);
        Ok(())
    }

    fn drop_front(&mut self) {
        if let Some((at, len)) = self.front_record() {
            self.dropped += 1;
            self.consume_front(at + len);
        }
    }

    /// Where the oldest message starts and how long it is.
    fn front_record(&mut self) -> Option<(usize, usize)> {
        loop {
            let chunk = self.chunks.front()?;
            if chunk.read < chunk.write {
                return record_at(chunk);
            }
            // A chunk read empty goes back to the pool, unless it is the one being written.
            if self.chunks.len() == 1 {
                return None;
            }
            self.chunks.pop_front();
        }
    }

    fn consume_front(&mut self, end: usize) {
        let Some(chunk) = self.chunks.front_mut() else {
            return;
        };
        let msg = chunk.slot.get(chunk.read + LEN..end).unwrap_or(&[]);
        let duration = duration_of(msg);
        chunk.read = end;
        let empty = chunk.read >= chunk.write;
        self.packets = self.packets.saturating_sub(1);
        self.queued_us = self.queued_us.saturating_sub(duration);
        if empty {
            self.chunks.pop_front();
        }
    }

    /// Takes a dropped record out of the accounting (the caller counts it as dropped).
    fn forget(&mut self, msg: &[u8]) {
        self.packets = self.packets.saturating_sub(1);
        self.queued_us = self.queued_us.saturating_sub(duration_of(msg));
    }

    fn no_slot(&self) -> AudioError {
        AudioError::NoSlot {
            session: self.session,
            quota: self.share.quota(Pool::AudioBuf),
        }
    }
}

fn record_at(chunk: &Chunk) -> Option<(usize, usize)> {
    let at = chunk.read;
    let len = chunk.slot.get(at..at + LEN)?;
    let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
    Some((at + LEN, len))
}

fn duration_of(msg: &[u8]) -> u64 {
    msg.get(DURATION_AT..DROPPED_AT)
        .and_then(|b| b.try_into().ok())
        .map_or(0, |b| u64::from(u32::from_le_bytes(b)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::protocol::ToBrowser;
    use arena::{Arena, ArenaConfig, PoolSpec};

    pub(crate) fn arena(audio_slots: usize, slot_size: usize) -> Arena {
        let mut cfg = ArenaConfig::with_sessions(2);
        cfg.audio_buf = PoolSpec {
            slot_size,
            slots_per_session: audio_slots,
        };
        Arena::new(&cfg).unwrap()
    }

    fn push(q: &mut AudioQueue, ts: u64, bytes: &[u8]) -> usize {
        q.push_with(ts, 20_000, bytes.len(), |d| {
            d[..bytes.len()].copy_from_slice(bytes);
            Ok::<_, ()>(bytes.len())
        })
        .unwrap()
        .unwrap()
    }

    fn pop(q: &mut AudioQueue) -> Option<(u64, u32, Vec<u8>)> {
        q.pop_with(|m| match ToBrowser::decode(m).unwrap() {
            ToBrowser::AudioPacket {
                timestamp_us,
                dropped,
                data,
                ..
            } => (timestamp_us, dropped, data.into_owned()),
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn packets_come_out_in_order_as_protocol_messages() {
        let a = arena(4, 4096);
        let share = Rc::new(a.admit().unwrap());
        let mut q = AudioQueue::new(share.clone(), 7, Duration::from_secs(1));
        for i in 0..10u8 {
            push(&mut q, u64::from(i) * 20_000, &[i; 100]);
        }
        assert_eq!(q.len(), 10);
        assert_eq!(q.queued(), Duration::from_millis(200));
        for i in 0..10u8 {
            let (ts, dropped, data) = pop(&mut q).unwrap();
            assert_eq!(
                (ts, dropped, data),
                (u64::from(i) * 20_000, 0, vec![i; 100])
            );
        }
        assert!(pop(&mut q).is_none());
        assert!(share.in_use(Pool::AudioBuf) <= 1);
    }

    #[test]
    fn a_slow_page_loses_the_oldest_sound_beyond_max_queue() {
        let a = arena(4, 4096);
        let share = Rc::new(a.admit().unwrap());
        let mut q = AudioQueue::new(share, 7, Duration::from_millis(100));
        let mut dropped = 0;
        for i in 0..50u64 {
            dropped += push(&mut q, i * 20_000, &[1; 160]);
        }
        assert_eq!(q.queued(), Duration::from_millis(100));
        assert_eq!(dropped, 45);
        let (ts, d, _) = pop(&mut q).unwrap();
        assert_eq!((ts, d), (45 * 20_000, 45));
    }

    #[test]
    fn a_spent_share_recycles_the_oldest_slot() {
        let a = arena(2, 1024);
        let share = Rc::new(a.admit().unwrap());
        let mut q = AudioQueue::new(share.clone(), 7, Duration::from_secs(60));
        for i in 0..40u64 {
            push(&mut q, i * 20_000, &[2; 300]);
            assert!(share.in_use(Pool::AudioBuf) <= 2);
        }
        assert!(q.dropped() > 0);
        let mut last = 0;
        let mut n = 0;
        while let Some((ts, _, data)) = pop(&mut q) {
            assert!(ts >= last);
            assert_eq!(data.len(), 300);
            last = ts;
            n += 1;
        }
        assert_eq!(n as u64 + q.dropped(), 40);
        assert_eq!(last, 39 * 20_000);
    }

    #[test]
    fn a_packet_larger_than_a_slot_is_refused_in_words() {
        let a = arena(2, 1024);
        let share = Rc::new(a.admit().unwrap());
        let mut q = AudioQueue::new(share, 7, Duration::from_secs(1));
        let err = q
            .push_with(0, 20_000, 2000, |_| Ok::<_, ()>(0))
            .unwrap_err();
        assert!(err.to_string().contains("too small"), "{err}");
    }
}

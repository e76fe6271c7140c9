//! One browser session, sans-IO: browser messages in, messages for the browser out.
//!
//! Every outbound message is encoded into a frame chunk from the session's arena share. When
//! the share is used up the session asks for no more input (`wants_input` turns false) until
//! the shell has written what is queued: a browser that does not read slows itself down
//! through TCP, and the gateway's memory for it never grows past its share.

use std::collections::VecDeque;

use arena::{FrameChunk, SessionShare, Slot};

use crate::protocol::{FromBrowser, ProtocolError, ToBrowser};

/// An encoded message, living in pool memory until the shell has written it.
pub struct Outbound {
    slot: Slot<FrameChunk>,
    len: usize,
}

impl Outbound {
    pub fn bytes(&self) -> &[u8] {
        self.slot.get(..self.len).unwrap_or(&[])
    }
}

/// Why a session ends, with the WebSocket close code the browser sees.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("session {session}: bad message from the browser: {err}")]
    Protocol { session: u64, err: ProtocolError },
    #[error("session {session}: text messages are not part of the protocol")]
    Text { session: u64 },
    #[error("session {session}: browser sent input while its output queue was full")]
    InputWhileFull { session: u64 },
}

impl SessionError {
    /// RFC 6455 close code: 1002 protocol error, 1003 unacceptable data type, 1008 policy.
    pub fn close_code(&self) -> u16 {
        match self {
            SessionError::Protocol { .. } => 1002,
            SessionError::Text { .. } => 1003,
            SessionError::InputWhileFull { .. } => 1008,
        }
    }
}

pub struct Session {
    share: SessionShare,
    core: u16,
    max_message: u32,
    out: VecDeque<Outbound>,
}

impl Session {
    /// Starts a session and queues its `ServerHello`.
    pub fn start(share: SessionShare, core: u16, max_message: u32) -> Self {
        let mut s = Session {
            share,
            core,
            max_message,
            out: VecDeque::new(),
        };
        let hello = ToBrowser::ServerHello {
            session_id: s.id(),
            core,
            max_message,
        };
        // A fresh share has its whole quota free, so the hello always fits.
        let _ = s.queue(&hello);
        s
    }

    pub fn id(&self) -> u64 {
        self.share.id()
    }

    pub fn core(&self) -> u16 {
        self.core
    }

    pub fn max_message(&self) -> u32 {
        self.max_message
    }

    /// False while the share has no chunk for an answer: the shell must stop reading.
    pub fn wants_input(&self) -> bool {
        self.share.in_use(arena::Pool::FrameChunk) < self.share.quota(arena::Pool::FrameChunk)
    }

    pub fn handle_binary(&mut self, msg: &[u8]) -> Result<(), SessionError> {
        let session = self.id();
        match FromBrowser::decode(msg).map_err(|err| SessionError::Protocol { session, err })? {
            FromBrowser::Ping { nonce } => self.queue(&ToBrowser::Pong { nonce }),
        }
    }

    pub fn handle_text(&mut self) -> Result<(), SessionError> {
        Err(SessionError::Text { session: self.id() })
    }

    /// The next message to write, if any. Dropping it returns its chunk to the share.
    pub fn poll_transmit(&mut self) -> Option<Outbound> {
        self.out.pop_front()
    }

    pub fn queued(&self) -> usize {
        self.out.len()
    }

    fn queue(&mut self, msg: &ToBrowser) -> Result<(), SessionError> {
        let session = self.id();
        let mut slot = self
            .share
            .alloc::<FrameChunk>()
            .ok_or(SessionError::InputWhileFull { session })?;
        let len = msg
            .encode(&mut slot)
            .map_err(|err| SessionError::Protocol { session, err })?;
        self.out.push_back(Outbound { slot, len });
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use arena::{Arena, ArenaConfig, Pool, PoolSpec};

    fn arena(chunks: usize) -> Arena {
        Arena::new(&ArenaConfig {
            frame_chunk: PoolSpec {
                slot_size: 256,
                slots_per_session: chunks,
            },
            surface_desc: ArenaConfig::DEFAULT_SURFACE_DESC,
            audio_buf: ArenaConfig::DEFAULT_AUDIO_BUF,
            sessions: 2,
            prefault: false,
            mlock: false,
            huge_pages: false,
        })
        .unwrap()
    }

    fn ping(n: u64) -> Vec<u8> {
        FromBrowser::Ping { nonce: n }.encode()
    }

    #[test]
    fn hello_then_pong() {
        let a = arena(4);
        let mut s = Session::start(a.admit().unwrap(), 1, 65536);
        let hello = s.poll_transmit().unwrap();
        assert!(matches!(
            ToBrowser::decode(hello.bytes()).unwrap(),
            ToBrowser::ServerHello {
                core: 1,
                max_message: 65536,
                ..
            }
        ));
        s.handle_binary(&ping(9)).unwrap();
        let pong = s.poll_transmit().unwrap();
        assert_eq!(
            ToBrowser::decode(pong.bytes()).unwrap(),
            ToBrowser::Pong { nonce: 9 }
        );
        assert!(s.poll_transmit().is_none());
    }

    #[test]
    fn unread_output_stops_input_within_the_share() {
        let a = arena(3);
        let mut s = Session::start(a.admit().unwrap(), 0, 1024);
        s.handle_binary(&ping(1)).unwrap();
        s.handle_binary(&ping(2)).unwrap();
        assert!(!s.wants_input());
        assert_eq!(
            s.handle_binary(&ping(3)),
            Err(SessionError::InputWhileFull { session: s.id() })
        );
        assert_eq!(a.stats().pool(Pool::FrameChunk).in_use, 3);
        drop(s.poll_transmit());
        assert!(s.wants_input());
        drop(s);
        let st = a.stats().pool(Pool::FrameChunk);
        assert_eq!((st.in_use, st.reserved), (0, 0));
    }

    #[test]
    fn bad_input_names_the_session_and_closes_with_protocol_error() {
        let a = arena(2);
        let mut s = Session::start(a.admit().unwrap(), 0, 1024);
        let e = s.handle_binary(&[1, 0x42]).unwrap_err();
        assert_eq!(e.close_code(), 1002);
        assert!(e.to_string().contains(&format!("session {}", s.id())));
        assert!(e.to_string().contains("0x42"));
        assert_eq!(s.handle_text().unwrap_err().close_code(), 1003);
    }
}

//! The browser protocol, version 1: one WebSocket binary message per protocol message,
//! `[version: u8][type: u8][payload]`, integers little-endian. Gateway→browser types are
//! 0x01–0x7f, browser→gateway types 0x80–0xff, so a message sent the wrong way is caught.
//! Specified message by message in `docs/protocol.md`; this codec is sans-IO.

pub const VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToBrowser {
    /// First message of every session.
    ServerHello {
        session_id: u64,
        core: u16,
        /// Largest message the browser may send.
        max_message: u32,
    },
    /// Answer to `Ping`, echoing its nonce.
    Pong { nonce: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromBrowser {
    /// Round-trip probe; the gateway answers `Pong` with the same nonce.
    Ping { nonce: u64 },
}

pub mod types {
    pub const SERVER_HELLO: u8 = 0x01;
    pub const PONG: u8 = 0x02;
    pub const PING: u8 = 0x81;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("empty message")]
    Empty,
    #[error("protocol version {got} is not supported (this gateway speaks {VERSION})")]
    Version { got: u8 },
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    #[error("message type 0x{ty:02x} needs {need} bytes, got {got}")]
    Length { ty: u8, need: usize, got: usize },
    #[error("buffer of {have} bytes cannot hold a {need}-byte message")]
    NoRoom { need: usize, have: usize },
}

impl ToBrowser {
    pub fn encoded_len(&self) -> usize {
        2 + match self {
            ToBrowser::ServerHello { .. } => 8 + 2 + 4,
            ToBrowser::Pong { .. } => 8,
        }
    }

    /// Writes into `buf` (a pool slot) and returns the length used.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, ProtocolError> {
        let need = self.encoded_len();
        let have = buf.len();
        let out = buf
            .get_mut(..need)
            .ok_or(ProtocolError::NoRoom { need, have })?;
        out[0] = VERSION;
        match self {
            ToBrowser::ServerHello {
                session_id,
                core,
                max_message,
            } => {
                out[1] = types::SERVER_HELLO;
                out[2..10].copy_from_slice(&session_id.to_le_bytes());
                out[10..12].copy_from_slice(&core.to_le_bytes());
                out[12..16].copy_from_slice(&max_message.to_le_bytes());
            }
            ToBrowser::Pong { nonce } => {
                out[1] = types::PONG;
                out[2..10].copy_from_slice(&nonce.to_le_bytes());
            }
        }
        Ok(need)
    }

    pub fn decode(msg: &[u8]) -> Result<ToBrowser, ProtocolError> {
        let (ty, body) = header(msg)?;
        match ty {
            types::SERVER_HELLO => {
                let b = exact::<14>(ty, body)?;
                Ok(ToBrowser::ServerHello {
                    session_id: u64::from_le_bytes(array(&b[0..8])),
                    core: u16::from_le_bytes(array(&b[8..10])),
                    max_message: u32::from_le_bytes(array(&b[10..14])),
                })
            }
            types::PONG => Ok(ToBrowser::Pong {
                nonce: u64::from_le_bytes(exact::<8>(ty, body)?),
            }),
            other => Err(ProtocolError::UnknownType(other)),
        }
    }
}

impl FromBrowser {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            FromBrowser::Ping { nonce } => {
                let mut v = vec![VERSION, types::PING];
                v.extend_from_slice(&nonce.to_le_bytes());
                v
            }
        }
    }

    pub fn decode(msg: &[u8]) -> Result<FromBrowser, ProtocolError> {
        let (ty, body) = header(msg)?;
        match ty {
            types::PING => Ok(FromBrowser::Ping {
                nonce: u64::from_le_bytes(exact::<8>(ty, body)?),
            }),
            other => Err(ProtocolError::UnknownType(other)),
        }
    }
}

fn header(msg: &[u8]) -> Result<(u8, &[u8]), ProtocolError> {
    match msg {
        [] => Err(ProtocolError::Empty),
        [v, ..] if *v != VERSION => Err(ProtocolError::Version { got: *v }),
        [_] => Err(ProtocolError::Length {
            ty: 0,
            need: 2,
            got: 1,
        }),
        [_, ty, body @ ..] => Ok((*ty, body)),
    }
}

fn exact<const N: usize>(ty: u8, body: &[u8]) -> Result<[u8; N], ProtocolError> {
    body.try_into().map_err(|_| ProtocolError::Length {
        ty,
        need: N + 2,
        got: body.len() + 2,
    })
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(b);
    a
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        for m in [
            ToBrowser::ServerHello {
                session_id: u64::MAX,
                core: 3,
                max_message: 65536,
            },
            ToBrowser::Pong { nonce: 42 },
        ] {
            let mut buf = [0u8; 64];
            let n = m.encode(&mut buf).unwrap();
            assert_eq!(n, m.encoded_len());
            assert_eq!(ToBrowser::decode(&buf[..n]).unwrap(), m);
        }
        let p = FromBrowser::Ping { nonce: 7 };
        assert_eq!(FromBrowser::decode(&p.encode()).unwrap(), p);
    }

    #[test]
    fn malformed_inputs() {
        assert_eq!(FromBrowser::decode(&[]), Err(ProtocolError::Empty));
        assert_eq!(
            FromBrowser::decode(&[9, types::PING]),
            Err(ProtocolError::Version { got: 9 })
        );
        assert!(matches!(
            FromBrowser::decode(&[1]),
            Err(ProtocolError::Length { .. })
        ));
        assert_eq!(
            FromBrowser::decode(&[1, 0x99]),
            Err(ProtocolError::UnknownType(0x99))
        );
        // A gateway→browser type sent by the browser is unknown to the browser decoder.
        assert_eq!(
            FromBrowser::decode(&[1, types::PONG, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtocolError::UnknownType(types::PONG))
        );
        assert_eq!(
            FromBrowser::decode(&[1, types::PING, 1, 2, 3]),
            Err(ProtocolError::Length {
                ty: types::PING,
                need: 10,
                got: 5
            })
        );
        assert!(matches!(
            FromBrowser::decode(&[1, types::PING, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtocolError::Length { .. })
        ));
        let mut small = [0u8; 4];
        assert!(matches!(
            ToBrowser::Pong { nonce: 1 }.encode(&mut small),
            Err(ProtocolError::NoRoom { need: 10, have: 4 })
        ));
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = FromBrowser::decode(&bytes);
            let _ = ToBrowser::decode(&bytes);
        }

        #[test]
        fn ping_round_trips(nonce in any::<u64>()) {
            let p = FromBrowser::Ping { nonce };
            prop_assert_eq!(FromBrowser::decode(&p.encode()).unwrap(), p);
        }
    }
}

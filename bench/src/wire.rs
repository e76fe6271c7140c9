//! A minimal WebSocket client on a raw `TcpStream`, for the browsers that must act below
//! message level: read the response head byte by byte (nothing buffered past it), read frame
//! headers and payloads separately (so a browser can vanish in the middle of a message), and
//! close a socket abruptly (RST).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Result};

/// The answer to an upgrade request.
pub enum Upgrade {
    Accepted(RawWs),
    /// Not 101: the status code and whether a `Retry-After` header came with it.
    Refused {
        status: u16,
        retry_after: bool,
        reason: String,
    },
}

pub struct RawWs {
    pub stream: TcpStream,
    mask_seed: u32,
}

/// Sends an upgrade request for `/ws` and reads the response head.
pub fn upgrade(addr: &str, timeout: Duration) -> Result<Upgrade> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            bail!("response head too long");
        }
        match stream.read(&mut byte)? {
            0 => bail!("closed before the response head ended"),
            _ => head.push(byte[0]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if status == 101 {
        return Ok(Upgrade::Accepted(RawWs {
            stream,
            mask_seed: 0x9e37_79b9,
        }));
    }
    let retry_after = text
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("retry-after:"));
    // The one-line reason is the body; read what is there without waiting long.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut body = [0u8; 256];
    let n = stream.read(&mut body).unwrap_or(0);
    let reason = String::from_utf8_lossy(body.get(..n).unwrap_or_default())
        .trim()
        .to_owned();
    Ok(Upgrade::Refused {
        status,
        retry_after,
        reason,
    })
}

/// One frame header.
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    pub len: usize,
}

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;

impl RawWs {
    /// The next frame header; `Ok(None)` when nothing arrived before the read timeout.
    pub fn header(&mut self) -> Result<Option<Header>> {
        let mut b = [0u8; 2];
        match self.stream.read(&mut b[..1]) {
            Ok(0) => bail!("closed by the gateway"),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        }
        self.stream.read_exact(&mut b[1..])?;
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0f;
        let len = match b[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                self.stream.read_exact(&mut l)?;
                usize::from(u16::from_be_bytes(l))
            }
            127 => {
                let mut l = [0u8; 8];
                self.stream.read_exact(&mut l)?;
                usize::try_from(u64::from_be_bytes(l))?
            }
            n => usize::from(n),
        };
        if b[1] & 0x80 != 0 {
            bail!("a masked frame from the gateway");
        }
        Ok(Some(Header { fin, opcode, len }))
    }

    pub fn payload(&mut self, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.stream.read_exact(&mut v)?;
        Ok(v)
    }

    /// Reads `n` bytes of a payload and throws them away.
    pub fn skip(&mut self, mut n: usize) -> Result<()> {
        let mut buf = [0u8; 4096];
        while n > 0 {
            let k = n.min(buf.len());
            self.stream.read_exact(&mut buf[..k])?;
            n -= k;
        }
        Ok(())
    }

    /// Sends one masked frame.
    pub fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<()> {
        self.mask_seed ^= self.mask_seed << 13;
        self.mask_seed ^= self.mask_seed >> 17;
        self.mask_seed ^= self.mask_seed << 5;
        let mask = self.mask_seed.to_be_bytes();
        let mut f = Vec::with_capacity(payload.len() + 14);
        f.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        self.stream.write_all(&f)?;
        Ok(())
    }

    /// Closes the socket with a reset: no close frame, no FIN, unread data dropped.
    pub fn abort(self) {
        let sock = socket2::Socket::from(self.stream);
        let _ = sock.set_linger(Some(Duration::ZERO));
        drop(sock);
    }

    /// A polite close (1000) without waiting for the answer.
    pub fn close(mut self) {
        let _ = self.send(OP_CLOSE, &1000u16.to_be_bytes());
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }
}

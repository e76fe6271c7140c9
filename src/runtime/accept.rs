//! Listening sockets: one per executor on the same port (`SO_REUSEPORT`), so the kernel spreads
//! connections over cores and no core hands work to another.
//!
//! Socket buffer sizes are set on the listener before `listen()`: accepted sockets inherit
//! them from the first byte on, and a fixed `SO_RCVBUF` also turns off receive autotuning, so a
//! peer cannot grow a connection's kernel memory to megabytes.
//!
//! Accepting runs in the executor's blocking-pool thread (pinned to the same CPU): it gives a
//! plain socket whose options can be set without `unsafe`, and glommio adopts it from there.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::config::SocketBuffers;

use super::RuntimeError;

pub const BACKLOG: i32 = 1024;

/// Binds one listener per executor. With port 0 the first picks a free port and the rest
/// join it.
pub fn bind_all(
    addr: SocketAddr,
    count: usize,
    buffers: &SocketBuffers,
) -> Result<Vec<Arc<TcpListener>>, RuntimeError> {
    let mut addr = addr;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let l = bind_one(addr, buffers).map_err(|err| RuntimeError::Listen { addr, err })?;
        if addr.port() == 0 {
            addr = l
                .local_addr()
                .map_err(|err| RuntimeError::Listen { addr, err })?;
        }
        out.push(Arc::new(l));
    }
    Ok(out)
}

/// The gateway's listener as the target policy must know it: with a wildcard address, every
/// address of the host's interfaces reaches it. Interfaces added later are not seen; the
/// loopback range is covered whatever the interfaces say.
pub fn own_listener(addr: SocketAddr) -> crate::policy::Listener {
    let mut local_ips = Vec::new();
    if addr.ip().is_unspecified() {
        match nix::ifaddrs::getifaddrs() {
            Ok(interfaces) => {
                for a in interfaces.filter_map(|i| i.address) {
                    if let Some(v4) = a.as_sockaddr_in() {
                        local_ips.push(IpAddr::V4(v4.ip()));
                    } else if let Some(v6) = a.as_sockaddr_in6() {
                        local_ips.push(IpAddr::V6(v6.ip()));
                    }
                }
            }
            Err(err) => {
                tracing::warn!(%err, "cannot list the host's addresses; the target policy knows only loopback as the gateway's own");
            }
        }
    }
    crate::policy::Listener { addr, local_ips }
}

fn bind_one(addr: SocketAddr, buffers: &SocketBuffers) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_send_buffer_size(buffers.browser_sndbuf)?;
    s.set_recv_buffer_size(buffers.browser_rcvbuf)?;
    s.set_mss(segment_cap(buffers.browser_sndbuf))?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// Largest TCP segment a browser connection sends: a quarter of the send buffer the kernel
/// gives it (twice what is asked). On loopback — a TLS proxy on the same host, the harness —
/// segments are otherwise up to 64 KiB, one fills the small send buffer, and each waits for
/// the peer's delayed ACK: a 460 KB key frame took 264 ms instead of 0.5 ms. Paths with a
/// normal MTU use smaller segments than this anyway.
pub fn segment_cap(sndbuf: usize) -> u32 {
    u32::try_from((2 * sndbuf / 4).clamp(1 << 10, 16 << 10)).unwrap_or(16 << 10)
}

/// Options every browser connection gets before its first read.
pub fn prepare(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    SockRef::from(stream).set_keepalive(true)
}

/// Wakes every thread blocked in `accept` on these listeners; they return an error.
pub fn stop_accepting(listeners: &[Arc<TcpListener>]) {
    for l in listeners {
        let _ = SockRef::from(&**l).shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_shared_and_buffers_are_inherited() {
        let buffers = SocketBuffers {
            browser_sndbuf: 32 << 10,
            browser_rcvbuf: 8 << 10,
            server_sndbuf: 8 << 10,
            server_rcvbuf: 32 << 10,
        };
        let ls = bind_all("127.0.0.1:0".parse().unwrap(), 2, &buffers).unwrap();
        let a = ls[0].local_addr().unwrap();
        assert_ne!(a.port(), 0);
        assert_eq!(ls[1].local_addr().unwrap(), a);
        let _c = TcpStream::connect(a).unwrap();
        // Either listener may get it; accept from both without blocking.
        let mut accepted = None;
        for l in &ls {
            l.set_nonblocking(true).unwrap();
        }
        for _ in 0..100 {
            for l in &ls {
                if let Ok((s, _)) = l.accept() {
                    accepted = Some(s);
                }
            }
            if accepted.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let s = accepted.unwrap();
        // Linux reports the doubled value.
        assert_eq!(SockRef::from(&s).recv_buffer_size().unwrap(), 16 << 10);
        assert_eq!(SockRef::from(&s).send_buffer_size().unwrap(), 64 << 10);
        // The segment cap is inherited too (the kernel reports it once connected).
        assert!(SockRef::from(&s).mss().unwrap() <= segment_cap(32 << 10));
    }
}

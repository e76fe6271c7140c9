//! The RDP client's I/O: TCP to the server, the TLS upgrade, the connection sequence and then
//! the read loop that feeds [`Session`]. Everything it decides with comes from the sans-IO
//! `rdp` modules; this file only moves bytes on glommio.
//!
//! [`RdpClient::next_event`] is cancel-safe, so a WebSocket session can `select` on it next to
//! its browser socket: a PDU being read stays in the framing buffer, and bytes for the server
//! wait in the client's output buffer until a later call flushes them.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_rustls::client::TlsStream;
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use ironrdp_async::bytes::BytesMut;
use ironrdp_async::{Framed, FramedRead, FramedWrite, NetworkClient, StreamWrapper};
use ironrdp_connector::credssp::CredsspSequence;
use ironrdp_connector::sspi::generator::NetworkRequest;
use ironrdp_connector::{ClientConnectorState, ConnectionOutcome, ConnectorResult, ServerName};
use ironrdp_core::WriteBuf;
use ironrdp_egfx::pdu::QueueDepth;
use tracing::{debug, info, warn};

use crate::audio::AudioSink;
use crate::config::Settings;
use crate::rdp::connection::{self, DesktopSize, Phase};
use crate::rdp::large::LargeBudget;
use crate::rdp::target::{self, Target, TlsPolicy};
use crate::rdp::{describe_io, InputEvent, RdpError, RdpEvent, Session};

/// How long the TCP connection to one address may take.
pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long everything from the first address to the first graphics may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// The most one read takes from the TLS stream: one TLS record's plaintext.
const READ_CHUNK: usize = 16 << 10;

thread_local! {
    /// The core's read scratch. A read lands here and only what arrived is copied into the
    /// session's framing buffer: reading straight into the buffer's spare room would mean
    /// zeroing that room on every poll (safe code cannot read into uninitialised memory),
    /// which cost more than the copy. One per executor thread, held only inside a poll.
    static READ_SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

/// What a session shares with its core and its browser side.
#[derive(Default)]
pub struct Links {
    /// The session's sound sink and id: the server's sound goes there.
    pub audio: Option<(AudioSink, u64)>,
    /// The core's budget for large graphics messages.
    pub large: Option<LargeBudget>,
}

/// A connected RDP session.
pub struct RdpClient {
    large: Option<LargeBudget>,
    framed: Framed<Io<TlsStream<TcpStream>>>,
    session: Session,
    host: String,
    fingerprint: [u8; 32],
    /// Bytes for the server not yet written, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    /// Written into TLS but not yet flushed to the socket.
    needs_flush: bool,
    /// RDP payload bytes read and written since the last `take_byte_counts`.
    bytes_in: u64,
    bytes_out: u64,
}

impl RdpClient {
    /// Connects and logs on: TCP, X.224 negotiation, TLS, NLA, capability exchange. The first
    /// event is `RdpEvent::Connected`.
    pub async fn connect(
        target: &Target,
        size: DesktopSize,
        settings: &Settings,
    ) -> Result<RdpClient, RdpError> {
        Self::connect_with_progress(target, size, settings, Links::default(), &|_| {}).await
    }

    /// `connect`, telling `progress` as each step of the connection sequence is reached, with
    /// the session's `links` to its core.
    pub async fn connect_with_progress(
        target: &Target,
        size: DesktopSize,
        settings: &Settings,
        links: Links,
        progress: &dyn Fn(ConnectStep),
    ) -> Result<RdpClient, RdpError> {
        let started = Instant::now();
        let host = target.host.clone();
        let result = futures_lite::future::or(
            connect_inner(target, size, settings, links, progress),
            async {
                glommio::timer::sleep(CONNECT_TIMEOUT).await;
                Err(RdpError::Timeout {
                    host: host.clone(),
                    secs: CONNECT_TIMEOUT.as_secs(),
                })
            },
        )
        .await;
        match &result {
            Ok(c) => info!(
                host = target.host,
                port = target.port,
                user = target.username,
                width = c.session.desktop_size().width,
                height = c.session.desktop_size().height,
                ms = started.elapsed().as_millis() as u64,
                "rdp connected"
            ),
            Err(err) => warn!(
                host = target.host,
                port = target.port,
                user = target.username,
                %err,
                "rdp connection failed"
            ),
        }
        result
    }

    /// SHA-256 of the server's TLS certificate, for pinning it with `TlsPolicy::Fingerprint`.
    pub fn server_fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The desktop size as last negotiated.
    pub fn desktop_size(&self) -> DesktopSize {
        self.session.desktop_size()
    }

    /// The next event. After `RdpEvent::Disconnected` every call returns `RdpError::Ended`.
    /// Cancel-safe.
    /// The next event from the server. Without `graphics`, graphics events stay queued and
    /// reading stops at the first one, so the sound keeps coming while the page holds all the
    /// frames it may: the server's own flow control holds the picture back meanwhile.
    pub async fn next_event(&mut self, graphics: bool) -> Result<RdpEvent, RdpError> {
        loop {
            let ev = if graphics {
                self.session.next_event()
            } else {
                self.session.next_event_except_graphics()
            };
            if let Some(ev) = ev {
                return Ok(ev);
            }
            if !graphics && self.session.has_graphics() {
                return std::future::pending().await;
            }
            // A large message waits for room in the core's budget before more of it is read.
            if let (Some(need), Some(budget)) =
                (self.session.large_permit_needed(), self.large.as_ref())
            {
                let permit = budget.take(need).await;
                self.session.give_large_permit(permit);
            }
            if self.session.is_ended() {
                return Err(RdpError::Ended {
                    host: self.host.clone(),
                });
            }
            self.flush().await?;
            match self.framed.read_pdu().await {
                Ok((action, frame)) => {
                    self.bytes_in += frame.len() as u64;
                    let received_at = self.framed.last_read_at();
                    self.session
                        .process(action, &frame, received_at, &mut self.out)?;
                }
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    self.session.transport_closed(describe_io(&err));
                }
                // ironrdp-async wraps a framing error (bytes that are no TPKT or fast-path
                // header) as `Other`: the server broke the protocol, the link is fine.
                Err(err)
                    if err
                        .get_ref()
                        .is_some_and(|e| e.is::<ironrdp_core::DecodeError>()) =>
                {
                    return Err(RdpError::Protocol {
                        host: self.host.clone(),
                        phase: "reading a PDU",
                        why: format!("the server sent bytes that are not an RDP PDU: {err}"),
                    })
                }
                Err(err) => {
                    return Err(RdpError::ConnectionLost {
                        host: self.host.clone(),
                        why: describe_io(&err),
                    })
                }
            }
        }
    }

    /// True while finished large messages still hold room in the core's budget.
    pub fn holds_large(&mut self) -> bool {
        self.session.holds_large()
    }

    /// The page has everything written so far: finished large messages give their room back.
    pub fn release_large(&mut self) {
        self.session.release_large();
    }

    /// Sends keyboard and mouse input.
    pub async fn send_input(&mut self, events: &[InputEvent]) -> Result<(), RdpError> {
        self.session.input(events, &mut self.out)?;
        self.flush().await
    }

    /// Acknowledges a graphics frame once the browser has decoded it (see
    /// `GfxChannel::frame_acknowledge` for `queue_depth`).
    pub async fn ack_frame(
        &mut self,
        frame_id: u32,
        queue_depth: QueueDepth,
    ) -> Result<(), RdpError> {
        self.session
            .ack_frame(frame_id, queue_depth, &mut self.out)?;
        self.flush().await
    }

    /// RDP payload bytes (inside TLS) read from and written to the server since the last call.
    pub fn take_byte_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.bytes_in),
            std::mem::take(&mut self.bytes_out),
        )
    }

    /// Asks for a new desktop size; `Ok(false)` when the server cannot resize (no display
    /// control channel), and the page scales instead.
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<bool, RdpError> {
        let asked = self.session.resize(width, height, &mut self.out)?;
        self.flush().await?;
        Ok(asked)
    }

    /// No page watches: the server is asked to stop drawing (`None`), or to draw again and
    /// repaint the whole `(width, height)` desktop for a page that resumed the session.
    pub async fn suppress_output(&mut self, resume: Option<(u16, u16)>) -> Result<(), RdpError> {
        self.session.suppress_output(resume, &mut self.out)?;
        self.flush().await
    }

    /// Asks the server to end the session; keep reading events until `Disconnected`.
    pub async fn shutdown(&mut self) -> Result<(), RdpError> {
        self.session.shutdown(&mut self.out)?;
        self.flush().await
    }

    /// Writes and flushes everything in the output buffer. Cancel-safe: progress is kept in
    /// `out_pos` and `needs_flush`.
    async fn flush(&mut self) -> Result<(), RdpError> {
        std::future::poll_fn(|cx| self.poll_flush(cx))
            .await
            .map_err(|err| RdpError::ConnectionLost {
                host: self.host.clone(),
                why: describe_io(&err),
            })
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let RdpClient {
            framed,
            out,
            out_pos,
            needs_flush,
            bytes_out,
            ..
        } = self;
        let (stream, _) = framed.get_inner_mut();
        while *out_pos < out.len() {
            let n = ready!(Pin::new(&mut *stream).poll_write(cx, &out[*out_pos..]))?;
            *bytes_out += n as u64;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *out_pos += n;
            *needs_flush = true;
        }
        out.clear();
        *out_pos = 0;
        if *needs_flush {
            ready!(Pin::new(&mut *stream).poll_flush(cx))?;
            *needs_flush = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// Steps of the connection sequence, for the page's status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectStep {
    /// TLS is up; the credentials are being checked (NLA) or sent.
    Authenticating,
    /// Logged on; capabilities and channels are being set up.
    OpeningDesktop,
}

async fn connect_inner(
    target: &Target,
    size: DesktopSize,
    settings: &Settings,
    links: Links,
    progress: &dyn Fn(ConnectStep),
) -> Result<RdpClient, RdpError> {
    let Links { audio, large } = links;
    let host = target.host.clone();
    let tcp = tcp_connect(target, settings).await?;
    let client_addr = tcp.local_addr().map_err(|e| RdpError::ConnectionLost {
        host: host.clone(),
        why: describe_io(&io::Error::from(e)),
    })?;

    let mut connector = connection::connector(
        target,
        size,
        client_addr,
        settings.max_dvc_message,
        large.clone(),
        audio.as_ref().map(|(sink, id)| (sink, *id)),
    );
    let mut framed = Framed::<Io<TcpStream>>::new(tcp);
    let should_upgrade = ironrdp_async::connect_begin(&mut framed, &mut connector)
        .await
        .map_err(|e| connection::explain(target, Phase::Negotiation, &e))?;
    let (tcp, leftover) = framed.into_inner();
    if !leftover.is_empty() {
        return Err(RdpError::Protocol {
            host,
            phase: "negotiating security",
            why: format!(
                "{} unexpected bytes before the TLS handshake",
                leftover.len()
            ),
        });
    }

    let tls_config = match &target.tls {
        TlsPolicy::Verify { .. } => {
            // Reads the system trust store and the CA file: off the executor.
            let policy = target.tls.clone();
            glommio::executor()
                .spawn_blocking(move || target::client_config(&policy))
                .await?
        }
        policy => target::client_config(policy)?,
    };
    let server_name = target::server_name(&host)?;
    let tls = TlsConnector::from(tls_config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| target::explain_handshake(&host, &e))?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| RdpError::Protocol {
            host: host.clone(),
            phase: "negotiating security",
            why: "the server sent no TLS certificate".to_owned(),
        })?;
    let fingerprint = target::fingerprint(cert);
    debug!(
        host,
        fingerprint = target::fingerprint_text(&fingerprint),
        "tls established"
    );
    let public_key = connection::server_public_key(&host, cert)?;
    progress(ConnectStep::Authenticating);
    let upgraded = ironrdp_async::mark_as_upgraded(should_upgrade, &mut connector);
    let mut framed = Framed::<Io<TlsStream<TcpStream>>>::new(tls);

    // CredSSP runs here rather than inside `connect_finalize` so that its failures can be told
    // apart: a rejected password must read as such.
    if connector.should_perform_credssp() {
        let ClientConnectorState::Credssp {
            selected_protocol, ..
        } = connector.state
        else {
            return Err(RdpError::Protocol {
                host,
                phase: "authenticating",
                why: "the connector is not ready for CredSSP".to_owned(),
            });
        };
        let (sequence, ts_request) = CredsspSequence::init(
            connector.config.credentials.clone(),
            connector.config.domain.as_deref(),
            selected_protocol,
            ServerName::new(host.clone()),
            public_key.clone(),
            None,
        )
        .map_err(|e| connection::explain(target, Phase::Credssp, &e))?;
        let mut buf = WriteBuf::new();
        ironrdp_async::perform_credssp(&mut framed, &mut NoNetwork, &mut buf, sequence, ts_request)
            .await
            .map_err(|e| connection::explain(target, Phase::Credssp, &e))?;
        connector.mark_credssp_as_done();
        debug!(host, "nla complete");
    }
    progress(ConnectStep::OpeningDesktop);

    let outcome = ironrdp_async::connect_finalize(
        upgraded,
        connector,
        &mut framed,
        &mut NoNetwork,
        ServerName::new(host.clone()),
        public_key,
        None,
    )
    .await
    .map_err(|e| connection::explain(target, Phase::Finalization, &e))?;
    let result = match outcome {
        ConnectionOutcome::Connected(result) => result,
        ConnectionOutcome::Redirected(_) => return Err(RdpError::Redirected { host }),
    };
    Ok(RdpClient {
        large,
        framed,
        session: Session::new(&host, result, audio.map(|(sink, _)| sink)),
        host,
        fingerprint,
        out: Vec::new(),
        out_pos: 0,
        needs_flush: false,
        bytes_in: 0,
        bytes_out: 0,
    })
}

/// Resolves the host (off the executor when it is a name), checks every address against the
/// target policy and connects to the first of exactly those addresses that answers, with
/// `TCP_NODELAY` and the configured socket buffers. There is no second look-up: what was
/// checked is what is connected to.
async fn tcp_connect(target: &Target, settings: &Settings) -> Result<TcpStream, RdpError> {
    let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => {
            let name = (target.host.clone(), target.port);
            let resolved = glommio::executor()
                .spawn_blocking(move || name.to_socket_addrs().map(|a| a.collect::<Vec<_>>()))
                .await;
            match resolved {
                Ok(a) if !a.is_empty() => a,
                Ok(_) => {
                    return Err(RdpError::Resolve {
                        host: target.host.clone(),
                        why: "the name has no addresses".to_owned(),
                    })
                }
                Err(e) => {
                    return Err(RdpError::Resolve {
                        host: target.host.clone(),
                        why: resolve_reason(&e),
                    })
                }
            }
        }
    };
    settings
        .target_policy
        .check(&target.host, &addrs)
        .map_err(|why| RdpError::NotAllowed {
            endpoint: target.endpoint(),
            why,
        })?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(addr, TCP_CONNECT_TIMEOUT).await {
            Ok(stream) => {
                tune(&stream, settings).map_err(|e| RdpError::Unreachable {
                    endpoint: target.endpoint(),
                    why: format!("cannot set socket options: {e}"),
                })?;
                debug!(host = target.host, %addr, "tcp connected");
                return Ok(stream);
            }
            Err(e) => {
                let e = io::Error::from(e);
                debug!(host = target.host, %addr, err = %e, "tcp connect failed");
                last = Some(e);
            }
        }
    }
    let why = match last {
        Some(e) if e.kind() == io::ErrorKind::TimedOut => format!(
            "no answer within {} s (a firewall may be dropping the connection)",
            TCP_CONNECT_TIMEOUT.as_secs()
        ),
        Some(e) => describe_io(&e),
        None => "no address to try".to_owned(),
    };
    Err(RdpError::Unreachable {
        endpoint: target.endpoint(),
        why,
    })
}

fn resolve_reason(e: &io::Error) -> String {
    let text = e.to_string();
    if text.contains("Name or service not known") || text.contains("No address associated") {
        "no such host".to_owned()
    } else if text.contains("Temporary failure") {
        "the name server did not answer; try again".to_owned()
    } else {
        text
    }
}

fn tune(stream: &TcpStream, settings: &Settings) -> io::Result<()> {
    // Without TCP_NODELAY every step of the connection sequence waits ~40 ms for delayed ACKs.
    stream.set_nodelay(true).map_err(io::Error::from)?;
    let sock = socket2::SockRef::from(stream);
    sock.set_send_buffer_size(settings.sockets.server_sndbuf)?;
    sock.set_recv_buffer_size(settings.sockets.server_rcvbuf)?;
    Ok(())
}

/// CredSSP never needs the network without a Kerberos configuration (NTLM only).
struct NoNetwork;

impl NetworkClient for NoNetwork {
    fn send(
        &mut self,
        _request: &NetworkRequest,
    ) -> impl Future<Output = ConnectorResult<Vec<u8>>> {
        std::future::ready(Err(ironrdp_connector::general_err!(
            "Kerberos is not supported: rdpwire authenticates with NTLM"
        )))
    }
}

/// `ironrdp_async` framing over any futures-io stream: reads straight into the framing buffer,
/// with no intermediate buffer and no allocation per read.
pub struct Io<S> {
    inner: S,
}

impl<S> StreamWrapper for Io<S> {
    type InnerStream = S;

    fn from_inner(stream: S) -> Self {
        Io { inner: stream }
    }

    fn into_inner(self) -> S {
        self.inner
    }

    fn get_inner(&self) -> &S {
        &self.inner
    }

    fn get_inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> FramedRead for Io<S> {
    type ReadFut<'read>
        = ReadFut<'read, S>
    where
        Self: 'read;

    fn read<'a>(&'a mut self, buf: &'a mut BytesMut) -> Self::ReadFut<'a> {
        ReadFut {
            stream: &mut self.inner,
            buf,
        }
    }
}

impl<S: AsyncWrite + Unpin> FramedWrite for Io<S> {
    type WriteAllFut<'write>
        = WriteAllFut<'write, S>
    where
        Self: 'write;

    fn write_all<'a>(&'a mut self, buf: &'a [u8]) -> Self::WriteAllFut<'a> {
        WriteAllFut {
            stream: &mut self.inner,
            buf,
        }
    }
}

/// Reads once into the spare capacity of the framing buffer. Cancel-safe: the buffer only
/// grows by what a completed read returned.
pub struct ReadFut<'a, S> {
    stream: &'a mut S,
    buf: &'a mut BytesMut,
}

impl<S: AsyncRead + Unpin> Future for ReadFut<'_, S> {
    type Output = io::Result<usize>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        READ_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let result = Pin::new(&mut *this.stream).poll_read(cx, &mut scratch[..]);
            if let Poll::Ready(Ok(n)) = &result {
                this.buf
                    .extend_from_slice(scratch.get(..*n).unwrap_or_default());
            }
            result
        })
    }
}

/// Writes all of `buf` and flushes.
pub struct WriteAllFut<'a, S> {
    stream: &'a mut S,
    buf: &'a [u8],
}

impl<S: AsyncWrite + Unpin> Future for WriteAllFut<'_, S> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        while !this.buf.is_empty() {
            let n = ready!(Pin::new(&mut *this.stream).poll_write(cx, this.buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.buf = this.buf.get(n..).unwrap_or(&[]);
        }
        Pin::new(&mut *this.stream).poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// A stream that hands out its data in small pieces and is pending every other poll.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        pending: bool,
        written: Vec<u8>,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            self.pending = !self.pending;
            if self.pending {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(3).min(self.data.len() - self.pos);
            let start = self.pos;
            buf[..n].copy_from_slice(&self.data[start..start + n]);
            self.pos += n;
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(2);
            self.written.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn framed_reads_whole_pdus_through_small_reads() {
        // Two X.224 (TPKT) PDUs of 7 and 9 bytes.
        let data = vec![
            3, 0, 0, 7, 2, 0xf0, 0x80, 3, 0, 0, 9, 2, 0xf0, 0x80, 0xaa, 0xbb,
        ];
        let stream = Trickle {
            data,
            pos: 0,
            pending: false,
            written: Vec::new(),
        };
        let mut framed = Framed::<Io<Trickle>>::new(stream);
        futures_lite::future::block_on(async {
            let (_, a) = framed.read_pdu().await.unwrap();
            assert_eq!(&a[..], &[3, 0, 0, 7, 2, 0xf0, 0x80]);
            let (_, b) = framed.read_pdu().await.unwrap();
            assert_eq!(&b[..], &[3, 0, 0, 9, 2, 0xf0, 0x80, 0xaa, 0xbb]);
            let eof = framed.read_pdu().await.unwrap_err();
            assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
            framed.write_all(&[1, 2, 3, 4, 5]).await.unwrap();
        });
        let (stream, _) = framed.into_inner();
        assert_eq!(stream.written, [1, 2, 3, 4, 5]);
    }
}

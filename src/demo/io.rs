//! Drives IronRDP's runtime-agnostic async acceptor over blocking sockets.
//!
//! Every future here completes on its first poll (the I/O inside blocks), so a trivial
//! `block_on` runs them; no executor, no tokio.

use std::future::{ready, Future, Ready};
use std::io::{self, Read, Write};

use ironrdp_async::bytes::BytesMut;
use ironrdp_async::{FramedRead, FramedWrite, NetworkClient, StreamWrapper};
use ironrdp_connector::sspi::generator::NetworkRequest;
use ironrdp_connector::{general_err, ConnectorResult};

/// A blocking `Read + Write` stream seen through IronRDP's framed traits.
pub struct Blocking<S>(S);

impl<S> StreamWrapper for Blocking<S> {
    type InnerStream = S;

    fn from_inner(stream: S) -> Self {
        Self(stream)
    }

    fn into_inner(self) -> S {
        self.0
    }

    fn get_inner(&self) -> &S {
        &self.0
    }

    fn get_inner_mut(&mut self) -> &mut S {
        &mut self.0
    }
}

impl<S: Read> FramedRead for Blocking<S> {
    type ReadFut<'read>
        = Ready<io::Result<usize>>
    where
        Self: 'read;

    fn read<'a>(&'a mut self, buf: &'a mut BytesMut) -> Self::ReadFut<'a> {
        let mut chunk = [0u8; 16 * 1024];
        let result = loop {
            match self.0.read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        ready(result.inspect(|&n| buf.extend_from_slice(chunk.get(..n).unwrap_or_default())))
    }
}

impl<S: Write> FramedWrite for Blocking<S> {
    type WriteAllFut<'write>
        = Ready<io::Result<()>>
    where
        Self: 'write;

    fn write_all<'a>(&'a mut self, buf: &'a [u8]) -> Self::WriteAllFut<'a> {
        ready(self.0.write_all(buf).and_then(|()| self.0.flush()))
    }
}

/// CredSSP with NTLM never reaches the network (no KDC); refuse if it ever tries.
pub struct NoNetwork;

impl NetworkClient for NoNetwork {
    fn send(
        &mut self,
        _request: &NetworkRequest,
    ) -> impl Future<Output = ConnectorResult<Vec<u8>>> {
        ready(Err(general_err!(
            "the demo server has no network client (kerberos is not supported)"
        )))
    }
}

/// Runs a future whose I/O is blocking to completion on this thread.
pub fn block_on<F: Future>(future: F) -> F::Output {
    futures_lite::future::block_on(future)
}

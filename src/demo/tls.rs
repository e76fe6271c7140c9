//! TLS for the demo server: a self-signed certificate made at start, rustls with ring.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

use super::DemoError;

/// The server's TLS identity.
pub struct TlsIdentity {
    pub config: Arc<ServerConfig>,
    /// The certificate's subjectPublicKey bits, which CredSSP binds the session to.
    pub public_key: Vec<u8>,
}

/// Makes a fresh ECDSA P-256 key and a self-signed certificate for `localhost` and `names`.
pub fn self_signed(names: &[String]) -> Result<TlsIdentity, DemoError> {
    let mut sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    sans.extend(names.iter().cloned());
    let key = rcgen::KeyPair::generate().map_err(DemoError::Certificate)?;
    let mut params = rcgen::CertificateParams::new(sans).map_err(DemoError::Certificate)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rdpwire demo");
    let cert = params.self_signed(&key).map_err(DemoError::Certificate)?;
    let public_key = key.public_key_raw().to_vec();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let cert_der: CertificateDer<'static> = cert.der().clone();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(DemoError::Tls)?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der)
        .map_err(DemoError::Tls)?;
    Ok(TlsIdentity {
        config: Arc::new(config),
        public_key,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn makes_an_ecdsa_identity() {
        let id = self_signed(&[]).unwrap();
        // An uncompressed P-256 point.
        assert_eq!(id.public_key.len(), 65);
        assert_eq!(id.public_key[0], 4);
    }
}

//! What to connect to and how far to trust it: the target description and the rustls client
//! configuration for each TLS policy. RDP servers mostly present self-signed certificates, so
//! besides the usual chain verification a target can pin the certificate's SHA-256 fingerprint
//! or, for labs and tests, accept anything. Certificate failures become one sentence naming the
//! host and what is wrong, so an operator knows which of the three to change.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use futures_rustls::pki_types::pem::PemObject as _;
use futures_rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use futures_rustls::rustls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// One RDP server and the account to log on with.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub domain: Option<String>,
    pub tls: TlsPolicy,
}

impl Target {
    /// `host:port`, with brackets around an IPv6 address, for messages.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The password is wiped when a target is dropped: a token's targets are built per session,
/// and a copy left in freed memory would outlive the session.
impl Drop for Target {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

/// The password never reaches a log line.
impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("domain", &self.domain)
            .field("tls", &self.tls)
            .finish()
    }
}

/// How the server's TLS certificate is checked.
#[derive(Clone, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Chain to the system's trust roots, plus the certificates in `ca_file` (PEM) if given,
    /// and match the host name.
    Verify { ca_file: Option<PathBuf> },
    /// Accept exactly the certificate whose DER encoding has this SHA-256 digest.
    Fingerprint([u8; 32]),
    /// Accept any certificate. Only for tests and isolated labs: anyone on the path can read
    /// the password.
    Insecure,
}

impl fmt::Debug for TlsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsPolicy::Verify { ca_file } => {
                f.debug_struct("Verify").field("ca_file", ca_file).finish()
            }
            TlsPolicy::Fingerprint(d) => write!(f, "Fingerprint({})", fingerprint_text(d)),
            TlsPolicy::Insecure => f.write_str("Insecure"),
        }
    }
}

impl TlsPolicy {
    /// The policy as the configuration and tokens write it (`verify`, `insecure`,
    /// `sha256:<hex>`); `None` for a CA file, which has no such name.
    pub fn name(&self) -> Option<String> {
        match self {
            TlsPolicy::Verify { ca_file: None } => Some("verify".to_owned()),
            TlsPolicy::Verify { ca_file: Some(_) } => None,
            TlsPolicy::Insecure => Some("insecure".to_owned()),
            TlsPolicy::Fingerprint(d) => Some(format!(
                "sha256:{}",
                d.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )),
        }
    }
}

/// Reads a policy name (`verify`, `insecure`, `sha256:<64 hex digits>`); `verify` checks
/// against the system's roots plus `ca_file`.
pub fn parse_tls(text: &str, ca_file: Option<PathBuf>) -> Result<TlsPolicy, String> {
    match text {
        "verify" => Ok(TlsPolicy::Verify { ca_file }),
        "insecure" => Ok(TlsPolicy::Insecure),
        other => match other.strip_prefix("sha256:") {
            Some(fp) => parse_fingerprint(fp)
                .map(TlsPolicy::Fingerprint)
                .map_err(|e| e.to_string()),
            None => Err("must be verify, insecure or sha256:<64 hex digits>".to_owned()),
        },
    }
}

/// Everything that can go wrong setting up or completing TLS with an RDP server.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TlsError {
    #[error("server certificate for {host} is not trusted: {why}")]
    Untrusted { host: String, why: String },
    #[error("certificate fingerprint mismatch: expected {expected}, got {got}")]
    FingerprintMismatch { expected: String, got: String },
    #[error("TLS handshake with {host} failed: {why}")]
    Handshake { host: String, why: String },
    #[error("cannot read the CA file {}: {why}", path.display())]
    CaFile { path: PathBuf, why: String },
    #[error(
        "no trusted root certificates: the system store is empty or unreadable ({why}); \
         install ca-certificates, or configure a CA file or a certificate fingerprint"
    )]
    NoRoots { why: String },
    #[error("{host:?} is not a valid TLS server name")]
    ServerName { host: String },
    #[error("cannot set up TLS: {0}")]
    Config(String),
    #[error(
        "invalid certificate fingerprint {given:?}: expected 64 hexadecimal digits of a \
         SHA-256 digest, optionally separated by colons"
    )]
    BadFingerprint { given: String },
}

/// SHA-256 of a certificate's DER encoding.
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// `AB:CD:…`, the form `openssl x509 -fingerprint -sha256` prints.
pub fn fingerprint_text(digest: &[u8; 32]) -> String {
    let mut s = String::with_capacity(95);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// Parses a SHA-256 fingerprint: 64 hex digits, colons and spaces ignored, any case.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], TlsError> {
    let bad = || TlsError::BadFingerprint {
        given: text.to_owned(),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| *b != b':' && !b.is_ascii_whitespace())
        .collect();
    if digits.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16).ok_or_else(bad)?;
        let lo = (pair[1] as char).to_digit(16).ok_or_else(bad)?;
        *slot = (hi * 16 + lo) as u8;
    }
    Ok(out)
}

/// The name rustls checks the certificate against and sends as SNI (none for IP addresses).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName {
        host: host.to_owned(),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration for `policy`. `Verify` reads the system trust store once per
/// process and the CA file on every call: file I/O, so the runtime calls this off the executor.
pub fn client_config(policy: &TlsPolicy) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let config = match policy {
        TlsPolicy::Verify { ca_file } => {
            let mut roots = system_roots()?.clone();
            if let Some(path) = ca_file {
                add_ca_file(&mut roots, path)?;
            }
            if roots.is_empty() {
                return Err(TlsError::NoRoots {
                    why: "no certificates found".to_owned(),
                });
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsPolicy::Fingerprint(expected) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                expected: *expected,
                provider,
            }))
            .with_no_client_auth(),
        TlsPolicy::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything { provider }))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The system trust store, loaded once. An empty store is not an error here: a CA file may
/// still supply the roots.
fn system_roots() -> Result<&'static RootCertStore, TlsError> {
    static ROOTS: OnceLock<Result<RootCertStore, TlsError>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 && !loaded.errors.is_empty() {
                let why = loaded
                    .errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(TlsError::NoRoots { why });
            }
            tracing::debug!(roots = added, "loaded system trust roots");
            Ok(roots)
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsError> {
    let ca_err = |why: String| TlsError::CaFile {
        path: path.to_owned(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| ca_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(ca_err("it contains no PEM certificate".to_owned()));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| ca_err(format!("a certificate in it is unusable: {e}")))?;
    }
    Ok(())
}

/// Carried inside the rustls error so the handshake failure can name both digests.
#[derive(Debug)]
struct FingerprintMismatch {
    expected: [u8; 32],
    got: [u8; 32],
}

impl fmt::Display for FingerprintMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate fingerprint mismatch: expected {}, got {}",
            fingerprint_text(&self.expected),
            fingerprint_text(&self.got)
        )
    }
}

impl std::error::Error for FingerprintMismatch {}

/// Accepts the one certificate with the pinned digest; handshake signatures are still checked,
/// so the peer must hold that certificate's private key.
#[derive(Debug)]
struct PinnedVerifier {
    expected: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        if got == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(FingerprintMismatch {
                    expected: self.expected,
                    got,
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `TlsPolicy::Insecure`: no check at all.
#[derive(Debug)]
struct AcceptAnything {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Turns a failed handshake into the sentence for the user. `err` is what the TLS stream
/// returned; a rustls error inside it says whether the certificate or the handshake failed.
pub fn explain_handshake(host: &str, err: &std::io::Error) -> TlsError {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls_err) => explain_rustls(host, rustls_err),
        None => TlsError::Handshake {
            host: host.to_owned(),
            why: match err.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    "the server closed the connection during the handshake".to_owned()
                }
                std::io::ErrorKind::ConnectionReset => {
                    "the server reset the connection during the handshake".to_owned()
                }
                _ => err.to_string(),
            },
        },
    }
}

/// The sentence for a rustls error met during the handshake.
pub fn explain_rustls(host: &str, err: &rustls::Error) -> TlsError {
    let untrusted = |why: &str| TlsError::Untrusted {
        host: host.to_owned(),
        why: why.to_owned(),
    };
    match err {
        rustls::Error::InvalidCertificate(cert_err) => match cert_err {
            CertificateError::Other(other) => match other.0.downcast_ref::<FingerprintMismatch>() {
                Some(m) => TlsError::FingerprintMismatch {
                    expected: fingerprint_text(&m.expected),
                    got: fingerprint_text(&m.got),
                },
                None => untrusted(&other.to_string()),
            },
            CertificateError::UnknownIssuer => untrusted(
                "it is not signed by a trusted certificate authority (for a self-signed \
                 server, configure its CA file or pin its certificate fingerprint)",
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                untrusted(&format!("it is not issued for the name {host}"))
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                untrusted("it has expired")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                untrusted("it is not valid yet (check both clocks)")
            }
            CertificateError::Revoked => untrusted("it has been revoked"),
            CertificateError::BadEncoding => untrusted("it is malformed"),
            other => untrusted(&format!("{other:?}")),
        },
        other => TlsError::Handshake {
            host: host.to_owned(),
            why: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn fingerprint_round_trips_through_text() {
        let d = fingerprint(b"certificate");
        let text = fingerprint_text(&d);
        assert_eq!(text.len(), 95);
        assert_eq!(parse_fingerprint(&text).unwrap(), d);
        assert_eq!(
            parse_fingerprint(&text.replace(':', "").to_lowercase()).unwrap(),
            d
        );
        assert!(matches!(
            parse_fingerprint("AB:CD"),
            Err(TlsError::BadFingerprint { .. })
        ));
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn pinned_verifier_names_both_digests() {
        let expected = [0x11; 32];
        let v = PinnedVerifier {
            expected,
            provider: provider(),
        };
        let cert = CertificateDer::from(vec![1u8, 2, 3]);
        let name = server_name("rdp.example").unwrap();
        let err = v
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        let sentence = explain_rustls("rdp.example", &err).to_string();
        assert_eq!(
            sentence,
            format!(
                "certificate fingerprint mismatch: expected {}, got {}",
                fingerprint_text(&expected),
                fingerprint_text(&fingerprint(&[1, 2, 3]))
            )
        );
        let ok = PinnedVerifier {
            expected: fingerprint(&[1, 2, 3]),
            provider: provider(),
        };
        assert!(ok
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .is_ok());
    }

    #[test]
    fn certificate_errors_become_sentences() {
        let e = explain_rustls(
            "10.0.0.5",
            &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert!(e
            .to_string()
            .starts_with("server certificate for 10.0.0.5 is not trusted: it is not signed"));
        let e = explain_handshake(
            "h",
            &std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof"),
        );
        assert_eq!(
            e.to_string(),
            "TLS handshake with h failed: the server closed the connection during the handshake"
        );
    }

    #[test]
    fn configs_build_for_every_policy() {
        client_config(&TlsPolicy::Insecure).unwrap();
        client_config(&TlsPolicy::Fingerprint([0; 32])).unwrap();
        let missing = TlsPolicy::Verify {
            ca_file: Some("/nonexistent/ca.pem".into()),
        };
        match client_config(&missing) {
            Err(TlsError::CaFile { .. }) | Err(TlsError::NoRoots { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(server_name("10.0.0.5").is_ok());
        assert!(server_name("bad name").is_err());
    }

    #[test]
    fn debug_redacts_the_password() {
        let t = Target {
            host: "h".into(),
            port: 3389,
            username: "bob".into(),
            password: "hunter2".into(),
            domain: None,
            tls: TlsPolicy::Insecure,
        };
        assert!(!format!("{t:?}").contains("hunter2"));
        assert_eq!(t.endpoint(), "h:3389");
    }
}

//! Setting up `ironrdp_connector::ClientConnector` for a target, and reading what the
//! connection sequence left behind: the server's public key for CredSSP, and connector errors
//! turned into sentences. The sequence itself is driven by the runtime shell; this module holds
//! every decision that does not need a socket.

use std::net::SocketAddr;

use ironrdp_connector::{ClientConnector, Config, ConnectorError, ConnectorErrorKind, Credentials};
use ironrdp_displaycontrol::client::DisplayControlClient;
use ironrdp_dvc::DrdynvcClient;

use super::dvc::BoundedDrdynvc;
use super::large::LargeBudget;
use crate::audio::AudioSink;
use ironrdp_pdu::gcc;
use ironrdp_pdu::rdp::capability_sets::{MajorPlatformType, RailSupportLevel};
use x509_cert::der::Decode as _;

pub use ironrdp_connector::DesktopSize;

use super::egfx::GfxChannel;
use super::target::Target;
use super::RdpError;

/// What the client calls itself in the Client Core Data (at most 15 characters).
pub const CLIENT_NAME: &str = "rdpwire";

/// Where in the connection sequence a failure happened; decides how it is worded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// X.224 negotiation up to the TLS upgrade.
    Negotiation,
    /// CredSSP (NLA) over TLS.
    Credssp,
    /// Everything after authentication up to the first graphics.
    Finalization,
}

impl Phase {
    fn doing(self) -> &'static str {
        match self {
            Phase::Negotiation => "negotiating security",
            Phase::Credssp => "authenticating",
            Phase::Finalization => "setting up the session",
        }
    }
}

/// The connector configuration: TLS and NLA (never Standard RDP Security), the graphics
/// pipeline, no bulk compression (ZGFX still applies to graphics), server-drawn pointer
/// shapes, no audio, US keyboard layout.
pub fn config(target: &Target, size: DesktopSize) -> Config {
    Config {
        desktop_size: size,
        monitor_layout: None,
        desktop_scale_factor: 0,
        desktop_physical_size: None,
        desktop_orientation: None,
        device_scale_factor: None,
        monitor_extended_layout: None,
        relative_mouse_input: false,
        enable_tls: true,
        enable_credssp: true,
        enable_standard_rdp_security: false,
        credentials: Credentials::UsernamePassword {
            username: target.username.clone(),
            password: target.password.clone(),
        },
        domain: target.domain.clone(),
        client_build: 0,
        client_name: CLIENT_NAME.to_owned(),
        keyboard_type: gcc::KeyboardType::IBM_ENHANCED,
        keyboard_subtype: 0,
        keyboard_functional_keys_count: 12,
        keyboard_layout: 0x0409,
        connection_type: gcc::ConnectionType::Lan,
        ime_file_name: String::new(),
        bitmap: None,
        dig_product_id: String::new(),
        client_dir: String::new(),
        alternate_shell: String::new(),
        work_dir: String::new(),
        remote_application_mode: false,
        rail_support_level: RailSupportLevel::empty(),
        platform: MajorPlatformType::UNIX,
        hardware_id: None,
        request_data: None,
        autologon: false,
        // Set by `connector` when the session plays sound.
        enable_audio_playback: false,
        enable_audio_capture: false,
        performance_flags: Default::default(),
        license_cache: None,
        timezone_info: Default::default(),
        compression_type: None,
        enable_server_pointer: true,
        pointer_software_rendering: false,
        multitransport_flags: None,
        support_dyn_vc_gfx_protocol: true,
    }
}

/// The connector for `target`, with the graphics pipeline and display control channels
/// registered (the latter lets the page resize the remote desktop where the server allows),
/// and, when the session plays sound, the audio output channels in both forms.
pub fn connector(
    target: &Target,
    size: DesktopSize,
    client_addr: SocketAddr,
    max_dvc_message: usize,
    large: Option<LargeBudget>,
    audio: Option<(&AudioSink, u64)>,
) -> ClientConnector {
    let dvc = DrdynvcClient::new()
        .with_dynamic_channel(GfxChannel::new())
        .with_dynamic_channel(DisplayControlClient::new(|_| Ok(Vec::new())));
    let mut cfg = config(target, size);
    cfg.enable_audio_playback = audio.is_some();
    let connector = ClientConnector::new(cfg, client_addr);
    let bounded = |dvc| {
        let d = BoundedDrdynvc::new(dvc, max_dvc_message);
        match large {
            Some(budget) => d.with_budget(budget),
            None => d,
        }
    };
    match audio {
        Some((sink, session)) => {
            let (stat, dynamic) = super::audio::channels(sink, session);
            connector
                .with_static_channel(stat)
                .with_static_channel(bounded(dvc.with_dynamic_channel(dynamic.channel())))
        }
        None => connector.with_static_channel(bounded(dvc)),
    }
}

/// The user name as the server sees it, for messages.
pub fn display_user(target: &Target) -> String {
    match &target.domain {
        Some(d) if !d.is_empty() => format!("{d}\\{}", target.username),
        _ => target.username.clone(),
    }
}

/// CredSSP binds the authentication to the TLS channel with the server's public key: the
/// `subjectPublicKey` bits of its certificate.
pub fn server_public_key(host: &str, cert_der: &[u8]) -> Result<Vec<u8>, RdpError> {
    let cert = x509_cert::Certificate::from_der(cert_der).map_err(|e| RdpError::Protocol {
        host: host.to_owned(),
        phase: Phase::Credssp.doing(),
        why: format!("the server's certificate cannot be parsed: {e}"),
    })?;
    let key = cert
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes()
        .to_vec();
    Ok(key)
}

/// Words for a connector error in `phase`.
pub fn explain(target: &Target, phase: Phase, err: &ConnectorError) -> RdpError {
    tracing::debug!(host = target.host, ?phase, err = %err.report(), "connector error");
    let host = target.host.clone();
    match err.kind() {
        ConnectorErrorKind::Negotiation(failure) => RdpError::Negotiation {
            host,
            why: failure.to_string(),
        },
        ConnectorErrorKind::AccessDenied => RdpError::AuthFailed {
            user: display_user(target),
        },
        ConnectorErrorKind::Credssp(e) => match e.nstatus {
            Some(status) => explain_nstatus(target, status.0),
            None => RdpError::Protocol {
                host,
                phase: Phase::Credssp.doing(),
                why: format!("{:?}: {}", e.error_type, e.description),
            },
        },
        // A server that rejects NLA credentials may simply close the connection.
        _ if phase == Phase::Credssp && io_cause(err).is_some_and(is_closed) => {
            RdpError::AuthFailed {
                user: display_user(target),
            }
        }
        _ => match io_cause(err) {
            Some(io) => RdpError::ConnectionLost {
                host,
                why: format!("{} while {}", super::describe_io(io), phase.doing()),
            },
            None => RdpError::Protocol {
                host,
                phase: phase.doing(),
                why: err.report().to_string(),
            },
        },
    }
}

/// The server's NTSTATUS for a refused logon, in words. Anything not listed is a plain
/// rejection of the credentials.
fn explain_nstatus(target: &Target, status: u32) -> RdpError {
    let user = display_user(target);
    let why = match status {
        0xC000_0071 | 0xC000_0224 => "the password has expired and must be changed",
        0xC000_0072 => "the account is disabled",
        0xC000_0234 => "the account is locked out",
        0xC000_0193 => "the account has expired",
        0xC000_006F => "the account may not log on at this time of day",
        0xC000_0070 => "the account may not log on from this computer",
        0xC000_015B => "the account is not granted remote desktop logon on this server",
        0xC000_006E => "an account restriction prevents the logon",
        _ => {
            tracing::debug!(
                user,
                status = format_args!("0x{status:08x}"),
                "logon refused"
            );
            return RdpError::AuthFailed { user };
        }
    };
    RdpError::AccountRefused {
        user,
        why: why.to_owned(),
    }
}

fn is_closed(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}

/// The I/O error at the bottom of a connector error, if any.
fn io_cause(err: &ConnectorError) -> Option<&std::io::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::rdp::target::TlsPolicy;

    fn target() -> Target {
        Target {
            host: "rdp.example".into(),
            port: 3389,
            username: "bob".into(),
            password: "pw".into(),
            domain: None,
            tls: TlsPolicy::Insecure,
        }
    }

    #[test]
    fn config_asks_for_the_graphics_pipeline_and_nla() {
        let c = config(
            &target(),
            DesktopSize {
                width: 1280,
                height: 720,
            },
        );
        assert!(c.support_dyn_vc_gfx_protocol);
        assert!(c.enable_credssp && c.enable_tls && !c.enable_standard_rdp_security);
        assert_eq!(c.desktop_size.width, 1280);
        assert!(c.compression_type.is_none());
    }

    #[test]
    fn errors_are_sentences() {
        let eof =
            ConnectorError::new("read frame by hint", ConnectorErrorKind::Custom).with_source(
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "not enough bytes"),
            );
        assert_eq!(
            explain(&target(), Phase::Credssp, &eof).to_string(),
            "authentication failed for user 'bob': the server rejected the credentials"
        );
        assert_eq!(
            explain(&target(), Phase::Finalization, &eof).to_string(),
            "connection to rdp.example was lost: the remote desktop closed the connection while setting up the session"
        );
        let mut t = target();
        t.domain = Some("CORP".into());
        assert_eq!(display_user(&t), "CORP\\bob");
    }

    #[test]
    fn logon_statuses_are_worded() {
        let status = |code| {
            let e = ironrdp_connector::sspi::Error::new_with_nstatus(
                ironrdp_connector::sspi::ErrorKind::InvalidToken,
                "CredSSP server returned an error status",
                ironrdp_connector::sspi::credssp::NStatusCode(code),
            );
            let err = ConnectorError::new("CredSSP", ConnectorErrorKind::Credssp(e));
            explain(&target(), Phase::Credssp, &err).to_string()
        };
        assert_eq!(
            status(0xC000_006D),
            "authentication failed for user 'bob': the server rejected the credentials"
        );
        assert_eq!(
            status(0xC000_0234),
            "user 'bob' cannot log on: the account is locked out"
        );
    }

    #[test]
    fn garbage_certificate_is_a_protocol_error() {
        let err = server_public_key("h", &[1, 2, 3]).unwrap_err();
        assert!(
            err.to_string().contains("certificate cannot be parsed"),
            "{err}"
        );
    }
}

//! Which RDP servers the gateway may connect to, for named targets and connection tokens
//! alike. The decision is made on the addresses a host name resolved to, and the runtime then
//! connects to exactly those addresses: a name cannot resolve to one address for the check and
//! to another for the connection (DNS rebinding). Sans-IO: a host, a port and its addresses
//! in; allowed, or the reason why not, out.
//!
//! The rules, in order, for every address:
//! 1. the gateway's own listener is never a target;
//! 2. an exempt endpoint (the demo desktop, set by code) is allowed;
//! 3. with a port list, the port must be on it;
//! 4. an address in a range denied by default (loopback, link-local, cloud metadata,
//!    unspecified, multicast, reserved: [`denied::RANGES`]) needs an allowlist CIDR inside
//!    that range, so a broad `0.0.0.0/0` never opens the metadata service by accident, and a
//!    host name on the allowlist never does either;
//! 5. with an allowlist, the host name must match one of its names or the address lie in one
//!    of its networks.

pub mod cidr;
pub mod denied;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

pub use cidr::Cidr;

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    Network(Cidr),
    /// A host name, lowercase, without a trailing dot.
    Host(String),
    /// `*.example.com`: any name below `example.com` (not `example.com` itself).
    Domain(String),
}

/// The gateway's own listening socket, which no target may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    /// With a wildcard listen address (`0.0.0.0`, `::`): the host's interface addresses, all
    /// of which reach the listener.
    pub local_ips: Vec<IpAddr>,
}

impl Listener {
    fn is(&self, candidate: SocketAddr) -> bool {
        let ip = candidate.ip().to_canonical();
        candidate.port() == self.addr.port()
            && (ip == self.addr.ip().to_canonical()
                || self.addr.ip().is_unspecified()
                    && (ip.is_loopback() || ip.is_unspecified() || self.local_ips.contains(&ip)))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    allow: Vec<Allow>,
    ports: Vec<RangeInclusive<u16>>,
    exempt: Vec<SocketAddr>,
    listeners: Vec<Listener>,
}

/// Why a target was refused; the sentence the page shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{endpoint} is this gateway itself")]
    Gateway { endpoint: SocketAddr },
    #[error("port {port} is not one of the ports this gateway connects to")]
    Port { port: u16 },
    #[error("{}", special(host, *addr, class))]
    Special {
        host: String,
        addr: IpAddr,
        class: &'static str,
    },
    #[error("{host} is not on this gateway's list of allowed targets")]
    NotListed { host: String },
}

fn special(host: &str, addr: IpAddr, class: &str) -> String {
    if host
        .parse::<IpAddr>()
        .is_ok_and(|h| h.to_canonical() == addr)
    {
        format!("{addr} is a {class} address")
    } else {
        format!("{host} resolves to {addr}, a {class} address")
    }
}

impl TargetPolicy {
    pub fn new(allow: Vec<Allow>, ports: Vec<RangeInclusive<u16>>) -> TargetPolicy {
        TargetPolicy {
            allow,
            ports,
            ..TargetPolicy::default()
        }
    }

    /// The policy from its two settings' texts, `target_policy.allow` and
    /// `target_policy.ports`.
    pub fn parse(allow: &str, ports: &str) -> Result<TargetPolicy, String> {
        Ok(TargetPolicy::new(
            parse_allowlist(allow)?,
            parse_port_list(ports)?,
        ))
    }

    /// Allows exactly this endpoint whatever the lists say (the demo desktop on loopback).
    pub fn exempt(&mut self, endpoint: SocketAddr) {
        self.exempt.push(endpoint);
    }

    /// The gateway's listeners, once bound: never a target.
    pub fn set_listeners(&mut self, listeners: Vec<Listener>) {
        self.listeners = listeners;
    }

    /// Checks every address `host` resolved to; one refused address refuses the target, since
    /// the connection would try them all.
    pub fn check(&self, host: &str, addrs: &[SocketAddr]) -> Result<(), Denied> {
        for &addr in addrs {
            self.check_one(host, addr)?;
        }
        Ok(())
    }

    fn check_one(&self, host: &str, endpoint: SocketAddr) -> Result<(), Denied> {
        let ip = endpoint.ip().to_canonical();
        let endpoint = SocketAddr::new(ip, endpoint.port());
        if self.listeners.iter().any(|l| l.is(endpoint)) {
            return Err(Denied::Gateway { endpoint });
        }
        if self
            .exempt
            .iter()
            .any(|e| e.port() == endpoint.port() && e.ip().to_canonical() == ip)
        {
            return Ok(());
        }
        if !self.ports.is_empty() && !self.ports.iter().any(|r| r.contains(&endpoint.port())) {
            return Err(Denied::Port {
                port: endpoint.port(),
            });
        }
        let networks = || {
            self.allow.iter().filter_map(|a| match a {
                Allow::Network(c) => Some(c),
                _ => None,
            })
        };
        if let Some(d) = denied::narrowest(ip) {
            if !networks().any(|c| d.range.covers(c) && c.contains(ip)) {
                return Err(Denied::Special {
                    host: host.to_owned(),
                    addr: ip,
                    class: d.class,
                });
            }
        }
        if self.allow.is_empty() {
            return Ok(());
        }
        let name = normalize(host);
        let listed = self.allow.iter().any(|a| match a {
            Allow::Network(c) => c.contains(ip),
            Allow::Host(h) => *h == name,
            Allow::Domain(d) => name
                .strip_suffix(d.as_str())
                .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        });
        if listed {
            Ok(())
        } else {
            Err(Denied::NotListed {
                host: host.to_owned(),
            })
        }
    }
}

impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allow::Network(c) => c.fmt(f),
            Allow::Host(h) => f.write_str(h),
            Allow::Domain(d) => write!(f, "*.{d}"),
        }
    }
}

/// `target_policy.allow`: networks and host names, comma-separated.
pub fn parse_allowlist(text: &str) -> Result<Vec<Allow>, String> {
    items(text).map(parse_allow).collect()
}

/// `target_policy.ports`: ports and ranges, comma-separated.
pub fn parse_port_list(text: &str) -> Result<Vec<RangeInclusive<u16>>, String> {
    items(text).map(parse_ports).collect()
}

fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn parse_allow(item: &str) -> Result<Allow, String> {
    if item.contains('/') || item.parse::<IpAddr>().is_ok() {
        return Cidr::parse(item).map(Allow::Network);
    }
    let (domain, name) = match item.strip_prefix("*.") {
        Some(rest) => (true, normalize(rest)),
        None => (false, normalize(item)),
    };
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(format!(
            "{item:?} is neither a network (10.0.0.0/8, 2001:db8::/32, 192.0.2.7) nor a host \
             name (rdp.example.com, *.corp.example)"
        ));
    }
    Ok(if domain {
        Allow::Domain(name)
    } else {
        Allow::Host(name)
    })
}

fn parse_ports(item: &str) -> Result<RangeInclusive<u16>, String> {
    let port = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{s:?} is not a port from 1 to 65535"))
    };
    let range = match item.split_once('-') {
        Some((a, b)) => port(a)?..=port(b)?,
        None => port(item)?..=port(item)?,
    };
    if range.is_empty() {
        return Err(format!("{item:?} is an empty range"));
    }
    Ok(range)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(s: &str) -> Vec<SocketAddr> {
        s.split(' ').map(|a| a.parse().unwrap()).collect()
    }

    fn policy(allow: &str, ports: &str) -> TargetPolicy {
        TargetPolicy::parse(allow, ports).unwrap()
    }

    #[test]
    fn by_default_ordinary_addresses_pass_and_special_ones_do_not() {
        let p = TargetPolicy::default();
        assert_eq!(p.check("rdp.example", &at("10.0.0.5:3389")), Ok(()));
        assert_eq!(p.check("rdp.example", &at("[2001:db8::5]:3389")), Ok(()));
        let e = p.check("localhost", &at("127.0.0.1:3389")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "localhost resolves to 127.0.0.1, a loopback address"
        );
        let e = p.check("127.0.0.1", &at("127.0.0.1:3389")).unwrap_err();
        assert_eq!(e.to_string(), "127.0.0.1 is a loopback address");
        for (addr, class) in [
            ("169.254.169.254:80", "cloud metadata"),
            ("169.254.3.4:3389", "link-local"),
            ("[fe80::1]:3389", "link-local"),
            ("0.0.0.0:3389", "unspecified"),
            ("[::]:3389", "unspecified"),
            ("224.0.0.1:3389", "multicast"),
            ("[::ffff:127.0.0.1]:3389", "loopback"),
            ("[::1]:3389", "loopback"),
        ] {
            let e = p.check("h", &at(addr)).unwrap_err();
            assert!(
                matches!(&e, Denied::Special { class: c, .. } if *c == class),
                "{addr}: {e}"
            );
        }
    }

    #[test]
    fn one_bad_address_refuses_the_name() {
        let p = TargetPolicy::default();
        let e = p
            .check("mixed.example", &at("10.0.0.5:3389 127.0.0.1:3389"))
            .unwrap_err();
        assert!(e.to_string().contains("127.0.0.1"), "{e}");
    }

    #[test]
    fn special_ranges_open_only_to_a_cidr_inside_them() {
        let p = policy("127.0.0.1/32", "");
        assert_eq!(p.check("localhost", &at("127.0.0.1:3389")), Ok(()));
        // Still listed: 127.0.0.2 is loopback but not allowed.
        assert!(p.check("x", &at("127.0.0.2:3389")).is_err());
        // A broad network does not lift the default denials.
        let p = policy("0.0.0.0/0, ::/0", "");
        assert!(p.check("x", &at("127.0.0.1:3389")).is_err());
        assert!(p.check("x", &at("169.254.169.254:80")).is_err());
        assert_eq!(p.check("x", &at("198.51.100.4:3389")), Ok(()));
        // Link-local allowed; the metadata service in it is not.
        let p = policy("169.254.0.0/16", "");
        assert_eq!(p.check("x", &at("169.254.3.4:3389")), Ok(()));
        let e = p.check("x", &at("169.254.169.254:3389")).unwrap_err();
        assert!(e.to_string().contains("cloud metadata"), "{e}");
        // A host name on the list does not lift them either.
        let p = policy("localhost", "");
        assert!(p.check("localhost", &at("127.0.0.1:3389")).is_err());
    }

    #[test]
    fn the_allowlist_matches_names_and_networks() {
        let p = policy("10.0.0.0/8, rdp.example.com, *.corp.example", "");
        assert_eq!(p.check("anything", &at("10.9.9.9:3389")), Ok(()));
        assert_eq!(
            p.check("RDP.example.com.", &at("198.51.100.1:3389")),
            Ok(())
        );
        assert_eq!(
            p.check("pc7.corp.example", &at("198.51.100.2:3389")),
            Ok(())
        );
        assert_eq!(
            p.check("a.b.corp.example", &at("198.51.100.2:3389")),
            Ok(())
        );
        let e = p
            .check("corp.example", &at("198.51.100.2:3389"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "corp.example is not on this gateway's list of allowed targets"
        );
        assert!(p
            .check("evilcorp.example", &at("198.51.100.2:3389"))
            .is_err());
        assert!(p.check("192.168.1.1", &at("192.168.1.1:3389")).is_err());
    }

    #[test]
    fn ports() {
        let p = policy("", "3389, 3390-3399");
        assert_eq!(p.check("h", &at("10.0.0.1:3389")), Ok(()));
        assert_eq!(p.check("h", &at("10.0.0.1:3395")), Ok(()));
        let e = p.check("h", &at("10.0.0.1:22")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "port 22 is not one of the ports this gateway connects to"
        );
    }

    #[test]
    fn the_gateway_itself_is_never_a_target() {
        let mut p = policy("127.0.0.0/8", "");
        p.set_listeners(vec![Listener {
            addr: "127.0.0.1:8080".parse().unwrap(),
            local_ips: vec![],
        }]);
        let e = p.check("127.0.0.1", &at("127.0.0.1:8080")).unwrap_err();
        assert_eq!(e.to_string(), "127.0.0.1:8080 is this gateway itself");
        assert_eq!(p.check("127.0.0.1", &at("127.0.0.1:3389")), Ok(()));
        // Listening on every address: every local address on that port is the gateway.
        let mut p = policy("", "");
        p.exempt("127.0.0.1:8080".parse().unwrap());
        p.set_listeners(vec![Listener {
            addr: "0.0.0.0:8080".parse().unwrap(),
            local_ips: vec!["192.0.2.10".parse().unwrap()],
        }]);
        assert!(p.check("h", &at("192.0.2.10:8080")).is_err());
        assert!(p.check("h", &at("127.0.0.1:8080")).is_err());
        assert_eq!(p.check("h", &at("192.0.2.11:8080")), Ok(()));
    }

    #[test]
    fn an_exempt_endpoint_passes_every_list() {
        let mut p = policy("10.0.0.0/8", "3389");
        p.exempt("127.0.0.1:40000".parse().unwrap());
        assert_eq!(p.check("127.0.0.1", &at("127.0.0.1:40000")), Ok(()));
        assert!(p.check("127.0.0.1", &at("127.0.0.1:40001")).is_err());
    }

    #[test]
    fn bad_settings_are_explained() {
        assert!(TargetPolicy::parse("rdp..example", "")
            .unwrap_err()
            .contains("neither a network"));
        assert!(TargetPolicy::parse("", "0")
            .unwrap_err()
            .contains("1 to 65535"));
        assert!(TargetPolicy::parse("", "3399-3389")
            .unwrap_err()
            .contains("empty range"));
        assert!(TargetPolicy::parse("10.0.0.1/8", "")
            .unwrap_err()
            .contains("10.0.0.0/8"));
    }
}

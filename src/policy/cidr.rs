//! IP networks written as CIDRs (`10.0.0.0/8`, `2001:db8::/32`), the unit of the target
//! policy's allowlist and of the ranges it denies by default.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A network: an address whose host bits are zero, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// For the built-in tables, whose literals are known to be well-formed: the host bits of
    /// `network` are cleared rather than refused.
    pub const fn v4(network: Ipv4Addr, prefix: u8) -> Cidr {
        let bits = u32::from_be_bytes(network.octets()) & mask32(prefix);
        Cidr {
            network: IpAddr::V4(Ipv4Addr::from_bits(bits)),
            prefix,
        }
    }

    pub const fn v6(network: Ipv6Addr, prefix: u8) -> Cidr {
        let bits = u128::from_be_bytes(network.octets()) & mask128(prefix);
        Cidr {
            network: IpAddr::V6(Ipv6Addr::from_bits(bits)),
            prefix,
        }
    }

    /// One address as a network of one.
    pub fn host(ip: IpAddr) -> Cidr {
        let ip = ip.to_canonical();
        Cidr {
            network: ip,
            prefix: if ip.is_ipv4() { 32 } else { 128 },
        }
    }

    /// `addr/prefix`, or a bare address (a network of one). A CIDR whose address has host
    /// bits set is refused: `10.0.0.5/8` is more likely a typo than a wish for `10.0.0.0/8`.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let ip = ip.to_canonical();
        let Some(prefix) = prefix else {
            return Ok(Cidr::host(ip));
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{prefix:?} is not a prefix length from 0 to {max}"))?;
        let cidr = match ip {
            IpAddr::V4(v4) => Cidr::v4(v4, prefix),
            IpAddr::V6(v6) => Cidr::v6(v6, prefix),
        };
        if cidr.network != ip {
            return Err(format!(
                "{text} has bits set after the prefix; the network is {cidr}"
            ));
        }
        Ok(cidr)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }

    /// True when every address of `other` is in this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.network)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

const fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else if prefix >= 32 {
        u32::MAX
    } else {
        u32::MAX << (32 - prefix)
    }
}

const fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else if prefix >= 128 {
        u128::MAX
    } else {
        u128::MAX << (128 - prefix)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_networks_and_single_addresses() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.200.3.4")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("::1")));
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("203.0.113.9")));
    }

    #[test]
    fn mistakes_are_named() {
        assert!(Cidr::parse("10.0.0.5/8")
            .unwrap_err()
            .contains("the network is 10.0.0.0/8"));
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(Cidr::parse("rdp.example/8")
            .unwrap_err()
            .contains("not an IP address"));
    }

    #[test]
    fn mapped_addresses_count_as_ipv4() {
        let lo = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains(ip("::ffff:127.0.0.1")));
        assert_eq!(
            Cidr::parse("::ffff:10.1.2.3").unwrap(),
            Cidr::parse("10.1.2.3").unwrap()
        );
    }

    #[test]
    fn coverage_is_by_prefix() {
        let link = Cidr::parse("169.254.0.0/16").unwrap();
        let meta = Cidr::parse("169.254.169.254/32").unwrap();
        assert!(link.covers(&meta));
        assert!(!meta.covers(&link));
        assert!(!Cidr::parse("::/0").unwrap().covers(&meta));
    }
}

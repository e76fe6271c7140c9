//! Addresses no target may have unless the operator names them in the allowlist: where an
//! RDP connection would reach the gateway's own host, the cloud's metadata service or no
//! single host at all. A page holding a token or a target name must not be able to turn the
//! gateway into a way into those.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::cidr::Cidr;

/// One denied range and what to call it in a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub range: Cidr,
    pub class: &'static str,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8, class: &'static str) -> Denied {
    Denied {
        range: Cidr::v4(Ipv4Addr::new(a, b, c, d), prefix),
        class,
    }
}

const fn v6(segments: [u16; 8], prefix: u8, class: &'static str) -> Denied {
    let [a, b, c, d, e, f, g, h] = segments;
    Denied {
        range: Cidr::v6(Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix),
        class,
    }
}

/// Ranges may nest (the metadata address lies in link-local); the narrowest one that holds an
/// address decides, so allowing `169.254.0.0/16` does not allow the metadata service in it.
pub const RANGES: &[Denied] = &[
    v4(0, 0, 0, 0, 8, "unspecified"),
    v4(127, 0, 0, 0, 8, "loopback"),
    v4(169, 254, 0, 0, 16, "link-local"),
    // AWS, Azure, GCP, Oracle and most others.
    v4(169, 254, 169, 254, 32, "cloud metadata"),
    // Alibaba Cloud's metadata service and Azure's platform endpoint (WireServer).
    v4(100, 100, 100, 200, 32, "cloud metadata"),
    v4(168, 63, 129, 16, 32, "cloud metadata"),
    v4(224, 0, 0, 0, 4, "multicast"),
    // Class E and the limited broadcast address.
    v4(240, 0, 0, 0, 4, "reserved"),
    // IPv4-compatible IPv6 (deprecated): `::127.0.0.1` must not read as a public address.
    v6([0, 0, 0, 0, 0, 0, 0, 0], 96, "reserved"),
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified"),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local"),
    v6(
        [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254],
        128,
        "cloud metadata",
    ),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast"),
];

/// The narrowest denied range holding `ip`, if any.
pub fn narrowest(ip: IpAddr) -> Option<&'static Denied> {
    RANGES
        .iter()
        .filter(|d| d.range.contains(ip))
        .max_by_key(|d| d.range.prefix())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn class(s: &str) -> Option<&'static str> {
        narrowest(s.parse().unwrap()).map(|d| d.class)
    }

    #[test]
    fn classes() {
        assert_eq!(class("127.0.0.1"), Some("loopback"));
        assert_eq!(class("127.8.9.10"), Some("loopback"));
        assert_eq!(class("::1"), Some("loopback"));
        assert_eq!(class("::ffff:127.0.0.1"), Some("loopback"));
        assert_eq!(class("169.254.10.1"), Some("link-local"));
        assert_eq!(class("169.254.169.254"), Some("cloud metadata"));
        assert_eq!(class("fd00:ec2::254"), Some("cloud metadata"));
        assert_eq!(class("fe80::1"), Some("link-local"));
        assert_eq!(class("0.0.0.0"), Some("unspecified"));
        assert_eq!(class("::"), Some("unspecified"));
        assert_eq!(class("::7f00:1"), Some("reserved"));
        assert_eq!(class("239.1.1.1"), Some("multicast"));
        assert_eq!(class("ff02::1"), Some("multicast"));
        assert_eq!(class("255.255.255.255"), Some("reserved"));
        assert_eq!(class("10.1.2.3"), None);
        assert_eq!(class("192.168.1.1"), None);
        assert_eq!(class("2001:db8::1"), None);
    }
}

//! The strings that end up in nginx.conf, checked before they get there.
//!
//! Every value rendered comes from a spec or the cluster, so each is parsed into a type
//! that can only print safe text: no `;`, `{`, quote or newline can reach the config
//! and change its meaning.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address range for `allow`/`deny`, kept in canonical form (host bits cleared), so
/// `10.1.2.3/8` and `10.0.0.0/8` render the same and nginx has nothing to warn about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or CIDR range (e.g. 203.0.113.0/24, 2001:db8::/32)")]
pub struct BadCidr(pub String);

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(s: &str) -> Result<Self, BadCidr> {
        let bad = || BadCidr(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => {
                let addr: IpAddr = addr.parse().map_err(|_| bad())?;
                // Digits only: `u8::from_str` would also take "+8".
                if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let prefix: u8 = prefix.parse().map_err(|_| bad())?;
                (addr, prefix)
            }
            None => {
                let addr: IpAddr = s.parse().map_err(|_| bad())?;
                (addr, max_prefix(addr))
            }
        };
        if prefix > max_prefix(addr) {
            return Err(bad());
        }
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = bits.checked_shr(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(kept.checked_shl(32 - u32::from(prefix)).unwrap_or(0).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = bits.checked_shr(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(
                kept.checked_shl(128 - u32::from(prefix))
                    .unwrap_or(0)
                    .into(),
            )
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == max_prefix(self.addr) {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// An upstream `host:port`: an IP address or a DNS name (a Service's cluster name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Upstream {
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadUpstream {
    #[error("upstream host {0:?} is neither an IP address nor a DNS name")]
    Host(String),
    #[error("upstream {0}: port 0")]
    Port(String),
}

impl Upstream {
    pub fn new(host: &str, port: u16) -> Result<Self, BadUpstream> {
        if port == 0 {
            return Err(BadUpstream::Port(host.to_owned()));
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let host = if let Ok(ip) = bare.parse::<IpAddr>() {
            Host::Ip(ip)
        } else if is_dns_name(host) {
            Host::Name(host.to_ascii_lowercase())
        } else {
            return Err(BadUpstream::Host(host.to_owned()));
        };
        Ok(Upstream { host, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]:{}", self.port),
            Host::Ip(IpAddr::V4(v4)) => write!(f, "{v4}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A game server's name as it appears in a config comment and the port map:
/// `namespace/pod` or a pod name, Kubernetes name characters only.
pub fn is_server_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 317
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'/')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let good: &[(&str, &str)] = &[
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("203.0.113.7", "203.0.113.7"),
            ("203.0.113.7/32", "203.0.113.7"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("2001:db8::1/32", "2001:db8::/32"),
            ("::/0", "::/0"),
            ("2001:db8::1", "2001:db8::1"),
        ];
        for (input, want) in good {
            let got: Cidr = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got.to_string(), *want, "{input}");
        }
        for bad in [
            "",
            "all",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0/8",
            "::/129",
            "1.2.3.4; deny all",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn upstreams() {
        let good: &[(&str, u16, &str)] = &[
            ("10.0.0.5", 7000, "10.0.0.5:7000"),
            ("fd00::5", 9999, "[fd00::5]:9999"),
            ("[fd00::5]", 9999, "[fd00::5]:9999"),
            (
                "Auth.tanks-system.svc.cluster.local",
                8888,
                "auth.tanks-system.svc.cluster.local:8888",
            ),
        ];
        for (host, port, want) in good {
            assert_eq!(
                Upstream::new(host, *port).map(|u| u.to_string()).as_deref(),
                Ok(*want)
            );
        }
        for host in ["", "a b", "x;", "-x", "x}", "a..b", "auth\nserver"] {
            assert!(Upstream::new(host, 1).is_err(), "accepted {host:?}");
        }
        assert!(Upstream::new("10.0.0.1", 0).is_err());
    }

    #[test]
    fn server_keys() {
        assert!(is_server_key("tanks-system/arena-x7k2p"));
        for bad in ["", "a b", "a;", "A", "a\n# x", "a{"] {
            assert!(!is_server_key(bad), "accepted {bad:?}");
        }
    }
}

//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a proxy (our Nginx
//! edge) writes before a TCP connection's first byte, naming the client it relays, so
//! the server behind it rate-limits and logs the client rather than the proxy.
//!
//! A header is only believed from a [`TrustedProxies`] address: anyone else could
//! claim any address with it. Reading is bounded (a v1 line is at most 107 bytes; a v2
//! header at most [`MAX_V2_BODY`] bytes after its 16-byte prefix), never reads past
//! the header (the bytes after it are the client's), and runs under a deadline.
//! Parsing works on byte slices and never panics, whatever the bytes.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes, `\r\n` included (the specification's bound).
pub const MAX_V1_LINE: usize = 107;
/// The most v2 body (addresses and TLVs) we accept. Addresses take at most 216 bytes
/// (unix sockets); TLVs (ALPN, authority, SSL details) fit easily. Larger is refused,
/// not read.
pub const MAX_V2_BODY: usize = 1024;

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// Relayed for this client (and to this address of the proxy).
    Client {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The proxy speaks for itself (v1 `UNKNOWN`, v2 `LOCAL` or an address family we
    /// do not track, such as unix sockets): a health check, say. The connection's own
    /// peer address stands.
    Local,
}

impl Proxied {
    /// The client's address: the header's, or `peer` when the header names none.
    pub fn client_or(self, peer: SocketAddr) -> SocketAddr {
        match self {
            Proxied::Client { source, .. } => source,
            Proxied::Local => peer,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error(
        "no PROXY protocol header (the connection must start with `PROXY ` or the v2 signature)"
    )]
    Missing,
    #[error("malformed PROXY v1 header: {0}")]
    BadV1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    BadV2(&'static str),
    #[error("PROXY v2 header of {0} bytes is over the {MAX_V2_BODY}-byte limit")]
    TooLong(usize),
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before the PROXY header ended")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(io::Error),
}

/// Reads one header from the start of `stream`, within `deadline`, consuming exactly
/// its bytes.
pub async fn read_header<R: AsyncRead + Unpin>(
    stream: &mut R,
    deadline: Duration,
) -> Result<Proxied, HeaderError> {
    tokio::time::timeout(deadline, read_header_unbounded(stream))
        .await
        .map_err(|_| HeaderError::Timeout(deadline))?
}

async fn read_header_unbounded<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<Proxied, HeaderError> {
    // Five bytes tell the versions apart: `PROXY` or the start of the v2 signature.
    let mut start = [0u8; 16];
    read_exact(stream, &mut start[..5]).await?;
    if &start[..5] == b"PROXY" {
        // Byte by byte up to `\r\n`: a v1 line has no length prefix, and reading
        // ahead would swallow the client's first request.
        let mut line = Vec::with_capacity(MAX_V1_LINE);
        line.extend_from_slice(&start[..5]);
        while !line.ends_with(b"\r\n") {
            if line.len() >= MAX_V1_LINE {
                return Err(HeaderError::BadV1("no CRLF within 107 bytes"));
            }
            let mut byte = [0u8; 1];
            read_exact(stream, &mut byte).await?;
            line.push(byte[0]);
        }
        return parse_v1(&line);
    }
    if start[..5] != V2_SIGNATURE[..5] {
        return Err(HeaderError::Missing);
    }
    read_exact(stream, &mut start[5..]).await?;
    let len = v2_body_len(&start)?;
    let mut body = vec![0u8; len];
    read_exact(stream, &mut body).await?;
    parse_v2(&start, &body)
}

async fn read_exact<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut [u8],
) -> Result<(), HeaderError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(HeaderError::Closed),
        Err(e) => Err(HeaderError::Io(e)),
    }
}

/// Whether `bytes` (what a connection sent first) look like the start of a header:
/// what a server refuses from an address it does not trust.
pub fn looks_like_header(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PROXY ")
        || (bytes.len() >= 5 && V2_SIGNATURE.starts_with(&bytes[..bytes.len().min(12)]))
}

/// One v1 line, `\r\n` included: `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n` or
/// `PROXY UNKNOWN[ anything]\r\n`.
pub fn parse_v1(line: &[u8]) -> Result<Proxied, HeaderError> {
    let bad = HeaderError::BadV1;
    if line.len() > MAX_V1_LINE {
        return Err(bad("longer than 107 bytes"));
    }
    let text = line
        .strip_suffix(b"\r\n")
        .ok_or(bad("does not end in CRLF"))?;
    let text = std::str::from_utf8(text).map_err(|_| bad("not ASCII"))?;
    let rest = text
        .strip_prefix("PROXY ")
        .ok_or(bad("does not start with `PROXY `"))?;
    if rest == "UNKNOWN" || rest.starts_with("UNKNOWN ") {
        return Ok(Proxied::Local);
    }
    let fields: Vec<&str> = rest.split(' ').collect();
    let [family, src, dst, sport, dport] = fields[..] else {
        return Err(bad("expected 5 fields after `PROXY `"));
    };
    let (src, dst): (IpAddr, IpAddr) = match family {
        "TCP4" => (
            parse_ip::<Ipv4Addr>(src)?.into(),
            parse_ip::<Ipv4Addr>(dst)?.into(),
        ),
        "TCP6" => (
            parse_ip::<Ipv6Addr>(src)?.into(),
            parse_ip::<Ipv6Addr>(dst)?.into(),
        ),
        _ => return Err(bad("protocol must be TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Proxied::Client {
        source: SocketAddr::new(src, parse_port(sport)?),
        destination: SocketAddr::new(dst, parse_port(dport)?),
    })
}

fn parse_ip<T: FromStr>(s: &str) -> Result<T, HeaderError> {
    s.parse()
        .map_err(|_| HeaderError::BadV1("an address does not match its protocol"))
}

/// Decimal 0..=65535 without a sign or leading zeros, as the specification writes it.
fn parse_port(s: &str) -> Result<u16, HeaderError> {
    let bad = HeaderError::BadV1("a port is not a number from 0 to 65535");
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}

/// The length of the body after a v2 header's 16-byte prefix, checked.
pub fn v2_body_len(prefix: &[u8; 16]) -> Result<usize, HeaderError> {
    if prefix[..12] != V2_SIGNATURE {
        return Err(HeaderError::BadV2("wrong signature"));
    }
    if prefix[12] >> 4 != 2 {
        return Err(HeaderError::BadV2("version is not 2"));
    }
    let len = usize::from(u16::from_be_bytes([prefix[14], prefix[15]]));
    if len > MAX_V2_BODY {
        return Err(HeaderError::TooLong(len));
    }
    Ok(len)
}

/// A v2 header: the 16-byte prefix and the body its length field announced.
pub fn parse_v2(prefix: &[u8; 16], body: &[u8]) -> Result<Proxied, HeaderError> {
    let bad = HeaderError::BadV2;
    let len = v2_body_len(prefix)?;
    if body.len() != len {
        return Err(bad("body length differs from the length field"));
    }
    match prefix[12] & 0x0f {
        // LOCAL: the proxy's own connection; the body is to be ignored.
        0 => return Ok(Proxied::Local),
        1 => {}
        _ => return Err(bad("command is neither LOCAL nor PROXY")),
    }
    let (family, transport) = (prefix[13] >> 4, prefix[13] & 0x0f);
    if transport > 2 {
        return Err(bad("unknown transport"));
    }
    match family {
        // AF_INET: 4 + 4 address bytes, then 2 + 2 port bytes.
        1 => {
            let a = body.get(..12).ok_or(bad("IPv4 addresses cut short"))?;
            let ip = |i: usize| IpAddr::from([a[i], a[i + 1], a[i + 2], a[i + 3]]);
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            Ok(Proxied::Client {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            })
        }
        // AF_INET6: 16 + 16, then 2 + 2.
        2 => {
            let a = body.get(..36).ok_or(bad("IPv6 addresses cut short"))?;
            let ip = |i: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[i..i + 16]);
                IpAddr::from(octets)
            };
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            Ok(Proxied::Client {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            })
        }
        // AF_UNSPEC, AF_UNIX: no IP to take; the peer address stands.
        0 | 3 => Ok(Proxied::Local),
        _ => Err(bad("unknown address family")),
    }
}

/// The addresses whose PROXY headers are believed: IP addresses and CIDR ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or CIDR range (such as 10.0.0.0/8 or fd00::/8)")]
pub struct BadCidr(pub String);

impl FromStr for TrustedProxies {
    type Err = BadCidr;

    /// A comma-separated list; blanks around entries are ignored.
    fn from_str(list: &str) -> Result<Self, BadCidr> {
        let mut ranges = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = || BadCidr(entry.to_owned());
            let (ip, bits) = match entry.split_once('/') {
                Some((ip, bits)) => {
                    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
                    let bits: u8 = bits.parse().map_err(|_| bad())?;
                    (ip, bits)
                }
                None => {
                    let ip: IpAddr = entry.parse().map_err(|_| bad())?;
                    (ip, if ip.is_ipv4() { 32 } else { 128 })
                }
            };
            if bits > if ip.is_ipv4() { 32 } else { 128 } {
                return Err(bad());
            }
            ranges.push((ip, bits));
        }
        Ok(TrustedProxies(ranges))
    }
}

impl TrustedProxies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` lies in one of the ranges (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0
            .iter()
            .any(|&(net, bits)| match (net.to_canonical(), ip) {
                (IpAddr::V4(net), IpAddr::V4(ip)) => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
                    u32::from(net) & mask == u32::from(ip) & mask
                }
                (IpAddr::V6(net), IpAddr::V6(ip)) => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                    u128::from(net) & mask == u128::from(ip) & mask
                }
                _ => false,
            })
    }
}

impl std::fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (ip, bits)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{ip}/{bits}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    async fn read_all(bytes: &[u8]) -> (Result<Proxied, HeaderError>, Vec<u8>) {
        let mut reader = bytes;
        let got = read_header(&mut reader, Duration::from_secs(1)).await;
        (got, reader.to_vec())
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn v1_names_the_client_and_leaves_the_request_unread() {
        let (got, rest) =
            read_all(b"PROXY TCP4 198.51.100.7 10.0.0.5 40312 8888\r\n{\"action\":\"login\"}\n")
                .await;
        assert_eq!(
            got.unwrap(),
            Proxied::Client {
                source: sa("198.51.100.7:40312"),
                destination: sa("10.0.0.5:8888")
            }
        );
        assert_eq!(rest, b"{\"action\":\"login\"}\n");

        let (got, _) = read_all(b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n").await;
        assert_eq!(
            got.unwrap().client_or(sa("10.0.0.1:1")),
            sa("[2001:db8::1]:65535")
        );
        let (got, rest) = read_all(b"PROXY UNKNOWN whatever 1 2\r\nx").await;
        assert_eq!(got.unwrap().client_or(sa("10.0.0.1:1")), sa("10.0.0.1:1"));
        assert_eq!(rest, b"x");
    }

    #[tokio::test]
    async fn v2_names_the_client_and_skips_tlvs() {
        let mut body = vec![203, 0, 113, 9, 10, 0, 0, 5];
        body.extend_from_slice(&4242u16.to_be_bytes());
        body.extend_from_slice(&8888u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0, 2, b'h', b'i']); // a NOOP TLV
        let mut bytes = v2(1, 0x11, &body);
        bytes.extend_from_slice(b"{}");
        let (got, rest) = read_all(&bytes).await;
        assert_eq!(
            got.unwrap(),
            Proxied::Client {
                source: sa("203.0.113.9:4242"),
                destination: sa("10.0.0.5:8888")
            }
        );
        assert_eq!(rest, b"{}");

        let mut body = [0u8; 36];
        body[0] = 0x20;
        body[1] = 0x01;
        body[15] = 7;
        body[33] = 80;
        let (got, _) = read_all(&v2(1, 0x21, &body)).await;
        assert_eq!(got.unwrap().client_or(sa("1.1.1.1:1")), sa("[2001::7]:80"));

        let (got, _) = read_all(&v2(0, 0x00, &[])).await;
        assert_eq!(got.unwrap(), Proxied::Local);
    }

    #[tokio::test]
    async fn bad_headers_are_refused_with_a_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"{\"action\":\"login\"}\n".to_vec(),
                "no PROXY protocol header",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec(),
                "closed before",
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".to_vec(), "5 fields"),
            (
                b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n".to_vec(),
                "match its protocol",
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n".to_vec(), "port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n".to_vec(), "port"),
            (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), "TCP4, TCP6"),
            (b"PROXY TCP4 1.2.3.4".to_vec(), "closed before"),
            ([b"PROXY ".as_slice(), &[b'x'; 200]].concat(), "107 bytes"),
            (v2(1, 0x11, &[1, 2, 3]), "cut short"),
            (v2(2, 0x11, &[0; 12]), "neither LOCAL nor PROXY"),
            (v2(1, 0x41, &[0; 12]), "address family"),
            (
                [&V2_SIGNATURE[..], &[0x21, 0x11, 0xff, 0xff]].concat(),
                "over the 1024-byte limit",
            ),
            ([&V2_SIGNATURE[..], &[0x11, 0x11, 0, 0]].concat(), "version"),
        ];
        for (bytes, want) in cases {
            let err = read_all(&bytes).await.0.expect_err(want);
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_or_slow_proxy_hits_the_deadline() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PROXY TCP4 1.2")
            .await
            .unwrap();
        let err = read_header(&mut server, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(err, HeaderError::Timeout(_)), "{err}");
    }

    /// Random and mutated headers: never a panic, never a read beyond the bounds.
    #[tokio::test]
    async fn arbitrary_bytes_never_panic_or_overread() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let seeds: Vec<Vec<u8>> = vec![
            b"PROXY TCP4 198.51.100.7 10.0.0.5 40312 8888\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n".to_vec(),
            v2(1, 0x11, &[1; 12]),
            v2(1, 0x21, &[1; 40]),
        ];
        for i in 0..20_000 {
            let mut bytes = seeds[i % seeds.len()].clone();
            for _ in 0..rng.random_range(0..4) {
                let at = rng.random_range(0..bytes.len());
                match rng.random_range(0..3) {
                    0 => bytes[at] = rng.random(),
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, rng.random()),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            if i % 7 == 0 {
                bytes = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
            }
            let total = bytes.len();
            bytes.extend_from_slice(b"TAIL");
            let (got, rest) = read_all(&bytes).await;
            let consumed = total + 4 - rest.len();
            // A cut header may legitimately end inside the tail; what matters is that
            // nothing, parsed or refused, reads more than a header can hold.
            assert!(consumed <= MAX_V1_LINE.max(16 + MAX_V2_BODY), "{bytes:?}");
            let _ = got;
            let _ = looks_like_header(&bytes);
        }
    }

    #[test]
    fn untrusted_openings_that_look_like_headers() {
        assert!(looks_like_header(b"PROXY TCP4 1.2.3.4"));
        assert!(looks_like_header(&V2_SIGNATURE));
        assert!(looks_like_header(&V2_SIGNATURE[..5]));
        assert!(!looks_like_header(b"{\"action\":\"login\"}"));
        assert!(!looks_like_header(b"\r\n"));
    }

    #[test]
    fn trusted_ranges() {
        let trusted: TrustedProxies = "10.0.0.0/8, 192.168.1.7,fd00::/8".parse().unwrap();
        for ip in ["10.1.2.3", "::ffff:10.9.9.9", "192.168.1.7", "fd12::1"] {
            assert!(trusted.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["11.0.0.1", "192.168.1.8", "fe80::1", "::1"] {
            assert!(!trusted.contains(ip.parse().unwrap()), "{ip}");
        }
        assert!(
            "0.0.0.0/0"
                .parse::<TrustedProxies>()
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "fd00::/129", "10.0.0", "x/8", "10.0.0.0/"] {
            assert!(bad.parse::<TrustedProxies>().is_err(), "{bad}");
        }
        assert_eq!(trusted.to_string(), "10.0.0.0/8,192.168.1.7/32,fd00::/8");
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
    }
}

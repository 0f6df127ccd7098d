//! The client's IP address, for per-IP limits.
//!
//! The rule: the connection's peer is the client, unless the peer is a
//! configured trusted proxy. Only then is `X-Forwarded-For` read, from the
//! right (the entry the nearest proxy appended) to the left, skipping
//! addresses of trusted proxies; the first untrusted address is the client.
//! Entries further left were written by whoever sent the request to the
//! first trusted proxy, so a client can put anything there and it is never
//! believed.
//!
//! Robustness: every `X-Forwarded-For` field line counts, in order (as if
//! joined with commas); entries may carry spaces, a port (`1.2.3.4:80`,
//! `[::1]:80`) or be bare IPv6. An entry that is not an address (or a field
//! that is not text) stops the walk: the answer is then the last trusted hop
//! reached, so garbage can never pick a fresh address. Walking off the left
//! end (every entry trusted) gives the leftmost entry. At most
//! [`MAX_HOPS`] entries are read. IPv4-mapped IPv6 addresses are compared
//! and returned as IPv4.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

/// The most `X-Forwarded-For` entries walked before giving up (the answer is
/// then the last trusted hop reached).
pub const MAX_HOPS: usize = 64;

/// One CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(s: &str) -> Option<Self> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = ip.trim().parse().ok()?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Self { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(net.to_bits()),
                u128::from(ip.to_bits()),
                32,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(net.to_bits(), ip.to_bits(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    let shift = u32::from(bits - prefix.min(bits));
    a.checked_shr(shift).unwrap_or(0) == b.checked_shr(shift).unwrap_or(0)
}

/// The proxies whose `X-Forwarded-For` is believed (`limits.trusted_proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<Cidr>,
}

impl TrustedProxies {
    /// No trusted proxy: `X-Forwarded-For` is ignored.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses addresses and CIDR blocks (`"10.0.0.0/8"`, `"::1"`,
    /// `"fd00::/8"`); the error names the bad entry.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut nets = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let entry = entry.as_ref();
            let net = Cidr::parse(entry).ok_or_else(|| {
                format!(
                    "limits.trusted_proxies[{i}]: \"{entry}\" is not an IP address or CIDR block; \
                     use e.g. \"10.0.0.0/8\" or \"::1\""
                )
            })?;
            nets.push(net);
        }
        Ok(Self { nets })
    }

    /// True when no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// True when `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(ip))
    }
}

/// The client's address: see the [module docs](self) for the rule.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer.ip().to_canonical();
    if trusted.is_empty() || !trusted.contains(client) {
        return client;
    }
    // Field lines in order, each split on commas: walk the whole list from
    // the right without allocating.
    let mut hops = 0;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(value) = value.to_str() else {
            return client;
        };
        for entry in value.rsplit(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                // `a, , b` or a trailing comma: an empty list member, skipped
                // as RFC 9110's list syntax says.
                continue;
            }
            hops += 1;
            if hops > MAX_HOPS {
                return client;
            }
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !trusted.contains(ip) {
                return ip;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an IPv4 or IPv6 address, optionally with a
/// port (`1.2.3.4:80`, `[::1]:80`) or in brackets (`[::1]`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sock) = entry.parse::<SocketAddr>() {
        return Some(sock.ip().to_canonical());
    }
    let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(|ip| IpAddr::V6(ip).to_canonical())
}

#[cfg(test)]
mod tests;

//! The client's address, for limits counted per address.
//!
//! A request's address is the peer of its connection — unless that peer is a
//! proxy we trust (the local ingress, the Kubernetes gateway), whose
//! `X-Forwarded-For` then names the client: read from the right, the first
//! address that is not itself a trusted proxy. `X-Forwarded-For` from anyone
//! else is ignored, so a client cannot pick the address it is counted under.
//!
//! [`TrustedProxies`] is a list of addresses and CIDR blocks
//! (`127.0.0.1,10.0.0.0/8,::1`); the services trust loopback and the private
//! ranges by default ([`TrustedProxies::private_networks`]), where their
//! ingress lives, the local ingress trusts nobody by default (it is the
//! edge).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use axum::{
    extract::{ConnectInfo, FromRef, FromRequestParts},
    http::{HeaderMap, request::Parts},
};

/// Addresses and CIDR blocks whose `X-Forwarded-For` is believed. Shared,
/// not copied, when cloned: it sits in a service's state, which axum clones
/// for every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Arc<[Block]>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    network: IpAddr,
    prefix: u8,
}

impl Block {
    fn contains(self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address in IPv6 clothes (`::ffff:10.0.0.1`) as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

impl TrustedProxies {
    /// Trust nobody: the peer is always the client.
    pub fn none() -> Self {
        Self::default()
    }

    /// Loopback and the private ranges (RFC 1918, RFC 4193): where a
    /// service's own ingress or gateway connects from.
    pub fn private_networks() -> Self {
        "127.0.0.0/8,::1,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"
            .parse()
            .unwrap_or_default()
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|block| block.contains(ip))
    }

    /// The client's address: `peer`, or — when `peer` is trusted — the
    /// rightmost untrusted address of `X-Forwarded-For` (the leftmost if all
    /// are trusted). An entry that is not an address ends the walk at the
    /// proxy that passed it on.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|hop| !hop.is_empty())
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>().map(canonical) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// Comma-separated addresses and CIDR blocks; `none` (or nothing) for none.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut blocks = Vec::new();
        for item in text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            if item.eq_ignore_ascii_case("none") {
                continue;
            }
            let (address, prefix) = match item.split_once('/') {
                Some((address, prefix)) => (address, Some(prefix)),
                None => (item, None),
            };
            let network: IpAddr = address
                .parse()
                .map_err(|_| format!("`{item}` is not an address or a CIDR block"))?;
            let bits = if network.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => bits,
                Some(prefix) => prefix
                    .parse::<u8>()
                    .ok()
                    .filter(|prefix| *prefix <= bits)
                    .ok_or_else(|| format!("`{item}` has a prefix length out of range"))?,
            };
            blocks.push(Block {
                network: canonical(network),
                prefix,
            });
        }
        Ok(Self(blocks.into()))
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let blocks: Vec<String> = self
            .0
            .iter()
            .map(|b| format!("{}/{}", b.network, b.prefix))
            .collect();
        f.write_str(&blocks.join(","))
    }
}

/// The extractor: the client's address by the state's [`TrustedProxies`].
/// Needs the server to record peers (as [`crate::server::serve`] does); a
/// request without one (a router called directly, in a test) is from
/// `0.0.0.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl<S> FromRequestParts<S> for ClientIp
where
    TrustedProxies: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |info| info.0.ip());
        let trusted = TrustedProxies::from_ref(state);
        Ok(Self(trusted.client_ip(peer, &parts.headers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in xff {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        assert_eq!(
            trusted.client_ip(ip("203.0.113.9"), &headers(&["1.2.3.4"])),
            ip("203.0.113.9")
        );
        assert_eq!(
            TrustedProxies::none().client_ip(ip("127.0.0.1"), &headers(&["1.2.3.4"])),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn a_trusted_peer_names_the_rightmost_untrusted_hop() {
        let trusted: TrustedProxies = "10.0.0.0/8, 192.168.1.1".parse().unwrap();
        let peer = ip("10.1.2.3");
        // A client that forged its own entry is still counted as itself.
        assert_eq!(
            trusted.client_ip(peer, &headers(&["6.6.6.6, 198.51.100.7", "192.168.1.1"])),
            ip("198.51.100.7")
        );
        assert_eq!(trusted.client_ip(peer, &headers(&[])), peer);
        assert_eq!(
            trusted.client_ip(peer, &headers(&["10.9.9.9"])),
            ip("10.9.9.9")
        );
        assert_eq!(
            trusted.client_ip(peer, &headers(&["198.51.100.7, garbage"])),
            peer
        );
        assert_eq!(
            trusted.client_ip(ip("::ffff:10.0.0.1"), &headers(&["2001:db8::1"])),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn parses_addresses_and_blocks_and_refuses_the_rest() {
        let private = TrustedProxies::private_networks();
        for inside in [
            "127.0.0.2",
            "::1",
            "10.200.0.1",
            "172.31.255.255",
            "192.168.0.9",
            "fd00::5",
        ] {
            assert!(private.trusts(ip(inside)), "{inside}");
        }
        for outside in ["8.8.8.8", "172.32.0.1", "2001:db8::1", "192.169.0.1"] {
            assert!(!private.trusts(ip(outside)), "{outside}");
        }
        assert_eq!(
            "none".parse::<TrustedProxies>().unwrap(),
            TrustedProxies::none()
        );
        assert!(
            "0.0.0.0/0"
                .parse::<TrustedProxies>()
                .unwrap()
                .trusts(ip("8.8.8.8"))
        );
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("localhost".parse::<TrustedProxies>().is_err());
        assert_eq!(
            "10.0.0.0/8,::1"
                .parse::<TrustedProxies>()
                .unwrap()
                .to_string(),
            "10.0.0.0/8,::1/128"
        );
    }
}

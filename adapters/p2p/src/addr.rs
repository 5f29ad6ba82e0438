//! Multiaddr helpers: IPs, peer ids, what may be advertised.

use std::net::{IpAddr, SocketAddr};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// The IP of an `/ip4/…` or `/ip6/…` address.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

/// The peer id of a `…/p2p/<peer id>` address.
pub fn peer_id_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last()? {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    }
}

/// The address without a trailing `/p2p/<peer id>`.
pub fn without_peer_id(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

/// `/ip4/<ip>/tcp/<port>` (or `/ip6/…`).
pub fn tcp_multiaddr(addr: SocketAddr) -> Multiaddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    };
    Multiaddr::empty().with(ip).with(Protocol::Tcp(addr.port()))
}

/// Whether a listen address may be advertised to other nodes: never an unspecified IP, and
/// loopback only when the node was told to listen on a specific IP (then it is advertised as
/// listened, which is what a one-machine test cluster on 127.0.0.x needs).
pub fn is_advertisable(addr: &Multiaddr, drop_loopback: bool) -> bool {
    match ip_of(addr) {
        Some(ip) => !(ip.is_unspecified() || (drop_loopback && ip.is_loopback())),
        None => false,
    }
}

/// The distinct IPs of a remote peer's addresses. Loopback IPs are left out when the peer also
/// has other IPs: seen from here, a remote node's loopback address names this node.
pub(crate) fn provider_ips(addrs: &[Multiaddr]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in addrs.iter().filter_map(ip_of) {
        if !ip.is_unspecified() && !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    if ips.iter().any(|ip| !ip.is_loopback()) {
        ips.retain(|ip| !ip.is_loopback());
    }
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisable() {
        let lo: Multiaddr = "/ip4/127.0.0.12/tcp/5001".parse().unwrap();
        let pod: Multiaddr = "/ip4/192.0.2.5/tcp/5001".parse().unwrap();
        let any: Multiaddr = "/ip4/0.0.0.0/tcp/5001".parse().unwrap();
        assert!(is_advertisable(&lo, false));
        assert!(!is_advertisable(&lo, true));
        assert!(is_advertisable(&pod, true));
        assert!(!is_advertisable(&any, false));
        assert!(!is_advertisable(&"/dns4/x/tcp/1".parse().unwrap(), false));
    }

    #[test]
    fn peer_ids_and_ips() {
        let peer = PeerId::random();
        let a: Multiaddr = format!("/ip4/127.0.0.3/tcp/4/p2p/{peer}").parse().unwrap();
        assert_eq!(peer_id_of(&a), Some(peer));
        assert_eq!(without_peer_id(&a).to_string(), "/ip4/127.0.0.3/tcp/4");
        assert_eq!(ip_of(&a), Some("127.0.0.3".parse().unwrap()));
        assert_eq!(
            tcp_multiaddr("[::1]:9".parse().unwrap()).to_string(),
            "/ip6/::1/tcp/9"
        );
    }

    #[test]
    fn provider_ips_drop_loopback_only_beside_other_ips() {
        let a = |s: &str| s.parse::<Multiaddr>().unwrap();
        let lo_only = [a("/ip4/127.0.0.12/tcp/5001"), a("/ip4/127.0.0.12/tcp/5002")];
        assert_eq!(
            provider_ips(&lo_only),
            vec!["127.0.0.12".parse::<IpAddr>().unwrap()]
        );
        let mixed = [
            a("/ip4/127.0.0.1/tcp/5001"),
            a("/ip4/192.0.2.5/tcp/5001"),
            a("/ip6/::1/tcp/5001"),
            a("/ip4/0.0.0.0/tcp/5001"),
            a("/dns4/x/tcp/1"),
        ];
        assert_eq!(
            provider_ips(&mixed),
            vec!["192.0.2.5".parse::<IpAddr>().unwrap()]
        );
        assert!(provider_ips(&[]).is_empty());
    }
}

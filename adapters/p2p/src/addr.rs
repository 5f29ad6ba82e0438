//! Multiaddr helpers: IPs, peer ids, what may be advertised.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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

/// Every interface of both families on `port`: `0.0.0.0:port` and `[::]:port`, what an
/// unspecified listen address (`:5001`) means. With port 0 each family gets its own port.
pub fn dual_stack(port: u16) -> Vec<SocketAddr> {
    vec![
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
    ]
}

/// Whether a listen address may be advertised to other nodes. `wildcard` says whether it was
/// reported by a listener on an unspecified IP (one address per interface). Never an
/// unspecified IP; from a wildcard listener never loopback nor link-local (`fe80::/10` needs
/// an interface to be dialled, `169.254.0.0/16` is node-local, e.g. a node-local DNS cache).
/// A specific listen IP is advertised as listened, even loopback, which is what a one-machine
/// test cluster on 127.0.0.x needs.
pub fn is_advertisable(addr: &Multiaddr, wildcard: bool) -> bool {
    let Some(ip) = ip_of(addr) else {
        return false;
    };
    if ip.is_unspecified() {
        return false;
    }
    if !wildcard {
        return true;
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    !(ip.is_loopback() || link_local || ip.to_canonical().is_loopback())
}

/// `ip:port` as a URL authority or `Host` header writes it: an IPv6 address in brackets.
pub fn host_port(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// The distinct IPs of a remote peer's addresses. Loopback IPs are left out when the peer also
/// has other IPs: seen from here, a remote node's loopback address names this node.
pub(crate) fn provider_ips(addrs: &[Multiaddr]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in addrs.iter().filter_map(ip_of) {
        let ip = ip.to_canonical();
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
    fn advertisable_ipv6() {
        let a = |s: &str| s.parse::<Multiaddr>().unwrap();
        // From a wildcard listener: global and unique-local yes; loopback, link-local and
        // unspecified no.
        assert!(is_advertisable(&a("/ip6/2001:db8::11/tcp/5001"), true));
        assert!(is_advertisable(&a("/ip6/fd00::5/tcp/5001"), true));
        assert!(!is_advertisable(&a("/ip6/::1/tcp/5001"), true));
        assert!(!is_advertisable(&a("/ip6/fe80::1/tcp/5001"), true));
        assert!(!is_advertisable(&a("/ip6/::/tcp/5001"), true));
        assert!(!is_advertisable(&a("/ip4/169.254.20.10/tcp/5001"), true));
        assert!(!is_advertisable(&a("/ip6/::ffff:127.0.0.1/tcp/5001"), true));
        // Listened on explicitly: advertised as listened.
        assert!(is_advertisable(&a("/ip6/::1/tcp/5001"), false));
        assert!(!is_advertisable(&a("/ip6/::/tcp/5001"), false));
    }

    #[test]
    fn dual_stack_and_brackets() {
        let both = dual_stack(5001);
        assert_eq!(both.len(), 2);
        assert!(both[0].is_ipv4() && both[0].ip().is_unspecified());
        assert!(both[1].is_ipv6() && both[1].ip().is_unspecified());
        assert!(both.iter().all(|a| a.port() == 5001));
        assert_eq!(
            tcp_multiaddr(both[1]).to_string(),
            "/ip6/::/tcp/5001",
            "the IPv6 listener"
        );
        assert_eq!(
            host_port("2001:db8::11".parse().unwrap(), 5000),
            "[2001:db8::11]:5000"
        );
        assert_eq!(host_port("192.0.2.1".parse().unwrap(), 80), "192.0.2.1:80");
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
        // IPv6 peers: kept as such; an IPv4-mapped address is the IPv4 address.
        let v6 = [
            a("/ip6/2001:db8::12/tcp/5001"),
            a("/ip6/::ffff:192.0.2.12/tcp/5001"),
            a("/ip4/192.0.2.12/tcp/5001"),
            a("/ip6/::1/tcp/5001"),
        ];
        assert_eq!(
            provider_ips(&v6),
            vec![
                "2001:db8::12".parse::<IpAddr>().unwrap(),
                "192.0.2.12".parse::<IpAddr>().unwrap()
            ]
        );
    }
}

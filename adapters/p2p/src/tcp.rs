//! libp2p's raw TCP transport over any [`Runtime`]: listeners are std sockets taken into the
//! runtime ([`Runtime::listen`], [`Runtime::poll_accept`]); dials are [`Runtime::connect`].
//! Connections have `TCP_NODELAY` on (the runtime sets it).
//!
//! What is listened on and reported follows `libp2p-tcp` (the transport of the tokio build
//! before this one), so that a node advertises the same addresses on every runtime:
//! - an IPv6 socket is IPv6-only, so `0.0.0.0` and `[::]` are two listeners (see
//!   [`crate::dual_stack`]); `SO_REUSEADDR` is on, the backlog is 1024;
//! - a specific IP is reported as listened;
//! - an unspecified IP is reported as every interface address of its family (loopback and
//!   link-local included: what is advertised is [`crate::is_advertisable`]'s choice), and
//!   interfaces are enumerated again every [`INTERFACE_RESCAN`] to report addresses that
//!   appeared (`NewAddress`) or went away (`AddressExpired`).
//!
//! Unlike `libp2p-tcp`, dials never bind the listening port (no `SO_REUSEPORT` port reuse):
//! an outgoing connection has an ephemeral source port. No behaviour of this crate uses the
//! source port of an inbound connection (see the driver's `provider`), and hole punching is
//! not used.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::{BoxFuture, Ready};
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, Transport};
use speil_driver::{Runtime, RuntimeExt as _, Timer as _};

use crate::addr::tcp_multiaddr;

/// How often a listener on an unspecified IP enumerates the interfaces again (what `if-watch`
/// does where it has no change notifications).
pub const INTERFACE_RESCAN: Duration = Duration::from_secs(10);

/// How long a listener rests after a failed `accept` (e.g. out of file descriptors) before
/// accepting again, as `libp2p-tcp` does.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The listen backlog (`libp2p-tcp`'s).
const BACKLOG: i32 = 1024;

type Event<R> = TransportEvent<Ready<io::Result<<R as Runtime>::Tcp>>, io::Error>;

/// A libp2p TCP transport on the runtime `R`.
pub struct TcpTransport<R: Runtime> {
    rt: R,
    listeners: Vec<Listener<R>>,
    /// Events to report before polling the listeners.
    pending: VecDeque<Event<R>>,
    /// The listener polled first next time (round robin, so that a busy one cannot starve
    /// the others).
    next: usize,
    /// The task that last polled, woken when a listener is added or removed.
    waker: Option<Waker>,
}

// No field is ever pinned: the transport only holds sockets, timers and queues by value and
// polls them through `&mut`.
impl<R: Runtime> Unpin for TcpTransport<R> {}

impl<R: Runtime> std::fmt::Debug for TcpTransport<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("runtime", &self.rt.name())
            .field(
                "listeners",
                &self.listeners.iter().map(|l| l.addr).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

struct Listener<R: Runtime> {
    id: ListenerId,
    socket: R::Listener,
    /// The bound address (the port as bound).
    addr: SocketAddr,
    /// For an unspecified IP: the interface addresses reported, and when to look again.
    interfaces: Option<(Vec<IpAddr>, R::Timer)>,
    /// Resting after an accept error.
    pause: Option<R::Timer>,
}

impl<R: Runtime> TcpTransport<R> {
    /// A transport with no listener yet.
    pub fn new(rt: R) -> Self {
        TcpTransport {
            rt,
            listeners: Vec::new(),
            pending: VecDeque::new(),
            next: 0,
            waker: None,
        }
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// The TCP socket address of `/ip4|ip6/<ip>/tcp/<port>[/p2p/<peer>]`.
fn socket_addr_of(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = addr.iter();
    let ip = match parts.next()? {
        Protocol::Ip4(ip) => IpAddr::V4(ip),
        Protocol::Ip6(ip) => IpAddr::V6(ip),
        _ => return None,
    };
    let Protocol::Tcp(port) = parts.next()? else {
        return None;
    };
    match (parts.next(), parts.next()) {
        (None, _) | (Some(Protocol::P2p(_)), None) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

/// A listening std socket on `addr`: IPv6-only for IPv6, `SO_REUSEADDR`, backlog 1024.
fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// This host's interface addresses of one family, each once, in the system's order.
fn interface_ips(ipv4: bool) -> io::Result<Vec<IpAddr>> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for interface in if_addrs::get_if_addrs()? {
        let ip = interface.ip();
        if ip.is_ipv4() == ipv4 && !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

/// The events for a wildcard listener on `port` whose interface addresses were `known` and
/// are `now`: addresses gone expire, new ones are reported.
fn interface_changes<U>(
    id: ListenerId,
    port: u16,
    known: &[IpAddr],
    now: &[IpAddr],
    events: &mut VecDeque<TransportEvent<U, io::Error>>,
) {
    for gone in known.iter().filter(|ip| !now.contains(ip)) {
        events.push_back(TransportEvent::AddressExpired {
            listener_id: id,
            listen_addr: tcp_multiaddr(SocketAddr::new(*gone, port)),
        });
    }
    for new in now.iter().filter(|ip| !known.contains(ip)) {
        events.push_back(TransportEvent::NewAddress {
            listener_id: id,
            listen_addr: tcp_multiaddr(SocketAddr::new(*new, port)),
        });
    }
}

impl<R: Runtime> Listener<R> {
    fn poll(
        &mut self,
        rt: &R,
        cx: &mut Context<'_>,
        pending: &mut VecDeque<Event<R>>,
    ) -> Poll<Event<R>> {
        if let Some(pause) = self.pause.as_mut() {
            if pause.poll_unpin(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        if let Some((known, rescan)) = self.interfaces.as_mut() {
            // Polled again after each reset, so that the timer is armed when this returns.
            while rescan.poll_unpin(cx).is_ready() {
                rescan.reset(rt.now() + INTERFACE_RESCAN);
                match interface_ips(self.addr.is_ipv4()) {
                    Ok(now) => {
                        interface_changes(self.id, self.addr.port(), known, &now, pending);
                        *known = now;
                    }
                    Err(error) => pending.push_back(TransportEvent::ListenerError {
                        listener_id: self.id,
                        error,
                    }),
                }
            }
            if let Some(event) = pending.pop_front() {
                return Poll::Ready(event);
            }
        }
        match rt.poll_accept(&self.socket, cx) {
            Poll::Ready(Ok((stream, remote))) => {
                // The address the peer reached (an interface address for a wildcard listener).
                let local = socket2::SockRef::from(&stream).local_addr().and_then(|a| {
                    a.as_socket()
                        .ok_or_else(|| io::Error::other("not an IP socket"))
                });
                match local {
                    Ok(local) => Poll::Ready(TransportEvent::Incoming {
                        listener_id: self.id,
                        upgrade: futures::future::ready(Ok(stream)),
                        local_addr: tcp_multiaddr(local),
                        send_back_addr: tcp_multiaddr(remote),
                    }),
                    Err(error) => Poll::Ready(self.accept_failed(rt, error)),
                }
            }
            Poll::Ready(Err(error)) => Poll::Ready(self.accept_failed(rt, error)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// A failed accept is reported and not fatal; the listener rests a little.
    fn accept_failed(&mut self, rt: &R, error: io::Error) -> Event<R> {
        self.pause = Some(rt.sleep(ACCEPT_ERROR_PAUSE));
        TransportEvent::ListenerError {
            listener_id: self.id,
            error,
        }
    }
}

impl<R: Runtime> Transport for TcpTransport<R> {
    type Output = R::Tcp;
    type Error = io::Error;
    type ListenerUpgrade = Ready<io::Result<R::Tcp>>;
    type Dial = BoxFuture<'static, io::Result<R::Tcp>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<io::Error>> {
        let Some(socket_addr) = socket_addr_of(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let socket = bind(socket_addr).map_err(TransportError::Other)?;
        let socket = self.rt.listen(socket).map_err(TransportError::Other)?;
        let bound = self
            .rt
            .listener_addr(&socket)
            .map_err(TransportError::Other)?;
        tracing::debug!(address = %bound, "listening");
        let interfaces = if bound.ip().is_unspecified() {
            let ips = interface_ips(bound.is_ipv4()).map_err(TransportError::Other)?;
            for ip in &ips {
                self.pending.push_back(TransportEvent::NewAddress {
                    listener_id: id,
                    listen_addr: tcp_multiaddr(SocketAddr::new(*ip, bound.port())),
                });
            }
            Some((ips, self.rt.sleep(INTERFACE_RESCAN)))
        } else {
            self.pending.push_back(TransportEvent::NewAddress {
                listener_id: id,
                listen_addr: tcp_multiaddr(bound),
            });
            None
        };
        self.listeners.push(Listener {
            id,
            socket,
            addr: bound,
            interfaces,
            pause: None,
        });
        self.wake();
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let Some(at) = self.listeners.iter().position(|l| l.id == id) else {
            return false;
        };
        self.listeners.remove(at);
        // The swarm expires the listener's addresses when it learns that it closed.
        self.pending.push_back(TransportEvent::ListenerClosed {
            listener_id: id,
            reason: Ok(()),
        });
        self.wake();
        true
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<io::Error>> {
        match socket_addr_of(&addr) {
            Some(socket_addr) if socket_addr.port() != 0 && !socket_addr.ip().is_unspecified() => {
                tracing::debug!(address = %socket_addr, "dialing");
                // Lazy: nothing happens until the swarm polls the dial.
                Ok(self.rt.connect(socket_addr))
            }
            _ => Err(TransportError::MultiaddrNotSupported(addr)),
        }
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, io::Error>> {
        let this = &mut *self;
        if let Some(event) = this.pending.pop_front() {
            return Poll::Ready(event);
        }
        let n = this.listeners.len();
        for i in 0..n {
            let at = (this.next + i) % n;
            if let Poll::Ready(event) = this.listeners[at].poll(&this.rt, cx, &mut this.pending) {
                this.next = (at + 1) % n;
                return Poll::Ready(event);
            }
        }
        this.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_of_multiaddrs() {
        let a = |s: &str| s.parse::<Multiaddr>().unwrap();
        let peer = libp2p::PeerId::random();
        assert_eq!(
            socket_addr_of(&a("/ip4/127.0.0.1/tcp/5001")),
            Some("127.0.0.1:5001".parse().unwrap())
        );
        assert_eq!(
            socket_addr_of(&a(&format!("/ip6/::1/tcp/5001/p2p/{peer}"))),
            Some("[::1]:5001".parse().unwrap())
        );
        assert_eq!(socket_addr_of(&a("/ip4/127.0.0.1/udp/5001")), None);
        assert_eq!(socket_addr_of(&a("/dns4/x/tcp/5001")), None);
        assert_eq!(socket_addr_of(&a("/ip4/127.0.0.1")), None);
        assert_eq!(
            socket_addr_of(&a(&format!("/ip4/127.0.0.1/tcp/1/p2p/{peer}/p2p/{peer}"))),
            None
        );
        assert_eq!(socket_addr_of(&a("/ip4/127.0.0.1/tcp/1/ws")), None);
    }

    #[test]
    fn ipv6_listeners_are_ipv6_only() {
        let Ok(listener) = bind("[::]:0".parse().unwrap()) else {
            return; // no IPv6 on this host
        };
        assert!(socket2::SockRef::from(&listener).only_v6().unwrap());
        assert!(socket2::SockRef::from(&listener).reuse_address().unwrap());
        let v4 = bind("0.0.0.0:0".parse().unwrap()).unwrap();
        assert!(socket2::SockRef::from(&v4).reuse_address().unwrap());
    }

    #[test]
    fn interface_changes_expire_and_report() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let id = ListenerId::next();
        let mut events: VecDeque<TransportEvent<(), io::Error>> = VecDeque::new();
        let known = [ip("127.0.0.1"), ip("192.0.2.2")];
        interface_changes(id, 5001, &known, &known, &mut events);
        assert!(events.is_empty());
        let now = [ip("127.0.0.1"), ip("192.0.2.3")];
        interface_changes(id, 5001, &known, &now, &mut events);
        let described: Vec<String> = events
            .iter()
            .map(|e| match e {
                TransportEvent::AddressExpired { listen_addr, .. } => format!("-{listen_addr}"),
                TransportEvent::NewAddress { listen_addr, .. } => format!("+{listen_addr}"),
                _ => "?".into(),
            })
            .collect();
        assert_eq!(
            described,
            ["-/ip4/192.0.2.2/tcp/5001", "+/ip4/192.0.2.3/tcp/5001"]
        );
    }

    #[test]
    fn interface_addresses_are_of_one_family() {
        let v4 = interface_ips(true).unwrap();
        assert!(v4.iter().all(IpAddr::is_ipv4));
        assert!(v4.iter().any(IpAddr::is_loopback), "{v4:?}");
        let v6 = interface_ips(false).unwrap();
        assert!(v6.iter().all(IpAddr::is_ipv6));
    }
}

//! The swarm's network behaviour: connection limits, Kademlia (server mode, over the bounded
//! [`Store`]) and identify, with a filter that keeps Kademlia from announcing addresses the
//! node must not advertise.

use std::collections::HashSet;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::{ListenerId, PortUse};
use libp2p::kad;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, identify};

use crate::addr::is_advertisable;
use crate::store::Store;

/// Connection limits, Kademlia and identify.
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
pub(crate) struct Behaviour {
    pub(crate) limits: libp2p::connection_limits::Behaviour,
    pub(crate) kad: ListenFilter<kad::Behaviour<Store>>,
    pub(crate) identify: identify::Behaviour,
}

/// Passes everything through to the inner behaviour except listen addresses that are not to be
/// advertised.
///
/// Kademlia puts the node's listen addresses into the provider records it hands out for itself.
/// When the node listens on an unspecified address, the swarm reports one listen address per
/// interface, loopback and link-local included; other nodes must never be told `127.0.0.1` (it would point
/// them at themselves), so those addresses are hidden from Kademlia.
pub(crate) struct ListenFilter<B> {
    pub(crate) inner: B,
    /// The listeners on an unspecified IP: their loopback and link-local addresses are hidden.
    pub(crate) wildcard: HashSet<ListenerId>,
}

impl<B> ListenFilter<B> {
    pub(crate) fn new(inner: B) -> Self {
        ListenFilter {
            inner,
            wildcard: HashSet::new(),
        }
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for ListenFilter<B> {
    type ConnectionHandler = B::ConnectionHandler;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match &event {
            FromSwarm::NewListenAddr(e)
                if !is_advertisable(e.addr, self.wildcard.contains(&e.listener_id)) => {}
            FromSwarm::ExpiredListenAddr(e)
                if !is_advertisable(e.addr, self.wildcard.contains(&e.listener_id)) => {}
            _ => self.inner.on_swarm_event(event),
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

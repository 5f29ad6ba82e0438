//! Transport assembly: any TCP transport, upgraded with the optional pre-shared key, noise and
//! yamux.
//!
//! Only the raw TCP transport touches the runtime ([`crate::TcpTransport`], on any
//! [`speil_driver::Runtime`]); everything above it is runtime-free, so [`upgrade`] takes any
//! raw transport.

use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::{PeerId, noise, yamux};

/// How long connection set-up (pnet + noise + yamux negotiation) may take.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(20);

/// The transport the swarm runs on.
pub type BoxedTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// Wraps a raw TCP transport into the authenticated, multiplexed transport the swarm needs:
/// pre-shared key (when given), noise, yamux.
pub fn upgrade<T>(
    tcp: T,
    keypair: &Keypair,
    psk: Option<PreSharedKey>,
) -> Result<BoxedTransport, noise::Error>
where
    T: Transport + Send + Unpin + 'static,
    T::Output: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    let noise = noise::Config::new(keypair)?;
    let yamux = yamux::Config::default();
    Ok(match psk {
        Some(psk) => tcp
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux)
            .timeout(UPGRADE_TIMEOUT)
            .boxed(),
        None => tcp
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux)
            .timeout(UPGRADE_TIMEOUT)
            .boxed(),
    })
}

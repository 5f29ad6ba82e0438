//! The DHT as the driver's [`Router`] port.

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use speil_core::Key;
use speil_driver::{Provider, Router};

use crate::{Handle, PeerId};

/// The libp2p DHT as the driver's router.
#[derive(Debug, Clone)]
pub struct P2pRouter(pub Handle);

impl Router<PeerId> for P2pRouter {
    fn name(&self) -> &str {
        "libp2p"
    }

    fn lookup(&self, key: &Key, count: usize) -> BoxStream<'static, Provider<PeerId>> {
        match self.0.lookup(key, count) {
            Ok(stream) => stream
                .map(|p| Provider {
                    peer: p.peer,
                    ips: p.ips,
                })
                .boxed(),
            Err(e) => {
                tracing::warn!(error = %e, "lookup failed");
                futures::stream::empty().boxed()
            }
        }
    }

    fn advertise(&self, keys: Vec<Key>) -> BoxFuture<'static, ()> {
        if let Err(e) = self.0.advertise(keys) {
            tracing::warn!(error = %e, "advertise failed");
        }
        futures::future::ready(()).boxed()
    }

    fn withdraw(&self, keys: Vec<Key>) -> BoxFuture<'static, ()> {
        if let Err(e) = self.0.withdraw(keys) {
            tracing::warn!(error = %e, "withdraw failed");
        }
        futures::future::ready(()).boxed()
    }

    fn ready(&self) -> bool {
        self.0.is_ready()
    }

    fn records(&self) -> Option<usize> {
        Some(self.0.stored_records())
    }

    fn peers(&self) -> Vec<String> {
        self.0
            .peers()
            .into_iter()
            .map(|p| {
                let addrs: Vec<String> = p.addrs.iter().map(ToString::to_string).collect();
                format!("{} {}", p.peer, addrs.join(" "))
            })
            .collect()
    }
}

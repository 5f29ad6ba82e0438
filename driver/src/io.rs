//! Adapters between the runtime's IO types and the libraries that need their own traits.

use std::future::Future;
use std::pin::Pin;

use crate::runtime::Runtime;

/// A connection as hyper and tonic read and write it (hyper's `rt` traits over the
/// runtime's `futures-io` types).
pub type HyperIo<T> = smol_hyper::rt::FuturesIo<T>;

/// Wraps a runtime connection for hyper.
pub fn hyper_io<T>(io: T) -> HyperIo<T> {
    smol_hyper::rt::FuturesIo::new(io)
}

/// hyper's (and tonic's) executor, spawning on a [`Runtime`].
#[derive(Debug, Clone)]
pub struct Executor<R>(pub R);

impl<R, F> hyper::rt::Executor<F> for Executor<R>
where
    R: Runtime,
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0
            .spawn(Box::pin(fut) as Pin<Box<dyn Future<Output = ()> + Send>>);
    }
}

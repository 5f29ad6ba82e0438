//! SIGTERM and SIGINT as a future, on any runtime (a thread waits for the signal).

use futures::channel::oneshot;

/// Completes when the process receives SIGTERM or SIGINT. Registering the handlers happens at
/// the call, so a signal that arrives after it is not lost.
pub fn shutdown() -> impl std::future::Future<Output = ()> + Send + 'static {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let (tx, rx) = oneshot::channel::<()>();
    match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(mut signals) => {
            let spawned = std::thread::Builder::new()
                .name("speil-signals".into())
                .spawn(move || {
                    if signals.forever().next().is_some() {
                        let _ = tx.send(());
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot wait for signals; stop with SIGKILL");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot register signal handlers"),
    }
    async move {
        if rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

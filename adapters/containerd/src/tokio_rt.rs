//! The tokio glue: a unix-socket channel, a timer, and a spawned watcher.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Uri};

use crate::client::{Config, Containerd};
use crate::error::{Error, Result};
use crate::watch::{Sleep, StoreEvents, watch};
use speil_core::backoff::Backoff;

/// Builds a channel to containerd's gRPC socket on the tokio runtime. The channel reconnects
/// by itself when containerd comes back after a restart.
pub async fn connect_unix(path: &Path) -> Result<Channel> {
    let socket = path.to_path_buf();
    let endpoint = Endpoint::try_from("http://[::]:50051").map_err(|source| Error::Connect {
        path: socket.clone(),
        source,
    })?;
    let target = socket.clone();
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let target = target.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(target).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| Error::Connect {
            path: socket,
            source,
        })
}

impl Containerd {
    /// Connects to containerd as `config` says, on the tokio runtime.
    pub async fn connect(config: &Config) -> Result<Containerd> {
        let channel = connect_unix(&config.socket).await?;
        Containerd::from_channel(channel, &config.namespace, config.content_path.as_deref())
    }
}

/// [`Sleep`] on tokio's timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioSleep;

impl Sleep for TokioSleep {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// Spawns [`watch`] on the current tokio runtime, reconnecting with `backoff` (the core's
/// [`Backoff::containerd_reconnect`]). Drop the [`StoreEvents`] to stop the task.
pub fn spawn_watch(
    client: Containerd,
    backoff: Backoff,
) -> (StoreEvents, tokio::task::JoinHandle<()>) {
    let (events, task) = watch(client, TokioSleep, backoff);
    (events, tokio::spawn(task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_socket_is_a_clear_error() {
        let dir = std::env::temp_dir().join("speil-containerd-no-such-dir");
        let config = Config {
            socket: dir.join("containerd.sock"),
            namespace: "k8s.io".into(),
            content_path: None,
        };
        let err = Containerd::connect(&config).await.unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
        assert!(err.to_string().contains("containerd.sock"), "{err}");
        assert!(err.is_connection());
    }

    #[tokio::test]
    async fn bad_namespace_is_rejected() {
        let channel = Endpoint::from_static("http://[::]:50051").connect_lazy();
        for ns in ["", "bad\nname"] {
            let err = Containerd::from_channel(channel.clone(), ns, None).unwrap_err();
            assert!(matches!(err, Error::InvalidNamespace(_)), "{err}");
        }
        let c =
            Containerd::from_channel(channel, "k8s.io", Some(Path::new("/nonexistent"))).unwrap();
        assert_eq!(c.namespace(), "k8s.io");
        assert!(
            c.content_path().is_none(),
            "unreadable content path is not used"
        );
    }
}

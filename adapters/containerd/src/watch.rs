//! Following the store: events and reconnects, as [`StoreEvent`]s.
//!
//! The watcher is a plain future that waits only on the client's [`Runtime`] (its timer, for
//! the reconnect delays the core's [`Backoff`] gives); [`spawn_watch`] spawns it there.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use containerd_client::events::ContentCreate;
use containerd_client::services::v1::{
    ImageCreate, ImageDelete, ImageUpdate, SubscribeRequest, events_client::EventsClient,
};
use containerd_client::types::Envelope;
use futures::channel::{mpsc, oneshot};
use futures::{FutureExt as _, SinkExt, Stream, StreamExt, TryFutureExt};
use prost::Message;
use speil_core::Digest;
use speil_core::backoff::Backoff;
use speil_core::store::StoreEvent;
use speil_driver::{Runtime, RuntimeExt as _};

use crate::client::Containerd;
use crate::error::Error;

/// The event topics followed.
const TOPICS: [&str; 4] = [
    "/images/create",
    "/images/update",
    "/images/delete",
    "/content/create",
];

/// What a received envelope means.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    ImagePut(String),
    ImageDeleted(String),
    ContentCreated(Digest),
    Ignored,
}

fn decode(namespace: &str, env: &Envelope) -> Decoded {
    if env.namespace != namespace {
        return Decoded::Ignored;
    }
    let Some(any) = env.event.as_ref() else {
        return Decoded::Ignored;
    };
    let bytes = &any.value[..];
    match env.topic.as_str() {
        "/images/create" => ImageCreate::decode(bytes)
            .map(|e| Decoded::ImagePut(e.name))
            .unwrap_or(Decoded::Ignored),
        "/images/update" => ImageUpdate::decode(bytes)
            .map(|e| Decoded::ImagePut(e.name))
            .unwrap_or(Decoded::Ignored),
        "/images/delete" => ImageDelete::decode(bytes)
            .map(|e| Decoded::ImageDeleted(e.name))
            .unwrap_or(Decoded::Ignored),
        "/content/create" => ContentCreate::decode(bytes)
            .ok()
            .and_then(|e| e.digest.parse().ok())
            .map(Decoded::ContentCreated)
            .unwrap_or(Decoded::Ignored),
        _ => Decoded::Ignored,
    }
}

/// Why an inner loop ended.
enum Stop {
    /// The receiver is gone: stop watching.
    Closed,
    /// containerd went away (or answered with a transport failure): reconnect.
    Lost,
}

struct Watcher<R> {
    client: Containerd<R>,
    /// The core's reconnect policy.
    backoff: Backoff,
    tx: mpsc::Sender<StoreEvent>,
    /// Absent digests referenced by images, to re-walk when the blob arrives.
    missing: BTreeMap<Digest, BTreeSet<String>>,
}

/// The store events a [`watch`] future produces. Dropping it stops the watcher.
#[derive(Debug)]
pub struct StoreEvents {
    rx: mpsc::Receiver<StoreEvent>,
    _stop: oneshot::Sender<()>,
}

impl Stream for StoreEvents {
    type Item = StoreEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StoreEvent>> {
        self.rx.poll_next_unpin(cx)
    }
}

/// Follows the store: returns the event stream and the future that feeds it (spawn it on
/// the client's runtime, or use [`spawn_watch`]). The future never gives up on containerd
/// failures: it emits [`StoreEvent::Disconnected`] once per outage, reconnects after the
/// delays `backoff` gives (waiting on the runtime's timer) and resyncs with a
/// [`StoreEvent::Snapshot`]. Periodic re-checks (containerd's garbage collection removes
/// content without an event) are the core's: its timer asks the driver for a snapshot. It
/// ends when the [`StoreEvents`] is dropped.
pub fn watch<R: Runtime>(
    client: Containerd<R>,
    backoff: Backoff,
) -> (StoreEvents, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = mpsc::channel(64);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = async move {
        let mut w = Watcher {
            client,
            backoff,
            tx,
            missing: BTreeMap::new(),
        };
        let run = w.run();
        futures::pin_mut!(run);
        // `stop_rx` completes (cancelled) when the `StoreEvents` is dropped.
        let _ = futures::future::select(run, stop_rx).await;
    };
    (StoreEvents { rx, _stop: stop_tx }, task)
}

/// Spawns [`watch`] on the client's runtime. Drop the [`StoreEvents`] to stop the task; the
/// [`WatchEnded`] completes when it has ended (it may be dropped: the task runs on).
pub fn spawn_watch<R: Runtime>(
    client: Containerd<R>,
    backoff: Backoff,
) -> (StoreEvents, WatchEnded) {
    let rt = client.runtime().clone();
    let (events, task) = watch(client, backoff);
    let (ended_tx, ended_rx) = oneshot::channel();
    rt.spawn(Box::pin(async move {
        task.await;
        let _ = ended_tx.send(());
    }));
    (events, WatchEnded(ended_rx))
}

/// Completes when a [`spawn_watch`] task has ended (or was dropped by its runtime).
#[derive(Debug)]
#[must_use = "dropping it does not stop the watcher; drop the StoreEvents"]
pub struct WatchEnded(oneshot::Receiver<()>);

impl Future for WatchEnded {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_unpin(cx).map(|_| ())
    }
}

impl<R: Runtime> Watcher<R> {
    async fn run(&mut self) {
        let mut connected = true;
        loop {
            match self.session(&mut connected).await {
                Stop::Closed => return,
                Stop::Lost => {
                    if connected {
                        connected = false;
                        if self.tx.send(StoreEvent::Disconnected).await.is_err() {
                            return;
                        }
                    }
                    let delay = self.backoff.next_delay();
                    self.client.runtime().sleep(delay).await;
                }
            }
        }
    }

    /// One subscription: subscribe, snapshot, then follow events until something breaks.
    async fn session(&mut self, connected: &mut bool) -> Stop {
        let filters = TOPICS.iter().map(|t| format!("topic=={t:?}")).collect();
        let req = self.client.request(SubscribeRequest { filters });
        let mut events_client = EventsClient::new(self.client.channel());
        let subscribe = async move { events_client.subscribe(req).await };
        let mut events = Box::pin(subscribe.map_ok(|r| r.into_inner()).try_flatten_stream());
        // containerd sends the response headers with the first event, so the subscription
        // cannot be awaited; poll it once to send the request before listing the store.
        let early = match futures::poll!(events.next()) {
            Poll::Ready(item) => Some(item),
            Poll::Pending => None,
        };
        if let Err(stop) = self.send_snapshot().await {
            return stop;
        }
        *connected = true;
        self.backoff.reset();
        if let Some(item) = early
            && let Err(stop) = self.on_item(item).await
        {
            return stop;
        }
        loop {
            let item = events.next().await;
            if let Err(stop) = self.on_item(item).await {
                return stop;
            }
        }
    }

    async fn on_item(
        &mut self,
        item: Option<std::result::Result<Envelope, tonic::Status>>,
    ) -> std::result::Result<(), Stop> {
        match item {
            Some(Ok(env)) => self.on_envelope(&env).await,
            Some(Err(status)) => {
                tracing::warn!(%status, "containerd event stream failed");
                Err(Stop::Lost)
            }
            None => {
                tracing::warn!("containerd event stream ended");
                Err(Stop::Lost)
            }
        }
    }

    async fn send(&mut self, event: StoreEvent) -> std::result::Result<(), Stop> {
        self.tx.send(event).await.map_err(|_| Stop::Closed)
    }

    async fn send_snapshot(&mut self) -> std::result::Result<(), Stop> {
        let walked = self.client.snapshot_detailed().await.map_err(lost)?;
        self.missing.clear();
        let mut states = Vec::with_capacity(walked.len());
        for (state, absent) in walked {
            self.track(&state.name, absent);
            states.push(state);
        }
        self.send(StoreEvent::Snapshot(states)).await
    }

    fn untrack(&mut self, name: &str) {
        self.missing.retain(|_, names| {
            names.remove(name);
            !names.is_empty()
        });
    }

    fn track(&mut self, name: &str, absent: BTreeSet<Digest>) {
        for d in absent {
            self.missing.entry(d).or_default().insert(name.to_owned());
        }
    }

    async fn put(&mut self, name: &str) -> std::result::Result<(), Stop> {
        let image = match self.client.get_image(name).await {
            Ok(Some(image)) => image,
            // Deleted meanwhile: its delete event follows.
            Ok(None) => return Ok(()),
            Err(e) => return Err(lost(e)),
        };
        match self.client.walk_image_detailed(&image).await {
            Ok((state, absent)) => {
                self.untrack(name);
                self.track(name, absent);
                self.send(StoreEvent::ImagePut(state)).await
            }
            Err(e @ Error::InvalidDigest { .. }) => {
                tracing::warn!(image = name, error = %e, "skipping image");
                Ok(())
            }
            Err(e) => Err(lost(e)),
        }
    }

    async fn on_envelope(&mut self, env: &Envelope) -> std::result::Result<(), Stop> {
        match decode(self.client.namespace(), env) {
            Decoded::ImagePut(name) => self.put(&name).await,
            Decoded::ImageDeleted(name) => {
                self.untrack(&name);
                self.send(StoreEvent::ImageDeleted { name }).await
            }
            Decoded::ContentCreated(digest) => {
                let names = self.missing.remove(&digest).unwrap_or_default();
                for name in names {
                    self.put(&name).await?;
                }
                Ok(())
            }
            Decoded::Ignored => Ok(()),
        }
    }
}

fn lost(e: Error) -> Stop {
    tracing::warn!(error = %e, "containerd unavailable");
    Stop::Lost
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct TestAny {
        #[prost(string, tag = "1")]
        type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct TestEnvelope {
        #[prost(string, tag = "2")]
        namespace: String,
        #[prost(string, tag = "3")]
        topic: String,
        #[prost(message, optional, tag = "4")]
        event: Option<TestAny>,
    }

    fn env(ns: &str, topic: &str, value: Vec<u8>) -> Envelope {
        let bytes = TestEnvelope {
            namespace: ns.into(),
            topic: topic.into(),
            event: Some(TestAny {
                type_url: String::new(),
                value,
            }),
        }
        .encode_to_vec();
        Envelope::decode(&bytes[..]).unwrap()
    }

    #[test]
    fn decodes_events() {
        let create = ImageCreate {
            name: "r/x:1".into(),
            labels: Default::default(),
        }
        .encode_to_vec();
        assert_eq!(
            decode("k8s.io", &env("k8s.io", "/images/create", create.clone())),
            Decoded::ImagePut("r/x:1".into())
        );
        assert_eq!(
            decode("k8s.io", &env("default", "/images/create", create)),
            Decoded::Ignored
        );
        let del = ImageDelete {
            name: "r/x:1".into(),
        }
        .encode_to_vec();
        assert_eq!(
            decode("k8s.io", &env("k8s.io", "/images/delete", del)),
            Decoded::ImageDeleted("r/x:1".into())
        );
        let d = Digest::sha256_of(b"x");
        let cc = ContentCreate {
            digest: d.to_string(),
            size: 1,
        }
        .encode_to_vec();
        assert_eq!(
            decode("k8s.io", &env("k8s.io", "/content/create", cc)),
            Decoded::ContentCreated(d)
        );
        let bad = ContentCreate {
            digest: "md5:zz".into(),
            size: 1,
        }
        .encode_to_vec();
        assert_eq!(
            decode("k8s.io", &env("k8s.io", "/content/create", bad)),
            Decoded::Ignored
        );
        assert_eq!(
            decode("k8s.io", &env("k8s.io", "/images/create", vec![0xff, 0xff])),
            Decoded::Ignored
        );
    }
}

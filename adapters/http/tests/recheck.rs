//! The store re-check is the core's: its timer makes the driver take a fresh snapshot from the
//! content source, and what vanished without an event (containerd's garbage collection emits
//! none) is withdrawn from the DHT.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use speil_core::Key;
use speil_http::server::ServerConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_gone_without_an_event_is_withdrawn_by_the_core_recheck() {
    let source = Arc::new(FakeContentStore::default());
    let blob = source.put(blob_bytes(1000, 7));
    source.tag("example.com/gc/app:v1", &blob);
    let dht = Arc::new(FakeDht::default());
    let l = listeners(33, 1).await.pop().unwrap();
    // The store's event stream sends one snapshot and then nothing: only the core's re-check
    // can notice the blob is gone.
    let _node = start_node_with(
        1,
        l,
        dht.clone(),
        source.clone(),
        ServerConfig { credentials: None },
        |c| {
            c.recheck_interval = Duration::from_millis(100);
        },
    )
    .await;
    let key = Key::digest(&blob);
    eventually(|| dht.providers(&key).contains(&1)).await;
    source.forget("example.com/gc/app:v1", &blob);
    eventually(|| !dht.providers(&key).contains(&1)).await;
}

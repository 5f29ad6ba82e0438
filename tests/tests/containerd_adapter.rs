//! The containerd adapter against real containerd daemons and a real registry, on every
//! containerd generation the harness runs and on each runtime speil builds for: every test
//! body is generic over [`Runtime`] and instantiated once per (generation, runtime) by
//! [`on_each_generation!`], as `<test>::containerd_<version>::<runtime>`.

use std::collections::BTreeSet;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::Either;
use speil_containerd::{BlobBody, Containerd, StoreEvents, spawn_watch};
use speil_core::Digest;
use speil_core::backoff::Backoff;
use speil_core::store::{ImageState, StoreEvent};
use speil_driver::tokio::Tokio;
use speil_driver::{Runtime, RuntimeExt as _};
use speil_tests::containerd::mounts_under;
use speil_tests::{Generation, Harness, TestImage, images};

const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

// --- runtimes ----------------------------------------------------------------------------------

/// Runs a test body on tokio (two workers, as the `speil` binary runs).
fn on_tokio<Fut: Future<Output = ()>>(test: impl FnOnce(Tokio) -> Fut) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test(Tokio));
}

/// Runs a test body on smol (the calling thread and one more, as many as tokio's workers),
/// checking before and after that neither it nor the runtime's tasks run inside tokio.
fn on_smol<Fut: Future<Output = ()>>(test: impl FnOnce(speil_driver::smol::Smol) -> Fut) {
    let rt = speil_driver::smol::Smol::new();
    rt.block_on(1, async {
        no_tokio_in_tasks(&rt).await;
        test(rt.clone()).await;
        no_tokio_in_tasks(&rt).await;
    });
}

/// Asserts that neither the calling task nor a task spawned on `rt` runs inside a tokio
/// runtime: the adapter (tonic's channel and its tasks included) must not need one.
async fn no_tokio_in_tasks<R: Runtime>(rt: &R) {
    assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "a {} test body runs inside a tokio runtime",
        rt.name()
    );
    let (tx, rx) = futures::channel::oneshot::channel();
    rt.spawn(Box::pin(async move {
        let _ = tx.send(tokio::runtime::Handle::try_current().is_err());
    }));
    assert!(
        rx.await.unwrap(),
        "a task spawned on {} runs inside a tokio runtime",
        rt.name()
    );
}

/// `test(rt, args…)` once per runtime, as `tokio` and `smol` tests.
macro_rules! on_each_runtime {
    ($test:ident($($arg:expr),*)) => {
        #[test]
        fn tokio() {
            crate::on_tokio(|rt| crate::$test(rt, $($arg),*));
        }

        #[test]
        fn smol() {
            crate::on_smol(|rt| crate::$test(rt, $($arg),*));
        }
    };
}

/// `test(rt, generation)` once per containerd generation and runtime.
macro_rules! on_each_generation {
    ($test:ident) => {
        mod $test {
            mod containerd_1_6 {
                on_each_runtime!($test(speil_tests::Generation::V1_6));
            }
            mod containerd_2_3 {
                on_each_runtime!($test(speil_tests::Generation::V2_3));
            }
            mod containerd_2_4 {
                on_each_runtime!($test(speil_tests::Generation::V2_4));
            }
        }
    };
}

// A generation added to the harness must be added to `on_each_generation!`.
const _: () = assert!(Generation::ALL.len() == 3);

/// `fut`, or a panic naming `what` after `limit` on `rt`'s timer.
async fn within<R: Runtime, T>(
    rt: &R,
    limit: Duration,
    what: &str,
    fut: impl Future<Output = T>,
) -> T {
    futures::pin_mut!(fut);
    match futures::future::select(fut, rt.sleep(limit)).await {
        Either::Left((value, _)) => value,
        Either::Right(_) => panic!("{what}: not done within {limit:?}"),
    }
}

/// Waits for the first event matching `pred`, skipping others.
async fn wait_for<R: Runtime>(
    rt: &R,
    rx: &mut StoreEvents,
    what: &str,
    mut pred: impl FnMut(&StoreEvent) -> bool,
) -> StoreEvent {
    let mut timeout = rt.sleep(EVENT_TIMEOUT);
    let mut skipped = Vec::new();
    loop {
        match futures::future::select(rx.next(), &mut timeout).await {
            Either::Left((Some(ev), _)) if pred(&ev) => return ev,
            Either::Left((Some(ev), _)) => skipped.push(ev),
            Either::Left((None, _)) => {
                panic!("event stream ended while waiting for {what}; saw {skipped:?}")
            }
            Either::Right(_) => panic!("no {what} within {EVENT_TIMEOUT:?}; saw {skipped:?}"),
        }
    }
}

fn present(state: &ImageState) -> BTreeSet<Digest> {
    state.present.iter().cloned().collect()
}

/// The three records a CRI pull creates, all pointing at the image's top digest and holding
/// exactly what was pulled.
fn assert_pulled(snapshot: &[ImageState], image: &TestImage, registry: &str, config: &Digest) {
    let expected = image.expected_after_pull().unwrap();
    let names: BTreeSet<String> = [
        image.reference(registry),
        image.digest_reference(registry),
        config.to_string(),
    ]
    .into();
    let found: Vec<&ImageState> = snapshot
        .iter()
        .filter(|s| names.contains(&s.name))
        .collect();
    assert_eq!(
        found
            .iter()
            .map(|s| s.name.clone())
            .collect::<BTreeSet<_>>(),
        names,
        "records after pulling {}: {snapshot:?}",
        image.name
    );
    for s in found {
        assert_eq!(s.target, image.top, "target of {}", s.name);
        assert_eq!(present(s), expected, "present digests of {}", s.name);
        assert!(s.present.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
    }
}

mod harness_starts_three_nodes_fast_and_leaves_nothing_behind {
    on_each_runtime!(harness_starts_three_nodes_fast_and_leaves_nothing_behind());
}

/// On containerd 1.6, whose CRI status carries the live configuration checked here.
async fn harness_starts_three_nodes_fast_and_leaves_nothing_behind<R: Runtime>(rt: R) {
    if !speil_tests::require_components() {
        return;
    }
    let started = Instant::now();
    let harness = Harness::start(3).unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "bring-up took {elapsed:?}"
    );
    eprintln!("1 registry + 3 nodes up in {elapsed:?}");

    let mut addresses = BTreeSet::new();
    for node in &harness.nodes {
        assert!(addresses.insert(node.address), "distinct node addresses");
        assert!(node.address.is_loopback());
        let client = node.client_on(rt.clone(), true).await.unwrap();
        let status = client.cri_status().await.unwrap();
        let config: serde_json::Value =
            serde_json::from_str(status.config_json().expect("verbose status has config")).unwrap();
        assert_eq!(
            config["registry"]["configPath"].as_str(),
            Some(node.certs_dir().to_str().unwrap())
        );
        assert_eq!(
            config["containerd"]["discardUnpackedLayers"].as_bool(),
            Some(false)
        );
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.kind == "RuntimeReady" && c.status),
            "{status:?}"
        );
        assert!(client.snapshot().await.unwrap().is_empty());
    }

    let mut pids: Vec<u32> = harness.nodes.iter().filter_map(|n| n.pid()).collect();
    pids.extend(harness.registry.pid());
    assert_eq!(pids.len(), 4);
    let dir = harness.dir().to_path_buf();
    drop(harness);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still exists"
        );
    }
    assert!(mounts_under(&dir).is_empty(), "mounts left under {dir:?}");
    assert!(!dir.exists(), "harness directory {dir:?} left behind");
}

on_each_generation!(listing_and_walking_after_a_cri_pull);

async fn listing_and_walking_after_a_cri_pull<R: Runtime>(rt: R, generation: Generation) {
    if !speil_tests::require_components() {
        return;
    }
    let multi = images::multi().unwrap();
    let small = images::small().unwrap();
    let harness = Harness::start_generations(&[generation]).unwrap();
    let reg = harness.registry.host();
    harness.registry.push(multi).unwrap();
    harness.registry.push(small).unwrap();
    let node = &harness.nodes[0];

    let image_ref = node
        .cri_pull_on(rt.clone(), &multi.reference(&reg))
        .await
        .unwrap();
    let host = multi.host_platform().unwrap();
    assert_eq!(image_ref, host.config.to_string());
    node.cri_pull_on(rt.clone(), &small.reference(&reg))
        .await
        .unwrap();

    for direct in [true, false] {
        let client = node.client_on(rt.clone(), direct).await.unwrap();
        let snapshot = client.snapshot().await.unwrap();
        assert_eq!(snapshot.len(), 6, "{snapshot:?}");
        assert_pulled(&snapshot, multi, &reg, &host.config);
        assert_pulled(&snapshot, small, &reg, &small.platforms[0].config);

        // The other platform's manifest is not present, and nothing of it is reported.
        let other = multi
            .platforms
            .iter()
            .find(|p| p.manifest != host.manifest)
            .unwrap();
        assert!(
            client
                .content_info(&other.manifest)
                .await
                .unwrap()
                .is_none()
        );

        assert_eq!(
            client.resolve(&multi.reference(&reg)).await.unwrap(),
            Some(multi.top.clone())
        );
        assert_eq!(
            client
                .resolve(&format!("{reg}/speil-test/multi:nope"))
                .await
                .unwrap(),
            None
        );
        for d in multi.expected_after_pull().unwrap() {
            let info = client.content_info(&d).await.unwrap().unwrap();
            assert_eq!(info.size, multi.sizes[&d], "size of {d}");
        }
        let manifest = client.read_small(&host.manifest, 1 << 20).await.unwrap();
        assert_eq!(&manifest[..], &multi.blob(&host.manifest).unwrap()[..]);
        let layer = &host.layers[0];
        let err = client.read_small(layer, 1024).await.unwrap_err();
        assert!(
            matches!(err, speil_containerd::Error::TooLarge { .. }),
            "{err}"
        );
        let missing = Digest::sha256_of(b"not in the store");
        assert!(client.content_info(&missing).await.unwrap().is_none());
        let err = client.read_blob(&missing, 0, None).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }
}

async fn read_range<R: Runtime>(
    client: &Containerd<R>,
    digest: &Digest,
    offset: u64,
    len: Option<u64>,
) -> Vec<u8> {
    let range = client.read_blob(digest, offset, len).await.unwrap();
    assert_eq!(range.offset, offset);
    let mut out = vec![0u8; usize::try_from(range.len).unwrap()];
    match range.body {
        BlobBody::File(file) => {
            assert!(client.content_path().is_some());
            file.read_exact_at(&mut out, offset).unwrap();
        }
        BlobBody::Stream(mut stream) => {
            assert!(client.content_path().is_none());
            out.clear();
            while let Some(chunk) = stream.next().await {
                out.extend_from_slice(&chunk.unwrap());
            }
            assert_eq!(out.len() as u64, range.len);
        }
    }
    out
}

on_each_generation!(ranges_match_what_the_registry_serves);

async fn ranges_match_what_the_registry_serves<R: Runtime>(rt: R, generation: Generation) {
    if !speil_tests::require_components() {
        return;
    }
    let large = images::large().unwrap();
    let small = images::small().unwrap();
    let harness = Harness::start_generations(&[generation]).unwrap();
    let reg = harness.registry.host();
    harness.registry.push(large).unwrap();
    harness.registry.push(small).unwrap();
    let node = &harness.nodes[0];
    node.cri_pull_on(rt.clone(), &large.reference(&reg))
        .await
        .unwrap();
    node.cri_pull_on(rt.clone(), &small.reference(&reg))
        .await
        .unwrap();

    let file_client = node.client_on(rt.clone(), true).await.unwrap();
    let grpc_client = node.client_on(rt.clone(), false).await.unwrap();
    let mib = 1u64 << 20;
    for image in [small, large] {
        let p = &image.platforms[0];
        let mut digests = vec![p.manifest.clone(), p.config.clone()];
        digests.extend(p.layers.iter().cloned());
        for digest in &digests {
            let upstream = harness.registry.blob(&image.name, digest).unwrap();
            let size = upstream.len() as u64;
            assert_eq!(size, image.sizes[digest]);
            let mut ranges = vec![
                (0, None),
                (0, Some(0)),
                (0, Some(1)),
                (size - 1, Some(1)),
                (size, None),
                (size / 3, Some(size / 3)),
            ];
            if size > 3 * mib {
                ranges.push((mib - 7, Some(mib + 13)));
                ranges.push((2 * mib + 1, None));
            }
            for (offset, len) in ranges {
                let end = len.map_or(size, |l| offset + l) as usize;
                let want = &upstream[offset as usize..end];
                for client in [&file_client, &grpc_client] {
                    let got = read_range(client, digest, offset, len).await;
                    assert!(
                        got == want,
                        "{digest} [{offset}, +{len:?}) differs (direct files: {})",
                        client.content_path().is_some()
                    );
                }
            }
            for client in [&file_client, &grpc_client] {
                let err = client.read_blob(digest, size, Some(1)).await.unwrap_err();
                assert!(
                    matches!(err, speil_containerd::Error::RangeOutOfBounds { .. }),
                    "{err}"
                );
                assert!(client.read_blob(digest, size + 1, None).await.is_err());
            }
        }
    }
}

on_each_generation!(events_for_pull_and_removal);

async fn events_for_pull_and_removal<R: Runtime>(rt: R, generation: Generation) {
    if !speil_tests::require_components() {
        return;
    }
    let small = images::small().unwrap();
    let harness = Harness::start_generations(&[generation]).unwrap();
    let reg = harness.registry.host();
    harness.registry.push(small).unwrap();
    let node = &harness.nodes[0];
    let client = node.client_on(rt.clone(), true).await.unwrap();
    let (mut rx, ended) = spawn_watch(client.clone(), Backoff::containerd_reconnect(1));

    let first = wait_for(&rt, &mut rx, "initial snapshot", |_| true).await;
    assert_eq!(first, StoreEvent::Snapshot(vec![]));

    let tag = small.reference(&reg);
    node.cri_pull_on(rt.clone(), &tag).await.unwrap();
    let ev = wait_for(
        &rt,
        &mut rx,
        "ImagePut for the tag",
        |e| matches!(e, StoreEvent::ImagePut(s) if s.name == tag),
    )
    .await;
    let StoreEvent::ImagePut(state) = ev else {
        unreachable!()
    };
    assert_eq!(state.target, small.top);
    assert_eq!(present(&state), small.expected_after_pull().unwrap());

    client.remove_image(&tag).await.unwrap();
    let ev = wait_for(&rt, &mut rx, "ImageDeleted for the tag", |e| {
        matches!(e, StoreEvent::ImageDeleted { .. })
    })
    .await;
    assert_eq!(ev, StoreEvent::ImageDeleted { name: tag.clone() });
    assert!(client.remove_image(&tag).await.unwrap_err().is_not_found());

    drop(rx);
    within(
        &rt,
        Duration::from_secs(5),
        "the watcher stops when its receiver is dropped",
        ended,
    )
    .await;
}

on_each_generation!(subscription_resumes_after_containerd_restarts);

async fn subscription_resumes_after_containerd_restarts<R: Runtime>(rt: R, generation: Generation) {
    if !speil_tests::require_components() {
        return;
    }
    let small = images::small().unwrap();
    let multi = images::multi().unwrap();
    let mut harness = Harness::start_generations(&[generation]).unwrap();
    let reg = harness.registry.host();
    harness.registry.push(small).unwrap();
    harness.registry.push(multi).unwrap();
    let client = harness.nodes[0].client_on(rt.clone(), true).await.unwrap();
    let (mut rx, _ended) = spawn_watch(client.clone(), Backoff::containerd_reconnect(1));
    wait_for(&rt, &mut rx, "initial snapshot", |e| {
        matches!(e, StoreEvent::Snapshot(_))
    })
    .await;

    let tag = small.reference(&reg);
    harness.nodes[0]
        .cri_pull_on(rt.clone(), &tag)
        .await
        .unwrap();
    wait_for(
        &rt,
        &mut rx,
        "ImagePut",
        |e| matches!(e, StoreEvent::ImagePut(s) if s.name == tag),
    )
    .await;

    harness.nodes[0].kill().unwrap();
    wait_for(&rt, &mut rx, "Disconnected", |e| {
        *e == StoreEvent::Disconnected
    })
    .await;
    harness.nodes[0].restart().unwrap();
    let ev = wait_for(&rt, &mut rx, "resync snapshot", |e| {
        matches!(e, StoreEvent::Snapshot(_))
    })
    .await;
    let fresh = harness.nodes[0].client_on(rt.clone(), true).await.unwrap();
    assert_eq!(ev, StoreEvent::Snapshot(fresh.snapshot().await.unwrap()));
    let StoreEvent::Snapshot(states) = ev else {
        unreachable!()
    };
    assert_pulled(&states, small, &reg, &small.platforms[0].config);

    // Events flow again on the resumed subscription.
    let tag = multi.reference(&reg);
    harness.nodes[0]
        .cri_pull_on(rt.clone(), &tag)
        .await
        .unwrap();
    let ev = wait_for(
        &rt,
        &mut rx,
        "ImagePut after restart",
        |e| matches!(e, StoreEvent::ImagePut(s) if s.name == tag),
    )
    .await;
    let StoreEvent::ImagePut(state) = ev else {
        unreachable!()
    };
    assert_eq!(present(&state), multi.expected_after_pull().unwrap());
    // The adapter's view matches a fresh listing.
    let listed = fresh.snapshot().await.unwrap();
    assert!(listed.contains(&state));
}

on_each_generation!(cri_pull_follows_the_nodes_hosts_toml);

async fn cri_pull_follows_the_nodes_hosts_toml<R: Runtime>(rt: R, generation: Generation) {
    if !speil_tests::require_components() {
        return;
    }
    let small = images::small().unwrap();
    let harness = Harness::start_generations(&[generation]).unwrap();
    // The upstream registry is empty; only the mirror holds the image.
    let mirror =
        speil_tests::Registry::start(&harness.dir().join("mirror"), Duration::from_secs(10))
            .unwrap();
    mirror.push(small).unwrap();
    let node = &harness.nodes[0];
    let upstream = harness.registry.host();
    let tag = small.reference(&upstream);

    let err = node.cri_pull_on(rt.clone(), &tag).await.unwrap_err();
    assert!(format!("{err:#}").contains("not found"), "{err:#}");

    let path = node
        .write_hosts_toml(&upstream, &format!("http://{}", mirror.host()))
        .unwrap();
    assert!(path.starts_with(node.certs_dir()));
    node.cri_pull_on(rt.clone(), &tag).await.unwrap();
    let client = node.client_on(rt.clone(), true).await.unwrap();
    let snapshot = client.snapshot().await.unwrap();
    assert_pulled(&snapshot, small, &upstream, &small.platforms[0].config);
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    if !speil_tests::require_components() {
        return;
    }
    let seen = std::sync::Mutex::new((Vec::new(), None));
    let result = std::panic::catch_unwind(|| {
        let harness = Harness::start(2).unwrap();
        let mut s = seen.lock().unwrap();
        s.0 = harness.nodes.iter().filter_map(|n| n.pid()).collect();
        s.0.extend(harness.registry.pid());
        s.1 = Some(harness.dir().to_path_buf());
        drop(s);
        panic!("a failing test");
    });
    assert!(result.is_err());
    let (pids, dir) = seen.into_inner().unwrap();
    assert_eq!(pids.len(), 3);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} left running"
        );
    }
    let dir = dir.unwrap();
    assert!(mounts_under(&dir).is_empty());
    assert!(!dir.exists());
}

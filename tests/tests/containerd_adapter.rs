//! The containerd adapter against real containerd daemons and a real registry.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use speil_containerd::{BlobBody, Containerd, StoreEvents, tokio_rt::spawn_watch};
use speil_core::Digest;
use speil_core::backoff::Backoff;
use speil_core::store::{ImageState, StoreEvent};
use speil_tests::containerd::mounts_under;
use speil_tests::{Generation, Harness, TestImage, images};

const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits for the first event matching `pred`, skipping others.
async fn wait_for(
    rx: &mut StoreEvents,
    what: &str,
    mut pred: impl FnMut(&StoreEvent) -> bool,
) -> StoreEvent {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    let mut skipped = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.next()).await {
            Ok(Some(ev)) if pred(&ev) => return ev,
            Ok(Some(ev)) => skipped.push(ev),
            Ok(None) => panic!("event stream ended while waiting for {what}; saw {skipped:?}"),
            Err(_) => panic!("no {what} within {EVENT_TIMEOUT:?}; saw {skipped:?}"),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_starts_three_nodes_fast_and_leaves_nothing_behind() {
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
        let client = node.client(true).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_and_walking_after_a_cri_pull_on_containerd_1_6() {
    listing_and_walking_after_a_cri_pull(Generation::V1_6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_and_walking_after_a_cri_pull_on_containerd_2_3() {
    listing_and_walking_after_a_cri_pull(Generation::V2_3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_and_walking_after_a_cri_pull_on_containerd_2_4() {
    listing_and_walking_after_a_cri_pull(Generation::V2_4).await;
}

async fn listing_and_walking_after_a_cri_pull(generation: Generation) {
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

    let image_ref = node.cri_pull(&multi.reference(&reg)).await.unwrap();
    let host = multi.host_platform().unwrap();
    assert_eq!(image_ref, host.config.to_string());
    node.cri_pull(&small.reference(&reg)).await.unwrap();

    for direct in [true, false] {
        let client = node.client(direct).await.unwrap();
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

async fn read_range(
    client: &Containerd,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_match_what_the_registry_serves() {
    if !speil_tests::require_components() {
        return;
    }
    let large = images::large().unwrap();
    let small = images::small().unwrap();
    let harness = Harness::start(1).unwrap();
    let reg = harness.registry.host();
    harness.registry.push(large).unwrap();
    harness.registry.push(small).unwrap();
    let node = &harness.nodes[0];
    node.cri_pull(&large.reference(&reg)).await.unwrap();
    node.cri_pull(&small.reference(&reg)).await.unwrap();

    let file_client = node.client(true).await.unwrap();
    let grpc_client = node.client(false).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_pull_and_removal() {
    if !speil_tests::require_components() {
        return;
    }
    let small = images::small().unwrap();
    let harness = Harness::start(1).unwrap();
    let reg = harness.registry.host();
    harness.registry.push(small).unwrap();
    let node = &harness.nodes[0];
    let client = node.client(true).await.unwrap();
    let (mut rx, task) = spawn_watch(client.clone(), Backoff::containerd_reconnect(1));

    let first = wait_for(&mut rx, "initial snapshot", |_| true).await;
    assert_eq!(first, StoreEvent::Snapshot(vec![]));

    let tag = small.reference(&reg);
    node.cri_pull(&tag).await.unwrap();
    let ev = wait_for(
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
    let ev = wait_for(&mut rx, "ImageDeleted for the tag", |e| {
        matches!(e, StoreEvent::ImageDeleted { .. })
    })
    .await;
    assert_eq!(ev, StoreEvent::ImageDeleted { name: tag.clone() });
    assert!(client.remove_image(&tag).await.unwrap_err().is_not_found());

    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the watcher stops when its receiver is dropped")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_resumes_after_containerd_restarts() {
    if !speil_tests::require_components() {
        return;
    }
    let small = images::small().unwrap();
    let multi = images::multi().unwrap();
    let mut harness = Harness::start(1).unwrap();
    let reg = harness.registry.host();
    harness.registry.push(small).unwrap();
    harness.registry.push(multi).unwrap();
    let client = harness.nodes[0].client(true).await.unwrap();
    let (mut rx, _task) = spawn_watch(client.clone(), Backoff::containerd_reconnect(1));
    wait_for(&mut rx, "initial snapshot", |e| {
        matches!(e, StoreEvent::Snapshot(_))
    })
    .await;

    let tag = small.reference(&reg);
    harness.nodes[0].cri_pull(&tag).await.unwrap();
    wait_for(
        &mut rx,
        "ImagePut",
        |e| matches!(e, StoreEvent::ImagePut(s) if s.name == tag),
    )
    .await;

    harness.nodes[0].kill().unwrap();
    wait_for(&mut rx, "Disconnected", |e| *e == StoreEvent::Disconnected).await;
    harness.nodes[0].restart().unwrap();
    let ev = wait_for(&mut rx, "resync snapshot", |e| {
        matches!(e, StoreEvent::Snapshot(_))
    })
    .await;
    let fresh = harness.nodes[0].client(true).await.unwrap();
    assert_eq!(ev, StoreEvent::Snapshot(fresh.snapshot().await.unwrap()));
    let StoreEvent::Snapshot(states) = ev else {
        unreachable!()
    };
    assert_pulled(&states, small, &reg, &small.platforms[0].config);

    // Events flow again on the resumed subscription.
    let tag = multi.reference(&reg);
    harness.nodes[0].cri_pull(&tag).await.unwrap();
    let ev = wait_for(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pull_follows_the_nodes_hosts_toml() {
    if !speil_tests::require_components() {
        return;
    }
    let small = images::small().unwrap();
    let harness = Harness::start(1).unwrap();
    // The upstream registry is empty; only the mirror holds the image.
    let mirror =
        speil_tests::Registry::start(&harness.dir().join("mirror"), Duration::from_secs(10))
            .unwrap();
    mirror.push(small).unwrap();
    let node = &harness.nodes[0];
    let upstream = harness.registry.host();
    let tag = small.reference(&upstream);

    let err = node.cri_pull(&tag).await.unwrap_err();
    assert!(format!("{err:#}").contains("not found"), "{err:#}");

    let path = node
        .write_hosts_toml(&upstream, &format!("http://{}", mirror.host()))
        .unwrap();
    assert!(path.starts_with(node.certs_dir()));
    node.cri_pull(&tag).await.unwrap();
    let client = node.client(true).await.unwrap();
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

//! End to end (DESIGN.md §3, layer 5): an upstream registry, three nodes each with a real
//! containerd and a real `speil registry`, containerd configured by `speil configuration`, and
//! pulls through the CRI exactly as kubelet does them.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use speil_core::Digest;
use speil_tests::cluster::{Cluster, ClusterKind, wait_findable};
use speil_tests::{Build, Generation, Speil, TestImage, http, images};

/// Every blob of the image's host platform, fetched from `s` by digest (without `ns`), hashes
/// to its digest and equals the bytes of the image's layout.
fn assert_bytes_match(s: &Speil, image: &TestImage) -> Result<()> {
    let p = image.host_platform()?;
    let mut digests: Vec<&Digest> = vec![&p.manifest, &p.config];
    digests.extend(p.layers.iter());
    for d in digests {
        let r = http::request(
            s.registry_addr(),
            "GET",
            &format!("/v2/{}/blobs/{d}", image.name),
            &[],
        )?;
        assert_eq!(r.status, 200, "{d} from {}", s.address);
        assert!(
            d.verifies(&r.body),
            "{d} from {} does not verify",
            s.address
        );
        assert_eq!(r.body, image.blob(d)?, "{d}");
    }
    Ok(())
}

/// `spegel_mirror_requests_total{cache="hit"}` summed over registries.
fn hits(s: &Speil) -> Result<f64> {
    Ok(s.metrics()?
        .lines()
        .filter(|l| l.starts_with("spegel_mirror_requests_total{") && l.contains("cache=\"hit\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

async fn pulls_are_served_by_peers_after_the_upstream_is_gone(kind: ClusterKind) -> Result<()> {
    let mut c = Cluster::start_nodes(&kind.nodes(3))?;
    let reg = c.registry();
    let small = images::small()?;
    let multi = images::multi()?;
    let large = images::large()?;
    for image in [small, multi, large] {
        c.h.registry.push(image)?;
    }
    // Node 0 pulls from the upstream (its speil has nobody to ask yet).
    for image in [small, multi, large] {
        c.h.nodes[0].cri_pull(&image.reference(&reg)).await?;
    }
    // containerd asked its mirror first (the hosts.toml of `speil configuration` took
    // effect): node 0's speil saw the tag request and answered 404, so containerd fell back.
    let asked = format!(
        "/v2/{}/manifests/{}?ns={}",
        small.name,
        small.tag,
        reg.replace(':', "%3A")
    );
    assert!(
        c.speils[0]
            .log_text()
            .lines()
            .any(|l| l.contains("not served") && l.contains(&asked)),
        "node 0's speil was not asked for {asked}"
    );
    for image in [small, multi, large] {
        wait_findable(&c.speils[1], image, &reg, Duration::from_secs(10))?;
    }
    c.h.registry.stop();
    // Node 1 by tag, node 2 by digest: both from the cluster only.
    for image in [small, multi, large] {
        let t = Instant::now();
        c.h.nodes[1]
            .cri_pull(&image.reference(&reg))
            .await
            .with_context(|| c.speils[1].log_tail())?;
        eprintln!("node 1 pulled {} by tag in {:?}", image.name, t.elapsed());
        c.h.nodes[2]
            .cri_pull(&image.digest_reference(&reg))
            .await
            .with_context(|| c.speils[2].log_tail())?;
    }
    for i in 1..3 {
        assert!(hits(&c.speils[i])? > 0.0, "node {i} mirrored nothing");
        for layer in &large.host_platform()?.layers {
            let source = speil_tests::cluster::source_of(&c.speils[i], layer.as_str());
            assert!(
                source.starts_with("peer "),
                "node {i}: {layer} came from {source}"
            );
        }
        for image in [small, multi, large] {
            assert_bytes_match(&c.speils[i], image)?;
        }
    }
    drop(c);
    Ok(())
}

async fn a_peer_killed_mid_blob_does_not_break_the_pull(kind: ClusterKind) -> Result<()> {
    let mut c = Cluster::start_nodes(&kind.nodes(3))?;
    let reg = c.registry();
    let large = images::large()?;
    c.h.registry.push(large)?;
    c.h.nodes[0].cri_pull(&large.reference(&reg)).await?;
    c.h.nodes[1].cri_pull(&large.reference(&reg)).await?;
    wait_findable(&c.speils[2], large, &reg, Duration::from_secs(10))?;
    c.h.registry.stop();
    let reference = large.reference(&reg);
    let node2 = c.h.nodes.remove(2);
    let pull = tokio::spawn(async move {
        let r = node2.cri_pull(&reference).await;
        (r, node2)
    });
    // As soon as node 2's speil starts relaying a layer from a peer, that peer's speil dies.
    let layers: Vec<String> = large
        .host_platform()?
        .layers
        .iter()
        .map(|l| l.to_string())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let victim = loop {
        let log = c.speils[2].log_text();
        let serving = log.lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let f = &v;
            let path = f["path"].as_str()?;
            (f["msg"] == "mirrored" && layers.iter().any(|d| path.contains(d.as_str())))
                .then(|| f["peer"].as_str().map(str::to_owned))?
        });
        if let Some(peer) = serving {
            break peer;
        }
        assert!(Instant::now() < deadline, "node 2 never mirrored a layer");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let killed = c
        .speils
        .iter()
        .position(|s| s.registry_addr().to_string() == victim)
        .context("the serving peer is one of the nodes")?;
    c.speils[killed].kill();
    let (r, _node2) = pull.await?;
    r.with_context(|| c.speils[2].log_tail())?;
    assert_bytes_match(&c.speils[2], large)?;
    let resumed = c.speils[2]
        .log_text()
        .lines()
        .filter(|l| l.contains("\"resumed\""))
        .count();
    eprintln!(
        "killed node {} mid-layer; bodies resumed from the other peer: {resumed}",
        killed + 1
    );
    Ok(())
}

async fn a_late_tag_is_found_and_a_removed_image_gives_a_clean_404(
    kind: ClusterKind,
) -> Result<()> {
    let mut c = Cluster::start_nodes(&kind.nodes(2))?;
    let reg = c.registry();
    let small = images::small()?;
    c.h.registry.push(small)?;
    // speil is already running: the tag is pulled after start-up.
    c.h.nodes[0].cri_pull(&small.reference(&reg)).await?;
    let t = Instant::now();
    wait_findable(&c.speils[1], small, &reg, Duration::from_secs(5))?;
    eprintln!("late tag findable after {:?}", t.elapsed());
    // Remove every record of the image on its only holder; the upstream is gone too.
    let client = c.h.nodes[0].client(false).await?;
    for image in client.list_images().await? {
        client.remove_image(&image.name).await?;
    }
    c.h.registry.stop();
    let path = format!(
        "/v2/{}/manifests/{}?ns={}",
        small.name,
        small.tag,
        reg.replace(':', "%3A")
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = Instant::now();
        let r = http::request(c.speils[1].registry_addr(), "GET", &path, &[])?;
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "no hang: {:?}",
            t.elapsed()
        );
        if r.status == 404 {
            let body = String::from_utf8_lossy(&r.body);
            assert!(body.contains("MANIFEST_UNKNOWN"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {} after removal",
            r.status
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // And the CRI pull fails (cleanly, within the budget) instead of hanging.
    let t = Instant::now();
    let pulled = c.h.nodes[1].cri_pull(&small.reference(&reg)).await;
    assert!(pulled.is_err());
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    Ok(())
}

async fn registry_api_statuses_over_real_http(kind: ClusterKind) -> Result<()> {
    // Started with a soft open-file limit below the hard one (inherited), which speil raises.
    let mut c = {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let before = getrlimit(Resource::Nofile);
        let lowered = Rlimit {
            current: Some(1024),
            maximum: before.maximum,
        };
        setrlimit(Resource::Nofile, lowered)?;
        let started = Cluster::start_nodes(&kind.nodes(1));
        setrlimit(Resource::Nofile, before)?;
        started?
    };
    let reg = c.registry();
    let small = images::small()?;
    c.h.registry.push(small)?;
    c.h.nodes[0].cri_pull(&small.reference(&reg)).await?;
    let s = &c.speils[0];
    // It runs on its build's runtime alone (no tokio runtime inside speil-smol).
    s.check_runtime_threads()?;
    s.check_fd_limit()?;
    let version = std::process::Command::new(s.build.binary()?)
        .arg("version")
        .output()?;
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains(&format!("runtime {}", s.build.runtime())),
        "{version}"
    );
    let a = s.registry_addr();
    let ns = reg.replace(':', "%3A");
    let p = small.host_platform()?;
    let layer = &p.layers[0];
    let size = small.sizes[layer];
    let bytes = small.blob(layer)?;
    let blob = format!("/v2/{}/blobs/{layer}", small.name);

    let r = http::request(a, "GET", "/v2/", &[])?;
    assert_eq!(r.status, 200);
    // Digest without ns is served; HEAD has the headers and no body.
    let r = http::request(a, "HEAD", &blob, &[])?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(size.to_string().as_str()));
    assert_eq!(r.header("docker-content-digest"), Some(layer.as_str()));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r.body.is_empty());
    // Ranges.
    let r = http::request(a, "GET", &blob, &[("Range", "bytes=10-19")])?;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, bytes[10..20]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 10-19/{size}").as_str())
    );
    let r = http::request(a, "GET", &blob, &[("Range", "bytes=-5")])?;
    assert_eq!(r.body, bytes[bytes.len() - 5..]);
    let r = http::request(a, "GET", &blob, &[("Range", &format!("bytes={size}-"))])?;
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );
    let r = http::request(a, "GET", &blob, &[("Range", "bytes=0-1,5-6")])?;
    assert_eq!(r.status, 416);
    let r = http::request(a, "GET", &blob, &[("Range", "pages=1")])?;
    assert_eq!(r.status, 416);
    // Manifests by tag need ns; by digest they do not.
    let by_tag = format!("/v2/{}/manifests/{}", small.name, small.tag);
    let r = http::request(a, "GET", &by_tag, &[])?;
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("\"errors\""));
    let r = http::request(a, "GET", &format!("{by_tag}?ns={ns}"), &[])?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), Some(small.top.as_str()));
    assert_eq!(r.header("oci-namespace"), Some(reg.as_str()));
    // A manifest request for a layer digest is not a manifest.
    let r = http::request(
        a,
        "GET",
        &format!("/v2/{}/manifests/{layer}", small.name),
        &[],
    )?;
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("MANIFEST_UNKNOWN"));
    // Malformed input.
    for (method, path, want) in [
        ("GET", "/v2/UPPER/blobs/sha256:abc", 400),
        ("GET", "/v2/x/blobs/md5:zz", 400),
        ("GET", "/v2/x/other/y", 404),
        ("GET", "/nothing", 404),
        ("DELETE", blob.as_str(), 405),
        ("PUT", "/v2/", 405),
    ] {
        let r = http::request(a, method, path, &[])?;
        assert_eq!(r.status, want, "{method} {path}");
        assert!(
            String::from_utf8_lossy(&r.body).contains("\"errors\""),
            "{method} {path}"
        );
    }
    let long = format!("/v2/{}/blobs/{layer}", "a/".repeat(3000));
    let r = http::request(a, "GET", &long, &[])?;
    assert!(matches!(r.status, 400 | 414), "{}", r.status);
    let huge = "x".repeat(20 * 1024);
    let r = http::request(a, "GET", &blob, &[("X-Huge", &huge)]);
    if let Ok(r) = r {
        assert!(matches!(r.status, 431 | 400), "{}", r.status);
    }
    // Metrics: Spegel's names and the process metrics.
    let metrics = s.metrics()?;
    for name in [
        "spegel_advertised_image_tags{",
        "spegel_advertised_content_digests{",
        "http_request_duration_seconds_bucket{",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    // The server is still fine afterwards.
    assert_eq!(http::request(a, "GET", "/v2/", &[])?.status, 200);
    // Graceful shutdown: SIGTERM exits 0.
    let code = c.speils[0].terminate(Duration::from_secs(10))?;
    assert_eq!(code, Some(0));
    Ok(())
}

async fn speil_survives_a_containerd_restart(kind: ClusterKind) -> Result<()> {
    let mut c = Cluster::start_nodes(&kind.nodes(2))?;
    let reg = c.registry();
    let small = images::small()?;
    let multi = images::multi()?;
    c.h.registry.push(small)?;
    c.h.registry.push(multi)?;
    c.h.nodes[0].cri_pull(&small.reference(&reg)).await?;
    wait_findable(&c.speils[1], small, &reg, Duration::from_secs(5))?;
    // containerd on node 0 goes away and comes back; its speil keeps running (Spegel exits).
    c.h.nodes[0].kill()?;
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        c.speils[0].wait_serving(Duration::from_secs(1)).is_ok(),
        "speil exited when containerd stopped: {}",
        c.speils[0].log_tail()
    );
    c.h.nodes[0].restart()?;
    // Resynced (the store is connected again), and following events again: an image pulled
    // after the restart is found by the other node.
    c.speils[0].wait_ready(Duration::from_secs(10))?;
    c.h.nodes[0].cri_pull(&multi.reference(&reg)).await?;
    wait_findable(&c.speils[1], multi, &reg, Duration::from_secs(10))?;
    c.h.registry.stop();
    for image in [small, multi] {
        c.h.nodes[1]
            .cri_pull(&image.reference(&reg))
            .await
            .with_context(|| c.speils[1].log_tail())?;
    }
    Ok(())
}

async fn a_frozen_containerd_does_not_hang_requests(kind: ClusterKind) -> Result<()> {
    let c = Cluster::start_nodes(&kind.nodes(1))?;
    let reg = c.registry();
    let small = images::small()?;
    c.h.registry.push(small)?;
    c.h.nodes[0].cri_pull(&small.reference(&reg)).await?;
    let layer = &small.host_platform()?.layers[0];
    let path = format!("/v2/{}/blobs/{layer}", small.name);
    let a = c.speils[0].registry_addr();
    assert_eq!(http::request(a, "GET", &path, &[])?.status, 200);
    // containerd stops answering (SIGSTOP) but keeps its socket open.
    let pid = c.h.nodes[0].pid().context("containerd pid")?.to_string();
    let frozen = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()?;
    assert!(frozen.success());
    let t = Instant::now();
    let r = http::request(a, "GET", &path, &[]);
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    let r = r?;
    let took = t.elapsed();
    // The store budget (3 s) plus the mirror's own budgets: an answer, not a hang.
    assert!(took < Duration::from_secs(8), "answered after {took:?}");
    // Either an error containerd can fall back from, or — when speil could serve the blob from
    // the content directory without asking containerd — the whole, correct blob.
    match r.status {
        404 | 503 => assert!(String::from_utf8_lossy(&r.body).contains("\"errors\"")),
        200 => assert!(layer.verifies(&r.body), "a 200 with a wrong body"),
        other => panic!("status {other} for a frozen containerd"),
    }
    // And it serves again once containerd does.
    assert_eq!(http::request(a, "GET", &path, &[])?.status, 200);
    Ok(())
}

/// `speil_body_mismatches_total` of `s`.
fn mismatches(s: &Speil) -> Result<f64> {
    Ok(s.metrics()?
        .lines()
        .find_map(|l| l.strip_prefix("speil_body_mismatches_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

async fn a_corrupt_copy_on_a_peer_is_never_relayed(kind: ClusterKind) -> Result<()> {
    let c = Cluster::start_nodes(&kind.nodes(2))?;
    let reg = c.registry();
    let image = images::multi()?;
    c.h.registry.push(image)?;
    c.h.nodes[0].cri_pull(&image.reference(&reg)).await?;
    wait_findable(&c.speils[1], image, &reg, Duration::from_secs(10))?;
    // One byte of node 0's copy of its largest layer goes bad on disk (same size:
    // containerd's own metadata still says the content is there).
    let layers = image.host_platform()?.layers.clone();
    let mut sizes = Vec::new();
    for l in &layers {
        sizes.push((image.blob(l)?.len(), l.clone()));
    }
    let (_, layer) = sizes.into_iter().max().context("a layer")?;
    let file = c.h.nodes[0]
        .content_path()
        .join("blobs/sha256")
        .join(layer.hex());
    let mut bytes = std::fs::read(&file).with_context(|| file.display().to_string())?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&file, &bytes)?;
    // Node 1 pulls, the upstream still reachable: within two attempts the pull succeeds
    // (speil never completes the corrupt body, answers 404 on the retry, and containerd goes
    // upstream).
    let mut attempts = Vec::new();
    for _ in 0..2 {
        let r = c.h.nodes[1].cri_pull(&image.reference(&reg)).await;
        let ok = r.is_ok();
        attempts.push(r.map(|_| ()).map_err(|e| format!("{e:#}")));
        if ok {
            break;
        }
    }
    assert!(
        attempts.last().is_some_and(|a| a.is_ok()),
        "the pull failed twice: {attempts:?}\n{}",
        c.speils[1].log_tail()
    );
    assert!(
        mismatches(&c.speils[1])? >= 1.0,
        "node 1 never saw the corrupt body: {}",
        c.speils[1].log_tail()
    );
    assert!(
        c.speils[1]
            .log_text()
            .contains("a relayed body did not match its digest"),
        "{}",
        c.speils[1].log_tail()
    );
    // Nothing corrupt was stored: node 1's copy is the upstream's.
    let stored = c.h.nodes[1]
        .content_path()
        .join("blobs/sha256")
        .join(layer.hex());
    let stored = std::fs::read(&stored).with_context(|| stored.display().to_string())?;
    assert!(layer.verifies(&stored), "node 1 stored a corrupt {layer}");
    assert_bytes_match(&c.speils[1], image)?;
    Ok(())
}

// Every containerd generation, under each build (the same scenarios, not copies).
speil_tests::scenarios!(
    [
        containerd_1_6 => ClusterKind::Uniform(Generation::V1_6, Build::Tokio),
        containerd_2_3 => ClusterKind::Uniform(Generation::V2_3, Build::Tokio),
        containerd_2_4 => ClusterKind::Uniform(Generation::V2_4, Build::Tokio),
        smol_containerd_1_6 => ClusterKind::Uniform(Generation::V1_6, Build::Smol),
        smol_containerd_2_3 => ClusterKind::Uniform(Generation::V2_3, Build::Smol),
        smol_containerd_2_4 => ClusterKind::Uniform(Generation::V2_4, Build::Smol),
    ],
    [
        pulls_are_served_by_peers_after_the_upstream_is_gone,
        a_peer_killed_mid_blob_does_not_break_the_pull,
        a_late_tag_is_found_and_a_removed_image_gives_a_clean_404,
        registry_api_statuses_over_real_http,
        speil_survives_a_containerd_restart,
        a_frozen_containerd_does_not_hang_requests,
        a_corrupt_copy_on_a_peer_is_never_relayed,
    ]
);
// A cluster of 1.6, 2.3.4 and 2.4 nodes running tokio and smol builds side by side (the
// scenarios with more than one node).
speil_tests::scenarios!(
    [mixed => ClusterKind::Mixed],
    [
        pulls_are_served_by_peers_after_the_upstream_is_gone,
        a_peer_killed_mid_blob_does_not_break_the_pull,
        a_late_tag_is_found_and_a_removed_image_gives_a_clean_404,
        speil_survives_a_containerd_restart,
        a_corrupt_copy_on_a_peer_is_never_relayed,
    ]
);

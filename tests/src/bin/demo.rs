//! The demo: a three-node cluster on this machine — an upstream registry, and on each node a
//! real containerd and a real `speil registry` on its own loopback address. Node 1 pulls an
//! image (from the upstream), the upstream is stopped, nodes 2 and 3 pull the same image from
//! their peers. Prints where each layer came from and how long each pull took.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use speil_tests::cluster::{Cluster, source_of, wait_findable};
use speil_tests::{COMPONENTS, TestImage, images, which};

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

fn report(c: &Cluster, node: usize, image: &TestImage, took: Duration) -> Result<()> {
    let p = image.host_platform()?;
    let total: u64 = p.layers.iter().map(|l| image.sizes[l]).sum();
    println!(
        "\nnode {} ({}) pulled {} in {:.2?} ({:.0} MiB/s)",
        node + 1,
        c.h.nodes[node].address,
        image.reference(&c.registry()),
        took,
        total as f64 / f64::from(1u32 << 20) / took.as_secs_f64()
    );
    for layer in &p.layers {
        let mut source = source_of(&c.speils[node], layer.as_str());
        for (i, s) in c.speils.iter().enumerate() {
            let addr = s.registry_addr().to_string();
            if source.ends_with(&addr) {
                source = format!("peer: node {} ({addr})", i + 1);
            }
        }
        println!(
            "  layer {}…  {:>9}  from {source}",
            &layer.as_str()[..19],
            human(image.sizes[layer]),
        );
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let missing: Vec<&str> = COMPONENTS
        .iter()
        .copied()
        .filter(|c| which(c).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing {}: run ./scripts/demo (it installs them)",
            missing.join(", ")
        );
    }
    println!("building the test image (three layers, ~100 MiB)…");
    let image = images::large()?;
    println!("starting an upstream registry and three nodes (containerd + speil each)…");
    let t = Instant::now();
    let mut c = Cluster::start(3).context("starting the cluster")?;
    let reg = c.registry();
    println!("  registry  http://{reg}");
    for (i, s) in c.speils.iter().enumerate() {
        println!(
            "  node {}    {}  containerd + speil (registry :{}, p2p :{}, metrics :{})",
            i + 1,
            s.address,
            s.ports.registry,
            s.ports.router,
            s.ports.metrics
        );
    }
    println!("  up in {:.2?}", t.elapsed());
    c.h.registry.push(image).context("pushing the image")?;
    println!("pushed {} to the upstream registry", image.reference(&reg));

    let t = Instant::now();
    c.h.nodes[0].cri_pull(&image.reference(&reg)).await?;
    report(&c, 0, image, t.elapsed())?;
    wait_findable(&c.speils[1], image, &reg, Duration::from_secs(10))?;

    c.h.registry.stop();
    println!("\nupstream registry stopped: from now on only the cluster has the image");

    for node in [1, 2] {
        let t = Instant::now();
        c.h.nodes[node]
            .cri_pull(&image.reference(&reg))
            .await
            .with_context(|| c.speils[node].log_tail())?;
        report(&c, node, image, t.elapsed())?;
    }
    println!(
        "\nmetrics of node 3: http://{}/metrics, debug page: http://{}/debug/web/",
        c.speils[2].metrics_addr(),
        c.speils[2].metrics_addr()
    );
    println!("stopping everything…");
    drop(c);
    println!("done");
    Ok(())
}

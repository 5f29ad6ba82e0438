//! A harness with a `speil registry` on every node and containerd pointed at it through the
//! `hosts.toml` that `speil configuration` writes — the shape of a real cluster.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::images::TestImage;
use crate::speil::{Build, Ports, Speil};
use crate::{Generation, Harness, Node};

/// Which containerd generations and speil builds a cluster's nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKind {
    /// Every node runs this generation and this build.
    Uniform(Generation, Build),
    /// Node `i` runs `Generation::ALL[i % 3]` (1.6, 2.3.4, 2.4-dev, 1.6, …) and
    /// `Build::ALL[i % 2]` (tokio, smol, tokio, …).
    Mixed,
}

impl ClusterKind {
    /// The generations and builds of an `n`-node cluster of this kind.
    pub fn nodes(self, n: usize) -> Vec<(Generation, Build)> {
        (0..n)
            .map(|i| match self {
                ClusterKind::Uniform(g, b) => (g, b),
                ClusterKind::Mixed => (
                    Generation::ALL[i % Generation::ALL.len()],
                    Build::ALL[i % Build::ALL.len()],
                ),
            })
            .collect()
    }
}

/// The nodes, their speils and the upstream registry. Stopped on drop.
pub struct Cluster {
    /// `speils[i]` runs on `h.nodes[i]`.
    pub speils: Vec<Speil>,
    /// The registry and the containerd nodes.
    pub h: Harness,
}

impl Cluster {
    /// Starts `nodes` nodes, each with containerd and speil, bootstrapped over HTTP from the
    /// first, and waits until every speil is ready (or, alone, serving).
    pub fn start(nodes: usize) -> Result<Cluster> {
        Cluster::start_nodes(&vec![(Generation::V1_6, Build::Tokio); nodes])
    }

    /// [`Cluster::start`] with node `i` running containerd `nodes[i].0` and speil build
    /// `nodes[i].1`.
    pub fn start_nodes(kinds: &[(Generation, Build)]) -> Result<Cluster> {
        Cluster::start_binaries(kinds, Build::binary)
    }

    /// [`Cluster::start`] with every node running `build` from the binary at `binary` (e.g.
    /// another commit's build).
    pub fn start_binary(nodes: usize, build: Build, binary: &Path) -> Result<Cluster> {
        let kinds = vec![(Generation::V1_6, build); nodes];
        Cluster::start_binaries(&kinds, |_| Ok(binary.to_path_buf()))
    }

    fn start_binaries(
        kinds: &[(Generation, Build)],
        binary_of: impl Fn(Build) -> Result<PathBuf>,
    ) -> Result<Cluster> {
        let nodes = kinds.len();
        let generations: Vec<Generation> = kinds.iter().map(|k| k.0).collect();
        let h = Harness::start_generations(&generations)?;
        let ports = Ports::for_block(h.block.index());
        let first: IpAddr = h.nodes[0].address;
        let mut speils = Vec::new();
        for (node, (_, build)) in h.nodes.iter().zip(kinds) {
            let s = Speil::start_binary(*build, &binary_of(*build)?, node, ports, first, &[])?;
            configure(node, &s, &h.registry.host())?;
            speils.push(s);
        }
        for s in &mut speils {
            if nodes > 1 {
                s.wait_ready(Duration::from_secs(20))?;
            } else {
                // Alone, a node has no peers and never reports ready; it still serves.
                s.wait_serving(Duration::from_secs(20))?;
            }
        }
        Ok(Cluster { speils, h })
    }

    /// The upstream registry's `host:port`.
    pub fn registry(&self) -> String {
        self.h.registry.host()
    }
}

/// Writes the node's `hosts.toml` with `speil configuration`, as the init container does.
pub fn configure(node: &Node, s: &Speil, registry: &str) -> Result<()> {
    crate::netns::configure_target(node, &s.mirror_url(), registry)
}

/// Waits until speil `s` answers 200 for `HEAD` of the image's tag (the tag is findable
/// through the DHT).
pub fn wait_findable(s: &Speil, image: &TestImage, registry: &str, within: Duration) -> Result<()> {
    let path = format!(
        "/v2/{}/manifests/{}?ns={}",
        image.name,
        image.tag,
        registry.replace(':', "%3A")
    );
    let deadline = Instant::now() + within;
    loop {
        let r = s.request("HEAD", &path, &[])?;
        if r.status == 200 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{path} still {} on {} after {within:?}: {}",
                r.status,
                s.address,
                s.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where a node's speil says a digest came from: `local`, `peer <addr>`, or `upstream` when
/// speil answered 404 (containerd then fell back to the registry) or was not asked.
pub fn source_of(s: &Speil, digest: &str) -> String {
    let log = s.log_text();
    let mut source = "upstream".to_owned();
    for line in log.lines().filter(|l| l.contains(digest)) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let f = &v;
        if f["for_peer"] == true {
            // This node serving a peer, not its own containerd.
            continue;
        }
        match f["msg"].as_str() {
            Some("mirrored") if f["method"] == "GET" => {
                source = format!("peer {}", f["peer"].as_str().unwrap_or("?"));
            }
            Some("served") if f["method"] == "GET" => source = "local".to_owned(),
            _ => {}
        }
    }
    source
}

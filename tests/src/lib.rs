//! speil's test harness: real components on one machine.
//!
//! [`Harness::start`] brings up an upstream `docker-registry` and N containerd daemons, each
//! node on its own loopback address, with its own root, state, sockets and `config_path`
//! (`certs.d`). [`images`] builds deterministic OCI test images and [`Registry::push`] pushes
//! them with `skopeo`. Everything started is stopped by PID on drop, also when a test panics,
//! and mounts containerd left under a node's root are unmounted.
//!
//! [`netns`] builds the same kind of cluster inside network namespaces (IPv6-only and
//! dual-stack networks that never leave the machine).
//!
//! Tests call [`require_components`] first: when a component is missing the test is skipped
//! with a loud message, or fails when `CI=true`.
#![warn(missing_docs)]

pub mod block;
pub mod cluster;
pub mod containerd;
pub mod http;
pub mod images;
pub mod netns;
pub mod pod;
pub mod registry;
pub mod rogue;
pub mod sim;
pub mod speil;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

pub use block::AddressBlock;
pub use containerd::{Generation, Node};
pub use images::{PlatformImage, TestImage};
pub use registry::Registry;
pub use speil::{Build, Ports, Speil};

/// Generates one test per scenario for each cluster kind: `scenarios!([module => kind, …],
/// [scenario, …])` writes `module::scenario` tests that skip (or fail under `CI=true`) when a
/// component is missing, then run `scenario(kind)`. Each scenario is an
/// `async fn(ClusterKind) -> anyhow::Result<()>` of the test file, so one scenario runs on every
/// containerd generation and build without being copied.
#[macro_export]
macro_rules! scenarios {
    ([$($module:ident => $kind:expr),* $(,)?], $scenarios:tt) => {
        $( $crate::scenarios!(@one $module, $kind, $scenarios); )*
    };
    (@one $module:ident, $kind:expr, [$($scenario:ident),* $(,)?]) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() -> ::anyhow::Result<()> {
                    if !$crate::require_components() {
                        return Ok(());
                    }
                    super::$scenario($kind).await
                }
            )*
        }
    };
}

/// The binaries the real-component tests need.
pub const COMPONENTS: [&str; 4] = ["containerd", "docker-registry", "skopeo", "umount"];

/// The containerd namespace the CRI uses.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// Finds `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether the real components are available. When they are not: panics if `CI=true` (a
/// missing component is a failure there), else prints a loud message and returns `false`
/// so the test can return early.
pub fn require_components() -> bool {
    let mut missing: Vec<String> = COMPONENTS
        .iter()
        .filter(|c| which(c).is_none())
        .map(|c| format!("`{c}` not on PATH"))
        .collect();
    for generation in Generation::ALL {
        if let Err(e) = generation.binary() {
            missing.push(format!("{e:#}"));
        }
    }
    if !is_root() {
        missing.push("not running as root (containerd needs it)".into());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "real-component test needs containerd, docker-registry and skopeo as root: {} \
         (Debian: apt-get install containerd docker-registry skopeo runc)",
        missing.join(", ")
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}");
    }
    eprintln!("\n!!!!! SKIPPED: {msg} !!!!!\n");
    false
}

/// One upstream registry and N containerd nodes, stopped on drop.
pub struct Harness {
    /// The upstream registry.
    pub registry: Registry,
    /// The nodes, `nodes[i]` on `block.node_address(i)`.
    pub nodes: Vec<Node>,
    /// The loopback addresses reserved for this harness.
    pub block: AddressBlock,
    // Dropped last: removes the files after every process is gone.
    dir: tempfile::TempDir,
}

impl Harness {
    /// Starts a registry and `nodes` containerd daemons, in parallel, and waits until all
    /// answer.
    pub fn start(nodes: usize) -> Result<Harness> {
        Harness::start_generations(&vec![Generation::V1_6; nodes])
    }

    /// Starts a registry and one containerd per entry of `generations` (node `i` runs
    /// `generations[i]`), in parallel, and waits until all answer.
    pub fn start_generations(generations: &[Generation]) -> Result<Harness> {
        let block = AddressBlock::acquire()?;
        let dir = tempfile::Builder::new()
            .prefix("speil-h")
            .tempdir()
            .context("creating the harness directory")?;
        let mut registry = Registry::spawn(&dir.path().join("registry"))?;
        let mut started = Vec::new();
        for (i, generation) in generations.iter().enumerate() {
            let addr = block.node_address(i)?;
            started.push(Node::spawn_generation(
                &dir.path().join(format!("n{i}")),
                i,
                addr,
                *generation,
            )?);
        }
        if let Err(e) = registry.wait_ready(Duration::from_secs(10)) {
            if !registry.port_was_taken() {
                return Err(e);
            }
            drop(registry);
            registry = Registry::start(&dir.path().join("registry"), Duration::from_secs(10))?;
        }
        for node in &mut started {
            node.wait_ready(Duration::from_secs(10))?;
        }
        Ok(Harness {
            registry,
            nodes: started,
            block,
            dir,
        })
    }

    /// The harness's temporary directory (removed on drop).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// Raises this process's soft open-file limit to at least `want` (up to the hard limit).
pub fn raise_fd_limit(want: u64) -> Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    if now.current.is_some_and(|c| c >= want) || now.current.is_none() {
        return Ok(());
    }
    let target = now.maximum.map_or(want, |m| want.min(m));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: now.maximum,
        },
    )?;
    Ok(())
}

//! A containerd daemon as one simulated node.

use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use speil_containerd::{Config, Containerd};
use speil_driver::tokio::Tokio;
use speil_driver::{Runtime, RuntimeExt as _};

use crate::CRI_NAMESPACE;

/// A containerd generation the harness can run: Debian's 1.6 (on `PATH`) and the two 2.x
/// builds in `../shared/tools/containerd/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Generation {
    /// containerd 1.6 from Debian (`containerd` on `PATH`), config `version = 2`.
    V1_6,
    /// containerd v2.3.4, config `version = 3`, no live configuration source.
    V2_3,
    /// containerd 2.4 development build, config `version = 3`, Introspection exports.
    V2_4,
}

impl Generation {
    /// Every generation, oldest first.
    pub const ALL: [Generation; 3] = [Generation::V1_6, Generation::V2_3, Generation::V2_4];

    /// A short name for test output.
    pub fn name(self) -> &'static str {
        match self {
            Generation::V1_6 => "containerd 1.6",
            Generation::V2_3 => "containerd 2.3.4",
            Generation::V2_4 => "containerd 2.4-dev",
        }
    }

    /// Whether the daemon reads `version = 3` configs (containerd 2.x).
    pub fn is_v2(self) -> bool {
        !matches!(self, Generation::V1_6)
    }

    /// The daemon binary: `containerd` on `PATH` for 1.6; for 2.x `$SPEIL_CONTAINERD_2_3` /
    /// `$SPEIL_CONTAINERD_2_4`, else `<shared>/tools/containerd/<version>/containerd`, where
    /// `<shared>` is `$SPEIL_SHARED_DIR` or the `shared` directory beside the checkout.
    pub fn binary(self) -> Result<PathBuf> {
        let (var, sub) = match self {
            Generation::V1_6 => {
                return crate::which("containerd").context("containerd 1.6 is not on PATH");
            }
            Generation::V2_3 => ("SPEIL_CONTAINERD_2_3", "v2.3.4"),
            Generation::V2_4 => ("SPEIL_CONTAINERD_2_4", "v2.4.0-dev"),
        };
        let path = match std::env::var_os(var) {
            Some(p) => PathBuf::from(p),
            None => shared_dir()
                .join("tools/containerd")
                .join(sub)
                .join("containerd"),
        };
        if !path.is_file() {
            bail!(
                "{} binary not found at {} (set {var} or put the shared directory beside the checkout)",
                self.name(),
                path.display()
            );
        }
        Ok(path)
    }
}

/// The read-only `shared` directory: `$SPEIL_SHARED_DIR`, else `../shared` beside the checkout.
pub fn shared_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SPEIL_SHARED_DIR") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// A containerd daemon with its own directories, sockets and loopback address.
pub struct Node {
    /// The node's number in its harness.
    pub index: usize,
    /// The node's address (a loopback address, or its address in its namespace).
    pub address: IpAddr,
    /// Which containerd runs on this node.
    pub generation: Generation,
    /// The network namespace its processes run in (`None`: this one).
    pub netns: Option<String>,
    dir: PathBuf,
    binary: PathBuf,
    child: Option<Child>,
}

/// The configuration a node's containerd starts with: its own root, state, sockets and
/// `config_path` (`certs.d`), in the generation's config version and plugin keys.
pub fn config_toml(dir: &Path, address: IpAddr, generation: Generation) -> String {
    let d = dir.display();
    let (version, cri) = if generation.is_v2() {
        (
            3,
            format!(
                r#"  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{d}/cni/bin"]
    conf_dir = "{d}/cni/conf"
  # NRI listens on one fixed socket (/var/run/nri/nri.sock) per machine; several nodes on
  # one machine cannot share it.
  [plugins."io.containerd.nri.v1.nri"]
    disable = true
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    discard_unpacked_layers = false
    [plugins."io.containerd.cri.v1.images".registry]
      config_path = "{d}/certs.d"
"#
            ),
        )
    } else {
        (
            2,
            format!(
                r#"    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{d}/cni/bin"
      conf_dir = "{d}/cni/conf"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "{d}/certs.d"
"#
            ),
        )
    };
    format!(
        r#"version = {version}
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{d}/c.sock"

[ttrpc]
  address = "{d}/c.sock.ttrpc"

[debug]
  level = "warn"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "{address}"
    stream_server_port = "0"
{cri}"#
    )
}

impl Node {
    /// Writes the node's configuration under `dir` and starts containerd. Call
    /// [`Node::wait_ready`] next.
    pub fn spawn(dir: &Path, index: usize, address: impl Into<IpAddr>) -> Result<Node> {
        Node::spawn_generation(dir, index, address, Generation::V1_6)
    }

    /// [`Node::spawn`] with the given containerd generation.
    pub fn spawn_generation(
        dir: &Path,
        index: usize,
        address: impl Into<IpAddr>,
        generation: Generation,
    ) -> Result<Node> {
        Node::spawn_in(dir, index, address.into(), generation, None)
    }

    /// [`Node::spawn_generation`] with containerd running inside network namespace `netns`
    /// (see [`crate::netns`]); its socket is still a file the test reaches.
    pub fn spawn_in(
        dir: &Path,
        index: usize,
        address: IpAddr,
        generation: Generation,
        netns: Option<&str>,
    ) -> Result<Node> {
        let binary = generation.binary()?;
        for sub in ["root", "state", "opt", "cni/bin", "cni/conf", "certs.d"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        std::fs::write(
            dir.join("config.toml"),
            config_toml(dir, address, generation),
        )?;
        let mut node = Node {
            index,
            address,
            generation,
            netns: netns.map(str::to_owned),
            dir: dir.to_path_buf(),
            binary,
            child: None,
        };
        node.launch()?;
        Ok(node)
    }

    fn launch(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))?;
        let child = crate::netns::command(self.netns.as_deref(), &self.binary)
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the gRPC socket accepts connections.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.as_mut() {
                None => bail!("node {} is not running", self.index),
                Some(child) => {
                    if let Some(status) = child.try_wait()? {
                        self.child = None;
                        bail!(
                            "containerd of node {} exited with {status}: {}",
                            self.index,
                            self.log_tail()
                        );
                    }
                }
            }
            if UnixStream::connect(self.socket()).is_ok() {
                let left = deadline.saturating_duration_since(Instant::now());
                return probe_cri(self.adapter_config(false), left)
                    .with_context(|| format!("node {}: {}", self.index, self.log_tail()));
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd of node {} not ready after {timeout:?}: {}",
                    self.index,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts containerd again after [`Node::kill`], with the same configuration and
    /// directories, and waits until it answers.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("node {} is still running", self.index);
        }
        self.launch()?;
        self.wait_ready(Duration::from_secs(10))
    }

    /// Kills containerd (SIGKILL), reaps it and unmounts what it left under the node.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait().context("reaping containerd")?;
        }
        unmount_under(&self.dir)
    }

    /// containerd's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// containerd's configuration file (what it was started with `--config`).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// The node's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("c.sock")
    }

    /// containerd's root directory.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The content directory (`<root>/io.containerd.content.v1.content`).
    pub fn content_path(&self) -> PathBuf {
        self.root().join("io.containerd.content.v1.content")
    }

    /// The CRI registry `config_path` (`certs.d`).
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs.d")
    }

    /// The last few KiB of containerd's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let start = log.len().saturating_sub(4096);
        let start = (start..log.len())
            .find(|i| log.is_char_boundary(*i))
            .unwrap_or(log.len());
        log[start..].to_owned()
    }

    /// The adapter's configuration for this node, in the CRI namespace; with the content
    /// directory when `direct_files`, else every read goes through the content API.
    pub fn adapter_config(&self, direct_files: bool) -> Config {
        Config {
            socket: self.socket(),
            namespace: CRI_NAMESPACE.to_owned(),
            content_path: direct_files.then(|| self.content_path()),
        }
    }

    /// A client in the CRI namespace on tokio (see [`Node::adapter_config`]).
    pub async fn client(&self, direct_files: bool) -> Result<Containerd<Tokio>> {
        self.client_on(Tokio, direct_files).await
    }

    /// A client in the CRI namespace on `rt` (see [`Node::adapter_config`]).
    pub async fn client_on<R: Runtime>(&self, rt: R, direct_files: bool) -> Result<Containerd<R>> {
        let client = Containerd::connect(rt, &self.adapter_config(direct_files)).await?;
        if direct_files && client.content_path().is_none() {
            bail!(
                "content directory {} is not readable",
                self.content_path().display()
            );
        }
        Ok(client)
    }

    /// Pulls `image` through the CRI, as kubelet does (retries while the CRI plugin is still
    /// initialising). Returns the image reference the CRI reports.
    pub async fn cri_pull(&self, image: &str) -> Result<String> {
        self.cri_pull_on(Tokio, image).await
    }

    /// [`Node::cri_pull`] with a client on `rt`.
    pub async fn cri_pull_on<R: Runtime>(&self, rt: R, image: &str) -> Result<String> {
        let client = self.client_on(rt.clone(), false).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match client.cri_pull(image).await {
                Ok(r) => return Ok(r),
                Err(e)
                    if e.to_string().contains("not initialized") && Instant::now() < deadline =>
                {
                    rt.sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "CRI pull of {image} on node {}: {}",
                            self.index,
                            self.log_tail()
                        )
                    });
                }
            }
        }
    }

    /// Writes `certs.d/<registry>/hosts.toml` so that pulls from `registry` (`host:port`) try
    /// `mirror` (`http://addr:port`) first, then the registry itself over plain HTTP.
    pub fn write_hosts_toml(&self, registry: &str, mirror: &str) -> Result<PathBuf> {
        let dir = self.certs_dir().join(registry);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("hosts.toml");
        let body = format!(
            "server = \"http://{registry}\"\n\n\
             [host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
        std::fs::write(&path, body)?;
        Ok(path)
    }
}

/// Waits until the CRI plugin answers `Status` (it initialises after the socket opens).
///
/// Runs on its own thread and runtime so that it can be called from sync and async code.
fn probe_cri(config: Config, timeout: Duration) -> Result<()> {
    let probe = std::thread::spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let deadline = Instant::now() + timeout;
            let client = Containerd::connect(Tokio, &config).await?;
            loop {
                match client.cri_status().await {
                    Ok(_) => return Ok(()),
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => return Err(e).context("CRI plugin not ready"),
                }
            }
        })
    });
    probe
        .join()
        .map_err(|_| anyhow::anyhow!("CRI probe thread panicked"))?
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("stopping node {}: {e:#}", self.index);
        }
    }
}

/// Mount points under `dir`, deepest first, from `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    out
}

fn unescape_mount(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(octal) = std::str::from_utf8(&bytes[i + 1..i + 4])
            && let Ok(v) = u8::from_str_radix(octal, 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts everything mounted under `dir`.
pub fn unmount_under(dir: &Path) -> Result<()> {
    for m in mounts_under(dir) {
        let status = Command::new("umount").arg(&m).status();
        if !matches!(status, Ok(s) if s.success()) {
            let lazy = Command::new("umount").arg("-l").arg(&m).status()?;
            if !lazy.success() {
                bail!("cannot unmount {}", m.display());
            }
        }
    }
    Ok(())
}

//! A `speil registry` process for one harness node, stopped by PID on drop.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::containerd::Node;
use crate::http;

/// Which build of speil a node runs: the same program on two runtimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Build {
    /// `speil` (tokio).
    #[default]
    Tokio,
    /// `speil-smol` (smol / async-io).
    Smol,
}

impl Build {
    /// Both builds.
    pub const ALL: [Build; 2] = [Build::Tokio, Build::Smol];

    /// The binary's name.
    pub fn program(self) -> &'static str {
        match self {
            Build::Tokio => "speil",
            Build::Smol => "speil-smol",
        }
    }

    /// What `version` says the runtime is.
    pub fn runtime(self) -> &'static str {
        match self {
            Build::Tokio => "tokio",
            Build::Smol => "smol",
        }
    }

    /// Finds the binary: `$SPEIL_BIN` / `$SPEIL_SMOL_BIN`, else next to the test
    /// executable's directory (`target/<profile>/<program>`), which `cargo build --workspace`
    /// builds.
    pub fn binary(self) -> Result<PathBuf> {
        let var = match self {
            Build::Tokio => "SPEIL_BIN",
            Build::Smol => "SPEIL_SMOL_BIN",
        };
        if let Some(p) = std::env::var_os(var) {
            return Ok(PathBuf::from(p));
        }
        let exe = std::env::current_exe()?;
        let mut dir = exe.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            let candidate = d.join(self.program());
            if candidate.is_file() {
                return Ok(candidate);
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        bail!(
            "the {} binary was not found next to the tests: run `cargo build -p {}` first or set {var}",
            self.program(),
            self.program()
        )
    }
}

/// Finds the `speil` binary (the tokio build; see [`Build::binary`]).
pub fn binary() -> Result<PathBuf> {
    Build::Tokio.binary()
}

/// The ports every speil of one harness uses (peers' registries share the port, as on a
/// cluster). Derived from the address block, so parallel harnesses never collide.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// `--registry-addr` port.
    pub registry: u16,
    /// `--router-addr` port.
    pub router: u16,
    /// `--metrics-addr` port.
    pub metrics: u16,
    /// `--http-bootstrap-addr` port.
    pub bootstrap: u16,
}

impl Ports {
    /// The ports of the harness with address block `block`.
    pub fn for_block(block: u8) -> Ports {
        let base = 30_000 + u16::from(block) * 4;
        Ports {
            registry: base,
            router: base + 1,
            metrics: base + 2,
            bootstrap: base + 3,
        }
    }
}

/// A running `speil registry`.
pub struct Speil {
    /// The build it runs.
    pub build: Build,
    /// The node's address.
    pub address: IpAddr,
    /// The ports.
    pub ports: Ports,
    /// The network namespace it runs in (its node's; `None`: this one).
    pub netns: Option<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Speil {
    /// Starts `speil registry` for `node`, bootstrapping over HTTP from `bootstrap_from`
    /// (a node address; the node's own address for the first one). `extra` flags are appended.
    pub fn start(
        node: &Node,
        ports: Ports,
        bootstrap_from: impl Into<IpAddr>,
        extra: &[String],
    ) -> Result<Speil> {
        Speil::start_build(Build::Tokio, node, ports, bootstrap_from, extra)
    }

    /// [`Speil::start`] with the given build.
    pub fn start_build(
        build: Build,
        node: &Node,
        ports: Ports,
        bootstrap_from: impl Into<IpAddr>,
        extra: &[String],
    ) -> Result<Speil> {
        Speil::start_binary(build, &build.binary()?, node, ports, bootstrap_from, extra)
    }

    /// [`Speil::start_build`] with the build's binary at `binary` (e.g. another commit's).
    pub fn start_binary(
        build: Build,
        binary: &Path,
        node: &Node,
        ports: Ports,
        bootstrap_from: impl Into<IpAddr>,
        extra: &[String],
    ) -> Result<Speil> {
        let a = node.address;
        let at = |port: u16| SocketAddr::new(a, port);
        let mut flags = vec![
            format!("--registry-addr={}", at(ports.registry)),
            format!("--router-addr={}", at(ports.router)),
            format!("--metrics-addr={}", at(ports.metrics)),
            "--bootstrap-kind=http".to_owned(),
            format!("--http-bootstrap-addr={}", at(ports.bootstrap)),
            format!(
                "--http-bootstrap-url=http://{}/id",
                SocketAddr::new(bootstrap_from.into(), ports.bootstrap)
            ),
        ];
        flags.extend_from_slice(extra);
        Speil::start_binary_with(build, binary, node, ports, &flags)
    }

    /// Starts `speil registry` for `node` (in its namespace, if it has one) with the listen
    /// and bootstrap `flags` given; the containerd, data-dir and log flags are added. `ports`
    /// are the ports those flags listen on (the test reaches them at the node's address).
    pub fn start_with(node: &Node, ports: Ports, flags: &[String]) -> Result<Speil> {
        Speil::start_build_with(Build::Tokio, node, ports, flags)
    }

    /// [`Speil::start_with`] with the given build.
    pub fn start_build_with(
        build: Build,
        node: &Node,
        ports: Ports,
        flags: &[String],
    ) -> Result<Speil> {
        Speil::start_binary_with(build, &build.binary()?, node, ports, flags)
    }

    fn start_binary_with(
        build: Build,
        binary: &Path,
        node: &Node,
        ports: Ports,
        flags: &[String],
    ) -> Result<Speil> {
        let dir = node.dir().join("speil");
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("speil.log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = crate::netns::command(node.netns.as_deref(), binary);
        cmd.arg("registry")
            .arg(format!("--containerd-sock={}", node.socket().display()))
            .arg(format!(
                "--containerd-content-path={}",
                node.content_path().display()
            ))
            .arg(format!(
                "--containerd-registry-config-path={}",
                node.certs_dir().display()
            ))
            .arg(format!("--data-dir={}", dir.display()))
            .arg("--log-level=INFO")
            .args(flags)
            .env_remove("REGISTRY_ADDR")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd.spawn().context("starting speil")?;
        Ok(Speil {
            build,
            address: node.address,
            ports,
            netns: node.netns.clone(),
            log,
            child: Some(child),
        })
    }

    /// An HTTP request to this speil's registry port (from inside its namespace, if any).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<http::Response> {
        crate::netns::request(
            self.netns.as_deref(),
            self.registry_addr(),
            method,
            path,
            headers,
        )
    }

    /// The registry address (`<node>:<registry port>`).
    pub fn registry_addr(&self) -> SocketAddr {
        SocketAddr::from((self.address, self.ports.registry))
    }

    /// The metrics address.
    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::from((self.address, self.ports.metrics))
    }

    /// The mirror URL containerd should be pointed at.
    pub fn mirror_url(&self) -> String {
        format!("http://{}", self.registry_addr())
    }

    /// Waits until `GET /livez` answers (the process serves).
    pub fn wait_serving(&mut self, timeout: Duration) -> Result<()> {
        self.wait_for("/livez", timeout)
    }

    /// Waits until `GET /readyz` answers 200 (router has peers, store connected).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        self.wait_for("/readyz", timeout)
    }

    fn wait_for(&mut self, path: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "speil on {} exited with {status}: {}",
                    self.address,
                    self.log_tail()
                );
            }
            if let Ok(r) = self.request("GET", path, &[])
                && r.status == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "speil on {} not answering {path} 200 after {timeout:?}: {}",
                    self.address,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The text of `/metrics`.
    pub fn metrics(&self) -> Result<String> {
        let body = self.get_metrics_port("/metrics")?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `GET path` on the metrics port (`/metrics`, `/debug/web/…`), failing unless 200.
    pub fn get_metrics_port(&self, path: &str) -> Result<Vec<u8>> {
        let r =
            crate::netns::request(self.netns.as_deref(), self.metrics_addr(), "GET", path, &[])?;
        if r.status != 200 {
            bail!(
                "GET {path} on {}: status {}: {}",
                self.metrics_addr(),
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
        Ok(r.body)
    }

    /// The value of the metric line starting with `prefix` (name and labels), or 0.
    pub fn metric(&self, prefix: &str) -> Result<f64> {
        Ok(self
            .metrics()?
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The names of the process's threads (`/proc/<pid>/task/*/comm`; the kernel keeps 15
    /// bytes of each).
    pub fn thread_names(&self) -> Result<Vec<String>> {
        let pid = self.pid().context("speil is not running")?;
        let mut names = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let comm = std::fs::read_to_string(task?.path().join("comm"))?;
            names.push(comm.trim_end().to_owned());
        }
        names.sort();
        Ok(names)
    }

    /// Checks that the process runs on its build's runtime only: the tokio build has tokio
    /// workers; the smol build has its executor threads and no tokio worker at all.
    pub fn check_runtime_threads(&self) -> Result<()> {
        let names = self.thread_names()?;
        let tokio = names.iter().filter(|n| n.starts_with("tokio")).count();
        let smol = names
            .iter()
            .filter(|n| n.starts_with("speil-smol-"))
            .count();
        match self.build {
            Build::Tokio if tokio == 0 => bail!("the tokio build has no tokio worker: {names:?}"),
            Build::Smol if tokio > 0 || smol == 0 => {
                bail!(
                    "the smol build must run smol executor threads and no tokio worker: {names:?}"
                )
            }
            _ => Ok(()),
        }
    }

    /// Checks that the process raised its open-file limit to the hard limit (SPEC.md §9).
    pub fn check_fd_limit(&self) -> Result<()> {
        let pid = self.pid().context("speil is not running")?;
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .context("no open-file limit in /proc/<pid>/limits")?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "Max open files <soft> <hard> files"
        let (soft, hard) = (fields[3], fields[4]);
        if soft != hard {
            bail!("open-file limit not raised: soft {soft}, hard {hard}");
        }
        Ok(())
    }

    /// The whole log (JSON lines).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit; returns its status code.
    pub fn terminate(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            bail!("speil is not running");
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("speil did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Speil {
    fn drop(&mut self) {
        self.kill();
    }
}

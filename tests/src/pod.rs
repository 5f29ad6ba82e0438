//! Running the containers of a rendered Helm chart (speil's or Spegel's) against the real
//! binary, the way a kubelet would.
//!
//! [`Render`] reads the manifests; [`Render::container`] gives a container's args, env and
//! volume mounts; [`Container::resolve`] expands `$(VAR)` from the env (the downward-API values
//! given by the test) and replaces each mount path in the args by where the test keeps that
//! volume. [`Sandbox`] is a pod-like place to run them: a network namespace of the test's own
//! with the node's IP on its loopback (so fixed ports and `$(NODE_IP)` are real and nothing
//! leaves the machine; cluster names resolve through `/etc/netns/<ns>/hosts`), a PID namespace
//! of its own (the host's containerd process is not visible, as in a pod without `hostPID`),
//! and `/etc/containerd` hidden or replaced by a bind mount, as the chart's volumes say.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_yaml::Value;

/// Whether the tools a [`Sandbox`] needs are here: when one is missing, panics if `CI=true`,
/// else prints a loud message and returns `false`.
pub fn require_sandbox() -> bool {
    for tool in ["ip", "unshare", "curl", "mount"] {
        if crate::which(tool).is_none() {
            let msg = format!("`{tool}` not on PATH (Debian: iproute2, util-linux, curl, mount)");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
            eprintln!("\n!!!!! SKIPPED: {msg} !!!!!\n");
            return false;
        }
    }
    true
}

/// The manifests of one render.
#[derive(Debug, Clone)]
pub struct Render {
    /// Every non-empty document, in order.
    pub docs: Vec<Value>,
}

/// Where a volume comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A `hostPath` volume.
    HostPath(String),
    /// A `secret` volume (its name).
    Secret(String),
}

/// One container of a render.
#[derive(Debug, Clone)]
pub struct Container {
    /// Its args, as rendered.
    pub args: Vec<String>,
    /// Its env: name and where the value comes from.
    pub env: Vec<(String, EnvSource)>,
    /// Its mounts: mount path, volume name and source.
    pub mounts: Vec<Mount>,
}

/// One volume mount of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where the container sees it.
    pub path: String,
    /// The volume's name.
    pub volume: String,
    /// Where the volume comes from.
    pub source: Source,
}

/// Where an env value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    /// A literal `value`.
    Value(String),
    /// `fieldRef: status.hostIP`.
    HostIp,
    /// `resourceFieldRef: limits.memory` (in bytes).
    MemoryLimit(u64),
}

/// A container ready to run: args with env and mounts resolved, and the env.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The args.
    pub args: Vec<String>,
    /// The env.
    pub env: Vec<(String, String)>,
}

fn memory_bytes(q: &str) -> Result<u64> {
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (n, unit) = q.split_at(split);
    let n: u64 = n.parse().with_context(|| format!("quantity {q:?}"))?;
    let m = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => bail!("unit {other:?} of {q:?}"),
    };
    Ok(n * m)
}

impl Render {
    /// Parses a multi-document YAML text.
    pub fn parse(text: &str) -> Result<Render> {
        let mut docs = Vec::new();
        for d in serde_yaml::Deserializer::from_str(text) {
            let v = Value::deserialize(d).context("a document is not YAML")?;
            if !v.is_null() {
                docs.push(v);
            }
        }
        Ok(Render { docs })
    }

    /// Reads and parses a file.
    pub fn from_file(path: &Path) -> Result<Render> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Render::parse(&text)
    }

    /// The document of `kind` named `name`.
    pub fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
    }

    /// Every document of `kind`.
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    /// `data[key]` of the Secret `name`, decoded.
    pub fn secret(&self, name: &str, key: &str) -> Result<Vec<u8>> {
        use base64::Engine as _;
        let doc = self
            .find("Secret", name)
            .with_context(|| format!("no Secret {name}"))?;
        let data = doc["data"][key]
            .as_str()
            .with_context(|| format!("Secret {name} has no data.{key}"))?;
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .with_context(|| format!("Secret {name} data.{key} is not base64"))
    }

    /// The pod spec of the workload `kind`/`name` (a Pod, DaemonSet, Deployment, …).
    pub fn pod_spec(&self, kind: &str, name: &str) -> Result<&Value> {
        let doc = self
            .find(kind, name)
            .with_context(|| format!("{kind}/{name} is not in the render"))?;
        Ok(if kind == "Pod" {
            &doc["spec"]
        } else {
            &doc["spec"]["template"]["spec"]
        })
    }

    /// The container `container` of the workload `kind`/`name` (init containers included).
    pub fn container(&self, kind: &str, name: &str, container: &str) -> Result<Container> {
        let spec = self.pod_spec(kind, name)?;
        let c = ["initContainers", "containers"]
            .iter()
            .filter_map(|k| spec[*k].as_sequence())
            .flatten()
            .find(|c| c["name"] == container)
            .with_context(|| format!("no container {container} in {kind}/{name}"))?;
        let mut volumes = BTreeMap::new();
        for v in spec["volumes"].as_sequence().into_iter().flatten() {
            let vname = v["name"].as_str().context("a volume without a name")?;
            let source = if let Some(p) = v["hostPath"]["path"].as_str() {
                Source::HostPath(p.to_owned())
            } else if let Some(s) = v["secret"]["secretName"].as_str() {
                Source::Secret(s.to_owned())
            } else {
                bail!("volume {vname} is neither a hostPath nor a secret: {v:?}")
            };
            volumes.insert(vname.to_owned(), source);
        }
        let strings = |v: &Value| -> Result<Vec<String>> {
            v.as_sequence()
                .into_iter()
                .flatten()
                .map(|a| match a {
                    Value::String(s) => Ok(s.clone()),
                    other => bail!("arg {other:?} is not a string"),
                })
                .collect()
        };
        let limit = c["resources"]["limits"]["memory"].as_str();
        let mut env = Vec::new();
        for e in c["env"].as_sequence().into_iter().flatten() {
            let name = e["name"].as_str().context("env without a name")?.to_owned();
            let from = &e["valueFrom"];
            let source = if let Some(v) = e["value"].as_str() {
                EnvSource::Value(v.to_owned())
            } else if from["fieldRef"]["fieldPath"] == "status.hostIP" {
                EnvSource::HostIp
            } else if from["resourceFieldRef"]["resource"] == "limits.memory" {
                EnvSource::MemoryLimit(memory_bytes(limit.context("no memory limit")?)?)
            } else {
                bail!("env {name}: source {from:?} is not one the harness knows")
            };
            env.push((name, source));
        }
        let mut mounts = Vec::new();
        for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
            let volume = m["name"].as_str().context("a mount without a name")?;
            let source = volumes
                .get(volume)
                .with_context(|| format!("volume {volume} is not declared"))?;
            let path = m["mountPath"].as_str().context("a mount without a path")?;
            mounts.push(Mount {
                path: path.to_owned(),
                volume: volume.to_owned(),
                source: source.clone(),
            });
        }
        Ok(Container {
            args: strings(&c["args"])?,
            env,
            mounts,
        })
    }
}

impl Container {
    /// The args as the kubelet runs them: `$(VAR)` expanded from the env, and every mount
    /// path replaced (longest first) by where `places` (volume name → directory or file of
    /// the test) keeps that volume. A mount of a volume `places` does not name is an error.
    pub fn resolve(&self, node_ip: IpAddr, places: &BTreeMap<String, PathBuf>) -> Result<Resolved> {
        let env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(name, source)| {
                let value = match source {
                    EnvSource::Value(v) => v.clone(),
                    EnvSource::HostIp => node_ip.to_string(),
                    EnvSource::MemoryLimit(b) => b.to_string(),
                };
                (name.clone(), value)
            })
            .collect();
        let mut mounts: Vec<(&str, String)> = Vec::new();
        for m in &self.mounts {
            let place = places.get(&m.volume).with_context(|| {
                format!(
                    "volume {} (at {}) has no place in this test",
                    m.volume, m.path
                )
            })?;
            mounts.push((m.path.as_str(), place.display().to_string()));
        }
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let args = self
            .args
            .iter()
            .map(|a| {
                let mut a = a.clone();
                for (name, value) in &env {
                    a = a.replace(&format!("$({name})"), value);
                }
                for (path, place) in &mounts {
                    let Some(i) = a.find(path) else { continue };
                    let tail = &a[i + path.len()..];
                    if tail.is_empty() || tail.starts_with('/') {
                        a = format!("{}{place}{tail}", &a[..i]);
                        break;
                    }
                }
                a
            })
            .collect();
        Ok(Resolved { args, env })
    }

    /// The volume mounted at `path`, if any.
    pub fn mounted_at(&self, path: &str) -> Option<&Mount> {
        self.mounts.iter().find(|m| m.path == path)
    }
}

/// A pod's network: a namespace with the node's address, made by this sandbox (and removed
/// with it) or by a [`crate::netns::Lan`].
#[derive(Debug)]
pub struct Sandbox {
    name: String,
    /// The node's IP inside the namespace.
    pub ip: IpAddr,
    /// The namespace, when this sandbox made it (dropping it deletes it).
    _own: Option<crate::netns::Netns>,
}

impl Sandbox {
    /// Creates the namespace `speil-<tag>-<pid>` with `ip` on its loopback; `names` resolve
    /// to `ip` in it (with and without a trailing dot), and DNS asks only the namespace's own
    /// loopback.
    pub fn new(tag: &str, ip: IpAddr, names: &[String]) -> Result<Sandbox> {
        let name = format!("speil-{tag}-{}", std::process::id());
        let ns = crate::netns::Netns::create(&name)?;
        let prefix = if ip.is_ipv4() { "32" } else { "128" };
        let cidr = format!("{ip}/{prefix}");
        let mut add = vec!["addr", "add", cidr.as_str(), "dev", "lo"];
        if ip.is_ipv6() {
            add.push("nodad");
        }
        ns.ip(&add)?;
        let mut hosts = "127.0.0.1 localhost\n::1 localhost\n".to_owned();
        for n in names {
            hosts.push_str(&format!("{ip} {n} {}\n", n.trim_end_matches('.')));
        }
        ns.write_hosts(&hosts)?;
        std::fs::write(
            PathBuf::from("/etc/netns").join(&name).join("resolv.conf"),
            "nameserver 127.0.0.1\n",
        )?;
        Ok(Sandbox {
            name,
            ip,
            _own: Some(ns),
        })
    }

    /// A sandbox in a namespace someone else made and removes (a host of a
    /// [`crate::netns::Lan`]), where the node has `ip`.
    pub fn existing(name: &str, ip: IpAddr) -> Sandbox {
        Sandbox {
            name: name.to_owned(),
            ip,
            _own: None,
        }
    }

    /// `program args` as a container of a pod: in the namespace, in its own PID namespace,
    /// with `/etc/containerd` replaced by `etc_containerd` (read-only) or, when `None`, by an
    /// empty read-only directory.
    pub fn command(&self, program: &Path, r: &Resolved, etc_containerd: Option<&Path>) -> Command {
        let mount = match etc_containerd {
            Some(dir) => format!(
                "mount --bind -o ro '{}' /etc/containerd",
                dir.display().to_string().replace('\'', "")
            ),
            None => "mount -t tmpfs -o ro,mode=0755 none /etc/containerd".to_owned(),
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .args(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"])
            .args(["sh", "-c", &format!("{mount} && exec \"$@\""), "sh"])
            .arg(program)
            .args(&r.args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(r.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// An HTTP GET from inside the namespace (curl); the status and the body.
    pub fn get(&self, url: &str) -> Result<(u16, Vec<u8>)> {
        let body = tempfile::NamedTempFile::new()?;
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args([
                "curl",
                "-sS",
                "-g",
                "--noproxy",
                "*",
                "--max-time",
                "5",
                "-o",
            ])
            .arg(body.path())
            .args(["-w", "%{http_code}", url])
            .output()
            .context("running curl")?;
        let code = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        Ok((code, std::fs::read(body.path())?))
    }

    /// `http://<ip>` (bracketed for IPv6).
    pub fn base_url(&self) -> String {
        match self.ip {
            IpAddr::V4(ip) => format!("http://{ip}"),
            IpAddr::V6(ip) => format!("http://[{ip}]"),
        }
    }
}

/// A child stopped by PID on drop, its output in a log file. With `--kill-child`, `unshare`
/// takes its PID namespace down with it.
#[derive(Debug)]
pub struct Running {
    child: Child,
    /// The log file (stdout and stderr).
    pub log: PathBuf,
}

impl Running {
    /// Starts `cmd` with its output in `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Result<Running> {
        let file = std::fs::File::create(&log)?;
        cmd.stdout(file.try_clone()?).stderr(file);
        let child = cmd.spawn().with_context(|| format!("{cmd:?}"))?;
        Ok(Running { child, log })
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status when it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `done` every 50 ms until it is true; fails after `within` with `what` and the logs.
pub fn wait_for(
    what: &str,
    within: Duration,
    mut done: impl FnMut() -> Result<bool>,
    logs: &[PathBuf],
) -> Result<()> {
    let deadline = Instant::now() + within;
    while !done()? {
        if Instant::now() > deadline {
            let text: Vec<String> = logs
                .iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect();
            bail!("{what}: not within {within:?}\n{}", text.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Every entry under `dir` (relative path → bytes, empty for a directory, and mode).
pub fn tree(dir: &Path) -> Result<BTreeMap<PathBuf, (Vec<u8>, u32)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let meta = e.metadata()?;
            let rel = e.path().strip_prefix(dir)?.to_owned();
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                out.insert(rel, (Vec::new(), mode));
                stack.push(e.path());
            } else {
                out.insert(rel, (std::fs::read(e.path())?, mode));
            }
        }
    }
    Ok(out)
}

/// What one run of a chart's containers on a node needs.
pub struct Lifecycle<'a> {
    /// The render whose containers run.
    pub render: &'a Render,
    /// The node (its containerd already holds `image`).
    pub node: &'a crate::Node,
    /// The upstream registry (`host:port`) the image came from.
    pub upstream: &'a str,
    /// An image the node holds.
    pub image: &'a crate::TestImage,
    /// The value of `status.hostIP`.
    pub node_ip: IpAddr,
    /// Names the network namespace.
    pub tag: &'a str,
    /// A scratch directory (data dir, secrets, logs).
    pub work: &'a Path,
    /// Secrets the render refers to but does not hold: name → key → bytes.
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

/// What a [`lifecycle`] saw.
#[derive(Debug)]
pub struct Outcome {
    /// certs.d after `configuration` (relative path → text).
    pub configured: BTreeMap<PathBuf, String>,
    /// What the registry container logged.
    pub registry_log: String,
}

fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    args.iter().find_map(|a| a.strip_prefix(prefix.as_str()))
}

fn port_of(args: &[String], flag: &str) -> Result<u16> {
    let v = flag_value(args, flag).with_context(|| format!("no {flag}= in {args:?}"))?;
    let port = v.rsplit(':').next().unwrap_or(v);
    port.parse().with_context(|| format!("{flag}={v}"))
}

/// The workload of `kind` whose pod has a container `container`.
fn workload_with<'r>(render: &'r Render, kind: &str, container: &str) -> Result<&'r str> {
    for doc in render.all(kind) {
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let spec = render.pod_spec(kind, name)?;
        let has = ["initContainers", "containers"]
            .iter()
            .filter_map(|k| spec[*k].as_sequence())
            .flatten()
            .any(|c| c["name"] == container);
        if has {
            return Ok(name);
        }
    }
    bail!("no {kind} has a container {container}")
}

/// A node's pods as a render describes them: the DaemonSet's `configuration` and `registry`
/// containers and the uninstall hook's `cleanup` and `cleanup-wait`, resolved for one node
/// (its IP, and where its volumes live in this test).
#[derive(Debug)]
pub struct NodePods {
    init: Container,
    registry: Container,
    cleanup: Container,
    init_r: Resolved,
    registry_r: Resolved,
    cleanup_r: Resolved,
    wait_r: Resolved,
    places: BTreeMap<String, PathBuf>,
    work: PathBuf,
}

impl NodePods {
    /// Resolves the render's containers for `node` at `node_ip`. Volumes: containerd's socket,
    /// content, `certs.d` and config directory are the node's; a `*-data` volume is a
    /// directory under `work`; a secret volume is a directory under `work` holding the
    /// Secret's keys, from `secrets` or else from the render.
    pub fn new(
        render: &Render,
        node: &crate::Node,
        node_ip: IpAddr,
        work: &Path,
        secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    ) -> Result<NodePods> {
        let agent = workload_with(render, "DaemonSet", "registry")?;
        let init = render.container("DaemonSet", agent, "configuration")?;
        let registry = render.container("DaemonSet", agent, "registry")?;
        let cleanup_ds = workload_with(render, "DaemonSet", "cleanup")?;
        let cleanup = render.container("DaemonSet", cleanup_ds, "cleanup")?;
        let wait_pod = workload_with(render, "Pod", "cleanup-wait")?;
        let wait = render.container("Pod", wait_pod, "cleanup-wait")?;
        let mut places = BTreeMap::new();
        let data = work.join("data");
        std::fs::create_dir_all(&data)?;
        for c in [&init, &registry, &cleanup, &wait] {
            for m in &c.mounts {
                let place = match (&m.source, m.volume.as_str()) {
                    (Source::HostPath(_), "containerd-sock") => node.socket(),
                    (Source::HostPath(_), "containerd-content") => node.content_path(),
                    (Source::HostPath(_), "containerd-config") => node.certs_dir(),
                    (Source::HostPath(_), "containerd-config-dir") => node.dir().to_owned(),
                    (Source::HostPath(_), v) if v.ends_with("-data") => data.clone(),
                    (Source::Secret(name), _) => {
                        let dir = work.join("secrets").join(name);
                        std::fs::create_dir_all(&dir)?;
                        let given = secrets.get(name);
                        let keys: Vec<String> = match given {
                            Some(k) => k.keys().cloned().collect(),
                            None => render
                                .find("Secret", name)
                                .and_then(|d| d["data"].as_mapping())
                                .with_context(|| {
                                    format!("Secret {name} is neither given nor rendered")
                                })?
                                .keys()
                                .filter_map(|k| k.as_str().map(str::to_owned))
                                .collect(),
                        };
                        for key in keys {
                            let bytes = match given.and_then(|g| g.get(&key)) {
                                Some(b) => b.clone(),
                                None => render.secret(name, &key)?,
                            };
                            std::fs::write(dir.join(&key), bytes)?;
                        }
                        dir
                    }
                    (source, volume) => {
                        bail!("volume {volume} ({source:?}) is not one the test knows")
                    }
                };
                places.insert(m.volume.clone(), place);
            }
        }
        Ok(NodePods {
            init_r: init.resolve(node_ip, &places)?,
            registry_r: registry.resolve(node_ip, &places)?,
            cleanup_r: cleanup.resolve(node_ip, &places)?,
            wait_r: wait.resolve(node_ip, &places)?,
            init,
            registry,
            cleanup,
            places,
            work: work.to_owned(),
        })
    }

    /// The cluster names the pods look up: the bootstrap domain and the cleanup endpoint's
    /// host.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        if let Some(d) = flag_value(&self.registry_r.args, "--dns-bootstrap-domain") {
            names.push(d.to_owned());
        }
        let probe =
            flag_value(&self.wait_r.args, "--probe-endpoint").context("no --probe-endpoint")?;
        let (host, _) = probe
            .rsplit_once(':')
            .context("--probe-endpoint without a port")?;
        names.push(host.to_owned());
        Ok(names)
    }

    /// The registry container's port (`--registry-addr=:P`).
    pub fn registry_port(&self) -> Result<u16> {
        port_of(&self.registry_r.args, "--registry-addr")
    }

    /// The registry container's metrics port.
    pub fn metrics_port(&self) -> Result<u16> {
        port_of(&self.registry_r.args, "--metrics-addr")
    }

    fn config_dir(&self, c: &Container) -> Option<PathBuf> {
        c.mounted_at("/etc/containerd")
            .map(|m| self.places[&m.volume].clone())
    }

    /// Runs the `configuration` init container to its end; it must succeed.
    pub fn configure(&self, sandbox: &Sandbox) -> Result<()> {
        let program = crate::speil::binary()?;
        let out = sandbox
            .command(
                &program,
                &self.init_r,
                self.config_dir(&self.init).as_deref(),
            )
            .output()?;
        if !out.status.success() {
            bail!(
                "configuration {:?}: {}",
                self.init_r.args,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the `registry` container and waits until `/readyz` answers 200 (from inside
    /// the namespace).
    pub fn start_registry(&self, sandbox: &Sandbox, within: Duration) -> Result<Running> {
        let mut running = self.spawn_registry(sandbox)?;
        self.wait_ready(sandbox, &mut running, within)?;
        Ok(running)
    }

    /// Starts the `registry` container.
    pub fn spawn_registry(&self, sandbox: &Sandbox) -> Result<Running> {
        let program = crate::speil::binary()?;
        Running::spawn(
            sandbox.command(
                &program,
                &self.registry_r,
                self.config_dir(&self.registry).as_deref(),
            ),
            self.work.join("registry.log"),
        )
    }

    /// Waits until the registry container's `/readyz` answers 200 (from inside the
    /// namespace); fails when it exits first.
    pub fn wait_ready(
        &self,
        sandbox: &Sandbox,
        running: &mut Running,
        within: Duration,
    ) -> Result<()> {
        let port = self.registry_port()?;
        let base = sandbox.base_url();
        let logs = [running.log.clone()];
        wait_for(
            "the registry container becomes ready",
            within,
            || {
                if let Some(status) = running.exited() {
                    bail!("registry exited with {status}: {}", running.log_text());
                }
                Ok(sandbox.get(&format!("{base}:{port}/readyz"))?.0 == 200)
            },
            &logs,
        )
    }

    /// Starts the uninstall hook's `cleanup` container (it restores certs.d, then serves
    /// `/readyz` until stopped).
    pub fn start_cleanup(&self, sandbox: &Sandbox) -> Result<Running> {
        let program = crate::speil::binary()?;
        Running::spawn(
            sandbox.command(
                &program,
                &self.cleanup_r,
                self.config_dir(&self.cleanup).as_deref(),
            ),
            self.work.join("cleanup.log"),
        )
    }

    /// Runs the hook's `cleanup-wait` until it exits, while `cleanups` keep running; it must
    /// exit 0.
    pub fn wait_cleanup(&self, sandbox: &Sandbox, cleanups: &mut [Running]) -> Result<()> {
        let program = crate::speil::binary()?;
        let mut waiting = Running::spawn(
            sandbox.command(&program, &self.wait_r, None),
            self.work.join("cleanup-wait.log"),
        )?;
        let mut logs: Vec<PathBuf> = cleanups.iter().map(|c| c.log.clone()).collect();
        logs.push(waiting.log.clone());
        let mut status = None;
        wait_for(
            "cleanup-wait exits",
            Duration::from_secs(30),
            || {
                for c in cleanups.iter_mut() {
                    if let Some(s) = c.exited() {
                        bail!("cleanup exited with {s}: {}", c.log_text());
                    }
                }
                status = waiting.exited();
                Ok(status.is_some())
            },
            &logs,
        )?;
        if !status.is_some_and(|s| s.success()) {
            bail!("cleanup-wait failed: {}", waiting.log_text());
        }
        Ok(())
    }

    /// Uninstall on this node alone: `cleanup`, and `cleanup-wait` until it exits 0.
    pub fn uninstall(&self, sandbox: &Sandbox) -> Result<()> {
        let mut cleanups = [self.start_cleanup(sandbox)?];
        self.wait_cleanup(sandbox, &mut cleanups)
    }
}

/// Runs a node's life under the chart, as the kubelet would: the `configuration` init
/// container, the `registry` container until it is ready and serves a layer of `image` by
/// digest, then uninstall — the `cleanup` DaemonSet's container and the `cleanup-wait` Pod —
/// after which certs.d must be byte for byte what it was. Every container runs in one
/// [`Sandbox`] with the render's args and env.
pub fn lifecycle(l: Lifecycle<'_>) -> Result<Outcome> {
    use sha2::Digest as _;
    let pods = NodePods::new(l.render, l.node, l.node_ip, l.work, &l.secrets)?;
    let sandbox = Sandbox::new(l.tag, l.node_ip, &pods.names()?)?;
    let base = sandbox.base_url();
    let certs = l.node.certs_dir();
    let before = tree(&certs)?;

    pods.configure(&sandbox)?;
    let configured = tree(&certs)?
        .into_iter()
        .filter(|(p, (bytes, _))| !bytes.is_empty() && !p.starts_with("_backup"))
        .map(|(p, (bytes, _))| (p, String::from_utf8_lossy(&bytes).into_owned()))
        .collect();

    let registry_port = pods.registry_port()?;
    let metrics_port = pods.metrics_port()?;
    let running = pods.start_registry(&sandbox, Duration::from_secs(20))?;
    let layer = &l.image.host_platform()?.layers[0];
    let (code, body) = sandbox.get(&format!(
        "{base}:{registry_port}/v2/{}/blobs/{layer}?ns={}",
        l.image.name, l.upstream
    ))?;
    if code != 200 {
        bail!("layer {layer}: {code} {}", String::from_utf8_lossy(&body));
    }
    let got = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body)));
    if got != layer.to_string() {
        bail!("layer {layer} served with digest {got}");
    }
    let (code, _) = sandbox.get(&format!("{base}:{metrics_port}/metrics"))?;
    if code != 200 {
        bail!("/metrics: {code}");
    }
    let registry_log = running.log_text();
    drop(running);

    pods.uninstall(&sandbox)?;
    let after = tree(&certs)?;
    if after != before {
        let changed: Vec<&PathBuf> = before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k) != after.get(*k))
            .collect();
        bail!("cleanup did not restore certs.d: {changed:?} differ");
    }
    Ok(Outcome {
        configured,
        registry_log,
    })
}

/// A one-node harness on containerd 2.3.4 whose containerd holds `image`, pulled through the
/// CRI straight from the upstream (a `hosts.toml` for it in `certs.d`, as a node has before
/// speil is installed). Returns the harness and the upstream's `host:port`.
pub fn node_holding(image: &crate::TestImage) -> Result<(crate::Harness, String)> {
    let h = crate::Harness::start_generations(&[crate::Generation::V2_3])?;
    let upstream = h.registry.host();
    h.registry.push(image)?;
    let node = &h.nodes[0];
    node.write_hosts_toml(&upstream, &format!("http://{}:9", node.address))?;
    tokio::runtime::Runtime::new()?.block_on(node.cri_pull(&image.reference(&upstream)))?;
    Ok((h, upstream))
}

//! speil run exactly as Spegel's Helm chart runs Spegel (`fixtures/spegel-chart/
//! rendered-default.yaml`): the `configuration` init container, the `registry` container, and
//! the post-delete `cleanup` + `cleanup-wait` pair, with the chart's args and env, on a real
//! containerd 2.3.4.
//!
//! Each container runs in a pod-like sandbox: a network namespace of the test's own with the
//! node's IP on its loopback (so the chart's fixed ports and `$(NODE_IP)` are real, and nothing
//! leaves the machine), its own PID namespace (the host's containerd process is not visible, as
//! in a pod without `hostPID`), and `/etc/containerd` hidden, since the chart mounts only
//! `certs.d`. The chart's `hostPath` volumes are mapped to the test node's directories by
//! rewriting each container's mount paths in its args, as the kubelet's mounts would.
//! Cluster DNS names resolve through `/etc/netns/<ns>/hosts`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_yaml::Value;
use sha2::{Digest as _, Sha256};
use speil_tests::{Generation, Harness, images, require_components, speil, which};

const RENDER: &str = "spegel-chart/rendered-default.yaml";

fn fixtures() -> PathBuf {
    speil_tests::containerd::shared_dir().join("fixtures")
}

/// One container of the render: its args, env and volume mounts (mountPath → hostPath).
#[derive(Debug)]
struct Container {
    args: Vec<String>,
    env: Vec<(String, EnvSource)>,
    mounts: Vec<(String, String)>,
}

#[derive(Debug)]
enum EnvSource {
    HostIp,
    MemoryLimit(u64),
}

fn documents() -> Vec<Value> {
    let path = fixtures().join(RENDER);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("render is YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn memory_bytes(q: &str) -> u64 {
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("quantity {q:?}"));
    n * match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => panic!("unit {other:?} of {q:?}"),
    }
}

/// The container `name` of the workload `kind`/`workload` in the render.
fn container(kind: &str, workload: &str, name: &str) -> Container {
    let docs = documents();
    let doc = docs
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == workload)
        .unwrap_or_else(|| panic!("{kind}/{workload} not in {RENDER}"));
    let spec = if kind == "Pod" {
        &doc["spec"]
    } else {
        &doc["spec"]["template"]["spec"]
    };
    let c = ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec[*k].as_sequence())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("container {name} not in {kind}/{workload}"));
    let volumes: BTreeMap<String, String> = spec["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|v| {
            let path = v["hostPath"]["path"]
                .as_str()
                .unwrap_or_else(|| panic!("volume {v:?} is not a hostPath"));
            (v["name"].as_str().unwrap().to_owned(), path.to_owned())
        })
        .collect();
    let strings = |v: &Value| -> Vec<String> {
        v.as_sequence()
            .into_iter()
            .flatten()
            .map(|a| a.as_str().expect("string arg").to_owned())
            .collect()
    };
    let limit = c["resources"]["limits"]["memory"].as_str();
    let env = c["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_owned();
            let from = &e["valueFrom"];
            let source = if from["fieldRef"]["fieldPath"] == "status.hostIP" {
                EnvSource::HostIp
            } else if from["resourceFieldRef"]["resource"] == "limits.memory" {
                EnvSource::MemoryLimit(memory_bytes(limit.expect("a memory limit")))
            } else {
                panic!("env {name}: source {from:?} is not one this test knows")
            };
            (name, source)
        })
        .collect();
    let mounts = c["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|m| {
            let volume = m["name"].as_str().unwrap();
            let host = volumes
                .get(volume)
                .unwrap_or_else(|| panic!("volume {volume} not declared"));
            (m["mountPath"].as_str().unwrap().to_owned(), host.clone())
        })
        .collect();
    Container {
        args: strings(&c["args"]),
        env,
        mounts,
    }
}

impl Container {
    /// The args as the kubelet runs them: `$(VAR)` expanded from the env, and every mount
    /// path replaced by where the test keeps that host path.
    fn resolve(&self, node_ip: IpAddr, host_paths: &BTreeMap<&str, PathBuf>) -> Resolved {
        let env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(name, source)| {
                let value = match source {
                    EnvSource::HostIp => node_ip.to_string(),
                    EnvSource::MemoryLimit(b) => b.to_string(),
                };
                (name.clone(), value)
            })
            .collect();
        let args = self
            .args
            .iter()
            .map(|a| {
                let mut a = a.clone();
                for (name, value) in &env {
                    a = a.replace(&format!("$({name})"), value);
                }
                for (mount, host) in &self.mounts {
                    let local = host_paths
                        .get(host.as_str())
                        .unwrap_or_else(|| panic!("host path {host} has no place in this test"));
                    a = a.replace(mount.as_str(), &local.display().to_string());
                }
                a
            })
            .collect();
        Resolved { args, env }
    }
}

struct Resolved {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// A network namespace with one address on its loopback, removed (with its `/etc/netns`
/// files) on drop.
struct Sandbox {
    name: String,
    etc: PathBuf,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Sandbox {
    fn new(tag: &str, ip: IpAddr, names: &[&str]) -> Sandbox {
        let name = format!("speil-chart-{}-{tag}", std::process::id());
        let etc = PathBuf::from("/etc/netns").join(&name);
        run(Command::new("ip").args(["netns", "add", &name]));
        let sandbox = Sandbox { name, etc };
        let ns = sandbox.name.as_str();
        run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        let prefix = if ip.is_ipv4() { "32" } else { "128" };
        let mut add = Command::new("ip");
        add.args([
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/{prefix}"),
            "dev",
            "lo",
        ]);
        if ip.is_ipv6() {
            add.arg("nodad");
        }
        run(&mut add);
        std::fs::create_dir_all(&sandbox.etc).unwrap();
        // Every cluster name resolves to the node; nothing asks a DNS server outside.
        let mut hosts = "127.0.0.1 localhost\n::1 localhost\n".to_owned();
        for n in names {
            hosts.push_str(&format!("{ip} {n} {}\n", n.trim_end_matches('.')));
        }
        std::fs::write(sandbox.etc.join("hosts"), hosts).unwrap();
        std::fs::write(sandbox.etc.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        sandbox
    }

    /// `program args` as a container of a pod: in the namespace, in its own PID namespace,
    /// with `/etc/containerd` hidden.
    fn command(&self, program: &Path, r: &Resolved) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .args(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"])
            .args([
                "sh",
                "-c",
                "mount -t tmpfs -o ro,mode=0755 none /etc/containerd && exec \"$@\"",
                "sh",
            ])
            .arg(program)
            .args(&r.args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(r.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// `curl` inside the namespace; the HTTP status and the body.
    fn get(&self, url: &str) -> (u16, Vec<u8>) {
        let body = tempfile::NamedTempFile::new().unwrap();
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "curl",
                "-sS",
                "-g",
                "--max-time",
                "5",
            ])
            .args(["-o"])
            .arg(body.path())
            .args(["-w", "%{http_code}", url])
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        (code, std::fs::read(body.path()).unwrap())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// A child stopped by PID on drop; with `--kill-child`, `unshare` takes its PID namespace
/// down with it.
struct Running(Child, PathBuf);

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(mut cmd: Command, log: PathBuf) -> Running {
    let file = std::fs::File::create(&log).unwrap();
    cmd.stdout(file.try_clone().unwrap()).stderr(file);
    Running(cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}")), log)
}

/// Every file under `dir` with its bytes and mode.
fn tree(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().to_owned();
            if meta.is_dir() {
                out.insert(rel, (Vec::new(), meta.permissions().mode()));
                stack.push(e.path());
            } else {
                out.insert(
                    rel,
                    (std::fs::read(e.path()).unwrap(), meta.permissions().mode()),
                );
            }
        }
    }
    out
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool, logs: &[PathBuf]) {
    let deadline = Instant::now() + within;
    while !done() {
        let log = || {
            logs.iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn chart_on(node_ip: IpAddr, tag: &str) {
    if !require_components() {
        return;
    }
    for tool in ["ip", "unshare", "curl"] {
        if which(tool).is_none() {
            let msg = format!("`{tool}` not on PATH (Debian: iproute2, util-linux, curl)");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
            eprintln!("\n!!!!! SKIPPED: {msg} !!!!!\n");
            return;
        }
    }
    let speil = speil::binary().unwrap();
    let h = Harness::start_generations(&[Generation::V2_3]).unwrap();
    let node = &h.nodes[0];
    let upstream = h.registry.host();
    let image = images::small().unwrap();
    h.registry.push(image).unwrap();

    // The node holds the image: pulled straight from the upstream before speil is installed.
    let certs = node.certs_dir();
    node.write_hosts_toml(&upstream, &format!("http://{}:9", node.address))
        .unwrap();
    std::fs::write(certs.join(&upstream).join("ca.crt"), b"a CA the node had\n").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(node.cri_pull(&image.reference(&upstream)))
        .unwrap();
    let before = tree(&certs);

    let data = h.dir().join("spegel-data");
    std::fs::create_dir_all(&data).unwrap();
    let host_paths: BTreeMap<&str, PathBuf> = BTreeMap::from([
        ("/etc/containerd/certs.d", certs.clone()),
        ("/run/containerd/containerd.sock", node.socket()),
        (
            "/var/lib/containerd/io.containerd.content.v1.content",
            node.content_path(),
        ),
        ("/var/lib/spegel", data.clone()),
    ]);
    let sandbox = Sandbox::new(
        tag,
        node_ip,
        &[
            "spegel-bootstrap.spegel.svc.cluster.local.",
            "spegel-cleanup.spegel.svc.cluster.local.",
        ],
    );

    // The init container.
    let init = container("DaemonSet", "spegel", "configuration").resolve(node_ip, &host_paths);
    let out = sandbox.command(&speil, &init).output().unwrap();
    assert!(
        out.status.success(),
        "configuration {:?}: {}",
        init.args,
        String::from_utf8_lossy(&out.stderr)
    );
    let hosts = std::fs::read_to_string(certs.join("_default/hosts.toml")).unwrap();
    let target = match node_ip {
        IpAddr::V4(ip) => format!("http://{ip}:30020"),
        IpAddr::V6(ip) => format!("http://[{ip}]:30020"),
    };
    assert!(hosts.contains(&format!("[host.'{target}']")), "{hosts}");

    // The registry container: starts (containerd's config is out of its sight: a warning, not
    // a refusal), becomes ready and serves what the node holds.
    let registry = container("DaemonSet", "spegel", "registry").resolve(node_ip, &host_paths);
    let mut running = spawn(
        sandbox.command(&speil, &registry),
        h.dir().join("registry.log"),
    );
    let base = match node_ip {
        IpAddr::V4(ip) => format!("http://{ip}"),
        IpAddr::V6(ip) => format!("http://[{ip}]"),
    };
    let logs = [running.1.clone()];
    wait_for(
        "the registry container becomes ready",
        Duration::from_secs(20),
        || {
            assert!(
                running.exited().is_none(),
                "registry exited: {}",
                running.log()
            );
            sandbox.get(&format!("{base}:5000/readyz")).0 == 200
        },
        &logs,
    );
    assert!(
        running.log().contains("cannot be verified"),
        "no warning that containerd's config could not be read: {}",
        running.log()
    );
    let layer = &image.host_platform().unwrap().layers[0];
    let (code, body) = sandbox.get(&format!(
        "{base}:5000/v2/{}/blobs/{layer}?ns={upstream}",
        image.name
    ));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&body))),
        layer.to_string()
    );
    let (code, _) = sandbox.get(&format!("{base}:9090/metrics"));
    assert_eq!(code, 200);
    drop(running);

    // Uninstall: the cleanup DaemonSet restores certs.d and reports ready; cleanup-wait sees
    // it through the cleanup Service's name and exits 0.
    let cleanup = container("DaemonSet", "spegel-cleanup", "cleanup").resolve(node_ip, &host_paths);
    let mut cleaning = spawn(
        sandbox.command(&speil, &cleanup),
        h.dir().join("cleanup.log"),
    );
    let wait =
        container("Pod", "spegel-cleanup-wait", "cleanup-wait").resolve(node_ip, &host_paths);
    let mut waiting = spawn(
        sandbox.command(&speil, &wait),
        h.dir().join("cleanup-wait.log"),
    );
    let mut status = None;
    let logs = [cleaning.1.clone(), waiting.1.clone()];
    wait_for(
        "cleanup-wait exits",
        Duration::from_secs(30),
        || {
            assert!(
                cleaning.exited().is_none(),
                "cleanup exited: {}",
                cleaning.log()
            );
            status = waiting.exited();
            status.is_some()
        },
        &logs,
    );
    assert!(status.unwrap().success(), "cleanup-wait: {}", waiting.log());
    assert_eq!(tree(&certs), before, "cleanup did not restore certs.d");
}

#[test]
fn spegel_chart_args_run_speil_on_an_ipv4_node() {
    chart_on("10.77.0.5".parse().unwrap(), "v4");
}

#[test]
fn spegel_chart_args_run_speil_on_an_ipv6_node() {
    chart_on("fd00:77::5".parse().unwrap(), "v6");
}

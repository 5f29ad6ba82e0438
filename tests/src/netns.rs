//! Clusters in network namespaces (DESIGN.md §4): IPv6-only and dual-stack networks that never
//! leave the machine.
//!
//! A [`Lan`] is a set of namespaces the test creates: a switch namespace holding a bridge, and
//! one namespace per host (the upstream registry, each node) joined to the bridge by a veth
//! pair, with its addresses on `eth0` (`nodad`) and `lo` up. Each host has its own ports, so
//! every speil listens on Spegel's defaults (`:5000`, `:5001`, `:9090`) as on a real cluster.
//! Names resolve through `/etc/netns/<ns>/hosts`, which `ip netns exec` mounts over
//! `/etc/hosts`.
//!
//! Every process of such a cluster runs inside its host's namespace ([`command`]); the test
//! process reaches them only through files (containerd's unix socket, logs) and through
//! [`request`], which runs `curl` inside the namespace. Nothing in the root namespace dials an
//! address inside one. The namespaces and their `/etc/netns` directories are deleted on drop,
//! also when a test panics; the processes are stopped by PID by their own guards, which the
//! cluster types drop first.

use std::ffi::OsStr;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::http::Response;

/// Environment variables that would send a program's traffic to a proxy; removed from every
/// process started in a namespace.
const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

/// The tools the namespace tests need besides [`crate::COMPONENTS`].
pub const NETNS_TOOLS: [&str; 2] = ["ip", "curl"];

/// Whether the namespace tests can run: the real components (see
/// [`crate::require_components`]), `ip` and `curl`, as root. Like `require_components`, a
/// missing tool fails the test when `CI=true` and skips it loudly otherwise.
pub fn require_netns() -> bool {
    if !crate::require_components() {
        return false;
    }
    let missing: Vec<&str> = NETNS_TOOLS
        .iter()
        .copied()
        .filter(|t| crate::which(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "network-namespace test needs {} on PATH (Debian: apt-get install iproute2 curl)",
        missing.join(", ")
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}");
    }
    eprintln!("\n!!!!! SKIPPED: {msg} !!!!!\n");
    false
}

/// `program` to be run inside namespace `netns` (`ip netns exec <netns> program`), or in this
/// namespace when `None`. `ip netns exec` replaces itself with the program, so the child's PID
/// is the program's. Proxy variables are removed either way.
pub fn command(netns: Option<&str>, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    };
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    cmd
}

/// An HTTP request to `addr` from inside `netns` (with `curl` there), or with the loopback-only
/// test client when `None`.
pub fn request(
    netns: Option<&str>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response> {
    let Some(ns) = netns else {
        return crate::http::request(addr, method, path, headers);
    };
    let mut cmd = command(Some(ns), "curl");
    cmd.args(["-sS", "-g", "-i", "--noproxy", "*", "--max-time", "30"]);
    if method == "HEAD" {
        cmd.arg("-I");
    } else {
        cmd.args(["-X", method]);
    }
    for (n, v) in headers {
        cmd.arg("-H").arg(format!("{n}: {v}"));
    }
    cmd.arg(format!("http://{addr}{path}"));
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running curl in the namespace")?;
    if !out.status.success() {
        bail!(
            "curl {method} http://{addr}{path} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_response(&out.stdout)
}

/// Parses what `curl -i` prints: status line, headers, blank line, body.
fn parse_response(raw: &[u8]) -> Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the response head")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace this test created, deleted (with `/etc/netns/<name>`) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` with `lo` up. A leftover namespace of that name (from a
    /// killed run of this harness) is deleted first.
    pub fn create(name: &str) -> Result<Netns> {
        if ip(&["netns", "add", name]).is_err() {
            ip(&["netns", "del", name])?;
            ip(&["netns", "add", name])?;
        }
        let ns = Netns {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> args…`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    /// Writes `/etc/netns/<name>/hosts`, the `/etc/hosts` of processes started in it.
    pub fn write_hosts(&self, text: &str) -> Result<()> {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("hosts"), text)?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("deleting namespace {}: {e:#}", self.name);
        }
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}

/// A host of a [`Lan`]: its namespace and addresses.
#[derive(Debug)]
pub struct Host {
    /// Its namespace.
    pub ns: Netns,
    /// Its addresses on `eth0`, in the order given.
    pub addrs: Vec<IpAddr>,
}

impl Host {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        self.ns.name()
    }

    /// Its first IPv6 address, else its first address.
    pub fn ipv6_or_first(&self) -> IpAddr {
        self.addrs
            .iter()
            .copied()
            .find(IpAddr::is_ipv6)
            .unwrap_or(self.addrs[0])
    }

    /// Its first IPv4 address, else its first address.
    pub fn ipv4_or_first(&self) -> IpAddr {
        self.addrs
            .iter()
            .copied()
            .find(IpAddr::is_ipv4)
            .unwrap_or(self.addrs[0])
    }
}

/// Hosts on one bridge, each in its own namespace. Dropped hosts first, then the switch.
#[derive(Debug)]
pub struct Lan {
    /// The hosts, in the order given to [`Lan::create`].
    pub hosts: Vec<Host>,
    switch: Netns,
}

impl Lan {
    /// Creates the switch `<prefix>s` and hosts `<prefix>0`, `<prefix>1`, … with the given
    /// addresses (IPv6 as /64, IPv4 as /24, without duplicate address detection). Every
    /// host's `/etc/hosts` is `hosts` (plus localhost).
    pub fn create(prefix: &str, addrs: &[Vec<IpAddr>], hosts: &str) -> Result<Lan> {
        let switch = Netns::create(&format!("{prefix}s"))?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        let mut lan = Lan {
            hosts: Vec::new(),
            switch,
        };
        let hosts_text = format!("127.0.0.1 localhost\n::1 localhost\n{hosts}");
        for (i, host_addrs) in addrs.iter().enumerate() {
            let ns = Netns::create(&format!("{prefix}{i}"))?;
            let port = format!("p{i}");
            ns.ip(&[
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                lan.switch.name(),
            ])?;
            lan.switch.ip(&["link", "set", &port, "master", "br0"])?;
            lan.switch.ip(&["link", "set", &port, "up"])?;
            for a in host_addrs {
                let cidr = match a {
                    IpAddr::V4(_) => format!("{a}/24"),
                    IpAddr::V6(_) => format!("{a}/64"),
                };
                ns.ip(&["addr", "add", &cidr, "dev", "eth0", "nodad"])?;
            }
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.write_hosts(&hosts_text)?;
            lan.hosts.push(Host {
                ns,
                addrs: host_addrs.clone(),
            });
        }
        Ok(lan)
    }

    /// A namespace-name prefix unique to this process and `tag` (short: names of namespaces
    /// are file names, interface names are not involved).
    pub fn prefix(tag: &str) -> String {
        format!("spl{}{tag}", std::process::id() % 100_000)
    }
}

/// The IP families of a namespaced cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// Only IPv6 on the network (`2001:db8::/64`); loopback still has `127.0.0.1`.
    Ipv6Only,
    /// IPv4 (`10.0.0.0/24`) and IPv6 (`2001:db8::/64`) on every host.
    Dual,
}

/// How the speils of a namespaced cluster find each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// `--bootstrap-kind=http` from node 0's `/id`, its URL naming node 0's IPv6 address
    /// unbracketed, as a chart renders `http://$(NODE_IP):…`.
    Http,
    /// `--bootstrap-kind=dns` on [`PEERS_NAME`], which the hosts files map to every node's
    /// addresses (A and AAAA).
    Dns,
}

/// The name of the upstream registry in the namespaces' hosts files.
pub const REGISTRY_NAME: &str = "registry.test";
/// The name listing every node (as a headless Service would) for the dns bootstrap.
pub const PEERS_NAME: &str = "speil-peers.test";
/// Ports inside the namespaces: Spegel's defaults, and 5002 for `/id`.
pub const NS_PORTS: crate::Ports = crate::Ports {
    registry: 5000,
    router: 5001,
    metrics: 9090,
    bootstrap: 5002,
};

/// A cluster in namespaces: the upstream registry on host 0, node `i` (containerd and speil) on
/// host `i + 1`, every speil on the default `:PORT` addresses. Stopped on drop: speils, then
/// containerds, then the registry (by PID), then the namespaces, then the files.
pub struct NsCluster {
    /// `speils[i]` runs on `nodes[i]`.
    pub speils: Vec<crate::Speil>,
    /// The containerd nodes.
    pub nodes: Vec<crate::Node>,
    /// The upstream registry (`registry.test:5000`).
    pub registry: crate::Registry,
    /// The namespaces.
    pub lan: Lan,
    dir: tempfile::TempDir,
}

/// `2001:db8::<host>`, the host number written in decimal digits (`2001:db8::11`).
fn v6(host: u8) -> IpAddr {
    format!("2001:db8::{host}")
        .parse()
        .expect("a valid IPv6 address")
}

fn v4(host: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, host])
}

impl NsCluster {
    /// Creates the namespaces, starts the registry and `nodes` nodes on containerd
    /// `generation`, configures each containerd with `speil configuration` (mirror target:
    /// the node's IPv6 address unbracketed on an IPv6-only network, its IPv4 address on a
    /// dual-stack one) and waits until every speil is ready.
    pub fn start(
        tag: &str,
        stack: Stack,
        join: Join,
        nodes: usize,
        generation: crate::Generation,
    ) -> Result<NsCluster> {
        let addrs_of = |host: u8| -> Vec<IpAddr> {
            match stack {
                Stack::Ipv6Only => vec![v6(host)],
                Stack::Dual => vec![v4(host), v6(host)],
            }
        };
        let mut addrs = vec![addrs_of(10)];
        for i in 0..nodes {
            addrs.push(addrs_of(11 + i as u8));
        }
        let mut hosts = String::new();
        for a in &addrs[0] {
            hosts.push_str(&format!("{a} {REGISTRY_NAME}\n"));
        }
        for node in &addrs[1..] {
            for a in node {
                hosts.push_str(&format!("{a} {PEERS_NAME}\n"));
            }
        }
        let lan = Lan::create(&Lan::prefix(tag), &addrs, &hosts)?;
        let dir = tempfile::Builder::new()
            .prefix("speil-ns")
            .tempdir()
            .context("creating the cluster directory")?;
        let reg_host = &lan.hosts[0];
        let reg_addr = SocketAddr::new(reg_host.ipv6_or_first(), NS_PORTS.registry);
        let mut registry = crate::Registry::spawn_in(
            &dir.path().join("registry"),
            reg_host.name(),
            &format!(":{}", NS_PORTS.registry),
            reg_addr,
            &format!("{REGISTRY_NAME}:{}", NS_PORTS.registry),
        )?;
        let mut started = Vec::new();
        for (i, host) in lan.hosts[1..].iter().enumerate() {
            started.push(crate::Node::spawn_in(
                &dir.path().join(format!("n{i}")),
                i,
                host.ipv6_or_first(),
                generation,
                Some(host.name()),
            )?);
        }
        registry.wait_ready(std::time::Duration::from_secs(10))?;
        for node in &mut started {
            node.wait_ready(std::time::Duration::from_secs(10))?;
        }
        let mut c = NsCluster {
            speils: Vec::new(),
            nodes: started,
            registry,
            lan,
            dir,
        };
        let first = c.lan.hosts[1].ipv6_or_first();
        for i in 0..c.nodes.len() {
            let host = &c.lan.hosts[i + 1];
            let p = NS_PORTS;
            let mut flags = vec![
                format!("--registry-addr=:{}", p.registry),
                format!("--router-addr=:{}", p.router),
                format!("--metrics-addr=:{}", p.metrics),
            ];
            match join {
                Join::Http => flags.extend([
                    "--bootstrap-kind=http".to_owned(),
                    format!("--http-bootstrap-addr=:{}", p.bootstrap),
                    format!("--http-bootstrap-url=http://{first}:{}/id", p.bootstrap),
                ]),
                Join::Dns => flags.extend([
                    "--bootstrap-kind=dns".to_owned(),
                    format!("--dns-bootstrap-domain={PEERS_NAME}"),
                ]),
            }
            let s = crate::Speil::start_with(&c.nodes[i], p, &flags)?;
            // The chart's form: `http://$(NODE_IP):<port>`, an IPv6 address unbracketed.
            let target_ip = match stack {
                Stack::Ipv6Only => host.ipv6_or_first(),
                Stack::Dual => host.ipv4_or_first(),
            };
            let target = format!("http://{target_ip}:{}", p.registry);
            configure_target(&c.nodes[i], &target, &c.registry.host())?;
            c.speils.push(s);
        }
        for s in &mut c.speils {
            s.wait_ready(std::time::Duration::from_secs(30))?;
        }
        Ok(c)
    }

    /// The upstream registry's `host:port` (`registry.test:5000`).
    pub fn registry_host(&self) -> String {
        self.registry.host()
    }

    /// The cluster's directory (removed on drop).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The debug page's state of node `i` (`/debug/web/api/state`).
    pub fn debug_state(&self, i: usize) -> Result<serde_json::Value> {
        let body = self.speils[i].get_metrics_port("/debug/web/api/state")?;
        serde_json::from_slice(&body).context("debug state is not JSON")
    }
}

/// Writes the node's `hosts.toml` with `speil configuration` (mirror `target`, as given), as the
/// init container does. Runs in this namespace: it only writes files.
pub fn configure_target(node: &crate::Node, target: &str, registry: &str) -> Result<()> {
    let out = Command::new(crate::speil::binary()?)
        .arg("configuration")
        .arg(format!(
            "--containerd-registry-config-path={}",
            node.certs_dir().display()
        ))
        .arg(format!("--mirror-targets={target}"))
        .arg(format!("--mirrored-registries=http://{registry}"))
        .output()?;
    if !out.status.success() {
        bail!(
            "speil configuration failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

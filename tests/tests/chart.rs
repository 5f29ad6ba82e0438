//! speil's Helm chart (`charts/speil`): it lints, takes every key of Spegel's `values.yaml`
//! with an effect, renders manifests that validate against the Kubernetes 1.33–1.35 schemas
//! (strict) over a matrix of values, `deploy/` is its default render, and the rendered
//! containers run against the real binary on a real containerd: `configuration`, `registry`
//! (ready, verified, serving a layer), `cleanup` and `cleanup-wait`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;
use speil_tests::pod::{self, Lifecycle, Render, require_sandbox};
use speil_tests::{Generation, images, require_components, which};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    repo().join("charts/speil")
}

fn spegel_values() -> PathBuf {
    speil_tests::containerd::shared_dir().join("fixtures/spegel-chart/values.yaml")
}

/// Whether helm and kubernetes-validate are here (CI: they must be).
fn require_tools() -> bool {
    for tool in ["helm", "kubernetes-validate"] {
        if which(tool).is_none() {
            let msg = format!("`{tool}` not on PATH (./scripts/install-deps installs it)");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
            eprintln!("\n!!!!! SKIPPED: {msg} !!!!!\n");
            return false;
        }
    }
    true
}

/// `helm template speil charts/speil --namespace speil ARGS`.
fn template(args: &[&str]) -> Result<String, String> {
    let out = Command::new("helm")
        .args(["template", "speil"])
        .arg(chart())
        .args(["--namespace", "speil"])
        .args(args)
        .output()
        .expect("running helm");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn render(args: &[&str]) -> String {
    template(args).unwrap_or_else(|e| panic!("helm template {args:?}: {e}"))
}

/// The values matrix of the done-when list, by name.
fn matrix() -> Vec<(&'static str, Vec<String>)> {
    let spegel = spegel_values().display().to_string();
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        ("default", v(&[])),
        ("spegel-values", vec!["-f".into(), spegel]),
        (
            "talos",
            v(&[
                "--set",
                "spegel.containerdRegistryConfigPath=/etc/cri/conf.d/hosts",
                "--set",
                "speil.containerdConfig.path=/etc/cri/config.toml",
                "--set",
                "speil.containerdConfig.hostDir=/etc/cri",
            ]),
        ),
        (
            "basic-auth",
            v(&["--set", "basicAuthSecretName=speil-auth"]),
        ),
        ("own-psk", v(&["--set", "speil.psk.existingSecret=my-psk"])),
        ("no-psk", v(&["--set", "speil.psk.enabled=false"])),
        (
            "monitoring",
            v(&[
                "--set",
                "serviceMonitor.enabled=true",
                "--set",
                "grafanaDashboard.enabled=true",
                "--set",
                "verticalPodAutoscaler.enabled=true",
            ]),
        ),
        (
            "grafana-operator",
            v(&[
                "--set",
                "grafanaDashboard.enabled=true",
                "--set",
                "grafanaDashboard.mode=GrafanaOperator",
            ]),
        ),
        (
            "network-policy",
            v(&["--set", "networkPolicy.enabled=true"]),
        ),
        (
            "ipv6-node-ip",
            v(&["--set", "service.registry.nodeIp=fd00:77::5"]),
        ),
        (
            "spegel-talos-auth-monitoring",
            v(&[
                "--set",
                "spegel.containerdRegistryConfigPath=/etc/cri/conf.d/hosts",
                "--set",
                "basicAuthSecretName=spegel-auth",
                "--set",
                "serviceMonitor.enabled=true",
                "--set",
                "grafanaDashboard.enabled=true",
                "--set",
                "spegel.mirroredRegistries={https://docker.io,https://ghcr.io}",
                "--set",
                "spegel.prependExisting=true",
            ]),
        ),
    ]
}

fn render_named(args: &[String]) -> String {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    render(&a)
}

#[test]
fn chart_lints() {
    if !require_tools() {
        return;
    }
    for args in [
        vec![],
        vec!["--values".to_owned(), spegel_values().display().to_string()],
    ] {
        let out = Command::new("helm")
            .args(["lint", "--strict"])
            .arg(chart())
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "helm lint {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Resources without a schema in kubernetes-validate (CRDs), with the fields that must be set.
fn check_custom_resource(doc: &Value) {
    let kind = doc["kind"].as_str().unwrap();
    match kind {
        "ServiceMonitor" => {
            assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
            assert_eq!(doc["spec"]["endpoints"][0]["port"], "metrics", "{doc:?}");
            assert_eq!(
                doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
                "metrics"
            );
        }
        "VerticalPodAutoscaler" => {
            assert_eq!(doc["apiVersion"], "autoscaling.k8s.io/v1");
            assert_eq!(doc["spec"]["targetRef"]["kind"], "DaemonSet");
            assert_eq!(doc["spec"]["targetRef"]["name"], "speil");
        }
        "GrafanaDashboard" => {
            assert_eq!(doc["apiVersion"], "grafana.integreatly.org/v1beta1");
            let json = doc["spec"]["json"].as_str().unwrap();
            serde_json::from_str::<serde_json::Value>(json).expect("dashboard JSON");
        }
        other => panic!("{other} has no schema and no check here"),
    }
}

#[test]
fn renders_validate_against_kubernetes_1_33_to_1_35() {
    if !require_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, args) in matrix() {
        let text = render_named(&args);
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, &text).unwrap();
        for version in ["1.33.0", "1.34.0", "1.35.0"] {
            let out = Command::new("kubernetes-validate")
                .args(["--strict", "-k", version])
                .arg(&path)
                .output()
                .unwrap();
            let log = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{name} on {version}: {log}");
            assert!(!log.contains("ERROR"), "{name} on {version}: {log}");
        }
        let r = Render::parse(&text).unwrap();
        for doc in &r.docs {
            let api = doc["apiVersion"].as_str().unwrap();
            if !(api == "v1" || api.starts_with("apps/") || api.starts_with("networking.k8s.io/")) {
                check_custom_resource(doc);
            }
        }
    }
}

/// The leaf keys of a values tree, as `a.b.c` paths with their values.
fn leaves(v: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Mapping(m) if !m.is_empty() => {
            for (k, v) in m {
                let k = k.as_str().unwrap();
                let p = if prefix.is_empty() {
                    k.to_owned()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &p, out);
            }
        }
        other => out.push((prefix.to_owned(), other.clone())),
    }
}

/// A different value for `key` that the chart must show in its render.
fn mutation(key: &str, value: &Value) -> Value {
    let s = |t: &str| Value::String(t.to_owned());
    let special = match key {
        "image.pullPolicy" => Some(s("Always")),
        "image.digest" => Some(s(
            "sha256:0000000000000000000000000000000000000000000000000000000000000001",
        )),
        "grafanaDashboard.mode" => Some(s("GrafanaOperator")),
        "spegel.logLevel" => Some(s("DEBUG")),
        "spegel.mirrorResolveTimeout" => Some(s("30ms")),
        "verticalPodAutoscaler.controlledValues" => Some(s("RequestsOnly")),
        "verticalPodAutoscaler.updatePolicy.updateMode" => Some(s("Off")),
        "verticalPodAutoscaler.recommenders" => {
            Some(serde_yaml::from_str("[{name: custom}]").unwrap())
        }
        "verticalPodAutoscaler.controlledResources" => Some(serde_yaml::from_str("[cpu]").unwrap()),
        "verticalPodAutoscaler.maxAllowed" | "verticalPodAutoscaler.minAllowed" => {
            Some(serde_yaml::from_str("{memory: 64Mi}").unwrap())
        }
        "tolerations" => Some(serde_yaml::from_str("[{key: k, operator: Exists}]").unwrap()),
        "imagePullSecrets" => Some(serde_yaml::from_str("[{name: pull}]").unwrap()),
        "extraVolumes" => Some(serde_yaml::from_str("[{name: x, emptyDir: {}}]").unwrap()),
        "extraInitContainers" => {
            Some(serde_yaml::from_str("[{name: first, image: busybox}]").unwrap())
        }
        "serviceMonitor.relabelings" | "serviceMonitor.metricRelabelings" => {
            Some(serde_yaml::from_str("[{action: keep, sourceLabels: [a]}]").unwrap())
        }
        "spegel.mirroredRegistries" | "spegel.additionalMirrorTargets" => {
            Some(serde_yaml::from_str("[\"https://example.test\"]").unwrap())
        }
        "spegel.registryFilters" => Some(serde_yaml::from_str("[\".*:latest$\"]").unwrap()),
        "clusterDomain" => Some(s("example.test.")),
        "serviceMonitor.interval" => Some(s("61s")),
        "serviceMonitor.scrapeTimeout" => Some(s("31s")),
        "grafanaDashboard.grafanaOperator.resyncPeriod" => Some(s("11m")),
        "resources" => Some(serde_yaml::from_str("{limits: {memory: 64Mi}}").unwrap()),
        _ => None,
    };
    if let Some(v) = special {
        return v;
    }
    match value {
        Value::Bool(b) => Value::Bool(!b),
        Value::Number(n) => Value::Number((n.as_u64().unwrap() + 1).into()),
        Value::String(_) => s("changed-by-test"),
        Value::Mapping(_) => serde_yaml::from_str("{changed-by-test: \"yes\"}").unwrap(),
        Value::Sequence(_) => panic!("no mutation for the list {key}"),
        other => panic!("no mutation for {key} = {other:?}"),
    }
}

/// Sets `key` (a dotted path) to `value` in `tree`.
fn set(tree: &mut Value, key: &str, value: Value) {
    let mut node = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        node = node
            .as_mapping_mut()
            .unwrap()
            .entry(Value::String((*p).to_owned()))
            .or_insert_with(|| Value::Mapping(Default::default()));
    }
    node.as_mapping_mut()
        .unwrap()
        .insert(Value::String(parts[parts.len() - 1].to_owned()), value);
}

#[test]
fn every_key_of_spegel_values_has_an_effect() {
    if !require_tools() {
        return;
    }
    let spegel: Value =
        serde_yaml::from_str(&std::fs::read_to_string(spegel_values()).unwrap()).unwrap();
    let ours: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let mut keys = Vec::new();
    leaves(&spegel, "", &mut keys);
    assert!(keys.len() > 70, "{} keys", keys.len());
    let mut our_keys = Vec::new();
    leaves(&ours, "", &mut our_keys);
    let ours_by_key: BTreeMap<String, Value> = our_keys.into_iter().collect();
    // Same keys and the same defaults, except where the image comes from.
    for (key, value) in &keys {
        let mine = ours_by_key
            .get(key)
            .unwrap_or_else(|| panic!("speil's values.yaml has no {key}"));
        if key != "image.repository" {
            assert_eq!(mine, value, "default of {key}");
        }
    }
    // Every optional part on, so that each key has a place to show.
    let dir = tempfile::tempdir().unwrap();
    let mut base = spegel.clone();
    for on in [
        "serviceMonitor.enabled",
        "grafanaDashboard.enabled",
        "verticalPodAutoscaler.enabled",
        "networkPolicy.enabled",
        "livenessProbe.enabled",
    ] {
        set(&mut base, on, Value::Bool(true));
    }
    let write = |name: &str, v: &Value| {
        let p = dir.path().join(name);
        std::fs::write(&p, serde_yaml::to_string(v).unwrap()).unwrap();
        p.display().to_string()
    };
    let base_file = write("base.yaml", &base);
    let base_render = render(&["-f", &base_file]);
    let mut without_effect = Vec::new();
    for (key, value) in &keys {
        let mut changed = base.clone();
        let current = {
            let mut v = &base;
            for p in key.split('.') {
                v = &v[p];
            }
            v.clone()
        };
        let new = mutation(key, if current.is_null() { value } else { &current });
        set(&mut changed, key, new);
        let file = write("changed.yaml", &changed);
        let mut args = vec!["-f", file.as_str()];
        // The GrafanaOperator dashboard lives in the other mode.
        if key.starts_with("grafanaDashboard.grafanaOperator.") {
            args.extend(["--set", "grafanaDashboard.mode=GrafanaOperator"]);
        }
        let text = match template(&args) {
            Ok(t) => t,
            Err(e) => panic!("{key}: {e}"),
        };
        let reference = if key.starts_with("grafanaDashboard.grafanaOperator.") {
            render(&[
                "-f",
                &base_file,
                "--set",
                "grafanaDashboard.mode=GrafanaOperator",
            ])
        } else {
            base_render.clone()
        };
        if text == reference {
            without_effect.push(key.clone());
        }
    }
    assert!(
        without_effect.is_empty(),
        "keys of Spegel's values.yaml that change nothing: {without_effect:?}"
    );
}

#[test]
fn default_render_closes_the_dht() {
    if !require_tools() {
        return;
    }
    let r = Render::parse(&render(&[])).unwrap();
    let registry = r.container("DaemonSet", "speil", "registry").unwrap();
    assert!(
        registry
            .args
            .contains(&"--libp2p-psk-file=/etc/speil/psk/psk".to_owned()),
        "{:?}",
        registry.args
    );
    let key = String::from_utf8(r.secret("speil-psk", "psk").unwrap()).unwrap();
    let lines: Vec<&str> = key.lines().collect();
    assert_eq!(lines[..2], ["/key/swarm/psk/1.0.0/", "/base16/"], "{key}");
    assert_eq!(lines[2].len(), 64);
    assert!(lines[2].bytes().all(|b| b.is_ascii_hexdigit()));
    // A new key per install (no cluster to look one up in here).
    let again = Render::parse(&render(&[])).unwrap();
    assert_ne!(again.secret("speil-psk", "psk").unwrap(), key.as_bytes());
    // Own Secret: no generated one, the registry reads the given one.
    let own = Render::parse(&render(&["--set", "speil.psk.existingSecret=mine"])).unwrap();
    assert!(own.find("Secret", "speil-psk").is_none());
    let spec = own.pod_spec("DaemonSet", "speil").unwrap();
    let volumes = serde_yaml::to_string(&spec["volumes"]).unwrap();
    assert!(volumes.contains("secretName: mine"), "{volumes}");
    // Off: no flag, no Secret.
    let off = Render::parse(&render(&["--set", "speil.psk.enabled=false"])).unwrap();
    assert!(off.all("Secret").is_empty());
    let registry = off.container("DaemonSet", "speil", "registry").unwrap();
    assert!(
        !registry
            .args
            .iter()
            .any(|a| a.starts_with("--libp2p-psk-file"))
    );
    // The NetworkPolicy admits the router port only from speil's pods.
    let np = Render::parse(&render(&["--set", "networkPolicy.enabled=true"])).unwrap();
    let policy = &np.all("NetworkPolicy")[0]["spec"]["ingress"];
    assert_eq!(policy[0]["ports"][0]["port"], "router-tcp");
    assert_eq!(
        policy[0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "speil"
    );
    let open = serde_yaml::to_string(&policy[1]).unwrap();
    assert!(!open.contains("router"), "{open}");
}

/// `deploy/speil.yaml`: the default render without the generated Secret (plain manifests
/// cannot make a key per install; deploy/README.md says how to create it).
fn deploy_text() -> String {
    let text = render(&[]);
    let mut out = String::from(
        "# speil with the chart's default values (charts/speil), namespace `speil`.\n\
         # Generated by `UPDATE_DEPLOY=1 cargo test -p speil-tests --test chart`; do not edit.\n\
         # Create the namespace and the pre-shared key Secret `speil-psk` first: see README.md here.\n",
    );
    for doc in text.split("\n---\n") {
        if doc.contains("\nkind: Secret\n") {
            continue;
        }
        let doc = doc.trim_start_matches("---\n").trim();
        if doc.is_empty() {
            continue;
        }
        out.push_str("---\n");
        out.push_str(doc);
        out.push('\n');
    }
    out
}

#[test]
fn deploy_is_the_default_render() {
    if !require_tools() {
        return;
    }
    let path = repo().join("deploy/speil.yaml");
    let want = deploy_text();
    if std::env::var("UPDATE_DEPLOY").as_deref() == Ok("1") {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "deploy/speil.yaml differs from the chart's default render; run \
         `UPDATE_DEPLOY=1 cargo test -p speil-tests --test chart deploy` and commit it"
    );
}

/// The rendered containers of each variant run on one containerd 2.3.4 node, one after the
/// other (each uninstall restores the node for the next).
#[test]
fn rendered_containers_run_on_a_node() {
    if !require_tools() || !require_components() || !require_sandbox() {
        return;
    }
    let image = images::small().unwrap();
    let (h, upstream) = pod::node_holding(image).unwrap();
    let node = &h.nodes[0];

    let own_key = "/key/swarm/psk/1.0.0/\n/base16/\n\
                   0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0\n";
    let spegel_file = spegel_values().display().to_string();
    let v4: IpAddr = "10.78.0.5".parse().unwrap();
    let v6: IpAddr = "fd00:78::5".parse().unwrap();
    let cases: Vec<(&str, Vec<&str>, IpAddr)> = vec![
        ("default", vec![], v4),
        ("default6", vec![], v6),
        (
            "talos",
            // The harness's containerd has its config_path elsewhere, so the check would
            // (rightly) refuse: Talos paths run with the check off.
            vec![
                "--set",
                "spegel.containerdRegistryConfigPath=/etc/cri/conf.d/hosts",
                "--set",
                "speil.containerdConfig.verify=false",
            ],
            v4,
        ),
        (
            "ownpsk",
            vec!["--set", "speil.psk.existingSecret=my-psk"],
            v4,
        ),
        (
            "nodeip",
            vec![
                "--set",
                "service.registry.nodeIp=fd00:78::5",
                "--set",
                "spegel.logLevel=DEBUG",
            ],
            v6,
        ),
        ("spegelvals", vec!["-f", spegel_file.as_str()], v4),
    ];
    for (tag, args, ip) in cases {
        let r = Render::parse(&render(&args)).unwrap();
        let work = h.dir().join(format!("pod-{tag}"));
        std::fs::create_dir_all(&work).unwrap();
        let mut secrets = BTreeMap::new();
        secrets.insert(
            "my-psk".to_owned(),
            BTreeMap::from([("psk".to_owned(), own_key.as_bytes().to_vec())]),
        );
        let outcome = pod::lifecycle(Lifecycle {
            render: &r,
            node,
            upstream: &upstream,
            image,
            node_ip: ip,
            tag: &format!("chart-{tag}"),
            work: &work,
            secrets,
        })
        .unwrap_or_else(|e| panic!("{tag}: {e:#}"));
        let target = match ip {
            IpAddr::V4(ip) => format!("http://{ip}:30020"),
            IpAddr::V6(ip) => format!("http://[{ip}]:30020"),
        };
        let hosts = &outcome.configured[Path::new("_default/hosts.toml")];
        assert!(
            hosts.contains(&format!("[host.'{target}']")),
            "{tag}: {hosts}"
        );
        // The chart mounts containerd's config directory: the check reads the file containerd
        // 2.3.4 runs with (through the mount), it is not skipped.
        if tag != "talos" {
            assert!(
                outcome
                    .registry_log
                    .contains("containerd configuration verified")
                    && outcome
                        .registry_log
                        .contains("toml /etc/containerd/config.toml"),
                "{tag}: {}",
                outcome.registry_log
            );
        }
    }
}

/// The chart as a cluster runs it: two nodes in network namespaces of their own on one
/// bridge (IPv6 only), each with its containerd 2.3.4 and the rendered pods (`configuration`,
/// then `registry`, with the render's pre-shared key), the upstream on a third host. Node 0
/// pulls through the CRI; the upstream stops; node 1's pull is served by node 0 through both
/// registry containers. There is no kube-proxy, so the registry port is set to the node port
/// (`service.registry.port=30020`): the mirror target containerd gets,
/// `http://$(NODE_IP):30020`, is then the registry container itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_pods_serve_pulls_between_nodes() {
    use speil_tests::netns::{Lan, REGISTRY_NAME};
    if !require_tools() || !speil_tests::netns::require_netns() || !require_sandbox() {
        return;
    }
    let text = render(&[
        "--set",
        "service.registry.port=30020",
        "--set",
        "spegel.mirroredRegistries={http://registry.test:5000}",
    ]);
    let r = Render::parse(&text).unwrap();
    let ip = |h: u8| -> IpAddr { format!("2001:db8::{h}").parse().unwrap() };
    let bootstrap = "speil-bootstrap.speil.svc.cluster.local";
    let cleanup = "speil-cleanup.speil.svc.cluster.local";
    let mut hosts = format!("{} {REGISTRY_NAME}\n", ip(10));
    for h in [11, 12] {
        hosts.push_str(&format!(
            "{} {bootstrap} {bootstrap}. {cleanup} {cleanup}.\n",
            ip(h)
        ));
    }
    let lan = Lan::create(
        &Lan::prefix("chart"),
        &[vec![ip(10)], vec![ip(11)], vec![ip(12)]],
        &hosts,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut registry = speil_tests::Registry::spawn_in(
        &dir.path().join("registry"),
        lan.hosts[0].name(),
        ":5000",
        std::net::SocketAddr::new(ip(10), 5000),
        &format!("{REGISTRY_NAME}:5000"),
    )
    .unwrap();
    let mut nodes = Vec::new();
    for i in 0..2 {
        nodes.push(
            speil_tests::Node::spawn_in(
                &dir.path().join(format!("n{i}")),
                i,
                ip(11 + i as u8),
                Generation::V2_3,
                Some(lan.hosts[i + 1].name()),
            )
            .unwrap(),
        );
    }
    registry
        .wait_ready(std::time::Duration::from_secs(10))
        .unwrap();
    for n in &mut nodes {
        n.wait_ready(std::time::Duration::from_secs(10)).unwrap();
    }
    let image = images::small().unwrap();
    registry.push(image).unwrap();
    let upstream = registry.host();

    let mut running = Vec::new();
    let mut sandboxes = Vec::new();
    let mut pods = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let node_ip = ip(11 + i as u8);
        let work = dir.path().join(format!("pod{i}"));
        std::fs::create_dir_all(&work).unwrap();
        let p = pod::NodePods::new(&r, node, node_ip, &work, &BTreeMap::new()).unwrap();
        let sandbox = pod::Sandbox::existing(lan.hosts[i + 1].name(), node_ip);
        p.configure(&sandbox).unwrap();
        sandboxes.push(sandbox);
        pods.push(p);
    }
    // Every node's registry container starts, then each must become ready (they find each
    // other through the bootstrap Service's name).
    for (p, sandbox) in pods.iter().zip(&sandboxes) {
        running.push(p.spawn_registry(sandbox).unwrap());
    }
    for ((p, sandbox), r) in pods.iter().zip(&sandboxes).zip(running.iter_mut()) {
        p.wait_ready(sandbox, r, std::time::Duration::from_secs(30))
            .unwrap();
    }
    nodes[0]
        .cri_pull(&image.reference(&upstream))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", running[0].log_text()));
    // Node 1's registry finds the image on node 0 before the upstream goes.
    let manifest = format!(
        "{}:30020/v2/{}/manifests/{}?ns={}",
        sandboxes[1].base_url(),
        image.name,
        image.tag,
        upstream.replace(':', "%3A")
    );
    let logs = [running[1].log.clone()];
    pod::wait_for(
        "node 1 finds the image on node 0",
        std::time::Duration::from_secs(20),
        || Ok(sandboxes[1].get(&manifest)?.0 == 200),
        &logs,
    )
    .unwrap();
    registry.stop();
    nodes[1]
        .cri_pull(&image.reference(&upstream))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", running[1].log_text()));
    let log = running[1].log_text();
    for layer in &image.host_platform().unwrap().layers {
        let served = log
            .lines()
            .any(|l| l.contains(layer.as_str()) && l.contains("\"source\":\"peer\""));
        assert!(served, "{layer} was not served by a peer on node 1:\n{log}");
    }
    let (code, metrics) = sandboxes[1]
        .get(&format!("{}:9090/metrics", sandboxes[1].base_url()))
        .unwrap();
    assert_eq!(code, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("speil_served_bytes_total{source=\"peer\"}")),
        "{metrics}"
    );
    drop(running);
    // Uninstall: a cleanup pod per node, and the wait pod (on node 0) until both are ready.
    let mut cleanups: Vec<_> = pods
        .iter()
        .zip(&sandboxes)
        .map(|(p, s)| p.start_cleanup(s).unwrap())
        .collect();
    pods[0].wait_cleanup(&sandboxes[0], &mut cleanups).unwrap();
    for n in &nodes {
        let left: Vec<_> = std::fs::read_dir(n.certs_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.is_empty(),
            "certs.d not restored (it was empty): {left:?}"
        );
    }
}

//! The `speil` binary: exit codes, one-line errors, `doctor` on the fixtures, and
//! `configuration` / `cleanup` / `cleanup-wait` on a temporary directory and loopback ports.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn speil() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_speil"));
    // Keep the environment from leaking flags into the tests.
    for var in [
        "LOG_LEVEL",
        "FORMAT",
        "OS_RELEASE",
        "SYS_VENDOR",
        "DISTRIBUTION",
        "HOST_ROOT",
        "CONTAINERD_CONFIG",
        "CONTAINERD_REGISTRY_CONFIG_PATH",
        "MIRROR_TARGETS",
        "MIRRORED_REGISTRIES",
        "PERIOD",
        "THRESHOLD",
        "PROBE_ENDPOINT",
        "ADDR",
    ] {
        c.env_remove(var);
    }
    c
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures/containerd-config")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run speil")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_usage_error(o: &Output, flag: &str) {
    assert_eq!(o.status.code(), Some(2), "{}", stderr(o));
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(flag), "{err}");
}

fn doctor_json(fixture: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = run(speil()
        .arg("doctor")
        .arg("--containerd-config")
        .arg(fixtures().join(fixture))
        .args(["--os-release", "", "--sys-vendor", "", "--format", "json"])
        .args(extra));
    let doc = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{fixture}: {e}: {}", stderr(&out)));
    (out.status.code(), doc)
}

#[test]
fn doctor_on_every_fixture() {
    let k3s_path = "/var/lib/rancher/k3s/agent/etc/containerd/certs.d";
    let cases: &[(&str, &[&str], &str, &[&str])] = &[
        ("aks.toml", &[], "aks", &[]),
        ("aks-containerd2.toml", &[], "aks", &[]),
        (
            "minikube.toml",
            &[],
            "minikube",
            &["discard_unpacked_layers"],
        ),
        ("eks-al2.toml", &[], "eks-al2", &["discard_unpacked_layers"]),
        (
            "eks-al2-containerd2.toml",
            &[],
            "eks-al2",
            &["discard_unpacked_layers", "config_path_list"],
        ),
        (
            "eks-al2023.toml",
            &[],
            "eks-al2023",
            &["discard_unpacked_layers"],
        ),
        (
            "eks-al2023-containerd2.toml",
            &[],
            "eks-al2023",
            &["discard_unpacked_layers", "config_path_list"],
        ),
        (
            "eks-al2023-nodeadm-merged-discard-false.toml",
            &[],
            "eks-al2023",
            &[],
        ),
        ("k3s.toml", &[], "k3s", &["config_path_missing_dir"]),
        (
            "k3s.toml",
            &["--containerd-registry-config-path", k3s_path],
            "k3s",
            &[],
        ),
        (
            "k3s-containerd1.toml",
            &[],
            "k3s",
            &["config_path_missing_dir"],
        ),
        (
            "kind.toml",
            &[],
            "kind",
            &[
                "config_path_not_set",
                "discard_unpacked_layers",
                "content_sharing_shared",
            ],
        ),
        (
            "talos.toml",
            &[],
            "talos",
            &["config_path_missing_dir", "discard_unpacked_layers"],
        ),
        (
            "talos.toml",
            &["--containerd-registry-config-path", "/etc/cri/conf.d/hosts"],
            "talos",
            &["discard_unpacked_layers"],
        ),
        (
            "gke.toml",
            &[],
            "gke",
            &[
                "config_path_not_set",
                "legacy_registry_mirrors",
                "discard_unpacked_layers",
            ],
        ),
        (
            "digitalocean.toml",
            &[],
            "containerd-1.x",
            &["config_path_not_set"],
        ),
        (
            "digitalocean.toml",
            &["--distribution", "digitalocean"],
            "digitalocean",
            &["config_path_not_set"],
        ),
        (
            "containerd-1.6-default.toml",
            &[],
            "containerd-1.x",
            &["config_path_not_set"],
        ),
        (
            "containerd-2.x-default.toml",
            &[],
            "containerd-2.x",
            &["config_path_not_set"],
        ),
    ];
    for (fixture, extra, dist, codes) in cases {
        let (code, doc) = doctor_json(fixture, extra);
        let ready = !codes
            .iter()
            .any(|c| !matches!(*c, "config_path_list" | "content_sharing_shared"));
        assert_eq!(doc["distribution"], *dist, "{fixture}");
        assert_eq!(doc["ready"], ready, "{fixture}");
        assert_eq!(code, Some(if ready { 0 } else { 1 }), "{fixture}");
        let got: Vec<&str> = doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["code"].as_str().unwrap())
            .collect();
        assert_eq!(got, *codes, "{fixture} {extra:?}");
        assert_eq!(doc["fix"].is_null(), ready, "{fixture}");
    }
}

#[test]
fn doctor_follows_imports_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("etc/cri/conf.d")).unwrap();
    std::fs::copy(
        fixtures().join("talos-cri-containerd.toml"),
        root.join("etc/cri/containerd.toml"),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("talos.toml"),
        root.join("etc/cri/conf.d/cri.toml"),
    )
    .unwrap();
    let out = run(speil()
        .arg("doctor")
        .arg("--containerd-config")
        .arg(root.join("etc/cri/containerd.toml"))
        .arg("--host-root")
        .arg(root)
        .args(["--os-release", "", "--sys-vendor", ""])
        .args(["--containerd-registry-config-path", "/etc/cri/conf.d/hosts"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("distribution: Talos (talos)"), "{text}");
    assert!(text.contains("/etc/cri/conf.d/cri.toml"), "{text}");
    assert!(
        text.contains(
            "error: containerd discards unpacked layers: set discard_unpacked_layers = false"
        ),
        "{text}"
    );
    assert!(text.contains("20-customization.part"), "{text}");
}

#[test]
fn doctor_reports_unreadable_and_invalid_files() {
    let out = run(speil()
        .args(["doctor", "--containerd-config", "/nonexistent/config.toml"])
        .args(["--os-release", "", "--sys-vendor", ""]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/config.toml"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "version = 2\n[plugins\n").unwrap();
    let out = run(speil()
        .arg("doctor")
        .arg("--containerd-config")
        .arg(&bad)
        .args(["--os-release", "", "--sys-vendor", ""]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("not valid TOML"), "{err}");
}

#[test]
fn usage_errors_are_one_line_and_exit_2() {
    assert_usage_error(&run(speil().arg("configuration")), "--mirror-targets");
    assert_usage_error(
        &run(speil().args([
            "cleanup-wait",
            "--probe-endpoint",
            "a:1",
            "--period",
            "soon",
        ])),
        "--period",
    );
    assert_usage_error(
        &run(speil()
            .args(["cleanup-wait", "--probe-endpoint", "a:1"])
            .env("PERIOD", "x")),
        "--period",
    );
    assert_usage_error(
        &run(speil().args(["doctor", "--format", "yaml"])),
        "--format",
    );
    assert_usage_error(&run(speil().args(["doctor", "--bogus"])), "--bogus");
    assert_usage_error(&run(speil().arg("cleanup")), "--addr");
    assert_usage_error(&run(speil().args(["cleanup", "--addr", "nope"])), "--addr");
    assert_usage_error(&run(speil().args(["registry"])), "--bootstrap-kind");
    assert_usage_error(
        &run(speil().args([
            "registry",
            "--bootstrap-kind",
            "dns",
            "--mirror-resolve-timeout",
            "5",
        ])),
        "--mirror-resolve-timeout",
    );
    assert_usage_error(
        &run(speil().args(["configuration", "--mirror-targets", "ftp://x"])),
        "--mirror-targets",
    );
    assert_usage_error(
        &run(speil().args([
            "configuration",
            "--mirror-targets",
            "http://a:1",
            "--mirrored-registries",
            "https://a/b",
        ])),
        "--mirrored-registries",
    );
    assert_usage_error(
        &run(speil().args(["--log-level", "LOUD", "version"])),
        "--log-level",
    );
    assert_usage_error(&run(speil().arg("frobnicate")), "frobnicate");
    assert_usage_error(&run(&mut speil()), "command");
}

/// Every line on stderr is one flat JSON object with `time`, `level` and `msg` at the top
/// level, as Spegel's slog handler writes them, and the fields beside them.
fn assert_flat_json_lines(err: &str) -> Vec<serde_json::Value> {
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            let o = v
                .as_object()
                .unwrap_or_else(|| panic!("not an object: {l}"));
            let time = o["time"].as_str().unwrap_or_else(|| panic!("no time: {l}"));
            // RFC 3339 in UTC with milliseconds: 2026-12-02T12:52:31.123Z.
            assert_eq!(time.len(), 24, "{l}");
            assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{l}");
            let level = o["level"]
                .as_str()
                .unwrap_or_else(|| panic!("no level: {l}"));
            assert!(["DEBUG", "INFO", "WARN", "ERROR"].contains(&level), "{l}");
            assert!(o["msg"].is_string(), "no msg: {l}");
            for (k, v) in o {
                assert!(!v.is_object() && k != "fields", "nested {k}: {l}");
            }
            v
        })
        .collect();
    assert!(!lines.is_empty());
    lines
}

#[test]
fn log_lines_are_flat_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(speil()
        .args(["--log-level", "DEBUG", "configuration"])
        .arg("--containerd-registry-config-path")
        .arg(dir.path())
        .args(["--mirror-targets", "http://127.0.0.1:30020"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines = assert_flat_json_lines(&stderr(&out));
    let written = lines
        .iter()
        .find(|v| v["msg"] == "mirror configuration written")
        .expect("the configuration line");
    assert_eq!(written["level"], "INFO");
    assert_eq!(written["path"], dir.path().display().to_string());
    assert!(written["operations"].is_u64(), "{written}");
    // A start-up failure is a JSON line too, at ERROR.
    let out = run(speil()
        .args(["registry", "--bootstrap-kind", "http"])
        .args(["--http-bootstrap-url", "http://127.0.0.1:9/id"])
        .args(["--containerd-sock", "/nonexistent/containerd.sock"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = assert_flat_json_lines(&stderr(&out));
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR");
    assert_eq!(last["command"], "registry");
    assert!(
        last["msg"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/containerd.sock"),
        "{last}"
    );
    // `--log-level WARN` keeps warnings and errors only.
    let out = run(speil()
        .args(["--log-level", "WARN", "configuration"])
        .arg("--containerd-registry-config-path")
        .arg(dir.path())
        .args(["--mirror-targets", "http://127.0.0.1:30020"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

#[test]
fn version_json() {
    let out = run(speil().args(["version", "--format", "json"]));
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["runtime"], "tokio");
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["rustc"].as_str().unwrap().starts_with("rustc "));
    assert!(doc["commit"].is_string() && doc["target"].is_string());
}

#[test]
fn registry_start_up_errors_are_one_line() {
    let http = [
        "registry",
        "--bootstrap-kind",
        "http",
        "--http-bootstrap-url",
        "http://127.0.0.1:9/id",
    ];
    // Flags are checked first: usage errors, exit 2, naming the flag.
    let out = run(speil().args(["registry", "--bootstrap-kind", "dns"]));
    assert_usage_error(&out, "--dns-bootstrap-domain");
    let out = run(speil().args(http).args(["--registry-filters", "(unclosed"]));
    assert_usage_error(&out, "--registry-filters");
    let out = run(speil().args(["registry", "--bootstrap-kind", "static"]));
    assert_usage_error(&out, "--static-bootstrap-peers");
    // Then the environment: containerd missing is a start-up failure, exit 1, one line.
    let out = run(speil()
        .args(http)
        .args(["--containerd-sock", "/nonexistent/containerd.sock"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/containerd.sock"), "{err}");
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn readyz(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    // As kubelet's prober asks (it disables keep-alive).
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_ready(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if readyz(addr).is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{addr} never became ready");
}

fn snapshot(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if p.is_dir() {
                out.push((rel, b"<dir>".to_vec()));
                walk(base, &p, out);
            } else {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

#[test]
fn configuration_then_cleanup_then_cleanup_wait() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("certs.d");
    std::fs::create_dir_all(root.join("ghcr.io")).unwrap();
    std::fs::write(
        root.join("ghcr.io/hosts.toml"),
        "server = \"https://ghcr.io\"\n\n[host.\"https://ghcr-mirror.example\"]\n",
    )
    .unwrap();
    std::fs::write(root.join("ghcr.io/ca.crt"), b"CA").unwrap();
    let before = snapshot(&root);

    // Flags from the environment, as the Helm chart's init container may set them.
    for _ in 0..2 {
        let out = run(speil()
            .arg("configuration")
            .env("CONTAINERD_REGISTRY_CONFIG_PATH", &root)
            .env("MIRROR_TARGETS", "127.0.0.21:30020,http://127.0.0.22:30020")
            .env("RESOLVE_TAGS", "false"));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let hosts = std::fs::read_to_string(root.join("_default/hosts.toml")).unwrap();
    assert_eq!(
        hosts,
        "[host.'http://127.0.0.21:30020']\ncapabilities = ['pull']\ndial_timeout = '200ms'\n\n[host.'http://127.0.0.22:30020']\ncapabilities = ['pull']\ndial_timeout = '200ms'\n"
    );
    let ghcr = std::fs::read_to_string(root.join("ghcr.io/hosts.toml")).unwrap();
    assert!(ghcr.starts_with("server = \"https://ghcr.io\"\n\n[host.'http://127.0.0.21:30020']"));
    assert!(ghcr.ends_with("[host.\"https://ghcr-mirror.example\"]\n"));
    assert_eq!(std::fs::read(root.join("ghcr.io/ca.crt")).unwrap(), b"CA");
    // The backup holds the original tree and the record of what was moved and written.
    let mut backup = snapshot(&root.join("_backup"));
    let record = backup.remove(0);
    assert_eq!(record.0, ".speil-state");
    assert_eq!(backup, before);

    // cleanup restores, then serves /readyz until SIGTERM.
    let port = free_port("127.0.0.1");
    let addr = format!("127.0.0.1:{port}");
    let child = speil()
        .args(["cleanup", "--addr", &addr])
        .arg("--containerd-registry-config-path")
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cleanup = Killed(child);
    wait_ready(&addr);
    assert_eq!(snapshot(&root), before);
    let other = readyz(&addr).map(|_| ()).and_then(|_| {
        let mut s = TcpStream::connect(&addr).ok()?;
        s.write_all(b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    });
    assert!(other.unwrap().starts_with("HTTP/1.1 404"));

    // cleanup-wait sees the one cleanup pod ready three times in a row.
    let started = Instant::now();
    let out = run(speil().args([
        "cleanup-wait",
        "--probe-endpoint",
        &addr,
        "--period",
        "50ms",
        "--threshold",
        "3",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(5));

    // SIGTERM ends cleanup with exit 0.
    let pid = cleanup.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = cleanup.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn cleanup_wait_keeps_waiting_while_nothing_is_ready() {
    let port = free_port("127.0.0.1");
    let child = speil()
        .args([
            "cleanup-wait",
            "--probe-endpoint",
            &format!("127.0.0.1:{port}"),
            "--period",
            "20ms",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut waiting = Killed(child);
    std::thread::sleep(Duration::from_millis(500));
    assert!(waiting.0.try_wait().unwrap().is_none(), "exited early");
}

#[test]
fn configuration_reports_an_invalid_existing_hosts_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("certs.d");
    std::fs::create_dir_all(root.join("ghcr.io")).unwrap();
    std::fs::write(root.join("ghcr.io/hosts.toml"), "[broken").unwrap();
    let out = run(speil()
        .arg("configuration")
        .arg("--containerd-registry-config-path")
        .arg(&root)
        .args(["--mirror-targets", "http://127.0.0.21:30020"]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("ghcr.io/hosts.toml"), "{err}");
    // Nothing was moved.
    assert!(!root.join("_backup").exists());
}

// ---- live check against a real containerd (skipped when containerd is not installed) ----

struct Containerd {
    child: Child,
    _dir: tempfile::TempDir,
    sock: PathBuf,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether containerd is installed. Without it, `what` cannot run: a failure with `CI=true`,
/// else a loud skip.
fn containerd_available(what: &str) -> bool {
    if containerd_binary().is_some() {
        return true;
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "containerd is not installed (apt-get install containerd): the {what} cannot run"
    );
    eprintln!("\n!!!!! SKIPPED: containerd not installed, the {what} did not run !!!!!\n");
    false
}

fn containerd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("containerd"))
        .find(|p| p.is_file())
}

fn start_containerd(cri_extra: &str) -> Option<Containerd> {
    let bin = containerd_binary()?;
    let dir = tempfile::Builder::new()
        .prefix("ctd")
        .tempdir_in("/tmp")
        .ok()?;
    let d = dir.path().display().to_string();
    let config = format!(
        "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n[grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_tcp_service = true\n  [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    bin_dir = \"{d}/cni-bin\"\n    conf_dir = \"{d}/cni-conf\"\n{cri_extra}"
    );
    std::fs::write(dir.path().join("config.toml"), config).ok()?;
    let child = Command::new(bin)
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let sock = dir.path().join("c.sock");
    let c = Containerd {
        child,
        _dir: dir,
        sock,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if c.sock.exists() {
            // The CRI plugin registers shortly after the socket appears.
            std::thread::sleep(Duration::from_millis(300));
            return Some(c);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn doctor_live_against_containerd() {
    if !containerd_available("live doctor check") {
        return;
    }
    let cases: &[(&str, &[&str], bool)] = &[
        (
            "  [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    config_path = \"/etc/containerd/certs.d:/x\"\n",
            &[],
            true,
        ),
        (
            "  [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    discard_unpacked_layers = true\n  [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    config_path = \"/etc/containerd/certs.d\"\n",
            &["discard_unpacked_layers"],
            false,
        ),
        ("", &["config_path_not_set"], false),
    ];
    for (extra, codes, ready) in cases {
        let Some(ctd) = start_containerd(extra) else {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "containerd did not start: the live check cannot run"
            );
            eprintln!(
                "\n!!!!! SKIPPED: containerd did not start, the live doctor check did not run !!!!!\n"
            );
            return;
        };
        let out = run(speil()
            .arg("doctor")
            .arg("--containerd-sock")
            .arg(&ctd.sock)
            .args(["--format", "json", "--os-release", "", "--sys-vendor", ""]));
        let doc: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
        assert_eq!(doc["source"], "cri-status", "{doc}");
        assert_eq!(doc["ready"], *ready, "{doc}");
        assert_eq!(out.status.code(), Some(if *ready { 0 } else { 1 }));
        let got: Vec<&str> = doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["code"].as_str().unwrap())
            .collect();
        assert_eq!(got, *codes, "{doc}");
    }
}

#[test]
fn registry_refuses_a_misconfigured_containerd() {
    if !containerd_available("start-up check") {
        return;
    }
    let extra = "  [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    discard_unpacked_layers = true\n  [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    config_path = \"/etc/containerd/certs.d\"\n";
    let ctd = start_containerd(extra).expect("containerd did not start");
    let registry = |verify: &str| {
        speil()
            .args(["registry", "--bootstrap-kind", "http"])
            .args(["--http-bootstrap-url", "http://127.0.0.1:9/id"])
            .arg("--containerd-sock")
            .arg(&ctd.sock)
            .args(["--registry-addr", "127.0.0.1:0"])
            .args(["--router-addr", "127.0.0.1:0"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .arg(format!("--verify-containerd-config={verify}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = registry("true").wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("containerd discards unpacked layers: set discard_unpacked_layers = false"),
        "{err}"
    );
    assert!(err.contains("--verify-containerd-config=false"), "{err}");
    // With the check off it starts (and keeps running until stopped).
    let mut child = registry("false");
    std::thread::sleep(Duration::from_millis(1500));
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        still_running,
        "exited: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_one_node_dns_cluster_becomes_ready() {
    if !containerd_available("readiness check") {
        return;
    }
    let extra = "  [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    config_path = \"/etc/containerd/certs.d\"\n";
    let ctd = start_containerd(extra).expect("containerd did not start");
    let registry_port = free_port("127.0.0.1");
    let router_port = free_port("127.0.0.1");
    // The router listens on every interface (as in a DaemonSet) and the headless Service name
    // resolves to this node only: it is alone, and ready.
    let mut child = speil()
        .args(["registry", "--bootstrap-kind", "dns"])
        .args(["--dns-bootstrap-domain", "localhost"])
        .arg(format!("--router-addr=:{router_port}"))
        .arg(format!("--registry-addr=127.0.0.1:{registry_port}"))
        .args(["--metrics-addr", "127.0.0.1:0"])
        .arg("--containerd-sock")
        .arg(&ctd.sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    let ready = loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", registry_port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            if resp.starts_with("HTTP/1.1 200") {
                break true;
            }
            last = resp.lines().next().unwrap_or("").to_owned();
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        ready,
        "not ready ({last}): {}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

//! `speil doctor` and the start-up verification of `speil registry` against a real containerd
//! of each generation: what speil reads, and where it says it read it (SPEC §6).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use speil_tests::cluster::configure;
use speil_tests::{Generation, Harness, Ports, Speil, images, require_components, speil};

fn doctor(h: &Harness) -> (Output, serde_json::Value) {
    doctor_with(h, &[])
}

fn doctor_with(h: &Harness, extra: &[&str]) -> (Output, serde_json::Value) {
    let out = Command::new(speil::binary().unwrap())
        .arg("doctor")
        .arg("--containerd-sock")
        .arg(h.nodes[0].socket())
        .arg(format!(
            "--containerd-registry-config-path={}",
            h.nodes[0].certs_dir().display()
        ))
        .args(["--format", "json", "--os-release", "", "--sys-vendor", ""])
        .args(extra)
        .output()
        .unwrap();
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    (out, doc)
}

fn findings(doc: &serde_json::Value) -> Vec<String> {
    doc["findings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `speil registry` with default verification for node 0; returns its exit status when it
/// exits within `within`, else `None` (it is running) after stopping it.
/// A pre-shared key file's text (`/key/swarm/psk/1.0.0/`).
fn libp2p_psk_text() -> String {
    format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", "ab".repeat(32))
}

fn registry_exit(h: &Harness, within: Duration) -> (Option<i32>, String) {
    registry_exit_with(h, within, &[])
}

/// [`registry_exit`] with more flags.
fn registry_exit_with(h: &Harness, within: Duration, extra: &[String]) -> (Option<i32>, String) {
    let n = &h.nodes[0];
    let a = n.address;
    let mut child = Command::new(speil::binary().unwrap())
        .args(["registry", "--bootstrap-kind", "http"])
        .arg(format!("--http-bootstrap-url=http://{a}:9/id"))
        .arg(format!("--containerd-sock={}", n.socket().display()))
        .arg(format!(
            "--containerd-registry-config-path={}",
            n.certs_dir().display()
        ))
        .arg(format!("--registry-addr={a}:0"))
        .arg(format!("--router-addr={a}:0"))
        .arg(format!("--metrics-addr={a}:0"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + within;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status.code().unwrap_or(-1));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Rewrites node 0's config file with `edit` (which must change it) and restarts containerd,
/// so that it runs with the new file.
fn reconfigure(h: &mut Harness, edit: impl Fn(&str) -> String) {
    let config = h.nodes[0].config_path();
    let text = std::fs::read_to_string(&config).unwrap();
    let changed = edit(&text);
    assert_ne!(changed, text);
    std::fs::write(&config, changed).unwrap();
    h.nodes[0].kill().unwrap();
    h.nodes[0].restart().unwrap();
}

fn on_containerd_2(generation: Generation) {
    if !require_components() {
        return;
    }
    let mut h = Harness::start_generations(&[generation]).unwrap();
    let config = h.nodes[0].config_path();
    let certs = h.nodes[0].certs_dir();

    // 2.4 reports its live values through Introspection; on 2.3.4 the file containerd runs
    // with is found through /proc and named as the source.
    let (out, doc) = doctor(&h);
    let expected_source = match generation {
        Generation::V2_4 => "introspection".to_string(),
        _ => format!("toml {}", config.display()),
    };
    assert_eq!(doc["source"], expected_source, "{doc}");
    assert!(
        doc["runtime_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("v2.")),
        "{doc}"
    );
    assert_eq!(doc["config_path"], certs.display().to_string(), "{doc}");
    assert_eq!(doc["discard_unpacked_layers"], false, "{doc}");
    assert_eq!(doc["distribution"], "containerd-2.x", "{doc}");
    assert_eq!(doc["ready"], true, "{doc}");
    assert_eq!(out.status.code(), Some(0), "{doc}");
    // Default flags: the registry starts (it keeps running until stopped).
    let (code, err) = registry_exit(&h, Duration::from_secs(3));
    assert_eq!(code, None, "registry exited: {err}");
    // Without a pre-shared key the DHT is open, and the log says so.
    assert!(err.contains("no --libp2p-psk-file"), "{err}");
    // A key file others can read is named at start; a link at the identity key is refused.
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("psk");
    std::fs::write(&psk, libp2p_psk_text()).unwrap();
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data = dir.path().join("data");
    let flags = [
        format!("--libp2p-psk-file={}", psk.display()),
        format!("--data-dir={}", data.display()),
    ];
    let (code, err) = registry_exit_with(&h, Duration::from_secs(2), &flags);
    assert_eq!(code, None, "registry exited: {err}");
    assert!(
        err.contains(&format!(
            "--libp2p-psk-file: {} has mode 0644",
            psk.display()
        )),
        "{err}"
    );
    assert!(!err.contains("no --libp2p-psk-file"), "{err}");
    let key = data.join("private.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::rename(&key, dir.path().join("moved.key")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("moved.key"), &key).unwrap();
    let (code, err) = registry_exit_with(&h, Duration::from_secs(2), &flags);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("symbolic link"), "{err}");

    // A verified error refuses the start with the doctor's message.
    let text = std::fs::read_to_string(&config).unwrap();
    let bad = text.replace(
        "discard_unpacked_layers = false",
        "discard_unpacked_layers = true",
    );
    assert_ne!(bad, text);
    std::fs::write(&config, &bad).unwrap();
    if generation == Generation::V2_4 {
        // The live value, not the file: containerd has not read the change yet.
        let (out, doc) = doctor(&h);
        assert_eq!(doc["source"], "introspection", "{doc}");
        assert_eq!(doc["discard_unpacked_layers"], false, "{doc}");
        assert_eq!(out.status.code(), Some(0), "{doc}");
        h.nodes[0].kill().unwrap();
        h.nodes[0].restart().unwrap();
    }
    let (out, doc) = doctor(&h);
    assert_eq!(doc["source"], expected_source, "{doc}");
    assert_eq!(doc["ready"], false, "{doc}");
    assert_eq!(findings(&doc), ["discard_unpacked_layers"], "{doc}");
    assert_eq!(out.status.code(), Some(1));
    // The fix is in containerd 2.x's keys only.
    let fix = doc["fix"].to_string();
    assert!(fix.contains("io.containerd.cri.v1.images"), "{fix}");
    assert!(!fix.contains("io.containerd.grpc.v1.cri"), "{fix}");
    let (code, err) = registry_exit(&h, Duration::from_secs(10));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("containerd discards unpacked layers: set discard_unpacked_layers = false"),
        "{err}"
    );
}

#[test]
fn doctor_and_registry_read_the_running_config_on_containerd_2_3() {
    on_containerd_2(Generation::V2_3);
}

#[test]
fn doctor_and_registry_read_the_running_config_on_containerd_2_4() {
    on_containerd_2(Generation::V2_4);
}

#[test]
fn containerd_1_6_is_read_from_the_cri_status() {
    if !require_components() {
        return;
    }
    let mut h = Harness::start_generations(&[Generation::V1_6]).unwrap();
    let (out, doc) = doctor(&h);
    assert_eq!(doc["source"], "cri-status", "{doc}");
    assert!(
        doc["runtime_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.6")),
        "{doc}"
    );
    assert_eq!(doc["distribution"], "containerd-1.x", "{doc}");
    assert_eq!(doc["ready"], true, "{doc}");
    assert_eq!(out.status.code(), Some(0));
    // A 1.x error is fixed in 1.x keys only.
    reconfigure(&mut h, |t| {
        t.replace(
            "discard_unpacked_layers = false",
            "discard_unpacked_layers = true",
        )
    });
    let (out, doc) = doctor(&h);
    assert_eq!(findings(&doc), ["discard_unpacked_layers"], "{doc}");
    assert_eq!(out.status.code(), Some(1));
    let fix = doc["fix"].to_string();
    assert!(
        fix.contains("[plugins.\\\"io.containerd.grpc.v1.cri\\\".containerd]"),
        "{fix}"
    );
    assert!(!fix.contains("io.containerd.cri.v1"), "{fix}");
    assert!(!doc.to_string().contains("use_local_image_pull"), "{doc}");
}

/// Lines of speil's log about requests for `/v2/<name>/…`.
fn requests_for(s: &Speil, name: &str) -> usize {
    let path = format!("/v2/{name}/");
    s.log_text().lines().filter(|l| l.contains(&path)).count()
}

/// The transfer-service rule on a real containerd 2.x (SPEC §6): with `config_path = "A:B"`
/// (speil's hosts directory first) pulls never ask the mirror, `doctor` exits 1 naming
/// `use_local_image_pull` and `registry` refuses to start; with `use_local_image_pull = true`
/// `doctor` passes and pulls reach speil. On 2.4 the list itself comes from Introspection and
/// `use_local_image_pull` from the file.
async fn config_path_list_needs_use_local_image_pull(generation: Generation) {
    if !require_components() {
        return;
    }
    let mut h = Harness::start_generations(&[generation]).unwrap();
    let source = match generation {
        Generation::V2_4 => "introspection".to_string(),
        _ => format!("toml {}", h.nodes[0].config_path().display()),
    };
    let reg = h.registry.host();
    let (small, multi) = (images::small().unwrap(), images::multi().unwrap());
    h.registry.push(small).unwrap();
    h.registry.push(multi).unwrap();
    let certs = h.nodes[0].certs_dir();
    let other = h.nodes[0].dir().join("other-certs.d");
    std::fs::create_dir_all(&other).unwrap();
    let one = format!("config_path = \"{}\"", certs.display());
    let list = format!("config_path = \"{}:{}\"", certs.display(), other.display());
    reconfigure(&mut h, |t| t.replace(&one, &list));

    let (out, doc) = doctor(&h);
    assert_eq!(out.status.code(), Some(1), "{doc}");
    assert_eq!(doc["source"], source, "{doc}");
    assert_eq!(doc["ready"], false, "{doc}");
    assert_eq!(doc["use_local_image_pull"], false, "{doc}");
    assert_eq!(
        findings(&doc),
        ["transfer_service_ignores_config_path_list"],
        "{doc}"
    );
    let message = doc["findings"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "containerd {} pulls through the transfer service",
            doc["runtime_version"].as_str().unwrap()
        )) && message.contains("use_local_image_pull = true"),
        "{message}"
    );
    let step = doc["fix"]["steps"][0]["content"].as_str().unwrap();
    assert_eq!(
        step, "[plugins.\"io.containerd.cri.v1.images\"]\n  use_local_image_pull = true\n",
        "{doc}"
    );
    // In the file containerd runs with.
    assert_eq!(
        doc["fix"]["steps"][0]["path"],
        h.nodes[0].config_path().display().to_string(),
        "{doc}"
    );
    let (code, err) = registry_exit(&h, Duration::from_secs(10));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("use_local_image_pull = true"), "{err}");
    if generation == Generation::V2_4 {
        // The file not readable (a pod without the host's /etc/containerd): the list comes
        // from Introspection, use_local_image_pull from nowhere — a warning, not a guess.
        let (out, doc) = doctor_with(&h, &["--containerd-config", "/nonexistent/config.toml"]);
        assert_eq!(doc["source"], "introspection", "{doc}");
        assert_eq!(findings(&doc), ["use_local_image_pull_unknown"], "{doc}");
        assert_eq!(doc["ready"], true, "{doc}");
        assert!(doc.get("use_local_image_pull").is_none(), "{doc}");
        assert_eq!(out.status.code(), Some(0), "{doc}");
    }

    // speil (verification off) with containerd configured by `speil configuration`: the pull
    // completes from the upstream without containerd ever asking speil.
    let ports = Ports::for_block(h.block.index());
    let mut s = Speil::start(
        &h.nodes[0],
        ports,
        h.nodes[0].address,
        &["--verify-containerd-config=false".to_string()],
    )
    .unwrap();
    configure(&h.nodes[0], &s, &reg).unwrap();
    s.wait_serving(Duration::from_secs(20)).unwrap();
    assert!(Path::new(&certs.join(&reg).join("hosts.toml")).is_file());
    h.nodes[0].cri_pull(&small.reference(&reg)).await.unwrap();
    assert_eq!(
        requests_for(&s, &small.name),
        0,
        "{} asked the mirror despite the list: update SPEC §6 and the README:\n{}",
        generation.name(),
        s.log_tail()
    );
    let mirrored = s.metric("spegel_mirror_requests_total").unwrap();
    assert_eq!(mirrored, 0.0);

    // The fix doctor printed.
    reconfigure(&mut h, |t| {
        t.replace(
            "discard_unpacked_layers = false\n",
            "discard_unpacked_layers = false\n    use_local_image_pull = true\n",
        )
    });
    let (out, doc) = doctor(&h);
    assert_eq!(doc["source"], source, "{doc}");
    assert_eq!(doc["ready"], true, "{doc}");
    assert_eq!(doc["use_local_image_pull"], true, "{doc}");
    assert_eq!(findings(&doc), Vec::<String>::new(), "{doc}");
    assert_eq!(out.status.code(), Some(0), "{doc}");
    h.nodes[0].cri_pull(&multi.reference(&reg)).await.unwrap();
    let asked = requests_for(&s, &multi.name);
    let mirrored = s.metric("spegel_mirror_requests_total").unwrap();
    assert!(
        asked > 0 && mirrored > 0.0,
        "{} did not ask the mirror with use_local_image_pull = true:\n{}",
        generation.name(),
        s.log_tail()
    );
    eprintln!(
        "{} with use_local_image_pull = true: {asked} request log lines, spegel_mirror_requests_total {mirrored}",
        generation.name()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_path_list_on_containerd_2_3_needs_use_local_image_pull() {
    config_path_list_needs_use_local_image_pull(Generation::V2_3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_path_list_on_containerd_2_4_needs_use_local_image_pull() {
    config_path_list_needs_use_local_image_pull(Generation::V2_4).await;
}

/// Captures the live answers the core's fixtures hold (`core/tests/fixtures/live/`, see its
/// README): the CRI status `info["config"]` of each generation and the 2.4 Introspection
/// answer. Run with `SPEIL_CAPTURE_DIR=<dir> cargo test -p speil-tests --test verify_live --
/// --ignored capture_live_fixtures`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes fixture files; run by hand"]
async fn capture_live_fixtures() {
    let dir =
        std::path::PathBuf::from(std::env::var_os("SPEIL_CAPTURE_DIR").expect("SPEIL_CAPTURE_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut versions = serde_json::Map::new();
    for (generation, stem) in [
        (Generation::V1_6, "containerd-1.6"),
        (Generation::V2_3, "containerd-2.3.4"),
        (Generation::V2_4, "containerd-2.4.0-dev"),
    ] {
        let h = Harness::start_generations(&[generation]).unwrap();
        let client = h.nodes[0].client(false).await.unwrap();
        let version = client.cri_runtime_version().await.unwrap();
        let status = client.cri_status().await.unwrap();
        let config: serde_json::Value =
            serde_json::from_str(status.config_json().expect("info[\"config\"]")).unwrap();
        let name = format!("{stem}.cri-status.config.json");
        std::fs::write(
            dir.join(&name),
            serde_json::to_string_pretty(&config).unwrap() + "\n",
        )
        .unwrap();
        versions.insert(name, version.clone().into());
        if generation == Generation::V2_4 {
            let plugins = client
                .introspection_plugins(&[speil_core::containerd_config::CRI_IMAGES_FILTER])
                .await
                .unwrap();
            let name = format!("{stem}.introspection-images.json");
            std::fs::write(
                dir.join(&name),
                serde_json::to_string_pretty(&plugins).unwrap() + "\n",
            )
            .unwrap();
            versions.insert(name, version.into());
        }
        let harness_dir = h.nodes[0].dir().display().to_string();
        versions.insert(format!("{stem}.node_dir"), harness_dir.into());
    }
    std::fs::write(
        dir.join("versions.json"),
        serde_json::to_string_pretty(&versions).unwrap() + "\n",
    )
    .unwrap();
}

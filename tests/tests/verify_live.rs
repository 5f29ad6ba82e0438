//! `speil doctor` and the start-up verification of `speil registry` against a real containerd
//! of each generation: what speil reads, and where it says it read it (SPEC §6).

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use speil_tests::{Generation, Harness, require_components, speil};

fn doctor(h: &Harness) -> (Output, serde_json::Value) {
    let out = Command::new(speil::binary().unwrap())
        .arg("doctor")
        .arg("--containerd-sock")
        .arg(h.nodes[0].socket())
        .arg(format!(
            "--containerd-registry-config-path={}",
            h.nodes[0].certs_dir().display()
        ))
        .args(["--format", "json", "--os-release", "", "--sys-vendor", ""])
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
fn registry_exit(h: &Harness, within: Duration) -> (Option<i32>, String) {
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

fn on_containerd_2(generation: Generation) {
    if !require_components() {
        return;
    }
    let h = Harness::start_generations(&[generation]).unwrap();
    let config = h.nodes[0].config_path();

    // The file containerd runs with is found through /proc and named as the source.
    let (out, doc) = doctor(&h);
    assert_eq!(doc["source"], format!("toml {}", config.display()), "{doc}");
    assert!(
        doc["runtime_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("v2.")),
        "{doc}"
    );
    assert_eq!(doc["ready"], true, "{doc}");
    assert_eq!(out.status.code(), Some(0), "{doc}");
    // Default flags: the registry starts (it keeps running until stopped).
    let (code, err) = registry_exit(&h, Duration::from_secs(3));
    assert_eq!(code, None, "registry exited: {err}");

    // A verified error refuses the start with the doctor's message.
    let text = std::fs::read_to_string(&config).unwrap();
    let bad = text.replace(
        "discard_unpacked_layers = false",
        "discard_unpacked_layers = true",
    );
    assert_ne!(bad, text);
    std::fs::write(&config, bad).unwrap();
    let (out, doc) = doctor(&h);
    assert_eq!(doc["ready"], false, "{doc}");
    assert_eq!(findings(&doc), ["discard_unpacked_layers"], "{doc}");
    assert_eq!(out.status.code(), Some(1));
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
    let h = Harness::start_generations(&[Generation::V1_6]).unwrap();
    let (out, doc) = doctor(&h);
    assert_eq!(doc["source"], "cri-status", "{doc}");
    assert!(
        doc["runtime_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.6")),
        "{doc}"
    );
    assert_eq!(doc["ready"], true, "{doc}");
    assert_eq!(out.status.code(), Some(0));
}

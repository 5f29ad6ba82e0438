//! The container image (issue 10, item 3): `scripts/build-image` writes an OCI layout from the
//! test's `speil` binary with `umoci` (no container engine, nothing downloaded) and pushes it
//! with `skopeo` to the harness's upstream registry; one node per containerd generation (1.6,
//! 2.3.4, 2.4-dev) pulls it through the CRI, as kubelet does. The layer the node pulled is
//! unpacked and its entrypoint run (`chroot`, as the image's user, root, and as nonroot 65532):
//! `speil version` answers with the workspace version, the bare entrypoint asks for a command.
//! On containerd 1.6 the image also runs as a container, `ctr run` with runc (Debian's runc shim
//! does not start tasks for containerd 2.x, and no 2.x shim is on this machine).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use speil_tests::{Generation, Harness, Node, require_components, speil, which};

/// The workspace version (the tests crate takes `version.workspace`).
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// A fixed `SOURCE_DATE_EPOCH`: 2023-11-14T22:13:20Z.
const EPOCH: &str = "1700000000";
const CREATED: &str = "2023-11-14T22:13:20Z";
const ENTRYPOINT: &str = "/usr/local/bin/speil";
/// Root, as Spegel's image: the containerd socket is root's (0660) on most nodes.
const USER: &str = "0:0";
/// The image's unprivileged user.
const NONROOT: &str = "65532:65532";

/// What this test needs beyond the harness: `umoci` for the build, `ctr` and `runc` to run
/// the pulled image. Missing: a failure when `CI=true`, else a loud skip.
fn require_image_tools() -> bool {
    let missing: Vec<&str> = ["umoci", "ctr", "runc", "readelf", "chroot"]
        .into_iter()
        .filter(|c| which(c).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "the image test needs {} on PATH (Debian: apt-get install umoci containerd runc binutils)",
        missing.join(", ")
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}");
    }
    eprintln!("\n!!!!! SKIPPED: {msg} !!!!!\n");
    false
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Runs `cmd`, killing it after `timeout`.
fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let deadline = Instant::now() + timeout;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_slice(&text)?)
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest has an algorithm");
    layout.join("blobs").join(alg).join(hex)
}

/// The layout's manifest for `tag`, its config and its single layer's digest.
fn manifest_of(layout: &Path, tag: &str) -> Result<(String, Value, String)> {
    let index = read_json(&layout.join("index.json"))?;
    let entry = index["manifests"]
        .as_array()
        .context("index.json has no manifests")?
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .with_context(|| format!("no manifest tagged {tag}: {index}"))?;
    let digest = entry["digest"].as_str().context("digest")?.to_owned();
    let manifest = read_json(&blob_path(layout, &digest))?;
    let config_digest = manifest["config"]["digest"].as_str().context("config")?;
    let config = read_json(&blob_path(layout, config_digest))?;
    let layers = manifest["layers"].as_array().context("layers")?;
    ensure!(layers.len() == 1, "one layer expected: {manifest}");
    ensure!(
        layers[0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip",
        "{manifest}"
    );
    let layer = layers[0]["digest"].as_str().context("layer")?.to_owned();
    Ok((config_digest.to_owned(), config, layer))
}

fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no OCI architecture known for {other}"),
    }
}

/// The config says what `scripts/build-image` and the Containerfile set.
fn assert_config(config: &Value) {
    assert_eq!(config["architecture"], host_architecture(), "{config}");
    assert_eq!(config["os"], "linux");
    assert_eq!(
        config["created"], CREATED,
        "SOURCE_DATE_EPOCH is the created time"
    );
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!([ENTRYPOINT]), "{c}");
    assert!(
        c["Cmd"].is_null(),
        "no CMD: the chart passes the command: {c}"
    );
    assert_eq!(c["User"], USER);
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    assert_eq!(labels["org.opencontainers.image.created"], CREATED);
    assert!(
        labels["org.opencontainers.image.source"]
            .as_str()
            .is_some_and(|s| s.starts_with("https://")),
        "{labels}"
    );
    assert!(labels["org.opencontainers.image.revision"].is_string());
    let history = config["history"].as_array().expect("history");
    assert!(history.iter().all(|h| h["created"] == CREATED), "{config}");
}

/// The layer holds the binary (mode 0755, root's, the test's bytes), the users, and `/tmp`;
/// every entry is root's.
fn assert_layer(layer: &Path, binary: &Path) -> Result<()> {
    let want = hex::encode(Sha256::digest(std::fs::read(binary)?));
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(layer)?);
    let mut archive = tar::Archive::new(gz);
    let mut seen_binary = false;
    let mut passwd = String::new();
    let mut tmp_mode = None;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let h = entry.header();
        let (mode, uid, gid) = (h.mode()?, h.uid()?, h.gid()?);
        assert_eq!((uid, gid), (0, 0), "{path} is owned by {uid}:{gid}");
        match path.trim_end_matches('/') {
            "usr/local/bin/speil" => {
                assert!(h.entry_type().is_file(), "{path} is not a regular file");
                assert_eq!(mode & 0o7777, 0o755, "{path} has mode {mode:o}");
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes)?;
                assert_eq!(hex::encode(Sha256::digest(&bytes)), want, "{path} bytes");
                seen_binary = true;
            }
            "etc/passwd" => {
                entry.read_to_string(&mut passwd)?;
            }
            "tmp" => tmp_mode = Some(mode & 0o7777),
            _ => {}
        }
    }
    assert!(seen_binary, "no usr/local/bin/speil in the layer");
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "/etc/passwd: {passwd}"
    );
    assert_eq!(tmp_mode, Some(0o1777), "/tmp mode");
    Ok(())
}

/// `ctr run --rm` of `reference` on `node`'s containerd, with `args` replacing the image's
/// entrypoint when given.
fn ctr_run(node: &Node, reference: &str, id: &str, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address")
        .arg(node.socket())
        .args(["--namespace", speil_tests::CRI_NAMESPACE, "run", "--rm"])
        .args([reference, id])
        .args(args);
    run(&mut cmd, Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_built_without_an_engine_is_pulled_through_the_cri_and_runs() -> Result<()> {
    if !require_components() || !require_image_tools() {
        return Ok(());
    }
    let h = Harness::start_generations(&Generation::ALL)?;
    let registry = h.registry.host();
    let binary = speil::binary()?;
    let work = tempfile::Builder::new().prefix("speil-image").tempdir()?;
    let layout = work.path().join("oci");
    let tag = format!("{VERSION}-test");
    let reference = format!("{registry}/speil-test/speil:{tag}");

    let t = Instant::now();
    let out = run(
        Command::new(repo_root().join("scripts/build-image"))
            .arg("--binary")
            .arg(&binary)
            .arg("--out")
            .arg(&layout)
            .args(["--tag", &tag, "--insecure", "--push"])
            .arg(format!("docker://{reference}"))
            .env("SOURCE_DATE_EPOCH", EPOCH),
        Duration::from_secs(300),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/build-image failed: {stderr}");
    eprintln!("built and pushed in {:?}: {}", t.elapsed(), stderr.trim());

    let (config_digest, config, layer) = manifest_of(&layout, &tag)?;
    assert_config(&config);
    assert_layer(&blob_path(&layout, &layer), &binary)?;

    // Reproducible: the same binary and SOURCE_DATE_EPOCH give the same digests.
    let again = work.path().join("again");
    let out = run(
        Command::new(repo_root().join("scripts/build-image"))
            .arg("--binary")
            .arg(&binary)
            .arg("--out")
            .arg(&again)
            .args(["--tag", &tag])
            .env("SOURCE_DATE_EPOCH", EPOCH),
        Duration::from_secs(300),
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        read_json(&again.join("index.json"))?,
        read_json(&layout.join("index.json"))?,
        "a second build gave another manifest"
    );
    std::fs::remove_dir_all(&again)?;

    for node in &h.nodes {
        // CRI pulls go to the upstream over plain HTTP.
        let dir = node.certs_dir().join(&registry);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("hosts.toml"),
            format!("server = \"http://{registry}\"\n"),
        )?;
        let name = node.generation.name();
        let t = Instant::now();
        let image_ref = node.cri_pull(&reference).await?;
        assert_eq!(image_ref, config_digest, "{name}");
        eprintln!("{name}: pulled in {:?}", t.elapsed());

        // What the node pulled: the same config and layer, run as the config says.
        let pulled = work.path().join(format!("rootfs-{}", node.index));
        let pulled_config = read_json(&blob_path(&node.content_path(), &config_digest))?;
        assert_eq!(pulled_config, config, "{name}");
        let version = run_extracted(
            &blob_path(&node.content_path(), &layer),
            &layer,
            &pulled,
            &pulled_config,
            None,
            &["version", "--format", "json"],
        )?;
        assert_version(&version, name)?;
        // Nothing in the image needs root to run: the unprivileged user can too.
        let version = run_extracted(
            &blob_path(&node.content_path(), &layer),
            &layer,
            &pulled,
            &pulled_config,
            Some(NONROOT),
            &["version", "--format", "json"],
        )?;
        assert_version(&version, name)?;
        let out = run_extracted(
            &blob_path(&node.content_path(), &layer),
            &layer,
            &pulled,
            &pulled_config,
            None,
            &[],
        )?;
        assert_asks_for_a_command(&out, name);
        std::fs::remove_dir_all(&pulled)?;

        // Debian's runc shim (containerd 1.6) cannot start tasks for containerd 2.x, which
        // ships no shim here: `ctr run` on 1.6 only.
        if node.generation == Generation::V1_6 {
            let id = format!("speil-image-test-{}", node.index);
            let out = ctr_run(
                node,
                &reference,
                &id,
                &[ENTRYPOINT, "version", "--format", "json"],
            )?;
            assert_version(&out, name)?;
            // The image's own entrypoint, with no command: speil asks for one (exit 2).
            let out = ctr_run(node, &reference, &format!("{id}-entrypoint"), &[])?;
            assert_asks_for_a_command(&out, name);
            eprintln!("{name}: ctr run ok");
        }
    }
    Ok(())
}

/// `speil version --format json` succeeded and names the workspace version.
fn assert_version(out: &Output, name: &str) -> Result<()> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name}: `speil version` failed ({}): {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let version: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("{name}: `speil version` printed {stdout}"))?;
    assert_eq!(version["version"], VERSION, "{name}");
    assert_eq!(version["runtime"], "tokio", "{name}");
    Ok(())
}

/// The entrypoint without arguments: speil asks for a command and exits 2.
fn assert_asks_for_a_command(out: &Output, name: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
    assert!(stderr.contains("a command is required"), "{name}: {stderr}");
}

/// Unpacks `layer` (which must hash to `digest`) into `rootfs` and runs the config's
/// entrypoint with `args` in it (`chroot`), as `user` or else the config's user.
fn run_extracted(
    layer: &Path,
    digest: &str,
    rootfs: &Path,
    config: &Value,
    user: Option<&str>,
    args: &[&str],
) -> Result<Output> {
    let bytes = std::fs::read(layer).with_context(|| format!("reading {}", layer.display()))?;
    ensure!(
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes))) == digest,
        "{} does not hash to {digest}",
        layer.display()
    );
    if !rootfs.exists() {
        std::fs::create_dir_all(rootfs)?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.unpack(rootfs)?;
    }
    let c = &config["config"];
    let entrypoint: Vec<&str> = c["Entrypoint"]
        .as_array()
        .context("no Entrypoint")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let user = match user {
        Some(u) => u,
        None => c["User"].as_str().context("no User")?,
    };
    let mut cmd = Command::new(which("chroot").context("chroot is not on PATH")?);
    cmd.arg(format!("--userspec={user}"))
        .arg(rootfs)
        .args(&entrypoint)
        .args(args)
        .env_clear();
    for kv in c["Env"].as_array().into_iter().flatten() {
        if let Some((k, v)) = kv.as_str().and_then(|s| s.split_once('=')) {
            cmd.env(k, v);
        }
    }
    run(&mut cmd, Duration::from_secs(30))
}

//! Deterministic OCI test images, written as OCI layouts without any network.
//!
//! Layers are gzip'd tar files of seeded pseudo-random bytes (stored deflate blocks: random
//! bytes do not compress, and building stays fast), so every run produces the same digests.
//! Layouts are built once and kept under `$TMPDIR/speil-test-images-<version>/`, shared by
//! test processes (built in a scratch directory and renamed into place).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use speil_core::Digest;

/// Bumped whenever the generated content changes.
const LAYOUT_VERSION: u32 = 1;

/// OCI media types used by the test images.
pub mod media {
    /// OCI image index.
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image manifest.
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image config.
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// gzip'd tar layer.
    pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
}

/// One platform's manifest of a test image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformImage {
    /// `os` of the platform (`linux`).
    pub os: String,
    /// `architecture` of the platform (`amd64`, `arm64`).
    pub architecture: String,
    /// The manifest.
    pub manifest: Digest,
    /// The config.
    pub config: Digest,
    /// The layers, in order.
    pub layers: Vec<Digest>,
}

/// A test image as an OCI layout on disk.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// The repository, e.g. `speil-test/small`.
    pub name: String,
    /// The tag.
    pub tag: String,
    /// The OCI layout directory.
    pub layout: PathBuf,
    /// What the tag points at (an index or a manifest).
    pub top: Digest,
    /// Whether `top` is an index.
    pub is_index: bool,
    /// Every platform's manifest (one for a single-platform image).
    pub platforms: Vec<PlatformImage>,
    /// Size of every blob of the image.
    pub sizes: BTreeMap<Digest, u64>,
}

/// The host's architecture as OCI names it.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

impl TestImage {
    /// `registry/name:tag`.
    pub fn reference(&self, registry: &str) -> String {
        format!("{registry}/{}:{}", self.name, self.tag)
    }

    /// `registry/name@top`.
    pub fn digest_reference(&self, registry: &str) -> String {
        format!("{registry}/{}@{}", self.name, self.top)
    }

    /// The manifest of the host's platform.
    pub fn host_platform(&self) -> Result<&PlatformImage> {
        self.platforms
            .iter()
            .find(|p| p.os == "linux" && p.architecture == host_architecture())
            .with_context(|| format!("{} has no manifest for this host", self.name))
    }

    /// What a CRI pull on this host stores: the top digest, and the host platform's manifest,
    /// config and layers.
    pub fn expected_after_pull(&self) -> Result<BTreeSet<Digest>> {
        let p = self.host_platform()?;
        let mut set: BTreeSet<Digest> = p.layers.iter().cloned().collect();
        set.insert(self.top.clone());
        set.insert(p.manifest.clone());
        set.insert(p.config.clone());
        Ok(set)
    }

    /// A blob's bytes from the layout.
    pub fn blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = blob_path(&self.layout, digest);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }
}

fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout
        .join("blobs")
        .join(digest.algorithm().as_str())
        .join(digest.hex())
}

/// A splitmix64 stream: fast, seeded, identical on every machine.
struct Seeded(u64);

impl Seeded {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

struct Writer {
    layout: PathBuf,
}

impl Writer {
    fn put(&self, bytes: &[u8]) -> Result<(Digest, u64)> {
        let digest = Digest::sha256_of(bytes);
        let path = blob_path(&self.layout, &digest);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok((digest, bytes.len() as u64))
    }

    fn put_json(&self, value: &Value) -> Result<(Digest, u64)> {
        self.put(&serde_json::to_vec(value)?)
    }

    /// A layer of one file of `size` seeded bytes: returns (descriptor digest, size, diff id).
    fn layer(&self, seed: u64, size: usize) -> Result<(Digest, u64, Digest)> {
        let mut data = vec![0u8; size];
        Seeded(seed).fill(&mut data);
        let mut tar = tar::Builder::new(Vec::with_capacity(size + 2048));
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(size as u64);
        tar.append_data(&mut header, format!("data/layer-{seed}.bin"), &data[..])?;
        let tar = tar.into_inner()?;
        let diff_id = Digest::sha256_of(&tar);
        let mut gz = GzEncoder::new(Vec::with_capacity(tar.len() + 1024), Compression::none());
        std::io::Write::write_all(&mut gz, &tar)?;
        let gz = gz.finish()?;
        let (digest, len) = self.put(&gz)?;
        Ok((digest, len, diff_id))
    }

    /// A manifest with a config for `architecture` and one layer per entry of `layers`
    /// (seed, size). Returns the manifest's digest and size.
    fn manifest(&self, architecture: &str, layers: &[(u64, usize)]) -> Result<(Digest, u64)> {
        let mut descriptors = Vec::new();
        let mut diff_ids = Vec::new();
        for (seed, size) in layers {
            let (d, len, diff) = self.layer(*seed, *size)?;
            descriptors.push(json!({"mediaType": media::LAYER, "digest": d, "size": len}));
            diff_ids.push(diff);
        }
        let config = json!({
            "architecture": architecture,
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let (cd, cl) = self.put_json(&config)?;
        self.put_json(&json!({
            "schemaVersion": 2,
            "mediaType": media::MANIFEST,
            "config": {"mediaType": media::CONFIG, "digest": cd, "size": cl},
            "layers": descriptors,
        }))
    }

    fn finish(&self, media_type: &str, digest: &Digest, size: u64, tag: &str) -> Result<()> {
        std::fs::write(
            self.layout.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": media_type,
                "digest": digest,
                "size": size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        });
        std::fs::write(self.layout.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(())
    }
}

/// The three test images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One platform (the host's), two layers (3 MiB and 10 KiB).
    Small,
    /// An index of linux/amd64 and linux/arm64, one layer each.
    Multi,
    /// One platform (the host's), three layers of 34 MiB.
    Large,
}

impl Kind {
    fn dir_name(self) -> &'static str {
        match self {
            Kind::Small => "small",
            Kind::Multi => "multi",
            Kind::Large => "large",
        }
    }

    fn build(self, layout: &Path) -> Result<()> {
        std::fs::create_dir_all(layout.join("blobs/sha256"))?;
        let w = Writer {
            layout: layout.to_path_buf(),
        };
        let arch = host_architecture();
        match self {
            Kind::Small => {
                let (d, s) = w.manifest(arch, &[(1, 3 * 1024 * 1024 + 17), (2, 10 * 1024)])?;
                w.finish(media::MANIFEST, &d, s, "v1")
            }
            Kind::Large => {
                let mib = 1024 * 1024;
                let (d, s) = w.manifest(arch, &[(31, 34 * mib), (32, 34 * mib), (33, 34 * mib)])?;
                w.finish(media::MANIFEST, &d, s, "v1")
            }
            Kind::Multi => {
                let mut manifests = Vec::new();
                for (i, a) in ["amd64", "arm64"].into_iter().enumerate() {
                    let (d, s) = w.manifest(a, &[(20 + i as u64, 512 * 1024 + i)])?;
                    manifests.push(json!({
                        "mediaType": media::MANIFEST,
                        "digest": d,
                        "size": s,
                        "platform": {"architecture": a, "os": "linux"},
                    }));
                }
                let (d, s) = w.put_json(&json!({
                    "schemaVersion": 2,
                    "mediaType": media::INDEX,
                    "manifests": manifests,
                }))?;
                w.finish(media::INDEX, &d, s, "v1")
            }
        }
    }
}

fn read_json(layout: &Path, digest: &Digest) -> Result<Value> {
    let path = blob_path(layout, digest);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if !digest.verifies(&bytes) {
        bail!("{} does not match its digest", path.display());
    }
    Ok(serde_json::from_slice(&bytes)?)
}

fn digest_of(v: &Value) -> Result<Digest> {
    v["digest"]
        .as_str()
        .context("descriptor without digest")?
        .parse()
        .map_err(|e| anyhow!("bad digest: {e}"))
}

fn load(layout: &Path, name: &str, tag: &str) -> Result<TestImage> {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let top_desc = &index["manifests"][0];
    let top = digest_of(top_desc)?;
    let is_index = top_desc["mediaType"] == media::INDEX;
    let manifest_descs: Vec<(Value, Digest)> = if is_index {
        let idx = read_json(layout, &top)?;
        idx["manifests"]
            .as_array()
            .context("index without manifests")?
            .iter()
            .map(|m| Ok((m["platform"].clone(), digest_of(m)?)))
            .collect::<Result<_>>()?
    } else {
        vec![(Value::Null, top.clone())]
    };
    let mut platforms = Vec::new();
    let mut sizes = BTreeMap::new();
    for (platform, manifest) in manifest_descs {
        let m = read_json(layout, &manifest)?;
        let config = digest_of(&m["config"])?;
        let c = read_json(layout, &config)?;
        let layers = m["layers"]
            .as_array()
            .context("manifest without layers")?
            .iter()
            .map(digest_of)
            .collect::<Result<Vec<_>>>()?;
        let field = |k: &str| {
            platform[k]
                .as_str()
                .or(c[k].as_str())
                .unwrap_or_default()
                .to_owned()
        };
        platforms.push(PlatformImage {
            os: field("os"),
            architecture: field("architecture"),
            manifest,
            config,
            layers,
        });
    }
    for entry in std::fs::read_dir(layout.join("blobs/sha256"))? {
        let entry = entry?;
        let d: Digest = format!("sha256:{}", entry.file_name().to_string_lossy())
            .parse()
            .map_err(|e| anyhow!("stray file in layout: {e}"))?;
        sizes.insert(d, entry.metadata()?.len());
    }
    Ok(TestImage {
        name: name.to_owned(),
        tag: tag.to_owned(),
        layout: layout.to_path_buf(),
        top,
        is_index,
        platforms,
        sizes,
    })
}

fn build_or_load(kind: Kind) -> Result<TestImage> {
    let cache = std::env::temp_dir().join(format!(
        "speil-test-images-{LAYOUT_VERSION}-{}",
        host_architecture()
    ));
    std::fs::create_dir_all(&cache)?;
    let layout = cache.join(kind.dir_name());
    let name = format!("speil-test/{}", kind.dir_name());
    if !layout.join("index.json").exists() {
        let scratch = tempfile::Builder::new()
            .prefix(".build-")
            .tempdir_in(&cache)?;
        let built = scratch.path().join("layout");
        kind.build(&built)?;
        // Another process may have won the race; its layout is identical.
        if std::fs::rename(&built, &layout).is_err() && !layout.join("index.json").exists() {
            bail!("cannot move the built layout to {}", layout.display());
        }
    }
    load(&layout, &name, "v1")
}

fn cached(
    cell: &'static OnceLock<Result<TestImage, String>>,
    kind: Kind,
) -> Result<&'static TestImage> {
    cell.get_or_init(|| build_or_load(kind).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("building the {kind:?} test image: {e}"))
}

/// The small single-platform image (`speil-test/small:v1`).
pub fn small() -> Result<&'static TestImage> {
    static CELL: OnceLock<Result<TestImage, String>> = OnceLock::new();
    cached(&CELL, Kind::Small)
}

/// The two-platform index (`speil-test/multi:v1`: linux/amd64 and linux/arm64).
pub fn multi() -> Result<&'static TestImage> {
    static CELL: OnceLock<Result<TestImage, String>> = OnceLock::new();
    cached(&CELL, Kind::Multi)
}

/// The ~100 MiB three-layer image (`speil-test/large:v1`).
pub fn large() -> Result<&'static TestImage> {
    static CELL: OnceLock<Result<TestImage, String>> = OnceLock::new();
    cached(&CELL, Kind::Large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_bytes_are_stable() {
        let mut a = vec![0u8; 13];
        let mut b = vec![0u8; 13];
        Seeded(7).fill(&mut a);
        Seeded(7).fill(&mut b);
        assert_eq!(a, b);
        Seeded(8).fill(&mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn builds_a_valid_multi_platform_layout() {
        let dir = tempfile::tempdir().unwrap();
        Kind::Multi.build(dir.path()).unwrap();
        let img = load(dir.path(), "x", "v1").unwrap();
        assert!(img.is_index);
        assert_eq!(img.platforms.len(), 2);
        assert!(img.host_platform().is_ok());
        let expected = img.expected_after_pull().unwrap();
        assert_eq!(expected.len(), 4);
        for d in img.sizes.keys() {
            assert!(d.verifies(&img.blob(d).unwrap()));
        }
        // Same seed, same bytes: a second build gives the same digests.
        let dir2 = tempfile::tempdir().unwrap();
        Kind::Multi.build(dir2.path()).unwrap();
        assert_eq!(load(dir2.path(), "x", "v1").unwrap().top, img.top);
        // Layers are gzip'd tars whose diff ids match the config.
        let p = img.host_platform().unwrap();
        let layer = img.blob(&p.layers[0]).unwrap();
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&layer[..]), &mut tar)
            .unwrap();
        let config = read_json(dir.path(), &p.config).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0].as_str().unwrap(),
            Digest::sha256_of(&tar).as_str()
        );
    }
}

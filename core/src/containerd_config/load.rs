//! Reading containerd `config.toml` files and merging them the way containerd does.
//!
//! containerd loads its main file, then every file named by `imports` (breadth first, each
//! imported file's own `imports` after it). An imported file replaces **whole plugin tables**
//! (`[plugins."<id>"]`), not single keys: an import that only sets `discard_unpacked_layers`
//! under `io.containerd.grpc.v1.cri` drops every other key of that plugin, `config_path`
//! included. Drop-in parts merged by a distribution's own tooling (Talos `/etc/cri/conf.d/*.part`,
//! nodeadm) merge key by key instead; [`Layer::DropIn`] models those.
//!
//! Plugin identifiers moved between configuration versions:
//! version 1 (no `version` key) used short names (`cri`, `bolt`), version 2 the
//! `io.containerd.grpc.v1.cri` plugin, version 3 (containerd 2.x) split the CRI plugin into
//! `io.containerd.cri.v1.images` and `io.containerd.cri.v1.runtime`. containerd 2.x migrates
//! version 1 and 2 files when it loads them, and some distributions (AKS) write `version = 2`
//! files that already use the version 3 identifiers. Each file is normalised here before the
//! merge, so that the evaluation reads one shape.

use toml::{Table, Value};

/// The CRI plugin of containerd 1.x (config version 2).
pub const CRI_V2: &str = "io.containerd.grpc.v1.cri";
/// The CRI images plugin of containerd 2.x (config version 3).
pub const CRI_IMAGES_V3: &str = "io.containerd.cri.v1.images";
/// The CRI runtime plugin of containerd 2.x (config version 3).
pub const CRI_RUNTIME_V3: &str = "io.containerd.cri.v1.runtime";
/// The metadata plugin that holds `content_sharing_policy`.
pub const BOLT: &str = "io.containerd.metadata.v1.bolt";

/// How a file joins the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// The main `config.toml`.
    Main,
    /// A file named by `imports`: replaces whole plugin tables (containerd's own merge).
    Import,
    /// A drop-in part merged key by key by the distribution's tooling (Talos, nodeadm).
    DropIn,
}

/// Which containerd generation the files are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Generation {
    /// containerd 1.x: the CRI plugin is `io.containerd.grpc.v1.cri`.
    Containerd1,
    /// containerd 2.x: the CRI settings live in `io.containerd.cri.v1.images` / `.runtime`.
    Containerd2,
}

impl Generation {
    /// `containerd-1.x` or `containerd-2.x`.
    pub fn as_str(self) -> &'static str {
        match self {
            Generation::Containerd1 => "containerd-1.x",
            Generation::Containerd2 => "containerd-2.x",
        }
    }
}

/// A containerd configuration file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML.
    #[error("{path}: not valid TOML: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, on one line.
        message: String,
    },
    /// `version` is not 1, 2 or 3.
    #[error("{path}: unsupported containerd config version {version}")]
    Version {
        /// The file.
        path: String,
        /// What it says.
        version: String,
    },
    /// `imports` is not a list of strings.
    #[error("{path}: imports must be a list of file paths")]
    Imports {
        /// The file.
        path: String,
    },
    /// `plugins` is not a table.
    #[error("{path}: plugins must be a table")]
    Plugins {
        /// The file.
        path: String,
    },
}

/// One parsed file, normalised to plugin identifiers of config version 2/3.
#[derive(Debug, Clone)]
pub struct LoadedFile {
    /// Where it came from (as given by the caller).
    pub path: String,
    /// How it joins the configuration.
    pub layer: Layer,
    /// Its `version` (1 when absent).
    pub version: i64,
    /// Its `imports`, as written.
    pub imports: Vec<String>,
    /// The file's tables, with version 1 plugin names renamed.
    pub table: Table,
}

impl LoadedFile {
    /// Parses one file. Version 1 plugin names are renamed to their version 2 identifiers.
    pub fn parse(path: &str, contents: &str, layer: Layer) -> Result<Self, ConfigError> {
        let mut table: Table =
            contents
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: path.to_string(),
                    message: one_line(&e.to_string()),
                })?;
        let version = match table.get("version") {
            None => 1,
            Some(Value::Integer(v @ 1..=3)) => *v,
            Some(other) => {
                return Err(ConfigError::Version {
                    path: path.to_string(),
                    version: other.to_string(),
                });
            }
        };
        let imports = match table.get("imports") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ConfigError::Imports {
                    path: path.to_string(),
                })?,
            Some(_) => {
                return Err(ConfigError::Imports {
                    path: path.to_string(),
                });
            }
        };
        match table.get("plugins") {
            None | Some(Value::Table(_)) => {}
            Some(_) => {
                return Err(ConfigError::Plugins {
                    path: path.to_string(),
                });
            }
        }
        if version == 1
            && let Some(Value::Table(plugins)) = table.get_mut("plugins")
        {
            rename_v1_plugins(plugins);
        }
        Ok(LoadedFile {
            path: path.to_string(),
            layer,
            version,
            imports,
            table,
        })
    }

    /// The plugin table `id`, if the file has it.
    pub fn plugin(&self, id: &str) -> Option<&Table> {
        plugin(&self.table, id)
    }

    /// Whether the file uses a containerd 2.x plugin identifier.
    pub fn uses_v3_plugins(&self) -> bool {
        self.plugin(CRI_IMAGES_V3).is_some() || self.plugin(CRI_RUNTIME_V3).is_some()
    }
}

/// Version 1 used short plugin names; containerd's migration renames them.
fn rename_v1_plugins(plugins: &mut Table) {
    for (short, long) in [
        ("cri", CRI_V2),
        ("bolt", BOLT),
        ("opt", "io.containerd.internal.v1.opt"),
        ("cgroups", "io.containerd.monitor.v1.cgroups"),
    ] {
        if let Some(value) = plugins.remove(short) {
            match plugins.get_mut(long) {
                Some(Value::Table(existing)) => {
                    if let Value::Table(t) = value {
                        deep_merge(existing, t);
                    }
                }
                _ => {
                    plugins.insert(long.to_string(), value);
                }
            }
        }
    }
}

/// The table at `plugins.<id>`.
pub(crate) fn plugin<'a>(table: &'a Table, id: &str) -> Option<&'a Table> {
    table.get("plugins")?.as_table()?.get(id)?.as_table()
}

/// Merges `from` into `to`, key by key; `from` wins.
pub(crate) fn deep_merge(to: &mut Table, from: Table) {
    for (key, value) in from {
        match (to.get_mut(&key), value) {
            (Some(Value::Table(existing)), Value::Table(incoming)) => {
                deep_merge(existing, incoming)
            }
            (_, value) => {
                to.insert(key, value);
            }
        }
    }
}

/// Fills keys of `to` that are absent from it with `from`'s; `to` wins.
fn merge_missing(to: &mut Table, from: Table) {
    for (key, value) in from {
        match (to.get_mut(&key), value) {
            (Some(Value::Table(existing)), Value::Table(incoming)) => {
                merge_missing(existing, incoming)
            }
            (Some(_), _) => {}
            (None, value) => {
                to.insert(key, value);
            }
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A setting written where containerd 2.x does not read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredSetting {
    /// The file.
    pub path: String,
    /// The key, as a dotted TOML path.
    pub key: String,
}

/// The files of one containerd configuration, in load order.
#[derive(Debug, Clone, Default)]
pub struct ConfigSet {
    files: Vec<LoadedFile>,
}

/// The configuration after all files were merged.
#[derive(Debug, Clone)]
pub struct MergedConfig {
    /// The generation the files are written for.
    pub generation: Generation,
    /// The merged table, plugins normalised for [`Self::generation`].
    pub table: Table,
    /// Settings containerd would not read (a version 2 key in a version 3 file).
    pub ignored: Vec<IgnoredSetting>,
    /// The files, in load order.
    pub files: Vec<String>,
}

impl ConfigSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `contents` and adds it after the files already in the set.
    pub fn add(&mut self, path: &str, contents: &str, layer: Layer) -> Result<(), ConfigError> {
        self.files.push(LoadedFile::parse(path, contents, layer)?);
        Ok(())
    }

    /// The files, in load order.
    pub fn files(&self) -> &[LoadedFile] {
        &self.files
    }

    /// The generation: containerd 2.x when any file says `version = 3` or uses its plugin
    /// identifiers, else containerd 1.x.
    pub fn generation(&self) -> Generation {
        if self
            .files
            .iter()
            .any(|f| f.version == 3 || f.uses_v3_plugins())
        {
            Generation::Containerd2
        } else {
            Generation::Containerd1
        }
    }

    /// Merges the files in order: imports replace whole plugin tables, drop-ins merge key by key.
    pub fn merge(&self) -> MergedConfig {
        let generation = self.generation();
        let mut merged = Table::new();
        let mut ignored = Vec::new();
        for file in &self.files {
            let mut table = file.table.clone();
            if generation == Generation::Containerd2 {
                if file.version < 3 {
                    migrate_to_v3(&mut table);
                } else {
                    ignored.extend(
                        v2_keys_present(&table)
                            .into_iter()
                            .map(|key| IgnoredSetting {
                                path: file.path.clone(),
                                key,
                            }),
                    );
                }
            }
            match file.layer {
                Layer::Main | Layer::DropIn => deep_merge(&mut merged, table),
                Layer::Import => {
                    let plugins = table.remove("plugins");
                    deep_merge(&mut merged, table);
                    if let Some(Value::Table(plugins)) = plugins {
                        let target = merged
                            .entry("plugins")
                            .or_insert_with(|| Value::Table(Table::new()));
                        if !target.is_table() {
                            *target = Value::Table(Table::new());
                        }
                        if let Value::Table(target) = target {
                            for (id, value) in plugins {
                                target.insert(id, value);
                            }
                        }
                    }
                }
            }
        }
        MergedConfig {
            generation,
            table: merged,
            ignored,
            files: self.files.iter().map(|f| f.path.clone()).collect(),
        }
    }
}

/// The CRI image settings of a version 2 file that containerd 2.x moves into the images plugin.
fn migrate_to_v3(table: &mut Table) {
    let Some(Value::Table(plugins)) = table.get_mut("plugins") else {
        return;
    };
    let Some(Value::Table(cri)) = plugins.get_mut(CRI_V2) else {
        return;
    };
    let mut moved = Table::new();
    if let Some(registry) = cri.remove("registry") {
        moved.insert("registry".to_string(), registry);
    }
    if let Some(Value::Table(containerd)) = cri.get_mut("containerd")
        && let Some(discard) = containerd.remove("discard_unpacked_layers")
    {
        moved.insert("discard_unpacked_layers".to_string(), discard);
    }
    if moved.is_empty() {
        return;
    }
    match plugins.get_mut(CRI_IMAGES_V3) {
        Some(Value::Table(images)) => merge_missing(images, moved),
        _ => {
            plugins.insert(CRI_IMAGES_V3.to_string(), Value::Table(moved));
        }
    }
}

/// Version 2 image settings found in a version 3 file (containerd 2.x ignores them).
fn v2_keys_present(table: &Table) -> Vec<String> {
    let mut keys = Vec::new();
    let Some(cri) = plugin(table, CRI_V2) else {
        return keys;
    };
    if let Some(Value::Table(registry)) = cri.get("registry") {
        for key in ["config_path", "mirrors"] {
            if registry.contains_key(key) {
                keys.push(format!("plugins.\"{CRI_V2}\".registry.{key}"));
            }
        }
    }
    if let Some(Value::Table(containerd)) = cri.get("containerd")
        && containerd.contains_key("discard_unpacked_layers")
    {
        keys.push(format!(
            "plugins.\"{CRI_V2}\".containerd.discard_unpacked_layers"
        ));
    }
    keys
}

/// Returns the `imports` of one file without evaluating it, for callers that read files.
pub fn imports_of(path: &str, contents: &str) -> Result<Vec<String>, ConfigError> {
    Ok(LoadedFile::parse(path, contents, Layer::Main)?.imports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_replaces_whole_plugin_table() {
        let mut set = ConfigSet::new();
        set.add(
            "/main.toml",
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"p\"\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/a\"\n",
            Layer::Main,
        )
        .unwrap();
        set.add(
            "/imp.toml",
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\ndiscard_unpacked_layers = false\n",
            Layer::Import,
        )
        .unwrap();
        let merged = set.merge();
        let cri = plugin(&merged.table, CRI_V2).unwrap();
        assert!(cri.get("registry").is_none());
        assert!(cri.get("sandbox_image").is_none());
    }

    #[test]
    fn drop_in_merges_keys() {
        let mut set = ConfigSet::new();
        set.add(
            "/a",
            "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/x'\n[plugins.'io.containerd.cri.v1.images']\ndiscard_unpacked_layers = true\n",
            Layer::Main,
        )
        .unwrap();
        set.add(
            "/b",
            "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\ndiscard_unpacked_layers = false\n",
            Layer::DropIn,
        )
        .unwrap();
        let merged = set.merge();
        let images = plugin(&merged.table, CRI_IMAGES_V3).unwrap();
        assert_eq!(images["discard_unpacked_layers"].as_bool(), Some(false));
        assert_eq!(images["registry"]["config_path"].as_str(), Some("/x"));
    }

    #[test]
    fn version_one_names_are_renamed() {
        let f = LoadedFile::parse(
            "/v1",
            "[plugins.cri.registry]\nconfig_path = \"/x\"\n",
            Layer::Main,
        )
        .unwrap();
        assert_eq!(f.version, 1);
        assert!(f.plugin(CRI_V2).is_some());
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(
            LoadedFile::parse("/x", "version = 9", Layer::Main),
            Err(ConfigError::Version { .. })
        ));
        assert!(matches!(
            LoadedFile::parse("/x", "imports = 3", Layer::Main),
            Err(ConfigError::Imports { .. })
        ));
        assert!(matches!(
            LoadedFile::parse("/x", "plugins = 3", Layer::Main),
            Err(ConfigError::Plugins { .. })
        ));
        let e = LoadedFile::parse("/x", "[a\nb", Layer::Main).unwrap_err();
        assert!(!e.to_string().contains('\n'));
    }
}

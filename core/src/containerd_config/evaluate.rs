//! What speil needs from containerd, and what is wrong when it does not get it.

use serde::Serialize;
use toml::{Table, Value};

use super::load::{BOLT, CRI_IMAGES_V3, CRI_V2, Generation, IgnoredSetting, MergedConfig};

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// speil cannot work until this is changed.
    Error,
    /// speil works, but something is likely to go wrong or differs from what was meant.
    Warning,
}

/// One thing found wrong (or worth knowing) about a containerd configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The registry `config_path` is unset or empty.
    ConfigPathNotSet,
    /// The registry `config_path` does not include the directory speil writes to.
    ConfigPathMissingDir {
        /// What containerd has.
        config_path: String,
        /// What speil writes to (`--containerd-registry-config-path`).
        required: String,
    },
    /// `discard_unpacked_layers = true`.
    DiscardUnpackedLayers,
    /// The deprecated `registry.mirrors` tables are used.
    LegacyRegistryMirrors {
        /// The registries they name, sorted.
        registries: Vec<String>,
    },
    /// A setting has the wrong type (containerd would refuse to start).
    InvalidSetting {
        /// The key, dotted.
        key: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A containerd 1.x setting written into a version 3 file, where containerd 2.x ignores it.
    IgnoredSetting {
        /// The file.
        path: String,
        /// The key, dotted.
        key: String,
    },
    /// containerd 2.x with a `:`-separated `config_path` list.
    ConfigPathList {
        /// What containerd has.
        config_path: String,
        /// What speil writes to.
        required: String,
    },
    /// The CRI status did not report a field the check needs.
    CriFieldMissing {
        /// The field, dotted (`registry.configPath`).
        field: &'static str,
    },
    /// A file named by `imports` does not exist.
    ImportMissing {
        /// The path or pattern.
        path: String,
    },
    /// An `imports` pattern uses a wildcard in a directory name, which is not followed.
    ImportNotFollowed {
        /// The pattern.
        path: String,
    },
    /// `content_sharing_policy = "shared"` where isolated is recommended (Kind).
    ContentSharingShared,
    /// containerd ≥ 2.1 pulls through the transfer service, which ignores a `config_path`
    /// list unless `use_local_image_pull = true`: the mirror is never asked.
    TransferServiceIgnoresList {
        /// The running containerd's version.
        version: String,
        /// What containerd has.
        config_path: String,
    },
    /// A `config_path` list on containerd ≥ 2.1, but `use_local_image_pull` could not be read
    /// (it is in no live source, and the TOML files were not readable).
    UseLocalImagePullUnknown {
        /// The running containerd's version.
        version: String,
        /// What containerd has.
        config_path: String,
    },
}

impl Finding {
    /// A stable identifier for JSON output and scripts.
    pub fn code(&self) -> &'static str {
        match self {
            Finding::ConfigPathNotSet => "config_path_not_set",
            Finding::ConfigPathMissingDir { .. } => "config_path_missing_dir",
            Finding::DiscardUnpackedLayers => "discard_unpacked_layers",
            Finding::LegacyRegistryMirrors { .. } => "legacy_registry_mirrors",
            Finding::InvalidSetting { .. } => "invalid_setting",
            Finding::IgnoredSetting { .. } => "ignored_setting",
            Finding::ConfigPathList { .. } => "config_path_list",
            Finding::CriFieldMissing { .. } => "cri_field_missing",
            Finding::ImportMissing { .. } => "import_missing",
            Finding::ImportNotFollowed { .. } => "import_not_followed",
            Finding::ContentSharingShared => "content_sharing_shared",
            Finding::TransferServiceIgnoresList { .. } => {
                "transfer_service_ignores_config_path_list"
            }
            Finding::UseLocalImagePullUnknown { .. } => "use_local_image_pull_unknown",
        }
    }

    /// Whether speil can work despite it.
    pub fn severity(&self) -> Severity {
        match self {
            Finding::ConfigPathNotSet
            | Finding::ConfigPathMissingDir { .. }
            | Finding::DiscardUnpackedLayers
            | Finding::LegacyRegistryMirrors { .. }
            | Finding::InvalidSetting { .. }
            | Finding::CriFieldMissing { .. }
            | Finding::TransferServiceIgnoresList { .. } => Severity::Error,
            Finding::IgnoredSetting { .. }
            | Finding::ConfigPathList { .. }
            | Finding::ImportMissing { .. }
            | Finding::ImportNotFollowed { .. }
            | Finding::ContentSharingShared
            | Finding::UseLocalImagePullUnknown { .. } => Severity::Warning,
        }
    }

    /// The one-line message.
    pub fn message(&self) -> String {
        match self {
            Finding::ConfigPathNotSet => {
                "containerd registry config path is not set: mirror configuration cannot take effect"
                    .to_string()
            }
            Finding::ConfigPathMissingDir {
                config_path,
                required,
            } => format!("containerd registry config path is {config_path} but must include {required}"),
            Finding::DiscardUnpackedLayers => {
                "containerd discards unpacked layers: set discard_unpacked_layers = false".to_string()
            }
            Finding::LegacyRegistryMirrors { registries } => format!(
                "containerd uses the deprecated registry.mirrors tables ({}): they are not mirror configuration speil can use, and containerd refuses them together with config_path",
                registries.join(", ")
            ),
            Finding::InvalidSetting { key, expected } => {
                format!("containerd setting {key} must be {expected}")
            }
            Finding::IgnoredSetting { path, key } => format!(
                "{path}: {key} is a containerd 1.x setting that containerd 2.x ignores in a version 3 file"
            ),
            Finding::ConfigPathList {
                config_path,
                required,
            } => format!(
                "containerd registry config path {config_path} is a list: containerd 2.1 and later ignore a list when pulling through the transfer service unless use_local_image_pull = true; prefer config_path = \"{required}\""
            ),
            Finding::CriFieldMissing { field } => {
                format!("containerd did not report {field} in its CRI status")
            }
            Finding::ImportMissing { path } => {
                format!("imported file {path} was not found: its settings were not checked")
            }
            Finding::ImportNotFollowed { path } => format!(
                "import pattern {path} has a wildcard in a directory name and was not followed"
            ),
            Finding::ContentSharingShared => {
                "containerd content sharing policy is shared: set content_sharing_policy = \"isolated\" so that each node keeps its own content, as on separate machines"
                    .to_string()
            }
            Finding::TransferServiceIgnoresList { version, config_path } => format!(
                "containerd {version} pulls through the transfer service, which ignores a config_path list: config_path is {config_path}, so the mirror is never asked; set use_local_image_pull = true under [plugins.\"{CRI_IMAGES_V3}\"], or set config_path to one directory"
            ),
            Finding::UseLocalImagePullUnknown { version, config_path } => format!(
                "containerd {version} pulls through the transfer service, which ignores a config_path list ({config_path}) unless use_local_image_pull = true: containerd does not report use_local_image_pull and its configuration file is not readable, so this was not checked; mount the host's /etc/containerd read-only or pass --containerd-config PATH"
            ),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

/// The settings the check reads, as containerd sees them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// The generation the configuration is written for (unknown from a CRI status).
    pub generation: Option<Generation>,
    /// The registry `config_path`; `None` when unset or empty.
    pub config_path: Option<String>,
    /// `discard_unpacked_layers` (containerd's default is false).
    pub discard_unpacked_layers: bool,
    /// The deprecated `registry.mirrors` tables, sorted by registry.
    pub legacy_mirrors: Vec<LegacyMirror>,
    /// `content_sharing_policy` of the metadata plugin, when set.
    pub content_sharing_policy: Option<String>,
    /// `use_local_image_pull` of the CRI images plugin (containerd 2.x; default false), when
    /// known: read from the TOML files, never reported live.
    pub use_local_image_pull: Option<bool>,
}

/// One deprecated `registry.mirrors."<registry>"` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyMirror {
    /// The registry host.
    pub registry: String,
    /// Its `endpoint` list.
    pub endpoints: Vec<String>,
}

impl LegacyMirror {
    /// Reads `{registry: {endpoint: [..]}}` pairs, sorted by registry.
    pub(crate) fn from_pairs<'a>(
        pairs: impl Iterator<Item = (&'a String, Vec<String>)>,
    ) -> Vec<LegacyMirror> {
        let mut v: Vec<LegacyMirror> = pairs
            .map(|(registry, endpoints)| LegacyMirror {
                registry: registry.clone(),
                endpoints,
            })
            .collect();
        v.sort_by(|a, b| a.registry.cmp(&b.registry));
        v
    }
}

/// The verdict on one containerd configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// What was read.
    pub settings: Settings,
    /// What is wrong, errors first.
    pub findings: Vec<Finding>,
}

impl Evaluation {
    /// True when no finding is an error.
    pub fn ready(&self) -> bool {
        !self
            .findings
            .iter()
            .any(|f| f.severity() == Severity::Error)
    }

    /// The finding codes, in order.
    pub fn codes(&self) -> Vec<&'static str> {
        self.findings.iter().map(Finding::code).collect()
    }
}

/// Whether `config_path` (a `:`-separated list) includes `required`.
pub fn config_path_includes(config_path: &str, required: &str) -> bool {
    let required = trim_slash(required);
    required.is_empty()
        || config_path
            .split(':')
            .any(|entry| trim_slash(entry) == required)
}

fn trim_slash(p: &str) -> &str {
    let t = p.trim();
    let trimmed = t.trim_end_matches('/');
    if trimmed.is_empty() && t.starts_with('/') {
        "/"
    } else {
        trimmed
    }
}

/// The findings for `settings`, given the directory speil writes `hosts.toml` files to.
pub fn check_settings(settings: &Settings, required: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    match &settings.config_path {
        None => findings.push(Finding::ConfigPathNotSet),
        Some(cp) if !config_path_includes(cp, required) => {
            findings.push(Finding::ConfigPathMissingDir {
                config_path: cp.clone(),
                required: required.to_string(),
            })
        }
        Some(cp) => {
            if settings.generation == Some(Generation::Containerd2)
                && settings.use_local_image_pull != Some(true)
                && cp.split(':').filter(|e| !e.trim().is_empty()).count() > 1
            {
                findings.push(Finding::ConfigPathList {
                    config_path: cp.clone(),
                    required: required.to_string(),
                });
            }
        }
    }
    if !settings.legacy_mirrors.is_empty() {
        findings.push(Finding::LegacyRegistryMirrors {
            registries: settings
                .legacy_mirrors
                .iter()
                .map(|m| m.registry.clone())
                .collect(),
        });
    }
    if settings.discard_unpacked_layers {
        findings.push(Finding::DiscardUnpackedLayers);
    }
    findings
}

/// Reads the settings out of a merged configuration and checks them.
pub fn evaluate(merged: &MergedConfig, required: &str) -> Evaluation {
    let mut invalid = Vec::new();
    let (plugin_id, discard_parent): (&str, &[&str]) = match merged.generation {
        Generation::Containerd1 => (CRI_V2, &["containerd"]),
        Generation::Containerd2 => (CRI_IMAGES_V3, &[]),
    };
    let cri = super::load::plugin(&merged.table, plugin_id);
    let registry = cri
        .and_then(|t| t.get("registry"))
        .and_then(Value::as_table);
    let key = |rest: &str| format!("plugins.\"{plugin_id}\".{rest}");

    let config_path = match registry.and_then(|r| r.get("config_path")) {
        None => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            invalid.push(Finding::InvalidSetting {
                key: key("registry.config_path"),
                expected: "a string",
            });
            None
        }
    };
    let mut discard_table: Option<&Table> = cri;
    for part in discard_parent {
        discard_table = discard_table
            .and_then(|t| t.get(*part))
            .and_then(Value::as_table);
    }
    let discard_key = if discard_parent.is_empty() {
        key("discard_unpacked_layers")
    } else {
        key("containerd.discard_unpacked_layers")
    };
    let discard_unpacked_layers = match discard_table.and_then(|t| t.get("discard_unpacked_layers"))
    {
        None => false,
        Some(Value::Boolean(b)) => *b,
        Some(_) => {
            invalid.push(Finding::InvalidSetting {
                key: discard_key,
                expected: "true or false",
            });
            false
        }
    };
    let legacy_mirrors = match registry.and_then(|r| r.get("mirrors")) {
        Some(Value::Table(m)) => LegacyMirror::from_pairs(m.iter().map(|(k, v)| {
            let endpoints = v
                .get("endpoint")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            (k, endpoints)
        })),
        _ => Vec::new(),
    };
    let content_sharing_policy = super::load::plugin(&merged.table, BOLT)
        .and_then(|b| b.get("content_sharing_policy"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let use_local_image_pull = match super::load::plugin(&merged.table, CRI_IMAGES_V3)
        .and_then(|t| t.get("use_local_image_pull"))
    {
        None => false,
        Some(Value::Boolean(b)) => *b,
        Some(_) => {
            invalid.push(Finding::InvalidSetting {
                key: format!("plugins.\"{CRI_IMAGES_V3}\".use_local_image_pull"),
                expected: "true or false",
            });
            false
        }
    };
    let settings = Settings {
        generation: Some(merged.generation),
        config_path,
        discard_unpacked_layers,
        legacy_mirrors,
        content_sharing_policy,
        use_local_image_pull: Some(use_local_image_pull),
    };
    let mut findings = check_settings(&settings, required);
    findings.extend(invalid);
    findings.extend(merged.ignored.iter().map(|IgnoredSetting { path, key }| {
        Finding::IgnoredSetting {
            path: path.clone(),
            key: key.clone(),
        }
    }));
    sort_findings(&mut findings);
    Evaluation { settings, findings }
}

/// Errors first, otherwise in the order found.
pub(crate) fn sort_findings(findings: &mut [Finding]) {
    findings.sort_by_key(Finding::severity);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_membership() {
        assert!(config_path_includes("/a:/b", "/b"));
        assert!(config_path_includes("/a/:/b", "/a"));
        assert!(!config_path_includes("/a:/b", "/c"));
        assert!(!config_path_includes("/ab", "/a"));
    }

    #[test]
    fn messages_are_one_line() {
        let all = [
            Finding::ConfigPathNotSet,
            Finding::ConfigPathMissingDir {
                config_path: "/a".into(),
                required: "/b".into(),
            },
            Finding::DiscardUnpackedLayers,
            Finding::LegacyRegistryMirrors {
                registries: vec!["docker.io".into()],
            },
            Finding::ContentSharingShared,
            Finding::TransferServiceIgnoresList {
                version: "v2.3.4".into(),
                config_path: "/a:/b".into(),
            },
            Finding::UseLocalImagePullUnknown {
                version: "v2.4.0".into(),
                config_path: "/a:/b".into(),
            },
        ];
        for f in all {
            assert!(!f.message().contains('\n'));
        }
    }
}

//! What the running containerd reports about itself, and the rules that depend on its version.
//!
//! containerd 2.4 and later export the CRI image settings through the Introspection API:
//! `Plugins` with the filter `id==images` answers the plugin `io.containerd.cri.v1`/`images`,
//! whose `exports` map holds `RegistryConfigPath` and `DiscardUnpackedLayers` (both strings).
//! [`evaluate_introspection`] turns that answer into the same [`Evaluation`] the TOML and CRI
//! status checks give. `use_local_image_pull` is not exported: the transfer-service rule
//! ([`apply_runtime`]) still needs the TOML files for it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::distribution::Distribution;
use super::evaluate::{Evaluation, Finding, Settings, check_settings, sort_findings};
use super::load::Generation;
use super::runtime::{RuntimeGeneration, RuntimeVersion, pulls_through_transfer_service};

/// The plugin type of containerd 2.x's CRI image service.
pub const CRI_IMAGES_PLUGIN_TYPE: &str = "io.containerd.cri.v1";
/// The plugin id of containerd 2.x's CRI image service.
pub const CRI_IMAGES_PLUGIN_ID: &str = "images";
/// The Introspection `Plugins` filter that selects it.
pub const CRI_IMAGES_FILTER: &str = "id==images";
/// The export holding the registry `config_path`.
pub const EXPORT_CONFIG_PATH: &str = "RegistryConfigPath";
/// The export holding `discard_unpacked_layers`.
pub const EXPORT_DISCARD: &str = "DiscardUnpackedLayers";

/// One plugin of an Introspection `Plugins` answer (the fields speil reads).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IntrospectedPlugin {
    /// The plugin type (`io.containerd.cri.v1`).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The plugin id (`images`).
    pub id: String,
    /// The plugin's exported values.
    #[serde(default)]
    pub exports: BTreeMap<String, String>,
    /// The plugin types it requires.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// Its capabilities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
}

/// What the Introspection answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Introspected {
    /// Both exports were there: the settings and their findings.
    Complete(Evaluation),
    /// The plugin or an export is missing (or not a boolean): read the TOML files instead.
    Incomplete {
        /// What is missing, e.g. `io.containerd.cri.v1/images` or `RegistryConfigPath`.
        missing: Vec<String>,
    },
}

/// Checks an Introspection `Plugins` answer: the exports of `io.containerd.cri.v1`/`images`.
/// The settings' `use_local_image_pull` is unknown (`None`): it is not exported.
pub fn evaluate_introspection(plugins: &[IntrospectedPlugin], required: &str) -> Introspected {
    let Some(images) = plugins
        .iter()
        .find(|p| p.plugin_type == CRI_IMAGES_PLUGIN_TYPE && p.id == CRI_IMAGES_PLUGIN_ID)
    else {
        return Introspected::Incomplete {
            missing: vec![format!("{CRI_IMAGES_PLUGIN_TYPE}/{CRI_IMAGES_PLUGIN_ID}")],
        };
    };
    let config_path = images.exports.get(EXPORT_CONFIG_PATH);
    let discard = images
        .exports
        .get(EXPORT_DISCARD)
        .and_then(|v| match v.trim() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        });
    let mut missing = Vec::new();
    if config_path.is_none() {
        missing.push(EXPORT_CONFIG_PATH.to_string());
    }
    if discard.is_none() {
        missing.push(EXPORT_DISCARD.to_string());
    }
    let (Some(config_path), Some(discard)) = (config_path, discard) else {
        return Introspected::Incomplete { missing };
    };
    let settings = Settings {
        generation: Some(Generation::Containerd2),
        config_path: (!config_path.trim().is_empty()).then(|| config_path.clone()),
        discard_unpacked_layers: discard,
        legacy_mirrors: Vec::new(),
        content_sharing_policy: None,
        use_local_image_pull: None,
    };
    let mut findings = check_settings(&settings, required);
    sort_findings(&mut findings);
    Introspected::Complete(Evaluation { settings, findings })
}

/// The configuration generation whose keys a runtime of this version reads.
pub fn config_generation(version: &RuntimeVersion) -> Generation {
    match version.generation {
        RuntimeGeneration::V1 => Generation::Containerd1,
        RuntimeGeneration::V2Early | RuntimeGeneration::V2Live => Generation::Containerd2,
    }
}

/// The distribution as the running containerd decides it: plain containerd is named by the
/// runtime's generation, not by the shape of its file.
pub fn distribution_for_runtime(
    distribution: Distribution,
    version: &RuntimeVersion,
) -> Distribution {
    match distribution {
        Distribution::Generic(_) => Distribution::Generic(config_generation(version)),
        d => d,
    }
}

fn dirs(config_path: &str) -> usize {
    config_path
        .split(':')
        .filter(|d| !d.trim().is_empty())
        .count()
}

/// Applies what the running containerd's version decides (SPEC §6): fixes and messages in that
/// generation's keys only, and the transfer-service rule — on containerd ≥ 2.1 a `config_path`
/// list without `use_local_image_pull = true` is an error. When `use_local_image_pull` is
/// unknown (the TOML files were not readable) a list is a warning that says so.
pub fn apply_runtime(evaluation: &mut Evaluation, version: &RuntimeVersion) {
    let generation = config_generation(version);
    evaluation.settings.generation = Some(generation);
    if generation == Generation::Containerd1 {
        // A containerd 2.x setting: 1.x has no such key.
        evaluation.settings.use_local_image_pull = None;
    }
    evaluation.findings.retain(|f| match f {
        // Decided here from the version, not from the file's shape.
        Finding::ConfigPathList { .. } => false,
        // containerd 1.x reads no version 3 file at all: "2.x ignores it" does not apply.
        Finding::IgnoredSetting { .. } => generation == Generation::Containerd2,
        _ => true,
    });
    if let Some(config_path) = &evaluation.settings.config_path
        && dirs(config_path) > 1
        && pulls_through_transfer_service(version)
    {
        match evaluation.settings.use_local_image_pull {
            Some(true) => {}
            Some(false) => evaluation
                .findings
                .push(Finding::TransferServiceIgnoresList {
                    version: version.to_string(),
                    config_path: config_path.clone(),
                }),
            None => evaluation.findings.push(Finding::UseLocalImagePullUnknown {
                version: version.to_string(),
                config_path: config_path.clone(),
            }),
        }
    }
    sort_findings(&mut evaluation.findings);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containerd_config::parse_runtime_version;

    fn images(exports: &[(&str, &str)]) -> Vec<IntrospectedPlugin> {
        vec![IntrospectedPlugin {
            plugin_type: CRI_IMAGES_PLUGIN_TYPE.into(),
            id: CRI_IMAGES_PLUGIN_ID.into(),
            exports: exports
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }]
    }

    fn complete(i: Introspected) -> Evaluation {
        match i {
            Introspected::Complete(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exports_are_read() {
        let e = complete(evaluate_introspection(
            &images(&[(EXPORT_CONFIG_PATH, "/c"), (EXPORT_DISCARD, "false")]),
            "/c",
        ));
        assert_eq!(e.settings.config_path.as_deref(), Some("/c"));
        assert!(!e.settings.discard_unpacked_layers);
        assert_eq!(e.settings.use_local_image_pull, None);
        assert!(e.findings.is_empty());
        let e = complete(evaluate_introspection(
            &images(&[(EXPORT_CONFIG_PATH, ""), (EXPORT_DISCARD, "true")]),
            "/c",
        ));
        assert_eq!(
            e.codes(),
            ["config_path_not_set", "discard_unpacked_layers"]
        );
    }

    #[test]
    fn missing_exports_fall_back() {
        assert_eq!(
            evaluate_introspection(&[], "/c"),
            Introspected::Incomplete {
                missing: vec!["io.containerd.cri.v1/images".into()]
            }
        );
        assert_eq!(
            evaluate_introspection(&images(&[(EXPORT_DISCARD, "maybe")]), "/c"),
            Introspected::Incomplete {
                missing: vec![EXPORT_CONFIG_PATH.into(), EXPORT_DISCARD.into()]
            }
        );
        // Another plugin with the same id is not the CRI one.
        let mut other = images(&[(EXPORT_CONFIG_PATH, "/c"), (EXPORT_DISCARD, "false")]);
        other[0].plugin_type = "io.containerd.snapshotter.v1".into();
        assert!(matches!(
            evaluate_introspection(&other, "/c"),
            Introspected::Incomplete { .. }
        ));
    }

    fn list_eval(use_local: Option<bool>) -> Evaluation {
        let settings = Settings {
            generation: Some(Generation::Containerd2),
            config_path: Some("/speil:/other".into()),
            use_local_image_pull: use_local,
            ..Default::default()
        };
        let findings = check_settings(&settings, "/speil");
        Evaluation { settings, findings }
    }

    #[test]
    fn transfer_service_rule_per_version() {
        let v = |s: &str| parse_runtime_version(s).unwrap();
        let mut e = list_eval(Some(false));
        assert_eq!(e.codes(), ["config_path_list"]);
        apply_runtime(&mut e, &v("v2.3.4"));
        assert_eq!(e.codes(), ["transfer_service_ignores_config_path_list"]);
        assert!(!e.ready());
        let msg = e.findings[0].message();
        assert!(msg.starts_with("containerd v2.3.4 pulls through the transfer service"));
        assert!(msg.contains("use_local_image_pull = true"), "{msg}");

        let mut e = list_eval(Some(true));
        apply_runtime(&mut e, &v("v2.4.0-beta.0-70-g301026e58"));
        assert!(e.findings.is_empty(), "{:?}", e.findings);

        let mut e = list_eval(None);
        apply_runtime(&mut e, &v("v2.4.0"));
        assert_eq!(e.codes(), ["use_local_image_pull_unknown"]);
        assert!(e.ready());

        // containerd 2.0 and 1.x read the list.
        for version in ["v2.0.2", "1.6.20~ds1"] {
            let mut e = list_eval(Some(false));
            apply_runtime(&mut e, &v(version));
            assert!(e.findings.is_empty(), "{version}: {:?}", e.findings);
        }
        // One directory is fine everywhere.
        let mut e = list_eval(Some(false));
        e.settings.config_path = Some("/speil".into());
        e.findings.clear();
        apply_runtime(&mut e, &v("v2.3.4"));
        assert!(e.findings.is_empty());
    }

    #[test]
    fn generation_comes_from_the_runtime() {
        let v = |s: &str| parse_runtime_version(s).unwrap();
        assert_eq!(
            distribution_for_runtime(Distribution::Generic(Generation::Containerd1), &v("v2.3.4")),
            Distribution::Generic(Generation::Containerd2)
        );
        assert_eq!(
            distribution_for_runtime(Distribution::Kind, &v("1.6.20~ds1")),
            Distribution::Kind
        );
        let mut e = list_eval(Some(false));
        apply_runtime(&mut e, &v("1.7.2"));
        assert_eq!(e.settings.generation, Some(Generation::Containerd1));
    }
}

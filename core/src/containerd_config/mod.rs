//! containerd configuration: is this node's containerd configured for mirroring, and if not,
//! what exactly to change.
//!
//! speil needs two CRI settings: the registry `config_path` must include the directory speil
//! writes `hosts.toml` files into, and `discard_unpacked_layers` must be false (else the layers
//! peers ask for are gone after unpacking). Both take effect only when containerd starts, so
//! speil can check them but not apply them.
//!
//! The check has two sources:
//! - the TOML files ([`ConfigSet`]: the main file, its `imports`, drop-in parts — given as
//!   contents, the caller reads the files), merged as containerd merges them
//!   ([`ConfigSet::merge`]) and checked by [`evaluate`];
//! - the CRI `Status` answer's `info["config"]` JSON ([`evaluate_cri_config`]), which
//!   containerd 1.x fills and containerd 2.x no longer does;
//! - the Introspection exports of containerd 2.4 and later ([`evaluate_introspection`]).
//!
//! [`apply_runtime`] then applies what the running containerd's version decides: the keys the
//! fix is written in, and the transfer-service rule of containerd ≥ 2.1.
//!
//! [`detect`] recognises the distribution and [`diagnose`] turns findings into the fix the
//! operator pastes for it.

mod cri;
mod distribution;
mod evaluate;
mod fix;
mod live;
mod load;
mod runtime;

pub use cri::{CriStatus, CriStatusError, evaluate_cri_config};
pub use distribution::{ALL, Distribution, Hints, UnknownDistribution, detect, os_release_value};
pub use evaluate::{
    Evaluation, Finding, LegacyMirror, Settings, Severity, check_settings, config_path_includes,
    evaluate,
};
pub use fix::{Fix, FixStep, Report, diagnose};
pub use live::{
    CRI_IMAGES_FILTER, CRI_IMAGES_PLUGIN_ID, CRI_IMAGES_PLUGIN_TYPE, EXPORT_CONFIG_PATH,
    EXPORT_DISCARD, Introspected, IntrospectedPlugin, apply_runtime, config_generation,
    distribution_for_runtime, evaluate_introspection,
};
pub use load::{
    BOLT, CRI_IMAGES_V3, CRI_RUNTIME_V3, CRI_V2, ConfigError, ConfigSet, Generation,
    IgnoredSetting, Layer, LoadedFile, MergedConfig, imports_of,
};
pub use runtime::{
    DEFAULT_CONFIG_FILE, DEFAULT_GRPC_ADDRESS, LiveSource, RuntimeGeneration, RuntimeVersion,
    UnknownRuntimeVersion, config_file_of, grpc_address_of, live_source, parse_runtime_version,
    pulls_through_transfer_service,
};

/// Checks a set of files end to end: merge, evaluate, recognise (unless `distribution` is
/// given), and build the report. `extra` findings (from reading the files, such as a missing
/// import) are added to the evaluation.
pub fn check_files(
    set: &ConfigSet,
    required: &str,
    hints: Hints<'_>,
    distribution: Option<Distribution>,
    extra: Vec<Finding>,
) -> Report {
    check_files_for(set, required, hints, distribution, extra, None)
}

/// [`check_files`] for the files a running containerd of version `runtime` uses: its
/// generation decides the keys of the fix and the transfer-service rule ([`apply_runtime`]).
pub fn check_files_for(
    set: &ConfigSet,
    required: &str,
    hints: Hints<'_>,
    distribution: Option<Distribution>,
    extra: Vec<Finding>,
    runtime: Option<&RuntimeVersion>,
) -> Report {
    let merged = set.merge();
    let mut evaluation = evaluate(&merged, required);
    evaluation.findings.extend(extra);
    evaluation.findings.sort_by_key(Finding::severity);
    let mut distribution = distribution.unwrap_or_else(|| detect(set, &merged, hints));
    if let Some(version) = runtime {
        apply_runtime(&mut evaluation, version);
        distribution = distribution_for_runtime(distribution, version);
    }
    diagnose(distribution, evaluation, required, Some(&merged))
}

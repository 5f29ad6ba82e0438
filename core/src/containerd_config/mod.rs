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
//!   containerd 1.x fills and containerd 2.x no longer does.
//!
//! [`detect`] recognises the distribution and [`diagnose`] turns findings into the fix the
//! operator pastes for it.

mod cri;
mod distribution;
mod evaluate;
mod fix;
mod load;
mod runtime;

pub use cri::{CriStatus, CriStatusError, evaluate_cri_config};
pub use distribution::{ALL, Distribution, Hints, UnknownDistribution, detect, os_release_value};
pub use evaluate::{
    Evaluation, Finding, LegacyMirror, Settings, Severity, check_settings, config_path_includes,
    evaluate,
};
pub use fix::{Fix, FixStep, Report, diagnose};
pub use load::{
    BOLT, CRI_IMAGES_V3, CRI_RUNTIME_V3, CRI_V2, ConfigError, ConfigSet, Generation,
    IgnoredSetting, Layer, LoadedFile, MergedConfig, imports_of,
};
pub use runtime::{
    DEFAULT_CONFIG_FILE, DEFAULT_GRPC_ADDRESS, LiveSource, RuntimeGeneration, RuntimeVersion,
    UnknownRuntimeVersion, config_file_of, grpc_address_of, live_source, parse_runtime_version,
    pulls_through_transfer_service, transfer_service_problem,
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
    let merged = set.merge();
    let mut evaluation = evaluate(&merged, required);
    evaluation.findings.extend(extra);
    evaluation.findings.sort_by_key(Finding::severity);
    let distribution = distribution.unwrap_or_else(|| detect(set, &merged, hints));
    diagnose(distribution, evaluation, required, Some(&merged))
}

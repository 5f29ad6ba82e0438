//! The same check from the CRI `RuntimeService/Status` (verbose) answer.
//!
//! containerd 1.x puts its whole CRI plugin configuration, as a JSON string, into
//! `info["config"]`; the check reads `registry.configPath` and
//! `containerd.discardUnpackedLayers` from it. containerd 2.x reports only the runtime part
//! there, without either field: [`CriStatus::Incomplete`] tells the caller to read the TOML
//! files instead.

use serde_json::Value;

use super::evaluate::{Evaluation, Finding, LegacyMirror, Settings, check_settings, sort_findings};

/// What the CRI status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CriStatus {
    /// Both fields were reported.
    Complete(Evaluation),
    /// At least one field is missing (containerd 2.x): fall back to the TOML files.
    Incomplete {
        /// The missing fields, as findings ([`Finding::CriFieldMissing`]).
        missing: Vec<Finding>,
    },
}

/// The CRI status document is not what containerd sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CriStatusError {
    /// Not JSON.
    #[error("CRI status config is not valid JSON: {0}")]
    Json(String),
    /// JSON, but not an object.
    #[error("CRI status config is not a JSON object")]
    NotObject,
}

/// Checks the `info["config"]` string of a CRI status answer. Also accepts `crictl info`
/// output (whose `config` member holds the same object).
pub fn evaluate_cri_config(config_json: &str, required: &str) -> Result<CriStatus, CriStatusError> {
    let doc: Value =
        serde_json::from_str(config_json).map_err(|e| CriStatusError::Json(e.to_string()))?;
    let mut obj = doc.as_object().ok_or(CriStatusError::NotObject)?;
    if !obj.contains_key("registry")
        && !obj.contains_key("containerd")
        && let Some(Value::Object(inner)) = obj.get("config")
    {
        obj = inner;
    }
    let discard = obj
        .get("containerd")
        .and_then(|c| c.get("discardUnpackedLayers"))
        .and_then(Value::as_bool);
    let registry = obj.get("registry");
    let config_path = registry
        .and_then(|r| r.get("configPath"))
        .and_then(Value::as_str);
    let mut missing = Vec::new();
    if discard.is_none() {
        missing.push(Finding::CriFieldMissing {
            field: "containerd.discardUnpackedLayers",
        });
    }
    if config_path.is_none() {
        missing.push(Finding::CriFieldMissing {
            field: "registry.configPath",
        });
    }
    let (Some(discard), Some(config_path)) = (discard, config_path) else {
        return Ok(CriStatus::Incomplete { missing });
    };
    let legacy_mirrors = match registry.and_then(|r| r.get("mirrors")) {
        Some(Value::Object(m)) => LegacyMirror::from_pairs(m.iter().map(|(k, v)| {
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
    let settings = Settings {
        generation: None,
        config_path: (!config_path.trim().is_empty()).then(|| config_path.to_string()),
        discard_unpacked_layers: discard,
        legacy_mirrors,
        content_sharing_policy: None,
        use_local_image_pull: None,
    };
    let mut findings = check_settings(&settings, required);
    sort_findings(&mut findings);
    Ok(CriStatus::Complete(Evaluation { settings, findings }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(
            evaluate_cri_config("{", "/x"),
            Err(CriStatusError::Json(_))
        ));
        assert_eq!(
            evaluate_cri_config("[]", "/x"),
            Err(CriStatusError::NotObject)
        );
    }

    #[test]
    fn wrong_types_count_as_missing() {
        let s = evaluate_cri_config(
            r#"{"registry":{"configPath":3},"containerd":{"discardUnpackedLayers":"no"}}"#,
            "/x",
        )
        .unwrap();
        assert!(matches!(s, CriStatus::Incomplete { missing } if missing.len() == 2));
    }
}

//! The containerd configuration check against real distributions' files (tests/fixtures,
//! provenance in the SOURCES.md next to them).

use speil_core::containerd_config::{
    ConfigSet, CriStatus, Distribution, Finding, Generation, Hints, Introspected,
    IntrospectedPlugin, Layer, Report, RuntimeGeneration, check_files, check_files_for,
    config_generation, evaluate_cri_config, evaluate_introspection, parse_runtime_version,
};

const DEFAULT_PATH: &str = "/etc/containerd/certs.d";

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/containerd-config/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn cri_fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/cri-status/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn check_layers(files: &[(&str, String, Layer)], required: &str, hints: Hints<'_>) -> Report {
    let mut set = ConfigSet::new();
    for (path, contents, layer) in files {
        set.add(path, contents, *layer).unwrap();
    }
    check_files(&set, required, hints, None, Vec::new())
}

fn check_one(name: &str, required: &str) -> Report {
    check_layers(
        &[("/etc/containerd/config.toml", fixture(name), Layer::Main)],
        required,
        Hints::default(),
    )
}

fn codes(r: &Report) -> Vec<&'static str> {
    r.evaluation.codes()
}

fn assert_report(r: &Report, dist: Distribution, ready: bool, expected: &[&str]) {
    assert_eq!(r.distribution, dist, "{}", r.to_text());
    assert_eq!(r.ready(), ready, "{}", r.to_text());
    assert_eq!(codes(r), expected, "{}", r.to_text());
    assert_eq!(r.fix.is_some(), !ready);
}

#[test]
fn aks_is_ready() {
    let r = check_one("aks.toml", DEFAULT_PATH);
    assert_report(&r, Distribution::Aks, true, &[]);
    assert_eq!(
        r.evaluation.settings.generation,
        Some(Generation::Containerd1)
    );
    assert_eq!(
        r.evaluation.settings.config_path.as_deref(),
        Some(DEFAULT_PATH)
    );
}

#[test]
fn aks_containerd2_mixed_form_is_ready() {
    let r = check_one("aks-containerd2.toml", DEFAULT_PATH);
    assert_report(&r, Distribution::Aks, true, &[]);
    assert_eq!(
        r.evaluation.settings.generation,
        Some(Generation::Containerd2)
    );
    assert_eq!(
        r.evaluation.settings.config_path.as_deref(),
        Some(DEFAULT_PATH)
    );
}

#[test]
fn minikube_discards_layers() {
    let r = check_one("minikube.toml", DEFAULT_PATH);
    assert_report(
        &r,
        Distribution::Minikube,
        false,
        &["discard_unpacked_layers"],
    );
    assert_eq!(
        r.evaluation.findings[0].message(),
        "containerd discards unpacked layers: set discard_unpacked_layers = false"
    );
    let fix = r.fix.unwrap();
    assert!(fix.steps[0].content.contains("minikube ssh"));
    assert!(
        fix.steps[0]
            .content
            .contains("discard_unpacked_layers = false")
    );
}

#[test]
fn eks_al2_needs_drop_in_and_the_drop_in_works() {
    let r = check_one("eks-al2.toml", DEFAULT_PATH);
    assert_report(
        &r,
        Distribution::EksAl2,
        false,
        &["discard_unpacked_layers"],
    );
    let fix = r.fix.clone().unwrap();
    let step = &fix.steps[0];
    assert_eq!(
        step.path.as_deref(),
        Some("/etc/containerd/config.d/spegel.toml")
    );
    // The drop-in repeats the whole CRI plugin table, because imports replace whole tables.
    assert!(step.content.contains("sandbox_image"), "{}", step.content);
    // Applying it as containerd would (an import) makes the node ready.
    let fixed = check_layers(
        &[
            (
                "/etc/containerd/config.toml",
                fixture("eks-al2.toml"),
                Layer::Main,
            ),
            (
                "/etc/containerd/config.d/spegel.toml",
                step.content.clone(),
                Layer::Import,
            ),
        ],
        DEFAULT_PATH,
        Hints::default(),
    );
    assert!(fixed.ready(), "{}", fixed.to_text());
    assert_eq!(
        fixed.evaluation.settings.config_path.as_deref(),
        Some("/etc/containerd/certs.d:/etc/docker/certs.d")
    );
}

#[test]
fn eks_al2_minimal_drop_in_loses_config_path() {
    // What Spegel's docs would give if only discard_unpacked_layers were set: the import
    // replaces the whole plugin table and config_path is gone.
    let r = check_layers(
        &[
            ("/etc/containerd/config.toml", fixture("eks-al2.toml"), Layer::Main),
            (
                "/etc/containerd/config.d/x.toml",
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\ndiscard_unpacked_layers = false\n".into(),
                Layer::Import,
            ),
        ],
        DEFAULT_PATH,
        Hints::default(),
    );
    assert_eq!(codes(&r), ["config_path_not_set"]);
}

#[test]
fn eks_al2_containerd2() {
    let r = check_one("eks-al2-containerd2.toml", DEFAULT_PATH);
    assert_report(
        &r,
        Distribution::EksAl2,
        false,
        &["discard_unpacked_layers", "config_path_list"],
    );
    let step = &r.fix.as_ref().unwrap().steps[0];
    assert!(step.content.starts_with("version = 3\n"));
    let fixed = check_layers(
        &[
            (
                "/etc/containerd/config.toml",
                fixture("eks-al2-containerd2.toml"),
                Layer::Main,
            ),
            (
                "/etc/containerd/config.d/spegel.toml",
                step.content.clone(),
                Layer::Import,
            ),
        ],
        DEFAULT_PATH,
        Hints::default(),
    );
    assert!(fixed.ready(), "{}", fixed.to_text());
}

fn nodeadm_snippet(r: &Report) -> String {
    let content = &r.fix.as_ref().unwrap().steps[0].content;
    assert!(content.starts_with("apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\n"));
    let (_, block) = content.split_once("config: |\n").unwrap();
    block
        .lines()
        .map(|l| l.strip_prefix("      ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn eks_al2023_needs_nodeconfig() {
    for (name, expected) in [
        ("eks-al2023.toml", &["discard_unpacked_layers"][..]),
        (
            "eks-al2023-containerd2.toml",
            &["discard_unpacked_layers", "config_path_list"][..],
        ),
    ] {
        let r = check_one(name, DEFAULT_PATH);
        assert_report(&r, Distribution::EksAl2023, false, expected);
        // nodeadm merges the snippet key by key.
        let fixed = check_layers(
            &[
                ("/etc/containerd/config.toml", fixture(name), Layer::Main),
                ("nodeconfig", nodeadm_snippet(&r), Layer::DropIn),
            ],
            DEFAULT_PATH,
            Hints::default(),
        );
        assert!(fixed.ready(), "{name}: {}", fixed.to_text());
    }
}

#[test]
fn eks_al2023_nodeadm_merged_is_ready() {
    let r = check_one("eks-al2023-nodeadm-merged-discard-false.toml", DEFAULT_PATH);
    assert_report(&r, Distribution::EksAl2023, true, &[]);
}

#[test]
fn os_release_tells_eks_generations_apart() {
    let r = check_layers(
        &[(
            "/etc/containerd/config.toml",
            fixture("eks-al2.toml"),
            Layer::Main,
        )],
        DEFAULT_PATH,
        Hints {
            os_release: Some("NAME=\"Amazon Linux\"\nID=\"amzn\"\nVERSION_ID=\"2023\"\n"),
            sys_vendor: None,
        },
    );
    assert_eq!(r.distribution, Distribution::EksAl2023);
}

#[test]
fn k3s_needs_its_own_path() {
    for (name, generation) in [
        ("k3s.toml", Generation::Containerd2),
        ("k3s-containerd1.toml", Generation::Containerd1),
    ] {
        let r = check_one(name, DEFAULT_PATH);
        assert_report(&r, Distribution::K3s, false, &["config_path_missing_dir"]);
        assert_eq!(r.evaluation.settings.generation, Some(generation));
        assert_eq!(
            r.evaluation.findings[0].message(),
            "containerd registry config path is /var/lib/rancher/k3s/agent/etc/containerd/certs.d but must include /etc/containerd/certs.d"
        );
        let fix = r.fix.as_ref().unwrap();
        assert!(fix.steps[0].content.contains("embedded-registry: true"));
        assert!(fix.steps[1].content.contains(
            "containerdRegistryConfigPath: /var/lib/rancher/k3s/agent/etc/containerd/certs.d"
        ));
        let ok = check_one(name, "/var/lib/rancher/k3s/agent/etc/containerd/certs.d");
        assert_report(&ok, Distribution::K3s, true, &[]);
    }
}

#[test]
fn kind_needs_patches() {
    let r = check_one("kind.toml", DEFAULT_PATH);
    assert_report(
        &r,
        Distribution::Kind,
        false,
        &[
            "config_path_not_set",
            "discard_unpacked_layers",
            "content_sharing_shared",
        ],
    );
    assert_eq!(
        r.evaluation.findings[0].message(),
        "containerd registry config path is not set: mirror configuration cannot take effect"
    );
    let content = &r.fix.as_ref().unwrap().steps[0].content;
    assert!(content.contains("containerdConfigPatches:"));
    // The patch is valid TOML that fixes the node when merged (Kind merges patches by key).
    let (_, patch) = content.split_once("- |-\n").unwrap();
    let patch: String = patch
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
        .collect();
    assert!(patch.contains("content_sharing_policy = \"isolated\""));
    let fixed = check_layers(
        &[
            (
                "/etc/containerd/config.toml",
                fixture("kind.toml"),
                Layer::Main,
            ),
            ("patch", patch, Layer::DropIn),
        ],
        DEFAULT_PATH,
        Hints::default(),
    );
    assert_report(&fixed, Distribution::Kind, true, &[]);
}

#[test]
fn talos_needs_part_and_path() {
    let r = check_one("talos.toml", DEFAULT_PATH);
    assert_report(
        &r,
        Distribution::Talos,
        false,
        &["config_path_missing_dir", "discard_unpacked_layers"],
    );
    let text = r.to_text();
    assert!(text.contains("/etc/cri/conf.d/20-customization.part"));
    assert!(text.contains("containerdRegistryConfigPath: /etc/cri/conf.d/hosts"));
    assert!(text.contains("pod-security.kubernetes.io/enforce=privileged"));

    let r = check_one("talos.toml", "/etc/cri/conf.d/hosts");
    assert_report(&r, Distribution::Talos, false, &["discard_unpacked_layers"]);
}

#[test]
fn talos_top_level_file_follows_imports() {
    let r = check_layers(
        &[
            (
                "/etc/cri/containerd.toml",
                fixture("talos-cri-containerd.toml"),
                Layer::Main,
            ),
            (
                "/etc/cri/conf.d/cri.toml",
                fixture("talos.toml"),
                Layer::Import,
            ),
        ],
        "/etc/cri/conf.d/hosts",
        Hints::default(),
    );
    assert_report(&r, Distribution::Talos, false, &["discard_unpacked_layers"]);
}

#[test]
fn talos_base_part_and_customization_part() {
    let base = (
        "/etc/cri/conf.d/00-base.part",
        fixture("talos-cri-part.toml"),
        Layer::Main,
    );
    let r = check_layers(
        std::slice::from_ref(&base),
        "/etc/cri/conf.d/hosts",
        Hints::default(),
    );
    assert_report(
        &r,
        Distribution::Talos,
        false,
        &["config_path_not_set", "discard_unpacked_layers"],
    );
    let custom = "[plugins.\"io.containerd.cri.v1.images\"]\n  discard_unpacked_layers = false\n";
    let registries =
        "[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/etc/cri/conf.d/hosts'\n";
    let fixed = check_layers(
        &[
            base,
            (
                "/etc/cri/conf.d/01-registries.part",
                registries.into(),
                Layer::DropIn,
            ),
            (
                "/etc/cri/conf.d/20-customization.part",
                custom.into(),
                Layer::DropIn,
            ),
        ],
        "/etc/cri/conf.d/hosts",
        Hints::default(),
    );
    assert!(fixed.ready(), "{}", fixed.to_text());
}

#[test]
fn gke_is_unsupported_and_explained() {
    let r = check_one("gke.toml", DEFAULT_PATH);
    assert_report(
        &r,
        Distribution::Gke,
        false,
        &[
            "config_path_not_set",
            "legacy_registry_mirrors",
            "discard_unpacked_layers",
        ],
    );
    assert!(
        r.evaluation.findings[1]
            .message()
            .contains("(docker.io, k8s.gcr.io)")
    );
    let fix = r.fix.as_ref().unwrap();
    assert!(fix.summary.contains("GKE does not support this"));
    assert!(fix.notes.iter().any(|n| n.contains("containerd restart")));
    // The old mirror becomes a hosts.toml the operator can keep.
    let hosts = fix
        .steps
        .iter()
        .find(|s| s.path.as_deref() == Some("/etc/containerd/certs.d/docker.io/hosts.toml"))
        .unwrap();
    let t: toml::Table = hosts.content.parse().unwrap();
    assert_eq!(t["server"].as_str(), Some("https://registry-1.docker.io"));
    assert!(t["host"].get("https://mirror.gcr.io").is_some());
    assert!(t["host"].get("https://registry-1.docker.io").is_none());
}

#[test]
fn digitalocean_is_unsupported_and_explained() {
    let files = [(
        "/etc/containerd/config.toml",
        fixture("digitalocean.toml"),
        Layer::Main,
    )];
    let r = check_layers(
        &files,
        DEFAULT_PATH,
        Hints {
            os_release: Some("ID=debian\n"),
            sys_vendor: Some("DigitalOcean\n"),
        },
    );
    assert_report(
        &r,
        Distribution::DigitalOcean,
        false,
        &["config_path_not_set"],
    );
    let fix = r.fix.as_ref().unwrap();
    assert!(
        fix.summary
            .contains("DigitalOcean Kubernetes does not support this")
    );
    assert!(fix.notes.iter().any(|n| n.contains("containerd restart")));
    assert!(
        fix.steps[0]
            .content
            .contains("config_path = \"/etc/containerd/certs.d\"")
    );
    // Without the vendor hint nothing in the file says DigitalOcean.
    let r = check_layers(&files, DEFAULT_PATH, Hints::default());
    assert_report(
        &r,
        Distribution::Generic(Generation::Containerd1),
        false,
        &["config_path_not_set"],
    );
}

#[test]
fn containerd_defaults_lack_config_path() {
    for (name, generation) in [
        ("containerd-1.6-default.toml", Generation::Containerd1),
        ("containerd-1.7-default.toml", Generation::Containerd1),
        ("containerd-2.x-default.toml", Generation::Containerd2),
    ] {
        let r = check_one(name, DEFAULT_PATH);
        assert_report(
            &r,
            Distribution::Generic(generation),
            false,
            &["config_path_not_set"],
        );
        assert!(!r.evaluation.settings.discard_unpacked_layers);
    }
}

#[test]
fn v2_key_in_v3_file_is_ignored_and_reported() {
    let r = check_layers(
        &[(
            "/etc/containerd/config.toml",
            "version = 3\n[plugins.'io.containerd.cri.v1.images']\ndiscard_unpacked_layers = true\n[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/etc/containerd/certs.d'\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\ndiscard_unpacked_layers = false\n".into(),
            Layer::Main,
        )],
        DEFAULT_PATH,
        Hints::default(),
    );
    assert_eq!(codes(&r), ["discard_unpacked_layers", "ignored_setting"]);
}

#[test]
fn json_report_shape() {
    let r = check_one("kind.toml", DEFAULT_PATH);
    let j = r.to_json();
    assert_eq!(j["distribution"], "kind");
    assert_eq!(j["ready"], false);
    assert_eq!(j["findings"][0]["code"], "config_path_not_set");
    assert_eq!(j["findings"][0]["severity"], "error");
    assert!(j["fix"]["steps"][0]["content"].is_string());
    let ok = check_one("aks.toml", DEFAULT_PATH).to_json();
    assert_eq!(ok["ready"], true);
    assert!(ok["fix"].is_null());
}

#[test]
fn parse_errors_name_the_file() {
    let mut set = ConfigSet::new();
    let e = set
        .add("/etc/x.toml", "[plugins\n", Layer::Main)
        .unwrap_err();
    assert!(e.to_string().starts_with("/etc/x.toml: not valid TOML"));
}

// ---- CRI status ----

fn cri_codes(json: &str, required: &str) -> Vec<&'static str> {
    match evaluate_cri_config(json, required).unwrap() {
        CriStatus::Complete(e) => e.codes(),
        CriStatus::Incomplete { missing } => missing.iter().map(Finding::code).collect(),
    }
}

#[test]
fn cri_status_fixtures() {
    assert_eq!(
        cri_codes(
            &cri_fixture("containerd-1.6.21-good.config.json"),
            DEFAULT_PATH
        ),
        Vec::<&str>::new()
    );
    assert_eq!(
        cri_codes(
            &cri_fixture("containerd-1.7.0-discard-true.config.json"),
            DEFAULT_PATH
        ),
        ["discard_unpacked_layers"]
    );
    assert_eq!(
        cri_codes(
            &cri_fixture("containerd-1.7.0-empty-config-path.config.json"),
            DEFAULT_PATH
        ),
        ["config_path_not_set"]
    );
    assert_eq!(
        cri_codes(
            &cri_fixture("containerd-1.7.0-crictl-info.json"),
            DEFAULT_PATH
        ),
        ["config_path_not_set"]
    );
    // containerd 2.x reports neither field.
    assert!(matches!(
        evaluate_cri_config(r#"{"containerdRootDir":"/var/lib/containerd","enableCDI":true}"#, DEFAULT_PATH),
        Ok(CriStatus::Incomplete { missing }) if missing.len() == 2
    ));
}

#[test]
fn spegel_verify_cases() {
    let doc: serde_json::Value =
        serde_json::from_str(&cri_fixture("spegel-verify-cases.json")).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let config = case["config"].as_str().unwrap();
        let required = case["requiredConfigPath"].as_str().unwrap();
        let got = cri_codes(config, required);
        match case["expectedError"].as_str() {
            None => assert!(got.is_empty(), "{name}: {got:?}"),
            Some(err) => {
                let code = if err.starts_with("field ") {
                    "cri_field_missing"
                } else if err.contains("needs to be set") {
                    "config_path_not_set"
                } else if err.contains("needs to contain path") {
                    "config_path_missing_dir"
                } else if err.contains("discard unpacked layers cannot be enabled") {
                    "discard_unpacked_layers"
                } else {
                    panic!("{name}: unmapped error {err}")
                };
                assert!(got.contains(&code), "{name}: {got:?} lacks {code}");
            }
        }
    }
}

mod no_panic {
    use proptest::prelude::*;
    use speil_core::containerd_config::{
        ConfigSet, Hints, Layer, check_files, evaluate_cri_config,
    };

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_is_an_error_or_a_report(text in ".{0,200}", tomlish in "(version = [0-9]\n)?(\\[plugins(\\.\"[a-z.0-9]{1,30}\")*\\]\n([a-z_]{1,20} = (true|false|\"[a-z/:]{0,20}\"|[0-9]{1,3})\n){0,3}){0,4}") {
            for input in [&text, &tomlish] {
                let mut set = ConfigSet::new();
                if set.add("/x.toml", input, Layer::Main).is_ok() {
                    let report = check_files(&set, "/etc/containerd/certs.d", Hints::default(), None, Vec::new());
                    let _ = report.to_text();
                    let _ = report.to_json();
                }
                let _ = evaluate_cri_config(input, "/etc/containerd/certs.d");
            }
        }

        #[test]
        fn arbitrary_cri_json_is_an_error_or_a_verdict(
            cp in prop::option::of(prop_oneof![Just(serde_json::json!("")), Just(serde_json::json!("/a:/etc/containerd/certs.d")), Just(serde_json::json!(3)), Just(serde_json::json!(null))]),
            dul in prop::option::of(prop_oneof![Just(serde_json::json!(true)), Just(serde_json::json!(false)), Just(serde_json::json!("x"))]),
        ) {
            let mut doc = serde_json::json!({"registry": {}, "containerd": {}});
            if let Some(cp) = cp { doc["registry"]["configPath"] = cp; }
            if let Some(dul) = dul { doc["containerd"]["discardUnpackedLayers"] = dul; }
            prop_assert!(evaluate_cri_config(&doc.to_string(), "/etc/containerd/certs.d").is_ok());
        }
    }
}

// ---- the running containerd's generation decides the keys ----

const RUNTIMES: [&str; 3] = ["1.6.20~ds1", "v2.3.4", "v2.4.0-beta.0-70-g301026e58"];

/// Text of the other generation that output for `generation` must never contain.
fn foreign(generation: Generation) -> &'static [&'static str] {
    match generation {
        Generation::Containerd1 => &[
            "io.containerd.cri.v1",
            "version = 3",
            "config-v3.toml.tmpl",
            "use_local_image_pull",
            "containerd 2.x",
        ],
        Generation::Containerd2 => &[
            "io.containerd.grpc.v1.cri\".registry",
            "io.containerd.grpc.v1.cri\".containerd",
            "[plugins.\"io.containerd.grpc.v1.cri\"]",
            "version = 2",
            "/config.toml.tmpl",
            "containerd 1.x",
        ],
    }
}

fn all_fixtures() -> Vec<(String, String)> {
    let dir = format!(
        "{}/tests/fixtures/containerd-config",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert!(names.len() > 15, "{names:?}");
    let mut out: Vec<(String, String)> = names
        .into_iter()
        .map(|n| {
            let text = fixture(&n);
            (n, text)
        })
        .collect();
    // A config_path list without use_local_image_pull, in both config versions.
    out.push((
        "list-v3".into(),
        "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n".into(),
    ));
    out.push((
        "list-v2".into(),
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n".into(),
    ));
    out
}

/// Every fixture, checked for every running generation, with every distribution's fix: the
/// text and JSON name only the running generation's keys (a finding that quotes a key the
/// user wrote, `ignored_setting`, is the one exception).
#[test]
fn doctor_never_prints_the_other_generations_keys() {
    let mut distributions: Vec<Option<Distribution>> = vec![None];
    distributions.extend(speil_core::containerd_config::ALL.iter().copied().map(Some));
    let mut checked = 0;
    let mut transfer_errors = 0;
    for (name, text) in all_fixtures() {
        let mut set = ConfigSet::new();
        set.add("/etc/containerd/config.toml", &text, Layer::Main)
            .unwrap();
        for raw in RUNTIMES {
            let version = parse_runtime_version(raw).unwrap();
            let generation = config_generation(&version);
            for required in [DEFAULT_PATH, "/var/lib/speil/hosts"] {
                for distribution in &distributions {
                    let r = check_files_for(
                        &set,
                        required,
                        Hints::default(),
                        *distribution,
                        Vec::new(),
                        Some(&version),
                    );
                    let mut out = format!(
                        "{}\n{}",
                        r.to_text(),
                        serde_json::to_string_pretty(&r.to_json()).unwrap()
                    );
                    for f in &r.evaluation.findings {
                        if let Finding::IgnoredSetting { .. } = f {
                            out = out.replace(&f.message(), "");
                        }
                    }
                    for bad in foreign(generation) {
                        assert!(
                            !out.contains(bad),
                            "{name} on {raw} ({distribution:?}, {required}) prints {bad:?}:\n{out}"
                        );
                    }
                    if r.evaluation
                        .findings
                        .iter()
                        .any(|f| matches!(f, Finding::TransferServiceIgnoresList { .. }))
                    {
                        transfer_errors += 1;
                        assert!(!r.ready());
                        assert!(out.contains("use_local_image_pull = true"), "{out}");
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 1000, "{checked}");
    assert!(transfer_errors > 0);
}

#[test]
fn transfer_service_rule_from_the_files() {
    let list = "/etc/containerd/certs.d:/etc/docker/certs.d";
    let file = |extra: &str| {
        format!(
            "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\n{extra}[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = \"{list}\"\n"
        )
    };
    let check = |text: &str, raw: &str| {
        let mut set = ConfigSet::new();
        set.add("/etc/containerd/config.toml", text, Layer::Main)
            .unwrap();
        let v = parse_runtime_version(raw).unwrap();
        check_files_for(
            &set,
            DEFAULT_PATH,
            Hints::default(),
            None,
            Vec::new(),
            Some(&v),
        )
    };
    let r = check(&file(""), "v2.3.4");
    assert_eq!(codes(&r), ["transfer_service_ignores_config_path_list"]);
    assert_eq!(r.distribution.id(), "containerd-2.x");
    assert_eq!(r.to_json()["use_local_image_pull"], false);
    let fix = r.fix.as_ref().unwrap();
    assert_eq!(
        fix.steps[0].content,
        "[plugins.\"io.containerd.cri.v1.images\"]\n  use_local_image_pull = true\n"
    );
    assert!(
        fix.notes
            .iter()
            .any(|n| n.contains("config_path can be the one directory /etc/containerd/certs.d")),
        "{:?}",
        fix.notes
    );
    // With the setting, and on 2.0, the list is fine; without a runtime it stays a warning.
    let r = check(&file("use_local_image_pull = true\n"), "v2.3.4");
    assert!(r.ready() && codes(&r).is_empty(), "{}", r.to_text());
    assert_eq!(r.to_json()["use_local_image_pull"], true);
    assert!(codes(&check(&file(""), "v2.0.5")).is_empty());
    let mut set = ConfigSet::new();
    set.add("/c.toml", &file(""), Layer::Main).unwrap();
    let r = check_files(&set, DEFAULT_PATH, Hints::default(), None, Vec::new());
    assert_eq!(codes(&r), ["config_path_list"]);
    // A wrong type is an invalid setting.
    let r = check(&file("use_local_image_pull = \"yes\"\n"), "v2.3.4");
    assert!(codes(&r).contains(&"invalid_setting"), "{}", r.to_text());
}

// ---- answers of the real daemons (fixtures/live, see its README) ----

fn live_fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/live/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn live_versions() -> serde_json::Value {
    serde_json::from_str(&live_fixture("versions.json")).unwrap()
}

/// The `config_path` the harness gave the daemon that answered with `stem`.
fn live_certs(stem: &str) -> String {
    format!(
        "{}/certs.d",
        live_versions()[format!("{stem}.node_dir")]
            .as_str()
            .unwrap()
    )
}

#[test]
fn live_runtime_versions() {
    let versions = live_versions();
    for (file, generation) in [
        (
            "containerd-1.6.cri-status.config.json",
            RuntimeGeneration::V1,
        ),
        (
            "containerd-2.3.4.cri-status.config.json",
            RuntimeGeneration::V2Early,
        ),
        (
            "containerd-2.4.0-dev.cri-status.config.json",
            RuntimeGeneration::V2Live,
        ),
        (
            "containerd-2.4.0-dev.introspection-images.json",
            RuntimeGeneration::V2Live,
        ),
    ] {
        let raw = versions[file].as_str().unwrap();
        assert_eq!(
            parse_runtime_version(raw).unwrap().generation,
            generation,
            "{file}"
        );
    }
    assert_eq!(
        versions["containerd-2.3.4.cri-status.config.json"],
        "v2.3.4"
    );
}

#[test]
fn live_cri_status_of_1_6_has_the_settings() {
    let certs = live_certs("containerd-1.6");
    let json = live_fixture("containerd-1.6.cri-status.config.json");
    let CriStatus::Complete(e) = evaluate_cri_config(&json, &certs).unwrap() else {
        panic!("1.6 reports both settings");
    };
    assert_eq!(e.settings.config_path.as_deref(), Some(certs.as_str()));
    assert!(!e.settings.discard_unpacked_layers);
    assert!(e.findings.is_empty(), "{:?}", e.findings);
    assert_eq!(
        cri_codes(&json, "/etc/containerd/certs.d"),
        ["config_path_missing_dir"]
    );
}

#[test]
fn live_cri_status_of_2_x_has_neither_setting() {
    for stem in ["containerd-2.3.4", "containerd-2.4.0-dev"] {
        let json = live_fixture(&format!("{stem}.cri-status.config.json"));
        assert_eq!(
            cri_codes(&json, &live_certs(stem)),
            ["cri_field_missing", "cri_field_missing"],
            "{stem}"
        );
    }
}

#[test]
fn live_introspection_of_2_4_has_the_settings() {
    let certs = live_certs("containerd-2.4.0-dev");
    let plugins: Vec<IntrospectedPlugin> = serde_json::from_str(&live_fixture(
        "containerd-2.4.0-dev.introspection-images.json",
    ))
    .unwrap();
    // `id==images` also lists the images gRPC service, which exports nothing.
    assert_eq!(plugins.len(), 2);
    assert!(
        plugins
            .iter()
            .any(|p| p.plugin_type == "io.containerd.grpc.v1" && p.exports.is_empty())
    );
    let Introspected::Complete(e) = evaluate_introspection(&plugins, &certs) else {
        panic!("2.4 exports both settings");
    };
    assert_eq!(e.settings.config_path.as_deref(), Some(certs.as_str()));
    assert!(!e.settings.discard_unpacked_layers);
    assert_eq!(e.settings.use_local_image_pull, None);
    assert!(e.findings.is_empty(), "{:?}", e.findings);
    let Introspected::Complete(e) = evaluate_introspection(&plugins, "/etc/containerd/certs.d")
    else {
        panic!()
    };
    assert_eq!(e.codes(), ["config_path_missing_dir"]);
    // Without the CRI plugin the answer is incomplete: the files are read instead.
    let services: Vec<IntrospectedPlugin> = plugins
        .into_iter()
        .filter(|p| p.plugin_type != "io.containerd.cri.v1")
        .collect();
    assert!(matches!(
        evaluate_introspection(&services, &certs),
        Introspected::Incomplete { .. }
    ));
}

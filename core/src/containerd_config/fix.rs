//! What the operator changes, per distribution, and the doctor's report.

use serde::Serialize;
use toml::{Table, Value};

use super::distribution::Distribution;
use super::evaluate::{Evaluation, Finding, LegacyMirror, Severity};
use super::load::{BOLT, CRI_IMAGES_V3, CRI_V2, Generation, MergedConfig, plugin};
use crate::hosts::server_for;

/// One thing to paste or run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FixStep {
    /// What to do with `content`.
    pub description: String,
    /// The file `content` goes into, when it is a file.
    pub path: Option<String>,
    /// `toml`, `yaml` or `shell`.
    pub language: &'static str,
    /// The snippet.
    pub content: String,
}

/// How to make a node ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fix {
    /// One sentence.
    pub summary: String,
    /// In order.
    pub steps: Vec<FixStep>,
    /// Caveats.
    pub notes: Vec<String>,
}

/// The doctor's verdict on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The distribution recognised (or given).
    pub distribution: Distribution,
    /// The settings and findings.
    pub evaluation: Evaluation,
    /// What to change; `None` when ready.
    pub fix: Option<Fix>,
}

#[derive(Serialize)]
struct JsonFinding {
    code: &'static str,
    severity: Severity,
    message: String,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    distribution: &'static str,
    distribution_name: &'static str,
    ready: bool,
    config_path: Option<&'a str>,
    discard_unpacked_layers: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    use_local_image_pull: Option<bool>,
    findings: Vec<JsonFinding>,
    fix: Option<&'a Fix>,
}

impl Report {
    /// True when no finding is an error.
    pub fn ready(&self) -> bool {
        self.evaluation.ready()
    }

    /// The JSON document `doctor --format json` prints.
    pub fn to_json(&self) -> serde_json::Value {
        let doc = JsonReport {
            distribution: self.distribution.id(),
            distribution_name: self.distribution.name(),
            ready: self.ready(),
            config_path: self.evaluation.settings.config_path.as_deref(),
            discard_unpacked_layers: self.evaluation.settings.discard_unpacked_layers,
            use_local_image_pull: self.evaluation.settings.use_local_image_pull,
            findings: self
                .evaluation
                .findings
                .iter()
                .map(|f| JsonFinding {
                    code: f.code(),
                    severity: f.severity(),
                    message: f.message(),
                })
                .collect(),
            fix: self.fix.as_ref(),
        };
        serde_json::to_value(doc).unwrap_or(serde_json::Value::Null)
    }

    /// The text `doctor` prints.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "distribution: {} ({})\n",
            self.distribution.name(),
            self.distribution.id()
        );
        out.push_str(if self.ready() {
            "status: ready\n"
        } else {
            "status: needs change\n"
        });
        for f in &self.evaluation.findings {
            let label = match f.severity() {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            out.push_str(&format!("{label}: {}\n", f.message()));
        }
        if let Some(fix) = &self.fix {
            out.push_str(&format!("\nfix: {}\n", fix.summary));
            for (i, step) in fix.steps.iter().enumerate() {
                out.push_str(&format!("\n{}. {}\n", i + 1, step.description));
                if let Some(path) = &step.path {
                    out.push_str(&format!("   file: {path}\n"));
                }
                out.push('\n');
                for line in step.content.lines() {
                    if line.is_empty() {
                        out.push('\n');
                    } else {
                        out.push_str(&format!("    {line}\n"));
                    }
                }
            }
            if !fix.notes.is_empty() {
                out.push('\n');
                for note in &fix.notes {
                    out.push_str(&format!("note: {note}\n"));
                }
            }
        }
        out
    }
}

/// Builds the report: adds distribution-specific findings and the fix.
pub fn diagnose(
    distribution: Distribution,
    mut evaluation: Evaluation,
    required: &str,
    merged: Option<&MergedConfig>,
) -> Report {
    if distribution == Distribution::Kind
        && evaluation.settings.content_sharing_policy.as_deref() != Some("isolated")
    {
        evaluation.findings.push(Finding::ContentSharingShared);
    }
    let fix = (!evaluation.ready()).then(|| make_fix(distribution, &evaluation, required, merged));
    Report {
        distribution,
        evaluation,
        fix,
    }
}

fn quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

#[derive(Clone)]
struct Needs<'a> {
    generation: Generation,
    config_path: Option<String>,
    discard: bool,
    /// `use_local_image_pull = true` (containerd 2.x only).
    local_pull: bool,
    mirrors: &'a [LegacyMirror],
    required: &'a str,
}

impl Needs<'_> {
    fn any_toml(&self) -> bool {
        self.config_path.is_some() || self.discard || self.local_pull
    }

    /// The minimal tables, indented by `indent` spaces.
    fn lines(&self, indent: usize) -> String {
        let pad = " ".repeat(indent);
        let mut out = String::new();
        match self.generation {
            Generation::Containerd1 => {
                if let Some(cp) = &self.config_path {
                    out.push_str(&format!(
                        "{pad}[plugins.\"{CRI_V2}\".registry]\n{pad}  config_path = {}\n",
                        quote(cp)
                    ));
                }
                if self.discard {
                    out.push_str(&format!(
                        "{pad}[plugins.\"{CRI_V2}\".containerd]\n{pad}  discard_unpacked_layers = false\n"
                    ));
                }
            }
            Generation::Containerd2 => {
                if self.discard || self.local_pull {
                    out.push_str(&format!("{pad}[plugins.\"{CRI_IMAGES_V3}\"]\n"));
                }
                if self.discard {
                    out.push_str(&format!("{pad}  discard_unpacked_layers = false\n"));
                }
                if self.local_pull {
                    out.push_str(&format!("{pad}  use_local_image_pull = true\n"));
                }
                if let Some(cp) = &self.config_path {
                    out.push_str(&format!(
                        "{pad}[plugins.\"{CRI_IMAGES_V3}\".registry]\n{pad}  config_path = {}\n",
                        quote(cp)
                    ));
                }
            }
        }
        out
    }

    fn version_line(&self) -> &'static str {
        match self.generation {
            Generation::Containerd1 => "version = 2\n\n",
            Generation::Containerd2 => "version = 3\n\n",
        }
    }

    fn plugin_id(&self) -> &'static str {
        match self.generation {
            Generation::Containerd1 => CRI_V2,
            Generation::Containerd2 => CRI_IMAGES_V3,
        }
    }
}

fn needs<'a>(evaluation: &'a Evaluation, required: &'a str, generation: Generation) -> Needs<'a> {
    let mut config_path = None;
    let mut discard = false;
    let mut local_pull = false;
    for f in &evaluation.findings {
        match f {
            Finding::ConfigPathNotSet => config_path = Some(required.to_string()),
            Finding::ConfigPathMissingDir {
                config_path: cp, ..
            } => {
                config_path = Some(match generation {
                    // containerd 2.1+ reads one directory when pulling through transfer.
                    Generation::Containerd2 => required.to_string(),
                    Generation::Containerd1 => format!("{required}:{cp}"),
                })
            }
            Finding::DiscardUnpackedLayers => discard = true,
            Finding::TransferServiceIgnoresList { .. } => {
                local_pull = generation == Generation::Containerd2
            }
            _ => {}
        }
    }
    // A fix that sets one directory needs no use_local_image_pull.
    if config_path.as_deref().is_some_and(|c| !c.contains(':')) {
        local_pull = false;
    }
    Needs {
        generation,
        config_path,
        discard,
        local_pull,
        mirrors: &evaluation.settings.legacy_mirrors,
        required,
    }
}

const RESTART: &str = "containerd reads its CRI configuration only when it starts: restart it (systemctl restart containerd) after the change; running containers keep running";

fn mirror_steps(needs: &Needs<'_>) -> Vec<FixStep> {
    needs
        .mirrors
        .iter()
        .filter(|m| !m.endpoints.is_empty())
        .map(|m| {
            let server = server_for("https", &m.registry);
            let mut content = format!("server = {}\n", quote(&server));
            for e in m.endpoints.iter().filter(|e| e.trim_end_matches('/') != server) {
                content.push_str(&format!(
                    "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
                    quote(e)
                ));
            }
            FixStep {
                description: format!(
                    "keep the {} mirror as a hosts.toml file (speil's configuration puts its own hosts before these)",
                    m.registry
                ),
                path: Some(format!("{}/{}/hosts.toml", needs.required, m.registry)),
                language: "toml",
                content,
            }
        })
        .collect()
}

fn generic_fix(needs: &Needs<'_>, file: &str) -> Fix {
    let mut steps = Vec::new();
    let mut notes = Vec::new();
    if needs.any_toml() {
        steps.push(FixStep {
            description: format!(
                "set these keys in {file} (edit the existing tables; do not add a second table of the same name)"
            ),
            path: Some(file.to_string()),
            language: "toml",
            content: needs.lines(0),
        });
    }
    if !needs.mirrors.is_empty() {
        notes.push(
            "remove the registry.mirrors tables: containerd refuses them together with config_path"
                .to_string(),
        );
        steps.extend(mirror_steps(needs));
    }
    notes.push(RESTART.to_string());
    Fix {
        summary: "change containerd's configuration on every node, then restart containerd".into(),
        steps,
        notes,
    }
}

fn eks_al2_fix(needs: &Needs<'_>, merged: Option<&MergedConfig>) -> Fix {
    let path = "/etc/containerd/config.d/spegel.toml";
    let id = needs.plugin_id();
    let mut notes = vec![
        "write the file from the launch template's user data before /etc/eks/bootstrap.sh runs; on a running node, write it and restart containerd (systemctl restart containerd)".to_string(),
    ];
    let content = match merged.and_then(|m| plugin(&m.table, id)) {
        Some(existing) => {
            let mut table = existing.clone();
            apply_needs(&mut table, needs);
            let mut plugins = Table::new();
            plugins.insert(id.to_string(), Value::Table(table));
            let mut doc = Table::new();
            doc.insert("plugins".into(), Value::Table(plugins));
            notes.insert(
                0,
                format!(
                    "containerd's imports replace whole plugin tables: this file repeats every key of [plugins.\"{id}\"] from the main configuration, with the changes"
                ),
            );
            format!(
                "{}{}",
                needs.version_line(),
                toml::to_string(&doc).unwrap_or_else(|_| needs.lines(0))
            )
        }
        None => {
            notes.insert(
                0,
                format!(
                    "containerd's imports replace whole plugin tables: copy the other keys of [plugins.\"{id}\"] from /etc/containerd/config.toml into this file too"
                ),
            );
            format!("{}{}", needs.version_line(), needs.lines(0))
        }
    };
    Fix {
        summary: "add a containerd drop-in from the node bootstrap script".into(),
        steps: vec![FixStep {
            description:
                "create this drop-in (the AL2 config imports /etc/containerd/config.d/*.toml)"
                    .into(),
            path: Some(path.into()),
            language: "toml",
            content,
        }],
        notes,
    }
}

/// Sets what `needs` asks for in a copy of the CRI plugin table.
fn apply_needs(table: &mut Table, needs: &Needs<'_>) {
    if let Some(cp) = &needs.config_path {
        let registry = table
            .entry("registry")
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(r) = registry {
            r.insert("config_path".into(), Value::String(cp.clone()));
        }
    }
    if needs.local_pull && needs.generation == Generation::Containerd2 {
        table.insert("use_local_image_pull".into(), Value::Boolean(true));
    }
    if needs.discard {
        let target = match needs.generation {
            Generation::Containerd1 => table
                .entry("containerd")
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut(),
            Generation::Containerd2 => Some(&mut *table),
        };
        if let Some(t) = target {
            t.insert("discard_unpacked_layers".into(), Value::Boolean(false));
        }
    }
}

fn eks_al2023_fix(needs: &Needs<'_>) -> Fix {
    let content = format!(
        "apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  containerd:\n    config: |\n{}",
        needs.lines(6)
    );
    Fix {
        summary: "add a nodeadm NodeConfig to the instance user data".into(),
        steps: vec![FixStep {
            description: "add this MIME part (Content-Type: application/node.eks.aws) to the user data; nodeadm merges it key by key into containerd's configuration".into(),
            path: None,
            language: "yaml",
            content,
        }],
        notes: if needs.generation == Generation::Containerd2 {
            vec![
                "nodes pick it up when they are created: roll the node group".into(),
                "on containerd 2.1 and later, prefer a single config_path directory: the transfer service ignores a list unless use_local_image_pull = true".into(),
            ]
        } else {
            vec!["nodes pick it up when they are created: roll the node group".into()]
        },
    }
}

fn k3s_fix(needs: &Needs<'_>, evaluation: &Evaluation, rke2: bool) -> Fix {
    let (product, base, etc) = if rke2 {
        ("rke2", "/var/lib/rancher/rke2", "/etc/rancher/rke2")
    } else {
        ("k3s", "/var/lib/rancher/k3s", "/etc/rancher/k3s")
    };
    let registry_dir = evaluation
        .settings
        .config_path
        .as_deref()
        .and_then(|cp| cp.split(':').next())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{base}/agent/etc/containerd/certs.d"));
    let mut steps = vec![FixStep {
        description: format!(
            "either use the registry mirror {product} embeds (it is Spegel): enable it on the servers in {etc}/config.yaml and list the registries to mirror in {etc}/registries.yaml on every node, then restart {product}"
        ),
        path: None,
        language: "yaml",
        content: format!(
            "# {etc}/config.yaml (servers)\nembedded-registry: true\n---\n# {etc}/registries.yaml (every node)\nmirrors:\n  docker.io:\n  registry.k8s.io:\n"
        ),
    }];
    if needs.config_path.is_some() {
        steps.push(FixStep {
            description: format!(
                "or run speil against {product}'s containerd: its registry config path is {registry_dir}, so pass these Helm values (no containerd change needed)"
            ),
            path: None,
            language: "yaml",
            content: format!(
                "spegel:\n  containerdSock: /run/k3s/containerd/containerd.sock\n  containerdContentPath: {base}/agent/containerd/io.containerd.content.v1.content\n  containerdRegistryConfigPath: {registry_dir}\n"
            ),
        });
    }
    if needs.discard || needs.local_pull {
        let template = match needs.generation {
            Generation::Containerd2 => "config-v3.toml.tmpl",
            Generation::Containerd1 => "config.toml.tmpl",
        };
        let d = Needs {
            config_path: None,
            ..*needs
        };
        steps.push(FixStep {
            description: format!(
                "change containerd's CRI settings: {product} regenerates containerd's configuration at start, so change its template and restart {product}"
            ),
            path: Some(format!("{base}/agent/etc/containerd/{template}")),
            language: "toml",
            content: format!("{{{{ template \"base\" . }}}}\n\n{}", d.lines(0)),
        });
    }
    Fix {
        summary: format!(
            "{product} writes containerd's configuration itself: use its embedded mirror, or point speil at {product}'s paths"
        ),
        steps,
        notes: Vec::new(),
    }
}

fn kind_fix(needs: &Needs<'_>, evaluation: &Evaluation) -> Fix {
    let mut patch = needs.lines(2);
    if evaluation.settings.content_sharing_policy.as_deref() != Some("isolated") {
        patch.push_str(&format!(
            "  [plugins.\"{BOLT}\"]\n    content_sharing_policy = \"isolated\"\n"
        ));
    }
    Fix {
        summary: "patch containerd in the Kind cluster configuration and recreate the cluster".into(),
        steps: vec![FixStep {
            description: "add containerdConfigPatches to the cluster configuration, then kind delete cluster && kind create cluster --config kind.yaml".into(),
            path: Some("kind.yaml".into()),
            language: "yaml",
            content: format!(
                "apiVersion: kind.x-k8s.io/v1alpha4\nkind: Cluster\ncontainerdConfigPatches:\n- |-\n{patch}"
            ),
        }],
        notes: vec!["content_sharing_policy = \"isolated\" is optional; it makes Kind nodes behave like separate machines".into()],
    }
}

fn talos_fix(needs: &Needs<'_>, evaluation: &Evaluation) -> Fix {
    let mut steps = Vec::new();
    if needs.discard || needs.local_pull {
        let part = Needs {
            config_path: None,
            ..*needs
        };
        steps.push(FixStep {
            description: "add this file to the machine configuration (talosctl patch machineconfig --patch @speil.yaml); Talos merges it into /etc/cri/conf.d/cri.toml".into(),
            path: Some("speil.yaml".into()),
            language: "yaml",
            content: format!(
                "machine:\n  files:\n    - path: /etc/cri/conf.d/20-customization.part\n      op: create\n      content: |\n{}",
                part.lines(8)
            ),
        });
    }
    let talos_hosts = evaluation
        .settings
        .config_path
        .as_deref()
        .and_then(|cp| cp.split(':').next())
        .unwrap_or("/etc/cri/conf.d/hosts")
        .to_string();
    if needs.config_path.is_some() || needs.required != talos_hosts {
        steps.push(FixStep {
            description: format!(
                "Talos's registry config path is {talos_hosts}: set it in the Helm values (speil --containerd-registry-config-path)"
            ),
            path: None,
            language: "yaml",
            content: format!("spegel:\n  containerdRegistryConfigPath: {talos_hosts}\n"),
        });
    }
    steps.push(FixStep {
        description: "speil mounts host paths: allow privileged pods in the namespace it runs in (here: spegel)".into(),
        path: None,
        language: "shell",
        content: "kubectl label namespace spegel pod-security.kubernetes.io/enforce=privileged\n"
            .into(),
    });
    Fix {
        summary: "override Talos's CRI defaults with a machine configuration file part".into(),
        steps,
        notes: Vec::new(),
    }
}

fn unmanaged_fix(distribution: Distribution, needs: &Needs<'_>) -> Fix {
    let (who, why) = match distribution {
        Distribution::Gke => (
            "GKE",
            "GKE manages node configuration and does not let you change containerd's: its nodes set no config_path, configure Google's mirror with the deprecated registry.mirrors tables and discard unpacked layers",
        ),
        _ => (
            "DigitalOcean Kubernetes",
            "DigitalOcean manages node configuration and does not offer a way to change containerd's: its nodes set no registry config_path",
        ),
    };
    let mut fix = generic_fix(needs, "/etc/containerd/config.toml");
    fix.summary = format!(
        "{who} does not support this (Spegel lists it as unsupported); a node-level change is the only way"
    );
    fix.notes = vec![
        why.to_string(),
        "the change needs a containerd restart on every node, because containerd reads config_path and discard_unpacked_layers only when it starts; a privileged DaemonSet with hostPID can edit the file and run nsenter -t 1 -m -- systemctl restart containerd".to_string(),
        format!(
            "{who} recreates nodes from its own image on upgrade, repair and scale-up: the change must be re-applied to every new node before speil starts on it, and it is outside what the provider supports"
        ),
    ];
    if !needs.mirrors.is_empty() {
        fix.notes.push(
            "remove the registry.mirrors tables: containerd refuses them together with config_path"
                .to_string(),
        );
    }
    fix
}

fn minikube_fix(needs: &Needs<'_>) -> Fix {
    let mut steps = Vec::new();
    if needs.discard {
        steps.push(FixStep {
            description: "minikube's /etc/containerd/config.toml sets discard_unpacked_layers = true; on every node, set it to false and restart containerd".into(),
            path: None,
            language: "shell",
            content: "for node in $(minikube node list | cut -f1); do\n  minikube ssh -n \"$node\" -- \"sudo sed -i 's/discard_unpacked_layers = true/discard_unpacked_layers = false/' /etc/containerd/config.toml && sudo systemctl restart containerd\"\ndone\n".into(),
        });
    }
    if needs.config_path.is_some() || needs.local_pull {
        let d = Needs {
            discard: false,
            ..needs.clone()
        };
        steps.push(FixStep {
            description: "set these keys in /etc/containerd/config.toml on every node (minikube ssh), then sudo systemctl restart containerd".into(),
            path: Some("/etc/containerd/config.toml".into()),
            language: "toml",
            content: d.lines(0),
        });
    }
    Fix {
        summary: "change the one setting minikube ships wrong, inside each minikube node".into(),
        steps,
        notes: vec!["the node keeps the change across minikube stop/start; repeat it after minikube delete or when adding nodes".into()],
    }
}

fn make_fix(
    distribution: Distribution,
    evaluation: &Evaluation,
    required: &str,
    merged: Option<&MergedConfig>,
) -> Fix {
    let generation = evaluation
        .settings
        .generation
        .or(merged.map(|m| m.generation))
        .unwrap_or(Generation::Containerd1);
    let needs = needs(evaluation, required, generation);
    let mut fix = match distribution {
        Distribution::Minikube => minikube_fix(&needs),
        Distribution::EksAl2 => eks_al2_fix(&needs, merged),
        Distribution::EksAl2023 => eks_al2023_fix(&needs),
        Distribution::K3s => k3s_fix(&needs, evaluation, false),
        Distribution::Rke2 => k3s_fix(&needs, evaluation, true),
        Distribution::Kind => kind_fix(&needs, evaluation),
        Distribution::Talos => talos_fix(&needs, evaluation),
        Distribution::Gke | Distribution::DigitalOcean => unmanaged_fix(distribution, &needs),
        Distribution::Aks | Distribution::Generic(_) => {
            // The file containerd was found to run with, when the files were read.
            let main = merged
                .and_then(|m| m.files.first())
                .map_or("/etc/containerd/config.toml", String::as_str);
            generic_fix(&needs, main)
        }
    };
    for f in &evaluation.findings {
        match f {
            Finding::InvalidSetting { .. } | Finding::CriFieldMissing { .. } => {
                fix.notes.push(f.message())
            }
            Finding::TransferServiceIgnoresList { .. } => fix.notes.push(format!(
                "instead of use_local_image_pull = true, config_path can be the one directory {required}; the other directories' hosts.toml files are then no longer read"
            )),
            _ => {}
        }
    }
    fix
}

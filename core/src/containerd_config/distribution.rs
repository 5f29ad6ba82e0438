//! Recognising the Kubernetes distribution a containerd configuration comes from.
//!
//! Each distribution writes containerd's configuration with recognisable paths and values
//! (pause image, state directories, generated-by comments rendered as values, drop-in
//! locations). Those decide first; `/etc/os-release` and the DMI system vendor only break
//! ties, because a configuration may be checked on another machine than the one it came from.

use std::str::FromStr;

use toml::Value;

use super::load::{CRI_V2, ConfigSet, Generation, MergedConfig, plugin};

/// A Kubernetes distribution (or plain containerd).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Distribution {
    /// Azure Kubernetes Service.
    Aks,
    /// Minikube (kicbase and ISO).
    Minikube,
    /// EKS on Amazon Linux 2 (`/etc/eks/bootstrap.sh`).
    EksAl2,
    /// EKS on Amazon Linux 2023 (`nodeadm`).
    EksAl2023,
    /// K3s.
    K3s,
    /// RKE2.
    Rke2,
    /// Kind.
    Kind,
    /// Talos Linux.
    Talos,
    /// Google Kubernetes Engine.
    Gke,
    /// DigitalOcean Kubernetes.
    DigitalOcean,
    /// containerd without a recognised distribution.
    Generic(Generation),
}

/// All distributions, in the order of the documentation table.
pub const ALL: [Distribution; 12] = [
    Distribution::Aks,
    Distribution::Minikube,
    Distribution::EksAl2,
    Distribution::EksAl2023,
    Distribution::K3s,
    Distribution::Rke2,
    Distribution::Kind,
    Distribution::Talos,
    Distribution::Gke,
    Distribution::DigitalOcean,
    Distribution::Generic(Generation::Containerd1),
    Distribution::Generic(Generation::Containerd2),
];

impl Distribution {
    /// A stable identifier (`eks-al2`, `containerd-2.x`, …).
    pub fn id(self) -> &'static str {
        match self {
            Distribution::Aks => "aks",
            Distribution::Minikube => "minikube",
            Distribution::EksAl2 => "eks-al2",
            Distribution::EksAl2023 => "eks-al2023",
            Distribution::K3s => "k3s",
            Distribution::Rke2 => "rke2",
            Distribution::Kind => "kind",
            Distribution::Talos => "talos",
            Distribution::Gke => "gke",
            Distribution::DigitalOcean => "digitalocean",
            Distribution::Generic(g) => g.as_str(),
        }
    }

    /// A name for people.
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Aks => "AKS",
            Distribution::Minikube => "Minikube",
            Distribution::EksAl2 => "EKS (Amazon Linux 2)",
            Distribution::EksAl2023 => "EKS (Amazon Linux 2023)",
            Distribution::K3s => "K3s",
            Distribution::Rke2 => "RKE2",
            Distribution::Kind => "Kind",
            Distribution::Talos => "Talos",
            Distribution::Gke => "GKE",
            Distribution::DigitalOcean => "DigitalOcean Kubernetes",
            Distribution::Generic(Generation::Containerd1) => "containerd 1.x",
            Distribution::Generic(Generation::Containerd2) => "containerd 2.x",
        }
    }
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

/// An unknown distribution name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown distribution {0:?} (expected one of: aks, minikube, eks-al2, eks-al2023, k3s, rke2, kind, talos, gke, digitalocean, containerd-1.x, containerd-2.x)"
)]
pub struct UnknownDistribution(pub String);

impl FromStr for Distribution {
    type Err = UnknownDistribution;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        ALL.into_iter()
            .find(|d| d.id() == lower)
            .ok_or_else(|| UnknownDistribution(s.to_string()))
    }
}

/// Facts about the node besides the containerd files.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hints<'a> {
    /// The text of `/etc/os-release`.
    pub os_release: Option<&'a str>,
    /// The text of `/sys/class/dmi/id/sys_vendor` (`DigitalOcean`, `Amazon EC2`, …).
    pub sys_vendor: Option<&'a str>,
}

/// A value of an `/etc/os-release` key, unquoted.
pub fn os_release_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (k, v) = line.trim().split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').trim_matches('\''))
    })
}

fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Table(t) => {
            for (k, v) in t {
                out.push(k.clone());
                strings(v, out);
            }
        }
        _ => {}
    }
}

/// Recognises the distribution.
pub fn detect(set: &ConfigSet, merged: &MergedConfig, hints: Hints<'_>) -> Distribution {
    let mut all = Vec::new();
    for file in set.files() {
        all.push(file.path.clone());
        all.extend(file.imports.iter().cloned());
        strings(&Value::Table(file.table.clone()), &mut all);
    }
    let has = |needle: &str| all.iter().any(|s| s.contains(needle));

    let os_id = hints.os_release.and_then(|t| os_release_value(t, "ID"));
    let os_version = hints
        .os_release
        .and_then(|t| os_release_value(t, "VERSION_ID"));

    if has("/etc/cri/conf.d") || has("/podruntime/") || os_id == Some("talos") {
        return Distribution::Talos;
    }
    if has("/var/lib/rancher/rke2") || has("/etc/rancher/rke2") {
        return Distribution::Rke2;
    }
    if has("/var/lib/rancher/k3s") || has("/run/k3s/") {
        return Distribution::K3s;
    }
    if has("/etc/containerd/cri-base.json") || has("fuse-overlayfs") && has("test-handler") {
        return Distribution::Kind;
    }
    if is_minikube(merged) {
        return Distribution::Minikube;
    }
    if has("azure/aks") || has("mcr.microsoft.com/oss/") {
        return Distribution::Aks;
    }
    if has("gke.gcr.io") || has("/home/kubernetes/") || os_id == Some("cos") {
        return Distribution::Gke;
    }
    let amazon = os_id == Some("amzn");
    if amazon && os_version == Some("2023") {
        return Distribution::EksAl2023;
    }
    if amazon && os_version == Some("2") {
        return Distribution::EksAl2;
    }
    if has("localhost/kubernetes/pause") || has("/etc/containerd/base-runtime-spec.json") {
        return Distribution::EksAl2023;
    }
    if has("/eks/pause") || has("/etc/containerd/config.d/") || has("/etc/eks/") {
        return Distribution::EksAl2;
    }
    if hints
        .sys_vendor
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("DigitalOcean"))
    {
        return Distribution::DigitalOcean;
    }
    if os_id == Some("buildroot")
        && hints
            .os_release
            .is_some_and(|t| t.to_ascii_lowercase().contains("minikube"))
    {
        return Distribution::Minikube;
    }
    Distribution::Generic(merged.generation)
}

/// minikube's shipped file is a trimmed `containerd config default` of an old release: it
/// keeps the `untrusted_workload_runtime` table and the `walking` differ but, unlike the full
/// default output, has no `default_runtime` table.
fn is_minikube(merged: &MergedConfig) -> bool {
    let containerd = plugin(&merged.table, CRI_V2).and_then(|c| c.get("containerd"));
    let untrusted = containerd
        .and_then(|c| c.get("untrusted_workload_runtime"))
        .is_some()
        && containerd.and_then(|c| c.get("default_runtime")).is_none();
    let walking = plugin(&merged.table, "io.containerd.service.v1.diff-service")
        .and_then(|d| d.get("default"))
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| v.as_str() == Some("walking")));
    untrusted && walking
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for d in ALL {
            assert_eq!(d.id().parse::<Distribution>(), Ok(d));
        }
        assert!("nope".parse::<Distribution>().is_err());
    }

    #[test]
    fn os_release_values() {
        let t = "NAME=\"Amazon Linux\"\nVERSION_ID=\"2023\"\nID=amzn\n";
        assert_eq!(os_release_value(t, "ID"), Some("amzn"));
        assert_eq!(os_release_value(t, "VERSION_ID"), Some("2023"));
        assert_eq!(os_release_value(t, "X"), None);
    }
}

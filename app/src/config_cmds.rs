//! `doctor`, `configuration`, `cleanup`, `cleanup-wait` and `version`.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use speil_core::containerd_config::{
    CRI_IMAGES_FILTER, ConfigSet, CriStatus, DEFAULT_CONFIG_FILE, Evaluation, Finding, Hints,
    Introspected, IntrospectedPlugin, Layer, LiveSource, Report, RuntimeGeneration, RuntimeVersion,
    apply_runtime, check_files_for, config_file_of, detect, diagnose, distribution_for_runtime,
    evaluate, evaluate_cri_config, evaluate_introspection, grpc_address_of, live_source,
    parse_runtime_version,
};
use speil_core::hosts::{
    BasicAuth, ConfigurationOptions, HostsConfig, plan_cleanup, plan_configuration,
};

use crate::cli::{
    CleanupArgs, CleanupWaitArgs, ConfigurationArgs, DistributionChoice, DoctorArgs, Format,
    VersionArgs,
};
use speil_driver::{Runtime, RuntimeExt};

use crate::{fsplan, probe, within};

/// Where Spegel's chart mounts the optional basic-auth secret.
const BASIC_AUTH_DIR: &str = "/etc/secrets/basic-auth";

// ---------------------------------------------------------------- doctor

/// The containerd files, read from disk, and what reading them found.
struct Loaded {
    set: ConfigSet,
    extra: Vec<Finding>,
}

fn rooted(host_root: &str, path: &Path) -> PathBuf {
    if host_root.is_empty() || !path.is_absolute() {
        return path.to_path_buf();
    }
    Path::new(host_root).join(path.strip_prefix("/").unwrap_or(path))
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// `*` and `?` in one path component (as Go's `filepath.Match` without classes).
fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            wildcard_match(&pattern[1..], name)
                || (!name.is_empty() && wildcard_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => wildcard_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => wildcard_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Reads the main file and follows `imports` as containerd does (breadth first, globs sorted),
/// then adds the drop-in directories' parts.
fn load_files(main: &Path, host_root: &str, drop_in_dirs: &[PathBuf]) -> Result<Loaded> {
    let mut set = ConfigSet::new();
    let mut extra = Vec::new();
    // (physical path to read, path as containerd sees it, layer)
    let mut pending: VecDeque<(PathBuf, PathBuf, Layer)> = VecDeque::new();
    pending.push_back((main.to_path_buf(), main.to_path_buf(), Layer::Main));
    let mut seen = BTreeSet::new();
    while let Some((physical, logical, layer)) = pending.pop_front() {
        if !seen.insert(logical.clone()) {
            continue;
        }
        let text = match std::fs::read_to_string(&physical) {
            Ok(t) => t,
            Err(e) if layer == Layer::Import && e.kind() == std::io::ErrorKind::NotFound => {
                extra.push(Finding::ImportMissing {
                    path: logical.display().to_string(),
                });
                continue;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", physical.display()));
            }
        };
        set.add(&logical.display().to_string(), &text, layer)?;
        let imports = set
            .files()
            .last()
            .map(|f| f.imports.clone())
            .unwrap_or_default();
        for import in imports {
            let import_path = Path::new(&import);
            let (phys, logi) = if import_path.is_absolute() {
                (rooted(host_root, import_path), import_path.to_path_buf())
            } else {
                let base_p = physical.parent().unwrap_or(Path::new("."));
                let base_l = logical.parent().unwrap_or(Path::new("."));
                (base_p.join(import_path), base_l.join(import_path))
            };
            let name = logi
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let parent_l = logi.parent().unwrap_or(Path::new("/")).to_path_buf();
            if has_wildcard(&parent_l.display().to_string()) {
                extra.push(Finding::ImportNotFollowed { path: import });
                continue;
            }
            if !has_wildcard(&name) {
                pending.push_back((phys, logi, Layer::Import));
                continue;
            }
            let parent_p = phys.parent().unwrap_or(Path::new("/")).to_path_buf();
            let mut matches: Vec<String> = match std::fs::read_dir(&parent_p) {
                Ok(entries) => entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| wildcard_match(name.as_bytes(), n.as_bytes()))
                    .collect(),
                Err(_) => Vec::new(),
            };
            matches.sort();
            for m in matches {
                pending.push_back((parent_p.join(&m), parent_l.join(&m), Layer::Import));
            }
        }
    }
    for dir in drop_in_dirs {
        let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml" || x == "part"))
            .collect();
        parts.sort();
        for p in parts {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            set.add(&p.display().to_string(), &text, Layer::DropIn)?;
        }
    }
    Ok(Loaded { set, extra })
}

fn read_optional(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    std::fs::read_to_string(path).ok()
}

/// What the running containerd says about itself: its CRI runtime version, when the CRI
/// status carries it (containerd 1.x) its live CRI configuration, and on containerd 2.4 and
/// later the Introspection answer for the CRI images plugin.
struct Live {
    version: Result<RuntimeVersion, String>,
    cri_config: Option<String>,
    introspection: Option<Result<Vec<IntrospectedPlugin>, String>>,
}

/// Asks the running containerd for its version and CRI status (`info["config"]`).
async fn ask_containerd<R: Runtime>(rt: &R, sock: &Path) -> Result<Live> {
    let config = speil_containerd::Config {
        socket: sock.to_path_buf(),
        namespace: "k8s.io".to_string(),
        content_path: None,
    };
    let client = within(
        rt,
        speil_core::limits::CONTAINERD_ASK_BUDGET,
        speil_containerd::Containerd::connect(rt.clone(), &config),
    )
    .await
    .with_context(|| format!("timed out connecting to {}", sock.display()))??;
    let version = within(
        rt,
        speil_core::limits::CONTAINERD_ASK_BUDGET,
        client.cri_runtime_version(),
    )
    .await
    .context("timed out waiting for the CRI version")?
    .context("CRI version call failed")?;
    let status = within(
        rt,
        speil_core::limits::CONTAINERD_ASK_BUDGET,
        client.cri_status(),
    )
    .await
    .context("timed out waiting for the CRI status")?
    .context("CRI status call failed")?;
    let version = parse_runtime_version(&version).map_err(|e| e.to_string());
    let introspection = match &version {
        Ok(v) if v.generation == RuntimeGeneration::V2Live => Some(
            match within(
                rt,
                speil_core::limits::CONTAINERD_ASK_BUDGET,
                client.introspection_plugins(&[CRI_IMAGES_FILTER]),
            )
            .await
            {
                Some(Ok(plugins)) => Ok(plugins),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("timed out waiting for the Introspection answer".to_string()),
            },
        ),
        _ => None,
    };
    Ok(Live {
        version,
        cri_config: status.config_json().map(str::to_string),
        introspection,
    })
}

/// The configuration file of the containerd process that serves `sock`, from `/proc`: the
/// `--config` of every `containerd` process whose configuration's `[grpc] address` is `sock`.
/// `None` when no such process is visible (another PID namespace) or its file is unreadable.
fn config_file_from_proc(sock: &Path, host_root: &str) -> Option<PathBuf> {
    let want = std::fs::canonicalize(sock).unwrap_or_else(|_| sock.to_path_buf());
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some(file) = config_file_of(&argv) else {
            continue;
        };
        let file = Path::new(&file);
        // A relative --config is relative to the process's working directory.
        let file = if file.is_absolute() {
            rooted(host_root, file)
        } else {
            entry.path().join("cwd").join(file)
        };
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let address = PathBuf::from(grpc_address_of(&text));
        let address = rooted(host_root, &address);
        if std::fs::canonicalize(&address).unwrap_or(address) == want {
            return Some(file);
        }
    }
    None
}

/// The outcome of a check of the running containerd.
pub enum Checked {
    /// The settings were read; the report and where they came from.
    Verified {
        /// The findings and the fix.
        report: Report,
        /// `cri-status`, `introspection` or `toml <files>`.
        source: String,
        /// The CRI runtime version, when containerd reported one.
        runtime_version: Option<String>,
    },
    /// Nothing could be read: the warning that says what to mount or pass.
    Unverified {
        /// What is missing.
        warning: String,
        /// The CRI runtime version, when containerd reported one.
        runtime_version: Option<String>,
    },
}

fn doctor_output(
    report: &Report,
    source: &str,
    runtime_version: Option<&str>,
    format: Format,
) -> ExitCode {
    match format {
        Format::Text => {
            if let Some(v) = runtime_version {
                println!("runtime version: {v}");
            }
            print!("source: {source}\n{}", report.to_text());
        }
        Format::Json => {
            let mut doc = report.to_json();
            if let Some(obj) = doc.as_object_mut() {
                obj.insert("source".into(), serde_json::Value::String(source.into()));
                obj.insert(
                    "runtime_version".into(),
                    runtime_version.map_or(serde_json::Value::Null, |v| v.into()),
                );
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "null".into())
            );
        }
    }
    if report.ready() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// What a check reads besides containerd itself.
pub struct CheckInputs<'a> {
    /// containerd's gRPC socket.
    pub sock: &'a Path,
    /// The directory speil writes hosts.toml files into.
    pub required: &'a str,
    /// Prefix for absolute paths (a node's root mounted elsewhere); empty for `/`.
    pub host_root: &'a str,
    /// Drop-in directories merged after the main file.
    pub drop_in_dirs: &'a [PathBuf],
    /// os-release and DMI vendor text.
    pub hints: Hints<'a>,
    /// The distribution, when not to be recognised.
    pub distribution: Option<speil_core::containerd_config::Distribution>,
    /// containerd's configuration file, when given (`--containerd-config`).
    pub config_file: Option<&'a Path>,
}

fn toml_report(
    path: &Path,
    inputs: &CheckInputs<'_>,
    runtime: Option<&RuntimeVersion>,
) -> Result<(Report, String)> {
    let loaded = load_files(path, inputs.host_root, inputs.drop_in_dirs)?;
    let files: Vec<String> = loaded.set.files().iter().map(|f| f.path.clone()).collect();
    let report = check_files_for(
        &loaded.set,
        inputs.required,
        inputs.hints,
        inputs.distribution,
        loaded.extra,
        runtime,
    );
    Ok((report, format!("toml {}", files.join(", "))))
}

/// The report for settings read live: the running version's rules, the distribution from the
/// files when they were readable (`set`, else empty).
fn live_report(
    mut evaluation: Evaluation,
    set: &ConfigSet,
    inputs: &CheckInputs<'_>,
    runtime: Option<&RuntimeVersion>,
) -> Report {
    let merged = set.merge();
    let mut distribution = inputs
        .distribution
        .unwrap_or_else(|| detect(set, &merged, inputs.hints));
    if let Some(version) = runtime {
        apply_runtime(&mut evaluation, version);
        distribution = distribution_for_runtime(distribution, version);
    }
    diagnose(distribution, evaluation, inputs.required, Some(&merged))
}

/// Checks the running containerd (SPEC §6): its generation from the CRI version; on 1.x the
/// CRI status; on 2.4 and later the Introspection exports (with `use_local_image_pull` from the
/// files, which no live source reports); on 2.0–2.3, or when the exports are missing, the TOML
/// files it runs with — `--containerd-config`, else the `--config` of the containerd process
/// serving the socket as `/proc` shows it, else containerd's default file. When none can be
/// read the result is [`Checked::Unverified`].
pub async fn check_live<R: Runtime>(rt: &R, inputs: &CheckInputs<'_>) -> Result<Checked> {
    let default_toml = rooted(inputs.host_root, Path::new(DEFAULT_CONFIG_FILE));
    let live = ask_containerd(rt, inputs.sock).await?;
    let version = live.version.as_ref().ok();
    let runtime_version = version.map(|v| v.to_string());
    let source = match &live.version {
        Ok(v) => live_source(v),
        Err(e) => {
            tracing::warn!(error = %e, "unknown containerd version; reading its CRI status");
            LiveSource::CriStatus
        }
    };
    let file = match inputs.config_file {
        Some(f) => Some(f.to_path_buf()),
        None => config_file_from_proc(inputs.sock, inputs.host_root)
            .or_else(|| default_toml.is_file().then_some(default_toml)),
    };
    // The files, when readable: the distribution and use_local_image_pull come from them.
    let files = || match &file {
        Some(f) => match load_files(f, inputs.host_root, inputs.drop_in_dirs) {
            Ok(loaded) => Some(loaded.set),
            Err(e) => {
                // Reported as a finding where it matters (use_local_image_pull on a list).
                tracing::debug!(error = %format!("{e:#}"), "containerd's configuration file is not readable");
                None
            }
        },
        None => None,
    };
    let mut fell_back = None;
    match source {
        LiveSource::CriStatus => {
            if let Some(json) = &live.cri_config
                && let CriStatus::Complete(evaluation) = evaluate_cri_config(json, inputs.required)?
            {
                let set = files().unwrap_or_default();
                return Ok(Checked::Verified {
                    report: live_report(evaluation, &set, inputs, version),
                    source: LiveSource::CriStatus.as_str().to_string(),
                    runtime_version,
                });
            }
        }
        LiveSource::Introspection => match &live.introspection {
            Some(Ok(plugins)) => match evaluate_introspection(plugins, inputs.required) {
                Introspected::Complete(mut evaluation) => {
                    let set = files();
                    // Not exported: from the files, or unknown (a warning on a list).
                    evaluation.settings.use_local_image_pull = set.as_ref().and_then(|s| {
                        evaluate(&s.merge(), inputs.required)
                            .settings
                            .use_local_image_pull
                    });
                    let set = set.unwrap_or_default();
                    return Ok(Checked::Verified {
                        report: live_report(evaluation, &set, inputs, version),
                        source: LiveSource::Introspection.as_str().to_string(),
                        runtime_version,
                    });
                }
                Introspected::Incomplete { missing } => {
                    fell_back = Some(format!(
                        "introspection did not report {}",
                        missing.join(", ")
                    ))
                }
            },
            Some(Err(e)) => fell_back = Some(format!("introspection failed: {e}")),
            None => {}
        },
        LiveSource::Toml => {}
    }
    let unverified = |why: String| Checked::Unverified {
        warning: format!(
            "{why}: containerd's configuration cannot be verified; mount the host's \
             /etc/containerd read-only or pass --containerd-config PATH"
        ),
        runtime_version: runtime_version.clone(),
    };
    let Some(file) = file else {
        let why = "no containerd configuration file is readable".to_string();
        return Ok(unverified(match &fell_back {
            Some(f) => format!("{f}; {why}"),
            None => why,
        }));
    };
    match toml_report(&file, inputs, version) {
        Ok((report, source)) => Ok(Checked::Verified {
            report,
            source: match &fell_back {
                Some(f) => format!("{source} ({f})"),
                None => source,
            },
            runtime_version,
        }),
        Err(e) if inputs.config_file.is_some() => Err(e.context("--containerd-config")),
        Err(e) => Ok(unverified(format!("{e:#}"))),
    }
}

/// The start-up verification of `registry --verify-containerd-config`: `Ok(())` when
/// containerd is ready, else the one line to exit with.
pub async fn verify_containerd<R: Runtime>(
    rt: &R,
    sock: &Path,
    required: &str,
    config_file: Option<&Path>,
) -> Result<(), String> {
    let os_release = read_optional("/etc/os-release");
    let sys_vendor = read_optional("/sys/class/dmi/id/sys_vendor");
    let inputs = CheckInputs {
        sock,
        required,
        host_root: "",
        drop_in_dirs: &[],
        hints: Hints {
            os_release: os_release.as_deref(),
            sys_vendor: sys_vendor.as_deref(),
        },
        distribution: None,
        config_file,
    };
    let report = match check_live(rt, &inputs)
        .await
        .map_err(|e| format!("{e:#}"))?
    {
        Checked::Verified {
            report,
            source,
            runtime_version,
        } => {
            if report.ready() {
                tracing::info!(
                    %source,
                    runtime_version = runtime_version.as_deref().unwrap_or("unknown"),
                    "containerd configuration verified"
                );
            }
            report
        }
        Checked::Unverified { warning, .. } => {
            tracing::warn!("{warning}");
            return Ok(());
        }
    };
    if report.ready() {
        return Ok(());
    }
    let errors: Vec<String> = report
        .evaluation
        .findings
        .iter()
        .filter(|f| f.severity() == speil_core::containerd_config::Severity::Error)
        .map(Finding::message)
        .collect();
    Err(format!(
        "{}; run `speil doctor` for the fix on {} (or pass --verify-containerd-config=false)",
        errors.join("; "),
        report.distribution.name()
    ))
}

/// `speil doctor`.
pub async fn doctor<R: Runtime>(rt: R, args: DoctorArgs) -> Result<ExitCode> {
    // The node's os-release, not the container's, when its root is mounted elsewhere.
    let os_release_path = rooted(&args.host_root, Path::new(&args.os_release));
    let os_release = read_optional(&os_release_path.display().to_string());
    let sys_vendor = read_optional(&args.sys_vendor);
    let inputs = CheckInputs {
        sock: &args.containerd_sock,
        required: &args.containerd_registry_config_path,
        host_root: &args.host_root,
        drop_in_dirs: &args.drop_in_dirs,
        hints: Hints {
            os_release: os_release.as_deref(),
            sys_vendor: sys_vendor.as_deref(),
        },
        distribution: match args.distribution {
            DistributionChoice::Auto => None,
            DistributionChoice::Given(d) => Some(d),
        },
        config_file: args.containerd_config.as_deref(),
    };
    match check_live(&rt, &inputs).await {
        Ok(Checked::Verified {
            report,
            source,
            runtime_version,
        }) => Ok(doctor_output(
            &report,
            &source,
            runtime_version.as_deref(),
            args.format,
        )),
        Ok(Checked::Unverified {
            warning,
            runtime_version,
        }) => {
            match args.format {
                Format::Text => {
                    if let Some(v) = &runtime_version {
                        println!("runtime version: {v}");
                    }
                    println!("source: unverified\nwarning: {warning}");
                }
                Format::Json => println!(
                    "{}",
                    serde_json::json!({
                        "source": "unverified",
                        "runtime_version": runtime_version,
                        "ready": false,
                        "warning": warning,
                    })
                ),
            }
            Ok(ExitCode::from(1))
        }
        // Without a running containerd, the given file alone is checked.
        Err(e) => match &args.containerd_config {
            Some(path) => {
                tracing::debug!(error = %format!("{e:#}"), "containerd not reachable; checking the file only");
                let (report, source) = toml_report(path, &inputs, None)?;
                Ok(doctor_output(&report, &source, None, args.format))
            }
            None => Err(e),
        },
    }
}

// ---------------------------------------------------------------- configuration / cleanup

fn read_basic_auth(dir: &Path) -> Result<Option<BasicAuth>> {
    let user = dir.join("username");
    let pass = dir.join("password");
    if !user.exists() || !pass.exists() {
        return Ok(None);
    }
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
            .with_context(|| format!("cannot read {}", p.display()))
    };
    Ok(Some(BasicAuth::new(&read(&user)?, &read(&pass)?)?))
}

/// `speil configuration`.
pub async fn configuration<R: Runtime>(_rt: R, args: ConfigurationArgs) -> Result<ExitCode> {
    let options = ConfigurationOptions {
        registries: args.mirrored_registries,
        hosts: HostsConfig {
            targets: args.mirror_targets,
            resolve_tags: args.resolve_tags,
            basic_auth: read_basic_auth(Path::new(BASIC_AUTH_DIR))?,
        },
        prepend_existing: args.prepend_existing,
    };
    let root = &args.containerd_registry_config_path;
    let tree = fsplan::read_tree(root)?;
    let ops = plan_configuration(&tree, &options)
        .with_context(|| format!("cannot configure {}", root.display()))?;
    fsplan::execute(root, &ops)?;
    tracing::info!(
        path = %root.display(),
        operations = ops.len(),
        registries = options.registries.len(),
        "mirror configuration written"
    );
    Ok(ExitCode::SUCCESS)
}

/// `speil cleanup`.
pub async fn cleanup<R: Runtime>(rt: R, args: CleanupArgs) -> Result<ExitCode> {
    let stop = crate::signal::shutdown();
    let listener = probe::bind(&args.addr)?;
    let root = &args.containerd_registry_config_path;
    let tree = fsplan::read_tree(root)?;
    let ops = plan_cleanup(&tree).with_context(|| format!("cannot clean up {}", root.display()))?;
    if ops.is_empty() {
        tracing::info!(path = %root.display(), "no backup to restore");
    } else {
        fsplan::execute(root, &ops)?;
        tracing::info!(path = %root.display(), operations = ops.len(), "configuration restored");
    }
    tracing::info!(addr = %listener.local_addr()?, "serving /readyz");
    probe::serve_readyz(rt, listener, stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// `speil cleanup-wait`.
pub async fn cleanup_wait<R: Runtime>(rt: R, args: CleanupWaitArgs) -> Result<ExitCode> {
    // `host:port` as given is the Host header (an IPv6 address stays in its brackets).
    let host = args.probe_endpoint.clone();
    let mut streak = 0u32;
    loop {
        let addrs: BTreeSet<std::net::SocketAddr> = match resolve(&rt, &args.probe_endpoint).await {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(endpoint = %args.probe_endpoint, error = %e, "cannot resolve");
                BTreeSet::new()
            }
        };
        let probes = addrs
            .iter()
            .map(|addr| probe::probe_readyz(&rt, *addr, &host, Duration::from_secs(1)));
        let results = futures::future::join_all(probes).await;
        let all_ok = !addrs.is_empty() && results.iter().all(|ok| *ok);
        streak = if all_ok { streak + 1 } else { 0 };
        tracing::info!(
            endpoint = %args.probe_endpoint,
            addresses = addrs.len(),
            ready = all_ok,
            streak,
            "probed cleanup pods"
        );
        if streak >= args.threshold {
            return Ok(ExitCode::SUCCESS);
        }
        rt.sleep(args.period).await;
    }
}

/// The addresses `host:port` resolves to (the system resolver, on a blocking thread).
async fn resolve<R: Runtime>(rt: &R, endpoint: &str) -> std::io::Result<BTreeSet<SocketAddr>> {
    use std::net::ToSocketAddrs;
    let endpoint = endpoint.to_owned();
    rt.spawn_blocking(move || endpoint.to_socket_addrs().map(Iterator::collect))
        .await?
}

// ---------------------------------------------------------------- version

/// `speil version`.
pub fn version(args: VersionArgs, runtime: &str) -> ExitCode {
    let version = env!("CARGO_PKG_VERSION");
    let commit = env!("SPEIL_BUILD_COMMIT");
    let rustc = env!("SPEIL_RUSTC");
    let target = env!("SPEIL_TARGET");
    match args.format {
        Format::Text => {
            println!(
                "speil {version} (commit {commit}, {rustc}, target {target}, runtime {runtime})"
            )
        }
        Format::Json => println!(
            "{}",
            serde_json::json!({
                "version": version,
                "commit": commit,
                "rustc": rustc,
                "target": target,
                "runtime": runtime,
            })
        ),
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match(b"*.toml", b"spegel.toml"));
        assert!(!wildcard_match(b"*.toml", b"spegel.part"));
        assert!(wildcard_match(b"a?c", b"abc"));
        assert!(wildcard_match(b"*", b""));
    }

    #[test]
    fn imports_are_followed_with_globs_and_host_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/containerd/config.d")).unwrap();
        let main = root.join("etc/containerd/config.toml");
        std::fs::write(
            &main,
            "version = 2\nimports = [\"/etc/containerd/config.d/*.toml\", \"/etc/missing.toml\", \"/etc/*/x.toml\"]\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\ndiscard_unpacked_layers = true\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/containerd/config.d/b.toml"),
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/b\"\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/containerd/config.d/a.toml"),
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/a\"\n",
        )
        .unwrap();
        let loaded = load_files(&main, root.to_str().unwrap(), &[]).unwrap();
        let files: Vec<&str> = loaded.set.files().iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            files[1..],
            [
                "/etc/containerd/config.d/a.toml",
                "/etc/containerd/config.d/b.toml"
            ]
        );
        let codes: Vec<&str> = loaded.extra.iter().map(Finding::code).collect();
        assert_eq!(codes, ["import_not_followed", "import_missing"]);
        // b.toml is last: its whole plugin table wins.
        let report = check_files_for(
            &loaded.set,
            "/b",
            Hints::default(),
            None,
            loaded.extra,
            None,
        );
        assert_eq!(
            report.evaluation.settings.config_path.as_deref(),
            Some("/b")
        );
        assert!(!report.evaluation.settings.discard_unpacked_layers);
    }
}

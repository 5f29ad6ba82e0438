//! Command-line flags. Every flag can also be set from the environment variable named like it
//! in capitals with `-` turned into `_` (`--registry-addr` ⇔ `REGISTRY_ADDR`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use speil_core::containerd_config::Distribution;
use speil_core::hosts::{Registry, parse_mirror_target};

/// speil: a stateless peer-to-peer OCI registry mirror for Kubernetes nodes.
#[derive(Debug, Parser)]
#[command(name = "speil", version, about, subcommand_required = true)]
pub struct Cli {
    /// Lowest level logged (`DEBUG`, `INFO`, `WARN` or `ERROR`; one JSON object per line on
    /// stderr). Requests are logged at `INFO`: `WARN` turns them off.
    #[arg(long, env, global = true, default_value = "INFO", value_parser = parse_log_level)]
    pub log_level: tracing::Level,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The node agent: registry HTTP server, P2P router, metrics/debug server.
    Registry(Box<RegistryArgs>),
    /// Write containerd mirror configuration (hosts.toml); run as an init container.
    Configuration(ConfigurationArgs),
    /// Restore the configuration that `configuration` backed up, then serve GET /readyz.
    Cleanup(CleanupArgs),
    /// Wait until every cleanup pod behind an endpoint is ready.
    CleanupWait(CleanupWaitArgs),
    /// Check that containerd is configured for mirroring and print what to change.
    Doctor(DoctorArgs),
    /// Print version information.
    Version(VersionArgs),
    /// Print docs/configuration.md (every flag of every command) from this definition.
    #[command(hide = true, name = "configuration-reference")]
    ConfigurationReference,
}

/// How peers are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootstrapKind {
    /// A headless Service name, resolved to A/AAAA records.
    Dns,
    /// Serve or fetch the peer list over HTTP (`/id`).
    Http,
    /// A fixed list of multiaddrs.
    Static,
}

/// Flags of `speil registry` (Spegel's names and defaults).
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Registry listen address; its port is also the port of peers' registries.
    #[arg(long, env, default_value = ":5000", value_parser = parse_listen_addr)]
    pub registry_addr: ListenAddr,
    /// libp2p listen address (TCP).
    #[arg(long, env, default_value = ":5001", value_parser = parse_listen_addr)]
    pub router_addr: ListenAddr,
    /// Metrics and debug listen address.
    #[arg(long, env, default_value = ":9090", value_parser = parse_listen_addr)]
    pub metrics_addr: ListenAddr,
    /// containerd's gRPC socket.
    #[arg(long, env, default_value = "/run/containerd/containerd.sock")]
    pub containerd_sock: PathBuf,
    /// containerd namespace of the images.
    #[arg(long, env, default_value = "k8s.io")]
    pub containerd_namespace: String,
    /// containerd's content directory; read directly when readable.
    #[arg(
        long,
        env,
        default_value = "/var/lib/containerd/io.containerd.content.v1.content"
    )]
    pub containerd_content_path: PathBuf,
    /// Directory of the mirror configuration (checked at start-up).
    #[arg(long, env, default_value = "/etc/containerd/certs.d")]
    pub containerd_registry_config_path: String,
    /// Keeps the libp2p identity key across restarts (empty: a new key each start).
    #[arg(long, env, default_value = "")]
    pub data_dir: String,
    /// Registries served (empty: all).
    #[arg(long, env, num_args = 0.., value_delimiter = ',', value_parser = parse_registry)]
    pub mirrored_registries: Vec<Registry>,
    /// Regexes over `registry/repository[:tag]`; a match is neither served nor advertised.
    #[arg(long, env, num_args = 0..)]
    pub registry_filters: Vec<String>,
    /// Longest wait for a first peer when nothing is in flight.
    #[arg(long, env, default_value = "20ms", value_parser = parse_duration)]
    pub mirror_resolve_timeout: Duration,
    /// Providers asked for per lookup.
    #[arg(long, env, default_value_t = 3)]
    pub mirror_resolve_retries: usize,
    /// Serve the debug web page.
    #[arg(long, env, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub debug_web_enabled: bool,
    /// Most connections each server (registry, metrics) serves at once; over it a new
    /// connection gets 503 and is closed, so that containerd falls back to the upstream.
    #[arg(long, env, default_value_t = speil_core::limits::DEFAULT_MAX_CONNECTIONS, value_parser = parse_positive)]
    pub max_connections: usize,
    /// How peers are found.
    #[arg(long, env, value_enum)]
    pub bootstrap_kind: BootstrapKind,
    /// Headless Service name (dns bootstrap).
    #[arg(long, env)]
    pub dns_bootstrap_domain: Option<String>,
    /// Address to serve `/id` on (http bootstrap).
    #[arg(long, env, value_parser = parse_listen_addr)]
    pub http_bootstrap_addr: Option<ListenAddr>,
    /// URL to fetch `/id` from (http bootstrap).
    #[arg(long, env)]
    pub http_bootstrap_url: Option<String>,
    /// Accepted for compatibility with Spegel and not used yet: the bootstrap fetch is plain
    /// http (a warning is logged; `https://` URLs are refused).
    #[arg(long, env)]
    pub http_bootstrap_cert_dir: Option<PathBuf>,
    /// Multiaddrs with `/p2p/<peer id>` (static bootstrap).
    #[arg(long, env, num_args = 0.., value_delimiter = ',')]
    pub static_bootstrap_peers: Vec<String>,
    /// Refuse to start when containerd is verifiably misconfigured (the doctor's check); start
    /// with a warning when its configuration cannot be read.
    #[arg(long, env, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub verify_containerd_config: bool,
    /// containerd's config file, for the verification on containerd 2.x; empty = the
    /// `--config` of the containerd process serving the socket (from /proc), else
    /// /etc/containerd/config.toml.
    #[arg(long, env, default_value = "")]
    pub containerd_config: String,
    /// Pre-shared key file (`/key/swarm/psk/1.0.0/` format) for a private libp2p network: only
    /// nodes with the same key can connect to the router.
    #[arg(long, env)]
    pub libp2p_psk_file: Option<PathBuf>,
}

/// Flags of `speil configuration`.
#[derive(Debug, Clone, Args)]
pub struct ConfigurationArgs {
    /// containerd's registry configuration directory.
    #[arg(long, env, default_value = "/etc/containerd/certs.d")]
    pub containerd_registry_config_path: PathBuf,
    /// Registries to mirror (empty: all, written as `_default`).
    #[arg(long, env, num_args = 0.., value_delimiter = ',', value_parser = parse_registry)]
    pub mirrored_registries: Vec<Registry>,
    /// Mirror URLs, in priority order (`http://` when no scheme is given).
    #[arg(long, env, required = true, num_args = 1.., value_delimiter = ',', value_parser = parse_target)]
    pub mirror_targets: Vec<String>,
    /// Let the mirrors resolve tags (`['pull', 'resolve']`), else `['pull']`.
    #[arg(long, env, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub resolve_tags: bool,
    /// Keep the existing hosts after speil's.
    #[arg(long, env, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub prepend_existing: bool,
}

/// Flags of `speil cleanup`.
#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    /// Where to serve GET /readyz after the restore.
    #[arg(long, env, value_parser = parse_listen_addr)]
    pub addr: ListenAddr,
    /// containerd's registry configuration directory.
    #[arg(long, env, default_value = "/etc/containerd/certs.d")]
    pub containerd_registry_config_path: PathBuf,
}

/// Flags of `speil cleanup-wait`.
#[derive(Debug, Clone, Args)]
pub struct CleanupWaitArgs {
    /// `host:port` that resolves to every cleanup pod.
    #[arg(long, env)]
    pub probe_endpoint: String,
    /// Time between rounds.
    #[arg(long, env, default_value = "2s", value_parser = parse_duration)]
    pub period: Duration,
    /// Consecutive all-ready rounds needed.
    #[arg(long, env, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub threshold: u32,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// One JSON document.
    Json,
}

/// Flags of `speil doctor`.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Check this config.toml (and its imports) instead of asking the running containerd.
    #[arg(long, env)]
    pub containerd_config: Option<PathBuf>,
    /// containerd's gRPC socket (the live check: CRI version, then CRI status or the config
    /// file).
    #[arg(long, env, default_value = "/run/containerd/containerd.sock")]
    pub containerd_sock: PathBuf,
    /// The directory speil writes hosts.toml files into.
    #[arg(long, env, default_value = "/etc/containerd/certs.d")]
    pub containerd_registry_config_path: String,
    /// os-release file used to recognise the distribution, below --host-root (empty: none).
    #[arg(long, env, default_value = "/etc/os-release")]
    pub os_release: String,
    /// DMI system vendor file used to recognise the cloud (empty: none).
    #[arg(long, env, default_value = "/sys/class/dmi/id/sys_vendor")]
    pub sys_vendor: String,
    /// The distribution, when recognising it is not wanted (`auto`: recognise).
    #[arg(long, env, default_value = "auto", value_parser = parse_distribution)]
    pub distribution: DistributionChoice,
    /// Directories of drop-in parts merged key by key after the main file (`*.toml`, `*.part`).
    #[arg(long, env, num_args = 0.., value_delimiter = ',')]
    pub drop_in_dirs: Vec<PathBuf>,
    /// Prefix for absolute paths named by `imports` (a node's root mounted elsewhere).
    #[arg(long, env, default_value = "")]
    pub host_root: String,
    /// Output format.
    #[arg(long, env, value_enum, default_value = "text")]
    pub format: Format,
}

/// `--distribution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistributionChoice {
    /// Recognise it.
    Auto,
    /// This one.
    Given(Distribution),
}

/// Flags of `speil version`.
#[derive(Debug, Clone, Args)]
pub struct VersionArgs {
    /// Output format.
    #[arg(long, env, value_enum, default_value = "text")]
    pub format: Format,
}

/// A listen address as Spegel writes them: `:5000` (all interfaces), `127.0.0.1:5000`,
/// `[::1]:5000`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr {
    /// The host part; `None` for all interfaces.
    pub host: Option<String>,
    /// The port.
    pub port: u16,
}

impl ListenAddr {
    /// The socket addresses to bind, in order of preference.
    pub fn candidates(&self) -> std::io::Result<Vec<SocketAddr>> {
        use std::net::ToSocketAddrs;
        match &self.host {
            None => Ok(vec![
                SocketAddr::from(([0u16; 8], self.port)),
                SocketAddr::from(([0u8; 4], self.port)),
            ]),
            Some(h) => {
                let h = h.trim_start_matches('[').trim_end_matches(']');
                Ok((h, self.port).to_socket_addrs()?.collect())
            }
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host.as_deref().unwrap_or(""), self.port)
    }
}

/// Parses `[host]:port`.
pub fn parse_listen_addr(s: &str) -> Result<ListenAddr, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected [host]:port, got {s:?}"))?;
    let port: u16 = port.parse().map_err(|_| format!("invalid port in {s:?}"))?;
    let host = (!host.is_empty()).then(|| host.to_string());
    if let Some(h) = &host
        && (h.contains(char::is_whitespace) || (h.contains(':') && !h.starts_with('[')))
    {
        return Err(format!(
            "invalid host in {s:?} (IPv6 addresses go in brackets)"
        ));
    }
    Ok(ListenAddr { host, port })
}

/// Parses Go-style durations: `20ms`, `2s`, `1m30s`, `1.5h`, `500us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("invalid duration {s:?} (examples: 20ms, 2s, 1m30s)");
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(err());
    }
    let mut rest = t;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    if !total.is_finite() || total > 1e9 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(total))
}

fn parse_log_level(s: &str) -> Result<tracing::Level, String> {
    match s.to_ascii_uppercase().as_str() {
        "DEBUG" => Ok(tracing::Level::DEBUG),
        "INFO" => Ok(tracing::Level::INFO),
        "WARN" | "WARNING" => Ok(tracing::Level::WARN),
        "ERROR" => Ok(tracing::Level::ERROR),
        _ => Err(format!(
            "unknown log level {s:?} (DEBUG, INFO, WARN, ERROR)"
        )),
    }
}

fn parse_registry(s: &str) -> Result<Registry, String> {
    Registry::parse(s).map_err(|e| e.to_string())
}

fn parse_target(s: &str) -> Result<String, String> {
    parse_mirror_target(s).map_err(|e| e.to_string())
}

fn parse_distribution(s: &str) -> Result<DistributionChoice, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(DistributionChoice::Auto);
    }
    s.parse::<Distribution>()
        .map(DistributionChoice::Given)
        .map_err(|e| e.to_string())
}

/// clap's error as one line: the message and the flag it names, without usage or tips.
pub fn one_line_error(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let mut parts = Vec::new();
    for line in rendered.lines() {
        let t = line.trim();
        if t.starts_with("Usage:") || t.starts_with("For more information") {
            break;
        }
        if t.is_empty() || t.starts_with("tip:") {
            continue;
        }
        parts.push(t.to_string());
    }
    parts.join(" ")
}

/// A count of at least 1.
fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a count: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "2", "s", "2x", "ms20", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_addrs() {
        assert_eq!(
            parse_listen_addr(":5000"),
            Ok(ListenAddr {
                host: None,
                port: 5000
            })
        );
        assert_eq!(
            parse_listen_addr("127.0.0.12:5001")
                .unwrap()
                .candidates()
                .unwrap(),
            vec!["127.0.0.12:5001".parse().unwrap()]
        );
        assert!(parse_listen_addr("[::1]:1").is_ok());
        assert!(parse_listen_addr("5000").is_err());
        assert!(parse_listen_addr(":99999").is_err());
        assert!(parse_listen_addr("::1:5").is_err());
    }

    #[test]
    fn registry_defaults() {
        let cli = Cli::try_parse_from(["speil", "registry", "--bootstrap-kind", "dns"]).unwrap();
        let Command::Registry(a) = cli.command else {
            panic!()
        };
        let a = *a;
        assert_eq!(a.registry_addr.port, 5000);
        assert_eq!(a.mirror_resolve_timeout, Duration::from_millis(20));
        assert_eq!(a.mirror_resolve_retries, 3);
        assert!(a.debug_web_enabled && a.verify_containerd_config);
        assert!(a.mirrored_registries.is_empty());
        // Empty (a chart's unset value) means: find containerd's file.
        assert_eq!(a.containerd_config, "");
        let cli = Cli::try_parse_from([
            "speil",
            "registry",
            "--bootstrap-kind=static",
            "--verify-containerd-config=false",
            "--mirrored-registries",
            "https://docker.io",
            "ghcr.io",
        ])
        .unwrap();
        let Command::Registry(a) = cli.command else {
            panic!()
        };
        assert!(!a.verify_containerd_config);
        assert_eq!(a.mirrored_registries.len(), 2);
    }

    #[test]
    fn missing_flag_is_one_line() {
        let err = Cli::try_parse_from(["speil", "configuration"]).unwrap_err();
        let line = one_line_error(&err);
        assert!(!line.contains('\n'));
        assert!(line.contains("--mirror-targets"), "{line}");
    }
}

//! Which containerd is running, from the CRI `RuntimeService/Version` answer, and where its
//! live configuration can be read (SPEC §6).
//!
//! The generation comes from `runtime_version` (`1.6.20~ds1`, `v2.3.4`,
//! `v2.4.0-beta.0-70-g301026e58`), never from the shape of a config file:
//! - containerd 1.x reports its CRI configuration in the CRI `Status` answer;
//! - containerd 2.4 and later export it through the Introspection API;
//! - containerd 2.0–2.3 report it nowhere, so only the TOML files are left.

use std::fmt;

/// The containerd generations that differ in where the live configuration is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RuntimeGeneration {
    /// containerd 1.x (config `version = 2`, CRI plugin `io.containerd.grpc.v1.cri`).
    V1,
    /// containerd 2.0 to 2.3: no live source of the CRI image settings.
    V2Early,
    /// containerd 2.4 and later: the Introspection API exports the settings.
    V2Live,
}

impl RuntimeGeneration {
    /// `1.x`, `2.0–2.3` or `2.4+`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeGeneration::V1 => "1.x",
            RuntimeGeneration::V2Early => "2.0–2.3",
            RuntimeGeneration::V2Live => "2.4+",
        }
    }

    /// Whether this generation reads `version = 3` configs (`io.containerd.cri.v1.*` keys).
    pub fn is_v2(self) -> bool {
        !matches!(self, RuntimeGeneration::V1)
    }
}

/// A containerd version as reported by the CRI `Version` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeVersion {
    /// The reported text, unchanged.
    pub raw: String,
    /// Major version.
    pub major: u64,
    /// Minor version.
    pub minor: u64,
    /// Where its live configuration can be read.
    pub generation: RuntimeGeneration,
}

impl fmt::Display for RuntimeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// `runtime_version` is not a containerd version speil knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unrecognised containerd version {0:?}")]
pub struct UnknownRuntimeVersion(pub String);

fn leading_number(s: &str) -> Option<(u64, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    Some((s[..end].parse().ok()?, &s[end..]))
}

/// Parses a CRI `runtime_version`: an optional `v`, then `MAJOR.MINOR`, then anything
/// (patch, pre-release, git describe suffix, Debian revision).
pub fn parse_runtime_version(raw: &str) -> Result<RuntimeVersion, UnknownRuntimeVersion> {
    let unknown = || UnknownRuntimeVersion(raw.to_string());
    let text = raw.trim();
    let text = text.strip_prefix('v').unwrap_or(text);
    let (major, rest) = leading_number(text).ok_or_else(unknown)?;
    let rest = rest.strip_prefix('.').ok_or_else(unknown)?;
    let (minor, _) = leading_number(rest).ok_or_else(unknown)?;
    let generation = match (major, minor) {
        (1, _) => RuntimeGeneration::V1,
        (2, 0..=3) => RuntimeGeneration::V2Early,
        (2.., _) => RuntimeGeneration::V2Live,
        _ => return Err(unknown()),
    };
    Ok(RuntimeVersion {
        raw: raw.trim().to_string(),
        major,
        minor,
        generation,
    })
}

/// Where the settings of a running containerd are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveSource {
    /// CRI `Status` (verbose) `info["config"]`.
    CriStatus,
    /// Introspection `Plugins`, plugin `io.containerd.cri.v1`/`images` exports.
    Introspection,
    /// The TOML files (containerd 2.0–2.3).
    Toml,
}

impl LiveSource {
    /// The source's name in doctor output (`toml` is followed by the path by the caller).
    pub fn as_str(self) -> &'static str {
        match self {
            LiveSource::CriStatus => "cri-status",
            LiveSource::Introspection => "introspection",
            LiveSource::Toml => "toml",
        }
    }
}

/// The source to read for a runtime of this version.
pub fn live_source(version: &RuntimeVersion) -> LiveSource {
    match version.generation {
        RuntimeGeneration::V1 => LiveSource::CriStatus,
        RuntimeGeneration::V2Live => LiveSource::Introspection,
        RuntimeGeneration::V2Early => LiveSource::Toml,
    }
}

/// Whether CRI pulls of this version go through the transfer service (containerd ≥ 2.1),
/// which ignores a `config_path` list unless `use_local_image_pull = true`.
pub fn pulls_through_transfer_service(version: &RuntimeVersion) -> bool {
    (version.major, version.minor) >= (2, 1)
}

/// containerd's default configuration file (used when its command line names none).
pub const DEFAULT_CONFIG_FILE: &str = "/etc/containerd/config.toml";
/// containerd's default gRPC socket (used when its configuration names none).
pub const DEFAULT_GRPC_ADDRESS: &str = "/run/containerd/containerd.sock";

/// The configuration file a containerd process runs with, from its command line (`argv[0]`
/// first): the value of `--config`/`-c` (also as `--config=PATH`), else
/// [`DEFAULT_CONFIG_FILE`]. `None` when `argv[0]` is not a `containerd` binary.
pub fn config_file_of(argv: &[String]) -> Option<String> {
    let program = argv.first()?;
    if program.rsplit('/').next() != Some("containerd") {
        return None;
    }
    let mut args = argv[1..].iter();
    while let Some(arg) = args.next() {
        if let Some(v) = arg
            .strip_prefix("--config=")
            .or_else(|| arg.strip_prefix("-c="))
        {
            return Some(v.to_owned());
        }
        if arg == "--config" || arg == "-c" {
            return args.next().cloned();
        }
    }
    Some(DEFAULT_CONFIG_FILE.to_owned())
}

/// The gRPC socket a containerd configuration listens on (`[grpc] address`), else
/// [`DEFAULT_GRPC_ADDRESS`]. This is how the process serving speil's socket is told apart
/// from other containerd processes on the node.
pub fn grpc_address_of(config_text: &str) -> String {
    config_text
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| {
            t.get("grpc")?
                .as_table()?
                .get("address")?
                .as_str()
                .map(str::to_owned)
        })
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| DEFAULT_GRPC_ADDRESS.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> RuntimeVersion {
        parse_runtime_version(s).unwrap()
    }

    #[test]
    fn generations_from_real_answers() {
        let debian = v("1.6.20~ds1");
        assert_eq!((debian.major, debian.minor), (1, 6));
        assert_eq!(debian.generation, RuntimeGeneration::V1);
        assert_eq!(v("v2.3.4").generation, RuntimeGeneration::V2Early);
        assert_eq!(v("v2.0.0").generation, RuntimeGeneration::V2Early);
        let dev = v("v2.4.0-beta.0-70-g301026e58");
        assert_eq!((dev.major, dev.minor), (2, 4));
        assert_eq!(dev.generation, RuntimeGeneration::V2Live);
        assert_eq!(v("v3.0.1").generation, RuntimeGeneration::V2Live);
        assert_eq!(dev.to_string(), "v2.4.0-beta.0-70-g301026e58");
    }

    #[test]
    fn garbage_is_rejected() {
        for s in ["", "v", "containerd", "2", "v2.", "0.9.1", "x1.6"] {
            assert!(parse_runtime_version(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn source_per_generation() {
        assert_eq!(live_source(&v("1.7.0")), LiveSource::CriStatus);
        assert_eq!(live_source(&v("v2.3.4")), LiveSource::Toml);
        assert_eq!(live_source(&v("v2.4.0")), LiveSource::Introspection);
    }

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn config_file_from_the_command_line() {
        assert_eq!(
            config_file_of(&argv("/usr/bin/containerd --config /n0/config.toml")).as_deref(),
            Some("/n0/config.toml")
        );
        assert_eq!(
            config_file_of(&argv("containerd -l warn --config=/x.toml")).as_deref(),
            Some("/x.toml")
        );
        assert_eq!(
            config_file_of(&argv("containerd -c /y.toml")).as_deref(),
            Some("/y.toml")
        );
        assert_eq!(
            config_file_of(&argv("/usr/bin/containerd")).as_deref(),
            Some(DEFAULT_CONFIG_FILE)
        );
        assert_eq!(
            config_file_of(&argv("/usr/bin/containerd-shim-runc-v2 -id x")),
            None
        );
        assert_eq!(config_file_of(&argv("containerd --config")), None);
        assert_eq!(config_file_of(&[]), None);
    }

    #[test]
    fn grpc_address_from_the_config() {
        assert_eq!(
            grpc_address_of("version = 3\n[grpc]\n  address = \"/n0/c.sock\"\n"),
            "/n0/c.sock"
        );
        assert_eq!(grpc_address_of("version = 3\n"), DEFAULT_GRPC_ADDRESS);
        assert_eq!(grpc_address_of("not toml ["), DEFAULT_GRPC_ADDRESS);
    }
}

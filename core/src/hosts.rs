//! `hosts.toml` rendering and the `configuration` / `cleanup` plan.
//!
//! containerd looks up `<config_path>/<host[:port]>/hosts.toml` for a registry and
//! `<config_path>/_default/hosts.toml` when that directory does not exist. speil writes one file
//! per mirrored registry (or `_default` for all) that lists its mirror targets before the
//! upstream `server`.
//!
//! The plan works on a description of the directory ([`Tree`]) and returns file operations
//! ([`FileOp`]) for an adapter to execute; [`Tree::apply`] executes them in memory, which is
//! how the properties are tested: `configuration` then `cleanup` gives back the original tree
//! byte for byte, and `configuration` twice equals once.
//!
//! Everything found in the directory the first time is moved to `_backup/` once; later runs
//! (an init container restarts) rebuild from `_backup/` and never back up their own output.
//! With all registries mirrored, every registry directory that already existed is kept: a
//! directory for a host shadows `_default` in containerd, so dropping it would lose its
//! certificates and keeping it unchanged would bypass speil.
//!
//! IPv6 targets are written bracketed in the same `[host.'http://[fd00::5]:30020']` tables as
//! any other host. Measured with real daemons: containerd 2.3.4 and 2.4 read them, in file order;
//! containerd 2.x ignores hosts written as dotted keys or inline tables. containerd 1.6 cannot
//! parse a table header whose key contains `]` (with any quoting or escape), so on 1.6 such a
//! file is skipped and pulls go to the upstream; no form is read by both generations.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;

/// The directory containerd reads when no registry-specific one exists.
pub const DEFAULT_DIR: &str = "_default";
/// Where the original configuration is kept while speil's is in place.
pub const BACKUP_DIR: &str = "_backup";
/// The file containerd reads in each registry directory.
pub const HOSTS_FILE: &str = "hosts.toml";

/// Input that cannot be turned into a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostsError {
    /// A `--mirrored-registries` value that is not `[http[s]://]host[:port]`.
    #[error("invalid registry {value:?}: {reason}")]
    Registry {
        /// The value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A `--mirror-targets` value that is not `[http[s]://]host[:port][/path]`.
    #[error("invalid mirror target {value:?}: {reason}")]
    MirrorTarget {
        /// The value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// No mirror target.
    #[error("at least one mirror target is required")]
    NoMirrorTargets,
    /// A basic-auth user name or password with a character that cannot be sent.
    #[error("basic auth {0} must not contain ':' (user name), control characters or be empty")]
    BasicAuth(&'static str),
    /// An existing `hosts.toml` is not valid TOML.
    #[error("existing {path} is not valid TOML: {message}")]
    ExistingInvalid {
        /// The file, relative to the configuration directory.
        path: String,
        /// The parser's message, on one line.
        message: String,
    },
}

/// A registry to mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// The directory name: `host[:port]`.
    pub dir: String,
    /// The upstream URL written as `server` (`docker.io` becomes `https://registry-1.docker.io`).
    pub server: String,
}

fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.is_empty()
            || !addr
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("x", Some(port)),
                None => return false,
            },
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok());
    name_ok && port_ok
}

/// The URL containerd uses for a registry host: `https://<host>`, with Docker Hub's API host.
pub fn server_for(scheme: &str, host: &str) -> String {
    if host == "docker.io" {
        format!("{scheme}://registry-1.docker.io")
    } else {
        format!("{scheme}://{host}")
    }
}

impl Registry {
    /// Parses `[http[s]://]host[:port]` (a trailing `/` is allowed). Without a scheme, https.
    pub fn parse(value: &str) -> Result<Self, HostsError> {
        let err = |reason| HostsError::Registry {
            value: value.to_string(),
            reason,
        };
        let v = value.trim();
        let (scheme, rest) = match v.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("https".to_string(), v),
        };
        if scheme != "http" && scheme != "https" {
            return Err(err("the scheme must be http or https"));
        }
        let host = rest.strip_suffix('/').unwrap_or(rest);
        if host.contains('/') || host.contains('?') || host.contains('#') {
            return Err(err("a registry has no path"));
        }
        if host.contains('@') {
            return Err(err("credentials do not belong in the registry URL"));
        }
        if !valid_host(host) {
            return Err(err("expected host[:port]"));
        }
        if host.starts_with('_') {
            return Err(err(
                "names starting with '_' are reserved (_default, _backup)",
            ));
        }
        let host = host.to_ascii_lowercase();
        Ok(Registry {
            server: server_for(&scheme, &host),
            dir: host,
        })
    }
}

/// An IPv6 literal (without brackets).
fn ipv6(text: &str) -> Option<std::net::Ipv6Addr> {
    text.parse().ok()
}

/// Brackets an unbracketed IPv6 host (`2001:db8::5:30020` → `[2001:db8::5]:30020`): the last
/// `:<digits>` is the port when the rest is an IPv6 address, else the whole is the address.
fn bracket_ipv6(host: &str) -> Option<String> {
    if let Some((addr, port)) = host.rsplit_once(':')
        && !port.is_empty()
        && port.chars().all(|c| c.is_ascii_digit())
        && port.parse::<u16>().is_ok()
        && let Some(a) = ipv6(addr)
    {
        return Some(format!("[{a}]:{port}"));
    }
    ipv6(host).map(|a| format!("[{a}]"))
}

/// Normalises a mirror target: `http://` is added when no scheme is given, and an IPv6 address
/// is written bracketed (`fd00::5:30020` → `http://[fd00::5]:30020`).
pub fn parse_mirror_target(value: &str) -> Result<String, HostsError> {
    let err = |reason| HostsError::MirrorTarget {
        value: value.to_string(),
        reason,
    };
    let v = value.trim();
    if v.is_empty() {
        return Err(err("empty"));
    }
    if v.chars()
        .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '\'' | '"' | '\\'))
    {
        return Err(err(
            "quotes, backslashes, spaces and control characters are not allowed",
        ));
    }
    let (scheme, rest) = match v.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ("http".to_string(), v),
    };
    if scheme != "http" && scheme != "https" {
        return Err(err("the scheme must be http or https"));
    }
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if host.contains('@') {
        return Err(err("credentials do not belong in the URL"));
    }
    let host = if let Some(inner) = host.strip_prefix('[') {
        let addr = inner.split(']').next().unwrap_or("");
        if ipv6(addr).is_none() {
            return Err(err("expected an IPv6 address between [ and ]"));
        }
        host.to_string()
    } else if host.matches(':').count() > 1 {
        bracket_ipv6(host).ok_or_else(|| {
            err("expected an IPv6 address, optionally followed by :<port>, or host[:port]")
        })?
    } else {
        host.to_string()
    };
    if !valid_host(&host) {
        return Err(err("expected host[:port]"));
    }
    Ok(format!("{scheme}://{host}{path}"))
}

/// Credentials the mirrors require (speil's optional basic auth).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl BasicAuth {
    /// Checks that the pair can be sent in a header.
    pub fn new(username: &str, password: &str) -> Result<Self, HostsError> {
        if username.is_empty() || username.contains(':') || username.chars().any(char::is_control) {
            return Err(HostsError::BasicAuth("user name"));
        }
        if password.is_empty() || password.chars().any(char::is_control) {
            return Err(HostsError::BasicAuth("password"));
        }
        Ok(BasicAuth {
            username: username.to_string(),
            password: password.to_string(),
        })
    }

    /// The `Authorization` header value.
    pub fn header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// What every speil `[host]` entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsConfig {
    /// Mirror targets, normalised ([`parse_mirror_target`]), in priority order.
    pub targets: Vec<String>,
    /// `['pull', 'resolve']` when true, `['pull']` when false.
    pub resolve_tags: bool,
    /// Optional `Authorization` header.
    pub basic_auth: Option<BasicAuth>,
}

/// Which `server` line a `hosts.toml` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    /// None (`_default`), unless the existing file merged in has one.
    None,
    /// This URL.
    Given(String),
    /// The existing file's line when it has one, else this URL.
    ExistingOr(String),
}

/// An existing `hosts.toml` split into its `server` line, its other top-level keys and its
/// tables, each as written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Split {
    server: Option<String>,
    top: String,
    tables: String,
}

fn parse_table(text: &str) -> Option<toml::Table> {
    text.parse::<toml::Table>().ok()
}

fn is_server_line(line: &str) -> bool {
    let t = line.trim_start();
    t.strip_prefix("server")
        .or_else(|| t.strip_prefix("\"server\""))
        .or_else(|| t.strip_prefix("'server'"))
        .is_some_and(|rest| rest.trim_start().starts_with('='))
}

fn split_text(text: &str, whole: &toml::Table) -> Option<Split> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let header_at = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with('['))
        .map(|(i, _)| i)
        .find(|&i| {
            let top: String = lines[..i].concat();
            let rest: String = lines[i..].concat();
            match (parse_table(&top), parse_table(&rest)) {
                (Some(mut t), Some(r)) => {
                    for (k, v) in r {
                        if t.insert(k, v).is_some() {
                            return false;
                        }
                    }
                    &t == whole
                }
                _ => false,
            }
        });
    let (top_lines, tables) = match header_at {
        Some(i) => (&lines[..i], lines[i..].concat()),
        None if whole.values().all(|v| !v.is_table()) => (&lines[..], String::new()),
        None => return None,
    };
    let mut server = None;
    let mut top = String::new();
    for line in top_lines {
        if is_server_line(line) && server.is_none() {
            server = Some(line.trim_end().to_string());
        } else if !line.trim().is_empty() {
            top.push_str(line);
        }
    }
    // The split must mean exactly what the file meant.
    let mut check = parse_table(&format!("{}\n{}", server.as_deref().unwrap_or(""), top))?;
    for (k, v) in parse_table(&tables)? {
        check.insert(k, v);
    }
    (&check == whole).then_some(Split {
        server,
        top,
        tables,
    })
}

fn split_existing(path: &str, text: &str, targets: &[String]) -> Result<Split, HostsError> {
    let mut whole = text
        .parse::<toml::Table>()
        .map_err(|e| HostsError::ExistingInvalid {
            path: path.to_string(),
            message: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })?;
    // A host speil lists too would be a duplicate table: drop the file's own entry.
    let mut conflict = false;
    if let Some(toml::Value::Table(hosts)) = whole.get_mut("host") {
        for target in targets {
            conflict |= hosts.remove(target).is_some();
        }
    }
    if !conflict && let Some(split) = split_text(text, &whole) {
        return Ok(split);
    }
    // Unusual layout, or an entry removed: re-render it.
    let rendered = toml::to_string(&whole).unwrap_or_default();
    Ok(split_text(&rendered, &whole).unwrap_or(Split {
        server: None,
        top: String::new(),
        tables: rendered,
    }))
}

fn ensure_newline(s: &mut String) {
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
}

/// Renders a `hosts.toml`: the `server` line, the existing file's other top-level keys, one
/// `[host]` table per mirror target in order, then the existing file's own tables.
pub fn render_hosts_toml(
    server: &Server,
    config: &HostsConfig,
    existing: Option<(&str, &str)>,
) -> Result<String, HostsError> {
    if config.targets.is_empty() {
        return Err(HostsError::NoMirrorTargets);
    }
    let split = match existing {
        Some((path, text)) => split_existing(path, text, &config.targets)?,
        None => Split::default(),
    };
    let mut out = String::new();
    match (server, &split.server) {
        (Server::Given(url), _) => out.push_str(&format!("server = '{url}'\n")),
        (Server::ExistingOr(_) | Server::None, Some(line)) => {
            out.push_str(line);
            out.push('\n');
        }
        (Server::ExistingOr(url), None) => out.push_str(&format!("server = '{url}'\n")),
        (Server::None, None) => {}
    }
    out.push_str(&split.top);
    ensure_newline(&mut out);
    let capabilities = if config.resolve_tags {
        "['pull', 'resolve']"
    } else {
        "['pull']"
    };
    for target in &config.targets {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!(
            "[host.'{target}']\ncapabilities = {capabilities}\ndial_timeout = '200ms'\n"
        ));
        if let Some(auth) = &config.basic_auth {
            out.push_str(&format!(
                "\n[host.'{target}'.header]\nAuthorization = '{}'\n",
                auth.header()
            ));
        }
    }
    let tables = split.tables.trim_matches('\n');
    if !tables.is_empty() {
        out.push('\n');
        out.push_str(tables);
        out.push('\n');
    }
    Ok(out)
}

/// The `host` keys of a `hosts.toml` in the order they first appear in the text, which is the
/// order containerd tries them in (it sorts hosts by the line where each is defined).
pub fn hosts_in_order(text: &str) -> Option<Vec<String>> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let Some((_, host)) = doc.get_ref().iter().find(|(k, _)| k.get_ref() == "host") else {
        return Some(Vec::new());
    };
    let toml::de::DeValue::Table(hosts) = host.get_ref() else {
        return None;
    };
    let mut keys: Vec<(usize, String)> = hosts
        .iter()
        .map(|(k, _)| (k.span().start, k.get_ref().to_string()))
        .collect();
    keys.sort();
    Some(keys.into_iter().map(|(_, k)| k).collect())
}

/// The `server` an existing `hosts.toml` names, if any.
pub fn existing_server(text: &str) -> Option<String> {
    let t: toml::Table = text.parse().ok()?;
    t.get("server")?.as_str().map(str::to_string)
}

/// One entry of a directory tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file and its bytes.
    File(Vec<u8>),
    /// A symbolic link and its target.
    Symlink(String),
}

/// Permission bits of a file speil writes (and of a file inserted without a mode).
pub const FILE_MODE: u32 = 0o644;
/// Permission bits of a `hosts.toml` that carries an `Authorization` header.
pub const SECRET_MODE: u32 = 0o600;
/// Permission bits of a directory inserted or created without a mode.
pub const DIR_MODE: u32 = 0o755;
/// speil's record of the backup, inside [`BACKUP_DIR`].
pub const STATE_FILE: &str = ".speil-state";
/// The backup directory while it is being created (renamed to [`BACKUP_DIR`] when complete).
pub const NEW_BACKUP_DIR: &str = "_backup.speil-new";
/// The backup directory while `cleanup` removes it.
pub const OLD_BACKUP_DIR: &str = "_backup.speil-old";

/// The name of the temporary file an atomic write of `name` goes through (same directory).
pub fn temp_name(name: &str) -> String {
    format!(".{name}.speil-tmp")
}

/// A directory tree: relative `/`-separated paths to entries, and the permission bits of its
/// files and directories. Every entry's parent directories are entries too.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    entries: BTreeMap<String, Node>,
    modes: BTreeMap<String, u32>,
}

/// A tree or plan operation that cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// Not a relative path of plain names.
    #[error("invalid relative path {0:?}")]
    InvalidPath(String),
    /// A parent is not a directory.
    #[error("parent of {0} is not a directory")]
    ParentNotDir(String),
    /// The path exists already.
    #[error("{0} exists already")]
    Exists(String),
    /// The path does not exist.
    #[error("{0} does not exist")]
    Missing(String),
    /// `_backup` exists but is not a directory.
    #[error("{BACKUP_DIR} exists but is not a directory")]
    BackupNotDir,
    /// speil's record of the backup cannot be read.
    #[error("{BACKUP_DIR}/{STATE_FILE} is not speil's backup record: {0}")]
    State(String),
    /// An entry exists both in the directory and in the backup, and is not speil's.
    #[error(
        "{0} exists both in the configuration directory and in {BACKUP_DIR}/: move one of them away"
    )]
    Conflict(String),
    /// An entry whose name speil uses for its own record.
    #[error("{0} is a name speil reserves for its backup record: rename it")]
    Reserved(String),
}

fn check_path(path: &str) -> Result<(), TreeError> {
    let ok = !path.is_empty()
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
    if ok {
        Ok(())
    } else {
        Err(TreeError::InvalidPath(path.to_string()))
    }
}

fn parent(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(p, _)| p)
}

fn is_under(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

fn default_mode(node: &Node) -> Option<u32> {
    match node {
        Node::Dir => Some(DIR_MODE),
        Node::File(_) => Some(FILE_MODE),
        Node::Symlink(_) => None,
    }
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    fn ensure_parents(&mut self, path: &str) -> Result<(), TreeError> {
        if let Some(p) = parent(path) {
            match self.entries.get(p) {
                Some(Node::Dir) => {}
                Some(_) => return Err(TreeError::ParentNotDir(path.to_string())),
                None => {
                    self.ensure_parents(p)?;
                    self.entries.insert(p.to_string(), Node::Dir);
                    self.modes.insert(p.to_string(), DIR_MODE);
                }
            }
        }
        Ok(())
    }

    /// Adds (or replaces) an entry with the default mode ([`FILE_MODE`], [`DIR_MODE`]),
    /// creating missing parent directories.
    pub fn insert(&mut self, path: &str, node: Node) -> Result<(), TreeError> {
        let mode = default_mode(&node);
        self.insert_with_mode(path, node, mode)
    }

    /// Adds (or replaces) an entry with these permission bits (`None` for a symbolic link),
    /// creating missing parent directories.
    pub fn insert_with_mode(
        &mut self,
        path: &str,
        node: Node,
        mode: Option<u32>,
    ) -> Result<(), TreeError> {
        check_path(path)?;
        self.ensure_parents(path)?;
        if let Some(existing) = self.entries.get(path)
            && (*existing == Node::Dir) != (node == Node::Dir)
        {
            return Err(TreeError::Exists(path.to_string()));
        }
        match mode {
            Some(m) if !matches!(node, Node::Symlink(_)) => {
                self.modes.insert(path.to_string(), m & 0o7777)
            }
            _ => self.modes.remove(path),
        };
        self.entries.insert(path.to_string(), node);
        Ok(())
    }

    /// The entry at `path`.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.entries.get(path)
    }

    /// The permission bits of the file or directory at `path`.
    pub fn mode(&self, path: &str) -> Option<u32> {
        self.modes.get(path).copied()
    }

    /// All entries, parents before children.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the tree has no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Names of the top-level entries.
    pub fn top_level(&self) -> Vec<&str> {
        self.entries
            .keys()
            .filter(|k| !k.contains('/'))
            .map(String::as_str)
            .collect()
    }

    /// The entries below `dir`, with paths relative to it.
    pub fn subtree(&self, dir: &str) -> Tree {
        let mut t = Tree::new();
        for (k, v) in self.entries.iter().filter(|(k, _)| is_under(k, dir)) {
            let rel = k[dir.len() + 1..].to_string();
            if let Some(m) = self.modes.get(k) {
                t.modes.insert(rel.clone(), *m);
            }
            t.entries.insert(rel, v.clone());
        }
        t
    }

    /// The tree without the entry `name` and everything below it.
    pub fn without(&self, name: &str) -> Tree {
        let mut t = self.clone();
        t.entries.retain(|k, _| k != name && !is_under(k, name));
        t.modes.retain(|k, _| k != name && !is_under(k, name));
        t
    }

    /// Executes `ops` in order, as an adapter would on disk.
    pub fn apply(&mut self, ops: &[FileOp]) -> Result<(), TreeError> {
        for op in ops {
            self.apply_one(op)?;
        }
        Ok(())
    }

    /// Executes one operation; on error the tree is unchanged.
    pub fn apply_one(&mut self, op: &FileOp) -> Result<(), TreeError> {
        match op {
            FileOp::CreateDir { path } => match self.entries.get(path.as_str()) {
                Some(Node::Dir) => Ok(()),
                Some(_) => Err(TreeError::Exists(path.clone())),
                None => {
                    check_path(path)?;
                    self.require_parent(path)?;
                    self.entries.insert(path.clone(), Node::Dir);
                    self.modes.insert(path.clone(), DIR_MODE);
                    Ok(())
                }
            },
            FileOp::Rename { from, to } => {
                check_path(to)?;
                if !self.entries.contains_key(from.as_str()) {
                    return Err(TreeError::Missing(from.clone()));
                }
                if self.entries.contains_key(to.as_str())
                    || self.require_parent(to).is_err()
                    || to == from
                    || is_under(to, from)
                {
                    return Err(TreeError::Exists(to.clone()));
                }
                let moved: Vec<String> = self
                    .entries
                    .keys()
                    .filter(|k| *k == from || is_under(k, from))
                    .cloned()
                    .collect();
                for k in moved {
                    let new = format!("{to}{}", &k[from.len()..]);
                    if let Some(v) = self.entries.remove(&k) {
                        self.entries.insert(new.clone(), v);
                    }
                    if let Some(m) = self.modes.remove(&k) {
                        self.modes.insert(new, m);
                    }
                }
                Ok(())
            }
            FileOp::WriteFile {
                path,
                contents,
                mode,
            } => {
                check_path(path)?;
                self.require_parent(path)?;
                if let Some(Node::Dir) = self.entries.get(path.as_str()) {
                    return Err(TreeError::Exists(path.clone()));
                }
                self.entries
                    .insert(path.clone(), Node::File(contents.clone()));
                self.modes.insert(path.clone(), *mode & 0o7777);
                Ok(())
            }
            FileOp::Copy { from, to } => {
                check_path(to)?;
                self.require_parent(to)?;
                let node = match self.entries.get(from.as_str()) {
                    Some(n @ (Node::File(_) | Node::Symlink(_))) => n.clone(),
                    Some(Node::Dir) => return Err(TreeError::Exists(from.clone())),
                    None => return Err(TreeError::Missing(from.clone())),
                };
                if let Some(Node::Dir) = self.entries.get(to.as_str()) {
                    return Err(TreeError::Exists(to.clone()));
                }
                match self.modes.get(from.as_str()).copied() {
                    Some(m) => self.modes.insert(to.clone(), m),
                    None => self.modes.remove(to.as_str()),
                };
                self.entries.insert(to.clone(), node);
                Ok(())
            }
            FileOp::Remove { path } => {
                if !self.entries.contains_key(path.as_str()) {
                    return Err(TreeError::Missing(path.clone()));
                }
                self.entries.retain(|k, _| k != path && !is_under(k, path));
                self.modes.retain(|k, _| k != path && !is_under(k, path));
                Ok(())
            }
        }
    }

    fn require_parent(&self, path: &str) -> Result<(), TreeError> {
        match parent(path) {
            None => Ok(()),
            Some(p) => match self.entries.get(p) {
                Some(Node::Dir) => Ok(()),
                _ => Err(TreeError::ParentNotDir(path.to_string())),
            },
        }
    }
}

/// One file-system operation, relative to the configuration directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOp {
    /// Create a directory (its parent exists; nothing happens if it exists already).
    CreateDir {
        /// The directory.
        path: String,
    },
    /// Rename an entry (a directory with everything below it); `to` does not exist.
    Rename {
        /// Old path.
        from: String,
        /// New path.
        to: String,
    },
    /// Replace a file atomically: a temporary file ([`temp_name`]) with these bytes and
    /// permission bits, fsynced, renamed over the file.
    WriteFile {
        /// The file.
        path: String,
        /// Its new bytes.
        contents: Vec<u8>,
        /// Its permission bits.
        mode: u32,
    },
    /// Copy a file (bytes and permissions, atomically) or a symbolic link.
    Copy {
        /// Source.
        from: String,
        /// Destination.
        to: String,
    },
    /// Remove a file, a symbolic link, or a directory with everything below it.
    Remove {
        /// The entry.
        path: String,
    },
}

/// What `configuration` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigurationOptions {
    /// Registries to mirror; empty means all (`_default`).
    pub registries: Vec<Registry>,
    /// The `[host]` entries.
    pub hosts: HostsConfig,
    /// Keep existing hosts after speil's (and the other registries' directories and files).
    pub prepend_existing: bool,
}

enum Want {
    Dir,
    Write(Vec<u8>, u32),
    CopyBack,
}

/// speil's record of the backup (`_backup/.speil-state`): the top-level names moved (or about
/// to be moved) into the backup, and the top-level names speil writes (or is about to write).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct State {
    originals: BTreeSet<String>,
    written: BTreeSet<String>,
}

impl State {
    fn to_bytes(&self) -> Vec<u8> {
        let doc = serde_json::json!({
            "format": 1,
            "originals": self.originals,
            "written": self.written,
        });
        let mut out = doc.to_string().into_bytes();
        out.push(b'\n');
        out
    }

    fn parse(bytes: &[u8]) -> Result<Self, TreeError> {
        let doc: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| TreeError::State(e.to_string()))?;
        if doc.get("format").and_then(serde_json::Value::as_u64) != Some(1) {
            return Err(TreeError::State("unknown format".to_string()));
        }
        let names = |key: &str| -> Result<BTreeSet<String>, TreeError> {
            doc.get(key)
                .and_then(serde_json::Value::as_array)
                .ok_or_else(|| TreeError::State(format!("no {key} list")))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| TreeError::State(format!("{key}: not a name")))
                })
                .collect()
        };
        Ok(State {
            originals: names("originals")?,
            written: names("written")?,
        })
    }

    fn write(&self, dir: &str) -> FileOp {
        FileOp::WriteFile {
            path: format!("{dir}/{STATE_FILE}"),
            contents: self.to_bytes(),
            mode: FILE_MODE,
        }
    }

    /// Whether the top-level entry `name` is speil's output: a name speil writes that is not
    /// an original still waiting to be moved into the backup, or the temporary file of one.
    fn is_speils(&self, name: &str, backed_up: &BTreeSet<String>) -> bool {
        if let Some(of) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".speil-tmp"))
            && self.written.contains(of)
        {
            return true;
        }
        self.written.contains(name) && (!self.originals.contains(name) || backed_up.contains(name))
    }
}

/// The backup as found.
struct Backup {
    state: State,
    /// No record: the format of earlier releases (a complete backup; everything beside it
    /// is speil's output).
    legacy: bool,
    /// The top-level names in the backup (without speil's record).
    names: BTreeSet<String>,
}

/// What [`scan`] found.
struct Scan {
    backup: Option<Backup>,
    /// Removals of what interrupted runs left behind.
    ops: Vec<FileOp>,
    /// The top-level names beside the backup.
    top: Vec<String>,
}

/// Reads the backup and returns the operations that remove what interrupted runs left behind
/// (a backup directory being created or removed, a temporary record).
fn scan(current: &Tree) -> Result<Scan, PlanError> {
    let mut ops = Vec::new();
    for junk in [NEW_BACKUP_DIR, OLD_BACKUP_DIR] {
        if current.get(junk).is_some() {
            ops.push(FileOp::Remove {
                path: junk.to_string(),
            });
        }
    }
    let top: Vec<String> = current
        .top_level()
        .into_iter()
        .filter(|n| ![BACKUP_DIR, NEW_BACKUP_DIR, OLD_BACKUP_DIR].contains(n))
        .map(str::to_string)
        .collect();
    let backup = match current.get(BACKUP_DIR) {
        None => None,
        Some(Node::Dir) => {
            let temp = temp_name(STATE_FILE);
            let temp_path = format!("{BACKUP_DIR}/{temp}");
            if current.get(&temp_path).is_some() {
                ops.push(FileOp::Remove { path: temp_path });
            }
            let inside = current.subtree(BACKUP_DIR);
            let names: BTreeSet<String> = inside
                .top_level()
                .into_iter()
                .filter(|n| *n != STATE_FILE && *n != temp)
                .map(str::to_string)
                .collect();
            let (state, legacy) = match inside.get(STATE_FILE) {
                Some(Node::File(bytes)) => (State::parse(bytes)?, false),
                Some(_) => {
                    return Err(PlanError::Tree(TreeError::State(
                        "not a regular file".to_string(),
                    )));
                }
                None => (
                    State {
                        originals: names.clone(),
                        written: top.iter().cloned().collect(),
                    },
                    true,
                ),
            };
            Some(Backup {
                state,
                legacy,
                names,
            })
        }
        Some(_) => return Err(PlanError::Tree(TreeError::BackupNotDir)),
    };
    Ok(Scan { backup, ops, top })
}

fn check_reserved<'a>(names: impl IntoIterator<Item = &'a String>) -> Result<(), PlanError> {
    let temp = temp_name(STATE_FILE);
    for n in names {
        if *n == STATE_FILE || *n == temp {
            return Err(PlanError::Tree(TreeError::Reserved(n.clone())));
        }
    }
    Ok(())
}

/// The `configuration` plan for the directory described by `current`.
///
/// Crash safety: the record `_backup/.speil-state` names, before each step, what the step is
/// about to move or write, so any prefix of the plan followed by a new plan reaches the state
/// an uninterrupted run reaches. A top-level entry is speil's iff the record lists it as
/// written and it is not an original still waiting to be moved (listed as an original but
/// absent from the backup). Every other entry is an original — left by an interrupted
/// backup, restored by an interrupted cleanup, or added by the operator — and is moved into
/// the backup, so the next plan mirrors it (all registries) and `cleanup` restores it.
pub fn plan_configuration(
    current: &Tree,
    options: &ConfigurationOptions,
) -> Result<Vec<FileOp>, PlanError> {
    if options.hosts.targets.is_empty() {
        return Err(PlanError::Hosts(HostsError::NoMirrorTargets));
    }
    let Scan {
        backup,
        mut ops,
        top,
    } = scan(current)?;
    let top_names = |d: &BTreeMap<String, Want>| -> BTreeSet<String> {
        d.keys().filter(|k| !k.contains('/')).cloned().collect()
    };
    let (desired, original, actual, last, final_state) = match backup {
        None => {
            check_reserved(&top)?;
            let mut original = current.clone();
            for junk in [NEW_BACKUP_DIR, OLD_BACKUP_DIR] {
                original = original.without(junk);
            }
            let desired = desired_tree(&original, options)?;
            let state = State {
                originals: top.iter().cloned().collect(),
                written: top_names(&desired),
            };
            ops.push(FileOp::CreateDir {
                path: NEW_BACKUP_DIR.to_string(),
            });
            ops.push(state.write(NEW_BACKUP_DIR));
            ops.push(FileOp::Rename {
                from: NEW_BACKUP_DIR.to_string(),
                to: BACKUP_DIR.to_string(),
            });
            for name in &top {
                ops.push(FileOp::Rename {
                    from: name.clone(),
                    to: format!("{BACKUP_DIR}/{name}"),
                });
            }
            (desired, original, Tree::new(), Some(state.clone()), state)
        }
        Some(b) => {
            let (speils, absorb): (Vec<String>, Vec<String>) = top
                .iter()
                .cloned()
                .partition(|n| b.state.is_speils(n, &b.names));
            if let Some(n) = absorb.iter().find(|n| b.names.contains(*n)) {
                return Err(PlanError::Tree(TreeError::Conflict(n.clone())));
            }
            check_reserved(&absorb)?;
            let mut original = current.subtree(BACKUP_DIR);
            original = original.without(STATE_FILE).without(&temp_name(STATE_FILE));
            for name in &absorb {
                let moved = current
                    .entries
                    .keys()
                    .filter(|k| *k == name || is_under(k, name));
                for k in moved {
                    original
                        .entries
                        .insert(k.clone(), current.entries[k].clone());
                    if let Some(m) = current.modes.get(k) {
                        original.modes.insert(k.clone(), *m);
                    }
                }
            }
            let desired = desired_tree(&original, options)?;
            let mut intent = b.state.clone();
            intent.originals.extend(b.names.iter().cloned());
            intent.originals.extend(absorb.iter().cloned());
            intent.written.extend(top_names(&desired));
            let mut last = (!b.legacy).then(|| b.state.clone());
            if last.as_ref() != Some(&intent) {
                ops.push(intent.write(BACKUP_DIR));
                last = Some(intent);
            }
            for name in &absorb {
                ops.push(FileOp::Rename {
                    from: name.clone(),
                    to: format!("{BACKUP_DIR}/{name}"),
                });
            }
            let mut actual = Tree::new();
            for name in &speils {
                for (k, v) in current.entries.range(name.clone()..) {
                    if k != name && !is_under(k, name) {
                        break;
                    }
                    actual.entries.insert(k.clone(), v.clone());
                    if let Some(m) = current.modes.get(k) {
                        actual.modes.insert(k.clone(), *m);
                    }
                }
            }
            let final_state = State {
                originals: b.names.iter().chain(&absorb).cloned().collect(),
                written: top_names(&desired),
            };
            (desired, original, actual, last, final_state)
        }
    };

    // Remove what is there but should not be (topmost entries only).
    let mut removed: Vec<&str> = Vec::new();
    for (path, node) in actual.entries() {
        if removed.iter().any(|r| is_under(path, r)) {
            continue;
        }
        let keep = match (desired.get(path), node) {
            (None, _) => false,
            (Some(Want::Dir), Node::Dir) => true,
            (Some(Want::Dir), _) | (Some(_), Node::Dir) => false,
            (Some(_), _) => true,
        };
        if !keep {
            ops.push(FileOp::Remove {
                path: path.to_string(),
            });
            removed.push(path);
        }
    }
    for (path, want) in &desired {
        let (now, now_mode) = if removed.iter().any(|r| *r == path || is_under(path, r)) {
            (None, None)
        } else {
            (actual.get(path), actual.mode(path))
        };
        match want {
            Want::Dir => {
                if now.is_none() {
                    ops.push(FileOp::CreateDir { path: path.clone() });
                }
            }
            Want::Write(bytes, mode) => {
                if now != Some(&Node::File(bytes.clone())) || now_mode != Some(*mode) {
                    ops.push(FileOp::WriteFile {
                        path: path.clone(),
                        contents: bytes.clone(),
                        mode: *mode,
                    });
                }
            }
            Want::CopyBack => {
                if now != original.get(path) || now_mode != original.mode(path) {
                    ops.push(FileOp::Copy {
                        from: format!("{BACKUP_DIR}/{path}"),
                        to: path.clone(),
                    });
                }
            }
        }
    }
    if last.as_ref() != Some(&final_state) {
        ops.push(final_state.write(BACKUP_DIR));
    }
    Ok(ops)
}

fn desired_tree(
    original: &Tree,
    options: &ConfigurationOptions,
) -> Result<BTreeMap<String, Want>, PlanError> {
    let all = options.registries.is_empty();
    let mut desired: BTreeMap<String, Want> = BTreeMap::new();
    let original_dirs: Vec<&str> = original
        .top_level()
        .into_iter()
        .filter(|n| original.get(n) == Some(&Node::Dir))
        .collect();
    let copy_back_dir = |desired: &mut BTreeMap<String, Want>, dir: &str, skip_hosts: bool| {
        for (path, node) in original.entries() {
            if !is_under(path, dir) || (skip_hosts && path == format!("{dir}/{HOSTS_FILE}")) {
                continue;
            }
            let want = if *node == Node::Dir {
                Want::Dir
            } else {
                Want::CopyBack
            };
            desired.insert(path.to_string(), want);
        }
    };
    let own_hosts = |dir: &str| -> Option<(String, String)> {
        let path = format!("{dir}/{HOSTS_FILE}");
        match original.get(&path) {
            Some(Node::File(bytes)) => Some((path, String::from_utf8_lossy(bytes).into_owned())),
            _ => None,
        }
    };
    let write = |desired: &mut BTreeMap<String, Want>,
                 dir: &str,
                 server: Server,
                 keep_own: bool,
                 copy_other: bool|
     -> Result<(), PlanError> {
        desired.insert(dir.to_string(), Want::Dir);
        if copy_other {
            copy_back_dir(desired, dir, true);
        }
        let own = if keep_own { own_hosts(dir) } else { None };
        let text = render_hosts_toml(
            &server,
            &options.hosts,
            own.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
        )?;
        // A file with credentials is readable by its owner only.
        let mode = if text.to_ascii_lowercase().contains("authorization") {
            SECRET_MODE
        } else {
            FILE_MODE
        };
        desired.insert(
            format!("{dir}/{HOSTS_FILE}"),
            Want::Write(text.into_bytes(), mode),
        );
        Ok(())
    };

    if all {
        let prepend = options.prepend_existing;
        write(&mut desired, DEFAULT_DIR, Server::None, prepend, prepend)?;
        for dir in original_dirs.iter().filter(|d| **d != DEFAULT_DIR) {
            write(
                &mut desired,
                dir,
                Server::ExistingOr(server_for("https", dir)),
                true,
                true,
            )?;
        }
    } else {
        let prepend = options.prepend_existing;
        for registry in &options.registries {
            if desired.contains_key(&registry.dir) {
                continue;
            }
            write(
                &mut desired,
                &registry.dir,
                Server::Given(registry.server.clone()),
                prepend,
                prepend,
            )?;
        }
    }
    if options.prepend_existing {
        // Everything else that existed stays as it was.
        for name in original.top_level() {
            if desired.contains_key(name) {
                continue;
            }
            match original.get(name) {
                Some(Node::Dir) => {
                    desired.insert(name.to_string(), Want::Dir);
                    copy_back_dir(&mut desired, name, false);
                }
                Some(_) => {
                    desired.insert(name.to_string(), Want::CopyBack);
                }
                None => {}
            }
        }
    }
    Ok(desired)
}

/// The `cleanup` plan: remove speil's entries (as [`plan_configuration`] defines them) and
/// move the backup back; entries that are not speil's stay. The backup directory is renamed
/// before it is removed, so a `_backup` never lacks its record once speil made one. Only
/// leftovers of interrupted runs are removed when there is no backup (nothing was
/// configured, or cleanup ran already).
pub fn plan_cleanup(current: &Tree) -> Result<Vec<FileOp>, PlanError> {
    let Scan {
        backup,
        mut ops,
        top,
    } = scan(current)?;
    let Some(b) = backup else {
        return Ok(ops);
    };
    if b.legacy {
        ops.push(b.state.write(BACKUP_DIR));
    }
    for name in &top {
        if b.state.is_speils(name, &b.names) {
            ops.push(FileOp::Remove { path: name.clone() });
        } else if b.names.contains(name) {
            return Err(PlanError::Tree(TreeError::Conflict(name.clone())));
        }
    }
    for name in &b.names {
        ops.push(FileOp::Rename {
            from: format!("{BACKUP_DIR}/{name}"),
            to: name.clone(),
        });
    }
    ops.push(FileOp::Rename {
        from: BACKUP_DIR.to_string(),
        to: OLD_BACKUP_DIR.to_string(),
    });
    ops.push(FileOp::Remove {
        path: OLD_BACKUP_DIR.to_string(),
    });
    Ok(ops)
}

/// A plan that cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Bad input or an unreadable existing `hosts.toml`.
    #[error(transparent)]
    Hosts(#[from] HostsError),
    /// The directory is not in a state the plan can work from.
    #[error(transparent)]
    Tree(#[from] TreeError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(targets: &[&str], resolve: bool) -> HostsConfig {
        HostsConfig {
            targets: targets
                .iter()
                .map(|t| parse_mirror_target(t).unwrap())
                .collect(),
            resolve_tags: resolve,
            basic_auth: None,
        }
    }

    #[test]
    fn renders_spec_example() {
        let r = Registry::parse("https://docker.io").unwrap();
        assert_eq!(r.dir, "docker.io");
        let out = render_hosts_toml(
            &Server::Given(r.server),
            &cfg(&["http://192.0.2.5:30020"], true),
            None,
        )
        .unwrap();
        assert_eq!(
            out,
            "server = 'https://registry-1.docker.io'\n\n[host.'http://192.0.2.5:30020']\ncapabilities = ['pull', 'resolve']\ndial_timeout = '200ms'\n"
        );
    }

    #[test]
    fn default_has_no_server_and_pull_only() {
        let out = render_hosts_toml(
            &Server::None,
            &cfg(&["192.0.2.5:30020", "https://b:1"], false),
            None,
        )
        .unwrap();
        assert_eq!(
            out,
            "[host.'http://192.0.2.5:30020']\ncapabilities = ['pull']\ndial_timeout = '200ms'\n\n[host.'https://b:1']\ncapabilities = ['pull']\ndial_timeout = '200ms'\n"
        );
    }

    #[test]
    fn basic_auth_header() {
        let mut c = cfg(&["http://a:1"], true);
        c.basic_auth = Some(BasicAuth::new("user", "pass").unwrap());
        let out = render_hosts_toml(&Server::None, &c, None).unwrap();
        assert!(
            out.contains("\n[host.'http://a:1'.header]\nAuthorization = 'Basic dXNlcjpwYXNz'\n")
        );
        let t: toml::Table = out.parse().unwrap();
        assert_eq!(
            t["host"]["http://a:1"]["header"]["Authorization"].as_str(),
            Some("Basic dXNlcjpwYXNz")
        );
        assert!(BasicAuth::new("a:b", "x").is_err());
    }

    #[test]
    fn existing_hosts_come_after() {
        let existing = "server = \"https://ghcr.io\"\nca = \"/etc/ca.crt\"\n\n[host.\"https://m.example\"]\n  capabilities = [\"pull\"]\n";
        let out = render_hosts_toml(
            &Server::Given("https://ghcr.io".into()),
            &cfg(&["http://a:1"], true),
            Some(("ghcr.io/hosts.toml", existing)),
        )
        .unwrap();
        assert_eq!(
            out,
            "server = 'https://ghcr.io'\nca = \"/etc/ca.crt\"\n\n[host.'http://a:1']\ncapabilities = ['pull', 'resolve']\ndial_timeout = '200ms'\n\n[host.\"https://m.example\"]\n  capabilities = [\"pull\"]\n"
        );
        let t: toml::Table = out.parse().unwrap();
        assert_eq!(t["ca"].as_str(), Some("/etc/ca.crt"));
        let bad = render_hosts_toml(&Server::None, &cfg(&["a:1"], true), Some(("x", "[")));
        assert!(matches!(bad, Err(HostsError::ExistingInvalid { .. })));
    }

    #[test]
    fn existing_entry_for_a_speil_target_is_not_duplicated() {
        let existing = "server = 'https://x'\n[host.'http://a:1']\ncapabilities = ['pull']\n[host.'https://other']\n";
        let out = render_hosts_toml(
            &Server::None,
            &cfg(&["http://a:1"], true),
            Some(("x/hosts.toml", existing)),
        )
        .unwrap();
        let t: toml::Table = out.parse().unwrap();
        assert_eq!(t["server"].as_str(), Some("https://x"));
        let hosts = t["host"].as_table().unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(
            hosts["http://a:1"]["capabilities"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn registry_and_target_validation() {
        assert_eq!(
            Registry::parse("ghcr.io").unwrap().server,
            "https://ghcr.io"
        );
        assert_eq!(
            Registry::parse("http://localhost:5000/").unwrap().dir,
            "localhost:5000"
        );
        for bad in [
            "ftp://x",
            "https://a/b",
            "",
            "https://a:99999",
            "https://u@a",
        ] {
            assert!(Registry::parse(bad).is_err(), "{bad}");
        }
        for bad in ["", "http://a'b", "ftp://a", "http://", "a b"] {
            assert!(parse_mirror_target(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_mirror_target("[::1]:5000").unwrap(),
            "http://[::1]:5000"
        );
    }

    #[test]
    fn ipv6_targets_are_bracketed() {
        for (input, want) in [
            ("http://2001:db8::5:30020", "http://[2001:db8::5]:30020"),
            ("fd00::5:30020", "http://[fd00::5]:30020"),
            ("https://[fd00::5]:443/v2", "https://[fd00::5]:443/v2"),
            ("[::1]", "http://[::1]"),
            ("http://[::1]:5000", "http://[::1]:5000"),
            ("2001:db8::1", "http://[2001:db8::1]"),
            ("192.0.2.5:30020", "http://192.0.2.5:30020"),
        ] {
            assert_eq!(parse_mirror_target(input).as_deref(), Ok(want), "{input}");
        }
        for bad in [
            "http://[::1",
            "http://[zz::1]:5",
            "http://[::1]x",
            "a:b:c",
            "http://::g:1",
            "[::1]:99999",
            "http://2001:db8::5:99999x",
        ] {
            let e = parse_mirror_target(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && !e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn ipv6_hosts_keep_their_order() {
        let existing = "server = \"https://ghcr.io\"\nca = \"/c.crt\"\n[host.\"https://z.example\"]\ncapabilities = [\"pull\"]\n[host.\"https://z.example\".header]\nx = [\"y\"]\n[host.\"https://a.example\"]\n";
        for targets in [
            ["fd00::5:30020", "192.0.2.5:30020"],
            ["192.0.2.5:30020", "fd00::5:30020"],
        ] {
            let mut c = cfg(&targets, true);
            c.basic_auth = Some(BasicAuth::new("user", "pass").unwrap());
            for ex in [None, Some(("ghcr.io/hosts.toml", existing))] {
                let out =
                    render_hosts_toml(&Server::ExistingOr("https://x".into()), &c, ex).unwrap();
                let t: toml::Table = out.parse().unwrap();
                let mut want = c.targets.clone();
                if ex.is_some() {
                    want.extend(["https://z.example".into(), "https://a.example".into()]);
                    assert_eq!(t["server"].as_str(), Some("https://ghcr.io"));
                    assert_eq!(t["ca"].as_str(), Some("/c.crt"));
                    assert_eq!(
                        t["host"]["https://z.example"]["header"]["x"][0].as_str(),
                        Some("y")
                    );
                } else {
                    assert_eq!(t["server"].as_str(), Some("https://x"));
                }
                assert_eq!(hosts_in_order(&out), Some(want), "{out}");
                for target in &c.targets {
                    assert_eq!(
                        t["host"][target.as_str()]["header"]["Authorization"].as_str(),
                        Some("Basic dXNlcjpwYXNz")
                    );
                    assert_eq!(
                        t["host"][target.as_str()]["capabilities"][1].as_str(),
                        Some("resolve")
                    );
                    assert_eq!(
                        t["host"][target.as_str()]["dial_timeout"].as_str(),
                        Some("200ms")
                    );
                }
            }
        }
        // Order comes from the text, not from the keys' sort order.
        let out = render_hosts_toml(
            &Server::None,
            &cfg(&["http://[::1]:2", "http://[::1]:1"], true),
            None,
        )
        .unwrap();
        assert_eq!(
            hosts_in_order(&out),
            Some(vec![
                "http://[::1]:2".to_string(),
                "http://[::1]:1".to_string()
            ])
        );
        assert!(!out.contains("server"));
    }

    #[test]
    fn missing_targets_is_an_error() {
        assert_eq!(
            render_hosts_toml(&Server::None, &cfg(&[], true), None),
            Err(HostsError::NoMirrorTargets)
        );
    }
}

//! The `configuration` / `cleanup` plan on in-memory trees.

use proptest::prelude::*;
use speil_core::hosts::{
    BasicAuth, ConfigurationOptions, FileOp, HostsConfig, Node, Registry, Tree, hosts_in_order,
    parse_mirror_target, plan_cleanup, plan_configuration,
};

fn hosts(targets: &[&str], resolve: bool) -> HostsConfig {
    HostsConfig {
        targets: targets
            .iter()
            .map(|t| parse_mirror_target(t).unwrap())
            .collect(),
        resolve_tags: resolve,
        basic_auth: None,
    }
}

fn options(registries: &[&str], prepend: bool) -> ConfigurationOptions {
    ConfigurationOptions {
        registries: registries
            .iter()
            .map(|r| Registry::parse(r).unwrap())
            .collect(),
        hosts: hosts(&["http://192.0.2.5:30020", "http://192.0.2.5:30021"], true),
        prepend_existing: prepend,
    }
}

fn run(tree: &Tree, opts: &ConfigurationOptions) -> Tree {
    let ops = plan_configuration(tree, opts).unwrap();
    let mut t = tree.clone();
    t.apply(&ops).unwrap();
    t
}

fn cleanup(tree: &Tree) -> Tree {
    let ops = plan_cleanup(tree).unwrap();
    let mut t = tree.clone();
    t.apply(&ops).unwrap();
    t
}

fn file<'a>(t: &'a Tree, p: &str) -> &'a str {
    match t.get(p) {
        Some(Node::File(b)) => std::str::from_utf8(b).unwrap(),
        other => panic!("{p}: {other:?}"),
    }
}

const GHCR_HOSTS: &str = "server = \"https://ghcr.io\"\nca = \"/etc/containerd/certs.d/ghcr.io/ca.crt\"\n\n[host.\"https://ghcr-mirror.example\"]\n  capabilities = [\"pull\"]\n";

fn existing() -> Tree {
    let mut t = Tree::new();
    t.insert("ghcr.io/hosts.toml", Node::File(GHCR_HOSTS.into()))
        .unwrap();
    t.insert("ghcr.io/ca.crt", Node::File(b"CERT".to_vec()))
        .unwrap();
    t.insert(
        "_default/hosts.toml",
        Node::File(b"[host.'https://old-default.example']\ncapabilities = ['pull']\n".to_vec()),
    )
    .unwrap();
    t.insert("notes.txt", Node::File(b"hello".to_vec()))
        .unwrap();
    t
}

#[test]
fn empty_dir_all_registries() {
    let t = run(&Tree::new(), &options(&[], false));
    assert_eq!(
        file(&t, "_default/hosts.toml"),
        "[host.'http://192.0.2.5:30020']\ncapabilities = ['pull', 'resolve']\ndial_timeout = '200ms'\n\n[host.'http://192.0.2.5:30021']\ncapabilities = ['pull', 'resolve']\ndial_timeout = '200ms'\n"
    );
    assert_eq!(t.get("_backup"), Some(&Node::Dir));
    assert_eq!(cleanup(&t), Tree::new());
}

#[test]
fn all_registries_keep_existing_registry_dirs() {
    let before = existing();
    let t = run(&before, &options(&[], false));
    // ghcr.io shadows _default in containerd: it is kept, mirrored, and keeps its CA.
    assert_eq!(file(&t, "ghcr.io/ca.crt"), "CERT");
    assert_eq!(
        file(&t, "ghcr.io/hosts.toml"),
        "server = \"https://ghcr.io\"\nca = \"/etc/containerd/certs.d/ghcr.io/ca.crt\"\n\n[host.'http://192.0.2.5:30020']\ncapabilities = ['pull', 'resolve']\ndial_timeout = '200ms'\n\n[host.'http://192.0.2.5:30021']\ncapabilities = ['pull', 'resolve']\ndial_timeout = '200ms'\n\n[host.\"https://ghcr-mirror.example\"]\n  capabilities = [\"pull\"]\n"
    );
    // Without --prepend-existing the old _default hosts are dropped.
    assert!(!file(&t, "_default/hosts.toml").contains("old-default"));
    assert!(t.get("notes.txt").is_none());
    assert_eq!(t.subtree("_backup").without(".speil-state"), before);
    assert_eq!(cleanup(&t), before);
}

#[test]
fn prepend_existing_keeps_old_hosts_after() {
    let before = existing();
    let t = run(&before, &options(&[], true));
    let d = file(&t, "_default/hosts.toml");
    let ours = d.find("192.0.2.5:30020").unwrap();
    let theirs = d.find("old-default").unwrap();
    assert!(ours < theirs);
    assert_eq!(file(&t, "notes.txt"), "hello");
    assert_eq!(cleanup(&t), before);
}

#[test]
fn specific_registries() {
    let before = existing();
    let t = run(&before, &options(&["https://docker.io", "ghcr.io"], false));
    assert!(
        file(&t, "docker.io/hosts.toml").starts_with("server = 'https://registry-1.docker.io'\n\n")
    );
    assert!(file(&t, "ghcr.io/hosts.toml").starts_with("server = 'https://ghcr.io'\n\n"));
    assert!(!file(&t, "ghcr.io/hosts.toml").contains("ghcr-mirror"));
    assert!(t.get("_default").is_none());
    assert!(t.get("ghcr.io/ca.crt").is_none());

    let t = run(&before, &options(&["https://docker.io", "ghcr.io"], true));
    let g = file(&t, "ghcr.io/hosts.toml");
    assert!(g.starts_with("server = 'https://ghcr.io'\nca = "));
    assert!(g.find("192.0.2.5").unwrap() < g.find("ghcr-mirror").unwrap());
    assert_eq!(file(&t, "ghcr.io/ca.crt"), "CERT");
    // Other registries' configuration stays.
    assert!(file(&t, "_default/hosts.toml").contains("old-default"));
    assert_eq!(cleanup(&t), before);
}

#[test]
fn restart_does_not_back_up_own_output() {
    let before = existing();
    let opts = options(&[], false);
    let once = run(&before, &opts);
    let ops = plan_configuration(&once, &opts).unwrap();
    assert_eq!(ops, Vec::<FileOp>::new());
    // Different options on restart rebuild from the backup, not from speil's files.
    let other = run(&once, &options(&["docker.io"], false));
    assert_eq!(other.subtree("_backup").without(".speil-state"), before);
    assert!(other.get("_default").is_none());
    assert_eq!(cleanup(&other), before);
}

#[test]
fn cleanup_without_backup_does_nothing() {
    let before = existing();
    assert!(plan_cleanup(&before).unwrap().is_empty());
}

#[test]
fn invalid_existing_hosts_is_an_error_not_a_panic() {
    let mut t = Tree::new();
    t.insert("ghcr.io/hosts.toml", Node::File(b"[oops".to_vec()))
        .unwrap();
    let err = plan_configuration(&t, &options(&[], false)).unwrap_err();
    assert!(err.to_string().contains("ghcr.io/hosts.toml"), "{err}");
}

#[test]
fn backup_that_is_a_file_is_an_error() {
    let mut t = Tree::new();
    t.insert("_backup", Node::File(Vec::new())).unwrap();
    assert!(plan_configuration(&t, &options(&[], false)).is_err());
    assert!(plan_cleanup(&t).is_err());
}

// ---- properties ----

const HOSTS_SAMPLES: &[&str] = &[
    "",
    "# nothing\n",
    "server = \"https://ghcr.io\"\n\n[host.\"https://m.example\"]\n  capabilities = [\"pull\"]\n",
    "[host.'http://a:1']\ncapabilities = ['pull']\n",
    "server = 'https://x.example'\nca = '/etc/ca.crt'\n",
    "skip_verify = true\n[host.\"https://b\"]\nskip_verify = false\n[host.\"https://b\".header]\nx = ['y']\n",
    "[host]\n[host.\"https://c\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
];

const NAMES: &[&str] = &[
    "docker.io",
    "ghcr.io",
    "_default",
    "registry.k8s.io",
    "localhost:5000",
    "notes.txt",
    "sub",
];

fn arb_entry() -> impl Strategy<Value = (String, Node, Option<u32>)> {
    let name = prop::sample::select(NAMES);
    let leaf = prop::sample::select(&["hosts.toml", "ca.crt", "client.key", "x"][..]);
    (
        name,
        prop::option::of(prop::sample::select(&["d", "e"][..])),
        leaf,
        0usize..HOSTS_SAMPLES.len(),
        prop::collection::vec(any::<u8>(), 0..16),
        any::<bool>(),
        prop::sample::select(&[0o644u32, 0o600, 0o755, 0o400][..]),
    )
        .prop_map(|(top, mid, leaf, sample, bytes, link, mode)| {
            let path = match mid {
                Some(m) => format!("{top}/{m}/{leaf}"),
                None => format!("{top}/{leaf}"),
            };
            let (node, mode) = if leaf == "hosts.toml" {
                (
                    Node::File(HOSTS_SAMPLES[sample].as_bytes().to_vec()),
                    Some(mode),
                )
            } else if link {
                (Node::Symlink(format!("/elsewhere/{}", bytes.len())), None)
            } else if leaf == "client.key" {
                (Node::File(bytes), Some(0o600))
            } else {
                (Node::File(bytes), Some(mode))
            };
            (path, node, mode)
        })
}

fn arb_tree() -> impl Strategy<Value = Tree> {
    (
        prop::collection::vec(arb_entry(), 0..8),
        prop::collection::vec(
            (
                prop::sample::select(NAMES),
                prop::collection::vec(any::<u8>(), 0..8),
            ),
            0..2,
        ),
    )
        .prop_map(|(entries, top_files)| {
            let mut t = Tree::new();
            for (path, node, mode) in entries {
                let _ = t.insert_with_mode(&path, node, mode);
            }
            for (name, bytes) in top_files {
                if t.get(name).is_none() {
                    let _ = t.insert(name, Node::File(bytes));
                }
            }
            t
        })
}

fn arb_options() -> impl Strategy<Value = ConfigurationOptions> {
    (
        prop::collection::vec(
            prop::sample::select(&["docker.io", "ghcr.io", "http://localhost:5000", "quay.io"][..]),
            0..3,
        ),
        any::<bool>(),
        any::<bool>(),
        0usize..3,
        any::<bool>(),
    )
        .prop_map(|(regs, prepend, resolve, targets, auth)| {
            let targets: &[&str] = match targets {
                0 => &["192.0.2.5:30020", "https://192.0.2.6:443"],
                1 => &["fd00::5:30020", "https://192.0.2.6:443"],
                _ => &["192.0.2.5:30020", "http://[2001:db8::6]:30020"],
            };
            let mut hosts = hosts(targets, resolve);
            if auth {
                hosts.basic_auth = Some(BasicAuth::new("user", "pass").unwrap());
            }
            ConfigurationOptions {
                registries: regs.iter().map(|r| Registry::parse(r).unwrap()).collect(),
                hosts,
                prepend_existing: prepend,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn configuration_then_cleanup_restores(tree in arb_tree(), opts in arb_options()) {
        let once = run(&tree, &opts);
        prop_assert_eq!(once.subtree("_backup").without(".speil-state"), tree.clone());
        // Every hosts.toml is valid TOML; the mirrored ones list speil's targets.
        for (path, node) in once.entries() {
            if path.ends_with("/hosts.toml") && !path.starts_with("_backup/") {
                let Node::File(bytes) = node else { panic!("{path}") };
                let text = std::str::from_utf8(bytes).unwrap();
                let parsed: Result<toml::Table, _> = text.parse();
                prop_assert!(parsed.is_ok(), "{}: {}", path, text);
            }
        }
        let mirrored: Vec<String> = if opts.registries.is_empty() {
            let mut dirs = vec!["_default".to_string()];
            dirs.extend(
                tree.top_level()
                    .into_iter()
                    .filter(|n| tree.get(n) == Some(&Node::Dir))
                    .map(str::to_string),
            );
            dirs
        } else {
            opts.registries.iter().map(|r| r.dir.clone()).collect()
        };
        for dir in mirrored {
            let text = file(&once, &format!("{dir}/hosts.toml"));
            // speil's mirror targets are the first hosts of every mirrored registry, in order.
            let order = hosts_in_order(text).unwrap();
            prop_assert_eq!(&order[..2], &opts.hosts.targets[..], "{}", text);
            // A file with credentials is the owner's only.
            let mode = once.mode(&format!("{dir}/hosts.toml"));
            if opts.hosts.basic_auth.is_some() {
                prop_assert_eq!(mode, Some(0o600));
            }
        }
        // Running again (an init container restart) changes nothing.
        let again = plan_configuration(&once, &opts).unwrap();
        prop_assert!(again.is_empty(), "{:?}", again);
        prop_assert_eq!(cleanup(&once), tree.clone());
        // And cleanup is idempotent too.
        let restored = cleanup(&once);
        prop_assert!(plan_cleanup(&restored).unwrap().is_empty());
    }

    #[test]
    fn reconfiguring_with_other_options_still_restores(
        tree in arb_tree(), a in arb_options(), b in arb_options()
    ) {
        let first = run(&tree, &a);
        let second = run(&first, &b);
        prop_assert_eq!(second.clone(), run(&tree, &b));
        prop_assert_eq!(cleanup(&second), tree);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_existing_hosts_never_panics(text in ".{0,120}", tomlish in "(server = \"[a-z:/.]{0,12}\"\n)?([a-z_]{1,8} = (true|'[a-z]{0,5}')\n){0,2}(\\[host\\.\"[a-z:/.]{1,12}\"\\]\n(capabilities = \\[\"pull\"\\]\n)?){0,3}") {
        use speil_core::hosts::{Server, render_hosts_toml};
        let cfg = hosts(&["http://192.0.2.5:30020"], true);
        for input in [&text, &tomlish] {
            if let Ok(out) = render_hosts_toml(&Server::ExistingOr("https://x".into()), &cfg, Some(("x/hosts.toml", input))) {
                // Valid input gives valid output with speil's host and everything the input had.
                let parsed: toml::Table = out.parse().unwrap();
                let original: toml::Table = input.parse().unwrap();
                for (k, v) in &original {
                    if k == "host" {
                        for (h, t) in v.as_table().unwrap() {
                            prop_assert_eq!(&parsed["host"][h], t);
                        }
                    } else {
                        prop_assert_eq!(&parsed[k], v);
                    }
                }
                prop_assert!(parsed["host"].get("http://192.0.2.5:30020").is_some());
            }
        }
    }
}

// ---- crash safety ----

fn try_run(tree: &Tree, opts: &ConfigurationOptions) -> Tree {
    let ops = plan_configuration(tree, opts).unwrap_or_else(|e| panic!("{e}: {tree:?}"));
    let mut t = tree.clone();
    t.apply(&ops)
        .unwrap_or_else(|e| panic!("{e}: {ops:?} on {tree:?}"));
    t
}

fn prefix(tree: &Tree, ops: &[FileOp], k: usize) -> Tree {
    let mut t = tree.clone();
    t.apply(&ops[..k]).unwrap();
    t
}

/// A starting point: the original tree, or one configured by a run with other options, in
/// today's format or in the format of earlier releases (a `_backup/` without a record).
fn arb_start() -> impl Strategy<Value = (Tree, Tree)> {
    (arb_tree(), arb_options(), 0u8..3).prop_map(|(original, earlier, how)| {
        let start = match how {
            0 => original.clone(),
            1 => run(&original, &earlier),
            _ => run(&original, &earlier).without("_backup/.speil-state"),
        };
        (original, start)
    })
}

fn added(t: &Tree) -> Tree {
    let mut t = t.clone();
    t.insert_with_mode(
        "added.example/hosts.toml",
        Node::File(b"server = 'https://added.example'\n".to_vec()),
        Some(0o640),
    )
    .unwrap();
    t.insert_with_mode(
        "added.example/client.key",
        Node::File(b"KEY".to_vec()),
        Some(0o600),
    )
    .unwrap();
    t
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A crash (or a failed operation: the model's operations are all or nothing, so a failed
    /// one is a crash before it) after any prefix of `configuration`, then a rerun, equals an
    /// uninterrupted run; `cleanup` after any prefix restores the original, also when the
    /// rerun or the cleanup is interrupted in turn.
    #[test]
    fn interrupted_configuration(start in arb_start(), opts in arb_options()) {
        let (original, start) = start;
        let ops = plan_configuration(&start, &opts).unwrap();
        let full = prefix(&start, &ops, ops.len());
        prop_assert_eq!(full.subtree("_backup").without(".speil-state"), original.clone());
        for k in 0..=ops.len() {
            let crashed = prefix(&start, &ops, k);
            prop_assert_eq!(&try_run(&crashed, &opts), &full, "crash after {} of {:?}", k, ops);
            prop_assert_eq!(&cleanup(&crashed), &original, "cleanup after {} of {:?}", k, ops);
            // The rerun crashes too.
            let again = plan_configuration(&crashed, &opts).unwrap();
            for j in (0..again.len()).step_by(3) {
                let twice = prefix(&crashed, &again, j);
                prop_assert_eq!(&try_run(&twice, &opts), &full);
                prop_assert_eq!(&cleanup(&twice), &original);
            }
        }
    }

    /// `cleanup` interrupted after any prefix: a rerun restores the original, and
    /// `configuration` (an init container runs again) equals an uninterrupted one.
    #[test]
    fn interrupted_cleanup(start in arb_start(), opts in arb_options()) {
        let (original, start) = start;
        let full = try_run(&start, &opts);
        for from in [&start, &full] {
            let ops = plan_cleanup(from).unwrap();
            for k in 0..=ops.len() {
                let crashed = prefix(from, &ops, k);
                prop_assert_eq!(&cleanup(&crashed), &original, "after {} of {:?}", k, ops);
                prop_assert_eq!(&try_run(&crashed, &opts), &full, "after {} of {:?}", k, ops);
            }
        }
    }

    /// A registry directory the operator adds after `configuration` is kept by the next
    /// `configuration` (and mirrored when all registries are) and by `cleanup`.
    #[test]
    fn added_directory_survives(start in arb_start(), opts in arb_options()) {
        let (original, start) = start;
        let full = try_run(&start, &opts);
        let with = added(&full);
        prop_assert_eq!(&cleanup(&with), &added(&original));
        let again = try_run(&with, &opts);
        prop_assert_eq!(again.subtree("_backup").without(".speil-state"), added(&original));
        prop_assert_eq!(try_run(&added(&original), &opts), again.clone());
        if opts.registries.is_empty() {
            let text = file(&again, "added.example/hosts.toml");
            prop_assert_eq!(&hosts_in_order(text).unwrap()[..2], &opts.hosts.targets[..]);
            prop_assert_eq!(again.mode("added.example/client.key"), Some(0o600));
        }
        prop_assert_eq!(&cleanup(&again), &added(&original));
    }
}

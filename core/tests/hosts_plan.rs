//! The `configuration` / `cleanup` plan on in-memory trees.

use proptest::prelude::*;
use speil_core::hosts::{
    ConfigurationOptions, FileOp, HostsConfig, Node, Registry, Tree, parse_mirror_target,
    plan_cleanup, plan_configuration,
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

fn arb_entry() -> impl Strategy<Value = (String, Node)> {
    let name = prop::sample::select(NAMES);
    let leaf = prop::sample::select(&["hosts.toml", "ca.crt", "client.key", "x"][..]);
    (
        name,
        prop::option::of(prop::sample::select(&["d", "e"][..])),
        leaf,
        0usize..HOSTS_SAMPLES.len(),
        prop::collection::vec(any::<u8>(), 0..16),
        any::<bool>(),
    )
        .prop_map(|(top, mid, leaf, sample, bytes, link)| {
            let path = match mid {
                Some(m) => format!("{top}/{m}/{leaf}"),
                None => format!("{top}/{leaf}"),
            };
            let node = if leaf == "hosts.toml" {
                Node::File(HOSTS_SAMPLES[sample].as_bytes().to_vec())
            } else if link {
                Node::Symlink(format!("/elsewhere/{}", bytes.len()))
            } else {
                Node::File(bytes)
            };
            (path, node)
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
            for (path, node) in entries {
                let _ = t.insert(&path, node);
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
    )
        .prop_map(|(regs, prepend, resolve)| ConfigurationOptions {
            registries: regs.iter().map(|r| Registry::parse(r).unwrap()).collect(),
            hosts: hosts(&["192.0.2.5:30020", "https://192.0.2.6:443"], resolve),
            prepend_existing: prepend,
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
            // speil's first mirror target is the first host of every mirrored registry.
            let want = "[host.'http://192.0.2.5:30020']";
            let first_host = text.find("[host").unwrap();
            prop_assert_eq!(text.get(first_host..first_host + want.len()), Some(want));
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

//! Reads containerd's registry configuration directory into a [`Tree`] and executes the
//! core's [`FileOp`] plans on it.
//!
//! Files are replaced atomically: the bytes go to a temporary file in the same directory,
//! which is fsynced and renamed over the target, and the directory is fsynced. containerd reads
//! `hosts.toml` on every pull, so it must never see a half-written one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use speil_core::hosts::{FileOp, Node, Tree, temp_name};

/// Files larger than this are not configuration; refuse rather than read them whole.
const MAX_FILE: u64 = 16 * 1024 * 1024;

/// Reads everything below `root` (which may not exist: an empty tree).
pub fn read_tree(root: &Path) -> Result<Tree> {
    let mut tree = Tree::new();
    match fs::symlink_metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{} is not a directory", root.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(tree),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", root.display())),
    }
    walk(root, "", &mut tree)?;
    Ok(tree)
}

fn walk(dir: &Path, rel: &str, tree: &mut Tree) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name
            .to_str()
            .with_context(|| format!("{}: file name is not UTF-8", entry.path().display()))?;
        let path = entry.path();
        let rel_path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let meta = fs::symlink_metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?;
        let kind = meta.file_type();
        let mode = Some(meta.permissions().mode() & 0o7777);
        if kind.is_dir() {
            tree.insert_with_mode(&rel_path, Node::Dir, mode)?;
            walk(&path, &rel_path, tree)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&path)
                .with_context(|| format!("cannot read link {}", path.display()))?;
            let target = target
                .to_str()
                .with_context(|| format!("{}: link target is not UTF-8", path.display()))?;
            tree.insert_with_mode(&rel_path, Node::Symlink(target.to_string()), None)?;
        } else if kind.is_file() {
            if meta.len() > MAX_FILE {
                bail!("{} is larger than {MAX_FILE} bytes", path.display());
            }
            let bytes =
                fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            tree.insert_with_mode(&rel_path, Node::File(bytes), mode)?;
        } else {
            bail!(
                "{} is neither a file, a directory nor a symbolic link",
                path.display()
            );
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Writes `bytes` to `path` atomically, with permission bits `mode`: the temporary file is
/// created with them (never wider), so the renamed file has them from its first byte.
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = parent_of(path);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("file name")?;
    let tmp = dir.join(temp_name(name));
    let _ = fs::remove_file(&tmp);
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(&tmp)?;
        // The umask may have narrowed the mode: set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    sync_dir(&dir)
}

/// Executes `ops` below `root` (created when missing).
pub fn execute(root: &Path, ops: &[FileOp]) -> Result<()> {
    fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    for op in ops {
        match op {
            FileOp::CreateDir { path } => {
                let p = root.join(path);
                match fs::create_dir(&p) {
                    Ok(()) => sync_dir(&parent_of(&p))?,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot create {}", p.display()));
                    }
                }
            }
            FileOp::Rename { from, to } => {
                let (f, t) = (root.join(from), root.join(to));
                if fs::symlink_metadata(&t).is_ok() {
                    bail!("cannot move {} to {}: it exists", f.display(), t.display());
                }
                fs::rename(&f, &t)
                    .with_context(|| format!("cannot move {} to {}", f.display(), t.display()))?;
                sync_dir(&parent_of(&f))?;
                sync_dir(&parent_of(&t))?;
            }
            FileOp::WriteFile {
                path,
                contents,
                mode,
            } => {
                atomic_write(&root.join(path), contents, *mode)?;
            }
            FileOp::Copy { from, to } => {
                let (f, t) = (root.join(from), root.join(to));
                let meta = fs::symlink_metadata(&f)
                    .with_context(|| format!("cannot stat {}", f.display()))?;
                if meta.file_type().is_symlink() {
                    let target = fs::read_link(&f)
                        .with_context(|| format!("cannot read link {}", f.display()))?;
                    if fs::symlink_metadata(&t).is_ok() {
                        fs::remove_file(&t)
                            .with_context(|| format!("cannot remove {}", t.display()))?;
                    }
                    std::os::unix::fs::symlink(&target, &t)
                        .with_context(|| format!("cannot create link {}", t.display()))?;
                    sync_dir(&parent_of(&t))?;
                } else {
                    let bytes =
                        fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?;
                    atomic_write(&t, &bytes, meta.permissions().mode() & 0o7777)?;
                }
            }
            FileOp::Remove { path } => {
                let p = root.join(path);
                let meta = fs::symlink_metadata(&p)
                    .with_context(|| format!("cannot stat {}", p.display()))?;
                if meta.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                }
                .with_context(|| format!("cannot remove {}", p.display()))?;
                sync_dir(&parent_of(&p))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use speil_core::hosts::{
        ConfigurationOptions, HostsConfig, Registry, plan_cleanup, plan_configuration,
    };

    fn options(regs: &[&str], prepend: bool) -> ConfigurationOptions {
        ConfigurationOptions {
            registries: regs.iter().map(|r| Registry::parse(r).unwrap()).collect(),
            hosts: HostsConfig {
                targets: vec!["http://127.0.0.1:30020".into()],
                resolve_tags: true,
                basic_auth: None,
            },
            prepend_existing: prepend,
        }
    }

    fn configure(root: &Path, opts: &ConfigurationOptions) {
        let tree = read_tree(root).unwrap();
        let ops = plan_configuration(&tree, opts).unwrap();
        execute(root, &ops).unwrap();
    }

    fn cleanup(root: &Path) {
        let tree = read_tree(root).unwrap();
        execute(root, &plan_cleanup(&tree).unwrap()).unwrap();
    }

    #[test]
    fn configuration_then_cleanup_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("certs.d");
        fs::create_dir_all(root.join("ghcr.io/sub")).unwrap();
        fs::write(
            root.join("ghcr.io/hosts.toml"),
            "server = \"https://ghcr.io\"\n[host.\"https://m\"]\n",
        )
        .unwrap();
        fs::write(root.join("ghcr.io/client.key"), b"KEY").unwrap();
        fs::set_permissions(
            root.join("ghcr.io/client.key"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        fs::write(root.join("ghcr.io/sub/x"), b"x").unwrap();
        std::os::unix::fs::symlink("/nowhere", root.join("link")).unwrap();
        let before = read_tree(&root).unwrap();

        for opts in [
            options(&[], false),
            options(&[], true),
            options(&["docker.io"], true),
        ] {
            configure(&root, &opts);
            let once = read_tree(&root).unwrap();
            assert_eq!(once.subtree("_backup").without(".speil-state"), before);
            // A copied key keeps its mode.
            if opts.registries.is_empty() {
                let mode = fs::metadata(root.join("ghcr.io/client.key"))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600);
                let hosts = fs::read_to_string(root.join("ghcr.io/hosts.toml")).unwrap();
                assert!(hosts.find("127.0.0.1:30020").unwrap() < hosts.find("https://m").unwrap());
            }
            // Twice equals once.
            configure(&root, &opts);
            assert_eq!(read_tree(&root).unwrap(), once);
            // No temporary file is left behind.
            assert!(!once.entries().any(|(p, _)| p.contains(".speil-tmp")));
            cleanup(&root);
            assert_eq!(read_tree(&root).unwrap(), before);
        }
    }

    #[test]
    fn missing_root_is_empty_and_created() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b");
        assert!(read_tree(&root).unwrap().is_empty());
        configure(&root, &options(&[], false));
        assert!(root.join("_default/hosts.toml").is_file());
        cleanup(&root);
        assert!(read_tree(&root).unwrap().is_empty());
    }

    #[test]
    fn root_that_is_a_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, b"").unwrap();
        assert!(read_tree(&f).is_err());
    }
}

//! `configuration` and `cleanup` killed (or failing) at every mutating system call, on disk:
//! the real `speil` binary runs under `strace -f -e inject=…:when=K` for K = 1, 2, … until the
//! fault no longer fires. After each interrupted run, a rerun of `configuration` must give the
//! tree an uninterrupted run gives, and `cleanup` must give back the original tree byte for
//! byte, with its modes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STRACE: &str = "/usr/bin/strace";
const TARGETS: &str = "http://127.0.0.21:30020,fd00::5:30020";

fn speil() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_speil"));
    for var in [
        "LOG_LEVEL",
        "CONTAINERD_REGISTRY_CONFIG_PATH",
        "MIRROR_TARGETS",
        "MIRRORED_REGISTRIES",
        "RESOLVE_TAGS",
        "PREPEND_EXISTING",
        "ADDR",
    ] {
        c.env_remove(var);
    }
    c
}

/// Every entry below `root`: path, kind and bytes (or link target), permission bits.
fn snapshot(root: &Path) -> Vec<(String, String, u32)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String, u32)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap().display().to_string();
                out.push((rel, format!("link {t}"), 0));
            } else if meta.is_dir() {
                out.push((rel, "dir".to_string(), mode));
                walk(base, &p, out);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.push((rel, String::from_utf8_lossy(&bytes).into_owned(), mode));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

fn write(root: &Path, rel: &str, bytes: &str, mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// CA files, a 0600 client key, a registry directory speil knows nothing about, a top-level
/// file and a link.
fn original(root: &Path) {
    write(
        root,
        "ghcr.io/hosts.toml",
        "server = \"https://ghcr.io\"\nca = \"ca.crt\"\n\n[host.\"https://ghcr-mirror.example\"]\n  capabilities = [\"pull\"]\n",
        0o644,
    );
    write(root, "ghcr.io/ca.crt", "CA", 0o644);
    write(root, "ghcr.io/client.key", "KEY", 0o600);
    write(
        root,
        "quay.io/hosts.toml",
        "server = 'https://quay.io'\n",
        0o640,
    );
    write(root, "weird.example/sub/data", "x", 0o600);
    write(root, "notes.txt", "hello", 0o644);
    std::os::unix::fs::symlink("/nowhere", root.join("link")).unwrap();
}

fn configure(root: &Path) -> std::process::Output {
    speil()
        .arg("configuration")
        .arg("--containerd-registry-config-path")
        .arg(root)
        .args(["--mirror-targets", TARGETS])
        .output()
        .unwrap()
}

fn copy(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {}", from.display());
}

/// Kills (by PID) what a test started, also when it fails.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The processes `pid` started (read from /proc).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// Runs `cmd` (speil cleanup, maybe under strace) until it exits or logs that it serves
/// /readyz; then ends it and everything it started, by PID. True when it reached serving.
fn run_cleanup(mut cmd: Command, log: &Path) -> bool {
    let err = std::fs::File::create(log).unwrap();
    let mut child = Started(cmd.stdout(Stdio::null()).stderr(err).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let served = loop {
        if std::fs::read_to_string(log).is_ok_and(|l| l.contains("serving /readyz")) {
            break true;
        }
        if child.0.try_wait().unwrap().is_some() {
            break false;
        }
        assert!(
            Instant::now() < deadline,
            "cleanup hangs: {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    if served {
        // Under strace, the speil process is strace's child: end it first.
        for pid in children(child.0.id()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
    drop(child);
    served
}

fn cleanup_cmd(root: &Path) -> Command {
    let mut c = speil();
    c.args(["cleanup", "--addr", "127.0.0.1:0"])
        .arg("--containerd-registry-config-path")
        .arg(root);
    c
}

fn cleanup(root: &Path, log: &Path) {
    assert!(
        run_cleanup(cleanup_cmd(root), log),
        "cleanup failed: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn strace_available() -> bool {
    if Path::new(STRACE).is_file() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{STRACE} is required for the crash tests (CI=true)");
    }
    eprintln!("!!!! SKIPPED: {STRACE} not found; the crash tests did not run !!!!");
    false
}

fn traced(syscalls: &str, action: &str, k: usize, trace: &Path, cmd: &Command) -> Command {
    let mut c = Command::new(STRACE);
    c.args(["-f", "-qq", "-o"])
        .arg(trace)
        .arg("-e")
        .arg(format!("trace={syscalls}"))
        .arg("-e")
        .arg(format!("inject={syscalls}:{action}:when={k}"))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => c.env(key, v),
            None => c.env_remove(key),
        };
    }
    c
}

fn injected(trace: &Path) -> bool {
    std::fs::read_to_string(trace)
        .is_ok_and(|t| t.contains("INJECTED") || t.contains("killed by SIGKILL"))
}

struct Fixture {
    dir: tempfile::TempDir,
    original: Vec<(String, String, u32)>,
    configured: Vec<(String, String, u32)>,
    /// The tree configured by an earlier release (a `_backup/` without speil's record).
    legacy: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("original");
    std::fs::create_dir(&base).unwrap();
    original(&base);
    let before = snapshot(&base);
    let reference = dir.path().join("reference");
    copy(&base, &reference);
    let out = configure(&reference);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let configured = snapshot(&reference);
    let hosts = std::fs::read_to_string(reference.join("ghcr.io/hosts.toml")).unwrap();
    assert!(
        hosts.starts_with(
            "server = \"https://ghcr.io\"\nca = \"ca.crt\"\n\n[host.'http://127.0.0.21:30020']\n"
        ),
        "{hosts}"
    );
    assert!(
        hosts.contains("\n[host.'http://[fd00::5]:30020']\n"),
        "{hosts}"
    );
    let legacy = dir.path().join("legacy");
    copy(&reference, &legacy);
    std::fs::remove_file(legacy.join("_backup/.speil-state")).unwrap();
    Fixture {
        dir,
        original: before,
        configured,
        legacy,
    }
}

/// Loops K over the `syscalls` of `command` (`configuration` or `cleanup`) started on a copy
/// of `start`, with `action` at the K-th call; checks both ways out of each interrupted state.
fn sweep(f: &Fixture, start: &Path, command: &str, syscalls: &str, action: &str) -> usize {
    let work = f.dir.path().join("work");
    let a = f.dir.path().join("a");
    let trace = f.dir.path().join("trace");
    let log = f.dir.path().join("log");
    for k in 1..500 {
        copy(start, &work);
        let cmd = if command == "configuration" {
            let mut c = speil();
            c.arg("configuration")
                .arg("--containerd-registry-config-path")
                .arg(&work)
                .args(["--mirror-targets", TARGETS]);
            c
        } else {
            cleanup_cmd(&work)
        };
        let mut t = traced(syscalls, action, k, &trace, &cmd);
        if command == "configuration" {
            let _ = t
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
        } else {
            run_cleanup(t, &log);
        }
        let fired = injected(&trace);
        let what = format!("{command} with {syscalls}:{action}:when={k}");
        // Way 1: configuration again, then cleanup.
        copy(&work, &a);
        let out = configure(&a);
        assert!(
            out.status.success(),
            "{what}: rerun failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(snapshot(&a), f.configured, "{what}: rerun");
        cleanup(&a, &log);
        assert_eq!(snapshot(&a), f.original, "{what}: cleanup after rerun");
        // Way 2: cleanup straight away.
        cleanup(&work, &log);
        assert_eq!(snapshot(&work), f.original, "{what}: cleanup");
        if !fired {
            eprintln!("{command} {syscalls} {action}: {} faulted runs", k - 1);
            return k;
        }
    }
    panic!("{command} {syscalls}: the fault still fires after 500 calls");
}

const FAMILIES: &[&str] = &[
    "rename,renameat,renameat2",
    "mkdir,mkdirat",
    "unlink,unlinkat,rmdir",
    "fsync,fdatasync",
];

#[test]
fn configuration_killed_or_failing_at_every_step() {
    if !strace_available() {
        return;
    }
    let f = fixture();
    let base = f.dir.path().join("original");
    for family in FAMILIES {
        for action in ["signal=SIGKILL", "error=EIO"] {
            let runs = sweep(&f, &base, "configuration", family, action);
            // Each family is used: the sweep saw at least one fault fire.
            assert!(runs > 1, "{family}: no call was faulted");
        }
    }
    sweep(&f, &base, "configuration", FAMILIES[0], "error=EBUSY");
    // From an earlier release's backup.
    for family in [FAMILIES[0], FAMILIES[3]] {
        sweep(&f, &f.legacy, "configuration", family, "signal=SIGKILL");
    }
}

#[test]
fn cleanup_killed_or_failing_at_every_step() {
    if !strace_available() {
        return;
    }
    let f = fixture();
    let configured = f.dir.path().join("reference");
    for family in FAMILIES {
        let runs = sweep(&f, &configured, "cleanup", family, "signal=SIGKILL");
        assert!(runs > 1, "{family}: no call was faulted");
    }
    sweep(&f, &configured, "cleanup", FAMILIES[0], "error=EIO");
    sweep(&f, &f.legacy, "cleanup", FAMILIES[0], "signal=SIGKILL");
}

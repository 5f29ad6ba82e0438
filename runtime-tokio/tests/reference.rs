//! `docs/configuration.md` is what the CLI definition renders: a flag added, renamed or given
//! another default without regenerating the page fails here.

use std::path::Path;
use std::process::Command;

const REGENERATE: &str = "cargo run -q -p speil -- configuration-reference > docs/configuration.md \
                          (or UPDATE_DOCS=1 cargo test -p speil --test reference)";

fn rendered() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_speil"))
        .arg("configuration-reference")
        .env_remove("LOG_LEVEL")
        .output()
        .expect("run speil");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn configuration_page_matches_the_cli() {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let want = rendered();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&page, &want).expect("write docs/configuration.md");
        return;
    }
    let have = std::fs::read_to_string(&page).unwrap_or_default();
    if have != want {
        let first = have
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(have.lines().count().min(want.lines().count()));
        panic!(
            "docs/configuration.md differs from the CLI definition, first at line {}:\n  page: {}\n  cli:  {}\nregenerate with: {REGENERATE}",
            first + 1,
            have.lines().nth(first).unwrap_or("(end of file)"),
            want.lines().nth(first).unwrap_or("(end of file)"),
        );
    }
}

/// Independent of the renderer: every `--flag` that `speil <command> --help` lists is on the
/// page, in that command's section.
#[test]
fn every_flag_in_help_is_on_the_page() {
    let page = rendered();
    for command in [
        "registry",
        "configuration",
        "cleanup",
        "cleanup-wait",
        "doctor",
        "version",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_speil"))
            .args([command, "--help"])
            .output()
            .expect("run speil");
        let help = String::from_utf8_lossy(&out.stdout);
        let section = page
            .split(&format!("## `speil {command}`\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no section for {command}"))
            .split("\n## ")
            .next()
            .unwrap_or("");
        for flag in help
            .split_whitespace()
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| {
                w.trim_end_matches([',', '=', '.'])
                    .split('=')
                    .next()
                    .unwrap_or(w)
            })
            .filter(|f| !["--help", "--version", "--log-level"].contains(f))
        {
            assert!(
                section.contains(&format!("| `{flag}` |")),
                "{flag} of `speil {command}` is not on the page"
            );
        }
    }
}

//! `docs/distributions.md` shows what `speil doctor` prints for each distribution's shipped
//! containerd configuration (`core/tests/fixtures/containerd-config/`). Each
//! `<!-- doctor: FILE ARGS -->` … `<!-- /doctor -->` block is the real output; this test fails
//! when one differs and rewrites them with `UPDATE_DOCS=1`.

use std::path::Path;
use std::process::Command;

use speil_tests::speil;

fn doctor_block(spec: &str, vendor_dir: &Path) -> String {
    let mut words = spec.split_whitespace();
    let file = words.next().expect("a fixture file");
    let mut cmd = Command::new(speil::binary().unwrap());
    cmd.current_dir(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures/containerd-config"),
    )
    .args(["doctor", "--containerd-config", file, "--os-release", ""]);
    let mut shown = vec![format!("--containerd-config {file}")];
    let mut vendor = String::new();
    for w in words {
        if let Some(v) = w.strip_prefix("--sys-vendor=") {
            vendor = v.to_owned();
        } else {
            cmd.arg(w);
        }
        shown.push(w.to_owned());
    }
    let vendor_file = vendor_dir.join(format!("vendor-{vendor}"));
    std::fs::write(&vendor_file, format!("{vendor}\n")).unwrap();
    if vendor.is_empty() {
        cmd.args(["--sys-vendor", ""]);
    } else {
        cmd.arg("--sys-vendor").arg(&vendor_file);
    }
    let out = cmd.output().unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "doctor {spec}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "```text\n$ speil doctor {}\n{}\n(exit code {})\n```\n",
        shown.join(" "),
        String::from_utf8_lossy(&out.stdout).trim_end(),
        out.status.code().unwrap()
    )
}

/// The page with every block replaced by what `doctor` prints now.
fn regenerate(page: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mut out = String::new();
    let mut rest = page;
    let open = "<!-- doctor: ";
    let close = "<!-- /doctor -->";
    while let Some(i) = rest.find(open) {
        let line_end = i + rest[i..].find("-->").expect("an open marker ends") + 3;
        let spec = rest[i + open.len()..line_end - 3].trim();
        let end = line_end + rest[line_end..].find(close).expect("every block is closed");
        out.push_str(&rest[..line_end]);
        out.push('\n');
        out.push_str(&doctor_block(spec, tmp.path()));
        out.push_str(close);
        rest = &rest[end + close.len()..];
    }
    out.push_str(rest);
    out
}

#[test]
fn distributions_page_shows_what_doctor_prints() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/distributions.md");
    let page = std::fs::read_to_string(&path).unwrap();
    let want = regenerate(&page);
    assert!(want.matches("```text").count() >= 15, "blocks missing");
    if std::env::var("UPDATE_DOCS").as_deref() == Ok("1") {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    assert!(
        page == want,
        "docs/distributions.md differs from what `speil doctor` prints; run \
         `UPDATE_DOCS=1 cargo test -p speil-tests --test docs_distributions` and review the diff"
    );
}

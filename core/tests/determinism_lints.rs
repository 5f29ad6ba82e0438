//! `core/clippy.toml` is what holds the core to its determinism contract (no clock reads, no
//! hash-map iteration): this test fails when one of its bans goes missing.

const CLIPPY_TOML: &str = include_str!("../clippy.toml");

fn banned(section: &str, path: &str) -> bool {
    let value: toml::Value = toml::from_str(CLIPPY_TOML).expect("clippy.toml parses");
    value
        .get(section)
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .any(|entry| entry.get("path").and_then(|p| p.as_str()) == Some(path))
}

#[test]
fn clock_reads_are_banned() {
    assert!(banned("disallowed-methods", "std::time::Instant::now"));
    assert!(banned("disallowed-methods", "std::time::SystemTime::now"));
    assert!(banned("disallowed-methods", "std::thread::sleep"));
}

#[test]
fn hash_maps_are_banned() {
    assert!(banned("disallowed-types", "std::collections::HashMap"));
    assert!(banned("disallowed-types", "std::collections::HashSet"));
}

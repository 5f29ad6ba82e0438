//! Records the compiler, the target and the commit (from `SPEIL_COMMIT`) for `speil version`.

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let version = Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_string());
    let commit = std::env::var("SPEIL_COMMIT")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SPEIL_RUSTC={version}");
    println!("cargo:rustc-env=SPEIL_TARGET={target}");
    println!("cargo:rustc-env=SPEIL_BUILD_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=SPEIL_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
}

//! `speil-smol`: the speil node on the smol runtime.
//!
//! The core and the HTTP, containerd and P2P adapters are runtime-neutral; this binary will
//! supply smol's executor, an async-io TCP transport for libp2p and an async-io unix-socket
//! channel for containerd. Until it does, it says so and fails rather than pretend to run.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "speil-smol: the smol runtime is not available in this build yet; use the `speil` binary (tokio)"
    );
    ExitCode::from(1)
}

//! `speil registry`: the node agent.

use std::process::ExitCode;

/// Runs the node agent.
pub async fn run(args: crate::cli::RegistryArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    eprintln!("speil registry: not available in this build yet");
    Ok(ExitCode::from(1))
}

//! `speil`: the node agent and its helper commands, on tokio.

use std::future::Future;
use std::process::ExitCode;

use speil_driver::tokio::Tokio;

/// Runs speil on a multi-threaded tokio runtime.
struct TokioLauncher;

impl speil_app::Launcher for TokioLauncher {
    type Runtime = Tokio;

    fn name(&self) -> &'static str {
        "tokio"
    }

    fn block_on<F, Fut>(self, main: F) -> std::io::Result<ExitCode>
    where
        F: FnOnce(Tokio) -> Fut,
        Fut: Future<Output = ExitCode> + 'static,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        Ok(runtime.block_on(main(Tokio)))
    }
}

fn main() -> ExitCode {
    speil_app::main(TokioLauncher)
}

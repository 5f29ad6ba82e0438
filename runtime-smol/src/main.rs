//! `speil-smol`: the node agent and its helper commands, on smol (async-executor and
//! async-io). The same program as `speil`: only the runtime differs.

use std::future::Future;
use std::process::ExitCode;

use speil_driver::smol::Smol;

/// Runs speil on a smol executor with one thread per core (at least two), plus the calling
/// thread.
struct SmolLauncher;

impl speil_app::Launcher for SmolLauncher {
    type Runtime = Smol;

    fn name(&self) -> &'static str {
        "smol"
    }

    fn block_on<F, Fut>(self, main: F) -> std::io::Result<ExitCode>
    where
        F: FnOnce(Smol) -> Fut,
        Fut: Future<Output = ExitCode> + 'static,
    {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let rt = Smol::new();
        let main = main(rt.clone());
        Ok(rt.block_on(threads, main))
    }
}

fn main() -> ExitCode {
    speil_app::main(SmolLauncher)
}

//! speil's command line, defined once: every command (`registry`, `configuration`, `cleanup`,
//! `cleanup-wait`, `doctor`, `version`) and the wiring of the node agent, generic over a
//! [`Runtime`] value.
//!
//! A binary is a [`Launcher`] — how to start its runtime and block on a future — and one call
//! to [`main`]. The tokio build (`speil`) and the smol build (`speil-smol`) differ in nothing
//! else: same flags, same output, same behaviour.

mod cli;
mod config_cmds;
mod fsplan;
mod logfmt;
mod probe;
mod process_metrics;
mod reference;
mod registry;
mod signal;

use std::future::Future;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use speil_driver::Runtime;

use crate::cli::{Cli, Command};

/// How a binary runs speil: its runtime and how to block on a future with it.
pub trait Launcher {
    /// The runtime.
    type Runtime: Runtime;

    /// The runtime's name (what `version` prints) without starting it.
    fn name(&self) -> &'static str;

    /// Starts the runtime and runs the future `main` makes with it to completion. An error
    /// is a runtime that could not start.
    fn block_on<F, Fut>(self, main: F) -> std::io::Result<ExitCode>
    where
        F: FnOnce(Self::Runtime) -> Fut,
        Fut: Future<Output = ExitCode> + 'static;
}

/// The program: parses the command line, sets up logging and runs the command on the
/// launcher's runtime.
pub fn main<L: Launcher>(launcher: L) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                | ErrorKind::MissingSubcommand => {
                    eprintln!(
                        "error: a command is required: registry, configuration, cleanup, cleanup-wait, doctor or version"
                    );
                    ExitCode::from(2)
                }
                _ => {
                    eprintln!("{}", cli::one_line_error(&e));
                    ExitCode::from(2)
                }
            };
        }
    };
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        // libp2p's own INFO lines are about what peers send (a record refused, a
        // connection denied): at INFO they would let any peer write the node's log, one line
        // per message. They show from DEBUG on.
        let level = cli.log_level;
        let libp2p = if level >= tracing::Level::DEBUG {
            level
        } else {
            level.min(tracing::Level::WARN)
        };
        tracing_subscriber::registry()
            .with(logfmt::FlatJson::new(logfmt::Stderr))
            .with(
                tracing_subscriber::filter::Targets::new()
                    .with_default(level)
                    .with_target("libp2p", libp2p)
                    .with_target("yamux", libp2p)
                    .with_target("multistream_select", libp2p),
            )
            .init();
    }
    let runtime_name = launcher.name();
    match cli.command {
        Command::ConfigurationReference => {
            print!("{}", reference::configuration_page());
            return ExitCode::SUCCESS;
        }
        Command::Version(args) => return config_cmds::version(args, runtime_name),
        _ => {}
    }
    let ran = launcher.block_on(move |rt| async move {
        let (name, result) = match cli.command {
            Command::Registry(a) => ("registry", registry::run(rt, *a).await),
            Command::Configuration(a) => ("configuration", config_cmds::configuration(rt, a).await),
            Command::Cleanup(a) => ("cleanup", config_cmds::cleanup(rt, a).await),
            Command::CleanupWait(a) => ("cleanup-wait", config_cmds::cleanup_wait(rt, a).await),
            Command::Doctor(a) => ("doctor", config_cmds::doctor(rt, a).await),
            Command::Version(a) => ("version", Ok(config_cmds::version(a, runtime_name))),
            Command::ConfigurationReference => ("configuration-reference", Ok(ExitCode::SUCCESS)),
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                // One line, as every other line on stderr: a JSON object (Spegel logs "exit
                // with error" the same way).
                tracing::error!(command = name, "speil {name}: {e:#}");
                ExitCode::from(1)
            }
        }
    });
    match ran {
        Ok(code) => code,
        Err(e) => {
            eprintln!("speil: cannot start the {runtime_name} runtime: {e}");
            ExitCode::from(1)
        }
    }
}

pub(crate) use speil_driver::within;

//! `speil`: the tokio build of the node agent and its helper commands.

mod cli;
mod config_cmds;
mod fsplan;
mod logfmt;
mod probe;
mod process_metrics;
mod reference;
mod registry;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
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
        tracing_subscriber::registry()
            .with(logfmt::FlatJson::new(logfmt::Stderr))
            .with(tracing_subscriber::filter::LevelFilter::from_level(
                cli.log_level,
            ))
            .init();
    }
    if let Command::ConfigurationReference = cli.command {
        print!("{}", reference::configuration_page());
        return ExitCode::SUCCESS;
    }
    if let Command::Version(args) = cli.command {
        return config_cmds::version(args);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("speil: cannot start the tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let (name, result) = runtime.block_on(async {
        match cli.command {
            Command::Registry(a) => ("registry", registry::run(*a).await),
            Command::Configuration(a) => ("configuration", config_cmds::configuration(a).await),
            Command::Cleanup(a) => ("cleanup", config_cmds::cleanup(a).await),
            Command::CleanupWait(a) => ("cleanup-wait", config_cmds::cleanup_wait(a).await),
            Command::Doctor(a) => ("doctor", config_cmds::doctor(a).await),
            Command::Version(a) => ("version", Ok(config_cmds::version(a))),
            Command::ConfigurationReference => ("configuration-reference", Ok(ExitCode::SUCCESS)),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line, as every other line on stderr: a JSON object (Spegel logs "exit with
            // error" the same way).
            tracing::error!(command = name, "speil {name}: {e:#}");
            ExitCode::from(1)
        }
    }
}

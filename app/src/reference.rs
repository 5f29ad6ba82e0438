//! `docs/configuration.md`, rendered from the clap definition in [`crate::cli`] so that the page
//! cannot drift from the flags: `speil configuration-reference > docs/configuration.md`
//! (a hidden command), checked by `runtime-tokio/tests/reference.rs`.

use std::fmt::Write as _;

use clap::{Arg, ArgAction, CommandFactory};

use crate::cli::Cli;

/// The whole page.
pub fn configuration_page() -> String {
    let cli = Cli::command();
    let mut out = String::new();
    out.push_str(
        "<!-- Generated from app/src/cli.rs: do not edit. Regenerate with\n     \
         cargo run -q -p speil -- configuration-reference > docs/configuration.md\n     \
         (or UPDATE_DOCS=1 cargo test -p speil --test reference). -->\n\n",
    );
    out.push_str("# Configuration reference\n\n");
    out.push_str(
        "Every flag of every `speil` command, with its environment variable and default. \
         Flag names, environment variables and defaults are Spegel's wherever Spegel has the \
         flag.\n\n\
         - Every flag can also be set from the environment variable named in its row: the flag \
         in capitals with `-` turned into `_`. A flag on the command line wins over the \
         environment.\n\
         - Lists take several values after the flag, the flag repeated, or (on the command line \
         and in the environment) values separated by commas, except where the row says commas \
         are part of a value.\n\
         - Booleans: `--flag` alone means `true`; `--flag=false` turns it off.\n\
         - Durations are written as Go writes them: `20ms`, `2s`, `1m30s`, `1.5h`.\n\
         - Listen addresses are `[host]:port`: `:5000` is every interface, `127.0.0.1:5000` or \
         `[::1]:5000` one address.\n\
         - Bad flags, unknown values and missing required flags exit 2 with one line naming the \
         flag; a failure at start-up exits 1 with one log line saying what is wrong.\n\n",
    );
    let globals: Vec<&Arg> = cli
        .get_arguments()
        .filter(|a| a.is_global_set() && !a.is_hide_set())
        .collect();
    out.push_str("## Every command\n\n");
    table(&mut out, &globals);
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let _ = writeln!(out, "## `speil {}`\n", sub.get_name());
        if let Some(about) = sub.get_about() {
            let about = about.to_string();
            let about = about.trim().trim_end_matches('.');
            let _ = writeln!(out, "{about}.\n");
        }
        let args: Vec<&Arg> = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && a.get_long().is_some() && !a.is_global_set())
            .filter(|a| !matches!(a.get_action(), ArgAction::Help | ArgAction::Version))
            .collect();
        if args.is_empty() {
            out.push_str("No flags but the global ones.\n\n");
        } else {
            table(&mut out, &args);
        }
    }
    // One newline at the end of the file.
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

fn table(out: &mut String, args: &[&Arg]) {
    out.push_str("| flag | environment | default | meaning |\n| --- | --- | --- | --- |\n");
    for a in args {
        let flag = format!("`--{}`", a.get_long().unwrap_or(a.get_id().as_str()));
        let env = a
            .get_env()
            .map_or("—".to_owned(), |e| format!("`{}`", e.to_string_lossy()));
        let defaults: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = if a.is_required_set() {
            "required".to_owned()
        } else if defaults.is_empty() {
            "—".to_owned()
        } else if defaults.iter().all(String::is_empty) {
            "empty".to_owned()
        } else {
            defaults
                .iter()
                .map(|d| format!("`{d}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "| {flag} | {env} | {default} | {} |",
            cell(&meaning(a))
        );
    }
    out.push('\n');
}

/// The help text, then what values the flag takes.
fn meaning(a: &Arg) -> String {
    let mut text = a
        .get_long_help()
        .or(a.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let values: Vec<String> = a
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| format!("`{}`", v.get_name()))
        .collect();
    if !text.is_empty() && !text.ends_with('.') {
        text.push('.');
    }
    let mut values = values;
    if a.get_id() == "distribution" {
        values.push("`auto`".to_owned());
        values.extend(
            speil_core::containerd_config::ALL
                .iter()
                .map(|d| format!("`{}`", d.id())),
        );
    }
    let boolean = values.len() == 2 && values.contains(&"`true`".to_owned());
    if !values.is_empty() && !boolean {
        let _ = write!(text, " One of {}.", values.join(", "));
    }
    let many = a.get_num_args().is_some_and(|n| n.max_values() > 1);
    if many {
        if a.get_value_delimiter().is_some() {
            text.push_str(" A list.");
        } else {
            text.push_str(" A list; commas are part of a value (repeat the flag instead).");
        }
    }
    text
}

/// Text safe inside a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_of_every_command_is_on_the_page() {
        let page = configuration_page();
        for sub in Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
        {
            assert!(page.contains(&format!("## `speil {}`", sub.get_name())));
            for a in sub.get_arguments().filter_map(|a| a.get_long()) {
                if a == "help" {
                    continue;
                }
                assert!(page.contains(&format!("| `--{a}` |")), "--{a}");
            }
        }
        assert!(page.contains("| `--log-level` | `LOG_LEVEL` | `INFO` |"));
        assert!(page.contains("| `--bootstrap-kind` | `BOOTSTRAP_KIND` | required |"));
        assert!(!page.contains("configuration-reference`"));
        assert!(page.ends_with(".\n") || page.ends_with("|\n"));
    }
}

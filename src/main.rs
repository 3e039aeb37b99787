//! The `dive` command line: parses arguments, runs the command, maps outcomes to exit codes.

/// A line for the operator on stderr: plain text, or with `--log-format json` an info log line,
/// so that stderr stays one JSON object per line.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::output::note(format!($($arg)*))
    };
}

mod cli;
mod commands;
mod config;
mod database;
mod output;
mod progress;
mod services;
mod workflows;

use clap::Parser;
use dive_engine::{EngineError, InvalidWorkflow};
use std::fmt;
use std::process::ExitCode;

/// Input the operator can fix (exit code 2).
#[derive(Debug)]
pub struct InvalidInput(pub String);

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidInput {}

/// Exit codes of the CLI contract.
pub mod exit {
    pub const OK: u8 = 0;
    pub const RUN_FAILED: u8 = 1;
    pub const INVALID: u8 = 2;
    pub const LOCKED: u8 = 3;
    /// `--dry-run`: the plan has changes (0: nothing would change).
    pub const CHANGES: u8 = 4;
}

fn exit_code_for(err: &anyhow::Error) -> u8 {
    if let Some(e) = err.downcast_ref::<EngineError>() {
        if matches!(e, EngineError::LockHeld { .. }) {
            return exit::LOCKED;
        }
        if e.is_invalid_input() {
            return exit::INVALID;
        }
    }
    if err.is::<InvalidInput>() || err.is::<InvalidWorkflow>() {
        return exit::INVALID;
    }
    exit::RUN_FAILED
}

/// Text logs (errors, the CLI's own info lines such as `dive serve`'s, and the steps of the
/// one-time Keycloak build, by default: the progress view speaks for runs), or JSON lines at info and above in place of the progress
/// view. RUST_LOG overrides the levels either way.
fn init_logging(format: cli::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let json = format == cli::LogFormat::Json;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(if json {
            "info"
        } else {
            // Targets match by string prefix: `dive::` is this binary's modules only.
            "error,dive::commands=info,dive_runtime::keycloak_dist=info"
        })
    });
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if json {
        output::set_json_logs();
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init();
    } else {
        use std::io::IsTerminal;
        builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init();
    }
}

/// Like other command-line tools, end quietly when stdout is a closed pipe (`| head`). Not by
/// restoring SIGPIPE's default: that signal also comes from a socket whose peer reset the
/// connection (a Keycloak behind a partition), and it would kill a run in the middle — found by
/// the chaos suite. SIGPIPE stays ignored, so a reset is an error of that connection, and a
/// print to a closed stdout, which panics with "Broken pipe", exits 0 here instead.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::INVALID
            } else {
                exit::OK
            });
        }
    };
    init_logging(cli.log_format);
    dive_phases::register();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::RUN_FAILED);
        }
    };
    let result = config::init().and_then(|()| {
        runtime.block_on(async {
            let result = commands::dispatch(cli.command).await;
            // Whatever ended the command, a dry run's scratch or started cluster goes.
            database::close_plan().await;
            result
        })
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            if output::json_logs() {
                tracing::error!(error = format!("{err:#}"), "command failed");
            } else {
                eprintln!("error: {err:#}");
            }
            ExitCode::from(exit_code_for(&err))
        }
    }
}

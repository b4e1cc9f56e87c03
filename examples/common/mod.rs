//! What the examples share: their `main`, which answers `--help` with the usage, refuses
//! extra arguments, and reports an error by its message.

use std::process::ExitCode;

/// Runs `run` unless the command line asks for help or has more than `max_args` arguments,
/// printing `usage` then; an error is printed as `error: <message>`.
pub fn main<E: std::fmt::Display>(
    usage: &str,
    max_args: usize,
    run: impl FnOnce() -> Result<(), E>,
) -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let help = args.iter().any(|a| a == "-h" || a == "--help");
    if help || args.len() > max_args {
        eprintln!("usage: {usage}");
        return match help {
            true => ExitCode::SUCCESS,
            false => ExitCode::FAILURE,
        };
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

//! The `moxe` command-line tool. See `moxe --help`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Probing EGL displays logs harmless errors on headless machines; keep them out.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,wgpu_hal::gles::egl=off"),
    )
    .format_timestamp(None)
    .init();
    // Before any thread or Vulkan instance exists.
    moxe::context::skip_mesa_device_select();
    let args = cli::Cli::parse();
    #[cfg(unix)]
    end_quietly_on_a_closed_pipe(&args.command);
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Commands that write to a terminal or a pipe end quietly when the reader goes away (`moxe
/// info | head`), as Unix tools do, instead of panicking on the failed write: SIGPIPE gets
/// its default action back. The server and its benchmark keep it ignored (Rust's default),
/// so a client that hangs up is an error on its own socket, not the end of the process.
#[cfg(unix)]
fn end_quietly_on_a_closed_pipe(command: &cli::Command) {
    let sockets = match command {
        cli::Command::Serve(_) => true,
        cli::Command::Bench(b) => matches!(b.what, Some(cli::bench::BenchWhat::Serve { .. })),
        _ => false,
    };
    if !sockets {
        // SAFETY: called before any thread exists; it only resets one signal's disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
}

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
    report_failed_writes_to_stdout();
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
/// so a client that hangs up is an error on its own socket, not the end of the process;
/// so does `generate --save-session`, which stops generating and still saves the session.
#[cfg(unix)]
fn end_quietly_on_a_closed_pipe(command: &cli::Command) {
    let handled = match command {
        cli::Command::Serve(_) => true,
        cli::Command::Bench(b) => matches!(b.what, Some(cli::bench::BenchWhat::Serve { .. })),
        cli::Command::Generate(g) => g.save_session.is_some(),
        _ => false,
    };
    if !handled {
        // SAFETY: called before any thread exists; it only resets one signal's disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
}

/// A failed write to standard output (`moxe info > /dev/full`, a terminal gone) ends the
/// command with an error naming it, not a panic: `print!` panics when a write fails, so this
/// hook turns that one panic into a message and exit code 1 (and a failed write to standard
/// error into exit code 1 alone: nothing can be said). Every other panic keeps the default
/// report.
fn report_failed_writes_to_stdout() {
    const PREFIX: &str = "failed printing to stdout: ";
    const STDERR: &str = "failed printing to stderr: ";
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        if message.is_some_and(|m| m.starts_with(STDERR)) {
            std::process::exit(1);
        }
        match message.and_then(|m| m.strip_prefix(PREFIX)) {
            Some(reason) => {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "error: cannot write to standard output: {reason}"
                );
                std::process::exit(1);
            }
            None => default(info),
        }
    }));
}

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
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

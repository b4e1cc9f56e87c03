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
    // Mesa's implicit Vulkan layer VK_LAYER_MESA_device_select connects to the Wayland or X
    // display while listing GPUs, and on a machine without one libwayland prints "error:
    // XDG_RUNTIME_DIR is invalid or not set" to stderr. The engine chooses its adapter
    // itself, so the layer is skipped unless the user set NODEVICE_SELECT. Set before any
    // thread or Vulkan instance exists.
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

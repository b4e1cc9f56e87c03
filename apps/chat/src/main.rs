//! `moxe-chat`: a desktop chat on the moxe engine. The window's wgpu renderer (eframe) creates
//! the device, asking for what the engine uses (`moxe::context::device_descriptor`); the
//! engine runs on that same device and queue (`Context::from_device`) on its own thread, so
//! its steps and the UI's frames interleave on one queue.
//!
//!     cargo run --release -p moxe-chat [-- --model DIR]
//!
//! Headless check (e.g. under Xvfb): generate at once, save a screenshot after the last
//! token, print the frames drawn during generation and the 95th-percentile frame time, exit:
//!
//!     cargo run --release -p moxe-chat -- --prompt "Once upon a time" --max-tokens 64 \
//!         --screenshot chat.png

mod app;
mod frames;
mod router_view;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;
use eframe::egui_wgpu::{WgpuConfiguration, WgpuSetup, WgpuSetupCreateNew};
use eframe::{egui, wgpu};

#[derive(Debug, Parser)]
#[command(name = "moxe-chat", about = "A desktop chat on the moxe engine")]
struct Args {
    /// Model directory (default: the bundled model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Start generating this prompt at once (with --screenshot: the headless check).
    #[arg(long)]
    prompt: Option<String>,
    /// Tokens to generate for --prompt.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Save a PNG of the window after the last token, print the frame statistics and exit.
    #[arg(long, requires = "prompt")]
    screenshot: Option<PathBuf>,
}

fn main() -> ExitCode {
    moxe::context::skip_mesa_device_select();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,winit=error"))
        .init();
    let args = Args::parse();
    report_a_lost_display();
    let model_dir = args
        .model
        .clone()
        .unwrap_or_else(moxe::checkpoint::default_model_dir);
    if let Some(path) = &args.screenshot {
        // Before any work: the file is created only at the end, and never over another
        // (`frames::save_png` creates it exclusively); a dangling link counts as taken.
        if path.symlink_metadata().is_ok() {
            eprintln!(
                "error: {} exists: choose another --screenshot file (nothing is overwritten)",
                path.display()
            );
            return ExitCode::FAILURE;
        }
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if parent.is_some_and(|p| !p.is_dir()) {
            eprintln!(
                "error: {}: the directory of the --screenshot file does not exist",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    }
    // The engine's MOXE_BACKEND and MOXE_ADAPTER, read as every moxe command reads them.
    let engine = match moxe::ContextOptions::from_env() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = Arc::new(Mutex::new(None));
    let auto = args.prompt.as_ref().map(|prompt| app::Auto {
        prompt: prompt.clone(),
        max_tokens: args.max_tokens,
        screenshot: args.screenshot.clone(),
        outcome: outcome.clone(),
    });
    // The engine's backend choice (OpenGL only where nothing else exists: probing it prints
    // windowing errors) and instance flags; MOXE_BACKEND, else WGPU_BACKEND, chooses.
    let mut setup = WgpuSetupCreateNew::without_display_handle();
    let backends = match engine.backend {
        moxe::Backend::Auto => {
            wgpu::Backends::from_env().unwrap_or_else(moxe::context::auto_backends)
        }
        chosen => chosen.backends(),
    };
    setup.instance_descriptor.backends = backends;
    setup.instance_descriptor.flags = moxe::context::instance_flags(backends);
    if let Some(selector) = engine.adapter {
        let backend = engine.backend;
        setup.native_adapter_selector = Some(Arc::new(move |adapters, _surface| {
            moxe::context::pick(adapters.to_vec(), backend, Some(&selector))
                .map_err(|e| format!("MOXE_ADAPTER: {e}"))
        }));
    }
    let setup = WgpuSetupCreateNew {
        device_descriptor: Arc::new(|adapter: &wgpu::Adapter| wgpu::DeviceDescriptor {
            label: Some("moxe-chat"),
            ..moxe::context::device_descriptor(adapter)
        }),
        ..setup
    };
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("moxe chat")
            .with_inner_size([1120.0, 760.0]),
        renderer: eframe::Renderer::Wgpu,
        wgpu_options: WgpuConfiguration {
            wgpu_setup: WgpuSetup::CreateNew(setup),
            ..Default::default()
        },
        ..Default::default()
    };
    let result = eframe::run_native(
        "moxe chat",
        options,
        Box::new(move |cc| {
            let render = cc
                .wgpu_render_state
                .as_ref()
                .ok_or("the window has no wgpu renderer")?;
            let ctx = moxe::Context::from_device(render.device.clone(), render.queue.clone());
            let egui_ctx = cc.egui_ctx.clone();
            let worker = worker::Worker::start(ctx, move || egui_ctx.request_repaint());
            Ok(Box::new(app::ChatApp::new(worker, model_dir, auto)))
        }),
    );
    if let Err(e) = result {
        eprintln!("error: the window could not run: {e}");
        return ExitCode::FAILURE;
    }
    if args.screenshot.is_none() {
        return ExitCode::SUCCESS;
    }
    let outcome = outcome.lock().expect("outcome poisoned").take();
    match outcome {
        Some(Ok(report)) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        None => {
            eprintln!("error: the window closed before the generation finished");
            ExitCode::FAILURE
        }
    }
}

/// winit unwraps its X11 calls, so a display that goes away while the window runs (the X
/// server dies, `xkill`, an SSH forwarding drops) panics inside it: that panic becomes one
/// line and exit code 1. Every other panic keeps the default report.
fn report_a_lost_display() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_winit = info
            .location()
            .is_some_and(|l| l.file().contains("/winit-"));
        if in_winit && info.to_string().contains("Connection") {
            eprintln!("error: lost the connection to the display");
            std::process::exit(1);
        }
        default(info);
    }));
}

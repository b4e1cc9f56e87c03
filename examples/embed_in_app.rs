//! A host application that owns its GPU device shares it with the engine: it creates the
//! instance, adapter and device itself (as a desktop app would for its window), runs its own
//! compute work on it, and hands the same device and queue to moxe.
//!
//!     cargo run --release --example embed_in_app

mod common;

use std::sync::Arc;

use moxe::runtime::generate::GenerateOptions;
use moxe::runtime::{LoadOptions, Model, Session};
use moxe::{wgpu, Context};

fn run() -> Result<(), Box<dyn std::error::Error>> {
    // --- The application's own GPU setup (normally next to its window surface) ---
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("my app"),
        required_features: wgpu::Features::empty(),
        required_limits: adapter.limits(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::default(),
        trace: wgpu::Trace::Off,
    }))?;
    device.on_uncaptured_error(Arc::new(|e: wgpu::Error| eprintln!("app: GPU error: {e}")));

    // The app keeps using its device for its own work...
    let app_buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("app data"),
        size: 1024,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&app_buffer, 0, &[7u8; 1024]);

    // --- ...and lends it to the engine ---
    let ctx = Context::from_device(device.clone(), queue.clone());
    println!("engine on the app's device: {}", ctx.adapter_info().name);
    let model = Arc::new(Model::load(
        &ctx,
        &moxe::checkpoint::default_model_dir(),
        &LoadOptions::default(),
    )?);
    let mut session = Session::new(&model)?;
    let text: String = session
        .generate(
            "The king said",
            &GenerateOptions {
                max_tokens: 40,
                ..Default::default()
            },
        )?
        .map(|p| p.map(|p| p.text))
        .collect::<moxe::Result<_>>()?;
    println!("The king said{text}");

    // The app's resources are untouched and its device is still usable.
    queue.submit([]);
    device.poll(wgpu::PollType::wait_indefinitely())?;
    println!("app buffer still alive: {} bytes", app_buffer.size());
    Ok(())
}

fn main() -> std::process::ExitCode {
    common::main("cargo run --release --example embed_in_app", 0, run)
}

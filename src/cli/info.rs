//! `moxe info`: the adapters wgpu can see, and the one the engine would pick.

use moxe::context::{enumerate, report, select};
use moxe::Result;

use super::GpuArgs;

pub fn run(gpu: &GpuArgs) -> Result<()> {
    let adapters = enumerate(gpu.backend);
    if adapters.is_empty() {
        // `select` produces the explanatory error (with the driver install hint).
        select(gpu.backend, None)?;
    }
    println!(
        "{} adapter(s) for backend '{}':\n",
        adapters.len(),
        gpu.backend
    );
    for (i, adapter) in adapters.iter().enumerate() {
        println!("{}", report(i, adapter));
    }
    let chosen = select(gpu.backend, gpu.adapter.as_deref())?;
    println!("selected: {}", chosen.get_info().name);
    if gpu.backend == moxe::Backend::Auto && chosen.get_info().backend != moxe::wgpu::Backend::Gl {
        println!("(OpenGL adapters are probed only when no other exists: --backend gl lists them)");
    }
    Ok(())
}

//! Backend choice, adapter discovery and selection, and adapter reports for `moxe info`.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use crate::error::{Error, Result};

/// Which graphics API to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Vulkan, Metal or DX12 (whichever the platform has), falling back to OpenGL.
    #[default]
    Auto,
    Vulkan,
    Metal,
    Dx12,
    /// OpenGL / OpenGL ES (through EGL on Linux).
    Gl,
}

impl Backend {
    /// The wgpu backend set this choice searches first.
    pub fn backends(self) -> wgpu::Backends {
        match self {
            Backend::Auto => wgpu::Backends::PRIMARY,
            Backend::Vulkan => wgpu::Backends::VULKAN,
            Backend::Metal => wgpu::Backends::METAL,
            Backend::Dx12 => wgpu::Backends::DX12,
            Backend::Gl => wgpu::Backends::GL,
        }
    }

    /// Reads `MOXE_BACKEND`; unset or empty means [`Backend::Auto`].
    pub fn from_env() -> Result<Self> {
        match std::env::var("MOXE_BACKEND") {
            Ok(s) if !s.trim().is_empty() => s
                .parse()
                .map_err(|e| Error::InvalidArgument(format!("MOXE_BACKEND: {e}"))),
            _ => Ok(Backend::Auto),
        }
    }
}

impl FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Backend::Auto),
            "vulkan" | "vk" => Ok(Backend::Vulkan),
            "metal" | "mtl" => Ok(Backend::Metal),
            "dx12" | "d3d12" => Ok(Backend::Dx12),
            "gl" | "gles" | "opengl" => Ok(Backend::Gl),
            other => Err(Error::UnknownBackend(other.to_string())),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::Vulkan => "vulkan",
            Backend::Metal => "metal",
            Backend::Dx12 => "dx12",
            Backend::Gl => "gl",
        })
    }
}

/// Creates a wgpu instance for the given backends (no display handle: compute only).
///
/// wgpu's validation of indirect dispatch arguments is left off except on DX12: it adds a
/// compute pass per indirect dispatch (about 40% of a decode step on lavapipe), and the
/// engine's arguments are clamped to the device limits by the kernel that writes them
/// (`shaders/indirect_args.wgsl`). DX12 keeps it because there `num_workgroups` reads 0
/// in indirect dispatches without it. `WGPU_VALIDATION_INDIRECT_CALL=1` turns it back on.
pub(crate) fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    desc.flags = instance_flags(backends);
    wgpu::Instance::new(desc)
}

/// The instance flags the engine runs best with on `backends` (see [`instance`]): an
/// application that creates the instance for its window uses them too.
pub fn instance_flags(backends: wgpu::Backends) -> wgpu::InstanceFlags {
    let mut flags = wgpu::InstanceFlags::from_build_config();
    if !backends.contains(wgpu::Backends::DX12) {
        flags.remove(wgpu::InstanceFlags::VALIDATION_INDIRECT_CALL);
    }
    flags.with_env()
}

/// Mesa's implicit Vulkan layer VK_LAYER_MESA_device_select connects to the Wayland or X
/// display while listing GPUs, and where there is none libwayland prints "error:
/// XDG_RUNTIME_DIR is invalid or not set" to stderr. The engine chooses its adapter itself,
/// so programs skip the layer (unless the user set NODEVICE_SELECT) by calling this at the
/// start of `main`, before any thread or Vulkan instance exists: it sets an environment
/// variable, which is not safe while other threads read the environment.
pub fn skip_mesa_device_select() {
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

/// The backends `Auto` stands for on this machine: the primary ones, or OpenGL when they
/// have no adapter (probing OpenGL only then, see [`enumerate`]).
pub fn auto_backends() -> wgpu::Backends {
    match enumerate(Backend::Auto).first() {
        Some(a) if a.get_info().backend == wgpu::Backend::Gl => wgpu::Backends::GL,
        _ => wgpu::Backends::PRIMARY,
    }
}

/// Lists the adapters of `backend`, in the order wgpu reports them. `Auto` lists the
/// primary backends (Vulkan, Metal, DX12), and OpenGL only when they have none: probing
/// OpenGL goes through EGL and the windowing system, which on a machine without a display
/// prints errors of its own ("XDG_RUNTIME_DIR is invalid or not set").
pub fn enumerate(backend: Backend) -> Vec<wgpu::Adapter> {
    let list = |set: wgpu::Backends| pollster::block_on(instance(set).enumerate_adapters(set));
    match backend {
        Backend::Auto => {
            let primary = list(wgpu::Backends::PRIMARY);
            if primary.is_empty() {
                list(wgpu::Backends::GL)
            } else {
                primary
            }
        }
        _ => list(backend.backends()),
    }
}

/// The adapter `info` describes, as a fresh instance sees it: the same hardware through a
/// driver instance of its own. (lavapipe runs the devices of one instance's adapter one at
/// a time, on one executor; devices of separate instances run side by side.)
pub fn reopen(info: &wgpu::AdapterInfo) -> Result<wgpu::Adapter> {
    let set = wgpu::Backends::from(info.backend);
    let adapters = pollster::block_on(instance(set).enumerate_adapters(set));
    let names = list_names(&adapters);
    adapters
        .into_iter()
        .find(|a| a.get_info() == *info)
        .ok_or_else(|| Error::AdapterNotFound {
            selector: info.name.clone(),
            available: names,
        })
}

/// How much a device type is preferred when the user names no adapter.
fn preference(kind: wgpu::DeviceType) -> u8 {
    match kind {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// Picks an adapter: `selector` is an index into [`enumerate`]'s list or a case-insensitive
/// substring of the adapter name. Without a selector, the primary backends are preferred
/// over OpenGL, and discrete over integrated over software adapters.
pub fn select(backend: Backend, selector: Option<&str>) -> Result<wgpu::Adapter> {
    pick(enumerate(backend), backend, selector)
}

/// [`select`] among `adapters` (those of `backend`), for a host that enumerates them itself
/// (a window's renderer).
pub fn pick(
    adapters: Vec<wgpu::Adapter>,
    backend: Backend,
    selector: Option<&str>,
) -> Result<wgpu::Adapter> {
    if adapters.is_empty() {
        let hint = if cfg!(target_os = "linux") {
            ". On Linux without a GPU, install Mesa's software Vulkan driver: \
             `sudo apt-get install -y mesa-vulkan-drivers libvulkan1`"
        } else {
            ""
        };
        return Err(Error::NoAdapter {
            backend: backend.to_string(),
            hint: hint.to_string(),
        });
    }
    match selector.map(str::trim).filter(|s| !s.is_empty()) {
        Some(sel) => {
            let found = match sel.parse::<usize>() {
                Ok(i) => adapters.get(i).cloned(),
                Err(_) => {
                    let needle = sel.to_ascii_lowercase();
                    adapters
                        .iter()
                        .find(|a| a.get_info().name.to_ascii_lowercase().contains(&needle))
                        .cloned()
                }
            };
            found.ok_or_else(|| Error::AdapterNotFound {
                selector: sel.to_string(),
                available: list_names(&adapters),
            })
        }
        None => {
            // Stable sort keeps the backend order (primary before GL) within a class.
            let mut ranked: Vec<_> = adapters.into_iter().enumerate().collect();
            ranked.sort_by_key(|(i, a)| {
                let info = a.get_info();
                let gl = info.backend == wgpu::Backend::Gl;
                (gl, preference(info.device_type), *i)
            });
            Ok(ranked.remove(0).1)
        }
    }
}

fn list_names(adapters: &[wgpu::Adapter]) -> String {
    let mut s = String::new();
    for (i, a) in adapters.iter().enumerate() {
        let info = a.get_info();
        let _ = writeln!(s, "  [{i}] {} ({:?})", info.name, info.backend);
    }
    s
}

/// The features the engine asks for when the adapter has them. None is required.
pub const OPTIONAL_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::SHADER_INT64)
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);

/// A human-readable description of an adapter: backend, type, driver, limits, features.
pub fn report(index: usize, adapter: &wgpu::Adapter) -> String {
    let info = adapter.get_info();
    let limits = adapter.limits();
    let features = adapter.features();
    let mut s = String::new();
    let _ = writeln!(s, "[{index}] {}", info.name);
    let _ = writeln!(s, "    backend:  {:?}", info.backend);
    let _ = writeln!(s, "    type:     {:?}", info.device_type);
    let _ = writeln!(
        s,
        "    driver:   {} {}",
        info.driver,
        info.driver_info.trim()
    );
    let _ = writeln!(
        s,
        "    vendor:   0x{:04x}  device: 0x{:04x}",
        info.vendor, info.device
    );
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let _ = writeln!(s, "    limits:");
    let _ = writeln!(
        s,
        "      max_storage_buffer_binding_size  {:.0} MiB",
        mib(limits.max_storage_buffer_binding_size)
    );
    let _ = writeln!(
        s,
        "      max_buffer_size                  {:.0} MiB",
        mib(limits.max_buffer_size)
    );
    let _ = writeln!(
        s,
        "      max_storage_buffers_per_stage    {}",
        limits.max_storage_buffers_per_shader_stage
    );
    let _ = writeln!(
        s,
        "      max_compute_workgroup_storage    {} bytes",
        limits.max_compute_workgroup_storage_size
    );
    let _ = writeln!(
        s,
        "      max_compute_invocations_per_wg   {}",
        limits.max_compute_invocations_per_workgroup
    );
    let _ = writeln!(
        s,
        "      max_compute_workgroups_per_dim   {}",
        limits.max_compute_workgroups_per_dimension
    );
    let _ = writeln!(
        s,
        "      subgroup size                    {}..{}",
        info.subgroup_min_size, info.subgroup_max_size
    );
    let wanted: Vec<String> = feature_names(OPTIONAL_FEATURES)
        .into_iter()
        .zip(OPTIONAL_FEATURES.iter())
        .map(|(name, f)| {
            let mark = if features.contains(f) { "yes" } else { "no" };
            format!("{name}: {mark}")
        })
        .collect();
    let _ = writeln!(s, "    engine features: {}", wanted.join(", "));
    let _ = writeln!(s, "    all features:");
    for line in feature_names(features).chunks(4) {
        let _ = writeln!(s, "      {}", line.join(", "));
    }
    s
}

/// The names of the flags in `features`, as wgpu spells them.
pub(crate) fn feature_names(features: wgpu::Features) -> Vec<&'static str> {
    features
        .features_webgpu
        .iter_names()
        .map(|(n, _)| n)
        .chain(features.features_wgpu.iter_names().map(|(n, _)| n))
        .collect()
}

/// Whether the adapter `info` describes executes shaders on the CPU (lavapipe, WARP,
/// SwiftShader).
pub(crate) fn is_cpu(info: &wgpu::AdapterInfo) -> bool {
    info.device_type == wgpu::DeviceType::Cpu || info.name.to_ascii_lowercase().contains("llvmpipe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_parse() {
        assert_eq!("Vulkan".parse::<Backend>().unwrap(), Backend::Vulkan);
        assert_eq!("gl".parse::<Backend>().unwrap(), Backend::Gl);
        assert_eq!("dx12".parse::<Backend>().unwrap(), Backend::Dx12);
        assert_eq!(" auto ".parse::<Backend>().unwrap(), Backend::Auto);
        let err = "cuda".parse::<Backend>().unwrap_err().to_string();
        assert!(err.contains("cuda") && err.contains("vulkan"), "{err}");
    }

    #[test]
    fn unknown_adapter_selector_lists_the_adapters() {
        let Err(err) = select(Backend::Auto, Some("no-such-adapter-xyz")) else {
            panic!("a selector that matches nothing must fail");
        };
        let msg = err.to_string();
        assert!(
            msg.contains("no-such-adapter-xyz") || msg.contains("no GPU adapter"),
            "{msg}"
        );
    }
}

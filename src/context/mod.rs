//! The GPU context: instance, adapter, device and queue, plus the caches every op shares
//! (shader modules, pipelines) and the memory accounting.
//!
//! A [`Context`] is cheap to clone (an `Arc`) and is `Send + Sync`, so one loaded model can
//! serve sessions on several threads. It is created either from scratch
//! ([`Context::new`]) or around a device the host application already owns
//! ([`Context::from_device`]).

mod adapter;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use adapter::{
    auto_backends, enumerate, instance_flags, pick, report, select, skip_mesa_device_select,
    Backend, OPTIONAL_FEATURES,
};

use crate::error::{Error, Result};
use crate::pipeline::{Pipeline, PipelineKey};
use crate::profile::Profile;
use crate::shaders::ShaderModule;

/// How to create a [`Context`].
#[derive(Debug, Clone, Default)]
pub struct ContextOptions {
    /// Graphics API. Default: `MOXE_BACKEND` or auto.
    pub backend: Backend,
    /// Adapter index (as listed by `moxe info`) or case-insensitive name substring.
    /// Default: `MOXE_ADAPTER`, else the most capable adapter.
    pub adapter: Option<String>,
    /// Lowers the per-binding storage limit below the adapter's (never raises it). Tensors
    /// larger than this are split into row chunks; tests use it to exercise chunking on
    /// small tensors.
    pub max_binding_bytes: Option<u64>,
    /// Which family of kernels to choose. Default: `MOXE_KERNELS`, else by the adapter
    /// ([`Context::is_cpu`]). Both families compute the same results on any adapter; the
    /// tests run the GPU family on CPU adapters to check the GPU paths without a GPU.
    pub kernels: Option<KernelFamily>,
    /// Optional features not to ask for even where the adapter has them (default none):
    /// tests leave out SUBGROUP or SHADER_INT64 to run, on an adapter that has them, the
    /// paths of adapters that do not.
    pub features_off: wgpu::Features,
}

/// The two families of kernel variants: memory-access patterns for CPU adapters (one
/// contiguous stream per invocation, SIMD-group workgroups) or for GPUs (coalesced,
/// cooperative workgroups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFamily {
    Cpu,
    Gpu,
}

impl KernelFamily {
    /// `MOXE_KERNELS` (`cpu` or `gpu`), if set.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var("MOXE_KERNELS") {
            Ok(s) if !s.trim().is_empty() => match s.trim().to_ascii_lowercase().as_str() {
                "cpu" => Ok(Some(KernelFamily::Cpu)),
                "gpu" => Ok(Some(KernelFamily::Gpu)),
                other => Err(Error::InvalidArgument(format!(
                    "MOXE_KERNELS must be cpu or gpu, got '{other}'"
                ))),
            },
            _ => Ok(None),
        }
    }
}

impl ContextOptions {
    /// Options from the environment: `MOXE_BACKEND`, `MOXE_ADAPTER`.
    pub fn from_env() -> Result<Self> {
        Ok(ContextOptions {
            backend: Backend::from_env()?,
            adapter: std::env::var("MOXE_ADAPTER").ok().filter(|s| !s.is_empty()),
            max_binding_bytes: None,
            kernels: KernelFamily::from_env()?,
            features_off: wgpu::Features::empty(),
        })
    }
}

/// Shared GPU state. See the module documentation.
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

/// Staged upload bytes after which they are flushed ([`Context::note_staged`]).
const STAGED_FLUSH_BYTES: u64 = 512 << 20;

struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    features: wgpu::Features,
    limits: wgpu::Limits,
    max_binding_bytes: u64,
    /// The kernel variants ops choose ([`Context::cpu_kernels`]).
    kernels: KernelFamily,
    shader_caps: naga::valid::Capabilities,
    wait_timeout: Duration,
    allocated: AtomicU64,
    /// Bytes written to buffers mapped at creation since the last flush.
    staged: AtomicU64,
    pub(crate) modules: Mutex<HashMap<&'static str, Arc<ShaderModule>>>,
    pub(crate) pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
    profile: (AtomicBool, Mutex<Profile>),
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("adapter", &self.inner.info.name)
            .field("backend", &self.inner.info.backend)
            .finish()
    }
}

/// The device the engine asks of `adapter`: the adapter's own limits and whichever of
/// [`OPTIONAL_FEATURES`] it has. An application that creates the device itself (for its
/// window) and shares it through [`Context::from_device`] passes this to `request_device`
/// (adding what its renderer needs) so the engine gets its fast paths on that device too.
pub fn device_descriptor(adapter: &wgpu::Adapter) -> wgpu::DeviceDescriptor<'static> {
    wgpu::DeviceDescriptor {
        label: Some("moxe"),
        required_features: adapter.features() & OPTIONAL_FEATURES,
        required_limits: adapter.limits(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }
}

impl Context {
    /// Creates an instance, picks an adapter and creates a device with the adapter's own
    /// limits and whichever of [`OPTIONAL_FEATURES`] it has.
    pub fn new(options: &ContextOptions) -> Result<Self> {
        let adapter = select(options.backend, options.adapter.as_deref())?;
        Self::open(
            adapter,
            options.max_binding_bytes,
            options.kernels,
            options.features_off,
        )
    }

    /// A context on the same adapter through a driver instance of its own, with a device of
    /// the same features and limits: a replica of a model loaded on it runs beside this
    /// context's work. On lavapipe each instance executes on threads of its own, so
    /// replicas use more CPU cores; on a GPU they share it.
    pub fn replica(&self) -> Result<Context> {
        let adapter = adapter::reopen(&self.inner.info)?;
        Self::open(
            adapter,
            Some(self.inner.max_binding_bytes),
            Some(self.inner.kernels),
            OPTIONAL_FEATURES & !self.inner.features,
        )
    }

    /// A device of `adapter` as [`device_descriptor`] asks for it.
    fn open(
        adapter: wgpu::Adapter,
        max_binding_bytes: Option<u64>,
        kernels: Option<KernelFamily>,
        features_off: wgpu::Features,
    ) -> Result<Self> {
        let info = adapter.get_info();
        let mut desc = device_descriptor(&adapter);
        desc.required_features &= !features_off;
        let features = desc.required_features;
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| {
            Error::RequestDevice {
                adapter: info.name.clone(),
                message: e.to_string(),
            }
        })?;
        // Errors not caught by a scope are logged rather than aborting the process.
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| {
            log::error!("uncaptured GPU error: {e}");
        }));
        log::info!(
            "GPU: {} ({:?}, {:?}), features: {}",
            info.name,
            info.backend,
            info.device_type,
            adapter::feature_names(features).join(", ")
        );
        let f16_in_f32 = adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::SHADER_F16_IN_F32);
        Ok(Self::build(
            device,
            queue,
            info,
            f16_in_f32,
            max_binding_bytes,
            kernels,
        ))
    }

    /// Wraps a device and queue the host application created, so the engine shares its GPU.
    /// The engine uses whatever features and limits that device was created with, but its
    /// kernels bind more storage buffers than the WebGPU defaults allow (see
    /// [`Context::check_limits`], which a model load calls): create the device with the
    /// adapter's limits (`adapter.limits()`). The application's uncaptured-error handler is
    /// left in place: the engine catches its own errors with error scopes.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let info = device.adapter_info();
        let f16_in_f32 = Self::probe_f16_in_f32(&device);
        Self::build(device, queue, info, f16_in_f32, None, None)
    }

    /// Checks that the device's limits let every engine kernel bind its buffers (a device
    /// created with the WebGPU default limits does not).
    pub fn check_limits(&self) -> Result<()> {
        let need = crate::shaders::max_storage_buffers();
        let have = self.device().limits().max_storage_buffers_per_shader_stage;
        if have < need {
            return Err(Error::Limit {
                what: format!("the engine's kernels, which bind up to {need} storage buffers"),
                detail: format!(
                    "this device allows {have} per shader stage \
                     (max_storage_buffers_per_shader_stage): create it with the adapter's \
                     limits (adapter.limits()), not the WebGPU defaults"
                ),
            });
        }
        Ok(())
    }

    /// Whether the device accepts `unpack2x16float` (the adapter's SHADER_F16_IN_F32
    /// downlevel flag, which a bare device does not expose): compiles a one-line shader.
    fn probe_f16_in_f32(device: &wgpu::Device) -> bool {
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let _ = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("unpack2x16float probe"),
            source: wgpu::ShaderSource::Wgsl(
                "@compute @workgroup_size(1) fn main() { _ = unpack2x16float(0u); }".into(),
            ),
        });
        pollster::block_on(scope.pop()).is_none()
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        f16_in_f32: bool,
        max_binding_bytes: Option<u64>,
        kernels: Option<KernelFamily>,
    ) -> Self {
        let kernels = kernels.unwrap_or(match adapter::is_cpu(&info) {
            true => KernelFamily::Cpu,
            false => KernelFamily::Gpu,
        });
        let features = device.features();
        let shader_caps = crate::shaders::capabilities(features, f16_in_f32);
        let limits = device.limits();
        let adapter_max = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let max_binding_bytes =
            max_binding_bytes.map_or(adapter_max, |m| m.clamp(256, adapter_max));
        let wait_timeout = std::env::var("MOXE_GPU_TIMEOUT_SECS")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(Duration::from_secs(300), Duration::from_secs);
        Context {
            inner: Arc::new(Inner {
                device,
                queue,
                info,
                features,
                limits,
                max_binding_bytes,
                kernels,
                shader_caps,
                wait_timeout,
                allocated: AtomicU64::new(0),
                staged: AtomicU64::new(0),
                modules: Mutex::new(HashMap::new()),
                pipelines: Mutex::new(HashMap::new()),
                profile: (
                    AtomicBool::new(std::env::var("MOXE_PROFILE").is_ok_and(|v| v == "1")),
                    Mutex::new(Profile::default()),
                ),
            }),
        }
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// Name, backend, type and driver of the adapter.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }

    /// Features the device was created with.
    pub fn features(&self) -> wgpu::Features {
        self.inner.features
    }

    /// Limits the device was created with.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// Whether the device has timestamp queries inside compute passes (per-dispatch profiling).
    pub fn has_timestamps_in_passes(&self) -> bool {
        self.inner.features.contains(
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
        )
    }

    /// Whether the device has timestamp queries (at least at pass boundaries).
    pub fn has_timestamps(&self) -> bool {
        self.inner
            .features
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Whether this adapter executes shaders on the CPU (lavapipe, WARP, SwiftShader). Kernels
    /// choose their memory-access pattern by [`Context::cpu_kernels`], which follows this by
    /// default: one contiguous stream per invocation on a CPU, coalesced cooperative reads on
    /// a GPU.
    pub fn is_cpu(&self) -> bool {
        adapter::is_cpu(&self.inner.info)
    }

    /// Bytes of memory a CPU adapter's buffers may still take: the host's available memory
    /// (Linux `MemAvailable`, which counts reclaimable caches such as a mapped checkpoint's
    /// pages). `None` for a GPU, whose memory wgpu does not report, or where the host does
    /// not say.
    pub fn cpu_memory_available(&self) -> Option<u64> {
        if !self.is_cpu() {
            return None;
        }
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    /// Whether kernels choose their variants for CPU adapters: [`Context::is_cpu`] unless
    /// [`ContextOptions::kernels`] says otherwise.
    pub fn cpu_kernels(&self) -> bool {
        self.inner.kernels == KernelFamily::Cpu
    }

    /// Whether shaders may use 64-bit integers (SHADER_INT64): where they may, the CPU
    /// adapters' matmul kernels and the read probe load 64-bit words.
    pub fn shader_int64(&self) -> bool {
        self.inner.features.contains(wgpu::Features::SHADER_INT64)
    }

    /// The subgroup size of every compute invocation, when the device has the SUBGROUP
    /// feature and the adapter runs all subgroups at one size (llvmpipe: its SIMD width).
    pub fn fixed_subgroup_size(&self) -> Option<u32> {
        let info = &self.inner.info;
        (self.inner.features.contains(wgpu::Features::SUBGROUP)
            && info.subgroup_min_size == info.subgroup_max_size
            && info.subgroup_min_size > 0)
            .then_some(info.subgroup_min_size)
    }

    /// Whether one subgroup holds a whole workgroup of `invocations`: the SUBGROUP feature
    /// with one fixed subgroup size of at least that many. Kernels then reduce and share
    /// values across their workgroup by subgroup operations, without workgroup memory or
    /// barriers (which llvmpipe implements by switching coroutines). The kernels that
    /// shuffle or prefix-sum by position (the sLSTM cell's and the sampler's subgroup
    /// variants) also take invocation i of a one-dimensional workgroup to be lane i of its
    /// subgroup, as llvmpipe and the GPUs we know lay them out (WGSL does not promise it).
    pub fn subgroup_holds(&self, invocations: u32) -> bool {
        self.fixed_subgroup_size().is_some_and(|s| s >= invocations)
    }

    /// What shaders may use on this device (for naga validation).
    pub fn shader_capabilities(&self) -> naga::valid::Capabilities {
        self.inner.shader_caps
    }

    /// Whether f16 weights can be used (`unpack2x16float` is available).
    pub fn supports_f16_weights(&self) -> bool {
        self.inner
            .shader_caps
            .contains(naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32)
    }

    /// Largest byte size of one storage binding; larger tensors are split into chunks.
    pub fn max_binding_bytes(&self) -> u64 {
        self.inner.max_binding_bytes
    }

    /// Bytes of GPU buffers currently allocated through this context.
    pub fn allocated_bytes(&self) -> u64 {
        self.inner.allocated.load(Ordering::Relaxed)
    }

    pub(crate) fn track_alloc(&self, bytes: u64) {
        self.inner.allocated.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn track_free(&self, bytes: u64) {
        self.inner.allocated.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Notes `bytes` written into buffers mapped at creation. wgpu stages such writes and
    /// frees the staging memory only after a submission completes, so a model loaded in one
    /// go would briefly need twice its size in memory: past [`STAGED_FLUSH_BYTES`] the
    /// staged writes are submitted and waited for.
    pub(crate) fn note_staged(&self, bytes: u64) -> Result<()> {
        let staged = self.inner.staged.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if staged >= STAGED_FLUSH_BYTES {
            self.inner.staged.store(0, Ordering::Relaxed);
            self.inner.queue.submit([]);
            self.wait("uploading weights")?;
        }
        Ok(())
    }

    pub(crate) fn modules(&self) -> &Mutex<HashMap<&'static str, Arc<ShaderModule>>> {
        &self.inner.modules
    }

    pub(crate) fn profile_state(&self) -> &(AtomicBool, Mutex<Profile>) {
        &self.inner.profile
    }

    pub(crate) fn pipelines(&self) -> &Mutex<HashMap<PipelineKey, Arc<Pipeline>>> {
        &self.inner.pipelines
    }

    /// Runs `f` inside validation, out-of-memory and internal error scopes and turns any
    /// error they catch into a typed [`Error`] naming `operation`.
    pub fn scoped<T>(&self, operation: &str, f: impl FnOnce() -> T) -> Result<T> {
        let device = &self.inner.device;
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let errors = [
            pollster::block_on(validation.pop()),
            pollster::block_on(oom.pop()),
            pollster::block_on(internal.pop()),
        ];
        match errors.into_iter().flatten().next() {
            Some(e) => Err(Error::from_wgpu(operation, e)),
            None => Ok(value),
        }
    }

    /// Blocks until all submitted work is done (bounded by `MOXE_GPU_TIMEOUT_SECS`, default
    /// 300 s, so a stuck device gives an error instead of a hang).
    pub fn wait(&self, operation: &str) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(self.inner.wait_timeout),
            })
            .map(|_| ())
            .map_err(|e| Error::Device {
                operation: operation.to_string(),
                message: e.to_string(),
            })
    }
}

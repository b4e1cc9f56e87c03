//! GPU context behaviour on the current adapter: tensors over the storage-binding limit,
//! typed errors for bad shaders and bind groups, profiling, and sharing an application's
//! device (and refusing a model on one whose limits are too low).

use std::sync::Arc;

use moxe::ops::matmul::{self, matmul};
use moxe::ops::View;
use moxe::pipeline::Pipeline;
use moxe::shaders::ShaderModule;
use moxe::testing::{assert_close, gpu, Rng};
use moxe::{Context, DType, Error, Graph, HostData, Tensor, Workgroups};

#[test]
fn tensor_over_the_binding_limit_is_chunked_and_exact() {
    let ctx = gpu();
    let limit = ctx.max_binding_bytes();
    // Rows of 4096 f32 (16 KiB); enough rows to pass the limit by a few MiB.
    let k = 4096;
    let m = (limit as usize / (k * 4)) + 200;
    let mut rng = Rng::new(42);
    let w = rng.uniform_vec(m * k, -1.0, 1.0);
    let wt = Tensor::weight(ctx, "big", &[m, k], DType::F32, HostData::F32(&w)).unwrap();
    assert!(wt.bytes() > limit, "the tensor must exceed one binding");
    assert!(
        wt.chunks().len() >= 2,
        "expected several chunks, got {}",
        wt.chunks().len()
    );

    // Read-back around the chunk boundary is exact.
    let boundary = wt.chunks()[1].first_row;
    let got = wt.rows_to_f32(boundary - 2..boundary + 2).unwrap();
    assert_eq!(got, w[(boundary - 2) * k..(boundary + 2) * k]);

    // A GEMV over the whole chunked matrix matches the CPU reference.
    let x = rng.uniform_vec(k, -1.0, 1.0);
    let xt = Tensor::from_f32(ctx, "x", &[1, k], &x).unwrap();
    let yt = Tensor::zeros(ctx, "y", &[1, m], DType::F32).unwrap();
    let mut g = Graph::new();
    matmul(ctx, &mut g, &wt, None, View::of(&xt), View::of(&yt), 0.0).unwrap();
    assert_eq!(g.len(), wt.chunks().len(), "one dispatch per chunk");
    ctx.run(&[&g]).unwrap();
    let want = matmul::reference(&w, k, &x, None);
    assert_close(&yt.to_f32().unwrap(), &want, 1e-4, 1e-5, "chunked gemv");
}

#[test]
fn a_row_larger_than_a_binding_is_a_limit_error() {
    let ctx = moxe::testing::gpu_with_binding_limit(1024);
    let err = Tensor::zeros(&ctx, "wide", &[2, 1000], DType::F32).unwrap_err();
    assert!(matches!(err, Error::Limit { .. }), "{err:?}");
    assert!(err.to_string().contains("wide"), "{err}");
}

#[test]
fn host_data_of_the_wrong_kind_is_a_typed_error() {
    let ctx = gpu();
    let f = Tensor::zeros(ctx, "floats", &[2, 3], DType::F32).unwrap();
    let u = Tensor::zeros(ctx, "ids", &[6], DType::U32).unwrap();
    for (t, data) in [
        (&f, HostData::U32(&[1; 6])),
        (&u, HostData::F32(&[1.0; 6])),
        (&u, HostData::I32(&[1; 6])),
    ] {
        let err = t.write(data).unwrap_err();
        assert!(err.to_string().contains("another type"), "{err}");
        let err = t.write_rows(0, data).unwrap_err();
        assert!(err.to_string().contains(t.label()), "{err}");
    }
    assert!(Tensor::from_host(ctx, "ids", &[2], DType::U32, HostData::F32(&[0.5; 2])).is_err());
}

#[test]
fn invalid_wgsl_is_a_shader_error() {
    let err = ShaderModule::compile(gpu(), "user_kernel", "@compute fn main( {")
        .err()
        .expect("must fail");
    assert!(matches!(err, Error::Shader { .. }), "{err:?}");
    assert!(err.to_string().contains("user_kernel"), "{err}");
}

#[test]
fn a_pipeline_the_device_rejects_is_a_validation_error() {
    // Valid WGSL, but a workgroup far beyond any device's invocation limit.
    let src = "@group(0) @binding(0) var<storage, read_write> a: array<f32>;\n\
               @compute @workgroup_size(1024, 1024) fn main() { a[0] = 1.0; }";
    let module = Arc::new(ShaderModule::compile(gpu(), "huge_workgroup", src).unwrap());
    let err = Pipeline::new(gpu(), module, "main", &[])
        .err()
        .expect("must fail");
    assert!(matches!(err, Error::Validation { .. }), "{err:?}");
    assert!(err.to_string().contains("huge_workgroup::main"), "{err}");
}

#[test]
fn unknown_entry_point_is_a_typed_error() {
    let err = gpu()
        .pipeline("matmul", "no_such_entry", &[])
        .err()
        .expect("must fail");
    assert!(matches!(err, Error::UnknownShader { .. }), "{err:?}");
}

#[test]
fn wrong_bind_groups_are_typed_errors() {
    let ctx = gpu();
    let pipeline = ctx.pipeline("bandwidth_probe", "stream", &[]).unwrap();
    let src = Tensor::zeros(ctx, "src", &[16], DType::U32).unwrap();
    // Too few resources.
    let err = pipeline
        .bind_group(ctx, &[src.binding().unwrap()])
        .expect_err("must fail");
    assert!(matches!(err, Error::Mismatch { .. }), "{err:?}");
    // A uniform-only buffer where a storage buffer belongs: wgpu rejects it, we report it.
    let uniform = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("uniform only"),
        size: 16,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: false,
    });
    let err = pipeline
        .bind_group(
            ctx,
            &[
                uniform.as_entire_binding(),
                uniform.as_entire_binding(),
                src.binding().unwrap(),
            ],
        )
        .expect_err("must fail");
    assert!(matches!(err, Error::Validation { .. }), "{err:?}");
}

#[test]
fn a_grid_over_the_dimension_limit_is_rejected() {
    let err = Workgroups::grid(70_000, 1, 1).unwrap_err();
    assert!(matches!(err, Error::Limit { .. }), "{err:?}");
}

#[test]
fn profiling_reports_every_kernel() {
    let ctx = Context::new(&moxe::ContextOptions::from_env().unwrap()).unwrap();
    ctx.set_profiling(true);
    let w = Tensor::weight(
        &ctx,
        "w",
        &[64, 64],
        DType::F16,
        HostData::F32(&[0.5; 4096]),
    )
    .unwrap();
    let x = Tensor::from_f32(&ctx, "x", &[1, 64], &[1.0; 64]).unwrap();
    let y = Tensor::zeros(&ctx, "y", &[1, 64], DType::F32).unwrap();
    let mut g = Graph::new();
    matmul(&ctx, &mut g, &w, None, View::of(&x), View::of(&y), 0.0).unwrap();
    ctx.run(&[&g]).unwrap();
    ctx.run(&[&g]).unwrap();
    // Results are still right while profiling.
    assert_eq!(y.to_f32().unwrap(), vec![32.0; 64]);
    let report = ctx.profile_report().expect("a profile");
    // The GEMV is matmul.wgsl's, or its subgroup form's where the adapter has subgroups
    // (reading 64-bit words where it also has SHADER_INT64).
    assert!(
        ["matmul::", "gemv_subgroup::", "gemv_subgroup64::"]
            .iter()
            .any(|k| report.contains(k)),
        "{report}"
    );
    assert!(report.contains("2 step"), "{report}");
    ctx.with_profile(|p| {
        let rows = p.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1, 2, "two calls");
    });
}

#[test]
fn engine_runs_on_a_device_the_application_created() {
    // The application owns instance, adapter and device; the engine borrows them.
    let options = moxe::ContextOptions::from_env().unwrap();
    let adapter = moxe::context::select(options.backend, options.adapter.as_deref()).unwrap();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host application"),
        required_features: wgpu::Features::empty(),
        required_limits: wgpu::Limits::default(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::default(),
        trace: wgpu::Trace::Off,
    }))
    .unwrap();
    let ctx = Context::from_device(device.clone(), queue.clone());
    assert_eq!(ctx.device(), &device);
    let w = Tensor::weight(
        &ctx,
        "w",
        &[3, 2],
        DType::F32,
        HostData::F32(&[1., 2., 3., 4., 5., 6.]),
    )
    .unwrap();
    let x = Tensor::from_f32(&ctx, "x", &[1, 2], &[1.0, -1.0]).unwrap();
    let y = Tensor::zeros(&ctx, "y", &[1, 3], DType::F32).unwrap();
    let mut g = Graph::new();
    matmul(&ctx, &mut g, &w, None, View::of(&x), View::of(&y), 0.0).unwrap();
    ctx.run(&[&g]).unwrap();
    assert_eq!(y.to_f32().unwrap(), vec![-1.0, -1.0, -1.0]);
    // The WebGPU default limits bind fewer storage buffers than some kernels take: a model
    // load says so (not a validation error at the first step).
    let need = moxe::shaders::max_storage_buffers();
    assert!(need > wgpu::Limits::default().max_storage_buffers_per_shader_stage);
    let dir = moxe::checkpoint::default_model_dir();
    let err = match moxe::runtime::Model::load(&ctx, &dir, &Default::default()) {
        Ok(_) => panic!("loaded on a device its kernels cannot bind on"),
        Err(e) => e.to_string(),
    };
    for needle in [
        &format!("up to {need} storage buffers"),
        "max_storage_buffers_per_shader_stage",
        "adapter.limits()",
    ] {
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn a_replica_is_the_same_adapter_with_its_own_device() {
    let ctx = moxe::testing::gpu_with_binding_limit(4096);
    let replica = ctx.replica().unwrap();
    assert_eq!(replica.adapter_info(), ctx.adapter_info());
    assert_eq!(replica.features(), ctx.features());
    assert_eq!(replica.max_binding_bytes(), ctx.max_binding_bytes());
    // Its own buffers: a tensor round-trips on it while the original's stays untouched.
    let values: Vec<f32> = (0..2000).map(|i| i as f32 * 0.5).collect();
    let on_replica = Tensor::from_f32(&replica, "x", &[2, 1000], &values).unwrap();
    let on_ctx = Tensor::zeros(&ctx, "x", &[2, 1000], DType::F32).unwrap();
    assert_eq!(on_replica.to_f32().unwrap(), values);
    assert!(on_ctx.to_f32().unwrap().iter().all(|&v| v == 0.0));
}

//! Every WGSL file of `shaders/` parses, validates, and translates with naga to SPIR-V
//! (Vulkan), MSL (Metal), HLSL (DX12) and GLSL ES (OpenGL; not the 64-bit-integer modules,
//! which the GL backend never gets). This is how the kernels are
//! checked for Metal and DX12 without those machines. Needs no GPU.

use std::collections::BTreeSet;

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::Capabilities;

/// What the engine's shaders may use: `unpack2x16float`, subgroup operations and (the 64-bit
/// weight-word variants) 64-bit integers.
fn capabilities() -> Capabilities {
    Capabilities::SHADER_FLOAT16_IN_FLOAT32 | Capabilities::SUBGROUP | Capabilities::SHADER_INT64
}

/// Override values each shader is translated with besides its defaults, so every branch
/// that an override selects is emitted at least once.
fn override_sets(name: &str) -> Vec<Vec<(&'static str, f64)>> {
    match name {
        "matmul" => vec![
            vec![],
            vec![("WDT", 1.0), ("HEADS", 1.0), ("WG", 8.0), ("X4", 1.0)],
            vec![("WDT", 2.0), ("HEADS", 1.0), ("ROW_COLS", 1.0)],
        ],
        "gemv_subgroup" | "gemv_subgroup64" => {
            (0..5).map(|wdt| vec![("WDT", wdt as f64)]).collect()
        }
        "bandwidth_probe" => vec![vec![], vec![("WG", 8.0)]],
        "conv1d" => vec![
            vec![],
            vec![("ACT", 1.0), ("VEC4", 1.0)],
            vec![("TAPS", 1.0)],
            vec![("TAPS", 16.0), ("VEC4", 1.0)],
        ],
        "slstm_cell" => {
            let rows = [("ROWS", 1.0), ("HS_LEN", 1.0), ("HS4_LEN", 4.0)];
            vec![
                vec![],
                vec![("WDT", 1.0)],
                vec![("WDT", 2.0)],
                vec![("SHARED", 1.0), ("RS_LEN", 1024.0), ("UNITS", 4.0)],
                rows.to_vec(),
                [&rows[..], &[("WDT", 2.0)]].concat(),
            ]
        }
        "embedding" => vec![vec![], vec![("WDT", 1.0)], vec![("WDT", 2.0)]],
        "layer_norm" => vec![vec![], vec![("X4", 1.0)], vec![("X4", 1.0), ("Y4", 1.0)]],
        "skip_gate" => vec![vec![], vec![("WG", 8.0), ("Q4", 1.0)]],
        "router_stats" => vec![vec![], vec![("WG", 8.0)]],
        "sample" => vec![vec![], vec![("THREADS", 8.0), ("V4", 1.0)]],
        "mlstm_step_simd" => vec![vec![], vec![("VEC4", 1.0)]],
        "elementwise" => (0..8)
            .flat_map(|act| (0..3).map(move |op| vec![("ACT", act as f64), ("OP", op as f64)]))
            .collect(),
        _ => vec![vec![]],
    }
}

#[test]
fn registry_lists_exactly_the_files_in_shaders_dir() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
        .expect("shaders/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let registered: BTreeSet<String> = moxe::shaders::SHADERS
        .iter()
        .map(|s| s.file.to_string())
        .collect();
    assert_eq!(
        on_disk, registered,
        "shaders/ and shaders::SHADERS disagree"
    );
}

#[test]
fn every_shader_translates_to_every_backend() {
    for shader in moxe::shaders::SHADERS {
        let (module, info) = moxe::shaders::validate(shader.name, shader.source, capabilities())
            .unwrap_or_else(|e| panic!("{e}"));
        for entry in &module.entry_points {
            for constants in override_sets(shader.name) {
                // GLSL has no 64-bit integers, and wgpu's GL backend no SHADER_INT64.
                let glsl = !shader.int64;
                translate(shader.name, &module, &info, &entry.name, &constants, glsl);
            }
        }
    }
}

fn translate(
    name: &str,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    entry: &str,
    constants: &[(&str, f64)],
    glsl: bool,
) {
    let what = format!("{name}::{entry} {constants:?}");
    let mut pc = naga::back::PipelineConstants::default();
    for (k, v) in constants {
        pc.insert(k.to_string(), *v);
    }
    let stage = naga::ShaderStage::Compute;
    let (module, info) =
        naga::back::pipeline_constants::process_overrides(module, info, Some((stage, entry)), &pc)
            .unwrap_or_else(|e| panic!("{what}: overrides: {e}"));

    let spv_options = spv::Options::default();
    let spv_pipeline = spv::PipelineOptions {
        shader_stage: stage,
        entry_point: entry.to_string(),
    };
    let words = spv::write_vec(&module, &info, &spv_options, Some(&spv_pipeline))
        .unwrap_or_else(|e| panic!("{what}: SPIR-V: {e}"));
    assert!(words.len() > 5, "{what}: empty SPIR-V");

    let msl_options = msl::Options {
        lang_version: (2, 4),
        ..Default::default()
    };
    let msl_pipeline = msl::PipelineOptions {
        entry_point: Some((stage, entry.to_string())),
        ..Default::default()
    };
    let (msl_src, _) = msl::write_string(&module, &info, &msl_options, &msl_pipeline)
        .unwrap_or_else(|e| panic!("{what}: MSL: {e}"));
    assert!(msl_src.contains("kernel"), "{what}: MSL has no kernel");

    let hlsl_options = hlsl::Options {
        shader_model: hlsl::ShaderModel::V6_0,
        ..Default::default()
    };
    let hlsl_pipeline = hlsl::PipelineOptions {
        entry_point: Some((stage, entry.to_string())),
    };
    let mut hlsl_src = String::new();
    hlsl::Writer::new(&mut hlsl_src, &hlsl_options, &hlsl_pipeline)
        .write(&module, &info, None)
        .unwrap_or_else(|e| panic!("{what}: HLSL: {e}"));
    assert!(
        hlsl_src.contains("numthreads"),
        "{what}: HLSL has no compute entry"
    );

    if !glsl {
        return;
    }
    let glsl_options = glsl::Options {
        version: glsl::Version::new_gles(310),
        ..Default::default()
    };
    let glsl_pipeline = glsl::PipelineOptions {
        shader_stage: stage,
        entry_point: entry.to_string(),
        multiview: None,
    };
    let mut glsl_src = String::new();
    glsl::Writer::new(
        &mut glsl_src,
        &module,
        &info,
        &glsl_options,
        &glsl_pipeline,
        naga::proc::BoundsCheckPolicies::default(),
    )
    .and_then(|mut w| w.write())
    .unwrap_or_else(|e| panic!("{what}: GLSL: {e}"));
    assert!(
        glsl_src.contains("local_size_x"),
        "{what}: GLSL has no compute layout"
    );
}

#[test]
fn invalid_wgsl_is_reported_with_its_location() {
    let err = moxe::shaders::validate("broken", "fn main( {", capabilities())
        .unwrap_err()
        .to_string();
    assert!(err.contains("broken") && err.contains("wgsl:1"), "{err}");
}

//! `moxe inspect`: what a model directory holds, without touching the GPU.

use std::path::Path;

use moxe::model::config::{Architecture, ModelConfig};
use moxe::model::dir::ModelDir;
use moxe::Result;

fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn describe(c: &ModelConfig) -> String {
    let x = &c.xlstm;
    let mut s = format!(
        "embedding_dim {}, vocab {}, tie_weights {}",
        x.embedding_dim, x.vocab_size, c.tie_weights
    );
    if let Some(m) = &x.mlstm {
        s += &format!(
            "\n  mLSTM: {} heads (head dim {}), inner dim {}, conv {}, qkv blocks {}",
            m.num_heads,
            m.head_dim(),
            m.inner_dim(),
            m.conv_kernel,
            m.qkv_blocksize
        );
    }
    if let Some(sl) = &x.slstm {
        s += &format!(
            "\n  sLSTM: {} heads (head dim {}), conv {}, layout {:?}",
            sl.num_heads,
            sl.head_dim(),
            sl.conv_kernel,
            sl.layout
        );
        if let Some(f) = &sl.ffn {
            s += &format!(", FFN {} wide, {:?}", f.hidden(x.embedding_dim), f.act);
        }
    }
    match &c.architecture {
        Architecture::Moxe(m) => {
            s += &format!(
                "\n  MoxE: {} layers, {} experts ({:?}), top-{}, router {:?}, modulation {:?}, \
                 gamma {}, threshold {}, gate bias {}, post norm {}",
                m.num_layers,
                m.num_experts,
                m.expert_type,
                m.top_k,
                m.router,
                m.modulation,
                m.gamma,
                m.difficulty_threshold,
                m.gate_bias,
                m.post_layers_norm
            );
            if let Some(l) = m.latent {
                s += &format!("\n  latent experts: {} groups", l.groups);
            }
        }
        Architecture::Dense(d) => {
            s += &format!(
                "\n  dense xLSTM: {} blocks, sLSTM at {:?}",
                d.num_blocks, d.slstm_at
            );
        }
    }
    s
}

pub fn run(model: &Path) -> Result<()> {
    let dir = ModelDir::open(model)?;
    let c = dir.parameters();
    println!("model: {}", dir.path.display());
    println!("{}", describe(&dir.config));
    println!("parameters: {} total", human(c.total));
    if let Some(m) = dir.config.moxe() {
        println!(
            "            {} in experts, {} active per token ({} of {} experts)",
            human(c.experts),
            human(c.active(m.top_k, m.num_experts)),
            m.top_k,
            m.num_experts
        );
    }
    if !dir.ranks.is_empty() {
        let ranks: Vec<String> = dir.ranks.iter().map(|(k, r)| format!("{k}: {r}")).collect();
        println!("latent ranks: {}", ranks.join(", "));
    }
    println!(
        "weights on the GPU: {} as f32, {} as f16 (vectors stay f32)",
        mib(c.bytes(4)),
        mib(c.bytes(2))
    );
    match &dir.tokenizer {
        Some(p) => println!("tokenizer: {}", p.display()),
        None => println!("tokenizer: none (token ids only)"),
    }
    Ok(())
}

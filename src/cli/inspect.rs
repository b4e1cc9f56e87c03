//! `moxe inspect`: what a model directory holds, without touching the GPU.

use std::path::Path;

use moxe::arch::xlstm::config::XlstmConfig;
use moxe::arch::{Architecture, ModelConfig};
use moxe::checkpoint::ModelDir;
use moxe::runtime::Tokenizer;
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
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}

fn describe(c: &ModelConfig) -> String {
    let mut s = format!(
        "{}: embedding_dim {}, vocab {}, tie_weights {}",
        c.name(),
        c.embedding_dim,
        c.vocab_size,
        c.tie_weights
    );
    if let Some(n) = c.context_length {
        // Informational: the recurrent state has no length limit; `perplexity` windows.
        s += &format!(", context_length {n} (training; perplexity's default window)");
    }
    if let Some(x) = c.xlstm() {
        s += &describe_blocks(x);
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
        Architecture::Large(l) => {
            let cap = |c: Option<f32>| c.map_or("none".to_string(), |c| c.to_string());
            s += &format!(
                "\n  {} blocks, {} heads: q/k head dim {}, v head dim {}, FFN {} wide\n  \
                 soft caps: gates {}, logits {}; norm eps {}, cell eps {}, biases {}, out norm \
                 {}\n  weights: {:?} mode, {} naming",
                l.num_blocks,
                l.num_heads,
                l.qk_head_dim(),
                l.v_head_dim(),
                l.ffn_dim,
                cap(l.gate_soft_cap),
                cap(l.output_logit_soft_cap),
                l.norm_eps,
                l.eps,
                l.use_bias,
                l.out_norm,
                l.weight_mode,
                match l.naming.embedding {
                    "embedding.weight" => "xlstm_large package",
                    _ => "Hugging Face",
                }
            );
        }
    }
    s
}

/// The NeurIPS blocks of a MoxE or dense model.
fn describe_blocks(x: &XlstmConfig) -> String {
    let mut s = String::new();
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
    // q8 and q4 with their block scales.
    let bytes = |d: moxe::DType| mib(c.bytes(d.device_bits()));
    println!(
        "weights on the GPU: {} as f32, {} as f16 or bf16, {} as q8, {} as q4 (vectors stay \
         f32)",
        bytes(moxe::DType::F32),
        bytes(moxe::DType::F16),
        bytes(moxe::DType::Q8),
        bytes(moxe::DType::Q4)
    );
    println!(
        "state: {} per sequence (f32, whatever its length)",
        mib(dir.config.state_floats_per_sequence() * 4)
    );
    let stored: std::collections::BTreeSet<String> = dir
        .manifest
        .tensors
        .iter()
        .filter_map(|t| dir.weights.dtype(&t.name))
        .map(|d| format!("{d:?}"))
        .collect();
    println!(
        "checkpoint: {} ({})",
        dir.weights.path().display(),
        stored.into_iter().collect::<Vec<_>>().join(", ")
    );
    match &dir.tokenizer {
        Some(p) => println!("tokenizer: {}", p.display()),
        None => println!("tokenizer: none (token ids only)"),
    }
    let g = &dir.generation;
    if g.bos.is_some()
        || !g.eos.is_empty()
        || g.add_bos
        || g.bos_token.is_some()
        || g.eos_token.is_some()
    {
        // Ids where the files give them, else the token's text (the tokenizer finds its id).
        let named = |ids: String, text: &Option<String>| match text {
            Some(t) if ids.is_empty() => format!("{t:?}"),
            Some(t) => format!("{ids} {t:?}"),
            None if ids.is_empty() => "none".to_string(),
            None => ids,
        };
        let eos: Vec<String> = g.eos.iter().map(u32::to_string).collect();
        println!(
            "special tokens: bos {}{}, eos {}, pad {}",
            named(
                g.bos.map_or(String::new(), |id| id.to_string()),
                &g.bos_token
            ),
            if g.add_bos { " (prepended)" } else { "" },
            named(eos.join(", "), &g.eos_token),
            g.pad.map_or("none".to_string(), |id| id.to_string())
        );
    }
    // What the files resolve to through the tokenizer: what a prompt gets and what ends a
    // generation (or why the tokenizer cannot take the files' tokens).
    if let Some(path) = &dir.tokenizer {
        match Tokenizer::open(path, dir.config.vocab_size, g) {
            Ok(t) => {
                let show =
                    |id: u32| format!("{id} {:?}", String::from_utf8_lossy(&t.token_bytes(id)));
                let (before, after) = t.added();
                let added = [
                    before.map(|id| format!("{} before", show(id))),
                    after.map(|id| format!("{} after", show(id))),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>();
                let ends: Vec<String> = t.eos().iter().map(|&id| show(id)).collect();
                println!(
                    "special tokens as used: a prompt gets {}; generation ends at {}",
                    if added.is_empty() {
                        "no added token".to_string()
                    } else {
                        added.join(" and ")
                    },
                    if ends.is_empty() {
                        "no token (only its length)".to_string()
                    } else {
                        ends.join(", ")
                    }
                );
            }
            Err(e) => println!("special tokens as used: none, the tokenizer cannot take them: {e}"),
        }
    }
    let sampling: Vec<String> = [
        g.do_sample.map(|v| format!("do_sample {v}")),
        g.temperature.map(|v| format!("temperature {v}")),
        g.top_k.map(|v| format!("top_k {v}")),
        g.top_p.map(|v| format!("top_p {v}")),
        g.max_new_tokens.map(|v| format!("max_new_tokens {v}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !sampling.is_empty() {
        println!("generation defaults: {}", sampling.join(", "));
    }
    Ok(())
}

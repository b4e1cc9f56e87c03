//! Router telemetry: for a prompt, which experts each token went to, the difficulty d_t the
//! entropy-aware gate predicted, the router's normalised entropy, and per layer the group
//! shares, expert loads and the auxiliary losses of MODEL.md section 3.
//!
//!     cargo run --release --example router_telemetry -- ["text"]

mod common;

use std::sync::Arc;

use moxe::runtime::{LoadOptions, Model, Session};
use moxe::{Context, ContextOptions};

fn run() -> moxe::Result<()> {
    let text = match std::env::args_os().nth(1) {
        Some(t) => t
            .into_string()
            .map_err(|_| moxe::Error::InvalidArgument("the text is not valid UTF-8".into()))?,
        None => "The LORD is my shepherd; I shall not want.".to_string(),
    };
    let ctx = Context::new(&ContextOptions::from_env()?)?;
    let model = Arc::new(Model::load(
        &ctx,
        &moxe::checkpoint::default_model_dir(),
        &LoadOptions::default(),
    )?);
    let tokenizer = model.require_tokenizer()?;
    let ids = tokenizer.encode(&text)?;
    // Telemetry describes the last step: feed the prompt as one step (up to one prefill
    // chunk), and read it back only now that it is wanted.
    let n = ids.len().min(model.options().prefill_chunk);
    if n == 0 {
        return Err(moxe::Error::InvalidArgument(
            "the text has no tokens".into(),
        ));
    }
    let ids = &ids[..1 << n.ilog2()];
    let mut session = Session::new(&model)?;
    session.logits(ids)?;
    for (l, t) in session.telemetry()?.iter().enumerate() {
        println!(
            "layer {l}: shares mLSTM {:.3} / sLSTM {:.3}, tokens per expert {:?}",
            t.group_shares[0], t.group_shares[1], t.expert_counts
        );
        println!("  loads {:?}", t.expert_loads);
        println!(
            "  losses L_d {:.4}, L_g {:.4}, L_z {:.4}, L_lb {:.4}",
            t.losses[0], t.losses[1], t.losses[2], t.losses[3]
        );
        for (i, id) in ids.iter().enumerate() {
            let piece = tokenizer.decode(&[*id])?;
            let experts = &t.topk_idx[i * t.top_k..(i + 1) * t.top_k];
            let weights = &t.topk_weight[i * t.top_k..(i + 1) * t.top_k];
            println!(
                "  {piece:>12?}  d {:.3}  entropy {:.3}  experts {experts:?} weights {weights:.2?}",
                t.difficulty[i], t.entropy[i]
            );
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    common::main(
        "cargo run --release --example router_telemetry -- [\"text\"]",
        1,
        run,
    )
}

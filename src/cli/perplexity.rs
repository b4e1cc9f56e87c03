//! `moxe perplexity`: per-token NLL and perplexity of a text.

use std::fmt::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use moxe::runtime::Session;
use moxe::{Error, Result};

use super::model_args::ModelArgs;
use super::GpuArgs;

#[derive(Debug, Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to score (UTF-8, at most 32 MiB; `-` reads standard input).
    #[arg(long)]
    pub text: PathBuf,
    /// Score consecutive windows of this many tokens, each from a fresh state (the first
    /// token of a window is not scored). Default: the model's context_length; 0 streams the
    /// whole text through one recurrent state.
    #[arg(long, allow_negative_numbers = true)]
    pub window: Option<usize>,
    /// Write the per-token NLL (nats) as CSV `position,token_id,nll`.
    #[arg(long)]
    pub nll_out: Option<PathBuf>,
    /// Replace --nll-out if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(gpu: &GpuArgs, args: &PerplexityArgs) -> Result<()> {
    let bad_window = || Error::InvalidArgument("--window must be 0 or at least 2".into());
    if args.window == Some(1) {
        return Err(bad_window());
    }
    if let Some(path) = &args.nll_out {
        // Standard input's file, where it reads one.
        let source = match args.text.as_os_str() == "-" {
            true => std::path::Path::new("/dev/stdin"),
            false => args.text.as_path(),
        };
        super::check_output_file(path, "--nll-out", args.force, &args.model.model, &[source])?;
    }
    // 32 MiB: millions of tokens, and a few GB of memory while they are tokenised.
    const TEXT_BYTES: u64 = 32 << 20;
    let text = match args.text.as_os_str() == "-" {
        true => super::read_text(std::io::stdin(), None, TEXT_BYTES)?,
        false => super::read_text_file(&args.text, TEXT_BYTES)?,
    };
    let model = args.model.load(gpu, 1)?;
    let ids = model.require_tokenizer()?.encode(&text)?;
    if ids.len() < 2 {
        return Err(Error::file(
            &args.text,
            format!("too short: {} token(s); at least 2 are needed", ids.len()),
        ));
    }
    let window = match (args.window, model.config().context_length) {
        (Some(0), _) | (None, None) => ids.len(),
        (None, Some(w)) if w < 2 => {
            return Err(Error::InvalidArgument(format!(
                "the model's context_length ({w}) is too short to score a window (at least \
                 2 tokens): pass --window (0 streams the whole text)"
            )))
        }
        (Some(w), _) | (None, Some(w)) => w,
    };
    let bar = ProgressBar::new(ids.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tokens, {per_sec}, eta {eta}")
            .expect("valid template"),
    );
    if ids.len() < 4096 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let t = Instant::now();
    let mut nll = Vec::with_capacity(ids.len());
    let mut scored = Vec::with_capacity(ids.len());
    for (w, win) in ids.chunks(window).enumerate() {
        if win.len() < 2 {
            continue;
        }
        let mut s = Session::new(&model)?;
        // Feed tokens 0..n-1 of the window; target i is token i + 1.
        let step = 4096;
        for start in (0..win.len() - 1).step_by(step) {
            let end = (start + step).min(win.len() - 1);
            nll.extend(s.score(&win[start..end], &win[start + 1..end + 1])?);
            scored.extend((start + 1..end + 1).map(|i| (w * window + i, win[i])));
            bar.inc((end - start) as u64);
        }
    }
    bar.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    let mean = nll.iter().map(|&v| v as f64).sum::<f64>() / nll.len() as f64;
    if !mean.exp().is_finite() {
        // A mean NLL past ~709 nats (each token less likely than 1e-308): logits that no
        // working model gives.
        return Err(moxe::Error::NonFinite {
            what: format!("the perplexity, exp of a mean NLL of {mean:e} nats per token"),
        });
    }
    if let Some(path) = &args.nll_out {
        let mut csv = String::from("position,token_id,nll\n");
        for ((pos, id), v) in scored.iter().zip(&nll) {
            writeln!(csv, "{pos},{id},{v}").expect("a String takes every write");
        }
        moxe::checkpoint::output::write_atomically(path, csv.as_bytes())?;
    }
    println!("text:       {} ({} tokens)", args.text.display(), ids.len());
    println!(
        "windows:    {} of {} tokens (fresh state each; first token unscored)",
        ids.chunks(window).filter(|w| w.len() >= 2).count(),
        window
    );
    println!("scored:     {} tokens", nll.len());
    println!("mean NLL:   {mean:.4} nats/token");
    println!("perplexity: {:.2}", mean.exp());
    eprintln!(
        "[{:.1} tokens/s on {}]",
        nll.len() as f64 / secs,
        model.context().adapter_info().name
    );
    Ok(())
}

//! Generate text with the bundled model (or a model directory given as the first argument),
//! streaming it as it is decoded.
//!
//!     cargo run --release --example generate -- [MODEL_DIR] ["prompt"]

mod common;

use std::io::Write;
use std::sync::Arc;

use moxe::ops::sample::Sampling;
use moxe::runtime::generate::GenerateOptions;
use moxe::runtime::{LoadOptions, Model, Session};
use moxe::{Context, ContextOptions};

fn run() -> moxe::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let dir = args
        .next()
        .map_or_else(moxe::checkpoint::default_model_dir, Into::into);
    let prompt = match args.next() {
        Some(p) => p
            .into_string()
            .map_err(|_| moxe::Error::InvalidArgument("the prompt is not valid UTF-8".into()))?,
        None => "Once upon a time".to_string(),
    };

    let ctx = Context::new(&ContextOptions::from_env()?)?;
    let model = Arc::new(Model::load(&ctx, &dir, &LoadOptions::default())?);
    let mut session = Session::new(&model)?;
    let options = GenerateOptions {
        max_tokens: 80,
        sampling: Sampling {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            seed: 42,
        },
        ..Default::default()
    };
    print!("{prompt}");
    for piece in session.generate(&prompt, &options)? {
        print!("{}", piece?.text);
        std::io::stdout().flush().ok();
    }
    println!();
    Ok(())
}

fn main() -> std::process::ExitCode {
    common::main(
        "cargo run --release --example generate -- [MODEL_DIR] [\"prompt\"]",
        2,
        run,
    )
}

//! `moxe generate`: text from a prompt, streamed as it is decoded.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use moxe::checkpoint::GenerationDefaults;
use moxe::ops::sample::Sampling;
use moxe::runtime::generate::{generate_batch, GenerateOptions};
use moxe::runtime::Session;
use moxe::{Error, Result};

use super::model_args::ModelArgs;
use super::GpuArgs;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text; give it several times to decode several prompts together as a batch;
    /// `-` reads the prompt from standard input.
    #[arg(long, short)]
    pub prompt: Vec<String>,
    /// Read the prompt from a file (with --lines: one prompt per non-empty line, as a batch).
    #[arg(long, conflicts_with = "prompt")]
    pub prompt_file: Option<PathBuf>,
    /// Treat each non-empty line of --prompt-file as its own prompt.
    #[arg(long)]
    pub lines: bool,
    /// Most tokens to generate [default: the model's generation_config.json, else 128].
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Sampling temperature; 0 = greedy [default: the model's generation_config.json
    /// (greedy when it says do_sample false), else 0.8].
    #[arg(long, allow_negative_numbers = true, value_parser = exact_f32)]
    pub temperature: Option<f32>,
    /// Keep the k most likely tokens (0 = all) [default: generation_config.json, else 40].
    #[arg(long)]
    pub top_k: Option<u32>,
    /// Keep the most likely tokens up to this probability mass (1 = all) [default:
    /// generation_config.json, else 0.95].
    #[arg(long, allow_negative_numbers = true, value_parser = exact_f32)]
    pub top_p: Option<f32>,
    /// Random seed: the same seed and prompt give the same text.
    #[arg(long, default_value_t = 1234, allow_negative_numbers = true)]
    pub seed: u64,
    /// Stop before this string (may be given several times).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep going past the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print each MoE layer's router telemetry for the last step.
    #[arg(long)]
    pub telemetry: bool,
    /// Continue from a session state saved with --save-session (one prompt only): the
    /// prompt is read as the continuation of that text.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Save the session's recurrent state after generating (one prompt only). An existing
    /// file is replaced only with --force, or when it is the --resume file.
    #[arg(long)]
    pub save_session: Option<PathBuf>,
    /// Replace --save-session if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Whether paths `a` and `b` name one existing file.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The most bytes of prompt text read from a file or standard input (a few GB of memory
/// while they are tokenised).
const PROMPT_BYTES: u64 = 16 << 20;

fn prompts(args: &GenerateArgs) -> Result<Vec<String>> {
    if args.lines && args.prompt_file.is_none() {
        return Err(Error::InvalidArgument(
            "--lines reads one prompt per line of --prompt-file, which is missing".into(),
        ));
    }
    if let Some(path) = &args.prompt_file {
        let text = super::read_text_file(path, PROMPT_BYTES)?;
        if !args.lines {
            if text.is_empty() {
                return Err(Error::file(path, "is empty: there is no prompt in it"));
            }
            return Ok(vec![text]);
        }
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        if lines.is_empty() {
            return Err(Error::file(
                path,
                "no prompts: every line is empty (--lines takes one prompt per non-empty line)",
            ));
        }
        return Ok(lines);
    }
    if args.prompt.iter().filter(|p| *p == "-").count() > 1 {
        return Err(Error::InvalidArgument(
            "--prompt - reads standard input, which can be read only once".into(),
        ));
    }
    if args.prompt.is_empty() {
        return Err(Error::InvalidArgument(
            "give a prompt: --prompt TEXT, --prompt - (stdin) or --prompt-file FILE".into(),
        ));
    }
    args.prompt
        .iter()
        .map(|p| {
            if p == "-" {
                super::read_text(std::io::stdin(), None, PROMPT_BYTES)
            } else {
                Ok(p.clone())
            }
        })
        .collect()
}

/// The generation options: each setting from the command line, else from the model's
/// generation_config.json, else the built-in default.
fn options(args: &GenerateArgs, defaults: &GenerationDefaults) -> GenerateOptions {
    let greedy = defaults.do_sample == Some(false);
    let temperature = args
        .temperature
        .or(if greedy {
            Some(0.0)
        } else {
            defaults.temperature
        })
        .unwrap_or(0.8);
    GenerateOptions {
        max_tokens: args.max_tokens.or(defaults.max_new_tokens).unwrap_or(128),
        sampling: Sampling {
            temperature,
            top_k: args.top_k.or(defaults.top_k).unwrap_or(40),
            top_p: args.top_p.or(defaults.top_p).unwrap_or(0.95),
            seed: args.seed,
        },
        stop: args.stop.clone(),
        stop_at_eos: !args.ignore_eos,
    }
}

pub fn run(gpu: &GpuArgs, args: &GenerateArgs) -> Result<()> {
    super::threads::for_decode(&args.model.model.join("config.json"));
    let prompts = prompts(args)?;
    if prompts.iter().any(|p| p.is_empty()) {
        return Err(Error::InvalidArgument("a prompt is empty".into()));
    }
    if args.stop.iter().any(|s| s.is_empty()) {
        return Err(Error::InvalidArgument(
            "--stop is empty: give the text to stop before".into(),
        ));
    }
    if prompts.len() > 1 && (args.resume.is_some() || args.save_session.is_some()) {
        return Err(Error::InvalidArgument(
            "--resume and --save-session take a single prompt".into(),
        ));
    }
    if let Some(path) = &args.save_session {
        // Saving back to the session it resumed is what the user asked for.
        let resumed = args.resume.as_ref().is_some_and(|r| same_file(r, path));
        super::check_output_file(path, "--save-session", args.force || resumed)?;
    }
    // Bad settings on the command line are reported before the model loads.
    options(args, &GenerationDefaults::default())
        .sampling
        .validate()?;
    let model = args.model.load(gpu, prompts.len()).map_err(|e| match e {
        // Each prompt of a batch holds its own recurrent state on the device.
        Error::Limit { .. } | Error::OutOfMemory { .. } if prompts.len() > 1 => {
            Error::InvalidArgument(format!(
                "{} prompts in one batch need {} sequences of state, more than this device \
                 holds ({e}): give fewer prompts at once",
                prompts.len(),
                prompts.len()
            ))
        }
        e => e,
    })?;
    model.require_tokenizer()?;
    let opts = options(args, model.generation_defaults());
    opts.sampling.validate()?;
    let mut out = std::io::stdout();
    let t = Instant::now();
    let mut tokens = 0usize;
    // When the first token arrived: prefill, and compiling the step pipelines on first use.
    let mut first = None;
    if let [prompt] = prompts.as_slice() {
        let mut session = match &args.resume {
            Some(path) => Session::load(&model, path)?,
            None => Session::new(&model)?,
        };
        print!("{prompt}");
        out.flush().ok();
        let mut gen = session.generate(prompt, &opts)?;
        for piece in &mut gen {
            let piece = piece?;
            tokens += 1;
            first.get_or_insert_with(|| t.elapsed().as_secs_f64());
            print!("{}", piece.text);
            out.flush().ok();
        }
        println!();
        if let Some(path) = &args.save_session {
            gen.absorb_last()?;
            session.save(path)?;
            eprintln!(
                "[session saved to {} after {} tokens]",
                path.display(),
                session.position()
            );
        }
        if args.telemetry {
            for (l, t) in session.telemetry()?.iter().enumerate() {
                eprintln!("layer {l}:\n{t}");
            }
        }
    } else {
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let results = generate_batch(&model, &refs, &opts, |_, _| tokens += 1)?;
        for (i, (p, r)) in prompts.iter().zip(&results).enumerate() {
            println!("--- [{i}] ({})\n{p}{}", r.finish, r.text);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let decode = match first {
        Some(f) if tokens > 1 => format!(
            "; first token after {f:.2} s (prefill, pipeline compilation), then {:.1} tokens/s",
            (tokens - 1) as f64 / (secs - f)
        ),
        _ => String::new(),
    };
    eprintln!(
        "\n[{tokens} tokens in {secs:.2} s: {:.1} tokens/s{decode}, {} sequence(s), {}]",
        tokens as f64 / secs,
        prompts.len(),
        model.context().adapter_info().name
    );
    if let Some(report) = model.context().profile_report() {
        eprintln!("{report}");
    }
    Ok(())
}

/// An f32 argument that f32 holds: a value that would round to 0 or to infinity (1e-300,
/// 1e39) is refused rather than read as 0 or infinity.
fn exact_f32(text: &str) -> Result<f32, String> {
    let wide: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number"))?;
    let narrow = wide as f32;
    if (wide != 0.0 && narrow == 0.0) || (wide.is_finite() && !narrow.is_finite()) {
        return Err(format!(
            "{text} is beyond the range of f32 numbers (about 1e-38 to 3e38)"
        ));
    }
    Ok(narrow)
}

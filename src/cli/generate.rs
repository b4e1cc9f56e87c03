//! `moxe generate`: text from a prompt, streamed as it is decoded.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::builder::TypedValueParser as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use moxe::checkpoint::GenerationDefaults;
use moxe::ops::sample::Sampling;
use moxe::runtime::generate::{generate_batch, GenerateOptions};
use moxe::runtime::{Session, MAX_SEQUENCES};
use moxe::{Error, Result};

use super::model_args::ModelArgs;
use super::GpuArgs;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text; give it several times to decode several prompts together as a batch;
    /// `-` reads the prompt from standard input (one final line break dropped).
    #[arg(long, short, value_parser = utf8_text(), allow_hyphen_values = true)]
    pub prompt: Vec<String>,
    /// Read the prompt from a file (one final line break dropped, as editors add one; with
    /// --lines: one prompt per non-empty line, as a batch).
    #[arg(long, conflicts_with = "prompt")]
    pub prompt_file: Option<PathBuf>,
    /// Treat each non-empty line of --prompt-file as its own prompt.
    #[arg(long)]
    pub lines: bool,
    /// Most tokens to generate [default: the model's generation_config.json, else 128]; 0
    /// reads the prompt only (e.g. to --save-session it).
    #[arg(long, allow_negative_numbers = true)]
    pub max_tokens: Option<usize>,
    /// Sampling temperature; 0 = greedy [default: the model's generation_config.json
    /// (greedy when it says do_sample false), else 0.8].
    #[arg(long, allow_negative_numbers = true, value_parser = exact_f32)]
    pub temperature: Option<f32>,
    /// Keep the k most likely tokens (0 = all) [default: generation_config.json, else 40].
    #[arg(long, allow_negative_numbers = true)]
    pub top_k: Option<u32>,
    /// Keep the most likely tokens up to this probability mass (1 = all) [default:
    /// generation_config.json, else 0.95].
    #[arg(long, allow_negative_numbers = true, value_parser = exact_f32)]
    pub top_p: Option<f32>,
    /// Random seed: the same seed and prompt give the same text.
    #[arg(long, default_value_t = 1234, allow_negative_numbers = true)]
    pub seed: u64,
    /// Stop before this string (may be given several times).
    #[arg(long, value_parser = utf8_text(), allow_hyphen_values = true)]
    pub stop: Vec<String>,
    /// Keep going past the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print each MoE layer's router telemetry for the last step (one prompt only).
    #[arg(long)]
    pub telemetry: bool,
    /// Continue from a session state saved with --save-session (one prompt only): the
    /// prompt is read as the continuation of that text; an empty prompt (`-p ''`) goes on
    /// where the saved generation stopped (its first token, when the saved run had sampled
    /// it already, was drawn then, with that run's sampling settings).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Save the session's recurrent state after generating (one prompt only): it holds the
    /// prompt and every generated token, the last one too when a --stop string cut its
    /// text. An existing file is replaced only with --force, or when it is the --resume
    /// file; never a file of the model or the --prompt-file.
    #[arg(long)]
    pub save_session: Option<PathBuf>,
    /// Replace --save-session if it exists.
    #[arg(long)]
    pub force: bool,
}

/// The most bytes of prompt text read from a file or standard input (a few GB of memory
/// while they are tokenised).
const PROMPT_BYTES: u64 = 16 << 20;

/// Text without one final line break ("\n" or "\r\n"), as a prompt from a file or
/// standard input is meant.
fn without_final_break(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

/// The prompts to decode, from --prompt (or standard input) or --prompt-file. An empty one
/// is an error naming where it came from, except the single prompt of --resume, which goes
/// on where the saved generation stopped.
fn prompts(args: &GenerateArgs) -> Result<Vec<String>> {
    if args.lines && args.prompt_file.is_none() {
        return Err(Error::InvalidArgument(
            "--lines reads one prompt per line of --prompt-file, which is missing".into(),
        ));
    }
    let may_be_empty = args.resume.is_some();
    if let Some(path) = &args.prompt_file {
        let text = super::read_text_file(path, PROMPT_BYTES)?;
        if !args.lines {
            let text = without_final_break(text);
            if text.is_empty() && !may_be_empty {
                return Err(Error::file(
                    path,
                    "holds no prompt text (an empty prompt goes on from a saved session \
                     only, with --resume)",
                ));
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
        if lines.len() > MAX_SEQUENCES {
            return Err(Error::file(
                path,
                format!(
                    "holds {} prompts (--lines: one per non-empty line), more than the \
                     {MAX_SEQUENCES} decoded together at most: split it",
                    lines.len()
                ),
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
    if args.prompt.len() > MAX_SEQUENCES {
        return Err(Error::InvalidArgument(format!(
            "{} prompts, more than the {MAX_SEQUENCES} decoded together at most",
            args.prompt.len()
        )));
    }
    let several = args.prompt.len() > 1;
    let mut prompts = Vec::with_capacity(args.prompt.len());
    for (i, p) in args.prompt.iter().enumerate() {
        let text = match p.as_str() {
            "-" => without_final_break(super::read_text(std::io::stdin(), None, PROMPT_BYTES)?),
            _ => p.clone(),
        };
        if text.is_empty() && (several || !may_be_empty) {
            let which = match several {
                true => format!("--prompt number {}", i + 1),
                false => "--prompt".to_string(),
            };
            let source = match p.as_str() {
                "-" => "standard input gave no text",
                _ => "the text is empty",
            };
            return Err(Error::InvalidArgument(format!(
                "{which}: {source} (an empty prompt goes on from a saved session only: one \
                 prompt, with --resume)"
            )));
        }
        prompts.push(text);
    }
    Ok(prompts)
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
    if args.stop.iter().any(|s| s.is_empty()) {
        return Err(Error::InvalidArgument(
            "--stop is empty: give the text to stop before".into(),
        ));
    }
    if prompts.len() > 1 {
        let flag = match (&args.resume, &args.save_session) {
            (Some(_), _) => Some("--resume"),
            (None, Some(_)) => Some("--save-session"),
            (None, None) => None,
        };
        if let Some(flag) = flag {
            return Err(Error::InvalidArgument(format!(
                "{flag} holds one sequence's state, and {} prompts were given: give a single \
                 prompt",
                prompts.len()
            )));
        }
    }
    if prompts.len() > 1 && args.telemetry {
        return Err(Error::InvalidArgument(
            "--telemetry reports one sequence's routing: give a single prompt".into(),
        ));
    }
    if let Some(path) = &args.save_session {
        // Saving back to the session it resumed is what the user asked for.
        let resumed = args
            .resume
            .as_ref()
            .is_some_and(|r| super::same_file(r, path));
        let mut inputs: Vec<&Path> = args.prompt_file.iter().map(PathBuf::as_path).collect();
        if args.prompt.iter().any(|p| p == "-") {
            // The file standard input reads, where it is one.
            inputs.push(Path::new("/dev/stdin"));
        }
        super::check_output_file(
            path,
            "--save-session",
            args.force || resumed,
            &args.model.model,
            &inputs,
        )?;
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
        let ids = session.encode(prompt)?;
        read_prompt(&mut session, &ids, &opts)?;
        let mut open = show(&mut out, prompt)?;
        // Goes on from the token the prompt's reading sampled (or, for an empty prompt,
        // from where the resumed session stopped).
        let mut gen = session.generate_ids(&[], &opts)?;
        while open {
            let Some(piece) = gen.next() else { break };
            let piece = piece?;
            tokens += 1;
            first.get_or_insert_with(|| t.elapsed().as_secs_f64());
            open = show(&mut out, &piece.text)?;
        }
        if open {
            show(&mut out, "\n")?;
        }
        if let Some(path) = &args.save_session {
            // Holds every token shown (a generation stopped early has fed them all).
            gen.absorb_last()?;
            session.save(path)?;
            // Standard error may share the closed pipe: nothing to say there, nothing lost.
            let _ = writeln!(
                std::io::stderr(),
                "[session saved to {} after {} tokens]",
                path.display(),
                session.position()
            );
        }
        if !open {
            let _ = writeln!(
                std::io::stderr(),
                "[standard output was closed: generation stopped after {tokens} tokens]"
            );
            return Ok(());
        }
        if args.telemetry {
            let layers = session.telemetry()?;
            if layers.is_empty() {
                eprintln!(
                    "[no router telemetry: {}]",
                    match model.config().moxe() {
                        None => "the model has no MoE layers",
                        Some(_) =>
                            "no step ran in this run (the resumed session had sampled \
                                    the token already)",
                    }
                );
            }
            for (l, t) in layers.iter().enumerate() {
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

/// Writes `text` to standard output now; false when its reader has gone (a closed pipe:
/// only with --save-session, whose session is still saved, does that not end the process,
/// see main.rs).
fn show(out: &mut std::io::Stdout, text: &str) -> Result<bool> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(Error::InvalidArgument(format!(
            "cannot write to standard output: {e}"
        ))),
    }
}

/// Prompts longer than this many tokens are read chunk by chunk under a progress bar
/// (where standard error is a terminal).
const LONG_PROMPT: usize = 1024;

/// Feeds the prompt `ids` (none: nothing to read), with a progress bar for a long one.
fn read_prompt(session: &mut Session, ids: &[u32], opts: &GenerateOptions) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let bar = ProgressBar::new(ids.len() as u64);
    if ids.len() <= LONG_PROMPT || bar.is_hidden() {
        session.feed(ids, &opts.sampling)?;
        return Ok(());
    }
    bar.set_style(
        ProgressStyle::with_template("reading the prompt {bar:40} {pos}/{len} tokens, {eta} left")
            .expect("a valid template"),
    );
    let mut watch = |read: usize, total: usize| {
        // The total counts a resumed generation's pending token too.
        bar.set_length(total as u64);
        bar.set_position(read as u64);
        true
    };
    session.feed_watched(ids, &opts.sampling, Some(&mut watch))?;
    bar.finish_and_clear();
    Ok(())
}

/// A text argument as given, or an error naming it when it is not UTF-8 (clap's own says
/// only that some argument is not).
fn utf8_text() -> impl clap::builder::TypedValueParser<Value = String> {
    clap::builder::OsStringValueParser::new().try_map(|text: std::ffi::OsString| {
        text.into_string()
            .map_err(|_| "is not UTF-8 text (its invalid bytes shown as U+FFFD)".to_string())
    })
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

//! The engine thread: loads models and generates, off the UI thread, on the device the
//! window's renderer created. The UI sends [`Command`]s and polls [`Event`]s; every engine
//! error comes back as an event, never as a panic.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use moxe::ops::sample::Sampling;
use moxe::runtime::tokenizer::TextStream;
use moxe::runtime::{LoadOptions, Model, Session};
use moxe::Context;

/// Sampling controls as the window shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub max_tokens: usize,
    pub seed: u64,
}

impl Settings {
    fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        }
    }
}

pub enum Command {
    /// Load the model directory (replacing the current one).
    Load(PathBuf),
    /// Generate after `prompt` from a fresh state.
    Generate { prompt: String, settings: Settings },
    /// Generate more from where the last generation stopped.
    Continue { settings: Settings },
}

/// What a model is, for the window.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub summary: String,
    /// Experts per MoxE layer (0 for dense models: no router view).
    pub experts: usize,
    pub layers: usize,
    pub defaults: Settings,
}

/// One MoxE layer's routing of one token.
#[derive(Debug, Clone)]
pub struct LayerRouting {
    /// (expert, weight), top-k in the router's order.
    pub experts: Vec<(u32, f32)>,
    /// The difficulty d_t the entropy-aware gate predicted.
    pub difficulty: f32,
    /// The router's normalised entropy.
    pub entropy: f32,
}

pub enum Event {
    Loading(PathBuf),
    Loaded(ModelInfo),
    /// A generation began (after `Generate`: the old text is gone).
    Started {
        fresh: bool,
    },
    /// The text a generated token completes (possibly empty), as soon as it is sampled.
    Token {
        text: String,
    },
    /// The routing of generated token `index` (MoxE models), once the model has read it.
    Routing {
        index: usize,
        layers: Vec<LayerRouting>,
    },
    /// The prompt is being read: `read` of its `total` tokens so far (before each chunk).
    Reading {
        read: usize,
        total: usize,
    },
    /// Time to first token, after a `Generate`: the prompt's `prompt_tokens` were read.
    FirstToken {
        seconds: f64,
        prompt_tokens: usize,
    },
    Finished {
        reason: &'static str,
        tokens: usize,
        /// Since the command (prompt reading included).
        seconds: f64,
        /// Decode steps (one per token fed back) and their time, the prompt excluded.
        steps: usize,
        step_seconds: f64,
    },
    Failed(String),
}

/// Handle to the engine thread.
pub struct Worker {
    pub commands: Sender<Command>,
    pub events: Receiver<Event>,
    /// Set to end the running generation after its current token.
    pub stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the engine thread on `ctx`; `wake` is called after every event (to repaint).
    pub fn start(ctx: Context, wake: impl Fn() + Send + 'static) -> Self {
        let (commands, rx) = std::sync::mpsc::channel();
        let (tx, events) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let engine = Engine {
            ctx,
            model: None,
            current: None,
            stop: stop.clone(),
            events: tx,
            wake: Box::new(wake),
        };
        let thread = std::thread::Builder::new()
            .name("moxe engine".into())
            .spawn(move || engine.run(rx))
            .expect("spawning the engine thread");
        Worker {
            commands,
            events,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Closing the command channel ends the thread after its current token.
        let (dead, _) = std::sync::mpsc::channel();
        self.commands = dead;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A generation that can go on: its session, its text stream and the token sampled next.
struct Current {
    session: Session,
    stream: TextStream,
    next: Option<u32>,
    generated: usize,
}

struct Engine {
    ctx: Context,
    model: Option<Arc<Model>>,
    current: Option<Current>,
    stop: Arc<AtomicBool>,
    events: Sender<Event>,
    wake: Box<dyn Fn() + Send>,
}

impl Engine {
    fn send(&self, e: Event) {
        let _ = self.events.send(e);
        (self.wake)();
    }

    fn run(mut self, commands: Receiver<Command>) {
        while let Ok(c) = commands.recv() {
            self.stop.store(false, Ordering::SeqCst);
            let result = match c {
                Command::Load(dir) => self.load(dir),
                Command::Generate { prompt, settings } => self.generate(&prompt, &settings),
                Command::Continue { settings } => self.go_on(&settings, None),
            };
            if let Err(e) = result {
                self.send(Event::Failed(e.to_string()));
            }
        }
    }

    fn load(&mut self, dir: PathBuf) -> moxe::Result<()> {
        self.send(Event::Loading(dir.clone()));
        // The old model's buffers go before the new one's arrive.
        self.current = None;
        self.model = None;
        let model = Arc::new(Model::load(&self.ctx, &dir, &LoadOptions::default())?);
        let config = model.config();
        let (experts, layers) = match &config.architecture {
            moxe::arch::Architecture::Moxe(m) => (m.num_experts, m.num_layers),
            _ => (0, 0),
        };
        let g = model.generation_defaults();
        let defaults = Settings {
            temperature: g.temperature.unwrap_or(0.8),
            top_k: g.top_k.unwrap_or(40),
            top_p: g.top_p.unwrap_or(0.95),
            max_tokens: g.max_new_tokens.unwrap_or(128),
            seed: 0,
        };
        let p = model.parameters();
        let summary = format!(
            "{}, {} layers, {:.2} M parameters, weights {:?}, on {}",
            config.name(),
            config.layers(),
            p.total as f64 / 1e6,
            model.dtype(),
            self.ctx.adapter_info().name
        );
        // The step graphs' pipelines now, not at the first Generate.
        let preparing = Instant::now();
        model.prepare_steps(moxe::runtime::runner::Output::Sample)?;
        log::info!(
            "step graphs prepared in {:.2} s",
            preparing.elapsed().as_secs_f64()
        );
        self.model = Some(model);
        self.send(Event::Loaded(ModelInfo {
            summary,
            experts,
            layers,
            defaults,
        }));
        Ok(())
    }

    fn model(&self) -> moxe::Result<Arc<Model>> {
        self.model
            .clone()
            .ok_or_else(|| moxe::Error::InvalidArgument("no model is loaded".into()))
    }

    fn generate(&mut self, prompt: &str, settings: &Settings) -> moxe::Result<()> {
        let model = self.model()?;
        let tokenizer = model.require_tokenizer()?;
        let ids = tokenizer.encode(prompt)?;
        if ids.is_empty() {
            return Err(moxe::Error::InvalidArgument(
                "the prompt has no tokens: type something first".into(),
            ));
        }
        self.current = None;
        self.send(Event::Started { fresh: true });
        let started = Instant::now();
        let mut session = Session::new(&model)?;
        // Chunk by chunk, so that Stop ends a long prompt's reading too.
        let mut watch = |read, total| {
            self.send(Event::Reading { read, total });
            !self.stop.load(Ordering::SeqCst)
        };
        let Some(first) = session.feed_watched(&ids, &settings.sampling(), Some(&mut watch))?
        else {
            self.send(Event::Finished {
                reason: "stopped while reading the prompt",
                tokens: 0,
                seconds: started.elapsed().as_secs_f64(),
                steps: 0,
                step_seconds: 0.0,
            });
            return Ok(());
        };
        self.current = Some(Current {
            session,
            stream: tokenizer.stream_after(&ids),
            next: Some(first),
            generated: 0,
        });
        self.go_on(settings, Some(started))
    }

    /// Emits up to `max_tokens` tokens from the current generation, until EOS or a stop.
    fn go_on(&mut self, settings: &Settings, started: Option<Instant>) -> moxe::Result<()> {
        let model = self.model()?;
        let tokenizer = model.require_tokenizer()?;
        let Some(mut cur) = self.current.take() else {
            return Err(moxe::Error::InvalidArgument(
                "nothing to continue: generate first".into(),
            ));
        };
        let Some(mut next) = cur.next else {
            self.current = Some(cur);
            return Err(moxe::Error::InvalidArgument(
                "the text has ended (end of sequence): start a new one".into(),
            ));
        };
        if started.is_none() {
            self.send(Event::Started { fresh: false });
        }
        let decoding = Instant::now();
        let begin = started.unwrap_or(decoding);
        let sampling = settings.sampling();
        let mut produced = 0;
        let mut steps = 0;
        let reason = loop {
            if produced == settings.max_tokens {
                break "max tokens";
            }
            if self.stop.load(Ordering::SeqCst) {
                break "stopped";
            }
            let id = next;
            produced += 1;
            if tokenizer.is_eos(id) {
                let text = cur.stream.finish(tokenizer)?;
                self.send(Event::Token { text });
                cur.next = None;
                break "end of sequence";
            }
            let text = cur.stream.push(tokenizer, id)?;
            self.send(Event::Token { text });
            if produced == 1 && started.is_some() {
                self.send(Event::FirstToken {
                    seconds: begin.elapsed().as_secs_f64(),
                    prompt_tokens: cur.session.position(),
                });
            }
            steps += 1;
            next = match cur.session.feed(&[id], &sampling) {
                Ok(n) => n,
                Err(e) => {
                    cur.next = None;
                    self.current = Some(cur);
                    return Err(e);
                }
            };
            cur.next = Some(next);
            let layers = routing(&cur.session)?;
            if !layers.is_empty() {
                self.send(Event::Routing {
                    index: cur.generated,
                    layers,
                });
            }
            cur.generated += 1;
        };
        self.send(Event::Finished {
            reason,
            tokens: produced,
            seconds: begin.elapsed().as_secs_f64(),
            steps,
            step_seconds: decoding.elapsed().as_secs_f64(),
        });
        self.current = Some(cur);
        Ok(())
    }
}

/// The routing of the one token the session's last step read, per MoxE layer.
fn routing(session: &Session) -> moxe::Result<Vec<LayerRouting>> {
    Ok(session
        .telemetry()?
        .iter()
        .map(|t| LayerRouting {
            experts: t
                .topk_idx
                .iter()
                .zip(&t.topk_weight)
                .take(t.top_k)
                .map(|(&e, &w)| (e, w))
                .collect(),
            difficulty: t.difficulty.first().copied().unwrap_or(f32::NAN),
            entropy: t.entropy.first().copied().unwrap_or(f32::NAN),
        })
        .collect())
}

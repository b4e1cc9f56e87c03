//! The window: model picker, prompt, sampling controls, the streamed text, speed figures and,
//! for MoxE models, the live router view. The engine runs on its own thread
//! ([`crate::worker`]) on the renderer's device; this side only draws and polls events.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use eframe::egui;

use crate::frames::FrameClock;
use crate::router_view::{self, Column};
use crate::worker::{Command, Event, ModelInfo, Settings, Worker};

/// A prompt to generate as soon as the model is loaded; with `screenshot`, the headless
/// check: a screenshot after the last token, the frame report, and the window closes.
pub struct Auto {
    pub prompt: String,
    pub max_tokens: usize,
    pub screenshot: Option<PathBuf>,
    /// What the run ended with, for the process's exit status.
    pub outcome: Arc<Mutex<Option<Result<String, String>>>>,
}

pub struct ChatApp {
    worker: Worker,
    model_dir: String,
    model: Option<ModelInfo>,
    status: String,
    error: Option<String>,
    prompt: String,
    settings: Settings,
    text: String,
    columns: Vec<Column>,
    generating: bool,
    /// Time to first token and the prompt tokens read before it.
    ttft: Option<(f64, usize)>,
    /// Decode steps and their seconds, the prompt excluded.
    speed: Option<(usize, f64)>,
    frames: FrameClock,
    auto: Option<Auto>,
    auto_started: bool,
    screenshot_requested: bool,
}

impl ChatApp {
    pub fn new(worker: Worker, model_dir: PathBuf, auto: Option<Auto>) -> Self {
        let _ = worker.commands.send(Command::Load(model_dir.clone()));
        let mut settings = Settings {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            max_tokens: 128,
            seed: 0,
        };
        let mut prompt = "Once upon a time".to_string();
        if let Some(a) = &auto {
            prompt = a.prompt.clone();
            settings.max_tokens = a.max_tokens;
        }
        ChatApp {
            worker,
            model_dir: model_dir.display().to_string(),
            model: None,
            status: "loading…".into(),
            error: None,
            prompt,
            settings,
            text: String::new(),
            columns: Vec::new(),
            generating: false,
            ttft: None,
            speed: None,
            frames: FrameClock::default(),
            auto,
            auto_started: false,
            screenshot_requested: false,
        }
    }

    fn poll(&mut self, ctx: &egui::Context) {
        while let Ok(e) = self.worker.events.try_recv() {
            match e {
                Event::Loading(dir) => {
                    self.status = format!("loading {} …", dir.display());
                    self.model = None;
                }
                Event::Loaded(info) => {
                    self.status = info.summary.clone();
                    // The model's sampling defaults, but the seed and, for a prompt given
                    // on the command line, its token budget stay.
                    self.settings = Settings {
                        seed: self.settings.seed,
                        max_tokens: match &self.auto {
                            Some(a) => a.max_tokens,
                            None => info.defaults.max_tokens,
                        },
                        ..info.defaults.clone()
                    };
                    self.model = Some(info);
                    self.error = None;
                    if let Some(a) = self.auto.as_ref().filter(|_| !self.auto_started) {
                        self.auto_started = true;
                        let _ = self.worker.commands.send(Command::Generate {
                            prompt: a.prompt.clone(),
                            settings: self.settings.clone(),
                        });
                    }
                }
                Event::Started { fresh } => {
                    if fresh {
                        self.text = self.prompt.clone();
                        self.columns.clear();
                        self.ttft = None;
                    }
                    self.generating = true;
                    self.error = None;
                    self.frames.start();
                }
                Event::Token { text } => {
                    self.text += &text;
                    self.columns.push(Column { text, layers: None });
                }
                Event::Routing { index, layers } => {
                    if let Some(c) = self.columns.get_mut(index) {
                        c.layers = Some(layers);
                    }
                }
                Event::Reading { read, total } => {
                    self.status = format!("reading the prompt: {read} of {total} tokens");
                }
                Event::FirstToken {
                    seconds,
                    prompt_tokens,
                } => {
                    self.ttft = Some((seconds, prompt_tokens));
                    self.status = format!("generating after a prompt of {prompt_tokens} tokens…");
                }
                Event::Finished {
                    reason,
                    tokens,
                    seconds,
                    steps,
                    step_seconds,
                } => {
                    self.generating = false;
                    self.frames.stop();
                    self.speed = Some((steps, step_seconds));
                    self.status = format!("{reason}: {tokens} tokens in {seconds:.2} s");
                    self.request_screenshot(ctx);
                }
                Event::Failed(message) => {
                    self.generating = false;
                    self.frames.stop();
                    if let Some(a) = self.auto.as_ref().filter(|a| a.screenshot.is_some()) {
                        *a.outcome.lock().expect("outcome poisoned") = Some(Err(message.clone()));
                        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                    }
                    self.error = Some(message);
                }
            }
        }
    }

    /// Asks for a screenshot of the next frame; its callback writes the PNG and closes.
    fn request_screenshot(&mut self, ctx: &egui::Context) {
        let Some((a, path)) = self
            .auto
            .as_ref()
            .and_then(|a| Some((a, a.screenshot.clone()?)))
        else {
            return;
        };
        if self.screenshot_requested {
            return;
        }
        self.screenshot_requested = true;
        let ttft = match self.ttft {
            Some((t, _)) => format!("{t:.3} s"),
            None => "none (no token generated)".to_string(),
        };
        let report = format!(
            "frames drawn during generation: {}\n95th-percentile frame time: {:.1} ms\n\
             time to first token: {ttft}\ndecode: {}\n{}",
            self.frames.count(),
            self.frames.percentile_ms(0.95),
            self.decode_speed(),
            self.status
        );
        let outcome = a.outcome.clone();
        let ctx2 = ctx.clone();
        ctx.request_screenshot(move |image| {
            let result = crate::frames::save_png(&path, &image)
                .map(|()| format!("{report}\nscreenshot: {}", path.display()));
            *outcome.lock().expect("outcome poisoned") = Some(result);
            ctx2.send_viewport_cmd(egui::ViewportCommand::Close);
            ctx2.request_repaint();
        });
        ctx.request_repaint();
    }

    /// Tokens per second of the last run's decode steps (the prompt's reading excluded).
    fn decode_speed(&self) -> String {
        match self.speed {
            Some((n, s)) if n > 0 && s > 0.0 => {
                format!("{:.1} tokens/s ({n} steps)", n as f64 / s)
            }
            _ => "–".to_string(),
        }
    }

    fn controls(&mut self, ui: &mut egui::Ui) {
        ui.heading("Sampling");
        ui.add(egui::Slider::new(&mut self.settings.temperature, 0.0..=2.0).text("temperature"));
        ui.add(egui::Slider::new(&mut self.settings.top_k, 0..=200).text("top-k (0: all)"));
        ui.add(egui::Slider::new(&mut self.settings.top_p, 0.05..=1.0).text("top-p"));
        ui.add(egui::Slider::new(&mut self.settings.max_tokens, 1..=2048).text("max tokens"));
        ui.horizontal(|ui| {
            ui.label("seed");
            ui.add(egui::DragValue::new(&mut self.settings.seed));
        });
        ui.separator();
        let ready = self.model.is_some();
        ui.horizontal(|ui| {
            if ui
                .add_enabled(ready && !self.generating, egui::Button::new("Generate"))
                .clicked()
            {
                let _ = self.worker.commands.send(Command::Generate {
                    prompt: self.prompt.clone(),
                    settings: self.settings.clone(),
                });
            }
            if ui
                .add_enabled(self.generating, egui::Button::new("Stop"))
                .clicked()
            {
                self.worker.stop.store(true, Ordering::SeqCst);
            }
            if ui
                .add_enabled(
                    ready && !self.generating && !self.columns.is_empty(),
                    egui::Button::new("Continue"),
                )
                .clicked()
            {
                let _ = self.worker.commands.send(Command::Continue {
                    settings: self.settings.clone(),
                });
            }
        });
        ui.separator();
        ui.heading("Speed");
        match self.ttft {
            Some((t, n)) => ui.label(format!(
                "time to first token: {:.0} ms (a prompt of {n} tokens)",
                t * 1e3
            )),
            None => ui.label("time to first token: –"),
        };
        ui.label(format!("decode: {}", self.decode_speed()));
        ui.label(format!(
            "frames while generating: {} (p95 {:.1} ms)",
            self.frames.count(),
            self.frames.percentile_ms(0.95)
        ));
    }
}

impl eframe::App for ChatApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.frames.tick(Instant::now());
        self.poll(&ctx);
        if self.generating || self.screenshot_requested {
            // Keep drawing while the engine decodes: the frames interleave with its steps.
            ctx.request_repaint();
        }
        egui::Panel::top("model").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.label("model directory");
                ui.add(egui::TextEdit::singleline(&mut self.model_dir).desired_width(360.0));
                if ui
                    .add_enabled(!self.generating, egui::Button::new("Load"))
                    .clicked()
                {
                    let _ = self
                        .worker
                        .commands
                        .send(Command::Load(PathBuf::from(self.model_dir.trim())));
                }
                ui.label(&self.status);
            });
            if let Some(e) = &self.error {
                ui.colored_label(
                    egui::Color32::from_rgb(255, 110, 110),
                    format!("error: {e}"),
                );
            }
        });
        egui::Panel::left("controls")
            .default_size(250.0)
            .show(ui, |ui| self.controls(ui));
        if let Some(info) = self.model.as_ref().filter(|m| m.experts > 0) {
            let (layers, experts) = (info.layers, info.experts);
            egui::Panel::bottom("router")
                .resizable(true)
                .default_size(layers as f32 * (experts as f32 + 1.6) * 11.0 + 40.0)
                .show(ui, |ui| {
                    ui.label(
                        "Router: per token (columns) and layer, d_t (magenta) and the experts \
                         chosen, by weight (blue: mLSTM group, orange: sLSTM group). Hover a \
                         column for its numbers.",
                    );
                    router_view::show(ui, &self.columns, layers, experts);
                });
        }
        egui::CentralPanel::default().show(ui, |ui| {
            ui.label("Prompt");
            // A long prompt scrolls in its own box, at most a third of the panel, so the
            // generated text stays in view.
            egui::ScrollArea::vertical()
                .id_salt("prompt")
                .max_height((ui.available_height() / 3.0).max(60.0))
                .show(ui, |ui| {
                    ui.add(
                        egui::TextEdit::multiline(&mut self.prompt)
                            .desired_rows(3)
                            .desired_width(f32::INFINITY),
                    );
                });
            ui.separator();
            egui::ScrollArea::vertical()
                .stick_to_bottom(true)
                .auto_shrink([false, false])
                .show(ui, |ui| {
                    ui.add(egui::Label::new(egui::RichText::new(&self.text).monospace()).wrap());
                });
        });
    }
}

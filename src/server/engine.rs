//! The engine threads: continuous batching over each model replica's sequence slots.
//!
//! One engine thread per replica (a copy of the model on a device of its own, see
//! [`Context::replica`](crate::Context::replica)); the handle sends each job to the engine
//! with the fewest slots claimed by its queued and running jobs, and every engine shares
//! one prefix cache (snapshots are host memory, valid on any replica).
//!
//! Each turn of its loop: take the requests that arrived; drop those whose client went
//! away (their slots are free again within one step); admit waiting requests while slots
//! are free, starting each from the longest cached prefix of its prompt; prefill ONE chunk
//! of one admitted prompt (round robin), in the same step as the next chunk of every other
//! prompt being read whose chunk is as long, so a long prompt never stalls the running
//! streams for more than a chunk and prompts that arrive together are read together; then
//! one batched decode step for every running sequence. Tokens are sampled on the host from
//! the step's logits, each sequence with its own random stream, so a seeded request draws
//! the same tokens whoever it is batched with.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::cache::PrefixCache;
use super::metrics::Metrics;
use crate::error::{Error, Result};
use crate::runtime::generate::{Emitter, Finish, GenerateOptions, Piece};
use crate::runtime::sampler::{Sampled, Sampler, SamplerSettings};
use crate::runtime::{Model, Session, Snapshot};

/// One request for the engine: a tokenized prompt and how to continue it.
pub(crate) struct Job {
    pub prompt: Vec<u32>,
    /// Choices (independent continuations).
    pub n: usize,
    pub max_tokens: usize,
    pub settings: SamplerSettings,
    pub stop: Vec<String>,
    pub stop_at_eos: bool,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
}

/// What the engine reports about a job, in order.
#[derive(Debug)]
pub(crate) enum Event {
    /// The prompt has been read; `cached` of its tokens came from the prefix cache.
    Prefilled { cached: usize },
    /// A generated token of one choice and the text it completes.
    Token {
        choice: usize,
        piece: Piece,
        sampled: Sampled,
    },
    /// A choice ended.
    Finished { choice: usize, reason: Finish },
    /// The job failed (every choice ends).
    Failed(String),
}

/// Slots a job claims on the engine it was sent to, given back when the job leaves that
/// engine (finished, failed, cancelled or drained: whenever it is dropped), and, for a job
/// that could not start at once, its place in the shared queue, given back when it starts
/// or leaves.
pub(crate) struct Claim {
    load: Arc<AtomicUsize>,
    n: usize,
    /// The shared count of waiting jobs, while this job is one of them.
    waiting: Option<Arc<AtomicUsize>>,
}

impl Claim {
    /// The job has started: it no longer waits.
    fn started(&mut self) {
        if let Some(w) = self.waiting.take() {
            w.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.started();
        self.load.fetch_sub(self.n, Ordering::SeqCst);
    }
}

/// Messages to an engine thread.
pub(crate) enum Command {
    Submit(Job, Claim),
    /// Stop admitting; end running jobs with an error at the deadline.
    Drain {
        deadline: Instant,
    },
}

/// One engine as the handle sees it: its channel, its slots and the slots its jobs claim.
#[derive(Clone)]
struct Link {
    tx: Sender<Command>,
    slots: usize,
    load: Arc<AtomicUsize>,
}

/// The handlers' side of the engines: submission with a bounded queue.
#[derive(Clone)]
pub(crate) struct EngineHandle {
    links: Vec<Link>,
    /// Jobs accepted that wait for slots (on all engines together).
    waiting: Arc<AtomicUsize>,
    queue_limit: usize,
    /// Held while a request's jobs are placed, so that requests are placed one at a time.
    placing: Arc<Mutex<()>>,
}

/// Why a request's jobs were not accepted.
pub(crate) enum Rejected {
    /// The queue cannot take the jobs that would have to wait.
    Busy { waiting: usize, more: usize },
    /// The engine has stopped (shutting down).
    Closed,
}

impl EngineHandle {
    /// Queues a request's jobs, all or none: each on the engine with the fewest claimed
    /// slots at that moment. The jobs that find no free slots wait; the request is refused
    /// when they would take the waiting jobs past `queue_limit` (on all engines together).
    pub fn submit(&self, jobs: Vec<Job>) -> std::result::Result<(), Rejected> {
        let _placing = self.placing.lock().expect("submission lock poisoned");
        let mut loads: Vec<usize> = self
            .links
            .iter()
            .map(|l| l.load.load(Ordering::SeqCst))
            .collect();
        // Where each job goes and whether it waits there: an engine starts its jobs in
        // arrival order while their choices fit, so a job whose engine has all claims,
        // its own included, within its slots starts at once.
        let placed: Vec<(usize, bool)> = jobs
            .iter()
            .map(|job| {
                let i = (0..loads.len())
                    .min_by_key(|&i| loads[i])
                    .expect("at least one engine");
                loads[i] += job.n;
                (i, loads[i] > self.links[i].slots)
            })
            .collect();
        let more = placed.iter().filter(|(_, waits)| *waits).count();
        let waiting = self.waiting.load(Ordering::SeqCst);
        if waiting + more > self.queue_limit {
            return Err(Rejected::Busy { waiting, more });
        }
        for (job, (i, waits)) in jobs.into_iter().zip(placed) {
            let link = &self.links[i];
            link.load.fetch_add(job.n, Ordering::SeqCst);
            if waits {
                self.waiting.fetch_add(1, Ordering::SeqCst);
            }
            let claim = Claim {
                load: link.load.clone(),
                n: job.n,
                waiting: waits.then(|| self.waiting.clone()),
            };
            // A refused command drops its claim with it (the jobs sent before fail with
            // the shutdown).
            link.tx
                .send(Command::Submit(job, claim))
                .map_err(|_| Rejected::Closed)?;
        }
        Ok(())
    }

    /// Asks every engine to drain (see [`Command::Drain`]).
    pub fn drain(&self, deadline: Instant) {
        for link in &self.links {
            let _ = link.tx.send(Command::Drain { deadline });
        }
    }
}

/// A continuation being generated.
struct Choice {
    session: Session,
    sampler: Sampler,
    emitter: Emitter,
    /// The sampled token to feed next (None once finished).
    next: Option<u32>,
    /// Tokens fed after the prompt.
    fed: Vec<u32>,
    last_token: Instant,
}

/// An admitted job.
struct Running {
    job: Job,
    /// Held while the job runs here; given back as its last event is sent.
    claim: Option<Claim>,
    /// Reading the prompt: the session and how many prompt ids it has consumed.
    prefill: Option<(Session, usize)>,
    /// Prompt ids that came from the prefix cache.
    cached: usize,
    choices: Vec<Choice>,
    first_token: bool,
}

impl Running {
    /// Ends the job with an error, its slots given back first (a client that retries at
    /// once finds them free).
    fn fail(mut self, message: String) {
        self.claim = None;
        let _ = self.job.events.send(Event::Failed(message));
    }
}

/// Engine settings (each engine has its model's `max_sequences` slots).
pub(crate) struct EngineOptions {
    /// Jobs that may wait for a slot.
    pub queue_limit: usize,
    /// Host bytes of the prefix cache (0 = off).
    pub cache_bytes: usize,
}

/// Starts one engine thread per model replica.
pub(crate) fn start(
    replicas: Vec<Arc<Model>>,
    options: EngineOptions,
    metrics: Arc<Metrics>,
) -> Result<(EngineHandle, Vec<std::thread::JoinHandle<()>>)> {
    let waiting = Arc::new(AtomicUsize::new(0));
    let cache = Arc::new(Mutex::new(PrefixCache::new(options.cache_bytes)));
    let mut links = Vec::new();
    let mut threads = Vec::new();
    for (i, model) in replicas.into_iter().enumerate() {
        let (tx, rx) = std::sync::mpsc::channel();
        let load = Arc::new(AtomicUsize::new(0));
        let slots = model.options().max_sequences;
        links.push(Link { tx, slots, load });
        let engine = Engine {
            cache: cache.clone(),
            slots,
            model,
            rx,
            metrics: metrics.clone(),
            shown: Shown::default(),
            queue: VecDeque::new(),
            running: Vec::new(),
            next_prefill: 0,
            draining: None,
            closed: false,
        };
        let thread = std::thread::Builder::new()
            .name(format!("moxe-engine-{i}"))
            .spawn(move || engine.run())
            .map_err(|e| Error::InvalidArgument(format!("cannot start an engine thread: {e}")))?;
        threads.push(thread);
    }
    let handle = EngineHandle {
        links,
        waiting,
        queue_limit: options.queue_limit,
        placing: Arc::new(Mutex::new(())),
    };
    Ok((handle, threads))
}

/// What one engine last added to the shared gauges (each engine adds its own part).
#[derive(Default)]
struct Shown {
    queue: i64,
    busy: i64,
}

struct Engine {
    model: Arc<Model>,
    rx: Receiver<Command>,
    metrics: Arc<Metrics>,
    slots: usize,
    shown: Shown,
    cache: Arc<Mutex<PrefixCache>>,
    queue: VecDeque<(Job, Claim)>,
    running: Vec<Running>,
    next_prefill: usize,
    draining: Option<Instant>,
    /// No more commands can arrive.
    closed: bool,
}

impl Engine {
    fn run(mut self) {
        loop {
            self.receive();
            self.drop_cancelled();
            if let Some(deadline) = self.draining {
                if Instant::now() >= deadline {
                    for r in self.running.drain(..) {
                        r.fail("the server is shutting down".into());
                    }
                }
            }
            self.admit();
            self.show();
            if self.running.is_empty() && self.queue.is_empty() {
                if self.closed || self.draining.is_some() {
                    return;
                }
                continue;
            }
            if let Err(e) = self.turn() {
                // A device error ends every running job: report it to each.
                log::error!("engine step failed: {e}");
                for r in self.running.drain(..) {
                    r.fail(e.to_string());
                }
            }
            self.show();
        }
    }

    /// Takes the commands that arrived; waits for one when there is nothing to do.
    fn receive(&mut self) {
        let idle = self.running.is_empty() && self.queue.is_empty();
        if idle && !self.closed && self.draining.is_none() {
            match self.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(c) => self.command(c),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
        loop {
            match self.rx.try_recv() {
                Ok(c) => self.command(c),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            }
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Submit(job, claim) => {
                if self.draining.is_some() {
                    let _ = job
                        .events
                        .send(Event::Failed("the server is shutting down".into()));
                } else {
                    self.queue.push_back((job, claim));
                }
            }
            Command::Drain { deadline } => {
                self.draining = Some(deadline);
                for (job, _) in self.queue.drain(..) {
                    let _ = job
                        .events
                        .send(Event::Failed("the server is shutting down".into()));
                }
            }
        }
        self.show();
    }

    /// Adds this engine's queued jobs and busy slots to the shared gauges (as the change
    /// since it last did).
    fn show(&mut self) {
        let queue = self.queue.len() as i64;
        let busy = self.busy_slots() as i64;
        self.metrics.queue_depth.inc_by(queue - self.shown.queue);
        self.metrics.busy_slots.inc_by(busy - self.shown.busy);
        self.shown = Shown { queue, busy };
    }

    /// Forgets the jobs whose client has gone (their sessions, and slots, are dropped).
    fn drop_cancelled(&mut self) {
        self.queue.retain(|(j, _)| !j.events.is_closed());
        self.running.retain(|r| !r.job.events.is_closed());
        self.show();
    }

    fn busy_slots(&self) -> usize {
        self.running.iter().map(|r| r.job.n).sum()
    }

    /// Starts waiting jobs while their choices fit the free slots (in arrival order).
    fn admit(&mut self) {
        while let Some((job, _)) = self.queue.front() {
            if self.busy_slots() + job.n > self.slots {
                break;
            }
            let (job, mut claim) = self.queue.pop_front().expect("front exists");
            claim.started();
            self.show();
            self.metrics.prompt_tokens.inc_by(job.prompt.len() as u64);
            let mut running = Running {
                job,
                claim: Some(claim),
                prefill: None,
                cached: 0,
                choices: Vec::new(),
                first_token: false,
            };
            match self.start(&mut running) {
                Ok(()) => self.running.push(running),
                Err(e) => {
                    running.fail(e.to_string());
                }
            }
        }
    }

    /// A job's session, from the longest cached prefix of its prompt when there is one.
    fn start(&mut self, running: &mut Running) -> Result<()> {
        let mut cache = self.cache.lock().expect("prefix cache poisoned");
        let hit = cache.lookup(&running.job.prompt).map(|h| {
            (
                h.len,
                Session::from_snapshot(&self.model, h.snapshot),
                h.logits.map(<[f32]>::to_vec),
            )
        });
        drop(cache);
        match hit {
            Some((len, session, logits)) => {
                let session = session?;
                self.metrics.cache_hits.inc();
                self.metrics.cached_tokens.inc_by(len as u64);
                running.cached = len;
                if len == running.job.prompt.len() {
                    let _ = running.job.events.send(Event::Prefilled { cached: len });
                    let logits = logits.unwrap_or_default();
                    begin_choices(&self.model, &self.metrics, running, session, &logits)?;
                } else {
                    running.prefill = Some((session, len));
                }
            }
            None => {
                self.metrics.cache_misses.inc();
                running.prefill = Some((Session::new(&self.model)?, 0));
            }
        }
        Ok(())
    }

    /// One turn: a prefill chunk of one job, then one decode step of all.
    fn turn(&mut self) -> Result<()> {
        self.prefill_one()?;
        self.decode()?;
        // Finished jobs leave; the state of the first choice is cached for continuations.
        let mut i = 0;
        while i < self.running.len() {
            let done = self.running[i].prefill.is_none()
                && self.running[i].choices.iter().all(|c| c.next.is_none());
            if done {
                let r = self.running.swap_remove(i);
                self.cache_after(&r);
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Prefills the next chunk of the next job (round robin) that is reading its prompt,
    /// together with the following such jobs whose next chunk is as long, up to one
    /// chunk's rows in all (one batched step: each session ends where its own prefill
    /// would, bit for bit). Chunks are the model's
    /// `prefill_chunk` tokens, and the last one the rest, so a prompt is cut as
    /// [`Session::feed`] cuts it whatever else runs.
    fn prefill_one(&mut self) -> Result<()> {
        let n = self.running.len();
        let Some(i) = (0..n)
            .map(|k| (self.next_prefill + k) % n)
            .find(|&i| self.running[i].prefill.is_some())
        else {
            return Ok(());
        };
        self.next_prefill = i + 1;
        let chunk = self.model.options().prefill_chunk;
        let piece = |r: &Running| {
            r.prefill
                .as_ref()
                .map(|(_, fed)| (r.job.prompt.len() - fed).min(chunk))
        };
        let len = piece(&self.running[i]).expect("found above");
        // The round robin's pick and the next ones in turn with as long a chunk, as many as
        // one chunk's rows hold (so no step is larger than a solo prefill's), in index order.
        let mut batch: Vec<usize> = (0..n)
            .map(|k| (i + k) % n)
            .filter(|&j| piece(&self.running[j]) == Some(len))
            .take(chunk / len)
            .collect();
        batch.sort_unstable();
        let mut taken: Vec<(Session, usize)> = batch
            .iter()
            .map(|&j| self.running[j].prefill.take().expect("filtered above"))
            .collect();
        let ids: Vec<u32> = batch
            .iter()
            .zip(&taken)
            .flat_map(|(&j, &(_, fed))| self.running[j].job.prompt[fed..fed + len].to_vec())
            .collect();
        let result = {
            let mut sessions: Vec<&mut Session> = taken.iter_mut().map(|(s, _)| s).collect();
            self.model.feed_logits_batch(&mut sessions, &ids)
        };
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // Descending, so that swap_remove leaves the lower indices in place.
                for &j in batch.iter().rev() {
                    self.running.swap_remove(j).fail(e.to_string());
                }
                return Ok(());
            }
        };
        let v = self.model.vocab();
        for (k, &j) in batch.iter().enumerate().rev() {
            let (session, fed) = taken.pop().expect("one per job");
            if fed + len < self.running[j].job.prompt.len() {
                self.running[j].prefill = Some((session, fed + len));
                continue;
            }
            let r = self.running.swap_remove(j);
            self.prefilled(r, session, &logits[k * v..(k + 1) * v])?;
        }
        Ok(())
    }

    /// A job whose prompt has been read: caches the state, then starts its choices.
    fn prefilled(&mut self, mut r: Running, session: Session, logits: &[f32]) -> Result<()> {
        if self.cache_admits() {
            let snapshot = session.snapshot()?;
            self.cache_insert(r.job.prompt.clone(), snapshot, Some(logits.to_vec()));
        }
        let _ = r.job.events.send(Event::Prefilled { cached: r.cached });
        match begin_choices(&self.model, &self.metrics, &mut r, session, logits) {
            Ok(()) => self.running.push(r),
            Err(e) => r.fail(e.to_string()),
        }
        Ok(())
    }

    /// One batched step for every choice with a token to feed.
    fn decode(&mut self) -> Result<()> {
        // Every choice with a token to feed, in one pass: (job, choice), token, session.
        let mut who = Vec::new();
        let mut tokens = Vec::new();
        let mut sessions: Vec<&mut Session> = Vec::new();
        for (ri, r) in self.running.iter_mut().enumerate() {
            for (ci, c) in r.choices.iter_mut().enumerate() {
                if let Some(id) = c.next {
                    who.push((ri, ci));
                    tokens.push(id);
                    sessions.push(&mut c.session);
                }
            }
        }
        if tokens.is_empty() {
            return Ok(());
        }
        let logits = self.model.step_logits(&mut sessions, &tokens)?;
        drop(sessions);
        let v = self.model.vocab();
        for (k, &(ri, ci)) in who.iter().enumerate() {
            let r = &mut self.running[ri];
            r.choices[ci].fed.push(tokens[k]);
            let sampled = r.choices[ci].sampler.sample(&logits[k * v..(k + 1) * v]);
            accept(&self.model, &self.metrics, r, ci, sampled)?;
        }
        Ok(())
    }

    /// Caches the state of a finished job's first choice: the prompt and the tokens fed
    /// after it (all but the last generated one).
    fn cache_after(&mut self, r: &Running) {
        let Some(c) = r.choices.first() else { return };
        if c.fed.is_empty() || !self.cache_admits() {
            return;
        }
        let mut ids = r.job.prompt.clone();
        ids.extend(&c.fed);
        // Without the logits after the last fed token (the last generated token was drawn
        // from them), this entry serves only strictly longer prompts.
        if let Ok(snapshot) = c.session.snapshot() {
            self.cache_insert(ids, snapshot, None);
        }
    }

    /// Whether the shared prefix cache takes a state of this model's size.
    fn cache_admits(&self) -> bool {
        let bytes = self.model.state_bytes_per_sequence() as usize;
        self.cache
            .lock()
            .expect("prefix cache poisoned")
            .admits(bytes)
    }

    fn cache_insert(&self, ids: Vec<u32>, snapshot: Snapshot, logits: Option<Vec<f32>>) {
        let mut cache = self.cache.lock().expect("prefix cache poisoned");
        cache.insert(ids, snapshot, logits);
    }
}

/// The job's choices after its prompt: the first continues `session`, the others forks
/// of it; each draws its first token from `logits`.
fn begin_choices(
    model: &Model,
    metrics: &Metrics,
    r: &mut Running,
    session: Session,
    logits: &[f32],
) -> Result<()> {
    let tokenizer = model.require_tokenizer()?;
    let mut sessions = Vec::with_capacity(r.job.n);
    for _ in 1..r.job.n {
        sessions.push(session.fork()?);
    }
    sessions.insert(0, session);
    for (i, session) in sessions.into_iter().enumerate() {
        r.choices.push(Choice {
            session,
            sampler: Sampler::new(r.job.settings.clone(), i as u64),
            emitter: Emitter::new(tokenizer, &r.job.prompt),
            next: None,
            fed: Vec::new(),
            last_token: Instant::now(),
        });
    }
    for i in 0..r.choices.len() {
        let sampled = r.choices[i].sampler.sample(logits);
        accept(model, metrics, r, i, sampled)?;
    }
    Ok(())
}

/// Emits choice `i`'s sampled token; sets `next` unless the choice has ended.
fn accept(
    model: &Model,
    metrics: &Metrics,
    r: &mut Running,
    i: usize,
    sampled: Sampled,
) -> Result<()> {
    let tokenizer = model.require_tokenizer()?;
    let opts = GenerateOptions {
        max_tokens: r.job.max_tokens,
        stop: r.job.stop.clone(),
        stop_at_eos: r.job.stop_at_eos,
        ..GenerateOptions::default()
    };
    let now = Instant::now();
    if !r.first_token {
        r.first_token = true;
        metrics
            .time_to_first_token
            .observe((now - r.job.arrived).as_secs_f64());
    } else {
        metrics
            .token_latency
            .observe((now - r.choices[i].last_token).as_secs_f64());
    }
    metrics.generated_tokens.inc();
    let c = &mut r.choices[i];
    c.last_token = now;
    let piece = c.emitter.accept(tokenizer, &opts, sampled.id)?;
    let id = sampled.id;
    let _ = r.job.events.send(Event::Token {
        choice: i,
        piece,
        sampled,
    });
    match c.emitter.finish {
        Some(reason) => {
            c.next = None;
            // The job's last choice has ended: its slots are given back before the client
            // hears of it, so that a request sent at once is placed on them (the job
            // itself leaves the engine at the end of this turn, before any admission).
            if r.choices.iter().all(|c| c.emitter.finish.is_some()) {
                r.claim = None;
            }
            let _ = r.job.events.send(Event::Finished { choice: i, reason });
        }
        None => c.next = Some(id),
    }
    Ok(())
}

//! Sessions: one sequence's recurrent state, held in a slot of the model. The state has a
//! constant size whatever the sequence's length, so a session can be saved to a file and
//! resumed later, or forked into two continuations.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use safetensors::tensor::{Dtype, TensorView};

use super::continuation::{Continuation, Resume};
use super::model::{Model, StateArray};
use super::runner::{Output, StepKey, StepResult};
use super::tokenizer::check_ids;
use crate::arch::moxe::{MoeStep, RouterTelemetry};
use crate::checkpoint::Weights;
use crate::error::{Error, Result};
use crate::ops::sample::{settings_words, Sampling};

/// One sequence being read or generated.
pub struct Session {
    model: Arc<Model>,
    slot: usize,
    /// Tokens consumed so far.
    position: usize,
    /// Sampling draws so far (varies the random draw from step to step).
    draws: u32,
    /// What an empty prompt goes on from.
    pub(crate) continuation: Continuation,
}

impl Session {
    /// A fresh session (zero state).
    pub fn new(model: &Arc<Model>) -> Result<Self> {
        let slot = model.take_slot()?;
        Ok(Session {
            model: model.clone(),
            slot,
            position: 0,
            draws: 0,
            continuation: Continuation::default(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Tokens consumed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Feeds `ids` and samples the token that follows them. Long inputs run in chunks of
    /// at most `prefill_chunk` tokens (powers of two), each one submission. When the last
    /// generation on this session ended on a token it handed out without feeding it, that
    /// token is read first, so that the state holds all the text generated (as
    /// [`Session::feed_logits`] does; [`Session::logits`], [`Session::score`] and the batch
    /// steps read exactly their ids and drop it).
    pub fn feed(&mut self, ids: &[u32], sampling: &Sampling) -> Result<u32> {
        let sampled = self.feed_watched(ids, sampling, None)?;
        Ok(sampled.expect("an unwatched feed runs to its end"))
    }

    /// [`Session::feed`] under the caller's eye, for long prompts in interactive use:
    /// before each chunk `go_on(read, total)` is asked whether to continue, with the ids
    /// read so far (each chunk is waited for, so `read` is what the device has done). It
    /// returns None where `go_on` said stop; the session has then read the first
    /// [`Session::position`] ids (whole chunks, exactly as a feed of them alone would).
    /// The chunks and the result are those of `feed` (`read` and `total` count a pending
    /// generated token it reads first).
    pub fn feed_watched(
        &mut self,
        ids: &[u32],
        sampling: &Sampling,
        go_on: Option<&mut dyn FnMut(usize, usize) -> bool>,
    ) -> Result<Option<u32>> {
        sampling.validate()?;
        let words = settings_words(sampling, self.draws);
        let Some(r) = self.feed_chunks(ids, Output::Sample, &words, go_on)? else {
            return Ok(None);
        };
        self.draws += 1;
        let next = r.sampled[0];
        self.continuation.point = Some(Resume::Sampled(next));
        Ok(Some(next))
    }

    /// Feeds `ids` (in chunks, as [`Session::feed`], and after a pending generated token
    /// as it does) and returns the logits (V) after the last of them, for sampling on the
    /// host.
    pub fn feed_logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let r = self.feed_chunks(ids, Output::Logits, &[], None)?;
        Ok(r.expect("an unwatched feed runs to its end").logits)
    }

    /// Runs `ids` through the model in chunks; only the last chunk's result is read, or,
    /// watched, every chunk is waited for and `go_on` asked before it (None: stopped).
    fn feed_chunks(
        &mut self,
        ids: &[u32],
        output: Output,
        input: &[u32],
        mut go_on: Option<&mut dyn FnMut(usize, usize) -> bool>,
    ) -> Result<Option<StepResult>> {
        // A generation's last token, handed out but not read, comes before the new input.
        let joined: Vec<u32>;
        let ids = match self.continuation.point {
            Some(Resume::Unfed(id)) => {
                joined = [&[id], ids].concat();
                &joined[..]
            }
            _ => ids,
        };
        if ids.is_empty() {
            return Err(Error::InvalidArgument(
                "nothing to feed: the input has no tokens".into(),
            ));
        }
        check_ids(ids, self.model.vocab())?;
        let chunks = chunks(ids, self.model.options.prefill_chunk);
        let mut result = StepResult::default();
        let mut read = 0;
        for (i, chunk) in chunks.iter().enumerate() {
            if let Some(go_on) = go_on.as_mut() {
                if !go_on(read, ids.len()) {
                    return Ok(None);
                }
            }
            let key = StepKey {
                seqs: 1,
                tokens: chunk.len(),
                output,
            };
            // The others are submitted unread (queue order keeps them before the last);
            // watched, each is waited for (not read: a feed reads only its last chunk).
            let last = i + 1 == chunks.len();
            // Before the state moves (also when the run fails midway).
            self.continuation.point = None;
            result = run(&self.model, key, chunk, &[self.slot as u32], input, last)?;
            if go_on.is_some() && !last {
                self.model.ctx.wait("reading a prompt chunk")?;
            }
            self.moved(chunk);
            read += chunk.len();
        }
        Ok(Some(result))
    }

    /// Feeds `ids` and returns the NLL of each `targets[i]` given `ids[..=i]` (for
    /// perplexity: targets are the ids shifted by one).
    pub fn score(&mut self, ids: &[u32], targets: &[u32]) -> Result<Vec<f32>> {
        if ids.len() != targets.len() {
            return Err(Error::mismatch("scoring targets", ids.len(), targets.len()));
        }
        check_ids(ids, self.model.vocab())?;
        check_ids(targets, self.model.vocab())?;
        let mut out = Vec::with_capacity(ids.len());
        let mut start = 0;
        for chunk in chunks(ids, self.model.options.prefill_chunk) {
            let key = StepKey {
                seqs: 1,
                tokens: chunk.len(),
                output: Output::Score,
            };
            let t = &targets[start..start + chunk.len()];
            self.continuation.point = None;
            let r = run(&self.model, key, chunk, &[self.slot as u32], t, true)?;
            out.extend(r.nll);
            start += chunk.len();
            self.moved(chunk);
        }
        Ok(out)
    }

    /// Feeds `ids` and returns the logits (ids.len(), V) after each of them.
    pub fn logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        check_ids(ids, self.model.vocab())?;
        let mut out = Vec::with_capacity(ids.len() * self.model.vocab());
        for chunk in chunks(ids, self.model.options.prefill_chunk) {
            let key = StepKey {
                seqs: 1,
                tokens: chunk.len(),
                output: Output::Score,
            };
            // Targets do not matter here: the NLL is computed but not read.
            let targets = vec![0; chunk.len()];
            self.continuation.point = None;
            let mut runner = self.model.runner();
            let g = runner.graph(&self.model, key)?;
            g.run(&self.model, chunk, &[self.slot as u32], &targets, false)?;
            let logits = g.logits.to_f32()?;
            super::runner::check_logits(&logits, self.model.vocab())?;
            out.extend(logits);
            runner.last = Some(key);
            drop(runner);
            self.moved(chunk);
        }
        Ok(out)
    }

    /// A second session continuing from this one's state.
    pub fn fork(&self) -> Result<Session> {
        let slot = self.model.take_slot()?;
        self.model.copy_slot(self.slot, slot)?;
        Ok(Session {
            model: self.model.clone(),
            slot,
            position: self.position,
            draws: self.draws,
            continuation: self.continuation.clone(),
        })
    }

    /// A copy of the state in host memory, to continue from later with
    /// [`Session::from_snapshot`] (any number of times), with where the last feed or
    /// generation stopped (for an empty prompt to go on from).
    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            arrays: self.model.read_slot(self.slot)?,
            position: self.position,
            draws: self.draws,
            continuation: self.continuation.clone(),
            model: fingerprint(&self.model),
        })
    }

    /// A session continuing from `snapshot`, taken from a session of this model.
    pub fn from_snapshot(model: &Arc<Model>, snapshot: &Snapshot) -> Result<Session> {
        if snapshot.model != fingerprint(model) {
            return Err(Error::InvalidArgument(
                "this snapshot was taken from a different model".into(),
            ));
        }
        let arrays: BTreeMap<String, StateArray> = snapshot
            .arrays
            .iter()
            .map(|a| (a.name.clone(), a.clone()))
            .collect();
        let session = Session {
            model: model.clone(),
            slot: model.take_slot()?,
            position: snapshot.position,
            draws: snapshot.draws,
            continuation: snapshot.continuation.clone(),
        };
        model.write_slot(session.slot, &arrays)?;
        Ok(session)
    }

    /// Saves the state to a safetensors file (with where the last feed or generation
    /// stopped, as metadata `resume`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let snapshot = self.snapshot()?;
        let views = snapshot
            .arrays
            .iter()
            .map(|a| {
                TensorView::new(Dtype::F32, a.shape.clone(), bytemuck::cast_slice(&a.values))
                    .map(|v| (a.name.clone(), v))
                    .map_err(|e| {
                        Error::file(path, format!("cannot encode state '{}': {e}", a.name))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let meta: HashMap<String, String> = [
            ("format".to_string(), "moxe-session".to_string()),
            ("model".to_string(), snapshot.model.clone()),
            ("position".to_string(), snapshot.position.to_string()),
            ("draws".to_string(), snapshot.draws.to_string()),
            (
                "weights".to_string(),
                format!("{:016x}", self.model.weights_digest),
            ),
        ]
        .into_iter()
        .chain(snapshot.continuation.metadata())
        .collect();
        let data = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::file(path, format!("cannot encode the session: {e}")))?;
        crate::checkpoint::output::write_atomically(path, &data)
    }

    /// Resumes a session saved with [`Session::save`] for the same model.
    pub fn load(model: &Arc<Model>, path: &Path) -> Result<Session> {
        let w = Weights::open(path)?;
        let meta = w.metadata();
        if meta.get("format").map(String::as_str) != Some("moxe-session") {
            return Err(Error::file(
                path,
                "not a moxe session file (no format=moxe-session metadata)",
            ));
        }
        let want = fingerprint(model);
        match meta.get("model") {
            Some(m) if *m == want => {}
            Some(_) => {
                return Err(Error::file(
                    path,
                    "this session was saved from a different model",
                ))
            }
            None => return Err(Error::file(path, "metadata 'model' is missing")),
        }
        let number = |key: &str, most: u64| -> Result<u64> {
            let n: u64 = meta.get(key).and_then(|v| v.parse().ok()).ok_or_else(|| {
                Error::file(path, format!("metadata '{key}' is missing or not a number"))
            })?;
            if n > most {
                return Err(Error::file(
                    path,
                    format!("metadata '{key}' is {n}, past the most a session reaches ({most})"),
                ));
            }
            Ok(n)
        };
        // The same configuration with other weights (another fine-tune, a quantised copy):
        // the state carries over, though what it means may not, so say so and go on.
        let weights = format!("{:016x}", model.weights_digest);
        if meta.get("weights").is_some_and(|w| *w != weights) {
            log::warn!(
                "{}: this session was saved with other weights of the same configuration (a \
                 quantised copy, another fine-tune?); continuing from its state",
                path.display()
            );
        }
        let position = number("position", 1 << 48)? as usize;
        let draws = number("draws", u32::MAX.into())? as u32;
        let mut arrays = Vec::new();
        for name in w.names() {
            let (values, shape) = w.f32_any(name)?;
            let name = name.to_string();
            arrays.push(StateArray {
                name,
                shape,
                values,
            });
        }
        let continuation = Continuation::from_metadata(meta, model.vocab(), path)?;
        let snapshot = Snapshot {
            arrays,
            position,
            draws,
            continuation,
            model: want,
        };
        // The state arrays' names and shapes are the file's.
        Session::from_snapshot(model, &snapshot).map_err(|e| match e {
            Error::Mismatch { .. } | Error::InvalidArgument(_) => Error::file(path, e.to_string()),
            other => other,
        })
    }

    /// The router telemetry of the last step this model ran, per MoxE layer.
    pub fn telemetry(&self) -> Result<Vec<RouterTelemetry>> {
        self.model.last_telemetry()
    }

    pub(crate) fn slot(&self) -> usize {
        self.slot
    }

    /// One decode step read `token`.
    pub(crate) fn advance(&mut self, token: u32) {
        self.moved(&[token]);
        self.draws += 1;
    }

    /// The state has read `ids` more: a stopped generation can no longer be resumed.
    fn moved(&mut self, ids: &[u32]) {
        self.position += ids.len();
        self.continuation.moved(ids);
    }

    pub(crate) fn draws(&self) -> u32 {
        self.draws
    }
}

/// A session's state copied to host memory ([`Session::snapshot`]).
#[derive(Clone)]
pub struct Snapshot {
    arrays: Vec<StateArray>,
    position: usize,
    draws: u32,
    continuation: Continuation,
    model: String,
}

impl Snapshot {
    /// Host bytes it holds.
    pub fn bytes(&self) -> usize {
        self.arrays.iter().map(|a| 4 * a.values.len()).sum()
    }

    /// Tokens consumed by the session it was taken from.
    pub fn position(&self) -> usize {
        self.position
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.model.release_slot(self.slot);
    }
}

/// `ids` split into pieces of at most `max` tokens whose lengths are powers of two (so at
/// most log2(max) + 1 distinct step graphs serve any prompt length).
fn chunks(ids: &[u32], max: usize) -> Vec<&[u32]> {
    let mut rest = ids;
    chunk_lens(ids.len(), max)
        .into_iter()
        .map(|n| {
            let (a, b) = rest.split_at(n);
            rest = b;
            a
        })
        .collect()
}

/// The lengths [`chunks`] cuts `n` ids into: `max` while at least `max` remain, then
/// decreasing powers of two.
fn chunk_lens(n: usize, max: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rest = n;
    while rest > 0 {
        let len = if rest >= max { max } else { 1 << rest.ilog2() };
        out.push(len);
        rest -= len;
    }
    out
}

/// Runs one step of shape `key` ([`StepGraph::run`](super::runner::StepGraph::run)).
pub(crate) fn run(
    model: &Model,
    key: StepKey,
    ids: &[u32],
    slots: &[u32],
    input: &[u32],
    read: bool,
) -> Result<StepResult> {
    let mut runner = model.runner();
    let r = runner
        .graph(model, key)?
        .run(model, ids, slots, input, read)?;
    runner.last = Some(key);
    Ok(r)
}

/// Identifies a model for session files: its configuration and parameter count.
fn fingerprint(model: &Model) -> String {
    let text = format!("{:?}/{}", model.config, model.params.total);
    let h =
        crate::checkpoint::weights::fnv1a(crate::checkpoint::weights::FNV_START, text.as_bytes());
    format!("{h:016x}")
}

impl Model {
    /// Router telemetry of the most recent step, one entry per MoxE layer (empty for a
    /// dense model). Reads GPU buffers: call it only when telemetry is wanted.
    pub fn last_telemetry(&self) -> Result<Vec<RouterTelemetry>> {
        let mut runner = self.runner();
        let Some(key) = runner.last else {
            return Ok(Vec::new());
        };
        let g = runner.graph(self, key)?;
        g.moe.iter().map(|m| m.read_telemetry()).collect()
    }

    /// The state slots of a batch's sessions, each checked to be one of this model's (a
    /// session of another model would step whichever of this model's sessions holds its
    /// slot number).
    fn batch_slots(&self, sessions: &[&mut Session]) -> Result<Vec<u32>> {
        sessions
            .iter()
            .enumerate()
            .map(|(i, s)| match std::ptr::eq(Arc::as_ptr(s.model()), self) {
                true => Ok(s.slot() as u32),
                false => Err(Error::InvalidArgument(format!(
                    "session {i} of the batch belongs to another model: a batch steps sessions \
                     of the model it is called on"
                ))),
            })
            .collect()
    }

    /// Runs `f` on the MoE recordings of the most recent step, one per MoxE layer (empty for
    /// a dense model): their GPU-written routing, group-stage counts and dispatch grids.
    /// Reading them blocks until the device is idle. `f` runs while the model's step graphs
    /// are held: it must not step the model (that would wait for ever).
    pub fn with_last_moe_steps<R>(&self, f: impl FnOnce(&[MoeStep]) -> Result<R>) -> Result<R> {
        let mut runner = self.runner();
        match runner.last {
            None => f(&[]),
            Some(key) => f(&runner.graph(self, key)?.moe),
        }
    }

    /// Feeds `ids[i * n .. (i + 1) * n]` to `sessions[i]` (the same count n of ids each),
    /// all sessions together in each chunk, and returns the logits (V) after the last id of
    /// each, concatenated (B, V). The n ids are cut into chunks as [`Session::feed_logits`]
    /// cuts them, so each session ends in the state a feed of its own ids gives.
    pub fn feed_logits_batch(
        &self,
        sessions: &mut [&mut Session],
        ids: &[u32],
    ) -> Result<Vec<f32>> {
        let b = sessions.len();
        if b == 0 || ids.is_empty() || ids.len() % b != 0 {
            return Err(Error::mismatch(
                "batched prefill ids",
                format!("the same positive count for each of {b} sessions"),
                ids.len(),
            ));
        }
        check_ids(ids, self.vocab())?;
        let n = ids.len() / b;
        let slots = self.batch_slots(sessions)?;
        let lens = chunk_lens(n, self.options.prefill_chunk);
        let mut result = StepResult::default();
        let mut start = 0;
        for s in sessions.iter_mut() {
            s.continuation.point = None;
        }
        for (i, &len) in lens.iter().enumerate() {
            let chunk: Vec<u32> = (0..b)
                .flat_map(|s| ids[s * n + start..s * n + start + len].iter().copied())
                .collect();
            let key = StepKey {
                seqs: b,
                tokens: len,
                output: Output::Logits,
            };
            result = run(self, key, &chunk, &slots, &[], i + 1 == lens.len())?;
            for (s, own) in sessions.iter_mut().zip(chunk.chunks(len)) {
                s.moved(own);
            }
            start += len;
        }
        Ok(result.logits)
    }

    /// One decode step for several sessions at once: feeds `tokens[i]` to `sessions[i]` and
    /// returns the logits (V) after it of each, concatenated (B, V), for sampling on the host.
    pub fn step_logits(&self, sessions: &mut [&mut Session], tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.len() != sessions.len() {
            return Err(Error::mismatch(
                "batch step tokens",
                sessions.len(),
                tokens.len(),
            ));
        }
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        check_ids(tokens, self.vocab())?;
        let slots = self.batch_slots(sessions)?;
        let key = StepKey {
            seqs: tokens.len(),
            tokens: 1,
            output: Output::Logits,
        };
        for s in sessions.iter_mut() {
            s.continuation.point = None;
        }
        let r = run(self, key, tokens, &slots, &[], true)?;
        for (s, &token) in sessions.iter_mut().zip(tokens) {
            s.advance(token);
        }
        Ok(r.logits)
    }

    /// One decode step for several sessions at once: feeds `tokens[i]` to `sessions[i]` and
    /// returns the sampled next token of each.
    pub fn step_batch(
        &self,
        sessions: &mut [&mut Session],
        tokens: &[u32],
        sampling: &[Sampling],
    ) -> Result<Vec<u32>> {
        let b = sessions.len();
        if tokens.len() != b || sampling.len() != b {
            return Err(Error::mismatch(
                "batch step inputs",
                b,
                format!("{} tokens, {} settings", tokens.len(), sampling.len()),
            ));
        }
        if b == 0 {
            return Ok(Vec::new());
        }
        sampling.iter().try_for_each(Sampling::validate)?;
        check_ids(tokens, self.vocab())?;
        let slots = self.batch_slots(sessions)?;
        let words: Vec<u32> = sessions
            .iter()
            .zip(sampling)
            .flat_map(|(s, p)| settings_words(p, s.draws()))
            .collect();
        let key = StepKey {
            seqs: b,
            tokens: 1,
            output: Output::Sample,
        };
        for s in sessions.iter_mut() {
            s.continuation.point = None;
        }
        let r = run(self, key, tokens, &slots, &words, true)?;
        for ((s, &token), &next) in sessions.iter_mut().zip(tokens).zip(&r.sampled) {
            s.advance(token);
            s.continuation.point = Some(Resume::Sampled(next));
        }
        Ok(r.sampled)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::{chunks, Session};
    use crate::ops::sample::Sampling;
    use crate::runtime::{LoadOptions, Model};

    #[test]
    fn a_batch_takes_only_its_own_model_s_sessions_and_checked_settings() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
        let load = |n| {
            let options = LoadOptions {
                max_sequences: n,
                ..Default::default()
            };
            Arc::new(Model::load(crate::testing::gpu(), &dir, &options).unwrap())
        };
        let (a, b) = (load(1), load(2));
        let mut sa = Session::new(&a).unwrap();
        let mut sb = Session::new(&b).unwrap();
        sb.feed(&[1, 2, 3], &Sampling::greedy()).unwrap();
        let state = |s: &Session| -> Vec<Vec<f32>> {
            s.snapshot()
                .unwrap()
                .arrays
                .into_iter()
                .map(|a| a.values)
                .collect()
        };
        let want = state(&sb);
        // A's session (slot 0 of A) through B: refused, B's slot 0 untouched.
        let err = b.step_logits(&mut [&mut sa], &[9]).unwrap_err().to_string();
        assert!(err.contains("belongs to another model"), "{err}");
        assert!(b.feed_logits_batch(&mut [&mut sa], &[9]).is_err());
        let greedy = [Sampling::greedy()];
        assert!(b.step_batch(&mut [&mut sa], &[9], &greedy).is_err());
        assert_eq!(state(&sb), want);
        assert_eq!(sa.position(), 0);
        // Settings are checked as a single session's feed checks them.
        let bad = [Sampling {
            temperature: f32::NAN,
            ..Sampling::greedy()
        }];
        let err = b
            .step_batch(&mut [&mut sb], &[9], &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("temperature"), "{err}");
        // Nothing to generate ends at its length; an empty stop string is refused.
        drop(sa);
        let mut s = Session::new(&a).unwrap();
        let opts = crate::runtime::generate::GenerateOptions {
            max_tokens: 0,
            ..Default::default()
        };
        let mut g = s.generate("Hi", &opts).unwrap();
        assert!(g.next().is_none());
        assert_eq!(
            g.finish(),
            Some(crate::runtime::generate::Finish::MaxTokens)
        );
        drop(g);
        let opts = crate::runtime::generate::GenerateOptions {
            stop: vec![String::new()],
            ..Default::default()
        };
        let err = s.generate("Hi", &opts).err().unwrap().to_string();
        assert!(err.contains("stop string is empty"), "{err}");
    }

    #[test]
    fn prepared_steps_serve_every_prompt_length_and_the_decode_step() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
        let options = LoadOptions {
            max_sequences: 1,
            prefill_chunk: 16,
            ..Default::default()
        };
        let model = Arc::new(Model::load(crate::testing::gpu(), &dir, &options).unwrap());
        model
            .prepare_steps(crate::runtime::runner::Output::Sample)
            .unwrap();
        let recorded = || model.runner().recorded();
        // Chunks of 1, 2, 4, 8 and 16 tokens.
        assert_eq!(recorded(), 5);
        let greedy = Sampling::greedy();
        for len in 1..=37u32 {
            let ids: Vec<u32> = (0..len).map(|i| i * 7 + 20).collect();
            let mut s = Session::new(&model).unwrap();
            let next = s.feed(&ids, &greedy).unwrap();
            s.feed(&[next], &greedy).unwrap();
        }
        assert_eq!(recorded(), 5, "a feed recorded a graph of its own");
    }

    #[test]
    fn prompts_split_into_power_of_two_chunks() {
        let ids: Vec<u32> = (0..100).collect();
        let lens: Vec<usize> = chunks(&ids, 64).iter().map(|c| c.len()).collect();
        assert_eq!(lens, vec![64, 32, 4]);
        assert_eq!(chunks(&ids[..1], 64).len(), 1);
        let lens: Vec<usize> = chunks(&ids, 16).iter().map(|c| c.len()).collect();
        assert_eq!(lens, vec![16; 6].into_iter().chain([4]).collect::<Vec<_>>());
    }
}

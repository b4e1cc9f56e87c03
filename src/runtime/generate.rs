//! Text generation: prompt prefill in one batched pass (chunked), then token-by-token decode
//! with GPU sampling, streaming the text as it completes; stop strings, EOS and a token
//! budget end it. Several prompts can be decoded together as one batch.

use std::sync::Arc;

use super::continuation::Resume;
use super::model::Model;
use super::session::Session;
use super::tokenizer::{TextStream, Tokenizer};
use crate::error::{Error, Result};
use crate::ops::sample::Sampling;

/// How to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Generation ends before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    /// End at the tokenizer's end-of-sequence token.
    pub stop_at_eos: bool,
}

impl GenerateOptions {
    /// Checks the sampling settings, and that no stop string is empty (it would end every
    /// generation before its first character).
    pub fn validate(&self) -> Result<()> {
        self.sampling.validate()?;
        if self.stop.iter().any(String::is_empty) {
            return Err(Error::InvalidArgument(
                "a stop string is empty: it would end generation before any text".into(),
            ));
        }
        Ok(())
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampling: Sampling::greedy(),
            stop: Vec::new(),
            stop_at_eos: true,
        }
    }
}

/// One generated token and the text it completes (possibly empty: text that may begin a
/// stop string, or half a UTF-8 character, is held back until it is decided).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub id: u32,
    pub text: String,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    MaxTokens,
    Eos,
    Stop,
}

impl std::fmt::Display for Finish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Finish::MaxTokens => "max tokens",
            Finish::Eos => "end of sequence",
            Finish::Stop => "stop string",
        })
    }
}

/// The per-sequence bookkeeping of a generation: text stream, held-back text, budget.
pub(crate) struct Emitter {
    stream: TextStream,
    pending: String,
    produced: usize,
    pub(crate) finish: Option<Finish>,
}

impl Emitter {
    /// An emitter of the text generated after `prompt`.
    pub(crate) fn new(tokenizer: &Tokenizer, prompt: &[u32]) -> Self {
        Emitter {
            stream: tokenizer.stream_after(prompt),
            pending: String::new(),
            produced: 0,
            finish: None,
        }
    }

    /// Takes the sampled `id`; returns its piece. Sets `finish` when generation must end.
    pub(crate) fn accept(
        &mut self,
        tokenizer: &Tokenizer,
        opts: &GenerateOptions,
        id: u32,
    ) -> Result<Piece> {
        self.produced += 1;
        let eos = opts.stop_at_eos && tokenizer.is_eos(id);
        let last = eos || self.produced >= opts.max_tokens;
        if !eos {
            self.pending += &self.stream.push(tokenizer, id)?;
        }
        if last {
            // The text the stream still holds (bytes of a character not yet complete) is
            // checked for stop strings like the rest.
            self.pending += &self.stream.finish(tokenizer)?;
        }
        if let Some(pos) = opts
            .stop
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            self.finish = Some(Finish::Stop);
            let text = self.pending[..pos].to_string();
            self.pending.clear();
            return Ok(Piece { id, text });
        }
        if last {
            self.finish = Some(if eos { Finish::Eos } else { Finish::MaxTokens });
            let text = std::mem::take(&mut self.pending);
            return Ok(Piece { id, text });
        }
        // Keep back the longest tail that could still grow into a stop string.
        let hold = opts
            .stop
            .iter()
            .map(|s| held_back(&self.pending, s))
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let text = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        Ok(Piece { id, text })
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn held_back(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && stop.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

/// A streaming generation over one session. Iterate to get pieces as they are decoded.
pub struct Generation<'s> {
    session: &'s mut Session,
    opts: GenerateOptions,
    emitter: Emitter,
    next: Option<u32>,
    /// The last token handed out, not yet fed to the session (generation stopped).
    unfed: Option<u32>,
}

impl Session {
    /// Generates after `prompt` (text), streaming pieces. A fresh session reads the prompt
    /// as the start of a sequence (with BOS where the tokenizer config asks for it), a
    /// session that has read text before as its continuation. An empty prompt goes on from
    /// the session's last feed or generation (see [`Session::generate_ids`]).
    pub fn generate(&mut self, prompt: &str, opts: &GenerateOptions) -> Result<Generation<'_>> {
        let ids = self.encode(prompt)?;
        self.generate_ids(&ids, opts)
    }

    /// The ids of `text` as this session reads it next: the start of a sequence on a fresh
    /// session (with BOS where the tokenizer config asks for it), else a continuation.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let tokenizer = self.model().require_tokenizer()?;
        match self.position() {
            0 => tokenizer.encode(text),
            _ => tokenizer.encode_continuation(text),
        }
    }

    /// Generates after the prompt token ids, streaming pieces. A generation that ended on
    /// a token it did not feed (see [`Generation::absorb_last`]) has that token read first.
    ///
    /// No ids go on from where the session stands, if its last input was a feed or a
    /// generation: after [`Session::feed`], from the token that feed sampled; after a
    /// generation that ended (at its token budget, a stop string or EOS), by first reading
    /// the token it ended on; after one dropped before its end, from the token it had
    /// already sampled. A sampled token was drawn with the sampling settings of its own
    /// call, and text that a generation dropped early held back (a possible start of one of
    /// its stop strings) comes with it. With `max_tokens` 0 the prompt is read and nothing
    /// is generated.
    pub fn generate_ids(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
    ) -> Result<Generation<'_>> {
        opts.validate()?;
        let model = self.model().clone();
        let tokenizer = model.require_tokenizer()?;
        let sampled = match (prompt.is_empty(), self.continuation.point) {
            (true, None) => {
                return Err(Error::InvalidArgument(
                    "nothing to generate from: the prompt has no tokens, and the session's \
                     last input was neither a feed nor a generation to go on from (a session \
                     file saved before moxe kept resume points has none)"
                        .into(),
                ))
            }
            (true, Some(Resume::Sampled(next))) => Some(next),
            // An ended generation's last token waits for a generation that wants more.
            (true, Some(Resume::Unfed(_))) if opts.max_tokens == 0 => None,
            // Reads an ended generation's last token first (feed does).
            _ => Some(self.feed(prompt, &opts.sampling)?),
        };
        let mut emitter = Emitter::new(tokenizer, &self.continuation.recent);
        if prompt.is_empty() && opts.max_tokens > 0 {
            // What a generation dropped early held back, still to be handed out.
            emitter.pending = std::mem::take(&mut self.continuation.held);
        }
        let next = if opts.max_tokens == 0 {
            // Nothing to generate: ended at its length, as a batch's generation says.
            emitter.finish = Some(Finish::MaxTokens);
            None
        } else {
            sampled
        };
        Ok(Generation {
            session: self,
            opts: opts.clone(),
            emitter,
            next,
            unfed: None,
        })
    }
}

impl Generation<'_> {
    /// Why it ended (after the iterator returned `None`).
    pub fn finish(&self) -> Option<Finish> {
        self.emitter.finish
    }

    /// Feeds the last generated token to the session now, so that its state covers all the
    /// generated text. Generation itself stops after sampling that token without feeding
    /// it; the session keeps it pending (also in a saved file), and its next feed or
    /// generation reads it first, so absorbing is needed only for the state itself (e.g. a
    /// snapshot to branch from). The feed draws one sample, so with a temperature above 0
    /// what follows differs from not absorbing.
    pub fn absorb_last(mut self) -> Result<()> {
        match self.unfed.take() {
            // The session holds it as its pending token, which a feed reads first.
            Some(_) => self.session.feed(&[], &self.opts.sampling).map(|_| ()),
            None => Ok(()),
        }
    }
}

impl Iterator for Generation<'_> {
    type Item = Result<Piece>;

    fn next(&mut self) -> Option<Result<Piece>> {
        let id = self.next.take()?;
        let model = self.session.model().clone();
        let tokenizer = model.tokenizer()?;
        let piece = match self.emitter.accept(tokenizer, &self.opts, id) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        if self.emitter.finish.is_none() {
            match self.session.feed(&[id], &self.opts.sampling) {
                Ok(n) => {
                    self.next = Some(n);
                    // Where the caller may drop the generation: what it holds back goes on.
                    let held = &mut self.session.continuation.held;
                    held.clone_from(&self.emitter.pending);
                }
                Err(e) => return Some(Err(e)),
            }
        } else {
            self.unfed = Some(id);
            self.session.continuation.point = Some(Resume::Unfed(id));
        }
        Some(Ok(piece))
    }
}

/// The result of one sequence of a batch generation.
#[derive(Debug, Clone)]
pub struct Generated {
    pub text: String,
    pub ids: Vec<u32>,
    pub finish: Finish,
}

/// Decodes several prompts together: each prompt is prefilled on its own, then all
/// unfinished sequences advance in one batched step per token. `on_piece(i, piece)` streams
/// sequence i's pieces.
pub fn generate_batch(
    model: &Arc<Model>,
    prompts: &[&str],
    opts: &GenerateOptions,
    mut on_piece: impl FnMut(usize, &Piece),
) -> Result<Vec<Generated>> {
    opts.validate()?;
    let tokenizer = model.require_tokenizer()?;
    if prompts.len() > model.options().max_sequences {
        return Err(Error::InvalidArgument(format!(
            "a batch of {} prompts needs as many sequences, but the model holds state for {} \
             (LoadOptions::max_sequences)",
            prompts.len(),
            model.options().max_sequences
        )));
    }
    let mut sessions = Vec::new();
    let mut emitters = Vec::new();
    let mut next = Vec::new();
    for p in prompts {
        let ids = tokenizer.encode(p)?;
        let mut s = Session::new(model)?;
        next.push(if opts.max_tokens == 0 {
            None
        } else {
            Some(s.feed(&ids, &opts.sampling)?)
        });
        emitters.push(Emitter::new(tokenizer, &ids));
        sessions.push(s);
    }
    let mut out: Vec<Generated> = prompts
        .iter()
        .map(|_| Generated {
            text: String::new(),
            ids: Vec::new(),
            finish: Finish::MaxTokens,
        })
        .collect();
    loop {
        let mut active = Vec::new();
        for (i, n) in next.iter_mut().enumerate() {
            let Some(id) = n.take() else { continue };
            let piece = emitters[i].accept(tokenizer, opts, id)?;
            out[i].text += &piece.text;
            out[i].ids.push(id);
            on_piece(i, &piece);
            match emitters[i].finish {
                Some(f) => out[i].finish = f,
                None => active.push((i, id)),
            }
        }
        if active.is_empty() {
            return Ok(out);
        }
        let ids: Vec<u32> = active.iter().map(|&(_, id)| id).collect();
        let sampling = vec![opts.sampling; active.len()];
        let mut batch: Vec<&mut Session> = sessions
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| active.iter().any(|&(a, _)| a == *i))
            .map(|(_, s)| s)
            .collect();
        let sampled = model.step_batch(&mut batch, &ids, &sampling)?;
        for (&(i, _), id) in active.iter().zip(sampled) {
            next[i] = Some(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{held_back, Emitter, Finish, GenerateOptions};
    use crate::checkpoint::GenerationDefaults;
    use crate::runtime::tokenizer::Tokenizer;

    #[test]
    fn text_flushed_at_the_end_is_checked_for_stop_strings() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default/tokenizer.json");
        let t = Tokenizer::open(&path, 4096, &GenerationDefaults::default()).unwrap();
        // Token 129 is the first byte of "é": alone at the token budget it flushes as U+FFFD.
        let opts = |stop: &[&str]| GenerateOptions {
            max_tokens: 1,
            stop: stop.iter().map(|s| s.to_string()).collect(),
            ..GenerateOptions::default()
        };
        let mut e = Emitter::new(&t, &[]);
        let piece = e.accept(&t, &opts(&["\u{fffd}"]), 129).unwrap();
        assert_eq!((piece.text.as_str(), e.finish), ("", Some(Finish::Stop)));
        let mut e = Emitter::new(&t, &[]);
        let piece = e.accept(&t, &opts(&["x"]), 129).unwrap();
        assert_eq!(
            (piece.text.as_str(), e.finish),
            ("\u{fffd}", Some(Finish::MaxTokens))
        );
    }

    #[test]
    fn holds_back_text_that_may_start_a_stop_string() {
        assert_eq!(held_back("Hello wor", "world"), 3);
        assert_eq!(held_back("Hello", "world"), 0);
        assert_eq!(held_back("ab\n", "\n\n"), 1);
        assert_eq!(held_back("naïve ", "é"), 0);
    }
}

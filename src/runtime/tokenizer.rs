//! Text <-> token ids through the `tokenizers` crate (Hugging Face `tokenizer.json`), with
//! the special tokens the model directory's files name (BOS prepended where
//! `tokenizer_config.json` says `add_bos_token`, the end-of-sequence ids of
//! `generation_config.json`), checks against the model's vocabulary, and an incremental
//! decoder for streaming output.

use std::path::Path;

use crate::checkpoint::GenerationDefaults;
use crate::error::{Error, Result};

/// A tokenizer checked against a model's vocabulary size.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab: usize,
    /// End-of-sequence ids (any of them ends a generation).
    eos: Vec<u32>,
    /// Prepended to a sequence's text unless the post-processor already put it there.
    bos: Option<u32>,
    /// Appended to a sequence's text (`add_eos_token`).
    append_eos: Option<u32>,
}

impl Tokenizer {
    /// Loads `tokenizer.json` for a model with `vocab` embeddings, with the special tokens of
    /// `defaults` (the model directory's config files).
    pub fn open(path: &Path, vocab: usize, defaults: &GenerationDefaults) -> Result<Self> {
        let text =
            crate::checkpoint::files::read_text(path, crate::checkpoint::files::TOKENIZER_LIMIT)?;
        let inner = tokenizers::Tokenizer::from_bytes(text.as_bytes()).map_err(|e| {
            // tokenizers' own message points into its serde model, whatever the cause.
            let json: serde_json::Value = match crate::checkpoint::files::parse_json(path, &text) {
                Ok(json) => json,
                Err(not_json) => return not_json,
            };
            let what = match json.get("model") {
                Some(m) if m.is_object() => format!("the tokenizers library cannot read it: {e}"),
                _ => "it has no \"model\" object: not a Hugging Face tokenizers file".into(),
            };
            Error::file(path, format!("not a valid tokenizer.json: {what}"))
        })?;
        let size = inner.get_vocab_size(true);
        if size > vocab {
            return Err(Error::file(
                path,
                format!(
                    "the tokenizer has {size} tokens but the model embeds only {vocab} \
                     (tokenizer and model do not belong together)"
                ),
            ));
        }
        // Ids need not be dense: the largest must still have an embedding (the model's
        // vocabulary and the added tokens each, as an added token may shadow a model entry).
        let (model, added) = (inner.get_vocab(false), inner.get_vocab(true));
        if let Some((token, &id)) = model
            .iter()
            .chain(&added)
            .max_by_key(|(_, &id)| id)
            .filter(|(_, &id)| id as usize >= vocab)
        {
            return Err(Error::file(
                path,
                format!(
                    "token {token:?} has id {id}, but the model embeds only {vocab} tokens \
                     (tokenizer and model do not belong together)"
                ),
            ));
        }
        let named = |token: &Option<String>, what: &str| -> Result<Option<u32>> {
            match token {
                None => Ok(None),
                Some(t) => inner.token_to_id(t).map(Some).ok_or_else(|| {
                    Error::file(
                        path,
                        format!("tokenizer_config.json names {what} token '{t}', which this tokenizer does not have"),
                    )
                }),
            }
        };
        // As transformers: the ids that end generation come from the generation config
        // (else the tokenizer config's eos token, else a usual name); the tokens added to a
        // prompt are the tokenizer config's, else the config's ids. A name is looked up only
        // where it is used, so one the tokenizer lacks fails only what needs it.
        let eos = match defaults.eos.as_slice() {
            [] => match named(&defaults.eos_token, "the eos")? {
                Some(id) => vec![id],
                None => ["<|endoftext|>", "</s>", "<eos>", "<|eos|>"]
                    .iter()
                    .find_map(|t| inner.token_to_id(t))
                    .into_iter()
                    .collect(),
            },
            ids => ids.to_vec(),
        };
        let bos = match defaults.add_bos {
            false => None,
            true => Some(
                named(&defaults.bos_token, "the bos")?
                    .or(defaults.bos)
                    .ok_or_else(|| {
                        Error::file(
                            path,
                            "tokenizer_config.json sets add_bos_token but no bos token or \
                             bos_token_id is given",
                        )
                    })?,
            ),
        };
        let append_eos = match defaults.add_eos {
            false => None,
            true => Some(
                named(&defaults.eos_token, "the eos")?
                    .or(defaults.eos.first().copied())
                    .ok_or_else(|| {
                        Error::file(
                            path,
                            "tokenizer_config.json sets add_eos_token but no eos token or \
                             eos_token_id is given",
                        )
                    })?,
            ),
        };
        let t = Tokenizer {
            inner,
            vocab,
            eos,
            bos,
            append_eos,
        };
        check_ids(&t.eos, vocab)?;
        Ok(t)
    }

    /// Whether `id` ends a sequence.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos.contains(&id)
    }

    /// The end-of-sequence ids.
    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    /// The ids [`Tokenizer::encode`] adds before and after a text (`add_bos_token`,
    /// `add_eos_token`), besides the post-processor's own.
    pub fn added(&self) -> (Option<u32>, Option<u32>) {
        (self.bos, self.append_eos)
    }

    /// Token ids of `text` as the start of a sequence: the special tokens of the tokenizer's
    /// post-processor, and BOS / EOS where the tokenizer config adds them.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.ids(text, true)?;
        if let Some(bos) = self.bos {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        if let Some(eos) = self.append_eos {
            if ids.last() != Some(&eos) {
                ids.push(eos);
            }
        }
        Ok(ids)
    }

    /// Token ids of `text` continuing a sequence (no special tokens added).
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>> {
        self.ids(text, false)
    }

    fn ids(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| Error::InvalidArgument(format!("cannot tokenize the text: {e}")))?;
        let ids = enc.get_ids().to_vec();
        check_ids(&ids, self.vocab)?;
        Ok(ids)
    }

    /// Text of `ids` (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        check_ids(ids, self.vocab)?;
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::InvalidArgument(format!("cannot decode token ids: {e}")))
    }

    /// The bytes token `id` stands for, which may be part of a character (a byte-level
    /// BPE token, or a byte-fallback token `<0xHH>`): added and special tokens as their
    /// text, SentencePiece's word mark `▁` as the space it stands for, a WordPiece
    /// continuation without its `##` and a WordPiece word with the space before it (as
    /// after a prompt; not before the punctuation its cleanup joins). Empty for an id the
    /// tokenizer does not have.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let added = self.inner.get_added_vocabulary().get_added_tokens_decoder();
        if let Some(t) = added.get(&id) {
            return t.content.clone().into_bytes();
        }
        let Some(token) = self.inner.id_to_token(id) else {
            return Vec::new();
        };
        let decoders = match self.inner.get_decoder() {
            Some(tokenizers::DecoderWrapper::Sequence(s)) => s.get_decoders().iter().collect(),
            Some(d) => vec![d],
            None => Vec::new(),
        };
        let byte_level = decoders
            .iter()
            .any(|d| matches!(d, tokenizers::DecoderWrapper::ByteLevel(_)));
        if let Some(bytes) = byte_level.then(|| byte_level_bytes(&token)).flatten() {
            return bytes;
        }
        if let Some(byte) = fallback_byte(&token) {
            return vec![byte];
        }
        let wordpiece = decoders.iter().find_map(|d| match d {
            tokenizers::DecoderWrapper::WordPiece(w) => Some(w),
            _ => None,
        });
        let text = match wordpiece {
            // WordPiece joins words with spaces, a continuation to its word, and its cleanup
            // takes the space before these marks away.
            Some(w) => match token.strip_prefix(w.prefix.as_str()) {
                Some(rest) => rest.to_string(),
                None if w.cleanup && [".", "?", "!", ","].contains(&token.as_str()) => token,
                None => format!(" {token}"),
            },
            None => token.replace('\u{2581}', " "),
        };
        text.into_bytes()
    }

    /// A streaming decoder of the ids pushed to it, which continue `context` (the prompt):
    /// its last few ids are the decoding context of the first piece, so that piece keeps
    /// the leading space a Metaspace (SentencePiece) tokenizer drops at the start of a text.
    pub fn stream_after(&self, context: &[u32]) -> TextStream {
        let tail = context[context.len().saturating_sub(STREAM_CONTEXT)..].to_vec();
        TextStream {
            read: tail.len(),
            ids: tail,
            prefix: 0,
        }
    }
}

/// The bytes of a byte-level BPE token (GPT-2's alphabet: the printable bytes `!`..`~`,
/// `¡`..`¬` and `®`..`ÿ` stand for themselves, the other 68 bytes, in order, for the
/// characters from U+0100 on); None when a character is outside the alphabet (a special
/// token).
fn byte_level_bytes(token: &str) -> Option<Vec<u8>> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    token
        .chars()
        .map(|c| {
            let c = c as u32;
            if c < 0x100 {
                return printable(c).then_some(c as u8);
            }
            (0..=255u32)
                .filter(|&b| !printable(b))
                .nth((c - 0x100) as usize)
                .map(|b| b as u8)
        })
        .collect()
}

/// The byte of a byte-fallback token (`<0x41>` is b'A').
fn fallback_byte(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Prompt ids kept as the decoding context of a stream's first piece.
pub(crate) const STREAM_CONTEXT: usize = 4;

/// Fails when an id is not below `vocab`.
pub fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    if let Some((i, id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(Error::InvalidArgument(format!(
            "token id {id} at position {i} is out of range: the vocabulary has {vocab} tokens \
             (ids 0..{})",
            vocab - 1
        )));
    }
    Ok(())
}

/// Incremental decoding: push ids, get the newly completed text. Text that ends in an
/// incomplete UTF-8 sequence (byte-level BPE splits characters across tokens) is held back
/// until the character completes. Each push decodes only the ids since the last emitted
/// piece, with that piece as context, so a long generation costs linear time.
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    /// Start of the last emitted piece (decoding context).
    prefix: usize,
    /// End of the emitted text.
    read: usize,
}

impl TextStream {
    /// Adds one id; returns the text it completes (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        // Checked before it joins the stream: a bad id is refused, the stream goes on.
        tokenizer.decode(&[id])?;
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let text = tokenizer.decode(&self.ids[self.prefix..])?;
        // An incomplete character is held back until its bytes arrive, but no longer than
        // a character's 4 bytes could take: bytes that never form one (a stray
        // continuation byte) go out as U+FFFD instead of holding the stream. Ids that
        // decode to nothing (special tokens) do not count.
        let adding = |&&id: &&u32| tokenizer.decode(&[id]).is_ok_and(|t| !t.is_empty());
        let incomplete =
            text.ends_with('\u{FFFD}') && self.ids[self.read..].iter().filter(adding).count() < 4;
        let piece = added_text(&before, &text);
        if incomplete || piece.is_empty() {
            return Ok(String::new());
        }
        let piece = piece.to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(piece)
    }

    /// Text still held back (an incomplete character at the end), decoded lossily.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let text = tokenizer.decode(&self.ids[self.prefix..])?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(added_text(&before, &text).to_string())
    }
}

/// What `text`, the decoding of a context and new ids, adds to `before`, the context's
/// decoding alone (which the reader has already seen). Usually `before` is a prefix of
/// `text`. When the new ids change how the context decodes, what follows the common prefix
/// is new, less as many characters as the context's changed part showed: an incomplete
/// character at the context's end (shown as U+FFFD, as a prompt given as ids may end)
/// completed by the new bytes comes out whole, and a byte-fallback run (which decodes as a
/// unit, all U+FFFD once any of its bytes is invalid) that the new ids extend comes out
/// without repeating the characters already shown.
fn added_text<'a>(before: &str, text: &'a str) -> &'a str {
    if let Some(rest) = text.strip_prefix(before) {
        return rest;
    }
    let common = before
        .char_indices()
        .zip(text.chars())
        .find(|((_, a), b)| a != b)
        .map_or(before.len().min(text.len()), |((i, _), _)| i);
    let shown = &before[common..];
    let rest = &text[common..];
    if shown.chars().all(|c| c == '\u{FFFD}') {
        return rest;
    }
    let skip = shown.chars().count();
    rest.char_indices()
        .nth(skip)
        .map_or("", |(i, _)| &rest[i..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_tokenizer() -> Tokenizer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default/tokenizer.json");
        Tokenizer::open(&path, 4096, &GenerationDefaults::default()).unwrap()
    }

    #[test]
    fn a_token_id_past_the_model_s_vocabulary_names_the_token() {
        // The bundled tokenizer with every id moved up by 5000: as many tokens as the
        // model embeds, but ids past them.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default/tokenizer.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (_, id) in json["model"]["vocab"].as_object_mut().unwrap() {
            *id = (id.as_u64().unwrap() + 5000).into();
        }
        for t in json["added_tokens"].as_array_mut().unwrap() {
            t["id"] = (t["id"].as_u64().unwrap() + 5000).into();
        }
        let dir = std::env::temp_dir().join(format!("moxe-sparse-ids-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let shifted = dir.join("tokenizer.json");
        std::fs::write(&shifted, json.to_string()).unwrap();
        let err = Tokenizer::open(&shifted, 4096, &GenerationDefaults::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("has id 9095") && err.contains("embeds only 4096"),
            "{err}"
        );
        // One model entry moved past the vocabulary, shadowed by an added token of the
        // same text at its old id: the model's id is still found.
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        json["model"]["vocab"]["<|endoftext|>"] = 5000.into();
        std::fs::write(&shifted, json.to_string()).unwrap();
        let err = Tokenizer::open(&shifted, 4096, &GenerationDefaults::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("has id 5000"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn token_bytes_concatenate_to_the_text_s_utf8() {
        let t = default_tokenizer();
        let text = "naïve café — 1851, \u{1F600} déjà\tvu\n";
        let ids = t.encode_continuation(text).unwrap();
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| t.token_bytes(id)).collect();
        assert_eq!(bytes, text.as_bytes());
        // A character split over two tokens: each holds one of its bytes.
        assert_eq!(t.token_bytes(129), vec![0xc3]);
        assert_eq!(t.token_bytes(104), vec![0xa9]);
        assert_eq!(fallback_byte("<0xC3>"), Some(0xc3));
        assert_eq!(fallback_byte("<0xC3"), None);
        assert_eq!(byte_level_bytes("Ġthe"), Some(b" the".to_vec()));
        assert_eq!(
            byte_level_bytes("<|endoftext|>"),
            Some(b"<|endoftext|>".to_vec())
        );
        assert_eq!(byte_level_bytes("\u{4e00}"), None);
    }

    #[test]
    fn a_bad_id_is_refused_and_the_stream_goes_on() {
        let t = default_tokenizer();
        let mut s = t.stream_after(&[]);
        assert!(s.push(&t, 99_999).is_err());
        let id = t.encode("Hello").unwrap()[0];
        assert_eq!(s.push(&t, id).unwrap(), t.decode(&[id]).unwrap());
    }

    #[test]
    fn stray_bytes_are_not_held_for_ever() {
        let t = default_tokenizer();
        // Token 104 is the byte 0xA9, a continuation byte: alone, it never completes.
        let mut s = t.stream_after(&[]);
        let pieces: Vec<String> = (0..6).map(|_| s.push(&t, 104).unwrap()).collect();
        assert_eq!(pieces[..3], ["", "", ""]);
        assert_eq!(pieces[3], "\u{FFFD}".repeat(4));
        assert_eq!(pieces[4..], ["", ""]);
        // "é" split over two tokens still comes whole.
        let mut s = t.stream_after(&[]);
        assert_eq!(s.push(&t, 129).unwrap(), "");
        assert_eq!(s.push(&t, 104).unwrap(), "é");
        // Also with special tokens (decoded as nothing) between its bytes, however many.
        let mut s = t.stream_after(&[]);
        let pieces: Vec<String> = [129, 0, 0, 0, 0, 104]
            .iter()
            .map(|&id| s.push(&t, id).unwrap())
            .collect();
        assert_eq!(pieces.concat(), "é");
        assert_eq!(t.decode(&[129, 0, 0, 0, 0, 104]).unwrap(), "é");
    }

    #[test]
    fn round_trips_text_and_streams_it_piecewise() {
        let t = default_tokenizer();
        let text = "It was the best of times — naïve café, 1851. ".repeat(3);
        let text = text.trim_end();
        let ids = t.encode(text).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), text);
        let mut s = t.stream_after(&[]);
        let mut out = String::new();
        for &id in &ids {
            out += &s.push(&t, id).unwrap();
        }
        out += &s.finish(&t).unwrap();
        assert_eq!(out, text);
        // Continuing a prompt, the pieces add up to the text the whole decodes to.
        let (prompt, rest) = ids.split_at(5);
        let mut s = t.stream_after(prompt);
        let pieces: String = rest.iter().map(|&id| s.push(&t, id).unwrap()).collect();
        let whole = t.decode(&ids).unwrap();
        assert_eq!(
            t.decode(prompt).unwrap() + &pieces + &s.finish(&t).unwrap(),
            whole
        );
        assert_eq!(t.eos(), &[0]);
    }

    /// Streams `rest` after `prompt` and checks the pieces add up to what decoding the whole
    /// adds to the prompt's text (the first piece keeping its leading space).
    fn streams_exactly(t: &Tokenizer, text: &str, split: usize) -> Vec<String> {
        let ids = t.encode(text).unwrap();
        let (prompt, rest) = ids.split_at(split);
        let mut s = t.stream_after(prompt);
        let mut pieces: Vec<String> = rest.iter().map(|&id| s.push(t, id).unwrap()).collect();
        pieces.push(s.finish(t).unwrap());
        let whole = t.decode(&ids).unwrap();
        assert_eq!(
            t.decode(prompt).unwrap() + &pieces.concat(),
            whole,
            "{pieces:?}"
        );
        pieces
    }

    fn tokenizer_from_json(name: &str, json: serde_json::Value, vocab: usize) -> Tokenizer {
        let dir = std::env::temp_dir().join(format!("moxe-tok-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let t = Tokenizer::open(&path, vocab, &GenerationDefaults::default()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        t
    }

    fn skeleton(
        model: serde_json::Value,
        pre: serde_json::Value,
        decoder: serde_json::Value,
    ) -> serde_json::Value {
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": pre, "post_processor": null,
            "decoder": decoder, "model": model,
        })
    }

    #[test]
    fn streaming_is_exact_for_metaspace_and_wordpiece_tokenizers() {
        let metaspace = serde_json::json!({
            "type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true,
        });
        let sp = tokenizer_from_json(
            "metaspace",
            skeleton(
                serde_json::json!({"type": "WordLevel", "unk_token": "<unk>", "vocab": {
                    "<unk>": 0, "\u{2581}Once": 1, "\u{2581}upon": 2, "\u{2581}a": 3, "\u{2581}time": 4,
                }}),
                metaspace.clone(),
                metaspace,
            ),
            5,
        );
        // The first generated piece keeps its space (decoded alone it would lose it).
        let pieces = streams_exactly(&sp, "Once upon a time", 1);
        assert_eq!(pieces[0], " upon");
        // A token's own bytes keep its word mark as the space it stands for.
        assert_eq!(sp.token_bytes(2), b" upon");
        let wp = tokenizer_from_json(
            "wordpiece",
            skeleton(
                serde_json::json!({"type": "WordPiece", "unk_token": "[UNK]",
                    "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": {
                    "[UNK]": 0, "hello": 1, "world": 2, "##s": 3, "!": 4,
                }}),
                serde_json::json!({"type": "Whitespace"}),
                serde_json::json!({"type": "WordPiece", "prefix": "##", "cleanup": true}),
            ),
            5,
        );
        // A continuation piece (##s) joins its word; a new word starts with a space.
        let pieces = streams_exactly(&wp, "hello worlds hello!", 1);
        assert_eq!(pieces[..2], [" world".to_string(), "s".to_string()]);
        assert_eq!(wp.token_bytes(3), b"s");
        // A word's bytes start with the space that joins it; cleanup's marks without one:
        // after a prompt, the pieces' bytes are the text.
        let ids = wp.encode("hello worlds hello!").unwrap();
        let bytes: Vec<u8> = ids[1..].iter().flat_map(|&id| wp.token_bytes(id)).collect();
        assert_eq!(String::from_utf8(bytes).unwrap(), pieces.concat());
    }

    #[test]
    fn a_context_the_new_ids_decode_differently_does_not_stall_the_stream() {
        // A prompt given as ids that ends within a character, which the first generated
        // byte completes: the character comes out whole, and the stream goes on.
        let t = default_tokenizer();
        let byte = |b: u8| (0..4096).find(|&id| t.token_bytes(id) == [b]).unwrap();
        let mut prompt = t.encode_continuation("I like ").unwrap();
        prompt.extend([0xf0, 0x9f, 0xa6].map(byte));
        let mut s = t.stream_after(&prompt);
        assert_eq!(s.push(&t, byte(0x9e)).unwrap(), "\u{1F99E}");
        assert_eq!(s.push(&t, byte(b'!')).unwrap(), "!");
        // A byte-fallback run (decoded as a unit) that a generated byte makes invalid: the
        // characters already shown are not repeated, and what follows still comes out.
        let mut vocab = serde_json::Map::new();
        for b in 0..=255u32 {
            vocab.insert(format!("<0x{b:02X}>"), b.into());
        }
        vocab.insert("\u{2581}together".into(), 256.into());
        let fallback = tokenizer_from_json(
            "fallback",
            skeleton(
                serde_json::json!({"type": "BPE", "dropout": null, "unk_token": null,
                    "continuing_subword_prefix": null, "end_of_word_suffix": null,
                    "fuse_unk": false, "byte_fallback": true, "vocab": vocab, "merges": []}),
                serde_json::Value::Null,
                serde_json::json!({"type": "Sequence", "decoders": [
                    {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                    {"type": "ByteFallback"}, {"type": "Fuse"},
                ]}),
            ),
            257,
        );
        let f = &fallback;
        let mut s = f.stream_after(&[256, 0xc3, 0xa9]);
        assert_eq!(
            f.decode(&[256, 0xc3, 0xa9, 0xcb]).unwrap(),
            " together\u{FFFD}\u{FFFD}\u{FFFD}"
        );
        assert_eq!(s.push(f, 0xcb).unwrap(), "");
        assert_eq!(s.push(f, 256).unwrap(), "\u{FFFD}\u{FFFD} together");
        assert_eq!(s.push(f, 256).unwrap(), " together");
        assert_eq!(s.finish(f).unwrap(), "");
    }

    #[test]
    fn special_tokens_are_taken_from_where_transformers_takes_them() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default/tokenizer.json");
        let open = |d: &GenerationDefaults| Tokenizer::open(&path, 4096, d);
        let first = |t: &Tokenizer| t.encode("Hi").unwrap()[0];
        // A prompt's BOS is the tokenizer config's token, not generation_config's id.
        let d = GenerationDefaults {
            bos: Some(5),
            add_bos: true,
            bos_token: Some("<|pad|>".into()),
            ..Default::default()
        };
        assert_eq!(first(&open(&d).unwrap()), 1);
        // Without a token, the id.
        let d = GenerationDefaults {
            bos_token: None,
            ..d
        };
        assert_eq!(first(&open(&d).unwrap()), 5);
        // A name the tokenizer lacks fails only where it is used: not beside eos ids.
        let d = GenerationDefaults {
            eos: vec![0],
            eos_token: Some("<nope>".into()),
            ..Default::default()
        };
        assert_eq!(open(&d).unwrap().eos(), [0]);
        let d = GenerationDefaults { add_eos: true, ..d };
        let err = open(&d).err().unwrap().to_string();
        assert!(err.contains("'<nope>'"), "{err}");
        // Appending EOS needs an eos the files give, never a guessed one.
        let d = GenerationDefaults {
            add_eos: true,
            ..Default::default()
        };
        let err = open(&d).err().unwrap().to_string();
        assert!(err.contains("add_eos_token but no eos token"), "{err}");
    }

    #[test]
    fn out_of_range_ids_and_mismatched_vocabularies_are_errors() {
        let t = default_tokenizer();
        let err = t.decode(&[1, 5000]).unwrap_err().to_string();
        assert!(err.contains("5000") && err.contains("4096"), "{err}");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default/tokenizer.json");
        let none = GenerationDefaults::default();
        let err = Tokenizer::open(&path, 100, &none)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("4096 tokens") && err.contains("100"), "{err}");
        let err = Tokenizer::open(Path::new("/nope/tokenizer.json"), 100, &none)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("file not found"), "{err}");
    }
}

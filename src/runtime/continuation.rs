//! Where a session stands for text to go on from: the resume point its last feed or
//! generation left, the last ids its state read (the context that decodes what follows),
//! and text a generation held back; and their form in a session file's metadata
//! (docs/SESSION_FORMAT.md).

use std::collections::HashMap;
use std::path::Path;

use super::tokenizer::STREAM_CONTEXT;
use crate::error::{Error, Result};

/// Where a feed or generation stopped, for an empty prompt to go on from
/// ([`Session::generate_ids`](super::Session::generate_ids)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    /// A generation ended on this token: handed out, not yet read by the state (the next
    /// feed reads it first).
    Unfed(u32),
    /// This token was sampled after the state (by a feed, or by a generation dropped
    /// before handing it out).
    Sampled(u32),
}

/// The most bytes of held-back text a session file may carry (a stop string's length).
const MAX_HELD: usize = 1 << 20;

/// What a session's next input goes on from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Continuation {
    /// Where the last feed or generation stopped, while nothing else has been fed since.
    pub(crate) point: Option<Resume>,
    /// The last ids the state read (at most STREAM_CONTEXT).
    pub(crate) recent: Vec<u32>,
    /// Text a generation held back (a possible start of a stop string) and had not handed
    /// out when it stopped at a sampled token: an empty prompt hands it out first.
    pub(crate) held: String,
}

impl Continuation {
    /// The state read `ids` more: nothing stopped is left to go on from.
    pub(crate) fn moved(&mut self, ids: &[u32]) {
        self.point = None;
        self.held.clear();
        self.recent.extend_from_slice(ids);
        let extra = self.recent.len().saturating_sub(STREAM_CONTEXT);
        self.recent.drain(..extra);
    }

    /// The metadata entries of a session file: `resume` (when there is a point), `recent`,
    /// `held` (when not empty).
    pub(crate) fn metadata(&self) -> Vec<(String, String)> {
        let point = self.point.map(|p| match p {
            Resume::Unfed(id) => format!("unfed {id}"),
            Resume::Sampled(id) => format!("sampled {id}"),
        });
        let recent: Vec<String> = self.recent.iter().map(u32::to_string).collect();
        let held = Some(self.held.clone()).filter(|h| !h.is_empty());
        [
            point.map(|p| ("resume", p)),
            Some(("recent", recent.join(" "))),
            held.map(|h| ("held", h)),
        ]
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Reads [`Continuation::metadata`] back from the session file `path` (missing entries:
    /// a file written before they existed), every id below `vocab`.
    pub(crate) fn from_metadata(
        meta: &HashMap<String, String>,
        vocab: usize,
        path: &Path,
    ) -> Result<Self> {
        let bad = |key: &str, text: &str, expected: String| {
            Error::file(
                path,
                format!("metadata '{key}' is '{text}': expected {expected}"),
            )
        };
        let point = match meta.get("resume") {
            None => None,
            Some(text) => {
                let point = match text.split(' ').collect::<Vec<_>>()[..] {
                    ["unfed", id] => parse_id(id, vocab).map(Resume::Unfed),
                    ["sampled", id] => parse_id(id, vocab).map(Resume::Sampled),
                    _ => None,
                };
                let expected = format!(
                    "'unfed ID' or 'sampled ID' with the id below the vocabulary size {vocab}"
                );
                Some(point.ok_or_else(|| bad("resume", text, expected))?)
            }
        };
        let recent = match meta.get("recent") {
            None => Vec::new(),
            Some(text) => text
                .split(' ')
                .filter(|w| !w.is_empty())
                .map(|w| parse_id(w, vocab))
                .collect::<Option<Vec<u32>>>()
                .filter(|ids| ids.len() <= STREAM_CONTEXT)
                .ok_or_else(|| {
                    let expected = format!(
                        "up to {STREAM_CONTEXT} ids below the vocabulary size {vocab}, \
                         separated by spaces"
                    );
                    bad("recent", text, expected)
                })?,
        };
        let held = meta.get("held").cloned().unwrap_or_default();
        if held.len() > MAX_HELD {
            return Err(Error::file(
                path,
                format!(
                    "metadata 'held' holds {} bytes; a session holds back at most {MAX_HELD}",
                    held.len()
                ),
            ));
        }
        Ok(Continuation {
            point,
            recent,
            held,
        })
    }
}

/// A token id written as decimal digits, below `vocab`.
fn parse_id(text: &str, vocab: usize) -> Option<u32> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| text.parse::<u32>().ok())
        .flatten()
        .filter(|&id| (id as usize) < vocab)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_reads_back_and_bad_values_are_named() {
        let c = Continuation {
            point: Some(Resume::Unfed(7)),
            recent: vec![1, 2, 3],
            held: "\n".into(),
        };
        let meta: HashMap<String, String> = c.metadata().into_iter().collect();
        let path = Path::new("s.session");
        assert_eq!(Continuation::from_metadata(&meta, 10, path).unwrap(), c);
        assert_eq!(
            Continuation::from_metadata(&HashMap::new(), 10, path).unwrap(),
            Continuation::default()
        );
        for (key, value) in [
            ("resume", "sampled 10"),
            ("resume", "sampled +5"),
            ("resume", "unfed"),
            ("recent", "1 2 3 4 5"),
            ("recent", "1 x"),
        ] {
            let mut m = meta.clone();
            m.insert(key.into(), value.into());
            let err = Continuation::from_metadata(&m, 10, path)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("s.session") && err.contains(&format!("'{key}' is '{value}'")),
                "{err}"
            );
        }
    }
}

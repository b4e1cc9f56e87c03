//! Sampling on the host from a step's logits (V f32), with the OpenAI-style settings the GPU
//! sampler does not have: logit bias, presence and frequency penalties, min-p, log
//! probabilities. Each sampler owns its random stream (ChaCha8, seeded per request and
//! choice), so a seeded request draws the same tokens however it is batched.
//!
//! Order of the steps: bias and penalties are added to the logits; log probabilities are
//! those of the adjusted logits at temperature 1; then temperature 0 takes the argmax
//! (ties to the lower id), else the logits are divided by the temperature and top-k, min-p
//! and top-p restrict the candidates before one draw. Logits of -inf (or NaN) are never
//! drawn; every comparison is a total order on the values, so -inf and ties are exact.

use std::collections::HashMap;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerSettings {
    /// 0 = greedy; otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1 = all).
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one (0 = none).
    pub min_p: f32,
    /// Subtracted from the logit of every token generated at least once.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated.
    pub frequency_penalty: f32,
    /// Added to the logits of these token ids.
    pub logit_bias: Vec<(u32, f32)>,
    /// The random stream's seed; `None` draws one from the operating system.
    pub seed: Option<u64>,
    /// The most likely alternatives to report per token (0 = none).
    pub top_logprobs: usize,
}

impl Default for SamplerSettings {
    fn default() -> Self {
        SamplerSettings {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            top_logprobs: 0,
        }
    }
}

impl SamplerSettings {
    /// Checks every field against its range and `vocab`, naming the first that is not.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        let bad = |field: &str, want: &str, got: String| {
            Err(Error::InvalidArgument(format!(
                "{field} must be {want}, got {got}"
            )))
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                "a finite number >= 0",
                self.temperature.to_string(),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "in (0, 1]", self.top_p.to_string());
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return bad("min_p", "in [0, 1]", self.min_p.to_string());
        }
        for (field, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(v.is_finite() && (-2.0..=2.0).contains(&v)) {
                return bad(field, "in [-2, 2]", v.to_string());
            }
        }
        for &(id, bias) in &self.logit_bias {
            if id as usize >= vocab {
                return bad(
                    "logit_bias",
                    &format!("keyed by token ids below {vocab}"),
                    id.to_string(),
                );
            }
            if !(bias.is_finite() && (-100.0..=100.0).contains(&bias)) {
                return bad(
                    &format!("logit_bias[{id}]"),
                    "in [-100, 100]",
                    bias.to_string(),
                );
            }
        }
        Ok(())
    }
}

/// A drawn token: its id, its log probability and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub id: u32,
    /// log p(id) under the adjusted logits at temperature 1.
    pub logprob: f32,
    /// The `top_logprobs` most likely ids with their log probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// One sequence's sampler: its settings, random stream and the counts of generated ids.
pub struct Sampler {
    settings: SamplerSettings,
    rng: ChaCha8Rng,
    counts: HashMap<u32, u32>,
}

impl Sampler {
    /// A sampler for choice `stream` of a request (different choices draw independently
    /// from one seed).
    pub fn new(settings: SamplerSettings, stream: u64) -> Self {
        let mut rng = match settings.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_os_rng(),
        };
        rng.set_stream(stream);
        Sampler {
            settings,
            rng,
            counts: HashMap::new(),
        }
    }

    /// Draws the next token from `logits` (V) and counts it for the penalties.
    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        let s = &self.settings;
        let mut l = logits.to_vec();
        for &(id, bias) in &s.logit_bias {
            l[id as usize] += bias;
        }
        for (&id, &n) in &self.counts {
            l[id as usize] -= s.presence_penalty + s.frequency_penalty * n as f32;
        }
        let logz = log_sum_exp(&l);
        let logprob = |id: u32| (l[id as usize] as f64 - logz) as f32;
        let top = ranked(&l, s.top_logprobs)
            .into_iter()
            .map(|id| (id, logprob(id)))
            .collect();
        let id = if s.temperature == 0.0 {
            ranked(&l, 1).first().copied().unwrap_or(0)
        } else {
            self.draw(&l)
        };
        *self.counts.entry(id).or_default() += 1;
        Sampled {
            id,
            logprob: logprob(id),
            top,
        }
    }

    /// One draw at the temperature among the candidates top-k, min-p and top-p keep.
    fn draw(&mut self, l: &[f32]) -> u32 {
        let s = &self.settings;
        let k = match s.top_k {
            0 => l.len(),
            k => k.min(l.len()),
        };
        // Only top-k and top-p need the candidates in order of value; without them every
        // drawable id is a candidate, taken in id order (no sort of the vocabulary).
        let candidates = if k == l.len() && s.top_p >= 1.0 {
            drawable_by_id(l)
        } else {
            ranked(l, k)
        };
        let Some(best) =
            candidates
                .iter()
                .copied()
                .reduce(|a, b| if l[b as usize] > l[a as usize] { b } else { a })
        else {
            return 0;
        };
        let t = s.temperature as f64;
        let top = l[best as usize] as f64 / t;
        // Unnormalised probabilities relative to the best (which is 1), at least min-p.
        let mut kept: Vec<(u32, f64)> = candidates
            .into_iter()
            .map(|id| (id, (l[id as usize] as f64 / t - top).exp()))
            .filter(|c| c.1 >= s.min_p as f64)
            .collect();
        let total: f64 = kept.iter().map(|c| c.1).sum();
        if s.top_p < 1.0 {
            let mut cum = 0.0;
            let keep = kept
                .iter()
                .position(|c| {
                    cum += c.1;
                    cum >= s.top_p as f64 * total
                })
                .map_or(kept.len(), |i| i + 1);
            kept.truncate(keep);
        }
        let total: f64 = kept.iter().map(|c| c.1).sum();
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut cum = 0.0;
        for &(id, p) in &kept {
            cum += p;
            if u < cum {
                return id;
            }
        }
        kept.last().map_or(best, |c| c.0)
    }
}

/// Every drawable id (not NaN, not -inf), in id order.
fn drawable_by_id(l: &[f32]) -> Vec<u32> {
    (0..l.len() as u32)
        .filter(|&i| {
            let v = l[i as usize];
            !v.is_nan() && v != f32::NEG_INFINITY
        })
        .collect()
}

/// The `n` ids of the largest finite-or-infinite (not NaN, not -inf) values, largest first,
/// ties to the lower id.
fn ranked(l: &[f32], n: usize) -> Vec<u32> {
    if n == 0 {
        return Vec::new();
    }
    let mut ids = drawable_by_id(l);
    let order = |a: &u32, b: &u32| l[*b as usize].total_cmp(&l[*a as usize]).then(a.cmp(b));
    let n = n.min(ids.len());
    if n == 0 {
        return Vec::new();
    }
    if n < ids.len() {
        ids.select_nth_unstable_by(n - 1, order);
        ids.truncate(n);
    }
    ids.sort_unstable_by(order);
    ids
}

/// log sum exp of the drawable values, in f64.
fn log_sum_exp(l: &[f32]) -> f64 {
    let max = l
        .iter()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    if max == f64::NEG_INFINITY {
        return max;
    }
    let sum: f64 = l
        .iter()
        .filter(|v| !v.is_nan())
        .map(|&v| (v as f64 - max).exp())
        .sum();
    max + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(temperature: f32, seed: u64) -> SamplerSettings {
        SamplerSettings {
            temperature,
            seed: Some(seed),
            ..SamplerSettings::default()
        }
    }

    #[test]
    fn greedy_takes_the_argmax_with_ties_to_the_lower_id() {
        let mut s = Sampler::new(settings(0.0, 1), 0);
        assert_eq!(s.sample(&[1.0, 3.0, 3.0, -2.0]).id, 1);
        let mut s = Sampler::new(settings(0.0, 1), 0);
        let l = [f32::NEG_INFINITY, f32::NEG_INFINITY, -100.0];
        assert_eq!(s.sample(&l).id, 2);
    }

    #[test]
    fn a_seed_gives_the_same_draws_and_streams_differ() {
        let l: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |seed, stream| {
            let mut s = Sampler::new(settings(1.0, seed), stream);
            (0..40).map(|_| s.sample(&l).id).collect::<Vec<_>>()
        };
        assert_eq!(draw(7, 0), draw(7, 0));
        assert_ne!(draw(7, 0), draw(7, 1));
        assert_ne!(draw(7, 0), draw(8, 0));
    }

    #[test]
    fn top_k_min_p_and_top_p_restrict_the_candidates() {
        // Probabilities at T = 1: 0.5, 0.25, 0.125, 0.125 (log values).
        let l = [0.5f32.ln(), 0.25f32.ln(), 0.125f32.ln(), 0.125f32.ln()];
        let seen = |s: SamplerSettings| {
            let mut sampler = Sampler::new(s, 0);
            let mut seen = [false; 4];
            for _ in 0..400 {
                seen[sampler.sample(&l).id as usize] = true;
            }
            seen
        };
        let base = settings(1.0, 3);
        assert_eq!(seen(base.clone()), [true; 4]);
        let k2 = SamplerSettings {
            top_k: 2,
            ..base.clone()
        };
        assert_eq!(seen(k2), [true, true, false, false]);
        let p = SamplerSettings {
            top_p: 0.7,
            ..base.clone()
        };
        assert_eq!(seen(p), [true, true, false, false]);
        // min-p keeps the ids at least min_p times as likely as the best.
        let m = SamplerSettings {
            min_p: 0.3,
            ..base.clone()
        };
        assert_eq!(seen(m), [true, true, false, false]);
        let m = SamplerSettings { min_p: 0.6, ..base };
        assert_eq!(seen(m), [true, false, false, false]);
    }

    #[test]
    fn bias_and_minus_infinity_are_exact() {
        // A -100 bias and a -inf logit are never drawn; top-k counts only drawable ids.
        let mut l = vec![0.0f32; 10];
        l[3] = f32::NEG_INFINITY;
        let s = SamplerSettings {
            logit_bias: (0..10)
                .filter(|&i| i != 3 && i != 7)
                .map(|i| (i, -100.0))
                .collect(),
            top_k: 3,
            ..settings(1.5, 9)
        };
        let mut sampler = Sampler::new(s, 0);
        for _ in 0..50 {
            let got = sampler.sample(&l);
            assert!(got.id == 7 || got.logprob < -90.0, "{got:?}");
        }
        // Penalties move a repeated token down.
        let s = SamplerSettings {
            frequency_penalty: 2.0,
            ..settings(0.0, 1)
        };
        let mut sampler = Sampler::new(s, 0);
        let l = [1.0, 0.5];
        assert_eq!(sampler.sample(&l).id, 0);
        assert_eq!(sampler.sample(&l).id, 1);
    }

    #[test]
    fn log_probabilities_are_normalised_and_ranked() {
        let mut s = Sampler::new(
            SamplerSettings {
                top_logprobs: 3,
                ..settings(0.0, 1)
            },
            0,
        );
        let got = s.sample(&[2.0, 1.0, 3.0, 0.0]);
        assert_eq!(got.id, 2);
        let ids: Vec<u32> = got.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![2, 0, 1]);
        let total: f32 = [2.0f32, 1.0, 3.0, 0.0]
            .iter()
            .map(|&v| (v - 3.0f32).exp())
            .sum();
        assert!((got.logprob + total.ln()).abs() < 1e-6);
    }

    #[test]
    fn out_of_range_settings_name_the_field() {
        let cases = [
            (
                SamplerSettings {
                    min_p: 1.5,
                    ..Default::default()
                },
                "min_p",
            ),
            (
                SamplerSettings {
                    top_p: 0.0,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplerSettings {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplerSettings {
                    presence_penalty: 3.0,
                    ..Default::default()
                },
                "presence_penalty",
            ),
            (
                SamplerSettings {
                    logit_bias: vec![(99, 1.0)],
                    ..Default::default()
                },
                "logit_bias",
            ),
            (
                SamplerSettings {
                    logit_bias: vec![(1, 101.0)],
                    ..Default::default()
                },
                "logit_bias[1]",
            ),
        ];
        for (s, field) in cases {
            let err = s.validate(10).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}

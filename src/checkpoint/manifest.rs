//! The tensors a configuration implies — name and shape of each — and the check of a
//! checkpoint against them, run on the headers before anything reaches the GPU. Each
//! architecture builds its manifest (`ModelConfig::manifest`).
//!
//! A missing tensor, a wrong shape, a non-float dtype, or a tensor the configuration has no
//! place for (e.g. a layer past `num_layers`) is an error naming the file and the tensor.
//! Latent-expert ranks are read from the shapes and must agree within a group. (Values are
//! checked to be finite as they stream to the GPU.)

use std::collections::{BTreeMap, BTreeSet};

use safetensors::tensor::Dtype;

use super::values::RandomInit;
use super::weights::Weights;
use crate::error::{Error, Result};

/// One dimension of an expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A latent rank: any size >= 1, the same for every tensor naming this key.
    Rank(String),
}

/// One expected tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub name: String,
    pub shape: Vec<Dim>,
    /// How random weights draw it.
    pub init: RandomInit,
    /// A weight matrix: the model reads it with `Scope::matrix` or `Scope::stacked_matrix`,
    /// in the load dtype (quantised with the rest by `--dtype q8|q4` and `moxe quantize`).
    /// Everything else (norms, biases, convolutions, routers, sLSTM's R) keeps its own
    /// storage.
    pub matrix: bool,
}

/// Every tensor of a model, and the ones allowed but unused.
#[derive(Debug, Default)]
pub struct Manifest {
    pub tensors: Vec<Expected>,
    /// Copies, present or not: a tensor a checkpoint may also store, which must then be
    /// the tensor it names (shape and values), e.g. `lm_head.weight` of a tied model, the
    /// embedding (a file that stores a different head is ambiguous: refused).
    pub copies: BTreeMap<String, String>,
}

impl Manifest {
    /// Expects `name` with a fixed `shape` (not a weight matrix: [`Expected::matrix`]).
    pub(crate) fn add(&mut self, name: String, shape: &[usize]) {
        self.add_init(name, shape, RandomInit::default_for(shape.len()));
    }

    /// Expects `name` with a fixed `shape`, drawn with `init` in random weights.
    pub(crate) fn add_init(&mut self, name: String, shape: &[usize], init: RandomInit) {
        let shape = shape.iter().map(|&d| Dim::Fixed(d)).collect();
        self.push(name, shape, init, false);
    }

    /// Expects the weight matrix `name` with a fixed `shape`.
    pub(crate) fn add_matrix(&mut self, name: String, shape: &[usize]) {
        self.add_matrix_dims(name, shape.iter().map(|&d| Dim::Fixed(d)).collect());
    }

    /// Expects the weight matrix `name` with a shape that may name latent ranks.
    pub(crate) fn add_matrix_dims(&mut self, name: String, shape: Vec<Dim>) {
        let init = RandomInit::default_for(shape.len());
        self.push(name, shape, init, true);
    }

    fn push(&mut self, name: String, shape: Vec<Dim>, init: RandomInit, matrix: bool) {
        self.tensors.push(Expected {
            name,
            shape,
            init,
            matrix,
        });
    }

    /// Whether `name` is one of the weight matrices.
    pub fn is_matrix(&self, name: &str) -> bool {
        self.tensors.iter().any(|t| t.matrix && t.name == name)
    }

    /// The tensors of `w` a converted checkpoint keeps: every stored one, and the metadata
    /// aliases this config reads (an alias it does not read is no tensor of the model).
    pub fn kept<'w>(&self, w: &'w Weights) -> Vec<&'w str> {
        w.names()
            .into_iter()
            .filter(|n| !w.is_alias(n) || self.tensors.iter().any(|t| t.name == *n))
            .collect()
    }

    /// Checks every expected tensor in `w` (presence, shape, float dtype, finite values) and
    /// that `w` holds nothing unexpected. Returns the latent ranks by key.
    pub fn check(&self, w: &Weights) -> Result<BTreeMap<String, usize>> {
        let mut ranks: BTreeMap<String, (usize, String)> = BTreeMap::new();
        let mut expected = BTreeSet::new();
        for t in &self.tensors {
            expected.insert(t.name.as_str());
            let Some(found) = w.shape(&t.name) else {
                return Err(Error::file(
                    w.path(),
                    format!(
                        "missing tensor '{}', which config.json implies (do the config and \
                         the weights belong together?)",
                        t.name
                    ),
                ));
            };
            let shape_text = || {
                let dims: Vec<String> = t
                    .shape
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => n.to_string(),
                        Dim::Rank(_) => "r".into(),
                    })
                    .collect();
                format!("[{}]", dims.join(", "))
            };
            let matches = found.len() == t.shape.len()
                && t.shape.iter().zip(found).all(|(d, &f)| match d {
                    Dim::Fixed(n) => *n == f,
                    Dim::Rank(_) => f >= 1,
                });
            if !matches {
                return Err(Error::file(
                    w.file_of(&t.name),
                    format!(
                        "tensor '{}': expected shape {} (from config.json), found {found:?}",
                        t.name,
                        shape_text()
                    ),
                ));
            }
            for (d, &f) in t.shape.iter().zip(found) {
                if let Dim::Rank(key) = d {
                    match ranks.get(key) {
                        Some((r, first)) if *r != f => {
                            return Err(Error::file(
                                w.path(),
                                format!(
                                    "tensor '{}': latent rank {f} disagrees with rank {r} of '{first}' \
                                     (one shared projection per group)",
                                    t.name
                                ),
                            ))
                        }
                        Some(_) => {}
                        None => {
                            ranks.insert(key.clone(), (f, t.name.clone()));
                        }
                    }
                }
            }
            // A float dtype (values are checked to be finite as they are read).
            let float = matches!(
                w.dtype(&t.name),
                Some(Dtype::F32 | Dtype::F16 | Dtype::BF16)
            );
            if !float && w.quant(&t.name).is_none() {
                return Err(Error::file(
                    w.file_of(&t.name),
                    format!(
                        "tensor '{}': expected dtype F32, F16 or BF16 (or a quantised matrix), \
                         found {:?}",
                        t.name,
                        w.dtype(&t.name).expect("present")
                    ),
                ));
            }
        }
        for name in w.names() {
            if let Some(original) = self.copies.get(name) {
                // The original is an expected tensor: present, as checked above.
                let want = w.shape(original).unwrap_or(&[]);
                let found = w.shape(name).unwrap_or(&[]);
                if want != found {
                    return Err(Error::file(
                        w.file_of(name),
                        format!(
                            "tensor '{name}' (a copy of '{original}' for this config): expected \
                             shape {want:?}, found {found:?}"
                        ),
                    ));
                }
                if !w.same_values(name, original)? {
                    return Err(Error::file(
                        w.file_of(name),
                        format!(
                            "tensor '{name}' differs from '{original}', which config.json ties \
                             it to: set tie_weights (tie_word_embeddings) false to use it as \
                             stored, or remove it"
                        ),
                    ));
                }
            }
            // A metadata alias the config does not use is metadata, not a tensor.
            if !expected.contains(name) && !self.copies.contains_key(name) && !w.is_alias(name) {
                return Err(Error::file(
                    w.path(),
                    format!(
                        "unexpected tensor '{name}': config.json describes no such parameter \
                         (wrong config for this checkpoint?)"
                    ),
                ));
            }
        }
        Ok(ranks.into_iter().map(|(k, (r, _))| (k, r)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn weights(tensors: &[(&str, Vec<usize>)]) -> Weights {
        let data: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, s)| vec![0u8; 4 * s.iter().product::<usize>()])
            .collect();
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .zip(&data)
            .map(|((n, s), d)| {
                (
                    n.to_string(),
                    TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
                )
            })
            .collect();
        Weights::from_bytes(
            "m.safetensors".into(),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap()
    }

    fn manifest() -> Manifest {
        let mut m = Manifest::default();
        m.add_matrix("w".into(), &[2, 3]);
        m.add_matrix_dims("a.A".into(), vec![Dim::Fixed(4), Dim::Rank("r".into())]);
        m.add_matrix_dims("b.A".into(), vec![Dim::Fixed(5), Dim::Rank("r".into())]);
        m.copies.insert("extra".into(), "w".into());
        m
    }

    #[test]
    fn checks_presence_shapes_ranks_and_strays() {
        let ok = weights(&[
            ("w", vec![2, 3]),
            ("a.A", vec![4, 7]),
            ("b.A", vec![5, 7]),
            ("extra", vec![2, 3]),
        ]);
        assert_eq!(
            manifest().check(&ok).unwrap(),
            BTreeMap::from([("r".to_string(), 7)])
        );
        let cases = [
            (
                weights(&[("a.A", vec![4, 7]), ("b.A", vec![5, 7])]),
                "missing tensor 'w'",
            ),
            (
                weights(&[("w", vec![3, 2]), ("a.A", vec![4, 7]), ("b.A", vec![5, 7])]),
                "expected shape [2, 3] (from config.json), found [3, 2]",
            ),
            (
                weights(&[("w", vec![2, 3]), ("a.A", vec![4, 7]), ("b.A", vec![5, 6])]),
                "latent rank 6 disagrees with rank 7",
            ),
            (
                weights(&[
                    ("w", vec![2, 3]),
                    ("a.A", vec![4, 7]),
                    ("b.A", vec![5, 7]),
                    ("z", vec![1]),
                ]),
                "unexpected tensor 'z'",
            ),
            (
                weights(&[
                    ("w", vec![2, 3]),
                    ("a.A", vec![4, 7]),
                    ("b.A", vec![5, 7]),
                    ("extra", vec![2]),
                ]),
                "tensor 'extra' (a copy of 'w' for this config): expected shape [2, 3], found [2]",
            ),
        ];
        for (w, needle) in cases {
            let err = manifest().check(&w).unwrap_err().to_string();
            assert!(
                err.contains(needle) && err.contains("m.safetensors"),
                "{err}"
            );
        }
    }
}

//! Intermediate activation buffers shared by the blocks recorded into one graph.
//!
//! Blocks run one after another inside a step, so every block of a kind can reuse the same
//! buffers: a block asks for `(name, cols)` and gets the one `(rows, cols)` f32 tensor held
//! under that key (or, with [`Scratch::get_rows`], for a buffer of another row count).
//! Buffers that are live at the same time inside one block must use different names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::context::Context;
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// Key of a buffer: (name, rows, cols).
type Key = (&'static str, usize, usize);

/// Scratch buffers of `rows` rows, created on first request and shared afterwards.
pub struct Scratch {
    ctx: Context,
    rows: usize,
    buffers: Mutex<HashMap<Key, Arc<Tensor>>>,
}

impl Scratch {
    /// Scratch space for graphs over `rows` rows (tokens).
    pub fn new(ctx: &Context, rows: usize) -> Self {
        Scratch {
            ctx: ctx.clone(),
            rows,
            buffers: Mutex::new(HashMap::new()),
        }
    }

    /// Rows of every buffer.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The `(rows, cols)` f32 buffer held under `name`.
    pub fn get(&self, name: &'static str, cols: usize) -> Result<Arc<Tensor>> {
        self.get_rows(name, self.rows, cols)
    }

    /// The `(rows, cols)` f32 buffer held under `name`, for buffers whose row count is not
    /// the token count (e.g. the expert regions of a MoE layer, shared by all layers).
    pub fn get_rows(&self, name: &'static str, rows: usize, cols: usize) -> Result<Arc<Tensor>> {
        let mut buffers = self.buffers.lock().expect("scratch poisoned");
        if let Some(t) = buffers.get(&(name, rows, cols)) {
            return Ok(t.clone());
        }
        let t = Arc::new(Tensor::zeros(&self.ctx, name, &[rows, cols], DType::F32)?);
        buffers.insert((name, rows, cols), t.clone());
        Ok(t)
    }

    /// Bytes held by all buffers.
    pub fn bytes(&self) -> u64 {
        let buffers = self.buffers.lock().expect("scratch poisoned");
        buffers.values().map(|t| t.bytes()).sum()
    }
}

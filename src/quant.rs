//! Quantised weight matrices (docs/QUANT_FORMAT.md): each row cut into blocks of
//! [`BLOCK`] = 32 weights along K, every block with its own scale.
//!
//! - `q8`: int8 weights, symmetric: `w = q * scale`, q in [-127, 127], scale = max|w| / 127
//!   (f32). 9 bits per weight.
//! - `q4`: 4-bit weights with a minimum: `w = q * scale + min`, q in [0, 15],
//!   scale = (max - min) / 15, scale and min as bf16 packed in one u32 (scale in the low
//!   half). 5 bits per weight.
//!
//! A quantised row of K weights has `stride` = K rounded up to a multiple of 32 elements
//! (the padding quantises zeros): its data is `stride` bytes (q8: element e in byte e) or
//! `stride / 2` bytes (q4: of the 8 elements in each u32, element i < 4 in the low nibble
//! of byte i and element 4 + i in its high nibble, so a kernel extracts both halves with one
//! shift and mask of four bytes), and its scales are `stride / 32` u32 words rounded up to
//! a multiple of 4 (so that kernels load four blocks' scales as one vec4).
//!
//! The GPU dequantises exactly these values; [`dequantize_row`] is the CPU reference.

use half::bf16;

/// Weights per block (one scale each).
pub const BLOCK: usize = 32;

/// A quantised storage format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    Q8,
    Q4,
}

impl QuantFormat {
    /// `q8` or `q4`.
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q8 => "q8",
            QuantFormat::Q4 => "q4",
        }
    }

    /// The format named `name` (`q8`, `q4`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "q8" => Some(QuantFormat::Q8),
            "q4" => Some(QuantFormat::Q4),
            _ => None,
        }
    }

    /// Bits per stored weight.
    pub fn bits(self) -> usize {
        match self {
            QuantFormat::Q8 => 8,
            QuantFormat::Q4 => 4,
        }
    }

    /// Stored elements per row of `cols` weights: a multiple of [`BLOCK`].
    pub fn stride(self, cols: usize) -> usize {
        cols.div_ceil(BLOCK).max(1) * BLOCK
    }

    /// Bytes of quantised data per row.
    pub fn data_row_bytes(self, cols: usize) -> usize {
        self.stride(cols) * self.bits() / 8
    }

    /// u32 scale words per row: one per block, rounded up to a multiple of 4.
    pub fn scale_row_words(self, cols: usize) -> usize {
        (self.stride(cols) / BLOCK).div_ceil(4) * 4
    }

    /// Bytes per row, data and scales.
    pub fn row_bytes(self, cols: usize) -> usize {
        self.data_row_bytes(cols) + 4 * self.scale_row_words(cols)
    }

    /// Quantises one row (`row.len()` = cols weights) into `data`
    /// ([`QuantFormat::data_row_bytes`]) and `scales` ([`QuantFormat::scale_row_words`]).
    pub fn quantize_row(self, row: &[f32], data: &mut [u8], scales: &mut [u32]) {
        let stride = self.stride(row.len());
        data.fill(0);
        scales.fill(0);
        for (b, start) in (0..stride).step_by(BLOCK).enumerate() {
            let mut block = [0.0f32; BLOCK];
            let end = (start + BLOCK).min(row.len());
            if start < end {
                block[..end - start].copy_from_slice(&row[start..end]);
            }
            scales[b] = match self {
                QuantFormat::Q8 => quantize_q8(&block, &mut data[start..start + BLOCK]),
                QuantFormat::Q4 => quantize_q4(&block, &mut data[start / 2..(start + BLOCK) / 2]),
            };
        }
    }

    /// The first block of a row of `cols` weights whose scale word gives a non-finite weight
    /// (a NaN or infinite scale or minimum, or a largest code past f32's range), with what
    /// is wrong with it: corrupt data.
    pub fn bad_scale(self, scales: &[u32], cols: usize) -> Option<(usize, String)> {
        let blocks = self.stride(cols) / BLOCK;
        scales.iter().take(blocks).enumerate().find_map(|(b, &s)| {
            let (scale, min) = match self {
                QuantFormat::Q8 => (f32::from_bits(s), 0.0),
                QuantFormat::Q4 => q4_scale_min(s),
            };
            let top = match self {
                QuantFormat::Q8 => 127.0 * scale.abs(),
                QuantFormat::Q4 => 15.0 * scale + min,
            };
            (!(scale.is_finite() && min.is_finite() && top.is_finite()))
                .then(|| (b, format!("scale {scale}, minimum {min}")))
        })
    }

    /// The `cols` weights of a quantised row.
    pub fn dequantize_row(self, data: &[u8], scales: &[u32], cols: usize) -> Vec<f32> {
        (0..cols)
            .map(|e| {
                let s = scales[e / BLOCK];
                match self {
                    QuantFormat::Q8 => data[e] as i8 as f32 * f32::from_bits(s),
                    QuantFormat::Q4 => {
                        let (scale, min) = q4_scale_min(s);
                        q4_code(data, e) as f32 * scale + min
                    }
                }
            })
            .collect()
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// q8 of one block: the codes into `out` (32 bytes), the scale's f32 bits returned.
fn quantize_q8(block: &[f32; BLOCK], out: &mut [u8]) -> u32 {
    let amax = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let scale = amax / 127.0;
    for (o, &v) in out.iter_mut().zip(block) {
        let q = if scale > 0.0 {
            (v / scale).round().clamp(-127.0, 127.0)
        } else {
            0.0
        };
        *o = q as i8 as u8;
    }
    scale.to_bits()
}

/// The (scale, min) of a q4 block's scale word.
fn q4_scale_min(word: u32) -> (f32, f32) {
    (
        bf16::from_bits(word as u16).to_f32(),
        bf16::from_bits((word >> 16) as u16).to_f32(),
    )
}

/// The 4-bit code of element `e` of a q4 row's data.
fn q4_code(data: &[u8], e: usize) -> u8 {
    let (word, i) = (e / 8, e % 8);
    let byte = data[4 * word + i % 4];
    if i < 4 {
        byte & 15
    } else {
        byte >> 4
    }
}

/// q4 of one block with scale (max - min) / 15 and min: the codes into `out` (16 bytes),
/// the scale word returned.
fn quantize_q4(block: &[f32; BLOCK], out: &mut [u8]) -> u32 {
    let lo = block.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (scale, min) = (bf16::from_f32((hi - lo) / 15.0), bf16::from_f32(lo));
    encode_q4(block, scale, min, out)
}

/// The codes of `block` for the given bf16 scale and min (q = round((w - min) / scale),
/// clamped to [0, 15]) into `out`; the scale word returned.
fn encode_q4(block: &[f32; BLOCK], scale: bf16, min: bf16, out: &mut [u8]) -> u32 {
    let (s, m) = (scale.to_f32(), min.to_f32());
    for (e, &v) in block.iter().enumerate() {
        let q = if s != 0.0 {
            ((v - m) / s).round().clamp(0.0, 15.0) as u8
        } else {
            0
        };
        let (word, i) = (e / 8, e % 8);
        let byte = &mut out[4 * word + i % 4];
        *byte |= if i < 4 { q } else { q << 4 };
    }
    scale.to_bits() as u32 | (min.to_bits() as u32) << 16
}

/// Quantises a row-major (rows, cols) matrix: the data and scales of each row in turn.
pub fn quantize(format: QuantFormat, values: &[f32], cols: usize) -> (Vec<u8>, Vec<u32>) {
    let rows = values.len() / cols.max(1);
    let (db, sw) = (format.data_row_bytes(cols), format.scale_row_words(cols));
    let mut data = vec![0u8; rows * db];
    let mut scales = vec![0u32; rows * sw];
    for r in 0..rows {
        format.quantize_row(
            &values[r * cols..(r + 1) * cols],
            &mut data[r * db..(r + 1) * db],
            &mut scales[r * sw..(r + 1) * sw],
        );
    }
    (data, scales)
}

/// The weights of a quantised (rows, cols) matrix (see [`quantize`]).
pub fn dequantize(format: QuantFormat, data: &[u8], scales: &[u32], cols: usize) -> Vec<f32> {
    let (db, sw) = (format.data_row_bytes(cols), format.scale_row_words(cols));
    let rows = data.len() / db.max(1);
    (0..rows)
        .flat_map(|r| {
            format.dequantize_row(
                &data[r * db..(r + 1) * db],
                &scales[r * sw..(r + 1) * sw],
                cols,
            )
        })
        .collect()
}

/// `values` quantised and dequantised: what a quantised matrix holds.
pub fn round_trip(format: QuantFormat, values: &[f32], cols: usize) -> Vec<f32> {
    let (data, scales) = quantize(format, values, cols);
    dequantize(format, &data, &scales, cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_bits_count_a_row_s_data_and_scales() {
        for format in [QuantFormat::Q8, QuantFormat::Q4] {
            let bits = crate::tensor::DType::of_quant(format).device_bits();
            assert_eq!(format.row_bytes(4096) * 8, 4096 * bits, "{format}");
        }
    }
    use crate::testing::Rng;

    #[test]
    fn layouts_are_block_aligned() {
        for f in [QuantFormat::Q8, QuantFormat::Q4] {
            assert_eq!(f.stride(1), 32);
            assert_eq!(f.stride(4096), 4096);
            assert_eq!(f.stride(33), 64);
            assert_eq!(f.scale_row_words(4096), 128);
            assert_eq!(f.scale_row_words(33), 4);
            assert_eq!(f.data_row_bytes(64) % 16, 0);
        }
        assert_eq!(QuantFormat::Q4.data_row_bytes(64), 32);
        assert_eq!(QuantFormat::Q8.row_bytes(64), 64 + 16);
    }

    #[test]
    fn errors_stay_within_half_a_step() {
        let mut rng = Rng::new(3);
        let cols = 100;
        let w = rng.normal_vec(7 * cols, 1.0);
        for f in [QuantFormat::Q8, QuantFormat::Q4] {
            let back = round_trip(f, &w, cols);
            for (row, (a, b)) in w.chunks(cols).zip(back.chunks(cols)).enumerate() {
                for (blk, (x, y)) in a.chunks(BLOCK).zip(b.chunks(BLOCK)).enumerate() {
                    let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
                    let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let amax = lo.abs().max(hi.abs());
                    let step = match f {
                        QuantFormat::Q8 => amax / 127.0,
                        QuantFormat::Q4 => (hi - lo) / 15.0,
                    };
                    for (u, v) in x.iter().zip(y) {
                        // bf16 scale and min add up to ~1% of a step.
                        assert!(
                            (u - v).abs() <= 0.51 * step + 1e-2 * amax / 127.0,
                            "{f} row {row} block {blk}: {u} vs {v}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn constant_and_zero_blocks_are_exact() {
        for f in [QuantFormat::Q8, QuantFormat::Q4] {
            assert_eq!(round_trip(f, &[0.0; 40], 40), vec![0.0; 40]);
            let ones = round_trip(f, &[1.0; 32], 32);
            assert!(
                ones.iter().all(|&v| (v - 1.0).abs() < 1e-2),
                "{f}: {ones:?}"
            );
        }
    }
}

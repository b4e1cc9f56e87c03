//! Stored tensor elements (little-endian f32, f16 or bf16) converted to the dtype a GPU
//! tensor stores, each value checked on the way; and the values of random weights.

use half::{bf16, f16};
use safetensors::tensor::Dtype;

use crate::tensor::DType;

/// A bad value: its column in the row, and what is wrong with it.
pub(crate) type Problem = (usize, String);

fn decode(src: &[u8], from: Dtype, i: usize) -> f32 {
    match from {
        Dtype::F32 => f32::from_le_bytes(src[4 * i..4 * i + 4].try_into().expect("4 bytes")),
        Dtype::F16 => f16::from_le_bytes([src[2 * i], src[2 * i + 1]]).to_f32(),
        Dtype::BF16 => bf16::from_le_bytes([src[2 * i], src[2 * i + 1]]).to_f32(),
        other => unreachable!("checked float dtype, found {other:?}"),
    }
}

fn not_finite(col: usize, v: f32) -> Problem {
    (col, format!("is {v} (corrupt data)"))
}

/// Fails at the first infinity or NaN of the f32, f16 or bf16 values `src` (their bit
/// patterns: an all-ones exponent); other types pass.
pub(crate) fn check_finite(src: &[u8], dtype: Dtype) -> Result<(), Problem> {
    let bad = match dtype {
        Dtype::F32 => src.chunks_exact(4).position(|b| {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000
        }),
        Dtype::F16 => src
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00),
        Dtype::BF16 => src
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80),
        _ => None,
    };
    match bad {
        Some(i) => Err(not_finite(i, decode(src, dtype, i))),
        None => Ok(()),
    }
}

/// Writes `v` as element `i` of `dst` in `to`.
fn encode(dst: &mut [u8], to: DType, i: usize, v: f32) -> Result<(), Problem> {
    match to {
        DType::F16 => {
            if v.abs() > f16::MAX.to_f32() {
                return Err((
                    i,
                    format!(
                        "= {v} is beyond the f16 range (65504); load it as f32 (--dtype f32) \
                         or bf16"
                    ),
                ));
            }
            dst[2 * i..2 * i + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
        DType::BF16 => {
            let b = bf16::from_f32(v);
            if b.is_infinite() {
                return Err((i, format!("= {v} is beyond the bf16 range; load it as f32")));
            }
            dst[2 * i..2 * i + 2].copy_from_slice(&b.to_le_bytes());
        }
        _ => dst[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes()),
    }
    Ok(())
}

/// Converts one row of stored elements `src` (dtype `from`) into `dst` as `to` (F32, F16 or
/// BF16). Fails on a non-finite value, or one beyond the range of `to`.
pub(crate) fn convert_row(
    src: &[u8],
    from: Dtype,
    dst: &mut [u8],
    to: DType,
) -> Result<(), Problem> {
    let n = src.len() / (from.bitsize() / 8);
    let same = matches!(
        (from, to),
        (Dtype::F32, DType::F32) | (Dtype::F16, DType::F16) | (Dtype::BF16, DType::BF16)
    );
    if same {
        dst[..src.len()].copy_from_slice(src);
        return check_finite(src, from);
    }
    for i in 0..n {
        let v = decode(src, from, i);
        if !v.is_finite() {
            return Err(not_finite(i, v));
        }
        encode(dst, to, i, v)?;
    }
    Ok(())
}

/// How random weights draw a tensor's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RandomInit {
    /// Uniform with variance 1 / fan_in (fan_in = the last dim): activations stay of order one.
    Uniform,
    /// Zeros (biases; norm weights stored as offsets from 1).
    Zero,
    /// Ones (norm weights stored directly).
    One,
}

impl RandomInit {
    /// Uniform for matrices (rank >= 2), zeros for vectors.
    pub fn default_for(rank: usize) -> Self {
        if rank >= 2 {
            RandomInit::Uniform
        } else {
            RandomInit::Zero
        }
    }
}

/// A 64-bit hash of the tensor name and seed (FNV-1a), the base of its values.
fn name_seed(seed: u64, name: &str) -> u64 {
    super::weights::fnv1a(super::weights::FNV_START ^ seed, name.as_bytes())
}

/// The state of row `row`'s generator (a splitmix64 finaliser of the tensor's base and the
/// row), so any row is drawn without drawing the rows before it.
fn row_state(base: u64, row: u64) -> u64 {
    let mut h = (base ^ row).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    (h ^ (h >> 31)) | 1
}

/// The next uniform value in [0, 1) of a row's xorshift64 generator: cheap enough to draw a
/// 7B model's values while loading.
fn next_unit(x: &mut u64) -> f32 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    (*x >> 40) as f32 / (1u64 << 24) as f32
}

/// Row `row` of the random tensor `name` (shape `shape`, drawn with `init`, stored as
/// `stored` so that a bf16 tensor holds bf16 values) written into `dst` as `to`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn random_row(
    seed: u64,
    name: &str,
    init: RandomInit,
    shape: &[usize],
    row: usize,
    stored: Dtype,
    dst: &mut [u8],
    to: DType,
) {
    let cols = *shape.last().unwrap_or(&1);
    let bound = (3.0 / cols.max(1) as f32).sqrt();
    let mut x = row_state(name_seed(seed, name), row as u64);
    let mut value = |_: usize| -> f32 {
        match init {
            RandomInit::Uniform => (2.0 * next_unit(&mut x) - 1.0) * bound,
            RandomInit::Zero => 0.0,
            RandomInit::One => 1.0,
        }
    };
    // Rounded to the stored type, then encoded as `to` (exactly, the values being small).
    let round = |v: f32| match stored {
        Dtype::F16 => f16::from_f32(v).to_f32(),
        Dtype::BF16 => bf16::from_f32(v).to_f32(),
        _ => v,
    };
    match to {
        DType::F16 => {
            for (c, out) in dst[..2 * cols].chunks_exact_mut(2).enumerate() {
                out.copy_from_slice(&f16::from_f32(round(value(c))).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (c, out) in dst[..2 * cols].chunks_exact_mut(2).enumerate() {
                out.copy_from_slice(&bf16::from_f32(round(value(c))).to_le_bytes());
            }
        }
        _ => {
            for (c, out) in dst[..4 * cols].chunks_exact_mut(4).enumerate() {
                out.copy_from_slice(&round(value(c)).to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_f32(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn conversions_round_like_the_half_crate_and_flag_bad_values() {
        let src = bytes_f32(&[1.0, -2.5, 1.0e-3, 3.0e4]);
        let mut dst = vec![0u8; 8];
        convert_row(&src, Dtype::F32, &mut dst, DType::BF16).unwrap();
        let got: Vec<f32> = dst
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        let want: Vec<f32> = [1.0f32, -2.5, 1.0e-3, 3.0e4]
            .iter()
            .map(|&v| bf16::from_f32(v).to_f32())
            .collect();
        assert_eq!(got, want);
        let src = bytes_f32(&[1.0, f32::INFINITY]);
        let err = convert_row(&src, Dtype::F32, &mut [0u8; 8], DType::F32).unwrap_err();
        assert_eq!(err.0, 1);
        let nan = bf16::NAN.to_le_bytes();
        let err = convert_row(
            &[0, 0, nan[0], nan[1]],
            Dtype::BF16,
            &mut [0u8; 4],
            DType::BF16,
        )
        .unwrap_err();
        assert!(err.0 == 1 && err.1.contains("NaN"), "{err:?}");
        let err =
            convert_row(&bytes_f32(&[7.0e4]), Dtype::F32, &mut [0u8; 2], DType::F16).unwrap_err();
        assert!(err.1.contains("f16 range"), "{err:?}");
    }
}

//! Alignment heads: a linear map from an encoder's own space into the
//! network's embedding space.
//!
//! A weighted average and an outlier test only mean something when every
//! encoder of a shard embeds into the same space (DESIGN.md, "One embedding
//! space"). An encoder built on another model ships a head fitted by ridge
//! regression against the reference encoder (`soma-align` fits one) and
//! applies it before returning vectors: `normalise(W·v + b)`.
//!
//! The head is compiled into the component (so it ships in the package)
//! and applied in wasm with a fixed summation order: the same bits on every
//! machine.
//!
//! File format, little-endian: the magic `SOMAHD01`, the input and output
//! dimensions as `u32`, then `output × input` weights (row-major, one row
//! per output value) and `output` biases as `f32`.

use crate::vector::l2_normalize;

const MAGIC: &[u8; 8] = b"SOMAHD01";

/// Largest input or output dimension of a head.
pub const MAX_HEAD_DIMENSION: u32 = 4096;

/// A linear alignment head.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    input: usize,
    output: usize,
    /// The weights by input value: `input × output`, the transpose of the
    /// file's rows, so that [`Head::apply`] adds whole columns and skips
    /// the zero values of sparse vectors.
    columns: Vec<f32>,
    bias: Vec<f32>,
}

impl Head {
    /// A head from its parts (`weights` row-major, one row of `input`
    /// values per output value); `None` if the sizes do not match or a
    /// value is not finite.
    pub fn new(input: usize, output: usize, weights: Vec<f32>, bias: Vec<f32>) -> Option<Head> {
        let fits = |d: usize| d > 0 && d <= MAX_HEAD_DIMENSION as usize;
        (fits(input)
            && fits(output)
            && weights.len() == input * output
            && bias.len() == output
            && weights.iter().chain(&bias).all(|x| x.is_finite()))
        .then(|| Head {
            input,
            output,
            columns: transpose(&weights, output, input),
            bias,
        })
    }

    /// Reads a head file; says what is wrong with one that is not.
    pub fn parse(bytes: &[u8]) -> Result<Head, String> {
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or("not an alignment head (bad magic)")?;
        let dimension = |at: usize| -> Result<usize, String> {
            let raw = rest.get(at..at + 4).ok_or("truncated header")?;
            let d = u32::from_le_bytes(raw.try_into().unwrap_or_default());
            match d {
                1..=MAX_HEAD_DIMENSION => Ok(d as usize),
                _ => Err(format!("dimension {d} out of range")),
            }
        };
        let (input, output) = (dimension(0)?, dimension(4)?);
        let values = &rest[8..];
        let expected = (input * output + output) * 4;
        if values.len() != expected {
            return Err(format!(
                "{} bytes of values; a {input} → {output} head has {expected}",
                values.len()
            ));
        }
        let floats: Vec<f32> = values
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let (weights, bias) = floats.split_at(input * output);
        Head::new(input, output, weights.to_vec(), bias.to_vec())
            .ok_or_else(|| "a value is not finite".to_string())
    }

    /// A head compiled into the component, taking `input` values. One that
    /// does not parse, or takes other vectors, is a build bug: this panics,
    /// which the host reports when it pre-initialises the component.
    pub fn compiled_in(bytes: &[u8], input: usize) -> Head {
        let head = Head::parse(bytes).expect("the compiled-in head parses");
        assert_eq!(
            head.input, input,
            "the compiled-in head takes {input} values"
        );
        head
    }

    /// The head file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(self.input as u32).to_le_bytes());
        out.extend_from_slice(&(self.output as u32).to_le_bytes());
        let rows = transpose(&self.columns, self.input, self.output);
        for x in rows.iter().chain(&self.bias) {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out
    }

    /// Dimension of the vectors it takes.
    pub fn input(&self) -> usize {
        self.input
    }

    /// Dimension of the vectors it gives.
    pub fn output(&self) -> usize {
        self.output
    }

    /// `normalise(W·v + b)`; `None` if `v` has the wrong dimension.
    ///
    /// Every output value is summed in one fixed order, `b + w₀v₀ + w₁v₁ +
    /// …`, so the bits are the same on every machine. Zero values of `v`
    /// are skipped (hashed features are mostly zeros): their products are
    /// ±0 and leave every non-zero sum unchanged (an output of exactly zero
    /// may differ in its sign from the full sum's). Outputs are summed
    /// [`BLOCK`] at a time in independent sums held across all inputs, so
    /// the loop vectorises (with `simd128` in wasm) and keeps its sums in
    /// registers without reordering any of them.
    pub fn apply(&self, v: &[f32]) -> Option<Vec<f32>> {
        if v.len() != self.input {
            return None;
        }
        let inputs: Vec<(&[f32], f32)> = self
            .columns
            .chunks_exact(self.output)
            .zip(v)
            .filter(|(_, x)| **x != 0.0)
            .map(|(column, &x)| (column, x))
            .collect();
        let mut out = self.bias.clone();
        let mut blocks = out.chunks_exact_mut(BLOCK);
        for (b, block) in blocks.by_ref().enumerate() {
            let mut sums: [f32; BLOCK] = block.try_into().expect("a whole block");
            for (column, x) in &inputs {
                let weights: &[f32; BLOCK] = column[b * BLOCK..][..BLOCK]
                    .try_into()
                    .expect("a whole block");
                for (sum, w) in sums.iter_mut().zip(weights) {
                    *sum += w * x;
                }
            }
            block.copy_from_slice(&sums);
        }
        let done = self.output - blocks.into_remainder().len();
        for (i, sum) in out.iter_mut().enumerate().skip(done) {
            for (column, x) in &inputs {
                *sum += column[i] * x;
            }
        }
        l2_normalize(&mut out);
        Some(out)
    }
}

/// Output values [`Head::apply`] sums at once: four 128-bit vectors.
const BLOCK: usize = 16;

/// The transpose of the row-major `rows × columns` matrix `m`.
fn transpose(m: &[f32], rows: usize, columns: usize) -> Vec<f32> {
    (0..columns)
        .flat_map(|c| (0..rows).map(move |r| m[r * columns + c]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swap() -> Head {
        // Swaps two coordinates.
        Head::new(2, 2, vec![0.0, 1.0, 1.0, 0.0], vec![0.0, 0.0]).unwrap()
    }

    #[test]
    fn a_head_round_trips_and_maps_vectors() {
        let head = swap();
        assert_eq!(Head::parse(&head.to_bytes()).unwrap(), head);
        assert_eq!(head.apply(&[0.6, 0.8]).unwrap(), vec![0.8, 0.6]);
        let shifted = Head::new(2, 2, vec![1.0, 0.0, 0.0, 1.0], vec![1.0, 0.0]).unwrap();
        assert_eq!(
            shifted.apply(&[0.0, 1.0]).unwrap(),
            vec![0.70710677, 0.70710677]
        );
        assert_eq!(head.apply(&[1.0]), None);
    }

    #[test]
    fn apply_gives_the_bits_of_the_row_by_row_sum_and_files_keep_their_layout() {
        // A 5 → 19 head (a whole block and a remainder) with varied
        // values, and vectors dense and sparse.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let (input, output) = (5, 19);
        let rows: Vec<f32> = (0..input * output).map(|_| next()).collect();
        let bias: Vec<f32> = (0..output).map(|_| next()).collect();
        let head = Head::new(input, output, rows.clone(), bias.clone()).unwrap();
        let mut file = MAGIC.to_vec();
        for d in [input as u32, output as u32] {
            file.extend_from_slice(&d.to_le_bytes());
        }
        for x in rows.iter().chain(&bias) {
            file.extend_from_slice(&x.to_le_bytes());
        }
        assert_eq!(head.to_bytes(), file);
        assert_eq!(Head::parse(&file).unwrap(), head);
        for v in [
            (0..input).map(|_| next()).collect::<Vec<f32>>(),
            vec![0.0, next(), 0.0, 0.0, next()],
        ] {
            let mut expected: Vec<f32> = rows
                .chunks_exact(input)
                .zip(&bias)
                .map(|(row, b)| row.iter().zip(&v).fold(*b, |sum, (w, x)| sum + w * x))
                .collect();
            l2_normalize(&mut expected);
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            assert_eq!(bits(head.apply(&v).unwrap()), bits(expected));
        }
    }

    #[test]
    fn a_compiled_in_head_is_checked_for_its_input() {
        assert_eq!(Head::compiled_in(&swap().to_bytes(), 2), swap());
    }

    #[test]
    #[should_panic(expected = "takes 3 values")]
    fn a_compiled_in_head_for_other_vectors_is_a_build_bug() {
        Head::compiled_in(&swap().to_bytes(), 3);
    }

    #[test]
    fn bad_head_files_say_what_is_wrong() {
        let good = swap().to_bytes();
        assert!(Head::parse(b"SOMAHD02").unwrap_err().contains("magic"));
        assert!(Head::parse(&good[..12]).unwrap_err().contains("truncated"));
        assert!(
            Head::parse(&good[..good.len() - 1])
                .unwrap_err()
                .contains("bytes")
        );
        let mut zero = good.clone();
        zero[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert!(Head::parse(&zero).unwrap_err().contains("out of range"));
        let mut nan = good;
        let at = nan.len() - 4;
        nan[at..].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(Head::parse(&nan).unwrap_err().contains("finite"));
        assert!(Head::new(2, 2, vec![0.0; 3], vec![0.0; 2]).is_none());
    }
}

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
    /// `output × input`, row-major.
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl Head {
    /// A head from its parts; `None` if the sizes do not match or a value
    /// is not finite.
    pub fn new(input: usize, output: usize, weights: Vec<f32>, bias: Vec<f32>) -> Option<Head> {
        let fits = |d: usize| d > 0 && d <= MAX_HEAD_DIMENSION as usize;
        (fits(input)
            && fits(output)
            && weights.len() == input * output
            && bias.len() == output
            && weights.iter().chain(&bias).all(|x| x.is_finite()))
        .then_some(Head {
            input,
            output,
            weights,
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
        for x in self.weights.iter().chain(&self.bias) {
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
    pub fn apply(&self, v: &[f32]) -> Option<Vec<f32>> {
        if v.len() != self.input {
            return None;
        }
        let mut out: Vec<f32> = self
            .weights
            .chunks_exact(self.input)
            .zip(&self.bias)
            .map(|(row, b)| row.iter().zip(v).fold(*b, |sum, (w, x)| sum + w * x))
            .collect();
        l2_normalize(&mut out);
        Some(out)
    }
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

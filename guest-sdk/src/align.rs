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
//! Weights are 8-bit integers with one scale per output value (each weight
//! within half a step of the fitted one, a step being its row's largest
//! weight ÷ 127; a row whose largest weight is too small for its step to
//! be a normal `f32`, below some 1e-36, loses that precision). A head is a
//! quarter of its `f32` size, so a fresh instance faults in a quarter of
//! the pages to read it, and a vector of integer counts (hashed features,
//! [`Head::apply_counts`]) is summed through it exactly in integers, with
//! no NaN to canonicalise in the loop; only the scaling of each sum is
//! floating point. A head's author owns its values: scales so large that
//! a sum overflows `f32` give non-finite outputs, which the host refuses as
//! the encoder's invalid output.
//!
//! File format, little-endian: the magic `SOMAHD02`, the input and output
//! dimensions as `u32`, `output` scales and `output` biases as `f32`, then
//! `output × input` weights as `i8` (row-major, one row per output value).

use crate::vector::l2_normalize;

const MAGIC: &[u8; 8] = b"SOMAHD02";

/// Largest input or output dimension of a head.
pub const MAX_HEAD_DIMENSION: u32 = 4096;

/// Largest magnitude of a weight [`Head::new`] stores (a file may hold
/// -128, which [`Head::apply_counts`] allows for).
const MAX_WEIGHT: f32 = 127.0;

/// A linear alignment head.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    input: usize,
    output: usize,
    /// The weights by input value: `input × output`, the transpose of the
    /// file's rows, so that applying adds whole columns and skips the zero
    /// values of sparse vectors.
    columns: Vec<i8>,
    /// Per output value, what one step of its stored weights is worth.
    scales: Vec<f32>,
    bias: Vec<f32>,
}

impl Head {
    /// A head from fitted parts (`weights` row-major, one row of `input`
    /// values per output value), its weights rounded to 8-bit steps; `None`
    /// if the sizes do not match or a value is not finite.
    pub fn new(input: usize, output: usize, weights: Vec<f32>, bias: Vec<f32>) -> Option<Head> {
        if !fits(input)
            || !fits(output)
            || weights.len() != input * output
            || !weights.iter().all(|w| w.is_finite())
        {
            return None;
        }
        let mut scales = Vec::with_capacity(output);
        let mut rows = Vec::with_capacity(weights.len());
        for row in weights.chunks_exact(input) {
            let largest = row.iter().fold(0.0f32, |m, w| m.max(w.abs()));
            let scale = largest / MAX_WEIGHT;
            scales.push(scale);
            rows.extend(row.iter().map(|&w| match scale > 0.0 {
                // Within ±127: |w| ≤ largest, and the division rounds to at
                // most 127.0.
                true => (w / scale).round().clamp(-MAX_WEIGHT, MAX_WEIGHT) as i8,
                false => 0,
            }));
        }
        Head::from_stored(input, output, rows, scales, bias)
    }

    /// A head from its stored parts; `None` if the sizes do not match or a
    /// scale or bias is not finite (or a scale is negative).
    fn from_stored(
        input: usize,
        output: usize,
        rows: Vec<i8>,
        scales: Vec<f32>,
        bias: Vec<f32>,
    ) -> Option<Head> {
        (fits(input)
            && fits(output)
            && rows.len() == input * output
            && scales.len() == output
            && bias.len() == output
            && scales.iter().all(|s| s.is_finite() && *s >= 0.0)
            && bias.iter().all(|b| b.is_finite()))
        .then(|| Head {
            input,
            output,
            columns: transpose(&rows, output, input),
            scales,
            bias,
        })
    }

    /// Reads a head file; says what is wrong with one that is not.
    pub fn parse(bytes: &[u8]) -> Result<Head, String> {
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or("not an alignment head (bad magic; heads of the older f32 format, SOMAHD01, must be refitted)")?;
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
        let expected = output * 8 + input * output;
        if values.len() != expected {
            return Err(format!(
                "{} bytes of values; a {input} → {output} head has {expected}",
                values.len()
            ));
        }
        let (floats, weights) = values.split_at(output * 8);
        let floats: Vec<f32> = floats
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let (scales, bias) = floats.split_at(output);
        let rows = weights.iter().map(|&w| w as i8).collect();
        Head::from_stored(input, output, rows, scales.to_vec(), bias.to_vec())
            .ok_or_else(|| "a scale or bias is not finite, or a scale is negative".to_string())
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
        for x in self.scales.iter().chain(&self.bias) {
            out.extend_from_slice(&x.to_le_bytes());
        }
        let rows = transpose(&self.columns, self.input, self.output);
        out.extend(rows.iter().map(|&w| w as u8));
        out
    }

    /// The weights as applied, row-major (each stored step times its row's
    /// scale): what the fitted weights were rounded to.
    pub fn weights(&self) -> Vec<f32> {
        transpose(&self.columns, self.input, self.output)
            .chunks_exact(self.input)
            .zip(&self.scales)
            .flat_map(|(row, &scale)| row.iter().map(move |&q| scale * f32::from(q)))
            .collect()
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
    /// Output value `i` is `bᵢ + sᵢ·(q₀v₀ + q₁v₁ + …)` for its stored
    /// weights `q` and scale `s`, summed in that one order, so the bits are
    /// the same on every machine. Zero values of `v` are skipped: their
    /// products are ±0 and leave every non-zero sum unchanged (an output of
    /// exactly zero may differ in its sign from the full sum's).
    pub fn apply(&self, v: &[f32]) -> Option<Vec<f32>> {
        if v.len() != self.input {
            return None;
        }
        let sums = self.column_sums(&self.nonzero(v));
        let mut out: Vec<f32> = sums
            .iter()
            .zip(&self.scales)
            .zip(&self.bias)
            .map(|((sum, scale), bias)| bias + scale * sum)
            .collect();
        l2_normalize(&mut out);
        Some(out)
    }

    /// `normalise(W·c/|c| + b)` for a vector of integer counts `c` (what
    /// [`crate::hashing::hashed_counts`] gives): the same map as
    /// [`Head::apply`] on `c` normalised, within rounding, but summed
    /// exactly in integers. `None` if `c` has the wrong dimension.
    ///
    /// Counts so large that a sum could overflow 32 bits (some 16 million
    /// in all) go through [`Head::apply`] instead.
    pub fn apply_counts(&self, c: &[i32]) -> Option<Vec<f32>> {
        if c.len() != self.input {
            return None;
        }
        let inputs = self.nonzero(c);
        let total: u64 = inputs
            .iter()
            .map(|(_, x)| u64::from(x.unsigned_abs()))
            .sum();
        if total > i32::MAX as u64 / 128 {
            let mut v: Vec<f32> = c.iter().map(|&x| x as f32).collect();
            l2_normalize(&mut v);
            return self.apply(&v);
        }
        let squares: u64 = inputs
            .iter()
            .map(|(_, x)| (i64::from(*x) * i64::from(*x)) as u64)
            .sum();
        let sums = self.column_sums(&inputs);
        let mut out = self.bias.clone();
        if squares > 0 {
            // One reciprocal of the norm for all outputs: each is then
            // `bias + (scale · 1/|c|) · sum` in `f32`, which vectorises.
            let inverse = (1.0 / (squares as f64).sqrt()) as f32;
            for ((out, &sum), &scale) in out.iter_mut().zip(&sums).zip(&self.scales) {
                *out += scale * inverse * sum as f32;
            }
        }
        l2_normalize(&mut out);
        Some(out)
    }

    /// The non-zero values of `v`, in order, each with its column of
    /// weights. Most values of a sparse vector are zero, and [`SCAN`] of
    /// them at a time are passed over with one test.
    fn nonzero<'a, T: Lane>(&'a self, v: &[T]) -> Vec<(&'a [i8], T)> {
        let mut inputs = Vec::with_capacity(v.len());
        let mut add = |columns: &'a [i8], values: &[T]| {
            for (column, &x) in columns.chunks_exact(self.output).zip(values) {
                if x != T::ZERO {
                    inputs.push((column, x));
                }
            }
        };
        let mut columns = self.columns.chunks_exact(self.output * SCAN);
        let mut values = v.chunks_exact(SCAN);
        for (group_columns, group) in columns.by_ref().zip(values.by_ref()) {
            let group: &[T; SCAN] = group.try_into().expect("a whole group");
            if group.iter().fold(false, |any, x| any | (*x != T::ZERO)) {
                add(group_columns, group);
            }
        }
        add(columns.remainder(), values.remainder());
        inputs
    }

    /// `Σⱼ qᵢⱼ·vⱼ` for every output value `i`, over `inputs` (the non-zero
    /// `vⱼ` and their columns, [`Head::nonzero`]) in order. Outputs are
    /// summed [`BLOCK`] at a time in independent sums held across all
    /// inputs, so the loop vectorises (with `simd128` in wasm) without
    /// reordering any of them. Inputs go [`UNROLL`] at a time, each added
    /// in turn: in wasm every loop iteration checks fuel and the epoch,
    /// whose out-of-line calls make Cranelift keep the sums on the stack
    /// between iterations (seen in the compiled code).
    fn column_sums<T: Lane>(&self, inputs: &[(&[i8], T)]) -> Vec<T> {
        let mut out = vec![T::ZERO; self.output];
        let mut blocks = out.chunks_exact_mut(BLOCK);
        for (b, block) in blocks.by_ref().enumerate() {
            let weights = |column: &[i8]| -> [i8; BLOCK] {
                column[b * BLOCK..][..BLOCK]
                    .try_into()
                    .expect("a whole block")
            };
            let mut sums = [T::ZERO; BLOCK];
            let mut add = |column: &[i8], x: T| {
                for (sum, w) in sums.iter_mut().zip(weights(column)) {
                    *sum = sum.add_product(w, x);
                }
            };
            let mut groups = inputs.chunks_exact(UNROLL);
            for group in groups.by_ref() {
                let group: &[(&[i8], T); UNROLL] = group.try_into().expect("a whole group");
                for &(column, x) in group {
                    add(column, x);
                }
            }
            for &(column, x) in groups.remainder() {
                add(column, x);
            }
            block.copy_from_slice(&sums);
        }
        let done = self.output - blocks.into_remainder().len();
        for (i, sum) in out.iter_mut().enumerate().skip(done) {
            for (column, x) in inputs {
                *sum = sum.add_product(column[i], *x);
            }
        }
        out
    }
}

/// Whether `d` is a valid input or output dimension.
fn fits(d: usize) -> bool {
    d > 0 && d <= MAX_HEAD_DIMENSION as usize
}

/// A value a head's weights multiply: `f32` for vectors, `i32` for counts.
trait Lane: Copy + PartialEq {
    const ZERO: Self;
    /// `self + w·x`.
    fn add_product(self, w: i8, x: Self) -> Self;
}

impl Lane for f32 {
    const ZERO: f32 = 0.0;
    fn add_product(self, w: i8, x: f32) -> f32 {
        self + f32::from(w) * x
    }
}

impl Lane for i32 {
    const ZERO: i32 = 0;
    /// Never wraps for the counts [`Head::apply_counts`] lets through;
    /// wrapping rather than checked keeps the loop vectorisable.
    fn add_product(self, w: i8, x: i32) -> i32 {
        self.wrapping_add(i32::from(w).wrapping_mul(x))
    }
}

/// Output values a head sums at once: four 128-bit vectors.
const BLOCK: usize = 16;

/// Inputs a head adds to its sums in one loop iteration.
const UNROLL: usize = 4;

/// Values of a vector a head tests for zero at once.
const SCAN: usize = 8;

/// The transpose of the row-major `rows × columns` matrix `m`.
fn transpose<T: Copy>(m: &[T], rows: usize, columns: usize) -> Vec<T> {
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

    fn close(a: &[f32], b: &[f32], tolerance: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tolerance)
    }

    fn bits(v: Vec<f32>) -> Vec<u32> {
        v.into_iter().map(f32::to_bits).collect()
    }

    /// Pseudo-random values in [-0.5, 0.5).
    fn values(seed: u64) -> impl FnMut() -> f32 {
        let mut state = seed;
        move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        }
    }

    #[test]
    fn a_head_round_trips_and_maps_vectors() {
        let head = swap();
        assert_eq!(Head::parse(&head.to_bytes()).unwrap(), head);
        let swapped = head.apply(&[0.6, 0.8]).unwrap();
        assert!(close(&swapped, &[0.8, 0.6], 1e-6), "{swapped:?}");
        let shifted = Head::new(2, 2, vec![1.0, 0.0, 0.0, 1.0], vec![1.0, 0.0]).unwrap();
        let mapped = shifted.apply(&[0.0, 1.0]).unwrap();
        assert!(close(&mapped, &[0.70710677; 2], 1e-6), "{mapped:?}");
        assert_eq!(head.apply(&[1.0]), None);
        assert_eq!(head.apply_counts(&[1]), None);
    }

    #[test]
    fn weights_are_stored_within_half_a_step_and_applied_in_one_order() {
        // A 21 → 19 head (inputs: two groups tested for zero at once and
        // a remainder; outputs: a whole block and a remainder) with varied
        // values, one row all zeros, and vectors dense and sparse (one
        // group all zeros).
        let mut next = values(0x2545_f491_4f6c_dd1d);
        let (input, output) = (21, 19);
        let mut rows: Vec<f32> = (0..input * output).map(|_| next()).collect();
        rows[3 * input..4 * input].fill(0.0);
        let bias: Vec<f32> = (0..output).map(|_| next()).collect();
        let head = Head::new(input, output, rows.clone(), bias.clone()).unwrap();
        let file = head.to_bytes();
        assert_eq!(Head::parse(&file).unwrap(), head);

        // The layout: magic, dimensions, scales, biases, then i8 rows.
        assert_eq!(&file[..8], MAGIC);
        assert_eq!(file[8..16], [21, 0, 0, 0, 19, 0, 0, 0]);
        let float = |i: usize| f32::from_le_bytes(file[16 + 4 * i..][..4].try_into().unwrap());
        let scales: Vec<f32> = (0..output).map(float).collect();
        assert_eq!(
            bits((output..2 * output).map(float).collect()),
            bits(bias.clone())
        );
        let stored: Vec<i8> = file[16 + 8 * output..].iter().map(|&q| q as i8).collect();
        assert_eq!(stored.len(), input * output);
        for (o, row) in rows.chunks_exact(input).enumerate() {
            let largest = row.iter().fold(0.0f32, |m, w| m.max(w.abs()));
            assert_eq!(scales[o], largest / 127.0);
            for (w, q) in row.iter().zip(&stored[o * input..]) {
                let error = (w - scales[o] * f32::from(*q)).abs();
                assert!(
                    error <= scales[o] * 0.5 + 1e-9,
                    "row {o}: {w} stored as {q}"
                );
            }
        }
        assert!(stored.iter().any(|&q| q.abs() == 127));
        let applied: Vec<f32> = stored
            .iter()
            .enumerate()
            .map(|(i, &q)| scales[i / input] * f32::from(q))
            .collect();
        assert_eq!(bits(head.weights()), bits(applied));

        for v in [
            (0..input).map(|_| next()).collect::<Vec<f32>>(),
            (0..input)
                .map(|i| match i {
                    2 | 17 | 20 => next(),
                    _ => 0.0,
                })
                .collect(),
        ] {
            let mut expected: Vec<f32> = stored
                .chunks_exact(input)
                .zip(&scales)
                .zip(&bias)
                .map(|((row, s), b)| {
                    b + s * row
                        .iter()
                        .zip(&v)
                        .fold(0.0, |sum, (q, x)| sum + f32::from(*q) * x)
                })
                .collect();
            l2_normalize(&mut expected);
            assert_eq!(bits(head.apply(&v).unwrap()), bits(expected));
        }
    }

    #[test]
    fn counts_go_through_in_integers_as_their_normalised_vector_would() {
        let mut next = values(7);
        let (input, output) = (40, 21);
        let rows: Vec<f32> = (0..input * output).map(|_| next()).collect();
        let bias: Vec<f32> = (0..output).map(|_| next()).collect();
        let head = Head::new(input, output, rows, bias.clone()).unwrap();
        let normalised = |c: &[i32]| {
            let mut v: Vec<f32> = c.iter().map(|&x| x as f32).collect();
            l2_normalize(&mut v);
            v
        };

        let mut counts = vec![0i32; input];
        for (i, c) in [(0, 20), (3, -7), (17, 27), (39, -40), (22, 7)] {
            counts[i] = c;
        }
        let exact = head.apply_counts(&counts).unwrap();
        let via_floats = head.apply(&normalised(&counts)).unwrap();
        assert!(
            close(&exact, &via_floats, 1e-6),
            "{exact:?}\n{via_floats:?}"
        );
        // Exactly: integer sums, then each scaled by its scale and the
        // norm's reciprocal, and the bias added.
        let file = head.to_bytes();
        let float = |i: usize| f32::from_le_bytes(file[16 + 4 * i..][..4].try_into().unwrap());
        let stored = &file[16 + 8 * output..];
        let norm = (counts.iter().map(|&c| f64::from(c * c)).sum::<f64>()).sqrt();
        let inverse = (1.0 / norm) as f32;
        let mut expected: Vec<f32> = stored
            .chunks_exact(input)
            .enumerate()
            .map(|(o, row)| {
                let sum: i32 = row
                    .iter()
                    .zip(&counts)
                    .map(|(&q, c)| i32::from(q as i8) * c)
                    .sum();
                float(output + o) + float(o) * inverse * sum as f32
            })
            .collect();
        l2_normalize(&mut expected);
        assert_eq!(bits(exact), bits(expected));

        // No counts: the bias, as for the zero vector.
        let mut direction = bias;
        l2_normalize(&mut direction);
        assert_eq!(head.apply_counts(&[0; 40]).unwrap(), direction);
        assert_eq!(head.apply(&[0.0; 40]).unwrap(), direction);

        // Counts whose sums could overflow go through the float path.
        let mut huge = vec![0i32; input];
        huge[1] = i32::MAX / 100;
        huge[30] = -(i32::MAX / 90);
        assert_eq!(
            head.apply_counts(&huge).unwrap(),
            head.apply(&normalised(&huge)).unwrap()
        );
    }

    #[test]
    fn counts_up_to_the_bound_sum_without_overflow_and_beyond_it_as_floats() {
        // Weights of -128 (a file may hold them) and 127, scale 1, bias 0.
        let mut file = MAGIC.to_vec();
        for x in [2u32, 2] {
            file.extend_from_slice(&x.to_le_bytes());
        }
        for x in [1.0f32, 1.0, 0.0, 0.0] {
            file.extend_from_slice(&x.to_le_bytes());
        }
        file.extend([0x80, 0x80, 127, 0xfb]);
        let head = Head::parse(&file).unwrap();
        let bound = i32::MAX / 128;
        let exact = |c: [i32; 2]| {
            let norm = (c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>()).sqrt();
            let inverse = (1.0 / norm) as f32;
            let sums = [
                -128 * (i64::from(c[0]) + i64::from(c[1])),
                127 * i64::from(c[0]) - 5 * i64::from(c[1]),
            ];
            let mut v: Vec<f32> = sums.iter().map(|&s| 0.0 + inverse * s as f32).collect();
            l2_normalize(&mut v);
            v
        };
        // Counts whose integer and float results differ in their last
        // bits, so that matching `exact` shows the integer path ran.
        let at_bound = [bound - 985, 985];
        assert_eq!(
            bits(head.apply_counts(&at_bound).unwrap()),
            bits(exact(at_bound))
        );
        let mut v = at_bound.map(|x| x as f32);
        l2_normalize(&mut v);
        assert_ne!(bits(head.apply(&v).unwrap()), bits(exact(at_bound)));
        // One past the bound: summed in i32, the first output would wrap
        // to positive.
        let beyond = [bound - 983, 985];
        let mut v = beyond.map(|x| x as f32);
        l2_normalize(&mut v);
        let out = head.apply_counts(&beyond).unwrap();
        assert!(out[0] < 0.0, "{out:?}");
        assert_eq!(out, head.apply(&v).unwrap());
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
        assert!(Head::parse(b"SOMAHD01").unwrap_err().contains("magic"));
        assert!(Head::parse(&good[..12]).unwrap_err().contains("truncated"));
        assert!(
            Head::parse(&good[..good.len() - 1])
                .unwrap_err()
                .contains("bytes")
        );
        let mut zero = good.clone();
        zero[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert!(Head::parse(&zero).unwrap_err().contains("out of range"));
        // The second bias, then the first scale.
        for (at, value) in [(28, f32::NAN), (16, -1.0)] {
            let mut bad = good.clone();
            bad[at..at + 4].copy_from_slice(&value.to_le_bytes());
            let err = Head::parse(&bad).unwrap_err();
            assert!(err.contains("not finite, or a scale is negative"), "{err}");
        }
        assert!(Head::new(2, 2, vec![0.0; 3], vec![0.0; 2]).is_none());
        assert!(Head::new(2, 2, vec![f32::INFINITY; 4], vec![0.0; 2]).is_none());
    }
}

//! Ridge regression from an encoder's space to the reference space.
//!
//! The head `W·x + b` minimises `Σ |W·x + b − y|² + λ·|W|²` over the
//! training pairs: the mean is taken out of both sides (so the bias is not
//! shrunk), and the normal equations `(XᵀX + λI)·Wᵀ = XᵀY` are solved by a
//! Cholesky factorisation in `f64`. The sums are accumulated once; each
//! `λ` costs one factorisation. The strength `λ` is chosen from a grid
//! by the mean cosine on a validation split.

use soma_guest_sdk::align::Head;

/// Ridge strengths tried, weakest first.
pub const LAMBDAS: &[f64] = &[1e-3, 1e-2, 1e-1, 1.0, 10.0];

/// A fitted head and how it was chosen.
#[derive(Debug)]
pub struct Fit {
    /// The head, fitted on all training pairs.
    pub head: Head,
    /// The ridge strength chosen.
    pub lambda: f64,
    /// Mean cosine on the validation split with that strength.
    pub validation_cosine: f64,
}

/// Fits a head on `(xs, ys)`, choosing `λ` from [`LAMBDAS`] by the mean
/// cosine on the last `validation` pairs, then refitting on all of them.
pub fn fit(xs: &[Vec<f32>], ys: &[Vec<f32>], validation: usize) -> Result<Fit, String> {
    if xs.len() != ys.len() || xs.len() <= validation + 1 {
        return Err(format!(
            "{} source and {} reference vectors: too few to fit and validate",
            xs.len(),
            ys.len()
        ));
    }
    let split = xs.len() - validation;
    // The sums of the normal equations add up over rows: the training
    // split's once, then the validation rows' on top for the final fit.
    let mut normal = Normal::of(&xs[..split], &ys[..split])?;
    let mut best: Option<(f64, f64)> = None;
    for &lambda in LAMBDAS {
        let head = normal.solve(lambda)?;
        let cosine = mean_cosine(&head, &xs[split..], &ys[split..]);
        if best.is_none_or(|(_, c)| cosine > c) {
            best = Some((lambda, cosine));
        }
    }
    let (lambda, validation_cosine) = best.ok_or("no ridge strength to try")?;
    normal.add(&xs[split..], &ys[split..])?;
    Ok(Fit {
        head: normal.solve(lambda)?,
        lambda,
        validation_cosine,
    })
}

/// The sums the normal equations are built from: `XᵀX` (lower triangle),
/// `XᵀY`, `Σx`, `Σy` and the number of rows.
struct Normal {
    input: usize,
    output: usize,
    rows: usize,
    xx: Vec<f64>,
    xy: Vec<f64>,
    sx: Vec<f64>,
    sy: Vec<f64>,
}

impl Normal {
    fn of(xs: &[Vec<f32>], ys: &[Vec<f32>]) -> Result<Normal, String> {
        let (input, output) = (xs[0].len(), ys[0].len());
        let mut normal = Normal {
            input,
            output,
            rows: 0,
            xx: vec![0.0; input * input],
            xy: vec![0.0; input * output],
            sx: vec![0.0; input],
            sy: vec![0.0; output],
        };
        normal.add(xs, ys)?;
        Ok(normal)
    }

    fn add(&mut self, xs: &[Vec<f32>], ys: &[Vec<f32>]) -> Result<(), String> {
        let (input, output) = (self.input, self.output);
        if xs.iter().any(|x| x.len() != input) || ys.iter().any(|y| y.len() != output) {
            return Err("vectors of one side differ in dimension".into());
        }
        let mut x = vec![0.0f64; input];
        for (xv, yv) in xs.iter().zip(ys) {
            for (c, &v) in x.iter_mut().zip(xv) {
                *c = f64::from(v);
            }
            for i in 0..input {
                let xi = x[i];
                self.sx[i] += xi;
                let row = &mut self.xx[i * input..i * input + i + 1];
                for (cell, &xj) in row.iter_mut().zip(&x[..=i]) {
                    *cell += xi * xj;
                }
                let row = &mut self.xy[i * output..(i + 1) * output];
                for (cell, &y) in row.iter_mut().zip(yv) {
                    *cell += xi * f64::from(y);
                }
            }
            for (s, &y) in self.sy.iter_mut().zip(yv) {
                *s += f64::from(y);
            }
        }
        self.rows += xs.len();
        Ok(())
    }

    /// The head for `λ`: centred sums (`XcᵀXc = XᵀX − n·x̄x̄ᵀ`), so that
    /// the bias is not shrunk.
    fn solve(&self, lambda: f64) -> Result<Head, String> {
        let (input, output, n) = (self.input, self.output, self.rows as f64);
        let mx: Vec<f64> = self.sx.iter().map(|s| s / n).collect();
        let my: Vec<f64> = self.sy.iter().map(|s| s / n).collect();
        let mut a = self.xx.clone();
        for i in 0..input {
            for j in 0..=i {
                a[i * input + j] -= n * mx[i] * mx[j];
            }
            a[i * input + i] += lambda;
        }
        let mut b = self.xy.clone();
        for i in 0..input {
            for o in 0..output {
                b[i * output + o] -= n * mx[i] * my[o];
            }
        }
        let l = cholesky(&mut a, input)?;
        let w = solve(l, input, &b, output);
        // `w` is input × output; the head stores output × input.
        let mut weights = vec![0.0f32; output * input];
        for i in 0..input {
            for o in 0..output {
                weights[o * input + i] = w[i * output + o] as f32;
            }
        }
        // The bias centres the weights as stored (rounded to 8-bit steps),
        // so that rounding leaves no constant offset in the outputs.
        let not_finite = || "the fit is not finite".to_string();
        let rounded = Head::new(input, output, weights.clone(), vec![0.0; output])
            .ok_or_else(not_finite)?
            .weights();
        let bias: Vec<f32> = rounded
            .chunks_exact(input)
            .zip(&my)
            .map(|(row, my)| {
                let predicted: f64 = row.iter().zip(&mx).map(|(&w, m)| f64::from(w) * m).sum();
                (my - predicted) as f32
            })
            .collect();
        Head::new(input, output, weights, bias).ok_or_else(not_finite)
    }
}

/// Mean cosine between each mapped source vector and its reference.
pub fn mean_cosine(head: &Head, xs: &[Vec<f32>], ys: &[Vec<f32>]) -> f64 {
    let total: f64 = xs
        .iter()
        .zip(ys)
        .map(|(x, y)| head.apply(x).map_or(0.0, |mapped| cosine(&mapped, y)))
        .sum();
    total / xs.len().max(1) as f64
}

/// The cosine of two vectors (0 if either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let n = norm(a) * norm(b);
    if n == 0.0 { 0.0 } else { dot / n }
}

/// Factorises the symmetric positive definite `a` (lower triangle used)
/// in place into `L` with `a = L·Lᵀ`.
fn cholesky(a: &mut [f64], n: usize) -> Result<&[f64], String> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return Err(format!(
                "the normal equations are not positive definite (pivot {j})"
            ));
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    Ok(a)
}

/// Solves `L·Lᵀ·W = B` for `W` (`n × m`, like `B`).
fn solve(l: &[f64], n: usize, b: &[f64], m: usize) -> Vec<f64> {
    let mut w = b.to_vec();
    for col in 0..m {
        for i in 0..n {
            let mut s = w[i * m + col];
            for k in 0..i {
                s -= l[i * n + k] * w[k * m + col];
            }
            w[i * m + col] = s / l[i * n + i];
        }
        for i in (0..n).rev() {
            let mut s = w[i * m + col];
            for k in i + 1..n {
                s -= l[k * n + i] * w[k * m + col];
            }
            w[i * m + col] = s / l[i * n + i];
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random values in [-1, 1).
    fn values(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn a_linear_map_is_recovered() {
        // y = M·x + c, with M 3 × 4.
        let m = values(1, 12);
        let c = [0.5, -0.25, 0.125];
        let xs: Vec<Vec<f32>> = (0..200).map(|i| values(100 + i, 4)).collect();
        let ys: Vec<Vec<f32>> = xs
            .iter()
            .map(|x| {
                (0..3)
                    .map(|o| c[o] + (0..4).map(|i| m[o * 4 + i] * x[i]).sum::<f32>())
                    .collect()
            })
            .collect();
        let fit = fit(&xs, &ys, 40).unwrap();
        assert_eq!(fit.lambda, LAMBDAS[0]);
        assert!(fit.validation_cosine > 0.9999, "{}", fit.validation_cosine);
        // The file: scales and biases as f32, then weights in 8-bit steps.
        let bytes = fit.head.to_bytes();
        let float = |i: usize| f32::from_le_bytes(bytes[16 + 4 * i..][..4].try_into().unwrap());
        for (o, want) in c.iter().enumerate() {
            let bias = float(3 + o);
            assert!((bias - want).abs() < 1e-3, "bias {bias} vs {want}");
            let scale = float(o);
            for (i, want) in m[o * 4..][..4].iter().enumerate() {
                let got = scale * f32::from(bytes[40 + o * 4 + i] as i8);
                assert!((got - want).abs() < 1e-3 + scale / 2.0, "{got} vs {want}");
            }
        }
    }

    #[test]
    fn too_few_or_mismatched_pairs_are_refused() {
        let xs = vec![vec![1.0f32, 0.0]; 3];
        assert!(fit(&xs, &xs[..2], 1).unwrap_err().contains("too few"));
        assert!(fit(&xs, &xs, 2).is_err());
        let ragged = vec![vec![1.0f32, 0.0], vec![1.0]];
        let err = Normal::of(&ragged, &ragged).err().unwrap();
        assert!(err.contains("dimension"), "{err}");
    }
}

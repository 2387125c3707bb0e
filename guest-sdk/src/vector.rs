//! Small vector operations encoders need.

/// Scales `v` to unit Euclidean length; leaves an all-zero vector unchanged.
///
/// The squares are summed in [`LANES`] running sums, value `i` into sum
/// `i % LANES`, and those added in order: one fixed order on every machine
/// (other implementations of an encoder, such as the Python and JavaScript
/// examples, follow it to match bit for bit), which vectorises. A single
/// running sum makes each addition wait for the last, which in wasm is
/// also waiting for its NaN canonicalisation.
pub fn l2_normalize(v: &mut [f32]) {
    let mut sums = [0.0f32; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for chunk in chunks.by_ref() {
        for (sum, x) in sums.iter_mut().zip(chunk) {
            *sum += x * x;
        }
    }
    for (sum, x) in sums.iter_mut().zip(chunks.remainder()) {
        *sum += x * x;
    }
    let norm = sums.iter().fold(0.0f32, |total, sum| total + sum).sqrt();
    if norm > 0.0 {
        for x in v {
            *x /= norm;
        }
    }
}

/// Running sums of squares [`l2_normalize`] keeps: two 128-bit vectors.
pub const LANES: usize = 8;

#[cfg(test)]
mod tests {
    use super::{LANES, l2_normalize};

    #[test]
    fn normalises_to_unit_length() {
        let mut v = [3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
    }

    #[test]
    fn squares_are_summed_in_lanes_then_in_order() {
        // Summed in one running sum, these squares lose the small ones to
        // the large; in lanes, the small ones meet first.
        let mut v = [0.0f32; 2 * LANES + 3];
        v[0] = 4096.0;
        for x in &mut v[1..] {
            *x = 0.75;
        }
        let mut lanes = [0.0f32; LANES];
        for (i, x) in v.iter().enumerate() {
            lanes[i % LANES] += x * x;
        }
        let norm = lanes.iter().fold(0.0f32, |t, s| t + s).sqrt();
        let running = v.iter().fold(0.0f32, |t, x| t + x * x).sqrt();
        assert_ne!(norm, running, "the example must tell the orders apart");
        let expected: Vec<f32> = v.iter().map(|x| x / norm).collect();
        l2_normalize(&mut v);
        assert_eq!(v.to_vec(), expected);
    }

    #[test]
    fn leaves_zero_vector_alone() {
        let mut v = [0.0; 3];
        l2_normalize(&mut v);
        assert_eq!(v, [0.0; 3]);
    }
}

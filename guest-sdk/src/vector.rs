//! Small vector operations encoders need.

/// Scales `v` to unit Euclidean length; leaves an all-zero vector unchanged.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in v {
            *x /= norm;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::l2_normalize;

    #[test]
    fn normalises_to_unit_length() {
        let mut v = [3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
    }

    #[test]
    fn leaves_zero_vector_alone() {
        let mut v = [0.0; 3];
        l2_normalize(&mut v);
        assert_eq!(v, [0.0; 3]);
    }
}

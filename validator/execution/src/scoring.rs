//! The arithmetic of finalisation, in integers: medians, the robust centre
//! of a shard, outliers, loss weights and the final embedding.
//!
//! Embeddings are fixed point: `i32` in units of 2⁻¹⁶ (the host's output
//! grid), losses `u32` in the same units. Nothing here uses floats, so
//! every validator computes the same bits.

use std::borrow::Cow;
use strength_reduce::StrengthReducedU64;

/// One unit of fixed point: 1.0.
pub const ONE: i64 = 1 << 16;

/// The median of `values` (which it sorts): the middle one, or the mean
/// of the two middle ones (rounded down) for an even count.
pub(crate) fn median(values: &mut [i64]) -> i64 {
    values.sort_unstable();
    let n = values.len();
    (values[(n - 1) / 2] + values[n / 2]).div_euclid(2)
}

/// The coordinate-wise median of equally long vectors: each counts once
/// (the robust centre of a shard's encoders).
pub(crate) fn coordinate_median(vectors: &[&[i32]]) -> Vec<i32> {
    // A shard of three, the default: each median is the middle of three
    // values, found without a sort.
    if let &[a, b, c] = vectors {
        return a
            .iter()
            .zip(b)
            .zip(c)
            .map(|((&a, &b), &c)| a.min(b).max(a.max(b).min(c)))
            .collect();
    }
    let dimension = vectors[0].len();
    let mut column = Vec::with_capacity(vectors.len());
    (0..dimension)
        .map(|i| {
            column.clear();
            column.extend(vectors.iter().map(|v| i64::from(v[i])));
            median(&mut column) as i32
        })
        .collect()
}

/// The stake-weighted median of `(value, stake)` pairs (which it sorts):
/// the smallest value with at least half the stake at or below it. No
/// minority of stake can move it outside the values of the majority.
pub(crate) fn weighted_median(pairs: &mut [(i64, u64)]) -> i64 {
    let total = pairs.iter().map(|&(_, w)| u128::from(w)).sum();
    weighted_median_of(pairs, total)
}

/// [`weighted_median`] of pairs whose weights sum to `total`.
fn weighted_median_of(pairs: &mut [(i64, u64)], total: u128) -> i64 {
    // Equal values may stand in any order: the value where half the
    // weight is reached is the same.
    pairs.sort_unstable_by_key(|&(value, _)| value);
    let mut below = 0u128;
    for &(value, weight) in pairs.iter() {
        below += u128::from(weight);
        if below * 2 >= total {
            return value;
        }
    }
    pairs[pairs.len() - 1].0
}

/// The coordinate-wise stake-weighted median of attested vectors.
pub(crate) fn weighted_coordinate_median<'a>(vectors: &[(&'a [i32], u64)]) -> Cow<'a, [i32]> {
    let dimension = vectors[0].0.len();
    let total = vectors.iter().map(|&(_, w)| u128::from(w)).sum();
    // Honest attesters of a pure-wasm encoder, or of any encoder on like
    // hardware, attest the same bits. A vector attested by more than half
    // the weight is the median in every coordinate (less than half the
    // weight lies below any of its values), found in two passes instead of
    // a sort per coordinate, and lent rather than copied.
    if let Some(majority) = weighted_majority(vectors, total) {
        return Cow::Borrowed(majority);
    }
    let mut column = Vec::with_capacity(vectors.len());
    (0..dimension)
        .map(|i| {
            column.clear();
            column.extend(vectors.iter().map(|&(v, w)| (i64::from(v[i]), w)));
            weighted_median_of(&mut column, total) as i32
        })
        .collect()
}

/// The vector attested by more than half of `total`, the weights' sum, if
/// any: Boyer and Moore's majority vote, weighted (one pass finds the only
/// possible candidate, a second counts its weight).
fn weighted_majority<'a>(vectors: &[(&'a [i32], u64)], total: u128) -> Option<&'a [i32]> {
    let mut candidate = vectors.first()?.0;
    let mut lead = 0u128;
    for &(vector, weight) in vectors {
        let weight = u128::from(weight);
        if vector == candidate {
            lead += weight;
        } else if lead >= weight {
            lead -= weight;
        } else {
            candidate = vector;
            lead = weight - lead;
        }
    }
    let support: u128 = vectors
        .iter()
        .filter(|&&(vector, _)| vector == candidate)
        .map(|&(_, weight)| u128::from(weight))
        .sum();
    (support * 2 > total).then_some(candidate)
}

/// The integer square root: the largest `r` with `r² ≤ n`.
pub(crate) fn isqrt(n: u128) -> u128 {
    if n < 2 {
        return n;
    }
    // Newton's iteration from above converges to the floor.
    let mut x = 1u128 << (128 - n.leading_zeros()).div_ceil(2);
    loop {
        let y = (x + n / x) / 2;
        if y >= x {
            return x;
        }
        x = y;
    }
}

/// The Euclidean distance between two vectors, in fixed point.
pub(crate) fn distance(a: &[i32], b: &[i32]) -> u64 {
    let differences = || {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| (i64::from(x) - i64::from(y)).unsigned_abs())
    };
    // When the sum of squares cannot pass 64 bits (as between unit
    // vectors), it is summed in 64: the same bits, in vector registers.
    let largest = u128::from(max_deviation(a, b));
    let sum = match largest * largest * a.len() as u128 <= u128::from(u64::MAX) {
        true => u128::from(differences().map(|d| d * d).sum::<u64>()),
        false => differences().map(|d| u128::from(d) * u128::from(d)).sum(),
    };
    u64::try_from(isqrt(sum)).unwrap_or(u64::MAX)
}

/// The largest coordinate difference between two vectors, in fixed point.
pub(crate) fn max_deviation(a: &[i32], b: &[i32]) -> u64 {
    // A verdict lends the attested vector it agrees with.
    if std::ptr::eq(a, b) {
        return 0;
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (i64::from(x) - i64::from(y)).unsigned_abs())
        .max()
        .unwrap_or(0)
}

/// `n / d`, rounded toward zero as `/` rounds, by a divisor reduced once
/// for many dividends: multiplies in place of divisions, exact for every
/// dividend.
fn divide(n: i64, d: StrengthReducedU64) -> i64 {
    let quotient = (n.unsigned_abs() / d) as i64;
    match n < 0 {
        true => quotient.wrapping_neg(),
        false => quotient,
    }
}

/// Which of `distances` (each vector's distance from the robust centre)
/// are outliers: beyond the median distance plus `multiple` (fixed point)
/// median absolute deviations, and beyond `floor`.
pub(crate) fn outliers(distances: &[u64], multiple: u32, floor: u64) -> Vec<bool> {
    let mut sorted: Vec<i64> = distances.iter().map(|&d| d as i64).collect();
    let centre = median(&mut sorted) as u64;
    let mut deviations: Vec<i64> = distances
        .iter()
        .map(|&d| d.abs_diff(centre) as i64)
        .collect();
    let mad = median(&mut deviations) as u64;
    let spread = (u128::from(mad) * u128::from(multiple)) >> 16;
    let threshold = (u128::from(centre) + spread).max(u128::from(floor));
    distances
        .iter()
        .map(|&d| u128::from(d) > threshold)
        .collect()
}

/// The weight of an embedding in the final average: decreasing in its
/// loss, halved at loss `softness` (fixed point, at least 1) from what a
/// loss of 0 gets, and never 0.
pub(crate) fn weight(loss: u32, softness: u32) -> u64 {
    (1u64 << 48) / (u64::from(softness.max(1)) + u64::from(loss))
}

/// The weighted average of `vectors`, scaled to unit length (in fixed
/// point); all zeros if the average is zero.
pub(crate) fn weighted_unit_average(vectors: &[(&[i32], u64)]) -> Vec<i32> {
    let dimension = vectors[0].0.len();
    debug_assert!(vectors.iter().all(|(v, _)| v.len() == dimension));
    let total: u128 = vectors.iter().map(|&(_, w)| u128::from(w)).sum();
    let largest = vectors
        .iter()
        .filter_map(|&(v, _)| v.iter().map(|x| x.unsigned_abs()).max())
        .max()
        .unwrap_or(0);
    // Every weighted sum is at most `largest × total` in magnitude. When
    // that fits an i64 (as it does for unit vectors and the loss weights),
    // 64-bit arithmetic gives the same bits as 128-bit, truncating
    // division alike, at a fraction of the cost.
    let fits = u128::from(largest.max(1)) * total <= i64::MAX as u128;
    // An average lies between the smallest and the largest value, so it
    // fits an i32 (its square an i64), and so does the rest in 64-bit
    // division.
    let mut average: Vec<i32> = match fits {
        true => {
            // Vector by vector, so that each pass runs down one slice.
            let mut sums = vec![0i64; dimension];
            for &(v, w) in vectors {
                for (sum, &x) in sums.iter_mut().zip(v) {
                    *sum += i64::from(x) * w as i64;
                }
            }
            let total = StrengthReducedU64::new(total.max(1) as u64);
            sums.iter().map(|&sum| divide(sum, total) as i32).collect()
        }
        false => {
            let total = total.max(1) as i128;
            (0..dimension)
                .map(|i| {
                    let sum: i128 = vectors
                        .iter()
                        .map(|&(v, w)| i128::from(v[i]) * i128::from(w))
                        .sum();
                    (sum / total) as i32
                })
                .collect()
        }
    };
    let norm = isqrt(average.iter().map(|&x| i64::from(x).pow(2) as u128).sum()) as u64;
    // A zero norm is an average of all zeros, returned as it is.
    if norm != 0 {
        let norm = StrengthReducedU64::new(norm);
        for x in &mut average {
            *x = divide(i64::from(*x) * ONE, norm) as i32;
        }
    }
    average
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn medians_are_the_middle() {
        assert_eq!(median(&mut [3, 1, 2]), 2);
        assert_eq!(median(&mut [4, 1, 3, 2]), 2);
        assert_eq!(median(&mut [10, 1]), 5);
        assert_eq!(median(&mut [-3, 0]), -2);
        assert_eq!(coordinate_median(&[&[1, 9], &[5, 0], &[3, 4]]), vec![3, 4]);
    }

    #[test]
    fn a_weighted_median_follows_the_stake_not_the_count() {
        // Three small attesters cannot outvote one with more stake.
        assert_eq!(
            weighted_median(&mut [(100, 60), (0, 10), (0, 10), (0, 10)]),
            100
        );
        assert_eq!(weighted_median(&mut [(1, 1), (2, 1), (3, 1)]), 2);
        assert_eq!(weighted_median(&mut [(7, 0), (9, 5)]), 9);
        assert_eq!(
            weighted_coordinate_median(&[(&[1, 5], 3), (&[2, 0], 1)]),
            vec![1, 5]
        );
    }

    #[test]
    fn an_outlier_is_far_beyond_the_spread_of_the_rest() {
        let far = outliers(&[100, 120, 110, 5_000], 3 * ONE as u32, 0);
        assert_eq!(far, [false, false, false, true]);
        // When all agree, the floor keeps tiny differences in.
        assert_eq!(
            outliers(&[1, 1, 3], 3 * ONE as u32, 10),
            [false, false, false]
        );
    }

    #[test]
    fn weights_fall_with_loss() {
        let one = ONE as u32;
        assert_eq!(weight(0, one), 1 << 32);
        assert_eq!(weight(one, one), 1 << 31);
        assert_eq!(weight(one / 8, one / 8), weight(0, one / 8) / 2);
        assert!(weight(10, one) > weight(11, one));
        assert!(weight(u32::MAX, one) > 0);
        assert_eq!(weight(0, 0), 1 << 48);
    }

    #[test]
    fn the_average_is_weighted_and_of_unit_length() {
        let a = [ONE as i32, 0];
        let b = [0, ONE as i32];
        let even = weighted_unit_average(&[(&a, 1), (&b, 1)]);
        assert_eq!(even[0], even[1]);
        let length = isqrt(
            even.iter()
                .map(|&x| (i64::from(x) * i64::from(x)) as u128)
                .sum(),
        );
        assert!(length.abs_diff(ONE as u128) <= 1, "{length}");
        let tilted = weighted_unit_average(&[(&a, 3), (&b, 1)]);
        assert!(tilted[0] > tilted[1]);
        assert_eq!(weighted_unit_average(&[(&[0, 0], 1)]), [0, 0]);
    }

    /// The weighted median of each coordinate, one by one.
    fn median_by_coordinate(vectors: &[(&[i32], u64)]) -> Vec<i32> {
        (0..vectors[0].0.len())
            .map(|i| {
                let mut column: Vec<_> =
                    vectors.iter().map(|&(v, w)| (i64::from(v[i]), w)).collect();
                weighted_median(&mut column) as i32
            })
            .collect()
    }

    #[test]
    fn a_vector_of_more_than_half_the_weight_is_the_median_and_of_half_not() {
        let (a, b, c) = ([5, -1, 7], [0, 0, 0], [9, 9, -9]);
        let majority = [(&a[..], 1), (&b[..], 2), (&c[..], 1), (&b[..], 1)];
        assert_eq!(weighted_majority(&majority, 5), Some(&b[..]));
        let median = weighted_coordinate_median(&majority);
        assert!(matches!(median, Cow::Borrowed(_)) && *median == b);
        // Exactly half is no majority: the medians are taken apart.
        let half = [(&a[..], 2), (&b[..], 1), (&c[..], 1)];
        assert_eq!(weighted_majority(&half, 4), None);
        assert_eq!(
            weighted_coordinate_median(&half),
            median_by_coordinate(&half)
        );
        assert_ne!(*weighted_coordinate_median(&half), a);
    }

    /// Weights from none to the largest: an average's sum needs 128 bits.
    fn large_weight() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0),
            1..4u64,
            Just(1 << 35),
            Just(1 << 40),
            Just(u64::MAX / 3),
            Just(u64::MAX)
        ]
    }

    /// [`weighted_unit_average`] in 128-bit arithmetic throughout, as it
    /// was first written: the 64-bit one must give the same bits.
    fn unit_average_in_i128(vectors: &[(&[i32], u64)]) -> Vec<i32> {
        let total: i128 = vectors.iter().map(|&(_, w)| i128::from(w)).sum();
        let average: Vec<i128> = (0..vectors[0].0.len())
            .map(|i| {
                let sum: i128 = vectors
                    .iter()
                    .map(|&(v, w)| i128::from(v[i]) * i128::from(w))
                    .sum();
                sum / total.max(1)
            })
            .collect();
        let norm = isqrt(average.iter().map(|&x| (x * x) as u128).sum()) as i128;
        if norm == 0 {
            return vec![0; average.len()];
        }
        average
            .iter()
            .map(|&x| (x * i128::from(ONE) / norm) as i32)
            .collect()
    }

    #[test]
    fn distance_is_exact_at_the_edge_of_64_bit_sums() {
        // Four differences of i32::MAX square to just under 2^64 in all;
        // four of 2^31 to 2^64 itself.
        let zero = [0; 4];
        let under = [i32::MAX; 4];
        assert_eq!(
            u128::from(distance(&under, &zero)),
            isqrt(4 * (i32::MAX as u128).pow(2))
        );
        let at = [-1; 4];
        assert_eq!(distance(&under, &at), 1 << 32);
        assert_eq!(distance(&[i32::MIN; 4], &under), 2 * u64::from(u32::MAX));
    }

    #[test]
    fn the_unit_average_is_exact_at_the_edge_of_64_bit_sums() {
        // Weighted `w` alone, and shared with `b`, against 128 bits.
        let exact = |a: &[i32], b: &[i32], w: u64| {
            for vectors in [vec![(a, w)], vec![(a, w / 2), (b, w - w / 2)]] {
                assert_eq!(
                    weighted_unit_average(&vectors),
                    unit_average_in_i128(&vectors),
                    "{vectors:?}"
                );
            }
        };
        // The largest weight whose sums fit an i64, and the next; the
        // largest value's sign turns between the two vectors.
        let edge = i64::MAX as u64 / (1 << 31);
        let (a, b) = ([i32::MIN, i32::MAX, 1], [i32::MAX, -5, i32::MIN + 1]);
        for w in [edge, edge + 1, edge / 2, edge / 2 + 1] {
            exact(&a, &b, w);
        }
        // All positive, where sums reach the limit itself: with any looser
        // limit these would overflow 64 bits (a panic in tests).
        for w in [i64::MAX as u64, 1 << 63, u64::MAX] {
            exact(&[1, 1, 1], &[1, 1, 1], w);
        }
    }

    proptest! {
        #[test]
        fn the_coordinate_median_is_each_coordinates_weighted_median(
            pool in proptest::collection::vec(proptest::collection::vec(any::<i32>(), 4), 1..4),
            picks in proptest::collection::vec((0..4usize, large_weight()), 1..9),
        ) {
            // Vectors drawn from a small pool, so that some repeat.
            let vectors: Vec<(&[i32], u64)> = picks
                .iter()
                .map(|&(i, w)| (pool[i % pool.len()].as_slice(), w))
                .collect();
            prop_assert_eq!(weighted_coordinate_median(&vectors), median_by_coordinate(&vectors));
        }

        #[test]
        fn the_unit_average_is_what_128_bit_arithmetic_gives(
            vectors in proptest::collection::vec(
                (
                    // Unit vectors' coordinates (64-bit sums), or any.
                    proptest::collection::vec(
                        prop_oneof![-(1 << 17)..(1 << 17), any::<i32>()],
                        4,
                    ),
                    large_weight(),
                ),
                1..5,
            ),
        ) {
            let vectors: Vec<(&[i32], u64)> =
                vectors.iter().map(|(v, w)| (v.as_slice(), *w)).collect();
            prop_assert_eq!(weighted_unit_average(&vectors), unit_average_in_i128(&vectors));
        }

        #[test]
        fn the_centre_is_each_coordinates_median(
            vectors in proptest::collection::vec(proptest::collection::vec(any::<i32>(), 4), 1..6),
        ) {
            let vectors: Vec<&[i32]> = vectors.iter().map(Vec::as_slice).collect();
            let expected: Vec<i32> = (0..4)
                .map(|i| median(&mut vectors.iter().map(|v| i64::from(v[i])).collect::<Vec<_>>()) as i32)
                .collect();
            prop_assert_eq!(coordinate_median(&vectors), expected);
        }

        #[test]
        fn isqrt_is_the_floor_of_the_square_root(n in any::<u128>()) {
            let r = isqrt(n);
            prop_assert!(r * r <= n);
            prop_assert!((r + 1).checked_mul(r + 1).is_none_or(|s| s > n));
        }

        #[test]
        fn distance_is_the_floor_of_the_exact_root(
            a in proptest::collection::vec(prop_oneof![-(1 << 17)..(1 << 17), any::<i32>()], 8),
            b in proptest::collection::vec(prop_oneof![-(1 << 17)..(1 << 17), any::<i32>()], 8),
        ) {
            // In 128 bits throughout, as it was first written.
            let squares: u128 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| (i128::from(x) - i128::from(y)).pow(2) as u128)
                .sum();
            prop_assert_eq!(u128::from(distance(&a, &b)), isqrt(squares));
            let largest = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| (i128::from(x) - i128::from(y)).unsigned_abs())
                .max();
            prop_assert_eq!(Some(u128::from(max_deviation(&a, &b))), largest);
        }

        #[test]
        fn distance_is_symmetric_and_zero_only_between_equals(
            a in proptest::collection::vec(any::<i32>(), 8),
            b in proptest::collection::vec(any::<i32>(), 8),
        ) {
            prop_assert_eq!(distance(&a, &b), distance(&b, &a));
            prop_assert_eq!(distance(&a, &a), 0);
            prop_assert_eq!(distance(&a, &b) == 0, a == b);
        }
    }
}

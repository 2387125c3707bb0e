//! Shard selection: which active encoders run a job.
//!
//! Systematic sampling with probabilities proportional to weight (bond):
//! an encoder of weight `w` among candidates of total weight `T` is in a
//! shard of `k` with probability exactly `k·w/T` (encoders so heavy that
//! `k·w ≥ T` are in every shard, and the rest share the remaining places
//! the same way). The candidates are put in an order drawn from the seed
//! first, so which encoders share a shard is random too. Everything is
//! integer arithmetic on a seed from the commit: every validator picks the
//! same shard.

use soma_host::Digest;

/// Picks up to `size` distinct encoders from `candidates` (package digest,
/// weight); encoders of weight 0 are never picked. Returns them in digest
/// order.
pub(crate) fn select(candidates: &[(Digest, u64)], size: usize, seed: &[u8; 32]) -> Vec<Digest> {
    let mut rest: Vec<(Digest, u64)> = candidates.iter().copied().filter(|&(_, w)| w > 0).collect();
    let mut chosen = Vec::with_capacity(size);
    // Encoders whose weight alone fills a place are certain.
    loop {
        let places = size - chosen.len();
        if places == 0 || rest.is_empty() {
            break;
        }
        if rest.len() <= places {
            chosen.extend(rest.drain(..).map(|(d, _)| d));
            break;
        }
        let total: u128 = rest.iter().map(|&(_, w)| u128::from(w)).sum();
        let certain = |w: u64| u128::from(w) * places as u128 >= total;
        if !rest.iter().any(|&(_, w)| certain(w)) {
            chosen.extend(systematic(&mut rest, places, total, seed));
            break;
        }
        chosen.extend(rest.iter().filter(|&&(_, w)| certain(w)).map(|&(d, _)| d));
        rest.retain(|&(_, w)| !certain(w));
    }
    chosen.sort();
    chosen
}

/// `places` picks from `rest` (each of weight below `total / places`): a
/// random start in `[0, total)`, then every `total` along the candidates'
/// weights laid end to end, each stretched `places` times.
fn systematic(
    rest: &mut [(Digest, u64)],
    places: usize,
    total: u128,
    seed: &[u8; 32],
) -> Vec<Digest> {
    let order_key = |d: &Digest| blake3::keyed_hash(seed, &d.0);
    rest.sort_by_key(|(d, _)| *order_key(d).as_bytes());
    let mut draw = [0u8; 16];
    blake3::Hasher::new_derive_key("soma/shard-start/v1")
        .update(seed)
        .finalize_xof()
        .fill(&mut draw);
    let start = u128::from_le_bytes(draw) % total;
    let mut picked = Vec::with_capacity(places);
    let mut next = start;
    let mut end = 0u128;
    for &(digest, weight) in rest.iter() {
        end += u128::from(weight) * places as u128;
        if next < end {
            picked.push(digest);
            next += total;
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoders(weights: &[u64]) -> Vec<(Digest, u64)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| (Digest([i as u8; 32]), w))
            .collect()
    }

    fn seed(i: u32) -> [u8; 32] {
        blake3::derive_key("test seed", &i.to_le_bytes())
    }

    #[test]
    fn a_shard_has_distinct_members_and_is_a_function_of_the_seed() {
        let c = encoders(&[5, 1, 1, 3, 0, 2]);
        for i in 0..200 {
            let shard = select(&c, 3, &seed(i));
            assert_eq!(shard.len(), 3);
            assert!(shard.windows(2).all(|w| w[0] < w[1]));
            assert!(!shard.contains(&Digest([4; 32])), "weight 0 was picked");
            assert_eq!(select(&c, 3, &seed(i)), shard);
        }
        assert_eq!(select(&c, 10, &seed(0)).len(), 5);
        assert!(select(&[], 3, &seed(0)).is_empty());
    }

    #[test]
    fn membership_is_proportional_to_weight() {
        // Expected membership of weight w in shards of 3 out of total 20:
        // 3w/20, except that 10 (3·10 ≥ 20) is certain, leaving 2 places
        // to the other 10 of weight: 2w/10.
        let weights = [10, 1, 2, 3, 4];
        let c = encoders(&weights);
        let runs = 20_000u32;
        let mut counts = [0u32; 5];
        for i in 0..runs {
            for d in select(&c, 3, &seed(i)) {
                counts[d.0[0] as usize] += 1;
            }
        }
        let expected = [1.0, 0.2, 0.4, 0.6, 0.8];
        for (i, (&count, &p)) in counts.iter().zip(&expected).enumerate() {
            let freq = f64::from(count) / f64::from(runs);
            // Four standard deviations of a binomial frequency.
            let tolerance = 4.0 * (p * (1.0 - p) / f64::from(runs)).sqrt() + 1e-9;
            assert!(
                (freq - p).abs() <= tolerance,
                "encoder {i} of weight {}: in {freq:.4} of shards, expected {p}",
                weights[i]
            );
        }
    }
}

//! Properties over random transaction streams: money is conserved, the
//! total stake apply keeps is the validators' sum, no transaction applies
//! twice, and two executors agree on every root. The
//! check is the `apply` fuzz target's (see `soma_fuzz::apply` for how its
//! bytes read as transfers, stakes, registrations, submissions,
//! attestations and garbage over several commits); here proptest feeds it,
//! as libFuzzer does in `cargo xtask fuzz`.

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn money_is_conserved_nothing_applies_twice_and_executors_agree(
        stream in proptest::collection::vec(any::<u8>(), 0..600)
    ) {
        soma_fuzz::apply::check(&stream);
    }
}

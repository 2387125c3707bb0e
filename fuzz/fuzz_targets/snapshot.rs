//! Fuzz target `snapshot`: see [`soma_fuzz::snapshot`].

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| soma_fuzz::snapshot::check(bytes));

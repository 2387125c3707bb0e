//! Fuzz target `consensus`: see [`soma_fuzz::consensus`].

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| soma_fuzz::consensus::check(bytes));

//! Fuzz target `api`: see [`soma_fuzz::api`].

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| soma_fuzz::api::check(bytes));

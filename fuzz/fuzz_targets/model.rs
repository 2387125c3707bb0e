//! Fuzz target `model`: see [`soma_fuzz::model`].

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| soma_fuzz::model::check(bytes));

//! Fuzz target `apply`: see [`soma_fuzz::apply`].

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| soma_fuzz::apply::check(bytes));

//! Fuzz target `transaction`: see [`soma_fuzz::transaction`].

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| soma_fuzz::transaction::check(bytes));

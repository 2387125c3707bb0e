//! Fuzz target `component`: see [`soma_fuzz::component`].

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| soma_fuzz::component::check(bytes));

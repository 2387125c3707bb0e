//! Fuzz target `guest_output`: see [`soma_fuzz::guest_output`].

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| soma_fuzz::guest_output::check(bytes));

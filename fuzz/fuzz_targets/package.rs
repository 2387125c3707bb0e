//! Fuzz target `package`: see [`soma_fuzz::package`].

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| soma_fuzz::package::check(bytes));

//! End-to-end tests: real `soma` processes on 127.0.0.1.

mod localnet;
mod network;

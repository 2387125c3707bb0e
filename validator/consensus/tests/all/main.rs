//! Integration tests of the consensus crate.

mod simulation;

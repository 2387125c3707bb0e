//! A Soma validator. So far it runs consensus: validators order opaque
//! transactions and expose their commits; state and execution come next.

pub mod config;

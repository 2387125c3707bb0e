//! A Soma validator: consensus ([`soma_consensus`]) orders transactions,
//! execution ([`soma_execution`]) applies every commit, the attester
//! computes each job in the encoder host and attests through consensus,
//! and an HTTP API (with OpenAI-compatible `POST /v1/embeddings`) serves
//! clients. [`node::run`] runs one; [`config`] writes local networks.

mod admission;
pub mod api;
mod attester;
pub mod client;
pub mod config;
mod journal;
mod metrics;
pub mod node;
pub mod restore;
mod roots;

//! Rust types and typed exports generated from `wit/encoder.wit`.
//!
//! Only the exports and the WIT types are used from here: the host defines
//! the imports (`log`, `inference`) itself with `func_wrap`, because they
//! charge fuel and so need the store.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "encoder",
    additional_derives: [PartialEq],
});

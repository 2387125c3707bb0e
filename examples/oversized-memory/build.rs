//! Declares a 768 MiB initial linear memory for the WebAssembly build: above
//! the host's default limit of 512 MiB per call.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!(
            "cargo:rustc-link-arg-cdylib=--initial-memory={}",
            768u64 << 20
        );
    }
}

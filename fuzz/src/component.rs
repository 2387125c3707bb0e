//! Generated components, loaded and called under the host's limits: the
//! fuzzer's bytes drive `wasm-smith` to write a core module with exactly
//! the exports and imports of the `soma:encoder` world's core ABI (so it
//! links, and its random code can call the host's imports with random
//! arguments), which `wit-component` wraps into a component. Whatever it
//! does, loading and calling it must end in a typed verdict about the
//! component (refused, trapped, out of fuel or memory, invalid output,
//! ...), never a panic, a failure of the host itself, or a timeout (fuel
//! must stop it first).
//!
//! Random code seldom answers `info()` with a valid record, so most inputs
//! end at load, after running guest code (start-up, `info()` and whatever
//! imports it calls); `embed` runs for those that get through. The memory
//! bound is the store limiter's: exceeding it is the `MemoryLimit`
//! verdict, which this target accepts like any other.

use arbitrary::Unstructured;
use soma_host::{Limits, Seed};
use std::sync::OnceLock;
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::{ManglingAndAbi, Resolve, WorldId};

/// Fuel per call: enough for real work, little enough that a generated
/// infinite loop ends quickly.
const FUEL: u64 = 20_000_000;

/// The encoder world, and a core module with its core ABI's imports and
/// exports (bodies `unreachable`).
fn world() -> &'static (Resolve, WorldId, Vec<u8>) {
    static WORLD: OnceLock<(Resolve, WorldId, Vec<u8>)> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut resolve = Resolve::default();
        let wit = concat!(env!("CARGO_MANIFEST_DIR"), "/../wit");
        let (package, _) = resolve.push_dir(wit).expect("the WIT package parses");
        let world = resolve
            .select_world(&[package], Some("encoder"))
            .expect("the encoder world exists");
        let template = wit_component::dummy_module(&resolve, world, ManglingAndAbi::Standard32);
        (resolve, world, template)
    })
}

/// The component the fuzzer's bytes describe, or `None` if they run out
/// before describing one.
fn component(u: &mut Unstructured<'_>) -> Option<Vec<u8>> {
    let (resolve, world, template) = world();
    let mut config: wasm_smith::Config = u.arbitrary().ok()?;
    // What the host's engine enables, and the world's interface.
    config.available_imports = Some(template.clone());
    config.exports = Some(template.clone());
    config.threads_enabled = false;
    config.shared_everything_threads_enabled = false;
    config.memory64_enabled = false;
    config.gc_enabled = false;
    config.exceptions_enabled = false;
    config.custom_page_sizes_enabled = false;
    config.wide_arithmetic_enabled = false;
    // externref needs the GC the engine leaves out.
    config.reference_types_enabled = false;
    // The world's exports bring the one memory a call may have.
    config.max_memories = 0;
    config.max_memory32_bytes = config.max_memory32_bytes.min(1 << 30);
    let module = wasm_smith::Module::new(config, u).ok()?;
    let mut core = module.to_bytes();
    wit_component::embed_component_metadata(&mut core, resolve, *world, StringEncoding::UTF8)
        .expect("metadata embeds in any module");
    // A module whose exports the world's ABI cannot lift (a `cabi_realloc`
    // of another type, say) is not a component: nothing to load.
    ComponentEncoder::default()
        .module(&core)
        .ok()?
        .validate(true)
        .encode()
        .ok()
}

/// Checks one input.
pub fn check(bytes: &[u8]) {
    let mut u = Unstructured::new(bytes);
    let Some(component) = component(&mut u) else {
        return;
    };
    let limits = Limits {
        fuel: FUEL,
        ..Limits::default()
    };
    let encoder = match crate::engine().load_with(&component, &limits) {
        Ok(encoder) => encoder,
        Err(e) => {
            assert!(
                !crate::host_failed(&e),
                "a generated component failed the host at load: {e}"
            );
            return;
        }
    };
    let input = u.bytes(u.len().min(256)).unwrap_or_default().to_vec();
    if let Err(e) = encoder.embed(&[input], &limits, Seed::from(1)) {
        assert!(
            !crate::host_failed(&e),
            "a generated component failed the host: {e}"
        );
    }
}

/// Byte strings that describe small components.
pub fn seeds() -> Vec<Vec<u8>> {
    (0u8..4)
        .map(|i| {
            let mut state = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(u64::from(i) + 1);
            (0..4096)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use soma_host::Error;

    /// A generated component's random `info()` rarely answers a valid
    /// record, so few load; what matters is that they compile, link and
    /// run guest code (a verdict from running it, not a refusal of the
    /// bytes).
    #[test]
    fn the_seeds_describe_components_that_link_and_run() {
        let limits = Limits {
            fuel: FUEL,
            ..Limits::default()
        };
        let mut ran = 0;
        for seed in seeds() {
            let component = component(&mut Unstructured::new(&seed)).expect("a component");
            match crate::engine().load_with(&component, &limits) {
                Err(Error::Compile(_) | Error::Incompatible(_)) => {}
                Err(e) if crate::host_failed(&e) => panic!("the host failed: {e}"),
                _ => ran += 1,
            }
        }
        assert!(ran > 0, "no seed describes a component that runs");
    }
}

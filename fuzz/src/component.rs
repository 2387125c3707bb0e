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
//! Random code seldom answers `info()` with a valid record, so in three
//! inputs of four the generated `info` (and its post-return) is replaced by
//! one that writes a record the fuzzer chose (dimension, modality and input
//! limit, the first and last sometimes invalid) into the module's memory:
//! those components load unless their own start-up fails, and `embed` runs
//! their random code with the host's imports. The input also draws the
//! call's memory budget (1 to 1024 pages): a growth past it is the
//! `MemoryLimit` verdict, which this target accepts like any other. A call
//! that answers reports the memory it held; run again with exactly that
//! budget, it must answer the same (bits, fuel and memory).

use arbitrary::Unstructured;
use soma_host::{Limits, Seed};
use std::sync::OnceLock;
use wasm_encoder::reencode::{self, Reencode};
use wasm_encoder::{CodeSection, Function, Instruction, MemArg};
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::{ManglingAndAbi, Resolve, WasmExport, WasmExportKind, WorldId, WorldItem};

/// Fuel per call: enough for real work, little enough that a generated
/// infinite loop ends quickly.
const FUEL: u64 = 20_000_000;

/// The encoder world and what generated modules are built against.
struct World {
    resolve: Resolve,
    world: WorldId,
    /// A core module with the world's core ABI imports and exports (bodies
    /// `unreachable`).
    template: Vec<u8>,
    /// The core export names of `info`, of its post-return and of the
    /// memory the canonical ABI uses.
    info: String,
    post_return: String,
    memory: String,
}

/// The encoder world, read from the repository's WIT.
fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut resolve = Resolve::default();
        let wit = concat!(env!("CARGO_MANIFEST_DIR"), "/../wit");
        let (package, _) = resolve.push_dir(wit).expect("the WIT package parses");
        let world = resolve
            .select_world(&[package], Some("encoder"))
            .expect("the encoder world exists");
        let mangling = ManglingAndAbi::Standard32;
        let template = wit_component::dummy_module(&resolve, world, mangling);
        let info = resolve.worlds[world]
            .exports
            .values()
            .find_map(|item| match item {
                WorldItem::Function(f) if f.name == "info" => Some(f),
                _ => None,
            })
            .expect("the world exports info");
        let name = |kind| {
            resolve.wasm_export_name(
                mangling,
                WasmExport::Func {
                    interface: None,
                    func: info,
                    kind,
                },
            )
        };
        let (info, post_return) = (
            name(WasmExportKind::Normal),
            name(WasmExportKind::PostReturn),
        );
        let memory = wasmparser::Parser::new(0)
            .parse_all(&template)
            .find_map(|payload| match payload {
                Ok(wasmparser::Payload::ExportSection(section)) => section
                    .into_iter()
                    .flatten()
                    .find(|e| e.kind == wasmparser::ExternalKind::Memory)
                    .map(|e| e.name.to_owned()),
                _ => None,
            })
            .expect("the template exports a memory");
        World {
            resolve,
            world,
            template,
            info,
            post_return,
            memory,
        }
    })
}

/// The record a replaced `info` answers.
#[derive(Clone, Copy)]
struct Info {
    /// Where in the exported memory (in its first page) the record and,
    /// after it, the name are written.
    at: u32,
    /// The declared dimension; 0 is invalid, which the host must refuse.
    dimension: u32,
    /// The declared modality, as its enum index.
    modality: u8,
    /// The declared largest input (0 is invalid).
    max_input_bytes: u32,
}

impl Info {
    /// What `info` and its post-return become, writing into the 32-bit
    /// memory of index `memory` (the one the module exports for the
    /// canonical ABI).
    fn bodies(self, memory: u32) -> (Function, Function) {
        const NAME: &[u8; 8] = b"fuzz-enc";
        let at = self.at as i32;
        let name = at + 32;
        let store = |offset: u64| MemArg {
            offset,
            align: 2,
            memory_index: memory,
        };
        let mut info = Function::new([]);
        // A memory of no pages (wasm-smith's and the template's minimum)
        // gets the one page the record needs.
        info.instruction(&Instruction::MemorySize(memory))
            .instruction(&Instruction::I32Eqz)
            .instruction(&Instruction::If(wasm_encoder::BlockType::Empty))
            .instruction(&Instruction::I32Const(1))
            .instruction(&Instruction::MemoryGrow(memory))
            .instruction(&Instruction::Drop)
            .instruction(&Instruction::End);
        // The canonical ABI's layout of `encoder-info`: name and version
        // as (pointer, length), dimension, modality (one byte), largest
        // input.
        for (offset, value) in [
            (0, name),
            (4, NAME.len() as i32),
            (8, name),
            (12, NAME.len() as i32),
            (16, self.dimension as i32),
            (24, self.max_input_bytes as i32),
        ] {
            info.instruction(&Instruction::I32Const(at))
                .instruction(&Instruction::I32Const(value))
                .instruction(&Instruction::I32Store(store(offset)));
        }
        info.instruction(&Instruction::I32Const(at))
            .instruction(&Instruction::I32Const(i32::from(self.modality)))
            .instruction(&Instruction::I32Store8(MemArg {
                align: 0,
                ..store(20)
            }))
            .instruction(&Instruction::I32Const(name))
            .instruction(&Instruction::I64Const(i64::from_le_bytes(*NAME)))
            .instruction(&Instruction::I64Store(MemArg {
                align: 3,
                ..store(0)
            }))
            .instruction(&Instruction::I32Const(at))
            .instruction(&Instruction::End);
        let mut post_return = Function::new([]);
        post_return.instruction(&Instruction::End);
        (info, post_return)
    }
}

/// Re-encodes a module with `info` and its post-return replaced.
struct ReplaceInfo {
    /// Index among the module's defined functions of `info` and of its
    /// post-return.
    info: u32,
    post_return: u32,
    /// Index of the next defined function the re-encoding meets.
    next: u32,
    /// The new bodies of `info` and of its post-return.
    bodies: (Function, Function),
}

impl Reencode for ReplaceInfo {
    type Error = std::convert::Infallible;

    fn parse_function_body(
        &mut self,
        code: &mut CodeSection,
        func: wasmparser::FunctionBody<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        let index = self.next;
        self.next += 1;
        match index {
            i if i == self.info => code.function(&self.bodies.0),
            i if i == self.post_return => code.function(&self.bodies.1),
            _ => return reencode::utils::parse_function_body(self, code, func),
        };
        Ok(())
    }
}

/// `module` with `info` answering `record` and an empty post-return, or
/// `None` if either is an import (wasm-smith may export an imported
/// function of the right type) or the exported memory is 64-bit (which the
/// canonical ABI's 32-bit pointers cannot address: no component either).
fn replace_info(module: &[u8], record: Info) -> Option<Vec<u8>> {
    let mut imported = 0;
    // Whether each memory, imported then defined, is 64-bit.
    let mut memory64 = Vec::new();
    let (mut info, mut post_return, mut memory) = (None, None, None);
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        match payload.expect("wasm-smith writes valid modules") {
            wasmparser::Payload::ImportSection(section) => {
                for import in section.into_imports() {
                    match import.unwrap().ty {
                        wasmparser::TypeRef::Func(_) | wasmparser::TypeRef::FuncExact(_) => {
                            imported += 1
                        }
                        wasmparser::TypeRef::Memory(ty) => memory64.push(ty.memory64),
                        _ => {}
                    }
                }
            }
            wasmparser::Payload::MemorySection(section) => {
                memory64.extend(section.into_iter().map(|ty| ty.unwrap().memory64));
            }
            wasmparser::Payload::ExportSection(section) => {
                for export in section {
                    let export = export.unwrap();
                    match export.kind {
                        wasmparser::ExternalKind::Func if export.name == world().info => {
                            info = Some(export.index)
                        }
                        wasmparser::ExternalKind::Func if export.name == world().post_return => {
                            post_return = Some(export.index)
                        }
                        wasmparser::ExternalKind::Memory if export.name == world().memory => {
                            memory = Some(export.index)
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let memory = memory?;
    if memory64[memory as usize] {
        return None;
    }
    let mut replace = ReplaceInfo {
        info: info?.checked_sub(imported)?,
        post_return: post_return?.checked_sub(imported)?,
        next: 0,
        bodies: record.bodies(memory),
    };
    let mut out = wasm_encoder::Module::new();
    replace
        .parse_core_module(&mut out, wasmparser::Parser::new(0), module)
        .expect("a valid module re-encodes");
    let out = out.finish();
    // A broken rewrite would only show as inputs that never load: fail.
    if let Err(e) =
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all()).validate_all(&out)
    {
        panic!("the rewritten module is invalid: {e}");
    }
    Some(out)
}

/// The component the fuzzer's bytes describe, or `None` if they run out
/// before describing one.
fn component(u: &mut Unstructured<'_>) -> Option<Vec<u8>> {
    let World {
        resolve,
        world,
        template,
        ..
    } = world();
    let record = u.ratio(3u8, 4).ok()?.then_some(Info {
        at: u.int_in_range(0..=255u32).ok()? * 8,
        dimension: u.int_in_range(0..=16).ok()?,
        modality: u.int_in_range(0..=3).ok()?,
        max_input_bytes: u.int_in_range(0..=300).ok()?,
    });
    let mut config: wasm_smith::Config = u.arbitrary().ok()?;
    // What the host's engine enables, and the world's interface.
    config.available_imports = Some(template.clone());
    config.exports = Some(template.clone());
    // What the engine leaves out is off; the rest of the host's `FEATURES`
    // (multiple memories, SIMD, tail calls, ...) stays as the input chose
    // it.
    config.threads_enabled = false;
    config.shared_everything_threads_enabled = false;
    config.gc_enabled = false;
    config.exceptions_enabled = false;
    config.custom_page_sizes_enabled = false;
    config.wide_arithmetic_enabled = false;
    // One input in four may go beyond what the host accepts: reference
    // types (wasm-smith then writes `externref`, which needs the GC the
    // engine leaves out) and 64-bit memories (`Invalid`); more memories
    // and tables per module than the instance layout's one each, longer
    // tables (`Layout`). The others stay within, so that most inputs
    // load.
    if u.ratio(1u8, 4).ok()? {
        config.max_memories = config.max_memories.min(2);
        config.max_memory64_bytes = config.max_memory64_bytes.min(1 << 30);
        config.max_tables = config.max_tables.min(3);
    } else {
        config.reference_types_enabled = false;
        config.memory64_enabled = false;
        config.max_memories = 0;
        config.max_tables = config.max_tables.min(1);
        config.max_table_elements = config.max_table_elements.min(100_000);
    }
    config.max_memory32_bytes = config.max_memory32_bytes.min(1 << 30);
    let module = wasm_smith::Module::new(config, u).ok()?.to_bytes();
    // Where `info` is an import, the module stays as generated.
    let mut core = record
        .and_then(|record| replace_info(&module, record))
        .unwrap_or(module);
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
    // A memory budget of 1 to 1024 pages, so that modules of every size
    // meet it.
    let pages = u.int_in_range(1..=1024u64).unwrap_or(1024);
    let limits = Limits {
        fuel: FUEL,
        max_memory_bytes: pages << 16,
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
    let inputs = [input];
    match encoder.embed(&inputs, &limits, Seed::from(1)) {
        // The memory a call reports is the most it held: given exactly
        // that budget, it answers the same.
        Ok(out) => {
            let exact = Limits {
                max_memory_bytes: out.memory_bytes,
                ..limits
            };
            let again = encoder.embed(&inputs, &exact, Seed::from(1));
            if let Err(e) = &again
                && crate::host_failed(e)
            {
                return;
            }
            let same = again.as_ref().is_ok_and(|again| {
                crate::bits(&again.vectors) == crate::bits(&out.vectors)
                    && (again.fuel_used, again.memory_bytes) == (out.fuel_used, out.memory_bytes)
            });
            assert!(
                same,
                "a call that held {} bytes answered otherwise under a budget of that much: {:?}",
                out.memory_bytes,
                again.map(|a| (a.fuel_used, a.memory_bytes))
            );
        }
        Err(e) => assert!(
            !crate::host_failed(&e),
            "a generated component failed the host: {e}"
        ),
    }
}

/// Byte strings that describe small components: the first eight of a
/// fixed pseudo-random series that do.
pub fn seeds() -> Vec<Vec<u8>> {
    (0u8..=255)
        .map(|i| {
            let mut state = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(u64::from(i) + 1);
            (0..4096)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect::<Vec<u8>>()
        })
        .filter(|bytes| component(&mut Unstructured::new(bytes)).is_some())
        .take(8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use soma_host::Error;

    fn limits() -> Limits {
        Limits {
            fuel: FUEL,
            ..Limits::default()
        }
    }

    /// The world's template module (every body `unreachable`) as a
    /// component, `info` replaced by `record` if given.
    fn template(record: Option<Info>) -> Vec<u8> {
        let World {
            resolve,
            world,
            template,
            ..
        } = world();
        let mut core = match record {
            Some(record) => replace_info(template, record).expect("the template re-encodes"),
            None => template.clone(),
        };
        wit_component::embed_component_metadata(&mut core, resolve, *world, StringEncoding::UTF8)
            .unwrap();
        ComponentEncoder::default()
            .module(&core)
            .unwrap()
            .validate(true)
            .encode()
            .unwrap()
    }

    /// The replaced `info` is what the host reads, and `embed` then runs
    /// the module's own code (here `unreachable`); without the
    /// replacement the component fails at load.
    #[test]
    fn a_replaced_info_loads_and_embed_runs_the_generated_code() {
        let record = Info {
            at: 64,
            dimension: 7,
            modality: 3,
            max_input_bytes: 256,
        };
        let encoder = crate::engine()
            .load_with(&template(Some(record)), &limits())
            .expect("loads");
        assert_eq!(encoder.info().name, "fuzz-enc");
        assert_eq!(encoder.info().version, "fuzz-enc");
        assert_eq!(encoder.info().dimension, 7);
        assert_eq!(encoder.info().modality, soma_host::Modality::Bytes);
        assert_eq!(encoder.info().max_input_bytes, 256);
        let called = encoder.embed(&[b"x".to_vec()], &limits(), Seed::from(1));
        assert!(matches!(called, Err(Error::Trap { .. })), "{called:?}");

        let unchanged = crate::engine().load_with(&template(None), &limits()).err();
        assert!(
            matches!(unchanged, Some(Error::Trap { .. })),
            "{unchanged:?}"
        );
        let invalid = crate::engine()
            .load_with(
                &template(Some(Info {
                    dimension: 0,
                    ..record
                })),
                &limits(),
            )
            .err();
        assert!(
            matches!(invalid, Some(Error::InvalidInfo(_))),
            "{invalid:?}"
        );
    }

    /// Generated components compile, link and run guest code (a verdict
    /// from running it, not a refusal of the bytes), and some get through
    /// loading to `embed`.
    #[test]
    fn the_seeds_describe_components_that_run_and_reach_embed() {
        let (mut ran, mut loaded) = (0, 0);
        for seed in seeds() {
            let component = component(&mut Unstructured::new(&seed)).expect("a component");
            match crate::engine().load_with(&component, &limits()) {
                Err(e) if crate::host_failed(&e) => panic!("the host failed: {e}"),
                Err(Error::Invalid(_) | Error::Incompatible(_) | Error::Layout(_)) => {}
                Err(_) => ran += 1,
                Ok(_) => loaded += 1,
            }
        }
        assert!(ran + loaded > 0, "no seed describes a component that runs");
        assert!(loaded > 0, "no seed describes a component that loads");
    }
}

//! The process-wide engine: loads components and packages into encoders.

use crate::encoder::Encoder;
use crate::inference::{ModelCache, ModelError, PackageFailures, PackageModel, PackageModels};
use crate::package::{CacheOutcome, CompiledCache, VerifiedPackage};
use crate::runtime::{FEATURES, Runtime};
use crate::{Digest, Error, Limits, preinit};
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::Component;

/// Compiles and runs encoder components.
///
/// One engine serves a whole process; cloning it is cheap. Its
/// configuration is part of consensus: fuel metering on, NaN
/// canonicalisation on, threads off, deterministic relaxed SIMD.
#[derive(Clone)]
pub struct Engine {
    runtime: Runtime,
    models: Arc<ModelCache>,
}

impl Engine {
    /// An engine with the deterministic configuration every validator uses.
    pub fn new() -> Result<Engine, Error> {
        Engine::build(true)
    }

    /// The same engine without fuel metering, to measure what metering
    /// costs. Calls on it ignore [`Limits::fuel`] and report no fuel used:
    /// never use it where cost must be agreed on.
    pub fn without_fuel_metering() -> Result<Engine, Error> {
        Engine::build(false)
    }

    /// Whether calls on this engine are metered with fuel (every engine but
    /// [`Engine::without_fuel_metering`]'s).
    pub fn meters_fuel(&self) -> bool {
        self.runtime.fuel_metering()
    }

    /// This engine with its models run in `workers` inference worker
    /// processes (clamped to 1 ..= [`crate::inference::MAX_WORKERS`])
    /// instead of one per core (at most eight). Call it before loading
    /// anything: models already loaded stay with the old workers.
    pub fn with_inference_workers(mut self, workers: usize) -> Engine {
        self.models = Arc::new(ModelCache::new(workers, self.models.session_bytes()));
        self
    }

    /// This engine with each inference worker holding sessions for at most
    /// `bytes` of admitted models at once (by default
    /// [`crate::inference::DEFAULT_SESSION_BYTES`]): to load another, it
    /// drops the sessions used longest ago, which are compiled again when
    /// next run. A model larger than `bytes` fails as this host's error.
    /// Call it before loading anything.
    pub fn with_session_memory(mut self, bytes: u64) -> Engine {
        self.models = Arc::new(ModelCache::new(self.models.workers(), bytes));
        self
    }

    fn build(fuel_metering: bool) -> Result<Engine, Error> {
        Ok(Engine {
            runtime: Runtime::new(fuel_metering)?,
            models: Arc::default(),
        })
    }

    /// Compiles a component, checks that it implements the `encoder` world
    /// and reads its [`crate::EncoderInfo`].
    pub fn load(&self, component: &[u8]) -> Result<Encoder, Error> {
        self.load_with(component, &Limits::default())
    }

    /// Like [`Engine::load`], with the start-up work (pre-initialisation and
    /// `info()`) under `limits`.
    pub fn load_with(&self, component: &[u8], limits: &Limits) -> Result<Encoder, Error> {
        let compiled = self.compile(component, limits)?;
        Encoder::link(
            self.runtime.clone(),
            &compiled,
            PackageModels::default(),
            limits,
        )
    }

    /// Like [`Engine::load`], but takes the compiled code from `cache` when
    /// this node compiled the component before, and stores it otherwise.
    pub fn load_cached(
        &self,
        component: &[u8],
        cache: &CompiledCache,
    ) -> Result<(Encoder, CacheOutcome), Error> {
        let (compiled, outcome) = self.compile_cached(component, cache, &Limits::default())?;
        let encoder = Encoder::link(
            self.runtime.clone(),
            &compiled,
            PackageModels::default(),
            &Limits::default(),
        )?;
        Ok((encoder, outcome))
    }

    /// Loads a verified package: admits its ONNX models (blobs named
    /// `*.onnx`, see [`crate::model`]) and compiles them into inference
    /// sessions, loads its component, and checks that the component is the
    /// encoder the manifest describes. Start-up work (pre-initialisation and
    /// `info()`) runs on the manifest's fuel limit.
    pub fn load_package(
        &self,
        package: &VerifiedPackage,
        cache: Option<&CompiledCache>,
    ) -> Result<Encoder, Error> {
        let mut models = BTreeMap::new();
        let failures = Arc::new(PackageFailures::new(package.digest()));
        for (model, bytes) in package.models().filter(|(m, _)| m.name.ends_with(".onnx")) {
            let session = self
                .models
                .get(&model.blob.digest, bytes)
                .map_err(|e| match e {
                    ModelError::Host(e) => Error::Host(e),
                    e @ ModelError::TooLarge { .. } => {
                        Error::Host(format!("model `{}`: {e}", model.name))
                    }
                    // Whether ONNX Runtime would refuse it elsewhere (or
                    // with more memory) is unknown: not the model's fault.
                    e @ ModelError::Runtime => Error::Host(format!("model `{}`: {e}", model.name)),
                    e @ ModelError::Refused(_) => Error::InvalidModel {
                        name: model.name.clone(),
                        message: e.to_string(),
                    },
                })?;
            models.insert(model.blob.digest, PackageModel::new(session, &failures));
        }
        let limits = Limits {
            fuel: package.manifest().fuel_limit,
            ..Limits::default()
        };
        let compiled = match cache {
            Some(cache) => self.compile_cached(package.component(), cache, &limits)?.0,
            None => self.compile(package.component(), &limits)?,
        };
        let encoder = Encoder::link(self.runtime.clone(), &compiled, Arc::new(models), &limits)?;
        package
            .manifest()
            .check_info(encoder.info())
            .map_err(Error::ManifestMismatch)?;
        Ok(encoder)
    }

    /// Pre-initialises (under `limits`) and compiles `wasm`.
    fn compile(&self, wasm: &[u8], limits: &Limits) -> Result<Component, Error> {
        Component::new(self.runtime.engine(), self.preinitialized(wasm, limits)?)
            .map_err(|e| Error::compiling("", &e))
    }

    /// Like [`Engine::compile`], through `cache`: keyed by the digest of
    /// `wasm` and of the limits its start-up runs under (which decide
    /// whether a snapshot is taken), holding the compiled result.
    fn compile_cached(
        &self,
        wasm: &[u8],
        cache: &CompiledCache,
        limits: &Limits,
    ) -> Result<(Component, CacheOutcome), Error> {
        // Every bound start-up runs under; a new field of `Limits` does not
        // compile here until it is placed. (The wall-clock safety net only
        // ever fails a start-up as this host's trouble, which is not
        // cached.)
        let Limits {
            fuel,
            max_memory_bytes,
            max_table_elements,
            max_instances,
            timeout: _,
        } = *limits;
        let mut key = blake3::Hasher::new();
        key.update(&Digest::of(wasm).0);
        for bound in [
            fuel,
            max_memory_bytes,
            max_table_elements,
            u64::from(max_instances),
        ] {
            key.update(&bound.to_le_bytes());
        }
        let key = Digest(*key.finalize().as_bytes());
        cache.component(self.runtime.engine(), &key, || {
            self.preinitialized(wasm, limits)
        })
    }

    /// `wasm`, once validated, with its start-up done, or as it is if it
    /// cannot be pre-initialised.
    fn preinitialized(&self, wasm: &[u8], limits: &Limits) -> Result<Vec<u8>, Error> {
        validate(wasm)?;
        Ok(preinit::preinitialize(&self.runtime, wasm, limits)?.unwrap_or_else(|| wasm.to_vec()))
    }

    /// How many times creating a component's memory images failed on this
    /// engine and a retry made it good (a failure no retry mends ends the
    /// load with [`Error::Host`]).
    pub fn memory_image_retries(&self) -> u64 {
        self.runtime.image_retries()
    }

    /// How many inference worker processes this engine has running (they
    /// start on first use: two per model, more while its runs are many).
    pub fn running_inference_workers(&self) -> usize {
        self.models.running_workers()
    }

    /// How many model sessions its inference workers hold together
    /// (waiting for busy workers to finish).
    pub fn inference_sessions(&self) -> usize {
        self.models.sessions()
    }

    /// How many admitted models it keeps: those of packages some loaded
    /// encoder still uses (an encoder dropped everywhere frees its models),
    /// and those refused in the last ten minutes.
    pub fn cached_models(&self) -> usize {
        self.models.cached()
    }

    /// How many times its inference workers compiled a model: a count
    /// that keeps rising under steady work means sessions are dropped for
    /// want of session memory and compiled again.
    pub fn inference_loads(&self) -> u64 {
        self.models.loads()
    }
}

/// Refuses, as [`Error::Invalid`], bytes that are not a valid component
/// with [`FEATURES`]. Judged on the author's bytes, before
/// pre-initialisation rewrites them, and with the protocol's features
/// rather than whatever a wasmtime build enables, so that every validator
/// reaches the same verdict.
fn validate(wasm: &[u8]) -> Result<(), Error> {
    if !wasmparser::Parser::is_component(wasm) {
        return Err(Error::Invalid(
            "not a WebAssembly component (a core module, or not WebAssembly at all)".into(),
        ));
    }
    wasmparser::Validator::new_with_features(FEATURES)
        .validate_all(wasm)
        .map(drop)
        .map_err(|e| Error::Invalid(e.to_string()))
}

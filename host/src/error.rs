//! What can go wrong when loading or calling an encoder.

use std::time::Duration;

/// Why loading or calling an encoder failed.
///
/// Every failure of untrusted code is one of these variants; none of them
/// leaves the host unable to serve the next call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The bytes are not a valid WebAssembly component with the features
    /// every host enables ([`crate::FEATURES`]): the same verdict on every
    /// host, since validation is a function of the bytes alone.
    #[error("component is not valid WebAssembly: {0}")]
    Invalid(String),

    /// The component is valid but a core module's memories or tables do
    /// not fit the instance layout every host configures alike (one memory
    /// and one table per module, tables of at most 100 000 elements): the
    /// same verdict on every host, since the layout is pinned with the
    /// engine.
    #[error("component does not fit the host's instance layout: {0}")]
    Layout(String),

    /// The engine could not compile or pre-initialise a valid component:
    /// this host's trouble (compiling can fail for want of memory), not
    /// held against the encoder.
    #[error("component does not compile: {0}")]
    Compile(String),

    /// The component is valid but does not implement the `soma:encoder`
    /// world this host offers (a missing or mistyped export, or an import
    /// the host does not provide).
    #[error("component is not a soma:encoder@0.1.0 encoder: {0}")]
    Incompatible(String),

    /// The component is not the encoder its package manifest describes.
    #[error("component does not match its package manifest: {0}")]
    ManifestMismatch(String),

    /// A model of the package was refused by admission (see
    /// [`crate::model`]).
    #[error("model `{name}` of the package does not load: {message}")]
    InvalidModel {
        /// The model's name in the manifest.
        name: String,
        /// Why admission refused it.
        message: String,
    },

    /// `info()` returned something no encoder may claim.
    #[error("encoder info is invalid: {0}")]
    InvalidInfo(String),

    /// The host refused the batch before running the encoder.
    #[error("input rejected: {0}")]
    InvalidInput(String),

    /// The encoder used all the fuel it was given.
    #[error("encoder ran out of fuel (limit {limit})")]
    FuelExhausted {
        /// Fuel the call was given.
        limit: u64,
    },

    /// The encoder's memory starts larger than the limit, it tried to grow
    /// its memory (or tables) past the limit, or its start-up left more
    /// memory than a snapshot may hold ([`crate::MAX_SNAPSHOT_MEMORY`]).
    #[error("encoder exceeded its memory limit of {limit_bytes} bytes")]
    MemoryLimit {
        /// Bytes of linear memory the call was allowed.
        limit_bytes: u64,
    },

    /// The encoder's component instantiates more core instances, or
    /// defines more memories or tables, than a call allows
    /// ([`crate::Limits::max_instances`] of each).
    #[error("encoder needs more than {limit} instances, memories or tables")]
    InstanceLimit {
        /// Instances (and memories, and tables) the call was allowed.
        limit: u32,
    },

    /// The encoder trapped: a panic, an `unreachable`, an out-of-bounds
    /// access, an explicit exit, ...
    #[error("encoder trapped: {message}{}", stderr_suffix(stderr))]
    Trap {
        /// What trapped: the wasm trap code, the host error, or the exit
        /// status.
        message: String,
        /// The tail of what the encoder wrote to stderr (a Rust panic message
        /// lands there).
        stderr: String,
    },

    /// The encoder returned an error of its own.
    #[error("encoder refused the batch: {0}")]
    Refused(String),

    /// The encoder returned vectors that break the contract.
    #[error("encoder output is invalid: {0}")]
    InvalidOutput(InvalidOutput),

    /// The encoder exhausted the native stack. How deep wasm can recurse
    /// depends on native frame sizes (CPU, compiler version), so another
    /// host may not stop at the same point: this is not evidence against
    /// the encoder.
    #[error("encoder exhausted the host's native stack")]
    StackExhausted,

    /// The wall-clock safety net fired. This is a failure of this host, not
    /// evidence against the encoder: wall clocks differ between machines.
    #[error("encoder call exceeded the wall-clock safety limit of {after:?}")]
    Timeout {
        /// The wall-clock limit that was exceeded.
        after: Duration,
    },

    /// The host itself failed (engine configuration, resource exhaustion
    /// of this machine, the inference worker dying or running out of time,
    /// ONNX Runtime refusing what admission and planning accepted).
    #[error("host failure: {0}")]
    Host(String),
}

impl Error {
    /// Whether every correct host running the same call reaches this same
    /// failure, so that it can be held against the encoder.
    ///
    /// Timeouts, stack exhaustion, failures to compile valid code and host
    /// failures depend on this machine and are not.
    pub fn is_deterministic(&self) -> bool {
        !matches!(
            self,
            Error::Timeout { .. } | Error::StackExhausted | Error::Compile(_) | Error::Host(_)
        )
    }

    /// Names wasmtime's failure to compile or load a valid component:
    /// [`Error::Layout`] when a core module's memories or tables do not fit
    /// the pooling allocator's layout (wasmtime's words for it; the engine
    /// version and the layout are pinned, and a test holds them to these
    /// words), else this host's [`Error::Compile`]. An instance's state
    /// too large for the layout stays this host's: its size depends on the
    /// host's build (pointer width, compiler), not only on the component.
    pub(crate) fn compiling(context: &str, error: &wasmtime::Error) -> Error {
        let text = format!("{context}{error:#}");
        let layout = ["module memory", "module table"]
            .iter()
            .any(|what| text.contains(&format!("{what} {BEYOND_LAYOUT}")));
        match layout {
            true => Error::Layout(text),
            false => Error::Compile(text),
        }
    }
}

/// How wasmtime ends its words for anything beyond the pooling allocator's
/// instance layout.
pub(crate) const BEYOND_LAYOUT: &str = "does not fit in pooling allocator requirements";

/// A failure of this host met inside a guest's call (the inference worker
/// died or ran out of time): it ends the call as [`Error::Host`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct LocalFailure(pub(crate) String);

impl From<InvalidOutput> for Error {
    fn from(e: InvalidOutput) -> Self {
        Error::InvalidOutput(e)
    }
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("\nencoder stderr:\n{stderr}")
    }
}

/// How an encoder's output broke the contract.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvalidOutput {
    /// Not one vector per input.
    #[error("expected {expected} vectors (one per input), got {actual}")]
    WrongCount {
        /// Number of inputs.
        expected: usize,
        /// Number of vectors returned.
        actual: usize,
    },
    /// A vector's length differs from the declared dimension.
    #[error("vector {index} has {actual} values, but the encoder declares dimension {expected}")]
    WrongDimension {
        /// Which vector.
        index: usize,
        /// Declared dimension.
        expected: usize,
        /// Length returned.
        actual: usize,
    },
    /// What the encoder handed back does not lift: invalid UTF-8, a list
    /// out of bounds, or more data than a well-formed answer can hold.
    #[error("malformed result: {0}")]
    Malformed(String),
    /// A value is NaN or infinite.
    #[error("vector {index} has a non-finite value ({value}) at position {position}")]
    NonFinite {
        /// Which vector.
        index: usize,
        /// Position inside the vector.
        position: usize,
        /// The value, for the message.
        value: f32,
    },
}

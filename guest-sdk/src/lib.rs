//! Write Soma encoder components.
//!
//! An encoder is a WebAssembly component (target `wasm32-wasip2`) that turns
//! a batch of inputs into fixed-dimension vectors. This crate hides the
//! component-model plumbing: implement [`Encoder`] for a type and invoke
//! [`export!`] once.
//!
//! ```
//! use soma_guest_sdk::{EncodeError, Encoder, EncoderInfo, Modality};
//!
//! /// Embeds text as its byte histogram over 4 buckets.
//! struct Buckets;
//!
//! impl Encoder for Buckets {
//!     fn new() -> Self {
//!         Buckets
//!     }
//!
//!     fn info(&self) -> EncoderInfo {
//!         EncoderInfo {
//!             name: "buckets".into(),
//!             version: "0.1.0".into(),
//!             dimension: 4,
//!             modality: Modality::Text,
//!             max_input_bytes: 1 << 16,
//!         }
//!     }
//!
//!     fn embed(&self, inputs: &[Vec<u8>]) -> Result<Vec<Vec<f32>>, EncodeError> {
//!         Ok(inputs
//!             .iter()
//!             .map(|input| {
//!                 let mut v = vec![0.0; 4];
//!                 for byte in input {
//!                     v[usize::from(byte % 4)] += 1.0;
//!                 }
//!                 soma_guest_sdk::vector::l2_normalize(&mut v);
//!                 v
//!             })
//!             .collect())
//!     }
//! }
//!
//! soma_guest_sdk::export!(Buckets);
//! # fn main() {
//! #     let v = Buckets::new().embed(&[b"abcd".to_vec()]).unwrap();
//! #     assert_eq!(v[0], vec![0.5; 4]);
//! # }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type
//! `cdylib`); the resulting `.wasm` is a component the Soma host can load.
//!
//! # Determinism
//!
//! Every validator re-runs an encoder and must get bit-identical output. The
//! host makes the environment deterministic (fixed clock, seeded randomness,
//! canonical NaNs, fuel instead of time); an encoder must not undo that, for
//! example by iterating a `HashMap` into its output.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "encoder",
        pub_export_macro: true,
        default_bindings_module: "soma_guest_sdk::bindings",
    });
}

pub mod align;
pub mod hashing;
pub mod inference;
pub mod log;
#[cfg(feature = "text")]
pub mod text;
pub mod vector;
#[cfg(feature = "text")]
mod wordpiece;

pub use bindings::soma::encoder::types::{EncodeError, EncoderInfo, InvalidInput, Modality};

/// One encoder: the type a component exports with [`export!`].
///
/// [`Encoder::new`] runs once, when the host loads the component: the host
/// calls `info()`, which builds the encoder, and snapshots the instance, so
/// every later call starts with the encoder built. Put expensive start-up
/// work (parsing vocabularies, building tables) there, but nothing that
/// holds a host resource: inference sessions do not survive the snapshot,
/// so open them in [`Encoder::embed`].
pub trait Encoder: Sized + Send + Sync + 'static {
    /// Builds the encoder's state.
    fn new() -> Self;

    /// Describes the encoder; must not depend on anything but the build.
    fn info(&self) -> EncoderInfo;

    /// Embeds a batch: one vector of `info().dimension` finite values per
    /// input, in order.
    fn embed(&self, inputs: &[Vec<u8>]) -> Result<Vec<Vec<f32>>, EncodeError>;
}

impl EncodeError {
    /// An error blaming input number `index` of the batch.
    pub fn invalid_input(index: usize, reason: impl Into<String>) -> Self {
        EncodeError::InvalidInput(InvalidInput {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            reason: reason.into(),
        })
    }
}

/// A text encoder that embeds each input on its own: implement this
/// instead of [`Encoder`], and every input of a batch is read as UTF-8
/// (a batch with an input that is not is refused, naming it) and embedded
/// in turn.
///
/// ```
/// use soma_guest_sdk::{TextEncoder, hashing};
///
/// #[derive(Default)]
/// struct Hashing;
///
/// impl TextEncoder for Hashing {
///     const NAME: &'static str = "hashing";
///     const VERSION: &'static str = "0.1.0";
///     const DIMENSION: u32 = 384;
///     const MAX_INPUT_BYTES: u32 = 1 << 16;
///
///     fn embed_text(&self, text: &str) -> Vec<f32> {
///         hashing::hashed_features(text, 384)
///     }
/// }
///
/// soma_guest_sdk::export!(Hashing);
/// # fn main() {
/// #     use soma_guest_sdk::Encoder;
/// #     assert_eq!(Hashing.info().dimension, 384);
/// #     assert!(Hashing.embed(&[vec![0xff]]).is_err());
/// # }
/// ```
pub trait TextEncoder: Default + Send + Sync + 'static {
    /// The encoder's name, as `info()` reports it.
    const NAME: &'static str;
    /// Its version, usually `env!("CARGO_PKG_VERSION")`.
    const VERSION: &'static str;
    /// Values per vector.
    const DIMENSION: u32;
    /// Largest input accepted, in bytes.
    const MAX_INPUT_BYTES: u32;

    /// Embeds one text: [`TextEncoder::DIMENSION`] finite values.
    fn embed_text(&self, text: &str) -> Vec<f32>;
}

impl<T: TextEncoder> Encoder for T {
    fn new() -> Self {
        T::default()
    }

    fn info(&self) -> EncoderInfo {
        EncoderInfo {
            name: T::NAME.into(),
            version: T::VERSION.into(),
            dimension: T::DIMENSION,
            modality: Modality::Text,
            max_input_bytes: T::MAX_INPUT_BYTES,
        }
    }

    fn embed(&self, inputs: &[Vec<u8>]) -> Result<Vec<Vec<f32>>, EncodeError> {
        (0..inputs.len())
            .map(|i| text_input(inputs, i).map(|text| self.embed_text(text)))
            .collect()
    }
}

/// Reads input `index` of a batch as UTF-8 text, or says why it is not.
pub fn text_input(inputs: &[Vec<u8>], index: usize) -> Result<&str, EncodeError> {
    std::str::from_utf8(&inputs[index])
        .map_err(|e| EncodeError::invalid_input(index, format!("not UTF-8: {e}")))
}

/// Exports a type implementing [`Encoder`] as this component's encoder.
///
/// Invoke it once, at the crate root of a `cdylib` built for
/// `wasm32-wasip2`. On other targets it expands to nothing, so the same crate
/// can be used natively (in tests or benchmarks) as a plain library.
#[macro_export]
macro_rules! export {
    ($encoder:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static INSTANCE: ::std::sync::OnceLock<$encoder> = ::std::sync::OnceLock::new();

            fn instance() -> &'static $encoder {
                INSTANCE.get_or_init(<$encoder as $crate::Encoder>::new)
            }

            struct SomaExport;

            impl $crate::bindings::Guest for SomaExport {
                fn info() -> $crate::EncoderInfo {
                    $crate::Encoder::info(instance())
                }

                fn embed(
                    inputs: ::std::vec::Vec<::std::vec::Vec<u8>>,
                ) -> ::std::result::Result<::std::vec::Vec<::std::vec::Vec<f32>>, $crate::EncodeError>
                {
                    $crate::Encoder::embed(instance(), &inputs)
                }
            }

            $crate::bindings::export!(SomaExport with_types_in $crate::bindings);
        };
    };
}

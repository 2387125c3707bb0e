//! Run the ONNX models of your package on the host's ONNX Runtime.
//!
//! ```no_run
//! use soma_guest_sdk::inference::{Session, Tensor};
//!
//! // The blake3 digest of a model file shipped in the encoder's package.
//! const MODEL: &str = "b2a68b34a45c28477ee9619f6f1ed03064209e3c3dae66aac2cedc4ee59c286d";
//! let session = Session::open(MODEL)?;
//! let ids = Tensor::from_i64(&[1, 3], &[101, 7592, 102]);
//! let outputs = session.run(&[ids.named("input_ids")])?;
//! let hidden = outputs[0].tensor.to_f32().expect("an fp32 output");
//! # Ok::<(), soma_guest_sdk::inference::Error>(())
//! ```
//!
//! Each `run` costs fuel for the work the host plans from the input shapes
//! (multiply-adds, elements touched) and for every byte in and out, and
//! float outputs come back rounded to multiples of 2⁻¹⁶. Models must pass
//! the host's admission: see the host's `model` module for what it refuses.
//! Inference is a host import: outside a component, `open` panics.

use crate::bindings::soma::encoder::inference as wit;
use std::borrow::Cow;

pub use wit::{Error, ErrorCode, NamedTensor, Tensor, TensorType};

/// A model of this encoder's package, ready to run.
pub struct Session(wit::Session);

impl Session {
    /// Opens the model whose blake3 digest is `model_digest` (lowercase hex).
    pub fn open(model_digest: &str) -> Result<Session, Error> {
        wit::Session::open(model_digest).map(Session)
    }

    /// Runs the model on named inputs and returns all its outputs.
    pub fn run(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, Error> {
        self.0.run(inputs)
    }
}

impl Tensor {
    /// An `i64` tensor of the given dimensions.
    pub fn from_i64(dimensions: &[u32], data: &[i64]) -> Tensor {
        Tensor::from_le(
            dimensions,
            TensorType::I64,
            data.iter().flat_map(|x| x.to_le_bytes()),
        )
    }

    /// An `f32` tensor of the given dimensions.
    pub fn from_f32(dimensions: &[u32], data: &[f32]) -> Tensor {
        Tensor::from_le(
            dimensions,
            TensorType::Fp32,
            data.iter().flat_map(|x| x.to_le_bytes()),
        )
    }

    fn from_le(dimensions: &[u32], ty: TensorType, bytes: impl Iterator<Item = u8>) -> Tensor {
        Tensor {
            dimensions: dimensions.to_vec(),
            ty,
            data: bytes.collect(),
        }
    }

    /// Binds the tensor to a model input name.
    pub fn named(self, name: &str) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            tensor: self,
        }
    }

    /// The elements of an `f32` tensor, or `None` for another type.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        self.as_f32().map(Cow::into_owned)
    }

    /// The elements of an `f32` tensor, or `None` for another type:
    /// borrowed from the tensor's bytes where they are aligned for `f32`
    /// (as the guest's allocator places a list's bytes: no copy of a large
    /// output), else copied.
    pub fn as_f32(&self) -> Option<Cow<'_, [f32]>> {
        (self.ty == TensorType::Fp32).then(|| f32s(&self.data))
    }
}

/// Little-endian `f32`s in `bytes` (a trailing partial value is left out):
/// borrowed where they are aligned, else copied.
fn f32s(bytes: &[u8]) -> Cow<'_, [f32]> {
    if cfg!(target_endian = "little") {
        // SAFETY: every bit pattern is a valid `f32`, and `align_to` gives
        // the aligned middle only.
        let (before, floats, after) = unsafe { bytes.align_to::<f32>() };
        if before.is_empty() && after.is_empty() {
            return Cow::Borrowed(floats);
        }
    }
    Cow::Owned(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

impl NamedTensor {
    /// Finds the output called `name`.
    pub fn find<'a>(outputs: &'a [NamedTensor], name: &str) -> Option<&'a Tensor> {
        outputs.iter().find(|t| t.name == name).map(|t| &t.tensor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_outputs_read_the_same_borrowed_or_copied() {
        let values = [1.5f32, -0.25, f32::MAX, 0.0];
        let tensor = Tensor::from_f32(&[4], &values);
        // The allocator aligns a vector's bytes for more than `f32`.
        assert!(matches!(tensor.as_f32(), Some(Cow::Borrowed(_))));
        assert_eq!(tensor.as_f32().as_deref(), Some(&values[..]));
        assert_eq!(tensor.to_f32().as_deref(), Some(&values[..]));
        // The same bytes one byte off their alignment are copied.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&tensor.data);
        let copied = f32s(&shifted[1..]);
        assert!(matches!(copied, Cow::Owned(_)));
        assert_eq!(&*copied, &values[..]);
        assert_eq!(&*f32s(&shifted[1..15]), &values[..3]);
        assert!(Tensor::from_i64(&[1], &[7]).as_f32().is_none());
    }
}

//! What the host and its inference worker say to each other over the
//! worker's stdin and stdout: length-prefixed frames, little-endian.
//!
//! ```text
//! frame    = u64 length ‖ body
//! request  = 1 ‖ digest (32) ‖ bytes            load a model
//!          | 2 ‖ digest (32) ‖ tensors          run it
//!          | 3 ‖ digest (32)                    drop its session
//! reply    = 0 ‖ tensors                         done (empty for a load)
//!          | 1 ‖ bytes                           refused, with the runtime's text
//! tensors  = u16 count ‖ (str name ‖ u8 type ‖ u8 rank ‖ u32 dim * rank ‖ bytes)*
//! bytes    = u64 length ‖ data                   str = u16 length ‖ UTF-8
//! ```
//!
//! The worker runs ONNX Runtime on hostile models, so the host reads its
//! replies as it reads anything untrusted: every length is checked against a
//! bound the host chose before anything is allocated for it.

use crate::bindings::soma::encoder::inference::{NamedTensor, Tensor, TensorType};
use crate::digest::Digest;
use soma_codec::{DecodeError, Reader, Writer};
use std::io::{self, Read, Write};

/// A request from the host.
#[derive(Debug, PartialEq)]
pub(crate) enum Request<'a> {
    /// Compile `model` (admitted bytes) into a session kept under `digest`.
    /// Borrowed: a model can be a gigabyte, and is framed without a copy.
    Load { digest: Digest, model: &'a [u8] },
    /// Run the session of `digest` on `inputs`.
    Run {
        digest: Digest,
        inputs: Vec<NamedTensor>,
    },
    /// Drop the session of `digest`, if there is one (answered with an
    /// empty `Done`).
    Unload { digest: Digest },
}

/// The worker's answer to one request.
#[derive(Debug, PartialEq)]
pub(crate) enum Reply {
    /// The outputs of a run (none for a load).
    Done(Vec<NamedTensor>),
    /// ONNX Runtime refused; its text is for the host's logs only.
    Refused(String),
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtocolError {
    /// The pipe failed or closed.
    #[error("inference worker pipe: {0}")]
    Io(#[from] io::Error),
    /// The frame is longer than the reader allows.
    #[error("frame of {0} bytes exceeds the bound of {1}")]
    TooLarge(u64, u64),
    /// The frame does not decode.
    #[error("malformed frame: {0}")]
    Malformed(#[from] DecodeError),
}

const LOAD: u8 = 1;
const RUN: u8 = 2;
const UNLOAD: u8 = 3;
const DONE: u8 = 0;
const REFUSED: u8 = 1;

/// Writes one frame holding `body`.
fn write_frame(out: &mut impl Write, body: &[u8]) -> io::Result<()> {
    out.write_all(&(body.len() as u64).to_le_bytes())?;
    out.write_all(body)?;
    out.flush()
}

/// Reads one frame of at most `max` bytes.
pub(crate) fn read_frame(input: &mut impl Read, max: u64) -> Result<Vec<u8>, ProtocolError> {
    let mut len = [0u8; 8];
    input.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > max {
        return Err(ProtocolError::TooLarge(len, max));
    }
    let mut body = vec![0u8; len as usize];
    input.read_exact(&mut body)?;
    Ok(body)
}

impl<'a> Request<'a> {
    /// Sends the request.
    pub(crate) fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let mut w = Writer::new();
        match self {
            Request::Load { digest, model } => {
                w.u8(LOAD);
                w.array(&digest.0);
                w.bytes64(model);
            }
            Request::Run { digest, inputs } => {
                w.u8(RUN);
                w.array(&digest.0);
                put_tensors(&mut w, inputs);
            }
            Request::Unload { digest } => {
                w.u8(UNLOAD);
                w.array(&digest.0);
            }
        }
        write_frame(out, &w.into_bytes())
    }

    /// Decodes a request frame.
    pub(crate) fn decode(body: &'a [u8]) -> Result<Request<'a>, ProtocolError> {
        let mut r = Reader::new(body);
        let tag = r.u8("request")?;
        let digest = Digest(r.array("digest")?);
        let request = match tag {
            LOAD => Request::Load {
                digest,
                model: r.bytes64("model", u64::MAX)?,
            },
            RUN => Request::Run {
                digest,
                inputs: read_tensors(&mut r)?,
            },
            UNLOAD => Request::Unload { digest },
            tag => {
                return Err(DecodeError::invalid("request", format!("unknown tag {tag}")).into());
            }
        };
        r.finish()?;
        Ok(request)
    }
}

impl Reply {
    /// Sends the reply.
    pub(crate) fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let mut w = Writer::new();
        match self {
            Reply::Done(outputs) => {
                w.u8(DONE);
                put_tensors(&mut w, outputs);
            }
            Reply::Refused(text) => {
                w.u8(REFUSED);
                w.bytes64(text.as_bytes());
            }
        }
        write_frame(out, &w.into_bytes())
    }

    /// Decodes a reply frame.
    pub(crate) fn decode(body: &[u8]) -> Result<Reply, ProtocolError> {
        let mut r = Reader::new(body);
        let reply = match r.u8("reply")? {
            DONE => Reply::Done(read_tensors(&mut r)?),
            REFUSED => Reply::Refused(
                String::from_utf8_lossy(r.bytes64("refusal", u64::MAX)?).into_owned(),
            ),
            tag => return Err(DecodeError::invalid("reply", format!("unknown tag {tag}")).into()),
        };
        r.finish()?;
        Ok(reply)
    }
}

fn put_tensors(w: &mut Writer, tensors: &[NamedTensor]) {
    w.count16(tensors.len());
    for t in tensors {
        w.str16(&t.name);
        w.u8(type_code(t.tensor.ty));
        w.count8(t.tensor.dimensions.len());
        w.u32s(t.tensor.dimensions.iter().copied());
        w.bytes64(&t.tensor.data);
    }
}

/// Tensors as [`put_tensors`] writes them; every length is checked against
/// what is left of the frame before anything is allocated for it.
fn read_tensors(r: &mut Reader<'_>) -> Result<Vec<NamedTensor>, DecodeError> {
    // A tensor takes at least a name length, type, rank and data length.
    let count = r.count16("tensors", u16::MAX, 2 + 1 + 1 + 8)?;
    let mut tensors = Vec::with_capacity(count);
    for _ in 0..count {
        let name = r.str16("tensor name", u16::MAX)?.to_owned();
        let ty = match r.u8("element type")? {
            0 => TensorType::Fp32,
            1 => TensorType::I64,
            2 => TensorType::I32,
            3 => TensorType::U8,
            code => return Err(DecodeError::invalid("element type", format!("code {code}"))),
        };
        let rank = r.count8("rank", u8::MAX)?;
        let dimensions = r.u32s(rank, "dimension")?.collect();
        let data = r.bytes64("tensor data", u64::MAX)?.to_vec();
        tensors.push(NamedTensor {
            name,
            tensor: Tensor {
                dimensions,
                ty,
                data,
            },
        });
    }
    Ok(tensors)
}

fn type_code(ty: TensorType) -> u8 {
    match ty {
        TensorType::Fp32 => 0,
        TensorType::I64 => 1,
        TensorType::I32 => 2,
        TensorType::U8 => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, dims: Vec<u32>, data: Vec<u8>) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            tensor: Tensor {
                dimensions: dims,
                ty: TensorType::U8,
                data,
            },
        }
    }

    #[test]
    fn requests_and_replies_round_trip() {
        let requests = [
            Request::Load {
                digest: Digest([7; 32]),
                model: &[1, 2, 3],
            },
            Request::Run {
                digest: Digest([8; 32]),
                inputs: vec![
                    tensor("x", vec![1, 3], vec![4, 5, 6]),
                    tensor("é", vec![], vec![9]),
                ],
            },
            Request::Unload {
                digest: Digest([9; 32]),
            },
        ];
        for request in requests {
            let mut wire = Vec::new();
            request.write(&mut wire).unwrap();
            let body = read_frame(&mut wire.as_slice(), 1 << 20).unwrap();
            assert_eq!(Request::decode(&body).unwrap(), request);
        }
        for reply in [
            Reply::Done(vec![tensor("y", vec![2], vec![0, 1])]),
            Reply::Refused("no".into()),
        ] {
            let mut wire = Vec::new();
            reply.write(&mut wire).unwrap();
            let body = read_frame(&mut wire.as_slice(), 1 << 20).unwrap();
            assert_eq!(Reply::decode(&body).unwrap(), reply);
        }
    }

    #[test]
    fn frames_over_the_bound_and_malformed_bodies_are_refused() {
        let mut wire = Vec::new();
        Reply::Done(vec![tensor("y", vec![4], vec![0; 4])])
            .write(&mut wire)
            .unwrap();
        assert!(matches!(
            read_frame(&mut wire.as_slice(), 8),
            Err(ProtocolError::TooLarge(..))
        ));
        let body = read_frame(&mut wire.as_slice(), 1 << 20).unwrap();
        for cut in 0..body.len() {
            assert!(Reply::decode(&body[..cut]).is_err(), "{cut}");
        }
        let mut long = body.clone();
        long.push(0);
        assert!(Reply::decode(&long).is_err());
        // A data length far past the frame's end.
        let mut lying = body;
        let at = lying.len() - 4 - 8;
        lying[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Reply::decode(&lying).is_err());
    }
}

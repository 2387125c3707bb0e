//! What the host and its inference worker say to each other over the
//! worker's stdin and stdout: length-prefixed frames, little-endian.
//!
//! ```text
//! frame    = u64 length ‖ body
//! request  = 1 ‖ digest (32) ‖ bytes            load a model
//!          | 2 ‖ digest (32) ‖ tensors          run it
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
    Malformed(&'static str),
}

const LOAD: u8 = 1;
const RUN: u8 = 2;
const DONE: u8 = 0;
const REFUSED: u8 = 1;

/// Writes one frame holding `body`.
fn write_frame(out: &mut impl Write, body: &[u8]) -> io::Result<()> {
    out.write_all(&(body.len() as u64).to_le_bytes())?;
    out.write_all(body)?;
    out.flush()
}

/// Reads one frame of at most `max()` bytes; the bound is asked for once
/// the frame's length has arrived.
pub(crate) fn read_frame(
    input: &mut impl Read,
    max: impl FnOnce() -> u64,
) -> Result<Vec<u8>, ProtocolError> {
    let mut len = [0u8; 8];
    input.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    let max = max();
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
        let mut body = Vec::new();
        match self {
            Request::Load { digest, model } => {
                body.push(LOAD);
                body.extend_from_slice(&digest.0);
                put_bytes(&mut body, model);
            }
            Request::Run { digest, inputs } => {
                body.push(RUN);
                body.extend_from_slice(&digest.0);
                put_tensors(&mut body, inputs);
            }
        }
        write_frame(out, &body)
    }

    /// Decodes a request frame.
    pub(crate) fn decode(body: &'a [u8]) -> Result<Request<'a>, ProtocolError> {
        let mut r = Reader(body);
        let tag = r.u8()?;
        let digest = Digest(r.array()?);
        let request = match tag {
            LOAD => Request::Load {
                digest,
                model: r.bytes()?,
            },
            RUN => Request::Run {
                digest,
                inputs: r.tensors()?,
            },
            _ => return Err(ProtocolError::Malformed("unknown request")),
        };
        r.end()?;
        Ok(request)
    }
}

impl Reply {
    /// Sends the reply.
    pub(crate) fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let mut body = Vec::new();
        match self {
            Reply::Done(outputs) => {
                body.push(DONE);
                put_tensors(&mut body, outputs);
            }
            Reply::Refused(text) => {
                body.push(REFUSED);
                put_bytes(&mut body, text.as_bytes());
            }
        }
        write_frame(out, &body)
    }

    /// Decodes a reply frame.
    pub(crate) fn decode(body: &[u8]) -> Result<Reply, ProtocolError> {
        let mut r = Reader(body);
        let reply = match r.u8()? {
            DONE => Reply::Done(r.tensors()?),
            REFUSED => Reply::Refused(String::from_utf8_lossy(r.bytes()?).into_owned()),
            _ => return Err(ProtocolError::Malformed("unknown reply")),
        };
        r.end()?;
        Ok(reply)
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_tensors(out: &mut Vec<u8>, tensors: &[NamedTensor]) {
    out.extend_from_slice(&(tensors.len() as u16).to_le_bytes());
    for t in tensors {
        let name = t.name.as_bytes();
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out.push(type_code(t.tensor.ty));
        out.push(t.tensor.dimensions.len() as u8);
        for d in &t.tensor.dimensions {
            out.extend_from_slice(&d.to_le_bytes());
        }
        put_bytes(out, &t.tensor.data);
    }
}

fn type_code(ty: TensorType) -> u8 {
    match ty {
        TensorType::Fp32 => 0,
        TensorType::I64 => 1,
        TensorType::I32 => 2,
        TensorType::U8 => 3,
    }
}

/// A bounds-checked cursor over a frame; every length is checked against
/// what is left before anything is allocated for it.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if n > self.0.len() {
            return Err(ProtocolError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }

    fn bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let len = u64::from_le_bytes(self.array()?);
        self.take(usize::try_from(len).map_err(|_| ProtocolError::Malformed("length"))?)
    }

    fn tensors(&mut self) -> Result<Vec<NamedTensor>, ProtocolError> {
        let count = u16::from_le_bytes(self.array()?);
        let mut tensors = Vec::new();
        for _ in 0..count {
            let name_len = u16::from_le_bytes(self.array()?);
            let name = std::str::from_utf8(self.take(usize::from(name_len))?)
                .map_err(|_| ProtocolError::Malformed("name is not UTF-8"))?
                .to_owned();
            let ty = match self.u8()? {
                0 => TensorType::Fp32,
                1 => TensorType::I64,
                2 => TensorType::I32,
                3 => TensorType::U8,
                _ => return Err(ProtocolError::Malformed("element type")),
            };
            let rank = usize::from(self.u8()?);
            let dims = self.take(rank * 4)?;
            let dimensions = dims
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            let data = self.bytes()?.to_vec();
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

    fn end(&self) -> Result<(), ProtocolError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Malformed("trailing bytes"))
        }
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
        ];
        for request in requests {
            let mut wire = Vec::new();
            request.write(&mut wire).unwrap();
            let body = read_frame(&mut wire.as_slice(), || 1 << 20).unwrap();
            assert_eq!(Request::decode(&body).unwrap(), request);
        }
        for reply in [
            Reply::Done(vec![tensor("y", vec![2], vec![0, 1])]),
            Reply::Refused("no".into()),
        ] {
            let mut wire = Vec::new();
            reply.write(&mut wire).unwrap();
            let body = read_frame(&mut wire.as_slice(), || 1 << 20).unwrap();
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
            read_frame(&mut wire.as_slice(), || 8),
            Err(ProtocolError::TooLarge(..))
        ));
        let body = read_frame(&mut wire.as_slice(), || 1 << 20).unwrap();
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

//! A test encoder steered by its input: the first input of a batch is a
//! script saying what `embed` answers for the whole batch, so a fuzzer can make the guest hand
//! the host any output (vectors of any count, dimension and values, either
//! error, log calls) and check how the host classifies it.
//!
//! A script is a sequence of commands, each a tag byte and fixed-size
//! little-endian operands (bytes past the end read as zero, unknown tags
//! are skipped):
//!
//! | Tag | Operands | Effect |
//! |---|---|---|
//! | `v` | u16 dimension, u32 bits | appends a vector of `dimension % 1025` copies of `f32::from_bits(bits)` |
//! | `p` | u16 position, u32 bits | sets one value of the last vector (position modulo its length) |
//! | `l` | u8 level, u16 length | logs `length % 2049` bytes at `level % 5` |
//! | `e` | u16 length | answers the encoder's internal error, `length % 4097` bytes |
//! | `i` | u32 index, u16 length | answers invalid input `index`, the reason `length % 4097` bytes |
//!
//! At most [`MAX_VECTORS`] vectors are kept; the first error command ends
//! the script.

use soma_guest_sdk::log::{Level, log};
use soma_guest_sdk::{EncodeError, Encoder, EncoderInfo, Modality};

/// The dimension the encoder declares.
pub const DIMENSION: u32 = 8;

/// Largest input (script) the encoder declares it takes.
pub const MAX_INPUT_BYTES: u32 = 16 * 1024;

/// Vectors a script can append.
pub const MAX_VECTORS: usize = 64;

/// What a script makes `embed` do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Messages logged, in order: (level 0..=4, message).
    pub logs: Vec<(u8, String)>,
    /// What `embed` returns.
    pub answer: Answer,
}

/// What `embed` returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// These vectors.
    Vectors(Vec<Vec<f32>>),
    /// `encode-error::internal` with this message.
    Internal(String),
    /// `encode-error::invalid-input` blaming `index`.
    InvalidInput {
        /// The input blamed.
        index: u32,
        /// Why.
        reason: String,
    },
}

/// Message text of `len` bytes cycling through characters of one to four
/// bytes, so that the host's cutting has every kind of character boundary
/// to respect.
fn text(len: usize) -> String {
    let mut s = String::with_capacity(len);
    for c in ['é', 'a', '€', '😀'].into_iter().cycle() {
        if s.len() + c.len_utf8() > len {
            break;
        }
        s.push(c);
    }
    while s.len() < len {
        s.push('z');
    }
    s
}

struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }

    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
}

impl Plan {
    /// What `script` makes `embed` do.
    pub fn read(script: &[u8]) -> Plan {
        let mut s = Script(script);
        let mut logs = Vec::new();
        let mut vectors: Vec<Vec<f32>> = Vec::new();
        while !s.0.is_empty() {
            match s.u8() {
                b'v' => {
                    let dimension = usize::from(s.u16() % 1025);
                    let value = f32::from_bits(s.u32());
                    if vectors.len() < MAX_VECTORS {
                        vectors.push(vec![value; dimension]);
                    }
                }
                b'p' => {
                    let position = usize::from(s.u16());
                    let value = f32::from_bits(s.u32());
                    if let Some(last) = vectors.last_mut().filter(|v| !v.is_empty()) {
                        let len = last.len();
                        last[position % len] = value;
                    }
                }
                b'l' => {
                    let level = s.u8() % 5;
                    let len = usize::from(s.u16() % 2049);
                    logs.push((level, text(len)));
                }
                b'e' => {
                    let len = usize::from(s.u16() % 4097);
                    let answer = Answer::Internal(text(len));
                    return Plan { logs, answer };
                }
                b'i' => {
                    let index = s.u32();
                    let reason = text(usize::from(s.u16() % 4097));
                    let answer = Answer::InvalidInput { index, reason };
                    return Plan { logs, answer };
                }
                _ => {}
            }
        }
        Plan {
            logs,
            answer: Answer::Vectors(vectors),
        }
    }
}

/// The scripted encoder.
pub struct ScriptedEncoder;

impl Encoder for ScriptedEncoder {
    fn new() -> Self {
        ScriptedEncoder
    }

    fn info(&self) -> EncoderInfo {
        EncoderInfo {
            name: "scripted-encoder".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            dimension: DIMENSION,
            modality: Modality::Bytes,
            max_input_bytes: MAX_INPUT_BYTES,
        }
    }

    fn embed(&self, inputs: &[Vec<u8>]) -> Result<Vec<Vec<f32>>, EncodeError> {
        let plan = Plan::read(inputs.first().map_or(&[][..], Vec::as_slice));
        for (level, message) in &plan.logs {
            let level = match level {
                0 => Level::Trace,
                1 => Level::Debug,
                2 => Level::Info,
                3 => Level::Warn,
                _ => Level::Error,
            };
            log(level, message);
        }
        match plan.answer {
            Answer::Vectors(vectors) => Ok(vectors),
            Answer::Internal(message) => Err(EncodeError::Internal(message)),
            Answer::InvalidInput { index, reason } => {
                Err(EncodeError::invalid_input(index as usize, reason))
            }
        }
    }
}

soma_guest_sdk::export!(ScriptedEncoder);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_read_as_documented() {
        let mut script = vec![b'l', 7, 5, 0, b'v', 2, 0];
        script.extend(1.5f32.to_bits().to_le_bytes());
        script.extend([b'p', 3, 0]);
        script.extend((-2.0f32).to_bits().to_le_bytes());
        script.extend([b'?', b'e', 3]);
        let plan = Plan::read(&script);
        assert_eq!(plan.logs, vec![(2, "éazz".into())]);
        assert_eq!(plan.answer, Answer::Internal("éa".into()));
        script.truncate(script.len() - 2);
        assert_eq!(
            Plan::read(&script).answer,
            Answer::Vectors(vec![vec![1.5, -2.0]])
        );
    }
}

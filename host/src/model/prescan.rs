//! A first pass over a model's wire format, before it is parsed: parsing
//! allocates far more than the wire holds for some shapes of input (an empty
//! `NodeProto` is 2 bytes on the wire and hundreds in memory), so a few
//! megabytes could otherwise make the parser allocate gigabytes.

use super::AdmissionError;
use protobuf::reflect::{MessageDescriptor, RuntimeFieldType, RuntimeType};

/// Memory a parsed message costs beyond its wire bytes (a generous size of
/// the largest ONNX message struct).
const MESSAGE_COST: u64 = 512;
/// Memory each element of a repeated number costs (8 bytes, doubled for a
/// vector's spare capacity).
const ELEMENT_COST: u64 = 16;
/// Memory a string or byte field costs beyond its bytes.
const STRING_COST: u64 = 32;

/// Most memory parsing may cost beyond the wire bytes.
pub const MAX_PARSE_OVERHEAD: u64 = 256 << 20;

/// What parsing `bytes` as a `descriptor` message costs in memory beyond
/// the bytes themselves, or why the wire format is refused: a field the
/// schema does not know (ONNX Runtime's newer schema could read it), or
/// malformed, a group, a wrong wire type, nested deeper than `depth`, or too
/// costly to parse.
pub(super) fn parse_overhead(
    bytes: &[u8],
    descriptor: &MessageDescriptor,
    depth: u32,
) -> Result<u64, AdmissionError> {
    walk(bytes, descriptor, depth).map_err(|e| match e {
        Refusal::Unknown(path) => AdmissionError::UnknownField(path),
        Refusal::Malformed(why) => AdmissionError::Malformed(why),
    })
}

enum Refusal {
    Unknown(String),
    Malformed(String),
}

impl From<String> for Refusal {
    fn from(why: String) -> Self {
        Refusal::Malformed(why)
    }
}

impl From<&str> for Refusal {
    fn from(why: &str) -> Self {
        Refusal::Malformed(why.into())
    }
}

fn walk(bytes: &[u8], descriptor: &MessageDescriptor, depth: u32) -> Result<u64, Refusal> {
    if depth == 0 {
        return Err("messages are nested too deeply".into());
    }
    let mut cost = MESSAGE_COST;
    let mut r = bytes;
    while !r.is_empty() {
        let key = varint(&mut r)?;
        let (number, wire) = (key >> 3, key & 7);
        // The parser would keep unknown fields, or known ones on the wrong
        // wire type, in a map costing far more than their bytes.
        let field = u32::try_from(number)
            .ok()
            .and_then(|n| descriptor.field_by_number(n))
            .ok_or_else(|| Refusal::Unknown(format!("{} field {number}", descriptor.name())))?;
        let (ty, repeated) = match field.runtime_field_type() {
            RuntimeFieldType::Singular(ty) => (ty, false),
            RuntimeFieldType::Repeated(ty) => (ty, true),
            RuntimeFieldType::Map(..) => return Err("map fields are not admitted".into()),
        };
        let scalar = scalar_wire(&ty);
        match (wire, &ty) {
            (2, RuntimeType::Message(inner)) => {
                let body = length_delimited(&mut r)?;
                cost = cost.saturating_add(walk(body, inner, depth - 1)?);
            }
            (2, RuntimeType::String | RuntimeType::VecU8) => {
                length_delimited(&mut r)?;
                cost += STRING_COST;
            }
            // Packed numbers: at least a byte each.
            (2, _) if repeated && scalar.is_some() => {
                let body = length_delimited(&mut r)?;
                cost = cost.saturating_add(body.len() as u64 * ELEMENT_COST);
            }
            (0, _) if scalar == Some(0) => drop(varint(&mut r)?),
            (1, _) if scalar == Some(1) => drop(take(&mut r, 8)?),
            (5, _) if scalar == Some(5) => drop(take(&mut r, 4)?),
            _ => {
                let why = format!(
                    "field {number} of {} has the wrong wire type",
                    descriptor.name()
                );
                return Err(Refusal::Malformed(why));
            }
        }
        if repeated && wire != 2 {
            cost += ELEMENT_COST;
        }
        if cost > MAX_PARSE_OVERHEAD {
            let why = format!(
                "parsing would take more than {MAX_PARSE_OVERHEAD} bytes beyond the model's own"
            );
            return Err(Refusal::Malformed(why));
        }
    }
    Ok(cost)
}

/// The wire type of a number type; `None` for strings, bytes, messages.
fn scalar_wire(ty: &RuntimeType) -> Option<u64> {
    match ty {
        RuntimeType::I32
        | RuntimeType::I64
        | RuntimeType::U32
        | RuntimeType::U64
        | RuntimeType::Bool
        | RuntimeType::Enum(_) => Some(0),
        RuntimeType::F64 => Some(1),
        RuntimeType::F32 => Some(5),
        _ => None,
    }
}

fn length_delimited<'a>(r: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let len = usize::try_from(varint(r)?).map_err(|_| "length")?;
    take(r, len)
}

fn varint(r: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = r.split_first().ok_or("truncated")?;
        *r = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if n > r.len() {
        return Err("truncated".into());
    }
    let (head, rest) = r.split_at(n);
    *r = rest;
    Ok(head)
}

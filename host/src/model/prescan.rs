//! A first pass over a model's wire format, before it is parsed: parsing
//! allocates far more than the wire holds for some shapes of input (an empty
//! `NodeProto` is 2 bytes on the wire and hundreds in memory), so a few
//! megabytes could otherwise make the parser allocate gigabytes.

use protobuf::reflect::{MessageDescriptor, RuntimeFieldType, RuntimeType};

/// Memory a parsed message costs beyond its wire bytes (a generous size of
/// the largest ONNX message struct).
const MESSAGE_COST: u64 = 512;
/// Memory each element of a repeated number costs.
const ELEMENT_COST: u64 = 8;
/// Memory a string or byte field costs beyond its bytes.
const STRING_COST: u64 = 32;

/// Most memory parsing may cost beyond the wire bytes.
pub const MAX_PARSE_OVERHEAD: u64 = 256 << 20;

/// What parsing `bytes` as a `descriptor` message costs in memory beyond
/// the bytes themselves, or why the wire format is refused (malformed,
/// groups, nested deeper than `depth` allows, or too costly).
pub(super) fn parse_overhead(
    bytes: &[u8],
    descriptor: &MessageDescriptor,
    depth: u32,
) -> Result<u64, String> {
    if depth == 0 {
        return Err("messages are nested too deeply".into());
    }
    let mut cost = MESSAGE_COST;
    let mut r = bytes;
    while !r.is_empty() {
        let key = varint(&mut r)?;
        let field = u32::try_from(key >> 3)
            .ok()
            .and_then(|n| descriptor.field_by_number(n));
        let kind = field.map(|f| f.runtime_field_type());
        let repeated = matches!(kind, Some(RuntimeFieldType::Repeated(_)));
        match key & 7 {
            0 => {
                varint(&mut r)?;
            }
            1 => drop(take(&mut r, 8)?),
            5 => drop(take(&mut r, 4)?),
            2 => {
                let len = usize::try_from(varint(&mut r)?).map_err(|_| "length")?;
                let body = take(&mut r, len)?;
                cost = cost.saturating_add(match kind {
                    Some(
                        RuntimeFieldType::Singular(RuntimeType::Message(inner))
                        | RuntimeFieldType::Repeated(RuntimeType::Message(inner)),
                    ) => parse_overhead(body, &inner, depth - 1)?,
                    Some(RuntimeFieldType::Repeated(RuntimeType::String | RuntimeType::VecU8)) => {
                        STRING_COST
                    }
                    // Packed numbers: at least a byte each.
                    Some(RuntimeFieldType::Repeated(_)) => body.len() as u64 * ELEMENT_COST,
                    _ => STRING_COST,
                });
            }
            _ => return Err("groups and unknown wire types are not admitted".into()),
        }
        if repeated && key & 7 != 2 {
            cost += ELEMENT_COST;
        }
        if cost > MAX_PARSE_OVERHEAD {
            return Err(format!(
                "parsing would take more than {MAX_PARSE_OVERHEAD} bytes beyond the model's own"
            ));
        }
    }
    Ok(cost)
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

//! The operators a model may use, each with its shape rule and its cost.
//!
//! The list is an allow-list: an operator is admitted only if the host can
//! say, from the input shapes alone, what shape it produces and how much
//! work it does. That excludes control flow (`Loop`, `If`, `Scan`: work set
//! by data), random operators (results differ per run), and operators
//! whose output shape depends on float data (`NonZero`, `TopK` with a
//! computed `k`, `Resize` with computed scales).
//!
//! Shapes often flow through small integer subgraphs (`Shape → Gather →
//! Concat → Reshape`), so the rules also compute the *values* of small
//! integer tensors; a rule that needs a value it cannot know (a `Reshape`
//! whose target shape comes from float data) is an error.

use super::graph::{ElemType, Node, TensorInfo, elements};
use std::sync::Arc;

/// Integer tensors with at most this many elements have their values
/// tracked: enough for shapes, axes, indices and position ranges.
pub(crate) const KNOWN_VALUES: u64 = 4096;

/// Work of dispatching one kernel, in work units: the floor under tiny ops.
pub(crate) const NODE_WORK: u64 = 2_048;

/// Most inputs of a variadic elementwise operator (`Sum`, `Max`, ...):
/// each costs a pass over the output.
pub(crate) const MAX_VARIADIC_INPUTS: usize = 64;

macro_rules! ops {
    ($($op:ident),* $(,)?) => {
        /// An admitted ONNX operator (default domain, opset 13 to 21).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Op { $($op),* }

        impl Op {
            /// The operator of ONNX type name `name`, if admitted.
            pub(crate) fn from_name(name: &str) -> Option<Op> {
                match name {
                    $(stringify!($op) => Some(Op::$op),)*
                    _ => None,
                }
            }

            /// The ONNX type name.
            pub(crate) fn name(self) -> &'static str {
                match self { $(Op::$op => stringify!($op)),* }
            }
        }
    };
}

ops! {
    // Elementwise, one input.
    Abs, Neg, Ceil, Floor, Round, Sign, Relu, Identity, Not,
    Sqrt, Reciprocal, Exp, Log, Erf, Tanh, Sigmoid, Sin, Cos, Softplus,
    Elu, Selu, LeakyRelu, HardSigmoid, HardSwish, Gelu,
    IsNaN, IsInf, Cast, Clip,
    // Elementwise, broadcasting.
    Add, Sub, Mul, Div, Pow, Mod, Max, Min, Sum, Mean,
    Equal, Less, Greater, LessOrEqual, GreaterOrEqual, And, Or, Xor, Where,
    // Shapes and data movement.
    Shape, Size, Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Split,
    Slice, Gather, GatherElements, GatherND, Expand, Tile, Pad,
    Constant, ConstantOfShape, Range,
    // Reductions and normalisations.
    ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd, ReduceL2,
    ArgMax, ArgMin, Softmax, LogSoftmax, LayerNormalization, BatchNormalization,
    // Linear algebra and quantisation.
    MatMul, Gemm, MatMulInteger, QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
}

/// Why a rule cannot give a node's outputs.
pub(crate) type RuleError = String;

type Inputs<'a> = [Option<&'a TensorInfo>];

impl Op {
    /// The node's outputs (type, dimensions, and values where known) from
    /// its inputs'.
    pub(crate) fn infer(self, node: &Node, inputs: &Inputs) -> Result<Vec<TensorInfo>, RuleError> {
        use Op::*;
        let x = || required(inputs, 0);
        Ok(match self {
            Abs | Neg | Identity | Not | Sign | Relu => {
                let x = x()?;
                vec![unary(x, x.ty, |v| match self {
                    Abs => v.checked_abs(),
                    Neg => v.checked_neg(),
                    Identity => Some(v),
                    Not => Some(i64::from(v == 0)),
                    Sign => Some(v.signum()),
                    _ => Some(v.max(0)),
                })]
            }
            Ceil | Floor | Round | Sqrt | Reciprocal | Exp | Log | Erf | Tanh | Sigmoid | Sin
            | Cos | Softplus | Elu | Selu | LeakyRelu | HardSigmoid | HardSwish | Gelu | Clip => {
                vec![TensorInfo::of(x()?.ty, x()?.dims.clone())]
            }
            IsNaN | IsInf => vec![TensorInfo::of(ElemType::Bool, x()?.dims.clone())],
            Cast => {
                let to = node
                    .int("to")
                    .and_then(|t| i32::try_from(t).ok())
                    .and_then(ElemType::from_onnx)
                    .ok_or("`to` names a type models may not use")?;
                let x = x()?;
                if x.ty == ElemType::F32 {
                    vec![TensorInfo::of(to, x.dims.clone())]
                } else {
                    vec![unary(x, to, |v| Some(wrap(v, to)))]
                }
            }
            Add | Sub | Mul | Div | Mod | Max | Min | Sum => {
                if matches!(self, Div | Mod) && x()?.ty.is_integer() {
                    // An integer division by zero, or of the minimum by -1,
                    // is a CPU fault that kills the process running it.
                    let divisor = values(inputs, 1, "B")?;
                    if divisor.iter().any(|&d| d == 0 || (self == Div && d == -1)) {
                        return Err("an integer divisor may be 0 or -1".into());
                    }
                }
                let fmod = node.int("fmod").unwrap_or(0) != 0;
                vec![broadcast_op(inputs, None, |a, b| match self {
                    Add | Sum => a.checked_add(b),
                    Sub => a.checked_sub(b),
                    Mul => a.checked_mul(b),
                    Div => a.checked_div(b),
                    Mod if fmod => a.checked_rem(b),
                    Mod => a.checked_rem_euclid(b).map(|r| {
                        // ONNX integer Mod takes the divisor's sign.
                        if r != 0 && b < 0 { r + b } else { r }
                    }),
                    Max => Some(a.max(b)),
                    _ => Some(a.min(b)),
                })?]
            }
            Pow | Mean => vec![broadcast_op(inputs, None, |_, _| None)?],
            Equal | Less | Greater | LessOrEqual | GreaterOrEqual | And | Or | Xor => {
                vec![broadcast_op(inputs, Some(ElemType::Bool), |a, b| {
                    Some(i64::from(match self {
                        Equal => a == b,
                        Less => a < b,
                        Greater => a > b,
                        LessOrEqual => a <= b,
                        GreaterOrEqual => a >= b,
                        And => a != 0 && b != 0,
                        Or => a != 0 || b != 0,
                        _ => (a != 0) != (b != 0),
                    }))
                })?]
            }
            Where => vec![where_op(inputs)?],
            Shape => vec![shape_op(node, x()?)],
            Size => {
                let n = i64::try_from(x()?.elements()).map_err(|_| "too many elements")?;
                vec![known(ElemType::I64, vec![], vec![n])]
            }
            Reshape => vec![reshape(node, x()?, values(inputs, 1, "shape")?)?],
            Flatten => {
                let x = x()?;
                let axis = axis_in(node.int("axis").unwrap_or(1), x.dims.len() + 1)?;
                let dims = vec![elements(&x.dims[..axis]), elements(&x.dims[axis..])];
                vec![same_values(x, dims)]
            }
            Squeeze => vec![squeeze(x()?, optional_values(inputs, 1, "axes")?)?],
            Unsqueeze => vec![unsqueeze(x()?, values(inputs, 1, "axes")?)?],
            Transpose => vec![transpose(node, x()?)?],
            Concat => vec![concat(node, inputs)?],
            Split => split(node, inputs)?,
            Slice => vec![slice(inputs)?],
            Gather => vec![gather(node, inputs)?],
            GatherElements => {
                let (x, indices) = (x()?, required(inputs, 1)?);
                if indices.dims.len() != x.dims.len() {
                    return Err("indices must have the rank of the data".into());
                }
                axis_in(node.int("axis").unwrap_or(0), x.dims.len())?;
                vec![TensorInfo::of(x.ty, indices.dims.clone())]
            }
            GatherND => vec![gather_nd(node, inputs)?],
            Expand => {
                let x = x()?;
                let shape = dims_from(values(inputs, 1, "shape")?)?;
                let dims = broadcast(&x.dims, &shape)?;
                vec![broadcast_values(&[x], x.ty, dims, |v| Some(v[0]))]
            }
            Tile => {
                let x = x()?;
                let repeats = dims_from(values(inputs, 1, "repeats")?)?;
                if repeats.len() != x.dims.len() {
                    return Err("`repeats` must have one entry per dimension".into());
                }
                let dims = x
                    .dims
                    .iter()
                    .zip(&repeats)
                    .map(|(d, r)| d.saturating_mul(*r))
                    .collect();
                vec![TensorInfo::of(x.ty, dims)]
            }
            Pad => vec![pad(node, inputs)?],
            Constant => vec![constant(node)?],
            ConstantOfShape => {
                let dims = dims_from(values(inputs, 0, "shape")?)?;
                let (ty, value) = match node.tensor("value") {
                    Some(t) if t.elements() == 1 => (t.ty, t.values.as_ref().map(|v| v[0])),
                    Some(_) => return Err("`value` must have one element".into()),
                    None => (ElemType::F32, None),
                };
                let n = elements(&dims);
                vec![match value {
                    Some(v) if n <= KNOWN_VALUES => known(ty, dims, vec![v; n as usize]),
                    _ => TensorInfo::of(ty, dims),
                }]
            }
            Range => vec![range(inputs)?],
            ReduceSum | ReduceMean | ReduceMax | ReduceMin | ReduceProd | ReduceL2 => {
                let x = x()?;
                let axes = match optional_values(inputs, 1, "axes")? {
                    Some(axes) => Some(axes.to_vec()),
                    None => node.ints("axes").map(<[i64]>::to_vec),
                };
                vec![reduce(node, x, axes.as_deref(), x.ty)?]
            }
            ArgMax | ArgMin => {
                let x = x()?;
                let axis = node.int("axis").unwrap_or(0);
                vec![reduce(node, x, Some(&[axis]), ElemType::I64)?]
            }
            Softmax | LogSoftmax => {
                let x = x()?;
                axis_in(node.int("axis").unwrap_or(-1), x.dims.len())?;
                vec![TensorInfo::of(x.ty, x.dims.clone())]
            }
            LayerNormalization => {
                let x = x()?;
                let axis = axis_in(node.int("axis").unwrap_or(-1), x.dims.len())?;
                let mut stats = x.dims.clone();
                stats[axis..].fill(1);
                let mut out = vec![TensorInfo::of(x.ty, x.dims.clone())];
                out.extend(
                    (1..node.outputs.len()).map(|_| TensorInfo::of(ElemType::F32, stats.clone())),
                );
                out
            }
            BatchNormalization => {
                if node.int("training_mode").unwrap_or(0) != 0 || node.outputs.len() != 1 {
                    return Err("only inference mode (one output) is supported".into());
                }
                vec![TensorInfo::of(x()?.ty, x()?.dims.clone())]
            }
            MatMul => vec![matmul(inputs, None)?],
            MatMulInteger => vec![matmul(inputs, Some(ElemType::I32))?],
            Gemm => vec![gemm(node, inputs)?],
            QuantizeLinear => {
                let ty = inputs
                    .get(2)
                    .copied()
                    .flatten()
                    .map_or(ElemType::U8, |z| z.ty);
                vec![TensorInfo::of(ty, x()?.dims.clone())]
            }
            DequantizeLinear => vec![TensorInfo::of(ElemType::F32, x()?.dims.clone())],
            DynamicQuantizeLinear => vec![
                TensorInfo::of(ElemType::U8, x()?.dims.clone()),
                TensorInfo::of(ElemType::F32, vec![]),
                TensorInfo::of(ElemType::U8, vec![]),
            ],
        })
    }

    /// Work units of the node: multiply-adds for products, and for the rest
    /// the elements produced (read, for reductions), weighted by what a
    /// kernel does per element.
    pub(crate) fn work(self, node: &Node, inputs: &Inputs, outputs: &[TensorInfo]) -> u64 {
        use Op::*;
        let produced: u64 = outputs.iter().map(TensorInfo::elements).sum();
        let read = inputs
            .first()
            .copied()
            .flatten()
            .map_or(0, TensorInfo::elements);
        let passes = inputs.iter().flatten().count().saturating_sub(1).max(1) as u64;
        let body = match self {
            Shape | Size | Constant => 0,
            // Often free, but a copy when ONNX Runtime folds them.
            Identity | Reshape | Flatten | Squeeze | Unsqueeze => produced,
            MatMul | MatMulInteger => product_work(inputs, outputs, false),
            Gemm => product_work(inputs, outputs, node.int("transA").unwrap_or(0) != 0),
            ReduceSum | ReduceMean | ReduceMax | ReduceMin | ReduceProd | ReduceL2 | ArgMax
            | ArgMin => read.saturating_mul(16),
            Sqrt | Reciprocal | Exp | Log | Erf | Tanh | Sigmoid | Sin | Cos | Softplus | Elu
            | Selu | Gelu | Pow => produced.saturating_mul(48),
            Softmax | LogSoftmax | LayerNormalization | DynamicQuantizeLinear => {
                produced.saturating_mul(64)
            }
            Sum | Mean | Max | Min => produced.saturating_mul(16).saturating_mul(passes),
            _ => produced.saturating_mul(16),
        };
        NODE_WORK.saturating_add(body)
    }
}

/// Work of a product: a multiply-add per output element and inner index
/// (the first input's last dimension, or first if transposed), plus reading
/// the operands, which dominates for few rows (a weight matrix is read
/// whole however many tokens it multiplies).
fn product_work(inputs: &Inputs, outputs: &[TensorInfo], transposed: bool) -> u64 {
    let dims = inputs
        .first()
        .copied()
        .flatten()
        .map_or(&[][..], |a| a.dims.as_slice());
    let inner = if transposed {
        dims.first()
    } else {
        dims.last()
    };
    let out = outputs.first().map_or(0, TensorInfo::elements);
    let read: u64 = inputs.iter().flatten().take(2).map(|t| t.elements()).sum();
    out.saturating_mul(inner.copied().unwrap_or(1).max(1))
        .saturating_add(out.saturating_mul(16))
        .saturating_add(read.saturating_mul(16))
}

fn required<'a>(inputs: &Inputs<'a>, i: usize) -> Result<&'a TensorInfo, RuleError> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| format!("input {i} is required"))
}

/// The values of input `i`, which the rule needs to know.
fn values<'a>(inputs: &Inputs<'a>, i: usize, what: &str) -> Result<&'a [i64], RuleError> {
    optional_values(inputs, i, what)?.ok_or_else(|| format!("input `{what}` is required"))
}

fn optional_values<'a>(
    inputs: &Inputs<'a>,
    i: usize,
    what: &str,
) -> Result<Option<&'a [i64]>, RuleError> {
    match inputs.get(i).copied().flatten() {
        None => Ok(None),
        Some(t) => t.values.as_deref().map(Some).ok_or_else(|| {
            format!(
                "`{what}` must be computable from input shapes and constants, not from model data"
            )
        }),
    }
}

fn dims_from(values: &[i64]) -> Result<Vec<u64>, RuleError> {
    values
        .iter()
        .map(|&v| u64::try_from(v).map_err(|_| format!("negative dimension {v}")))
        .collect()
}

/// `axis` (negative counts from the end) as an index below `rank`.
pub(crate) fn axis_in(axis: i64, rank: usize) -> Result<usize, RuleError> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

/// A tensor whose values are known, if they are few enough to track;
/// integers wrap to `ty` as its kernels would.
fn known(ty: ElemType, dims: Vec<u64>, values: Vec<i64>) -> TensorInfo {
    let values = (values.len() as u64 <= KNOWN_VALUES)
        .then(|| values.into_iter().map(|v| wrap(v, ty)).collect());
    TensorInfo { ty, dims, values }
}

/// `x` reshaped to `dims`, values (if known) unchanged.
fn same_values(x: &TensorInfo, dims: Vec<u64>) -> TensorInfo {
    TensorInfo {
        ty: x.ty,
        dims,
        values: x.values.clone(),
    }
}

fn unary(x: &TensorInfo, ty: ElemType, f: impl Fn(i64) -> Option<i64>) -> TensorInfo {
    let values = x
        .values
        .as_ref()
        .filter(|_| ty.is_integer())
        .and_then(|v| v.iter().map(|&v| f(v).map(|v| wrap(v, ty))).collect());
    TensorInfo {
        ty,
        dims: x.dims.clone(),
        values,
    }
}

/// `v` converted to integer type `to` as a cast does (two's complement
/// wrap; bool is "not zero").
pub(crate) fn wrap(v: i64, to: ElemType) -> i64 {
    match to {
        ElemType::Bool => i64::from(v != 0),
        ElemType::U8 => i64::from(v as u8),
        ElemType::I8 => i64::from(v as i8),
        ElemType::I32 => i64::from(v as i32),
        _ => v,
    }
}

/// Numpy broadcasting of two shapes.
fn broadcast(a: &[u64], b: &[u64]) -> Result<Vec<u64>, RuleError> {
    let rank = a.len().max(b.len());
    let at = |s: &[u64], i: usize| (i + s.len()).checked_sub(rank).map_or(1, |j| s[j]);
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            (x, y) => Err(format!(
                "shapes {a:?} and {b:?} do not broadcast ({x} vs {y})"
            )),
        })
        .collect()
}

/// The row-major offset in a tensor of `dims` of the element that output
/// index `index` (of an output of `out_dims`) broadcasts from.
fn broadcast_offset(index: &[u64], out_dims: &[u64], dims: &[u64]) -> usize {
    let skip = out_dims.len() - dims.len();
    dims.iter().enumerate().fold(0u64, |offset, (j, &d)| {
        let i = if d == 1 { 0 } else { index[skip + j] };
        offset * d + i
    }) as usize
}

/// Calls `f` with every multi-index of `dims`, in row-major order.
fn for_each_index(dims: &[u64], mut f: impl FnMut(&[u64])) {
    let mut index = vec![0u64; dims.len()];
    for _ in 0..elements(dims) {
        f(&index);
        for j in (0..dims.len()).rev() {
            index[j] += 1;
            if index[j] < dims[j] {
                break;
            }
            index[j] = 0;
        }
    }
}

/// An output of `dims` whose element at each index is `f` of the
/// broadcast input elements, computed when every input is known.
fn broadcast_values(
    inputs: &[&TensorInfo],
    ty: ElemType,
    dims: Vec<u64>,
    f: impl Fn(&[i64]) -> Option<i64>,
) -> TensorInfo {
    let computable = ty.is_integer()
        && elements(&dims) <= KNOWN_VALUES
        && inputs.iter().all(|t| t.values.is_some());
    let values = computable.then(|| {
        let mut out = Vec::with_capacity(elements(&dims) as usize);
        let mut ok = true;
        for_each_index(&dims, |index| {
            let args: Vec<i64> = inputs
                .iter()
                .map(|t| {
                    t.values.as_ref().expect("checked")[broadcast_offset(index, &dims, &t.dims)]
                })
                .collect();
            match f(&args) {
                Some(v) => out.push(wrap(v, ty)),
                None => ok = false,
            }
        });
        ok.then(|| Arc::from(out))
    });
    TensorInfo {
        ty,
        dims,
        values: values.flatten(),
    }
}

/// A variadic broadcasting op folding `f` over its inputs; the result has
/// type `ty`, or the first input's.
fn broadcast_op(
    inputs: &Inputs,
    ty: Option<ElemType>,
    f: impl Fn(i64, i64) -> Option<i64>,
) -> Result<TensorInfo, RuleError> {
    let given: Vec<&TensorInfo> = inputs.iter().copied().flatten().collect();
    let first = given.first().ok_or("at least one input is required")?;
    if given.len() > MAX_VARIADIC_INPUTS {
        return Err(format!("more than {MAX_VARIADIC_INPUTS} inputs"));
    }
    if given.iter().any(|t| t.ty != first.ty) {
        return Err("inputs must have one element type".into());
    }
    let dims = given
        .iter()
        .try_fold(Vec::new(), |dims, t| broadcast(&dims, &t.dims))?;
    let ty = ty.unwrap_or(first.ty);
    Ok(broadcast_values(&given, ty, dims, |args| {
        args[1..].iter().try_fold(args[0], |a, &b| f(a, b))
    }))
}

fn where_op(inputs: &Inputs) -> Result<TensorInfo, RuleError> {
    let (c, x, y) = (
        required(inputs, 0)?,
        required(inputs, 1)?,
        required(inputs, 2)?,
    );
    if x.ty != y.ty {
        return Err("`X` and `Y` must have one element type".into());
    }
    let dims = broadcast(&broadcast(&c.dims, &x.dims)?, &y.dims)?;
    Ok(broadcast_values(&[c, x, y], x.ty, dims, |v| {
        Some(if v[0] != 0 { v[1] } else { v[2] })
    }))
}

fn shape_op(node: &Node, x: &TensorInfo) -> TensorInfo {
    let rank = x.dims.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
    let start = clamp(node.int("start").unwrap_or(0));
    let end = clamp(node.int("end").unwrap_or(rank)).max(start);
    let values: Vec<i64> = x.dims[start..end].iter().map(|&d| d as i64).collect();
    known(ElemType::I64, vec![values.len() as u64], values)
}

fn reshape(node: &Node, x: &TensorInfo, shape: &[i64]) -> Result<TensorInfo, RuleError> {
    let allow_zero = node.int("allowzero").unwrap_or(0) != 0;
    let mut dims = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        dims.push(match s {
            -1 if infer.is_none() => {
                infer = Some(i);
                1
            }
            0 if !allow_zero => *x
                .dims
                .get(i)
                .ok_or("0 copies a dimension the input lacks")?,
            s if s >= 0 => s as u64,
            _ => return Err(format!("invalid target shape {shape:?}")),
        });
    }
    let total = x.elements();
    let rest = elements(&dims);
    if let Some(i) = infer {
        if rest == 0 || !total.is_multiple_of(rest) {
            return Err(format!("cannot reshape {:?} to {shape:?}", x.dims));
        }
        dims[i] = total / rest;
    }
    if elements(&dims) != total {
        return Err(format!("cannot reshape {:?} to {shape:?}", x.dims));
    }
    Ok(same_values(x, dims))
}

/// Normalised, distinct axes for a tensor of `rank`, in the order given
/// (`Slice` and `Pad` pair them with other lists by position).
fn axes_in(axes: &[i64], rank: usize) -> Result<Vec<usize>, RuleError> {
    let out: Vec<usize> = axes
        .iter()
        .map(|&a| axis_in(a, rank))
        .collect::<Result<_, _>>()?;
    let mut sorted = out.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("repeated axis in {axes:?}"));
    }
    Ok(out)
}

fn squeeze(x: &TensorInfo, axes: Option<&[i64]>) -> Result<TensorInfo, RuleError> {
    let axes = match axes {
        Some(axes) => axes_in(axes, x.dims.len())?,
        None => (0..x.dims.len()).filter(|&i| x.dims[i] == 1).collect(),
    };
    if axes.iter().any(|&a| x.dims[a] != 1) {
        return Err(format!(
            "cannot squeeze a dimension other than 1 in {:?}",
            x.dims
        ));
    }
    let dims = (0..x.dims.len())
        .filter(|i| !axes.contains(i))
        .map(|i| x.dims[i])
        .collect();
    Ok(same_values(x, dims))
}

fn unsqueeze(x: &TensorInfo, axes: &[i64]) -> Result<TensorInfo, RuleError> {
    let rank = x.dims.len() + axes.len();
    let axes = axes_in(axes, rank)?;
    let mut rest = x.dims.iter();
    let dims = (0..rank)
        .map(|i| {
            if axes.contains(&i) {
                1
            } else {
                *rest.next().expect("rank adds up")
            }
        })
        .collect();
    Ok(same_values(x, dims))
}

fn transpose(node: &Node, x: &TensorInfo) -> Result<TensorInfo, RuleError> {
    let rank = x.dims.len();
    let perm: Vec<usize> = match node.ints("perm") {
        Some(perm) => perm
            .iter()
            .map(|&p| axis_in(p, rank))
            .collect::<Result<_, _>>()?,
        None => (0..rank).rev().collect(),
    };
    let mut seen = perm.clone();
    seen.sort_unstable();
    if seen != (0..rank).collect::<Vec<_>>() {
        return Err(format!("`perm` is not a permutation of 0..{rank}"));
    }
    Ok(TensorInfo::of(
        x.ty,
        perm.iter().map(|&p| x.dims[p]).collect(),
    ))
}

fn concat(node: &Node, inputs: &Inputs) -> Result<TensorInfo, RuleError> {
    let given: Vec<&TensorInfo> = inputs.iter().copied().flatten().collect();
    let first = given.first().ok_or("at least one input is required")?;
    let rank = first.dims.len();
    let axis = axis_in(node.int("axis").ok_or("`axis` is required")?, rank)?;
    let mut dims = first.dims.clone();
    dims[axis] = 0;
    for t in &given {
        let same_rest =
            t.dims.len() == rank && (0..rank).all(|i| i == axis || t.dims[i] == first.dims[i]);
        if t.ty != first.ty || !same_rest {
            return Err("inputs differ in type, rank or a dimension other than `axis`".into());
        }
        dims[axis] = dims[axis].saturating_add(t.dims[axis]);
    }
    let contiguous = axis == 0 || given.iter().all(|t| elements(&t.dims[..axis]) == 1);
    let values = (contiguous && elements(&dims) <= KNOWN_VALUES)
        .then(|| {
            given
                .iter()
                .map(|t| t.values.as_deref())
                .collect::<Option<Vec<_>>>()
                .map(|parts| Arc::from(parts.concat()))
        })
        .flatten();
    Ok(TensorInfo {
        ty: first.ty,
        dims,
        values,
    })
}

fn split(node: &Node, inputs: &Inputs) -> Result<Vec<TensorInfo>, RuleError> {
    let x = required(inputs, 0)?;
    let axis = axis_in(node.int("axis").unwrap_or(0), x.dims.len())?;
    let parts = node.outputs.len() as u64;
    let sizes = match optional_values(inputs, 1, "split")? {
        Some(split) => dims_from(split)?,
        None => {
            let d = x.dims[axis];
            let chunk = d.div_ceil(parts.max(1));
            (0..parts)
                .map(|i| chunk.min(d.saturating_sub(i * chunk)))
                .collect()
        }
    };
    let total = sizes.iter().fold(0u64, |a, &b| a.saturating_add(b));
    if sizes.len() as u64 != parts || total != x.dims[axis] {
        return Err("split sizes do not add up to the dimension".into());
    }
    Ok(sizes
        .into_iter()
        .map(|s| {
            let mut dims = x.dims.clone();
            dims[axis] = s;
            TensorInfo::of(x.ty, dims)
        })
        .collect())
}

fn slice(inputs: &Inputs) -> Result<TensorInfo, RuleError> {
    let x = required(inputs, 0)?;
    let starts = values(inputs, 1, "starts")?;
    let ends = values(inputs, 2, "ends")?;
    let rank = x.dims.len();
    let axes = match optional_values(inputs, 3, "axes")? {
        Some(axes) => axes_in(axes, rank)?,
        None => (0..starts.len()).collect(),
    };
    let steps = optional_values(inputs, 4, "steps")?;
    if starts.len() != axes.len()
        || ends.len() != axes.len()
        || steps.is_some_and(|s| s.len() != axes.len())
    {
        return Err("`starts`, `ends`, `axes` and `steps` differ in length".into());
    }
    // Per axis: first index and step (in i128: ends are often i64::MAX).
    let mut first = vec![0i128; rank];
    let mut step = vec![1i128; rank];
    let mut dims = x.dims.clone();
    for (k, &axis) in axes.iter().enumerate() {
        let d = i128::from(x.dims[axis]);
        let s = i128::from(steps.map_or(1, |s| s[k]));
        if s == 0 {
            return Err("a step is 0".into());
        }
        let at = |v: i64| {
            let v = i128::from(v);
            if v < 0 { v + d } else { v }
        };
        let (start, end) = if d == 0 {
            (0, 0)
        } else if s > 0 {
            (at(starts[k]).clamp(0, d), at(ends[k]).clamp(0, d))
        } else {
            (at(starts[k]).clamp(0, d - 1), at(ends[k]).clamp(-1, d - 1))
        };
        let len = if s > 0 {
            (end - start + s - 1) / s
        } else {
            (start - end + (-s) - 1) / (-s)
        };
        dims[axis] = len.max(0) as u64;
        first[axis] = start;
        step[axis] = s;
    }
    let values = x
        .values
        .as_ref()
        .filter(|_| elements(&dims) <= KNOWN_VALUES)
        .map(|v| {
            let mut out = Vec::new();
            for_each_index(&dims, |index| {
                let offset = (0..rank).fold(0i128, |o, j| {
                    o * i128::from(x.dims[j]) + first[j] + i128::from(index[j]) * step[j]
                });
                out.push(v[offset as usize]);
            });
            Arc::from(out)
        });
    Ok(TensorInfo {
        ty: x.ty,
        dims,
        values,
    })
}

fn gather(node: &Node, inputs: &Inputs) -> Result<TensorInfo, RuleError> {
    let (x, indices) = (required(inputs, 0)?, required(inputs, 1)?);
    if !matches!(indices.ty, ElemType::I32 | ElemType::I64) {
        return Err("indices must be i32 or i64".into());
    }
    let axis = axis_in(node.int("axis").unwrap_or(0), x.dims.len())?;
    let d = x.dims[axis] as i64;
    if let Some(bad) = indices
        .values
        .iter()
        .flat_map(|v| v.iter())
        .find(|&&i| i < -d || i >= d)
    {
        return Err(format!("index {bad} is out of range for dimension {d}"));
    }
    let dims: Vec<u64> = [&x.dims[..axis], &indices.dims[..], &x.dims[axis + 1..]].concat();
    let values = match (&x.values, &indices.values) {
        (Some(v), Some(idx)) if elements(&dims) <= KNOWN_VALUES => {
            let inner = elements(&x.dims[axis + 1..]) as usize;
            let outer = elements(&x.dims[..axis]) as usize;
            let mut out = Vec::with_capacity(elements(&dims) as usize);
            for o in 0..outer {
                for &i in idx.iter() {
                    let i = (if i < 0 { i + d } else { i }) as usize;
                    let start = (o * d as usize + i) * inner;
                    out.extend_from_slice(&v[start..start + inner]);
                }
            }
            Some(Arc::from(out))
        }
        _ => None,
    };
    Ok(TensorInfo {
        ty: x.ty,
        dims,
        values,
    })
}

fn gather_nd(node: &Node, inputs: &Inputs) -> Result<TensorInfo, RuleError> {
    let (x, indices) = (required(inputs, 0)?, required(inputs, 1)?);
    let b =
        usize::try_from(node.int("batch_dims").unwrap_or(0)).map_err(|_| "negative batch_dims")?;
    let (r, q) = (x.dims.len(), indices.dims.len());
    let last = *indices
        .dims
        .last()
        .ok_or("indices must have rank at least 1")? as usize;
    if b >= r.min(q) || b + last > r || x.dims[..b] != indices.dims[..b] {
        return Err("indices do not fit the data".into());
    }
    let dims = [&indices.dims[..q - 1], &x.dims[b + last..]].concat();
    Ok(TensorInfo::of(x.ty, dims))
}

fn pad(node: &Node, inputs: &Inputs) -> Result<TensorInfo, RuleError> {
    let x = required(inputs, 0)?;
    let pads = values(inputs, 1, "pads")?;
    let rank = x.dims.len();
    let axes = match optional_values(inputs, 3, "axes")? {
        Some(axes) => axes_in(axes, rank)?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err("`pads` must have two entries per axis".into());
    }
    if !matches!(
        node.text("mode").unwrap_or("constant"),
        "constant" | "reflect" | "edge" | "wrap"
    ) {
        return Err("unknown pad mode".into());
    }
    let mut dims = x.dims.clone();
    for (k, &axis) in axes.iter().enumerate() {
        let d = i128::from(dims[axis]) + i128::from(pads[k]) + i128::from(pads[k + axes.len()]);
        dims[axis] = u64::try_from(d).map_err(|_| "padding removes more than the dimension")?;
    }
    Ok(TensorInfo::of(x.ty, dims))
}

fn constant(node: &Node) -> Result<TensorInfo, RuleError> {
    let mut forms = node.attributes.keys();
    let (Some(form), None) = (forms.next(), forms.next()) else {
        return Err("exactly one value attribute is required".into());
    };
    Ok(match form.as_str() {
        "value" => node
            .tensor("value")
            .ok_or("`value` must be a tensor")?
            .clone(),
        "value_int" => known(
            ElemType::I64,
            vec![],
            vec![node.int(form).ok_or("bad value_int")?],
        ),
        "value_ints" => {
            let v = node.ints(form).ok_or("bad value_ints")?.to_vec();
            known(ElemType::I64, vec![v.len() as u64], v)
        }
        "value_float" => TensorInfo::of(ElemType::F32, vec![]),
        "value_floats" => match node.attributes.get(form) {
            Some(super::graph::Attribute::Floats(f)) => {
                TensorInfo::of(ElemType::F32, vec![f.len() as u64])
            }
            _ => return Err("bad value_floats".into()),
        },
        other => return Err(format!("constant form `{other}` is not supported")),
    })
}

fn range(inputs: &Inputs) -> Result<TensorInfo, RuleError> {
    let scalar = |i: usize, what: &str| -> Result<(ElemType, i64), RuleError> {
        let t = required(inputs, i)?;
        match values(inputs, i, what)? {
            [v] => Ok((t.ty, *v)),
            _ => Err(format!("`{what}` must be a scalar")),
        }
    };
    let ((ty, start), (_, limit), (_, delta)) = (
        scalar(0, "start")?,
        scalar(1, "limit")?,
        scalar(2, "delta")?,
    );
    if delta == 0 {
        return Err("`delta` is 0".into());
    }
    let (start, limit, delta) = (i128::from(start), i128::from(limit), i128::from(delta));
    let n = ((limit - start) + delta - delta.signum()) / delta;
    let n = u64::try_from(n.max(0)).map_err(|_| "range too long")?;
    let values =
        (n <= KNOWN_VALUES).then(|| (0..n as i128).map(|i| (start + i * delta) as i64).collect());
    Ok(TensorInfo {
        ty,
        dims: vec![n],
        values,
    })
}

fn reduce(
    node: &Node,
    x: &TensorInfo,
    axes: Option<&[i64]>,
    ty: ElemType,
) -> Result<TensorInfo, RuleError> {
    let rank = x.dims.len();
    let keep = node.int("keepdims").unwrap_or(1) != 0;
    let axes = match axes {
        Some(axes) if !axes.is_empty() => axes_in(axes, rank)?,
        _ if node.int("noop_with_empty_axes").unwrap_or(0) != 0 => vec![],
        _ => (0..rank).collect(),
    };
    let dims = (0..rank)
        .filter_map(|i| match (axes.contains(&i), keep) {
            (false, _) => Some(x.dims[i]),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect();
    Ok(TensorInfo::of(ty, dims))
}

fn matmul(inputs: &Inputs, ty: Option<ElemType>) -> Result<TensorInfo, RuleError> {
    let (a, b) = (required(inputs, 0)?, required(inputs, 1)?);
    if a.dims.is_empty() || b.dims.is_empty() {
        return Err("MatMul inputs must have rank at least 1".into());
    }
    let a_dims = if a.dims.len() == 1 {
        vec![1, a.dims[0]]
    } else {
        a.dims.clone()
    };
    let b_dims = if b.dims.len() == 1 {
        vec![b.dims[0], 1]
    } else {
        b.dims.clone()
    };
    let (m, k) = (a_dims[a_dims.len() - 2], a_dims[a_dims.len() - 1]);
    let (k2, n) = (b_dims[b_dims.len() - 2], b_dims[b_dims.len() - 1]);
    if k != k2 {
        return Err(format!(
            "inner dimensions differ: {:?} × {:?}",
            a.dims, b.dims
        ));
    }
    let mut dims = broadcast(&a_dims[..a_dims.len() - 2], &b_dims[..b_dims.len() - 2])?;
    if a.dims.len() > 1 {
        dims.push(m);
    }
    if b.dims.len() > 1 {
        dims.push(n);
    }
    Ok(TensorInfo::of(ty.unwrap_or(a.ty), dims))
}

fn gemm(node: &Node, inputs: &Inputs) -> Result<TensorInfo, RuleError> {
    let (a, b) = (required(inputs, 0)?, required(inputs, 1)?);
    let ([a0, a1], [b0, b1]) = (a.dims.as_slice(), b.dims.as_slice()) else {
        return Err("Gemm inputs must be matrices".into());
    };
    let (m, k) = if node.int("transA").unwrap_or(0) != 0 {
        (a1, a0)
    } else {
        (a0, a1)
    };
    let (k2, n) = if node.int("transB").unwrap_or(0) != 0 {
        (b1, b0)
    } else {
        (b0, b1)
    };
    if k != k2 {
        return Err("inner dimensions differ".into());
    }
    if let Some(c) = inputs.get(2).copied().flatten()
        && broadcast(&c.dims, &[*m, *n])? != [*m, *n]
    {
        return Err("`C` does not broadcast to the output".into());
    }
    Ok(TensorInfo::of(a.ty, vec![*m, *n]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::Attribute;
    use std::collections::BTreeMap;

    fn node(op: Op, attributes: &[(&str, Attribute)]) -> Node {
        Node {
            op,
            label: "n".into(),
            inputs: vec![],
            outputs: vec![0],
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn ints(ty: ElemType, values: &[i64]) -> TensorInfo {
        known(ty, vec![values.len() as u64], values.to_vec())
    }

    fn infer(op: Op, inputs: &[&TensorInfo]) -> Result<TensorInfo, RuleError> {
        let args: Vec<Option<&TensorInfo>> = inputs.iter().map(|&t| Some(t)).collect();
        op.infer(&node(op, &[]), &args).map(|mut o| o.remove(0))
    }

    #[test]
    fn slice_pairs_starts_and_ends_with_axes_in_the_order_given() {
        let x = TensorInfo::of(ElemType::F32, vec![4096, 1]);
        let out = infer(
            Op::Slice,
            &[
                &x,
                &ints(ElemType::I64, &[0, 0]),
                &ints(ElemType::I64, &[1, 4096]),
                &ints(ElemType::I64, &[1, 0]),
            ],
        )
        .unwrap();
        assert_eq!(out.dims, vec![4096, 1]);
    }

    #[test]
    fn a_reversed_slice_of_an_empty_axis_is_empty() {
        let x = TensorInfo::of(ElemType::F32, vec![0]);
        let out = infer(
            Op::Slice,
            &[
                &x,
                &ints(ElemType::I64, &[-1]),
                &ints(ElemType::I64, &[-10]),
                &ints(ElemType::I64, &[0]),
                &ints(ElemType::I64, &[-1]),
            ],
        )
        .unwrap();
        assert_eq!(out.dims, vec![0]);
    }

    #[test]
    fn integer_values_wrap_to_their_type() {
        let out = infer(
            Op::Sub,
            &[&ints(ElemType::U8, &[0]), &ints(ElemType::U8, &[1])],
        )
        .unwrap();
        assert_eq!(out.values.as_deref(), Some(&[255][..]));
        let out = infer(
            Op::Sub,
            &[
                &ints(ElemType::I32, &[i64::from(i32::MIN)]),
                &ints(ElemType::I32, &[1]),
            ],
        )
        .unwrap();
        assert_eq!(out.values.as_deref(), Some(&[i64::from(i32::MAX)][..]));
    }

    #[test]
    fn integer_division_needs_a_known_divisor_that_cannot_fault() {
        let x = TensorInfo::of(ElemType::I64, vec![1]);
        assert!(infer(Op::Div, &[&x, &TensorInfo::of(ElemType::I64, vec![1])]).is_err());
        assert!(infer(Op::Div, &[&x, &ints(ElemType::I64, &[-1])]).is_err());
        assert!(infer(Op::Mod, &[&x, &ints(ElemType::I64, &[0])]).is_err());
        assert!(infer(Op::Div, &[&x, &ints(ElemType::I64, &[2])]).is_ok());
        let f = TensorInfo::of(ElemType::F32, vec![1]);
        assert!(infer(Op::Div, &[&f, &f]).is_ok());
    }

    #[test]
    fn variadic_operators_pay_a_pass_per_input_and_are_capped() {
        let x = TensorInfo::of(ElemType::F32, vec![1000]);
        let work = |n: usize| {
            let args: Vec<Option<&TensorInfo>> = vec![Some(&x); n];
            let out = Op::Sum.infer(&node(Op::Sum, &[]), &args).unwrap();
            Op::Sum.work(&node(Op::Sum, &[]), &args, &out)
        };
        assert!(work(9) >= 8 * (work(2) - NODE_WORK));
        let many: Vec<Option<&TensorInfo>> = vec![Some(&x); MAX_VARIADIC_INPUTS + 1];
        assert!(Op::Sum.infer(&node(Op::Sum, &[]), &many).is_err());
    }

    #[test]
    fn a_transposed_gemm_pays_for_its_inner_dimension() {
        let a = TensorInfo::of(ElemType::F32, vec![1 << 16, 1 << 8]);
        let b = TensorInfo::of(ElemType::F32, vec![1 << 16, 1 << 10]);
        let gemm = node(Op::Gemm, &[("transA", Attribute::Int(1))]);
        let args = [Some(&a), Some(&b)];
        let out = Op::Gemm.infer(&gemm, &args).unwrap();
        assert_eq!(out[0].dims, vec![1 << 8, 1 << 10]);
        assert!(Op::Gemm.work(&gemm, &args, &out) >= 1 << 34);
    }
}

//! An admitted model as the host sees it: the graph's structure, the shapes
//! and small integer values of its constants, and nothing of its weights.

use super::ops::Op;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Element types a model may compute with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ElemType {
    F32,
    U8,
    I8,
    I32,
    I64,
    Bool,
}

impl ElemType {
    /// The type of ONNX's `TensorProto.DataType` code, if a model may use it.
    pub(crate) fn from_onnx(code: i32) -> Option<ElemType> {
        Some(match code {
            1 => ElemType::F32,
            2 => ElemType::U8,
            3 => ElemType::I8,
            6 => ElemType::I32,
            7 => ElemType::I64,
            9 => ElemType::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub(crate) fn size(self) -> u64 {
        match self {
            ElemType::U8 | ElemType::I8 | ElemType::Bool => 1,
            ElemType::F32 | ElemType::I32 => 4,
            ElemType::I64 => 8,
        }
    }

    /// Whether values of this type are exact integers (whose values the
    /// host can track through shape computations).
    pub(crate) fn is_integer(self) -> bool {
        self != ElemType::F32
    }
}

/// What the host knows of a tensor: its type, its dimensions, and for small
/// integer tensors (shapes, axes, indices) its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorInfo {
    pub(crate) ty: ElemType,
    pub(crate) dims: Vec<u64>,
    /// The elements in row-major order, when they are integers known
    /// without running the model (shared: reshaping copies no values).
    pub(crate) values: Option<Arc<[i64]>>,
}

impl TensorInfo {
    /// A tensor of unknown values.
    pub(crate) fn of(ty: ElemType, dims: Vec<u64>) -> TensorInfo {
        TensorInfo {
            ty,
            dims,
            values: None,
        }
    }

    /// Number of elements (saturating: shapes are checked against limits
    /// long before this could overflow in practice).
    pub(crate) fn elements(&self) -> u64 {
        elements(&self.dims)
    }

    /// Bytes of its elements.
    pub(crate) fn bytes(&self) -> u64 {
        self.elements().saturating_mul(self.ty.size())
    }
}

/// The product of `dims`, saturating.
pub(crate) fn elements(dims: &[u64]) -> u64 {
    dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
}

/// A dimension of a declared graph input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dim {
    Fixed(u64),
    /// Named or unnamed: any size, chosen by the caller.
    Free,
}

/// A graph input the caller supplies.
#[derive(Debug, Clone)]
pub(crate) struct Input {
    pub(crate) name: String,
    pub(crate) value: ValueId,
    pub(crate) ty: ElemType,
    pub(crate) dims: Vec<Dim>,
}

/// Index of a value (a named tensor) of the graph.
pub(crate) type ValueId = usize;

/// A node attribute, in the forms the host's rules read.
#[derive(Debug, Clone)]
pub(crate) enum Attribute {
    Int(i64),
    Ints(Vec<i64>),
    Float,
    Floats(Vec<f32>),
    Tensor(TensorInfo),
    Text(String),
    /// A form no rule reads (a list of strings or of tensors).
    Other,
}

/// One operator application.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) op: Op,
    /// The node's name, or its position, for messages.
    pub(crate) label: String,
    /// Inputs in order; `None` for an omitted optional input.
    pub(crate) inputs: Vec<Option<ValueId>>,
    pub(crate) outputs: Vec<ValueId>,
    pub(crate) attributes: BTreeMap<String, Attribute>,
}

impl Node {
    pub(crate) fn int(&self, name: &str) -> Option<i64> {
        match self.attributes.get(name) {
            Some(Attribute::Int(v)) => Some(*v),
            _ => None,
        }
    }

    pub(crate) fn ints(&self, name: &str) -> Option<&[i64]> {
        match self.attributes.get(name) {
            Some(Attribute::Ints(v)) => Some(v),
            _ => None,
        }
    }

    pub(crate) fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        match self.attributes.get(name) {
            Some(Attribute::Tensor(t)) => Some(t),
            _ => None,
        }
    }

    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        match self.attributes.get(name) {
            Some(Attribute::Text(t)) => Some(t),
            _ => None,
        }
    }
}

/// An admitted model's graph, in topological order.
#[derive(Debug, Clone)]
pub(crate) struct Graph {
    /// Value names, by [`ValueId`].
    pub(crate) names: Vec<String>,
    pub(crate) inputs: Vec<Input>,
    /// Initializers: their shapes, and values when small integers.
    pub(crate) constants: Vec<(ValueId, TensorInfo)>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) outputs: Vec<ValueId>,
    /// The index of the last node reading each value (`usize::MAX` for a
    /// graph output); `None` if nothing reads it.
    pub(crate) last_use: Vec<Option<usize>>,
    /// Which nodes ONNX Runtime folds into constants when it loads the
    /// model (see admission); their work is not charged per run.
    pub(crate) folded: Vec<bool>,
}

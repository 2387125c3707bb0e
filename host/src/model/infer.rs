//! Static shape inference over an admitted graph: for given input shapes,
//! every tensor's shape and the work of every node, without running it.

use super::graph::{Dim, ElemType, Graph, TensorInfo};
use super::ops::Op;

/// Largest tensor any node may produce, in bytes.
pub(crate) const MAX_TENSOR_BYTES: u64 = 256 << 20;

/// What running the graph on inputs of given shapes would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Type and dimensions of each graph output, in graph order.
    pub(crate) outputs: Vec<TensorInfo>,
    /// Work units of every node (see [`Op::work`]).
    pub(crate) work: u64,
    /// The part of `work` that does not depend on the inputs: what ONNX
    /// Runtime may fold into constants when it loads the model.
    pub(crate) constant_work: u64,
    /// The element type of every value, by [`super::graph::ValueId`].
    pub(crate) types: Vec<ElemType>,
}

/// Why the graph cannot run on the given inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ShapeError {
    /// The inputs are not what the graph declares.
    #[error("{0}")]
    Inputs(String),
    /// A node's rule refused its inputs.
    #[error("node `{node}` ({op}): {reason}")]
    Node {
        node: String,
        op: &'static str,
        reason: String,
    },
    /// A node would produce a tensor larger than [`MAX_TENSOR_BYTES`].
    #[error("node `{node}` ({op}) would produce {bytes} bytes; at most {MAX_TENSOR_BYTES}")]
    TooLarge {
        node: String,
        op: &'static str,
        bytes: u64,
    },
}

impl Graph {
    /// Plans a run on inputs of these types and dimensions, one per graph
    /// input in order.
    pub(crate) fn plan(&self, inputs: &[(ElemType, Vec<u64>)]) -> Result<Plan, ShapeError> {
        if inputs.len() != self.inputs.len() {
            return Err(ShapeError::Inputs(format!(
                "the model takes {} inputs, got {}",
                self.inputs.len(),
                inputs.len()
            )));
        }
        let mut values: Vec<Option<TensorInfo>> = vec![None; self.names.len()];
        // Whether each value depends on a graph input.
        let mut variable = vec![false; self.names.len()];
        for (input, (ty, dims)) in self.inputs.iter().zip(inputs) {
            let fits = *ty == input.ty
                && dims.len() == input.dims.len()
                && dims.iter().zip(&input.dims).all(|(d, want)| match want {
                    Dim::Fixed(w) => d == w,
                    Dim::Free => true,
                });
            if !fits {
                return Err(ShapeError::Inputs(format!(
                    "input `{}` must be {:?} of dimensions {:?}, got {ty:?} {dims:?}",
                    input.name, input.ty, input.dims
                )));
            }
            values[input.value] = Some(TensorInfo::of(*ty, dims.clone()));
            variable[input.value] = true;
        }
        for (id, constant) in &self.constants {
            values[*id] = Some(constant.clone());
        }
        let mut work = 0u64;
        let mut constant_work = 0u64;
        for node in &self.nodes {
            let args: Vec<Option<&TensorInfo>> = node
                .inputs
                .iter()
                .map(|i| i.and_then(|i| values[i].as_ref()))
                .collect();
            let fail = |reason: String| ShapeError::Node {
                node: node.label.clone(),
                op: node.op.name(),
                reason,
            };
            let outputs = node.op.infer(node, &args).map_err(fail)?;
            if outputs.len() < node.outputs.len() {
                return Err(fail(format!(
                    "has {} outputs; this operator gives {}",
                    node.outputs.len(),
                    outputs.len()
                )));
            }
            if let Some(big) = outputs.iter().find(|t| t.bytes() > MAX_TENSOR_BYTES) {
                return Err(ShapeError::TooLarge {
                    node: node.label.clone(),
                    op: node.op.name(),
                    bytes: big.bytes(),
                });
            }
            let node_work = node.op.work(&args, &outputs);
            work = work.saturating_add(node_work);
            let depends = node.inputs.iter().flatten().any(|&i| variable[i]);
            if !depends && node.op != Op::Constant {
                constant_work = constant_work.saturating_add(node_work);
            }
            for (&id, out) in node.outputs.iter().zip(outputs) {
                values[id] = Some(out);
                variable[id] = depends;
            }
        }
        let outputs = self
            .outputs
            .iter()
            .map(|&id| {
                let mut out = values[id]
                    .clone()
                    .expect("admission checked outputs are defined");
                out.values = None;
                out
            })
            .collect();
        let types = values
            .iter()
            .map(|v| v.as_ref().map_or(ElemType::F32, |v| v.ty))
            .collect();
        Ok(Plan {
            outputs,
            work,
            constant_work,
            types,
        })
    }
}

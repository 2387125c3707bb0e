//! Static shape inference over an admitted graph: for given input shapes,
//! every tensor's shape, the work of every node and the memory a run
//! holds at once, without running it.

use super::admission::MAX_RANK;
use super::graph::{Dim, ElemType, Graph, TensorInfo};
use crate::limits::HOST_FUEL_PER_BYTE;

/// Largest tensor any node may produce, in bytes.
pub const MAX_TENSOR_BYTES: u64 = 256 << 20;

/// Most bytes of tensors a run may hold at once (inputs and intermediate
/// results, each from its producer to its last consumer).
pub const MAX_LIVE_BYTES: u64 = 2 << 30;

/// Work units (see `Op::work`) bought by one unit of fuel.
pub const WORK_PER_FUEL: u64 = 8;

/// Most integer values tracked over one plan: beyond, values are not
/// tracked, and rules that need them fail.
const MAX_TRACKED_VALUES: u64 = 1 << 20;

/// What running the graph on inputs of given shapes would do.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Type and dimensions of each graph output, in graph order.
    pub(crate) outputs: Vec<TensorInfo>,
    /// Work units of the nodes a run executes (see `Op::work`): every node
    /// but those ONNX Runtime folded into constants at load.
    pub(crate) work: u64,
    /// Every value, by [`super::graph::ValueId`].
    pub(crate) values: Vec<TensorInfo>,
    /// Work units of each node, folded or not.
    pub(crate) node_work: Vec<u64>,
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
    /// The run would hold more than [`MAX_LIVE_BYTES`] at once.
    #[error("a run would hold {bytes} bytes of tensors at once; at most {MAX_LIVE_BYTES}")]
    Memory { bytes: u64 },
}

impl Plan {
    /// The fuel a run pays for its model: the planned work, and every byte
    /// of output copied back to the guest. (What ONNX Runtime folded when
    /// it loaded the model is not in the work; admission bounds it.)
    pub(crate) fn fuel(&self) -> u64 {
        let output_bytes: u64 = self.outputs.iter().map(TensorInfo::bytes).sum();
        (self.work / WORK_PER_FUEL).saturating_add(output_bytes.saturating_mul(HOST_FUEL_PER_BYTE))
    }
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
        // Bytes held at once: the inputs throughout, and each result of an
        // executed node from its producer to its last consumer.
        let mut live = 0u64;
        let mut held = vec![false; self.names.len()];
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
            let value = TensorInfo::of(*ty, dims.clone());
            live = live.saturating_add(value.bytes());
            values[input.value] = Some(value);
        }
        for (id, constant) in &self.constants {
            values[*id] = Some(constant.clone());
        }
        let mut work = 0u64;
        let mut peak = live;
        let mut tracked = 0u64;
        let mut node_work = Vec::with_capacity(self.nodes.len());
        for (index, node) in self.nodes.iter().enumerate() {
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
            let mut outputs = node.op.infer(node, &args).map_err(fail)?;
            if outputs.len() < node.outputs.len() {
                return Err(fail(format!(
                    "has {} outputs; this operator gives {}",
                    node.outputs.len(),
                    outputs.len()
                )));
            }
            if outputs.iter().any(|t| t.dims.len() > MAX_RANK) {
                return Err(fail(format!("an output has rank above {MAX_RANK}")));
            }
            if let Some(big) = outputs.iter().find(|t| t.bytes() > MAX_TENSOR_BYTES) {
                return Err(ShapeError::TooLarge {
                    node: node.label.clone(),
                    op: node.op.name(),
                    bytes: big.bytes(),
                });
            }
            for out in &mut outputs {
                let n = out.values.as_ref().map_or(0, |v| v.len() as u64);
                if tracked + n > MAX_TRACKED_VALUES {
                    out.values = None;
                } else {
                    tracked += n;
                }
            }
            let this_work = node.op.work(node, &args, &outputs);
            node_work.push(this_work);
            let folded = self.folded.get(index).copied().unwrap_or(false);
            if !folded {
                // A folded node's outputs are constants of the session.
                work = work.saturating_add(this_work);
                live = live.saturating_add(outputs.iter().map(TensorInfo::bytes).sum());
                peak = peak.max(live);
                node.outputs.iter().for_each(|&id| held[id] = true);
            }
            for (&id, out) in node.outputs.iter().zip(outputs) {
                values[id] = Some(out);
            }
            // What no later node reads is given back.
            let done = node.inputs.iter().flatten().chain(&node.outputs);
            for &id in done {
                let last = self.last_use[id].is_none_or(|last| last == index);
                if last && std::mem::take(&mut held[id]) {
                    live = live.saturating_sub(values[id].as_ref().map_or(0, TensorInfo::bytes));
                }
            }
        }
        if peak > MAX_LIVE_BYTES {
            return Err(ShapeError::Memory { bytes: peak });
        }
        // Admission checked that every value is defined before it is used.
        let values: Vec<TensorInfo> = values
            .into_iter()
            .map(|v| v.unwrap_or_else(|| TensorInfo::of(ElemType::F32, vec![])))
            .collect();
        let outputs = self
            .outputs
            .iter()
            .map(|&id| TensorInfo::of(values[id].ty, values[id].dims.clone()))
            .collect();
        Ok(Plan {
            outputs,
            work,
            values,
            node_work,
        })
    }
}

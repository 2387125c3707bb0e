//! Admission: the checks a model passes before ONNX Runtime sees it.

use super::graph::{Attribute, Dim, ElemType, Graph, Input, Node, TensorInfo, ValueId, elements};
use super::infer::{Plan, ShapeError};
use super::ops::{KNOWN_VALUES, Op, wrap};
use super::{prescan, proto};
use protobuf::{CodedInputStream, Message};
use std::collections::BTreeMap;

/// Lowest and highest IR versions admitted (ONNX 1.3 to 1.18).
pub const IR_VERSIONS: std::ops::RangeInclusive<i64> = 3..=11;
/// Default-domain opsets admitted. The operator rules follow these
/// versions (axes as inputs, `Split` sizes as an input, ...).
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;
/// Most nodes in a graph.
pub const MAX_NODES: usize = 20_000;
/// Most initializers in a graph.
pub const MAX_INITIALIZERS: usize = 20_000;
/// Most outputs of a graph: as many tensors as one run may hand over.
pub const MAX_GRAPH_OUTPUTS: usize = 16;
/// Most elements of one constant tensor (an initializer or a `Constant`).
pub const MAX_CONSTANT_ELEMENTS: u64 = 1 << 26;
/// Highest rank of any tensor.
pub const MAX_RANK: usize = 8;
/// Most work (see `ops`) the constant part of a graph may take; ONNX
/// Runtime folds it while loading, before any fuel can be charged.
pub const MAX_CONSTANT_WORK: u64 = 1 << 32;
/// Most bytes the constant part of a graph may produce (ONNX Runtime keeps
/// what it folds for the life of the session).
pub const MAX_CONSTANT_BYTES: u64 = 1 << 30;
/// Longest name of a value, or of a node (refusals and errors quote
/// node names).
pub const MAX_VALUE_NAME_BYTES: usize = 4096;
/// Largest model, in bytes (an ONNX file cannot exceed 2 GiB anyway).
pub const MAX_MODEL_BYTES: u64 = 1 << 30;
/// Nesting of protobuf messages the parser follows (an admitted model needs
/// five levels).
const RECURSION_LIMIT: u32 = 16;

/// Why a model was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// The bytes are not an ONNX model.
    #[error("not an ONNX model: {0}")]
    Malformed(String),
    /// A message holds a field the host's ONNX schema does not know (found
    /// before parsing, by `prescan`).
    #[error("unknown field in {0}")]
    UnknownField(String),
    /// A tensor keeps its data outside the model.
    #[error("tensor `{0}` refers to external data; models must be self-contained")]
    ExternalData(String),
    /// An operator that is not on the allow-list.
    #[error("node `{node}` uses operator `{op}`, which models may not use")]
    Operator {
        /// The node's name or position.
        node: String,
        /// `domain::type`.
        op: String,
    },
    /// IR version, opsets, functions or another model-level feature the
    /// host does not admit.
    #[error("{0}")]
    Unsupported(String),
    /// A constant tensor is malformed or too large.
    #[error("tensor `{tensor}`: {reason}")]
    Constant {
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// The graph is not a well-formed DAG of named values.
    #[error("graph: {0}")]
    Graph(String),
    /// Shapes cannot be inferred, or a tensor would be too large.
    #[error("shape inference: {0}")]
    Shapes(String),
    /// The constant part of the graph is more work, or makes more bytes,
    /// than loading may take.
    #[error(
        "folding the model's constants takes {work} work units and {bytes} bytes; at most {MAX_CONSTANT_WORK} and {MAX_CONSTANT_BYTES}"
    )]
    ConstantWork {
        /// Work of the constant part.
        work: u64,
        /// Bytes it produces.
        bytes: u64,
    },
    /// A graph output the sandbox cannot return faithfully.
    #[error("output `{name}`: {reason}")]
    Output {
        /// The output's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

impl From<ShapeError> for AdmissionError {
    fn from(e: ShapeError) -> Self {
        AdmissionError::Shapes(e.to_string())
    }
}

/// A model that passed admission.
#[derive(Debug)]
pub struct Admitted {
    /// What the host knows of the graph.
    pub(crate) graph: Graph,
    /// The checked model, re-encoded: the bytes ONNX Runtime is given, so
    /// that it parses exactly what admission read (no second reading of
    /// duplicate fields can differ).
    pub(crate) canonical: Vec<u8>,
}

impl Admitted {
    /// The bytes ONNX Runtime is given: the admitted model, re-encoded.
    pub fn bytes(&self) -> &[u8] {
        &self.canonical
    }

    /// The graph's inputs as declared, in order: each dimension's fixed
    /// size, or `None` where the caller chooses it.
    pub fn input_dims(&self) -> Vec<Vec<Option<u64>>> {
        self.graph
            .inputs
            .iter()
            .map(|input| {
                input
                    .dims
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => Some(*n),
                        Dim::Free => None,
                    })
                    .collect()
            })
            .collect()
    }

    /// The fuel a run on inputs of these dimensions (one list per graph
    /// input, in order, of the declared types) pays for the model's work
    /// and outputs, on top of a fixed charge per run and a fuel per input
    /// byte; or why such inputs cannot run.
    pub fn fuel(&self, dims: &[Vec<u64>]) -> Result<u64, String> {
        if dims.len() != self.graph.inputs.len() {
            return Err(format!(
                "the model takes {} inputs",
                self.graph.inputs.len()
            ));
        }
        let inputs: Vec<(ElemType, Vec<u64>)> = self
            .graph
            .inputs
            .iter()
            .zip(dims)
            .map(|(input, dims)| (input.ty, dims.clone()))
            .collect();
        self.graph
            .plan(&inputs)
            .map(|plan| plan.fuel())
            .map_err(|e| e.to_string())
    }
}

/// Longest text of a refusal: the host keeps refusals for a while, and a
/// model's names and values, which refusals quote, can be as long as the
/// model.
pub const MAX_REFUSAL_BYTES: usize = 1024;

impl AdmissionError {
    /// The refusal with every text longer than [`MAX_REFUSAL_BYTES`] cut
    /// in its middle, where a quoted name or value is.
    fn bounded(self) -> AdmissionError {
        use AdmissionError::*;
        match self {
            Malformed(t) => Malformed(elide(t)),
            UnknownField(t) => UnknownField(elide(t)),
            ExternalData(t) => ExternalData(elide(t)),
            Operator { node, op } => Operator {
                node: elide(node),
                op: elide(op),
            },
            Unsupported(t) => Unsupported(elide(t)),
            Constant { tensor, reason } => Constant {
                tensor: elide(tensor),
                reason: elide(reason),
            },
            Graph(t) => Graph(elide(t)),
            Shapes(t) => Shapes(elide(t)),
            e @ ConstantWork { .. } => e,
            Output { name, reason } => Output {
                name: elide(name),
                reason: elide(reason),
            },
        }
    }
}

/// `text`, or, if it is longer than [`MAX_REFUSAL_BYTES`], its first and
/// last few hundred bytes around an ellipsis.
fn elide(text: String) -> String {
    if text.len() <= MAX_REFUSAL_BYTES {
        return text;
    }
    let keep = MAX_REFUSAL_BYTES / 2 - 4;
    let mut head = keep;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - keep;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{} … {}", &text[..head], &text[tail..])
}

/// Checks `bytes` and returns what the host needs to run it safely.
pub fn admit(bytes: &[u8]) -> Result<Admitted, AdmissionError> {
    admit_unbounded(bytes).map_err(AdmissionError::bounded)
}

/// [`admit`], with refusals of any length.
fn admit_unbounded(bytes: &[u8]) -> Result<Admitted, AdmissionError> {
    use protobuf::MessageFull;
    if bytes.len() as u64 > MAX_MODEL_BYTES {
        return Err(unsupported(format!(
            "the model has {} bytes; at most {MAX_MODEL_BYTES}",
            bytes.len()
        )));
    }
    prescan::parse_overhead(bytes, &proto::ModelProto::descriptor(), RECURSION_LIMIT)?;
    let mut input = CodedInputStream::from_bytes(bytes);
    input.set_recursion_limit(RECURSION_LIMIT);
    let mut model = proto::ModelProto::parse_from(&mut input)
        .map_err(|e| AdmissionError::Malformed(e.to_string()))?;
    check_model(&model)?;
    let mut graph = Builder::default().build(model.graph.get_or_default())?;
    check_plan(&mut graph)?;
    // Metadata is dropped: ONNX Runtime can read settings from it.
    model.metadata_props.clear();
    if let Some(g) = model.graph.as_mut() {
        g.metadata_props.clear();
        g.node.iter_mut().for_each(|n| n.metadata_props.clear());
    }
    let canonical = model
        .write_to_bytes()
        .map_err(|e| AdmissionError::Malformed(e.to_string()))?;
    Ok(Admitted { graph, canonical })
}

fn unsupported(message: String) -> AdmissionError {
    AdmissionError::Unsupported(message)
}

fn check_model(model: &proto::ModelProto) -> Result<(), AdmissionError> {
    let ir = model.ir_version();
    if !IR_VERSIONS.contains(&ir) {
        return Err(unsupported(format!(
            "IR version {ir}; admitted: {IR_VERSIONS:?}"
        )));
    }
    let mut default_opset = None;
    for opset in &model.opset_import {
        match opset.domain() {
            "" | "ai.onnx" if default_opset.is_none() => default_opset = Some(opset.version()),
            "" | "ai.onnx" => {
                return Err(unsupported("the default opset is imported twice".into()));
            }
            other => {
                return Err(unsupported(format!(
                    "opset domain `{other}`; only the default ONNX domain is admitted"
                )));
            }
        }
    }
    match default_opset {
        Some(v) if OPSETS.contains(&v) => {}
        Some(v) => return Err(unsupported(format!("opset {v}; admitted: {OPSETS:?}"))),
        None => return Err(unsupported("no default opset is imported".into())),
    }
    if !model.functions.is_empty() {
        return Err(unsupported("model-local functions are not admitted".into()));
    }
    if !model.training_info.is_empty() {
        return Err(unsupported("training information is not admitted".into()));
    }
    if !model.configuration.is_empty() {
        return Err(unsupported("device configurations are not admitted".into()));
    }
    if model.graph.is_none() {
        return Err(AdmissionError::Graph("the model has no graph".into()));
    }
    Ok(())
}

/// Checks a constant tensor and reads what the host tracks of it.
fn constant(t: &proto::TensorProto, label: &str) -> Result<TensorInfo, AdmissionError> {
    let name = if t.name().is_empty() { label } else { t.name() };
    let fail = |reason: String| AdmissionError::Constant {
        tensor: name.to_owned(),
        reason,
    };
    if !t.external_data.is_empty()
        || t.data_location() != proto::tensor_proto::DataLocation::DEFAULT
        || t.data_location.is_some_and(|l| l.value() != 0)
    {
        return Err(AdmissionError::ExternalData(name.to_owned()));
    }
    if t.segment.is_some() {
        return Err(fail("segmented tensors are not admitted".into()));
    }
    let ty = ElemType::from_onnx(t.data_type())
        .ok_or_else(|| fail(format!("element type {} is not admitted", t.data_type())))?;
    if t.dims.len() > MAX_RANK {
        return Err(fail(format!("rank {} exceeds {MAX_RANK}", t.dims.len())));
    }
    let dims: Vec<u64> = t
        .dims
        .iter()
        .map(|&d| u64::try_from(d).map_err(|_| fail(format!("negative dimension {d}"))))
        .collect::<Result<_, _>>()?;
    let n = elements(&dims);
    if n > MAX_CONSTANT_ELEMENTS {
        return Err(fail(format!("{n} elements exceed {MAX_CONSTANT_ELEMENTS}")));
    }
    // Exactly one place may hold the data, holding exactly `n` elements.
    let typed = match ty {
        ElemType::F32 => t.float_data.len(),
        ElemType::I64 => t.int64_data.len(),
        _ => t.int32_data.len(),
    } as u64;
    let others = t.float_data.len() + t.int32_data.len() + t.int64_data.len() - typed as usize
        + t.string_data.len()
        + t.double_data.len()
        + t.uint64_data.len();
    let raw = t.raw_data().len() as u64;
    let consistent = others == 0
        && match (raw, typed) {
            (0, 0) => n == 0,
            (raw, 0) => raw == n * ty.size(),
            (0, typed) => typed == n,
            _ => false,
        };
    if !consistent {
        return Err(fail(format!(
            "its data does not hold exactly the {n} {ty:?} elements its dimensions declare"
        )));
    }
    let values = (ty.is_integer() && n <= KNOWN_VALUES).then(|| {
        // Narrow types wrap as their kernels read them (an int32_data entry
        // of -1 in a u8 tensor is 255).
        integer_values(t, ty)
            .into_iter()
            .map(|v| wrap(v, ty))
            .collect()
    });
    Ok(TensorInfo { ty, dims, values })
}

/// The elements of an integer constant whose data was checked.
fn integer_values(t: &proto::TensorProto, ty: ElemType) -> Vec<i64> {
    let raw = t.raw_data();
    if raw.is_empty() {
        return match ty {
            ElemType::I64 => t.int64_data.clone(),
            _ => t.int32_data.iter().map(|&v| i64::from(v)).collect(),
        };
    }
    let size = ty.size() as usize;
    raw.chunks_exact(size)
        .map(|c| match ty {
            ElemType::I64 => i64::from_le_bytes(c.try_into().expect("8 bytes")),
            ElemType::I32 => i64::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))),
            ElemType::I8 => i64::from(c[0] as i8),
            _ => i64::from(c[0]),
        })
        .collect()
}

fn attribute(a: &proto::AttributeProto, node: &str) -> Result<Attribute, AdmissionError> {
    use proto::attribute_proto::AttributeType as T;
    let refuse = |what: &str| {
        AdmissionError::Unsupported(format!("node `{node}`: attribute `{}` {what}", a.name()))
    };
    if a.g.is_some() || !a.graphs.is_empty() {
        return Err(refuse("holds a subgraph"));
    }
    if a.sparse_tensor.is_some() || !a.sparse_tensors.is_empty() {
        return Err(refuse("holds a sparse tensor"));
    }
    if a.tp.is_some() || !a.type_protos.is_empty() {
        return Err(refuse("holds a type"));
    }
    if !a.ref_attr_name().is_empty() {
        return Err(refuse("refers to a function attribute"));
    }
    let label = format!("{node}.{}", a.name());
    // Every tensor is checked, whatever the declared type says.
    let tensors =
        a.t.iter()
            .chain(&a.tensors)
            .map(|t| constant(t, &label))
            .collect::<Result<Vec<_>, _>>()?;
    Ok(match a.type_() {
        T::INT => Attribute::Int(a.i()),
        T::INTS => Attribute::Ints(a.ints.clone()),
        T::FLOAT => Attribute::Float,
        T::FLOATS => Attribute::Floats(a.floats.clone()),
        T::TENSOR => Attribute::Tensor(
            tensors
                .into_iter()
                .next()
                .ok_or_else(|| refuse("has no tensor"))?,
        ),
        T::STRING => Attribute::Text(String::from_utf8_lossy(a.s()).into_owned()),
        T::STRINGS | T::TENSORS => Attribute::Other,
        _ => return Err(refuse("has a type the host does not admit")),
    })
}

/// Builds a [`Graph`] from a checked `GraphProto`, naming values by index.
#[derive(Default)]
struct Builder {
    names: Vec<String>,
    ids: BTreeMap<String, ValueId>,
}

impl Builder {
    /// A new value named `name`; refused if the name is taken.
    fn define(&mut self, name: &str) -> Result<ValueId, AdmissionError> {
        let id = self.names.len();
        if name.len() > MAX_VALUE_NAME_BYTES {
            return Err(AdmissionError::Graph(format!(
                "a value name is longer than {MAX_VALUE_NAME_BYTES} bytes"
            )));
        }
        if name.is_empty() {
            self.names.push(format!("<unnamed {id}>"));
            return Ok(id);
        }
        if self.ids.insert(name.to_owned(), id).is_some() {
            return Err(AdmissionError::Graph(format!(
                "value `{name}` is defined twice"
            )));
        }
        self.names.push(name.to_owned());
        Ok(id)
    }

    fn lookup(&self, name: &str, user: &str) -> Result<ValueId, AdmissionError> {
        self.ids.get(name).copied().ok_or_else(|| {
            AdmissionError::Graph(format!(
                "`{user}` uses `{name}` before it is defined (nodes must be in topological order)"
            ))
        })
    }

    fn build(mut self, g: &proto::GraphProto) -> Result<Graph, AdmissionError> {
        if !g.sparse_initializer.is_empty() {
            return Err(unsupported("sparse initializers are not admitted".into()));
        }
        if g.output.len() > MAX_GRAPH_OUTPUTS {
            return Err(AdmissionError::Graph(format!(
                "{} outputs; at most {MAX_GRAPH_OUTPUTS}",
                g.output.len()
            )));
        }
        if g.node.len() > MAX_NODES || g.initializer.len() > MAX_INITIALIZERS {
            return Err(AdmissionError::Graph(format!(
                "{} nodes and {} initializers; at most {MAX_NODES} and {MAX_INITIALIZERS}",
                g.node.len(),
                g.initializer.len()
            )));
        }
        let mut constants = Vec::with_capacity(g.initializer.len());
        for (i, t) in g.initializer.iter().enumerate() {
            let info = constant(t, &format!("initializer {i}"))?;
            constants.push((self.define(t.name())?, info));
        }
        let mut inputs = Vec::new();
        for input in &g.input {
            if self.ids.contains_key(input.name()) {
                return Err(AdmissionError::Graph(format!(
                    "input `{}` is also an initializer",
                    input.name()
                )));
            }
            let (ty, dims) = declared_type(input)?;
            inputs.push(Input {
                name: input.name().to_owned(),
                value: self.define(input.name())?,
                ty,
                dims,
            });
        }
        let mut nodes = Vec::with_capacity(g.node.len());
        for (i, n) in g.node.iter().enumerate() {
            if n.name().len() > MAX_VALUE_NAME_BYTES {
                return Err(AdmissionError::Graph(format!(
                    "a node name is longer than {MAX_VALUE_NAME_BYTES} bytes"
                )));
            }
            let label = if n.name().is_empty() {
                format!("#{i}")
            } else {
                n.name().to_owned()
            };
            let op = match n.domain() {
                "" | "ai.onnx" if n.overload().is_empty() => Op::from_name(n.op_type()),
                _ => None,
            }
            .ok_or_else(|| AdmissionError::Operator {
                node: label.clone(),
                op: format!("{}::{}", n.domain(), n.op_type()),
            })?;
            if !n.device_configurations.is_empty() {
                return Err(unsupported(format!(
                    "node `{label}`: device configurations are not admitted"
                )));
            }
            let mut attributes = BTreeMap::new();
            for a in &n.attribute {
                if attributes
                    .insert(a.name().to_owned(), attribute(a, &label)?)
                    .is_some()
                {
                    return Err(AdmissionError::Graph(format!(
                        "node `{label}` repeats attribute `{}`",
                        a.name()
                    )));
                }
            }
            let inputs = n
                .input
                .iter()
                .map(|name| match name.as_str() {
                    "" => Ok(None),
                    name => self.lookup(name, &label).map(Some),
                })
                .collect::<Result<_, _>>()?;
            let outputs = n
                .output
                .iter()
                .map(|name| self.define(name))
                .collect::<Result<_, _>>()?;
            nodes.push(Node {
                op,
                label,
                inputs,
                outputs,
                attributes,
            });
        }
        let outputs: Vec<ValueId> = g
            .output
            .iter()
            .map(|o| self.lookup(o.name(), "graph output"))
            .collect::<Result<_, _>>()?;
        let mut last_use = vec![None; self.names.len()];
        for (index, node) in nodes.iter().enumerate() {
            for &id in node.inputs.iter().flatten() {
                last_use[id] = Some(index);
            }
        }
        for &id in &outputs {
            last_use[id] = Some(usize::MAX);
        }
        Ok(Graph {
            names: self.names,
            inputs,
            constants,
            nodes,
            outputs,
            last_use,
            folded: Vec::new(),
        })
    }
}

/// The element type and dimensions a graph input declares.
fn declared_type(input: &proto::ValueInfoProto) -> Result<(ElemType, Vec<Dim>), AdmissionError> {
    use proto::tensor_shape_proto::dimension::Value as D;
    use proto::type_proto::Value;
    let fail = |reason: &str| AdmissionError::Graph(format!("input `{}` {reason}", input.name()));
    let Some(Value::TensorType(t)) = &input.type_.value else {
        return Err(fail("is not a tensor"));
    };
    let ty = ElemType::from_onnx(t.elem_type())
        .ok_or_else(|| fail("has an element type models may not use"))?;
    let shape = t
        .shape
        .as_ref()
        .ok_or_else(|| fail("does not declare its rank"))?;
    if shape.dim.len() > MAX_RANK {
        return Err(fail("has too high a rank"));
    }
    let dims = shape
        .dim
        .iter()
        .map(|d| match d.value {
            Some(D::DimValue(v)) => u64::try_from(v)
                .map(Dim::Fixed)
                .map_err(|_| fail("has a negative dimension")),
            _ => Ok(Dim::Free),
        })
        .collect::<Result<_, _>>()?;
    Ok((ty, dims))
}

/// Inputs of the graph's declared types with every free dimension `free`.
fn probe(graph: &Graph, free: u64) -> Vec<(ElemType, Vec<u64>)> {
    graph
        .inputs
        .iter()
        .map(|i| {
            let dims = i
                .dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Free => free,
                })
                .collect();
            (i.ty, dims)
        })
        .collect()
}

/// Plans the graph with every free dimension 1: shapes must be inferable,
/// the outputs of types the sandbox returns (integers only where they do
/// not come from floats), and what ONNX Runtime folds at load bounded.
/// Records which nodes it folds.
fn check_plan(graph: &mut Graph) -> Result<(), AdmissionError> {
    let plan = graph.plan(&probe(graph, 1))?;
    let float_derived = float_derived(graph, &plan.values);
    for (&id, out) in graph.outputs.iter().zip(&plan.outputs) {
        let name = graph.names[id].clone();
        let reason = match out.ty {
            ElemType::F32 => None,
            ElemType::I64 | ElemType::I32 | ElemType::U8 if float_derived[id] => Some(
                "an integer computed from floating-point values would carry bits below the output grid",
            ),
            ElemType::I64 | ElemType::I32 | ElemType::U8 => None,
            _ => Some("element type not returned by the sandbox (fp32, i64, i32 or u8)"),
        };
        if let Some(reason) = reason {
            return Err(AdmissionError::Output {
                name,
                reason: reason.into(),
            });
        }
    }
    fold(graph, &plan)
}

/// Operators ONNX Runtime leaves unfolded (it keeps quantisation nodes for
/// its quantised kernels).
fn never_folded(op: Op) -> bool {
    matches!(
        op,
        Op::QuantizeLinear | Op::DequantizeLinear | Op::DynamicQuantizeLinear
    )
}

/// Bounds what ONNX Runtime may compute while loading the model, and marks
/// the nodes it surely folds, whose work runs then pay nothing for.
///
/// Two estimates, one on each side. For the bound, every node all of whose
/// inputs are constants, or which reads only a shape, counts (ONNX Runtime
/// folds at most these). For the discount, a node counts only if ONNX
/// Runtime certainly folds it: its inputs are initializers or folded, it is
/// not a quantisation node, its outputs fit the folding cap, and a `Shape`
/// or `Size` counts only if its input's shape is the same for every input
/// size (checked by planning with free dimensions 2 and 3).
fn fold(graph: &mut Graph, plan: &Plan) -> Result<(), AdmissionError> {
    let fixed_shape = match (graph.plan(&probe(graph, 2)), graph.plan(&probe(graph, 3))) {
        (Ok(a), Ok(b)) => a
            .values
            .iter()
            .zip(&b.values)
            .map(|(a, b)| a.dims == b.dims)
            .collect(),
        _ => vec![false; graph.names.len()],
    };
    let mut constant = vec![false; graph.names.len()];
    let mut folded_value = vec![false; graph.names.len()];
    for (id, _) in &graph.constants {
        constant[*id] = true;
        folded_value[*id] = true;
    }
    let (mut work, mut bytes) = (0u64, 0u64);
    let mut folded = Vec::with_capacity(graph.nodes.len());
    for (index, node) in graph.nodes.iter().enumerate() {
        let inputs: Vec<usize> = node.inputs.iter().flatten().copied().collect();
        let reads_shape = matches!(node.op, Op::Shape | Op::Size);
        let is_constant = reads_shape || inputs.iter().all(|&i| constant[i]);
        let out_bytes: u64 = node.outputs.iter().map(|&o| plan.values[o].bytes()).sum();
        let folds = if reads_shape {
            inputs.iter().all(|&i| fixed_shape[i])
        } else {
            inputs.iter().all(|&i| folded_value[i])
                && !never_folded(node.op)
                && out_bytes <= super::MAX_TENSOR_BYTES
        };
        if is_constant {
            work = work.saturating_add(plan.node_work[index]);
            bytes = bytes.saturating_add(out_bytes);
        }
        for &o in &node.outputs {
            constant[o] = is_constant;
            folded_value[o] = folds;
        }
        folded.push(folds);
    }
    if work > MAX_CONSTANT_WORK || bytes > MAX_CONSTANT_BYTES {
        return Err(AdmissionError::ConstantWork { work, bytes });
    }
    graph.folded = folded;
    Ok(())
}

/// Which values depend on floating-point data: floats themselves, and
/// whatever is computed from them, except shapes.
fn float_derived(graph: &Graph, values: &[TensorInfo]) -> Vec<bool> {
    let mut derived: Vec<bool> = values.iter().map(|v| v.ty == ElemType::F32).collect();
    for node in &graph.nodes {
        let from_floats = !matches!(node.op, Op::Shape | Op::Size)
            && node.inputs.iter().flatten().any(|&i| derived[i]);
        for &id in &node.outputs {
            derived[id] = from_floats || values[id].ty == ElemType::F32;
        }
    }
    derived
}

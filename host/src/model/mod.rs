//! Untrusted ONNX models: admission, shape inference and cost.
//!
//! A model in an encoder package is written by whoever signed the package,
//! and ONNX Runtime is native code that trusts the models it loads: a
//! tensor can name an external file to read, a `Loop` can run for as long
//! as its data says, a constant can be folded into gigabytes at load time.
//! So the host parses every model itself first ([`admit`]), with its own
//! copy of the ONNX schema, and refuses anything it cannot bound:
//!
//! * wire formats whose parse would cost far more memory than their size
//!   (checked by a first pass, `prescan`, before anything is allocated);
//! * unknown fields anywhere (ONNX Runtime's newer schema could read them),
//!   external or segmented tensor data, sparse tensors, subgraphs,
//!   functions, training information, non-default operator domains;
//! * operators off the allow-list (`ops`), among them all control flow and
//!   all random operators, and integer divisions by anything but a known
//!   constant other than 0 and -1 (a CPU fault in ONNX Runtime);
//! * graphs whose shapes cannot be inferred from the input shapes, whose
//!   tensors exceed a size cap, whose runs would hold too much at once, or
//!   whose constant part is too much work or memory to fold;
//! * integer outputs computed from floats (they would leak bits below the
//!   float output grid).
//!
//! An admitted model carries its graph: for any input shapes, the host
//! plans the output shapes and the work of a run, and charges fuel for it
//! before running it ([`Admitted::fuel`] tells the amount).

mod admission;
mod graph;
mod infer;
mod ops;
mod prescan;
pub(crate) mod proto;

pub use admission::{
    AdmissionError, Admitted, IR_VERSIONS, MAX_CONSTANT_BYTES, MAX_CONSTANT_ELEMENTS,
    MAX_CONSTANT_WORK, MAX_GRAPH_OUTPUTS, MAX_MODEL_BYTES, MAX_NODES, MAX_RANK, MAX_REFUSAL_BYTES,
    MAX_VALUE_NAME_BYTES, OPSETS, admit,
};
pub(crate) use graph::{ElemType, Graph, TensorInfo};
pub(crate) use infer::ShapeError;
pub use infer::{MAX_LIVE_BYTES, MAX_TENSOR_BYTES, WORK_PER_FUEL};
pub use prescan::MAX_PARSE_OVERHEAD;

/// Models for the host's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::proto::{
        GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto, TypeProto,
        ValueInfoProto, tensor_shape_proto, type_proto,
    };
    use protobuf::{Message, MessageField};

    /// `y = x` on a vector of floats, of `length` or of any length (`None`),
    /// in a graph called `name` (which tells such models apart).
    pub(crate) fn identity(name: &str, length: Option<i64>) -> Vec<u8> {
        let value = |name: &str| {
            let mut dim = tensor_shape_proto::Dimension::new();
            dim.value = Some(match length {
                Some(n) => tensor_shape_proto::dimension::Value::DimValue(n),
                None => tensor_shape_proto::dimension::Value::DimParam("n".into()),
            });
            let mut shape = TensorShapeProto::new();
            shape.dim = vec![dim];
            let mut tensor = type_proto::Tensor::new();
            tensor.elem_type = Some(1);
            tensor.shape = MessageField::some(shape);
            let mut ty = TypeProto::new();
            ty.value = Some(type_proto::Value::TensorType(tensor));
            let mut info = ValueInfoProto::new();
            info.name = Some(name.into());
            info.type_ = MessageField::some(ty);
            info
        };
        let mut node = NodeProto::new();
        node.op_type = Some("Identity".into());
        node.input = vec!["x".into()];
        node.output = vec!["y".into()];
        let mut graph = GraphProto::new();
        graph.name = Some(name.into());
        graph.node = vec![node];
        graph.input = vec![value("x")];
        graph.output = vec![value("y")];
        let mut opset = OperatorSetIdProto::new();
        opset.version = Some(17);
        let mut model = ModelProto::new();
        model.ir_version = Some(8);
        model.opset_import = vec![opset];
        model.graph = MessageField::some(graph);
        model.write_to_bytes().expect("a model in memory encodes")
    }
}

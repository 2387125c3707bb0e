//! ONNX models written byte by byte: a protobuf writer and the few
//! builders the hostile-model tests and the benchmarks need.

/// A protobuf message, written field by field.
#[derive(Default, Clone)]
pub struct Pb(pub Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    pub fn int(mut self, field: u64, v: i64) -> Pb {
        self.varint(field << 3);
        self.varint(v as u64);
        self
    }

    pub fn bytes(mut self, field: u64, b: &[u8]) -> Pb {
        self.varint((field << 3) | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    pub fn str(self, field: u64, s: &str) -> Pb {
        self.bytes(field, s.as_bytes())
    }

    pub fn msg(self, field: u64, m: Pb) -> Pb {
        self.bytes(field, &m.0)
    }
}

pub const FLOAT: i64 = 1;
pub const INT64: i64 = 7;

pub fn f32s(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn i64s(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `TensorProto` with raw data.
pub fn tensor(name: &str, ty: i64, dims: &[i64], raw: &[u8]) -> Pb {
    let t = dims.iter().fold(Pb::default(), |t, &d| t.int(1, d));
    t.int(2, ty).str(8, name).bytes(9, raw)
}

/// A tensor whose data is "in" `path`, relative to wherever ONNX Runtime
/// looks (the process's working directory, without admission).
pub fn external(name: &str, path: &str) -> Pb {
    let entry = |k: &str, v: &str| Pb::default().str(1, k).str(2, v);
    Pb::default()
        .int(1, 64)
        .int(2, 2) // UINT8
        .str(8, name)
        .msg(13, entry("location", path))
        .msg(13, entry("length", "64"))
        .int(14, 1) // EXTERNAL
}

pub fn attr_int(name: &str, v: i64) -> Pb {
    Pb::default().str(1, name).int(20, 2).int(3, v)
}

pub fn attr_ints(name: &str, values: &[i64]) -> Pb {
    let a = Pb::default().str(1, name).int(20, 7);
    values.iter().fold(a, |a, &v| a.int(8, v))
}

pub fn attr_tensor(name: &str, t: Pb) -> Pb {
    Pb::default().str(1, name).int(20, 4).msg(5, t)
}

pub fn attr_graph(name: &str, g: Pb) -> Pb {
    Pb::default().str(1, name).int(20, 5).msg(6, g)
}

pub fn node(op: &str, inputs: &[&str], outputs: &[&str], attributes: Vec<Pb>) -> Pb {
    let n = inputs.iter().fold(Pb::default(), |n, i| n.str(1, i));
    let n = outputs.iter().fold(n, |n, o| n.str(2, o)).str(4, op);
    attributes.into_iter().fold(n, |n, a| n.msg(5, a))
}

/// `ValueInfoProto` of a tensor; `None` dimensions are free.
pub fn value(name: &str, ty: i64, dims: &[Option<i64>]) -> Pb {
    let shape = dims.iter().fold(Pb::default(), |s, d| {
        s.msg(
            1,
            match d {
                Some(v) => Pb::default().int(1, *v),
                None => Pb::default().str(2, "n"),
            },
        )
    });
    let tensor_type = Pb::default().int(1, ty).msg(2, shape);
    Pb::default()
        .str(1, name)
        .msg(2, Pb::default().msg(1, tensor_type))
}

/// A graph from `x` (fp32, any length) to `y`.
pub fn graph(nodes: Vec<Pb>, initializers: Vec<Pb>, y: Pb) -> Pb {
    let g = nodes.into_iter().fold(Pb::default(), |g, n| g.msg(1, n));
    let g = initializers
        .into_iter()
        .fold(g.str(2, "g"), |g, t| g.msg(5, t));
    g.msg(11, value("x", FLOAT, &[None])).msg(12, y)
}

pub fn y_like_x() -> Pb {
    value("y", FLOAT, &[None])
}

/// A model of IR 8 importing `opsets` (domain, version) around `graph`.
pub fn model_importing(opsets: &[(&str, i64)], graph: Pb) -> Pb {
    let model = opsets
        .iter()
        .fold(Pb::default().int(1, 8), |m, (domain, version)| {
            m.msg(8, Pb::default().str(1, domain).int(2, *version))
        });
    model.msg(7, graph)
}

/// A model of IR 8, opset 17, around `graph`.
pub fn model_of(graph: Pb) -> Pb {
    model_importing(&[("", 17)], graph)
}

pub fn model(graph: Pb) -> Vec<u8> {
    model_of(graph).0
}

/// The graph `y = -x`.
pub fn negation() -> Pb {
    graph(
        vec![node("Neg", &["x"], &["y"], vec![])],
        vec![],
        y_like_x(),
    )
}

/// `y = -x`: a model admission accepts.
pub fn negate() -> Vec<u8> {
    model(negation())
}

/// Sixteen 1024 × 1024 products of a tensor expanded from the input: 34
/// GFLOP, about 2.3 billion fuel, and far more than 50 ms of ONNX Runtime on
/// any CPU this runs on.
pub fn slow() -> Vec<u8> {
    let products = (0..16).map(|i| {
        let from = if i == 0 {
            "e".to_string()
        } else {
            format!("p{i}")
        };
        node("MatMul", &[&from, "e"], &[&format!("p{}", i + 1)], vec![])
    });
    let nodes = std::iter::once(node("Expand", &["x", "s"], &["e"], vec![]))
        .chain(products)
        .chain([node(
            "ReduceSum",
            &["p16"],
            &["y"],
            vec![attr_int("keepdims", 0)],
        )])
        .collect();
    model(graph(
        nodes,
        vec![tensor("s", INT64, &[2], &i64s(&[1024, 1024]))],
        value("y", FLOAT, &[]),
    ))
}

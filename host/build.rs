//! Generates the ONNX protobuf types from the vendored schema
//! `proto/onnx-ml.proto` (ONNX 1.23, Apache-2.0), with rust-protobuf's pure
//! Rust parser: no `protoc` needed. Model admission parses untrusted models
//! with these types before ONNX Runtime ever sees them.

fn main() {
    protobuf_codegen::Codegen::new()
        .pure()
        .include("proto")
        .input("proto/onnx-ml.proto")
        // The schema asks for the lite runtime; admission needs reflection
        // to find unknown fields in every message.
        .customize(protobuf_codegen::Customize::default().lite_runtime(false))
        .cargo_out_dir("onnx")
        .run_from_script();
}

//! Bodies of `POST /v1/embeddings`, on arbitrary bytes: never a panic;
//! every refusal is a 4xx with a reason; whatever is accepted respects the
//! request limits and reads the same again from its canonical form.

use soma_execution::Parameters;
use soma_validator::api::{EmbeddingsCall, MAX_INPUTS};

/// Checks one input.
pub fn check(bytes: &[u8]) {
    let parameters = Parameters::default();
    match EmbeddingsCall::parse(bytes, &parameters) {
        Ok(call) => {
            assert!(
                (1..=MAX_INPUTS).contains(&call.inputs.len()),
                "{} inputs accepted",
                call.inputs.len()
            );
            for text in &call.inputs {
                assert!(!text.trim().is_empty(), "a blank input accepted");
                assert!(
                    text.len() <= parameters.max_data_bytes as usize,
                    "an input of {} bytes accepted",
                    text.len()
                );
            }
            let format = if call.base64 { "base64" } else { "float" };
            let canonical = serde_json::json!({"input": call.inputs, "encoding_format": format});
            let again = EmbeddingsCall::parse(canonical.to_string().as_bytes(), &parameters);
            assert_eq!(
                again.as_ref(),
                Ok(&call),
                "the canonical form reads otherwise"
            );
        }
        Err(refusal) => {
            assert!(
                refusal.status.is_client_error(),
                "a bad body answered {refusal}"
            );
            assert!(!refusal.reason.is_empty(), "a refusal without a reason");
        }
    }
}

/// Bodies as OpenAI's clients send them, and some the API refuses.
pub fn seeds() -> Vec<Vec<u8>> {
    [
        r#"{"input":"The food was delicious and the waiter was kind.","model":"soma"}"#,
        r#"{"input":["first text","second text"],"model":"soma","encoding_format":"base64"}"#,
        r#"{"input":"dimensions set","dimensions":384,"encoding_format":"float","user":"u-1"}"#,
        r#"{"input":[[1,2,3],[4]],"model":"soma"}"#,
        r#"{"input":"  ","model":"other"}"#,
        r#"{"input":["a\u00e9\ud83d\ude00",""],"encoding_format":"hex"}"#,
    ]
    .into_iter()
    .map(|body| body.as_bytes().to_vec())
    .chain([0, 1].map(|over| {
        // An input at the network's limit, and one byte over it.
        let len = Parameters::default().max_data_bytes as usize + over;
        serde_json::json!({"input": "a".repeat(len)})
            .to_string()
            .into_bytes()
    }))
    .collect()
}

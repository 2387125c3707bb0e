//! What a guest hands back, steered by the fuzzer: the `scripted-encoder`
//! example reads its input as a script of what `embed` answers (any count,
//! dimension and values of vectors, either error, log calls; see
//! [`scripted_encoder`]), and the host's verdict must be the one its rules
//! give for that answer, as this target restates them: the first broken
//! rule named, errors and log messages cut at character boundaries to
//! their limits, valid vectors passed on bit for bit.

use scripted_encoder::{Answer, DIMENSION, MAX_INPUT_BYTES, Plan};
use soma_host::log::{MAX_LOG_MESSAGE_BYTES, MAX_LOG_RECORDS};
use soma_host::{Encoder, Error, InvalidOutput, Limits, MAX_REFUSAL_BYTES, Seed};
use std::sync::OnceLock;

fn encoder() -> &'static Encoder {
    static ENCODER: OnceLock<Encoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        let bytes = crate::example_component("scripted-encoder");
        crate::engine()
            .load(&bytes)
            .expect("the scripted encoder loads")
    })
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary, and whether it is all of `s`.
fn prefix(s: &str, max: usize) -> (&str, bool) {
    let end = (0..=s.len().min(max))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    (&s[..end], end == s.len())
}

/// The refusal the host reports for an encoder's own error.
fn refusal(blamed: Option<u32>, message: &str) -> String {
    let (kept, whole) = prefix(message, MAX_REFUSAL_BYTES);
    let blamed = blamed.map(|i| format!("input {i}: ")).unwrap_or_default();
    format!("{blamed}{kept}{}", if whole { "" } else { " [cut]" })
}

/// The first rule `vectors` break, for a batch of `batch` inputs.
fn broken(vectors: &[Vec<f32>], batch: usize) -> Option<InvalidOutput> {
    if vectors.len() != batch {
        return Some(InvalidOutput::WrongCount {
            expected: batch,
            actual: vectors.len(),
        });
    }
    vectors.iter().enumerate().find_map(|(index, vector)| {
        if vector.len() != DIMENSION as usize {
            return Some(InvalidOutput::WrongDimension {
                index,
                expected: DIMENSION as usize,
                actual: vector.len(),
            });
        }
        let position = vector.iter().position(|x| !x.is_finite())?;
        Some(InvalidOutput::NonFinite {
            index,
            position,
            value: vector[position],
        })
    })
}

/// Checks one input: a batch of one to three copies of it (the count from
/// its length), of which the encoder reads the first.
pub fn check(bytes: &[u8]) {
    let batch = 1 + bytes.len() % 3;
    let inputs = vec![bytes.to_vec(); batch];
    let result = encoder().embed(&inputs, &Limits::default(), Seed::from(0));
    if bytes.len() > MAX_INPUT_BYTES as usize {
        assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
        return;
    }
    let plan = Plan::read(bytes);
    match (plan.answer, result) {
        (Answer::Internal(message), Err(Error::Refused(got))) => {
            assert_eq!(got, refusal(None, &message));
        }
        (Answer::InvalidInput { index, reason }, Err(Error::Refused(got))) => {
            assert_eq!(got, refusal(Some(index), &reason));
        }
        (Answer::Vectors(vectors), result) => match (broken(&vectors, batch), result) {
            (Some(expected), Err(Error::InvalidOutput(got))) => {
                // Compared by description: a NaN is not equal to itself.
                assert_eq!(got.to_string(), expected.to_string());
            }
            (None, Ok(out)) => {
                assert_eq!(
                    crate::bits(&out.vectors),
                    crate::bits(&vectors),
                    "the vectors changed on the way"
                );
                let kept = plan.logs.len().min(MAX_LOG_RECORDS);
                assert_eq!(out.logs.len(), kept);
                assert_eq!(out.logs_dropped, (plan.logs.len() - kept) as u64);
                for (record, (level, message)) in out.logs.iter().zip(&plan.logs) {
                    assert_eq!(record.level as u8, *level);
                    assert_eq!(record.message, prefix(message, MAX_LOG_MESSAGE_BYTES).0);
                }
            }
            (expected, got) => panic!("expected {expected:?}, the host answered {got:?}"),
        },
        (answer, got) => panic!("the encoder answered {answer:?}, the host reported {got:?}"),
    }
}

/// Scripts for a valid answer with logs, each broken rule, and each error.
pub fn seeds() -> Vec<Vec<u8>> {
    let vector = |dimension: u16, value: f32| {
        [
            &[b'v'][..],
            &dimension.to_le_bytes(),
            &value.to_bits().to_le_bytes(),
        ]
        .concat()
    };
    let set = |position: u16, value: f32| {
        [
            &[b'p'][..],
            &position.to_le_bytes(),
            &value.to_bits().to_le_bytes(),
        ]
        .concat()
    };
    let log = |level: u8, len: u16| [&[b'l', level][..], &len.to_le_bytes()].concat();
    vec![
        [log(2, 12), vector(8, 0.25), set(3, -1.0), log(4, 1500)].concat(),
        [vector(8, 1.0), vector(8, 2.0)].concat(),
        vector(7, 1.0),
        [vector(8, 1.0), set(5, f32::NAN)].concat(),
        [vector(8, 1.0), set(1, f32::INFINITY)].concat(),
        [&[b'e'][..], &2000u16.to_le_bytes()].concat(),
        [&[b'i'][..], &3u32.to_le_bytes(), &20u16.to_le_bytes()].concat(),
        (0..70)
            .flat_map(|_| log(1, 3))
            .chain(vector(8, 0.5))
            .collect(),
        // Batches of two (lengths 16 and 22): valid, and a bad second
        // vector (zeros are unknown tags, skipped).
        [vector(8, 1.0), vector(8, 2.0), vec![0, 0]].concat(),
        [
            vector(8, 1.0),
            vector(8, 2.0),
            set(0, f32::NEG_INFINITY),
            vec![0],
        ]
        .concat(),
        // One byte more than the encoder takes.
        vec![b'?'; MAX_INPUT_BYTES as usize + 1],
    ]
}

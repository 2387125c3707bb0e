//! What validators send each other over HTTP/1.1, and how they prove who
//! they are.
//!
//! ```text
//! GET  /consensus/v1/challenge answer: 32 hex digits, this connection's challenge
//! POST /consensus/v1/block   body: a signed block's wire bytes
//! POST /consensus/v1/fetch   body: u16 count ‖ reference* ‖ u16 count ‖ u32 known round*
//!                            answer: blocks
//! POST /consensus/v1/rounds  body: u32 first round
//!                            answer: blocks
//! blocks = u32 count ‖ (u32 length ‖ block)*
//! ```
//!
//! A fetch asks for given blocks and the history the requester lacks; a
//! rounds request replays whole rounds from the peer's store, for a
//! validator that fell far behind. The requester keeps only what it asked
//! for (see [`FetchRequest::select`] and [`RoundsRequest::select`]).
//!
//! Peers prove who they are once per connection. The server picks 16
//! random bytes for each TCP connection it accepts (the challenge, served
//! at `/consensus/v1/challenge`); every peer request on that connection
//! carries `soma-peer` (the sender's authority index), `soma-committee`
//! (the sender's [`Committee::digest`]: chain, epoch, protocol constants
//! and members) and `soma-auth`: the sender's signature, in
//! [`Domain::PeerAuth`], over sender ‖ receiver ‖ challenge ‖ committee
//! digest. The server checks it on the connection's first peer request;
//! seen anywhere else the token is worthless, because every other
//! connection has another challenge. A peer that runs another chain, epoch
//! or protocol constants is refused with both digests named (it would
//! commit other sub-DAGs than this node). Without TLS a man in the middle
//! could still take over an authenticated connection; blocks stay
//! authenticated by their own signatures either way.

use crate::block::{BlockRef, MAX_BLOCK_BYTES, Round, SignedBlock};
use crate::committee::{AuthorityIndex, Committee};
use crate::store::{Store, StoreError};
use soma_codec::{Decode, DecodeError, Encode, Reader, Writer};
use soma_crypto::{Domain, SecretKey, Signature};
use std::collections::{BTreeMap, BTreeSet};

/// Path that answers with the connection's challenge.
pub const CHALLENGE_PATH: &str = "/consensus/v1/challenge";
/// Path that takes one block.
pub const BLOCK_PATH: &str = "/consensus/v1/block";
/// Path that answers block fetches.
pub const FETCH_PATH: &str = "/consensus/v1/fetch";
/// Path that answers rounds requests.
pub const ROUNDS_PATH: &str = "/consensus/v1/rounds";
/// Largest block request body.
pub const MAX_BLOCK_BODY: usize = MAX_BLOCK_BYTES + 64;
/// Most references in one fetch.
pub const MAX_FETCH_REFERENCES: usize = 1_000;
/// Largest fetch request body.
pub const MAX_FETCH_BODY: usize = 4 + 44 * MAX_FETCH_REFERENCES;
/// Most blocks in one fetch answer.
pub const FETCH_LIMIT: usize = 500;
/// Most blocks in any answer.
pub const MAX_ANSWER_BLOCKS: usize = 10_000;
/// Largest answer of either kind.
pub const MAX_FETCH_ANSWER: usize = 64 << 20;
/// Bytes of blocks a rounds answer stops at (after its first two whole
/// rounds).
pub const ROUNDS_ANSWER_BYTES: usize = 8 << 20;

/// Header naming the sending validator.
pub const PEER_HEADER: &str = "soma-peer";
/// Header with the sender's committee digest.
pub const COMMITTEE_HEADER: &str = "soma-committee";
/// Header with the signed token.
pub const AUTH_HEADER: &str = "soma-auth";

/// Why a peer's message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Authentication headers are missing or wrong.
    #[error("peer authentication failed: {0}")]
    Unauthenticated(String),
    /// The body is not what the path takes.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// The headers one validator sends to one peer.
#[derive(Debug, Clone)]
pub struct PeerToken {
    /// `soma-peer`.
    pub peer: String,
    /// `soma-committee`.
    pub committee: String,
    /// `soma-auth`.
    pub auth: String,
}

/// The authentication headers of a received request, as found.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerHeaders<'a> {
    /// `soma-peer`.
    pub peer: Option<&'a str>,
    /// `soma-committee`.
    pub committee: Option<&'a str>,
    /// `soma-auth`.
    pub auth: Option<&'a str>,
}

impl PeerToken {
    /// The token `sender` (holding `key`) of `committee` presents on a
    /// connection to `receiver` that has `challenge`.
    pub fn sign(
        key: &SecretKey,
        committee: &Committee,
        sender: AuthorityIndex,
        receiver: AuthorityIndex,
        challenge: [u8; 16],
    ) -> PeerToken {
        let digest = committee.digest();
        let message = token_message(sender, receiver, challenge, digest);
        let signature = key.sign(Domain::PeerAuth, &message);
        PeerToken {
            peer: sender.0.to_string(),
            committee: hex::encode(digest),
            auth: hex::encode(signature.0),
        }
    }

    /// The headers this token sends, by name.
    pub fn headers(&self) -> [(&'static str, &str); 3] {
        [
            (PEER_HEADER, &self.peer),
            (COMMITTEE_HEADER, &self.committee),
            (AUTH_HEADER, &self.auth),
        ]
    }

    /// Checks headers received by `receiver` of `committee` on a
    /// connection with `challenge`; returns the sender.
    pub fn verify(
        headers: PeerHeaders<'_>,
        receiver: AuthorityIndex,
        committee: &Committee,
        challenge: [u8; 16],
    ) -> Result<AuthorityIndex, WireError> {
        let missing = |h: &str| WireError::Unauthenticated(format!("no {h} header"));
        let sender = headers
            .peer
            .ok_or_else(|| missing(PEER_HEADER))?
            .parse::<u32>()
            .map(AuthorityIndex)
            .map_err(|_| WireError::Unauthenticated(format!("{PEER_HEADER} is not an index")))?;
        let key = committee.key(sender).ok_or_else(|| {
            WireError::Unauthenticated(format!("validator {} is not in the committee", sender.0))
        })?;
        let theirs: [u8; 32] = hex_array(
            headers.committee.ok_or_else(|| missing(COMMITTEE_HEADER))?,
            COMMITTEE_HEADER,
        )?;
        if theirs != committee.digest() {
            return Err(WireError::Unauthenticated(format!(
                "validator {} runs committee {} (chain, epoch, protocol constants, members), \
                 this node runs {}",
                sender.0,
                hex::encode(&theirs[..8]),
                hex::encode(&committee.digest()[..8])
            )));
        }
        let signature: [u8; 64] = hex_array(
            headers.auth.ok_or_else(|| missing(AUTH_HEADER))?,
            AUTH_HEADER,
        )?;
        key.verify(
            Domain::PeerAuth,
            &token_message(sender, receiver, challenge, theirs),
            &Signature(signature),
        )
        .map_err(|_| WireError::Unauthenticated(format!("bad token for validator {}", sender.0)))?;
        Ok(sender)
    }
}

fn token_message(
    sender: AuthorityIndex,
    receiver: AuthorityIndex,
    challenge: [u8; 16],
    committee: [u8; 32],
) -> Vec<u8> {
    [
        &sender.0.to_le_bytes()[..],
        &receiver.0.to_le_bytes(),
        &challenge,
        &committee,
    ]
    .concat()
}

/// Parses a challenge as served at [`CHALLENGE_PATH`].
pub fn parse_challenge(text: &str) -> Result<[u8; 16], WireError> {
    hex_array(text.trim(), "the challenge")
}

fn hex_array<const N: usize>(text: &str, header: &str) -> Result<[u8; N], WireError> {
    hex::decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| WireError::Unauthenticated(format!("{header} is not {N} hex bytes")))
}

/// A request for blocks: these references, and whatever of their history
/// the requester lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// The blocks wanted.
    pub references: Vec<BlockRef>,
    /// Per author, the round of the requester's highest block from it.
    pub known_rounds: Vec<Round>,
}

impl FetchRequest {
    /// The wire form (at most [`MAX_FETCH_REFERENCES`] references).
    pub fn encode(&self) -> Vec<u8> {
        let references = &self.references[..self.references.len().min(MAX_FETCH_REFERENCES)];
        let rounds = &self.known_rounds[..self.known_rounds.len().min(MAX_FETCH_REFERENCES)];
        let mut w = Writer::new();
        w.count16(references.len());
        references.iter().for_each(|r| r.encode(&mut w));
        w.count16(rounds.len());
        w.u32s(rounds.iter().copied());
        w.into_bytes()
    }

    /// Parses the wire form.
    pub fn decode(bytes: &[u8]) -> Result<FetchRequest, WireError> {
        let malformed = |e: DecodeError| WireError::Malformed(format!("fetch request: {e}"));
        let mut r = Reader::new(bytes);
        let max = MAX_FETCH_REFERENCES as u16;
        let count = r
            .count16("references", max, BlockRef::ENCODED_BYTES)
            .map_err(malformed)?;
        let references = (0..count)
            .map(|_| BlockRef::decode(&mut r))
            .collect::<Result<_, _>>()
            .map_err(malformed)?;
        let count = r.count16("known rounds", max, 4).map_err(malformed)?;
        let known_rounds = r.u32s(count, "known round").map_err(malformed)?.collect();
        r.finish().map_err(malformed)?;
        Ok(FetchRequest {
            references,
            known_rounds,
        })
    }

    /// The answer from `store`: each of the references it holds, then
    /// every ancestor the requester lacks (above its known round for that
    /// author), lowest rounds first, at most `limit` blocks and
    /// [`MAX_FETCH_ANSWER`] bytes in all. A requester far behind gets whole
    /// chains in one answer, and what it named comes first.
    pub fn answer(&self, store: &dyn Store, limit: usize) -> Result<Vec<SignedBlock>, StoreError> {
        // The named blocks first, each looked up before any walk.
        let mut named = Vec::new();
        for reference in &self.references {
            // Genesis blocks are not stored (every validator has them), nor
            // blocks below the store's retention.
            if let Some(block) = store.block(reference)? {
                named.push(block);
            }
        }
        let mut found = BTreeMap::new();
        let mut bytes = 0;
        let mut stack: Vec<BlockRef> = named
            .iter()
            .flat_map(|b| b.block().parents.iter().filter(|p| self.lacks(p)))
            .copied()
            .collect();
        while let Some(reference) = stack.pop() {
            if found.contains_key(&reference) || self.references.contains(&reference) {
                continue;
            }
            let Some(block) = store.block(&reference)? else {
                continue;
            };
            stack.extend(block.block().parents.iter().filter(|p| self.lacks(p)));
            bytes += block.wire_size();
            found.insert(reference, block);
            // The walk never needs much more than `limit` blocks past the
            // lowest ones, so it stops early on long histories, and on
            // large blocks before they take much memory.
            if found.len() > 4 * limit || bytes > 2 * MAX_FETCH_ANSWER {
                break;
            }
        }
        let ancestors = found.into_values();
        Ok(within_answer(
            named.into_iter().chain(ancestors).take(limit),
        ))
    }

    /// Whether the requester said it lacks `reference`.
    fn lacks(&self, reference: &BlockRef) -> bool {
        self.known_rounds
            .get(reference.author.0 as usize)
            .is_none_or(|known| reference.round > *known)
    }

    /// Of an answer's `blocks` (decoded, not yet verified), those this
    /// request asked for: the references, and the ancestors of those the
    /// requester lacks. Returns them and how many others were left out.
    /// A block whose reference was asked for has the asked-for content
    /// (the reference is its digest), so its parents can be followed
    /// before its signature is checked.
    pub fn select(&self, mut blocks: Vec<SignedBlock>) -> (Vec<SignedBlock>, usize) {
        blocks.sort_by_key(|b| std::cmp::Reverse(b.reference()));
        let mut wanted: BTreeSet<BlockRef> = self.references.iter().copied().collect();
        let before = blocks.len();
        blocks.retain(|block| {
            let keep = wanted.remove(&block.reference());
            if keep {
                let parents = block.block().parents.iter();
                wanted.extend(parents.filter(|p| self.lacks(p)));
            }
            keep
        });
        let left_out = before - blocks.len();
        (blocks, left_out)
    }
}

/// A request to replay whole rounds from a peer's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundsRequest {
    /// The first round wanted.
    pub from: Round,
}

impl RoundsRequest {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        self.from.to_le_bytes().to_vec()
    }

    /// Parses the wire form.
    pub fn decode(bytes: &[u8]) -> Result<RoundsRequest, WireError> {
        let malformed = |e: DecodeError| WireError::Malformed(format!("rounds request: {e}"));
        let mut r = Reader::new(bytes);
        let from = r.u32("first round").map_err(malformed)?;
        r.finish().map_err(malformed)?;
        Ok(RoundsRequest { from })
    }

    /// The answer from `store`: whole rounds from `from` on, lowest
    /// first, as many as fit in [`ROUNDS_ANSWER_BYTES`] (at least two);
    /// an answer's own limits ([`MAX_ANSWER_BLOCKS`], [`MAX_FETCH_ANSWER`])
    /// may cut the last round short.
    pub fn answer(&self, store: &dyn Store) -> Result<Vec<SignedBlock>, StoreError> {
        let blocks = store.rounds_from(self.from, ROUNDS_ANSWER_BYTES, MAX_FETCH_ANSWER)?;
        Ok(within_answer(blocks))
    }

    /// Whether an answer shows that the peer no longer keeps the rounds
    /// the requester needs next: its lowest block is above the round
    /// after `from`. Replaying rounds cannot bring the requester back
    /// then; a [`Checkpoint`](crate::Checkpoint) can.
    pub fn beyond_retention(&self, blocks: &[SignedBlock]) -> bool {
        blocks
            .iter()
            .map(|b| b.reference().round)
            .min()
            .is_some_and(|lowest| lowest > self.from + 1)
    }

    /// Of an answer's `blocks`, those of the rounds asked for; and how
    /// many others were left out.
    pub fn select(&self, mut blocks: Vec<SignedBlock>) -> (Vec<SignedBlock>, usize) {
        let before = blocks.len();
        blocks.retain(|b| b.reference().round >= self.from);
        let left_out = before - blocks.len();
        (blocks, left_out)
    }
}

/// The first of `blocks` that fit in an answer: at most
/// [`MAX_ANSWER_BLOCKS`] and [`MAX_FETCH_ANSWER`] bytes.
fn within_answer(blocks: impl IntoIterator<Item = SignedBlock>) -> Vec<SignedBlock> {
    let mut size = 4;
    blocks
        .into_iter()
        .take(MAX_ANSWER_BLOCKS)
        .take_while(|block| {
            size += 4 + block.wire_size();
            size <= MAX_FETCH_ANSWER
        })
        .collect()
}

/// Encodes an answer from blocks' wire bytes (as [`FetchRequest::answer`]
/// and [`RoundsRequest::answer`] give them, within an answer's limits).
pub fn encode_blocks<'a>(blocks: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let blocks: Vec<&[u8]> = blocks.into_iter().collect();
    let mut w = Writer::new();
    w.count32(blocks.len());
    blocks.iter().for_each(|block| w.bytes32(block));
    w.into_bytes()
}

/// Splits an answer into blocks' wire bytes (each still to decode and
/// verify).
pub fn decode_blocks(bytes: &[u8]) -> Result<Vec<&[u8]>, WireError> {
    let malformed = |e: DecodeError| WireError::Malformed(format!("answer: {e}"));
    let mut r = Reader::new(bytes);
    let count = r
        .count32("block count", MAX_ANSWER_BLOCKS as u32, 4)
        .map_err(malformed)?;
    let blocks = (0..count)
        .map(|_| r.bytes32("block", MAX_BLOCK_BODY as u32))
        .collect::<Result<_, _>>()
        .map_err(malformed)?;
    r.finish().map_err(malformed)?;
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::committee::Protocol;
    use crate::committee::tests::committee;
    use proptest::prelude::*;

    #[test]
    fn tokens_prove_the_sender_to_one_receiver_on_one_connection() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let (a, b) = (AuthorityIndex(1), AuthorityIndex(2));
        let t = PeerToken::sign(&keys[1], &c, a, b, [7; 16]);
        let on = |t: &PeerToken, receiver, challenge| {
            let headers = PeerHeaders {
                peer: Some(&t.peer),
                committee: Some(&t.committee),
                auth: Some(&t.auth),
            };
            PeerToken::verify(headers, receiver, &c, challenge)
        };
        let check = |t: &PeerToken, receiver| on(t, receiver, [7; 16]);
        assert_eq!(check(&t, b).unwrap(), a);
        assert!(
            check(&t, AuthorityIndex(3)).is_err(),
            "bound to its receiver"
        );
        assert!(
            on(&t, b, [8; 16]).is_err(),
            "bound to its connection's challenge"
        );
        // A peer of another epoch (or chain, or gc depth) is named as such.
        let next_epoch = Committee::new(
            c.authorities().map(|a| (*c.key(a).unwrap(), 1)).collect(),
            Protocol {
                epoch: 1,
                ..*c.protocol()
            },
        )
        .unwrap();
        let other = PeerToken::sign(&keys[1], &next_epoch, a, b, [7; 16]);
        assert!(
            check(&other, b)
                .unwrap_err()
                .to_string()
                .contains("runs committee")
        );
        // Claiming this committee's digest does not help: the signature
        // covers the one it was made for.
        let claimed = PeerToken {
            committee: t.committee.clone(),
            ..other
        };
        assert!(
            check(&claimed, b)
                .unwrap_err()
                .to_string()
                .contains("bad token")
        );
        let forged = PeerToken::sign(&keys[0], &c, a, b, [7; 16]);
        assert!(matches!(
            check(&forged, b),
            Err(WireError::Unauthenticated(_))
        ));
        let stranger = PeerToken {
            peer: "9".into(),
            ..t.clone()
        };
        assert!(
            check(&stranger, b)
                .unwrap_err()
                .to_string()
                .contains("not in the committee")
        );
        assert!(PeerToken::verify(PeerHeaders::default(), b, &c, [7; 16]).is_err());
        assert_eq!(parse_challenge(&hex::encode([7; 16])).unwrap(), [7; 16]);
        assert!(parse_challenge("07").is_err());
    }

    #[test]
    fn fetch_messages_round_trip_and_refuse_bad_lengths() {
        let request = FetchRequest {
            references: (0..3)
                .map(|a| BlockRef::genesis(AuthorityIndex(a)))
                .collect(),
            known_rounds: vec![4, 0, 9, 2],
        };
        let bytes = request.encode();
        assert_eq!(FetchRequest::decode(&bytes).unwrap(), request);
        assert!(FetchRequest::decode(&bytes[..bytes.len() - 1]).is_err());
        let answer = encode_blocks([&b"one"[..], b"two"]);
        assert_eq!(decode_blocks(&answer).unwrap(), vec![&b"one"[..], b"two"]);
        let mut long = answer.clone();
        long.push(0);
        assert!(decode_blocks(&long).is_err());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = FetchRequest::decode(&bytes);
            let _ = RoundsRequest::decode(&bytes);
            let _ = decode_blocks(&bytes);
        }
    }
}

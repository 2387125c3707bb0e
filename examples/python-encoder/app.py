"""Soma example encoder in Python: signed feature hashing.

Every lower-cased word and every character trigram of a word (with `<` and
`>` marking its edges) is hashed to one of 384 dimensions and adds ±weight
there; the sum is L2-normalised. These are the features of the Rust guest
SDK's `hashing::hashed_features`, computed with the same f32 rounding, so
both give the same bits for the same text, with one exception: Python's
`str.isalnum` does not count combining vowel signs and marks (Unicode's
Other_Alphabetic, as in Hindi, Thai or vowelled Arabic) as parts of words,
and Rust's `char::is_alphanumeric` does. Only the standard library is used:
the component carries its own Python interpreter, and the sandbox grants no
files, network or environment.
"""

import math
import struct

import wit_world
from componentize_py_types import Err
from wit_world.imports import log
from wit_world.imports.types import (
    EncodeError_InvalidInput,
    EncoderInfo,
    InvalidInput,
    Modality,
)

DIMENSION = 384
MAX_INPUT_BYTES = 64 * 1024
MASK = (1 << 64) - 1


def f32(x: float) -> float:
    """Rounds a Python float (a double) to the nearest f32, as Rust's f32
    arithmetic does after every operation."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


WORD_WEIGHT = 1.0
TRIGRAM_WEIGHT = f32(0.35)
# Running sums of squares when normalising (the guest SDK's `vector::LANES`).
LANES = 8


def feature_hash(kind: int, data: bytes) -> int:
    """FNV-1a over `kind` and `data`, with a final avalanche."""
    h = 0xCBF29CE484222325
    h = ((h ^ kind) * 0x100000001B3) & MASK
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK
    return h ^ (h >> 33)


def add_feature(v: list, kind: int, feature: bytes, weight: float) -> None:
    h = feature_hash(kind, feature)
    i = h % len(v)
    v[i] = f32(v[i] + (weight if h >> 63 == 0 else -weight))


def words(text: str):
    """Runs of alphanumeric characters."""
    word = []
    for c in text:
        if c.isalnum():
            word.append(c)
        elif word:
            yield "".join(word)
            word = []
    if word:
        yield "".join(word)


def hashed_features(text: str) -> list:
    v = [0.0] * DIMENSION
    for token in words(text):
        # One character at a time, as Rust does: no context rules such as
        # Greek final sigma.
        word = "".join(c.lower() for c in token)
        add_feature(v, ord("w"), word.encode(), WORD_WEIGHT)
        edged = "<" + word + ">"
        for n in range(len(edged) - 2):
            add_feature(v, ord("t"), edged[n : n + 3].encode(), TRIGRAM_WEIGHT)
    # Squares summed in eight running sums (value i into sum i % 8), then
    # those in order: the guest SDK's `l2_normalize`.
    sums = [0.0] * LANES
    for i, x in enumerate(v):
        sums[i % LANES] = f32(sums[i % LANES] + f32(x * x))
    norm = 0.0
    for s in sums:
        norm = f32(norm + s)
    norm = f32(math.sqrt(norm))
    if norm > 0.0:
        v = [f32(x / norm) for x in v]
    return v


class WitWorld(wit_world.WitWorld):
    def info(self) -> EncoderInfo:
        return EncoderInfo(
            name="python-encoder",
            version="0.1.0",
            dimension=DIMENSION,
            modality=Modality.TEXT,
            max_input_bytes=MAX_INPUT_BYTES,
        )

    def embed(self, inputs: list) -> list:
        vectors = []
        for index, data in enumerate(inputs):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                reason = f"not UTF-8 at byte {e.start}"
                raise Err(EncodeError_InvalidInput(InvalidInput(index, reason)))
            vectors.append(hashed_features(text))
        log.log(log.Level.DEBUG, f"embedded {len(inputs)} texts")
        return vectors

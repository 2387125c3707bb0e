// Soma example encoder in JavaScript: signed feature hashing.
//
// Every lower-cased word and every character trigram of a word (with `<`
// and `>` marking its edges) is hashed to one of 384 dimensions and adds
// ±weight there; the sum is L2-normalised. These are the features of the
// Rust guest SDK's `hashing::hashed_features`, computed with the same f32
// rounding (`Math.fround` after every operation), so both give the same
// bits for text whose words are made of letters that have case and of
// ASCII digits (see `isAlphanumeric` for the rest). The sandbox grants no
// files, network or environment; the component imports no WASI HTTP.

import { log } from "soma:encoder/log@0.1.0";

const DIMENSION = 384;
const MAX_INPUT_BYTES = 64 * 1024;
const WORD_WEIGHT = 1.0;
const TRIGRAM_WEIGHT = Math.fround(0.35);
// Running sums of squares when normalising (the guest SDK's `vector::LANES`).
const LANES = 8;
const MASK = (1n << 64n) - 1n;
const PRIME = 0x100000001b3n;
const UTF8 = new TextEncoder();

/** An ASCII digit, or a letter that has case. The engine has no Unicode
 * property tables, so scripts without case (Chinese, Arabic, Hindi, ...)
 * and other digits count as separators here, unlike in the Rust SDK: a text
 * in such a script embeds to the zero vector. */
function isAlphanumeric(c) {
  return (c >= "0" && c <= "9") || c.toLowerCase() !== c.toUpperCase();
}

/** FNV-1a over `kind` and `bytes`, with a final avalanche. */
function featureHash(kind, bytes) {
  let h = 0xcbf29ce484222325n;
  h = ((h ^ BigInt(kind)) * PRIME) & MASK;
  for (const b of bytes) {
    h = ((h ^ BigInt(b)) * PRIME) & MASK;
  }
  h ^= h >> 33n;
  h = (h * 0xff51afd7ed558ccdn) & MASK;
  return h ^ (h >> 33n);
}

function addFeature(v, kind, feature, weight) {
  const h = featureHash(kind, UTF8.encode(feature));
  const i = Number(h % BigInt(v.length));
  v[i] = Math.fround(v[i] + (h >> 63n === 0n ? weight : -weight));
}

/** Runs of alphanumeric characters. */
function* words(text) {
  let word = "";
  for (const c of text) {
    if (isAlphanumeric(c)) {
      word += c;
    } else if (word) {
      yield word;
      word = "";
    }
  }
  if (word) {
    yield word;
  }
}

function hashedFeatures(text) {
  let v = new Array(DIMENSION).fill(0);
  for (const token of words(text)) {
    // One character at a time, as Rust does: no context rules such as
    // Greek final sigma.
    const word = Array.from(token, (c) => c.toLowerCase()).join("");
    addFeature(v, 0x77 /* 'w' */, word, WORD_WEIGHT);
    const edged = Array.from("<" + word + ">");
    for (let n = 0; n + 3 <= edged.length; n++) {
      addFeature(v, 0x74 /* 't' */, edged.slice(n, n + 3).join(""), TRIGRAM_WEIGHT);
    }
  }
  // Squares summed in eight running sums (value i into sum i % 8), then
  // those in order: the guest SDK's `l2_normalize`.
  const sums = new Array(LANES).fill(0);
  v.forEach((x, i) => {
    sums[i % LANES] = Math.fround(sums[i % LANES] + Math.fround(x * x));
  });
  let norm = 0;
  for (const s of sums) {
    norm = Math.fround(norm + s);
  }
  norm = Math.fround(Math.sqrt(norm));
  if (norm > 0) {
    v = v.map((x) => Math.fround(x / norm));
  }
  return v;
}

export function info() {
  return {
    name: "js-encoder",
    version: "0.1.0",
    dimension: DIMENSION,
    modality: "text",
    maxInputBytes: MAX_INPUT_BYTES,
  };
}

export function embed(inputs) {
  const vectors = inputs.map((bytes, index) => {
    let text;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch (e) {
      throw { tag: "invalid-input", val: { index, reason: "not UTF-8" } };
    }
    return hashedFeatures(text);
  });
  log("debug", `embedded ${inputs.length} texts`);
  return vectors;
}

//! Soma's one binary encoding, for everything that arrives as untrusted
//! bytes: encoder packages, consensus blocks, transactions, the inference
//! worker's frames.
//!
//! The encoding is plain and canonical: fixed-width little-endian integers,
//! booleans as one byte `0` or `1`, byte strings and UTF-8 strings behind a
//! length prefix whose width the format chooses, sequences behind a count.
//! Every value has exactly one encoding, so equal values have equal bytes
//! and equal digests, and a decoder refuses anything an encoder would not
//! have written (a boolean `2`, trailing bytes, an unknown tag).
//!
//! [`Reader`] never reads past the end of its input, and every length is
//! checked against the format's limit *and* against the bytes left before
//! anything is allocated for it: a 4-byte count can never make a decoder
//! reserve gigabytes.
//!
//! ```
//! use soma_codec::{Decode, DecodeError, Encode, Reader, Writer};
//!
//! #[derive(Debug, PartialEq)]
//! struct Transfer { to: [u8; 32], amount: u64, memo: String }
//!
//! impl Encode for Transfer {
//!     fn encode(&self, w: &mut Writer) {
//!         w.array(&self.to);
//!         w.u64(self.amount);
//!         w.str8(&self.memo);
//!     }
//! }
//!
//! impl Decode<'_> for Transfer {
//!     fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
//!         Ok(Transfer { to: r.array("to")?, amount: r.u64("amount")?, memo: r.str8("memo", 64)?.into() })
//!     }
//! }
//!
//! let t = Transfer { to: [7; 32], amount: 5, memo: "rent".into() };
//! let bytes = t.to_bytes();
//! assert_eq!(Transfer::from_bytes(&bytes)?, t);
//! assert!(Transfer::from_bytes(&bytes[..bytes.len() - 1]).is_err());
//! # Ok::<(), DecodeError>(())
//! ```

use std::cell::Cell;

/// Why bytes could not be decoded. `what` names the field being read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("truncated: the input ends inside {what}")]
    Truncated {
        /// The field.
        what: &'static str,
    },
    /// A length or count is over the format's limit.
    #[error("{what} is {len}, more than the limit of {max}")]
    TooLarge {
        /// The field.
        what: &'static str,
        /// What the input declared.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A string is not UTF-8.
    #[error("{what} is not UTF-8")]
    NotUtf8 {
        /// The field.
        what: &'static str,
    },
    /// A value no encoder writes: an unknown tag, a boolean other than 0
    /// or 1, a value out of its range or out of order.
    #[error("{what}: {reason}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Bytes are left after the value.
    #[error("{0} bytes after the end of the value")]
    TrailingBytes(u64),
}

impl DecodeError {
    /// An [`DecodeError::Invalid`] value in `what`.
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            what,
            reason: reason.into(),
        }
    }
}

/// A value with a canonical encoding.
pub trait Encode {
    /// Appends the value's encoding to `w`.
    fn encode(&self, w: &mut Writer);

    /// The value's encoding.
    fn to_bytes(&self) -> Vec<u8> {
        // Written into a buffer kept for the purpose, then copied out at
        // its final size (or, past what is kept, handed over): a vector's
        // record grown as it is written would be reallocated and copied a
        // dozen times. An encoding nested in another finds the buffer
        // taken and grows its own, as does one made while the thread's
        // locals are torn down.
        let mut w = Writer(SCRATCH.try_with(Cell::take).unwrap_or_default());
        w.0.clear();
        self.encode(&mut w);
        if w.0.capacity() > SCRATCH_KEPT {
            // Too large to keep: handed over rather than copied.
            return w.0;
        }
        let bytes = w.0.as_slice().to_vec();
        // Gone only while the thread exits: nothing to keep it for.
        let _ = SCRATCH.try_with(|scratch| scratch.set(w.0));
        bytes
    }
}

thread_local! {
    /// The buffer [`Encode::to_bytes`] encodes into.
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The largest buffer [`Encode::to_bytes`] keeps for the next encoding
/// (one a thread held on to for a rare huge value would be memory lost).
const SCRATCH_KEPT: usize = 64 << 10;

/// A value that can be read back from its canonical encoding.
pub trait Decode<'a>: Sized {
    /// Reads one value from `r`, leaving what follows it.
    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError>;

    /// Decodes `bytes` as exactly one value: trailing bytes are an error.
    fn from_bytes(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let value = Self::decode(&mut r)?;
        r.finish()?;
        Ok(value)
    }
}

/// A cursor over untrusted bytes that never reads past their end.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Ends reading: an error if bytes are left.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n as u64)),
        }
    }

    /// The next `n` bytes of `what`.
    #[inline]
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.bytes.len() {
            return Err(DecodeError::Truncated { what });
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    /// The next `N` bytes.
    #[inline]
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        Ok(self
            .take(N, what)?
            .try_into()
            .expect("take returns N bytes"))
    }

    /// A `u8`.
    #[inline]
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A little-endian `u16`.
    #[inline]
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.array(what).map(u16::from_le_bytes)
    }

    /// A little-endian `u32`.
    #[inline]
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_le_bytes)
    }

    /// `n` little-endian `u32`s, taken in one bounds check (a vector's
    /// coordinates read one by one cost more than the rest of its
    /// transaction).
    #[inline]
    pub fn u32s(
        &mut self,
        n: usize,
        what: &'static str,
    ) -> Result<impl ExactSizeIterator<Item = u32> + 'a, DecodeError> {
        let bytes = self.take(
            n.checked_mul(4).ok_or(DecodeError::Truncated { what })?,
            what,
        )?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("chunks of 4"))))
    }

    /// A little-endian `u64`.
    #[inline]
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A little-endian `u128`.
    pub fn u128(&mut self, what: &'static str) -> Result<u128, DecodeError> {
        self.array(what).map(u128::from_le_bytes)
    }

    /// A boolean: exactly `0` or `1`.
    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError::invalid(what, format!("{b} is not a boolean"))),
        }
    }

    /// A count or length of at most `max`, stored as `prefix` bytes.
    fn len(&mut self, prefix: usize, what: &'static str, max: u64) -> Result<usize, DecodeError> {
        let mut le = [0u8; 8];
        le[..prefix].copy_from_slice(self.take(prefix, what)?);
        let len = u64::from_le_bytes(le);
        if len > max {
            return Err(DecodeError::TooLarge { what, len, max });
        }
        usize::try_from(len).map_err(|_| DecodeError::TooLarge {
            what,
            len,
            max: usize::MAX as u64,
        })
    }

    /// A sequence's element count (a `u8`), at most `max`.
    pub fn count8(&mut self, what: &'static str, max: u8) -> Result<usize, DecodeError> {
        self.len(1, what, max.into())
    }

    /// A sequence's element count (a `u16`), at most `max`, and no more
    /// than the bytes left could hold at `min_size` bytes per element.
    pub fn count16(
        &mut self,
        what: &'static str,
        max: u16,
        min_size: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.len(2, what, max.into())?;
        self.fits(n, min_size, what)
    }

    /// A sequence's element count (a `u32`), at most `max`, and no more
    /// than the bytes left could hold at `min_size` bytes per element.
    pub fn count32(
        &mut self,
        what: &'static str,
        max: u32,
        min_size: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.len(4, what, max.into())?;
        self.fits(n, min_size, what)
    }

    fn fits(&self, n: usize, min_size: usize, what: &'static str) -> Result<usize, DecodeError> {
        if n.saturating_mul(min_size) > self.bytes.len() {
            return Err(DecodeError::Truncated { what });
        }
        Ok(n)
    }

    /// Bytes behind a `u8` length.
    pub fn bytes8(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.len(1, what, u8::MAX.into())?;
        self.take(n, what)
    }

    /// Bytes behind a `u16` length of at most `max`.
    pub fn bytes16(&mut self, what: &'static str, max: u16) -> Result<&'a [u8], DecodeError> {
        let n = self.len(2, what, max.into())?;
        self.take(n, what)
    }

    /// Bytes behind a `u32` length of at most `max`.
    pub fn bytes32(&mut self, what: &'static str, max: u32) -> Result<&'a [u8], DecodeError> {
        let n = self.len(4, what, max.into())?;
        self.take(n, what)
    }

    /// Bytes behind a `u64` length of at most `max`.
    pub fn bytes64(&mut self, what: &'static str, max: u64) -> Result<&'a [u8], DecodeError> {
        let n = self.len(8, what, max)?;
        self.take(n, what)
    }

    /// A UTF-8 string behind a `u8` length of at most `max`.
    pub fn str8(&mut self, what: &'static str, max: u8) -> Result<&'a str, DecodeError> {
        let n = self.len(1, what, max.into())?;
        utf8(self.take(n, what)?, what)
    }

    /// A UTF-8 string behind a `u16` length of at most `max`.
    pub fn str16(&mut self, what: &'static str, max: u16) -> Result<&'a str, DecodeError> {
        utf8(self.bytes16(what, max)?, what)
    }
}

fn utf8<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8 { what })
}

/// Builds a canonical encoding. Lengths must fit their prefix: values are
/// checked against the format's limits before they are encoded (decoding
/// does, and so must every constructor of an encodable value), so a length
/// that does not fit is a bug and panics.
#[derive(Debug, Default, Clone)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// An empty writer.
    pub fn new() -> Writer {
        Writer(Vec::new())
    }

    /// The bytes written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Raw bytes, without a length: fixed-size fields and magic numbers.
    #[inline]
    pub fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// A fixed-size array.
    #[inline]
    pub fn array<const N: usize>(&mut self, bytes: &[u8; N]) {
        self.raw(bytes);
    }

    /// A `u8`.
    #[inline]
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    /// A little-endian `u16`.
    #[inline]
    pub fn u16(&mut self, v: u16) {
        self.raw(&v.to_le_bytes());
    }

    /// A little-endian `u32`.
    #[inline]
    pub fn u32(&mut self, v: u32) {
        self.raw(&v.to_le_bytes());
    }

    /// Little-endian `u32`s, one after another (no count).
    pub fn u32s(&mut self, values: impl ExactSizeIterator<Item = u32>) {
        // Written into place, four bytes per value with no growth check
        // between them, so that the loop compiles to plain stores (a
        // vector's coordinates one `extend` at a time cost more than the
        // rest of its record).
        // An iterator that miscounts itself still writes exactly what it
        // yields (one that claims far too many costs the memory, as
        // reserving it did).
        let mut values = values;
        let start = self.0.len();
        self.0.resize(start + values.len() * 4, 0);
        let mut end = start;
        for (bytes, v) in self.0[start..].chunks_exact_mut(4).zip(&mut values) {
            bytes.copy_from_slice(&v.to_le_bytes());
            end += 4;
        }
        self.0.truncate(end);
        values.for_each(|v| self.0.extend_from_slice(&v.to_le_bytes()));
    }

    /// A little-endian `u64`.
    #[inline]
    pub fn u64(&mut self, v: u64) {
        self.raw(&v.to_le_bytes());
    }

    /// A little-endian `u128`.
    pub fn u128(&mut self, v: u128) {
        self.raw(&v.to_le_bytes());
    }

    /// A boolean as `0` or `1`.
    pub fn bool(&mut self, v: bool) {
        self.u8(v.into());
    }

    /// A sequence's element count as a `u8`.
    pub fn count8(&mut self, n: usize) {
        self.u8(prefix(n));
    }

    /// A sequence's element count as a `u16`.
    pub fn count16(&mut self, n: usize) {
        self.u16(prefix(n));
    }

    /// A sequence's element count as a `u32`.
    pub fn count32(&mut self, n: usize) {
        self.u32(prefix(n));
    }

    /// Bytes behind a `u8` length.
    pub fn bytes8(&mut self, bytes: &[u8]) {
        self.count8(bytes.len());
        self.raw(bytes);
    }

    /// Bytes behind a `u16` length.
    pub fn bytes16(&mut self, bytes: &[u8]) {
        self.count16(bytes.len());
        self.raw(bytes);
    }

    /// Bytes behind a `u32` length.
    pub fn bytes32(&mut self, bytes: &[u8]) {
        self.count32(bytes.len());
        self.raw(bytes);
    }

    /// Bytes behind a `u64` length.
    pub fn bytes64(&mut self, bytes: &[u8]) {
        self.u64(bytes.len() as u64);
        self.raw(bytes);
    }

    /// A string behind a `u8` length.
    pub fn str8(&mut self, s: &str) {
        self.bytes8(s.as_bytes());
    }

    /// A string behind a `u16` length.
    pub fn str16(&mut self, s: &str) {
        self.bytes16(s.as_bytes());
    }
}

/// `n` as a length prefix of type `T`.
fn prefix<T: TryFrom<usize>>(n: usize) -> T {
    T::try_from(n).unwrap_or_else(|_| {
        panic!(
            "a length of {n} does not fit a {}-byte prefix: the value was not checked against its limits",
            std::mem::size_of::<T>()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn integers_are_little_endian_and_round_trip() {
        let mut w = Writer::new();
        w.u8(1);
        w.u16(0x0203);
        w.u32(0x0405_0607);
        w.u64(8);
        w.u128(u128::MAX);
        w.bool(true);
        let bytes = w.into_bytes();
        assert_eq!(&bytes[..7], &[1, 3, 2, 7, 6, 5, 4]);
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("a"), Ok(1));
        assert_eq!(r.u16("b"), Ok(0x0203));
        assert_eq!(r.u32("c"), Ok(0x0405_0607));
        assert_eq!(r.u64("d"), Ok(8));
        assert_eq!(r.u128("e"), Ok(u128::MAX));
        assert_eq!(r.bool("f"), Ok(true));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn u32s_writes_what_an_iterator_yields_even_if_it_miscounts() {
        /// Yields `values` and claims `claimed` of them.
        struct Miscounted(std::vec::IntoIter<u32>, usize);
        impl Iterator for Miscounted {
            type Item = u32;
            fn next(&mut self) -> Option<u32> {
                self.0.next()
            }
            fn size_hint(&self) -> (usize, Option<usize>) {
                (self.1, Some(self.1))
            }
        }
        impl ExactSizeIterator for Miscounted {}
        for claimed in [0, 2, 3, 5] {
            let mut w = Writer::new();
            w.u8(9);
            w.u32s(Miscounted(vec![1, 2, 3].into_iter(), claimed));
            assert_eq!(w.into_bytes(), [9, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]);
        }
    }

    #[test]
    fn u32s_are_read_in_one_take_or_not_at_all() {
        let values = [7, u32::MAX, 0x0102_0304];
        let mut w = Writer::new();
        w.u32s(values.into_iter());
        let bytes = w.into_bytes();
        let mut one_by_one = Writer::new();
        values.iter().for_each(|&x| one_by_one.u32(x));
        assert_eq!(bytes, one_by_one.into_bytes());
        let mut r = Reader::new(&bytes);
        assert_eq!(
            r.u32s(3, "v").unwrap().collect::<Vec<_>>(),
            [7, u32::MAX, 0x0102_0304]
        );
        assert_eq!(r.finish(), Ok(()));
        // Too few bytes, or a count whose bytes overflow: nothing is read.
        for n in [4, usize::MAX] {
            let mut r = Reader::new(&bytes);
            assert_eq!(
                r.u32s(n, "v").err(),
                Some(DecodeError::Truncated { what: "v" })
            );
            assert_eq!(r.rest().len(), bytes.len());
        }
    }

    /// Bytes written raw; `nested` also writes its own `to_bytes` inside.
    struct Blob {
        bytes: Vec<u8>,
        nested: Option<Box<Blob>>,
    }

    impl Encode for Blob {
        fn encode(&self, w: &mut Writer) {
            w.raw(&self.bytes);
            if let Some(inner) = &self.nested {
                w.raw(&inner.to_bytes());
            }
        }
    }

    #[test]
    fn to_bytes_gives_each_encoding_whole_and_alone() {
        let blob = |bytes: Vec<u8>, nested| Blob { bytes, nested };
        let small = blob(vec![1, 2, 3], None);
        let kept = || {
            SCRATCH.with(|scratch| {
                let buffer = scratch.take();
                let capacity = buffer.capacity();
                scratch.set(buffer);
                capacity
            })
        };
        // Each call starts empty, however large the one before it was; the
        // buffer is kept for the next unless it grew too large.
        for (size, keeps) in [(10, true), (SCRATCH_KEPT + 1, false), (5, true)] {
            assert_eq!(blob(vec![9; size], None).to_bytes(), vec![9; size]);
            assert_eq!((1..=SCRATCH_KEPT).contains(&kept()), keeps);
            assert_eq!(small.to_bytes(), [1, 2, 3]);
        }
        // An encoding made while another is being made.
        let outer = blob(vec![4; 100], Some(Box::new(blob(vec![5; 7], None))));
        let mut expected = vec![4; 100];
        expected.extend([5; 7]);
        assert_eq!(outer.to_bytes(), expected);
        assert_eq!(small.to_bytes(), [1, 2, 3]);
    }

    #[test]
    fn non_canonical_and_short_input_is_refused_with_the_field() {
        assert_eq!(
            Reader::new(&[2]).bool("flag"),
            Err(DecodeError::invalid("flag", "2 is not a boolean"))
        );
        assert_eq!(
            Reader::new(&[1, 2, 3]).u32("nonce"),
            Err(DecodeError::Truncated { what: "nonce" })
        );
        assert_eq!(
            Reader::new(&[0]).finish(),
            Err(DecodeError::TrailingBytes(1))
        );
        assert_eq!(
            Reader::new(&[0xff, 0xfe]).str8("name", 10),
            Err(DecodeError::TooLarge {
                what: "name",
                len: 255,
                max: 10
            })
        );
        assert_eq!(
            Reader::new(&[2, 0xff, 0xfe]).str8("name", 10),
            Err(DecodeError::NotUtf8 { what: "name" })
        );
    }

    #[test]
    fn a_count_is_checked_against_the_bytes_left_before_any_allocation() {
        // 65 535 elements of at least 32 bytes cannot be in 10 bytes.
        let mut bytes = vec![0xff, 0xff];
        bytes.extend([0; 10]);
        assert_eq!(
            Reader::new(&bytes).count16("parents", u16::MAX, 32),
            Err(DecodeError::Truncated { what: "parents" })
        );
        assert_eq!(
            Reader::new(&bytes).count16("parents", u16::MAX, 0),
            Ok(65_535)
        );
        assert!(matches!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff]).bytes32("data", 1 << 20),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(
            Reader::new(&[4, 0, 0, 0, 1]).bytes32("data", 1 << 20),
            Err(DecodeError::Truncated { what: "data" })
        );
    }

    #[test]
    #[should_panic(expected = "does not fit a 1-byte prefix")]
    fn encoding_an_unchecked_overlong_value_is_a_bug() {
        Writer::new().bytes8(&[0; 256]);
    }

    proptest! {
        #[test]
        fn byte_strings_round_trip_and_any_cut_is_truncated(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut w = Writer::new();
            w.bytes16(&data);
            w.bytes64(&data);
            let bytes = w.into_bytes();
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(r.bytes16("a", u16::MAX)?, &data[..]);
            prop_assert_eq!(r.bytes64("b", u64::MAX)?, &data[..]);
            prop_assert!(r.is_empty());
            let short = &bytes[..cut.index(bytes.len())];
            let mut r = Reader::new(short);
            let read = r.bytes16("a", u16::MAX).and_then(|_| r.bytes64("b", u64::MAX));
            let is_truncated = matches!(read, Err(DecodeError::Truncated { .. }));
            prop_assert!(is_truncated);
        }
    }
}

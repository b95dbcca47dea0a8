//! Bounds-checked little-endian reads for the decoders of this crate.
//!
//! Every read returns `None` instead of panicking when the input is too
//! short, so that the decoders can turn a short input into a typed error.

/// A cursor over a received message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// The bytes not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let b = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Some(out)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|b| b[0])
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
}

/// The C string in a field: the bytes before the first NUL (C code reads
/// these fields with `strcmp`, `g_strsplit` and friends, so anything after
/// an embedded NUL is invisible to it). The caller has checked that the
/// field ends with a NUL.
pub(crate) fn c_str(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(n) => &field[..n],
        None => field,
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    /// Parses `"01 ab ..."` (whitespace separated hex bytes) into bytes.
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
            .collect()
    }

    /// A deterministic xorshift64* generator for the random-input tests
    /// (seeded, so failures are reproducible).
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Rng {
            Rng(seed | 1)
        }

        pub(crate) fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }

        pub(crate) fn bytes(&mut self, max_len: usize) -> Vec<u8> {
            let len = self.below(max_len + 1);
            (0..len).map(|_| self.next_u64() as u8).collect()
        }

        /// `base` with a few bytes overwritten by random values: mostly
        /// well-formed input with broken lengths, types and terminators,
        /// which finds more paths than uniform noise.
        pub(crate) fn mutate(&mut self, base: &[u8]) -> Vec<u8> {
            let mut v = base.to_vec();
            if v.is_empty() {
                return v;
            }
            let n = 1 + self.below(4);
            for _ in 0..n {
                let i = self.below(v.len());
                v[i] = match self.below(4) {
                    0 => 0,
                    1 => 0xff,
                    _ => self.next_u64() as u8,
                };
            }
            if self.below(4) == 0 {
                let cut = self.below(v.len() + 1);
                v.truncate(cut);
            }
            v
        }
    }
}

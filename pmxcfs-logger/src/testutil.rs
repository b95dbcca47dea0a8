//! Test helpers: a small deterministic PRNG (xorshift64*), no dependencies.

pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 if `n` is 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// A copy of `data` with `changes` random bytes overwritten.
    pub(crate) fn mutate(&mut self, data: &[u8], changes: usize) -> Vec<u8> {
        let mut out = data.to_vec();
        for _ in 0..changes {
            if out.is_empty() {
                break;
            }
            let i = self.below(out.len());
            out[i] = self.next_u64() as u8;
        }
        out
    }
}

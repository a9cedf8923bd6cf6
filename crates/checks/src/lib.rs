//! Invariant checks on hostile input, each a plain function from bytes (or a decoded sequence of
//! operations) to `Ok` or a description of what broke.
//!
//! The same functions run three ways: the fuzz targets in `fuzz/` call them under a
//! coverage-guided fuzzer, the property tests here call them with generated input, and
//! `tests/replay.rs` replays every input a fuzzer ever found (`fuzz/regressions/`) on each
//! `cargo test`, so a crash once found stays fixed.

pub mod cluster;
pub mod frame;
pub mod media;
pub mod sdp;
pub mod seats;

/// What broke, in words.
pub type Broken = String;

/// Return `Err` with the formatted message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Return `Err` naming both sides unless they are equal.
macro_rules! ensure_eq {
    ($a:expr, $b:expr $(,)?) => {
        ensure_eq!($a, $b, "values differ")
    };
    ($a:expr, $b:expr, $($msg:tt)+) => {
        match (&$a, &$b) {
            (a, b) => {
                if a != b {
                    return Err(format!("{}: {:?} != {:?}", format!($($msg)+), a, b));
                }
            }
        }
    };
}

pub(crate) use {ensure, ensure_eq};

/// Reads operations out of a fuzzer's bytes: every read succeeds (zeros past the end), so any
/// input decodes to some sequence and the fuzzer's mutations map to nearby sequences.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// A length-prefixed slice (two bytes of length, cut to what is left).
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16()).min(self.data.len());
        let (chunk, rest) = self.data.split_at(n);
        self.data = rest;
        chunk
    }
}

//! Personal data in logs: peer addresses are wrapped so an operator can scrub them.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

static SCRUB: AtomicBool = AtomicBool::new(false);

/// A value that identifies a person (a peer's IP address). It prints as itself unless
/// [`Pii::scrub`] was turned on, then as `[redacted]`.
#[derive(Clone, Copy)]
pub struct Pii<T>(pub T);

impl Pii<()> {
    /// Redact every `Pii` value from now on (the server's `--scrub-logs`).
    pub fn scrub(on: bool) {
        SCRUB.store(on, Ordering::Relaxed);
    }
}

impl<T: fmt::Display> fmt::Display for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if SCRUB.load(Ordering::Relaxed) {
            f.write_str("[redacted]")
        } else {
            self.0.fmt(f)
        }
    }
}

impl<T: fmt::Display> fmt::Debug for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

//! What nodes of a cluster read from Redis: inbox messages, registry entries and room claims of
//! any bytes, and the relay messages inside them.
//!
//! Invariants: nothing panics; no byte string opens as a message, entry or claim without the
//! secret (only what [`seal`] made opens); a sealed message opens to exactly its sender and
//! body, and changing any one byte of it makes it refused; a relay message that parses writes
//! out and parses back to itself.

use miclink_cluster::seal::{self, Key, Sender, open_claim, open_entry, open_message};
use miclink_signaling::relay::Relay;

use crate::{Broken, ensure, ensure_eq};

const NOW: u64 = 1_800_000_000_000;

pub fn check(data: &[u8]) -> Result<(), Broken> {
    let key = Key::new(b"fuzz cluster secret");
    ensure!(
        open_message(&key, "b", data, NOW).is_err(),
        "bytes the secret never sealed opened as a message"
    );
    if let Ok(text) = std::str::from_utf8(data) {
        ensure!(
            open_entry(&key, "a", text, NOW, 60_000).is_err(),
            "an entry opened without the secret"
        );
        ensure!(
            open_claim(&key, "r", text, NOW, 60_000).is_err(),
            "a claim opened without the secret"
        );
    }
    // The bytes as a body: sealed, they open to themselves; any byte changed, never.
    let sender = Sender {
        node: "a".into(),
        boot: u64::from(data.first().copied().unwrap_or(0)),
        seq: data.len() as u64 + 1,
    };
    let sealed = seal::seal_message(&key, "b", &sender, NOW, data);
    let (from, body) =
        open_message(&key, "b", &sealed, NOW).map_err(|e| format!("a sealed message: {e:?}"))?;
    ensure_eq!(from, sender, "the sender");
    ensure!(body == data, "the body came back changed");
    if !sealed.is_empty() {
        let i = usize::from(data.get(1).copied().unwrap_or(0)) * 7 % sealed.len();
        let mut changed = sealed.clone();
        changed[i] ^= 1 + data.get(2).copied().unwrap_or(0) % 255;
        ensure!(
            open_message(&key, "b", &changed, NOW).is_err(),
            "byte {i} of a sealed message changed and it still opened"
        );
    }
    // The body as a relay message.
    if let Ok(relay) = serde_json::from_slice::<Relay>(data) {
        let json = serde_json::to_vec(&relay).map_err(|e| format!("write: {e}"))?;
        let back: Relay = serde_json::from_slice(&json).map_err(|e| format!("read back: {e}"))?;
        ensure_eq!(back, relay, "a relay message written and read back");
    }
    Ok(())
}

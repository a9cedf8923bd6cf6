//! What a node writes for the others, signed: its inbox messages, its registry entry and its
//! room claims each carry an HMAC-SHA256 under the cluster secret over who wrote it, when, and
//! what, so a client of the same Redis that lacks the secret can neither speak for a node nor
//! make one up.
//!
//! Pure: the time is passed in, nothing here touches Redis. Each kind of record signs its own
//! context string and every field length-prefixed, so no record (or part of one) passes for
//! another: a message sealed for one node's inbox is refused in another's, a claim on one room
//! is not a claim on the next.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a record's time may be from the reader's clock. Nodes keep their clocks in step
/// (NTP); a message takes milliseconds through Redis, so this only bounds how long a copied
/// record could be played again (a node also refuses a sender's sequence numbers going back,
/// and a registry read refuses an entry older than its expiry and this allowance).
pub const MAX_SKEW_MS: u64 = 30_000;

/// The cluster secret, ready to sign and check. Without a configured secret (a Redis on this
/// machine only) the key is empty: records are still checked for shape, time and sender, but
/// anyone who can write to that Redis could sign them.
#[derive(Clone)]
pub struct Key(Hmac<Sha256>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<hidden>)")
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a signed record at all (an older node, or somebody without the secret).
    Unsigned,
    /// Signed, but not with this cluster's secret, or changed since.
    BadSignature,
    /// Its time is too far from now.
    Stale,
    /// Its writer is not a live node of the registry (or is, with another boot).
    UnknownNode,
    /// A sender's sequence number that did not go forward: a copy played again.
    Replayed,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::BadSignature => "bad_signature",
            Refusal::Stale => "stale",
            Refusal::UnknownNode => "unknown_node",
            Refusal::Replayed => "replayed",
        }
    }
}

impl Key {
    pub fn new(secret: &[u8]) -> Key {
        Key(Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length"))
    }

    fn mac(&self, context: &str, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        for part in std::iter::once(context.as_bytes()).chain(parts.iter().copied()) {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    fn tag(&self, context: &str, parts: &[&[u8]]) -> String {
        hex::encode(self.mac(context, parts).finalize().into_bytes())
    }

    /// Whether `tag` (hex) signs `parts` under `context`, in constant time. Only the tag as
    /// [`Key::tag`] writes it (64 lowercase digits) counts: a record opens only as it was
    /// sealed, not also with its tag in capitals.
    fn verify(&self, context: &str, parts: &[&[u8]], tag: &str) -> bool {
        let canonical =
            tag.len() == 64 && tag.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let Some(tag) = canonical.then(|| hex::decode(tag).ok()).flatten() else {
            return false;
        };
        self.mac(context, parts).verify_slice(&tag).is_ok()
    }
}

fn fresh(at: u64, now: u64, max_age: u64) -> bool {
    at <= now.saturating_add(MAX_SKEW_MS) && now.saturating_sub(at) <= max_age
}

/// Who sent an inbox message, and its place in the sender's sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub node: String,
    /// The sender's start ([`crate::NodeInfo::boot`]).
    pub boot: u64,
    /// Counts the sender's messages since its start, to every node: never goes back.
    pub seq: u64,
}

/// `body` for node `to`'s inbox from `sender`, at `at` (unix ms):
/// `m1 <from> <boot> <seq> <at> <tag>\n<body>`.
pub fn seal_message(key: &Key, to: &str, sender: &Sender, at: u64, body: &[u8]) -> Vec<u8> {
    let (boot, seq, at_s) = (
        sender.boot.to_string(),
        sender.seq.to_string(),
        at.to_string(),
    );
    let tag = key.tag(
        "miclink inbox v1",
        &[
            to.as_bytes(),
            sender.node.as_bytes(),
            boot.as_bytes(),
            seq.as_bytes(),
            at_s.as_bytes(),
            body,
        ],
    );
    let mut out = format!("m1 {} {boot} {seq} {at_s} {tag}\n", sender.node).into_bytes();
    out.extend_from_slice(body);
    out
}

/// The sender and body of a message in node `to`'s inbox, if it is signed with `key` for `to`
/// and its time is within [`MAX_SKEW_MS`] of `now` (unix ms). Whether the sender is a live node
/// and its sequence goes forward is the reader's to check.
pub fn open_message<'a>(
    key: &Key,
    to: &str,
    message: &'a [u8],
    now: u64,
) -> Result<(Sender, &'a [u8]), Refusal> {
    let newline = message
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(Refusal::Unsigned)?;
    let (head, body) = (&message[..newline], &message[newline + 1..]);
    let head = std::str::from_utf8(head).map_err(|_| Refusal::Unsigned)?;
    let fields: Vec<&str> = head.split(' ').collect();
    let [version, from, boot_s, seq_s, at_s, tag] = fields[..] else {
        return Err(Refusal::Unsigned);
    };
    if version != "m1" || !crate::valid_node_id(from) {
        return Err(Refusal::Unsigned);
    }
    let (Ok(boot), Ok(seq), Ok(at)) = (boot_s.parse(), seq_s.parse(), at_s.parse::<u64>()) else {
        return Err(Refusal::Unsigned);
    };
    let parts: [&[u8]; 6] = [
        to.as_bytes(),
        from.as_bytes(),
        boot_s.as_bytes(),
        seq_s.as_bytes(),
        at_s.as_bytes(),
        body,
    ];
    if !key.verify("miclink inbox v1", &parts, tag) {
        return Err(Refusal::BadSignature);
    }
    if !fresh(at, now, MAX_SKEW_MS) {
        return Err(Refusal::Stale);
    }
    Ok((
        Sender {
            node: from.to_owned(),
            boot,
            seq,
        },
        body,
    ))
}

/// Node `id`'s registry entry holding `json` (its [`crate::NodeInfo`]), written at `at`:
/// `n1 <at> <tag> <json>`.
pub fn seal_entry(key: &Key, id: &str, at: u64, json: &str) -> String {
    let at_s = at.to_string();
    let tag = key.tag(
        "miclink node v1",
        &[id.as_bytes(), at_s.as_bytes(), json.as_bytes()],
    );
    format!("n1 {at_s} {tag} {json}")
}

/// The JSON of node `id`'s registry entry, if `key` signed it for `id` and it was written no
/// longer than `max_age` ms before `now` (an entry is rewritten every heartbeat: an older one
/// is a copy put back).
pub fn open_entry<'a>(
    key: &Key,
    id: &str,
    entry: &'a str,
    now: u64,
    max_age: u64,
) -> Result<&'a str, Refusal> {
    let mut fields = entry.splitn(4, ' ');
    let (Some("n1"), Some(at_s), Some(tag), Some(json)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(Refusal::Unsigned);
    };
    let Ok(at) = at_s.parse::<u64>() else {
        return Err(Refusal::Unsigned);
    };
    if !key.verify(
        "miclink node v1",
        &[id.as_bytes(), at_s.as_bytes(), json.as_bytes()],
        tag,
    ) {
        return Err(Refusal::BadSignature);
    }
    if !fresh(at, now, max_age) {
        return Err(Refusal::Stale);
    }
    Ok(json)
}

/// `node`'s claim on `room`, made or renewed at `at`: `<node> <at> <tag>` (the node's id
/// first, so the scripts that renew and release a claim can tell whose it is).
pub fn seal_claim(key: &Key, room: &str, node: &str, at: u64) -> String {
    let at_s = at.to_string();
    let tag = key.tag(
        "miclink room v1",
        &[room.as_bytes(), node.as_bytes(), at_s.as_bytes()],
    );
    format!("{node} {at_s} {tag}")
}

/// The node a claim on `room` names, if `key` signed it for `room` and it was renewed no longer
/// than `max_age` ms before `now`.
pub fn open_claim<'a>(
    key: &Key,
    room: &str,
    claim: &'a str,
    now: u64,
    max_age: u64,
) -> Result<&'a str, Refusal> {
    let fields: Vec<&str> = claim.split(' ').collect();
    let [node, at_s, tag] = fields[..] else {
        return Err(Refusal::Unsigned);
    };
    let Ok(at) = at_s.parse::<u64>() else {
        return Err(Refusal::Unsigned);
    };
    if !crate::valid_node_id(node) {
        return Err(Refusal::Unsigned);
    }
    if !key.verify(
        "miclink room v1",
        &[room.as_bytes(), node.as_bytes(), at_s.as_bytes()],
        tag,
    ) {
        return Err(Refusal::BadSignature);
    }
    if !fresh(at, now, max_age) {
        return Err(Refusal::Stale);
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn sender(seq: u64) -> Sender {
        Sender {
            node: "a".into(),
            boot: 7,
            seq,
        }
    }

    #[test]
    fn a_message_opens_only_in_the_inbox_it_was_sealed_for_with_the_same_secret() {
        let key = Key::new(b"0123456789abcdef");
        let sealed = seal_message(&key, "b", &sender(3), NOW, b"{\"x\":1}");
        let (from, body) = open_message(&key, "b", &sealed, NOW + 5).expect("opens");
        assert_eq!((from, body), (sender(3), &b"{\"x\":1}"[..]));
        assert_eq!(
            open_message(&key, "c", &sealed, NOW),
            Err(Refusal::BadSignature),
            "another node's inbox"
        );
        let other = Key::new(b"another secret!!");
        assert_eq!(
            open_message(&other, "b", &sealed, NOW),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            open_message(&Key::new(b""), "b", &sealed, NOW),
            Err(Refusal::BadSignature),
            "an empty secret is a secret too"
        );
    }

    #[test]
    fn a_changed_message_or_sender_is_refused() {
        let key = Key::new(b"0123456789abcdef");
        let sealed = seal_message(&key, "b", &sender(3), NOW, b"{\"x\":1}");
        let text = String::from_utf8(sealed.clone()).expect("utf-8");
        let tag = text
            .split('\n')
            .next()
            .and_then(|h| h.rsplit(' ').next())
            .expect("a tag");
        for forged in [
            text.replace(tag, &tag.to_uppercase()),
            text.replace("{\"x\":1}", "{\"x\":2}"),
            text.replacen("m1 a ", "m1 c ", 1),
            text.replacen(" 7 3 ", " 7 4 ", 1),
            text.replacen(" 7 3 ", " 8 3 ", 1),
            text.replacen(&NOW.to_string(), &(NOW + 1).to_string(), 1),
        ] {
            assert_eq!(
                open_message(&key, "b", forged.as_bytes(), NOW),
                Err(Refusal::BadSignature),
                "{forged}"
            );
        }
        for unsigned in [
            &b"{\"from\":\"a\",\"relay\":{}}"[..],
            b"m1 a 7 3\n{}",
            b"m2 a 7 3 0 00\n{}",
            b"m1 a:b 7 3 0 00\n{}",
            b"m1 a x 3 0 00\n{}",
            b"",
            b"\n",
        ] {
            assert_eq!(
                open_message(&key, "b", unsigned, NOW),
                Err(Refusal::Unsigned),
                "{}",
                String::from_utf8_lossy(unsigned)
            );
        }
    }

    #[test]
    fn a_message_too_old_or_from_the_future_is_stale() {
        let key = Key::new(b"0123456789abcdef");
        let sealed = seal_message(&key, "b", &sender(1), NOW, b"{}");
        assert!(open_message(&key, "b", &sealed, NOW + MAX_SKEW_MS).is_ok());
        assert_eq!(
            open_message(&key, "b", &sealed, NOW + MAX_SKEW_MS + 1),
            Err(Refusal::Stale)
        );
        assert!(open_message(&key, "b", &sealed, NOW - MAX_SKEW_MS).is_ok());
        assert_eq!(
            open_message(&key, "b", &sealed, NOW - MAX_SKEW_MS - 1),
            Err(Refusal::Stale)
        );
    }

    #[test]
    fn entries_and_claims_are_bound_to_their_node_and_room_and_age() {
        let key = Key::new(b"0123456789abcdef");
        let json =
            r#"{"id":"a","boot":1,"http":"http://a","media":[],"load":{"rooms":0,"members":0}}"#;
        let entry = seal_entry(&key, "a", NOW, json);
        assert_eq!(open_entry(&key, "a", &entry, NOW, 3_000), Ok(json));
        assert_eq!(
            open_entry(&key, "b", &entry, NOW, 3_000),
            Err(Refusal::BadSignature),
            "a's entry put under b's key"
        );
        assert_eq!(
            open_entry(&key, "a", &entry, NOW + 3_001, 3_000),
            Err(Refusal::Stale),
            "a copy put back after it expired"
        );
        assert_eq!(
            open_entry(&key, "a", json, NOW, 3_000),
            Err(Refusal::Unsigned),
            "what an older node wrote"
        );
        let tampered = entry.replace("http://a", "http://attacker.invalid");
        assert_eq!(
            open_entry(&key, "a", &tampered, NOW, 3_000),
            Err(Refusal::BadSignature)
        );

        let claim = seal_claim(&key, "r", "a", NOW);
        assert!(claim.starts_with("a "), "the scripts find the owner first");
        assert_eq!(open_claim(&key, "r", &claim, NOW, 3_000), Ok("a"));
        assert_eq!(
            open_claim(&key, "s", &claim, NOW, 3_000),
            Err(Refusal::BadSignature),
            "a claim moved to another room"
        );
        assert_eq!(
            open_claim(&key, "r", &claim.replacen("a ", "b ", 1), NOW, 3_000),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            open_claim(&key, "r", &claim, NOW + 3_001, 3_000),
            Err(Refusal::Stale)
        );
        assert_eq!(
            open_claim(&key, "r", "fake", NOW, 3_000),
            Err(Refusal::Unsigned)
        );
    }
}

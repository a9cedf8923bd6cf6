//! Identifiers and display names, validated where they are parsed.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A room or user identifier: 1 to 64 characters of `A-Z a-z 0-9 _ - .`.
///
/// Shared (`Arc<str>`) because the same id is copied into many events and indexes; cloning it
/// must not allocate.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ident(Arc<str>);

/// Why a string is not a valid [`Ident`] or [`Name`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentError(&'static str);

impl fmt::Display for IdentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for IdentError {}

impl Ident {
    pub const MAX_LEN: usize = 64;

    pub fn new(s: &str) -> Result<Self, IdentError> {
        if s.is_empty() {
            return Err(IdentError("identifier is empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(IdentError("identifier is longer than 64 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(IdentError(
                "identifier may hold only A-Z a-z 0-9 _ - . characters",
            ));
        }
        Ok(Ident(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Ident {
    type Error = IdentError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Ident::new(&s)
    }
}

impl TryFrom<&str> for Ident {
    type Error = IdentError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Ident::new(s)
    }
}

impl From<Ident> for String {
    fn from(id: Ident) -> String {
        id.0.to_string()
    }
}

impl Borrow<str> for Ident {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Ident {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl PartialEq<str> for Ident {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Ident {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

/// A display name: up to 64 Unicode characters (scalar values, not bytes).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(Arc<str>);

impl Name {
    pub const MAX_CHARS: usize = 64;

    pub fn new(s: &str) -> Result<Self, IdentError> {
        if s.chars().count() > Self::MAX_CHARS {
            return Err(IdentError("name is longer than 64 characters"));
        }
        if s.chars().any(char::is_control) {
            return Err(IdentError("name may not hold control characters"));
        }
        Ok(Name(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&Ident> for Name {
    fn from(id: &Ident) -> Name {
        Name(id.0.clone())
    }
}

impl TryFrom<String> for Name {
    type Error = IdentError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Name::new(&s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0.to_string()
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_contract_alphabet() {
        for ok in ["a", "Room_1", "user-2.x", &"z".repeat(64)] {
            assert!(Ident::new(ok).is_ok(), "{ok:?} should be accepted");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in ["", &"z".repeat(65), "a b", "a/b", "é", "a\0", "<script>"] {
            assert!(Ident::new(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn names_count_characters_not_bytes() {
        assert!(Name::new(&"é".repeat(64)).is_ok());
        assert!(Name::new(&"é".repeat(65)).is_err());
        assert!(Name::new("line\nbreak").is_err());
    }

    #[test]
    fn deserializing_an_invalid_ident_fails() {
        assert!(serde_json::from_str::<Ident>("\"has space\"").is_err());
        let id: Ident = serde_json::from_str("\"ok_id\"").expect("valid");
        assert_eq!(id, "ok_id");
    }
}

//! HS256 join tokens: claims `room`, `sub`, `role`, `exp` must match the join request.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use miclink_protocol::{Ident, Role};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Claims {
    room: String,
    sub: String,
    role: Role,
}

/// Why a join token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum AuthError {
    #[error("this server needs a token to join")]
    Missing,
    #[error("token refused: {0}")]
    Invalid(String),
    #[error("token is for another room")]
    OtherRoom,
    #[error("token is for another user")]
    OtherUser,
    #[error("token is for another role")]
    OtherRole,
}

pub(crate) struct Auth {
    key: DecodingKey,
    validation: Validation,
}

impl Auth {
    pub(crate) fn new(secret: &str) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        // The contract says `exp` must be in the future: no leeway.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// The user `token` lets join `room` as `role` (for a client that names none itself: a
    /// WHIP encoder); the error says why not.
    pub(crate) fn subject(
        &self,
        token: Option<&str>,
        room: &Ident,
        role: Role,
    ) -> Result<Ident, AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        let claims = decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?
            .claims;
        if claims.room != room.as_str() {
            return Err(AuthError::OtherRoom);
        }
        if claims.role != role {
            return Err(AuthError::OtherRole);
        }
        Ident::new(&claims.sub).map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// Whether `token` lets `user` join `room` as `role`; the error says why not.
    pub(crate) fn check(
        &self,
        token: Option<&str>,
        room: &Ident,
        user: &Ident,
        role: Role,
    ) -> Result<(), AuthError> {
        if self.subject(token, room, role)? != *user {
            return Err(AuthError::OtherUser);
        }
        Ok(())
    }
}

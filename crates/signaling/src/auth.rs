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

    /// Whether `token` lets `user` join `room` as `role`; the error says why not.
    pub(crate) fn check(
        &self,
        token: Option<&str>,
        room: &Ident,
        user: &Ident,
        role: Role,
    ) -> Result<(), String> {
        let token = token.ok_or("this server needs a token to join")?;
        let claims = decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| format!("token refused: {e}"))?
            .claims;
        if claims.room != room.as_str() {
            return Err("token is for another room".into());
        }
        if claims.sub != user.as_str() {
            return Err("token is for another user".into());
        }
        if claims.role != role {
            return Err("token is for another role".into());
        }
        Ok(())
    }
}

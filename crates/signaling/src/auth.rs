//! HS256 join tokens: claims `room`, `sub`, `role`, `exp` must match the join request, and a
//! token with `nbf` is refused before that time. Refusals are said in our own words: the JWT
//! library's messages name its internals and may quote what the token held.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use miclink_protocol::{Ident, Role};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Claims {
    room: String,
    sub: String,
    role: Role,
    /// Not before (unix seconds).
    #[serde(default)]
    nbf: Option<u64>,
}

/// How far ahead of this server's clock a token's `nbf` may be: issuers commonly set it to
/// the moment they sign, and their clock may run a little ahead. (`exp` gets no leeway: the
/// contract says it must be in the future.)
const NBF_LEEWAY_S: u64 = 60;

/// Why a join token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum AuthError {
    #[error("this server needs a token to join")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's signature does not match this server's secret")]
    BadSignature,
    #[error("the token must be signed with HS256")]
    Algorithm,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error(
        "the token lacks a required claim (exp, sub, room or role) or has one of the wrong type"
    )]
    Claims,
    #[error("the token's sub is not a valid user id")]
    BadSubject,
    #[error("token is for another room")]
    OtherRoom,
    #[error("token is for another user")]
    OtherUser,
    #[error("token is for another role")]
    OtherRole,
    #[error("the server API takes admin tokens only (role \"admin\")")]
    NotAdmin,
}

/// A token for `room`, `user` and `role` (an admin token when `role` is admin, which names no
/// room), signed with `secret` and valid for `ttl_s` seconds from now.
pub fn sign_token(
    secret: &str,
    room: Option<&Ident>,
    user: &str,
    role: miclink_protocol::api::TokenRole,
    ttl_s: u64,
) -> String {
    let exp = jsonwebtoken::get_current_timestamp().saturating_add(ttl_s);
    let claims = match room {
        Some(room) => serde_json::json!({"room": room, "sub": user, "role": role, "exp": exp}),
        None => serde_json::json!({"sub": user, "role": role, "exp": exp}),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signs any JSON claims")
}

/// An admin token's claims (the server API's caller): `role: "admin"`, `exp`; `sub` names the
/// caller in logs.
#[derive(Debug, Deserialize)]
struct AdminClaims {
    role: String,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    nbf: Option<u64>,
}

/// Claims with a not-before time (checked with its own leeway, not the library's).
trait HasNbf {
    fn nbf(&self) -> Option<u64>;
}

impl HasNbf for Claims {
    fn nbf(&self) -> Option<u64> {
        self.nbf
    }
}

impl HasNbf for AdminClaims {
    fn nbf(&self) -> Option<u64> {
        self.nbf
    }
}

pub(crate) struct Auth {
    key: DecodingKey,
    validation: Validation,
    admin: Validation,
}

impl Auth {
    pub(crate) fn new(secret: &str) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        // The contract says `exp` must be in the future: no leeway.
        validation.leeway = 0;
        // Checked below, with its own leeway.
        validation.validate_nbf = false;
        let mut admin = validation.clone();
        admin.set_required_spec_claims(&["exp"]);
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            admin,
        }
    }

    /// `token`'s claims, signed with this server's secret and checked by `validation`, whose
    /// `nbf` (if any) has come: what every token, a member's or an admin's, must pass.
    fn claims<T: serde::de::DeserializeOwned + HasNbf>(
        &self,
        token: &str,
        validation: &Validation,
    ) -> Result<T, AuthError> {
        // A header the library cannot read names an algorithm it does not know (`none`), or
        // is no header at all.
        if let Err(e) = jsonwebtoken::decode_header(token) {
            return Err(match e.kind() {
                ErrorKind::Json(_) => AuthError::Algorithm,
                _ => AuthError::Malformed,
            });
        }
        let claims = decode::<T>(token, &self.key, validation)
            .map_err(|e| refusal(e.kind()))?
            .claims;
        if claims
            .nbf()
            .is_some_and(|nbf| nbf > jsonwebtoken::get_current_timestamp() + NBF_LEEWAY_S)
        {
            return Err(AuthError::NotYetValid);
        }
        Ok(claims)
    }

    /// Whether `token` is an admin token of this server (the server API's); its `sub`, or
    /// "admin" when it names none.
    pub(crate) fn admin(&self, token: &str) -> Result<String, AuthError> {
        let claims: AdminClaims = self.claims(token, &self.admin)?;
        if claims.role != "admin" {
            return Err(AuthError::NotAdmin);
        }
        // A name for logs only: kept short and printable whatever the token says.
        let sub: String = claims
            .sub
            .unwrap_or_else(|| "admin".into())
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect();
        Ok(sub)
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
        let claims: Claims = self.claims(token, &self.validation)?;
        if claims.room != room.as_str() {
            return Err(AuthError::OtherRoom);
        }
        if claims.role != role {
            return Err(AuthError::OtherRole);
        }
        Ident::new(&claims.sub).map_err(|_| AuthError::BadSubject)
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

pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The refusal for what the JWT library found.
fn refusal(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => AuthError::Algorithm,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        // A claim of the wrong shape fails as JSON: `role` not a role, `room` not a string.
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::Json(_) => AuthError::Claims,
        _ => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(claims: serde_json::Value, alg: Algorithm, secret: &str) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    }

    fn check(t: &str) -> Result<(), AuthError> {
        let id = |s: &str| Ident::new(s).expect("id");
        Auth::new(SECRET).check(Some(t), &id("r"), &id("u"), Role::Anchor)
    }

    #[test]
    fn refusals_are_said_in_our_words_and_nbf_is_checked() {
        let good = json!({"room": "r", "sub": "u", "role": "anchor", "exp": now() + 60});
        assert_eq!(
            check(&token(good.clone(), Algorithm::HS256, SECRET)),
            Ok(())
        );
        let cases = [
            (
                token(good.clone(), Algorithm::HS256, "another-secret-0123"),
                AuthError::BadSignature,
            ),
            (
                token(good.clone(), Algorithm::HS384, SECRET),
                AuthError::Algorithm,
            ),
            (
                token(
                    json!({"room": "r", "sub": "u", "role": "anchor", "exp": now() - 1}),
                    Algorithm::HS256,
                    SECRET,
                ),
                AuthError::Expired,
            ),
            (
                token(
                    json!({"room": "r", "sub": "u", "role": "anchor", "exp": now() + 600, "nbf": now() + 300}),
                    Algorithm::HS256,
                    SECRET,
                ),
                AuthError::NotYetValid,
            ),
            (
                token(
                    json!({"room": "r", "sub": "u", "role": "anchor"}),
                    Algorithm::HS256,
                    SECRET,
                ),
                AuthError::Claims,
            ),
            (
                token(
                    json!({"room": "r", "sub": "u", "role": "king", "exp": now() + 60}),
                    Algorithm::HS256,
                    SECRET,
                ),
                AuthError::Claims,
            ),
            ("not.a.jwt".to_owned(), AuthError::Malformed),
            ("eyJhbGciOiJub25lIn0.e30.".to_owned(), AuthError::Algorithm),
        ];
        for (t, want) in cases {
            let got = check(&t).expect_err("refused");
            assert_eq!(got, want, "{t}");
            // Nothing of the library's wording (or of the token) in what the client reads.
            let said = got.to_string();
            assert!(!said.contains("Error") && !said.contains("Kind"), "{said}");
        }
        // A token whose nbf has passed is fine, and so is one a clock a little ahead signed.
        let past =
            json!({"room": "r", "sub": "u", "role": "anchor", "exp": now() + 60, "nbf": now() - 5});
        assert_eq!(check(&token(past, Algorithm::HS256, SECRET)), Ok(()));
        let ahead = json!({"room": "r", "sub": "u", "role": "anchor", "exp": now() + 600, "nbf": now() + 20});
        assert_eq!(check(&token(ahead, Algorithm::HS256, SECRET)), Ok(()));
    }

    #[test]
    fn admin_tokens_name_the_admin_role_and_expire() {
        use miclink_protocol::api::TokenRole;
        let auth = Auth::new(SECRET);
        let id = Ident::new("r").expect("id");
        let admin = sign_token(SECRET, None, "ops", TokenRole::Admin, 60);
        assert_eq!(auth.admin(&admin), Ok("ops".to_owned()));
        // A member's token is not an admin's, and an admin's does not join a room.
        let member = sign_token(SECRET, Some(&id), "u", TokenRole::Anchor, 60);
        assert_eq!(auth.admin(&member), Err(AuthError::NotAdmin));
        assert!(check(&admin).is_err());
        assert_eq!(check(&member), Ok(()));
        let expired = token(
            json!({"role": "admin", "exp": now() - 1}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(auth.admin(&expired), Err(AuthError::Expired));
        let unsigned = sign_token("another-secret-0123", None, "x", TokenRole::Admin, 60);
        assert_eq!(auth.admin(&unsigned), Err(AuthError::BadSignature));
        let no_exp = token(json!({"role": "admin"}), Algorithm::HS256, SECRET);
        assert_eq!(auth.admin(&no_exp), Err(AuthError::Claims));
        // Without a sub the caller is "admin"; a sub full of control characters is cleaned.
        let bare = token(
            json!({"role": "admin", "exp": now() + 60}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(auth.admin(&bare), Ok("admin".to_owned()));
    }
}

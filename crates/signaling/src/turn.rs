//! Time-limited TURN credentials, the scheme coturn implements with `use-auth-secret`
//! (the "TURN REST API"): the username is `<expiry, unix seconds>:<user>` and the password is
//! base64(HMAC-SHA1(shared secret, username)). The TURN server checks both without asking us,
//! and refuses the username once its expiry has passed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use miclink_protocol::IceServer;
use sha1::Sha1;

/// The secret shared with the TURN server and how long credentials made with it last.
#[derive(Clone)]
pub struct TurnSecret {
    secret: String,
    ttl: Duration,
}

impl std::fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnSecret")
            .field("secret", &"<hidden>")
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl TurnSecret {
    pub fn new(secret: impl Into<String>, ttl: Duration) -> TurnSecret {
        TurnSecret {
            secret: secret.into(),
            ttl,
        }
    }

    /// The username and password `user` may use until `now + ttl`.
    pub fn credentials(&self, user: &str, now: SystemTime) -> (String, String) {
        let expiry = now
            .checked_add(self.ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let username = format!("{expiry}:{user}");
        let password = password(&self.secret, &username);
        (username, password)
    }
}

/// base64(HMAC-SHA1(secret, username)).
fn password(secret: &str, username: &str) -> String {
    // HMAC takes a key of any length: new_from_slice cannot fail for it.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A `turn:` or `turns:` URL (a STUN URL needs no credentials).
pub fn is_turn_url(url: &str) -> bool {
    url.starts_with("turn:") || url.starts_with("turns:")
}

/// A TURN server configured without credentials of its own: it gets each member's.
pub fn takes_credentials(server: &IceServer) -> bool {
    server.urls.iter().any(|u| is_turn_url(u))
        && server.username.is_none()
        && server.credential.is_none()
}

/// The ICE servers one member is told about: the configured ones, with fresh credentials for
/// each that names a `turn:` or `turns:` URL and has none of its own, when a secret is set.
pub fn ice_servers_for(
    configured: &[IceServer],
    turn: Option<&TurnSecret>,
    user: &str,
    now: SystemTime,
) -> Vec<IceServer> {
    configured
        .iter()
        .map(|server| match turn {
            Some(turn) if takes_credentials(server) => {
                let (username, credential) = turn.credentials(user, now);
                IceServer {
                    urls: server.urls.clone(),
                    username: Some(username),
                    credential: Some(credential),
                }
            }
            _ => server.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_base64_of_hmac_sha1() {
        // RFC 2202, HMAC-SHA1 test case 2: effcdf6ae5eb2fa2d27416d5f184df9c259a7c79.
        assert_eq!(
            password("Jefe", "what do ya want for nothing?"),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
    }

    #[test]
    fn credentials_name_their_expiry_and_the_user() {
        let turn = TurnSecret::new("s3cret-s3cret-s3cret", Duration::from_secs(3600));
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (username, password) = turn.credentials("alice", now);
        assert_eq!(username, "1800003600:alice");
        assert_eq!(password, super::password("s3cret-s3cret-s3cret", &username));
    }

    #[test]
    fn only_turn_servers_without_their_own_credentials_get_fresh_ones() {
        let server = |url: &str, user: Option<&str>| IceServer {
            urls: vec![url.to_owned()],
            username: user.map(str::to_owned),
            credential: user.map(str::to_owned),
        };
        let configured = vec![
            server("stun:stun.example:3478", None),
            server("turn:turn.example:3478?transport=udp", None),
            server("turns:turn.example:5349", Some("static")),
        ];
        let turn = TurnSecret::new("s3cret-s3cret-s3cret", Duration::from_secs(60));
        let now = UNIX_EPOCH + Duration::from_secs(100);
        let given = ice_servers_for(&configured, Some(&turn), "bob", now);
        assert_eq!(given[0], configured[0], "STUN needs none");
        assert_eq!(given[1].username.as_deref(), Some("160:bob"));
        assert!(given[1].credential.is_some());
        assert_eq!(given[2], configured[2], "configured credentials are kept");
        assert_eq!(ice_servers_for(&configured, None, "bob", now), configured);
    }
}

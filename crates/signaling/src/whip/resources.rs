//! The table of live WHIP and WHEP resources, and the caps on them: sessions per client address
//! and WHEP viewers per room. A resource's place in the caps is taken before its session is set
//! up and given back when the last handle to it goes, so a set-up that fails or is cancelled
//! frees it too.
//!
//! It owns only this bookkeeping: it does not talk to the hub, and it does not parse requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::Response;
use miclink_protocol::Ident;

use super::Kind;
use super::http::answer;
use crate::wire::ConnId;

/// The live WHIP and WHEP resources: resource id -> its session's connection; and what each
/// client address and each room holds of them.
#[derive(Default)]
pub(crate) struct Resources {
    map: Mutex<HashMap<String, Resource>>,
    held: Arc<Mutex<Held>>,
}

/// Sessions held (or being set up) per client address and WHEP viewers per room.
#[derive(Default)]
struct Held {
    by_ip: HashMap<IpAddr, usize>,
    by_room: HashMap<Ident, usize>,
}

/// A session's place in the caps, given back when the resource goes (or its set-up failed).
pub(super) struct Place {
    held: Arc<Mutex<Held>>,
    ip: Option<IpAddr>,
    room: Option<Ident>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ip) = self.ip
            && let Some(n) = held.by_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                held.by_ip.remove(&ip);
            }
        }
        if let Some(room) = &self.room
            && let Some(n) = held.by_room.get_mut(room)
        {
            *n -= 1;
            if *n == 0 {
                held.by_room.remove(room);
            }
        }
    }
}

#[derive(Clone)]
pub(super) struct Resource {
    pub(super) kind: Kind,
    /// A WHIP encoder publishing for an anchor on a socket, not a session of its own.
    pub(super) attached: bool,
    pub(super) room: Ident,
    pub(super) user: Ident,
    pub(super) conn: ConnId,
    pub(super) etag: String,
    /// Its place in the caps, given back with the last clone.
    pub(super) _place: Arc<Place>,
}

impl Resources {
    pub(super) fn get(&self, id: &str) -> Option<Resource> {
        self.lock().get(id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Resource>> {
        // Every update under the lock is one statement: a poisoned map is still whole.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn insert(&self, id: String, r: Resource) {
        self.lock().insert(id, r);
    }

    /// Forget `id` if it is still `conn`'s.
    pub(super) fn remove(&self, id: &str, conn: ConnId) {
        let mut map = self.lock();
        if map.get(id).is_some_and(|r| r.conn == conn) {
            map.remove(id);
        }
    }

    /// A place for a new session of `kind` in `room` from client `ip` (`None`: not counted per
    /// address), or the answer refusing it.
    // The refusal is the handler's whole answer, returned at once: boxing it would buy nothing.
    #[allow(clippy::result_large_err)]
    pub(super) fn admit(
        &self,
        config: &crate::SignalingConfig,
        ip: Option<IpAddr>,
        kind: Kind,
        room: &Ident,
    ) -> Result<Place, Response> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ip) = ip
            && config.http_media_per_ip > 0
            && held.by_ip.get(&ip).copied().unwrap_or(0) >= config.http_media_per_ip
        {
            return Err(answer(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this address holds {} WHIP and WHEP sessions, the most it may: end one \
                     (DELETE its resource) first\n",
                    config.http_media_per_ip
                ),
            ));
        }
        let room = (kind == Kind::Whep).then(|| room.clone());
        if let Some(room) = &room
            && held.by_room.get(room).copied().unwrap_or(0) >= config.whep_per_room
        {
            return Err(answer(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "this room has {} WHEP viewers, the most it takes\n",
                    config.whep_per_room
                ),
            ));
        }
        if let Some(ip) = ip {
            *held.by_ip.entry(ip).or_default() += 1;
        }
        if let Some(room) = &room {
            *held.by_room.entry(room.clone()).or_default() += 1;
        }
        Ok(Place {
            held: self.held.clone(),
            ip,
            room,
        })
    }
}

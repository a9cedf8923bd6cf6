//! Connections and sessions: what the hub sends a connection (queued with `try_send`, a
//! connection that cannot keep up is dropped), a session (kept for its resume while it has no
//! socket), a member or a whole room; and their ends: a dropped connection (its session waits
//! out its grace), a replaced session's kick, a session forgotten when its member departs.
//!
//! It must not decide what a request gets (that is `requests`) nor decide seats: it carries what
//! was decided, and tells the seats a connection was lost.

use axum::extract::ws::Utf8Bytes;
use miclink_protocol::{ErrorCode, Event, Ident, JoinResult, KickReason, Reply};
use miclink_seats::{Action, Joined};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{Hub, now};
use crate::relay::{Member, Relay, RelayOut};
use crate::session::SessionId;
use crate::wire::{CLOSE_GOING_AWAY, CLOSE_REPLACED, ConnId, Outbound, encode};

impl Hub {
    pub(super) fn reply_joined(&mut self, conn: ConnId, id: u64, joined: Joined, session: String) {
        let ice_servers = crate::turn::ice_servers_for(
            &self.config.ice_servers,
            self.config.turn.as_ref(),
            joined.me.user.as_str(),
            std::time::SystemTime::now(),
        );
        let member = Member {
            room: joined.room.room.clone(),
            user: joined.me.user.clone(),
        };
        let result = JoinResult {
            room: joined.room,
            me: joined.me,
            ice_servers,
            session,
            requests: joined.pending,
            metadata: joined.metadata,
        };
        let text = encode(&Reply::ok(id, result));
        let member = Some(member);
        self.queue(conn, Outbound::Joined { text, member });
    }

    /// One event to one member's session, if they still have one.
    pub(super) fn send_member(&mut self, room: Ident, user: Ident, event: &Event) {
        if let Some(sid) = self.by_member.get(&(room.clone(), user.clone())).copied() {
            self.send_session(sid, encode(event));
        } else if let Some(conn) = self.edge_conn(&room, &user) {
            // A member of a room held elsewhere, whose media is served here.
            self.send_conn(conn, encode(event));
        }
    }

    /// One event to every session of `room`, serialized once.
    pub(super) fn broadcast(&mut self, room: &Ident, event: &Event) {
        let Some(members) = self.rooms.get(room) else {
            return;
        };
        let text = encode(event);
        let members: Vec<SessionId> = members.iter().copied().collect();
        for sid in members {
            self.send_session(sid, text.clone());
        }
    }

    /// One event to every session of `room` that has a socket now: a room message, which a
    /// session waiting for its resume does not keep (its backlog is for the room's state).
    pub(super) fn broadcast_live(&mut self, room: &Ident, event: &Event) {
        let Some(members) = self.rooms.get(room) else {
            return;
        };
        let text = encode(event);
        let conns: Vec<ConnId> = members
            .iter()
            .filter_map(|sid| self.sessions.get(sid)?.conn)
            .collect();
        for conn in conns {
            self.send_conn(conn, text.clone());
        }
    }

    pub(super) fn reply_err(
        &mut self,
        conn: ConnId,
        id: u64,
        code: ErrorCode,
        message: impl Into<String>,
    ) {
        self.send_conn(conn, encode(&Reply::err(id, code, message)));
    }

    pub(super) fn send_session(&mut self, sid: SessionId, text: Utf8Bytes) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        match s.conn {
            Some(conn) => self.send_conn(conn, text),
            None => s.keep(text),
        }
    }

    pub(super) fn send_conn(&mut self, conn: ConnId, text: Utf8Bytes) {
        self.queue(conn, Outbound::Text(text));
    }

    pub(super) fn queue(&mut self, conn: ConnId, out: Outbound) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = c.tx.try_send(out) {
            warn!(conn, "socket cannot keep up; dropping it");
            self.drop_conn(conn);
        }
    }

    /// Forget a socket. Its session, if any, waits for a resume within the grace period.
    pub(super) fn drop_conn(&mut self, conn: ConnId) {
        // An HTTP client never resumes: its media here ends with it.
        let http = self.conns.get(&conn).is_some_and(|c| c.http);
        self.edge_conn_ends(conn, http);
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(cluster) = &mut self.cluster {
            cluster.resolving.remove(&conn);
            if let Some(key) = c.served_for() {
                // Dropped here (too slow, or shutting down): the edge closes its socket.
                cluster.served.remove(key);
                let _ = cluster.out.try_send(RelayOut::Send {
                    node: key.0.clone(),
                    relay: Relay::Close {
                        conn: key.1,
                        code: CLOSE_GOING_AWAY,
                        reason: "closed".into(),
                    },
                });
            }
            if let Some(node) = c.origin().map(str::to_owned) {
                // Best effort: a full queue means the origin hears of it when its own socket
                // for this one is dropped as too slow.
                let _ = cluster.out.try_send(RelayOut::Send {
                    node,
                    relay: Relay::Closed { conn },
                });
            }
        }
        let Some(sid) = c.session else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.conn = None;
        if self.shutdown.is_none() {
            let (room, user) = (s.room.clone(), s.user.clone());
            debug!(%room, %user, "connection lost; grace period starts");
            let _ = self
                .seats
                .handle(now(), &room, &user, Action::ConnectionLost);
        }
    }

    /// Tell a session's socket it was replaced, close it, and unbind it.
    pub(super) fn kick(&mut self, sid: SessionId) {
        let Some(conn) = self.sessions.get_mut(&sid).and_then(|s| s.conn.take()) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = None;
            let told =
                c.tx.try_send(Outbound::Text(encode(&Event::Kicked {
                    reason: KickReason::Replaced,
                })))
                .is_ok()
                    && c.tx
                        .try_send(Outbound::Close(CLOSE_REPLACED, "replaced"))
                        .is_ok();
            if !told {
                // Too far behind to be told: dropping the connection ends its task, and, for a
                // connection served for another node, frees its place and tells that node (as
                // any drop does; its session is detached already, so the seats hear nothing).
                self.drop_conn(conn);
            }
        }
    }

    pub(super) fn forget_session(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.remove(&sid) else {
            return;
        };
        self.by_token.remove(&s.token);
        let key = (s.room.clone(), s.user.clone());
        // An encoder publishing for them goes with them.
        if let Some(enc) = self.attached.remove(&key)
            && let Some(c) = self.conns.remove(&enc)
        {
            let _ =
                c.tx.try_send(Outbound::Close(CLOSE_GOING_AWAY, "the anchor left"));
        }
        if self.by_member.get(&key) == Some(&sid) {
            self.by_member.remove(&key);
        }
        if let Some(set) = self.rooms.get_mut(&s.room) {
            set.remove(&sid);
            if set.is_empty() {
                self.rooms.remove(&s.room);
            }
        }
        if let Some(conn) = s.conn
            && let Some(c) = self.conns.get_mut(&conn)
        {
            c.session = None;
            // The socket stays open (it may join again) but is again one without a session,
            // held to the join timeout like a new one.
            let told = c.tx.try_send(Outbound::Unbound).is_ok();
            if c.served_for().is_some() {
                // Relayed: `Unbound` ends the relaying at the edge; nothing more comes here.
                self.forget_served(conn);
            } else if !told {
                self.conns.remove(&conn);
            }
        }
    }
}

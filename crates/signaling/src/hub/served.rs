//! The origin's side of a cluster: connections that other nodes relay here (a socket there whose
//! room this node holds) are served as sockets of this hub, their replies and events carried back
//! in order; one is let go when its session ends, its socket closes there, or its node is lost.
//! And what the node serving such a member's media must hear: its permit to publish, from the
//! seats here, and whose publish reports count.
//!
//! It must not relay this node's own sockets elsewhere (that is `cluster`), nor handle media of
//! rooms held elsewhere (that is `edge`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use miclink_protocol::{ErrorCode, Ident, Reply, Request};
use miclink_sfu::MediaChange;
use tokio::sync::mpsc;
use tracing::warn;

use super::cluster::{ConnCluster, Served};
use super::{Conn, Hub};
use crate::relay::{Relay, RelayOut, SeatPermit};
use crate::session::SessionId;
use crate::wire::{ConnId, Outbound, encode};

impl Hub {
    /// Request `id` (the `n`th relayed) of connection `conn` of node `from`, whose room is held
    /// here: served on a connection of this hub made for it by its first request.
    pub(super) fn serve_request(
        &mut self,
        from: String,
        conn: ConnId,
        n: u64,
        id: u64,
        request: Request,
    ) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let key = (from, conn);
        let here = match cluster.served.get(&key) {
            Some(here) => *here,
            None => {
                // Only a join or a resume starts a relayed connection: anything else
                // is for a session that ended here (the edge has not heard yet). Its
                // request is answered as a socket without a session is, and the
                // relaying ends after it.
                let starts = matches!(request, Request::Join { .. } | Request::Resume { .. });
                let full = cluster.served.len() >= self.config.max_relayed;
                if !starts || full {
                    let (code, message) = if starts {
                        warn!(node = %key.0, "too many relayed connections; refusing one");
                        (ErrorCode::Unavailable, "the server is full")
                    } else {
                        (ErrorCode::NotInRoom, "join a room first")
                    };
                    let text = encode(&Reply::err(id, code, message));
                    for relay in [
                        Relay::Text {
                            conn,
                            text: text.as_str().to_owned(),
                        },
                        Relay::Unbound { conn, upto: n },
                    ] {
                        let node = key.0.clone();
                        let _ = cluster.out.try_send(RelayOut::Send { node, relay });
                    }
                    return;
                }
                let here = cluster.next_served;
                cluster.next_served -= 1;
                cluster.served.insert(key.clone(), here);
                let (tx, rx) = mpsc::channel(self.config.outbound_queue);
                let mut c = Conn::new(tx, false);
                let upto = Arc::<AtomicU64>::default();
                let out = cluster.out.clone();
                tokio::spawn(carry_to_node(rx, key.0.clone(), conn, upto.clone(), out));
                c.cluster = Some(ConnCluster::Served(Served { by: key, upto }));
                self.conns.insert(here, c);
                here
            }
        };
        if let Some(s) = self.conns.get(&here).and_then(|c| c.served()) {
            s.upto.store(n, Ordering::Relaxed);
        }
        self.on_request(here, id, request);
        // A join or resume that failed, or a session that ended with this request:
        // the relaying ends (the edge clears it on `Unbound`) and the connection goes.
        if self.conns.get(&here).is_some_and(|c| c.session.is_none()) {
            self.queue(here, Outbound::Unbound);
            self.forget_served(here);
        }
    }

    /// Node `from` closed its connection `conn`, or stopped relaying it.
    pub(super) fn served_closed(&mut self, from: String, conn: ConnId) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        if let Some(here) = cluster.served.get(&(from, conn)).copied() {
            self.forget_served(here);
        }
    }

    /// Let go of a connection served for another node without telling that node to close it
    /// (it closed it, ended it with `Unbound`, or is gone).
    pub(super) fn forget_served(&mut self, here: ConnId) {
        if let Some(c) = self.conns.get_mut(&here)
            && let Some(Served { by: key, .. }) = c.take_served()
            && let Some(cluster) = &mut self.cluster
        {
            cluster.served.remove(&key);
        }
        self.drop_conn(here);
    }

    /// Origin: a seat change for a member whose media another node serves goes there too.
    pub(super) fn seat_to_edge(&mut self, change: &MediaChange) {
        let (room, user, allow) = match change {
            MediaChange::AllowPublish {
                room,
                user,
                seat,
                audio,
                video,
                link,
            } => (
                room,
                user,
                Some(SeatPermit {
                    seat: *seat,
                    audio: *audio,
                    video: *video,
                    link: *link,
                }),
            ),
            MediaChange::RevokePublish { room, user } => (room, user, None),
            _ => return,
        };
        // The member's node, whether its socket is there now or in its grace.
        let node = self
            .by_member
            .get(&(room.clone(), user.clone()))
            .and_then(|sid| self.sessions.get(sid)?.node.clone());
        if let Some(node) = node {
            let relay = Relay::MediaSeat {
                room: room.clone(),
                user: user.clone(),
                allow,
            };
            self.tell_node(node, relay);
        }
    }

    /// Origin: session `sid` is served on `conn` now (joined or resumed). When that is another
    /// node's socket, that node serves the member's media: it hears the member's permit to
    /// publish (nothing without a seat), in order after the reply that makes the member known
    /// there. A node the member left hears that it may publish nothing there any more.
    pub(super) fn member_node(&mut self, sid: SessionId, conn: ConnId) {
        if self.cluster.is_none() {
            return;
        }
        let node = self
            .conns
            .get(&conn)
            .and_then(|c| c.served_for())
            .map(|(node, _)| node.clone());
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let (room, user) = (s.room.clone(), s.user.clone());
        let before = std::mem::replace(&mut s.node, node.clone());
        if let Some(before) = before.filter(|b| Some(b) != node.as_ref()) {
            let relay = Relay::MediaSeat {
                room: room.clone(),
                user: user.clone(),
                allow: None,
            };
            self.tell_node(before, relay);
        }
        if node.is_none() {
            return;
        }
        let allow = match (
            self.seats.seat(&room, &user),
            self.seats.link(&room, &user),
            self.seats.may_publish(&room, &user),
        ) {
            (Some(seat), Some(link), Some((audio, video))) => Some(SeatPermit {
                seat,
                audio,
                video,
                link,
            }),
            _ => None,
        };
        let relay = Relay::MediaSeat { room, user, allow };
        self.queue(conn, Outbound::ToNode(Box::new(relay)));
    }

    /// Origin: whether member `user` of `room` is served on another node (and publishes there:
    /// not through an encoder attached here).
    pub(super) fn served_elsewhere(&self, room: &Ident, user: &Ident) -> bool {
        let key = (room.clone(), user.clone());
        if self.attached.contains_key(&key) {
            return false;
        }
        self.by_member
            .get(&key)
            .and_then(|sid| self.sessions.get(sid))
            .is_some_and(|s| s.node.is_some())
    }

    /// Whether member `user` of `room` is served on node `node` (a report from a node it left
    /// does not count).
    pub(super) fn member_on(&self, room: &Ident, user: &Ident, node: &str) -> bool {
        self.by_member
            .get(&(room.clone(), user.clone()))
            .and_then(|sid| self.sessions.get(sid))
            .is_some_and(|s| s.node.as_deref() == Some(node))
    }
}

/// Carry what the hub sends a connection of `node` (its id `conn`) there, until the hub lets
/// go of it (which tells that node itself, when it must).
async fn carry_to_node(
    mut rx: mpsc::Receiver<Outbound>,
    node: String,
    conn: ConnId,
    upto: Arc<AtomicU64>,
    out: mpsc::Sender<RelayOut>,
) {
    while let Some(o) = rx.recv().await {
        let relay = match o {
            Outbound::Text(text) => Relay::Text {
                conn,
                text: text.as_str().to_owned(),
            },
            Outbound::Joined { text, member } => Relay::Joined {
                conn,
                text: text.as_str().to_owned(),
                member,
            },
            // The hub takes no request on the connection after it queues this.
            Outbound::Unbound => Relay::Unbound {
                conn,
                upto: upto.load(Ordering::Relaxed),
            },
            Outbound::Close(code, reason) => Relay::Close {
                conn,
                code,
                reason: reason.to_owned(),
            },
            Outbound::ToNode(relay) => *relay,
        };
        if out
            .send(RelayOut::Send {
                node: node.clone(),
                relay,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

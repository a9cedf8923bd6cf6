//! This node in a cluster (`--redis-url`): its heartbeat in the registry, its rooms in the room
//! directory, the relaying of connections whose room another node holds, and what it knows of
//! the other nodes, for `/metrics` and `/healthz`.
//!
//! Three tasks:
//! - **Relay out**: the hub asks which node holds a room a socket joins (the room is claimed for
//!   this node when nobody holds it; each lookup in a task of its own) and hands over what must
//!   reach other nodes, which goes to their inboxes as JSON [`Envelope`]s, in order.
//! - **Inbox**: what other nodes send this one goes to the hub, once the cluster crate has
//!   checked who sent it (signed with the cluster secret by a live node, fresh, not a replay).
//! - **Heartbeat**: every interval the node renews its registry entry and its claims, claims the
//!   rooms it holds that it has not claimed yet, releases those it no longer holds, and reads
//!   the registry: a node lost is told to the hub, which ends the relayed sessions of rooms that
//!   node held (`room_ended`, `node_lost`).
//!
//! A room claimed by another node that this one holds too (both got their first joins while
//! Redis was unreachable) is a conflict: counted and logged. Redis being unreachable does not
//! stop the node: it serves joins itself and tries again at the next beat; `/healthz` says so.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use miclink_cluster::{Claim, Cluster, ClusterError, Load, Membership, Refused};
use miclink_signaling::Signaling;
use miclink_signaling::relay::{Envelope, Relay, RelayOut};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// What the cluster tasks know, read by `/metrics` and `/healthz`.
#[derive(Debug, Default)]
pub(crate) struct ClusterState {
    pub(crate) node_id: String,
    /// Nodes alive at the last registry read, this one included.
    pub(crate) nodes: AtomicU64,
    /// Rooms this node holds the claim on.
    pub(crate) origin_rooms: AtomicU64,
    /// Claims refused because another node holds the room.
    pub(crate) conflicts: AtomicU64,
    /// Claims this node lost (it missed renewals and another node took the room).
    pub(crate) claims_lost: AtomicU64,
    pub(crate) redis_errors: AtomicU64,
    /// Messages to and from other nodes.
    pub(crate) relayed_out: AtomicU64,
    pub(crate) relayed_in: AtomicU64,
    /// Inbox messages that were signed by a live node but were not a relay message.
    pub(crate) bad_messages: AtomicU64,
    /// What the cluster crate refused to believe: messages and records, by reason.
    pub(crate) refused: Arc<Refused>,
    /// Whether the last beat reached Redis.
    pub(crate) redis_up: AtomicBool,
}

/// Rooms this node claimed, and when: a room claimed for a join is not held by the hub until
/// the join is done, and must not be released as unheld meanwhile.
type Claimed = Arc<Mutex<BTreeMap<String, Instant>>>;

/// Held across every change of this node's claims in Redis: a join's claim and the heartbeat's
/// releases and claims. Without it a join could claim a room (finding this node's own claim)
/// in the instant between the heartbeat reading the room as empty and releasing it: the room
/// would then be served here with no claim, and another node could take it too.
type Directory = Arc<tokio::sync::Mutex<()>>;

/// Directory lookups of joins waiting at once for their turn (the claims themselves go one
/// at a time, under [`Directory`]); each socket has at most one, so this only bounds what a
/// slow Redis makes wait.
const RESOLVES_IN_FLIGHT: usize = 256;

/// Run the node's part of the cluster until `stop` resolves, then leave it (the entry and the
/// claims go at once).
pub(crate) async fn run(
    cluster: Cluster,
    signaling: Signaling,
    relay_out: mpsc::Receiver<RelayOut>,
    state: Arc<ClusterState>,
    stop: impl Future<Output = ()>,
) {
    let claimed: Claimed = Arc::default();
    let directory: Directory = Arc::default();
    let inbox = tokio::spawn(inbox(cluster.clone(), signaling.clone(), state.clone()));
    let out = tokio::spawn(relay(
        cluster.clone(),
        signaling.clone(),
        relay_out,
        claimed.clone(),
        directory.clone(),
        state.clone(),
    ));
    let mut tick = tokio::time::interval(cluster.config().heartbeat_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Rooms whose conflict was logged, so a long conflict is one line.
    let mut conflicted: BTreeSet<String> = BTreeSet::new();
    let mut membership = Membership::default();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => break,
        }
        let result = {
            // The rooms are read under the lock, so no claim for a join lands between reading
            // them and releasing those found empty.
            let _directory = directory.lock().await;
            let Some(rooms) = signaling.rooms().await else {
                break;
            };
            beat(&cluster, &rooms, &claimed, &mut conflicted, &state).await
        };
        let lost = match result {
            Ok(()) => cluster.nodes().await.map(|nodes| {
                state.nodes.store(nodes.len() as u64, Ordering::Relaxed);
                membership.update(&nodes)
            }),
            Err(e) => Err(e),
        };
        state.redis_up.store(lost.is_ok(), Ordering::Relaxed);
        match lost {
            Ok(changes) => {
                // Lost first: a node that restarted under its id is both, and must end up live.
                for node in changes.lost {
                    warn!(%node, "cluster node lost");
                    signaling.node_lost(node).await;
                }
                for node in changes.joined {
                    info!(%node, "cluster node joined");
                    signaling.node_joined(node).await;
                }
            }
            Err(e) => {
                state.redis_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "cluster heartbeat failed; trying again at the next one");
            }
        }
    }
    inbox.abort();
    out.abort();
    let rooms: Vec<String> = lock(&claimed).keys().cloned().collect();
    match cluster.leave(&rooms).await {
        Ok(()) => info!(node = cluster.node_id(), "left the cluster"),
        Err(e) => warn!(error = %e, "could not leave the cluster; its entry expires on its own"),
    }
}

fn lock(claimed: &Claimed) -> std::sync::MutexGuard<'_, BTreeMap<String, Instant>> {
    // Nothing panics while holding it; a poisoned map is still the right map.
    claimed.lock().unwrap_or_else(|e| e.into_inner())
}

/// What another node sent goes to the hub. The subscription is made again (every second at
/// most) when its connection to Redis ends.
async fn inbox(cluster: Cluster, signaling: Signaling, state: Arc<ClusterState>) {
    loop {
        match cluster.inbox().await {
            Ok(mut inbox) => {
                while let Some(message) = inbox.next().await {
                    // Who sent it is the signature's word, never the body's.
                    match serde_json::from_slice::<Relay>(&message.body) {
                        Ok(relay) => {
                            state.relayed_in.fetch_add(1, Ordering::Relaxed);
                            let from = message.from;
                            signaling.deliver(Envelope { from, relay }).await;
                        }
                        Err(e) => {
                            state.bad_messages.fetch_add(1, Ordering::Relaxed);
                            warn!(error = %e, from = %message.from, "an inbox message that is not a relay message was dropped");
                        }
                    }
                }
                warn!("the inbox's connection to Redis ended; subscribing again");
            }
            Err(e) => {
                state.redis_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "cannot listen to this node's inbox; trying again");
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// What the hub needs from the cluster: which node holds a room, and messages to other nodes.
/// Messages go out in order, one after the other (a socket's replies must keep theirs); each
/// lookup runs in a task of its own, so one waiting for the directory holds up no message.
async fn relay(
    cluster: Cluster,
    signaling: Signaling,
    mut out: mpsc::Receiver<RelayOut>,
    claimed: Claimed,
    directory: Directory,
    state: Arc<ClusterState>,
) {
    let resolves = Arc::new(tokio::sync::Semaphore::new(RESOLVES_IN_FLIGHT));
    while let Some(o) = out.recv().await {
        match o {
            RelayOut::Resolve { conn, room } => {
                let (cluster, signaling) = (cluster.clone(), signaling.clone());
                let (claimed, directory, state) =
                    (claimed.clone(), directory.clone(), state.clone());
                let resolves = resolves.clone();
                // Waiting here, not in this loop: messages to other nodes go on meanwhile.
                tokio::spawn(async move {
                    let Ok(permit) = resolves.acquire_owned().await else {
                        return;
                    };
                    let origin = {
                        let _directory = directory.lock().await;
                        resolve(&cluster, &room, &claimed, &state).await
                    };
                    signaling.resolved(conn, origin).await;
                    drop(permit);
                });
            }
            RelayOut::Locate { room, claim, reply } => {
                let (cluster, claimed, directory, state) = (
                    cluster.clone(),
                    claimed.clone(),
                    directory.clone(),
                    state.clone(),
                );
                tokio::spawn(async move {
                    let origin = if claim {
                        let _directory = directory.lock().await;
                        resolve(&cluster, &room, &claimed, &state).await
                    } else {
                        cluster
                            .origin(room.as_str())
                            .await
                            .ok()
                            .flatten()
                            .filter(|n| n != cluster.node_id())
                    };
                    let url = match origin {
                        Some(node) => cluster
                            .nodes()
                            .await
                            .ok()
                            .and_then(|nodes| nodes.get(&node).map(|n| n.http.clone())),
                        None => None,
                    };
                    let _ = reply.send(url);
                });
            }
            RelayOut::Origin { room, reply } => {
                let cluster = cluster.clone();
                tokio::spawn(async move {
                    let origin = cluster
                        .origin(room.as_str())
                        .await
                        .ok()
                        .flatten()
                        .filter(|n| n != cluster.node_id());
                    let _ = reply.send(origin);
                });
            }
            RelayOut::Send { node, relay } => {
                let Ok(bytes) = serde_json::to_vec(&relay) else {
                    continue;
                };
                match cluster.send(&node, &bytes).await {
                    Ok(()) => {
                        state.relayed_out.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        state.redis_errors.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, %node, "a message to another node was lost");
                    }
                }
            }
        }
    }
}

/// The node holding `room`, claimed for this one (`None`) when nobody does.
async fn resolve(
    cluster: &Cluster,
    room: &miclink_protocol::Ident,
    claimed: &Claimed,
    state: &ClusterState,
) -> Option<String> {
    match cluster.claim_room(room.as_str()).await {
        Ok(Claim::Origin) => {
            lock(claimed).insert(room.as_str().to_owned(), Instant::now());
            None
        }
        Ok(Claim::Elsewhere(node)) => Some(node),
        Err(e) => {
            // Served here: a node without Redis still serves its clients.
            state.redis_errors.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, %room, "could not ask the room directory");
            None
        }
    }
}

async fn beat(
    cluster: &Cluster,
    rooms: &[miclink_protocol::Ident],
    claimed: &Claimed,
    conflicted: &mut BTreeSet<String>,
    state: &ClusterState,
) -> Result<(), ClusterError> {
    let held: BTreeSet<String> = rooms.iter().map(|r| r.as_str().to_owned()).collect();
    // Claimed for a join a moment ago: the hub may not hold the room yet.
    let fresh = cluster.config().heartbeat_interval() * 2;
    let unheld: Vec<String> = lock(claimed)
        .iter()
        .filter(|(room, at)| !held.contains(*room) && at.elapsed() > fresh)
        .map(|(room, _)| room.clone())
        .collect();
    for room in unheld {
        cluster.release_room(&room).await?;
        lock(claimed).remove(&room);
    }
    conflicted.retain(|r| held.contains(r));
    let unclaimed: Vec<String> = {
        let c = lock(claimed);
        held.iter()
            .filter(|r| !c.contains_key(*r))
            .cloned()
            .collect()
    };
    for room in unclaimed {
        match cluster.claim_room(&room).await? {
            Claim::Origin => {
                lock(claimed).insert(room.clone(), Instant::now());
                conflicted.remove(&room);
            }
            Claim::Elsewhere(node) => {
                if conflicted.insert(room.clone()) {
                    state.conflicts.fetch_add(1, Ordering::Relaxed);
                    warn!(%room, origin = %node, "room held by another node too");
                }
            }
        }
    }
    let load = Load {
        rooms: held.len() as u32,
        members: 0,
    };
    let renew: Vec<String> = lock(claimed).keys().cloned().collect();
    for room in cluster.heartbeat(load, &renew).await? {
        warn!(%room, "the claim on a room was lost to another node");
        state.claims_lost.fetch_add(1, Ordering::Relaxed);
        lock(claimed).remove(&room);
    }
    state
        .origin_rooms
        .store(lock(claimed).len() as u64, Ordering::Relaxed);
    Ok(())
}

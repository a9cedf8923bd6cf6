//! This node in a cluster (`--redis-url`): its heartbeat in the registry, its rooms in the room
//! directory, and what it knows of the other nodes, for `/metrics` and `/healthz`.
//!
//! Every heartbeat interval the node claims the rooms it holds that it has not claimed yet,
//! releases those it no longer holds, renews the rest with its registry entry, and reads the
//! registry (nodes that joined or were lost are logged). A room already claimed by another node
//! is a conflict: it is counted and logged (the room's requests are not yet relayed to its
//! origin). Redis being unreachable does not stop the node: it serves its own clients and tries
//! again at the next beat; `/healthz` says so.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use miclink_cluster::{Claim, Cluster, ClusterError, Load, Membership};
use miclink_signaling::Signaling;
use tracing::{info, warn};

/// What the cluster task knows, read by `/metrics` and `/healthz`.
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
    /// Whether the last beat reached Redis.
    pub(crate) redis_up: AtomicBool,
}

/// Beat until `stop` resolves, then leave the cluster (the entry and the claims go at once).
pub(crate) async fn run(
    cluster: Cluster,
    signaling: Signaling,
    state: Arc<ClusterState>,
    stop: impl Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(cluster.config().heartbeat_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut claimed: BTreeSet<String> = BTreeSet::new();
    // Rooms whose conflict was logged, so a long conflict is one line.
    let mut conflicted: BTreeSet<String> = BTreeSet::new();
    let mut membership = Membership::default();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => break,
        }
        let Some(rooms) = signaling.rooms().await else {
            break;
        };
        let result = beat(
            &cluster,
            &rooms,
            &mut claimed,
            &mut conflicted,
            &mut membership,
            &state,
        )
        .await;
        state.redis_up.store(result.is_ok(), Ordering::Relaxed);
        if let Err(e) = result {
            state.redis_errors.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "cluster heartbeat failed; trying again at the next one");
        }
    }
    let rooms: Vec<String> = claimed.into_iter().collect();
    match cluster.leave(&rooms).await {
        Ok(()) => info!(node = cluster.node_id(), "left the cluster"),
        Err(e) => warn!(error = %e, "could not leave the cluster; its entry expires on its own"),
    }
}

async fn beat(
    cluster: &Cluster,
    rooms: &[miclink_protocol::Ident],
    claimed: &mut BTreeSet<String>,
    conflicted: &mut BTreeSet<String>,
    membership: &mut Membership,
    state: &ClusterState,
) -> Result<(), ClusterError> {
    let held: BTreeSet<String> = rooms.iter().map(|r| r.as_str().to_owned()).collect();
    for room in claimed.difference(&held).cloned().collect::<Vec<_>>() {
        cluster.release_room(&room).await?;
        claimed.remove(&room);
    }
    conflicted.retain(|r| held.contains(r));
    for room in held.difference(claimed).cloned().collect::<Vec<_>>() {
        match cluster.claim_room(&room).await? {
            Claim::Origin => {
                claimed.insert(room.clone());
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
    let renew: Vec<String> = claimed.iter().cloned().collect();
    for room in cluster.heartbeat(load, &renew).await? {
        warn!(%room, "the claim on a room was lost to another node");
        state.claims_lost.fetch_add(1, Ordering::Relaxed);
        claimed.remove(&room);
    }
    state
        .origin_rooms
        .store(claimed.len() as u64, Ordering::Relaxed);
    let nodes = cluster.nodes().await?;
    let changes = membership.update(nodes.keys());
    for node in &changes.joined {
        info!(%node, "cluster node joined");
    }
    for node in &changes.lost {
        warn!(%node, "cluster node lost");
    }
    state.nodes.store(nodes.len() as u64, Ordering::Relaxed);
    Ok(())
}

//! miclink's signaling plane: the `/ws` WebSocket endpoint of `docs/protocol.md`.
//!
//! This crate owns sessions (join, resume, replacement), authentication, frame limits and the
//! routing of the seat state machine's outputs to sockets. It decides nothing about seats itself:
//! every admission question goes to [`miclink_seats::Seats`], which one hub task owns. Socket
//! tasks parse and police frames; the hub applies them in order and fans events out. The media
//! plane is not started here: the server hands a running one in ([`MediaPlane`]).
//!
//! | module | owns | must not |
//! | --- | --- | --- |
//! | `socket` | one WebSocket's task: reading and policing frames, writing what the hub queues | decide anything about sessions |
//! | `wire` | what socket tasks, HTTP handlers and the hub say to each other; frame encoding | depend on either side |
//! | `hub` | the one task owning seats, sessions and connections (see its module table) | block, or wait on a socket |
//! | `whip` | WHIP and WHEP over HTTP, each resource a hub connection with a session | bypass the hub's join and seats |
//! | `relay` | the messages between nodes of a cluster, and what the hub asks of the cluster glue | know Redis |
//! | `api` | the server API over HTTP (`/api/v1`): its guard (rate, caller), bodies, refusals; a call carried to the room's node | change seats or sessions itself (the hub does) |
//! | `webhook` | delivering the rooms' milestones to the integrator's URLs: lanes, retries, signatures | know rooms or seats, or make the hub wait |
//! | `session` | a signaling session: its token, member, socket and backlog | know sockets' queues |
//! | `auth`, `turn`, `ratelimit`, `error` | join tokens; TURN credentials; the frame rate; error codes | hold state of the hub |

pub mod api;
mod auth;
mod error;
mod hub;
mod ratelimit;
pub mod relay;
mod session;
mod socket;
pub mod turn;
pub mod webhook;
mod whip;
mod wire;

pub use auth::sign_token;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use miclink_protocol::{IceServer, MAX_FRAME_BYTES};
use miclink_seats::SeatsConfig;
use miclink_sfu::{MediaEvent, Sfu};
use tokio::sync::{mpsc, oneshot};

pub use wire::Stats;

/// What a client is counted as in per-address caps: its IPv4 address (also when it arrives
/// mapped into IPv6 on a dual-stack listener), or its IPv6 /64, which one subscriber usually
/// holds whole.
pub fn client_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) if !v6.is_loopback() => {
            let s = v6.segments();
            std::net::IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        other => other,
    }
}

/// A running media plane for signaling to drive: the handle, and the events it sends back.
pub struct MediaPlane {
    pub sfu: Sfu,
    pub events: mpsc::UnboundedReceiver<MediaEvent>,
}

/// Something a WebSocket keeps for as long as it lives, found in the upgrade request's
/// extensions: the server puts the connection's place in its connection caps here, so a socket
/// still counts after it left HTTP.
#[derive(Clone)]
pub struct ConnectionSlot(pub Arc<dyn std::any::Any + Send + Sync>);

/// Settings of the signaling plane.
#[derive(Debug, Clone)]
pub struct SignalingConfig {
    pub seats: SeatsConfig,
    /// HS256 secret for join tokens; `None` accepts joins without tokens (demo mode).
    pub jwt_secret: Option<String>,
    /// Handed to every client in the `join` reply.
    pub ice_servers: Vec<IceServer>,
    /// Set: `turn:` servers without configured credentials get per-member ones.
    pub turn: Option<turn::TurnSecret>,
    /// The server pings each socket this often and drops one silent for three intervals.
    pub keepalive: Duration,
    /// Messages queued for one socket before it counts as too slow and is dropped.
    pub outbound_queue: usize,
    /// How long shutdown waits for sockets to take their `room_ended` and close.
    pub shutdown_grace: Duration,
    /// A socket that has not joined (or resumed) this long after it opened is closed.
    pub join_timeout: Duration,
    /// A frame the peer has not taken in this long means it stopped reading; it is dropped.
    pub send_timeout: Duration,
    /// In a cluster: connections of other nodes served here at most (each is a socket there);
    /// more are refused (their socket is closed).
    pub max_relayed: usize,
    /// WHIP and WHEP sessions one client address may hold at once (IPv4 address or IPv6 /64;
    /// 0 = no cap): a session outlives its request, so the HTTP connection caps do not bound it.
    pub http_media_per_ip: usize,
    /// Count loopback clients per address too (tests; a local proxy otherwise speaks for many).
    pub http_media_per_ip_on_loopback: bool,
    /// WHEP viewers one room may have at once.
    pub whep_per_room: usize,
    /// Server API requests one client address may make a second (twice that at once).
    pub api_rate_per_s: f64,
    /// Where the rooms' milestones are POSTed, when set.
    pub webhooks: Option<webhook::WebhookConfig>,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            seats: SeatsConfig::default(),
            jwt_secret: None,
            ice_servers: Vec::new(),
            turn: None,
            keepalive: Duration::from_secs(20),
            outbound_queue: 1024,
            shutdown_grace: Duration::from_secs(3),
            join_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            max_relayed: 65_536,
            http_media_per_ip: 64,
            http_media_per_ip_on_loopback: false,
            whep_per_room: 500,
            api_rate_per_s: 20.0,
            webhooks: None,
        }
    }
}

/// A cheap handle to the running signaling plane.
#[derive(Clone)]
pub struct Signaling {
    inner: Arc<Inner>,
}

struct Inner {
    hub: mpsc::Sender<wire::HubMsg>,
    config: SignalingConfig,
    next_conn: AtomicU64,
    /// Token checks for the HTTP endpoints (the hub checks joins with its own).
    auth: Option<auth::Auth>,
    whip: whip::Resources,
    /// The server API's rate limit per client address.
    api_limits: api::Limits,
    webhooks: Option<webhook::Webhooks>,
}

impl Signaling {
    /// Start the hub task on the current tokio runtime. Without a media plane, media requests
    /// answer `not_implemented`.
    pub fn start(config: SignalingConfig, media: Option<MediaPlane>) -> Signaling {
        Signaling::start_with(config, media, None)
    }

    /// [`Signaling::start`] for node `node` of a cluster: joins of rooms not held here ask the
    /// cluster first, and what must cross to other nodes comes out of the receiver for the
    /// cluster glue to carry ([`relay`]).
    pub fn start_clustered(
        config: SignalingConfig,
        media: Option<MediaPlane>,
        node: String,
    ) -> (Signaling, mpsc::Receiver<relay::RelayOut>) {
        let (out, rx) = mpsc::channel(hub::RELAY_QUEUE);
        let sig = Signaling::start_with(config, media, Some(hub::Clustered::new(node, out)));
        (sig, rx)
    }

    fn start_with(
        config: SignalingConfig,
        media: Option<MediaPlane>,
        cluster: Option<hub::Clustered>,
    ) -> Signaling {
        let (tx, rx) = mpsc::channel(4096);
        // Each event names the node that sent it: in a cluster, the room's origin.
        let node = cluster.as_ref().map_or("local", |c| c.node.as_str());
        let webhooks = config
            .webhooks
            .clone()
            .map(|w| webhook::Webhooks::start(w, node));
        let (hub, media_events) = hub::Hub::new(config.clone(), media, cluster, webhooks.clone());
        tokio::spawn(hub.run(rx, media_events));
        Signaling {
            inner: Arc::new(Inner {
                hub: tx,
                auth: config.jwt_secret.as_deref().map(auth::Auth::new),
                config,
                next_conn: AtomicU64::new(1),
                whip: whip::Resources::default(),
                api_limits: api::Limits::default(),
                webhooks,
            }),
        }
    }

    /// The `/ws` route, and WHIP's (`/whip/{room}`, rule 15).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/ws", get(upgrade))
            .merge(whip::routes())
            // Offers are small; the WebSocket frame limit bounds them as it bounds a
            // `publish` request (an oversize one is refused with 413).
            .layer(axum::extract::DefaultBodyLimit::max(whip::MAX_SDP + 1))
            .with_state(self.clone())
            .merge(api::routes(self.clone()))
    }

    /// Tell every room `room_ended` (`server_shutdown`), close every socket, and return once
    /// they have closed or the shutdown grace has passed. Later joins answer `unavailable`.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self
            .inner
            .hub
            .send(wire::HubMsg::Shutdown { done })
            .await
            .is_ok()
        {
            let _ = wait.await;
        }
        // The rooms' ends go out to the webhooks' receivers, if they take them in time.
        if let Some(hooks) = &self.inner.webhooks {
            hooks
                .flush(tokio::time::Instant::now() + self.inner.config.shutdown_grace)
                .await;
        }
    }

    /// The webhooks' counts, when webhooks are configured.
    pub fn webhook_counts(&self) -> Option<Arc<webhook::WebhookCounts>> {
        self.inner.webhooks.as_ref().map(|w| w.counts())
    }

    /// A server API call for the hub; `None` when the hub has stopped.
    pub(crate) async fn api(&self, call: api::ApiCall) -> Option<api::ApiAnswer> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .hub
            .send(wire::HubMsg::Api { call, reply })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// A server API call answered by node `node` of the cluster.
    pub(crate) async fn api_at(&self, node: String, call: api::ApiCall) -> Option<api::ApiAnswer> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .hub
            .send(wire::HubMsg::ApiAt { node, call, reply })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// The node of the cluster holding `room`, when another one does.
    pub(crate) async fn origin_of(&self, room: &miclink_protocol::Ident) -> Option<String> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .hub
            .send(wire::HubMsg::Origin {
                room: room.clone(),
                reply,
            })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    /// The other live nodes of the cluster (none for a node alone).
    pub(crate) async fn other_nodes(&self) -> Vec<String> {
        let (reply, rx) = oneshot::channel();
        if self
            .inner
            .hub
            .send(wire::HubMsg::Nodes { reply })
            .await
            .is_err()
        {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The answer to [`relay::RelayOut::Resolve`]: the node holding the room, `None` for this
    /// one (or when the cluster could not say: the join is then served here).
    pub async fn resolved(&self, conn: u64, origin: Option<String>) {
        let _ = self
            .inner
            .hub
            .send(wire::HubMsg::Resolved { conn, origin })
            .await;
    }

    /// What another node of the cluster sent this one.
    pub async fn deliver(&self, envelope: relay::Envelope) {
        let _ = self
            .inner
            .hub
            .send(wire::HubMsg::FromNode {
                from: envelope.from,
                msg: envelope.relay,
            })
            .await;
    }

    /// Where a WHIP or WHEP request for `room` belongs: the public URL of the node holding
    /// the room when another node of the cluster does; `None` to serve it here.
    pub(crate) async fn locate(
        &self,
        room: &miclink_protocol::Ident,
        claim: bool,
    ) -> Option<String> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .hub
            .send(wire::HubMsg::Locate {
                room: room.clone(),
                claim,
                reply,
            })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    /// A node of the cluster stopped heartbeating.
    pub async fn node_lost(&self, node: String) {
        let _ = self.inner.hub.send(wire::HubMsg::NodeLost { node }).await;
    }

    /// A node of the cluster registered: a session token naming it may be resumed there.
    pub async fn node_joined(&self, node: String) {
        let _ = self.inner.hub.send(wire::HubMsg::NodeJoined { node }).await;
    }

    /// The rooms this server holds now: those with a member in them.
    pub async fn rooms(&self) -> Option<Vec<miclink_protocol::Ident>> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .hub
            .send(wire::HubMsg::Rooms { reply })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Counts for health checks and metrics.
    pub async fn stats(&self) -> Option<Stats> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .hub
            .send(wire::HubMsg::Stats { reply })
            .await
            .ok()?;
        rx.await.ok()
    }
}

async fn upgrade(
    State(sig): State<Signaling>,
    slot: Option<axum::Extension<ConnectionSlot>>,
    ws: WebSocketUpgrade,
) -> Response {
    let conn = sig.inner.next_conn.fetch_add(1, Ordering::Relaxed);
    // Frames up to 128 KiB are read so oversize ones (> 64 KiB) get the contract's `bad_request`
    // answer; bigger ones make the WebSocket layer close the socket (so a socket that has not
    // joined can hold at most that much of a frame in memory). The small read buffer keeps
    // idle sockets cheap: it grows only while a large frame is being read.
    ws.max_message_size(READ_LIMIT)
        .max_frame_size(READ_LIMIT)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| {
            let c = &sig.inner.config;
            let timing = socket::Timing {
                keepalive: c.keepalive,
                queue: c.outbound_queue,
                join_timeout: c.join_timeout,
                send_timeout: c.send_timeout,
            };
            async move {
                let _slot = slot;
                socket::run(socket, sig.inner.hub.clone(), conn, timing).await;
            }
        })
}

/// The largest WebSocket message read at all (then answered `bad_request` if over the frame limit).
const READ_LIMIT: usize = 128 * 1024;
const _: () = assert!(MAX_FRAME_BYTES < READ_LIMIT);

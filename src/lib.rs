//! The miclink server: configuration, wiring of the planes, the embedded demo, health checks.
//!
//! Everything here is glue; the signaling rules live in `miclink-signaling` and `miclink-seats`.

mod cluster;
pub mod config;
mod metrics;
mod serve;
pub mod tools;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use miclink_sfu::{Pii, Sfu};
use miclink_signaling::{MediaPlane, Signaling};
use rust_embed::RustEmbed;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::{error, info};

pub use config::{Args, Command, Config};

/// The browser demo, embedded in the binary so `cargo run --release` needs no files beside it.
#[derive(RustEmbed)]
#[folder = "web-demo/"]
struct Demo;

/// What the HTTP handlers reach: both planes, the listener's counts, the metrics token.
#[derive(Clone)]
struct Planes {
    signaling: Signaling,
    media: Option<Sfu>,
    connections: Arc<serve::Connections>,
    metrics_token: Option<Arc<str>>,
    peer_series: Arc<metrics::PeerSeriesCache>,
    /// This node in a cluster, when it is one.
    cluster: Option<Arc<cluster::ClusterState>>,
}

/// The HTTP routes: `/ws`, `/healthz`, `/metrics` and the demo.
fn app(planes: Planes, demo_servers: Vec<String>) -> Router {
    let signaling = planes.signaling.clone();
    let demo_servers: Arc<[String]> = demo_servers.into();
    let config = {
        let servers = demo_servers.clone();
        move || async move { axum::Json(serde_json::json!({ "servers": &*servers })) }
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::metrics))
        .with_state(planes)
        .route("/demo-config.json", get(config))
        .merge(signaling.router())
        .fallback(get(move |uri, headers| {
            demo(uri, headers, demo_servers.clone())
        }))
}

/// Why the server stopped other than being asked to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not start: {0}")]
    Io(#[from] std::io::Error),
    #[error("a media loop died; exiting so a supervisor restarts the server")]
    MediaFailed,
    #[error("could not join the cluster: {0}")]
    Cluster(#[from] miclink_cluster::ClusterError),
}

/// Start the media plane (if configured) and signaling, and serve on a bound listener until
/// `shutdown` resolves; then end every room with `server_shutdown` and close every socket before
/// returning. A media loop that dies makes `/healthz` answer 503 at once, and the server shut
/// down the same way `failure_exit_delay` later and return [`RunError::MediaFailed`].
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    Pii::scrub(config.scrub_logs);
    let media = config.media.clone().map(Sfu::start).transpose()?;
    let sfu = media.as_ref().map(|(sfu, _)| sfu.clone());
    let plane = media.map(|(sfu, events)| MediaPlane { sfu, events });
    // A node that cannot reach its cluster's Redis at start is misconfigured: say so now.
    let node = match config.cluster {
        Some(c) => Some(miclink_cluster::Cluster::connect(c).await?),
        None => None,
    };
    let (signaling, cluster) = match node {
        Some(node) => {
            let (signaling, relay_out) =
                Signaling::start_clustered(config.signaling, plane, node.node_id().to_owned());
            let state = Arc::new(cluster::ClusterState {
                node_id: node.node_id().to_owned(),
                refused: node.refused(),
                ..Default::default()
            });
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(cluster::run(
                node,
                signaling.clone(),
                relay_out,
                state.clone(),
                async {
                    let _ = stopped.await;
                },
            ));
            (signaling, Some((state, stop, task)))
        }
        None => (Signaling::start(config.signaling, plane), None),
    };
    let connections = Arc::new(serve::Connections::default());
    let demo_servers = config.demo_servers.clone();
    let app = app(
        Planes {
            signaling: signaling.clone(),
            media: sfu.clone(),
            connections: connections.clone(),
            metrics_token: config.metrics_token.map(Arc::from),
            peer_series: Arc::default(),
            cluster: cluster.as_ref().map(|(state, _, _)| state.clone()),
        },
        demo_servers,
    );
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let graceful = {
        let (signaling, failed) = (signaling.clone(), failed.clone());
        let delay = config.failure_exit_delay;
        async move {
            let media_failure = async {
                match &sfu {
                    Some(sfu) => sfu.failure().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown => info!("shutdown requested"),
                () = media_failure => {
                    error!(?delay, "the media plane failed; /healthz answers 503 until the server exits");
                    failed.store(true, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                }
            }
            signaling.shutdown().await;
        }
    };
    serve::serve(listener, app, config.http, connections, graceful).await?;
    if let Some((_, stop, task)) = cluster {
        // Leave now, so other nodes need not wait for the entry to expire.
        let _ = stop.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), task).await;
    }
    if failed.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(RunError::MediaFailed);
    }
    Ok(())
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    rooms: usize,
    sessions: usize,
    connections: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    media: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterHealth>,
}

#[derive(Serialize)]
struct ClusterHealth {
    node: String,
    nodes: u64,
    origin_rooms: u64,
    redis: &'static str,
}

async fn healthz(State(planes): State<Planes>) -> Response {
    let Some(s) = planes.signaling.stats().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "signaling is down").into_response();
    };
    let failed = planes.media.as_ref().is_some_and(Sfu::failed);
    let media = match (&planes.media, failed) {
        (Some(sfu), false) => sfu.stats().await.map(|m| {
            let mut fields = serde_json::Map::new();
            fields.insert("peers".into(), m.peers.into());
            fields.insert("shed_level".into(), m.shed_level.into());
            fields.insert("backlog_ms".into(), m.backlog_ms.into());
            for (name, _, value) in m.counters() {
                fields.insert(name.into(), value.into());
            }
            fields
        }),
        _ => None,
    };
    let health = Health {
        status: if failed { "media_failed" } else { "ok" },
        rooms: s.rooms,
        sessions: s.sessions,
        connections: s.connections,
        media,
        cluster: planes.cluster.as_ref().map(|c| {
            use std::sync::atomic::Ordering::Relaxed;
            ClusterHealth {
                node: c.node_id.clone(),
                nodes: c.nodes.load(Relaxed),
                origin_rooms: c.origin_rooms.load(Relaxed),
                redis: if c.redis_up.load(Relaxed) {
                    "ok"
                } else {
                    "unreachable"
                },
            }
        }),
    };
    let status = if failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(health)).into_response()
}

/// A file of the demo, with the headers that keep a page holding a join token to itself: no
/// `Referer` to anywhere it links or loads, scripts and connections only from this server (and
/// the signaling servers the operator listed), no framing.
async fn demo(uri: Uri, headers: HeaderMap, servers: Arc<[String]>) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    match Demo::get(path) {
        Some(file) => {
            let mime = mime_guess::from_path(path).first_or_octet_stream();
            let mut r = (
                [
                    (header::CONTENT_TYPE, mime.as_ref().to_owned()),
                    (header::CACHE_CONTROL, "no-cache".to_owned()),
                ],
                file.data,
            )
                .into_response();
            let h = r.headers_mut();
            h.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            if let Ok(csp) = HeaderValue::from_str(&content_security_policy(&headers, &servers)) {
                h.insert(header::CONTENT_SECURITY_POLICY, csp);
            }
            r
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// The demo's policy: everything from this server, WebSockets to it (`'self'` does not cover
/// `ws:` in every browser) and to `servers`, media from the peer connections.
fn content_security_policy(headers: &HeaderMap, servers: &[String]) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    let mut connect = String::from("'self'");
    if let Some(host) = host {
        connect += &format!(" ws://{host} wss://{host}");
    }
    for s in servers {
        connect.push(' ');
        connect += s;
    }
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
         media-src 'self' blob: mediastream:; connect-src {connect}; object-src 'none'; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

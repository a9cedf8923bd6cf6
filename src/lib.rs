//! The miclink server: configuration, wiring of the planes, the embedded demo, health checks.
//!
//! Everything here is glue; the signaling rules live in `miclink-signaling` and `miclink-seats`.

pub mod config;

use std::future::Future;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use miclink_sfu::{PcKind, Pii, Sfu};
use miclink_signaling::{MediaPlane, Signaling};
use rust_embed::RustEmbed;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::{error, info};

pub use config::{Args, Config};

/// The browser demo, embedded in the binary so `cargo run --release` needs no files beside it.
#[derive(RustEmbed)]
#[folder = "web-demo/"]
struct Demo;

/// What the HTTP handlers reach: both planes.
#[derive(Clone)]
struct Planes {
    signaling: Signaling,
    media: Option<Sfu>,
}

/// The HTTP routes: `/ws`, `/healthz`, `/metrics` and the demo.
pub fn app(signaling: &Signaling, media: Option<Sfu>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(Planes {
            signaling: signaling.clone(),
            media,
        })
        .merge(signaling.router())
        .fallback(get(demo))
}

/// Why the server stopped other than being asked to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not start: {0}")]
    Io(#[from] std::io::Error),
    #[error("a media loop died; exiting so a supervisor restarts the server")]
    MediaFailed,
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
    let signaling = Signaling::start(config.signaling, plane);
    let app = app(&signaling, sfu.clone());
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
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
    axum::serve(listener, app)
        .with_graceful_shutdown(graceful)
        .await?;
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
    };
    let status = if failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(health)).into_response()
}

/// Prometheus text exposition: signaling gauges, media plane totals, and per connection counters
/// labelled with room, user and connection kind. Room and user ids are `[A-Za-z0-9_.-]` by
/// protocol, so label values need no escaping.
async fn metrics(State(planes): State<Planes>) -> Response {
    use std::fmt::Write;
    let Some(s) = planes.signaling.stats().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "signaling is down").into_response();
    };
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP miclink_{name} {help}\n# TYPE miclink_{name} gauge\nmiclink_{name} {value}"
        );
    };
    gauge("rooms", "Live rooms.", s.rooms as u64);
    gauge(
        "sessions",
        "Sessions, connected or within their resume grace.",
        s.sessions as u64,
    );
    gauge(
        "connections",
        "Open signaling sockets.",
        s.connections as u64,
    );
    let Some(sfu) = planes.media.as_ref().filter(|m| !m.failed()) else {
        return ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response();
    };
    if let Some(m) = sfu.stats().await {
        gauge("media_peers", "Media peer connections.", m.peers);
        gauge(
            "media_shed_level",
            "Subscriber video tracks paused because a media loop is overloaded.",
            m.shed_level,
        );
        gauge(
            "media_backlog_ms",
            "How long the most loaded media loop has been behind its sockets.",
            m.backlog_ms,
        );
        for (name, help, value) in m.counters() {
            let _ = writeln!(
                out,
                "# HELP miclink_media_{name}_total {help}\n# TYPE miclink_media_{name}_total counter\nmiclink_media_{name}_total {value}"
            );
        }
    }
    if let Some(peers) = sfu.peer_stats().await {
        type Pick = fn(&miclink_sfu::PeerStats) -> u64;
        let series: [(&str, &str, Pick); 9] = [
            ("bytes_in", "Bytes received on this connection.", |p| {
                p.bytes_in
            }),
            ("bytes_out", "Bytes sent on this connection.", |p| {
                p.bytes_out
            }),
            (
                "packets_in",
                "Datagrams received on this connection.",
                |p| p.datagrams_in,
            ),
            ("packets_out", "Datagrams sent on this connection.", |p| {
                p.datagrams_out
            }),
            (
                "rtp_in",
                "RTP packets received (publish connections).",
                |p| p.rtp_in,
            ),
            (
                "rtp_out",
                "RTP packets forwarded (subscribe connections).",
                |p| p.rtp_out,
            ),
            (
                "packets_lost",
                "RTP packets lost on this leg (publish: missing on arrival, repaired or not; subscribe: as the receiver reports).",
                |p| p.packets_lost,
            ),
            (
                "nacks",
                "NACKs received from this subscriber or sent to this publisher.",
                |p| p.nacks,
            ),
            ("plis", "Keyframe requests sent to this publisher.", |p| {
                p.plis
            }),
        ];
        for (name, help, pick) in series {
            let _ = writeln!(
                out,
                "# HELP miclink_peer_{name}_total {help}\n# TYPE miclink_peer_{name}_total counter"
            );
            for p in &peers {
                let kind = match p.kind {
                    PcKind::Publish => "publish",
                    PcKind::Subscribe => "subscribe",
                };
                let _ = writeln!(
                    out,
                    "miclink_peer_{name}_total{{room=\"{}\",user=\"{}\",pc=\"{kind}\"}} {}",
                    p.room,
                    p.user,
                    pick(p)
                );
            }
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn demo(uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    match Demo::get(path) {
        Some(file) => {
            let mime = mime_guess::from_path(path).first_or_octet_stream();
            (
                [
                    (header::CONTENT_TYPE, mime.as_ref().to_owned()),
                    (header::CACHE_CONTROL, "no-cache".to_owned()),
                ],
                file.data,
            )
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

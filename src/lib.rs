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
use miclink_signaling::Signaling;
use rust_embed::RustEmbed;
use tokio::net::TcpListener;
use tracing::info;

pub use config::{Args, Config};

/// The browser demo, embedded in the binary so `cargo run --release` needs no files beside it.
#[derive(RustEmbed)]
#[folder = "web-demo/"]
struct Demo;

/// The HTTP routes: `/ws`, `/healthz` and the demo.
pub fn app(signaling: &Signaling) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(signaling.clone())
        .merge(signaling.router())
        .fallback(get(demo))
}

/// Serve on a bound listener until `shutdown` resolves, then end every room with
/// `server_shutdown` and close every socket before returning.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let signaling = Signaling::start(config.signaling)?;
    let app = app(&signaling);
    let graceful = {
        let signaling = signaling.clone();
        async move {
            shutdown.await;
            info!("shutdown requested");
            signaling.shutdown().await;
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(graceful)
        .await
}

async fn healthz(State(signaling): State<Signaling>) -> Response {
    let Some(s) = signaling.stats().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "signaling is down").into_response();
    };
    let media = match signaling.media_stats().await {
        Some(m) => format!(
            concat!(
                r#","media":{{"peers":{},"datagrams_in":{},"datagrams_dropped":{},"rtp_in":{},"#,
                r#""rtp_dropped_not_allowed":{},"rtp_out":{},"plis_sent":{},"nacks_received":{},"#,
                r#""nacks_to_publishers":{},"#,
                r#""retransmitted":{},"retransmit_misses":{},"twcc_feedback":{},"handed_over":{},"#,
                r#""send_errors":{}}}"#
            ),
            m.peers,
            m.datagrams_in,
            m.datagrams_dropped,
            m.rtp_in,
            m.rtp_dropped_not_allowed,
            m.rtp_out,
            m.plis_sent,
            m.nacks_received,
            m.nacks_to_publishers,
            m.retransmitted,
            m.retransmit_misses,
            m.twcc_feedback,
            m.handed_over,
            m.send_errors
        ),
        None => String::new(),
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(
            r#"{{"status":"ok","rooms":{},"sessions":{},"connections":{}{media}}}"#,
            s.rooms, s.sessions, s.connections
        ),
    )
        .into_response()
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

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
    match signaling.stats().await {
        Some(s) => (
            [(header::CONTENT_TYPE, "application/json")],
            format!(
                r#"{{"status":"ok","rooms":{},"sessions":{},"connections":{}}}"#,
                s.rooms, s.sessions, s.connections
            ),
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "signaling is down").into_response(),
    }
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

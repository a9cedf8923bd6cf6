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
        .route("/metrics", get(metrics))
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
        Some(m) => {
            let fields: Vec<String> = std::iter::once(format!(r#""peers":{}"#, m.peers))
                .chain(
                    media_counters(&m)
                        .iter()
                        .map(|(name, _, value)| format!(r#""{name}":{value}"#)),
                )
                .collect();
            format!(r#","media":{{{}}}"#, fields.join(","))
        }
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

/// Prometheus text exposition: signaling gauges, media plane totals, and per connection counters
/// labelled with room, user and connection kind. Room and user ids are `[A-Za-z0-9_.-]` by
/// protocol, so label values need no escaping.
async fn metrics(State(signaling): State<Signaling>) -> Response {
    use std::fmt::Write;
    let Some(s) = signaling.stats().await else {
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
    if let Some(m) = signaling.media_stats().await {
        gauge("media_peers", "Media peer connections.", m.peers as u64);
        for (name, help, value) in media_counters(&m) {
            let _ = writeln!(
                out,
                "# HELP miclink_media_{name}_total {help}\n# TYPE miclink_media_{name}_total counter\nmiclink_media_{name}_total {value}"
            );
        }
    }
    if let Some(peers) = signaling.media_peer_stats().await {
        type Pick = fn(&miclink_signaling::PeerStats) -> u64;
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
            ("packets_lost", "RTP packets lost on this leg.", |p| {
                p.packets_lost
            }),
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
                    miclink_signaling::PcKind::Publish => "publish",
                    miclink_signaling::PcKind::Subscribe => "subscribe",
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

/// The media plane's counters, named once for `/healthz` and `/metrics`.
fn media_counters(m: &miclink_signaling::SfuStats) -> [(&'static str, &'static str, u64); 13] {
    [
        (
            "datagrams_in",
            "Datagrams received on the media port.",
            m.datagrams_in,
        ),
        (
            "datagrams_dropped",
            "Datagrams dropped: unknown sender, or refused.",
            m.datagrams_dropped,
        ),
        ("rtp_in", "RTP packets received from publishers.", m.rtp_in),
        (
            "rtp_dropped_not_allowed",
            "RTP packets dropped because the sender holds no seat.",
            m.rtp_dropped_not_allowed,
        ),
        (
            "rtp_out",
            "RTP packets forwarded to subscribers.",
            m.rtp_out,
        ),
        (
            "plis_sent",
            "Keyframe requests sent to publishers.",
            m.plis_sent,
        ),
        (
            "nacks_received",
            "NACK packets received from subscribers.",
            m.nacks_received,
        ),
        (
            "nacks_to_publishers",
            "NACK packets sent to publishers.",
            m.nacks_to_publishers,
        ),
        (
            "retransmitted",
            "Packets resent from the server's buffers.",
            m.retransmitted,
        ),
        (
            "retransmit_misses",
            "NACKed packets no longer buffered.",
            m.retransmit_misses,
        ),
        (
            "twcc_feedback",
            "Transport-wide congestion control feedback packets read.",
            m.twcc_feedback,
        ),
        (
            "handed_over",
            "Datagrams handed between media loops.",
            m.handed_over,
        ),
        (
            "send_errors",
            "Datagrams the kernel would not send.",
            m.send_errors,
        ),
    ]
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

//! `/metrics`: Prometheus text exposition. Anyone may read the totals (signaling gauges, media
//! plane counters, HTTP connections), which cost a message to each plane and nothing per peer.
//! Per-connection series carry room and user ids and are built on the media loops, so they are
//! shown only to a caller with the metrics token, and built at most once a second whatever the
//! request rate.

use std::fmt::Write;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use miclink_sfu::PcKind;

use crate::Planes;

/// How long a built set of per-connection series is served again.
const PEER_SERIES_TTL: Duration = Duration::from_secs(1);

/// The per-connection series last built, and when.
pub(crate) type PeerSeriesCache = tokio::sync::Mutex<Option<(Instant, String)>>;

pub(crate) async fn metrics(State(planes): State<Planes>, headers: HeaderMap) -> Response {
    let Some(s) = planes.signaling.stats().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "signaling is down").into_response();
    };
    let mut out = String::new();
    gauge(&mut out, "rooms", "Live rooms.", s.rooms as u64);
    gauge(
        &mut out,
        "sessions",
        "Sessions, connected or within their resume grace.",
        s.sessions as u64,
    );
    gauge(
        &mut out,
        "connections",
        "Open signaling sockets.",
        s.connections as u64,
    );
    let (open, refused) = planes.connections.counts();
    gauge(
        &mut out,
        "http_connections",
        "Open HTTP connections, WebSockets included.",
        open as u64,
    );
    counter(
        &mut out,
        "http_refused",
        "Connections closed at accept: a connection cap was reached.",
        refused,
    );
    if let Some(w) = planes.signaling.webhook_counts() {
        use std::sync::atomic::Ordering::Relaxed;
        counter(
            &mut out,
            "webhooks_delivered",
            "Webhook events a receiver took (2xx), counted per URL.",
            w.delivered.load(Relaxed),
        );
        counter(
            &mut out,
            "webhook_attempts_failed",
            "Webhook deliveries refused or unanswered in time (each is retried).",
            w.failed_attempts.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP miclink_webhooks_dropped_total Webhook events given up: the queue was full \
             (overflow, the oldest goes) or they waited past their retry time (expired).\n\
             # TYPE miclink_webhooks_dropped_total counter\n\
             miclink_webhooks_dropped_total{{reason=\"overflow\"}} {}\n\
             miclink_webhooks_dropped_total{{reason=\"expired\"}} {}",
            w.dropped_overflow.load(Relaxed),
            w.dropped_expired.load(Relaxed)
        );
        gauge(
            &mut out,
            "webhook_queue",
            "Webhook events waiting to be delivered, all URLs.",
            w.queued.load(Relaxed),
        );
    }
    if let Some(c) = &planes.cluster {
        use std::sync::atomic::Ordering::Relaxed;
        gauge(
            &mut out,
            "cluster_nodes",
            "Cluster nodes alive at the last registry read, this one included.",
            c.nodes.load(Relaxed),
        );
        gauge(
            &mut out,
            "cluster_origin_rooms",
            "Rooms this node holds the directory's claim on.",
            c.origin_rooms.load(Relaxed),
        );
        gauge(
            &mut out,
            "cluster_redis_up",
            "Whether the last heartbeat reached Redis.",
            u64::from(c.redis_up.load(Relaxed)),
        );
        counter(
            &mut out,
            "cluster_room_conflicts",
            "Rooms held here whose claim another node holds.",
            c.conflicts.load(Relaxed),
        );
        counter(
            &mut out,
            "cluster_claims_lost",
            "Room claims this node lost to another node after missed renewals.",
            c.claims_lost.load(Relaxed),
        );
        counter(
            &mut out,
            "cluster_redis_errors",
            "Heartbeats, room lookups and messages that failed to reach Redis.",
            c.redis_errors.load(Relaxed),
        );
        counter(
            &mut out,
            "cluster_relayed_out",
            "Messages sent to other nodes (relayed requests, answers and events).",
            c.relayed_out.load(Relaxed),
        );
        counter(
            &mut out,
            "cluster_relayed_in",
            "Messages other nodes sent this one.",
            c.relayed_in.load(Relaxed),
        );
        counter(
            &mut out,
            "cluster_bad_messages",
            "Inbox messages from a live node dropped because they were not a relay message.",
            c.bad_messages.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP miclink_cluster_refused_total What this node would not believe from Redis: \
             inbox messages and registry or room-directory records, by reason.\n\
             # TYPE miclink_cluster_refused_total counter"
        );
        for (what, why, n) in c.refused.counts() {
            let _ = writeln!(
                out,
                "miclink_cluster_refused_total{{what=\"{what}\",reason=\"{why}\"}} {n}"
            );
        }
    }
    let Some(sfu) = planes.media.as_ref().filter(|m| !m.failed()) else {
        return text(out);
    };
    if let Some(m) = sfu.stats().await {
        gauge(&mut out, "media_peers", "Media peer connections.", m.peers);
        gauge(
            &mut out,
            "media_shed_level",
            "Subscriber video tracks paused because a media loop is overloaded.",
            m.shed_level,
        );
        gauge(
            &mut out,
            "media_backlog_ms",
            "How long the most loaded media loop has been behind its sockets.",
            m.backlog_ms,
        );
        for (name, help, value) in m.counters() {
            counter(&mut out, &format!("media_{name}"), help, value);
        }
    }
    if authorized(planes.metrics_token.as_deref(), &headers) {
        let mut cache = planes.peer_series.lock().await;
        let fresh = cache
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < PEER_SERIES_TTL);
        if !fresh && let Some(peers) = sfu.peer_stats().await {
            *cache = Some((Instant::now(), peer_series(&peers)));
        }
        if let Some((_, series)) = cache.as_ref() {
            out.push_str(series);
        }
    }
    text(out)
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP miclink_{name} {help}\n# TYPE miclink_{name} gauge\nmiclink_{name} {value}"
    );
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP miclink_{name}_total {help}\n# TYPE miclink_{name}_total counter\nmiclink_{name}_total {value}"
    );
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Whether the request carries `Authorization: Bearer <token>` for the configured token,
/// compared in constant time. No token configured: nobody is.
fn authorized(token: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(token) = token else {
        return false;
    };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110).
            v.get(..7)
                .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
                .map(|_| &v[7..])
        })
    else {
        return false;
    };
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Per-connection counters labelled with room, user and connection kind. Room and user ids are
/// `[A-Za-z0-9_.-]` by protocol, so label values need no escaping.
fn peer_series(peers: &[miclink_sfu::PeerStats]) -> String {
    let mut out = String::new();
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
        for p in peers {
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
    out
}

//! Scenario `hooks`: how fast the server's webhooks reach a receiver. The tool is the receiver
//! (an HTTP server on loopback the server under test POSTs to) and the cause: R rooms, each an
//! anchor, and viewers joining and leaving them over real WebSockets, every join and leave a
//! milestone. It checks every delivery (signature, no duplicate, in order per room) and reports
//! events delivered per second and the delay from each event's `at` to its arrival.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use hmac::{Hmac, Mac};
use miclink_protocol::{ClientMessage, Ident, Request, Role, ServerMessage};
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::util::check_loopback;

#[derive(clap::Args, Clone)]
pub struct Options {
    /// The server's WebSocket URL (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Where this tool receives webhooks: start the server with
    /// `--webhook-url http://<listen>/hook`.
    #[arg(long, default_value = "127.0.0.1:18490")]
    pub listen: SocketAddr,
    /// The server's `--webhook-secret`: every delivery's signature is checked with it.
    #[arg(long)]
    pub secret: String,
    /// Rooms, each with an anchor.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Viewer visits (a join and a leave: two events each), spread over the rooms.
    #[arg(long, default_value_t = 5000)]
    pub visits: usize,
    /// Visits in flight at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Seconds to go on receiving after the visits (to serve as the receiver of a server that
    /// another scenario loads: `--rooms 0 --visits 0 --receive-s N`).
    #[arg(long, default_value_t = 0)]
    pub receive_s: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Default)]
struct Taken {
    /// Arrival instant and the event, in arrival order.
    events: Vec<(Instant, serde_json::Value)>,
    bad_signatures: u64,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn join(url: &str, room: &str, user: &str, role: Role) -> anyhow::Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    send(
        &mut ws,
        1,
        Request::Join {
            room: Ident::new(room)?,
            user: Ident::new(user)?,
            role,
            name: None,
            token: None,
        },
    )
    .await?;
    Ok(ws)
}

/// Send `request` and wait for its reply.
async fn send(ws: &mut Ws, id: u64, request: Request) -> anyhow::Result<()> {
    let msg = ClientMessage { id, request };
    ws.send(Message::Text(serde_json::to_string(&msg)?.into()))
        .await?;
    while let Some(frame) = ws.next().await {
        if let Message::Text(t) = frame?
            && let ServerMessage::Reply(r) = serde_json::from_str(&t)?
            && r.id == id
        {
            if r.ok {
                return Ok(());
            }
            bail!("refused: {:?}", r.error);
        }
    }
    bail!("closed before the reply")
}

fn signature_ok(secret: &[u8], header: Option<&str>, body: &[u8]) -> bool {
    let Some((t, v1)) = header
        .and_then(|h| h.strip_prefix("t="))
        .and_then(|h| h.split_once(",v1="))
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    hex == v1
}

pub async fn hooks(o: Options) -> anyhow::Result<()> {
    check_loopback(&o.url)?;
    if !o.listen.ip().is_loopback() {
        bail!("--listen must be a loopback address");
    }
    let taken = Arc::new(Mutex::new(Taken::default()));
    let secret: Arc<[u8]> = o.secret.as_bytes().into();
    let app = {
        let taken = taken.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (taken, secret) = (taken.clone(), secret.clone());
                async move {
                    let at = Instant::now();
                    let sig = headers
                        .get("miclink-signature")
                        .and_then(|v| v.to_str().ok());
                    let mut t = taken.lock().expect("lock");
                    if !signature_ok(&secret, sig, &body) {
                        t.bad_signatures += 1;
                        return StatusCode::UNAUTHORIZED;
                    }
                    match serde_json::from_slice(&body) {
                        Ok(v) => {
                            t.events.push((at, v));
                            StatusCode::NO_CONTENT
                        }
                        Err(_) => StatusCode::BAD_REQUEST,
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind(o.listen)
        .await
        .with_context(|| format!("binding {}", o.listen))?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The anchors first, then the visits; rooms of this run only (an earlier run's may still
    // be within their anchors' resume grace).
    let run = std::process::id();
    let mut anchors = Vec::new();
    for r in 0..o.rooms {
        anchors.push(join(&o.url, &format!("hooks-{run}-{r}"), "anchor", Role::Anchor).await?);
    }
    let expected = o.rooms + 2 * o.visits;
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(o.concurrency.max(1)));
    let mut visits = Vec::new();
    for v in 0..o.visits {
        let permit = gate.clone().acquire_owned().await?;
        let url = o.url.clone();
        let room = format!("hooks-{run}-{}", v % o.rooms.max(1));
        visits.push(tokio::spawn(async move {
            let _permit = permit;
            let mut ws = join(&url, &room, &format!("v{v}"), Role::Audience).await?;
            send(&mut ws, 2, Request::Leave).await?;
            anyhow::Ok(())
        }));
    }
    let mut failed = 0;
    for v in visits {
        if !matches!(v.await, Ok(Ok(()))) {
            failed += 1;
        }
    }
    let caused = started.elapsed();
    // Every event, or 30 s without a new one.
    let mut last = (0, Instant::now());
    loop {
        let n = taken.lock().expect("lock").events.len();
        if n >= expected - 2 * failed {
            break;
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(o.receive_s)).await;
    drop(anchors);

    let t = taken.lock().expect("lock");
    let (mut delays, mut ids, mut out_of_order) = (Histogram::<u64>::new(3)?, HashSet::new(), 0u64);
    let mut duplicates = 0u64;
    let mut last_at: HashMap<String, u64> = HashMap::new();
    let wall_now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let now = Instant::now();
    for (arrived, e) in &t.events {
        if !ids.insert(e["id"].as_str().unwrap_or_default().to_owned()) {
            duplicates += 1;
        }
        let at = e["at"].as_u64().unwrap_or(0);
        let room = e["room"].as_str().unwrap_or_default().to_owned();
        if last_at.get(&room).is_some_and(|prev| *prev > at) {
            out_of_order += 1;
        }
        last_at.insert(room, at);
        // The arrival on the wall clock, from how long ago it was.
        let arrived_ms = wall_now.saturating_sub(now.duration_since(*arrived).as_millis() as u64);
        delays.record(arrived_ms.saturating_sub(at).max(1))?;
    }
    let delivered = t.events.len();
    let span = t
        .events
        .first()
        .zip(t.events.last())
        .map(|((a, _), (b, _))| b.duration_since(*a))
        .unwrap_or_default();
    let per_s = delivered as f64 / span.as_secs_f64().max(0.001);
    if o.json {
        println!(
            "{}",
            serde_json::json!({
                "expected": expected - 2 * failed, "delivered": delivered, "per_s": per_s,
                "caused_s": caused.as_secs_f64(), "delay_p50_ms": delays.value_at_quantile(0.5),
                "delay_p99_ms": delays.value_at_quantile(0.99), "delay_max_ms": delays.max(),
                "duplicates": duplicates, "out_of_order": out_of_order,
                "bad_signatures": t.bad_signatures, "visits_failed": failed,
            })
        );
    } else {
        println!(
            "| events expected | delivered | per second | caused in | delay p50 / p99 / max ms | duplicates | out of order | bad signatures |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {delivered} | {per_s:.0} | {:.1} s | {} / {} / {} | {duplicates} | {out_of_order} | {} |",
            expected - 2 * failed,
            caused.as_secs_f64(),
            delays.value_at_quantile(0.5),
            delays.value_at_quantile(0.99),
            delays.max(),
            t.bad_signatures
        );
    }
    if delivered < expected - 2 * failed
        || duplicates > 0
        || out_of_order > 0
        || t.bad_signatures > 0
    {
        bail!("webhooks missing, repeated, out of order or badly signed");
    }
    Ok(())
}

//! Scenario `idle`: one anchor and N viewers join one room over real WebSockets and stay idle,
//! answering keepalives. It reports how many joined, join latency, and the server's resident
//! memory and CPU time (read from /proc/<pid>) before and after, so the memory per member is
//! measured, not guessed.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use miclink_protocol::{ClientMessage, Ident, Request, Role, ServerMessage};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::util::{check_loopback, proc_usage};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn join(url: &str, room: &str, user: &str, role: Role) -> anyhow::Result<Ws> {
    // A small read buffer: the client holds thousands of sockets too.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
    let msg = ClientMessage {
        id: 1,
        request: Request::Join {
            room: Ident::new(room)?,
            user: Ident::new(user)?,
            role,
            name: None,
            token: None,
        },
    };
    ws.send(Message::Text(serde_json::to_string(&msg)?.into()))
        .await?;
    while let Some(frame) = ws.next().await {
        if let Message::Text(t) = frame?
            && let ServerMessage::Reply(r) = serde_json::from_str(&t)?
        {
            if r.ok {
                return Ok(ws);
            }
            bail!("join refused: {:?}", r.error);
        }
    }
    bail!("closed before the join reply")
}

/// Keep a socket open, reading (so pings are answered) until told to stop.
async fn hold(mut ws: Ws, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            frame = ws.next() => if !matches!(frame, Some(Ok(_))) { return },
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return;
            }
        }
    }
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[allow(clippy::too_many_arguments)]
pub async fn idle(
    url: String,
    members: usize,
    concurrency: usize,
    hold_for: Duration,
    server_pid: Option<u32>,
    room: String,
    json: bool,
) -> anyhow::Result<()> {
    check_loopback(&url)?;
    let before = server_pid.map(proc_usage).transpose()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let anchor = join(&url, &room, "anchor", Role::Anchor)
        .await
        .context("anchor join")?;
    let anchor_task = tokio::spawn(hold(anchor, stop_rx.clone()));

    let started = Instant::now();
    let gate = std::sync::Arc::new(Semaphore::new(concurrency.max(1)));
    let mut joins = Vec::with_capacity(members);
    for i in 0..members {
        let permit = gate.clone().acquire_owned().await?;
        let (url, room, stop) = (url.clone(), room.clone(), stop_rx.clone());
        joins.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = join(&url, &room, &format!("v{i}"), Role::Audience).await;
            let took = t.elapsed();
            drop(permit);
            match r {
                Ok(ws) => {
                    let holder = tokio::spawn(hold(ws, stop));
                    Ok((took, holder))
                }
                Err(e) => Err(e),
            }
        }));
    }
    let mut latencies = Vec::with_capacity(members);
    let mut holders = Vec::with_capacity(members);
    let mut failures = 0usize;
    let mut first_error = None;
    for j in joins {
        match j.await? {
            Ok((took, holder)) => {
                latencies.push(took);
                holders.push(holder);
            }
            Err(e) => {
                failures += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let ramp = started.elapsed();
    tokio::time::sleep(hold_for).await;
    let after = server_pid.map(proc_usage).transpose()?;
    let _ = stop_tx.send(true);
    for h in holders {
        let _ = h.await;
    }
    let _ = anchor_task.await;

    latencies.sort();
    let connected = latencies.len();
    let p50 = percentile(&latencies, 0.5);
    let p99 = percentile(&latencies, 0.99);
    let (rss_before, rss_after, per_member, cpu_s) = match (before, after) {
        (Some((rb, cb)), Some((ra, ca))) => (
            Some(rb),
            Some(ra),
            Some(ra.saturating_sub(rb) as f64 / connected.max(1) as f64),
            Some(ca - cb),
        ),
        _ => (None, None, None, None),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "scenario": "idle",
                "asked": members,
                "connected": connected,
                "failed": failures,
                "first_error": first_error,
                "ramp_s": ramp.as_secs_f64(),
                "join_p50_ms": p50.as_secs_f64() * 1e3,
                "join_p99_ms": p99.as_secs_f64() * 1e3,
                "server_rss_before_bytes": rss_before,
                "server_rss_after_bytes": rss_after,
                "server_rss_per_member_bytes": per_member,
                "server_cpu_s": cpu_s,
            })
        );
    } else {
        println!("scenario             idle (1 anchor + viewers in one room)");
        println!("members connected    {connected} of {members} ({failures} failed)");
        if let Some(e) = &first_error {
            println!("first error          {e}");
        }
        println!(
            "ramp                 {:.2} s ({:.0} joins/s)",
            ramp.as_secs_f64(),
            connected as f64 / ramp.as_secs_f64()
        );
        println!(
            "join latency         p50 {:.2} ms, p99 {:.2} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        if let (Some(rb), Some(ra), Some(pm), Some(cpu)) =
            (rss_before, rss_after, per_member, cpu_s)
        {
            println!(
                "server RSS           {:.1} MiB -> {:.1} MiB ({:.1} KiB per member)",
                rb as f64 / 1048576.0,
                ra as f64 / 1048576.0,
                pm / 1024.0
            );
            println!(
                "server CPU           {cpu:.2} s ({:.0} µs per join)",
                cpu * 1e6 / connected.max(1) as f64
            );
        }
    }
    if connected < members {
        bail!("{failures} of {members} members failed to join");
    }
    Ok(())
}

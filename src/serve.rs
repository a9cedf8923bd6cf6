//! The HTTP listener, served connection by connection so the server decides what a client may
//! hold: a header read timeout (idle and half-sent requests are closed), caps on open
//! connections in all and per client address (a WebSocket keeps its connection's place for as
//! long as it lives), and a shutdown that never waits on a client.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use miclink_signaling::{ConnectionSlot, client_key};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::config::HttpLimits;

/// How long a connection may take to finish once shutdown began, before it is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How long a plain HTTP connection (not one that became a WebSocket) may stay open: a client
/// that asks and never reads the answers would otherwise hold its place for ever.
const HTTP_LIFETIME: Duration = Duration::from_secs(60);
/// What one connection may buffer of a request head (hyper's default is about 400 KiB).
const MAX_BUFFER: usize = 16 * 1024;

/// Open connections, in all and by client address.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
    refused: u64,
}

/// A connection's place in the counts, given back when the last holder (the HTTP connection,
/// or the WebSocket it became) drops it.
struct Slot {
    connections: Arc<Connections>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.connections.lock();
        held.total -= 1;
        if let Some(ip) = self.ip
            && let Some(n) = held.by_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                held.by_ip.remove(&ip);
            }
        }
    }
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // The counts stay consistent under any panic (each update is one statement).
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a connection from `peer`, or `None` when a cap is reached.
    fn admit(self: &Arc<Self>, peer: IpAddr, limits: &HttpLimits) -> Option<Slot> {
        let peer = client_key(peer);
        let per_ip =
            limits.max_connections_per_ip > 0 && (limits.per_ip_on_loopback || !peer.is_loopback());
        let mut held = self.lock();
        let from_peer = held.by_ip.get(&peer).copied().unwrap_or(0);
        if held.total >= limits.max_connections
            || (per_ip && from_peer >= limits.max_connections_per_ip)
        {
            held.refused += 1;
            return None;
        }
        held.total += 1;
        if per_ip {
            *held.by_ip.entry(peer).or_default() += 1;
        }
        Some(Slot {
            connections: Arc::clone(self),
            ip: per_ip.then_some(peer),
        })
    }

    /// Open connections and connections refused so far.
    pub(crate) fn counts(&self) -> (usize, u64) {
        let held = self.lock();
        (held.total, held.refused)
    }
}

/// Serve `app` on `listener` until `shutdown` resolves, then stop accepting, ask every
/// connection to finish, and return once they have or [`CLOSE_WAIT`] has passed.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    connections: Arc<Connections>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop, stopping) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: keep serving
                    // the others, and give the process a moment to free descriptors.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Reap finished connections so the set stays as large as the open ones.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let Some(slot) = connections.admit(peer.ip(), &limits) else {
            debug!("connection refused: at a connection cap");
            drop(stream);
            continue;
        };
        tasks.spawn(connection(
            stream,
            peer,
            app.clone(),
            Arc::new(slot),
            limits.header_read_timeout,
            stopping.clone(),
        ));
    }
    let _ = stop.send(true);
    let _ = tokio::time::timeout(CLOSE_WAIT + Duration::from_millis(200), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    Ok(())
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    slot: Arc<Slot>,
    header_read_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        // Handlers see the client's address, and a WebSocket upgrade takes the slot with it.
        request.extensions_mut().insert(ConnectInfo(peer));
        request
            .extensions_mut()
            .insert(ConnectionSlot(slot.clone()));
        app.clone().oneshot(request)
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_BUFFER);
    let conn = http
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(error = %e, "connection ended");
            }
            return;
        }
        _ = stopping.wait_for(|stop| *stop) => {}
        // The connection future ends at an upgrade, so this never cuts a WebSocket.
        () = tokio::time::sleep(HTTP_LIFETIME) => debug!("connection open too long"),
    }
    // Shutdown or too old: an idle connection closes at once, one mid-request gets a moment.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(CLOSE_WAIT, conn).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_counted_by_ipv4_address_or_ipv6_slash_64() {
        let key = |s: &str| client_key(s.parse().expect("an address"));
        assert_eq!(key("::ffff:203.0.113.7"), key("203.0.113.7"), "mapped IPv4");
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff::9"),
            "same /64"
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert!(
            key("::ffff:127.0.0.1").is_loopback(),
            "a proxy on this host"
        );
        assert!(key("::1").is_loopback());
    }

    #[test]
    fn a_slot_is_given_back_once_and_the_counts_never_go_below_zero() {
        let c = Arc::new(Connections::default());
        let limits = HttpLimits {
            max_connections: 2,
            max_connections_per_ip: 1,
            ..HttpLimits::default()
        };
        let ip: IpAddr = "198.51.100.1".parse().expect("an address");
        let first = c.admit(ip, &limits).expect("admitted");
        assert!(c.admit(ip, &limits).is_none(), "per-address cap");
        let other = c
            .admit("198.51.100.2".parse().expect("an address"), &limits)
            .expect("another address");
        assert!(
            c.admit("198.51.100.3".parse().expect("an address"), &limits)
                .is_none(),
            "total cap"
        );
        drop(first);
        drop(other);
        assert_eq!(c.counts(), (0, 2));
        assert!(c.lock().by_ip.is_empty(), "no address left behind");
    }
}

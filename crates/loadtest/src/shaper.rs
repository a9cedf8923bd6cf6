//! A narrow, lossy downlink for one member on loopback: a UDP proxy between the member's
//! subscribe connection and the server's media port that lets server-to-member datagrams
//! through at a set rate with a bounded queue (a datagram that would wait longer than the queue
//! allows is dropped, as a router's full buffer drops it), and drops a set share of media
//! packets at random besides. The member reaches the server through it by a rewrite of the
//! server's candidate in each subscribe offer ([`Shape::rewrite`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::client::SdpRewrite;

/// The downlink of one shaped member. Clones share it; the rate and loss may change while it
/// runs (a cap lifted).
#[derive(Clone, Debug)]
pub struct Shape {
    /// Bits a second; 0 for no cap.
    pub rate_bps: Arc<AtomicU64>,
    /// Media packets (RTP and RTCP) dropped at random, per thousand.
    pub loss_permille: Arc<AtomicU64>,
    /// The longest a datagram waits in the queue before it is dropped instead.
    pub queue: Duration,
    /// Datagrams dropped: by the queue, and at random.
    pub queue_drops: Arc<AtomicU64>,
    pub random_drops: Arc<AtomicU64>,
    /// Bytes let through toward the member.
    pub delivered_bytes: Arc<AtomicU64>,
    port: Arc<Mutex<Option<u16>>>,
}

impl Shape {
    /// A downlink of `rate_bps` (0: no cap) losing `loss_permille` of media packets, with a
    /// 100 ms queue.
    pub fn new(rate_bps: u64, loss_permille: u64) -> Shape {
        Shape {
            rate_bps: Arc::new(AtomicU64::new(rate_bps)),
            loss_permille: Arc::new(AtomicU64::new(loss_permille)),
            queue: Duration::from_millis(100),
            queue_drops: Arc::default(),
            random_drops: Arc::default(),
            delivered_bytes: Arc::default(),
            port: Arc::default(),
        }
    }

    pub fn set_rate(&self, rate_bps: u64) {
        self.rate_bps.store(rate_bps, Ordering::Relaxed);
    }

    /// The rewrite that sends the member's subscribe connection through this downlink: the
    /// proxy starts with the first offer, toward the port of the offer's first UDP candidate.
    pub fn rewrite(&self) -> SdpRewrite {
        let shape = self.clone();
        Arc::new(move |sdp: &str| {
            let Some(server_port) = udp_candidate_port(sdp) else {
                return sdp.to_owned();
            };
            let port = {
                let mut port = shape.port.lock().expect("shape port");
                match *port {
                    Some(p) => p,
                    None => match shape.start(([127, 0, 0, 1], server_port).into()) {
                        Ok(p) => *port.insert(p),
                        Err(_) => return sdp.to_owned(),
                    },
                }
            };
            sdp.replace(
                &format!(" {server_port} typ host"),
                &format!(" {port} typ host"),
            )
        })
    }

    /// Start the proxy toward `server`; returns the port members send to.
    fn start(&self, server: SocketAddr) -> std::io::Result<u16> {
        let bind = || -> std::io::Result<UdpSocket> {
            let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
            s.set_nonblocking(true)?;
            UdpSocket::from_std(s)
        };
        let (front, back) = (bind()?, bind()?);
        let port = front.local_addr()?.port();
        let shape = self.clone();
        tokio::spawn(async move { shape.run(front, back, server).await });
        Ok(port)
    }

    async fn run(self, front: UdpSocket, back: UdpSocket, server: SocketAddr) {
        let mut client: Option<SocketAddr> = None;
        let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
        // When the link is free to start the next datagram.
        let mut free_at = Instant::now();
        let (mut a, mut b) = (vec![0u8; 2048], vec![0u8; 2048]);
        loop {
            let release = queue.front().map(|(at, _)| *at);
            tokio::select! {
                r = front.recv_from(&mut a) => {
                    let Ok((n, from)) = r else { return };
                    client = Some(from);
                    let _ = back.send_to(&a[..n], server).await;
                }
                r = back.recv_from(&mut b) => {
                    let Ok((n, _)) = r else { return };
                    let p = &b[..n];
                    // SRTP and SRTCP keep the RTP version bits in clear; handshakes are spared.
                    let media = p.first().is_some_and(|x| x >> 6 == 2);
                    let loss = self.loss_permille.load(Ordering::Relaxed);
                    if media && loss > 0 && u64::from(rand::random::<u16>() % 1000) < loss {
                        self.random_drops.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let rate = self.rate_bps.load(Ordering::Relaxed);
                    let now = Instant::now();
                    if rate == 0 {
                        queue.push_back((now, p.to_vec()));
                        continue;
                    }
                    let start = free_at.max(now);
                    if start - now > self.queue {
                        self.queue_drops.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    free_at = start + Duration::from_secs_f64(n as f64 * 8.0 / rate as f64);
                    queue.push_back((free_at, p.to_vec()));
                }
                _ = sleep_until(release) => {
                    let now = Instant::now();
                    while let Some((at, _)) = queue.front() {
                        if *at > now {
                            break;
                        }
                        let Some((_, p)) = queue.pop_front() else { break };
                        if let Some(to) = client {
                            self.delivered_bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
                            let _ = front.send_to(&p, to).await;
                        }
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The port of a description's first UDP host candidate.
fn udp_candidate_port(sdp: &str) -> Option<u16> {
    let described = miclink_sfu::Sdp::parse(sdp).ok()?;
    described.host_candidates("udp").first().map(|a| a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_capped_downlink_carries_its_rate_and_drops_the_rest() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let server_addr = server.local_addr().expect("addr");
        let server = UdpSocket::from_std({
            server.set_nonblocking(true).expect("nb");
            server
        })
        .expect("tokio");
        // 800 kbit/s: a 1,000-byte datagram every 10 ms.
        let shape = Shape::new(800_000, 0);
        let port = shape.start(server_addr).expect("proxy");
        let member = UdpSocket::bind("127.0.0.1:0").await.expect("member");
        member
            .send_to(b"hello", ("127.0.0.1", port))
            .await
            .expect("send");
        let mut buf = [0u8; 2048];
        let (_, proxy) = server.recv_from(&mut buf).await.expect("hello");
        // The server sends 2 Mbit/s for one second.
        let sender = tokio::spawn(async move {
            for _ in 0..250 {
                let mut p = vec![0u8; 1000];
                p[0] = 0x80;
                server.send_to(&p, proxy).await.expect("send");
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        });
        let (mut got, mut first, mut last) = (0u64, None, Instant::now());
        let end = Instant::now() + Duration::from_millis(2000);
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(end, member.recv_from(&mut buf)).await {
            got += n as u64;
            last = Instant::now();
            first.get_or_insert(last);
        }
        sender.await.expect("sender");
        // The rate the member saw while the link was busy (the last datagram's bytes excluded:
        // the first one's arrival starts the clock).
        let busy = last - first.expect("something arrived");
        let kbit_s = (got - 1000) as f64 * 8.0 / busy.as_secs_f64() / 1000.0;
        assert!((720.0..=880.0).contains(&kbit_s), "{kbit_s} kbit/s through");
        assert!(shape.queue_drops.load(Ordering::Relaxed) > 100);
    }
}

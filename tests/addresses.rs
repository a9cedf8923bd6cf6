//! Multi-homed hosts: the media port bound on every address answers each client from the
//! address its checks came to. The test's second address is 127.0.0.2 (every 127/8 address is
//! this host's): a client on 127.0.0.1 sends to 127.0.0.2, where the kernel's own choice of
//! source for a reply to 127.0.0.1 would be 127.0.0.1, an address the client never checked.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use miclink_loadtest::client::{Member, Options, SdpRewrite};
use miclink_loadtest::marker::Kind;
use miclink_loadtest::peer::StreamSpec;
use miclink_loadtest::recv::Recv;
use miclink_protocol::Role;
use tokio::sync::Notify;

mod common;

/// A UDP relay on 127.0.0.1 between a client and `server`, noting every address the server's
/// datagrams came from.
struct Relay {
    port: u16,
    sources: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn relay(server: SocketAddr) -> Relay {
    let front = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let back = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for s in [&front, &back] {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
    }
    let port = front.local_addr().expect("addr").port();
    let sources = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let (f, b) = (
        front.try_clone().expect("clone"),
        back.try_clone().expect("clone"),
    );
    let (c, st) = (client.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !st.load(Ordering::SeqCst) {
            if let Ok((n, from)) = f.recv_from(&mut buf) {
                *c.lock().expect("client") = Some(from);
                let _ = b.send_to(&buf[..n], server);
            }
        }
    });
    let (src, st) = (sources.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !st.load(Ordering::SeqCst) {
            if let Ok((n, from)) = back.recv_from(&mut buf) {
                let mut seen = src.lock().expect("sources");
                if !seen.contains(&from) {
                    seen.push(from);
                }
                drop(seen);
                if let Some(to) = *client.lock().expect("client") {
                    let _ = front.send_to(&buf[..n], to);
                }
            }
        }
    });
    Relay {
        port,
        sources,
        stop,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_bind_answers_from_the_address_the_client_reached() {
    let second = IpAddr::from([127, 0, 0, 2]);
    let server = common::server_wildcard(vec![second]).await;
    let started = Instant::now();
    let stop = Arc::new(Notify::new());
    let anchor = common::client_anchor(
        &server,
        started,
        &[StreamSpec::audio(32_000), StreamSpec::video(200_000, 15)],
        stop.clone(),
    )
    .await;
    // The viewer reaches 127.0.0.2 through the relay, which sends from 127.0.0.1.
    let relays: Arc<Mutex<Vec<Relay>>> = Arc::default();
    let seen = relays.clone();
    let rewrite: SdpRewrite = Arc::new(move |sdp: &str| {
        let Some(port) = sdp
            .lines()
            .find(|l| {
                l.starts_with("a=candidate:") && l.contains(" udp ") && l.contains(" 127.0.0.2 ")
            })
            .and_then(|l| l.split_whitespace().nth(5))
            .and_then(|p| p.parse::<u16>().ok())
        else {
            return sdp.to_owned();
        };
        let mut relays = seen.lock().expect("relays");
        if relays.is_empty() {
            relays.push(relay(SocketAddr::new(second, port)));
        }
        sdp.replace(
            &format!(" 127.0.0.2 {port} typ host"),
            &format!(" 127.0.0.1 {} typ host", relays[0].port),
        )
    });
    let recv = Recv::new(started);
    let viewer = Member::join(
        &server.url,
        "r",
        "viewer",
        Role::Audience,
        recv.clone(),
        Options {
            offer_rewrite: Some(rewrite),
            ..Options::default()
        },
    )
    .await
    .expect("viewer joins");
    let deadline = Instant::now() + common::WAIT;
    while recv.received("anchor", Kind::Video, 0, 100_000).0 == 0 {
        assert!(
            Instant::now() < deadline,
            "the viewer never got the anchor's video through 127.0.0.2"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sources = relays.lock().expect("relays")[0]
        .sources
        .lock()
        .expect("sources")
        .clone();
    assert!(
        !sources.is_empty() && sources.iter().all(|s| s.ip() == second),
        "every datagram to the client left from the address it sent to: {sources:?}"
    );
    stop.notify_waiters();
    viewer.close().await;
    anchor.close().await;
}

//! TURN: members allowed only relayed connections reach the server through a coturn that the
//! test starts on loopback, with the per-member credentials of their join reply; expired
//! credentials are refused by coturn itself. Needs Debian's coturn (`tests/run` installs it).

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use miclink_loadtest::client::{Member, Options};
use miclink_loadtest::marker::Kind;
use miclink_loadtest::peer::{Publisher, Route, StreamSpec};
use miclink_loadtest::recv::Recv;
use miclink_protocol::{IceServer, Ident, Request, Role};
use miclink_signaling::turn::TurnSecret;
use tokio::sync::Notify;

mod common;

const SECRET: &str = "turn-test-secret-0123456789";
const TURNSERVER: &str = "/usr/bin/turnserver";

/// A coturn on a free loopback port, killed when dropped.
struct Coturn {
    child: Child,
    port: u16,
    /// Its log (what it refused, and why).
    log: std::path::PathBuf,
}

impl Coturn {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port()
}

/// A STUN binding request answered: the server is up.
fn answers_stun(port: u16) -> bool {
    let Ok(s) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    request.extend_from_slice(&[7; 12]);
    if s.send_to(&request, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(s.recv_from(&mut buf), Ok((n, _)) if n >= 20 && buf[0..2] == [0x01, 0x01])
}

fn coturn() -> Coturn {
    assert!(
        std::path::Path::new(TURNSERVER).exists(),
        "{TURNSERVER} is missing: install Debian's coturn (apt-get install coturn), as tests/run does"
    );
    let port = free_udp_port();
    let relay_min = 40_000 + (port % 10_000);
    let log = std::env::temp_dir().join(format!("miclink-turn-test-{port}.log"));
    let child = Command::new(TURNSERVER)
        .args([
            "-n",
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            &format!("--listening-port={port}"),
            &format!("--min-port={relay_min}"),
            &format!("--max-port={}", relay_min + 200),
            "--use-auth-secret",
            &format!("--static-auth-secret={SECRET}"),
            "--realm=miclink.test",
            // The server under test is on loopback too.
            "--allow-loopback-peers",
            "--no-tls",
            "--no-dtls",
            "--no-tcp",
            "--no-cli",
            "--fingerprint",
            &format!("--log-file={}", log.display()),
            "--simple-log",
            "--no-stdout-log",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnserver starts");
    let coturn = Coturn { child, port, log };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answers_stun(port) {
        assert!(
            Instant::now() < deadline,
            "turnserver did not answer on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    coturn
}

fn turn_url(port: u16) -> String {
    format!("turn:127.0.0.1:{port}?transport=udp")
}

fn relayed() -> Options {
    Options {
        relay_only: true,
        ..Options::default()
    }
}

/// Wait until `recv` has packets of `kind` from `publisher`.
async fn heard(recv: &Recv, publisher: &str, kind: Kind) -> bool {
    let deadline = Instant::now() + common::WAIT;
    while recv.minutes(publisher, kind).last_arrival_ns == 0 {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_forced_to_relay_get_media_both_ways_through_coturn() {
    let turn = coturn();
    let server = common::server_with(|c| {
        c.signaling.ice_servers = vec![IceServer {
            urls: vec![turn_url(turn.port)],
            username: None,
            credential: None,
        }];
        c.signaling.turn = Some(TurnSecret::new(SECRET, Duration::from_secs(3600)));
    })
    .await;
    let started = Instant::now();
    let stop = Arc::new(Notify::new());
    let anchor_recv = Recv::new(started);
    let mut anchor = Member::join(
        &server.url,
        "r",
        "anchor",
        Role::Anchor,
        anchor_recv.clone(),
        relayed(),
    )
    .await
    .expect("anchor joins");
    let given = &anchor.join.ice_servers[0];
    assert!(
        given
            .username
            .as_deref()
            .is_some_and(|u| u.ends_with(":anchor")),
        "per-member credentials in the join reply: {given:?}"
    );
    anchor
        .publish(
            &[StreamSpec::audio(32_000), StreamSpec::video(200_000, 15)],
            stop.clone(),
            None,
        )
        .await
        .expect("anchor publishes through the relay");
    let guest_recv = Recv::new(started);
    let mut guest = Member::join(
        &server.url,
        "r",
        "guest",
        Role::Audience,
        guest_recv.clone(),
        relayed(),
    )
    .await
    .expect("guest joins");
    assert!(
        heard(&guest_recv, "anchor", Kind::Audio).await,
        "the guest hears the anchor"
    );
    assert!(
        heard(&guest_recv, "anchor", Kind::Video).await,
        "the guest sees the anchor"
    );
    let sdp = guest
        .subscriber_sdp()
        .await
        .expect("a subscribe connection");
    assert!(sdp.contains("typ relay"), "relay candidates: {sdp}");
    assert!(!sdp.contains("typ host"), "no host candidates: {sdp}");

    // The other way: the guest links and publishes, the anchor hears it through the relay too.
    guest
        .request(Request::RequestLink {
            user: None,
            seat: None,
            timeout_s: None,
            open_camera: Some(false),
        })
        .await
        .expect("apply");
    anchor
        .call(Request::RespondLink {
            user: Ident::new("guest").expect("id"),
            accept: true,
        })
        .await
        .expect("accept");
    guest
        .publish(&[StreamSpec::audio(32_000)], stop.clone(), None)
        .await
        .expect("guest publishes through the relay");
    assert!(
        heard(&anchor_recv, "guest", Kind::Audio).await,
        "the anchor hears the guest"
    );
    stop.notify_waiters();
    guest.close().await;
    anchor.close().await;
}

/// The local description of a relay-only publish connection using `servers`, once gathered.
async fn gathered_with(servers: Vec<IceServer>) -> String {
    let route = Route::Relay(servers);
    let (p, sdp) = Publisher::offer_via("probe", &[StreamSpec::audio(32_000)], &route)
        .await
        .expect("an offer");
    p.peer.close().await;
    sdp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_takes_fresh_credentials_and_refuses_expired_ones() {
    let turn = coturn();
    let secret = TurnSecret::new(SECRET, Duration::from_secs(60));
    let server = |(username, credential): (String, String)| {
        vec![IceServer {
            urls: vec![turn_url(turn.port)],
            username: Some(username),
            credential: Some(credential),
        }]
    };
    let fresh = gathered_with(server(secret.credentials("probe", SystemTime::now()))).await;
    assert!(
        fresh.contains("typ relay"),
        "fresh credentials allocate a relay: {fresh}"
    );
    // Made two minutes ago with a one-minute lifetime: expired a minute ago.
    let then = SystemTime::now() - Duration::from_secs(120);
    let expired = secret.credentials("probe", then);
    let expired_user = expired.0.clone();
    let sdp = gathered_with(server(expired)).await;
    assert!(
        !sdp.contains("typ relay"),
        "expired credentials allocate nothing: {sdp}"
    );
    let wrong = TurnSecret::new("not-the-shared-secret", Duration::from_secs(60));
    let forged = wrong.credentials("forger", SystemTime::now());
    let forged_user = forged.0.clone();
    let sdp = gathered_with(server(forged)).await;
    assert!(
        !sdp.contains("typ relay"),
        "a wrong secret allocates nothing: {sdp}"
    );
    // Refused by coturn (not merely slow): it says so for each.
    let log = turn.log();
    for user in [expired_user, forged_user] {
        assert!(
            log.contains(&format!("Cannot find credentials of user <{user}>")),
            "coturn refused {user}:\n{log}"
        );
    }
}

/// Issue 26, item 5: credentials lived a day by default and outlived a kick. They now live an
/// hour by default (`turn_ttl_s`), and a member who resumes gets fresh ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_live_an_hour_by_default_and_a_resume_or_ice_servers_renews_them() {
    // No coturn is needed: the credentials are the server's to make.
    let config = miclink::Config::load(
        <miclink::Args as clap::Parser>::try_parse_from([
            "miclink",
            "--ice-server",
            "turn:127.0.0.1:3478?transport=udp",
            "--turn-secret",
            SECRET,
        ])
        .expect("flags"),
    )
    .expect("config");
    let turn = config.signaling.turn.clone().expect("a TURN secret");
    let s = common::server_with(move |c| {
        c.signaling.ice_servers = config.signaling.ice_servers.clone();
        c.signaling.turn = Some(turn);
    })
    .await;
    let expiry = |join: &miclink_protocol::JoinResult| -> u64 {
        let username = join.ice_servers[0].username.as_deref().expect("a username");
        username
            .split(':')
            .next()
            .and_then(|t| t.parse().ok())
            .expect("expiry:user")
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    };
    let member = common::client_join(
        &s,
        "viewer",
        Role::Anchor,
        Recv::new(Instant::now()),
        Options::default(),
    )
    .await;
    let first = expiry(&member.join);
    assert!((3590..=3610).contains(&(first - now())), "an hour: {first}");
    // The socket drops; the member resumes a little later and gets new credentials.
    let session = member.join.session.clone();
    member.kill().await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let back = miclink_loadtest::client::Member::resume(
        &s.url,
        "viewer",
        &session,
        Recv::new(Instant::now()),
        Options::default(),
    )
    .await
    .expect("resumed");
    assert!(expiry(&back.join) > first, "renewed on resume");
    // A connection made later asks for fresh ones.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let fresh = back
        .call(miclink_protocol::Request::IceServers)
        .await
        .expect("ice_servers");
    let fresh: miclink_protocol::IceServersResult =
        serde_json::from_value(fresh).expect("ice servers");
    let username = fresh.ice_servers[0]
        .username
        .as_deref()
        .expect("a username");
    let renewed: u64 = username
        .split(':')
        .next()
        .and_then(|t| t.parse().ok())
        .expect("expiry:user");
    assert!(
        renewed > expiry(&back.join),
        "made for the request: {username}"
    );
    assert!(username.ends_with(":viewer"));
    back.close().await;
}

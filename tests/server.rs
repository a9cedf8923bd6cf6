//! The assembled server: embedded defaults, health check, demo page and WebSocket on one port.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use miclink::{Args, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

type Running = (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), miclink::RunError>>,
);

async fn start() -> Running {
    start_with(|_| {}).await
}

async fn start_with(adjust: impl FnOnce(&mut Config)) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut config = Config::load(Args::default()).expect("embedded defaults are valid");
    adjust(&mut config);
    // Port 0: tests run side by side.
    if let Some(media) = &mut config.media {
        media.udp_addr.set_port(0);
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(miclink::run(listener, config, async {
        let _ = stopped.await;
    }));
    (addr, stop, server)
}

/// A bare HTTP/1.1 GET; returns the status line and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    get_with(addr, path, "").await
}

/// A GET with extra header lines (each ending in CRLF).
async fn get_with(addr: std::net::SocketAddr, path: &str, headers: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out.lines().next().unwrap_or_default().to_owned();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn one_port_serves_health_demo_and_websocket_then_shuts_down_cleanly() {
    let (addr, stop, server) = start().await;

    let (status, body) = get(addr, "/healthz").await;
    assert!(status.contains("200"), "{status}");
    assert!(body.contains(r#""status":"ok""#), "{body}");

    let (status, body) = get(addr, "/").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        body.contains("<title>miclink"),
        "the embedded demo page is served"
    );

    let (status, _) = get(addr, "/no-such-file.js").await;
    assert!(status.contains("404"), "{status}");

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("websocket");
    ws.send(Message::Text(
        r#"{"id":1,"type":"join","room":"r","user":"a","role":"anchor"}"#.into(),
    ))
    .await
    .expect("send");
    let reply = ws.next().await.expect("reply").expect("frame");
    assert!(reply.to_text().expect("text").contains(r#""ok":true"#));

    let (_, body) = get(addr, "/healthz").await;
    assert!(body.contains(r#""rooms":1"#), "{body}");

    stop.send(()).expect("server running");
    let mut saw_room_ended = false;
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(t) if t.contains("server_shutdown") => saw_room_ended = true,
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert!(
        saw_room_ended,
        "room_ended with server_shutdown before the close"
    );
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops")
        .expect("task")
        .expect("serve");
}

/// Whether the server closes `s` (EOF or reset) within `within`.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    });
    read.await.is_ok()
}

/// A socket joined to room "r" as `role` ("anchor" or "audience").
async fn join(
    addr: std::net::SocketAddr,
    user: &str,
    role: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("websocket");
    ws.send(Message::Text(
        format!(r#"{{"id":1,"type":"join","room":"r","user":"{user}","role":"{role}"}}"#).into(),
    ))
    .await
    .expect("send");
    let reply = ws.next().await.expect("reply").expect("frame");
    assert!(reply.to_text().expect("text").contains(r#""ok":true"#));
    ws
}

#[tokio::test]
async fn a_client_at_its_connection_cap_is_refused_until_it_closes_one() {
    let (addr, stop, server) = start_with(|c| {
        c.http.max_connections_per_ip = 3;
        c.http.per_ip_on_loopback = true;
    })
    .await;
    // Three WebSockets hold all three places, for as long as they live (past the upgrade).
    let mut sockets = Vec::new();
    sockets.push(join(addr, "a", "anchor").await);
    for i in 1..3 {
        sockets.push(join(addr, &format!("v{i}"), "audience").await);
    }
    let mut fourth = TcpStream::connect(addr).await.expect("the kernel accepts");
    assert!(
        closed_by_server(&mut fourth, Duration::from_secs(5)).await,
        "the fourth connection is closed at once"
    );
    let mut ws = sockets.pop().expect("three");
    ws.close(None).await.expect("close");
    while ws.next().await.is_some() {}
    // The place comes back when the socket task ends; a new client gets in then.
    let mut admitted = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .is_ok()
        {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "a closed socket gives its place back");
    drop(sockets);
    stop.send(()).expect("running");
    let _ = server.await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_closed() {
    let (addr, stop, server) =
        start_with(|c| c.http.header_read_timeout = Duration::from_secs(1)).await;
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let mut half = TcpStream::connect(addr).await.expect("connect");
    half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    assert!(
        closed_by_server(&mut idle, Duration::from_secs(10)).await,
        "idle"
    );
    assert!(
        closed_by_server(&mut half, Duration::from_secs(10)).await,
        "half a head"
    );
    stop.send(()).expect("running");
    let _ = server.await;
}

#[tokio::test]
async fn shutdown_ends_within_five_seconds_whatever_the_clients_do() {
    let (addr, stop, server) = start().await;
    // An idle connection, one halfway through its request head, and a joined socket whose
    // client never reads again (nor answers the close).
    let _idle = TcpStream::connect(addr).await.expect("connect");
    let mut half = TcpStream::connect(addr).await.expect("connect");
    half.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    let _deaf = join(addr, "deaf", "anchor").await;
    let asked = std::time::Instant::now();
    stop.send(()).expect("running");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops within five seconds")
        .expect("task")
        .expect("serve");
    // Tokio's timeout bounds it; this line only reports how long it took.
    eprintln!("stopped {:?} after the request", asked.elapsed());
}

#[tokio::test]
async fn past_the_total_cap_new_connections_are_refused() {
    let (addr, stop, server) = start_with(|c| {
        c.http.max_connections = 2;
        c.http.max_connections_per_ip = 0;
    })
    .await;
    let _a = join(addr, "a", "anchor").await;
    let _b = join(addr, "b", "audience").await;
    let mut third = TcpStream::connect(addr).await.expect("the kernel accepts");
    assert!(
        closed_by_server(&mut third, Duration::from_secs(5)).await,
        "closed at accept"
    );
    stop.send(()).expect("running");
    let _ = server.await;
}

#[tokio::test]
async fn loopback_clients_are_not_capped_per_address_by_default() {
    let (addr, stop, server) = start_with(|c| c.http.max_connections_per_ip = 1).await;
    let _a = join(addr, "a", "anchor").await;
    let _b = join(addr, "b", "audience").await;
    let (status, _) = get(addr, "/healthz").await;
    assert!(status.contains("200"), "{status}");
    stop.send(()).expect("running");
    let _ = server.await;
}

#[tokio::test]
async fn a_keep_alive_connection_that_goes_quiet_is_closed() {
    let (addr, stop, server) =
        start_with(|c| c.http.header_read_timeout = Duration::from_secs(1)).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.expect("a response");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_by_server(&mut s, Duration::from_secs(10)).await,
        "closed after a second without the next request"
    );
    stop.send(()).expect("running");
    let _ = server.await;
}

/// Issue 26, item 5: the demo page carries a join token, so it leaks it nowhere: no `Referer`,
/// scripts and connections from this server only (and from the signaling servers listed), no
/// framing; the page learns the list from the server.
#[tokio::test]
async fn the_demo_sends_no_referrer_and_a_policy_that_keeps_its_token_to_this_server() {
    let (addr, stop, server) = start_with(|c| {
        c.demo_servers = vec!["wss://other.example/ws".to_owned()];
    })
    .await;
    for path in ["/", "/whep.html", "/js/app.js"] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let head = out.split_once("\r\n\r\n").map_or(&out[..], |(h, _)| h);
        let lower = head.to_ascii_lowercase();
        assert!(lower.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(
            lower.contains("referrer-policy: no-referrer"),
            "{path}: {head}"
        );
        assert!(
            lower.contains("x-content-type-options: nosniff"),
            "{path}: {head}"
        );
        let csp = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-security-policy: "))
            .unwrap_or_else(|| panic!("{path}: no policy in {head}"));
        for part in [
            "script-src 'self'",
            "frame-ancestors 'none'",
            &format!("connect-src 'self' ws://{addr} wss://{addr} wss://other.example/ws"),
        ] {
            assert!(csp.contains(part), "{path}: {part} not in {csp}");
        }
    }
    let (_, body) = get(addr, "/demo-config.json").await;
    let config: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        config["servers"],
        serde_json::json!(["wss://other.example/ws"])
    );
    let _ = stop.send(());
    let _ = server.await;
}

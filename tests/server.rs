//! The assembled server: embedded defaults, health check, demo page and WebSocket on one port.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use miclink::{Args, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

async fn start() -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), miclink::RunError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut config = Config::load(Args::default()).expect("embedded defaults are valid");
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
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
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

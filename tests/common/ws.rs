//! A signaling-only member: a WebSocket speaking the protocol's JSON, for tests of what the
//! server says (no media).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Ws {
    socket: Socket,
    next_id: u64,
    /// Events read while waiting for something else, oldest first.
    pub events: Vec<Value>,
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket");
        Ws {
            socket,
            next_id: 1,
            events: Vec::new(),
        }
    }

    /// Connect and join; panics unless the join succeeds. The join's result.
    pub async fn join(url: &str, room: &str, user: &str, role: &str) -> (Ws, Value) {
        Ws::join_with(
            url,
            json!({"type": "join", "room": room, "user": user, "role": role, "name": user}),
        )
        .await
    }

    pub async fn join_with(url: &str, join: Value) -> (Ws, Value) {
        let mut ws = Ws::connect(url).await;
        let reply = ws.request(join).await;
        assert_eq!(reply["ok"], true, "join: {reply}");
        let result = reply["result"].clone();
        (ws, result)
    }

    /// Send `request` (an `id` is added) and wait for its reply; events meanwhile are kept.
    pub async fn request(&mut self, mut request: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        request["id"] = id.into();
        self.socket
            .send(Message::text(request.to_string()))
            .await
            .expect("send");
        loop {
            let msg = self
                .next()
                .await
                .unwrap_or_else(|| panic!("no reply to {request}"));
            if msg["type"] == "reply" && msg.get("id").and_then(Value::as_u64) == Some(id) {
                return msg;
            }
            self.events.push(msg);
        }
    }

    /// The next event of `kind` (kept ones first); panics after 10 s.
    pub async fn event(&mut self, kind: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["type"] == kind) {
            return self.events.remove(i);
        }
        loop {
            let msg = self
                .next()
                .await
                .unwrap_or_else(|| panic!("no {kind} event; had {:?}", self.events));
            if msg["type"] == kind {
                return msg;
            }
            self.events.push(msg);
        }
    }

    /// Whether an event of `kind` comes within `wait`.
    pub async fn gets(&mut self, kind: &str, wait: Duration) -> bool {
        if self.events.iter().any(|e| e["type"] == kind) {
            return true;
        }
        match tokio::time::timeout(wait, self.event(kind)).await {
            Ok(event) => {
                // Kept for the `event` that takes it.
                self.events.push(event);
                true
            }
            Err(_) => false,
        }
    }

    async fn next(&mut self) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .ok()??
                .ok()?;
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).ok(),
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }
}

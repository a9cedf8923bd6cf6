//! A real WebSocket client and a server on port 0, shared by the signaling tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use miclink_protocol::{
    ClientMessage, ErrorCode, Event, Ident, JoinResult, Name, Reply, Request, Role, ServerMessage,
};
use miclink_signaling::{Signaling, SignalingConfig};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// How long (real time) a test waits for something that should come.
const WAIT: Duration = Duration::from_secs(5);
/// How long (real time) a test listens to be sure nothing comes.
const QUIET: Duration = Duration::from_millis(150);

/// Drive `fut`, which waits on socket I/O, for at most `within` of real time; `None` if it did not
/// finish.
///
/// Under paused tokio time the runtime jumps the clock to the next timer whenever it looks idle,
/// even while loopback bytes are still on their way through the kernel, which would fire server
/// timers (grace periods, request timeouts) that the test never advanced to. A running
/// `spawn_blocking` task inhibits that jump, so one is kept running while we wait: virtual time
/// then moves only when a test calls `tokio::time::advance`.
pub async fn io<F: Future>(within: Duration, fut: F) -> Option<F::Output> {
    let deadline = std::time::Instant::now() + within;
    tokio::pin!(fut);
    loop {
        let hold = tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(2)));
        tokio::select! {
            biased;
            out = &mut fut => return Some(out),
            _ = hold => {}
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
    }
}

pub struct Server {
    pub url: String,
    pub signaling: Signaling,
}

pub async fn server(config: SignalingConfig) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let signaling = Signaling::start(config, None);
    let app = signaling.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        url: format!("ws://{addr}/ws"),
        signaling,
    }
}

impl Server {
    /// Wait until the server holds exactly `n` sockets (it has noticed a drop, say).
    pub async fn wait_for_connections(&self, n: usize) {
        for _ in 0..250 {
            let stats = self.signaling.stats().await.expect("hub running");
            if stats.connections == n {
                return;
            }
            io(Duration::from_millis(20), std::future::pending::<()>()).await;
        }
        panic!("the server never reached {n} connections");
    }
}

pub async fn default_server() -> Server {
    server(SignalingConfig::default()).await
}

pub fn id(s: &str) -> Ident {
    Ident::new(s).expect("valid id")
}

pub struct Client {
    pub user: String,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Events that arrived while waiting for a reply.
    events: VecDeque<Event>,
    pub session: Option<String>,
}

impl Client {
    pub async fn connect(url: &str, user: &str) -> Client {
        let (ws, _) = io(WAIT, connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        Client {
            user: user.to_owned(),
            ws,
            next_id: 1,
            events: VecDeque::new(),
            session: None,
        }
    }

    /// Connect and join; panics unless the join succeeds.
    pub async fn join(url: &str, room: &str, user: &str, role: Role) -> (Client, JoinResult) {
        let mut c = Client::connect(url, user).await;
        let result = c.join_as(room, role, None).await.expect("join succeeds");
        (c, result)
    }

    pub async fn join_as(
        &mut self,
        room: &str,
        role: Role,
        token: Option<String>,
    ) -> Result<JoinResult, ErrorCode> {
        let reply = self
            .request(Request::Join {
                room: id(room),
                user: id(&self.user.clone()),
                role,
                name: Some(Name::new(&format!("{} name", self.user)).expect("name")),
                token,
            })
            .await;
        let result: JoinResult = serde_json::from_value(ok_or_code(reply)?).expect("JoinResult");
        self.session = Some(result.session.clone());
        Ok(result)
    }

    pub async fn send_text(&mut self, text: String) {
        io(WAIT, self.ws.send(Message::Text(text.into())))
            .await
            .expect("send in time")
            .expect("send");
    }

    /// Send without insisting: false once the server has closed the socket.
    pub async fn try_send_text(&mut self, text: String) -> bool {
        matches!(
            io(WAIT, self.ws.send(Message::Text(text.into()))).await,
            Some(Ok(()))
        )
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        io(WAIT, self.ws.send(Message::Binary(bytes.into())))
            .await
            .expect("send in time")
            .expect("send");
    }

    /// Send a request and wait for its reply, keeping the events that arrive meanwhile.
    pub async fn request(&mut self, request: Request) -> Reply {
        let id = self.next_id;
        self.next_id += 1;
        let text = serde_json::to_string(&ClientMessage { id, request }).expect("serialize");
        self.send_text(text).await;
        self.reply_to(id).await
    }

    pub async fn reply_to(&mut self, id: u64) -> Reply {
        loop {
            match self.recv().await {
                ServerMessage::Reply(r) if r.id == id => return r,
                ServerMessage::Reply(r) => {
                    panic!("{}: reply to {} while waiting for {id}", self.user, r.id)
                }
                ServerMessage::Event(e) => self.events.push_back(e),
            }
        }
    }

    /// The request must succeed; its result.
    pub async fn ok(&mut self, request: Request) -> Value {
        let what = request.type_name();
        let reply = self.request(request).await;
        ok_or_code(reply).unwrap_or_else(|code| panic!("{}: {what} failed with {code}", self.user))
    }

    /// The request must fail; its error code.
    pub async fn err(&mut self, request: Request) -> ErrorCode {
        let what = request.type_name();
        match ok_or_code(self.request(request).await) {
            Ok(v) => panic!("{}: {what} should fail but returned {v}", self.user),
            Err(code) => code,
        }
    }

    /// The next message off the socket, whatever it is.
    pub async fn recv(&mut self) -> ServerMessage {
        loop {
            let msg = io(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|| panic!("{}: nothing arrived", self.user))
                .unwrap_or_else(|| panic!("{}: socket closed", self.user))
                .unwrap_or_else(|e| panic!("{}: socket error {e}", self.user));
            match msg {
                Message::Text(t) => {
                    return serde_json::from_str(&t)
                        .unwrap_or_else(|e| panic!("{}: unparsable {t}: {e}", self.user));
                }
                Message::Close(frame) => panic!("{}: closed by server: {frame:?}", self.user),
                _ => continue,
            }
        }
    }

    /// The next event other than `audience_count`.
    pub async fn event(&mut self) -> Event {
        loop {
            let e = match self.events.pop_front() {
                Some(e) => e,
                None => match self.recv().await {
                    ServerMessage::Event(e) => e,
                    ServerMessage::Reply(r) => panic!("{}: unexpected reply {r:?}", self.user),
                },
            };
            if !matches!(e, Event::AudienceCount { .. }) {
                return e;
            }
        }
    }

    /// The next event other than `audience_count` must be of type `kind`.
    pub async fn expect(&mut self, kind: &str) -> Event {
        let e = self.event().await;
        assert_eq!(e.type_name(), kind, "{}: got {e:?}", self.user);
        e
    }

    /// No event other than `audience_count` arrives for a short while.
    pub async fn expect_quiet(&mut self) {
        self.events
            .retain(|e| matches!(e, Event::AudienceCount { .. }));
        if let Some(e) = self
            .events
            .pop_front()
            .filter(|e| !matches!(e, Event::AudienceCount { .. }))
        {
            panic!("{}: expected quiet, got {e:?}", self.user);
        }
        let deadline = std::time::Instant::now() + QUIET;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match io(left, self.ws.next()).await {
                None => return,
                Some(Some(Ok(Message::Text(t)))) => {
                    let msg: ServerMessage = serde_json::from_str(&t).expect("parse");
                    match msg {
                        ServerMessage::Event(Event::AudienceCount { .. }) => continue,
                        other => panic!("{}: expected quiet, got {other:?}", self.user),
                    }
                }
                Some(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Some(other) => panic!("{}: expected quiet, got {other:?}", self.user),
            }
        }
    }

    /// Every event (including `audience_count`) up to the close frame; returns them and the close
    /// code.
    pub async fn until_closed(&mut self) -> (Vec<Event>, Option<u16>) {
        let mut events: Vec<Event> = self.events.drain(..).collect();
        loop {
            match io(WAIT, self.ws.next()).await {
                None => panic!("{}: not closed", self.user),
                Some(None) | Some(Some(Err(_))) => return (events, None),
                Some(Some(Ok(Message::Close(frame)))) => {
                    return (events, frame.map(|f| u16::from(f.code)));
                }
                Some(Some(Ok(Message::Text(t)))) => {
                    if let ServerMessage::Event(e) = serde_json::from_str(&t).expect("parse") {
                        events.push(e);
                    }
                }
                Some(Some(Ok(_))) => continue,
            }
        }
    }

    /// Whether the socket still answers a request (any reply will do).
    pub async fn still_answers(&mut self) -> bool {
        let id = 999_999;
        let text = format!(r#"{{"id":{id},"type":"list_audience"}}"#);
        self.send_text(text).await;
        self.reply_to(id).await.id == id
    }

    /// Drop the socket without a close handshake, as a lost network would.
    pub fn drop_connection(self) -> Option<String> {
        self.session
    }
}

pub fn ok_or_code(reply: Reply) -> Result<Value, ErrorCode> {
    if reply.ok {
        Ok(reply.result.unwrap_or(Value::Null))
    } else {
        Err(reply.error.expect("failed reply has an error").code)
    }
}

pub fn apply() -> Request {
    Request::RequestLink {
        user: None,
        seat: None,
        timeout_s: None,
        open_camera: None,
    }
}

pub fn invite(user: &str, open_camera: bool) -> Request {
    Request::RequestLink {
        user: Some(id(user)),
        seat: None,
        timeout_s: None,
        open_camera: Some(open_camera),
    }
}

pub fn respond(user: &str, accept: bool) -> Request {
    Request::RespondLink {
        user: id(user),
        accept,
    }
}

/// A room "r" with an anchor and the given viewers, all joined.
pub async fn room(url: &str, viewers: &[&str]) -> (Client, Vec<Client>) {
    let (anchor, _) = Client::join(url, "r", "anchor", Role::Anchor).await;
    let mut clients = Vec::new();
    for v in viewers {
        clients.push(Client::join(url, "r", v, Role::Audience).await.0);
    }
    (anchor, clients)
}

/// `member` applies and `anchor` accepts; both sides' events, and `others`'
/// `connected_users_updated`, are consumed.
pub async fn link(anchor: &mut Client, member: &mut Client, others: &mut [Client]) {
    member.ok(apply()).await;
    anchor.expect("link_request").await;
    anchor.ok(respond(&member.user.clone(), true)).await;
    member.expect("link_accepted").await;
    member.expect("connected_users_updated").await;
    anchor.expect("connected_users_updated").await;
    for o in others {
        o.expect("connected_users_updated").await;
    }
}

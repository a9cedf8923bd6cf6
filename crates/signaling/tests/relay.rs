//! The hub of a clustered node serving connections another node relays to it: each gets its
//! replies back through the relay, a connection that closed there is let go here, and no more
//! than `max_relayed` are served at once (the rest are refused and unbound). And the hub of an
//! edge node relaying a socket: a session's end that crosses a new join keeps the relaying.

mod common;

use common::Client;

use std::time::Duration;

use miclink_protocol::{Ident, Request, Role};
use miclink_signaling::relay::{Envelope, Relay, RelayOut};
use miclink_signaling::{Signaling, SignalingConfig};
use tokio::sync::mpsc;

fn join(user: &str) -> Request {
    Request::Join {
        room: Ident::new("r").expect("id"),
        user: Ident::new(user).expect("id"),
        role: Role::Audience,
        name: None,
        token: None,
    }
}

async fn relay(sig: &Signaling, conn: u64, request: Request) {
    sig.deliver(Envelope {
        from: "edge".into(),
        relay: Relay::Request {
            conn,
            n: 1,
            id: 1,
            request,
        },
    })
    .await;
}

/// The next message for the edge node about `conn`, within a second.
async fn next_for(out: &mut mpsc::Receiver<RelayOut>, conn: u64) -> Relay {
    tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match out.recv().await.expect("the hub runs") {
                RelayOut::Send { node, relay } if node == "edge" => {
                    let to = match &relay {
                        Relay::Text { conn, .. }
                        | Relay::Joined { conn, .. }
                        | Relay::Unbound { conn, .. }
                        | Relay::Close { conn, .. }
                        | Relay::Request { conn, .. }
                        | Relay::Closed { conn } => *conn,
                        _ => continue,
                    };
                    if to == conn {
                        return relay;
                    }
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("nothing for connection {conn}"))
}

#[tokio::test]
async fn relayed_connections_are_served_up_to_the_cap_and_the_rest_refused() {
    let config = SignalingConfig {
        max_relayed: 3,
        ..SignalingConfig::default()
    };
    let (sig, mut out) = Signaling::start_clustered(config, None, "origin".into());
    // An anchor first, so the viewers' joins succeed.
    relay(
        &sig,
        100,
        Request::Join {
            room: Ident::new("r").expect("id"),
            user: Ident::new("anchor").expect("id"),
            role: Role::Anchor,
            name: None,
            token: None,
        },
    )
    .await;
    match next_for(&mut out, 100).await {
        Relay::Joined { text, .. } => {
            // The session's token names the node that holds it.
            assert!(text.contains("\"session\":\"origin."), "{text}");
        }
        other => panic!("the anchor did not join: {other:?}"),
    }
    for conn in [1, 2] {
        relay(&sig, conn, join(&format!("v{conn}"))).await;
        assert!(matches!(
            next_for(&mut out, conn).await,
            Relay::Joined { .. }
        ));
    }
    // The fourth is one too many: refused, and the edge stops relaying it.
    relay(&sig, 3, join("v3")).await;
    refused(&mut out, 3, "unavailable").await;
    // One closes on the edge: its place is free again.
    sig.deliver(Envelope {
        from: "edge".into(),
        relay: Relay::Closed { conn: 1 },
    })
    .await;
    relay(&sig, 4, join("v4")).await;
    assert!(matches!(next_for(&mut out, 4).await, Relay::Joined { .. }));
    // The edge is lost: its connections go (their sessions wait out their grace), and the
    // places with them.
    sig.node_lost("edge".into()).await;
    for conn in [5, 6] {
        relay(&sig, conn, join(&format!("v{conn}"))).await;
        assert!(matches!(
            next_for(&mut out, conn).await,
            Relay::Joined { .. }
        ));
    }
}

#[tokio::test]
async fn a_relayed_join_that_fails_ends_the_relaying_and_frees_its_place() {
    let config = SignalingConfig {
        max_relayed: 2,
        ..SignalingConfig::default()
    };
    let (sig, mut out) = Signaling::start_clustered(config, None, "origin".into());
    let anchor = |user: &str| Request::Join {
        room: Ident::new("r").expect("id"),
        user: Ident::new(user).expect("id"),
        role: Role::Anchor,
        name: None,
        token: None,
    };
    relay(&sig, 1, anchor("anchor")).await;
    assert!(matches!(next_for(&mut out, 1).await, Relay::Joined { .. }));
    // A second anchor is refused: the error, then `Unbound` (the edge stops relaying it).
    relay(&sig, 2, anchor("other")).await;
    match next_for(&mut out, 2).await {
        Relay::Text { text, .. } => assert!(text.contains("\"ok\":false"), "{text}"),
        other => panic!("no error reply: {other:?}"),
    }
    assert!(matches!(next_for(&mut out, 2).await, Relay::Unbound { .. }));
    // Its place went with it: one more is served, and the one after is over the cap.
    relay(&sig, 3, join("v3")).await;
    assert!(matches!(next_for(&mut out, 3).await, Relay::Joined { .. }));
    relay(&sig, 4, join("v4")).await;
    refused(&mut out, 4, "unavailable").await;
    // A request that is neither a join nor a resume, for a connection not served here (its
    // session ended here before the edge heard), is answered as a socket without a session
    // is, and the relaying ends.
    relay(&sig, 9, Request::Leave).await;
    refused(&mut out, 9, "not_in_room").await;
}

/// The origin refuses `conn`'s request with `code`, then ends the relaying.
async fn refused(out: &mut mpsc::Receiver<RelayOut>, conn: u64, code: &str) {
    match next_for(out, conn).await {
        Relay::Text { text, .. } => {
            assert!(
                text.contains("\"ok\":false") && text.contains(code),
                "{text}"
            )
        }
        other => panic!("no error reply: {other:?}"),
    }
    assert!(matches!(
        next_for(out, conn).await,
        Relay::Unbound { upto: 1, .. }
    ));
}

/// The next thing the edge hub wants of the cluster, within a second.
async fn next_out(out: &mut mpsc::Receiver<RelayOut>) -> RelayOut {
    common::io(Duration::from_secs(1), out.recv())
        .await
        .expect("the edge asks in time")
        .expect("the hub runs")
}

/// The edge relays the client's next request to the origin: its number and id.
async fn relayed_request(out: &mut mpsc::Receiver<RelayOut>, conn: u64) -> (u64, u64) {
    match next_out(out).await {
        RelayOut::Send {
            node,
            relay: Relay::Request { conn: c, n, id, .. },
        } if node == "origin" && c == conn => (n, id),
        other => panic!("not a relayed request: {other:?}"),
    }
}

fn from_origin(relay: Relay) -> Envelope {
    Envelope {
        from: "origin".into(),
        relay,
    }
}

fn ok_text(id: u64) -> String {
    let result = serde_json::json!({ "session": "origin.t", "room_state": {} });
    serde_json::to_string(&miclink_protocol::Reply::ok(id, result)).expect("json")
}

#[tokio::test]
async fn an_edge_keeps_relaying_a_join_sent_before_the_end_of_the_last_session_reached_it() {
    let (sig, mut out) =
        Signaling::start_clustered(SignalingConfig::default(), None, "edge".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    let app = sig.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut client = Client::connect(&url, "v").await;
    let send = |id: u64, request: Request| {
        serde_json::to_string(&miclink_protocol::ClientMessage { id, request }).expect("json")
    };
    client.send_text(send(1, join("v"))).await;
    let conn = match next_out(&mut out).await {
        RelayOut::Resolve { conn, .. } => conn,
        other => panic!("the edge did not look the room up: {other:?}"),
    };
    sig.resolved(conn, Some("origin".into())).await;
    assert_eq!(relayed_request(&mut out, conn).await, (1, 1));
    let text = ok_text(1);
    let member = None;
    sig.deliver(from_origin(Relay::Joined { conn, text, member }))
        .await;
    assert!(client.reply_to(1).await.ok);
    // The member leaves; the origin replies, and its `Unbound` is slower than the client,
    // who joins again at once.
    client.send_text(send(2, Request::Leave)).await;
    assert_eq!(relayed_request(&mut out, conn).await, (2, 2));
    let text = ok_text(2);
    sig.deliver(from_origin(Relay::Text { conn, text })).await;
    assert!(client.reply_to(2).await.ok);
    client.send_text(send(3, join("v"))).await;
    assert_eq!(relayed_request(&mut out, conn).await, (3, 3));
    // The late `Unbound` follows request 2: the join after it is the origin's to answer.
    sig.deliver(from_origin(Relay::Unbound { conn, upto: 2 }))
        .await;
    let text = ok_text(3);
    let member = None;
    sig.deliver(from_origin(Relay::Joined { conn, text, member }))
        .await;
    assert!(
        client.reply_to(3).await.ok,
        "the second join's reply reached the socket"
    );
    // That session's own end does end the relaying: the origin hears `Closed`, and the next
    // join looks the room up again.
    sig.deliver(from_origin(Relay::Unbound { conn, upto: 3 }))
        .await;
    match next_out(&mut out).await {
        RelayOut::Send {
            node,
            relay: Relay::Closed { conn: c },
        } => assert!(node == "origin" && c == conn),
        other => panic!("the edge kept relaying: {other:?}"),
    }
    client.send_text(send(4, join("v"))).await;
    assert!(matches!(
        next_out(&mut out).await,
        RelayOut::Resolve { conn: c, .. } if c == conn
    ));
}

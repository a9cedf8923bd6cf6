//! The hub of a clustered node serving connections another node relays to it: each gets its
//! replies back through the relay, a connection that closed there is let go here, and no more
//! than `max_relayed` are served at once (the rest are told to close).

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
                        | Relay::Unbound { conn }
                        | Relay::Close { conn, .. }
                        | Relay::Request { conn, .. }
                        | Relay::Closed { conn } => *conn,
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
async fn relayed_connections_are_served_up_to_the_cap_and_the_rest_told_to_close() {
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
    // The fourth is one too many.
    relay(&sig, 3, join("v3")).await;
    assert!(matches!(next_for(&mut out, 3).await, Relay::Close { .. }));
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
    assert!(matches!(next_for(&mut out, 4).await, Relay::Close { .. }));
    // A request that is neither a join nor a resume, for a connection not served here (it
    // ended here before the edge heard), is told to close rather than served.
    relay(&sig, 9, Request::Leave).await;
    assert!(matches!(next_for(&mut out, 9).await, Relay::Close { .. }));
}

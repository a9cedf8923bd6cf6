//! Session descriptions from clients, as the media core takes them: a publish offer (WHIP and
//! `publish`), a WHEP offer, or an answer to a subscribe offer, of any text.
//!
//! The first byte picks the purpose; the rest is the description (lossily UTF-8). Invariants:
//! nothing panics; the SDP reader's verdict is the core's (what the reader refuses the core
//! refuses with `bad_sdp`, and never builds a connection for); an answer the core gives has no
//! more m-sections than the offer's bound, so no description grows the server's state past it.

use std::time::Instant;

use miclink_protocol::Ident;
use miclink_sfu::{
    CoreConfig, MediaChange, MediaCommand, MediaCore, MediaEvent, Output, ReplyTo, Sdp, SdpPurpose,
    SfuError,
};

use crate::{Broken, ensure};

fn id(s: &str) -> Ident {
    Ident::new(s).expect("a valid id")
}

/// The m-sections of an answer.
fn sections(sdp: &str) -> usize {
    sdp.lines().filter(|l| l.starts_with("m=")).count()
}

pub fn check(data: &[u8]) -> Result<(), Broken> {
    let Some((&pick, rest)) = data.split_first() else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(rest).into_owned();
    let purpose = match pick % 3 {
        0 => SdpPurpose::Publish,
        1 => SdpPurpose::Watch { seats: 10 },
        _ => SdpPurpose::Answer,
    };
    let verdict = Sdp::checked(&text, purpose);
    if matches!(purpose, SdpPurpose::Answer) {
        // Answers are applied to the server's own offers: the reader alone is what an answer
        // meets before rtc, and it must not panic.
        return Ok(());
    }
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let mut core = MediaCore::new(CoreConfig {
        loop_index: 0,
        loops: 1,
        public: vec![local],
        max_peers: 16,
        tcp_port: None,
    })
    .map_err(|e| format!("core: {e}"))?;
    let now = Instant::now();
    let (room, user) = (id("r"), id("u"));
    let reply = ReplyTo { conn: 1, id: 1 };
    let command = match purpose {
        SdpPurpose::Publish => {
            core.handle_command(
                now,
                MediaCommand::Seats(MediaChange::AllowPublish {
                    room: room.clone(),
                    user: user.clone(),
                    seat: 0,
                    audio: true,
                    video: true,
                    link: 1,
                }),
            );
            MediaCommand::Publish {
                room,
                user,
                offer: text.clone(),
                reply,
            }
        }
        _ => {
            core.handle_command(
                now,
                MediaCommand::Seats(MediaChange::Subscribe {
                    room: room.clone(),
                    user: user.clone(),
                }),
            );
            core.handle_command(
                now,
                MediaCommand::OwnOffers {
                    room: room.clone(),
                    user: user.clone(),
                },
            );
            MediaCommand::Watch {
                room,
                user,
                offer: text.clone(),
                reply,
            }
        }
    };
    core.handle_command(now, command);
    let mut answer = None;
    while let Some(out) = core.poll_output() {
        if let Output::Event(MediaEvent::PublishAnswer { result, .. }) = out {
            answer = Some(result);
        }
    }
    let answer = answer.ok_or("the offer got no answer at all")?;
    match (&verdict, &answer) {
        (Err(_), Ok(_)) => return Err("the core answered an offer the reader refused".into()),
        (Err(_), Err(SfuError::BadSdp(_))) => {
            ensure!(
                core.peers() == 0,
                "a refused offer left {} connections",
                core.peers()
            );
        }
        (Err(_), Err(e)) => return Err(format!("refused, but not as bad_sdp: {e}")),
        (Ok(_), Ok(sdp)) => {
            let bound = match purpose {
                SdpPurpose::Publish => 3,
                _ => 21,
            };
            ensure!(
                sections(sdp) <= bound,
                "an answer of {} m-sections to a bounded offer",
                sections(sdp)
            );
            ensure!(
                core.peers() <= 1,
                "{} connections for one offer",
                core.peers()
            );
        }
        (Ok(_), Err(_)) => {
            // rtc refused what passed the bounds (not every bounded text is a valid offer).
            ensure!(core.peers() == 0, "a failed offer left a connection");
        }
    }
    Ok(())
}

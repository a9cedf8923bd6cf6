//! `miclink-load encode`: a WHIP encoder that sends real media. It posts a webrtc-rs offer to a
//! WHIP endpoint, as any encoder does, then sends a VP8 file (IVF, looped with its timing) and
//! Opus silence until stopped, and `DELETE`s its resource at the end. What it sends decodes in
//! a browser: the demo's viewers and any WHEP player show the file's picture.
//!
//! Two more ways to go on a seat, for tests of what several seats carry: `--accept-links` keeps
//! the anchor's place on a socket as well (the demo's "Anchor with an encoder"), accepting every
//! link request; `--guest USER` joins the room on a socket as USER, links (an anchor that
//! accepts is needed), and publishes the same media there with `publish`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rtc::media::io::ivf_reader::IVFReader;
use rtc::rtp::codec::vp8::Vp8Payloader;
use rtc::rtp::header::Header;
use rtc::rtp::packetizer::Payloader;
use tokio::time::{Instant, MissedTickBehavior};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;

use crate::client;
use crate::peer::{Publisher, StreamSpec};
use crate::recv::Recv;
use crate::util::check_loopback;
use miclink_protocol::{Request, Role};

/// What `miclink-load encode` takes.
#[derive(clap::Args)]
pub struct Options {
    /// The WHIP endpoint (loopback only), e.g. http://127.0.0.1:8080/whip/myroom.
    #[arg(long)]
    pub whip: String,
    /// The bearer token, when the server checks them (a JWT of role anchor for the room).
    #[arg(long)]
    pub token: Option<String>,
    /// The VP8 video to send, as an IVF file; it loops.
    #[arg(long)]
    pub ivf: std::path::PathBuf,
    /// Seconds to send for; 0 sends until interrupted.
    #[arg(long, default_value_t = 0)]
    pub duration_s: u64,
    /// Also hold the anchor's place on a WebSocket (as the demo's "Anchor with an encoder"
    /// does) and accept every link request, so members can link beside the file.
    #[arg(long, conflicts_with = "guest")]
    pub accept_links: bool,
    /// Publish as a linked member USER instead of the anchor: join the room on a WebSocket,
    /// apply to link (the anchor must accept), then publish the file with `publish`.
    #[arg(long)]
    pub guest: Option<String>,
}

/// The largest RTP payload: room for the headers and SRTP within a 1,280-byte datagram.
const MTU: usize = 1_100;

/// An Opus frame of 20 ms of silence (a CELT-only TOC byte and an empty frame), as encoders send
/// while muted.
const OPUS_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];

/// One frame of the file: its payload and when it is shown, in 90 kHz ticks from the start.
struct Frame {
    data: Bytes,
    at: u64,
}

/// Read every frame of the IVF file at `path`; and how long the file lasts, in 90 kHz ticks.
fn read_ivf(path: &std::path::Path) -> anyhow::Result<(Vec<Frame>, u64)> {
    let file = std::fs::read(path)?;
    let (mut reader, header) = IVFReader::new(std::io::Cursor::new(file))?;
    anyhow::ensure!(
        &header.four_cc == b"VP80",
        "{}: not VP8 ({:?})",
        path.display(),
        String::from_utf8_lossy(&header.four_cc)
    );
    anyhow::ensure!(
        header.timebase_denominator > 0 && header.timebase_numerator > 0,
        "{}: no frame rate",
        path.display()
    );
    // A frame's timestamp counts timebase units of numerator/denominator seconds.
    let ticks = |t: u64| {
        t * 90_000 * u64::from(header.timebase_numerator) / u64::from(header.timebase_denominator)
    };
    let mut frames = Vec::new();
    while let Ok((data, h)) = reader.parse_next_frame() {
        frames.push(Frame {
            data: data.freeze(),
            at: ticks(h.timestamp),
        });
    }
    anyhow::ensure!(!frames.is_empty(), "{}: no frames", path.display());
    // The loop's length: the last frame is shown as long as the one before it.
    let step = match frames.as_slice() {
        [.., a, b] => b.at.saturating_sub(a.at).max(1),
        _ => 3_000,
    };
    let length = frames.last().map_or(0, |f| f.at) + step;
    Ok((frames, length))
}

/// The signaling socket and the room of a WHIP endpoint `http://host:port/whip/<room>`.
fn socket_of(whip: &str) -> anyhow::Result<(String, String)> {
    let url = reqwest::Url::parse(whip)?;
    let room = url
        .path()
        .strip_prefix("/whip/")
        .filter(|r| !r.is_empty() && !r.contains('/'))
        .ok_or_else(|| anyhow::anyhow!("{whip} is not a /whip/<room> URL"))?
        .to_owned();
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(80);
    Ok((format!("ws://{host}:{port}/ws"), room))
}

pub async fn encode(o: Options) -> anyhow::Result<()> {
    check_loopback(&o.whip)?;
    let (frames, length) = read_ivf(&o.ivf)?;
    let streams = [StreamSpec::audio(48_000), StreamSpec::video(1_000_000, 30)];
    let (publisher, offer) = Publisher::offer("encoder", &streams).await?;
    let http = reqwest::Client::new();
    let (socket, room) = socket_of(&o.whip)?;
    let recv = Recv::new(std::time::Instant::now());
    // What holds a seat on a socket for as long as this runs (a guest, or the anchor's
    // controls), and the WHIP resource when the encoder posted one.
    let mut member = None;
    let mut resource = None;
    let answer = if let Some(user) = &o.guest {
        let mut m = client::Member::join(
            &socket,
            &room,
            user,
            Role::Audience,
            recv,
            client::Options::default(),
        )
        .await?;
        m.call(Request::RequestLink {
            user: None,
            seat: None,
            timeout_s: Some(60),
            open_camera: Some(true),
        })
        .await?;
        m.wait_event("link_accepted", Duration::from_secs(60))
            .await?;
        let result = m.call(Request::Publish { sdp: offer }).await?;
        member = Some(m);
        result
            .get("sdp")
            .and_then(|s| s.as_str())
            .ok_or_else(|| anyhow::anyhow!("publish result without sdp"))?
            .to_owned()
    } else {
        let mut bearer = o.token.clone();
        if o.accept_links {
            // Without tokens, a bearer naming the anchor's user attaches the encoder to the
            // anchor's session on the socket.
            let user = format!("encoder-{:04x}", rand::random::<u16>());
            let options = client::Options {
                auto_accept: true,
                token: o.token.clone(),
                ..client::Options::default()
            };
            let m =
                client::Member::join(&socket, &room, &user, Role::Anchor, recv, options).await?;
            bearer = Some(o.token.clone().unwrap_or(user));
            member = Some(m);
        }
        let mut post = http
            .post(&o.whip)
            .header("Content-Type", "application/sdp")
            .body(offer);
        if let Some(t) = &bearer {
            post = post.bearer_auth(t);
        }
        let res = post.send().await?;
        let status = res.status();
        let location = res
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let answer = res.text().await?;
        anyhow::ensure!(status.as_u16() == 201, "POST answered {status}: {answer}");
        let location = location.ok_or_else(|| anyhow::anyhow!("201 without a Location"))?;
        resource = Some(reqwest::Url::parse(&o.whip)?.join(&location)?);
        answer
    };
    let described = miclink_sfu::Sdp::parse(&answer)?;
    let opus = described
        .payload_type("audio/opus", "")
        .ok_or_else(|| anyhow::anyhow!("Opus not in the answer"))?;
    let vp8 = described
        .payload_type("video/VP8", "")
        .ok_or_else(|| anyhow::anyhow!("VP8 not in the answer"))?;
    let tracks = publisher.accept(answer).await?;
    let [(audio, audio_ssrc), (video, video_ssrc)] = <[_; 2]>::try_from(tracks)
        .map_err(|_| anyhow::anyhow!("the publisher has not two tracks"))?;
    match (&resource, &o.guest) {
        (Some(resource), _) => println!("live: {resource}"),
        (None, guest) => println!(
            "live: {} on a seat of {room}",
            guest.as_deref().unwrap_or("")
        ),
    }

    let started = Instant::now();
    let audio_task = tokio::spawn(send_silence(audio, opus, audio_ssrc));
    let video_task = tokio::spawn(send_file(video, vp8, video_ssrc, frames, length));
    if o.duration_s > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(o.duration_s)) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    } else {
        tokio::signal::ctrl_c().await?;
    }
    audio_task.abort();
    video_task.abort();
    let sent = started.elapsed().as_secs_f64();
    match resource {
        Some(resource) => {
            let end = http.delete(resource.clone()).send().await?;
            println!("sent for {sent:.1} s; DELETE {resource}: {}", end.status());
        }
        None => println!("sent for {sent:.1} s"),
    }
    if let Some(m) = member {
        m.close().await;
    }
    publisher.peer.close().await;
    Ok(())
}

/// 20 ms of Opus silence every 20 ms.
async fn send_silence(track: Arc<TrackLocalStaticRTP>, pt: u8, ssrc: u32) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut seq, mut ts) = (rand::random::<u16>(), rand::random::<u32>());
    loop {
        tick.tick().await;
        let packet = rtc::rtp::Packet {
            header: Header {
                version: 2,
                payload_type: pt,
                sequence_number: seq,
                timestamp: ts,
                ssrc,
                ..Default::default()
            },
            payload: Bytes::from_static(&OPUS_SILENCE),
        };
        if track.write_rtp(packet).await.is_err() {
            return;
        }
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(960);
    }
}

/// The file's frames at their times, looped, one RTP packet per payload the VP8 payloader
/// makes, the frame's last one marked.
async fn send_file(
    track: Arc<TrackLocalStaticRTP>,
    pt: u8,
    ssrc: u32,
    frames: Vec<Frame>,
    length: u64,
) {
    let mut payloader = Vp8Payloader::default();
    // Picture ids let a receiver tell a frame lost within a burst; browsers expect them.
    payloader.enable_picture_id = true;
    let (mut seq, base) = (rand::random::<u16>(), rand::random::<u32>());
    let start = Instant::now();
    for round in 0u64.. {
        for frame in &frames {
            let at = round * length + frame.at;
            tokio::time::sleep_until(start + Duration::from_micros(at * 1_000_000 / 90_000)).await;
            let Ok(payloads) = payloader.payload(MTU, &frame.data) else {
                continue;
            };
            let last = payloads.len().saturating_sub(1);
            for (i, payload) in payloads.into_iter().enumerate() {
                let packet = rtc::rtp::Packet {
                    header: Header {
                        version: 2,
                        marker: i == last,
                        payload_type: pt,
                        sequence_number: seq,
                        // RTP time wraps; the file's time only grows.
                        timestamp: base.wrapping_add(at as u32),
                        ssrc,
                        ..Default::default()
                    },
                    payload,
                };
                if track.write_rtp(packet).await.is_err() {
                    return;
                }
                seq = seq.wrapping_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-frame IVF file: a keyframe and an inter frame, 1/30 s apart.
    fn ivf() -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(b"DKIF");
        f.extend_from_slice(&0u16.to_le_bytes());
        f.extend_from_slice(&32u16.to_le_bytes());
        f.extend_from_slice(b"VP80");
        f.extend_from_slice(&176u16.to_le_bytes());
        f.extend_from_slice(&144u16.to_le_bytes());
        f.extend_from_slice(&30u32.to_le_bytes());
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&2u32.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        for (ts, frame) in [(0u64, vec![0x10u8; 40]), (1, vec![0x11; 20])] {
            f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            f.extend_from_slice(&ts.to_le_bytes());
            f.extend_from_slice(&frame);
        }
        f
    }

    #[test]
    fn an_ivf_file_is_read_with_its_timing_in_rtp_ticks() {
        let path = std::env::temp_dir().join(format!("encoder-{}.ivf", std::process::id()));
        std::fs::write(&path, ivf()).expect("write");
        let (frames, length) = read_ivf(&path).expect("read");
        std::fs::remove_file(&path).ok();
        assert_eq!(frames.len(), 2);
        assert_eq!((frames[0].at, frames[1].at), (0, 3_000));
        assert_eq!(frames[0].data.len(), 40);
        assert_eq!(length, 6_000);
    }

    #[test]
    fn a_file_that_is_not_vp8_is_refused() {
        let path = std::env::temp_dir().join(format!("encoder-vp9-{}.ivf", std::process::id()));
        let mut f = ivf();
        f[8..12].copy_from_slice(b"VP90");
        std::fs::write(&path, f).expect("write");
        let e = read_ivf(&path).err().expect("refused");
        std::fs::remove_file(&path).ok();
        assert!(e.to_string().contains("not VP8"), "{e}");
    }
}

//! `miclink-load whip`: how soon a WHIP encoder's media reaches a viewer already watching.
//!
//! Each run is a room of its own: its anchor is in the room on a socket (publishing nothing, as
//! the demo's "Anchor with an encoder"), one viewer watches, and then a webrtc-rs encoder posts
//! its offer to `/whip/{room}` with a bearer naming the anchor (a server without a JWT secret).
//! Measured from the moment the encoder starts (its offer is made, then posted): the `201` with
//! the answer, and the first video packet at the viewer (the server forwards a new stream from
//! a keyframe, so that is the first keyframe's first packet). The encoder's `DELETE` ends the
//! run's room. `--socket` measures the same encoder publishing through the anchor's socket
//! (`publish`) instead, for comparison.

use std::sync::Arc;
use std::time::{Duration, Instant};

use miclink_protocol::Role;
use serde::Serialize;
use tokio::sync::Notify;

use crate::client::{self, Member};
use crate::marker::Kind;
use crate::peer::{Publisher, StreamSpec};
use crate::recv::Recv;
use crate::util::check_loopback;

/// What `miclink-load whip` takes.
#[derive(clap::Args)]
pub struct Options {
    /// The server's HTTP base URL (loopback only; the server checks no tokens).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Encoders started, one after the other.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Publish through the anchor's WebSocket (`publish`) instead of WHIP: the same encoder
    /// and viewer, for comparison.
    #[arg(long)]
    pub socket: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Figures {
    via: &'static str,
    runs: usize,
    answer_ms: Summary,
    first_video_ms: Summary,
}

#[derive(Serialize)]
struct Summary {
    median: f64,
    p90: f64,
    max: f64,
}

fn summary(mut v: Vec<f64>) -> Summary {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Summary {
        median: at(0.5),
        p90: at(0.9),
        max: at(1.0),
    }
}

pub async fn whip(o: Options) -> anyhow::Result<()> {
    check_loopback(&o.url)?;
    anyhow::ensure!(o.runs > 0, "--runs must be at least 1");
    let base = o.url.trim_end_matches('/').to_owned();
    let ws = format!("{}/ws", base.replacen("http", "ws", 1));
    let http = reqwest::Client::new();
    let (mut answers, mut firsts) = (Vec::new(), Vec::new());
    for run in 0..o.runs {
        let room = format!("whip-{}-{run}", std::process::id());
        let anchor_id = format!("anchor{run}");
        let started = Instant::now();
        let mut anchor = Member::join(
            &ws,
            &room,
            &anchor_id,
            Role::Anchor,
            Recv::new(started),
            client::Options::default(),
        )
        .await?;
        let recv = Recv::logging(started);
        let viewer = Member::join(
            &ws,
            &room,
            "viewer",
            Role::Audience,
            recv.clone(),
            client::Options::default(),
        )
        .await?;
        let streams = [
            StreamSpec::audio(48_000),
            StreamSpec {
                keyframe_every: 60,
                ..StreamSpec::video(1_500_000, 30)
            },
        ];
        let stop = Arc::new(Notify::new());
        let t0 = Instant::now();
        let (encoder, location) = if o.socket {
            anchor.publish(&streams, stop.clone(), None).await?;
            answers.push(t0.elapsed().as_secs_f64() * 1e3);
            (None, None)
        } else {
            let (publisher, offer) = Publisher::offer(&anchor_id, &streams).await?;
            let res = http
                .post(format!("{base}/whip/{room}"))
                .header("Content-Type", "application/sdp")
                .bearer_auth(&anchor_id)
                .body(offer)
                .send()
                .await?;
            anyhow::ensure!(
                res.status().as_u16() == 201,
                "POST answered {}",
                res.status()
            );
            let location = res
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("no Location"))?;
            let answer = res.text().await?;
            answers.push(t0.elapsed().as_secs_f64() * 1e3);
            publisher.start(answer, stop.clone()).await?;
            (Some(publisher), Some(location))
        };
        let key = (anchor_id.clone(), Kind::Video);
        loop {
            if recv
                .arrivals()
                .get(&key)
                .is_some_and(|v| !v.seqs.is_empty())
            {
                break;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "run {run}: no video at the viewer after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        firsts.push(t0.elapsed().as_secs_f64() * 1e3);
        if let Some(location) = location {
            http.delete(format!("{base}{location}")).send().await?;
        }
        stop.notify_waiters();
        if let Some(encoder) = encoder {
            encoder.peer.close().await;
        }
        viewer.close().await;
        anchor.close().await;
    }
    let figures = Figures {
        via: if o.socket { "socket" } else { "whip" },
        runs: o.runs,
        answer_ms: summary(answers),
        first_video_ms: summary(firsts),
    };
    if o.json {
        println!("{}", serde_json::to_string(&figures)?);
    } else {
        println!(
            "{} publish, {} runs       median      p90      max",
            figures.via, figures.runs
        );
        for (what, s) in [
            ("the answer", &figures.answer_ms),
            ("first video at a viewer", &figures.first_video_ms),
        ] {
            println!(
                "{what:<24} {:>8.1} ms {:>6.1} ms {:>6.1} ms",
                s.median, s.p90, s.max
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::summary;

    #[test]
    fn medians_and_tails() {
        let s = summary(vec![5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.median, s.p90, s.max), (3.0, 5.0, 5.0));
        let one = summary(vec![7.0]);
        assert_eq!((one.median, one.p90, one.max), (7.0, 7.0, 7.0));
    }
}

//! Scenario `speakers`: a scripted conversation in one room, to measure active speaker detection
//! as listeners see it.
//!
//! The anchor and linked members publish audio whose RFC 6464 level follows a script: turns of
//! one talker at a time (2 to 5 s, with short pauses between words), silences between turns, and
//! in the background everyone's room noise just under the voice threshold and random clicks (one
//! loud packet). Viewers record every `active_speakers` event with its arrival time. Reported:
//! the delay from a talker starting to the first event naming them (p50, p90, p99, max), how many
//! turns were never named, the delay until a talker who stopped is dropped, and false switches:
//! events naming someone who is not talking (nor just finished), or dropping a talker mid-turn.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use miclink_protocol::{Event, Role};
use tokio::sync::{Mutex, Notify};

use crate::client::{self, Member};
use crate::peer::{QUIET_DBOV, StreamSpec};
use crate::recv::Recv;
use crate::util::check_loopback;

/// What `miclink-load speakers` takes.
#[derive(clap::Args)]
pub struct Options {
    /// The server's WebSocket URL (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Publishers taking turns: the anchor and `talkers - 1` linked members.
    #[arg(long, default_value_t = 4)]
    pub talkers: usize,
    /// Viewers recording the events.
    #[arg(long, default_value_t = 5)]
    pub viewers: usize,
    /// Turns of the conversation (each 2 to 5 s after a 0.3 to 0.9 s silence).
    #[arg(long, default_value_t = 40)]
    pub turns: usize,
    /// Seed of the script; the same seed replays the same conversation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A harder room: noise straddling the voice threshold, clicks of one to three packets
    /// about every 300 ms per talker, and short backchannels ("mm-hm", 150 to 250 ms) from
    /// someone else in a third of the turns.
    #[arg(long)]
    pub harsh: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// How long after a turn ends its talker may still be listed without it counting as false.
const RELEASE_ALLOWANCE: Duration = Duration::from_millis(1500);

/// One script step is one audio packet time.
const STEP: Duration = Duration::from_millis(20);

/// A small deterministic generator (xorshift64*), so a seed replays the same conversation.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// One turn as scripted: who talked, from when to when.
#[derive(Debug, Clone)]
struct Turn {
    user: String,
    start: Instant,
    end: Instant,
}

/// What one viewer saw: each `active_speakers` list and when it arrived.
type Seen = Arc<Mutex<Vec<(Instant, Vec<String>)>>>;

pub async fn speakers(opts: Options) -> anyhow::Result<()> {
    check_loopback(&opts.url)?;
    anyhow::ensure!(
        opts.talkers >= 2,
        "a conversation needs at least two talkers"
    );
    let room = format!("speakers-{}", std::process::id());
    let stop = Arc::new(Notify::new());
    let mut talkers = Vec::new();
    let mut levels = Vec::new();
    for t in 0..opts.talkers {
        let user = format!("t{t}");
        let role = if t == 0 { Role::Anchor } else { Role::Audience };
        let options = client::Options {
            auto_accept: t == 0,
            ..Default::default()
        };
        let mut m = Member::join(
            &opts.url,
            &room,
            &user,
            role,
            Recv::new(Instant::now()),
            options,
        )
        .await
        .with_context(|| format!("{user} joins"))?;
        if t > 0 {
            m.apply(false).await?;
        }
        let level = Arc::new(AtomicU8::new(QUIET_DBOV));
        let audio = StreamSpec {
            level: level.clone(),
            ..StreamSpec::audio(48_000)
        };
        m.publish(&[audio], stop.clone(), None).await?;
        talkers.push(m);
        levels.push((user, level));
    }
    let mut viewers = Vec::new();
    let mut seen: Vec<Seen> = Vec::new();
    for v in 0..opts.viewers {
        let user = format!("v{v}");
        let mut m = Member::join(
            &opts.url,
            &room,
            &user,
            Role::Audience,
            Recv::new(Instant::now()),
            client::Options::default(),
        )
        .await?;
        let mut events = std::mem::replace(&mut m.events, tokio::sync::mpsc::unbounded_channel().1);
        let log: Seen = Default::default();
        let into = log.clone();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                if let Event::ActiveSpeakers { speakers } = e {
                    let names = speakers.into_iter().map(|s| s.user.to_string()).collect();
                    into.lock().await.push((Instant::now(), names));
                }
            }
        });
        viewers.push(m);
        seen.push(log);
    }
    // Let every subscribe connection come up before the first turn.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    let turns = converse(&levels, opts.turns, opts.seed, opts.harsh).await;
    // Let the last release arrive.
    tokio::time::sleep(RELEASE_ALLOWANCE + Duration::from_millis(500)).await;
    let elapsed = started.elapsed();
    stop.notify_waiters();
    let mut report = Report::default();
    for log in &seen {
        report.add(&turns, &log.lock().await);
    }
    for m in viewers.into_iter().chain(talkers) {
        m.close().await;
    }
    report.print(&opts, elapsed);
    Ok(())
}

/// Drive every talker's level through `turns` turns; returns the script as it ran.
async fn converse(
    levels: &[(String, Arc<AtomicU8>)],
    turns: usize,
    seed: u64,
    harsh: bool,
) -> Vec<Turn> {
    // (noise from, noise to, one click in how many packets, longest click in packets)
    let (noise_lo, noise_hi, click_every, click_len) = if harsh {
        (46, 60, 15, 3)
    } else {
        (54, 68, 100, 1)
    };
    let mut clicking = vec![0u64; levels.len()];
    let mut dice = Dice(seed.max(1));
    let mut script = Vec::new();
    let mut tick = tokio::time::interval(STEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last: Option<usize> = None;
    for _ in 0..turns {
        // Who talks next: anyone but the last talker.
        let mut who = dice.range(0, levels.len() as u64 - 1) as usize;
        if Some(who) == last {
            who = (who + 1) % levels.len();
        }
        last = Some(who);
        let pause = dice.range(15, 45); // steps of silence before the turn
        let length = dice.range(100, 250); // steps of the turn
        let mut word_left = dice.range(20, 45);
        let mut gap_left = 0;
        let mut start = None;
        // A backchannel from someone else: (who, first step, length in steps).
        let backchannel = (harsh && dice.range(0, 2) == 0).then(|| {
            let other = (who + 1 + dice.range(0, levels.len() as u64 - 2) as usize) % levels.len();
            (
                other,
                pause + dice.range(20, length - 20),
                dice.range(8, 12),
            )
        });
        for step in 0..pause + length {
            tick.tick().await;
            let talking = step >= pause;
            if talking && start.is_none() {
                start = Some(Instant::now());
            }
            for (i, (_, level)) in levels.iter().enumerate() {
                // Room noise around the threshold, and a click now and then.
                let mut dbov = dice.range(noise_lo, noise_hi) as u8;
                if clicking[i] == 0 && dice.range(0, click_every - 1) == 0 {
                    clicking[i] = dice.range(1, click_len);
                }
                if clicking[i] > 0 {
                    clicking[i] -= 1;
                    dbov = dice.range(5, 20) as u8;
                }
                if let Some((other, from, len)) = backchannel
                    && i == other
                    && (from..from + len).contains(&step)
                {
                    dbov = dice.range(28, 40) as u8;
                }
                if talking && i == who {
                    if gap_left > 0 {
                        gap_left -= 1;
                    } else {
                        dbov = dice.range(22, 38) as u8;
                        word_left -= 1;
                        if word_left == 0 {
                            // A pause between words: 80 to 200 ms.
                            gap_left = dice.range(4, 10);
                            word_left = dice.range(20, 45);
                        }
                    }
                }
                level.store(dbov, Ordering::Relaxed);
            }
        }
        script.push(Turn {
            user: levels[who].0.clone(),
            start: start.unwrap_or_else(Instant::now),
            end: Instant::now(),
        });
    }
    for (_, level) in levels {
        level.store(QUIET_DBOV, Ordering::Relaxed);
    }
    script
}

#[derive(Default)]
struct Report {
    detect_ms: Vec<u64>,
    release_ms: Vec<u64>,
    missed: usize,
    false_switches: usize,
    events: usize,
    observers: usize,
}

impl Report {
    fn add(&mut self, turns: &[Turn], seen: &[(Instant, Vec<String>)]) {
        self.observers += 1;
        self.events += seen.len();
        for (k, t) in turns.iter().enumerate() {
            let window_end = turns
                .get(k + 1)
                .map_or(t.end + RELEASE_ALLOWANCE, |n| n.end);
            match seen
                .iter()
                .find(|(at, list)| *at >= t.start && *at < window_end && list.contains(&t.user))
            {
                Some((at, _)) => self.detect_ms.push((*at - t.start).as_millis() as u64),
                None => self.missed += 1,
            }
            if let Some((at, _)) = seen
                .iter()
                .find(|(at, list)| *at >= t.end && !list.contains(&t.user))
            {
                self.release_ms.push((*at - t.end).as_millis() as u64);
            }
        }
        // False: a list naming someone outside their turn (plus the release allowance), or a
        // list without the talker mid-turn after they had been named.
        let talking = |user: &str, at: Instant| {
            turns
                .iter()
                .any(|t| t.user == user && at >= t.start && at <= t.end + RELEASE_ALLOWANCE)
        };
        let mut named_in_turn = None;
        for (at, list) in seen {
            let wrong = list.iter().any(|u| !talking(u, *at));
            let current = turns.iter().position(|t| *at >= t.start && *at <= t.end);
            let dropped = match current {
                Some(k) if list.contains(&turns[k].user) => {
                    named_in_turn = Some(k);
                    false
                }
                Some(k) => named_in_turn == Some(k),
                None => false,
            };
            if wrong || dropped {
                self.false_switches += 1;
            }
        }
    }

    fn print(&self, opts: &Options, elapsed: Duration) {
        let pct = |v: &[u64], p: f64| -> Option<u64> {
            let mut v = v.to_vec();
            v.sort_unstable();
            (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * p).round() as usize])
        };
        let minutes = elapsed.as_secs_f64() / 60.0 * self.observers.max(1) as f64;
        let out = serde_json::json!({
            "scenario": "speakers",
            "talkers": opts.talkers,
            "viewers": opts.viewers,
            "turns": opts.turns,
            "seed": opts.seed,
            "harsh": opts.harsh,
            "seconds": elapsed.as_secs_f64().round(),
            "detect_ms": {
                "p50": pct(&self.detect_ms, 0.5),
                "p90": pct(&self.detect_ms, 0.9),
                "p99": pct(&self.detect_ms, 0.99),
                "max": pct(&self.detect_ms, 1.0),
                "samples": self.detect_ms.len(),
            },
            "missed_turns": self.missed,
            "release_ms": { "p50": pct(&self.release_ms, 0.5), "p99": pct(&self.release_ms, 0.99) },
            "events": self.events,
            "false_switches": self.false_switches,
            "false_switches_per_observer_minute": (self.false_switches as f64 / minutes * 100.0).round() / 100.0,
        });
        if opts.json {
            println!("{out}");
        } else {
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
    }
}

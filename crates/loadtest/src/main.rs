//! `miclink-load`: load generator for a media server on this machine (loopback only).
//!
//! Media scenarios (`cohost`, `audio`, `rooms`) run simulated publishers and viewers on real
//! WebRTC connections against miclink (its WebSocket protocol) or Janus (videoroom over HTTP),
//! and report what really arrived: loss, one-way delay, join-to-first-packet, and the server's
//! CPU per delivered packet and memory from /proc; `--soak` adds a row per minute. `idle`
//! measures signaling alone.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use miclink_loadtest::idle::idle;
use miclink_loadtest::peer::StreamSpec;
use miclink_loadtest::run::{self, RoomPlan, Target};

#[derive(Parser)]
#[command(name = "miclink-load", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

/// What every media scenario takes.
#[derive(Args, Clone)]
struct Common {
    /// The server to load.
    #[arg(long, value_enum, default_value = "miclink")]
    target: Target,
    /// miclink: its WebSocket URL, or the URLs of several nodes of a cluster, comma-separated
    /// (publishers join on the first, viewers take turns); janus: its HTTP API URL. Loopback
    /// only.
    #[arg(long, value_delimiter = ',')]
    url: Vec<String>,
    /// Viewers joining per second.
    #[arg(long, default_value_t = 10.0)]
    ramp: f64,
    /// Seconds between the last join and the measurement.
    #[arg(long, default_value_t = 5)]
    warmup_s: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    /// Server process to read CPU time and memory from (/proc/<pid>); several (a cluster's
    /// nodes), comma-separated, are summed and reported each.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// A long run: report each minute of the window on its own (delivered, lost, duplicates,
    /// the longest silence of any stream, server memory and CPU).
    #[arg(long)]
    soak: bool,
    /// miclink: every member reaches the server only through the TURN servers of its join
    /// reply (the server needs `--ice-server turn:...` and `--turn-secret`, and the TURN server
    /// must run).
    #[arg(long)]
    relay: bool,
    /// miclink: every member's connections use ICE-TCP only (no UDP socket), as clients behind
    /// a firewall that blocks UDP.
    #[arg(long, conflicts_with = "relay")]
    tcp: bool,
    /// Publishers send their video in three simulcast layers (rids q, h, f at 10%, 30% and
    /// 100% of its rate).
    #[arg(long)]
    simulcast: bool,
    /// Viewers' downlinks: "mixed" puts a third behind 1 Mbit/s with 2% loss and a third
    /// behind 3 Mbit/s (shaping proxies on loopback); video keyframes are then four frames'
    /// size, as encoders make them.
    #[arg(long, value_enum, default_value = "free")]
    network: run::Network,
}

#[derive(Subcommand)]
enum Scenario {
    /// One room: the anchor at 1.5 Mbit/s and 9 linked members at 500 kbit/s, audio for all,
    /// V viewers.
    Cohost {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10)]
        viewers: usize,
    },
    /// One room: 10 audio-only publishers (the anchor and 9 linked members), V viewers.
    Audio {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        viewers: usize,
    },
    /// R rooms, each an anchor (1.5 Mbit/s), one linked guest (500 kbit/s) and 4 viewers.
    Rooms {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10)]
        rooms: usize,
    },
    /// A scripted conversation in one room: how soon and how reliably `active_speakers` names
    /// whoever talks (delay from a talker starting, talkers never named, false switches).
    Speakers(miclink_loadtest::speakers::Options),
    /// WHIP: from an encoder's POST to the first video packet at a viewer already watching
    /// (each run a room whose anchor is on a socket; the server must check no tokens).
    Whip(miclink_loadtest::whip::Options),
    /// A WHIP encoder sending real media: a VP8 file (IVF, looped) and Opus silence, until
    /// stopped; its DELETE ends the live.
    Encode(miclink_loadtest::encoder::Options),
    /// Webhooks: R rooms and viewers coming and going, this tool the receiver; events
    /// delivered per second, their delay, and every one checked (signed, once, in order).
    Hooks(miclink_loadtest::hooks::Options),
    /// N idle viewers in one room: server memory and CPU per connected member.
    Idle {
        /// The server's WebSocket URL (loopback only).
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        /// Viewers to connect (the anchor comes on top).
        #[arg(long, default_value_t = 10_000)]
        members: usize,
        /// Joins in flight at once.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Seconds to hold everyone connected before measuring.
        #[arg(long, default_value_t = 5)]
        hold_s: u64,
        /// Server process to read memory and CPU from (/proc/<pid>).
        #[arg(long)]
        server_pid: Option<u32>,
        /// Room id to use.
        #[arg(long, default_value = "idle")]
        room: String,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Each simulated member holds a socket.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (scenario, common, rooms) = match cli.scenario {
        Scenario::Cohost { common, viewers } => {
            let plan = cohost(viewers, &common);
            ("cohost", common, plan)
        }
        Scenario::Audio { common, viewers } => ("audio", common, audio(viewers)),
        Scenario::Rooms { common, rooms } => ("rooms", common, many_rooms(rooms)),
        Scenario::Speakers(options) => {
            return rt.block_on(miclink_loadtest::speakers::speakers(options));
        }
        Scenario::Whip(options) => {
            return rt.block_on(miclink_loadtest::whip::whip(options));
        }
        Scenario::Encode(options) => {
            return rt.block_on(miclink_loadtest::encoder::encode(options));
        }
        Scenario::Hooks(options) => {
            return rt.block_on(miclink_loadtest::hooks::hooks(options));
        }
        Scenario::Idle {
            url,
            members,
            concurrency,
            hold_s,
            server_pid,
            room,
            json,
        } => {
            return rt.block_on(idle(
                url,
                members,
                concurrency,
                Duration::from_secs(hold_s),
                server_pid,
                room,
                json,
            ));
        }
    };
    let mut urls = common.url;
    if urls.is_empty() {
        urls.push(
            match common.target {
                Target::Miclink => "ws://127.0.0.1:8080/ws",
                Target::Janus => "http://127.0.0.1:8088/janus",
            }
            .to_owned(),
        );
    }
    let report = rt.block_on(run::run(run::Options {
        scenario,
        target: common.target,
        urls,
        rooms,
        ramp_per_s: common.ramp,
        warmup: Duration::from_secs(common.warmup_s),
        duration: Duration::from_secs(common.duration_s),
        server_pids: common.server_pid,
        quiet: common.quiet || common.json,
        soak: common.soak,
        relay: common.relay,
        tcp: common.tcp,
        network: common.network,
    }))?;
    if common.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        run::print(&report);
    }
    Ok(())
}

fn audio_stream() -> StreamSpec {
    StreamSpec::audio(48_000)
}

fn video(bitrate_bps: u32) -> StreamSpec {
    StreamSpec::video(bitrate_bps, 30)
}

fn cohost(viewers: usize, common: &Common) -> Vec<RoomPlan> {
    let video = |bitrate| {
        let v = if common.simulcast {
            StreamSpec::simulcast(bitrate, 30)
        } else {
            video(bitrate)
        };
        // Real keyframes on real networks: their size is what a narrow downlink chokes on.
        let scale = if common.network == run::Network::Mixed {
            4
        } else {
            v.keyframe_scale
        };
        StreamSpec {
            keyframe_scale: scale,
            ..v
        }
    };
    let mut publishers = vec![vec![video(1_500_000), audio_stream()]];
    publishers.extend((0..9).map(|_| vec![video(500_000), audio_stream()]));
    vec![RoomPlan {
        publishers,
        viewers,
    }]
}

fn audio(viewers: usize) -> Vec<RoomPlan> {
    vec![RoomPlan {
        publishers: (0..10).map(|_| vec![audio_stream()]).collect(),
        viewers,
    }]
}

fn many_rooms(rooms: usize) -> Vec<RoomPlan> {
    (0..rooms)
        .map(|_| RoomPlan {
            publishers: vec![
                vec![video(1_500_000), audio_stream()],
                vec![video(500_000), audio_stream()],
            ],
            viewers: 4,
        })
        .collect()
}

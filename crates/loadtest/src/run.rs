//! The media scenarios: build the rooms of a scenario on a target, ramp the viewers up, warm up,
//! measure for a fixed window, and report what really arrived; with `soak`, minute by minute.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use miclink_protocol::Role;
use serde::Serialize;
use tokio::sync::Notify;

use crate::client::{self, Member};
use crate::janus;
use crate::marker::{Kind, now_ns};
use crate::peer::{Sent, StreamSpec};
use crate::recv::{self, Recv};
use crate::shaper::Shape;
use crate::util::{check_loopback, proc_usage};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Miclink,
    Janus,
}

/// One room of a scenario: its publishers' streams (the first is the anchor) and its viewers.
#[derive(Clone)]
pub struct RoomPlan {
    pub publishers: Vec<Vec<StreamSpec>>,
    pub viewers: usize,
}

pub struct Options {
    pub scenario: &'static str,
    pub target: Target,
    /// Where publishers join (the first) and viewers join (each in turn): the nodes of a
    /// cluster, or one server.
    pub urls: Vec<String>,
    pub rooms: Vec<RoomPlan>,
    /// Viewers joining per second.
    pub ramp_per_s: f64,
    pub warmup: Duration,
    pub duration: Duration,
    /// Server processes (a cluster's nodes) whose CPU and memory are read.
    pub server_pids: Vec<u32>,
    pub quiet: bool,
    /// Report every minute of the window on its own.
    pub soak: bool,
    /// miclink: members reach the server only through the join reply's TURN servers.
    pub relay: bool,
    /// miclink: members' connections use ICE-TCP only.
    pub tcp: bool,
    /// Viewers' downlinks.
    pub network: Network,
}

/// The viewers' downlinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Loopback, as fast as it goes.
    Free,
    /// A third of the viewers at 1 Mbit/s losing 2%, a third at 3 Mbit/s, the rest free (each
    /// through its own shaping proxy on loopback).
    Mixed,
}

impl Network {
    /// The downlink of viewer `v`: its group's name and its shape (none when free).
    fn downlink(self, v: usize) -> (&'static str, Option<Shape>) {
        match (self, v % 3) {
            (Network::Free, _) | (Network::Mixed, 2) => ("free", None),
            (Network::Mixed, 0) => ("1 Mbit/s, 2% loss", Some(Shape::new(1_000_000, 20))),
            (Network::Mixed, _) => ("3 Mbit/s", Some(Shape::new(3_000_000, 0))),
        }
    }
}

/// What the viewers of one downlink group got, per viewer.
#[derive(Serialize, Debug, Clone)]
pub struct Group {
    pub network: &'static str,
    pub viewers: usize,
    /// Payload received, kbit/s per viewer.
    pub received_kbps: f64,
    pub audio_loss_percent: f64,
    /// Share of the window each video stream spent frozen (gaps over 500 ms).
    pub video_frozen_percent: f64,
    /// Simulcast layer changes per video stream per minute.
    pub layer_switches_per_min: f64,
}

/// A connected participant, holding its connections open.
enum Participant {
    Miclink(Box<Member>),
    Janus(janus::Participant),
}

impl Participant {
    async fn close(self) {
        match self {
            Participant::Miclink(m) => m.close().await,
            Participant::Janus(j) => j.close().await,
        }
    }
}

/// A room as set up on the target.
enum RoomHandle {
    Miclink { id: String },
    Janus(janus::Room),
}

struct Receiver {
    room: usize,
    /// The publisher this receiver also is, if it publishes (its own streams are not expected
    /// back).
    own: Option<String>,
    viewer: bool,
    /// A viewer's downlink group.
    group: &'static str,
    recv: Arc<Recv>,
}

/// One minute of a soak: every stream to every receiver, summed.
#[derive(Serialize, Debug, Clone)]
pub struct Minute {
    pub minute: usize,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// The longest time any receiver went without a new packet of any one stream.
    pub max_gap_ms: f64,
    /// Which stream that was: "publisher kind".
    pub max_gap_stream: String,
    pub delay_p50_ms: Option<f64>,
    pub delay_p99_ms: Option<f64>,
    pub server_rss_mib: Option<f64>,
    pub server_cpu_percent: Option<f64>,
}

/// One server process of several.
#[derive(Serialize, Debug, Clone)]
pub struct NodeUsage {
    pub pid: u32,
    pub cpu_percent: f64,
    pub rss_mib: f64,
}

/// Resident memory and CPU time of each process, and their sums.
type Usage = (Vec<(u64, f64)>, (u64, f64));

fn usage(pids: &[u32]) -> anyhow::Result<Option<Usage>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let each = pids
        .iter()
        .map(|p| proc_usage(*p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sum = each
        .iter()
        .fold((0, 0.0), |(r, c), (rss, cpu)| (r + rss, c + cpu));
    Ok(Some((each, sum)))
}

#[derive(Serialize)]
pub struct Report {
    scenario: &'static str,
    target: Target,
    rooms: usize,
    publishers: usize,
    viewers_asked: usize,
    viewers_connected: usize,
    first_error: Option<String>,
    warmup_s: f64,
    duration_s: f64,
    join_to_first_packet_p50_ms: Option<f64>,
    join_to_first_packet_p99_ms: Option<f64>,
    viewers_without_media: usize,
    expected_packets: u64,
    delivered_packets: u64,
    duplicates: u64,
    loss_percent: f64,
    audio_loss_percent: f64,
    video_loss_percent: f64,
    delay_p50_ms: Option<f64>,
    delay_p99_ms: Option<f64>,
    delivered_per_s: f64,
    server_cpu_percent: Option<f64>,
    server_cpu_us_per_packet: Option<f64>,
    server_rss_mib: Option<f64>,
    /// Each server process, when there are several (a cluster): its CPU and memory.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<NodeUsage>,
    load_tool_cpu_percent: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    minutes: Option<Vec<Minute>>,
    /// The viewers by downlink.
    groups: Vec<Group>,
}

fn loss(expected: u64, delivered: u64) -> f64 {
    if expected == 0 {
        0.0
    } else {
        100.0 * (expected.saturating_sub(delivered)) as f64 / expected as f64
    }
}

fn room_name(i: usize) -> String {
    format!("load-{}-{i}", std::process::id())
}

fn progress(quiet: bool, len: u64, msg: &str) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len)
    };
    bar.set_style(
        ProgressStyle::with_template("{msg:24} [{bar:40}] {pos}/{len} {elapsed}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message(msg.to_owned());
    bar
}

pub async fn run(opts: Options) -> anyhow::Result<Report> {
    let Some(first_url) = opts.urls.first().cloned() else {
        anyhow::bail!("no server URL");
    };
    for url in &opts.urls {
        check_loopback(url)?;
    }
    let stop = Arc::new(Notify::new());
    let mut participants: Vec<Participant> = Vec::new();
    let mut receivers: Vec<Receiver> = Vec::new();
    let mut sent: Vec<(usize, Arc<Sent>)> = Vec::new();
    let mut handles = Vec::new();

    // Publishers first, room by room: the anchor goes live, the guests are admitted.
    let total_publishers: usize = opts.rooms.iter().map(|r| r.publishers.len()).sum();
    let bar = progress(opts.quiet, total_publishers as u64, "publishers");
    for (r, plan) in opts.rooms.iter().enumerate() {
        let first_of_room = participants.len();
        let mut handle = match opts.target {
            Target::Miclink => RoomHandle::Miclink { id: room_name(r) },
            Target::Janus => RoomHandle::Janus(janus::Room::create(&first_url, r).await?),
        };
        for (p, streams) in plan.publishers.iter().enumerate() {
            let recv = Recv::new(Instant::now());
            let user = format!("p{p}");
            let (participant, s) = match &mut handle {
                RoomHandle::Miclink { id } => {
                    let role = if p == 0 { Role::Anchor } else { Role::Audience };
                    let options = client::Options {
                        auto_accept: p == 0,
                        relay_only: opts.relay,
                        tcp_only: opts.tcp,
                        ..Default::default()
                    };
                    let mut m =
                        Member::join(&first_url, id, &user, role, recv.clone(), options).await?;
                    if p > 0 {
                        let camera = streams.iter().any(|s| s.kind == Kind::Video);
                        m.apply(camera).await?;
                    }
                    let s = m.publish(streams, stop.clone(), None).await?;
                    (Participant::Miclink(Box::new(m)), s)
                }
                RoomHandle::Janus(room) => {
                    let (j, s) = room
                        .publish(&user, streams, recv.clone(), stop.clone())
                        .await?;
                    (Participant::Janus(j), s)
                }
            };
            participants.push(participant);
            sent.extend(s.into_iter().map(|s| (r, s)));
            receivers.push(Receiver {
                room: r,
                own: Some(user),
                viewer: false,
                group: "publisher",
                recv,
            });
            bar.inc(1);
        }
        if let RoomHandle::Janus(room) = &handle {
            for p in &mut participants[first_of_room..] {
                if let Participant::Janus(j) = p {
                    room.link_publisher(j).await?;
                }
            }
        }
        handles.push(handle);
    }
    bar.finish();

    // Viewers, at the ramp rate, each joining in its own task.
    let viewers_asked: usize = opts.rooms.iter().map(|r| r.viewers).sum();
    let bar = progress(opts.quiet, viewers_asked as u64, "viewers");
    let gap = Duration::from_secs_f64(1.0 / opts.ramp_per_s.max(0.01));
    let mut joins = Vec::new();
    let mut next = tokio::time::Instant::now();
    for (r, plan) in opts.rooms.iter().enumerate() {
        for v in 0..plan.viewers {
            tokio::time::sleep_until(next).await;
            next += gap;
            let recv = Recv::new(Instant::now());
            // Viewers take turns over the nodes given.
            let url = opts.urls[v % opts.urls.len()].clone();
            let user = format!("v{v}");
            let (group, shape) = opts.network.downlink(v);
            let options = client::Options {
                relay_only: opts.relay,
                tcp_only: opts.tcp,
                shape,
                ..Default::default()
            };
            let bar = bar.clone();
            let recv2 = recv.clone();
            let task = match &handles[r] {
                RoomHandle::Miclink { id } => {
                    let id = id.clone();
                    tokio::spawn(async move {
                        let m =
                            Member::join(&url, &id, &user, Role::Audience, recv2, options).await;
                        bar.inc(1);
                        m.map(|m| Participant::Miclink(Box::new(m)))
                    })
                }
                RoomHandle::Janus(room) => {
                    let room = room.clone();
                    tokio::spawn(async move {
                        let j = room.view(&user, recv2).await;
                        bar.inc(1);
                        j.map(Participant::Janus)
                    })
                }
            };
            joins.push((r, group, recv, task));
        }
    }
    let mut first_error = None;
    let mut viewers_connected = 0;
    for (r, group, recv, task) in joins {
        match task.await? {
            Ok(p) => {
                viewers_connected += 1;
                participants.push(p);
                receivers.push(Receiver {
                    room: r,
                    own: None,
                    viewer: true,
                    group,
                    recv,
                });
            }
            Err(e) => {
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    bar.finish();

    tokio::time::sleep(opts.warmup).await;

    // The measurement window, with a snapshot of every stream's counter each minute.
    let snapshot = |sent: &[(usize, Arc<Sent>)]| -> Vec<u32> {
        sent.iter()
            .map(|(_, s)| s.next_seq.load(Ordering::Relaxed))
            .collect()
    };
    let mut marks = vec![snapshot(&sent)];
    let nodes_before = usage(&opts.server_pids)?;
    let server_before = nodes_before.as_ref().map(|(_, sum)| *sum);
    let mut server_marks = vec![server_before];
    let tool_before = proc_usage(std::process::id())?;
    let t0 = Instant::now();
    let window_start_ns = now_ns();
    recv::open_window();
    // A line for scripts that act during the window (benches/overload lifts a CPU quota).
    eprintln!("miclink-load: measuring for {} s", opts.duration.as_secs());
    let secs = opts.duration.as_secs().max(1);
    let bar = progress(opts.quiet, secs, "measuring");
    for s in 1..=secs {
        tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + Duration::from_secs(s))).await;
        bar.inc(1);
        if s % 60 == 0 && s != secs {
            marks.push(snapshot(&sent));
            server_marks.push(usage(&opts.server_pids)?.map(|(_, sum)| sum));
        }
    }
    marks.push(snapshot(&sent));
    let nodes_after = usage(&opts.server_pids)?;
    let server_after = nodes_after.as_ref().map(|(_, sum)| *sum);
    server_marks.push(server_after);
    let tool_after = proc_usage(std::process::id())?;
    let window = t0.elapsed().as_secs_f64();
    let window_end_ns = now_ns();
    bar.finish();
    // Packets sent near the end are still in flight: give them a moment before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    recv::close_window();

    let (starts, ends) = (&marks[0], &marks[marks.len() - 1]);
    let simulcast = opts
        .rooms
        .iter()
        .flat_map(|r| r.publishers.iter().flatten())
        .any(|s| s.simulcast);
    let groups = groups(
        &receivers,
        &sent,
        (starts, ends),
        (window_start_ns, window_end_ns),
        window,
    );
    let mut expected = 0u64;
    let mut delivered = 0u64;
    let mut duplicates = 0u64;
    // (expected, delivered) per kind: audio must survive what video may not.
    let mut by_kind = [(0u64, 0u64); 2];
    let mut delays = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for rcv in &receivers {
        for (i, (room, s)) in sent.iter().enumerate() {
            if *room != rcv.room || rcv.own.as_deref() == Some(s.publisher.as_str()) {
                continue;
            }
            if s.kind == Kind::Video && simulcast {
                // One layer of several arrives: its loss is not what the counters say. The
                // groups below say what simulcast viewers got.
                continue;
            }
            let want = u64::from(ends[i].saturating_sub(starts[i]));
            expected += want;
            let (got, dups) = rcv.recv.received(&s.publisher, s.kind, starts[i], ends[i]);
            delivered += got;
            duplicates += dups;
            by_kind[s.kind as usize].0 += want;
            by_kind[s.kind as usize].1 += got;
        }
        rcv.recv.add_delays(&mut delays);
    }
    let minutes = opts.soak.then(|| {
        minutes(
            &receivers,
            &sent,
            &marks,
            &server_marks,
            window_end_ns,
            simulcast,
        )
    });
    let mut firsts: Vec<Duration> = receivers
        .iter()
        .filter(|r| r.viewer)
        .filter_map(|r| r.recv.first_packet())
        .collect();
    firsts.sort();
    let without_media = viewers_connected - firsts.len();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |p: f64| (!firsts.is_empty()).then(|| ms(crate::idle::percentile(&firsts, p)));
    let delay_ms = |q: f64| (!delays.is_empty()).then(|| delays.value_at_quantile(q) as f64 / 1e3);
    let server_cpu = match (server_before, server_after) {
        (Some((_, a)), Some((_, b))) => Some(b - a),
        _ => None,
    };
    let report = Report {
        scenario: opts.scenario,
        target: opts.target,
        rooms: opts.rooms.len(),
        publishers: total_publishers,
        viewers_asked,
        viewers_connected,
        first_error,
        warmup_s: opts.warmup.as_secs_f64(),
        duration_s: window,
        join_to_first_packet_p50_ms: pct(0.5),
        join_to_first_packet_p99_ms: pct(0.99),
        viewers_without_media: without_media,
        expected_packets: expected,
        delivered_packets: delivered,
        duplicates,
        loss_percent: loss(expected, delivered),
        audio_loss_percent: loss(by_kind[0].0, by_kind[0].1),
        video_loss_percent: if simulcast {
            f64::NAN
        } else {
            loss(by_kind[1].0, by_kind[1].1)
        },
        delay_p50_ms: delay_ms(0.5),
        delay_p99_ms: delay_ms(0.99),
        delivered_per_s: delivered as f64 / window,
        server_cpu_percent: server_cpu.map(|c| 100.0 * c / window),
        server_cpu_us_per_packet: server_cpu.map(|c| c * 1e6 / delivered.max(1) as f64),
        server_rss_mib: server_after.map(|(rss, _)| rss as f64 / 1048576.0),
        nodes: match (&nodes_before, &nodes_after) {
            (Some((a, _)), Some((b, _))) if opts.server_pids.len() > 1 => opts
                .server_pids
                .iter()
                .zip(a.iter().zip(b))
                .map(|(pid, (a, b))| NodeUsage {
                    pid: *pid,
                    cpu_percent: 100.0 * (b.1 - a.1) / window,
                    rss_mib: b.0 as f64 / 1048576.0,
                })
                .collect(),
            _ => Vec::new(),
        },
        load_tool_cpu_percent: 100.0 * (tool_after.1 - tool_before.1) / window,
        minutes,
        groups,
    };

    stop.notify_waiters();
    for p in participants {
        p.close().await;
    }
    for h in handles {
        if let RoomHandle::Janus(room) = h {
            room.destroy().await;
        }
    }
    if report.viewers_connected == 0 && viewers_asked > 0 {
        bail!(
            "no viewer connected: {}",
            report.first_error.as_deref().unwrap_or("?")
        );
    }
    Ok(report)
}

/// Per downlink group of viewers: what they received, their audio loss, how long their video
/// streams froze and how often their layers switched.
fn groups(
    receivers: &[Receiver],
    sent: &[(usize, Arc<Sent>)],
    (starts, ends): (&[u32], &[u32]),
    (start_ns, end_ns): (u64, u64),
    window: f64,
) -> Vec<Group> {
    let mut names: Vec<&'static str> = receivers
        .iter()
        .filter(|r| r.viewer)
        .map(|r| r.group)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let members: Vec<&Receiver> = receivers
                .iter()
                .filter(|r| r.viewer && r.group == name)
                .collect();
            let (mut audio_want, mut audio_got) = (0u64, 0u64);
            let (mut frozen_ns, mut switches, mut video_streams) = (0u64, 0u64, 0u64);
            for rcv in &members {
                for (i, (room, s)) in sent.iter().enumerate() {
                    if *room != rcv.room {
                        continue;
                    }
                    match s.kind {
                        Kind::Audio => {
                            audio_want += u64::from(ends[i].saturating_sub(starts[i]));
                            audio_got += rcv
                                .recv
                                .received(&s.publisher, s.kind, starts[i], ends[i])
                                .0;
                        }
                        Kind::Video => {
                            let (f, n) = rcv.recv.freeze(&s.publisher, s.kind, start_ns, end_ns);
                            frozen_ns += f;
                            switches += n;
                            video_streams += 1;
                        }
                    }
                }
            }
            let n = members.len().max(1) as f64;
            let bytes: u64 = members.iter().map(|r| r.recv.window_bytes()).sum();
            let stream_s = video_streams.max(1) as f64 * window;
            Group {
                network: name,
                viewers: members.len(),
                received_kbps: bytes as f64 * 8.0 / 1000.0 / window / n,
                audio_loss_percent: loss(audio_want, audio_got),
                video_frozen_percent: 100.0 * frozen_ns as f64 / 1e9 / stream_s,
                layer_switches_per_min: switches as f64
                    / video_streams.max(1) as f64
                    / (window / 60.0),
            }
        })
        .collect()
}

/// Each minute of the window: what every receiver should have had of every stream sent in that
/// minute, what arrived (however late), duplicates, and the longest silence of any stream.
fn minutes(
    receivers: &[Receiver],
    sent: &[(usize, Arc<Sent>)],
    marks: &[Vec<u32>],
    server_marks: &[Option<(u64, f64)>],
    window_end_ns: u64,
    simulcast: bool,
) -> Vec<Minute> {
    let count = marks.len() - 1;
    let mut rows: Vec<Minute> = (0..count)
        .map(|m| {
            let server = match (server_marks[m], server_marks[m + 1]) {
                (Some((_, a)), Some((rss, b))) => {
                    Some((rss as f64 / 1048576.0, 100.0 * (b - a) / 60.0))
                }
                _ => None,
            };
            Minute {
                minute: m + 1,
                expected: 0,
                delivered: 0,
                lost: 0,
                duplicates: 0,
                max_gap_ms: 0.0,
                max_gap_stream: String::new(),
                delay_p50_ms: None,
                delay_p99_ms: None,
                server_rss_mib: server.map(|s| s.0),
                server_cpu_percent: server.map(|s| s.1),
            }
        })
        .collect();
    for (m, row) in rows.iter_mut().enumerate() {
        if let Ok(mut h) = Histogram::<u64>::new_with_bounds(1, 600_000_000, 2) {
            for rcv in receivers {
                rcv.recv.add_minute_delays(m, &mut h);
            }
            if !h.is_empty() {
                row.delay_p50_ms = Some(h.value_at_quantile(0.5) as f64 / 1e3);
                row.delay_p99_ms = Some(h.value_at_quantile(0.99) as f64 / 1e3);
            }
        }
    }
    for rcv in receivers {
        for (i, (room, s)) in sent.iter().enumerate() {
            // A simulcast viewer gets one layer of several: the counters cannot say what it
            // lost (the groups' frozen time does).
            if simulcast && s.kind == Kind::Video {
                continue;
            }
            if *room != rcv.room || rcv.own.as_deref() == Some(s.publisher.as_str()) {
                continue;
            }
            let figures = rcv.recv.minutes(&s.publisher, s.kind);
            let name = format!("{} {:?}", s.publisher, s.kind).to_lowercase();
            for (m, row) in rows.iter_mut().enumerate() {
                let (from, to) = (marks[m][i], marks[m + 1][i]);
                let want = u64::from(to.saturating_sub(from));
                let (got, _) = rcv.recv.received(&s.publisher, s.kind, from, to);
                row.expected += want;
                row.delivered += got;
                row.lost += want.saturating_sub(got);
                row.duplicates += figures.duplicates.get(m).copied().unwrap_or(0);
                let mut gap = figures.max_gap_ns.get(m).copied().unwrap_or(0);
                if m + 1 == count {
                    // A stream that stopped shows as a gap up to the end of the window.
                    gap = gap.max(window_end_ns.saturating_sub(figures.last_arrival_ns));
                }
                let gap_ms = gap as f64 / 1e6;
                if gap_ms > row.max_gap_ms {
                    row.max_gap_ms = gap_ms;
                    row.max_gap_stream = name.clone();
                }
            }
        }
    }
    rows
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.2}{unit}"))
}

pub fn print(report: &Report) {
    let r = report;
    println!("scenario                 {} on {:?}", r.scenario, r.target);
    println!(
        "participants             {} publishers in {} room(s); viewers {} of {} connected",
        r.publishers, r.rooms, r.viewers_connected, r.viewers_asked
    );
    if let Some(e) = &r.first_error {
        println!("first error              {e}");
    }
    println!(
        "join to first packet     p50 {}, p99 {} ({} viewers got nothing)",
        opt(r.join_to_first_packet_p50_ms, " ms"),
        opt(r.join_to_first_packet_p99_ms, " ms"),
        r.viewers_without_media
    );
    println!(
        "packets                  {} delivered of {} expected ({:.3}% lost, {} duplicates) in {:.1} s, {:.0}/s",
        r.delivered_packets,
        r.expected_packets,
        r.loss_percent,
        r.duplicates,
        r.duration_s,
        r.delivered_per_s
    );
    let video_loss = if r.video_loss_percent.is_nan() {
        "n/a (simulcast: see the groups)".to_owned()
    } else {
        format!("{:.3}%", r.video_loss_percent)
    };
    println!(
        "lost by kind             audio {:.3}%, video {video_loss}",
        r.audio_loss_percent
    );
    println!(
        "added delay              p50 {}, p99 {}",
        opt(r.delay_p50_ms, " ms"),
        opt(r.delay_p99_ms, " ms")
    );
    println!(
        "server CPU               {} of one core, {} per delivered packet",
        opt(r.server_cpu_percent, " %"),
        opt(r.server_cpu_us_per_packet, " µs")
    );
    println!(
        "server memory            {}",
        opt(r.server_rss_mib, " MiB resident")
    );
    for n in &r.nodes {
        println!(
            "  node pid {:<8}        {:.1} % of one core, {:.1} MiB resident",
            n.pid, n.cpu_percent, n.rss_mib
        );
    }
    println!(
        "load tool CPU            {:.1} % of one core",
        r.load_tool_cpu_percent
    );
    if let Some(minutes) = &r.minutes {
        println!(
            "\nminute  expected  delivered    lost  dups  delay p50 / p99 ms  max gap ms (stream)        server RSS MiB  CPU %"
        );
        for m in minutes {
            println!(
                "{:>6}  {:>8}  {:>9}  {:>6}  {:>4}  {:>7} / {:<8} {:>10.1} ({:<14})  {:>14}  {:>5}",
                m.minute,
                m.expected,
                m.delivered,
                m.lost,
                m.duplicates,
                opt(m.delay_p50_ms, ""),
                opt(m.delay_p99_ms, ""),
                m.max_gap_ms,
                m.max_gap_stream,
                opt(m.server_rss_mib, ""),
                opt(m.server_cpu_percent, ""),
            );
        }
    }
    for g in &r.groups {
        println!(
            "viewers {:18} {} viewers: {:.0} kbit/s each, audio lost {:.2}%, video frozen {:.2}% of the time, {:.1} layer switches a minute",
            g.network,
            g.viewers,
            g.received_kbps,
            g.audio_loss_percent,
            g.video_frozen_percent,
            g.layer_switches_per_min
        );
    }
}

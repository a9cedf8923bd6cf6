//! Chaos: simulated members in several rooms join, apply, invite, accept, reject, cancel, end
//! links, republish, drop their device, resume and leave at random, all at once, for a fixed
//! time. Then, with everyone still there quiet: the server's seats (as a newcomer's join reply
//! shows them) equal what every member saw, the anchor and the audience agree on every pending
//! request, and a newcomer hears every linked member who published. Then everyone leaves and
//! rooms, sessions, sockets, media connections and the process's file descriptors are back to
//! idle.
//!
//! The members are the load tool's client (real WebSocket, real ICE, DTLS and SRTP); publishers
//! send audio. The short form runs in `cargo test`; the long form is
//! `CHAOS_MEMBERS=300 CHAOS_ROOMS=6 CHAOS_SECONDS=90 CHAOS_SEED=<n> cargo test --test chaos -- --nocapture`
//! (figures in docs/security.md). The seed is printed; it fixes the choices, not the timing. The
//! short form's default seed is fixed, so a red CI run can be repeated; set `CHAOS_SEED` to
//! explore others.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use miclink_loadtest::client::{Member, Options};
use miclink_loadtest::marker::Kind;
use miclink_loadtest::peer::StreamSpec;
use miclink_loadtest::recv::Recv;
use miclink_protocol::{Event, Ident, JoinResult, Reply, Request, Role, UserInfo};
use tokio::sync::Notify;

const GRACE: Duration = Duration::from_secs(3);
/// The longest link-request timeout the members ask for.
const MAX_REQUEST_S: Duration = Duration::from_secs(5);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (splitmix64): the seed alone fixes every choice.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// What one member knows, from its replies and events alone.
#[derive(Default)]
struct View {
    /// Seated users by seat, from the last `connected_users_updated` (or the join reply).
    seats: BTreeMap<u32, String>,
    /// Pending requests this member is part of: (from, to).
    requests: BTreeSet<(String, String)>,
    /// The room ended or the server put this member out.
    out: bool,
    /// This member published since it last took a seat.
    published: bool,
}

impl View {
    fn from_join(j: &JoinResult) -> View {
        View {
            seats: seats_of(j.room.seats.iter().filter_map(|s| s.user.clone())),
            requests: j
                .requests
                .iter()
                .map(|r| (r.from.user.to_string(), r.to.to_string()))
                .collect(),
            ..View::default()
        }
    }

    /// What a successful reply to `request` tells its sender about its requests.
    fn replied(&mut self, me: &str, request: &Request) {
        let anchor = user(0);
        let me = me.to_owned();
        match request {
            Request::RequestLink { user: to, .. } => {
                let to = to.as_ref().map_or(anchor, Ident::to_string);
                self.requests.insert((me, to));
            }
            Request::CancelLink { user: to } => {
                let to = to.as_ref().map_or(anchor, Ident::to_string);
                self.requests.remove(&(me, to));
            }
            Request::RespondLink { user: from, .. } => {
                self.requests.remove(&(from.to_string(), me));
            }
            _ => {}
        }
    }

    fn apply(&mut self, me: &str, e: Event) {
        let me = me.to_owned();
        match e {
            Event::ConnectedUsersUpdated { users, .. } => {
                let was_seated = self.seats.values().any(|u| *u == me);
                self.seats = seats_of(users);
                if !self.seats.values().any(|u| *u == me) && was_seated {
                    self.published = false;
                }
            }
            Event::LinkRequest { from, .. } => {
                self.requests.insert((from.user.to_string(), me));
            }
            Event::LinkAccepted { user } | Event::LinkRejected { user, .. } => {
                self.requests.remove(&(me, user.to_string()));
            }
            Event::LinkTimeout { user } => {
                self.requests.remove(&(me, user.to_string()));
            }
            Event::LinkCancelled { user, .. } => {
                self.requests.remove(&(user.to_string(), me.clone()));
                self.requests.remove(&(me, user.to_string()));
            }
            Event::RoomEnded { .. } | Event::Kicked { .. } => self.out = true,
            _ => {}
        }
    }
}

fn seats_of(users: impl IntoIterator<Item = UserInfo>) -> BTreeMap<u32, String> {
    users
        .into_iter()
        .filter_map(|u| Some((u.seat?, u.user.to_string())))
        .collect()
}

enum Slot {
    Offline,
    Online(Box<(Member, View)>),
    /// The device died; the session may be resumed within the grace period.
    Dropped(String),
}

/// One room's members, driven by one task.
struct Room {
    url: String,
    name: String,
    slots: Vec<Slot>,
    rng: Rng,
    stop: Arc<Notify>,
    started: Instant,
    /// Requests answered, by outcome ("ok" or the error code).
    outcomes: BTreeMap<String, u64>,
    /// What the last step did (named when a step never ends).
    doing: String,
}

/// Members behave as the demo does: a subscribe connection down for 4 s is asked for again.
fn options() -> Options {
    Options {
        resubscribe_after: Some(Duration::from_secs(4)),
        ..Options::default()
    }
}

fn user(i: usize) -> String {
    format!("u{i}")
}

impl Room {
    fn drain(&mut self, i: usize) {
        if let Slot::Online(b) = &mut self.slots[i] {
            let (m, view) = &mut **b;
            while let Ok(e) = m.events.try_recv() {
                view.apply(&m.user, e);
            }
        }
    }

    /// Drain the events that came before a reply, then count it.
    fn count(&mut self, i: usize, reply: &Reply) {
        self.drain(i);
        let key = match &reply.error {
            None => "ok".to_owned(),
            Some(e) => format!("{:?}", e.code),
        };
        *self.outcomes.entry(key).or_default() += 1;
    }

    async fn request(&mut self, i: usize, request: Request) -> Option<Reply> {
        let Slot::Online(b) = &self.slots[i] else {
            return None;
        };
        let kind = request.type_name();
        match b.0.request(request.clone()).await {
            Ok(reply) => {
                self.count(i, &reply);
                if reply.ok
                    && let Slot::Online(b) = &mut self.slots[i]
                {
                    b.1.replied(&user(i), &request);
                }
                Some(reply)
            }
            Err(e) => {
                self.drain(i);
                let out = matches!(&self.slots[i], Slot::Online(b) if b.1.out);
                assert!(out, "{}/u{i}: {kind} got no reply: {e:#}", self.name);
                None
            }
        }
    }

    async fn publish(&mut self, i: usize) {
        let Slot::Online(b) = &mut self.slots[i] else {
            return;
        };
        let stop = self.stop.clone();
        let ok =
            b.0.publish(&[StreamSpec::audio(24_000)], stop, None)
                .await
                .is_ok();
        b.1.published |= ok;
        *self
            .outcomes
            .entry(if ok { "publish ok" } else { "publish refused" }.into())
            .or_default() += 1;
    }

    async fn connect(&mut self, i: usize, session: Option<String>) {
        let recv = Recv::new(self.started);
        let name = user(i);
        let joined = match &session {
            Some(s) => Member::resume(&self.url, &name, s, recv, options()).await,
            None => {
                let role = if i == 0 { Role::Anchor } else { Role::Audience };
                Member::join(&self.url, &self.name, &name, role, recv, options()).await
            }
        };
        let key = match (&joined, session.is_some()) {
            (Ok(_), true) => "resume ok",
            (Ok(_), false) => "join ok",
            (Err(_), true) => "resume refused",
            (Err(_), false) => "join refused",
        };
        *self.outcomes.entry(key.into()).or_default() += 1;
        if let Ok(m) = joined {
            let view = View::from_join(&m.join);
            let seated = m.join.me.seat.is_some();
            self.slots[i] = Slot::Online(Box::new((m, view)));
            if session.is_some() {
                // The device died with the socket: its subscribe connection is gone too.
                self.request(i, Request::Resubscribe).await;
            }
            if seated {
                // A seated member publishes (again, after a resume).
                self.publish(i).await;
            }
        }
    }

    fn online(&self, i: usize) -> Option<&(Member, View)> {
        match &self.slots[i] {
            Slot::Online(b) => Some(b),
            _ => None,
        }
    }

    fn seated(&self, i: usize) -> bool {
        self.online(i)
            .is_some_and(|(_, v)| v.seats.values().any(|u| *u == user(i)))
    }

    fn pick_request(&mut self, i: usize) -> Option<(String, String)> {
        let (_, v) = self.online(i)?;
        let all: Vec<_> = v.requests.iter().cloned().collect();
        if all.is_empty() {
            return None;
        }
        let k = self.rng.below(all.len());
        Some(all[k].clone())
    }

    async fn step(&mut self) {
        let i = self.rng.below(self.slots.len());
        self.doing = format!(
            "u{i}: {}",
            match &self.slots[i] {
                Slot::Offline => "offline".to_owned(),
                Slot::Dropped(_) => "dropped".to_owned(),
                Slot::Online(b) => format!("online, seats {:?}", b.1.seats),
            }
        );
        self.drain(i);
        if matches!(&self.slots[i], Slot::Online(b) if b.1.out) {
            // The room ended for this member: its client closes.
            if let Slot::Online(b) = std::mem::replace(&mut self.slots[i], Slot::Offline) {
                b.0.kill().await;
            }
            return;
        }
        match std::mem::replace(&mut self.slots[i], Slot::Offline) {
            Slot::Offline => self.connect(i, None).await,
            Slot::Dropped(session) => {
                if self.rng.chance(70) {
                    self.connect(i, Some(session)).await;
                }
            }
            online @ Slot::Online(_) => {
                self.slots[i] = online;
                if i == 0 {
                    self.anchor_acts().await;
                } else {
                    self.member_acts(i).await;
                }
            }
        }
    }

    async fn anchor_acts(&mut self) {
        let roll = self.rng.below(100);
        let target = 1 + self.rng.below(self.slots.len() - 1);
        match roll {
            0..55 => {
                if let Some((from, to)) = self.pick_request(0) {
                    let accept = self.rng.chance(70);
                    let r = if to == user(0) {
                        Request::RespondLink {
                            user: Ident::new(&from).expect("id"),
                            accept,
                        }
                    } else {
                        Request::CancelLink {
                            user: Some(Ident::new(&to).expect("id")),
                        }
                    };
                    self.request(0, r).await;
                }
            }
            55..75 => {
                let r = Request::RequestLink {
                    user: Some(Ident::new(&user(target)).expect("id")),
                    seat: None,
                    timeout_s: Some(1 + self.rng.below(5) as u32),
                    open_camera: Some(false),
                };
                self.request(0, r).await;
            }
            75..95 => {
                let r = Request::DisconnectUser {
                    user: Ident::new(&user(target)).expect("id"),
                };
                self.request(0, r).await;
            }
            95..98 => self.drop_member(0).await,
            _ => self.leave(0).await,
        }
    }

    async fn member_acts(&mut self, i: usize) {
        let roll = self.rng.below(100);
        match roll {
            0..30 => {
                let r = Request::RequestLink {
                    user: None,
                    seat: None,
                    timeout_s: Some(1 + self.rng.below(5) as u32),
                    open_camera: Some(false),
                };
                self.request(i, r).await;
            }
            30..45 => {
                if let Some((from, _)) = self.pick_request(i) {
                    let r = if from == user(i) {
                        Request::CancelLink { user: None }
                    } else {
                        Request::RespondLink {
                            user: Ident::new(&from).expect("id"),
                            accept: self.rng.chance(60),
                        }
                    };
                    self.request(i, r).await;
                }
            }
            45..55 => {
                self.request(i, Request::TerminateLink).await;
            }
            55..70 if self.seated(i) => self.publish(i).await,
            70..80 => self.drop_member(i).await,
            80..88 => self.leave(i).await,
            _ => {}
        }
    }

    async fn drop_member(&mut self, i: usize) {
        if let Slot::Online(b) = std::mem::replace(&mut self.slots[i], Slot::Offline) {
            let session = b.0.join.session.clone();
            b.0.kill().await;
            self.slots[i] = Slot::Dropped(session);
        }
    }

    async fn leave(&mut self, i: usize) {
        if let Slot::Online(b) = std::mem::replace(&mut self.slots[i], Slot::Offline) {
            b.0.close().await;
        }
    }

    /// Everyone quiet: let the grace period run out for the dropped, then compare.
    async fn settle(&mut self) {
        // Longer than the grace and than any link request's timeout (at most 5 s here), so no
        // timer is left to fire while the views are compared.
        tokio::time::sleep(GRACE.max(MAX_REQUEST_S) + Duration::from_secs(2)).await;
        for i in 0..self.slots.len() {
            self.drain(i);
            let gone = match &self.slots[i] {
                Slot::Online(b) => b.1.out,
                Slot::Dropped(_) => true,
                Slot::Offline => false,
            };
            // The room ended for them, or their grace ran out: their clients close.
            if gone && let Slot::Online(b) = std::mem::replace(&mut self.slots[i], Slot::Offline) {
                b.0.kill().await;
            }
        }
    }

    async fn check(&mut self) -> Vec<String> {
        let mut broken = Vec::new();
        // Everything that arrived while the others were being drained.
        for i in 0..self.slots.len() {
            self.drain(i);
        }
        let recv = Recv::new(self.started);
        let newcomer = Member::join(
            &self.url,
            &self.name,
            "newcomer",
            Role::Audience,
            recv.clone(),
            Options::default(),
        )
        .await;
        let online: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.online(i).is_some())
            .collect();
        let Ok(newcomer) = newcomer else {
            if !online.is_empty() {
                broken.push(format!(
                    "{}: not live, yet members {online:?} are still in it",
                    self.name
                ));
            }
            return broken;
        };
        eprintln!("{}: newcomer in", self.name);
        let truth = seats_of(
            newcomer
                .join
                .room
                .seats
                .iter()
                .filter_map(|s| s.user.clone()),
        );
        for &i in &online {
            let (_, v) = self.online(i).expect("online");
            if v.seats != truth {
                broken.push(format!(
                    "{}/u{i} sees seats {:?}, the server has {truth:?}",
                    self.name, v.seats
                ));
            }
        }
        // Both sides of every pending request know it.
        if let Some((_, anchor)) = self.online(0) {
            let from_audience: BTreeSet<_> = online
                .iter()
                .filter(|&&i| i != 0)
                .flat_map(|&i| self.online(i).expect("online").1.requests.iter().cloned())
                .collect();
            if anchor.requests != from_audience {
                broken.push(format!(
                    "{}: the anchor sees requests {:?}, the audience {from_audience:?}",
                    self.name, anchor.requests
                ));
            }
        }
        // The newcomer hears every seated member who published.
        let speakers: Vec<String> = online
            .iter()
            .filter(|&&i| self.seated(i) && self.online(i).expect("online").1.published)
            .map(|&i| user(i))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(15);
        let heard = |who: &String| recv.minutes(who, Kind::Audio).last_arrival_ns > 0;
        while !speakers.iter().all(heard) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for s in speakers.iter().filter(|s| !heard(s)) {
            broken.push(format!(
                "{}: the newcomer never heard seated {s}",
                self.name
            ));
        }
        // And so does every member who stayed (after all it went through), from now on.
        let since = started_ns(self.started);
        let listeners: Vec<(usize, Arc<Recv>)> = online
            .iter()
            .map(|&i| (i, self.online(i).expect("online").0.recv.clone()))
            .collect();
        let hears =
            |recv: &Recv, who: &String| recv.minutes(who, Kind::Audio).last_arrival_ns > since;
        let all_hear = || {
            listeners.iter().all(|(i, recv)| {
                speakers
                    .iter()
                    .filter(|s| **s != user(*i))
                    .all(|s| hears(recv, s))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !all_hear() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for (i, recv) in &listeners {
            for s in speakers
                .iter()
                .filter(|s| **s != user(*i) && !hears(recv, s))
            {
                broken.push(format!("{}/u{i} does not hear seated {s}", self.name));
            }
        }
        eprintln!("{}: heard {speakers:?}", self.name);
        newcomer.close().await;
        broken
    }

    async fn leave_all(&mut self) {
        for i in 0..self.slots.len() {
            self.leave(i).await;
            self.slots[i] = Slot::Offline;
        }
    }
}

/// Nanoseconds from `started` to now, as the receivers count arrivals.
fn started_ns(started: Instant) -> u64 {
    started.elapsed().as_nanos() as u64
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// A socket descriptor with its protocol and addresses (from /proc/net), else as it is.
fn describe(kind: &str) -> String {
    let Some(inode) = kind
        .strip_prefix("socket:[")
        .and_then(|k| k.strip_suffix(']'))
    else {
        return kind.to_owned();
    };
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(9) == Some(&inode) {
                return format!("{table} {} -> {} state {}", f[1], f[2], f[3]);
            }
        }
    }
    kind.to_owned()
}

/// What each open descriptor is (socket:[inode], anon_inode:[eventpoll], a path).
fn fd_kinds() -> Vec<String> {
    let mut kinds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    kinds.sort();
    kinds
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_members_leave_the_server_as_their_clients_saw_it_then_idle() {
    let seed = env("CHAOS_SEED", 20_261_128);
    let members = env("CHAOS_MEMBERS", 48) as usize;
    let rooms = env("CHAOS_ROOMS", 4) as usize;
    let seconds = env("CHAOS_SECONDS", 20);
    eprintln!(
        "chaos: seed {seed}, {members} members in {rooms} rooms for {seconds} s (CHAOS_SEED={seed} repeats the choices)"
    );

    let server = common::server_with(|c| c.signaling.seats.resume_grace = GRACE).await;
    let started = Instant::now();
    let stop = Arc::new(Notify::new());
    let room = |name: String, members: usize, rng: Rng| Room {
        url: server.url.clone(),
        name,
        slots: (0..members).map(|_| Slot::Offline).collect(),
        rng,
        stop: stop.clone(),
        started,
        outcomes: BTreeMap::new(),
        doing: String::new(),
    };
    let idle = |h: &serde_json::Value| {
        h["rooms"] == 0 && h["sessions"] == 0 && h["connections"] == 0 && h["media"]["peers"] == 0
    };
    // One member's whole life first, so that what the process sets up once (runtimes' pollers,
    // the first connection's sockets) is part of the idle baseline.
    let mut warm = room("warmup".into(), 2, Rng(seed));
    warm.connect(0, None).await;
    warm.connect(1, None).await;
    let warm_broken = warm.check().await;
    assert!(warm_broken.is_empty(), "{warm_broken:?}");
    warm.leave_all().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !idle(&server.health().await) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fds_idle = open_fds();
    let fds_at_idle = fd_kinds();
    let rss_idle = rss_kib();
    let mut tasks = Vec::new();
    for r in 0..rooms {
        let mut room = room(
            format!("chaos{r}"),
            members / rooms,
            Rng(seed ^ (r as u64).wrapping_mul(0x1000_0000_01b3)),
        );
        tasks.push(tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(seconds);
            while Instant::now() < end {
                // A step waits for one reply or connection at most; one that never ends is a
                // server that stopped answering.
                if tokio::time::timeout(Duration::from_secs(30), room.step())
                    .await
                    .is_err()
                {
                    panic!("{}: stuck at {} (seed {seed})", room.name, room.doing);
                }
                tokio::time::sleep(Duration::from_millis(room.rng.below(40) as u64)).await;
            }
            eprintln!("{}: run over", room.name);
            room.settle().await;
            eprintln!("{}: settled", room.name);
            let broken = room.check().await;
            eprintln!("{}: checked", room.name);
            let online_at_end = room
                .slots
                .iter()
                .filter(|s| matches!(s, Slot::Online(_)))
                .count();
            (room, broken, online_at_end)
        }));
    }
    let mut broken = Vec::new();
    let mut outcomes: HashMap<String, u64> = HashMap::new();
    let mut rooms_done = Vec::new();
    for t in tasks {
        let (room, b, online) = t.await.expect("room task");
        eprintln!("{}: {online} members online at the end", room.name);
        broken.extend(b);
        for (k, v) in &room.outcomes {
            *outcomes.entry(k.clone()).or_default() += v;
        }
        rooms_done.push(room);
    }
    let rss_busy = rss_kib();
    let mut sorted: Vec<_> = outcomes.into_iter().collect();
    sorted.sort();
    eprintln!("chaos: outcomes {sorted:?}");
    for room in &mut rooms_done {
        room.leave_all().await;
    }
    stop.notify_waiters();

    // Back to idle: no room, session, socket or media connection left, and the file
    // descriptors of the process (server and clients) back to where they were.
    let deadline = Instant::now() + Duration::from_secs(20);
    // Descriptors are counted before each health request (whose own connection is open for
    // a moment after it).
    let mut fds = open_fds();
    let mut health = server.health().await;
    while !(idle(&health) && fds <= fds_idle) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        fds = open_fds();
        health = server.health().await;
    }
    eprintln!(
        "chaos: after {:?}: fds {fds} (idle {fds_idle}), RSS {} KiB at idle, {} KiB at the end of the run, {} KiB after; health {health}",
        started.elapsed(),
        rss_idle,
        rss_busy,
        rss_kib()
    );
    assert!(broken.is_empty(), "seed {seed}:\n{}", broken.join("\n"));
    assert!(idle(&health), "seed {seed}: not idle: {health}");
    let mut extra = fd_kinds();
    for k in &fds_at_idle {
        if let Some(i) = extra.iter().position(|e| e == k) {
            extra.remove(i);
        }
    }
    assert!(
        fds <= fds_idle,
        "seed {seed}: {fds} fds open, {fds_idle} before; new: {:?}",
        extra.iter().map(|k| describe(k)).collect::<Vec<_>>()
    );
}

//! Commands per second of the seat state machine on a busy room: 9 linked members and 1,000
//! viewers. Outputs are drained inside the measured loop, as the hub does.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use miclink_protocol::{Ident, Role};
use miclink_seats::{Action, Seats, SeatsConfig};

const VIEWERS: usize = 1_000;

fn id(s: &str) -> Ident {
    Ident::new(s).expect("valid id")
}

struct Bench {
    seats: Seats,
    room: Ident,
    anchor: Ident,
    viewers: Vec<Ident>,
    now: Instant,
}

impl Bench {
    /// Room "r": anchor, viewers v0..v999, of which the first `linked` are linked.
    fn new(linked: usize) -> Bench {
        let mut b = Bench {
            seats: Seats::new(SeatsConfig::default()),
            room: id("r"),
            anchor: id("anchor"),
            viewers: (0..VIEWERS).map(|i| id(&format!("v{i}"))).collect(),
            now: Instant::now(),
        };
        b.act(
            &b.anchor.clone(),
            Action::Join {
                role: Role::Anchor,
                name: None,
            },
        );
        for v in b.viewers.clone() {
            b.act(
                &v,
                Action::Join {
                    role: Role::Audience,
                    name: None,
                },
            );
        }
        let to_link: Vec<Ident> = b.viewers[..linked].to_vec();
        for v in to_link {
            b.act(&v, apply());
            b.act(
                &b.anchor.clone(),
                Action::RespondLink {
                    to: v,
                    accept: true,
                },
            );
        }
        b
    }

    fn act(&mut self, user: &Ident, action: Action) {
        // Time moves on so deferred audience counts fire as they would in service.
        self.now += Duration::from_micros(50);
        self.seats.handle_timeout(self.now);
        let _ = black_box(self.seats.handle(self.now, &self.room, user, action));
        while let Some(o) = self.seats.poll_output() {
            black_box(o);
        }
    }
}

fn apply() -> Action {
    Action::RequestLink {
        to: None,
        seat: None,
        timeout_s: None,
        open_camera: None,
    }
}

fn seats(c: &mut Criterion) {
    let mut g = c.benchmark_group("seats_9_linked_1000_viewers");

    g.throughput(Throughput::Elements(2));
    let mut b = Bench::new(9);
    let newcomer = id("newcomer");
    g.bench_function("viewer_join_leave", |it| {
        it.iter(|| {
            b.act(
                &newcomer,
                Action::Join {
                    role: Role::Audience,
                    name: None,
                },
            );
            b.act(&newcomer, Action::Leave);
        })
    });

    // With one seat free, so the application is really made and answered.
    let mut b = Bench::new(8);
    let mut next = 9;
    g.bench_function("apply_reject_8_linked", |it| {
        it.iter(|| {
            let v = b.viewers[next].clone();
            next = if next + 1 == VIEWERS { 9 } else { next + 1 };
            b.act(&v, apply());
            b.act(
                &b.anchor.clone(),
                Action::RespondLink {
                    to: v,
                    accept: false,
                },
            );
        })
    });

    g.throughput(Throughput::Elements(3));
    let mut b = Bench::new(9);
    let mut linked: std::collections::VecDeque<Ident> = b.viewers[..9].iter().cloned().collect();
    let mut next = 9;
    g.bench_function("disconnect_apply_accept", |it| {
        it.iter(|| {
            let out = linked.pop_front().expect("nine linked");
            b.act(
                &b.anchor.clone(),
                Action::DisconnectUser { user: out.clone() },
            );
            let v = b.viewers[next].clone();
            next = if next + 1 == VIEWERS { 9 } else { next + 1 };
            // A viewer that was linked earlier may come round again; skip it if so.
            if linked.contains(&v) {
                linked.push_back(out);
                return;
            }
            b.act(&v, apply());
            b.act(
                &b.anchor.clone(),
                Action::RespondLink {
                    to: v.clone(),
                    accept: true,
                },
            );
            linked.push_back(v);
        })
    });

    g.throughput(Throughput::Elements(1));
    let mut b = Bench::new(9);
    let tenth = b.viewers[9].clone();
    g.bench_function("tenth_apply_refused", |it| {
        it.iter(|| b.act(&tenth, apply()))
    });

    let mut b = Bench::new(9);
    g.bench_function("list_audience_page_of_50", |it| {
        it.iter(|| {
            b.act(
                &b.anchor.clone(),
                Action::ListAudience {
                    offset: 500,
                    limit: 50,
                },
            )
        })
    });
    g.finish();
}

criterion_group!(benches, seats);
criterion_main!(benches);

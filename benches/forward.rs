//! The forwarding path of the real media core: one SRTP-protected RTP datagram from a
//! publisher handed to `MediaCore::handle_datagram`, decrypted, checked against the seats,
//! rewritten for each of N subscribers and protected again, and every datagram taken out with
//! `poll_output` — the same calls the driver makes. Connections are real (ICE-lite, DTLS,
//! SRTP) and paired in memory (`miclink_sfu::sim`), so no socket is measured: this is the CPU
//! cost of forwarding without the send syscall. The publisher's own encryption is done outside
//! the timed part.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use miclink_sfu::Output;
use miclink_sfu::sim::{ClientId, Codec, Net};

/// A room: the anchor publishing VP8 and `n` viewers, every connection up and every viewer
/// already receiving.
fn room(n: usize) -> (Net, ClientId, u16) {
    let mut net = Net::new();
    net.allow("r", "anchor", 0, true, true);
    let anchor = net.enter("r", "anchor");
    net.publish(anchor, &[Codec::Vp8]).expect("publish");
    let viewers: Vec<ClientId> = (0..n).map(|i| net.enter("r", &format!("v{i}"))).collect();
    let mut seq = 0u16;
    for _ in 0..1000 {
        net.send(
            anchor,
            Codec::Vp8,
            seq,
            u32::from(seq) * 3000,
            Codec::Vp8.payload(true, &[7; 100]),
        );
        seq += 1;
        net.step(Duration::from_millis(20));
        if viewers.iter().all(|&v| !net.clients[v].received.is_empty()) {
            return (net, anchor, seq);
        }
    }
    panic!("not every viewer got video");
}

fn forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward_one_packet");
    g.measurement_time(Duration::from_secs(5));
    for n in [1usize, 10, 50] {
        let (mut net, anchor, mut seq) = room(n);
        let from = net.clients[anchor].publish_addr();
        let body = [0xab; 1196];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("subscribers", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    // Sealed ahead, untimed: SRTP replay protection wants each packet once.
                    let chunk = left.min(512);
                    left -= chunk;
                    let datagrams: Vec<Vec<u8>> = (0..chunk)
                        .map(|_| {
                            seq = seq.wrapping_add(1);
                            let payload = Codec::Vp8.payload(false, &body);
                            net.sealed(anchor, Codec::Vp8, seq, u32::from(seq) * 3000, payload)
                        })
                        .collect();
                    let now = net.now;
                    let start = Instant::now();
                    for d in &datagrams {
                        net.core.handle_datagram(now, from, d);
                        while let Some(out) = net.core.poll_output() {
                            if let Output::Transmit(t) = out {
                                std::hint::black_box(t);
                            }
                        }
                    }
                    spent += start.elapsed();
                }
                spent
            })
        });
    }
    g.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);

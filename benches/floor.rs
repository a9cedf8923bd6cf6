//! The floor of forwarding: what any SFU must spend to send one RTP packet to N subscribers over
//! SRTP. Per subscriber: rewrite the header's SSRC and sequence number, protect the packet with
//! that subscriber's SRTP context (AES-128-CM + HMAC-SHA1-80, the profile browsers use); then one
//! `sendmmsg` call carries all N datagrams to N loopback sockets. No peer-connection bookkeeping,
//! no interceptors, no statistics: the figure per subscriber is the cost no SFU can go below, to
//! set the forward bench (`benches/forward.rs`) and the load tool's CPU per packet against.

use std::io::IoSlice;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrIn, sendmmsg};
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

const PAYLOAD: usize = 1100;

fn packet() -> Vec<u8> {
    let mut p = vec![0u8; 12 + PAYLOAD];
    p[0] = 0x80; // version 2
    p[1] = 96;
    for (i, b) in p[12..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

fn floor(c: &mut Criterion) {
    let provider = rtc::crypto::default_provider().expect("crypto provider");
    let crypto = provider.crypto();
    let mut group = c.benchmark_group("floor: srtp protect + sendmmsg, per packet");
    for n in [1usize, 10, 50] {
        let mut contexts: Vec<Context> = (0..n)
            .map(|i| {
                let key = [i as u8; 16];
                let salt = [(i as u8).wrapping_add(1); 14];
                Context::new(
                    &key,
                    &salt,
                    ProtectionProfile::Aes128CmHmacSha1_80,
                    None,
                    None,
                    crypto,
                )
                .expect("srtp context")
            })
            .collect();
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        // Receivers are never read: the kernel drops what overflows their buffers, after the
        // send cost was paid, which is what is measured.
        let receivers: Vec<UdpSocket> = (0..n)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let addrs: Vec<Option<SockaddrIn>> = receivers
            .iter()
            .map(|r| match r.local_addr().expect("addr") {
                std::net::SocketAddr::V4(a) => Some(SockaddrIn::from(a)),
                std::net::SocketAddr::V6(_) => None,
            })
            .collect();
        let mut headers = MultiHeaders::<SockaddrIn>::preallocate(n, None);
        let mut plain = packet();
        let mut seq: u16 = 0;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                let protected: Vec<_> = contexts
                    .iter_mut()
                    .enumerate()
                    .map(|(i, ctx)| {
                        plain[2..4].copy_from_slice(&seq.to_be_bytes());
                        plain[8..12].copy_from_slice(&(i as u32 + 1).to_be_bytes());
                        ctx.encrypt_rtp(&plain).expect("protect")
                    })
                    .collect();
                let slices: Vec<[IoSlice<'_>; 1]> =
                    protected.iter().map(|p| [IoSlice::new(p)]).collect();
                let sent = sendmmsg(
                    sender.as_raw_fd(),
                    &mut headers,
                    &slices,
                    &addrs,
                    [],
                    MsgFlags::empty(),
                )
                .expect("sendmmsg");
                assert_eq!(sent.count(), n);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, floor);
criterion_main!(benches);

//! The per-packet forwarding path: one RTP packet from a publisher, rewritten for and sent to N
//! subscribers, SRTP encryption included, on the same `rtc` calls the SFU makes.
//!
//! Subscriber connections are real: each server-side connection (ICE-lite, DTLS, SRTP) is
//! paired in memory with a client connection and both are pumped until connected; no sockets
//! are involved, so the figure is CPU only.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_rtcp_reports, configure_twcc_sender_only, register_default_interceptors,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

struct Subscriber {
    server: RTCPeerConnection,
    sender: RTCRtpSenderId,
    ssrc: u32,
    payload_type: u8,
    seq_offset: u16,
}

fn host(pc: &mut RTCPeerConnection, addr: SocketAddr) {
    let c = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .expect("candidate");
    pc.add_local_candidate(RTCIceCandidate::from(&c).to_json().expect("json"))
        .expect("add candidate");
}

fn deliver(to: &mut RTCPeerConnection, local: SocketAddr, from: SocketAddr, data: &[u8]) {
    let _ = to.handle_read(TaggedBytesMut {
        now: Instant::now(),
        transport: TransportContext {
            local_addr: local,
            peer_addr: from,
            ecn: None,
            transport_protocol: TransportProtocol::UDP,
        },
        message: BytesMut::from(data),
    });
}

/// A server-side subscribe connection with one VP8 track, connected to an in-memory client.
fn connected_pair(i: u16) -> (Subscriber, RTCPeerConnection) {
    let server_addr: SocketAddr = ([10, 0, 0, 1], 7882).into();
    let client_addr: SocketAddr = ([10, 0, 1, 1], 10_000 + i).into();
    let mut media = MediaEngine::default();
    media.register_default_codecs().expect("codecs");
    // The interceptors of the SFU's subscribe connections: sender reports and TWCC numbering.
    let registry = configure_twcc_sender_only(configure_rtcp_reports(Registry::new()), &mut media)
        .expect("registry");
    let mut server = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(
            SettingEngineBuilder::new()
                .with_lite(true)
                .with_ice_credentials(format!("srv{i:05}ufragxx"), "p".repeat(32))
                .build(),
        )
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(Instant::now())
        .expect("server pc");
    host(&mut server, server_addr);
    let ssrc = 0x1000_0000 + u32::from(i);
    let codec = RTCRtpCodec {
        mime_type: "video/VP8".to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    };
    let sender = server
        .add_track(MediaStreamTrack::new(
            "publisher".into(),
            "publisher-video".into(),
            "publisher video".into(),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec,
                ..Default::default()
            }],
        ))
        .expect("track");
    let offer = server.create_offer(None).expect("offer");
    server
        .set_local_description(Instant::now(), offer.clone())
        .expect("set offer");

    let mut media = MediaEngine::default();
    media.register_default_codecs().expect("codecs");
    let registry = register_default_interceptors(Registry::new(), &mut media).expect("registry");
    let mut client = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(Instant::now())
        .expect("client pc");
    client
        .set_remote_description(Instant::now(), offer)
        .expect("client takes offer");
    host(&mut client, client_addr);
    let answer = client.create_answer(None).expect("answer");
    client
        .set_local_description(Instant::now(), answer.clone())
        .expect("set answer");
    server
        .set_remote_description(Instant::now(), answer)
        .expect("server takes answer");

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut connected = (false, false);
    while !(connected.0 && connected.1) {
        assert!(Instant::now() < deadline, "pair {i} did not connect");
        let now = Instant::now();
        let _ = server.handle_timeout(now);
        let _ = client.handle_timeout(now);
        while let Some(m) = server.poll_write() {
            deliver(&mut client, client_addr, server_addr, &m.message);
        }
        while let Some(m) = client.poll_write() {
            deliver(&mut server, server_addr, client_addr, &m.message);
        }
        while let Some(e) = server.poll_event() {
            if let rtc::peer_connection::event::RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                RTCPeerConnectionState::Connected,
            ) = e
            {
                connected.0 = true;
            }
        }
        while let Some(e) = client.poll_event() {
            if let rtc::peer_connection::event::RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                RTCPeerConnectionState::Connected,
            ) = e
            {
                connected.1 = true;
            }
        }
        while client.poll_read().is_some() {}
        while server.poll_read().is_some() {}
        std::thread::sleep(Duration::from_micros(200));
    }
    let payload_type = {
        let mut s = server.rtp_sender(sender).expect("sender");
        s.get_parameters()
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case("video/VP8"))
            .map(|c| c.payload_type)
            .expect("VP8 negotiated")
    };
    (
        Subscriber {
            server,
            sender,
            ssrc,
            payload_type,
            seq_offset: i.wrapping_mul(977),
        },
        client,
    )
}

fn forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward_one_packet");
    g.measurement_time(Duration::from_secs(5));
    for n in [1usize, 10, 50] {
        let pairs: Vec<(Subscriber, RTCPeerConnection)> =
            (0..n as u16).map(connected_pair).collect();
        let (mut subs, _clients): (Vec<Subscriber>, Vec<RTCPeerConnection>) =
            pairs.into_iter().unzip();
        let mut packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: 96,
                sequence_number: 1,
                timestamp: 3000,
                ssrc: 42,
                marker: true,
                ..Default::default()
            },
            payload: [0x10, 0x01, 0xab, 0xcd].repeat(300).into(),
        };
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("subscribers", n), &n, |b, _| {
            b.iter(|| {
                packet.header.sequence_number = packet.header.sequence_number.wrapping_add(1);
                let seq = packet.header.sequence_number;
                let now = Instant::now();
                for s in subs.iter_mut() {
                    let mut p = packet.clone();
                    p.header.ssrc = s.ssrc;
                    p.header.payload_type = s.payload_type;
                    p.header.sequence_number = seq.wrapping_add(s.seq_offset);
                    let mut sender = s.server.rtp_sender(s.sender).expect("sender");
                    sender.write_rtp(now, p).expect("write");
                    while let Some(datagram) = s.server.poll_write() {
                        std::hint::black_box(datagram);
                    }
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);

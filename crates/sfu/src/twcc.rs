//! Transport-wide sequence numbers on subscribe legs, and the send history their feedback is
//! matched against.
//!
//! The core stamps each RTP packet it writes to a subscriber (media, retransmissions, probe
//! padding) with the connection's next transport-wide number and notes when it left and its
//! size in a small ring. When the subscriber's TWCC feedback comes back, rtc's `convert_twcc`
//! reads it and the ring turns it into the reports the estimator takes (`bwe.rs`).
//!
//! Doing it here rather than with rtc's TWCC-sender and congestion-control interceptors saves
//! two stages of the interceptor chain (each moves every packet by value) and a hashed map
//! entry per packet: the forwarding cost stays what it was without an estimator.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::interceptor::{PacketReport, convert_twcc};
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtp::Packet;
use rtc::shared::marshal::MarshalSize;

/// Packets remembered per connection: feedback comes every 100 ms or so, and even a probe's
/// few thousand packets a second fit. A ring, so a receiver that never answers costs nothing
/// more.
const RING: usize = 1024;

#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    seq: u16,
    size: u16,
    /// Microseconds after the connection's first stamp.
    at_us: u32,
    live: bool,
}

/// One subscribe connection's numbering and history.
pub(crate) struct Twcc {
    next: u16,
    epoch: Option<Instant>,
    ring: Vec<Sent>,
    reported: u64,
}

impl Twcc {
    pub(crate) fn new() -> Twcc {
        Twcc {
            next: 0,
            epoch: None,
            ring: Vec::new(),
            reported: 0,
        }
    }

    /// Number `packet` (extension id `id`, as the subscriber negotiated it) and remember it.
    pub(crate) fn stamp(&mut self, id: u8, packet: &mut Packet, now: Instant) {
        let seq = self.next;
        self.next = seq.wrapping_add(1);
        if packet
            .header
            .set_extension(id, Bytes::copy_from_slice(&seq.to_be_bytes()))
            .is_err()
        {
            return;
        }
        if self.ring.is_empty() {
            self.ring = vec![Sent::default(); RING];
        }
        let epoch = *self.epoch.get_or_insert(now);
        let size = packet.header.marshal_size()
            + packet.payload.len()
            + 4 * usize::from(packet.header.padding);
        self.ring[usize::from(seq) % RING] = Sent {
            seq,
            size: size.min(usize::from(u16::MAX)) as u16,
            at_us: now.saturating_duration_since(epoch).as_micros() as u32,
            live: true,
        };
    }

    /// The reports one feedback packet makes: each packet it names that is still in the ring,
    /// once.
    pub(crate) fn feedback(&mut self, feedback: &TransportLayerCc) -> Vec<PacketReport> {
        let Some(epoch) = self.epoch else {
            return Vec::new();
        };
        let mut reports = Vec::new();
        for ack in convert_twcc(feedback) {
            let Some(slot) = self.ring.get_mut(usize::from(ack.sequence_number) % RING) else {
                continue;
            };
            if !slot.live || slot.seq != ack.sequence_number {
                continue;
            }
            slot.live = false;
            self.reported += 1;
            reports.push(PacketReport {
                ssrc: 0,
                id: self.reported,
                rtp_sequence_number: 0,
                is_twcc: true,
                twcc_sequence_number: ack.sequence_number,
                size: usize::from(slot.size),
                arrived: ack.arrived,
                departure: epoch + Duration::from_micros(u64::from(slot.at_us)),
                arrival: ack.arrival,
                ecn: ack.ecn,
            });
        }
        // In send order, as an estimator expects them.
        reports.sort_by_key(|r| r.departure);
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
        PacketStatusChunk, RecvDelta, RunLengthChunk, SymbolTypeTcc,
    };

    fn packet() -> Packet {
        Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                ..Default::default()
            },
            payload: vec![0u8; 100].into(),
        }
    }

    #[test]
    fn stamped_numbers_come_back_as_reports_once() {
        let t0 = Instant::now();
        let mut t = Twcc::new();
        let mut p = packet();
        for i in 0..5u64 {
            p = packet();
            t.stamp(3, &mut p, t0 + Duration::from_millis(i));
        }
        assert_eq!(p.header.get_extension(3).as_deref(), Some(&[0u8, 4][..]));
        // Feedback: packets 1 to 3 received, 1 ms apart.
        let fb = TransportLayerCc {
            sender_ssrc: 1,
            media_ssrc: 2,
            base_sequence_number: 1,
            packet_status_count: 3,
            reference_time: 0,
            fb_pkt_count: 0,
            packet_chunks: vec![PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                packet_status_symbol: SymbolTypeTcc::PacketReceivedSmallDelta,
                run_length: 3,
                ..Default::default()
            })],
            recv_deltas: (0..3)
                .map(|_| RecvDelta {
                    type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta,
                    delta: 1000,
                })
                .collect(),
        };
        let reports = t.feedback(&fb);
        let seqs: Vec<u16> = reports.iter().map(|r| r.twcc_sequence_number).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert!(reports.iter().all(|r| r.arrived && r.size >= 112));
        assert_eq!(reports[0].departure, t0 + Duration::from_millis(1));
        assert!(t.feedback(&fb).is_empty(), "each packet is reported once");
    }
}

//! The interceptor that lets chosen inbound RTCP reach the application.
//!
//! rtc's interceptor chain ends inbound RTCP before the application unless an interceptor vouches
//! for a packet. On subscribe connections the SFU itself answers NACKs (from the one buffer of the
//! published track) and relays keyframe requests, so it needs exactly those packets: NACK, PLI,
//! FIR and transport-wide congestion control feedback ([`sfu_feedback`]). Reports stay inside the
//! chain. A publishing client (the load tool) needs the keyframe requests
//! ([`is_keyframe_request`]).

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;

/// Marks inbound RTCP compounds holding a packet `wanted` accepts for delivery to the
/// application; passes everything else through unchanged.
pub struct RtcpToApplication {
    wanted: fn(&dyn rtc::rtcp::Packet) -> bool,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl RtcpToApplication {
    pub fn new(wanted: fn(&dyn rtc::rtcp::Packet) -> bool) -> RtcpToApplication {
        RtcpToApplication {
            wanted,
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }
}

/// PLI or FIR: the receiver wants a keyframe.
pub fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// What the SFU acts on from a subscriber: keyframe requests, NACK and TWCC feedback.
pub(crate) fn sfu_feedback(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    is_keyframe_request(packet) || any.is::<TransportLayerNack>() || any.is::<TransportLayerCc>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RtcpToApplication {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet
            && packets.iter().any(|p| (self.wanted)(p.as_ref()))
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for RtcpToApplication {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

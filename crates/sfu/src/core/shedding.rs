//! Overload shedding, as the core applies it: which units the [`crate::shed::Shedder`]'s level
//! pauses.

use std::cmp::Reverse;

use crate::MediaCore;

impl MediaCore {
    /// Pause the first `level` units, resume the rest.
    pub(crate) fn apply_shedding(&mut self) {
        let mut units = Vec::new();
        for (&sid, sub) in &self.peers {
            // A relay to another node carries every viewer there: never shed here (that
            // node sheds its own subscribers when it is behind).
            if sub.role.relay_to().is_some() {
                continue;
            }
            let Some(room) = self.rooms.get(&sub.room) else {
                continue;
            };
            let Some(sending) = sub.role.subscriber() else {
                continue;
            };
            for (key, out) in sending.outs() {
                let audio = out.kind != rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Video;
                let seat = room.allowed.get(&key.0).map_or(u32::MAX, |p| p.seat);
                units.push((audio, Reverse(seat), sid, key.clone()));
            }
        }
        units.sort_unstable_by(|a, b| (a.0, a.1, a.2, &a.3.0).cmp(&(b.0, b.1, b.2, &b.3.0)));
        let level = self.shed.count(units.len());
        for (i, (_, _, sid, key)) in units.into_iter().enumerate() {
            let pause = i < level;
            let Some(out) = self
                .peers
                .get_mut(&sid)
                .and_then(|s| s.role.subscriber_mut())
                .and_then(|s| s.out_mut(&key))
            else {
                continue;
            };
            if pause && !out.paused {
                out.munger.pause();
            }
            out.paused = pause;
        }
    }
}

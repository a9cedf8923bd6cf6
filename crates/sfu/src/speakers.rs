//! Active speakers of a room, from the audio level each publisher writes into its audio packets
//! (RFC 6464, `urn:ietf:params:rtp-hdrext:ssrc-audio-level`).
//!
//! One level per packet is noisy: a cough, a click or a door is one loud packet, background noise
//! hovers near the threshold. A packet counts as voice when it is louder than [`ACTIVE_DBOV`] and
//! clearly louder than that publisher's own noise floor (tracked from their quiet packets), so a
//! noisy room does not talk by itself. Each publisher's voice activity is then smoothed over a few
//! hundred milliseconds (the share of recent time with voiced packets) and
//! turns "speaking" on and off at two different thresholds, so neither a click nor a short
//! breath flips the list. The room's list is looked at on every tick of the core and reported
//! when it changed, but never sooner than [`SPEAKERS_INTERVAL`] after the last report: a change
//! goes out at once when the room has been quiet, and a burst of changes is folded into one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use miclink_protocol::{Ident, Speaker};
use rtc::rtp::header::Extension;

use crate::extensions::Forwarded;

/// How often a room's speakers are looked at, and so the most often `active_speakers` goes out.
pub const SPEAKERS_INTERVAL: Duration = Duration::from_millis(250);

/// The audio level extension's URI.
pub(crate) const AUDIO_LEVEL: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// A packet at least this loud (in -dBov: 0 is full scale, 127 silence) counts as voice. Speech
/// into a browser's processed microphone sits around 20 to 40; a quiet room below 60.
pub(crate) const ACTIVE_DBOV: u8 = 50;

/// Voice is at least this much louder than the publisher's noise floor, in dB.
const OVER_FLOOR_DB: f32 = 12.0;

/// A new publisher's noise floor: a quiet room, where [`ACTIVE_DBOV`] alone decides.
const FIRST_FLOOR: f32 = ACTIVE_DBOV as f32 + OVER_FLOOR_DB;

/// How fast the noise floor follows louder packets, in dB per second: slowly, so talking for a
/// while barely moves it, while each quieter packet pulls it up at once.
const FLOOR_CREEP_DB_PER_S: f32 = 1.0;

/// The share of the way to a quieter packet the floor moves at each one.
const FLOOR_FOLLOW: f32 = 0.2;

/// The smoothing time constant of voice activity and loudness.
const TAU: Duration = Duration::from_millis(300);

/// Speaking starts when the smoothed share of voiced time reaches this...
const ON: f32 = 0.6;
/// ...and ends when it falls to this.
const OFF: f32 = 0.3;

/// One packet stands for at most this long; a longer gap (a muted or discontinuous sender) is
/// silence.
const MAX_GAP: Duration = Duration::from_millis(100);

/// The audio level of a packet, in -dBov, from its original extensions and the publisher's
/// forwarded extension ids.
pub(crate) fn level(original: &[Extension], forwarded: &Forwarded) -> Option<u8> {
    let &(id, _) = forwarded.iter().find(|(_, uri)| *uri == AUDIO_LEVEL)?;
    let ext = original.iter().find(|e| e.id == id)?;
    ext.payload.first().map(|b| b & 0x7f)
}

/// `value` moved toward `target` as an exponential average over `elapsed`.
fn approach(value: f32, target: f32, elapsed: Duration) -> f32 {
    let keep = (-elapsed.as_secs_f32() / TAU.as_secs_f32()).exp();
    target + (value - target) * keep
}

/// One publisher's smoothed voice.
#[derive(Debug, Clone)]
struct Voice {
    /// The share of recent time with voiced packets, 0..1.
    activity: f32,
    /// The smoothed loudness of voiced packets, 0..1.
    loudness: f32,
    /// The noise floor in -dBov (larger is quieter).
    floor: f32,
    last: Instant,
    speaking: bool,
}

impl Voice {
    fn observe(&mut self, now: Instant, dbov: u8) {
        let elapsed = now.saturating_duration_since(self.last);
        self.activity = approach(self.activity, 0.0, elapsed.saturating_sub(MAX_GAP));
        let covered = elapsed.min(MAX_GAP);
        let level = f32::from(dbov);
        let voiced = dbov <= ACTIVE_DBOV && level <= self.floor - OVER_FLOOR_DB;
        if level > self.floor {
            self.floor += (level - self.floor) * FLOOR_FOLLOW;
        } else {
            let creep = FLOOR_CREEP_DB_PER_S * covered.as_secs_f32();
            self.floor -= creep.min(self.floor - level);
        }
        if voiced {
            self.activity = approach(self.activity, 1.0, covered);
            let loud = 1.0 - f32::from(dbov) / 127.0;
            self.loudness = approach(self.loudness, loud, covered);
        } else {
            self.activity = approach(self.activity, 0.0, covered);
        }
        self.last = self.last.max(now);
    }

    /// Activity at `now`, silence counted since the last packet.
    fn activity_at(&self, now: Instant) -> f32 {
        let silent = now
            .saturating_duration_since(self.last)
            .saturating_sub(MAX_GAP);
        approach(self.activity, 0.0, silent)
    }
}

/// The speakers of one room.
#[derive(Debug, Default)]
pub(crate) struct Speakers {
    /// One per publisher whose audio is forwarded: at most a room's seats.
    voices: HashMap<Ident, Voice>,
    /// The list last reported, and when.
    sent: Vec<Ident>,
    sent_at: Option<Instant>,
}

impl Speakers {
    /// An audio packet of `user` with level `dbov` was forwarded at `now`.
    pub(crate) fn observe(&mut self, user: &Ident, now: Instant, dbov: u8) {
        match self.voices.get_mut(user) {
            Some(v) => v.observe(now, dbov),
            None => {
                let mut v = Voice {
                    activity: 0.0,
                    loudness: 0.0,
                    floor: FIRST_FLOOR,
                    last: now,
                    speaking: false,
                };
                // The first packet stands for one packet time.
                v.last = now.checked_sub(Duration::from_millis(20)).unwrap_or(now);
                v.observe(now, dbov);
                self.voices.insert(user.clone(), v);
            }
        }
    }

    /// Who speaks now, loudest first (the list last reported).
    pub(crate) fn current(&self) -> &[Ident] {
        &self.sent
    }

    /// `user` no longer publishes here.
    pub(crate) fn remove(&mut self, user: &Ident) {
        self.voices.remove(user);
    }

    /// Whether a report may go out at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.sent_at
            .is_none_or(|at| now.saturating_duration_since(at) >= SPEAKERS_INTERVAL)
    }

    /// Look at the list at `now`: the new list if it differs from the last one reported (the
    /// caller asks only when [`due`](Self::due)).
    pub(crate) fn evaluate(&mut self, now: Instant) -> Option<Vec<Speaker>> {
        let mut speaking: Vec<Speaker> = Vec::new();
        for (user, v) in &mut self.voices {
            let activity = v.activity_at(now);
            v.speaking = if v.speaking {
                activity > OFF
            } else {
                activity >= ON
            };
            if v.speaking {
                speaking.push(Speaker {
                    user: user.clone(),
                    level: (v.loudness * 100.0).round() / 100.0,
                });
            }
        }
        speaking.sort_by(|a, b| b.level.total_cmp(&a.level).then(a.user.cmp(&b.user)));
        // Compared in place: this runs on every tick of every room.
        if speaking.iter().map(|s| &s.user).eq(self.sent.iter()) {
            return None;
        }
        self.sent = speaking.iter().map(|s| s.user.clone()).collect();
        self.sent_at = Some(now);
        Some(speaking)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Ident {
        Ident::new(s).expect("valid id")
    }

    /// Feed `user` packets every 20 ms for `ms` at `dbov`, looking at the list every 250 ms;
    /// returns every list reported, with the time it went out.
    fn talk(
        s: &mut Speakers,
        now: &mut Instant,
        users: &[(&str, u8)],
        ms: u64,
    ) -> Vec<(Duration, Vec<String>)> {
        let start = *now;
        let mut out = Vec::new();
        for _ in 0..ms / 20 {
            *now += Duration::from_millis(20);
            for (u, dbov) in users {
                s.observe(&id(u), *now, *dbov);
            }
            if s.due(*now)
                && let Some(list) = s.evaluate(*now)
            {
                out.push((
                    *now - start,
                    list.into_iter().map(|x| x.user.to_string()).collect(),
                ));
            }
        }
        out
    }

    #[test]
    fn reports_are_at_least_an_interval_apart() {
        let mut s = Speakers::default();
        let mut now = Instant::now();
        talk(&mut s, &mut now, &[("ann", 30)], 1000);
        let sent = s.sent_at.expect("ann was reported");
        // Bob starts right after: his report waits for the interval since ann's.
        s.observe(&id("bob"), now, 30);
        assert!(!s.due(sent + SPEAKERS_INTERVAL - Duration::from_millis(1)));
        assert!(s.due(sent + SPEAKERS_INTERVAL));
    }

    #[test]
    fn a_speaker_is_named_within_half_a_second_and_dropped_after_silence() {
        let mut s = Speakers::default();
        let mut now = Instant::now();
        talk(&mut s, &mut now, &[("ann", 90)], 1000);
        let on = talk(&mut s, &mut now, &[("ann", 25)], 2000);
        assert_eq!(on.len(), 1, "{on:?}");
        assert_eq!(on[0].1, vec!["ann"]);
        assert!(on[0].0 <= Duration::from_millis(550), "{on:?}");
        let off = talk(&mut s, &mut now, &[("ann", 100)], 2000);
        assert_eq!(off.len(), 1);
        assert!(off[0].1.is_empty());
    }

    #[test]
    fn clicks_and_noise_never_flip_it() {
        let mut s = Speakers::default();
        let mut now = Instant::now();
        for _ in 0..20 {
            // Background noise just under the threshold, and one loud packet a second.
            assert!(talk(&mut s, &mut now, &[("ann", 55)], 980).is_empty());
            assert!(talk(&mut s, &mut now, &[("ann", 10)], 20).is_empty());
        }
    }

    /// A small deterministic generator for the noisy-room tests.
    fn dice(state: &mut u64, lo: u8, hi: u8) -> u8 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        lo + (*state % u64::from(hi - lo + 1)) as u8
    }

    /// A noisy room: noise straddling the fixed threshold and clicks of up to three packets
    /// about every 300 ms. One packet every 20 ms for `ms`, the talker (if any) at 22..38 -dBov.
    fn noisy(
        s: &mut Speakers,
        now: &mut Instant,
        talker: Option<&str>,
        ms: u64,
        seed: &mut u64,
    ) -> Vec<Vec<String>> {
        let mut lists = Vec::new();
        let mut click = [0u8; 2];
        for _ in 0..ms / 20 {
            *now += Duration::from_millis(20);
            for (i, u) in ["ann", "bob"].iter().enumerate() {
                let mut dbov = dice(seed, 46, 60);
                if click[i] == 0 && dice(seed, 0, 14) == 0 {
                    click[i] = dice(seed, 1, 3);
                }
                if click[i] > 0 {
                    click[i] -= 1;
                    dbov = dice(seed, 5, 20);
                }
                if talker == Some(*u) {
                    dbov = dice(seed, 22, 38);
                }
                s.observe(&id(u), *now, dbov);
            }
            if s.due(*now)
                && let Some(list) = s.evaluate(*now)
            {
                lists.push(list.into_iter().map(|x| x.user.to_string()).collect());
            }
        }
        lists
    }

    #[test]
    fn a_noisy_room_does_not_talk_by_itself_and_a_talker_still_shows() {
        let mut s = Speakers::default();
        let mut now = Instant::now();
        let mut seed = 0x1234_5678_9abc_def0;
        assert!(noisy(&mut s, &mut now, None, 20_000, &mut seed).is_empty());
        let lists = noisy(&mut s, &mut now, Some("bob"), 2_000, &mut seed);
        assert_eq!(lists, vec![vec!["bob".to_owned()]]);
        let lists = noisy(&mut s, &mut now, None, 3_000, &mut seed);
        assert_eq!(lists, vec![Vec::<String>::new()]);
    }

    #[test]
    fn a_short_pause_between_words_keeps_the_speaker() {
        let mut s = Speakers::default();
        let mut now = Instant::now();
        talk(&mut s, &mut now, &[("ann", 30)], 1000);
        for _ in 0..10 {
            assert!(talk(&mut s, &mut now, &[("ann", 110)], 200).is_empty());
            assert!(talk(&mut s, &mut now, &[("ann", 30)], 600).is_empty());
        }
    }

    #[test]
    fn a_sender_that_stops_sending_goes_quiet() {
        let mut s = Speakers::default();
        let mut now = Instant::now();
        talk(&mut s, &mut now, &[("ann", 30)], 1000);
        // Nothing arrives (a muted sender): looked at on the room's clock alone.
        now += Duration::from_secs(2);
        let list = s.evaluate(now).expect("changed");
        assert!(list.is_empty());
    }

    #[test]
    fn loudest_first() {
        let mut s = Speakers::default();
        let mut now = Instant::now();
        let lists = talk(&mut s, &mut now, &[("ann", 40), ("bob", 20)], 1500);
        assert_eq!(
            lists.last().map(|l| l.1.clone()),
            Some(vec!["bob".into(), "ann".into()])
        );
        s.remove(&id("bob"));
        now += Duration::from_millis(250);
        let list = s.evaluate(now).expect("bob left the list");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].user, "ann");
    }

    #[test]
    fn the_level_comes_from_the_negotiated_id() {
        let forwarded: Forwarded = vec![(3u8, AUDIO_LEVEL)].into();
        let ext = |id: u8, b: u8| Extension {
            id,
            payload: bytes::Bytes::from(vec![b]),
        };
        assert_eq!(level(&[ext(3, 0x80 | 42)], &forwarded), Some(42));
        assert_eq!(level(&[ext(4, 42)], &forwarded), None);
        assert_eq!(level(&[], &forwarded), None);
    }
}

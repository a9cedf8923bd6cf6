//! Datagrams, RTCP inside a real SRTCP context, RTP and candidates into the media core, from
//! two connected members and from strangers, beside a room the input never touches.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(broken) = miclink_checks::media::check(data) {
        panic!("{broken}");
    }
});

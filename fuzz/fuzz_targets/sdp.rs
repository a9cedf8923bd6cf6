//! Session descriptions of any text into the media core as publish and WHEP offers, and into the
//! SDP reader as answers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(broken) = miclink_checks::sdp::check(data) {
        panic!("{broken}");
    }
});

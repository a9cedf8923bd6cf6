//! A WebSocket text frame from a client into the signaling parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(broken) = miclink_checks::frame::check_bytes(data) {
        panic!("{broken}");
    }
});

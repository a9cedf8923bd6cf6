//! What a node reads from Redis: inbox messages, registry entries, room claims, relay messages.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(broken) = miclink_checks::cluster::check(data) {
        panic!("{broken}");
    }
});

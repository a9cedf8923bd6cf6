//! Command sequences into the seat state machine, every invariant checked after each step.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let ops = miclink_checks::seats::decode(data);
    if let Err(broken) = miclink_checks::seats::run(&ops) {
        panic!("{broken}");
    }
});

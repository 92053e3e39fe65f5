//! Fuzz target: the upgrade handover protocol, both sides (`sluice::fuzzing::handover`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::handover(data));

//! Fuzz target: the admin, metrics and readiness HTTP servers' parsing and routing
//! (`sluice::fuzzing::admin`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::admin(data));

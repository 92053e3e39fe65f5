//! Fuzz target: the mesh-config front end and compiler (`sluice::fuzzing::config_yaml`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::config_yaml(data));

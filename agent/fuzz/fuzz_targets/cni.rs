//! Fuzz target: the CNI plugin's environment and stdin, and the agent's request decoder
//! (`sluice::fuzzing::cni`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::cni(data));

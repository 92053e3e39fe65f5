//! Fuzz target: the HBONE server's HTTP/2 and CONNECT handling after TLS (`sluice::fuzzing::hbone`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::hbone(data));

//! Bytes as a peer's reply: Redis decision and registry replies, a stored tier-mode record, an xDS response.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| floodgate::fuzzing::replies(data));

//! Bytes as an admin API body (the first byte picks the call) through the admin router.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| floodgate::fuzzing::admin_body(data));

//! Bytes as a POST /json body through the HTTP router.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| floodgate::fuzzing::json_body(data));

//! Bytes decoded as a protobuf RateLimitRequest, then validated and decided on the memory store.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| floodgate::fuzzing::rls_request(data));

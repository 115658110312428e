//! Config files (NUL-separated YAML) loaded, compiled, dumped and asked for every rule.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| floodgate::fuzzing::config(data));

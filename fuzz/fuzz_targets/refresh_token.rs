#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cloakroom::fuzzing::parse_refresh_token(data));

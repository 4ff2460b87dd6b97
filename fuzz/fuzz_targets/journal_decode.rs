#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cloakroom::fuzzing::decode_journal(data));
